//! The inventory: which hosts exist, how to reach them over SSH, and the facts
//! mesh needs about each (groups, architecture, NAT, zone, services, ...).
//!
//! An inventory is one YAML file (see `inventory/example.yml`). Loading it
//! parses the YAML into a span-carrying tree, checks every key and value,
//! merges hosts listed under several groups and resolves SSH settings. All
//! problems are collected and reported together, each as
//! `file:line:col: what is wrong. Fix: what to do`, before anything runs.

pub(crate) mod diag;
mod resolve;
pub(crate) mod schema;
pub mod select;
pub(crate) mod yaml;

#[cfg(test)]
mod tests;

use crate::template::Source;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Largest inventory file mesh reads.
pub const MAX_INVENTORY_BYTES: u64 = 4 << 20;

/// `-o key=value` turns host key checking off: `StrictHostKeyChecking`
/// no/off/false, or a `UserKnownHostsFile` that starts with /dev/null (ssh
/// records new keys in the first file, so none would ever be kept).
pub fn disables_host_key_check(key: &str, value: &str) -> bool {
    let value = value.trim();
    if key.eq_ignore_ascii_case("StrictHostKeyChecking") {
        ["no", "off", "false"]
            .iter()
            .any(|v| value.eq_ignore_ascii_case(v))
    } else if key.eq_ignore_ascii_case("UserKnownHostsFile") {
        value.split_whitespace().next() == Some("/dev/null")
    } else {
        false
    }
}

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
    /// Top-level firewall settings (each host carries them merged with its
    /// group's and its own; the tests read this layer).
    #[cfg_attr(not(test), allow(dead_code))]
    pub firewall: FirewallSettings,
    pub apt: AptSettings,
    pub docker: DockerSettings,
    pub overlay: OverlaySettings,
    pub ingress: IngressSettings,
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
    /// The bastions that serve this host's routes (`traefik_host`: one
    /// name or a list); `None`: every bastion of the inventory.
    pub traefik_host: Option<Vec<String>>,
    pub overlay_ip: Option<Ipv4Addr>,
    /// The host's own template variables only; see [`Inventory::var_layers`].
    pub vars: BTreeMap<String, String>,
    /// Resolved: host over top level.
    pub firewall: FirewallSettings,
}

/// The service that makes a host a bastion (Traefik, Redis, CrowdSec).
pub const TRAEFIK_SERVICE: &str = "traefik";

impl Host {
    /// The host runs Traefik: it receives the routes of its workers.
    pub fn is_bastion(&self) -> bool {
        self.services.iter().any(|s| s == TRAEFIK_SERVICE)
    }
}

/// CPU architecture of a host, as printed by `uname -m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The architecture this binary runs on (the controller's).
    pub fn native() -> Arch {
        if std::env::consts::ARCH == "aarch64" {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    /// Docker's platform name, e.g. `linux/arm64`.
    pub fn docker_platform(&self) -> &'static str {
        match self {
            Arch::X86_64 => "linux/amd64",
            Arch::Aarch64 => "linux/arm64",
        }
    }

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
    /// The mirror's release key (`docker.signing_key`), resolved against the
    /// inventory's folder; checked to be a usable public key at load time.
    pub signing_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlaySettings {
    /// Overlay network in CIDR notation (wesher's `--overlay-net`).
    pub net: Option<String>,
}

/// Who writes the Traefik routes into a bastion's Redis (`ingress.publisher`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Publisher {
    /// The controller, over SSH on the bastion (no daemon on workers).
    #[default]
    Mesh,
    /// traefik-kop on every worker (the seed's way).
    TraefikKop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressSettings {
    pub publisher: Publisher,
    /// CrowdSec and its firewall bouncer on bastions (default true).
    pub crowdsec: bool,
    /// Where Traefik's API answers on a bastion (`ingress.traefik_api`);
    /// `None`: read from the bastion's Traefik configuration.
    pub traefik_api: Option<TraefikApi>,
}

impl Default for IngressSettings {
    fn default() -> Self {
        IngressSettings {
            publisher: Publisher::Mesh,
            crowdsec: true,
            traefik_api: None,
        }
    }
}

/// Why an `ingress.traefik_api` URL is refused; the message continues
/// ``traefik_api "URL" …``.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraefikApiError {
    #[error("must start with http:// or https://")]
    Scheme,
    #[error("must not have a path (mesh adds /api/...)")]
    Path,
    #[error("needs a port, e.g. http://127.0.0.1:8080")]
    NoPort,
    #[error("needs a host, e.g. http://127.0.0.1:8080")]
    NoHost,
    #[error("has no valid port (1-65535)")]
    BadPort,
}

/// Traefik's API as a bastion reaches it: `http(s)://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraefikApi {
    pub base: String,
    pub port: u16,
}

