//! Which route a path names: the gateway's own routes, a spawned call, or
//! a deployed function and what to do with it. Paths are matched raw and
//! undecoded, so an encoded name (`%2F`, `%2e`) never reaches a function
//! other than the one named. A class's methods are
//! `/{app}/{class}/{method}[...]`; `/map` is one more [`Action`].

use std::sync::Arc;

use super::context::RouteLabel;
use super::problem::ApiError;
use crate::backend::Backend;
use crate::backend::forward::Forwarder;
use crate::registry::{Class, Function, Lookup, Registry, Target};

/// What a request's path names, borrowed from the path and the registry
/// for as long as the request is handled.
pub enum Route<'a> {
    /// `/_/health`.
    Health,
    /// `/_/ready`.
    Ready,
    /// `/_/metrics`.
    Metrics,
    /// `/_/openapi.json`.
    OpenApi,
    /// `/_/docs`.
    Docs,
    /// `/calls/{id}`: `id` is whatever follows, checked by the route.
    Call { id: &'a str },
    /// `/{app}/{function}[...]`.
    Function {
        function: &'a Arc<Function>,
        action: Action<'a>,
    },
    /// `/_/work/{app}/{function}[...]`: a worker's request.
    Work {
        function: &'a Arc<Function>,
        route: WorkRoute<'a>,
    },
}

/// What a path asks of a function; the method and headers have their say
/// in the route family.
pub enum Action<'a> {
    /// `/{app}/{function}`: a sync call (or a spawn, with
    /// `Prefer: respond-async`).
    Invoke { backend: &'a Arc<dyn Backend> },
    /// `/{app}/{function}/spawn`.
    Spawn,
    /// `/{app}/{function}/map`: one call per input, results streamed back.
    Map { backend: &'a Arc<dyn Backend> },
    /// `/{app}/{function}/map/spawn`: one spawned call over every input.
    MapSpawn,
    /// Anything under a passthrough function, `suffix` included (it is
    /// never special there, `/spawn` neither).
    Forward {
        backend: &'a Forwarder,
        suffix: &'a str,
    },
    /// A path past a function that names nothing there: its 404, answered
    /// once the caller is admitted, as a call of the function would be.
    NotFound(ApiError),
}

/// Where a worker's request goes, after `/_/work/{app}/{function}`.
pub enum WorkRoute<'a> {
    /// `GET`: how to run the function's instances.
    Describe,
    /// `POST /next`: the next call.
    Next,
    /// `POST /calls/{id}/heartbeat`.
    Heartbeat(&'a str),
    /// `POST /calls/{id}/response`.
    Response(&'a str),
    /// `POST /calls/{id}/error`.
    Error(&'a str),
}

impl WorkRoute<'_> {
    /// The route of `rest`, the path after `/_/work/{app}/{function}`.
    pub fn parse(rest: &str) -> Option<WorkRoute<'_>> {
        if rest.is_empty() {
            return Some(WorkRoute::Describe);
        }
        if rest == "/next" {
            return Some(WorkRoute::Next);
        }
        let (id, end) = rest.strip_prefix("/calls/")?.split_once('/')?;
        match end {
            "heartbeat" => Some(WorkRoute::Heartbeat(id)),
            "response" => Some(WorkRoute::Response(id)),
            "error" => Some(WorkRoute::Error(id)),
            _ => None,
        }
    }

    pub fn method(&self) -> http::Method {
        match self {
            WorkRoute::Describe => http::Method::GET,
            _ => http::Method::POST,
        }
    }
}

/// A path resolved: its route, or why none, and the label the access log
/// shows either way.
pub struct Resolved<'a> {
    pub label: RouteLabel,
    pub route: Result<Route<'a>, ApiError>,
}

