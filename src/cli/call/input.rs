//! What `fngate call` sends: the function's path from `APP/FN` (or
//! `APP/CLASS/METHOD`), and the request body from `key=value` pairs,
//! `--json BODY` or a `--map FILE` of inputs.

use std::io::Read;
use std::path::Path;

use super::CallError;

/// `APP/FN` or `APP/CLASS/METHOD`, checked, and the query string that may
/// follow it (`demo/counter/incr?name=ada`: a class's parameters, which
/// only the query carries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The path below the gateway's base URL, e.g. `/demo/square`.
    pub path: String,
    pub query: Option<String>,
}

impl Target {
    pub fn parse(target: &str) -> Result<Target, CallError> {
        let (names, query) = match target.split_once('?') {
            Some((names, query)) => (names, Some(query.to_owned())),
            None => (target, None),
        };
        let names: Vec<&str> = names.split('/').collect();
        if !(2..=3).contains(&names.len()) {
            return Err(CallError::Usage(format!(
                "'{target}' is not APP/FUNCTION or APP/CLASS/METHOD"
            )));
        }
        for name in &names {
            crate::config::check_name(name)
                .map_err(|e| CallError::Usage(format!("'{target}': {e}")))?;
        }
        Ok(Target {
            path: format!("/{}", names.join("/")),
            query: query.filter(|q| !q.is_empty()),
        })
    }

    /// `{base}{path}{suffix}`, then the query.
    pub fn url(&self, base: &str, suffix: &str) -> String {
        match &self.query {
            Some(query) => format!("{base}{}{suffix}?{query}", self.path),
            None => format!("{base}{}{suffix}", self.path),
        }
    }

    /// The URL of a GET call: the query, then `pairs` as query parameters
    /// (their text as typed; the gateway coerces them to the types of the
    /// function's input schema).
    pub fn get_url(&self, base: &str, pairs: &[String]) -> String {
        let mut query = form_urlencoded::Serializer::new(self.query.clone().unwrap_or_default());
        for pair in pairs {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            query.append_pair(key, value);
        }
        let query = query.finish();
        if query.is_empty() {
            format!("{base}{}", self.path)
        } else {
            format!("{base}{}?{query}", self.path)
        }
    }
}

/// A JSON object built from `key=value` pairs, in their order: a value
/// that is JSON is that JSON, written as it is (numbers stay exact);
/// anything else is a string. No pairs: an empty body (no arguments).
pub fn body_from_pairs(pairs: &[String]) -> Result<Vec<u8>, CallError> {
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let mut keys = std::collections::HashSet::new();
    let mut members = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(CallError::Usage(format!(
                "'{pair}' is not key=value (use --json for another body)"
            )));
        };
        if key.is_empty() {
            return Err(CallError::Usage(format!("'{pair}' has no key before '='")));
        }
        if !keys.insert(key) {
            return Err(CallError::Usage(format!("the key '{key}' is given twice")));
        }
        let value = if is_json(value.as_bytes()) {
            value.trim().to_owned()
        } else {
            serde_json::Value::from(value).to_string()
        };
        members.push(format!("{}:{value}", serde_json::Value::from(key)));
    }
    Ok(format!("{{{}}}", members.join(",")).into_bytes())
}

/// Whether `text` is one JSON value (checked, never stored: a number of
/// any size is JSON).
pub fn is_json(text: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok()
}

/// The bytes of FILE, or of standard input for `-`.
pub fn read_file_or_stdin(option: &str, file: &Path) -> Result<Vec<u8>, CallError> {
    let mut bytes = Vec::new();
    let read = if file == Path::new("-") {
        std::io::stdin().lock().read_to_end(&mut bytes)
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_end(&mut bytes))
    };
    read.map_err(|e| CallError::Usage(format!("{option} {}: {e}", file.display())))?;
    Ok(bytes)
}

/// The content type of a `--map` file's inputs: a JSON array, or NDJSON
/// (one input a line).
pub fn map_content_type(inputs: &[u8]) -> &'static str {
    match inputs.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => "application/json",
        _ => "application/x-ndjson",
    }
}

/// `--wait`: seconds as a number (`30`, `0.5`) or a duration (`2m`).
pub fn wait_seconds(text: &str) -> Result<std::time::Duration, String> {
    if let Ok(seconds) = text.trim().parse::<f64>() {
        return if seconds.is_finite() && (0.0..=86_400.0).contains(&seconds) {
            Ok(std::time::Duration::from_secs_f64(seconds))
        } else {
            Err(format!(
                "'{text}' is not a number of seconds from 0 to 86400"
            ))
        };
    }
    crate::config::parse_duration(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(pairs: &[&str]) -> String {
        let pairs: Vec<String> = pairs.iter().map(|p| p.to_string()).collect();
        String::from_utf8(body_from_pairs(&pairs).unwrap()).unwrap()
    }

    #[test]
    fn values_that_are_json_stay_json_and_the_rest_are_strings() {
        assert_eq!(
            body(&[
                "x=42",
                "flag=true",
                "tags=[1,2]",
                "name=alice",
                "none=null",
                "empty=",
                "quoted=\"7\"",
                "big=123456789012345678901234567890",
                "obj={\"a\": 1}",
                "eq=a=b",
            ]),
            r#"{"x":42,"flag":true,"tags":[1,2],"name":"alice","none":null,"empty":"","quoted":"7","big":123456789012345678901234567890,"obj":{"a": 1},"eq":"a=b"}"#
        );
        assert_eq!(
            body(&["text=he said \"hi\""]),
            r#"{"text":"he said \"hi\""}"#
        );
        assert_eq!(body(&[]), "");
    }

    #[test]
    fn bad_pairs_are_usage_errors() {
        for pairs in [&["x"][..], &["=1"], &["x=1", "x=2"]] {
            let pairs: Vec<String> = pairs.iter().map(|p| p.to_string()).collect();
            assert!(
                matches!(body_from_pairs(&pairs), Err(CallError::Usage(_))),
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn targets_are_two_or_three_names_and_may_carry_a_query() {
        let target = |text: &str| Target::parse(text).unwrap();
        assert_eq!(
            target("demo/square").url("https://gw", ""),
            "https://gw/demo/square"
        );
        assert_eq!(
            target("demo/counter/incr?name=ada").url("https://gw", "/spawn"),
            "https://gw/demo/counter/incr/spawn?name=ada"
        );
        assert_eq!(
            target("demo/counter/get?name=ada").get_url("https://gw", &["x=4 2".to_owned()]),
            "https://gw/demo/counter/get?name=ada&x=4+2"
        );
        assert_eq!(
            target("demo/g").get_url("https://gw", &[]),
            "https://gw/demo/g"
        );
        for bad in [
            "demo",
            "demo/",
            "a/b/c/d",
            "Demo/x",
            "demo/_x",
            "demo/sq uare",
            "?x=1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn map_inputs_are_an_array_or_ndjson() {
        assert_eq!(map_content_type(b"  [1, 2]"), "application/json");
        assert_eq!(map_content_type(b"{\"x\": 1}\n2\n"), "application/x-ndjson");
        assert_eq!(map_content_type(b""), "application/x-ndjson");
    }

    #[test]
    fn wait_takes_seconds_or_a_duration() {
        assert_eq!(wait_seconds("30").unwrap().as_secs(), 30);
        assert_eq!(wait_seconds("0.5").unwrap().as_millis(), 500);
        assert_eq!(wait_seconds("2m").unwrap().as_secs(), 120);
        assert!(wait_seconds("-1").is_err());
        assert!(wait_seconds("soon").is_err());
    }
}
