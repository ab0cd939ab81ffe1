//! `fngate call APP/FN [key=value ...]`: calls a function from a terminal
//! and prints its result as JSON; problems go to stderr as one readable
//! line, and the exit status says what happened (see [`Exit`]). The
//! request is built in `input`, sent by `client`, and shown by `output`.

pub mod client;
mod input;
mod output;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode, Uri, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use client::{GatewayClient, Trust};
use output::Problem;

/// The gateway called when `--gateway` is not given (the quick start's).
pub const DEFAULT_GATEWAY: &str = "https://localhost:8443";

/// The variable the Bearer token is read from.
pub const TOKEN_ENV: &str = "FNGATE_TOKEN";

/// How much longer than its `?wait=` a long poll may take to answer.
const POLL_MARGIN: Duration = Duration::from_secs(30);

/// `fngate call APP/FN [key=value ...] [--json BODY] [--spawn] [--wait
/// SECONDS] [--map FILE] [--gateway URL] [--cacert FILE]`.
#[derive(Debug, Clone, clap::Args)]
pub struct CallArgs {
    /// The function: APP/FUNCTION, or APP/CLASS/METHOD; a query may follow
    /// (APP/CLASS/METHOD?PARAMETER=VALUE).
    #[arg(value_name = "APP/FN")]
    pub function: String,
    /// Arguments, as a JSON object: a value that is JSON is that JSON
    /// (x=42, flag=true, tags=[1,2]), anything else a string (name=alice).
    #[arg(value_name = "KEY=VALUE")]
    pub pairs: Vec<String>,
    /// The request body as it is (`-` reads standard input), instead of
    /// KEY=VALUE pairs.
    #[arg(long, value_name = "BODY", allow_hyphen_values = true, conflicts_with_all = ["pairs", "map"])]
    pub json: Option<String>,
    /// Spawn the call and print its id (with --wait, wait for its result).
    #[arg(long)]
    pub spawn: bool,
    /// After --spawn, long-poll the call for up to this many seconds.
    #[arg(long, value_name = "SECONDS", requires = "spawn", value_parser = input::wait_seconds)]
    pub wait: Option<Duration>,
    /// A JSON array or NDJSON file of inputs (`-`: standard input), one
    /// call each through .../map; each result line is printed as it ends.
    #[arg(
        long,
        value_name = "FILE",
        allow_hyphen_values = true,
        conflicts_with = "pairs"
    )]
    pub map: Option<PathBuf>,
    /// The gateway's base URL.
    #[arg(long, value_name = "URL", default_value = DEFAULT_GATEWAY)]
    pub gateway: String,
    /// Trust only the CA certificates of this PEM file (default: the
    /// system's roots and certs/dev-ca.pem next to --config).
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
}

/// `fngate call`'s exit statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The call succeeded (or was spawned).
    Ok = 0,
    /// The function ran and failed (`function_error`) or ran past its
    /// timeout (`function_timeout`), or a map input or stream did.
    FunctionFailed = 1,
    /// Bad arguments, an unreadable file: nothing was sent.
    Usage = 2,
    /// The gateway refused the request (4xx).
    ClientError = 3,
    /// The gateway or the backend failed (5xx but the two above).
    ServerError = 4,
    /// The gateway cannot be reached, its TLS certificate is not trusted,
    /// or the answer broke off.
    Unreachable = 5,
    /// The spawned call was still pending or running when --wait ended.
    Pending = 6,
}

/// Why a call did not end with a result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{0}")]
    Usage(String),
    /// The gateway answered with a problem.
    #[error("{}", .problem.describe(*.status))]
    Problem {
        status: StatusCode,
        problem: Box<Problem>,
    },
    #[error("cannot reach the gateway: {0}")]
    Unreachable(String),
    #[error(
        "the gateway's certificate is not trusted: {0}\n  (pass --cacert with the CA that signed it, or --config with the gateway.toml whose certs/dev-ca.pem it is)"
    )]
    Untrusted(String),
    #[error("the call {call_id} is still {status} after --wait; GET {url} for its result")]
    Pending {
        call_id: String,
        status: String,
        url: String,
    },
}

impl CallError {
    pub fn exit(&self) -> Exit {
        match self {
            CallError::Usage(_) => Exit::Usage,
            CallError::Problem { status, problem } => exit_for(*status, problem.code.as_deref()),
            CallError::Unreachable(_) | CallError::Untrusted(_) => Exit::Unreachable,
            CallError::Pending { .. } => Exit::Pending,
        }
    }
}

