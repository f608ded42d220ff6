//! Idempotent operations, the building blocks of every phase.
//!
//! An op first *probes* (a read-only shell snippet), then *decides* from the
//! probe's output whether the host already matches, and only then *applies*.
//! [`converge`] runs a list of ops on one host with as few round trips as
//! possible: all probes of the list go out as one script, so a converged
//! host costs a single round trip. After an op that changes the system
//! (apt, commands) the remaining ops are probed again, because their answers
//! may depend on what just happened (e.g. `ufw` did not exist before).

pub mod apt;
pub mod command;
pub mod dir;
pub(crate) mod docker_api;
pub mod file;
pub mod image;
pub mod room;
pub mod unit;

use crate::log::HostLog;
use crate::quote::Script;
use crate::ssh::{BoxFut, CommandKind, Input, Output, SshError, Transport};
use std::collections::BTreeSet;

pub use apt::{AptInstall, AptUpdate, AptUpgrade};
pub use command::CommandOp;
pub use dir::DirOp;
pub use file::FileOp;
pub use image::{ImageOp, ImageSource};
pub use room::RoomOp;
pub use unit::UnitOp;

/// Where mesh keeps its own bookkeeping on a host.
pub const STATE_DIR: &str = "/var/lib/mesh";

/// What one op did on one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Unchanged,
    Changed,
    /// `--dry-run`: it would change.
    WouldChange,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct OpReport {
    pub label: String,
    pub outcome: Outcome,
    /// Why it changed (or would), e.g. "content differs".
    pub detail: String,
}

/// Why an op failed. Messages carry the command's last output lines.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("{what} failed (exit {code}):\n{tail}")]
    Command {
        what: String,
        code: String,
        tail: String,
    },
    /// The probe shows a state the op must not change (its
    /// [`Decision::Fail`]): what is wrong and what to do about it.
    #[error("{0}")]
    Refused(String),
    /// A probe or preview came back without an exit code: its answer may be
    /// incomplete, so nothing is decided from it.
    #[error("{what} was cut off")]
    CutOff { what: &'static str },
    /// An op without a batchable part that does not implement `apply` (a bug).
    #[error("{label}: nothing to apply")]
    NothingToApply { label: String },
    /// A step's own typed error (e.g. the nodes phase's), carried as is.
    #[error(transparent)]
    Step(Box<dyn std::error::Error + Send + Sync>),
}

/// A failed op plus what had happened before it on the same host.
#[derive(Debug)]
pub struct OpFailure {
    pub label: String,
    pub error: OpError,
    pub done: Vec<OpReport>,
}

/// What an op concluded from its probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Unchanged,
    /// Needs a change; `reason` is shown, `flags` tell `apply` what to do (op-specific).
    Change {
        reason: String,
        flags: u32,
    },
    /// Already as wanted, but mesh's bookkeeping on the host needs a refresh
    /// (e.g. the quick-check record); applied without counting as a change.
    Refresh {
        flags: u32,
    },
    /// Cannot tell yet: run this extra read-only script (batched with others) and decide again.
    Recheck(String),
    /// The probe shows a state mesh cannot fix by itself: the message
    /// (what is wrong, "Fix: …") becomes [`OpError::Refused`].
    Fail(String),
}

impl Decision {
    pub fn change(reason: impl Into<String>, flags: u32) -> Self {
        Decision::Change {
            reason: reason.into(),
            flags,
        }
    }
}

/// Everything an op may use on its host.
pub struct OpCtx<'a> {
    pub conn: &'a dyn Transport,
    pub log: &'a HostLog,
    /// `--checksum`: hash every file instead of trusting recorded size + mtime.
    pub checksum: bool,
    /// Which deadline this context's commands get.
    pub kind: CommandKind,
}

impl<'a> OpCtx<'a> {
    /// The same context for commands that may take long (apt, image loads).
    pub fn long(&self) -> OpCtx<'a> {
        OpCtx {
            conn: self.conn,
            log: self.log,
            checksum: self.checksum,
            kind: CommandKind::Long,
        }
    }

    /// Run a script, log it and its output; a non-zero exit is not an error here.
    pub async fn run(&self, title: &str, script: &str, input: Input) -> Result<Output, OpError> {
        let (command, input) = spill_if_long(script, input);
        let out = self.conn.exec_as(&command, input, self.kind).await?;
        self.log.block(
            &format!("{title} (exit {})", fmt_code(out.code)),
            &format!(
                "$ {script}\n{}{}",
                out.stdout_str(),
                String::from_utf8_lossy(&out.stderr)
            ),
        );
        Ok(out)
    }

    /// Run a script whose output holds secrets (e.g. a new access key, or a
    /// payload's answer): the log keeps the script and exit code, never the
    /// output. A non-zero exit is not an error here.
    pub async fn run_withheld(
        &self,
        title: &str,
        script: &str,
        input: Input,
    ) -> Result<Output, OpError> {
        let (command, input) = spill_if_long(script, input);
        let out = self.conn.exec_as(&command, input, self.kind).await?;
        self.log.block(
            &format!("{title} (exit {})", fmt_code(out.code)),
            &format!("$ {script}\n(output withheld: it holds secrets)"),
        );
        Ok(out)
    }

    /// [`OpCtx::run_withheld`] that must succeed.
    pub async fn run_secret(
        &self,
        title: &str,
        script: &str,
        input: Input,
    ) -> Result<Output, OpError> {
        let out = self.run_withheld(title, script, input).await?;
        if !out.success() {
            return Err(OpError::Command {
                what: title.to_string(),
                code: fmt_code(out.code),
                tail: "(output withheld: it holds secrets)".into(),
            });
        }
        Ok(out)
    }

    /// Run a script that must succeed.
    pub async fn run_ok(&self, title: &str, script: &str, input: Input) -> Result<Output, OpError> {
        let out = self.run(title, script, input).await?;
        if out.success() {
            Ok(out)
        } else {
            Err(OpError::Command {
                what: title.to_string(),
                code: fmt_code(out.code),
                tail: self.log.redact(&out.tail(8)),
            })
        }
    }
}

