//! An http function's instance on this machine: a server started with
//! `PORT` set to a free loopback port, ready once it accepts connections
//! (or `ready_path` answers 2xx), taking `instance_concurrency` calls at
//! once. Each unit of that capacity is a slot that polls the gateway while
//! it is free and POSTs its call to `http://127.0.0.1:$PORT{path}`, read as
//! the gateway's http backend reads its answers. One supervisor starts the
//! instance, replaces it with a backoff when it dies, and stops it last.

use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, header};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::call::{self, Assignment, Outcome, Ran};
use super::local::{self, EXIT_GRACE, MAX_RESULT};
use super::wire::Call;
use super::{Stop, Worker, WorkerError};
use crate::backend::BackendError;
use crate::backend::http::read_answer;
use crate::instances::probe_until_ready;
use crate::invocation::names;
use crate::processes::FunctionProcess;

type Local = Client<HttpConnector, Full<Bytes>>;

/// The instance as the slots see it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Starting,
    /// Taking calls on `port`; `generation` counts the instances started.
    Ready {
        generation: u64,
        port: u16,
    },
    /// Instance `generation` died (`status`); another is starting.
    Exited {
        generation: u64,
        status: String,
    },
    /// Stopped with the worker.
    Stopped,
}

/// What the supervisor and the slots share.
struct Instance<'a> {
    worker: &'a Worker,
    client: Local,
    state: watch::Sender<State>,
    /// Failed starts and crashes in a row; a call that succeeds ends them.
    restarts: Mutex<Backoff>,
}

/// Serves the function's calls, `instance_concurrency` at once, until the
/// stop (or a refusal); then stops the instance.
pub(super) async fn serve(worker: &Worker, stop: &Stop) -> Result<(), WorkerError> {
    let slots = worker.spec.instance_concurrency;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let instance = Instance {
        worker,
        client: Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(slots)
            .build(connector),
        state: watch::Sender::new(State::Starting),
        restarts: Mutex::new(Backoff::instances()),
    };
    let stopping = CancellationToken::new();
    let calls = async {
        // The first slot refused by the gateway ends them all.
        let served =
            futures_util::future::try_join_all((0..slots).map(|_| instance.slot(stop))).await;
        stopping.cancel();
        served
    };
    let ((), served) = tokio::join!(instance.supervise(&stopping), calls);
    served.map(|_| ())
}

