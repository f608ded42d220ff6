//! `mesh nodes`: bootstrap hosts. Steps, in order: basic (packages,
//! logrotate, journald, firewall), docker (pinned .debs), wesher (overlay),
//! garage (object store). wesher and garage start from the `--first-ip` node.

mod basic;
mod docker;
mod firewall;
mod garage;
mod wesher;

pub use basic::Basic;
pub use docker::{Docker, DockerPlan, DockerResolve};
pub use firewall::Firewall;
pub use garage::{Garage, GarageFirstId, GarageLayout, GaragePlan, GarageSecret};
pub use wesher::{Wesher, WesherKey, WesherPlan};

use super::{Phase, Stage};
use crate::inventory::{Arch, Host, Inventory};
use crate::mirror;
use crate::ops::FileOp;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Default apt cache window: a warm run within an hour stays off the network.
pub const APT_CACHE_VALID_SECONDS: u64 = 3600;

/// Options of `mesh nodes` that shape the phase.
#[derive(Debug, Clone, Default)]
pub struct NodesOptions {
    /// `--docker-mirror`, over the inventory's `docker.mirror`.
    pub docker_mirror: Option<String>,
    pub update_lock: bool,
    pub dry_run: bool,
    /// Local cache for downloads (`.deb`s).
    pub cache: PathBuf,
    /// The `--first-ip` host; the overlay and storage steps need it.
    pub first: Option<Host>,
    /// `assets/<arch>/` binaries (wesher, garage).
    pub assets: PathBuf,
    pub secrets_path: PathBuf,
}

/// A value one stage settles and later stages (on any host task) read.
pub struct Slot<T>(Mutex<Option<T>>);

impl<T: Clone> Slot<T> {
    pub fn new() -> Self {
        Slot(Mutex::new(None))
    }

    pub fn get(&self) -> Option<T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, value: T) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
    }
}

impl<T: Clone> Default for Slot<T> {
    fn default() -> Self {
        Slot::new()
    }
}

/// A binary mesh installs from `<assets>/<arch>/` is missing or unreadable.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("missing {}. Fix: put the {name} binary for {arch} there (or pass --assets DIR)", .path.display())]
    Missing {
        path: PathBuf,
        name: String,
        arch: Arch,
    },
    #[error(
        "missing {name} in {} for every architecture ({}). Fix: put the {name} binary for your hosts there (or pass --assets DIR)",
        .assets.display(),
        Arch::ALL.map(|a| format!("{a}/{name}")).join(", ")
    )]
    MissingForEveryArch { assets: PathBuf, name: String },
    #[error("{}: {source}", .path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `<assets>/<arch>/<name>`, which must exist.
pub fn asset(assets: &Path, arch: Arch, name: &str) -> Result<PathBuf, AssetError> {
    let path = assets.join(arch.to_string()).join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(AssetError::Missing {
            path,
            name: name.to_string(),
            arch,
        })
    }
}

/// The op installing `<assets>/<arch>/<name>` as the executable `dest`
/// (id `<name>-bin`, for units to restart on).
pub fn binary_op(assets: &Path, arch: Arch, name: &str, dest: &str) -> Result<FileOp, AssetError> {
    let path = asset(assets, arch, name)?;
    match FileOp::from_local(dest, &path) {
        Ok(op) => Ok(op.mode(0o755).id(&format!("{name}-bin"))),
        Err(source) => Err(AssetError::Unreadable { path, source }),
    }
}

/// The up-front asset check: the host's own architecture when the inventory
/// declares it; otherwise (detected on the host later) at least one must exist.
pub fn check_asset(assets: &Path, arch: Option<Arch>, name: &str) -> Result<(), AssetError> {
    match arch {
        Some(arch) => asset(assets, arch, name).map(|_| ()),
        None if Arch::ALL.iter().any(|a| asset(assets, *a, name).is_ok()) => Ok(()),
        None => Err(AssetError::MissingForEveryArch {
            assets: assets.to_path_buf(),
            name: name.to_string(),
        }),
    }
}

/// Steps that bootstrap from the first node and so need `--first-ip`.
pub const NEEDS_FIRST: &[&str] = &["wesher", "garage"];

/// The `nodes` phase for this inventory.
pub fn phase(inv: &Inventory, opts: &NodesOptions) -> Phase {
    let apt_cache_valid_seconds = inv
        .apt
        .cache_valid_seconds
        .unwrap_or(APT_CACHE_VALID_SECONDS);
    let docker = DockerPlan::new(
        opts.docker_mirror
            .clone()
            .or_else(|| inv.docker.mirror.clone())
            .unwrap_or_else(|| mirror::DEFAULT_MIRROR.to_string()),
        inv.docker.signing_key.clone(),
        inv.docker.packages.clone().unwrap_or_else(|| {
            mirror::DEFAULT_PACKAGES
                .iter()
                .map(|p| p.to_string())
                .collect()
        }),
        inv.beside("docker.lock"),
        opts.cache.clone(),
        opts.update_lock,
        opts.dry_run,
        apt_cache_valid_seconds,
    );
    let mut stages = vec![
        // Pins and verifies Docker's packages before any host is touched.
        Stage::Cluster(Box::new(DockerResolve(docker.clone()))),
        Stage::Hosts(Box::new(Basic {
            apt_cache_valid_seconds,
        })),
        Stage::Hosts(Box::new(Docker(docker))),
    ];
    if let Some(first) = &opts.first {
        let wesher = WesherPlan::new(
            first.clone(),
            opts.assets.clone(),
            inv.overlay.net.clone(),
            opts.secrets_path.clone(),
            opts.dry_run,
        );
        let garage = GaragePlan::new(
            first.clone(),
            inv.hosts.clone(),
            opts.assets.clone(),
            opts.secrets_path.clone(),
            opts.dry_run,
            inv.hosts.len().clamp(1, 3),
        );
        stages.extend([
            Stage::Cluster(Box::new(WesherKey(wesher.clone()))),
            Stage::Hosts(Box::new(Wesher {
                plan: wesher.clone(),
                first: true,
            })),
            Stage::Barrier("wesher"),
            Stage::Hosts(Box::new(Wesher {
                plan: wesher,
                first: false,
            })),
            Stage::Cluster(Box::new(GarageSecret(garage.clone()))),
            Stage::Hosts(Box::new(Garage {
                plan: garage.clone(),
                first: true,
            })),
            Stage::Cluster(Box::new(GarageFirstId(garage.clone()))),
            Stage::Hosts(Box::new(Garage {
                plan: garage.clone(),
                first: false,
            })),
            Stage::Cluster(Box::new(GarageLayout(garage))),
        ]);
    }
    Phase {
        name: "nodes",
        stages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_asset_names_its_path_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let err = asset(dir.path(), Arch::Aarch64, "wesher")
            .unwrap_err()
            .to_string();
        assert!(err.contains("aarch64/wesher"), "{err}");
        assert!(err.contains("Fix:"), "{err}");
        std::fs::create_dir_all(dir.path().join("x86_64")).unwrap();
        std::fs::write(dir.path().join("x86_64/garage"), "bin").unwrap();
        assert_eq!(
            asset(dir.path(), Arch::X86_64, "garage").unwrap(),
            dir.path().join("x86_64/garage")
        );
        // Undeclared arch: fine while any architecture has it.
        check_asset(dir.path(), None, "garage").unwrap();
        let err = check_asset(dir.path(), None, "wesher")
            .unwrap_err()
            .to_string();
        assert!(err.contains("x86_64/wesher, aarch64/wesher"), "{err}");
        assert!(check_asset(dir.path(), Some(Arch::Aarch64), "garage").is_err());
    }
}
