//! The one round trip `status` makes to a host ([`script`]) and what it
//! printed ([`parse`]): sections introduced by `@@mesh-<name>` lines.
//!
//! A host gets every section; a bastion outside `--limit` only the routes
//! its Redis holds (`@@mesh-redis`), read by one Lua `EVAL` that returns
//! every server URL/address under `traefik/` (the password is read on the
//! bastion from its 0600 file into `REDISCLI_AUTH`, never on a command line).

use crate::phases::services::bastion::REDIS_AUTH_FILE;
use crate::phases::services::compose::PROJECT;
use crate::phases::services::publish::{parse_manifest, Manifest};
use crate::phases::services::slots::{recorded_services, state_fn, State};
use crate::phases::services::ROUTES_FILE;
use crate::quote::{Cmd, Script};
use std::collections::BTreeMap;

/// Where `deploy` appends its audit line on each host.
pub(crate) const DEPLOY_LOG: &str = "/var/log/mesh/deploy.log";

/// Where the host's backup script keeps each service's last result.
pub(crate) const BACKUP_DIR: &str = "/var/lib/mesh/backup";

/// The units `status` reads (a unit that is not installed is `not-found`).
pub(crate) const UNITS: &[&str] = &[
    "docker",
    "wesher",
    "garage",
    "redis-server",
    "crowdsec",
    "crowdsec-firewall-bouncer",
    "traefik-kop",
];

/// `docker inspect` fields, `|`-separated (labels and status hold no `|`).
const INSPECT_FORMAT: &str = "{{index .Config.Labels \"com.docker.compose.service\"}}|{{index .Config.Labels \"com.docker.compose.project\"}}|{{.State.Status}}|{{if .State.Health}}{{.State.Health.Status}}{{end}}|{{.State.StartedAt}}|{{.State.ExitCode}}|{{.Config.Image}}";

/// The last audit line of each service (the log is append-only).
const LAST_DEPLOYS_AWK: &str = "match($0, /\"service\":\"[^\"]*\"/) { last[substr($0, RSTART, RLENGTH)] = $0 } END { for (k in last) print last[k] }";

/// Every server of every Traefik service in Redis, as `key<TAB>value`.
const SERVERS_LUA: &str = r#"local out = {}
for _, k in ipairs(redis.call('KEYS', 'traefik/*/servers/*')) do
  local field = string.match(k, '/([^/]+)$')
  if field == 'url' or field == 'address' then
    local v = redis.pcall('GET', k)
    if type(v) == 'string' then out[#out + 1] = k .. '\t' .. v end
  end
end
return out"#;

/// What to read on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Probe {
    /// The host's own state (everything but Redis); false for a bastion
    /// read only for its routes.
    pub host: bool,
    /// The host's overlay IP, which must be on one of its interfaces.
    pub overlay_ip: String,
    /// The overlay IP of the next host in the run, pinged from this one.
    pub peer_ip: Option<String>,
    /// The host is a bastion: read its Redis at this (overlay) IP.
    pub redis_ip: Option<String>,
}

