//! Unit tests of spawned calls that need the inside of `Calls`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::backend::http::HttpClients;
use crate::config::Config;
use crate::registry::{Function, Lookup, Registry};
use crate::store::CallState;
use crate::store::embedded::EmbeddedStore;
use crate::translate::Arguments;

use super::{Calls, CallsConfig, SpawnInput, SpawnOptions};

/// `Calls` of one exec function `t/echo`, with its store in `dir`.
fn calls(dir: &std::path::Path) -> (Arc<Calls>, Arc<Function>) {
    let text = r#"
        [apps.t.functions.echo]
        backend = "exec"
        command = ["sh", "-c", "cat > /dev/null; echo 1"]
    "#;
    calls_of(dir, text, "echo")
}

/// `Calls` of the functions of app `t` in the config `text`, with its
/// store in `dir`, and its function `name`.
pub(super) fn calls_of(
    dir: &std::path::Path,
    text: &str,
    name: &str,
) -> (Arc<Calls>, Arc<Function>) {
    let config = Config::from_toml(&dir.join("gateway.toml"), text).unwrap();
    let registry =
        crate::registry::LiveRegistry::new(Registry::from_config(&config, &HttpClients::new()));
    let current = registry.current();
    let Lookup::Found(function) = current.lookup("t", name) else {
        panic!("t/{name} is deployed");
    };
    let function = function.clone();
    let store = Arc::new(EmbeddedStore::open(&config.store.path).unwrap());
    let settings = CallsConfig {
        result_ttl: Duration::from_secs(60),
        max_pending: 1000,
        max_wait: Duration::from_secs(30),
    };
    (Arc::new(Calls::new(store, registry, settings)), function)
}

fn no_arguments() -> SpawnInput {
    SpawnInput::Arguments(Arguments::none())
}

#[tokio::test]
async fn a_spawn_whose_client_left_mid_write_still_runs_and_so_do_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (calls, function) = calls(dir.path());
    let shutdown = CancellationToken::new();
    let dispatching = tokio::spawn(calls.clone().run(shutdown.clone(), Duration::ZERO));
    // A first call that ran: the dispatcher is at work.
    let first = calls
        .spawn(&function, no_arguments(), SpawnOptions::default())
        .await
        .unwrap();
    let record = calls.status(&first.id, Duration::from_secs(20)).await;
    assert_eq!(record.unwrap().unwrap().state, CallState::Succeeded);
    // Polled once, the spawn has handed its call to the store; then its
    // client goes away and the spawn's future is dropped, as a server
    // drops a request's future when its connection closes.
    let left = calls
        .spawn(&function, no_arguments(), SpawnOptions::default())
        .now_or_never();
    assert!(left.is_none(), "the spawn was still storing its call");
    let later = calls
        .spawn(&function, no_arguments(), SpawnOptions::default())
        .await
        .unwrap();
    let record = calls
        .status(&later.id, Duration::from_secs(20))
        .await
        .unwrap()
        .expect("the call is stored");
    assert_eq!(record.state, CallState::Succeeded, "{record:?}");
    // The call whose client left ran as well: nothing is left pending.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while calls.store.has_pending("t", "echo").await.unwrap() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a call stays pending"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(calls.store.pending(), 0);
    shutdown.cancel();
    dispatching.await.unwrap().unwrap();
}
