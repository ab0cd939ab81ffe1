//! The admin console: `GET /admin/`, a self-contained page (its own
//! inline script and style, run under a hash-based policy), and
//! `GET /admin/overview`, the JSON it reads every 2 s: the deployed
//! functions and classes with their backends, their instances, the
//! calls in the store by state, and each function's p50/p99 latency over
//! the last minutes.
//!
//! The page holds no data: a browser cannot send a Bearer token when it
//! opens a URL, so [`page_router`] is served without one (merge it outside
//! the admin token check) and the page asks for the token, keeps it in
//! `sessionStorage` and sends it with every read of the overview, which
//! [`router`] serves behind the check like every other admin route.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::routing::get;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;
use tokio::time::Instant;

use super::AdminContext;
use crate::config::BackendSpec;
use crate::http::page::{self, Page};
use crate::http::problem::ApiError;
use crate::invocation::{Trace, random_hex};
use crate::metrics::{HistogramSnapshot, InstanceStates};
use crate::registry::{Function, Registry};
use crate::store::CallState;

/// The page's markup; `{style}` and `{script}` mark where its CSS and
/// JavaScript go, inline.
const PAGE: &str = include_str!("console.html");
const STYLE: &str = include_str!("console.css");
const SCRIPT: &str = include_str!("console.js");

/// Latency is reported over (at least) this long a span, when the gateway
/// has been up that long.
pub const LATENCY_WINDOW: Duration = Duration::from_secs(300);

/// How often the latency ring keeps a snapshot.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// `GET /admin/` (and `/admin`, sent on to it): the page, which needs no
/// token and shows nothing until one is typed into it.
pub fn page_router() -> Router {
    Router::new()
        .route("/admin/", get(page).fallback(method_not_allowed))
        .route("/admin", get(to_page).fallback(method_not_allowed))
}

/// `GET /admin/overview`, to be served behind the admin token check. A
/// task keeps the latency ring filled while the router lives.
pub fn router(ctx: Arc<AdminContext>) -> Router {
    let console = Arc::new(Console {
        ctx,
        window: LatencyWindow::new(Instant::now()),
    });
    if tokio::runtime::Handle::try_current().is_ok() {
        tokio::spawn(sample_until_dropped(Arc::downgrade(&console)));
    }
    Router::new()
        .route(
            "/admin/overview",
            get(overview_route).fallback(method_not_allowed),
        )
        .with_state(console)
}

struct Console {
    ctx: Arc<AdminContext>,
    window: LatencyWindow,
}

/// Takes a latency snapshot every [`SAMPLE_EVERY`], so the window stays
/// about [`LATENCY_WINDOW`] long even when nobody reads it for a while;
/// ends once the router is gone.
async fn sample_until_dropped(console: Weak<Console>) {
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(console) = console.upgrade() else {
            return;
        };
        let registry = console.ctx.state.registry.current();
        console
            .window
            .recent(Instant::now(), latency_now(&registry));
    }
}

async fn page() -> Response<Body> {
    let mut response = page_once().response();
    (response.headers_mut()).insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn to_page() -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/admin/"));
    response
}

async fn method_not_allowed(request: Request) -> Response<Body> {
    let request_id = request
        .extensions()
        .get::<Trace>()
        .map_or_else(random_hex::<16>, |trace| trace.request_id.to_string());
    let mut response = ApiError::MethodNotAllowed {
        allow: "GET, HEAD".to_owned(),
    }
    .into_problem(&request_id);
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        (response.headers_mut()).insert(crate::invocation::names::X_REQUEST_ID, value);
    }
    response
}

/// The page's guards, and no caching (as the page itself): the overview
/// is the gateway's state now.
fn secure_headers(headers: &mut http::HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    page::guard(headers);
}

/// The page, put together once.
fn page_once() -> &'static Page {
    static PAGE_ONCE: OnceLock<Page> = OnceLock::new();
    PAGE_ONCE.get_or_init(|| Page::new(PAGE, STYLE, SCRIPT))
}

async fn overview_route(State(console): State<Arc<Console>>) -> Response<Body> {
    let overview = overview(&console).await;
    let body = serde_json::to_vec(&overview).expect("the overview always serialises");
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    secure_headers(headers);
    response
}

