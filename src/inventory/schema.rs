//! Reads the YAML tree into raw, still unmerged inventory sections.
//!
//! This is where the per-key checks live: allowed keys, value types, IP and
//! DNS syntax, host names, architectures. Every value keeps its location so
//! that the later merge and cross-host checks can point at it too. Problems
//! are collected in a [`Diag`]; a bad value is reported and then skipped.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use super::diag::{
    closest, hostname_suggestion, is_dns_name, is_hostname, shown, unknown_key_fix, Diag,
};
use super::yaml::{Loc, Node, ScalarKind, Value};
use super::Arch;

pub(crate) const TOP_KEYS: &[&str] = &[
    "ssh", "vars", "firewall", "apt", "docker", "overlay", "ingress", "backup", "groups",
];
pub(crate) const GROUP_KEYS: &[&str] = &["hosts", "vars", "ssh"];
pub(crate) const HOST_KEYS: &[&str] = &[
    "address",
    "ssh",
    "arch",
    "behind_nat",
    "public_ip",
    "public_dns",
    "zone",
    "services",
    "traefik_host",
    "overlay_ip",
    "vars",
    "firewall",
];
pub(crate) const SSH_KEYS: &[&str] = &["user", "port", "identity_file", "options"];
pub(crate) const FIREWALL_KEYS: &[&str] = &["ssh_port", "deadman_seconds"];
pub(crate) const APT_KEYS: &[&str] = &["cache_valid_seconds"];
pub(crate) const DOCKER_KEYS: &[&str] = &["mirror", "packages", "signing_key"];
pub(crate) const OVERLAY_KEYS: &[&str] = &["net"];
pub(crate) const INGRESS_KEYS: &[&str] = &["publisher", "crowdsec", "traefik_api"];
pub(crate) const BACKUP_KEYS: &[&str] = &["schedule", "keep"];
pub(crate) const KEEP_KEYS: &[&str] = &["last", "hourly", "daily", "weekly", "monthly", "yearly"];

/// A value together with the position it was read from.
#[derive(Debug, Clone)]
pub(crate) struct Sourced<T> {
    pub value: T,
    pub loc: Loc,
}

/// A string-to-string map whose values remember their positions.
pub(crate) type SourcedMap = BTreeMap<String, Sourced<String>>;

