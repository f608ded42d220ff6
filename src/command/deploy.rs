//! `mesh deploy --service S`: rebuild one service and roll it out batch by
//! batch without downtime ([`crate::phases::deploy`]).

use super::Session;
use crate::error::Error;
use crate::phases::{deploy, services, Step};
use crate::run::{plan_batches, BatchSize, Rollout};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The service (a subfolder of the dockerfiles folder, with `ports: [A, B]` in its mesh.yml).
    #[arg(long, value_name = "NAME")]
    pub service: String,
    /// The dockerfiles folder.
    #[arg(
        long,
        value_name = "DIR",
        env = "MESH_DOCKERFILES",
        default_value = "dockerfiles"
    )]
    pub dockerfiles: PathBuf,
    /// Hosts switched at a time: a number or a percentage.
    #[arg(long, value_name = "N|N%", default_value = "1")]
    pub batch: BatchSize,
    /// Roll even when the hosts already run this build.
    #[arg(long)]
    pub force: bool,
    /// Switch every host back to its previous image (the last 3 are kept).
    #[arg(long)]
    pub rollback: bool,
    /// When a batch fails, leave the hosts already switched on the new build.
    #[arg(long)]
    pub no_rollback: bool,
    /// Seconds the old copy keeps serving after the switch.
    #[arg(long, value_name = "SECONDS", default_value_t = 2)]
    pub drain: u64,
    /// Take the lock of a deploy that died.
    #[arg(long)]
    pub break_lock: bool,
    /// How images reach the hosts: through the fleet's garage (each new
    /// layer leaves this machine once, every host fetches it from its own
    /// node), straight by SSH, or auto (garage when the fleet has it and
    /// more than one host gets an image, unless the layers they lack come
    /// to 1 MiB or less for all of them together: a small change goes by SSH).
    #[arg(long, value_enum, default_value = "auto", value_name = "HOW")]
    pub ship: services::Ship,
}

/// Why `deploy` refused to start.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{}: the traefik service's traefik.yml has no `api:` section, so mesh cannot confirm on the bastions that {service} was switched. Fix: add `api: {{ insecure: true }}` (served on the traefik entry point, 127.0.0.1:8080 by default), or set ingress.traefik_api: http://HOST:PORT in the inventory", .traefik_dir.display())]
    NoTraefikApi {
        traefik_dir: PathBuf,
        service: String,
    },
}

pub(crate) async fn run(s: &mut Session, args: &Args) -> Result<u8, Error> {
    super::services::bastion_secrets(s)?;
    let mut ctxs = s.selected()?;
    let bastions = s.bastions_for(&s.hosts.clone())?;
    let opts = services::ServicesOptions {
        dockerfiles: args.dockerfiles.clone(),
        // A rollback builds nothing: the previous images are on the hosts.
        build_on_host: args.rollback,
        dry_run: s.global.dry_run,
        cache: crate::mirror::cache_root(),
        assets: s.global.assets.clone(),
        only: Some(args.service.clone()),
        prune: false,
        ship: args.ship,
        images_key: crate::s3::images_key(&s.secrets),
    };
    let prepared = services::prepare(&opts, &s.inv, &ctxs, &s.progress()).await?;
    if !args.rollback {
        prepared.print(s.global.json);
    }
    let services::Parts {
        plans,
        images,
        traefik_api,
        fanout,
    } = prepared.into_parts();
    let deploy = deploy::Deploy::new(
        deploy::DeployOptions {
            service: args.service.clone(),
            force: args.force,
            rollback: args.rollback,
            drain: args.drain,
            lock_wait: s.global.lock_wait,
            break_lock: args.break_lock,
            audit: s.inv.beside(".mesh/deploy.log"),
            publisher: s.inv.ingress.publisher,
            traefik_api,
        },
        plans,
        images,
        fanout.clone(),
        bastions,
    );
    if deploy.needs_traefik_api() {
        return Err(InputError::NoTraefikApi {
            traefik_dir: args.dockerfiles.join("traefik"),
            service: args.service.clone(),
        }
        .into());
    }
    // Only the hosts that run the service, in batches.
    let targets = deploy.hosts();
    ctxs.retain(|c| targets.contains(&c.host.name));
    let rollout = Rollout {
        batches: plan_batches(ctxs.len(), args.batch.of(ctxs.len()), None),
        stop_on_failure: true,
        undo: (!args.no_rollback && !args.rollback)
            .then(|| Arc::new(deploy.undo()) as Arc<dyn Step>),
    };
    let code = s.run_phase(deploy.phase(), ctxs, Some(rollout)).await?;
    s.say(services::fanout_line(fanout.as_deref()));
    Ok(code)
}
