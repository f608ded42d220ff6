//! `mesh care --group GLOB`: maintenance in batches that keeps every
//! service up.
//!
//! Before the run, on the controller: the care hooks are read
//! (`care/*.sh` of the dockerfiles folder, in name order; a folder without
//! `care/` is said out loud), and the folder's services are planned for
//! every host of the inventory, so mesh knows where each service's
//! replicas run. Batches respect groups and services alike: a batch never
//! holds every replica of a service, even across groups, and bastions go
//! after the hosts whose routes they serve. A host that holds the only
//! replica of a service fails before anything is changed on it, unless
//! `--allow-downtime`.
//!
//! Per host, one survey round trip first: `apt-get update` and
//! `apt-get -s dist-upgrade` (with `--dry-run`, on a private copy of the
//! package lists, so the host is not changed), whether a reboot is
//! required, and the routes the host publishes. A host with nothing to
//! upgrade and no reboot to do only runs the hooks. Otherwise its backends
//! are withdrawn from every bastion and each bastion's Traefik confirms it;
//! then the upgrade (`--force-confold`, needrestart in list mode, the
//! packages reported as `name old → new`), the hooks (each fed on stdin
//! with the host's variables exported), the reboot when one is required
//! and `--reboot` asks for it (mesh waits, bounded, with backoff, for the
//! new boot); then Docker, wesher, garage and Redis active where they are
//! enabled, the containers started and healthy as `services-up` does, and
//! only then the routes of the running copies return, confirmed by Traefik.

use super::deploy::commands::{confirm_script, route_checks, RouteCheck};
use super::services::folder::{self, Folder, FolderError};
use super::services::publish::{self, HostRoutes};
use super::services::{plan, up};
use super::{HostCtx, Phase, Step, StepOutcome};
use crate::inventory::{Host, Inventory, Publisher, TraefikApi};
use crate::ops::{fmt_code, OpError, OpFailure, OpReport, Outcome};
use crate::quote::{quote, Script};
use crate::run::BatchSize;
use crate::ssh::{BoxFut, CommandKind, Input};
use crate::template::{Source, VarSet};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Seconds each bastion's Traefik has to show a withdrawn or returned route.
const CONFIRM_SECONDS: u64 = 15;
/// Seconds requests already on their way to a withdrawn host get to finish.
const DRAIN_SECONDS: u64 = 2;
/// Seconds Docker and mesh's units have to be active again.
const UNITS_SECONDS: u64 = 90;
/// What must run again after the upgrade or reboot, where it is enabled.
const UNITS: &[&str] = &["docker", "wesher", "garage", "redis-server"];

/// Why `care` refuses to start (nothing touched; exit 2).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}: cannot read the care hook: {source}. Fix: make it readable")]
    Hook {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Folder(#[from] FolderError),
    #[error("{}", .0.join("\n"))]
    Plan(Vec<String>),
    #[error("{folder}: the traefik service's traefik.yml has no `api:` section, so mesh cannot confirm on the bastions that a host's routes were withdrawn before its upgrade. Fix: add `api: {{ insecure: true }}`, or set ingress.traefik_api: http://HOST:PORT in the inventory")]
    NoTraefikApi { folder: PathBuf },
}

/// Why one host's care stopped.
#[derive(Debug, thiserror::Error)]
pub enum CareError {
    #[error("{host} holds the only replica of {}: caring for it takes {} down, so nothing was changed on it. Fix: run another replica elsewhere first, or pass --allow-downtime", .services.join(", "), if .services.len() == 1 { "it" } else { "them" })]
    SoleReplica { host: String, services: Vec<String> },
    #[error("{host} publishes routes of {}, but {folder} defines no services, so care cannot tell whether other hosts serve them; nothing was changed on it. Fix: pass --dockerfiles with your services folder, or --allow-downtime", .services.join(", "))]
    UnknownReplicas {
        host: String,
        services: Vec<String>,
        folder: PathBuf,
    },
    #[error("{what}: {error}")]
    Remote { what: &'static str, error: OpError },
    #[error("{what} failed (exit {code}):\n{tail}")]
    Command {
        what: String,
        code: String,
        tail: String,
    },
    #[error("its routes go to bastion {bastion}, which is not in this inventory. Fix: check traefik_host, then run mesh services")]
    UnknownBastion { bastion: String },
    #[error("publishing routes on {bastion}: {error}")]
    Publish {
        bastion: String,
        error: super::services::publish::RoutesError,
    },
    #[error("Traefik on {bastion} ({api}) did not show {what} after {seconds:.1} s: {answer}")]
    NotConfirmed {
        bastion: String,
        api: String,
        what: String,
        seconds: f64,
        answer: String,
    },
    #[error("reading its routes: {0}")]
    Routes(super::services::publish::RoutesError),
    #[error("the survey's output ended before its routes part (mesh {}); see the host log", env!("CARGO_PKG_VERSION"))]
    Survey,
    #[error("{host} did not come back within {seconds} s after the reboot. Fix: check its console; later batches were not started")]
    NotBack { host: String, seconds: u64 },
    #[error("not active {seconds} s after the upgrade:{units}. Fix: look at `journalctl -u UNIT` on the host")]
    NotActive { units: String, seconds: u64 },
    #[error("{label}: {error}")]
    Services { label: String, error: OpError },
    #[error("{error}\nroutes: {routes}")]
    WhileDrained {
        error: Box<CareError>,
        routes: String,
    },
}

/// A care hook: its file name and text.
#[derive(Debug, Clone)]
pub struct Hook {
    pub name: String,
    pub script: Arc<Vec<u8>>,
}

/// `care/*.sh` of the dockerfiles folder, in name order, and what to say
/// when there are none (no folder, or no `care/` in it).
pub fn hooks(dockerfiles: &Path) -> Result<(Vec<Hook>, Option<String>), InputError> {
    let dir = dockerfiles.join("care");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        let why = if dockerfiles.is_dir() {
            "it has no care/ folder"
        } else {
            "no such folder"
        };
        return Ok((
            Vec::new(),
            Some(format!(
                "no care hooks in {} ({why}): only packages are upgraded",
                dockerfiles.display()
            )),
        ));
    };
    let mut hooks = Vec::new();
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".sh") {
            continue;
        }
        let script = std::fs::read(e.path()).map_err(|source| InputError::Hook {
            path: e.path(),
            source,
        })?;
        hooks.push(Hook {
            name,
            script: Arc::new(script),
        });
    }
    hooks.sort_by(|a, b| a.name.cmp(&b.name));
    let note = hooks
        .is_empty()
        .then(|| format!("no care hooks in {} (no *.sh file)", dir.display()));
    Ok((hooks, note))
}

