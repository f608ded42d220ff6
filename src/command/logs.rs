//! `mesh logs S`: the live copy's logs of service S from every selected
//! host that runs it, each line prefixed by its host and redacted
//! ([`crate::phases::logs`]). Without `--follow` each host's lines come
//! as one block, hosts in inventory order; with it every host streams at
//! once, line by line, until Ctrl-C (exit 130: the remote `docker logs`
//! are stopped and no ssh is left). Read-only: no run lock.

use super::Session;
use crate::error::{Error, EXIT_INTERRUPTED};
use crate::ops::fmt_code;
use crate::phases::fanout::{self, Panicked};
use crate::phases::logs::{self as plogs, HostLines, Request, Source, ABSENT};
use crate::phases::services::LOG_DIR;
use crate::phases::HostCtx;
use crate::ssh::{Input, Output, SshError, StdoutSink};
use std::io::Write as _;
use std::sync::Arc;

pub(crate) use crate::phases::logs::InputError;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The service (a service folder of your dockerfiles).
    #[arg(value_name = "SERVICE")]
    pub service: String,
    /// Only lines newer than this: a duration (10m, 1h30m) or a time
    /// (2025-12-02, 2025-12-02T07:40:00).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Lines from the end of each host's log.
    #[arg(long, short = 'n', value_name = "N", default_value_t = 100)]
    pub tail: u32,
    /// Keep printing new lines, from every host at once (one stream per
    /// host: --parallel does not bound it), until Ctrl-C.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Read /containers/log/SERVICE/NAME (a file the service writes there)
    /// instead of the container's output.
    #[arg(long, value_name = "NAME")]
    pub file: Option<String>,
}

/// Check the options before any host is contacted; the request they make.
pub(crate) fn check(args: &Args) -> Result<Request, InputError> {
    plogs::check_name("the service", &args.service, "/var/lib/mesh/deploy")?;
    let source = match &args.file {
        Some(name) => {
            plogs::check_name("--file", name, &format!("{LOG_DIR}/{}", args.service))?;
            if args.since.is_some() {
                return Err(InputError::SinceWithFile);
            }
            Source::File(name.clone())
        }
        None => Source::Container,
    };
    if let Some(since) = &args.since {
        plogs::check_since(since)?;
    }
    Ok(Request {
        service: args.service.clone(),
        source,
        tail: args.tail,
        since: args.since.clone(),
        follow: args.follow,
    })
}

/// Why one host's logs could not be read.
#[derive(Debug, thiserror::Error)]
enum HostError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("reading the logs failed (exit {code}): {tail}")]
    Failed { code: String, tail: String },
    #[error(transparent)]
    Panicked(#[from] Panicked),
}

/// What one host gave: its output, or `None` when it has no such log.
fn judge(ctx: &HostCtx, script: &str, out: Output) -> Result<Option<Output>, HostError> {
    ctx.log.block(
        &format!("logs (exit {})", fmt_code(out.code)),
        &format!("$ {script}\n(output shown on the terminal)"),
    );
    match out.code {
        Some(0) => Ok(Some(out)),
        Some(ABSENT) => Ok(None),
        // The stream was cut by a signal on the host (docker restarted).
        None if !out.stdout.is_empty() => Ok(Some(out)),
        code => Err(HostError::Failed {
            code: fmt_code(code),
            tail: ctx.log.redact(&out.tail(5)),
        }),
    }
}

pub(crate) async fn run(s: &mut Session, args: &Args) -> Result<u8, Error> {
    let req = check(args)?;
    let ctxs = s.selected()?;
    let width = ctxs.iter().map(|c| c.host.name.len()).max().unwrap_or(0);
    let script = plogs::script(&req).into_string();
    let results = if req.follow {
        let Some(results) = s.until_interrupted(follow(&ctxs, &script, width)).await else {
            return Ok(EXIT_INTERRUPTED);
        };
        results
    } else {
        let reads = fanout::each(&ctxs, s.global.parallel, |ctx| {
            let script = script.clone();
            async move {
                let out = ctx.conn.exec(&script, Input::None).await?;
                judge(&ctx, &script, out)
            }
        });
        let Some(reads) = s.until_interrupted(reads).await else {
            return Ok(EXIT_INTERRUPTED);
        };
        let mut stdout = std::io::stdout().lock();
        for (ctx, read) in &reads {
            if let Ok(Some(out)) = read {
                let redact = |l: &str| ctx.log.redact(l);
                let lines = HostLines::new(&ctx.host.name, width, redact);
                let text = lines.push(&out.stdout) + &lines.finish();
                if stdout.write_all(text.as_bytes()).is_err() {
                    break;
                }
            }
        }
        let _ = stdout.flush();
        reads
            .into_iter()
            .map(|(ctx, r)| (ctx.host.name.clone(), r.map(|o| o.is_some())))
            .collect()
    };
    Ok(report(&req, &results))
}

