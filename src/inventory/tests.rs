//! Unit tests for inventory loading, validation, resolution and selection.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use super::{Arch, Inventory, InventoryError};
use crate::template::Source;

const HOME: &str = "/home/tester";

/// The example from the specification.
const BRIEF: &str = r#"
ssh: { user: root, port: 22, identity_file: ~/.ssh/id_ed25519, options: { KexAlgorithms: curve25519-sha256 } }
vars: { SMTP_HOST: mail.example.org }
firewall: { ssh_port: 22, deadman_seconds: 90 }
apt: { cache_valid_seconds: 3600 }
docker: { mirror: "https://download.docker.com/linux/debian", packages: [containerd.io, docker-ce] }
overlay: { net: 10.0.0.0/8 }
groups:
  bastion:
    hosts:
      edge-1: { address: 203.0.113.10, zone: fra, services: [traefik, redis] }
  web:
    vars: { WORKERS: "4" }
    ssh: { user: deploy }
    hosts:
      web-1: { address: 198.51.100.7, zone: ams, services: [webapp], traefik_host: edge-1 }
      home-1: { address: 192.168.1.20, zone: home, behind_nat: true, public_ip: 198.51.100.99,
                public_dns: home.dyn.example.org, ssh: { port: 2222 } }
"#;

fn parse(text: &str) -> Result<Inventory, InventoryError> {
    Inventory::parse_with_home(Path::new("inv.yml"), text, Some(Path::new(HOME)))
}

fn ok(text: &str) -> Inventory {
    match parse(text) {
        Ok(inv) => inv,
        Err(e) => panic!("expected a valid inventory, got:\n{e}"),
    }
}

fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Err(InventoryError::Invalid { problems }) => problems,
        Err(e) => panic!("expected Invalid, got {e:?}"),
        Ok(_) => panic!("expected problems, the inventory loaded"),
    }
}

/// The single problem reported for `text`.
fn problem(text: &str) -> String {
    let p = problems(text);
    assert_eq!(
        p.len(),
        1,
        "expected exactly one problem, got:\n{}",
        p.join("\n")
    );
    p.into_iter().next().unwrap()
}

/// `inv.yml:LINE:COL:` of the `nth` (0-based) occurrence of `needle` in `text`.
fn at_nth(text: &str, needle: &str, nth: usize) -> String {
    let offset = text
        .match_indices(needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("{needle:?} not in text"))
        .0;
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap().chars().count() + 1;
    format!("inv.yml:{line}:{col}:")
}

fn at(text: &str, needle: &str) -> String {
    at_nth(text, needle, 0)
}

/// A minimal valid inventory around one host's settings.
fn one_host(settings: &str) -> String {
    format!("groups:\n  web:\n    hosts:\n      web-1: {{ {settings} }}\n")
}

fn assert_problem(p: &str, loc: &str, parts: &[&str]) {
    assert!(p.starts_with(loc), "expected {loc} in:\n{p}");
    for part in parts {
        assert!(p.contains(part), "expected {part:?} in:\n{p}");
    }
    assert_eq!(p.matches(". Fix: ").count(), 1, "one fix per problem:\n{p}");
}

#[test]
fn brief_example_resolves() {
    let inv = ok(BRIEF);
    assert_eq!(inv.path, PathBuf::from("inv.yml"));
    let names: Vec<&str> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["edge-1", "web-1", "home-1"]);
    let groups: Vec<&str> = inv.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(groups, ["bastion", "web"]);
    assert_eq!(inv.groups[1].hosts, ["web-1", "home-1"]);
    assert_eq!(inv.groups[1].vars["WORKERS"], "4");
    assert_eq!(inv.vars["SMTP_HOST"], "mail.example.org");
    assert_eq!(inv.firewall.ssh_port, Some(22));
    assert_eq!(inv.firewall.deadman_seconds, Some(90));
    assert_eq!(inv.apt.cache_valid_seconds, Some(3600));
    assert_eq!(
        inv.docker.mirror.as_deref(),
        Some("https://download.docker.com/linux/debian")
    );
    assert_eq!(
        inv.docker.packages,
        Some(vec!["containerd.io".to_owned(), "docker-ce".to_owned()])
    );
    assert_eq!(inv.overlay.net.as_deref(), Some("10.0.0.0/8"));

    let edge = inv.host("edge-1").unwrap();
    assert_eq!(edge.address, "203.0.113.10");
    assert_eq!(edge.groups, ["bastion"]);
    assert_eq!(edge.ssh.user.as_deref(), Some("root"));
    assert_eq!(edge.ssh.port, Some(22));
    assert_eq!(
        edge.ssh.identity_file,
        Some(PathBuf::from("/home/tester/.ssh/id_ed25519"))
    );
    assert_eq!(edge.ssh.options["KexAlgorithms"], "curve25519-sha256");
    assert_eq!(edge.services, ["traefik", "redis"]);
    assert_eq!(edge.zone.as_deref(), Some("fra"));
    assert_eq!(edge.arch, None);
    assert!(!edge.behind_nat);
    assert_eq!(edge.firewall.deadman_seconds, Some(90));

    let web = inv.host("web-1").unwrap();
    assert_eq!(web.ssh.user.as_deref(), Some("deploy"));
    assert_eq!(web.ssh.port, Some(22));
    assert_eq!(web.traefik_host, Some(vec!["edge-1".to_string()]));

    let home = inv.host("home-1").unwrap();
    assert!(home.behind_nat);
    assert_eq!(
        home.public_ip,
        Some("198.51.100.99".parse::<IpAddr>().unwrap())
    );
    assert_eq!(home.public_dns.as_deref(), Some("home.dyn.example.org"));
    assert_eq!(home.ssh.port, Some(2222));
    assert_eq!(home.ssh.user.as_deref(), Some("deploy"));
    assert!(home.vars.is_empty());
    assert!(inv.host("nope").is_none());
}

