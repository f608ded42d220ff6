//! Route drift: what each bastion's Redis holds for a host's servers
//! against what the host records (its manifest and live slots), named per
//! bastion: "web: route on b1 points at :8001, host says :8000", a missing
//! route for a copy that serves, a route left to a copy that does not, a
//! route the host does not publish at all, and routes of hosts that are no
//! longer in the inventory.

use super::probe::{HostRead, RedisError, Servers};
use super::{services, Role};
use crate::phases::services::publish::service_keys;
use std::collections::{BTreeMap, BTreeSet};

/// A server key a host's service should have on its bastions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expected {
    pub service: String,
    pub key: String,
    /// The URL or address the host's record says; `None`: not judged (a
    /// copy whose health check is still starting may or may not be in).
    pub want: Option<String>,
    /// The live copy serves: the route must be there (else it must not).
    pub serves: bool,
}

/// The server keys of `host`'s routed services (`only`: one of them).
pub(crate) fn expected(host: &str, read: &HostRead, only: Option<&str>) -> Vec<Expected> {
    let stats = services(read, only);
    let marker = format!("/loadbalancer/servers/{host}/");
    let mut out = Vec::new();
    for b in &read.manifest.backends {
        if only.is_some_and(|o| o != b.service) {
            continue;
        }
        let live = read
            .states
            .get(&b.service)
            .cloned()
            .unwrap_or_default()
            .live();
        let container = stats
            .iter()
            .find(|s| s.service == b.service)
            .and_then(|s| s.container.as_ref());
        let serves = container.is_some_and(|c| c.serves());
        let starting = container.is_some_and(|c| c.starting());
        for (key, value) in service_keys(b, live) {
            if key.contains(&marker) && (key.ends_with("/url") || key.ends_with("/address")) {
                out.push(Expected {
                    service: b.service.clone(),
                    key,
                    want: (!starting).then_some(value),
                    serves,
                });
            }
        }
    }
    out
}

/// `:8001` when `url` differs from `other` only by its port, else `url`.
fn shown(url: &str, other: &str) -> String {
    match (url.rsplit_once(':'), other.rsplit_once(':')) {
        (Some((a, port)), Some((b, _))) if a == b => format!(":{port}"),
        _ => url.to_string(),
    }
}

/// Drift between what `bastion` holds (`held`) and what the host records.
pub(crate) fn drift(bastion: &str, expected: &[Expected], held: &Servers) -> Vec<String> {
    let mut out = Vec::new();
    for e in expected {
        let Some(want) = &e.want else { continue };
        let service = &e.service;
        match (held.get(&e.key), e.serves) {
            (Some(have), true) if have != want => out.push(format!(
                "{service}: route on {bastion} points at {}, host says {}. Fix: run mesh services-up",
                shown(have, want),
                shown(want, have)
            )),
            (None, true) => out.push(format!(
                "{service}: no route on {bastion}, host says {}. Fix: run mesh services-up",
                shown(want, want)
            )),
            (Some(have), false) => out.push(format!(
                "{service}: route on {bastion} points at {}, but the copy does not serve. Fix: start it (mesh services-up), or run it to withdraw the route",
                shown(have, want)
            )),
            _ => {}
        }
    }
    out
}

/// The `<server>` segment of `traefik/<proto>/services/<svc>/loadbalancer/servers/<server>/<field>`,
/// and the Traefik service.
fn server_of(key: &str) -> Option<(&str, &str)> {
    let segs: Vec<&str> = key.split('/').collect();
    let at = segs.iter().position(|s| *s == "servers")?;
    (at >= 4 && segs.len() == at + 3).then(|| (segs[at + 1], segs[3]))
}

/// What [`check`] found for one host.
#[derive(Debug, Default)]
pub(crate) struct Found {
    pub problems: Vec<String>,
    /// bastion -> this host's server keys there.
    pub held: BTreeMap<String, Servers>,
}