/// What `GET /admin/overview` answers.
#[derive(Debug, Serialize)]
pub struct Overview {
    /// Seconds the `latency` members cover: [`LATENCY_WINDOW`], or less
    /// while the gateway has been up for less.
    pub window_seconds: u64,
    pub functions: Vec<FunctionRow>,
    pub classes: Vec<ClassRow>,
    /// Calls in the store by state; `null` when the store did not answer.
    pub calls: Option<CallCounts>,
}

/// Calls in the store by state, every state (zeros too), in the order a
/// call goes through them.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct CallCounts {
    pub pending: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub cancelled: u64,
}

impl CallCounts {
    fn add(&mut self, state: CallState, n: u64) {
        let count = match state {
            CallState::Pending => &mut self.pending,
            CallState::Running => &mut self.running,
            CallState::Succeeded => &mut self.succeeded,
            CallState::Failed => &mut self.failed,
            CallState::TimedOut => &mut self.timed_out,
            CallState::Cancelled => &mut self.cancelled,
        };
        *count += n;
    }
}

#[derive(Debug, Serialize)]
pub struct FunctionRow {
    pub app: String,
    pub name: String,
    /// The class it is a method of, if any.
    pub class: Option<String>,
    /// `exec`, `http` or `lambda`.
    pub backend: &'static str,
    /// What it runs or calls: the command, the URLs, `(passthrough)`.
    pub target: String,
    pub route: String,
    /// Calls holding a slot now, out of `concurrency`.
    pub running: usize,
    pub concurrency: usize,
    /// Sync callers waiting for a slot.
    pub waiting: usize,
    /// Its warm instances (a method: its class's, which its methods
    /// share); `null` for a function without instances.
    pub instances: Option<Instances>,
    pub latency: Latency,
}

#[derive(Debug, Serialize)]
pub struct ClassRow {
    pub app: String,
    pub name: String,
    pub backend: &'static str,
    pub target: String,
    pub parameters: Vec<String>,
    pub methods: Vec<String>,
    pub instances: Instances,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Instances {
    pub starting: u64,
    pub idle: u64,
    pub busy: u64,
}

impl From<InstanceStates> for Instances {
    fn from(states: InstanceStates) -> Instances {
        Instances {
            starting: states.starting,
            idle: states.idle,
            busy: states.busy,
        }
    }
}

/// Requests answered in the window and their latency quantiles (`null`
/// with no request), in milliseconds.
#[derive(Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub requests: u64,
}

impl Latency {
    fn of(recent: &HistogramSnapshot) -> Latency {
        let ms = |q: f64| {
            recent
                .quantile(q)
                .map(|s| (s * 1_000_000.0).round() / 1000.0)
        };
        Latency {
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            requests: recent.count,
        }
    }
}

async fn overview(console: &Console) -> Overview {
    let registry = console.ctx.state.registry.current();
    let (window, recent) = console
        .window
        .recent(Instant::now(), latency_now(&registry));
    let mut functions = Vec::new();
    let mut classes: Vec<ClassRow> = Vec::new();
    for function in registry.functions() {
        let latency = recent
            .get(&series_key(function))
            .map_or_else(Latency::default, Latency::of);
        let instances = function.instances.is_some().then(|| instances_of(function));
        if let Some(class) = &function.spec.class {
            match classes.last_mut() {
                Some(row) if row.app == *function.app && row.name == *class => {
                    row.methods.push(function.name.to_string());
                }
                _ => classes.push(class_row(&registry, function, class, instances)),
            }
        }
        functions.push(FunctionRow {
            app: function.app.to_string(),
            name: function.name.to_string(),
            class: function.spec.class.clone(),
            backend: backend_kind(&function.spec.backend),
            target: function.describe(),
            route: function.metrics.route.to_string(),
            running: function
                .spec
                .concurrency
                .saturating_sub(function.limiter.free()),
            concurrency: function.spec.concurrency,
            waiting: function.limiter.waiting(),
            instances,
            latency,
        });
    }
    Overview {
        window_seconds: window.as_secs(),
        functions,
        classes,
        calls: calls_by_state(&console.ctx).await,
    }
}

