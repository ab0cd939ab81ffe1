//! What every operation of the document refers to: the problem details
//! schema, one response per error status with the `code`s it carries, the
//! bodies of the gateway's own answers (a spawn's 202, a call's progress,
//! a map's lines) and the security schemes.

use serde_json::{Map, Value, json};

use super::Settings;

/// Every error status the gateway answers, the name of its response in
/// `components.responses`, and the `code`s a problem of that status
/// carries (`http/problem.rs` maps each error to one of these; a unit
/// test below holds the two together).
pub const ERRORS: &[(u16, &str, &[&str])] = &[
    (
        400,
        "BadRequest",
        &["invalid_json", "invalid_arguments", "bad_request"],
    ),
    (401, "Unauthorized", &["unauthorized"]),
    (403, "Forbidden", &["forbidden"]),
    (
        404,
        "NotFound",
        &["app_not_found", "function_not_found", "call_not_found"],
    ),
    (405, "MethodNotAllowed", &["method_not_allowed"]),
    (408, "RequestTimeout", &["request_timeout"]),
    (409, "Conflict", &["call_finished", "not_workable"]),
    (410, "Gone", &["call_cancelled"]),
    (413, "PayloadTooLarge", &["payload_too_large"]),
    (415, "UnsupportedMediaType", &["unsupported_media_type"]),
    (422, "IdempotencyMismatch", &["idempotency_mismatch"]),
    (429, "RateLimited", &["rate_limited"]),
    (431, "HeadersTooLarge", &["headers_too_large"]),
    (500, "FunctionError", &["function_error", "internal_error"]),
    (502, "BackendError", &["backend_error"]),
    (503, "Overloaded", &["overloaded"]),
    (504, "FunctionTimeout", &["function_timeout"]),
    (508, "LoopDetected", &["loop_detected"]),
];

/// What each error status means for a client, for its response's
/// description.
fn meaning(status: u16) -> &'static str {
    match status {
        400 => {
            "The body is not readable JSON, or the arguments break the function's input schema (the detail names the JSON Pointer), or a header or query parameter is malformed."
        }
        401 => "Credentials are missing or not valid.",
        403 => "The credentials are valid but their scopes do not grant this call.",
        404 => {
            "No such app, function or call (a call also expires, and someone else's call is not found)."
        }
        405 => "This route does not take this method; `Allow` lists those it takes.",
        408 => "The request body stalled past `body_read_timeout`.",
        409 => "The call already ended, so it cannot be cancelled.",
        410 => "The call was cancelled.",
        413 => "The body is over the size limit, or a map has more inputs than `max_map_inputs`.",
        415 => "The body is not JSON (`application/json` or any `+json`).",
        422 => "This `Idempotency-Key` was used before with another request.",
        429 => "Too many requests from this caller; retry after `Retry-After` seconds.",
        431 => "The request headers are over `max_header_bytes`.",
        500 => "The function ran and failed: `error` holds its error type and message.",
        502 => {
            "The function's backend is unreachable, crashed, or answered something that is not a result."
        }
        503 => {
            "The function is at its concurrency and queue limits, or the call store cannot take the request now; retry after `Retry-After` seconds."
        }
        504 => "The function ran past its timeout.",
        508 => "Function-to-function calls nested past `max_call_depth`.",
        _ => "An error.",
    }
}

/// `#/components/responses/{name}` of an error status.
pub fn error_ref(status: u16) -> Value {
    let name = ERRORS
        .iter()
        .find(|(s, _, _)| *s == status)
        .map(|(_, name, _)| *name)
        .expect("every status an operation lists is in ERRORS");
    json!({"$ref": format!("#/components/responses/{name}")})
}

/// The error responses of `statuses`, and `429` under `[rate_limit]`,
/// into an operation's `responses`.
pub fn add_errors(settings: &Settings, statuses: &[u16], responses: &mut Map<String, Value>) {
    for status in statuses {
        responses.insert(status.to_string(), error_ref(*status));
    }
    if settings.rate_limited {
        responses.insert("429".into(), error_ref(429));
    }
}

/// A `$ref` to `#/components/schemas/{name}`.
pub fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// A response header, with its schema.
pub fn header(description: &str, schema: Value, required: bool) -> Value {
    json!({"description": description, "required": required, "schema": schema})
}

pub fn retry_after() -> Value {
    header(
        "Seconds to wait before asking again.",
        json!({"type": "integer", "minimum": 1}),
        true,
    )
}

pub fn location(description: &str) -> Value {
    header(description, json!({"type": "string"}), true)
}

pub fn call_id_header() -> Value {
    header(
        "The call's id: `GET /calls/{call_id}` finds it again.",
        json!({"type": "string"}),
        false,
    )
}