#[test]
fn example_file_loads() {
    let text = include_str!("../../inventory/example.yml");
    let inv = ok(text);
    assert_eq!(inv.hosts.len(), 3);
    let edge = inv.host("edge-1").unwrap();
    assert_eq!(edge.groups, ["bastion", "storage"]);
    assert_eq!(edge.arch, Some(Arch::X86_64));
    let home = inv.host("home-1").unwrap();
    assert_eq!(home.arch, Some(Arch::Aarch64));
    assert_eq!(inv.var(home, "WORKERS"), Some("2"));
    assert_eq!(inv.var(home, "SMTP_PORT"), Some("587"));
    assert_eq!(inv.host("web-1").unwrap().groups, ["web", "storage"]);
}

#[test]
fn load_reads_file_and_reports_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.yml");
    std::fs::write(&path, one_host("address: 192.0.2.1")).unwrap();
    let inv = Inventory::load(&path).unwrap();
    assert_eq!(inv.path, path);
    assert_eq!(inv.hosts[0].address, "192.0.2.1");

    let missing = dir.path().join("missing.yml");
    let err = Inventory::load(&missing).unwrap_err();
    assert!(matches!(err, InventoryError::Read { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("missing.yml") && msg.contains("MESH_INVENTORY"),
        "{msg}"
    );
}

#[test]
fn scalars_keep_their_spelling() {
    let text = "vars: { A: 1.10, B: yes, C: 007, D: \"x\", E: no }\n\
                ssh: { options: { StrictHostKeyChecking: no, ServerAliveInterval: 30 } }\n"
        .to_owned()
        + &one_host("address: 192.0.2.1, zone: no, ssh: { port: \"2200\" }");
    let inv = ok(&text);
    assert_eq!(inv.vars["A"], "1.10");
    assert_eq!(inv.vars["B"], "yes");
    assert_eq!(inv.vars["C"], "007");
    assert_eq!(inv.vars["D"], "x");
    assert_eq!(inv.vars["E"], "no");
    let h = &inv.hosts[0];
    assert_eq!(h.ssh.options["StrictHostKeyChecking"], "no");
    assert_eq!(h.ssh.options["ServerAliveInterval"], "30");
    assert_eq!(h.zone.as_deref(), Some("no"));
    assert_eq!(h.ssh.port, Some(2200));
}

#[test]
fn multi_group_equal_values_merge() {
    let text = r#"
groups:
  web:
    hosts:
      web-1: { address: 192.0.2.1, zone: ams, services: [a, b], vars: { X: "1" } }
  db:
    hosts:
      web-1: { zone: ams, services: [a, b], arch: aarch64, vars: { X: "1", Y: "2" } }
      db-1: { address: 192.0.2.2 }
"#;
    let inv = ok(text);
    let h = inv.host("web-1").unwrap();
    assert_eq!(h.groups, ["web", "db"]);
    assert_eq!(h.address, "192.0.2.1");
    assert_eq!(h.arch, Some(Arch::Aarch64));
    assert_eq!(h.services, ["a", "b"]);
    assert_eq!(h.vars.len(), 2);
    assert_eq!(inv.group("db").unwrap().hosts, ["web-1", "db-1"]);
    let names: Vec<&str> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["web-1", "db-1"]);
}

#[test]
fn multi_group_conflict_names_key_and_groups() {
    let text = r#"
groups:
  web:
    hosts:
      web-1: { address: 192.0.2.1, zone: ams }
  db:
    hosts:
      web-1: { zone: fra }
"#;
    let p = problem(text);
    assert_problem(
        &p,
        &at(text, "fra"),
        &[
            "host \"web-1\"",
            "key \"zone\"",
            "\"ams\" in group \"web\"",
            "\"fra\" in group \"db\"",
        ],
    );
}

