//! The HTTP face of the gateway: the request context and CORS around
//! each request, then its phases (`route`), the route families
//! (`routes`) and the helpers they share. Below this module nothing knows
//! about HTTP framing (passthrough forwarding aside).

mod admission;
mod base_url;
pub mod context;
mod cors;
mod input;
pub(crate) mod page;
pub mod problem;
mod resolve;
mod respond;
mod route;
mod routes;
mod spawning;
mod state;

pub use admission::{ClientCertificate, PeerAddr, PlainListener};
pub use input::BodyStalled;
pub use state::AppState;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use http::Response;
use tower_http::cors::Cors;

/// The gateway's request handling: the request context (id, trace, panic
/// guard, access log) around CORS (when configured) around the request's
/// phases. Paths are resolved by the gateway itself, raw and undecoded, so
/// an encoded name (`%2F`, `%2e`) never reaches a function other than the
/// one named. Listeners call [`App::serve`] directly: no router, boxed
/// service or boxed future stands between a request and its phases.
#[derive(Clone)]
pub struct App {
    state: Arc<AppState>,
    cors: Option<Cors<Phases>>,
}

/// The request's phases as a tower service, for the CORS layer to wrap.
/// (The boxed future is paid only with CORS on.)
#[derive(Clone)]
pub struct Phases(Arc<AppState>);

type BoxedResponse = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl tower::Service<Request> for Phases {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxedResponse;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move { Ok(route::handle(&state, request).await) })
    }
}

impl App {
    /// Answers one request.
    pub async fn serve(&self, request: Request) -> Response<Body> {
        context::request_context(request, |request| async move {
            match &self.cors {
                None => route::handle(&self.state, request).await,
                Some(cors) => {
                    use tower::Service;
                    match cors.clone().call(request).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    }
                }
            }
        })
        .await
    }
}

/// The gateway's request handling over `state`.
pub fn router(state: Arc<AppState>) -> App {
    let cors = cors::layer(&state.cors).map(|layer| {
        use tower::Layer;
        layer.layer(Phases(state.clone()))
    });
    App { state, cors }
}
