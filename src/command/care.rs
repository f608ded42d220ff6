//! `mesh care --group GLOB`: upgrades and care hooks in batches that keep
//! every service up: a host's routes are withdrawn before it goes down and
//! return once its containers are healthy again ([`crate::phases::care`]).

use super::{host_vars, Session};
use crate::error::Error;
use crate::inventory::Host;
use crate::phases::care;
use crate::run::{BatchSize, Rollout};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Hosts or groups to care for, e.g. 'db*'.
    #[arg(long, value_name = "GLOB")]
    pub group: String,
    /// Hosts of one group at a time: a number, or a percentage of the group
    /// (a host in several groups counts in each). Never every replica of a
    /// service at once, whatever the groups.
    #[arg(long, value_name = "N|N%", default_value = "1")]
    pub batch: BatchSize,
    /// Reboot the hosts that need it, and wait for each batch to come back.
    #[arg(long)]
    pub reboot: bool,
    /// Seconds a rebooting host has to come back.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub reboot_wait: u64,
    /// Care for a host even when it holds the only replica of a service
    /// (that service is down meanwhile); without it such a host fails
    /// before anything changes on it.
    #[arg(long)]
    pub allow_downtime: bool,
    /// The dockerfiles folder: its `care/*.sh` hooks run on each host, and
    /// its services tell where each service's replicas run.
    #[arg(
        long,
        value_name = "DIR",
        env = "MESH_DOCKERFILES",
        default_value = "dockerfiles"
    )]
    pub dockerfiles: PathBuf,
}

/// Why `care` refused to start.
pub use care::InputError;

pub(crate) async fn run(s: &mut Session, args: &Args) -> Result<u8, Error> {
    // The hosts both --group and --limit select.
    let matching = s.inv.select(std::slice::from_ref(&args.group))?;
    let names: Vec<String> = matching.iter().map(|h| h.name.clone()).collect();
    s.hosts.retain(|h| names.contains(&h.name));
    let (hooks, note) = care::hooks(&args.dockerfiles)?;
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    let selected: Vec<String> = s.hosts.iter().map(|h| h.name.clone()).collect();
    let replicas = care::Replicas::plan(&args.dockerfiles, &s.inv, &selected, |h| {
        host_vars(&s.inv, h, &s.secrets)
    })?;
    let hosts = s.hosts.clone();
    let refs: Vec<&Host> = hosts.iter().collect();
    replicas.check_api(s.inv.ingress.publisher, &refs)?;
    let bastions = s.bastions_for(&hosts)?;
    let ctxs = s.selected()?;
    let rollout = Rollout {
        batches: replicas.batches(&refs, args.batch),
        stop_on_failure: true,
        undo: None,
    };
    let phase = care::phase(care::Care {
        hooks,
        reboot: args.reboot,
        reboot_wait: args.reboot_wait,
        allow_downtime: args.allow_downtime,
        replicas: Arc::new(replicas),
        bastions,
        publisher: s.inv.ingress.publisher,
    });
    s.run_phase(phase, ctxs, Some(rollout)).await
}
