//! Docker's `.deb` packages, resolved on the controller.
//!
//! mesh reads `<mirror>/dists/<codename>/stable/binary-<arch>/Packages`,
//! picks the newest version of each wanted package (dpkg ordering), and pins
//! name, version, file and sha256 in `docker.lock`; later runs install
//! exactly the lock until `--update-lock`. Every `.deb` is downloaded once
//! into a content-addressed local cache and verified against its pinned
//! sha256 — a mismatch stops the run before any host is touched. No apt
//! repository is ever added to a host.
//!
//! The index is authenticated like apt does it (see [`crate::release`]):
//! `dists/<codename>/InRelease` must carry a valid signature of the release
//! key, and `Packages` must match the size and SHA256 it lists. Credentials
//! in a mirror URL (`https://user:token@host/...`) never appear in messages.

use crate::deb::{choose_newest, parse_packages, DebError, Lock, LockSet, LockedPackage};
use crate::ops::file::{hex, sha256_local};
use crate::release::{ReleaseError, ReleaseKey};
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
    #[error("{url} does not exist: mesh installs Docker only from a signed repository index, as apt does; no host was touched. Fix: use a mirror that publishes dists/<codename>/InRelease signed with its release key (and set docker.signing_key if that key is not Docker's)")]
    MissingInRelease { url: String },
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error(transparent)]
    Deb(#[from] DebError),
    #[error("local cache {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl MirrorError {
    /// The repository index failed verification (signature, InRelease
    /// missing, or a Packages file other than the signed one).
    pub fn is_untrusted_index(&self) -> bool {
        matches!(
            self,
            MirrorError::Release(_) | MirrorError::MissingInRelease { .. }
        )
    }
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

/// Why a GET gave no body.
enum Fetched {
    NotFound,
    Failed(MirrorError),
}

/// The body of `url` (at most `limit` bytes); errors name the URL without
/// the credentials of `mirror`.
fn get(mirror: &str, url: &str, limit: u64) -> Result<Vec<u8>, Fetched> {
    agent()
        .get(url)
        .call()
        .and_then(|mut r| r.body_mut().with_config().limit(limit).read_to_vec())
        .map_err(|e| match e {
            ureq::Error::StatusCode(404) => Fetched::NotFound,
            e => Fetched::Failed(fetch_error(mirror, url, &e)),
        })
}

fn fetch_error(mirror: &str, url: &str, e: &dyn std::fmt::Display) -> MirrorError {
    let mut reason = e.to_string();
    if let Some(secret) = userinfo(mirror).filter(|s| !s.is_empty()) {
        reason = reason.replace(secret, "***");
    }
    MirrorError::Fetch {
        url: redact_url(url),
        reason,
    }
}

/// The `user:password` part of a URL's authority, if any.
fn userinfo(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    authority.rfind('@').map(|at| &authority[..at])
}

/// `url` with any `user:password@` replaced by `***@`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match userinfo(url) {
        Some(secret) => url.replacen(&format!("{secret}@"), "***@", 1),
        None => url.to_string(),
    }
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
    key: &ReleaseKey,
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
    // InRelease first: nothing the mirror says is believed before its signature.
    let inrelease = join(mirror, &format!("dists/{codename}/InRelease"));
    let signed = match get(mirror, &inrelease, 16 << 20) {
        Err(Fetched::NotFound) => {
            return Err(MirrorError::MissingInRelease {
                url: redact_url(&inrelease),
            })
        }
        Err(Fetched::Failed(e)) => return Err(e),
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
    };
    let release = key.verify_inrelease(&redact_url(&inrelease), &signed, codename)?;
    let index = format!("stable/binary-{arch}/Packages");
    let packages = join(mirror, &format!("dists/{codename}/{index}"));
    let url = redact_url(&packages);
    let bytes = get(mirror, &packages, 64 << 20).map_err(|e| match e {
        Fetched::NotFound => MirrorError::Fetch {
            url: url.clone(),
            reason: "http status: 404".into(),
        },
        Fetched::Failed(e) => e,
    })?;
    release.check(&url, &index, &bytes)?;
    let text = String::from_utf8_lossy(&bytes);
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
    let fetch_err = |reason: String| fetch_error(mirror, &url, &reason);
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
            url: redact_url(&url),
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
            &ReleaseKey::docker(),
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
            &ReleaseKey::docker(),
            "bookworm",
            "amd64",
            &["docker.io".into()],
            true,
        )
        .unwrap_err();
        assert!(matches!(err, MirrorError::Fetch { .. }), "{err}");
    }

    /// Serves `files` (path → body) over HTTP on loopback; 404 for the rest.
    fn serve(files: Vec<(&'static str, Vec<u8>)>) -> String {
        use std::io::BufRead;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut line = String::new();
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                // Skip the headers.
                let mut header = String::new();
                while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                    header.clear();
                }
                let path = line.split(' ').nth(1).unwrap_or("");
                let (status, body) = match files.iter().find(|(p, _)| *p == path) {
                    Some((_, body)) => ("200 OK", body.clone()),
                    None => ("404 Not Found", b"not found".to_vec()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        url
    }

    #[test]
    fn the_index_is_used_only_when_its_signed_inrelease_vouches_for_it() {
        use crate::release::testing::{clearsign, TEST_PUBLIC, TEST_SECRET};
        let packages = b"Package: docker-ce\nVersion: 5:28.0.1-1\nArchitecture: amd64\n\
                         Filename: pool/docker-ce.deb\nSize: 3\nSHA256: "
            .iter()
            .copied()
            .chain("ab".repeat(32).bytes())
            .chain(*b"\n")
            .collect::<Vec<u8>>();
        let release = |index: &[u8]| {
            format!(
                "Codename: bookworm\nSHA256:\n {} {} stable/binary-amd64/Packages\n",
                hex(&Sha256::digest(index)),
                index.len()
            )
        };
        let key = ReleaseKey::from_armored(TEST_PUBLIC, "test key").unwrap();
        let wanted = ["docker-ce".to_string()];
        let pin_from = |url: &str| {
            pin(
                &mut Lock::default(),
                url,
                &key,
                "bookworm",
                "amd64",
                &wanted,
                true,
            )
        };
        let signed = clearsign(TEST_SECRET, &release(&packages)).into_bytes();
        let good = serve(vec![
            ("/dists/bookworm/InRelease", signed.clone()),
            (
                "/dists/bookworm/stable/binary-amd64/Packages",
                packages.clone(),
            ),
        ]);
        let (set, changed) = pin_from(&good).unwrap();
        assert!(changed);
        assert_eq!(set.packages[0].version, "5:28.0.1-1");

        // One byte of the index changed after signing.
        let mut tampered = packages.clone();
        tampered[0] = b'p';
        let bad = serve(vec![
            ("/dists/bookworm/InRelease", signed),
            ("/dists/bookworm/stable/binary-amd64/Packages", tampered),
        ]);
        let err = pin_from(&bad).unwrap_err();
        assert!(
            matches!(
                err,
                MirrorError::Release(ReleaseError::IndexMismatch { .. })
            ),
            "{err}"
        );

        // No InRelease at all.
        let unsigned = serve(vec![(
            "/dists/bookworm/stable/binary-amd64/Packages",
            packages.clone(),
        )]);
        let err = pin_from(&unsigned).unwrap_err();
        assert!(matches!(err, MirrorError::MissingInRelease { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("/dists/bookworm/InRelease does not exist"),
            "{err}"
        );
    }

    #[test]
    fn credentials_in_a_mirror_url_are_redacted() {
        assert_eq!(
            redact_url("https://user:tok3n@m.example/debian/dists/x"),
            "https://***@m.example/debian/dists/x"
        );
        assert_eq!(redact_url("http://m.example/a@b"), "http://m.example/a@b");
        assert_eq!(redact_url("https://m.example"), "https://m.example");
        // Errors from both the index and the .deb downloads.
        let mirror = "http://user:tok3n@127.0.0.1:9/debian";
        let mut lock = Lock::default();
        let err = pin(
            &mut lock,
            mirror,
            &ReleaseKey::docker(),
            "bookworm",
            "amd64",
            &["docker-ce".into()],
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(
            !err.contains("tok3n") && err.contains("***@127.0.0.1"),
            "{err}"
        );
        let cache = tempfile::tempdir().unwrap();
        let pkg = three_byte_package();
        let err = fetch(cache.path(), mirror, &pkg).unwrap_err().to_string();
        assert!(
            !err.contains("tok3n") && err.contains("***@127.0.0.1"),
            "{err}"
        );
    }

    /// `pool/x_1_amd64.deb`, 3 bytes, pinned to a sha256 no file has.
    fn three_byte_package() -> LockedPackage {
        LockedPackage {
            name: "x".into(),
            version: "1".into(),
            filename: "pool/x_1_amd64.deb".into(),
            size: 3,
            sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn a_cached_file_with_the_wrong_hash_is_refetched_and_refused() {
        let cache = tempfile::tempdir().unwrap();
        let pkg = three_byte_package();
        let dir = cache.path().join(&pkg.sha256);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("x_1_amd64.deb"), b"bad").unwrap();
        // The corrupt copy is dropped; the (unreachable) mirror is asked again.
        let err = fetch(cache.path(), "http://127.0.0.1:9", &pkg).unwrap_err();
        assert!(matches!(err, MirrorError::Fetch { .. }), "{err}");
        assert!(!dir.join("x_1_amd64.deb").exists());
    }
}
