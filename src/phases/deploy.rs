//! `mesh deploy --service S`: roll one service to a new build without
//! dropping a request.
//!
//! S is built and shipped as `services` does (only S, only to the hosts
//! that run it). Then, per host, blue/green on host networking: S has a
//! port pair and runs as compose project `mesh-S-a` (first port) or
//! `mesh-S-b` (second). The new copy starts in the free slot; mesh waits
//! until it is healthy (its Docker health check, else `mesh.yml` `health`
//! checked from the host); then the host's route on the bastion is switched
//! to it (one atomic Redis call) and mesh waits until Traefik's API lists
//! the new backend and not the old; after a drain period the old copy
//! stops. Never healthy: the new copy is removed, routes are untouched, the
//! old copy keeps serving. Hosts go in batches (`--batch`); a failed batch
//! stops the next ones and the hosts already switched go back to their
//! previous image (unless `--no-rollback`). A per-service lock on every
//! host keeps two deploys apart; every host gets an audit line.

use super::services::build::Image;
use super::services::plan::{HostPlan, ServicePlan};
use super::services::publish;
use super::services::slots::{Slot, SLOT_DIR};
use super::services::up::{pick_compose, PROJECT};
use super::services::{service_ops, BUILD_DIR};
use super::{HostCtx, Phase, Step, StepOutcome};
use crate::ops::{converge, AptInstall, OpError, OpFailure, OpReport, Outcome};
use crate::quote::Script;
use crate::ssh::{BoxFut, Input};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Images of a service kept as "previous" on each host.
const KEEP_PREVIOUS: usize = 3;

/// What `deploy` was asked to do.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    pub service: String,
    /// Deploy even when the hosts already run this build.
    pub force: bool,
    /// Go back to each host's previous image instead of a new build.
    pub rollback: bool,
    /// Seconds the old copy keeps serving after the switch.
    pub drain: u64,
    /// Seconds to wait for another deploy's lock (0: fail at once).
    pub lock_wait: u64,
    pub break_lock: bool,
    /// Local audit log (`.mesh/deploy.log` next to the inventory).
    pub audit: PathBuf,
}

/// Where a roll takes a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The build `deploy` just shipped.
    New,
    /// The host's previous image (`--rollback`, or a later batch failed).
    Previous,
}

/// The deploy phase: ship, then roll; `undo()` is the step that sends a
/// switched host back when a later batch fails.
pub struct Deploy {
    opts: DeployOptions,
    plans: Arc<BTreeMap<String, HostPlan>>,
    images: BTreeMap<String, Arc<Image>>,
    bastions: BTreeMap<String, Arc<HostCtx>>,
    target: Target,
}

impl Deploy {
    pub(crate) fn new(
        opts: DeployOptions,
        plans: BTreeMap<String, HostPlan>,
        images: BTreeMap<String, Arc<Image>>,
        bastions: BTreeMap<String, Arc<HostCtx>>,
    ) -> Self {
        let target = if opts.rollback {
            Target::Previous
        } else {
            Target::New
        };
        Deploy {
            opts,
            plans: Arc::new(plans),
            images,
            bastions,
            target,
        }
    }

    /// The hosts the deploy runs on, in inventory order of `ctxs`.
    pub fn hosts(&self) -> Vec<String> {
        self.plans.keys().cloned().collect()
    }

    /// The step that switches a host back to its previous image.
    pub fn undo(&self) -> Deploy {
        Deploy {
            opts: self.opts.clone(),
            plans: self.plans.clone(),
            images: BTreeMap::new(),
            bastions: self.bastions.clone(),
            target: Target::Previous,
        }
    }

    pub fn phase(self) -> Phase {
        Phase::of_steps("deploy", vec![Box::new(self)])
    }

    fn service(&self, ctx: &HostCtx) -> Option<&ServicePlan> {
        self.plans
            .get(&ctx.host.name)
            .and_then(|p| p.services.iter().find(|s| s.name == self.opts.service))
    }
}

/// One stage of a host's roll, timed, for the report.
struct Stages {
    started: Instant,
    done: Vec<(String, f64)>,
}

