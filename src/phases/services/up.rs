//! `services-up` on one host: `docker compose up -d` in /containers/build
//! (the v2 plugin or Debian's `docker-compose` 1.29, whichever the host
//! has), then wait until every container of the project runs — and is
//! healthy when it has a health check. One round trip.

use super::plan::SLOT_COMPOSE;
use super::slots::SLOT_DIR;
use super::BUILD_DIR;
use crate::ops::{fmt_code, OpError, OpFailure, OpReport, Outcome};
use crate::phases::{HostCtx, Step, StepOutcome};
use crate::quote::Script;
use crate::ssh::{BoxFut, Input};

/// Compose project name: containers are `mesh_<service>_1` (v1) or `mesh-<service>-1` (v2).
pub(crate) const PROJECT: &str = "mesh";
/// Seconds to wait for containers to run and be healthy.
const WAIT_SECONDS: u64 = 90;
/// Log lines shown for a container that failed.
const LOG_LINES: usize = 15;

pub(crate) struct Up;

/// Exit code of the script when the host has no compose at all.
const NO_COMPOSE: i32 = 3;

/// The shell that picks the host's compose command into `"$@"`.
pub(crate) fn pick_compose() -> &'static str {
    r#"if docker compose version >/dev/null 2>&1; then set -- docker compose
elif command -v docker-compose >/dev/null 2>&1; then set -- docker-compose
else echo "neither \`docker compose\` nor \`docker-compose\` is installed" >&2; exit 3
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
    s.line("projects={}", &[PROJECT]);
    s.line(
        "if [ -f docker-compose.yml ]; then up \"$@\" -p {} up -d --remove-orphans; else ids=$(docker ps -aq --filter label=com.docker.compose.project={}); [ -z \"$ids\" ] || docker rm -f $ids >/dev/null; fi",
        &[PROJECT, PROJECT],
    );
    // Services with a port pair: their live slot, on that slot's port.
    s.line("mkdir -p {}", &[SLOT_DIR]);
    // Slot records are replaced atomically, as deploy writes them.
    s.raw(r#"put() { w=$(mktemp -p "$(dirname "$2")" .mesh-tmp.XXXXXXXX) && printf '%s\n' "$1" > "$w" && mv -f -- "$w" "$2"; }"#);
    s.line("for f in {}/*/{}; do", &[BUILD_DIR, SLOT_COMPOSE]);
    s.raw(
        r#"  [ -f "$f" ] || continue
  d=$(dirname "$f"); svc=$(basename "$d")"#,
    );
    s.line("  state={}/$svc.slot", &[SLOT_DIR]);
    s.raw(
        r#"  slot=$(cat "$state" 2>/dev/null || echo a)
  read -r pa pb < "$d/.mesh-ports"
  if [ "$slot" = b ]; then port=$pb; else port=$pa; fi
  var=MESH_PORT_$(echo "$svc" | tr 'a-z-' 'A-Z_')
  up env "$var=$port" "$@" -p "mesh-$svc-$slot" -f "$f" up -d
  [ -f "$state" ] || put "$slot" "$state"
  # What now runs live, for deploy's "unchanged" and its way back.
  id=$(docker ps -aq --filter "label=com.docker.compose.project=mesh-$svc-$slot" | head -n 1)
  [ -z "$id" ] || put "$(docker inspect --format '{{.Config.Image}}' "$id")" "${state%.slot}.image"
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
                return Err(fail(OpError::Other(ctx.log.redact(msg.trim_end()))));
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
