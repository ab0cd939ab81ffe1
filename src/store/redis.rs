//! The Redis store: one Redis shared by any number of gateway replicas.
//! Every change that must be atomic is one Lua script (`redis/*.lua`), run
//! by `EVALSHA` over one multiplexed connection that reconnects by itself;
//! replicas learn what the others did from one pub/sub channel.
//!
//! Keys (`P` is `[store] prefix`, default `fngate:`; nothing else is
//! written):
//!
//! | key | type | holds |
//! |-----|------|-------|
//! | `P call:{id}` | hash | a call: the embedded store's columns as fields |
//! | `P queue:{app}/{function}` | stream, group `dispatch` | pending calls in spawn order (field `id`); each replica reads as consumer `{replica id}` and acks at once |
//! | `P pending` | string | how many calls are pending (`max_pending` bounds it) |
//! | `P leases` | sorted set | what runs, by id (a call's, or `{map id}-{index}` for a map input), scored by when its lease lapses (ms, Redis' clock) |
//! | `P expiry` | sorted set | ended calls by when their retention ends (ms); the sweep deletes them and their keys |
//! | `P states` | hash | calls per state code, kept by the scripts (for `/_/metrics`) |
//! | `P idem:{app}/{function}/{owner}/{key}` | string | the call an `Idempotency-Key` made |
//! | `P map:{id}:inputs` | hash | a spawned map's inputs: `{index}:s` state, `:a` attempt, `:in` arguments, `:out` outcome |
//! | `P map:{id}:running` | set | the indexes of its running inputs |
//! | `P map:{id}:pending` | list | its pending inputs' indexes, lowest first |
//! | `P maps` | set | maps with open inputs |
//! | `P deliveries` | sorted set | webhook deliveries by call id, scored by when the next attempt is due (ms) |
//! | `P delivery:{id}` | hash | a delivery's `url` and `attempts` |
//! | `P deploys` | set | every deployed key (`{kind}/{app}/{name}`) |
//! | `P deploy:{kind}/{app}/{name}` | list | its versions, oldest first (JSON) |
//! | `P secret` | string | the key call tokens are signed with |
//! | `P events` | pub/sub channel | what replicas tell each other (see [`Event`]) |
//!
//! A replica that claims a call leases it for `claim_timeout` and extends
//! the lease while the call runs (every third of it); a lease that lapses
//! (its replica died, or lost Redis for that long) puts the call back in
//! its queue, and whoever claims it next runs it with `attempt` + 1. A
//! call ends once: the end is written only while the call is running.

mod calls;
mod deliveries;
mod deploys;
mod leases;
mod maps;
mod record;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::map::{ClaimedInput, InputEnded, MapInput, MapProgress, OpenMap, StoredInput};
use super::{
    BoxFuture, CallRecord, CallState, CallStore, Cancelled, Due, Inserted, NewCall, Outcome,
    PendingCounts, StoreError, StoreEvent, StoreHealth, TakenOver,
};
use crate::config::OverlayKey;
use crate::store::deploys::{DeployVersion, DeployedTable};

/// How long a command waits for Redis before it fails (a spawn then
/// answers 503): a Redis that is down must not hold requests.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long connecting may take, at start-up and on each reconnect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How many events a slow replica may fall behind before it resyncs.
const EVENT_BUFFER: usize = 4096;

/// Where the store is and how it behaves.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub prefix: String,
    pub claim_timeout: Duration,
}

/// The names of the store's keys, each starting with the prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// `{prefix}{rest}`.
    pub(crate) fn key(&self, rest: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + rest.len());
        key.push_str(&self.prefix);
        key.push_str(rest);
        key
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn call(&self, id: &str) -> String {
        self.key(&format!("call:{id}"))
    }

    pub(crate) fn queue(&self, app: &str, function: &str) -> String {
        self.key(&format!("queue:{app}/{function}"))
    }

    pub(crate) fn events(&self) -> String {
        self.key("events")
    }
}

/// What replicas publish on `P events`: one letter, a space, and its
/// subject. Scripts publish them (see the `.lua` files).
pub(crate) struct Event;

