//! The scrape: every series as the Prometheus text format (0.0.4),
//! written by prometheus-client's encoder from a `Collector` that reads
//! the atomics (and what the caller gathered: queue depths, calls by
//! state) at that moment.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::{FunctionMetrics, HistogramSnapshot, Metrics, TLS_FAILURES, WEBHOOK_OUTCOMES};

/// The `Content-Type` of `/_/metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What the scrape reads from the gateway besides the counters: the
/// deployed functions' queues and the store's calls by state.
#[derive(Debug, Default)]
pub struct Scrape {
    pub functions: Vec<FunctionGauges>,
    /// Spawned calls in the store, by state (every state, zeros too).
    pub calls: Vec<(&'static str, u64)>,
}

/// A deployed function's gauges now.
#[derive(Debug)]
pub struct FunctionGauges {
    pub metrics: Arc<FunctionMetrics>,
    /// Sync callers waiting for a slot.
    pub waiting: u64,
    /// Calls holding a slot (sync and spawned).
    pub running: u64,
}

/// Every series, in the text format.
pub fn encode(scrape: Scrape) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition(scrape)));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("writing into a String does not fail");
    text
}

#[derive(Debug)]
struct Exposition(Scrape);

/// A histogram snapshot as prometheus-client encodes one.
struct Histogram<'a>(&'a HistogramSnapshot);

impl EncodeMetric for Histogram<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = (self.0.bounds.iter().copied())
            .zip(self.0.counts.iter().copied())
            .collect();
        encoder.encode_histogram::<NoLabelSet>(self.0.sum_seconds, self.0.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn counter(encoder: MetricEncoder, value: u64) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder)
}

fn gauge(encoder: MetricEncoder, value: u64) -> Result<(), std::fmt::Error> {
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(encoder)
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let metrics = super::global();
        let functions = metrics.all_functions();
        requests(&mut encoder, &functions)?;
        backend_errors(&mut encoder, &functions)?;
        self.gauges(&mut encoder)?;
        instances(&mut encoder, metrics)?;
        gateway(&mut encoder, metrics)
    }
}

fn requests(
    encoder: &mut DescriptorEncoder,
    functions: &[Arc<FunctionMetrics>],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "fngate_requests",
        "Requests answered, by app, function and status code.",
        None,
        MetricType::Counter,
    )?;
    for f in functions {
        for (status, n) in f.statuses() {
            let status = status.to_string();
            let labels = [
                ("app", &*f.app),
                ("function", &*f.function),
                ("status", &status),
            ];
            counter(family.encode_family(&labels)?, n)?;
        }
    }
    let mut family = encoder.encode_descriptor(
        "fngate_request_duration_seconds",
        "Time from a request's head to its response's head, by app and function.",
        None,
        MetricType::Histogram,
    )?;
    for f in functions.iter().filter(|f| f.requests_total() > 0) {
        let labels = [("app", &*f.app), ("function", &*f.function)];
        Histogram(&f.latency()).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn backend_errors(
    encoder: &mut DescriptorEncoder,
    functions: &[Arc<FunctionMetrics>],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "fngate_backend_errors",
        "Calls (sync and spawned) that failed in their backend, by app, function and kind.",
        None,
        MetricType::Counter,
    )?;
    for f in functions {
        for (kind, n) in f.backend_errors() {
            let labels = [("app", &*f.app), ("function", &*f.function), ("kind", kind)];
            counter(family.encode_family(&labels)?, n)?;
        }
    }
    Ok(())
}