#[test]
fn multi_group_lists_and_nested_keys_must_agree() {
    let text = r#"
groups:
  web:
    hosts:
      web-1: { address: 192.0.2.1, services: [a, b], ssh: { port: 22 }, vars: { X: "1" } }
  db:
    hosts:
      web-1: { services: [b, a], ssh: { port: 2222 }, vars: { X: "2" } }
"#;
    let p = problems(text);
    assert_eq!(p.len(), 3, "{}", p.join("\n"));
    assert_problem(&p[0], &at(text, "[b, a]"), &["key \"services\"", "[a, b]"]);
    assert_problem(&p[1], &at(text, "2222"), &["key \"ssh.port\""]);
    assert_problem(&p[2], &at(text, "\"2\""), &["key \"vars.X\""]);
}

#[test]
fn unknown_key_with_typo_suggestion() {
    let text = one_host("adress: 192.0.2.1");
    assert_problem(
        &problem(&text),
        &at(&text, "adress"),
        &[
            "host \"web-1\": unknown key \"adress\" (allowed: address, ssh, arch,",
            "Fix: did you mean \"address\"?",
        ],
    );
    // A real omission is reported at the host's name.
    let text = one_host("zone: ams");
    assert_problem(
        &problem(&text),
        &at(&text, "web-1"),
        &["host \"web-1\": missing required key \"address\""],
    );
}

#[test]
fn unknown_keys_at_every_level() {
    let text = r#"grups: {}
ssh: { prot: 22 }
groups:
  web:
    host: {}
    hosts:
      web-1: { address: 192.0.2.1, ssh: { options: { A: b }, usr: x }, firewall: { sshport: 1 } }
apt: { bogus: 1 }
"#;
    let p = problems(text);
    assert_eq!(p.len(), 6, "{}", p.join("\n"));
    assert_problem(
        &p[0],
        &at(text, "grups"),
        &["top level", "did you mean \"groups\"?"],
    );
    assert_problem(
        &p[1],
        &at(text, "prot"),
        &["ssh: unknown key", "did you mean \"port\"?"],
    );
    assert_problem(
        &p[2],
        &at(text, "host:"),
        &["group \"web\"", "did you mean \"hosts\"?"],
    );
    assert_problem(&p[3], &at(text, "usr"), &["host \"web-1\" ssh", "\"user\""]);
    assert_problem(&p[4], &at(text, "sshport"), &["firewall", "\"ssh_port\""]);
    assert_problem(
        &p[5],
        &at(text, "bogus"),
        &["apt", "allowed: cache_valid_seconds", "remove \"bogus\""],
    );
}

#[test]
fn bad_ips_are_located() {
    let text = one_host("address: 192.0.2.1, public_ip: 1.2.3, overlay_ip: \"fd00::1\"");
    let p = problems(&text);
    assert_eq!(p.len(), 2, "{}", p.join("\n"));
    assert_problem(
        &p[0],
        &at(&text, "1.2.3"),
        &["public_ip \"1.2.3\" is not a valid IP address"],
    );
    assert_problem(
        &p[1],
        &at(&text, "\"fd00::1\""),
        &["overlay_ip", "not an IPv4 address"],
    );

    let text = one_host("address: 192.0.2.1, overlay_ip: 10.0.0.300");
    assert_problem(
        &problem(&text),
        &at(&text, "10.0.0.300"),
        &["not a valid IP address"],
    );
}

#[test]
fn bad_address_is_located() {
    for bad in ["10.0.0.256", "under_score.example", "-lead.example", "a..b"] {
        let text = one_host(&format!("address: {bad}"));
        assert_problem(
            &problem(&text),
            &at(&text, bad),
            &["neither an IP address nor a valid DNS name"],
        );
    }
    for good in ["2001:db8::1", "web-1.example.org", "web-1", "example.org."] {
        ok(&one_host(&format!("address: \"{good}\"")));
    }
}

#[test]
fn unknown_traefik_host_lists_candidates() {
    let text = r#"
groups:
  bastion:
    hosts:
      edge-1: { address: 192.0.2.1 }
  web:
    hosts:
      web-1: { address: 192.0.2.2, traefik_host: edge-2 }
      web-2: { address: 192.0.2.3, traefik_host: gateway }
"#;
    let p = problems(text);
    assert_eq!(p.len(), 2, "{}", p.join("\n"));
    assert_problem(
        &p[0],
        &at(text, "edge-2"),
        &[
            "traefik_host \"edge-2\" is not a host",
            "did you mean \"edge-1\"?",
        ],
    );
    assert_problem(&p[1], &at(text, "gateway"), &["use one of: edge-1."]);
}

#[test]
fn behind_nat_needs_public_address() {
    let text = one_host("address: 192.168.1.2, behind_nat: true");
    assert_problem(
        &problem(&text),
        &at(&text, "true"),
        &[
            "behind_nat is true but neither public_ip nor public_dns",
            "add public_ip",
        ],
    );
    ok(&one_host(
        "address: 192.168.1.2, behind_nat: true, public_dns: x.dyn.example.org",
    ));
    ok(&one_host("address: 192.168.1.2, behind_nat: false"));
}

