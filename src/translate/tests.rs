//! Translation of bodies and query strings into arguments.

use super::*;

fn plain() -> InputRules<'static> {
    InputRules {
        max_depth: 128,
        schema: None,
    }
}

fn args(body: &str, query: Option<&str>) -> Result<Arguments, TranslateError> {
    arguments(Some("application/json"), body.as_bytes(), query, &plain())
}

fn both(args: &str, kwargs: &str) -> Arguments {
    Arguments {
        args: args.to_owned(),
        kwargs: kwargs.to_owned(),
    }
}

#[test]
fn object_becomes_kwargs_array_args_scalar_one_arg() {
    assert_eq!(
        args(r#"{"x": 42}"#, None).unwrap(),
        both("[]", r#"{"x": 42}"#)
    );
    assert_eq!(args("[1, 2]", None).unwrap(), both("[1, 2]", "{}"));
    assert_eq!(args(" 42 ", None).unwrap(), both("[42]", "{}"));
    assert_eq!(args("", None).unwrap(), both("[]", "{}"));
    assert_eq!(args("\"hi\"", None).unwrap(), both("[\"hi\"]", "{}"));
}

#[test]
fn numbers_are_kept_exactly_as_written() {
    let body = r#"{"big": 1234567890123456789012345678901234567890, "huge": 1e400, "f": -0.10}"#;
    assert_eq!(args(body, None).unwrap().kwargs, body);
}

#[test]
fn query_parameters_join_the_kwargs() {
    assert_eq!(
        args("", Some("x=42&name=a%20b")).unwrap(),
        both("[]", r#"{"x":"42","name":"a b"}"#)
    );
    assert_eq!(
        args(r#"{"y": 1}"#, Some("x=2")).unwrap(),
        both("[]", r#"{"x":"2","y": 1}"#)
    );
    assert_eq!(
        args("{ }", Some("x=2")).unwrap(),
        both("[]", r#"{"x":"2"}"#)
    );
    assert_eq!(
        args("[1]", Some("x=2")).unwrap(),
        both("[1]", r#"{"x":"2"}"#)
    );
    assert_eq!(
        args("", Some("t=a&t=b")).unwrap(),
        both("[]", r#"{"t":["a","b"]}"#)
    );
}

#[test]
fn a_key_in_query_and_body_is_refused() {
    let err = args(r#"{"x": 1}"#, Some("x=2")).unwrap_err();
    assert!(matches!(err, TranslateError::InvalidArguments(m) if m.contains("'x'")));
}

#[test]
fn non_json_content_types_are_refused() {
    let rules = plain();
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/jsonx",
    ] {
        let err = arguments(Some(ct), b"{}", None, &rules).unwrap_err();
        assert!(
            matches!(err, TranslateError::UnsupportedMediaType(_)),
            "{ct}"
        );
    }
    for ct in [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/problem+json",
    ] {
        assert!(arguments(Some(ct), b"{}", None, &rules).is_ok(), "{ct}");
    }
    // A body needs its content type; an empty body needs none.
    let err = arguments(None, b"{}", None, &rules).unwrap_err();
    assert!(matches!(err, TranslateError::UnsupportedMediaType(_)));
    assert!(arguments(None, b"", None, &rules).is_ok());
    assert!(arguments(Some("text/plain"), b"", None, &rules).is_ok());
}

#[test]
fn invalid_json_names_line_and_column() {
    let err = args("{\n \"a\": }", None).unwrap_err();
    assert!(matches!(err, TranslateError::InvalidJson(m) if m.contains("line 2, column 7")));
}

fn schema_rules(schema: &serde_json::Value) -> (jsonschema::Validator, serde_json::Value) {
    (jsonschema::validator_for(schema).unwrap(), schema.clone())
}

#[test]
fn query_values_are_coerced_to_schema_types() {
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "n": {"type": "integer"}, "f": {"type": "number"}, "b": {"type": "boolean"},
            "s": {"type": "string"}, "l": {"type": "array", "items": {"type": "integer"}}
        }
    });
    let (validator, raw) = schema_rules(&schema);
    let rules = InputRules {
        max_depth: 128,
        schema: Some((&validator, &raw)),
    };
    let got = arguments(None, b"", Some("n=-7&f=1.5e3&b=true&s=12&l=1&x=y"), &rules).unwrap();
    assert_eq!(
        got.kwargs,
        r#"{"n":-7,"f":1.5e3,"b":true,"s":"12","l":[1],"x":"y"}"#
    );
    for bad in ["n=1.5", "n=abc", "f=1e", "b=yes", "l=a"] {
        let err = arguments(None, b"", Some(bad), &rules).unwrap_err();
        assert!(matches!(err, TranslateError::InvalidArguments(_)), "{bad}");
    }
}

#[test]
fn schema_failures_name_the_json_pointer() {
    let schema = serde_json::json!({
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}}
    });
    let (validator, raw) = schema_rules(&schema);
    let rules = InputRules {
        max_depth: 128,
        schema: Some((&validator, &raw)),
    };
    let json = Some("application/json");
    let err = arguments(json, br#"{"name": 5}"#, None, &rules).unwrap_err();
    assert!(
        matches!(&err, TranslateError::InvalidArguments(m) if m.contains("'/name'")),
        "{err}"
    );
    let err = arguments(json, br#"{"name": "a", "tags": ["x", 1]}"#, None, &rules).unwrap_err();
    assert!(
        matches!(&err, TranslateError::InvalidArguments(m) if m.contains("'/tags/1'")),
        "{err}"
    );
    assert!(arguments(json, br#"{"name": "a"}"#, None, &rules).is_ok());
    assert!(arguments(None, b"", Some("name=ada"), &rules).is_ok());
}

#[test]
fn only_json_whitespace_makes_a_body_empty() {
    for blank in ["", " ", "\t\r\n ", "\n"] {
        assert_eq!(args(blank, None).unwrap(), both("[]", "{}"), "{blank:?}");
    }
    // Form feed and vertical tab are not JSON whitespace (RFC 8259).
    for body in ["\x0c", " \x0c\n", "\x0b", "\x0c42"] {
        let err = args(body, None).unwrap_err();
        assert!(
            matches!(err, TranslateError::InvalidJson(_)),
            "{body:?}: {err:?}"
        );
    }
    // Without a content type, such a body is a body, not "no arguments".
    let err = arguments(None, b"\x0c", None, &plain()).unwrap_err();
    assert!(matches!(err, TranslateError::UnsupportedMediaType(_)));
}
