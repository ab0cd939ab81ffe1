//! The local instance's process, as both kinds of instance start it: the
//! worker's command in the worker's own folder and environment (less the
//! worker's token), its stdout beside its stderr on the worker's stderr,
//! started and contained by `processes`.

use std::os::fd::AsFd;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::options::WorkerOptions;
use crate::processes::FunctionProcess;

/// How long an instance may take to be ready (the gateway's default
/// `init_timeout`; the protocol does not carry the function's own).
pub(super) const INIT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a stopped instance gets between SIGTERM and SIGKILL (the
/// gateway's default `exit_grace`).
pub(super) const EXIT_GRACE: Duration = Duration::from_secs(10);

/// Largest result an instance may give: a bound on the worker's memory,
/// above any gateway's result limit (which the gateway enforces).
pub(super) const MAX_RESULT: u64 = 256 << 20;

/// Starts the instance's process with `env` on top of the worker's own
/// environment. The token stays with the worker: a function that needs to
/// call the gateway gets its own credential per call.
pub(super) async fn start(
    options: &WorkerOptions,
    env: &[(&str, String)],
) -> Result<FunctionProcess, String> {
    let program = &options.command[0];
    let mut command = Command::new(program);
    command
        .args(&options.command[1..])
        .env_remove(&options.token_env)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(stderr) => command.stdout(Stdio::from(stderr)),
        Err(_) => command.stdout(Stdio::null()),
    };
    command.envs(env.iter().map(|(k, v)| (k, v)));
    // Where its calls call other functions (with the event's call_token),
    // and what to verify the gateway with, as the gateway's own instances
    // are told.
    command.env("FNGATE_URL", &options.gateway);
    match &options.cacert {
        Some(ca) => command.env(
            "FNGATE_CA_FILE",
            std::path::absolute(ca).unwrap_or(ca.clone()),
        ),
        None => command.env_remove("FNGATE_CA_FILE"),
    };
    FunctionProcess::start(command)
        .await
        .map_err(|e| format!("cannot start {program:?}: {e}"))
}

/// The started instance's `process` once `ready` says it can take calls;
/// if the process exits first, `ready` fails, or the init timeout passes,
/// the process is stopped and the error says which.
pub(super) async fn until_ready(
    mut process: FunctionProcess,
    ready: impl Future<Output = Result<(), String>>,
) -> Result<FunctionProcess, String> {
    let ready = tokio::select! {
        ready = ready => ready,
        status = process.wait() => Err(format!(
            "the instance exited before it was ready ({})",
            exit_text(status)
        )),
        () = tokio::time::sleep(INIT_TIMEOUT) => Err(format!(
            "the instance was not ready within {}",
            humantime::format_duration(INIT_TIMEOUT)
        )),
    };
    match ready {
        Ok(()) => Ok(process),
        Err(why) => {
            let _ = process.stop(EXIT_GRACE).await;
            Err(why)
        }
    }
}

/// An exit status, or why it could not be read, for the log and errors.
pub(super) fn exit_text(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(e) => format!("cannot wait for it: {e}"),
    }
}