impl Stages {
    fn new() -> Self {
        Stages {
            started: Instant::now(),
            done: Vec::new(),
        }
    }

    fn mark(&mut self, ctx: &HostCtx, stage: &str) {
        ctx.stage(stage);
        let t = self.started.elapsed().as_secs_f64();
        ctx.log.line(&format!("deploy stage {stage} at {t:.2}s"));
        self.done.push((stage.to_string(), t));
    }

    fn text(&self) -> String {
        self.done
            .iter()
            .map(|(s, t)| format!("{s} {t:.1}s"))
            .collect::<Vec<_>>()
            .join(" → ")
    }
}

fn fail(label: &str, e: impl Into<String>) -> OpFailure {
    OpFailure {
        label: label.into(),
        error: OpError::Other(e.into()),
        done: Vec::new(),
    }
}

/// The host's record of the service: live slot, its image, earlier images.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct State {
    slot: Option<Slot>,
    image: Option<String>,
    previous: Vec<String>,
}

fn parse_state(text: &str) -> State {
    let mut st = State::default();
    for line in text.lines() {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        let value = value.trim();
        match key {
            "slot" => st.slot = value.parse().ok(),
            "image" if !value.is_empty() => st.image = Some(value.to_string()),
            "previous" if !value.is_empty() => st.previous.push(value.to_string()),
            _ => {}
        }
    }
    st
}

/// `MESH_PORT_<SERVICE>`, as the slot compose file reads it.
fn port_env(service: &str) -> String {
    format!("MESH_{}", super::services::plan::port_var(service))
}

impl Deploy {
    fn state_script(&self) -> Script {
        let base = format!("{SLOT_DIR}/{}", self.opts.service);
        let mut s = Script::new();
        s.line(
            "echo \"slot $(cat {} 2>/dev/null)\"",
            &[&format!("{base}.slot")],
        );
        s.line(
            "echo \"image $(cat {} 2>/dev/null)\"",
            &[&format!("{base}.image")],
        );
        s.line(
            "sed 's/^/previous /' {} 2>/dev/null; true",
            &[&format!("{base}.previous")],
        );
        s
    }

