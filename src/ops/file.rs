//! `file`: a file with the wanted content, mode and owner.
//!
//! The quick check (as rsync does): when mesh writes a file it records the
//! file's size, mtime and sha256 under `/var/lib/mesh/files/`. If size and
//! mtime still match that record, the content is known without hashing; only
//! otherwise (or with `--checksum`) the host hashes the file. Content goes to
//! a temp name in the same directory and is renamed into place, so a reader
//! never sees a half-written file. The host keeps the temp file only after
//! the controller's closing line ([`SENT`]): every byte arrived (SSH checks
//! them in transit) and a local source still is the file mesh hashed, so the
//! host does not hash what it received again.
//!
//! Under `--dry-run` a content change is shown as a unified diff (binary or
//! large files: sizes and sha256s), secrets redacted; the host's current
//! content is fetched only for files that differ, all in one round trip.
//! A private file (no read for others, as files holding secrets are made)
//! never has its content shown.

use super::{field, Decision, Op, OpCtx, Part, STATE_DIR};
use crate::log::HostLog;
use crate::quote::Script;
use crate::ssh::{sent_line, FileStamp, Input, Stamped, SENT};
use sha2::{Digest, Sha256};
use similar::TextDiff;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// Where the content comes from.
#[derive(Debug, Clone)]
pub enum Content {
    Bytes(Arc<Vec<u8>>),
    /// A local file, streamed at upload time as it was when it was hashed.
    Local(Stamped),
}

/// Largest content sent inside the script rather than on stdin.
const INLINE_MAX: usize = 16 * 1024;

pub(crate) const CONTENT: u32 = 1;
const META: u32 = 2;
const RECORD: u32 = 4;

/// Largest file (on either side) a dry run fetches and diffs; larger ones
/// show sizes and hashes only.
const DIFF_MAX_BYTES: u64 = 256 * 1024;

/// Lines of a dry-run diff shown; the rest is counted.
const DIFF_MAX_LINES: usize = 200;

#[derive(Debug, Clone)]
pub struct FileOp {
    path: String,
    content: Content,
    size: u64,
    sha256: String,
    mode: u32,
    owner: String,
    group: String,
    id: Option<String>,
}

/// A temp file name's random part: no two runs (nor a run killed before it
/// could remove its temp file) pick the same one.
fn temp_token(path: &str) -> String {
    use std::hash::BuildHasher;
    format!(
        "{:016x}",
        std::collections::hash_map::RandomState::new().hash_one(path)
    )
}

/// Hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a local file, computed once per run while the file stays the
/// same (inode, size, mtime, ctime): the same 20 MB asset pushed to 200
/// hosts is hashed once.
pub fn sha256_local(path: &Path) -> std::io::Result<(u64, String)> {
    stamped_local(path).map(|(sha, s)| (s.stamp.len, sha))
}

/// sha256 of a local file and the stamp it had while it was hashed.
fn stamped_local(path: &Path) -> std::io::Result<(String, Stamped)> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, (FileStamp, String)>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    let stamped = |stamp| Stamped {
        path: path.to_path_buf(),
        stamp,
    };
    let now = FileStamp::of(&std::fs::metadata(path)?);
    if let Some((stamp, h)) = cache.lock().unwrap().get(path) {
        if *stamp == now {
            return Ok((h.clone(), stamped(now)));
        }
    }
    let mut f = std::fs::File::open(path)?;
    let before = FileStamp::of(&f.metadata()?);
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher)?;
    if FileStamp::of(&f.metadata()?) != before {
        return Err(std::io::Error::other(
            "it changed while mesh hashed it; run again once nothing writes to it",
        ));
    }
    let h = hex(&hasher.finalize());
    cache
        .lock()
        .unwrap()
        .insert(path.to_path_buf(), (before, h.clone()));
    Ok((h, stamped(before)))
}

