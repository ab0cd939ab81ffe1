//! fngate: an HTTPS gateway that gives deployed functions stable web URLs.
//!
//! `Gateway::bind` builds every part in order (config -> TLS -> backends ->
//! registry -> router -> listeners); `Gateway::run` serves until the
//! shutdown token fires, then drains.
// No unsafe code, but for one audited function in `processes` (the
// parent-death signal set between fork and exec), which allows it itself.
#![deny(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod backend;
pub mod calls;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod http;
pub mod instances;
pub mod invocation;
pub mod listener;
pub mod metrics;
pub mod openapi;
pub mod processes;
pub mod rate_limit;
pub mod registry;
pub mod reload;
pub mod store;
pub mod tls;
pub mod translate;
pub mod webhooks;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::backend::http::HttpClients;
use crate::calls::{Calls, CallsConfig};
use crate::config::{Config, StoreKind};
use crate::http::AppState;
use crate::listener::ConnectionLimits;
use crate::registry::{LiveRegistry, Lookup, Registry};
use crate::reload::{Reloader, Surroundings};
use crate::store::CallStore;
use crate::store::embedded::EmbeddedStore;
use crate::webhooks::{WebhookSettings, Webhooks};

/// Why the gateway could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("[auth]: {0}")]
    Auth(String),
    /// The deploys stored by the admin API no longer fit the file.
    #[error("the stored deploys over the configuration file: {0}")]
    Deploys(config::ConfigError),
    /// (The I/O error is part of the message, not a source: printed once.)
    #[error("log.access: cannot open the access log: {0}")]
    AccessLog(std::io::Error),
    /// (The I/O error is part of the message, not a source: printed once.)
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    /// The call store failed for good while serving; the gateway drained
    /// and stopped. (Every other variant stops the start.)
    #[error("the call store failed: {0}")]
    StoreFailed(String),
}

/// How long a gateway whose store failed for good keeps answering (sync
/// calls, and `/_/ready` with 503 so load balancers move away) before it
/// drains and exits.
const STORE_FAULT_NOTICE: std::time::Duration = std::time::Duration::from_secs(2);

/// A gateway with its listeners bound, ready to run.
pub struct Gateway {
    /// Per worker, its handles on the HTTPS listeners (one per `listen`
    /// address; the workers share each socket's accept queue).
    https: Vec<Vec<std::net::TcpListener>>,
    /// The plain-HTTP listeners, one per worker, when configured.
    http: Vec<std::net::TcpListener>,
    tls: Arc<tls::LiveTls>,
    /// Reloads and deploys, and what starts a reload.
    reloader: Arc<Reloader>,
    triggers: reload::Triggers,
    state: Arc<AppState>,
    limits: Arc<ConnectionLimits>,
    grace: std::time::Duration,
    /// The admin listener and its token, with `[admin]`.
    admin: Option<(std::net::TcpListener, String)>,
}

/// How long spawned calls running at shutdown get to finish.
fn spawned_grace(config: &Config) -> std::time::Duration {
    config.server.shutdown_grace
}

