//! The runner: fans a phase out over hosts and reports.
//!
//! Each host runs the phase's steps in order inside its own task; at most
//! `--parallel` hosts are active at once. A failing or unreachable host stops
//! only itself. Host tasks send [`Event`]s over a channel to one output task
//! (`display`, beside this scheduler), which draws a summary bar plus a few
//! active-host lines on a terminal, plain timestamped lines otherwise, or one
//! JSON object per line with `--json`. The run ends with a per-host
//! summary; its exit code is 0, 1 when any host failed, or 2 when a cluster
//! stage refused its input before touching a host.

use crate::ops::{OpReport, Outcome};
use crate::phases::{HostCtx, Phase, Stage, Step};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, Semaphore};

mod display;
use display::Output;

/// How progress is shown (`--progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// Bars on a terminal, plain lines otherwise.
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub parallel: usize,
    pub progress: ProgressMode,
    pub json: bool,
    pub verbose: bool,
    pub dry_run: bool,
}

/// What host tasks report to the output task (and, with `--json`, to stdout).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Start {
        phase: String,
        hosts: usize,
        steps: Vec<String>,
        dry_run: bool,
    },
    StepStarted {
        host: String,
        step: String,
    },
    /// A step's own progress on a host (e.g. deploy: starting, healthy, routing).
    Stage {
        host: String,
        stage: String,
    },
    StepDone {
        host: String,
        step: String,
        changed: usize,
        unchanged: usize,
        would_change: usize,
        seconds: f64,
        /// The ops that changed (or would), with why.
        ops: Vec<OpReport>,
        #[serde(skip_serializing_if = "Option::is_none")]
        output: Option<String>,
    },
    StepFailed {
        host: String,
        step: String,
        error: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        log: Option<String>,
        seconds: f64,
    },
    /// Something the operator should know about a host, e.g. a host key
    /// trusted for the first time.
    Notice {
        host: String,
        message: String,
    },
    HostDone {
        host: String,
        ok: bool,
        seconds: f64,
    },
    Summary {
        hosts: Vec<HostSummary>,
        /// Changes the controller made once for all (e.g. a garage layout).
        controller_changed: usize,
        changed: usize,
        failed: usize,
        seconds: f64,
    },
}

/// One host's result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostSummary {
    pub host: String,
    pub changed: usize,
    pub unchanged: usize,
    pub would_change: usize,
    /// `step: error` when the host failed.
    pub failed: Option<String>,
    pub seconds: f64,
    /// Whether [`Event::HostDone`] went out for this host.
    #[serde(skip)]
    announced: bool,
}

/// Tell the display a host has nothing left to do (once per host), so the
/// bar counts it the moment it finishes, not when the whole run ends.
fn announce_done(tx: &mpsc::UnboundedSender<Event>, summary: &mut HostSummary) {
    if std::mem::replace(&mut summary.announced, true) {
        return;
    }
    let _ = tx.send(Event::HostDone {
        host: summary.host.clone(),
        ok: summary.failed.is_none(),
        seconds: summary.seconds,
    });
}

/// The whole run's result.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub hosts: Vec<HostSummary>,
    /// Changes made once by cluster stages.
    pub controller_changed: usize,
    /// A cluster stage refused its input before touching any host.
    pub refused: bool,
    pub seconds: f64,
}

impl RunSummary {
    /// 0 when every host succeeded, 1 when any failed, 2 when the input
    /// was refused before any host was touched.
    pub fn exit_code(&self) -> u8 {
        if self.refused {
            crate::error::EXIT_BAD_INPUT
        } else if self.hosts.iter().any(|h| h.failed.is_some()) {
            1
        } else {
            0
        }
    }

    pub fn changed(&self) -> usize {
        self.hosts.iter().map(|h| h.changed).sum::<usize>() + self.controller_changed
    }
}

fn count(reports: &[OpReport], outcome: Outcome) -> usize {
    reports.iter().filter(|r| r.outcome == outcome).count()
}

