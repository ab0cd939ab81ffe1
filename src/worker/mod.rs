//! `fngate worker`: a function's instance on any machine, fed by the
//! gateway over HTTPS. The worker asks the gateway how the function's
//! instances run, starts the command as one (under a local Lambda Runtime
//! API, or with `PORT` for an http function), pulls the function's calls
//! while it has room for one, heartbeats each while it runs and posts its
//! end. [`run`] is the whole sequence; the protocol's requests are in
//! `client` and what its messages say in `wire`, a call's way from poll to
//! posted end in `call`, and the two kinds of local instance in `lambda`
//! and `http` (their process in `local`).

mod backoff;
mod call;
mod client;
mod http;
mod lambda;
mod local;
mod options;
mod wire;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, DropGuard};

use backoff::Backoff;
use client::{Failure, GatewayClient};
pub use options::{DEFAULT_TOKEN_ENV, Target, WorkerArgs, WorkerOptions};
use wire::{FunctionSpec, Protocol};

/// How long running calls get to finish once the worker is asked to stop.
const DRAIN: Duration = Duration::from_secs(10);

/// Why a worker could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("--function: {0}")]
    Function(String),
    #[error("--gateway: {0}")]
    Gateway(String),
    #[error("--token-env: {0}")]
    TokenEnv(String),
    #[error("no command to run: give the instance's command after `--`")]
    NoCommand,
    #[error("--cacert {}: {why}", path.display())]
    CaFile { path: PathBuf, why: String },
    #[error("the variable {0} holds no token (set it, or name another with --token-env)")]
    NoToken(String),
    /// The gateway refused the credential, its scope or the function; the
    /// message is its problem's status, code and detail.
    #[error("the gateway refused the worker: {problem}")]
    Refused { status: u16, problem: String },
    #[error(
        "the gateway's certificate is not trusted ({0}); pass --cacert with the CA that signed it"
    )]
    Untrusted(String),
    #[error("the gateway's answer does not follow the worker protocol: {0}")]
    Protocol(String),
}

impl WorkerError {
    /// The process's exit status: 2 for bad arguments (the worker never
    /// reached the gateway), 1 when the gateway refused it or could not be
    /// followed.
    pub fn exit_code(&self) -> u8 {
        match self {
            WorkerError::Function(_)
            | WorkerError::Gateway(_)
            | WorkerError::TokenEnv(_)
            | WorkerError::NoCommand
            | WorkerError::CaFile { .. }
            | WorkerError::NoToken(_) => 2,
            WorkerError::Refused { .. } | WorkerError::Untrusted(_) | WorkerError::Protocol(_) => 1,
        }
    }
}

/// What every part of a running worker shares.
struct Worker {
    options: WorkerOptions,
    spec: FunctionSpec,
    client: Arc<GatewayClient>,
}

/// The two steps of a worker's stop.
struct Stop {
    /// No more polls: fired by the caller's shutdown.
    shutdown: CancellationToken,
    /// Running calls are dropped, without an end posted: fired `DRAIN`
    /// after `shutdown`.
    abandon: CancellationToken,
    /// Ends the drain timer with the worker.
    _timer: DropGuard,
}

impl Stop {
    fn after(outer: &CancellationToken) -> Stop {
        let shutdown = outer.child_token();
        let abandon = CancellationToken::new();
        let ended = CancellationToken::new();
        let (stopping, dropping, done) = (shutdown.clone(), abandon.clone(), ended.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = stopping.cancelled() => {}
                () = done.cancelled() => return,
            }
            tracing::info!(
                "stopping: no more calls are taken; running calls get {} to finish",
                humantime::format_duration(DRAIN)
            );
            tokio::select! {
                () = tokio::time::sleep(DRAIN) => {}
                () = done.cancelled() => return,
            }
            dropping.cancel();
        });
        Stop {
            shutdown,
            abandon,
            _timer: ended.drop_guard(),
        }
    }
}

/// Runs a worker until `shutdown` is cancelled (then lets running calls
/// finish within 10 s, stops the instance and returns `Ok`), or until the
/// gateway refuses it. A gateway that cannot be reached, or answers 5xx,
/// is tried again with a backoff, at start as while running.
pub async fn run(options: WorkerOptions, shutdown: CancellationToken) -> Result<(), WorkerError> {
    let token = std::env::var(&options.token_env)
        .ok()
        .filter(|token| !token.trim().is_empty())
        .ok_or_else(|| WorkerError::NoToken(options.token_env.clone()))?;
    serve(options, token.trim(), shutdown).await
}

