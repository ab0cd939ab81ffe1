//! From an HTTP request's parts to an invocation's arguments: content-type
//! check, strict JSON reading, query parameters as keyword arguments, and
//! input-schema validation. Arguments stay raw JSON text end to end, so
//! numbers reach the backend exactly as the client wrote them.

pub mod json;

use std::borrow::Cow;

use json::{Document, Kind, Rules};

/// Why a request's input cannot become an invocation.
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error("{0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidArguments(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
}

/// Positional and keyword arguments as JSON text: `args` is always an
/// array, `kwargs` always an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arguments {
    pub args: String,
    pub kwargs: String,
}

impl Arguments {
    /// No arguments at all.
    pub fn none() -> Arguments {
        Arguments {
            args: "[]".to_owned(),
            kwargs: "{}".to_owned(),
        }
    }
}

/// What translation needs to know about a function.
pub struct InputRules<'a> {
    pub max_depth: usize,
    /// Compiled input schema, and the raw schema to read property types from.
    pub schema: Option<(&'a jsonschema::Validator, &'a serde_json::Value)>,
}

/// True for `application/json` and any `application/*+json`, with any
/// parameters (such as `charset`).
pub fn is_json_media_type(content_type: &str) -> bool {
    // What nearly every request and answer says, at the cost of one compare.
    if content_type == "application/json" {
        return true;
    }
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || subtype.len() > 5 && subtype[subtype.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// Builds the arguments of a call from its body (empty for `GET`), the
/// body's content type and the raw query string.
pub fn arguments(
    content_type: Option<&str>,
    body: &[u8],
    query: Option<&str>,
    rules: &InputRules<'_>,
) -> Result<Arguments, TranslateError> {
    let params = query_params(query.unwrap_or(""), rules.schema.map(|(_, raw)| raw))?;
    let document = if json::is_blank(body) {
        None
    } else {
        match content_type {
            Some(content_type) if is_json_media_type(content_type) => {}
            Some(content_type) => {
                return Err(TranslateError::UnsupportedMediaType(format!(
                    "the body must be JSON (Content-Type: application/json), not '{content_type}'"
                )));
            }
            None => {
                return Err(TranslateError::UnsupportedMediaType(
                    "the body has no Content-Type: send it as application/json".to_owned(),
                ));
            }
        }
        let strict = Rules {
            max_depth: rules.max_depth,
            reject_duplicate_keys: true,
        };
        Some(
            json::check(body, strict)
                .map_err(|e| TranslateError::InvalidJson(format!("invalid JSON body: {e}")))?,
        )
    };
    let arguments = splice(body, document.as_ref(), &params)?;
    if let Some((validator, _)) = rules.schema {
        validate(validator, body, document.as_ref(), &arguments)?;
    }
    Ok(arguments)
}

/// Query parameters, each as a JSON value's text, in order of first appearance.
type Params = Vec<(String, String)>;

fn query_params(query: &str, schema: Option<&serde_json::Value>) -> Result<Params, TranslateError> {
    let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key.is_empty() {
            continue;
        }
        match grouped.iter_mut().find(|(k, _)| *k == key) {
            Some((_, values)) => values.push(value.into_owned()),
            None => grouped.push((key.into_owned(), vec![value.into_owned()])),
        }
    }
    grouped
        .into_iter()
        .map(|(key, values)| {
            let declared = schema
                .and_then(|s| s.get("properties"))
                .and_then(|p| p.get(&key));
            let json = if values.len() == 1 && !declares_type(declared, "array") {
                coerce(&key, &values[0], declared)?
            } else {
                let items = declared.and_then(|d| d.get("items"));
                let parts = values
                    .iter()
                    .map(|v| coerce(&key, v, items))
                    .collect::<Result<Vec<_>, _>>()?;
                format!("[{}]", parts.join(","))
            };
            Ok((key, json))
        })
        .collect()
}

fn declares_type(schema: Option<&serde_json::Value>, name: &str) -> bool {
    match schema.and_then(|s| s.get("type")) {
        Some(serde_json::Value::String(t)) => t == name,
        Some(serde_json::Value::Array(types)) => types.iter().any(|t| t == name),
        _ => false,
    }
}

/// A query value as JSON: a string, unless the schema declares the
/// property a number, integer or boolean.
fn coerce(
    key: &str,
    value: &str,
    declared: Option<&serde_json::Value>,
) -> Result<String, TranslateError> {
    let must = |what: &str| {
        TranslateError::InvalidArguments(format!("query parameter '{key}' must be {what}"))
    };
    let is_number = || {
        let rules = Rules {
            max_depth: 1,
            reject_duplicate_keys: true,
        };
        matches!(
            json::check(value.as_bytes(), rules),
            Ok(Document {
                kind: Kind::Scalar,
                ..
            })
        ) && matches!(value.as_bytes().first(), Some(b'-' | b'0'..=b'9'))
    };
    if declares_type(declared, "string") || declared.is_none() {
        return Ok(json_string(value));
    }
    if declares_type(declared, "integer") {
        let digits = value.strip_prefix('-').unwrap_or(value);
        if is_number() && digits.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(value.to_owned());
        }
        return Err(must("an integer"));
    }
    if declares_type(declared, "number") {
        return if is_number() {
            Ok(value.to_owned())
        } else {
            Err(must("a number"))
        };
    }
    if declares_type(declared, "boolean") {
        return match value {
            "true" | "false" => Ok(value.to_owned()),
            _ => Err(must("true or false")),
        };
    }
    Ok(json_string(value))
}