impl Event {
    /// `p {app}/{function}`, `e {id}`, `c {id}`, `m {id}`, `d`.
    pub(crate) fn parse(message: &str) -> Option<StoreEvent> {
        let (kind, subject) = message.split_once(' ').unwrap_or((message, ""));
        Some(match kind {
            "p" => {
                let (app, function) = subject.split_once('/')?;
                StoreEvent::Pending {
                    app: app.to_owned(),
                    function: function.to_owned(),
                }
            }
            "e" => StoreEvent::Ended(subject.to_owned()),
            "c" => StoreEvent::Cancelled(subject.to_owned()),
            "m" => StoreEvent::MapPending(subject.to_owned()),
            "d" => StoreEvent::Deployed,
            _ => return None,
        })
    }
}

pub struct RedisStore {
    /// Multiplexed, pipelined, reconnecting: cloned per command.
    connection: ConnectionManager,
    pub(crate) keys: Keys,
    /// This replica's name as a consumer of the queues (random per process).
    pub(crate) replica: String,
    pub(crate) claim_timeout: Duration,
    /// Pending calls as the last script that changed them answered.
    pub(crate) pending: AtomicU64,
    /// The attempt of each call this replica runs.
    pub(crate) runs: Runs,
    health: StoreHealth,
    events: broadcast::Sender<StoreEvent>,
    /// Stops the event subscriber when the store is dropped.
    _subscriber: tokio_util::sync::DropGuard,
}

impl RedisStore {
    /// Connects to Redis (failing after a few seconds when it cannot),
    /// reads the pending count and starts listening for other replicas'
    /// events.
    pub async fn open(settings: &RedisSettings) -> Result<Arc<RedisStore>, StoreError> {
        let named = |why: String| StoreError::Io(format!("redis at {}: {why}", settings.url));
        let client =
            redis::Client::open(settings.url.as_str()).map_err(|e| named(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let connection = tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| named("no answer".to_owned()))?
        .map_err(|e| named(e.to_string()))?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let stop = CancellationToken::new();
        let store = Arc::new(RedisStore {
            connection,
            keys: Keys::new(&settings.prefix),
            replica: format!("r-{}", crate::invocation::random_hex::<8>()),
            claim_timeout: settings.claim_timeout,
            pending: AtomicU64::new(0),
            runs: Runs::default(),
            health: StoreHealth::default(),
            events: events.clone(),
            _subscriber: stop.clone().drop_guard(),
        });
        store
            .refresh_pending()
            .await
            .map_err(|e| named(e.to_string()))?;
        tokio::spawn(subscribe(client, store.keys.events(), events, stop));
        Ok(store)
    }

    /// A handle on the shared connection for one command or script.
    pub(crate) fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// Notes the pending count a script answered.
    pub(crate) fn set_pending(&self, pending: i64) {
        self.pending
            .store(u64::try_from(pending).unwrap_or(0), Ordering::Release);
    }

    /// Reads the pending count again (other replicas change it too).
    pub(crate) async fn refresh_pending(&self) -> Result<(), StoreError> {
        let count: Option<i64> = redis::cmd("GET")
            .arg(self.keys.key("pending"))
            .query_async(&mut self.connection())
            .await
            .map_err(store_error)?;
        self.set_pending(count.unwrap_or(0));
        Ok(())
    }
}

/// The attempt of each call this replica runs (claimed, or adopted), so
/// that its end is recorded only while the call is still on that attempt:
/// a replica whose lease lapsed (it was cut off, or too slow to extend
/// it) and whose call another replica claimed again must not end it with
/// the earlier run's outcome.
#[derive(Debug, Default)]
pub(crate) struct Runs(dashmap::DashMap<String, u32>);

impl Runs {
    pub(crate) fn started(&self, id: &str, attempt: u32) {
        self.0.insert(id.to_owned(), attempt);
    }

    pub(crate) fn retried(&self, id: &str) {
        if let Some(mut attempt) = self.0.get_mut(id) {
            *attempt += 1;
        }
    }

    /// The attempt this replica runs `id` on; 0 for a call it did not
    /// claim (its end is then recorded whatever the attempt).
    pub(crate) fn attempt(&self, id: &str) -> u32 {
        self.0.get(id).map_or(0, |attempt| *attempt)
    }

