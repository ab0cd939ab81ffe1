//! What the admin and deploy suites share: a gateway with `[admin]` on a
//! free loopback port, and a client for its admin API that trusts only
//! the dev CA.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::common::{Gateway, GatewayBuilder, START_TIMEOUT, addr_after, client_builder_with_ca};

/// The admin token every test gateway is started with.
pub const TOKEN: &str = "admin-token-for-tests-7d1f";

/// The variable it is read from.
pub const TOKEN_ENV: &str = "FNGATE_ADMIN_TOKEN";

/// `[admin]` on a free port, its token from `TOKEN_ENV`.
pub const ADMIN_TOML: &str =
    "\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"FNGATE_ADMIN_TOKEN\"\n";

/// An exec function's script that prints its first argument as its result
/// (each version is told a different one), after sleeping `kwargs.seconds`
/// and, with `kwargs.marker`, creating that file once it runs.
pub const VERSION_PY: &str = r#"
import json, sys, time
req = json.loads(sys.stdin.read())
kw = req.get("kwargs") or {}
if kw.get("marker"):
    open(kw["marker"], "w").close()
time.sleep(float(kw.get("seconds", 0)))
sys.stdout.write(json.dumps({"version": sys.argv[1]}))
"#;

/// The table of an exec function running `version.py VERSION`.
pub fn version_table(version: &str) -> Value {
    serde_json::json!({
        "backend": "exec",
        "command": ["python3", "version.py", version],
        "timeout": "30s",
        "concurrency": 32,
        "queue": 64,
    })
}

/// A builder with `[admin]`, its token in the environment and `version.py`.
pub fn builder() -> GatewayBuilder {
    Gateway::builder()
        .toml(ADMIN_TOML)
        .env(TOKEN_ENV, TOKEN)
        .file("version.py", VERSION_PY)
}

/// The admin API of a running gateway.
pub struct Admin {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
}

impl Admin {
    /// Finds the admin listener's address in `gw`'s log.
    pub async fn of(gw: &Gateway) -> Admin {
        assert!(
            gw.logs
                .wait_for("admin API on https://", START_TIMEOUT)
                .await,
            "no admin listener in the log:\n{}",
            gw.logs.joined()
        );
        let addr = gw
            .logs
            .snapshot()
            .iter()
            .find_map(|line| addr_after(line, "admin API on https://"))
            .expect("the admin line has an address");
        let client = client_builder_with_ca(&gw.ca_pem())
            .resolve("localhost", addr)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("build admin client");
        Admin { addr, client }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    /// Sends `method path` with the token (and `body` as JSON when given):
    /// the status and the JSON answer.
    pub async fn send(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut request = self
            .client
            .request(method.clone(), self.url(path))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e:?}"));
        let status = response.status().as_u16();
        let text = response.text().await.expect("read the admin answer");
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send("GET", path, None).await
    }

    /// `PUT /admin/apps/{app}/functions/{name}`: must succeed; its answer.
    pub async fn deploy(&self, app: &str, name: &str, table: &Value) -> Value {
        let path = format!("/admin/apps/{app}/functions/{name}");
        let (status, body) = self.send("PUT", &path, Some(table)).await;
        assert!(
            status == 200 || status == 201,
            "PUT {path}: {status} {body}"
        );
        body
    }

    /// The entry of `GET /admin/functions` for `app/name`.
    pub async fn listed(&self, app: &str, name: &str) -> Option<Value> {
        let (status, body) = self.get("/admin/functions").await;
        assert_eq!(status, 200, "{body}");
        body["functions"]
            .as_array()
            .expect("functions is an array")
            .iter()
            .find(|f| f["app"] == app && f["name"] == name)
            .cloned()
    }
}
