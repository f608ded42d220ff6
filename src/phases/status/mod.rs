//! `mesh status`: what runs where, and whether anything is wrong.
//!
//! Every host is read in one round trip ([`probe`]): its routes manifest,
//! its services' records, mesh's compose containers (state, health, start
//! time, image), the last deploy audit line of each service, free space on
//! `/` and on Docker's data root, the units mesh installs, whether its
//! overlay IP is on an interface and whether the next host's overlay IP
//! answers a ping (a ring: every host's overlay IP is checked by one
//! peer), and, on a bastion, every server route its Redis holds. Bastions
//! outside `--limit` are read for their routes only.
//!
//! [`assess`] then judges, on the controller and without another round
//! trip: a container not running or unhealthy, route drift between what
//! each bastion holds and what the host records ([`routes`]: "route on b1
//! points at :8001, host says :8000"), low disk, a daemon not active where
//! it belongs (Redis and CrowdSec on bastions, garage on hosts with a zone,
//! traefik-kop on workers that use it, docker where services run, any of
//! them that is installed), an overlay IP not answering. [`table`] renders
//! the result.

pub(crate) mod probe;
pub(crate) mod routes;
pub(crate) mod table;

use crate::inventory::{Host, Inventory, Publisher, TRAEFIK_SERVICE};
use crate::phases::services::compose::PROJECT;
use crate::phases::services::slots::Slot;
use probe::{Container, Disk, HostRead, Overlay, RedisError, Servers};
use std::collections::{BTreeMap, BTreeSet};

/// A host's problem: free space below this share of the disk …
const LOW_DISK_PERCENT: u64 = 5;
/// … or below this many KiB (1 GiB).
const LOW_DISK_KB: u64 = 1024 * 1024;

/// What the inventory says a host is, for the checks that depend on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Role {
    /// Runs Traefik: Redis must be active, and a `traefik` container run.
    pub bastion: bool,
    /// A bastion with `ingress.crowdsec`.
    pub crowdsec: bool,
    /// A worker publishing with traefik-kop.
    pub traefik_kop: bool,
    /// Garage's zone: garage belongs on the host.
    pub zone: Option<String>,
    /// The bastions the inventory sends the host's routes to.
    pub bastions: Vec<String>,
    /// mesh publishes the routes (`ingress.publisher: mesh`): they are compared.
    pub mesh_routes: bool,
    pub overlay_ip: String,
}

impl Role {
    pub fn of(inv: &Inventory, host: &Host, overlay_ip: String) -> Role {
        let bastion = host.is_bastion();
        let bastions: Vec<String> = inv
            .bastions_of(host)
            .iter()
            .map(|b| b.name.clone())
            .collect();
        let kop = inv.ingress.publisher == Publisher::TraefikKop;
        Role {
            bastion,
            crowdsec: bastion && inv.ingress.crowdsec,
            traefik_kop: kop && !bastion && !bastions.is_empty(),
            zone: host.zone.clone(),
            bastions,
            mesh_routes: !kop,
            overlay_ip,
        }
    }
}

/// One host's read, as [`assess`] takes it.
#[derive(Debug, Clone)]
pub(crate) struct Reading {
    pub host: String,
    pub role: Role,
    /// Selected (shown); false for a bastion read only for its routes.
    pub shown: bool,
    /// The host whose overlay IP this one pinged.
    pub peer: Option<String>,
    /// The read, or why it failed.
    pub read: Result<HostRead, Unread>,
}

/// Why a host could not be read, as shown (already redacted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Unread(pub String);

/// One service on one host.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ServiceStatus {
    pub service: String,
    /// The live slot of a service with a port pair.
    pub slot: Option<Slot>,
    /// The live port the host records.
    pub port: Option<u16>,
    /// The image of the live copy (the record's when no container runs).
    pub image: Option<String>,
    /// The live copy's container.
    pub container: Option<Container>,
    /// Seconds since the live copy started (running copies only).
    pub uptime: Option<i64>,
    /// The service's last deploy audit line on this host.
    pub last_deploy: Option<serde_json::Value>,
    /// The service's last backup on this host (services with `backup:`).
    pub last_backup: Option<probe::LastBackup>,
    pub problems: Vec<String>,
}