impl Gateway {
    /// Builds every part from `config` and binds the listeners.
    pub async fn bind(file: Config) -> Result<Gateway, ServeError> {
        // 0. The access log's writer (off the request path).
        metrics::access_log::install(&file.log).map_err(ServeError::AccessLog)?;
        // 1. TLS: configured files, or the dev CA and certificate.
        let (tls, dev_ca) = tls::server_config(
            &file.server.tls,
            file.server.client_ca.as_deref(),
            file.server.session_resumption,
        )?;
        if let Some(ca) = &dev_ca {
            tracing::info!(
                "using the dev certificate; its CA is {} (curl --cacert {} ...)",
                ca.display(),
                ca.display()
            );
        }
        // 2. The call store.
        let store: Arc<dyn CallStore> = match file.store.kind {
            StoreKind::Embedded => Arc::new(EmbeddedStore::open(&file.store.path)?),
            StoreKind::Redis => {
                store::redis::RedisStore::open(&store::redis::RedisSettings {
                    url: file.store.url.clone().unwrap_or_default(),
                    prefix: file.store.prefix.clone(),
                    claim_timeout: file.store.claim_timeout,
                })
                .await?
            }
        };
        // Replicas sharing the store sign call tokens with one key.
        let token_secret = store.shared_secret().await?;
        // What the admin API deployed is laid over the file.
        let overlays = admin::stored_overlays(&*store).await?;
        let mut config = file.with_overlays(&overlays).map_err(ServeError::Deploys)?;
        // 3. Listeners, one per worker, bound before the functions are
        // built: they are told the gateway's own URL (`FNGATE_URL`).
        let workers = config.server.workers;
        let mut https: Vec<Vec<std::net::TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
        for addr in &config.server.listen {
            for (worker, listener) in https.iter_mut().zip(bind(*addr, workers)?) {
                worker.push(listener);
            }
        }
        let http = match config.server.http_listen {
            Some(addr) => bind(addr, workers)?,
            None => Vec::new(),
        };
        // The admin listener, bound here so a taken port fails the start.
        let admin = match &config.admin {
            Some(admin) => Some((bind(admin.listen, 1)?.remove(0), admin.token.clone())),
            None => None,
        };
        let own_url = gateway_url(&https);
        // 4. Backends and the registry of functions.
        let mut clients = HttpClients::new();
        clients.set_gateway_url(&own_url);
        let surroundings = Surroundings {
            clients: clients.clone(),
            url: own_url,
            dev_ca: dev_ca.clone(),
        };
        surroundings.give_functions_the_gateway(&mut config);
        let registry = LiveRegistry::new(Registry::from_config(&config, &clients));
        for function in registry.current().functions() {
            tracing::debug!(app = %function.app, function = %function.name, backend = %function.describe(), "function deployed");
        }
        // 5. Spawned calls and their webhooks.
        let mut calls = Calls::new(
            store.clone(),
            registry.clone(),
            CallsConfig {
                result_ttl: config.store.result_ttl,
                max_pending: config.store.max_pending,
                max_wait: config.store.max_wait,
            },
        );
        if let Some(secret) = &token_secret {
            calls = calls.with_token_secret(secret);
        }
        let calls = Arc::new(calls);
        let webhooks = config.webhooks.as_ref().map(|w| {
            let settings = WebhookSettings {
                secret: w.secret.clone(),
                allow_hosts: w.allow_hosts.clone(),
                max_attempts: w.max_attempts,
            };
            let deployed = registry.clone();
            let exposes_errors = Arc::new(move |app: &str, function: &str| {
                // A function no longer deployed withholds, as GET /calls does.
                matches!(deployed.current().lookup_key(app, function), Lookup::Found(f) if f.spec.expose_errors)
            });
            Arc::new(Webhooks::new(
                settings,
                clients.client(),
                store.clone(),
                exposes_errors,
            ))
        });
        // 6. Credentials, then the router state.
        let auth = match &config.auth {
            Some(auth) => Some(Authenticator::new(auth).map_err(ServeError::Auth)?),
            None => None,
        };
        let state = Arc::new(AppState::new(
            registry.clone(),
            calls,
            webhooks,
            auth,
            &config,
        ));
        let tls = tls::LiveTls::new(tls);
        let triggers = reload::Triggers::install(&config);
        let reloader = Arc::new(Reloader::new(
            registry,
            tls.clone(),
            surroundings,
            file,
            overlays,
            config.clone(),
        ));
        Ok(Gateway {
            https,
            http,
            tls,
            reloader,
            triggers,
            state,
            limits: Arc::new(ConnectionLimits::from_config(&config.server)),
            grace: spawned_grace(&config),
            admin,
        })
    }

    /// The first bound HTTPS address (useful with port 0).
    pub fn https_addr(&self) -> SocketAddr {
        self.https_addrs()[0]
    }

    /// Every bound HTTPS address, in the order of `listen`.
    pub fn https_addrs(&self) -> Vec<SocketAddr> {
        self.https[0]
            .iter()
            .map(|l| l.local_addr().expect("a bound listener has an address"))
            .collect()
    }

