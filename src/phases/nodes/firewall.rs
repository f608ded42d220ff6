//! The firewall (ufw), changed under a dead-man switch.
//!
//! The seed enabled ufw without allowing SSH and locked itself out. Here the
//! SSH port is allowed first, and before anything changes a timer is armed
//! on the host that disables ufw again after `deadman_seconds`. Only when a
//! FRESH SSH connection (not the open master, whose established flow the
//! firewall keeps) gets in is the timer cancelled. Otherwise mesh disables
//! ufw at once over the still-open master; if even that fails the timer
//! heals the host.

use crate::ops::{field, Decision, Op, OpCtx, OpError};
use crate::quote::{Cmd, Script};
use crate::ssh::BoxFut;
use crate::ssh::Input;

/// Ports every mesh host opens besides SSH, as ufw rule arguments.
pub const FIREWALL_PORTS: &[&str] = &[
    "80/tcp",
    "443/tcp",
    "3900/tcp",
    "3901/tcp",
    "3902/tcp",
    "7946",
    "51820/udp",
];

const DEADMAN_UNIT: &str = "mesh-ufw-deadman";

/// Enabling the firewall locked SSH out.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("a fresh SSH login failed after enabling the firewall with SSH port {ssh_port} allowed; {recovery}. Fix: set firewall.ssh_port in the inventory to the port sshd listens on")]
    FreshLoginFailed { ssh_port: u16, recovery: Recovery },
}

/// How the host gets its SSH access back after a lock-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// mesh disabled ufw over the still-open connection.
    RolledBack,
    /// The host's dead-man timer disables ufw.
    DeadMan { seconds: u64 },
}

impl std::fmt::Display for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Recovery::RolledBack => {
                f.write_str("mesh disabled the firewall again over the open connection")
            }
            Recovery::DeadMan { seconds } => write!(
                f,
                "the host's dead-man switch disables the firewall within {seconds} s"
            ),
        }
    }
}

pub struct Firewall {
    rules: Vec<String>,
    ssh_port: u16,
    deadman_seconds: u64,
}

impl Firewall {
    pub fn new(ssh_port: u16, deadman_seconds: u64) -> Self {
        let mut rules = vec![format!("{ssh_port}/tcp")];
        rules.extend(FIREWALL_PORTS.iter().map(|r| r.to_string()));
        Firewall {
            rules,
            ssh_port,
            deadman_seconds,
        }
    }

    fn missing_rules(&self, probe: &str) -> Vec<&str> {
        let added: Vec<String> = probe
            .lines()
            .filter_map(|l| l.strip_prefix("tuple "))
            .filter_map(plain_allow)
            .collect();
        self.rules
            .iter()
            .map(String::as_str)
            .filter(|r| !added.iter().any(|a| a == r))
            .collect()
    }
}

/// The `ufw allow PORT[/PROTO]` a rule tuple of `/etc/ufw/user.rules`
/// stands for (`allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in`), when it allows a
/// port from anywhere; `None` for any other rule.
fn plain_allow(tuple: &str) -> Option<String> {
    let fields: Vec<&str> = tuple.split_whitespace().collect();
    match fields.as_slice() {
        ["allow", proto, port, "0.0.0.0/0", "any", "0.0.0.0/0", "in", ..] => Some(match *proto {
            "any" => port.to_string(),
            proto => format!("{port}/{proto}"),
        }),
        _ => None,
    }
}

impl Op for Firewall {
    fn label(&self) -> String {
        "firewall".into()
    }

    fn probe(&self, _ctx: &OpCtx<'_>) -> Option<Script> {
        let mut s = Script::new();
        s.raw("if ! command -v ufw >/dev/null; then echo 'ufw missing'; exit 0; fi");
        // ufw's own files, not the ufw command (Python: ~120 ms of CPU per
        // call), plus one cheap live check that its chains are loaded.
        s.raw("sed -n 's/^ENABLED=/enabled /p' /etc/ufw/ufw.conf");
        s.raw("iptables -w -n -L ufw-user-input >/dev/null 2>&1 && echo 'chains loaded'");
        s.raw("sed -n 's/^DEFAULT_\\(INPUT\\|OUTPUT\\)_POLICY=\"\\?\\([A-Z]*\\)\"\\?/policy \\1 \\2/p' /etc/default/ufw");
        s.raw("sed -n 's/^### tuple ### /tuple /p' /etc/ufw/user.rules");
        Some(s)
    }

