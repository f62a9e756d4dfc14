//! Prometheus metrics, served at `/metrics` in the text format: hosts by state, heartbeats,
//! placements and their latency, and every plugin call's latency and failures, per plugin.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use slipway_runtime::placement::Decision;

use crate::inventory::Inventory;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    plugin: String,
    call: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabel {
    plugin: String,
}

pub struct Metrics {
    registry: Registry,
    hosts: Family<StateLabel, Gauge>,
    heartbeats: Family<ResultLabel, Counter>,
    placements: Family<ResultLabel, Counter>,
    placement_seconds: Histogram,
    plugin_seconds: Family<CallLabels, Histogram>,
    plugin_failures: Family<PluginLabel, Counter>,
    claims_expired: Counter,
}

/// 10 µs to ~10 s, doubling: a plugin call is tens of microseconds, a decision under a
/// millisecond, a slow one seconds.
fn buckets() -> Histogram {
    Histogram::new(exponential_buckets(1e-5, 2.0, 21))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("slipway");
        let hosts = Family::<StateLabel, Gauge>::default();
        registry.register("hosts", "Hosts in the inventory, by state", hosts.clone());
        let heartbeats = Family::<ResultLabel, Counter>::default();
        registry.register(
            "heartbeats",
            "Agent heartbeats received, by result (accepted, unknown_credential, replayed, invalid)",
            heartbeats.clone(),
        );
        let placements = Family::<ResultLabel, Counter>::default();
        registry.register(
            "placements",
            "Placement decisions, by result (placed, no_host, error)",
            placements.clone(),
        );
        let placement_seconds = buckets();
        registry.register(
            "placement_duration_seconds",
            "Time from a placement request to its decision and claim",
            placement_seconds.clone(),
        );
        let plugin_seconds =
            Family::<CallLabels, Histogram>::new_with_constructor(buckets as fn() -> Histogram);
        registry.register(
            "plugin_call_duration_seconds",
            "Plugin calls of placement decisions, by plugin and export",
            plugin_seconds.clone(),
        );
        let plugin_failures = Family::<PluginLabel, Counter>::default();
        registry.register(
            "plugin_failures",
            "Decisions a plugin failed (trap, deadline, memory limit, invalid answer), by plugin",
            plugin_failures.clone(),
        );
        let claims_expired = Counter::default();
        registry.register(
            "claims_expired",
            "Pending claims released because they were never confirmed",
            claims_expired.clone(),
        );
        Self {
            registry,
            hosts,
            heartbeats,
            placements,
            placement_seconds,
            plugin_seconds,
            plugin_failures,
            claims_expired,
        }
    }

    pub fn heartbeat(&self, result: &str) {
        self.heartbeats
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn placement(&self, result: &str, elapsed: Duration) {
        self.placements
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
        self.placement_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn plugin_calls(&self, d: &Decision) {
        for t in &d.timings {
            self.plugin_seconds
                .get_or_create(&CallLabels {
                    plugin: d.step_name(t.step).to_owned(),
                    call: t.call.as_str().to_owned(),
                })
                .observe(t.elapsed.as_secs_f64());
        }
    }

    pub fn plugin_failed(&self, plugin: &str) {
        self.plugin_failures
            .get_or_create(&PluginLabel {
                plugin: plugin.to_owned(),
            })
            .inc();
    }

    pub fn claims_expired(&self, n: usize) {
        self.claims_expired.inc_by(n as u64);
    }

    /// The text exposition, with the host gauges read from the inventory now.
    pub fn render(&self, inventory: &Arc<Inventory>) -> String {
        for (state, n) in inventory.counts() {
            self.hosts
                .get_or_create(&StateLabel {
                    state: state.as_str().to_owned(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
