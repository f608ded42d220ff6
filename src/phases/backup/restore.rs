//! The fleet's snapshots as one table (`mesh snapshots`) and the restore of
//! one service from them (`mesh restore`).
//!
//! A backup run of a service makes up to two restic snapshots with the same
//! `run=` tag: `part=dump` (the dump command's output) and `part=files` (its
//! paths and volumes). They are shown, chosen and restored together.

use super::{script_cmd, BackupError, Fleet};
use crate::ops::{OpError, OpFailure};
use crate::phases::{HostCtx, Step, StepOutcome};
use crate::ssh::{BoxFut, Input};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One backup run of one service on one host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Snapshot {
    /// The run tag (UTC time of the run); `--snapshot` takes it, or a
    /// restic snapshot id of one of its parts.
    pub id: String,
    pub time: String,
    pub host: String,
    pub service: String,
    /// Bytes the run's snapshots hold (restic's total processed).
    pub size: u64,
    /// Bytes the run added to the repository (after deduplication).
    pub added: u64,
    pub files: Option<String>,
    pub dump: Option<String>,
}

/// `restic snapshots --json` grouped by host, service and run, oldest first.
pub(crate) fn parse_snapshots(text: &str) -> Result<Vec<Snapshot>, BackupError> {
    let start = text
        .find('[')
        .ok_or_else(|| BackupError::BadList(tail(text)))?;
    let list: Vec<serde_json::Value> = serde_json::from_str(text[start..].trim())
        .map_err(|e| BackupError::BadList(e.to_string()))?;
    let mut runs: BTreeMap<(String, String, String), Snapshot> = BTreeMap::new();
    for snap in &list {
        let tags: Vec<&str> = snap["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str())
            .collect();
        let tag = |k: &str| {
            tags.iter()
                .find_map(|t| t.strip_prefix(&format!("{k}=")))
                .map(str::to_string)
        };
        let (Some(service), Some(run)) = (tag("service"), tag("run")) else {
            continue;
        };
        let host = tag("host").unwrap_or_else(|| snap["hostname"].as_str().unwrap_or("").into());
        let id = snap["id"].as_str().unwrap_or_default().to_string();
        let time = snap["time"].as_str().unwrap_or_default().to_string();
        let summary = &snap["summary"];
        let entry = runs
            .entry((host.clone(), service.clone(), run.clone()))
            .or_insert_with(|| Snapshot {
                id: run.clone(),
                time: time.clone(),
                host,
                service,
                size: 0,
                added: 0,
                files: None,
                dump: None,
            });
        if time < entry.time {
            entry.time = time;
        }
        entry.size += summary["total_bytes_processed"].as_u64().unwrap_or(0);
        entry.added += summary["data_added"].as_u64().unwrap_or(0);
        match tag("part").as_deref() {
            Some("dump") => entry.dump = Some(id),
            _ => entry.files = Some(id),
        }
    }
    let mut out: Vec<Snapshot> = runs.into_values().collect();
    out.sort_by(|a, b| a.time.cmp(&b.time).then(a.host.cmp(&b.host)));
    Ok(out)
}

fn tail(text: &str) -> String {
    text.lines().rev().take(3).collect::<Vec<_>>().join(" ")
}

/// The run to restore: `latest` (the newest), else the run id, or a
/// snapshot id (or its prefix) of one of its parts.
pub(crate) fn choose<'a>(
    snaps: &'a [Snapshot],
    service: &str,
    host: &str,
    wanted: &str,
) -> Option<&'a Snapshot> {
    let mut of = snaps
        .iter()
        .filter(|s| s.service == service && s.host == host);
    if wanted == "latest" {
        return of.next_back();
    }
    let is = |id: &Option<String>| id.as_deref().is_some_and(|i| i.starts_with(wanted));
    of.find(|s| s.id == wanted || is(&s.files) || is(&s.dump))
}

