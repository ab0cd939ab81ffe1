//! Signing, payloads, URL checks and delivery against a real receiver.
use super::*;
use crate::store::NewCall;
use crate::store::embedded::EmbeddedStore;

const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn record(state: CallState, outcome: Option<Outcome>) -> CallRecord {
    CallRecord {
        id: "fc-abc".to_owned(),
        app: "demo".to_owned(),
        function: "square".to_owned(),
        args: "[]".to_owned(),
        kwargs: "{}".to_owned(),
        owner: None,
        callback_url: Some("https://hooks.example.com/done".to_owned()),
        state,
        attempt: 1,
        created_ms: 1,
        started_ms: Some(2),
        finished_ms: Some(3),
        expires_ms: Some(i64::MAX),
        outcome,
        from_sync: false,
        forward: None,
        principal: None,
        parameters: None,
        origin: None,
        map_inputs: None,
    }
}

/// The payload of a function that exposes its errors.
fn payload_of(record: &CallRecord) -> Vec<u8> {
    payload(record, true)
}

fn text(body: Vec<u8>) -> String {
    String::from_utf8(body).unwrap()
}

fn webhooks(allow_hosts: &[&str], max_attempts: u32, store: Arc<dyn CallStore>) -> Webhooks {
    let settings = WebhookSettings {
        secret: decode_secret(VECTOR_SECRET).unwrap(),
        allow_hosts: allow_hosts.iter().map(|h| h.to_string()).collect(),
        max_attempts,
    };
    Webhooks::new(
        settings,
        crate::backend::http::HttpClients::new().client(),
        store,
        Arc::new(|_: &str, _: &str| true),
    )
}

fn checker(allow_hosts: &[&str]) -> (tempfile::TempDir, Webhooks) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("calls.db")).unwrap();
    (dir, webhooks(allow_hosts, 3, Arc::new(store)))
}

