//! The controller's image cache: the `mesh/*` images its Docker keeps and
//! the compressed archives (`docker save | zstd`) shipped to hosts that
//! lack an image, under `<cache root>/images` (a 0700 directory, 0600 files).
//!
//! An archive is named `<image id>.<sha256 of the file>.tar.zst` and used
//! only while its content still hashes to its name; otherwise it is made
//! again. Both are bounded after every build and by `mesh prune`:
//! - per service, Docker keeps the newest [`KEEP_BUILDS`] builds (a host
//!   keeps its live build and [`KEEP_PREVIOUS`] to roll back to, so an
//!   older one is never shipped again), the builds this run uses, and any
//!   built in the last [`RECENT_SECS`] (another run may still ship it);
//! - archives stay only for images Docker still has, newest first, up to a
//!   size cap: [`DEFAULT_CAP`] (5 GiB), or `MESH_IMAGE_CACHE_MAX`;
//! - files this mesh never uses (an interrupted save's temporary file, an
//!   archive named the older way, without its hash) go once an hour old.

use super::slots::KEEP_PREVIOUS;
use crate::ops::room::human_bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};
use tokio::process::Command;

/// Builds of one service the controller's Docker keeps: the live one and
/// the rollback window.
pub(crate) const KEEP_BUILDS: usize = KEEP_PREVIOUS + 1;
/// A build younger than this is never removed (another run may ship it).
pub(crate) const RECENT_SECS: i64 = 3600;
/// The archive cache's default size cap: 5 GiB.
pub(crate) const DEFAULT_CAP: u64 = 5 << 30;
/// The environment variable that sets the cap (`800M`, `20G`, bytes).
pub(crate) const CAP_ENV: &str = "MESH_IMAGE_CACHE_MAX";
const ARCHIVE_EXT: &str = ".tar.zst";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{CAP_ENV}={value:?} is not a size. Fix: write a number of bytes, or one with K, M, G or T (powers of 1024), e.g. {CAP_ENV}=5G")]
    BadCap { value: String },
    #[error("{tag} is not built on this machine. Fix: run mesh services again (it builds what is missing)")]
    NotBuilt { tag: String },
    #[error("docker save {tag} | zstd failed: {detail}. Fix: check that zstd is installed on this machine and that its disk has room")]
    Save { tag: String, detail: String },
    #[error("cannot run docker on this machine: {0}. Fix: install and start Docker here")]
    NoDocker(String),
    #[error("{what}: {source}")]
    Local {
        what: String,
        source: std::io::Error,
    },
}

fn local(what: String) -> impl FnOnce(std::io::Error) -> CacheError {
    move |source| CacheError::Local { what, source }
}

