//! Strict JSON reading without building a tree: checks UTF-8, RFC 8259
//! grammar, nesting depth and (optionally) duplicate object keys, and
//! reports where the text is wrong by line and column. Values are never
//! converted, so numbers pass on exactly as written and the caller can
//! splice the original bytes into the invocation request.
//!
//! serde_json cannot serve here: it accepts duplicate keys, and its value
//! types cannot keep `1e400` or a 40-digit integer as written.

use std::borrow::Cow;
use std::collections::HashSet;

/// What a document's top-level value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Object,
    Array,
    Scalar,
}

/// The keys of one object read so far, for finding duplicates. Most
/// objects have a few keys: a list scanned in order costs less than
/// hashing each key, and allocates nothing until the first key. Past
/// `SeenKeys::LIST_MAX` keys a hash set takes over.
enum SeenKeys<'a> {
    List(Vec<Cow<'a, str>>),
    Set(HashSet<Cow<'a, str>>),
}

impl Default for SeenKeys<'_> {
    fn default() -> Self {
        SeenKeys::List(Vec::new())
    }
}

impl<'a> SeenKeys<'a> {
    const LIST_MAX: usize = 16;

    /// False when `key` was seen before.
    fn insert(&mut self, key: Cow<'a, str>) -> bool {
        match self {
            SeenKeys::List(list) => {
                if list.contains(&key) {
                    return false;
                }
                if list.len() < Self::LIST_MAX {
                    list.push(key);
                } else {
                    let mut set: HashSet<Cow<'a, str>> = list.drain(..).collect();
                    set.insert(key);
                    *self = SeenKeys::Set(set);
                }
                true
            }
            SeenKeys::Set(set) => set.insert(key),
        }
    }
}

/// A checked JSON document.
#[derive(Debug)]
pub struct Document {
    pub kind: Kind,
    /// Byte range of the value inside the input, surrounding whitespace excluded.
    pub start: usize,
    pub end: usize,
    /// The top-level object's keys, unescaped (empty unless `kind` is `Object`).
    pub keys: Vec<String>,
}

/// Why a document was refused, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at line {line}, column {column}")]
pub struct JsonError {
    pub message: String,
    pub line: usize,
    pub column: usize,
}

/// The reading rules.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub max_depth: usize,
    pub reject_duplicate_keys: bool,
}

/// Checks `input` as one JSON document under `rules`.
pub fn check(input: &[u8], rules: Rules) -> Result<Document, JsonError> {
    if let Err(e) = std::str::from_utf8(input) {
        return Err(error_at(input, e.valid_up_to(), "invalid UTF-8"));
    }
    let mut reader = Reader {
        input,
        pos: 0,
        depth: 0,
        rules,
        keys: Vec::new(),
    };
    reader.skip_ws();
    let start = reader.pos;
    let kind = match reader.peek() {
        Some(b'{') => Kind::Object,
        Some(b'[') => Kind::Array,
        Some(_) => Kind::Scalar,
        None => return Err(reader.fail("empty document")),
    };
    reader.value()?;
    let end = reader.pos;
    reader.skip_ws();
    if reader.pos != input.len() {
        return Err(reader.fail("trailing characters after the JSON value"));
    }
    Ok(Document {
        kind,
        start,
        end,
        keys: reader.keys,
    })
}

/// RFC 8259's whitespace: space, tab, line feed, carriage return. Not
/// form feed or vertical tab, which `u8::is_ascii_whitespace` counts.
pub fn is_json_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// True for a body that holds no JSON value at all: empty, or only JSON
/// whitespace. Anything else (a lone form feed included) is a document to
/// check, and fails as one.
pub fn is_blank(input: &[u8]) -> bool {
    input.iter().all(|&b| is_json_whitespace(b))
}