fn json_string(value: &str) -> String {
    serde_json::to_string(value).expect("a string always serialises")
}

/// Puts body and query parameters together without re-encoding the body.
fn splice(
    body: &[u8],
    document: Option<&Document>,
    params: &Params,
) -> Result<Arguments, TranslateError> {
    let raw = |d: &Document| String::from_utf8_lossy(&body[d.start..d.end]).into_owned();
    let query_object = |extra: Option<&str>| {
        let mut out = String::from("{");
        for (i, (key, value)) in params.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&json_string(key));
            out.push(':');
            out.push_str(value);
        }
        if let Some(rest) = extra {
            if !params.is_empty() {
                out.push(',');
            }
            out.push_str(rest);
        } else {
            out.push('}');
        }
        out
    };
    Ok(match document {
        None => Arguments {
            args: "[]".to_owned(),
            kwargs: query_object(None),
        },
        Some(doc) if doc.kind == Kind::Object => {
            if let Some((key, _)) = params.iter().find(|(k, _)| doc.keys.contains(k)) {
                return Err(TranslateError::InvalidArguments(format!(
                    "'{key}' is given both in the query string and in the body"
                )));
            }
            let kwargs = if params.is_empty() {
                raw(doc)
            } else if doc.keys.is_empty() {
                query_object(None)
            } else {
                // Everything after the body's opening brace, closing brace included.
                let inner = String::from_utf8_lossy(&body[doc.start + 1..doc.end]);
                query_object(Some(&inner))
            };
            Arguments {
                args: "[]".to_owned(),
                kwargs,
            }
        }
        Some(doc) if doc.kind == Kind::Array => Arguments {
            args: raw(doc),
            kwargs: query_object(None),
        },
        Some(doc) => Arguments {
            args: format!("[{}]", raw(doc)),
            kwargs: query_object(None),
        },
    })
}

/// Validates the arguments against the function's input schema: the
/// keyword arguments object, or, for a call with only positional
/// arguments, the body as sent.
fn validate(
    validator: &jsonschema::Validator,
    body: &[u8],
    document: Option<&Document>,
    arguments: &Arguments,
) -> Result<(), TranslateError> {
    let positional = matches!(document, Some(d) if d.kind != Kind::Object);
    let text: Cow<'_, str> = match document {
        Some(doc) if positional => {
            if arguments.kwargs != "{}" {
                return Err(TranslateError::InvalidArguments(
                    "this function's input schema takes keyword arguments or positional ones, not both".to_owned(),
                ));
            }
            String::from_utf8_lossy(&body[doc.start..doc.end])
        }
        _ => Cow::Borrowed(arguments.kwargs.as_str()),
    };
    let instance: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        TranslateError::InvalidJson(format!(
            "this function's input schema needs numbers within the range of a 64-bit float: {e}"
        ))
    })?;
    if let Some(error) = validator.iter_errors(&instance).next() {
        let pointer = error.instance_path.to_string();
        let pointer = if pointer.is_empty() {
            "/".to_owned()
        } else {
            pointer
        };
        return Err(TranslateError::InvalidArguments(format!(
            "arguments do not match the input schema at '{pointer}': {error}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
