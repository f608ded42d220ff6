//! Transport: how mesh runs commands on a host.
//!
//! Phases and ops only see the [`Transport`] trait (exec, exec with stdin,
//! a fresh-connection probe, close). The real implementation drives the
//! system `ssh` with one ControlMaster per host ([`mux::SshTransport`]); the
//! [`recording::RecordingTransport`] answers from a script so phase logic can
//! be unit-tested without a host.

pub mod mux;
#[cfg(test)]
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
    /// A local file checked against the stamp taken when it was hashed:
    /// its bytes, then the line [`SENT`]. The file is sent only while it is
    /// still the one that was hashed; if it is not, the stream stops before
    /// [`SENT`] and the host, which keeps an upload only after that line,
    /// keeps nothing. [`SENT`] also proves every byte before it arrived.
    Stamped(Stamped),
}

/// The line after an [`Input::Stamped`] file sent as it was hashed.
pub const SENT: &str = "sent";

/// [`SENT`] as the bytes that end a stream.
pub fn sent_line() -> Arc<Vec<u8>> {
    Arc::new(format!("{SENT}\n").into_bytes())
}

/// A local file and what it was when it was hashed.
#[derive(Debug, Clone)]
pub struct Stamped {
    pub path: PathBuf,
    pub stamp: FileStamp,
}

/// Identity and last change of a local file: if any of it differs, the file
/// is not the one that was hashed (a write moves ctime even when mtime is put
/// back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl FileStamp {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Where [`Transport::exec_streaming`] hands a command's stdout, as it comes.
pub type StdoutSink = Arc<dyn Fn(&[u8]) + Send + Sync>;

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
    #[error("a command on {dest} did not finish within {seconds} s and was stopped. Fix: check the host, or raise --command-timeout if it needs longer")]
    Timeout { dest: String, seconds: u64 },
    #[error("connection to {dest} broke: {reason}")]
    Channel { dest: String, reason: String },
    #[error("reading local file {path}: {source}")]
    LocalFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("local file {path} changed after mesh hashed it, while this run sent it; the host kept nothing. Fix: run again once nothing writes to it")]
    LocalChanged { path: PathBuf },
}

/// How long a command may take: every remote command has a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    /// Probes, file writes, service restarts.
    Normal,
    /// Package installs and upgrades, image loads.
    Long,
}

/// The deadline of each [`CommandKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandTimeouts {
    pub normal: std::time::Duration,
    pub long: std::time::Duration,
}

impl CommandTimeouts {
    /// 10 minutes for a command, 30 for apt; `--command-timeout` sets both.
    pub fn new(override_seconds: Option<u64>) -> Self {
        let secs = |default| std::time::Duration::from_secs(override_seconds.unwrap_or(default));
        CommandTimeouts {
            normal: secs(600),
            long: secs(1800),
        }
    }

    pub fn of(&self, kind: CommandKind) -> std::time::Duration {
        match kind {
            CommandKind::Normal => self.normal,
            CommandKind::Long => self.long,
        }
    }
}

/// Runs commands on one host.
pub trait Transport: Send + Sync {
    /// Run `script` with `sh` on the host (as root: mesh adds `sudo -n` when
    /// the login user is not root), feeding `input` on stdin, within the
    /// deadline of `kind`: past it the remote command is killed and the
    /// result is [`SshError::Timeout`].
    fn exec_as<'a>(
        &'a self,
        script: &'a str,
        input: Input,
        kind: CommandKind,
    ) -> BoxFut<'a, Result<Output, SshError>>;

    /// [`Transport::exec_as`] with the normal deadline.
    fn exec<'a>(&'a self, script: &'a str, input: Input) -> BoxFut<'a, Result<Output, SshError>> {
        self.exec_as(script, input, CommandKind::Normal)
    }

    /// Run `script` with no deadline, handing its stdout to `sink` chunk by
    /// chunk as it arrives (the returned [`Output`] has no stdout). It runs
    /// until it ends or the future is dropped; then [`Transport::interrupt`]
    /// stops it like any other command (`mesh logs --follow`).
    /// The default runs [`Transport::exec`] and hands over its whole stdout.
    fn exec_streaming<'a>(
        &'a self,
        script: &'a str,
        sink: StdoutSink,
    ) -> BoxFut<'a, Result<Output, SshError>> {
        Box::pin(async move {
            let mut out = self.exec(script, Input::None).await?;
            sink(&std::mem::take(&mut out.stdout));
            Ok(out)
        })
    }

    /// Open a brand-new connection (not the multiplexed master) and run `true`.
    /// Proves that a fresh login still gets in, e.g. after a firewall change.
    fn check_fresh(&self) -> BoxFut<'_, Result<(), SshError>>;

    /// Close the connection; later calls reconnect.
    fn close(&self) -> BoxFut<'_, ()>;

    /// After Ctrl-C, once the commands' futures are dropped: stop what they
    /// started on the host (closing a channel does not), TERM then KILL
    /// after a grace of a few seconds. A package install is left to
    /// finish: the names of the tools left running (e.g. `dpkg`) are
    /// returned.
    fn interrupt(&self) -> BoxFut<'_, Vec<String>> {
        Box::pin(async { Vec::new() })
    }

    /// What the user should learn about this connection, each notice once
    /// (later calls return only new ones): e.g. `trusting new host key
    /// SHA256:…` when a host's key was accepted for the first time.
    fn notices(&self) -> Vec<String> {
        Vec::new()
    }
}
