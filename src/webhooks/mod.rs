//! Completion webhooks for spawned calls: when a call with a `Callback-Url`
//! ends, POST `{"call_id", "status", "result" | "error"}` to that URL, signed
//! per Standard Webhooks, retrying with backoff. The store owns the queue of
//! deliveries (durable across restarts); this module owns sending them.

mod schedule;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose::STANDARD};
use http::header::{CONTENT_TYPE, USER_AGENT};
use http::uri::Scheme;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use tokio::sync::Notify;
use tokio::task::{self, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::schedule::Schedule;
use crate::backend::http::Pool;
use crate::store::{
    CallRecord, CallState, CallStore, Delivery, FailureKind, Outcome, StoreError, now_ms,
};

/// How long one attempt may take, answer included.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first retry waits about this long; each later one twice the last.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// No retry waits longer than this.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// The pause before trying the store again after it failed.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// Most of a receiver's answer body read (and discarded) so its connection
/// can go back to the pool.
const ANSWER_LIMIT: usize = 64 * 1024;
const SECRET_PREFIX: &str = "whsec_";

/// Base64 as Standard Webhooks secrets are written, padded or not.
const SECRET_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Validated webhook settings (built by config from [webhooks]).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub secret: Vec<u8>,
    pub allow_hosts: Vec<String>,
    pub max_attempts: u32,
}

/// Decodes a Standard Webhooks secret: base64, with or without the
/// "whsec_" prefix. Err(reason) if not base64 or empty.
pub fn decode_secret(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    let encoded = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
    let secret = SECRET_BASE64
        .decode(encoded)
        .map_err(|e| format!("the webhook secret is not base64: {e}"))?;
    if secret.is_empty() {
        return Err("the webhook secret is empty".to_owned());
    }
    Ok(secret)
}

/// "v1,<base64 of HMAC-SHA256(secret, "{msg_id}.{timestamp}.{payload}")>"
pub fn sign(secret: &[u8], msg_id: &str, timestamp: i64, payload: &[u8]) -> String {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut context = hmac::Context::with_key(&key);
    context.update(msg_id.as_bytes());
    context.update(b".");
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(payload);
    format!("v1,{}", STANDARD.encode(context.sign().as_ref()))
}

/// The `error` member of a payload.
#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    #[serde(rename = "type")]
    error_type: &'a str,
    message: &'a str,
}

/// The JSON body for a finished call: `{"call_id", "status"}` plus
/// `"result"` (the stored JSON spliced in as stored, so numbers like 1e400
/// survive exactly) when it succeeded, or `"error": {"code", "type",
/// "message"}` when it failed, timed out or was cancelled.
///
/// `expose_errors` false (the function's `expose_errors` setting): a
/// function error's message is replaced by the generic one clients get.
pub fn payload(record: &CallRecord, expose_errors: bool) -> Vec<u8> {
    fn string(text: &str) -> Vec<u8> {
        serde_json::to_vec(text).expect("a string always serializes")
    }
    let mut body = Vec::with_capacity(128);
    body.extend_from_slice(b"{\"call_id\":");
    body.extend(string(&record.id));
    body.extend_from_slice(b",\"status\":");
    body.extend(string(record.state.as_str()));
    let error = match (record.state, &record.outcome) {
        (_, Some(Outcome::Succeeded(result))) => {
            body.extend_from_slice(b",\"result\":");
            body.extend_from_slice(raw_result(&record.id, result));
            None
        }
        (
            _,
            Some(Outcome::Answered {
                status,
                content_type,
                body: answer,
            }),
        ) => {
            // A passthrough answer: its status, type and body (as text).
            let result = serde_json::json!({
                "status": status,
                "content_type": content_type,
                "body": String::from_utf8_lossy(answer),
            });
            body.extend_from_slice(b",\"result\":");
            body.extend(serde_json::to_vec(&result).expect("a JSON value always serializes"));
            None
        }
        (
            _,
            Some(Outcome::Failed {
                kind,
                error_type,
                message,
            }),
        ) => Some(ErrorBody {
            code: match kind {
                FailureKind::Function => "function_error",
                FailureKind::Backend => "backend_error",
            },
            error_type,
            message: if expose_errors || *kind != FailureKind::Function {
                message
            } else {
                crate::http::problem::WITHHELD_MESSAGE
            },
        }),
        (CallState::TimedOut, _) | (_, Some(Outcome::TimedOut)) => Some(ErrorBody {
            code: "function_timeout",
            error_type: "function_timeout",
            message: "the function ran past its timeout",
        }),
        (CallState::Cancelled, _) => Some(ErrorBody {
            code: "call_cancelled",
            error_type: "cancelled",
            message: "the call was cancelled",
        }),
        _ => None,
    };
    if let Some(error) = error {
        body.extend_from_slice(b",\"error\":");
        body.extend(serde_json::to_vec(&error).expect("string fields always serialize"));
    }
    body.push(b'}');
    body
}

