//! What a node serves at an instant, computed from the registry, and when that next changes on
//! its own (a deadline passing, with no write at all).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Registry;
use crate::model::{Backend, Frontend, RegKey};

impl Registry {
    /// What is live at `now_ms`.
    pub fn view(&self, now_ms: u64) -> View {
        let registrations = self
            .leases
            .iter()
            .filter(|(_, slot)| slot.reg.val.is_live(now_ms))
            .map(|(k, slot)| (k.clone(), slot.reg.val.live_registration(k)))
            .collect();
        let backends = self
            .backends
            .iter()
            .filter_map(|(n, s)| Some((n.clone(), s.value()?.clone())))
            .collect();
        let frontends = self
            .frontends
            .iter()
            .filter_map(|(n, s)| Some((n.clone(), s.value()?.clone())))
            .collect();
        View {
            registrations,
            backends,
            frontends,
        }
    }

    /// The earliest deadline after `now_ms` of a winning, live lease: when the view next
    /// changes on its own.
    pub fn next_deadline(&self, now_ms: u64) -> Option<u64> {
        self.leases
            .values()
            .filter(|s| s.reg.val.is_live(now_ms))
            .map(|s| s.reg.val.deadline_ms)
            .min()
    }
}

/// A live registration as the view shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveRegistration {
    pub key: RegKey,
    /// When the latest renewal happened (deadline - ttl).
    pub registered_ms: u64,
    pub deadline_ms: u64,
    pub ttl_ms: u64,
    pub meta: BTreeMap<String, String>,
}

/// What a node serves: live registrations and current entities, in sorted order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub registrations: BTreeMap<RegKey, LiveRegistration>,
    pub backends: BTreeMap<String, Backend>,
    pub frontends: BTreeMap<String, Frontend>,
}

impl View {
    /// Live registrations of app@version, sorted by (host, port).
    pub fn servers_of<'a>(
        &'a self,
        app: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a LiveRegistration> + 'a {
        self.registrations
            .values()
            .filter(move |r| r.key.app == app && r.key.version == version)
    }
}
