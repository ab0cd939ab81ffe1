//! The registry: every deployed function by app and name (and every
//! class's methods by app, class and method), with its backend, compiled
//! input schema and concurrency limiter, built once from the
//! configuration. It owns the gateway's warm instance pools.

mod live;

pub use live::LiveRegistry;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use crate::auth::call_token::CallTokens;
use crate::backend::Backend;
use crate::backend::batch::BatchBackend;
use crate::backend::exec::ExecBackend;
use crate::backend::forward::Forwarder;
use crate::backend::http::{HttpBackend, HttpClients};
use crate::backend::instance_http::InstanceHttpBackend;
use crate::backend::lambda::LambdaBackend;
use crate::config::{BackendSpec, ClassSpec, Config, FunctionSpec};
use crate::dispatch::Limiter;
use crate::instances::{HttpInstance, Instances, LambdaIdentity, ParameterSets, Protocol};
use crate::invocation::ClassCall;

/// How a function is reached.
pub enum Target {
    /// Invocations through the `Backend` trait.
    Invoke(Arc<dyn Backend>),
    /// Requests forwarded unchanged to an HTTP service.
    Passthrough(Arc<Forwarder>),
}

pub struct Function {
    pub spec: FunctionSpec,
    pub app: Arc<str>,
    pub name: Arc<str>,
    /// The name its calls are stored under: `name`, or `class.name` for a
    /// class method (a `.` is in no name, so the two never meet).
    pub key: Arc<str>,
    /// For a class method: its class and the class's parameter names.
    pub class: Option<MethodOf>,
    pub target: Target,
    pub schema: Option<jsonschema::Validator>,
    pub limiter: Limiter,
    /// The warm instance sets its calls run on (lambda, http with command).
    pub instances: Option<Arc<ParameterSets>>,
    /// The one call token of every call when `may_call` is empty.
    grantless_token: OnceLock<Arc<str>>,
    /// Its series in `/_/metrics`: the same for every version of it.
    pub metrics: Arc<crate::metrics::FunctionMetrics>,
}

/// The class a method belongs to.
pub struct MethodOf {
    pub class: Arc<str>,
    /// Query keys that pick the instance set, in the class's order.
    pub parameters: Vec<String>,
}

impl Function {
    /// What a call of this method carries: its class and parameter values
    /// (one per name). `None` for a function.
    pub fn class_call(&self, values: Vec<String>) -> Option<Arc<ClassCall>> {
        let of = self.class.as_ref()?;
        Some(Arc::new(ClassCall::new(
            of.class.clone(),
            &of.parameters,
            values,
        )))
    }

    /// The same for a stored call, from its stored parameters.
    pub fn class_call_stored(&self, stored: Option<&str>) -> Option<Arc<ClassCall>> {
        let of = self.class.as_ref()?;
        Some(Arc::new(ClassCall::stored(
            of.class.clone(),
            &of.parameters,
            stored,
        )))
    }

    /// The call token of a call of this function when it may call
    /// nothing (`may_call` empty): such a token grants nothing, whoever
    /// made the call, so one minted on the first call serves every call
    /// and no call pays for minting. `None` when `may_call` lists targets.
    pub fn grantless_token(&self, tokens: &CallTokens) -> Option<Arc<str>> {
        if !self.spec.may_call.is_empty() {
            return None;
        }
        let token = self
            .grantless_token
            .get_or_init(|| tokens.grantless(&self.app, &self.key));
        Some(token.clone())
    }

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

/// A class: its methods, which share its instance sets.
pub struct Class {
    pub name: Arc<str>,
    pub spec: ClassSpec,
    /// Its instance sets, which its methods share.
    sets: Arc<ParameterSets>,
    methods: HashMap<String, Arc<Function>>,
}

impl Class {
    pub fn method(&self, name: &str) -> Option<&Arc<Function>> {
        self.methods.get(name)
    }
}

pub struct Registry {
    apps: HashMap<String, HashMap<String, Arc<Function>>>,
    classes: HashMap<String, HashMap<String, Class>>,
    /// Every warm instance pool of the functions and classes here.
    pub instances: Arc<Instances>,
}

impl Registry {
    /// The registry of `config`'s functions, with instance pools of its own.
    pub fn from_config(config: &Config, clients: &HttpClients) -> Registry {
        Registry::build(config, clients, Instances::new(), None)
    }

    /// The registry of `config`'s functions that takes over from
    /// `previous`: a function whose settings did not change is the same
    /// `Function` (its warm instances, limiter and calls in flight carry
    /// on), and so is a class's instance set; the rest are built anew.
    /// Pools of what is left behind stop once its last call has ended.
    pub fn rebuild(config: &Config, clients: &HttpClients, previous: &Registry) -> Registry {
        Registry::build(config, clients, previous.instances.clone(), Some(previous))
    }

