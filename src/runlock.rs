//! One run at a time per inventory: an exclusive lock on `.mesh/run.lock`
//! beside the inventory, held for the whole run, so two runs never
//! read-modify-write `secrets.env` or `docker.lock` over each other.
//!
//! The lock is the kernel's (`flock`), so it goes away with the process even
//! when mesh is killed; the file's text only says who holds it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum RunLockError {
    #[error("cannot open the run lock {}: {source}. Fix: make its folder writable", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another mesh run on this inventory holds {}: {holder}. Fix: wait for it to end, or pass --lock-wait SECONDS", path.display())]
    Held { path: PathBuf, holder: String },
}

/// Held for the run; dropping it releases the lock.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Take the lock at `path`, waiting up to `wait` for a run that holds it.
    /// `what` (e.g. the command) is recorded for whoever waits on us.
    pub fn acquire(path: &Path, wait: Duration, what: &str) -> Result<RunLock, RunLockError> {
        let open_err = |source| RunLockError::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(open_err)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(open_err)?;
        let deadline = Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(RunLockError::Held {
                        path: path.to_path_buf(),
                        holder: holder(&mut file),
                    })
                }
                Err(TryLockError::Error(e)) => return Err(open_err(e)),
            }
        }
        let record = format!(
            "pid {} started {} running {what}\n",
            std::process::id(),
            crate::log::utc_now()
        );
        // Best effort: the lock itself is what protects; the text informs.
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(record.as_bytes()));
        Ok(RunLock { _file: file })
    }
}

/// What the holder wrote about itself.
fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.rewind().and_then(|()| file.read_to_string(&mut text));
    match text.trim() {
        "" => "a run that has not said who it is yet".to_string(),
        t => t.chars().take(300).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_run_fails_at_once_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".mesh/run.lock");
        let first = RunLock::acquire(&path, Duration::ZERO, "nodes").unwrap();
        let t0 = Instant::now();
        let err = RunLock::acquire(&path, Duration::ZERO, "services").unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(1));
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains("running nodes"), "{text}");
        assert!(text.contains("--lock-wait"), "{text}");
        drop(first);
        // A child another test forks in this process holds a copy of the
        // descriptor until its exec (close-on-exec): allow it that moment.
        RunLock::acquire(&path, Duration::from_secs(5), "services").unwrap();
    }

    #[test]
    fn a_waiting_run_gets_the_lock_when_the_holder_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.lock");
        let first = RunLock::acquire(&path, Duration::ZERO, "nodes").unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(first);
        });
        RunLock::acquire(&path, Duration::from_secs(10), "care").unwrap();
        release.join().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("running care"), "{text}");
    }
}
