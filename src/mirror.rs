//! Docker's `.deb` packages, resolved on the controller.
//!
//! mesh reads `<mirror>/dists/<codename>/stable/binary-<arch>/Packages`,
//! picks the newest version of each wanted package (dpkg ordering), and pins
//! name, version, file and sha256 in `docker.lock`; later runs install
//! exactly the lock until `--update-lock`. Every `.deb` is downloaded once
//! into a content-addressed local cache and verified against its pinned
//! sha256 — a mismatch stops the run before any host is touched. No apt
//! repository is ever added to a host.

use crate::deb::{choose_newest, parse_packages, DebError, Lock, LockSet, LockedPackage};
use crate::ops::file::{hex, sha256_local};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// download.docker.com's Debian repository.
pub const DEFAULT_MIRROR: &str = "https://download.docker.com/linux/debian";

/// What `nodes` installs unless the inventory lists other packages.
pub const DEFAULT_PACKAGES: &[&str] = &[
    "containerd.io",
    "docker-ce",
    "docker-ce-cli",
    "docker-buildx-plugin",
    "docker-compose-plugin",
];

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("cannot fetch {url}: {reason}. Fix: check the mirror (--docker-mirror or docker.mirror in the inventory) and the network")]
    Fetch { url: String, reason: String },
    #[error("{url}: sha256 is {got}, but {pinned_by} says {want}; the file was discarded and no host was touched. Fix: if the mirror legitimately changed, re-pin with `mesh nodes --update-lock`, otherwise investigate the mirror")]
    HashMismatch {
        url: String,
        want: String,
        got: String,
        pinned_by: &'static str,
    },
    #[error(transparent)]
    Deb(#[from] DebError),
    #[error("local cache {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A `.deb` ready to push: pinned metadata and the verified local copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDeb {
    pub package: LockedPackage,
    pub path: PathBuf,
}

/// `$MESH_CACHE`, else `$XDG_CACHE_HOME/mesh`, else `~/.cache/mesh`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("MESH_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("mesh");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache/mesh")
}

/// One HTTP agent per run: its connection pool serves the index and every
/// `.deb` from the same mirror.
fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(600)))
            .timeout_connect(Some(Duration::from_secs(15)))
            .build()
            .into()
    })
}