    pub(crate) fn ended(&self, id: &str) {
        self.0.remove(id);
    }
}

/// A Redis failure as the store's: one that a reconnect can clear (down,
/// refused, timed out, dropped, loading its AOF) may clear by itself.
pub(crate) fn store_error(error: redis::RedisError) -> StoreError {
    let transient = error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || matches!(
            error.kind(),
            redis::ErrorKind::Server(
                redis::ServerErrorKind::BusyLoading
                    | redis::ServerErrorKind::TryAgain
                    | redis::ServerErrorKind::ClusterDown
                    | redis::ServerErrorKind::MasterDown
                    | redis::ServerErrorKind::ReadOnly
            )
        );
    if transient {
        StoreError::Unavailable(format!("redis: {error}"))
    } else {
        StoreError::Io(format!("redis: {error}"))
    }
}

/// Listens on `channel` until `stop`, reconnecting after a lost connection
/// (then telling everyone to resync: events may have been missed).
async fn subscribe(
    client: redis::Client,
    channel: String,
    events: broadcast::Sender<StoreEvent>,
    stop: CancellationToken,
) {
    use futures_util::StreamExt;
    let mut delay = Duration::from_millis(100);
    let mut lost = false;
    loop {
        let connected = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::select! {
            connected = tokio::time::timeout(CONNECT_TIMEOUT, connected) => connected,
            () = stop.cancelled() => return,
        };
        match pubsub {
            Ok(Ok(pubsub)) => {
                delay = Duration::from_millis(100);
                if lost {
                    tracing::info!("redis events: connected again");
                    let _ = events.send(StoreEvent::Resync);
                }
                let mut messages = pubsub.into_on_message();
                loop {
                    let message = tokio::select! {
                        message = messages.next() => message,
                        () = stop.cancelled() => return,
                    };
                    let Some(message) = message else { break };
                    let Ok(text) = message.get_payload::<String>() else {
                        continue;
                    };
                    if let Some(event) = Event::parse(&text) {
                        let _ = events.send(event);
                    }
                }
                tracing::warn!("redis events: connection lost; reconnecting");
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "redis events: cannot subscribe; retrying"),
            Err(_) => tracing::warn!("redis events: no answer; retrying"),
        }
        lost = true;
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

impl CallStore for RedisStore {
    fn insert(&self, call: NewCall) -> BoxFuture<'_, Result<Inserted, StoreError>> {
        Box::pin(self.insert_call(call))
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<CallRecord>, StoreError>> {
        Box::pin(self.get_call(id))
    }

    fn claim_batch<'a>(
        &'a self,
        app: &'a str,
        function: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<CallRecord>, StoreError>> {
        Box::pin(self.claim_calls(app, function, limit))
    }

    fn has_pending<'a>(
        &'a self,
        app: &'a str,
        function: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.queue_has_pending(app, function))
    }

    fn pending(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }

    fn finish(
        &self,
        id: String,
        outcome: Outcome,
        expires_ms: i64,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(self.finish_call(id, outcome, expires_ms))
    }

    fn cancel(
        &self,
        id: String,
        now_ms: i64,
        expires_ms: i64,
    ) -> BoxFuture<'_, Result<Cancelled, StoreError>> {
        Box::pin(self.cancel_call(id, now_ms, expires_ms))
    }

    fn requeue(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(self.requeue_call(id))
    }

    fn retrying(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(self.call_retrying(id))
    }

