//! Class tables (`[apps.APP.classes.CLASS]`): one set of warm instances,
//! the parameters that pick an instance set, and the method tables
//! (`[apps.APP.classes.CLASS.functions.METHOD]`) whose calls share them.

use super::functions::Callee;
use super::*;

const DEFAULT_MAX_PARAMETER_SETS: u32 = 8;

impl Context {
    /// The class and one function per method, each naming the class.
    pub(super) fn class(
        &self,
        key: &str,
        app: &str,
        name: &str,
        raw: &RawClass,
    ) -> Result<(ClassSpec, Vec<FunctionSpec>), ConfigError> {
        let field = |f: &str| format!("{key}.{f}");
        // Read before the backend: it sets the default of max_instances.
        let concurrency = raw.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        if concurrency == 0 {
            return Err(self.invalid(field("concurrency"), "must be at least 1"));
        }
        let backend = self.class_backend(key, raw)?;
        let parameters = raw.parameters.as_deref().unwrap_or_default();
        let max_parameter_sets = raw.max_parameter_sets.unwrap_or(DEFAULT_MAX_PARAMETER_SETS);
        if max_parameter_sets == 0 {
            return Err(self.invalid(field("max_parameter_sets"), "must be at least 1"));
        }
        let class = ClassSpec {
            app: app.to_owned(),
            name: name.to_owned(),
            backend,
            parameters: self.parameters(&field("parameters"), parameters)?,
            max_parameter_sets: max_parameter_sets as usize,
        };
        if raw.functions.is_empty() {
            return Err(self.invalid(
                field("functions"),
                format!("a class needs at least one method, like [{key}.functions.predict]"),
            ));
        }
        let mut methods = Vec::with_capacity(raw.functions.len());
        for (method, raw_method) in &raw.functions {
            methods.push(self.method(key, &class, concurrency, method, raw_method)?);
        }
        Ok((class, methods))
    }

    fn class_backend(&self, key: &str, raw: &RawClass) -> Result<BackendSpec, ConfigError> {
        let table = raw.backend_table();
        let backends = "use \"lambda\", or \"http\" with command";
        match raw.backend.as_deref() {
            Some("lambda") => self.lambda_backend(key, &table),
            Some("http") if raw.command.is_some() => self.http_instances_backend(key, &table),
            Some("http") => Err(self.invalid(
                format!("{key}.command"),
                "a class runs on warm instances: give the command that starts one, like [\"python3\", \"examples/api.py\"]",
            )),
            Some("exec") => Err(self.invalid(
                format!("{key}.backend"),
                format!("a class needs warm instances, and exec starts a process per call: {backends}"),
            )),
            Some(other) => Err(self.invalid(
                format!("{key}.backend"),
                format!("'{other}' is not a backend for a class: {backends}"),
            )),
            None => Err(self.invalid(format!("{key}.backend"), format!("missing: {backends}"))),
        }
    }

    /// A method table: only per-call keys; its calls go to the class's
    /// instances, and its `concurrency` defaults to the class's.
    fn method(
        &self,
        class_key: &str,
        class: &ClassSpec,
        concurrency: u32,
        name: &str,
        raw: &RawFunction,
    ) -> Result<FunctionSpec, ConfigError> {
        let key = format!("{class_key}.functions.{name}");
        check_name(name).map_err(|m| self.invalid(&key, m))?;
        self.refuse(
            &key,
            raw.backend_keys(),
            &format!("belongs on the class table [{class_key}]: its methods share its instances"),
        )?;
        let callee = Callee {
            app: &class.app,
            name,
            class: Some(&class.name),
            backend: class.backend.clone(),
            concurrency,
        };
        let spec = self.call_settings(&key, raw, callee)?;
        if let Some(schema) = &spec.input_schema {
            self.schema_names_no_parameter(&format!("{key}.input_schema"), schema, class)?;
        }
        Ok(spec)
    }

    /// Parameter names: identifiers, distinct even upper-cased, because
    /// each becomes the instance variable `FNGATE_PARAM_<NAME>`.
    fn parameters(&self, key: &str, list: &[String]) -> Result<Vec<String>, ConfigError> {
        let mut variables: Vec<String> = Vec::with_capacity(list.len());
        for (i, name) in list.iter().enumerate() {
            let key = format!("{key}[{i}]");
            let variable = name.to_ascii_uppercase();
            if !is_identifier(name) {
                return Err(self.invalid(
                    key,
                    format!("'{name}' is not a parameter name: use letters, digits and '_', not starting with a digit (it becomes FNGATE_PARAM_{variable})"),
                ));
            }
            if let Some(j) = variables.iter().position(|v| *v == variable) {
                let other = &list[j];
                let why = if other == name {
                    format!("'{name}' is listed twice")
                } else {
                    format!("'{name}' and '{other}' would both be FNGATE_PARAM_{variable}")
                };
                return Err(self.invalid(key, why));
            }
            variables.push(variable);
        }
        Ok(list.to_vec())
    }

    /// A parameter comes from the query and picks the instance set; it is
    /// taken out of the arguments, so the function never sees it as one. A
    /// method's schema naming it as a property (or requiring it) describes
    /// an argument that can never arrive, and a required one would fail
    /// every call with 422: refused here, so the mix-up shows at start-up.
    fn schema_names_no_parameter(
        &self,
        key: &str,
        schema: &serde_json::Value,
        class: &ClassSpec,
    ) -> Result<(), ConfigError> {
        let properties = schema.get("properties").and_then(|p| p.as_object());
        let required = schema.get("required").and_then(|r| r.as_array());
        let named = |parameter: &str| {
            properties.is_some_and(|p| p.contains_key(parameter))
                || required.is_some_and(|r| r.iter().any(|v| v.as_str() == Some(parameter)))
        };
        match class.parameters.iter().find(|p| named(p)) {
            Some(parameter) => Err(self.invalid(
                key,
                format!("'{parameter}' is a parameter of class '{}': it comes from the query and picks the instances, and never reaches the function as an argument; rename the property", class.name),
            )),
            None => Ok(()),
        }
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`
fn is_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
