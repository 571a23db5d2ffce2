//! The `[limits]` table: how much a node takes on, so that a flood costs it bounded memory and
//! work and is answered with 429 (and `Retry-After`), not with an outage.

use serde::Deserialize;

use crate::model::RegKey;
use crate::node::RegisterError;
use crate::registry::Registry;

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Registrations this node's API accepts in all (held in the registry: live ones, and
    /// expired ones until `lease_gc_grace` collects them). Renewals of a registration that is
    /// held are always accepted; a new one past the limit is 429.
    #[serde(default = "default_max_registrations")]
    pub max_registrations: usize,
    /// The same, per app.
    #[serde(default = "default_max_registrations_per_app")]
    pub max_registrations_per_app: usize,
    /// API requests handled at once (event streams aside); past it, 429.
    #[serde(default = "default_max_requests_in_flight")]
    pub max_requests_in_flight: usize,
    /// Event streams (`/v1/events`) open at once; past it, 429.
    #[serde(default = "default_max_event_streams")]
    pub max_event_streams: usize,
}

fn default_max_registrations() -> usize {
    // About 7 KB of memory each at the peak of an apply with the default template (measured:
    // a node holding 15,000 peaks at 106-124 MB under a flood, 20,000 at 142-167 MB).
    15_000
}
fn default_max_registrations_per_app() -> usize {
    5_000
}
fn default_max_requests_in_flight() -> usize {
    1_024
}
fn default_max_event_streams() -> usize {
    256
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_registrations: default_max_registrations(),
            max_registrations_per_app: default_max_registrations_per_app(),
            max_requests_in_flight: default_max_requests_in_flight(),
            max_event_streams: default_max_event_streams(),
        }
    }
}

impl Limits {
    /// Checks every value; the error names the key and what is valid.
    pub fn validate(&self) -> Result<(), (&'static str, String, String)> {
        let check = |key: &'static str, v: usize, max: usize| {
            if v == 0 || v > max {
                Err((key, v.to_string(), format!("between 1 and {max}")))
            } else {
                Ok(())
            }
        };
        check(
            "limits.max_registrations",
            self.max_registrations,
            10_000_000,
        )?;
        check(
            "limits.max_registrations_per_app",
            self.max_registrations_per_app,
            self.max_registrations,
        )?;
        check(
            "limits.max_requests_in_flight",
            self.max_requests_in_flight,
            1_000_000,
        )?;
        check("limits.max_event_streams", self.max_event_streams, 100_000)?;
        Ok(())
    }
}

/// Refuses a registration `r` does not hold yet once `limits` are reached (a renewal of one it
/// holds always passes).
pub fn admit(r: &Registry, limits: &Limits, key: &RegKey) -> Result<(), RegisterError> {
    if r.leases.contains_key(key) {
        return Ok(());
    }
    if r.leases.len() >= limits.max_registrations {
        return Err(RegisterError::Limit(
            String::new(),
            limits.max_registrations,
            "",
        ));
    }
    if r.leases_of_app(&key.app) >= limits.max_registrations_per_app {
        return Err(RegisterError::Limit(
            format!(" of app {}", key.app),
            limits.max_registrations_per_app,
            "_per_app",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod admit_tests {
    use super::*;
    use crate::hlc::Stamp;
    use crate::registry::{Lease, Record};

    fn holding(keys: &[(&str, u16)]) -> Registry {
        let mut r = Registry::default();
        for (i, (app, port)) in keys.iter().enumerate() {
            let lease = Lease {
                stamp: Stamp(1_000 + i as u64, 0, "n".into()),
                deadline_ms: 100_000,
                ttl_ms: 99_000,
                meta: Default::default(),
            };
            let key = RegKey::new(app, "1", "10.0.0.1", *port).unwrap();
            r.insert(Record::Lease(key, lease), &i.to_string());
        }
        r
    }

    #[test]
    fn a_new_registration_past_either_limit_is_refused_and_a_renewal_never_is() {
        let limits = Limits {
            max_registrations: 3,
            max_registrations_per_app: 2,
            ..Limits::default()
        };
        let key = |app: &str, port| RegKey::new(app, "1", "10.0.0.1", port).unwrap();
        let r = holding(&[("web", 1), ("web", 2)]);
        let e = admit(&r, &limits, &key("web", 3)).unwrap_err().to_string();
        assert!(e.contains("max_registrations_per_app"), "{e}");
        assert!(admit(&r, &limits, &key("web", 2)).is_ok(), "a renewal");
        assert!(admit(&r, &limits, &key("api", 1)).is_ok());
        let r = holding(&[("web", 1), ("web", 2), ("api", 1)]);
        let e = admit(&r, &limits, &key("db", 1)).unwrap_err().to_string();
        assert!(e.contains("max_registrations)"), "{e}");
        assert!(admit(&r, &limits, &key("api", 1)).is_ok(), "a renewal");
    }
}
