//! The real transport: one OpenSSH ControlMaster per host, opened lazily and
//! reused by every command through the `openssh` crate's native mux client
//! (a command on an open master costs a few milliseconds).
//!
//! mesh starts the master itself with the system `ssh`, so `~/.ssh/config`,
//! ssh-agent, ProxyJump and known_hosts behave as operators expect, and the
//! inventory's `ssh.options` pass straight through as `-o Key=Value`.
//!
//! Closing a mux channel does not stop the remote command (sshd hangs up
//! only on a pty), so every command first tells its process group on
//! stderr (a line mesh strips), and [`Transport::interrupt`] (Ctrl-C)
//! ends the groups still running through the same master: TERM, then KILL
//! after [`KILL_GRACE`]. A package install (dpkg, apt) is left to finish.

use super::{
    sent_line, BoxFut, CommandKind, CommandTimeouts, FileStamp, Input, Output, SshError, Stamped,
    StdoutSink, Transport,
};
use crate::quote::quote;
use openssh::{Session, Stdio};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio as StdStdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Mutex, Semaphore};

/// How to reach one host; every field left `None` is left to `~/.ssh/config`.
#[derive(Debug, Clone, Default)]
pub struct SshTarget {
    pub address: String,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_file: Option<PathBuf>,
    /// Passed as `-o Key=Value`, before mesh's own defaults (first value wins in ssh).
    pub options: BTreeMap<String, String>,
}

impl SshTarget {
    /// `user@address:port` for messages.
    pub fn display(&self) -> String {
        let mut s = String::new();
        if let Some(u) = &self.user {
            s.push_str(u);
            s.push('@');
        }
        s.push_str(&self.address);
        if let Some(p) = self.port {
            s.push_str(&format!(":{p}"));
        }
        s
    }

    fn has_option(&self, key: &str) -> bool {
        self.options.keys().any(|k| k.eq_ignore_ascii_case(key))
    }

    /// Arguments shared by the master and by fresh probe connections.
    fn common_args(&self, connect_timeout: Duration) -> Vec<String> {
        let mut args = vec!["-o".into(), "BatchMode=yes".into()];
        for (k, v) in &self.options {
            args.push("-o".into());
            args.push(format!("{k}={v}"));
        }
        // Host keys are checked; at most new ones are accepted, never "no".
        if !self.has_option("StrictHostKeyChecking") {
            args.extend(["-o".into(), "StrictHostKeyChecking=accept-new".into()]);
        }
        if !self.has_option("ConnectTimeout") {
            args.push("-o".into());
            args.push(format!(
                "ConnectTimeout={}",
                connect_timeout.as_secs().max(1)
            ));
        }
        if !self.has_option("ServerAliveInterval") {
            args.extend(["-o".into(), "ServerAliveInterval=15".into()]);
        }
        if let Some(p) = self.port {
            args.push("-p".into());
            args.push(p.to_string());
        }
        if let Some(u) = &self.user {
            args.push("-l".into());
            args.push(u.clone());
        }
        if let Some(k) = &self.identity_file {
            args.extend(["-o".into(), "IdentitiesOnly=yes".into(), "-i".into()]);
            args.push(k.display().to_string());
        }
        args
    }
}

/// Limits shared by every host of a run.
#[derive(Debug, Clone)]
pub struct SshLimits {
    /// Simultaneous SSH handshakes (the controller's CPU is the bottleneck).
    pub handshakes: Arc<Semaphore>,
    pub connect_timeout: Duration,
    /// Directory for control sockets (kept short: socket paths max ~100 bytes).
    pub control_dir: PathBuf,
    pub commands: CommandTimeouts,
}

struct Conn {
    session: Session,
    sudo: bool,
}

/// One host's multiplexed SSH connection.
pub struct SshTransport {
    target: SshTarget,
    dest: String,
    limits: SshLimits,
    ctl: PathBuf,
    log: PathBuf,
    conn: Mutex<Option<Arc<Conn>>>,
    /// For [`Transport::notices`]: host keys trusted on first use.
    notices: std::sync::Mutex<Vec<String>>,
    /// Process groups of the commands started and not seen to finish, by
    /// command number: what [`Transport::interrupt`] stops.
    running: std::sync::Mutex<BTreeMap<u64, u32>>,
    next_command: AtomicU64,
}

