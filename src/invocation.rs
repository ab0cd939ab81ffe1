//! The invocation request: what a backend is asked to run, independent of
//! HTTP. Its JSON form is DESIGN.md's invocation request; arguments are
//! spliced in as the raw JSON text the client sent.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderName;
use rand::RngCore;

/// Header names the gateway writes on every call, parsed once.
pub mod names {
    use super::HeaderName;

    pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
    pub const X_CALL_ID: HeaderName = HeaderName::from_static("x-call-id");
    pub const X_FNGATE_CALL_ID: HeaderName = HeaderName::from_static("x-fngate-call-id");
    pub const X_FNGATE_SUBJECT: HeaderName = HeaderName::from_static("x-fngate-subject");
    pub const X_FNGATE_ISSUER: HeaderName = HeaderName::from_static("x-fngate-issuer");
}

/// A call id: `fc-`, its creation time (milliseconds since the Unix
/// epoch, 12 lowercase hex digits), then 128 random bits in lowercase hex.
/// The random bits make it unguessable; the time in front makes ids made
/// one after the other sort together, so that the store's index of ids
/// takes each new one on the page the last one went to: with ids random
/// throughout, every spawn wrote a page of its own to the WAL (measured:
/// 12,000 -> 16,000 durable spawns/s, bench/RESULTS.md). The time says
/// nothing a call's `created_at` does not.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallId(String);

impl CallId {
    pub fn generate() -> CallId {
        let mut id = String::with_capacity(CallId::LEN);
        id.push_str("fc-");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        push_hex::<12>(&mut id, now as u64);
        push_random_hex::<16>(&mut id);
        CallId(id)
    }

    /// The length of a generated id.
    pub const LEN: usize = 3 + 12 + 32;

    /// A call id read back from the store.
    pub fn from_stored(id: String) -> CallId {
        CallId(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who made a call; passed to backends in headers (and exec functions in
/// variables) the client cannot forge.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Principal {
    pub subject: String,
    pub issuer: Option<String>,
}

/// Request-scoped identifiers that travel with a call to its backend.
#[derive(Debug, Clone)]
pub struct Trace {
    pub request_id: Arc<str>,
    pub traceparent: String,
}

/// One call of one function. Its `Debug` hides the call token.
#[derive(Clone)]
pub struct Invocation {
    pub call_id: CallId,
    pub app: Arc<str>,
    pub function: Arc<str>,
    /// JSON array text.
    pub args: String,
    /// JSON object text.
    pub kwargs: String,
    /// Wall-clock deadline, milliseconds since the Unix epoch.
    pub deadline_ms: u64,
    /// The same deadline on the monotonic clock, for enforcing it.
    pub deadline: tokio::time::Instant,
    pub attempt: u32,
    pub trace: Trace,
    pub principal: Option<Principal>,
    /// Set for a class method: its class and parameter set.
    pub class: Option<Arc<ClassCall>>,
    /// The credential this call's function calls other functions with
    /// (`FNGATE_CALL_TOKEN`): exec gets it in its environment, http in the
    /// `X-Fngate-Call-Token` header, lambda as the event's `call_token`.
    pub call_token: Option<Arc<str>>,
    /// Set when another function's call made this one with its token.
    pub parent: Option<Arc<ParentCall>>,
    /// A batch's calls, as the JSON array text of their `{"args",
    /// "kwargs"}`: the invocation request's `batch` member.
    pub batch: Option<String>,
}

impl fmt::Debug for Invocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invocation")
            .field("call_id", &self.call_id)
            .field("app", &self.app)
            .field("function", &self.function)
            .field("args", &self.args)
            .field("kwargs", &self.kwargs)
            .field("deadline_ms", &self.deadline_ms)
            .field("attempt", &self.attempt)
            .field("trace", &self.trace)
            .field("principal", &self.principal)
            .field("class", &self.class)
            .field(
                "call_token",
                &self.call_token.as_ref().map(|_| "<redacted>"),
            )
            .field("parent", &self.parent)
            .field("batch", &self.batch)
            .finish()
    }
}

/// The call that made a nested call, through its call token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentCall {
    pub call_id: String,
    /// How deep this call nests: 1 for a call made by a client's call.
    pub depth: u32,
}

/// What a class method's invocation carries besides its function's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassCall {
    pub class: Arc<str>,
    /// The parameters' values, in the order of the class's names.
    pub values: Vec<String>,
    /// The same as a JSON object, as the invocation request and the call
    /// store carry it: `{"size":"large"}`.
    pub parameters: String,
}

