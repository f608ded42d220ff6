//! `command`: run a script, guarded so a re-run does nothing.
//!
//! Guards: `unless` (a read-only check; exit 0 means "already done"),
//! `creates` (a path whose existence means "already done"), or triggers
//! (run only when one of the named ops changed, like a handler). A command
//! with no guard at all runs every time and always reports a change.

use super::{field, BoxFut, Decision, Op, OpCtx, OpError};
use crate::quote::Script;
use crate::ssh::Input;

#[derive(Debug, Clone)]
pub struct CommandOp {
    label: String,
    run: Script,
    unless: Option<Script>,
    creates: Option<String>,
    triggers: Vec<String>,
    id: Option<String>,
}

impl CommandOp {
    /// `label` names the command in reports, e.g. "restart journald".
    pub fn new(label: impl Into<String>, run: Script) -> Self {
        CommandOp {
            label: label.into(),
            run,
            unless: None,
            creates: None,
            triggers: Vec::new(),
            id: None,
        }
    }

    /// Skip when this check exits 0.
    pub fn unless(mut self, check: Script) -> Self {
        self.unless = Some(check);
        self
    }

    /// Skip when this path exists.
    pub fn creates(mut self, path: impl Into<String>) -> Self {
        self.creates = Some(path.into());
        self
    }

    /// Run only when one of these op ids changed in the same run.
    pub fn when_changed<I: IntoIterator<Item = S>, S: Into<String>>(mut self, ids: I) -> Self {
        self.triggers = ids.into_iter().map(Into::into).collect();
        self
    }

    pub fn id(mut self, id: &str) -> Self {
        self.id = Some(id.into());
        self
    }
}

impl Op for CommandOp {
    fn label(&self) -> String {
        self.label.clone()
    }

    fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    fn triggers(&self) -> &[String] {
        &self.triggers
    }

    fn probe(&self, _ctx: &OpCtx<'_>) -> Option<Script> {
        let mut s = Script::new();
        if let Some(path) = &self.creates {
            s.line(
                "if [ -e {} ]; then echo 'guard done'; else echo 'guard todo'; fi",
                &[path],
            );
        } else if let Some(check) = &self.unless {
            s.raw("if (");
            s.append(check);
            s.raw(") >/dev/null 2>&1; then echo 'guard done'; else echo 'guard todo'; fi");
        } else {
            return None;
        }
        Some(s)
    }

    fn decide(&self, probe: &str, _recheck: Option<&str>, triggered: bool) -> Decision {
        if !self.triggers.is_empty() {
            return if triggered {
                Decision::change("triggered", 0)
            } else {
                Decision::Unchanged
            };
        }
        match field(probe, "guard") {
            Some("done") => Decision::Unchanged,
            Some(_) => Decision::change("not done yet", 0),
            None if self.creates.is_none() && self.unless.is_none() => {
                Decision::change("unguarded", 0)
            }
            None => Decision::Fail(format!("guard of {} gave no answer", self.label)),
        }
    }

    fn apply<'a>(&'a self, ctx: &'a OpCtx<'a>, _flags: u32) -> BoxFut<'a, Result<bool, OpError>> {
        Box::pin(async move {
            ctx.run_ok(&self.label, self.run.as_str(), Input::None)
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

    fn script(text: &str) -> Script {
        let mut s = Script::new();
        s.raw(text);
        s
    }

    #[test]
    fn guards_decide() {
        let c = CommandOp::new("x", script("touch /x")).creates("/x");
        assert_eq!(c.decide("guard done\n", None, false), Decision::Unchanged);
        assert!(matches!(
            c.decide("guard todo\n", None, false),
            Decision::Change { .. }
        ));
    }

    #[test]
    fn triggered_commands_run_only_on_change() {
        let c = CommandOp::new("restart", script("systemctl restart x")).when_changed(["conf"]);
        assert_eq!(c.decide("", None, false), Decision::Unchanged);
        assert!(matches!(c.decide("", None, true), Decision::Change { .. }));
    }
}
