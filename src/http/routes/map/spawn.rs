//! A spawned map: `POST /{app}/{function}/map/spawn` (and a class
//! method's). Every input is read and translated first (a JSON array, or
//! NDJSON lines, the whole body within the function's body limit and
//! `max_map_inputs`); then the map and every input are stored in one
//! write before the `202`. An input that fails translation is stored as
//! already failed, with its `400` problem: the map itself is accepted.
//!
//! `GET /calls/{id}` of a map is answered here too: its progress (`202`)
//! until every input has ended, then its lines in input order (`200`),
//! read from the store a page at a time.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Method, Response, StatusCode, header};

use super::inputs::Inputs;
use super::lines::{self, Framing, Writer};
use super::run::Order;
use crate::config::DEFAULT_TIMEOUT;
use crate::http::admission::Caller;
use crate::http::problem::ApiError;
use crate::http::respond::{insert_call_id, json_response};
use crate::http::spawning::{self, SpawnAsks, accepted_response, digest};
use crate::http::state::AppState;
use crate::http::{base_url, input};
use crate::invocation::Trace;
use crate::registry::{Function, Lookup};
use crate::store::map::{MapInput, MapProgress, StoredInput};
use crate::store::{CallRecord, CallState, CallStore, FailureKind, Outcome};
use crate::translate;

/// How many inputs a finished map's answer reads from the store at once.
const PAGE: usize = 256;

/// How long a client polling a running map is asked to wait, in seconds.
const POLL_AFTER_SECONDS: u32 = 1;

/// Stores a map of `function` over the request's inputs and answers `202`
/// with where to find it.
pub async fn spawn(
    state: &Arc<AppState>,
    function: &Arc<Function>,
    caller: &Caller,
    trace: &Trace,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    if request.method() != Method::POST {
        return Err(ApiError::MethodNotAllowed {
            allow: "POST".to_owned(),
        });
    }
    let asks = SpawnAsks::read(state, request.headers())?;
    let base = base_url::external_base(&request);
    let query = request.uri().query();
    let (order, rest) = super::order_and_rest(query)?;
    if order != Order::Input {
        return Err(ApiError::BadRequest(
            "a spawned map's lines are read in input order; order=completion is for /map"
                .to_owned(),
        ));
    }
    let class = input::class_call(function, query)?;
    let parameters = class.map(|class| class.parameters.clone());
    let query = rest.map(|rest| input::without_parameters(function, &rest));
    let inputs = read_all(state, function, query.as_deref(), trace, request).await?;
    let digest = {
        let mut parts: Vec<&[u8]> = vec![b"map", parameters.as_deref().unwrap_or("").as_bytes()];
        for input in &inputs {
            match input {
                MapInput::Arguments { args, kwargs } => {
                    parts.extend([args.as_bytes(), kwargs.as_bytes()]);
                }
                MapInput::Refused(problem) => parts.extend([b"refused".as_slice(), problem]),
            }
        }
        digest(&parts)
    };
    let options = asks.options(function, caller, digest, parameters);
    let accepted = state
        .calls
        .spawn_map(function, inputs, options)
        .await
        .map_err(|e| spawning::refused(e, "map"))?;
    Ok(accepted_response(&accepted, &base))
}

/// Every input of the request, each translated as a call's body is (with
/// the map's query as keyword arguments): its arguments, or its problem.
/// The whole body is read first, within the function's body limit, so an
/// NDJSON body is bounded as an array is; more than `max_map_inputs`
/// inputs refuse the map (`413`).
async fn read_all(
    state: &AppState,
    function: &Function,
    query: Option<&str>,
    trace: &Trace,
    request: Request,
) -> Result<Vec<MapInput>, ApiError> {
    let (parts, body) = request.into_parts();
    let limit = input::body_limit(state, function);
    let body = input::read_body(parts.headers.get(header::CONTENT_LENGTH), body, limit).await?;
    let request = Request::from_parts(parts, Body::from(body));
    let mut inputs = Inputs::read(state, function, request).await?;
    let rules = input::input_rules(state, function);
    let mut all = Vec::new();
    while let Some(text) = inputs.next().await {
        let arguments = match text {
            Err(e @ (ApiError::TooManyInputs { .. } | ApiError::RequestTimeout)) => return Err(e),
            Err(e) => Err(e),
            Ok(text) => translate::arguments(Some("application/json"), &text, query, &rules)
                .map_err(ApiError::from),
        };
        all.push(match arguments {
            Ok(arguments) => MapInput::Arguments {
                args: arguments.args,
                kwargs: arguments.kwargs,
            },
            Err(error) => MapInput::Refused(error.problem_json(&trace.request_id).to_vec()),
        });
    }
    Ok(all)
}