impl SshTransport {
    /// `slot` makes the control socket name unique within the run.
    pub fn new(target: SshTarget, limits: SshLimits, slot: usize) -> Self {
        let ctl = limits.control_dir.join(format!("c{slot}"));
        let log = limits.control_dir.join(format!("c{slot}.log"));
        SshTransport {
            dest: target.display(),
            target,
            limits,
            ctl,
            log,
            conn: Mutex::new(None),
            notices: std::sync::Mutex::default(),
            running: std::sync::Mutex::default(),
            next_command: AtomicU64::new(0),
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, u32>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn connection(&self) -> Result<Arc<Conn>, SshError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let conn = Arc::new(self.connect().await?);
        *guard = Some(conn.clone());
        Ok(conn)
    }

    async fn connect(&self) -> Result<Conn, SshError> {
        let permit = self.limits.handshakes.acquire().await;
        let _ = std::fs::remove_file(&self.ctl);
        // A fresh log per login: what it says is about this one only.
        let _ = std::fs::remove_file(&self.log);
        let mut cmd = tokio::process::Command::new("ssh");
        cmd.arg("-E")
            .arg(&self.log)
            .arg("-S")
            .arg(&self.ctl)
            .args(["-M", "-f", "-N", "-o", "ControlPersist=300"])
            .args(self.target.common_args(self.limits.connect_timeout))
            .arg("--")
            .arg(&self.target.address)
            .stdin(StdStdio::null())
            .stdout(StdStdio::null())
            .stderr(StdStdio::null())
            .kill_on_drop(true);
        // ConnectTimeout covers the TCP connect only: a handshake that stalls
        // after it is cut here (kill_on_drop ends that ssh).
        let login = self.limits.connect_timeout + Duration::from_secs(10);
        let status = tokio::time::timeout(login, cmd.status())
            .await
            .map_err(|_| SshError::Connect {
                dest: self.dest.clone(),
                reason: format!("login did not complete within {} s", login.as_secs()),
            })?
            .map_err(|e| SshError::Connect {
                dest: self.dest.clone(),
                reason: format!("cannot run ssh: {e}"),
            })?;
        drop(permit);
        if !status.success() {
            return Err(SshError::Connect {
                dest: self.dest.clone(),
                reason: ssh_log_reason(&self.log),
            });
        }
        if let Some(notice) = self.new_host_key().await {
            self.notices
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(notice);
        }
        let session = Session::resume_mux(
            self.ctl.clone().into_boxed_path(),
            Some(self.log.clone().into_boxed_path()),
        );
        let mut conn = Conn {
            session,
            sudo: false,
        };
        // Learn once whether commands need sudo, unless the inventory says root.
        if self.target.user.as_deref() != Some("root") {
            let out = self
                .run(&conn, "id -u", Input::None, CommandKind::Normal)
                .await?;
            conn.sudo = out.stdout_str().trim() != "0";
        }
        Ok(conn)
    }

    /// When this login accepted the host's key for the first time
    /// (`StrictHostKeyChecking=accept-new`; ssh logs "Permanently added"),
    /// the notice naming its fingerprint, as now recorded in known_hosts.
    async fn new_host_key(&self) -> Option<String> {
        let log = std::fs::read_to_string(&self.log).ok()?;
        let (spec, key_type) = added_host_key(&log)?;
        let known_hosts = self.known_hosts_file().await;
        let fingerprint = match &known_hosts {
            Some(file) => {
                let out = tokio::process::Command::new("ssh-keygen")
                    .args(["-l", "-F", &spec, "-f"])
                    .arg(file)
                    .stdin(StdStdio::null())
                    .stderr(StdStdio::null())
                    .output()
                    .await
                    .ok()?;
                fingerprint(&String::from_utf8_lossy(&out.stdout), &key_type)
            }
            None => None,
        };
        let file = known_hosts.map_or_else(|| "known_hosts".into(), |f| f.display().to_string());
        Some(match fingerprint {
            Some(fp) => {
                format!("trusting new host key {fp} ({key_type}) for {spec}, now in {file}")
            }
            None => format!(
                "trusting new host key ({key_type}) for {spec}; its fingerprint is not in {file}"
            ),
        })
    }

    /// The known_hosts file ssh adds new keys to for this target: the first
    /// `UserKnownHostsFile` as `ssh -G` resolves it (options, ~/.ssh/config).
    async fn known_hosts_file(&self) -> Option<PathBuf> {
        let out = tokio::process::Command::new("ssh")
            .arg("-G")
            .args(self.target.common_args(self.limits.connect_timeout))
            .arg("--")
            .arg(&self.target.address)
            .stdin(StdStdio::null())
            .stderr(StdStdio::null())
            .output()
            .await
            .ok()?;
        user_known_hosts(&String::from_utf8_lossy(&out.stdout))
    }

    /// Run with the deadline of `kind`: `timeout` on the host kills the
    /// command's whole process group when it passes; the local timer (a
    /// little later) covers a connection that stopped answering.
    async fn run(
        &self,
        conn: &Conn,
        script: &str,
        input: Input,
        kind: CommandKind,
    ) -> Result<Output, SshError> {
        let limit = self.limits.commands.of(kind);
        self.run_bounded(conn, script, input, Some(limit), None)
            .await
    }

    /// Run within `limit` (none: until it ends or is dropped), stdout to
    /// `sink` as it arrives when there is one.
    async fn run_bounded(
        &self,
        conn: &Conn,
        script: &str,
        input: Input,
        limit: Option<Duration>,
        sink: Option<StdoutSink>,
    ) -> Result<Output, SshError> {
        let started = std::time::Instant::now();
        let id = self.next_command.fetch_add(1, Ordering::Relaxed);
        let work = self.run_limited(conn, script, input, limit, id, sink);
        let res = match limit {
            Some(limit) => tokio::time::timeout(limit + Duration::from_secs(15), work)
                .await
                .ok(),
            None => Some(work.await),
        };
        // Finished (or given up on): nothing to stop any more. A command whose
        // future is dropped (Ctrl-C) stays listed for `interrupt`.
        self.running().remove(&id);
        let timeout = |limit: Duration| SshError::Timeout {
            dest: self.dest.clone(),
            seconds: limit.as_secs(),
        };
        match (res, limit) {
            (Some(Ok(out)), Some(limit))
                if matches!(out.code, Some(124 | 137)) && started.elapsed() >= limit =>
            {
                Err(timeout(limit))
            }
            (Some(res), _) => res,
            (None, limit) => Err(timeout(limit.unwrap_or_default())),
        }
    }

    async fn run_limited(
        &self,
        conn: &Conn,
        script: &str,
        input: Input,
        limit: Option<Duration>,
        id: u64,
        sink: Option<StdoutSink>,
    ) -> Result<Output, SshError> {
        let wrapped = wrap(script, limit, conn.sudo);
        let channel_err = |e: openssh::Error| SshError::Channel {
            dest: self.dest.clone(),
            reason: e.to_string(),
        };
        let mut command = conn.session.raw_command(wrapped);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let fed = match input {
            Input::None => {
                command.stdin(Stdio::null());
                None
            }
            Input::File(path) => {
                // Hand the file itself to ssh as stdin: no copy through mesh.
                let file = std::fs::File::open(&path)
                    .map_err(|source| SshError::LocalFile { path, source })?;
                command.stdin(Stdio::from(std::os::fd::OwnedFd::from(file)));
                None
            }
            input => {
                command.stdin(Stdio::piped());
                Some(input)
            }
        };
        let mut child = command.spawn().await.map_err(channel_err)?;
        let stdin = child.stdin().take();
        // Feed stdin while the command runs, so neither side blocks.
        let feed = async move {
            let (Some(input), Some(mut stdin)) = (fed, stdin) else {
                return Ok(());
            };
            // A broken pipe shows up as the remote command's failure.
            let fed = feed(&mut stdin, input).await;
            let _ = stdin.shutdown().await;
            drop(stdin);
            match fed {
                Err(e @ (SshError::LocalFile { .. } | SshError::LocalChanged { .. })) => Err(e),
                _ => Ok(()),
            }
        };
        let stdout = child.stdout().take();
        let stdout = async move {
            let mut buf = Vec::new();
            match (stdout, sink) {
                (Some(mut r), None) => {
                    r.read_to_end(&mut buf).await?;
                }
                (Some(mut r), Some(sink)) => {
                    let mut chunk = vec![0u8; 64 * 1024];
                    loop {
                        let n = r.read(&mut chunk).await?;
                        if n == 0 {
                            break;
                        }
                        sink(&chunk[..n]);
                    }
                }
                (None, _) => {}
            }
            Ok::<_, std::io::Error>(buf)
        };
        let stderr = child.stderr().take();
        let stderr = async move {
            match stderr {
                Some(mut r) => {
                    read_stderr(&mut r, |pgid| {
                        self.running().insert(id, pgid);
                    })
                    .await
                }
                None => Ok(Vec::new()),
            }
        };
        let (fed, stdout, stderr) = tokio::join!(feed, stdout, stderr);
        fed?;
        let io_err = |e: std::io::Error| SshError::Channel {
            dest: self.dest.clone(),
            reason: e.to_string(),
        };
        let (stdout, stderr) = (stdout.map_err(io_err)?, stderr.map_err(io_err)?);
        // The streams are read to their end before waiting (waiting first
        // would cut output still in flight).
        // openssh reports exit 127 (a command not found) as an error of its
        // own: it is the command's failure, and its stderr says which.
        let code = match child.wait().await {
            Ok(status) => status.code(),
            Err(openssh::Error::Remote(e)) if e.kind() == std::io::ErrorKind::NotFound => Some(127),
            Err(e) => return Err(channel_err(e)),
        };
        Ok(Output {
            code,
            stdout,
            stderr,
        })
    }
}

/// What a command says first on stderr: `mesh-pgid <its process group>`.
const PGID_MARK: &str = "mesh-pgid ";

/// How long interrupted commands get between TERM and KILL.
pub const KILL_GRACE: Duration = Duration::from_secs(3);

/// What names a package install in a process group: it is left to finish.
const PACKAGE_TOOLS: &[&str] = &["dpkg", "apt", "apt-get", "aptitude", "unattended-upgr"];

/// The command line sent for `script`: `timeout` on the host bounds it and
/// kills its whole process group past `limit` (without one, `timeout 0`
/// makes the group all the same, for [`Transport::interrupt`]). The shell
/// first prints its pid, which `exec timeout` keeps and makes its process
/// group's id (`timeout` leads a group of its own), then is replaced by it:
/// exit codes and signals are the command's own.
fn wrap(script: &str, limit: Option<Duration>, sudo: bool) -> String {
    let inner = format!(
        "printf '{PGID_MARK}%s\\n' \"$$\" >&2; exec timeout -k 5 {} sh -c {}",
        limit.map_or(0, |l| l.as_secs().max(1)),
        quote(script)
    );
    if sudo {
        // sudo resets the environment; keep SSH_CONNECTION for the facts probe.
        format!(
            "sudo -n env MESH_SSH_CONNECTION=\"$SSH_CONNECTION\" sh -c {}",
            quote(&inner)
        )
    } else {
        inner
    }
}

/// The command's process group from the first `mesh-pgid N` line of
/// `stderr` (sudo may warn before it), and the byte range of that line.
/// Only the start of stderr is looked at: later output is the command's.
fn find_pgid(stderr: &[u8]) -> Option<(u32, std::ops::Range<usize>)> {
    let mut at = 0;
    while at < stderr.len() && at < 4096 {
        let line_end = stderr[at..].iter().position(|&b| b == b'\n')? + at;
        let line = &stderr[at..line_end];
        if let Some(num) = line.strip_prefix(PGID_MARK.as_bytes()) {
            let pgid = std::str::from_utf8(num).ok()?.trim().parse().ok()?;
            return Some((pgid, at..line_end + 1));
        }
        at = line_end + 1;
    }
    None
}

/// Read the command's stderr to its end, telling `pgid` the process group
/// as soon as its line arrives; that line is not part of the result.
async fn read_stderr<R: AsyncRead + Unpin>(
    r: &mut R,
    mut pgid: impl FnMut(u32),
) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut looking = true;
    loop {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if looking {
            if let Some((id, line)) = find_pgid(&buf) {
                pgid(id);
                buf.drain(line);
                looking = false;
            } else if buf.len() > 4096 {
                looking = false;
            }
        }
    }
    Ok(buf)
}

