//! The isolation guard: what a node keeps serving when registrations vanish for reasons that
//! are more likely the network's (or the cluster's) than the servers'.
//!
//! A load balancer cut off from its peers stops seeing renewals that app servers send to the
//! other nodes, and every lease expires at its TTL: emptying the backends then turns a network
//! problem into an outage (Eureka's self-preservation and Synapse's keep-last-backends exist for
//! this). So registrations that *expire* (never those explicitly deregistered) are held — kept
//! in what is rendered, not in the registry — while:
//!
//! - the node is isolated (it has peers configured and none is live), until contact returns
//!   and then `settle` more, for the renewals to arrive;
//! - more than `mass_expiry_share` of an app@version's servers, and at least
//!   `mass_expiry_min` of them, expired within `window` (a glitch between the app servers and
//!   the load balancers, or a whole-cluster restart), for `max_hold`;
//! - the node has just started from a snapshot, for `settle`.
//!
//! A held registration that renews is simply live again. The trade-off (documented in
//! README): servers that really died in a mass expiry keep receiving traffic for up to
//! `max_hold` unless the backend has health checks.
//!
//! Pure: the node's view task feeds it each new live set; time is a parameter.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::Deserialize;

use crate::model::RegKey;
use crate::registry::LiveRegistration;

/// `[guard]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Share of an app@version's servers that may expire within `window` before the rest of
    /// the expiries are held (0.0 to 1.0).
    #[serde(default = "default_share")]
    pub mass_expiry_share: f64,
    /// Fewest expiries of one app@version within `window` that count as a mass expiry: one or
    /// two servers of a small app going away is not a glitch of the network.
    #[serde(default = "default_min")]
    pub mass_expiry_min: usize,
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
    /// How long servers held after a mass expiry stay held.
    #[serde(default = "default_max_hold", with = "humantime_serde")]
    pub max_hold: Duration,
    /// How long held servers wait for their renewals once the node has contact again (or after
    /// it started from a snapshot).
    #[serde(default = "default_settle", with = "humantime_serde")]
    pub settle: Duration,
}

fn yes() -> bool {
    true
}
fn default_share() -> f64 {
    0.5
}
fn default_min() -> usize {
    3
}
fn default_window() -> Duration {
    Duration::from_secs(10)
}
fn default_max_hold() -> Duration {
    Duration::from_secs(60)
}
fn default_settle() -> Duration {
    Duration::from_secs(8)
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            enabled: true,
            mass_expiry_share: default_share(),
            mass_expiry_min: default_min(),
            window: default_window(),
            max_hold: default_max_hold(),
            settle: default_settle(),
        }
    }
}

