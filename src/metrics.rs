//! Prometheus metrics: what the node counts, served as text on `GET /metrics`.
//!
//! Counters the API and the event stream feed live here; values that another stage already keeps
//! (the render stage's apply status, gossip drops) are read at scrape time by collectors, so that
//! no stage has to know about Prometheus.

use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::cluster::NodeView;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemberLabels {
    pub state: &'static str,
}

/// The node's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub api_requests: Family<ApiLabels, Counter>,
    pub api_refused: Family<RefusedLabels, Counter>,
    pub registrations_live: Gauge,
    pub backends: Gauge,
    pub frontends: Gauge,
    pub members: Family<MemberLabels, Gauge>,
    pub held: Gauge,
    pub degraded: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("bender");
        registry.register(
            "build",
            "The running bender's version",
            prometheus_client::metrics::info::Info::new(vec![(
                "version",
                env!("CARGO_PKG_VERSION"),
            )]),
        );
        let api_requests = Family::<ApiLabels, Counter>::default();
        registry.register(
            "api_requests",
            "HTTP API requests by route, method and status",
            api_requests.clone(),
        );
        let api_refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "api_refused",
            "API requests refused: no valid credential (unauthenticated), not enough scope (forbidden), or the registration policy",
            api_refused.clone(),
        );
        let registrations_live = Gauge::default();
        registry.register(
            "registrations_live",
            "Live registrations in this node's view",
            registrations_live.clone(),
        );
        let backends = Gauge::default();
        registry.register("backends", "Backends defined", backends.clone());
        let frontends = Gauge::default();
        registry.register("frontends", "Frontends defined", frontends.clone());
        let members = Family::<MemberLabels, Gauge>::default();
        registry.register(
            "gossip_members",
            "Cluster members by state (live or dead), this node included",
            members.clone(),
        );
        let held = Gauge::default();
        registry.register(
            "registrations_held",
            "Registrations the isolation guard keeps serving though the registry no longer has them live",
            held.clone(),
        );
        let degraded = Gauge::default();
        registry.register(
            "degraded",
            "1 while the node is isolated or holds registrations (see /v1/status)",
            degraded.clone(),
        );
        Metrics {
            held,
            degraded,
            registry: Mutex::new(registry),
            api_requests,
            api_refused,
            registrations_live,
            backends,
            frontends,
            members,
        }
    }

    /// Adds a collector read at every scrape.
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry
            .lock()
            .expect("metrics lock")
            .register_collector(collector);
    }

    pub fn record_view(&self, nv: &NodeView) {
        self.registrations_live
            .set(nv.view.registrations.len() as i64);
        self.backends.set(nv.view.backends.len() as i64);
        self.frontends.set(nv.view.frontends.len() as i64);
        self.held.set(nv.held.len() as i64);
        self.degraded.set(i64::from(!nv.degraded.is_empty()));
        let live = nv.members.iter().filter(|m| m.live).count() as i64;
        let dead = nv.members.len() as i64 - live;
        self.members
            .get_or_create(&MemberLabels { state: "live" })
            .set(live);
        self.members
            .get_or_create(&MemberLabels { state: "dead" })
            .set(dead);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics lock");
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

/// A collector whose values come from a closure at scrape time.
pub struct FnCollector<F>(pub F);

impl<F> std::fmt::Debug for FnCollector<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnCollector")
    }
}

impl<F> Collector for FnCollector<F>
where
    F: Fn(&mut DescriptorEncoder) -> Result<(), std::fmt::Error> + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        (self.0)(&mut encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_what_was_recorded() {
        let m = Metrics::new();
        m.api_requests
            .get_or_create(&ApiLabels {
                route: "/health",
                method: "GET",
                status: 200,
            })
            .inc();
        let text = m.encode();
        assert!(
            text.contains(
                r#"bender_api_requests_total{route="/health",method="GET",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