/// Where each service runs, host by host, as the dockerfiles folder plans it.
#[derive(Debug, Clone, Default)]
pub struct Replicas {
    by_host: BTreeMap<String, BTreeSet<String>>,
    /// The folder defines services (else nothing is known of replicas).
    pub known: bool,
    /// The folder the services came from, for messages.
    pub folder: PathBuf,
    /// Hosts whose services publish routes (per the folder).
    routed: BTreeSet<String>,
    /// Where the bastions' Traefik API answers (`None`: traefik.yml has no `api:`).
    pub traefik_api: Option<TraefikApi>,
}

impl Replicas {
    /// Plan the folder for every host of the inventory (`vars`: a host's
    /// variables). Problems of `selected` hosts stop the run; a host
    /// outside the selection that cannot be planned counts as running
    /// nothing (so a replica there is never relied upon).
    pub fn plan(
        dockerfiles: &Path,
        inv: &Inventory,
        selected: &[String],
        vars: impl Fn(&Host) -> VarSet,
    ) -> Result<Replicas, InputError> {
        let mut out = Replicas {
            folder: dockerfiles.to_path_buf(),
            traefik_api: Some(TraefikApi::default_local()),
            ..Replicas::default()
        };
        if !dockerfiles.is_dir() {
            return Ok(out);
        }
        let folder = Folder::load(dockerfiles)?;
        if folder.services.is_empty() && folder.compose.is_empty() {
            return Ok(out);
        }
        out.known = true;
        out.traefik_api = folder::traefik_api(&folder);
        let mut problems = Vec::new();
        for host in &inv.hosts {
            match plan::plan_host(&folder, inv, host, &vars(host)) {
                Ok(p) => {
                    if !p.backends.is_empty() {
                        out.routed.insert(host.name.clone());
                    }
                    out.by_host
                        .insert(host.name.clone(), p.service_names().into_iter().collect());
                }
                Err(mut p) if selected.contains(&host.name) => problems.append(&mut p),
                Err(_) => {}
            }
        }
        if !problems.is_empty() {
            return Err(InputError::Plan(problems));
        }
        Ok(out)
    }

    /// From explicit host -> services lists.
    #[cfg(test)]
    pub fn of(by_host: &[(&str, &[&str])]) -> Replicas {
        Replicas {
            by_host: by_host
                .iter()
                .map(|(h, s)| (h.to_string(), s.iter().map(|s| s.to_string()).collect()))
                .collect(),
            known: true,
            ..Replicas::default()
        }
    }

    fn services(&self, host: &str) -> impl Iterator<Item = &String> {
        self.by_host.get(host).into_iter().flatten()
    }

    /// How many hosts run `service`.
    fn count(&self, service: &str) -> usize {
        self.by_host
            .values()
            .filter(|s| s.contains(service))
            .count()
    }

    /// The services no host but `host` runs.
    pub fn sole(&self, host: &str) -> Vec<String> {
        self.services(host)
            .filter(|s| self.count(s) == 1)
            .cloned()
            .collect()
    }

    /// Whether mesh must confirm withdrawn routes on Traefik but does not
    /// know where its API answers (checked before any host is touched).
    pub fn check_api(&self, publisher: Publisher, hosts: &[&Host]) -> Result<(), InputError> {
        let routed = hosts.iter().any(|h| self.routed.contains(&h.name));
        if publisher == Publisher::Mesh && routed && self.traefik_api.is_none() {
            return Err(InputError::NoTraefikApi {
                folder: self.folder.join("traefik"),
            });
        }
        Ok(())
    }

    /// Batches of `hosts` (indexes): at most `batch` hosts of any one group
    /// (a percentage: of that group's hosts here), never every replica of
    /// a service at once (at most all but one, and `batch` of them), and
    /// the bastions last, on their own, so no host's routes are withdrawn
    /// through a bastion that is rebooting.
    pub fn batches(&self, hosts: &[&Host], batch: BatchSize) -> Vec<Vec<usize>> {
        let groups: Vec<Vec<String>> = hosts
            .iter()
            .map(|h| {
                let mut g = h.groups.clone();
                g.extend(self.services(&h.name).map(|s| format!("service {s}")));
                g
            })
            .collect();
        let members = |group: &str| {
            groups
                .iter()
                .filter(|g| g.iter().any(|x| x == group))
                .count()
        };
        let cap = |group: &str| {
            let here = batch.of(members(group));
            match group.strip_prefix("service ") {
                Some(s) => here.min(self.count(s).saturating_sub(1)).max(1),
                None => here,
            }
        };
        let mut out = Vec::new();
        for bastions in [false, true] {
            let picked: Vec<usize> = (0..hosts.len())
                .filter(|&i| hosts[i].is_bastion() == bastions)
                .collect();
            let of_these: Vec<Vec<String>> = picked.iter().map(|&i| groups[i].clone()).collect();
            for b in crate::run::plan_batches_capped(&of_these, cap) {
                out.push(b.into_iter().map(|k| picked[k]).collect());
            }
        }
        out
    }
}

