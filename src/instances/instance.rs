//! One instance's life, in its own task: its process started with what its
//! protocol needs (`AWS_LAMBDA_RUNTIME_API`, or `PORT`), the wait until it
//! is ready, the watch until it exits or is asked to stop, and the report
//! of each step to its pool.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Uri, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::pool::Pool;
use super::remote::Remote;
use super::runtime_api::{self, Mailbox};
use super::{HttpInstance, Protocol};
use crate::backend::BackendError;
use crate::backend::exec::INHERITED_ENV;
use crate::backend::http::HttpBackend;
use crate::processes::FunctionProcess;

/// Where a ready instance takes its calls.
pub enum Endpoint {
    /// Its Runtime API mailbox: the next call is put there, and the
    /// instance takes it with `invocation/next`.
    Lambda(Arc<Mailbox>),
    /// Its HTTP server, as an `http` backend of one replica.
    Http(Box<HttpBackend>),
    /// A worker on another machine, which polls the gateway for its calls.
    Remote(Arc<Remote>),
}

/// A ready instance, as its pool and the calls leasing it see it.
pub struct Instance {
    /// Unique within its pool.
    pub id: u64,
    pub endpoint: Endpoint,
    /// Asks the instance's task to stop it.
    stop: CancellationToken,
}

impl Instance {
    /// A worker's instance, and the token that retires it.
    pub(super) fn remote(id: u64, remote: Arc<Remote>) -> (Arc<Instance>, CancellationToken) {
        let stop = CancellationToken::new();
        let instance = Arc::new(Instance {
            id,
            endpoint: Endpoint::Remote(remote),
            stop: stop.clone(),
        });
        (instance, stop)
    }

    /// Asks the instance's task to stop it: SIGTERM to its process group,
    /// SIGKILL after `exit_grace`.
    pub(super) fn stop(&self) {
        self.stop.cancel();
    }
}

/// How long an HTTP instance's readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The pause between two readiness probes of an HTTP instance in its first
/// second: a refused loopback connect costs microseconds, and a cold
/// start should not wait long for its instance to be seen.
const PROBE_PAUSE: Duration = Duration::from_millis(1);

/// The pause after the first second, for instances with a long set-up.
const SLOW_PROBE_PAUSE: Duration = Duration::from_millis(10);

