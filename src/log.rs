//! Per-host log files: the full remote output of every command mesh ran on
//! a host, with secrets redacted. The terminal only shows a failed host's
//! last lines; the log has everything.

use crate::template::Redactor;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// Appends to one host's log file; a no-op sink when logging is off.
pub struct HostLog {
    path: Option<PathBuf>,
    file: Mutex<Option<std::fs::File>>,
    redactor: Redactor,
}

impl HostLog {
    /// Log to `dir/<host>.log` (truncated per run), readable by its owner only.
    pub fn create(dir: &Path, host: &str, redactor: Redactor) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        private_dir(dir)?;
        let path = dir.join(format!("{host}.log"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        Ok(HostLog {
            path: Some(path),
            file: Mutex::new(Some(file)),
            redactor,
        })
    }

    #[cfg(test)]
    /// A log that keeps nothing (unit tests).
    pub fn discard() -> Self {
        HostLog {
            path: None,
            file: Mutex::new(None),
            redactor: Redactor::default(),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Redact secrets from `text` (for anything shown to the user).
    pub fn redact(&self, text: &str) -> String {
        self.redactor.redact(text)
    }

    /// Append a titled block; every line is redacted.
    pub fn block(&self, title: &str, body: &str) {
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = guard.as_mut() {
            let secs = since_epoch().as_secs_f64();
            let _ = writeln!(f, "--- {secs:.3} {}", self.redactor.redact(title));
            let body = self.redactor.redact(body);
            let _ = f.write_all(body.as_bytes());
            if !body.is_empty() && !body.ends_with('\n') {
                let _ = f.write_all(b"\n");
            }
        }
    }

    /// Append one line.
    pub fn line(&self, text: &str) {
        self.block(text, "");
    }
}

/// Runs whose logs are kept under `.mesh/logs/`.
const KEEP_RUNS: usize = 20;

/// A fresh directory for this run's host logs, `<base>/<UTC stamp>-<phase>`,
/// with `<base>/latest` pointing at it; only the newest runs are kept.
pub fn run_dir(base: &Path, phase: &str) -> std::io::Result<PathBuf> {
    let dir = base.join(format!("{}-{phase}-{}", utc_stamp(), std::process::id()));
    private_dir(base)?;
    private_dir(&dir)?;
    let latest = base.join("latest");
    let _ = std::fs::remove_file(&latest);
    let _ = std::os::unix::fs::symlink(dir.file_name().unwrap_or_default(), &latest);
    let mut runs: Vec<PathBuf> = std::fs::read_dir(base)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    runs.sort();
    for old in runs.iter().take(runs.len().saturating_sub(KEEP_RUNS)) {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(dir)
}

/// Create `dir` (and parents) and make it mode 0700: logs are private even
/// when redacted (an earlier mesh made them 0755).
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Time since the Unix epoch (zero if the clock is before it).
fn since_epoch() -> std::time::Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

/// The UTC time of day of `secs` since the epoch, `HH<sep>MM<sep>SS`.
fn hms(secs: u64, sep: &str) -> String {
    format!(
        "{:02}{sep}{:02}{sep}{:02}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

/// The UTC time of day now, `HH<sep>MM<sep>SS`.
pub fn utc_time(sep: &str) -> String {
    hms(since_epoch().as_secs(), sep)
}

/// `YYYYMMDDTHHMMSS` in UTC (sorts by time).
fn utc_stamp() -> String {
    utc_compact(since_epoch().as_secs())
}

/// `YYYYMMDDTHHMMSS` in UTC of `secs` since the epoch.
pub(crate) fn utc_compact(secs: u64) -> String {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}{m:02}{d:02}T{}", hms(secs, ""))
}

/// `YYYY-MM-DDTHH:MM:SSZ` now (RFC 3339 in UTC): audit lines that tools read back.
pub fn utc_rfc3339() -> String {
    let secs = since_epoch().as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}T{}Z", hms(secs, ":"))
}

/// `YYYY-MM-DD HH:MM:SS UTC`, for people.
pub fn utc_now() -> String {
    let secs = since_epoch().as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02} {} UTC", hms(secs, ":"))
}

/// Gregorian date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_778), (2026, 11, 21));
        assert_eq!(hms(86_400 + 3_661, ":"), "01:01:01");
        assert_eq!(hms(86_399, ""), "235959");
    }

    #[test]
    fn run_dirs_are_pruned_and_latest_points_at_the_newest() {
        let base = tempfile::tempdir().unwrap();
        for i in 0..KEEP_RUNS + 3 {
            std::fs::create_dir(base.path().join(format!("2000010{i:02}-old"))).unwrap();
        }
        let dir = run_dir(base.path(), "nodes").unwrap();
        let count = std::fs::read_dir(base.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
            .count();
        assert_eq!(count, KEEP_RUNS);
        assert!(dir.exists());
        assert_eq!(
            std::fs::read_link(base.path().join("latest")).unwrap(),
            dir.file_name().unwrap()
        );
    }

    #[test]
    fn logs_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let logs = base.path().join(".mesh/logs");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = run_dir(&logs, "nodes").unwrap();
        let log = HostLog::create(&dir, "h1", Redactor::default()).unwrap();
        log.line("hello");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&logs), 0o700);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("h1.log")), 0o600);
    }
}
