//! Client writes. Each becomes one record in this node's own keyspace (chitchat `set`) and is
//! joined into the local registry before the call returns, so a 2xx means the write is in the
//! replicated state.
//!
//! The record's HLC stamp is taken under chitchat's lock, the same lock that orders the `set`:
//! two concurrent writes of one key through one node therefore reach the keyspace in stamp
//! order, and the keyspace always holds the newer one (taking the stamp before the lock let the
//! older value be `set` last, and maintenance then deleted the own copy as outranked).
//! Entity writes are read-check-write sequences (create must not exist, a partial update merges
//! onto the current value): the caller holds an [`EntityGuard`] across the whole sequence.

use std::collections::BTreeMap;
use std::time::Duration;

use tracing::info;

use super::{deferred, Entity, Node};
use crate::hlc::Stamp;
use crate::model::{Invalid, RegKey, Snippets};
use crate::registry::{self, renew, Lease, LiveRegistration, Marker, Record, Registry, Versioned};

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

/// Held across an entity's read-check-write: no other entity write on this node comes between.
pub struct EntityGuard<'a>(#[allow(dead_code)] tokio::sync::MutexGuard<'a, ()>);

/// The marker a record joins with, given its encoding.
pub(super) fn marker_of(record: &Record, encoded: &str) -> Marker {
    (record.stamp().clone(), registry::digest(encoded.as_bytes()))
}

impl Node {
    /// Puts the record `build` makes (from a fresh stamp and the clock) into this node's keyspace
    /// and the local registry, once `admit` accepts the registry as it is just before the write:
    /// all under the locks every write takes, so that no other write comes between the stamp,
    /// the check and the write (the `[limits]` are exact, and the keyspace holds the newest).
    async fn write_with<E>(
        &self,
        admit: impl FnOnce(&Registry) -> Result<(), E>,
        build: impl FnOnce(Stamp, u64) -> Record,
    ) -> Result<Record, E> {
        // The chitchat lock is taken first and the registry lock inside it, everywhere, so
        // that the registry never lags what peers can already see.
        let mut cc = self.inner.chitchat.lock().await;
        let mut local = self.inner.local.lock().expect("local lock");
        admit(&local.registry)?;
        let now = self.inner.hlc.now_ms();
        let record = build(self.inner.hlc.stamp(), now);
        let (key, value) = registry::encode(&record);
        // This write supersedes any renewal of the key still waiting.
        local.deferred.remove(&key);
        let marker = marker_of(&record, &value);
        let changes = local.registry.changes_view(&record, now);
        local.registry.insert(record.clone(), &value);
        cc.self_node_state().set(key.clone(), value);
        if local.own.insert(key, marker).is_none() {
            local.own_lease_set_version += 1;
        }
        drop(local);
        drop(cc);
        if changes {
            self.inner.dirty.notify_one();
        }
        self.inner.push.notify_one();
        Ok(record)
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
        let ttl_ms = ttl.as_millis() as u64;
        if let Some(r) = self.try_defer(&key, ttl_ms, &meta) {
            return Ok(r);
        }
        let limits = &self.inner.config.limits;
        let admit = |r: &Registry| crate::limits::admit(r, limits, &key);
        let record = self
            .write_with(admit, |stamp, now| {
                Record::Lease(
                    key.clone(),
                    Lease {
                        stamp,
                        deadline_ms: now + ttl_ms,
                        ttl_ms,
                        meta,
                    },
                )
            })
            .await?;
        match record {
            Record::Lease(k, lease) => Ok(lease.live_registration(&k)),
            _ => unreachable!("a registration writes a lease"),
        }
    }

