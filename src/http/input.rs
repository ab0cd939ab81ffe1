//! Reading a call's input off an HTTP request: the body within its limit,
//! then translation into arguments.

use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use http::{HeaderValue, Method, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use std::sync::Arc;

use super::problem::ApiError;
use super::state::AppState;
use crate::invocation::ClassCall;
use crate::registry::Function;
use crate::translate::{self, Arguments, InputRules};

/// A class method's call: its class and the values of the class's
/// parameters, from the query (`?size=large`; a missing one is empty).
/// `None` for a function.
pub fn class_call(
    function: &Function,
    query: Option<&str>,
) -> Result<Option<Arc<ClassCall>>, ApiError> {
    let Some(of) = &function.class else {
        return Ok(None);
    };
    let mut values: Vec<Option<String>> = vec![None; of.parameters.len()];
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if let Some(i) = of.parameters.iter().position(|name| *name == key) {
            if values[i].is_some() {
                return Err(ApiError::InvalidArguments(format!(
                    "the class parameter '{key}' is given twice"
                )));
            }
            values[i] = Some(value.into_owned());
        }
    }
    let values = values.into_iter().map(Option::unwrap_or_default).collect();
    Ok(function.class_call(values))
}

/// The query without a class's parameter keys, which never become
/// keyword arguments.
pub fn without_parameters(function: &Function, query: &str) -> String {
    let Some(of) = function
        .class
        .as_ref()
        .filter(|of| !of.parameters.is_empty())
    else {
        return query.to_owned();
    };
    let mut kept = form_urlencoded::Serializer::new(String::new());
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if !of.parameters.iter().any(|name| *name == key) {
            kept.append_pair(&key, &value);
        }
    }
    kept.finish()
}

/// The arguments of a call: query string, and the body for methods other
/// than `GET`. Refuses bad input before anything runs or is stored.
pub async fn arguments(
    state: &AppState,
    function: &Function,
    request: Request,
) -> Result<Arguments, ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("(not text)").to_owned());
    let query = request
        .uri()
        .query()
        .map(|query| without_parameters(function, query));
    let body = if request.method() == Method::GET {
        Bytes::new()
    } else {
        let (parts, body) = request.into_parts();
        read_body(
            parts.headers.get(header::CONTENT_LENGTH),
            body,
            body_limit(state, function),
        )
        .await?
    };
    let rules = input_rules(state, function);
    Ok(translate::arguments(
        content_type.as_deref(),
        &body,
        query.as_deref(),
        &rules,
    )?)
}

/// How `function`'s input is read: the JSON depth limit and its schema.
pub fn input_rules<'a>(state: &AppState, function: &'a Function) -> InputRules<'a> {
    InputRules {
        max_depth: state.max_json_depth,
        schema: function
            .schema
            .as_ref()
            .zip(function.spec.input_schema.as_ref()),
    }
}

/// The error a request body yields when the client stalls it (no bytes
/// for `body_read_timeout`, or below `body_min_rate`): the listener's
/// body wrapper raises it, handlers answer `408 request_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body stalled")]
pub struct BodyStalled;

/// True when `error` (a body's error, however boxed) is a stalled body.
pub fn is_stalled(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.is::<BodyStalled>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// The largest body `function` takes: its own `max_body`, else the server's.
pub fn body_limit(state: &AppState, function: &Function) -> u64 {
    function.spec.max_body.unwrap_or(state.max_body)
}

/// Refuses any method but GET and HEAD, as the read-only routes under
/// `/_/` do.
pub fn only_get(method: &Method) -> Result<(), ApiError> {
    match *method {
        Method::GET | Method::HEAD => Ok(()),
        _ => Err(ApiError::MethodNotAllowed {
            allow: "GET, HEAD".to_owned(),
        }),
    }
}

/// Refuses a method `function` does not allow (its `methods`), as its
/// sync calls, passthrough requests and their spawns with
/// `Prefer: respond-async` do.
pub fn check_method(function: &Function, method: &Method) -> Result<(), ApiError> {
    if !function.spec.allows(method) {
        return Err(ApiError::MethodNotAllowed {
            allow: function.spec.allow_header(),
        });
    }
    Ok(())
}

/// Refuses a request for a passthrough function that the function would
/// not take, whether it is forwarded now or spawned: a method it does not
/// allow, a path suffix with a dot-segment, a declared body over its
/// limit. Nothing of the body is read yet; returns the body's limit.
pub fn check_passthrough(
    state: &AppState,
    function: &Function,
    suffix: &str,
    request: &Request,
) -> Result<u64, ApiError> {
    check_method(function, request.method())?;
    check_suffix(suffix)?;
    let limit = body_limit(state, function);
    check_declared_length(request.headers().get(header::CONTENT_LENGTH), limit)?;
    Ok(limit)
}

/// Refuses a body whose `Content-Length` is over `limit`, before any of it
/// is read or forwarded.
pub fn check_declared_length(
    content_length: Option<&HeaderValue>,
    limit: u64,
) -> Result<(), ApiError> {
    let declared = content_length
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit => Err(ApiError::PayloadTooLarge { limit }),
        _ => Ok(()),
    }
}

