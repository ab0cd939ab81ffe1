//! Function tables (`[apps.APP.functions.NAME]`): backend, methods,
//! limits and input schema, checked and resolved. The per-call keys are
//! read here for class methods too; warm instance backends are in `pools`.

use super::*;

/// Where a table's calls go: everything of a `FunctionSpec` that the
/// table's per-call keys do not set.
pub(super) struct Callee<'a> {
    pub app: &'a str,
    pub name: &'a str,
    pub class: Option<&'a str>,
    pub backend: BackendSpec,
    /// `concurrency` when the table does not set it.
    pub concurrency: u32,
}

impl Context {
    pub(super) fn function(
        &self,
        key: &str,
        app: &str,
        name: &str,
        raw: &RawFunction,
    ) -> Result<FunctionSpec, ConfigError> {
        let callee = Callee {
            app,
            name,
            class: None,
            backend: self.backend(key, raw)?,
            concurrency: DEFAULT_CONCURRENCY,
        };
        self.call_settings(key, raw, callee)
    }

    fn backend(&self, key: &str, raw: &RawFunction) -> Result<BackendSpec, ConfigError> {
        let field = format!("{key}.backend");
        match raw.backend.as_deref() {
            Some("exec") => self.exec_backend(key, raw),
            Some("http") if raw.command.is_some() => self.http_instances_backend(key, raw),
            Some("http") => self.http_backend(key, raw),
            Some("lambda") => self.lambda_backend(key, raw),
            Some(other) => Err(self.invalid(
                field,
                format!("'{other}' is not a backend: use \"exec\", \"http\" or \"lambda\""),
            )),
            None => Err(self.invalid(field, "missing: use \"exec\", \"http\" or \"lambda\"")),
        }
    }

    /// The per-call keys (methods, limits, schema, errors), read the same
    /// way for a function table and for a class's method table.
    pub(super) fn call_settings(
        &self,
        key: &str,
        raw: &RawFunction,
        callee: Callee<'_>,
    ) -> Result<FunctionSpec, ConfigError> {
        let field = |f: &str| format!("{key}.{f}");
        let passthrough = callee.backend.is_passthrough();
        let methods = match &raw.methods {
            None if passthrough => None,
            None => Some(vec![Method::POST]),
            Some(list) => Some(self.methods(&field("methods"), list, passthrough)?),
        };
        let timeout = self.duration(&field("timeout"), raw.timeout.as_deref(), DEFAULT_TIMEOUT)?;
        if timeout.is_zero() {
            return Err(self.invalid(field("timeout"), "must be above 0"));
        }
        let policies = self.call_policies(key, raw, &callee.backend)?;
        let concurrency = match (raw.concurrency, &policies.batch) {
            (Some(concurrency), _) => concurrency,
            (None, Some(batch)) => batched_concurrency(batch, &callee),
            (None, None) => callee.concurrency,
        };
        if concurrency == 0 {
            return Err(self.invalid(field("concurrency"), "must be at least 1"));
        }
        let queue = raw.queue.unwrap_or(concurrency);
        let input_schema = match &raw.input_schema {
            None => None,
            Some(value) => Some(self.input_schema(&field("input_schema"), value)?),
        };
        if input_schema.is_some() && passthrough {
            return Err(self.invalid(
                field("input_schema"),
                "a passthrough function forwards requests unchanged, so it cannot have an input schema",
            ));
        }
        Ok(FunctionSpec {
            app: callee.app.to_owned(),
            name: callee.name.to_owned(),
            backend: callee.backend,
            methods,
            timeout,
            concurrency: concurrency as usize,
            queue: queue as usize,
            public: raw.public.unwrap_or(false),
            input_schema,
            max_body: (raw.max_body.as_deref())
                .map(|text| parse_size(text).map_err(|m| self.invalid(field("max_body"), m)))
                .transpose()?,
            expose_errors: raw.expose_errors.unwrap_or(true),
            class: callee.class.map(str::to_owned),
            stream: policies.stream,
            may_call: policies.may_call,
            retries: policies.retries,
            batch: policies.batch,
        })
    }

    fn exec_backend(&self, key: &str, raw: &RawFunction) -> Result<BackendSpec, ConfigError> {
        let http_keys = [
            ("urls", raw.urls.is_some()),
            ("passthrough", raw.passthrough.is_some()),
            ("http2", raw.http2.is_some()),
        ];
        self.refuse(key, http_keys, "only an http backend takes this key")?;
        self.refuse(
            key,
            raw.instance_keys(),
            "only warm instances (backend \"lambda\", or \"http\" with command) take this key",
        )?;
        let command = match &raw.command {
            Some(command) if !command.is_empty() && !command[0].is_empty() => command.clone(),
            _ => {
                return Err(self.invalid(
                    format!("{key}.command"),
                    "an exec backend needs a command, like [\"python3\", \"examples/square.py\"]",
                ));
            }
        };
        let env = self.env(key, raw, |name| {
            (name.starts_with("FNGATE_") || name == "TRACEPARENT").then_some(
                "is set by fngate for each call (who called, which call): it cannot be configured",
            )
        })?;
        Ok(BackendSpec::Exec {
            command,
            cwd: self.base_dir.clone(),
            env,
        })
    }