#[test]
fn signature_matches_the_standard_webhooks_test_vector() {
    let secret = decode_secret(VECTOR_SECRET).unwrap();
    assert_eq!(
        sign(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#
        ),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
}

#[test]
fn secrets_decode_with_or_without_prefix_and_bad_ones_are_rejected() {
    let with = decode_secret(VECTOR_SECRET).unwrap();
    let without = decode_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    assert_eq!(with, without);
    assert_eq!(with.len(), 24);
    assert_eq!(decode_secret("c2VjcmV0").unwrap(), b"secret");
    assert_eq!(decode_secret("whsec_c2VjcmV0MQ==").unwrap(), b"secret1");
    assert_eq!(decode_secret("whsec_c2VjcmV0MQ").unwrap(), b"secret1");
    assert!(decode_secret("whsec_not base64!").is_err());
    assert!(decode_secret("whsec_").is_err());
    assert!(decode_secret("").is_err());
}

#[test]
fn payload_splices_the_stored_result_exactly() {
    let body = payload_of(&record(
        CallState::Succeeded,
        Some(Outcome::Succeeded(
            br#"{"big": 1e400, "n": 12345678901234567890}"#.to_vec(),
        )),
    ));
    assert_eq!(
        text(body),
        r#"{"call_id":"fc-abc","status":"succeeded","result":{"big": 1e400, "n": 12345678901234567890}}"#
    );
    let garbage = payload_of(&record(
        CallState::Succeeded,
        Some(Outcome::Succeeded(b"{nope".to_vec())),
    ));
    assert_eq!(
        text(garbage),
        r#"{"call_id":"fc-abc","status":"succeeded","result":null}"#
    );
}

#[test]
fn a_function_that_withholds_its_errors_sends_only_their_type() {
    let failed = record(
        CallState::Failed,
        Some(Outcome::Failed {
            kind: FailureKind::Function,
            error_type: "ValueError".to_owned(),
            message: "Traceback: /srv/app/secret.py line 3".to_owned(),
        }),
    );
    let body: serde_json::Value = serde_json::from_slice(&payload(&failed, false)).unwrap();
    assert_eq!(body["error"]["type"], "ValueError");
    assert_eq!(
        body["error"]["message"],
        crate::http::problem::WITHHELD_MESSAGE
    );
    assert!(!text(payload(&failed, false)).contains("secret.py"));
}

#[test]
fn payload_describes_failures_timeouts_and_cancellations() {
    let failed = |kind| {
        text(payload_of(&record(
            CallState::Failed,
            Some(Outcome::Failed {
                kind,
                error_type: "ValueError".to_owned(),
                message: "x must be \"positive\"".to_owned(),
            }),
        )))
    };
    assert_eq!(
        failed(FailureKind::Function),
        r#"{"call_id":"fc-abc","status":"failed","error":{"code":"function_error","type":"ValueError","message":"x must be \"positive\""}}"#
    );
    assert_eq!(
        failed(FailureKind::Backend),
        r#"{"call_id":"fc-abc","status":"failed","error":{"code":"backend_error","type":"ValueError","message":"x must be \"positive\""}}"#
    );
    assert_eq!(
        text(payload_of(&record(
            CallState::TimedOut,
            Some(Outcome::TimedOut)
        ))),
        r#"{"call_id":"fc-abc","status":"timed_out","error":{"code":"function_timeout","type":"function_timeout","message":"the function ran past its timeout"}}"#
    );
    assert_eq!(
        text(payload_of(&record(CallState::Cancelled, None))),
        r#"{"call_id":"fc-abc","status":"cancelled","error":{"code":"call_cancelled","type":"cancelled","message":"the call was cancelled"}}"#
    );
    for state in [
        CallState::Succeeded,
        CallState::Failed,
        CallState::TimedOut,
        CallState::Cancelled,
    ] {
        let outcome = match state {
            CallState::Succeeded => Some(Outcome::Succeeded(b"1".to_vec())),
            CallState::TimedOut => Some(Outcome::TimedOut),
            _ => None,
        };
        let parsed: serde_json::Value =
            serde_json::from_slice(&payload_of(&record(state, outcome))).unwrap();
        assert_eq!(parsed["status"], state.as_str());
    }
}

#[test]
fn callback_urls_must_name_an_allowed_host() {
    let (_dir, hooks) = checker(&["Hooks.Example.com", "[::1]", "127.0.0.1"]);
    for good in [
        "https://hooks.example.com/done",
        "http://hooks.example.com:8080/done?x=1",
        "https://HOOKS.example.COM/done",
        "HTTPS://hooks.example.com/done",
        "http://[::1]:9000/hook",
        "http://127.0.0.1:1234/hook",
    ] {
        assert!(hooks.check_callback_url(good).is_ok(), "{good}");
    }
    assert_eq!(
        hooks
            .check_callback_url("https://hooks.example.com")
            .unwrap(),
        "https://hooks.example.com/"
    );
    for (bad, why) in [
        ("https://evil.example.com/done", "not in"),
        ("https://hooks.example.com.evil.net/", "not in"),
        ("http://localhost/hook", "not in"),
        ("http://[::2]/hook", "not in"),
        ("https://user:pw@hooks.example.com/done", "credentials"),
        ("https://user@hooks.example.com/done", "credentials"),
        ("ftp://hooks.example.com/done", "absolute http"),
        ("/done", "absolute http"),
        ("hooks.example.com/done", ""),
        ("https://hooks example.com/", "not a valid URL"),
        ("", "not a valid URL"),
    ] {
        let reason = hooks.check_callback_url(bad).unwrap_err();
        assert!(reason.contains(why), "{bad}: {reason}");
    }
}

#[test]
fn backoff_doubles_from_the_base_with_jitter_and_is_capped() {
    let base = Duration::from_secs(1);
    for _ in 0..100 {
        let first = backoff(base, 1);
        assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1200));
        let third = backoff(base, 3);
        assert!(third >= Duration::from_millis(3200) && third <= Duration::from_millis(4800));
        assert!(backoff(base, 40) <= MAX_BACKOFF);
        assert!(backoff(base, u32::MAX) >= MAX_BACKOFF.mul_f64(0.8));
    }
}

/// One request as the test receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    content_type: String,
    body: Vec<u8>,
}

