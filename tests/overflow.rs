//! Sync overflow: a sync call still running after `sync_wait` answers
//! `303 See Other` to `/calls/{id}` and goes on as a spawned call, without
//! being restarted; curl -L and reqwest follow the redirect to the result.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Gateway, WORK_PY, assert_problem, eventually, exec_fn, process_alive};
use serde_json::{Value, json};

/// A gateway with `sync_wait = "1s"`, `store` lines for `[store]`, and app
/// `o` with function `work` (WORK_PY, timeout 10 s).
async fn gateway(store: &str) -> Gateway {
    Gateway::builder()
        .server("sync_wait = \"1s\"")
        .file("work.py", WORK_PY)
        .toml(&format!("[store]\n{store}\n"))
        .toml(&exec_fn("o", "work", "work.py", "timeout = \"10s\""))
        .start()
        .await
}

/// A client that shows redirects instead of following them.
fn no_redirects(gw: &Gateway) -> reqwest::Client {
    gw.client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("build client")
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Asserts a 303 to `/calls/{id}` (relative) with `X-Call-Id`; returns the id.
fn see_other(resp: &reqwest::Response) -> String {
    assert_eq!(resp.status(), 303, "303 See Other");
    let id = header(resp, "x-call-id").expect("X-Call-Id").to_owned();
    let hex = id.strip_prefix("fc-").expect("call id starts with fc-");
    assert!(
        hex.len() == 44 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "call id {id:?}: fc-, 12 hex digits of time, 32 of random bits"
    );
    assert_eq!(
        header(resp, "location"),
        Some(&*format!("/calls/{id}")),
        "relative Location"
    );
    id
}

/// How many times the function ran with `count` = `file`, once runs have
/// settled for a moment.
async fn runs(dir: &Path, file: &str) -> usize {
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .count()
}

async fn curl(gw: &Gateway, proto: &str, body: &Value) -> (String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("curl")
            .arg("-sS")
            .arg("-L")
            .arg(proto)
            .arg("--cacert")
            .arg(gw.ca_path())
            .arg("--resolve")
            .arg(format!("localhost:{}:127.0.0.1", gw.addr.port()))
            .args(["-H", "content-type: application/json", "-d"])
            .arg(body.to_string())
            .args(["-w", "\n%{http_code} %{num_redirects}"])
            .arg(gw.url("/o/work"))
            .output(),
    )
    .await
    .expect("curl finishes within 30 s")
    .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "curl failed: {stderr}\n{stdout}");
    let (body, tail) = stdout.rsplit_once('\n').expect("curl -w line");
    (body.to_owned(), tail.to_owned())
}

#[tokio::test]
async fn sync_call_within_sync_wait_answers_200() {
    let gw = gateway("").await;
    let resp = gw
        .post_json(&no_redirects(&gw), "/o/work", r#"{"x": 2, "seconds": 0.2}"#)
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"x": 2, "square": 4, "attempt": 1})
    );
}

#[tokio::test]
async fn slow_sync_call_answers_303_and_is_not_restarted() {
    let gw = gateway("").await;
    for (proto, client) in [("http/1.1", true), ("h2", false)] {
        let client = if client {
            gw.client_builder()
                .http1_only()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap()
        } else {
            gw.client_builder()
                .http2_prior_knowledge()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap()
        };
        let count = format!("runs-{}.log", proto.replace('/', ""));
        let started = Instant::now();
        let resp = gw
            .post_json(
                &client,
                "/o/work",
                &json!({"x": 6, "seconds": 2.5, "count": count}).to_string(),
            )
            .await;
        let took = started.elapsed();
        let id = see_other(&resp);
        assert!(
            took >= Duration::from_millis(950) && took < Duration::from_millis(2000),
            "{proto}: 303 after sync_wait (1 s), not after {took:?}"
        );
        let resp = client
            .get(gw.url(&format!("/calls/{id}?wait=10")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{proto}");
        assert_eq!(header(&resp, "x-call-id"), Some(&*id), "{proto}");
        assert_eq!(
            resp.json::<Value>().await.unwrap(),
            json!({"x": 6, "square": 36, "attempt": 1}),
            "{proto}"
        );
        assert_eq!(runs(&gw.dir, &count).await, 1, "{proto}: ran once");
    }
}

#[tokio::test]
async fn curl_dash_l_follows_303_to_the_result() {
    let gw = gateway("").await;
    for proto in ["--http2", "--http1.1"] {
        let count = format!("runs{proto}.log");
        let (body, tail) = curl(&gw, proto, &json!({"x": 9, "seconds": 2, "count": count})).await;
        assert_eq!(
            tail, "200 1",
            "{proto}: final status and redirects; body {body}"
        );
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"x": 9, "square": 81, "attempt": 1}),
            "{proto}"
        );
        assert_eq!(runs(&gw.dir, &count).await, 1, "{proto}: ran once");
    }
}

