//! Supervision of the node's long-lived tasks: a task that panics, or returns while the node is
//! not stopping, is a failure. The first failure is logged with its error, makes `/health` fail,
//! stops the node, and makes the process exit non-zero, so that systemd restarts it: a node
//! that silently stopped gossiping or applying is worse than one that restarts.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::error;

use crate::shutdown::Shutdown;

/// Where task failures are reported. Cheap to clone; the first failure wins.
#[derive(Debug, Clone)]
pub struct Failures {
    tx: Arc<watch::Sender<Option<String>>>,
}

impl Default for Failures {
    fn default() -> Self {
        Self::new()
    }
}

impl Failures {
    pub fn new() -> Self {
        Failures {
            tx: Arc::new(watch::channel(None).0),
        }
    }

    /// Records a failure (only the first is kept) and logs it.
    pub fn report(&self, what: String) {
        error!(failure = %what, "a task of the node failed; the node stops so that it can be restarted");
        self.tx.send_if_modified(|cur| {
            if cur.is_none() {
                *cur = Some(what);
                true
            } else {
                false
            }
        });
    }

    /// The first failure, if any.
    pub fn get(&self) -> Option<String> {
        self.tx.borrow().clone()
    }

    /// Resolves with the first failure.
    pub async fn wait(&self) -> String {
        let mut rx = self.tx.subscribe();
        let found = rx.wait_for(|f| f.is_some()).await.map(|f| f.clone());
        match found {
            Ok(f) => f.unwrap_or_default(),
            // The sender lives in `self`: it cannot be gone while we hold it.
            Err(_) => std::future::pending().await,
        }
    }
}

/// Spawns `fut` as the task `name`. If it panics, or ends before `stop` fires, that is reported
/// to `failures`. Awaiting the returned handle awaits the task.
pub fn spawn<F>(name: &'static str, failures: &Failures, stop: Shutdown, fut: F) -> JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let failures = failures.clone();
    let inner = tokio::spawn(fut);
    tokio::spawn(async move {
        match inner.await {
            Ok(()) if stop.is_triggered() => {}
            Ok(()) => failures.report(format!("task {name} ended while the node was running")),
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".into());
                failures.report(format!("task {name} panicked: {msg}"));
            }
            Err(_) => {
                if !stop.is_triggered() {
                    failures.report(format!("task {name} was cancelled"));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_or_an_early_end_is_a_failure_and_an_end_after_stop_is_not() {
        let (trigger, stop) = crate::shutdown::channel();
        let f = Failures::new();
        spawn("quiet", &f, stop.clone(), async {}).await.unwrap();
        assert_eq!(
            f.get().as_deref(),
            Some("task quiet ended while the node was running")
        );

        let f = Failures::new();
        spawn("boom", &f, stop.clone(), async { panic!("it broke") })
            .await
            .unwrap();
        assert_eq!(f.wait().await, "task boom panicked: it broke");

        let f = Failures::new();
        trigger.trigger();
        spawn("done", &f, stop, async {}).await.unwrap();
        assert_eq!(f.get(), None);
    }
}