    /// The bound admin address, with `[admin]`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The bound plain-HTTP address, when configured.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.first().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` is cancelled, then drains in-flight requests
    /// within the grace period. A call store that fails for good drains it
    /// too, and is the error.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ServeError> {
        let router = http::router(self.state.clone());
        // Warm instances start now, on this runtime, which outlives them.
        let instances = self.state.registry.current().instances.clone();
        instances.start();
        let mut tasks = JoinSet::new();
        // Worker 0 serves on this runtime; each other worker on a thread
        // with a single-threaded runtime of its own, as nginx runs one
        // process per core: a connection stays on one thread, no work is
        // stolen, and no task is woken across cores.
        let https_addrs = self.https_addrs();
        let http_addr = self.http_addr();
        let mut http_listeners = self.http.into_iter();
        if let Some((listener, token)) = self.admin {
            let addr = listener.local_addr().ok();
            let ctx = admin::AdminContext::new(self.state.clone(), self.reloader.clone());
            let router = admin::router(ctx, token);
            tasks.spawn(admin::serve(
                listener,
                self.tls.clone(),
                router,
                shutdown.clone(),
                self.grace,
            ));
            if let Some(addr) = addr {
                tracing::info!("admin API on https://{addr}");
            }
        }
        for (index, https) in self.https.into_iter().enumerate() {
            let work = listener::worker(
                https,
                http_listeners.next(),
                self.tls.clone(),
                router.clone(),
                self.limits.clone(),
                shutdown.clone(),
            );
            if index == 0 {
                tasks.spawn_local(work);
                continue;
            }
            let ended = spawn_worker(index, work, self.state.calls.clone(), self.grace);
            // A worker that ends (or panics, or never started) stops the rest.
            tasks.spawn(async move {
                let _ = ended.await;
            });
        }
        for addr in https_addrs {
            tracing::info!("listening on https://{addr}");
        }
        if let Some(addr) = http_addr {
            tracing::info!("listening on http://{addr}");
        }
        let failure = Arc::new(std::sync::OnceLock::<String>::new());
        let calls = self.state.calls.clone();
        let stop = shutdown.clone();
        let grace = self.grace;
        let failed = failure.clone();
        tasks.spawn(async move {
            if let Err(e) = calls.run(stop, grace).await {
                tracing::error!(error = %e, "spawned calls cannot run");
                let _ = failed.set(e.to_string());
            }
        });
        tasks.spawn(watch_store(
            self.state.clone(),
            failure.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(reload::reload_on_changes(
            self.reloader.clone(),
            self.triggers,
            shutdown.clone(),
        ));
        tasks.spawn(admin::follow_stored_deploys(
            self.reloader.clone(),
            self.state.calls.store().clone(),
            shutdown.clone(),
        ));
        if let Some(webhooks) = self.state.webhooks.clone() {
            tasks.spawn(webhooks.run(self.state.calls.ended.clone(), shutdown.clone()));
        }
        let state = self.state.clone();
        let draining = shutdown.clone();
        tasks.spawn(async move {
            draining.cancelled().await;
            state.start_draining();
            tracing::info!("shutting down: no new connections, draining in-flight requests");
        });
        // The first task to end stops the rest.
        while let Some(ended) = tasks.join_next().await {
            if let Err(e) = ended {
                tracing::error!(error = %e, "a gateway task failed");
            }
            shutdown.cancel();
        }
        // Every call that could use an instance has ended or was given its
        // grace: the instances stop (SIGTERM, then SIGKILL) and are reaped.
        instances.shutdown().await;
        tracing::info!("stopped");
        match failure.get() {
            Some(why) => Err(ServeError::StoreFailed(why.clone())),
            None => Ok(()),
        }
    }
}

/// Waits for the call store to fail for good; then (`/_/ready` answers
/// 503 from that moment) gives load balancers `STORE_FAULT_NOTICE` and
/// ends, which drains the gateway.
async fn watch_store(
    state: Arc<AppState>,
    failure: Arc<std::sync::OnceLock<String>>,
    shutdown: CancellationToken,
) {
    let health = state.calls.store().health();
    let fault = tokio::select! {
        fault = health.failed() => fault,
        () = shutdown.cancelled() => return,
    };
    tracing::error!(
        "call store {fault}: /_/ready answers 503; draining in {STORE_FAULT_NOTICE:?}, then exiting with an error. \
         Restore the file from a backup, or move it away to start with an empty store, then restart"
    );
    let _ = failure.set(fault.to_string());
    tokio::select! {
        () = tokio::time::sleep(STORE_FAULT_NOTICE) => {}
        () = shutdown.cancelled() => {}
    }
}

/// Runs `work` (worker `index`'s listeners) on a thread with a
/// single-threaded runtime of its own. The runtime outlives the listeners
/// until the sync calls adopted on it have ended (up to `grace`). The
/// receiver resolves when the thread is done, or failed to start.
fn spawn_worker(
    index: usize,
    work: impl std::future::Future<Output = ()> + Send + 'static,
    calls: Arc<Calls>,
    grace: std::time::Duration,
) -> tokio::sync::oneshot::Receiver<()> {
    let (done, ended) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("fngate-worker-{index}"))
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(tokio::task::LocalSet::new().run_until(async {
                    work.await;
                    calls.settled(grace).await;
                })),
                Err(e) => tracing::error!(error = %e, "cannot start a worker runtime"),
            }
            let _ = done.send(());
        });
    if let Err(e) = thread {
        tracing::error!(error = %e, "cannot start a worker thread");
    }
    ended
}

/// The gateway's own HTTPS base URL, as functions call it: its first
/// listen address (the bound port when the config says 0), loopback for
/// an unspecified address.
fn gateway_url(https: &[Vec<std::net::TcpListener>]) -> String {
    let addr = https
        .first()
        .and_then(|listeners| listeners.first())
        .and_then(|listener| listener.local_addr().ok());
    match addr {
        Some(SocketAddr::V4(v4)) if v4.ip().is_unspecified() => {
            format!("https://127.0.0.1:{}", v4.port())
        }
        Some(SocketAddr::V6(v6)) if v6.ip().is_unspecified() => {
            format!("https://[::1]:{}", v6.port())
        }
        Some(addr) => format!("https://{addr}"),
        None => "https://127.0.0.1:8443".to_owned(),
    }
}

fn bind(addr: SocketAddr, count: usize) -> Result<Vec<std::net::TcpListener>, ServeError> {
    listener::bind(addr, count).map_err(|error| ServeError::Bind { addr, error })
}

/// Runs the gateway described by `config` until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), ServeError> {
    Gateway::bind(config).await?.run(shutdown).await
}
