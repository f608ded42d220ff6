//! Glue between the command line and the phases: load the inventory and
//! secrets, select hosts, build each host's variables and connection, check
//! every input before any host is touched, then hand the phase to the runner.

use crate::cli::{Cli, Command};
use crate::inventory::{Host, Inventory, InventoryError};
use crate::log::HostLog;
use crate::phases::{bench, care, deploy, exec, nodes, services, HostCtx, Phase};
use crate::run::{run_rollout, RunOptions};
use crate::runlock::{RunLock, RunLockError};
use crate::secrets::{Secrets, SecretsError};
use crate::ssh::mux::{SshLimits, SshTarget, SshTransport};
use crate::ssh::Transport;
use crate::template::{Source, VarSet};
use std::net::{IpAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Exit code for bad input: nothing was touched.
pub const EXIT_BAD_INPUT: u8 = 2;

/// Exit code after Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Errors before any host is touched; all map to exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Services(#[from] services::ServicesError),
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    RunLock(#[from] RunLockError),
    #[error("{what}")]
    Local {
        what: String,
        source: std::io::Error,
    },
}

/// Run the parsed command line; returns the process exit code.
pub fn main(cli: Cli) -> Result<u8, AppError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| AppError::Local {
            what: "starting the async runtime".into(),
            source,
        })?;
    let result = runtime.block_on(run(cli));
    // Work still in the blocking pool (a download after Ctrl-C) is not waited for.
    runtime.shutdown_background();
    result
}

