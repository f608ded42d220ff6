//! The controller's image cache: the `mesh/*` images its Docker keeps and
//! the layer store ([`super::layers`]: each layer compressed once, shipped
//! to hosts that lack it) under `<cache root>/layers` (a 0700 directory,
//! 0600 files). Both are bounded after every build and by `mesh prune`:
//! - per service, Docker keeps the newest [`KEEP_BUILDS`] builds (a host
//!   keeps its live build and [`KEEP_PREVIOUS`] to roll back to, so an
//!   older one is never shipped again), the builds this run uses, and any
//!   built in the last [`RECENT_SECS`] (another run may still ship it);
//! - layer files and configs stay only for images Docker still has, newest
//!   first, up to a size cap: [`DEFAULT_CAP`] (5 GiB), or `MESH_IMAGE_CACHE_MAX`;
//! - files this mesh never uses (an interrupted save's temporary files, the
//!   whole-image archives older mesh versions kept under `images/`) go once
//!   an hour old.

use super::layers::{self, layers_dir};
use super::slots::KEEP_PREVIOUS;
use crate::ops::room::human_bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
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

pub(crate) fn local(what: String) -> impl FnOnce(std::io::Error) -> CacheError {
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

/// Where older mesh versions kept whole-image archives (removed as leftovers).
fn old_archives_dir(cache: &Path) -> PathBuf {
    cache.join("images")
}

/// Of file sizes, newest first, the indexes past `cap`: from the first
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

/// A `mesh/*` tag in the controller's Docker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalImage {
    pub id: String,
    pub tag: String,
    /// Unix seconds it was built (`None`: unknown, kept).
    pub created: Option<i64>,
    /// Its layers' diff ids.
    pub layers: Vec<String>,
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

/// The diff ids of the layers of every `mesh/*` image the controller's Docker has.
pub(crate) async fn local_layers() -> Result<BTreeSet<String>, CacheError> {
    Ok(list_local()
        .await?
        .into_iter()
        .flat_map(|i| i.layers)
        .collect())
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
    let mut layers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if !ids.is_empty() {
        let mut args = vec![
            "image",
            "inspect",
            "--format",
            "{{.Id}} {{.Created}}{{range .RootFS.Layers}} {{.}}{{end}}",
        ];
        args.extend(ids.iter().copied());
        let out = docker(&args).await?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut words = line.split_whitespace();
            let (Some(id), Some(t)) = (words.next(), words.next()) else {
                continue;
            };
            if let Some(secs) = unix_seconds(t) {
                created.insert(id.to_string(), secs);
            }
            layers.insert(id.to_string(), words.map(str::to_string).collect());
        }
    }
    Ok(tags
        .into_iter()
        .map(|(id, tag)| LocalImage {
            created: created.get(&id).copied(),
            layers: layers.get(&id).cloned().unwrap_or_default(),
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
    /// Layer store files removed, and their bytes.
    pub archives: usize,
    pub archive_bytes: u64,
    /// The diff ids of the layers of the `mesh/*` images left on the controller.
    pub kept_layers: BTreeSet<String>,
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
            plural(self.archives, "cached layer file"),
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
/// then layer files of images it no longer has, then the oldest past `cap`.
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
    let left: Vec<&LocalImage> = images.iter().filter(|i| !gone.contains(&i.tag)).collect();
    report.kept_layers = left.iter().flat_map(|i| i.layers.iter().cloned()).collect();
    // Live: the configs and layers of the images Docker still has.
    let live: BTreeSet<String> = left
        .iter()
        .flat_map(|i| std::iter::once(&i.id).chain(&i.layers))
        .map(|d| d.trim_start_matches("sha256:").to_string())
        .collect();
    let dir = layers_dir(cache);
    let all = layers::list(&dir);
    // A file made or used in the last hour may be in another run's hands
    // (its image retagged since by an identical build elsewhere).
    let recent = |s: &layers::Stored| {
        s.modified
            .elapsed()
            .is_ok_and(|age| age.as_secs() < RECENT_SECS as u64)
            || s.modified.elapsed().is_err()
    };
    let (orphans, kept): (Vec<layers::Stored>, Vec<layers::Stored>) = all
        .into_iter()
        .partition(|s| !layers::is_live(s, &live) && !recent(s));
    let sizes: Vec<u64> = kept.iter().map(|s| s.size).collect();
    let mut going = orphans;
    going.extend(
        over_cap(&sizes, cap, None)
            .into_iter()
            .map(|i| kept[i].clone()),
    );
    for s in going {
        if dry_run || std::fs::remove_file(&s.path).is_ok() {
            report.archives += 1;
            report.archive_bytes += s.size;
        }
    }
    for d in [dir, old_archives_dir(cache)] {
        for (path, size) in stale(&d, now) {
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if dry_run || removed.is_ok() {
                report.archives += 1;
                report.archive_bytes += size;
            }
        }
    }
    Ok(report)
}

/// Whether a file in the layer store (or the old archives' directory) is
/// one this mesh never uses: a temporary file or directory of an
/// interrupted save, or a whole-image archive of an older mesh version.
pub(crate) fn is_leftover(name: &str) -> bool {
    let temp = name.starts_with('.') && name.ends_with(".tmp");
    temp || name.ends_with(".tar.zst")
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

    fn img(tag: &str, created: Option<i64>) -> LocalImage {
        LocalImage {
            id: format!("sha256:{}", crate::ops::file::sha256_hex(tag.as_bytes())),
            tag: tag.into(),
            created,
            layers: Vec::new(),
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
    fn leftovers_are_temporary_files_and_old_whole_image_archives() {
        let id = "a".repeat(64);
        assert!(is_leftover(&format!("{id}.tar.zst")));
        assert!(is_leftover(&format!("{id}.{id}.tar.zst")));
        assert!(is_leftover(".save.1.ab.tmp"));
        assert!(!is_leftover(&format!("{id}.{id}.zst")));
        assert!(!is_leftover(&format!("{id}.json")));
        assert!(!is_leftover("notes.txt"));
    }

    #[test]
    fn the_cache_dir_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let layers = dir.path().join("cache/layers");
        private_dir(&layers).unwrap();
        // An existing, too open directory is made private again.
        std::fs::set_permissions(&layers, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&layers).unwrap();
        let mode = std::fs::metadata(&layers).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
