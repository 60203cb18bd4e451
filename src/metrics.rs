//! Metric names, help texts and families, in one place.
//!
//! Labels come only from bounded sets: app and slot names from the config, instance
//! addresses of current deployments, status classes, error kinds, swap results and
//! phase names; never a path or a host a client sent. Per-request handles
//! ([`SlotMetrics`], [`InstanceMetrics`]) are resolved when a routing table is built,
//! so the proxy updates counters it already holds and never looks a label up, formats
//! or allocates per request.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric slotd exports: (name, help).
pub mod names {
    pub const REQUESTS: (&str, &str) = (
        "slotd_requests_total",
        "Requests answered, by app, slot and status class (1xx..5xx; `none` when no response was sent).",
    );
    pub const REQUEST_DURATION: (&str, &str) = (
        "slotd_request_duration_seconds",
        "Time from a request's head being read to the end of its response, by app and slot.",
    );
    pub const UPSTREAM_ERRORS: (&str, &str) = (
        "slotd_upstream_errors_total",
        "Upstream failures by app, slot and kind: connect (refused, unreachable or timed out, retried or not), timeout (no answer in time), reset (connection closed or broken), bad_response (not valid HTTP).",
    );
    pub const ACTIVE_REQUESTS: (&str, &str) = (
        "slotd_active_requests",
        "Requests being served now, by app and slot (the slot that took them when they started).",
    );
    pub const RECEIVED_BYTES: (&str, &str) = (
        "slotd_received_bytes_total",
        "Request body bytes read from clients, by app and slot.",
    );
    pub const SENT_BYTES: (&str, &str) = (
        "slotd_sent_bytes_total",
        "Response body bytes sent to clients, by app and slot.",
    );
    pub const INSTANCE_REQUESTS: (&str, &str) = (
        "slotd_instance_requests_total",
        "Requests sent to an upstream instance, by app, slot and instance address.",
    );
    pub const INSTANCE_FAILURES: (&str, &str) = (
        "slotd_instance_failures_total",
        "Requests an upstream instance failed (any upstream error kind), by app, slot and instance address.",
    );
    pub const INSTANCE_HEALTHY: (&str, &str) = (
        "slotd_instance_healthy",
        "1 when an instance takes traffic, 0 when it is marked unhealthy, by app, slot and instance address.",
    );
    pub const REJECTED: (&str, &str) = (
        "slotd_rejected_requests_total",
        "Requests the proxy refused before routing or streaming them, by status: 400 (malformed framing), 408 (body too slow), 413 (body too large), 414 (target too long), 431 (head too large).",
    );
    pub const CONFIG_RELOADS: (&str, &str) = (
        "slotd_config_reloads_total",
        "Config reloads (SIGHUP, POST /v1/reload), by result: ok, or failed (the file had errors or did not fit the state; the running config kept serving).",
    );
    pub const GENERATION_REQUESTS: (&str, &str) = (
        "slotd_generation_requests",
        "Requests and upgraded connections in flight, by the routing generation they started on (the current one, and older ones until they finish).",
    );
    pub const DRAINING: (&str, &str) = (
        "slotd_draining_connections",
        "Upgraded connections (WebSocket, ...) whose pool a swap moved out of their slot, open until the app's drain_timeout, by app.",
    );
    pub const HEALTH_CHECKS: (&str, &str) = (
        "slotd_health_checks_total",
        "Active health checks sent to instances, by app and result (pass, fail).",
    );
    pub const EJECTIONS: (&str, &str) = (
        "slotd_instance_ejections_total",
        "Times an instance was taken out of rotation, by app and reason (passive: consecutive failed requests; check: failed active checks).",
    );
    pub const SWAPS: (&str, &str) = (
        "slotd_swaps_total",
        "Swaps that finished, by app and result (completed, failed, cancelled).",
    );
    pub const SWAP_PHASE_DURATION: (&str, &str) = (
        "slotd_swap_phase_duration_seconds",
        "Duration of swap phases (validate, apply-settings, warm-up, switch, settle, cancel), by app and phase.",
    );
    pub const WARMUP_REQUESTS: (&str, &str) = (
        "slotd_warmup_requests_total",
        "Warm-up requests sent to instances, by app.",
    );
    pub const WARMUP_FAILURES: (&str, &str) = (
        "slotd_warmup_failures_total",
        "Warm-up requests that failed (refused, timed out or answered a status not accepted), by app.",
    );
    pub const ROUTING_GENERATION: (&str, &str) = (
        "slotd_routing_generation",
        "Generation of the routing table being served; it grows with every published change.",
    );
    pub const DEPLOYMENT_INFO: (&str, &str) = (
        "slotd_deployment_info",
        "1 for the deployment version each slot holds.",
    );
    pub const STATE_WRITE_DURATION: (&str, &str) = (
        "slotd_state_store_write_duration_seconds",
        "Duration of durable state writes.",
    );
    pub const STATE_WRITE_ERRORS: (&str, &str) = (
        "slotd_state_store_write_errors_total",
        "State writes that failed (the change they carried was refused).",
    );
    pub const BUILD_INFO: (&str, &str) =
        ("slotd_build_info", "1, labelled with the version of slotd.");
}

