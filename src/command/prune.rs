//! `mesh prune`: on every selected host, remove the `mesh/*` images no
//! service runs and no `--rollback` can reach (what `services` and
//! `deploy` already do after a successful run), and bound the controller's
//! image cache. With `--dry-run`, list what would go and change nothing.

use super::Session;
use crate::error::Error;
use crate::phases::services::{cache, ServicesError};
use std::collections::BTreeSet;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {}

pub(crate) async fn run(s: &mut Session, _args: &Args) -> Result<u8, Error> {
    let dry_run = s.global.dry_run;
    let cap = cache::cap_from_env().map_err(ServicesError::from)?;
    // The controller first: no host depends on its cache. A controller
    // without Docker (it builds on the hosts) has none to bound.
    match cache::prune(
        &crate::mirror::cache_root(),
        &BTreeSet::new(),
        cap,
        dry_run,
        cache::LocalImages::Remove,
    )
    .await
    {
        Ok(report) if s.global.json => println!(
            "{}",
            serde_json::json!({ "event": "controller_cache", "report": report })
        ),
        Ok(report) => println!(
            "{}",
            report
                .summary()
                .unwrap_or_else(|| "controller cache: nothing to remove".into())
        ),
        Err(e) => eprintln!("warning: controller cache not bounded: {e}"),
    }
    let ctxs = s.selected()?;
    s.run_phase(crate::phases::prune::phase(), ctxs, None).await
}
