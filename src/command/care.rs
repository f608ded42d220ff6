//! `mesh care --group GLOB`: upgrades and care hooks in batches, so a group
//! never goes down at once ([`crate::phases::care`]).

use super::Session;
use crate::error::Error;
use crate::phases::care;
use crate::run::{plan_batches, Rollout};
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Hosts or groups to care for, e.g. 'db*'.
    #[arg(long, value_name = "GLOB")]
    pub group: String,
    /// Hosts of one group at a time (a host in several groups counts in each).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub batch: usize,
    /// Reboot the hosts that need it, and wait for each batch to come back.
    #[arg(long)]
    pub reboot: bool,
    /// Seconds a rebooting host has to come back.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub reboot_wait: u64,
    /// The dockerfiles folder, whose `care/*.sh` hooks run on each host.
    #[arg(
        long,
        value_name = "DIR",
        env = "MESH_DOCKERFILES",
        default_value = "dockerfiles"
    )]
    pub dockerfiles: PathBuf,
}

/// Why `care` refused to start.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{0}")]
    Hooks(String),
}

pub(crate) async fn run(s: &mut Session, args: &Args) -> Result<u8, Error> {
    // The hosts both --group and --limit select.
    let matching = s.inv.select(std::slice::from_ref(&args.group))?;
    let names: Vec<String> = matching.iter().map(|h| h.name.clone()).collect();
    s.hosts.retain(|h| names.contains(&h.name));
    let hooks = care::hooks(&args.dockerfiles).map_err(InputError::Hooks)?;
    let ctxs = s.selected()?;
    let groups: Vec<Vec<String>> = ctxs.iter().map(|c| c.host.groups.clone()).collect();
    let rollout = Rollout {
        batches: plan_batches(ctxs.len(), args.batch, Some(&groups)),
        stop_on_failure: true,
        undo: None,
    };
    let phase = care::phase(care::Care {
        hooks,
        reboot: args.reboot,
        reboot_wait: args.reboot_wait,
    });
    s.run_phase(phase, ctxs, Some(rollout)).await
}
