//! Step "wesher": the WireGuard overlay.
//!
//! A cluster stage settles the cluster key first: the one the first node
//! already runs with (read from its state over the controller's own SSH
//! connection), else the one in `secrets.env`, else a new one (32 random
//! bytes, base64) stored there. Then the first node, and after it every
//! other node, gets its OS hostname set to its inventory name (wesher
//! derives the overlay IP from it), the wesher binary, `/etc/default/wesher`
//! (mode 0600: `WESHER_CLUSTER_KEY`, and for joining nodes `WESHER_JOIN` =
//! the first node's routable address) and `wesher.service`. Existing nodes'
//! settings do not depend on the host list, so adding a host disturbs none.
//!
//! The key never rides in a script (a script shows in the host's process
//! list): it reaches a node inside its 0600 `/etc/default/wesher`, on stdin,
//! and the first node's state is read back with the output withheld from
//! the log.

use super::{AssetError, Slot};
use crate::inventory::Host;
use crate::ops::{field, CommandOp, Decision, FileOp, Op, OpCtx, OpError, OpFailure, UnitOp};
use crate::phases::{
    converge_ops, ArchError, CheckError, ClusterOutcome, ClusterStep, HostCtx, Step, StepOutcome,
};
use crate::quote::Script;
use crate::secrets::{random_base64, Secrets, SecretsError};
use crate::ssh::{BoxFut, Input};
use crate::template::{render_builtin, TemplateError};
use minijinja::Value;
use std::collections::BTreeMap;
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::Arc;

pub const KEY_NAME: &str = "WESHER_CLUSTER_KEY";
const STATE_FILE: &str = "/var/lib/wesher/wgoverlay.json";
const BIN: &str = "/usr/local/bin/wesher";