/// Resolves `path` (no query) against `registry`.
pub fn resolve<'a>(registry: &'a Registry, path: &'a str) -> Resolved<'a> {
    let fixed = |label, route| Resolved {
        label: RouteLabel::Fixed(label),
        route: Ok(route),
    };
    match path {
        "/_/health" => fixed("/_/health", Route::Health),
        "/_/ready" => fixed("/_/ready", Route::Ready),
        "/_/metrics" => fixed("/_/metrics", Route::Metrics),
        "/_/openapi.json" => fixed("/_/openapi.json", Route::OpenApi),
        "/_/docs" => fixed("/_/docs", Route::Docs),
        _ => match path.strip_prefix("/calls/") {
            Some(id) => fixed("/calls/{id}", Route::Call { id }),
            None => match path.strip_prefix("/_/work") {
                Some(rest) => work(registry, rest, path),
                None => function(registry, path),
            },
        },
    }
}

/// `/{app}/{function}[...]`, or the 404 that says which name is unknown.
fn function<'a>(registry: &'a Registry, path: &'a str) -> Resolved<'a> {
    let unmatched = |error| Resolved {
        label: RouteLabel::unmatched(path),
        route: Err(error),
    };
    let Some((app, name, suffix)) = split_path(path) else {
        let app = path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default();
        return unmatched(if registry.has_app(app) {
            ApiError::FunctionNotFound {
                app: app.to_owned(),
                function: String::new(),
            }
        } else {
            ApiError::AppNotFound {
                app: app.to_owned(),
            }
        });
    };
    match registry.lookup(app, name) {
        Lookup::Found(function) => Resolved {
            label: RouteLabel::Function(function.metrics.clone()),
            route: Ok(Route::Function {
                function,
                action: action(function, suffix),
            }),
        },
        Lookup::NoApp => unmatched(ApiError::AppNotFound {
            app: app.to_owned(),
        }),
        Lookup::NoFunction => match registry.class(app, name) {
            Some(class) => method(class, app, suffix, path),
            None => unmatched(ApiError::FunctionNotFound {
                app: app.to_owned(),
                function: name.to_owned(),
            }),
        },
    }
}

/// `/_/work/{app}/{function}[...]`: `rest` follows `/_/work`.
fn work<'a>(registry: &'a Registry, rest: &'a str, path: &'a str) -> Resolved<'a> {
    let unmatched = |error| Resolved {
        label: RouteLabel::unmatched(path),
        route: Err(error),
    };
    let Some((app, name, suffix)) = split_path(rest) else {
        return unmatched(ApiError::AppNotFound { app: String::new() });
    };
    let function = match registry.lookup(app, name) {
        Lookup::Found(function) => function,
        Lookup::NoApp => {
            return unmatched(ApiError::AppNotFound {
                app: app.to_owned(),
            });
        }
        Lookup::NoFunction => {
            return unmatched(ApiError::FunctionNotFound {
                app: app.to_owned(),
                function: name.to_owned(),
            });
        }
    };
    match WorkRoute::parse(suffix) {
        Some(route) => Resolved {
            label: RouteLabel::Fixed("/_/work/{app}/{function}"),
            route: Ok(Route::Work { function, route }),
        },
        None => unmatched(ApiError::FunctionNotFound {
            app: app.to_owned(),
            function: format!("{name}{suffix}"),
        }),
    }
}

/// `/{app}/{class}/{method}[...]`: `suffix` is what follows the class.
fn method<'a>(class: &'a Class, app: &str, suffix: &'a str, path: &'a str) -> Resolved<'a> {
    let rest = suffix.strip_prefix('/').unwrap_or_default();
    let (name, after) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    match class.method(name) {
        Some(function) => Resolved {
            label: RouteLabel::Function(function.metrics.clone()),
            route: Ok(Route::Function {
                function,
                action: action(function, after),
            }),
        },
        None => Resolved {
            label: RouteLabel::unmatched(path),
            route: Err(ApiError::FunctionNotFound {
                app: app.to_owned(),
                function: format!("{}/{name}", class.name),
            }),
        },
    }
}

/// What the path after `/{app}/{function}` asks of `function`.
fn action<'a>(function: &'a Function, suffix: &'a str) -> Action<'a> {
    match &function.target {
        Target::Passthrough(backend) => Action::Forward { backend, suffix },
        Target::Invoke(backend) => match suffix {
            "" => Action::Invoke { backend },
            "/spawn" => Action::Spawn,
            "/map" => Action::Map { backend },
            "/map/spawn" => Action::MapSpawn,
            _ => Action::NotFound(ApiError::FunctionNotFound {
                app: function.spec.app.clone(),
                function: format!("{}{suffix}", function.spec.route_name()),
            }),
        },
    }
}