#[tokio::test]
async fn reqwest_follows_303_to_the_result() {
    let gw = gateway("").await;
    for (proto, client) in gw.clients() {
        let count = format!("runs-{}.log", proto.replace('/', ""));
        let resp = gw
            .post_json(
                &client,
                "/o/work",
                &json!({"x": 5, "seconds": 2, "count": count}).to_string(),
            )
            .await;
        assert_eq!(resp.status(), 200, "{proto}");
        assert!(
            resp.url().path().starts_with("/calls/fc-"),
            "{proto}: ended at {}",
            resp.url()
        );
        assert_eq!(
            resp.json::<Value>().await.unwrap(),
            json!({"x": 5, "square": 25, "attempt": 1}),
            "{proto}"
        );
        assert_eq!(runs(&gw.dir, &count).await, 1, "{proto}: ran once");
    }
}

#[tokio::test]
async fn redirect_target_sends_the_client_round_again_while_running() {
    // max_wait 1 s: GET /calls/{id} (no ?wait) long-polls 1 s, then 303s
    // to itself while the call still runs.
    let gw = gateway("max_wait = \"1s\"").await;
    let client = no_redirects(&gw);
    let resp = gw
        .post_json(
            &client,
            "/o/work",
            &json!({"x": 4, "seconds": 3.5, "count": "manual.log"}).to_string(),
        )
        .await;
    let id = see_other(&resp);
    let mut hops = 0;
    let resp = loop {
        let started = Instant::now();
        let resp = client
            .get(gw.url(&format!("/calls/{id}")))
            .send()
            .await
            .unwrap();
        if resp.status() != 303 {
            break resp;
        }
        assert_eq!(see_other(&resp), id, "303 to the same place");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(900),
            "the redirect target long-polled max_wait before 303 again ({waited:?})"
        );
        hops += 1;
        assert!(hops < 6, "call never finished");
    };
    assert!(hops >= 1, "at least one 303 from /calls/{id} while running");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"x": 4, "square": 16, "attempt": 1})
    );
    assert_eq!(runs(&gw.dir, "manual.log").await, 1, "ran once");

    // curl -L and reqwest go round as many times as needed.
    let (body, tail) = curl(
        &gw,
        "--http2",
        &json!({"x": 3, "seconds": 3.5, "count": "curl.log"}),
    )
    .await;
    let (status, redirects) = tail.split_once(' ').expect("status and redirects");
    assert_eq!(status, "200", "{body}");
    assert!(
        redirects.parse::<u32>().unwrap() >= 2,
        "curl followed {redirects} redirects"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"x": 3, "square": 9, "attempt": 1})
    );
    assert_eq!(runs(&gw.dir, "curl.log").await, 1, "ran once");

    let resp = gw
        .post_json(
            &gw.client(),
            "/o/work",
            &json!({"x": 2, "seconds": 3.5, "count": "reqwest.log"}).to_string(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["square"], 4);
    assert_eq!(runs(&gw.dir, "reqwest.log").await, 1, "ran once");
}

#[tokio::test]
async fn overflowed_call_that_fails_gives_the_sync_error() {
    let gw = gateway("").await;
    let args = json!({"seconds": 1.5, "fail": "too slow and wrong"}).to_string();
    let resp = gw.post_json(&no_redirects(&gw), "/o/work", &args).await;
    let id = see_other(&resp);
    let resp = gw
        .client()
        .get(gw.url(&format!("/calls/{id}?wait=10")))
        .send()
        .await
        .unwrap();
    let body = assert_problem(resp, 500, "function_error").await;
    assert_eq!(body["error"]["type"], "ValueError", "{body}");
    // A following client ends with the same problem.
    let resp = gw.post_json(&gw.client(), "/o/work", &args).await;
    assert!(resp.url().path().starts_with("/calls/"), "{}", resp.url());
    let followed = assert_problem(resp, 500, "function_error").await;
    assert_eq!(followed["error"], body["error"]);
}

#[tokio::test]
async fn overflowed_call_can_be_cancelled() {
    let gw = gateway("").await;
    let resp = gw
        .post_json(
            &no_redirects(&gw),
            "/o/work",
            &json!({"seconds": 30, "marker": "slow.m"}).to_string(),
        )
        .await;
    let id = see_other(&resp);
    let pid: i32 = std::fs::read_to_string(gw.dir.join("slow.m"))
        .expect("marker written before the 303")
        .trim()
        .parse()
        .unwrap();
    assert!(process_alive(pid));
    let client = gw.client();
    let resp = client
        .delete(gw.url(&format!("/calls/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        eventually(Duration::from_secs(3), || !process_alive(pid)).await,
        "process {pid} is gone after cancel"
    );
    let resp = client
        .get(gw.url(&format!("/calls/{id}")))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 410, "call_cancelled").await;
}
