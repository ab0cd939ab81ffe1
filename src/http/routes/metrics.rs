//! `GET /_/metrics`: every series in the Prometheus text format. Public,
//! like `/_/health`: it names deployed apps and functions and counts
//! requests, never anything of a request itself.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use http::{HeaderValue, Method, Response, StatusCode};

use crate::http::input;
use crate::http::problem::ApiError;
use crate::http::state::AppState;
use crate::metrics::{FunctionGauges, Scrape};
use crate::store::CallState;

/// How long the store's counts of calls by state are reused: however
/// many scrapers there are, the store counts at most once a second.
const CALLS_CACHE: Duration = Duration::from_secs(1);

const STATES: [CallState; 6] = [
    CallState::Pending,
    CallState::Running,
    CallState::Succeeded,
    CallState::Failed,
    CallState::TimedOut,
    CallState::Cancelled,
];

type Counts = Vec<(&'static str, u64)>;

/// `GET /_/metrics`.
pub async fn metrics(state: &AppState, method: Method) -> Result<Response<Body>, ApiError> {
    input::only_get(&method)?;
    let registry = state.registry.current();
    let functions = (registry.functions().into_iter())
        .map(|function| {
            let free = function.limiter.free() as u64;
            FunctionGauges {
                metrics: function.metrics.clone(),
                waiting: function.limiter.waiting() as u64,
                running: (function.spec.concurrency as u64).saturating_sub(free),
            }
        })
        .collect();
    let scrape = Scrape {
        functions,
        calls: calls_by_state(state).await,
    };
    let mut response = Response::new(Body::from(crate::metrics::encode(scrape)));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    Ok(response)
}

/// Every state with its count, at most `CALLS_CACHE` old. A store that
/// cannot count now leaves the last counts (or none) in place.
async fn calls_by_state(state: &AppState) -> Counts {
    static CACHE: Mutex<Option<(Instant, Counts)>> = Mutex::new(None);
    {
        let cache = CACHE.lock().expect("no code panics holding this lock");
        if let Some((at, counts)) = cache.as_ref()
            && at.elapsed() < CALLS_CACHE
        {
            return counts.clone();
        }
    }
    let counted = match state.calls.store().count_by_state().await {
        Ok(counted) => counted,
        Err(e) => {
            tracing::warn!(error = %e, "cannot count the calls by state for /_/metrics");
            let cache = CACHE.lock().expect("no code panics holding this lock");
            return cache.as_ref().map(|(_, c)| c.clone()).unwrap_or_default();
        }
    };
    let counts: Counts = STATES
        .iter()
        .map(|state| {
            let n = (counted.iter())
                .filter(|(s, _)| s == state)
                .map(|(_, n)| *n)
                .sum();
            (state.as_str(), n)
        })
        .collect();
    *CACHE.lock().expect("no code panics holding this lock") =
        Some((Instant::now(), counts.clone()));
    counts
}
