//! `mesh exec -- CMD…`: an ad-hoc command on every selected host.

use super::Session;
use crate::error::Error;
use crate::phases::exec;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The command; words are joined with spaces, as `ssh` does.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

pub(crate) async fn run(s: &mut Session, args: &Args) -> Result<u8, Error> {
    let ctxs = s.selected()?;
    s.run_phase(exec::phase(&args.command), ctxs, None).await
}
