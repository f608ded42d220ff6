//! One module per command: its clap arguments (`Args`), its input checks and
//! its `run`. What every command that talks to hosts needs — the inventory,
//! the selected hosts, secrets, one SSH connection per host, the runner with
//! Ctrl-C handling — is the [`Session`] that `app.rs` hands it.

pub(crate) mod backup;
pub(crate) mod bench;
pub(crate) mod care;
pub(crate) mod completions;
pub(crate) mod deploy;
pub(crate) mod exec;
pub(crate) mod inventory;
pub(crate) mod logs;
pub(crate) mod nodes;
pub(crate) mod prune;
pub(crate) mod services;
pub(crate) mod services_up;
pub(crate) mod status;

use crate::cli::Global;
use crate::error::{Error, EXIT_INTERRUPTED};
use crate::inventory::{Host, Inventory};
use crate::log::HostLog;
use crate::phases::{HostCtx, Phase};
use crate::run::{run_rollout, Rollout, RunOptions};
use crate::secrets::Secrets;
use crate::ssh::mux::{SshLimits, SshTarget, SshTransport};
use crate::ssh::Transport;
use crate::template::{Source, VarSet};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A command's view of the fleet: set up once per run by `app.rs`.
pub struct Session {
    pub(crate) global: Global,
    pub(crate) inv: Inventory,
    /// The hosts `--limit` selects, in inventory order.
    pub(crate) hosts: Vec<Host>,
    pub(crate) secrets: Secrets,
    /// The command's name (the log directory is named after it).
    name: &'static str,
    control: ControlDir,
    limits: SshLimits,
    log_dir: Option<PathBuf>,
    /// One context (connection, log, variables) per host, made on first use.
    ctxs: BTreeMap<String, Arc<HostCtx>>,
}

impl Session {
    pub(crate) fn new(
        global: Global,
        inv: Inventory,
        hosts: Vec<Host>,
        name: &'static str,
    ) -> Result<Self, Error> {
        let secrets = Secrets::load(&inv.beside("secrets.env"))?;
        if let Some(w) = secrets.mode_warning() {
            eprintln!("warning: {w}");
        }
        let control = ControlDir::create()?;
        let limits = SshLimits {
            handshakes: Arc::new(tokio::sync::Semaphore::new(global.max_handshakes.max(1))),
            connect_timeout: Duration::from_secs(global.connect_timeout),
            control_dir: control.0.clone(),
            commands: crate::ssh::CommandTimeouts::new(global.command_timeout),
        };
        Ok(Session {
            global,
            inv,
            hosts,
            secrets,
            name,
            control,
            limits,
            log_dir: None,
            ctxs: BTreeMap::new(),
        })
    }

    /// A cluster secret from the environment or `secrets.env`, else a new
    /// one saved there (kept in memory only on a dry run). Call it before
    /// the first [`Session::contexts`]: host variables include the secrets.
    pub(crate) fn ensure_secret(&mut self, key: &str) -> Result<(), Error> {
        if self.secrets.get(key).is_some() || std::env::var_os(key).is_some() {
            return Ok(());
        }
        let value =
            crate::secrets::random_hex(24).map_err(|e| Error::local("reading /dev/urandom", e))?;
        if self.global.dry_run {
            self.secrets.set_in_memory(key, &value);
        } else {
            self.secrets.set(key, &value)?;
        }
        Ok(())
    }

    /// `secrets.env` beside the inventory.
    pub(crate) fn secrets_path(&self) -> PathBuf {
        self.inv.beside("secrets.env")
    }

    /// The contexts of `hosts`, made once per host (the same connection
    /// serves every later call).
    pub(crate) fn contexts(&mut self, hosts: &[Host]) -> Result<Vec<Arc<HostCtx>>, Error> {
        hosts.iter().map(|h| self.context(h)).collect()
    }

    /// The contexts of the hosts `--limit` selects.
    pub(crate) fn selected(&mut self) -> Result<Vec<Arc<HostCtx>>, Error> {
        let hosts = self.hosts.clone();
        self.contexts(&hosts)
    }

