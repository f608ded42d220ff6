//! `apt`: package lists, upgrades and installed packages.
//!
//! Warm runs stay off the network: `apt-get update` runs only when mesh's
//! own stamp is older than the cache window (like Ansible's
//! `cache_valid_time`), and the upgrade check is skipped when no package
//! list has been refreshed since mesh's last upgrade. A list refresh is not
//! counted as a change to the host.

use super::{field, BoxFut, Decision, Op, OpCtx, OpError, STATE_DIR};
use crate::quote::{Cmd, Script};
use crate::ssh::Input;

fn update_stamp() -> String {
    format!("{STATE_DIR}/apt-update.stamp")
}

fn upgrade_stamp() -> String {
    format!("{STATE_DIR}/apt-upgrade.stamp")
}

/// apt-get with the options every unattended call needs.
fn apt_get(args: &[&str]) -> Script {
    let mut s = Script::new();
    s.raw("export DEBIAN_FRONTEND=noninteractive");
    s.cmd(
        Cmd::new("apt-get")
            .args(["-q", "-y", "-o", "DPkg::Lock::Timeout=300"])
            .args(["-o", "Dpkg::Options::=--force-confdef"])
            .args(["-o", "Dpkg::Options::=--force-confold"])
            .args(args),
    );
    s
}

/// `apt-get install` of package names or local `.deb` paths (dependencies
/// from the host's own repositories), without recommends.
pub(crate) fn install_script(items: &[String], options: &[&str]) -> Script {
    let mut args = vec!["install", "--no-install-recommends"];
    args.extend_from_slice(options);
    args.extend(items.iter().map(String::as_str));
    apt_get(&args)
}

fn touch(path: &str) -> Script {
    let mut s = Script::new();
    s.line("mkdir -p {} && touch {}", &[STATE_DIR, path]);
    s
}

/// `apt-get update`, at most once per cache window.
#[derive(Debug, Clone)]
pub struct AptUpdate {
    pub cache_valid_seconds: u64,
}

impl Op for AptUpdate {
    fn label(&self) -> String {
        "apt update".into()
    }

    fn probe(&self, _ctx: &OpCtx<'_>) -> Option<Script> {
        let mut s = Script::new();
        s.line(
            "echo \"age $(( $(date +%s) - $(stat -c %Y {} 2>/dev/null || echo 0) ))\"",
            &[&update_stamp()],
        );
        Some(s)
    }

    fn decide(&self, probe: &str, _recheck: Option<&str>, _triggered: bool) -> Decision {
        match field(probe, "age").and_then(|a| a.parse::<u64>().ok()) {
            Some(age) if age < self.cache_valid_seconds => Decision::Unchanged,
            _ => Decision::change("package lists older than the cache window", 0),
        }
    }

    fn apply<'a>(&'a self, ctx: &'a OpCtx<'a>, _flags: u32) -> BoxFut<'a, Result<bool, OpError>> {
        Box::pin(async move {
            let mut s = Script::new();
            s.raw("set -e");
            s.append(&apt_get(&["update"]));
            s.append(&touch(&update_stamp()));
            ctx.long()
                .run_ok("apt-get update", s.as_str(), Input::None)
                .await?;
            Ok(false)
        })
    }

    fn system_changing(&self) -> bool {
        true
    }
}

/// `apt-get upgrade` when something is upgradable.
#[derive(Debug, Clone, Default)]
pub struct AptUpgrade;

impl Op for AptUpgrade {
    fn label(&self) -> String {
        "apt upgrade".into()
    }

    fn probe(&self, _ctx: &OpCtx<'_>) -> Option<Script> {
        let mut s = Script::new();
        s.line(
            "if [ {} -nt {} ]; then echo 'upgrade current'; else echo 'upgrade check'; fi",
            &[&upgrade_stamp(), &update_stamp()],
        );
        Some(s)
    }

    fn decide(&self, probe: &str, recheck: Option<&str>, _triggered: bool) -> Decision {
        if field(probe, "upgrade") == Some("current") {
            return Decision::Unchanged;
        }
        match recheck.map(|r| r.trim().parse::<u32>()) {
            None => Decision::Recheck(
                "apt-get -s -o Debug::NoLocking=1 upgrade 2>/dev/null | grep -c '^Inst ' || true"
                    .into(),
            ),
            Some(Ok(0)) => Decision::Refresh { flags: 0 },
            Some(Ok(n)) => Decision::change(format!("{n} packages upgradable"), 1),
            Some(Err(_)) => Decision::change("upgradable state unknown", 1),
        }
    }