    fn build(
        config: &Config,
        clients: &HttpClients,
        instances: Arc<Instances>,
        previous: Option<&Registry>,
    ) -> Registry {
        let mut registry = Registry {
            apps: HashMap::new(),
            classes: HashMap::new(),
            instances,
        };
        // A class's instance sets, shared by its methods: the previous
        // ones when the class did not change.
        let mut class_sets = HashMap::new();
        for class in &config.classes {
            let kept = previous
                .and_then(|p| p.class(&class.app, &class.name))
                .filter(|old| old.spec == *class)
                .map(|old| old.sets.clone());
            let sets = kept.unwrap_or_else(|| registry.instance_sets(config, clients, class));
            class_sets.insert((class.app.clone(), class.name.clone()), sets);
        }
        for spec in &config.functions {
            let sets = spec
                .class
                .as_ref()
                .and_then(|class| class_sets.get(&(spec.app.clone(), class.clone())));
            let kept = previous.and_then(|p| p.unchanged(spec, sets));
            let function = match kept {
                Some(function) => function,
                None => Arc::new(registry.function(config, clients, spec, sets.cloned())),
            };
            match &spec.class {
                Some(class) => {
                    let classes = registry.classes.entry(spec.app.clone()).or_default();
                    let class = classes.entry(class.clone()).or_insert_with(|| Class {
                        name: class.as_str().into(),
                        spec: config
                            .classes
                            .iter()
                            .find(|c| c.app == spec.app && &c.name == class)
                            .expect("config validation gives every method its class")
                            .clone(),
                        sets: sets.expect("every class has instance sets").clone(),
                        methods: HashMap::new(),
                    });
                    class.methods.insert(spec.name.clone(), function);
                }
                None => {
                    registry
                        .apps
                        .entry(spec.app.clone())
                        .or_default()
                        .insert(spec.name.clone(), function);
                }
            }
        }
        registry
    }

    /// This registry's `Function` for `spec` when its settings are the
    /// same (and, for a method, its class's instance sets are `sets`).
    fn unchanged(
        &self,
        spec: &FunctionSpec,
        sets: Option<&Arc<ParameterSets>>,
    ) -> Option<Arc<Function>> {
        let old = match &spec.class {
            Some(class) => self.class(&spec.app, class)?.method(&spec.name)?,
            None => match self.lookup(&spec.app, &spec.name) {
                Lookup::Found(old) => old,
                Lookup::NoApp | Lookup::NoFunction => return None,
            },
        };
        let same_sets = match (spec.class.as_ref(), sets, &old.instances) {
            (Some(_), Some(new), Some(old)) => Arc::ptr_eq(new, old),
            (Some(_), _, _) => false,
            (None, _, _) => true,
        };
        (old.spec == *spec && same_sets).then(|| old.clone())
    }

    /// A new `Function` for `spec`; a method runs on its class's `sets`.
    fn function(
        &self,
        config: &Config,
        clients: &HttpClients,
        spec: &FunctionSpec,
        class_sets: Option<Arc<ParameterSets>>,
    ) -> Function {
        // A method shares its class's instance sets; a warm function
        // has one set of its own.
        let function_sets = match (&spec.class, &spec.backend) {
            (Some(_), _) => class_sets,
            (None, BackendSpec::Lambda { pool }) => {
                let protocol = lambda_protocol(config, &spec.app, &spec.name);
                Some(self.one_set(spec, pool, protocol))
            }
            (None, BackendSpec::HttpInstances { pool, .. }) => {
                let protocol = http_protocol(config, clients, &spec.backend);
                Some(self.one_set(spec, pool, protocol))
            }
            (None, BackendSpec::Exec { .. } | BackendSpec::Http { .. }) => None,
        };
        let target = match &spec.backend {
            BackendSpec::Exec { command, cwd, env } => Target::Invoke(Arc::new(ExecBackend::new(
                command.clone(),
                cwd.clone(),
                env.clone(),
                config.server.max_result,
            ))),
            BackendSpec::Http {
                urls,
                passthrough,
                http2,
            } => {
                let backend =
                    HttpBackend::new(clients, urls.clone(), *http2, config.server.max_result);
                if *passthrough {
                    Target::Passthrough(Arc::new(Forwarder::Urls(Box::new(backend))))
                } else {
                    Target::Invoke(Arc::new(backend))
                }
            }
            BackendSpec::Lambda { pool } => {
                let sets = function_sets
                    .clone()
                    .expect("a lambda function has instances");
                let backend = LambdaBackend::new(sets, dotted_name(spec), &pool.command);
                Target::Invoke(Arc::new(backend))
            }
            BackendSpec::HttpInstances { pool, .. } => {
                let sets = function_sets
                    .clone()
                    .expect("an http function with a command has instances");
                let backend = InstanceHttpBackend::new(sets, dotted_name(spec), &pool.command);
                if spec.is_passthrough() {
                    Target::Passthrough(Arc::new(Forwarder::Instances(Box::new(backend))))
                } else {
                    Target::Invoke(Arc::new(backend))
                }
            }
        };
        // A batched function's calls gather in front of its backend.
        let target = match (target, &spec.batch) {
            (Target::Invoke(backend), Some(batch)) => {
                Target::Invoke(Arc::new(BatchBackend::new(backend, batch.clone())))
            }
            (target, _) => target,
        };
        let schema = spec.input_schema.as_ref().map(|schema| {
            jsonschema::validator_for(schema)
                .expect("config validation compiled this schema already")
        });
        let (key, class) = match &spec.class {
            Some(class) => {
                let parameters = config
                    .classes
                    .iter()
                    .find(|c| c.app == spec.app && &c.name == class)
                    .map(|c| c.parameters.clone())
                    .unwrap_or_default();
                let of = MethodOf {
                    class: class.as_str().into(),
                    parameters,
                };
                (format!("{class}.{}", spec.name), Some(of))
            }
            None => (spec.name.clone(), None),
        };
        let metrics = crate::metrics::global().function(&spec.app, &key);
        Function {
            app: spec.app.as_str().into(),
            name: spec.name.as_str().into(),
            key: key.into(),
            class,
            limiter: Limiter::new(spec.concurrency, spec.queue),
            instances: function_sets,
            spec: spec.clone(),
            target,
            schema,
            grantless_token: OnceLock::new(),
            metrics,
        }
    }