/// Run `steps` in order on one host; `summary` accumulates. Returns false
/// when the host failed (its later steps and stages are skipped).
async fn run_host(
    steps: &[&dyn Step],
    ctx: &HostCtx,
    tx: &mpsc::UnboundedSender<Event>,
    summary: &mut HostSummary,
) -> bool {
    let host = ctx.host.name.clone();
    // Weak, so a context that outlives the run does not keep the display open.
    let (stage_tx, stage_host) = (tx.downgrade(), host.clone());
    ctx.on_stage(Box::new(move |stage| {
        let Some(stage_tx) = stage_tx.upgrade() else {
            return;
        };
        let _ = stage_tx.send(Event::Stage {
            host: stage_host.clone(),
            stage: stage.to_string(),
        });
    }));
    for step in steps.iter().filter(|s| s.wants(ctx)) {
        let step_started = Instant::now();
        let _ = tx.send(Event::StepStarted {
            host: host.clone(),
            step: step.name().into(),
        });
        ctx.log.line(&format!("step {}", step.name()));
        let result = step.run(ctx).await;
        for message in ctx.conn.notices() {
            ctx.log.line(&message);
            let _ = tx.send(Event::Notice {
                host: host.clone(),
                message,
            });
        }
        match result {
            Ok(outcome) => {
                let (changed, unchanged, would) = (
                    count(&outcome.reports, Outcome::Changed),
                    count(&outcome.reports, Outcome::Unchanged),
                    count(&outcome.reports, Outcome::WouldChange),
                );
                summary.changed += changed;
                summary.unchanged += unchanged;
                summary.would_change += would;
                let _ = tx.send(Event::StepDone {
                    host: host.clone(),
                    step: step.name().into(),
                    changed,
                    unchanged,
                    would_change: would,
                    seconds: step_started.elapsed().as_secs_f64(),
                    ops: outcome
                        .reports
                        .into_iter()
                        .filter(|r| r.outcome != Outcome::Unchanged)
                        .collect(),
                    output: outcome.output,
                });
            }
            Err(failure) => {
                summary.changed += count(&failure.done, Outcome::Changed);
                summary.unchanged += count(&failure.done, Outcome::Unchanged);
                let error = ctx
                    .log
                    .redact(&format!("{}: {}", failure.label, failure.error));
                fail_host(ctx, step.name(), &error, tx, summary);
                return false;
            }
        }
    }
    true
}

fn fail_host(
    ctx: &HostCtx,
    step: &str,
    error: &str,
    tx: &mpsc::UnboundedSender<Event>,
    summary: &mut HostSummary,
) {
    ctx.log.line(&format!("FAILED {step}: {error}"));
    summary.failed = Some(format!("{step}: {error}"));
    let _ = tx.send(Event::StepFailed {
        host: ctx.host.name.clone(),
        step: step.into(),
        error: error.into(),
        log: ctx.log.path().map(|p| p.display().to_string()),
        seconds: 0.0,
    });
    announce_done(tx, summary);
}

/// What a batch's pass through the cluster stages came to.
#[derive(Default)]
struct StagesDone {
    /// How many cluster stages changed something.
    controller_changed: usize,
    /// A cluster stage refused its input (nothing touched): exit 2.
    refused: bool,
}

/// One batch's pass through a phase's stages.
struct StageRun<'a> {
    phase: &'a Arc<Phase>,
    hosts: &'a [Arc<HostCtx>],
    tx: &'a mpsc::UnboundedSender<Event>,
    limit: &'a Arc<Semaphore>,
}