/// Reads a body, refusing it as soon as it passes `limit` bytes (at once
/// when its `Content-Length` says it will).
pub async fn read_body(
    content_length: Option<&HeaderValue>,
    body: Body,
    limit: u64,
) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::PayloadTooLarge { limit };
    check_declared_length(content_length, limit)?;
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) if is_stalled(e.as_ref()) => Err(ApiError::RequestTimeout),
        Err(e) => Err(ApiError::InvalidJson(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// The client's error for a passthrough body that could not be read while
/// it was forwarded: a stalled one is `408`, as for any other body.
pub fn body_read_failure(error: &(dyn std::error::Error + 'static)) -> ApiError {
    if is_stalled(error) {
        return ApiError::RequestTimeout;
    }
    ApiError::BadRequest(format!("could not read the request body: {error}"))
}

/// Refuses a passthrough path suffix with a dot-segment (`.` or `..`,
/// RFC 3986 section 3.3), percent-encoded dots (`%2e`) counting as dots
/// and encoded slashes and backslashes (`%2F`, `%5C`, `\`) as segment
/// ends: a backend that decodes or normalises paths would otherwise serve
/// something outside the function's prefix. Refused, not normalised: the
/// gateway never forwards a path other than the one the client sent.
pub fn check_suffix(suffix: &str) -> Result<(), ApiError> {
    if suffix_has_dot_segment(suffix) {
        return Err(ApiError::BadRequest(
            "the path has a '.' or '..' segment (percent-encoded or not); send it normalised"
                .to_owned(),
        ));
    }
    Ok(())
}

fn suffix_has_dot_segment(suffix: &str) -> bool {
    enum Token {
        Dot,
        Other,
        SegmentEnd,
    }
    let mut rest = suffix.as_bytes();
    // Dots in the segment so far; None once it holds anything else.
    let mut dots = Some(0u8);
    loop {
        let (token, width) = match rest {
            [] => (Token::SegmentEnd, 0),
            [b'/' | b'\\', ..] => (Token::SegmentEnd, 1),
            [b'%', b'2', b'f' | b'F', ..] | [b'%', b'5', b'c' | b'C', ..] => (Token::SegmentEnd, 3),
            [b'.', ..] => (Token::Dot, 1),
            [b'%', b'2', b'e' | b'E', ..] => (Token::Dot, 3),
            _ => (Token::Other, 1),
        };
        match token {
            Token::Dot => dots = dots.map(|n| n.saturating_add(1)),
            Token::Other => dots = None,
            Token::SegmentEnd => {
                if matches!(dots, Some(1 | 2)) {
                    return true;
                }
                if rest.is_empty() {
                    return false;
                }
                dots = Some(0);
            }
        }
        rest = &rest[width..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_found_however_written() {
        for bad in [
            "/..",
            "/../headers",
            "/pt/../../headers",
            "/./x",
            "/x/.",
            "/%2e%2e/x",
            "/%2E./x",
            "/.%2e",
            "/a/%2e",
            "/..%2fheaders",
            "/..%5Cheaders",
            "/..\\headers",
            "/x%2F..%2Fy",
        ] {
            assert!(suffix_has_dot_segment(bad), "{bad:?} passed");
            assert!(matches!(check_suffix(bad), Err(ApiError::BadRequest(_))));
        }
        for good in [
            "",
            "/",
            "/headers",
            "/a/b/",
            "/...",
            "/.well-known/x",
            "/a..b",
            "/x.",
            "/%2e%2e%2e",
            "/a%2ex",
            "//x",
        ] {
            assert!(!suffix_has_dot_segment(good), "{good:?} refused");
        }
    }

    #[test]
    fn declared_lengths_over_the_limit_are_refused() {
        let length = |n: &str| HeaderValue::from_str(n).unwrap();
        assert!(check_declared_length(Some(&length("10")), 10).is_ok());
        assert!(check_declared_length(None, 10).is_ok());
        assert!(matches!(
            check_declared_length(Some(&length("11")), 10),
            Err(ApiError::PayloadTooLarge { limit: 10 })
        ));
    }
}
