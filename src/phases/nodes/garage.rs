//! Step "garage": the S3-compatible object store across zones.
//!
//! Stages: the RPC secret is settled once (`RPC_SECRET` in `secrets.env`,
//! 32 random bytes, hex); the first node gets the binary, `/etc/garage.toml`
//! (mode 0600) and `garage.service`; the controller reads its full node id;
//! every other node gets the same with `bootstrap_peers` = that id; finally,
//! from one node, every node missing from the layout (or with another zone,
//! capacity or tag) is assigned, and a layout version is applied only when
//! something changed. On first bootstrap an access key and a bucket are
//! created and the key is saved as GARAGE_KEY / GARAGE_SECRET.
//!
//! Addresses: a node advertises its overlay IP (`rpc_public_addr`), which
//! every node reaches. Hosts behind the same NAT talk over their LAN instead
//! where garage lets mesh choose per pair: a joiner bootstraps from the first
//! node's LAN address when both sit behind the same NAT. Garage advertises one
//! address per node, so a node advertises its LAN address only when the whole
//! cluster sits behind its NAT.

use super::Slot;
use crate::inventory::Host;
use crate::ops::{FileOp, Op, OpCtx, OpError, OpFailure, UnitOp};
use crate::phases::{
    converge_ops, on_each_host, ClusterOutcome, ClusterStep, HostCtx, Step, StepOutcome,
};
use crate::quote::{Cmd, Script};
use crate::secrets::{random_hex, Secrets};
use crate::ssh::{BoxFut, Input};
use crate::template::render_builtin;
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

async fn node_id(ctx: &HostCtx) -> Result<String, String> {
    let out = ctx
        .op_ctx()
        .run("garage node id", node_id_script().as_str(), Input::None)
        .await
        .map_err(|e| e.to_string())?;
    match out.code {
        Some(0) => {}
        Some(3) => return Err(format!("garage is not installed on {} yet", ctx.host.name)),
        _ => {
            return Err(format!(
                "`garage node id` failed on {}: {}",
                ctx.host.name,
                ctx.log.redact(&out.tail(3))
            ))
        }
    }
    out.stdout_str()
        .lines()
        .map(str::trim)
        .find(|l| l.contains('@'))
        .map(str::to_string)
        .ok_or_else(|| format!("no node id in `garage node id` output on {}", ctx.host.name))
}

/// Cluster stage: settle the one RPC secret of the cluster.
pub struct GarageSecret(pub Arc<GaragePlan>);

