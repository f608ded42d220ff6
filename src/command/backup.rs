//! `mesh backup`, `mesh snapshots` and `mesh restore`: the services' state
//! in the fleet's restic repository ([`crate::phases::backup`]).

use super::Session;
use crate::error::Error;
use crate::phases::backup::{self, restore, BackupInputError, Fleet, RunBackup, Setup};
use crate::phases::{HostCtx, Phase, Stage};
use std::path::PathBuf;
use std::sync::Arc;

/// The dockerfiles folder (each service's mesh.yml says what it backs up).
#[derive(Debug, Clone, clap::Args)]
pub struct Folder {
    /// The dockerfiles folder.
    #[arg(
        long,
        value_name = "DIR",
        env = "MESH_DOCKERFILES",
        default_value = "dockerfiles"
    )]
    pub dockerfiles: PathBuf,
    /// How long to wait for a lock another restic holds on the repository.
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub retry_lock: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Only this service.
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// Skip `restic forget --prune` by the inventory's backup.keep.
    #[arg(long)]
    pub no_prune: bool,
    /// Check the repository instead (`restic check --read-data-subset`): proof that the backups are readable.
    #[arg(long)]
    pub check: bool,
    /// The share of the data `--check` reads (restic's `--read-data-subset`).
    #[arg(long, value_name = "N%|N/M", default_value = "5%")]
    pub read_data_subset: String,
    #[command(flatten)]
    pub folder: Folder,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SnapshotsArgs {
    /// Only this service's snapshots.
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    #[command(flatten)]
    pub folder: Folder,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// The service to restore.
    #[arg(long, value_name = "NAME")]
    pub service: String,
    /// The backup run (its ID in `mesh snapshots`, or a restic snapshot id), or `latest`.
    #[arg(long, value_name = "ID", default_value = "latest")]
    pub snapshot: String,
    /// The host to restore on (needed when several run the service).
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    /// Restore the backups another (e.g. dead) host made.
    #[arg(long, value_name = "NAME")]
    pub from_host: Option<String>,
    #[command(flatten)]
    pub folder: Folder,
}

/// The hosts among `ctxs` that run a backed-up service.
fn only_fleet(ctxs: Vec<Arc<HostCtx>>, fleet: &Fleet) -> Vec<Arc<HostCtx>> {
    ctxs.into_iter()
        .filter(|c| fleet.contains_key(&c.host.name))
        .collect()
}

pub(crate) async fn run(s: &mut Session, args: &Args) -> Result<u8, Error> {
    s.ensure_secret(backup::PASSWORD)?;
    let ctxs = s.selected()?;
    let fleet = Arc::new(backup::plan_fleet(
        &args.folder.dockerfiles,
        &s.inv,
        &ctxs,
        args.service.as_deref(),
    )?);
    let ctxs = only_fleet(ctxs, &fleet);
    let phase = backup::phase(
        Setup {
            fleet: fleet.clone(),
            policy: s.inv.backup.clone(),
            timer: true,
        },
        RunBackup {
            fleet,
            service: args.service.clone(),
            no_prune: args.no_prune,
            check: args.check.then(|| args.read_data_subset.clone()),
            retry_lock: args.folder.retry_lock.clone(),
        },
    );
    s.run_phase(phase, ctxs, None).await
}

pub(crate) async fn snapshots(s: &mut Session, args: &SnapshotsArgs) -> Result<u8, Error> {
    let ctxs = s.selected()?;
    let fleet = backup::plan_fleet(
        &args.folder.dockerfiles,
        &s.inv,
        &ctxs,
        args.service.as_deref(),
    )?;
    let ctxs = only_fleet(ctxs, &fleet);
    // One repository for the fleet: one host answers for all.
    let mut last = None;
    for ctx in &ctxs {
        match s
            .until_interrupted(restore::list(ctx, &args.folder.retry_lock))
            .await
        {
            None => return Ok(crate::error::EXIT_INTERRUPTED),
            Some(Ok(all)) => {
                let shown: Vec<_> = all
                    .into_iter()
                    .filter(|x| args.service.as_ref().is_none_or(|svc| &x.service == svc))
                    .collect();
                if s.global.json {
                    for x in &shown {
                        let mut v = serde_json::to_value(x).unwrap_or_default();
                        v["event"] = "snapshot".into();
                        println!("{v}");
                    }
                } else {
                    print!("{}", restore::table(&shown));
                }
                return Ok(0);
            }
            Some(Err(e)) => {
                eprintln!("{}: {e}", ctx.host.name);
                last = Some(e);
            }
        }
    }
    if last.is_some() {
        eprintln!("no host could list the snapshots. Fix: run mesh backup first (it sets up restic on the hosts)");
    }
    Ok(1)
}

pub(crate) async fn restore(s: &mut Session, args: &RestoreArgs) -> Result<u8, Error> {
    s.ensure_secret(backup::PASSWORD)?;
    let ctxs = s.selected()?;
    let mut fleet =
        backup::plan_fleet(&args.folder.dockerfiles, &s.inv, &ctxs, Some(&args.service))?;
    let target = match &args.host {
        Some(h) => {
            if !fleet.contains_key(h) {
                return Err(BackupInputError::NotOnHost {
                    host: h.clone(),
                    service: args.service.clone(),
                    runs: fleet.keys().cloned().collect(),
                }
                .into());
            }
            h.clone()
        }
        None if fleet.len() == 1 => fleet.keys().next().cloned().unwrap_or_default(),
        None => {
            return Err(BackupInputError::WhichHost {
                service: args.service.clone(),
                hosts: fleet.keys().cloned().collect(),
            }
            .into())
        }
    };
    fleet.retain(|h, _| *h == target);
    let fleet = Arc::new(fleet);
    let ctxs = only_fleet(ctxs, &fleet);
    let phase = Phase {
        name: "restore",
        stages: vec![
            Stage::Hosts(Box::new(Setup {
                fleet: fleet.clone(),
                policy: s.inv.backup.clone(),
                timer: true,
            })),
            Stage::Hosts(Box::new(restore::Restore {
                fleet,
                service: args.service.clone(),
                snapshot: args.snapshot.clone(),
                from_host: args.from_host.clone(),
                retry_lock: args.folder.retry_lock.clone(),
                dry_run: s.global.dry_run,
            })),
        ],
    };
    s.run_phase(phase, ctxs, None).await
}
