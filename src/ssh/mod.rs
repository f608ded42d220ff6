//! Transport: how mesh runs commands on a host.
//!
//! Phases and ops only see the [`Transport`] trait (exec, exec with stdin,
//! a fresh-connection probe, close). The real implementation drives the
//! system `ssh` with one ControlMaster per host ([`mux::SshTransport`]); the
//! [`recording::RecordingTransport`] answers from a script so phase logic can
//! be unit-tested without a host.

pub mod mux;
pub mod recording;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed future, so [`Transport`] stays object safe.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a remote command reads on its standard input.
#[derive(Debug, Clone)]
pub enum Input {
    None,
    Bytes(Arc<Vec<u8>>),
    /// Streamed from a local file (large uploads never sit in memory).
    File(PathBuf),
    /// Several inputs, one after the other (batched file uploads).
    Chain(Vec<Input>),
}

/// Result of one remote command.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Exit code; `None` when the command died by a signal or the channel broke.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// The last `n` lines of stderr then stdout, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let mut text = self.stderr_str();
        if text.trim().is_empty() {
            text = self.stdout_str();
        }
        let lines: Vec<&str> = text.trim_end().lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Transport failures. Remote commands that run and fail are not errors here:
/// they return an [`Output`] with a non-zero code.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot connect to {dest}: {reason}. Fix: check that `ssh {dest}` works from this machine (address, port, key, known_hosts)")]
    Connect { dest: String, reason: String },
    #[error("connection to {dest} broke: {reason}")]
    Channel { dest: String, reason: String },
    #[error("reading local file {path}: {source}")]
    LocalFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Runs commands on one host.
pub trait Transport: Send + Sync {
    /// Human-readable destination, e.g. `root@10.0.0.1:22`.
    fn dest(&self) -> &str;

    /// Run `script` with `sh` on the host (as root: mesh adds `sudo -n` when
    /// the login user is not root), feeding `input` on stdin.
    fn exec<'a>(&'a self, script: &'a str, input: Input) -> BoxFut<'a, Result<Output, SshError>>;

    /// Open a brand-new connection (not the multiplexed master) and run `true`.
    /// Proves that a fresh login still gets in, e.g. after a firewall change.
    fn check_fresh(&self) -> BoxFut<'_, Result<(), SshError>>;

    /// Close the connection; later calls reconnect.
    fn close(&self) -> BoxFut<'_, ()>;
}
