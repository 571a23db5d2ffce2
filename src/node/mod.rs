//! The node: owns this node's gossip keyspace (chitchat), the joined registry, and the tasks
//! that keep them right. The HTTP layer talks to it through [`Node`]'s methods only. The
//! decisions are the registry's pure functions (join, liveness, [`registry::gc`],
//! [`registry::ready`]); this module carries data between them and chitchat.
//!
//! - [`write`]: client writes (register, deregister, entity put/delete), each stamped under the
//!   lock that orders it into the keyspace;
//! - `gossip`: chitchat's configuration, the key-change callback and the eager pusher;
//! - `view_task`: joins peers' records and publishes views and events;
//! - `maintain`: applies garbage collection and adoption to the keyspace; snapshots;
//! - `clock`: peers' clock offsets.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chitchat::transport::Transport;
use chitchat::{Chitchat, ChitchatHandle, ChitchatId, ListenerHandle};
use tokio::sync::{broadcast, watch, Notify};
use tracing::{info, warn};

use crate::cluster::{Member, NodeView};
use crate::config::Config;
use crate::events::{Event, Journal, Numbered};
use crate::guard::Guard;
use crate::hlc::{Clock, Hlc};
use crate::model::{Backend, Frontend, Invalid, Snippets};
use crate::registry::{self, EntitySlot, LiveRegistration, Marker, Record, Registry};
use crate::shutdown::{self, ShutdownTrigger};
use crate::snapshot;
use crate::supervise::{self, Failures};

mod clock;
mod deferred;
mod gossip;
mod maintain;
mod members;
mod view_task;
pub mod write;

pub use write::{EntityError, EntityGuard, RegisterError, WriteMode};

/// Gossip key holding this node's API address.
const KEY_API: &str = "n:api";
/// Gossip key holding this node's wall clock, rewritten every maintenance round (which makes it
/// the newest key of the keyspace: see [`registry::ready`]). The value is `"<ms> <round>"` and
/// this node's bounds of its peers' offsets (see `clock`); the round makes every write distinct
/// even when the clock stands still.
const KEY_CLOCK: &str = "n:clock";

/// Gossip key present while this node holds back the entities of a snapshot older than the
/// tombstone horizon (see [`registry::restore`]).
const KEY_RECOVERING: &str = "n:recovering";

/// Capacity of the event stream each subscriber may fall behind by.
const EVENT_BUFFER: usize = 8192;

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot start gossip on {addr}: {message}")]
    Gossip { addr: SocketAddr, message: String },
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
}

/// A backend or a frontend: what the generic entity operations need to know.
pub trait Entity: Clone + PartialEq + serde::Serialize + Send + Sync + 'static {
    const KIND: &'static str;
    /// This write (the new value, or a deletion of `name`) as the render stage's preflight
    /// check takes it.
    fn change(name: &str, value: Option<Self>) -> crate::render::Change;
    fn name(&self) -> &str;
    fn validate(&self, snippets: Snippets) -> Result<(), Invalid>;
    fn slots(reg: &Registry) -> &BTreeMap<String, EntitySlot<Self>>;
    fn record(name: String, v: registry::Versioned<Self>) -> Record;
}