/// One host's result.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostStatus {
    pub host: String,
    /// Why the host could not be read.
    pub error: Option<String>,
    /// The host's clock when read.
    pub now: i64,
    pub services: Vec<ServiceStatus>,
    /// Route drift and host-level problems (disk, units, overlay).
    pub problems: Vec<String>,
    pub disks: Vec<Disk>,
    pub units: BTreeMap<String, String>,
    pub overlay: Option<Overlay>,
    /// bastion -> (key -> value) of this host's servers there.
    pub routes: BTreeMap<String, Servers>,
}

impl HostStatus {
    /// Every problem: a failed read, the services', then the host's.
    pub fn all_problems(&self) -> Vec<String> {
        let mut all: Vec<String> = self.error.iter().map(|e| format!("failed: {e}")).collect();
        all.extend(self.services.iter().flat_map(|s| s.problems.clone()));
        all.extend(self.problems.iter().cloned());
        all
    }

    pub fn is_ok(&self) -> bool {
        self.error.is_none()
            && self.problems.is_empty()
            && self.services.iter().all(|s| s.problems.is_empty())
    }
}

/// Judge every shown host (in order); `only`: just that service and the
/// hosts that run or record it. `inventory_hosts`: every host name (a
/// bastion's route to any other host is stale).
pub(crate) fn assess(
    readings: &[Reading],
    inventory_hosts: &[String],
    only: Option<&str>,
) -> Vec<HostStatus> {
    let held: BTreeMap<&str, Result<&Servers, RedisError>> = readings
        .iter()
        .filter(|r| r.role.bastion)
        .filter_map(|r| {
            let held = match &r.read {
                Ok(read) => match read.redis.as_ref()? {
                    Ok(servers) => Ok(servers),
                    Err(e) => Err(e.clone()),
                },
                Err(_) => Err(RedisError::Unread(r.host.clone())),
            };
            Some((r.host.as_str(), held))
        })
        .collect();
    let mut out: Vec<HostStatus> = Vec::new();
    for r in readings.iter().filter(|r| r.shown) {
        let read = match &r.read {
            Ok(read) => read,
            Err(e) => {
                out.push(HostStatus {
                    host: r.host.clone(),
                    error: Some(e.to_string()),
                    ..Default::default()
                });
                continue;
            }
        };
        let services = services(read, only);
        if only.is_some() && services.is_empty() {
            continue;
        }
        let mut problems = host_problems(read, &r.role);
        let mut shown_routes = BTreeMap::new();
        if r.role.mesh_routes {
            let found = routes::check(&r.host, read, &r.role, &held, only);
            problems.extend(found.problems);
            shown_routes = found.held;
        }
        if r.role.bastion && only.is_none() {
            match read.redis.as_ref() {
                Some(Ok(servers)) if r.role.mesh_routes => {
                    problems.extend(routes::stale_hosts(servers, inventory_hosts));
                }
                Some(Err(e)) => problems.push(format!("routes not readable: {e}")),
                _ => {}
            }
        }
        out.push(HostStatus {
            host: r.host.clone(),
            error: None,
            now: read.now,
            services,
            problems,
            disks: read.disks.clone(),
            units: read.units.clone(),
            overlay: Some(read.overlay),
            routes: shown_routes,
        });
    }
    // The ring: a failed ping is the pinged host's problem.
    for r in readings {
        let (Ok(read), Some(peer)) = (&r.read, &r.peer) else {
            continue;
        };
        if read.overlay.peer_answers != Some(false) {
            continue;
        }
        let ip = readings
            .iter()
            .find(|p| &p.host == peer)
            .map(|p| p.role.overlay_ip.clone())
            .unwrap_or_default();
        if let Some(st) = out.iter_mut().find(|s| &s.host == peer) {
            st.problems.push(format!(
                "overlay IP {ip} does not answer a ping from {}",
                r.host
            ));
        }
    }
    out
}

