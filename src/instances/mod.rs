//! Warm instances: long-lived function processes that fngate starts,
//! watches, restarts and scales itself, so that set-up runs once per
//! instance and not once per call. A [`Pool`] is one set of instances of a
//! function (or of a class's parameter set); [`Instances`] owns every pool
//! of the gateway, runs their tasks and stops them at shutdown.
//!
//! Instances speak one of two protocols ([`Protocol`]): the Lambda Runtime
//! API, served by fngate on a loopback port of each instance's own
//! ([`runtime_api`]), or HTTP to a server the instance runs on `PORT`.
//! The backends (`backend::lambda`, `backend::instance_http`) lease an
//! instance from a pool per call; nothing here knows about invocations
//! beyond handing a Lambda instance its event.

mod instance;
mod pool;
pub mod remote;
pub mod runtime_api;
mod sets;

use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::BackendError;
use crate::backend::http::HttpClients;

pub use instance::Endpoint;
pub(crate) use instance::probe_until_ready;
pub use pool::{InstanceRef, Lease, Pool};
pub use sets::ParameterSets;

/// An instance's set-up failed and it said why (a Lambda `init/error`).
pub(crate) fn init_failure(kind: String, message: String) -> BackendError {
    BackendError::InitFailed { kind, message }
}

/// How fngate speaks to a pool's instances.
#[derive(Clone)]
pub enum Protocol {
    /// The Lambda Runtime API: the instance pulls one call at a time.
    Lambda(LambdaIdentity),
    /// An HTTP server the instance runs on `127.0.0.1:$PORT`.
    Http(Box<HttpInstance>),
}

/// What a Lambda runtime client is told about the function it runs.
#[derive(Clone)]
pub struct LambdaIdentity {
    /// `AWS_LAMBDA_FUNCTION_NAME`: `app.function` (`app.class` for a class).
    pub function_name: String,
    /// Largest result an instance may post.
    pub max_result: u64,
}

/// How calls reach an HTTP instance.
#[derive(Clone)]
pub struct HttpInstance {
    /// The path calls go to (`path`, default `/`).
    pub path: String,
    /// Answers 2xx once the instance is ready (`None`: ready once it
    /// accepts connections).
    pub ready_path: Option<String>,
    pub http2: bool,
    pub clients: HttpClients,
    pub max_result: u64,
}

/// Every instance pool of the gateway. Pools are made while the registry
/// is built (no runtime needed); [`Instances::start`] runs their tasks on
/// the runtime it is called from, and [`Instances::shutdown`] stops every
/// instance and waits until each is reaped.
pub struct Instances {
    handle: OnceLock<Handle>,
    tasks: TaskTracker,
    stopping: CancellationToken,
    pools: Mutex<Vec<Weak<Pool>>>,
}

impl Instances {
    pub fn new() -> Arc<Instances> {
        Arc::new(Instances {
            handle: OnceLock::new(),
            tasks: TaskTracker::new(),
            stopping: CancellationToken::new(),
            pools: Mutex::new(Vec::new()),
        })
    }

    /// Runs the pools' tasks on the current runtime from now on: the
    /// instances each pool keeps warm (`min_instances`) start.
    pub fn start(&self) {
        let _ = self.handle.set(Handle::current());
        for pool in self.live_pools() {
            pool.maintain();
        }
    }

    /// Stops every instance (SIGTERM, then SIGKILL after its
    /// `exit_grace`) and waits until all are reaped. Calls waiting for an
    /// instance are answered with an error.
    pub async fn shutdown(&self) {
        self.stopping.cancel();
        for pool in self.live_pools() {
            pool.close();
        }
        self.tasks.close();
        self.tasks.wait().await;
    }

    fn live_pools(&self) -> Vec<Arc<Pool>> {
        let mut pools = self.pools.lock().expect("no code panics holding this lock");
        pools.retain(|pool| pool.strong_count() > 0);
        pools.iter().filter_map(Weak::upgrade).collect()
    }

    fn register(&self, pool: &Arc<Pool>) {
        let mut pools = self.pools.lock().expect("no code panics holding this lock");
        pools.push(Arc::downgrade(pool));
    }

    fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// Runs a pool's task: on the gateway's runtime once started (the
    /// worker runtimes end before the instances are stopped).
    fn spawn<F>(&self, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        match self.handle.get() {
            Some(handle) => {
                self.tasks.spawn_on(work, handle);
            }
            None => {
                self.tasks.spawn(work);
            }
        }
    }
}
