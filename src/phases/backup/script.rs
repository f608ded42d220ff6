//! The host's backup script, `/usr/local/sbin/mesh-backup`, and its units.
//!
//! mesh renders one script per host: a fixed body (below, no values in it)
//! after a head that names the host, the repository's retention flags and
//! each backed-up service's settings, every value quoted ([`Script::line`]).
//! `mesh backup` runs it over SSH; the `mesh-backup.timer` runs the same
//! script on the host. It sources `/etc/mesh/restic.env` (0600), so
//! restic's password and the bucket key are never arguments.
//!
//! Its lines for the controller: `result SVC ok ADDED TOTAL SECONDS`,
//! `result SVC failed REASON`, `forget ok|failed REASON`, `check ok|failed`,
//! `restore SVC ...`; everything else is log.

use super::BackupSpec;
use crate::inventory::Keep;
use crate::quote::Script;

/// The script's path on the host.
pub(crate) const SCRIPT: &str = "/usr/local/sbin/mesh-backup";
/// The 0600 environment file with the repository and its credentials.
pub(crate) const ENV_FILE: &str = "/etc/mesh/restic.env";
/// The systemd units of the schedule.
pub(crate) const SERVICE_UNIT: &str = "mesh-backup.service";
pub(crate) const TIMER_UNIT: &str = "mesh-backup.timer";

/// One backed-up service as the host runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostService {
    pub name: String,
    pub spec: BackupSpec,
}

/// The environment file: the repository through the host's own garage node.
pub(crate) fn env_file(overlay_ip: &str, password: &str, key: &str, secret: &str) -> String {
    let mut s = Script::new();
    s.line(
        "RESTIC_REPOSITORY={}",
        &[&format!(
            "s3:http://{overlay_ip}:3900/{}",
            crate::phases::nodes::BACKUP_BUCKET
        )],
    );
    s.line("RESTIC_PASSWORD={}", &[password]);
    s.line("AWS_ACCESS_KEY_ID={}", &[key]);
    s.line("AWS_SECRET_ACCESS_KEY={}", &[secret]);
    s.raw("AWS_DEFAULT_REGION=garage");
    s.into_string()
}

/// The script for a host running `services`, forgetting by `keep`.
pub(crate) fn host_script(host: &str, keep: &Keep, services: &[HostService]) -> String {
    let mut s = Script::new();
    s.raw("#!/bin/sh");
    s.raw("# Written by mesh (mesh backup): backs up, lists and restores this host's");
    s.raw("# services in the fleet's restic repository. Edits are overwritten.");
    s.raw("set -u");
    s.line("HOST={}", &[host]);
    s.line("KEEP={}", &[&keep.flags().join(" ")]);
    let names: Vec<&str> = services.iter().map(|x| x.name.as_str()).collect();
    s.line("SERVICES={}", &[&names.join(" ")]);
    s.raw("conf() {");
    s.raw("  DUMP='' RESTORE='' PATHS='' VOLS='' EXCL=''");
    s.raw("  case $1 in");
    for svc in services {
        let lines = |items: &[String]| items.join("\n");
        let paths: Vec<String> = svc
            .spec
            .paths
            .iter()
            .map(|p| format!("{}/{}/{p}", crate::phases::services::DATA_DIR, svc.name))
            .collect();
        let vols: Vec<String> = svc
            .spec
            .volumes
            .iter()
            .map(|v| format!("{}_{v}", crate::phases::services::compose::PROJECT))
            .collect();
        s.line(
            "    {}) DUMP={} RESTORE={} PATHS={} VOLS={} EXCL={} ;;",
            &[
                &svc.name,
                svc.spec.dump.as_deref().unwrap_or(""),
                svc.spec.restore.as_deref().unwrap_or(""),
                &lines(&paths),
                &lines(&vols),
                &lines(&svc.spec.exclude),
            ],
        );
    }
    s.raw("    *) return 1 ;;");
    s.raw("  esac");
    s.raw("}");
    s.raw(BODY);
    s.into_string()
}

