//! Backends run invocations: `exec` starts a local command per call, `http`
//! POSTs the invocation request to a service. Both honour the invocation's
//! deadline and stop their work when the returned future is dropped.

pub mod batch;
pub mod exec;
pub mod forward;
pub mod http;
pub mod instance_http;
pub mod lambda;
mod pool;
pub mod stream;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::invocation::Invocation;
use crate::translate::json::{self, Rules};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Marks an answer whose body streams from a backend as the client reads
/// it (passthrough): it is not held in memory, so the listener does not
/// count it against the result buffers.
#[derive(Debug, Clone, Copy)]
pub struct StreamedAnswer;

/// How an invocation can fail. What reaches the client is decided by the
/// HTTP layer; the `String`s here are for the log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The function ran and reported an error.
    #[error("function error {kind}: {message}")]
    Function { kind: String, message: String },
    /// The backend could not be reached or started.
    #[error("backend unreachable: {0}")]
    Unreachable(String),
    /// The backend died or dropped the connection while working.
    #[error("backend crashed: {0}")]
    Crashed(String),
    /// The backend answered something that is not a result.
    #[error("backend answered garbage: {0}")]
    Garbage(String),
    /// The function's instance failed its set-up and said why (a Lambda
    /// runtime's `init/error`).
    #[error("the instance's init failed with {kind}: {message}")]
    InitFailed { kind: String, message: String },
    /// The deadline passed; the work was stopped.
    #[error("function timed out")]
    Timeout,
}

/// Runs invocations of one function.
pub trait Backend: Send + Sync {
    /// Runs `invocation` and returns its JSON result bytes.
    fn invoke<'a>(
        &'a self,
        invocation: &'a Invocation,
    ) -> BoxFuture<'a, Result<Bytes, BackendError>>;

    /// Runs `invocation` of a streaming function (`stream = true`) and
    /// returns its items as they come; dropping the stream stops the
    /// function. A backend that cannot stream answers its one result as
    /// one item.
    fn invoke_stream<'a>(
        &'a self,
        invocation: &'a Invocation,
    ) -> BoxFuture<'a, Result<stream::ItemStream, BackendError>> {
        Box::pin(async move { self.invoke(invocation).await.map(stream::single) })
    }

    /// A one-line description for `fngate check` and logs.
    fn describe(&self) -> String;

    /// The call `call_id` was cancelled and its `invoke` future dropped:
    /// stop whatever still runs it (an instance that took it).
    fn abort(&self, _call_id: &str) {}
}

/// The rules a function's result must meet: any JSON document.
pub(crate) const RESULT_RULES: Rules = Rules {
    max_depth: 1024,
    reject_duplicate_keys: false,
};

/// Trims and checks a result body; an all-blank body is the JSON `null`.
pub(crate) fn result_json(body: Bytes) -> Result<Bytes, BackendError> {
    match json::check(&body, RESULT_RULES) {
        Ok(doc) => Ok(body.slice(doc.start..doc.end)),
        Err(_) if json::is_blank(&body) => Ok(Bytes::from_static(b"null")),
        Err(e) => Err(BackendError::Garbage(format!("result is not JSON: {e}"))),
    }
}

/// An error the function reported in the `{"error": {"type", "message"}}` form.
pub(crate) fn reported_error(body: &[u8]) -> Option<BackendError> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: Reported,
    }
    #[derive(serde::Deserialize)]
    struct Reported {
        #[serde(rename = "type")]
        kind: Option<String>,
        message: Option<String>,
    }
    let envelope: Envelope = serde_json::from_slice(body).ok()?;
    Some(BackendError::Function {
        kind: envelope.error.kind.unwrap_or_else(|| "Error".to_owned()),
        message: envelope.error.message.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_json_whitespace_makes_an_empty_result() {
        assert_eq!(result_json(Bytes::from_static(b" \n\t\r")).unwrap(), "null");
        // A form feed is not JSON whitespace: the answer is garbage.
        assert!(matches!(
            result_json(Bytes::from_static(b"\x0c")),
            Err(BackendError::Garbage(_))
        ));
        assert_eq!(result_json(Bytes::from_static(b" 42 ")).unwrap(), "42");
    }
}
