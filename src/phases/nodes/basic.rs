//! Step "basic": apt update + upgrade, base packages, logrotate keeps two
//! rotations, journald capped at 100M, and the firewall (see [`Firewall`]).

use super::Firewall;
use crate::ops::{AptInstall, AptUpdate, AptUpgrade, CommandOp, FileOp, Op, OpFailure};
use crate::phases::{converge_ops, CheckError, HostCtx, Step, StepOutcome};
use crate::quote::Script;
use crate::ssh::BoxFut;
use crate::template::{render_builtin, TemplateError};

/// Packages every mesh host needs.
pub const BASE_PACKAGES: &[&str] = &["ufw", "logrotate"];

const JOURNALD_DROPIN: &str = "/etc/systemd/journald.conf.d/mesh.conf";

pub struct Basic {
    pub apt_cache_valid_seconds: u64,
}

impl Basic {
    fn journald_conf(&self, ctx: &HostCtx) -> Result<String, TemplateError> {
        render_builtin("journald.conf.j2", &ctx.vars, None)
    }

    fn ops(&self, ctx: &HostCtx, ssh_port: u16) -> Result<Vec<Box<dyn Op>>, TemplateError> {
        let mut rotate = Script::new();
        rotate.raw("sed -i -E 's/^rotate [0-9]+$/rotate 2/' /etc/logrotate.conf");
        let mut rotated = Script::new();
        rotated.raw(
            "grep -qx 'rotate 2' /etc/logrotate.conf && [ \"$(grep -c '^rotate ' /etc/logrotate.conf)\" = 1 ]",
        );
        let mut restart_journald = Script::new();
        restart_journald.raw("systemctl restart systemd-journald");
        let deadman = ctx.host.firewall.deadman_seconds.unwrap_or(90);
        let port = ctx.host.firewall.ssh_port.unwrap_or(ssh_port);
        Ok(vec![
            Box::new(AptUpdate {
                cache_valid_seconds: self.apt_cache_valid_seconds,
            }),
            Box::new(AptUpgrade),
            Box::new(AptInstall::new(BASE_PACKAGES.iter().copied())),
            Box::new(CommandOp::new("logrotate: rotate 2", rotate).unless(rotated)),
            Box::new(FileOp::from_bytes(JOURNALD_DROPIN, self.journald_conf(ctx)?).id("journald")),
            Box::new(
                CommandOp::new("restart journald", restart_journald).when_changed(["journald"]),
            ),
            Box::new(Firewall::new(port, deadman)),
        ])
    }
}

impl Step for Basic {
    fn name(&self) -> &'static str {
        "basic"
    }

    fn check(&self, ctx: &HostCtx) -> Result<(), CheckError> {
        self.journald_conf(ctx)?;
        Ok(())
    }

    fn run<'a>(&'a self, ctx: &'a HostCtx) -> BoxFut<'a, Result<StepOutcome, OpFailure>> {
        Box::pin(async move {
            let facts = ctx.facts().await?;
            let ssh_port = facts.ssh_port.or(ctx.host.ssh.port).unwrap_or(22);
            converge_ops(ctx, "basic", self.ops(ctx, ssh_port)).await
        })
    }
}