/// The script for `probe`.
pub(crate) fn script(probe: &Probe) -> Script {
    let mut s = Script::new();
    s.raw("echo @@mesh-now; date +%s");
    if probe.host {
        s.raw("echo @@mesh-routes");
        s.line("cat {} 2>/dev/null", &[ROUTES_FILE]);
        s.raw(&state_fn());
        s.raw("echo @@mesh-states");
        s.raw(&format!(
            "for n in $({}); do echo \"@@svc $n\"; mesh_state \"$n\"; done",
            recorded_services()
        ));
        s.raw("echo @@mesh-containers");
        s.raw("ids=$(docker ps -aq --filter label=com.docker.compose.project 2>/dev/null)");
        s.line(
            "[ -z \"$ids\" ] || docker inspect --format {} $ids 2>/dev/null",
            &[INSPECT_FORMAT],
        );
        s.raw("echo @@mesh-deploys");
        s.line(
            "[ ! -f {} ] || awk {} {}",
            &[DEPLOY_LOG, LAST_DEPLOYS_AWK, DEPLOY_LOG],
        );
        s.raw("echo @@mesh-backups");
        s.raw(&last_backups(BACKUP_DIR));
        s.raw("echo @@mesh-disk");
        s.append(&crate::ops::docker_api::docker_info_script());
        s.raw(crate::ops::room::ROOT_FROM_INFO);
        s.raw("for p in / \"$root\"; do [ -n \"$p\" ] || continue; d=$(df -Pk \"$p\" 2>/dev/null | tail -n 1) && echo \"$p $d\"; done");
        s.raw("echo @@mesh-units");
        let units = UNITS.iter().map(|u| format!("{u}.service"));
        let show = Cmd::new("systemctl")
            .args(["show", "-p", "Id", "-p", "LoadState", "-p", "ActiveState"])
            .args(units);
        s.raw(&format!("{show} 2>/dev/null; true"));
        s.raw("echo @@mesh-overlay");
        s.line(
            "if ip -o -4 addr show 2>/dev/null | grep -qF {}; then echo assigned yes; else echo assigned no; fi",
            &[&format!(" {}/", probe.overlay_ip)],
        );
        if let Some(peer) = &probe.peer_ip {
            s.line(
                "if ! command -v ping >/dev/null; then echo peer unknown; elif ping -c 1 -W 2 {} >/dev/null 2>&1; then echo peer ok; else echo peer fail; fi",
                &[peer],
            );
        }
    }
    if let Some(ip) = &probe.redis_ip {
        s.raw("echo @@mesh-redis");
        s.line(
            "REDISCLI_AUTH=$(cat {} 2>/dev/null) redis-cli --no-auth-warning --raw -h {} -p 6379 EVAL {} 0 2>&1; echo \"@@exit $?\"",
            &[REDIS_AUTH_FILE, ip, SERVERS_LUA],
        );
    }
    s
}

/// One compose container, from `docker inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Container {
    pub service: String,
    pub project: String,
    /// running, exited, restarting, paused, created, dead.
    pub status: String,
    /// healthy, unhealthy, starting; empty without a health check.
    pub health: String,
    pub started_at: String,
    pub exit_code: i64,
    pub image: String,
}

impl Container {
    /// One of mesh's compose projects (`mesh`, `mesh-<service>-<slot>`).
    fn is_mesh(&self) -> bool {
        self.project == PROJECT || self.project.starts_with("mesh-")
    }

    /// What is wrong with it, if anything.
    pub fn problem(&self) -> Option<String> {
        match (self.status.as_str(), self.health.as_str()) {
            ("running", "unhealthy") => Some("unhealthy".into()),
            ("running", _) => None,
            ("exited", _) => Some(format!("exited (code {})", self.exit_code)),
            (other, _) => Some(other.to_string()),
        }
    }

    /// Running and not unhealthy or starting: its route should be published.
    pub fn serves(&self) -> bool {
        self.status == "running" && self.health != "unhealthy" && self.health != "starting"
    }

    /// Running with a health check that has not passed yet.
    pub fn starting(&self) -> bool {
        self.status == "running" && self.health == "starting"
    }
}

/// A filesystem's free space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Disk {
    /// The path asked about (`/`, Docker's data root).
    pub path: String,
    pub mount: String,
    pub size_kb: u64,
    pub avail_kb: u64,
}

/// The overlay checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Overlay {
    /// The host's overlay IP is on one of its interfaces.
    pub assigned: bool,
    /// The peer's overlay IP answered a ping; `None`: not checked (no
    /// peer, or no `ping` on the host).
    pub peer_answers: Option<bool>,
}

/// What a bastion's Redis holds: server key -> URL or address.
pub(crate) type Servers = BTreeMap<String, String>;