impl FileOp {
    /// A file with this content, mode 0644, owned by root.
    pub fn from_bytes(path: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Self {
        let bytes: Vec<u8> = bytes.into();
        FileOp {
            path: path.into(),
            size: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
            content: Content::Bytes(Arc::new(bytes)),
            mode: 0o644,
            owner: "root".into(),
            group: "root".into(),
            id: None,
        }
    }

    /// Shared content whose sha256 the caller already knows (a build
    /// context file sent to many hosts is neither copied nor re-hashed).
    pub fn from_shared(path: impl Into<String>, bytes: Arc<Vec<u8>>, sha256: String) -> Self {
        FileOp {
            path: path.into(),
            size: bytes.len() as u64,
            sha256,
            content: Content::Bytes(bytes),
            mode: 0o644,
            owner: "root".into(),
            group: "root".into(),
            id: None,
        }
    }

    /// A copy of a local file (hashed once per run, streamed on upload).
    pub fn from_local(path: impl Into<String>, local: &Path) -> std::io::Result<Self> {
        let (sha256, stamped) = stamped_local(local)?;
        Ok(FileOp {
            path: path.into(),
            size: stamped.stamp.len,
            sha256,
            content: Content::Local(stamped),
            mode: 0o644,
            owner: "root".into(),
            group: "root".into(),
            id: None,
        })
    }

    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    pub fn owner(mut self, owner: &str, group: &str) -> Self {
        self.owner = owner.into();
        self.group = group.into();
        self
    }

    /// Name for triggers (e.g. restart a service when this file changes).
    pub fn id(mut self, id: &str) -> Self {
        self.id = Some(id.into());
        self
    }

    #[cfg(test)]
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    fn record_path(&self) -> String {
        format!(
            "{STATE_DIR}/files/{}",
            &sha256_hex(self.path.as_bytes())[..32]
        )
    }

    /// Probe lines: `stat SIZE MTIME MODE OWNER:GROUP TYPE` or `stat absent`,
    /// `rec SIZE MTIME SHA` or `rec none`, and with `checksum` `sum SHA`.
    pub(crate) fn probe_script(&self, checksum: bool) -> Script {
        let mut s = Script::new();
        s.line(
            "if [ -e {} ] || [ -L {} ]; then stat -c 'stat %s %Y %a %U:%G %F' -- {}; else echo 'stat absent'; fi",
            &[&self.path, &self.path, &self.path],
        );
        s.line(
            "if [ -r {} ]; then echo \"rec $(cat {})\"; else echo 'rec none'; fi",
            &[&self.record_path(), &self.record_path()],
        );
        if checksum {
            s.line(
                "if [ -f {} ]; then echo \"sum $(sha256sum < {} | cut -d' ' -f1)\"; fi",
                &[&self.path, &self.path],
            );
        }
        s
    }

    pub(crate) fn decide_file(&self, probe: &str, recheck: Option<&str>) -> Decision {
        let Some(stat) = field(probe, "stat") else {
            return Decision::Fail(format!("cannot stat {}: {}", self.path, probe.trim()));
        };
        if stat == "absent" {
            return Decision::change("create", CONTENT);
        }
        let parts: Vec<&str> = stat.splitn(5, ' ').collect();
        let [size, mtime, mode, owner, ftype] = parts[..] else {
            return Decision::Fail(format!("unexpected stat output for {}: {stat}", self.path));
        };
        if ftype == "directory" {
            return Decision::Fail(format!(
                "{} is a directory on the host. Fix: remove it or choose another path",
                self.path
            ));
        }
        if ftype != "regular file" && ftype != "regular empty file" {
            return Decision::change(format!("replace {ftype}"), CONTENT);
        }
        let mut flags = 0;
        let mut reasons = Vec::new();
        let want_mode = format!("{:o}", self.mode);
        let want_owner = format!("{}:{}", self.owner, self.group);
        if mode != want_mode {
            flags |= META;
            reasons.push(format!("mode {mode} -> {want_mode}"));
        }
        if owner != want_owner {
            flags |= META;
            reasons.push(format!("owner {owner} -> {want_owner}"));
        }
        let content_same = if size != self.size.to_string() {
            Some(false)
        } else if let Some(sum) = field(probe, "sum").or(recheck.map(str::trim)) {
            Some(sum == self.sha256)
        } else {
            match field(probe, "rec").map(|r| r.split(' ').collect::<Vec<_>>()) {
                // A record cut short (see record_script) is no record.
                Some(r)
                    if r.len() == 3
                        && r[0] == size
                        && r[1] == mtime
                        && super::image::script::is_hex64(r[2]) =>
                {
                    Some(r[2] == self.sha256)
                }
                _ => None,
            }
        };
        match content_same {
            Some(false) => {
                flags |= CONTENT;
                reasons.insert(0, "content differs".into());
            }
            Some(true) => {
                let recorded = field(probe, "rec")
                    .is_some_and(|r| r == format!("{size} {mtime} {}", self.sha256));
                if !recorded && flags == 0 {
                    return Decision::Refresh { flags: RECORD };
                }
                if !recorded {
                    flags |= RECORD;
                }
            }
            None => {
                let mut s = Script::new();
                s.line("sha256sum < {} | cut -d' ' -f1", &[&self.path]);
                return Decision::Recheck(s.into_string());
            }
        }
        if flags & (CONTENT | META) == 0 {
            Decision::Unchanged
        } else {
            Decision::change(reasons.join(", "), flags)
        }
    }

    fn record_script(&self) -> Script {
        let rec = self.record_path();
        let dir = format!("{STATE_DIR}/files");
        let mut s = Script::new();
        s.line("[ -d {} ] || mkdir -p {}", &[&dir, &dir]);
        // Written in place: only root writes under STATE_DIR, and a record cut
        // short is no record (the next probe hashes the file instead).
        // Private, like the temp files: a sha256 can give a short secret away.
        s.line(
            "(umask 077; echo \"$(stat -c '%s %Y' -- {}) {}\" > {})",
            &[&self.path, &self.sha256, &rec],
        );
        s
    }

    /// Content small enough to travel inside the script: text without NUL,
    /// at most [`INLINE_MAX`] bytes, and only for files everyone may read
    /// (a script is visible in the host's process list while it runs).
    fn inline_content(&self) -> Option<&str> {
        match &self.content {
            Content::Bytes(b) if b.len() <= INLINE_MAX && self.mode & 0o044 == 0o044 => {
                std::str::from_utf8(b).ok().filter(|t| !t.contains('\0'))
            }
            _ => None,
        }
    }

    /// The change as a script; content comes inline or as exactly this
    /// file's bytes on stdin.
    pub(crate) fn part(&self, flags: u32) -> Part {
        let owner = format!("{}:{}", self.owner, self.group);
        let mode = format!("{:o}", self.mode);
        // Decided once: the script and the stdin must agree on where content comes from.
        let inline = self.inline_content().filter(|_| flags & CONTENT != 0);
        let mut s = Script::new();
        if flags & CONTENT != 0 {
            let dir = Path::new(&self.path)
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "/".into());
            let size = self.size.to_string();
            // Builtins where they do: a cold host runs this for every file,
            // and on a busy host each process started costs milliseconds.
            s.line("[ -d {} ] || mkdir -p -- {}", &[&dir, &dir]);
            // The temp file is made exclusively (noclobber: O_EXCL, so no
            // symlink is followed and nothing existing is reused) under a
            // name no earlier run left, then checked to be the regular file
            // this shell owns; it goes on exit and hangup. Content anyone may
            // read is made 0644 at once, anything else 0600 until it is whole.
            let (umask, made) = if self.mode & 0o644 == 0o644 {
                ("022", 0o644)
            } else {
                ("077", 0o600)
            };
            s.line(
                "t={}",
                &[&format!("{dir}/.mesh-tmp.{}", temp_token(&self.path))],
            );
            s.line("(set -C; umask {}; : > \"$t\")", &[umask]);
            s.raw("[ -f \"$t\" ] && [ ! -h \"$t\" ] && [ -O \"$t\" ] || { echo \"$t: not the temp file mesh made\" >&2; exit 1; }");
            s.raw("trap 'rm -f -- \"$t\"' EXIT");
            s.raw("trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 141' PIPE; trap 'exit 143' TERM");
            match inline {
                // Small public text rides in the script, leaving stdin to one
                // big file; it cannot arrive other than as sent.
                Some(text) => {
                    s.line("printf %s {} > \"$t\"", &[text]);
                }
                // Exactly SIZE bytes, so several files can share one stdin (see run_batch).
                None => {
                    s.line("mesh_read {} > \"$t\"", &[&size]);
                    // The controller ends the bytes with the line SENT only
                    // when they are all there and are what it hashed (a local
                    // file that changed meanwhile stops the stream instead):
                    // what is recorded is what arrived, without hashing it
                    // again here (SSH already checks every byte in transit).
                    s.line(
                        "IFS= read -r m || m=; [ \"$m\" = {} ] || { echo \"upload cut short: $(stat -c %s -- \"$t\") of {} bytes arrived\" >&2; exit 1; }",
                        &[SENT, &size],
                    );
                }
            }
            if owner == "root:root" {
                // Made by the running user (scripts run as root); a setgid
                // directory may have given it another group.
                s.line("[ -G \"$t\" ] || chown {} -- \"$t\"", &[&owner]);
            } else {
                s.line("chown {} -- \"$t\"", &[&owner]);
            }
            // chown clears set-id bits: the mode comes after it.
            if self.mode != made {
                s.line("chmod {} -- \"$t\"", &[&mode]);
            }
            s.line("mv -f -- \"$t\" {}", &[&self.path]);
            s.raw("trap - EXIT");
        } else if flags & META != 0 {
            s.line("chown {} -- {}", &[&owner, &self.path]);
            s.line("chmod {} -- {}", &[&mode, &self.path]);
        }
        if flags & (CONTENT | RECORD) != 0 {
            s.append(&self.record_script());
        }
        let input = match &self.content {
            _ if flags & CONTENT == 0 || inline.is_some() => Input::None,
            Content::Bytes(b) => {
                Input::Chain(vec![Input::Bytes(b.clone()), Input::Bytes(sent_line())])
            }
            Content::Local(s) => Input::Stamped(s.clone()),
        };
        Part {
            script: s,
            input,
            changes: flags & (CONTENT | META) != 0,
        }
    }
}