    fn context(&mut self, host: &Host) -> Result<Arc<HostCtx>, Error> {
        if let Some(ctx) = self.ctxs.get(&host.name) {
            return Ok(ctx.clone());
        }
        let log_dir = match &self.log_dir {
            Some(dir) => dir.clone(),
            None => {
                // Reads (`status` from cron every few minutes) rotate their
                // own logs, never those of the runs that changed hosts.
                let base = match self.name {
                    "status" | "logs" => ".mesh/logs-read",
                    _ => ".mesh/logs",
                };
                let logs = self.inv.beside(base);
                let dir = crate::log::run_dir(&logs, self.name).map_err(|e| {
                    Error::local(
                        format!("creating the log directory under {}", logs.display()),
                        e,
                    )
                })?;
                self.log_dir = Some(dir.clone());
                dir
            }
        };
        let vars = host_vars(&self.inv, host, &self.secrets);
        let log = HostLog::create(&log_dir, &host.name, vars.redactor())
            .map_err(|e| Error::local(format!("creating log {}", log_dir.display()), e))?;
        let slot = self.ctxs.len();
        let conn: Arc<dyn Transport> = Arc::new(SshTransport::new(
            ssh_target(host),
            self.limits.clone(),
            slot,
        ));
        let ctx = Arc::new(HostCtx::new(
            host.clone(),
            conn,
            log,
            vars,
            self.global.dry_run,
            self.global.checksum,
        ));
        self.ctxs.insert(host.name.clone(), ctx.clone());
        Ok(ctx)
    }

    /// The bastions the routes of `hosts` go to, by name, each on its own
    /// context (shared with a selected host that is a bastion).
    pub(crate) fn bastions_for(
        &mut self,
        hosts: &[Host],
    ) -> Result<BTreeMap<String, Arc<HostCtx>>, Error> {
        let refs: Vec<&Host> = hosts.iter().collect();
        let bastions: Vec<Host> = crate::phases::services::bastions_for(&self.inv, &refs)
            .into_iter()
            .cloned()
            .collect();
        let mut out = BTreeMap::new();
        for b in &bastions {
            out.insert(b.name.clone(), self.context(b)?);
        }
        Ok(out)
    }

    /// Say a run's closing line, if it has one.
    pub(crate) fn say(&self, line: Option<String>) {
        if let Some(line) = line {
            (self.progress())(&line);
        }
    }

    /// A progress line on stderr (none under `--json`).
    pub(crate) fn progress(&self) -> impl Fn(&str) {
        let quiet = self.global.json;
        move |line: &str| {
            if !quiet {
                eprintln!("{line}");
            }
        }
    }

    /// Run `phase` on `ctxs` (batch by batch as `rollout` says, all at once
    /// without one): `--only`/`--skip` applied, every step's input checked
    /// for every host first, then progress, per-host summary and exit code.
    pub(crate) async fn run_phase(
        &self,
        phase: Phase,
        ctxs: Vec<Arc<HostCtx>>,
        rollout: Option<Rollout>,
    ) -> Result<u8, Error> {
        let phase = phase.select(&self.global.only, &self.global.skip)?;
        phase.check(&ctxs)?;
        let opts = RunOptions {
            parallel: self.global.parallel,
            progress: self.global.progress,
            json: self.global.json,
            verbose: self.global.verbose,
            dry_run: self.global.dry_run,
        };
        let rollout = rollout.unwrap_or_else(|| Rollout::all(ctxs.len()));
        let summary = self
            .until_interrupted(run_rollout(Arc::new(phase), ctxs, &opts, &rollout))
            .await;
        Ok(summary.map_or(EXIT_INTERRUPTED, |s| s.exit_code()))
    }

    /// Run `work` until it ends or Ctrl-C. After Ctrl-C, `work` is dropped
    /// (which aborts its host tasks), the commands it left running on the
    /// hosts are stopped, connections are closed, and `None` comes back
    /// (the caller exits 130).
    pub(crate) async fn until_interrupted<T>(
        &self,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        tokio::select! {
            done = work => Some(done),
            _ = tokio::signal::ctrl_c() => {
                self.stop_everything().await;
                None
            }
        }
    }

