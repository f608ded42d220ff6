//! Backups into the fleet's own garage: `mesh backup`, `mesh snapshots`,
//! `mesh restore` and each host's backup timer.
//!
//! One restic repository for the fleet (`s3:http://<overlay ip>:3900/mesh-backups`,
//! reached through the host's own garage node), snapshots tagged `mesh`,
//! `host=<host>` and `service=<service>`. Every host gets one script,
//! `/usr/local/sbin/mesh-backup`, rendered by mesh from the services it runs
//! ([`script`]); `mesh backup` runs it over SSH and the timer runs the same
//! script on the host, agentless. The repository password and the bucket key
//! reach a host only in `/etc/mesh/restic.env` (0600), which the script
//! sources: never an argument, never a log line.

mod spec;

pub(crate) use spec::{read_spec, BackupSpec};
pub(crate) mod restore;
pub(crate) mod script;

use crate::inventory::{BackupPolicy, Inventory};
use crate::ops::{AptInstall, CommandOp, FileOp, Op, OpError, OpFailure, UnitOp};
use crate::phases::services::folder::Folder;
use crate::phases::services::{plan, FolderError};
use crate::phases::{
    converge_ops, CheckError, ClusterOutcome, ClusterStep, HostCtx, Phase, Stage, Step, StepOutcome,
};
use crate::quote::{Cmd, Script};
use crate::ssh::{BoxFut, Input};
use script::HostService;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The secrets a host's backups need (in secrets.env).
pub(crate) const PASSWORD: &str = "RESTIC_PASSWORD";
const KEY: &str = crate::phases::nodes::KeySpec::BACKUP.id_var;
const KEY_SECRET: &str = crate::phases::nodes::KeySpec::BACKUP.secret_var;

/// Why a backup command refused to start (nothing was touched).
#[derive(Debug, thiserror::Error)]
pub enum BackupInputError {
    #[error(transparent)]
    Folder(#[from] FolderError),
    #[error("{}", .0.join("\n"))]
    Plan(Vec<String>),
    #[error("no selected host runs a service with a `backup:` section in its mesh.yml{}. Fix: add backup: {{ paths, volumes, dump }} to a service's mesh.yml, or check --limit and --service", .service.as_ref().map(|s| format!(" named \"{s}\"")).unwrap_or_default())]
    NothingToBackUp { service: Option<String> },
    #[error("{} is not in secrets.env: the bucket key for the backups is made by `mesh nodes` (its garage step). Fix: run mesh nodes --first-ip <first node> (or put {KEY} and {KEY_SECRET} there)", .missing)]
    NoBucketKey { missing: &'static str },
    #[error("{service} runs on {}: say which one. Fix: pass --host NAME", .hosts.join(", "))]
    WhichHost { service: String, hosts: Vec<String> },
    #[error("host {host} does not run {service} with a backup: section (it runs: {}). Fix: pass --host with one of the hosts that run it", .runs.join(", "))]
    NotOnHost {
        host: String,
        service: String,
        runs: Vec<String>,
    },
}

/// Why a backup, restore or listing failed on one host.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{}", .0.join("; "))]
    Services(Vec<String>),
    #[error("mesh-backup: {0}")]
    Script(String),
    #[error("restic snapshots printed no JSON list: {0}")]
    BadList(String),
    #[error("no snapshot of {service} from {host}{}. Fix: run mesh snapshots --service {service} to see what there is", .id.as_ref().map(|i| format!(" matches {i}")).unwrap_or_default())]
    NoSnapshot {
        service: String,
        host: String,
        id: Option<String>,
    },
}

/// The backed-up services each selected host runs, by host.
pub(crate) type Fleet = BTreeMap<String, Vec<HostService>>;

/// Read the dockerfiles folder and find, for every selected host, the
/// services it runs that have a `backup:` section (only `service`, if given).
pub(crate) fn plan_fleet(
    dockerfiles: &std::path::Path,
    inv: &Inventory,
    ctxs: &[Arc<HostCtx>],
    service: Option<&str>,
) -> Result<Fleet, BackupInputError> {
    let folder = Folder::load(dockerfiles)?;
    let mut fleet = Fleet::new();
    let mut problems = Vec::new();
    for ctx in ctxs {
        match plan::plan_host(&folder, inv, &ctx.host, &ctx.vars) {
            Ok(p) => {
                let list: Vec<HostService> = p
                    .services
                    .iter()
                    .filter(|s| service.is_none_or(|only| s.name == only))
                    .filter_map(|s| {
                        Some(HostService {
                            name: s.name.clone(),
                            spec: s.options.backup.clone()?,
                        })
                    })
                    .collect();
                if !list.is_empty() {
                    fleet.insert(ctx.host.name.clone(), list);
                }
            }
            Err(mut p) => problems.append(&mut p),
        }
    }
    if !problems.is_empty() {
        return Err(BackupInputError::Plan(problems));
    }
    if fleet.is_empty() {
        return Err(BackupInputError::NothingToBackUp {
            service: service.map(str::to_string),
        });
    }
    Ok(fleet)
}

/// The host's env file, script and timer: restic installed, everything
/// written only when it differs.
pub(crate) struct Setup {
    pub fleet: Arc<Fleet>,
    pub policy: BackupPolicy,
    /// Install the schedule's timer too.
    pub timer: bool,
}

impl Setup {
    fn ops(&self, ctx: &HostCtx) -> Result<Vec<Box<dyn Op>>, BackupError> {
        let services = self.fleet.get(&ctx.host.name).cloned().unwrap_or_default();
        let get = |k: &str| ctx.vars.get(k).unwrap_or_default().to_string();
        let env = script::env_file(
            ctx.vars.get("OVERLAY_IP").unwrap_or_default(),
            &get(PASSWORD),
            &get(KEY),
            &get(KEY_SECRET),
        );
        let mut ops: Vec<Box<dyn Op>> = vec![
            Box::new(AptInstall::new(["restic"])),
            Box::new(FileOp::from_bytes(script::ENV_FILE, env).mode(0o600)),
            Box::new(
                FileOp::from_bytes(
                    script::SCRIPT,
                    script::host_script(&ctx.host.name, &self.policy.keep, &services),
                )
                .mode(0o755),
            ),
        ];
        if self.timer {
            ops.push(Box::new(
                FileOp::from_bytes(
                    format!("/etc/systemd/system/{}", script::SERVICE_UNIT),
                    script::service_unit(),
                )
                .id("mesh-backup-service"),
            ));
            let mut reload = Script::new();
            reload.raw("systemctl daemon-reload");
            ops.push(Box::new(
                CommandOp::new("systemctl daemon-reload", reload)
                    .when_changed(["mesh-backup-service"]),
            ));
            ops.push(Box::new(UnitOp::new(
                script::TIMER_UNIT,
                script::timer_unit(&self.policy.schedule),
            )));
        }
        Ok(ops)
    }
}

impl Step for Setup {
    fn name(&self) -> &'static str {
        "backup-setup"
    }

