//! A lambda function's instance on this machine: the gateway's own Runtime
//! API (`instances::runtime_api`) served on a loopback port, the command
//! started under it, and one call at a time pulled from the gateway and put
//! in the instance's mailbox. A crashed instance is replaced with a
//! backoff; one whose call was given up or ran past its timeout is killed
//! and replaced at once (a Lambda runtime client cannot drop a call).

use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::DropGuard;

use super::backoff::Backoff;
use super::call::{self, Assignment, Outcome, Ran};
use super::local::{self, EXIT_GRACE, MAX_RESULT};
use super::wire::Call;
use super::{Stop, Worker, WorkerError};
use crate::backend::BackendError;
use crate::instances::LambdaIdentity;
use crate::instances::runtime_api::{self, Mailbox};
use crate::processes::FunctionProcess;

/// Serves the function's calls, one at a time, until the stop; then stops
/// the instance (SIGTERM, then SIGKILL after the grace).
pub(super) async fn serve(worker: &Worker, stop: &Stop) -> Result<(), WorkerError> {
    let mut slot = Slot {
        worker,
        instance: None,
        restarts: Backoff::instances(),
        retry_at: None,
    };
    let served = slot.serve(stop).await;
    if let Some(instance) = slot.instance.take() {
        instance.stop().await;
    }
    served
}

/// A started instance that asked for its first call.
struct Instance {
    mailbox: Arc<Mailbox>,
    process: FunctionProcess,
    /// Stops its Runtime API server when the instance is dropped.
    _server: DropGuard,
}

impl Instance {
    /// Serves a Runtime API, starts the command under it and waits until
    /// the instance asks for its first call (or reports an init error,
    /// exits, or takes longer than the init timeout).
    async fn start(worker: &Worker) -> Result<Instance, String> {
        let target = &worker.options.target;
        let identity = LambdaIdentity {
            function_name: format!("{}.{}", target.app, target.function),
            max_result: MAX_RESULT,
        };
        let (mailbox, addr, server) = runtime_api::serve(&identity)
            .map_err(|e| format!("cannot serve the Runtime API: {e}"))?;
        let server = server.drop_guard();
        let cwd = std::env::current_dir()
            .map(|dir| dir.display().to_string())
            .unwrap_or_default();
        // What the gateway's own lambda instances are started with.
        let mut env = vec![
            ("AWS_LAMBDA_RUNTIME_API", addr.to_string()),
            ("AWS_LAMBDA_FUNCTION_NAME", identity.function_name.clone()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024".to_owned()),
            ("AWS_LAMBDA_LOG_GROUP_NAME", "/fngate".to_owned()),
            ("AWS_LAMBDA_LOG_STREAM_NAME", target.to_string()),
            ("LAMBDA_TASK_ROOT", cwd),
        ];
        // Lambda's convention: the command's last word is the handler
        // (`aws-lambda-ric app.handler`); Node's runtime client reads it
        // only from `_HANDLER`.
        let command = &worker.options.command;
        if let [_, .., handler] = command.as_slice()
            && std::env::var_os("_HANDLER").is_none()
        {
            env.push(("_HANDLER", handler.clone()));
        }
        let process = local::start(&worker.options, &env).await?;
        let ready = async {
            mailbox.ready().await.map_err(|e| match e {
                BackendError::Unreachable(why) => why,
                other => other.to_string(),
            })
        };
        let process = local::until_ready(process, ready).await?;
        tracing::info!(
            pid = process.id().as_raw(),
            "the instance is ready; polling for calls"
        );
        Ok(Instance {
            mailbox,
            process,
            _server: server,
        })
    }

    /// Stops the instance: SIGTERM, SIGKILL after the grace.
    async fn stop(self) {
        self.mailbox.close();
        let _ = self.process.stop(EXIT_GRACE).await;
    }

    /// Kills the instance at once (its call was given up, or overran).
    async fn kill(self) {
        self.mailbox.close();
        self.process.kill();
        self.process.finish().await;
    }
}

/// The worker's one call slot and the instance behind it.
struct Slot<'a> {
    worker: &'a Worker,
    instance: Option<Instance>,
    /// Failed starts and crashes in a row.
    restarts: Backoff,
    /// No instance starts before this, after a failure.
    retry_at: Option<Instant>,
}

