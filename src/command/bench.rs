//! `mesh bench` (hidden): the nodes-style step `make bench` times.

use super::Session;
use crate::error::Error;
use crate::phases::bench;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The file pushed to every host.
    #[arg(long, value_name = "FILE")]
    pub asset: PathBuf,
}

pub(crate) async fn run(s: &mut Session, args: &Args) -> Result<u8, Error> {
    let ctxs = s.selected()?;
    s.run_phase(bench::phase(&args.asset), ctxs, None).await
}
