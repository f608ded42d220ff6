//! Step "docker": Docker from pinned `.deb` files, no apt repository added.
//!
//! A cluster stage runs first, before any host is touched: it learns each
//! host's Debian codename and architecture, pins the packages in
//! `docker.lock` (see [`crate::mirror`]) and verifies every download. Then
//! each host whose installed versions differ from the pins gets exactly the
//! `.deb`s it lacks, installed with `apt-get install ./x.deb` (dependencies
//! come from the host's own Debian repositories), and docker is enabled.

use crate::deb::Lock;
use crate::mirror::{self, MirrorError, ResolvedDeb};
use crate::ops::{
    apt, converge, AptUpdate, Decision, FileOp, Op, OpCtx, OpError, OpFailure, UnitOp,
};
use crate::phases::{
    converge_ops, on_each_host, ArchError, ClusterOutcome, ClusterStep, HostCtx, Step, StepOutcome,
    TaskFailed,
};
use crate::quote::{Cmd, Script};
use crate::release::ReleaseKey;
use crate::ssh::{BoxFut, Input};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Where pushed `.deb`s are kept on hosts (re-runs need not push them again).
const HOST_DEBS: &str = "/var/cache/mesh/debs";

/// (codename, Debian arch)
type Key = (String, String);

/// Why a host cannot get Docker's packages.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(transparent)]
    Arch(#[from] ArchError),
    /// Gathering the host's facts failed.
    #[error(transparent)]
    Facts(OpError),
    #[error("no VERSION_CODENAME in /etc/os-release: is this Debian?")]
    NoCodename,
    #[error("no Docker packages resolved for {codename}/{arch}")]
    NotResolved { codename: String, arch: String },
    #[error("{}: {source}", .path.display())]
    ReadDeb {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{label}: {source}")]
    Upload { label: String, source: OpError },
}

/// Shared by the cluster stage (which resolves) and the host step (which installs).
pub struct DockerPlan {
    pub mirror: String,
    /// The mirror's release key file (`docker.signing_key`); Docker's own
    /// built-in key when unset.
    pub signing_key: Option<PathBuf>,
    pub packages: Vec<String>,
    pub lock_path: PathBuf,
    pub cache: PathBuf,
    pub update_lock: bool,
    pub dry_run: bool,
    pub apt_cache_valid_seconds: u64,
    resolved: Mutex<BTreeMap<Key, Arc<Vec<ResolvedDeb>>>>,
}

impl DockerPlan {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mirror: String,
        signing_key: Option<PathBuf>,
        packages: Vec<String>,
        lock_path: PathBuf,
        cache: PathBuf,
        update_lock: bool,
        dry_run: bool,
        apt_cache_valid_seconds: u64,
    ) -> Arc<Self> {
        Arc::new(DockerPlan {
            mirror,
            signing_key,
            packages,
            lock_path,
            cache,
            update_lock,
            dry_run,
            apt_cache_valid_seconds,
            resolved: Mutex::default(),
        })
    }

    /// Pin and fetch every set; returns a summary line. Blocking (network, disk).
    fn resolve(&self, keys: &[Key]) -> Result<String, MirrorError> {
        let mut lock = Lock::load(&self.lock_path)?;
        let key = match &self.signing_key {
            Some(path) => ReleaseKey::load(path)?,
            None => ReleaseKey::docker(),
        };
        let mut changed = false;
        let mut lines = Vec::new();
        for (codename, arch) in keys {
            let (set, c) = mirror::pin(
                &mut lock,
                &self.mirror,
                &key,
                codename,
                arch,
                &self.packages,
                self.update_lock,
            )?;
            changed |= c;
            let debs = set
                .packages
                .iter()
                .map(|p| mirror::fetch(&self.cache.join("debs"), &self.mirror, p))
                .collect::<Result<Vec<_>, _>>()?;
            let names: Vec<String> = debs
                .iter()
                .map(|d| format!("{} {}", d.package.name, d.package.version))
                .collect();
            lines.push(format!("{codename}/{arch}: {}", names.join(", ")));
            self.resolved
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((codename.clone(), arch.clone()), Arc::new(debs));
        }
        if changed && !self.dry_run {
            lock.save(&self.lock_path)?;
            lines.push(format!("pinned in {}", self.lock_path.display()));
        }
        Ok(lines.join("\n"))
    }
}

/// The host's (codename, Debian arch): the inventory's arch wins over `uname -m`.
async fn host_key(ctx: &HostCtx) -> Result<Key, DockerError> {
    let arch = ctx.arch().await?;
    let facts = ctx.facts().await.map_err(|f| DockerError::Facts(f.error))?;
    if facts.codename.is_empty() {
        return Err(DockerError::NoCodename);
    }
    Ok((facts.codename.clone(), arch.deb_arch().to_string()))
}

