//! What starts a reload: SIGHUP, or a change of the configuration file or
//! of the certificate files (watched through their folders, so that an
//! editor's or a deploy tool's rename-over counts as a change).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Reloader;
use crate::config::{Config, TlsSource};

/// Changes closer together than this are one reload: an editor writes a
/// file in steps, and a certificate and its key change together.
const SETTLE: Duration = Duration::from_millis(200);

/// What starts reloads, set up before the gateway says it listens: a
/// SIGHUP that comes before its handler would end the process.
pub struct Triggers {
    hangups: Option<tokio::signal::unix::Signal>,
    changed: mpsc::Sender<()>,
    changes: mpsc::Receiver<()>,
    /// Dropped (and the folders unwatched) with the triggers.
    watcher: Option<notify::RecommendedWatcher>,
}

impl Triggers {
    /// Listens for SIGHUP and watches `config`'s files. Needs a runtime.
    pub fn install(config: &Config) -> Triggers {
        let hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signals) => Some(signals),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reloads follow file changes only");
                None
            }
        };
        let (changed, changes) = mpsc::channel::<()>(1);
        let watcher = watch_files(config, changed.clone());
        Triggers {
            hangups,
            changed,
            changes,
            watcher,
        }
    }
}

/// Reloads on SIGHUP and on file changes until `shutdown`.
pub async fn reload_on_changes(
    reloader: Arc<Reloader>,
    triggers: Triggers,
    shutdown: CancellationToken,
) {
    let Triggers {
        mut hangups,
        changed,
        mut changes,
        watcher: mut _watcher,
    } = triggers;
    let mut count: u64 = 0;
    loop {
        let hangup = async {
            match hangups.as_mut() {
                Some(signals) => signals.recv().await,
                None => std::future::pending().await,
            }
        };
        let why = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = hangup => "SIGHUP",
            _ = changes.recv() => {
                // Let the rest of a change arrive, then take it as one.
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(SETTLE) => {}
                }
                while changes.try_recv().is_ok() {}
                "a file changed"
            }
        };
        count += 1;
        match reloader.reload().await {
            Ok(changes) => {
                tracing::info!(
                    reload = count,
                    why,
                    added = ?changes.added,
                    changed = ?changes.changed,
                    removed = ?changes.removed,
                    "configuration reloaded"
                );
                if !changes.restart_needed.is_empty() {
                    tracing::warn!(
                        reload = count,
                        sections = ?changes.restart_needed,
                        "these sections changed and take effect at the next restart"
                    );
                }
                // The certificate files may have moved.
                _watcher = watch_files(&reloader.serving(), changed.clone());
            }
            Err(e) => tracing::error!(
                reload = count,
                why,
                "reload refused, the previous configuration keeps serving: {e}"
            ),
        }
    }
}

/// Watches the folders of the configuration file and of the certificate
/// files, and sends on `changed` when one of those files changes.
fn watch_files(config: &Config, changed: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let mut files: BTreeSet<PathBuf> = BTreeSet::new();
    files.insert(absolute(&config.file));
    match &config.server.tls {
        TlsSource::Files { cert, key } => {
            files.insert(absolute(cert));
            files.insert(absolute(key));
        }
        // The dev certificate is fngate's own: renewed at start-up.
        TlsSource::Dev { .. } => {}
    }
    if let Some(ca) = &config.server.client_ca {
        files.insert(absolute(ca));
    }
    let folders: BTreeSet<PathBuf> = files
        .iter()
        .filter_map(|file| file.parent().map(Path::to_owned))
        .collect();
    let watched = files.clone();
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        if event.paths.iter().any(|path| watched.contains(path)) {
            // Full: a reload is due already.
            let _ = changed.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the configuration files; reload with SIGHUP");
            return None;
        }
    };
    for folder in &folders {
        if let Err(e) = watcher.watch(folder, RecursiveMode::NonRecursive) {
            tracing::warn!(folder = %folder.display(), error = %e, "cannot watch this folder; reload with SIGHUP");
        }
    }
    Some(watcher)
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}
