//! Configuration: reads `gateway.toml`, rejects anything unknown or
//! malformed with the file, the key path and what is wrong, and yields the
//! validated runtime types the rest of the gateway is built from.

mod admin;
mod apps;
mod classes;
mod commands;
mod functions;
mod log;
mod overlays;
mod policies;
mod pools;
mod raw;
mod security;
mod server;
mod units;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Method, Uri};

use apps::Apps;
use raw::{RawApp, RawClass, RawConfig, RawFunction, RawListen, RawServer, RawStore};

pub use admin::AdminConfig;
pub use log::{AccessSink, LogConfig, LogFormat};
pub use overlays::{OverlayKey, OverlayKind, Overlays};
pub use policies::{BatchSpec, CallTarget, RetryPolicy};
pub use security::{
    AllowedOrigins, ApiKeyConfig, AuthConfig, CorsConfig, JwtKeys, RateLimitConfig, WebhooksConfig,
    check_scope,
};
pub use units::{parse_duration, parse_size};

/// A configuration that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: PathBuf,
        key: String,
        message: String,
    },
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    /// The file's folder: relative paths in the file are relative to it.
    pub base_dir: PathBuf,
    /// The text it was read from: deploys are laid over it (`with_overlays`).
    pub text: std::sync::Arc<str>,
    pub server: ServerConfig,
    pub store: StoreConfig,
    /// Every function, class methods included (those name their class).
    pub functions: Vec<FunctionSpec>,
    /// Classes: warm instance pools whose methods are in `functions`.
    pub classes: Vec<ClassSpec>,
    pub webhooks: Option<WebhooksConfig>,
    pub auth: Option<AuthConfig>,
    pub cors: CorsConfig,
    pub rate_limit: Option<RateLimitConfig>,
    /// `[log]`: the access log's format and sink.
    pub log: LogConfig,
    /// `[admin]`: the admin listener; `None` serves no admin route.
    pub admin: Option<AdminConfig>,
    /// Sections that were checked but have no effect in this version; the
    /// gateway logs them at start-up.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// HTTPS addresses (at least one): every worker serves each of them.
    pub listen: Vec<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub tls: TlsSource,
    /// CA whose client certificates are required (mTLS).
    pub client_ca: Option<PathBuf>,
    pub max_body: u64,
    pub max_result: u64,
    pub sync_wait: Duration,
    pub handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub h2_max_streams: u32,
    /// Streams a client may open and reset before they are served, at once
    /// (rapid-reset protection).
    pub h2_max_pending_resets: u32,
    pub shutdown_grace: Duration,
    pub max_json_depth: usize,
    /// Threads serving connections, each with its own runtime and its own
    /// `SO_REUSEPORT` listener (default: one per CPU).
    pub workers: usize,
    /// TLS session tickets and the session cache: resumed handshakes.
    pub session_resumption: bool,
    /// The longest wait for the next bytes of a request body (408 past it).
    pub body_read_timeout: Duration,
    /// Bytes per second a request body must average once past its first
    /// `body_read_timeout` of waiting (0: no minimum rate).
    pub body_min_rate: u64,
    /// Result bytes one connection may hold unsent before its new requests
    /// are refused with 503.
    pub result_buffer_per_connection: u64,
    /// The same bound over every connection of the gateway.
    pub result_buffer_total: u64,
    /// Inputs one map call may have (more: 413).
    pub max_map_inputs: usize,
    /// How deep function-to-function calls may nest (deeper: 508).
    pub max_call_depth: u32,
    /// What serves HTTP/1.1 over TLS.
    pub http1_engine: Http1Engine,
}

/// What serves HTTP/1.1 connections over TLS (`server.http1_engine`,
/// fngate's own loop unless hyper is asked for). The
/// plain-HTTP listener, which tells HTTP/1.1 from h2c by its first bytes,
/// is always served by hyper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Http1Engine {
    /// hyper's HTTP/1 server.
    Hyper,
    /// fngate's own connection loop on `httparse`: no read or write buffer
    /// is held while a connection idles.
    Fngate,
}

/// Where the server certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// A PEM chain and key given in the config.
    Files { cert: PathBuf, key: PathBuf },
    /// Generated dev CA and leaf in this folder (`certs/` next to the config).
    Dev { dir: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Embedded,
    Redis,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub kind: StoreKind,
    pub path: PathBuf,
    pub url: Option<String>,
    /// Redis: every key the gateway writes starts with it.
    pub prefix: String,
    /// Redis: a running call whose replica stopped heartbeating it for
    /// this long is claimed by another replica.
    pub claim_timeout: Duration,
    pub result_ttl: Duration,
    pub max_pending: u64,
    pub max_wait: Duration,
}

