//! Deploys laid over the configuration file: a function's or a class's
//! table, in JSON with the TOML's keys, put in place of (or next to) the
//! file's, or a table taken away. The result is validated as the file is,
//! so a deploy is refused with the same message, naming the same key.

use std::collections::BTreeMap;

use super::{Config, ConfigError};

/// Whether an overlay is a function's table or a class's (with its methods).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OverlayKind {
    Function,
    Class,
}

impl OverlayKind {
    /// The TOML table that holds them: `functions` or `classes`.
    pub fn table(self) -> &'static str {
        match self {
            OverlayKind::Function => "functions",
            OverlayKind::Class => "classes",
        }
    }
}

/// What an overlay replaces: `[apps.APP.functions.NAME]` or
/// `[apps.APP.classes.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OverlayKey {
    pub app: String,
    pub kind: OverlayKind,
    pub name: String,
}

impl std::fmt::Display for OverlayKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "apps.{}.{}.{}", self.app, self.kind.table(), self.name)
    }
}

/// Every overlay, by what it replaces: `Some(table)` deploys it, `None`
/// removes the file's table of that name (if any).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overlays(pub BTreeMap<OverlayKey, Option<serde_json::Value>>);

impl Config {
    /// This configuration with `overlays` laid over the file it was read
    /// from, validated as a whole; the error names the key, as at start-up.
    pub fn with_overlays(&self, overlays: &Overlays) -> Result<Config, ConfigError> {
        if overlays.0.is_empty() {
            return Ok(self.clone());
        }
        let invalid = |key: String, message: String| ConfigError::Invalid {
            file: self.file.clone(),
            key,
            message,
        };
        let mut document: toml::Table = toml::from_str(&self.text)
            .map_err(|e| invalid("(file)".to_owned(), e.message().to_owned()))?;
        for (key, table) in &overlays.0 {
            let apps = table_at(&mut document, "apps");
            let app = table_at(apps, &key.app);
            let tables = table_at(app, key.kind.table());
            match table {
                Some(json) => {
                    let value =
                        toml_value(json).map_err(|message| invalid(key.to_string(), message))?;
                    tables.insert(key.name.clone(), value);
                }
                None => {
                    tables.remove(&key.name);
                    prune(&mut document, key);
                }
            }
        }
        let text = toml::to_string(&document)
            .map_err(|e| invalid("(deploys)".to_owned(), e.to_string()))?;
        let mut merged = Config::from_toml(&self.file, &text)?;
        // What the file says stays what it said: reloads lay the deploys
        // over the file again.
        merged.text = self.text.clone();
        Ok(merged)
    }
}

/// Takes away the tables a removal left empty: an app with nothing
/// left in it is no app (validation refuses an empty one).
fn prune(document: &mut toml::Table, key: &OverlayKey) {
    let Some(apps) = document.get_mut("apps").and_then(toml::Value::as_table_mut) else {
        return;
    };
    if let Some(app) = apps.get_mut(&key.app).and_then(toml::Value::as_table_mut) {
        let kind = key.kind.table();
        if app
            .get(kind)
            .and_then(toml::Value::as_table)
            .is_some_and(toml::Table::is_empty)
        {
            app.remove(kind);
        }
        if app.is_empty() {
            apps.remove(&key.app);
        }
    }
    if apps.is_empty() {
        document.remove("apps");
    }
}

/// The table `key` of `table`, made empty when absent (a value that is
/// not a table is replaced: validation of the result reports it).
fn table_at<'a>(table: &'a mut toml::Table, key: &str) -> &'a mut toml::Table {
    let entry = table
        .entry(key.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if !entry.is_table() {
        *entry = toml::Value::Table(toml::Table::new());
    }
    entry.as_table_mut().expect("made a table just above")
}

/// A deployed table in TOML: JSON objects, arrays, strings, numbers and
/// booleans; `null` has no TOML form and is refused.
fn toml_value(json: &serde_json::Value) -> Result<toml::Value, String> {
    if !json.is_object() {
        return Err("a deployed table must be a JSON object".to_owned());
    }
    convert(json, "")
}

fn convert(json: &serde_json::Value, path: &str) -> Result<toml::Value, String> {
    use serde_json::Value;
    Ok(match json {
        Value::Null => {
            return Err(format!(
                "{}: null has no TOML form; leave the key out",
                if path.is_empty() { "(table)" } else { path }
            ));
        }
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => toml::Value::Integer(i),
            (None, Some(f)) => toml::Value::Float(f),
            (None, None) => return Err(format!("{path}: number out of range")),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(items) => toml::Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| convert(item, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => toml::Value::Table(
            map.iter()
                .map(|(k, v)| {
                    let at = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    Ok((k.clone(), convert(v, &at)?))
                })
                .collect::<Result<_, String>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [apps.demo.functions.square]
        backend = "exec"
        command = ["python3", "examples/square.py"]
    "#;

    fn key(name: &str) -> OverlayKey {
        OverlayKey {
            app: "demo".to_owned(),
            kind: OverlayKind::Function,
            name: name.to_owned(),
        }
    }

    fn base() -> Config {
        Config::from_toml(std::path::Path::new("/srv/gateway.toml"), FILE).unwrap()
    }

    #[test]
    fn a_deployed_function_joins_the_files_and_one_replaces_its_namesake() {
        let mut overlays = Overlays::default();
        overlays.0.insert(
            key("cube"),
            Some(serde_json::json!({"backend": "exec", "command": ["python3", "cube.py"], "timeout": "5s"})),
        );
        overlays.0.insert(
            key("square"),
            Some(serde_json::json!({"backend": "exec", "command": ["python3", "v2.py"]})),
        );
        let merged = base().with_overlays(&overlays).unwrap();
        let names: Vec<&str> = merged.functions.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["cube", "square"]);
        let cube = &merged.functions[0];
        assert_eq!(cube.timeout, std::time::Duration::from_secs(5));
        assert_eq!(&*merged.text, FILE);
    }

    #[test]
    fn a_removal_takes_the_files_table_away() {
        let mut overlays = Overlays::default();
        overlays.0.insert(key("square"), None);
        let merged = base().with_overlays(&overlays).unwrap();
        assert!(merged.functions.is_empty());
    }

    #[test]
    fn a_bad_deploy_names_its_key_as_the_file_would() {
        let mut overlays = Overlays::default();
        overlays.0.insert(
            key("cube"),
            Some(serde_json::json!({"backend": "exec", "command": ["x"], "timeout": "soon"})),
        );
        let error = base().with_overlays(&overlays).unwrap_err().to_string();
        assert!(
            error.contains("apps.demo.functions.cube.timeout"),
            "{error}"
        );
        overlays.0.insert(
            key("cube"),
            Some(serde_json::json!({"backend": "exec", "colour": 1})),
        );
        let error = base().with_overlays(&overlays).unwrap_err().to_string();
        assert!(error.contains("colour"), "{error}");
        overlays
            .0
            .insert(key("cube"), Some(serde_json::json!({"backend": null})));
        let error = base().with_overlays(&overlays).unwrap_err().to_string();
        assert!(
            error.contains("apps.demo.functions.cube") && error.contains("null"),
            "{error}"
        );
    }
}