/// The fixed part of the script (no values: those are in the head).
const BODY: &str = r#"NL='
'
ENV=/etc/mesh/restic.env
RETRY=${MESH_RETRY_LOCK:-5m}
RUN=$(date -u +%Y%m%dT%H%M%SZ)
die() { echo "error $*"; exit 3; }
[ -r "$ENV" ] || die "$ENV is missing. Fix: run mesh backup from the controller"
set -a; . "$ENV"; set +a
command -v restic >/dev/null 2>&1 || die "restic is not installed. Fix: run mesh backup from the controller"
TMP=$(mktemp -d /tmp/mesh-backup.XXXXXXXX) || die "cannot create a temp dir"
trap 'rm -rf "$TMP"' EXIT
umask 077

# A service's result for the controller, also kept (with its time) for
# `mesh status`: /var/lib/mesh/backup/<service>.last, written atomically.
result_line() {
  echo "result $1"
  mkdir -p /var/lib/mesh/backup
  printf '%s %s\n' "$(date +%s)" "${1#* }" > "/var/lib/mesh/backup/.${1%% *}.tmp" &&
    mv "/var/lib/mesh/backup/.${1%% *}.tmp" "/var/lib/mesh/backup/${1%% *}.last"
}

# The running container of a service: its live slot's, else the host project's.
container() {
  slot=$(sed -n 's/^slot //p' "/var/lib/mesh/deploy/$1.state" 2>/dev/null)
  for p in "mesh-$1-${slot:-a}" mesh; do
    id=$(docker ps -q --filter "label=com.docker.compose.project=$p" --filter "label=com.docker.compose.service=$1" | head -n 1)
    [ -n "$id" ] && { echo "$id"; return 0; }
  done
  return 1
}

# Every container of a service (both slots and the host project), running or not.
all_containers() {
  docker ps -aq --filter "label=com.docker.compose.service=$1" | while read -r id; do
    p=$(docker inspect -f '{{index .Config.Labels "com.docker.compose.project"}}' "$id")
    case $p in mesh|"mesh-$1-a"|"mesh-$1-b") echo "$id" ;; esac
  done
}

# A snapshot's summary line from restic --json output: "ADDED TOTAL ID".
summary() {
  sed -n 's/.*"message_type":"summary".*/&/p' "$1" | tail -n 1 | awk '{
    a=$0; sub(/.*"data_added":/, "", a); sub(/[,}].*/, "", a)
    t=$0; sub(/.*"total_bytes_processed":/, "", t); sub(/[,}].*/, "", t)
    i=$0; sub(/.*"snapshot_id":"/, "", i); sub(/".*/, "", i)
    print a, t, i }'
}

# Wait (up to 60 s) until the service's container runs and is healthy (or has no healthcheck).
wait_healthy() {
  for i in $(seq 1 120); do
    if c=$(container "$1"); then
      h=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$c")
      { [ "$h" = healthy ] || [ "$h" = none ]; } && return 0
    fi
    sleep 0.5
  done
  return 1
}

tail_of() { tail -n 3 "$1" | tr '\n' ' ' | cut -c1-300; }

has_stdin_command() { restic backup --help 2>/dev/null | grep -q -- --stdin-from-command; }