#[test]
fn duplicate_endpoints_are_errors() {
    let text = r#"
groups:
  web:
    hosts:
      web-1: { address: 192.0.2.1 }
      web-2: { address: 192.0.2.1, ssh: { port: 22 } }
      web-3: { address: 192.0.2.1, ssh: { port: 2222 } }
"#;
    assert_problem(
        &problem(text),
        &at_nth(text, "192.0.2.1", 1),
        &[
            "host \"web-2\"",
            "port 22 is already used by host \"web-1\" (line 5)",
        ],
    );
}

#[test]
fn invalid_host_names() {
    let text = "groups:\n  web:\n    hosts:\n      web_1: { address: 192.0.2.1 }\n      \
                -bad: { address: 192.0.2.2 }\n";
    let p = problems(text);
    assert_eq!(p.len(), 2, "{}", p.join("\n"));
    assert_problem(
        &p[0],
        &at(text, "web_1"),
        &["not a valid hostname", "\"web-1\""],
    );
    assert_problem(
        &p[1],
        &at(text, "-bad"),
        &["not a valid hostname", "\"bad\""],
    );

    let long = "a".repeat(64);
    let text = one_host("address: 192.0.2.1").replace("web-1", &long);
    assert_problem(&problem(&text), &at(&text, &long), &["at most 63"]);
}

#[test]
fn unsupported_arch() {
    let text = one_host("address: 192.0.2.1, arch: amd64");
    assert_problem(
        &problem(&text),
        &at(&text, "amd64"),
        &[
            "arch \"amd64\" is not supported (allowed: x86_64, aarch64)",
            "did you mean \"x86_64\"?",
        ],
    );
    let text = one_host("address: 192.0.2.1, arch: riscv64");
    assert_problem(&problem(&text), &at(&text, "riscv64"), &["uname -m"]);
}

#[test]
fn no_hosts_at_all() {
    let text = "vars: {}\ngroups:\n  web: {}\n";
    assert_problem(&problem(text), &at(text, "groups"), &["defines no hosts"]);
    let text = "groups: {}\n";
    assert_problem(&problem(text), "inv.yml:1:1:", &["defines no hosts"]);
    assert_problem(
        &problem("vars: { A: b }\n"),
        "inv.yml:1:1:",
        &["missing required top-level key \"groups\""],
    );
    assert_problem(&problem(""), "inv.yml:1:1:", &["\"groups\""]);
}

#[test]
fn yaml_syntax_error_is_located() {
    let text = "groups:\n  web:\n    hosts: { web-1: { address: 192.0.2.1 }\nvars: {}\n";
    let p = problem(text);
    assert!(p.starts_with("inv.yml:4:"), "{p}");
    assert!(
        p.contains("YAML syntax error") && p.contains("Fix: "),
        "{p}"
    );

    let text = "groups:\n  web:\n    hosts:\n      web-1: {address: 192.0.2.1}\n   bad: indent\n";
    assert!(problem(text).contains("YAML syntax error"));
}

#[test]
fn duplicate_keys_are_reported_with_the_rest() {
    let text = r#"
groups:
  web:
    hosts:
      web-1: { address: 192.0.2.1 }
      web-1: { address: 192.0.2.2 }
      web-2: { address: 192.0.2.3, zonee: x }
"#;
    let p = problems(text);
    assert_eq!(p.len(), 2, "{}", p.join("\n"));
    assert_problem(
        &p[0],
        &at_nth(text, "web-1", 1),
        &["key \"web-1\" appears twice (first at line 5)"],
    );
    assert_problem(&p[1], &at(text, "zonee"), &["did you mean \"zone\"?"]);
}

#[test]
fn wrong_value_types() {
    let text = one_host(
        "address: [192.0.2.1], behind_nat: \"yes\", services: webapp, ssh: { port: 70000 }, \
         firewall: { deadman_seconds: -1 }, vars: { A: ~ }",
    );
    let p = problems(&text);
    assert_eq!(p.len(), 6, "{}", p.join("\n"));
    assert_problem(
        &p[0],
        &at(&text, "[192"),
        &["\"address\" expects a single value, got a list"],
    );
    assert_problem(&p[1], &at(&text, "\"yes\""), &["expects true or false"]);
    assert_problem(
        &p[2],
        &at(&text, "webapp"),
        &["\"services\" expects a list", "[a, b]"],
    );
    assert_problem(
        &p[3],
        &at(&text, "70000"),
        &["port number 1-65535", "\"70000\""],
    );
    assert_problem(&p[4], &at(&text, "-1 }"), &["whole number"]);
    assert_problem(&p[5], &at(&text, "~"), &["\"A\" has no value"]);

    let text = "groups:\n  web:\n    hosts:\n      web-1: 192.0.2.1\n";
    assert_problem(
        &problem(text),
        &at(text, "192"),
        &["Fix: write web-1: { address: 192.0.2.1 }."],
    );
    let text = "overlay: { net: 10.0.0.0/33 }\ndocker: { mirror: ftp://x }\n".to_owned()
        + &one_host("address: 192.0.2.1");
    let p = problems(&text);
    assert_problem(&p[0], &at(&text, "10.0.0.0/33"), &["CIDR"]);
    assert_problem(&p[1], &at(&text, "ftp://x"), &["http(s) URL"]);
}