    fn wants(&self, ctx: &HostCtx) -> bool {
        self.fleet.contains_key(&ctx.host.name)
    }

    fn check(&self, ctx: &HostCtx) -> Result<(), CheckError> {
        for k in [KEY, KEY_SECRET] {
            if ctx.vars.get(k).is_none() {
                return Err(Box::new(BackupInputError::NoBucketKey { missing: k }));
            }
        }
        Ok(())
    }

    fn run<'a>(&'a self, ctx: &'a HostCtx) -> BoxFut<'a, Result<StepOutcome, OpFailure>> {
        Box::pin(async move { converge_ops(ctx, "backup-setup", self.ops(ctx)).await })
    }
}

/// `restic init` once, from one host, before any host backs up (two hosts
/// initialising at once could make two repositories in one bucket).
pub(crate) struct InitRepo(Arc<Fleet>);

/// The script that initialises the repository unless it exists.
pub(crate) fn init_script() -> Script {
    let mut s = Script::new();
    s.line("set -a; . {}; set +a", &[script::ENV_FILE]);
    s.raw("if restic cat config >/dev/null 2>&1; then echo 'repo exists'; exit 0; fi");
    s.raw("restic init >/dev/null && echo 'repo created'");
    s
}

impl ClusterStep for InitRepo {
    fn name(&self) -> &'static str {
        "backup-setup"
    }

    fn run<'a>(&'a self, hosts: &'a [Arc<HostCtx>]) -> BoxFut<'a, ClusterOutcome> {
        Box::pin(async move {
            let Some(first) = hosts.iter().find(|h| self.0.contains_key(&h.host.name)) else {
                return ClusterOutcome::default();
            };
            if first.dry_run {
                return ClusterOutcome {
                    message: Some("would create the restic repository unless it exists".into()),
                    ..Default::default()
                };
            }
            let op = first.op_ctx();
            match op
                .run_ok("restic init", init_script().as_str(), Input::None)
                .await
            {
                Ok(out) => {
                    let created = out.stdout_str().contains("repo created");
                    ClusterOutcome {
                        changed: created,
                        message: created.then(|| {
                            format!("created the restic repository (from {})", first.host.name)
                        }),
                        ..Default::default()
                    }
                }
                Err(e) => ClusterOutcome::failed(format!(
                    "restic init on {}: {e}. Fix: check that garage runs (mesh nodes) and the repository password in secrets.env is the one it was made with",
                    first.host.name
                )),
            }
        })
    }
}

