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
    /// Log to `dir/<host>.log` (truncated per run).
    pub fn create(dir: &Path, host: &str, redactor: Redactor) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{host}.log"));
        let file = std::fs::File::create(&path)?;
        Ok(HostLog {
            path: Some(path),
            file: Mutex::new(Some(file)),
            redactor,
        })
    }

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
            let secs = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default();
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