/// Cluster stage of "docker": resolve and verify the packages for all hosts.
pub struct DockerResolve(pub Arc<DockerPlan>);

impl ClusterStep for DockerResolve {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn run<'a>(&'a self, hosts: &'a [Arc<HostCtx>]) -> BoxFut<'a, ClusterOutcome> {
        Box::pin(async move {
            let mut out = ClusterOutcome::default();
            let found = match on_each_host(hosts, |ctx| async move { host_key(&ctx).await }).await {
                Ok(found) => found,
                Err(e) => {
                    out.abort = Some(e.to_string());
                    return out;
                }
            };
            let mut keys: Vec<Key> = Vec::new();
            for (ctx, key) in found {
                match key {
                    Ok(key) if !keys.contains(&key) => keys.push(key),
                    Ok(_) => {}
                    Err(e) => out
                        .host_failures
                        .push((ctx.host.name.clone(), e.to_string())),
                }
            }
            let plan = self.0.clone();
            match tokio::task::spawn_blocking(move || plan.resolve(&keys)).await {
                Ok(Ok(message)) => out.message = Some(message),
                Ok(Err(e)) => {
                    // An index that fails verification is refused input: exit 2.
                    out.refused = e.is_untrusted_index();
                    out.abort = Some(e.to_string());
                }
                Err(e) => out.abort = Some(TaskFailed(e).to_string()),
            }
            out
        })
    }
}

/// Host step "docker".
pub struct Docker(pub Arc<DockerPlan>);

impl Docker {
    fn debs(&self, key: &Key) -> Result<Arc<Vec<ResolvedDeb>>, DockerError> {
        self.0
            .resolved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
            .ok_or_else(|| DockerError::NotResolved {
                codename: key.0.clone(),
                arch: key.1.clone(),
            })
    }
}

impl Step for Docker {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn run<'a>(&'a self, ctx: &'a HostCtx) -> BoxFut<'a, Result<StepOutcome, OpFailure>> {
        Box::pin(async move {
            let ops = async {
                let key = host_key(ctx).await?;
                let debs = self.debs(&key)?;
                Ok::<_, DockerError>(vec![
                    Box::new(AptUpdate {
                        cache_valid_seconds: self.0.apt_cache_valid_seconds,
                    }) as Box<dyn Op>,
                    Box::new(DebInstall { debs }),
                    Box::new(UnitOp::existing("docker.service")),
                ])
            }
            .await;
            converge_ops(ctx, "docker", ops).await
        })
    }
}

/// Installs pinned `.deb`s whose versions the host lacks.
struct DebInstall {
    debs: Arc<Vec<ResolvedDeb>>,
}

impl DebInstall {
    fn names(&self) -> Vec<&str> {
        self.debs.iter().map(|d| d.package.name.as_str()).collect()
    }

    fn host_path(deb: &ResolvedDeb) -> String {
        let file = deb.path.file_name().unwrap_or_default().to_string_lossy();
        format!("{HOST_DEBS}/{file}")
    }

    /// Indexes of the packages whose installed version is not the pinned one.
    fn outdated(&self, probe: &str) -> Vec<(usize, String)> {
        let installed: BTreeMap<&str, &str> = probe
            .lines()
            .filter_map(|l| l.strip_prefix("pkg "))
            .filter_map(|l| {
                let mut f = l.split(' ');
                let (name, version, status) = (f.next()?, f.next()?, f.next()?);
                (status == "ii").then_some((name, version))
            })
            .collect();
        self.debs
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                let have = installed.get(d.package.name.as_str());
                (have != Some(&d.package.version.as_str())).then(|| {
                    (
                        i,
                        format!(
                            "{} {} (have {})",
                            d.package.name,
                            d.package.version,
                            have.unwrap_or(&"none")
                        ),
                    )
                })
            })
            .collect()
    }
}

/// A package's bit in the decision flags; past 31 packages there is none.
fn bit(i: usize) -> u32 {
    u32::try_from(i)
        .ok()
        .and_then(|i| 1u32.checked_shl(i))
        .unwrap_or(0)
}

/// Whether package `i` is to be installed: its bit, or always past the
/// 32 a flag word holds (reinstalling the pinned version is a no-op).
fn wanted(flags: u32, i: usize) -> bool {
    flags != 0 && (bit(i) == 0 || flags & bit(i) != 0)
}

impl Op for DebInstall {
    fn label(&self) -> String {
        format!("install {}", self.names().join(" "))
    }