pub(crate) fn fmt_code(code: Option<i32>) -> String {
    code.map_or_else(|| "signal".into(), |c| c.to_string())
}

/// One idempotent operation.
pub trait Op: Send + Sync {
    /// Short description, e.g. `file /etc/logrotate.conf`.
    fn label(&self) -> String;

    /// Name other ops can use in their triggers.
    fn id(&self) -> Option<&str> {
        None
    }

    /// Ids whose change makes this op act (handlers: restart on config change).
    fn triggers(&self) -> &[String] {
        &[]
    }

    /// Read-only shell snippet; its stdout is handed to [`Op::decide`].
    fn probe(&self, ctx: &OpCtx<'_>) -> Option<Script>;

    /// Compare the probe's output (and a recheck's, if one ran) with the
    /// wanted state. `triggered`: one of [`Op::triggers`] changed.
    fn decide(&self, probe: &str, recheck: Option<&str>, triggered: bool) -> Decision;

    /// The change as a script (+ stdin) that can run in one round trip with
    /// its neighbours' changes. Ops that need several round trips or must
    /// look at results (apt, commands, the firewall) return `None` and
    /// implement [`Op::apply`] instead.
    fn apply_part(&self, _flags: u32) -> Option<Part> {
        None
    }

    /// Make the change. Returns whether the host's state changed (an apt
    /// cache refresh, say, does not count as a change).
    fn apply<'a>(&'a self, ctx: &'a OpCtx<'a>, flags: u32) -> BoxFut<'a, Result<bool, OpError>> {
        Box::pin(async move {
            let Some(part) = self.apply_part(flags) else {
                return Err(OpError::NothingToApply {
                    label: self.label(),
                });
            };
            let changes = part.changes;
            run_batch(ctx, vec![(self.label(), part)])
                .await
                .map_err(|(_, e)| e)?;
            Ok(changes)
        })
    }

    /// [`Op::apply`] that may also say what it did, which then replaces the
    /// decided reason in the report (e.g. the bytes an image took to ship).
    fn apply_reporting<'a>(
        &'a self,
        ctx: &'a OpCtx<'a>,
        flags: u32,
    ) -> BoxFut<'a, Result<(bool, Option<String>), OpError>> {
        Box::pin(async move { Ok((self.apply(ctx, flags).await?, None)) })
    }

    /// Later probes may depend on this op's effect (installs, commands).
    fn system_changing(&self) -> bool {
        false
    }

    /// `--dry-run`: a read-only script whose output [`Op::preview`] needs to
    /// show a change decided from `probe` with `flags` (e.g. a file's current
    /// content). Such scripts of all ops go to the host in one round trip.
    fn preview_script(&self, _probe: &str, _flags: u32) -> Option<Script> {
        None
    }

    /// `--dry-run`: the detail shown for a change (e.g. a diff), from its
    /// `reason`, the probe and the output of [`Op::preview_script`] when one
    /// ran. Anything taken from the host or the content goes through
    /// `log.redact`.
    fn preview(
        &self,
        reason: &str,
        _probe: &str,
        _flags: u32,
        _fetched: Option<&str>,
        _log: &HostLog,
    ) -> String {
        reason.to_string()
    }
}

/// One op's change as a script, runnable alone or batched.
#[derive(Debug, Clone)]
pub struct Part {
    /// Runs in its own subshell under `set -e`; reads its input with `mesh_read SIZE`.
    pub script: Script,
    pub input: Input,
    /// Whether running it changes the host (false for bookkeeping only).
    pub changes: bool,
}

const MARK: &str = "@@mesh-op ";
const DONE: &str = "@@mesh-done ";
/// A remote mark: `@@mesh-t NAME UPTIME` (`mesh_mark NAME` in a part).
const STAGE: &str = "@@mesh-t ";
/// The host's clock when a batch began: `@@mesh-epoch SECONDS`.
const EPOCH: &str = "@@mesh-epoch ";