/// `800M`, `5G`, `1T`, `123` (bytes): K, M, G, T are powers of 1024.
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last()? {
        (i, 'K' | 'k') => (&t[..i], 10),
        (i, 'M' | 'm') => (&t[..i], 20),
        (i, 'G' | 'g') => (&t[..i], 30),
        (i, 'T' | 't') => (&t[..i], 40),
        _ => (t, 0),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// The archive cache's cap: `MESH_IMAGE_CACHE_MAX`, else [`DEFAULT_CAP`].
pub(crate) fn cap_from_env() -> Result<u64, CacheError> {
    match std::env::var(CAP_ENV) {
        Ok(v) => parse_size(&v).ok_or(CacheError::BadCap { value: v }),
        Err(_) => Ok(DEFAULT_CAP),
    }
}

/// Create `dir` (and missing parents) 0700, and make an existing one 0700.
pub(crate) fn private_dir(dir: &Path) -> Result<(), CacheError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(local(format!("creating {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(local(format!("chmod 700 {}", dir.display())))
}

/// The archives' directory under the cache root.
pub(crate) fn archives_dir(cache: &Path) -> PathBuf {
    cache.join("images")
}

fn archive_name(id: &str, sha: &str) -> String {
    format!("{id}.{sha}{ARCHIVE_EXT}")
}

/// `(image id, content sha256)` of an archive's file name.
fn parse_archive_name(name: &str) -> Option<(&str, &str)> {
    let (id, sha) = name.strip_suffix(ARCHIVE_EXT)?.split_once('.')?;
    let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex64(id) && hex64(sha)).then_some((id, sha))
}

fn hash_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(crate::ops::file::hex(&hasher.finalize()))
}

/// The archive of image `id` (tag `tag`), made on first need: an existing
/// one whose content hash matches its name, or a new `docker save | zstd`
/// written privately and renamed into place. The cache is then held to `cap`.
pub(crate) async fn archive(
    tag: &str,
    id: Option<&str>,
    dir: &Path,
    cap: u64,
) -> Result<PathBuf, CacheError> {
    let id = id
        .ok_or_else(|| CacheError::NotBuilt { tag: tag.into() })?
        .trim_start_matches("sha256:")
        .to_string();
    private_dir(dir)?;
    if let Some(found) = verified(dir, &id).await? {
        // Used now: the cap removes the least recently used first.
        let _ = std::fs::File::options()
            .append(true)
            .open(&found)
            .and_then(|f| f.set_modified(SystemTime::now()));
        return Ok(found);
    }
    let tmp = dir.join(format!(
        ".{id}.{}.{}.tmp",
        std::process::id(),
        crate::secrets::random_hex(4).map_err(local("picking a temporary name".into()))?
    ));
    let file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(local(format!("creating {}", tmp.display())))?;
    let mut save = Command::new("bash");
    save.args([
        "-c",
        "set -o pipefail; docker save \"$1\" | zstd -q -3 -T0 -c",
        "mesh-save",
        tag,
    ]);
    let made = into_file(save, file, &tmp, tag).await;
    let named = match made {
        Ok(()) => {
            let t = tmp.clone();
            tokio::task::spawn_blocking(move || hash_file(&t))
                .await
                .map_err(|e| local("hashing an archive".into())(std::io::Error::other(e)))?
                .map_err(local(format!("hashing {}", tmp.display())))
        }
        Err(e) => Err(e),
    };
    let sha = match named {
        Ok(sha) => sha,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let path = dir.join(archive_name(&id, &sha));
    std::fs::rename(&tmp, &path).map_err(local(format!("renaming {}", tmp.display())))?;
    cap_archives(dir, cap, Some(&path));
    Ok(path)
}

/// Run `cmd` with its stdout going straight to `file` (at `path`), its
/// stderr kept for the error; an empty result is a failure too.
async fn into_file(
    mut cmd: Command,
    file: std::fs::File,
    path: &Path,
    tag: &str,
) -> Result<(), CacheError> {
    let failed = |detail: String| CacheError::Save {
        tag: tag.into(),
        detail,
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    match std::fs::metadata(path) {
        Ok(m) if m.len() > 0 => Ok(()),
        _ => Err(failed("it wrote nothing".into())),
    }
}

/// An archive of `id` whose content matches its name; mismatching ones go.
async fn verified(dir: &Path, id: &str) -> Result<Option<PathBuf>, CacheError> {
    let candidates: Vec<(PathBuf, String)> = list(dir)
        .into_iter()
        .filter(|a| a.id == id)
        .map(|a| (a.path, a.sha))
        .collect();
    for (path, sha) in candidates {
        let p = path.clone();
        let got = tokio::task::spawn_blocking(move || hash_file(&p))
            .await
            .map_err(|e| local("hashing an archive".into())(std::io::Error::other(e)))?;
        match got {
            Ok(h) if h == sha => return Ok(Some(path)),
            _ => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(None)
}

/// One archive in the cache.
#[derive(Debug, Clone)]
struct Archive {
    path: PathBuf,
    id: String,
    sha: String,
    size: u64,
    modified: SystemTime,
}

/// The well-named archives in `dir`, newest first.
fn list(dir: &Path) -> Vec<Archive> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<Archive> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (id, sha) = parse_archive_name(&name)?;
            let meta = e.metadata().ok()?;
            Some(Archive {
                path: e.path(),
                id: id.to_string(),
                sha: sha.to_string(),
                size: meta.len(),
                modified: meta.modified().ok()?,
            })
        })
        .collect();
    out.sort_by_key(|a| std::cmp::Reverse(a.modified));
    out
}

/// Of archive sizes, newest first, the indexes past `cap`: from the first
/// that does not fit, every older one (`keep` never).
pub(crate) fn over_cap(sizes: &[u64], cap: u64, keep: Option<usize>) -> Vec<usize> {
    let mut total = keep.map_or(0, |k| sizes[k]);
    let mut full = false;
    let mut out = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        if Some(i) == keep {
            continue;
        }
        full = full || total + size > cap;
        if full {
            out.push(i);
        } else {
            total += size;
        }
    }
    out
}

/// Remove the oldest archives past `cap` (never `keep`); what went.
fn cap_archives(dir: &Path, cap: u64, keep: Option<&Path>) -> Vec<Archive> {
    let all = list(dir);
    let sizes: Vec<u64> = all.iter().map(|a| a.size).collect();
    let keep = keep.and_then(|k| all.iter().position(|a| a.path == k));
    over_cap(&sizes, cap, keep)
        .into_iter()
        .map(|i| all[i].clone())
        .filter(|a| std::fs::remove_file(&a.path).is_ok())
        .collect()
}

/// A `mesh/*` tag in the controller's Docker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalImage {
    pub id: String,
    pub tag: String,
    /// Unix seconds it was built (`None`: unknown, kept).
    pub created: Option<i64>,
}