/// What [`script`] printed.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostRead {
    /// The host's clock (uptimes are measured against it).
    pub now: i64,
    pub manifest: Manifest,
    pub states: BTreeMap<String, State>,
    /// mesh's compose containers.
    pub containers: Vec<Container>,
    /// The last audit line of each service.
    pub deploys: BTreeMap<String, serde_json::Value>,
    /// Each backed-up service's last backup: when, and its result
    /// (`ok ADDED TOTAL SECONDS` or `failed REASON`).
    pub backups: BTreeMap<String, LastBackup>,
    pub disks: Vec<Disk>,
    /// Installed units (without `.service`) and their active state.
    pub units: BTreeMap<String, String>,
    pub overlay: Overlay,
    /// A bastion's routes, or why they could not be read.
    pub redis: Option<Result<Servers, RedisError>>,
}

/// Why a bastion's routes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RedisError {
    /// Redis said why not (wrong password, not running, …).
    #[error("Redis answered: {0}")]
    Refused(String),
    #[error("redis-cli failed (exit {0}). Fix: check that redis-server runs on the bastion (mesh services installs it)")]
    Failed(String),
    /// The bastion itself could not be read.
    #[error("{0} could not be read")]
    Unread(String),
}

/// Why a host's answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseError {
    #[error("unexpected answer from the host (no clock line): {0}")]
    Garbled(String),
    /// The routes manifest is not valid (the reason says how to fix it).
    #[error("{0}")]
    Manifest(String),
}

/// Split `@@mesh-<name>` sections.
fn sections(text: &str) -> BTreeMap<&str, String> {
    let mut out: BTreeMap<&str, String> = BTreeMap::new();
    let mut current = "";
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("@@mesh-") {
            current = name.trim();
            out.entry(current).or_default();
            continue;
        }
        let section = out.entry(current).or_default();
        section.push_str(line);
        section.push('\n');
    }
    out
}

/// Parse what [`script`] printed on `host`.
pub(crate) fn parse(host: &str, text: &str) -> Result<HostRead, ParseError> {
    let s = sections(text);
    let get = |name: &str| s.get(name).map(String::as_str).unwrap_or("");
    let now = get("now").trim().parse().map_err(|_| {
        let first: String = text.trim().lines().take(3).collect::<Vec<_>>().join(" / ");
        ParseError::Garbled(first)
    })?;
    let routes = get("routes");
    let manifest = if routes.trim().is_empty() {
        Manifest::default()
    } else {
        parse_manifest(host, routes).map_err(|e| ParseError::Manifest(e.to_string()))?
    };
    Ok(HostRead {
        now,
        manifest,
        states: parse_states(get("states")),
        containers: get("containers")
            .lines()
            .filter_map(parse_container)
            .filter(Container::is_mesh)
            .collect(),
        deploys: get("deploys")
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| Some((v["service"].as_str()?.to_string(), v)))
            .collect(),
        backups: get("backups").lines().filter_map(parse_backup).collect(),
        disks: get("disk").lines().filter_map(parse_disk).collect(),
        units: parse_units(get("units")),
        overlay: parse_overlay(get("overlay")),
        redis: s.get("redis").map(|t| parse_redis(t)),
    })
}

/// Each `<service>.last` in `dir` as `SERVICE TIME RESULT…`.
fn last_backups(dir: &str) -> String {
    format!(
        "for f in {}/*.last; do [ -f \"$f\" ] || continue; n=${{f##*/}}; echo \"${{n%.last}} $(head -n 1 \"$f\")\"; done",
        crate::quote::quote(dir)
    )
}

/// A service's last backup on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LastBackup {
    /// Unix time of the result.
    pub at: i64,
    pub ok: bool,
    /// `ADDED TOTAL SECONDS` after ok, the reason after failed.
    pub detail: String,
}

/// `SERVICE TIME ok|failed DETAIL`.
fn parse_backup(line: &str) -> Option<(String, LastBackup)> {
    let mut w = line.splitn(4, ' ');
    let service = w.next()?.to_string();
    let at = w.next()?.parse().ok()?;
    let ok = match w.next()? {
        "ok" => true,
        "failed" => false,
        _ => return None,
    };
    let detail = w.next().unwrap_or("").to_string();
    Some((service, LastBackup { at, ok, detail }))
}