/// `GET /calls/{id}` of a map (`record.map_inputs` is set): `410` once
/// cancelled, its lines once every input has ended, else its progress.
pub async fn answer(state: &AppState, record: CallRecord) -> Result<Response<Body>, ApiError> {
    let store = state.calls.store().clone();
    let unavailable = |e| {
        tracing::error!(call_id = %record.id, error = %e, "cannot read a spawned map");
        ApiError::StoreUnavailable
    };
    match record.state {
        CallState::Cancelled => Err(ApiError::CallCancelled { id: record.id }),
        state_now if state_now.is_finished() => {
            let registry = state.registry.current();
            let (timeout, expose) = match registry.lookup_key(&record.app, &record.function) {
                Lookup::Found(function) => (function.spec.timeout, function.spec.expose_errors),
                Lookup::NoApp | Lookup::NoFunction => (DEFAULT_TIMEOUT, false),
            };
            let framing = Framing::Ndjson;
            let reader = LineReader {
                store,
                id: record.id.clone(),
                next: 0,
                writer: Writer::new(framing),
                timeout,
                expose,
                done: false,
            };
            let mut response = Response::new(Body::from_stream(futures_util::stream::unfold(
                reader,
                LineReader::next_page,
            )));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(framing.content_type()),
            );
            insert_call_id(&mut response, &record.id);
            Ok(response)
        }
        _ => {
            let progress = store
                .map_progress(record.id.clone())
                .await
                .map_err(unavailable)?;
            Ok(progress_response(&record.id, &progress))
        }
    }
}

/// A running map's `202`: `status` is `pending` until one of its inputs
/// has run or been refused.
fn progress_response(id: &str, progress: &MapProgress) -> Response<Body> {
    let started = progress.running + progress.succeeded + progress.failed > 0;
    let body = serde_json::json!({
        "call_id": id,
        "status": if started { "running" } else { "pending" },
        "inputs": progress.inputs,
        "succeeded": progress.succeeded,
        "failed": progress.failed,
        "pending": progress.open(),
    });
    let mut response = json_response(StatusCode::ACCEPTED, body.to_string());
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(POLL_AFTER_SECONDS));
    insert_call_id(&mut response, id);
    response
}

/// Reads a finished map's lines from the store, a page at a time, as the
/// client takes them.
struct LineReader {
    store: Arc<dyn CallStore>,
    id: String,
    next: u64,
    writer: Writer,
    timeout: std::time::Duration,
    expose: bool,
    done: bool,
}

impl LineReader {
    /// The next page of framed lines; after the last, what ends the body.
    async fn next_page(mut self) -> Option<(Result<Bytes, std::io::Error>, LineReader)> {
        if self.done {
            return None;
        }
        let page = match self.store.map_page(self.id.clone(), self.next, PAGE).await {
            Ok(page) => page,
            Err(e) => {
                tracing::error!(call_id = %self.id, error = %e, "cannot read a spawned map's lines; its answer breaks off");
                self.done = true;
                return Some((Err(std::io::Error::other(e.to_string())), self));
            }
        };
        let mut out = BytesMut::new();
        for input in &page {
            out.put_slice(&self.writer.item(self.line(input)));
        }
        self.next = page.last().map_or(self.next, |input| input.index + 1);
        if page.len() < PAGE {
            self.done = true;
            if let Some(end) = self.writer.end() {
                out.put_slice(&end);
            }
        }
        Some((Ok(out.freeze()), self))
    }

    /// One input's line, as a sync map writes it.
    fn line(&self, input: &StoredInput) -> Bytes {
        if let Some(problem) = &input.problem {
            let mut out = BytesMut::with_capacity(problem.len() + 32);
            out.put_slice(b"{\"index\":");
            out.put_slice(input.index.to_string().as_bytes());
            out.put_slice(b",\"error\":");
            out.put_slice(problem);
            out.put_u8(b'}');
            return out.freeze();
        }
        let outcome = match &input.outcome {
            Some(Outcome::Succeeded(body) | Outcome::Answered { body, .. }) => {
                Ok(Bytes::copy_from_slice(body))
            }
            Some(Outcome::Failed {
                kind: FailureKind::Function,
                error_type,
                message,
            }) => Err(ApiError::FunctionError {
                kind: error_type.clone(),
                message: message.clone(),
            }
            .exposing(self.expose)),
            Some(Outcome::Failed {
                kind: FailureKind::Backend,
                error_type,
                ..
            }) if error_type == "backend_error" => Err(ApiError::BackendError),
            Some(Outcome::Failed { error_type, .. }) => Err(ApiError::InstanceInitFailed {
                kind: error_type.clone(),
            }),
            Some(Outcome::TimedOut) => Err(ApiError::FunctionTimeout {
                timeout: self.timeout,
            }),
            None => Err(ApiError::CallCancelled {
                id: self.id.clone(),
            }),
        };
        lines::line(input.index as usize, outcome, &self.id)
    }
}
