//! What a bastion (a host with `traefik` in its services) gets besides its
//! containers: Redis from Debian for Traefik's routes (bound to the overlay
//! IP, password in 0640/0600 files, keyspace events on), Traefik's
//! `acme.json` (0600) and log files, and CrowdSec with its firewall
//! bouncer reading Traefik's access log and sshd's log. Workers using the
//! traefik-kop publisher get traefik-kop instead.

use super::{touch, DATA_DIR, LOG_DIR};
use crate::inventory::Arch;
use crate::ops::{AptInstall, CommandOp, DirOp, FileOp, Op, UnitOp};
use crate::phases::nodes::AssetError;
use crate::phases::HostCtx;
use crate::quote::Script;
use crate::template::{render_builtin, TemplateError};
use std::path::Path;

/// Why a bastion's (or a traefik-kop worker's) ops cannot be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BastionError {
    #[error("REDIS_PWD is not set. Fix: put REDIS_PWD=... in secrets.env (mesh creates one when the inventory has a bastion)")]
    NoRedisPassword,
    #[error("{CROWDSEC_BOUNCER_KEY} is not set. Fix: put it in secrets.env (mesh creates one when the inventory has a bastion)")]
    NoBouncerKey,
    #[error("no bastion to publish to. Fix: set traefik_host for this host")]
    NoBastion,
    #[error("internal error: no template {name}")]
    NoBuiltin { name: String },
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Asset(#[from] AssetError),
}

/// For callers whose errors are still text (the services phase's op list).
/// The port CrowdSec's local API listens on (templates/crowdsec/config.yaml.local:
/// moved off 8080, which is Traefik's API).
pub(crate) const CROWDSEC_LAPI_PORT: u16 = 8081;

/// Where redis-cli on the bastion reads the password from (never argv).
pub(crate) const REDIS_AUTH_FILE: &str = "/etc/redis/mesh-auth";

/// The bastion's password variable.
pub const REDIS_PWD: &str = "REDIS_PWD";

fn redis_password(ctx: &HostCtx) -> Result<String, BastionError> {
    ctx.vars
        .get(REDIS_PWD)
        .map(str::to_string)
        .ok_or(BastionError::NoRedisPassword)
}

/// Redis config value quoting: `"` and `\` escaped.
fn redis_quote(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The bastion's ops, in order.
pub(crate) fn ops(ctx: &HostCtx, crowdsec: bool) -> Result<Vec<Box<dyn Op>>, BastionError> {
    let password = redis_password(ctx)?;
    let extra = minijinja::Value::from(std::collections::BTreeMap::from([(
        "redis_password".to_string(),
        minijinja::Value::from(redis_quote(&password)),
    )]));
    let conf = render_builtin("redis.conf.j2", &ctx.vars, Some(&extra))?;
    let mut ops: Vec<Box<dyn Op>> = vec![
        Box::new(AptInstall::new(["redis-server", "curl"])),
        Box::new(
            FileOp::from_bytes("/etc/redis/redis.conf", conf)
                .mode(0o640)
                .owner("redis", "redis")
                .id("redis-conf"),
        ),
        Box::new(FileOp::from_bytes(REDIS_AUTH_FILE, password).mode(0o600)),
        Box::new(UnitOp::existing("redis-server.service").restart_when(["redis-conf"])),
        Box::new(DirOp::new(format!("{DATA_DIR}/traefik")).mode(0o700)),
        Box::new(touch(&format!("{DATA_DIR}/traefik/acme.json"), 0o600)),
        Box::new(DirOp::new(format!("{LOG_DIR}/traefik"))),
        Box::new(touch(&format!("{LOG_DIR}/traefik/access.log"), 0o644)),
        Box::new(touch(&format!("{LOG_DIR}/traefik/traefik.log"), 0o644)),
    ];
    if crowdsec {
        ops.extend(crowdsec_ops(ctx)?);
    }
    Ok(ops)
}

/// The bouncer's key for the local API (in secrets.env, like REDIS_PWD).
pub const CROWDSEC_BOUNCER_KEY: &str = "CROWDSEC_BOUNCER_KEY";

/// A built-in file, verbatim.
fn builtin(name: &str) -> Result<&'static str, BastionError> {
    crate::template::builtin(name).ok_or_else(|| BastionError::NoBuiltin {
        name: name.to_string(),
    })
}

