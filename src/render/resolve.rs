//! No DNS on the apply path: registrations whose host is a DNS name are rendered with an
//! address bender resolved beforehand, in the background, so that `haproxy -c` (and every
//! reload) never waits on a resolver. A dead or slow resolver then delays nothing: a name that
//! has no answer yet is left out of the render (and reported) while everything else is applied,
//! and a name that resolved before keeps its last address while it is looked up again.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tracing::{debug, warn};

/// How long an answer is used before it is looked up again (it is still used meanwhile).
const FRESH_FOR: Duration = Duration::from_secs(30);
/// How long a failure is remembered before the name is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Longest one lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Lookups at once: a resolver that never answers ties up at most this many threads.
const MAX_IN_FLIGHT: usize = 16;
/// Names remembered at most.
const MAX_NAMES: usize = 10_000;

#[derive(Debug, Clone)]
enum Answer {
    Pending,
    Address(IpAddr),
    Failed(String),
}

#[derive(Debug, Clone)]
struct Entry {
    answer: Answer,
    /// The last address the name had, served while it is looked up again or fails.
    last: Option<IpAddr>,
    /// When to look it up again.
    refresh_at: Instant,
    looking: bool,
}

struct Inner {
    names: Mutex<HashMap<String, Entry>>,
    in_flight: Arc<Semaphore>,
    /// Counts answers, so a waiter that was busy when one arrived still sees it.
    changed: watch::Sender<u64>,
    runtime: tokio::runtime::Handle,
}

/// A cache of host names to addresses, filled in the background. Cheap to clone.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl Resolver {
    /// A resolver whose lookups run on the current tokio runtime.
    pub fn new() -> Self {
        Resolver {
            inner: Arc::new(Inner {
                names: Mutex::new(HashMap::new()),
                in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
                changed: watch::channel(0).0,
                runtime: tokio::runtime::Handle::current(),
            }),
        }
    }

    /// The address to render for `name`, or why there is none yet. Never waits: a name not
    /// looked up yet (or due again) is looked up in the background, and `changed` fires when
    /// its answer arrives.
    pub fn address(&self, name: &str) -> Result<IpAddr, String> {
        let now = Instant::now();
        let mut names = self.inner.names.lock().unwrap_or_else(|p| p.into_inner());
        let due = names
            .get(name)
            .is_none_or(|e| !e.looking && now >= e.refresh_at);
        if due {
            if names.len() >= MAX_NAMES && !names.contains_key(name) {
                return Err(format!(
                    "not looked up: bender already resolves {MAX_NAMES} host names"
                ));
            }
            if let Ok(permit) = self.inner.in_flight.clone().try_acquire_owned() {
                let e = names.entry(name.to_string()).or_insert(Entry {
                    answer: Answer::Pending,
                    last: None,
                    refresh_at: now,
                    looking: false,
                });
                e.looking = true;
                let inner = self.inner.clone();
                let owned = name.to_string();
                self.inner.runtime.spawn(async move {
                    let answer = lookup(&owned).await;
                    drop(permit);
                    let mut names = inner.names.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(e) = names.get_mut(&owned) {
                        e.looking = false;
                        match &answer {
                            Answer::Address(ip) => {
                                e.last = Some(*ip);
                                e.refresh_at = Instant::now() + FRESH_FOR;
                            }
                            _ => e.refresh_at = Instant::now() + RETRY_AFTER,
                        }
                        if let Answer::Failed(why) = &answer {
                            debug!(host = %owned, error = %why, "resolve: no address");
                        }
                        e.answer = answer;
                    }
                    drop(names);
                    inner.changed.send_modify(|n| *n += 1);
                });
            }
        }
        match names.get(name) {
            Some(Entry { last: Some(ip), .. }) => Ok(*ip),
            Some(Entry {
                answer: Answer::Failed(why),
                ..
            }) => Err(why.clone()),
            _ => Err("being looked up; left out until it resolves".into()),
        }
    }

    /// A receiver that changes whenever an answer arrives.
    pub fn answers(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Forgets the names not in `keep` (those no registration uses any more).
    pub fn retain(&self, keep: &std::collections::BTreeSet<&str>) {
        let mut names = self.inner.names.lock().unwrap_or_else(|p| p.into_inner());
        names.retain(|n, e| e.looking || keep.contains(n.as_str()));
    }
}

/// One lookup, through libc (getaddrinfo), bounded in time. The answer is the lowest address,
/// IPv4 first, so that a name with several addresses renders the same one every time.
async fn lookup(name: &str) -> Answer {
    match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((name, 0))).await {
        Ok(Ok(addrs)) => {
            let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
            ips.sort_by_key(|ip| (ip.is_ipv6(), *ip));
            match ips.first() {
                Some(ip) => Answer::Address(*ip),
                None => Answer::Failed(format!("{name} has no address")),
            }
        }
        Ok(Err(e)) => Answer::Failed(format!("cannot resolve {name}: {e}")),
        Err(_) => {
            warn!(host = %name, timeout = ?LOOKUP_TIMEOUT, "resolve: the resolver did not answer in time");
            Answer::Failed(format!(
                "the resolver did not answer for {name} within {}",
                humantime::format_duration(LOOKUP_TIMEOUT)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_resolve_in_the_background_and_failures_are_reported() {
        let r = Resolver::new();
        let mut answers = r.answers();
        // Not looked up yet: not rendered yet, and no waiting.
        let first = r.address("localhost");
        assert!(first.is_err() || first.is_ok_and(|ip| ip.is_loopback()));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(ip) = r.address("localhost") {
                assert!(ip.is_loopback());
                break;
            }
            assert!(Instant::now() < deadline, "localhost never resolved");
            tokio::time::timeout(Duration::from_millis(200), answers.changed())
                .await
                .ok();
        }
        let _ = r.address("no-such-host.invalid");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match r.address("no-such-host.invalid") {
                Err(why) if why.contains("cannot resolve") || why.contains("did not answer") => {
                    break
                }
                _ => {}
            }
            assert!(Instant::now() < deadline, "the failure was never reported");
            tokio::time::timeout(Duration::from_millis(200), answers.changed())
                .await
                .ok();
        }
    }
}