    fn decide(&self, probe: &str, _recheck: Option<&str>, _triggered: bool) -> Decision {
        if field(probe, "ufw") == Some("missing") {
            return Decision::change("ufw not installed yet", 0);
        }
        let mut reasons = Vec::new();
        let missing = self.missing_rules(probe);
        if !missing.is_empty() {
            reasons.push(format!("allow {}", missing.join(" ")));
        }
        let policies: Vec<&str> = probe
            .lines()
            .filter_map(|l| l.strip_prefix("policy "))
            .collect();
        if !policies.contains(&"INPUT DROP") || !policies.contains(&"OUTPUT ACCEPT") {
            reasons.push("default deny incoming, allow outgoing".into());
        }
        if field(probe, "enabled") != Some("yes") || field(probe, "chains") != Some("loaded") {
            reasons.push("enable".into());
        }
        if reasons.is_empty() {
            Decision::Unchanged
        } else {
            Decision::change(reasons.join(", "), 0)
        }
    }

    fn apply<'a>(&'a self, ctx: &'a OpCtx<'a>, _flags: u32) -> BoxFut<'a, Result<bool, OpError>> {
        Box::pin(async move {
            // Arm the dead-man switch and apply, SSH rule first, in one round trip.
            let mut s = Script::new();
            s.raw("set -e");
            s.line(
                "systemctl stop {} 2>/dev/null || true",
                &[&format!("{DEADMAN_UNIT}.timer")],
            );
            s.line(
                "systemctl reset-failed {} {} 2>/dev/null || true",
                &[
                    &format!("{DEADMAN_UNIT}.timer"),
                    &format!("{DEADMAN_UNIT}.service"),
                ],
            );
            s.cmd(
                Cmd::new("systemd-run")
                    .arg(format!("--unit={DEADMAN_UNIT}"))
                    .arg(format!("--on-active={}", self.deadman_seconds))
                    .arg("--timer-property=AccuracySec=1s")
                    .args(["ufw", "--force", "disable"]),
            );
            for rule in &self.rules {
                s.cmd(Cmd::new("ufw").arg("allow").arg(rule));
            }
            s.raw("ufw default deny incoming");
            s.raw("ufw default allow outgoing");
            s.raw("ufw --force enable");
            ctx.run_ok(
                "firewall: apply under dead-man switch",
                s.as_str(),
                Input::None,
            )
            .await?;

            let mut cancel = Script::new();
            cancel.line("systemctl stop {}", &[&format!("{DEADMAN_UNIT}.timer")]);
            match ctx.conn.check_fresh().await {
                Ok(()) => {
                    ctx.run_ok(
                        "firewall: cancel dead-man switch",
                        cancel.as_str(),
                        Input::None,
                    )
                    .await?;
                    Ok(true)
                }
                Err(e) => {
                    ctx.log.line(&format!("fresh SSH login failed: {e}"));
                    let mut undo = Script::new();
                    undo.raw("ufw --force disable");
                    undo.append(&cancel);
                    let recovery = match ctx
                        .run("firewall: roll back", undo.as_str(), Input::None)
                        .await
                    {
                        Ok(out) if out.success() => Recovery::RolledBack,
                        _ => Recovery::DeadMan {
                            seconds: self.deadman_seconds,
                        },
                    };
                    Err(OpError::Step(Box::new(FirewallError::FreshLoginFailed {
                        ssh_port: self.ssh_port,
                        recovery,
                    })))
                }
            }
        })
    }

    fn system_changing(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::HostLog;
    use crate::ssh::recording::{ok, RecordingTransport};

    /// What the probe prints on a converged host (tuples as ufw 0.36 writes them).
    const CONVERGED: &str = "enabled yes\nchains loaded\npolicy INPUT DROP\npolicy OUTPUT ACCEPT\n\
tuple allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in\ntuple allow tcp 80 0.0.0.0/0 any 0.0.0.0/0 in\n\
tuple allow tcp 443 0.0.0.0/0 any 0.0.0.0/0 in\ntuple allow tcp 3900 0.0.0.0/0 any 0.0.0.0/0 in\n\
tuple allow tcp 3901 0.0.0.0/0 any 0.0.0.0/0 in\ntuple allow tcp 3902 0.0.0.0/0 any 0.0.0.0/0 in\n\
tuple allow any 7946 0.0.0.0/0 any 0.0.0.0/0 in\ntuple allow udp 51820 0.0.0.0/0 any 0.0.0.0/0 in\n\
tuple allow tcp 8000 0.0.0.0/0 any 10.0.0.1 in comment=6d657368\n";

    #[test]
    fn only_port_rules_from_anywhere_count_as_added() {
        assert_eq!(
            plain_allow("allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in").as_deref(),
            Some("22/tcp")
        );
        assert_eq!(
            plain_allow("allow any 7946 0.0.0.0/0 any 0.0.0.0/0 in").as_deref(),
            Some("7946")
        );
        for other in [
            "allow tcp 8000 0.0.0.0/0 any 10.0.0.1 in comment=6d657368",
            "deny tcp 22 0.0.0.0/0 any 0.0.0.0/0 in",
            "allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 out",
            "allow tcp",
            "",
            "allow tcp 22 0.0.0.0/0 any 0.0.0.0/0",
        ] {
            assert_eq!(plain_allow(other), None, "{other}");
        }
    }

    #[test]
    fn enabled_in_the_config_but_not_loaded_is_enabled_again() {
        let probe = CONVERGED.replace("chains loaded\n", "");
        assert!(matches!(
            Firewall::new(22, 90).decide(&probe, None, false),
            Decision::Change { reason, .. } if reason == "enable"
        ));
    }

    #[test]
    fn converged_firewall_is_unchanged() {
        assert_eq!(
            Firewall::new(22, 90).decide(CONVERGED, None, false),
            Decision::Unchanged
        );
    }

    #[test]
    fn ssh_port_rule_comes_first_and_is_required() {
        let fw = Firewall::new(2222, 90);
        assert_eq!(fw.rules[0], "2222/tcp");
        match fw.decide(CONVERGED, None, false) {
            Decision::Change { reason, .. } => assert_eq!(reason, "allow 2222/tcp"),
            d => panic!("{d:?}"),
        }
    }

    fn apply_with(conn: &RecordingTransport) -> Result<bool, OpError> {
        let log = HostLog::discard();
        let ctx = OpCtx {
            conn,
            log: &log,
            checksum: false,
            kind: crate::ssh::CommandKind::Normal,
        };
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(Firewall::new(22, 90).apply(&ctx, 0))
    }

    #[test]
    fn the_dead_man_switch_is_armed_before_ufw_is_enabled_and_cancelled_after_a_fresh_login() {
        let conn = RecordingTransport::new(|_, _| ok(""));
        assert!(apply_with(&conn).unwrap());
        let calls = conn.calls();
        let arm = calls[0]
            .find("systemd-run --unit=mesh-ufw-deadman --on-active=90")
            .unwrap();
        let ssh_rule = calls[0].find("ufw allow 22/tcp").unwrap();
        let http_rule = calls[0].find("ufw allow 80/tcp").unwrap();
        let enable = calls[0].find("ufw --force enable").unwrap();
        assert!(
            arm < ssh_rule && ssh_rule < http_rule && http_rule < enable,
            "{}",
            calls[0]
        );
        assert_eq!(calls[1], "<fresh ssh>");
        assert!(calls[2].contains("systemctl stop mesh-ufw-deadman.timer"));
    }

    #[test]
    fn a_lockout_is_rolled_back_over_the_open_connection() {
        let conn = RecordingTransport::new(|_, _| ok("")).with_fresh_failing();
        let err = apply_with(&conn).unwrap_err().to_string();
        assert!(err.contains("disabled the firewall again"), "{err}");
        assert!(conn.calls()[2].contains("ufw --force disable"));
    }

    #[test]
    fn with_the_connection_gone_too_the_timer_heals_the_host() {
        let conn = RecordingTransport::new(|script, _| {
            let mut out = ok("");
            if script.contains("ufw --force disable\n") && !script.contains("systemd-run") {
                out.code = None;
            }
            out
        })
        .with_fresh_failing();
        let err = apply_with(&conn).unwrap_err().to_string();
        assert!(
            err.contains("dead-man switch disables the firewall within 90 s"),
            "{err}"
        );
    }

    #[test]
    fn inactive_firewall_is_enabled() {
        let probe = CONVERGED.replace("enabled yes", "enabled no");
        assert!(matches!(
            Firewall::new(22, 90).decide(&probe, None, false),
            Decision::Change { reason, .. } if reason == "enable"
        ));
    }
}