/// `components`: schemas, responses and, with `[auth]`, security schemes.
pub fn components(settings: &Settings, input_schemas: Map<String, Value>) -> Value {
    let mut schemas = schemas();
    schemas.extend(input_schemas);
    let mut components = json!({
        "schemas": schemas,
        "responses": responses(),
    });
    if let Some(schemes) = security_schemes(settings) {
        components["securitySchemes"] = schemes;
    }
    components
}

/// The security schemes `[auth]` accepts, by name; `None` without `[auth]`.
/// Both are bearer credentials in `Authorization`: the gateway tells a
/// JWT (three dot-separated parts) from an API key by its form.
fn security_schemes(settings: &Settings) -> Option<Value> {
    let auth = settings.auth.as_ref()?;
    let mut schemes = Map::new();
    if auth.jwt {
        schemes.insert(
            "jwt".into(),
            json!({
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "A JWT whose `scope` claim (space-separated) holds `invoke:{app}/{function}`, `invoke:{app}/*` or `invoke:*` (a class method's scope names its class).",
            }),
        );
    }
    if auth.api_keys {
        schemes.insert(
            "apiKey".into(),
            json!({
                "type": "http",
                "scheme": "bearer",
                "description": "An API key of `[[auth.api_keys]]`, sent as `Authorization: Bearer <key>`; its scopes are configured with it.",
            }),
        );
    }
    Some(Value::Object(schemes))
}

/// The `security` of an operation that needs `scope`: any one scheme of
/// `[auth]` whose credentials grant it. `None` without `[auth]`.
pub fn security(settings: &Settings, scope: &str) -> Option<Value> {
    let auth = settings.auth.as_ref()?;
    let mut any = Vec::new();
    if auth.jwt {
        any.push(json!({"jwt": [scope]}));
    }
    if auth.api_keys {
        any.push(json!({"apiKey": [scope]}));
    }
    Some(Value::Array(any))
}

/// The `security` of the spawned calls' routes: anyone may ask (a public
/// function's call is read by its id alone), and credentials make their
/// owner's calls readable. `None` without `[auth]`.
pub fn optional_security(settings: &Settings) -> Option<Value> {
    let auth = settings.auth.as_ref()?;
    let mut any = vec![json!({})];
    if auth.jwt {
        any.push(json!({"jwt": []}));
    }
    if auth.api_keys {
        any.push(json!({"apiKey": []}));
    }
    Some(Value::Array(any))
}

fn responses() -> Value {
    let mut responses = Map::new();
    for (status, name, codes) in ERRORS {
        let problem = json!({
            "allOf": [schema_ref("Problem")],
            "properties": {
                "status": {"const": status},
                "code": {"enum": codes},
            },
        });
        let mut response = json!({
            "description": meaning(*status),
            "content": {"application/problem+json": {"schema": problem}},
        });
        let headers = match status {
            401 | 403 => Some(json!({"WWW-Authenticate": header(
                "The Bearer challenge (RFC 6750).",
                json!({"type": "string"}),
                true,
            )})),
            405 => Some(json!({"Allow": header(
                "The methods this route takes.",
                json!({"type": "string"}),
                true,
            )})),
            429 | 503 => Some(json!({"Retry-After": retry_after()})),
            _ => None,
        };
        if let Some(headers) = headers {
            response["headers"] = headers;
        }
        responses.insert((*name).into(), response);
    }
    Value::Object(responses)
}