/// Status classes in label order; index 0 is "no response was sent".
const CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// Kinds of upstream failure, in label order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    Connect = 0,
    Timeout = 1,
    Reset = 2,
    BadResponse = 3,
}

const ERROR_KINDS: [&str; 4] = ["connect", "timeout", "reset", "bad_response"];

/// Request latency buckets, in seconds: sub-millisecond proxying to slow uploads.
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Swap phase buckets, in seconds: a switch takes microseconds, a warm-up minutes.
const PHASE_BUCKETS: &[f64] = &[
    0.0001, 0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
];
/// State write buckets, in seconds (a file write with two fsyncs, or an etcd round trip).
const WRITE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The metric families of one process.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_errors: IntCounterVec,
    active: IntGaugeVec,
    received: IntCounterVec,
    sent: IntCounterVec,
    instance_requests: IntCounterVec,
    instance_failures: IntCounterVec,
    instance_healthy: IntGaugeVec,
    swaps: IntCounterVec,
    phase_duration: HistogramVec,
    warmup_requests: IntCounterVec,
    warmup_failures: IntCounterVec,
    health_checks: IntCounterVec,
    ejections: IntCounterVec,
    rejected: IntCounterVec,
    reloads: IntCounterVec,
    generation_requests: IntGaugeVec,
    draining: IntGaugeVec,
    generation: IntGauge,
    deployment_info: IntGaugeVec,
    write_duration: Histogram,
    write_errors: IntCounter,
    /// (app, slot, instance) series currently exported, so the ones of instances no
    /// table serves any more can be dropped.
    instance_series: Mutex<HashSet<[String; 3]>>,
}

/// Per-request handles of one slot, resolved at table-build time.
#[derive(Clone)]
pub struct SlotMetrics {
    by_class: [IntCounter; 6],
    duration: Histogram,
    errors: [IntCounter; 4],
    pub active: IntGauge,
    received: IntCounter,
    sent: IntCounter,
}

impl SlotMetrics {
    /// Counts one finished request: its status (0: no response sent), how long it
    /// took and the body bytes it moved.
    #[inline]
    pub fn observe(&self, status: u16, elapsed: Duration, received: usize, sent: usize) {
        let class = match status {
            100..=599 => (status / 100) as usize,
            _ => 0,
        };
        self.by_class[class].inc();
        self.duration.observe(elapsed.as_secs_f64());
        if received > 0 {
            self.received.inc_by(received as u64);
        }
        if sent > 0 {
            self.sent.inc_by(sent as u64);
        }
    }

    #[inline]
    pub fn upstream_error(&self, kind: UpstreamError) {
        self.errors[kind as usize].inc();
    }
}

/// The statuses `slotd_rejected_requests_total` counts.
const REJECT_STATUSES: [u16; 5] = [400, 408, 413, 414, 431];

