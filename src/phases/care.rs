//! `mesh care --group GLOB`: maintenance in batches, so a group never goes
//! down at once.
//!
//! Per host: `apt-get update`, a non-interactive `dist-upgrade` that keeps
//! local config files (`--force-confold`, needrestart in list mode), the
//! packages upgraded reported as `name old → new`; then the care hooks
//! (`care/*.sh` in the dockerfiles folder, in name order), each fed on
//! stdin with the host's variables exported, its output in the host log;
//! then whether a reboot is required. With `--reboot`, a host that needs
//! one reboots, and mesh waits (bounded, with backoff) until it is back —
//! a new boot, SSH answering, Docker active and every compose container
//! running and healthy — before the next batch.

use super::{HostCtx, Phase, Step, StepOutcome};
use crate::ops::{OpError, OpFailure, OpReport, Outcome};
use crate::quote::{quote, Script};
use crate::ssh::{BoxFut, CommandKind, Input};
use crate::template::Source;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A care hook: its file name and text.
#[derive(Debug, Clone)]
pub struct Hook {
    pub name: String,
    pub script: Arc<Vec<u8>>,
}

/// `care/*.sh` of the dockerfiles folder, in name order (none without a folder).
pub fn hooks(dockerfiles: &Path) -> Result<Vec<Hook>, String> {
    let dir = dockerfiles.join("care");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut hooks = Vec::new();
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".sh") {
            continue;
        }
        let script = std::fs::read(e.path())
            .map_err(|err| format!("{}: cannot read: {err}", e.path().display()))?;
        hooks.push(Hook {
            name,
            script: Arc::new(script),
        });
    }
    hooks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(hooks)
}

pub struct Care {
    pub hooks: Vec<Hook>,
    pub reboot: bool,
    /// Seconds a rebooting host has to come back.
    pub reboot_wait: u64,
}

pub fn phase(care: Care) -> Phase {
    Phase::of_steps("care", vec![Box::new(care)])
}

fn fail(label: &str, error: impl Into<String>, done: &[OpReport]) -> OpFailure {
    OpFailure {
        label: label.into(),
        error: OpError::Other(error.into()),
        done: done.to_vec(),
    }
}

/// The upgrade, reporting `upgraded NAME OLD NEW`, `installed NAME NEW`
/// and `reboot required`.
fn upgrade_script() -> Script {
    let mut s = Script::new();
    s.raw(
        r#"set -e
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l
before=$(mktemp) after=$(mktemp)
trap 'rm -f "$before" "$after"' EXIT
dpkg-query -W -f='${Package} ${Version}\n' > "$before"
apt-get -q -y -o DPkg::Lock::Timeout=300 update >&2
apt-get -q -y -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold dist-upgrade >&2
dpkg-query -W -f='${Package} ${Version}\n' > "$after"
awk 'NR == FNR { v[$1] = $2; next } !($1 in v) { print "installed", $1, $2; next } v[$1] != $2 { print "upgraded", $1, v[$1], $2 }' "$before" "$after"
if [ -f /var/run/reboot-required ]; then echo "reboot required"; fi"#,
    );
    s
}

/// What identifies one boot of the host: the kernel's boot id and when
/// PID 1 started (a container host keeps the kernel's id across restarts).
const BOOT_MARK: &str =
    "echo \"boot $(cat /proc/sys/kernel/random/boot_id) $(ps -o lstart= -p 1)\"";

impl Care {
    /// The host's variables as `export` lines (facts, inventory, secrets —
    /// not the controller's environment), fed on stdin with the hook.
    fn hook_input(ctx: &HostCtx, hook: &Hook) -> Vec<u8> {
        let mut text = String::from("set -a\n");
        for name in ctx.vars.names() {
            if ctx.vars.source(name) == Some(Source::Env) {
                continue;
            }
            if let Some(value) = ctx.vars.get(name) {
                text.push_str(&format!("{name}={}\n", quote(value)));
            }
        }
        text.push_str("set +a\n");
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(&hook.script);
        bytes
    }

    async fn reboot_host(
        &self,
        ctx: &HostCtx,
        reports: &mut Vec<OpReport>,
    ) -> Result<(), OpFailure> {
        let op = ctx.op_ctx();
        let before = op
            .run("boot", BOOT_MARK, Input::None)
            .await
            .map_err(|e| fail("reboot", e.to_string(), reports))?
            .stdout_str();
        let mut s = Script::new();
        // Returns at once; the reboot follows the SSH command's end.
        s.raw("systemd-run --on-active=1 --timer-property=AccuracySec=100ms systemctl reboot >/dev/null");
        op.run_ok("schedule reboot", s.as_str(), Input::None)
            .await
            .map_err(|e| fail("reboot", e.to_string(), reports))?;
        ctx.conn.close().await;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(self.reboot_wait);
        let mut pause = Duration::from_secs(1);
        loop {
            tokio::time::sleep(pause).await;
            if let Ok(out) = ctx.conn.exec(BOOT_MARK, Input::None).await {
                let now = out.stdout_str();
                if out.success() && now.starts_with("boot ") && now != before {
                    break;
                }
            } else {
                // The master died with the old boot: log in afresh next time.
                ctx.conn.close().await;
            }
            if Instant::now() >= deadline {
                return Err(fail(
                    "reboot",
                    format!(
                        "{} did not come back within {} s after the reboot. Fix: check its console; later batches were not started",
                        ctx.host.name, self.reboot_wait
                    ),
                    reports,
                ));
            }
            pause = (pause * 2).min(Duration::from_secs(10));
        }
        ctx.log.line(&format!(
            "back after {:.1}s",
            started.elapsed().as_secs_f64()
        ));
        // Docker and every compose container back, healthy where they can say.
        let mut s = Script::new();
        s.raw(
            r#"command -v docker >/dev/null || { echo ready; exit 0; }
for i in $(seq 1 90); do
  if systemctl is-active --quiet docker; then
    bad=$(docker ps -a --filter label=com.docker.compose.project --format '{{.Names}} {{.State}} {{.Status}}' | grep -v ' running .*(healthy)$' | grep -v ' running Up [0-9a-zA-Z ]*$' || true)
    [ -z "$bad" ] && { echo ready; exit 0; }
  fi
  sleep 1
done
echo "not ready: docker $(systemctl is-active docker); $bad""#,
        );
        let out = op
            .run("after reboot", s.as_str(), Input::None)
            .await
            .map_err(|e| fail("reboot", e.to_string(), reports))?;
        if !out.stdout_str().lines().any(|l| l == "ready") {
            return Err(fail("reboot", out.stdout_str().trim().to_string(), reports));
        }
        reports.push(OpReport {
            label: "reboot".into(),
            outcome: Outcome::Changed,
            detail: format!(
                "back in {:.0} s, Docker and containers up",
                started.elapsed().as_secs_f64()
            ),
        });
        Ok(())
    }
}

