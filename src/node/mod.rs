//! The node: owns this node's gossip keyspace (chitchat), the joined registry, and the tasks
//! that keep them right. The HTTP layer talks to it through [`Node`]'s methods only.
//!
//! Writes: a client write becomes one record in this node's own keyspace (chitchat `set`) and is
//! joined into the local registry before the call returns, so a 2xx means the write is in the
//! replicated state. An eager push then gossips it to live peers at once.
//!
//! Reads from peers: chitchat's key-change callback (which runs under chitchat's lock) only
//! forwards the raw key/value to the view task, which joins it into the registry. The join is
//! monotone, so deletions (which chitchat does not report) never need to be seen: a node only
//! deletes copies that can no longer win (see `maintain`).
//!
//! The view task turns the registry into a [`NodeView`] whenever a record arrives, a lease
//! deadline passes, or membership changes, and emits the [`Event`]s between consecutive views.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chitchat::transport::Transport;
use chitchat::{
    spawn_chitchat, Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    ListenerHandle,
};
use tokio::sync::{broadcast, mpsc, watch, Notify};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::cluster::{Member, NodeView};
use crate::config::Config;
use crate::events::{self, Event};
use crate::guard::Guard;
use crate::hlc::{Clock, Hlc};
use crate::model::{Backend, Frontend, Invalid, RegKey, Snippets};
use crate::registry::{self, Lease, LiveRegistration, Marker, Record, Registry, Versioned};
use crate::shutdown::{self, Shutdown, ShutdownTrigger};
use crate::snapshot;
use crate::supervise::{self, Failures};

/// Gossip key holding this node's API address.
const KEY_API: &str = "n:api";
/// Gossip key holding this node's wall clock, refreshed every maintenance round.
const KEY_CLOCK: &str = "n:clock";
/// How often a node garbage-collects, adopts entities, snapshots and publishes its clock.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest time between two eager pushes, so a write burst is one round of gossip.
const PUSH_MIN_INTERVAL: Duration = Duration::from_millis(5);
/// Shortest time between two view recomputations under a stream of writes.
const VIEW_MIN_INTERVAL: Duration = Duration::from_millis(2);
/// Clock samples kept per peer.
const CLOCK_SAMPLES: usize = 8;
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

/// Why an entity write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntityError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0} already exists")]
    Conflict(&'static str),
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// A new registration past `[limits]`: (the key, the limit).
    #[error("this node holds {1} registrations{0}, its limit (limits.max_registrations{2}); renewals still work")]
    Limit(String, usize, &'static str),
}

/// How an entity write treats an existing entity of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Fails with `Conflict` if it exists.
    Create,
    /// Fails with `NotFound` if it does not exist.
    Update,
}

/// A backend or a frontend: what the generic entity operations need to know.
pub trait Entity: Clone + PartialEq + serde::Serialize + Send + Sync + 'static {
    const KIND: &'static str;
    /// This write (the new value, or a deletion of `name`) as the render stage's preflight
    /// check takes it.
    fn change(name: &str, value: Option<Self>) -> crate::render::Change;
    fn name(&self) -> &str;
    fn validate(&self, snippets: Snippets) -> Result<(), Invalid>;
    fn slots(reg: &Registry) -> &BTreeMap<String, crdts::LWWReg<Versioned<Self>, Marker>>;
    fn record(name: String, v: Versioned<Self>) -> Record;
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
    fn slots(reg: &Registry) -> &BTreeMap<String, crdts::LWWReg<Versioned<Self>, Marker>> {
        &reg.backends
    }
    fn record(name: String, v: Versioned<Self>) -> Record {
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
    fn slots(reg: &Registry) -> &BTreeMap<String, crdts::LWWReg<Versioned<Self>, Marker>> {
        &reg.frontends
    }
    fn record(name: String, v: Versioned<Self>) -> Record {
        Record::Frontend(name, v)
    }
}

/// A key/value a peer's keyspace gained, as chitchat's callback hands it over.
struct Received {
    key: String,
    value: String,
    node: String,
    /// When it was received, for the clock key (offset estimates).
    at_ms: Option<u64>,
}