/// What a probe found at a file's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnHost {
    Absent,
    /// `mode` is 0 when it could not be read (so the file counts as private).
    Regular {
        size: u64,
        mode: u32,
    },
    Other,
}

fn on_host(probe: &str) -> OnHost {
    match field(probe, "stat") {
        Some("absent") => OnHost::Absent,
        Some(stat) => {
            let parts: Vec<&str> = stat.splitn(5, ' ').collect();
            match parts[..] {
                [size, _, mode, _, "regular file" | "regular empty file"] => OnHost::Regular {
                    size: size.parse().unwrap_or(u64::MAX),
                    mode: u32::from_str_radix(mode, 8).unwrap_or(0),
                },
                _ => OnHost::Other,
            }
        }
        None => OnHost::Other,
    }
}

/// One side of a dry-run diff; `bytes` is `None` when too large (or unreadable).
struct Side {
    size: u64,
    sha256: String,
    bytes: Option<Vec<u8>>,
}

impl Side {
    fn of(bytes: Vec<u8>) -> Self {
        Side {
            size: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
            bytes: Some(bytes),
        }
    }

    /// The content as text, unless it is binary (not UTF-8, or has a NUL) or unknown.
    fn text(&self) -> Option<&str> {
        let text = std::str::from_utf8(self.bytes.as_deref()?).ok()?;
        (!text.contains('\0')).then_some(text)
    }