/// Reports from the upgrade's output; whether a reboot is required.
fn parse_upgrade(text: &str) -> (Vec<OpReport>, bool) {
    let mut reports = Vec::new();
    let mut reboot = false;
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w[..] {
            ["upgraded", name, old, new] => reports.push(OpReport {
                label: format!("package {name}"),
                outcome: Outcome::Changed,
                detail: format!("{old} → {new}"),
            }),
            ["installed", name, new] => reports.push(OpReport {
                label: format!("package {name}"),
                outcome: Outcome::Changed,
                detail: format!("new, {new}"),
            }),
            ["reboot", "required"] => reboot = true,
            _ => {}
        }
    }
    (reports, reboot)
}

impl Step for Care {
    fn name(&self) -> &'static str {
        "care"
    }

    fn run<'a>(&'a self, ctx: &'a HostCtx) -> BoxFut<'a, Result<StepOutcome, OpFailure>> {
        Box::pin(async move {
            if ctx.dry_run {
                return Ok(StepOutcome {
                    reports: Vec::new(),
                    output: Some(format!(
                        "would run apt-get dist-upgrade and {} care hook(s)",
                        self.hooks.len()
                    )),
                });
            }
            let op = ctx.op_ctx();
            let out = op
                .long()
                .run(
                    "apt-get dist-upgrade",
                    upgrade_script().as_str(),
                    Input::None,
                )
                .await
                .map_err(|e| fail("upgrade", e.to_string(), &[]))?;
            if !out.success() {
                return Err(fail("upgrade", ctx.log.redact(&out.tail(8)), &[]));
            }
            let (mut reports, reboot_required) = parse_upgrade(&out.stdout_str());
            let mut lines: Vec<String> = reports
                .iter()
                .map(|r| format!("{}: {}", r.label, r.detail))
                .collect();
            if reports.is_empty() {
                lines.push("packages: all up to date".into());
            }
            for hook in &self.hooks {
                let input = Input::Bytes(Arc::new(Self::hook_input(ctx, hook)));
                let label = format!("care hook {}", hook.name);
                let out = ctx
                    .conn
                    .exec_as("cd / && sh -se", input, CommandKind::Long)
                    .await
                    .map_err(|e| fail(&label, e.to_string(), &reports))?;
                ctx.log.block(
                    &format!("{label} (exit {})", crate::ops::fmt_code(out.code)),
                    &format!("{}{}", out.stdout_str(), out.stderr_str()),
                );
                if !out.success() {
                    return Err(fail(&label, ctx.log.redact(&out.tail(8)), &reports));
                }
                reports.push(OpReport {
                    label,
                    outcome: Outcome::Changed,
                    detail: "ran".into(),
                });
                lines.push(format!("hook {}: ok", hook.name));
            }
            if reboot_required {
                if self.reboot {
                    self.reboot_host(ctx, &mut reports).await?;
                    lines.push("rebooted: back, Docker and containers up".into());
                } else {
                    lines.push("reboot required (run again with --reboot)".into());
                }
            }
            Ok(StepOutcome {
                reports,
                output: Some(lines.join("\n")),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_output_reads_as_reports() {
        let (r, reboot) = parse_upgrade(
            "upgraded libc6 2.36-9 2.36-9+deb12u9\ninstalled linux-image 6.1.1\nnoise\nreboot required\n",
        );
        assert!(reboot);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].label, "package libc6");
        assert_eq!(r[0].detail, "2.36-9 → 2.36-9+deb12u9");
        assert_eq!(parse_upgrade("").0.len(), 0);
    }

    #[test]
    fn hooks_are_read_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        assert!(hooks(dir.path()).unwrap().is_empty());
        std::fs::create_dir(dir.path().join("care")).unwrap();
        for n in ["20-b.sh", "10-a.sh", "notes.txt"] {
            std::fs::write(dir.path().join("care").join(n), "true\n").unwrap();
        }
        let names: Vec<String> = hooks(dir.path())
            .unwrap()
            .into_iter()
            .map(|h| h.name)
            .collect();
        assert_eq!(names, ["10-a.sh", "20-b.sh"]);
    }

    #[test]
    fn the_upgrade_script_is_valid_shell() {
        crate::quote::assert_valid_sh(&upgrade_script());
    }
}
