//! The metrics other stages keep (the render stage's apply status, gossip drops, refused peer
//! records, events), read at scrape time, and the task that keeps the view gauges up to date.

use std::sync::Arc;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;

use super::{statuses, SharedRender};
use crate::metrics::{FnCollector, Metrics};
use crate::node::Node;
use crate::render::TemplateStatus;
use crate::shutdown::Shutdown;

/// Metrics that other stages keep: read at scrape time.
pub(super) fn register_collectors(
    metrics: &Metrics,
    gossip: Arc<crate::transport::TransportCounters>,
    node: Node,
    render: SharedRender,
    fleet: crate::fleet::publish::Fleet,
) {
    use prometheus_client::encoding::{EncodeLabelSet, NoLabelSet};
    use prometheus_client::metrics::gauge::ConstGauge;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct TemplateLabels {
        template: String,
    }
    impl TemplateLabels {
        fn of(s: &TemplateStatus) -> Self {
            TemplateLabels {
                template: s.name.clone(),
            }
        }
    }
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct ResultLabels {
        template: String,
        result: &'static str,
    }

    type Read = fn(&crate::transport::TransportCounters) -> &std::sync::atomic::AtomicU64;
    let gossip_counters: [(&str, &str, Read); 5] = [
        (
            "gossip_dropped",
            "Gossip datagrams dropped because the sender is outside gossip_allow",
            |c| &c.dropped,
        ),
        ("gossip_sent_datagrams", "Gossip datagrams sent", |c| {
            &c.sent_datagrams
        }),
        (
            "gossip_sent_bytes",
            "Bytes of gossip sent (UDP payload)",
            |c| &c.sent_bytes,
        ),
        (
            "gossip_received_datagrams",
            "Gossip datagrams received from allowed senders",
            |c| &c.received_datagrams,
        ),
        (
            "gossip_received_bytes",
            "Bytes of gossip received from allowed senders (UDP payload)",
            |c| &c.received_bytes,
        ),
    ];
    for (name, help, read) in gossip_counters {
        let g = gossip.clone();
        counter(metrics, name, help, move || {
            read(&g).load(std::sync::atomic::Ordering::Relaxed)
        });
    }
    let n = node.clone();
    metrics.register_collector(Box::new(FnCollector(move |enc: &mut DescriptorEncoder| {
        let mut m = enc.encode_descriptor(
            "events",
            "Changes this node observed (online, offline, backend/frontend updated or deleted)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (kind, count) in n.event_counts() {
            ConstCounter::new(count).encode(m.encode_family(&[("kind", kind)])?)?;
        }
        Ok(())
    })));
    super::process::register(metrics);
    let n = node.clone();
    metrics.register_collector(Box::new(FnCollector(move |enc: &mut DescriptorEncoder| {
        // One pass over what is served (live, and held ones the view no longer has), then one
        // lookup per backend.
        let nv = n.views().borrow().clone();
        let mut live: std::collections::HashMap<(&str, &str), i64> = Default::default();
        let held = nv.held.keys().filter(|k| !nv.view.registrations.contains_key(*k));
        for k in nv.view.registrations.keys().chain(held) {
            *live.entry((k.app.as_str(), k.version.as_str())).or_default() += 1;
        }
        let mut m = enc.encode_descriptor(
            "backend_servers_live",
            "Live servers of each backend (its app@version) in this node's view, held ones included",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for b in nv.view.backends.values() {
            let count = live.get(&(b.app.as_str(), b.version.as_str())).copied().unwrap_or(0);
            ConstGauge::new(count).encode(m.encode_family(&[("backend", b.name.as_str())])?)?;
        }
        Ok(())
    })));
    metrics.register_collector(Box::new(FnCollector(move |enc: &mut DescriptorEncoder| {
        let (counts, refused) = fleet.counts();
        {
            let mut m = enc.encode_descriptor(
                "fleet_nodes",
                "Load balancers in each fleet state as this node sees them (synced, pending, stale, error): alert when any is not synced for 30s",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (state, n) in counts {
                ConstGauge::new(n as i64).encode(m.encode_family(&[("state", state.label())])?)?;
            }
        }
        let g = ConstGauge::new(refused as i64);
        g.encode(enc.encode_descriptor(
            "fleet_records_refused",
            "Members whose fleet apply record this node refuses (too big, or not well-formed)",
            None,
            g.metric_type(),
        )?)
    })));
    let n = node.clone();
    counter(
        metrics,
        "gossip_stamps_refused",
        "Records from peers refused because their stamp was further ahead than max_clock_drift",
        move || n.stamps_refused(),
    );
    let n = node.clone();
    counter(
        metrics,
        "gossip_resyncs",
        "Times more key changes came from peers than the queue holds, and every peer's keyspace was re-read",
        move || n.resyncs(),
    );
    let n = node.clone();
    counter(
        metrics,
        "renewals_deferred",
        "Renewals acknowledged without being gossiped at once (only the latest is, before the deadline peers know comes near)",
        move || n.renewals_deferred().0,
    );
    let n = node.clone();
    metrics.register_collector(Box::new(FnCollector(move |enc: &mut DescriptorEncoder| {
        let g = ConstGauge::new(n.renewals_deferred().1 as i64);
        g.encode(enc.encode_descriptor(
            "renewals_waiting",
            "Deferred renewals not gossiped yet",
            None,
            g.metric_type(),
        )?)
    })));
    let n = node.clone();
    counter(
        metrics,
        "clock_warnings",
        "Warnings that a peer's clock is off by more than clock_offset_warn",
        move || n.clock_warnings(),
    );
    counter(
        metrics,
        "gossip_records_refused",
        "Records from peers refused: undecodable, or values no client could write",
        move || node.records_refused(),
    );
    metrics.register_collector(Box::new(FnCollector(move |enc: &mut DescriptorEncoder| {
        let all = statuses(&render);
        let now = std::time::SystemTime::now();
        {
            let mut m = enc.encode_descriptor(
                "applies",
                "Attempts to put a changed config in place, by result",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for s in &all {
                for (result, n) in [
                    ("ok", s.applies.saturating_sub(s.failures)),
                    ("error", s.failures),
                ] {
                    let labels = ResultLabels {
                        template: s.name.clone(),
                        result,
                    };
                    ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        type Count = fn(&TemplateStatus) -> u64;
        let counters: [(&str, &str, Count); 6] = [
            (
                "runtime_updates",
                "Server changes applied through HAProxy's runtime API, with no reload",
                |s| s.runtime_updates,
            ),
            (
                "runtime_failures",
                "Runtime API updates that failed or were not confirmed (each fell back to a reload)",
                |s| s.runtime_failures,
            ),
            (
                "drift_repairs",
                "Servers HAProxy ran differently from bender's slots, set back",
                |s| s.drift_repairs,
            ),
            (
                "reloads",
                "Reloads sent to HAProxy, including those that put the last good config back",
                |s| s.reloads,
            ),
            ("renders", "Renders done", |s| s.renders),
            (
                "render_errors",
                "Renders that failed (a template error at render time)",
                |s| s.render_errors,
            ),
        ];
        for (name, help, count) in counters {
            let mut m = enc.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for s in &all {
                let labels = TemplateLabels::of(s);
                ConstCounter::new(count(s)).encode(m.encode_family(&labels)?)?;
            }
        }
        type Spread = fn(&TemplateStatus) -> &crate::render::Durations;
        let histograms: [(&str, &str, Spread); 3] = [
            (
                "runtime_update_duration_seconds",
                "How long runtime API updates take (commands and read-back)",
                |s| &s.runtime_durations,
            ),
            ("render_duration_seconds", "How long renders take", |s| {
                &s.render_durations
            }),
            (
                "validate_duration_seconds",
                "How long `haproxy -c` takes",
                |s| &s.check_durations,
            ),
        ];
        for (name, help, spread) in histograms {
            let mut m = enc.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Histogram,
            )?;
            for s in &all {
                let labels = TemplateLabels::of(s);
                let d = spread(s);
                m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                    d.sum_seconds,
                    d.count,
                    &d.buckets,
                    None,
                )?;
            }
        }
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct ReasonLabels {
            template: String,
            reason: &'static str,
        }
        let mut m = enc.encode_descriptor(
            "reloads_by_reason",
            "Reloads by why the change could not go through the runtime API",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for s in &all {
            for (reason, n) in &s.reload_reasons {
                let labels = ReasonLabels {
                    template: s.name.clone(),
                    reason,
                };
                ConstCounter::new(*n).encode(m.encode_family(&labels)?)?;
            }
        }
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct ServerLabels {
            template: String,
            backend: String,
            status: &'static str,
        }
        let mut m = enc.encode_descriptor(
            "haproxy_servers",
            "Occupied server slots by HAProxy's view of them (UP, DOWN, MAINT, DRAIN), per backend",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for s in &all {
            let mut counts: std::collections::BTreeMap<(&str, &'static str), i64> =
                std::collections::BTreeMap::new();
            for v in &s.servers {
                *counts.entry((v.backend.as_str(), v.status.as_str())).or_default() += 1;
            }
            for ((backend, status), n) in counts {
                let labels = ServerLabels {
                    template: s.name.clone(),
                    backend: backend.to_string(),
                    status,
                };
                ConstGauge::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        type Pick = fn(&TemplateStatus) -> Option<f64>;
        let gauges: [(&str, &str, Pick); 3] = [
            (
                "template_ok",
                "1 when HAProxy runs the latest render of the template",
                |s| Some(if s.ok { 1.0 } else { 0.0 }),
            ),
            ("last_render_seconds", "Duration of the last render", |s| {
                s.last_render_seconds
            }),
            (
                "last_validate_seconds",
                "Duration of the last `haproxy -c`",
                |s| s.last_check_seconds,
            ),
        ];
        for (name, help, pick) in gauges {
            let mut m = enc.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for s in &all {
                if let Some(v) = pick(s) {
                    let labels = TemplateLabels::of(s);
                    ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        let mut m = enc.encode_descriptor(
            "seconds_since_last_successful_apply",
            "Time since the template's config was last applied successfully",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for s in &all {
            if let Some(t) = s.last_success {
                let age = now.duration_since(t).unwrap_or_default().as_secs_f64();
                let labels = TemplateLabels::of(s);
                ConstGauge::new(age).encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    })));
}

/// Keeps the gauges in step with the published view.
pub(super) async fn feed_metrics(node: Node, metrics: Arc<Metrics>, mut shutdown: Shutdown) {
    let mut views = node.views();
    metrics.record_view(&views.borrow_and_update());
    loop {
        tokio::select! {
            changed = views.changed() => {
                if changed.is_err() { return; }
                metrics.record_view(&views.borrow_and_update());
            }
            _ = shutdown.wait() => return,
        }
    }
}

/// Registers a counter whose value `read` gives at scrape time.
fn counter(
    metrics: &Metrics,
    name: &'static str,
    help: &'static str,
    read: impl Fn() -> u64 + Send + Sync + 'static,
) {
    metrics.register_collector(Box::new(FnCollector(move |enc: &mut DescriptorEncoder| {
        let c = ConstCounter::new(read());
        c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
    })));
}
