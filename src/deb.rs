//! Debian package plumbing for the `nodes` docker step: dpkg version ordering,
//! parsing a repository `Packages` index, choosing the newest Docker packages,
//! hashing downloaded `.deb` files, and the `docker.lock` file that pins them.
//!
//! Everything here is pure logic over strings and local files; fetching and
//! installing live elsewhere.

use std::cmp::Ordering;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_saphyr::{MessageFormatter, UserMessageFormatter};

/// First line of every lock file mesh writes.
const LOCK_HEADER: &str =
    "# written by mesh: Docker .debs pinned by sha256; `mesh nodes --update-lock` moves them";

/// What went wrong; every message ends with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    /// The index text is not a Debian `Packages` file (or holds a broken entry).
    #[error(
        "{index}: line {line}: not a usable Debian Packages index ({reason}); check that the \
         mirror URL, codename and architecture point at a \
         `<mirror>/dists/<codename>/stable/binary-<arch>/Packages` file"
    )]
    MalformedIndex {
        index: String,
        line: usize,
        reason: IndexProblem,
    },
    /// A wanted package is not listed in the index.
    #[error(
        "package `{name}` is not in the Packages index{hint}; check the package name, or that \
         the mirror publishes it for this codename and architecture",
        hint = closest_hint(.closest)
    )]
    MissingPackage { name: String, closest: Vec<String> },
    /// The lock file exists but cannot be read.
    #[error("cannot read {path}: {source}; check that the file is readable")]
    LockRead { path: PathBuf, source: io::Error },
    /// The lock file cannot be written.
    #[error("cannot write {path}: {source}; check the directory's permissions and free space")]
    LockWrite { path: PathBuf, source: io::Error },
    /// The lock file is not valid YAML for a lock.
    #[error(
        "{path}{at}: not a valid lock file: {message}; fix it by hand, or delete it and run \
         `mesh nodes --update-lock` to pin the Docker packages again"
    )]
    LockSyntax {
        path: PathBuf,
        /// `", line N"` when the position is known, else empty.
        at: String,
        message: String,
    },
    /// The lock file parses but holds values mesh cannot trust.
    #[error(
        "{path}: invalid lock file: {reason}; fix it by hand, or delete it and run \
         `mesh nodes --update-lock` to pin the Docker packages again"
    )]
    LockInvalid { path: PathBuf, reason: LockProblem },
    /// Serializing the lock failed (should not happen).
    #[error("cannot serialize the lock file: {0}; this is a bug in mesh, please report it")]
    LockSerialize(String),
}

/// What makes a `Packages` index unusable (see [`DebError::MalformedIndex`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexProblem {
    #[error("continuation line outside a field")]
    StrayContinuation,
    #[error("expected `Field: value`, found `{found}`")]
    NotAField { found: String },
    #[error("field `{name}` repeated in one stanza")]
    RepeatedField { name: String },
    #[error("no stanza names a package with a version, file and SHA256")]
    NoPackages,
    #[error("package {package}: SHA256 `{value}` is not 64 hex digits")]
    BadSha256 { package: String, value: String },
    #[error("package {package}: unsafe Filename `{value}`")]
    UnsafeFilename { package: String, value: String },
    #[error("package {package}: Size `{value}` is not a number")]
    BadSize { package: String, value: String },
}

/// What a parsed lock file holds that mesh cannot trust (see [`DebError::LockInvalid`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockProblem {
    /// `number` counts sets from 1.
    #[error("set #{number} has an empty codename or arch")]
    EmptySet { number: usize },
    #[error("{codename}/{arch} is listed twice")]
    Repeated { codename: String, arch: String },
    #[error("{0} has an empty name or version")]
    EmptyPackage(LockedName),
    #[error("{0}: sha256 is not 64 hex digits")]
    BadSha256(LockedName),
    #[error("{what}: unsafe filename `{filename}`")]
    UnsafeFilename { what: LockedName, filename: String },
}

/// A package of a lock set, for messages: ``bookworm/amd64 package `docker-ce` ``.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedName {
    pub codename: String,
    pub arch: String,
    pub name: String,
}

impl std::fmt::Display for LockedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} package `{}`", self.codename, self.arch, self.name)
    }
}

fn closest_hint(closest: &[String]) -> String {
    if closest.is_empty() {
        " (the index lists no packages at all)".to_string()
    } else {
        format!(" (closest names present: {})", closest.join(", "))
    }
}

// ---------------------------------------------------------------------------
// dpkg version ordering
// ---------------------------------------------------------------------------