/// A stored result as it goes into a payload. Backends store only valid
/// JSON; anything else would break the whole payload, so it becomes null.
fn raw_result<'a>(call_id: &str, result: &'a [u8]) -> &'a [u8] {
    // `IgnoredAny` checks the syntax without converting numbers.
    match serde_json::from_slice::<serde::de::IgnoredAny>(result) {
        Ok(_) => result,
        Err(e) => {
            tracing::warn!(call_id, error = %e, "stored result is not JSON; its webhook says null");
            b"null"
        }
    }
}

/// How one attempt went.
enum Attempt {
    Delivered,
    /// Worth trying again (5xx, 429, no connection, no answer in time).
    Retry(String),
    /// Trying again would not help (other statuses, unusable URL).
    Refused(String),
}

/// Sends completion webhooks; see `run`.
pub struct Webhooks {
    settings: WebhookSettings,
    /// `settings.allow_hosts` lowercased, IPv6 literals without brackets.
    allow_hosts: Vec<String>,
    client: Pool,
    store: Arc<dyn CallStore>,
    exposes_errors: ExposesErrors,
    backoff_base: Duration,
}

/// Whether a function (app, name) shows its error messages to clients
/// (its `expose_errors`); payloads of the others carry a generic message.
pub type ExposesErrors = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

impl Webhooks {
    pub fn new(
        settings: WebhookSettings,
        client: Pool,
        store: Arc<dyn CallStore>,
        exposes_errors: ExposesErrors,
    ) -> Webhooks {
        let allow_hosts = settings
            .allow_hosts
            .iter()
            .map(|h| normalize_host(h))
            .collect();
        Webhooks {
            settings,
            allow_hosts,
            client,
            store,
            exposes_errors,
            backoff_base: BACKOFF_BASE,
        }
    }

    /// Sets the first retry's delay (tests shorten it; the store's clock
    /// is the wall clock, so tokio's paused clock cannot stand in).
    pub fn with_backoff_base(mut self, base: Duration) -> Webhooks {
        self.backoff_base = base;
        self
    }

    /// Checks a Callback-Url header value: an absolute http:// or https://
    /// URL, no userinfo, whose host (any port) is exactly one of
    /// `allow_hosts`. Returns the URL to store, or the reason for a 400.
    /// Nothing is ever called unless its host is listed, loopback and
    /// private addresses included: that is the SSRF rule.
    pub fn check_callback_url(&self, url: &str) -> Result<String, String> {
        self.target(url).map(|uri| uri.to_string())
    }

