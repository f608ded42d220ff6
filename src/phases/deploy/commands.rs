//! The remote commands of a deploy, as pure builders (unit-tested by their
//! text, as Kamal tests its `commands/`): compose invocations of a slot or
//! of the host's shared project, the graceful stop, the health wait, and
//! the bastion-side wait for Traefik to show a switched route; plus the
//! lock holder text.

use super::super::services::plan::{ServicePlan, SLOT_COMPOSE};
use super::super::services::slots::Slot;
use super::super::services::up::PROJECT;
use super::super::services::BUILD_DIR;
use super::super::HostCtx;
use crate::inventory::TraefikApi;
use crate::ops::docker_api::{container_ids, CONTAINER_STATE, DAPI_CHECK};
use crate::quote::{quote, Script};
use std::collections::{BTreeMap, BTreeSet};

/// `MESH_PORT_<SERVICE>`, as the slot compose file reads it.
pub(super) fn port_env(service: &str) -> String {
    format!("MESH_{}", super::super::services::plan::port_var(service))
}

/// The compose command line of a slot: project, project directory (the
/// group file's relative paths), the slot's compose file.
pub(super) fn slot_compose(service: &str, slot: Slot) -> Vec<String> {
    vec![
        "-p".into(),
        slot.project(service),
        "--project-directory".into(),
        BUILD_DIR.into(),
        "-f".into(),
        format!("{BUILD_DIR}/{service}/{SLOT_COMPOSE}"),
    ]
}

/// The compose command line of the host's shared project.
pub(super) fn shared_compose() -> Vec<String> {
    vec![
        "-p".into(),
        PROJECT.into(),
        "-f".into(),
        format!("{BUILD_DIR}/docker-compose.yml"),
    ]
}

/// How a copy to start is run.
pub(super) struct Launch {
    /// Compose arguments before the subcommand.
    compose: Vec<String>,
    /// `VAR=value` environment for compose.
    env: Vec<String>,
    /// `up` arguments after `up -d`.
    up: Vec<String>,
    /// Containers of the copy: `docker ps` filters.
    pub filters: Vec<String>,
    /// TCP port it must accept on when it has no health check.
    pub port: Option<u16>,
}

impl Launch {
    pub(super) fn slot(s: &ServicePlan, slot: Slot, image: &str) -> Launch {
        let ports = s.slot.as_ref().map(|x| x.ports).unwrap_or((0, 0));
        let port = slot.port(ports);
        Launch {
            compose: slot_compose(&s.name, slot),
            env: vec![
                format!("{}={port}", port_env(&s.name)),
                format!("MESH_IMAGE={image}"),
            ],
            up: vec!["--force-recreate".into()],
            filters: vec![format!(
                "label=com.docker.compose.project={}",
                slot.project(&s.name)
            )],
            port: Some(port),
        }
    }

    pub(super) fn shared(s: &ServicePlan, image: &str, port: Option<u16>) -> Launch {
        Launch {
            compose: shared_compose(),
            env: vec![format!(
                "{}={image}",
                super::super::services::compose::image_var(&s.name)
            )],
            up: vec![
                "--no-deps".into(),
                "--force-recreate".into(),
                s.name.clone(),
            ],
            filters: vec![
                format!("label=com.docker.compose.project={PROJECT}"),
                format!("label=com.docker.compose.service={}", s.name),
            ],
            port,
        }
    }
}

impl Launch {
    /// The compose `up` of this copy, on the host's compose command (`"$@"`,
    /// see `pick_compose`); its output's last lines as `log ` lines when it fails.
    pub(super) fn up_line(&self) -> String {
        let q = |words: &[String]| words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ");
        format!(
            "out=$(env {} \"$@\" {} up -d {} 2>&1) || {{ printf '%s\\n' \"$out\" | tail -n 15 | sed 's/^/log /'; echo 'not healthy: compose up failed'; exit 0; }}",
            q(&self.env),
            q(&self.compose),
            q(&self.up)
        )
    }
}

/// The shell that stops a copy's containers gracefully, then removes them.
pub(super) fn stop_script(filters: &[String], grace: u64) -> Script {
    let mut sc = Script::new();
    sc.raw(DAPI_CHECK);
    sc.raw(&container_ids("ids", filters));
    sc.line(
        "[ -z \"$ids\" ] || { docker stop -t {} $ids >/dev/null 2>&1; docker rm -f $ids >/dev/null 2>&1; }; true",
        &[&grace.to_string()],
    );
    sc
}

/// A route check on one bastion: Traefik's service `name` (of `proto`) must
/// list `want` and not `gone`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteCheck {
    pub proto: String,
    pub name: String,
    pub want: Option<String>,
    pub gone: Option<String>,
}

impl RouteCheck {
    /// What Traefik should show, for an error that says it did not.
    pub(crate) fn describe(&self) -> String {
        match (&self.want, &self.gone) {
            (Some(w), _) => format!("{}@redis → {w}", self.name),
            (None, Some(g)) => format!("{}@redis without {g}", self.name),
            _ => self.name.clone(),
        }
    }
}