# Back up one service: its dump (through stdin), then its paths and volumes.
backup_one() {
  svc=$1
  conf "$svc" || { result_line "$svc failed this host does not run it with a backup: section"; return 1; }
  start=$(date +%s)
  added=0 total=0 dumpid=
  if [ -n "$DUMP" ]; then
    c=$(container "$svc") || { result_line "$svc failed no running container to dump from"; return 1; }
    if has_stdin_command; then
      restic backup --json --retry-lock "$RETRY" --host "$HOST" --tag mesh --tag "host=$HOST" --tag "service=$svc" --tag "run=$RUN" --tag part=dump \
        --stdin-filename "$svc.dump" --stdin-from-command -- docker exec "$c" sh -c "$DUMP" >"$TMP/out" 2>"$TMP/err"
      rc=$?
    else
      { docker exec "$c" sh -c "$DUMP" 2>"$TMP/dumperr"; echo $? >"$TMP/dumprc"; } |
        restic backup --json --retry-lock "$RETRY" --host "$HOST" --tag mesh --tag "host=$HOST" --tag "service=$svc" --tag "run=$RUN" --tag part=dump \
          --stdin --stdin-filename "$svc.dump" >"$TMP/out" 2>"$TMP/err"
      rc=$?
      drc=$(cat "$TMP/dumprc")
      if [ "$drc" != 0 ]; then
        set -- $(summary "$TMP/out")
        [ $# -lt 3 ] || restic forget --retry-lock "$RETRY" "$3" >/dev/null 2>&1
        cat "$TMP/dumperr" >>"$TMP/err"
        rc=$drc
      fi
    fi
    if [ "$rc" != 0 ]; then
      result_line "$svc failed dump \`$DUMP\` exited $rc: $(tail_of "$TMP/err")"
      return 1
    fi
    set -- $(summary "$TMP/out")
    added=$((added + ${1:-0})) total=$((total + ${2:-0})) dumpid=${3:-}
  fi
  set --
  IFS=$NL
  for p in $PATHS; do
    [ -e "$p" ] || { unset IFS; result_line "$svc failed $p does not exist"; return 1; }
    set -- "$@" "$p"
  done
  for v in $VOLS; do
    m=$(docker volume inspect -f '{{.Mountpoint}}' "$v" 2>/dev/null) || { unset IFS; result_line "$svc failed volume $v does not exist"; return 1; }
    set -- "$@" "$m"
  done
  ex=''
  for e in $EXCL; do ex="$ex--exclude=$e$NL"; done
  if [ $# -gt 0 ]; then
    # shellcheck disable=SC2086
    restic backup --json --retry-lock "$RETRY" --host "$HOST" --tag mesh --tag "host=$HOST" --tag "service=$svc" --tag "run=$RUN" --tag part=files \
      $ex -- "$@" >"$TMP/out" 2>"$TMP/err"
    rc=$?
    unset IFS
    if [ "$rc" != 0 ]; then
      # No snapshot may claim to hold the service: the run's dump goes too.
      [ -z "$dumpid" ] || restic forget --retry-lock "$RETRY" "$dumpid" >/dev/null 2>&1
      result_line "$svc failed restic backup exited $rc: $(tail_of "$TMP/err")"
      return 1
    fi
    set -- $(summary "$TMP/out")
    added=$((added + ${1:-0})) total=$((total + ${2:-0}))
  fi
  unset IFS
  result_line "$svc ok $added $total $(( $(date +%s) - start ))"
}

cmd_backup() {
  prune=1
  only=''
  while [ $# -gt 0 ]; do
    case $1 in
      --no-prune) prune=0 ;;
      *) only="$only $1" ;;
    esac
    shift
  done
  failed=0
  # Only stale locks (their process gone, or older than restic's 30 min): never a live one.
  n=$(restic unlock 2>&1 | sed -n 's/^successfully removed \([0-9]*\) locks*$/\1/p')
  [ -z "$n" ] || echo "note removed $n stale restic lock(s)"
  for svc in ${only:-$SERVICES}; do
    backup_one "$svc" || failed=1
  done
  if [ "$prune" = 1 ] && [ -n "$KEEP" ]; then
    # shellcheck disable=SC2086
    if restic forget --retry-lock "$RETRY" --host "$HOST" --tag mesh --group-by host,paths $KEEP --prune >"$TMP/out" 2>&1; then
      echo "forget ok"
    else
      echo "forget failed $(tail_of "$TMP/out")"
      failed=1
    fi
  fi
  exit $failed
}

cmd_check() {
  if restic check --retry-lock "$RETRY" --read-data-subset "$1" >"$TMP/out" 2>&1; then
    echo "check ok"
  else
    echo "check failed $(tail_of "$TMP/out")"
    exit 1
  fi
}

cmd_snapshots() {
  restic snapshots --retry-lock "$RETRY" --json --tag mesh 2>"$TMP/err" || { echo "error restic snapshots: $(tail_of "$TMP/err")"; exit 1; }
}

# restore SVC FILES_ID|- DUMP_ID|- [--dry-run]: into an empty state, the old data aside.
cmd_restore() {
  svc=$1 files=$2 dump=$3 dry=${4:-}
  conf "$svc" || die "this host does not run $svc with a backup: section"
  set --
  IFS=$NL
  for p in $PATHS; do set -- "$@" "$p"; done
  for v in $VOLS; do
    m=$(docker volume inspect -f '{{.Mountpoint}}' "$v" 2>/dev/null) || { docker volume create "$v" >/dev/null && m=$(docker volume inspect -f '{{.Mountpoint}}' "$v"); } || die "cannot create volume $v"
    set -- "$@" "$m"
  done
  unset IFS
  if [ "$dry" = --dry-run ]; then
    for p in "$@"; do echo "restore $svc would replace $p ($(du -sh "$p" 2>/dev/null | cut -f1 || echo absent)) with snapshot $files"; done
    [ "$dump" = - ] || echo "restore $svc would feed dump $dump to \`$RESTORE\`"
    exit 0
  fi
  ids=$(all_containers "$svc")
  running=$(for id in $ids; do [ "$(docker inspect -f '{{.State.Running}}' "$id")" = true ] && echo "$id"; done)
  [ -z "$ids" ] || docker stop $ids >/dev/null || die "cannot stop $svc"
  echo "restore $svc stopped $(echo $ids | wc -w) containers"
  aside="mesh-old-$RUN"
  for p in "$@"; do
    if [ -e "$p" ]; then
      owner=$(stat -c %u:%g "$p") mode=$(stat -c %a "$p")
      mv -- "$p" "$p.$aside" || die "cannot move $p aside"
      mkdir -p -- "$p" && chown "$owner" "$p" && chmod "$mode" "$p"
    fi
  done
  back() {
    for p in "$@"; do
      if [ -e "$p.$aside" ]; then rm -rf -- "$p" && mv -- "$p.$aside" "$p"; fi
    done
  }
  if [ "$files" != - ]; then
    if ! restic restore --retry-lock "$RETRY" "$files" --target / >"$TMP/out" 2>&1; then
      back "$@"
      [ -z "$running" ] || docker start $running >/dev/null
      die "restic restore $files failed, the old data is back in place: $(tail_of "$TMP/out")"
    fi
    echo "restore $svc files $files"
  fi
  [ -z "$running" ] || docker start $running >/dev/null || die "cannot start $svc again (the old data is in *.$aside)"
  if [ -n "$running" ]; then
    wait_healthy "$svc" || die "$svc is not healthy after the restore (the old data is in *.$aside)"
  fi
  if [ "$dump" != - ] && [ -n "$RESTORE" ]; then
    wait_healthy "$svc" || die "$svc did not start again (the old data is in *.$aside)"
    c=$(container "$svc")
    if ! restic dump --retry-lock "$RETRY" "$dump" "/$svc.dump" 2>"$TMP/err" | docker exec -i "$c" sh -c "$RESTORE" >"$TMP/out" 2>&1; then
      die "restore command \`$RESTORE\` failed (the old data is in *.$aside): $(tail_of "$TMP/out") $(tail_of "$TMP/err")"
    fi
    echo "restore $svc dump $dump"
    wait_healthy "$svc" || die "$svc is not healthy after its restore command (the old data is in *.$aside)"
  fi
  for p in "$@"; do rm -rf -- "$p.$aside"; done
  echo "restore $svc ok"
}

case ${1:-backup} in
  backup) shift; cmd_backup "$@" ;;
  check) cmd_check "${2:-5%}" ;;
  snapshots) cmd_snapshots ;;
  restore) shift; cmd_restore "$@" ;;
  *) die "usage: mesh-backup [backup [--no-prune] [SERVICE...] | check [SUBSET] | snapshots | restore SVC FILES DUMP [--dry-run]]" ;;
