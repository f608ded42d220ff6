//! Step "garage": the S3-compatible object store across zones.
//!
//! Stages: the RPC secret is settled once (`RPC_SECRET` in `secrets.env`;
//! without it, the `rpc_secret` a node already runs with, read back; only
//! when no node has one, 32 new random bytes, hex); the first node gets the
//! binary, `/etc/garage.toml` (mode 0600) and `garage.service`; the
//! controller reads its full node id; every other node gets the same with
//! `bootstrap_peers` = that id; finally,
//! from one node, every node missing from the layout (or with another zone,
//! capacity or tag) is assigned, and a layout version is applied only when
//! something changed. On first bootstrap an access key and a bucket are
//! created and the key is saved as GARAGE_KEY / GARAGE_SECRET (a key named
//! `mesh` the cluster already has is read back instead); the same way, the
//! bucket `mesh-backups` and a key `mesh-backups` allowed on it alone
//! (BACKUP_KEY / BACKUP_SECRET) for the fleet's restic repository, and the
//! bucket `mesh-images` and a key `mesh-images` allowed to read and write it
//! alone, not to own it (IMAGES_KEY / IMAGES_SECRET) for image layers, which
//! the controller signs requests with (`crate::s3`).
//!
//! Secrets never ride in a script (a script is visible in the host's process
//! list while it runs): `rpc_secret` reaches a node inside its 0600 config
//! file, on stdin; the access key's id and secret reach garage as a JSON
//! payload on stdin (`garage json-api ... -`), never as arguments; whatever
//! prints them back is run with its output withheld from the log.
//!
//! Addresses: a node advertises its overlay IP (`rpc_public_addr`), which
//! every node reaches. Hosts behind the same NAT talk over their LAN instead
//! where garage lets mesh choose per pair: a joiner bootstraps from the first
//! node's LAN address when both sit behind the same NAT. Garage advertises one
//! address per node, so a node advertises its LAN address only when the whole
//! cluster sits behind its NAT.

use super::{AssetError, Slot};
use crate::inventory::Host;
use crate::ops::{FileOp, Op, OpCtx, OpError, OpFailure, UnitOp};
use crate::phases::{
    converge_ops, on_each_host, ArchError, CheckError, ClusterOutcome, ClusterStep, HostCtx, Step,
    StepOutcome, TaskFailed,
};
use crate::quote::{Cmd, Script};
use crate::s3::IMAGES_BUCKET;
use crate::secrets::{random_hex, Secrets, SecretsError};
use crate::ssh::{BoxFut, Input, Output};
use crate::template::{render_builtin, TemplateError};
use minijinja::Value;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

pub const SECRET_NAME: &str = "RPC_SECRET";
const BIN: &str = "/usr/local/bin/garage";
const CONFIG: &str = "/etc/garage.toml";
/// Capacity a node gets unless its vars set GARAGE_CAPACITY.
pub const DEFAULT_CAPACITY: &str = "10G";
/// Bucket created on first bootstrap unless vars set GARAGE_BUCKET.
pub const DEFAULT_BUCKET: &str = "mesh";

/// Why a garage stage failed (for the cluster, or for one host).
#[derive(Debug, thiserror::Error)]
pub enum GarageError {
    /// A command on a node failed (its message names it).
    #[error(transparent)]
    Remote(#[from] OpError),
    #[error("garage is not installed on {host} yet")]
    NotInstalled { host: String },
    #[error("`garage node id` failed on {host}: {tail}")]
    NodeIdFailed { host: String, tail: String },
    #[error("no node id in `garage node id` output on {host}")]
    NoNodeId { host: String },
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Task(#[from] TaskFailed),
    #[error(
        "{SECRET_NAME} is not in {} and {CONFIG} could not be read on {}; a new secret would split a running cluster. Fix: make the host reachable, or put the cluster's rpc_secret in {} as {SECRET_NAME}",
        .secrets_path.display(),
        .unreadable.iter().map(|(host, e)| format!("{host}: {e}")).collect::<Vec<_>>().join("; "),
        .secrets_path.display()
    )]
    SecretUnreadable {
        secrets_path: PathBuf,
        /// (host, why its config could not be read)
        unreadable: Vec<(String, OpError)>,
    },
    #[error("random secret: {0}")]
    RandomSecret(std::io::Error),
    #[error("garage bootstraps from the first node {first}, which is not in this run (failed, or left out by --limit). Fix: include it")]
    FirstNotInRun { first: String },
    #[error("no RPC secret (its stage did not run)")]
    NoRpcSecret,
    #[error("the first node's id is unknown")]
    NoFirstId,
    #[error("no OVERLAY_IP")]
    NoOverlayIp,
    #[error("no zone: garage replicates across zones. Fix: set `zone:` for this host")]
    NoZone,
    #[error(transparent)]
    Capacity(#[from] CapacityError),
    #[error("no host left to run the layout from")]
    NoAdminHost,
    #[error("garage on {host} did not join the cluster within 30 s")]
    NotJoined { host: String },
    #[error(
        "the access key GARAGE_KEY in {} is not in the cluster and cannot be imported (a deleted key id stays reserved). Fix: remove GARAGE_KEY and GARAGE_SECRET from it; mesh then creates a new key",
        .secrets_path.display()
    )]
    KeyNotImportable { secrets_path: PathBuf },
    #[error("`garage key create` printed no Key ID / Secret key")]
    NoCreatedKey,
    #[error("`garage json-api ListKeys` printed no JSON")]
    NoKeyList,
    #[error(
        "the cluster has {count} access keys named \"{name}\" and secrets.env names none of them. Fix: put the one in use in secrets.env as {id_var} and {secret_var} (`garage key info --show-secret <id>` on a node)"
    )]
    AmbiguousKeys {
        count: usize,
        name: &'static str,
        id_var: &'static str,
        secret_var: &'static str,
    },
    #[error("`garage json-api GetBucketInfo` printed no id for {bucket}")]
    NoBucketId { bucket: String },
    #[error(transparent)]
    Arch(#[from] ArchError),
    #[error(transparent)]
    Asset(#[from] AssetError),
    #[error(transparent)]
    Template(#[from] TemplateError),
}

/// GARAGE_CAPACITY is not a size garage reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    #[error("GARAGE_CAPACITY {text:?} is not a size. Fix: write e.g. 100G")]
    NotASize { text: String },
    #[error("GARAGE_CAPACITY {text:?}: unknown unit. Fix: use B, KB, MB, GB, TB")]
    UnknownUnit { text: String },
}

/// Shared by the garage stages.
pub struct GaragePlan {
    pub first: Host,
    /// Every host of the inventory: the cluster, whatever `--limit` selects.
    pub cluster: Vec<Host>,
    pub assets: PathBuf,
    pub secrets_path: PathBuf,
    pub dry_run: bool,
    pub replication_factor: usize,
    rpc_secret: Slot<String>,
    /// `<id>@<addr>:3901` of the first node.
    first_id: Slot<String>,
}

impl GaragePlan {
    pub fn new(
        first: Host,
        cluster: Vec<Host>,
        assets: PathBuf,
        secrets_path: PathBuf,
        dry_run: bool,
        replication_factor: usize,
    ) -> Arc<Self> {
        Arc::new(GaragePlan {
            first,
            cluster,
            assets,
            secrets_path,
            dry_run,
            replication_factor,
            rpc_secret: Slot::new(),
            first_id: Slot::new(),
        })
    }
}

const RPC_PORT: u16 = 3901;

/// A host's LAN address: its SSH `address` when that is an IP.
fn lan_ip(host: &Host) -> Option<IpAddr> {
    host.address.parse().ok()
}

/// Both hosts sit behind one NAT: both `behind_nat`, sharing a `public_ip`
/// or `public_dns`, and each reachable on the LAN by an IP `address`.
pub fn same_nat(a: &Host, b: &Host) -> bool {
    let same_ip = a.public_ip.is_some() && a.public_ip == b.public_ip;
    let same_dns = a.public_dns.is_some() && a.public_dns == b.public_dns;
    a.behind_nat
        && b.behind_nat
        && (same_ip || same_dns)
        && lan_ip(a).is_some()
        && lan_ip(b).is_some()
}

/// What `host` advertises: its LAN address when every other node of the
/// cluster is behind the same NAT, else its overlay IP.
pub fn rpc_public_addr(host: &Host, cluster: &[Host], overlay_ip: &str) -> String {
    let mut others = cluster.iter().filter(|h| h.name != host.name).peekable();
    let all_behind_its_nat = others.peek().is_some() && others.all(|o| same_nat(host, o));
    match lan_ip(host) {
        Some(ip) if all_behind_its_nat => SocketAddr::new(ip, RPC_PORT).to_string(),
        _ => format!("{overlay_ip}:{RPC_PORT}"),
    }
}

/// `host`'s bootstrap peer: the first node's full id (`<id>@<addr>`) as the
/// first node reports it, or at its LAN address when both ends sit behind
/// the same NAT.
pub fn bootstrap_peer(first_id: &str, first: &Host, host: &Host) -> String {
    match (first_id.split_once('@'), lan_ip(first)) {
        (Some((id, _)), Some(ip)) if same_nat(first, host) => {
            format!("{id}@{}", SocketAddr::new(ip, RPC_PORT))
        }
        _ => first_id.to_string(),
    }
}

fn garage(args: &[&str]) -> Cmd {
    Cmd::new(BIN).args(["-c", CONFIG]).args(args)
}

/// `garage node id -q`, waiting for a starting daemon.
fn node_id_script() -> Script {
    let mut s = Script::new();
    s.line("[ -x {} ] && [ -f {} ] || exit 3", &[BIN, CONFIG]);
    s.raw("for i in $(seq 1 60); do");
    s.cmd(garage(&["node", "id", "-q"]));
    s.raw("[ $? -eq 0 ] && exit 0; sleep 0.5; done; exit 1");
    s
}

async fn node_id(ctx: &HostCtx) -> Result<String, GarageError> {
    let out = ctx
        .op_ctx()
        .run("garage node id", node_id_script().as_str(), Input::None)
        .await?;
    match out.code {
        Some(0) => {}
        Some(3) => {
            return Err(GarageError::NotInstalled {
                host: ctx.host.name.clone(),
            })
        }
        _ => {
            return Err(GarageError::NodeIdFailed {
                host: ctx.host.name.clone(),
                tail: ctx.log.redact(&out.tail(3)),
            })
        }
    }
    out.stdout_str()
        .lines()
        .map(str::trim)
        .find(|l| is_node_id(l))
        .map(str::to_string)
        .ok_or_else(|| GarageError::NoNodeId {
            host: ctx.host.name.clone(),
        })
}

/// `<64 hex digits>@<address>`, as `garage node id -q` prints it: anything
/// else (short, garbage, multi-byte) is not an id.
fn is_node_id(line: &str) -> bool {
    line.split_once('@').is_some_and(|(key, addr)| {
        key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()) && !addr.is_empty()
    })
}

