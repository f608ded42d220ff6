//! `mesh services --dockerfiles DIR`: build the images on the controller,
//! ship them with their rendered files and compose projects, publish routes.

use super::Session;
use crate::error::Error;
use crate::phases::services;
use crate::phases::{backup, HostCtx, Stage};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Folder with one subfolder per service and one `<group>.yml` compose file per group.
    #[arg(long, value_name = "DIR")]
    pub dockerfiles: PathBuf,
    /// Build the images on the hosts from the shipped contexts (for a
    /// controller without Docker) instead of building once here and shipping.
    #[arg(long)]
    pub build_on_host: bool,
    /// Remove from the hosts the services that vanished from the folder
    /// (containers, images, files, routes). Without it they are kept.
    #[arg(long)]
    pub prune: bool,
    /// How images reach the hosts: through the fleet's garage (each new
    /// layer leaves this machine once, every host fetches it from its own
    /// node), straight by SSH, or auto (garage when the fleet has it and
    /// more than one host gets an image, unless the layers they lack come
    /// to 1 MiB or less for all of them together: a small change goes by SSH).
    #[arg(long, value_enum, default_value = "auto", value_name = "HOW")]
    pub ship: services::Ship,
}

/// The bastions' Redis password and CrowdSec bouncer key, made once.
pub(crate) fn bastion_secrets(s: &mut Session) -> Result<(), Error> {
    if services::has_bastion(&s.inv) {
        for key in [services::REDIS_PWD, services::CROWDSEC_BOUNCER_KEY] {
            s.ensure_secret(key)?;
        }
    }
    Ok(())
}

pub(crate) async fn run(s: &mut Session, args: &Args) -> Result<u8, Error> {
    bastion_secrets(s)?;
    let backs_up = crate::phases::services::folder::Folder::load(&args.dockerfiles)
        .is_ok_and(|f| f.services.values().any(|d| d.options.backup.is_some()));
    if backs_up {
        s.ensure_secret(backup::PASSWORD)?;
    }
    let ctxs = s.selected()?;
    let bastions = s.bastions_for(&s.hosts.clone())?;
    let opts = services::ServicesOptions {
        dockerfiles: args.dockerfiles.clone(),
        build_on_host: args.build_on_host,
        dry_run: s.global.dry_run,
        cache: crate::mirror::cache_root(),
        assets: s.global.assets.clone(),
        only: None,
        prune: args.prune,
        ship: args.ship,
        images_key: crate::s3::images_key(&s.secrets),
    };
    let prepared = services::prepare(&opts, &s.inv, &ctxs, &s.progress()).await?;
    prepared.print(s.global.json);
    let fanout = prepared.fanout();
    let mut phase = services::phase(prepared, &opts, &s.inv, bastions);
    if backs_up {
        phase.stages.extend(backup_timers(s, args, &ctxs)?);
    }
    let code = s.run_phase(phase, ctxs, None).await?;
    s.say(services::fanout_line(fanout.as_deref()));
    Ok(code)
}

/// restic and the backup timer on the hosts that run a service with a
/// `backup:` section, once `mesh nodes` has made the backups' bucket key.
fn backup_timers(s: &Session, args: &Args, ctxs: &[Arc<HostCtx>]) -> Result<Vec<Stage>, Error> {
    let fleet = match backup::plan_fleet(&args.dockerfiles, &s.inv, ctxs, None) {
        Ok(fleet) => fleet,
        Err(backup::BackupInputError::NothingToBackUp { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    if !ctxs.iter().all(|c| backup::has_bucket_key(&c.vars)) {
        (s.progress())("note: no backup timers yet: the backups' bucket key is made by `mesh nodes` (garage step); run it, then `mesh services` again");
        return Ok(Vec::new());
    }
    Ok(backup::setup_stages(backup::Setup {
        fleet: Arc::new(fleet),
        policy: s.inv.backup.clone(),
        timer: true,
    }))
}