/// The exit status of a problem with `status` and `code`.
fn exit_for(status: StatusCode, code: Option<&str>) -> Exit {
    match code {
        Some("function_error" | "function_timeout") => Exit::FunctionFailed,
        _ if status.is_client_error() => Exit::ClientError,
        _ => Exit::ServerError,
    }
}

/// Runs `fngate call` (with `config`, the `--config` path, for the dev CA
/// next to it) and returns its exit status.
pub fn run(args: CallArgs, config: &Path) -> u8 {
    let exit = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(call(args, config)),
        Err(e) => Err(CallError::Unreachable(format!(
            "cannot start a runtime: {e}"
        ))),
    };
    let exit = exit.unwrap_or_else(|error| {
        eprintln!("error: {error}");
        error.exit()
    });
    exit as u8
}

/// What to send, checked before anything is.
struct Plan {
    gateway: GatewayClient,
    /// The gateway's base URL, without a trailing `/`.
    base: String,
    target: input::Target,
    /// The `key=value` pairs, when they are the body: a function that
    /// takes only GET gets them as its query instead.
    pairs: Option<Vec<String>>,
    body: (&'static str, Bytes),
    spawn: bool,
    wait: Option<Duration>,
    map: bool,
    pretty: bool,
}

async fn call(args: CallArgs, config: &Path) -> Result<Exit, CallError> {
    let plan = Plan::new(args, config)?;
    let suffix = match (plan.map, plan.spawn) {
        (false, false) => "",
        (false, true) => "/spawn",
        (true, false) => "/map",
        (true, true) => "/map/spawn",
    };
    let mut uri = parse_uri(&plan.target.url(&plan.base, suffix))?;
    let accept = plan.map.then_some("application/x-ndjson");
    let mut answer = plan
        .gateway
        .send(Method::POST, &uri, Some(plan.body.clone()), accept, None)
        .await?;
    if plan.spawn {
        return plan.spawned(&uri, answer).await;
    }
    // A function that takes only GET (a 405 runs nothing) is called again
    // with GET, its pairs as the query.
    if let Some(pairs) = plan.pairs.as_deref().filter(|_| takes_only_get(&answer)) {
        uri = parse_uri(&plan.target.get_url(&plan.base, pairs))?;
        answer = plan
            .gateway
            .send(Method::GET, &uri, None, None, None)
            .await?;
    }
    plan.finish(&uri, answer).await
}

/// Whether `answer` is a 405 whose `Allow` lists GET and not POST.
fn takes_only_get(answer: &hyper::Response<Incoming>) -> bool {
    if answer.status() != StatusCode::METHOD_NOT_ALLOWED {
        return false;
    }
    let allow = answer
        .headers()
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let allowed = |method: &str| {
        allow
            .split(',')
            .any(|m| m.trim().eq_ignore_ascii_case(method))
    };
    allowed("GET") && !allowed("POST")
}

impl Plan {
    fn new(args: CallArgs, config: &Path) -> Result<Plan, CallError> {
        let target = input::Target::parse(&args.function)?;
        let base = gateway_base(&args.gateway)?;
        let body = match (&args.json, &args.map) {
            (Some(json), _) if json == "-" => (
                "application/json",
                input::read_file_or_stdin("--json", Path::new("-"))?,
            ),
            (Some(json), _) => ("application/json", json.clone().into_bytes()),
            (None, Some(file)) => {
                let inputs = input::read_file_or_stdin("--map", file)?;
                (input::map_content_type(&inputs), inputs)
            }
            (None, None) => ("application/json", input::body_from_pairs(&args.pairs)?),
        };
        let token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
        let trust = Trust {
            dev_ca: match &args.cacert {
                Some(_) => None,
                None => client::dev_ca_next_to(config),
            },
            cacert: args.cacert,
        };
        Ok(Plan {
            gateway: GatewayClient::new(&trust, token.as_deref())?,
            base,
            target,
            pairs: (args.json.is_none() && args.map.is_none()).then(|| args.pairs.clone()),
            body: (body.0, Bytes::from(body.1)),
            spawn: args.spawn,
            wait: args.wait,
            map: args.map.is_some(),
            pretty: std::io::stdout().is_terminal(),
        })
    }

