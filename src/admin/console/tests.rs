use super::*;
use crate::http::page::sha256_source;
use crate::metrics::AtomicHistogram;

fn key(name: &str) -> SeriesKey {
    (Arc::from("demo"), Arc::from(name))
}

fn one(histogram: &AtomicHistogram) -> HashMap<SeriesKey, HistogramSnapshot> {
    HashMap::from([(key("square"), histogram.snapshot())])
}

#[tokio::test(start_paused = true)]
async fn recent_latency_forgets_requests_older_than_the_window() {
    let start = Instant::now();
    let window = LatencyWindow::new(start);
    let histogram = AtomicHistogram::new();
    // Slow requests at the start, sampled every 10 s from then on.
    for _ in 0..10 {
        histogram.observe(Duration::from_secs(2));
    }
    let (covered, recent) = window.recent(Instant::now(), one(&histogram));
    assert_eq!(covered, Duration::ZERO);
    assert_eq!(recent[&key("square")].count, 10);
    for _ in 0..30 {
        tokio::time::advance(SAMPLE_EVERY).await;
        histogram.observe(Duration::from_millis(3));
        window.recent(Instant::now(), one(&histogram));
    }
    // 300 s on: the window still starts before the slow ones.
    let (covered, recent) = window.recent(Instant::now(), one(&histogram));
    assert_eq!(covered, LATENCY_WINDOW);
    assert_eq!(recent[&key("square")].count, 40);
    // Past it, only the fast ones are left.
    tokio::time::advance(SAMPLE_EVERY).await;
    let (covered, recent) = window.recent(Instant::now(), one(&histogram));
    assert_eq!(covered, LATENCY_WINDOW);
    // Only the fast ones since the oldest kept snapshot (at 10 s).
    let recent = &recent[&key("square")];
    assert_eq!(recent.count, 29);
    let p99 = Latency::of(recent).p99_ms.expect("requests in the window");
    assert!(p99 <= 5.0, "p99 of 3 ms requests: {p99}");
}

#[tokio::test(start_paused = true)]
async fn a_window_unread_for_long_covers_what_it_kept() {
    let window = LatencyWindow::new(Instant::now());
    let histogram = AtomicHistogram::new();
    histogram.observe(Duration::from_millis(1));
    tokio::time::advance(Duration::from_secs(3600)).await;
    let (covered, recent) = window.recent(Instant::now(), one(&histogram));
    assert_eq!(covered, Duration::from_secs(3600));
    assert_eq!(recent[&key("square")].count, 1);
    // Read again soon: the hour-old zeros are still the only old sample.
    tokio::time::advance(Duration::from_secs(2)).await;
    let (covered, _) = window.recent(Instant::now(), one(&histogram));
    assert_eq!(covered, Duration::from_secs(3602));
}

#[test]
fn no_request_has_no_quantiles() {
    let latency = Latency::of(&AtomicHistogram::new().snapshot());
    assert_eq!(
        latency,
        Latency {
            p50_ms: None,
            p99_ms: None,
            requests: 0
        }
    );
}

#[tokio::test]
async fn the_page_is_served_to_get_alone() {
    use tower::ServiceExt;
    let request = |method: &str, uri: &str| {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap()
    };
    let page = page_router()
        .oneshot(request("GET", "/admin/"))
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()[header::CACHE_CONTROL], "no-store");
    assert!(page.headers().contains_key(header::CONTENT_SECURITY_POLICY));
    let moved = page_router()
        .oneshot(request("GET", "/admin"))
        .await
        .unwrap();
    assert_eq!(moved.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(moved.headers()[header::LOCATION], "/admin/");
    let refused = page_router()
        .oneshot(request("POST", "/admin/"))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(refused.headers()[header::ALLOW], "GET, HEAD");
    assert_eq!(
        refused.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
}

#[test]
fn the_page_runs_only_its_own_inline_script_and_style() {
    let page = page_once();
    assert!(
        page.policy
            .contains(&format!("script-src '{}'", sha256_source(SCRIPT)))
    );
    assert!(
        page.policy
            .contains(&format!("style-src '{}'", sha256_source(STYLE)))
    );
    assert!(page.policy.contains("default-src 'none'"));
    assert!(!page.policy.contains("unsafe-inline"));
    assert!(page.html.contains(&format!("<script>{SCRIPT}</script>")));
    assert!(page.html.contains(&format!("<style>{STYLE}</style>")));
    assert!(!page.html.contains("{script}") && !page.html.contains("{style}"));
}
