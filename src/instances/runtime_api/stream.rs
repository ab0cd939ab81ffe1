//! The Runtime API's streaming response mode: a runtime POSTs
//! `invocation/{id}/response` with `Lambda-Runtime-Function-Response-Mode:
//! streaming` and a chunked body whose bytes it writes as the handler
//! produces them; an error after the first bytes comes as the trailers
//! `Lambda-Runtime-Function-Error-Type` and
//! `Lambda-Runtime-Function-Error-Body` (base64 of the usual
//! `{"errorType", "errorMessage"}` report).
//!
//! fngate reads a streamed body as NDJSON items: a streaming function's
//! call gets each item the moment its line is complete (and a plain
//! response as its one item); any other call gets the streamed bytes whole
//! as its result, as if they had been posted at once.

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::{Mailbox, accepted, error_report, refusal, unknown_call};
use crate::backend::stream::{Framing, ItemDecoder};
use crate::backend::{BackendError, result_json};

/// `POST invocation/{id}/response` of a streaming call, or a streamed one.
pub(super) async fn respond(
    mailbox: &Mailbox,
    id: &str,
    request: Request<Incoming>,
    streamed: bool,
) -> Response<Full<Bytes>> {
    if streamed {
        mailbox.streaming_in(id);
    }
    let items = mailbox.take_items(id);
    match (items, streamed) {
        (Some(items), true) => stream_items(mailbox, id, request.into_body(), items).await,
        (Some(items), false) => one_item(mailbox, id, request.into_body(), items).await,
        (None, _) => whole(mailbox, id, request.into_body()).await,
    }
}

/// A streamed body read item by item, each sent on as its line ends; the
/// call ends with the body (or with the error its trailers report).
async fn stream_items(
    mailbox: &Mailbox,
    id: &str,
    mut body: Incoming,
    items: mpsc::Sender<Bytes>,
) -> Response<Full<Bytes>> {
    let mut decoder = ItemDecoder::new(Framing::Lines, mailbox.max_result as u64);
    let mut reported = None;
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                let why = format!("reading the streamed response: {e}");
                mailbox.end(id, Err(BackendError::Crashed(why.clone())));
                return refusal(StatusCode::BAD_REQUEST, "InvalidRequest", &why);
            }
        };
        match frame.into_data() {
            Ok(data) => decoder.push(&data),
            Err(frame) => {
                if let Some(trailers) = frame.trailers_ref() {
                    reported = trailer_error(trailers);
                }
                continue;
            }
        }
        while let Some(item) = decoder.next_item() {
            if let Err(refused) = send(mailbox, id, &items, item).await {
                return refused;
            }
        }
    }
    if reported.is_none() {
        while let Some(item) = decoder.finish() {
            if let Err(refused) = send(mailbox, id, &items, item).await {
                return refused;
            }
        }
    }
    ended(mailbox, id, reported.map_or(Ok(Bytes::new()), Err))
}

/// Sends one item on, waiting while the client is slower than the
/// function; an item that is not JSON ends the call.
async fn send(
    mailbox: &Mailbox,
    id: &str,
    items: &mpsc::Sender<Bytes>,
    item: Result<Bytes, BackendError>,
) -> Result<(), Response<Full<Bytes>>> {
    match item {
        Ok(item) => {
            // The caller left: its instance is being stopped.
            if items.send(item).await.is_err() {
                return Err(unknown_call(id));
            }
            Ok(())
        }
        Err(e) => {
            let why = e.to_string();
            mailbox.end(id, Err(e));
            Err(refusal(StatusCode::BAD_REQUEST, "InvalidResponse", &why))
        }
    }
}

/// A plain response to a streaming call: its result is the one item.
async fn one_item(
    mailbox: &Mailbox,
    id: &str,
    body: Incoming,
    items: mpsc::Sender<Bytes>,
) -> Response<Full<Bytes>> {
    let (result, _) = match read_whole(mailbox, id, body).await {
        Ok(read) => read,
        Err(refused) => return refused,
    };
    match result_json(result) {
        Ok(item) => match send(mailbox, id, &items, Ok(item)).await {
            Ok(()) => ended(mailbox, id, Ok(Bytes::new())),
            Err(refused) => refused,
        },
        Err(e) => ended(mailbox, id, Err(e)),
    }
}

/// A streamed response to a call that does not stream: its bytes, whole,
/// are the result.
async fn whole(mailbox: &Mailbox, id: &str, body: Incoming) -> Response<Full<Bytes>> {
    match read_whole(mailbox, id, body).await {
        Ok((_, Some(error))) => ended(mailbox, id, Err(error)),
        Ok((result, None)) => ended(mailbox, id, result_json(result)),
        Err(refused) => refused,
    }
}

/// The whole body, at most `max_result` bytes, and the error its trailers
/// report.
async fn read_whole(
    mailbox: &Mailbox,
    id: &str,
    body: Incoming,
) -> Result<(Bytes, Option<BackendError>), Response<Full<Bytes>>> {
    match Limited::new(body, mailbox.max_result).collect().await {
        Ok(collected) => {
            let reported = collected.trailers().and_then(trailer_error);
            Ok((collected.to_bytes(), reported))
        }
        Err(e) => {
            let too_large = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            let why = if too_large {
                "the result is larger than the gateway's max_result".to_owned()
            } else {
                format!("reading the result: {e}")
            };
            mailbox.end(id, Err(BackendError::Garbage(why.clone())));
            let status = if too_large {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            Err(refusal(status, "InvalidResponse", &why))
        }
    }
}

fn ended(mailbox: &Mailbox, id: &str, reply: Result<Bytes, BackendError>) -> Response<Full<Bytes>> {
    if mailbox.end(id, reply) {
        accepted()
    } else {
        unknown_call(id)
    }
}

/// The function's error as the trailers of a streamed response report it.
fn trailer_error(trailers: &HeaderMap) -> Option<BackendError> {
    let kind = trailers
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = trailers
        .get("lambda-runtime-function-error-body")
        .and_then(|v| {
            base64::engine::general_purpose::STANDARD
                .decode(v.as_bytes())
                .ok()
        });
    if kind.is_none() && body.is_none() {
        return None;
    }
    let (kind, message) = error_report(&body.unwrap_or_default(), kind);
    Some(BackendError::Function { kind, message })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn error_trailers_are_the_functions_error() {
        let mut trailers = HeaderMap::new();
        trailers.insert(
            "lambda-runtime-function-error-type",
            HeaderValue::from_static("ValueError"),
        );
        let report = br#"{"errorType": "ValueError", "errorMessage": "bad item"}"#;
        let encoded = base64::engine::general_purpose::STANDARD.encode(report);
        trailers.insert(
            "lambda-runtime-function-error-body",
            HeaderValue::from_str(&encoded).unwrap(),
        );
        match trailer_error(&trailers) {
            Some(BackendError::Function { kind, message }) => {
                assert_eq!(
                    (kind.as_str(), message.as_str()),
                    ("ValueError", "bad item")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(trailer_error(&HeaderMap::new()).is_none());
    }
}