    /// After Ctrl-C: stop the remote commands, then leave no ssh behind;
    /// hosts keep whatever finished.
    async fn stop_everything(&self) {
        let grace = crate::ssh::mux::KILL_GRACE;
        eprintln!("\ninterrupted: stopping the commands still running on the hosts (TERM, KILL after {} s; a package install is left to finish) and closing connections (steps already applied stay applied; Ctrl-C again to quit at once)", grace.as_secs());
        tokio::spawn(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(i32::from(EXIT_INTERRUPTED));
            }
        });
        let conns: Vec<(String, Arc<dyn Transport>)> = self
            .ctxs
            .values()
            .map(|c| (c.host.name.clone(), c.conn.clone()))
            .collect();
        let stopping: Vec<_> = conns
            .iter()
            .map(|(host, c)| {
                let (host, c) = (host.clone(), c.clone());
                tokio::spawn(async move { (host, c.interrupt().await) })
            })
            .collect();
        let mut left: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let _ = tokio::time::timeout(grace + Duration::from_secs(2), async {
            for s in stopping {
                if let Ok((host, tools)) = s.await {
                    for tool in tools {
                        left.entry(tool).or_default().push(host.clone());
                    }
                }
            }
        })
        .await;
        if !left.is_empty() {
            let what: Vec<String> = left
                .iter()
                .map(|(tool, hosts)| format!("{tool} on {}", hosts.join(", ")))
                .collect();
            eprintln!("left running to finish: {}", what.join("; "));
        }
        let closing: Vec<_> = conns
            .iter()
            .map(|(_, c)| {
                let c = c.clone();
                tokio::spawn(async move { c.close().await })
            })
            .collect();
        let _ = tokio::time::timeout(Duration::from_millis(1500), async {
            for c in closing {
                let _ = c.await;
            }
        })
        .await;
        self.control.stop_masters().await;
    }

    /// Close every connection the run opened (closing twice is harmless).
    pub(crate) async fn close(&self) {
        for c in self.ctxs.values() {
            c.conn.close().await;
        }
    }
}

/// A private, short directory for this run's control sockets, removed when
/// dropped, so every exit path (bad input found late, errors, Ctrl-C) cleans up.
struct ControlDir(PathBuf);

impl ControlDir {
    /// `$TMPDIR/mesh-<pid>-<random>`: a fresh name each run, so a directory a
    /// killed run left behind (or a recycled pid) never blocks the next one.
    fn create() -> Result<Self, Error> {
        use std::os::unix::fs::DirBuilderExt;
        let mut last = None;
        for _ in 0..8 {
            let suffix = crate::secrets::random_hex(4)
                .map_err(|e| Error::local("reading /dev/urandom", e))?;
            let dir = std::env::temp_dir().join(format!("mesh-{}-{suffix}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(Self(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some((dir, e)),
                Err(e) => {
                    return Err(Error::local(
                        format!("creating {} (is TMPDIR writable?)", dir.display()),
                        e,
                    ))
                }
            }
        }
        let (dir, e) = last.expect("the loop ran");
        Err(Error::local(
            format!(
                "creating {} (clean stale mesh-* directories in TMPDIR)",
                dir.display()
            ),
            e,
        ))
    }

    /// Ask every master whose socket is still in the directory to exit (one
    /// still logging in when its task was aborted included).
    async fn stop_masters(&self) {
        let Ok(entries) = std::fs::read_dir(&self.0) else {
            return;
        };
        let stops: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_none())
            .map(|sock| {
                tokio::spawn(async move {
                    let _ = tokio::process::Command::new("ssh")
                        .arg("-S")
                        .arg(&sock)
                        .args(["-O", "exit", "mesh-master"])
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .kill_on_drop(true)
                        .status()
                        .await;
                })
            })
            .collect();
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            for s in stops {
                let _ = s.await;
            }
        })
        .await;
    }
}

