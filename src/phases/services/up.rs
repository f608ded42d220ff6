//! `services-up` on one host: `docker compose up -d` in /containers/build
//! (the v2 plugin or Debian's `docker-compose` 1.29, whichever the host
//! has), then wait until every container of the project runs — and is
//! healthy when it has a health check. One round trip.

use super::plan::SLOT_COMPOSE;
use super::slots::{recorded_services, state_fn, SLOT_DIR};
use super::BUILD_DIR;
use crate::ops::{fmt_code, OpError, OpFailure, OpReport, Outcome};
use crate::phases::{HostCtx, Step, StepOutcome};
use crate::quote::Script;
use crate::ssh::{BoxFut, Input};

/// Compose project name: containers are `mesh_<service>_1` (v1) or `mesh-<service>-1` (v2).
pub(crate) use super::compose::PROJECT;
/// Seconds to wait for containers to run and be healthy.
const WAIT_SECONDS: u64 = 90;
/// Log lines shown for a container that failed.
const LOG_LINES: usize = 15;

pub(crate) struct Up;

/// Exit code of the script when the host has no compose at all.
const NO_COMPOSE: i32 = 3;

/// The shell that picks the host's compose command into `"$@"`: the
/// compose plugin when it is in one of the docker CLI's plugin folders,
/// looked up with builtins and run by its path (compose v2 runs standalone
/// too): `docker compose` first has the CLI list every plugin, ~45 ms of a
/// small host's CPU at every start of every copy, and `docker compose
/// version` to find it would cost as much again. Then Debian's
/// `docker-compose` (v1), then a plugin found elsewhere.
pub(crate) fn pick_compose() -> &'static str {
    r#"set --
for d in "${DOCKER_CONFIG:-${HOME:-/root}/.docker}/cli-plugins" /usr/local/lib/docker/cli-plugins /usr/local/libexec/docker/cli-plugins /usr/lib/docker/cli-plugins /usr/libexec/docker/cli-plugins; do
  if [ -x "$d/docker-compose" ]; then set -- "$d/docker-compose"; break; fi
done
if [ "$#" = 0 ]; then
  if command -v docker-compose >/dev/null 2>&1; then set -- docker-compose
  elif docker compose version >/dev/null 2>&1; then set -- docker compose
  else echo "neither \`docker compose\` nor \`docker-compose\` is installed" >&2; exit 3
  fi
fi"#
}