/// The service a `mesh/<service>:<hash>` tag belongs to.
fn service_of(tag: &str) -> Option<&str> {
    tag.strip_prefix("mesh/")?.split_once(':').map(|(s, _)| s)
}

/// The tags to remove: per service, all but the newest [`KEEP_BUILDS`],
/// never one in `keep` (this run's builds) nor one built in the last
/// [`RECENT_SECS`] before `now`.
pub(crate) fn local_removals(
    images: &[LocalImage],
    keep: &BTreeSet<String>,
    now: i64,
) -> Vec<LocalImage> {
    let mut by_service: BTreeMap<&str, Vec<&LocalImage>> = BTreeMap::new();
    for image in images {
        if let Some(s) = service_of(&image.tag) {
            by_service.entry(s).or_default().push(image);
        }
    }
    let mut out = Vec::new();
    for mut builds in by_service.into_values() {
        builds.sort_by_key(|b| std::cmp::Reverse(b.created.unwrap_or(i64::MAX)));
        for b in builds.into_iter().skip(KEEP_BUILDS) {
            let recent = b.created.is_none_or(|c| now - c < RECENT_SECS);
            if !recent && !keep.contains(&b.tag) {
                out.push(b.clone());
            }
        }
    }
    out
}

/// Unix seconds of an RFC 3339 time (`2024-05-01T10:00:00.123Z`, `…+02:00`).
pub(crate) fn unix_seconds(text: &str) -> Option<i64> {
    let t = text.trim();
    let num = |s: &str| s.parse::<i64>().ok();
    let (y, mo, d) = (num(t.get(0..4)?)?, num(t.get(5..7)?)?, num(t.get(8..10)?)?);
    let (h, mi, s) = (
        num(t.get(11..13)?)?,
        num(t.get(14..16)?)?,
        num(t.get(17..19)?)?,
    );
    let rest = t.get(19..)?;
    let rest = match rest.strip_prefix('.') {
        Some(frac) => frac.trim_start_matches(|c: char| c.is_ascii_digit()),
        None => rest,
    };
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.get(0..1)? {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            sign * (num(rest.get(1..3)?)? * 3600 + num(rest.get(4..6)?)? * 60)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + s - offset)
}

async fn docker(args: &[&str]) -> Result<std::process::Output, CacheError> {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| CacheError::NoDocker(e.to_string()))
}