/// Longest script sent on the command line. The quoted script is part
/// of ONE argument (the remote login shell's `-c` command, `... sh -c
/// '<script>'`), and Linux caps a single argument at 128 KiB
/// (MAX_ARG_STRLEN): a batch of many inline files would pass that and
/// fail with "Argument list too long".
const SCRIPT_ARG_MAX: usize = 100 * 1024;

/// Last line of a script sent on stdin: a script cut short lacks it and is
/// never run.
const SCRIPT_END: &str = ": mesh-script-end";

/// The script's length once quoted for the command line (`'` becomes `'\''`).
fn quoted_len(script: &str) -> usize {
    script.len() + 3 * script.matches('\'').count() + 2
}

/// The command line and stdin that run `script` with `input` on its stdin.
/// A script too long for the command line goes first on stdin, read back
/// with exactly its byte count (`head -c`, so the parts' input that follows
/// stays unread) and run by `eval` only when it arrived whole. Still one
/// round trip.
fn spill_if_long(script: &str, input: Input) -> (String, Input) {
    if quoted_len(script) <= SCRIPT_ARG_MAX {
        return (script.to_string(), input);
    }
    let mut text = script.to_string();
    text.push_str(SCRIPT_END);
    text.push('\n');
    let size = text.len();
    let command = format!(
        "mesh_script=$(head -c {size}) || exit 1\n\
         case $mesh_script in *'{SCRIPT_END}') ;; *) echo \"mesh: the script arrived cut short\" >&2; exit 1;; esac\n\
         eval \"$mesh_script\"\n"
    );
    let script = Input::Bytes(std::sync::Arc::new(text.into_bytes()));
    let input = match input {
        Input::None => script,
        Input::Chain(mut parts) => {
            parts.insert(0, script);
            Input::Chain(parts)
        }
        other => Input::Chain(vec![script, other]),
    };
    (command, input)
}

/// The command that copies exactly `count` bytes (a number or a shell
/// expression) of stdin to stdout, so more input can follow, in 1 MiB
/// blocks: `head -c` reads 8 KiB at a time, which costs a cold host as much
/// CPU as hashing the bytes.
pub(crate) fn read_exactly(count: &str) -> String {
    format!("dd bs=1M count={count} iflag=count_bytes,fullblock status=none")
}

