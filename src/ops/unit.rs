//! `unit`: a systemd unit file, enabled and running.
//!
//! `daemon-reload` runs only when the unit file changed and systemd had
//! loaded the old one (a unit it never found is read on first use); the service is
//! restarted when its unit file or one of its trigger ops changed, started
//! when it is not running (a new unit with an `[Install]` section by one
//! `systemctl enable --now`), and checked to be active afterwards.

use super::{Decision, FileOp, Op, OpCtx, Part};
use crate::log::HostLog;
use crate::quote::Script;
use crate::ssh::Input;

const FILE_MASK: u32 = 0xff;
const FILE_CONTENT: u32 = 1;
const ENABLE: u32 = 0x100;
const START: u32 = 0x200;
const RESTART: u32 = 0x400;
const RELOAD: u32 = 0x800;

#[derive(Debug, Clone)]
pub struct UnitOp {
    name: String,
    /// `None` for a unit a package ships (only its state is managed).
    file: Option<FileOp>,
    enable: bool,
    /// The unit file has an `[Install]` section, so `enable --now` starts it.
    installable: bool,
    triggers: Vec<String>,
    id: Option<String>,
}

impl UnitOp {
    /// Unit `name` (e.g. `wesher.service`) with this unit file content,
    /// written to `/etc/systemd/system/`, enabled and started.
    pub fn new(name: &str, content: impl Into<Vec<u8>>) -> Self {
        let content: Vec<u8> = content.into();
        let installable = String::from_utf8_lossy(&content)
            .lines()
            .any(|l| l.trim() == "[Install]");
        UnitOp {
            file: Some(FileOp::from_bytes(
                format!("/etc/systemd/system/{name}"),
                content,
            )),
            name: name.into(),
            enable: true,
            installable,
            triggers: Vec::new(),
            id: None,
        }
    }

    /// A unit installed by a package: enabled and running, file untouched.
    pub fn existing(name: &str) -> Self {
        UnitOp {
            file: None,
            name: name.into(),
            enable: true,
            installable: false,
            triggers: Vec::new(),
            id: None,
        }
    }

    /// Restart when one of these op ids changed (config files, binaries).
    pub fn restart_when<I: IntoIterator<Item = S>, S: Into<String>>(mut self, ids: I) -> Self {
        self.triggers = ids.into_iter().map(Into::into).collect();
        self
    }
}

impl Op for UnitOp {
    fn label(&self) -> String {
        format!("unit {}", self.name)
    }

    fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    fn triggers(&self) -> &[String] {
        &self.triggers
    }

    fn probe(&self, ctx: &OpCtx<'_>) -> Option<Script> {
        let mut s = match &self.file {
            Some(f) => f.probe_script(ctx.checksum),
            None => Script::new(),
        };
        // One systemctl for the three: `LoadState=…`, `UnitFileState=…`
        // (what is-enabled says), `ActiveState=…` (what is-active says).
        s.line(
            "systemctl show -p LoadState -p UnitFileState -p ActiveState -- {} 2>/dev/null || true",
            &[&self.name],
        );
        Some(s)
    }

    fn decide(&self, probe: &str, recheck: Option<&str>, triggered: bool) -> Decision {
        let mut flags = 0;
        let mut reasons = Vec::new();
        let file = match &self.file {
            Some(f) => f.decide_file(probe, recheck),
            None => Decision::Unchanged,
        };
        match file {
            Decision::Unchanged => {}
            Decision::Refresh { flags: f } => flags |= f,
            Decision::Change { reason, flags: f } => {
                flags |= f;
                reasons.push(format!("unit file: {reason}"));
            }
            other @ (Decision::Recheck(_) | Decision::Fail(_)) => return other,
        }
        let active = property(probe, "ActiveState").unwrap_or_default();
        if flags & FILE_CONTENT != 0 && property(probe, "LoadState") != Some("not-found") {
            flags |= RELOAD;
        }
        if self.enable && property(probe, "UnitFileState") != Some("enabled") {
            flags |= ENABLE;
            reasons.push("not enabled".into());
        }
        // A stopped unit is started: the same as a restart, and with a new
        // unit file one `systemctl enable --now` (see apply_part).
        let stopped = matches!(active, "" | "inactive" | "failed");
        if (flags & FILE_CONTENT != 0 || triggered) && !stopped {
            flags |= RESTART;
            if triggered {
                reasons.push("restart: configuration changed".into());
            }
        } else if active != "active" {
            flags |= START;
            reasons.push(format!("not running ({active})"));
        }
        if reasons.is_empty() {
            if flags == 0 {
                Decision::Unchanged
            } else {
                Decision::Refresh { flags }
            }
        } else {
            Decision::change(reasons.join(", "), flags)
        }
    }

