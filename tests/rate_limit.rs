//! Rate limits over real TLS: a token bucket per principal (per client IP
//! without credentials) answers 429 `rate_limited` with `Retry-After`
//! before any backend work, and refills with time. The clock is what is
//! under test here, so the refill is checked with a short real wait.

mod common;

use std::time::{Duration, Instant};

use common::{COUNT_PY, Gateway, HttpBackend, assert_problem, exec_fn, header_str, http_fn, runs};
use futures_util::future::join_all;

/// API keys `a` and `b`, both with scope `invoke:*`.
const KEY_A: &str = "fgk_rate_limit_key_a_0123456789abcdef";
const KEY_B: &str = "fgk_rate_limit_key_b_0123456789abcdef";

fn sha256_hex(data: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// `[rate_limit] requests_per_second = 2, burst = 3`; keys `a` and `b`;
/// `demo/count` (needs credentials) and `demo/open` (public), both
/// COUNT_PY; with a `backend`, also `demo/fast` (its `/invoke/square`).
async fn gateway(backend: Option<&HttpBackend>) -> Gateway {
    let mut auth = String::new();
    for (name, key) in [("a", KEY_A), ("b", KEY_B)] {
        auth.push_str(&format!(
            "[[auth.api_keys]]\nname = \"{name}\"\nsha256 = \"{}\"\nscopes = [\"invoke:*\"]\n",
            sha256_hex(key.as_bytes())
        ));
    }
    let fast = backend
        .map(|b| http_fn("demo", "fast", &[b.url("/invoke/square")], ""))
        .unwrap_or_default();
    Gateway::builder()
        .file("count.py", COUNT_PY)
        .toml(&fast)
        .toml("[rate_limit]\nrequests_per_second = 2\nburst = 3\n")
        .toml(&auth)
        .toml(&exec_fn("demo", "count", "count.py", ""))
        .toml(&exec_fn("demo", "open", "count.py", "public = true"))
        .start()
        .await
}

async fn post(
    gw: &Gateway,
    client: &reqwest::Client,
    path: &str,
    key: Option<&str>,
) -> reqwest::Response {
    let mut req = client
        .post(gw.url(path))
        .header("content-type", "application/json")
        .body(r#"{"x": 2}"#);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e:?}"))
}

/// Sends `n` requests at once; asserts each is 200 or a complete 429 with
/// `Retry-After: 1`, and returns how many were 200.
async fn burst(gw: &Gateway, path: &str, key: Option<&str>, n: usize) -> usize {
    let client = gw.client();
    let answers = join_all((0..n).map(|_| post(gw, &client, path, key))).await;
    let mut passed = 0;
    for resp in answers {
        match resp.status().as_u16() {
            200 => passed += 1,
            429 => assert_rate_limited(resp).await,
            other => panic!(
                "{path}: status {other}: {}",
                resp.text().await.unwrap_or_default()
            ),
        }
    }
    passed
}

async fn assert_rate_limited(resp: reqwest::Response) {
    let retry_after = header_str(&resp, "retry-after");
    assert_problem(resp, 429, "rate_limited").await;
    assert_eq!(
        retry_after.as_deref(),
        Some("1"),
        "Retry-After in whole seconds, at least 1"
    );
}

#[tokio::test]
async fn a_principal_past_its_burst_gets_429_and_others_do_not() {
    let gw = gateway(None).await;
    // All at once, so that no refill falls between them: six of a, one of
    // b, one without credentials.
    let (a, b, anonymous) = tokio::join!(
        burst(&gw, "/demo/count", Some(KEY_A), 6),
        burst(&gw, "/demo/count", Some(KEY_B), 1),
        burst(&gw, "/demo/open", None, 1),
    );
    assert_eq!(a, 3, "a: a burst of 3");
    assert_eq!(
        (b, anonymous),
        (1, 1),
        "b and the anonymous caller are not limited by a"
    );
    assert_eq!(runs(&gw), 5, "the 429s did no backend work");
}

#[tokio::test]
async fn the_bucket_refills_at_the_configured_rate() {
    // A fast backend, so that two requests fit between t0 + 0.7 s and 1 s.
    let backend = HttpBackend::start().await;
    let gw = gateway(Some(&backend)).await;
    let client = gw.client();
    let t0 = Instant::now();
    assert_eq!(burst(&gw, "/demo/fast", Some(KEY_A), 4).await, 3);
    // Two per second: at t0 + 0.7 s one more request is there; the next
    // one is not before t0 + 1 s.
    tokio::time::sleep_until((t0 + Duration::from_millis(700)).into()).await;
    let resp = post(&gw, &client, "/demo/fast", Some(KEY_A)).await;
    assert_eq!(resp.status(), 200, "a request passes after 0.7 s");
    let sent = Instant::now();
    let resp = post(&gw, &client, "/demo/fast", Some(KEY_A)).await;
    if sent < t0 + Duration::from_millis(950) {
        assert_rate_limited(resp).await;
    } else {
        eprintln!("slow machine: second request sent at {:?}", sent - t0);
    }
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        burst(&gw, "/demo/fast", Some(KEY_A), 3).await,
        3,
        "a full burst again after the bucket refilled"
    );
}

#[tokio::test]
async fn callers_without_credentials_are_limited_per_ip() {
    let gw = gateway(None).await;
    // Anonymous callers share the IP's bucket across connections (burst
    // makes one client per call); credentials are their own bucket.
    let (anonymous, other_connection, a) = tokio::join!(
        burst(&gw, "/demo/open", None, 4),
        burst(&gw, "/demo/open", None, 2),
        burst(&gw, "/demo/open", Some(KEY_A), 1),
    );
    assert_eq!(anonymous + other_connection, 3, "one anonymous burst of 3");
    assert_eq!(a, 1, "key a on the public function");
    assert_eq!(runs(&gw), 4, "the 429s did no backend work");
}

#[tokio::test]
async fn a_page_on_an_allowed_origin_can_read_the_429() {
    let origin = "https://app.example";
    let gw = Gateway::builder()
        .file("count.py", COUNT_PY)
        .toml("[rate_limit]\nrequests_per_second = 2\nburst = 1\n")
        .toml(&format!("[cors]\nallow_origins = [\"{origin}\"]\n"))
        .toml(&exec_fn("demo", "open", "count.py", "public = true"))
        .start()
        .await;
    let client = gw.client();
    let send = || {
        client
            .post(gw.url("/demo/open"))
            .header("origin", origin)
            .header("content-type", "application/json")
            .body("{}")
            .send()
    };
    let (first, second) = tokio::join!(send(), send());
    let limited = [first.expect("POST"), second.expect("POST")]
        .into_iter()
        .find(|r| r.status() == 429)
        .expect("one of two requests at once is over a burst of 1");
    assert_eq!(
        header_str(&limited, "access-control-allow-origin").as_deref(),
        Some(origin)
    );
    let exposed = header_str(&limited, "access-control-expose-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        exposed.split(',').any(|h| h.trim() == "retry-after"),
        "Retry-After is exposed: {exposed:?}"
    );
    assert_rate_limited(limited).await;
}

#[tokio::test]
async fn refused_credentials_cost_the_client_ip_its_rate_limit() {
    let gw = gateway(None).await;
    let client = gw.client();
    let mut statuses = Vec::new();
    for i in 0..6 {
        let wrong = format!("fgk_wrong_key_{i}");
        statuses.push(
            post(&gw, &client, "/demo/count", Some(&wrong))
                .await
                .status()
                .as_u16(),
        );
    }
    // The burst of 3 is spent on refusals (a 4th token may refill meanwhile);
    // the rest are rate limited.
    let refused = statuses.iter().filter(|s| **s == 401).count();
    assert!((3..=4).contains(&refused), "{statuses:?}");
    assert!(
        statuses.contains(&429),
        "guessing keys is never rate limited: {statuses:?}"
    );
    assert_eq!(runs(&gw), 0);
}
