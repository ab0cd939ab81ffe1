//! Reloads and deploys: what is deployed is the configuration file with
//! the deploys laid over it (`Config::with_overlays`). A reload (SIGHUP,
//! or a change of the file or of the certificate files) reads the file
//! and the certificates again; a deploy lays other overlays over the file
//! as last read. Either is validated whole first: a bad one is refused
//! with the start-up messages and what serves keeps serving. A good one
//! swaps the registry (unchanged functions keep their warm instances and
//! calls in flight) and the TLS configuration (the next handshake uses
//! the new certificate); open connections are never touched.

mod watch;

pub use watch::{Triggers, reload_on_changes};

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::backend::http::HttpClients;
use crate::config::{self, Config, ConfigError, Overlays};
use crate::registry::{LiveRegistry, Registry};
use crate::tls::{LiveTls, TlsError};

/// Why a reload or a deploy was refused (what served keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// What a reload or a deploy changed, by route (`demo/square`,
/// `demo/Model` for a class), and the sections whose change takes a
/// restart to take effect.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub restart_needed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.restart_needed.is_empty()
    }
}

/// Sections read only at start-up: a change is reported, not applied.
const RESTART_SECTIONS: &[&str] = &[
    "server",
    "store",
    "auth",
    "rate_limit",
    "cors",
    "webhooks",
    "log",
    "admin",
];

/// What every function is given of the gateway it runs under.
pub struct Surroundings {
    pub clients: HttpClients,
    /// `FNGATE_URL`: the gateway's own HTTPS base URL.
    pub url: String,
    /// `FNGATE_CA_FILE`, on the dev certificate.
    pub dev_ca: Option<PathBuf>,
}

impl Surroundings {
    /// Every exec function and warm instance gets `FNGATE_URL` (and, on
    /// the dev certificate, `FNGATE_CA_FILE`, the dev CA to verify it
    /// with) in its environment. (The config refuses any `FNGATE_*` name
    /// in `env`.)
    pub fn give_functions_the_gateway(&self, config: &mut Config) {
        let mut vars = vec![("FNGATE_URL".to_owned(), self.url.clone())];
        if let Some(ca) = &self.dev_ca {
            // Absolute: functions run in their own folders.
            let ca = std::fs::canonicalize(ca).unwrap_or_else(|_| ca.to_owned());
            vars.push(("FNGATE_CA_FILE".to_owned(), ca.display().to_string()));
        }
        let backends = (config.functions.iter_mut().map(|f| &mut f.backend))
            .chain(config.classes.iter_mut().map(|c| &mut c.backend));
        for backend in backends {
            let env = match backend {
                config::BackendSpec::Exec { env, .. } => env,
                config::BackendSpec::Lambda { pool }
                | config::BackendSpec::HttpInstances { pool, .. } => &mut pool.env,
                config::BackendSpec::Http { .. } => continue,
            };
            env.extend(vars.iter().cloned());
        }
    }
}

/// The configuration as last read from the file, and the deploys over it.
struct Loaded {
    file: Arc<Config>,
    overlays: Overlays,
}

pub struct Reloader {
    registry: Arc<LiveRegistry>,
    tls: Arc<LiveTls>,
    surroundings: Surroundings,
    /// Held through a whole reload or deploy: they happen one at a time.
    loaded: tokio::sync::Mutex<Loaded>,
    /// The configuration serving now (file and deploys, with the
    /// gateway's variables given to the functions).
    serving: ArcSwap<Config>,
}

impl Reloader {
    /// `file` is the configuration as read from its file, `serving` the
    /// one built from it with `overlays` (what the registry serves now).
    pub fn new(
        registry: Arc<LiveRegistry>,
        tls: Arc<LiveTls>,
        surroundings: Surroundings,
        file: Config,
        overlays: Overlays,
        serving: Config,
    ) -> Reloader {
        Reloader {
            registry,
            tls,
            surroundings,
            loaded: tokio::sync::Mutex::new(Loaded {
                file: Arc::new(file),
                overlays,
            }),
            serving: ArcSwap::from_pointee(serving),
        }
    }

    /// The configuration file's path.
    pub async fn file(&self) -> PathBuf {
        self.loaded.lock().await.file.file.clone()
    }

    /// The configuration serving now.
    pub fn serving(&self) -> Arc<Config> {
        self.serving.load_full()
    }

    /// The configuration as last read from the file, without deploys.
    pub async fn file_config(&self) -> Arc<Config> {
        self.loaded.lock().await.file.clone()
    }

    /// The deploys in effect.
    pub async fn overlays(&self) -> Overlays {
        self.loaded.lock().await.overlays.clone()
    }

    /// Reads the configuration file and the certificates again and, when
    /// both are good, serves them.
    pub async fn reload(&self) -> Result<Changes, ReloadError> {
        let mut loaded = self.loaded.lock().await;
        let path = loaded.file.file.clone();
        let file = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(|e| ConfigError::Read {
                file: loaded.file.file.clone(),
                source: std::io::Error::other(e.to_string()),
            })??;
        let mut changes = self.install(&file, &loaded.overlays, true)?;
        changes.restart_needed = restart_needed(&loaded.file.text, &file.text);
        loaded.file = Arc::new(file);
        Ok(changes)
    }

