//! Phases: the commands mesh runs on hosts, each an ordered list of steps.
//!
//! A [`Step`] is checked for every host before any connection is made
//! ([`Step::check`]: templates render, inputs exist), then run per host.
//! Most steps are a list of [`ops`](crate::ops) handed to
//! [`converge`](crate::ops::converge).

pub mod backup;
pub mod bench;
pub mod care;
pub mod deploy;
pub mod exec;
pub mod facts;
pub(crate) mod fanout;
pub(crate) mod logs;
pub mod nodes;
pub(crate) mod prune;
pub mod services;
pub(crate) mod status;

use crate::inventory::{Arch, Host, ParseArchError};
use crate::log::HostLog;
use crate::ops::{Op, OpCtx, OpError, OpFailure, OpReport};
use crate::ssh::{BoxFut, Transport};
use crate::template::VarSet;
use std::sync::Arc;

pub use facts::Facts;

/// Everything a step may use for one host.
pub struct HostCtx {
    pub host: Host,
    pub conn: Arc<dyn Transport>,
    pub log: HostLog,
    /// Template variables for this host (facts, inventory vars, env, secrets).
    pub vars: VarSet,
    pub dry_run: bool,
    pub checksum: bool,
    facts: tokio::sync::OnceCell<Facts>,
    /// Where a step reports the stage it is in (the runner's display).
    stages: std::sync::OnceLock<StageSink>,
}

/// Hears a host's stages, e.g. deploy's `starting`, `healthy`, `routing`.
pub type StageSink = Box<dyn Fn(&str) + Send + Sync>;

impl HostCtx {
    pub fn new(
        host: Host,
        conn: Arc<dyn Transport>,
        log: HostLog,
        vars: VarSet,
        dry_run: bool,
        checksum: bool,
    ) -> Self {
        HostCtx {
            host,
            conn,
            log,
            vars,
            dry_run,
            checksum,
            facts: tokio::sync::OnceCell::new(),
            stages: std::sync::OnceLock::new(),
        }
    }

    /// Tell the runner which stage of its step this host is in.
    pub fn stage(&self, stage: &str) {
        if let Some(sink) = self.stages.get() {
            sink(stage);
        }
    }

    /// Where [`HostCtx::stage`] reports go (set once, by the runner).
    pub fn on_stage(&self, sink: StageSink) {
        let _ = self.stages.set(sink);
    }

    /// Context for ops on this host.
    pub fn op_ctx(&self) -> OpCtx<'_> {
        OpCtx {
            conn: self.conn.as_ref(),
            log: &self.log,
            checksum: self.checksum,
            kind: crate::ssh::CommandKind::Normal,
        }
    }

    /// The host's architecture: the inventory's `arch`, else `uname -m`.
    pub async fn arch(&self) -> Result<Arch, ArchError> {
        if let Some(a) = self.host.arch {
            return Ok(a);
        }
        let facts = self.facts().await.map_err(|f| ArchError::Facts(f.error))?;
        Ok(facts.arch.parse()?)
    }

    /// Facts about the host, gathered once (one round trip) on first use.
    pub async fn facts(&self) -> Result<&Facts, OpFailure> {
        self.facts
            .get_or_try_init(|| async { facts::gather(&self.op_ctx()).await })
            .await
            .map_err(|error| OpFailure {
                label: "facts".into(),
                error,
                done: Vec::new(),
            })
    }
}

/// Why [`HostCtx::arch`] cannot tell the host's architecture.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// Gathering the host's facts failed.
    #[error(transparent)]
    Facts(OpError),
    #[error("{0}. Fix: set `arch:` for this host in the inventory if it is supported")]
    Unsupported(#[from] ParseArchError),
}

/// For callers whose errors are still text (the services phase's op list).
/// What a step did on one host.
#[derive(Debug, Default)]
pub struct StepOutcome {
    pub reports: Vec<OpReport>,
    /// Output to show the user (e.g. `mesh exec`).
    pub output: Option<String>,
}