impl ClassCall {
    /// A call of a method of `class` with these parameters (names and
    /// values in the class's order).
    pub fn new(class: Arc<str>, names: &[String], values: Vec<String>) -> ClassCall {
        let object: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .zip(&values)
            .map(|(name, value)| (name.clone(), serde_json::Value::String(value.clone())))
            .collect();
        ClassCall {
            class,
            values,
            parameters: serde_json::Value::Object(object).to_string(),
        }
    }

    /// A stored call's parameters (`{"size":"large"}`), read back in the
    /// order of `names`; a missing or unreadable one is empty.
    pub fn stored(class: Arc<str>, names: &[String], stored: Option<&str>) -> ClassCall {
        let object: serde_json::Map<String, serde_json::Value> = stored
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default();
        let values = names
            .iter()
            .map(|name| match object.get(name) {
                Some(serde_json::Value::String(value)) => value.clone(),
                _ => String::new(),
            })
            .collect();
        ClassCall::new(class, names, values)
    }
}

impl Invocation {
    /// The time left before the deadline (zero when it has passed).
    pub fn time_left(&self) -> Duration {
        self.deadline
            .saturating_duration_since(tokio::time::Instant::now())
    }

    /// The values of a class's parameters `names`, in order (empty strings
    /// for those not given).
    pub fn parameter_values(&self, names: &[String]) -> Vec<String> {
        match &self.class {
            Some(class) if class.values.len() == names.len() => class.values.clone(),
            _ => vec![String::new(); names.len()],
        }
    }

    /// The name a call store files the call under: the function's, or
    /// `class.method` for a class method.
    pub fn stored_function(&self) -> String {
        match &self.class {
            Some(class) => format!("{}.{}", class.class, self.function),
            None => self.function.to_string(),
        }
    }

    /// The invocation request body sent to `exec` and `http` backends
    /// (which get the call token beside it, not in it).
    pub fn to_json(&self) -> Vec<u8> {
        self.write_json(false)
    }

    /// The invocation request with the call token as its `call_token`
    /// member: a Lambda event, whose runtime sees nothing else.
    pub fn to_json_with_token(&self) -> Vec<u8> {
        self.write_json(true)
    }

    fn write_json(&self, with_token: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.args.len() + self.kwargs.len());
        out.extend_from_slice(b"{\"call_id\":\"");
        out.extend_from_slice(self.call_id.as_str().as_bytes());
        out.extend_from_slice(b"\",\"app\":");
        push_quoted(&mut out, &self.app);
        out.extend_from_slice(b",\"function\":");
        push_quoted(&mut out, &self.function);
        out.extend_from_slice(b",\"args\":");
        out.extend_from_slice(self.args.as_bytes());
        out.extend_from_slice(b",\"kwargs\":");
        out.extend_from_slice(self.kwargs.as_bytes());
        out.extend_from_slice(b",\"deadline_ms\":");
        push_decimal(&mut out, self.deadline_ms);
        out.extend_from_slice(b",\"attempt\":");
        push_decimal(&mut out, u64::from(self.attempt));
        if let Some(class) = &self.class {
            out.extend_from_slice(b",\"class\":");
            push_quoted(&mut out, &class.class);
            out.extend_from_slice(b",\"parameters\":");
            out.extend_from_slice(class.parameters.as_bytes());
        }
        if let Some(batch) = &self.batch {
            out.extend_from_slice(b",\"batch\":");
            out.extend_from_slice(batch.as_bytes());
        }
        match &self.call_token {
            Some(token) if with_token => {
                out.extend_from_slice(b",\"call_token\":");
                push_quoted(&mut out, token);
            }
            _ => {}
        }
        out.push(b'}');
        out
    }
}

/// `N` random bytes as lowercase hex.
pub fn random_hex<const N: usize>() -> String {
    let mut out = String::with_capacity(N * 2);
    push_random_hex::<N>(&mut out);
    out
}

/// Appends `N` random bytes as lowercase hex to `out`.
const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends the lowest `N` hex digits of `value`, most significant first.
fn push_hex<const N: usize>(out: &mut String, value: u64) {
    const { assert!(N <= 16, "a u64 has 16 hex digits") };
    let mut hex = [0u8; 16];
    for (i, digit) in hex[..N].iter_mut().enumerate() {
        let shift = 4 * (N - 1 - i);
        *digit = DIGITS[((value >> shift) & 0xf) as usize];
    }
    out.push_str(std::str::from_utf8(&hex[..N]).expect("hex digits are ASCII"));
}