/// Run several ops' parts in ONE round trip. On failure, returns the index
/// of the failing part; the parts before it completed.
async fn run_batch(ctx: &OpCtx<'_>, parts: Vec<(String, Part)>) -> Result<(), (usize, OpError)> {
    let mut script = Script::new();
    script.raw("set -e");
    // Where the round trip's time goes, timed on the host (see
    // remote_stages): marks read the uptime (builtins only, no process),
    // one wall-clock reading ties them to the controller's log.
    script.raw(&format!(
        "mesh_mark() {{ mesh_up=; read -r mesh_up _ < /proc/uptime || true; echo \"{STAGE}$1 $mesh_up\"; }}"
    ));
    script.raw(&format!("echo \"{EPOCH}$(date +%s.%N)\""));
    script.raw("mesh_mark begin");
    let mut inputs = Vec::new();
    // Parts read their stdin bytes with `mesh_read SIZE`.
    script.raw(&format!("mesh_read() {{ {}; }}", read_exactly("\"$1\"")));
    for (i, (_, part)) in parts.iter().enumerate() {
        script.raw("(");
        script.raw("set -e");
        script.append(&part.script);
        script.raw(")");
        script.raw(&format!("echo '{DONE}{i}'"));
        script.raw(&format!("mesh_mark {i}"));
        if !matches!(part.input, Input::None) {
            inputs.push(part.input.clone());
        }
    }
    let title = parts
        .iter()
        .map(|(l, _)| l.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let input = match inputs.len() {
        0 => Input::None,
        1 => inputs.pop().unwrap_or(Input::None),
        _ => Input::Chain(inputs),
    };
    let out = ctx
        .run(&title, script.as_str(), input)
        .await
        .map_err(|e| (0, e))?;
    let labels: Vec<&str> = parts.iter().map(|(l, _)| l.as_str()).collect();
    let stages = remote_stages(&out.stdout_str(), &labels);
    if !stages.is_empty() {
        let list: Vec<String> = stages
            .iter()
            .map(|(name, secs)| format!("{name}={secs:.3}"))
            .collect();
        ctx.log
            .line(&format!("remote stages (s): {}", list.join(", ")));
    }
    if out.success() {
        return Ok(());
    }
    let done = out
        .stdout_str()
        .lines()
        .filter(|l| l.starts_with(DONE))
        .count();
    let label = parts.get(done).map_or(title.as_str(), |(l, _)| l.as_str());
    Err((
        done,
        OpError::Command {
            what: label.to_string(),
            code: fmt_code(out.code),
            tail: ctx.log.redact(&out.tail(8)),
        },
    ))
}

/// The seconds between a batch's consecutive `mesh_mark`s, each named by
/// the mark that ends it: a part's own marks (e.g. `daemon-reload`) or, at
/// its end, the part's label.
fn remote_stages(stdout: &str, labels: &[&str]) -> Vec<(String, f64)> {
    let marks = stdout.lines().filter_map(|l| {
        let (name, at) = l.strip_prefix(STAGE)?.rsplit_once(' ')?;
        Some((name, at.parse::<f64>().ok()?))
    });
    let mut stages = Vec::new();
    let mut last: Option<f64> = None;
    for (name, at) in marks {
        if let Some(prev) = last {
            let name = match name.parse::<usize>().ok().and_then(|i| labels.get(i)) {
                Some(label) => label.to_string(),
                None => name.to_string(),
            };
            stages.push((name, (at - prev).max(0.0)));
        }
        last = Some(at);
    }
    stages
}

/// Run every probe of `ops` in one script and split the output per op.
async fn probe_all(ctx: &OpCtx<'_>, ops: &[Box<dyn Op>]) -> Result<Vec<String>, OpError> {
    let mut script = Script::new();
    let mut any = false;
    for (i, op) in ops.iter().enumerate() {
        if let Some(p) = op.probe(ctx) {
            script.raw(&format!("echo '{MARK}{i}'"));
            script.raw("(");
            script.append(&p);
            script.raw(") 2>&1 </dev/null");
            any = true;
        }
    }
    let mut found = vec![String::new(); ops.len()];
    if !any {
        return Ok(found);
    }
    let out = ctx.run("probe", script.as_str(), Input::None).await?;
    if out.code.is_none() {
        return Err(OpError::CutOff { what: "probe" });
    }
    split_marked(&out.stdout_str(), &mut found);
    Ok(found)
}

fn split_marked(text: &str, found: &mut [String]) {
    let mut current: Option<usize> = None;
    for line in text.lines() {
        if let Some(idx) = line.strip_prefix(MARK) {
            current = idx.trim().parse().ok().filter(|i| *i < found.len());
            continue;
        }
        if let Some(i) = current {
            found[i].push_str(line);
            found[i].push('\n');
        }
    }
}

/// Rechecks requested by ops' first decisions, batched into one round trip.
async fn recheck_all(
    ctx: &OpCtx<'_>,
    ops: &[Box<dyn Op>],
    probes: &[String],
) -> Result<Vec<Option<String>>, OpError> {
    let mut script = Script::new();
    let mut wanted = vec![false; ops.len()];
    for (i, op) in ops.iter().enumerate() {
        if let Decision::Recheck(extra) = op.decide(&probes[i], None, false) {
            script.raw(&format!("echo '{MARK}{i}'"));
            script.raw(&format!("( {extra} ) 2>&1 </dev/null"));
            wanted[i] = true;
        }
    }
    if script.is_empty() {
        return Ok(vec![None; ops.len()]);
    }
    let out = ctx.run("recheck", script.as_str(), Input::None).await?;
    let mut found = vec![String::new(); ops.len()];
    split_marked(&out.stdout_str(), &mut found);
    Ok(found
        .into_iter()
        .zip(wanted)
        .map(|(f, w)| w.then_some(f))
        .collect())
}

/// Bring one host to the state `ops` describe, in order.
///
/// With `dry_run`, only probes run and the reports say what would change;
/// changes that preview themselves (file diffs) may add one more read-only
/// round trip for all of them.
/// Consecutive changes that are plain scripts (files, dirs, units) go to the
/// host together in one round trip.
pub async fn converge(
    ctx: &OpCtx<'_>,
    ops: &[Box<dyn Op>],
    dry_run: bool,
) -> Result<Vec<OpReport>, OpFailure> {
    let mut reports: Vec<OpReport> = Vec::with_capacity(ops.len());
    let fail = |label: String, error: OpError, done: &Vec<OpReport>| OpFailure {
        label,
        error,
        done: done.clone(),
    };
    let mut changed_ids: BTreeSet<String> = BTreeSet::new();
    // Probes (and rechecks) cover ops[start..]; redone after a system change.
    let mut start = 0;
    let mut probes: Vec<String> = Vec::new();
    let mut rechecks: Vec<Option<String>> = Vec::new();
    let mut stale = true;
    // `--dry-run`: changes whose detail a preview replaces, once all are decided.
    let mut previews: Vec<Pending> = Vec::new();
    let mut i = 0;
    while i < ops.len() {
        if stale {
            start = i;
            let rest = &ops[i..];
            probes = probe_all(ctx, rest)
                .await
                .map_err(|e| fail("probe".into(), e, &reports))?;
            rechecks = recheck_all(ctx, rest, &probes)
                .await
                .map_err(|e| fail("probe".into(), e, &reports))?;
            stale = false;
        }
        let decide = |k: usize, ids: &BTreeSet<String>| {
            let op = &ops[k];
            let triggered = op.triggers().iter().any(|t| ids.contains(t));
            op.decide(
                &probes[k - start],
                rechecks[k - start].as_deref(),
                triggered,
            )
        };
        let op = &ops[i];
        let (reason, flags, refresh) = match decide(i, &changed_ids) {
            Decision::Unchanged => {
                reports.push(report(op.as_ref(), Outcome::Unchanged, String::new()));
                i += 1;
                continue;
            }
            Decision::Refresh { flags } => (String::new(), flags, true),
            Decision::Change { reason, flags } => (reason, flags, false),
            Decision::Recheck(_) => ("state unknown".to_string(), u32::MAX, false),
            Decision::Fail(msg) => return Err(fail(op.label(), OpError::Refused(msg), &reports)),
        };
        if dry_run {
            if !refresh {
                if let Some(id) = op.id() {
                    changed_ids.insert(id.to_string());
                }
                previews.push(Pending {
                    report: reports.len(),
                    op: i,
                    probe: probes[i - start].clone(),
                    flags,
                });
            }
            let outcome = if refresh {
                Outcome::Unchanged
            } else {
                Outcome::WouldChange
            };
            reports.push(report(op.as_ref(), outcome, reason));
            i += 1;
            continue;
        }
        if let Some(part) = op.apply_part(flags) {
            // Gather the following script-only changes into the same round trip.
            let mut batch = vec![(i, part, reason)];
            let mut ids = changed_ids.clone();
            let mut j = i + 1;
            if let Some(id) = op.id().filter(|_| !refresh) {
                ids.insert(id.to_string());
            }
            while j < ops.len() {
                let next = &ops[j];
                let (reason, flags, refresh) = match decide(j, &ids) {
                    Decision::Unchanged => (None, 0, false),
                    Decision::Refresh { flags } => (Some(String::new()), flags, true),
                    Decision::Change { reason, flags } => (Some(reason), flags, false),
                    _ => break,
                };
                if let Some(reason) = reason {
                    let Some(part) = next.apply_part(flags) else {
                        break;
                    };
                    if let Some(id) = next.id().filter(|_| !refresh) {
                        ids.insert(id.to_string());
                    }
                    batch.push((j, part, reason));
                }
                j += 1;
            }
            for (k, _, reason) in &batch {
                ctx.log
                    .line(&format!("apply {}: {reason}", ops[*k].label()));
            }
            let parts = batch
                .iter()
                .map(|(k, part, _)| (ops[*k].label(), part.clone()))
                .collect();
            let result = run_batch(ctx, parts).await;
            let done = match &result {
                Ok(()) => batch.len(),
                Err((n, _)) => *n,
            };
            // Reports in op order: batched ops by outcome, the ones between unchanged.
            let mut b = 0;
            for (k, op) in ops.iter().enumerate().take(j).skip(i) {
                match batch.get(b) {
                    Some((bk, part, reason)) if *bk == k => {
                        if b >= done {
                            let Err((_, e)) = result else { unreachable!() };
                            return Err(fail(op.label(), e, &reports));
                        }
                        if part.changes {
                            if let Some(id) = op.id() {
                                changed_ids.insert(id.to_string());
                            }
                        }
                        let outcome = if part.changes {
                            Outcome::Changed
                        } else {
                            Outcome::Unchanged
                        };
                        reports.push(report(op.as_ref(), outcome, reason.clone()));
                        b += 1;
                    }
                    _ => reports.push(report(op.as_ref(), Outcome::Unchanged, String::new())),
                }
            }
            i = j;
            continue;
        }
        ctx.log.line(&format!("apply {}: {reason}", op.label()));
        let (changed, done) = op
            .apply_reporting(ctx, flags)
            .await
            .map_err(|e| fail(op.label(), e, &reports))?;
        let reason = done.unwrap_or(reason);
        if changed {
            if let Some(id) = op.id() {
                changed_ids.insert(id.to_string());
            }
        }
        if op.system_changing() && i + 1 < ops.len() {
            stale = true;
        }
        let outcome = if changed {
            Outcome::Changed
        } else {
            Outcome::Unchanged
        };
        reports.push(report(op.as_ref(), outcome, reason));
        i += 1;
    }
    if !previews.is_empty() {
        preview_all(ctx, ops, &previews, &mut reports)
            .await
            .map_err(|e| fail("preview".into(), e, &reports))?;
    }
    Ok(reports)
}

/// A dry-run change waiting for its preview.
struct Pending {
    /// Index into the reports.
    report: usize,
    /// Index into the ops.
    op: usize,
    probe: String,
    flags: u32,
}

/// Replace the details of dry-run changes with their ops' previews; the
/// preview scripts all go out in one round trip (none when no op needs one).
/// Their output is not logged: it holds file contents.
async fn preview_all(
    ctx: &OpCtx<'_>,
    ops: &[Box<dyn Op>],
    pending: &[Pending],
    reports: &mut [OpReport],
) -> Result<(), OpError> {
    let mut script = Script::new();
    let mut wanted = vec![false; pending.len()];
    for (n, p) in pending.iter().enumerate() {
        if let Some(s) = ops[p.op].preview_script(&p.probe, p.flags) {
            script.raw(&format!("echo '{MARK}{n}'"));
            script.raw("(");
            script.append(&s);
            script.raw(") 2>&1 </dev/null");
            wanted[n] = true;
        }
    }
    let mut found = vec![String::new(); pending.len()];
    if !script.is_empty() {
        let (command, input) = spill_if_long(script.as_str(), Input::None);
        let out = ctx.conn.exec_as(&command, input, ctx.kind).await?;
        ctx.log.block(
            &format!("preview (exit {})", fmt_code(out.code)),
            &format!(
                "$ {}\n(output not logged: it holds file contents)",
                script.as_str()
            ),
        );
        if out.code.is_none() {
            return Err(OpError::CutOff { what: "preview" });
        }
        split_marked(&out.stdout_str(), &mut found);
    }
    for ((p, fetched), wanted) in pending.iter().zip(&found).zip(wanted) {
        let r = &mut reports[p.report];
        r.detail = ops[p.op].preview(
            &r.detail,
            &p.probe,
            p.flags,
            wanted.then_some(fetched.as_str()),
            ctx.log,
        );
    }
    Ok(())
}

fn report(op: &dyn Op, outcome: Outcome, detail: String) -> OpReport {
    OpReport {
        label: op.label(),
        outcome,
        detail,
    }
}

/// Parse `key value...` lines of a probe: the value of the first line starting with `key `.
pub(crate) fn field<'a>(probe: &'a str, key: &str) -> Option<&'a str> {
    probe.lines().find_map(|l| {
        l.strip_prefix(key).and_then(|rest| {
            rest.strip_prefix(' ')
                .or(if rest.is_empty() { Some("") } else { None })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::recording::{ok, RecordingTransport};

    /// Converge `ops` on `conn` (no log).
    fn converge_on(
        conn: &RecordingTransport,
        ops: &[Box<dyn Op>],
        dry_run: bool,
    ) -> Result<Vec<OpReport>, OpFailure> {
        let log = HostLog::discard();
        let ctx = OpCtx {
            conn,
            log: &log,
            checksum: false,
            kind: CommandKind::Normal,
        };
        run(converge(&ctx, ops, dry_run))
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Answers probes as a converged host would for `file`.
    fn converged_host(file: &FileOp) -> RecordingTransport {
        let probe = format!(
            "stat 6 1700000000 644 root:root regular file\nrec 6 1700000000 {}\n",
            file.sha256()
        );
        RecordingTransport::new(move |script, _| {
            let mut out = String::new();
            for line in script.lines() {
                if let Some(i) = line.strip_prefix("echo '@@mesh-op ") {
                    out.push_str(&format!("{MARK}{}\n", i.trim_end_matches('\'')));
                    out.push_str(&probe);
                }
            }
            ok(&out)
        })
    }

    #[test]
    fn a_converged_host_costs_one_round_trip() {
        let file = FileOp::from_bytes("/etc/a", "hello\n");
        let ops: Vec<Box<dyn Op>> = vec![
            Box::new(file.clone()),
            Box::new(FileOp::from_bytes("/etc/b", "hello\n")),
        ];
        let conn = converged_host(&file);
        let reports = converge_on(&conn, &ops, false).unwrap();
        assert!(reports.iter().all(|r| r.outcome == Outcome::Unchanged));
        assert_eq!(conn.calls().len(), 1, "{:?}", conn.calls());
    }

    /// A host where nothing exists yet; applies succeed up to `fail_at`.
    fn empty_host(fail_at: Option<usize>) -> RecordingTransport {
        RecordingTransport::new(move |script, _| {
            if script.contains(DONE) {
                let mut out = String::new();
                let n = script.matches(DONE).count();
                for i in 0..fail_at.unwrap_or(n).min(n) {
                    out.push_str(&format!("{DONE}{i}\n"));
                }
                let mut o = ok(&out);
                if fail_at.is_some() {
                    o.code = Some(1);
                    o.stderr = b"disk full".to_vec();
                }
                return o;
            }
            let mut out = String::new();
            for line in script.lines() {
                if let Some(i) = line.strip_prefix("echo '@@mesh-op ") {
                    out.push_str(&format!(
                        "{MARK}{}\nstat absent\nrec none\n",
                        i.trim_end_matches('\'')
                    ));
                }
            }
            ok(&out)
        })
    }

    fn three_files() -> Vec<Box<dyn Op>> {
        ["/etc/a", "/etc/b", "/etc/c"]
            .into_iter()
            .map(|p| Box::new(FileOp::from_bytes(p, p.as_bytes().to_vec())) as Box<dyn Op>)
            .collect()
    }

    #[test]
    fn remote_stages_are_the_gaps_between_marks_named_by_part() {
        let out = format!(
            "{STAGE}begin 100.000\n{DONE}0\n{STAGE}0 101.250\nnoise\n\
             {STAGE}daemon-reload 101.350\n{STAGE}enable 101.375\n{DONE}1\n{STAGE}1 101.875\n"
        );
        let stages = remote_stages(&out, &["file /a", "unit x.service"]);
        let got: Vec<(String, String)> = stages
            .into_iter()
            .map(|(n, s)| (n, format!("{s:.3}")))
            .collect();
        let want = [
            ("file /a", "1.250"),
            ("daemon-reload", "0.100"),
            ("enable", "0.025"),
            ("unit x.service", "0.500"),
        ];
        assert_eq!(
            got,
            want.map(|(n, s)| (n.to_string(), s.to_string())).to_vec()
        );
        assert!(remote_stages("no marks\n", &[]).is_empty());
    }

    #[test]
    fn a_batch_logs_its_parts_timed_on_the_host() {
        let conn = RecordingTransport::local_sh(None);
        let dir = tempfile::tempdir().unwrap();
        let parts: Vec<(String, Part)> = ["a", "b"]
            .into_iter()
            .map(|n| {
                let op = FileOp::from_bytes(dir.path().join(n).to_str().unwrap(), n);
                (op.label(), op.part(file::CONTENT))
            })
            .collect();
        let labels: Vec<String> = parts.iter().map(|(l, _)| l.clone()).collect();
        let log = HostLog::create(dir.path(), "host", Default::default()).unwrap();
        let ctx = OpCtx {
            conn: &conn,
            log: &log,
            checksum: false,
            kind: CommandKind::Normal,
        };
        run(run_batch(&ctx, parts)).unwrap();
        let text = std::fs::read_to_string(dir.path().join("host.log")).unwrap();
        let line = text
            .lines()
            .find_map(|l| l.split_once("remote stages (s): ").map(|(_, r)| r))
            .unwrap_or_else(|| panic!("no stage line in {text}"));
        let names: Vec<&str> = line
            .split(", ")
            .map(|s| s.rsplit_once('=').unwrap().0)
            .collect();
        assert_eq!(names, labels);
        assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), b"b");
    }

    #[test]
    fn changes_to_several_files_go_out_in_one_round_trip() {
        let conn = empty_host(None);
        let reports = converge_on(&conn, &three_files(), false).unwrap();
        assert!(reports.iter().all(|r| r.outcome == Outcome::Changed));
        let calls = conn.calls();
        assert_eq!(calls.len(), 2, "probe + one batched apply: {calls:?}");
        assert_eq!(calls[1].matches(DONE).count(), 3);
        // Small public files travel inside the script.
        assert_eq!(calls[1].matches("printf %s /etc/").count(), 3);
    }

    #[test]
    fn private_files_never_ride_in_the_script() {
        let conn = empty_host(None);
        let ops: Vec<Box<dyn Op>> = vec![Box::new(
            FileOp::from_bytes("/etc/key", "s3cret-value").mode(0o600),
        )];
        converge_on(&conn, &ops, false).unwrap();
        let apply = &conn.calls()[1];
        assert!(apply.contains("mesh_read 12"), "{apply}");
        assert!(!apply.contains("s3cret-value"), "{apply}");
    }

    #[test]
    fn a_failing_part_names_its_op_and_keeps_earlier_results() {
        let conn = empty_host(Some(1));
        let failure = converge_on(&conn, &three_files(), false).unwrap_err();
        assert_eq!(failure.label, "file /etc/b");
        assert_eq!(failure.done.len(), 1);
        assert_eq!(failure.done[0].outcome, Outcome::Changed);
        assert!(failure.error.to_string().contains("disk full"));
    }

    #[test]
    fn a_state_the_op_must_not_change_is_refused_with_its_fix() {
        let ops: Vec<Box<dyn Op>> = vec![Box::new(FileOp::from_bytes("/etc/a", "x"))];
        let conn = RecordingTransport::new(|_, _| {
            ok("@@mesh-op 0\nstat 4096 1700000000 755 root:root directory\nrec none\n")
        });
        let failure = converge_on(&conn, &ops, false).unwrap_err();
        assert_eq!(failure.label, "file /etc/a");
        let OpError::Refused(why) = &failure.error else {
            panic!("{:?}", failure.error)
        };
        assert!(
            why.contains("is a directory") && why.contains("Fix:"),
            "{why}"
        );
        assert_eq!(conn.calls().len(), 1, "nothing applied");
    }

    #[test]
    fn a_probe_cut_off_decides_nothing() {
        let ops: Vec<Box<dyn Op>> = vec![Box::new(FileOp::from_bytes("/etc/a", "x"))];
        let conn = RecordingTransport::new(|_, _| {
            let mut o = ok("@@mesh-op 0\nstat absent\n");
            o.code = None;
            o
        });
        let failure = converge_on(&conn, &ops, false).unwrap_err();
        assert!(
            matches!(failure.error, OpError::CutOff { what: "probe" }),
            "{:?}",
            failure.error
        );
        assert_eq!(failure.error.to_string(), "probe was cut off");
        assert_eq!(conn.calls().len(), 1, "nothing applied");
    }

    #[test]
    fn dry_run_only_probes() {
        let ops: Vec<Box<dyn Op>> = vec![Box::new(FileOp::from_bytes("/etc/new", "x"))];
        let conn = RecordingTransport::new(|_, _| ok("@@mesh-op 0\nstat absent\nrec none\n"));
        let reports = converge_on(&conn, &ops, true).unwrap();
        assert_eq!(reports[0].outcome, Outcome::WouldChange);
        assert_eq!(conn.calls().len(), 1);
    }

    fn batch_on(
        conn: &RecordingTransport,
        parts: Vec<(String, Part)>,
    ) -> Result<(), (usize, OpError)> {
        let log = HostLog::discard();
        let ctx = OpCtx {
            conn,
            log: &log,
            checksum: false,
            kind: CommandKind::Normal,
        };
        run(run_batch(&ctx, parts))
    }

    /// 12 parts appending 10 KiB of quote-heavy text each to `out`, then two
    /// parts appending their stdin: the expected content of `out` too.
    fn long_batch(out: &std::path::Path) -> (Vec<(String, Part)>, Vec<u8>) {
        let out = out.to_str().unwrap();
        let mut parts = Vec::new();
        let mut want = Vec::new();
        for i in 0..12 {
            let text = format!("{i}: it's ").repeat(1024);
            let mut s = Script::new();
            s.line("printf %s {} >> {}", &[&text, out]);
            parts.push((
                format!("text {i}"),
                Part {
                    script: s,
                    input: Input::None,
                    changes: true,
                },
            ));
            want.extend(text.as_bytes());
        }
        for (i, data) in ["first input\n", "second, last input\n"]
            .into_iter()
            .enumerate()
        {
            let mut s = Script::new();
            s.line(&format!("mesh_read {} >> {{}}", data.len()), &[out]);
            parts.push((
                format!("input {i}"),
                Part {
                    script: s,
                    input: Input::Bytes(std::sync::Arc::new(data.as_bytes().to_vec())),
                    changes: true,
                },
            ));
            want.extend(data.as_bytes());
        }
        (parts, want)
    }

    #[test]
    fn a_batch_too_long_for_one_argument_sends_its_script_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let (parts, want) = long_batch(&out);
        let conn = RecordingTransport::local_sh(None);
        batch_on(&conn, parts).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), want);
        let calls = conn.calls();
        assert_eq!(calls.len(), 1, "still one round trip");
        assert!(calls[0].len() < 1024, "a short command line: {}", calls[0]);
        assert!(!calls[0].contains("it's"), "{}", calls[0]);
    }

    #[test]
    fn a_probe_too_long_for_one_argument_goes_on_stdin_too() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<file::FileOp> = (0..600)
            .map(|i| {
                let path = dir
                    .path()
                    .join(format!("a-rather-long-file-name-{i:04}.conf"));
                file::FileOp::from_bytes(path.to_str().unwrap(), "x\n")
            })
            .collect();
        let probes: usize = files
            .iter()
            .map(|f| f.probe_script(false).as_str().len())
            .sum();
        assert!(
            probes > 128 * 1024,
            "probes of {probes} bytes fit one argument"
        );
        let ops: Vec<Box<dyn Op>> = files
            .into_iter()
            .map(|f| Box::new(f) as Box<dyn Op>)
            .collect();
        let conn = RecordingTransport::local_sh(None);
        let reports = converge_on(&conn, &ops, true).unwrap();
        assert_eq!(reports.len(), 600);
        assert!(reports.iter().all(|r| r.outcome == Outcome::WouldChange));
        let calls = conn.calls();
        assert_eq!(calls.len(), 1, "one probe round trip");
        assert!(
            calls[0].len() < 1024,
            "a short command line: {}",
            calls[0].len()
        );
    }

    #[test]
    fn a_script_cut_short_on_stdin_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let (parts, _) = long_batch(&out);
        let conn = RecordingTransport::local_sh(Some(50 * 1024));
        let (done, e) = batch_on(&conn, parts).unwrap_err();
        assert_eq!(done, 0);
        assert!(e.to_string().contains("cut short"), "{e}");
        assert!(!out.exists(), "a part of a truncated script ran");
    }

    #[test]
    fn a_short_batch_keeps_its_script_on_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let (mut parts, _) = long_batch(&out);
        let last = parts.pop().unwrap();
        let parts = vec![parts.remove(0), last];
        let conn = RecordingTransport::local_sh(None);
        batch_on(&conn, parts).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.starts_with("0: it's") && text.ends_with("second, last input\n"));
        assert!(conn.calls()[0].contains("0: it"), "{}", conn.calls()[0]);
    }

    #[test]
    fn split_marked_assigns_lines_to_ops() {
        let mut found = vec![String::new(); 3];
        split_marked("junk\n@@mesh-op 0\na\nb\n@@mesh-op 2\nc\n", &mut found);
        assert_eq!(found, vec!["a\nb\n", "", "c\n"]);
    }

    #[test]
    fn field_finds_prefixed_values() {
        let p = "stat 12 34 644 root:root\nrec none\nflag\n";
        assert_eq!(field(p, "stat"), Some("12 34 644 root:root"));
        assert_eq!(field(p, "rec"), Some("none"));
        assert_eq!(field(p, "flag"), Some(""));
        assert_eq!(field(p, "sum"), None);
    }
}