esac
"#;

/// The oneshot service the timer starts: the same backup, on the host.
pub(crate) fn service_unit() -> String {
    format!(
        "# Managed by mesh: the scheduled backup of this host's services.\n[Unit]\nDescription=mesh backup of this host's services\nAfter=docker.service garage.service\nWants=docker.service\n\n[Service]\nType=oneshot\nExecStart={SCRIPT} backup\n"
    )
}

/// The timer, on the inventory's `backup.schedule`.
pub(crate) fn timer_unit(schedule: &str) -> String {
    format!(
        "# Managed by mesh: backup.schedule of the inventory.\n[Unit]\nDescription=mesh backup schedule\n\n[Timer]\nOnCalendar={schedule}\nPersistent=true\nRandomizedDelaySec=10min\n\n[Install]\nWantedBy=timers.target\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg() -> HostService {
        HostService {
            name: "pg".into(),
            spec: BackupSpec {
                paths: vec!["uploads".into(), "it's here".into()],
                volumes: vec!["pgdata".into()],
                dump: Some("runuser -u postgres -- pg_dumpall".into()),
                restore: Some("runuser -u postgres -- psql".into()),
                exclude: vec!["*.tmp".into()],
            },
        }
    }

    #[test]
    fn the_head_quotes_every_value() {
        let keep = Keep {
            last: Some(2),
            ..Keep::none()
        };
        let text = host_script("db-1", &keep, &[pg()]);
        let head: Vec<&str> = text.lines().take(11).collect();
        assert_eq!(
            head,
            [
                "#!/bin/sh",
                "# Written by mesh (mesh backup): backs up, lists and restores this host's",
                "# services in the fleet's restic repository. Edits are overwritten.",
                "set -u",
                "HOST=db-1",
                "KEEP='--keep-last 2'",
                "SERVICES=pg",
                "conf() {",
                "  DUMP='' RESTORE='' PATHS='' VOLS='' EXCL=''",
                "  case $1 in",
                "    pg) DUMP='runuser -u postgres -- pg_dumpall' RESTORE='runuser -u postgres -- psql' PATHS='/containers/data/pg/uploads",
            ]
        );
        assert!(
            text.contains("/containers/data/pg/it'\\''s here' VOLS=mesh_pgdata EXCL='*.tmp' ;;\n")
        );
        let mut s = Script::new();
        s.raw(&text);
        crate::quote::assert_valid_sh(&s);
    }

    #[test]
    fn the_env_file_is_sourceable_and_names_the_backups_bucket() {
        let env = env_file("10.1.2.3", "pa$$ 'w", "GK1", "sec");
        assert_eq!(
            env,
            "RESTIC_REPOSITORY=s3:http://10.1.2.3:3900/mesh-backups\nRESTIC_PASSWORD='pa$$ '\\''w'\nAWS_ACCESS_KEY_ID=GK1\nAWS_SECRET_ACCESS_KEY=sec\nAWS_DEFAULT_REGION=garage\n"
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("{env}printf %s \"$RESTIC_PASSWORD\"")])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "pa$$ 'w");
    }

    #[test]
    fn the_timer_fires_on_the_schedule() {
        let t = timer_unit("*-*-* 03:00");
        assert!(t.contains("\nOnCalendar=*-*-* 03:00\n"), "{t}");
        assert!(service_unit().contains("\nExecStart=/usr/local/sbin/mesh-backup backup\n"));
    }
}
