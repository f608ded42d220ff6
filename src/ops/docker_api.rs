//! Shell that asks the host's Docker daemon: straight through its socket
//! with curl where it can (the socket is there, curl is, and no other
//! daemon is named by `DOCKER_HOST`/`DOCKER_CONTEXT`), else the docker CLI.
//!
//! The docker CLI is a Go binary that costs ~25 ms of a small host's CPU per
//! call (`docker info` and `docker compose` ~70, as they first run every CLI
//! plugin to list them); curl asking the same is ~12. A deploy asks ~15
//! times per host, on every host at once.

use crate::quote::Script;

/// The shell that sets `$dinfo` to what Docker's daemon says about itself
/// (its `/info`, JSON; empty when it cannot say). Straight from the daemon's
/// socket by curl where it can: `docker info` first runs every CLI plugin to
/// list them, which costs ~3 times the answer (on a small host ~70 ms of CPU
/// against ~25), and a deploy asks several times per host.
///
/// It also sets `$dapi` to 1 when the socket answered, so later lines can
/// ask the daemon's API with [`DOCKER_API`] instead of the docker CLI.
pub(crate) fn docker_info_script() -> Script {
    let mut s = Script::new();
    s.raw("dinfo=");
    s.raw(DAPI_CHECK);
    s.raw(&format!(
        "[ -z \"$dapi\" ] || dinfo=$({DOCKER_API} http://docker/info 2>/dev/null) || {{ dinfo=; dapi=; }}"
    ));
    s.raw("[ -n \"$dinfo\" ] || dinfo=$(docker info --format '{{json .}}' 2>/dev/null) || dinfo=");
    s
}

/// curl asking the local Docker daemon's API (append `http://docker/PATH`):
/// a small C program where the docker CLI is a Go binary (~12 ms of a lab
/// host's CPU against ~25 for the same answer).
pub(crate) const DOCKER_API: &str = "curl -sf --max-time 10 --unix-socket /var/run/docker.sock";

/// The shell that sets `$dapi` to 1 when [`DOCKER_API`] may be asked: the
/// local daemon's socket is there, curl is, and no other daemon is named.
pub(crate) const DAPI_CHECK: &str = r#"dapi=; if [ -z "${DOCKER_HOST:-}${DOCKER_CONTEXT:-}" ] && [ -S /var/run/docker.sock ] && command -v curl >/dev/null 2>&1; then dapi=1; fi"#;

/// The shell that sets `$var` to the ids of the containers (any state,
/// newest first) that match `filters` (`label=K=V`, as `docker ps
/// --filter` takes them): from the daemon's API when `$dapi` says so,
/// else `docker ps -aq`.
pub(crate) fn container_ids(var: &str, filters: &[String]) -> String {
    let mut by_key: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    let mut cli = String::new();
    for f in filters {
        let (k, v) = f.split_once('=').unwrap_or((f.as_str(), ""));
        by_key.entry(k).or_default().push(v);
        cli.push_str(" --filter ");
        cli.push_str(&crate::quote::quote(f));
    }
    let json = serde_json::to_string(&by_key).unwrap_or_default();
    format!(
        "if [ -n \"$dapi\" ] && {var}=$({DOCKER_API} -G --data-urlencode {} 'http://docker/containers/json?all=1'); then {var}=$(printf '%s' \"${var}\" | grep -o '\"Id\":\"[0-9a-f]*\"' | cut -d'\"' -f4); else {var}=$(docker ps -aq{cli}); fi",
        crate::quote::quote(&format!("filters={json}"))
    )
}

/// The shell that sets `$st` to `STATUS HEALTH` of container `$id`
/// (`running healthy`, `exited none`; empty when it is gone), like
/// `docker inspect` would, from the daemon's API when `$dapi` says so.
pub(crate) const CONTAINER_STATE: &str = r#"st=
  if [ -n "$dapi" ] && j=$(curl -sf --max-time 10 --unix-socket /var/run/docker.sock "http://docker/containers/$id/json" 2>/dev/null); then
    st=$(printf '%s\n' "$j" | sed -n 's/.*"State":{"Status":"\([a-z]*\)".*"Health":{"Status":"\([a-z]*\)".*/\1 \2/p; t; s/.*"State":{"Status":"\([a-z]*\)".*/\1 none/p')
  else
    st=$(docker inspect --format '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id" 2>/dev/null)
  fi"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `script` under `sh` with `dapi=1` and a stand-in `curl` that
    /// prints `answer` (what Docker's API answered on a lab host).
    fn with_api_answer(script: &str, answer: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let curl = dir.path().join("curl");
        std::fs::write(&curl, format!("#!/bin/sh\ncat <<'EOF'\n{answer}\nEOF\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&curl, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("dapi=1\n{script}")])
            .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn a_containers_state_and_ids_are_read_from_the_daemons_api() {
        let healthy = r#"{"Id":"4be5","Created":"2026-12-03T21:40:01Z","Path":"python3","Args":["/app/app.py"],"State":{"Status":"running","Running":true,"Paused":false,"Restarting":false,"OOMKilled":false,"Dead":false,"Pid":4242,"ExitCode":0,"Error":"","StartedAt":"2026-12-03T21:40:02Z","FinishedAt":"0001-01-01T00:00:00Z","Health":{"Status":"healthy","FailingStreak":0,"Log":[{"Start":"x","End":"y","ExitCode":0,"Output":"{\"State\":{\"Status\":\"exited\"}}"}]}},"Config":{"Healthcheck":{"Test":["CMD","true"]}}}"#;
        let state = format!("id=4be5\n{CONTAINER_STATE}\necho \"[$st]\"");
        assert_eq!(with_api_answer(&state, healthy), "[running healthy]\n");
        let plain =
            r#"{"Id":"4be5","State":{"Status":"exited","Running":false,"ExitCode":1},"Config":{}}"#;
        assert_eq!(with_api_answer(&state, plain), "[exited none]\n");

        let filters = ["label=com.docker.compose.project=mesh-web-a".to_string()];
        let ids = format!("{}\necho \"[$ids]\"", container_ids("ids", &filters));
        let list = r#"[{"Id":"aa11","Names":["/mesh-web-a-web-1"],"ImageID":"sha256:ff","Labels":{"com.docker.compose.project":"mesh-web-a"},"NetworkSettings":{"Networks":{"host":{"NetworkID":"n1","EndpointID":"e1"}}}},{"Id":"bb22","ImageID":"sha256:ee"}]"#;
        assert_eq!(with_api_answer(&ids, list), "[aa11\nbb22]\n");
        assert_eq!(with_api_answer(&ids, "[]"), "[]\n");
        assert!(container_ids("ids", &filters).contains(
            r#"-G --data-urlencode 'filters={"label":["com.docker.compose.project=mesh-web-a"]}'"#
        ));
    }
}