impl Drop for ControlDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ssh_target(host: &Host) -> SshTarget {
    SshTarget {
        address: host.address.clone(),
        user: host.ssh.user.clone(),
        port: host.ssh.port,
        identity_file: host.ssh.identity_file.clone(),
        options: host.ssh.options.clone(),
    }
}

/// A host's template variables: computed facts, host vars, group vars,
/// top-level vars, environment, secrets file; the first source wins.
pub(crate) fn host_vars(inv: &Inventory, host: &Host, secrets: &Secrets) -> VarSet {
    let mut vars = VarSet::new();
    vars.add("HOSTNAME", &host.name, Source::Fact);
    vars.add("ADDRESS", &host.address, Source::Fact);
    vars.add(
        "OVERLAY_IP",
        overlay_ip(inv, host).to_string(),
        Source::Fact,
    );
    if let Some(zone) = &host.zone {
        vars.add("ZONE", zone, Source::Fact);
    }
    if let Some(ip) = host.public_ip {
        vars.add("PUBLIC_IP", ip.to_string(), Source::Fact);
    }
    // Garage's S3 API on the host's own overlay address.
    vars.add(
        "GARAGE_ADDR",
        format!("{}:3900", overlay_ip(inv, host)),
        Source::Fact,
    );
    if let Some(bastion) = inv.bastion_of(host) {
        let ip = overlay_ip(inv, bastion).to_string();
        vars.add("TRAEFIK_IP", &ip, Source::Fact);
        vars.add("REDIS_IP", ip, Source::Fact);
    }
    let bastion_ips: Vec<String> = inv
        .bastions_of(host)
        .iter()
        .map(|b| overlay_ip(inv, b).to_string())
        .collect();
    if !bastion_ips.is_empty() {
        vars.add("TRAEFIK_IPS", bastion_ips.join(","), Source::Fact);
    }
    for (source, map) in inv.var_layers(host) {
        vars.extend(map, source);
    }
    vars.add_env();
    secrets.add_to(&mut vars);
    vars
}

/// A host's overlay IP: the inventory's `overlay_ip`, else what wesher
/// derives from its name inside `overlay.net` (validated by the inventory).
pub(crate) fn overlay_ip(inv: &Inventory, host: &Host) -> std::net::Ipv4Addr {
    if let Some(ip) = host.overlay_ip {
        return ip;
    }
    let net = inv
        .overlay
        .net
        .as_deref()
        .unwrap_or(crate::overlay::OverlayNet::DEFAULT)
        .parse()
        .expect("overlay.net is checked when the inventory is loaded");
    crate::overlay::overlay_ip(&net, &host.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const INV: &str = "groups:
  g:
    hosts:
      a: { address: 10.0.0.1, zone: z1 }
      c: { address: c.example.org, zone: z3, overlay_ip: 10.9.9.9 }
";

    #[test]
    fn overlay_ip_is_derived_unless_set() {
        let inv = Inventory::parse(Path::new("inv.yml"), INV).unwrap();
        let c = inv.host("c").unwrap();
        assert_eq!(overlay_ip(&inv, c).to_string(), "10.9.9.9");
        let a = inv.host("a").unwrap();
        assert_eq!(
            overlay_ip(&inv, a),
            crate::overlay::overlay_ip(&"10.0.0.0/8".parse().unwrap(), "a")
        );
    }

    #[test]
    fn host_vars_put_facts_first_and_redact_secrets() {
        let inv = Inventory::parse(Path::new("inv.yml"), INV).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.env");
        std::fs::write(&path, "REDIS_PWD=hunter2-very-secret\n").unwrap();
        let secrets = Secrets::load(&path).unwrap();
        let vars = host_vars(&inv, inv.host("a").unwrap(), &secrets);
        assert_eq!(vars.get("HOSTNAME"), Some("a"));
        assert_eq!(vars.get("ZONE"), Some("z1"));
        assert!(vars.get("OVERLAY_IP").unwrap().starts_with("10."));
        assert_eq!(vars.redact("pw=hunter2-very-secret"), "pw=***");
    }
}
