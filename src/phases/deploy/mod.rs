//! `mesh deploy --service S`: roll one service to a new build without
//! dropping a request, or (`strategy: recreate`) with a short, measured
//! downtime for services that must never run twice.
//!
//! Per host, under the service's lock on that host (taken before its state
//! is read and before anything is shipped):
//!
//! - **blue-green** (a service with a port pair): S runs as compose project
//!   `mesh-S-a` (first port) or `mesh-S-b` (second). The new copy starts in
//!   the free slot and must be healthy (Docker's health check and `mesh.yml`
//!   `health`, both when both are declared; neither: it accepts TCP on its
//!   port). Then S's route — only S's, owner `<host>/S` — moves to the new
//!   port on every bastion that serves the host, and mesh waits until each
//!   bastion's Traefik API lists the new backend of S's own Traefik services
//!   and not the old. The record is written (one atomic file), and after the
//!   drain the old copy stops gracefully (SIGTERM, `stop_grace_period`).
//! - **recreate** (`strategy: recreate`, or a service without ports, which
//!   runs in the host's shared project): the old copy stops, the new starts
//!   and must be healthy, the route follows; the downtime is measured.
//!
//! Never healthy: the new copy is removed and the old keeps (or starts
//! again) serving. A route that cannot be switched is put back and
//! confirmed before the new copy stops; one that cannot be put back leaves
//! both copies running and says so. Hosts go in batches (`--batch`); a
//! failed batch stops the next ones and the hosts this run switched go back
//! (unless `--no-rollback`). `--rollback` pops the host's stack of previous
//! images. Every host gets an audit line. A host without room for the new
//! image fails before it is shipped; after a successful roll, each host
//! drops the images no rollback needs ([`prune`](crate::phases::prune)).

pub(crate) mod commands;

use super::services::build::Image;
use super::services::folder::Strategy;
use super::services::plan::{Backend, HostPlan, ServicePlan};
use super::services::publish::{self, HostRoutes};
use super::services::slots::{state_file, Slot, State, SLOT_DIR};
use super::services::up::pick_compose;
use super::services::{
    firewall_ops, room_op, service_ops, shared_ops, Hook, BUILD_DIR, ROUTES_FILE,
};
use super::{HostCtx, Phase, Step, StepOutcome};
use crate::inventory::{Publisher, TraefikApi};
use crate::ops::image::fanout::Fanout;
use crate::ops::{converge, AptInstall, FileOp, Op, OpError, OpFailure, OpReport, Outcome};
use crate::quote::Script;
use crate::ssh::{BoxFut, Input};
use commands::{
    confirm_script, controller_name, health_script, holder_text, is_stale, route_checks,
    stop_script, Launch,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Seconds to wait for every bastion's Traefik to show a switched route.
const CONFIRM_SECONDS: u64 = 15;

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
    /// Who publishes routes: mesh switches them itself, traefik-kop
    /// follows the containers.
    pub publisher: Publisher,
    /// Where each bastion's Traefik API answers, to confirm a switch.
    pub traefik_api: Option<TraefikApi>,
}

/// Where a roll takes a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The build `deploy` just shipped.
    New,
    /// The top of the host's stack of previous images (`--rollback`).
    Previous,
    /// Undo of this run on a host it switched (a later batch failed).
    Undo,
}

/// The deploy phase: ship, then roll; `undo()` is the step that sends a
/// host this run switched back when a later batch fails.
pub struct Deploy {
    opts: DeployOptions,
    plans: Arc<BTreeMap<String, HostPlan>>,
    images: BTreeMap<String, Arc<Image>>,
    /// Shipping through garage (`None`: by SSH).
    fanout: Option<Arc<Fanout>>,
    bastions: BTreeMap<String, Arc<HostCtx>>,
    target: Target,
    /// Hosts this run moved to another image (the undo touches only these).
    switched: Arc<Mutex<BTreeSet<String>>>,
}