/// A receiver on 127.0.0.1 answering the given statuses in turn (the
/// last one from then on).
async fn receiver(statuses: Vec<u16>) -> (u16, Arc<std::sync::Mutex<Vec<Received>>>) {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (log, statuses) = (log.clone(), statuses.clone());
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let (log, statuses) = (log.clone(), statuses.clone());
                async move {
                    let header = |name: &str| {
                        request
                            .headers()
                            .get(name)
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default()
                    };
                    let (id, timestamp, signature, content_type) = (
                        header("webhook-id"),
                        header("webhook-timestamp"),
                        header("webhook-signature"),
                        header("content-type"),
                    );
                    let body = request
                        .into_body()
                        .collect()
                        .await
                        .unwrap()
                        .to_bytes()
                        .to_vec();
                    let status = {
                        let mut log = log.lock().unwrap();
                        log.push(Received {
                            id,
                            timestamp,
                            signature,
                            content_type,
                            body,
                        });
                        statuses[(log.len() - 1).min(statuses.len() - 1)]
                    };
                    let mut response = http::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(b"ok"),
                    ));
                    *response.status_mut() = StatusCode::from_u16(status).unwrap();
                    if status == 302 {
                        response
                            .headers_mut()
                            .insert("location", "http://127.0.0.1:1/elsewhere".parse().unwrap());
                    }
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (port, seen)
}

/// Runs one finished call's webhook against a receiver answering
/// `statuses` until its delivery row is gone; returns what arrived.
async fn deliver_one(statuses: Vec<u16>, max_attempts: u32) -> Vec<Received> {
    let (port, seen) = receiver(statuses).await;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn CallStore> =
        Arc::new(EmbeddedStore::open(&dir.path().join("calls.db")).unwrap());
    let hooks = webhooks(&["127.0.0.1"], max_attempts, store.clone())
        .with_backoff_base(Duration::from_millis(20));
    let url = hooks
        .check_callback_url(&format!("http://127.0.0.1:{port}/hook"))
        .unwrap();
    let ended = Arc::new(Notify::new());
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(Arc::new(hooks).run(ended.clone(), shutdown.clone()));

    store
        .insert(NewCall {
            id: "fc-hook".to_owned(),
            app: "demo".to_owned(),
            function: "square".to_owned(),
            args: "[]".to_owned(),
            kwargs: "{}".to_owned(),
            forward: None,
            principal: None,
            parameters: None,
            origin: None,
            owner: None,
            idempotency: None,
            callback_url: Some(url),
            state: CallState::Pending,
            from_sync: false,
            created_ms: now_ms(),
        })
        .await
        .unwrap();
    store.claim_next("demo", "square").await.unwrap().unwrap();
    let far_future = now_ms() + 3_600_000;
    assert!(
        store
            .finish(
                "fc-hook".into(),
                Outcome::Succeeded(b"42".to_vec()),
                far_future
            )
            .await
            .unwrap()
    );
    ended.notify_one();

    let gone = async {
        loop {
            let (due, next) = store.due_deliveries(i64::MAX, 10).await.unwrap();
            if due.is_empty() && next.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), gone)
        .await
        .expect("the delivery row goes away");
    shutdown.cancel();
    runner.await.unwrap();
    seen.lock().unwrap().clone()
}

#[tokio::test]
async fn a_failed_delivery_is_retried_with_the_same_id_and_a_valid_signature() {
    let seen = deliver_one(vec![500, 200], 5).await;
    assert_eq!(seen.len(), 2);
    let secret = decode_secret(VECTOR_SECRET).unwrap();
    for request in &seen {
        assert_eq!(request.id, "fc-hook");
        assert_eq!(request.content_type, "application/json");
        assert_eq!(
            request.body,
            br#"{"call_id":"fc-hook","status":"succeeded","result":42}"#
        );
        let timestamp: i64 = request.timestamp.parse().unwrap();
        assert!((timestamp - now_ms() / 1000).abs() < 60);
        assert_eq!(
            request.signature,
            sign(&secret, &request.id, timestamp, &request.body)
        );
    }
}

#[tokio::test]
async fn server_errors_are_retried_until_max_attempts() {
    assert_eq!(deliver_one(vec![503], 3).await.len(), 3);
}

#[tokio::test]
async fn redirects_and_client_errors_are_not_retried() {
    assert_eq!(deliver_one(vec![302], 5).await.len(), 1);
    assert_eq!(deliver_one(vec![404], 5).await.len(), 1);
}