/// Why the overlay cannot be set up (for every host, or for one).
#[derive(Debug, thiserror::Error)]
pub enum WesherError {
    #[error("no routable address for {host} (the wesher key stage did not run)")]
    NoAddress { host: String },
    #[error("cannot resolve public_dns {dns} of {host}")]
    Unresolvable { dns: String, host: String },
    #[error("{host} is behind NAT without public_ip or public_dns. Fix: set one in the inventory")]
    NatWithoutPublicAddress { host: String },
    #[error("reading {STATE_FILE} on {host}: {source}")]
    ReadState { host: String, source: OpError },
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error("random key: {0}")]
    RandomKey(std::io::Error),
    #[error("no cluster key (the wesher key stage did not run)")]
    NoKey,
    #[error(transparent)]
    Arch(#[from] ArchError),
    #[error(transparent)]
    Asset(#[from] AssetError),
    #[error(transparent)]
    Template(#[from] TemplateError),
}

/// Shared by the key stage and the host steps.
pub struct WesherPlan {
    /// Inventory name of the first node.
    pub first: Host,
    pub assets: PathBuf,
    pub overlay_net: Option<String>,
    pub secrets_path: PathBuf,
    pub dry_run: bool,
    key: Slot<String>,
    /// Routable addresses of the first node and of hosts behind NAT, by name
    /// (resolved once, off the async threads: public_dns is a DNS lookup).
    addresses: Slot<BTreeMap<String, String>>,
}

impl WesherPlan {
    pub fn new(
        first: Host,
        assets: PathBuf,
        overlay_net: Option<String>,
        secrets_path: PathBuf,
        dry_run: bool,
    ) -> Arc<Self> {
        Arc::new(WesherPlan {
            first,
            assets,
            overlay_net,
            secrets_path,
            dry_run,
            key: Slot::new(),
            addresses: Slot::new(),
        })
    }

    fn address(&self, host: &str) -> Result<String, WesherError> {
        self.addresses
            .get()
            .and_then(|a| a.get(host).cloned())
            .ok_or_else(|| WesherError::NoAddress {
                host: host.to_string(),
            })
    }
}

/// A host's address as seen from the internet: public_ip, else the resolved
/// public_dns, else its SSH address (never a LAN address behind NAT).
pub fn routable_address(host: &Host) -> Result<String, WesherError> {
    if let Some(ip) = host.public_ip {
        return Ok(ip.to_string());
    }
    if let Some(dns) = &host.public_dns {
        return (dns.as_str(), 0)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .map(|a| a.ip().to_string())
            .ok_or_else(|| WesherError::Unresolvable {
                dns: dns.clone(),
                host: host.name.clone(),
            });
    }
    if host.behind_nat {
        return Err(WesherError::NatWithoutPublicAddress {
            host: host.name.clone(),
        });
    }
    Ok(host.address.clone())
}

/// The ClusterKey in wesher's state file, if any.
fn state_key(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.get("ClusterKey")?.as_str().map(str::to_string)
}

/// Cluster stage of "wesher": settle the cluster key.
pub struct WesherKey(pub Arc<WesherPlan>);

impl WesherKey {
    async fn settle(&self, hosts: &[Arc<HostCtx>]) -> Result<String, WesherError> {
        let mut running = None;
        if let Some(first) = hosts.iter().find(|h| h.host.name == self.0.first.name) {
            let mut s = Script::new();
            s.line("cat {} 2>/dev/null || true", &[STATE_FILE]);
            // The state holds the key: its output is never logged.
            let out = first
                .op_ctx()
                .run_secret("read wesher state", s.as_str(), Input::None)
                .await
                .map_err(|source| WesherError::ReadState {
                    host: first.host.name.clone(),
                    source,
                })?;
            running = state_key(&out.stdout_str());
        }
        let mut secrets = Secrets::load(&self.0.secrets_path)?;
        let stored = secrets.get(KEY_NAME).map(str::to_string);
        let key = match (running, stored) {
            (Some(k), _) => k,
            (None, Some(k)) => k,
            (None, None) => random_base64(32).map_err(WesherError::RandomKey)?,
        };
        if secrets.get(KEY_NAME) != Some(key.as_str()) && !self.0.dry_run {
            secrets.set(KEY_NAME, &key)?;
        }
        Ok(key)
    }
}

impl ClusterStep for WesherKey {
    fn name(&self) -> &'static str {
        "wesher"
    }

    fn run<'a>(&'a self, hosts: &'a [Arc<HostCtx>]) -> BoxFut<'a, ClusterOutcome> {
        Box::pin(async move {
            let key = match self.settle(hosts).await {
                Ok(key) => key,
                Err(e) => return ClusterOutcome::failed(e),
            };
            self.0.key.set(key);
            let mut out = ClusterOutcome {
                message: Some(format!(
                    "cluster key ready ({KEY_NAME} in {})",
                    self.0.secrets_path.display()
                )),
                ..Default::default()
            };
            let first = self.0.first.name.clone();
            let mut wanted = vec![self.0.first.clone()];
            wanted.extend(
                hosts
                    .iter()
                    .filter(|h| h.host.behind_nat && h.host.name != first)
                    .map(|h| h.host.clone()),
            );
            let resolved = tokio::task::spawn_blocking(move || {
                wanted
                    .into_iter()
                    .map(|h| (h.name.clone(), routable_address(&h)))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            let mut addresses = BTreeMap::new();
            for (name, address) in resolved {
                match address {
                    Ok(a) => {
                        addresses.insert(name, a);
                    }
                    // Without the first node's address nobody can join.
                    Err(e) if name == first => return ClusterOutcome::failed(e),
                    Err(e) => out.host_failures.push((name, e.to_string())),
                }
            }
            self.0.addresses.set(addresses);
            out
        })
    }
}

/// Host step "wesher": the first node (`first: true`) or the joining ones.
pub struct Wesher {
    pub plan: Arc<WesherPlan>,
    pub first: bool,
}

impl Wesher {
    async fn ops(&self, ctx: &HostCtx) -> Result<Vec<Box<dyn Op>>, WesherError> {
        let host = &ctx.host;
        let binary = super::binary_op(&self.plan.assets, ctx.arch().await?, "wesher", BIN)?;
        let key = self.plan.key.get().ok_or(WesherError::NoKey)?;
        let join = if self.first {
            None
        } else {
            Some(self.plan.address(&self.plan.first.name)?)
        };
        let advertise = if host.behind_nat {
            Some(self.plan.address(&host.name)?)
        } else {
            None
        };
        let mut extra = BTreeMap::new();
        extra.insert("cluster_key".to_string(), Value::from(key));
        extra.insert("join".to_string(), Value::from(join));
        extra.insert("advertise_addr".to_string(), Value::from(advertise));
        extra.insert(
            "overlay_net".to_string(),
            Value::from(self.plan.overlay_net.clone()),
        );
        let extra = Value::from(extra);
        let env = render_builtin("wesher.env.j2", &ctx.vars, Some(&extra))?;
        let unit = render_builtin("wesher.service.j2", &ctx.vars, None)?;

        let mut set_name = Script::new();
        set_name.line(
            "hostnamectl set-hostname {} 2>/dev/null || { echo {} > /etc/hostname && hostname {}; }",
            &[&host.name, &host.name, &host.name],
        );
        let mut named = Script::new();
        named.line("[ \"$(hostname)\" = {} ]", &[&host.name]);
        let mut ops: Vec<Box<dyn Op>> = vec![
            Box::new(CommandOp::new("hostname", set_name).unless(named)),
            Box::new(binary),
        ];
        if host.behind_nat {
            ops.push(Box::new(AdvertiseCheck {
                triggers: vec!["wesher-bin".into()],
            }));
        }
        ops.push(Box::new(
            FileOp::from_bytes("/etc/default/wesher", env)
                .mode(0o600)
                .id("wesher-env"),
        ));
        ops.push(Box::new(
            UnitOp::new("wesher.service", unit).restart_when(["wesher-bin", "wesher-env"]),
        ));
        Ok(ops)
    }
}

impl Step for Wesher {
    fn name(&self) -> &'static str {
        "wesher"
    }

    fn wants(&self, ctx: &HostCtx) -> bool {
        (ctx.host.name == self.plan.first.name) == self.first
    }

    fn check(&self, ctx: &HostCtx) -> Result<(), CheckError> {
        super::check_asset(&self.plan.assets, ctx.host.arch, "wesher")?;
        if ctx.host.behind_nat {
            routable_address(&ctx.host)?;
        }
        Ok(())
    }

    fn run<'a>(&'a self, ctx: &'a HostCtx) -> BoxFut<'a, Result<StepOutcome, OpFailure>> {
        Box::pin(async move {
            let ops = self.ops(ctx).await;
            converge_ops(ctx, "wesher", ops).await
        })
    }
}

/// A host behind NAT needs a wesher build with `--advertise-addr` (a patch;
/// upstream lacks it). Checked from `wesher --help` after the binary is in place.
struct AdvertiseCheck {
    triggers: Vec<String>,
}

const NO_ADVERTISE: &str = "this host is behind NAT, but its wesher has no --advertise-addr (an upstream build). Fix: put a wesher build with the advertise-addr patch in assets/<arch>/wesher";

fn check_script() -> Script {
    let mut s = Script::new();
    s.line(
        "if [ -x {} ]; then if {} --help 2>&1 | grep -q -- --advertise-addr; then echo 'adv yes'; else echo 'adv no'; fi; else echo 'adv absent'; fi",
        &[BIN, BIN],
    );
    s
}

impl Op for AdvertiseCheck {
    fn label(&self) -> String {
        "wesher supports --advertise-addr".into()
    }

    fn triggers(&self) -> &[String] {
        &self.triggers
    }

    fn probe(&self, _ctx: &OpCtx<'_>) -> Option<Script> {
        Some(check_script())
    }

    fn decide(&self, probe: &str, _recheck: Option<&str>, triggered: bool) -> Decision {
        match field(probe, "adv") {
            _ if triggered => Decision::Refresh { flags: 0 },
            Some("yes") => Decision::Unchanged,
            Some("no") => Decision::Fail(NO_ADVERTISE.into()),
            _ => Decision::Refresh { flags: 0 },
        }
    }

    fn apply<'a>(&'a self, ctx: &'a OpCtx<'a>, _flags: u32) -> BoxFut<'a, Result<bool, OpError>> {
        Box::pin(async move {
            let out = ctx
                .run_ok(
                    "check wesher --advertise-addr",
                    check_script().as_str(),
                    Input::None,
                )
                .await?;
            match field(&out.stdout_str(), "adv") {
                Some("yes") => Ok(false),
                _ => Err(OpError::Refused(NO_ADVERTISE.into())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_key_from_wesher_state() {
        assert_eq!(
            state_key(r#"{"ClusterKey":"abc=","Nodes":null}"#).as_deref(),
            Some("abc=")
        );
        assert_eq!(state_key(""), None);
        assert_eq!(state_key("{}"), None);
    }

    #[test]
    fn advertise_check_fails_only_on_an_unpatched_binary() {
        let c = AdvertiseCheck {
            triggers: vec!["wesher-bin".into()],
        };
        assert_eq!(c.decide("adv yes\n", None, false), Decision::Unchanged);
        assert!(matches!(
            c.decide("adv no\n", None, false),
            Decision::Fail(_)
        ));
        // A new binary is re-checked after it is uploaded.
        assert!(matches!(
            c.decide("adv yes\n", None, true),
            Decision::Refresh { .. }
        ));
        assert!(matches!(
            c.decide("adv absent\n", None, false),
            Decision::Refresh { .. }
        ));
    }

    use crate::log::HostLog;
    use crate::phases::{ClusterStep, Step};
    use crate::ssh::recording::{input_bytes, ok, RecordingTransport};
    use crate::template::VarSet;
    use std::sync::Mutex;

    const KEY: &str = "q1XwCv0tK5m3ZB8dOe7Y2rUjL4sHnA9fPgWiTyRcE6o=";
    const STORED: &str = "Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0Pp9Oo8Nn7Mm6L=";

    /// A host where nothing exists yet, whose wesher state (if any) holds
    /// `running`; every stdin is recorded.
    fn wesher_node(
        running: Option<&'static str>,
    ) -> (Arc<RecordingTransport>, Arc<Mutex<Vec<u8>>>) {
        let stdin: Arc<Mutex<Vec<u8>>> = Arc::default();
        let seen = stdin.clone();
        let conn = RecordingTransport::new(move |script, input| {
            seen.lock().unwrap().extend(input_bytes(input));
            if script.contains(STATE_FILE) {
                return ok(&running
                    .map(|k| format!(r#"{{"ClusterKey":"{k}","Nodes":[]}}"#))
                    .unwrap_or_default());
            }
            let mut out = String::new();
            for line in script.lines() {
                if let Some(n) = line.strip_prefix("echo '@@mesh-op ") {
                    let n = n.trim_end_matches('\'');
                    out.push_str(&format!(
                        "@@mesh-op {n}\nstat absent\nrec none\nguard todo\n"
                    ));
                }
                if let Some(n) = line.strip_prefix("echo '@@mesh-done ") {
                    out.push_str(&format!("@@mesh-done {}\n", n.trim_end_matches('\'')));
                }
            }
            ok(&out)
        });
        (Arc::new(conn), stdin)
    }

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn the_cluster_key_never_rides_in_a_script() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets.env");
        std::fs::write(&secrets, format!("{KEY_NAME}={STORED}\n")).unwrap();
        std::fs::create_dir_all(dir.path().join("assets/x86_64")).unwrap();
        std::fs::write(dir.path().join("assets/x86_64/wesher"), "binary").unwrap();
        let inv = crate::inventory::Inventory::parse(
            std::path::Path::new("i.yml"),
            "groups:\n  all:\n    hosts:\n      w1: { address: 10.0.0.1, arch: x86_64 }\n      w2: { address: 10.0.0.2, arch: x86_64 }\n",
        )
        .unwrap();
        let plan = WesherPlan::new(
            inv.hosts[0].clone(),
            dir.path().join("assets"),
            None,
            secrets.clone(),
            false,
        );
        let mut ctxs = Vec::new();
        let mut nodes = Vec::new();
        for (host, running) in inv.hosts.iter().zip([Some(KEY), None]) {
            let (conn, stdin) = wesher_node(running);
            ctxs.push(Arc::new(HostCtx::new(
                host.clone(),
                conn.clone(),
                HostLog::discard(),
                VarSet::new(),
                false,
                false,
            )));
            nodes.push((conn, stdin));
        }
        block_on(async {
            let out = WesherKey(plan.clone()).run(&ctxs).await;
            assert!(out.abort.is_none(), "{out:?}");
            for (ctx, first) in ctxs.iter().zip([true, false]) {
                let step = Wesher {
                    plan: plan.clone(),
                    first,
                };
                step.run(ctx).await.unwrap();
            }
        });
        // The first node's running key wins over secrets.env's, and is kept there.
        assert_eq!(plan.key.get().as_deref(), Some(KEY));
        let kept = crate::secrets::Secrets::load(&secrets).unwrap();
        assert_eq!(kept.get(KEY_NAME), Some(KEY));
        for (conn, stdin) in &nodes {
            let calls = conn.calls();
            assert!(calls.len() > 2, "{calls:?}");
            for script in &calls {
                for secret in [KEY, STORED] {
                    assert!(
                        !script.contains(secret),
                        "the key in a command line:\n{script}"
                    );
                }
            }
            // It reached each node as /etc/default/wesher's content, on stdin.
            let fed = String::from_utf8_lossy(&stdin.lock().unwrap()).into_owned();
            assert!(fed.contains(&format!("WESHER_CLUSTER_KEY={KEY}")), "{fed}");
        }
    }

    #[test]
    fn the_running_key_never_reaches_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let inv = crate::inventory::Inventory::parse(
            std::path::Path::new("i.yml"),
            "groups:\n  all:\n    hosts:\n      w1: { address: 10.0.0.1 }\n",
        )
        .unwrap();
        let (conn, _) = wesher_node(Some(KEY));
        let log = HostLog::create(dir.path(), "w1", Default::default()).unwrap();
        let ctx = Arc::new(HostCtx::new(
            inv.hosts[0].clone(),
            conn,
            log,
            VarSet::new(),
            false,
            false,
        ));
        let plan = WesherPlan::new(
            inv.hosts[0].clone(),
            dir.path().join("assets"),
            None,
            dir.path().join("secrets.env"),
            true,
        );
        let key = block_on(WesherKey(plan).settle(&[ctx])).unwrap();
        assert_eq!(key, KEY);
        let logged = std::fs::read_to_string(dir.path().join("w1.log")).unwrap();
        assert!(
            logged.contains("wesher state") && !logged.contains(KEY),
            "{logged}"
        );
    }
}