/// Compare `host`'s record with every bastion it routes to (`held`: each
/// bastion's servers, or why they could not be read).
pub(crate) fn check(
    host: &str,
    read: &HostRead,
    role: &Role,
    held: &BTreeMap<&str, Result<&Servers, RedisError>>,
    only: Option<&str>,
) -> Found {
    let mut found = Found::default();
    let recorded: BTreeSet<&String> = read.manifest.bastions.iter().collect();
    let inventory: BTreeSet<&String> = role.bastions.iter().collect();
    if !read.manifest.backends.is_empty() && recorded != inventory {
        let list = |s: &BTreeSet<&String>| {
            if s.is_empty() {
                "none".to_string()
            } else {
                s.iter().map(|b| b.as_str()).collect::<Vec<_>>().join(", ")
            }
        };
        found.problems.push(format!(
            "the host's routes go to {}, the inventory says {}. Fix: run mesh services",
            list(&recorded),
            list(&inventory)
        ));
    }
    let expected = expected(host, read, only);
    let all: BTreeSet<String> = match only {
        Some(_) => BTreeSet::new(),
        None => expected.iter().map(|e| e.key.clone()).collect(),
    };
    for b in &read.manifest.bastions {
        let servers = match held.get(b.as_str()) {
            Some(Ok(servers)) => *servers,
            Some(Err(e)) => {
                if !expected.is_empty() {
                    found
                        .problems
                        .push(format!("routes on {b} not checked: {e}"));
                }
                continue;
            }
            None if inventory.contains(b) => {
                found
                    .problems
                    .push(format!("routes on {b} not checked: {b} was not read"));
                continue;
            }
            // Already said: the record names a bastion the inventory does not.
            None => continue,
        };
        let mine: Servers = servers
            .iter()
            .filter(|(k, _)| server_of(k).is_some_and(|(s, _)| s == host))
            .filter(|(k, _)| only.is_none() || expected.iter().any(|e| &e.key == *k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        found.problems.extend(drift(b, &expected, &mine));
        if only.is_none() {
            for (key, value) in mine.iter().filter(|(k, _)| !all.contains(*k)) {
                let svc = server_of(key).map_or("?", |(_, s)| s);
                found.problems.push(format!(
                    "route on {b} for Traefik service {svc} points at {value}, but the host publishes none there ({key}). Fix: run mesh services-up"
                ));
            }
        }
        found.held.insert(b.clone(), mine);
    }
    found
}

/// Routes a bastion holds for servers named after no host of the inventory.
pub(crate) fn stale_hosts(servers: &Servers, inventory_hosts: &[String]) -> Vec<String> {
    let mut gone: BTreeMap<&str, usize> = BTreeMap::new();
    for key in servers.keys() {
        if let Some((server, _)) = server_of(key) {
            let index = server.bytes().all(|b| b.is_ascii_digit());
            if !index && !inventory_hosts.iter().any(|h| h == server) {
                *gone.entry(server).or_default() += 1;
            }
        }
    }
    gone.into_iter()
        .map(|(server, n)| {
            format!("{n} route(s) here for {server}, which is not in the inventory. Fix: run mesh services (it removes them)")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{read, HEALTHY};
    use super::super::{assess, Reading};
    use super::*;

    const KEY: &str = "traefik/http/services/web/loadbalancer/servers/w1/url";

    fn role() -> Role {
        Role {
            bastions: vec!["b1".into()],
            mesh_routes: true,
            overlay_ip: "10.0.0.2".into(),
            ..Default::default()
        }
    }

    fn servers(pairs: &[(&str, &str)]) -> Servers {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_server_keys_follow_the_live_slot() {
        let exp = expected("w1", &read(HEALTHY), None);
        assert_eq!(
            exp,
            [Expected {
                service: "web".into(),
                key: KEY.into(),
                want: Some("http://10.0.0.2:8001".into()),
                serves: true
            }]
        );
        let starting = read("web|mesh-web-b|running|starting|2025-12-02T07:40:00Z|0|mesh/web:2");
        assert_eq!(expected("w1", &starting, None)[0].want, None);
        assert!(expected("w1", &read(HEALTHY), Some("cron")).is_empty());
    }

    #[test]
    fn drift_is_named_per_bastion() {
        let exp = expected("w1", &read(HEALTHY), None);
        let held = |v: &str| servers(&[(KEY, v)]);
        assert!(drift("b1", &exp, &held("http://10.0.0.2:8001")).is_empty());
        assert_eq!(
            drift("b1", &exp, &held("http://10.0.0.2:8000")),
            ["web: route on b1 points at :8000, host says :8001. Fix: run mesh services-up"]
        );
        assert_eq!(
            drift("b1", &exp, &held("http://10.9.9.9:8001")),
            ["web: route on b1 points at http://10.9.9.9:8001, host says http://10.0.0.2:8001. Fix: run mesh services-up"]
        );
        assert_eq!(
            drift("b1", &exp, &Servers::new()),
            ["web: no route on b1, host says :8001. Fix: run mesh services-up"]
        );
        // A stopped copy must have no route.
        let stopped = read("web|mesh-web-b|exited||2025-12-02T07:40:00Z|0|mesh/web:2");
        let exp = expected("w1", &stopped, None);
        assert!(drift("b1", &exp, &Servers::new()).is_empty());
        assert_eq!(
            drift("b1", &exp, &held("http://10.0.0.2:8001")),
            ["web: route on b1 points at :8001, but the copy does not serve. Fix: start it (mesh services-up), or run it to withdraw the route"]
        );
        // Health starting: not judged.
        let starting = read("web|mesh-web-b|running|starting|2025-12-02T07:40:00Z|0|mesh/web:2");
        assert!(drift("b1", &expected("w1", &starting, None), &Servers::new()).is_empty());
    }

    #[test]
    fn a_check_reads_every_bastion_of_the_host_and_names_strays() {
        let read = read(HEALTHY);
        let on_b1 = servers(&[
            (KEY, "http://10.0.0.2:8000"),
            (
                "traefik/http/services/old/loadbalancer/servers/w1/url",
                "http://10.0.0.2:9000",
            ),
            (
                "traefik/http/services/web/loadbalancer/servers/w2/url",
                "http://10.0.0.3:8001",
            ),
        ]);
        let held = BTreeMap::from([("b1", Ok(&on_b1))]);
        let found = check("w1", &read, &role(), &held, None);
        assert_eq!(
            found.problems,
            [
                "web: route on b1 points at :8000, host says :8001. Fix: run mesh services-up",
                "route on b1 for Traefik service old points at http://10.0.0.2:9000, but the host publishes none there (traefik/http/services/old/loadbalancer/servers/w1/url). Fix: run mesh services-up",
            ]
        );
        assert_eq!(found.held["b1"].len(), 2, "only w1's servers");
        // --service web: only web's key is looked at.
        let found = check("w1", &read, &role(), &held, Some("web"));
        assert_eq!(found.problems.len(), 1);
        assert_eq!(found.held["b1"].len(), 1);
        // A bastion that could not be read, one the inventory no longer names.
        let held = BTreeMap::from([("b1", Err(RedisError::Refused("NOAUTH".into())))]);
        assert_eq!(
            check("w1", &read, &role(), &held, None).problems,
            ["routes on b1 not checked: Redis answered: NOAUTH"]
        );
        let moved = Role {
            bastions: vec!["b2".into()],
            ..role()
        };
        assert_eq!(
            check("w1", &read, &moved, &BTreeMap::new(), None).problems,
            ["the host's routes go to b1, the inventory says b2. Fix: run mesh services"]
        );
    }

    #[test]
    fn routes_of_hosts_gone_from_the_inventory_are_stale() {
        let held = servers(&[
            ("traefik/http/services/web/loadbalancer/servers/w1/url", "u"),
            ("traefik/http/services/web/loadbalancer/servers/w9/url", "u"),
            (
                "traefik/tcp/services/db/loadbalancer/servers/w9/address",
                "a",
            ),
            ("traefik/http/services/web/loadbalancer/servers/0/url", "u"),
        ]);
        assert_eq!(
            stale_hosts(&held, &["w1".to_string()]),
            ["2 route(s) here for w9, which is not in the inventory. Fix: run mesh services (it removes them)"]
        );
    }

    #[test]
    fn a_bastion_reading_feeds_its_hosts() {
        let mut b1 = read(HEALTHY);
        b1.manifest = Default::default();
        b1.states.clear();
        b1.containers = vec![super::super::probe::Container {
            service: "traefik".into(),
            project: "mesh".into(),
            status: "running".into(),
            health: String::new(),
            started_at: "2025-12-02T07:00:00Z".into(),
            exit_code: 0,
            image: "mesh/traefik:1".into(),
        }];
        b1.units.insert("redis-server".into(), "active".into());
        b1.redis = Some(Ok(servers(&[(KEY, "http://10.0.0.2:8000")])));
        let readings = vec![
            Reading {
                host: "w1".into(),
                role: role(),
                shown: true,
                peer: None,
                read: Ok(read(HEALTHY)),
            },
            Reading {
                host: "b1".into(),
                role: Role {
                    bastion: true,
                    bastions: vec!["b1".into()],
                    ..role()
                },
                shown: false,
                peer: None,
                read: Ok(b1),
            },
        ];
        let st = assess(&readings, &["w1".into(), "b1".into()], None);
        assert_eq!(st.len(), 1, "a bastion outside --limit is not shown");
        assert_eq!(
            st[0].all_problems(),
            [
                "cron: exited (code 137)",
                "web: route on b1 points at :8000, host says :8001. Fix: run mesh services-up"
            ]
        );
    }
}