/// The top-level `rpc_secret` of a garage.toml, when it is a valid one (32
/// bytes, hex).
fn config_rpc_secret(text: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            // Tables start: rpc_secret is a top-level key.
            break;
        }
        let Some(rest) = line.strip_prefix("rpc_secret") else {
            continue;
        };
        let Some(value) = rest.trim_start().strip_prefix('=') else {
            continue;
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))?;
        return (value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| value.to_string());
    }
    None
}

/// The `rpc_secret` `host` is configured with, if any; the file's content is
/// never logged.
async fn configured_rpc_secret(host: &HostCtx) -> Result<Option<String>, OpError> {
    let mut s = Script::new();
    s.line("[ -e {} ] || exit 0", &[CONFIG]);
    s.line("cat {}", &[CONFIG]);
    let out = host
        .op_ctx()
        .run_secret(
            &format!("read rpc_secret from {CONFIG}"),
            s.as_str(),
            Input::None,
        )
        .await?;
    Ok(config_rpc_secret(&out.stdout_str()))
}

/// Cluster stage: settle the one RPC secret of the cluster.
pub struct GarageSecret(pub Arc<GaragePlan>);

impl GarageSecret {
    /// `RPC_SECRET` from secrets.env; else the one a node runs with (the
    /// first node's, else the first other node's that has one) read back and
    /// stored; only when no node has one, a new one. Also says where it came
    /// from when that was not secrets.env.
    async fn settle(
        &self,
        hosts: &[Arc<HostCtx>],
    ) -> Result<(String, Option<String>), GarageError> {
        let mut secrets = Secrets::load(&self.0.secrets_path)?;
        if let Some(s) = secrets.get(SECRET_NAME) {
            return Ok((s.to_string(), None));
        }
        let mut order = hosts.to_vec();
        // Stable: the first node, then the others in inventory order.
        order.sort_by_key(|h| h.host.name != self.0.first.name);
        let read = on_each_host(&order, |h| async move { configured_rpc_secret(&h).await }).await?;
        let mut unreadable = Vec::new();
        let mut found = None;
        for (h, result) in read {
            match result {
                Ok(Some(secret)) => {
                    found = Some((secret, h.host.name.clone()));
                    break;
                }
                Ok(None) => {}
                Err(e) => unreadable.push((h.host.name.clone(), e)),
            }
        }
        let (secret, message) = match found {
            Some((secret, from)) => {
                let message = format!(
                    "{SECRET_NAME} read back from {CONFIG} on {from} (it was not in {})",
                    self.0.secrets_path.display()
                );
                (secret, message)
            }
            None if !unreadable.is_empty() => {
                return Err(GarageError::SecretUnreadable {
                    secrets_path: self.0.secrets_path.clone(),
                    unreadable,
                })
            }
            None => {
                let new = random_hex(32).map_err(GarageError::RandomSecret)?;
                let message = if self.0.dry_run {
                    format!("would make a new {SECRET_NAME} (no node has one yet)")
                } else {
                    format!(
                        "new {SECRET_NAME} (no node has one yet), saved in {}",
                        self.0.secrets_path.display()
                    )
                };
                (new, message)
            }
        };
        if !self.0.dry_run {
            secrets.set(SECRET_NAME, &secret)?;
        }
        Ok((secret, Some(message)))
    }
}

impl ClusterStep for GarageSecret {
    fn name(&self) -> &'static str {
        "garage"
    }

    fn run<'a>(&'a self, hosts: &'a [Arc<HostCtx>]) -> BoxFut<'a, ClusterOutcome> {
        Box::pin(async move {
            match self.settle(hosts).await {
                Ok((secret, message)) => {
                    self.0.rpc_secret.set(secret);
                    ClusterOutcome {
                        message,
                        ..Default::default()
                    }
                }
                Err(e) => ClusterOutcome::failed(e),
            }
        })
    }
}

