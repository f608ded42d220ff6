//! `mesh logs S`: the remote command that prints one host's logs of
//! service S ([`script`]), the checks on its inputs ([`check_name`],
//! [`check_since`]), and the cutting of what hosts send into whole lines,
//! each prefixed by its host and redacted ([`HostLines`]).
//!
//! The live copy is the container of the service's live slot (its record
//! in `/var/lib/mesh/deploy/S.state`; slot `a` when none), else the one in
//! the shared project `mesh`; a stopped one is shown too (why it died is
//! the point). `--file NAME` reads `/containers/log/S/NAME` instead. A
//! host without either says so with [`ABSENT`] and is left out.

use crate::phases::services::compose::PROJECT;
use crate::phases::services::slots::state_fn;
use crate::phases::services::LOG_DIR;
use crate::quote::Script;
use std::sync::Mutex;

/// The exit code of [`script`] on a host that has no such container or file.
pub(crate) const ABSENT: i32 = 3;

/// What to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// The live copy's container logs (stdout and stderr).
    Container,
    /// A file the service writes under `/containers/log/<service>/`.
    File(String),
}

/// One `logs` request (its inputs already checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub service: String,
    pub source: Source,
    /// Lines from the end.
    pub tail: u32,
    /// Docker's `--since` (containers only).
    pub since: Option<String>,
    /// Keep streaming new lines.
    pub follow: bool,
}

/// Why a name or time was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("{what} {value:?} is not a plain name. Fix: use letters, digits, `.`, `_` and `-` only, not starting with `.` or `-` (no `/`: {what} is looked up inside {within})")]
    BadName {
        what: &'static str,
        value: String,
        within: String,
    },
    #[error("--since {0:?} is neither a duration nor a time. Fix: use e.g. 10m, 1h30m, 2025-12-02 or 2025-12-02T07:40:00")]
    BadSince(String),
    #[error("--since does not apply to --file (a log file has no timestamps mesh can read). Fix: drop --since, or use --tail N")]
    SinceWithFile,
}

/// A name mesh accepts for a service or log file: letters, digits, `.`,
/// `_`, `-`, not starting with `.` or `-` (so never `..` or a path).
pub(crate) fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with(['.', '-'])
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// [`is_name`], or the error naming `what` and where it is looked up.
pub(crate) fn check_name(what: &'static str, value: &str, within: &str) -> Result<(), InputError> {
    if is_name(value) {
        Ok(())
    } else {
        Err(InputError::BadName {
            what,
            value: value.to_string(),
            within: within.to_string(),
        })
    }
}

/// Docker's `--since`: a Go duration (`10m`, `1h30m`, `1.5h`) or a date
/// and time (`2025-12-02`, `2025-12-02T07:40:00Z`, a Unix timestamp).
pub(crate) fn check_since(since: &str) -> Result<(), InputError> {
    let bad = || InputError::BadSince(since.to_string());
    if since.is_empty() || since.len() > 40 {
        return Err(bad());
    }
    if is_duration(since) {
        return Ok(());
    }
    let time = since.starts_with(|c: char| c.is_ascii_digit())
        && since
            .bytes()
            .all(|b| b.is_ascii_digit() || b"-:.TZ+".contains(&b));
    time.then_some(()).ok_or_else(bad)
}

