//! Micro-benchmarks of fngate's per-request hot path, through its public API:
//!
//! - `translate`: the strict JSON check (`translate::json::check`) and the
//!   whole body-to-arguments step (`translate::arguments`), for `{"x":42}`
//!   and a generated ~1 MiB body (throughput in bytes of body);
//! - `envelope`: the invocation request a backend receives
//!   (`Invocation::to_json`) for those arguments, and a call id;
//! - `routing`: `Registry::lookup` in a registry of 1 app x 3 functions and
//!   of 50 apps x 20 functions (built from TOML by `Config::from_toml`), and
//!   the whole `App` (request context, path split, lookup, answer) for
//!   requests that end before any backend runs;
//! - `problem`: rendering an `ApiError` as an `application/problem+json`
//!   response.
//!
//! Run all of them with `cargo bench --bench hot_path` (about a minute), or
//! some by name: `cargo bench --bench hot_path -- translate`,
//! `cargo bench --bench hot_path -- 'routing/router'`. Criterion keeps the
//! previous run in `target/criterion` and reports the change against it.

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;

use fngate::backend::http::HttpClients;
use fngate::calls::{Calls, CallsConfig};
use fngate::config::Config;
use fngate::http::AppState;
use fngate::http::problem::ApiError;
use fngate::invocation::{CallId, Invocation, Trace, deadline_ms_after};
use fngate::registry::{LiveRegistry, Lookup, Registry};
use fngate::store::embedded::EmbeddedStore;
use fngate::translate::json::{self, Rules};
use fngate::translate::{self, Arguments, InputRules};

/// The gateway's default nesting limit (`max_json_depth`).
const MAX_DEPTH: usize = 128;
const STRICT: Rules = Rules {
    max_depth: MAX_DEPTH,
    reject_duplicate_keys: true,
};
const JSON: Option<&str> = Some("application/json");
const SMALL_BODY: &[u8] = br#"{"x":42}"#;
/// The large body is this many bytes, plus the end of its last item.
const LARGE_TARGET: usize = 1 << 20;

/// A JSON object of about 1 MiB: a few top-level keys and an array of small
/// records with integers, decimals, ASCII, non-ASCII and escaped strings,
/// booleans and nulls.
fn large_body() -> Vec<u8> {
    let mut out = String::with_capacity(LARGE_TARGET + 256);
    out.push_str(
        r#"{"batch":"nightly-2026-11-27","source":{"region":"eu-west","retries":0},"items":["#,
    );
    let mut i = 0u32;
    while out.len() < LARGE_TARGET {
        if i > 0 {
            out.push(',');
        }
        write!(
            out,
            r#"{{"id":{i},"name":"item-{i}","score":{}.{:03},"city":"Zürich","tags":["red","caf\u00e9"],"active":{},"note":null}}"#,
            i % 997,
            i % 1000,
            i % 2 == 0
        )
        .expect("writing to a String cannot fail");
        i += 1;
    }
    write!(out, r#"],"count":{i}}}"#).expect("writing to a String cannot fail");
    out.into_bytes()
}

fn no_schema() -> InputRules<'static> {
    InputRules {
        max_depth: MAX_DEPTH,
        schema: None,
    }
}

fn invocation(arguments: &Arguments) -> Invocation {
    let timeout = Duration::from_secs(30);
    Invocation {
        call_id: CallId::generate(),
        app: "demo".into(),
        function: "square".into(),
        args: arguments.args.clone(),
        kwargs: arguments.kwargs.clone(),
        deadline_ms: deadline_ms_after(timeout),
        deadline: tokio::time::Instant::now() + timeout,
        attempt: 1,
        class: None,
        trace: Trace {
            request_id: "3f2b8c1d9e0a4b7c".into(),
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        },
        principal: None,
        call_token: None,
        parent: None,
        batch: None,
    }
}

