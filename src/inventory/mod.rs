//! The inventory: which hosts exist, how to reach them over SSH, and the facts
//! mesh needs about each (groups, architecture, NAT, zone, services, ...).
//!
//! An inventory is one YAML file (see `inventory/example.yml`). Loading it
//! parses the YAML into a span-carrying tree, checks every key and value,
//! merges hosts listed under several groups and resolves SSH settings. All
//! problems are collected and reported together, each as
//! `file:line:col: what is wrong. Fix: what to do`, before anything runs.

mod diag;
mod resolve;
mod schema;
pub mod select;
mod yaml;

#[cfg(test)]
mod tests;

use crate::template::Source;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use select::glob_match;

/// A loaded, validated inventory.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// The file it was loaded from (used in messages).
    pub path: PathBuf,
    /// Hosts in order of first appearance in the file.
    pub hosts: Vec<Host>,
    /// Groups in file order.
    pub groups: Vec<Group>,
    /// Top-level template variables.
    pub vars: BTreeMap<String, String>,
    pub firewall: FirewallSettings,
    pub apt: AptSettings,
    pub docker: DockerSettings,
    pub overlay: OverlaySettings,
}

/// SSH connection settings. Unset fields are left to `~/.ssh/config`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshSettings {
    pub user: Option<String>,
    pub port: Option<u16>,
    /// With a leading `~/` already expanded.
    pub identity_file: Option<PathBuf>,
    /// Extra `-o Key=Value` options.
    pub options: BTreeMap<String, String>,
}

/// One host, with its settings merged across groups and resolved.
#[derive(Debug, Clone)]
pub struct Host {
    /// Overlay and OS hostname.
    pub name: String,
    /// Where SSH connects: an IP address or DNS name.
    pub address: String,
    /// Resolved: host over groups (file order) over top level.
    pub ssh: SshSettings,
    /// Names of the groups listing this host, in file order.
    pub groups: Vec<String>,
    /// `None` means: detect with `uname -m`.
    pub arch: Option<Arch>,
    pub behind_nat: bool,
    pub public_ip: Option<IpAddr>,
    /// Resolved at run time (DynDNS).
    pub public_dns: Option<String>,
    /// Garage replication zone.
    pub zone: Option<String>,
    /// Dockerfile subfolders run on this host.
    pub services: Vec<String>,
    /// The bastion whose Redis traefik-kop writes to.
    pub traefik_host: Option<String>,
    pub overlay_ip: Option<Ipv4Addr>,
    /// The host's own template variables only; see [`Inventory::var_layers`].
    pub vars: BTreeMap<String, String>,
    /// Resolved: host over top level.
    pub firewall: FirewallSettings,
}

/// CPU architecture of a host, as printed by `uname -m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The Debian architecture name, for picking `.deb` packages.
    pub fn deb_arch(&self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        })
    }
}

/// Error for a string that is not `x86_64` or `aarch64`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported architecture \"{0}\" (expected x86_64 or aarch64)")]
pub struct ParseArchError(pub String);

impl FromStr for Arch {
    type Err = ParseArchError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "x86_64" => Ok(Arch::X86_64),
            "aarch64" => Ok(Arch::Aarch64),
            other => Err(ParseArchError(other.to_owned())),
        }
    }
}

/// A group of hosts.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    /// The group's template variables.
    pub vars: BTreeMap<String, String>,
    /// Host names in the order listed under the group.
    pub hosts: Vec<String>,
}

/// Host firewall settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirewallSettings {
    pub ssh_port: Option<u16>,
    /// How long an unconfirmed firewall change stays before being rolled back.
    pub deadman_seconds: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AptSettings {
    /// Skip `apt-get update` when the cache is younger than this.
    pub cache_valid_seconds: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerSettings {
    /// APT repository URL for Docker packages.
    pub mirror: Option<String>,
    pub packages: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlaySettings {
    /// Overlay network in CIDR notation (wesher's `--overlay-net`).
    pub net: Option<String>,
}

/// Why an inventory could not be loaded or a selection failed.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read inventory {}: {source}. Fix: pass -i FILE or set MESH_INVENTORY", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Every problem found, one line each: `file:line:col: problem. Fix: ...`.
    #[error("{}", .problems.join("\n"))]
    Invalid { problems: Vec<String> },
    /// A `--limit` glob matched no host and no group with hosts.
    #[error("{}", select::no_match_message(.pattern, .names))]
    NoMatch { pattern: String, names: Vec<String> },
}

impl Inventory {
    /// Reads, parses and validates the inventory file at `path`.
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Inventory::parse(path, &text)
    }

    /// Parses and validates inventory `text`; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Inventory, InventoryError> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        Inventory::parse_with_home(path, text, home.as_deref())
    }

    /// [`Inventory::parse`] with an explicit home directory for `~/` expansion.
    pub(crate) fn parse_with_home(
        path: &Path,
        text: &str,
        home: Option<&Path>,
    ) -> Result<Inventory, InventoryError> {
        let mut d = diag::Diag::default();
        let root = match yaml::parse(text) {
            Ok(root) => root,
            Err((loc, message)) => {
                d.push(
                    loc,
                    format!("YAML syntax error: {message}"),
                    "correct the YAML at this position (check indentation, colons, quotes and brackets).",
                );
                return Err(InventoryError::Invalid {
                    problems: d.into_lines(path),
                });
            }
        };
        let raw = schema::read_inventory(&root, &mut d);
        let inventory = resolve::resolve(raw, path, home, &mut d);
        if d.is_empty() {
            Ok(inventory)
        } else {
            Err(InventoryError::Invalid {
                problems: d.into_lines(path),
            })
        }
    }

    /// The host called `name`.
    /// A file next to the inventory (secrets.env, docker.lock, .mesh/logs).
    pub fn beside(&self, name: &str) -> PathBuf {
        self.path.parent().unwrap_or(Path::new(".")).join(name)
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The group called `name`.
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// Template variables of a host, most specific first: host vars, then its
    /// groups' vars in file order, then top-level vars. First wins.
    pub fn var_layers<'a>(&'a self, host: &'a Host) -> Vec<(Source, &'a BTreeMap<String, String>)> {
        let mut layers = vec![(Source::HostVars, &host.vars)];
        layers.extend(
            self.groups
                .iter()
                .filter(|g| host.groups.contains(&g.name))
                .map(|g| (Source::GroupVars, &g.vars)),
        );
        layers.push((Source::Vars, &self.vars));
        layers
    }

    /// The value of template variable `name` for `host`, per [`Inventory::var_layers`].
    pub fn var<'a>(&'a self, host: &'a Host, name: &str) -> Option<&'a str> {
        self.var_layers(host)
            .into_iter()
            .find_map(|(_, vars)| vars.get(name))
            .map(String::as_str)
    }
}