    /// A renewal that may wait (`registry::renew`), taken under the registry lock alone: most
    /// renewals under a steady load never wait for chitchat's lock, which gossip rounds hold
    /// while they scan the keyspace. Safe without that lock because nothing reaches the keyspace
    /// now: a later write of the key (under both locks) replaces or drops what waits, and
    /// maintenance writes it under both, only if our copy still wins.
    fn try_defer(
        &self,
        k: &RegKey,
        ttl_ms: u64,
        meta: &BTreeMap<String, String>,
    ) -> Option<LiveRegistration> {
        let mut local = self.inner.local.lock().expect("local lock");
        let current = local.registry.leases.get(k)?;
        let key = registry::lease_key(k);
        let ours = local.own.get(&key) == Some(&current.reg.marker);
        // Cheap checks first: no stamp is spent on a renewal that cannot wait.
        let cur = &current.reg.val;
        if !ours || cur.ttl_ms != ttl_ms || cur.meta != *meta || cur.is_deregistration() {
            return None;
        }
        let now = self.inner.hlc.now_ms();
        let lease = Lease {
            stamp: self.inner.hlc.stamp(),
            deadline_ms: now + ttl_ms,
            ttl_ms,
            meta: meta.clone(),
        };
        let margin = deferred::MARGIN.as_millis() as u64;
        let due = renew::defer_until(cur, ours, &lease, now, margin)?;
        let live = lease.live_registration(k);
        local
            .deferred
            .put(key, Record::Lease(k.clone(), lease), due);
        let c = &self.inner.counters.renewals_deferred;
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(live)
    }

    /// Ends a registration now, on every node as soon as the record arrives (a deregistration
    /// is never live, whatever the reader's clock). Returns `false`, writing nothing, when this
    /// node holds no lease for `key` (so unknown names leave no record behind) or the latest
    /// one already is a deregistration.
    pub async fn deregister(&self, key: RegKey) -> bool {
        let admit = |r: &Registry| match r.leases.get(&key) {
            Some(slot) if !slot.reg.val.is_deregistration() => Ok(()),
            _ => Err(()),
        };
        let build = |stamp, now| {
            Record::Lease(
                key.clone(),
                Lease {
                    stamp,
                    deadline_ms: now,
                    ttl_ms: 0,
                    meta: BTreeMap::new(),
                },
            )
        };
        self.write_with(admit, build).await.is_ok()
    }

    /// Takes the lock that entity writes hold across their read-check-write.
    pub async fn lock_entities(&self) -> EntityGuard<'_> {
        EntityGuard(self.inner.entity_lock.lock().await)
    }

    /// Creates or updates an entity (whole value, last writer wins cluster-wide). Free-form
    /// lines are checked as `snippets` says (the caller decides what it may write). The caller
    /// holds `_guard` from before it read what the write depends on.
    pub async fn put<E: Entity>(
        &self,
        _guard: &EntityGuard<'_>,
        entity: E,
        mode: WriteMode,
        snippets: Snippets,
    ) -> Result<(), EntityError> {
        entity.validate(snippets)?;
        let exists = self.get::<E>(entity.name()).is_some();
        match mode {
            WriteMode::Create if exists => return Err(EntityError::Conflict(E::KIND)),
            WriteMode::Update if !exists => return Err(EntityError::NotFound(E::KIND)),
            _ => {}
        }
        let name = entity.name().to_string();
        info!(kind = E::KIND, name = %name, ?mode, "entity written");
        let ok: Result<_, std::convert::Infallible> = self
            .write_with(
                |_| Ok(()),
                |stamp, _| {
                    E::record(
                        name,
                        Versioned {
                            stamp,
                            value: Some(entity),
                        },
                    )
                },
            )
            .await;
        let Ok(_) = ok;
        Ok(())
    }

    /// [`Node::put`] with the entity lock taken for just this write (for callers with nothing
    /// to read first).
    pub async fn write_entity<E: Entity>(
        &self,
        entity: E,
        mode: WriteMode,
        snippets: Snippets,
    ) -> Result<(), EntityError> {
        let guard = self.lock_entities().await;
        self.put(&guard, entity, mode, snippets).await
    }

    /// [`Node::delete`] with the entity lock taken for just this write.
    pub async fn delete_entity<E: Entity>(&self, name: &str) -> Result<(), EntityError> {
        let guard = self.lock_entities().await;
        self.delete::<E>(&guard, name).await
    }

    /// Deletes an entity: a tombstone that outranks every older write.
    pub async fn delete<E: Entity>(
        &self,
        _guard: &EntityGuard<'_>,
        name: &str,
    ) -> Result<(), EntityError> {
        if self.get::<E>(name).is_none() {
            return Err(EntityError::NotFound(E::KIND));
        }
        info!(kind = E::KIND, name = %name, "entity deleted");
        let ok: Result<_, std::convert::Infallible> = self
            .write_with(
                |_| Ok(()),
                |stamp, _| E::record(name.to_string(), Versioned { stamp, value: None }),
            )
            .await;
        let Ok(_) = ok;
        Ok(())
    }
}
