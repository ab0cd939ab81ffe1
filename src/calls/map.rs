//! Spawned maps (`POST .../map/spawn`): accepting one (the map and every
//! input stored in one write before the 202), running its inputs as
//! spawned work of its function, and recording each input's end.
//!
//! One task per map takes its pending inputs from the store in batches,
//! as slots free up (taken as spawned calls take them, so sync callers are
//! never starved), and runs each in its slot in a task of its own, which
//! retries it as the function's `retries` say and stores its outcome. The
//! map's task ends once no input is left pending; the map ends with its
//! last input's outcome. Memory holds only the inputs running now.
//!
//! Each run is an invocation whose call id is the map's id with the
//! input's index (`fc-...-17`), so its instance can be stopped on cancel
//! and the calls it makes name it as their parent.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::dispatch::Slot;
use crate::invocation::CallId;
use crate::registry::{Function, Lookup};
use crate::store::map::{ClaimedInput, MapInput};
use crate::store::{CallRecord, CallState, Inserted, NewCall, Outcome, StoreError, now_ms};

use super::execute::Run;
use super::retry::{self, Pause};
use super::{Accepted, Calls, SpawnError, SpawnOptions};

/// Most inputs a map's task takes from the store in one write.
const CLAIM_BATCH: usize = 128;

impl Calls {
    /// Stores a map of `function` over `inputs` (each already read: its
    /// arguments, or the problem that refused it); durable when this
    /// returns, and its inputs start to run.
    pub async fn spawn_map(
        self: &Arc<Self>,
        function: &Arc<Function>,
        inputs: Vec<MapInput>,
        options: SpawnOptions,
    ) -> Result<Accepted, SpawnError> {
        if self.store.pending() >= self.config.max_pending {
            return Err(SpawnError::BacklogFull);
        }
        let id = CallId::generate().to_string();
        let call = NewCall {
            id: id.clone(),
            app: function.app.to_string(),
            function: function.key.to_string(),
            args: "[]".to_owned(),
            kwargs: "{}".to_owned(),
            forward: None,
            owner: options.owner,
            principal: options.principal,
            parameters: options.parameters,
            origin: options.origin,
            idempotency: options.idempotency,
            callback_url: options.callback_url,
            state: CallState::Pending,
            from_sync: false,
            created_ms: now_ms(),
        };
        // In a task of its own, as a spawn's insert: a client that goes
        // away mid-write must not leave a stored map that nobody runs.
        let calls = self.clone();
        let runs = function.clone();
        let map_id = id.clone();
        let inserted = tokio::spawn(async move {
            let inserted = calls
                .store
                .insert_map(call, inputs, calls.expires_ms())
                .await;
            if let Ok(Inserted::Created) = &inserted {
                calls.start_map(runs, map_id);
            }
            inserted
        })
        .await
        .map_err(|e| StoreError::Io(format!("storing a map: {e}")))??;
        match inserted {
            Inserted::Created => Ok(Accepted {
                id,
                state: CallState::Pending,
            }),
            // Its key made a map of the same inputs: that map.
            Inserted::Existing {
                record,
                same_request: true,
            } if record.map_inputs.is_some() => Ok(Accepted {
                id: record.id,
                state: record.state,
            }),
            Inserted::Existing { .. } => Err(SpawnError::IdempotencyMismatch),
        }
    }

    /// At start-up: the maps a previous process left with open inputs run on.
    pub(super) async fn resume_maps(self: &Arc<Self>) -> Result<(), StoreError> {
        let open = self.store.open_maps().await?;
        if !open.is_empty() {
            tracing::info!(
                maps = open.len(),
                "spawned maps with open inputs found in the store"
            );
        }
        for map in open {
            let registry = self.registry.current();
            match registry.lookup_key(&map.app, &map.function) {
                Lookup::Found(function) => self.start_map(function.clone(), map.id),
                Lookup::NoApp | Lookup::NoFunction => tracing::warn!(
                    call_id = %map.id, app = %map.app, function = %map.function,
                    "a spawned map's function is no longer deployed; its inputs wait"
                ),
            }
        }
        Ok(())
    }