fn error_at(input: &[u8], pos: usize, message: &str) -> JsonError {
    let before = &input[..pos.min(input.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    // Columns count characters, not bytes, as editors do.
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    JsonError {
        message: message.to_owned(),
        line,
        column,
    }
}

struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
    depth: usize,
    rules: Rules,
    /// Keys of the top-level object.
    keys: Vec<String>,
}

impl<'a> Reader<'a> {
    fn fail(&self, message: &str) -> JsonError {
        error_at(self.input, self.pos, message)
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(is_json_whitespace) {
            self.pos += 1;
        }
    }

    fn expect_byte(&mut self, byte: u8, what: &str) -> Result<(), JsonError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.fail(what))
        }
    }

    fn value(&mut self) -> Result<(), JsonError> {
        match self.peek() {
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b'"') => self.string().map(drop),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(_) => Err(self.fail("expected a JSON value")),
            None => Err(self.fail("unexpected end of input")),
        }
    }

    fn enter(&mut self) -> Result<(), JsonError> {
        self.depth += 1;
        if self.depth > self.rules.max_depth {
            return Err(self.fail(&format!(
                "nesting deeper than {} levels",
                self.rules.max_depth
            )));
        }
        self.pos += 1;
        Ok(())
    }

    fn object(&mut self) -> Result<(), JsonError> {
        self.enter()?;
        let top = self.depth == 1;
        let mut seen = SeenKeys::default();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.fail("expected a string key"));
            }
            let key_pos = self.pos;
            let key = self.string()?;
            if self.rules.reject_duplicate_keys || top {
                if top {
                    self.keys.push(key.clone().into_owned());
                }
                if self.rules.reject_duplicate_keys && !seen.insert(key) {
                    return Err(error_at(self.input, key_pos, "duplicate object key"));
                }
            }
            self.skip_ws();
            self.expect_byte(b':', "expected ':' after an object key")?;
            self.skip_ws();
            self.value()?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return Err(self.fail("expected ',' or '}' in an object")),
            }
        }
    }

    fn array(&mut self) -> Result<(), JsonError> {
        self.enter()?;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            self.value()?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return Err(self.fail("expected ',' or ']' in an array")),
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), JsonError> {
        if self.input[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.fail("expected a JSON value"))
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<(), JsonError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err(self.fail("leading zeros are not allowed in numbers"));
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.fail("expected a digit")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.fail("expected a digit after the decimal point"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.fail("expected a digit in the exponent"));
            }
        }
        Ok(())
    }

    /// Reads a string starting at its opening quote; returns its unescaped
    /// text (borrowed when it has no escapes).
    fn string(&mut self) -> Result<Cow<'a, str>, JsonError> {
        self.pos += 1;
        let start = self.pos;
        let mut owned: Option<String> = None;
        loop {
            let Some(byte) = self.peek() else {
                return Err(self.fail("unterminated string"));
            };
            match byte {
                b'"' => {
                    let end = self.pos;
                    self.pos += 1;
                    return Ok(match owned {
                        Some(text) => Cow::Owned(text),
                        None => Cow::Borrowed(self.text(start, end)),
                    });
                }
                b'\\' => {
                    let text = owned.get_or_insert_with(|| self.text(start, self.pos).to_owned());
                    let escape_pos = self.pos;
                    self.pos += 1;
                    let decoded = match self.peek() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.pos += 1;
                            let c = self.unicode_escape(escape_pos)?;
                            text.push(c);
                            continue;
                        }
                        _ => return Err(self.fail("invalid escape in string")),
                    };
                    text.push(decoded);
                    self.pos += 1;
                }
                0x00..=0x1f => return Err(self.fail("control character in string")),
                _ => {
                    // Copy one whole UTF-8 character (the input is valid UTF-8).
                    let width = utf8_width(byte);
                    if let Some(text) = owned.as_mut() {
                        text.push_str(self.text(self.pos, self.pos + width));
                    }
                    self.pos += width;
                }
            }
        }
    }

    fn text(&self, start: usize, end: usize) -> &'a str {
        std::str::from_utf8(&self.input[start..end])
            .expect("input was checked to be UTF-8 and cut at char boundaries")
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let Some(hex) = self.input.get(self.pos..self.pos + 4) else {
            return Err(self.fail("incomplete \\u escape"));
        };
        let hex = std::str::from_utf8(hex).map_err(|_| self.fail("invalid \\u escape"))?;
        let value = u32::from_str_radix(hex, 16).map_err(|_| self.fail("invalid \\u escape"))?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.fail("invalid \\u escape"));
        }
        self.pos += 4;
        Ok(value)
    }

    /// Decodes `XXXX` (and a following `\uXXXX` low surrogate) after `\u`.
    fn unicode_escape(&mut self, escape_pos: usize) -> Result<char, JsonError> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if !self.input[self.pos..].starts_with(b"\\u") {
                    return Err(error_at(
                        self.input,
                        escape_pos,
                        "unpaired surrogate in \\u escape",
                    ));
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(error_at(
                        self.input,
                        escape_pos,
                        "unpaired surrogate in \\u escape",
                    ));
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => {
                return Err(error_at(
                    self.input,
                    escape_pos,
                    "unpaired surrogate in \\u escape",
                ));
            }
            other => other,
        };
        char::from_u32(code).ok_or_else(|| error_at(self.input, escape_pos, "invalid \\u escape"))
    }
}