fn parse_states(text: &str) -> BTreeMap<String, State> {
    let mut states: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("@@svc ") {
            let name = name.trim().to_string();
            states.entry(name.clone()).or_default();
            current = Some(name);
        } else if let Some(name) = &current {
            let t = states.entry(name.clone()).or_default();
            t.push_str(line);
            t.push('\n');
        }
    }
    states
        .into_iter()
        .map(|(k, v)| (k, State::parse(&v)))
        .collect()
}

fn parse_container(line: &str) -> Option<Container> {
    let f: Vec<&str> = line.splitn(7, '|').collect();
    (f.len() == 7 && !f[0].is_empty()).then(|| Container {
        service: f[0].to_string(),
        project: f[1].to_string(),
        status: f[2].to_string(),
        health: f[3].to_string(),
        started_at: f[4].to_string(),
        exit_code: f[5].trim().parse().unwrap_or(0),
        image: f[6].trim().to_string(),
    })
}

/// `<path> <filesystem> <1024-blocks> <used> <available> <capacity> <mount>`.
fn parse_disk(line: &str) -> Option<Disk> {
    let w: Vec<&str> = line.split_whitespace().collect();
    (w.len() >= 7).then(|| Disk {
        path: w[0].to_string(),
        mount: w[6].to_string(),
        size_kb: w[2].parse().unwrap_or(0),
        avail_kb: w[4].parse().unwrap_or(0),
    })
}

/// `systemctl show` blocks: the loaded units and their active state.
fn parse_units(text: &str) -> BTreeMap<String, String> {
    let mut units = BTreeMap::new();
    for block in text.split("\n\n") {
        let field = |k: &str| {
            block
                .lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .unwrap_or("")
                .trim()
                .to_string()
        };
        let (id, load, active) = (field("Id"), field("LoadState"), field("ActiveState"));
        if !id.is_empty() && load == "loaded" {
            units.insert(id.trim_end_matches(".service").to_string(), active);
        }
    }
    units
}

fn parse_overlay(text: &str) -> Overlay {
    let mut o = Overlay::default();
    for line in text.lines() {
        match line.trim() {
            "assigned yes" => o.assigned = true,
            "peer ok" => o.peer_answers = Some(true),
            "peer fail" => o.peer_answers = Some(false),
            _ => {}
        }
    }
    o
}