/// The row of the class `class` whose method `function` is.
fn class_row(
    registry: &Registry,
    function: &Function,
    class: &str,
    instances: Option<Instances>,
) -> ClassRow {
    let spec = registry.class(&function.app, class).map(|c| &c.spec);
    ClassRow {
        app: function.app.to_string(),
        name: class.to_owned(),
        backend: backend_kind(&function.spec.backend),
        target: function.describe(),
        parameters: spec.map(|s| s.parameters.clone()).unwrap_or_default(),
        methods: vec![function.name.to_string()],
        instances: instances.unwrap_or_default(),
    }
}

/// The instances of a function's pool, or of its class's pools (one
/// per parameter set), as `/_/metrics` counts them.
fn instances_of(function: &Function) -> Instances {
    let owner = function.spec.class.as_deref().unwrap_or(&function.name);
    let label = format!("{}/{owner}", function.app);
    Instances::from(crate::metrics::global().pool(&label).instance_states())
}

fn backend_kind(backend: &BackendSpec) -> &'static str {
    match backend {
        BackendSpec::Exec { .. } => "exec",
        BackendSpec::Http { .. } | BackendSpec::HttpInstances { .. } => "http",
        BackendSpec::Lambda { .. } => "lambda",
    }
}

async fn calls_by_state(ctx: &AdminContext) -> Option<CallCounts> {
    match ctx.state.calls.store().count_by_state().await {
        Ok(counted) => {
            let mut calls = CallCounts::default();
            for (state, n) in counted {
                calls.add(state, n);
            }
            Some(calls)
        }
        Err(error) => {
            tracing::warn!(%error, "the console could not count the calls by state");
            None
        }
    }
}

/// A function's series, by app and key (`name` or `class.method`).
type SeriesKey = (Arc<str>, Arc<str>);

fn series_key(function: &Function) -> SeriesKey {
    (function.app.clone(), function.key.clone())
}

/// Every deployed function's latency histogram as it is now.
fn latency_now(registry: &Registry) -> HashMap<SeriesKey, HistogramSnapshot> {
    (registry.functions().into_iter())
        .map(|function| (series_key(function), function.metrics.latency()))
        .collect()
}

/// A ring of latency snapshots, one per [`SAMPLE_EVERY`] at most, kept
/// for [`LATENCY_WINDOW`]: recent latency is the difference between now
/// and the oldest one kept.
struct LatencyWindow {
    samples: Mutex<VecDeque<Sample>>,
}

struct Sample {
    at: Instant,
    /// A function missing here had no request yet (or was not deployed).
    latency: HashMap<SeriesKey, HistogramSnapshot>,
}

impl LatencyWindow {
    /// A ring whose first snapshot is all zeros at `start` (the
    /// process's counters start at zero with the gateway).
    fn new(start: Instant) -> LatencyWindow {
        let first = Sample {
            at: start,
            latency: HashMap::new(),
        };
        LatencyWindow {
            samples: Mutex::new(VecDeque::from([first])),
        }
    }

    /// Keeps `now`'s snapshots when the last kept one is [`SAMPLE_EVERY`]
    /// old, drops those no longer needed, and returns the span covered and
    /// what each function did in it: since the newest snapshot at least
    /// [`LATENCY_WINDOW`] old, or the oldest when none is that old.
    fn recent(
        &self,
        now: Instant,
        current: HashMap<SeriesKey, HistogramSnapshot>,
    ) -> (Duration, HashMap<SeriesKey, HistogramSnapshot>) {
        let mut samples = self
            .samples
            .lock()
            .expect("no code panics holding this lock");
        while samples
            .get(1)
            .is_some_and(|next| now.duration_since(next.at) >= LATENCY_WINDOW)
        {
            samples.pop_front();
        }
        let baseline = samples.front().expect("the ring is never empty");
        let covered = now.duration_since(baseline.at);
        let recent = (current.iter())
            .map(|(key, snapshot)| {
                let since = match baseline.latency.get(key) {
                    Some(earlier) => snapshot.since(earlier),
                    None => snapshot.clone(),
                };
                (key.clone(), since)
            })
            .collect();
        let due = samples
            .back()
            .is_none_or(|last| now.duration_since(last.at) >= SAMPLE_EVERY);
        if due {
            samples.push_back(Sample {
                at: now,
                latency: current,
            });
        }
        (covered, recent)
    }
}

#[cfg(test)]
mod tests;
