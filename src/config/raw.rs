//! The configuration file exactly as written: plain serde structs that
//! reject unknown keys. Nothing here is validated beyond TOML types; the
//! conversion into runtime types lives in the parent module.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    pub store: Option<RawStore>,
    pub auth: Option<RawAuth>,
    pub rate_limit: Option<RawRateLimit>,
    pub cors: Option<RawCors>,
    pub webhooks: Option<RawWebhooks>,
    pub log: Option<super::log::RawLog>,
    pub admin: Option<super::admin::RawAdmin>,
    #[serde(default)]
    pub apps: BTreeMap<String, RawApp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<RawListen>,
    pub http_listen: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub client_ca: Option<String>,
    pub max_body: Option<String>,
    pub sync_wait: Option<String>,
    pub handshake_timeout: Option<String>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_header_bytes: Option<String>,
    pub max_connections: Option<u32>,
    pub h2_max_streams: Option<u32>,
    pub h2_max_pending_resets: Option<u32>,
    pub shutdown_grace: Option<String>,
    pub max_json_depth: Option<u32>,
    pub max_result: Option<String>,
    pub workers: Option<u32>,
    pub session_resumption: Option<bool>,
    pub body_read_timeout: Option<String>,
    pub body_min_rate: Option<String>,
    pub result_buffer_per_connection: Option<String>,
    pub result_buffer_total: Option<String>,
    pub max_map_inputs: Option<u32>,
    pub max_call_depth: Option<u32>,
    pub http1_engine: Option<String>,
}

/// `listen = "127.0.0.1:8443"` or `listen = ["127.0.0.1:8443", "[::1]:8443"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawListen {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub kind: Option<String>,
    pub path: Option<String>,
    pub url: Option<String>,
    pub prefix: Option<String>,
    pub claim_timeout: Option<String>,
    pub result_ttl: Option<String>,
    pub max_pending: Option<u64>,
    pub max_wait: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub jwt_secret_env: Option<String>,
    pub jwt_public_key: Option<String>,
    pub jwks_file: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Option<String>,
    #[serde(default)]
    pub api_keys: Vec<RawApiKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    pub name: String,
    pub sha256: String,
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub requests_per_second: f64,
    pub burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    #[serde(default)]
    pub allow_origins: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhooks {
    pub secret_env: Option<String>,
    pub secret_file: Option<String>,
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    pub max_attempts: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApp {
    #[serde(default)]
    pub functions: BTreeMap<String, RawFunction>,
    #[serde(default)]
    pub classes: BTreeMap<String, RawClass>,
    /// Overrides `[cors]` for this app.
    pub cors: Option<RawCors>,
}

/// A function table, and also a class's method table: a method takes only
/// the per-call keys, and the conversion names the others as the class's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFunction {
    pub backend: Option<String>,
    pub command: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
    pub urls: Option<Vec<String>>,
    pub passthrough: Option<bool>,
    pub http2: Option<bool>,
    pub methods: Option<Vec<String>>,
    pub timeout: Option<String>,
    pub concurrency: Option<u32>,
    pub queue: Option<u32>,
    pub public: Option<bool>,
    pub input_schema: Option<toml::Value>,
    pub max_body: Option<String>,
    pub expose_errors: Option<bool>,
    pub path: Option<String>,
    pub ready_path: Option<String>,
    pub instance_concurrency: Option<u32>,
    pub min_instances: Option<u32>,
    pub max_instances: Option<u32>,
    pub idle_timeout: Option<String>,
    pub init_timeout: Option<String>,
    pub exit_grace: Option<String>,
    pub stream: Option<bool>,
    pub may_call: Option<Vec<String>>,
    pub retries: Option<RawRetries>,
    pub batch: Option<RawBatch>,
}

/// `retries = 3`, or the table with its backoff.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawRetries {
    Count(i64),
    Policy(RawRetryPolicy),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetryPolicy {
    pub max_retries: i64,
    pub backoff_coefficient: Option<f64>,
    pub initial_delay: Option<String>,
    pub max_delay: Option<String>,
}

/// `batch = { max_size = 32, wait = "10ms" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBatch {
    pub max_size: i64,
    pub wait: String,
}

impl RawFunction {
    /// The keys only warm instances take, each with whether it is written.
    pub fn instance_keys(&self) -> [(&'static str, bool); 8] {
        [
            ("path", self.path.is_some()),
            ("ready_path", self.ready_path.is_some()),
            ("instance_concurrency", self.instance_concurrency.is_some()),
            ("min_instances", self.min_instances.is_some()),
            ("max_instances", self.max_instances.is_some()),
            ("idle_timeout", self.idle_timeout.is_some()),
            ("init_timeout", self.init_timeout.is_some()),
            ("exit_grace", self.exit_grace.is_some()),
        ]
    }

    /// Every key that says how calls run rather than how one call is
    /// admitted: what a class's method tables may not set.
    pub fn backend_keys(&self) -> impl Iterator<Item = (&'static str, bool)> {
        [
            ("backend", self.backend.is_some()),
            ("command", self.command.is_some()),
            ("env", self.env.is_some()),
            ("urls", self.urls.is_some()),
            ("passthrough", self.passthrough.is_some()),
            ("http2", self.http2.is_some()),
        ]
        .into_iter()
        .chain(self.instance_keys())
    }
}

/// `[apps.APP.classes.NAME]`: the backend and pool keys of a function
/// table, the class's own keys, and its methods.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClass {
    pub backend: Option<String>,
    pub command: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
    pub path: Option<String>,
    pub ready_path: Option<String>,
    pub passthrough: Option<bool>,
    pub http2: Option<bool>,
    pub instance_concurrency: Option<u32>,
    pub min_instances: Option<u32>,
    pub max_instances: Option<u32>,
    pub idle_timeout: Option<String>,
    pub init_timeout: Option<String>,
    pub exit_grace: Option<String>,
    pub concurrency: Option<u32>,
    pub parameters: Option<Vec<String>>,
    pub max_parameter_sets: Option<u32>,
    #[serde(default)]
    pub functions: BTreeMap<String, RawFunction>,
}

impl RawClass {
    /// The class's backend keys as a function table holds them, so that
    /// one conversion reads both.
    pub fn backend_table(&self) -> RawFunction {
        RawFunction {
            backend: self.backend.clone(),
            command: self.command.clone(),
            env: self.env.clone(),
            path: self.path.clone(),
            ready_path: self.ready_path.clone(),
            passthrough: self.passthrough,
            http2: self.http2,
            instance_concurrency: self.instance_concurrency,
            min_instances: self.min_instances,
            max_instances: self.max_instances,
            idle_timeout: self.idle_timeout.clone(),
            init_timeout: self.init_timeout.clone(),
            exit_grace: self.exit_grace.clone(),
            concurrency: self.concurrency,
            ..RawFunction::default()
        }
    }
}