fn translate_benches(c: &mut Criterion) {
    let large = large_body();
    assert!(
        json::check(&large, STRICT).is_ok(),
        "the large body is JSON"
    );
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
        "required": ["x"],
        "additionalProperties": false
    });
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    let with_schema = InputRules {
        max_depth: MAX_DEPTH,
        schema: Some((&validator, &schema)),
    };

    let mut group = c.benchmark_group("translate");
    group.throughput(Throughput::Bytes(SMALL_BODY.len() as u64));
    group.bench_function("check/small", |b| {
        b.iter(|| json::check(black_box(SMALL_BODY), STRICT))
    });
    group.bench_function("arguments/small", |b| {
        b.iter(|| translate::arguments(JSON, black_box(SMALL_BODY), None, &no_schema()))
    });
    group.bench_function("arguments/small+query", |b| {
        b.iter(|| translate::arguments(JSON, black_box(SMALL_BODY), Some("y=2"), &no_schema()))
    });
    group.bench_function("arguments/small+schema", |b| {
        b.iter(|| translate::arguments(JSON, black_box(SMALL_BODY), Some("y=2"), &with_schema))
    });
    group.throughput(Throughput::Bytes(large.len() as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("check/1MiB", |b| {
        b.iter(|| json::check(black_box(&large), STRICT))
    });
    group.bench_function("arguments/1MiB", |b| {
        b.iter(|| translate::arguments(JSON, black_box(&large), None, &no_schema()))
    });
    group.finish();
}

fn envelope_benches(c: &mut Criterion) {
    let small = translate::arguments(JSON, SMALL_BODY, None, &no_schema()).expect("valid");
    let large = translate::arguments(JSON, &large_body(), None, &no_schema()).expect("valid");
    let small = invocation(&small);
    let large = invocation(&large);

    let mut group = c.benchmark_group("envelope");
    group.bench_function("call_id", |b| b.iter(CallId::generate));
    group.throughput(Throughput::Bytes(small.to_json().len() as u64));
    group.bench_function("to_json/small", |b| b.iter(|| black_box(&small).to_json()));
    group.throughput(Throughput::Bytes(large.to_json().len() as u64));
    group.sample_size(20);
    group.bench_function("to_json/1MiB", |b| b.iter(|| black_box(&large).to_json()));
    group.finish();
}

/// One app of three functions, as in DESIGN.md's example.
const SMALL_CONFIG: &str = r#"
[apps.demo.functions.square]
backend = "exec"
command = ["python3", "examples/square.py"]
methods = ["POST", "GET"]
public = true

[apps.demo.functions.echo]
backend = "http"
urls = ["http://127.0.0.1:9001/invoke"]

[apps.demo.functions.upper]
backend = "exec"
command = ["true"]
"#;

/// 50 apps of 20 functions each, `app-00/fn-00` to `app-49/fn-19`.
fn large_config() -> String {
    let mut text = String::new();
    for app in 0..50 {
        for function in 0..20 {
            write!(
                text,
                "[apps.app-{app:02}.functions.fn-{function:02}]\nbackend = \"exec\"\ncommand = [\"true\"]\ntimeout = \"30s\"\n\n"
            )
            .expect("writing to a String cannot fail");
        }
    }
    text
}

/// A registry and the gateway's router over it, built as `Gateway::bind`
/// builds them; `dir` holds the call store's file while they live.
struct Gateway {
    registry: Arc<Registry>,
    router: fngate::http::App,
    _dir: tempfile::TempDir,
}

fn gateway(toml: &str) -> Gateway {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let config = Config::from_toml(&dir.path().join("gateway.toml"), toml).expect("a valid config");
    let live = LiveRegistry::new(Registry::from_config(&config, &HttpClients::new()));
    let registry = live.current();
    let store = EmbeddedStore::open(&config.store.path).expect("an embedded store");
    let settings = CallsConfig {
        result_ttl: config.store.result_ttl,
        max_pending: config.store.max_pending,
        max_wait: config.store.max_wait,
    };
    let calls = Arc::new(Calls::new(Arc::new(store), live.clone(), settings));
    let state = AppState::new(live, calls, None, None, &config);
    Gateway {
        registry,
        router: fngate::http::router(Arc::new(state)),
        _dir: dir,
    }
}

fn routing_benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let _entered = runtime.enter();
    let small = gateway(SMALL_CONFIG);
    let large = gateway(&large_config());
    assert_eq!(large.registry.functions().len(), 1000);
    let found = |lookup: Lookup<'_>| matches!(lookup, Lookup::Found(_));

    let mut group = c.benchmark_group("routing");
    let lookups = [
        ("lookup/1x3", &small.registry, "demo", "echo"),
        ("lookup/50x20", &large.registry, "app-37", "fn-11"),
        (
            "lookup/50x20/no_function",
            &large.registry,
            "app-37",
            "fn-99",
        ),
        ("lookup/50x20/no_app", &large.registry, "app-99", "fn-11"),
    ];
    for (name, registry, app, function) in lookups {
        group.bench_function(name, |b| {
            b.iter(|| found(registry.lookup(black_box(app), black_box(function))))
        });
    }

    // The whole router, answered without a backend; the body is read as a
    // client's connection would.
    let cases = [
        ("router/health", Method::GET, "/_/health", StatusCode::OK),
        (
            "router/50x20/404_function",
            Method::POST,
            "/app-37/nope",
            StatusCode::NOT_FOUND,
        ),
        (
            "router/50x20/405_method",
            Method::DELETE,
            "/app-37/fn-11",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "router/50x20/400_invalid_json",
            Method::POST,
            "/app-37/fn-11",
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (name, method, uri, expected) in cases {
        let request = || {
            Request::builder()
                .method(method.clone())
                .uri(uri)
                .header(header::CONTENT_TYPE, "application/json")
                .header("x-request-id", "bench-1")
                .body(Body::from(r#"{"x":"#))
                .expect("a valid request")
        };
        let router = &large.router;
        let answer = move |request: Request<Body>| async move {
            let response = router.serve(request).await;
            let status = response.status();
            let body = response.into_body().collect().await.expect("a full body");
            (status, body.to_bytes())
        };
        let (status, _) = runtime.block_on(answer(request()));
        assert_eq!(status, expected, "{name}");
        group.bench_function(name, |b| {
            b.iter_batched(
                request,
                |request| runtime.block_on(answer(request)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// Makes a fresh error for each rendering (`into_problem` consumes it).
type MakeError = fn() -> ApiError;

fn problem_benches(c: &mut Criterion) {
    let errors: [(&str, MakeError); 4] = [
        ("function_not_found", || ApiError::FunctionNotFound {
            app: "demo".to_owned(),
            function: "sq".to_owned(),
        }),
        ("invalid_json", || {
            ApiError::InvalidJson(
                "invalid JSON body: expected ',' or '}' in an object at line 3, column 8"
                    .to_owned(),
            )
        }),
        ("function_error", || ApiError::FunctionError {
            kind: "ValueError".to_owned(),
            message: "x must be a non-negative integer, got -3".to_owned(),
        }),
        ("unauthorized", || ApiError::Unauthorized {
            description: Some("the token has expired".to_owned()),
        }),
    ];
    let mut group = c.benchmark_group("problem");
    for (name, error) in errors {
        group.bench_function(name, |b| {
            b.iter_batched(
                error,
                |error| error.into_problem(black_box("3f2b8c1d9e0a4b7c")),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = hot_path;
    config = config();
    targets = translate_benches, envelope_benches, routing_benches, problem_benches
}
criterion_main!(hot_path);
