//! App tables (`[apps.APP]`): their functions and classes, the names they
//! share, and the app's CORS origins.

use super::*;

/// What the app tables add up to.
#[derive(Default)]
pub(super) struct Apps {
    /// Every function, class methods included.
    pub functions: Vec<FunctionSpec>,
    pub classes: Vec<ClassSpec>,
}

impl Context {
    pub(super) fn app(
        &self,
        app: &str,
        raw: &RawApp,
        apps: &mut Apps,
        cors: &mut CorsConfig,
        with_auth: bool,
    ) -> Result<(), ConfigError> {
        check_name(app).map_err(|m| self.invalid(format!("apps.{app}"), m))?;
        if raw.functions.is_empty() && raw.classes.is_empty() {
            return Err(self.invalid(
                format!("apps.{app}"),
                "an app needs at least one function or class",
            ));
        }
        for (name, raw_fn) in &raw.functions {
            let key = format!("apps.{app}.functions.{name}");
            check_name(name).map_err(|m| self.invalid(&key, m))?;
            apps.functions.push(self.function(&key, app, name, raw_fn)?);
        }
        for (name, raw_class) in &raw.classes {
            let key = format!("apps.{app}.classes.{name}");
            check_name(name).map_err(|m| self.invalid(&key, m))?;
            if raw.functions.contains_key(name) {
                return Err(self.invalid(
                    key,
                    format!(
                        "app '{app}' has a function '{name}' too: /{app}/{name} cannot be both"
                    ),
                ));
            }
            let (class, methods) = self.class(&key, app, name, raw_class)?;
            apps.classes.push(class);
            apps.functions.extend(methods);
        }
        self.app_cors(app, raw, cors, with_auth)
    }

    fn app_cors(
        &self,
        app: &str,
        raw: &RawApp,
        cors: &mut CorsConfig,
        with_auth: bool,
    ) -> Result<(), ConfigError> {
        let key = format!("apps.{app}.cors.allow_origins");
        let origins = match &raw.cors {
            Some(raw_cors) => Some(self.origins(&key, raw_cors)?),
            None => cors.default.clone(),
        };
        // "*" is for public functions only: a page on any origin could
        // otherwise use a visitor's credentials.
        let mut tables = raw
            .functions
            .values()
            .chain(raw.classes.values().flat_map(|c| c.functions.values()));
        let guarded = with_auth && tables.any(|f| f.public != Some(true));
        if origins == Some(AllowedOrigins::Any) && guarded {
            let key = if raw.cors.is_some() {
                key
            } else {
                "cors.allow_origins".to_owned()
            };
            return Err(self.invalid(
                key,
                format!("\"*\" is only for public functions, and app '{app}' has functions that need credentials: list the origins"),
            ));
        }
        if let Some(origins) = raw.cors.as_ref().and(origins) {
            cors.apps.insert(app.to_owned(), origins);
        }
        Ok(())
    }
}
