//! Routes into the bastion's Redis (`ingress.publisher: mesh`).
//!
//! Each host's routes are recorded on the host itself
//! (`/var/lib/mesh/routes.json`, written by `services`), so they are read
//! back over the host's own connection and nothing depends on the local
//! dockerfiles folder. The controller then writes each host's keys on its
//! bastion with one atomic Lua call per host (`redis-cli` fed on stdin, the
//! password read there from a 0600 file): keys the host no longer wants
//! are deleted unless another host still publishes them, changed keys are
//! set, and the call returns how many keys changed, so a converged run
//! reports "unchanged". Hosts outside this run keep their keys untouched.

use super::bastion::REDIS_AUTH_FILE;
use super::plan::{Backend, HostPlan};
use super::routes;
use super::slots::{Slot, SLOT_DIR};
use super::ROUTES_FILE;
use crate::phases::{on_each_host, ClusterOutcome, ClusterStep, HostCtx};
use crate::quote::Script;
use crate::ssh::{BoxFut, Input};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The host's route manifest (what `services` records on the host).
pub(crate) fn manifest(host: &str, plan: &HostPlan) -> String {
    let backends: Vec<serde_json::Value> = plan
        .backends
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
    let doc = serde_json::json!({ "host": host, "bastion": plan.bastion, "backends": backends });
    format!("{doc:#}\n")
}