    /// A sync call's (or a finished call's) answer: the result printed, a
    /// 303 followed to the call it became, a problem as the error.
    async fn finish(
        &self,
        uri: &Uri,
        mut answer: hyper::Response<Incoming>,
    ) -> Result<Exit, CallError> {
        let mut at = uri.clone();
        while answer.status() == StatusCode::SEE_OTHER {
            at = location(&at, &answer)?;
            answer = self
                .gateway
                .send(Method::GET, &at, None, None, None)
                .await?;
        }
        self.print(answer).await
    }

    /// A spawn's answer: the call's id printed, or with `--wait` the
    /// call long-polled until it ends or the wait is over.
    async fn spawned(
        &self,
        uri: &Uri,
        answer: hyper::Response<Incoming>,
    ) -> Result<Exit, CallError> {
        if answer.status() != StatusCode::ACCEPTED {
            return self.print(answer).await;
        }
        let status_url = location(uri, &answer)?;
        let body = client::read_body(answer.into_body()).await?;
        let Some(wait) = self.wait else {
            self.print_json(&body)?;
            return Ok(Exit::Ok);
        };
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let poll = parse_uri(&format!("{status_url}?wait={:.3}", left.as_secs_f64()))?;
            let started = Instant::now();
            let answer = self
                .gateway
                .send(Method::GET, &poll, None, None, Some(left + POLL_MARGIN))
                .await?;
            if answer.status() != StatusCode::ACCEPTED {
                return self.print(answer).await;
            }
            let retry_after = answer
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .map_or(Duration::from_secs(1), Duration::from_secs);
            let progress = client::read_body(answer.into_body()).await?;
            if Instant::now() >= deadline {
                self.print_json(&progress)?;
                return Err(pending(&progress, &status_url));
            }
            // A gateway that answered long before the wait it was asked
            // for (one without long polls) is asked again after its
            // Retry-After, not at once.
            if started.elapsed() < Duration::from_millis(100) {
                tokio::time::sleep(retry_after.min(left)).await;
            }
        }
    }

    /// Prints a final answer: a result on stdout (NDJSON line by line as
    /// it comes), a problem as the error.
    async fn print(&self, answer: hyper::Response<Incoming>) -> Result<Exit, CallError> {
        let status = answer.status();
        let content_type = answer
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if !status.is_success() {
            let body = client::read_body(answer.into_body()).await?;
            return Err(CallError::Problem {
                status,
                problem: Box::new(Problem::parse(status, &body)),
            });
        }
        if content_type.starts_with("application/x-ndjson") {
            return print_lines(answer.into_body()).await;
        }
        let body = client::read_body(answer.into_body()).await?;
        self.print_json(&body)?;
        Ok(Exit::Ok)
    }

    /// `body` on stdout: compact JSON, indented on a terminal; anything
    /// else as it came.
    fn print_json(&self, body: &[u8]) -> Result<(), CallError> {
        let mut out = output::reformat(body, self.pretty).unwrap_or_else(|| body.to_vec());
        if !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        write_stdout(&out)
    }
}

/// Prints an NDJSON answer a line at a time, as each arrives; a line that
/// is an error (a map input's, a stream's last) is also told on stderr,
/// and the first one gives the exit status.
async fn print_lines(mut body: Incoming) -> Result<Exit, CallError> {
    let mut exit = Exit::Ok;
    let mut pending = Vec::new();
    let line = |line: &[u8], exit: &mut Exit| -> Result<(), CallError> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let mut out = line.to_vec();
        out.push(b'\n');
        write_stdout(&out)?;
        if let Some((what, status, problem)) = error_line(line) {
            eprintln!("error: {what}{}", problem.describe(status));
            if *exit == Exit::Ok {
                *exit = exit_for(status, problem.code.as_deref());
            }
        }
        Ok(())
    };
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| CallError::Unreachable(format!("the answer broke off: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let rest = pending.split_off(end + 1);
            line(&pending[..end], &mut exit)?;
            pending = rest;
        }
    }
    line(&pending, &mut exit)?;
    Ok(exit)
}

/// A line's error, when it is one: `{"index": N, "error": {problem}}` of a
/// map, or `{"error": {problem}}` ending a stream.
fn error_line(line: &[u8]) -> Option<(String, StatusCode, Problem)> {
    #[derive(serde::Deserialize)]
    struct Line {
        index: Option<u64>,
        error: Option<serde_json::Value>,
    }
    let parsed: Line = serde_json::from_slice(line).ok()?;
    let error = parsed.error?;
    let status = error
        .get("status")
        .and_then(serde_json::Value::as_u64)
        .and_then(|s| StatusCode::from_u16(u16::try_from(s).ok()?).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let problem = serde_json::from_value(error).ok()?;
    let what = parsed
        .index
        .map_or_else(String::new, |i| format!("input {i}: "));
    Some((what, status, problem))
}

fn write_stdout(bytes: &[u8]) -> Result<(), CallError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(|e| CallError::Usage(format!("cannot write the result: {e}")))
}