fn script() -> Script {
    let mut s = Script::new();
    s.line(
        "cd {} 2>/dev/null || { echo 'up nothing'; exit 0; }",
        &[BUILD_DIR],
    );
    s.line(
        "[ -f docker-compose.yml ] || ls */{} >/dev/null 2>&1 || { echo 'up nothing'; exit 0; }",
        &[SLOT_COMPOSE],
    );
    s.raw(pick_compose());
    s.raw("echo \"up compose $*\"");
    s.raw(
        r#"up() {
  out=$("$@" 2>&1); rc=$?
  printf '%s\n' "$out" | sed 's/^/out /'
  [ "$rc" = 0 ] || { printf '%s\n' "$out" | tail -n 15 >&2; exit 4; }
}"#,
    );
    s.raw(&state_fn());
    // A service a deploy moved to another image (or back) stays on it: its
    // record names the image, compose only offers the newest build as default.
    s.raw(&format!(
        r#"for n in $({}); do
  st=$(mesh_state "$n"); img=$(printf '%s\n' "$st" | sed -n 's/^image //p')
  if [ -n "$img" ] && ! printf '%s\n' "$st" | grep -q '^slot ' && docker image inspect "$img" >/dev/null 2>&1; then
    export "MESH_IMAGE_$(echo "$n" | tr 'a-z-' 'A-Z_')=$img"
  fi
done"#,
        recorded_services()
    ));
    s.line("projects={}", &[PROJECT]);
    s.line(
        "if [ -f docker-compose.yml ]; then up \"$@\" -p {} up -d --remove-orphans; else ids=$(docker ps -aq --filter label=com.docker.compose.project={}); [ -z \"$ids\" ] || docker rm -f $ids >/dev/null; fi",
        &[PROJECT, PROJECT],
    );
    // Services with a port pair: their live slot, on that slot's port, with
    // the image their record names.
    s.line("mkdir -p {}", &[SLOT_DIR]);
    s.line("for f in {}/*/{}; do", &[BUILD_DIR, SLOT_COMPOSE]);
    s.raw(
        r#"  [ -f "$f" ] || continue
  d=$(dirname "$f"); svc=$(basename "$d")
  st=$(mesh_state "$svc")
  slot=$(printf '%s\n' "$st" | sed -n 's/^slot //p'); slot=${slot:-a}
  img=$(printf '%s\n' "$st" | sed -n 's/^image //p')
  read -r pa pb < "$d/.mesh-ports"
  if [ "$slot" = b ]; then port=$pb; else port=$pa; fi
  var=MESH_PORT_$(echo "$svc" | tr 'a-z-' 'A-Z_')
  pin=MESH_IMAGE_UNSET=1
  if [ -n "$img" ] && docker image inspect "$img" >/dev/null 2>&1; then pin="MESH_IMAGE=$img"; fi"#,
    );
    s.line(
        "  up env \"$var=$port\" \"$pin\" \"$@\" -p \"mesh-$svc-$slot\" --project-directory {} -f \"$f\" up -d",
        &[BUILD_DIR],
    );
    s.line("  state={}/$svc.state", &[SLOT_DIR]);
    s.raw(
        r#"  # What now runs live, for deploy's "unchanged" and its way back.
  if [ -z "$img" ]; then
    id=$(docker ps -aq --filter "label=com.docker.compose.project=mesh-$svc-$slot" | head -n 1)
    if [ -n "$id" ]; then
      live=$(docker inspect --format '{{.Config.Image}}' "$id")
      w=$(mktemp -p "$(dirname "$state")" .mesh-tmp.XXXXXXXX) \
        && printf 'slot %s\nimage %s\n' "$slot" "$live" > "$w" \
        && mv -f -- "$w" "$state" || { echo "cannot write $state" >&2; exit 4; }
    fi
  fi
  projects="$projects mesh-$svc-$slot"
done"#,
    );
    s.line(
        "deadline=$(( $(date +%s) + {} ))",
        &[&WAIT_SECONDS.to_string()],
    );
    s.raw(
        "ids() { for p in $projects; do docker ps -aq --filter label=com.docker.compose.project=$p; done; }",
    );
    s.raw(
        &r#"state() { docker inspect --format '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$1" | sed 's|^/||'; }
while :; do
  pending=0
  for id in $(ids); do
    set -- $(state "$id")
    case "$2 $3" in
      "running healthy"|"running none") ;;
      "exited "*|"dead "*|"running unhealthy") ;;
      *) pending=1 ;;
    esac
  done
  [ "$pending" = 0 ] && break
  [ "$(date +%s)" -ge "$deadline" ] && break
  sleep 1
done
for id in $(ids); do
  set -- $(state "$id")
  echo "ctr $1 $2 $3"
  case "$2 $3" in
    "running healthy"|"running none") ;;
    *) docker logs --tail LOG_LINES "$1" 2>&1 | sed "s|^|log $1 |" ;;
  esac
done"#
        .replace("LOG_LINES", &LOG_LINES.to_string()),
    );
    s
}

/// After the routes follow the records: the standby copy of a slotted
/// service (left running by an interrupted deploy) stops, gracefully, so
/// one copy runs. It waits a moment first, for Traefik to apply the routes.
pub(crate) struct Settle;

fn settle_script() -> Script {
    let mut s = Script::new();
    s.raw(&state_fn());
    s.raw("stale=''");
    s.line("for f in {}/*/{}; do", &[BUILD_DIR, SLOT_COMPOSE]);
    s.raw(
        r#"  [ -f "$f" ] || continue
  svc=$(basename "$(dirname "$f")")
  slot=$(mesh_state "$svc" | sed -n 's/^slot //p')
  if [ "$slot" = b ]; then other=a; else other=b; fi
  ids=$(docker ps -aq --filter "label=com.docker.compose.project=mesh-$svc-$other")
  [ -z "$ids" ] || stale="$stale mesh-$svc-$other"
done
[ -n "$stale" ] || exit 0
sleep 3
for p in $stale; do
  ids=$(docker ps -aq --filter "label=com.docker.compose.project=$p")
  [ -z "$ids" ] && continue
  docker stop -t 10 $ids >/dev/null 2>&1 || true
  docker rm -f $ids >/dev/null 2>&1 || true
  echo "stopped $p"
done"#,
    );
    s
}