impl From<Vec<OpReport>> for StepOutcome {
    fn from(reports: Vec<OpReport>) -> Self {
        StepOutcome {
            reports,
            output: None,
        }
    }
}

/// Converge a step's op list, or fail the step with the reason (the step's
/// own typed error) it could not be built.
pub async fn converge_ops<E>(
    ctx: &HostCtx,
    step: &str,
    ops: Result<Vec<Box<dyn Op>>, E>,
) -> Result<StepOutcome, OpFailure>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let ops = ops.map_err(|e| OpFailure {
        label: step.to_string(),
        error: OpError::Step(Box::new(e)),
        done: Vec::new(),
    })?;
    Ok(crate::ops::converge(&ctx.op_ctx(), &ops, ctx.dry_run)
        .await?
        .into())
}

/// A task of [`on_each_host`] (or another controller task) panicked.
#[derive(Debug, thiserror::Error)]
#[error("internal error: {0}")]
pub struct TaskFailed(#[from] pub tokio::task::JoinError);

/// A cluster stage's fan-out: `read` runs on every host at once (each on its
/// own open connection); results come back in host order. `Err` only if a
/// task panicked.
pub async fn on_each_host<T, E, F, Fut>(
    hosts: &[Arc<HostCtx>],
    read: F,
) -> Result<Vec<(Arc<HostCtx>, Result<T, E>)>, TaskFailed>
where
    T: Send + 'static,
    E: Send + 'static,
    F: Fn(Arc<HostCtx>) -> Fut,
    Fut: std::future::Future<Output = Result<T, E>> + Send + 'static,
{
    let tasks: Vec<_> = hosts
        .iter()
        .map(|ctx| (ctx.clone(), tokio::spawn(read(ctx.clone()))))
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for (ctx, task) in tasks {
        let result = task.await?;
        results.push((ctx, result));
    }
    Ok(results)
}

/// Why a step's input check refused a host: the step's own typed error.
pub type CheckError = Box<dyn std::error::Error + Send + Sync>;

/// One named step of a phase, run on each host.
pub trait Step: Send + Sync {
    fn name(&self) -> &'static str;

    /// Whether this step runs on this host (e.g. only on the first node).
    fn wants(&self, _ctx: &HostCtx) -> bool {
        true
    }

    /// Validate inputs for this host before anything connects (exit 2 on error).
    fn check(&self, _ctx: &HostCtx) -> Result<(), CheckError> {
        Ok(())
    }

    fn run<'a>(&'a self, ctx: &'a HostCtx) -> BoxFut<'a, Result<StepOutcome, OpFailure>>;
}

/// What a cluster stage did.
#[derive(Debug, Default)]
pub struct ClusterOutcome {
    /// Shown to the user.
    pub message: Option<String>,
    pub changed: bool,
    /// Hosts that failed in this stage: (host, error).
    pub host_failures: Vec<(String, String)>,
    /// The stage failed for everyone: every remaining host stops with this.
    pub abort: Option<String>,
    /// The abort is refused input (e.g. an index that fails verification):
    /// nothing was touched and the run exits 2.
    pub refused: bool,
}

impl ClusterOutcome {
    /// The stage failed for every remaining host.
    pub fn failed(error: impl std::fmt::Display) -> Self {
        ClusterOutcome {
            abort: Some(error.to_string()),
            ..Default::default()
        }
    }
}

/// Work done once, on the controller, for the hosts still going (e.g.
/// resolve Docker packages, read the first node's state, apply a layout).
pub trait ClusterStep: Send + Sync {
    /// The step it belongs to (`--only`/`--skip` use this name).
    fn name(&self) -> &'static str;

    fn run<'a>(&'a self, hosts: &'a [Arc<HostCtx>]) -> BoxFut<'a, ClusterOutcome>;

    /// Whether it runs even when every host of the batch failed before it
    /// (it has something to do for failed hosts).
    fn runs_for_failed(&self) -> bool {
        false
    }

    /// `run`, also told the hosts of the batch that failed an earlier stage
    /// (a step that must withdraw them overrides this).
    fn run_with_failed<'a>(
        &'a self,
        hosts: &'a [Arc<HostCtx>],
        _failed: &'a [Arc<HostCtx>],
    ) -> BoxFut<'a, ClusterOutcome> {
        self.run(hosts)
    }
}