impl StageRun<'_> {
    /// Run every stage for the hosts `live` (indexes into `hosts`).
    async fn run(&self, mut live: Vec<usize>, summaries: &mut [HostSummary]) -> StagesDone {
        let (phase, hosts, tx, limit) = (self.phase, self.hosts, self.tx, self.limit);
        let batch = live.clone();
        let mut done = StagesDone::default();
        let mut stage = 0;
        let for_failed = |stage: usize| match &phase.stages[stage] {
            Stage::Cluster(c) => c.runs_for_failed(),
            _ => false,
        };
        while stage < phase.stages.len() && (!live.is_empty() || for_failed(stage)) {
            if let Stage::Barrier(_) = &phase.stages[stage] {
                stage += 1;
                continue;
            }
            if let Stage::Cluster(step) = &phase.stages[stage] {
                stage += 1;
                let ctxs: Vec<Arc<HostCtx>> = live.iter().map(|&i| hosts[i].clone()).collect();
                let failed: Vec<Arc<HostCtx>> = batch
                    .iter()
                    .filter(|i| !live.contains(i))
                    .map(|&i| hosts[i].clone())
                    .collect();
                let t0 = Instant::now();
                let _ = tx.send(Event::StepStarted {
                    host: CONTROLLER.into(),
                    step: step.name().into(),
                });
                let outcome = step.run_with_failed(&ctxs, &failed).await;
                for (name, error) in &outcome.host_failures {
                    if let Some(i) = live.iter().position(|&i| &hosts[i].host.name == name) {
                        let h = live.remove(i);
                        fail_host(&hosts[h], step.name(), error, tx, &mut summaries[h]);
                    }
                }
                if let Some(error) = &outcome.abort {
                    done.refused |= outcome.refused;
                    let _ = tx.send(Event::StepFailed {
                        host: CONTROLLER.into(),
                        step: step.name().into(),
                        error: error.clone(),
                        log: None,
                        seconds: t0.elapsed().as_secs_f64(),
                    });
                    for h in live.drain(..) {
                        fail_host(&hosts[h], step.name(), error, tx, &mut summaries[h]);
                    }
                } else {
                    done.controller_changed += usize::from(outcome.changed);
                    let _ = tx.send(Event::StepDone {
                        host: CONTROLLER.into(),
                        step: step.name().into(),
                        changed: usize::from(outcome.changed),
                        unchanged: usize::from(!outcome.changed),
                        would_change: 0,
                        seconds: t0.elapsed().as_secs_f64(),
                        ops: Vec::new(),
                        output: outcome.message,
                    });
                }
                continue;
            }
            // The run of host stages up to the next cluster stage.
            let end = phase.stages[stage..]
                .iter()
                .position(|s| !matches!(s, Stage::Hosts(_)))
                .map_or(phase.stages.len(), |p| stage + p);
            let range = stage..end;
            stage = end;
            // A JoinSet: when the run is dropped (Ctrl-C), its host tasks are aborted.
            let mut tasks = tokio::task::JoinSet::new();
            let mut index = std::collections::HashMap::new();
            for &i in &live {
                let (phase, tx, limit, ctx) =
                    (phase.clone(), tx.clone(), limit.clone(), hosts[i].clone());
                // The task works on a copy: a task that panics leaves the
                // summary of the stages before, and is that host's failure.
                let mut summary = summaries[i].clone();
                let range = range.clone();
                let task = tasks.spawn(async move {
                    let _permit = limit.acquire_owned().await;
                    let t0 = Instant::now();
                    let last = range.end == phase.stages.len();
                    let steps: Vec<&dyn Step> = phase.host_steps_in(range).collect();
                    let ok = run_host(&steps, &ctx, &tx, &mut summary).await;
                    summary.seconds += t0.elapsed().as_secs_f64();
                    if last {
                        announce_done(&tx, &mut summary);
                    }
                    (ok, summary)
                });
                index.insert(task.id(), i);
            }
            let mut still = Vec::with_capacity(live.len());
            while let Some(done) = tasks.join_next_with_id().await {
                let id = match &done {
                    Ok((id, _)) => *id,
                    Err(e) => e.id(),
                };
                let i = index[&id];
                match done.map(|(_, r)| r) {
                    Ok((ok, summary)) => {
                        summaries[i] = summary;
                        if ok {
                            still.push(i);
                        }
                    }
                    Err(e) => {
                        let error = format!(
                            "internal error (a bug in mesh, please report it): {}",
                            panic_message(e)
                        );
                        let step = phase.stages[range.start].name();
                        fail_host(&hosts[i], step, &error, tx, &mut summaries[i]);
                    }
                }
            }
            still.sort_unstable();
            live = still;
        }
        // Hosts whose phase ended with a cluster stage are done now.
        for &i in &live {
            announce_done(tx, &mut summaries[i]);
        }
        done
    }

    /// Run `undo` on the hosts `done` (a later batch failed); a host whose
    /// undo fails is marked failed with both facts.
    async fn undo(&self, undo: Arc<dyn Step>, done: Vec<usize>, summaries: &mut [HostSummary]) {
        let mut tasks = tokio::task::JoinSet::new();
        for i in done {
            let (ctx, tx, undo, limit) = (
                self.hosts[i].clone(),
                self.tx.clone(),
                undo.clone(),
                self.limit.clone(),
            );
            let mut summary = summaries[i].clone();
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let steps: Vec<&dyn Step> = vec![undo.as_ref()];
                run_host(&steps, &ctx, &tx, &mut summary).await;
                (i, summary)
            });
        }
        while let Some(done) = tasks.join_next().await {
            if let Ok((i, summary)) = done {
                summaries[i] = summary;
            }
        }
    }
}

