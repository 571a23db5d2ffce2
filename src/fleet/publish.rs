//! The fleet status's I/O: publishes this node's apply record whenever it changes, and reads
//! every member's to answer `/v1/fleet` and the metrics. The decisions are `fleet`'s.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::{counts, Entry, Record, State, TemplateRecord, Tracker};
use crate::cluster::NodeView;
use crate::node::Node;
use crate::registry::ViewDigest;
use crate::render::ApplySummary;
use crate::shutdown::Shutdown;

/// Least time between two publications of this node's record: a burst of changes is one
/// gossip update, not hundreds.
const PUBLISH_GAP: Duration = Duration::from_millis(20);
/// How often the fleet is evaluated for the metrics (and the view history kept current) when
/// nothing asks.
const EVALUATE_EVERY: Duration = Duration::from_secs(1);

/// Where the render stage's summaries come from: the current render stage's, which a config
/// reload replaces (`None`: no templates).
pub type Summaries = Arc<dyn Fn() -> Option<watch::Receiver<Vec<ApplySummary>>> + Send + Sync>;

/// `GET /v1/fleet`: every member as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The node answering.
    pub observer: String,
    /// Digest of what the observer's registry says now.
    pub view: String,
    /// The entities' part of that digest: a switch changes it (`--wait` watches it).
    pub entities: String,
    pub stale_after_ms: u64,
    /// Members in each state (`synced`, `pending`, `stale`, `error`).
    pub counts: BTreeMap<String, usize>,
    pub nodes: Vec<Entry>,
}

impl Report {
    /// Whether every reachable member is SYNCED.
    pub fn all_live_synced(&self) -> bool {
        self.nodes
            .iter()
            .filter(|e| e.live)
            .all(|e| e.state == State::Synced)
    }
}

/// The fleet status of this node: cheap to clone, shared by the API and the metrics.
#[derive(Clone)]
pub struct Fleet {
    node: Node,
    stale_after: Duration,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    tracker: Tracker,
    /// The last evaluation's counts, for the metrics.
    counts: BTreeMap<State, usize>,
    /// Members whose record is refused now, with why (logged when it changes).
    refused: HashMap<String, String>,
}

impl Fleet {
    pub fn new(node: Node, stale_after: Duration) -> Self {
        Fleet {
            node,
            stale_after,
            inner: Arc::default(),
        }
    }

    /// Every member, evaluated now.
    pub async fn report(&self) -> Report {
        let members = self.node.fleet_members().await;
        let digest = self.node.views().borrow().view.digest;
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("fleet lock");
        inner.tracker.see_own(&digest.hex(), now);
        let nodes = inner.tracker.evaluate(&members, now, self.stale_after);
        let refused: HashMap<String, String> = members
            .iter()
            .filter_map(|m| match &m.record {
                Some(Err(why)) => Some((m.node_id.clone(), why.clone())),
                _ => None,
            })
            .collect();
        for (node, why) in &refused {
            if inner.refused.get(node) != Some(why) {
                warn!(peer = ?node, error = %why, "fleet: refusing a peer's apply record");
            }
        }
        inner.refused = refused;
        inner.counts = counts(&nodes);
        Report {
            observer: self.node.node_id().to_string(),
            view: digest.hex(),
            entities: format!("{:016x}", digest.entities),
            stale_after_ms: self.stale_after.as_millis() as u64,
            counts: inner
                .counts
                .iter()
                .map(|(s, n)| (s.label().to_string(), *n))
                .collect(),
            nodes,
        }
    }

    /// Members in each state at the last evaluation (every state listed), and how many
    /// members' records are refused.
    pub fn counts(&self) -> (BTreeMap<State, usize>, usize) {
        let inner = self.inner.lock().expect("fleet lock");
        let mut c = inner.counts.clone();
        for s in State::ALL {
            c.entry(s).or_default();
        }
        (c, inner.refused.len())
    }

    /// Keeps this node's record current in gossip and the evaluation fresh, until shutdown.
    pub async fn run(self, summaries: Summaries, mut shutdown: Shutdown) {
        let mut views = self.node.views();
        // The render stage's summaries, and the last ones seen: while a config reload replaces
        // the stage, the record keeps what the old one last said.
        let (mut rx, mut last) = (None, None);
        follow(&summaries, &mut rx, &mut last);
        let mut published: Option<Record> = None;
        let mut tick = tokio::time::interval(EVALUATE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(r) = rx.as_mut() {
                last = Some(r.borrow_and_update().clone());
            }
            let record = own_record(&views.borrow_and_update(), last.clone(), published.as_ref());
            // The view history follows every view this node publishes, not just those asked
            // about: a member's lag is measured against it.
            {
                let digest = views.borrow().view.digest.hex();
                self.inner
                    .lock()
                    .expect("fleet lock")
                    .tracker
                    .see_own(&digest, Instant::now());
            }
            if let Some(record) = record {
                debug!(view = %record.view, "fleet: publishing this node's apply state");
                self.node.publish_fleet_record(record.encode()).await;
                published = Some(record);
                tokio::time::sleep(PUBLISH_GAP).await;
                continue;
            }
            let summary_changed = async {
                match rx.as_mut() {
                    Some(r) => r.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.wait() => return,
                changed = views.changed() => if changed.is_err() { return },
                ok = summary_changed => if !ok {
                    // The render stage ended (a config reload replaces it): follow the new
                    // one, or look again at the next tick.
                    follow(&summaries, &mut rx, &mut last);
                },
                _ = tick.tick() => {
                    if rx.is_none() {
                        follow(&summaries, &mut rx, &mut last);
                    }
                    let _ = self.report().await;
                }
            }
        }
    }
}

/// Takes up the current render stage's summaries: none when there is no render stage (no
/// templates: `last` is cleared), or not yet when the stage there has ended (a reload is
/// replacing it: `last` stays, and the next tick looks again).
fn follow(
    summaries: &Summaries,
    rx: &mut Option<watch::Receiver<Vec<ApplySummary>>>,
    last: &mut Option<Vec<ApplySummary>>,
) {
    match summaries() {
        None => {
            *rx = None;
            *last = None;
        }
        Some(r) if r.has_changed().is_ok() => *rx = Some(r),
        Some(_) => *rx = None,
    }
}

/// This node's record for `nv` and the templates' `summaries`, if it differs from what was
/// last `published` (the timestamp aside).
pub fn own_record(
    nv: &NodeView,
    summaries: Option<Vec<ApplySummary>>,
    published: Option<&Record>,
) -> Option<Record> {
    let mut record = Record {
        scheme: ViewDigest::SCHEME,
        ready: nv.ready,
        view: nv.view.digest.hex(),
        at_ms: 0,
        templates: summaries
            .unwrap_or_default()
            .into_iter()
            .take(super::MAX_TEMPLATES)
            .map(|s| TemplateRecord {
                name: s.name,
                config: s.config,
                from: s.from,
                error: s.error.as_deref().map(super::sanitise),
                excluded: s.excluded,
            })
            .collect(),
        degraded: nv
            .degraded
            .iter()
            .take(super::MAX_DEGRADED)
            .map(|d| super::sanitise(d))
            .collect(),
    };
    if let Some(p) = published {
        record.at_ms = p.at_ms;
        if *p == record {
            return None;
        }
    }
    record.at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Some(record)
}