/// [`run`] with the token read.
async fn serve(
    options: WorkerOptions,
    token: &str,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    // 1. The id this worker goes by, and the HTTPS client (trusting
    //    --cacert or the system's roots).
    let worker_id = format!("wk-{}", crate::invocation::random_hex::<16>());
    let client = Arc::new(GatewayClient::new(&options, token, &worker_id)?);
    // 2. How the function's instances run.
    let Some(spec) = describe(&client, &options, &shutdown).await? else {
        return Ok(());
    };
    tracing::info!(
        worker = %worker_id,
        "serving {} from {}: {} instance, {} call(s) at once, timeout {}",
        options.target,
        options.gateway,
        match spec.protocol {
            Protocol::Lambda => "lambda",
            Protocol::Http => "http",
        },
        match spec.protocol {
            Protocol::Lambda => 1,
            Protocol::Http => spec.instance_concurrency,
        },
        humantime::format_duration(spec.timeout())
    );
    // 3. The instance, and its calls until the stop.
    let stop = Stop::after(&shutdown);
    let worker = Worker {
        options,
        spec,
        client,
    };
    let served = match worker.spec.protocol {
        Protocol::Lambda => lambda::serve(&worker, &stop).await,
        Protocol::Http => http::serve(&worker, &stop).await,
    };
    if served.is_ok() {
        tracing::info!("stopped");
    }
    served
}

/// Asks the gateway how the function's instances run, trying again while
/// it cannot be reached; `None` when `shutdown` came first. Any refusal is
/// final: the worker cannot serve what it may not, or what is not there.
async fn describe(
    client: &GatewayClient,
    options: &WorkerOptions,
    shutdown: &CancellationToken,
) -> Result<Option<FunctionSpec>, WorkerError> {
    let mut backoff = Backoff::requests();
    loop {
        let described = tokio::select! {
            described = client.describe() => described,
            () = shutdown.cancelled() => return Ok(None),
        };
        let why = match described {
            Ok(spec) => return Ok(Some(spec)),
            Err(Failure::Unavailable(why)) => why,
            Err(failure) => return Err(failure.into()),
        };
        let pause = backoff.failed();
        tracing::warn!(
            "cannot reach the gateway at {}: {why}; trying again in {}",
            options.gateway,
            humantime::format_duration(pause)
        );
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return Ok(None),
        }
    }
}

#[cfg(test)]
mod protocol_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> WorkerOptions {
        WorkerOptions::try_from(WorkerArgs {
            gateway: "https://127.0.0.1:9".to_owned(),
            function: "demo/fn".to_owned(),
            token_env: "FNGATE_TEST_TOKEN_THAT_IS_NEVER_SET".to_owned(),
            cacert: None,
            command: vec!["true".to_owned()],
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_missing_token_stops_the_worker_before_any_request() {
        let error = run(options(), CancellationToken::new())
            .await
            .expect_err("no token");
        assert!(matches!(error, WorkerError::NoToken(_)), "{error:?}");
        assert_eq!(error.exit_code(), 2);
        assert!(
            error
                .to_string()
                .contains("FNGATE_TEST_TOKEN_THAT_IS_NEVER_SET")
        );
    }

    #[test]
    fn refusals_exit_1_and_argument_errors_exit_2() {
        let refused = WorkerError::from(Failure::Refused {
            status: ::http::StatusCode::FORBIDDEN,
            code: Some("forbidden".to_owned()),
            detail: "the token's scope does not hold work:demo/fn".to_owned(),
        });
        assert_eq!(refused.exit_code(), 1);
        assert_eq!(
            refused.to_string(),
            "the gateway refused the worker: 403 forbidden: the token's scope does not hold work:demo/fn"
        );
        assert_eq!(WorkerError::Untrusted("x".to_owned()).exit_code(), 1);
        assert_eq!(WorkerError::NoCommand.exit_code(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn running_calls_are_abandoned_10_s_after_the_stop() {
        let outer = CancellationToken::new();
        let stop = Stop::after(&outer);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!stop.shutdown.is_cancelled() && !stop.abandon.is_cancelled());
        outer.cancel();
        assert!(stop.shutdown.is_cancelled());
        tokio::time::sleep(DRAIN - Duration::from_millis(1)).await;
        assert!(!stop.abandon.is_cancelled());
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(stop.abandon.is_cancelled());
    }
}
