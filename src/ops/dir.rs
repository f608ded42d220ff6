//! `dir`: a directory with the wanted mode and owner.

use super::{field, Decision, Op, OpCtx, Part};
use crate::quote::Script;
use crate::ssh::Input;

/// The directory is absent: made with its mode in one `mkdir`.
const CREATE: u32 = 1;

#[derive(Debug, Clone)]
pub struct DirOp {
    path: String,
    mode: u32,
    owner: String,
    group: String,
}

impl DirOp {
    /// A directory, mode 0755, owned by root.
    pub fn new(path: impl Into<String>) -> Self {
        DirOp {
            path: path.into(),
            mode: 0o755,
            owner: "root".into(),
            group: "root".into(),
        }
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
}

impl Op for DirOp {
    fn label(&self) -> String {
        format!("dir {}", self.path)
    }

    fn probe(&self, _ctx: &OpCtx<'_>) -> Option<Script> {
        let mut s = Script::new();
        s.line(
            "if [ -e {} ]; then stat --printf 'stat %a %U:%G %F\\nnum %a %u:%g %F\\n' -- {}; else echo 'stat absent'; echo 'num absent'; fi",
            &[&self.path, &self.path],
        );
        Some(s)
    }

    fn decide(&self, probe: &str, _recheck: Option<&str>, _triggered: bool) -> Decision {
        let want = format!("{:o} {}:{} directory", self.mode, self.owner, self.group);
        // A numeric owner (a container's uid:gid) is compared as numbers.
        let numeric = self.owner.bytes().all(|b| b.is_ascii_digit())
            && self.group.bytes().all(|b| b.is_ascii_digit());
        let stat = if numeric { "num" } else { "stat" };
        match field(probe, stat) {
            Some("absent") => Decision::change("create", CREATE),
            Some(s) if s == want => Decision::Unchanged,
            Some(s) if !s.ends_with(" directory") => Decision::Fail(format!(
                "{} exists but is not a directory ({s}). Fix: remove it on the host",
                self.path
            )),
            Some(s) => Decision::change(format!("{s} -> {want}"), 0),
            None => Decision::Fail(format!("cannot stat {}: {}", self.path, probe.trim())),
        }
    }

    fn apply_part(&self, flags: u32) -> Option<Part> {
        let mut s = Script::new();
        let owner = format!("{}:{}", self.owner, self.group);
        let mode = format!("{:o}", self.mode);
        if flags & CREATE != 0 && owner == "root:root" {
            // A cold host makes many directories: one process each. (chown
            // only for a setgid parent's group; it may clear set-id bits.)
            s.line("mkdir -p -m {} -- {}", &[&mode, &self.path]);
            s.line(
                "[ -O {} ] && [ -G {} ] || { chown {} -- {}; chmod {} -- {}; }",
                &[
                    &self.path, &self.path, &owner, &self.path, &mode, &self.path,
                ],
            );
        } else {
            s.line("mkdir -p -- {}", &[&self.path]);
            s.line("chown {} -- {}", &[&owner, &self.path]);
            s.line("chmod {} -- {}", &[&mode, &self.path]);
        }
        Some(Part {
            script: s,
            input: Input::None,
            changes: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides_from_stat() {
        let d = DirOp::new("/containers/log").mode(0o750);
        assert_eq!(
            d.decide("stat absent\n", None, false),
            Decision::change("create", CREATE)
        );
        assert_eq!(
            d.decide("stat 750 root:root directory\n", None, false),
            Decision::Unchanged
        );
        assert!(matches!(
            d.decide("stat 755 root:root directory\n", None, false),
            Decision::Change { .. }
        ));
        assert!(matches!(
            d.decide("stat 644 root:root regular file\n", None, false),
            Decision::Fail(_)
        ));
        let data = DirOp::new("/containers/data/web/up").owner("1000", "1000");
        let probe = "stat 755 UNKNOWN:UNKNOWN directory\nnum 755 1000:1000 directory\n";
        assert_eq!(data.decide(probe, None, false), Decision::Unchanged);
        assert!(matches!(
            data.decide("stat absent\nnum absent\n", None, false),
            Decision::Change { .. }
        ));
    }

    #[test]
    fn a_new_directory_is_made_with_its_mode_by_one_mkdir() {
        let script = |d: &DirOp| d.apply_part(CREATE).unwrap().script.into_string();
        assert_eq!(
            script(&DirOp::new("/srv/a b").mode(0o750)),
            "mkdir -p -m 750 -- '/srv/a b'\n\
             [ -O '/srv/a b' ] && [ -G '/srv/a b' ] || { chown root:root -- '/srv/a b'; chmod 750 -- '/srv/a b'; }\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("made/here");
        let made = DirOp::new(path.to_str().unwrap()).mode(0o710);
        let out = std::process::Command::new("sh")
            .args(["-ec", &script(&made)])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o710);
    }
}
