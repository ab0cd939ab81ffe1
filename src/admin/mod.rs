//! The admin API: deploys without a restart, their versions and
//! rollbacks, and the console, on a listener of its own (loopback, the
//! gateway's certificate, a Bearer token on every route that reads or
//! changes anything). Without `[admin]` none of it exists.

pub mod console;
mod deploys;
mod listener;
mod problem;
mod routes;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use http::{Response, header};

use crate::config::Overlays;
use crate::store::{CallStore, StoreError, StoreEvent};

pub use listener::serve;
pub use problem::AdminError;

/// What every admin route is given: the gateway's state (registry, calls,
/// store, metrics) and the reloader that deploys go through.
pub struct AdminContext {
    pub state: Arc<crate::http::AppState>,
    pub reloader: Arc<crate::reload::Reloader>,
    /// Held through a whole deploy (swap and store write): deploys happen
    /// one at a time, so each version follows the one before.
    pub deploying: tokio::sync::Mutex<()>,
}

impl AdminContext {
    pub fn new(
        state: Arc<crate::http::AppState>,
        reloader: Arc<crate::reload::Reloader>,
    ) -> Arc<AdminContext> {
        Arc::new(AdminContext {
            state,
            reloader,
            deploying: tokio::sync::Mutex::new(()),
        })
    }
}

/// The deploys stored by the admin API, to lay over the file at start-up:
/// the latest version of each (a delete removes the file's table; a
/// return to the file lays nothing over it).
pub async fn stored_overlays(store: &dyn CallStore) -> Result<Overlays, StoreError> {
    let mut overlays = Overlays::default();
    for version in store.latest_deploys().await? {
        if let Some(overlay) = version.table.overlay() {
            overlays.0.insert(version.key, overlay);
        }
    }
    Ok(overlays)
}

/// With a store that several replicas share: serves the deploys the others
/// stored, as each is announced (and all of them again after the store's
/// events were interrupted), until `shutdown` (it never ends before). A replica's own deploys come
/// back here too and change nothing.
pub async fn follow_stored_deploys(
    reloader: Arc<crate::reload::Reloader>,
    store: Arc<dyn CallStore>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    // A task of the gateway's: ending early would stop the gateway.
    let Some(mut events) = store.events() else {
        return shutdown.cancelled().await;
    };
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = shutdown.cancelled() => return,
        };
        match event {
            Ok(StoreEvent::Deployed | StoreEvent::Resync) | Err(RecvError::Lagged(_)) => {}
            Ok(_) => continue,
            Err(RecvError::Closed) => return shutdown.cancelled().await,
        }
        loop {
            match stored_overlays(&*store).await {
                Ok(stored) => {
                    if stored != reloader.overlays().await {
                        match reloader.apply(stored).await {
                            Ok(changes) => {
                                tracing::info!(added = ?changes.added, changed = ?changes.changed, removed = ?changes.removed, "serving the deploys another replica stored")
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "the deploys another replica stored do not apply here")
                            }
                        }
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the stored deploys; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        () = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }
}

/// Every admin route, each behind the check of `token` but the console's
/// page, which holds no data (it asks for the token itself).
pub fn router(ctx: Arc<AdminContext>, token: String) -> Router {
    let token: Arc<[u8]> = Arc::from(token.into_bytes());
    let guarded = routes::router(ctx.clone())
        .merge(console::router(ctx))
        .fallback(|request: Request| async move {
            AdminError::NoRoute(request.uri().path().to_owned()).into_response()
        })
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                let token = token.clone();
                async move { bearer_check(&token, request, next).await }
            },
        ));
    console::page_router()
        .merge(guarded)
        .layer(axum::middleware::from_fn(identified))
}

/// Gives each request an id (`X-Request-Id`, the client's when sane), in
/// its `Trace` and in every problem it is answered with.
async fn identified(mut request: Request, next: Next) -> Response<Body> {
    let given = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        });
    let id: Arc<str> = match given {
        Some(id) => Arc::from(id),
        None => Arc::from(crate::invocation::random_hex::<16>()),
    };
    request.extensions_mut().insert(crate::invocation::Trace {
        request_id: id.clone(),
        traceparent: String::new(),
    });
    let mut response = problem::REQUEST_ID
        .scope(id.clone(), next.run(request))
        .await;
    if let Ok(value) = http::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Lets a request through only with `Authorization: Bearer <token>`,
/// compared in constant time (digests of equal length, so neither the
/// token's content nor its length shows in the timing).
async fn bearer_check(token: &[u8], request: Request, next: Next) -> Response<Body> {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, credential) = value.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| credential.trim())
        });
    let Some(given) = given else {
        return problem::unauthorized(None);
    };
    let digest = |bytes: &[u8]| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let (want, got) = (digest(token), digest(given.as_bytes()));
    if aws_lc_rs::constant_time::verify_slices_are_equal(want.as_ref(), got.as_ref()).is_err() {
        return problem::unauthorized(Some("the admin token is not right"));
    }
    next.run(request).await
}