/// Seconds since the epoch of an RFC 3339 UTC time (`2025-12-02T07:40:00.12Z`).
pub(crate) fn parse_rfc3339(t: &str) -> Option<i64> {
    let t = t.trim().strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.split('.').next()?;
    let mut h = time.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (h.next()??, h.next()??, h.next()??);
    if y < 1970 || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// The services a host records or runs (`only`: just that one).
pub(crate) fn services(read: &HostRead, only: Option<&str>) -> Vec<ServiceStatus> {
    let mut names: BTreeSet<String> = read.states.keys().cloned().collect();
    names.extend(read.containers.iter().map(|c| c.service.clone()));
    names.extend(read.manifest.backends.iter().map(|b| b.service.clone()));
    names
        .into_iter()
        .filter(|n| only.is_none_or(|o| o == n))
        .map(|name| service(read, name))
        .collect()
}

fn service(read: &HostRead, name: String) -> ServiceStatus {
    let state = read.states.get(&name).cloned().unwrap_or_default();
    let backend = read.manifest.backends.iter().find(|b| b.service == name);
    let slotted = state.slot.is_some() || backend.is_some_and(|b| b.ports.is_some());
    let live = state.live();
    let of = |project: &str| {
        read.containers
            .iter()
            .find(|c| c.service == name && c.project == project)
            .cloned()
    };
    let container = if slotted {
        of(&live.project(&name)).or_else(|| of(PROJECT))
    } else {
        of(PROJECT)
    };
    let port = backend.and_then(|b| match b.ports {
        Some(ports) => Some(live.port(ports)),
        None => b.url.rsplit_once(':').and_then(|(_, p)| p.parse().ok()),
    });
    let mut problems = Vec::new();
    match &container {
        Some(c) => {
            if let Some(p) = c.problem() {
                problems.push(format!("{name}: {p}"));
            }
            if let Some(want) = state.image.as_ref().filter(|w| **w != c.image) {
                problems.push(format!(
                    "{name}: the live copy runs {}, the host records {want}",
                    c.image
                ));
            }
        }
        None => {
            let standby = slotted.then(|| of(&live.other().project(&name))).flatten();
            problems.push(match standby {
                Some(_) => format!(
                    "{name}: no container in the live slot {live}; the standby slot {} has one",
                    live.other()
                ),
                None => format!("{name}: no container"),
            });
        }
    }
    let last_backup = read.backups.get(&name).cloned();
    if let Some(b) = last_backup.as_ref().filter(|b| !b.ok) {
        problems.push(format!(
            "{name}: the last backup ({} ago) failed: {}",
            table::fmt_age(read.now - b.at),
            b.detail
        ));
    }
    let uptime = container
        .as_ref()
        .filter(|c| c.status == "running")
        .and_then(|c| parse_rfc3339(&c.started_at))
        .map(|t| read.now - t);
    ServiceStatus {
        slot: slotted.then_some(live),
        port,
        image: container
            .as_ref()
            .map(|c| c.image.clone())
            .or(state.image.clone()),
        uptime,
        last_deploy: read.deploys.get(&name).cloned(),
        last_backup,
        container,
        problems,
        service: name,
    }
}

impl Disk {
    pub fn percent_free(&self) -> u64 {
        (self.avail_kb * 100).checked_div(self.size_kb).unwrap_or(0)
    }

    fn is_low(&self) -> bool {
        self.size_kb > 0 && (self.percent_free() < LOW_DISK_PERCENT || self.avail_kb < LOW_DISK_KB)
    }
}

/// `1.5 GB`, `300 MB`.
pub(crate) fn fmt_kb(kb: u64) -> String {
    if kb >= 1024 * 1024 {
        format!("{:.1} GB", kb as f64 / 1024.0 / 1024.0)
    } else {
        format!("{} MB", kb / 1024)
    }
}

/// The units that belong on a host with `role` (beyond those installed,
/// which must all be active), and why.
fn expected_units(read: &HostRead, role: &Role) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let runs = !read.states.is_empty() || !read.manifest.backends.is_empty() || role.bastion;
    if runs {
        out.push(("docker", "it runs services".to_string()));
    }
    if role.bastion {
        out.push(("redis-server", "the host is a bastion".into()));
    }
    if role.crowdsec {
        out.push(("crowdsec", "ingress.crowdsec is on".into()));
        out.push(("crowdsec-firewall-bouncer", "ingress.crowdsec is on".into()));
    }
    if role.traefik_kop {
        out.push(("traefik-kop", "ingress.publisher is traefik-kop".into()));
    }
    if let Some(zone) = &role.zone {
        out.push(("garage", format!("the host has zone {zone}")));
    }
    out
}