/// Splits `/{app}/{function}{suffix}`; `suffix` is empty or starts with `/`.
fn split_path(path: &str) -> Option<(&str, &str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (app, rest) = rest.split_once('/')?;
    let (function, suffix) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    (!app.is_empty() && !function.is_empty()).then_some((app, function, suffix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_paths_parse() {
        assert!(matches!(WorkRoute::parse(""), Some(WorkRoute::Describe)));
        assert!(matches!(WorkRoute::parse("/next"), Some(WorkRoute::Next)));
        assert!(matches!(
            WorkRoute::parse("/calls/fc-1/heartbeat"),
            Some(WorkRoute::Heartbeat("fc-1"))
        ));
        assert!(matches!(
            WorkRoute::parse("/calls/fc-1/response"),
            Some(WorkRoute::Response("fc-1"))
        ));
        assert!(matches!(
            WorkRoute::parse("/calls/fc-1/error"),
            Some(WorkRoute::Error("fc-1"))
        ));
        for bad in [
            "/",
            "/nex",
            "/calls/fc-1",
            "/calls/fc-1/other",
            "/calls//x/y",
        ] {
            assert!(WorkRoute::parse(bad).is_none(), "{bad}");
        }
    }
    use crate::http::state;

    #[test]
    fn paths_split_into_app_function_and_suffix() {
        assert_eq!(split_path("/demo/square"), Some(("demo", "square", "")));
        assert_eq!(split_path("/demo/square/"), Some(("demo", "square", "/")));
        assert_eq!(split_path("/web/site/a/b"), Some(("web", "site", "/a/b")));
        assert_eq!(split_path("/demo"), None);
        assert_eq!(split_path("/demo/"), None);
        assert_eq!(split_path("//x"), None);
        assert_eq!(split_path("/"), None);
    }

    #[test]
    fn paths_resolve_to_their_routes() {
        let state = state::for_tests();
        let registry = state.registry.current();
        let route = |path| resolve(&registry, path).route;
        assert!(matches!(route("/_/health"), Ok(Route::Health)));
        assert!(matches!(route("/_/ready"), Ok(Route::Ready)));
        assert!(matches!(
            route("/calls/fc-1"),
            Ok(Route::Call { id: "fc-1" })
        ));
        let action = |path| match route(path) {
            Ok(Route::Function { function, action }) => {
                assert_eq!(&*function.name, "square");
                action
            }
            _ => panic!("{path} is not a function's route"),
        };
        assert!(matches!(action("/demo/square"), Action::Invoke { .. }));
        assert!(matches!(action("/demo/square/spawn"), Action::Spawn));
        assert!(matches!(action("/demo/square/map"), Action::Map { .. }));
        assert!(matches!(action("/demo/square/map/spawn"), Action::MapSpawn));
        assert!(matches!(
            action("/demo/square/spawn/x"),
            Action::NotFound(ApiError::FunctionNotFound { function, .. }) if function == "square/spawn/x"
        ));
        assert!(matches!(
            route("/nope/square"),
            Err(ApiError::AppNotFound { .. })
        ));
        assert!(matches!(
            route("/demo/sq"),
            Err(ApiError::FunctionNotFound { .. })
        ));
        assert!(matches!(
            route("/demo/"),
            Err(ApiError::FunctionNotFound { .. })
        ));
        assert!(matches!(
            route("/demo%2Fsquare/x"),
            Err(ApiError::AppNotFound { .. })
        ));
    }

    #[test]
    fn labels_name_the_function_never_the_suffix() {
        let state = state::for_tests();
        let registry = state.registry.current();
        let label = |path| resolve(&registry, path).label.to_string();
        assert_eq!(label("/demo/square/spawn"), "/demo/square");
        assert_eq!(label("/calls/fc-1"), "/calls/{id}");
        assert_eq!(label("/nope/square"), "-");
    }
}
