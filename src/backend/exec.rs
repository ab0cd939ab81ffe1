//! The `exec` backend: one process per call, invocation request on stdin,
//! result JSON on stdout, exit 0 for success. Each call runs in its own
//! process group so a timeout or cancellation kills everything it started.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};

use bytes::Bytes;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::{Backend, BackendError, BoxFuture, reported_error, result_json};
use crate::invocation::Invocation;

/// How much of stderr is kept for a failed call's message.
const STDERR_TAIL: usize = 4096;

/// Variables passed on from the gateway's own environment; everything else
/// (secrets among it) stays out of functions unless configured in `env`.
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR"];

pub struct ExecBackend {
    command: Vec<String>,
    cwd: PathBuf,
    env: BTreeMap<String, String>,
    max_result: u64,
}

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
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for name in INHERITED_ENV {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        cmd.envs(&self.env)
            .env("FNGATE_CALL_ID", invocation.call_id.as_str())
            .env("FNGATE_REQUEST_ID", &*invocation.trace.request_id)
            .env("TRACEPARENT", &invocation.trace.traceparent);
        if let Some(principal) = &invocation.principal {
            cmd.env("FNGATE_SUBJECT", &principal.subject);
            if let Some(issuer) = &principal.issuer {
                cmd.env("FNGATE_ISSUER", issuer);
            }
        }
        cmd
    }

    async fn run(&self, invocation: &Invocation) -> Result<Bytes, BackendError> {
        let mut child = self.command(invocation).spawn().map_err(|e| {
            BackendError::Unreachable(format!("cannot start {:?}: {e}", self.command[0]))
        })?;
        let mut group = ProcessGroup::of(child.id());
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let request = invocation.to_json();
        let write = async move {
            if let Some(mut stdin) = stdin {
                // A function may exit without reading its input: a broken
                // pipe here is its business, its exit status tells the rest.
                let _ = stdin.write_all(&request).await;
            }
        };
        let io = async {
            tokio::join!(
                write,
                read_capped(stdout, self.max_result),
                read_tail(stderr, STDERR_TAIL)
            )
        };
        tokio::pin!(io);
        let deadline = tokio::time::sleep_until(invocation.deadline);
        tokio::pin!(deadline);
        let mut outputs = None;
        let mut status: Option<ExitStatus> = None;
        while outputs.is_none() || status.is_none() {
            tokio::select! {
                got = &mut io, if outputs.is_none() => {
                    let ((), out, err) = got;
                    if out.is_none() {
                        group.kill();
                    }
                    outputs = Some((out, err));
                }
                exited = child.wait(), if status.is_none() => {
                    let exited = exited.map_err(|e| BackendError::Crashed(format!("waiting for the process: {e}")))?;
                    // Whatever the function left running would hold the pipes open.
                    group.kill();
                    status = Some(exited);
                }
                () = &mut deadline => {
                    group.kill();
                    let _ = child.wait().await;
                    return Err(BackendError::Timeout);
                }
            }
        }
        group.disarm();
        let (Some((stdout, stderr)), Some(status)) = (outputs, status) else {
            unreachable!("the loop ends only with both set");
        };
        let Some(stdout) = stdout else {
            return Err(BackendError::Garbage(format!(
                "result larger than max_result ({} bytes)",
                self.max_result
            )));
        };
        outcome(status, stdout, &stderr)
    }
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

/// Reads everything, or `None` once more than `limit` bytes arrived.
async fn read_capped(mut reader: impl AsyncRead + Unpin, limit: u64) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return Some(out),
            Ok(n) => {
                if (out.len() + n) as u64 > limit {
                    return None;
                }
                out.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// Reads everything, keeping only the last `keep` bytes (cut at a
/// character boundary).
async fn read_tail(mut reader: impl AsyncRead + Unpin, keep: usize) -> Vec<u8> {
    let mut tail = Vec::with_capacity(keep * 2);
    let mut chunk = [0u8; 8 * 1024];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&chunk[..n]);
                if tail.len() > keep * 2 {
                    tail.drain(..tail.len() - keep);
                }
            }
        }
    }
    if tail.len() > keep {
        let mut cut = tail.len() - keep;
        while cut < tail.len() && (tail[cut] & 0xC0) == 0x80 {
            cut += 1;
        }
        tail.drain(..cut);
    }
    tail
}

/// The process group of one call; killed when dropped unless disarmed, so a
/// call abandoned by its caller leaves nothing running.
struct ProcessGroup(Option<Pid>);

impl ProcessGroup {
    fn of(pid: Option<u32>) -> ProcessGroup {
        ProcessGroup(pid.and_then(|p| i32::try_from(p).ok()).map(Pid::from_raw))
    }

    fn kill(&self) {
        if let Some(pid) = self.0 {
            // ESRCH (nothing left in the group) is the normal case.
            let _ = killpg(pid, Signal::SIGKILL);
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Backend for ExecBackend {
    fn invoke<'a>(
        &'a self,
        invocation: &'a Invocation,
    ) -> BoxFuture<'a, Result<Bytes, BackendError>> {
        Box::pin(self.run(invocation))
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
        let tail = read_tail(text.as_bytes(), 4096).await;
        assert!(tail.len() <= 4096 && tail.len() >= 4094);
        assert!(std::str::from_utf8(&tail).is_ok());
    }

    #[tokio::test]
    async fn capped_read_gives_up_past_the_limit() {
        assert_eq!(read_capped(&b"12345"[..], 5).await, Some(b"12345".to_vec()));
        assert_eq!(read_capped(&b"123456"[..], 5).await, None);
    }
}