/// The "still running" error of a call whose wait ended, from its last
/// progress answer.
fn pending(progress: &[u8], status_url: &Uri) -> CallError {
    let progress: serde_json::Value = serde_json::from_slice(progress).unwrap_or_default();
    let text = |key: &str| progress[key].as_str().unwrap_or("").to_owned();
    CallError::Pending {
        call_id: text("call_id"),
        status: match text("status") {
            status if status.is_empty() => "pending".to_owned(),
            status => status,
        },
        url: status_url.to_string(),
    }
}

/// The URL an answer's `Location` names, resolved against `base` (the
/// gateway answers with a path: `/calls/{id}`).
fn location(base: &Uri, answer: &hyper::Response<Incoming>) -> Result<Uri, CallError> {
    let value = answer
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            CallError::Unreachable(format!(
                "{base}: a {} answer without a Location",
                answer.status().as_u16()
            ))
        })?;
    if value.starts_with('/') {
        let authority = base.authority().map_or("", |a| a.as_str());
        let scheme = base.scheme_str().unwrap_or("https");
        return parse_uri(&format!("{scheme}://{authority}{value}"));
    }
    parse_uri(value)
}

fn parse_uri(text: &str) -> Result<Uri, CallError> {
    text.parse()
        .map_err(|e| CallError::Usage(format!("'{text}' is not a URL: {e}")))
}

/// Checks `--gateway`: an `https://` URL with a host and no query; returns
/// it without a trailing `/`. The token never travels in the clear.
fn gateway_base(text: &str) -> Result<String, CallError> {
    let bad = |why: &str| CallError::Usage(format!("--gateway '{text}': {why}"));
    let uri: Uri = text.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some(_) => return Err(bad("the scheme must be https")),
        None => return Err(bad("not a URL: use https://HOST[:PORT]")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("names no host"));
    }
    if uri.query().is_some() {
        return Err(bad("a base URL takes no query"));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_follow_the_problem() {
        let exit = |status: u16, code: &str| {
            exit_for(StatusCode::from_u16(status).unwrap(), Some(code)) as u8
        };
        assert_eq!(exit(500, "function_error"), 1);
        assert_eq!(exit(504, "function_timeout"), 1);
        assert_eq!(exit(404, "function_not_found"), 3);
        assert_eq!(exit(401, "unauthorized"), 3);
        assert_eq!(exit(410, "call_cancelled"), 3);
        assert_eq!(exit(502, "backend_error"), 4);
        assert_eq!(exit(503, "overloaded"), 4);
        assert_eq!(exit_for(StatusCode::BAD_GATEWAY, None) as u8, 4);
    }

    #[test]
    fn error_lines_are_found_in_map_and_stream_answers() {
        let (what, status, problem) = error_line(
            br#"{"index":1,"error":{"status":500,"code":"function_error","detail":"the function failed with TypeError"}}"#,
        )
        .unwrap();
        assert_eq!(what, "input 1: ");
        assert_eq!(status, 500);
        assert_eq!(problem.code.as_deref(), Some("function_error"));
        let (what, status, _) =
            error_line(br#"{"error":{"status":504,"code":"function_timeout"}}"#).unwrap();
        assert_eq!((what.as_str(), status.as_u16()), ("", 504));
        assert!(error_line(br#"{"index":0,"result":1}"#).is_none());
        assert!(error_line(br#"{"n": 1}"#).is_none());
        assert!(error_line(b"1").is_none());
    }

    #[test]
    fn the_gateway_is_an_https_base_url() {
        assert_eq!(
            gateway_base("https://localhost:8443/").unwrap(),
            "https://localhost:8443"
        );
        assert_eq!(
            gateway_base("https://gw.example/fn").unwrap(),
            "https://gw.example/fn"
        );
        for bad in [
            "http://localhost:8443",
            "localhost:8443",
            "https://h/?a=1",
            "nope",
        ] {
            assert!(
                matches!(gateway_base(bad), Err(CallError::Usage(_))),
                "{bad}"
            );
        }
    }
}