impl Entity for Backend {
    const KIND: &'static str = "Backend";
    fn change(name: &str, value: Option<Self>) -> crate::render::Change {
        crate::render::Change::Backend(name.to_string(), value)
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn validate(&self, snippets: Snippets) -> Result<(), Invalid> {
        Backend::validate(self, snippets)
    }
    fn slots(reg: &Registry) -> &BTreeMap<String, EntitySlot<Self>> {
        &reg.backends
    }
    fn record(name: String, v: registry::Versioned<Self>) -> Record {
        Record::Backend(name, v)
    }
}

impl Entity for Frontend {
    const KIND: &'static str = "Frontend";
    fn change(name: &str, value: Option<Self>) -> crate::render::Change {
        crate::render::Change::Frontend(name.to_string(), value)
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn validate(&self, snippets: Snippets) -> Result<(), Invalid> {
        Frontend::validate(self, snippets)
    }
    fn slots(reg: &Registry) -> &BTreeMap<String, EntitySlot<Self>> {
        &reg.frontends
    }
    fn record(name: String, v: registry::Versioned<Self>) -> Record {
        Record::Frontend(name, v)
    }
}

/// What this node itself holds in its keyspace, beside the joined registry.
#[derive(Default)]
struct Local {
    registry: Registry,
    /// Markers of the records in this node's own keyspace, by gossip key.
    own: BTreeMap<String, Marker>,
    /// Keys of our lease copies that a peer's record outranked since the last maintenance
    /// round (what `gc::plan_for` looks at, besides what expired).
    outranked: std::collections::BTreeSet<String>,
    /// Bumped whenever a lease key enters or leaves our keyspace: the snapshot is rewritten
    /// when this moved (renewals alone do not move it).
    own_lease_set_version: u64,
    /// Renewals taken but not yet gossiped (`registry::renew`); maintenance writes them when due.
    deferred: deferred::Deferred,
    /// Entity records of a snapshot older than the tombstone horizon: held back until the node
    /// knows whether peers can say what happened to them meanwhile (see `view_task`).
    quarantined: Vec<(String, String)>,
}

/// Counters of what the node refused or lost track of, for metrics and status.
#[derive(Default)]
struct Counters {
    /// Records from peers refused because they do not decode or do not validate.
    records_refused: AtomicU64,
    /// Records from peers refused because their stamp is further ahead than `max_clock_drift`.
    stamps_refused: AtomicU64,
    /// Times the key-change queue overflowed and the node re-read every peer's keyspace.
    resyncs: AtomicU64,
    /// Maintenance rounds run (numbers the clock key's values).
    rounds: AtomicU64,
    /// Warnings that a peer's clock is off by more than `clock_offset_warn`.
    clock_warnings: AtomicU64,
    /// Renewals acknowledged without being gossiped at once (`registry::renew`).
    renewals_deferred: AtomicU64,
    /// Events emitted, by kind (counted here, where they are made, so that a slow reader of
    /// the event stream cannot make the count miss any).
    events: [AtomicU64; EVENT_KINDS.len()],
}

/// Every kind of event, in the order `Counters::events` counts them.
const EVENT_KINDS: [&str; 6] = [
    "online",
    "offline",
    "backend_updated",
    "backend_deleted",
    "frontend_updated",
    "frontend_deleted",
];

impl Counters {
    fn count_event(&self, event: &Event) {
        if let Some(i) = EVENT_KINDS.iter().position(|k| *k == event.kind()) {
            self.events[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Shared by the handle and the tasks.
struct Inner {
    config: Arc<Config>,
    hlc: Hlc,
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    handle: ChitchatHandle,
    self_id: ChitchatId,
    local: Mutex<Local>,
    views: watch::Sender<Arc<NodeView>>,
    events: broadcast::Sender<Numbered>,
    /// The last [`EVENT_BUFFER`] events, for clients resuming a stream; an event is numbered,
    /// kept and sent under this lock, so the journal and the stream agree on the order.
    journal: Mutex<Journal>,
    /// Wakes the view task after a local write.
    dirty: Notify,
    /// Wakes the pusher after a local write.
    push: Notify,
    /// Set by the key-change callback when its queue was full: the view task re-reads every
    /// peer's keyspace (the join is idempotent, so reading a record twice is harmless).
    overflowed: AtomicBool,
    /// Serializes entity check-then-write on this node.
    entity_lock: tokio::sync::Mutex<()>,
    /// Estimated clock offsets of peers.
    clocks: Mutex<clock::Offsets>,
    /// Per peer (id, generation): the last value of its clock key seen, and how many distinct
    /// values have arrived since this node started (see `caught_up`).
    clock_keys: Mutex<HashMap<(String, u64), (String, u8)>>,
    counters: Counters,
}

/// A running node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// Where the node's tasks (and the stages run beside it) report that they died.
    failures: Failures,
    stop: Arc<ShutdownTrigger>,
    _listener: Arc<ListenerHandle>,
}

impl Inner {
    /// Numbers an event, keeps it for resuming clients, and sends it to every stream.
    fn emit(&self, event: Event) {
        let mut journal = self.journal.lock().expect("journal lock");
        let _ = self.events.send(journal.push(event));
    }
}

impl Node {
    /// Starts gossip and the node's tasks. Records from the local snapshot (if a data dir is
    /// configured) are put back into this node's keyspace with their original stamps.
    pub async fn start(
        config: Config,
        clock: Arc<dyn Clock>,
        transport: &dyn Transport,
    ) -> Result<Node, NodeError> {
        let config = Arc::new(config);
        let hlc = Hlc::new(config.node_id.clone(), clock, config.max_clock_drift);
        let mut local = Local::default();
        let mut initial: Vec<(String, String)> = Vec::new();
        // Every lease of the snapshot, expired or not: the isolation guard serves them until
        // their renewals arrive, so a whole-cluster restart does not empty the backends.
        let mut restored: Vec<LiveRegistration> = Vec::new();
        if let Some(dir) = &config.data_dir {
            let snap = snapshot::load(dir)?;
            let now = hlc.now_ms();
            let cfg = registry::restore::RestoreConfig {
                tombstone_ttl_ms: config.tombstone_ttl.as_millis() as u64,
                max_clock_drift_ms: config.max_clock_drift.as_millis() as u64,
                has_peers: has_peers(&config),
            };
            let plan = registry::restore::plan(snap.saved_at_ms, snap.records, now, cfg);
            for (key, why) in &plan.skipped {
                warn!(key = %key, error = %why, "skipping a snapshot record");
            }
            if let Some(stamp) = &plan.max_stamp {
                let _ = hlc.observe(stamp);
            }
            restored = plan.held;
            for (k, v, record) in plan.records {
                local.own.insert(k.clone(), write::marker_of(&record, &v));
                local.registry.insert(record, &v);
                initial.push((k, v));
            }
            local.quarantined = plan.quarantined;
            if !local.quarantined.is_empty() {
                initial.push((KEY_RECOVERING.to_string(), "1".to_string()));
                warn!(
                    entities = local.quarantined.len(),
                    age_s = snap.saved_at_ms.map_or(0, |t| now.saturating_sub(t) / 1000),
                    tombstone_ttl_s = cfg.tombstone_ttl_ms / 1000,
                    "the snapshot is older than tombstone_ttl: its entities wait until peers say \
                     whether they were deleted meanwhile (they are restored only if no peer answers)"
                );
            }
            info!(records = initial.len(), dir = %dir.display(), "restored local snapshot");
        }
        initial.push((KEY_API.to_string(), config.api_advertise.clone()));
        initial.push((KEY_CLOCK.to_string(), clock::encode(hlc.now_ms(), 0, &[])));

        let generation = hlc.now_ms();
        let self_id = ChitchatId::new(config.node_id.clone(), generation, config.gossip_advertise);
        let handle = gossip::spawn(&config, self_id.clone(), initial, transport).await?;
        let chitchat = handle.chitchat();

        // A node without peers to catch up with is ready from the start: nothing to wait for,
        // and answering "not ready" until the view task first runs would only be a race.
        let mut guard = Guard::new();
        guard.start_with(restored, hlc.now_ms(), &config.guard);
        let initial_view = NodeView {
            view: local.registry.view(hlc.now_ms()),
            members: Vec::new(),
            ready: !has_peers(&config),
            ..Default::default()
        };
        let (views, _) = watch::channel(Arc::new(initial_view));
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let journal = Mutex::new(Journal::new(hlc.now_ms(), EVENT_BUFFER));
        let inner = Arc::new(Inner {
            config: config.clone(),
            hlc,
            chitchat,
            handle,
            self_id,
            local: Mutex::new(local),
            views,
            events,
            journal,
            dirty: Notify::new(),
            push: Notify::new(),
            overflowed: AtomicBool::new(false),
            entity_lock: tokio::sync::Mutex::new(()),
            clocks: Mutex::new(clock::Offsets::default()),
            clock_keys: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        });
        let (remote_rx, listener) = gossip::subscribe(&inner).await;
        let (stop, stop_rx) = shutdown::channel();
        let failures = Failures::new();
        let tasks = vec![
            supervise::spawn(
                "view",
                &failures,
                stop_rx.clone(),
                view_task::run(inner.clone(), remote_rx, guard, stop_rx.clone()),
            ),
            supervise::spawn(
                "push",
                &failures,
                stop_rx.clone(),
                gossip::push_task(inner.clone(), stop_rx.clone()),
            ),
        ];
        // chitchat's server ends on an error of its socket: gossip is then dead for good.
        let gossip_ended = inner.handle.termination_watcher();
        let gossip_failures = failures.clone();
        supervise::spawn("gossip", &failures, stop_rx, async move {
            if let Err(e) = gossip_ended.await {
                gossip_failures.report(format!("gossip (chitchat) stopped: {e:#}"));
            }
        });
        info!(
            node_id = %config.node_id,
            gossip = %config.gossip_advertise,
            cluster = %config.cluster_id,
            seeds = ?config.seeds,
            ready = inner.views.borrow().ready,
            "node started"
        );
        Ok(Node {
            inner,
            tasks: Arc::new(Mutex::new(tasks)),
            failures,
            stop: Arc::new(stop),
            _listener: Arc::new(listener),
        })
    }

    /// Stops the node's tasks and gossip, saving a last snapshot.
    pub async fn stop(&self) {
        // Renewals still waiting go out with the last gossip rounds (best effort).
        maintain::flush_deferred(&self.inner, u64::MAX).await;
        self.stop.trigger();
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        for t in tasks {
            let _ = t.await;
        }
        if let Some(due) = maintain::snapshot_due(&self.inner, &Default::default()) {
            maintain::write_snapshot(&due);
        }
        let _ = self.inner.handle.initiate_shutdown();
        let _ = self.inner.handle.termination_watcher().await;
        info!(node_id = %self.inner.config.node_id, "node stopped");
    }

    /// Failures of the node's tasks; the stages around the node report theirs here too.
    pub fn failures(&self) -> &Failures {
        &self.failures
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn node_id(&self) -> &str {
        &self.inner.config.node_id
    }

    /// Wall-clock now (ms), from the node's clock.
    pub fn now_ms(&self) -> u64 {
        self.inner.hlc.now_ms()
    }

    /// The latest published view (it changes when what HAProxy should serve changes).
    pub fn views(&self) -> watch::Receiver<Arc<NodeView>> {
        self.inner.views.subscribe()
    }

    /// A stream of every change this node observes.
    pub fn subscribe_events(&self) -> broadcast::Receiver<Numbered> {
        self.inner.events.subscribe()
    }

    /// A stream of the changes after the event `last_id` (an SSE `Last-Event-ID`), with those
    /// of them this node still keeps; `None` when it cannot give them all (the client must
    /// re-read the state).
    pub fn resume_events(
        &self,
        last_id: &str,
    ) -> (broadcast::Receiver<Numbered>, Option<Vec<Numbered>>) {
        let journal = self.inner.journal.lock().expect("journal lock");
        (self.inner.events.subscribe(), journal.after(last_id))
    }

    /// Live registrations, optionally filtered, sorted by (app, version, host, port).
    pub fn registrations(
        &self,
        app: Option<&str>,
        version: Option<&str>,
        host: Option<&str>,
    ) -> Vec<LiveRegistration> {
        let now = self.now_ms();
        let local = self.inner.local.lock().expect("local lock");
        local
            .registry
            .leases
            .iter()
            .filter(|(k, slot)| {
                slot.reg.val.is_live(now)
                    && app.is_none_or(|a| k.app == a)
                    && version.is_none_or(|v| k.version == v)
                    && host.is_none_or(|h| k.host == h)
            })
            .map(|(k, slot)| slot.reg.val.live_registration(k))
            .collect()
    }

    /// All current entities of a kind, sorted by name.
    pub fn list<E: Entity>(&self) -> Vec<E> {
        let local = self.inner.local.lock().expect("local lock");
        E::slots(&local.registry)
            .values()
            .filter_map(|s| s.value().cloned())
            .collect()
    }

    /// One entity by name.
    pub fn get<E: Entity>(&self, name: &str) -> Option<E> {
        let local = self.inner.local.lock().expect("local lock");
        E::slots(&local.registry)
            .get(name)
            .and_then(|s| s.value().cloned())
    }

    /// This node's current view, computed now (exact, unlike the published one, which only
    /// changes when what HAProxy serves changes).
    pub fn current_view(&self) -> registry::View {
        let now = self.now_ms();
        self.inner
            .local
            .lock()
            .expect("local lock")
            .registry
            .view(now)
    }

    /// Cluster members as last computed.
    pub fn members(&self) -> Vec<Member> {
        self.inner.views.borrow().members.clone()
    }

    pub fn is_ready(&self) -> bool {
        self.inner.views.borrow().ready
    }

    /// Counts for the status endpoint: (live registrations, backends, frontends, leases held).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let now = self.now_ms();
        let local = self.inner.local.lock().expect("local lock");
        let r = &local.registry;
        (
            r.leases.values().filter(|s| s.reg.val.is_live(now)).count(),
            r.backends.values().filter(|b| b.value().is_some()).count(),
            r.frontends.values().filter(|f| f.value().is_some()).count(),
            r.leases.len(),
        )
    }

    /// Records from peers refused so far (undecodable, or values no client could write).
    pub fn records_refused(&self) -> u64 {
        self.inner.counters.records_refused.load(Ordering::Relaxed)
    }

    /// Records from peers refused so far because their stamp was too far in the future.
    pub fn stamps_refused(&self) -> u64 {
        self.inner.counters.stamps_refused.load(Ordering::Relaxed)
    }

    /// Times the node re-read every peer's keyspace because its key-change queue was full.
    pub fn resyncs(&self) -> u64 {
        self.inner.counters.resyncs.load(Ordering::Relaxed)
    }

    /// Entities of an old snapshot this node still holds back (see [`registry::restore`]).
    pub fn held_back_entities(&self) -> usize {
        self.inner
            .local
            .lock()
            .expect("local lock")
            .quarantined
            .len()
    }

    /// Events emitted so far, by kind.
    pub fn event_counts(&self) -> Vec<(&'static str, u64)> {
        EVENT_KINDS
            .iter()
            .zip(&self.inner.counters.events)
            .map(|(k, n)| (*k, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Warnings so far that a peer's clock is off by more than `clock_offset_warn`.
    pub fn clock_warnings(&self) -> u64 {
        self.inner.counters.clock_warnings.load(Ordering::Relaxed)
    }

    /// Renewals acknowledged so far without being gossiped at once, and how many wait now.
    pub fn renewals_deferred(&self) -> (u64, usize) {
        let n = self
            .inner
            .counters
            .renewals_deferred
            .load(Ordering::Relaxed);
        (
            n,
            self.inner.local.lock().expect("local lock").deferred.len(),
        )
    }

    /// Peers whose clock offset the node estimates (bounded by the membership).
    pub fn clock_samples_held(&self) -> usize {
        self.inner.clocks.lock().expect("clock lock").len()
    }

    /// Every member with its fleet apply record (see [`crate::fleet`]).
    pub async fn fleet_members(&self) -> Vec<crate::fleet::Member> {
        members::fleet_members(&self.inner).await
    }

    /// Publishes this node's fleet apply record (its own gossip key), pushed at once.
    pub async fn publish_fleet_record(&self, value: String) {
        self.inner
            .chitchat
            .lock()
            .await
            .self_node_state()
            .set(crate::fleet::KEY, value);
        self.inner.push.notify_one();
    }

    /// Keys in this node's own gossip keyspace (for status and the bounded-state tests).
    pub async fn own_key_count(&self) -> usize {
        self.inner
            .chitchat
            .lock()
            .await
            .self_node_state()
            .key_values()
            .count()
    }

    /// Keys in this node's own gossip keyspace counting chitchat's deletion markers, which
    /// `own_key_count` does not see (they are state too, until chitchat drops them).
    pub async fn own_key_count_including_deleted(&self) -> usize {
        self.inner
            .chitchat
            .lock()
            .await
            .self_node_state()
            .key_values_including_deleted()
            .count()
    }

    /// The value this node's own keyspace holds for a registry key (for tests of the write
    /// path: what peers receive).
    pub async fn own_value(&self, key: &str) -> Option<String> {
        self.inner
            .chitchat
            .lock()
            .await
            .self_node_state()
            .get(key)
            .map(str::to_string)
    }
}

/// Whether any seed is another node (a node may list itself among the seeds).
fn has_peers(config: &Config) -> bool {
    config
        .seeds
        .iter()
        .any(|s| s.parse::<SocketAddr>().ok() != Some(config.gossip_advertise))
}