#[derive(Debug, Clone, Default)]
pub(crate) struct RawSsh {
    pub user: Option<Sourced<String>>,
    pub port: Option<Sourced<u16>>,
    pub identity_file: Option<Sourced<String>>,
    pub options: SourcedMap,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct RawFirewall {
    pub ssh_port: Option<Sourced<u16>>,
    pub deadman_seconds: Option<Sourced<u64>>,
}

/// One appearance of a host under one group.
#[derive(Debug, Clone, Default)]
pub(crate) struct RawHost {
    pub name: String,
    /// Position of the host's name (its key under `hosts:`).
    pub loc: Loc,
    pub address: Option<Sourced<String>>,
    pub ssh: RawSsh,
    pub arch: Option<Sourced<Arch>>,
    pub behind_nat: Option<Sourced<bool>>,
    pub public_ip: Option<Sourced<IpAddr>>,
    pub public_dns: Option<Sourced<String>>,
    pub zone: Option<Sourced<String>>,
    pub services: Option<Sourced<Vec<String>>>,
    pub traefik_host: Option<Sourced<Vec<String>>>,
    pub overlay_ip: Option<Sourced<Ipv4Addr>>,
    pub vars: SourcedMap,
    pub firewall: RawFirewall,
    /// `public_ip` or `public_dns` was given, even if its value was invalid;
    /// keeps the `behind_nat` check from piling onto a syntax problem.
    pub public_given: bool,
    /// An `address` key (or a misspelling of it) was given, even if invalid;
    /// suppresses the "missing address" problem.
    pub address_given: bool,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct RawGroup {
    pub name: String,
    pub vars: SourcedMap,
    pub ssh: RawSsh,
    pub hosts: Vec<RawHost>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct RawInventory {
    pub ssh: RawSsh,
    pub vars: SourcedMap,
    pub firewall: RawFirewall,
    pub cache_valid_seconds: Option<u64>,
    pub docker_mirror: Option<String>,
    pub docker_packages: Option<Vec<String>>,
    /// As written; resolved against the inventory's folder and checked later.
    pub docker_signing_key: Option<Sourced<String>>,
    pub overlay_net: Option<String>,
    pub ingress: super::IngressSettings,
    pub backup: super::BackupPolicy,
    pub groups: Vec<RawGroup>,
    /// Position of the `groups:` key, if present.
    pub groups_loc: Option<Loc>,
}

/// One `key: value` entry of a mapping, with the key as text.
pub(crate) struct Entry<'n> {
    pub key: String,
    pub key_loc: Loc,
    pub value: &'n Node,
}

/// Reads the whole document.
pub(crate) fn read_inventory(root: &Node, d: &mut Diag) -> RawInventory {
    let mut inv = RawInventory::default();
    if root.is_null() {
        return inv;
    }
    for e in entries(root, "top level", d) {
        let v = e.value;
        match e.key.as_str() {
            "ssh" => inv.ssh = read_ssh(v, "ssh", d),
            "vars" => inv.vars = read_string_map(v, "vars", d),
            "firewall" => inv.firewall = read_firewall(v, "firewall", d),
            "apt" => {
                for f in entries(v, "apt", d) {
                    match f.key.as_str() {
                        "cache_valid_seconds" => {
                            inv.cache_valid_seconds = read_u64(f.value, "apt", &f.key, d)
                        }
                        _ => unknown_key(d, "apt", &f, APT_KEYS),
                    }
                }
            }
            "docker" => {
                for f in entries(v, "docker", d) {
                    match f.key.as_str() {
                        "mirror" => inv.docker_mirror = read_url(f.value, "docker", &f.key, d),
                        "packages" => {
                            inv.docker_packages = read_string_list(f.value, "docker", &f.key, d)
                        }
                        "signing_key" => {
                            inv.docker_signing_key =
                                sourced(f.value, read_string(f.value, "docker", &f.key, d))
                        }
                        _ => unknown_key(d, "docker", &f, DOCKER_KEYS),
                    }
                }
            }
            "overlay" => {
                for f in entries(v, "overlay", d) {
                    match f.key.as_str() {
                        "net" => inv.overlay_net = read_overlay_net(f.value, "overlay", &f.key, d),
                        _ => unknown_key(d, "overlay", &f, OVERLAY_KEYS),
                    }
                }
            }
            "ingress" => {
                for f in entries(v, "ingress", d) {
                    match f.key.as_str() {
                        "publisher" => match read_string(f.value, "ingress", &f.key, d).as_deref() {
                            Some("mesh") => inv.ingress.publisher = super::Publisher::Mesh,
                            Some("traefik-kop") => {
                                inv.ingress.publisher = super::Publisher::TraefikKop
                            }
                            Some(other) => d.push(
                                f.value.loc,
                                format!("ingress: publisher \"{other}\" is not known (allowed: mesh, traefik-kop)"),
                                "write publisher: mesh (the controller writes the routes) or publisher: traefik-kop.",
                            ),
                            None => {}
                        },
                        "crowdsec" => {
                            if let Some(b) = read_bool(f.value, "ingress", &f.key, d) {
                                inv.ingress.crowdsec = b;
                            }
                        }
                        "traefik_api" => {
                            if let Some(url) = read_string(f.value, "ingress", &f.key, d) {
                                match super::TraefikApi::parse(&url) {
                                    Ok(api) => inv.ingress.traefik_api = Some(api),
                                    Err(why) => d.push(
                                        f.value.loc,
                                        format!("ingress: traefik_api \"{url}\" {why}"),
                                        "write the address of Traefik's API as the bastion itself reaches it, e.g. traefik_api: http://127.0.0.1:8080",
                                    ),
                                }
                            }
                        }
                        _ => unknown_key(d, "ingress", &f, INGRESS_KEYS),
                    }
                }
            }
            "backup" => inv.backup = read_backup(v, d),
            "groups" => {
                inv.groups_loc = Some(e.key_loc);
                for g in entries(v, "groups", d) {
                    inv.groups.push(read_group(&g, d));
                }
            }
            _ => unknown_key(d, "top level", &e, TOP_KEYS),
        }
    }
    inv
}

/// `backup: { schedule, keep }`: when each host's timer fires and what
/// `forget` keeps; what is not written keeps its default.
fn read_backup(v: &Node, d: &mut Diag) -> super::BackupPolicy {
    let mut policy = super::BackupPolicy::default();
    for f in entries(v, "backup", d) {
        match f.key.as_str() {
            "schedule" => {
                if let Some(s) = read_string(f.value, "backup", &f.key, d) {
                    if super::BackupPolicy::schedule_ok(&s) {
                        policy.schedule = s;
                    } else {
                        d.push(
                            f.value.loc,
                            format!("backup: schedule \"{}\" is not a systemd calendar expression", shown(&s)),
                            "write one line of systemd calendar syntax, e.g. schedule: \"*-*-* 03:00\" (see `man systemd.time`).",
                        );
                    }
                }
            }
            "keep" => {
                let mut keep = super::Keep::default();
                for k in entries(f.value, "backup keep", d) {
                    let Some(n) = read_u64(k.value, "backup keep", &k.key, d) else {
                        continue;
                    };
                    if n == 0 {
                        d.push(
                            k.value.loc,
                            format!("backup keep: {} must be at least 1", k.key),
                            "write 1 or more, or leave the key out.",
                        );
                        continue;
                    }
                    match k.key.as_str() {
                        "last" => keep.last = Some(n),
                        "hourly" => keep.hourly = Some(n),
                        "daily" => keep.daily = Some(n),
                        "weekly" => keep.weekly = Some(n),
                        "monthly" => keep.monthly = Some(n),
                        "yearly" => keep.yearly = Some(n),
                        _ => unknown_key(d, "backup keep", &k, KEEP_KEYS),
                    }
                }
                if keep.is_empty() {
                    d.push(
                        f.value.loc,
                        "backup: keep lists nothing to keep: forget would remove every snapshot",
                        "write e.g. keep: { daily: 7, weekly: 4, monthly: 6 }, or leave keep out for that default.",
                    );
                } else {
                    policy.keep = keep;
                }
            }
            _ => unknown_key(d, "backup", &f, BACKUP_KEYS),
        }
    }
    policy
}

fn read_group(g: &Entry, d: &mut Diag) -> RawGroup {
    let what = format!("group \"{}\"", g.key);
    let mut group = RawGroup {
        name: g.key.clone(),
        ..RawGroup::default()
    };
    for e in entries(g.value, &what, d) {
        match e.key.as_str() {
            "vars" => group.vars = read_string_map(e.value, &format!("{what} vars"), d),
            "ssh" => group.ssh = read_ssh(e.value, &format!("{what} ssh"), d),
            "hosts" => {
                for h in entries(e.value, &format!("{what} hosts"), d) {
                    group.hosts.push(read_host(&h, &what, d));
                }
            }
            _ => unknown_key(d, &what, &e, GROUP_KEYS),
        }
    }
    group
}

fn read_host(h: &Entry, group_what: &str, d: &mut Diag) -> RawHost {
    if !is_hostname(&h.key) {
        let fix = match hostname_suggestion(&h.key) {
            Some(s) => format!("rename it, e.g. to \"{s}\" (it becomes the OS hostname)."),
            None => {
                "rename it using letters, digits and '-' (it becomes the OS hostname).".to_owned()
            }
        };
        d.push(
            h.key_loc,
            format!(
                "{group_what}: host name \"{}\" is not a valid hostname \
                 (letters, digits and '-', at most 63 characters, no leading or trailing '-')",
                h.key
            ),
            fix,
        );
    }
    let what = format!("host \"{}\"", h.key);
    let mut host = RawHost {
        name: h.key.clone(),
        loc: h.key_loc,
        ..RawHost::default()
    };
    // A host that is not a mapping gets one problem, not a second one about
    // its missing address.
    host.address_given = !matches!(h.value.value, Value::Map(_)) && !h.value.is_null();
    if let Value::Scalar {
        kind: ScalarKind::Str,
        text,
    } = &h.value.value
    {
        // `web-1: 192.0.2.7` is a likely shorthand; say how to spell it.
        d.push(
            h.value.loc,
            format!("{what}: expected a mapping of host settings, got a string"),
            format!("write {}: {{ address: {text} }}.", h.key),
        );
        return host;
    }
    for e in entries(h.value, &what, d) {
        let v = e.value;
        match e.key.as_str() {
            "address" => {
                host.address_given = true;
                if let Some(a) = read_string(v, &what, &e.key, d) {
                    if a.parse::<IpAddr>().is_err() && !is_dns_name(&a) {
                        d.push(
                            v.loc,
                            format!("{what}: address \"{a}\" is neither an IP address nor a valid DNS name"),
                            "write an IPv4/IPv6 address such as 192.0.2.10 or a DNS name such as web-1.example.org.",
                        );
                    }
                    host.address = sourced(v, Some(a));
                }
            }
            "ssh" => host.ssh = read_ssh(v, &format!("{what} ssh"), d),
            "arch" => {
                if let Some(a) = read_string(v, &what, &e.key, d) {
                    match a.parse::<Arch>() {
                        Ok(arch) => host.arch = sourced(v, Some(arch)),
                        Err(_) => d.push(
                            v.loc,
                            format!(
                                "{what}: arch \"{a}\" is not supported (allowed: x86_64, aarch64)"
                            ),
                            arch_fix(&a),
                        ),
                    }
                }
            }
            "behind_nat" => host.behind_nat = sourced(v, read_bool(v, &what, &e.key, d)),
            "public_ip" => {
                host.public_given = true;
                host.public_ip = sourced(v, read_ip(v, &what, &e.key, d));
            }
            "public_dns" => {
                host.public_given = true;
                if let Some(name) = read_string(v, &what, &e.key, d) {
                    if is_dns_name(&name) {
                        host.public_dns = sourced(v, Some(name));
                    } else {
                        d.push(
                            v.loc,
                            format!("{what}: public_dns \"{name}\" is not a valid DNS name"),
                            "write a DNS name such as home.dyn.example.org (use public_ip for an address).",
                        );
                    }
                }
            }
            "zone" => {
                if let Some(zone) = read_string(v, &what, &e.key, d) {
                    if is_zone(&zone) {
                        host.zone = sourced(v, Some(zone));
                    } else {
                        d.push(
                            v.loc,
                            format!(
                                "{what}: zone \"{}\" may only use letters, digits, '-', '_' and '.', 1 to 64 of them \
                                 (garage would read another zone back and re-apply its layout on every run)",
                                shown(&zone)
                            ),
                            zone_fix(&zone),
                        );
                    }
                }
            }
            "services" => host.services = sourced(v, read_string_list(v, &what, &e.key, d)),
            // One bastion, or a list of them (its routes go to each).
            "traefik_host" => {
                let names = match &v.value {
                    Value::Seq(_) => read_string_list(v, &what, &e.key, d),
                    _ => read_string(v, &what, &e.key, d).map(|s| vec![s]),
                };
                host.traefik_host = sourced(v, names)
            }
            "overlay_ip" => {
                if let Some(ip) = read_ip(v, &what, &e.key, d) {
                    match ip {
                        IpAddr::V4(v4) => host.overlay_ip = sourced(v, Some(v4)),
                        IpAddr::V6(_) => d.push(
                            v.loc,
                            format!("{what}: overlay_ip \"{ip}\" is not an IPv4 address"),
                            "write an IPv4 address inside the overlay network, such as 10.0.0.5.",
                        ),
                    }
                }
            }
            "vars" => host.vars = read_string_map(v, &format!("{what} vars"), d),
            "firewall" => host.firewall = read_firewall(v, &format!("{what} firewall"), d),
            _ => {
                // A misspelt address is reported once, as the typo.
                host.address_given |= closest(&e.key, HOST_KEYS.iter().copied()) == Some("address");
                unknown_key(d, &what, &e, HOST_KEYS);
            }
        }
    }
    host
}

/// Lowest `deadman_seconds`: the time a fresh SSH login gets to prove the
/// new firewall lets it in before ufw is disabled again.
pub(crate) const MIN_DEADMAN_SECONDS: u64 = 30;

/// A garage zone: 1 to 64 letters, digits, '-', '_' or '.'.
pub(crate) fn is_zone(zone: &str) -> bool {
    (1..=64).contains(&zone.len())
        && zone
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Fix text for an invalid zone: the zone with every other character as '-'.
fn zone_fix(given: &str) -> String {
    let mapped: String = given
        .trim()
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mapped = mapped.trim_matches('-');
    if is_zone(mapped) {
        format!("write it as \"{mapped}\" (the same zone name on every host of that zone).")
    } else {
        "name the zone with letters, digits, '-', '_' or '.', e.g. zone: fra-1.".to_owned()
    }
}

/// Fix text for an unsupported architecture name.
fn arch_fix(given: &str) -> String {
    let suggestion = match given.to_lowercase().as_str() {
        "amd64" | "x64" | "x86-64" | "x86_64" => Some("x86_64"),
        "arm64" | "armv8" | "aarch64" => Some("aarch64"),
        other => closest(other, ["x86_64", "aarch64"]),
    };
    match suggestion {
        Some(s) => format!("did you mean \"{s}\"?"),
        None => "write x86_64 or aarch64, or remove arch to detect it with uname -m.".to_owned(),
    }
}

fn read_ssh(node: &Node, what: &str, d: &mut Diag) -> RawSsh {
    let mut ssh = RawSsh::default();
    for e in entries(node, what, d) {
        let v = e.value;
        match e.key.as_str() {
            "user" => ssh.user = sourced(v, read_string(v, what, &e.key, d)),
            "port" => ssh.port = sourced(v, read_port(v, what, &e.key, d)),
            "identity_file" => ssh.identity_file = sourced(v, read_string(v, what, &e.key, d)),
            "options" => ssh.options = read_string_map(v, &format!("{what} options"), d),
            _ => unknown_key(d, what, &e, SSH_KEYS),
        }
    }
    ssh
}

fn read_firewall(node: &Node, what: &str, d: &mut Diag) -> RawFirewall {
    let mut fw = RawFirewall::default();
    for e in entries(node, what, d) {
        let v = e.value;
        match e.key.as_str() {
            "ssh_port" => fw.ssh_port = sourced(v, read_port(v, what, &e.key, d)),
            "deadman_seconds" => match read_u64(v, what, &e.key, d) {
                Some(n) if n < MIN_DEADMAN_SECONDS => d.push(
                    v.loc,
                    format!(
                        "{what}: deadman_seconds {n} is too short: the fresh SSH login that confirms \
                         a firewall change may not make it in time, and ufw is disabled again"
                    ),
                    format!(
                        "use at least {MIN_DEADMAN_SECONDS}, e.g. deadman_seconds: 90 (the default)."
                    ),
                ),
                n => fw.deadman_seconds = sourced(v, n),
            },
            _ => unknown_key(d, what, &e, FIREWALL_KEYS),
        }
    }
    fw
}

/// Attaches the node's position to a successfully read value.
fn sourced<T>(node: &Node, value: Option<T>) -> Option<Sourced<T>> {
    value.map(|value| Sourced {
        value,
        loc: node.loc,
    })
}

/// Reports an unknown key, listing the allowed ones and the likely intended one.
pub(crate) fn unknown_key(d: &mut Diag, what: &str, e: &Entry, allowed: &[&str]) {
    d.push(
        e.key_loc,
        format!(
            "{what}: unknown key \"{}\" (allowed: {})",
            shown(&e.key),
            allowed.join(", ")
        ),
        unknown_key_fix(&e.key, allowed),
    );
}

/// The entries of a mapping (a null counts as an empty mapping). Reports a
/// non-mapping, non-scalar keys and duplicate keys; duplicates are skipped.
pub(crate) fn entries<'n>(node: &'n Node, what: &str, d: &mut Diag) -> Vec<Entry<'n>> {
    let pairs = match &node.value {
        Value::Map(pairs) => pairs,
        _ if node.is_null() => return Vec::new(),
        _ => {
            d.push(
                node.loc,
                format!(
                    "{what}: expected a mapping (key: value pairs), got {}",
                    node.kind_name()
                ),
                "write it as indented \"key: value\" lines or as { key: value }.",
            );
            return Vec::new();
        }
    };
    let mut out: Vec<Entry> = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        let Value::Scalar { text, .. } = &k.value else {
            d.push(
                k.loc,
                format!("{what}: a key must be plain text, got {}", k.kind_name()),
                "use a simple name as the key.",
            );
            continue;
        };
        if let Some(first) = out.iter().find(|e| e.key == *text) {
            d.push(
                k.loc,
                format!(
                    "{what}: key \"{text}\" appears twice (first at line {})",
                    first.key_loc.line
                ),
                "remove one of them or merge their contents.",
            );
            continue;
        }
        out.push(Entry {
            key: text.clone(),
            key_loc: k.loc,
            value: v,
        });
    }
    out
}