impl Instance<'_> {
    fn restarts(&self) -> std::sync::MutexGuard<'_, Backoff> {
        self.restarts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps an instance running until `stopping`: starts one, publishes
    /// it, and when it dies publishes that and starts another after the
    /// backoff.
    async fn supervise(&self, stopping: &CancellationToken) {
        let mut generation = 0;
        let mut pause = Duration::ZERO;
        loop {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = stopping.cancelled() => break,
            }
            let started = tokio::select! {
                started = self.start() => started,
                () = stopping.cancelled() => break,
            };
            let (mut process, port) = match started {
                Ok(started) => started,
                Err(why) => {
                    pause = self.restarts().failed();
                    tracing::warn!(
                        "{why}; starting the instance again in {}",
                        humantime::format_duration(pause)
                    );
                    continue;
                }
            };
            generation += 1;
            tracing::info!(
                pid = process.id().as_raw(),
                port,
                "the instance is ready; polling for calls"
            );
            self.state.send_replace(State::Ready { generation, port });
            let status = tokio::select! {
                status = process.wait() => local::exit_text(status),
                () = stopping.cancelled() => {
                    self.state.send_replace(State::Stopped);
                    let _ = process.stop(EXIT_GRACE).await;
                    return;
                }
            };
            self.state.send_replace(State::Exited {
                generation,
                status: status.clone(),
            });
            pause = self.restarts().failed();
            tracing::warn!(
                "the instance exited ({status}); starting it again in {}",
                humantime::format_duration(pause)
            );
            process.finish().await;
        }
        self.state.send_replace(State::Stopped);
    }

    /// Starts the command with `PORT` and waits until it is ready.
    async fn start(&self) -> Result<(FunctionProcess, u16), String> {
        let port = free_port().map_err(|e| format!("cannot find a free port: {e}"))?;
        let env = [("PORT", port.to_string())];
        let process = local::start(&self.worker.options, &env).await?;
        let ready_path = self.worker.spec.ready_path.as_deref();
        let ready = async {
            probe_until_ready(port, ready_path).await;
            Ok(())
        };
        Ok((local::until_ready(process, ready).await?, port))
    }

    /// One unit of the instance's capacity: polls while the instance can
    /// take a call, runs the call, posts its end, until the stop.
    async fn slot(&self, stop: &Stop) -> Result<(), WorkerError> {
        let worker = self.worker;
        let timeout = worker.spec.timeout();
        let mut state = self.state.subscribe();
        loop {
            tokio::select! {
                biased;
                () = stop.shutdown.cancelled() => return Ok(()),
                ready = ready(&mut state) => if ready.is_none() { return Ok(()) },
            }
            let Some(call) = call::next(&worker.client, timeout, &stop.shutdown).await? else {
                return Ok(());
            };
            let assignment = Assignment::start(worker.client.clone(), &call, timeout);
            match assignment.run(self.run(&call), &stop.abandon).await {
                Ran::Done(outcome) => {
                    if outcome.is_result() {
                        self.restarts().reset();
                    }
                    assignment.finish(&outcome).await;
                }
                // Its request was dropped; the instance goes on.
                Ran::TimedOut(outcome) => assignment.finish(&outcome).await,
                Ran::Lost => {}
                Ran::Abandoned => return Ok(()),
            }
        }
    }

    /// POSTs `call` to the instance (waiting for one to be ready if the
    /// last died meanwhile); its answer, or its death.
    async fn run(&self, call: &Call) -> Outcome {
        let mut state = self.state.subscribe();
        let Some((generation, port)) = ready(&mut state).await else {
            return Outcome::exited("the instance was stopped");
        };
        tokio::select! {
            // An answer that came right before the instance exited counts.
            biased;
            answer = self.post(port, call) => Outcome::of(answer),
            status = gone(&mut state, generation) => Outcome::exited(&status),
        }
    }

    async fn post(&self, port: u16, call: &Call) -> Result<Bytes, BackendError> {
        let path = &self.worker.spec.path;
        let mut request = Request::post(format!("http://127.0.0.1:{port}{path}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(call.event.clone()))
            .map_err(|e| BackendError::Unreachable(format!("building the request: {e}")))?;
        let headers = request.headers_mut();
        if let Ok(id) = HeaderValue::from_str(&call.id) {
            headers.insert(names::X_FNGATE_CALL_ID, id);
        }
        for (name, value) in &call.forwarded {
            headers.insert(name.clone(), value.clone());
        }
        if !headers.contains_key(names::TRACEPARENT)
            && let Some(parent) = call.trace_id.as_deref().and_then(traceparent)
            && let Ok(parent) = HeaderValue::from_str(&parent)
        {
            headers.insert(names::TRACEPARENT, parent);
        }
        let response = self.client.request(request).await.map_err(|e| {
            if e.is_connect() {
                BackendError::Unreachable(format!("the instance refused the connection: {e}"))
            } else {
                BackendError::Crashed(format!("the instance dropped the call: {e}"))
            }
        })?;
        read_answer(response, MAX_RESULT).await
    }
}

/// Waits until an instance is ready: its generation and port; `None` once
/// the instance has stopped for good.
async fn ready(state: &mut watch::Receiver<State>) -> Option<(u64, u16)> {
    let seen = state
        .wait_for(|s| matches!(s, State::Ready { .. } | State::Stopped))
        .await
        .ok()?
        .clone();
    match seen {
        State::Ready { generation, port } => Some((generation, port)),
        _ => None,
    }
}

/// Waits until instance `generation` is no longer the ready one: how it
/// ended.
async fn gone(state: &mut watch::Receiver<State>, generation: u64) -> String {
    let seen = state
        .wait_for(|s| !matches!(s, State::Ready { generation: g, .. } if *g == generation))
        .await
        .map(|s| s.clone());
    match seen {
        Ok(State::Exited { status, .. }) => status,
        _ => "it was stopped".to_owned(),
    }
}

/// The X-Ray trace header of a Lambda call as a W3C `traceparent`:
/// `Root=1-{8 hex}-{24 hex};Parent={16 hex};Sampled={0|1}` becomes
/// `00-{32 hex}-{16 hex}-{01|00}`.
fn traceparent(xray: &str) -> Option<String> {
    let (mut root, mut parent, mut sampled) = (None, None, false);
    for part in xray.split(';') {
        match part.trim().split_once('=') {
            Some(("Root", value)) => root = Some(value),
            Some(("Parent", value)) => parent = Some(value),
            Some(("Sampled", value)) => sampled = value == "1",
            _ => {}
        }
    }
    let (time, random) = root?.strip_prefix("1-")?.split_once('-')?;
    let parent = parent?;
    let hex =
        |text: &str, len: usize| text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit());
    if !(hex(time, 8) && hex(random, 24) && hex(parent, 16)) {
        return None;
    }
    let flags = if sampled { "01" } else { "00" };
    Some(format!("00-{time}{random}-{parent}-{flags}").to_ascii_lowercase())
}

/// A loopback port free right now, for the instance to listen on.
fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_xray_trace_header_becomes_a_traceparent() {
        assert_eq!(
            traceparent(
                "Root=1-0af76519-16cd43dd8448eb211c80319c;Parent=b7ad6b7169203331;Sampled=1"
            )
            .as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(
            traceparent(
                "Root=1-0AF76519-16cd43dd8448eb211c80319c;Parent=b7ad6b7169203331;Sampled=0"
            )
            .as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
        );
        for bad in [
            "",
            "Root=1-0af76519-16cd43dd8448eb211c80319c",
            "Root=2-0af76519-16cd43dd8448eb211c80319c;Parent=b7ad6b7169203331",
            "Root=1-0af76519-16cd;Parent=b7ad6b7169203331",
            "Root=1-0af76519-16cd43dd8448eb211c80319c;Parent=zzad6b7169203331",
        ] {
            assert_eq!(traceparent(bad), None, "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_waits_for_a_ready_instance_and_sees_it_go() {
        let state = watch::Sender::new(State::Starting);
        let mut slot = state.subscribe();
        let a_while = Duration::from_secs(60);
        assert!(
            tokio::time::timeout(a_while, ready(&mut slot))
                .await
                .is_err(),
            "no call is taken while the instance starts"
        );
        state.send_replace(State::Ready {
            generation: 1,
            port: 4242,
        });
        assert_eq!(ready(&mut slot).await, Some((1, 4242)));
        assert!(
            tokio::time::timeout(a_while, gone(&mut slot, 1))
                .await
                .is_err()
        );
        state.send_replace(State::Exited {
            generation: 1,
            status: "exit status: 3".to_owned(),
        });
        assert_eq!(gone(&mut slot, 1).await, "exit status: 3");
        state.send_replace(State::Stopped);
        assert_eq!(ready(&mut slot).await, None);
    }
}
