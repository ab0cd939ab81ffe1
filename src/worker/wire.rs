//! What the worker protocol's messages say: how the function's instances
//! run (`GET /_/work/{app}/{function}`), and a call as a poll's answer
//! gives it (the event, and the `Lambda-Runtime-*` headers an instance's
//! `invocation/next` would get).

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::options::Target;
use crate::instances::runtime_api::Delivery;
use crate::invocation::names;

/// Headers of a poll's answer that an http instance gets, as the gateway's
/// http backend sends them, when the gateway passes them on.
const FORWARDED: [HeaderName; 4] = [
    names::X_REQUEST_ID,
    names::TRACEPARENT,
    names::X_FNGATE_SUBJECT,
    names::X_FNGATE_ISSUER,
];

/// How the function's instances run, as `GET /_/work/{app}/{function}`
/// says. Unknown members are ignored (a newer gateway may say more).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub(super) struct FunctionSpec {
    pub protocol: Protocol,
    /// Where an http instance takes its calls (absent or `null`: `/`).
    #[serde(default = "root", deserialize_with = "path_or_root")]
    pub path: String,
    /// Answers 2xx once an http instance is ready (`None`: once it accepts
    /// connections).
    #[serde(default)]
    pub ready_path: Option<String>,
    /// Calls an http instance takes at once (a lambda instance takes one).
    #[serde(default = "one")]
    pub instance_concurrency: usize,
    timeout_ms: u64,
}

fn root() -> String {
    "/".to_owned()
}

fn path_or_root<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let path: Option<String> = serde::Deserialize::deserialize(d)?;
    Ok(path.unwrap_or_else(root))
}

fn one() -> usize {
    1
}

/// The most calls one http instance is given at once, whatever the gateway
/// says: each is a poll and a connection of this worker's.
const MAX_INSTANCE_CONCURRENCY: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Protocol {
    /// The instance speaks the Lambda Runtime API, served here.
    Lambda,
    /// The instance is an HTTP server on `PORT`.
    Http,
}

impl FunctionSpec {
    /// Reads and checks the gateway's answer.
    pub(super) fn parse(body: &[u8]) -> Result<FunctionSpec, String> {
        let spec: FunctionSpec =
            serde_json::from_slice(body).map_err(|e| format!("the function's description: {e}"))?;
        if !spec.path.starts_with('/') {
            return Err(format!("the function's path {:?} is not a path", spec.path));
        }
        if let Some(ready) = &spec.ready_path
            && !ready.starts_with('/')
        {
            return Err(format!("the function's ready_path {ready:?} is not a path"));
        }
        if spec.instance_concurrency == 0 || spec.instance_concurrency > MAX_INSTANCE_CONCURRENCY {
            return Err(format!(
                "the function's instance_concurrency {} is not within 1 to {MAX_INSTANCE_CONCURRENCY}",
                spec.instance_concurrency
            ));
        }
        if spec.timeout_ms == 0 {
            return Err("the function's timeout_ms is 0".to_owned());
        }
        Ok(spec)
    }

