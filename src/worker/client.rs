//! The gateway's side of the worker protocol (version 1), as the worker
//! speaks it: one HTTPS client (HTTP/1.1 or h2 by ALPN) that asks how the
//! function's instances run, pulls its calls, heartbeats them and posts
//! their ends, each request with the Bearer token and the worker's id.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};

use super::WorkerError;
use super::options::WorkerOptions;
use super::wire::{Call, FunctionSpec};
use crate::tls::client::{self as tls, HttpsClient};

/// The longest wait for an answer to a request that is not a poll.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest wait for an answer to a poll, which the gateway holds for
/// about 20 s when no call comes.
const POLL_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest wait for a heartbeat's answer: a heartbeat that takes
/// longer is late anyway (the gateway gives up on a worker after 5 s).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(4);

/// Largest event read: well above any gateway's `max_body`, a bound so that
/// a broken answer cannot take the machine's memory.
const MAX_EVENT: usize = 256 << 20;

/// Largest answer read for anything else (specs, problems).
const MAX_ANSWER: usize = 64 << 10;

/// The header that names the worker in every request.
const WORKER_HEADER: HeaderName = HeaderName::from_static("fngate-worker");

/// Why a request to the gateway got no wanted answer.
#[derive(Debug, Clone)]
pub(super) enum Failure {
    /// A 4xx answer: the gateway refused, and its problem says why.
    Refused {
        status: StatusCode,
        code: Option<String>,
        detail: String,
    },
    /// A 5xx answer, a network error or no answer in time: worth trying
    /// again.
    Unavailable(String),
    /// The gateway's certificate is not trusted.
    Untrusted(String),
    /// A 2xx answer that does not follow the protocol.
    Garbage(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused {
                status,
                code,
                detail,
            } => match code {
                Some(code) => write!(f, "{} {code}: {detail}", status.as_u16()),
                None => write!(f, "{}: {detail}", status.as_u16()),
            },
            Failure::Unavailable(why) | Failure::Garbage(why) => f.write_str(why),
            Failure::Untrusted(why) => write!(f, "the gateway's certificate is not trusted: {why}"),
        }
    }
}

impl Failure {
    /// The worker cannot go on after this: the credential, its scope or
    /// the function are refused (401, 403, 404), or the function has no
    /// instances (409).
    pub(super) fn is_fatal(&self) -> bool {
        matches!(
            self,
            Failure::Refused { status, .. } if matches!(status.as_u16(), 401 | 403 | 404 | 409)
        )
    }
}

impl From<Failure> for WorkerError {
    fn from(failure: Failure) -> WorkerError {
        match failure {
            Failure::Refused { status, .. } => WorkerError::Refused {
                status: status.as_u16(),
                problem: failure.to_string(),
            },
            Failure::Untrusted(why) => WorkerError::Untrusted(why),
            Failure::Unavailable(why) | Failure::Garbage(why) => WorkerError::Protocol(why),
        }
    }
}

/// An answer the gateway gave, read to its end.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// What a heartbeat's answer said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Beat {
    /// The call is still this worker's.
    Alive,
    /// 404 or 410: the call was cancelled or is no longer this worker's.
    Gone,
}

/// The end of a call, as it is posted.
pub(super) enum End<'a> {
    /// `.../response` with the result JSON.
    Result(&'a Bytes),
    /// `.../error` with `{"errorType", "errorMessage"}`.
    Error { kind: &'a str, message: &'a str },
}

/// The worker's client of one function's work routes.
pub(super) struct GatewayClient {
    http: HttpsClient,
    /// `{gateway}/_/work/{app}/{function}`
    work: String,
    authorization: HeaderValue,
    worker: HeaderValue,
}