/// The care step, the same for every host.
pub struct Care {
    pub hooks: Vec<Hook>,
    pub reboot: bool,
    /// Seconds a rebooting host has to come back.
    pub reboot_wait: u64,
    /// Go on with hosts that hold the only replica of a service.
    pub allow_downtime: bool,
    pub replicas: Arc<Replicas>,
    /// The bastions the hosts' routes go to, by name.
    pub bastions: BTreeMap<String, Arc<HostCtx>>,
    /// Who publishes routes: only mesh's own can be withdrawn.
    pub publisher: Publisher,
}

pub fn phase(care: Care) -> Phase {
    Phase::of_steps("care", vec![Box::new(care)])
}

/// One package `apt-get -s dist-upgrade` would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pending {
    Upgrade {
        name: String,
        old: String,
        new: String,
    },
    Install {
        name: String,
        new: String,
    },
    Remove {
        name: String,
        old: String,
    },
}

impl Pending {
    fn report(&self, outcome: Outcome) -> OpReport {
        let (name, detail) = match self {
            Pending::Upgrade { name, old, new } => (name, format!("{old} → {new}")),
            Pending::Install { name, new } => (name, format!("new, {new}")),
            Pending::Remove { name, old } => (name, format!("{old} → removed")),
        };
        OpReport {
            label: format!("package {name}"),
            outcome,
            detail,
        }
    }
}

/// The `Inst`/`Remv` lines of `apt-get -s`, e.g.
/// `Inst libc6 [2.36-9] (2.36-9+deb12u9 Debian:12.9/stable [amd64])`.
pub(crate) fn parse_simulation(text: &str) -> Vec<Pending> {
    let mut out = Vec::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        fn bracket(s: &str) -> Option<&str> {
            s.strip_prefix('[').and_then(|s| s.strip_suffix(']'))
        }
        let paren = |s: &str| s.strip_prefix('(').map(str::to_string);
        match w[..] {
            ["Inst", name, old, new, ..] if bracket(old).is_some() => {
                if let Some(new) = paren(new) {
                    out.push(Pending::Upgrade {
                        name: name.into(),
                        old: bracket(old).unwrap_or_default().into(),
                        new,
                    });
                }
            }
            ["Inst", name, new, ..] => {
                if let Some(new) = paren(new) {
                    out.push(Pending::Install {
                        name: name.into(),
                        new,
                    });
                }
            }
            ["Remv", name, old, ..] => out.push(Pending::Remove {
                name: name.into(),
                old: bracket(old).unwrap_or(old).into(),
            }),
            _ => {}
        }
    }
    out
}

const ROUTES_MARK: &str = "@@care-routes";
const REBOOT_MARK: &str = "@@care-reboot-required";

/// The survey, in one round trip: the package lists refreshed (a private
/// copy on a dry run), the upgrade simulated, whether a reboot is
/// required, then what [`publish::read_script`] reads.
pub(crate) fn survey_script(dry_run: bool) -> Script {
    let mut s = Script::new();
    s.raw("export DEBIAN_FRONTEND=noninteractive");
    if dry_run {
        s.raw(
            r#"lists=$(mktemp -d); trap 'rm -rf "$lists"' EXIT
cp -a /var/lib/apt/lists/. "$lists"/ 2>/dev/null; rm -f "$lists/lock"; mkdir -p "$lists/partial"
set -- -o Dir::State::Lists="$lists""#,
        );
    } else {
        s.raw("set --");
    }
    s.raw(
        r#"apt-get -q -y -o DPkg::Lock::Timeout=300 "$@" update >&2 || exit 5
sim=$(apt-get -s -q -o Debug::NoLocking=1 "$@" dist-upgrade 2>&1) || { printf '%s\n' "$sim" >&2; exit 6; }
printf '%s\n' "$sim" | grep -E '^(Inst|Remv) ' || true"#,
    );
    s.line(
        "if [ -f /var/run/reboot-required ]; then echo {}; fi",
        &[REBOOT_MARK],
    );
    s.line("echo {}", &[ROUTES_MARK]);
    s.append(&publish::read_script());
    s
}

/// What the survey found on one host.
#[derive(Debug, Clone, Default)]
pub(crate) struct Survey {
    pub pending: Vec<Pending>,
    pub reboot_required: bool,
    pub routes: HostRoutes,
}

pub(crate) fn parse_survey(host: &str, text: &str) -> Result<Survey, CareError> {
    let (apt, routes) = text
        .split_once(&format!("{ROUTES_MARK}\n"))
        .ok_or(CareError::Survey)?;
    Ok(Survey {
        pending: parse_simulation(apt),
        reboot_required: apt.lines().any(|l| l == REBOOT_MARK),
        routes: publish::parse_read(host, routes).map_err(CareError::Routes)?,
    })
}

