//! What a run shows: the terminal bars (a summary bar plus the active
//! hosts), plain timestamped lines, or one JSON object per line, and the
//! per-host summary at the end. Fed only by the runner's [`Event`]s.

use super::{Event, ProgressMode, RunOptions, CONTROLLER};
use crate::ops::Outcome;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

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

pub(super) struct Output {
    mode: Mode,
    verbose: bool,
    dry_run: bool,
    summary: Option<Event>,
}

impl Output {
    pub(super) fn new(opts: &RunOptions, hosts: usize) -> Self {
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

    pub(super) async fn consume(&mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
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
            Event::Stage { host, stage } => match &mut self.mode {
                Mode::Bars(b) => {
                    if let Some((step, _)) = b.active.get_mut(host) {
                        *step = stage.clone();
                    }
                }
                _ => self.println(format!("{prefix}[{host}] {stage}")),
            },
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
                        // A multi-line detail (a dry-run diff) goes indented under its op.
                        let mut detail = op.detail.lines();
                        self.println(format!(
                            "{prefix}[{host}]   {verb} {}: {}",
                            op.label,
                            detail.next().unwrap_or_default()
                        ));
                        for line in detail {
                            self.println(format!("[{host}]       {line}"));
                        }
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
            Event::Notice { host, message } => self.println(format!("{host}: {message}")),
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
            // A host between steps (e.g. waiting for a cluster stage) is not
            // active; its next StepStarted lists it again.
            if let Event::StepDone { host, .. } | Event::StepFailed { host, .. } = &ev {
                b.active.remove(host);
            }
            b.redraw();
        }
    }

    /// Clear the bars and print the per-host summary.
    pub(super) fn finish(self) {
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