    /// Serves `overlays` over the file as last read, when the result is a
    /// good configuration; the error names the key, as at start-up.
    pub async fn apply(&self, overlays: Overlays) -> Result<Changes, ReloadError> {
        let mut loaded = self.loaded.lock().await;
        let changes = self.install(&loaded.file.clone(), &overlays, false)?;
        loaded.overlays = overlays;
        Ok(changes)
    }

    /// Validates `file` with `overlays`, then swaps in its registry (and,
    /// with `certificates`, the TLS configuration read again).
    fn install(
        &self,
        file: &Config,
        overlays: &Overlays,
        certificates: bool,
    ) -> Result<Changes, ReloadError> {
        let mut config = file.with_overlays(overlays)?;
        self.surroundings.give_functions_the_gateway(&mut config);
        // Both are read before anything is swapped: all or nothing.
        let tls = match certificates {
            true => Some(crate::tls::server_config(
                &config.server.tls,
                config.server.client_ca.as_deref(),
                config.server.session_resumption,
            )?),
            false => None,
        };
        let current = self.registry.current();
        let next = Registry::rebuild(&config, &self.surroundings.clients, &current);
        let changes = compare(&current, &next);
        self.registry.replace(next);
        if let Some((tls, _)) = tls {
            self.tls.replace(tls);
        }
        self.serving.store(Arc::new(config));
        Ok(changes)
    }
}

/// What `next` deploys differently from `current`, by route.
fn compare(current: &Registry, next: &Registry) -> Changes {
    let routes = |registry: &Registry| -> std::collections::BTreeMap<String, usize> {
        registry
            .functions()
            .into_iter()
            .map(|f| {
                (
                    format!("{}/{}", f.app, f.spec.route_name()),
                    Arc::as_ptr(f) as usize,
                )
            })
            .collect()
    };
    let (before, after) = (routes(current), routes(next));
    let mut changes = Changes::default();
    for (route, function) in &after {
        match before.get(route) {
            None => changes.added.push(route.clone()),
            Some(old) if old != function => changes.changed.push(route.clone()),
            Some(_) => {}
        }
    }
    changes.removed = (before.keys())
        .filter(|route| !after.contains_key(*route))
        .cloned()
        .collect();
    changes
}

/// What serving `after` instead of `before` would change, by route, and
/// the start-up-only sections that differ (what `fngate check` shows).
pub fn preview(before: &Config, after: &Config) -> Changes {
    let routes = |config: &Config| -> std::collections::BTreeMap<String, String> {
        config
            .functions
            .iter()
            .map(|spec| {
                // A method changes with its class.
                let class = spec.class.as_ref().and_then(|name| {
                    config
                        .classes
                        .iter()
                        .find(|c| c.app == spec.app && &c.name == name)
                });
                (
                    format!("{}/{}", spec.app, spec.route_name()),
                    format!("{spec:?}{class:?}"),
                )
            })
            .collect()
    };
    let (old, new) = (routes(before), routes(after));
    let mut changes = Changes {
        restart_needed: restart_needed(&before.text, &after.text),
        ..Changes::default()
    };
    for (route, spec) in &new {
        match old.get(route) {
            None => changes.added.push(route.clone()),
            Some(was) if was != spec => changes.changed.push(route.clone()),
            Some(_) => {}
        }
    }
    changes.removed = (old.keys())
        .filter(|route| !new.contains_key(*route))
        .cloned()
        .collect();
    changes
}

/// The start-up-only sections that differ between two versions of the
/// file (compared as TOML, so formatting and comments do not count).
pub fn restart_needed(before: &str, after: &str) -> Vec<String> {
    let parse = |text: &str| text.parse::<toml::Table>().unwrap_or_default();
    let (before, after) = (parse(before), parse(after));
    RESTART_SECTIONS
        .iter()
        .filter(|section| before.get(**section) != after.get(**section))
        .map(|section| format!("[{section}]"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml(std::path::Path::new("/srv/gateway.toml"), text).unwrap()
    }

    #[test]
    fn a_preview_names_what_was_added_changed_removed_and_needs_a_restart() {
        let before = config(
            r#"
            [apps.demo.functions.square]
            backend = "exec"
            command = ["python3", "square.py"]
            [apps.demo.functions.gone]
            backend = "exec"
            command = ["python3", "gone.py"]
            [apps.demo.functions.same]
            backend = "exec"
            command = ["python3", "same.py"]
        "#,
        );
        let after = config(
            r#"
            [rate_limit]
            requests_per_second = 5
            burst = 5
            [apps.demo.functions.square]
            backend = "exec"
            command = ["python3", "square.py"]
            timeout = "5s"
            [apps.demo.functions.same]
            backend = "exec"
            # comments and layout do not count
            command = [ "python3",  "same.py" ]
            [apps.demo.functions.cube]
            backend = "exec"
            command = ["python3", "cube.py"]
        "#,
        );
        let changes = preview(&before, &after);
        assert_eq!(changes.added, ["demo/cube"]);
        assert_eq!(changes.changed, ["demo/square"]);
        assert_eq!(changes.removed, ["demo/gone"]);
        assert_eq!(changes.restart_needed, ["[rate_limit]"]);
        assert!(preview(&after, &after).is_empty());
    }
}