/// Cluster stage: read the first node's full node id for `bootstrap_peers`.
pub struct GarageFirstId(pub Arc<GaragePlan>);

impl ClusterStep for GarageFirstId {
    fn name(&self) -> &'static str {
        "garage"
    }

    fn run<'a>(&'a self, hosts: &'a [Arc<HostCtx>]) -> BoxFut<'a, ClusterOutcome> {
        Box::pin(async move {
            let Some(first) = hosts.iter().find(|h| h.host.name == self.0.first.name) else {
                return ClusterOutcome::failed(GarageError::FirstNotInRun {
                    first: self.0.first.name.clone(),
                });
            };
            match node_id(first).await {
                Ok(id) => {
                    let message = format!("first node {id}");
                    self.0.first_id.set(id);
                    ClusterOutcome {
                        message: Some(message),
                        ..Default::default()
                    }
                }
                // A fresh cluster has no id yet; the dry run only shows the rest.
                Err(_) if self.0.dry_run => {
                    self.0.first_id.set("<first node id>".into());
                    ClusterOutcome::default()
                }
                Err(e) => ClusterOutcome::failed(e),
            }
        })
    }
}

/// Host step "garage": the first node (`first: true`) or the others.
pub struct Garage {
    pub plan: Arc<GaragePlan>,
    pub first: bool,
}

impl Garage {
    async fn ops(&self, ctx: &HostCtx) -> Result<Vec<Box<dyn Op>>, GarageError> {
        let binary = super::binary_op(&self.plan.assets, ctx.arch().await?, "garage", BIN)?;
        let secret = self.plan.rpc_secret.get().ok_or(GarageError::NoRpcSecret)?;
        let peers: Vec<String> = if self.first {
            Vec::new()
        } else {
            let first_id = self.plan.first_id.get().ok_or(GarageError::NoFirstId)?;
            vec![bootstrap_peer(&first_id, &self.plan.first, &ctx.host)]
        };
        let overlay_ip = ctx.vars.get("OVERLAY_IP").ok_or(GarageError::NoOverlayIp)?;
        let mut extra = BTreeMap::new();
        extra.insert("rpc_secret".to_string(), Value::from(secret));
        extra.insert(
            "rpc_public_addr".to_string(),
            Value::from(rpc_public_addr(&ctx.host, &self.plan.cluster, overlay_ip)),
        );
        extra.insert("bootstrap_peers".to_string(), Value::from(peers));
        extra.insert(
            "replication_factor".to_string(),
            Value::from(self.plan.replication_factor),
        );
        let config = render_builtin("garage.toml.j2", &ctx.vars, Some(&Value::from(extra)))?;
        let unit = render_builtin("garage.service.j2", &ctx.vars, None)?;
        Ok(vec![
            Box::new(binary),
            Box::new(
                FileOp::from_bytes(CONFIG, config)
                    .mode(0o600)
                    .id("garage-conf"),
            ),
            Box::new(
                UnitOp::new("garage.service", unit).restart_when(["garage-bin", "garage-conf"]),
            ),
        ])
    }
}

impl Step for Garage {
    fn name(&self) -> &'static str {
        "garage"
    }

    fn wants(&self, ctx: &HostCtx) -> bool {
        (ctx.host.name == self.plan.first.name) == self.first
    }

    fn check(&self, ctx: &HostCtx) -> Result<(), CheckError> {
        if ctx.host.zone.is_none() {
            return Err(GarageError::NoZone.into());
        }
        capacity_bytes(&capacity_of(ctx))?;
        super::check_asset(&self.plan.assets, ctx.host.arch, "garage")?;
        Ok(())
    }

    fn run<'a>(&'a self, ctx: &'a HostCtx) -> BoxFut<'a, Result<StepOutcome, OpFailure>> {
        Box::pin(async move {
            let ops = self.ops(ctx).await;
            converge_ops(ctx, "garage", ops).await
        })
    }
}

fn capacity_of(ctx: &HostCtx) -> String {
    ctx.vars
        .get("GARAGE_CAPACITY")
        .unwrap_or(DEFAULT_CAPACITY)
        .to_string()
}

/// `10G`, `500GB`, `1T`, `1000000B` → bytes (decimal units, as garage reads them).
pub fn capacity_bytes(text: &str) -> Result<f64, CapacityError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| CapacityError::NotASize {
        text: text.to_string(),
    })?;
    let mult = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "K" | "KB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "T" | "TB" => 1e12,
        "P" | "PB" => 1e15,
        "KIB" => 1024.0,
        "MIB" => 1024f64.powi(2),
        "GIB" => 1024f64.powi(3),
        "TIB" => 1024f64.powi(4),
        "PIB" => 1024f64.powi(5),
        _ => {
            return Err(CapacityError::UnknownUnit {
                text: text.to_string(),
            })
        }
    };
    Ok(n * mult)
}

/// A role in the current layout, from `garage layout show`.
#[derive(Debug, Clone, PartialEq)]
pub struct Role {
    pub id_prefix: String,
    pub tags: String,
    pub zone: String,
    pub capacity: f64,
}

/// Current roles and version from `garage layout show`.
pub fn parse_layout(text: &str) -> (Vec<Role>, u64) {
    let mut roles = Vec::new();
    let mut version = 0;
    let mut in_current = false;
    for line in text.lines() {
        if line.starts_with("====") {
            in_current = line.contains("CURRENT CLUSTER LAYOUT");
            continue;
        }
        if let Some(v) = line.strip_prefix("Current cluster layout version:") {
            version = v.trim().parse().unwrap_or(0);
            continue;
        }
        if !in_current {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        // ID  [tags]  zone  capacity unit  ...
        if f.len() >= 5 && f[0].len() == 16 && f[0].chars().all(|c| c.is_ascii_hexdigit()) {
            let capacity = capacity_bytes(&format!("{}{}", f[3], f[4])).unwrap_or(0.0);
            roles.push(Role {
                id_prefix: f[0].to_string(),
                tags: f[1].trim_matches(|c| c == '[' || c == ']').to_string(),
                zone: f[2].to_string(),
                capacity,
            });
        }
    }
    (roles, version)
}

/// `Key ID:` and `Secret key:` from `garage key create`.
pub fn parse_key(text: &str) -> Option<(String, String)> {
    let find = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|v| v.trim().to_string())
    };
    Some((find("Key ID:")?, find("Secret key:")?))
}

/// Cluster stage: layout assignments, once, and the first key + bucket.
pub struct GarageLayout(pub Arc<GaragePlan>);

