//! `mesh exec -- CMD…`: an ad-hoc command on every selected host.
//! Arguments are joined with spaces, as `ssh host CMD…` does, so pipes and
//! globs work when quoted as one argument.

use super::{HostCtx, Phase, Step, StepOutcome};
use crate::ops::{fmt_code, OpError, OpFailure};
use crate::ssh::{BoxFut, Input};

pub struct Exec {
    pub command: String,
}

/// The `exec` phase: one step.
pub fn phase(args: &[String]) -> Phase {
    Phase::of_steps(
        "exec",
        vec![Box::new(Exec {
            command: args.join(" "),
        })],
    )
}

impl Step for Exec {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn run<'a>(&'a self, ctx: &'a HostCtx) -> BoxFut<'a, Result<StepOutcome, OpFailure>> {
        Box::pin(async move {
            let fail = |error| OpFailure {
                label: "exec".into(),
                error,
                done: Vec::new(),
            };
            if ctx.dry_run {
                return Ok(StepOutcome {
                    reports: Vec::new(),
                    output: Some(format!("would run: {}", self.command)),
                });
            }
            let out = ctx
                .op_ctx()
                .run("exec", &self.command, Input::None)
                .await
                .map_err(fail)?;
            let mut text = out.stdout_str();
            text.push_str(&out.stderr_str());
            let text = ctx.log.redact(&text);
            if out.success() {
                Ok(StepOutcome {
                    reports: Vec::new(),
                    output: Some(text),
                })
            } else {
                Err(fail(OpError::Command {
                    what: format!("`{}`", self.command),
                    code: fmt_code(out.code),
                    tail: text.trim_end().to_string(),
                }))
            }
        })
    }
}