#[test]
fn overlay_net_must_be_one_wesher_accepts() {
    for net in ["10.0.0.0/12", "fd00::/8", "10.0.0/8"] {
        let text = format!("overlay: {{ net: \"{net}\" }}\n") + &one_host("address: 192.0.2.1");
        assert_problem(
            &problem(&text),
            &at(&text, &format!("\"{net}\"")),
            &["overlay: net:", "Fix:"],
        );
    }
    for net in ["10.0.0.0/8", "100.64.0.0/16", "192.168.7.0/24"] {
        let text = format!("overlay: {{ net: \"{net}\" }}\n") + &one_host("address: 192.0.2.1");
        assert_eq!(ok(&text).overlay.net.as_deref(), Some(net));
    }
}

#[test]
fn several_problems_collected_in_file_order() {
    let text = r#"
groups:
  web:
    hosts:
      web-1: { address: 192.0.2.1, public_ip: nope }
      web_2: { address: 192.0.2.2, arch: i386 }
      web-3: { adress: 192.0.2.3, traefik_host: nowhere }
      web-4: { zone: x }
"#;
    let p = problems(text);
    assert_eq!(p.len(), 6, "{}", p.join("\n"));
    let err = parse(text).unwrap_err().to_string();
    assert_eq!(err.lines().count(), 6);
    assert_problem(&p[0], &at(text, "nope"), &["public_ip"]);
    assert_problem(&p[1], &at(text, "web_2"), &["hostname"]);
    assert_problem(&p[2], &at(text, "i386"), &["arch"]);
    assert_problem(&p[3], &at(text, "adress"), &["unknown key"]);
    assert_problem(&p[4], &at(text, "nowhere"), &["traefik_host"]);
    assert_problem(
        &p[5],
        &at(text, "web-4"),
        &["missing required key \"address\""],
    );
}

#[test]
fn ssh_resolution_order_and_home_expansion() {
    let text = r#"
ssh: { user: root, port: 22, identity_file: ~/.ssh/top, options: { A: top, B: top } }
groups:
  web:
    ssh: { user: web, options: { B: web, C: web } }
    hosts:
      web-1: { address: 192.0.2.1, ssh: { identity_file: /keys/own, options: { C: host } } }
      web-2: { address: 192.0.2.2 }
  db:
    ssh: { port: 2200 }
    hosts:
      web-2: {}
      db-1: { address: 192.0.2.3, ssh: { user: admin, identity_file: "~other/key" } }
"#;
    let inv = ok(text);
    let w1 = &inv.host("web-1").unwrap().ssh;
    assert_eq!(w1.user.as_deref(), Some("web"));
    assert_eq!(w1.port, Some(22));
    assert_eq!(w1.identity_file, Some(PathBuf::from("/keys/own")));
    let opts: Vec<(&str, &str)> = w1
        .options
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(opts, [("A", "top"), ("B", "web"), ("C", "host")]);
    let w2 = &inv.host("web-2").unwrap().ssh;
    assert_eq!(w2.user.as_deref(), Some("web"));
    assert_eq!(w2.port, Some(2200));
    assert_eq!(
        w2.identity_file,
        Some(PathBuf::from("/home/tester/.ssh/top"))
    );
    let d1 = &inv.host("db-1").unwrap().ssh;
    assert_eq!(d1.user.as_deref(), Some("admin"));
    assert_eq!(d1.identity_file, Some(PathBuf::from("~other/key")));

    // Without any ssh settings everything is left to ~/.ssh/config.
    let inv = ok(&one_host("address: 192.0.2.1"));
    assert_eq!(inv.hosts[0].ssh, super::SshSettings::default());
    // Without a known home directory `~/` stays as written.
    let inv = Inventory::parse_with_home(
        Path::new("x.yml"),
        &(one_host("address: 192.0.2.1, ssh: { identity_file: ~/.ssh/k }")),
        None,
    )
    .unwrap();
    assert_eq!(
        inv.hosts[0].ssh.identity_file,
        Some(PathBuf::from("~/.ssh/k"))
    );
}

#[test]
fn conflicting_group_ssh_is_an_error_unless_the_host_decides() {
    let text = r#"
groups:
  web:
    ssh: { user: deploy, options: { X: "1" } }
    hosts:
      a-1: { address: 192.0.2.1 }
      b-1: { address: 192.0.2.2 }
  db:
    ssh: { user: admin, options: { X: "2" } }
    hosts:
      a-1: {}
      b-1: {}
      c-1: { address: 192.0.2.3, ssh: { user: me } }
      d-1: { address: 192.0.2.4 }
  ops:
    hosts:
      c-1: { ssh: { user: me, options: { X: "3" } } }
      d-1: {}
"#;
    let p = problems(text);
    assert_eq!(p.len(), 2, "{}", p.join("\n"));
    assert_problem(
        &p[0],
        &at(text, "admin"),
        &[
            "groups \"web\" (line 4) and \"db\" set different ssh user (\"deploy\" vs \"admin\") for host \"a-1\", \"b-1\"",
            "set ssh: { user: ... } on the host",
        ],
    );
    assert_problem(
        &p[1],
        &at(text, "\"2\""),
        &["ssh option X", "options: { X: ... }"],
    );
}