impl GarageLayout {
    async fn layout(
        &self,
        hosts: &[Arc<HostCtx>],
        out: &mut ClusterOutcome,
    ) -> Result<(), GarageError> {
        let admin = hosts
            .iter()
            .find(|h| h.host.name == self.0.first.name)
            .or(hosts.first())
            .ok_or(GarageError::NoAdminHost)?;
        let ctx = admin.op_ctx();
        // Node ids, read by the controller from every host at once.
        let mut ids = Vec::new();
        for (h, id) in on_each_host(hosts, |h| async move { node_id(&h).await }).await? {
            match id {
                Ok(id) => ids.push((h, id)),
                Err(e) if self.0.dry_run => {
                    out.message = Some(format!("would bootstrap the layout ({e})"));
                    return Ok(());
                }
                Err(e) => out.host_failures.push((h.host.name.clone(), e.to_string())),
            }
        }
        // Wait until the admin node sees every node.
        let mut status = String::new();
        for _ in 0..60 {
            let s = ctx
                .run("garage status", &garage(&["status"]).build(), Input::None)
                .await?;
            status = s.stdout_str();
            if ids.iter().all(|(_, id)| status.contains(&id[..16])) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        let mut connected = Vec::new();
        for (h, id) in ids {
            if status.contains(&id[..16]) {
                connected.push((h, id));
            } else {
                let e = GarageError::NotJoined {
                    host: h.host.name.clone(),
                };
                out.host_failures.push((h.host.name.clone(), e.to_string()));
            }
        }
        let show = ctx
            .run_ok(
                "garage layout show",
                &garage(&["layout", "show"]).build(),
                Input::None,
            )
            .await?;
        let (roles, version) = parse_layout(&show.stdout_str());
        let mut assign = Script::new();
        let mut assigned = Vec::new();
        for (h, id) in &connected {
            let zone = h.host.zone.clone().unwrap_or_default();
            let capacity = capacity_of(h);
            let want = capacity_bytes(&capacity)?;
            let current = roles.iter().find(|r| id.starts_with(&r.id_prefix));
            let same = current.is_some_and(|r| {
                r.zone == zone && r.tags == h.host.name && (r.capacity - want).abs() <= want * 0.01
            });
            if !same {
                assign.cmd(garage(&[
                    "layout",
                    "assign",
                    &id[..16],
                    "-z",
                    &zone,
                    "-c",
                    &capacity,
                    "-t",
                    &h.host.name,
                ]));
                assigned.push(h.host.name.clone());
            }
        }
        if assigned.is_empty() {
            out.message = Some(format!("layout unchanged (version {version})"));
        } else if self.0.dry_run {
            out.message = Some(format!(
                "would assign {} and apply layout version {}",
                assigned.join(", "),
                version + 1
            ));
        } else {
            assign.cmd(garage(&[
                "layout",
                "apply",
                "--version",
                &(version + 1).to_string(),
            ]));
            ctx.run_ok("garage layout", assign.as_str(), Input::None)
                .await?;
            out.changed = true;
            out.message = Some(format!(
                "assigned {}; applied layout version {}",
                assigned.join(", "),
                version + 1
            ));
        }
        if !self.0.dry_run {
            let bucket = admin
                .vars
                .get("GARAGE_BUCKET")
                .unwrap_or(DEFAULT_BUCKET)
                .to_string();
            self.key_and_bucket(&ctx, &KeySpec::MAIN, &bucket, out)
                .await?;
            // The backups' own bucket and a key that may use only it.
            self.key_and_bucket(&ctx, &KeySpec::BACKUP, BACKUP_BUCKET, out)
                .await?;
            // The same for image layers.
            self.key_and_bucket(&ctx, &KeySpec::IMAGES, IMAGES_BUCKET, out)
                .await?;
        }
        Ok(())
    }

    /// On first bootstrap: an access key (saved to secrets.env) and a bucket,
    /// the only one it is allowed on (as owner when `spec.owner`).
    async fn key_and_bucket(
        &self,
        ctx: &OpCtx<'_>,
        spec: &KeySpec,
        bucket: &str,
        out: &mut ClusterOutcome,
    ) -> Result<(), GarageError> {
        let mut secrets = Secrets::load(&self.0.secrets_path)?;
        let mut key_is_new = false;
        let stored = match (secrets.get(spec.id_var), secrets.get(spec.secret_var)) {
            (Some(id), Some(secret)) => Some((id.to_string(), secret.to_string())),
            _ => None,
        };
        let key_id = match stored {
            Some((id, secret)) => {
                // A rebuilt cluster lacks the saved key: import it, so services keep their credentials.
                let (script, input) = import_if_missing(&id, &secret, spec.name);
                let title = "garage key (import if missing)";
                let imported = ctx.run_withheld(title, script.as_str(), input).await?;
                if !imported.success() {
                    return Err(GarageError::KeyNotImportable {
                        secrets_path: self.0.secrets_path.clone(),
                    });
                }
                if imported.stdout_str().contains(IMPORTED) {
                    key_is_new = true;
                }
                id
            }
            None => {
                let (id, secret) = match read_back_key(ctx, secrets.get(spec.id_var), spec).await? {
                    // The cluster's key, lost from secrets.env: the same credentials again.
                    Some(key) => key,
                    None => {
                        let created = ctx
                            .run_secret(
                                "garage key create",
                                &garage(&["key", "create", spec.name]).build(),
                                Input::None,
                            )
                            .await?;
                        key_is_new = true;
                        parse_key(&created.stdout_str()).ok_or(GarageError::NoCreatedKey)?
                    }
                };
                secrets.set(spec.id_var, &id)?;
                secrets.set(spec.secret_var, &secret)?;
                id
            }
        };
        // A new bucket, or a key new to the cluster, gets the key's permissions.
        out.changed |= key_is_new;
        let mut s = Script::new();
        s.raw("set -e");
        let info = garage(&["bucket", "info", bucket]);
        s.raw(&format!("if ! {info} >/dev/null 2>&1; then"));
        s.cmd(garage(&["bucket", "create", bucket]));
        s.raw(&format!("echo {BUCKET_CREATED}"));
        s.raw("fi");
        let made = ctx.run_ok("garage bucket", s.as_str(), Input::None).await?;
        let created = made.stdout_str().contains(BUCKET_CREATED);
        out.changed |= created;
        if created || key_is_new {
            allow_bucket(ctx, bucket, &key_id, spec.owner).await?;
        }
        Ok(())
    }
}

/// An access key mesh creates: its name in garage, where secrets.env keeps
/// it, and whether it owns its bucket (besides reading and writing it).
pub(crate) struct KeySpec {
    pub name: &'static str,
    pub id_var: &'static str,
    pub secret_var: &'static str,
    pub owner: bool,
}

impl KeySpec {
    /// The services' key (GARAGE_KEY, on the bucket GARAGE_BUCKET).
    const MAIN: KeySpec = KeySpec {
        name: "mesh",
        id_var: "GARAGE_KEY",
        secret_var: "GARAGE_SECRET",
        owner: true,
    };
    /// restic's key, allowed on [`BACKUP_BUCKET`] only.
    pub(crate) const BACKUP: KeySpec = KeySpec {
        name: "mesh-backups",
        id_var: "BACKUP_KEY",
        secret_var: "BACKUP_SECRET",
        owner: true,
    };
    /// The image layers' key, allowed to read and write [`IMAGES_BUCKET`]
    /// only, not to own it (no bucket settings, no website, no other keys).
    pub(crate) const IMAGES: KeySpec = KeySpec {
        name: "mesh-images",
        id_var: "IMAGES_KEY",
        secret_var: "IMAGES_SECRET",
        owner: false,
    };
}

/// The bucket that holds the fleet's restic repository.
pub(crate) const BACKUP_BUCKET: &str = "mesh-backups";
const IMPORTED: &str = "mesh-key-imported";
const BUCKET_CREATED: &str = "mesh-bucket-created";

/// A JSON payload for `garage json-api ENDPOINT -`, as stdin.
fn payload(value: serde_json::Value) -> Input {
    Input::Bytes(Arc::new(value.to_string().into_bytes()))
}

/// The JSON value `garage json-api` printed (it prints nothing else on stdout).
fn json_output(out: &Output) -> Option<serde_json::Value> {
    let text = out.stdout_str();
    let start = text.find(['{', '['])?;
    serde_json::from_str(&text[start..]).ok()
}

/// Import the access key when the cluster lacks it. Both payloads come on
/// stdin, the key lookup's first (exactly its bytes), the import's after it;
/// prints [`IMPORTED`] when it imported.
fn import_if_missing(id: &str, secret: &str, name: &str) -> (Script, Input) {
    let lookup = serde_json::json!({ "id": id }).to_string().into_bytes();
    let import = serde_json::json!({
        "accessKeyId": id,
        "secretAccessKey": secret,
        "name": name,
    });
    let mut s = Script::new();
    s.raw("set -e");
    s.raw(&format!(
        "if head -c {} | {} >/dev/null 2>&1; then cat >/dev/null; else",
        lookup.len(),
        garage(&["json-api", "GetKeyInfo", "-"])
    ));
    s.cmd(garage(&["json-api", "ImportKey", "-"]));
    s.raw(&format!("echo {IMPORTED}; fi"));
    let input = Input::Chain(vec![Input::Bytes(Arc::new(lookup)), payload(import)]);
    (s, input)
}

/// The cluster's own access key, when secrets.env lost it: the key with id
/// `hint` (GARAGE_KEY without its secret), else the one key named `mesh`.
async fn read_back_key(
    ctx: &OpCtx<'_>,
    hint: Option<&str>,
    spec: &KeySpec,
) -> Result<Option<(String, String)>, GarageError> {
    let id = match hint {
        Some(id) => id.to_string(),
        None => {
            let list = ctx
                .run_secret(
                    "garage keys",
                    &garage(&["json-api", "ListKeys"]).build(),
                    Input::None,
                )
                .await?;
            let keys = json_output(&list).ok_or(GarageError::NoKeyList)?;
            let mine: Vec<&str> = keys
                .as_array()
                .into_iter()
                .flatten()
                .filter(|k| k["name"] == spec.name && k["expired"] != true)
                .filter_map(|k| k["id"].as_str())
                .collect();
            match mine[..] {
                [] => return Ok(None),
                [id] => id.to_string(),
                _ => {
                    return Err(GarageError::AmbiguousKeys {
                        count: mine.len(),
                        name: spec.name,
                        id_var: spec.id_var,
                        secret_var: spec.secret_var,
                    })
                }
            }
        }
    };
    let info = ctx
        .run_withheld(
            "garage key (read back)",
            &garage(&["json-api", "GetKeyInfo", "-"]).build(),
            payload(serde_json::json!({ "id": id, "showSecretKey": true })),
        )
        .await?;
    if !info.success() {
        // No such key (any more): a new one is made.
        return Ok(None);
    }
    let info = json_output(&info).unwrap_or_default();
    match (
        info["accessKeyId"].as_str(),
        info["secretAccessKey"].as_str(),
    ) {
        (Some(id), Some(secret)) => Ok(Some((id.to_string(), secret.to_string()))),
        _ => Ok(None),
    }
}

/// Read and write rights on `bucket` for the key `key_id` (on stdin), and
/// owner rights when `owner`.
async fn allow_bucket(
    ctx: &OpCtx<'_>,
    bucket: &str,
    key_id: &str,
    owner: bool,
) -> Result<(), GarageError> {
    let lookup = serde_json::json!({ "globalAlias": bucket }).to_string();
    let info = ctx
        .run_secret(
            "garage bucket id",
            &garage(&["json-api", "GetBucketInfo", &lookup]).build(),
            Input::None,
        )
        .await?;
    let bucket_id = json_output(&info)
        .and_then(|v| v["id"].as_str().map(str::to_string))
        .ok_or_else(|| GarageError::NoBucketId {
            bucket: bucket.to_string(),
        })?;
    ctx.run_secret(
        "garage bucket allow",
        &garage(&["json-api", "AllowBucketKey", "-"]).build(),
        payload(serde_json::json!({
            "bucketId": bucket_id,
            "accessKeyId": key_id,
            "permissions": { "read": true, "write": true, "owner": owner },
        })),
    )
    .await?;
    Ok(())
}

impl ClusterStep for GarageLayout {
    fn name(&self) -> &'static str {
        "garage"
    }