    /// The instance sets of a class.
    fn instance_sets(
        &self,
        config: &Config,
        clients: &HttpClients,
        class: &ClassSpec,
    ) -> Arc<ParameterSets> {
        let (pool, protocol) = match &class.backend {
            BackendSpec::Lambda { pool } => {
                (pool, lambda_protocol(config, &class.app, &class.name))
            }
            BackendSpec::HttpInstances { pool, .. } => {
                (pool, http_protocol(config, clients, &class.backend))
            }
            BackendSpec::Exec { .. } | BackendSpec::Http { .. } => {
                unreachable!("config validation gives a class warm instances")
            }
        };
        ParameterSets::new(
            format!("{}/{}", class.app, class.name),
            pool.clone(),
            protocol,
            class.parameters.clone(),
            class.max_parameter_sets,
            &self.instances,
        )
    }

    /// The one instance set of a function.
    fn one_set(
        &self,
        spec: &FunctionSpec,
        pool: &crate::config::PoolSpec,
        protocol: Protocol,
    ) -> Arc<ParameterSets> {
        ParameterSets::new(
            format!("{}/{}", spec.app, spec.name),
            pool.clone(),
            protocol,
            Vec::new(),
            1,
            &self.instances,
        )
    }

    pub fn lookup(&self, app: &str, function: &str) -> Lookup<'_> {
        match self
            .apps
            .get(app)
            .and_then(|functions| functions.get(function))
        {
            Some(found) => Lookup::Found(found),
            None if self.has_app(app) => Lookup::NoFunction,
            None => Lookup::NoApp,
        }
    }

    /// The function a stored call names: `function`, or `class.method`.
    pub fn lookup_key(&self, app: &str, key: &str) -> Lookup<'_> {
        let Some((class, method)) = key.split_once('.') else {
            return self.lookup(app, key);
        };
        match self.class(app, class).and_then(|c| c.method(method)) {
            Some(found) => Lookup::Found(found),
            None if self.has_app(app) => Lookup::NoFunction,
            None => Lookup::NoApp,
        }
    }

    /// The class `class` of `app`, when there is one.
    pub fn class(&self, app: &str, class: &str) -> Option<&Class> {
        self.classes.get(app)?.get(class)
    }

    pub fn has_app(&self, app: &str) -> bool {
        self.apps.contains_key(app) || self.classes.contains_key(app)
    }

    /// Every function, class methods included, sorted by app, class and name.
    pub fn functions(&self) -> Vec<&Arc<Function>> {
        let methods = self
            .classes
            .values()
            .flat_map(|classes| classes.values())
            .flat_map(|class| class.methods.values());
        let mut all: Vec<&Arc<Function>> = self
            .apps
            .values()
            .flat_map(|f| f.values())
            .chain(methods)
            .collect();
        all.sort_by(|a, b| (&a.app, &a.spec.class, &a.name).cmp(&(&b.app, &b.spec.class, &b.name)));
        all
    }
}

/// `app.function` or `app.class.method`: the function's name as a Lambda
/// runtime client sees it (in its ARN).
fn dotted_name(spec: &FunctionSpec) -> String {
    match &spec.class {
        Some(class) => format!("{}.{class}.{}", spec.app, spec.name),
        None => format!("{}.{}", spec.app, spec.name),
    }
}

fn lambda_protocol(config: &Config, app: &str, name: &str) -> Protocol {
    Protocol::Lambda(LambdaIdentity {
        function_name: format!("{app}.{name}"),
        max_result: config.server.max_result,
    })
}

fn http_protocol(config: &Config, clients: &HttpClients, backend: &BackendSpec) -> Protocol {
    let BackendSpec::HttpInstances {
        path,
        ready_path,
        http2,
        ..
    } = backend
    else {
        unreachable!("called for http instances only")
    };
    Protocol::Http(Box::new(HttpInstance {
        path: path.clone(),
        ready_path: ready_path.clone(),
        http2: *http2,
        clients: clients.clone(),
        max_result: config.server.max_result,
    }))
}