#[test]
fn var_layers_most_specific_first() {
    let text = r#"
vars: { A: top, B: top, C: top, D: top }
groups:
  second:
    vars: { B: second-first-in-file, C: second }
    hosts:
      web-1: { address: 192.0.2.1, vars: { A: host } }
  first:
    vars: { B: first, C: first }
    hosts:
      web-1: {}
  other:
    vars: { D: other }
    hosts:
      db-1: { address: 192.0.2.2 }
"#;
    let inv = ok(text);
    let host = inv.host("web-1").unwrap();
    let layers = inv.var_layers(host);
    let kinds: Vec<Source> = layers.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        [
            Source::HostVars,
            Source::GroupVars,
            Source::GroupVars,
            Source::Vars
        ]
    );
    assert_eq!(layers[0].1["A"], "host");
    assert_eq!(layers[1].1["C"], "second");
    assert_eq!(layers[2].1["C"], "first");
    assert_eq!(layers[3].1["D"], "top");
    assert_eq!(inv.var(host, "A"), Some("host"));
    assert_eq!(inv.var(host, "B"), Some("second-first-in-file"));
    assert_eq!(inv.var(host, "D"), Some("top"));
    assert_eq!(inv.var(host, "Z"), None);
}

fn select<'a>(inv: &'a Inventory, limits: &[&str]) -> Vec<&'a str> {
    let limits: Vec<String> = limits.iter().map(|s| s.to_string()).collect();
    inv.select(&limits)
        .unwrap()
        .into_iter()
        .map(|h| h.name.as_str())
        .collect()
}

#[test]
fn select_by_host_and_group_globs() {
    let inv = ok(BRIEF);
    assert_eq!(select(&inv, &[]), ["edge-1", "web-1", "home-1"]);
    assert_eq!(select(&inv, &["web-*"]), ["web-1"]);
    assert_eq!(select(&inv, &["web"]), ["web-1", "home-1"]);
    assert_eq!(select(&inv, &["bast*"]), ["edge-1"]);
    assert_eq!(
        select(&inv, &["home-?", "edge-[0-9]"]),
        ["edge-1", "home-1"]
    );
    assert_eq!(
        select(&inv, &["web", "web-1", "*"]),
        ["edge-1", "web-1", "home-1"]
    );
}

#[test]
fn select_without_match_is_an_error() {
    let inv = ok(BRIEF);
    let err = inv
        .select(&["web".to_owned(), "wbe-1".to_owned()])
        .unwrap_err();
    match &err {
        InventoryError::NoMatch { pattern, names } => {
            assert_eq!(pattern, "wbe-1");
            assert_eq!(names, &["edge-1", "web-1", "home-1", "bastion", "web"]);
        }
        other => panic!("expected NoMatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("\"wbe-1\"") && msg.contains("did you mean \"web-1\"?"),
        "{msg}"
    );
}

#[test]
fn arch_names() {
    assert_eq!("x86_64".parse::<Arch>().unwrap(), Arch::X86_64);
    assert_eq!("aarch64".parse::<Arch>().unwrap(), Arch::Aarch64);
    assert!("amd64".parse::<Arch>().is_err());
    assert_eq!(Arch::X86_64.to_string(), "x86_64");
    assert_eq!(Arch::Aarch64.deb_arch(), "arm64");
    assert_eq!(Arch::X86_64.deb_arch(), "amd64");
}

#[test]
fn overlay_ip_is_kept() {
    let inv = ok(&one_host("address: 192.0.2.1, overlay_ip: 10.1.2.3"));
    assert_eq!(inv.hosts[0].overlay_ip, Some(Ipv4Addr::new(10, 1, 2, 3)));
}

#[test]
fn host_firewall_overrides_top_level() {
    let text = "firewall: { ssh_port: 22, deadman_seconds: 90 }\n".to_owned()
        + &one_host("address: 192.0.2.1, firewall: { ssh_port: 2222 }");
    let fw = &ok(&text).hosts[0].firewall;
    assert_eq!((fw.ssh_port, fw.deadman_seconds), (Some(2222), Some(90)));
}

#[test]
fn suggestions_use_edit_distance() {
    use super::diag::{closest, edit_distance};
    assert_eq!(edit_distance("adress", "address"), 1);
    assert_eq!(edit_distance("prot", "port"), 1);
    assert_eq!(edit_distance("", "abc"), 3);
    assert_eq!(closest("Adress", ["address", "arch"]), Some("address"));
    assert_eq!(closest("xyz", ["address", "arch"]), None);
}