impl GatewayClient {
    /// A client trusting `--cacert` (or the system's roots), sending
    /// `token` and `worker_id` with every request.
    pub(super) fn new(
        options: &WorkerOptions,
        token: &str,
        worker_id: &str,
    ) -> Result<GatewayClient, WorkerError> {
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                WorkerError::TokenEnv(format!(
                    "the value of {} holds characters a header cannot carry",
                    options.token_env
                ))
            })?;
        authorization.set_sensitive(true);
        let worker = HeaderValue::from_str(worker_id).expect("a worker id is wk- and hex digits");
        let target = &options.target;
        Ok(GatewayClient {
            http: tls::https_client(roots(options.cacert.as_deref())?),
            work: format!(
                "{}/_/work/{}/{}",
                options.gateway, target.app, target.function
            ),
            authorization,
            worker,
        })
    }

    /// `GET /_/work/{app}/{function}`: how the function's instances run.
    pub(super) async fn describe(&self) -> Result<FunctionSpec, Failure> {
        let answer = self
            .send(Method::GET, "", None, REQUEST_TIMEOUT, MAX_ANSWER)
            .await?;
        if answer.status != StatusCode::OK {
            return Err(refusal(&answer));
        }
        FunctionSpec::parse(&answer.body).map_err(Failure::Garbage)
    }

    /// `POST .../next`: the next call, or `None` when none came while the
    /// gateway held the poll.
    pub(super) async fn next(&self, timeout: Duration) -> Result<Option<Call>, Failure> {
        let answer = self
            .send(
                Method::POST,
                "/next",
                Some(Bytes::new()),
                POLL_TIMEOUT,
                MAX_EVENT,
            )
            .await?;
        match answer.status {
            StatusCode::OK => Call::from_answer(&answer.headers, answer.body, timeout)
                .map(Some)
                .map_err(Failure::Garbage),
            StatusCode::NO_CONTENT => Ok(None),
            _ => Err(refusal(&answer)),
        }
    }

    /// `POST .../calls/{id}/heartbeat`.
    pub(super) async fn heartbeat(&self, id: &str) -> Result<Beat, Failure> {
        let path = format!("/calls/{id}/heartbeat");
        let answer = self
            .send(
                Method::POST,
                &path,
                Some(Bytes::new()),
                HEARTBEAT_TIMEOUT,
                MAX_ANSWER,
            )
            .await?;
        match answer.status.as_u16() {
            200..=299 => Ok(Beat::Alive),
            404 | 410 => Ok(Beat::Gone),
            _ => Err(refusal(&answer)),
        }
    }

    /// `POST .../calls/{id}/response` or `.../error`: the call's end.
    pub(super) async fn end(&self, id: &str, end: &End<'_>) -> Result<(), Failure> {
        let (path, body) = match end {
            End::Result(result) => (format!("/calls/{id}/response"), (*result).clone()),
            End::Error { kind, message } => {
                let report = serde_json::json!({"errorType": kind, "errorMessage": message});
                (
                    format!("/calls/{id}/error"),
                    Bytes::from(report.to_string()),
                )
            }
        };
        let answer = self
            .send(Method::POST, &path, Some(body), REQUEST_TIMEOUT, MAX_ANSWER)
            .await?;
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(refusal(&answer))
        }
    }

    /// Sends one request (a JSON body when `body` is given) and reads its
    /// answer, both within `within`.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        within: Duration,
        limit: usize,
    ) -> Result<Answer, Failure> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.work))
            .header(header::AUTHORIZATION, self.authorization.clone())
            .header(WORKER_HEADER, self.worker.clone());
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| Failure::Unavailable(format!("building a request: {e}")))?;
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| {
                let why = tls::error_chain(&e);
                if tls::is_untrusted(&e) {
                    Failure::Untrusted(why)
                } else {
                    Failure::Unavailable(why)
                }
            })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, limit)
                .collect()
                .await
                .map_err(|e| Failure::Unavailable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(within, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(Failure::Unavailable(format!(
                    "no answer within {}",
                    humantime::format_duration(within)
                )))
            })
    }
}

/// A non-success answer as a failure: 5xx is worth retrying, 4xx is a
/// refusal with its problem's `code` and `detail`.
fn refusal(answer: &Answer) -> Failure {
    let (code, detail) = problem(answer.status, &answer.body);
    if answer.status.is_server_error() {
        return Failure::Unavailable(format!("{}: {detail}", answer.status.as_u16()));
    }
    if !answer.status.is_client_error() {
        return Failure::Garbage(format!("unexpected answer {}: {detail}", answer.status));
    }
    Failure::Refused {
        status: answer.status,
        code,
        detail,
    }
}

/// A problem+json body's `code` and `detail`; for another body, its text
/// (shortened), or the status's reason.
fn problem(status: StatusCode, body: &[u8]) -> (Option<String>, String) {
    #[derive(serde::Deserialize)]
    struct Problem {
        code: Option<String>,
        detail: Option<String>,
        title: Option<String>,
    }
    if let Ok(problem) = serde_json::from_slice::<Problem>(body)
        && let Some(detail) = problem.detail.or(problem.title)
    {
        return (problem.code, detail);
    }
    let text = String::from_utf8_lossy(body);
    let text: String = text.trim().chars().take(300).collect();
    if text.is_empty() {
        let reason = status.canonical_reason().unwrap_or("no reason given");
        (None, reason.to_owned())
    } else {
        (None, text)
    }
}

/// What the worker trusts: the CA certificates of `cacert`, or the
/// system's roots.
fn roots(cacert: Option<&Path>) -> Result<rustls::RootCertStore, WorkerError> {
    let Some(path) = cacert else {
        let roots = tls::system_roots();
        if roots.is_empty() {
            tracing::warn!(
                "no system CA certificate found: the gateway's certificate cannot be checked (pass --cacert)"
            );
        }
        return Ok(roots);
    };
    tls::roots_from_pem(path).map_err(|why| WorkerError::CaFile {
        path: path.to_owned(),
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_carries_the_problem_detail_and_only_some_are_fatal() {
        let answer = |status: u16, body: &str| Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
        };
        let unauthorized = refusal(&answer(
            401,
            r#"{"type": "about:blank", "title": "Unauthorized", "status": 401,
                "code": "unauthorized", "detail": "the token has expired"}"#,
        ));
        assert!(unauthorized.is_fatal());
        assert_eq!(
            unauthorized.to_string(),
            "401 unauthorized: the token has expired"
        );
        for status in [403, 404, 409] {
            assert!(refusal(&answer(status, "{}")).is_fatal(), "{status}");
        }
        for status in [400, 408, 410, 429] {
            assert!(!refusal(&answer(status, "")).is_fatal(), "{status}");
        }
        let unavailable = refusal(&answer(503, "overloaded, try later"));
        assert!(matches!(unavailable, Failure::Unavailable(_)));
        assert_eq!(unavailable.to_string(), "503: overloaded, try later");
        assert_eq!(
            refusal(&answer(404, "")).to_string(),
            "404: Not Found",
            "an empty body gives the status's reason"
        );
    }

    #[test]
    fn cacert_must_hold_a_pem_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["fngate test CA".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&good, ca.pem()).unwrap();
        assert_eq!(roots(Some(&good)).unwrap().len(), 1);

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        for path in [empty, dir.path().join("missing.pem")] {
            match roots(Some(&path)) {
                Err(error @ WorkerError::CaFile { .. }) => assert_eq!(error.exit_code(), 2),
                other => panic!("{}: {:?}", path.display(), other.map(|r| r.len())),
            }
        }
    }
}