    fn target(&self, url: &str) -> Result<Uri, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("Callback-Url is not a valid URL: {e}"))?;
        let scheme_ok = uri.scheme() == Some(&Scheme::HTTP) || uri.scheme() == Some(&Scheme::HTTPS);
        let Some(authority) = uri.authority().filter(|_| scheme_ok) else {
            return Err("Callback-Url must be an absolute http:// or https:// URL".to_owned());
        };
        if authority.as_str().contains('@') {
            return Err("Callback-Url must not carry credentials".to_owned());
        }
        let host = normalize_host(authority.host());
        if host.is_empty() {
            return Err("Callback-Url has no host".to_owned());
        }
        if !self.allow_hosts.contains(&host) {
            return Err(format!(
                "Callback-Url host '{host}' is not in the gateway's allowed webhook hosts"
            ));
        }
        Ok(uri)
    }

    /// Delivers due webhooks until `shutdown`, each attempt in its own
    /// task: at most `schedule::PER_HOST` at once per receiver host, so a
    /// receiver that never answers delays only its own deliveries. Reads
    /// the store again when a call ends (`ended`), a retry falls due, or a
    /// slot frees while due rows were left in the store. A delivery
    /// interrupted by shutdown stays due and is sent again (same
    /// `webhook-id`) after a restart.
    pub async fn run(self: Arc<Self>, ended: Arc<Notify>, shutdown: CancellationToken) {
        let mut schedule = Schedule::default();
        let mut running: JoinSet<Option<i64>> = JoinSet::new();
        let mut tasks: HashMap<task::Id, String> = HashMap::new();
        // Whether to read the store now (each wake-up below decides), and
        // when to read it at the latest.
        let mut look = true;
        let mut look_at: Option<Instant> = None;
        loop {
            // Listen before looking, so a call ending meanwhile wakes us.
            let notified = ended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if look {
                let limit = schedule.read_limit();
                match self.store.due_deliveries(now_ms(), limit).await {
                    Ok((due, next)) => {
                        for delivery in schedule.offer(due, host_of) {
                            self.start(delivery, &mut running, &mut tasks);
                        }
                        self.hand_back(schedule.take_left_over());
                        look_at = next.map(instant_of);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "webhooks: reading due deliveries failed; retrying in 1 s");
                        look_at = Some(Instant::now() + STORE_RETRY);
                    }
                }
            }
            let wake = async {
                match look_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wake => look = true,
                _ = &mut notified => look = true,
                Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                    let (id, due_again) = match done {
                        Ok((id, retry_at)) => (id, retry_at.map(instant_of)),
                        Err(e) => {
                            tracing::error!(error = %e, "webhooks: a delivery task failed; it will be sent again");
                            (e.id(), Some(Instant::now() + STORE_RETRY))
                        }
                    };
                    if let Some(call_id) = tasks.remove(&id) {
                        for delivery in schedule.finished(&call_id) {
                            self.start(delivery, &mut running, &mut tasks);
                        }
                    }
                    look = schedule.left_some();
                    look_at = earliest(look_at, due_again);
                }
            }
        }
    }

    /// Hands deliveries it read but could not hold back to the store, due
    /// now, so that another replica sharing it (or this one, when a slot
    /// frees) takes them at once rather than after their lease.
    fn hand_back(&self, deliveries: Vec<Delivery>) {
        if deliveries.is_empty() || self.store.events().is_none() {
            return;
        }
        let store = self.store.clone();
        tokio::spawn(async move {
            for delivery in deliveries {
                let back =
                    store.delivery_attempted(delivery.call_id, delivery.attempts, Some(now_ms()));
                if let Err(e) = back.await {
                    tracing::debug!(error = %e, "webhooks: a delivery left for later stays leased until its lease lapses");
                }
            }
        });
    }

    /// Starts one attempt at `delivery` in its own task, which ends with
    /// when the delivery is due again, if it is.
    fn start(
        self: &Arc<Self>,
        delivery: Delivery,
        running: &mut JoinSet<Option<i64>>,
        tasks: &mut HashMap<task::Id, String>,
    ) {
        let call_id = delivery.call_id.clone();
        let webhooks = self.clone();
        let handle = running.spawn(async move {
            match webhooks.deliver(delivery).await {
                Ok(retry_at) => retry_at,
                Err(e) => {
                    // The row stays as it was: due, so it is sent again
                    // after a pause that keeps its slot.
                    tracing::warn!(error = %e, "webhooks: recording a delivery failed; retrying in 1 s");
                    tokio::time::sleep(STORE_RETRY).await;
                    Some(now_ms())
                }
            }
        });
        tasks.insert(handle.id(), call_id);
    }

    /// Makes one attempt at a delivery and records how it went; returns
    /// when it is due again, if it is to be retried.
    async fn deliver(&self, delivery: Delivery) -> Result<Option<i64>, StoreError> {
        let Delivery {
            call_id,
            url,
            attempts,
        } = delivery;
        let record = self.store.get(&call_id).await?;
        let Some(record) = record.filter(|r| !r.is_expired(now_ms())) else {
            tracing::debug!(call_id, "webhook dropped: the call has expired");
            self.store
                .delivery_attempted(call_id, attempts, None)
                .await?;
            return Ok(None);
        };
        let attempt = attempts.saturating_add(1);
        let outcome = match self.target(&url) {
            // Re-checked: the allowed hosts may have changed since the spawn.
            Err(reason) => Attempt::Refused(reason),
            Ok(target) => {
                let expose = (self.exposes_errors)(&record.app, &record.function);
                if !expose {
                    if let Some(Outcome::Failed { message, .. }) = &record.outcome {
                        tracing::info!(call_id, error = ?message, "webhook payload withholds the function's error message");
                    }
                }
                self.send(target, &call_id, payload(&record, expose)).await
            }
        };
        let host = host_of(&url);
        use crate::metrics::WebhookOutcome;
        let counted = match &outcome {
            Attempt::Delivered => WebhookOutcome::Delivered,
            Attempt::Retry(_) if attempt < self.settings.max_attempts => WebhookOutcome::Failed,
            Attempt::Retry(_) | Attempt::Refused(_) => WebhookOutcome::GaveUp,
        };
        crate::metrics::global().record_webhook(counted);
        let retry_at = match outcome {
            Attempt::Delivered => {
                tracing::debug!(call_id, host, attempt, "webhook delivered");
                None
            }
            Attempt::Retry(reason) if attempt < self.settings.max_attempts => {
                let delay = backoff(self.backoff_base, attempt);
                tracing::info!(call_id, host, attempt, reason, retry_in = ?delay, "webhook not delivered; will retry");
                Some(now_ms().saturating_add(delay.as_millis() as i64))
            }
            Attempt::Retry(reason) => {
                tracing::warn!(
                    call_id,
                    host,
                    attempt,
                    reason,
                    "webhook not delivered; giving up after the last attempt"
                );
                None
            }
            Attempt::Refused(reason) => {
                tracing::warn!(call_id, host, attempt, reason, "webhook refused; giving up");
                None
            }
        };
        self.store
            .delivery_attempted(call_id, attempt, retry_at)
            .await?;
        Ok(retry_at)
    }

    /// One signed POST, answer included, within `ATTEMPT_TIMEOUT`.
    async fn send(&self, target: Uri, call_id: &str, body: Vec<u8>) -> Attempt {
        let timestamp = now_ms() / 1000;
        let signature = sign(&self.settings.secret, call_id, timestamp, &body);
        let request = Request::post(target)
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("fngate/", env!("CARGO_PKG_VERSION")))
            .header("webhook-id", call_id)
            .header("webhook-timestamp", timestamp)
            .header("webhook-signature", signature)
            .body(Body::from(body));
        let request = match request {
            Ok(request) => request,
            Err(e) => return Attempt::Refused(format!("building the request: {e}")),
        };
        let deadline = tokio::time::Instant::now() + ATTEMPT_TIMEOUT;
        let response = match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Err(_) => return Attempt::Retry("no answer within 10 s".to_owned()),
            Ok(Err(e)) => return Attempt::Retry(error_chain(&e)),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        // Read the (bounded) answer so the connection can be reused; its
        // content does not matter, only the status does.
        let read = Limited::new(response.into_body(), ANSWER_LIMIT).collect();
        let _ = tokio::time::timeout_at(deadline, read).await;
        classify(status)
    }
}