#[test]
fn zones_use_letters_digits_dash_underscore_and_dot() {
    for zone in ["fra", "fra-1", "z_1", "eu.west.2", "Z9"] {
        let inv = ok(&one_host(&format!("address: 192.0.2.1, zone: \"{zone}\"")));
        assert_eq!(inv.hosts[0].zone.as_deref(), Some(zone));
    }
    let text = one_host("address: 192.0.2.1, zone: \"eu west\"");
    assert_problem(
        &problem(&text),
        &at(&text, "\"eu west\""),
        &[
            "zone \"eu west\" may only use letters, digits",
            "re-apply its layout",
            "Fix: write it as \"eu-west\"",
        ],
    );
    for bad in ["\"\"", "\"a/b\"", "\"zürich\"", &"z".repeat(65)] {
        let text = one_host(&format!("address: 192.0.2.1, zone: {bad}"));
        assert_problem(&problem(&text), &at(&text, bad), &["zone", "Fix:"]);
    }
}

#[test]
fn deadman_seconds_is_at_least_30() {
    let text = "firewall: { deadman_seconds: 29 }\n".to_owned()
        + &one_host("address: 192.0.2.1, firewall: { deadman_seconds: 5 }");
    let p = problems(&text);
    assert_eq!(p.len(), 2, "{}", p.join("\n"));
    assert_problem(
        &p[0],
        &at(&text, "29"),
        &["deadman_seconds 29 is too short", "at least 30"],
    );
    assert_problem(
        &p[1],
        &at(&text, "5 }"),
        &["deadman_seconds 5 is too short"],
    );
    let text = "firewall: { deadman_seconds: 30 }\n".to_owned() + &one_host("address: 192.0.2.1");
    assert_eq!(ok(&text).hosts[0].firewall.deadman_seconds, Some(30));
}

#[test]
fn an_inventory_larger_than_4_mib_is_refused_without_reading_it_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.yml");
    let mut text = one_host("address: 192.0.2.1");
    text.push_str(&"# padding\n".repeat((4 << 20) / 10 + 1));
    std::fs::write(&path, &text).unwrap();
    let err = Inventory::load(&path).unwrap_err();
    assert!(matches!(err, InventoryError::TooLarge { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("big.yml") && msg.contains("4 MiB") && msg.contains("Fix:"),
        "{msg}"
    );
    // A device that never ends is refused as fast.
    let err = Inventory::load(Path::new("/dev/zero")).unwrap_err();
    assert!(matches!(err, InventoryError::TooLarge { .. }), "{err:?}");
    // Just under the limit still loads.
    text.truncate(4 << 20);
    let cut = text.rfind('\n').unwrap() + 1;
    text.truncate(cut);
    std::fs::write(&path, &text).unwrap();
    assert_eq!(Inventory::load(&path).unwrap().hosts.len(), 1);
}

#[test]
fn did_you_mean_skips_huge_keys() {
    use super::diag::closest;
    let huge = "a".repeat(200_000);
    let t0 = std::time::Instant::now();
    assert_eq!(closest(&huge, ["address", "arch"]), None);
    assert_eq!(
        closest("adress", [huge.as_str(), "address"]),
        Some("address")
    );
    // An explicit key: YAML caps implicit ones at 1024 characters.
    let text = format!(
        "groups:\n  web:\n    hosts:\n      web-1:\n        address: 192.0.2.1\n        ? {huge}\n        : 1\n"
    );
    let p = problem(&text);
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        t0.elapsed()
    );
    let start: String = p.chars().take(300).collect();
    assert!(
        p.contains("unknown key") && !p.contains("did you mean"),
        "{start}"
    );
    assert!(
        p.len() < 1000,
        "the key is shown cut short: {} bytes",
        p.len()
    );
}

#[test]
fn options_that_turn_host_key_checking_off_are_warned_about() {
    use super::disables_host_key_check as off;
    assert!(off("StrictHostKeyChecking", "no"));
    assert!(off("stricthostkeychecking", "Off"));
    assert!(off("StrictHostKeyChecking", "false"));
    assert!(!off("StrictHostKeyChecking", "accept-new"));
    assert!(!off("StrictHostKeyChecking", "yes"));
    assert!(off("UserKnownHostsFile", "/dev/null"));
    assert!(off("UserKnownHostsFile", "/dev/null ~/.ssh/known_hosts"));
    assert!(!off("UserKnownHostsFile", "~/.ssh/known_hosts /dev/null"));
    assert!(!off("KexAlgorithms", "no"));

    assert!(ok(BRIEF).host_key_warnings().is_empty());
    let text = "ssh: { options: { StrictHostKeyChecking: no } }\ngroups:\n  web:\n    hosts:\n      \
                web-1: { address: 192.0.2.1 }\n      \
                web-2: { address: 192.0.2.2, ssh: { options: { UserKnownHostsFile: /dev/null } } }\n";
    let warnings = ok(text).host_key_warnings();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("StrictHostKeyChecking=no for web-1, web-2")
            && warnings[0].contains("Fix: remove it"),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[1].contains("UserKnownHostsFile=/dev/null for web-2"),
        "{}",
        warnings[1]
    );
}

