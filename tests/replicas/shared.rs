//! What replicas share besides calls: each call's completion webhook is
//! delivered once whichever replicas see it end, and a deploy made
//! through one replica's admin API is served (and taken away) by all.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use crate::cluster::{Cluster, NAMES, accepted, eventually_async};
use crate::common::HttpBackend;
use crate::receiver::Receiver;
use crate::support::{ADMIN_TOML, Admin, TOKEN, TOKEN_ENV};

const CALLS: usize = 20;

/// `[webhooks]` allowing 127.0.0.1, the secret in `FNGATE_WEBHOOK_SECRET`.
const WEBHOOKS_TOML: &str = "[webhooks]\nsecret_env = \"FNGATE_WEBHOOK_SECRET\"\n\
                             allow_hosts = [\"127.0.0.1\"]\nmax_attempts = 3\n";

#[tokio::test]
async fn each_call_has_one_webhook_delivery_with_three_replicas() {
    let receiver = Receiver::start().await;
    let secret = format!("whsec_{}", BASE64.encode(rand::random::<[u8; 24]>()));
    let cluster = Cluster::start(3, "2s", |_, b| {
        b.toml(WEBHOOKS_TOML).env("FNGATE_WEBHOOK_SECRET", &secret)
    })
    .await;
    let callback = receiver.url();
    let spawns = (0..CALLS).map(|x| {
        let cluster = &cluster;
        let headers = [("callback-url", callback.as_str())];
        async move {
            let i = x % 3;
            let resp = cluster
                .post(i, "/r/work/spawn", &json!({"x": x}), &headers)
                .await;
            accepted(resp, NAMES[i]).await
        }
    });
    let ids: Vec<String> = futures_util::future::join_all(spawns).await;

    assert!(
        receiver.wait_for(CALLS, Duration::from_secs(30)).await,
        "{CALLS} deliveries within 30 s (got {})",
        receiver.deliveries().len()
    );
    // The one bounded wait: nothing more comes in the next second.
    assert!(
        !receiver.wait_for(CALLS + 1, Duration::from_secs(1)).await,
        "more than one delivery for some call"
    );
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), CALLS);
    let mut by_call: HashMap<String, Value> = HashMap::new();
    let mut webhook_ids = HashSet::new();
    for delivery in &deliveries {
        assert!(
            delivery.signed_with(&secret),
            "signed with the shared secret: {delivery:?}"
        );
        webhook_ids.insert(delivery.header("webhook-id").to_owned());
        let body = delivery.json();
        let id = body["call_id"].as_str().expect("a call_id").to_owned();
        assert!(
            by_call.insert(id.clone(), body).is_none(),
            "call {id} delivered twice"
        );
    }
    assert_eq!(webhook_ids.len(), CALLS, "one webhook-id per call");
    for (x, id) in ids.iter().enumerate() {
        let body = by_call
            .get(id)
            .unwrap_or_else(|| panic!("call {id} was delivered"));
        assert_eq!(body["status"], "succeeded", "{body}");
        assert_eq!(body["result"]["x"], x, "{body}");
    }
}

/// The table of an http function on `backend` whose answers name
/// `version` (the test backend echoes the path it was called on), so
/// seeing which version serves costs no process start.
fn version_table(backend: &HttpBackend, version: &str) -> Value {
    json!({"backend": "http", "urls": [backend.url(&format!("/version/{version}"))]})
}

/// What `/demo/ver` answers on replica `i`: the version of
/// [`version_table`] serving it, or the problem code.
async fn served_on(cluster: &Cluster, i: usize) -> String {
    let resp = cluster.post(i, "/demo/ver", &json!({}), &[]).await;
    let status = resp.status();
    let body: Value = resp.json().await.expect("a JSON answer");
    match body["path"]
        .as_str()
        .and_then(|p| p.strip_prefix("/version/"))
    {
        Some(version) if status == 200 => version.to_owned(),
        _ => body["code"].as_str().unwrap_or("?").to_owned(),
    }
}

/// Waits until every replica answers `/demo/ver` with `want`, 5 s at most
/// from now; how long each took.
async fn served_everywhere(cluster: &Cluster, want: &str) -> Vec<Duration> {
    let since = Instant::now();
    let waits = (0..cluster.replicas.len()).map(|i| async move {
        let served = eventually_async(Duration::from_secs(5), move || async move {
            served_on(cluster, i).await == want
        })
        .await;
        let took = since.elapsed();
        assert!(
            served,
            "{} answers {want} within 5 s, not {}",
            NAMES[i],
            served_on(cluster, i).await
        );
        took
    });
    futures_util::future::join_all(waits).await
}

#[tokio::test]
async fn a_deploy_on_one_replica_is_served_by_the_others() {
    let backend = HttpBackend::start().await;
    let cluster = Cluster::start(3, "2s", |i, b| match i {
        0 => b.toml(ADMIN_TOML).env(TOKEN_ENV, TOKEN),
        _ => b,
    })
    .await;
    let admin = Admin::of(&cluster.replicas[0]).await;
    for (i, name) in NAMES.iter().enumerate() {
        assert_eq!(served_on(&cluster, i).await, "app_not_found", "{name}");
    }

    admin
        .deploy("demo", "ver", &version_table(&backend, "1"))
        .await;
    let took = served_everywhere(&cluster, "1").await;
    println!("a deploy on A was served by A, B and C after {took:?}");
    admin
        .deploy("demo", "ver", &version_table(&backend, "2"))
        .await;
    let took = served_everywhere(&cluster, "2").await;
    println!("a redeploy on A was served by A, B and C after {took:?}");

    let (status, deleted) = admin
        .send("DELETE", "/admin/apps/demo/functions/ver", None)
        .await;
    assert_eq!(status, 200, "{deleted}");
    let took = served_everywhere(&cluster, "app_not_found").await;
    println!("a delete on A was gone from A, B and C after {took:?}");
}