/// dpkg version ordering (epoch:upstream-revision, `~` sorts before everything,
/// letters before non-letters, numeric runs compared as numbers), exactly as
/// dpkg's `verrevcmp`.
///
/// Malformed input never panics: a prefix before the first `:` counts as the
/// epoch only when it is all digits, and an empty string is the blank version.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (a, b) = (split_version(a), split_version(b));
    compare_epochs(a.epoch, b.epoch)
        .then_with(|| verrevcmp(a.upstream.as_bytes(), b.upstream.as_bytes()))
        .then_with(|| verrevcmp(a.revision.as_bytes(), b.revision.as_bytes()))
}

struct VersionParts<'a> {
    /// Epoch digits without leading zeros ("" is epoch 0).
    epoch: &'a str,
    upstream: &'a str,
    revision: &'a str,
}

/// Splits like dpkg's `parseversion`: epoch before the first `:`, revision
/// after the last `-`.
fn split_version(v: &str) -> VersionParts<'_> {
    let v = v.trim();
    let (epoch, rest) = match v.split_once(':') {
        Some((e, rest)) if !e.is_empty() && e.bytes().all(|c| c.is_ascii_digit()) => {
            (e.trim_start_matches('0'), rest)
        }
        _ => ("", v),
    };
    let (upstream, revision) = rest.rsplit_once('-').unwrap_or((rest, ""));
    VersionParts {
        epoch,
        upstream,
        revision,
    }
}