#[test]
fn docker_signing_key_is_a_readable_public_key_beside_the_inventory() {
    let dir = tempfile::tempdir().unwrap();
    let inv_path = dir.path().join("inv.yml");
    let parse_in_dir = |text: &str| Inventory::parse_with_home(&inv_path, text, None);
    let shown = inv_path.display().to_string();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    std::fs::write(
        dir.path().join("keys/mirror.asc"),
        crate::release::testing::TEST_PUBLIC,
    )
    .unwrap();

    // Relative to the inventory's folder, not the working directory.
    let text =
        "docker: { signing_key: keys/mirror.asc }\n".to_owned() + &one_host("address: 192.0.2.1");
    let inv = parse_in_dir(&text).unwrap();
    assert_eq!(
        inv.docker.signing_key,
        Some(dir.path().join("keys/mirror.asc"))
    );
    assert_eq!(ok(&one_host("address: 192.0.2.1")).docker.signing_key, None);

    let problems_in_dir = |text: &str| match parse_in_dir(text) {
        Err(InventoryError::Invalid { problems }) => problems,
        other => panic!("expected problems, got {other:?}"),
    };
    // A missing file: where it was looked for, and what to do.
    let text =
        "docker: { signing_key: keys/missing.asc }\n".to_owned() + &one_host("address: 192.0.2.1");
    let p = problems_in_dir(&text);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_problem(
        &p[0],
        &format!("{shown}:1:24:"),
        &["signing_key", "keys/missing.asc", "Fix: put the mirror's"],
    );
    // A file that is not a public key.
    std::fs::write(dir.path().join("keys/junk.asc"), "hello\n").unwrap();
    let text =
        "docker:\n  signing_key: keys/junk.asc\n".to_owned() + &one_host("address: 192.0.2.1");
    let p = problems_in_dir(&text);
    assert_problem(
        &p[0],
        &format!("{shown}:2:16:"),
        &[
            "keys/junk.asc",
            "not a usable OpenPGP public key",
            "gpg --armor --export",
        ],
    );
    // A misspelt key gets a did-you-mean.
    let text =
        "docker: { signing_keys: keys/mirror.asc }\n".to_owned() + &one_host("address: 192.0.2.1");
    assert_problem(
        &problem(&text),
        &at(&text, "signing_keys"),
        &["unknown key \"signing_keys\"", "signing_key"],
    );
}

#[test]
fn a_bad_mirror_url_does_not_show_its_credentials() {
    let text = "docker: { mirror: \"ftp://user:s3cret@m.example/debian\" }\n".to_owned()
        + &one_host("address: 192.0.2.1");
    let p = problem(&text);
    assert!(
        !p.contains("s3cret") && p.contains("ftp://***@m.example"),
        "{p}"
    );
}

#[test]
fn backup_policy_defaults_and_overrides() {
    let inv = ok(&one_host("address: 192.0.2.1"));
    assert_eq!(inv.backup.schedule, "*-*-* 03:00");
    assert_eq!(
        inv.backup.keep.flags(),
        [
            "--keep-daily",
            "7",
            "--keep-weekly",
            "4",
            "--keep-monthly",
            "6"
        ]
    );
    // A `keep:` replaces the default whole.
    let text = format!(
        "backup: {{ schedule: \"Mon *-*-* 02:30\", keep: {{ last: 2 }} }}\n{}",
        one_host("address: 192.0.2.1")
    );
    let inv = ok(&text);
    assert_eq!(inv.backup.schedule, "Mon *-*-* 02:30");
    assert_eq!(inv.backup.keep.flags(), ["--keep-last", "2"]);
}

#[test]
fn bad_backup_policy_is_located_with_a_fix() {
    let text = format!(
        "backup: {{ keep: {{ dayly: 7 }} }}\n{}",
        one_host("address: 192.0.2.1")
    );
    let p = problems(&text);
    assert!(
        p.iter()
            .any(|p| p.starts_with(&at(&text, "dayly")) && p.contains("did you mean \"daily\"")),
        "{p:?}"
    );
    let text = format!(
        "backup: {{ schedule: \"03:00; rm -rf /\" }}\n{}",
        one_host("address: 192.0.2.1")
    );
    assert_problem(
        &problem(&text),
        &at(&text, "\"03:00"),
        &["systemd calendar", "Fix: write one line"],
    );
    let text = format!(
        "backup: {{ keep: {{ last: 0 }} }}\n{}",
        one_host("address: 192.0.2.1")
    );
    assert!(problems(&text).iter().any(|p| p.contains("at least 1")));
    let text = format!("backuo: {{}}\n{}", one_host("address: 192.0.2.1"));
    assert!(problem(&text).contains("did you mean \"backup\""));
}