impl Deploy {
    pub(crate) fn new(
        opts: DeployOptions,
        plans: BTreeMap<String, HostPlan>,
        images: BTreeMap<String, Arc<Image>>,
        fanout: Option<Arc<Fanout>>,
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
            fanout,
            bastions,
            target,
            switched: Arc::default(),
        }
    }

    /// The hosts the deploy runs on, in inventory order of `ctxs`.
    pub fn hosts(&self) -> Vec<String> {
        self.plans.keys().cloned().collect()
    }

    /// Whether a host of the deploy publishes routes mesh must switch but
    /// no Traefik API address is known to confirm them.
    pub fn needs_traefik_api(&self) -> bool {
        self.opts.publisher == Publisher::Mesh
            && self.opts.traefik_api.is_none()
            && self.plans.values().any(|p| !p.backends.is_empty())
    }

    /// The step that switches the hosts this run switched back.
    pub fn undo(&self) -> Deploy {
        Deploy {
            opts: self.opts.clone(),
            plans: self.plans.clone(),
            images: BTreeMap::new(),
            fanout: None,
            bastions: self.bastions.clone(),
            target: Target::Undo,
            switched: self.switched.clone(),
        }
    }

    /// The roll, then the image collection on each host that rolled.
    pub fn phase(self) -> Phase {
        Phase::of_steps(
            "deploy",
            vec![
                Box::new(self),
                Box::new(crate::phases::prune::Images::after_run()),
            ],
        )
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

/// Why a host's deploy stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeployError {
    #[error("another deploy of {service} holds the lock on {host}: {holder}. Fix: wait for it, pass --lock-wait SECONDS, or --break-lock if that run is gone")]
    Locked {
        service: String,
        host: String,
        holder: String,
    },
    #[error("{host} has no previous image of {service} to go back to")]
    NoPrevious { host: String, service: String },
    #[error("the previous image {image} of {service} is no longer on {host}; nothing was stopped. Fix: deploy a build instead (mesh deploy --service {service})")]
    PreviousGone {
        host: String,
        service: String,
        image: String,
    },
    #[error("{0}")]
    Unhealthy(String),
    #[error("{0}")]
    Routing(String),
    #[error("{what}: {error}")]
    Remote { what: String, error: OpError },
    #[error(transparent)]
    Ship(#[from] super::services::StepError),
    #[error("reading its routes and deploy state: {0}")]
    State(super::services::publish::RoutesError),
}

impl DeployError {
    fn at(self, label: &str) -> OpFailure {
        OpFailure {
            label: label.into(),
            error: OpError::Step(Box::new(self)),
            done: Vec::new(),
        }
    }
}

fn remote(what: &str) -> impl FnOnce(OpError) -> DeployError + '_ {
    move |error| DeployError::Remote {
        what: what.to_string(),
        error,
    }
}

fn report(
    s: &ServicePlan,
    from: Option<&str>,
    image: &str,
    outcome: Outcome,
    what: &str,
) -> OpReport {
    OpReport {
        label: format!("deploy {}", s.name),
        outcome,
        detail: format!("{what}: {} → {image}", from.unwrap_or("?")),
    }
}

/// What one roll did, for the report.
struct Rolled {
    routed: bool,
    /// Recreate: seconds nothing served.
    downtime: Option<f64>,
}

