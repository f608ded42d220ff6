//! `mesh services-up`: `docker compose up -d` on every selected host, then
//! the routes of what runs are published on the bastions.

use super::Session;
use crate::error::Error;
use crate::phases::services;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {}

pub(crate) async fn run(s: &mut Session, _args: &Args) -> Result<u8, Error> {
    super::services::bastion_secrets(s)?;
    let ctxs = s.selected()?;
    let bastions = s.bastions_for(&s.hosts.clone())?;
    let phase = services::up_phase(&s.inv, bastions);
    s.run_phase(phase, ctxs, None).await
}
