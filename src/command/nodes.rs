//! `mesh nodes`: bootstrap hosts — base packages and firewall, Docker, the
//! wesher overlay, the garage cluster ([`crate::phases::nodes`]).

use super::Session;
use crate::error::Error;
use crate::inventory::{Host, Inventory};
use crate::phases::{nodes, Phase};
use std::net::{IpAddr, ToSocketAddrs};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address, public IP or public DNS IP of the node that bootstraps the cluster.
    #[arg(long, value_name = "IP")]
    pub first_ip: Option<String>,
    /// Base URL of the Docker .deb repository (a mirror in download.docker.com's layout).
    #[arg(long, value_name = "URL")]
    pub docker_mirror: Option<String>,
    /// Re-read the mirror and move docker.lock to the newest versions.
    #[arg(long)]
    pub update_lock: bool,
}

/// Why `nodes` refused its flags.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("--first-ip {ip} matches no host's address, public_ip or public_dns. Fix: use one of: {}", .candidates.join("; "))]
    UnknownFirstIp { ip: String, candidates: Vec<String> },
    #[error("step {step} bootstraps from the first node. Fix: pass --first-ip <address of that host>, or --only basic --only docker")]
    NeedsFirstIp { step: &'static str },
}

/// The first node, checked against the steps that need one.
pub(crate) fn check(
    args: &Args,
    inv: &Inventory,
    only: &[String],
    skip: &[String],
) -> Result<Option<Host>, InputError> {
    let first = match &args.first_ip {
        Some(ip) => Some(first_node(inv, ip)?.clone()),
        None => None,
    };
    if first.is_none() {
        if let Some(step) = nodes::NEEDS_FIRST
            .iter()
            .find(|s| Phase::selects(s, only, skip))
        {
            return Err(InputError::NeedsFirstIp { step });
        }
    }
    Ok(first)
}

pub(crate) async fn run(s: &mut Session, args: &Args) -> Result<u8, Error> {
    let first = check(args, &s.inv, &s.global.only, &s.global.skip)?;
    let opts = nodes::NodesOptions {
        docker_mirror: args.docker_mirror.clone(),
        update_lock: args.update_lock,
        dry_run: s.global.dry_run,
        cache: crate::mirror::cache_root(),
        first,
        assets: s.global.assets.clone(),
        secrets_path: s.secrets_path(),
    };
    let phase = nodes::phase(&s.inv, &opts);
    let ctxs = s.selected()?;
    s.run_phase(phase, ctxs, None).await
}

/// The host `--first-ip` names: by address, public_ip, or resolved public_dns.
pub(crate) fn first_node<'a>(inv: &'a Inventory, ip: &str) -> Result<&'a Host, InputError> {
    let wanted: Option<IpAddr> = ip.parse().ok();
    // Only an IP can match public_ip or a resolved public_dns: no lookups otherwise.
    let resolves_to = |dns: &str, ip: IpAddr| {
        (dns, 0)
            .to_socket_addrs()
            .is_ok_and(|mut addrs| addrs.any(|a| a.ip() == ip))
    };
    let found = inv.hosts.iter().find(|h| {
        h.address == ip
            || wanted.is_some_and(|w| {
                h.public_ip == Some(w)
                    || h.public_dns
                        .as_deref()
                        .is_some_and(|dns| resolves_to(dns, w))
            })
    });
    found.ok_or_else(|| InputError::UnknownFirstIp {
        ip: ip.to_string(),
        candidates: inv
            .hosts
            .iter()
            .map(|h| {
                let mut c = format!("{} ({}", h.name, h.address);
                if let Some(p) = h.public_ip {
                    c.push_str(&format!(", public_ip {p}"));
                }
                if let Some(d) = &h.public_dns {
                    c.push_str(&format!(", public_dns {d}"));
                }
                c.push(')');
                c
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn first_ip_matches_address_or_public_ip() {
        let inv = Inventory::parse(
            Path::new("inv.yml"),
            "groups:
  g:
    hosts:
      a: { address: 10.0.0.1, zone: z1 }
      b: { address: 192.168.1.5, zone: z2, behind_nat: true, public_ip: 198.51.100.9 }
      c: { address: c.example.org, zone: z3 }
",
        )
        .unwrap();
        assert_eq!(first_node(&inv, "10.0.0.1").unwrap().name, "a");
        assert_eq!(first_node(&inv, "198.51.100.9").unwrap().name, "b");
        assert_eq!(first_node(&inv, "c.example.org").unwrap().name, "c");
        let err = first_node(&inv, "10.0.0.99").unwrap_err().to_string();
        assert!(err.contains("a (10.0.0.1)"), "{err}");
        assert!(err.contains("public_ip 198.51.100.9"), "{err}");
        assert!(err.contains("Fix:"), "{err}");
    }

    #[test]
    fn overlay_steps_need_a_first_node() {
        let inv = Inventory::parse(
            Path::new("inv.yml"),
            "groups:\n  g:\n    hosts:\n      a: { address: 10.0.0.1 }\n",
        )
        .unwrap();
        let args = Args {
            first_ip: None,
            docker_mirror: None,
            update_lock: false,
        };
        let err = check(&args, &inv, &[], &[]).unwrap_err().to_string();
        assert!(err.contains("--first-ip"), "{err}");
        let only = vec!["basic".to_string()];
        assert!(check(&args, &inv, &only, &[]).unwrap().is_none());
    }
}
