//! The registry: every deployed function by app and name, with its backend,
//! compiled input schema and concurrency limiter, built once from the
//! configuration.

use std::collections::HashMap;
use std::sync::Arc;

use crate::backend::Backend;
use crate::backend::exec::ExecBackend;
use crate::backend::http::{HttpBackend, HttpClients};
use crate::config::{BackendSpec, Config, FunctionSpec};
use crate::dispatch::Limiter;

/// How a function is reached.
pub enum Target {
    /// Invocations through the `Backend` trait.
    Invoke(Arc<dyn Backend>),
    /// Requests forwarded unchanged to an HTTP service.
    Passthrough(Arc<HttpBackend>),
}

pub struct Function {
    pub spec: FunctionSpec,
    pub app: Arc<str>,
    pub name: Arc<str>,
    pub target: Target,
    pub schema: Option<jsonschema::Validator>,
    pub limiter: Limiter,
}

impl Function {
    pub fn describe(&self) -> String {
        match &self.target {
            Target::Invoke(backend) => backend.describe(),
            Target::Passthrough(backend) => format!("{} (passthrough)", backend.describe()),
        }
    }
}

/// The answer to a lookup: distinguishing an unknown app from an unknown
/// function gives clients the right 404 code.
pub enum Lookup<'a> {
    Found(&'a Arc<Function>),
    NoApp,
    NoFunction,
}

#[derive(Default)]
pub struct Registry {
    apps: HashMap<String, HashMap<String, Arc<Function>>>,
}

impl Registry {
    pub fn from_config(config: &Config, clients: &HttpClients) -> Registry {
        let mut registry = Registry::default();
        for spec in &config.functions {
            let target = match &spec.backend {
                BackendSpec::Exec { command, cwd, env } => {
                    Target::Invoke(Arc::new(ExecBackend::new(
                        command.clone(),
                        cwd.clone(),
                        env.clone(),
                        config.server.max_result,
                    )))
                }
                BackendSpec::Http {
                    urls,
                    passthrough,
                    http2,
                } => {
                    let backend =
                        HttpBackend::new(clients, urls.clone(), *http2, config.server.max_result);
                    if *passthrough {
                        Target::Passthrough(Arc::new(backend))
                    } else {
                        Target::Invoke(Arc::new(backend))
                    }
                }
                // Instance pools are being built: until then such a
                // function answers 502.
                BackendSpec::Lambda { .. } | BackendSpec::HttpInstances { .. } => {
                    Target::Invoke(Arc::new(crate::backend::Unbuilt))
                }
            };
            let schema = spec.input_schema.as_ref().map(|schema| {
                jsonschema::validator_for(schema)
                    .expect("config validation compiled this schema already")
            });
            let function = Function {
                app: spec.app.as_str().into(),
                name: spec.name.as_str().into(),
                limiter: Limiter::new(spec.concurrency, spec.queue),
                spec: spec.clone(),
                target,
                schema,
            };
            registry
                .apps
                .entry(spec.app.clone())
                .or_default()
                .insert(spec.name.clone(), Arc::new(function));
        }
        registry
    }

    pub fn lookup(&self, app: &str, function: &str) -> Lookup<'_> {
        match self.apps.get(app) {
            None => Lookup::NoApp,
            Some(functions) => match functions.get(function) {
                Some(found) => Lookup::Found(found),
                None => Lookup::NoFunction,
            },
        }
    }

    pub fn has_app(&self, app: &str) -> bool {
        self.apps.contains_key(app)
    }

    /// Every function, sorted by app and name.
    pub fn functions(&self) -> Vec<&Arc<Function>> {
        let mut all: Vec<&Arc<Function>> = self.apps.values().flat_map(|f| f.values()).collect();
        all.sort_by(|a, b| (&a.app, &a.name).cmp(&(&b.app, &b.name)));
        all
    }
}