/// A scalar as text: strings as-is, numbers and booleans in their source
/// spelling. Nulls, lists and mappings are reported.
pub(crate) fn read_string(node: &Node, what: &str, key: &str, d: &mut Diag) -> Option<String> {
    match &node.value {
        Value::Scalar {
            kind: ScalarKind::Null,
            ..
        } => {
            d.push(
                node.loc,
                format!("{what}: \"{key}\" has no value"),
                format!("give {key} a value, or remove the key (write \"\" for an empty string)."),
            );
            None
        }
        Value::Scalar { text, .. } => Some(text.clone()),
        _ => {
            d.push(
                node.loc,
                format!(
                    "{what}: \"{key}\" expects a single value, got {}",
                    node.kind_name()
                ),
                format!("write {key}: VALUE on one line."),
            );
            None
        }
    }
}

pub(crate) fn read_bool(node: &Node, what: &str, key: &str, d: &mut Diag) -> Option<bool> {
    if let Value::Scalar {
        kind: ScalarKind::Bool(b),
        ..
    } = node.value
    {
        return Some(b);
    }
    d.push(
        node.loc,
        format!(
            "{what}: \"{key}\" expects true or false, got {}",
            node.kind_name()
        ),
        format!("write {key}: true or {key}: false (unquoted)."),
    );
    None
}

