//! Functions that call functions, end to end: real gateways over real TLS,
//! Python functions (tests/nested/, examples/cube.py) that call back with
//! the standard library, their `FNGATE_URL` and `FNGATE_CALL_TOKEN`, on
//! every backend; `may_call`, the parent's deadline and trace, the depth
//! limit, `parent_call_id`, forged and expired tokens, the logs, and
//! `[auth]` on and off.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    Gateway, GatewayBuilder, WORK_PY, assert_problem, exec_fn, header_str, json_ok, repo_file,
};
use serde_json::{Value, json};

/// A gateway with the fixtures of tests/nested/ and the quick start's
/// square.py and cube.py in its folder.
fn nested_builder() -> GatewayBuilder {
    Gateway::builder()
        .file(
            "gateway_client.py",
            repo_file("tests/nested/gateway_client.py"),
        )
        .file("caller.py", repo_file("tests/nested/caller.py"))
        .file("carried.py", repo_file("tests/nested/carried.py"))
        .file("square.py", repo_file("examples/square.py"))
        .file("cube.py", repo_file("examples/cube.py"))
        .file("work.py", WORK_PY)
        .toml(&exec_fn("demo", "square", "square.py", "public = true"))
}

/// The trace id of a `traceparent`.
fn trace_id(traceparent: &Value) -> &str {
    let text = traceparent.as_str().expect("a traceparent");
    &text[3..35]
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

#[tokio::test]
async fn cube_calls_square_through_the_gateway_with_its_token() {
    let gw = nested_builder()
        .toml(&exec_fn(
            "demo",
            "cube",
            "cube.py",
            "may_call = [\"demo/square\"]\npublic = true",
        ))
        .start()
        .await;
    let client = gw.client();
    let answer = gw.post_json(&client, "/demo/cube", r#"{"x": 3}"#).await;
    assert_eq!(json_ok(answer).await, json!(27));
    let answer = gw.post_json(&client, "/demo/cube", "[-4]").await;
    assert_eq!(json_ok(answer).await, json!(-64));
    // cube's own errors stay cube's: a bad x never reaches square.
    let answer = gw.post_json(&client, "/demo/cube", r#"{"x": "a"}"#).await;
    let problem = assert_problem(answer, 500, "function_error").await;
    assert_eq!(problem["error"]["type"], "TypeError");
}

#[tokio::test]
async fn every_exec_call_gets_the_gateway_url_its_dev_ca_and_a_token() {
    let gw = nested_builder()
        .toml(&exec_fn("demo", "carried", "carried.py", "public = true"))
        .start()
        .await;
    let answer = gw.post_json(&gw.client(), "/demo/carried", "{}").await;
    let carried = json_ok(answer).await;
    assert_eq!(
        carried["url"],
        format!("https://127.0.0.1:{}", gw.addr.port()),
        "the first listen address, with the bound port"
    );
    let ca = std::fs::canonicalize(gw.ca_path()).unwrap();
    assert_eq!(carried["ca_file"], ca.display().to_string());
    assert_eq!(carried["has_token"], true);
}

#[tokio::test]
async fn a_function_may_call_only_what_its_may_call_lists() {
    let gw = nested_builder()
        .toml(&exec_fn("demo", "nomay", "caller.py", "public = true"))
        .toml(&exec_fn(
            "demo",
            "other",
            "caller.py",
            "public = true\nmay_call = [\"demo/carried\"]",
        ))
        .toml(&exec_fn("demo", "carried", "carried.py", "public = true"))
        .start()
        .await;
    let client = gw.client();
    for (function, target) in [("nomay", "/demo/square"), ("other", "/demo/square")] {
        let body = json!({"call": target, "body": {"x": 2}}).to_string();
        let answer = gw
            .post_json(&client, &format!("/demo/{function}"), &body)
            .await;
        let out = json_ok(answer).await;
        assert_eq!(out["status"], 403, "{function} -> {target}: {out}");
        assert_eq!(out["body"]["code"], "forbidden");
        let detail = out["body"]["detail"].as_str().unwrap();
        assert!(detail.contains(&format!("demo/{function}")), "{detail}");
        assert!(detail.contains("demo/square"), "{detail}");
    }
    // What the list names goes through.
    let body = json!({"call": "/demo/carried", "body": {"x": 2}}).to_string();
    let out = json_ok(gw.post_json(&client, "/demo/other", &body).await).await;
    assert_eq!(
        (out["status"].as_u64(), &out["body"]["x"]),
        (Some(200), &json!(2))
    );
}

#[tokio::test]
async fn a_nested_call_keeps_the_parents_deadline_and_continues_its_trace() {
    let gw = nested_builder()
        .toml(&exec_fn(
            "demo",
            "parent",
            "caller.py",
            "public = true\ntimeout = \"20s\"\nmay_call = [\"demo/carried\"]",
        ))
        .toml(&exec_fn(
            "demo",
            "carried",
            "carried.py",
            "public = true\ntimeout = \"300s\"",
        ))
        .start()
        .await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let answer = gw
        .client()
        .post(gw.url("/demo/parent"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&json!({"call": "/demo/carried", "body": {}}))
        .send()
        .await
        .unwrap();
    let parent_id = header_str(&answer, "x-call-id").expect("the parent's call id");
    let out = json_ok(answer).await;
    assert_eq!(out["status"], 200, "{out}");
    let child = &out["body"];
    // The child's own timeout (300 s) is longer: it gets the parent's.
    assert_eq!(child["deadline_ms"], out["deadline_ms"]);
    assert_eq!(trace_id(&out["traceparent"]), trace);
    assert_eq!(trace_id(&child["traceparent"]), trace);
    assert_ne!(
        child["traceparent"], out["traceparent"],
        "a span of its own"
    );
    assert_ne!(child["call_id"].as_str(), Some(parent_id.as_str()));
}

#[tokio::test]
async fn a_child_ends_at_its_parents_deadline_and_the_token_then_expires() {
    let gw = nested_builder()
        .env("RUST_LOG", "debug")
        .toml(&exec_fn(
            "demo",
            "leaker",
            "caller.py",
            "public = true\ntimeout = \"3s\"\nmay_call = [\"demo/sleepy\"]",
        ))
        .toml(&exec_fn(
            "demo",
            "sleepy",
            "work.py",
            "public = true\ntimeout = \"60s\"",
        ))
        .start()
        .await;
    let client = gw.client();
    let answer = gw
        .post_json(&client, "/demo/leaker", r#"{"leak": "token"}"#)
        .await;
    let deadline_ms = json_ok(answer).await["deadline_ms"].as_u64().unwrap();
    let token = std::fs::read_to_string(gw.dir.join("token")).unwrap();
    assert!(token.starts_with("fgc_"), "{token}");
    let call = |token: String| {
        client
            .post(gw.url("/demo/sleepy"))
            .bearer_auth(token)
            .json(&json!({"seconds": 30}))
            .send()
    };
    // A forged token (its signature altered) is refused at once.
    let mut forged = token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let problem = assert_problem(call(forged).await.unwrap(), 401, "unauthorized").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("not one this gateway issued")
    );
    // The child would sleep 30 s within its own 60 s: the parent's
    // deadline, under 3 s away, ends it.
    let started = Instant::now();
    let left = Duration::from_millis(deadline_ms.saturating_sub(now_ms()));
    let answer = call(token.clone()).await.unwrap();
    let took = started.elapsed();
    assert_problem(answer, 504, "function_timeout").await;
    assert!(
        took < left + Duration::from_secs(2),
        "the child ran {took:?}, the parent's deadline was {left:?} away"
    );
    // Past the deadline the token is no credential at all.
    tokio::time::sleep(Duration::from_millis(
        deadline_ms.saturating_sub(now_ms()) + 50,
    ))
    .await;
    let problem = assert_problem(call(token.clone()).await.unwrap(), 401, "unauthorized").await;
    assert!(problem["detail"].as_str().unwrap().contains("expired"));
    // Nothing of the token reached the gateway's log, even at debug level.
    let (payload, signature) = token.rsplit_once('.').unwrap();
    let logs = gw.logs.joined();
    assert!(logs.contains("request"), "the access log is on");
    assert!(!logs.contains(payload), "the token's claims are in the log");
    assert!(
        !logs.contains(signature),
        "the token's signature is in the log"
    );
}

/// The depth is seen through the function's own argument: the client's
/// call runs with `recurse = 0` (depth 0), each call passes `n + 1` to the
/// one it makes, so `n` is the depth of the run that makes it. The `runs`
/// file counts the runs.
#[tokio::test]
async fn a_function_that_calls_itself_ends_at_depth_8_with_508() {
    let gw = nested_builder()
        .toml(&exec_fn(
            "demo",
            "recurse",
            "caller.py",
            "public = true\ntimeout = \"60s\"\nmay_call = [\"demo/recurse\"]",
        ))
        .start()
        .await;
    let answer = gw
        .post_json(&gw.client(), "/demo/recurse", r#"{"recurse": 0}"#)
        .await;
    let out = json_ok(answer).await;
    assert_eq!(out, json!({"n": 8, "status": 508, "code": "loop_detected"}));
    let runs = std::fs::read_to_string(gw.dir.join("runs")).unwrap();
    let depths: Vec<&str> = runs.lines().collect();
    assert_eq!(depths, ["0", "1", "2", "3", "4", "5", "6", "7", "8"]);
}

#[tokio::test]
async fn spawned_children_show_their_parent_call_id() {
    let gw = nested_builder()
        .toml(&exec_fn(
            "demo",
            "spawner",
            "caller.py",
            "public = true\nmay_call = [\"demo/square\", \"demo/sleepy\"]",
        ))
        .toml(&exec_fn("demo", "sleepy", "work.py", "public = true"))
        .start()
        .await;
    let client = gw.client();
    // While the child runs, its progress names its parent.
    let body = json!({"call": "/demo/sleepy/spawn", "body": {"seconds": 2}}).to_string();
    let answer = gw.post_json(&client, "/demo/spawner", &body).await;
    let parent_id = header_str(&answer, "x-call-id").expect("the parent's call id");
    let out = json_ok(answer).await;
    let child = out["body"]["call_id"].as_str().unwrap().to_owned();
    let answer = client
        .get(gw.url(&format!("/calls/{child}")))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let progress = answer.json::<Value>().await.unwrap();
    assert_eq!(progress["parent_call_id"], parent_id, "{progress}");
    let body = json!({"call": "/demo/square/spawn", "body": {"x": 4}}).to_string();
    let answer = gw.post_json(&client, "/demo/spawner", &body).await;
    let parent_id = header_str(&answer, "x-call-id").expect("the parent's call id");
    let out = json_ok(answer).await;
    assert_eq!(out["status"], 202, "{out}");
    let child = out["body"]["call_id"].as_str().unwrap().to_owned();
    let answer = client
        .get(gw.url(&format!("/calls/{child}?wait=20")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header_str(&answer, "x-parent-call-id").as_deref(),
        Some(parent_id.as_str())
    );
    assert_eq!(json_ok(answer).await, json!(16));
    // A client's own spawn has no parent.
    let answer = gw
        .post_json(&client, "/demo/square/spawn", r#"{"x": 5}"#)
        .await;
    assert_eq!(answer.status(), 202);
    let own = answer.json::<Value>().await.unwrap()["call_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let answer = client
        .get(gw.url(&format!("/calls/{own}?wait=20")))
        .send()
        .await
        .unwrap();
    assert_eq!(header_str(&answer, "x-parent-call-id"), None);
}

const SECRET_ENV: &str = "FNGATE_TEST_JWT_SECRET";
const SECRET: &str = "fngate-test-secret-0123456789-abcdefghij";

fn jwt(sub: &str, scope: &str) -> String {
    let claims = json!({
        "sub": sub, "iss": "https://issuer.test", "aud": "fngate",
        "exp": now_ms() / 1000 + 600, "scope": scope,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn with_auth_on_the_child_acts_as_the_original_caller() {
    let gw = nested_builder()
        .env(SECRET_ENV, SECRET)
        .toml(&format!(
            "[auth]\njwt_secret_env = \"{SECRET_ENV}\"\nissuer = \"https://issuer.test\"\naudience = \"fngate\"\n"
        ))
        .toml(&exec_fn(
            "demo",
            "parent",
            "caller.py",
            "may_call = [\"demo/carried\"]",
        ))
        .toml(&exec_fn("demo", "carried", "carried.py", ""))
        .start()
        .await;
    let client = gw.client();
    let call = |token: String, body: Value| {
        client
            .post(gw.url("/demo/parent"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let sync = json!({"call": "/demo/carried", "body": {}});
    let out = json_ok(
        call(jwt("alice", "invoke:demo/*"), sync.clone())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["body"]["subject"], "alice");
    // Acting as alice, the token has no more than alice: a caller who may
    // call only the parent cannot reach the child through it.
    let out = json_ok(call(jwt("bob", "invoke:demo/parent"), sync).await.unwrap()).await;
    assert_eq!(
        (out["status"].as_u64(), &out["body"]["code"]),
        (Some(403), &json!("forbidden"))
    );
    // A spawned child is alice's call: hers to read, nobody else's.
    let spawn = json!({"call": "/demo/carried/spawn", "body": {}});
    let alice = jwt("alice", "invoke:demo/*");
    let out = json_ok(call(alice.clone(), spawn).await.unwrap()).await;
    assert_eq!(out["status"], 202, "{out}");
    let child = out["body"]["call_id"].as_str().unwrap().to_owned();
    let read = |token: Option<String>| {
        let request = client.get(gw.url(&format!("/calls/{child}?wait=20")));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
        .send()
    };
    let answer = read(Some(alice)).await.unwrap();
    assert_eq!(json_ok(answer).await["subject"], "alice");
    let answer = read(Some(jwt("bob", "invoke:demo/*"))).await.unwrap();
    assert_problem(answer, 404, "call_not_found").await;
    let answer = read(None).await.unwrap();
    assert_problem(answer, 404, "call_not_found").await;
    // A call alice spawns herself runs later, in no request of hers: its
    // token still acts as alice, with her scopes.
    let alice = jwt("alice", "invoke:demo/*");
    let answer = client
        .post(gw.url("/demo/parent/spawn"))
        .bearer_auth(&alice)
        .json(&json!({"call": "/demo/carried", "body": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let spawned = answer.json::<Value>().await.unwrap()["call_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let answer = client
        .get(gw.url(&format!("/calls/{spawned}?wait=20")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    let out = json_ok(answer).await;
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["body"]["subject"], "alice");
}

#[tokio::test]
async fn lambda_and_http_instances_call_with_their_tokens() {
    let gw = nested_builder()
        .file("lambda_runtime.py", repo_file("examples/lambda_runtime.py"))
        .file(
            "lambda_caller.py",
            repo_file("tests/nested/lambda_caller.py"),
        )
        .file("json_http.py", repo_file("tests/instances/json_http.py"))
        .file("http_caller.py", repo_file("tests/nested/http_caller.py"))
        .toml(
            "[apps.demo.functions.lcaller]\nbackend = \"lambda\"\n\
             command = [\"python3\", \"lambda_runtime.py\", \"lambda_caller.handler\"]\n\
             may_call = [\"demo/square\"]\npublic = true\nenv.SERVED_BY = \"gateway\"\n",
        )
        .toml(
            "[apps.demo.functions.hcaller]\nbackend = \"http\"\n\
             command = [\"python3\", \"http_caller.py\"]\n\
             may_call = [\"demo/square\"]\npublic = true\n",
        )
        .start()
        .await;
    let client = gw.client();
    let answer = gw.post_json(&client, "/demo/lcaller", r#"{"x": 4}"#).await;
    assert_eq!(
        json_ok(answer).await,
        json!({"status": 200, "square": 16, "served_by": "gateway"})
    );
    let answer = gw.post_json(&client, "/demo/hcaller", r#"{"x": 5}"#).await;
    assert_eq!(
        json_ok(answer).await,
        json!({"status": 200, "square": 25, "same_url": true})
    );
}

/// `fngate worker` on "another machine": its instances get `FNGATE_URL`
/// (its `--gateway`) and `FNGATE_CA_FILE` (its `--cacert`), and the event's
/// call token.
#[tokio::test]
async fn a_workers_instances_call_back_with_the_events_token() {
    let (key, sha256) = fngate::auth::new_api_key();
    let gw = nested_builder()
        .file("lambda_runtime.py", repo_file("examples/lambda_runtime.py"))
        .file("lambda_caller.py", repo_file("tests/nested/lambda_caller.py"))
        .toml(&format!(
            "[[auth.api_keys]]\nname = \"worker\"\nsha256 = \"{sha256}\"\nscopes = [\"work:demo/lcaller\"]\n"
        ))
        .toml(
            "[apps.demo.functions.lcaller]\nbackend = \"lambda\"\n\
             command = [\"python3\", \"lambda_runtime.py\", \"lambda_caller.handler\"]\n\
             may_call = [\"demo/square\"]\npublic = true\nenv.SERVED_BY = \"gateway\"\n",
        )
        .start()
        .await;
    let mut worker = tokio::process::Command::new(common::BIN)
        .args(["worker", "--gateway"])
        .arg(format!("https://127.0.0.1:{}", gw.addr.port()))
        .args(["--function", "demo/lcaller", "--cacert"])
        .arg(gw.ca_path())
        .args([
            "--",
            "python3",
            "lambda_runtime.py",
            "lambda_caller.handler",
        ])
        .current_dir(&gw.dir)
        .env("FNGATE_WORKER_TOKEN", &key)
        .env("SERVED_BY", "worker")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = worker.stderr.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let polling = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("polling for calls") {
                return true;
            }
        }
        false
    });
    assert_eq!(polling.await, Ok(true), "the worker did not start polling");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let answer = gw
        .post_json(&gw.client(), "/demo/lcaller", r#"{"x": 6}"#)
        .await;
    assert_eq!(
        json_ok(answer).await,
        json!({"status": 200, "square": 36, "served_by": "worker"})
    );
    let _ = worker.kill().await;
}

#[tokio::test]
async fn class_methods_call_and_are_called_with_tokens() {
    let gw = nested_builder()
        .file("lambda_runtime.py", repo_file("examples/lambda_runtime.py"))
        .file(
            "lambda_caller.py",
            repo_file("tests/nested/lambda_caller.py"),
        )
        .toml(
            "[apps.demo.classes.model]\nbackend = \"lambda\"\n\
             command = [\"python3\", \"lambda_runtime.py\", \"lambda_caller.handler\"]\n\
             env.SERVED_BY = \"class\"\n\
             [apps.demo.classes.model.functions.predict]\npublic = true\n\
             may_call = [\"demo/square\"]\n\
             [apps.demo.classes.model.functions.embed]\npublic = true\n",
        )
        .toml(&exec_fn(
            "demo",
            "user",
            "caller.py",
            "public = true\nmay_call = [\"demo/model/predict\"]",
        ))
        .start()
        .await;
    let client = gw.client();
    // A method calls with its own token...
    let answer = gw
        .post_json(&client, "/demo/model/predict", r#"{"x": 7}"#)
        .await;
    assert_eq!(
        json_ok(answer).await,
        json!({"status": 200, "square": 49, "served_by": "class"})
    );
    // ... and is called with another function's: "APP/CLASS/METHOD" names
    // that method alone.
    let body = json!({"call": "/demo/model/predict", "body": {"x": 3}}).to_string();
    let out = json_ok(gw.post_json(&client, "/demo/user", &body).await).await;
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["body"]["square"], 9);
    let body = json!({"call": "/demo/model/embed", "body": {"x": 3}}).to_string();
    let out = json_ok(gw.post_json(&client, "/demo/user", &body).await).await;
    assert_eq!(out["status"], 403, "{out}");
    // embed has no may_call: its token calls nothing.
    let answer = gw
        .post_json(&client, "/demo/model/embed", r#"{"x": 2}"#)
        .await;
    let out = json_ok(answer).await;
    assert_eq!(out["status"], 403, "{out}");
    let detail = out["square"]["detail"].as_str().unwrap();
    assert!(detail.contains("demo/model/embed"), "{detail}");
}

#[tokio::test]
async fn max_call_depth_sets_where_nesting_ends() {
    let gw = nested_builder()
        .server("max_call_depth = 2")
        .toml(&exec_fn(
            "demo",
            "recurse",
            "caller.py",
            "public = true\nmay_call = [\"demo/recurse\"]",
        ))
        .start()
        .await;
    let answer = gw
        .post_json(&gw.client(), "/demo/recurse", r#"{"recurse": 0}"#)
        .await;
    assert_eq!(
        json_ok(answer).await,
        json!({"n": 2, "status": 508, "code": "loop_detected"})
    );
}