    /// The table's `env`, each name checked: `reserved` says why fngate
    /// keeps a name to itself, or `None` when the table may set it.
    pub(super) fn env(
        &self,
        key: &str,
        raw: &RawFunction,
        reserved: impl Fn(&str) -> Option<&'static str>,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        let env = raw.env.clone().unwrap_or_default();
        for name in env.keys() {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(self.invalid(
                    format!("{key}.env"),
                    format!("'{name}' is not a variable name: it is empty or holds '=' or NUL"),
                ));
            }
            if let Some(why) = reserved(name) {
                return Err(self.invalid(format!("{key}.env"), format!("{name} {why}")));
            }
        }
        Ok(env)
    }

    /// Fails on the first key of `keys` that is written, naming it.
    pub(super) fn refuse(
        &self,
        key: &str,
        keys: impl IntoIterator<Item = (&'static str, bool)>,
        message: &str,
    ) -> Result<(), ConfigError> {
        match keys.into_iter().find(|(_, present)| *present) {
            Some((name, _)) => Err(self.invalid(format!("{key}.{name}"), message)),
            None => Ok(()),
        }
    }

    fn http_backend(&self, key: &str, raw: &RawFunction) -> Result<BackendSpec, ConfigError> {
        let keys = [("env", raw.env.is_some())].into_iter();
        self.refuse(
            key,
            keys.chain(raw.instance_keys()),
            "only instances that fngate starts take this key: give command instead of urls",
        )?;
        let list = match &raw.urls {
            Some(list) if !list.is_empty() => list,
            _ => {
                return Err(self.invalid(
                    format!("{key}.urls"),
                    "an http backend needs urls, like [\"http://127.0.0.1:9001/invoke\"], or a command that starts its instances",
                ));
            }
        };
        let mut urls = Vec::with_capacity(list.len());
        for (i, text) in list.iter().enumerate() {
            let bad =
                |why: &str| self.invalid(format!("{key}.urls[{i}]"), format!("'{text}' {why}"));
            let uri: Uri = text.parse().map_err(|_| bad("is not a URL"))?;
            match uri.scheme_str() {
                Some("http") | Some("https") => {}
                _ => return Err(bad("must start with http:// or https://")),
            }
            if uri.authority().is_none() {
                return Err(bad("has no host"));
            }
            urls.push(uri);
        }
        Ok(BackendSpec::Http {
            urls,
            passthrough: raw.passthrough.unwrap_or(false),
            http2: raw.http2.unwrap_or(false),
        })
    }

    fn methods(
        &self,
        key: &str,
        list: &[String],
        passthrough: bool,
    ) -> Result<Vec<Method>, ConfigError> {
        if list.is_empty() {
            return Err(self.invalid(key, "list at least one method"));
        }
        let allowed: &[&str] = if passthrough {
            &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        } else {
            &["GET", "POST"]
        };
        let mut methods = Vec::new();
        for text in list {
            if !allowed.contains(&text.as_str()) {
                return Err(self.invalid(
                    key,
                    format!("'{text}' is not allowed here: use {}", allowed.join(", ")),
                ));
            }
            let method =
                Method::from_bytes(text.as_bytes()).expect("listed methods are valid tokens");
            if !methods.contains(&method) {
                methods.push(method);
            }
        }
        Ok(methods)
    }

    fn input_schema(
        &self,
        key: &str,
        value: &toml::Value,
    ) -> Result<serde_json::Value, ConfigError> {
        let schema = match value {
            toml::Value::String(path) => {
                let path = self.resolve(path);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    self.invalid(key, format!("cannot read {}: {e}", path.display()))
                })?;
                serde_json::from_str(&text).map_err(|e| {
                    self.invalid(key, format!("{} is not JSON: {e}", path.display()))
                })?
            }
            toml::Value::Table(_) => serde_json::to_value(value).map_err(|e| {
                self.invalid(key, format!("cannot use this table as a JSON Schema: {e}"))
            })?,
            _ => {
                return Err(self.invalid(
                    key,
                    "write a path to a JSON Schema file, or an inline table",
                ));
            }
        };
        jsonschema::validator_for(&schema)
            .map_err(|e| self.invalid(key, format!("not a valid JSON Schema: {e}")))?;
        Ok(schema)
    }
}

/// A batched function's `concurrency` when its table does not set it: a
/// function's concurrency counts calls, and each call of a batch holds a
/// slot, so it is enough for a full batch on every instance at once
/// (`max_size` x `max_instances` x `instance_concurrency`), or for as many
/// full batches as the unbatched default allows calls on `urls`; never
/// less than the unbatched default.
fn batched_concurrency(batch: &BatchSpec, callee: &Callee<'_>) -> u32 {
    let batches = match &callee.backend {
        BackendSpec::Lambda { pool } | BackendSpec::HttpInstances { pool, .. } => {
            pool.max_instances.saturating_mul(pool.instance_concurrency)
        }
        BackendSpec::Http { .. } | BackendSpec::Exec { .. } => callee.concurrency as usize,
    };
    let calls = batch.max_size.saturating_mul(batches);
    u32::try_from(calls)
        .unwrap_or(u32::MAX)
        .max(callee.concurrency)
}