async fn run(cli: Cli) -> Result<u8, AppError> {
    let inv = Inventory::load(&cli.inventory)?;
    for warning in inv.host_key_warnings() {
        eprintln!("warning: {warning}");
    }
    let mut hosts = inv.select(&cli.limit)?;
    if let Command::Care { group, .. } = &cli.command {
        // The hosts both --group and --limit select.
        let matching = inv.select(std::slice::from_ref(group))?;
        hosts.retain(|h| matching.iter().any(|m| m.name == h.name));
    }
    let secrets_path = inv.beside("secrets.env");
    if let Command::Inventory = &cli.command {
        print_inventory(&inv, &hosts, cli.json);
        return Ok(0);
    }
    // Checked before anything else: a phase that cannot run touches nothing.
    let early = match &cli.command {
        Command::Nodes {
            first_ip,
            docker_mirror,
            update_lock,
        } => {
            let first = match first_ip {
                Some(ip) => Some(first_node(&inv, ip)?.clone()),
                None => None,
            };
            if first.is_none() {
                if let Some(step) = nodes::NEEDS_FIRST
                    .iter()
                    .find(|s| Phase::selects(s, &cli.only, &cli.skip))
                {
                    return Err(AppError::Input(format!(
                        "step {step} bootstraps from the first node. Fix: pass --first-ip <address of that host>, or --only basic --only docker"
                    )));
                }
            }
            let opts = nodes::NodesOptions {
                docker_mirror: docker_mirror.clone(),
                update_lock: *update_lock,
                dry_run: cli.dry_run,
                cache: crate::mirror::cache_root(),
                first,
                assets: cli.assets.clone(),
                secrets_path: secrets_path.clone(),
            };
            Some(nodes::phase(&inv, &opts))
        }
        Command::Exec { command } => Some(exec::phase(command)),
        Command::Bench { asset } => Some(bench::phase(asset)),
        _ => None,
    };

    // Runs that change hosts read-modify-write secrets.env and docker.lock:
    // one at a time per inventory.
    let _run_lock = match &cli.command {
        Command::Exec { .. } | Command::Bench { .. } => None,
        _ if cli.dry_run => None,
        command => Some(RunLock::acquire(
            &inv.beside(".mesh/run.lock"),
            Duration::from_secs(cli.lock_wait),
            command_name(command),
        )?),
    };
    let mut secrets = Secrets::load(&secrets_path)?;
    if let Some(w) = secrets.mode_warning() {
        eprintln!("warning: {w}");
    }
    let serving = matches!(
        cli.command,
        Command::Services { .. } | Command::ServicesUp | Command::Deploy { .. }
    );
    if serving && services::has_bastion(&inv) {
        for key in [services::REDIS_PWD, services::CROWDSEC_BOUNCER_KEY] {
            ensure_secret(&mut secrets, key, cli.dry_run)?;
        }
    }
    let control_dir = ControlDir::create()?;
    let limits = SshLimits {
        handshakes: Arc::new(tokio::sync::Semaphore::new(cli.max_handshakes.max(1))),
        connect_timeout: Duration::from_secs(cli.connect_timeout),
        control_dir: control_dir.0.clone(),
        commands: crate::ssh::CommandTimeouts::new(cli.command_timeout),
    };
    let logs = inv.beside(".mesh/logs");
    let name = early
        .as_ref()
        .map_or_else(|| command_name(&cli.command), |p| p.name);
    let log_dir = crate::log::run_dir(&logs, name).map_err(|source| AppError::Local {
        what: format!("creating the log directory under {}", logs.display()),
        source,
    })?;
    let make_ctx = |host: &Host, slot: usize| -> Result<Arc<HostCtx>, AppError> {
        let vars = host_vars(&inv, host, &secrets);
        let log = HostLog::create(&log_dir, &host.name, vars.redactor()).map_err(|source| {
            AppError::Local {
                what: format!("creating log {}", log_dir.display()),
                source,
            }
        })?;
        let conn: Arc<dyn Transport> =
            Arc::new(SshTransport::new(ssh_target(host), limits.clone(), slot));
        Ok(Arc::new(HostCtx::new(
            host.clone(),
            conn,
            log,
            vars,
            cli.dry_run,
            cli.checksum,
        )))
    };
    let mut ctxs = Vec::with_capacity(hosts.len());
    for (slot, host) in hosts.iter().enumerate() {
        ctxs.push(make_ctx(host, slot)?);
    }
    // Bastions the routes go to, reached over their own connection when
    // they are not among the selected hosts.
    let mut extra = Vec::new();
    let mut bastions = std::collections::BTreeMap::new();
    if serving || matches!(cli.command, Command::Care { .. }) {
        for b in services::bastions_for(&inv, &hosts) {
            let ctx = match ctxs.iter().find(|c| c.host.name == b.name) {
                Some(c) => c.clone(),
                None => {
                    let c = make_ctx(b, ctxs.len() + extra.len())?;
                    extra.push(c.clone());
                    c
                }
            };
            bastions.insert(b.name.clone(), ctx);
        }
    }
    let quiet = cli.json;
    let progress = move |line: &str| {
        if !quiet {
            eprintln!("{line}");
        }
    };
    let mut rollout = None;
    let phase = match (early, &cli.command) {
        (Some(phase), _) => phase,
        (
            None,
            Command::Services {
                dockerfiles,
                build_on_host,
                prune,
            },
        ) => {
            let opts = services::ServicesOptions {
                dockerfiles: dockerfiles.clone(),
                build_on_host: *build_on_host,
                dry_run: cli.dry_run,
                cache: crate::mirror::cache_root(),
                assets: cli.assets.clone(),
                only: None,
                prune: *prune,
            };
            let prepared = services::prepare(&opts, &inv, &ctxs, &progress).await?;
            prepared.print(cli.json);
            services::phase(prepared, &opts, &inv, bastions)
        }
        (None, Command::ServicesUp) => services::up_phase(&inv, bastions),
        (
            None,
            Command::Care {
                batch,
                reboot,
                reboot_wait,
                dockerfiles,
                allow_downtime,
                ..
            },
        ) => {
            let input = |e: care::InputError| AppError::Input(e.to_string());
            let (hooks, note) = care::hooks(dockerfiles).map_err(input)?;
            if let Some(note) = note {
                eprintln!("note: {note}");
            }
            let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
            let replicas =
                care::Replicas::plan(dockerfiles, &inv, &names, |h| host_vars(&inv, h, &secrets))
                    .map_err(input)?;
            replicas
                .check_api(inv.ingress.publisher, &hosts)
                .map_err(input)?;
            let refs: Vec<&Host> = ctxs.iter().map(|c| &c.host).collect();
            rollout = Some(crate::run::Rollout {
                batches: replicas.batches(&refs, *batch),
                stop_on_failure: true,
                undo: None,
            });
            care::phase(care::Care {
                hooks,
                reboot: *reboot,
                reboot_wait: *reboot_wait,
                allow_downtime: *allow_downtime,
                replicas: Arc::new(replicas),
                bastions,
                publisher: inv.ingress.publisher,
            })
        }
        (
            None,
            Command::Deploy {
                service,
                dockerfiles,
                batch,
                force,
                rollback,
                no_rollback,
                drain,
                break_lock,
            },
        ) => {
            let opts = services::ServicesOptions {
                dockerfiles: dockerfiles.clone(),
                // A rollback builds nothing: the previous images are on the hosts.
                build_on_host: *rollback,
                dry_run: cli.dry_run,
                cache: crate::mirror::cache_root(),
                assets: cli.assets.clone(),
                only: Some(service.clone()),
                prune: false,
            };
            let prepared = services::prepare(&opts, &inv, &ctxs, &progress).await?;
            if !rollback {
                prepared.print(cli.json);
            }
            let services::Parts {
                plans,
                images,
                traefik_api,
            } = prepared.into_parts();
            let deploy = deploy::Deploy::new(
                deploy::DeployOptions {
                    service: service.clone(),
                    force: *force,
                    rollback: *rollback,
                    drain: *drain,
                    lock_wait: cli.lock_wait,
                    break_lock: *break_lock,
                    audit: inv.beside(".mesh/deploy.log"),
                    publisher: inv.ingress.publisher,
                    traefik_api,
                },
                plans,
                images,
                bastions,
            );
            if deploy.needs_traefik_api() {
                return Err(AppError::Input(format!(
                    "{}: the traefik service's traefik.yml has no `api:` section, so mesh cannot confirm on the bastions that {service} was switched. Fix: add `api: {{ insecure: true }}` (served on the traefik entry point, 127.0.0.1:8080 by default), or set ingress.traefik_api: http://HOST:PORT in the inventory",
                    dockerfiles.join("traefik").display()
                )));
            }
            // Only the hosts that run the service, in batches.
            let targets = deploy.hosts();
            ctxs.retain(|c| targets.contains(&c.host.name));
            rollout = Some(crate::run::Rollout {
                batches: crate::run::plan_batches(ctxs.len(), batch.of(ctxs.len()), None),
                stop_on_failure: true,
                undo: (!no_rollback && !rollback)
                    .then(|| Arc::new(deploy.undo()) as Arc<dyn crate::phases::Step>),
            });
            deploy.phase()
        }
        (None, _) => unreachable!("every other command has its phase above"),
    };
    let phase = phase
        .select(&cli.only, &cli.skip)
        .map_err(AppError::Input)?;
    check_inputs(&phase, &ctxs)?;

    let opts = RunOptions {
        parallel: cli.parallel,
        progress: cli.progress,
        json: cli.json,
        verbose: cli.verbose,
        dry_run: cli.dry_run,
    };
    let conns: Vec<(String, Arc<dyn Transport>)> = ctxs
        .iter()
        .chain(&extra)
        .map(|c| (c.host.name.clone(), c.conn.clone()))
        .collect();
    let rollout = rollout.unwrap_or_else(|| crate::run::Rollout::all(ctxs.len()));
    let code = tokio::select! {
        summary = run_rollout(Arc::new(phase), ctxs, &opts, &rollout) => summary.exit_code(),
        _ = tokio::signal::ctrl_c() => {
            // The run is dropped here, which aborts its host tasks. Stop the
            // commands they left running on the hosts, then leave no ssh
            // masters behind; hosts keep whatever finished.
            let grace = crate::ssh::mux::KILL_GRACE;
            eprintln!("\ninterrupted: stopping the commands still running on the hosts (TERM, KILL after {} s; a package install is left to finish) and closing connections (steps already applied stay applied; Ctrl-C again to quit at once)", grace.as_secs());
            tokio::spawn(async {
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(i32::from(EXIT_INTERRUPTED));
                }
            });
            let stopping: Vec<_> = conns
                .iter()
                .map(|(host, c)| {
                    let (host, c) = (host.clone(), c.clone());
                    tokio::spawn(async move { (host, c.interrupt().await) })
                })
                .collect();
            let mut left: std::collections::BTreeMap<String, Vec<String>> = Default::default();
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
            control_dir.stop_masters().await;
            EXIT_INTERRUPTED
        }
    };
    for c in &extra {
        c.conn.close().await;
    }
    drop(control_dir);
    Ok(code)
}

