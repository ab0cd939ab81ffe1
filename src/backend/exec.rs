//! The `exec` backend: one process per call, invocation request on stdin,
//! result JSON on stdout, exit 0 for success. Each call's process is
//! started and contained by [`crate::processes`]: a timeout, a cancellation
//! or the call's end kills everything it started.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, Command};
use tokio::time::Instant;

use super::stream::{self, Decoding, Framing, ItemSource, ItemStream, Step};
use super::{Backend, BackendError, BoxFuture, reported_error, result_json};
use crate::invocation::Invocation;
use crate::processes::FunctionProcess;

/// How much of stderr is kept for a failed call's message.
const STDERR_TAIL: usize = 4096;

/// How long stdout and stderr may stay open after the function's own
/// process has exited. Whatever holds them then is a process it left
/// behind outside its group: the call answers with the output read so far,
/// and that process is killed.
const OUTPUT_GRACE: Duration = Duration::from_millis(100);

/// Variables passed on from the gateway's own environment; everything else
/// (secrets among it) stays out of functions unless configured in `env`.
pub(crate) const INHERITED_ENV: &[&str] =
    &["PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR"];

pub struct ExecBackend {
    command: Vec<String>,
    cwd: PathBuf,
    env: BTreeMap<String, String>,
    max_result: u64,
}

/// stdout grew past `max_result`.
struct TooLarge;

impl ExecBackend {
    pub fn new(
        command: Vec<String>,
        cwd: PathBuf,
        env: BTreeMap<String, String>,
        max_result: u64,
    ) -> ExecBackend {
        ExecBackend {
            command,
            cwd,
            env,
            max_result,
        }
    }