/// One deployed function, as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    pub app: String,
    pub name: String,
    pub backend: BackendSpec,
    /// Methods a client may use; `None` for a passthrough function that
    /// forwards any method.
    pub methods: Option<Vec<Method>>,
    pub timeout: Duration,
    pub concurrency: usize,
    pub queue: usize,
    pub public: bool,
    pub input_schema: Option<serde_json::Value>,
    /// Overrides `[server] max_body` for this function (upload endpoints).
    pub max_body: Option<u64>,
    /// false: a failing function's message stays in the log; the client
    /// gets its error type and a generic message.
    pub expose_errors: bool,
    /// The class this function is a method of (`/{app}/{class}/{name}`);
    /// its backend is the class's, and it shares the class's instances.
    pub class: Option<String>,
    /// The function yields items (NDJSON or SSE to the client) instead of
    /// one result.
    pub stream: bool,
    /// What its calls' `FNGATE_CALL_TOKEN` may invoke (empty: nothing).
    pub may_call: Vec<CallTarget>,
    /// How a spawned call or map input that failed or timed out runs again.
    pub retries: Option<RetryPolicy>,
    /// Calls that arrive together go to the backend as one invocation.
    pub batch: Option<BatchSpec>,
}

/// A class (`[apps.APP.classes.NAME]`): one set of warm instances whose
/// methods are the functions that name it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassSpec {
    pub app: String,
    pub name: String,
    /// `Lambda` or `HttpInstances`: a class always has instances.
    pub backend: BackendSpec,
    /// Query keys whose values pick an instance set (never kwargs).
    pub parameters: Vec<String>,
    /// Most instance sets alive at once; the least recently used stops.
    pub max_parameter_sets: usize,
}

/// A pool of warm instances: the processes fngate starts, watches,
/// restarts and scales for one function or class.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSpec {
    pub command: Vec<String>,
    pub cwd: PathBuf,
    /// The configured `env`; fngate adds what the protocol needs.
    pub env: BTreeMap<String, String>,
    pub min_instances: usize,
    pub max_instances: usize,
    pub idle_timeout: Duration,
    pub init_timeout: Duration,
    pub exit_grace: Duration,
    /// Calls one instance takes at once (always 1 for `lambda`).
    pub instance_concurrency: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BackendSpec {
    Exec {
        command: Vec<String>,
        cwd: PathBuf,
        env: BTreeMap<String, String>,
    },
    Http {
        urls: Vec<Uri>,
        passthrough: bool,
        http2: bool,
    },
    /// `backend = "lambda"`: instances speak the Lambda Runtime API.
    Lambda { pool: PoolSpec },
    /// `backend = "http"` with `command`: each instance is an HTTP server
    /// started with `PORT`; calls go to `http://127.0.0.1:$PORT{path}`.
    HttpInstances {
        pool: PoolSpec,
        /// Starts with `/` (default `/`).
        path: String,
        /// Answers 2xx once the instance is ready; `None`: ready once it
        /// accepts connections.
        ready_path: Option<String>,
        passthrough: bool,
        http2: bool,
    },
}

impl BackendSpec {
    /// Requests are forwarded unchanged to an HTTP service or instance.
    pub fn is_passthrough(&self) -> bool {
        matches!(
            self,
            BackendSpec::Http {
                passthrough: true,
                ..
            } | BackendSpec::HttpInstances {
                passthrough: true,
                ..
            }
        )
    }
}

impl BackendSpec {
    /// True for the backends whose calls run on warm instances.
    pub fn has_instances(&self) -> bool {
        matches!(
            self,
            BackendSpec::Lambda { .. } | BackendSpec::HttpInstances { .. }
        )
    }
}

impl FunctionSpec {
    /// `function`, or `class/method` for a class's method: its name in paths.
    pub fn route_name(&self) -> String {
        match &self.class {
            Some(class) => format!("{class}/{}", self.name),
            None => self.name.clone(),
        }
    }

    pub fn is_passthrough(&self) -> bool {
        self.backend.is_passthrough()
    }