    /// How long a call may run.
    pub(super) fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// One call the gateway gave this worker: the event and what the headers
/// of its answer said.
#[derive(Debug, Clone)]
pub(super) struct Call {
    pub id: String,
    /// The invocation request JSON.
    pub event: Bytes,
    /// `Lambda-Runtime-Deadline-Ms`, or the timeout from now when absent.
    pub deadline_ms: u64,
    pub arn: Option<String>,
    pub trace_id: Option<String>,
    pub client_context: Option<String>,
    /// The trace and principal headers the gateway passed on, if any.
    pub forwarded: Vec<(HeaderName, HeaderValue)>,
}

impl Call {
    /// Reads a poll's 200 answer; `timeout` gives the deadline when the
    /// answer names none.
    pub(super) fn from_answer(
        headers: &HeaderMap,
        event: Bytes,
        timeout: Duration,
    ) -> Result<Call, String> {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let id = text("lambda-runtime-aws-request-id")
            .ok_or("the call came without a Lambda-Runtime-Aws-Request-Id")?;
        if !is_call_id(&id) {
            return Err(format!("the call id {id:?} is not a call id"));
        }
        let deadline_ms = match text("lambda-runtime-deadline-ms") {
            Some(ms) => ms
                .trim()
                .parse()
                .map_err(|_| format!("call {id}: Lambda-Runtime-Deadline-Ms {ms:?}"))?,
            None => crate::invocation::deadline_ms_after(timeout),
        };
        let forwarded = FORWARDED
            .iter()
            .filter_map(|name| Some((name.clone(), headers.get(name)?.clone())))
            .collect();
        Ok(Call {
            deadline_ms,
            arn: text("lambda-runtime-invoked-function-arn"),
            trace_id: text("lambda-runtime-trace-id"),
            client_context: text("lambda-runtime-client-context"),
            forwarded,
            event,
            id,
        })
    }

    /// The call as the local Runtime API hands it to the instance: what the
    /// gateway said, and where it said nothing, what the gateway's own
    /// Runtime API would have said.
    pub(super) fn delivery(&self, target: &Target) -> Delivery {
        let arn = self.arn.clone().unwrap_or_else(|| {
            format!(
                "arn:aws:lambda:local:000000000000:function:{}.{}",
                target.app, target.function
            )
        });
        let client_context = self.client_context.clone().unwrap_or_else(|| {
            serde_json::json!({
                "call_id": self.id,
                "app": target.app,
                "function": target.function,
            })
            .to_string()
        });
        Delivery {
            call_id: self.id.clone(),
            event: self.event.clone(),
            deadline_ms: self.deadline_ms,
            arn,
            trace_id: self.trace_id.clone().unwrap_or_default(),
            client_context,
        }
    }
}

/// A call id fit for a URL path: 1 to 128 of `A-Z a-z 0-9 _ -` (the
/// gateway's are `fc-` and URL-safe random characters).
fn is_call_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target::parse("demo/embed").unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[test]
    fn a_spec_is_read_with_defaults_and_unknown_members_ignored() {
        let spec = FunctionSpec::parse(
            br#"{"protocol": "http", "path": "/invoke", "ready_path": "/healthz",
                 "instance_concurrency": 8, "timeout_ms": 30000, "newer": true}"#,
        )
        .unwrap();
        assert_eq!(spec.protocol, Protocol::Http);
        assert_eq!(spec.path, "/invoke");
        assert_eq!(spec.ready_path.as_deref(), Some("/healthz"));
        assert_eq!(spec.instance_concurrency, 8);
        assert_eq!(spec.timeout(), Duration::from_secs(30));