/// The script that stops interrupted commands by process group: every
/// group still there gets TERM (its leader too, in case the group is not
/// made yet), except one running a package tool (`left <pgid> <tool>`,
/// left to finish); after up to `grace` of polling, KILL for the groups
/// that are still there (`killed <pgid>`).
fn stop_script(pgids: &[u32], grace: Duration) -> String {
    let list: Vec<String> = pgids.iter().map(u32::to_string).collect();
    let polls = (grace.as_millis() / 100).max(1);
    format!(
        r#"t=
for p in {list}; do
  kill -0 -$p 2>/dev/null || kill -0 $p 2>/dev/null || continue
  k=
  for s in /proc/[0-9]*/stat; do
    {{ read -r l < "$s"; }} 2>/dev/null || continue
    c=${{l#*\(}}; c=${{c%\)*}}; r=${{l##*\) }}
    set -- $r
    [ "$3" = "$p" ] || continue
    case $c in {tools}) k=$c; break;; esac
  done
  if [ -n "$k" ]; then echo "left $p $k"; continue; fi
  kill -TERM -$p 2>/dev/null || kill -TERM $p 2>/dev/null
  t="$t $p"
done
i=0
while [ -n "$t" ] && [ $i -lt {polls} ]; do
  a=
  for p in $t; do kill -0 -$p 2>/dev/null && a="$a $p"; done
  t=$a
  [ -n "$t" ] && sleep 0.1
  i=$((i+1))
done
for p in $t; do kill -KILL -$p 2>/dev/null; kill -KILL $p 2>/dev/null; echo "killed $p"; done
exit 0
"#,
        list = list.join(" "),
        tools = PACKAGE_TOOLS.join("|"),
    )
}

/// The package tools [`stop_script`] left running, each once.
fn left_running(report: &str) -> Vec<String> {
    let mut tools: Vec<String> = report
        .lines()
        .filter_map(|l| l.strip_prefix("left "))
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(str::to_string)
        .collect();
    tools.sort();
    tools.dedup();
    tools
}

/// Large chunks: every read of a tokio file is a hop to the blocking pool.
const CHUNK: usize = 1 << 20;

/// Write `input` to the remote command's stdin.
async fn feed<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, input: Input) -> Result<(), SshError> {
    let mut queue = std::collections::VecDeque::from([input]);
    let mut buf = vec![0u8; CHUNK];
    while let Some(input) = queue.pop_front() {
        match input {
            Input::None => {}
            Input::Bytes(b) => w.write_all(&b).await.map_err(pipe_err)?,
            Input::Chain(parts) => {
                for p in parts.into_iter().rev() {
                    queue.push_front(p);
                }
            }
            Input::Stamped(s) => feed_stamped(w, &s, &mut buf).await?,
            Input::File(path) => {
                let local = |source| SshError::LocalFile {
                    path: path.clone(),
                    source,
                };
                let mut f = tokio::fs::File::open(&path).await.map_err(local)?;
                loop {
                    let n = f.read(&mut buf).await.map_err(local)?;
                    if n == 0 {
                        break;
                    }
                    w.write_all(&buf[..n]).await.map_err(pipe_err)?;
                }
            }
        }
    }
    Ok(())
}