pub fn push_random_hex<const N: usize>(out: &mut String) {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    // Written as bytes, then appended in one go: a `char` push per digit
    // costs a capacity check and a UTF-8 encoding each (4 ids a request).
    const { assert!(N <= 32, "at most 32 random bytes") };
    let mut hex = [0u8; 64];
    let hex = &mut hex[..2 * N];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    out.push_str(std::str::from_utf8(hex).expect("hex digits are ASCII"));
}

/// Appends `text` as a JSON string. App and function names need no
/// escapes (`[a-z0-9_-]`); anything else goes through serde_json.
fn push_quoted(out: &mut Vec<u8>, text: &str) {
    if text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, text).expect("writing to a Vec cannot fail");
    }
}

/// Appends `n` in decimal.
pub(crate) fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Milliseconds since the Unix epoch, `timeout` from now.
pub fn deadline_ms_after(timeout: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (now + timeout).as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_are_prefixed_and_random() {
        let a = CallId::generate();
        let b = CallId::generate();
        assert!(a.as_str().starts_with("fc-"));
        assert_eq!(a.as_str().len(), CallId::LEN);
        assert!(a.as_str()[3..].bytes().all(|b| DIGITS.contains(&b)));
        assert_ne!(a, b);
        // 128 random bits after the time: no two ids share them.
        assert_ne!(a.as_str()[15..], b.as_str()[15..]);
    }

    #[test]
    fn call_ids_begin_with_their_creation_time_and_sort_by_it() {
        let ms = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
        };
        let before = ms();
        let ids: Vec<CallId> = (0..1000).map(|_| CallId::generate()).collect();
        let after = ms();
        for id in &ids {
            let made = u64::from_str_radix(&id.as_str()[3..15], 16).unwrap();
            assert!((before..=after).contains(&made), "{id} made at {made}");
        }
        assert!(
            ids.windows(2)
                .all(|w| w[0].as_str()[..15] <= w[1].as_str()[..15])
        );
    }

    #[test]
    fn hex_digits_are_written_most_significant_first() {
        let mut out = String::new();
        push_hex::<12>(&mut out, 0x0123_4567_89ab);
        assert_eq!(out, "0123456789ab");
        out.clear();
        push_hex::<4>(&mut out, 0xdead_beef);
        assert_eq!(out, "beef");
    }

    #[test]
    fn invocation_request_splices_arguments_verbatim() {
        let inv = Invocation {
            call_id: CallId("fc-1".into()),
            app: "demo".into(),
            function: "square".into(),
            args: "[1e400]".into(),
            kwargs: "{\"x\": 12345678901234567890123456789}".into(),
            deadline_ms: 1764000000000,
            deadline: tokio::time::Instant::now(),
            attempt: 1,
            class: None,
            trace: Trace {
                request_id: "r".into(),
                traceparent: String::new(),
            },
            principal: None,
            call_token: Some("tok.en".into()),
            parent: None,
            batch: None,
        };
        let text = String::from_utf8(inv.to_json()).unwrap();
        assert_eq!(
            text,
            "{\"call_id\":\"fc-1\",\"app\":\"demo\",\"function\":\"square\",\"args\":[1e400],\
             \"kwargs\":{\"x\": 12345678901234567890123456789},\"deadline_ms\":1764000000000,\"attempt\":1}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&text.replace("1e400", "1")).unwrap();
        assert_eq!(parsed["function"], "square");
        let event = String::from_utf8(inv.to_json_with_token()).unwrap();
        assert!(
            event.ends_with(",\"attempt\":1,\"call_token\":\"tok.en\"}"),
            "{event}"
        );
        let batched = Invocation {
            batch: Some("[{\"args\":[1],\"kwargs\":{}}]".into()),
            ..inv
        };
        let text = String::from_utf8(batched.to_json()).unwrap();
        assert!(
            text.ends_with(",\"batch\":[{\"args\":[1],\"kwargs\":{}}]}"),
            "{text}"
        );
    }

    #[test]
    fn numbers_and_names_are_written_as_json() {
        for n in [0, 7, 10, 1764000000000, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
        for name in ["demo", "f-1_x", "with \"quote\"", "caf\u{e9}"] {
            let mut out = Vec::new();
            push_quoted(&mut out, name);
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, name);
        }
    }
}