    fn is_binary(&self) -> bool {
        self.bytes.is_some() && self.text().is_none()
    }
}

impl FileOp {
    /// Whether the content must never be shown: the file is private (no
    /// read for others, as files holding secret values are made) here or
    /// on the host.
    fn secret(&self, host: OnHost) -> bool {
        let private = |mode: u32| mode & 0o004 == 0;
        private(self.mode) || matches!(host, OnHost::Regular { mode, .. } if private(mode))
    }

    /// The wanted content as one diff side (read from disk for local files).
    fn wanted_side(&self) -> Side {
        let bytes = match &self.content {
            _ if self.size > DIFF_MAX_BYTES => None,
            Content::Bytes(b) => Some(b.to_vec()),
            Content::Local(s) => std::fs::read(&s.path).ok(),
        };
        match bytes {
            Some(b) => Side::of(b),
            None => Side {
                size: self.size,
                sha256: self.sha256.clone(),
                bytes: None,
            },
        }
    }

    /// The host's content from a preview script's output (`b64 DATA` or `sum SHA`).
    fn current_side(fetched: &str, size: u64) -> Option<Side> {
        if let Some(data) = field(fetched, "b64") {
            return crate::secrets::base64_decode(data.trim()).map(Side::of);
        }
        let sum = field(fetched, "sum")?.trim();
        (sum.len() == 64).then(|| Side {
            size,
            sha256: sum.to_string(),
            bytes: None,
        })
    }

    /// `--dry-run` detail lines below the reason: a unified diff for text, else
    /// sizes and sha256s. `current` is `None` for a file that does not exist yet.
    fn describe(&self, current: Option<&Side>, log: &HostLog) -> Vec<String> {
        let wanted = self.wanted_side();
        let old_text = match current {
            None => Some(""),
            Some(side) => side.text(),
        };
        if let (Some(old), Some(new)) = (old_text, wanted.text()) {
            let (from, to) = match current {
                None => ("/dev/null".to_string(), self.path.clone()),
                Some(_) => (
                    format!("{} (current)", self.path),
                    format!("{} (wanted)", self.path),
                ),
            };
            let diff = TextDiff::from_lines(old, new)
                .unified_diff()
                .context_radius(3)
                .header(&from, &to)
                .to_string();
            // Redacted whole, before the cut: a secret cannot be half-shown.
            let diff = log.redact(&diff);
            let lines: Vec<&str> = diff.lines().collect();
            let mut out: Vec<String> = lines
                .iter()
                .take(DIFF_MAX_LINES)
                .map(|l| l.to_string())
                .collect();
            if lines.len() > DIFF_MAX_LINES {
                out.push(format!("… {} more lines", lines.len() - DIFF_MAX_LINES));
            }
            return out;
        }
        let kind = if current.is_some_and(Side::is_binary) || wanted.is_binary() {
            "binary"
        } else {
            "too large to diff"
        };
        match current {
            None => vec![format!(
                "new file ({kind}), {} bytes, sha256 {}",
                wanted.size, wanted.sha256
            )],
            Some(old) => vec![
                format!("{kind}, size {} -> {} bytes", old.size, wanted.size),
                format!("sha256 {} -> {}", old.sha256, wanted.sha256),
            ],
        }
    }
}

impl Op for FileOp {
    fn label(&self) -> String {
        format!("file {}", self.path)
    }

    fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    fn probe(&self, ctx: &OpCtx<'_>) -> Option<Script> {
        Some(self.probe_script(ctx.checksum))
    }

    fn decide(&self, probe: &str, recheck: Option<&str>, _triggered: bool) -> Decision {
        self.decide_file(probe, recheck)
    }

    fn apply_part(&self, flags: u32) -> Option<Part> {
        Some(self.part(flags))
    }

    /// The host's current content (base64), or only its sha256 when either
    /// side is too large to diff; nothing for a secret or absent file.
    fn preview_script(&self, probe: &str, flags: u32) -> Option<Script> {
        let host = on_host(probe);
        let OnHost::Regular { size, .. } = host else {
            return None;
        };
        if flags & CONTENT == 0 || self.secret(host) {
            return None;
        }
        let mut s = Script::new();
        if size <= DIFF_MAX_BYTES && self.size <= DIFF_MAX_BYTES {
            s.line(
                "if b=$(base64 -w0 < {}); then echo \"b64 $b\"; fi",
                &[&self.path],
            );
        } else {
            s.line(
                "echo \"sum $(sha256sum < {} | cut -d' ' -f1)\"",
                &[&self.path],
            );
        }
        Some(s)
    }

