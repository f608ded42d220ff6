//! Routes into the bastions' Redis (`ingress.publisher: mesh`).
//!
//! Each host's routes are recorded on the host itself
//! (`/var/lib/mesh/routes.json`, written by `services` and `deploy`), so they
//! are read back over the host's own connection and nothing depends on the
//! local dockerfiles folder. The keys of one service on one host have one
//! owner in Redis, `<host>/<service>`: a deploy of `web` rewrites only
//! `c1/web`, never `c1/api` (two deploys on one host cannot revert each
//! other's routes). Only copies that run enter Traefik: a route is
//! published while its service's live copy is running (and healthy, when it
//! has a health check) and withdrawn otherwise. Each bastion gets one
//! `redis-cli` call of atomic Lua `EVAL`s (fed on stdin, the password read
//! there from a 0600 file); each returns how many keys it changed, so a
//! converged run reports "unchanged". Hosts outside this run keep their
//! keys untouched; hosts no longer in the inventory lose theirs.

use super::bastion::REDIS_AUTH_FILE;
use super::plan::{Backend, HostPlan};
use super::routes;
use super::slots::{recorded_services, state_fn, Slot, State};
use super::ROUTES_FILE;
use crate::phases::{on_each_host, ClusterOutcome, ClusterStep, HostCtx};
use crate::quote::Script;
use crate::ssh::{BoxFut, Input};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The host's route manifest (what `services` records on the host).
pub(crate) fn manifest(host: &str, bastions: &[String], backends: &[Backend]) -> String {
    let backends: Vec<serde_json::Value> = backends
        .iter()
        .map(|b| {
            serde_json::json!({
                "service": b.service,
                "labels": b.labels.iter().map(|(k, v)| serde_json::json!([k, v])).collect::<Vec<_>>(),
                "url": b.url,
                "ports": b.ports.map(|(a, b)| [a, b]),
            })
        })
        .collect();
    let doc = serde_json::json!({ "host": host, "bastions": bastions, "backends": backends });
    format!("{doc:#}\n")
}

/// The manifest of a host plan.
pub(crate) fn plan_manifest(host: &str, plan: &HostPlan) -> String {
    manifest(host, &plan.bastions, &plan.backends)
}

/// A manifest read back: the bastions and the backends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub bastions: Vec<String>,
    pub backends: Vec<Backend>,
}

impl Manifest {
    /// This manifest with `service`'s backends replaced by `backends` (deploy).
    pub fn with_service(&self, service: &str, backends: &[Backend]) -> Manifest {
        let mut out = self.clone();
        out.backends.retain(|b| b.service != service);
        out.backends.extend(backends.iter().cloned());
        out.backends.sort_by(|a, b| a.service.cmp(&b.service));
        out
    }
}

/// Why a host's routes could not be read or published.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RoutesError {
    #[error("{ROUTES_FILE} is not valid JSON ({0}). Fix: run `mesh services` again")]
    BadManifest(serde_json::Error),
    #[error(transparent)]
    Remote(#[from] crate::ops::OpError),
    /// Redis answered something else than the keys each line changed (redacted).
    #[error("unexpected answer from Redis: {0}")]
    RedisAnswer(String),
}

pub(crate) fn parse_manifest(host: &str, text: &str) -> Result<Manifest, RoutesError> {
    let doc: serde_json::Value = serde_json::from_str(text).map_err(RoutesError::BadManifest)?;
    // `bastion` (one name) is what mesh wrote before routes went to several.
    let bastions = match (&doc["bastions"], doc["bastion"].as_str()) {
        (serde_json::Value::Array(a), _) => a
            .iter()
            .filter_map(|b| b.as_str().map(str::to_string))
            .collect(),
        (_, Some(one)) => vec![one.to_string()],
        _ => Vec::new(),
    };
    let mut backends = Vec::new();
    for b in doc["backends"].as_array().into_iter().flatten() {
        let labels = b["labels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string())))
            .collect();
        backends.push(Backend {
            host: host.to_string(),
            service: b["service"].as_str().unwrap_or_default().to_string(),
            labels,
            url: b["url"].as_str().unwrap_or_default().to_string(),
            ports: match (b["ports"][0].as_u64(), b["ports"][1].as_u64()) {
                (Some(a), Some(b)) => Some((a as u16, b as u16)),
                _ => None,
            },
        });
    }
    Ok(Manifest { bastions, backends })
}

/// The Redis owner of one service's keys on one host.
pub(crate) fn owner(host: &str, service: &str) -> String {
    format!("{host}/{service}")
}

/// The keys one backend publishes with its URL on the port of `slot`.
pub(crate) fn service_keys(b: &Backend, slot: Slot) -> BTreeMap<String, String> {
    routes::backend_keys(&b.service, &b.labels, &b.host, &live_url(b, slot))
        .into_iter()
        .collect()
}

/// The backend's URL with the port of `slot`.
pub(crate) fn live_url(b: &Backend, slot: Slot) -> String {
    match (b.ports, b.url.rsplit_once(':')) {
        (Some(ports), Some((base, _))) => format!("{base}:{}", slot.port(ports)),
        _ => b.url.clone(),
    }
}

/// What one round trip to a host reads: its manifest, its services'
/// records, and which compose services run.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostRoutes {
    pub manifest: Manifest,
    pub states: BTreeMap<String, State>,
    /// (compose service, compose project, `docker ps` status text).
    pub running: Vec<(String, String, String)>,
}

