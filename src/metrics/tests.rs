use std::time::Duration;

use super::*;

#[test]
fn a_function_rebuilt_keeps_its_series() {
    let first = global().function("unit-a", "f");
    first.record_request(200, Duration::from_millis(3));
    let again = global().function("unit-a", "f");
    assert!(Arc::ptr_eq(&first, &again));
    assert_eq!(again.requests_total(), 1);
    assert_eq!(again.statuses(), vec![(200, 1)]);
}

#[test]
fn latency_counts_each_request_in_its_bucket() {
    let f = FunctionMetrics::new("a", "f");
    f.record_request(200, Duration::from_micros(400));
    f.record_request(404, Duration::from_millis(20));
    f.record_request(500, Duration::from_secs(600));
    let snapshot = f.latency();
    assert_eq!(snapshot.count, 3);
    assert_eq!(snapshot.counts.len(), snapshot.bounds.len() + 1);
    assert_eq!(snapshot.counts[0], 1);
    let at_25ms = snapshot.bounds.iter().position(|&b| b == 0.025).unwrap();
    assert_eq!(snapshot.counts[at_25ms], 1);
    assert_eq!(*snapshot.counts.last().unwrap(), 1);
    assert!((snapshot.sum_seconds - 600.0204).abs() < 1e-9);
}

#[test]
fn quantile_is_linear_within_the_bucket() {
    let snapshot = HistogramSnapshot {
        bounds: vec![0.1, 0.2, 0.4],
        counts: vec![0, 4, 0, 0],
        count: 4,
        sum_seconds: 0.6,
    };
    let p50 = snapshot.quantile(0.5).unwrap();
    assert!((p50 - 0.15).abs() < 1e-9, "{p50}");
    let p100 = snapshot.quantile(1.0).unwrap();
    assert!((p100 - 0.2).abs() < 1e-9, "{p100}");
    let empty = HistogramSnapshot {
        counts: vec![0; 4],
        count: 0,
        sum_seconds: 0.0,
        ..snapshot.clone()
    };
    assert_eq!(empty.quantile(0.5), None);
    let overflow = HistogramSnapshot {
        counts: vec![0, 0, 0, 2],
        count: 2,
        ..snapshot
    };
    assert_eq!(overflow.quantile(0.99), Some(0.4));
}

#[test]
fn since_gives_what_happened_in_between() {
    let h = AtomicHistogram::new();
    h.observe(Duration::from_millis(1));
    let before = h.snapshot();
    h.observe(Duration::from_millis(7));
    let between = h.snapshot().since(&before);
    assert_eq!(between.count, 1);
    assert!((between.sum_seconds - 0.007).abs() < 1e-9);
}
