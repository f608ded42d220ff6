//! `file`: a file with the wanted content, mode and owner.
//!
//! The quick check (as rsync does): when mesh writes a file it records the
//! file's size, mtime and sha256 under `/var/lib/mesh/files/`. If size and
//! mtime still match that record, the content is known without hashing; only
//! otherwise (or with `--checksum`) the host hashes the file. Content goes to
//! a temp name in the same directory and is renamed into place, so a reader
//! never sees a half-written file.

use super::{field, Decision, Op, OpCtx, Part, STATE_DIR};
use crate::quote::Script;
use crate::ssh::Input;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

/// Where the content comes from.
#[derive(Debug, Clone)]
pub enum Content {
    Bytes(Arc<Vec<u8>>),
    /// A local file, streamed at upload time.
    Local(PathBuf),
}

/// Largest content sent inside the script rather than on stdin.
const INLINE_MAX: usize = 16 * 1024;

const CONTENT: u32 = 1;
const META: u32 = 2;
const RECORD: u32 = 4;

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

/// Hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

type HashKey = (PathBuf, u64, SystemTime);

/// sha256 of a local file, computed once per run per (path, size, mtime):
/// the same 20 MB asset pushed to 200 hosts is hashed once.
pub fn sha256_local(path: &Path) -> std::io::Result<(u64, String)> {
    static CACHE: OnceLock<Mutex<HashMap<HashKey, String>>> = OnceLock::new();
    let meta = std::fs::metadata(path)?;
    let key = (path.to_path_buf(), meta.len(), meta.modified()?);
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(h) = cache.lock().unwrap().get(&key) {
        return Ok((meta.len(), h.clone()));
    }
    let mut hasher = Sha256::new();
    let mut f = std::fs::File::open(path)?;
    std::io::copy(&mut f, &mut hasher)?;
    let h = hex(&hasher.finalize());
    cache.lock().unwrap().insert(key, h.clone());
    Ok((meta.len(), h))
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
        let (size, sha256) = sha256_local(local)?;
        Ok(FileOp {
            path: path.into(),
            size,
            sha256,
            content: Content::Local(local.to_path_buf()),
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

    pub fn path(&self) -> &str {
        &self.path
    }

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
                Some(r) if r.len() == 3 && r[0] == size && r[1] == mtime => {
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
        let tmp = format!("{rec}.tmp");
        let mut s = Script::new();
        s.line("mkdir -p {}", &[&format!("{STATE_DIR}/files")]);
        s.line(
            "echo \"$(stat -c '%s %Y' -- {}) {}\" > {} && mv -f {} {}",
            &[&self.path, &self.sha256, &tmp, &tmp, &rec],
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
            s.line("t={}/.mesh-tmp.$$", &[&dir]);
            s.raw("trap 'rm -f -- \"$t\"' EXIT");
            s.line("mkdir -p -- {}", &[&dir]);
            match inline {
                // Small public text rides in the script, leaving stdin to one big file.
                Some(text) => s.line("(umask 077; printf %s {} > \"$t\")", &[text]),
                // Exactly SIZE bytes, so several files can share one stdin (see run_batch).
                None => s.line("(umask 077; mesh_read {} > \"$t\")", &[&size]),
            };
            s.line(
                "s=$(stat -c %s -- \"$t\"); if [ \"$s\" != {} ]; then echo \"upload cut short: $s of {} bytes\" >&2; exit 1; fi",
                &[&size, &size],
            );
            s.line("chown {} -- \"$t\"", &[&owner]);
            s.line("chmod {} -- \"$t\"", &[&mode]);
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
            Content::Bytes(b) => Input::Bytes(b.clone()),
            Content::Local(p) => Input::File(p.clone()),
        };
        Part {
            script: s,
            input,
            changes: flags & (CONTENT | META) != 0,
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