/// What a failed host task said: its panic message, or why it stopped.
fn panic_message(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a host task panicked".into())
}

/// A host a failed batch kept from starting: reported, not run.
fn skip_host(
    ctx: &HostCtx,
    error: &str,
    tx: &mpsc::UnboundedSender<Event>,
    summary: &mut HostSummary,
) {
    summary.failed = Some(error.to_string());
    let _ = tx.send(Event::StepFailed {
        host: ctx.host.name.clone(),
        step: "rollout".into(),
        error: error.into(),
        log: None,
        seconds: 0.0,
    });
    announce_done(tx, summary);
}

/// Name used in events for work the controller does once for all hosts.
pub const CONTROLLER: &str = "controller";

#[cfg(test)]
/// Run `phase` on every host, at most `opts.parallel` at once.
///
/// Consecutive host stages run pipelined per host; a cluster stage waits
/// for every host to finish the stages before it, then runs once.
pub async fn run_phase(
    phase: Arc<Phase>,
    hosts: Vec<Arc<HostCtx>>,
    opts: &RunOptions,
) -> RunSummary {
    let all = Rollout::all(hosts.len());
    run_rollout(phase, hosts, opts, &all).await
}

/// How hosts go through a phase: all at once (one batch), or batch after
/// batch, where a failed batch stops the batches after it (their hosts are
/// reported as not started) and the hosts that had finished run `undo`.
#[derive(Clone)]
pub struct Rollout {
    /// Indexes into the run's hosts.
    pub batches: Vec<Vec<usize>>,
    pub stop_on_failure: bool,
    /// Run on the hosts that finished when a later batch failed.
    pub undo: Option<Arc<dyn Step>>,
}

impl Rollout {
    /// Every host at once.
    pub fn all(hosts: usize) -> Self {
        Rollout {
            batches: vec![(0..hosts).collect()],
            stop_on_failure: false,
            undo: None,
        }
    }
}

/// `--batch N` or `--batch N%`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    Hosts(usize),
    Percent(u32),
}

impl BatchSize {
    /// Hosts per batch out of `total` (at least 1).
    pub fn of(&self, total: usize) -> usize {
        match *self {
            BatchSize::Hosts(n) => n.max(1),
            BatchSize::Percent(p) => (total * p as usize).div_ceil(100).max(1),
        }
    }
}

/// A `--batch` that is neither a number of hosts nor a percentage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("batch \"{0}\" is not a number of hosts or a percentage. Fix: write e.g. 1, 5 or 25%")]
pub struct BadBatchSize(pub String);

impl std::str::FromStr for BatchSize {
    type Err = BadBatchSize;

    fn from_str(s: &str) -> Result<Self, BadBatchSize> {
        let bad = || BadBatchSize(s.to_string());
        match s.strip_suffix('%') {
            Some(p) => match p.parse::<u32>() {
                Ok(p) if (1..=100).contains(&p) => Ok(BatchSize::Percent(p)),
                _ => Err(bad()),
            },
            None => match s.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(BatchSize::Hosts(n)),
                _ => Err(bad()),
            },
        }
    }
}