/// A stamped file's bytes and [`super::SENT`], or an error (and no [`super::SENT`]) as
/// soon as the file is not the one that was hashed.
async fn feed_stamped<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    s: &Stamped,
    buf: &mut [u8],
) -> Result<(), SshError> {
    let local = |source| SshError::LocalFile {
        path: s.path.clone(),
        source,
    };
    let changed = || SshError::LocalChanged {
        path: s.path.clone(),
    };
    let mut f = tokio::fs::File::open(&s.path).await.map_err(local)?;
    let same = |meta: std::fs::Metadata| FileStamp::of(&meta) == s.stamp;
    if !same(f.metadata().await.map_err(local)?) {
        return Err(changed());
    }
    let mut left = s.stamp.len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = f.read(&mut buf[..want]).await.map_err(local)?;
        if n == 0 {
            return Err(changed());
        }
        w.write_all(&buf[..n]).await.map_err(pipe_err)?;
        left -= n as u64;
    }
    if !same(f.metadata().await.map_err(local)?) {
        return Err(changed());
    }
    w.write_all(&sent_line()).await.map_err(pipe_err)
}

fn pipe_err(e: std::io::Error) -> SshError {
    SshError::Channel {
        dest: String::new(),
        reason: e.to_string(),
    }
}

/// `(host as written to known_hosts, key type)` from ssh's log line
/// `Warning: Permanently added '[10.0.0.1]:2222' (ED25519) to the list of known hosts.`
fn added_host_key(log: &str) -> Option<(String, String)> {
    log.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("Warning: Permanently added '")?;
        let (spec, rest) = rest.split_once("' (")?;
        let (key_type, _) = rest.split_once(')')?;
        // ssh may list several names: "'host,10.0.0.1'".
        let spec = spec.split(',').next()?.trim();
        (!spec.is_empty()).then(|| (spec.to_string(), key_type.to_string()))
    })
}

