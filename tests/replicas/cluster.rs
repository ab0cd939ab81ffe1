//! Several `fngate serve` replicas on one real redis-server: each has its
//! own config folder, port and dev CA, and all share the Redis url and
//! prefix. Every replica serves `r/work` (REPLICA_PY), which tells which
//! replica ran it by appending a line to one run log they share.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::common::redis::RedisServer;
use crate::common::{Gateway, GatewayBuilder, exec_fn};

/// The replicas' names, in start order: replica `i` is `NAMES[i]`.
pub const NAMES: [&str; 3] = ["A", "B", "C"];

/// `r/work`: appends `CALL_ID REPLICA PID ATTEMPT` to `$RUN_LOG` (one
/// write, so lines of concurrent runs never mix) as it starts, then waits
/// until the file `kwargs.gate` exists (when given) or sleeps
/// `kwargs.seconds`; answers `{"x", "replica", "attempt"}`.
pub const REPLICA_PY: &str = r#"
import json, os, sys, time
req = json.loads(sys.stdin.read())
kw = req.get("kwargs") or {}
replica = os.environ["REPLICA"]
line = "%s %s %d %s\n" % (os.environ.get("FNGATE_CALL_ID", "-"), replica, os.getpid(), req.get("attempt"))
fd = os.open(os.environ["RUN_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
os.write(fd, line.encode())
os.close(fd)
if kw.get("gate"):
    until = time.time() + 60
    while not os.path.exists(kw["gate"]) and time.time() < until:
        time.sleep(0.02)
else:
    time.sleep(float(kw.get("seconds", 0)))
sys.stdout.write(json.dumps({"x": kw.get("x"), "replica": replica, "attempt": req.get("attempt")}))
"#;

/// One run of `r/work`, as its line in the run log says.
#[derive(Debug, Clone)]
pub struct Run {
    pub call: String,
    pub replica: String,
    pub pid: i32,
    pub attempt: u64,
}

/// What `GET /calls/{id}` answered: status, `X-Attempt`, JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub attempt: Option<u64>,
    pub retry_after: Option<String>,
    pub body: Value,
}

/// A Redis and the replicas on it, each with a client trusting its CA.
pub struct Cluster {
    pub redis: RedisServer,
    pub replicas: Vec<Gateway>,
    /// `[store] prefix` of every replica.
    pub prefix: String,
    clients: Vec<reqwest::Client>,
    shared: TempDir,
}

impl Cluster {
    /// Starts a redis-server and `count` replicas (at once), with
    /// `claim_timeout` in `[store]`; `tweak(i, builder)` adds what replica
    /// `i` has on top of `r/work`.
    pub async fn start(
        count: usize,
        claim_timeout: &str,
        tweak: impl Fn(usize, GatewayBuilder) -> GatewayBuilder,
    ) -> Cluster {
        let redis = RedisServer::start().await;
        let shared = tempfile::tempdir().expect("a folder the replicas share");
        let prefix = format!("fngate-{}:", std::process::id());
        let run_log = shared.path().join("runs.log");
        let run_log = run_log.to_str().expect("a UTF-8 temp path");
        let builders = (0..count).map(|i| {
            let store = format!(
                "[store]\nkind = \"redis\"\nurl = \"{}\"\nprefix = \"{prefix}\"\n\
                 claim_timeout = \"{claim_timeout}\"\n",
                redis.url()
            );
            let work = exec_fn(
                "r",
                "work",
                "replica.py",
                &format!(
                    "timeout = \"90s\"\nconcurrency = 80\nqueue = 80\n\
                     env.REPLICA = \"{}\"\nenv.RUN_LOG = \"{run_log}\"",
                    NAMES[i]
                ),
            );
            let builder = Gateway::builder()
                .file("replica.py", REPLICA_PY)
                .toml(&store)
                .toml(&work);
            tweak(i, builder).start()
        });
        let replicas = futures_util::future::join_all(builders).await;
        let clients = replicas.iter().map(Gateway::client).collect();
        Cluster {
            redis,
            replicas,
            prefix,
            clients,
            shared,
        }
    }

    /// A file path in the folder the replicas share (for gates).
    pub fn shared_path(&self, name: &str) -> PathBuf {
        self.shared.path().join(name)
    }

    pub fn client(&self, i: usize) -> &reqwest::Client {
        &self.clients[i]
    }

    /// POSTs `body` to `path` on replica `i` with `headers`.
    pub async fn post(
        &self,
        i: usize,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let gw = &self.replicas[i];
        let mut request = self.clients[i]
            .post(gw.url(path))
            .header("content-type", "application/json")
            .body(body.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path} on {}: {e:?}", NAMES[i]))
    }

    /// Spawns on replica `i`: must answer 202; the call id.
    pub async fn spawn(&self, i: usize, path: &str, body: &Value) -> String {
        accepted(self.post(i, path, body, &[]).await, NAMES[i]).await
    }

    /// `GET /calls/{id}` on replica `i`, with `?wait=` when given.
    pub async fn get(&self, i: usize, id: &str, wait: Option<u32>) -> Answer {
        answer(self.get_response(i, id, wait).await).await
    }

    /// `GET /calls/{id}` on replica `i`, the answer unread.
    pub async fn get_response(&self, i: usize, id: &str, wait: Option<u32>) -> reqwest::Response {
        let path = match wait {
            Some(w) => format!("/calls/{id}?wait={w}"),
            None => format!("/calls/{id}"),
        };
        self.clients[i]
            .get(self.replicas[i].url(&path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on {}: {e:?}", NAMES[i]))
    }

    /// `DELETE /calls/{id}` on replica `i`.
    pub async fn cancel(&self, i: usize, id: &str) -> Answer {
        let path = format!("/calls/{id}");
        let resp = self.clients[i]
            .delete(self.replicas[i].url(&path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("DELETE {path} on {}: {e:?}", NAMES[i]));
        answer(resp).await
    }

    /// Long-polls call `id` on replica `i` until it ends (panics when it
    /// has not within `within`).
    pub async fn finish(&self, i: usize, id: &str, within: Duration) -> Answer {
        let deadline = Instant::now() + within;
        loop {
            let answer = self.get(i, id, Some(10)).await;
            if answer.status != 202 {
                return answer;
            }
            assert!(
                Instant::now() < deadline,
                "call {id} did not end within {within:?} (read on {}): {:?}",
                NAMES[i],
                answer.body
            );
        }
    }

    /// Every run of `r/work` so far, in the order they started.
    pub fn runs(&self) -> Vec<Run> {
        let text = std::fs::read_to_string(self.shared.path().join("runs.log")).unwrap_or_default();
        text.lines()
            .map(|line| {
                let parts: Vec<&str> = line.split(' ').collect();
                assert_eq!(
                    parts.len(),
                    4,
                    "a run line is CALL REPLICA PID ATTEMPT: {line}"
                );
                Run {
                    call: parts[0].to_owned(),
                    replica: parts[1].to_owned(),
                    pid: parts[2].parse().expect("a pid"),
                    attempt: parts[3].parse().expect("an attempt"),
                }
            })
            .collect()
    }

    /// The runs of call `id`.
    pub fn runs_of(&self, id: &str) -> Vec<Run> {
        self.runs().into_iter().filter(|r| r.call == id).collect()
    }
}

/// Asserts a spawn's 202 (body and `Location`) and returns the call id.
pub async fn accepted(resp: reqwest::Response, replica: &str) -> String {
    let status = resp.status();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.text().await.expect("read the spawn answer");
    assert_eq!(status, 202, "spawn on {replica} answers 202: {text}");
    let body: Value = serde_json::from_str(&text).expect("the spawn answer is JSON");
    let id = body["call_id"].as_str().expect("a call_id").to_owned();
    assert!(id.starts_with("fc-"), "{text}");
    assert_eq!(
        location.as_deref(),
        Some(&*format!("/calls/{id}")),
        "{text}"
    );
    id
}

/// Reads an answer about a call.
pub async fn answer(resp: reqwest::Response) -> Answer {
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let attempt = header("x-attempt").and_then(|a| a.parse().ok());
    let retry_after = header("retry-after");
    let text = resp.text().await.expect("read the answer");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("an answer about a call is JSON ({e}): {status} {text}"));
    Answer {
        status,
        attempt,
        retry_after,
        body,
    }
}

/// Polls the async `cond` every 50 ms until it holds or `within` passes.
pub async fn eventually_async<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