    fn command(&self, invocation: &Invocation) -> Command {
        let mut cmd = Command::new(&self.command[0]);
        cmd.args(&self.command[1..])
            .current_dir(&self.cwd)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for name in INHERITED_ENV {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        cmd.envs(&self.env)
            .env("FNGATE_CALL_ID", invocation.call_id.as_str())
            .env("FNGATE_REQUEST_ID", &*invocation.trace.request_id)
            .env("TRACEPARENT", &invocation.trace.traceparent);
        // `FNGATE_URL` (and `FNGATE_CA_FILE`) come with the function's env.
        if let Some(token) = &invocation.call_token {
            cmd.env("FNGATE_CALL_TOKEN", &**token);
        }
        if let Some(principal) = &invocation.principal {
            cmd.env("FNGATE_SUBJECT", &principal.subject);
            if let Some(issuer) = &principal.issuer {
                cmd.env("FNGATE_ISSUER", issuer);
            }
        }
        cmd
    }

    async fn run(&self, invocation: &Invocation) -> Result<Bytes, BackendError> {
        let mut process = FunctionProcess::start(self.command(invocation))
            .await
            .map_err(|e| {
                BackendError::Unreachable(format!("cannot start {:?}: {e}", self.command[0]))
            })?;
        let (stdin, stdout, stderr) = process.take_stdio();
        let stdout = stdout.expect("stdout is piped");
        let stderr = stderr.expect("stderr is piped");
        let request = invocation.to_json();
        let mut out = Vec::new();
        let mut err = Vec::new();
        let io = async {
            tokio::try_join!(
                write_request(stdin, &request),
                read_capped(stdout, self.max_result, &mut out),
                read_tail(stderr, STDERR_TAIL, &mut err),
            )
        };
        let ended = supervise(&mut process, io, invocation.deadline).await;
        // Kills what the function left running: its group now, what left
        // the group right after the answer (see `processes`).
        drop(process);
        match ended? {
            Ended::Exited(status) => {
                keep_tail(&mut err, STDERR_TAIL);
                outcome(status, out, &err)
            }
            Ended::TooLarge => Err(BackendError::Garbage(format!(
                "result larger than max_result ({} bytes)",
                self.max_result
            ))),
        }
    }
}

/// How a call's process ended.
enum Ended {
    /// It exited, and its output ended (or the grace after its exit passed).
    Exited(ExitStatus),
    /// Its stdout outgrew `max_result`; it was killed.
    TooLarge,
}

/// Waits until the process has exited and `io` (its stdin, stdout and
/// stderr) has ended, or `OUTPUT_GRACE` has passed after the exit. Kills the
/// group when stdout outgrows its limit, and at the deadline (`Timeout`,
/// once the process is reaped).
async fn supervise(
    process: &mut FunctionProcess,
    io: impl Future<Output = Result<((), (), ()), TooLarge>>,
    deadline: Instant,
) -> Result<Ended, BackendError> {
    tokio::pin!(io);
    let timeout = tokio::time::sleep_until(deadline);
    tokio::pin!(timeout);
    // Armed when the process exits.
    let grace = tokio::time::sleep_until(deadline);
    tokio::pin!(grace);
    let mut output: Option<Result<(), TooLarge>> = None;
    let mut status: Option<ExitStatus> = None;
    loop {
        match (status, &output) {
            (Some(status), Some(Ok(()))) => return Ok(Ended::Exited(status)),
            (Some(_), Some(Err(TooLarge))) => return Ok(Ended::TooLarge),
            _ => {}
        }
        tokio::select! {
            ended = &mut io, if output.is_none() => {
                if ended.is_err() {
                    process.kill();
                }
                output = Some(ended.map(|_| ()));
            }
            exited = process.wait(), if status.is_none() => {
                let exited = exited.map_err(|e| BackendError::Crashed(format!("waiting for the process: {e}")))?;
                status = Some(exited);
                grace.as_mut().reset(Instant::now() + OUTPUT_GRACE);
            }
            () = &mut grace, if status.is_some() => {
                // Held open by a process outside the group: take what came.
                output = Some(Ok(()));
            }
            () = &mut timeout, if status.is_none() => {
                process.kill();
                let _ = process.wait().await;
                return Err(BackendError::Timeout);
            }
        }
    }
}

/// Writes the invocation request and closes stdin.
async fn write_request(stdin: Option<ChildStdin>, request: &[u8]) -> Result<(), TooLarge> {
    if let Some(mut stdin) = stdin {
        // A function may exit without reading its input: a broken pipe here
        // is its business, its exit status tells the rest.
        let _ = stdin.write_all(request).await;
    }
    Ok(())
}

fn outcome(status: ExitStatus, stdout: Vec<u8>, stderr: &[u8]) -> Result<Bytes, BackendError> {
    if status.success() {
        return result_json(Bytes::from(stdout));
    }
    if status.code().is_none() {
        return Err(BackendError::Crashed(format!("process ended by {status}")));
    }
    if let Some(reported) = reported_error(&stdout) {
        return Err(reported);
    }
    let message = String::from_utf8_lossy(stderr).trim().to_owned();
    Err(BackendError::Function {
        kind: error_kind(&message)
            .unwrap_or_else(|| format!("exit status {}", status.code().unwrap_or(-1))),
        message,
    })
}

/// The error type named by the last line of a traceback-like message, as
/// in Python's `ValueError: x must be positive`.
fn error_kind(message: &str) -> Option<String> {
    let last = message.lines().last()?;
    let (name, _) = last.split_once(':')?;
    let identifier = |part: &str| {
        part.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    (name.split('.').all(identifier)).then(|| name.to_owned())
}

/// Reads everything into `out`; fails once more than `limit` bytes arrived.
async fn read_capped(
    mut reader: impl AsyncRead + Unpin,
    limit: u64,
    out: &mut Vec<u8>,
) -> Result<(), TooLarge> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => {
                if (out.len() + n) as u64 > limit {
                    return Err(TooLarge);
                }
                out.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// Reads everything into `tail`, keeping it under twice `keep` bytes as it
/// goes; [`keep_tail`] makes the final cut. Never fails.
async fn read_tail(
    mut reader: impl AsyncRead + Unpin,
    keep: usize,
    tail: &mut Vec<u8>,
) -> Result<(), TooLarge> {
    let mut chunk = [0u8; 8 * 1024];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => {
                tail.extend_from_slice(&chunk[..n]);
                if tail.len() > keep * 2 {
                    tail.drain(..tail.len() - keep);
                }
            }
        }
    }
}

/// Cuts `tail` to its last `keep` bytes, at a character boundary.
fn keep_tail(tail: &mut Vec<u8>, keep: usize) {
    if tail.len() > keep {
        let mut cut = tail.len() - keep;
        while cut < tail.len() && (tail[cut] & 0xC0) == 0x80 {
            cut += 1;
        }
        tail.drain(..cut);
    }
}

impl ExecBackend {
    /// Starts a streaming call: each line the process prints on stdout is
    /// an item, as it prints it (see [`ExecItems`]).
    async fn open_stream(&self, invocation: &Invocation) -> Result<ItemStream, BackendError> {
        let mut process = FunctionProcess::start(self.command(invocation))
            .await
            .map_err(|e| {
                BackendError::Unreachable(format!("cannot start {:?}: {e}", self.command[0]))
            })?;
        let (stdin, stdout, stderr) = process.take_stdio();
        let request = invocation.to_json();
        let items = ExecItems {
            _stdin: Aborting(tokio::spawn(async move {
                let _ = write_request(stdin, &request).await;
            })),
            stderr: Aborting(tokio::spawn(async move {
                let mut tail = Vec::new();
                if let Some(stderr) = stderr {
                    let _ = read_tail(stderr, STDERR_TAIL, &mut tail).await;
                }
                keep_tail(&mut tail, STDERR_TAIL);
                tail
            })),
            process,
            stdout: stdout.expect("stdout is piped"),
            decoding: Decoding::new(Framing::Lines, self.max_result),
            chunk: vec![0; 16 * 1024],
            exited: None,
            grace: None,
        };
        Ok(stream::from_source(items))
    }
}

/// A streaming call's process: its stdout cut into items as they come,
/// then its exit (non-zero: an error item with the tail of its stderr).
/// Dropped, it kills the process and everything it started.
struct ExecItems {
    process: FunctionProcess,
    stdout: tokio::process::ChildStdout,
    /// Writes the request; stopped with the call.
    _stdin: Aborting<()>,
    stderr: Aborting<Vec<u8>>,
    decoding: Decoding,
    chunk: Vec<u8>,
    exited: Option<ExitStatus>,
    /// Once the process has exited: how long its stdout may stay open.
    grace: Option<Instant>,
}

/// A task stopped when its handle is dropped.
struct Aborting<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Aborting<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ItemSource for ExecItems {
    async fn next(&mut self) -> Option<Result<Bytes, BackendError>> {
        loop {
            match self.decoding.step() {
                Step::Item(item) => return Some(item),
                Step::End => return self.ended().await.err().map(Err),
                Step::Done => return None,
                Step::Read => {}
            }
            let grace = self.grace;
            tokio::select! {
                read = self.stdout.read(&mut self.chunk) => match read {
                    Ok(0) | Err(_) => self.decoding.end_of_input(),
                    Ok(n) => self.decoding.push(&self.chunk[..n]),
                },
                exited = self.process.wait(), if self.exited.is_none() => {
                    let exited = exited.map_err(|e| BackendError::Crashed(format!("waiting for the process: {e}")));
                    match exited {
                        Ok(status) => {
                            self.exited = Some(status);
                            self.grace = Some(Instant::now() + OUTPUT_GRACE);
                        }
                        Err(e) => {
                            self.decoding.stop();
                            return Some(Err(e));
                        }
                    }
                }
                // Held open by a process outside the group: take what came.
                () = tokio::time::sleep_until(grace.unwrap_or_else(Instant::now)), if grace.is_some() => {
                    self.decoding.end_of_input();
                }
            }
        }
    }
}

impl ExecItems {
    /// The process's end, once its stdout has: an exit other than 0 is the
    /// function's error.
    async fn ended(&mut self) -> Result<(), BackendError> {
        let status = match self.exited {
            Some(status) => status,
            None => self
                .process
                .wait()
                .await
                .map_err(|e| BackendError::Crashed(format!("waiting for the process: {e}")))?,
        };
        if status.success() {
            return Ok(());
        }
        if status.code().is_none() {
            return Err(BackendError::Crashed(format!("process ended by {status}")));
        }
        let tail = tokio::time::timeout(OUTPUT_GRACE, &mut self.stderr.0)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let message = String::from_utf8_lossy(&tail).trim().to_owned();
        Err(BackendError::Function {
            kind: error_kind(&message)
                .unwrap_or_else(|| format!("exit status {}", status.code().unwrap_or(-1))),
            message,
        })
    }
}

impl Backend for ExecBackend {
    fn invoke<'a>(
        &'a self,
        invocation: &'a Invocation,
    ) -> BoxFuture<'a, Result<Bytes, BackendError>> {
        Box::pin(self.run(invocation))
    }

    fn invoke_stream<'a>(
        &'a self,
        invocation: &'a Invocation,
    ) -> BoxFuture<'a, Result<ItemStream, BackendError>> {
        Box::pin(self.open_stream(invocation))
    }

    fn describe(&self) -> String {
        format!("exec {}", self.command.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kind_comes_from_a_traceback_last_line() {
        assert_eq!(
            error_kind("Traceback...\nValueError: bad").as_deref(),
            Some("ValueError")
        );
        assert_eq!(
            error_kind("x\nmod.sub.KeyError: 'k'").as_deref(),
            Some("mod.sub.KeyError")
        );
        assert_eq!(error_kind("something went wrong: sorry"), None);
        assert_eq!(error_kind(""), None);
    }

    #[tokio::test]
    async fn stderr_tail_keeps_the_last_bytes_on_a_char_boundary() {
        let text = "é".repeat(5000);
        let mut tail = Vec::new();
        let _ = read_tail(text.as_bytes(), 4096, &mut tail).await;
        keep_tail(&mut tail, 4096);
        assert!(tail.len() <= 4096 && tail.len() >= 4094);
        assert!(std::str::from_utf8(&tail).is_ok());
    }

    #[tokio::test]
    async fn capped_read_gives_up_past_the_limit() {
        let mut out = Vec::new();
        assert!(read_capped(&b"12345"[..], 5, &mut out).await.is_ok());
        assert_eq!(out, b"12345");
        assert!(
            read_capped(&b"123456"[..], 5, &mut Vec::new())
                .await
                .is_err()
        );
    }
}