/// The table `mesh snapshots` prints.
pub(crate) fn table(snaps: &[Snapshot]) -> String {
    let rows: Vec<[String; 6]> = snaps
        .iter()
        .map(|s| {
            [
                s.id.clone(),
                s.time
                    .chars()
                    .take(19)
                    .collect::<String>()
                    .replace('T', " "),
                s.host.clone(),
                s.service.clone(),
                super::human(s.size),
                super::human(s.added),
            ]
        })
        .collect();
    let head = ["ID", "TIME (UTC)", "HOST", "SERVICE", "SIZE", "ADDED"].map(String::from);
    let mut width = [0usize; 6];
    for r in std::iter::once(&head).chain(&rows) {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&head).chain(&rows) {
        let cells: Vec<String> = r
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Read the fleet's snapshots through one host.
pub(crate) async fn list(ctx: &HostCtx, retry_lock: &str) -> Result<Vec<Snapshot>, OpError> {
    let out = ctx
        .op_ctx()
        .run(
            "restic snapshots",
            &script_cmd(retry_lock, &["snapshots"]),
            Input::None,
        )
        .await?;
    let text = out.stdout_str();
    if !out.success() {
        return Err(OpError::Step(Box::new(BackupError::Script(
            ctx.log.redact(&tail(&text)),
        ))));
    }
    parse_snapshots(&text).map_err(|e| OpError::Step(Box::new(e)))
}

/// `mesh restore` on the target host.
pub(crate) struct Restore {
    pub fleet: Arc<Fleet>,
    pub service: String,
    pub snapshot: String,
    /// Whose snapshots (the host itself unless `--from-host`).
    pub from_host: Option<String>,
    pub retry_lock: String,
    pub dry_run: bool,
}

impl Restore {
    async fn run_on(&self, ctx: &HostCtx) -> Result<StepOutcome, OpFailure> {
        let fail = |error: OpError| OpFailure {
            label: "restore".into(),
            error,
            done: Vec::new(),
        };
        let source = self.from_host.as_deref().unwrap_or(&ctx.host.name);
        let snaps = list(ctx, &self.retry_lock).await.map_err(fail)?;
        let snap = choose(&snaps, &self.service, source, &self.snapshot).ok_or_else(|| {
            fail(OpError::Step(Box::new(BackupError::NoSnapshot {
                service: self.service.clone(),
                host: source.to_string(),
                id: (self.snapshot != "latest").then(|| self.snapshot.clone()),
            })))
        })?;
        ctx.stage("restoring");
        let mut args = vec![
            "restore",
            self.service.as_str(),
            snap.files.as_deref().unwrap_or("-"),
            snap.dump.as_deref().unwrap_or("-"),
        ];
        if self.dry_run {
            args.push("--dry-run");
        }
        let out = ctx
            .op_ctx()
            .long()
            .run(
                "mesh-backup restore",
                &script_cmd(&self.retry_lock, &args),
                Input::None,
            )
            .await
            .map_err(fail)?;
        let text = ctx.log.redact(&out.stdout_str());
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("restore ") || l.starts_with("error "))
            .collect();
        if !out.success() {
            let why = lines
                .iter()
                .find_map(|l| l.strip_prefix("error "))
                .map(str::to_string)
                .unwrap_or_else(|| ctx.log.redact(&out.tail(3)));
            return Err(fail(OpError::Step(Box::new(BackupError::Script(why)))));
        }
        let mut shown = vec![format!(
            "{} from {} ({}, {})",
            self.service, source, snap.id, snap.time
        )];
        shown.extend(
            lines
                .iter()
                .map(|l| l.trim_start_matches("restore ").to_string()),
        );
        Ok(StepOutcome {
            reports: Vec::new(),
            output: Some(shown.join("\n")),
        })
    }
}

impl Step for Restore {
    fn name(&self) -> &'static str {
        "restore"
    }

    fn wants(&self, ctx: &HostCtx) -> bool {
        self.fleet.contains_key(&ctx.host.name)
    }

    fn run<'a>(&'a self, ctx: &'a HostCtx) -> BoxFut<'a, Result<StepOutcome, OpFailure>> {
        Box::pin(self.run_on(ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"[
 {"time":"2025-04-01T03:00:01.5Z","hostname":"db-1","tags":["mesh","host=db-1","service=pg","run=20250401T030000Z","part=dump"],"id":"aaaa1111","summary":{"data_added":100,"total_bytes_processed":1000}},
 {"time":"2025-04-01T03:00:02Z","hostname":"db-1","tags":["mesh","host=db-1","service=pg","run=20250401T030000Z","part=files"],"id":"bbbb2222","summary":{"data_added":50,"total_bytes_processed":500}},
 {"time":"2025-04-02T03:00:01Z","hostname":"db-1","tags":["mesh","host=db-1","service=pg","run=20250402T030000Z","part=dump"],"id":"cccc3333"},
 {"time":"2025-04-01T03:00:05Z","hostname":"kv-1","tags":["mesh","host=kv-1","service=kv","run=20250401T030004Z","part=files"],"id":"dddd4444"},
 {"time":"2025-04-01T03:00:05Z","hostname":"x","tags":["other"],"id":"eeee"}
]"#;

    #[test]
    fn runs_group_their_parts_and_sort_by_time() {
        let snaps = parse_snapshots(LIST).unwrap();
        assert_eq!(snaps.len(), 3);
        let first = &snaps[0];
        assert_eq!(first.id, "20250401T030000Z");
        assert_eq!((first.size, first.added), (1500, 150));
        assert_eq!(first.dump.as_deref(), Some("aaaa1111"));
        assert_eq!(first.files.as_deref(), Some("bbbb2222"));
        assert_eq!(snaps[1].service, "kv");
        assert_eq!(
            choose(&snaps, "pg", "db-1", "latest").unwrap().id,
            "20250402T030000Z"
        );
        assert_eq!(
            choose(&snaps, "pg", "db-1", "bbbb").unwrap().id,
            "20250401T030000Z"
        );
        assert!(choose(&snaps, "pg", "kv-1", "latest").is_none());
        let t = table(&snaps);
        assert!(t.starts_with("ID "), "{t}");
        assert!(
            t.contains("20250401T030000Z  2025-04-01 03:00:01  db-1  pg"),
            "{t}"
        );
        assert!(t.contains("1.5 KiB"), "{t}");
        assert!(parse_snapshots("Fatal: no repo").is_err());
    }
}