/// The bodies of the gateway's own answers.
fn schemas() -> Map<String, Value> {
    let codes: Vec<&str> = ERRORS
        .iter()
        .flat_map(|(_, _, codes)| codes.iter().copied())
        .collect();
    let call_id = json!({"type": "string", "pattern": "^fc-[A-Za-z0-9_-]+$"});
    let count = json!({"type": "integer", "minimum": 0});
    let schemas = json!({
        "Problem": {
            "description": "RFC 9457 problem details, with a stable machine-readable `code` and the request's id.",
            "type": "object",
            "required": ["type", "title", "status", "code", "detail", "request_id"],
            "properties": {
                "type": {"type": "string", "description": "Always `about:blank`: `code` says what happened."},
                "title": {"type": "string", "description": "The status's reason phrase."},
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "code": {"type": "string", "enum": codes},
                "detail": {"type": "string"},
                "request_id": {"type": "string", "description": "Also in the `X-Request-Id` header and the gateway's log."},
                "error": {
                    "description": "A function's own error (`function_error` only). Its message is withheld when the function has `expose_errors = false`.",
                    "type": "object",
                    "required": ["type", "message"],
                    "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
        "AnyJson": {
            "description": "Any JSON value: the function's result as it returned it.",
        },
        "SpawnAccepted": {
            "type": "object",
            "required": ["call_id", "status", "status_url"],
            "properties": {
                "call_id": call_id,
                "status": {
                    "description": "`pending` for a new call; a spawn that repeats an `Idempotency-Key` gets the first call, in whatever state it is now.",
                    "type": "string",
                    "enum": ["pending", "running", "succeeded", "failed", "timed_out", "cancelled"],
                },
                "status_url": {"type": "string", "description": "The absolute URL of `GET /calls/{call_id}`."},
            },
        },
        "CallProgress": {
            "type": "object",
            "required": ["call_id", "status", "created_at", "attempt"],
            "properties": {
                "call_id": call_id,
                "status": {"type": "string", "enum": ["pending", "running"]},
                "created_at": {"type": "string", "description": "RFC 3339, UTC."},
                "attempt": {"type": "integer", "minimum": 0, "description": "The run it is on (1 first; `retries` runs it again)."},
                "parent_call_id": {"type": "string", "description": "Set when a function's call made this one with its call token."},
            },
        },
        "MapProgress": {
            "type": "object",
            "required": ["call_id", "status", "inputs", "succeeded", "failed", "pending"],
            "properties": {
                "call_id": call_id,
                "status": {"type": "string", "enum": ["pending", "running"]},
                "inputs": count,
                "succeeded": count,
                "failed": count,
                "pending": count,
            },
        },
        "MapLine": {
            "description": "One input's outcome: its `result`, or its `error` as problem details.",
            "type": "object",
            "required": ["index"],
            "properties": {
                "index": {"type": "integer", "minimum": 0, "description": "The input's position in the request."},
                "result": {},
                "error": schema_ref("Problem"),
            },
            "oneOf": [{"required": ["result"]}, {"required": ["error"]}],
        },
        "Redirected": {
            "description": "A sync call that ran past the sync wait goes on as a spawned call.",
            "type": "object",
            "required": ["call_id", "status"],
            "properties": {"call_id": call_id, "status": {"const": "running"}},
        },
        "Cancelled": {
            "type": "object",
            "required": ["call_id", "status"],
            "properties": {"call_id": call_id, "status": {"const": "cancelled"}},
        },
    });
    match schemas {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::problem::ApiError;
    use std::time::Duration;

    /// One error of every variant: a variant added to `ApiError` belongs
    /// here too, and its status and code in `ERRORS`.
    fn every_error() -> Vec<ApiError> {
        let s = || String::new();
        vec![
            ApiError::AppNotFound { app: s() },
            ApiError::FunctionNotFound {
                app: s(),
                function: s(),
            },
            ApiError::CallNotFound { id: s() },
            ApiError::CallCancelled { id: s() },
            ApiError::CallFinished { state: "succeeded" },
            ApiError::IdempotencyMismatch,
            ApiError::Unauthorized { description: None },
            ApiError::Forbidden { scope: s() },
            ApiError::NotInMayCall {
                caller: s(),
                target: s(),
            },
            ApiError::LoopDetected { max_depth: 8 },
            ApiError::RateLimited {
                retry_after: Duration::from_secs(1),
            },
            ApiError::MethodNotAllowed { allow: s() },
            ApiError::BadRequest(s()),
            ApiError::InvalidJson(s()),
            ApiError::InvalidArguments(s()),
            ApiError::UnsupportedMediaType(s()),
            ApiError::HeadersTooLarge { limit: 1 },
            ApiError::PayloadTooLarge { limit: 1 },
            ApiError::TooManyInputs { limit: 1 },
            ApiError::InputTooLarge { limit: 1 },
            ApiError::FunctionError {
                kind: s(),
                message: s(),
            },
            ApiError::BackendError,
            ApiError::NotWorkable(s()),
            ApiError::InstanceInitFailed { kind: s() },
            ApiError::Overloaded,
            ApiError::FunctionTimeout {
                timeout: Duration::from_secs(1),
            },
            ApiError::RequestTimeout,
            ApiError::StoreUnavailable,
            ApiError::Internal,
        ]
    }

    #[test]
    fn every_error_the_gateway_answers_is_documented_with_its_code() {
        for error in every_error() {
            let (status, code) = error.status_and_code();
            let documented = ERRORS
                .iter()
                .find(|(s, _, _)| *s == status.as_u16())
                .unwrap_or_else(|| panic!("{status} of {error:?} is not in ERRORS"));
            assert!(documented.2.contains(&code), "{code} under {status}");
        }
    }

    #[test]
    fn every_error_response_is_problem_json_narrowed_to_its_codes() {
        let responses = responses();
        let not_found = &responses["NotFound"];
        let schema = &not_found["content"]["application/problem+json"]["schema"];
        assert_eq!(schema["properties"]["status"]["const"], 404);
        assert_eq!(
            schema["properties"]["code"]["enum"],
            json!(["app_not_found", "function_not_found", "call_not_found"])
        );
        assert!(responses["MethodNotAllowed"]["headers"]["Allow"]["required"] == true);
        assert!(responses["Overloaded"]["headers"]["Retry-After"].is_object());
    }
}