    fn recover(&self) -> BoxFuture<'_, Result<PendingCounts, StoreError>> {
        Box::pin(self.pending_counts())
    }

    fn sweep(&self, now_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.sweep_expired(now_ms))
    }

    fn due_deliveries(&self, now_ms: i64, limit: usize) -> BoxFuture<'_, Result<Due, StoreError>> {
        Box::pin(self.take_due_deliveries(now_ms, limit))
    }

    fn delivery_attempted(
        &self,
        call_id: String,
        attempts: u32,
        retry_at: Option<i64>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.record_delivery_attempt(call_id, attempts, retry_at))
    }

    fn health(&self) -> &StoreHealth {
        &self.health
    }

    fn insert_map(
        &self,
        call: NewCall,
        inputs: Vec<MapInput>,
        expires_ms: i64,
    ) -> BoxFuture<'_, Result<Inserted, StoreError>> {
        Box::pin(self.insert_map_call(call, inputs, expires_ms))
    }

    fn claim_inputs(
        &self,
        id: String,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ClaimedInput>, StoreError>> {
        Box::pin(self.claim_map_inputs(id, limit))
    }

    fn finish_input(
        &self,
        id: String,
        index: u64,
        outcome: Outcome,
        expires_ms: i64,
    ) -> BoxFuture<'_, Result<InputEnded, StoreError>> {
        Box::pin(self.finish_map_input(id, index, outcome, expires_ms))
    }

    fn input_retrying(&self, id: String, index: u64) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(self.map_input_retrying(id, index))
    }

    fn map_progress(&self, id: String) -> BoxFuture<'_, Result<MapProgress, StoreError>> {
        Box::pin(self.read_map_progress(id))
    }

    fn map_page(
        &self,
        id: String,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredInput>, StoreError>> {
        Box::pin(self.read_map_page(id, from, limit))
    }

    fn open_maps(&self) -> BoxFuture<'_, Result<Vec<OpenMap>, StoreError>> {
        Box::pin(self.read_open_maps())
    }

    fn count_by_state(&self) -> BoxFuture<'_, Result<Vec<(CallState, u64)>, StoreError>> {
        Box::pin(self.read_state_counts())
    }

    fn record_deploy(
        &self,
        key: OverlayKey,
        table: DeployedTable,
        created_ms: i64,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.push_deploy(key, table, created_ms))
    }

    fn deploy_versions(
        &self,
        key: OverlayKey,
    ) -> BoxFuture<'_, Result<Vec<DeployVersion>, StoreError>> {
        Box::pin(self.read_deploy_versions(key))
    }

    fn latest_deploys(&self) -> BoxFuture<'_, Result<Vec<DeployVersion>, StoreError>> {
        Box::pin(self.read_latest_deploys())
    }

    fn events(&self) -> Option<broadcast::Receiver<StoreEvent>> {
        Some(self.events.subscribe())
    }

    fn lease_every(&self) -> Option<Duration> {
        Some(self.claim_timeout / 3)
    }

    fn heartbeat(&self, running: Vec<String>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.extend_leases(running))
    }

    fn take_over(&self) -> BoxFuture<'_, Result<TakenOver, StoreError>> {
        Box::pin(self.take_over_lapsed())
    }

    fn shared_secret(&self) -> BoxFuture<'_, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(self.read_shared_secret())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_back_what_scripts_publish() {
        assert_eq!(
            Event::parse("p demo/square"),
            Some(StoreEvent::Pending {
                app: "demo".into(),
                function: "square".into()
            })
        );
        assert_eq!(
            Event::parse("p demo/Model.predict"),
            Some(StoreEvent::Pending {
                app: "demo".into(),
                function: "Model.predict".into()
            })
        );
        assert_eq!(
            Event::parse("e fc-1"),
            Some(StoreEvent::Ended("fc-1".into()))
        );
        assert_eq!(
            Event::parse("c fc-1"),
            Some(StoreEvent::Cancelled("fc-1".into()))
        );
        assert_eq!(
            Event::parse("m fc-1"),
            Some(StoreEvent::MapPending("fc-1".into()))
        );
        assert_eq!(Event::parse("d"), Some(StoreEvent::Deployed));
        assert_eq!(Event::parse("x what"), None);
        assert_eq!(Event::parse("p nothing"), None);
    }

    #[test]
    fn every_key_starts_with_the_prefix() {
        let keys = Keys::new("team-a:");
        assert_eq!(keys.call("fc-1"), "team-a:call:fc-1");
        assert_eq!(keys.queue("demo", "square"), "team-a:queue:demo/square");
        assert_eq!(keys.events(), "team-a:events");
        assert_eq!(keys.key("pending"), "team-a:pending");
    }
}