/// What this node itself holds in its keyspace, beside the joined registry.
#[derive(Default)]
struct Local {
    registry: Registry,
    /// Markers of the records in this node's own keyspace, by gossip key.
    own: BTreeMap<String, Marker>,
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
    events: broadcast::Sender<Event>,
    /// Wakes the view task after a local write.
    dirty: Notify,
    /// Wakes the pusher after a local write.
    push: Notify,
    /// Serializes entity check-then-write on this node.
    entity_lock: tokio::sync::Mutex<()>,
    /// Estimated clock offsets of peers (ms, peer - self), by node id.
    clock_offsets: Mutex<HashMap<String, VecDeque<i64>>>,
    /// Records from peers refused because they do not decode or do not validate.
    records_refused: AtomicU64,
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

impl Node {
    /// Starts gossip and the node's tasks. Records from the local snapshot (if a data dir is
    /// configured) are put back into this node's keyspace with their original stamps.
    pub async fn start(
        config: Config,
        clock: Arc<dyn Clock>,
        transport: &dyn Transport,
    ) -> Result<Node, NodeError> {
        let config = Arc::new(config);
        let hlc = Hlc::new(config.node_id.clone(), clock);
        let mut local = Local::default();
        let mut initial: Vec<(String, String)> = Vec::new();
        // Every lease of the snapshot, expired or not: the isolation guard serves them until
        // their renewals arrive, so a whole-cluster restart does not empty the backends.
        let mut restored: Vec<LiveRegistration> = Vec::new();
        if let Some(dir) = &config.data_dir {
            let now = hlc.now_ms();
            for (k, v) in snapshot::load(dir)? {
                match registry::decode_checked(&k, &v) {
                    Ok(record) => {
                        hlc.observe(record.stamp());
                        let d = registry::digest(v.as_bytes());
                        if let Record::Lease(key, lease) = &record {
                            if lease.ttl_ms > 0 {
                                restored.push(lease.live_registration(key));
                            }
                            if !lease.is_live(now) {
                                continue;
                            }
                        }
                        local.own.insert(k.clone(), (record.stamp().clone(), d));
                        local.registry.insert(record, d);
                        initial.push((k, v));
                    }
                    Err(e) => warn!(error = %e, "skipping unreadable snapshot record"),
                }
            }
            info!(records = initial.len(), dir = %dir.display(), "restored local snapshot");
        }
        initial.push((KEY_API.to_string(), config.api_advertise.clone()));
        initial.push((KEY_CLOCK.to_string(), hlc.now_ms().to_string()));

        let generation = hlc.now_ms();
        let self_id = ChitchatId::new(config.node_id.clone(), generation, config.gossip_advertise);
        let cc_config = ChitchatConfig {
            chitchat_id: self_id.clone(),
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: config.gossip_listen,
            seed_nodes: config.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                initial_interval: config.gossip_interval,
                dead_node_grace_period: config.dead_node_grace,
                ..Default::default()
            },
            marked_for_deletion_grace_period: config.dead_node_grace,
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let handle = spawn_chitchat(cc_config, initial, transport)
            .await
            .map_err(|e| NodeError::Gossip {
                addr: config.gossip_listen,
                message: format!("{e:#}"),
            })?;
        let chitchat = handle.chitchat();

        // The callback runs under chitchat's lock: it only forwards what changed.
        let (remote_tx, remote_rx) = mpsc::unbounded_channel::<Received>();
        let listener = {
            let self_id = self_id.clone();
            let cc = chitchat.lock().await;
            // Gossip may already have delivered records before the subscription: hand those
            // over too, under the same lock, so that nothing falls between scan and callback.
            for (id, state) in cc.node_states() {
                if *id != self_id {
                    for (k, v) in state.key_values() {
                        let _ = remote_tx.send(Received {
                            key: k.to_string(),
                            value: v.to_string(),
                            node: id.node_id.to_string(),
                            // Received earlier, when is unknown: no clock sample from it.
                            at_ms: None,
                        });
                    }
                }
            }
            let self_id_cb = self_id.clone();
            let clock = hlc.clock().clone();
            cc.subscribe_event("", move |ev| {
                if ev.node != &self_id_cb {
                    // The receipt time of a peer's clock is read here, not when the view task
                    // gets to it, so the offset estimate does not include our own queueing.
                    let at_ms = (ev.key == KEY_CLOCK).then(|| clock.now_ms());
                    let _ = remote_tx.send(Received {
                        key: ev.key.to_string(),
                        value: ev.value.to_string(),
                        node: ev.node.node_id.to_string(),
                        at_ms,
                    });
                }
            })
        };

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
        let inner = Arc::new(Inner {
            config: config.clone(),
            hlc,
            chitchat,
            handle,
            self_id,
            local: Mutex::new(local),
            views,
            events,
            dirty: Notify::new(),
            push: Notify::new(),
            entity_lock: tokio::sync::Mutex::new(()),
            clock_offsets: Mutex::new(HashMap::new()),
            records_refused: AtomicU64::new(0),
        });
        let (stop, stop_rx) = shutdown::channel();
        let failures = Failures::new();
        let tasks = vec![
            supervise::spawn(
                "view",
                &failures,
                stop_rx.clone(),
                view_task(inner.clone(), remote_rx, guard, stop_rx.clone()),
            ),
            supervise::spawn(
                "push",
                &failures,
                stop_rx.clone(),
                push_task(inner.clone(), stop_rx.clone()),
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
        self.stop.trigger();
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        for t in tasks {
            let _ = t.await;
        }
        save_snapshot(&self.inner, &mut None);
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
    pub fn subscribe_events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Puts a record into this node's keyspace and the local registry.
    async fn write(&self, record: Record) {
        let admitted: Result<(), std::convert::Infallible> =
            self.write_if(record, |_| Ok(())).await;
        let Ok(()) = admitted;
    }

    /// [`Node::write`], once `admit` accepts the registry as it is just before the write: both
    /// under the locks every write takes, so that no other write comes between the check and
    /// this one (the `[limits]` are exact, not passed by concurrent writes).
    async fn write_if<E>(
        &self,
        record: Record,
        admit: impl FnOnce(&registry::Registry) -> Result<(), E>,
    ) -> Result<(), E> {
        let (key, value) = registry::encode(&record);
        let marker = (record.stamp().clone(), registry::digest(value.as_bytes()));
        // The chitchat lock is taken first and the registry lock inside it, everywhere, so
        // that the registry never lags what peers can already see.
        let now = self.now_ms();
        let mut cc = self.inner.chitchat.lock().await;
        let changes_view = {
            let mut local = self.inner.local.lock().expect("local lock");
            admit(&local.registry)?;
            cc.self_node_state().set(key.clone(), value);
            local.own.insert(key, marker.clone());
            let changes = local.registry.changes_view(&record, now);
            local.registry.insert(record, marker.1);
            changes
        };
        drop(cc);
        if changes_view {
            self.inner.dirty.notify_one();
        }
        self.inner.push.notify_one();
        Ok(())
    }

    /// Checks a TTL against the configured bounds.
    pub fn check_ttl(&self, ttl: Duration) -> Result<(), Invalid> {
        let c = &self.inner.config;
        if ttl < c.min_ttl || ttl > c.max_ttl {
            return Err(Invalid::new(
                "ttl",
                format!(
                    "{} must be between {} and {}",
                    humantime::format_duration(ttl),
                    humantime::format_duration(c.min_ttl),
                    humantime::format_duration(c.max_ttl)
                ),
            ));
        }
        Ok(())
    }

    /// Registers or renews a lease. `ttl` defaults to the configured default TTL.
    pub async fn register(
        &self,
        key: RegKey,
        ttl: Option<Duration>,
        meta: BTreeMap<String, String>,
    ) -> Result<LiveRegistration, RegisterError> {
        let ttl = ttl.unwrap_or(self.inner.config.default_ttl);
        self.check_ttl(ttl)?;
        crate::model::validate_meta(&meta)?;
        let stamp = self.inner.hlc.stamp();
        let now = self.inner.hlc.now_ms();
        let ttl_ms = ttl.as_millis() as u64;
        let lease = Lease {
            stamp,
            deadline_ms: now + ttl_ms,
            ttl_ms,
            meta,
        };
        let live = lease.live_registration(&key);
        let limits = &self.inner.config.limits;
        let admit = |r: &registry::Registry| crate::limits::admit(r, limits, &key);
        self.write_if(Record::Lease(key.clone(), lease), admit)
            .await?;
        Ok(live)
    }

    /// Ends a lease now: a newer lease whose deadline has already passed.
    pub async fn deregister(&self, key: RegKey) {
        let stamp = self.inner.hlc.stamp();
        let now = self.inner.hlc.now_ms();
        let lease = Lease {
            stamp,
            deadline_ms: now,
            ttl_ms: 0,
            meta: BTreeMap::new(),
        };
        self.write(Record::Lease(key, lease)).await;
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
            .filter_map(|r| r.val.value.clone())
            .collect()
    }

    /// One entity by name.
    pub fn get<E: Entity>(&self, name: &str) -> Option<E> {
        let local = self.inner.local.lock().expect("local lock");
        E::slots(&local.registry)
            .get(name)
            .and_then(|r| r.val.value.clone())
    }

    /// Creates or updates an entity (whole value, last writer wins cluster-wide). Free-form
    /// lines are checked as `snippets` says (the caller decides what it may write).
    pub async fn put<E: Entity>(
        &self,
        entity: E,
        mode: WriteMode,
        snippets: Snippets,
    ) -> Result<(), EntityError> {
        entity.validate(snippets)?;
        let _guard = self.inner.entity_lock.lock().await;
        let exists = self.get::<E>(entity.name()).is_some();
        match mode {
            WriteMode::Create if exists => return Err(EntityError::Conflict(E::KIND)),
            WriteMode::Update if !exists => return Err(EntityError::NotFound(E::KIND)),
            _ => {}
        }
        let name = entity.name().to_string();
        let stamp = self.inner.hlc.stamp();
        info!(kind = E::KIND, name = %name, ?mode, "entity written");
        self.write(E::record(
            name,
            Versioned {
                stamp,
                value: Some(entity),
            },
        ))
        .await;
        Ok(())
    }

    /// Deletes an entity: a tombstone that outranks every older write.
    pub async fn delete<E: Entity>(&self, name: &str) -> Result<(), EntityError> {
        let _guard = self.inner.entity_lock.lock().await;
        if self.get::<E>(name).is_none() {
            return Err(EntityError::NotFound(E::KIND));
        }
        let stamp = self.inner.hlc.stamp();
        info!(kind = E::KIND, name = %name, "entity deleted");
        self.write(E::record(
            name.to_string(),
            Versioned { stamp, value: None },
        ))
        .await;
        Ok(())
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
            r.backends
                .values()
                .filter(|b| b.val.value.is_some())
                .count(),
            r.frontends
                .values()
                .filter(|f| f.val.value.is_some())
                .count(),
            r.leases.len(),
        )
    }

    /// Records from peers refused so far (undecodable, or values no client could write).
    pub fn records_refused(&self) -> u64 {
        self.inner.records_refused.load(Ordering::Relaxed)
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
}

/// Gossips right away with every live peer after local writes, so a write reaches the cluster in
/// about one round trip instead of up to one gossip interval.
async fn push_task(inner: Arc<Inner>, mut stop: Shutdown) {
    loop {
        tokio::select! {
            _ = inner.push.notified() => {}
            _ = stop.wait() => return,
        }
        let peers: Vec<SocketAddr> = {
            let cc = inner.chitchat.lock().await;
            cc.live_nodes()
                .filter(|id| **id != inner.self_id)
                .map(|id| id.gossip_advertise_addr)
                .collect()
        };
        for peer in peers {
            if let Err(e) = inner.handle.gossip(peer) {
                debug!(error = %e, "eager gossip failed");
            }
        }
        tokio::time::sleep(PUSH_MIN_INTERVAL).await;
    }
}

/// Joins records from peers, recomputes the view, emits events, and runs maintenance.
async fn view_task(
    inner: Arc<Inner>,
    mut remote: mpsc::UnboundedReceiver<Received>,
    mut guard: Guard,
    mut stop: Shutdown,
) {
    let started = Instant::now();
    let mut first_peer_at: Option<Instant> = None;
    let mut prev: Arc<NodeView> = inner.views.borrow().clone();
    let mut ready = prev.ready;
    let mut maintenance = tokio::time::interval(MAINTENANCE_INTERVAL);
    maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut membership = tokio::time::interval(inner.config.gossip_interval);
    membership.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut snapshot_marker: Option<u64> = None;
    let mut members: Vec<Member> = Vec::new();
    let mut batch = Vec::new();
    let has_peers = has_peers(&inner.config);
    // When the view next changes on its own (a deadline passing). Computed with each view:
    // without a recompute deadlines only move later (renewals), so waking at this one is at
    // worst early, never late; an earlier deadline always comes with a recompute.
    let mut sleep_until = Instant::now();
    loop {
        // Recompute the view only when something may have changed it: renewals of live
        // registrations do not, and under a renewal load they are almost every record.
        let mut recompute = false;
        tokio::select! {
            n = remote.recv_many(&mut batch, 4096) => {
                if n == 0 { return; }
                recompute = join_remote(&inner, batch.drain(..));
            }
            _ = inner.dirty.notified() => recompute = true,
            _ = tokio::time::sleep_until(sleep_until) => recompute = true,
            _ = membership.tick() => {
                let now_members = compute_members(&inner).await;
                recompute |= now_members != members;
                members = now_members;
                let peer_live = members.iter().any(|m| !m.is_self && m.live);
                if peer_live && first_peer_at.is_none() {
                    first_peer_at = Some(Instant::now());
                }
                if !ready {
                    let caught_up = first_peer_at
                        .is_some_and(|t| t.elapsed() >= inner.config.gossip_interval * 3);
                    if !has_peers || caught_up || started.elapsed() >= inner.config.warmup {
                        ready = true;
                        recompute = true;
                        info!(
                            waited_ms = started.elapsed().as_millis() as u64,
                            peers_seen = first_peer_at.is_some(),
                            "node ready"
                        );
                    }
                }
            }
            _ = maintenance.tick() => {
                // Test hook: FAILPOINTS=node.maintenance=panic kills this task.
                fail::fail_point!("node.maintenance");
                maintain(&inner).await;
                save_snapshot(&inner, &mut snapshot_marker);
                recompute = true;
            }
            _ = stop.wait() => return,
        }
        // Fold in everything else that is already waiting before recomputing.
        while let Ok(item) = remote.try_recv() {
            batch.push(item);
        }
        if !batch.is_empty() {
            recompute |= join_remote(&inner, batch.drain(..));
        }
        if !recompute {
            continue;
        }
        // Isolated: peers configured, none live, once the node is ready (before that it
        // renders nothing anyway).
        let isolated = has_peers && ready && !members.iter().any(|m| !m.is_self && m.live);
        let (view, step) = {
            let now = inner.hlc.now_ms();
            let local = inner.local.lock().expect("local lock");
            let view = local.registry.view(now);
            let deregistered = |k: &RegKey| {
                local
                    .registry
                    .leases
                    .get(k)
                    .is_some_and(|s| s.reg.val.ttl_ms == 0)
            };
            // What was live before (what was held before, the guard holds itself).
            let step = guard.step(
                &prev.view.registrations,
                &view.registrations,
                &deregistered,
                isolated,
                now,
                &inner.config.guard,
            );
            let next = local
                .registry
                .next_deadline(now)
                .into_iter()
                .chain(guard.next_release())
                .min();
            sleep_until = next
                .map(|d| Instant::now() + Duration::from_millis(d.saturating_sub(now)))
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            (view, step)
        };
        for event in events::diff(&prev.view, &view) {
            log_event(&event);
            let _ = inner.events.send(event);
        }
        if step.degraded != prev.degraded {
            if step.degraded.is_empty() {
                info!("guard: back to normal; nothing is held");
            } else {
                warn!(why = ?step.degraded, held = step.held.len(),
                    "guard: degraded; serving registrations the registry no longer has live");
            }
        }
        let changed = !same_shape(&prev.view, &view)
            || prev.members != members
            || prev.ready != ready
            || prev.held.keys().ne(step.held.keys())
            || prev.degraded != step.degraded;
        if changed {
            let next = Arc::new(NodeView {
                view,
                members: members.clone(),
                ready,
                held: step.held,
                degraded: step.degraded,
            });
            inner.views.send_replace(next.clone());
            prev = next;
        }
        tokio::time::sleep(VIEW_MIN_INTERVAL).await;
    }
}

/// Whether any seed is another node (a node may list itself among the seeds).
fn has_peers(config: &Config) -> bool {
    config
        .seeds
        .iter()
        .any(|s| s.parse::<SocketAddr>().ok() != Some(config.gossip_advertise))
}

/// Whether two views would render the same (deadlines aside: renewals change nothing).
fn same_shape(a: &registry::View, b: &registry::View) -> bool {
    a.backends == b.backends
        && a.frontends == b.frontends
        && a.registrations.len() == b.registrations.len()
        && a.registrations
            .iter()
            .zip(b.registrations.iter())
            .all(|((ka, ra), (kb, rb))| ka == kb && ra.meta == rb.meta && ra.ttl_ms == rb.ttl_ms)
}

fn log_event(event: &Event) {
    match event {
        Event::Online { registration } => info!(registration = %registration, "online"),
        Event::Offline { registration } => info!(registration = %registration, "offline"),
        Event::BackendUpdated { backend } => {
            info!(backend = %backend.name, app = %backend.app, version = %backend.version, "backend updated")
        }
        Event::BackendDeleted { name } => info!(backend = %name, "backend deleted"),
        Event::FrontendUpdated { frontend } => {
            info!(frontend = %frontend.name, backend = %frontend.backend, "frontend updated")
        }
        Event::FrontendDeleted { name } => info!(frontend = %name, "frontend deleted"),
    }
}

/// Joins records received from peers; samples peers' clocks. Returns whether any record may
/// have changed the view.
fn join_remote(inner: &Inner, items: impl Iterator<Item = Received>) -> bool {
    let now = inner.hlc.now_ms();
    let mut changed = false;
    let mut local = inner.local.lock().expect("local lock");
    for Received {
        key,
        value,
        node,
        at_ms,
    } in items
    {
        if registry::is_registry_key(&key) {
            match registry::decode_checked(&key, &value) {
                Ok(record) => {
                    inner.hlc.observe(record.stamp());
                    changed |= local.registry.changes_view(&record, now);
                    local
                        .registry
                        .insert(record, registry::digest(value.as_bytes()));
                }
                Err(e) => {
                    // A flood of bad records must not flood the log: the first ten, then every
                    // thousandth; the metric counts them all.
                    let n = inner.records_refused.fetch_add(1, Ordering::Relaxed);
                    if n < 10 || n % 1000 == 0 {
                        warn!(peer = ?node, error = %e, refused = n + 1,
                            "refusing a record from a peer (another version, or not a value a client could write)")
                    }
                }
            }
        } else if key == KEY_CLOCK {
            if let (Ok(peer_ms), Some(at)) = (value.parse::<u64>(), at_ms) {
                record_clock_sample(inner, &node, peer_ms as i64 - at as i64);
            }
        }
    }
    changed
}

/// Keeps the last samples of (peer clock - local clock at receipt). Receipt comes after sending,
/// so each sample is the offset minus a positive delay: the maximum is the best estimate.
fn record_clock_sample(inner: &Inner, node: &str, sample: i64) {
    let warn_ms = inner.config.clock_offset_warn.as_millis() as i64;
    let mut offsets = inner.clock_offsets.lock().expect("clock lock");
    let samples = offsets.entry(node.to_string()).or_default();
    let before = samples.iter().copied().max();
    samples.push_back(sample);
    if samples.len() > CLOCK_SAMPLES {
        samples.pop_front();
    }
    let after = samples.iter().copied().max().unwrap_or(sample);
    let was_bad = before.is_some_and(|b| b.abs() > warn_ms);
    if after.abs() > warn_ms && !was_bad && samples.len() >= 2 {
        warn!(
            peer = %node,
            offset_ms = after,
            bound_ms = warn_ms,
            "peer clock offset exceeds the bound: lease expiry will be early or late by about this much; check NTP"
        );
    }
}

fn clock_offset(inner: &Inner, node: &str) -> Option<i64> {
    let offsets = inner.clock_offsets.lock().expect("clock lock");
    offsets.get(node).and_then(|s| s.iter().copied().max())
}

async fn compute_members(inner: &Inner) -> Vec<Member> {
    let cc = inner.chitchat.lock().await;
    let live: std::collections::HashSet<&ChitchatId> = cc.live_nodes().collect();
    // A restarted node appears under a new generation: show only its newest one.
    let mut newest: BTreeMap<String, &ChitchatId> = BTreeMap::new();
    for id in cc.node_states().keys() {
        let e = newest.entry(id.node_id.to_string()).or_insert(id);
        if id.generation_id > e.generation_id {
            *e = id;
        }
    }
    let mut out: Vec<Member> = newest
        .into_values()
        .map(|id| {
            let is_self = *id == inner.self_id;
            Member {
                node_id: id.node_id.to_string(),
                gossip_addr: id.gossip_advertise_addr,
                api_addr: cc
                    .node_state(id)
                    .and_then(|s| s.get(KEY_API))
                    .map(str::to_string),
                live: is_self || live.contains(id),
                is_self,
                clock_offset_ms: if is_self {
                    Some(0)
                } else {
                    clock_offset(inner, &id.node_id)
                },
            }
        })
        .collect();
    out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    out
}

/// Keeps this node's keyspace and the registry bounded and the entities safe:
/// - a lease copy of ours that a newer copy elsewhere outranks can never win again: delete it;
/// - a lease whose every known copy expired more than `lease_gc_grace` ago: delete ours and
///   forget it (a copy with an older stamp can no longer be live, so nothing can resurrect);
/// - every entity's winning version is copied into our keyspace, so entities outlive the node
///   that received them; tombstones older than `tombstone_ttl` are forgotten;
/// - our clock is published for peers' offset estimates.
async fn maintain(inner: &Inner) {
    let now = inner.hlc.now_ms();
    let grace = inner.config.lease_gc_grace.as_millis() as u64;
    let tombstone_ttl = inner.config.tombstone_ttl.as_millis() as u64;
    let mut cc = inner.chitchat.lock().await;
    let state = cc.self_node_state();
    let mut local = inner.local.lock().expect("local lock");
    let Local { registry, own } = &mut *local;
    let mut deleted = 0usize;
    let mut adopted = 0usize;

    // Leases.
    let mut own_leases: Vec<(String, Marker)> = own
        .iter()
        .filter(|(k, _)| k.starts_with(registry::LEASE_PREFIX))
        .map(|(k, m)| (k.clone(), m.clone()))
        .collect();
    for (key, marker) in own_leases.drain(..) {
        let Some(reg_key) = registry::parse_lease_key(&key) else {
            continue;
        };
        let slot = registry.leases.get(&reg_key);
        let dominated = slot.is_some_and(|s| s.reg.marker > marker);
        let expired = slot.is_none_or(|s| now > s.max_deadline_ms.saturating_add(grace));
        if dominated || expired {
            state.delete(&key);
            own.remove(&key);
            deleted += 1;
        }
    }
    registry
        .leases
        .retain(|_, s| now <= s.max_deadline_ms.saturating_add(grace));

    // Entities.
    let mut adopt: Vec<(String, String, Marker)> = Vec::new();
    let mut forget: Vec<String> = Vec::new();
    plan_entities::<Backend>(registry, own, now, tombstone_ttl, &mut adopt, &mut forget);
    plan_entities::<Frontend>(registry, own, now, tombstone_ttl, &mut adopt, &mut forget);
    for (key, value, marker) in adopt {
        state.set(key.clone(), value);
        own.insert(key, marker);
        adopted += 1;
    }
    for key in forget {
        if own.remove(&key).is_some() {
            state.delete(&key);
            deleted += 1;
        }
        if let Some(name) = key.strip_prefix(registry::BACKEND_PREFIX) {
            registry.backends.remove(name);
        } else if let Some(name) = key.strip_prefix(registry::FRONTEND_PREFIX) {
            registry.frontends.remove(name);
        }
    }
    state.set(KEY_CLOCK, now.to_string());
    drop(local);
    drop(cc);
    inner.push.notify_one();
    if deleted > 0 || adopted > 0 {
        debug!(deleted, adopted, "maintenance");
    }
}

/// What maintenance does with kind `E`'s entities: adopt each winning version our keyspace
/// lacks, and forget tombstones older than `tombstone_ttl`.
fn plan_entities<E: Entity>(
    registry: &Registry,
    own: &BTreeMap<String, Marker>,
    now: u64,
    tombstone_ttl: u64,
    adopt: &mut Vec<(String, String, Marker)>,
    forget: &mut Vec<String>,
) {
    for (name, reg) in E::slots(registry) {
        let (key, value) = registry::encode(&E::record(name.clone(), reg.val.clone()));
        if reg.val.value.is_none() && now > reg.val.stamp.wall_ms().saturating_add(tombstone_ttl) {
            forget.push(key);
        } else if own.get(&key) != Some(&reg.marker) {
            // Re-encoding yields the same bytes (and digest) as the original; if a peer's
            // encoding ever differed, the digest tie-break would still converge, so adopt what
            // we encode.
            let m = (reg.marker.0.clone(), registry::digest(value.as_bytes()));
            adopt.push((key, value, m));
        }
    }
}

/// Writes the entity records (and our live leases) to the data dir when they changed.
fn save_snapshot(inner: &Inner, last: &mut Option<u64>) {
    let Some(dir) = &inner.config.data_dir else {
        return;
    };
    let records: Vec<(String, String)> = {
        let now = inner.hlc.now_ms();
        let local = inner.local.lock().expect("local lock");
        let r = &local.registry;
        let mut out: Vec<(String, String)> = Vec::new();
        for (n, reg) in &r.backends {
            out.push(registry::encode_backend(n, &reg.val));
        }
        for (n, reg) in &r.frontends {
            out.push(registry::encode_frontend(n, &reg.val));
        }
        for (k, slot) in &r.leases {
            if slot.reg.val.is_live(now) && local.own.contains_key(&registry::lease_key(k)) {
                out.push(registry::encode_lease(k, &slot.reg.val));
            }
        }
        out
    };
    // Leases change on every renewal; only entity changes (or the first save) force a write,
    // so the snapshot costs nothing under a renewal load.
    let entity_digest = records
        .iter()
        .filter(|(k, _)| !k.starts_with(registry::LEASE_PREFIX))
        .fold(0u64, |h, (k, v)| {
            h.rotate_left(7) ^ registry::digest(k.as_bytes()) ^ registry::digest(v.as_bytes())
        });
    if *last == Some(entity_digest) {
        return;
    }
    match snapshot::save(dir, &records) {
        Ok(()) => {
            *last = Some(entity_digest);
            debug!(records = records.len(), "snapshot saved");
        }
        Err(e) => warn!(error = %e, "could not save snapshot"),
    }
}