/// `key<TAB>value` lines then `@@exit N`; anything else is Redis saying
/// why not (wrong password, not running).
fn parse_redis(text: &str) -> Result<Servers, RedisError> {
    let mut servers = Servers::new();
    let mut other = Vec::new();
    let mut code = None;
    for line in text.lines() {
        if let Some(c) = line.strip_prefix("@@exit ") {
            code = c.trim().parse::<i32>().ok();
        } else if let Some((k, v)) = line.split_once('\t') {
            servers.insert(k.to_string(), v.trim().to_string());
        } else if !line.trim().is_empty() {
            other.push(line.trim());
        }
    }
    match code {
        Some(0) if other.is_empty() => Ok(servers),
        _ if other.is_empty() => Err(RedisError::Failed(
            code.map_or_else(|| "?".into(), |c| c.to_string()),
        )),
        _ => Err(RedisError::Refused(other.join(" / "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe() -> Probe {
        Probe {
            host: true,
            overlay_ip: "10.1.0.2".into(),
            peer_ip: Some("10.1.0.3".into()),
            redis_ip: Some("10.1.0.2".into()),
        }
    }

    #[test]
    fn the_backup_loop_prints_each_service_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pg.last"), "1764661400 ok 1 2 3\n").unwrap();
        std::fs::write(dir.path().join(".kv.tmp"), "x\n").unwrap();
        let out = std::process::Command::new("sh")
            .args(["-c", &last_backups(dir.path().to_str().unwrap())])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "pg 1764661400 ok 1 2 3\n"
        );
        let empty = tempfile::tempdir().unwrap();
        let none = std::process::Command::new("sh")
            .args(["-c", &last_backups(empty.path().to_str().unwrap())])
            .output()
            .unwrap();
        assert!(none.status.success() && none.stdout.is_empty());
    }

    #[test]
    fn last_backups_are_read_per_service() {
        let (svc, b) =
            parse_backup("pg 1764661400 failed dump `pg_dumpall` exited 1: boom").unwrap();
        assert_eq!(svc, "pg");
        assert_eq!(b.at, 1764661400);
        assert!(!b.ok);
        assert_eq!(b.detail, "dump `pg_dumpall` exited 1: boom");
        assert!(parse_backup("kv 1764661400 ok 2048 10240 3").unwrap().1.ok);
        assert!(parse_backup("kv soon ok").is_none());
        assert!(parse_backup("kv 1 maybe").is_none());
    }

    #[test]
    fn the_script_is_exact_and_valid_shell() {
        let s = script(&probe());
        crate::quote::assert_valid_sh(&s);
        let text = s.as_str();
        assert!(
            text.starts_with(
                "echo @@mesh-now; date +%s\necho @@mesh-routes\ncat /var/lib/mesh/routes.json 2>/dev/null\n"
            ),
            "{text}"
        );
        let expect = [
            "\nids=$(docker ps -aq --filter label=com.docker.compose.project 2>/dev/null)\n[ -z \"$ids\" ] || docker inspect --format '{{index .Config.Labels \"com.docker.compose.service\"}}|{{index .Config.Labels \"com.docker.compose.project\"}}|{{.State.Status}}|{{if .State.Health}}{{.State.Health.Status}}{{end}}|{{.State.StartedAt}}|{{.State.ExitCode}}|{{.Config.Image}}' $ids 2>/dev/null\n",
            "\n[ ! -f /var/log/mesh/deploy.log ] || awk 'match($0, /\"service\":\"[^\"]*\"/) { last[substr($0, RSTART, RLENGTH)] = $0 } END { for (k in last) print last[k] }' /var/log/mesh/deploy.log\n",
            "\nsystemctl show -p Id -p LoadState -p ActiveState docker.service wesher.service garage.service redis-server.service crowdsec.service crowdsec-firewall-bouncer.service traefik-kop.service 2>/dev/null; true\n",
            "\necho @@mesh-overlay\nif ip -o -4 addr show 2>/dev/null | grep -qF ' 10.1.0.2/'; then echo assigned yes; else echo assigned no; fi\nif ! command -v ping >/dev/null; then echo peer unknown; elif ping -c 1 -W 2 10.1.0.3 >/dev/null 2>&1; then echo peer ok; else echo peer fail; fi\n",
            "\necho @@mesh-redis\nREDISCLI_AUTH=$(cat /etc/redis/mesh-auth 2>/dev/null) redis-cli --no-auth-warning --raw -h 10.1.0.2 -p 6379 EVAL 'local out = {}\n",
        ];
        for e in expect {
            assert!(text.contains(e), "missing {e}\nin\n{text}");
        }
        assert!(
            text.ends_with("return out' 0 2>&1; echo \"@@exit $?\"\n"),
            "{text}"
        );
        // A bastion outside --limit: its clock and its routes only.
        let only = script(&Probe {
            host: false,
            peer_ip: None,
            ..probe()
        });
        crate::quote::assert_valid_sh(&only);
        assert!(
            only.as_str()
                .starts_with("echo @@mesh-now; date +%s\necho @@mesh-redis\nREDISCLI_AUTH="),
            "{}",
            only.as_str()
        );
        let plain = script(&Probe {
            peer_ip: None,
            redis_ip: None,
            ..probe()
        });
        assert!(!plain.as_str().contains("ping") && !plain.as_str().contains("redis-cli"));
    }

    #[test]
    fn the_awk_keeps_the_last_deploy_of_each_service() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("deploy.log");
        std::fs::write(
            &log,
            "{\"result\":\"running\",\"service\":\"web\",\"time\":\"01:00:00\"}\n{\"result\":\"running\",\"service\":\"kv\",\"time\":\"02:00:00\"}\n{\"result\":\"rolled_back\",\"service\":\"web\",\"time\":\"03:00:00\"}\n",
        )
        .unwrap();
        let out = std::process::Command::new("awk")
            .arg(LAST_DEPLOYS_AWK)
            .arg(&log)
            .output()
            .unwrap();
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect();
        lines.sort();
        assert_eq!(
            lines,
            [
                "{\"result\":\"rolled_back\",\"service\":\"web\",\"time\":\"03:00:00\"}",
                "{\"result\":\"running\",\"service\":\"kv\",\"time\":\"02:00:00\"}",
            ]
        );
    }

    #[test]
    fn an_answer_parses_section_by_section() {
        let m = crate::phases::services::publish::manifest("w1", &["b1".into()], &[]);
        let text = format!(
            "@@mesh-now\n1764661400\n@@mesh-routes\n{m}@@mesh-states\n@@svc web\nslot b\nimage mesh/web:2\n@@mesh-containers\nweb|mesh-web-b|running|healthy|2025-12-02T07:40:00Z|0|mesh/web:2\nother|proj|running||2025-12-02T07:00:00Z|0|x\n@@mesh-deploys\n{{\"service\":\"web\",\"who\":\"root@ctl\"}}\nnot json\n@@mesh-disk\n/ /dev/vda 264241152 30408704 65011712 32% /\n@@mesh-units\nId=docker.service\nLoadState=loaded\nActiveState=active\n\nId=wesher.service\nLoadState=not-found\nActiveState=inactive\n@@mesh-overlay\nassigned yes\npeer fail\n@@mesh-redis\ntraefik/http/services/web/loadbalancer/servers/w1/url\thttp://10.1.0.2:8001\n@@exit 0\n"
        );
        let read = parse("w1", &text).unwrap();
        assert_eq!(read.now, 1_764_661_400);
        assert_eq!(read.manifest.bastions, ["b1"]);
        assert_eq!(read.states["web"].image.as_deref(), Some("mesh/web:2"));
        assert_eq!(read.containers.len(), 1, "other projects are not mesh's");
        assert_eq!(read.deploys["web"]["who"], "root@ctl");
        assert_eq!(
            read.disks,
            [Disk {
                path: "/".into(),
                mount: "/".into(),
                size_kb: 264_241_152,
                avail_kb: 65_011_712
            }]
        );
        assert_eq!(
            read.units,
            BTreeMap::from([("docker".to_string(), "active".to_string())])
        );
        assert_eq!(
            read.overlay,
            Overlay {
                assigned: true,
                peer_answers: Some(false)
            }
        );
        let servers = read.redis.unwrap().unwrap();
        assert_eq!(
            servers["traefik/http/services/web/loadbalancer/servers/w1/url"],
            "http://10.1.0.2:8001"
        );
        assert!(matches!(
            parse("w1", "garbage"),
            Err(ParseError::Garbled(_))
        ));
        assert!(matches!(
            parse("w1", "@@mesh-now\n1\n@@mesh-routes\nnot json\n"),
            Err(ParseError::Manifest(m)) if m.contains("Fix:")
        ));
    }

    #[test]
    fn redis_refusals_are_errors() {
        assert_eq!(parse_redis("\n@@exit 0\n"), Ok(Servers::new()));
        assert_eq!(
            parse_redis("NOAUTH Authentication required.\n@@exit 1\n"),
            Err(RedisError::Refused(
                "NOAUTH Authentication required.".into()
            ))
        );
        assert_eq!(
            parse_redis("@@exit 127\n"),
            Err(RedisError::Failed("127".into()))
        );
        assert_eq!(
            RedisError::Refused("NOAUTH x".into()).to_string(),
            "Redis answered: NOAUTH x"
        );
    }
}
