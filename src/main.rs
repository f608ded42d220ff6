//! The `mesh` binary: parse arguments, run, render an error with its exit code.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = mesh::cli::Cli::parse();
    match mesh::app::main(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = e.exit_code();
            eprintln!("error: {:#}", anyhow::Error::from(e));
            ExitCode::from(code)
        }
    }
}