    /// Take the service's lock on the host (an atomic mkdir), waiting or
    /// breaking it as asked.
    async fn lock(&self, ctx: &HostCtx) -> Result<(), OpFailure> {
        let dir = format!("{SLOT_DIR}/{}.lock", self.opts.service);
        let holder = format!(
            "pid {} on {} since {} (mesh {})",
            std::process::id(),
            controller_name(),
            crate::log::utc_time(":"),
            env!("CARGO_PKG_VERSION")
        );
        let deadline = Instant::now() + Duration::from_secs(self.opts.lock_wait);
        let mut broke = !self.opts.break_lock;
        loop {
            let mut s = Script::new();
            s.line("mkdir -p {}", &[SLOT_DIR]);
            if !broke {
                s.line("rm -rf -- {}", &[&dir]);
                broke = true;
            }
            s.line(
                "if mkdir {} 2>/dev/null; then printf '%s\\n' {} > {}/holder; echo taken; else echo \"held $(cat {}/holder 2>/dev/null)\"; fi",
                &[&dir, &holder, &dir, &dir],
            );
            let out = ctx
                .op_ctx()
                .run("deploy lock", s.as_str(), Input::None)
                .await
                .map_err(|e| fail("lock", e.to_string()))?;
            let text = out.stdout_str();
            if text.trim() == "taken" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let who = text.trim().trim_start_matches("held ").to_string();
                return Err(fail(
                    "lock",
                    format!(
                        "another deploy of {} holds the lock on {}: {who}. Fix: wait for it, pass --lock-wait SECONDS, or --break-lock if that run is gone",
                        self.opts.service, ctx.host.name
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn unlock(&self, ctx: &HostCtx) {
        let mut s = Script::new();
        s.line(
            "rm -rf -- {}",
            &[&format!("{SLOT_DIR}/{}.lock", self.opts.service)],
        );
        let _ = ctx
            .op_ctx()
            .run("deploy unlock", s.as_str(), Input::None)
            .await;
    }

    /// Ship the new build: image, files, the slot compose file.
    async fn ship(&self, ctx: &HostCtx, s: &ServicePlan) -> Result<Vec<OpReport>, OpFailure> {
        let id = format!("svc:{}", s.name);
        let mut ops: Vec<Box<dyn crate::ops::Op>> =
            vec![Box::new(AptInstall::new(["zstd", "curl"]))];
        ops.extend(service_ops(s, &id, &self.images, false).map_err(|e| fail("ship", e))?);
        converge(&ctx.op_ctx(), &ops, false).await
    }

    /// Start `image` in `slot`, wait until healthy; on failure remove it and
    /// return the reason with its last log lines.
    async fn start(
        &self,
        ctx: &HostCtx,
        s: &ServicePlan,
        slot: Slot,
        image: &str,
    ) -> Result<(), OpFailure> {
        let ports = s.slot.as_ref().map(|x| x.ports).unwrap_or((0, 0));
        let port = slot.port(ports);
        let project = slot.project(&s.name);
        let compose_file = format!(
            "{BUILD_DIR}/{}/{}",
            s.name,
            super::services::plan::SLOT_COMPOSE
        );
        let ip = ctx
            .vars
            .get("OVERLAY_IP")
            .unwrap_or(&ctx.host.address)
            .to_string();
        let health = s.options.health.clone();
        let deadline = health.as_ref().map_or(60, |h| h.deadline);
        let mut sc = Script::new();
        sc.raw(pick_compose());
        sc.line(
            "out=$(env {} {} \"$@\" -p {} -f {} up -d --force-recreate 2>&1) || { printf '%s\\n' \"$out\" | tail -n 15; echo 'start failed'; exit 0; }",
            &[
                &format!("{}={port}", port_env(&s.name)),
                &format!("MESH_IMAGE={image}"),
                &project,
                &compose_file,
            ],
        );
        sc.line(
            "id=$(docker ps -aq --filter label=com.docker.compose.project={} | head -n 1)",
            &[&project],
        );
        sc.line("end=$(( $(date +%s) + {} ))", &[&deadline.to_string()]);
        sc.raw("passes=0");
        let (path, timeout, need, interval) = match &health {
            Some(h) => (h.path.clone(), h.timeout, h.passes, h.interval),
            None => ("/".into(), 2, 1, 1),
        };
        let url = format!("http://{ip}:{port}{path}");
        sc.raw(
            r#"while :; do
  st=$(docker inspect --format '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id" 2>/dev/null)
  case "$st" in
    "running healthy") echo healthy; exit 0 ;;
    "running unhealthy"|exited*|dead*|restarting*) break ;;
    "running none")"#,
        );
        if health.is_some() {
            sc.line(
                "      code=$(curl -s -o /dev/null -w '%{http_code}' --max-time {} {} 2>/dev/null || true)",
                &[&timeout.to_string(), &url],
            );
            sc.raw("      case \"$code\" in 2??) passes=$((passes + 1)) ;; *) passes=0 ;; esac");
            sc.line(
                "      [ \"$passes\" -ge {} ] && { echo healthy; exit 0; } ;;",
                &[&need.to_string()],
            );
        } else {
            // No health check at all: running for a moment counts.
            sc.raw("      passes=$((passes + 1)); [ \"$passes\" -ge 2 ] && { echo healthy; exit 0; } ;;");
        }
        sc.raw("  esac");
        sc.raw("  [ \"$(date +%s)\" -ge \"$end\" ] && break");
        sc.line("  sleep {}", &[&interval.to_string()]);
        sc.raw("done");
        sc.raw("echo \"not healthy: $st\"");
        sc.raw("docker logs --tail 15 \"$id\" 2>&1 | sed 's/^/log /'");
        sc.line(
            "env {} \"$@\" -p {} -f {} down -t 5 >/dev/null 2>&1 || true",
            &[&format!("MESH_IMAGE={image}"), &project, &compose_file],
        );
        let out = ctx
            .op_ctx()
            .run(
                &format!("start {} in slot {slot}", s.name),
                sc.as_str(),
                Input::None,
            )
            .await
            .map_err(|e| fail("starting", e.to_string()))?;
        let text = out.stdout_str();
        if text.lines().any(|l| l == "healthy") {
            return Ok(());
        }
        let logs: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("log "))
            .collect();
        let why = text
            .lines()
            .find(|l| l.starts_with("not healthy") || l.starts_with("start failed"))
            .unwrap_or("not healthy");
        Err(fail(
            "healthy",
            ctx.log.redact(&format!(
                "the new copy ({image}, slot {slot}, port {port}) was {why} within {deadline} s and was removed; the old copy keeps serving. Its last log lines:\n{}",
                logs.join("\n")
            )),
        ))
    }

    /// Point the host's route at `slot` and wait until Traefik serves it.
    async fn route(&self, ctx: &HostCtx, slot: Slot) -> Result<bool, OpFailure> {
        let out = ctx
            .op_ctx()
            .run("read routes", publish::read_script().as_str(), Input::None)
            .await
            .map_err(|e| fail("routing", e.to_string()))?;
        let text = out.stdout_str();
        let (manifest, slots) = text.split_once("@@mesh-slots\n").unwrap_or((&text, ""));
        let (bastion, backends) =
            publish::parse_manifest(&ctx.host.name, manifest).map_err(|e| fail("routing", e))?;
        let mine: Vec<_> = backends
            .into_iter()
            .filter(|b| b.service == self.opts.service)
            .collect();
        let (Some(bastion), false) = (bastion, mine.is_empty()) else {
            return Ok(false);
        };
        let Some(bctx) = self.bastions.get(&bastion) else {
            return Err(fail(
                "routing",
                format!("bastion {bastion} is not in this inventory"),
            ));
        };
        let mut live = publish::parse_slots(slots);
        let old_urls: Vec<String> = mine
            .iter()
            .map(|b| publish::live_url(b, live.get(&b.service).copied().unwrap_or(Slot::A)))
            .collect();
        live.insert(self.opts.service.clone(), slot);
        let all = publish::parse_manifest(&ctx.host.name, manifest)
            .map(|(_, b)| b)
            .unwrap_or_default();
        let keys = publish::host_keys(&ctx.host.name, &all, &live);
        let per_host = BTreeMap::from([(ctx.host.name.clone(), keys.clone())]);
        publish::publish(bctx, &per_host)
            .await
            .map_err(|e| fail("routing", e))?;
        // Wait until Traefik's API lists the new backend and not the old.
        let new_urls: Vec<String> = mine.iter().map(|b| publish::live_url(b, slot)).collect();
        let services: Vec<String> = keys
            .keys()
            .filter_map(|k| k.strip_prefix("traefik/http/services/"))
            .filter_map(|k| k.split('/').next())
            .map(str::to_string)
            .collect();
        let Some(name) = services.first() else {
            return Ok(true);
        };
        let mut s = Script::new();
        s.line("for i in $(seq 1 60); do a=$(curl -s --max-time 2 http://127.0.0.1:8080/api/http/services/{}@redis)", &[name]);
        let mut cond = String::new();
        for u in &new_urls {
            cond.push_str(&format!(
                "echo \"$a\" | grep -qF -- {} && ",
                crate::quote::quote(&format!("\"{u}\""))
            ));
        }
        for u in old_urls.iter().filter(|u| !new_urls.contains(u)) {
            cond.push_str(&format!(
                "! echo \"$a\" | grep -qF -- {} && ",
                crate::quote::quote(&format!("\"{u}\""))
            ));
        }
        s.raw(&format!("  if {cond}true; then echo switched; exit 0; fi; sleep 0.25; done; echo \"traefik: $a\""));
        let out = bctx
            .op_ctx()
            .run("wait for traefik", s.as_str(), Input::None)
            .await
            .map_err(|e| fail("routing", e.to_string()))?;
        if out.stdout_str().lines().any(|l| l == "switched") {
            Ok(true)
        } else {
            Err(fail(
                "routing",
                format!(
                    "Traefik on {bastion} did not switch {} to {} within 15 s",
                    self.opts.service,
                    new_urls.join(", ")
                ),
            ))
        }
    }

    /// Record the new live slot and image (and the earlier images).
    async fn record(
        &self,
        ctx: &HostCtx,
        st: &State,
        slot: Slot,
        image: &str,
    ) -> Result<(), OpFailure> {
        let base = format!("{SLOT_DIR}/{}", self.opts.service);
        let mut previous: Vec<String> = Vec::new();
        if let Some(old) = st.image.as_ref().filter(|o| *o != image) {
            previous.push(old.clone());
        }
        previous.extend(st.previous.iter().filter(|p| *p != image).cloned());
        previous.dedup();
        previous.truncate(KEEP_PREVIOUS);
        let mut s = Script::new();
        s.line("mkdir -p {}", &[SLOT_DIR]);
        s.write_file(&format!("{base}.slot"), &format!("{slot}\n"));
        s.write_file(&format!("{base}.image"), &format!("{image}\n"));
        s.write_file(
            &format!("{base}.previous"),
            &previous
                .iter()
                .map(|p| format!("{p}\n"))
                .collect::<String>(),
        );
        ctx.op_ctx()
            .run("record deploy", s.as_str(), Input::None)
            .await
            .map_err(|e| fail("recording", e.to_string()))?;
        Ok(())
    }

    /// Stop the copy in `slot` (after the drain).
    async fn stop(&self, ctx: &HostCtx, s: &ServicePlan, slot: Slot) -> Result<(), OpFailure> {
        let project = slot.project(&s.name);
        let mut sc = Script::new();
        // Whichever way the copy was started (its slot project, or the shared
        // project of an older mesh), it goes.
        sc.line(
            "ids=$(docker ps -aq --filter label=com.docker.compose.project={})",
            &[&project],
        );
        sc.raw("[ -z \"$ids\" ] || docker rm -f $ids >/dev/null");
        sc.line(
            "ids=$(docker ps -aq --filter label=com.docker.compose.project={} --filter label=com.docker.compose.service={})",
            &[PROJECT, &s.name],
        );
        sc.raw("[ -z \"$ids\" ] || docker rm -f $ids >/dev/null; true");
        ctx.op_ctx()
            .run(
                &format!("stop {} slot {slot}", s.name),
                sc.as_str(),
                Input::None,
            )
            .await
            .map_err(|e| fail("stopping_old", e.to_string()))?;
        Ok(())
    }

    /// The audit line, on the host and locally.
    async fn audit(&self, ctx: &HostCtx, from: Option<&str>, to: &str, result: &str, seconds: f64) {
        let line = serde_json::json!({
            "time": crate::log::utc_time(":"),
            "who": controller_name(),
            "host": ctx.host.name,
            "service": self.opts.service,
            "from": from,
            "to": to,
            "result": result,
            "seconds": (seconds * 10.0).round() / 10.0,
        })
        .to_string();
        let mut s = Script::new();
        s.raw("mkdir -p /var/log/mesh");
        s.line("printf '%s\\n' {} >> /var/log/mesh/deploy.log", &[&line]);
        let _ = ctx.op_ctx().run("audit", s.as_str(), Input::None).await;
        if let Some(dir) = self.opts.audit.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.opts.audit)
        {
            let _ = writeln!(f, "{line}");
        }
    }

    async fn roll(&self, ctx: &HostCtx) -> Result<StepOutcome, OpFailure> {
        let Some(s) = self.service(ctx) else {
            return Ok(StepOutcome::default());
        };
        let mut stages = Stages::new();
        let out = ctx
            .op_ctx()
            .run("deploy state", self.state_script().as_str(), Input::None)
            .await
            .map_err(|e| fail("state", e.to_string()))?;
        let st = parse_state(&out.stdout_str());
        let live = st.slot.unwrap_or(Slot::A);
        let image = match self.target {
            Target::New => s.tag.clone(),
            Target::Previous => match st.previous.first() {
                Some(p) => p.clone(),
                None => {
                    return Err(fail(
                        "rollback",
                        format!(
                            "{} has no previous image of {} to go back to",
                            ctx.host.name, s.name
                        ),
                    ))
                }
            },
        };
        if ctx.dry_run {
            return Ok(StepOutcome {
                reports: vec![report(s, &st, &image, Outcome::WouldChange, "would roll")],
                output: Some(format!(
                    "would start {image} in slot {} and switch",
                    live.other()
                )),
            });
        }
        let mut reports = Vec::new();
        if self.target == Target::New {
            stages.mark(ctx, "shipping");
            reports.extend(self.ship(ctx, s).await?);
        }
        if st.image.as_deref() == Some(image.as_str()) && !self.opts.force {
            return Ok(StepOutcome {
                reports,
                output: Some(format!("{}: unchanged ({image})", s.name)),
            });
        }
        self.lock(ctx).await?;
        let result = self.switch(ctx, s, &st, live, &image, &mut stages).await;
        self.unlock(ctx).await;
        let seconds = stages.started.elapsed().as_secs_f64();
        match result {
            Ok(routed) => {
                self.audit(ctx, st.image.as_deref(), &image, "running", seconds)
                    .await;
                reports.push(report(
                    s,
                    &st,
                    &image,
                    Outcome::Changed,
                    if routed { "switched" } else { "handed over" },
                ));
                Ok(StepOutcome {
                    reports,
                    output: Some(format!(
                        "{}: {} → {image} ({})",
                        s.name,
                        st.image.as_deref().unwrap_or("?"),
                        stages.text()
                    )),
                })
            }
            Err(e) => {
                self.audit(ctx, st.image.as_deref(), &image, "rolled_back", seconds)
                    .await;
                Err(e)
            }
        }
    }

    async fn switch(
        &self,
        ctx: &HostCtx,
        s: &ServicePlan,
        st: &State,
        live: Slot,
        image: &str,
        stages: &mut Stages,
    ) -> Result<bool, OpFailure> {
        let next = live.other();
        stages.mark(ctx, "starting");
        self.start(ctx, s, next, image)
            .await
            .inspect_err(|_| stages.mark(ctx, "rolled_back"))?;
        stages.mark(ctx, "healthy");
        stages.mark(ctx, "routing");
        let routed = match self.route(ctx, next).await {
            Ok(r) => r,
            Err(e) => {
                // The route may be half-way: point it back, remove the new copy.
                let _ = self.route(ctx, live).await;
                let _ = self.stop(ctx, s, next).await;
                stages.mark(ctx, "rolled_back");
                return Err(e);
            }
        };
        self.record(ctx, st, next, image).await?;
        if routed {
            tokio::time::sleep(Duration::from_secs(self.opts.drain)).await;
        }
        stages.mark(ctx, "stopping_old");
        self.stop(ctx, s, live).await?;
        stages.mark(ctx, "running");
        Ok(routed)
    }
}

fn report(s: &ServicePlan, st: &State, image: &str, outcome: Outcome, what: &str) -> OpReport {
    OpReport {
        label: format!("deploy {}", s.name),
        outcome,
        detail: format!("{what}: {} → {image}", st.image.as_deref().unwrap_or("?")),
    }
}

/// `user@hostname` of the controller, for locks and audit lines.
fn controller_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "controller".into());
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    format!("{user}@{host}")
}

impl Step for Deploy {
    fn name(&self) -> &'static str {
        match self.target {
            Target::New => "deploy",
            Target::Previous => "rollback",
        }
    }

    fn wants(&self, ctx: &HostCtx) -> bool {
        self.plans.contains_key(&ctx.host.name)
    }

    fn run<'a>(&'a self, ctx: &'a HostCtx) -> BoxFut<'a, Result<StepOutcome, OpFailure>> {
        Box::pin(self.roll(ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_reads_back() {
        let st = parse_state(
            "slot b\nimage mesh/web:2\nprevious mesh/web:1\nprevious mesh/web:0\nlock \n",
        );
        assert_eq!(st.slot, Some(Slot::B));
        assert_eq!(st.image.as_deref(), Some("mesh/web:2"));
        assert_eq!(st.previous, ["mesh/web:1", "mesh/web:0"]);
        let empty = parse_state("slot \nimage \n");
        assert_eq!(empty, State::default());
        assert_eq!(port_env("web-api"), "MESH_PORT_WEB_API");
    }
}