/// The `mesh/*` tags of the controller's Docker, with when each was built.
async fn list_local() -> Result<Vec<LocalImage>, CacheError> {
    let out = docker(&[
        "image",
        "ls",
        "--no-trunc",
        "--filter",
        "reference=mesh/*",
        "--format",
        "{{.ID}} {{.Repository}}:{{.Tag}}",
    ])
    .await?;
    if !out.status.success() {
        return Err(CacheError::NoDocker(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let tags: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, t)| service_of(t).is_some())
        .map(|(i, t)| (i.to_string(), t.to_string()))
        .collect();
    let ids: BTreeSet<&str> = tags.iter().map(|(i, _)| i.as_str()).collect();
    let mut created: BTreeMap<String, i64> = BTreeMap::new();
    if !ids.is_empty() {
        let mut args = vec!["image", "inspect", "--format", "{{.Id}} {{.Created}}"];
        args.extend(ids.iter().copied());
        let out = docker(&args).await?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((id, t)) = line.split_once(' ') {
                if let Some(secs) = unix_seconds(t) {
                    created.insert(id.to_string(), secs);
                }
            }
        }
    }
    Ok(tags
        .into_iter()
        .map(|(id, tag)| LocalImage {
            created: created.get(&id).copied(),
            id,
            tag,
        })
        .collect())
}

/// What bounding the controller's cache removed (or, dry, would).
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct CacheReport {
    pub dry_run: bool,
    /// Tags removed from the controller's Docker.
    pub images: Vec<String>,
    /// Archives removed, and their bytes.
    pub archives: usize,
    pub archive_bytes: u64,
}

impl CacheReport {
    /// One line for people, `None` when nothing went.
    pub(crate) fn summary(&self) -> Option<String> {
        if self.images.is_empty() && self.archives == 0 {
            return None;
        }
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        Some(format!(
            "controller cache: {verb} {} and {} ({}){}",
            plural(self.images.len(), "image"),
            plural(self.archives, "archive"),
            human_bytes(self.archive_bytes),
            if self.images.is_empty() {
                String::new()
            } else {
                format!(": {}", self.images.join(", "))
            }
        ))
    }
}

/// Which local images a cache prune may remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LocalImages {
    /// `mesh prune`: old `mesh/*` builds leave the controller's Docker.
    Remove,
    /// After a build: leave them. A build served from BuildKit's cache
    /// keeps its old creation time, so age cannot tell a build another
    /// run on this controller is about to ship from a forgotten one.
    Keep,
}

/// Bound the controller's cache: old `mesh/*` builds leave its Docker
/// (with [`LocalImages::Remove`]; never one of `keep`, this run's builds),
/// then archives of images it no longer has, then the oldest archives past
/// `cap`.
pub(crate) async fn prune(
    cache: &Path,
    keep: &BTreeSet<String>,
    cap: u64,
    dry_run: bool,
    local: LocalImages,
) -> Result<CacheReport, CacheError> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64;
    let images = list_local().await?;
    let mut report = CacheReport {
        dry_run,
        ..Default::default()
    };
    let mut gone: BTreeSet<String> = BTreeSet::new();
    let removals = match local {
        LocalImages::Remove => local_removals(&images, keep, now),
        LocalImages::Keep => Vec::new(),
    };
    for image in removals {
        // Without -f: an image a local container uses stays.
        if dry_run || docker(&["rmi", &image.tag]).await?.status.success() {
            report.images.push(image.tag.clone());
            gone.insert(image.tag);
        }
    }
    let live: BTreeSet<String> = images
        .iter()
        .filter(|i| !gone.contains(&i.tag))
        .map(|i| i.id.trim_start_matches("sha256:").to_string())
        .collect();
    let dir = archives_dir(cache);
    let all = list(&dir);
    // An archive made or used in the last hour may be in another run's
    // hands (its image retagged since by an identical build elsewhere).
    let recent = |a: &Archive| {
        a.modified
            .elapsed()
            .is_ok_and(|age| age.as_secs() < RECENT_SECS as u64)
            || a.modified.elapsed().is_err()
    };
    let (orphans, kept): (Vec<Archive>, Vec<Archive>) = all
        .into_iter()
        .partition(|a| !live.contains(&a.id) && !recent(a));
    let sizes: Vec<u64> = kept.iter().map(|a| a.size).collect();
    let mut going = orphans;
    going.extend(
        over_cap(&sizes, cap, None)
            .into_iter()
            .map(|i| kept[i].clone()),
    );
    for a in going {
        if dry_run || std::fs::remove_file(&a.path).is_ok() {
            report.archives += 1;
            report.archive_bytes += a.size;
        }
    }
    for (path, size) in stale(&dir, now) {
        if dry_run || std::fs::remove_file(&path).is_ok() {
            report.archives += 1;
            report.archive_bytes += size;
        }
    }
    Ok(report)
}