/// The server URLs/addresses of each Traefik service in a key set.
pub(crate) fn servers(keys: &BTreeMap<String, String>) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for (k, v) in keys {
        let parts: Vec<&str> = k.split('/').collect();
        if let ["traefik", proto, "services", name, "loadbalancer", "servers", _, "url" | "address"] =
            parts[..]
        {
            out.insert((proto.to_string(), name.to_string()), v.clone());
        }
    }
    out
}

/// What to confirm when S's keys go from `old` to `new`.
pub(crate) fn route_checks(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Vec<RouteCheck> {
    let (old, new) = (servers(old), servers(new));
    let mut names: BTreeSet<&(String, String)> = old.keys().collect();
    names.extend(new.keys());
    names
        .into_iter()
        .filter_map(|key| {
            let want = new.get(key).cloned();
            let gone = old.get(key).filter(|o| Some(*o) != want.as_ref()).cloned();
            (want.is_some() || gone.is_some()).then(|| RouteCheck {
                proto: key.0.clone(),
                name: key.1.clone(),
                want,
                gone,
            })
        })
        .collect()
}

/// The bastion-side loop that waits until Traefik's API shows every check.
pub(crate) fn confirm_script(api: &TraefikApi, checks: &[RouteCheck], seconds: u64) -> Script {
    let mut s = Script::new();
    s.line(
        "end=$(( $(date +%s) + {} )); t0=$(date +%s%N)",
        &[&seconds.to_string()],
    );
    s.raw("while :; do\n  ok=1");
    for c in checks {
        let url = format!("{}/api/{}/services/{}@redis", api.base, c.proto, c.name);
        s.line("  a=$(curl -s --max-time 2 {} 2>/dev/null)", &[&url]);
        if let Some(w) = &c.want {
            s.line(
                "  printf '%s' \"$a\" | grep -qF -- {} || ok=0",
                &[&format!("\"{w}\"")],
            );
        }
        if let Some(g) = &c.gone {
            s.line(
                "  ! printf '%s' \"$a\" | grep -qF -- {} || ok=0",
                &[&format!("\"{g}\"")],
            );
        }
    }
    s.raw("  if [ \"$ok\" = 1 ]; then echo \"switched $(( ($(date +%s%N) - t0) / 1000000 ))\"; exit 0; fi");
    s.raw("  [ \"$(date +%s)\" -ge \"$end\" ] && break\n  sleep 0.2\ndone");
    s.raw("echo \"waited $(( ($(date +%s%N) - t0) / 1000000 ))\"; printf 'traefik: %s\\n' \"$a\" | head -c 400");
    s
}

/// The health wait of a new copy, on the host.
pub(super) fn health_script(ctx: &HostCtx, s: &ServicePlan, launch: &Launch) -> (Script, u64) {
    let health = s.options.health.clone();
    let deadline = health.as_ref().map_or(60, |h| h.deadline);
    let ip = ctx
        .vars
        .get("OVERLAY_IP")
        .unwrap_or(&ctx.host.address)
        .to_string();
    let mut sc = Script::new();
    sc.raw(DAPI_CHECK);
    sc.raw(&container_ids("id", &launch.filters));
    sc.raw("id=${id%%[!0-9a-f]*}");
    sc.raw("[ -n \"$id\" ] || { echo 'not healthy: no container'; exit 0; }");
    sc.line("end=$(( $(date +%s) + {} ))", &[&deadline.to_string()]);
    sc.raw("passes=0; up=0");
    sc.raw("while :; do");
    sc.raw(CONTAINER_STATE);
    sc.raw(
        r#"  case "$st" in
    "running unhealthy"|exited*|dead*|restarting*|"") break ;;
    "running healthy"|"running none") docker_ok=1 ;;
    *) docker_ok=0 ;;
  esac
  app_ok=0"#,
    );
    match (&health, launch.port) {
        (Some(h), port) => {
            let port = port.unwrap_or(0);
            let url = format!("http://{ip}:{port}{}", h.path);
            sc.line(
                "  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time {} {} 2>/dev/null || true)",
                &[&h.timeout.to_string(), &url],
            );
            sc.raw("  case \"$code\" in 2??) passes=$((passes + 1)) ;; *) passes=0 ;; esac");
            sc.line(
                "  [ \"$passes\" -ge {} ] && app_ok=1",
                &[&h.passes.to_string()],
            );
        }
        (None, Some(port)) => {
            // No health check of mesh's: the port must accept connections
            // (and Docker's own check, if any, pass).
            sc.line(
                "  if [ \"$st\" = 'running healthy' ] || timeout 2 bash -c {} 2>/dev/null; then app_ok=1; fi",
                &[&format!("exec 3<>/dev/tcp/{ip}/{port}")],
            );
        }
        (None, None) => {
            // Nothing to probe: running (and healthy, if Docker checks it)
            // for three polls in a row.
            sc.raw(
                "  [ \"$docker_ok\" = 1 ] && up=$((up + 1)) || up=0; [ \"$up\" -ge 3 ] && app_ok=1",
            );
        }
    }
    sc.raw("  [ \"$docker_ok\" = 1 ] && [ \"$app_ok\" = 1 ] && { echo healthy; exit 0; }");
    sc.raw("  [ \"$(date +%s)\" -ge \"$end\" ] && break");
    sc.line(
        "  sleep {}",
        &[&health.as_ref().map_or(1, |h| h.interval).to_string()],
    );
    sc.raw("done");
    sc.raw("echo \"not healthy: ${st:-gone}\"");
    sc.raw("docker logs --tail 15 \"$id\" 2>&1 | sed 's/^/log /'");
    (sc, deadline)
}