    fn preview(
        &self,
        reason: &str,
        probe: &str,
        flags: u32,
        fetched: Option<&str>,
        log: &HostLog,
    ) -> String {
        let host = on_host(probe);
        if flags & CONTENT == 0 || host == OnHost::Other {
            return reason.to_string();
        }
        if self.secret(host) {
            return if reason.contains("content differs") {
                reason.replacen("content differs", "content differs (secret, not shown)", 1)
            } else {
                format!("{reason} (secret, not shown)")
            };
        }
        let current = match host {
            OnHost::Regular { size, .. } => {
                match fetched.and_then(|f| Self::current_side(f, size)) {
                    Some(side) => Some(side),
                    None => {
                        return format!("{reason}\n(no diff: the current file could not be read)")
                    }
                }
            }
            _ => None,
        };
        let lines = self.describe(current.as_ref(), log);
        if lines.is_empty() {
            return reason.to_string();
        }
        format!("{reason}\n{}", lines.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The part sent as mesh sends a change batch, run by the local `sh`;
    /// its stdin is read from the local file only now, as the upload would.
    fn upload_locally(part: Part) -> Result<(), crate::ops::OpError> {
        let conn = crate::ssh::recording::RecordingTransport::local_sh(None);
        let log = HostLog::discard();
        let ctx = OpCtx {
            conn: &conn,
            log: &log,
            checksum: false,
            kind: crate::ssh::CommandKind::Normal,
        };
        let batch = super::super::run_batch(&ctx, vec![("upload".into(), part)]);
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(batch)
            .map_err(|(_, e)| e)
    }

    #[test]
    fn a_local_file_changed_after_hashing_is_refused_on_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("asset");
        std::fs::write(&local, b"checked bytes\n").unwrap();
        let dest = dir.path().join("on-host/asset");
        let op = FileOp::from_local(dest.to_str().unwrap(), &local).unwrap();
        // Same size, other bytes: the size check alone would pass.
        std::fs::write(&local, b"changed bytes\n").unwrap();
        let err = upload_locally(op.part(CONTENT)).unwrap_err().to_string();
        assert!(err.contains("upload cut short"), "{err}");
        assert!(!dest.exists(), "a file that differs was put in place");
        let left: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "temp files left: {left:?}");
    }

    #[test]
    fn temp_files_are_made_exclusively_under_a_new_name_and_removed_on_hangup() {
        let part = |op: &FileOp| op.part(CONTENT).script.into_string();
        let op = FileOp::from_bytes("/etc/x.conf", vec![0u8; 5000]).mode(0o600);
        let (a, b) = (part(&op), part(&op));
        let temp = |s: &str| s.lines().find(|l| l.starts_with("t=")).unwrap().to_string();
        assert!(temp(&a).starts_with("t=/etc/.mesh-tmp."), "{a}");
        assert_ne!(temp(&a), temp(&b), "two runs share a temp name");
        assert!(a.contains("(set -C; umask 077; : > \"$t\")"), "{a}");
        assert!(a.contains("trap 'exit 129' HUP"), "{a}");
        assert!(!a.contains("$$"), "{a}");
        // Content anyone may read is made 0644, so needs no chmod.
        let public = part(&FileOp::from_bytes("/etc/x.conf", "a\n"));
        assert!(public.contains("umask 022"), "{public}");
        assert!(!public.contains("chmod"), "{public}");
        let script = part(&FileOp::from_bytes("/etc/x.sh", "a\n").mode(0o755));
        assert!(script.contains("chmod 755 -- \"$t\""), "{script}");
    }

    #[test]
    fn a_symlink_at_the_temp_name_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("app.conf");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep\n").unwrap();
        let part = FileOp::from_bytes(dest.to_str().unwrap(), "new\n").part(CONTENT);
        let script = part.script.clone().into_string();
        let temp = script.lines().find_map(|l| l.strip_prefix("t=")).unwrap();
        std::os::unix::fs::symlink(&victim, temp).unwrap();
        assert!(upload_locally(part).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep\n");
        assert!(!dest.exists());
    }