impl HostRoutes {
    pub fn state(&self, service: &str) -> State {
        self.states.get(service).cloned().unwrap_or_default()
    }

    /// Whether `service`'s live copy runs and is not unhealthy or starting.
    pub fn is_up(&self, service: &str) -> bool {
        let live = self.state(service).live().project(service);
        self.running.iter().any(|(svc, project, status)| {
            svc == service
                && (project == super::compose::PROJECT || *project == live)
                && !status.contains("unhealthy")
                && !status.contains("health: starting")
        })
    }

    /// The keys of every backend whose copy runs, by owner.
    pub fn live_keys(&self, host: &str) -> BTreeMap<String, BTreeMap<String, String>> {
        self.manifest
            .backends
            .iter()
            .filter(|b| self.is_up(&b.service))
            .map(|b| {
                (
                    owner(host, &b.service),
                    service_keys(b, self.state(&b.service).live()),
                )
            })
            .collect()
    }
}

const STATES_MARK: &str = "@@mesh-states";
const RUNNING_MARK: &str = "@@mesh-running";

/// Reads a host's routes, records and running containers in one round trip.
pub(crate) fn read_script() -> Script {
    let mut s = Script::new();
    s.line("cat {} 2>/dev/null || echo '{}'", &[ROUTES_FILE, "{}"]);
    s.raw(&state_fn());
    s.line("echo {}", &[STATES_MARK]);
    s.raw(&format!(
        "for n in $({}); do echo \"@@svc $n\"; mesh_state \"$n\"; done",
        recorded_services()
    ));
    s.line("echo {}", &[RUNNING_MARK]);
    s.raw("docker ps --filter status=running --format '{{.Label \"com.docker.compose.service\"}} {{.Label \"com.docker.compose.project\"}} {{.Status}}' 2>/dev/null; true");
    s
}

/// What [`read_script`] printed.
pub(crate) fn parse_read(host: &str, text: &str) -> Result<HostRoutes, RoutesError> {
    let (manifest, rest) = text
        .split_once(&format!("{STATES_MARK}\n"))
        .unwrap_or((text, ""));
    let (states, running) = rest
        .split_once(&format!("{RUNNING_MARK}\n"))
        .unwrap_or((rest, ""));
    let mut by_service: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in states.lines() {
        if let Some(name) = line.strip_prefix("@@svc ") {
            current = Some(name.trim().to_string());
            by_service.entry(name.trim().to_string()).or_default();
        } else if let Some(name) = &current {
            let text = by_service.entry(name.clone()).or_default();
            text.push_str(line);
            text.push('\n');
        }
    }
    Ok(HostRoutes {
        manifest: parse_manifest(host, manifest)?,
        states: by_service
            .into_iter()
            .map(|(k, v)| (k, State::parse(&v)))
            .collect(),
        running: running
            .lines()
            .filter_map(|l| {
                let mut w = l.splitn(3, ' ');
                let svc = w.next()?.trim();
                let project = w.next()?.trim();
                (!svc.is_empty()).then(|| {
                    (
                        svc.to_string(),
                        project.to_string(),
                        w.next().unwrap_or("").to_string(),
                    )
                })
            })
            .collect(),
    })
}

/// Read one host's routes over its own connection.
pub(crate) async fn read_host(ctx: &HostCtx) -> Result<HostRoutes, RoutesError> {
    let out = ctx
        .op_ctx()
        .run("read routes", read_script().as_str(), Input::None)
        .await?;
    parse_read(&ctx.host.name, &out.stdout_str())
}