/// `(<number><unit>)+` with Go's units.
fn is_duration(s: &str) -> bool {
    let mut rest = s;
    while !rest.is_empty() {
        let num = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num == 0 || rest[..num].parse::<f64>().is_err() {
            return false;
        }
        rest = &rest[num..];
        let Some(unit) = ["ns", "us", "ms", "h", "m", "s"]
            .into_iter()
            .find(|u| rest.starts_with(u))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

/// The command for `req` on one host: the logs on stdout (the container's
/// stderr merged in), exit [`ABSENT`] when the host has none.
pub(crate) fn script(req: &Request) -> Script {
    let svc = req.service.as_str();
    let tail = req.tail.to_string();
    let mut s = Script::new();
    match &req.source {
        Source::Container => {
            s.raw(&state_fn());
            s.line("slot=$(mesh_state {} | sed -n 's/^slot //p')", &[svc]);
            s.raw("id=");
            s.line(
                "for p in {}\"${slot:-a}\" {}; do",
                &[&format!("mesh-{svc}-"), PROJECT],
            );
            s.line(
                "  [ -n \"$id\" ] || id=$(docker ps -aq --filter \"label=com.docker.compose.project=$p\" --filter {} 2>/dev/null | head -n 1)",
                &[&format!("label=com.docker.compose.service={svc}")],
            );
            s.raw("done");
            s.line(
                "[ -n \"$id\" ] || { echo {} >&2; exit {}; }",
                &[&format!("no container of {svc} here"), &ABSENT.to_string()],
            );
            let mut args = vec!["--tail", tail.as_str()];
            if let Some(since) = &req.since {
                args.extend(["--since", since.as_str()]);
            }
            if req.follow {
                args.push("--follow");
            }
            let words: Vec<String> = args.iter().map(|a| crate::quote::quote(a)).collect();
            s.raw(&format!(
                "exec docker logs {} \"$id\" 2>&1",
                words.join(" ")
            ));
        }
        Source::File(name) => {
            let path = format!("{LOG_DIR}/{svc}/{name}");
            s.line(
                "[ -f {} ] || { echo {} >&2; exit {}; }",
                &[&path, &format!("no {path} here"), &ABSENT.to_string()],
            );
            let follow = if req.follow { " -F" } else { "" };
            s.line(&format!("exec tail -n {{}}{follow} {{}}"), &[&tail, &path]);
        }
    }
    s
}

/// Cuts one host's output into whole lines, each `<host> | <line>`
/// (host names padded to `width`) and redacted by `redact`.
pub(crate) struct HostLines<R> {
    prefix: String,
    redact: R,
    partial: Mutex<Vec<u8>>,
}

impl<R: Fn(&str) -> String> HostLines<R> {
    pub fn new(host: &str, width: usize, redact: R) -> Self {
        HostLines {
            prefix: format!("{host:width$} | "),
            redact,
            partial: Mutex::new(Vec::new()),
        }
    }

    /// The lines `chunk` completes, each ending in `\n`.
    pub fn push(&self, chunk: &[u8]) -> String {
        let mut partial = self.partial.lock().unwrap_or_else(|e| e.into_inner());
        partial.extend_from_slice(chunk);
        let Some(end) = partial.iter().rposition(|&b| b == b'\n') else {
            return String::new();
        };
        let whole: Vec<u8> = partial.drain(..=end).collect();
        self.lines(&whole)
    }

    /// What is left once the stream ended (a last line without `\n`).
    pub fn finish(&self) -> String {
        let rest = std::mem::take(&mut *self.partial.lock().unwrap_or_else(|e| e.into_inner()));
        self.lines(&rest)
    }

    fn lines(&self, bytes: &[u8]) -> String {
        let text = String::from_utf8_lossy(bytes);
        let mut out = String::new();
        for line in text.lines() {
            out.push_str(&self.prefix);
            out.push_str(&(self.redact)(line.trim_end_matches('\r')));
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(source: Source, follow: bool) -> Request {
        Request {
            service: "web".into(),
            source,
            tail: 100,
            since: Some("10m".into()),
            follow,
        }
    }

    #[test]
    fn the_container_script_picks_the_live_copy() {
        let s = script(&req(Source::Container, true));
        crate::quote::assert_valid_sh(&s);
        let text = s.as_str();
        let tail = text.split_once("fi; }\n").unwrap().1;
        assert_eq!(
            tail,
            "slot=$(mesh_state web | sed -n 's/^slot //p')
id=
for p in mesh-web-\"${slot:-a}\" mesh; do
  [ -n \"$id\" ] || id=$(docker ps -aq --filter \"label=com.docker.compose.project=$p\" --filter label=com.docker.compose.service=web 2>/dev/null | head -n 1)
done
[ -n \"$id\" ] || { echo 'no container of web here' >&2; exit 3; }
exec docker logs --tail 100 --since 10m --follow \"$id\" 2>&1
"
        );
        let once = script(&Request {
            since: None,
            ..req(Source::Container, false)
        });
        assert!(once
            .as_str()
            .ends_with("exec docker logs --tail 100 \"$id\" 2>&1\n"));
    }

    #[test]
    fn the_container_script_runs_on_a_host() {
        // A fake docker: project mesh-web-b has container "idb".
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("docker");
        std::fs::write(
            &bin,
            "#!/bin/sh\ncase \"$*\" in\n  *project=mesh-web-b*) echo idb ;;\n  logs*) echo \"logs $*\" ;;\nesac\n",
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let text = script(&req(Source::Container, false)).as_str().replace(
            crate::phases::services::slots::SLOT_DIR,
            state.to_str().unwrap(),
        );
        let run = || {
            std::process::Command::new("sh")
                .args(["-c", &text])
                .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
                .output()
                .unwrap()
        };
        let out = run();
        assert_eq!(
            out.status.code(),
            Some(ABSENT),
            "no record: slot a, then mesh"
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "no container of web here\n"
        );
        std::fs::write(state.join("web.state"), "slot b\nimage mesh/web:2\n").unwrap();
        let out = run();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "logs logs --tail 100 --since 10m idb\n"
        );
    }

    #[test]
    fn the_file_script_tails_inside_the_service_folder() {
        let s = script(&Request {
            since: None,
            ..req(Source::File("access.log".into()), true)
        });
        crate::quote::assert_valid_sh(&s);
        assert_eq!(
            s.as_str(),
            "[ -f /containers/log/web/access.log ] || { echo 'no /containers/log/web/access.log here' >&2; exit 3; }
exec tail -n 100 -F /containers/log/web/access.log
"
        );
        let once = script(&Request {
            since: None,
            ..req(Source::File("a.log".into()), false)
        });
        assert!(once
            .as_str()
            .ends_with("exec tail -n 100 /containers/log/web/a.log\n"));
    }

    #[test]
    fn names_and_times_are_checked() {
        for good in ["web", "web-1.x_y", "access.log"] {
            assert!(is_name(good), "{good}");
        }
        for bad in [
            "", "..", ".", "../x", "a/b", "-x", ".hidden", "a b", "a;b", "é",
        ] {
            assert!(!is_name(bad), "{bad}");
        }
        let err = check_name("--file", "../../etc/shadow", "/containers/log/web")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Fix:") && err.contains("/containers/log/web"),
            "{err}"
        );
        for good in [
            "10m",
            "1h30m",
            "1.5h",
            "90s",
            "2025-12-02",
            "2025-12-02T07:40:00Z",
            "1764661200",
        ] {
            assert_eq!(check_since(good), Ok(()), "{good}");
        }
        for bad in ["", "m", "yesterday", "10x", "1h;rm", "-5m"] {
            assert!(check_since(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn output_is_cut_into_prefixed_redacted_lines() {
        let lines = HostLines::new("w1", 4, |l: &str| l.replace("hunter2", "***"));
        assert_eq!(lines.push(b"one\ntw"), "w1   | one\n");
        assert_eq!(lines.push(b"o pw=hunter2\r\nthr"), "w1   | two pw=***\n");
        assert_eq!(lines.push(b"ee"), "");
        assert_eq!(lines.finish(), "w1   | three\n");
        assert_eq!(lines.finish(), "");
        // Bytes that are not UTF-8 do not stop the stream.
        assert_eq!(lines.push(b"\xff ok\n"), "w1   | \u{fffd} ok\n");
    }
}