pub(crate) fn read_u64(node: &Node, what: &str, key: &str, d: &mut Diag) -> Option<u64> {
    if let Value::Scalar { text, kind } = &node.value {
        if matches!(kind, ScalarKind::Int(_) | ScalarKind::Str) {
            if let Ok(n) = text.trim().parse::<u64>() {
                return Some(n);
            }
        }
    }
    d.push(
        node.loc,
        format!(
            "{what}: \"{key}\" expects a whole number of 0 or more, got {}",
            describe(node)
        ),
        format!("write {key}: followed by a number such as 60."),
    );
    None
}

pub(crate) fn read_port(node: &Node, what: &str, key: &str, d: &mut Diag) -> Option<u16> {
    if let Value::Scalar { text, kind } = &node.value {
        if matches!(kind, ScalarKind::Int(_) | ScalarKind::Str) {
            if let Ok(n) = text.trim().parse::<u16>() {
                if n > 0 {
                    return Some(n);
                }
            }
        }
    }
    d.push(
        node.loc,
        format!(
            "{what}: \"{key}\" expects a port number 1-65535, got {}",
            describe(node)
        ),
        format!("write {key}: followed by a port such as 22."),
    );
    None
}

fn read_ip(node: &Node, what: &str, key: &str, d: &mut Diag) -> Option<IpAddr> {
    let text = read_string(node, what, key, d)?;
    match text.trim().parse::<IpAddr>() {
        Ok(ip) => Some(ip),
        Err(_) => {
            d.push(
                node.loc,
                format!("{what}: {key} \"{text}\" is not a valid IP address"),
                "write an IPv4 or IPv6 address such as 198.51.100.7.",
            );
            None
        }
    }
}

