//! Bounded fan-out for the commands that read hosts themselves instead of
//! running a phase (`status`, `logs`): one read per host, at most
//! `parallel` hosts at once (SSH logins are further bounded by
//! `--max-handshakes`), each on the host's own connection. Results come
//! back in host order; a read whose task panicked is that host's failure.
//! Dropping the future (Ctrl-C) aborts every task; the caller's interrupt
//! handling stops what they left running on the hosts.

use super::HostCtx;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// A host's read task panicked (a bug in mesh).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("internal error (a bug in mesh, please report it): the host's task panicked")]
pub(crate) struct Panicked;

/// Run `read` on every host, at most `parallel` at once.
pub(crate) async fn each<T, E, F, Fut>(
    hosts: &[Arc<HostCtx>],
    parallel: usize,
    read: F,
) -> Vec<(Arc<HostCtx>, Result<T, E>)>
where
    T: Send + 'static,
    E: From<Panicked> + Send + 'static,
    F: Fn(Arc<HostCtx>) -> Fut,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, ctx) in hosts.iter().enumerate() {
        let (limit, work) = (limit.clone(), read(ctx.clone()));
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            (i, work.await)
        });
    }
    let mut results: Vec<Option<Result<T, E>>> = hosts.iter().map(|_| None).collect();
    while let Some(done) = tasks.join_next().await {
        if let Ok((i, result)) = done {
            results[i] = Some(result);
        }
    }
    hosts
        .iter()
        .cloned()
        .zip(results)
        .map(|(ctx, r)| (ctx, r.unwrap_or_else(|| Err(Panicked.into()))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Inventory;
    use crate::log::HostLog;
    use crate::ssh::recording::RecordingTransport;
    use crate::template::VarSet;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ctxs(n: usize) -> Vec<Arc<HostCtx>> {
        let mut text = String::from("groups:\n  g:\n    hosts:\n");
        for i in 0..n {
            text.push_str(&format!("      h{i}: {{ address: 10.0.0.{} }}\n", i + 1));
        }
        let inv = Inventory::parse(std::path::Path::new("inv.yml"), &text).unwrap();
        inv.hosts
            .iter()
            .map(|h| {
                Arc::new(HostCtx::new(
                    h.clone(),
                    Arc::new(RecordingTransport::new(|_, _| Default::default())),
                    HostLog::discard(),
                    VarSet::new(),
                    false,
                    false,
                ))
            })
            .collect()
    }

    #[derive(Debug, PartialEq)]
    enum E {
        Panicked,
        Odd,
    }

    impl From<Panicked> for E {
        fn from(_: Panicked) -> Self {
            E::Panicked
        }
    }

    #[tokio::test]
    async fn results_come_in_host_order_at_most_parallel_at_once() {
        let hosts = ctxs(6);
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let results = each(&hosts, 2, |ctx| {
            let (now, most) = (now.clone(), most.clone());
            async move {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                let i: usize = ctx.host.name[1..].parse().unwrap();
                match i {
                    3 => panic!("a bug"),
                    i if i % 2 == 1 => Err(E::Odd),
                    i => Ok(i),
                }
            }
        })
        .await;
        assert_eq!(most.load(Ordering::SeqCst), 2);
        let got: Vec<(String, Result<usize, E>)> = results
            .into_iter()
            .map(|(c, r)| (c.host.name.clone(), r))
            .collect();
        assert_eq!(
            got,
            [
                ("h0".to_string(), Ok(0)),
                ("h1".into(), Err(E::Odd)),
                ("h2".into(), Ok(2)),
                ("h3".into(), Err(E::Panicked)),
                ("h4".into(), Ok(4)),
                ("h5".into(), Err(E::Odd)),
            ]
        );
    }
}
