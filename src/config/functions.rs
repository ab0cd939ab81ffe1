//! Function tables (`[apps.APP.functions.NAME]`): backend, methods,
//! limits and input schema, checked and resolved.

use super::*;

impl Context {
    pub(super) fn function(
        &self,
        key: &str,
        app: &str,
        name: &str,
        raw: &RawFunction,
    ) -> Result<FunctionSpec, ConfigError> {
        let field = |f: &str| format!("{key}.{f}");
        let backend = match raw.backend.as_deref() {
            Some("exec") => self.exec_backend(key, raw)?,
            Some("http") => self.http_backend(key, raw)?,
            Some(other) => {
                return Err(self.invalid(
                    field("backend"),
                    format!("'{other}' is not a backend: use \"exec\" or \"http\""),
                ));
            }
            None => return Err(self.invalid(field("backend"), "missing: use \"exec\" or \"http\"")),
        };
        let passthrough = matches!(
            backend,
            BackendSpec::Http {
                passthrough: true,
                ..
            }
        );
        let methods = match &raw.methods {
            None if passthrough => None,
            None => Some(vec![Method::POST]),
            Some(list) => Some(self.methods(&field("methods"), list, passthrough)?),
        };
        let timeout = self.duration(&field("timeout"), raw.timeout.as_deref(), DEFAULT_TIMEOUT)?;
        if timeout.is_zero() {
            return Err(self.invalid(field("timeout"), "must be above 0"));
        }
        let concurrency = raw.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
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
            app: app.to_owned(),
            name: name.to_owned(),
            backend,
            methods,
            timeout,
            concurrency: concurrency as usize,
            queue: queue as usize,
            public: raw.public.unwrap_or(false),
            input_schema,
            max_body: match &raw.max_body {
                None => None,
                Some(text) => {
                    Some(parse_size(text).map_err(|m| self.invalid(field("max_body"), m))?)
                }
            },
            expose_errors: raw.expose_errors.unwrap_or(true),
            class: None,
        })
    }

    fn exec_backend(&self, key: &str, raw: &RawFunction) -> Result<BackendSpec, ConfigError> {
        for (present, name) in [
            (raw.urls.is_some(), "urls"),
            (raw.passthrough.is_some(), "passthrough"),
            (raw.http2.is_some(), "http2"),
        ] {
            if present {
                return Err(self.invalid(
                    format!("{key}.{name}"),
                    "only an http backend takes this key",
                ));
            }
        }
        let command = match &raw.command {
            Some(command) if !command.is_empty() && !command[0].is_empty() => command.clone(),
            _ => {
                return Err(self.invalid(
                    format!("{key}.command"),
                    "an exec backend needs a command, like [\"python3\", \"examples/square.py\"]",
                ));
            }
        };
        let env = raw.env.clone().unwrap_or_default();
        if let Some(name) = env
            .keys()
            .find(|k| k.starts_with("FNGATE_") || k.as_str() == "TRACEPARENT")
        {
            return Err(self.invalid(
                format!("{key}.env"),
                format!("{name} is set by fngate for each call (who called, which call): it cannot be configured"),
            ));
        }
        Ok(BackendSpec::Exec {
            command,
            cwd: self.base_dir.clone(),
            env,
        })
    }

    fn http_backend(&self, key: &str, raw: &RawFunction) -> Result<BackendSpec, ConfigError> {
        for (present, name) in [
            (raw.command.is_some(), "command"),
            (raw.env.is_some(), "env"),
        ] {
            if present {
                return Err(self.invalid(
                    format!("{key}.{name}"),
                    "only an exec backend takes this key",
                ));
            }
        }
        let list = match &raw.urls {
            Some(list) if !list.is_empty() => list,
            _ => {
                return Err(self.invalid(
                    format!("{key}.urls"),
                    "an http backend needs urls, like [\"http://127.0.0.1:9001/invoke\"]",
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
