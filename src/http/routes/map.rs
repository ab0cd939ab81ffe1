//! Fan-out: `POST /{app}/{function}/map` (and a class method's
//! `/{app}/{class}/{method}/map`): one call per input, each answered on a
//! line of its own as it ends. This file checks the request and shapes the
//! answer; `map/inputs.rs` reads the inputs (a JSON array, or NDJSON lines
//! as they stream in), `map/run.rs` runs them within the function's
//! concurrency and a bounded window, `map/lines.rs` writes the lines;
//! `map/spawn.rs` stores a spawned map (`/map/spawn`) and reads it back.

mod inputs;
mod lines;
mod run;
pub mod spawn;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use crate::backend::{Backend, StreamedAnswer};
use crate::http::admission::Caller;
use crate::http::input;
use crate::http::problem::ApiError;
use crate::http::state::AppState;
use crate::invocation::Trace;
use crate::registry::Function;

use inputs::Inputs;
use lines::Framing;
use run::{MapCall, Order};

/// The query key that picks the order of the lines; never a keyword
/// argument.
const ORDER_KEY: &str = "order";

/// Starts a map of `function` over the request's inputs. Whatever is
/// wrong with the request as a whole (method, query, content type, a JSON
/// body that is not an array, too many inputs in it) is refused here;
/// past this the answer is `200` and each input's own failure is its line.
pub async fn map(
    state: &Arc<AppState>,
    function: &Arc<Function>,
    backend: &Arc<dyn Backend>,
    caller: &Caller,
    trace: &Trace,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    if request.method() != Method::POST {
        return Err(ApiError::MethodNotAllowed {
            allow: "POST".to_owned(),
        });
    }
    let query = request.uri().query();
    let (order, rest) = order_and_rest(query)?;
    let class = input::class_call(function, query)?;
    let query = rest.map(|rest| input::without_parameters(function, &rest));
    let framing = Framing::accepted(request.headers());
    let inputs = Inputs::read(state, function, request).await?;
    let call = MapCall {
        state: state.clone(),
        function: function.clone(),
        backend: backend.clone(),
        caller: caller.clone(),
        trace: trace.clone(),
        class,
        query,
    };
    let body = run::start(call, inputs, order, framing, window(function));
    Ok(answer(framing, body))
}

/// How many inputs may be started and not yet written at once. Twice the
/// function's concurrency: the map can hold at most that many slots (less
/// the quarter kept for sync callers), so every slot it may use stays busy
/// while an input that runs long holds the lines after it back for one more
/// round of the others; a wider window would only hold more finished
/// results in memory. In completion order it bounds the inputs waiting
/// for a slot.
fn window(function: &Function) -> usize {
    function.spec.concurrency.saturating_mul(2).max(2)
}

/// `order` from the query (`input`, the default, or `completion`), and the
/// query without it (`None` when nothing is left).
fn order_and_rest(query: Option<&str>) -> Result<(Order, Option<String>), ApiError> {
    let Some(query) = query else {
        return Ok((Order::Input, None));
    };
    let mut order = None;
    let mut rest = form_urlencoded::Serializer::new(String::new());
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key != ORDER_KEY {
            rest.append_pair(&key, &value);
            continue;
        }
        if order.is_some() {
            return Err(ApiError::BadRequest(
                "the query gives 'order' twice".to_owned(),
            ));
        }
        order = Some(match &*value {
            "input" => Order::Input,
            "completion" => Order::Completion,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "order must be 'input' or 'completion', not '{other}'"
                )));
            }
        });
    }
    let Some(order) = order else {
        return Ok((Order::Input, Some(query.to_owned())));
    };
    let rest = rest.finish();
    Ok((order, (!rest.is_empty()).then_some(rest)))
}

/// The `200` whose body is the map's lines, streamed as they come.
fn answer(framing: Framing, body: run::MapBody) -> Response<Body> {
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = StatusCode::OK;
    let headers: &mut HeaderMap = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(framing.content_type()),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Not held against the result buffers: lines go out as the client
    // reads them, and the map waits for a slow reader.
    response.extensions_mut().insert(StreamedAnswer);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_taken_out_of_the_query() {
        let (order, rest) = order_and_rest(Some("order=completion&y=2")).unwrap();
        assert_eq!(order, Order::Completion);
        assert_eq!(rest.as_deref(), Some("y=2"));
        let (order, rest) = order_and_rest(Some("y=%20")).unwrap();
        assert_eq!(order, Order::Input);
        assert_eq!(rest.as_deref(), Some("y=%20"));
        let (order, rest) = order_and_rest(Some("order=input")).unwrap();
        assert_eq!((order, rest), (Order::Input, None));
        assert_eq!(order_and_rest(None).unwrap(), (Order::Input, None));
    }

    #[test]
    fn a_bad_or_repeated_order_is_refused() {
        for query in ["order=random", "order=input&order=completion", "order="] {
            assert!(
                matches!(order_and_rest(Some(query)), Err(ApiError::BadRequest(_))),
                "{query}"
            );
        }
    }
}
