//! A synthetic `nodes`-style step for `make bench`: one large asset, two
//! templated files and a systemd unit that uses them, enabled and started.
//! It measures mesh's own overhead on real hosts (see tests/bench/bench.sh).

use super::{converge_ops, HostCtx, Phase, Step, StepOutcome};
use crate::ops::{DirOp, FileOp, Op, OpFailure, UnitOp};
use crate::ssh::BoxFut;
use crate::template::{render_j2, render_placeholders};
use std::path::{Path, PathBuf};

const DIR: &str = "/opt/mesh-bench";

const CONF: &str = "# rendered by mesh\nhost = << HOSTNAME >>\naddress = << ADDRESS >>\n";

const RUN_J2: &str = "#!/bin/sh\n# {{ HOSTNAME }}: checks its asset, then idles\n\
test -s {{ dir }}/asset.bin || exit 1\nexec sleep infinity\n";

const UNIT: &str = "[Unit]\nDescription=mesh benchmark service\n\n[Service]\n\
ExecStart=/opt/mesh-bench/run.sh\nRestart=on-failure\n\n[Install]\nWantedBy=multi-user.target\n";

pub struct Bench {
    pub asset: PathBuf,
}

pub fn phase(asset: &Path) -> Phase {
    Phase::of_steps(
        "bench",
        vec![Box::new(Bench {
            asset: asset.to_path_buf(),
        })],
    )
}

impl Bench {
    fn ops(&self, ctx: &HostCtx) -> Result<Vec<Box<dyn Op>>, String> {
        let conf = render_placeholders(Path::new("bench/app.conf"), CONF, &ctx.vars)
            .map_err(|e| e.to_string())?;
        let extra = minijinja::Value::from(
            [("dir".to_string(), minijinja::Value::from(DIR))]
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>(),
        );
        let run = render_j2(
            Path::new("bench/run.sh.j2"),
            RUN_J2,
            &ctx.vars,
            Some(&extra),
        )
        .map_err(|e| e.to_string())?;
        let asset = FileOp::from_local(format!("{DIR}/asset.bin"), &self.asset)
            .map_err(|e| format!("{}: {e}", self.asset.display()))?
            .id("asset");
        Ok(vec![
            Box::new(DirOp::new(DIR)),
            Box::new(asset),
            Box::new(FileOp::from_bytes(format!("{DIR}/app.conf"), conf).id("conf")),
            Box::new(
                FileOp::from_bytes(format!("{DIR}/run.sh"), run)
                    .mode(0o755)
                    .id("run"),
            ),
            Box::new(
                UnitOp::new("mesh-bench.service", UNIT).restart_when(["asset", "conf", "run"]),
            ),
        ])
    }
}

impl Step for Bench {
    fn name(&self) -> &'static str {
        "bench"
    }

    fn check(&self, ctx: &HostCtx) -> Result<(), String> {
        self.ops(ctx).map(|_| ())
    }

    fn run<'a>(&'a self, ctx: &'a HostCtx) -> BoxFut<'a, Result<StepOutcome, OpFailure>> {
        Box::pin(converge_ops(ctx, "bench", self.ops(ctx)))
    }
}
