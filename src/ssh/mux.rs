//! The real transport: one OpenSSH ControlMaster per host, opened lazily and
//! reused by every command through the `openssh` crate's native mux client
//! (a command on an open master costs a few milliseconds).
//!
//! mesh starts the master itself with the system `ssh`, so `~/.ssh/config`,
//! ssh-agent, ProxyJump and known_hosts behave as operators expect, and the
//! inventory's `ssh.options` pass straight through as `-o Key=Value`.

use super::{BoxFut, CommandKind, CommandTimeouts, Input, Output, SshError, Transport};
use crate::quote::quote;
use openssh::{Session, Stdio};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio as StdStdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
        }
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
        let started = std::time::Instant::now();
        let local = limit + Duration::from_secs(15);
        match tokio::time::timeout(local, self.run_limited(conn, script, input, limit)).await {
            Ok(Ok(out)) if matches!(out.code, Some(124 | 137)) && started.elapsed() >= limit => {
                Err(SshError::Timeout {
                    dest: self.dest.clone(),
                    seconds: limit.as_secs(),
                })
            }
            Ok(res) => res,
            Err(_) => Err(SshError::Timeout {
                dest: self.dest.clone(),
                seconds: limit.as_secs(),
            }),
        }
    }

    async fn run_limited(
        &self,
        conn: &Conn,
        script: &str,
        input: Input,
        limit: Duration,
    ) -> Result<Output, SshError> {
        let deadline = format!("timeout -k 5 {}", limit.as_secs().max(1));
        let wrapped = if conn.sudo {
            // sudo resets the environment; keep SSH_CONNECTION for the facts probe.
            format!(
                "sudo -n env MESH_SSH_CONNECTION=\"$SSH_CONNECTION\" {deadline} sh -c {}",
                quote(script)
            )
        } else {
            format!("{deadline} sh -c {}", quote(script))
        };
        let channel_err = |e: openssh::Error| SshError::Channel {
            dest: self.dest.clone(),
            reason: e.to_string(),
        };
        let mut command = conn.session.raw_command(wrapped);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let out = match input {
            Input::None => {
                command.stdin(Stdio::null());
                command.output().await.map_err(channel_err)?
            }
            Input::File(path) => {
                // Hand the file itself to ssh as stdin: no copy through mesh.
                let file = std::fs::File::open(&path)
                    .map_err(|source| SshError::LocalFile { path, source })?;
                command.stdin(Stdio::from(std::os::fd::OwnedFd::from(file)));
                command.output().await.map_err(channel_err)?
            }
            input => {
                command.stdin(Stdio::piped());
                let mut child = command.spawn().await.map_err(channel_err)?;
                let mut stdin = child.stdin().take().expect("piped stdin");
                // Feed stdin while the command runs, so neither side blocks.
                let feed = async move {
                    // A broken pipe shows up as the remote command's failure.
                    let fed = feed(&mut stdin, input).await;
                    let _ = stdin.shutdown().await;
                    drop(stdin);
                    match fed {
                        Err(e @ SshError::LocalFile { .. }) => Err(e),
                        _ => Ok(()),
                    }
                };
                let (fed, out) = tokio::join!(feed, child.wait_with_output());
                fed?;
                out.map_err(channel_err)?
            }
        };
        Ok(Output {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
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
    fn dest(&self) -> &str {
        &self.dest
    }

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
    fn the_known_hosts_file_is_the_first_ssh_lists() {
        let g = "hashknownhosts yes\nglobalknownhostsfile /etc/ssh/ssh_known_hosts\nuserknownhostsfile /root/.ssh/known_hosts /root/.ssh/known_hosts2\n";
        assert_eq!(
            user_known_hosts(g),
            Some(PathBuf::from("/root/.ssh/known_hosts"))
        );
        assert_eq!(user_known_hosts("user root\n"), None);
    }
}