/// CrowdSec and its firewall bouncer from Debian's packages, installed
/// offline: the pre-seeded files (local API off Traefik's 8080, no Central
/// API, Traefik's logs acquired, the bouncer's key) go first, so the
/// packages' postinst scripts neither register online nor write their own;
/// then `setup.sh` links the Traefik parsers from the shipped hub, registers
/// the bouncer and (re)starts both when something they read changed.
fn crowdsec_ops(ctx: &HostCtx) -> Result<Vec<Box<dyn Op>>, BastionError> {
    if ctx.vars.get(CROWDSEC_BOUNCER_KEY).is_none() {
        return Err(BastionError::NoBouncerKey);
    }
    let bouncer = render_builtin(
        "crowdsec/crowdsec-firewall-bouncer.yaml.local.j2",
        &ctx.vars,
        None,
    )?;
    let setup = builtin("crowdsec/setup.sh")?;
    let mut run = Script::new();
    run.raw(setup);
    let mut check = Script::new();
    check.raw("set -- --check");
    check.raw(setup);
    // crowdsec's postinst waits ~20 s for a first Central API pull that
    // never comes offline; this line in its log is what it waits for.
    let mut seed_log = Script::new();
    seed_log.raw(
        "echo 'mesh: offline install, added 0 entries, deleted 0 entries' >> /var/log/crowdsec.log",
    );
    Ok(vec![
        Box::new(DirOp::new("/etc/crowdsec")),
        Box::new(DirOp::new("/etc/crowdsec/acquis.d")),
        Box::new(DirOp::new("/etc/crowdsec/bouncers")),
        Box::new(FileOp::from_bytes(
            "/etc/crowdsec/config.yaml.local",
            builtin("crowdsec/config.yaml.local")?,
        )),
        Box::new(FileOp::from_bytes(
            "/etc/crowdsec/online_api_credentials.yaml",
            builtin("crowdsec/online_api_credentials.yaml")?,
        )),
        Box::new(FileOp::from_bytes(
            "/etc/crowdsec/acquis.d/traefik.yaml",
            builtin("crowdsec/acquis-traefik.yaml")?,
        )),
        Box::new(
            FileOp::from_bytes(
                "/etc/crowdsec/bouncers/crowdsec-firewall-bouncer.yaml.local",
                bouncer,
            )
            .mode(0o600),
        ),
        Box::new(CommandOp::new("seed crowdsec.log", seed_log).creates("/var/log/crowdsec.log")),
        Box::new(AptInstall::new(["crowdsec", "crowdsec-firewall-bouncer"])),
        Box::new(CommandOp::new("crowdsec setup", run).unless(check)),
    ])
}

/// traefik-kop on a worker: binary, 0600 environment with REDIS_PASS, unit.
pub(crate) fn traefik_kop_ops(
    ctx: &HostCtx,
    assets: &Path,
    arch: Arch,
) -> Result<Vec<Box<dyn Op>>, BastionError> {
    let password = redis_password(ctx)?;
    if ctx.vars.get("REDIS_IP").is_none() {
        return Err(BastionError::NoBastion);
    }
    let unit = render_builtin("traefik-kop.service.j2", &ctx.vars, None)?;
    let mut env = Script::new();
    env.line("REDIS_PASS={}", &[&password]);
    Ok(vec![
        Box::new(crate::phases::nodes::binary_op(
            assets,
            arch,
            "traefik-kop",
            "/usr/local/bin/traefik-kop",
        )?),
        Box::new(
            FileOp::from_bytes("/etc/default/traefik-kop", env.into_string())
                .mode(0o600)
                .id("traefik-kop-env"),
        ),
        Box::new(
            UnitOp::new("traefik-kop.service", unit)
                .restart_when(["traefik-kop-bin", "traefik-kop-env"]),
        ),
    ])
}