/// A manifest read back: the bastion and the backends.
pub(crate) fn parse_manifest(
    host: &str,
    text: &str,
) -> Result<(Option<String>, Vec<Backend>), String> {
    let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        format!("{ROUTES_FILE} is not valid JSON ({e}). Fix: run `mesh services` again")
    })?;
    let bastion = doc["bastion"].as_str().map(str::to_string);
    let mut out = Vec::new();
    for b in doc["backends"].as_array().into_iter().flatten() {
        let labels = b["labels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string())))
            .collect();
        out.push(Backend {
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
    Ok((bastion, out))
}

/// A host's desired keys: every backend's router/service keys, the URL on
/// the port of the slot `slots` says is live (the first port by default).
pub(crate) fn host_keys(
    host: &str,
    backends: &[Backend],
    slots: &BTreeMap<String, Slot>,
) -> BTreeMap<String, String> {
    let mut keys = BTreeMap::new();
    for b in backends {
        let url = live_url(b, slots.get(&b.service).copied().unwrap_or(Slot::A));
        keys.extend(routes::backend_keys(&b.service, &b.labels, host, &url));
    }
    keys
}

/// The backend's URL with the port of `slot`.
pub(crate) fn live_url(b: &Backend, slot: Slot) -> String {
    match (b.ports, b.url.rsplit_once(':')) {
        (Some(ports), Some((base, _))) => format!("{base}:{}", slot.port(ports)),
        _ => b.url.clone(),
    }
}

/// The live slots a host recorded, from `<service> <a|b>` lines.
pub(crate) fn parse_slots(text: &str) -> BTreeMap<String, Slot> {
    text.lines()
        .filter_map(|l| {
            let (svc, slot) = l.trim().split_once(' ')?;
            Some((svc.to_string(), slot.trim().parse().ok()?))
        })
        .collect()
}

/// redis-cli stdin: one EVAL line per host.
pub(crate) fn redis_input(per_host: &BTreeMap<String, BTreeMap<String, String>>) -> String {
    per_host
        .iter()
        .map(|(host, keys)| routes::host_script(host, keys))
        .collect()
}

/// The cluster stage that publishes the routes of the run's hosts.
pub(crate) struct Routes {
    /// The step name it reports under (`services` or `up`).
    pub step: &'static str,
    pub bastions: BTreeMap<String, Arc<HostCtx>>,
}

impl ClusterStep for Routes {
    fn name(&self) -> &'static str {
        self.step
    }

    fn run<'a>(&'a self, hosts: &'a [Arc<HostCtx>]) -> BoxFut<'a, ClusterOutcome> {
        Box::pin(async move {
            let mut outcome = ClusterOutcome::default();
            let read = on_each_host(hosts, |ctx| async move {
                let out = ctx
                    .op_ctx()
                    .run("read routes", read_script().as_str(), Input::None)
                    .await
                    .map_err(|e| e.to_string())?;
                let text = out.stdout_str();
                let (manifest, slots) = text.split_once(SLOTS_MARK).unwrap_or((&text, ""));
                let (bastion, backends) = parse_manifest(&ctx.host.name, manifest)?;
                Ok((bastion, backends, parse_slots(slots)))
            })
            .await;
            let read = match read {
                Ok(r) => r,
                Err(e) => return ClusterOutcome::failed(e),
            };
            // bastion -> host -> keys
            let mut by_bastion: BTreeMap<String, BTreeMap<String, BTreeMap<String, String>>> =
                BTreeMap::new();
            for (ctx, result) in read {
                match result {
                    Ok((Some(bastion), backends, slots)) => {
                        by_bastion.entry(bastion).or_default().insert(
                            ctx.host.name.clone(),
                            host_keys(&ctx.host.name, &backends, &slots),
                        );
                    }
                    Ok((None, _, _)) => {}
                    Err(e) => outcome
                        .host_failures
                        .push((ctx.host.name.clone(), format!("routes: {e}"))),
                }
            }
            let mut messages = Vec::new();
            for (bastion, per_host) in &by_bastion {
                let Some(bctx) = self.bastions.get(bastion) else {
                    for h in per_host.keys() {
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
                        per_host.len()
                    ));
                    continue;
                }
                match publish(bctx, per_host).await {
                    Ok(changed) => {
                        let n: i64 = changed.iter().sum();
                        outcome.changed |= n > 0;
                        messages.push(format!(
                            "{bastion}: routes of {} host(s), {n} key(s) changed",
                            per_host.len()
                        ));
                    }
                    Err(e) => {
                        for h in per_host.keys() {
                            outcome
                                .host_failures
                                .push((h.clone(), format!("publishing routes on {bastion}: {e}")));
                        }
                    }
                }
            }
            if !messages.is_empty() {
                outcome.message = Some(messages.join("\n"));
            }
            outcome
        })
    }
}

const SLOTS_MARK: &str = "@@mesh-slots\n";

/// Reads a host's routes and its services' live slots in one round trip.
pub(crate) fn read_script() -> Script {
    let mut s = Script::new();
    s.line("cat {} 2>/dev/null || echo '{}'", &[ROUTES_FILE, "{}"]);
    s.raw("echo '@@mesh-slots'");
    s.line(
        "for f in {}/*.slot; do [ -f \"$f\" ] && echo \"$(basename \"$f\" .slot) $(cat \"$f\")\"; done; true",
        &[SLOT_DIR],
    );
    s
}

/// Run the EVALs on the bastion; the number of keys changed per host.
pub(crate) async fn publish(
    bastion: &HostCtx,
    per_host: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<Vec<i64>, String> {
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
    let input = redis_input(per_host);
    let out = bastion
        .op_ctx()
        .run_ok(
            "publish routes",
            s.as_str(),
            Input::Bytes(Arc::new(input.into_bytes())),
        )
        .await
        .map_err(|e| e.to_string())?;
    let text = out.stdout_str();
    let counts = text
        .lines()
        .map(|l| routes::parse_changes(l).map(|n| n as i64))
        .collect::<Result<Vec<i64>, _>>()
        .map_err(|_| {
            format!(
                "unexpected answer from Redis: {}",
                bastion.log.redact(text.trim())
            )
        })?;
    if counts.len() != per_host.len() {
        return Err(format!(
            "unexpected answer from Redis: {}",
            bastion.log.redact(text.trim())
        ));
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> HostPlan {
        HostPlan {
            bastion: Some("edge".into()),
            backends: vec![Backend {
                host: "w1".into(),
                service: "web".into(),
                labels: vec![(
                    "traefik.http.routers.web.rule".into(),
                    "Host(`a.test`)".into(),
                )],
                url: "http://10.0.0.2:8000".into(),
                ports: Some((8000, 8001)),
            }],
            ..HostPlan::default()
        }
    }

    #[test]
    fn a_manifest_reads_back_as_written() {
        let text = manifest("w1", &plan());
        let (bastion, backends) = parse_manifest("w1", &text).unwrap();
        assert_eq!(bastion.as_deref(), Some("edge"));
        assert_eq!(backends, plan().backends);
        assert!(parse_manifest("w1", "{}").unwrap().1.is_empty());
        assert!(parse_manifest("w1", "nope").unwrap_err().contains("Fix:"));
    }

    #[test]
    fn one_eval_line_per_host() {
        let mut per = BTreeMap::new();
        let slots = parse_slots("web b\nother a\n");
        per.insert("w1".to_string(), host_keys("w1", &plan().backends, &slots));
        per.insert("w2".to_string(), BTreeMap::new());
        let input = redis_input(&per);
        assert_eq!(input.lines().count(), 2);
        assert!(input
            .lines()
            .all(|l| l.starts_with("\"EVAL\"") || l.starts_with("EVAL")));
        // web's live slot is b: its second port.
        assert!(input.contains("http://10.0.0.2:8001"), "{input}");
    }
}
