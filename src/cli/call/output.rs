//! How `fngate call` shows answers: JSON results compact (or indented on
//! a terminal) with every number exactly as the gateway sent it, and
//! problem details as one readable line.

use http::StatusCode;

/// `json` re-written compact, or indented when `pretty`; `None` when it is
/// not one JSON value (it is then shown as it came). Works on the text,
/// never on parsed numbers, so a 30-digit integer or `1e400` is kept.
pub fn reformat(json: &[u8], pretty: bool) -> Option<Vec<u8>> {
    if !super::input::is_json(json) {
        return None;
    }
    let mut out = Vec::with_capacity(json.len());
    let mut depth = 0usize;
    let newline = |out: &mut Vec<u8>, depth: usize| {
        out.push(b'\n');
        out.extend(std::iter::repeat_n(b' ', 2 * depth));
    };
    let mut bytes = json.iter().copied().peekable();
    while let Some(byte) = bytes.next() {
        match byte {
            b'"' => {
                out.push(byte);
                // A string, escapes included, to its closing quote.
                while let Some(byte) = bytes.next() {
                    out.push(byte);
                    match byte {
                        b'\\' => out.extend(bytes.next()),
                        b'"' => break,
                        _ => {}
                    }
                }
            }
            b' ' | b'\t' | b'\n' | b'\r' => {}
            b'{' | b'[' => {
                out.push(byte);
                while bytes.next_if(u8::is_ascii_whitespace).is_some() {}
                let empty = matches!(bytes.peek(), Some(b'}' | b']'));
                if pretty && !empty {
                    depth += 1;
                    newline(&mut out, depth);
                }
                if empty {
                    out.extend(bytes.next());
                }
            }
            b'}' | b']' => {
                if pretty {
                    depth = depth.saturating_sub(1);
                    newline(&mut out, depth);
                }
                out.push(byte);
            }
            b',' => {
                out.push(byte);
                if pretty {
                    newline(&mut out, depth);
                }
            }
            b':' => out.extend_from_slice(if pretty { b": " } else { b":" }),
            _ => out.push(byte),
        }
    }
    Some(out)
}

/// An RFC 9457 problem as the gateway answers it (only what is shown).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Problem {
    pub title: Option<String>,
    pub code: Option<String>,
    pub detail: Option<String>,
    pub request_id: Option<String>,
    /// A function's own error: its type and message.
    pub error: Option<ReportedError>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct ReportedError {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub message: Option<String>,
}

impl Problem {
    /// The problem in `body`; for a body that is not one (a proxy's HTML
    /// page, an empty answer), its first 300 characters as the detail.
    pub fn parse(status: StatusCode, body: &[u8]) -> Problem {
        if let Ok(problem) = serde_json::from_slice::<Problem>(body)
            && (problem.code.is_some() || problem.detail.is_some())
        {
            return problem;
        }
        let text: String = String::from_utf8_lossy(body)
            .trim()
            .chars()
            .take(300)
            .collect();
        Problem {
            title: status.canonical_reason().map(str::to_owned),
            detail: (!text.is_empty()).then_some(text),
            ..Problem::default()
        }
    }

    /// `STATUS CODE: DETAIL`, then the function's error message (indented)
    /// when it reported one, and for a server error the request id that
    /// finds it in the gateway's log.
    pub fn describe(&self, status: StatusCode) -> String {
        let name = self
            .code
            .as_deref()
            .or(self.title.as_deref())
            .or(status.canonical_reason())
            .unwrap_or("error");
        let mut text = format!("{} {name}", status.as_u16());
        if let Some(detail) = &self.detail {
            text.push_str(": ");
            text.push_str(detail);
        }
        if let Some(message) = self.error.as_ref().and_then(|e| e.message.as_deref()) {
            for line in message.trim_end().lines() {
                text.push_str("\n  ");
                text.push_str(line);
            }
        }
        if status.is_server_error()
            && let Some(id) = &self.request_id
        {
            text.push_str(&format!("\n  (request id {id})"));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(json: &str, pretty: bool) -> String {
        String::from_utf8(reformat(json.as_bytes(), pretty).unwrap()).unwrap()
    }

    #[test]
    fn compact_keeps_numbers_and_strings_exactly() {
        assert_eq!(
            text(
                "{\"big\": 1e400, \"n\" :\n 123456789012345678901234567890, \"s\": \"a, b: {c} \\\" d\"}",
                false
            ),
            r#"{"big":1e400,"n":123456789012345678901234567890,"s":"a, b: {c} \" d"}"#
        );
        assert_eq!(text(" 1764\n", false), "1764");
        assert_eq!(text("[ ]", false), "[]");
        assert!(reformat(b"not json", false).is_none());
        assert!(reformat(b"{\"a\":1} {}", false).is_none());
    }

    #[test]
    fn pretty_indents_by_two() {
        assert_eq!(
            text(r#"{"a": [1, {}], "b": {"c": "é"}, "d": []}"#, true),
            "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": {\n    \"c\": \"é\"\n  },\n  \"d\": []\n}"
        );
        assert_eq!(text("42", true), "42");
    }

    #[test]
    fn a_problem_reads_as_status_code_and_detail() {
        let body = br#"{"type":"about:blank","title":"Not Found","status":404,"code":"function_not_found","detail":"no function 'nope' in app 'demo'","request_id":"r1"}"#;
        let problem = Problem::parse(StatusCode::NOT_FOUND, body);
        assert_eq!(
            problem.describe(StatusCode::NOT_FOUND),
            "404 function_not_found: no function 'nope' in app 'demo'"
        );
        let body = br#"{"title":"Internal Server Error","status":500,"code":"function_error","detail":"the function failed with ValueError","request_id":"r2","error":{"type":"ValueError","message":"Traceback\nValueError: no\n"}}"#;
        let problem = Problem::parse(StatusCode::INTERNAL_SERVER_ERROR, body);
        assert_eq!(
            problem.describe(StatusCode::INTERNAL_SERVER_ERROR),
            "500 function_error: the function failed with ValueError\n  Traceback\n  ValueError: no\n  (request id r2)"
        );
        let problem = Problem::parse(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(
            problem.describe(StatusCode::BAD_GATEWAY),
            "502 Bad Gateway: <html>bad gateway</html>"
        );
    }
}