pub enum Stage {
    /// Runs on every host, hosts in parallel.
    Hosts(Box<dyn Step>),
    /// Runs once after every host finished the stages before it.
    Cluster(Box<dyn ClusterStep>),
    /// Every host finishes the stages before it before any starts the next
    /// (e.g. the first node's overlay is up before the others join).
    Barrier(&'static str),
}

impl Stage {
    /// The step this stage belongs to.
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Hosts(s) => s.name(),
            Stage::Cluster(c) => c.name(),
            Stage::Barrier(step) => step,
        }
    }
}

/// A command's stages, in order.
pub struct Phase {
    pub name: &'static str,
    pub stages: Vec<Stage>,
}

impl Phase {
    /// A phase of host steps only.
    pub fn of_steps(name: &'static str, steps: Vec<Box<dyn Step>>) -> Self {
        Phase {
            name,
            stages: steps.into_iter().map(Stage::Hosts).collect(),
        }
    }

    /// Step names in the order hosts run them, each once (steps with only
    /// controller work last).
    pub fn step_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        let hosts_first = self
            .stages
            .iter()
            .filter(|s| matches!(s, Stage::Hosts(_)))
            .chain(self.stages.iter());
        for s in hosts_first {
            if !names.iter().any(|n| n == s.name()) {
                names.push(s.name().to_string());
            }
        }
        names
    }

    /// The host steps, for input checks.
    pub fn host_steps(&self) -> impl Iterator<Item = &dyn Step> {
        self.host_steps_in(0..self.stages.len())
    }

    /// The host steps among `stages[range]`, in order.
    pub fn host_steps_in(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = &dyn Step> {
        self.stages[range].iter().filter_map(|s| match s {
            Stage::Hosts(step) => Some(step.as_ref()),
            _ => None,
        })
    }

    /// Whether step `name` survives `--only`/`--skip`.
    pub fn selects(name: &str, only: &[String], skip: &[String]) -> bool {
        let n = name.to_string();
        (only.is_empty() || only.contains(&n)) && !skip.contains(&n)
    }

    /// Keep only the steps named by `--only` and drop those named by `--skip`.
    /// Unknown names are an error that lists the valid ones.
    pub fn select(mut self, only: &[String], skip: &[String]) -> Result<Self, SelectError> {
        let names = self.step_names();
        for n in only.iter().chain(skip) {
            if !names.contains(n) {
                return Err(SelectError {
                    phase: self.name,
                    step: n.clone(),
                    steps: names,
                });
            }
        }
        self.stages.retain(|s| Phase::selects(s.name(), only, skip));
        Ok(self)
    }

    /// Every host step's input checks for every host, all problems at once.
    pub fn check(&self, ctxs: &[Arc<HostCtx>]) -> Result<(), ChecksFailed> {
        let mut problems = Vec::new();
        for ctx in ctxs {
            // A step split into stages (first node, then the rest) is checked
            // once per host: by the stage that runs on it.
            for step in self.host_steps().filter(|step| step.wants(ctx)) {
                if let Err(problem) = step.check(ctx) {
                    problems.push(HostProblem {
                        host: ctx.host.name.clone(),
                        step: step.name(),
                        problem,
                    });
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ChecksFailed(problems))
        }
    }
}

/// `--only`/`--skip` named a step the phase does not have.
#[derive(Debug, thiserror::Error)]
#[error("`{phase}` has no step \"{step}\". Fix: use one of: {}", .steps.join(", "))]
pub struct SelectError {
    pub phase: &'static str,
    pub step: String,
    pub steps: Vec<String>,
}

/// A step's input check that failed on one host.
#[derive(Debug)]
pub struct HostProblem {
    pub host: String,
    pub step: &'static str,
    pub problem: CheckError,
}

/// The input checks that failed before any host was contacted.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|p| format!("host {} step {}: {}", p.host, p.step, p.problem)).collect::<Vec<_>>().join("\n"))]
pub struct ChecksFailed(pub Vec<HostProblem>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phases::nodes::{AssetError, Garage, GaragePlan};
    use crate::ssh::recording::{ok, RecordingTransport};
    use crate::template::Source;

    fn ctx(host: Host, vars: VarSet, conn: Arc<RecordingTransport>) -> Arc<HostCtx> {
        Arc::new(HostCtx::new(
            host,
            conn,
            HostLog::discard(),
            vars,
            false,
            false,
        ))
    }

    fn hosts() -> Vec<Host> {
        crate::inventory::Inventory::parse(
            std::path::Path::new("i.yml"),
            "groups:\n  all:\n    hosts:\n      g1: { address: 10.0.0.1, arch: x86_64, zone: dc1 }\n      g2: { address: 10.0.0.2, arch: x86_64 }\n      g3: { address: 10.0.0.3, arch: x86_64, zone: dc3 }\n",
        )
        .unwrap()
        .hosts
    }

    #[test]
    fn a_step_that_cannot_build_its_ops_fails_with_its_own_error_before_any_command() {
        let conn = Arc::new(RecordingTransport::new(|_, _| ok("")));
        let ctx = ctx(hosts().remove(0), VarSet::new(), conn.clone());
        let failure = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(converge_ops(
                &ctx,
                "garage",
                Err(AssetError::MissingForEveryArch {
                    assets: "assets".into(),
                    name: "garage".into(),
                }),
            ))
            .unwrap_err();
        assert_eq!(failure.label, "garage");
        let OpError::Step(e) = &failure.error else {
            panic!("{:?}", failure.error)
        };
        assert!(matches!(
            e.downcast_ref::<AssetError>(),
            Some(AssetError::MissingForEveryArch { .. })
        ));
        assert!(failure
            .error
            .to_string()
            .contains("Fix: put the garage binary"));
        assert!(conn.calls().is_empty());
    }

    #[test]
    fn input_checks_report_every_hosts_typed_problem_at_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("x86_64")).unwrap();
        std::fs::write(dir.path().join("x86_64/garage"), "bin").unwrap();
        let hosts = hosts();
        let plan = GaragePlan::new(
            hosts[0].clone(),
            hosts.clone(),
            dir.path().to_path_buf(),
            dir.path().join("secrets.env"),
            false,
            3,
        );
        let phase = Phase::of_steps(
            "nodes",
            vec![
                Box::new(Garage {
                    plan: plan.clone(),
                    first: true,
                }),
                Box::new(Garage { plan, first: false }),
            ],
        );
        let conn = Arc::new(RecordingTransport::new(|_, _| ok("")));
        let ctxs: Vec<_> = hosts
            .into_iter()
            .map(|h| {
                let mut vars = VarSet::new();
                if h.name == "g3" {
                    vars.add("GARAGE_CAPACITY", "lots", Source::HostVars);
                }
                ctx(h, vars, conn.clone())
            })
            .collect();
        let ChecksFailed(problems) = phase.check(&ctxs).unwrap_err();
        let found: Vec<_> = problems
            .iter()
            .map(|p| (p.host.as_str(), p.step, p.problem.to_string()))
            .collect();
        assert_eq!(
            found,
            [
                (
                    "g2",
                    "garage",
                    "no zone: garage replicates across zones. Fix: set `zone:` for this host"
                        .to_string()
                ),
                (
                    "g3",
                    "garage",
                    "GARAGE_CAPACITY \"lots\" is not a size. Fix: write e.g. 100G".to_string()
                ),
            ]
        );
        assert!(conn.calls().is_empty(), "checks touch no host");
    }
}