/// The redis-cli lines a bastion runs for one host: its live services'
/// keys, then the withdrawal of every other owner of that host (services
/// that stopped or vanished, and the single owner older mesh versions used).
pub(crate) fn host_lines(
    host: &str,
    live: &BTreeMap<String, BTreeMap<String, String>>,
) -> Vec<String> {
    let mut lines: Vec<String> = live
        .iter()
        .map(|(owner, keys)| routes::host_script(owner, keys))
        .collect();
    let keep: Vec<String> = live
        .keys()
        .filter_map(|o| o.split_once('/').map(|(_, s)| s.to_string()))
        .collect();
    lines.push(routes::prune_host_script(host, &keep));
    lines
}

/// The cluster stage that publishes the routes of the run's hosts.
pub(crate) struct Routes {
    /// The step name it reports under (`services` or `up`).
    pub step: &'static str,
    pub bastions: BTreeMap<String, Arc<HostCtx>>,
    /// Every host of the inventory: keys of any other host are removed.
    pub inventory_hosts: Vec<String>,
    /// Withdraw the routes of hosts that failed the run's host step
    /// (`services-up`: a host whose containers did not come up).
    pub withdraw_failed: bool,
}

impl ClusterStep for Routes {
    fn name(&self) -> &'static str {
        self.step
    }

    fn run<'a>(&'a self, hosts: &'a [Arc<HostCtx>]) -> BoxFut<'a, ClusterOutcome> {
        self.run_with_failed(hosts, &[])
    }

    fn runs_for_failed(&self) -> bool {
        self.withdraw_failed
    }

    fn run_with_failed<'a>(
        &'a self,
        hosts: &'a [Arc<HostCtx>],
        failed: &'a [Arc<HostCtx>],
    ) -> BoxFut<'a, ClusterOutcome> {
        Box::pin(async move {
            let mut outcome = ClusterOutcome::default();
            let read = on_each_host(hosts, |ctx| async move { read_host(&ctx).await }).await;
            let read = match read {
                Ok(r) => r,
                Err(e) => return ClusterOutcome::failed(e),
            };
            // bastion -> (host, its lines)
            let mut by_bastion: BTreeMap<String, Vec<(String, Vec<String>)>> = BTreeMap::new();
            for (ctx, result) in read {
                let name = ctx.host.name.clone();
                match result {
                    Ok(r) => {
                        let live = r.live_keys(&name);
                        for b in &r.manifest.bastions {
                            by_bastion
                                .entry(b.clone())
                                .or_default()
                                .push((name.clone(), host_lines(&name, &live)));
                        }
                        if r.manifest.bastions.is_empty() {
                            continue;
                        }
                    }
                    Err(e) => outcome.host_failures.push((name, format!("routes: {e}"))),
                }
            }
            let mut withdrawn = Vec::new();
            if self.withdraw_failed {
                for ctx in failed {
                    withdrawn.push(ctx.host.name.clone());
                    for b in self.bastions.keys() {
                        by_bastion.entry(b.clone()).or_default().push((
                            ctx.host.name.clone(),
                            vec![routes::prune_host_script(&ctx.host.name, &[])],
                        ));
                    }
                }
            }
            let in_run = |h: &str| hosts.iter().any(|c| c.host.name == h);
            let failed_before = |h: &str| failed.iter().any(|c| c.host.name == h);
            let mut messages = Vec::new();
            for (bastion, entries) in &by_bastion {
                let Some(bctx) = self.bastions.get(bastion) else {
                    for (h, _) in entries {
                        outcome.host_failures.push((
                            h.clone(),
                            format!("routes: its bastion {bastion} is not in this inventory run. Fix: check traefik_host"),
                        ));
                    }
                    continue;
                };
                if bctx.dry_run {
                    messages.push(format!(
                        "{bastion}: would publish the routes of {} host(s)",
                        entries.len()
                    ));
                    continue;
                }
                let mut lines: Vec<String> = entries.iter().flat_map(|(_, l)| l.clone()).collect();
                lines.push(routes::forget_hosts_script(&self.inventory_hosts));
                match publish(bctx, &lines).await {
                    Ok(changed) => {
                        let n: i64 = changed.iter().sum();
                        outcome.changed |= n > 0;
                        messages.push(format!(
                            "{bastion}: routes of {} host(s), {n} key(s) changed",
                            entries.len()
                        ));
                    }
                    // A bastion that cannot be reached fails itself, not
                    // the workers whose routes its peers still serve.
                    Err(e) if in_run(bastion) => outcome
                        .host_failures
                        .push((bastion.clone(), format!("publishing routes: {e}"))),
                    Err(e) if failed_before(bastion) => messages.push(format!(
                        "{bastion}: routes not published (the bastion failed): {e}"
                    )),
                    Err(e) => {
                        for (h, _) in entries {
                            outcome
                                .host_failures
                                .push((h.clone(), format!("publishing routes on {bastion}: {e}")));
                        }
                    }
                }
            }
            if !withdrawn.is_empty() {
                messages.push(format!(
                    "withdrawn from the load balancer (failed): {}",
                    withdrawn.join(", ")
                ));
            }
            if !messages.is_empty() {
                outcome.message = Some(messages.join("\n"));
            }
            outcome
        })
    }
}