/// The upgrade, reporting `upgraded NAME OLD NEW`, `installed NAME NEW`
/// and `reboot required` (the package lists are fresh from the survey).
fn upgrade_script() -> Script {
    let mut s = Script::new();
    s.raw(
        r#"set -e
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l
before=$(mktemp) after=$(mktemp)
trap 'rm -f "$before" "$after"' EXIT
dpkg-query -W -f='${Package} ${Version}\n' > "$before"
apt-get -q -y -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold dist-upgrade >&2
dpkg-query -W -f='${Package} ${Version}\n' > "$after"
awk 'NR == FNR { v[$1] = $2; next } !($1 in v) { print "installed", $1, $2; next } v[$1] != $2 { print "upgraded", $1, v[$1], $2 }' "$before" "$after"
if [ -f /var/run/reboot-required ]; then echo "reboot required"; fi"#,
    );
    s
}

/// Waits until Docker and mesh's units are active where they are enabled.
pub(crate) fn units_script(seconds: u64) -> Script {
    let mut s = Script::new();
    s.line("end=$(( $(date +%s) + {} ))", &[&seconds.to_string()]);
    s.raw("while :; do\n  wait=''");
    let units: Vec<String> = UNITS
        .iter()
        .map(|u| quote(&format!("{u}.service")))
        .collect();
    s.raw(&format!("  for u in {}; do", units.join(" ")));
    s.raw(
        r#"    systemctl is-enabled --quiet "$u" 2>/dev/null || continue
    systemctl is-active --quiet "$u" || wait="$wait $u"
  done
  [ -z "$wait" ] && { echo active; exit 0; }
  [ "$(date +%s)" -ge "$end" ] && break
  sleep 1
done
echo "inactive$wait""#,
    );
    s
}

/// What identifies one boot of the host: the kernel's boot id and when
/// PID 1 started (a container host keeps the kernel's id across restarts).
const BOOT_MARK: &str =
    "echo \"boot $(cat /proc/sys/kernel/random/boot_id) $(ps -o lstart= -p 1)\"";

/// Reports from the upgrade's output; whether a reboot is required.
fn parse_upgrade(text: &str) -> (Vec<OpReport>, bool) {
    let mut reports = Vec::new();
    let mut reboot = false;
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w[..] {
            ["upgraded", name, old, new] => reports.push(OpReport {
                label: format!("package {name}"),
                outcome: Outcome::Changed,
                detail: format!("{old} → {new}"),
            }),
            ["installed", name, new] => reports.push(OpReport {
                label: format!("package {name}"),
                outcome: Outcome::Changed,
                detail: format!("new, {new}"),
            }),
            ["reboot", "required"] => reboot = true,
            _ => {}
        }
    }
    (reports, reboot)
}

/// What a host's care did so far: reports, lines for the user, the stage
/// a failure is reported under.
#[derive(Default)]
struct Progress {
    reports: Vec<OpReport>,
    lines: Vec<String>,
    stage: &'static str,
}

impl Progress {
    fn stage(&mut self, ctx: &HostCtx, stage: &'static str) {
        self.stage = stage;
        ctx.stage(stage);
        ctx.log.line(&format!("care stage {stage}"));
    }
}

fn remote(what: &'static str) -> impl FnOnce(OpError) -> CareError {
    move |error| CareError::Remote { what, error }
}