/// What an instance is started with, by protocol.
enum Prepared {
    Lambda {
        mailbox: Arc<Mailbox>,
        server: CancellationToken,
        env: [(&'static str, String); 1],
    },
    Http {
        port: u16,
    },
}

/// Runs instance `id` of `pool` from start to end.
pub(super) async fn run(pool: Arc<Pool>, id: u64) {
    let begun = std::time::Instant::now();
    let prepared = match prepare(&pool.protocol) {
        Ok(prepared) => prepared,
        Err(e) => {
            pool.start_failed(BackendError::Unreachable(format!(
                "cannot prepare an instance: {e}"
            )));
            return;
        }
    };
    let mut process = match FunctionProcess::start(command(&pool, &prepared)).await {
        Ok(process) => process,
        Err(e) => {
            stop_server(&prepared);
            pool.start_failed(BackendError::Unreachable(format!(
                "cannot start {:?}: {e}",
                pool.spec.command[0]
            )));
            return;
        }
    };
    let pid = process.id();
    let grace = pool.spec.exit_grace;
    let started = tokio::select! {
        ready = until_ready(&pool, &prepared) => ready,
        status = process.wait() => Err(BackendError::Unreachable(format!(
            "the instance exited before it was ready ({})",
            exit_text(status)
        ))),
        () = tokio::time::sleep(pool.spec.init_timeout) => Err(BackendError::Unreachable(format!(
            "the instance was not ready within init_timeout ({})",
            humantime::format_duration(pool.spec.init_timeout)
        ))),
        () = pool.closing.cancelled() => Err(BackendError::Unreachable("the pool closed".to_owned())),
    };
    let endpoint = match started {
        Ok(endpoint) => endpoint,
        Err(e) => {
            if !pool.closing.is_cancelled() {
                pool.start_failed(e);
            } else {
                pool.start_ended();
            }
            let _ = process.stop(grace).await;
            stop_server(&prepared);
            return;
        }
    };
    let stop = CancellationToken::new();
    let instance = Arc::new(Instance {
        id,
        endpoint,
        stop: stop.clone(),
    });
    tracing::debug!(pool = %pool.label, instance = id, pid = pid.as_raw(), "instance ready");
    pool.metrics.record_cold_start(begun.elapsed());
    if !pool.ready(instance.clone()) {
        let _ = process.stop(grace).await;
        stop_server(&prepared);
        return;
    }
    let crashed = tokio::select! {
        status = process.wait() => {
            tracing::warn!(pool = %pool.label, instance = id, "instance exited: {}", exit_text(status));
            true
        }
        () = stop.cancelled() => false,
        () = pool.closing.cancelled() => false,
    };
    if let Endpoint::Lambda(mailbox) = &instance.endpoint {
        // Its call, if any, ends now (502) rather than with the process.
        mailbox.close();
    }
    pool.gone(id, crashed);
    if crashed {
        process.finish().await;
    } else {
        let _ = process.stop(grace).await;
    }
    stop_server(&prepared);
}

fn prepare(protocol: &Protocol) -> std::io::Result<Prepared> {
    Ok(match protocol {
        Protocol::Lambda(identity) => {
            let (mailbox, addr, server) = runtime_api::serve(identity)?;
            Prepared::Lambda {
                mailbox,
                server,
                env: [("AWS_LAMBDA_RUNTIME_API", addr.to_string())],
            }
        }
        Protocol::Http(_) => Prepared::Http { port: free_port()? },
    })
}

fn stop_server(prepared: &Prepared) {
    if let Prepared::Lambda { server, .. } = prepared {
        server.cancel();
    }
}

/// A loopback port free right now, for an HTTP instance to listen on.
fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// The instance's command: the spec's program in the config's folder,
/// with the gateway's basic environment (PATH, HOME, ...), the spec's
/// `env`, the pool's (class parameters) and the protocol's. Its stdout
/// goes to the gateway's stderr, beside its own stderr.
fn command(pool: &Pool, prepared: &Prepared) -> Command {
    let spec = &pool.spec;
    let mut command = Command::new(&spec.command[0]);
    command
        .args(&spec.command[1..])
        .current_dir(&spec.cwd)
        .env_clear()
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(stderr) => command.stdout(Stdio::from(stderr)),
        Err(_) => command.stdout(Stdio::null()),
    };
    for name in INHERITED_ENV {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command.envs(&spec.env);
    command.envs(pool.env.iter().map(|(k, v)| (k, v)));
    match (prepared, &pool.protocol) {
        (Prepared::Lambda { env, .. }, Protocol::Lambda(identity)) => {
            command.envs(env.iter().map(|(k, v)| (k, v)));
            command
                .env("AWS_LAMBDA_FUNCTION_NAME", &identity.function_name)
                .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
                .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
                .env("AWS_LAMBDA_LOG_GROUP_NAME", "/fngate")
                .env("AWS_LAMBDA_LOG_STREAM_NAME", &pool.label)
                .env("LAMBDA_TASK_ROOT", &spec.cwd);
            // Lambda's convention: the command's last word is the handler
            // (`aws-lambda-ric app.handler`); Node's runtime client reads
            // it only from `_HANDLER`.
            if let (Some(handler), false) = (spec.command.last(), spec.env.contains_key("_HANDLER"))
                && spec.command.len() > 1
            {
                command.env("_HANDLER", handler);
            }
        }
        (Prepared::Http { port }, _) => {
            command.env("PORT", port.to_string());
        }
        (Prepared::Lambda { .. }, Protocol::Http(_)) => {
            unreachable!("prepare() follows the pool's protocol")
        }
    }
    command
}

/// Waits until the instance can take calls: its first `invocation/next`
/// (Lambda), or a connection / 2xx `ready_path` answer (HTTP).
async fn until_ready(pool: &Pool, prepared: &Prepared) -> Result<Endpoint, BackendError> {
    match (prepared, &pool.protocol) {
        (Prepared::Lambda { mailbox, .. }, _) => {
            mailbox.ready().await?;
            Ok(Endpoint::Lambda(mailbox.clone()))
        }
        (Prepared::Http { port }, Protocol::Http(http)) => {
            probe_until_ready(*port, http.ready_path.as_deref()).await;
            Ok(Endpoint::Http(Box::new(http_endpoint(*port, http)?)))
        }
        (Prepared::Http { .. }, Protocol::Lambda(_)) => {
            unreachable!("prepare() follows the pool's protocol")
        }
    }
}

fn http_endpoint(port: u16, http: &HttpInstance) -> Result<HttpBackend, BackendError> {
    let url: Uri = format!("http://127.0.0.1:{port}{}", http.path)
        .parse()
        .map_err(|e| BackendError::Unreachable(format!("the instance's URL: {e}")))?;
    Ok(HttpBackend::new(
        &http.clients,
        vec![url],
        http.http2,
        http.max_result,
    ))
}

/// Probes until the instance on `port` accepts a connection and, with a
/// `ready_path`, answers it with a 2xx. (No signal exists for a server
/// that starts listening: probing, with short pauses, is how it is seen.)
/// It never gives up: the caller bounds it by the instance's exit and its
/// init timeout.
pub(crate) async fn probe_until_ready(port: u16, ready_path: Option<&str>) {
    let started = tokio::time::Instant::now();
    loop {
        if let Ok(stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await {
            let ready = match ready_path {
                None => true,
                Some(path) => tokio::time::timeout(PROBE_TIMEOUT, probe(stream, port, path))
                    .await
                    .unwrap_or(false),
            };
            if ready {
                return;
            }
        }
        let pause = if started.elapsed() < Duration::from_secs(1) {
            PROBE_PAUSE
        } else {
            SLOW_PROBE_PAUSE
        };
        tokio::time::sleep(pause).await;
    }
}

/// `GET ready_path` on `stream`: true for a 2xx answer.
async fn probe(stream: TcpStream, port: u16, path: &str) -> bool {
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return false;
    };
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let Ok(request) = Request::get(path)
        .header(header::HOST, format!("127.0.0.1:{port}"))
        .body(Empty::<bytes::Bytes>::new())
    else {
        return false;
    };
    matches!(sender.send_request(request).await, Ok(response) if response.status().is_success())
}

fn exit_text(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(e) => format!("cannot wait for it: {e}"),
    }
}
