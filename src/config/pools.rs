//! Warm instances: the `lambda` backend and `http` with `command`, and the
//! pool keys (`min_instances`, `max_instances`, timeouts) both take, on a
//! function table or on a class table.

use http::uri::PathAndQuery;

use super::*;

const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const INIT_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_GRACE: Duration = Duration::from_secs(10);

impl Context {
    pub(super) fn lambda_backend(
        &self,
        key: &str,
        raw: &RawFunction,
    ) -> Result<BackendSpec, ConfigError> {
        let http_keys = [
            ("urls", raw.urls.is_some()),
            ("passthrough", raw.passthrough.is_some()),
            ("http2", raw.http2.is_some()),
            ("path", raw.path.is_some()),
            ("ready_path", raw.ready_path.is_some()),
        ];
        self.refuse(
            key,
            http_keys,
            "only an http backend takes this key: lambda instances are started from command and fetch their calls from the Runtime API",
        )?;
        if raw.instance_concurrency.is_some_and(|n| n != 1) {
            return Err(self.invalid(
                format!("{key}.instance_concurrency"),
                "lambda instances take one call at a time: leave it out, or use backend \"http\" with command",
            ));
        }
        let example = "a lambda backend needs a command, like [\"python3\", \"-m\", \"awslambdaric\", \"handler.main\"]";
        let pool = self.pool(key, raw, 1, example)?;
        Ok(BackendSpec::Lambda { pool })
    }

    pub(super) fn http_instances_backend(
        &self,
        key: &str,
        raw: &RawFunction,
    ) -> Result<BackendSpec, ConfigError> {
        let field = |f: &str| format!("{key}.{f}");
        if raw.urls.is_some() {
            return Err(self.invalid(
                field("urls"),
                "give urls (a service that runs on its own) or command (instances fngate starts), not both",
            ));
        }
        let instance_concurrency = raw.instance_concurrency.unwrap_or(1);
        if instance_concurrency == 0 {
            return Err(self.invalid(field("instance_concurrency"), "must be at least 1"));
        }
        let example = "an http backend with command needs a program to start, like [\"python3\", \"examples/api.py\"]";
        let pool = self.pool(key, raw, instance_concurrency, example)?;
        let path = match &raw.path {
            None => "/".to_owned(),
            Some(text) => self.origin_path(&field("path"), text)?,
        };
        let ready_path = (raw.ready_path.as_deref())
            .map(|text| self.origin_path(&field("ready_path"), text))
            .transpose()?;
        Ok(BackendSpec::HttpInstances {
            pool,
            path,
            ready_path,
            passthrough: raw.passthrough.unwrap_or(false),
            http2: raw.http2.unwrap_or(false),
        })
    }

    /// The pool of a lambda or http-with-command table. `max_instances`
    /// defaults to `concurrency / instance_concurrency`, rounded up so that
    /// `concurrency` calls fit at once.
    fn pool(
        &self,
        key: &str,
        raw: &RawFunction,
        instance_concurrency: u32,
        example: &str,
    ) -> Result<PoolSpec, ConfigError> {
        let field = |f: &str| format!("{key}.{f}");
        let command = match &raw.command {
            Some(command) if !command.is_empty() && !command[0].is_empty() => command.clone(),
            _ => return Err(self.invalid(field("command"), example)),
        };
        let env = self.env(key, raw, instance_variable)?;
        let concurrency = raw.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        let default_max = concurrency.div_ceil(instance_concurrency).max(1);
        let max_instances = raw.max_instances.unwrap_or(default_max);
        if max_instances == 0 {
            return Err(self.invalid(
                field("max_instances"),
                "must be at least 1: with no instance, no call could run",
            ));
        }
        let min_instances = raw.min_instances.unwrap_or(0);
        if min_instances > max_instances {
            let default = match raw.max_instances {
                Some(_) => "",
                None => ", the default: concurrency / instance_concurrency",
            };
            return Err(self.invalid(
                field("min_instances"),
                format!("{min_instances} is above max_instances ({max_instances}{default})"),
            ));
        }
        let duration = |name: &str, value: &Option<String>, default| {
            self.duration(&field(name), value.as_deref(), default)
        };
        let init_timeout = duration("init_timeout", &raw.init_timeout, INIT_TIMEOUT)?;
        if init_timeout.is_zero() {
            return Err(self.invalid(field("init_timeout"), "must be above 0"));
        }
        Ok(PoolSpec {
            command,
            cwd: self.base_dir.clone(),
            env,
            min_instances: min_instances as usize,
            max_instances: max_instances as usize,
            idle_timeout: duration("idle_timeout", &raw.idle_timeout, IDLE_TIMEOUT)?,
            init_timeout,
            exit_grace: duration("exit_grace", &raw.exit_grace, EXIT_GRACE)?,
            instance_concurrency: instance_concurrency as usize,
        })
    }

    /// A path as it goes on the request line (origin form): `/invoke`,
    /// `/v1/run?mode=fast`.
    fn origin_path(&self, key: &str, text: &str) -> Result<String, ConfigError> {
        if !text.starts_with('/') {
            return Err(self.invalid(key, format!("'{text}' must start with /, like \"/invoke\"")));
        }
        match text.parse::<PathAndQuery>() {
            Ok(parsed) if parsed.as_str() == text && !text.contains('#') => Ok(text.to_owned()),
            _ => Err(self.invalid(
                key,
                format!("'{text}' is not a URL path: write it as on a request line, like \"/invoke?v=2\", with no space or '#'"),
            )),
        }
    }
}

/// Why an instance may not set a variable: fngate sets it when it starts
/// the instance (`None`: the table may set it).
fn instance_variable(name: &str) -> Option<&'static str> {
    if name.starts_with("FNGATE_") {
        Some(
            "is set by fngate when it starts an instance (class parameters, call credentials): it cannot be configured",
        )
    } else if name == "AWS_LAMBDA_RUNTIME_API" {
        Some("is set by fngate: it points a lambda instance at fngate's Runtime API")
    } else if name == "PORT" {
        Some("is set by fngate: it is the port an http instance listens on")
    } else {
        None
    }
}
