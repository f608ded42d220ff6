//! Command-line interface (clap). The `///` docs below are the `--help` text.

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

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bootstrap hosts: base packages and firewall (then Docker, overlay, storage).
    Nodes {
        /// Address, public IP or public DNS IP of the node that bootstraps the cluster.
        #[arg(long, value_name = "IP")]
        first_ip: Option<String>,
        /// Base URL of the Docker .deb repository (a mirror in download.docker.com's layout).
        #[arg(long, value_name = "URL")]
        docker_mirror: Option<String>,
        /// Re-read the mirror and move docker.lock to the newest versions.
        #[arg(long)]
        update_lock: bool,
    },
    /// Build the service images locally and ship them with their files.
    Services {
        /// Folder with one subfolder per service and one `<group>.yml` compose file per group.
        #[arg(long, value_name = "DIR")]
        dockerfiles: PathBuf,
        /// Build the images on the hosts from the shipped contexts (for a
        /// controller without Docker) instead of building once here and shipping.
        #[arg(long)]
        build_on_host: bool,
        /// Remove from the hosts the services that vanished from the folder
        /// (containers, images, files, routes). Without it they are kept.
        #[arg(long)]
        prune: bool,
    },
    /// Start the services (`docker compose up -d`) on every selected host, then publish their routes.
    ServicesUp,
    /// Rebuild one service and roll it out without downtime: the new copy
    /// starts on the service's other port, takes the traffic once healthy,
    /// then the old one stops.
    Deploy {
        /// The service (a subfolder of the dockerfiles folder, with `ports: [A, B]` in its mesh.yml).
        #[arg(long, value_name = "NAME")]
        service: String,
        /// The dockerfiles folder.
        #[arg(
            long,
            value_name = "DIR",
            env = "MESH_DOCKERFILES",
            default_value = "dockerfiles"
        )]
        dockerfiles: PathBuf,
        /// Hosts switched at a time: a number or a percentage.
        #[arg(long, value_name = "N|N%", default_value = "1")]
        batch: crate::run::BatchSize,
        /// Roll even when the hosts already run this build.
        #[arg(long)]
        force: bool,
        /// Switch every host back to its previous image (the last 3 are kept).
        #[arg(long)]
        rollback: bool,
        /// When a batch fails, leave the hosts already switched on the new build.
        #[arg(long)]
        no_rollback: bool,
        /// Seconds the old copy keeps serving after the switch.
        #[arg(long, value_name = "SECONDS", default_value_t = 2)]
        drain: u64,
        /// Take the lock of a deploy that died.
        #[arg(long)]
        break_lock: bool,
    },
    /// apt update + dist-upgrade and the care hooks on hosts matching GLOB,
    /// in batches so a group never goes down at once.
    Care {
        /// Hosts or groups to care for, e.g. 'db*'.
        #[arg(long, value_name = "GLOB")]
        group: String,
        /// Hosts of one group at a time, a number or a percentage of the
        /// group (a host in several groups counts in each); never every
        /// replica of a service at once.
        #[arg(long, value_name = "N|N%", default_value = "1")]
        batch: crate::run::BatchSize,
        /// Go on with a host that holds the only replica of a service (it is
        /// down while it is cared for).
        #[arg(long)]
        allow_downtime: bool,
        /// Reboot the hosts that need it, and wait for each batch to come back.
        #[arg(long)]
        reboot: bool,
        /// Seconds a rebooting host has to come back.
        #[arg(long, value_name = "SECONDS", default_value_t = 300)]
        reboot_wait: u64,
        /// The dockerfiles folder, whose `care/*.sh` hooks run on each host.
        #[arg(
            long,
            value_name = "DIR",
            env = "MESH_DOCKERFILES",
            default_value = "dockerfiles"
        )]
        dockerfiles: PathBuf,
    },
    /// Run an ad-hoc command on every selected host and show each host's output.
    Exec {
        /// The command; words are joined with spaces, as `ssh` does.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Print the resolved hosts, their groups and facts.
    Inventory,
    /// Benchmark step for `make bench`: push ASSET, two templated files and a unit.
    #[command(hide = true)]
    Bench {
        #[arg(long, value_name = "FILE")]
        asset: PathBuf,
    },
}