    /// The path clients call: `/{app}/{function}`, or
    /// `/{app}/{class}/{method}` for a class's method.
    pub fn route(&self) -> String {
        match &self.class {
            Some(class) => format!("/{}/{class}/{}", self.app, self.name),
            None => format!("/{}/{}", self.app, self.name),
        }
    }

    /// The `Allow` header value for this function.
    pub fn allow_header(&self) -> String {
        match &self.methods {
            Some(methods) => methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            None => "GET, HEAD, POST, PUT, PATCH, DELETE".to_owned(),
        }
    }

    pub fn allows(&self, method: &Method) -> bool {
        match &self.methods {
            Some(methods) => methods.contains(method),
            None => {
                method != Method::OPTIONS && method != Method::CONNECT && method != Method::TRACE
            }
        }
    }
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_CONCURRENCY: u32 = 16;

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        Config::from_toml(path, &text)
    }

    /// Validates `text` as if read from `path` (relative paths resolve
    /// against `path`'s folder).
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let base_dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        let base_dir = std::path::absolute(&base_dir).unwrap_or(base_dir);
        let file = path.to_owned();
        let raw = parse_raw(text).map_err(|(key, message)| ConfigError::Invalid {
            file: file.clone(),
            key,
            message,
        })?;
        let cx = Context {
            file: file.clone(),
            base_dir: base_dir.clone(),
        };
        let mut config = cx.convert(raw)?;
        config.text = text.into();
        Ok(config)
    }
}

fn parse_raw(text: &str) -> Result<RawConfig, (String, String)> {
    let de = toml::Deserializer::parse(text).map_err(|e| ("(file)".to_owned(), e.to_string()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." {
            "(top level)".to_owned()
        } else {
            key
        };
        // toml's message carries a source excerpt; the first meaningful
        // line after it is what is wrong.
        let message = e.inner().message().to_owned();
        (key, message)
    })
}

/// Carries what every conversion step needs to report and resolve.
struct Context {
    file: PathBuf,
    base_dir: PathBuf,
}

impl Context {
    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.clone(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn resolve(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.base_dir.join(path)
        }
    }

    fn duration(
        &self,
        key: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(text) => parse_duration(text).map_err(|m| self.invalid(key, m)),
        }
    }

    fn size(&self, key: &str, value: Option<&str>, default: u64) -> Result<u64, ConfigError> {
        match value {
            None => Ok(default),
            Some(text) => parse_size(text).map_err(|m| self.invalid(key, m)),
        }
    }

    fn convert(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let server = self.server(&raw.server)?;
        let store = self.store(raw.store.as_ref())?;
        let warnings = Vec::new();
        let auth = match &raw.auth {
            Some(auth) => Some(self.auth(auth)?),
            None => None,
        };
        let rate_limit = match &raw.rate_limit {
            Some(limit) => Some(self.rate_limit(limit)?),
            None => None,
        };
        let mut cors = CorsConfig {
            default: match &raw.cors {
                Some(cors) => Some(self.origins("cors.allow_origins", cors)?),
                None => None,
            },
            apps: BTreeMap::new(),
        };
        let webhooks = match &raw.webhooks {
            Some(webhooks) => Some(self.webhooks(webhooks)?),
            None => None,
        };
        let log = self.log(raw.log.as_ref())?;
        let admin = self.admin(raw.admin.as_ref())?;
        let mut apps = Apps::default();
        for (app, raw_app) in &raw.apps {
            self.app(app, raw_app, &mut apps, &mut cors, auth.is_some())?;
        }
        Ok(Config {
            file: self.file.clone(),
            base_dir: self.base_dir.clone(),
            text: "".into(),
            server,
            store,
            functions: apps.functions,
            classes: apps.classes,
            webhooks,
            auth,
            cors,
            rate_limit,
            log,
            admin,
            warnings,
        })
    }
}

/// App, function, class and method names: `[a-z0-9][a-z0-9_-]{0,62}`,
/// and not reserved.
pub fn check_name(name: &str) -> Result<(), String> {
    if name == "calls" || name.starts_with('_') {
        return Err(format!(
            "'{name}' is reserved: `calls` and names starting with `_` belong to fngate"
        ));
    }
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a valid name: use 1 to 63 of a-z, 0-9, '_' and '-', starting with a letter or digit"
        ))
    }
}

/// True when `name` matches `[a-z0-9][a-z0-9_-]{0,62}`.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

#[cfg(test)]
mod tests;
