//! A synthetic `nodes`-style step for `make bench`: one large asset, two
//! templated files and a systemd unit that uses them, enabled and started.
//! It measures mesh's own overhead on real hosts (see tests/bench/bench.sh).

use super::{converge_ops, CheckError, HostCtx, Phase, Step, StepOutcome};
use crate::ops::{DirOp, FileOp, Op, OpFailure, UnitOp};
use crate::ssh::BoxFut;
use crate::template::{render_j2, render_placeholders, TemplateError};
use std::path::{Path, PathBuf};

const DIR: &str = "/opt/mesh-bench";

const CONF: &str = "# rendered by mesh\nhost = << HOSTNAME >>\naddress = << ADDRESS >>\n";

const RUN_J2: &str = "#!/bin/sh\n# {{ HOSTNAME }}: checks its asset, then idles\n\
test -s {{ dir }}/asset.bin || exit 1\nexec sleep infinity\n";

const UNIT: &str = "[Unit]\nDescription=mesh benchmark service\n\n[Service]\n\
ExecStart=/opt/mesh-bench/run.sh\nRestart=on-failure\n\n[Install]\nWantedBy=multi-user.target\n";

/// Why the bench step's ops cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("{}: {source}", .path.display())]
    Asset {
        path: PathBuf,
        source: std::io::Error,
    },
}

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
    fn ops(&self, ctx: &HostCtx) -> Result<Vec<Box<dyn Op>>, BenchError> {
        let conf = render_placeholders(Path::new("bench/app.conf"), CONF, &ctx.vars)?;
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
        )?;
        let asset = FileOp::from_local(format!("{DIR}/asset.bin"), &self.asset)
            .map_err(|source| BenchError::Asset {
                path: self.asset.clone(),
                source,
            })?
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

    fn check(&self, ctx: &HostCtx) -> Result<(), CheckError> {
        self.ops(ctx)?;
        Ok(())
    }

    fn run<'a>(&'a self, ctx: &'a HostCtx) -> BoxFut<'a, Result<StepOutcome, OpFailure>> {
        Box::pin(converge_ops(ctx, "bench", self.ops(ctx)))
    }
}