/// The log directory's name for commands whose phase is built later.
fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Services { .. } => "services",
        Command::ServicesUp => "services-up",
        Command::Deploy { .. } => "deploy",
        Command::Care { .. } => "care",
        Command::Nodes { .. } => "nodes",
        Command::Exec { .. } => "exec",
        Command::Inventory => "inventory",
        Command::Bench { .. } => "bench",
    }
}

/// A cluster secret from the environment or `secrets.env`, else a new one
/// saved there (kept in memory only on a dry run).
fn ensure_secret(secrets: &mut Secrets, key: &str, dry_run: bool) -> Result<(), AppError> {
    if secrets.get(key).is_some() || std::env::var_os(key).is_some() {
        return Ok(());
    }
    let value = crate::secrets::random_hex(24).map_err(|source| AppError::Local {
        what: "reading /dev/urandom".into(),
        source,
    })?;
    if dry_run {
        secrets.set_in_memory(key, &value);
        return Ok(());
    }
    secrets.set(key, &value)?;
    Ok(())
}

/// Every step's checks for every host, all problems at once.
fn check_inputs(phase: &Phase, ctxs: &[Arc<HostCtx>]) -> Result<(), AppError> {
    let mut problems = Vec::new();
    for ctx in ctxs {
        // A step split into stages (first node, then the rest) is checked
        // once per host: by the stage that runs on it.
        for step in phase.host_steps().filter(|step| step.wants(ctx)) {
            if let Err(e) = step.check(ctx) {
                problems.push(format!("host {} step {}: {e}", ctx.host.name, step.name()));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(AppError::Input(problems.join("\n")))
    }
}

/// A private, short directory for this run's control sockets, removed when
/// dropped, so every exit path (bad input found late, errors, Ctrl-C) cleans up.
struct ControlDir(PathBuf);

impl ControlDir {
    /// `$TMPDIR/mesh-<pid>-<random>`: a fresh name each run, so a directory a
    /// killed run left behind (or a recycled pid) never blocks the next one.
    fn create() -> Result<Self, AppError> {
        use std::os::unix::fs::DirBuilderExt;
        let mut last = None;
        for _ in 0..8 {
            let suffix = crate::secrets::random_hex(4).map_err(|source| AppError::Local {
                what: "reading /dev/urandom".into(),
                source,
            })?;
            let dir = std::env::temp_dir().join(format!("mesh-{}-{suffix}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(Self(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some((dir, e)),
                Err(source) => {
                    return Err(AppError::Local {
                        what: format!("creating {} (is TMPDIR writable?)", dir.display()),
                        source,
                    })
                }
            }
        }
        let (dir, source) = last.expect("the loop ran");
        Err(AppError::Local {
            what: format!(
                "creating {} (clean stale mesh-* directories in TMPDIR)",
                dir.display()
            ),
            source,
        })
    }
}

impl ControlDir {
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

pub fn ssh_target(host: &Host) -> SshTarget {
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
pub fn host_vars(inv: &Inventory, host: &Host, secrets: &Secrets) -> VarSet {
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
pub fn overlay_ip(inv: &Inventory, host: &Host) -> std::net::Ipv4Addr {
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

/// The host `--first-ip` names: by address, public_ip, or resolved public_dns.
pub fn first_node<'a>(inv: &'a Inventory, ip: &str) -> Result<&'a Host, AppError> {
    let wanted: Option<IpAddr> = ip.parse().ok();
    // Only an IP can match public_ip or a resolved public_dns: no lookups otherwise.
    let resolves_to = |dns: &str, ip: IpAddr| {
        (dns, 0)
            .to_socket_addrs()
            .is_ok_and(|mut addrs| addrs.any(|a| a.ip() == ip))
    };
    let found = inv.hosts.iter().find(|h| {
        h.address == ip
            || wanted.is_some_and(|w| {
                h.public_ip == Some(w)
                    || h.public_dns
                        .as_deref()
                        .is_some_and(|dns| resolves_to(dns, w))
            })
    });
    found.ok_or_else(|| {
        let candidates: Vec<String> = inv
            .hosts
            .iter()
            .map(|h| {
                let mut c = format!("{} ({}", h.name, h.address);
                if let Some(p) = h.public_ip {
                    c.push_str(&format!(", public_ip {p}"));
                }
                if let Some(d) = &h.public_dns {
                    c.push_str(&format!(", public_dns {d}"));
                }
                c.push(')');
                c
            })
            .collect();
        AppError::Input(format!(
            "--first-ip {ip} matches no host's address, public_ip or public_dns. Fix: use one of: {}",
            candidates.join("; ")
        ))
    })
}

fn print_inventory(inv: &Inventory, hosts: &[&Host], json: bool) {
    let rows: Vec<serde_json::Value> = hosts
        .iter()
        .map(|h| {
            let mut vars = serde_json::Map::new();
            for (_, layer) in inv.var_layers(h) {
                for (k, v) in layer {
                    let shown = if crate::template::looks_secret(k) {
                        "***".to_string()
                    } else {
                        v.clone()
                    };
                    vars.entry(k.clone()).or_insert(shown.into());
                }
            }
            serde_json::json!({
                "name": h.name,
                "address": h.address,
                "groups": h.groups,
                "ssh": {
                    "user": h.ssh.user,
                    "port": h.ssh.port,
                    "identity_file": h.ssh.identity_file,
                    "options": h.ssh.options,
                },
                "arch": h.arch.map(|a| a.to_string()),
                "zone": h.zone,
                "behind_nat": h.behind_nat,
                "public_ip": h.public_ip,
                "public_dns": h.public_dns,
                "overlay_ip": overlay_ip(inv, h),
                "services": h.services,
                "traefik_host": h.traefik_host,
                "vars": vars,
            })
        })
        .collect();
    if json {
        for r in rows {
            println!("{r}");
        }
        return;
    }
    println!(
        "inventory {} ({} hosts selected)",
        inv.path.display(),
        hosts.len()
    );
    for (h, r) in hosts.iter().zip(&rows) {
        println!("{}:", h.name);
        if let Some(obj) = r.as_object() {
            for (k, v) in obj {
                let empty = v.is_null()
                    || v.as_array().is_some_and(|a| a.is_empty())
                    || v.as_object().is_some_and(|o| o.is_empty())
                    || k == "name";
                if !empty {
                    println!("  {k}: {v}");
                }
            }
        }
    }
    println!("groups:");
    for g in &inv.groups {
        println!("  {}: {}", g.name, g.hosts.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const INV: &str = "groups:
  g:
    hosts:
      a: { address: 10.0.0.1, zone: z1 }
      b: { address: 192.168.1.5, zone: z2, behind_nat: true, public_ip: 198.51.100.9 }
      c: { address: c.example.org, zone: z3, overlay_ip: 10.9.9.9 }
";

    fn inv() -> Inventory {
        Inventory::parse(Path::new("inv.yml"), INV).unwrap()
    }

    #[test]
    fn first_ip_matches_address_or_public_ip() {
        let inv = inv();
        assert_eq!(first_node(&inv, "10.0.0.1").unwrap().name, "a");
        assert_eq!(first_node(&inv, "198.51.100.9").unwrap().name, "b");
        assert_eq!(first_node(&inv, "c.example.org").unwrap().name, "c");
        let err = first_node(&inv, "10.0.0.99").unwrap_err().to_string();
        assert!(err.contains("a (10.0.0.1)"), "{err}");
        assert!(err.contains("public_ip 198.51.100.9"), "{err}");
        assert!(err.contains("Fix:"), "{err}");
    }

    #[test]
    fn overlay_ip_is_derived_unless_set() {
        let inv = inv();
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
        let inv = inv();
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