    fn probe(&self, _ctx: &OpCtx<'_>) -> Option<Script> {
        let mut s = Script::new();
        s.cmd(
            Cmd::new("dpkg-query")
                .args(["-W", "-f=pkg ${Package} ${Version} ${db:Status-Abbrev}\\n"])
                .args(self.names()),
        );
        Some(s)
    }

    fn decide(&self, probe: &str, _recheck: Option<&str>, _triggered: bool) -> Decision {
        let outdated = self.outdated(probe);
        if outdated.is_empty() {
            return Decision::Unchanged;
        }
        let flags = outdated.iter().fold(0u32, |f, (i, _)| f | bit(*i));
        let reasons: Vec<String> = outdated.into_iter().map(|(_, r)| r).collect();
        Decision::change(reasons.join(", "), flags)
    }

    fn apply<'a>(&'a self, ctx: &'a OpCtx<'a>, flags: u32) -> BoxFut<'a, Result<bool, OpError>> {
        Box::pin(async move {
            let needed: Vec<&ResolvedDeb> = self
                .debs
                .iter()
                .enumerate()
                .filter(|(i, _)| wanted(flags, *i))
                .map(|(_, d)| d)
                .collect();
            // Push the .debs (skipped when an identical copy is already there).
            let mut uploads: Vec<Box<dyn Op>> = Vec::new();
            for d in &needed {
                let op = FileOp::from_local(Self::host_path(d), &d.path).map_err(|source| {
                    OpError::Step(Box::new(DockerError::ReadDeb {
                        path: d.path.clone(),
                        source,
                    }))
                })?;
                uploads.push(Box::new(op));
            }
            converge(ctx, &uploads, false).await.map_err(|f| {
                OpError::Step(Box::new(DockerError::Upload {
                    label: f.label,
                    source: f.error,
                }))
            })?;
            let files: Vec<String> = needed.iter().map(|d| Self::host_path(d)).collect();
            let script = apt::install_script(&files, &["--allow-downgrades"]);
            ctx.long()
                .run_ok("apt-get install docker .debs", script.as_str(), Input::None)
                .await?;
            Ok(true)
        })
    }

    fn system_changing(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn package_flags_never_overflow() {
        assert_eq!(super::bit(0), 1);
        assert_eq!(super::bit(31), 1 << 31);
        assert_eq!(super::bit(32), 0);
        assert_eq!(super::bit(usize::MAX), 0);
        let flags = super::bit(3);
        assert!(super::wanted(flags, 3) && !super::wanted(flags, 2));
        // Past the 32 a flag word holds: installed whenever anything is.
        assert!(super::wanted(flags, 40));
        assert!(!super::wanted(0, 40));
    }

    use super::*;
    use crate::deb::LockedPackage;

    fn install() -> DebInstall {
        let deb = |name: &str, version: &str| ResolvedDeb {
            package: LockedPackage {
                name: name.into(),
                version: version.into(),
                filename: format!("pool/{name}.deb"),
                size: 1,
                sha256: "00".repeat(32),
            },
            path: PathBuf::from(format!("/cache/{name}_{version}_amd64.deb")),
        };
        DebInstall {
            debs: Arc::new(vec![
                deb("containerd.io", "1.7.27-1"),
                deb("docker-ce", "5:28.0.1-1"),
            ]),
        }
    }

    #[test]
    fn only_packages_with_other_versions_are_installed() {
        let i = install();
        let probe = "pkg containerd.io 1.7.27-1 ii\npkg docker-ce 5:27.5.0-1 ii\n";
        match i.decide(probe, None, false) {
            Decision::Change { reason, flags } => {
                assert_eq!(flags, 0b10);
                assert_eq!(reason, "docker-ce 5:28.0.1-1 (have 5:27.5.0-1)");
            }
            d => panic!("{d:?}"),
        }
        let converged = "pkg containerd.io 1.7.27-1 ii\npkg docker-ce 5:28.0.1-1 ii\n";
        assert_eq!(i.decide(converged, None, false), Decision::Unchanged);
        let removed =
            "pkg containerd.io 1.7.27-1 rc\ndpkg-query: no packages found matching docker-ce\n";
        assert!(matches!(
            i.decide(removed, None, false),
            Decision::Change { flags: 0b11, .. }
        ));
    }

    #[test]
    fn debs_go_to_the_hosts_cache_under_their_file_name() {
        let i = install();
        assert_eq!(
            DebInstall::host_path(&i.debs[1]),
            "/var/cache/mesh/debs/docker-ce_5:28.0.1-1_amd64.deb"
        );
    }
}