fn read_url(node: &Node, what: &str, key: &str, d: &mut Diag) -> Option<String> {
    let text = read_string(node, what, key, d)?;
    if text.starts_with("https://") || text.starts_with("http://") {
        return Some(text);
    }
    d.push(
        node.loc,
        format!(
            "{what}: {key} \"{}\" is not an http(s) URL",
            crate::mirror::redact_url(&text)
        ),
        format!("write a URL such as {key}: https://download.docker.com/linux/debian."),
    );
    None
}

/// The overlay network: an IPv4 CIDR net wesher accepts (prefix length a
/// multiple of 8), such as 10.0.0.0/8. Kept as written: wesher gets the text.
fn read_overlay_net(node: &Node, what: &str, key: &str, d: &mut Diag) -> Option<String> {
    let text = read_string(node, what, key, d)?;
    match text.parse::<crate::overlay::OverlayNet>() {
        Ok(_) => Some(text),
        Err(e) => {
            d.push(
                node.loc,
                format!("{what}: {key}: {e}"),
                format!("write an IPv4 network whose prefix length is a multiple of 8, such as {key}: 10.0.0.0/8."),
            );
            None
        }
    }
}

/// A list of scalars (a null counts as an empty list).
pub(crate) fn read_string_list(
    node: &Node,
    what: &str,
    key: &str,
    d: &mut Diag,
) -> Option<Vec<String>> {
    let items = match &node.value {
        Value::Seq(items) => items,
        _ if node.is_null() => return Some(Vec::new()),
        _ => {
            d.push(
                node.loc,
                format!("{what}: \"{key}\" expects a list, got {}", describe(node)),
                format!("write {key}: [a, b] or one \"- item\" line per entry."),
            );
            return None;
        }
    };
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for item in items {
        match read_string(item, what, &format!("{key} entry"), d) {
            Some(s) => out.push(s),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// A mapping of names to scalar values, stringified (a null counts as empty).
fn read_string_map(node: &Node, what: &str, d: &mut Diag) -> SourcedMap {
    let mut out = SourcedMap::new();
    for e in entries(node, what, d) {
        if let Some(value) = read_string(e.value, what, &e.key, d) {
            out.insert(
                e.key,
                Sourced {
                    value,
                    loc: e.value.loc,
                },
            );
        }
    }
    out
}

/// The node's type, and its text if it is a scalar, for error messages.
fn describe(node: &Node) -> String {
    match &node.value {
        Value::Scalar { text, kind } if *kind != ScalarKind::Null => {
            format!("{} \"{text}\"", node.kind_name())
        }
        _ => node.kind_name().to_owned(),
    }
}