        let spec = FunctionSpec::parse(
            br#"{"protocol": "lambda", "ready_path": null, "timeout_ms": 1500}"#,
        )
        .unwrap();
        assert_eq!(spec.protocol, Protocol::Lambda);
        assert_eq!(spec.path, "/");
        assert_eq!(spec.ready_path, None);
        assert_eq!(spec.instance_concurrency, 1);
        // A lambda function has no path: it may say so with null.
        let spec = FunctionSpec::parse(
            br#"{"protocol": "lambda", "path": null, "ready_path": null,
                 "instance_concurrency": 1, "timeout_ms": 1500}"#,
        )
        .unwrap();
        assert_eq!(spec.path, "/");
    }

    #[test]
    fn a_spec_that_cannot_be_followed_is_refused() {
        for bad in [
            &br#"{"protocol": "grpc", "timeout_ms": 1000}"#[..],
            br#"{"protocol": "http"}"#,
            br#"{"protocol": "http", "timeout_ms": 0}"#,
            br#"{"protocol": "http", "path": "invoke", "timeout_ms": 1000}"#,
            br#"{"protocol": "http", "ready_path": "healthz", "timeout_ms": 1000}"#,
            br#"{"protocol": "http", "instance_concurrency": 0, "timeout_ms": 1000}"#,
            br#"{"protocol": "http", "instance_concurrency": 100000, "timeout_ms": 1000}"#,
            b"<html>",
        ] {
            assert!(
                FunctionSpec::parse(bad).is_err(),
                "{} was accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_delivery_carries_what_the_gateway_said() {
        let answer = headers(&[
            ("lambda-runtime-aws-request-id", "fc-abc_DEF-123"),
            ("lambda-runtime-deadline-ms", "1764000000000"),
            (
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:local:000000000000:function:demo.embed",
            ),
            (
                "lambda-runtime-trace-id",
                "Root=1-0af76519-16cd43dd8448eb211c80319c;Parent=b7ad6b7169203331;Sampled=1",
            ),
            ("lambda-runtime-client-context", r#"{"custom": 1}"#),
        ]);
        let event = Bytes::from_static(br#"{"call_id": "fc-abc_DEF-123", "kwargs": {}}"#);
        let call = Call::from_answer(&answer, event.clone(), TIMEOUT).unwrap();
        let delivery = call.delivery(&target());
        assert_eq!(delivery.call_id, "fc-abc_DEF-123");
        assert_eq!(delivery.event, event);
        assert_eq!(delivery.deadline_ms, 1_764_000_000_000);
        assert_eq!(
            delivery.arn,
            "arn:aws:lambda:local:000000000000:function:demo.embed"
        );
        assert_eq!(
            delivery.trace_id,
            "Root=1-0af76519-16cd43dd8448eb211c80319c;Parent=b7ad6b7169203331;Sampled=1"
        );
        assert_eq!(delivery.client_context, r#"{"custom": 1}"#);
    }

    #[test]
    fn a_delivery_fills_in_what_the_gateway_left_out() {
        let answer = headers(&[("lambda-runtime-aws-request-id", "fc-1")]);
        let before = crate::invocation::deadline_ms_after(TIMEOUT);
        let call = Call::from_answer(&answer, Bytes::from_static(b"{}"), TIMEOUT).unwrap();
        let after = crate::invocation::deadline_ms_after(TIMEOUT);
        let delivery = call.delivery(&target());
        assert!((before..=after).contains(&delivery.deadline_ms));
        assert_eq!(
            delivery.arn,
            "arn:aws:lambda:local:000000000000:function:demo.embed"
        );
        assert_eq!(delivery.trace_id, "");
        let context: serde_json::Value = serde_json::from_str(&delivery.client_context).unwrap();
        assert_eq!(
            context,
            serde_json::json!({"call_id": "fc-1", "app": "demo", "function": "embed"})
        );
    }

    #[test]
    fn a_call_needs_an_id_fit_for_a_path_and_a_readable_deadline() {
        for bad in [
            headers(&[]),
            headers(&[("lambda-runtime-aws-request-id", "")]),
            headers(&[("lambda-runtime-aws-request-id", "fc-1/../../admin")]),
            headers(&[("lambda-runtime-aws-request-id", "fc-1?x=1")]),
            headers(&[
                ("lambda-runtime-aws-request-id", "fc-1"),
                ("lambda-runtime-deadline-ms", "soon"),
            ]),
        ] {
            assert!(
                Call::from_answer(&bad, Bytes::new(), TIMEOUT).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn trace_and_principal_headers_are_kept_for_http_instances() {
        let answer = headers(&[
            ("lambda-runtime-aws-request-id", "fc-1"),
            ("x-request-id", "req-7"),
            ("x-fngate-subject", "reports"),
            ("x-other", "dropped"),
        ]);
        let call = Call::from_answer(&answer, Bytes::new(), TIMEOUT).unwrap();
        let kept: Vec<(&str, &str)> = call
            .forwarded
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            kept,
            [("x-request-id", "req-7"), ("x-fngate-subject", "reports")]
        );
    }
}