    #[test]
    fn files_are_written_with_their_mode_and_a_record() {
        let dir = tempfile::tempdir().unwrap();
        for (name, mode) in [("public", 0o644), ("private", 0o600), ("script", 0o755)] {
            let dest = dir.path().join(name);
            let op = FileOp::from_bytes(dest.to_str().unwrap(), "x\n").mode(mode);
            let mut part = op.part(CONTENT);
            // The record goes beside the file here, not under STATE_DIR.
            let rec = dir.path().join(format!("{name}.rec"));
            let script = part
                .script
                .clone()
                .into_string()
                .replace(&op.record_path(), rec.to_str().unwrap())
                .replace(&format!("{STATE_DIR}/files"), dir.path().to_str().unwrap());
            part.script = Script::new();
            part.script.raw(&script);
            upload_locally(part).unwrap();
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(&dest).unwrap();
            assert_eq!(meta.permissions().mode() & 0o7777, mode, "{name}");
            let record = std::fs::read_to_string(&rec).unwrap();
            assert!(
                record.starts_with("2 ") && record.trim_end().ends_with(op.sha256()),
                "{record}"
            );
        }
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".mesh-tmp"))
            .collect();
        assert!(left.is_empty(), "temp files left: {left:?}");
    }

    #[test]
    fn a_record_cut_short_is_no_record() {
        let op = op();
        let sha = op.sha256().to_string();
        let probe = format!(
            "stat 6 100 600 root:root regular file\nrec 6 100 {}\n",
            &sha[..20]
        );
        assert!(matches!(op.decide_file(&probe, None), Decision::Recheck(_)));
    }

    fn op() -> FileOp {
        FileOp::from_bytes("/etc/x.conf", "hello\n").mode(0o600)
    }

    #[test]
    fn absent_file_is_created() {
        assert_eq!(
            op().decide_file("stat absent\nrec none\n", None),
            Decision::change("create", CONTENT)
        );
    }

    #[test]
    fn matching_record_skips_hashing() {
        let o = op();
        let probe = format!(
            "stat 6 1700000000 600 root:root regular file\nrec 6 1700000000 {}\n",
            o.sha256()
        );
        assert_eq!(o.decide_file(&probe, None), Decision::Unchanged);
    }

    #[test]
    fn stale_record_asks_for_a_hash_then_refreshes_the_record() {
        let o = op();
        let probe = format!(
            "stat 6 1700000999 600 root:root regular file\nrec 6 1700000000 {}\n",
            o.sha256()
        );
        assert!(matches!(o.decide_file(&probe, None), Decision::Recheck(_)));
        assert_eq!(
            o.decide_file(&probe, Some(&format!("{}\n", o.sha256()))),
            Decision::Refresh { flags: RECORD }
        );
        assert!(matches!(
            o.decide_file(&probe, Some("deadbeef")),
            Decision::Change { flags, .. } if flags & CONTENT != 0
        ));
    }

    #[test]
    fn size_mismatch_needs_no_hash() {
        let probe = "stat 99 1 600 root:root regular file\nrec none\n";
        assert!(matches!(
            op().decide_file(probe, None),
            Decision::Change { flags: CONTENT, .. }
        ));
    }

    #[test]
    fn mode_and_owner_drift_is_fixed_without_upload() {
        let o = op();
        let probe = format!(
            "stat 6 5 644 www:www regular file\nrec 6 5 {}\n",
            o.sha256()
        );
        match o.decide_file(&probe, None) {
            Decision::Change { reason, flags } => {
                assert_eq!(flags, META);
                assert!(reason.contains("mode 644 -> 600"), "{reason}");
                assert!(reason.contains("owner www:www -> root:root"), "{reason}");
            }
            d => panic!("unexpected {d:?}"),
        }
    }

    #[test]
    fn checksum_line_wins_over_record() {
        let o = op();
        let probe = format!(
            "stat 6 5 600 root:root regular file\nrec 6 5 {}\nsum 00ff\n",
            o.sha256()
        );
        assert!(matches!(
            o.decide_file(&probe, None),
            Decision::Change { flags, .. } if flags & CONTENT != 0
        ));
    }

    #[test]
    fn a_directory_in_the_way_is_an_error() {
        let probe = "stat 4096 5 755 root:root directory\nrec none\n";
        assert!(matches!(op().decide_file(probe, None), Decision::Fail(_)));
        let link = "stat 4 5 777 root:root symbolic link\nrec none\n";
        assert!(matches!(
            op().decide_file(link, None),
            Decision::Change { flags: CONTENT, .. }
        ));
    }

    #[test]
    fn local_hash_matches_bytes_hash() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let (size, h) = sha256_local(&p).unwrap();
        assert_eq!(size, 3);
        assert_eq!(h, sha256_hex(b"abc"));
    }

    #[test]
    fn sha256_known_vectors() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&[u8], &str); 3] = [
            (
                b"",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            (
                b"abc",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            // Larger than the read buffer.
            (
                &[b'a'; 1_000_000],
                "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
            ),
        ];
        for (i, (data, want)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("f{i}"));
            std::fs::write(&path, data).unwrap();
            assert_eq!(
                sha256_local(&path).unwrap(),
                (data.len() as u64, want.to_string())
            );
        }
        assert!(sha256_local(&dir.path().join("absent")).is_err());
    }

    mod dry_run {
        use super::super::*;
        use crate::ops::{converge, OpReport, Outcome};
        use crate::secrets::base64_encode;
        use crate::ssh::recording::{ok, RecordingTransport};
        use crate::ssh::CommandKind;
        use crate::template::Redactor;
        use std::collections::BTreeMap;

        /// A host answering probes and previews from `files` (path -> content,
        /// mode); a path not listed does not exist.
        fn fake_host(files: BTreeMap<String, (Vec<u8>, u32)>) -> RecordingTransport {
            RecordingTransport::new(move |script, _| {
                let mut out = String::new();
                // Each op's snippet follows its marker line.
                for part in script.split("echo '@@mesh-op ").skip(1) {
                    let (idx, body) = part.split_once('\'').unwrap();
                    out.push_str(&format!("@@mesh-op {idx}\n"));
                    let Some((content, mode)) = files
                        .iter()
                        .find(|(p, _)| body.contains(p.as_str()))
                        .map(|(_, f)| f)
                    else {
                        out.push_str("stat absent\nrec none\n");
                        continue;
                    };
                    if body.contains("stat -c") {
                        out.push_str(&format!(
                            "stat {} 1700000000 {mode:o} root:root regular file\nrec none\n",
                            content.len()
                        ));
                    } else if body.contains("base64 -w0") {
                        out.push_str(&format!("b64 {}\n", base64_encode(content)));
                    } else if body.contains("echo \"sum") {
                        out.push_str(&format!("sum {}\n", sha256_hex(content)));
                    } else {
                        // A recheck: the bare hash.
                        out.push_str(&format!("{}\n", sha256_hex(content)));
                    }
                }
                ok(&out)
            })
        }

        fn host(files: &[(&str, &[u8], u32)]) -> RecordingTransport {
            fake_host(
                files
                    .iter()
                    .map(|(p, c, m)| (p.to_string(), (c.to_vec(), *m)))
                    .collect(),
            )
        }

        fn dry_run_with(
            conn: &RecordingTransport,
            ops: Vec<FileOp>,
            log: &HostLog,
        ) -> Vec<OpReport> {
            let ops: Vec<Box<dyn Op>> = ops
                .into_iter()
                .map(|o| Box::new(o) as Box<dyn Op>)
                .collect();
            let ctx = OpCtx {
                conn,
                log,
                checksum: false,
                kind: CommandKind::Normal,
            };
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(converge(&ctx, &ops, true))
                .unwrap()
        }

        /// The detail of `op` dry-run on `conn`, without redaction.
        fn detail(conn: &RecordingTransport, op: FileOp) -> String {
            let reports = dry_run_with(conn, vec![op], &HostLog::discard());
            assert_eq!(reports[0].outcome, Outcome::WouldChange);
            reports[0].detail.clone()
        }

        #[test]
        fn a_changed_text_file_shows_a_unified_diff() {
            let conn = host(&[("/etc/app.conf", b"a\nold line\nc\n", 0o644)]);
            let d = detail(
                &conn,
                FileOp::from_bytes("/etc/app.conf", "a\nnew line, longer\nc\n"),
            );
            let want = "content differs\n\
                --- /etc/app.conf (current)\n\
                +++ /etc/app.conf (wanted)\n\
                @@ -1,3 +1,3 @@\n a\n-old line\n+new line, longer\n c";
            assert_eq!(d, want);
            let calls = conn.calls();
            assert_eq!(calls.len(), 2, "probe + one preview: {calls:?}");
            assert!(calls[1].contains("base64 -w0"), "{}", calls[1]);
        }

        #[test]
        fn previews_of_several_files_share_one_round_trip() {
            let conn = host(&[
                ("/etc/a", b"one\n", 0o644),
                ("/etc/b", b"two\n", 0o644),
                ("/etc/same", b"same\n", 0o644),
            ]);
            let reports = dry_run_with(
                &conn,
                vec![
                    FileOp::from_bytes("/etc/a", "uno\n"),
                    FileOp::from_bytes("/etc/same", "same\n"),
                    FileOp::from_bytes("/etc/b", "dos\n"),
                    FileOp::from_bytes("/etc/new", "fresh\n"),
                ],
                &HostLog::discard(),
            );
            assert!(
                reports[0].detail.contains("-one\n+uno"),
                "{}",
                reports[0].detail
            );
            assert_eq!(reports[1].outcome, Outcome::Unchanged);
            assert!(
                reports[2].detail.contains("-two\n+dos"),
                "{}",
                reports[2].detail
            );
            assert!(
                reports[3]
                    .detail
                    .starts_with("create\n--- /dev/null\n+++ /etc/new\n@@ -0,0 +1 @@\n+fresh"),
                "{}",
                reports[3].detail
            );
            // probe, recheck of the same-size file, one preview for /etc/a and /etc/b.
            let calls = conn.calls();
            assert_eq!(calls.len(), 3, "{calls:?}");
            let preview = &calls[2];
            assert_eq!(preview.matches("base64 -w0").count(), 2, "{preview}");
            assert!(!preview.contains("/etc/new") && !preview.contains("/etc/same"));
        }

        #[test]
        fn secret_values_are_redacted_in_the_diff() {
            let dir = tempfile::tempdir().unwrap();
            let mut redactor = Redactor::default();
            redactor.add("hunter2-secret");
            let log = HostLog::create(dir.path(), "h", redactor).unwrap();
            let conn = host(&[("/etc/app.env", b"USER=app\nPASSWORD=old\n", 0o644)]);
            let reports = dry_run_with(
                &conn,
                vec![FileOp::from_bytes(
                    "/etc/app.env",
                    "USER=app\nPASSWORD=hunter2-secret\n",
                )],
                &log,
            );
            let d = &reports[0].detail;
            assert!(d.contains("-PASSWORD=old\n+PASSWORD=***"), "{d}");
            assert!(!d.contains("hunter2"), "{d}");
            // The fetched content is not logged either.
            let logged = std::fs::read_to_string(dir.path().join("h.log")).unwrap();
            assert!(!logged.contains(&base64_encode(b"USER=app\nPASSWORD=old\n")));
        }

        #[test]
        fn a_binary_file_shows_sizes_and_hashes() {
            let old: &[u8] = &[0x7f, b'E', b'L', b'F', 0, 1];
            let new: &[u8] = &[0xff, 0xfe, 1, 2, 3, 4, 5, 6];
            let conn = host(&[("/usr/local/bin/tool", old, 0o755)]);
            let d = detail(
                &conn,
                FileOp::from_bytes("/usr/local/bin/tool", new).mode(0o755),
            );
            assert_eq!(
                d,
                format!(
                    "content differs\nbinary, size 6 -> 8 bytes\nsha256 {} -> {}",
                    sha256_hex(old),
                    sha256_hex(new)
                )
            );
            // A new binary file: its size and hash, nothing fetched.
            let conn = host(&[]);
            let d = detail(&conn, FileOp::from_bytes("/usr/local/bin/tool", new));
            assert_eq!(
                d,
                format!(
                    "create\nnew file (binary), 8 bytes, sha256 {}",
                    sha256_hex(new)
                )
            );
            assert_eq!(conn.calls().len(), 1);
        }

        #[test]
        fn a_secret_file_never_shows_its_content() {
            // Private here and on the host; public here but private on the host; a new private file.
            let cases = [
                (0o600, Some(0o600), "content differs (secret, not shown)"),
                (
                    0o644,
                    Some(0o600),
                    "content differs (secret, not shown), mode 600 -> 644",
                ),
                (0o640, None, "create (secret, not shown)"),
            ];
            for (mode, on_host, want) in cases {
                let conn = match on_host {
                    Some(m) => host(&[("/etc/key", b"old-key-material\n", m)]),
                    None => host(&[]),
                };
                let d = detail(
                    &conn,
                    FileOp::from_bytes("/etc/key", "new-key-material\n").mode(mode),
                );
                assert_eq!(d, want);
                let calls = conn.calls();
                assert!(calls.iter().all(|c| !c.contains("base64")), "{calls:?}");
            }
        }

        #[test]
        fn a_long_diff_is_cut() {
            let conn = host(&[]);
            let text: String = (0..500).map(|i| format!("line {i}\n")).collect();
            let d = detail(&conn, FileOp::from_bytes("/etc/long", text));
            let lines: Vec<&str> = d.lines().collect();
            // The reason, then 200 diff lines (3 of them headers), then the count.
            assert_eq!(lines.len(), 1 + DIFF_MAX_LINES + 1);
            assert_eq!(lines[4], "+line 0");
            assert_eq!(lines[DIFF_MAX_LINES], "+line 196");
            assert_eq!(lines[DIFF_MAX_LINES + 1], "… 303 more lines");
        }

        #[test]
        fn a_large_file_is_compared_by_hash() {
            let big = vec![b'x'; DIFF_MAX_BYTES as usize + 1];
            let conn = host(&[("/srv/big.txt", b"small\n", 0o644)]);
            let d = detail(&conn, FileOp::from_bytes("/srv/big.txt", big.clone()));
            assert_eq!(
                d,
                format!(
                    "content differs\ntoo large to diff, size 6 -> {} bytes\nsha256 {} -> {}",
                    big.len(),
                    sha256_hex(b"small\n"),
                    sha256_hex(&big)
                )
            );
            assert!(conn.calls()[1].contains("sha256sum"), "{:?}", conn.calls());
        }

        #[test]
        fn the_preview_script_reads_a_real_file() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("it's a file");
            std::fs::write(&path, "old\n").unwrap();
            let op = FileOp::from_bytes(path.to_str().unwrap(), "new\n");
            let probe = "stat 4 1 644 root:root regular file\nrec none\n";
            let script = op.preview_script(probe, CONTENT).unwrap();
            crate::quote::assert_valid_sh(&script);
            let out = std::process::Command::new("sh")
                .args(["-c", script.as_str()])
                .output()
                .unwrap();
            let fetched = String::from_utf8(out.stdout).unwrap();
            let d = op.preview(
                "content differs",
                probe,
                CONTENT,
                Some(&fetched),
                &HostLog::discard(),
            );
            assert!(d.ends_with("@@ -1 +1 @@\n-old\n+new"), "{d}");
            // Unreadable: said so, not a false diff.
            let d = op.preview(
                "content differs",
                probe,
                CONTENT,
                Some(""),
                &HostLog::discard(),
            );
            assert_eq!(
                d,
                "content differs\n(no diff: the current file could not be read)"
            );
        }
    }
}
