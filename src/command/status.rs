//! `mesh status [--service S]`: what runs where, and whether anything is
//! wrong ([`crate::phases::status`]). Read-only: no run lock, nothing
//! written on any host. One round trip per host (the selected hosts and
//! the bastions their routes go to), at most `--parallel` at once; exit 1
//! when anything is wrong, so it can run from cron or CI.

use super::Session;
use crate::error::{Error, EXIT_INTERRUPTED};
use crate::ops::{fmt_code, OpError};
use crate::phases::fanout::{self, Panicked};
use crate::phases::logs::is_name;
use crate::phases::status::probe::{self, HostRead, ParseError, Probe};
use crate::phases::status::{assess, table, Reading, Role, Unread};
use crate::phases::HostCtx;
use crate::ssh::Input;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Only this service: the hosts that run or record it, and of their
    /// services only it (their host checks stay).
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
}

/// Why `status` refused its input (exit 2, no host contacted).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("--service {0:?} is not a service name. Fix: use the name of a service folder of your dockerfiles (letters, digits, `.`, `_`, `-`)")]
    BadService(String),
}

/// Check the options before any host is contacted.
pub(crate) fn check(args: &Args) -> Result<(), InputError> {
    match &args.service {
        Some(s) if !is_name(s) => Err(InputError::BadService(s.clone())),
        _ => Ok(()),
    }
}

/// Why one host could not be read.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Remote(#[from] OpError),
    #[error("the status script failed (exit {code}): {tail}")]
    Failed { code: String, tail: String },
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(transparent)]
    Panicked(#[from] Panicked),
}

/// One round trip; the answer redacted before anything reads it.
async fn read(ctx: Arc<HostCtx>, probe: Probe) -> Result<HostRead, ReadError> {
    let out = ctx
        .op_ctx()
        .run("status", probe::script(&probe).as_str(), Input::None)
        .await?;
    if !out.success() {
        return Err(ReadError::Failed {
            code: fmt_code(out.code),
            tail: ctx.log.redact(&out.tail(5)),
        });
    }
    Ok(probe::parse(
        &ctx.host.name,
        &ctx.log.redact(&out.stdout_str()),
    )?)
}

fn overlay_ip(ctx: &HostCtx) -> String {
    ctx.vars
        .get("OVERLAY_IP")
        .unwrap_or(&ctx.host.address)
        .to_string()
}

pub(crate) async fn run(s: &mut Session, args: &Args) -> Result<u8, Error> {
    check(args)?;
    let started = std::time::Instant::now();
    let hosts = s.hosts.clone();
    let ctxs = s.contexts(&hosts)?;
    let bastions = s.bastions_for(&hosts)?;
    // The selected hosts (each pings the next one's overlay IP), then the
    // bastions outside the selection, read for their routes only.
    let mut plan: Vec<(Arc<HostCtx>, Probe, bool, Option<String>)> = Vec::new();
    for (i, ctx) in ctxs.iter().enumerate() {
        let peer = (ctxs.len() > 1).then(|| ctxs[(i + 1) % ctxs.len()].clone());
        let probe = Probe {
            host: true,
            overlay_ip: overlay_ip(ctx),
            peer_ip: peer.as_deref().map(overlay_ip),
            redis_ip: ctx.host.is_bastion().then(|| overlay_ip(ctx)),
        };
        plan.push((ctx.clone(), probe, true, peer.map(|p| p.host.name.clone())));
    }
    for ctx in bastions.values() {
        if !ctxs.iter().any(|c| c.host.name == ctx.host.name) {
            let probe = Probe {
                host: false,
                overlay_ip: overlay_ip(ctx),
                peer_ip: None,
                redis_ip: Some(overlay_ip(ctx)),
            };
            plan.push((ctx.clone(), probe, false, None));
        }
    }
    let probes: BTreeMap<String, Probe> = plan
        .iter()
        .map(|(c, p, _, _)| (c.host.name.clone(), p.clone()))
        .collect();
    let targets: Vec<Arc<HostCtx>> = plan.iter().map(|(c, ..)| c.clone()).collect();
    let reads = fanout::each(&targets, s.global.parallel, |ctx| {
        let probe = probes[&ctx.host.name].clone();
        read(ctx, probe)
    });
    let Some(reads) = s.until_interrupted(reads).await else {
        return Ok(EXIT_INTERRUPTED);
    };
    let readings: Vec<Reading> = plan
        .into_iter()
        .zip(reads)
        .map(|((ctx, _, shown, peer), (_, read))| Reading {
            host: ctx.host.name.clone(),
            role: Role::of(&s.inv, &ctx.host, overlay_ip(&ctx)),
            shown,
            peer,
            read: read.map_err(|e| Unread(ctx.log.redact(&e.to_string()))),
        })
        .collect();
    let names: Vec<String> = s.inv.hosts.iter().map(|h| h.name.clone()).collect();
    let only = args.service.as_deref();
    let statuses = assess(&readings, &names, only);
    if let (Some(only), true) = (only, statuses.is_empty()) {
        eprintln!(
            "no selected host runs or records {only}. Fix: check the name (mesh status lists the services), or --limit"
        );
        return Ok(1);
    }
    if s.global.json {
        for st in &statuses {
            println!("{}", table::host_json(st));
        }
        println!(
            "{}",
            table::summary_json(&statuses, started.elapsed().as_secs_f64())
        );
    } else {
        print!("{}", table::render(&statuses, s.global.verbose));
    }
    let ok = !statuses.is_empty() && statuses.iter().all(|st| st.is_ok());
    Ok(u8::from(!ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_service_name_is_refused_with_a_fix() {
        let bad = Args {
            service: Some("a;b".into()),
        };
        assert!(check(&bad).unwrap_err().to_string().contains("Fix:"));
        assert!(check(&Args {
            service: Some("web".into())
        })
        .is_ok());
        assert!(check(&Args { service: None }).is_ok());
    }
}
