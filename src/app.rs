//! The run of one command line: load the inventory, select the hosts, take
//! the run lock when the command changes hosts, and hand the [`Session`] to
//! the command's module ([`crate::command`]).

use crate::cli::{Cli, Command};
use crate::command::{self, Session};
use crate::error::Error;
use crate::inventory::Inventory;
use crate::runlock::RunLock;
use std::time::Duration;

/// Run the parsed command line; returns the process exit code.
pub fn main(cli: Cli) -> Result<u8, Error> {
    // Commands that read no inventory.
    match &cli.command {
        Command::Completions(args) => return Ok(command::completions::run(args)),
        Command::Man(args) => return command::completions::man(args),
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::local("starting the async runtime", e))?;
    let result = runtime.block_on(run(cli));
    // Work still in the blocking pool (a download after Ctrl-C) is not waited for.
    runtime.shutdown_background();
    result
}

async fn run(cli: Cli) -> Result<u8, Error> {
    let Cli { global, command } = cli;
    let inv = Inventory::load(&global.inventory)?;
    for warning in inv.host_key_warnings() {
        eprintln!("warning: {warning}");
    }
    let hosts: Vec<_> = inv.select(&global.limit)?.into_iter().cloned().collect();
    if let Command::Inventory(_) = &command {
        return Ok(command::inventory::run(&inv, &hosts, global.json));
    }
    if let Command::Nodes(args) = &command {
        // Refused flags touch nothing, not even the lock.
        command::nodes::check(args, &inv, &global.only, &global.skip)?;
    }
    // Runs that change hosts read-modify-write secrets.env and docker.lock:
    // one at a time per inventory.
    let _run_lock = if command.changes_hosts() && !global.dry_run {
        Some(RunLock::acquire(
            &inv.beside(".mesh/run.lock"),
            Duration::from_secs(global.lock_wait),
            command.name(),
        )?)
    } else {
        None
    };
    let mut s = Session::new(global, inv, hosts, command.name())?;
    let code = match &command {
        Command::Nodes(args) => command::nodes::run(&mut s, args).await,
        Command::Services(args) => command::services::run(&mut s, args).await,
        Command::ServicesUp(args) => command::services_up::run(&mut s, args).await,
        Command::Deploy(args) => command::deploy::run(&mut s, args).await,
        Command::Care(args) => command::care::run(&mut s, args).await,
        Command::Prune(args) => command::prune::run(&mut s, args).await,
        Command::Exec(args) => command::exec::run(&mut s, args).await,
        Command::Backup(args) => command::backup::run(&mut s, args).await,
        Command::Snapshots(args) => command::backup::snapshots(&mut s, args).await,
        Command::Restore(args) => command::backup::restore(&mut s, args).await,
        Command::Status(args) => command::status::run(&mut s, args).await,
        Command::Logs(args) => command::logs::run(&mut s, args).await,
        Command::Bench(args) => command::bench::run(&mut s, args).await,
        Command::Inventory(_) | Command::Completions(_) | Command::Man(_) => {
            unreachable!("handled above")
        }
    };
    s.close().await;
    code
}