/// What a receiver's status means for the delivery. Redirects are never
/// followed: the target is what was checked against `allow_hosts`.
fn classify(status: StatusCode) -> Attempt {
    if status.is_success() {
        Attempt::Delivered
    } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        Attempt::Retry(format!("answered {status}"))
    } else {
        Attempt::Refused(format!("answered {status}"))
    }
}

/// The wait after failed attempt `attempt` (1-based): base, 2 base,
/// 4 base, ... capped at an hour, each within ±20% so that receivers
/// coming back are not hit by every retry at once.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(30);
    let delay = base.saturating_mul(1 << doublings).min(MAX_BACKOFF);
    delay
        .mul_f64(rand::random_range(0.8..=1.2))
        .min(MAX_BACKOFF)
}

/// The receiver host of a stored callback URL, as compared with
/// `allow_hosts` (empty when it has none): the unit of `PER_HOST`.
fn host_of(url: &str) -> String {
    url.parse::<Uri>()
        .ok()
        .and_then(|u| u.host().map(normalize_host))
        .unwrap_or_default()
}

/// The monotonic instant of a wall-clock time in ms (now, if past).
fn instant_of(at_ms: i64) -> Instant {
    Instant::now() + Duration::from_millis(at_ms.saturating_sub(now_ms()).max(0) as u64)
}

/// The earlier of two optional instants.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A host as compared with `allow_hosts`: lowercase, no IPv6 brackets.
fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.to_ascii_lowercase()
}

/// An error and its causes on one line, for the log.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    std::iter::successors(Some(error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests;