/// Host-level problems: low disk, units, Traefik on a bastion, the overlay IP.
pub(crate) fn host_problems(read: &HostRead, role: &Role) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for d in &read.disks {
        if d.is_low() && seen.insert(d.mount.clone()) {
            out.push(format!(
                "low disk: {} free on {} ({}%). Fix: free space (docker image prune, old logs)",
                fmt_kb(d.avail_kb),
                d.path,
                d.percent_free()
            ));
        }
    }
    for (unit, why) in expected_units(read, role) {
        if !read.units.contains_key(unit) {
            out.push(format!(
                "{unit} is not installed ({why}). Fix: run mesh {}",
                if matches!(unit, "docker" | "garage") {
                    "nodes"
                } else {
                    "services"
                }
            ));
        }
    }
    for (unit, active) in &read.units {
        if active != "active" {
            out.push(format!(
                "{unit} is {active}. Fix: see `journalctl -u {unit}` on the host"
            ));
        }
    }
    if role.bastion
        && !read
            .containers
            .iter()
            .any(|c| c.service == TRAEFIK_SERVICE && c.status == "running")
        && !read.states.contains_key(TRAEFIK_SERVICE)
        && !read
            .manifest
            .backends
            .iter()
            .any(|b| b.service == TRAEFIK_SERVICE)
    {
        out.push(
            "traefik is not running (the host is a bastion). Fix: run mesh services-up".into(),
        );
    }
    if !read.overlay.assigned {
        out.push(format!(
            "overlay IP {} is on no interface. Fix: check wesher (`systemctl status wesher`), or run mesh nodes",
            role.overlay_ip
        ));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::phases::services::plan::Backend;

    pub(crate) fn backend(host: &str) -> Backend {
        Backend {
            host: host.into(),
            service: "web".into(),
            labels: vec![(
                "traefik.http.routers.web.rule".into(),
                "Host(`a.test`)".into(),
            )],
            url: "http://10.0.0.2:8000".into(),
            ports: Some((8000, 8001)),
        }
    }

    /// What a worker `w1` answers, its web container line being `web`.
    pub(crate) fn sample(web: &str) -> String {
        let m = crate::phases::services::publish::manifest("w1", &["b1".into()], &[backend("w1")]);
        format!(
            "@@mesh-now\n1764661400\n@@mesh-routes\n{m}@@mesh-states\n@@svc web\nslot b\nimage mesh/web:2\nprevious mesh/web:1\n@@mesh-containers\n{web}\ncron|mesh|exited||2025-12-02T07:00:00Z|137|mesh/cron:7\n@@mesh-deploys\n{{\"time\":\"07:40:01\",\"at\":\"2025-12-02T07:40:01Z\",\"who\":\"root@ctl\",\"service\":\"web\",\"result\":\"running\",\"from\":\"mesh/web:1\",\"to\":\"mesh/web:2\"}}\n@@mesh-disk\n/ /dev/vda 264241152 30408704 65011712 32% /\n/var/lib/docker /dev/vda 264241152 30408704 65011712 32% /\n@@mesh-units\nId=docker.service\nLoadState=loaded\nActiveState=active\n\nId=wesher.service\nLoadState=loaded\nActiveState=active\n@@mesh-overlay\nassigned yes\npeer ok\n"
        )
    }

    pub(crate) const HEALTHY: &str =
        "web|mesh-web-b|running|healthy|2025-12-02T07:40:00.123456789Z|0|mesh/web:2";

    pub(crate) fn read(web: &str) -> HostRead {
        probe::parse("w1", &sample(web)).unwrap()
    }

    #[test]
    fn services_show_slot_image_uptime_and_last_deploy() {
        let read = read(HEALTHY);
        let svcs = services(&read, None);
        let names: Vec<&str> = svcs.iter().map(|s| s.service.as_str()).collect();
        assert_eq!(names, ["cron", "web"]);
        let web = &svcs[1];
        assert_eq!((web.slot, web.port), (Some(Slot::B), Some(8001)));
        assert_eq!(web.image.as_deref(), Some("mesh/web:2"));
        assert_eq!(web.uptime, Some(200));
        assert!(web.problems.is_empty(), "{:?}", web.problems);
        assert_eq!(web.last_deploy.as_ref().unwrap()["who"], "root@ctl");
        assert_eq!(svcs[0].slot, None);
        assert_eq!(svcs[0].problems, ["cron: exited (code 137)"]);
        assert_eq!(services(&read, Some("web")).len(), 1);
        assert!(services(&read, Some("nope")).is_empty());
    }

    #[test]
    fn a_live_copy_missing_unhealthy_or_on_another_image_is_named() {
        let problems = |web: &str| services(&read(web), Some("web"))[0].problems.clone();
        assert_eq!(
            problems("web|mesh-web-a|running||2025-12-02T07:40:00Z|0|mesh/web:1"),
            ["web: no container in the live slot b; the standby slot a has one"]
        );
        assert_eq!(
            problems("web|mesh-web-b|running|unhealthy|2025-12-02T07:40:00Z|0|mesh/web:2"),
            ["web: unhealthy"]
        );
        assert_eq!(
            problems("web|mesh-web-b|running||2025-12-02T07:40:00Z|0|mesh/web:1"),
            ["web: the live copy runs mesh/web:1, the host records mesh/web:2"]
        );
        assert_eq!(problems("none|x|running||t|0|i"), ["web: no container"]);
    }

    #[test]
    fn host_checks_follow_the_role() {
        let worker = Role {
            overlay_ip: "10.0.0.2".into(),
            mesh_routes: true,
            ..Default::default()
        };
        let read = read(HEALTHY);
        assert!(host_problems(&read, &worker).is_empty());
        let bastion = Role {
            bastion: true,
            crowdsec: true,
            zone: Some("z1".into()),
            ..worker.clone()
        };
        assert_eq!(
            host_problems(&read, &bastion),
            [
                "redis-server is not installed (the host is a bastion). Fix: run mesh services",
                "crowdsec is not installed (ingress.crowdsec is on). Fix: run mesh services",
                "crowdsec-firewall-bouncer is not installed (ingress.crowdsec is on). Fix: run mesh services",
                "garage is not installed (the host has zone z1). Fix: run mesh nodes",
                "traefik is not running (the host is a bastion). Fix: run mesh services-up",
            ]
        );
        let mut down = read.clone();
        down.units.insert("wesher".into(), "failed".into());
        down.overlay.assigned = false;
        down.disks[0].avail_kb = 512 * 1024;
        assert_eq!(
            host_problems(&down, &worker),
            [
                "low disk: 512 MB free on / (0%). Fix: free space (docker image prune, old logs)",
                "wesher is failed. Fix: see `journalctl -u wesher` on the host",
                "overlay IP 10.0.0.2 is on no interface. Fix: check wesher (`systemctl status wesher`), or run mesh nodes",
            ]
        );
        let d = |avail| Disk {
            path: "/".into(),
            mount: "/".into(),
            size_kb: 100 * 1024 * 1024,
            avail_kb: avail,
        };
        assert!(!d(50 * 1024 * 1024).is_low());
        assert!(d(4 * 1024 * 1024).is_low(), "under 5%");
    }

    fn reading(host: &str, peer: Option<&str>, read: Result<HostRead, Unread>) -> Reading {
        Reading {
            host: host.into(),
            role: Role {
                overlay_ip: format!("10.0.0.{}", &host[1..]),
                mesh_routes: true,
                bastions: vec!["b1".into()],
                ..Default::default()
            },
            shown: true,
            peer: peer.map(String::from),
            read,
        }
    }

    #[test]
    fn the_ring_blames_the_host_that_does_not_answer() {
        let mut quiet = read(HEALTHY);
        quiet.overlay.peer_answers = Some(false);
        let readings = vec![
            reading("w1", Some("w2"), Ok(quiet)),
            reading("w2", Some("w3"), Ok(read(HEALTHY))),
            reading("w3", Some("w1"), Err(Unread("cannot connect".into()))),
        ];
        let hosts: Vec<String> = ["w1", "w2", "w3", "b1"].map(String::from).to_vec();
        let st = assess(&readings, &hosts, None);
        assert_eq!(st.len(), 3);
        assert!(st[1]
            .problems
            .contains(&"overlay IP 10.0.0.2 does not answer a ping from w1".to_string()));
        assert!(!st[0].problems.iter().any(|p| p.contains("ping")));
        assert_eq!(st[2].all_problems(), ["failed: cannot connect"]);
        // No bastion read: every host says so once.
        assert!(
            st[0]
                .problems
                .contains(&"routes on b1 not checked: b1 was not read".to_string()),
            "{:?}",
            st[0].problems
        );
        // --service: hosts that do not run it are left out.
        assert_eq!(assess(&readings, &hosts, Some("cron")).len(), 3);
        assert_eq!(
            assess(&readings, &hosts, Some("nope")).len(),
            1,
            "the failed host stays"
        );
    }

    #[test]
    fn times_parse() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2025-12-02T07:40:00.123456789Z"),
            Some(1_764_661_200)
        );
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2026-13-02T07:40:00Z"), None);
        assert_eq!(parse_rfc3339("nope"), None);
    }
}