    /// Runs map `id`'s pending inputs, in a task given the grace period:
    /// one task per map in this process. Asked again while its task runs
    /// (another replica's inputs came back, or the map was announced
    /// twice), that task looks once more before it ends.
    pub(super) fn start_map(self: &Arc<Self>, function: Arc<Function>, id: String) {
        use dashmap::mapref::entry::Entry;
        use std::sync::atomic::{AtomicBool, Ordering};
        match self.maps_here.entry(id.clone()) {
            Entry::Occupied(again) => return again.get().store(true, Ordering::Release),
            Entry::Vacant(slot) => {
                slot.insert(Arc::new(AtomicBool::new(false)));
            }
        }
        let calls = self.clone();
        self.tasks.spawn(async move {
            loop {
                calls.clone().run_map(function.clone(), id.clone()).await;
                // Removed unless asked again meanwhile (under the entry's
                // lock, so a request from now on starts a new task).
                let not_asked_again =
                    |_: &String, again: &Arc<AtomicBool>| !again.swap(false, Ordering::AcqRel);
                if calls.maps_here.remove_if(&id, not_asked_again).is_some() {
                    return;
                }
                if calls.stopping.is_cancelled() {
                    calls.maps_here.remove(&id);
                    return;
                }
            }
        });
    }

    /// Takes the map's pending inputs as slots allow (twice as many as the
    /// last round took, up to `CLAIM_BATCH`) and runs each in its slot,
    /// until none is left pending, the map is cancelled or the gateway
    /// stops.
    async fn run_map(self: Arc<Self>, function: Arc<Function>, id: String) {
        let map = match self.store.get(&id).await {
            Ok(Some(record)) => Arc::new(record),
            Ok(None) => return,
            Err(e) => {
                tracing::error!(call_id = %id, error = %e, "cannot read a spawned map; it runs after a restart");
                return;
            }
        };
        if map.state.is_finished() {
            // Nothing to run (no input, or all refused): it ended when stored.
            return self.announce_end(&id);
        }
        let stop = CancellationToken::new();
        self.running.track(
            id.clone(),
            stop.clone(),
            &self.registry.current(),
            &map.app,
            &map.function,
        );
        let map_id: Arc<str> = Arc::from(id.as_str());
        let mut want = 1;
        loop {
            let slots = tokio::select! {
                slots = function.limiter.acquire_background_many(want) => slots,
                () = stop.cancelled() => break,
                () = self.stopping.cancelled() => break,
            };
            let asked = slots.len();
            let claimed = match self.store.claim_inputs(id.clone(), asked).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    drop(slots);
                    tracing::error!(call_id = %id, error = %e, "cannot take a map's pending inputs");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = stop.cancelled() => break,
                        () = self.stopping.cancelled() => break,
                    }
                }
            };
            let took = claimed.len();
            for (input, slot) in claimed.into_iter().zip(slots) {
                let index = input.index;
                let record = input_record(&map, input);
                // Tracked before its task starts, so a cancel from now on reaches it.
                let input_stop = stop.child_token();
                self.running.track(
                    record.id.clone(),
                    input_stop.clone(),
                    &self.registry.current(),
                    &map.app,
                    &map.function,
                );
                let run = self.clone().run_input(
                    function.clone(),
                    map_id.clone(),
                    index,
                    record,
                    slot,
                    input_stop,
                );
                self.tasks.spawn(run);
            }
            // Fewer than asked: none is left pending (the slots left over are freed).
            if took < asked {
                break;
            }
            want = (took * 2).clamp(1, CLAIM_BATCH);
        }
        // A cancel from now on reaches the inputs' runs by their own ids.
        self.running.forget(&id);
    }

    /// Runs one input in `slot` until it ends (again after a failure while
    /// the function's `retries` allow, no slot held through the pause) and
    /// records its outcome; a cancel or the gateway's stop ends it with
    /// nothing recorded (the cancel has; a stop leaves it to the next start).
    async fn run_input(
        self: Arc<Self>,
        function: Arc<Function>,
        map_id: Arc<str>,
        index: u64,
        mut record: CallRecord,
        slot: Slot,
        stop: CancellationToken,
    ) {
        let mut _slot = Some(slot);
        let outcome = loop {
            let outcome = match self.run_once(&function, &record, &stop).await {
                Some(Run::Ended(outcome)) => outcome,
                // Its instance was lost: it runs again at once, in its slot.
                Some(Run::Lost) => {
                    if !self.count_input(&map_id, index, &stop).await {
                        return self.running.forget(&record.id);
                    }
                    record.attempt += 1;
                    continue;
                }
                // Cancelled: the cancel has recorded it.
                None => return self.running.forget(&record.id),
            };
            _slot = None;
            let policy = function.spec.retries.as_ref();
            let Some(delay) = retry::retry_delay(policy, record.attempt, &outcome) else {
                break outcome;
            };
            tracing::info!(call_id = %map_id, index, attempt = record.attempt, "a map input's run failed or timed out; it runs again after its backoff");
            if retry::pause(delay, &stop, &self.stopping).await != Pause::Elapsed {
                return self.running.forget(&record.id);
            }
            _slot = tokio::select! {
                slot = function.limiter.acquire_background() => Some(slot),
                () = stop.cancelled() => return self.running.forget(&record.id),
                () = self.stopping.cancelled() => return self.running.forget(&record.id),
            };
            if !self.count_input(&map_id, index, &stop).await {
                return self.running.forget(&record.id);
            }
            record.attempt += 1;
        };
        drop(_slot);
        self.running.forget(&record.id);
        self.record_input_end(&map_id, index, stored(outcome)).await;
    }

    /// Counts an input's next attempt in the store; false when it is no
    /// longer running, on a stop, or when the store is gone.
    async fn count_input(&self, id: &str, index: u64, stop: &CancellationToken) -> bool {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.store.input_retrying(id.to_owned(), index).await {
                Ok(running) => return running,
                Err(StoreError::Closed | StoreError::Broken(_)) => return false,
                Err(e) => {
                    tracing::error!(call_id = id, index, error = %e, "cannot count a map input's attempt; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = stop.cancelled() => return false,
                        () = self.stopping.cancelled() => return false,
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Stores an input's outcome, retrying a store that cannot write now;
    /// the map's end, when it was the last, is announced.
    async fn record_input_end(&self, id: &str, index: u64, outcome: Outcome) {
        let mut delay = Duration::from_millis(100);
        loop {
            let write =
                self.store
                    .finish_input(id.to_owned(), index, outcome.clone(), self.expires_ms());
            match write.await {
                Ok(ended) => {
                    if ended.map_ended {
                        self.announce_end(id);
                    }
                    return;
                }
                // It runs again after a restart on a good store.
                Err(StoreError::Closed | StoreError::Broken(_)) => return,
                Err(e) => {
                    tracing::error!(call_id = id, index, error = %e, "cannot record a map input's end; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// The record an input's runs are made from: the map's (who made it,
/// its class parameters, origin), with the input's id, arguments and
/// attempt.
fn input_record(map: &CallRecord, input: ClaimedInput) -> CallRecord {
    CallRecord {
        id: format!("{}-{}", map.id, input.index),
        args: input.args,
        kwargs: input.kwargs,
        attempt: input.attempt,
        callback_url: None,
        from_sync: false,
        outcome: None,
        map_inputs: None,
        ..map.clone()
    }
}

/// An input's outcome as stored: a streaming function's items (kept as
/// NDJSON by its run) become one JSON array, as in a sync map.
fn stored(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Answered { body, .. } => {
            let mut array = Vec::with_capacity(body.len() + 2);
            array.push(b'[');
            for (i, line) in body
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .enumerate()
            {
                if i > 0 {
                    array.push(b',');
                }
                array.extend_from_slice(line);
            }
            array.push(b']');
            Outcome::Succeeded(array)
        }
        other => other,
    }
}