/// The SHA256 fingerprint of the `key_type` key in `ssh-keygen -l -F` output
/// (`<host> ED25519 SHA256:...` lines), else of the only key listed.
fn fingerprint(keygen: &str, key_type: &str) -> Option<String> {
    let keys: Vec<(&str, &str)> = keygen
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let fp = fields.iter().find(|f| f.starts_with("SHA256:"))?;
            let ty = fields
                .iter()
                .find(|f| f.eq_ignore_ascii_case(key_type))
                .copied()
                .unwrap_or("");
            Some((ty, *fp))
        })
        .collect();
    keys.iter()
        .find(|(ty, _)| !ty.is_empty())
        .or(if keys.len() == 1 { keys.first() } else { None })
        .map(|(_, fp)| fp.to_string())
}

/// The first `userknownhostsfile` of `ssh -G` output.
fn user_known_hosts(ssh_g: &str) -> Option<PathBuf> {
    ssh_g.lines().find_map(|l| {
        let rest = l.strip_prefix("userknownhostsfile ")?;
        rest.split_whitespace().next().map(PathBuf::from)
    })
}

/// The useful part of ssh's own log after a failed connect.
fn ssh_log_reason(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Warning: Permanently added"))
        .collect();
    if lines.is_empty() {
        "ssh exited without a message".into()
    } else {
        lines[lines.len().saturating_sub(3)..].join("; ")
    }
}

