//! Turns the raw sections into the final [`Inventory`]: merges the
//! appearances of a host across groups, resolves SSH settings (host > groups >
//! top level) and runs the checks that need the whole host list (missing
//! address, `behind_nat`, `traefik_host`, duplicate SSH endpoints, no hosts).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use super::diag::{did_you_mean, Diag};
use super::schema::{RawGroup, RawHost, RawInventory, RawSsh, Sourced, SourcedMap};
use super::yaml::Loc;
use super::{
    AptSettings, Arch, DockerSettings, FirewallSettings, Group, Host, Inventory, OverlaySettings,
    SshSettings,
};

/// How a value is quoted in conflict messages.
trait Show {
    fn show(&self) -> String;
}

impl Show for String {
    fn show(&self) -> String {
        format!("\"{self}\"")
    }
}

impl Show for Vec<String> {
    fn show(&self) -> String {
        format!("[{}]", self.join(", "))
    }
}

macro_rules! show_display {
    ($($t:ty),*) => {$(
        impl Show for $t {
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
show_display!(u16, u64, bool, IpAddr, Ipv4Addr, Arch);

/// A host after merging all its appearances.
struct Merged {
    host: RawHost,
    /// Indices into the group list, in file order.
    groups: Vec<usize>,
    /// For each key path set so far ("zone", "ssh.port", "vars.X"), the group
    /// that set it, to name both sides of a conflict.
    origin: HashMap<String, usize>,
}

/// Merges one appearance of a host into the accumulated one.
struct MergeCx<'a> {
    host: &'a str,
    group: usize,
    group_names: &'a [String],
    origin: &'a mut HashMap<String, usize>,
    d: &'a mut Diag,
}

impl MergeCx<'_> {
    /// Equal values merge silently; different values are an error naming the
    /// key and both groups.
    fn value<T: PartialEq + Show>(
        &mut self,
        key: &str,
        acc: &mut Option<Sourced<T>>,
        new: Option<Sourced<T>>,
    ) {
        let Some(new) = new else { return };
        match acc {
            None => {
                self.origin.insert(key.to_owned(), self.group);
                *acc = Some(new);
            }
            Some(old) if old.value == new.value => {}
            Some(old) => {
                let first = self
                    .origin
                    .get(key)
                    .map_or("?", |&g| self.group_names[g].as_str());
                let second = &self.group_names[self.group];
                self.d.push(
                    new.loc,
                    format!(
                        "host \"{}\": key \"{key}\" is {} in group \"{first}\" (line {}) but {} in group \"{second}\"",
                        self.host,
                        old.value.show(),
                        old.loc.line,
                        new.value.show(),
                    ),
                    format!("give \"{key}\" the same value in both groups, or set it in only one of them."),
                );
            }
        }
    }

    /// Merges maps key by key, with the same conflict rule per key.
    fn map(&mut self, prefix: &str, acc: &mut SourcedMap, new: SourcedMap) {
        for (k, v) in new {
            let mut slot = acc.remove(&k);
            self.value(&format!("{prefix}.{k}"), &mut slot, Some(v));
            if let Some(slot) = slot {
                acc.insert(k, slot);
            }
        }
    }

    fn ssh(&mut self, acc: &mut RawSsh, new: RawSsh) {
        self.value("ssh.user", &mut acc.user, new.user);
        self.value("ssh.port", &mut acc.port, new.port);
        self.value(
            "ssh.identity_file",
            &mut acc.identity_file,
            new.identity_file,
        );
        self.map("ssh.options", &mut acc.options, new.options);
    }

    fn host(&mut self, acc: &mut RawHost, new: RawHost) {
        self.value("address", &mut acc.address, new.address);
        self.ssh(&mut acc.ssh, new.ssh);
        self.value("arch", &mut acc.arch, new.arch);
        self.value("behind_nat", &mut acc.behind_nat, new.behind_nat);
        self.value("public_ip", &mut acc.public_ip, new.public_ip);
        self.value("public_dns", &mut acc.public_dns, new.public_dns);
        self.value("zone", &mut acc.zone, new.zone);
        self.value("services", &mut acc.services, new.services);
        self.value("traefik_host", &mut acc.traefik_host, new.traefik_host);
        self.value("overlay_ip", &mut acc.overlay_ip, new.overlay_ip);
        self.map("vars", &mut acc.vars, new.vars);
        self.value(
            "firewall.ssh_port",
            &mut acc.firewall.ssh_port,
            new.firewall.ssh_port,
        );
        self.value(
            "firewall.deadman_seconds",
            &mut acc.firewall.deadman_seconds,
            new.firewall.deadman_seconds,
        );
        acc.public_given |= new.public_given;
        acc.address_given |= new.address_given;
    }
}

/// Two groups of some hosts disagreeing on an SSH setting; reported once with
/// every affected host.
struct Conflict {
    loc: Loc,
    message: String,
    field: String,
    hosts: Vec<String>,
}

/// Group-level SSH conflicts keyed by (field, first value's position, second
/// value's position).
type Conflicts = BTreeMap<(String, Loc, Loc), Conflict>;

/// Resolves one SSH field: host value, else the first group's (in file order)
/// with any disagreement between groups recorded, else the top-level value.
fn layered<T: Clone + PartialEq + Show>(
    field: &str,
    host_value: Option<&Sourced<T>>,
    group_values: &[(&str, Option<&Sourced<T>>)],
    top: Option<&Sourced<T>>,
    host_name: &str,
    conflicts: &mut Conflicts,
) -> Option<T> {
    if let Some(v) = host_value {
        // The host decides, so disagreeing groups do not matter.
        return Some(v.value.clone());
    }
    let mut chosen: Option<(&str, &Sourced<T>)> = None;
    for &(group, value) in group_values {
        let Some(value) = value else { continue };
        match chosen {
            None => chosen = Some((group, value)),
            Some((first_group, first)) if first.value != value.value => {
                let key = (field.to_owned(), first.loc, value.loc);
                conflicts
                    .entry(key)
                    .or_insert_with(|| Conflict {
                        loc: value.loc,
                        message: format!(
                            "groups \"{first_group}\" (line {}) and \"{group}\" set different ssh {field} ({} vs {})",
                            first.loc.line,
                            first.value.show(),
                            value.value.show()
                        ),
                        field: field.to_owned(),
                        hosts: Vec::new(),
                    })
                    .hosts
                    .push(host_name.to_owned());
            }
            Some(_) => {}
        }
    }
    chosen
        .or(top.map(|t| ("", t)))
        .map(|(_, v)| v.value.clone())
}

/// Resolves a host's SSH settings from its own, its groups' and the top-level ones.
fn resolve_ssh(
    name: &str,
    own: &RawSsh,
    groups: &[&RawGroup],
    top: &RawSsh,
    home: Option<&Path>,
    conflicts: &mut Conflicts,
) -> SshSettings {
    let user = layered(
        "user",
        own.user.as_ref(),
        &per_group(groups, |s| s.user.as_ref()),
        top.user.as_ref(),
        name,
        conflicts,
    );
    let port = layered(
        "port",
        own.port.as_ref(),
        &per_group(groups, |s| s.port.as_ref()),
        top.port.as_ref(),
        name,
        conflicts,
    );
    let identity_file = layered(
        "identity_file",
        own.identity_file.as_ref(),
        &per_group(groups, |s| s.identity_file.as_ref()),
        top.identity_file.as_ref(),
        name,
        conflicts,
    )
    .map(|p| expand_home(&p, home));

    // Options merge key by key; each key is resolved like a field.
    let mut keys: Vec<&String> = top.options.keys().collect();
    keys.extend(groups.iter().flat_map(|g| g.ssh.options.keys()));
    keys.extend(own.options.keys());
    keys.sort();
    keys.dedup();
    let mut options = BTreeMap::new();
    for key in keys {
        let field = format!("option {key}");
        let value = layered(
            &field,
            own.options.get(key),
            &per_group(groups, |s| s.options.get(key)),
            top.options.get(key),
            name,
            conflicts,
        );
        if let Some(value) = value {
            options.insert(key.clone(), value);
        }
    }
    SshSettings {
        user,
        port,
        identity_file,
        options,
    }
}

/// One SSH field as set by each of a host's groups, in file order.
fn per_group<'g, T>(
    groups: &[&'g RawGroup],
    field: impl Fn(&'g RawSsh) -> Option<&'g Sourced<T>>,
) -> Vec<(&'g str, Option<&'g Sourced<T>>)> {
    groups
        .iter()
        .map(|g| (g.name.as_str(), field(&g.ssh)))
        .collect()
}

/// `docker.signing_key`: relative to the inventory's folder (or `~/`), and
/// a public key mesh can verify with — checked now, before any connection.
fn signing_key(
    key: &Sourced<String>,
    inventory: &Path,
    home: Option<&Path>,
    d: &mut Diag,
) -> Option<PathBuf> {
    let path = inventory
        .parent()
        .unwrap_or(Path::new("."))
        .join(expand_home(&key.value, home));
    use crate::release::{ReleaseError, ReleaseKey};
    let (problem, fix) = match ReleaseKey::load(&path) {
        Ok(_) => return Some(path),
        Err(ReleaseError::KeyRead { source, .. }) => (
            format!("cannot read {}: {source}", path.display()),
            format!(
                "put the mirror's ASCII-armored public key at {} (the path is relative to the \
                 inventory file), or remove signing_key to use Docker's own key.",
                path.display()
            ),
        ),
        Err(ReleaseError::BadKey { reason, .. }) => (
            format!(
                "{} is not a usable OpenPGP public key ({reason})",
                path.display()
            ),
            "export the mirror's release key into it with gpg --armor --export FINGERPRINT."
                .to_owned(),
        ),
        Err(other) => (other.to_string(), "check the key file.".to_owned()),
    };
    d.push(key.loc, format!("docker: signing_key: {problem}"), fix);
    None
}

/// Expands a leading `~/` with the home directory, when it is known.
pub(crate) fn expand_home(path: &str, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(path),
    }
}

fn plain(map: &SourcedMap) -> BTreeMap<String, String> {
    map.iter()
        .map(|(k, v)| (k.clone(), v.value.clone()))
        .collect()
}

fn firewall(own: &super::schema::RawFirewall) -> FirewallSettings {
    FirewallSettings {
        ssh_port: own.ssh_port.as_ref().map(|s| s.value),
        deadman_seconds: own.deadman_seconds.as_ref().map(|s| s.value),
    }
}

/// Builds the inventory, reporting every remaining problem into `d`. The
/// result is only meaningful when `d` stays empty.
pub(crate) fn resolve(
    raw: RawInventory,
    path: &Path,
    home: Option<&Path>,
    d: &mut Diag,
) -> Inventory {
    let group_names: Vec<String> = raw.groups.iter().map(|g| g.name.clone()).collect();
    let top_fw = firewall(&raw.firewall);

    // Merge the appearances of each host, keeping first-appearance order.
    let mut merged: Vec<Merged> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut groups_out = Vec::with_capacity(raw.groups.len());
    let mut raw_groups = Vec::with_capacity(raw.groups.len());
    for (gi, mut group) in raw.groups.into_iter().enumerate() {
        let hosts = std::mem::take(&mut group.hosts);
        groups_out.push(Group {
            name: group.name.clone(),
            vars: plain(&group.vars),
            hosts: hosts.iter().map(|h| h.name.clone()).collect(),
        });
        for host in hosts {
            if !index.contains_key(&host.name) {
                index.insert(host.name.clone(), merged.len());
                merged.push(Merged {
                    host: RawHost {
                        name: host.name.clone(),
                        loc: host.loc,
                        ..RawHost::default()
                    },
                    groups: Vec::new(),
                    origin: HashMap::new(),
                });
            }
            // The first appearance merges into an empty host, which records
            // where each key came from for later conflict messages.
            let m = &mut merged[index[&host.name]];
            m.groups.push(gi);
            let name = m.host.name.clone();
            let mut cx = MergeCx {
                host: &name,
                group: gi,
                group_names: &group_names,
                origin: &mut m.origin,
                d,
            };
            cx.host(&mut m.host, host);
        }
        raw_groups.push(group);
    }

    if merged.is_empty() {
        match raw.groups_loc {
            Some(loc) => d.push(
                loc,
                "the inventory defines no hosts",
                "add at least one host under a group's hosts:, e.g. web: { hosts: { web-1: { address: 192.0.2.10 } } }.",
            ),
            None => d.push(
                Loc::START,
                "missing required top-level key \"groups\"",
                "add groups: with at least one group and host, e.g. groups: { web: { hosts: { web-1: { address: 192.0.2.10 } } } }.",
            ),
        }
    }

    let names: Vec<&str> = merged.iter().map(|m| m.host.name.as_str()).collect();
    // Hosts that look like bastions, offered when traefik_host is wrong.
    let bastions: Vec<&str> = merged
        .iter()
        .filter(|m| {
            m.groups.iter().any(|&g| group_names[g].contains("bastion"))
                || m.host
                    .services
                    .as_ref()
                    .is_some_and(|s| s.value.iter().any(|s| s.contains("traefik")))
        })
        .map(|m| m.host.name.as_str())
        .collect();

    let mut conflicts = Conflicts::new();
    let mut endpoints: HashMap<(String, u16), (&str, Loc)> = HashMap::new();
    let mut hosts = Vec::with_capacity(merged.len());
    for m in &merged {
        let h = &m.host;
        let name = h.name.as_str();
        if !h.address_given {
            d.push(
                h.loc,
                format!("host \"{name}\": missing required key \"address\""),
                format!("add address: <IP or DNS name> to host \"{name}\"."),
            );
        }
        if let Some(nat) = &h.behind_nat {
            if nat.value && !h.public_given {
                d.push(
                    nat.loc,
                    format!("host \"{name}\": behind_nat is true but neither public_ip nor public_dns is set"),
                    "add public_ip: <the NAT's public IP> or public_dns: <its DynDNS name>.",
                );
            }
        }
        for t in h.traefik_host.iter().flat_map(|t| {
            t.value.iter().map(|v| Sourced {
                value: v.clone(),
                loc: t.loc,
            })
        }) {
            if !index.contains_key(&t.value) {
                let pool = if bastions.is_empty() {
                    &names
                } else {
                    &bastions
                };
                let fix = did_you_mean(&t.value, pool.iter().copied())
                    .unwrap_or_else(|| format!("use one of: {}.", pool.join(", ")));
                d.push(
                    t.loc,
                    format!(
                        "host \"{name}\": traefik_host \"{}\" is not a host in this inventory",
                        t.value
                    ),
                    fix,
                );
            }
        }

        let groups: Vec<&RawGroup> = m.groups.iter().map(|&g| &raw_groups[g]).collect();
        let ssh = resolve_ssh(name, &h.ssh, &groups, &raw.ssh, home, &mut conflicts);

        if let Some(address) = &h.address {
            let port = ssh.port.unwrap_or(22);
            let key = (address.value.to_lowercase(), port);
            if let Some((other, other_loc)) = endpoints.get(&key) {
                d.push(
                    address.loc,
                    format!(
                        "host \"{name}\": address {} port {port} is already used by host \"{other}\" (line {})",
                        address.value, other_loc.line
                    ),
                    "remove the duplicate host, or give one of them another address or ssh port.",
                );
            } else {
                endpoints.insert(key, (name, address.loc));
            }
        }

        let own_fw = firewall(&h.firewall);
        hosts.push(Host {
            name: name.to_owned(),
            address: h
                .address
                .as_ref()
                .map(|a| a.value.clone())
                .unwrap_or_default(),
            ssh,
            groups: m.groups.iter().map(|&g| group_names[g].clone()).collect(),
            arch: h.arch.as_ref().map(|a| a.value),
            behind_nat: h.behind_nat.as_ref().is_some_and(|b| b.value),
            public_ip: h.public_ip.as_ref().map(|p| p.value),
            public_dns: h.public_dns.as_ref().map(|p| p.value.clone()),
            zone: h.zone.as_ref().map(|z| z.value.clone()),
            services: h
                .services
                .as_ref()
                .map(|s| s.value.clone())
                .unwrap_or_default(),
            traefik_host: h.traefik_host.as_ref().map(|t| t.value.clone()),
            overlay_ip: h.overlay_ip.as_ref().map(|o| o.value),
            vars: plain(&h.vars),
            firewall: FirewallSettings {
                ssh_port: own_fw.ssh_port.or(top_fw.ssh_port),
                deadman_seconds: own_fw.deadman_seconds.or(top_fw.deadman_seconds),
            },
        });
    }

    for c in conflicts.into_values() {
        let hosts: Vec<String> = c.hosts.iter().map(|h| format!("\"{h}\"")).collect();
        let fix_field = c.field.strip_prefix("option ").map_or_else(
            || c.field.clone(),
            |opt| format!("options: {{ {opt}: ... }}"),
        );
        d.push(
            c.loc,
            format!("{} for host {}", c.message, hosts.join(", ")),
            format!(
                "make the groups agree, or set ssh: {{ {fix_field}: ... }} on the host to choose."
            ),
        );
    }

    Inventory {
        path: path.to_path_buf(),
        hosts,
        groups: groups_out,
        vars: plain(&raw.vars),
        firewall: top_fw,
        apt: AptSettings {
            cache_valid_seconds: raw.cache_valid_seconds,
        },
        docker: DockerSettings {
            mirror: raw.docker_mirror,
            packages: raw.docker_packages,
            signing_key: raw
                .docker_signing_key
                .and_then(|key| signing_key(&key, path, home, d)),
        },
        overlay: OverlaySettings {
            net: raw.overlay_net,
        },
        ingress: raw.ingress,
        backup: raw.backup,
    }
}