/// Whether a file in the archives' directory is one this mesh never uses:
/// a temporary file of an interrupted save, or an archive named the way
/// older mesh versions did (`<image id>.tar.zst`, without a content hash).
pub(crate) fn is_leftover(name: &str) -> bool {
    let temp = name.starts_with('.') && name.ends_with(".tmp");
    let unhashed = name
        .strip_suffix(ARCHIVE_EXT)
        .is_some_and(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()));
    temp || unhashed
}

/// Leftovers (see [`is_leftover`]) older than [`RECENT_SECS`] (a run
/// still going may be writing or reading them), with their sizes.
fn stale(dir: &Path, now: i64) -> Vec<(PathBuf, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| is_leftover(&e.file_name().to_string_lossy()))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            let age = meta
                .modified()
                .ok()?
                .duration_since(SystemTime::UNIX_EPOCH)
                .ok()?;
            (now - age.as_secs() as i64 > RECENT_SECS).then(|| (e.path(), meta.len()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// Write `bytes` to a new 0600 file.
    fn write_private(path: &Path, bytes: &[u8]) {
        let mut f = std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    fn img(tag: &str, created: Option<i64>) -> LocalImage {
        LocalImage {
            id: format!("sha256:{}", crate::ops::file::sha256_hex(tag.as_bytes())),
            tag: tag.into(),
            created,
        }
    }

    #[test]
    fn the_controller_keeps_the_newest_builds_per_service_and_recent_ones() {
        let now = 1_000_000;
        let old = |n: i64| Some(now - 10 * RECENT_SECS + n);
        let recent = |n: i64| Some(now - 600 + n);
        let images = vec![
            img("mesh/web:1", old(1)),
            img("mesh/web:2", old(2)),
            img("mesh/web:3", old(3)),
            img("mesh/web:4", old(4)),
            img("mesh/web:5", old(5)),
            img("mesh/web:6", old(6)),
            // Six builds of the last hour (another run may ship them).
            img("mesh/api:1", recent(1)),
            img("mesh/api:2", recent(2)),
            img("mesh/api:3", recent(3)),
            img("mesh/api:4", recent(4)),
            img("mesh/api:5", recent(5)),
            img("mesh/api:6", recent(6)),
            // When it was built is unknown: it stays.
            img("mesh/db:1", None),
            img("mesh/db:2", old(2)),
            img("mesh/db:3", old(3)),
            img("mesh/db:4", old(4)),
            img("mesh/db:5", old(5)),
            img("mesh/db:6", old(6)),
            img("other/web:1", old(0)),
        ];
        let gone = |keep: &[&str]| -> Vec<String> {
            let keep = keep.iter().map(|s| s.to_string()).collect();
            local_removals(&images, &keep, now)
                .into_iter()
                .map(|i| i.tag)
                .collect()
        };
        assert_eq!(
            gone(&[]),
            ["mesh/db:3", "mesh/db:2", "mesh/web:2", "mesh/web:1"]
        );
        // A build this run uses stays, however old.
        assert_eq!(
            gone(&["mesh/web:1", "mesh/db:2"]),
            ["mesh/db:3", "mesh/web:2"]
        );
        assert_eq!(KEEP_BUILDS, 4);
    }

    #[test]
    fn archives_past_the_cap_go_oldest_first_except_the_one_in_use() {
        // Newest first.
        let sizes = [4, 3, 2, 2];
        assert_eq!(over_cap(&sizes, 8, None), [2, 3]);
        assert_eq!(over_cap(&sizes, 9, None), [3]);
        // An older small one goes too: the oldest go first.
        assert_eq!(over_cap(&[4, 5, 1], 6, None), [1, 2]);
        assert_eq!(over_cap(&sizes, 100, None), Vec::<usize>::new());
        // The archive just made stays even alone past the cap.
        assert_eq!(over_cap(&sizes, 1, Some(1)), [0, 2, 3]);
        assert_eq!(over_cap(&sizes, 6, Some(3)), [1, 2]);
    }

    #[test]
    fn cap_sizes_parse_in_powers_of_1024() {
        assert_eq!(parse_size("5G"), Some(5 << 30));
        assert_eq!(parse_size("800M"), Some(800 << 20));
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size("2TiB"), Some(2 << 40));
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        assert_eq!(parse_size("12345"), Some(12345));
        assert_eq!(parse_size(" 0 "), Some(0));
        for bad in ["", "G", "five", "5X", "-1G", "99999999999T"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
        assert_eq!(DEFAULT_CAP, 5 * 1024 * 1024 * 1024);
        let e = CacheError::BadCap {
            value: "lots".into(),
        };
        assert!(e.to_string().contains("MESH_IMAGE_CACHE_MAX=\"lots\""));
    }

    #[test]
    fn docker_times_read_as_unix_seconds() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            unix_seconds("2024-05-01T10:00:00.123456789Z"),
            Some(1_714_557_600)
        );
        assert_eq!(
            unix_seconds("2024-05-01T12:00:00+02:00"),
            Some(1_714_557_600)
        );
        assert_eq!(unix_seconds("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(unix_seconds("yesterday"), None);
        assert_eq!(unix_seconds("2024-05-01T10:00:00"), None);
    }

    #[test]
    fn a_save_writes_straight_into_its_private_file_and_fails_loudly() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let run = |script: &str, name: &str| {
            let path = dir.path().join(name);
            let file = std::fs::File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .unwrap();
            let mut cmd = Command::new("sh");
            cmd.args(["-c", script]);
            (
                rt.block_on(into_file(cmd, file, &path, "mesh/web:ab")),
                path,
            )
        };
        let (ok, path) = run("printf layers; echo chatter >&2", "a");
        ok.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"layers");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (failed, _) = run("echo 'zstd: not found' >&2; exit 127", "b");
        let e = failed.unwrap_err().to_string();
        assert!(
            e.starts_with("docker save mesh/web:ab | zstd failed: zstd: not found."),
            "{e}"
        );
        let (empty, _) = run("true", "c");
        assert!(empty.unwrap_err().to_string().contains("it wrote nothing"));
    }

    #[test]
    fn archive_names_carry_the_image_id_and_the_content_hash() {
        let id = "a".repeat(64);
        let sha = "b".repeat(64);
        let name = archive_name(&id, &sha);
        assert_eq!(parse_archive_name(&name), Some((id.as_str(), sha.as_str())));
        // The old `<id>.tar.zst` and temporary files are not archives.
        assert_eq!(parse_archive_name(&format!("{id}.tar.zst")), None);
        assert_eq!(parse_archive_name(&format!(".{id}.1.ab.tmp")), None);
        // Those are leftovers; a well-named archive is not.
        assert!(is_leftover(&format!("{id}.tar.zst")));
        assert!(is_leftover(&format!(".{id}.1.ab.tmp")));
        assert!(!is_leftover(&name));
        assert!(!is_leftover("notes.txt"));
    }

    #[test]
    fn a_tampered_archive_is_not_used_and_the_cache_dir_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("cache/images");
        private_dir(&images).unwrap();
        // An existing, too open directory is made private again.
        std::fs::set_permissions(&images, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&images).unwrap();
        let mode = std::fs::metadata(&images).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let id = "c".repeat(64);
        let good = images.join(archive_name(&id, &crate::ops::file::sha256_hex(b"layers")));
        write_private(&good, b"layers");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(
            rt.block_on(verified(&images, &id)).unwrap(),
            Some(good.clone())
        );
        // Changed after it was named: removed, so the next use makes it again.
        std::fs::write(&good, b"tampered").unwrap();
        assert_eq!(rt.block_on(verified(&images, &id)).unwrap(), None);
        assert!(!good.exists());
    }
}
