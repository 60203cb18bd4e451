//! Metric names, help texts and families, in one place.
//!
//! Labels come only from bounded sets: app and slot names from the config, status
//! classes, swap results. Per-request handles ([`SlotMetrics`]) are resolved when a
//! routing table is built, so the proxy increments a counter it already holds and
//! never looks a label up per request.

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub const REQUESTS_TOTAL: &str = "slotd_requests_total";
const REQUESTS_HELP: &str = "Requests answered, by app, slot and status class (1xx..5xx; `none` when no response was sent).";
pub const SWAPS_TOTAL: &str = "slotd_swaps_total";
const SWAPS_HELP: &str = "Swaps that finished, by app and result (completed, failed, cancelled).";
pub const ROUTING_GENERATION: &str = "slotd_routing_generation";
const ROUTING_GENERATION_HELP: &str =
    "Generation of the routing table being served; it grows with every published change.";
pub const DEPLOYMENT_INFO: &str = "slotd_deployment_info";
const DEPLOYMENT_INFO_HELP: &str = "1 for the deployment version each slot holds.";
pub const BUILD_INFO: &str = "slotd_build_info";
const BUILD_INFO_HELP: &str = "1, labelled with the version of slotd.";

/// Status classes in label order; index 0 is "no response was sent".
const CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// The metric families of one process.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    swaps: IntCounterVec,
    generation: IntGauge,
    deployment_info: IntGaugeVec,
}

/// Request counters of one slot, resolved at table-build time.
#[derive(Clone)]
pub struct SlotMetrics {
    by_class: [IntCounter; 6],
}

impl SlotMetrics {
    /// Counts one request that ended with `status` (0: no response sent).
    #[inline]
    pub fn observe(&self, status: u16) {
        let class = match status {
            100..=599 => (status / 100) as usize,
            _ => 0,
        };
        self.by_class[class].inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(REQUESTS_TOTAL, REQUESTS_HELP),
            &["app", "slot", "class"],
        )
        .expect("static metric definition is valid");
        let swaps = IntCounterVec::new(Opts::new(SWAPS_TOTAL, SWAPS_HELP), &["app", "result"])
            .expect("static metric definition is valid");
        let generation = IntGauge::new(ROUTING_GENERATION, ROUTING_GENERATION_HELP)
            .expect("static metric definition is valid");
        let deployment_info = IntGaugeVec::new(
            Opts::new(DEPLOYMENT_INFO, DEPLOYMENT_INFO_HELP),
            &["app", "slot", "version"],
        )
        .expect("static metric definition is valid");
        let build = IntGaugeVec::new(Opts::new(BUILD_INFO, BUILD_INFO_HELP), &["version"])
            .expect("static metric definition is valid");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(swaps.clone()),
            Box::new(generation.clone()),
            Box::new(deployment_info.clone()),
            Box::new(build),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            swaps,
            generation,
            deployment_info,
        }
    }

    /// The request counters of one slot (control plane only: it looks labels up).
    pub fn slot(&self, app: &str, slot: &str) -> SlotMetrics {
        SlotMetrics {
            by_class: CLASSES.map(|class| self.requests.with_label_values(&[app, slot, class])),
        }
    }

    pub fn swap_finished(&self, app: &str, result: &str) {
        self.swaps.with_label_values(&[app, result]).inc();
    }

    pub fn set_generation(&self, generation: u64) {
        self.generation.set(generation as i64);
    }

    /// Replaces the deployment info series with what the slots hold now.
    pub fn set_deployments<'a>(&self, slots: impl Iterator<Item = (&'a str, &'a str, &'a str)>) {
        self.deployment_info.reset();
        for (app, slot, version) in slots {
            self.deployment_info
                .with_label_values(&[app, slot, version])
                .set(1);
        }
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_counters_count_by_class() {
        let m = Metrics::new();
        let s = m.slot("shop", "production");
        s.observe(200);
        s.observe(204);
        s.observe(503);
        s.observe(0);
        let text = m.render();
        assert!(
            text.contains(r#"slotd_requests_total{app="shop",class="2xx",slot="production"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"slotd_requests_total{app="shop",class="5xx",slot="production"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"slotd_requests_total{app="shop",class="none",slot="production"} 1"#),
            "{text}"
        );
    }
}