fn join(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// Pinned packages for (codename, arch): from the lock unless it lacks them,
/// lists other packages, or `update` is set; then from the mirror's index.
/// Returns the set and whether the lock changed (the caller saves it).
pub fn pin(
    lock: &mut Lock,
    mirror: &str,
    codename: &str,
    arch: &str,
    wanted: &[String],
    update: bool,
) -> Result<(LockSet, bool), MirrorError> {
    if let Some(set) = lock.get(codename, arch) {
        let mut have: Vec<&str> = set.packages.iter().map(|p| p.name.as_str()).collect();
        let mut want: Vec<&str> = wanted.iter().map(String::as_str).collect();
        have.sort_unstable();
        want.sort_unstable();
        if !update && have == want {
            return Ok((set.clone(), false));
        }
    }
    let url = join(
        mirror,
        &format!("dists/{codename}/stable/binary-{arch}/Packages"),
    );
    let text = agent()
        .get(&url)
        .call()
        .and_then(|mut r| r.body_mut().with_config().limit(64 << 20).read_to_string())
        .map_err(|e| MirrorError::Fetch {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    let entries = parse_packages(&url, &text)?;
    let chosen = choose_newest(&entries, wanted)?;
    let set = LockSet {
        codename: codename.into(),
        arch: arch.into(),
        packages: chosen.iter().map(LockedPackage::from).collect(),
    };
    let changed = lock.get(codename, arch) != Some(&set);
    lock.put(set.clone());
    Ok((set, changed))
}

/// The verified local copy of `pkg`, downloading it into `cache` if needed.
pub fn fetch(cache: &Path, mirror: &str, pkg: &LockedPackage) -> Result<ResolvedDeb, MirrorError> {
    let cache_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MirrorError::Cache { path, source }
    };
    let name = Path::new(&pkg.filename)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| format!("{}.deb", pkg.name));
    let dir = cache.join(&pkg.sha256);
    let path = dir.join(&name);
    if path.exists() {
        // Content-addressed: re-verify anyway, the cache is not trusted blindly.
        if sha256_local(&path).map_err(cache_err(&path))?.1 == pkg.sha256 {
            return Ok(ResolvedDeb {
                package: pkg.clone(),
                path,
            });
        }
        let _ = std::fs::remove_file(&path);
    }
    std::fs::create_dir_all(&dir).map_err(cache_err(&dir))?;
    let url = join(mirror, &pkg.filename);
    let fetch_err = |reason: String| MirrorError::Fetch {
        url: url.clone(),
        reason,
    };
    let response = agent()
        .get(&url)
        .call()
        .map_err(|e| fetch_err(e.to_string()))?;
    let mut body = response.into_body().into_reader();
    let tmp = dir.join(format!(".{name}.part{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp).map_err(cache_err(&tmp))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = body.read(&mut buf).map_err(|e| fetch_err(e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(cache_err(&tmp))?;
    }
    drop(file);
    let got = hex(&hasher.finalize());
    if got != pkg.sha256 {
        let _ = std::fs::remove_file(&tmp);
        return Err(MirrorError::HashMismatch {
            url,
            want: pkg.sha256.clone(),
            got,
            pinned_by: "the lock / mirror index",
        });
    }
    std::fs::rename(&tmp, &path).map_err(cache_err(&path))?;
    Ok(ResolvedDeb {
        package: pkg.clone(),
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_join_without_double_slashes() {
        assert_eq!(
            join("http://m/debian/", "/pool/a.deb"),
            "http://m/debian/pool/a.deb"
        );
        assert_eq!(join("http://m", "dists/x"), "http://m/dists/x");
    }

    #[test]
    fn a_matching_lock_is_used_without_the_network() {
        let set = LockSet {
            codename: "bookworm".into(),
            arch: "amd64".into(),
            packages: vec![LockedPackage {
                name: "docker.io".into(),
                version: "20.10.24+dfsg1-1+b3".into(),
                filename: "pool/d/docker.io.deb".into(),
                size: 3,
                sha256: "00".repeat(32),
            }],
        };
        let mut lock = Lock::default();
        lock.put(set.clone());
        // An unreachable mirror proves no fetch happens.
        let (got, changed) = pin(
            &mut lock,
            "http://127.0.0.1:9",
            "bookworm",
            "amd64",
            &["docker.io".to_string()],
            false,
        )
        .unwrap();
        assert_eq!(got, set);
        assert!(!changed);
        let err = pin(
            &mut lock,
            "http://127.0.0.1:9",
            "bookworm",
            "amd64",
            &["docker.io".into()],
            true,
        )
        .unwrap_err();
        assert!(matches!(err, MirrorError::Fetch { .. }), "{err}");
    }

    #[test]
    fn a_cached_file_with_the_wrong_hash_is_refetched_and_refused() {
        let cache = tempfile::tempdir().unwrap();
        let pkg = LockedPackage {
            name: "x".into(),
            version: "1".into(),
            filename: "pool/x_1_amd64.deb".into(),
            size: 3,
            sha256: "ab".repeat(32),
        };
        let dir = cache.path().join(&pkg.sha256);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("x_1_amd64.deb"), b"bad").unwrap();
        // The corrupt copy is dropped; the (unreachable) mirror is asked again.
        let err = fetch(cache.path(), "http://127.0.0.1:9", &pkg).unwrap_err();
        assert!(matches!(err, MirrorError::Fetch { .. }), "{err}");
        assert!(!dir.join("x_1_amd64.deb").exists());
    }
}
