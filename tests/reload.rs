//! Reloads: SIGHUP and changes of the config or certificate files re-read
//! both; a bad config is refused and the old one keeps serving; open
//! connections, calls in flight, long polls and the warm instances of
//! unchanged functions survive; a removed function's pending spawned calls
//! end failed; the next handshake sees a new certificate.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const RUNTIME: &str = r#"["python3", "lambda_runtime.py", "setup_counter.handler"]"#;

/// Writes `text` as the gateway's config the way deploy tools do: a new
/// file renamed over the old one.
fn rewrite_config(dir: &Path, text: &str) {
    let tmp = dir.join("gateway.toml.new");
    std::fs::write(&tmp, text).expect("write the new config");
    std::fs::rename(&tmp, dir.join("gateway.toml")).expect("rename it over the config");
}

fn hangup(gw: &Gateway) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gw.pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("send SIGHUP");
}

/// Polls `url` until it answers `status` (a reload is seen by requests).
async fn until_status(client: &reqwest::Client, url: &str, status: u16) -> bool {
    for _ in 0..200 {
        let got = client.post(url).json(&json!({"x": 3})).send().await;
        if got.is_ok_and(|r| r.status().as_u16() == status) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn config(backend: &HttpBackend, probe: usize, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{}{}{extra}",
        http_fn("demo", "square", &[backend.url("/invoke/square")], ""),
        http_fn(
            "demo",
            &format!("probe{probe}"),
            &[backend.url("/invoke/square")],
            "timeout = \"10s\""
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_calls_over_keep_alive_h1_and_h2_survive_20_reloads_and_a_refused_one() {
    let backend = HttpBackend::start().await;
    let gw = Gateway::builder()
        .raw_config(&config(&backend, 0, ""))
        .start()
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for (_, client) in gw.clients() {
        for _ in 0..4 {
            let (client, url) = (client.clone(), gw.url("/demo/square"));
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            load.push(tokio::spawn(async move {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let answer = client.post(&url).json(&json!({"x": 7})).send().await;
                    match answer {
                        Ok(r) if r.status() == 200 => {
                            let body = r.text().await.unwrap_or_default();
                            if body.trim() == "49" {
                                ok.fetch_add(1, Ordering::Relaxed);
                            } else {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.push(body);
                            }
                        }
                        Ok(r) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.push(format!("status {}", r.status()));
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.push(format!("{e:?}"));
                        }
                    }
                }
                errors
            }));
        }
    }
    let client = gw.client();
    for probe in 1..=20 {
        if probe == 10 {
            // A bad config in the middle is refused; the old one serves on.
            rewrite_config(
                &gw.dir,
                &config(
                    &backend,
                    probe,
                    "\n[apps.demo.functions.bad]\nbackend = \"exec\"\ntimeout = \"soon\"\n",
                ),
            );
            assert!(
                gw.logs
                    .wait_for("reload refused", Duration::from_secs(10))
                    .await,
                "no refusal logged:\n{}",
                gw.logs.joined()
            );
            assert!(
                gw.logs.joined().contains("apps.demo.functions.bad"),
                "the refusal names the key"
            );
            assert!(
                until_status(&client, &gw.url("/demo/probe9"), 200).await,
                "the old config serves on"
            );
        }
        rewrite_config(&gw.dir, &config(&backend, probe, ""));
        assert!(
            until_status(&client, &gw.url(&format!("/demo/probe{probe}")), 200).await,
            "reload {probe} not seen:\n{}",
            gw.logs.joined()
        );
        assert!(until_status(&client, &gw.url(&format!("/demo/probe{}", probe - 1)), 404).await);
    }
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for task in load {
        errors.extend(task.await.expect("a load task"));
    }
    assert!(
        errors.is_empty(),
        "failed requests during reloads: {errors:?}"
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "the load ran: {}",
        ok.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn sighup_reloads_and_a_bad_config_keeps_the_old_one_serving() {
    let backend = HttpBackend::start().await;
    let gw = Gateway::builder()
        .raw_config(&config(&backend, 0, ""))
        .start()
        .await;
    hangup(&gw);
    assert!(
        gw.logs
            .wait_for("configuration reloaded", Duration::from_secs(10))
            .await
    );
    assert!(gw.logs.joined().contains("SIGHUP"), "{}", gw.logs.joined());
    // A config that does not parse is refused with the start-up message.
    rewrite_config(&gw.dir, "[server\nlisten = ");
    assert!(
        gw.logs
            .wait_for("reload refused", Duration::from_secs(10))
            .await
    );
    let client = gw.client();
    let answer = gw.post_json(&client, "/demo/square", r#"{"x": 5}"#).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap().trim(), "25");
    // A change of a section read at start-up is reported, not applied.
    rewrite_config(
        &gw.dir,
        &config(
            &backend,
            0,
            "\n[rate_limit]\nrequests_per_second = 1\nburst = 1\n",
        ),
    );
    assert!(
        gw.logs
            .wait_for("next restart", Duration::from_secs(10))
            .await
    );
    assert!(gw.logs.joined().contains("[rate_limit]"));
}

#[tokio::test]
async fn warm_instances_of_unchanged_functions_survive_and_changed_ones_are_replaced() {
    let text = |changed_timeout: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{}{}",
            lambda_fn("kept", RUNTIME, "min_instances = 1"),
            lambda_fn(
                "changed",
                RUNTIME,
                &format!("min_instances = 1\ntimeout = \"{changed_timeout}\"")
            ),
        )
    };
    let gw = instances_builder().raw_config(&text("30s")).start().await;
    let client = gw.client();
    let pid = |value: Value| value["pid"].as_i64().expect("a pid");
    let kept = pid(json_ok(gw.post_json(&client, "/w/kept", "{}").await).await);
    let changed = pid(json_ok(gw.post_json(&client, "/w/changed", "{}").await).await);
    rewrite_config(&gw.dir, &text("20s"));
    assert!(
        gw.logs
            .wait_for("configuration reloaded", Duration::from_secs(10))
            .await
    );
    let kept_after = pid(json_ok(gw.post_json(&client, "/w/kept", "{}").await).await);
    let changed_after = pid(json_ok(gw.post_json(&client, "/w/changed", "{}").await).await);
    assert_eq!(
        kept, kept_after,
        "an unchanged function keeps its warm instance"
    );
    assert_ne!(
        changed, changed_after,
        "a changed function runs on a new instance"
    );
    assert_eq!(set_up_pids(&gw.dir, "kept.setup").len(), 1, "set up once");
    // The replaced version's instance stops once nothing uses it.
    assert!(
        eventually(Duration::from_secs(15), || !process_alive(changed as i32)).await,
        "the old version's instance was left running"
    );
}

#[tokio::test]
async fn calls_in_flight_and_long_polls_finish_and_a_removed_functions_pending_calls_fail() {
    let gw = instances_builder()
        .raw_config(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{}{}",
            lambda_fn("busy", RUNTIME, "concurrency = 1\nmax_instances = 1"),
            lambda_fn("other", RUNTIME, ""),
        ))
        .start()
        .await;
    let client = gw.client();
    let spawn = |body: Value| {
        let (client, url) = (client.clone(), gw.url("/w/busy/spawn"));
        async move {
            let r = client.post(url).json(&body).send().await.expect("spawn");
            assert_eq!(r.status(), 202);
            r.json::<Value>().await.unwrap()["call_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let running = spawn(json!({"sleep": 2})).await;
    let pending = [spawn(json!({})).await, spawn(json!({})).await];
    // A sync call in flight on another function, and a long poll.
    let sync = {
        let (client, url) = (client.clone(), gw.url("/w/other"));
        tokio::spawn(async move { client.post(url).json(&json!({"sleep": 1.5})).send().await })
    };
    let poll = {
        let (client, url) = (client.clone(), gw.url(&format!("/calls/{running}?wait=20")));
        tokio::spawn(async move { client.get(url).send().await })
    };
    // Wait until the first call runs, then take `busy` away.
    assert!(
        eventually(Duration::from_secs(15), || set_up_pids(
            &gw.dir,
            "busy.setup"
        )
        .len()
            == 1)
        .await
    );
    rewrite_config(
        &gw.dir,
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{}",
            lambda_fn("other", RUNTIME, "")
        ),
    );
    assert!(
        gw.logs
            .wait_for("configuration reloaded", Duration::from_secs(10))
            .await
    );
    let polled = poll.await.unwrap().expect("the long poll answers");
    assert_eq!(
        polled.status(),
        200,
        "the running call finished on its version"
    );
    let synced = sync.await.unwrap().expect("the sync call answers");
    assert_eq!(synced.status(), 200);
    for id in pending {
        let answer = client
            .get(gw.url(&format!("/calls/{id}?wait=10")))
            .send()
            .await
            .unwrap();
        let problem = assert_problem(answer, 502, "backend_error").await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("removed"),
            "{problem}"
        );
    }
    let gone = gw.post_json(&client, "/w/busy", "{}").await;
    assert_problem(gone, 404, "function_not_found").await;
}

/// A CA and two leaf certificates for localhost signed by it.
fn certificates() -> (String, [(String, String); 2]) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "reload test CA");
    let ca_pem = ca.clone().self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        (
            params.signed_by(&key, &issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    };
    (ca_pem, [leaf("first"), leaf("second")])
}

/// The DER of the certificate the gateway shows a new connection.
async fn served_certificate(gw: &Gateway, ca: &str) -> Vec<u8> {
    let client = client_builder_with_ca(ca.as_bytes())
        .resolve("localhost", gw.addr)
        .tls_info(true)
        .build()
        .unwrap();
    let answer = client
        .get(gw.url("/_/health"))
        .send()
        .await
        .expect("health");
    let info = answer
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("TLS info");
    info.peer_certificate()
        .expect("a server certificate")
        .to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn a_certificate_swap_is_seen_by_the_next_handshake() {
    let (ca, [first, second]) = certificates();
    let gw = Gateway::builder()
        .server("tls_cert = \"gateway.crt\"\ntls_key = \"gateway.key\"")
        .file("gateway.crt", first.0.clone())
        .file("gateway.key", first.1.clone())
        .start()
        .await;
    assert_eq!(served_certificate(&gw, &ca).await, der(&first.0));
    // A connection opened before the swap keeps working.
    let before = client_builder_with_ca(ca.as_bytes())
        .resolve("localhost", gw.addr)
        .build()
        .unwrap();
    assert_eq!(
        before
            .get(gw.url("/_/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The key first, then the certificate, each renamed into place.
    for (name, text) in [("gateway.key", &second.1), ("gateway.crt", &second.0)] {
        let tmp = gw.dir.join(format!("{name}.new"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, gw.dir.join(name)).unwrap();
    }
    assert!(
        eventually_async(|| async { served_certificate(&gw, &ca).await == der(&second.0) }).await,
        "the new certificate was not served:\n{}",
        gw.logs.joined()
    );
    assert_eq!(
        before
            .get(gw.url("/_/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// Polls `check` (every 50 ms, up to 10 s) until it holds.
async fn eventually_async<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn fngate_check_shows_what_a_reload_would_change() {
    let backend = HttpBackend::start().await;
    let admin = format!(
        "\n[admin]\nlisten = \"127.0.0.1:{}\"\ntoken_env = \"FNGATE_ADMIN_TOKEN\"\n",
        closed_port()
    );
    let token = [("FNGATE_ADMIN_TOKEN", "check-token-5c1e")];
    let gw = Gateway::builder()
        .raw_config(&config(&backend, 0, &admin))
        .env(token[0].0, token[0].1)
        .start()
        .await;
    assert!(gw.logs.wait_for("admin", Duration::from_secs(10)).await);
    let check = |file: &'static str| {
        let dir = gw.dir.clone();
        async move { run_bin_env(&["check", "--config", file], &dir, &token).await }
    };
    // The file it serves: nothing to change.
    let (status, out, err) = check("gateway.toml").await;
    assert_eq!(status, Some(0), "{out}{err}");
    assert!(out.contains("would change nothing"), "{out}{err}");
    // A candidate beside it (not the watched file): probe0 goes, probe1
    // comes, square changes, and [rate_limit] waits for a restart.
    let candidate =
        config(&backend, 1, &admin).replacen("urls = [", "timeout = \"7s\"\nurls = [", 1)
            + "\n[rate_limit]\nrequests_per_second = 5\nburst = 5\n";
    std::fs::write(gw.dir.join("candidate.toml"), candidate).unwrap();
    let (status, out, err) = check("candidate.toml").await;
    assert_eq!(status, Some(0), "{out}{err}");
    for line in [
        "add demo/probe1",
        "change demo/square",
        "remove demo/probe0",
        "restart to apply [rate_limit]",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}{err}");
    }
    // Nothing was applied by looking.
    let client = gw.client();
    assert!(until_status(&client, &gw.url("/demo/probe0"), 200).await);
}