    fn run<'a>(&'a self, hosts: &'a [Arc<HostCtx>]) -> BoxFut<'a, ClusterOutcome> {
        Box::pin(async move {
            let mut out = ClusterOutcome::default();
            if let Err(e) = self.layout(hosts, &mut out).await {
                out.abort = Some(e.to_string());
            }
            out
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_whole_node_ids_are_taken_from_remote_output() {
        let id = format!("{}@10.0.0.1:3901", "ab".repeat(32));
        assert!(super::is_node_id(&id));
        for bad in [
            "",
            "@",
            "abc@10.0.0.1:3901",
            &format!("{}@", "ab".repeat(32)),
            &format!("{}é@x", "a".repeat(63)),
            "Error: ½@¾",
            &"€".repeat(40),
        ] {
            assert!(!super::is_node_id(bad), "{bad}");
        }
    }

    use super::*;

    const SHOW: &str = "==== CURRENT CLUSTER LAYOUT ====
ID                Tags    Zone  Capacity   Usable capacity
5a8d56372159a158  [lab-1]  z1    9.3 GiB  9.3 GiB (100.0%)
77aa56372159a158  [lab-2]  z2    953.7 MiB  953.7 MiB (100.0%)

Zone redundancy: maximum

Current cluster layout version: 4
";

    fn cluster(hosts: &str) -> Vec<Host> {
        let text = format!("groups:\n  all:\n    hosts:\n{hosts}");
        crate::inventory::Inventory::parse(std::path::Path::new("inv.yml"), &text)
            .unwrap()
            .hosts
    }

    const HOME_A: &str = "      h1: { address: 192.168.1.20, zone: a, behind_nat: true, public_ip: 198.51.100.99 }\n";
    const HOME_B: &str = "      h2: { address: 192.168.1.21, zone: b, behind_nat: true, public_ip: 198.51.100.99 }\n";
    const DC: &str = "      dc: { address: 203.0.113.10, zone: c }\n";
    const OTHER_HOME: &str =
        "      h3: { address: 192.168.1.22, zone: d, behind_nat: true, public_ip: 198.51.100.7 }\n";

    #[test]
    fn a_joiner_behind_the_first_nodes_nat_bootstraps_over_the_lan() {
        let c = cluster(&format!("{HOME_A}{HOME_B}{DC}{OTHER_HOME}"));
        let id = "5a8d56@10.1.2.3:3901";
        assert_eq!(bootstrap_peer(id, &c[0], &c[1]), "5a8d56@192.168.1.20:3901");
        assert_eq!(
            bootstrap_peer(id, &c[0], &c[2]),
            id,
            "data centre host: overlay"
        );
        assert_eq!(bootstrap_peer(id, &c[0], &c[3]), id, "another NAT: overlay");
    }

    #[test]
    fn nodes_advertise_the_lan_only_when_the_whole_cluster_shares_their_nat() {
        let mixed = cluster(&format!("{HOME_A}{HOME_B}{DC}"));
        for h in &mixed {
            assert_eq!(rpc_public_addr(h, &mixed, "10.9.9.9"), "10.9.9.9:3901");
        }
        let home = cluster(&format!("{HOME_A}{HOME_B}"));
        assert_eq!(
            rpc_public_addr(&home[1], &home, "10.9.9.9"),
            "192.168.1.21:3901"
        );
        let alone = cluster(HOME_A);
        assert_eq!(
            rpc_public_addr(&alone[0], &alone, "10.9.9.9"),
            "10.9.9.9:3901"
        );
    }

    #[test]
    fn same_nat_needs_both_behind_it_and_a_shared_public_address() {
        let dns = cluster(
            "      a: { address: 10.0.5.1, zone: a, behind_nat: true, public_dns: home.example.org }\n      b: { address: 10.0.5.2, zone: b, behind_nat: true, public_dns: home.example.org }\n      c: { address: lan-c.example, zone: c, behind_nat: true, public_dns: home.example.org }\n",
        );
        assert!(same_nat(&dns[0], &dns[1]));
        assert!(!same_nat(&dns[0], &dns[2]), "no LAN IP to use");
        let c = cluster(&format!("{HOME_A}{DC}{OTHER_HOME}"));
        assert!(!same_nat(&c[0], &c[1]));
        assert!(!same_nat(&c[0], &c[2]));
    }

    #[test]
    fn parses_roles_and_version() {
        let (roles, version) = parse_layout(SHOW);
        assert_eq!(version, 4);
        assert_eq!(roles.len(), 2);
        assert_eq!(roles[0].tags, "lab-1");
        assert_eq!(roles[1].zone, "z2");
        assert!((roles[0].capacity - 10e9).abs() < 10e9 * 0.01);
        assert!((roles[1].capacity - 1e9).abs() < 1e9 * 0.01);
    }

    #[test]
    fn an_empty_layout_has_no_roles() {
        let (roles, version) = parse_layout(
            "==== CURRENT CLUSTER LAYOUT ====\nNo nodes currently have a role in the cluster.\n\nCurrent cluster layout version: 0\n",
        );
        assert!(roles.is_empty());
        assert_eq!(version, 0);
    }

    #[test]
    fn staged_changes_are_not_current_roles() {
        let text = format!("{SHOW}\n==== STAGED ROLE CHANGES ====\nID                Tags  Zone  Capacity\n99aa56372159a158  [x]  z3    1 GiB\n");
        assert_eq!(parse_layout(&text).0.len(), 2);
    }

    #[test]
    fn capacities_in_decimal_and_binary_units() {
        assert_eq!(capacity_bytes("10G").unwrap(), 10e9);
        assert_eq!(capacity_bytes("500GB").unwrap(), 500e9);
        assert_eq!(capacity_bytes("1.5 TiB").unwrap(), 1.5 * 1024f64.powi(4));
        assert!(capacity_bytes("lots").is_err());
        assert!(capacity_bytes("10X").is_err());
    }

    #[test]
    fn reads_a_new_key() {
        let text = "==== ACCESS KEY INFORMATION ====\nKey ID:              GKb8f1\nKey name:            mesh\nSecret key:          946e0f\n";
        assert_eq!(parse_key(text), Some(("GKb8f1".into(), "946e0f".into())));
        assert_eq!(parse_key("nothing"), None);
    }

    // ---- secrets over the recording transport ----

    use crate::log::HostLog;
    use crate::phases::{ClusterStep, Step};
    use crate::ssh::recording::{input_bytes, ok, RecordingTransport};
    use crate::template::{Source, VarSet};
    use std::sync::Mutex;

    const RPC: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
    const OTHER_RPC: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    const KEY_ID: &str = "GK31c2f218a2e44f485b94239e";
    const KEY_SECRET: &str = "b892c0665f0ada8a4755dae98baa3b133590e11dae3bcc1f9d769d67f16c3835";

    fn full_id(i: usize) -> String {
        format!("{}@10.0.0.{i}:3901", format!("{i:x}").repeat(64))
    }

    /// Every stdin a host's commands got, in order.
    type Stdins = Arc<Mutex<Vec<Vec<u8>>>>;

    /// What a garage node answers; `config` is its /etc/garage.toml (None:
    /// absent; Err: unreadable), `cluster_key`: the cluster has the key
    /// named mesh.
    struct NodeAnswers {
        config: Result<Option<String>, ()>,
        cluster_key: bool,
    }

    /// A host whose files are all absent and whose garage answers as a
    /// healthy 3-node cluster would; every stdin is recorded too.
    fn garage_node(i: usize, answers: NodeAnswers) -> (Arc<RecordingTransport>, Stdins) {
        let inputs: Stdins = Arc::default();
        let seen = inputs.clone();
        let conn = RecordingTransport::new(move |script, input| {
            seen.lock().unwrap().push(input_bytes(input));
            if script.starts_with(&format!("[ -e {CONFIG} ]")) {
                return match &answers.config {
                    Ok(c) => ok(c.as_deref().unwrap_or("")),
                    Err(()) => Output {
                        code: Some(1),
                        ..Default::default()
                    },
                };
            }
            if script.contains("node id -q") {
                return ok(&format!("{}\n", full_id(i)));
            }
            if script.ends_with(" status") {
                return ok(&(1..=3)
                    .map(|n| format!("{}\n", &full_id(n)[..16]))
                    .collect::<String>());
            }
            if script.contains("layout show") {
                return ok("==== CURRENT CLUSTER LAYOUT ====\nNo nodes currently have a role in the cluster.\n\nCurrent cluster layout version: 0\n");
            }
            if script.contains("ImportKey") {
                return ok(&format!("{IMPORTED}\n"));
            }
            if script.contains("ListKeys") {
                let keys = if answers.cluster_key {
                    format!(r#"[{{"id": "{KEY_ID}", "name": "mesh", "expired": false}}]"#)
                } else {
                    "[]".into()
                };
                return ok(&keys);
            }
            if script.contains("GetKeyInfo") {
                return ok(&format!(
                    r#"{{"accessKeyId": "{KEY_ID}", "name": "mesh", "secretAccessKey": "{KEY_SECRET}"}}"#
                ));
            }
            if script.contains("key create") {
                return ok(&format!("Key ID: {KEY_ID}\nSecret key: {KEY_SECRET}\n"));
            }
            if script.contains("bucket info") {
                return ok(&format!("{BUCKET_CREATED}\n"));
            }
            if script.contains("GetBucketInfo") {
                return ok(r#"{"id": "b0c1", "globalAliases": ["mesh"]}"#);
            }
            let mut out = String::new();
            for line in script.lines() {
                if let Some(n) = line.strip_prefix("echo '@@mesh-op ") {
                    let n = n.trim_end_matches('\'');
                    out.push_str(&format!("@@mesh-op {n}\nstat absent\nrec none\n"));
                }
                if let Some(n) = line.strip_prefix("echo '@@mesh-done ") {
                    out.push_str(&format!("@@mesh-done {}\n", n.trim_end_matches('\'')));
                }
            }
            ok(&out)
        });
        (Arc::new(conn), inputs)
    }

    struct Lab {
        dir: tempfile::TempDir,
        plan: Arc<GaragePlan>,
        ctxs: Vec<Arc<HostCtx>>,
        conns: Vec<Arc<RecordingTransport>>,
        inputs: Vec<Stdins>,
    }

    impl Lab {
        fn secrets(&self) -> Secrets {
            Secrets::load(&self.dir.path().join("secrets.env")).unwrap()
        }
    }

    /// Three garage hosts (the first node first) with `secrets_env` next to
    /// their inventory; host i answers with `answers(i)`.
    fn garage_lab(secrets_env: &str, answers: impl Fn(usize) -> NodeAnswers) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secrets.env"), secrets_env).unwrap();
        std::fs::create_dir_all(dir.path().join("assets/x86_64")).unwrap();
        std::fs::write(dir.path().join("assets/x86_64/garage"), "binary").unwrap();
        let hosts = cluster(
            "      g1: { address: 10.0.0.1, zone: z1, arch: x86_64 }\n      g2: { address: 10.0.0.2, zone: z2, arch: x86_64 }\n      g3: { address: 10.0.0.3, zone: z3, arch: x86_64 }\n",
        );
        let plan = GaragePlan::new(
            hosts[0].clone(),
            hosts.clone(),
            dir.path().join("assets"),
            dir.path().join("secrets.env"),
            false,
            3,
        );
        let (mut ctxs, mut conns, mut inputs) = (Vec::new(), Vec::new(), Vec::new());
        for (i, host) in hosts.iter().enumerate() {
            let (conn, seen) = garage_node(i + 1, answers(i + 1));
            let mut vars = VarSet::new();
            vars.add("OVERLAY_IP", &host.address, Source::Fact);
            vars.add("HOSTNAME", &host.name, Source::Fact);
            ctxs.push(Arc::new(HostCtx::new(
                host.clone(),
                conn.clone(),
                HostLog::discard(),
                vars,
                false,
                false,
            )));
            conns.push(conn);
            inputs.push(seen);
        }
        Lab {
            dir,
            plan,
            ctxs,
            conns,
            inputs,
        }
    }

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Every garage stage, in the nodes phase's order.
    fn run_garage(lab: &Lab) -> Vec<ClusterOutcome> {
        block_on(async {
            let mut outcomes = vec![GarageSecret(lab.plan.clone()).run(&lab.ctxs).await];
            let first = Garage {
                plan: lab.plan.clone(),
                first: true,
            };
            first.run(&lab.ctxs[0]).await.unwrap();
            outcomes.push(GarageFirstId(lab.plan.clone()).run(&lab.ctxs).await);
            let others = Garage {
                plan: lab.plan.clone(),
                first: false,
            };
            for ctx in &lab.ctxs[1..] {
                others.run(ctx).await.unwrap();
            }
            outcomes.push(GarageLayout(lab.plan.clone()).run(&lab.ctxs).await);
            for o in &outcomes {
                assert!(o.abort.is_none() && o.host_failures.is_empty(), "{o:?}");
            }
            outcomes
        })
    }

    fn assert_no_secret_in_a_script(lab: &Lab, secrets: &[&str]) {
        for conn in &lab.conns {
            for script in conn.calls() {
                for secret in secrets {
                    assert!(
                        !script.contains(secret),
                        "a secret in a command line:\n{script}"
                    );
                }
            }
        }
    }

    /// Whether some command got `secret` on its stdin.
    fn on_stdin(lab: &Lab, secret: &str) -> bool {
        lab.inputs.iter().any(|seen| {
            seen.lock()
                .unwrap()
                .iter()
                .any(|b| String::from_utf8_lossy(b).contains(secret))
        })
    }

    fn nodes_without_config(_: usize) -> NodeAnswers {
        NodeAnswers {
            config: Ok(None),
            cluster_key: false,
        }
    }

    #[test]
    fn no_garage_secret_rides_in_a_script_when_the_key_is_imported() {
        let lab = garage_lab(
            &format!("RPC_SECRET={RPC}\nGARAGE_KEY={KEY_ID}\nGARAGE_SECRET={KEY_SECRET}\n"),
            nodes_without_config,
        );
        let outcomes = run_garage(&lab);
        assert!(outcomes[2].changed, "imported key and new bucket");
        assert_no_secret_in_a_script(&lab, &[RPC, KEY_ID, KEY_SECRET]);
        let calls: Vec<String> = lab.conns[0].calls();
        assert!(calls.iter().any(|c| c.contains("ImportKey")), "{calls:?}");
        assert!(
            calls.iter().any(|c| c.contains("AllowBucketKey")),
            "{calls:?}"
        );
        // They travel on stdin instead: the config file, the JSON payloads.
        for secret in [RPC, KEY_ID, KEY_SECRET] {
            assert!(on_stdin(&lab, secret), "{secret} never sent");
        }
        for script in calls.iter().filter(|c| c.contains("json-api")) {
            crate::quote::assert_valid_sh(&{
                let mut s = Script::new();
                s.raw(script);
                s
            });
        }
    }

    #[test]
    fn no_garage_secret_rides_in_a_script_when_the_key_is_created() {
        let lab = garage_lab(&format!("RPC_SECRET={RPC}\n"), nodes_without_config);
        run_garage(&lab);
        assert_no_secret_in_a_script(&lab, &[RPC, KEY_ID, KEY_SECRET]);
        let secrets = lab.secrets();
        assert_eq!(secrets.get("GARAGE_KEY"), Some(KEY_ID));
        assert_eq!(secrets.get("GARAGE_SECRET"), Some(KEY_SECRET));
        assert!(lab.conns[0]
            .calls()
            .iter()
            .any(|c| c.contains("key create")));
    }

    #[test]
    fn a_lost_access_key_is_read_back_from_the_cluster() {
        let lab = garage_lab(&format!("RPC_SECRET={RPC}\n"), |_| NodeAnswers {
            config: Ok(None),
            cluster_key: true,
        });
        run_garage(&lab);
        let calls = lab.conns[0].calls();
        // The services' key is read back; only the backups' key is new.
        assert!(
            !calls.iter().any(|c| c.ends_with("key create mesh")),
            "{calls:?}"
        );
        let secrets = lab.secrets();
        assert_eq!(secrets.get("GARAGE_KEY"), Some(KEY_ID));
        assert_eq!(secrets.get("GARAGE_SECRET"), Some(KEY_SECRET));
        assert_no_secret_in_a_script(&lab, &[RPC, KEY_ID, KEY_SECRET]);
    }

    #[test]
    fn the_images_key_may_read_and_write_its_bucket_alone_but_not_own_it() {
        let lab = garage_lab(&format!("RPC_SECRET={RPC}\n"), nodes_without_config);
        run_garage(&lab);
        let calls = lab.conns[0].calls();
        let stdins = lab.inputs[0].lock().unwrap().clone();
        assert!(calls
            .iter()
            .any(|c| c.ends_with(&format!("key create {}", KeySpec::IMAGES.name))));
        assert!(calls
            .iter()
            .any(|c| c.contains(&format!("bucket create {IMAGES_BUCKET}\n"))));
        // Each bucket's AllowBucketKey follows the lookup of its id.
        let mut bucket = None;
        let mut allowed = BTreeMap::new();
        for (script, stdin) in calls.iter().zip(&stdins) {
            for b in [DEFAULT_BUCKET, BACKUP_BUCKET, IMAGES_BUCKET] {
                if script.contains(&format!("GetBucketInfo '{{\"globalAlias\":\"{b}\"}}'")) {
                    bucket = Some(b);
                }
            }
            if script.contains("AllowBucketKey") {
                let payload: serde_json::Value = serde_json::from_slice(stdin).unwrap();
                allowed.insert(bucket.take().unwrap(), payload["permissions"].clone());
            }
        }
        let rights = |owner| serde_json::json!({ "read": true, "write": true, "owner": owner });
        assert_eq!(allowed.len(), 3, "{allowed:?}");
        assert_eq!(allowed[IMAGES_BUCKET], rights(false));
        assert_eq!(allowed[BACKUP_BUCKET], rights(true));
        assert_eq!(allowed[DEFAULT_BUCKET], rights(true));
        let secrets = lab.secrets();
        assert_eq!(secrets.get("IMAGES_KEY"), Some(KEY_ID));
        assert_eq!(secrets.get("IMAGES_SECRET"), Some(KEY_SECRET));
        assert_eq!(
            crate::s3::images_key(&secrets).map(|k| k.id),
            Some(KEY_ID.to_string())
        );
        assert_no_secret_in_a_script(&lab, &[RPC, KEY_ID, KEY_SECRET]);
    }

    fn config_with(secret: &str) -> String {
        format!("metadata_dir = \"/var/lib/garage/meta\"\nrpc_secret = \"{secret}\"\n\n[admin]\napi_bind_addr = \"[::]:3903\"\n")
    }

    #[test]
    fn without_secrets_env_the_rpc_secret_a_node_runs_with_is_read_back() {
        // The first node has no config yet; of the others, the first that has one wins.
        let lab = garage_lab("", |i| NodeAnswers {
            config: Ok(match i {
                1 => None,
                2 => Some(config_with(RPC)),
                _ => Some(config_with(OTHER_RPC)),
            }),
            cluster_key: true,
        });
        let outcomes = run_garage(&lab);
        assert_eq!(lab.plan.rpc_secret.get().as_deref(), Some(RPC));
        assert_eq!(lab.secrets().get(SECRET_NAME), Some(RPC));
        let message = outcomes[0].message.clone().unwrap();
        assert!(
            message.contains("read back") && message.contains("g2"),
            "{message}"
        );
        assert!(!message.contains(RPC), "{message}");
        assert_no_secret_in_a_script(&lab, &[RPC, OTHER_RPC, KEY_ID, KEY_SECRET]);
        // The first node's own answer comes first.
        let first_wins = garage_lab("", |_| NodeAnswers {
            config: Ok(Some(config_with(OTHER_RPC))),
            cluster_key: true,
        });
        block_on(GarageSecret(first_wins.plan.clone()).run(&first_wins.ctxs));
        assert_eq!(first_wins.plan.rpc_secret.get().as_deref(), Some(OTHER_RPC));
    }

    #[test]
    fn a_new_rpc_secret_only_when_no_node_has_one_and_every_node_answered() {
        let fresh = garage_lab("", nodes_without_config);
        let outcome = block_on(GarageSecret(fresh.plan.clone()).run(&fresh.ctxs));
        assert!(outcome.abort.is_none(), "{outcome:?}");
        let new = fresh.plan.rpc_secret.get().unwrap();
        assert_eq!(
            config_rpc_secret(&config_with(&new)).as_deref(),
            Some(new.as_str())
        );
        assert_eq!(fresh.secrets().get(SECRET_NAME), Some(new.as_str()));

        let unsure = garage_lab("", |i| NodeAnswers {
            config: if i == 3 { Err(()) } else { Ok(None) },
            cluster_key: false,
        });
        let outcome = block_on(GarageSecret(unsure.plan.clone()).run(&unsure.ctxs));
        let err = outcome.abort.unwrap();
        assert!(err.contains("g3") && err.contains("Fix:"), "{err}");
        assert_eq!(unsure.secrets().get(SECRET_NAME), None);
    }

    #[test]
    fn the_rpc_secret_is_read_from_the_top_level_of_the_config_only() {
        assert_eq!(config_rpc_secret(&config_with(RPC)).as_deref(), Some(RPC));
        assert_eq!(config_rpc_secret("rpc_secret = 'short'\n"), None);
        assert_eq!(
            config_rpc_secret(&format!("[admin]\nrpc_secret = \"{RPC}\"\n")),
            None
        );
        assert_eq!(
            config_rpc_secret(&format!("rpc_secret_file = \"{RPC}\"\n")),
            None
        );
        assert_eq!(config_rpc_secret(""), None);
    }

    #[test]
    fn the_read_back_rpc_secret_never_reaches_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _) = garage_node(
            1,
            NodeAnswers {
                config: Ok(Some(config_with(RPC))),
                cluster_key: false,
            },
        );
        let host = cluster("      g1: { address: 10.0.0.1, zone: z1 }\n").remove(0);
        let log = HostLog::create(dir.path(), "g1", Default::default()).unwrap();
        let ctx = HostCtx::new(host, conn, log, VarSet::new(), false, false);
        let read = block_on(configured_rpc_secret(&ctx)).unwrap();
        assert_eq!(read.as_deref(), Some(RPC));
        let logged = std::fs::read_to_string(dir.path().join("g1.log")).unwrap();
        assert!(
            logged.contains("rpc_secret") && !logged.contains(RPC),
            "{logged}"
        );
    }

    /// Runs the import script with the local `sh` and a stand-in garage
    /// that keeps each call's stdin; `known`: the cluster has the key.
    fn import_with_fake_garage(known: bool) -> (String, tempfile::TempDir) {
        use std::io::Write as _;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("garage");
        let lookup = if known { "exit 0" } else { "exit 1" };
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\ncat > \"$DIR/$4.stdin\"\n[ \"$4\" = GetKeyInfo ] && {lookup}\nexit 0\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (script, input) = import_if_missing(KEY_ID, KEY_SECRET, "mesh");
        let script = script.as_str().replace(BIN, fake.to_str().unwrap());
        let bytes = input_bytes(&input);
        let mut child = std::process::Command::new("sh")
            .args(["-c", &script])
            .env("DIR", dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        (String::from_utf8(out.stdout).unwrap(), dir)
    }

    #[test]
    fn the_key_import_reads_each_payload_from_stdin() {
        let (out, dir) = import_with_fake_garage(false);
        assert!(out.contains(IMPORTED), "{out}");
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        let lookup: serde_json::Value = serde_json::from_str(&read("GetKeyInfo.stdin")).unwrap();
        assert_eq!(lookup, serde_json::json!({ "id": KEY_ID }));
        let import: serde_json::Value = serde_json::from_str(&read("ImportKey.stdin")).unwrap();
        assert_eq!(import["accessKeyId"], KEY_ID);
        assert_eq!(import["secretAccessKey"], KEY_SECRET);
        assert_eq!(import["name"], "mesh");

        let (out, dir) = import_with_fake_garage(true);
        assert!(!out.contains(IMPORTED), "{out}");
        assert!(!dir.path().join("ImportKey.stdin").exists());
    }
}
