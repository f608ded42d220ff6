//! `mesh inventory`: the resolved hosts, their groups, overlay IPs and
//! variables (secrets masked). Contacts no host.

use super::overlay_ip;
use crate::inventory::{Host, Inventory};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {}

pub(crate) fn run(inv: &Inventory, hosts: &[Host], json: bool) -> u8 {
    print(inv, hosts, json);
    0
}

fn print(inv: &Inventory, hosts: &[Host], json: bool) {
    let rows: Vec<serde_json::Value> = hosts
        .iter()
        .map(|h| {
            let mut vars = serde_json::Map::new();
            for (_, layer) in inv.var_layers(h) {
                for (k, v) in layer {
                    let shown = if crate::template::looks_secret(k) {
                        "***".to_string()
                    } else {
                        v.clone()
                    };
                    vars.entry(k.clone()).or_insert(shown.into());
                }
            }
            serde_json::json!({
                "name": h.name,
                "address": h.address,
                "groups": h.groups,
                "ssh": {
                    "user": h.ssh.user,
                    "port": h.ssh.port,
                    "identity_file": h.ssh.identity_file,
                    "options": h.ssh.options,
                },
                "arch": h.arch.map(|a| a.to_string()),
                "zone": h.zone,
                "behind_nat": h.behind_nat,
                "public_ip": h.public_ip,
                "public_dns": h.public_dns,
                "overlay_ip": overlay_ip(inv, h),
                "services": h.services,
                "traefik_host": h.traefik_host,
                "vars": vars,
            })
        })
        .collect();
    if json {
        for r in rows {
            println!("{r}");
        }
        return;
    }
    println!(
        "inventory {} ({} hosts selected)",
        inv.path.display(),
        hosts.len()
    );
    for (h, r) in hosts.iter().zip(&rows) {
        println!("{}:", h.name);
        if let Some(obj) = r.as_object() {
            for (k, v) in obj {
                let empty = v.is_null()
                    || v.as_array().is_some_and(|a| a.is_empty())
                    || v.as_object().is_some_and(|o| o.is_empty())
                    || k == "name";
                if !empty {
                    println!("  {k}: {v}");
                }
            }
        }
    }
    println!("groups:");
    for g in &inv.groups {
        println!("  {}: {}", g.name, g.hosts.join(", "));
    }
}