impl GuardConfig {
    pub fn validate(&self) -> Result<(), (&'static str, String, String)> {
        if self.mass_expiry_min == 0 {
            return Err(("guard.mass_expiry_min", "0".into(), "at least 1".into()));
        }
        if !(0.0..=1.0).contains(&self.mass_expiry_share) {
            return Err((
                "guard.mass_expiry_share",
                self.mass_expiry_share.to_string(),
                "a share between 0.0 and 1.0".into(),
            ));
        }
        for (key, d) in [
            ("guard.window", self.window),
            ("guard.max_hold", self.max_hold),
            ("guard.settle", self.settle),
        ] {
            if d.is_zero() || d > Duration::from_secs(24 * 3600) {
                return Err((
                    key,
                    humantime::format_duration(d).to_string(),
                    "more than 0 and at most 24h".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Why registrations are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Why {
    /// No live peer.
    Isolated,
    /// Many of the app's servers expired at once.
    MassExpiry,
    /// Restored from the snapshot at start.
    Startup,
}

#[derive(Debug, Clone, PartialEq)]
struct Held {
    reg: LiveRegistration,
    why: Why,
    /// When it stops being held, unless it renews (None: while isolated).
    until_ms: Option<u64>,
}

/// The live registrations, as the guard asks about them.
pub trait LiveSet {
    fn contains_key(&self, k: &RegKey) -> bool;
    /// How many live registrations `app@version` has.
    fn count_of(&self, app: &str, version: &str) -> usize;
}

fn first_of(app: &str, version: &str) -> RegKey {
    RegKey {
        app: app.to_string(),
        version: version.to_string(),
        host: String::new(),
        port: 0,
    }
}

impl LiveSet for imbl::OrdMap<RegKey, LiveRegistration> {
    fn contains_key(&self, k: &RegKey) -> bool {
        imbl::OrdMap::contains_key(self, k)
    }
    fn count_of(&self, app: &str, version: &str) -> usize {
        self.range(first_of(app, version)..)
            .take_while(|(k, _)| k.app == app && k.version == version)
            .count()
    }
}

impl LiveSet for BTreeMap<RegKey, LiveRegistration> {
    fn contains_key(&self, k: &RegKey) -> bool {
        BTreeMap::contains_key(self, k)
    }
    fn count_of(&self, app: &str, version: &str) -> usize {
        self.range(first_of(app, version)..)
            .take_while(|(k, _)| k.app == app && k.version == version)
            .count()
    }
}

/// The guard's state between steps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Guard {
    held: BTreeMap<RegKey, Held>,
    /// Recent expiries (when, what), for the mass-expiry rule, and to take back what expired
    /// just before isolation was noticed (the failure detector takes a second or two).
    expiries: VecDeque<(u64, LiveRegistration)>,
    was_isolated: bool,
}

/// What a step decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Registrations to serve that the registry no longer has live.
    pub held: BTreeMap<RegKey, LiveRegistration>,
    /// Why the node is degraded (empty: it is not), for status, logs and metrics.
    pub degraded: Vec<String>,
}

impl Guard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Holds `restored` (registrations of the snapshot the node started from, expired or not)
    /// for `settle`, so that a whole-cluster restart does not empty the backends before the
    /// renewals come back.
    pub fn start_with(
        &mut self,
        restored: impl IntoIterator<Item = LiveRegistration>,
        now_ms: u64,
        cfg: &GuardConfig,
    ) {
        if !cfg.enabled {
            return;
        }
        let until = now_ms + cfg.settle.as_millis() as u64;
        for reg in restored {
            self.held.insert(
                reg.key.clone(),
                Held {
                    reg,
                    why: Why::Startup,
                    until_ms: Some(until),
                },
            );
        }
    }

    /// When the next hold runs out (the view task wakes then).
    pub fn next_release(&self) -> Option<u64> {
        self.held.values().filter_map(|h| h.until_ms).min()
    }

    /// One step: `removed` is what stopped being live in the registry since the last step
    /// (what was held before, the guard knows), `live` what it has live now; `deregistered`
    /// tells an explicit deregistration from an expiry. Costs what was removed and what is
    /// held, not the size of `live`.
    pub fn step(
        &mut self,
        removed: &[LiveRegistration],
        live: &impl LiveSet,
        deregistered: &dyn Fn(&RegKey) -> bool,
        isolated: bool,
        now_ms: u64,
        cfg: &GuardConfig,
    ) -> Step {
        if !cfg.enabled {
            self.held.clear();
            return Step {
                held: BTreeMap::new(),
                degraded: Vec::new(),
            };
        }
        let settle = cfg.settle.as_millis() as u64;
        let window = cfg.window.as_millis() as u64;
        // Back in the registry, or explicitly gone: no longer held.
        self.held
            .retain(|k, _| !live.contains_key(k) && !deregistered(k));
        // Contact returned: what was held for it waits `settle` for its renewals.
        if self.was_isolated && !isolated {
            for h in self.held.values_mut().filter(|h| h.why == Why::Isolated) {
                h.until_ms = Some(now_ms + settle);
            }
        }
        let was_isolated = self.was_isolated;
        // While isolated, everything held stays held until contact returns.
        if isolated {
            for h in self.held.values_mut() {
                h.why = Why::Isolated;
                h.until_ms = None;
            }
        }
        self.was_isolated = isolated;
        // What just expired (served before, not live now, not deregistered, not yet held).
        let expired: Vec<&LiveRegistration> = removed
            .iter()
            .filter(|r| {
                !live.contains_key(&r.key)
                    && !deregistered(&r.key)
                    && !self.held.contains_key(&r.key)
            })
            .collect();
        for r in &expired {
            self.expiries.push_back((now_ms, (*r).clone()));
        }
        while self
            .expiries
            .front()
            .is_some_and(|(t, _)| *t + window < now_ms)
        {
            self.expiries.pop_front();
        }
        // Isolation just began: what expired in the window before it was noticed is taken
        // back, unless it was deregistered meanwhile or is live again.
        if isolated && !was_isolated {
            for (_, r) in &self.expiries {
                if !live.contains_key(&r.key) && !deregistered(&r.key) {
                    self.held.entry(r.key.clone()).or_insert_with(|| Held {
                        reg: r.clone(),
                        why: Why::Isolated,
                        until_ms: None,
                    });
                }
            }
        }
        // Per app@version among what expired: recent expiries, and servers still live.
        let mut counts: BTreeMap<(&str, &str), (usize, usize)> = BTreeMap::new();
        if !isolated {
            for r in &expired {
                counts.insert((&r.key.app, &r.key.version), (0, 0));
            }
            for (_, e) in &self.expiries {
                if let Some(c) = counts.get_mut(&(e.key.app.as_str(), e.key.version.as_str())) {
                    c.0 += 1;
                }
            }
            for ((app, version), c) in counts.iter_mut() {
                c.1 = live.count_of(app, version);
            }
        }
        for r in expired {
            let why = if isolated {
                Some(Why::Isolated)
            } else {
                let (recent, remaining) = counts[&(r.key.app.as_str(), r.key.version.as_str())];
                let total = recent + remaining;
                (recent >= cfg.mass_expiry_min
                    && recent as f64 / total as f64 > cfg.mass_expiry_share)
                    .then_some(Why::MassExpiry)
            };
            if let Some(why) = why {
                let until_ms = match why {
                    Why::Isolated => None,
                    _ => Some(now_ms + cfg.max_hold.as_millis() as u64),
                };
                self.held.insert(
                    r.key.clone(),
                    Held {
                        reg: r.clone(),
                        why,
                        until_ms,
                    },
                );
            }
        }
        // Holds run out (while isolated they do not: `until_ms` is None). An expiry that came
        // before its app passed the share is not held after the fact: it is already gone.
        self.held
            .retain(|_, h| h.until_ms.is_none_or(|until| now_ms < until));
        let mut degraded = Vec::new();
        if isolated {
            degraded.push("isolated: no live peer; expired registrations are held".to_string());
        }
        let mut by_why: BTreeMap<Why, usize> = BTreeMap::new();
        for h in self.held.values() {
            *by_why.entry(h.why).or_default() += 1;
        }
        for (why, n) in by_why {
            degraded.push(match why {
                Why::Isolated if isolated => continue,
                Why::Isolated => format!("{n} registration(s) held since the node was isolated, until their renewals arrive"),
                Why::MassExpiry => format!("{n} registration(s) held after many of their app's servers expired at once"),
                Why::Startup => format!("{n} registration(s) from the snapshot held until their renewals arrive"),
            });
        }
        Step {
            held: self
                .held
                .iter()
                .map(|(k, h)| (k.clone(), h.reg.clone()))
                .collect(),
            degraded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reg(app: &str, port: u16) -> LiveRegistration {
        LiveRegistration {
            key: RegKey::new(app, "1", "10.0.0.1", port).unwrap(),
            registered_ms: 0,
            deadline_ms: 4000,
            ttl_ms: 4000,
            meta: BTreeMap::new(),
        }
    }

    fn set(regs: &[LiveRegistration]) -> BTreeMap<RegKey, LiveRegistration> {
        regs.iter().map(|r| (r.key.clone(), r.clone())).collect()
    }

    const NONE: &dyn Fn(&RegKey) -> bool = &|_| false;

    impl Guard {
        /// A step from the live set `prev` to `live` (what the view task passes is the
        /// difference, which it gets from the registry).
        fn step_from(
            &mut self,
            prev: &BTreeMap<RegKey, LiveRegistration>,
            live: &BTreeMap<RegKey, LiveRegistration>,
            deregistered: &dyn Fn(&RegKey) -> bool,
            isolated: bool,
            now_ms: u64,
            cfg: &GuardConfig,
        ) -> Step {
            let removed: Vec<LiveRegistration> = prev
                .values()
                .filter(|r| !live.contains_key(&r.key))
                .cloned()
                .collect();
            self.step(&removed, live, deregistered, isolated, now_ms, cfg)
        }
    }

    #[test]
    fn an_isolated_node_holds_every_expiry_until_contact_returns_and_then_settle() {
        let cfg = GuardConfig::default();
        let mut g = Guard::new();
        let all = set(&[reg("web", 1), reg("web", 2), reg("api", 1)]);
        let s = g.step_from(&all, &BTreeMap::new(), NONE, true, 10_000, &cfg);
        assert_eq!(s.held, all);
        assert!(s.degraded[0].starts_with("isolated"), "{:?}", s.degraded);
        // Still isolated an hour later: still held.
        let s = g.step_from(&all, &BTreeMap::new(), NONE, true, 3_610_000, &cfg);
        assert_eq!(s.held.len(), 3);
        // Contact returns; web:1 renews at once; the others get `settle` to do so.
        let back = set(&[reg("web", 1)]);
        let s = g.step_from(&all, &back, NONE, false, 3_611_000, &cfg);
        assert_eq!(
            s.held.keys().map(|k| k.port).collect::<Vec<_>>(),
            vec![1, 2]
        );
        let s = g.step_from(&all, &back, NONE, false, 3_611_000 + 8_001, &cfg);
        assert!(s.held.is_empty() && s.degraded.is_empty(), "{s:?}");
    }

    #[test]
    fn a_mass_expiry_is_held_for_max_hold_but_single_expiries_are_not() {
        let cfg = GuardConfig::default();
        let mut g = Guard::new();
        let four = set(&[reg("web", 1), reg("web", 2), reg("web", 3), reg("web", 4)]);
        // One of four expires: 25%, below the share: gone.
        let three = set(&[reg("web", 2), reg("web", 3), reg("web", 4)]);
        let s = g.step_from(&four, &three, NONE, false, 1_000, &cfg);
        assert!(s.held.is_empty());
        // Two more within the window: 3 of 4 expired, more than half: held.
        let one = set(&[reg("web", 4)]);
        let s = g.step_from(&three, &one, NONE, false, 2_000, &cfg);
        assert_eq!(s.held.len(), 2, "{s:?}");
        assert!(
            s.degraded[0].contains("many of their app's servers"),
            "{s:?}"
        );
        let s = g.step_from(&one, &one, NONE, false, 61_000, &cfg);
        assert_eq!(s.held.len(), 2);
        let s = g.step_from(&one, &one, NONE, false, 62_001, &cfg);
        assert!(s.held.is_empty(), "released after max_hold: {s:?}");
    }

    #[test]
    fn the_snapshot_is_held_at_start_until_settle() {
        let cfg = GuardConfig::default();
        let mut g = Guard::new();
        g.start_with([reg("web", 1), reg("web", 2)], 0, &cfg);
        let renewed = set(&[reg("web", 1)]);
        let s = g.step_from(&BTreeMap::new(), &renewed, NONE, false, 100, &cfg);
        assert_eq!(s.held.keys().map(|k| k.port).collect::<Vec<_>>(), vec![2]);
        assert!(g
            .step_from(&renewed, &renewed, NONE, false, 8_001, &cfg)
            .held
            .is_empty());
    }

    #[test]
    fn a_small_app_losing_its_servers_is_not_a_mass_expiry_but_isolation_takes_them_back() {
        let cfg = GuardConfig::default();
        let mut g = Guard::new();
        let two = set(&[reg("web", 1), reg("web", 2)]);
        // Both expire, the node not (yet) isolated: two is fewer than mass_expiry_min.
        let s = g.step_from(&two, &BTreeMap::new(), NONE, false, 1_000, &cfg);
        assert!(s.held.is_empty(), "{s:?}");
        // The failure detector notices the isolation a moment later: they are taken back.
        let s = g.step_from(&BTreeMap::new(), &BTreeMap::new(), NONE, true, 2_500, &cfg);
        assert_eq!(s.held, two);
    }

    #[test]
    fn a_disabled_guard_holds_nothing() {
        let cfg = GuardConfig {
            enabled: false,
            ..Default::default()
        };
        let mut g = Guard::new();
        let all = set(&[reg("web", 1)]);
        assert!(g
            .step_from(&all, &BTreeMap::new(), NONE, true, 0, &cfg)
            .held
            .is_empty());
    }

    proptest! {
        /// Whatever happens, an explicit deregistration is never held, nothing live is held,
        /// and while isolated everything that was served and not deregistered still is.
        #[test]
        fn deregistrations_always_apply_and_isolation_keeps_the_rest(
            steps in proptest::collection::vec(
                (proptest::collection::btree_set(1u16..9, 0..8), proptest::collection::btree_set(1u16..9, 0..3), any::<bool>(), 0u64..20_000),
                1..12,
            ),
        ) {
            let cfg = GuardConfig::default();
            let mut g = Guard::new();
            let mut served: BTreeMap<RegKey, LiveRegistration> = BTreeMap::new();
            let mut now = 0;
            for (live_ports, dereg_ports, isolated, dt) in steps {
                now += dt;
                let live = set(&live_ports.iter().map(|p| reg("web", *p)).collect::<Vec<_>>());
                let dereg = |k: &RegKey| dereg_ports.contains(&k.port) && !live_ports.contains(&k.port);
                let s = g.step_from(&served, &live, &dereg, isolated, now, &cfg);
                for k in s.held.keys() {
                    prop_assert!(!dereg(k), "a deregistration is held");
                    prop_assert!(!live.contains_key(k), "a live registration is held");
                }
                if isolated {
                    for k in served.keys() {
                        prop_assert!(live.contains_key(k) || dereg(k) || s.held.contains_key(k),
                            "isolated, yet {k} was dropped");
                    }
                }
                served = live.clone();
                served.extend(s.held);
            }
        }
    }
}