impl Deploy {
    /// Take the service's lock on the host (an atomic mkdir), waiting,
    /// breaking it as asked, or taking over a stale one of this controller.
    async fn lock(&self, ctx: &HostCtx) -> Result<Option<String>, DeployError> {
        let dir = format!("{SLOT_DIR}/{}.lock", self.opts.service);
        let holder = holder_text(std::process::id());
        let deadline = Instant::now() + Duration::from_secs(self.opts.lock_wait);
        let mut breaking = self.opts.break_lock;
        let mut note = None;
        loop {
            let mut s = Script::new();
            s.line("mkdir -p {}", &[SLOT_DIR]);
            if breaking {
                s.line("rm -rf -- {}", &[&dir]);
                breaking = false;
            }
            s.line(
                "if mkdir {} 2>/dev/null; then printf '%s\\n' {} > {}/holder; echo taken; else echo \"held $(cat {}/holder 2>/dev/null)\"; fi",
                &[&dir, &holder, &dir, &dir],
            );
            let out = ctx
                .op_ctx()
                .run("deploy lock", s.as_str(), Input::None)
                .await
                .map_err(remote("deploy lock"))?;
            let text = out.stdout_str();
            if text.trim() == "taken" {
                return Ok(note);
            }
            let who = text.trim().trim_start_matches("held").trim().to_string();
            if is_stale(&who) {
                note = Some(format!(
                    "took over a stale lock of {}: {who} (that process no longer runs)",
                    self.opts.service
                ));
                ctx.log.line(note.as_deref().unwrap_or_default());
                breaking = true;
                continue;
            }
            if Instant::now() >= deadline {
                return Err(DeployError::Locked {
                    service: self.opts.service.clone(),
                    host: ctx.host.name.clone(),
                    holder: who,
                });
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

    /// Ship the new build: image, files, the slot compose file (or the
    /// host's compose file for a shared-project service), volumes, firewall
    /// rules for its ports, its after-hook when its files changed.
    async fn ship(&self, ctx: &HostCtx, s: &ServicePlan) -> Result<Vec<OpReport>, OpFailure> {
        let plan = &self.plans[&ctx.host.name];
        let id = format!("svc:{}", s.name);
        // First: a host without room fails in the probe, before any write.
        let mut ops: Vec<Box<dyn Op>> = vec![
            Box::new(room_op(ctx, std::slice::from_ref(s), &self.images)),
            Box::new(AptInstall::new(["zstd", "curl"])),
        ];
        for op in shared_ops(plan) {
            ops.push(Box::new(op));
        }
        ops.extend(
            service_ops(s, &id, &self.images, self.fanout.as_ref(), false)
                .map_err(|e| DeployError::Ship(e).at("shipping"))?,
        );
        if s.slot.is_none() {
            if let Some(f) = &plan.compose {
                ops.push(Box::new(
                    FileOp::from_shared(
                        format!("{BUILD_DIR}/docker-compose.yml"),
                        f.bytes.clone(),
                        f.sha256.clone(),
                    )
                    .mode(f.mode),
                ));
            }
        }
        for op in firewall_ops(ctx, plan) {
            ops.push(Box::new(op));
        }
        if let Some(hook) = &s.after {
            ops.push(Box::new(Hook::new(s, "after.sh", hook, &[id])));
        }
        converge(&ctx.op_ctx(), &ops, false).await
    }

    /// S's backends as this deploy publishes them.
    fn backends(&self, ctx: &HostCtx) -> Vec<Backend> {
        self.plans[&ctx.host.name]
            .backends
            .iter()
            .filter(|b| b.service == self.opts.service)
            .cloned()
            .collect()
    }

    /// Whether mesh switches routes for S on this host.
    fn routed(&self, ctx: &HostCtx, read: &HostRoutes) -> bool {
        self.opts.publisher == Publisher::Mesh
            && (!self.backends(ctx).is_empty()
                || read
                    .manifest
                    .backends
                    .iter()
                    .any(|b| b.service == self.opts.service))
    }

    fn keys(backends: &[Backend], slot: Slot) -> BTreeMap<String, String> {
        backends
            .iter()
            .flat_map(|b| publish::service_keys(b, slot))
            .collect()
    }

    /// Point S's route at `new` on every bastion of the host and wait until
    /// each bastion's Traefik serves it (and no longer `old`). The time
    /// waited on the slowest bastion, in ms.
    async fn switch_route(
        &self,
        ctx: &HostCtx,
        old: &BTreeMap<String, String>,
        new: &BTreeMap<String, String>,
    ) -> Result<u64, DeployError> {
        let plan = &self.plans[&ctx.host.name];
        let owner = publish::owner(&ctx.host.name, &self.opts.service);
        let line = super::services::routes::host_script(&owner, new);
        let checks = route_checks(old, new);
        let api = self
            .opts
            .traefik_api
            .clone()
            .unwrap_or_else(TraefikApi::default_local);
        let mut slowest = 0;
        for name in &plan.bastions {
            let Some(bctx) = self.bastions.get(name) else {
                return Err(DeployError::Routing(format!(
                    "bastion {name} is not in this inventory"
                )));
            };
            publish::publish(bctx, std::slice::from_ref(&line))
                .await
                .map_err(|e| DeployError::Routing(format!("publishing on {name}: {e}")))?;
        }
        for name in &plan.bastions {
            let bctx = &self.bastions[name];
            if checks.is_empty() {
                continue;
            }
            let out = bctx
                .op_ctx()
                .run(
                    "wait for traefik",
                    confirm_script(&api, &checks, CONFIRM_SECONDS).as_str(),
                    Input::None,
                )
                .await
                .map_err(|e| DeployError::Routing(format!("Traefik on {name}: {e}")))?;
            let text = out.stdout_str();
            let ms = |p: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(p))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            match ms("switched ") {
                Some(t) => slowest = slowest.max(t),
                None => {
                    let waited = ms("waited ").unwrap_or(CONFIRM_SECONDS * 1000);
                    let want: Vec<String> =
                        checks.iter().map(commands::RouteCheck::describe).collect();
                    return Err(DeployError::Routing(format!(
                        "Traefik on {name} ({}) did not show {} after {:.1} s",
                        api.base,
                        want.join(", "),
                        waited as f64 / 1000.0
                    )));
                }
            }
        }
        Ok(slowest)
    }

    /// Start a copy and wait until it is healthy; on failure it is removed
    /// and the reason comes with its last log lines.
    async fn start(
        &self,
        ctx: &HostCtx,
        s: &ServicePlan,
        launch: &Launch,
        image: &str,
    ) -> Result<(), DeployError> {
        let mut sc = Script::new();
        sc.raw(pick_compose());
        sc.raw(&launch.up_line());
        let (health, deadline) = health_script(ctx, s, launch);
        sc.append(&health);
        let out = ctx
            .op_ctx()
            .run(
                &format!("start {} ({image})", s.name),
                sc.as_str(),
                Input::None,
            )
            .await
            .map_err(remote("starting"))?;
        let text = out.stdout_str();
        if text.lines().any(|l| l == "healthy") {
            return Ok(());
        }
        // Not healthy: the new copy goes.
        let _ = ctx
            .op_ctx()
            .run(
                "remove the new copy",
                stop_script(&launch.filters, 5).as_str(),
                Input::None,
            )
            .await;
        let logs: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("log "))
            .collect();
        let why = text
            .lines()
            .find(|l| l.starts_with("not healthy"))
            .unwrap_or("not healthy");
        Err(DeployError::Unhealthy(ctx.log.redact(&format!(
            "the new copy ({image}{}) was {why} within {deadline} s and was removed. Its last log lines:\n{}",
            launch.port.map(|p| format!(", port {p}")).unwrap_or_default(),
            logs.join("\n")
        ))))
    }

    async fn stop(&self, ctx: &HostCtx, filters: &[String], grace: u64) -> Result<(), DeployError> {
        ctx.op_ctx()
            .run_ok(
                "stop the old copy",
                stop_script(filters, grace).as_str(),
                Input::None,
            )
            .await
            .map_err(remote("stopping the old copy"))?;
        Ok(())
    }

    /// Write the host's record of S (one atomic file) and its routes
    /// manifest with S's new backends; every write is checked.
    async fn record(
        &self,
        ctx: &HostCtx,
        read: &HostRoutes,
        state: &State,
    ) -> Result<(), DeployError> {
        let plan = &self.plans[&ctx.host.name];
        let manifest = read
            .manifest
            .with_service(&self.opts.service, &self.backends(ctx));
        let text = publish::manifest(&ctx.host.name, &plan.bastions, &manifest.backends);
        let mut s = Script::new();
        s.raw("set -e");
        s.line("mkdir -p {}", &[SLOT_DIR]);
        s.write_file(&state_file(&self.opts.service), &state.text());
        s.write_file(ROUTES_FILE, &text);
        for old in ["slot", "image", "previous"] {
            s.line(
                "rm -f -- {}",
                &[&format!("{SLOT_DIR}/{}.{old}", self.opts.service)],
            );
        }
        ctx.op_ctx()
            .run_ok("record deploy", s.as_str(), Input::None)
            .await
            .map_err(remote("recording the deploy"))?;
        Ok(())
    }

    /// The audit line, on the host and locally.
    async fn audit(&self, ctx: &HostCtx, from: Option<&str>, to: &str, result: &str, seconds: f64) {
        let line = serde_json::json!({
            "time": crate::log::utc_time(":"),
            "at": crate::log::utc_rfc3339(),
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
        if ctx.dry_run {
            let read = publish::read_host(ctx)
                .await
                .map_err(|e| DeployError::State(e).at("state"))?;
            let st = read.state(&s.name);
            let image = match self.target {
                Target::New => s.tag.clone(),
                _ => st.previous.first().cloned().unwrap_or_default(),
            };
            return Ok(StepOutcome {
                reports: vec![report(
                    s,
                    st.image.as_deref(),
                    &image,
                    Outcome::WouldChange,
                    "would roll",
                )],
                output: Some(format!("would start {image} and switch")),
            });
        }
        let note = self.lock(ctx).await.map_err(|e| e.at("lock"))?;
        let result = self.roll_locked(ctx, s).await;
        self.unlock(ctx).await;
        let mut outcome = result?;
        if let Some(n) = note {
            outcome.output = Some(match outcome.output {
                Some(o) => format!("{n}\n{o}"),
                None => n,
            });
        }
        Ok(outcome)
    }

    /// The roll itself, with the lock held: state, ship, switch, record.
    async fn roll_locked(&self, ctx: &HostCtx, s: &ServicePlan) -> Result<StepOutcome, OpFailure> {
        let mut stages = Stages::new();
        let read = publish::read_host(ctx)
            .await
            .map_err(|e| DeployError::State(e).at("state"))?;
        let st = read.state(&s.name);
        let image = match self.target {
            Target::New => s.tag.clone(),
            Target::Previous | Target::Undo => match st.previous.first() {
                Some(p) => p.clone(),
                None => {
                    return Err(DeployError::NoPrevious {
                        host: ctx.host.name.clone(),
                        service: s.name.clone(),
                    }
                    .at("rollback"))
                }
            },
        };
        let mut reports = Vec::new();
        if self.target == Target::New {
            stages.mark(ctx, "shipping");
            reports.extend(self.ship(ctx, s).await?);
        } else {
            let mut check = Script::new();
            check.line(
                "docker image inspect {} >/dev/null 2>&1 && echo present",
                &[&image],
            );
            let out = ctx
                .op_ctx()
                .run("previous image", check.as_str(), Input::None)
                .await
                .map_err(|e| remote("checking the previous image")(e).at("rollback"))?;
            if !out.stdout_str().contains("present") {
                return Err(DeployError::PreviousGone {
                    host: ctx.host.name.clone(),
                    service: s.name.clone(),
                    image,
                }
                .at("rollback"));
            }
        }
        // A standby copy an interrupted deploy left: routes back to the
        // record, then it goes.
        if s.slot.is_some() {
            self.settle(ctx, s, &read)
                .await
                .map_err(|e| e.at("settle"))?;
        }
        if st.image.as_deref() == Some(image.as_str()) && !self.opts.force {
            return Ok(StepOutcome {
                reports,
                output: Some(format!("{}: unchanged ({image})", s.name)),
            });
        }
        let next_state = match self.target {
            Target::New => |st: &State, slot, image: &str| Some(st.rolled_forward(slot, image)),
            Target::Previous | Target::Undo => |st: &State, slot, _: &str| st.rolled_back(slot),
        };
        let result = match (&s.slot, s.options.strategy) {
            (Some(_), Strategy::BlueGreen) => {
                self.blue_green(ctx, s, &read, &image, &mut stages, next_state)
                    .await
            }
            (Some(_), Strategy::Recreate) => {
                self.recreate_slot(ctx, s, &read, &image, &mut stages, next_state)
                    .await
            }
            (None, _) => {
                self.recreate_shared(ctx, s, &read, &image, &mut stages, next_state)
                    .await
            }
        };
        let seconds = stages.started.elapsed().as_secs_f64();
        match result {
            Ok(rolled) => {
                self.switched
                    .lock()
                    .map(|mut h| h.insert(ctx.host.name.clone()))
                    .ok();
                self.audit(ctx, st.image.as_deref(), &image, "running", seconds)
                    .await;
                let how = match (rolled.downtime, rolled.routed) {
                    (Some(_), _) => "recreated",
                    (None, true) => "switched",
                    (None, false) => "handed over",
                };
                reports.push(report(
                    s,
                    st.image.as_deref(),
                    &image,
                    Outcome::Changed,
                    how,
                ));
                let downtime = rolled
                    .downtime
                    .map(|d| format!(", downtime {d:.2} s"))
                    .unwrap_or_default();
                Ok(StepOutcome {
                    reports,
                    output: Some(format!(
                        "{}: {} → {image} ({}{downtime})",
                        s.name,
                        st.image.as_deref().unwrap_or("?"),
                        stages.text()
                    )),
                })
            }
            Err(e) => {
                self.audit(ctx, st.image.as_deref(), &image, "rolled_back", seconds)
                    .await;
                Err(e.at("deploy"))
            }
        }
    }

    /// If the standby slot of S runs (an interrupted deploy), make the
    /// route follow the record again and stop that copy.
    async fn settle(
        &self,
        ctx: &HostCtx,
        s: &ServicePlan,
        read: &HostRoutes,
    ) -> Result<(), DeployError> {
        let live = read.state(&s.name).live();
        let standby = live.other().project(&s.name);
        if !read.running.iter().any(|(_, p, _)| *p == standby) {
            return Ok(());
        }
        if self.routed(ctx, read) {
            let old = read
                .manifest
                .backends
                .iter()
                .filter(|b| b.service == s.name)
                .cloned()
                .collect::<Vec<_>>();
            let keys = Self::keys(&old, live);
            let stale = Self::keys(&old, live.other());
            self.switch_route(ctx, &stale, &keys).await?;
        }
        let filters = vec![format!("label=com.docker.compose.project={standby}")];
        self.stop(ctx, &filters, s.stop_grace).await?;
        ctx.log.line(&format!(
            "stopped the standby copy {standby} an earlier deploy left"
        ));
        Ok(())
    }

    /// The keys S has now (old manifest, live slot) and after the switch.
    fn route_keys(
        &self,
        ctx: &HostCtx,
        read: &HostRoutes,
        live: Slot,
        next: Slot,
    ) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let old: Vec<Backend> = read
            .manifest
            .backends
            .iter()
            .filter(|b| b.service == self.opts.service)
            .cloned()
            .collect();
        (
            Self::keys(&old, live),
            Self::keys(&self.backends(ctx), next),
        )
    }

    async fn blue_green(
        &self,
        ctx: &HostCtx,
        s: &ServicePlan,
        read: &HostRoutes,
        image: &str,
        stages: &mut Stages,
        next_state: fn(&State, Option<Slot>, &str) -> Option<State>,
    ) -> Result<Rolled, DeployError> {
        let st = read.state(&s.name);
        let live = st.live();
        let next = live.other();
        stages.mark(ctx, "starting");
        self.start(ctx, s, &Launch::slot(s, next, image), image)
            .await
            .inspect_err(|_| stages.mark(ctx, "rolled_back"))?;
        stages.mark(ctx, "healthy");
        let routed = self.routed(ctx, read);
        let new_filters = Launch::slot(s, next, image).filters;
        if routed {
            stages.mark(ctx, "routing");
            let (old, new) = self.route_keys(ctx, read, live, next);
            if let Err(e) = self.switch_route(ctx, &old, &new).await {
                return Err(self
                    .route_back(ctx, &new, &old, &new_filters, s, e, stages)
                    .await);
            }
        }
        self.commit(ctx, read, next_state(&st, Some(next), image))
            .await?;
        if routed {
            tokio::time::sleep(Duration::from_secs(self.opts.drain)).await;
        }
        stages.mark(ctx, "stopping_old");
        self.stop(ctx, &Launch::slot(s, live, image).filters, s.stop_grace)
            .await?;
        stages.mark(ctx, "running");
        Ok(Rolled {
            routed,
            downtime: None,
        })
    }

    /// A switch failed: put the route back on the old copy and confirm it;
    /// only then the new copy stops. Returns the error to report.
    #[allow(clippy::too_many_arguments)]
    async fn route_back(
        &self,
        ctx: &HostCtx,
        new: &BTreeMap<String, String>,
        old: &BTreeMap<String, String>,
        new_filters: &[String],
        s: &ServicePlan,
        error: DeployError,
        stages: &mut Stages,
    ) -> DeployError {
        match self.switch_route(ctx, new, old).await {
            Ok(_) => {
                let _ = self.stop(ctx, new_filters, 5).await;
                stages.mark(ctx, "rolled_back");
                DeployError::Routing(format!(
                    "{error}; the route is back on the old copy (confirmed) and the new copy was removed"
                ))
            }
            Err(back) => {
                stages.mark(ctx, "both_running");
                DeployError::Routing(format!(
                    "{error}; putting the route back failed too ({back}), so both copies of {} are left running. Fix: check the bastions, then run mesh deploy --service {} again",
                    s.name, s.name
                ))
            }
        }
    }

    /// Write the record a successful roll leaves (`None`: a rollback with
    /// nothing left on the stack, which `roll_locked` rules out first).
    async fn commit(
        &self,
        ctx: &HostCtx,
        read: &HostRoutes,
        state: Option<State>,
    ) -> Result<(), DeployError> {
        let state = state.ok_or_else(|| DeployError::NoPrevious {
            host: ctx.host.name.clone(),
            service: self.opts.service.clone(),
        })?;
        self.record(ctx, read, &state).await
    }

    /// Recreate: the new copy never got healthy; the old one starts again.
    #[allow(clippy::too_many_arguments)]
    async fn start_old_again(
        &self,
        ctx: &HostCtx,
        s: &ServicePlan,
        old: &Launch,
        old_image: &str,
        error: DeployError,
        down: Instant,
        stages: &mut Stages,
    ) -> DeployError {
        let back = self.start(ctx, s, old, old_image).await;
        stages.mark(ctx, "rolled_back");
        match back {
            Ok(()) => DeployError::Unhealthy(format!(
                "{error}\nThe old copy ({old_image}) was started again; downtime {:.2} s",
                down.elapsed().as_secs_f64()
            )),
            Err(b) => DeployError::Unhealthy(format!(
                "{error}\nStarting the old copy again failed too: {b}"
            )),
        }
    }

    async fn recreate_slot(
        &self,
        ctx: &HostCtx,
        s: &ServicePlan,
        read: &HostRoutes,
        image: &str,
        stages: &mut Stages,
        next_state: fn(&State, Option<Slot>, &str) -> Option<State>,
    ) -> Result<Rolled, DeployError> {
        let st = read.state(&s.name);
        let live = st.live();
        let next = live.other();
        let old_image = st.image.clone().unwrap_or_else(|| s.tag.clone());
        stages.mark(ctx, "stopping_old");
        let down = Instant::now();
        self.stop(ctx, &Launch::slot(s, live, image).filters, s.stop_grace)
            .await?;
        stages.mark(ctx, "starting");
        if let Err(e) = self
            .start(ctx, s, &Launch::slot(s, next, image), image)
            .await
        {
            let old = Launch::slot(s, live, &old_image);
            return Err(self
                .start_old_again(ctx, s, &old, &old_image, e, down, stages)
                .await);
        }
        stages.mark(ctx, "healthy");
        let routed = self.routed(ctx, read);
        if routed {
            stages.mark(ctx, "routing");
            let (old, new) = self.route_keys(ctx, read, live, next);
            self.switch_route(ctx, &old, &new).await?;
        }
        let downtime = down.elapsed().as_secs_f64();
        self.commit(ctx, read, next_state(&st, Some(next), image))
            .await?;
        stages.mark(ctx, "running");
        Ok(Rolled {
            routed,
            downtime: Some(downtime),
        })
    }

    async fn recreate_shared(
        &self,
        ctx: &HostCtx,
        s: &ServicePlan,
        read: &HostRoutes,
        image: &str,
        stages: &mut Stages,
        next_state: fn(&State, Option<Slot>, &str) -> Option<State>,
    ) -> Result<Rolled, DeployError> {
        let st = read.state(&s.name);
        let port = self
            .backends(ctx)
            .first()
            .and_then(|b| b.url.rsplit(':').next()?.parse().ok());
        let old_image = st.image.clone().unwrap_or_else(|| s.tag.clone());
        let launch = Launch::shared(s, image, port);
        stages.mark(ctx, "stopping_old");
        let down = Instant::now();
        self.stop(ctx, &launch.filters, s.stop_grace).await?;
        stages.mark(ctx, "starting");
        if let Err(e) = self.start(ctx, s, &launch, image).await {
            let old = Launch::shared(s, &old_image, port);
            return Err(self
                .start_old_again(ctx, s, &old, &old_image, e, down, stages)
                .await);
        }
        let downtime = down.elapsed().as_secs_f64();
        stages.mark(ctx, "healthy");
        self.commit(ctx, read, next_state(&st, None, image)).await?;
        stages.mark(ctx, "running");
        Ok(Rolled {
            routed: false,
            downtime: Some(downtime),
        })
    }
}

impl Step for Deploy {
    fn name(&self) -> &'static str {
        match self.target {
            Target::New => "deploy",
            Target::Previous | Target::Undo => "rollback",
        }
    }

    fn wants(&self, ctx: &HostCtx) -> bool {
        match self.target {
            Target::Undo => self
                .switched
                .lock()
                .is_ok_and(|h| h.contains(&ctx.host.name)),
            _ => self.plans.contains_key(&ctx.host.name),
        }
    }

    fn run<'a>(&'a self, ctx: &'a HostCtx) -> BoxFut<'a, Result<StepOutcome, OpFailure>> {
        Box::pin(self.roll(ctx))
    }
}
