//! Classes end to end: methods (`/{app}/{class}/{method}`) that share one
//! class's warm instances, parameter values from the query that pick an
//! instance set of their own (`?size=large`, seen by the instance as
//! `FNGATE_PARAM_SIZE` and in the event's `parameters`), the least
//! recently used set stopped past `max_parameter_sets`, and the names a
//! class may not take.

mod common;

use std::time::Duration;

use common::{
    Gateway, assert_problem, eventually, json_ok, process_alive, repo_file, run_bin, set_up_pids,
};
use serde_json::{Value, json};

/// App `demo` with class `model` (lambda instances of
/// tests/instances/setup_counter.py, one per parameter set, whose set-ups
/// write to model.setup), parameter `size`, at most 2 live sets, and
/// methods `predict` and `embed`.
async fn gateway() -> Gateway {
    Gateway::builder()
        .file("lambda_runtime.py", repo_file("examples/lambda_runtime.py"))
        .file(
            "setup_counter.py",
            repo_file("tests/instances/setup_counter.py"),
        )
        .toml(
            r#"
[apps.demo.classes.model]
backend = "lambda"
command = ["python3", "lambda_runtime.py", "setup_counter.handler"]
parameters = ["size"]
max_parameter_sets = 2
max_instances = 1
exit_grace = "1s"
env = { SETUP_COUNT_FILE = "model.setup" }

[apps.demo.classes.model.functions.predict]
timeout = "10s"

[apps.demo.classes.model.functions.embed]
methods = ["POST", "GET"]
"#,
        )
        .start()
        .await
}

/// POSTs `body` to `path` and returns the 200 result.
async fn call(gw: &Gateway, path: &str, body: Value) -> Value {
    json_ok(gw.post_json(&gw.client(), path, &body.to_string()).await).await
}

/// The `pid` an instance put in its answer.
fn pid(result: &Value) -> i32 {
    result["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no pid in {result}")) as i32
}

#[tokio::test]
async fn methods_of_one_class_share_one_set_up() {
    let gw = gateway().await;
    let predict = call(&gw, "/demo/model/predict", json!({"x": 1})).await;
    let embed = call(&gw, "/demo/model/embed", json!({"x": 2})).await;
    assert_eq!(predict["class"], "model", "{predict}");
    assert_eq!(predict["function"], "predict", "{predict}");
    assert_eq!(predict["kwargs"], json!({"x": 1}), "{predict}");
    assert_eq!(embed["class"], "model", "{embed}");
    assert_eq!(embed["function"], "embed", "{embed}");
    assert_eq!(embed["kwargs"], json!({"x": 2}), "{embed}");
    // No ?size=: the parameter is the empty string.
    assert_eq!(predict["parameters"], json!({"size": ""}), "{predict}");
    assert_eq!(
        pid(&embed),
        pid(&predict),
        "one instance serves both methods"
    );
    assert_eq!(
        set_up_pids(&gw.dir, "model.setup"),
        vec![pid(&predict)],
        "one set-up for both methods"
    );
}

#[tokio::test]
async fn each_parameter_value_gets_its_own_instances() {
    let gw = gateway().await;
    let small = call(&gw, "/demo/model/predict?size=small", json!({"x": 1})).await;
    let large = call(&gw, "/demo/model/predict?size=large", json!({"x": 1})).await;
    assert_ne!(pid(&small), pid(&large), "two sets, two instances");
    assert_eq!(
        small["params"],
        json!({"FNGATE_PARAM_SIZE": "small"}),
        "{small}"
    );
    assert_eq!(
        large["params"],
        json!({"FNGATE_PARAM_SIZE": "large"}),
        "{large}"
    );
    assert_eq!(small["parameters"], json!({"size": "small"}), "{small}");
    assert_eq!(large["parameters"], json!({"size": "large"}), "{large}");
    for result in [&small, &large] {
        assert_eq!(
            result["kwargs"],
            json!({"x": 1}),
            "a parameter is never an argument: {result}"
        );
    }
    // Another method with the same value goes to the same set.
    let embed = call(&gw, "/demo/model/embed?size=large", json!({})).await;
    assert_eq!(pid(&embed), pid(&large), "{embed}");
    let mut set_ups = set_up_pids(&gw.dir, "model.setup");
    set_ups.sort();
    let mut want = vec![pid(&small), pid(&large)];
    want.sort();
    assert_eq!(set_ups, want, "one set-up per parameter set");
}

#[tokio::test]
async fn a_set_past_max_parameter_sets_stops_the_least_recently_used() {
    let gw = gateway().await;
    let path = |size: &str| format!("/demo/model/predict?size={size}");
    let a = pid(&call(&gw, &path("a"), json!({})).await);
    let b = pid(&call(&gw, &path("b"), json!({})).await);
    // `a` is used again: `b` is now the least recently used (and `a` the
    // oldest, which a first-in-first-out choice would stop).
    assert_eq!(pid(&call(&gw, &path("a"), json!({})).await), a);
    let c = pid(&call(&gw, &path("c"), json!({})).await);
    assert!(a != c && b != c, "set c has an instance of its own");
    let stopped = eventually(Duration::from_secs(10), || !process_alive(b)).await;
    assert!(stopped, "set b's instance {b} still runs with 3 sets live");
    assert!(process_alive(a), "set a was used more recently than b");
    assert!(process_alive(c), "set c was just used");
    assert_eq!(pid(&call(&gw, &path("a"), json!({})).await), a);
}

#[tokio::test]
async fn unknown_method_of_a_class_is_function_not_found() {
    let gw = gateway().await;
    let resp = gw
        .post_json(&gw.client(), "/demo/model/nope", r#"{"x": 1}"#)
        .await;
    assert_problem(resp, 404, "function_not_found").await;
    assert!(
        set_up_pids(&gw.dir, "model.setup").is_empty(),
        "no instance starts for an unknown method"
    );
}

#[tokio::test]
async fn a_class_and_a_function_with_one_name_stop_the_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = r#"[server]
listen = "127.0.0.1:0"

[apps.demo.functions.model]
backend = "exec"
command = ["python3", "model.py"]

[apps.demo.classes.model]
backend = "lambda"
command = ["python3", "lambda_runtime.py", "setup_counter.handler"]

[apps.demo.classes.model.functions.predict]
"#;
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, text).expect("write gateway.toml");
    let config = config.to_str().expect("utf-8 path");
    for sub in ["check", "serve"] {
        let (code, _, stderr) = run_bin(&[sub, "--config", config], dir.path()).await;
        assert_eq!(code, Some(2), "{sub}: {stderr}");
        assert!(stderr.contains("gateway.toml"), "{sub}: {stderr}");
        assert!(
            stderr.contains("apps.demo.classes.model")
                || stderr.contains("apps.demo.functions.model"),
            "{sub} names the key: {stderr}"
        );
    }
    assert!(
        !dir.path().join("certs").exists(),
        "a rejected config gets no further"
    );
}