/// Per-status handles of `slotd_rejected_requests_total`.
#[derive(Clone)]
pub struct Rejections([IntCounter; 5]);

impl Rejections {
    /// Counts a refused request; other statuses are ignored.
    pub fn count(&self, status: u16) {
        if let Some(i) = REJECT_STATUSES.iter().position(|&s| s == status) {
            self.0[i].inc();
        }
    }
}

/// Per-request handles of one instance in one slot, resolved at table-build time.
#[derive(Clone)]
pub struct InstanceMetrics {
    pub requests: IntCounter,
    pub failures: IntCounter,
}

fn counter_vec(def: (&str, &str), labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(def.0, def.1), labels).expect("static metric definition")
}

fn gauge_vec(def: (&str, &str), labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(def.0, def.1), labels).expect("static metric definition")
}

fn histogram_vec(def: (&str, &str), buckets: &[f64], labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(def.0, def.1).buckets(buckets.to_vec()),
        labels,
    )
    .expect("static metric definition")
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        use names::*;
        let slot = &["app", "slot"];
        let instance = &["app", "slot", "instance"];
        let write_duration = Histogram::with_opts(
            HistogramOpts::new(STATE_WRITE_DURATION.0, STATE_WRITE_DURATION.1)
                .buckets(WRITE_BUCKETS.to_vec()),
        )
        .expect("static metric definition");
        let write_errors = IntCounter::new(STATE_WRITE_ERRORS.0, STATE_WRITE_ERRORS.1)
            .expect("static metric definition");
        let generation = IntGauge::new(ROUTING_GENERATION.0, ROUTING_GENERATION.1)
            .expect("static metric definition");
        let build = gauge_vec(BUILD_INFO, &["version"]);
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let m = Metrics {
            registry: Registry::new(),
            requests: counter_vec(REQUESTS, &["app", "slot", "class"]),
            duration: histogram_vec(REQUEST_DURATION, REQUEST_BUCKETS, slot),
            upstream_errors: counter_vec(UPSTREAM_ERRORS, &["app", "slot", "kind"]),
            active: gauge_vec(ACTIVE_REQUESTS, slot),
            received: counter_vec(RECEIVED_BYTES, slot),
            sent: counter_vec(SENT_BYTES, slot),
            instance_requests: counter_vec(INSTANCE_REQUESTS, instance),
            instance_failures: counter_vec(INSTANCE_FAILURES, instance),
            instance_healthy: gauge_vec(INSTANCE_HEALTHY, instance),
            swaps: counter_vec(SWAPS, &["app", "result"]),
            phase_duration: histogram_vec(SWAP_PHASE_DURATION, PHASE_BUCKETS, &["app", "phase"]),
            warmup_requests: counter_vec(WARMUP_REQUESTS, &["app"]),
            warmup_failures: counter_vec(WARMUP_FAILURES, &["app"]),
            health_checks: counter_vec(HEALTH_CHECKS, &["app", "result"]),
            rejected: counter_vec(REJECTED, &["status"]),
            reloads: counter_vec(CONFIG_RELOADS, &["result"]),
            generation_requests: gauge_vec(GENERATION_REQUESTS, &["generation"]),
            draining: gauge_vec(DRAINING, &["app"]),
            ejections: counter_vec(EJECTIONS, &["app", "reason"]),
            generation,
            deployment_info: gauge_vec(DEPLOYMENT_INFO, &["app", "slot", "version"]),
            write_duration,
            write_errors,
            instance_series: Mutex::new(HashSet::new()),
        };
        // Exported from the start, so a dashboard sees 0 rather than no series.
        for result in ["ok", "failed"] {
            m.reloads.with_label_values(&[result]);
        }
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(m.requests.clone()),
            Box::new(m.duration.clone()),
            Box::new(m.upstream_errors.clone()),
            Box::new(m.active.clone()),
            Box::new(m.received.clone()),
            Box::new(m.sent.clone()),
            Box::new(m.instance_requests.clone()),
            Box::new(m.instance_failures.clone()),
            Box::new(m.instance_healthy.clone()),
            Box::new(m.swaps.clone()),
            Box::new(m.phase_duration.clone()),
            Box::new(m.warmup_requests.clone()),
            Box::new(m.warmup_failures.clone()),
            Box::new(m.health_checks.clone()),
            Box::new(m.rejected.clone()),
            Box::new(m.reloads.clone()),
            Box::new(m.generation_requests.clone()),
            Box::new(m.draining.clone()),
            Box::new(m.ejections.clone()),
            Box::new(m.generation.clone()),
            Box::new(m.deployment_info.clone()),
            Box::new(m.write_duration.clone()),
            Box::new(m.write_errors.clone()),
            Box::new(build),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }

    /// The per-request handles of one slot (control plane only: it looks labels up).
    /// Every series is created here, so a slot shows zeros before its first request.
    pub fn slot(&self, app: &str, slot: &str) -> SlotMetrics {
        let labels = [app, slot];
        SlotMetrics {
            by_class: CLASSES.map(|class| self.requests.with_label_values(&[app, slot, class])),
            duration: self.duration.with_label_values(&labels),
            errors: ERROR_KINDS.map(|k| self.upstream_errors.with_label_values(&[app, slot, k])),
            active: self.active.with_label_values(&labels),
            received: self.received.with_label_values(&labels),
            sent: self.sent.with_label_values(&labels),
        }
    }

    /// The per-request handles of one instance of the deployment in `slot`.
    pub fn instance(&self, app: &str, slot: &str, instance: &str) -> InstanceMetrics {
        let labels = [app, slot, instance];
        InstanceMetrics {
            requests: self.instance_requests.with_label_values(&labels),
            failures: self.instance_failures.with_label_values(&labels),
        }
    }

    /// Sets the health gauges of the instances the served table holds, and drops the
    /// series of instances it no longer holds. `instances`: (app, slot, address, healthy).
    pub fn set_instances<'a>(
        &self,
        instances: impl Iterator<Item = (&'a str, &'a str, &'a str, bool)>,
    ) {
        let mut now = HashSet::new();
        for (app, slot, address, healthy) in instances {
            self.instance_healthy
                .with_label_values(&[app, slot, address])
                .set(healthy as i64);
            now.insert([app.to_string(), slot.to_string(), address.to_string()]);
        }
        let mut series = self
            .instance_series
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for gone in series.difference(&now) {
            let labels = [gone[0].as_str(), gone[1].as_str(), gone[2].as_str()];
            let _ = self.instance_healthy.remove_label_values(&labels);
            let _ = self.instance_requests.remove_label_values(&labels);
            let _ = self.instance_failures.remove_label_values(&labels);
        }
        *series = now;
    }

    pub fn swap_finished(&self, app: &str, result: &str) {
        self.swaps.with_label_values(&[app, result]).inc();
    }

    pub fn swap_phase(&self, app: &str, phase: &str, elapsed: Duration) {
        self.phase_duration
            .with_label_values(&[app, phase])
            .observe(elapsed.as_secs_f64());
    }

    pub fn warmup(&self, app: &str, requests: u64, failures: u64) {
        self.warmup_requests
            .with_label_values(&[app])
            .inc_by(requests);
        self.warmup_failures
            .with_label_values(&[app])
            .inc_by(failures);
    }

    /// One active health check of an instance of `app`.
    pub fn health_check(&self, app: &str, pass: bool) {
        let result = if pass { "pass" } else { "fail" };
        self.health_checks.with_label_values(&[app, result]).inc();
    }

    /// In-flight counts of the live tables `(generation, in flight)`: the current
    /// generation always, older ones while they serve anything.
    pub fn set_generation_requests(&self, live: &[(u64, i64)], current: u64) {
        self.generation_requests.reset();
        for &(generation, n) in live {
            if n > 0 || generation == current {
                self.generation_requests
                    .with_label_values(&[&generation.to_string()])
                    .set(n);
            }
        }
    }

    /// Draining upgraded connections per app.
    pub fn set_draining<'a>(&self, apps: impl Iterator<Item = (&'a str, usize)>) {
        self.draining.reset();
        for (app, n) in apps {
            self.draining.with_label_values(&[app]).set(n as i64);
        }
    }

    /// One config reload, applied or refused.
    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.with_label_values(&[result]).inc();
    }

    /// Handles of `slotd_rejected_requests_total`, one per status it counts.
    pub fn rejections(&self) -> Rejections {
        Rejections(REJECT_STATUSES.map(|s| self.rejected.with_label_values(&[&s.to_string()])))
    }

    /// The counter of instances of `app` taken out of rotation for `reason`
    /// (`passive` or `check`).
    pub fn ejections(&self, app: &str, reason: &str) -> IntCounter {
        self.ejections.with_label_values(&[app, reason])
    }

    pub fn state_write(&self, elapsed: Duration, ok: bool) {
        self.write_duration.observe(elapsed.as_secs_f64());
        if !ok {
            self.write_errors.inc();
        }
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

    fn has(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }

    #[test]
    fn slot_handles_count_by_class_duration_and_bytes() {
        let m = Metrics::new();
        let s = m.slot("shop", "production");
        s.observe(200, Duration::from_micros(300), 10, 100);
        s.observe(204, Duration::from_millis(2), 0, 0);
        s.observe(503, Duration::from_secs(2), 0, 5);
        s.observe(0, Duration::ZERO, 0, 0);
        s.upstream_error(UpstreamError::Reset);
        let text = m.render();
        has(
            &text,
            r#"slotd_requests_total{app="shop",class="2xx",slot="production"} 2"#,
        );
        has(
            &text,
            r#"slotd_requests_total{app="shop",class="5xx",slot="production"} 1"#,
        );
        has(
            &text,
            r#"slotd_requests_total{app="shop",class="none",slot="production"} 1"#,
        );
        has(
            &text,
            r#"slotd_requests_total{app="shop",class="3xx",slot="production"} 0"#,
        );
        has(
            &text,
            r#"slotd_request_duration_seconds_bucket{app="shop",slot="production",le="0.0005"} 2"#,
        );
        has(
            &text,
            r#"slotd_request_duration_seconds_bucket{app="shop",slot="production",le="0.0025"} 3"#,
        );
        has(
            &text,
            r#"slotd_request_duration_seconds_count{app="shop",slot="production"} 4"#,
        );
        has(
            &text,
            r#"slotd_received_bytes_total{app="shop",slot="production"} 10"#,
        );
        has(
            &text,
            r#"slotd_sent_bytes_total{app="shop",slot="production"} 105"#,
        );
        has(
            &text,
            r#"slotd_upstream_errors_total{app="shop",kind="reset",slot="production"} 1"#,
        );
        has(
            &text,
            r#"slotd_upstream_errors_total{app="shop",kind="connect",slot="production"} 0"#,
        );
    }

    #[test]
    fn instance_series_of_departed_instances_are_dropped() {
        let m = Metrics::new();
        m.instance("shop", "production", "127.0.0.1:1")
            .requests
            .inc();
        m.set_instances([("shop", "production", "127.0.0.1:1", true)].into_iter());
        let text = m.render();
        has(
            &text,
            r#"slotd_instance_healthy{app="shop",instance="127.0.0.1:1",slot="production"} 1"#,
        );
        has(
            &text,
            r#"slotd_instance_requests_total{app="shop",instance="127.0.0.1:1",slot="production"} 1"#,
        );
        m.set_instances([("shop", "production", "127.0.0.1:2", false)].into_iter());
        let text = m.render();
        assert!(!text.contains("127.0.0.1:1"), "{text}");
        has(
            &text,
            r#"slotd_instance_healthy{app="shop",instance="127.0.0.1:2",slot="production"} 0"#,
        );
    }
}