impl TraefikApi {
    /// Traefik's own default: the `traefik` entry point on :8080.
    pub fn default_local() -> TraefikApi {
        TraefikApi {
            base: "http://127.0.0.1:8080".into(),
            port: 8080,
        }
    }

    /// `http(s)://host:port` (a path is not allowed: mesh adds `/api/...`).
    pub fn parse(url: &str) -> Result<TraefikApi, TraefikApiError> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or(TraefikApiError::Scheme)?;
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err(TraefikApiError::Path);
        }
        let (host, port) = rest.rsplit_once(':').ok_or(TraefikApiError::NoPort)?;
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(TraefikApiError::NoHost);
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or(TraefikApiError::BadPort)?;
        Ok(TraefikApi {
            base: url.trim_end_matches('/').to_string(),
            port,
        })
    }

    /// From an entry point address as Traefik writes it (`:8080`,
    /// `127.0.0.1:8080`, `0.0.0.0:9000`): reached on the bastion itself.
    pub fn from_entrypoint(address: &str) -> Option<TraefikApi> {
        let (host, port) = address.trim().rsplit_once(':')?;
        let port: u16 = port.split('/').next()?.parse().ok()?;
        let host = match host.trim_matches(['[', ']']) {
            "" | "0.0.0.0" | "::" => "127.0.0.1",
            h => h,
        };
        Some(TraefikApi {
            base: format!("http://{host}:{port}"),
            port,
        })
    }
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
    /// The file is larger than [`MAX_INVENTORY_BYTES`] (e.g. `-i /dev/zero`).
    #[error("inventory {} is larger than {} MiB; mesh stopped reading it there. Fix: pass the inventory YAML file with -i FILE (an inventory of 200 hosts is a few dozen KiB)", .path.display(), MAX_INVENTORY_BYTES >> 20)]
    TooLarge { path: PathBuf },
    /// A `--limit` glob matched no host and no group with hosts.
    #[error("{}", select::no_match_message(.pattern, .names))]
    NoMatch { pattern: String, names: Vec<String> },
}

impl Inventory {
    /// Reads, parses and validates the inventory file at `path`. Reading
    /// stops past [`MAX_INVENTORY_BYTES`]: a wrong `-i` (a device, a huge
    /// file) is an error, not a process eating all memory.
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        use std::io::Read as _;
        let read_err = |source| InventoryError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_INVENTORY_BYTES + 1).read_to_end(&mut bytes))
            .map_err(read_err)?;
        if bytes.len() as u64 > MAX_INVENTORY_BYTES {
            return Err(InventoryError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = String::from_utf8(bytes)
            .map_err(|e| read_err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        Inventory::parse(path, &text)
    }

    /// Warnings about SSH options that turn host key checking off, one per
    /// option and value, naming the hosts. Print them once per run.
    pub fn host_key_warnings(&self) -> Vec<String> {
        let mut found: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
        for host in &self.hosts {
            for (key, value) in &host.ssh.options {
                if disables_host_key_check(key, value) {
                    found
                        .entry((key.clone(), value.clone()))
                        .or_default()
                        .push(&host.name);
                }
            }
        }
        found
            .into_iter()
            .map(|((key, value), hosts)| {
                let what = if key.eq_ignore_ascii_case("StrictHostKeyChecking") {
                    "host keys are not checked: a changed key (a machine in the middle) goes unnoticed"
                } else {
                    "no host key is remembered: every login trusts whatever key the host shows"
                };
                format!(
                    "{}: ssh option {key}={value} for {}: {what}. Fix: remove it from ssh.options; mesh accepts a new host's key once (accept-new) and refuses a changed one",
                    self.path.display(),
                    hosts.join(", ")
                )
            })
            .collect()
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

    /// The first of [`Inventory::bastions_of`]: the Redis traefik-kop
    /// writes to (`REDIS_IP`, `TRAEFIK_IP`).
    pub fn bastion_of<'a>(&'a self, host: &'a Host) -> Option<&'a Host> {
        self.bastions_of(host).into_iter().next()
    }

    /// The bastions a host's routes go to: its `traefik_host` (one or a
    /// list), itself when it is one, else every bastion of the inventory.
    pub fn bastions_of<'a>(&'a self, host: &'a Host) -> Vec<&'a Host> {
        if let Some(names) = &host.traefik_host {
            return names.iter().filter_map(|n| self.host(n)).collect();
        }
        if host.is_bastion() {
            return vec![host];
        }
        self.hosts.iter().filter(|h| h.is_bastion()).collect()
    }

    #[cfg(test)]
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

    #[cfg(test)]
    /// The value of template variable `name` for `host`, per [`Inventory::var_layers`].
    pub fn var<'a>(&'a self, host: &'a Host, name: &str) -> Option<&'a str> {
        self.var_layers(host)
            .into_iter()
            .find_map(|(_, vars)| vars.get(name))
            .map(String::as_str)
    }
}