/// What `mesh backup` runs on each host: the script's backup (or `check`).
pub(crate) struct RunBackup {
    pub fleet: Arc<Fleet>,
    pub service: Option<String>,
    pub no_prune: bool,
    /// `--check`: `restic check --read-data-subset` instead of a backup.
    pub check: Option<String>,
    pub retry_lock: String,
}

/// One service's result line from the script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ServiceResult {
    Ok {
        service: String,
        added: u64,
        total: u64,
        seconds: u64,
    },
    Failed {
        service: String,
        reason: String,
    },
}

/// The script's `result`, `forget`, `check` and `error` lines.
pub(crate) fn parse_results(text: &str) -> (Vec<ServiceResult>, Vec<String>, Vec<String>) {
    let mut results = Vec::new();
    let mut notes = Vec::new();
    let mut errors = Vec::new();
    for line in text.lines() {
        let mut words = line.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("result"), Some(svc), Some(rest)) => {
                let (state, detail) = rest.split_once(' ').unwrap_or((rest, ""));
                let nums: Vec<u64> = detail
                    .split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect();
                results.push(match (state, nums.as_slice()) {
                    ("ok", &[added, total, seconds]) => ServiceResult::Ok {
                        service: svc.into(),
                        added,
                        total,
                        seconds,
                    },
                    _ => ServiceResult::Failed {
                        service: svc.into(),
                        reason: detail.to_string(),
                    },
                });
            }
            (Some(what @ ("forget" | "check")), Some("ok"), _) => notes.push(format!("{what} ok")),
            (Some("note"), Some(first), rest) => {
                notes.push(format!("{first} {}", rest.unwrap_or_default()))
            }
            (Some(what @ ("forget" | "check")), Some("failed"), rest) => {
                errors.push(format!("{what} failed: {}", rest.unwrap_or_default()))
            }
            (Some("error"), Some(first), rest) => {
                errors.push(format!("{first} {}", rest.unwrap_or_default()))
            }
            _ => {}
        }
    }
    (results, notes, errors)
}

/// Bytes for people: `1.5 MiB`.
pub(crate) fn human(bytes: u64) -> String {
    let mut v = bytes as f64;
    for unit in ["B", "KiB", "MiB", "GiB"] {
        if v < 1024.0 || unit == "GiB" {
            return if unit == "B" {
                format!("{bytes} B")
            } else {
                format!("{v:.1} {unit}")
            };
        }
        v /= 1024.0;
    }
    unreachable!()
}

/// The command line that runs the host's script (the retry window in its
/// environment: no secret is ever on it).
pub(crate) fn script_cmd(retry_lock: &str, args: &[&str]) -> String {
    let mut s = Script::new();
    s.cmd(
        Cmd::new("env")
            .arg(format!("MESH_RETRY_LOCK={retry_lock}"))
            .arg(script::SCRIPT)
            .args(args),
    );
    s.into_string()
}