/// Batches of at most `size` hosts, in host order. With `groups` (each
/// host's groups), the limit is per group: a batch holds at most `size`
/// hosts of any one group, so a group never goes down at once while hosts
/// of different groups go together.
pub fn plan_batches(hosts: usize, size: usize, groups: Option<&[Vec<String>]>) -> Vec<Vec<usize>> {
    let size = size.max(1);
    match groups {
        Some(g) => plan_batches_capped(&g[..hosts.min(g.len())], |_| size),
        None => (0..hosts)
            .collect::<Vec<_>>()
            .chunks(size)
            .map(<[usize]>::to_vec)
            .collect(),
    }
}

/// Batches in host order where each host counts in every one of its
/// `groups` (inventory groups, or e.g. the services it runs), and a batch
/// holds at most `cap(group)` hosts of any group (at least 1). A host joins
/// the first batch it fits in.
pub fn plan_batches_capped(groups: &[Vec<String>], cap: impl Fn(&str) -> usize) -> Vec<Vec<usize>> {
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for (i, mine) in groups.iter().enumerate() {
        let fits = |batch: &Vec<usize>| {
            mine.iter().all(|group| {
                batch.iter().filter(|&&j| groups[j].contains(group)).count() < cap(group).max(1)
            })
        };
        match batches.iter_mut().find(|b| fits(b)) {
            Some(b) => b.push(i),
            None => batches.push(vec![i]),
        }
    }
    batches
}