impl Transport for SshTransport {
    fn exec_as<'a>(
        &'a self,
        script: &'a str,
        input: Input,
        kind: CommandKind,
    ) -> BoxFut<'a, Result<Output, SshError>> {
        Box::pin(async move {
            let conn = self.connection().await?;
            let res = self.run(&conn, script, input, kind).await;
            if let Err(SshError::Channel { .. }) = &res {
                // The master is gone (host rebooted, link broke): reconnect next time.
                *self.conn.lock().await = None;
            }
            res
        })
    }

    fn exec_streaming<'a>(
        &'a self,
        script: &'a str,
        sink: StdoutSink,
    ) -> BoxFut<'a, Result<Output, SshError>> {
        Box::pin(async move {
            let conn = self.connection().await?;
            let res = self
                .run_bounded(&conn, script, Input::None, None, Some(sink))
                .await;
            if let Err(SshError::Channel { .. }) = &res {
                *self.conn.lock().await = None;
            }
            res
        })
    }

    fn check_fresh(&self) -> BoxFut<'_, Result<(), SshError>> {
        Box::pin(async move {
            let timeout = self.limits.connect_timeout;
            let mut cmd = tokio::process::Command::new("ssh");
            cmd.args(["-o", "ControlMaster=no", "-o", "ControlPath=none"])
                .args(self.target.common_args(timeout))
                .arg("--")
                .arg(&self.target.address)
                .arg("true")
                .stdin(StdStdio::null())
                .stdout(StdStdio::null())
                .stderr(StdStdio::piped())
                .kill_on_drop(true);
            let run = cmd.output();
            match tokio::time::timeout(timeout + Duration::from_secs(5), run).await {
                Ok(Ok(out)) if out.status.success() => Ok(()),
                Ok(Ok(out)) => Err(SshError::Connect {
                    dest: self.dest.clone(),
                    reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                }),
                Ok(Err(e)) => Err(SshError::Connect {
                    dest: self.dest.clone(),
                    reason: e.to_string(),
                }),
                Err(_) => Err(SshError::Connect {
                    dest: self.dest.clone(),
                    reason: "timed out".into(),
                }),
            }
        })
    }

    fn notices(&self) -> Vec<String> {
        std::mem::take(&mut *self.notices.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn interrupt(&self) -> BoxFut<'_, Vec<String>> {
        Box::pin(async move {
            let pgids: Vec<u32> = {
                let mut running = self.running();
                let mut pgids: Vec<u32> = std::mem::take(&mut *running).into_values().collect();
                pgids.sort_unstable();
                pgids.dedup();
                pgids
            };
            if pgids.is_empty() {
                return Vec::new();
            }
            // Only over the master that is open: nothing ran on one not made.
            let Some(conn) = self.conn.lock().await.clone() else {
                return Vec::new();
            };
            let script = stop_script(&pgids, KILL_GRACE);
            match self
                .run(&conn, &script, Input::None, CommandKind::Normal)
                .await
            {
                Ok(out) => left_running(&out.stdout_str()),
                Err(_) => Vec::new(),
            }
        })
    }

    fn close(&self) -> BoxFut<'_, ()> {
        Box::pin(async move {
            let conn = self.conn.lock().await.take();
            if let Some(conn) = conn {
                match Arc::try_unwrap(conn) {
                    Ok(conn) => {
                        let _ = conn.session.close().await;
                    }
                    // A command still holds it (e.g. interrupted): ask the master to exit.
                    Err(_) => {
                        let _ = tokio::process::Command::new("ssh")
                            .arg("-S")
                            .arg(&self.ctl)
                            .args(["-O", "exit", "--", &self.target.address])
                            .stdin(StdStdio::null())
                            .stdout(StdStdio::null())
                            .stderr(StdStdio::null())
                            .status()
                            .await;
                    }
                }
            }
            let _ = std::fs::remove_file(&self.ctl);
            let _ = std::fs::remove_file(&self.log);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDED: &str =
        "Warning: Permanently added '[127.0.0.1]:42222' (ED25519) to the list of known hosts.\r\n";

    fn stamped(path: &Path) -> Stamped {
        Stamped {
            path: path.to_path_buf(),
            stamp: FileStamp::of(&std::fs::metadata(path).unwrap()),
        }
    }

    fn fed(s: &Stamped) -> (Vec<u8>, Result<(), SshError>) {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 4];
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let r = rt.block_on(feed_stamped(&mut out, s, &mut buf));
        (out, r)
    }

    #[test]
    fn a_stamped_file_ends_with_sent_only_while_it_is_the_one_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("asset");
        std::fs::write(&path, b"hashed bytes").unwrap();
        let s = stamped(&path);
        let (out, r) = fed(&s);
        r.unwrap();
        assert_eq!(out, b"hashed bytessent\n");
        // Same size, other bytes, written later: refused before a byte goes.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&path, b"other  bytes").unwrap();
        let (out, r) = fed(&s);
        assert!(matches!(r, Err(SshError::LocalChanged { .. })), "{r:?}");
        assert!(out.is_empty(), "{out:?}");
        // Replaced by another file of the same size: another inode.
        let s = stamped(&path);
        std::fs::write(dir.path().join("new"), b"hashed bytes").unwrap();
        std::fs::rename(dir.path().join("new"), &path).unwrap();
        let (out, r) = fed(&s);
        assert!(matches!(r, Err(SshError::LocalChanged { .. })), "{r:?}");
        assert!(!out.ends_with(b"sent\n"));
        // Shorter than it was: the stream stops without the line.
        let s = stamped(&path);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(5).unwrap();
        let (out, r) = fed(&s);
        assert!(matches!(r, Err(SshError::LocalChanged { .. })), "{r:?}");
        assert!(!out.ends_with(b"sent\n"));
    }

    #[test]
    fn a_newly_trusted_host_key_is_read_from_the_log() {
        assert_eq!(
            added_host_key(ADDED),
            Some(("[127.0.0.1]:42222".into(), "ED25519".into()))
        );
        assert_eq!(
            added_host_key(
                "Warning: Permanently added 'web-1,10.0.0.7' (ECDSA) to the list of known hosts.\n"
            ),
            Some(("web-1".into(), "ECDSA".into()))
        );
        assert_eq!(added_host_key("debug1: Connection established.\n"), None);
        assert_eq!(added_host_key(""), None);
    }

    #[test]
    fn the_fingerprint_comes_from_ssh_keygen() {
        let out = "# Host [127.0.0.1]:42222 found: line 1 \n[127.0.0.1]:42222 ED25519 SHA256:SgBRu5hbTiWxSLE6KhryQX7D9Se1qLrzBJCBOFoh1KI\n# Host [127.0.0.1]:42222 found: line 2 \n[127.0.0.1]:42222 RSA SHA256:otherRSAkeyfingerprint\n";
        assert_eq!(
            fingerprint(out, "ED25519").as_deref(),
            Some("SHA256:SgBRu5hbTiWxSLE6KhryQX7D9Se1qLrzBJCBOFoh1KI")
        );
        assert_eq!(
            fingerprint(out, "RSA").as_deref(),
            Some("SHA256:otherRSAkeyfingerprint")
        );
        assert_eq!(fingerprint(out, "ECDSA"), None, "ambiguous");
        assert_eq!(fingerprint("", "ED25519"), None);
    }

    #[test]
    fn every_command_tells_its_process_group_first() {
        assert_eq!(
            wrap("echo 'hi'", Some(Duration::from_secs(600)), false),
            r#"printf 'mesh-pgid %s\n' "$$" >&2; exec timeout -k 5 600 sh -c 'echo '\''hi'\'''"#
        );
        assert_eq!(
            wrap("true", Some(Duration::from_millis(10)), true),
            r#"sudo -n env MESH_SSH_CONNECTION="$SSH_CONNECTION" sh -c 'printf '\''mesh-pgid %s\n'\'' "$$" >&2; exec timeout -k 5 1 sh -c true'"#
        );
        // No deadline (a stream): `timeout 0` still leads the process group.
        assert_eq!(
            wrap("true", None, false),
            r#"printf 'mesh-pgid %s\n' "$$" >&2; exec timeout -k 5 0 sh -c true"#
        );
    }

    #[test]
    fn the_process_group_line_is_found_and_cut_from_stderr() {
        assert_eq!(find_pgid(b"mesh-pgid 4242\nboom\n"), Some((4242, 0..15)));
        // sudo may warn first.
        let warned = b"sudo: unable to resolve host x\nmesh-pgid 7\n";
        assert_eq!(find_pgid(warned), Some((7, 31..43)));
        assert_eq!(find_pgid(b"mesh-pgid 12"), None, "not a whole line yet");
        assert_eq!(find_pgid(b"mesh-pgid x\n"), None);
        assert_eq!(find_pgid(b""), None);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut seen = Vec::new();
        let mut input: &[u8] = b"mesh-pgid 99\nE: failed\nmesh-pgid 5\n";
        let rest = rt
            .block_on(read_stderr(&mut input, |p| seen.push(p)))
            .unwrap();
        assert_eq!(seen, [99]);
        assert_eq!(rest, b"E: failed\nmesh-pgid 5\n");
        // A command that never says it: its stderr as it is.
        let mut seen = Vec::new();
        let mut input: &[u8] = b"plain\n";
        let rest = rt
            .block_on(read_stderr(&mut input, |p| seen.push(p)))
            .unwrap();
        assert!(seen.is_empty());
        assert_eq!(rest, b"plain\n");
    }

    #[test]
    fn the_stop_script_terms_then_kills_and_leaves_package_installs() {
        let script = stop_script(&[10, 20], Duration::from_secs(3));
        assert!(script.starts_with("t=\nfor p in 10 20; do\n"), "{script}");
        assert!(
            script.contains("case $c in dpkg|apt|apt-get|aptitude|unattended-upgr) k=$c"),
            "{script}"
        );
        assert!(script.contains("[ $i -lt 30 ]"), "{script}");
        assert_eq!(
            left_running("left 10 dpkg\nkilled 20\nleft 30 apt-get\nleft 40 dpkg\n"),
            ["apt-get", "dpkg"]
        );
        assert!(left_running("killed 20\n").is_empty());
    }

    /// A process group of its own (`setsid`), reaped by a thread as soon
    /// as it ends (as sshd reaps a command); `exe` runs as `name`.
    fn group(dir: &Path, name: &str, exe: &str, args: &[&str]) -> u32 {
        let link = dir.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(exe, &link).unwrap();
        }
        let mut child = std::process::Command::new("setsid")
            .arg(&link)
            .args(args)
            .stdin(StdStdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        std::thread::spawn(move || child.wait());
        pid
    }

    fn alive(pgid: u32) -> bool {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("kill -0 -{pgid} 2>/dev/null"))
            .status()
            .unwrap()
            .success()
    }

    #[test]
    fn the_stop_script_stops_real_process_groups() {
        let dir = tempfile::tempdir().unwrap();
        let sleeper = group(dir.path(), "sleep", "/bin/sleep", &["47"]);
        let stubborn = group(
            dir.path(),
            "sh",
            "/bin/sh",
            // One process (the ignored TERM stays ignored across exec): no
            // orphan for an init that may be slow to reap.
            &["-c", "trap '' TERM; exec sleep 48"],
        );
        let install = group(dir.path(), "dpkg", "/bin/sleep", &["49"]);
        let gone = 999_999;
        std::thread::sleep(Duration::from_millis(200));
        let t0 = std::time::Instant::now();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(stop_script(
                &[sleeper, stubborn, install, gone],
                Duration::from_millis(600),
            ))
            .output()
            .unwrap();
        let elapsed = t0.elapsed();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{report}");
        assert_eq!(left_running(&report), ["dpkg"], "{report}");
        assert!(report.contains(&format!("left {install} dpkg")), "{report}");
        assert!(report.contains(&format!("killed {stubborn}")), "{report}");
        assert!(!report.contains(&format!("killed {sleeper}")), "{report}");
        assert!(
            elapsed >= Duration::from_millis(500) && elapsed < Duration::from_secs(3),
            "{elapsed:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
        assert!(!alive(sleeper) && !alive(stubborn));
        assert!(alive(install), "the package install was left running");
        let _ = std::process::Command::new("kill")
            .arg(install.to_string())
            .status();
    }

    #[test]
    fn the_known_hosts_file_is_the_first_ssh_lists() {
        let g = "hashknownhosts yes\nglobalknownhostsfile /etc/ssh/ssh_known_hosts\nuserknownhostsfile /root/.ssh/known_hosts /root/.ssh/known_hosts2\n";
        assert_eq!(
            user_known_hosts(g),
            Some(PathBuf::from("/root/.ssh/known_hosts"))
        );
        assert_eq!(user_known_hosts("user root\n"), None);
    }
}