impl Step for Settle {
    fn name(&self) -> &'static str {
        "up"
    }

    fn run<'a>(&'a self, ctx: &'a HostCtx) -> BoxFut<'a, Result<StepOutcome, OpFailure>> {
        Box::pin(async move {
            if ctx.dry_run {
                return Ok(StepOutcome::default());
            }
            let out = ctx
                .op_ctx()
                .run_ok("stop standby copies", settle_script().as_str(), Input::None)
                .await
                .map_err(|error| OpFailure {
                    label: "stop standby copies".into(),
                    error,
                    done: Vec::new(),
                })?;
            let stopped: Vec<String> = out
                .stdout_str()
                .lines()
                .filter_map(|l| l.strip_prefix("stopped "))
                .map(str::to_string)
                .collect();
            Ok(StepOutcome {
                reports: stopped
                    .iter()
                    .map(|p| OpReport {
                        label: format!("stop standby copy {p}"),
                        outcome: Outcome::Changed,
                        detail: "not the live slot".into(),
                    })
                    .collect(),
                output: (!stopped.is_empty())
                    .then(|| format!("stopped standby copies: {}", stopped.join(", "))),
            })
        })
    }
}

/// One container's state as the script reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Container {
    pub name: String,
    pub status: String,
    pub health: String,
    pub log: Vec<String>,
}

impl Container {
    pub fn ok(&self) -> bool {
        self.status == "running" && (self.health == "healthy" || self.health == "none")
    }
}

/// What the script printed: whether compose changed anything, the containers.
pub(crate) fn parse(stdout: &str) -> (bool, Vec<Container>, Vec<String>) {
    let mut changed = false;
    let mut out = Vec::new();
    let mut containers: Vec<Container> = Vec::new();
    for line in stdout.lines() {
        if let Some(text) = line.strip_prefix("out ") {
            let verb = |w: &str| text.split_whitespace().any(|t| t == w);
            changed |= [
                "Creating",
                "Recreating",
                "Starting",
                "Created",
                "Recreated",
                "Started",
                "Removing",
                "Removed",
            ]
            .iter()
            .any(|w| verb(w));
            out.push(text.to_string());
        } else if let Some(rest) = line.strip_prefix("ctr ") {
            let mut w = rest.split_whitespace();
            containers.push(Container {
                name: w.next().unwrap_or_default().to_string(),
                status: w.next().unwrap_or_default().to_string(),
                health: w.next().unwrap_or("none").to_string(),
                log: Vec::new(),
            });
        } else if let Some(rest) = line.strip_prefix("log ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            if let Some(c) = containers.iter_mut().rev().find(|c| c.name == name) {
                c.log.push(text.to_string());
            }
        }
    }
    (changed, containers, out)
}

