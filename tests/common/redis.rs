//! A real `redis-server` for the Redis store's tests: its own temp folder,
//! a free loopback port, AOF on with `appendfsync always` (what the
//! README tells users who need every accepted call kept), no RDB
//! snapshots. It can be stopped (SIGKILL or a clean shutdown) and
//! started again on the same port and folder, and is killed when
//! dropped.
//!
//! [`StoreUnderTest`] and [`both_stores!`](crate::both_stores) run one
//! test body against the embedded store and against Redis: the spawned-call
//! contract is the same on both.

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

/// The call store a test's gateways run on: the embedded one (its file in
/// the gateway's folder, as configured by default) or Redis on a server of
/// the test's own, which lives as long as this value.
// One a test, moved once: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum StoreUnderTest {
    Embedded,
    Redis {
        server: RedisServer,
        /// Unique to the test, so that keys a gateway writes are its own
        /// and every gateway given the same value shares them.
        prefix: String,
    },
}

impl StoreUnderTest {
    /// The Redis store on a fresh `redis-server`.
    pub async fn redis() -> StoreUnderTest {
        StoreUnderTest::Redis {
            server: RedisServer::start().await,
            prefix: format!("t{}:", fngate::invocation::random_hex::<6>()),
        }
    }

    /// The `[store]` table for this store with `lines` (more of the
    /// table's keys, one a line) in it. For the embedded store without
    /// lines it is empty: the gateway's defaults. For Redis it has a
    /// `claim_timeout` of 2 s, so that a lease lapses and is extended
    /// within a test's time.
    pub fn toml(&self, lines: &str) -> String {
        match self {
            StoreUnderTest::Embedded if lines.is_empty() => String::new(),
            StoreUnderTest::Embedded => format!("[store]\n{lines}\n"),
            StoreUnderTest::Redis { server, prefix } => format!(
                "[store]\nkind = \"redis\"\nurl = \"{}\"\nprefix = \"{prefix}\"\n\
                 claim_timeout = \"2s\"\n{lines}\n",
                server.url()
            ),
        }
    }

    /// `embedded` or `redis`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            StoreUnderTest::Embedded => "embedded",
            StoreUnderTest::Redis { .. } => "redis",
        }
    }

    /// The redis-server, for a test's own looks at its keys.
    pub fn redis_server(&self) -> Option<&RedisServer> {
        match self {
            StoreUnderTest::Embedded => None,
            StoreUnderTest::Redis { server, .. } => Some(server),
        }
    }
}

/// Runs each named test body (`async fn NAME(store: StoreUnderTest)`)
/// against both stores: it generates `mod NAME` with the tests
/// `NAME::embedded` and `NAME::redis` (`cargo test -- ::redis` runs the
/// Redis half). A `#[tokio::test(...)]` attribute first, when given, is
/// used for both instead of the plain `#[tokio::test]`.
#[macro_export]
macro_rules! both_stores {
    (#[$test:meta] $($name:ident),+ $(,)?) => {$(
        mod $name {
            #[$test]
            async fn embedded() {
                super::$name($crate::common::redis::StoreUnderTest::Embedded).await
            }

            #[$test]
            async fn redis() {
                super::$name($crate::common::redis::StoreUnderTest::redis().await).await
            }
        }
    )+};
    ($($name:ident),+ $(,)?) => {
        $crate::both_stores!(#[tokio::test] $($name),+);
    };
}