/// Run redis-cli `lines` (EVALs) on the bastion; the number of keys each changed.
pub(crate) async fn publish(bastion: &HostCtx, lines: &[String]) -> Result<Vec<i64>, RoutesError> {
    let ip = bastion
        .vars
        .get("OVERLAY_IP")
        .unwrap_or(&bastion.host.address)
        .to_string();
    let mut s = Script::new();
    s.raw("set -e");
    s.line("REDISCLI_AUTH=$(cat {})", &[REDIS_AUTH_FILE]);
    s.raw("export REDISCLI_AUTH");
    s.line("redis-cli --no-auth-warning -h {} -p 6379", &[&ip]);
    let input: String = lines.concat();
    let out = bastion
        .op_ctx()
        .run_ok(
            "publish routes",
            s.as_str(),
            Input::Bytes(Arc::new(input.into_bytes())),
        )
        .await?;
    let text = out.stdout_str();
    let counts = text
        .lines()
        .map(|l| routes::parse_changes(l).map(|n| n as i64))
        .collect::<Result<Vec<i64>, _>>()
        .map_err(|_| RoutesError::RedisAnswer(bastion.log.redact(text.trim())))?;
    if counts.len() != lines.len() {
        return Err(RoutesError::RedisAnswer(bastion.log.redact(text.trim())));
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> Backend {
        Backend {
            host: "w1".into(),
            service: "web".into(),
            labels: vec![(
                "traefik.http.routers.web.rule".into(),
                "Host(`a.test`)".into(),
            )],
            url: "http://10.0.0.2:8000".into(),
            ports: Some((8000, 8001)),
        }
    }

    #[test]
    fn a_manifest_reads_back_as_written() {
        let text = manifest("w1", &["edge".into(), "edge2".into()], &[backend()]);
        let m = parse_manifest("w1", &text).unwrap();
        assert_eq!(m.bastions, ["edge", "edge2"]);
        assert_eq!(m.backends, vec![backend()]);
        assert!(parse_manifest("w1", "{}").unwrap().backends.is_empty());
        assert!(parse_manifest("w1", "nope")
            .unwrap_err()
            .to_string()
            .contains("Fix:"));
        // What older mesh versions wrote: one bastion.
        let old = parse_manifest("w1", r#"{"bastion": "edge", "backends": []}"#).unwrap();
        assert_eq!(old.bastions, ["edge"]);
    }

    #[test]
    fn only_running_live_copies_are_published_each_under_its_own_owner() {
        let m = manifest("w1", &["edge".into()], &[backend()]);
        let text = format!(
            "{m}@@mesh-states\n@@svc web\nslot b\nimage mesh/web:2\n@@mesh-running\nweb mesh-web-b Up 3 minutes (healthy)\nother mesh Up 1 second\n"
        );
        let r = parse_read("w1", &text).unwrap();
        assert_eq!(r.state("web").slot, Some(Slot::B));
        assert!(r.is_up("web"));
        let keys = r.live_keys("w1");
        let web = &keys["w1/web"];
        assert!(web.values().any(|v| v == "http://10.0.0.2:8001"), "{web:?}");
        // Only the standby slot runs, or the copy is unhealthy: no route.
        for running in [
            "web mesh-web-a Up 3 minutes",
            "web mesh-web-b Up 1 minute (unhealthy)",
        ] {
            let text = format!("{m}@@mesh-states\n@@svc web\nslot b\n@@mesh-running\n{running}\n");
            assert!(parse_read("w1", &text).unwrap().live_keys("w1").is_empty());
        }
        let lines = host_lines("w1", &keys);
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains("\"w1/web\""), "{}", lines[0]);
    }

    #[test]
    fn the_read_script_is_valid_shell() {
        crate::quote::assert_valid_sh(&read_script());
    }
}