impl Step for Up {
    fn name(&self) -> &'static str {
        "up"
    }

    fn run<'a>(&'a self, ctx: &'a HostCtx) -> BoxFut<'a, Result<StepOutcome, OpFailure>> {
        Box::pin(async move {
            let fail = |error| OpFailure {
                label: "compose up".into(),
                error,
                done: Vec::new(),
            };
            if ctx.dry_run {
                return Ok(StepOutcome {
                    reports: Vec::new(),
                    output: Some(format!(
                        "would run compose -p {PROJECT} up -d in {BUILD_DIR}"
                    )),
                });
            }
            let out = ctx
                .op_ctx()
                .run("compose up", script().as_str(), Input::None)
                .await
                .map_err(fail)?;
            let stdout = out.stdout_str();
            if stdout.lines().any(|l| l == "up nothing") {
                return Ok(StepOutcome {
                    reports: Vec::new(),
                    output: Some("no services on this host".into()),
                });
            }
            if !out.success() {
                let what = if out.code == Some(NO_COMPOSE) {
                    "compose up. Fix: install docker-compose-plugin (add it to docker.packages) or Debian's docker-compose".to_string()
                } else {
                    "compose up".to_string()
                };
                return Err(fail(OpError::Command {
                    what,
                    code: fmt_code(out.code),
                    tail: ctx.log.redact(&out.tail(8)),
                }));
            }
            let (changed, containers, compose_out) = parse(&stdout);
            let bad: Vec<&Container> = containers.iter().filter(|c| !c.ok()).collect();
            if !bad.is_empty() || containers.is_empty() {
                let mut msg = String::new();
                if containers.is_empty() {
                    msg.push_str("no container of the project is running; compose said:\n");
                    msg.push_str(&compose_out.join("\n"));
                }
                for c in bad {
                    msg.push_str(&format!(
                        "container {} is {} (health: {}) after {WAIT_SECONDS} s; last log lines:\n",
                        c.name, c.status, c.health
                    ));
                    for l in &c.log {
                        msg.push_str(&format!("  {l}\n"));
                    }
                }
                return Err(fail(OpError::Step(Box::new(UpError::Unhealthy(
                    ctx.log.redact(msg.trim_end()),
                )))));
            }
            let summary: Vec<String> = containers
                .iter()
                .map(|c| match c.health.as_str() {
                    "none" => format!("{}: {}", c.name, c.status),
                    h => format!("{}: {} ({h})", c.name, c.status),
                })
                .collect();
            Ok(StepOutcome {
                reports: vec![OpReport {
                    label: format!("compose -p {PROJECT} up -d"),
                    outcome: if changed {
                        Outcome::Changed
                    } else {
                        Outcome::Unchanged
                    },
                    detail: if changed {
                        "containers (re)created or started".into()
                    } else {
                        String::new()
                    },
                }],
                output: Some(summary.join("\n")),
            })
        })
    }
}

/// Why `compose up` failed on a host.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpError {
    /// Containers not running or not healthy in time: each with its state
    /// and last log lines (redacted).
    #[error("{0}")]
    Unhealthy(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `pick_compose` puts into "$@" with only `bin` on PATH and
    /// DOCKER_CONFIG at `config`, run by the local sh.
    fn picked(bin: &std::path::Path, config: &std::path::Path) -> (Option<i32>, String) {
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("{}\necho \"$*\"", pick_compose()))
            .env_clear()
            .env("PATH", bin)
            .env("DOCKER_CONFIG", config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().into(),
        )
    }

    fn executable(path: &std::path::Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn compose_is_picked_without_starting_docker() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, config) = (dir.path().join("bin"), dir.path().join("config"));
        std::fs::create_dir_all(&bin).unwrap();
        // A plugin in the CLI's folder runs by its path, though no `docker`
        // is on PATH to ask.
        let plugin = config.join("cli-plugins/docker-compose");
        executable(&plugin);
        assert_eq!(
            picked(&bin, &config),
            (Some(0), plugin.display().to_string())
        );
        std::fs::remove_dir_all(&config).unwrap();
        let system_plugin = [
            "/usr/local/lib/docker/cli-plugins",
            "/usr/local/libexec/docker/cli-plugins",
            "/usr/lib/docker/cli-plugins",
            "/usr/libexec/docker/cli-plugins",
        ]
        .iter()
        .any(|d| std::path::Path::new(d).join("docker-compose").exists());
        if !system_plugin {
            assert_eq!(picked(&bin, &config).0, Some(NO_COMPOSE));
            executable(&bin.join("docker-compose"));
            assert_eq!(picked(&bin, &config), (Some(0), "docker-compose".into()));
        }
    }

    #[test]
    fn parses_compose_output_and_container_states() {
        let text = "up compose docker-compose\nout Creating mesh_web_1 ... done\n\
                    ctr mesh_web_1 running healthy\nctr mesh_db_1 exited none\n\
                    log mesh_db_1 boom: bad config\n";
        let (changed, cs, _) = parse(text);
        assert!(changed);
        assert!(cs[0].ok());
        assert!(!cs[1].ok());
        assert_eq!(cs[1].log, vec!["boom: bad config"]);
        let (changed, _, _) = parse("out mesh_web_1 is up-to-date\nctr mesh_web_1 running none\n");
        assert!(!changed);
        let (changed, _, _) = parse("out  Container mesh-web-1  Running\n");
        assert!(!changed);
    }

    #[test]
    fn the_script_is_valid_shell() {
        crate::quote::assert_valid_sh(&script());
        crate::quote::assert_valid_sh(&settle_script());
    }
}
