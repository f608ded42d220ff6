//! The `mesh` binary: parse arguments, run, map the result to an exit code.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = mesh::cli::Cli::parse();
    let result = mesh::app::main(cli).map_err(anyhow::Error::from);
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(mesh::app::EXIT_BAD_INPUT)
        }
    }
}