/// Every host streams at once; lines go to one printer thread (a stdout
/// that blocks never stalls the tasks or Ctrl-C). Per host: whether it had
/// the log.
async fn follow(
    ctxs: &[Arc<HostCtx>],
    script: &str,
    width: usize,
) -> Vec<(String, Result<bool, HostError>)> {
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let printer = std::thread::spawn(move || {
        let mut stdout = std::io::stdout();
        for text in rx {
            if stdout.write_all(text.as_bytes()).is_err() || stdout.flush().is_err() {
                break;
            }
        }
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (i, ctx) in ctxs.iter().enumerate() {
        let (ctx, script, tx) = (ctx.clone(), script.to_string(), tx.clone());
        tasks.spawn(async move {
            let redactor = ctx.clone();
            let lines = Arc::new(HostLines::new(&ctx.host.name, width, move |l: &str| {
                redactor.log.redact(l)
            }));
            let (sink_lines, sink_tx) = (lines.clone(), std::sync::Mutex::new(tx.clone()));
            let sink: StdoutSink = Arc::new(move |chunk: &[u8]| {
                let text = sink_lines.push(chunk);
                if !text.is_empty() {
                    let tx = sink_tx.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = tx.send(text);
                }
            });
            let res = match ctx.conn.exec_streaming(&script, sink).await {
                Ok(out) => judge(&ctx, &script, out).map(|o| o.is_some()),
                Err(e) => Err(e.into()),
            };
            let rest = lines.finish();
            if !rest.is_empty() {
                let _ = tx.send(rest);
            }
            (i, res)
        });
    }
    drop(tx);
    let mut results: Vec<Option<Result<bool, HostError>>> = ctxs.iter().map(|_| None).collect();
    while let Some(done) = tasks.join_next().await {
        if let Ok((i, res)) = done {
            results[i] = Some(res);
        }
    }
    // Every sender is gone: the printer ends once it printed the rest.
    let _ = tokio::task::spawn_blocking(move || printer.join()).await;
    ctxs.iter()
        .zip(results)
        .map(|(c, r)| (c.host.name.clone(), r.unwrap_or(Err(Panicked.into()))))
        .collect()
}

/// On stderr: the hosts that failed, and which had no such log; the exit code.
fn report(req: &Request, results: &[(String, Result<bool, HostError>)]) -> u8 {
    let what = match &req.source {
        Source::Container => format!("no container of {}", req.service),
        Source::File(name) => format!("no {LOG_DIR}/{}/{name}", req.service),
    };
    let absent: Vec<&str> = results
        .iter()
        .filter(|(_, r)| matches!(r, Ok(false)))
        .map(|(h, _)| h.as_str())
        .collect();
    let shown = results
        .iter()
        .filter(|(_, r)| matches!(r, Ok(true)))
        .count();
    let mut failed = false;
    for (host, r) in results {
        if let Err(e) = r {
            eprintln!("{host}: {e}");
            failed = true;
        }
    }
    if shown == 0 && !failed {
        eprintln!(
            "{what} on any selected host ({} hosts). Fix: check the service name, or --limit",
            results.len()
        );
        return 1;
    }
    if !absent.is_empty() {
        eprintln!("{what} on {}", absent.join(", "));
    }
    u8::from(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(file: Option<&str>, since: Option<&str>) -> Args {
        Args {
            service: "web".into(),
            since: since.map(String::from),
            tail: 100,
            follow: false,
            file: file.map(String::from),
        }
    }

    #[test]
    fn inputs_are_checked_before_any_host() {
        assert_eq!(
            check(&args(None, Some("10m"))).unwrap().source,
            Source::Container
        );
        assert_eq!(
            check(&args(Some("app.log"), None)).unwrap().source,
            Source::File("app.log".into())
        );
        for bad in [
            args(Some("../../../etc/shadow"), None),
            args(Some("a/b"), None),
            args(Some(".."), None),
            args(None, Some("soon")),
            args(Some("app.log"), Some("10m")),
            Args {
                service: "../x".into(),
                ..args(None, None)
            },
        ] {
            let e = check(&bad).unwrap_err().to_string();
            assert!(e.contains("Fix:"), "{e}");
        }
    }

    #[test]
    fn the_report_names_failed_and_absent_hosts() {
        let req = check(&args(None, None)).unwrap();
        let failed = || {
            Err(HostError::Failed {
                code: "1".into(),
                tail: "boom".into(),
            })
        };
        assert_eq!(
            report(&req, &[("a".into(), Ok(true)), ("b".into(), Ok(false))]),
            0
        );
        assert_eq!(
            report(&req, &[("a".into(), Ok(true)), ("b".into(), failed())]),
            1
        );
        assert_eq!(report(&req, &[("a".into(), Ok(false))]), 1, "nothing shown");
        assert_eq!(report(&req, &[]), 1);
    }
}