impl ClusterStep for GarageSecret {
    fn name(&self) -> &'static str {
        "garage"
    }

    fn run<'a>(&'a self, _hosts: &'a [Arc<HostCtx>]) -> BoxFut<'a, ClusterOutcome> {
        Box::pin(async move {
            let settle = || -> Result<String, String> {
                let mut secrets = Secrets::load(&self.0.secrets_path).map_err(|e| e.to_string())?;
                if let Some(s) = secrets.get(SECRET_NAME) {
                    return Ok(s.to_string());
                }
                let new = random_hex(32).map_err(|e| format!("random secret: {e}"))?;
                if !self.0.dry_run {
                    secrets.set(SECRET_NAME, &new).map_err(|e| e.to_string())?;
                }
                Ok(new)
            };
            match settle() {
                Ok(secret) => {
                    self.0.rpc_secret.set(secret);
                    ClusterOutcome::default()
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
                return ClusterOutcome::failed(format!(
                        "garage bootstraps from the first node {}, which is not in this run (failed, or left out by --limit). Fix: include it",
                        self.0.first.name
                    ));
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
    async fn ops(&self, ctx: &HostCtx) -> Result<Vec<Box<dyn Op>>, String> {
        let binary = super::binary_op(&self.plan.assets, ctx.arch().await?, "garage", BIN)?;
        let secret = self
            .plan
            .rpc_secret
            .get()
            .ok_or("no RPC secret (its stage did not run)")?;
        let peers: Vec<String> = if self.first {
            Vec::new()
        } else {
            let first_id = self
                .plan
                .first_id
                .get()
                .ok_or("the first node's id is unknown")?;
            vec![bootstrap_peer(&first_id, &self.plan.first, &ctx.host)]
        };
        let overlay_ip = ctx.vars.get("OVERLAY_IP").ok_or("no OVERLAY_IP")?;
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
        let config = render_builtin("garage.toml.j2", &ctx.vars, Some(&Value::from(extra)))
            .map_err(|e| e.to_string())?;
        let unit =
            render_builtin("garage.service.j2", &ctx.vars, None).map_err(|e| e.to_string())?;
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

    fn check(&self, ctx: &HostCtx) -> Result<(), String> {
        if ctx.host.zone.is_none() {
            return Err(
                "no zone: garage replicates across zones. Fix: set `zone:` for this host".into(),
            );
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
pub fn capacity_bytes(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("GARAGE_CAPACITY {text:?} is not a size. Fix: write e.g. 100G"))?;
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
            return Err(format!(
                "GARAGE_CAPACITY {text:?}: unknown unit. Fix: use B, KB, MB, GB, TB"
            ))
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
    async fn layout(&self, hosts: &[Arc<HostCtx>], out: &mut ClusterOutcome) -> Result<(), String> {
        let admin = hosts
            .iter()
            .find(|h| h.host.name == self.0.first.name)
            .or(hosts.first())
            .ok_or("no host left to run the layout from")?;
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
                Err(e) => out.host_failures.push((h.host.name.clone(), e)),
            }
        }
        // Wait until the admin node sees every node.
        let mut status = String::new();
        for _ in 0..60 {
            let s = ctx
                .run("garage status", &garage(&["status"]).build(), Input::None)
                .await
                .map_err(|e| e.to_string())?;
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
                out.host_failures.push((
                    h.host.name.clone(),
                    format!(
                        "garage on {} did not join the cluster within 30 s",
                        h.host.name
                    ),
                ));
            }
        }
        let show = ctx
            .run_ok(
                "garage layout show",
                &garage(&["layout", "show"]).build(),
                Input::None,
            )
            .await
            .map_err(|e| e.to_string())?;
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
                .await
                .map_err(|e| e.to_string())?;
            out.changed = true;
            out.message = Some(format!(
                "assigned {}; applied layout version {}",
                assigned.join(", "),
                version + 1
            ));
        }
        if !self.0.dry_run {
            self.key_and_bucket(&ctx, admin, out).await?;
        }
        Ok(())
    }

    /// On first bootstrap: an access key (saved to secrets.env) and a bucket it owns.
    async fn key_and_bucket(
        &self,
        ctx: &OpCtx<'_>,
        admin: &HostCtx,
        out: &mut ClusterOutcome,
    ) -> Result<(), String> {
        let mut secrets = Secrets::load(&self.0.secrets_path).map_err(|e| e.to_string())?;
        let bucket = admin
            .vars
            .get("GARAGE_BUCKET")
            .unwrap_or(DEFAULT_BUCKET)
            .to_string();
        let mut key_is_new = false;
        let key_id = match (secrets.get("GARAGE_KEY"), secrets.get("GARAGE_SECRET")) {
            (Some(id), Some(secret)) => {
                // A rebuilt cluster lacks the saved key: import it, so services keep their credentials.
                let mut s = Script::new();
                s.raw("set -e");
                s.raw(&format!(
                    "if ! {} >/dev/null 2>&1; then",
                    garage(&["key", "info", id])
                ));
                s.cmd(garage(&[
                    "key", "import", "--yes", "-n", "mesh", id, secret,
                ]));
                s.raw("echo imported; fi");
                let imported = ctx
                    .run_secret("garage key (import if missing)", s.as_str())
                    .await
                    .map_err(|_| {
                        format!(
                            "the access key GARAGE_KEY in {} is not in the cluster and cannot be imported (a deleted key id stays reserved). Fix: remove GARAGE_KEY and GARAGE_SECRET from it; mesh then creates a new key",
                            self.0.secrets_path.display()
                        )
                    })?;
                if imported.stdout_str().contains("imported") {
                    key_is_new = true;
                }
                id.to_string()
            }
            _ => {
                let created = ctx
                    .run_secret(
                        "garage key create",
                        &garage(&["key", "create", "mesh"]).build(),
                    )
                    .await
                    .map_err(|e: OpError| e.to_string())?;
                let (id, secret) = parse_key(&created.stdout_str())
                    .ok_or("`garage key create` printed no Key ID / Secret key")?;
                secrets.set("GARAGE_KEY", &id).map_err(|e| e.to_string())?;
                secrets
                    .set("GARAGE_SECRET", &secret)
                    .map_err(|e| e.to_string())?;
                key_is_new = true;
                id
            }
        };
        // A new bucket, or a key new to the cluster, gets the key's permissions.
        out.changed |= key_is_new;
        let allow = garage(&[
            "bucket", "allow", "--read", "--write", "--owner", &bucket, "--key", &key_id,
        ]);
        let mut s = Script::new();
        s.raw("set -e");
        let info = garage(&["bucket", "info", &bucket]);
        s.raw(&format!("if ! {info} >/dev/null 2>&1; then"));
        s.cmd(garage(&["bucket", "create", &bucket]));
        if !key_is_new {
            s.cmd(allow.clone());
        }
        s.raw("echo created");
        s.raw("fi");
        if key_is_new {
            s.cmd(allow);
        }
        let made = ctx
            .run_ok("garage bucket", s.as_str(), Input::None)
            .await
            .map_err(|e| e.to_string())?;
        if made.stdout_str().contains("created") {
            out.changed = true;
        }
        Ok(())
    }
}

impl ClusterStep for GarageLayout {
    fn name(&self) -> &'static str {
        "garage"
    }

    fn run<'a>(&'a self, hosts: &'a [Arc<HostCtx>]) -> BoxFut<'a, ClusterOutcome> {
        Box::pin(async move {
            let mut out = ClusterOutcome::default();
            if let Err(e) = self.layout(hosts, &mut out).await {
                out.abort = Some(e);
            }
            out
        })
    }
}

#[cfg(test)]
mod tests {
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
}