    fn apply_part(&self, flags: u32) -> Option<Part> {
        let file = match &self.file {
            Some(f) if flags & FILE_MASK != 0 => Some(f.part(flags & FILE_MASK)),
            _ => None,
        };
        let mut s = Script::new();
        let mut input = Input::None;
        let mut changes = false;
        if let Some(f) = file {
            s.append(&f.script);
            s.raw("mesh_mark unit-file");
            input = f.input;
            changes = f.changes;
        }
        if flags & RELOAD != 0 {
            // A reload costs ~0.1 s of CPU per host: only when systemd holds
            // an older (or broken, or masked) copy.
            s.raw("systemctl daemon-reload");
            s.raw("mesh_mark daemon-reload");
        }
        let mut state = Script::new();
        // Enabling only adds symlinks for the next boot: skip its implicit daemon-reload.
        if flags & ENABLE != 0 && flags & START != 0 && self.installable {
            // One systemctl, not two: a cold host starts many units.
            state.line(
                "systemctl enable --now --quiet --no-reload {}",
                &[&self.name],
            );
        } else {
            if flags & ENABLE != 0 {
                state.line("systemctl enable --quiet --no-reload {}", &[&self.name]);
                state.raw("mesh_mark enable");
            }
            if flags & RESTART != 0 {
                state.line("systemctl restart {}", &[&self.name]);
            } else if flags & START != 0 {
                state.line("systemctl start {}", &[&self.name]);
            }
        }
        if !state.is_empty() {
            changes = true;
            s.append(&state);
            // Give a starting service a moment before judging it.
            s.line(
                "up=; for i in 1 2 3 4 5 6 7 8 9 10; do if systemctl is-active --quiet {}; then up=1; break; fi; sleep 0.3; done",
                &[&self.name],
            );
            s.line(
                "[ -n \"$up\" ] || { systemctl status --no-pager {} 2>&1 | tail -n 15 >&2; exit 1; }",
                &[&self.name],
            );
        }
        Some(Part {
            script: s,
            input,
            changes,
        })
    }

    /// The unit file's dry-run diff, as for any file.
    fn preview_script(&self, probe: &str, flags: u32) -> Option<Script> {
        self.file.as_ref()?.preview_script(probe, flags & FILE_MASK)
    }

    fn preview(
        &self,
        reason: &str,
        probe: &str,
        flags: u32,
        fetched: Option<&str>,
        log: &HostLog,
    ) -> String {
        match &self.file {
            Some(f) => f.preview(reason, probe, flags & FILE_MASK, fetched, log),
            None => reason.to_string(),
        }
    }
}

/// The value of a `Key=value` line of `systemctl show`.
fn property<'a>(probe: &'a str, key: &str) -> Option<&'a str> {
    probe
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "[Service]\nExecStart=/bin/true\n";

    /// A host where systemd never found the unit.
    const NEW: &str =
        "stat absent\nrec none\nLoadState=not-found\nUnitFileState=\nActiveState=inactive\n";

    fn unit() -> UnitOp {
        UnitOp::new("demo.service", BODY)
    }

    #[test]
    fn converged_unit_is_unchanged_and_trigger_restarts_it() {
        let u = unit();
        let n = BODY.len();
        let p = format!(
            "stat {n} 5 644 root:root regular file\nrec {n} 5 {}\nLoadState=loaded\nUnitFileState=enabled\nActiveState=active\n",
            u.file.as_ref().unwrap().sha256()
        );
        assert_eq!(u.decide(&p, None, false), Decision::Unchanged);
        assert!(matches!(
            u.decide(&p, None, true),
            Decision::Change { flags: RESTART, .. }
        ));
    }

    #[test]
    fn a_new_unit_file_previews_as_a_diff_from_nothing() {
        let u = unit();
        let probe = NEW;
        let Decision::Change { reason, flags } = u.decide(probe, None, false) else {
            panic!("a change");
        };
        assert!(u.preview_script(probe, flags).is_none(), "nothing to fetch");
        let d = u.preview(&reason, probe, flags, None, &HostLog::discard());
        assert!(
            d.starts_with(&format!(
                "{reason}\n--- /dev/null\n+++ /etc/systemd/system/demo.service\n"
            )),
            "{d}"
        );
        assert!(d.ends_with("+[Service]\n+ExecStart=/bin/true"), "{d}");
    }

    #[test]
    fn new_unit_is_written_enabled_and_started() {
        let u = unit();
        let d = u.decide(NEW, None, true);
        match d {
            Decision::Change { flags, .. } => {
                assert_ne!(flags & FILE_CONTENT, 0);
                assert_ne!(flags & ENABLE, 0);
                assert_eq!(flags & (START | RESTART), START, "nothing runs to restart");
                assert_eq!(
                    flags & RELOAD,
                    0,
                    "systemd reads a unit it never found on first use"
                );
                let script = u.apply_part(flags).unwrap().script.into_string();
                assert!(
                    script.contains(
                        "systemctl enable --quiet --no-reload demo.service\nmesh_mark enable\nsystemctl start demo.service\n"
                    ),
                    "no [Install]: enable --now might not start it\n{script}"
                );
            }
            d => panic!("{d:?}"),
        }
        let installable = UnitOp::new(
            "demo.service",
            format!("{BODY}[Install]\nWantedBy=multi-user.target\n"),
        );
        let Decision::Change { flags, .. } = installable.decide(NEW, None, false) else {
            panic!("a change");
        };
        let script = installable.apply_part(flags).unwrap().script.into_string();
        assert!(
            script.contains("mesh_mark unit-file\nsystemctl enable --now --quiet --no-reload demo.service\nup=;"),
            "{script}"
        );
        assert_eq!(
            script.matches("systemctl ").count(),
            3,
            "enable, is-active, status on failure: {script}"
        );
    }

    #[test]
    fn a_changed_unit_file_systemd_has_loaded_is_reloaded_once() {
        let u = unit();
        let probe = "stat 3 5 644 root:root regular file\nrec 3 5 0000\n\
                     LoadState=loaded\nUnitFileState=enabled\nActiveState=active\n";
        let Decision::Change { flags, .. } = u.decide(probe, None, false) else {
            panic!("a change");
        };
        assert_eq!(flags & (RELOAD | RESTART | ENABLE), RELOAD | RESTART);
        let part = u.apply_part(flags).unwrap();
        assert_eq!(
            part.script
                .as_str()
                .matches("systemctl daemon-reload")
                .count(),
            1
        );
        let new = u.apply_part(flags & !RELOAD).unwrap();
        assert!(!new.script.as_str().contains("daemon-reload"));
    }
}