/// What ended the wait for a call's answer.
enum Answered {
    Reply(Result<runtime_api::Reply, tokio::sync::oneshot::error::RecvError>),
    Exited(String),
}

impl Slot<'_> {
    async fn serve(&mut self, stop: &Stop) -> Result<(), WorkerError> {
        loop {
            // The slot is free: an instance ready for a call first.
            tokio::select! {
                biased;
                () = stop.shutdown.cancelled() => return Ok(()),
                () = self.ready() => {}
            }
            let Some(call) = self.poll(stop).await? else {
                return Ok(());
            };
            self.serve_call(call, stop).await;
        }
    }

    /// Starts instances (backing off after failures) until one is ready.
    async fn ready(&mut self) {
        while self.instance.is_none() {
            if let Some(at) = self.retry_at {
                tokio::time::sleep_until(at).await;
            }
            match Instance::start(self.worker).await {
                Ok(instance) => {
                    self.instance = Some(instance);
                    self.retry_at = None;
                }
                Err(why) => self.failed(&why),
            }
        }
    }

    /// An instance failed to start or crashed: the next start backs off.
    fn failed(&mut self, why: &str) {
        let pause = self.restarts.failed();
        tracing::warn!(
            "{why}; starting the instance again in {}",
            humantime::format_duration(pause)
        );
        self.retry_at = Some(Instant::now() + pause);
    }

    /// Polls for the next call, watching the idle instance meanwhile: one
    /// that exits is replaced once the poll has ended (a poll is never
    /// dropped while it may bring a call, but at the stop).
    async fn poll(&mut self, stop: &Stop) -> Result<Option<Call>, WorkerError> {
        let worker = self.worker;
        let poll = call::next(&worker.client, worker.spec.timeout(), &stop.shutdown);
        tokio::pin!(poll);
        loop {
            let Some(instance) = self.instance.as_mut() else {
                return poll.await;
            };
            let exited = tokio::select! {
                polled = &mut poll => return polled,
                status = instance.process.wait() => local::exit_text(status),
            };
            self.instance = None;
            self.failed(&format!("the instance exited while idle ({exited})"));
        }
    }

    /// Runs `call` on the instance and posts its end; an instance whose
    /// call was given up or overran is killed.
    async fn serve_call(&mut self, call: Call, stop: &Stop) {
        let worker = self.worker;
        let assignment = Assignment::start(worker.client.clone(), &call, worker.spec.timeout());
        match assignment.run(self.run(&call), &stop.abandon).await {
            Ran::Done(outcome) => assignment.finish(&outcome).await,
            Ran::TimedOut(outcome) => {
                self.kill().await;
                assignment.finish(&outcome).await;
            }
            Ran::Lost => self.kill().await,
            // The instance is stopped as the worker stops.
            Ran::Abandoned => {}
        }
    }

    async fn kill(&mut self) {
        if let Some(instance) = self.instance.take() {
            instance.kill().await;
        }
    }

    /// Puts `call` in the instance's mailbox (starting an instance first if
    /// the last one died meanwhile) and waits for its answer, or its exit.
    async fn run(&mut self, call: &Call) -> Outcome {
        loop {
            self.ready().await;
            let instance = self.instance.as_mut().expect("ready() leaves an instance");
            let Ok(ended) = instance
                .mailbox
                .deliver(call.delivery(&self.worker.options.target))
            else {
                // Its mailbox closed: it has stopped.
                self.instance = None;
                continue;
            };
            let answered = tokio::select! {
                // An answer posted right before the instance exited counts.
                biased;
                reply = ended => Answered::Reply(reply),
                status = instance.process.wait() => Answered::Exited(local::exit_text(status)),
            };
            return match answered {
                Answered::Reply(Ok(reply)) => {
                    if reply.is_ok() {
                        self.restarts.reset();
                    }
                    Outcome::of(reply)
                }
                Answered::Reply(Err(_)) => {
                    self.instance = None;
                    Outcome::exited("its Runtime API closed")
                }
                Answered::Exited(status) => {
                    self.instance = None;
                    self.failed(&format!(
                        "the instance exited during call {} ({status})",
                        call.id
                    ));
                    Outcome::exited(&status)
                }
            };
        }
    }
}