/// Owners' keys merged into one map (the keys of a host's services).
fn merged(keys: &BTreeMap<String, BTreeMap<String, String>>) -> BTreeMap<String, String> {
    keys.values()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl Care {
    /// The host's variables as `export` lines (facts, inventory, secrets —
    /// not the controller's environment), fed on stdin with the hook.
    fn hook_input(ctx: &HostCtx, hook: &Hook) -> Vec<u8> {
        let mut text = String::from("set -a\n");
        for name in ctx.vars.names() {
            if ctx.vars.source(name) == Some(Source::Env) {
                continue;
            }
            if let Some(value) = ctx.vars.get(name) {
                text.push_str(&format!("{name}={}\n", quote(value)));
            }
        }
        text.push_str("set +a\n");
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(&hook.script);
        bytes
    }

    fn bastion(&self, name: &str) -> Result<&Arc<HostCtx>, CareError> {
        self.bastions
            .get(name)
            .ok_or_else(|| CareError::UnknownBastion {
                bastion: name.to_string(),
            })
    }

    /// Wait on bastion `name` until its Traefik shows `checks`.
    async fn confirm(&self, name: &str, checks: &[RouteCheck]) -> Result<(), CareError> {
        if checks.is_empty() {
            return Ok(());
        }
        let api = self
            .replicas
            .traefik_api
            .clone()
            .unwrap_or_else(TraefikApi::default_local);
        let out = self
            .bastion(name)?
            .op_ctx()
            .run(
                "wait for traefik",
                confirm_script(&api, checks, CONFIRM_SECONDS).as_str(),
                Input::None,
            )
            .await
            .map_err(remote("asking Traefik"))?;
        let text = out.stdout_str();
        if text.lines().any(|l| l.starts_with("switched ")) {
            return Ok(());
        }
        let ms = text
            .lines()
            .find_map(|l| l.strip_prefix("waited "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(CONFIRM_SECONDS * 1000);
        let what: Vec<String> = checks.iter().map(RouteCheck::describe).collect();
        Err(CareError::NotConfirmed {
            bastion: name.to_string(),
            api: api.base,
            what: what.join(", "),
            seconds: ms as f64 / 1000.0,
            answer: text
                .lines()
                .find_map(|l| l.strip_prefix("traefik: "))
                .unwrap_or_default()
                .to_string(),
        })
    }

    /// Withdraw every route of the host from each of its bastions, and
    /// wait until each Traefik no longer lists its servers.
    async fn withdraw(&self, ctx: &HostCtx, read: &HostRoutes) -> Result<String, CareError> {
        let host = &ctx.host.name;
        let old = merged(&read.live_keys(host));
        let line = super::services::routes::prune_host_script(host, &[]);
        for b in &read.manifest.bastions {
            publish::publish(self.bastion(b)?, std::slice::from_ref(&line))
                .await
                .map_err(|error| CareError::Publish {
                    bastion: b.clone(),
                    error,
                })?;
        }
        let checks = route_checks(&old, &BTreeMap::new());
        for b in &read.manifest.bastions {
            self.confirm(b, &checks).await?;
        }
        Ok(read.manifest.bastions.join(", "))
    }

    /// Publish the routes of the copies that run now, and wait until each
    /// bastion's Traefik lists them.
    async fn restore(&self, ctx: &HostCtx) -> Result<String, CareError> {
        let host = &ctx.host.name;
        let read = publish::read_host(ctx).await.map_err(CareError::Routes)?;
        let live = read.live_keys(host);
        let lines = publish::host_lines(host, &live);
        for b in &read.manifest.bastions {
            publish::publish(self.bastion(b)?, &lines)
                .await
                .map_err(|error| CareError::Publish {
                    bastion: b.clone(),
                    error,
                })?;
        }
        let checks = route_checks(&BTreeMap::new(), &merged(&live));
        for b in &read.manifest.bastions {
            self.confirm(b, &checks).await?;
        }
        let services: Vec<&str> = live
            .keys()
            .filter_map(|o| o.split_once('/').map(|(_, s)| s))
            .collect();
        Ok(if services.is_empty() {
            "no copy runs: none returned".into()
        } else {
            format!(
                "{} back on {}",
                services.join(", "),
                read.manifest.bastions.join(", ")
            )
        })
    }

    async fn reboot_host(&self, ctx: &HostCtx) -> Result<f64, CareError> {
        let op = ctx.op_ctx();
        let before = op
            .run("boot", BOOT_MARK, Input::None)
            .await
            .map_err(remote("reading the boot id"))?
            .stdout_str();
        let mut s = Script::new();
        // Returns at once; the reboot follows the SSH command's end.
        s.raw("systemd-run --on-active=1 --timer-property=AccuracySec=100ms systemctl reboot >/dev/null");
        op.run_ok("schedule reboot", s.as_str(), Input::None)
            .await
            .map_err(remote("scheduling the reboot"))?;
        ctx.conn.close().await;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(self.reboot_wait);
        let mut pause = Duration::from_secs(1);
        loop {
            tokio::time::sleep(pause).await;
            if let Ok(out) = ctx.conn.exec(BOOT_MARK, Input::None).await {
                let now = out.stdout_str();
                if out.success() && now.starts_with("boot ") && now != before {
                    break;
                }
            } else {
                // The master died with the old boot: log in afresh next time.
                ctx.conn.close().await;
            }
            if Instant::now() >= deadline {
                return Err(CareError::NotBack {
                    host: ctx.host.name.clone(),
                    seconds: self.reboot_wait,
                });
            }
            pause = (pause * 2).min(Duration::from_secs(10));
        }
        let secs = started.elapsed().as_secs_f64();
        ctx.log.line(&format!("back after {secs:.1}s"));
        Ok(secs)
    }

    /// After the upgrade or the boot: Docker and mesh's units active, the
    /// containers started and healthy, as `services-up` leaves them.
    async fn back(&self, ctx: &HostCtx, p: &mut Progress) -> Result<(), CareError> {
        p.stage(ctx, "starting");
        let out = ctx
            .op_ctx()
            .run(
                "units active",
                units_script(UNITS_SECONDS).as_str(),
                Input::None,
            )
            .await
            .map_err(remote("checking units"))?;
        let text = out.stdout_str();
        if let Some(units) = text.lines().find_map(|l| l.strip_prefix("inactive")) {
            return Err(CareError::NotActive {
                units: units.to_string(),
                seconds: UNITS_SECONDS,
            });
        }
        let up = Step::run(&up::Up, ctx)
            .await
            .map_err(|f| CareError::Services {
                label: f.label,
                error: f.error,
            })?;
        p.reports.extend(up.reports);
        if let Some(o) = up.output {
            p.lines.extend(o.lines().map(|l| format!("up: {l}")));
        }
        Ok(())
    }

    /// Upgrade, hooks, reboot and the way back, on a host that is drained
    /// (or serves no route).
    async fn maintain(
        &self,
        ctx: &HostCtx,
        survey: &Survey,
        p: &mut Progress,
    ) -> Result<(), CareError> {
        let mut reboot_required = survey.reboot_required;
        if !survey.pending.is_empty() {
            p.stage(ctx, "upgrading");
            let out = ctx
                .op_ctx()
                .long()
                .run(
                    "apt-get dist-upgrade",
                    upgrade_script().as_str(),
                    Input::None,
                )
                .await
                .map_err(remote("apt-get dist-upgrade"))?;
            if !out.success() {
                return Err(CareError::Command {
                    what: "apt-get dist-upgrade".into(),
                    code: fmt_code(out.code),
                    tail: ctx.log.redact(&out.tail(8)),
                });
            }
            let (reports, reboot) = parse_upgrade(&out.stdout_str());
            reboot_required |= reboot;
            p.lines
                .extend(reports.iter().map(|r| format!("{}: {}", r.label, r.detail)));
            p.reports.extend(reports);
        } else {
            p.lines.push("packages: all up to date".into());
        }
        self.run_hooks(ctx, p).await?;
        let rebooting = reboot_required && self.reboot;
        if rebooting {
            p.stage(ctx, "rebooting");
            let secs = self.reboot_host(ctx).await?;
            p.reports.push(OpReport {
                label: "reboot".into(),
                outcome: Outcome::Changed,
                detail: format!("back in {secs:.0} s"),
            });
        } else if reboot_required {
            p.lines
                .push("reboot required (run again with --reboot)".into());
        }
        if rebooting || !survey.pending.is_empty() {
            self.back(ctx, p).await?;
        }
        if rebooting {
            p.lines
                .push("rebooted: back, Docker and containers up".into());
        }
        Ok(())
    }

    async fn run_hooks(&self, ctx: &HostCtx, p: &mut Progress) -> Result<(), CareError> {
        for hook in &self.hooks {
            p.stage(ctx, "hooks");
            let input = Input::Bytes(Arc::new(Self::hook_input(ctx, hook)));
            let label = format!("care hook {}", hook.name);
            let out = ctx
                .conn
                .exec_as("cd / && sh -se", input, CommandKind::Long)
                .await
                .map_err(|e| CareError::Remote {
                    what: "running a care hook",
                    error: e.into(),
                })?;
            ctx.log.block(
                &format!("{label} (exit {})", fmt_code(out.code)),
                &format!("{}{}", out.stdout_str(), out.stderr_str()),
            );
            if !out.success() {
                return Err(CareError::Command {
                    what: label,
                    code: fmt_code(out.code),
                    tail: ctx.log.redact(&out.tail(8)),
                });
            }
            p.reports.push(OpReport {
                label,
                outcome: Outcome::Changed,
                detail: "ran".into(),
            });
            p.lines.push(format!("hook {}: ok", hook.name));
        }
        Ok(())
    }

    /// What a dry run reports: the packages, the reboot, the routes.
    fn dry(&self, survey: &Survey, routed: &[String], p: &mut Progress) {
        p.reports.extend(
            survey
                .pending
                .iter()
                .map(|x| x.report(Outcome::WouldChange)),
        );
        if survey.pending.is_empty() {
            p.lines.push("packages: all up to date".into());
        }
        let work = !survey.pending.is_empty() || (survey.reboot_required && self.reboot);
        if work && !routed.is_empty() {
            p.lines.push(format!(
                "would withdraw the routes of {} from {} first",
                routed.join(", "),
                survey.routes.manifest.bastions.join(", ")
            ));
        }
        if !self.hooks.is_empty() {
            p.lines
                .push(format!("would run {} care hook(s)", self.hooks.len()));
        }
        match (survey.reboot_required, self.reboot) {
            (true, true) => p.lines.push("would reboot".into()),
            (true, false) => p
                .lines
                .push("reboot required (run again with --reboot)".into()),
            _ => {}
        }
    }

    async fn care(&self, ctx: &HostCtx, p: &mut Progress) -> Result<(), CareError> {
        let host = &ctx.host.name;
        p.stage(ctx, "survey");
        let out = ctx
            .op_ctx()
            .long()
            .run(
                "apt survey",
                survey_script(ctx.dry_run).as_str(),
                Input::None,
            )
            .await
            .map_err(remote("apt-get update"))?;
        if !out.success() {
            return Err(CareError::Command {
                what: "apt-get update and simulated dist-upgrade".into(),
                code: fmt_code(out.code),
                tail: ctx.log.redact(&out.tail(8)),
            });
        }
        let survey = parse_survey(host, &out.stdout_str())?;
        let live = survey.routes.live_keys(host);
        let routed: Vec<String> = if self.publisher == Publisher::Mesh {
            live.keys()
                .filter_map(|o| o.split_once('/').map(|(_, s)| s.to_string()))
                .collect()
        } else {
            Vec::new()
        };
        let work = !survey.pending.is_empty() || (survey.reboot_required && self.reboot);
        // Only a host that has work to do goes down.
        let sole = self.replicas.sole(host);
        if work && !sole.is_empty() {
            if !self.allow_downtime && !ctx.dry_run {
                p.stage = "downtime";
                return Err(CareError::SoleReplica {
                    host: host.clone(),
                    services: sole,
                });
            }
            let how = if self.allow_downtime {
                "down while it is cared for (--allow-downtime)"
            } else {
                "refused without --allow-downtime"
            };
            let line = format!("the only replica of {}: {how}", sole.join(", "));
            ctx.log.line(&line);
            p.lines.push(line);
        }
        if ctx.dry_run {
            self.dry(&survey, &routed, p);
            return Ok(());
        }
        if !work || routed.is_empty() {
            return self.maintain(ctx, &survey, p).await;
        }
        if !self.replicas.known && !self.allow_downtime {
            return Err(CareError::UnknownReplicas {
                host: host.clone(),
                services: routed,
                folder: self.replicas.folder.clone(),
            });
        }
        p.stage(ctx, "draining");
        let from = self.withdraw(ctx, &survey.routes).await?;
        p.lines
            .push(format!("withdrawn: {} from {from}", routed.join(", ")));
        tokio::time::sleep(Duration::from_secs(DRAIN_SECONDS)).await;
        let done = self.maintain(ctx, &survey, p).await;
        let stage = p.stage;
        p.stage(ctx, "routing");
        let back = self.restore(ctx).await;
        match (done, back) {
            (Ok(()), Ok(routes)) => {
                p.reports.push(OpReport {
                    label: "routes".into(),
                    outcome: Outcome::Changed,
                    detail: format!("withdrawn during care, {routes}"),
                });
                p.lines.push(format!("routes: {routes}"));
                Ok(())
            }
            (Ok(()), Err(e)) => Err(e),
            (Err(error), back) => {
                p.stage = stage;
                Err(CareError::WhileDrained {
                    error: Box::new(error),
                    routes: match back {
                        Ok(r) => r,
                        Err(e) => format!("still withdrawn ({e})"),
                    },
                })
            }
        }
    }
}

impl Step for Care {
    fn name(&self) -> &'static str {
        "care"
    }

    fn run<'a>(&'a self, ctx: &'a HostCtx) -> BoxFut<'a, Result<StepOutcome, OpFailure>> {
        Box::pin(async move {
            let mut p = Progress {
                stage: "care",
                ..Progress::default()
            };
            match self.care(ctx, &mut p).await {
                Ok(()) => Ok(StepOutcome {
                    reports: p.reports,
                    output: Some(p.lines.join("\n")),
                }),
                Err(e) => Err(OpFailure {
                    label: p.stage.into(),
                    error: OpError::Step(Box::new(e)),
                    done: p.reports,
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_output_reads_as_reports() {
        let (r, reboot) = parse_upgrade(
            "upgraded libc6 2.36-9 2.36-9+deb12u9\ninstalled linux-image 6.1.1\nnoise\nreboot required\n",
        );
        assert!(reboot);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].label, "package libc6");
        assert_eq!(r[0].detail, "2.36-9 → 2.36-9+deb12u9");
        assert_eq!(parse_upgrade("").0.len(), 0);
    }

    #[test]
    fn a_simulated_upgrade_lists_the_packages() {
        let text = "NOTE: This is only a simulation!\n\
            Inst libc6 [2.36-9] (2.36-9+deb12u9 Debian:12.9/stable [amd64])\n\
            Inst linux-image-6.1.0-30-amd64 (6.1.124-1 Debian-Security:12/stable-security [amd64])\n\
            Remv oldthing [1.2]\n\
            Conf libc6 (2.36-9+deb12u9 Debian:12.9/stable [amd64])\n";
        assert_eq!(
            parse_simulation(text),
            vec![
                Pending::Upgrade {
                    name: "libc6".into(),
                    old: "2.36-9".into(),
                    new: "2.36-9+deb12u9".into()
                },
                Pending::Install {
                    name: "linux-image-6.1.0-30-amd64".into(),
                    new: "6.1.124-1".into()
                },
                Pending::Remove {
                    name: "oldthing".into(),
                    old: "1.2".into()
                },
            ]
        );
        assert_eq!(
            parse_simulation(text)[0]
                .report(Outcome::WouldChange)
                .detail,
            "2.36-9 → 2.36-9+deb12u9"
        );
    }

    #[test]
    fn the_survey_reads_packages_reboot_and_routes() {
        let text = "Inst probe [1.0] (2.0 local [all])\n@@care-reboot-required\n@@care-routes\n\
            {\"host\": \"w1\", \"bastions\": [\"edge\"], \"backends\": []}\n@@mesh-states\n@@mesh-running\n";
        let s = parse_survey("w1", text).unwrap();
        assert_eq!(s.pending.len(), 1);
        assert!(s.reboot_required);
        assert_eq!(s.routes.manifest.bastions, ["edge"]);
        assert!(parse_survey("w1", "garbage").is_err());
    }

    #[test]
    fn the_scripts_are_valid_shell_and_a_dry_run_keeps_the_lists() {
        crate::quote::assert_valid_sh(&upgrade_script());
        crate::quote::assert_valid_sh(&survey_script(false));
        crate::quote::assert_valid_sh(&survey_script(true));
        crate::quote::assert_valid_sh(&units_script(90));
        let dry = survey_script(true);
        assert!(
            dry.as_str()
                .contains("set -- -o Dir::State::Lists=\"$lists\"\napt-get -q -y -o DPkg::Lock::Timeout=300 \"$@\" update >&2 || exit 5"),
            "{}",
            dry.as_str()
        );
        let real = survey_script(false);
        assert!(!real.as_str().contains("Dir::State::Lists"));
        assert!(
            real.as_str().contains("@@care-routes\n"),
            "{}",
            real.as_str()
        );
        assert!(!upgrade_script().as_str().contains(" update"));
    }

    #[test]
    fn the_units_wait_names_docker_wesher_garage_and_redis() {
        assert_eq!(
            units_script(90).as_str(),
            "end=$(( $(date +%s) + 90 ))\n\
             while :; do\n  wait=''\n\
             \x20 for u in docker.service wesher.service garage.service redis-server.service; do\n\
             \x20   systemctl is-enabled --quiet \"$u\" 2>/dev/null || continue\n\
             \x20   systemctl is-active --quiet \"$u\" || wait=\"$wait $u\"\n\
             \x20 done\n\
             \x20 [ -z \"$wait\" ] && { echo active; exit 0; }\n\
             \x20 [ \"$(date +%s)\" -ge \"$end\" ] && break\n\
             \x20 sleep 1\n\
             done\n\
             echo \"inactive$wait\"\n"
        );
    }

    #[test]
    fn hooks_are_read_in_name_order_and_none_is_said() {
        let dir = tempfile::tempdir().unwrap();
        let (none, note) = hooks(dir.path()).unwrap();
        assert!(none.is_empty());
        let note = note.unwrap();
        assert!(
            note.starts_with(&format!("no care hooks in {}", dir.path().display())),
            "{note}"
        );
        assert!(note.contains("no care/ folder"), "{note}");
        let (_, gone) = hooks(&dir.path().join("nope")).unwrap();
        assert!(gone.unwrap().contains("no such folder"));
        std::fs::create_dir(dir.path().join("care")).unwrap();
        for n in ["20-b.sh", "10-a.sh", "notes.txt"] {
            std::fs::write(dir.path().join("care").join(n), "true\n").unwrap();
        }
        let (found, note) = hooks(dir.path()).unwrap();
        let names: Vec<String> = found.into_iter().map(|h| h.name).collect();
        assert_eq!(names, ["10-a.sh", "20-b.sh"]);
        assert!(note.is_none());
    }

    fn inventory() -> Inventory {
        Inventory::parse(
            Path::new("i.yml"),
            "groups:
  bastion:
    hosts:
      b1: { address: 10.0.0.1, services: [traefik] }
      b2: { address: 10.0.0.2, services: [traefik] }
  web:
    hosts:
      w1: { address: 10.0.0.3 }
      w2: { address: 10.0.0.4 }
  db:
    hosts:
      d1: { address: 10.0.0.5 }
      d2: { address: 10.0.0.6 }
",
        )
        .unwrap()
    }

    #[test]
    fn batches_keep_a_replica_of_every_service_and_bastions_go_last() {
        let inv = inventory();
        let hosts: Vec<&Host> = inv.hosts.iter().collect();
        let names = |batches: Vec<Vec<usize>>| -> Vec<Vec<&str>> {
            batches
                .into_iter()
                .map(|b| b.into_iter().map(|i| hosts[i].name.as_str()).collect())
                .collect()
        };
        // `api` runs on w1 and d1, in different groups; `cache` on d2 only.
        let r = Replicas::of(&[
            ("b1", &["traefik"]),
            ("b2", &["traefik"]),
            ("w1", &["web", "api"]),
            ("w2", &["web"]),
            ("d1", &["api"]),
            ("d2", &["cache"]),
        ]);
        assert_eq!(
            names(r.batches(&hosts, BatchSize::Hosts(1))),
            [vec!["w1", "d2"], vec!["w2", "d1"], vec!["b1"], vec!["b2"]]
        );
        // Two at a time per group, but never both replicas of web, api or traefik.
        assert_eq!(
            names(r.batches(&hosts, BatchSize::Hosts(2))),
            [vec!["w1", "d2"], vec!["w2", "d1"], vec!["b1"], vec!["b2"]]
        );
        // 100% of each group: still one replica of each service up.
        let spread = Replicas::of(&[("w1", &["a"]), ("w2", &["b"]), ("d1", &["a"])]);
        assert_eq!(
            names(spread.batches(&hosts, BatchSize::Percent(100))),
            [vec!["w1", "w2", "d2"], vec!["d1"], vec!["b1", "b2"]]
        );
        assert_eq!(r.sole("d2"), ["cache"]);
        assert!(r.sole("w1").is_empty());
        assert!(Replicas::default().sole("w1").is_empty());
    }

    #[test]
    fn replicas_are_planned_from_the_folder_for_every_host() {
        let inv = inventory();
        let df = tempfile::tempdir().unwrap();
        for svc in ["web", "api"] {
            std::fs::create_dir(df.path().join(svc)).unwrap();
            std::fs::write(df.path().join(svc).join("Dockerfile"), "FROM scratch\n").unwrap();
        }
        std::fs::write(df.path().join("web/mesh.yml"), "ports: [8000, 8001]\n").unwrap();
        std::fs::write(
            df.path().join("web.yml"),
            "services:\n  web: { labels: { traefik.http.routers.web.rule: \"Host(`a`)\" } }\n",
        )
        .unwrap();
        std::fs::write(df.path().join("db.yml"), "services:\n  api: {}\n").unwrap();
        let r = Replicas::plan(df.path(), &inv, &["w1".into()], |_| VarSet::new()).unwrap();
        assert!(r.known);
        assert!(r.sole("w1").is_empty());
        assert_eq!(r.count("api"), 2);
        let w1: Vec<&Host> = vec![inv.host("w1").unwrap()];
        assert!(r.check_api(Publisher::Mesh, &w1).is_ok());
        // A selected host the folder cannot plan stops the run (b1 runs
        // traefik, which this folder lacks); unselected, it counts as nothing.
        let err = Replicas::plan(df.path(), &inv, &["b1".into()], |_| VarSet::new()).unwrap_err();
        assert!(matches!(err, InputError::Plan(_)), "{err}");
        assert_eq!(r.count("traefik"), 0);
        // No folder: nothing known, nothing sole.
        let none = Replicas::plan(&df.path().join("nope"), &inv, &[], |_| VarSet::new()).unwrap();
        assert!(!none.known && none.sole("w1").is_empty());
    }

    #[test]
    fn a_sole_replica_is_refused_with_what_to_do() {
        let e = CareError::SoleReplica {
            host: "d2".into(),
            services: vec!["cache".into()],
        }
        .to_string();
        assert!(e.contains("d2 holds the only replica of cache"), "{e}");
        assert!(e.contains("nothing was changed"), "{e}");
        assert!(e.contains("Fix:") && e.contains("--allow-downtime"), "{e}");
    }
}