    fn apply<'a>(&'a self, ctx: &'a OpCtx<'a>, flags: u32) -> BoxFut<'a, Result<bool, OpError>> {
        Box::pin(async move {
            let mut s = Script::new();
            s.raw("set -e");
            if flags != 0 {
                s.append(&apt_get(&["upgrade"]));
            }
            s.append(&touch(&upgrade_stamp()));
            ctx.long()
                .run_ok("apt-get upgrade", s.as_str(), Input::None)
                .await?;
            Ok(flags != 0)
        })
    }

    fn system_changing(&self) -> bool {
        true
    }
}

/// Packages that must be installed.
#[derive(Debug, Clone)]
pub struct AptInstall {
    pub packages: Vec<String>,
}

impl AptInstall {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(packages: I) -> Self {
        AptInstall {
            packages: packages.into_iter().map(Into::into).collect(),
        }
    }
}

impl Op for AptInstall {
    fn label(&self) -> String {
        format!("apt install {}", self.packages.join(" "))
    }

    fn probe(&self, _ctx: &OpCtx<'_>) -> Option<Script> {
        let mut s = Script::new();
        s.cmd(
            Cmd::new("dpkg-query")
                .args(["-W", "-f=pkg ${Package} ${db:Status-Abbrev}\\n"])
                .args(&self.packages),
        );
        Some(s)
    }

    fn decide(&self, probe: &str, _recheck: Option<&str>, _triggered: bool) -> Decision {
        let installed: Vec<&str> = probe
            .lines()
            .filter_map(|l| l.strip_prefix("pkg "))
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, status)| status.trim_end() == "ii")
            .map(|(name, _)| name)
            .collect();
        let missing: Vec<&str> = self
            .packages
            .iter()
            .map(String::as_str)
            .filter(|p| !installed.contains(p))
            .collect();
        if missing.is_empty() {
            Decision::Unchanged
        } else {
            Decision::change(format!("missing {}", missing.join(" ")), 0)
        }
    }

    fn apply<'a>(&'a self, ctx: &'a OpCtx<'a>, _flags: u32) -> BoxFut<'a, Result<bool, OpError>> {
        Box::pin(async move {
            // A host whose package lists were never fetched (or were cleaned)
            // gets them once, then the install is tried again.
            let install = install_script(&self.packages, &[]);
            let mut script = Script::new();
            script.raw("if ! (");
            script.append(&install);
            script.raw("); then");
            script.append(&apt_get(&["update"]));
            script.append(&install);
            script.raw("fi");
            ctx.long()
                .run_ok(&self.label(), script.as_str(), Input::None)
                .await?;
            Ok(true)
        })
    }

    fn system_changing(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_respects_the_cache_window() {
        let u = AptUpdate {
            cache_valid_seconds: 3600,
        };
        assert_eq!(u.decide("age 10\n", None, false), Decision::Unchanged);
        assert!(matches!(
            u.decide("age 7200\n", None, false),
            Decision::Change { .. }
        ));
        assert!(matches!(u.decide("", None, false), Decision::Change { .. }));
    }

    #[test]
    fn upgrade_checks_only_after_a_list_refresh() {
        let u = AptUpgrade;
        assert_eq!(
            u.decide("upgrade current\n", None, false),
            Decision::Unchanged
        );
        assert!(matches!(
            u.decide("upgrade check\n", None, false),
            Decision::Recheck(_)
        ));
        assert_eq!(
            u.decide("upgrade check\n", Some("0\n"), false),
            Decision::Refresh { flags: 0 }
        );
        assert!(matches!(
            u.decide("upgrade check\n", Some("3\n"), false),
            Decision::Change { flags: 1, .. }
        ));
    }

    #[test]
    fn install_lists_missing_packages() {
        let i = AptInstall::new(["ufw", "curl"]);
        assert_eq!(
            i.decide("pkg ufw ii \npkg curl ii \n", None, false),
            Decision::Unchanged
        );
        assert_eq!(
            i.decide(
                "pkg ufw ii \ndpkg-query: no packages found matching curl\n",
                None,
                false
            ),
            Decision::change("missing curl", 0)
        );
        assert_eq!(
            i.decide("pkg ufw rc \npkg curl ii \n", None, false),
            Decision::change("missing ufw", 0)
        );
    }
}