impl Exposition {
    fn gauges(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "fngate_queue_depth",
            "Sync callers waiting for one of a function's concurrency slots.",
            None,
            MetricType::Gauge,
        )?;
        for f in &self.0.functions {
            let labels = [("app", &*f.metrics.app), ("function", &*f.metrics.function)];
            gauge(family.encode_family(&labels)?, f.waiting)?;
        }
        let mut family = encoder.encode_descriptor(
            "fngate_running_calls",
            "Calls holding one of a function's concurrency slots.",
            None,
            MetricType::Gauge,
        )?;
        for f in &self.0.functions {
            let labels = [("app", &*f.metrics.app), ("function", &*f.metrics.function)];
            gauge(family.encode_family(&labels)?, f.running)?;
        }
        let mut family = encoder.encode_descriptor(
            "fngate_calls",
            "Spawned calls in the call store, by state.",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in &self.0.calls {
            gauge(family.encode_family(&[("state", *state)])?, *n)?;
        }
        Ok(())
    }
}

fn instances(encoder: &mut DescriptorEncoder, metrics: &Metrics) -> Result<(), std::fmt::Error> {
    let pools = metrics.all_pools();
    let mut family = encoder.encode_descriptor(
        "fngate_instances",
        "Warm instances by state (starting, idle, busy), per function (a class's under the class's name).",
        None,
        MetricType::Gauge,
    )?;
    for pool in &pools {
        let states = pool.instance_states();
        for (state, n) in [
            ("starting", states.starting),
            ("idle", states.idle),
            ("busy", states.busy),
        ] {
            let labels = [
                ("app", &*pool.app),
                ("function", &*pool.function),
                ("state", state),
            ];
            gauge(family.encode_family(&labels)?, n)?;
        }
    }
    let mut family = encoder.encode_descriptor(
        "fngate_cold_starts",
        "Instances started (a cold start each), per function.",
        None,
        MetricType::Counter,
    )?;
    for pool in &pools {
        let labels = [("app", &*pool.app), ("function", &*pool.function)];
        counter(family.encode_family(&labels)?, pool.cold_starts())?;
    }
    let mut family = encoder.encode_descriptor(
        "fngate_cold_start_duration_seconds",
        "Time from an instance's start until it takes calls.",
        None,
        MetricType::Histogram,
    )?;
    for pool in &pools {
        let labels = [("app", &*pool.app), ("function", &*pool.function)];
        Histogram(&pool.cold_start_seconds()).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gateway(encoder: &mut DescriptorEncoder, metrics: &Metrics) -> Result<(), std::fmt::Error> {
    use std::sync::atomic::Ordering::Relaxed;
    let family = encoder.encode_descriptor(
        "fngate_tls_handshakes",
        "TLS handshakes completed.",
        None,
        MetricType::Counter,
    )?;
    counter(family, metrics.tls_handshakes.load(Relaxed))?;
    let mut family = encoder.encode_descriptor(
        "fngate_tls_handshake_failures",
        "TLS handshakes that failed, by reason (timeout, error).",
        None,
        MetricType::Counter,
    )?;
    for (reason, n) in TLS_FAILURES.iter().zip(&metrics.tls_failures) {
        counter(
            family.encode_family(&[("reason", *reason)])?,
            n.load(Relaxed),
        )?;
    }
    let mut family = encoder.encode_descriptor(
        "fngate_webhook_deliveries",
        "Webhook delivery attempts, by outcome (delivered, failed and retried later, gave_up).",
        None,
        MetricType::Counter,
    )?;
    for (outcome, n) in WEBHOOK_OUTCOMES.iter().zip(&metrics.webhook_deliveries) {
        counter(
            family.encode_family(&[("outcome", *outcome)])?,
            n.load(Relaxed),
        )?;
    }
    let family = encoder.encode_descriptor(
        "fngate_store_commit_duration_seconds",
        "Time the embedded call store takes to commit a write.",
        None,
        MetricType::Histogram,
    )?;
    Histogram(&metrics.store_commits.snapshot()).encode(family)?;
    let family = encoder.encode_descriptor(
        "fngate_access_log_dropped",
        "Access-log lines dropped because the writer fell behind.",
        None,
        MetricType::Counter,
    )?;
    counter(family, metrics.access_log_dropped.load(Relaxed))
}
