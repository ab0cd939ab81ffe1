//! A real `redis-server` for the Redis store's tests: its own temp folder,
//! a free loopback port, AOF on with `appendfsync always` (what the
//! README tells users who need every accepted call kept), no RDB
//! snapshots. It can be stopped (SIGKILL or a clean shutdown) and
//! started again on the same port and folder, and is killed when
//! dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::START_TIMEOUT;

pub struct RedisServer {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one; panics (the test cannot run) when `redis-server` is
    /// missing (`.ci/run` installs it) or does not come up.
    pub async fn start() -> RedisServer {
        let mut dir = tempfile::tempdir().expect("a temp folder for redis");
        let mut last_error = String::new();
        // A port found free can be taken before redis binds it: try again.
        for _ in 0..5 {
            let port = free_port();
            let mut server = RedisServer {
                dir,
                port,
                child: None,
            };
            match server.spawn().await {
                Ok(()) => return server,
                Err(e) => {
                    last_error = e;
                    dir = server.dir;
                }
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    /// `redis://127.0.0.1:PORT`, for `[store] url`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its data folder (the AOF files are under it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILL: what an acknowledged write survives only through the AOF.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Starts it again on the same port and folder (after `kill`): it
    /// loads its AOF before it answers.
    pub async fn restart(&mut self) {
        self.kill().await;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn().await {
                Ok(()) => return,
                // The old socket can linger for a moment.
                Err(e) if Instant::now() < deadline => {
                    eprintln!("redis-server restart: {e}; trying again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("redis-server did not start again: {e}"),
            }
        }
    }

    /// Runs `redis-cli` against it and returns its output (for the tests'
    /// own looks at keys).
    pub async fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .await
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let data: PathBuf = self.dir.path().to_owned();
        let mut child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--dir",
                data.to_str().expect("a UTF-8 temp path"),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--protected-mode",
                "no",
                "--loglevel",
                "notice",
                "--logfile",
                "",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run redis-server: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(START_TIMEOUT, async {
            let mut seen = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Ready to accept connections") {
                    return Ok(());
                }
                seen.push(line);
            }
            Err(seen.join("\n"))
        })
        .await;
        match ready {
            Ok(Ok(())) => {
                // Keep reading its log so it never blocks on a full pipe.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                self.child = Some(child);
                Ok(())
            }
            Ok(Err(log)) => {
                let _ = child.wait().await;
                Err(format!("it exited:\n{log}"))
            }
            Err(_) => {
                let _ = child.start_kill();
                Err("not ready in time".to_owned())
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