impl RunBackup {
    async fn run_on(&self, ctx: &HostCtx) -> Result<StepOutcome, OpFailure> {
        let fail = |e: BackupError| OpFailure {
            label: "backup".into(),
            error: OpError::Step(Box::new(e)),
            done: Vec::new(),
        };
        let mut args: Vec<&str> = Vec::new();
        match &self.check {
            Some(subset) => args.extend(["check", subset.as_str()]),
            None => {
                args.push("backup");
                if self.no_prune {
                    args.push("--no-prune");
                }
                if let Some(s) = &self.service {
                    args.push(s);
                }
            }
        }
        if ctx.dry_run {
            let names: Vec<String> = self
                .fleet
                .get(&ctx.host.name)
                .into_iter()
                .flatten()
                .map(|s| s.name.clone())
                .collect();
            return Ok(StepOutcome {
                reports: Vec::new(),
                output: Some(format!("would back up {}", names.join(", "))),
            });
        }
        ctx.stage(if self.check.is_some() {
            "checking"
        } else {
            "backing up"
        });
        let op = ctx.op_ctx().long();
        let out = op
            .run(
                "mesh-backup",
                &script_cmd(&self.retry_lock, &args),
                Input::None,
            )
            .await
            .map_err(|error| OpFailure {
                label: "backup".into(),
                error,
                done: Vec::new(),
            })?;
        let text = ctx.log.redact(&out.stdout_str());
        let (results, notes, mut errors) = parse_results(&text);
        let mut lines: Vec<String> = results
            .iter()
            .map(|r| match r {
                ServiceResult::Ok {
                    service,
                    added,
                    total,
                    seconds,
                } => format!(
                    "{service}: ok, {} added ({} processed) in {seconds} s",
                    human(*added),
                    human(*total)
                ),
                ServiceResult::Failed { service, reason } => {
                    errors.insert(0, format!("{service}: {reason}"));
                    format!("{service}: FAILED {reason}")
                }
            })
            .collect();
        lines.extend(notes);
        if !out.success() && errors.is_empty() {
            errors.push(format!(
                "exit {}: {}",
                crate::ops::fmt_code(out.code),
                ctx.log.redact(&out.tail(3))
            ));
        }
        if !errors.is_empty() {
            return Err(fail(BackupError::Services(errors)));
        }
        Ok(StepOutcome {
            reports: Vec::new(),
            output: Some(lines.join("\n")),
        })
    }
}

impl Step for RunBackup {
    fn name(&self) -> &'static str {
        "backup"
    }

    fn wants(&self, ctx: &HostCtx) -> bool {
        self.fleet.contains_key(&ctx.host.name)
    }

    fn run<'a>(&'a self, ctx: &'a HostCtx) -> BoxFut<'a, Result<StepOutcome, OpFailure>> {
        Box::pin(self.run_on(ctx))
    }
}

/// The `backup` phase: setup on every host, the repository once, then the backups.
pub(crate) fn phase(setup: Setup, run: RunBackup) -> Phase {
    let mut stages = setup_stages(setup);
    stages.push(Stage::Hosts(Box::new(run)));
    Phase {
        name: "backup",
        stages,
    }
}

/// restic, its env file, script and timer on the fleet's hosts, then the
/// repository once (`mesh backup`, and `mesh services` for the timer).
pub(crate) fn setup_stages(setup: Setup) -> Vec<Stage> {
    let init = InitRepo(setup.fleet.clone());
    vec![
        Stage::Hosts(Box::new(setup)),
        Stage::Cluster(Box::new(init)),
    ]
}

/// Whether the bucket key `mesh nodes` makes for the backups is known
/// (secrets.env or the environment).
pub(crate) fn has_bucket_key(vars: &crate::template::VarSet) -> bool {
    [KEY, KEY_SECRET].iter().all(|k| vars.get(k).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_lines_become_per_service_results() {
        let (results, notes, errors) = parse_results(
            "noise\nresult pg ok 2048 10240 3\nresult kv failed dump `x` exited 1: boom\nforget ok\nerror restic missing\n",
        );
        assert_eq!(
            results,
            [
                ServiceResult::Ok {
                    service: "pg".into(),
                    added: 2048,
                    total: 10240,
                    seconds: 3
                },
                ServiceResult::Failed {
                    service: "kv".into(),
                    reason: "dump `x` exited 1: boom".into()
                }
            ]
        );
        assert_eq!(notes, ["forget ok"]);
        assert_eq!(errors, ["restic missing"]);
        assert_eq!(human(2048), "2.0 KiB");
        assert_eq!(human(12), "12 B");
    }

    #[test]
    fn the_script_runs_with_its_retry_window_and_no_secret() {
        assert_eq!(
            script_cmd("5m", &["backup", "--no-prune", "pg"]),
            "env MESH_RETRY_LOCK=5m /usr/local/sbin/mesh-backup backup --no-prune pg\n"
        );
        assert_eq!(
            init_script().as_str(),
            "set -a; . /etc/mesh/restic.env; set +a\nif restic cat config >/dev/null 2>&1; then echo 'repo exists'; exit 0; fi\nrestic init >/dev/null && echo 'repo created'\n"
        );
    }
}