/// `user@hostname` of the controller, for locks and audit lines.
pub(super) fn controller_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "controller".into());
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    format!("{user}@{host}")
}

/// The lock holder text a stale lock of this controller is recognised by.
pub(super) fn holder_text(pid: u32) -> String {
    format!(
        "pid {pid} on {} since {} (mesh {})",
        controller_name(),
        crate::log::utc_time(":"),
        env!("CARGO_PKG_VERSION")
    )
}

/// A holder that was a mesh process of this controller that no longer runs.
pub(super) fn is_stale(holder: &str) -> bool {
    let mut w = holder.split_whitespace();
    let (Some("pid"), Some(pid), Some("on"), Some(who)) = (w.next(), w.next(), w.next(), w.next())
    else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    who == controller_name()
        && pid != std::process::id()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_checks_are_the_deployed_services_own() {
        let old = keys(&[
            ("traefik/http/routers/web/rule", "Host(`a`)"),
            (
                "traefik/http/services/web/loadbalancer/servers/c1/url",
                "http://10.0.0.2:8000",
            ),
        ]);
        let new = keys(&[
            ("traefik/http/routers/web/rule", "Host(`a`)"),
            (
                "traefik/http/services/web/loadbalancer/servers/c1/url",
                "http://10.0.0.2:8001",
            ),
            (
                "traefik/tcp/services/db/loadbalancer/servers/c1/address",
                "10.0.0.2:5433",
            ),
        ]);
        let checks = route_checks(&old, &new);
        assert_eq!(
            checks,
            vec![
                RouteCheck {
                    proto: "http".into(),
                    name: "web".into(),
                    want: Some("http://10.0.0.2:8001".into()),
                    gone: Some("http://10.0.0.2:8000".into()),
                },
                RouteCheck {
                    proto: "tcp".into(),
                    name: "db".into(),
                    want: Some("10.0.0.2:5433".into()),
                    gone: None,
                },
            ]
        );
        let api = TraefikApi::parse("http://127.0.0.1:9090").unwrap();
        let script = confirm_script(&api, &checks, 15);
        let text = script.as_str();
        assert!(
            text.contains("http://127.0.0.1:9090/api/http/services/web@redis"),
            "{text}"
        );
        assert!(
            text.contains("http://127.0.0.1:9090/api/tcp/services/db@redis"),
            "{text}"
        );
        crate::quote::assert_valid_sh(&script);
    }

    #[test]
    fn slot_commands_keep_the_group_files_relative_paths() {
        assert_eq!(
            slot_compose("kv", Slot::B),
            [
                "-p",
                "mesh-kv-b",
                "--project-directory",
                "/containers/build",
                "-f",
                "/containers/build/kv/.mesh-compose.yml"
            ]
        );
        assert_eq!(port_env("web-api"), "MESH_PORT_WEB_API");
        let stop = stop_script(&["label=com.docker.compose.project=mesh-kv-a".into()], 30);
        assert!(
            stop.as_str().contains("docker stop -t 30 $ids"),
            "{}",
            stop.as_str()
        );
        crate::quote::assert_valid_sh(&stop);
    }

    #[test]
    fn the_up_line_of_a_slot_names_its_port_image_and_project() {
        let launch = Launch {
            compose: slot_compose("kv", Slot::A),
            env: vec!["MESH_PORT_KV=8200".into(), "MESH_IMAGE=mesh/kv:1".into()],
            up: vec!["--force-recreate".into()],
            filters: Vec::new(),
            port: Some(8200),
        };
        let line = launch.up_line();
        assert!(
            line.starts_with("out=$(env MESH_PORT_KV=8200 MESH_IMAGE=mesh/kv:1 \"$@\" -p mesh-kv-a --project-directory /containers/build -f /containers/build/kv/.mesh-compose.yml up -d --force-recreate 2>&1)"),
            "{line}"
        );
        let mut s = Script::new();
        s.raw(&line);
        crate::quote::assert_valid_sh(&s);
    }

    #[test]
    fn a_stale_lock_is_one_of_this_controller_whose_process_is_gone() {
        assert!(!is_stale(&holder_text(std::process::id())));
        // pid_max is far below this.
        assert!(is_stale(&holder_text(4_000_000_000)));
        assert!(!is_stale("pid 4000000000 on someone@elsewhere since x"));
        assert!(!is_stale("garbage"));
    }
}