fn utf8_width(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: Rules = Rules {
        max_depth: 128,
        reject_duplicate_keys: true,
    };

    fn ok(text: &str) -> Document {
        check(text.as_bytes(), STRICT).unwrap_or_else(|e| panic!("{text:?} refused: {e}"))
    }

    fn err(text: &[u8]) -> JsonError {
        match check(text, STRICT) {
            Ok(_) => panic!("{:?} accepted", String::from_utf8_lossy(text)),
            Err(e) => e,
        }
    }

    #[test]
    fn accepts_every_kind_of_value() {
        for text in [
            "{}",
            "[]",
            "0",
            "-0",
            "1.5e-3",
            "1E+9",
            "\"a\"",
            "true",
            "false",
            "null",
            r#" {"a": [1, 2, {"b": null}], "c": "\u00e9\ud83d\ude00\n", "d": -12.5e10} "#,
            "123456789012345678901234567890123456789012",
            "1e400",
            "\"héllo ☃ 😀\"",
        ] {
            ok(text);
        }
    }

    #[test]
    fn reports_kind_span_and_top_keys() {
        let doc = ok("  {\"x\": 1, \"y\\u0041\": [2]}  ");
        assert_eq!(doc.kind, Kind::Object);
        assert_eq!((doc.start, doc.end), (2, 26));
        assert_eq!(doc.keys, vec!["x".to_owned(), "yA".to_owned()]);
        assert_eq!(ok("[1]").kind, Kind::Array);
        assert_eq!(ok(" 42 ").kind, Kind::Scalar);
        assert!(ok("[{\"a\":1}]").keys.is_empty());
    }

    #[test]
    fn rejects_bad_grammar_with_position() {
        let e = err(b"{\n  \"a\": 1,\n  \"b\": tru\n}");
        assert_eq!((e.line, e.column), (3, 8));
        for text in [
            &b"{"[..],
            b"[1,]",
            b"{\"a\":1,}",
            b"01",
            b"1.",
            b".5",
            b"1e",
            b"+1",
            b"'a'",
            b"\"a",
            b"[1 2]",
            b"{\"a\" 1}",
            b"{1:2}",
            b"NaN",
            b"Infinity",
            b"\"\\x\"",
            b"\"\t\"",
            b"[] []",
            b"",
            b"   ",
            b"\"\\ud800\"",
            b"\"\\udc00\"",
            b"\"\\u12\"",
        ] {
            err(text);
        }
    }

    #[test]
    fn rejects_invalid_utf8_with_position() {
        let e = err(b"{\"a\": \"\xff\"}");
        assert_eq!((e.line, e.column), (1, 8));
        assert!(e.message.contains("UTF-8"));
        // An overlong encoding of '/' is not UTF-8 either.
        err(b"\"\xc0\xaf\"");
    }

    #[test]
    fn finds_duplicates_among_many_keys() {
        // Past the short list the keys move to a set: a duplicate of an
        // early key, of a key at the switch, and of a late one.
        let keys: Vec<String> = (0..40).map(|i| format!("\"k{i}\": {i}")).collect();
        ok(&format!("{{{}}}", keys.join(",")));
        for again in [0, 15, 16, 39] {
            let doc = format!("{{{}, \"k{again}\": 0}}", keys.join(","));
            assert_eq!(
                err(doc.as_bytes()).message,
                "duplicate object key",
                "k{again}"
            );
        }
    }

    #[test]
    fn rejects_duplicate_keys_even_when_escaped() {
        let e = err(br#"{"a": 1, "a": 2}"#);
        assert_eq!(e.message, "duplicate object key");
        assert_eq!(e.column, 10);
        err(br#"{"a": 1, "\u0061": 2}"#);
        err(br#"[{"x": {"k": 1, "k": 1}}]"#);
        ok(r#"{"a": {"a": 1}, "b": {"a": 2}}"#);
        let lenient = Rules {
            max_depth: 128,
            reject_duplicate_keys: false,
        };
        assert!(check(br#"{"a": 1, "a": 2}"#, lenient).is_ok());
    }

    #[test]
    fn nesting_is_limited_without_recursing_past_the_limit() {
        let at_limit = format!("{}{}", "[".repeat(128), "]".repeat(128));
        ok(&at_limit);
        let over = format!("{}{}", "[".repeat(129), "]".repeat(129));
        assert!(err(over.as_bytes()).message.contains("nesting"));
        let huge = "[".repeat(1_000_000);
        assert!(err(huge.as_bytes()).message.contains("nesting"));
        let objects = "{\"a\":".repeat(200) + "1" + &"}".repeat(200);
        assert!(err(objects.as_bytes()).message.contains("nesting"));
    }
}
