//! The runner: fans a phase out over hosts and reports.
//!
//! Each host runs the phase's steps in order inside its own task; at most
//! `--parallel` hosts are active at once. A failing or unreachable host stops
//! only itself. Host tasks send [`Event`]s over a channel to one output task,
//! which draws a summary bar plus a few active-host lines on a terminal,
//! plain timestamped lines otherwise, or one JSON object per line with
//! `--json`. The run ends with a per-host summary; its exit code is 0, or 1
//! when any host failed.

use crate::ops::{OpReport, Outcome};
use crate::phases::{HostCtx, Phase, Stage, Step};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};

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
}

/// The whole run's result.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub hosts: Vec<HostSummary>,
    /// Changes made once by cluster stages.
    pub controller_changed: usize,
    pub seconds: f64,
}

impl RunSummary {
    /// 0 when every host succeeded, 1 when any failed.
    pub fn exit_code(&self) -> u8 {
        if self.hosts.iter().any(|h| h.failed.is_some()) {
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
    for step in steps.iter().filter(|s| s.wants(ctx)) {
        let step_started = Instant::now();
        let _ = tx.send(Event::StepStarted {
            host: host.clone(),
            step: step.name().into(),
        });
        ctx.log.line(&format!("step {}", step.name()));
        match step.run(ctx).await {
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
}

/// Name used in events for work the controller does once for all hosts.
pub const CONTROLLER: &str = "controller";

/// Run `phase` on every host, at most `opts.parallel` at once.
///
/// Consecutive host stages run pipelined per host; a cluster stage waits
/// for every host to finish the stages before it, then runs once.
pub async fn run_phase(
    phase: Arc<Phase>,
    hosts: Vec<Arc<HostCtx>>,
    opts: &RunOptions,
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
    // Indexes of hosts still going.
    let mut live: Vec<usize> = (0..hosts.len()).collect();
    let mut stage = 0;
    while stage < phase.stages.len() && !live.is_empty() {
        if let Stage::Barrier(_) = &phase.stages[stage] {
            stage += 1;
            continue;
        }
        if let Stage::Cluster(step) = &phase.stages[stage] {
            stage += 1;
            let ctxs: Vec<Arc<HostCtx>> = live.iter().map(|&i| hosts[i].clone()).collect();
            let t0 = Instant::now();
            let _ = tx.send(Event::StepStarted {
                host: CONTROLLER.into(),
                step: step.name().into(),
            });
            let outcome = step.run(&ctxs).await;
            for (name, error) in &outcome.host_failures {
                if let Some(i) = live.iter().position(|&i| &hosts[i].host.name == name) {
                    let h = live.remove(i);
                    fail_host(&hosts[h], step.name(), error, &tx, &mut summaries[h]);
                }
            }
            if let Some(error) = &outcome.abort {
                let _ = tx.send(Event::StepFailed {
                    host: CONTROLLER.into(),
                    step: step.name().into(),
                    error: error.clone(),
                    log: None,
                    seconds: t0.elapsed().as_secs_f64(),
                });
                for h in live.drain(..) {
                    fail_host(&hosts[h], step.name(), error, &tx, &mut summaries[h]);
                }
            } else {
                controller_changed += usize::from(outcome.changed);
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
        let mut tasks = Vec::with_capacity(live.len());
        for &i in &live {
            let (phase, tx, limit, ctx) =
                (phase.clone(), tx.clone(), limit.clone(), hosts[i].clone());
            let mut summary = std::mem::take(&mut summaries[i]);
            let range = range.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = limit.acquire_owned().await;
                let t0 = Instant::now();
                let steps: Vec<&dyn Step> = phase.host_steps_in(range).collect();
                let ok = run_host(&steps, &ctx, &tx, &mut summary).await;
                summary.seconds += t0.elapsed().as_secs_f64();
                (i, ok, summary)
            }));
        }
        let mut still = Vec::with_capacity(live.len());
        for t in tasks {
            match t.await {
                Ok((i, ok, summary)) => {
                    summaries[i] = summary;
                    if ok {
                        still.push(i);
                    }
                }
                Err(e) => eprintln!("internal error in a host task: {e}"),
            }
        }
        still.sort_unstable();
        live = still;
    }
    for (ctx, summary) in hosts.iter().zip(&summaries) {
        ctx.conn.close().await;
        let _ = tx.send(Event::HostDone {
            host: summary.host.clone(),
            ok: summary.failed.is_none(),
            seconds: summary.seconds,
        });
    }
    let summary = RunSummary {
        hosts: summaries,
        controller_changed,
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

/// `HH:MM:SS` (UTC) for plain log lines.
fn clock() -> String {
    crate::log::utc_time(":")
}

const ACTIVE_LINES: usize = 5;

/// Terminal bars: one summary bar plus a few active-host lines.
struct Bars {
    multi: MultiProgress,
    main: ProgressBar,
    slots: Vec<ProgressBar>,
    /// host -> (step, since)
    active: BTreeMap<String, (String, Instant)>,
    failed: usize,
}

enum Mode {
    Json,
    Plain,
    Bars(Bars),
}

struct Output {
    mode: Mode,
    verbose: bool,
    dry_run: bool,
    summary: Option<Event>,
}

impl Output {
    fn new(opts: &RunOptions, hosts: usize) -> Self {
        let tty = std::io::stderr().is_terminal();
        let mode = if opts.json {
            Mode::Json
        } else if opts.progress == ProgressMode::Always
            || (opts.progress == ProgressMode::Auto && tty)
        {
            let multi = MultiProgress::new();
            let main = multi.add(ProgressBar::new(hosts as u64));
            main.set_style(
                ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} hosts {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            main.enable_steady_tick(Duration::from_millis(200));
            let slots = (0..ACTIVE_LINES)
                .map(|_| {
                    let b = multi.add(ProgressBar::new_spinner());
                    b.set_style(ProgressStyle::with_template("  {msg}").expect("valid template"));
                    b
                })
                .collect();
            Mode::Bars(Bars {
                multi,
                main,
                slots,
                active: BTreeMap::new(),
                failed: 0,
            })
        } else {
            Mode::Plain
        };
        Output {
            mode,
            verbose: opts.verbose,
            dry_run: opts.dry_run,
            summary: None,
        }
    }

    async fn consume(&mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => self.handle(ev),
                    None => break,
                },
                // Keep the active hosts' elapsed times moving between events.
                _ = tick.tick() => {
                    if let Mode::Bars(b) = &mut self.mode {
                        b.redraw();
                    }
                }
            }
        }
    }

    fn println(&self, line: String) {
        match &self.mode {
            Mode::Bars(b) => {
                let _ = b.multi.println(line);
            }
            _ => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
            }
        }
    }

    fn handle(&mut self, ev: Event) {
        if let Mode::Json = self.mode {
            if let Ok(line) = serde_json::to_string(&ev) {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
            }
            return;
        }
        let prefix = match &self.mode {
            Mode::Plain => format!("{} ", clock()),
            _ => String::new(),
        };
        match &ev {
            Event::Start {
                phase,
                hosts,
                steps,
                dry_run,
            } => {
                let dry = if *dry_run {
                    " (dry run: nothing changes)"
                } else {
                    ""
                };
                self.println(format!(
                    "{prefix}{phase}: {hosts} hosts, steps: {}{dry}",
                    steps.join(", ")
                ));
            }
            Event::StepStarted { host, step } => {
                if let Mode::Bars(b) = &mut self.mode {
                    b.active
                        .insert(host.clone(), (step.clone(), Instant::now()));
                }
            }
            Event::StepDone {
                host,
                step,
                changed,
                unchanged,
                would_change,
                seconds,
                ops,
                output,
            } => {
                let status = if *would_change > 0 {
                    format!("would change ({would_change} would change, {unchanged} unchanged)")
                } else if *changed > 0 {
                    format!("changed ({changed} changed, {unchanged} unchanged)")
                } else {
                    "ok".to_string()
                };
                let quiet =
                    matches!(self.mode, Mode::Bars(_)) && *changed == 0 && *would_change == 0;
                if !quiet || self.verbose {
                    self.println(format!("{prefix}[{host}] {step}: {status} {seconds:.2}s"));
                }
                if self.verbose || self.dry_run {
                    for op in ops {
                        let verb = match op.outcome {
                            Outcome::Changed => "changed",
                            Outcome::WouldChange => "would change",
                            Outcome::Unchanged => "unchanged",
                        };
                        self.println(format!(
                            "{prefix}[{host}]   {verb} {}: {}",
                            op.label, op.detail
                        ));
                    }
                }
                if let Some(text) = output {
                    for line in text.lines() {
                        self.println(format!("[{host}] {line}"));
                    }
                }
            }
            Event::StepFailed {
                host,
                step,
                error,
                log,
                ..
            } => {
                let mut lines = error.lines();
                let first = lines.next().unwrap_or_default();
                self.println(format!("{prefix}[{host}] {step}: failed: {first}"));
                for l in lines {
                    self.println(format!("[{host}]   {l}"));
                }
                if let Some(log) = log {
                    self.println(format!("[{host}]   full log: {log}"));
                }
                if let Mode::Bars(b) = &mut self.mode {
                    b.failed += 1;
                }
            }
            Event::HostDone { host, .. } => {
                if let Mode::Bars(b) = &mut self.mode {
                    b.active.remove(host);
                    b.main.inc(1);
                }
            }
            Event::Summary { .. } => {
                self.summary = Some(ev.clone());
            }
        }
        if let Mode::Bars(b) = &mut self.mode {
            // The controller's stages end without a HostDone.
            if let Event::StepDone { host, .. } | Event::StepFailed { host, .. } = &ev {
                if host == CONTROLLER {
                    b.active.remove(host);
                }
            }
            b.redraw();
        }
    }

    /// Clear the bars and print the per-host summary.
    fn finish(self) {
        if let Mode::Bars(b) = &self.mode {
            for s in &b.slots {
                s.finish_and_clear();
            }
            b.main.finish_and_clear();
        }
        let Some(Event::Summary {
            hosts,
            controller_changed,
            changed,
            failed,
            seconds,
        }) = self.summary
        else {
            return;
        };
        if let Mode::Json = self.mode {
            return;
        }
        let width = hosts.iter().map(|h| h.host.len()).max().unwrap_or(4).max(4);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "\nsummary ({seconds:.1}s):");
        for h in &hosts {
            let counts = if self.dry_run {
                format!("{} would change, {} unchanged", h.would_change, h.unchanged)
            } else {
                format!("{} changed, {} unchanged", h.changed, h.unchanged)
            };
            let status = match &h.failed {
                Some(e) => format!("FAILED  {}", e.lines().next().unwrap_or_default()),
                None => "ok".into(),
            };
            let _ = writeln!(
                out,
                "  {:width$}  {counts:<32} {:>7.2}s  {status}",
                h.host, h.seconds
            );
        }
        if controller_changed > 0 {
            let _ = writeln!(
                out,
                "  {CONTROLLER:width$}  {controller_changed} changed (once, for the cluster)"
            );
        }
        let would: usize = hosts.iter().map(|h| h.would_change).sum();
        let total = if self.dry_run {
            format!("{would} would change")
        } else {
            format!("{changed} changed")
        };
        let _ = writeln!(out, "{} hosts: {}, {} failed", hosts.len(), total, failed);
    }
}

impl Bars {
    fn redraw(&mut self) {
        self.main.set_message(format!("· {} failed", self.failed));
        let mut active: Vec<(&String, &(String, Instant))> = self.active.iter().collect();
        active.sort_by_key(|(_, (_, since))| *since);
        for (i, slot) in self.slots.iter().enumerate() {
            let msg = if i + 1 == self.slots.len() && active.len() > self.slots.len() {
                format!("… and {} more", active.len() - i)
            } else if let Some((host, (step, since))) = active.get(i) {
                format!("{host}: {step} ({}s)", since.elapsed().as_secs())
            } else {
                String::new()
            };
            slot.set_message(msg);
        }
    }
}