/// Compares digit strings without leading zeros numerically, with no overflow.
fn compare_epochs(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// dpkg's `order()`: the weight of one character in a non-digit run.
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(b'~') => -1,
        // dpkg reads a (signed on amd64) `char`, so bytes >= 0x80 wrap back to
        // their unsigned value; ASCII punctuation gets `c + 256`.
        Some(c) if c >= 0x80 => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

/// Port of dpkg's `verrevcmp`: alternating non-digit and digit runs.
fn verrevcmp(a: &[u8], b: &[u8]) -> Ordering {
    let digit_at = |s: &[u8], i: usize| s.get(i).is_some_and(u8::is_ascii_digit);
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // Non-digit run, character by character.
        while (i < a.len() && !digit_at(a, i)) || (j < b.len() && !digit_at(b, j)) {
            let (ac, bc) = (order(a.get(i).copied()), order(b.get(j).copied()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        // Digit run, as a number: skip leading zeros, longer run wins, else
        // the first differing digit decides.
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while digit_at(a, i) && digit_at(b, j) {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if digit_at(a, i) {
            return Ordering::Greater;
        }
        if digit_at(b, j) {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

// ---------------------------------------------------------------------------
// Packages index
// ---------------------------------------------------------------------------

/// One stanza of a Debian `Packages` index (only the fields mesh uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageEntry {
    pub package: String,
    pub version: String,
    pub architecture: String,
    /// Path relative to the mirror root, e.g. `pool/stable/amd64/x.deb`.
    pub filename: String,
    /// Bytes; 0 when the index omits `Size`.
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

/// One `Field: value` of a stanza being read.
struct Field {
    name: String,
    value: String,
}

/// Parse a whole Packages file (stanzas separated by blank lines, continuation
/// lines start with space/tab, field names case-insensitive). Stanzas lacking
/// Package/Version/Filename/SHA256 are skipped; a malformed file (e.g. HTML
/// error page) is an error naming the source.
pub fn parse_packages(source: &str, text: &str) -> Result<Vec<PackageEntry>, DebError> {
    let malformed = |line: usize, reason: IndexProblem| DebError::MalformedIndex {
        index: source.to_string(),
        line,
        reason,
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut entries = Vec::new();
    let mut stanzas = 0usize;
    let mut fields: Vec<Field> = Vec::new();
    let mut stanza_line = 0usize;

    // `lines()` also drops the `\r` of CRLF endings; the final `None` ends
    // the last stanza like a blank line does.
    for next in text.lines().enumerate().map(Some).chain([None]) {
        let Some((idx, line)) = next.filter(|(_, line)| !line.trim().is_empty()) else {
            if !fields.is_empty() {
                stanzas += 1;
                if let Some(entry) = stanza_entry(&fields).map_err(|r| malformed(stanza_line, r))? {
                    entries.push(entry);
                }
                fields.clear();
            }
            continue;
        };
        let lineno = idx + 1;
        if line.starts_with([' ', '\t']) {
            let Some(last) = fields.last_mut() else {
                return Err(malformed(lineno, IndexProblem::StrayContinuation));
            };
            last.value.push('\n');
            last.value.push_str(line.trim());
            continue;
        }
        let Some((name, value)) = line.split_once(':').filter(|(n, _)| valid_field_name(n)) else {
            return Err(malformed(
                lineno,
                IndexProblem::NotAField {
                    found: excerpt(line),
                },
            ));
        };
        if fields.iter().any(|f| f.name.eq_ignore_ascii_case(name)) {
            return Err(malformed(
                lineno,
                IndexProblem::RepeatedField {
                    name: name.to_string(),
                },
            ));
        }
        if fields.is_empty() {
            stanza_line = lineno;
        }
        fields.push(Field {
            name: name.to_string(),
            value: value.trim().to_string(),
        });
    }

    // Stanzas that all lack a package (e.g. a Release file) mean a wrong URL.
    if stanzas > 0 && entries.is_empty() {
        return Err(malformed(1, IndexProblem::NoPackages));
    }
    Ok(entries)
}

/// deb822 field names, restricted to what real indexes use, so that stray
/// HTML such as `<title>404: Not Found` is not taken for a field.
fn valid_field_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
}

/// The start of a line, for messages.
fn excerpt(line: &str) -> String {
    const MAX: usize = 60;
    let line = line.trim();
    match line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    }
}

/// Builds the entry for one stanza: `Ok(None)` when a needed field is
/// missing, `Err(reason)` when a field mesh relies on has a bad value.
fn stanza_entry(fields: &[Field]) -> Result<Option<PackageEntry>, IndexProblem> {
    let get = |name: &str| {
        fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value.as_str())
            .filter(|v| !v.is_empty())
    };
    let (Some(package), Some(version), Some(filename), Some(sha256)) = (
        get("Package"),
        get("Version"),
        get("Filename"),
        get("SHA256"),
    ) else {
        return Ok(None);
    };
    if !is_sha256_hex(sha256) {
        return Err(IndexProblem::BadSha256 {
            package: package.to_string(),
            value: excerpt(sha256),
        });
    }
    if !is_safe_filename(filename) {
        return Err(IndexProblem::UnsafeFilename {
            package: package.to_string(),
            value: excerpt(filename),
        });
    }
    let size = match get("Size") {
        None => 0,
        Some(s) => s.parse().map_err(|_| IndexProblem::BadSize {
            package: package.to_string(),
            value: excerpt(s),
        })?,
    };
    Ok(Some(PackageEntry {
        package: package.to_string(),
        version: version.to_string(),
        architecture: get("Architecture").unwrap_or_default().to_string(),
        filename: filename.to_string(),
        size,
        sha256: sha256.to_ascii_lowercase(),
    }))
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit())
}

/// A mirror-relative path that cannot escape a download or cache directory.
fn is_safe_filename(name: &str) -> bool {
    !name.starts_with('/')
        && !name.contains(['\\', '\n', '\0'])
        && name
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// Newest entry (by [`compare_versions`]) of each wanted package, in the
/// order wanted; a wanted package absent from the index is an error listing
/// the closest names present.
pub fn choose_newest(
    entries: &[PackageEntry],
    wanted: &[String],
) -> Result<Vec<PackageEntry>, DebError> {
    wanted
        .iter()
        .map(|name| {
            entries
                .iter()
                .filter(|e| &e.package == name)
                .max_by(|x, y| compare_versions(&x.version, &y.version))
                .cloned()
                .ok_or_else(|| DebError::MissingPackage {
                    name: name.clone(),
                    closest: closest_names(entries, name),
                })
        })
        .collect()
}

/// Up to three distinct package names nearest to `name` by edit distance.
fn closest_names(entries: &[PackageEntry], name: &str) -> Vec<String> {
    let mut names: Vec<&str> = entries.iter().map(|e| e.package.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let mut scored: Vec<(usize, &str)> = names
        .into_iter()
        .map(|n| (edit_distance(name, n), n))
        .collect();
    scored.sort();
    scored
        .into_iter()
        .take(3)
        .map(|(_, n)| n.to_string())
        .collect()
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------
// docker.lock
// ---------------------------------------------------------------------------

/// docker.lock: pins name/version/filename/size/sha256 per (codename, arch).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    #[serde(default)]
    pub sets: Vec<LockSet>,
}

/// The pinned packages for one Debian codename and architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockSet {
    pub codename: String,
    pub arch: String,
    pub packages: Vec<LockedPackage>,
}

/// One pinned `.deb`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
}

impl From<&PackageEntry> for LockedPackage {
    fn from(e: &PackageEntry) -> Self {
        LockedPackage {
            name: e.package.clone(),
            version: e.version.clone(),
            filename: e.filename.clone(),
            size: e.size,
            sha256: e.sha256.clone(),
        }
    }
}

impl Lock {
    /// Missing file = empty lock. Bad YAML = error naming file and line.
    pub fn load(path: &Path) -> Result<Lock, DebError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Lock::default()),
            Err(source) => {
                return Err(DebError::LockRead {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        // A file with only comments (or nothing) is an empty lock.
        if text.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#')
        }) {
            return Ok(Lock::default());
        }
        let lock: Lock = serde_saphyr::from_str(&text).map_err(|err| {
            let at = err
                .location()
                .filter(|l| l.line() > 0)
                .map(|l| format!(", line {}", l.line()))
                .unwrap_or_default();
            let message: String = UserMessageFormatter
                .format_message(err.without_snippet())
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            DebError::LockSyntax {
                path: path.to_path_buf(),
                at,
                message,
            }
        })?;
        lock.validate().map_err(|reason| DebError::LockInvalid {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(lock)
    }

    /// Checks what a hand edit could break before anything is installed.
    fn validate(&self) -> Result<(), LockProblem> {
        for (i, set) in self.sets.iter().enumerate() {
            if set.codename.is_empty() || set.arch.is_empty() {
                return Err(LockProblem::EmptySet { number: i + 1 });
            }
            let repeated = self.sets[..i]
                .iter()
                .any(|s| s.codename == set.codename && s.arch == set.arch);
            if repeated {
                return Err(LockProblem::Repeated {
                    codename: set.codename.clone(),
                    arch: set.arch.clone(),
                });
            }
            for p in &set.packages {
                let what = || LockedName {
                    codename: set.codename.clone(),
                    arch: set.arch.clone(),
                    name: p.name.clone(),
                };
                if p.name.is_empty() || p.version.is_empty() {
                    return Err(LockProblem::EmptyPackage(what()));
                }
                if !is_sha256_hex(&p.sha256) {
                    return Err(LockProblem::BadSha256(what()));
                }
                if !is_safe_filename(&p.filename) {
                    return Err(LockProblem::UnsafeFilename {
                        what: what(),
                        filename: p.filename.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// YAML with a header comment, written atomically (temp file in the same
    /// dir + rename), so a crash never leaves a half-written lock.
    pub fn save(&self, path: &Path) -> Result<(), DebError> {
        let yaml =
            serde_saphyr::to_string(self).map_err(|e| DebError::LockSerialize(e.to_string()))?;
        let text = format!("{LOCK_HEADER}\n{yaml}");
        crate::atomic::write(path, text.as_bytes(), None).map_err(|source| DebError::LockWrite {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn get(&self, codename: &str, arch: &str) -> Option<&LockSet> {
        self.sets
            .iter()
            .find(|s| s.codename == codename && s.arch == arch)
    }

    /// Insert or replace the set for (codename, arch); keep sets sorted by
    /// (codename, arch).
    pub fn put(&mut self, set: LockSet) {
        let key = |s: &LockSet| (s.codename.clone(), s.arch.clone());
        self.sets.retain(|s| key(s) != key(&set));
        let at = self.sets.partition_point(|s| key(s) < key(&set));
        self.sets.insert(at, set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    // --- compare_versions ------------------------------------------------

    #[test]
    fn classic_version_cases() {
        use Ordering::{Equal, Greater, Less};
        let cases = [
            ("1.0", "1.0.1", Less),
            ("1.0~rc1", "1.0", Less),
            ("1:0.9", "2.0", Greater),
            ("1.0-1", "1.0-2", Less),
            ("1.0a", "1.0+", Less),
            (
                "5:24.0.7-1~debian.12~bookworm",
                "5:25.0.0-1~debian.12~bookworm",
                Less,
            ),
            ("1.6.21-1", "1.6.9-1", Greater),
            ("1.0", "1.0-0", Equal),
            ("1.0", "1.0-1", Less),
            ("0:1.0", "1.0", Equal),
            ("1.01", "1.1", Equal),
            ("1.0~~", "1.0~", Less),
            ("1.0~", "1.0", Less),
            ("1.0", "1.0a", Less),
            ("1.0~~a", "1.0~~", Greater),
            ("10", "9", Greater),
            ("1.0", "1.0", Equal),
            ("", "0", Equal),
            ("", "1", Less),
            ("28.0.1-1~debian.12~bookworm", "28.0.1-1", Less),
            ("2:1", "10:0", Less),
            ("1-2-3", "1-2-4", Less),
            ("1.2.3", "1.2.3.0", Less),
            // Non-ASCII bytes (invalid, dpkg only warns) sort as amd64 dpkg does.
            ("1.0é", "1.0z", Greater),
            ("1.0é", "1.0+", Less),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    /// splitmix64: deterministic pseudo-random numbers without a crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick(&mut self, chars: &[u8]) -> char {
            char::from(chars[self.below(chars.len())])
        }
        fn string(&mut self, first: &[u8], rest: &[u8], max_len: usize) -> String {
            let mut s = String::from(self.pick(first));
            for _ in 0..self.below(max_len) {
                s.push(self.pick(rest));
            }
            s
        }
    }

    /// A syntactically valid dpkg version, built from parts so that
    /// perturbations stay valid.
    #[derive(Clone)]
    struct GenVersion {
        epoch: Option<String>,
        upstream: String,
        revision: Option<String>,
    }

    impl GenVersion {
        // Small alphabets so that equal and near-equal pairs are common.
        const DIGITS: &'static [u8] = b"00123456789";
        const CHARS: &'static [u8] = b"0019.+~~aAz";

        fn random(rng: &mut Rng) -> Self {
            let epoch = (rng.below(3) == 0).then(|| rng.string(Self::DIGITS, Self::DIGITS, 2));
            let mut upstream = rng.string(Self::DIGITS, Self::CHARS, 6);
            // Colons are legal in upstream only when an epoch is present.
            if epoch.is_some() && rng.below(8) == 0 {
                upstream.push(':');
                upstream.push(rng.pick(Self::DIGITS));
            }
            let revision = (rng.below(2) == 0).then(|| rng.string(Self::CHARS, Self::CHARS, 4));
            // Hyphens in upstream are legal only with a revision.
            if revision.is_some() && rng.below(8) == 0 {
                upstream.push('-');
                upstream.push(rng.pick(Self::DIGITS));
            }
            GenVersion {
                epoch,
                upstream,
                revision,
            }
        }

        /// A nearby version: often equal in dpkg's eyes, or differing by a
        /// tilde, a zero, or one component.
        fn perturb(&self, rng: &mut Rng) -> Self {
            let mut v = self.clone();
            match rng.below(7) {
                0 => v.epoch = Some(format!("0{}", v.epoch.unwrap_or_default())),
                1 => v.upstream.push('~'),
                2 => v.upstream.push_str(".0"),
                3 => match &mut v.revision {
                    Some(r) => r.push_str("~1"),
                    None => v.revision = Some("0".into()),
                },
                4 => v.upstream = format!("0{}", v.upstream),
                5 => v.revision = None,
                _ => {}
            }
            v
        }

        fn render(&self) -> String {
            let mut s = String::new();
            if let Some(e) = &self.epoch {
                s.push_str(e);
                s.push(':');
            }
            s.push_str(&self.upstream);
            if let Some(r) = &self.revision {
                s.push('-');
                s.push_str(r);
            }
            s
        }
    }

    fn dpkg_says(dpkg: &Path, a: &str, op: &str, b: &str) -> bool {
        let out = Command::new(dpkg)
            .args(["--compare-versions", a, op, b])
            .output()
            .expect("run dpkg");
        match out.status.code() {
            Some(0) => true,
            Some(1) => false,
            _ => panic!(
                "dpkg --compare-versions {a:?} {op} {b:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    #[test]
    fn matches_real_dpkg() {
        let dpkg = Path::new("/usr/bin/dpkg");
        if !dpkg.exists() {
            eprintln!("skipping: /usr/bin/dpkg is absent, cannot compare against real dpkg");
            return;
        }
        let mut rng = Rng(0x6d65_7368_2d64_6562);
        let mut seen = [0usize; 3];
        for _ in 0..300 {
            let a = GenVersion::random(&mut rng);
            let b = if rng.below(2) == 0 {
                a.perturb(&mut rng)
            } else {
                GenVersion::random(&mut rng)
            };
            let (a, b) = (a.render(), b.render());
            let want = if dpkg_says(dpkg, &a, "lt", &b) {
                Ordering::Less
            } else if dpkg_says(dpkg, &a, "gt", &b) {
                Ordering::Greater
            } else {
                Ordering::Equal
            };
            assert_eq!(compare_versions(&a, &b), want, "{a:?} vs {b:?}");
            seen[(want as i32 + 1) as usize] += 1;
        }
        // The generator must exercise all three outcomes.
        assert!(
            seen.iter().all(|&n| n >= 20),
            "outcome counts lt/eq/gt: {seen:?}"
        );
    }

    // --- parse_packages / choose_newest ---------------------------------

    const URL: &str =
        "https://download.docker.com/linux/debian/dists/bookworm/stable/binary-amd64/Packages";

    const SAMPLE: &str = "\
Package: containerd.io
Architecture: amd64
Version: 1.6.9-1
Priority: optional
Section: devel
Maintainer: Containerd team <help@containerd.io>
Installed-Size: 112530
Provides: containerd, runc
Depends: libc6 (>= 2.34), libseccomp2 (>= 2.5.0)
Conflicts: containerd, runc
Replaces: containerd, runc
Filename: pool/stable/amd64/containerd.io_1.6.9-1_amd64.deb
Size: 27711136
MD5sum: 0c5b2b3b5e5f2d3c1c0c8f3e1d9f6a7b
SHA1: 4b1a6c0e3d2f9e8a7b6c5d4e3f2a1b0c9d8e7f6a
SHA256: 2693af422d30cc3c3f3ca9b01444dbb1612b4f7e2e31ceecec8ff3f7fd9c3c8b
Description: An open and reliable container runtime
 containerd is an industry-standard container runtime with an emphasis on
 simplicity, robustness and portability.
 .
 Multi-line description continues here.
Homepage: https://containerd.io

Package: containerd.io
Architecture: amd64
Version: 1.6.21-1
Priority: optional
Section: devel
Maintainer: Containerd team <help@containerd.io>
Installed-Size: 116483
Depends: libc6 (>= 2.34), libseccomp2 (>= 2.5.0)
Filename: pool/stable/amd64/containerd.io_1.6.21-1_amd64.deb
Size: 28574128
MD5sum: 1c5b2b3b5e5f2d3c1c0c8f3e1d9f6a7b
SHA1: 5b1a6c0e3d2f9e8a7b6c5d4e3f2a1b0c9d8e7f6a
SHA256: 32FD2836D02DBA953178A919B773E33268769E7D65925990451D9B37A24ECE7D
Description: An open and reliable container runtime

Package: docker-ce
Architecture: amd64
Version: 5:9.0.0-1~debian.12~bookworm
Priority: optional
Section: admin
Maintainer: Docker <support@docker.com>
Installed-Size: 99000
Depends: containerd.io (>= 1.6.4), docker-ce-cli, iptables, libseccomp2 (>= 2.3.0)
Filename: pool/stable/amd64/docker-ce_9.0.0-1~debian.12~bookworm_amd64.deb
Size: 20000000
SHA256: 14b4b202d5796ddbd98bb58aae5c967dc40b0f1dc0d2d470c4c5940427b62361
Description: Docker: the open-source application container engine

Package: docker-ce
Architecture: amd64
Version: 5:28.0.1-1~debian.12~bookworm
Priority: optional
Section: admin
Maintainer: Docker <support@docker.com>
Installed-Size: 106722
Depends: containerd.io (>= 1.6.24), docker-ce-cli, iptables, libseccomp2 (>= 2.3.0)
Recommends: apparmor, ca-certificates, docker-ce-rootless-extras, git, libltdl7, pigz, procps, xz-utils
Filename: pool/stable/amd64/docker-ce_28.0.1-1~debian.12~bookworm_amd64.deb
Size: 21543960
MD5sum: 2c5b2b3b5e5f2d3c1c0c8f3e1d9f6a7b
SHA1: 6b1a6c0e3d2f9e8a7b6c5d4e3f2a1b0c9d8e7f6a
SHA256: ccd205552bf52835dfbc9409e378c3cb5863bd7d1b49240a9a5daa55a19a2e87
Description: Docker: the open-source application container engine
 Docker is a product for you to build, ship and run any application as a
 lightweight container

Package: docker-ce
Architecture: amd64
Version: 5:28.0.1~rc1-1~debian.12~bookworm
Filename: pool/stable/amd64/docker-ce_28.0.1~rc1-1~debian.12~bookworm_amd64.deb
Size: 21543000
SHA256: 1331232edef3a8e7f297638734948677812fe5a7b0611ef32f7ba51c1d2ee6fe

package: docker-ce-cli
architecture: amd64
version: 5:28.0.1-1~debian.12~bookworm
filename: pool/stable/amd64/docker-ce-cli_28.0.1-1~debian.12~bookworm_amd64.deb
size: 15128916
sha256: 696d59e375c5c25bab6c06038c88d2e5cacdaf7857381c42a2d8019b9498c911

Package: docker-buildx-plugin
Architecture: amd64
Version: 0.21.1-1~debian.12~bookworm
Filename: pool/stable/amd64/docker-buildx-plugin_0.21.1-1~debian.12~bookworm_amd64.deb
SHA256: 079c74d28ca387be38f5fa43c12a8699ac94ef51976ef8de64be3523a33c77f1

Package: docker-compose-plugin
Architecture: amd64
Version: 2.33.1-1~debian.12~bookworm
Filename: pool/stable/amd64/docker-compose-plugin_2.33.1-1~debian.12~bookworm_amd64.deb
Size: 14300000
MD5sum: 3c5b2b3b5e5f2d3c1c0c8f3e1d9f6a7b

Package: docker-compose-plugin
Architecture: amd64
Version: 2.32.4-1~debian.12~bookworm
Filename: pool/stable/amd64/docker-compose-plugin_2.32.4-1~debian.12~bookworm_amd64.deb
Size: 14200000
SHA256: db669af634b75c7f298400f3b6c2aa8ba54998bac83e23d10ab4eaadc4b50ccf
";

    fn wanted(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_realistic_index() {
        let entries = parse_packages(URL, SAMPLE).unwrap();
        // The compose stanza without SHA256 is skipped.
        assert_eq!(entries.len(), 8);
        assert_eq!(
            entries[3],
            PackageEntry {
                package: "docker-ce".into(),
                version: "5:28.0.1-1~debian.12~bookworm".into(),
                architecture: "amd64".into(),
                filename: "pool/stable/amd64/docker-ce_28.0.1-1~debian.12~bookworm_amd64.deb"
                    .into(),
                size: 21_543_960,
                sha256: "ccd205552bf52835dfbc9409e378c3cb5863bd7d1b49240a9a5daa55a19a2e87".into(),
            }
        );
        // Upper-case hex is normalised; lower-case field names are accepted;
        // a missing Size reads as 0.
        assert_eq!(
            entries[1].sha256,
            "32fd2836d02dba953178a919b773e33268769e7d65925990451d9b37a24ece7d"
        );
        assert_eq!(entries[5].package, "docker-ce-cli");
        assert_eq!(entries[5].size, 15_128_916);
        assert_eq!(entries[6].size, 0);
    }

    #[test]
    fn crlf_index_parses_the_same() {
        let crlf = SAMPLE.replace('\n', "\r\n");
        assert_eq!(
            parse_packages(URL, &crlf).unwrap(),
            parse_packages(URL, SAMPLE).unwrap()
        );
    }

    #[test]
    fn empty_index_is_empty() {
        assert!(parse_packages(URL, "").unwrap().is_empty());
        assert!(parse_packages(URL, "\n\n").unwrap().is_empty());
    }

    #[test]
    fn html_error_page_is_an_error_naming_the_source() {
        let html = "<!DOCTYPE html>\n<html><head><title>404: Not Found</title></head>\n\
                    <body>Not Found</body></html>\n";
        let err = parse_packages(URL, html).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, DebError::MalformedIndex { line: 1, .. }),
            "{msg}"
        );
        assert!(msg.contains(URL), "{msg}");
        assert!(msg.contains("<!DOCTYPE html>"), "{msg}");
        // Even a colon-bearing HTML line is not a field.
        let err = parse_packages(URL, "<title>404: Not Found</title>\n").unwrap_err();
        assert!(matches!(err, DebError::MalformedIndex { .. }), "{err}");
    }

    #[test]
    fn broken_stanzas_are_errors() {
        let cases = [
            " leading continuation\n",
            "Package: a\nPackage: b\n",
            "Package: a\nVersion: 1\nFilename: pool/a.deb\nSHA256: abc\n",
            "Package: a\nVersion: 1\nFilename: ../../etc/a.deb\nSHA256: \
             079c74d28ca387be38f5fa43c12a8699ac94ef51976ef8de64be3523a33c77f1\n",
            "Package: a\nVersion: 1\nFilename: pool/a.deb\nSize: big\nSHA256: \
             079c74d28ca387be38f5fa43c12a8699ac94ef51976ef8de64be3523a33c77f1\n",
            // A Release file: stanzas, but none names a package.
            "Origin: Docker\nSuite: bookworm\nSHA256:\n 0123 12 stable/Packages\n",
        ];
        for text in cases {
            let err = parse_packages(URL, text).unwrap_err();
            assert!(
                matches!(err, DebError::MalformedIndex { .. }),
                "{text:?}: {err}"
            );
            assert!(err.to_string().contains(URL));
        }
    }

    #[test]
    fn choose_newest_uses_dpkg_order() {
        let entries = parse_packages(URL, SAMPLE).unwrap();
        let chosen = choose_newest(
            &entries,
            &wanted(&["docker-ce", "containerd.io", "docker-compose-plugin"]),
        )
        .unwrap();
        let versions: Vec<&str> = chosen.iter().map(|e| e.version.as_str()).collect();
        // Lexicographic order would pick 5:9.0.0, 1.6.9 and the rc.
        assert_eq!(
            versions,
            [
                "5:28.0.1-1~debian.12~bookworm",
                "1.6.21-1",
                "2.32.4-1~debian.12~bookworm"
            ]
        );
        assert_eq!(chosen[0].package, "docker-ce");
    }

    #[test]
    fn choose_newest_missing_package_suggests() {
        let entries = parse_packages(URL, SAMPLE).unwrap();
        let err = choose_newest(&entries, &wanted(&["docker-ce", "docker-ce-clli"])).unwrap_err();
        let DebError::MissingPackage { name, closest } = &err else {
            panic!("{err}");
        };
        assert_eq!(name, "docker-ce-clli");
        assert_eq!(closest[0], "docker-ce-cli");
        assert!(
            err.to_string()
                .contains("closest names present: docker-ce-cli"),
            "{err}"
        );

        let err = choose_newest(&[], &wanted(&["docker-ce"])).unwrap_err();
        assert!(err.to_string().contains("lists no packages"), "{err}");
    }

    // --- Lock ------------------------------------------------------------

    fn set(codename: &str, arch: &str, version: &str) -> LockSet {
        let entry = PackageEntry {
            package: "docker-ce".into(),
            version: version.into(),
            architecture: arch.into(),
            filename: format!("pool/stable/{arch}/docker-ce_{version}_{arch}.deb"),
            size: 21_543_960,
            sha256: "ccd205552bf52835dfbc9409e378c3cb5863bd7d1b49240a9a5daa55a19a2e87".into(),
        };
        LockSet {
            codename: codename.into(),
            arch: arch.into(),
            packages: vec![LockedPackage::from(&entry)],
        }
    }

    #[test]
    fn lock_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.lock");
        let mut lock = Lock::default();
        lock.put(set("trixie", "amd64", "5:28.0.1-1~debian.13~trixie"));
        lock.put(set("bookworm", "arm64", "5:24.0.7-1~debian.12~bookworm"));
        lock.put(set("bookworm", "amd64", "1.0"));
        lock.save(&path).unwrap();

        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(LOCK_HEADER), "{text}");
        assert_eq!(Lock::load(&path).unwrap(), lock);
        // Only the lock itself is left behind: no temp files.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        // Saving an empty lock over it works too.
        Lock::default().save(&path).unwrap();
        assert_eq!(Lock::load(&path).unwrap(), Lock::default());
    }

    #[test]
    fn put_keeps_sorted_and_replaces() {
        let mut lock = Lock::default();
        lock.put(set("trixie", "amd64", "1"));
        lock.put(set("bookworm", "arm64", "1"));
        lock.put(set("bookworm", "amd64", "1"));
        lock.put(set("bookworm", "arm64", "2"));
        let keys: Vec<(&str, &str)> = lock
            .sets
            .iter()
            .map(|s| (s.codename.as_str(), s.arch.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("bookworm", "amd64"),
                ("bookworm", "arm64"),
                ("trixie", "amd64")
            ]
        );
        assert_eq!(
            lock.get("bookworm", "arm64").unwrap().packages[0].version,
            "2"
        );
        assert!(lock.get("bullseye", "amd64").is_none());
    }

    #[test]
    fn lock_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            Lock::load(&dir.path().join("nope.lock")).unwrap(),
            Lock::default()
        );
        let path = dir.path().join("comments.lock");
        fs::write(&path, format!("{LOCK_HEADER}\n\n")).unwrap();
        assert_eq!(Lock::load(&path).unwrap(), Lock::default());
    }

    #[test]
    fn corrupted_lock_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.lock");
        fs::write(
            &path,
            "sets:\n  - codename: bookworm\n    arch: [amd64\n    packages: []\n",
        )
        .unwrap();
        let err = Lock::load(&path).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DebError::LockSyntax { .. }), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(", line "), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");

        // Well-formed YAML with a value mesh cannot trust.
        let mut lock = Lock::default();
        let mut bad = set("bookworm", "amd64", "1");
        bad.packages[0].sha256 = "not-a-hash".into();
        lock.sets.push(bad);
        lock.save(&path).unwrap();
        let err = Lock::load(&path).unwrap_err();
        assert!(matches!(err, DebError::LockInvalid { .. }), "{err}");
        assert!(err.to_string().contains("docker.lock"), "{err}");
    }
}