/// Run `phase` on the hosts batch by batch, as `rollout` says.
pub async fn run_rollout(
    phase: Arc<Phase>,
    hosts: Vec<Arc<HostCtx>>,
    opts: &RunOptions,
    rollout: &Rollout,
) -> RunSummary {
    let started = Instant::now();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut output = Output::new(opts, hosts.len());
    let _ = tx.send(Event::Start {
        phase: phase.name.into(),
        hosts: hosts.len(),
        steps: phase.step_names(),
        dry_run: opts.dry_run,
    });
    let printer = tokio::spawn(async move {
        output.consume(rx).await;
        output
    });
    let limit = Arc::new(Semaphore::new(opts.parallel.max(1)));
    let mut summaries: Vec<HostSummary> = hosts
        .iter()
        .map(|h| HostSummary {
            host: h.host.name.clone(),
            ..Default::default()
        })
        .collect();
    let mut controller_changed = 0;
    let mut refused = false;
    let mut aborted: Option<usize> = None;
    let mut done_ok: Vec<usize> = Vec::new();
    for (b, batch) in rollout.batches.iter().enumerate() {
        if let Some(failed) = aborted {
            for &i in batch {
                let error = format!(
                    "not started: batch {} of {} failed",
                    failed + 1,
                    rollout.batches.len()
                );
                skip_host(&hosts[i], &error, &tx, &mut summaries[i]);
            }
            continue;
        }
        let ctx = StageRun {
            phase: &phase,
            hosts: &hosts,
            tx: &tx,
            limit: &limit,
        };
        let done = ctx.run(batch.clone(), &mut summaries).await;
        controller_changed += done.controller_changed;
        refused |= done.refused;
        let failed = batch.iter().any(|&i| summaries[i].failed.is_some());
        if failed && rollout.stop_on_failure {
            aborted = Some(b);
        }
        done_ok.extend(batch.iter().filter(|&&i| summaries[i].failed.is_none()));
    }
    if let (Some(_), Some(undo)) = (aborted, &rollout.undo) {
        // Hosts that finished before the failed batch go back.
        let phase = Arc::new(Phase::of_steps(phase.name, Vec::new()));
        let ctx = StageRun {
            phase: &phase,
            hosts: &hosts,
            tx: &tx,
            limit: &limit,
        };
        ctx.undo(undo.clone(), done_ok, &mut summaries).await;
    }
    for (ctx, summary) in hosts.iter().zip(&mut summaries) {
        announce_done(&tx, summary);
        ctx.conn.close().await;
    }
    let summary = RunSummary {
        hosts: summaries,
        controller_changed,
        refused,
        seconds: started.elapsed().as_secs_f64(),
    };
    let _ = tx.send(Event::Summary {
        hosts: summary.hosts.clone(),
        controller_changed,
        changed: summary.changed(),
        failed: summary.hosts.iter().filter(|h| h.failed.is_some()).count(),
        seconds: summary.seconds,
    });
    drop(tx);
    if let Ok(output) = printer.await {
        output.finish();
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Inventory;
    use crate::log::HostLog;
    use crate::ops::OpFailure;
    use crate::phases::StepOutcome;
    use crate::ssh::recording::{ok, RecordingTransport};
    use crate::ssh::BoxFut;
    use crate::template::VarSet;
    use std::path::Path;

    /// A step that panics on host `b`, as a parser bug on odd output would.
    struct PanicsOnB;

    impl Step for PanicsOnB {
        fn name(&self) -> &'static str {
            "fragile"
        }

        fn run<'a>(&'a self, ctx: &'a HostCtx) -> BoxFut<'a, Result<StepOutcome, OpFailure>> {
            Box::pin(async move {
                if ctx.host.name == "b" {
                    let short = "ab";
                    let _ = &short[..ctx.host.name.len() + 16];
                }
                Ok(StepOutcome::default())
            })
        }
    }

    /// Fails on host `c`; runs a command on the others.
    struct FailsOnC;

    impl Step for FailsOnC {
        fn name(&self) -> &'static str {
            "deploy"
        }

        fn run<'a>(&'a self, ctx: &'a HostCtx) -> BoxFut<'a, Result<StepOutcome, OpFailure>> {
            Box::pin(async move {
                if ctx.host.name == "c" {
                    return Err(OpFailure {
                        label: "new copy".into(),
                        error: crate::ops::OpError::Refused("never healthy".into()),
                        done: Vec::new(),
                    });
                }
                let _ = ctx.conn.exec("deploy", crate::ssh::Input::None).await;
                Ok(StepOutcome::default())
            })
        }
    }

    struct Undo;

    impl Step for Undo {
        fn name(&self) -> &'static str {
            "rollback"
        }

        fn run<'a>(&'a self, ctx: &'a HostCtx) -> BoxFut<'a, Result<StepOutcome, OpFailure>> {
            Box::pin(async move {
                let _ = ctx.conn.exec("undo", crate::ssh::Input::None).await;
                Ok(StepOutcome::default())
            })
        }
    }

    fn hosts(names: &[&str]) -> (Vec<Arc<HostCtx>>, Vec<Arc<RecordingTransport>>) {
        let text: String = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("      {n}: {{ address: 10.0.0.{} }}\n", i + 1))
            .collect();
        let inv = Inventory::parse(
            Path::new("i.yml"),
            &format!("groups:\n  g:\n    hosts:\n{text}"),
        )
        .unwrap();
        let conns: Vec<Arc<RecordingTransport>> = names
            .iter()
            .map(|_| Arc::new(RecordingTransport::new(|_, _| ok(""))))
            .collect();
        let ctxs = inv
            .hosts
            .iter()
            .zip(&conns)
            .map(|(h, c)| {
                Arc::new(HostCtx::new(
                    h.clone(),
                    c.clone(),
                    HostLog::discard(),
                    VarSet::new(),
                    false,
                    false,
                ))
            })
            .collect();
        (ctxs, conns)
    }

    fn opts() -> RunOptions {
        RunOptions {
            parallel: 4,
            progress: ProgressMode::Never,
            json: true,
            verbose: false,
            dry_run: false,
        }
    }

    #[test]
    fn a_failed_batch_stops_the_next_and_undoes_the_finished() {
        let (ctxs, conns) = hosts(&["a", "b", "c", "d"]);
        let rollout = Rollout {
            batches: plan_batches(4, 1, None),
            stop_on_failure: true,
            undo: Some(Arc::new(Undo)),
        };
        let phase = Phase::of_steps("deploy", vec![Box::new(FailsOnC)]);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let summary = rt.block_on(run_rollout(Arc::new(phase), ctxs, &opts(), &rollout));
        assert_eq!(summary.exit_code(), 1);
        let calls: Vec<Vec<String>> = conns.iter().map(|c| c.calls()).collect();
        assert_eq!(calls[0], ["deploy", "undo"]);
        assert_eq!(calls[1], ["deploy", "undo"]);
        assert!(calls[2].is_empty() && calls[3].is_empty(), "{calls:?}");
        assert!(summary.hosts[2]
            .failed
            .as_deref()
            .unwrap()
            .contains("never healthy"));
        let d = summary.hosts[3].failed.as_deref().unwrap();
        assert!(d.contains("not started: batch 3 of 4 failed"), "{d}");
        assert!(summary.hosts[0].failed.is_none());
    }

    #[test]
    fn batches_by_size_percent_and_group() {
        assert_eq!(
            plan_batches(5, 2, None),
            vec![vec![0, 1], vec![2, 3], vec![4]]
        );
        assert_eq!("25%".parse::<BatchSize>().unwrap().of(10), 3);
        assert_eq!("3".parse::<BatchSize>().unwrap().of(10), 3);
        assert!("0".parse::<BatchSize>().is_err() && "101%".parse::<BatchSize>().is_err());
        assert!("x"
            .parse::<BatchSize>()
            .unwrap_err()
            .to_string()
            .contains("Fix:"));
        // One host per group at a time; different groups go together.
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let groups = vec![
            g(&["web"]),
            g(&["web"]),
            g(&["db"]),
            g(&["db", "web"]),
            g(&["db"]),
        ];
        assert_eq!(
            plan_batches(5, 1, Some(&groups)),
            vec![vec![0, 2], vec![1, 4], vec![3]]
        );
    }

    #[test]
    fn services_as_extra_groups_keep_a_replica_up_across_groups() {
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // web-1 and db-1 are in different groups but hold the two replicas
        // of `api`: never in one batch. Groups allow two hosts at a time.
        let groups = vec![
            g(&["web", "service api"]),
            g(&["db", "service api"]),
            g(&["web"]),
            g(&["db", "service cache"]),
        ];
        let cap = |group: &str| if group.starts_with("service ") { 1 } else { 2 };
        assert_eq!(
            plan_batches_capped(&groups, cap),
            vec![vec![0, 2, 3], vec![1]]
        );
        // Groups alone would have taken both replicas down together.
        assert_eq!(
            plan_batches(4, 2, Some(&groups[..])),
            vec![vec![0, 1, 2, 3]]
        );
        // A cap of 0 counts as 1; no groups: one batch.
        assert_eq!(
            plan_batches_capped(&groups[..2], |_| 0),
            vec![vec![0], vec![1]]
        );
        assert_eq!(plan_batches_capped(&[], |_| 1), Vec::<Vec<usize>>::new());
    }

    #[test]
    fn a_panicking_host_task_fails_that_host_by_name() {
        let inv = Inventory::parse(
            Path::new("i.yml"),
            "groups:\n  g:\n    hosts:\n      a: { address: 10.0.0.1 }\n      b: { address: 10.0.0.2 }\n",
        )
        .unwrap();
        let ctxs: Vec<Arc<HostCtx>> = inv
            .hosts
            .iter()
            .map(|h| {
                Arc::new(HostCtx::new(
                    h.clone(),
                    Arc::new(RecordingTransport::new(|_, _| ok(""))),
                    HostLog::discard(),
                    VarSet::new(),
                    false,
                    false,
                ))
            })
            .collect();
        let phase = Phase::of_steps("test", vec![Box::new(PanicsOnB)]);
        let opts = RunOptions {
            parallel: 4,
            progress: ProgressMode::Never,
            json: true,
            verbose: false,
            dry_run: false,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let summary = rt.block_on(run_phase(Arc::new(phase), ctxs, &opts));
        assert_eq!(summary.exit_code(), 1);
        assert!(summary.hosts[0].failed.is_none());
        let b = summary.hosts[1].failed.as_deref().unwrap();
        assert_eq!(summary.hosts[1].host, "b");
        assert!(b.starts_with("fragile: internal error"), "{b}");
        assert!(b.contains("out of bounds"), "{b}");
    }
}
