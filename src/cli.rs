//! Command-line interface (clap). The `///` docs below are the `--help` text.

use crate::command;
use crate::run::ProgressMode;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// mesh: turn plain Debian hosts into one private service mesh, over SSH.
///
/// Exit codes: 0 all hosts succeeded, 1 some host failed, 2 bad input
/// (nothing was touched), 130 interrupted.
#[derive(Debug, Parser)]
#[command(name = "mesh", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,

    #[command(subcommand)]
    pub command: Command,
}

/// The flags every command takes (before or after its name).
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// Inventory file.
    #[arg(
        short = 'i',
        long,
        global = true,
        env = "MESH_INVENTORY",
        default_value = "inventory/inventory.yml"
    )]
    pub inventory: PathBuf,

    /// Only hosts whose name or one of whose groups matches GLOB (repeatable).
    #[arg(long, global = true, value_name = "GLOB")]
    pub limit: Vec<String>,

    /// Show what would change on each host; change nothing.
    #[arg(long, global = true)]
    pub dry_run: bool,

    /// Hosts worked on at once.
    #[arg(long, global = true, default_value_t = 64, value_name = "N")]
    pub parallel: usize,

    /// Simultaneous SSH handshakes (they cost the controller CPU).
    #[arg(long, global = true, default_value_t = 32, value_name = "N")]
    pub max_handshakes: usize,

    /// Seconds to wait for an SSH connection.
    #[arg(long, global = true, default_value_t = 10, value_name = "SECONDS")]
    pub connect_timeout: u64,

    /// Seconds any one remote command may take before it is killed and its
    /// host fails (default: 600, and 1800 for package installs and upgrades).
    #[arg(long, global = true, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub command_timeout: Option<u64>,

    /// Seconds to wait for another run on this inventory (and, for deploy,
    /// another deploy of the service) to finish; 0 fails at once naming it.
    #[arg(long, global = true, default_value_t = 0, value_name = "SECONDS")]
    pub lock_wait: u64,

    /// One JSON event per line on stdout.
    #[arg(long, global = true)]
    pub json: bool,

    /// Progress display.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    pub progress: ProgressMode,

    /// Run only these steps of the phase (repeatable).
    #[arg(long, global = true, value_name = "STEP")]
    pub only: Vec<String>,

    /// Skip these steps of the phase (repeatable).
    #[arg(long, global = true, value_name = "STEP")]
    pub skip: Vec<String>,

    /// Hash every managed file on the hosts instead of trusting the size +
    /// mtime mesh recorded when it wrote them.
    #[arg(long, global = true)]
    pub checksum: bool,

    /// Folder with the binaries mesh uploads: `<DIR>/<arch>/wesher`, `<DIR>/<arch>/garage`.
    #[arg(
        long,
        global = true,
        env = "MESH_ASSETS",
        default_value = "assets",
        value_name = "DIR"
    )]
    pub assets: PathBuf,

    /// Print every changed operation.
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bootstrap hosts: base packages and firewall (then Docker, overlay, storage).
    Nodes(command::nodes::Args),
    /// Build the service images locally and ship them with their files.
    Services(command::services::Args),
    /// Start the services (`docker compose up -d`) on every selected host, then publish their routes.
    ServicesUp(command::services_up::Args),
    /// Rebuild one service and roll it out without downtime: the new copy
    /// starts on the service's other port, takes the traffic once healthy,
    /// then the old one stops.
    Deploy(command::deploy::Args),
    /// apt update + dist-upgrade and the care hooks on hosts matching GLOB,
    /// in batches so a group never goes down at once.
    Care(command::care::Args),
    /// Remove from the hosts the images no service runs and no --rollback
    /// can reach, and bound the controller's image cache (--dry-run lists).
    Prune(command::prune::Args),
    /// Run an ad-hoc command on every selected host and show each host's output.
    Exec(command::exec::Args),
    /// Back up the services' state (dumps, paths, volumes) into the fleet's garage with restic.
    Backup(command::backup::Args),
    /// List the backups of every service across the fleet.
    Snapshots(command::backup::SnapshotsArgs),
    /// Restore a service from a backup: stop it, replace its data, start it, feed it its dump.
    Restore(command::backup::RestoreArgs),
    /// What runs where, and whether anything is wrong: each service's live
    /// slot, image, state, uptime and last deploy, route drift on the
    /// bastions, disk, daemons, overlay (exit 1 when something is wrong).
    Status(command::status::Args),
    /// The live copy's logs of a service from every host that runs it,
    /// each line prefixed by its host.
    Logs(command::logs::Args),
    /// Print the resolved hosts, their groups and facts.
    Inventory(command::inventory::Args),
    /// Print a shell completion script for mesh (bash, zsh, fish, …).
    Completions(command::completions::Args),
    /// Write mesh's man pages (one per command), generated from this help.
    #[command(hide = true)]
    Man(command::completions::ManArgs),
    /// Benchmark step for `make bench`: push ASSET, two templated files and a unit.
    #[command(hide = true)]
    Bench(command::bench::Args),
}

impl Command {
    /// The command's name, as typed (log directories and the run lock use it).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Nodes(_) => "nodes",
            Command::Services(_) => "services",
            Command::ServicesUp(_) => "services-up",
            Command::Deploy(_) => "deploy",
            Command::Care(_) => "care",
            Command::Prune(_) => "prune",
            Command::Exec(_) => "exec",
            Command::Backup(_) => "backup",
            Command::Snapshots(_) => "snapshots",
            Command::Restore(_) => "restore",
            Command::Status(_) => "status",
            Command::Logs(_) => "logs",
            Command::Inventory(_) => "inventory",
            Command::Completions(_) => "completions",
            Command::Man(_) => "man",
            Command::Bench(_) => "bench",
        }
    }

    /// Whether it changes hosts or the inventory's local state (secrets.env,
    /// docker.lock), so two such runs on one inventory must not overlap.
    pub fn changes_hosts(&self) -> bool {
        !matches!(
            self,
            Command::Exec(_)
                | Command::Snapshots(_)
                | Command::Status(_)
                | Command::Logs(_)
                | Command::Inventory(_)
                | Command::Completions(_)
                | Command::Man(_)
                | Command::Bench(_)
        )
    }
}
