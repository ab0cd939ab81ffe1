//! Calls in Redis: storing one (with its idempotency key), reading it,
//! claiming pending ones from their function's queue, and the writes of
//! a call's life (end, cancel, requeue, retry), each one script.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::{Script, Value};

use super::super::{
    CallRecord, CallState, Cancelled, Inserted, NewCall, Outcome, PendingCounts, now_ms,
};
use super::record::{
    OUTCOME_FIELDS, ended_state, new_call_fields, outcome_fields, record_from_fields, state_code,
    state_of,
};
use super::{RedisStore, StoreError, store_error};

/// The helpers every call and lease script starts with.
const COMMON: &str = include_str!("call_common.lua");

/// A script with the shared helpers in front of it.
pub(super) fn script(body: &str) -> Script {
    Script::new(&[COMMON, body].concat())
}

static INSERT: LazyLock<Script> = LazyLock::new(|| script(include_str!("call_insert.lua")));
static CLAIM: LazyLock<Script> = LazyLock::new(|| script(include_str!("call_claim.lua")));
static FINISH: LazyLock<Script> = LazyLock::new(|| script(include_str!("call_finish.lua")));
static CANCEL: LazyLock<Script> = LazyLock::new(|| script(include_str!("call_cancel.lua")));
static REQUEUE: LazyLock<Script> = LazyLock::new(|| script(include_str!("call_requeue.lua")));
static RETRYING: LazyLock<Script> = LazyLock::new(|| script(include_str!("call_retrying.lua")));
static SWEEP: LazyLock<Script> = LazyLock::new(|| script(include_str!("call_sweep.lua")));

/// Most expired calls one sweep script deletes: each script is short, so
/// a big sweep never holds Redis (and every replica) for long.
const SWEEP_BATCH: i64 = 500;

/// Most calls one claim asks for (a Lua number holds it exactly).
const MOST_CLAIMED: usize = 1 << 40;

impl RedisStore {
    pub(super) async fn insert_call(&self, call: NewCall) -> Result<Inserted, StoreError> {
        let mut invocation = INSERT.prepare_invoke();
        invocation.key(self.keys.call(&call.id));
        let digest = match &call.idempotency {
            Some((key, digest)) => {
                invocation.key(self.idempotency_key(&call, key));
                digest.clone()
            }
            None => Vec::new(),
        };
        invocation
            .arg(self.keys.prefix())
            .arg(&call.id)
            .arg(now_ms())
            .arg(self.claim_timeout_ms())
            .arg(digest);
        for (name, value) in new_call_fields(&call) {
            invocation.arg(name).arg(value);
        }
        let answer = invocation
            .invoke_async::<Value>(&mut self.connection())
            .await
            .map_err(store_error)?;
        let mut answer = items(answer, "insert")?.into_iter();
        match answer.next().as_ref().and_then(int) {
            Some(1) => {
                self.set_pending(answer.next().as_ref().and_then(int).unwrap_or(0));
                if call.state == CallState::Running {
                    self.runs.started(&call.id, 1);
                }
                Ok(Inserted::Created)
            }
            Some(2) => {
                let same_request = answer.next().as_ref().and_then(int) == Some(1);
                let record = answer
                    .next()
                    .and_then(record_of)
                    .ok_or_else(|| unexpected("insert"))?;
                Ok(Inserted::Existing {
                    record: Box::new(record),
                    same_request,
                })
            }
            _ => Err(unexpected("insert")),
        }
    }

    pub(super) async fn get_call(&self, id: &str) -> Result<Option<CallRecord>, StoreError> {
        let fields: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
            .arg(self.keys.call(id))
            .query_async(&mut self.connection())
            .await
            .map_err(store_error)?;
        Ok(record_from_fields(fields))
    }

    pub(super) async fn claim_calls(
        &self,
        app: &str,
        function: &str,
        limit: usize,
    ) -> Result<Vec<CallRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let answer = CLAIM
            .key(self.keys.queue(app, function))
            .arg(self.keys.prefix())
            .arg(&self.replica)
            .arg(limit.min(MOST_CLAIMED))
            .arg(now_ms())
            .arg(self.claim_timeout_ms())
            .invoke_async::<Value>(&mut self.connection())
            .await
            .map_err(store_error)?;
        let mut answer = items(answer, "claim")?.into_iter();
        let pending = answer.next().as_ref().and_then(int);
        self.set_pending(pending.ok_or_else(|| unexpected("claim"))?);
        let records: Vec<CallRecord> = answer
            .map(|fields| record_of(fields).ok_or_else(|| unexpected("claim")))
            .collect::<Result<_, _>>()?;
        for record in &records {
            self.runs.started(&record.id, record.attempt);
        }
        Ok(records)
    }

    pub(super) async fn queue_has_pending(
        &self,
        app: &str,
        function: &str,
    ) -> Result<bool, StoreError> {
        let length: u64 = redis::cmd("XLEN")
            .arg(self.keys.queue(app, function))
            .query_async(&mut self.connection())
            .await
            .map_err(store_error)?;
        Ok(length > 0)
    }

    pub(super) async fn finish_call(
        &self,
        id: String,
        outcome: Outcome,
        expires_ms: i64,
    ) -> Result<bool, StoreError> {
        let fields = outcome_fields(&outcome);
        let mut invocation = FINISH.prepare_invoke();
        invocation
            .key(self.keys.call(&id))
            .arg(self.keys.prefix())
            .arg(&id)
            .arg(state_code(ended_state(&outcome)))
            .arg(now_ms())
            .arg(expires_ms)
            .arg(self.runs.attempt(&id))
            .arg(fields.len());
        for (name, value) in &fields {
            invocation.arg(*name).arg(value.as_slice());
        }
        for name in OUTCOME_FIELDS {
            if !fields.iter().any(|(set, _)| *set == name) {
                invocation.arg(name);
            }
        }
        let finished: i64 = invocation
            .invoke_async(&mut self.connection())
            .await
            .map_err(store_error)?;
        self.runs.ended(&id);
        Ok(finished == 1)
    }

    pub(super) async fn cancel_call(
        &self,
        id: String,
        now_ms: i64,
        expires_ms: i64,
    ) -> Result<Cancelled, StoreError> {
        let answer = CANCEL
            .key(self.keys.call(&id))
            .arg(self.keys.prefix())
            .arg(&id)
            .arg(now_ms)
            .arg(expires_ms)
            .invoke_async::<Value>(&mut self.connection())
            .await
            .map_err(store_error)?;
        let answer: Vec<i64> = items(answer, "cancel")?.iter().filter_map(int).collect();
        let state = |code: Option<&i64>| {
            code.and_then(|code| state_of(*code))
                .ok_or_else(|| unexpected("cancel"))
        };
        self.runs.ended(&id);
        match answer.as_slice() {
            [0] => Ok(Cancelled::NotFound),
            [1, before, pending] => {
                self.set_pending(*pending);
                Ok(Cancelled::Now(state(Some(before))?))
            }
            [2, ended] => Ok(Cancelled::AlreadyFinished(state(Some(ended))?)),
            _ => Err(unexpected("cancel")),
        }
    }

    pub(super) async fn requeue_call(&self, id: String) -> Result<bool, StoreError> {
        let answer = REQUEUE
            .key(self.keys.call(&id))
            .arg(self.keys.prefix())
            .arg(&id)
            .invoke_async::<Value>(&mut self.connection())
            .await
            .map_err(store_error)?;
        let answer: Vec<i64> = items(answer, "requeue")?.iter().filter_map(int).collect();
        match answer.as_slice() {
            [0] => Ok(false),
            [1, pending] => {
                self.set_pending(*pending);
                self.runs.ended(&id);
                Ok(true)
            }
            _ => Err(unexpected("requeue")),
        }
    }

    pub(super) async fn call_retrying(&self, id: String) -> Result<bool, StoreError> {
        let counted: i64 = RETRYING
            .key(self.keys.call(&id))
            .arg(self.keys.prefix())
            .arg(now_ms())
            .invoke_async(&mut self.connection())
            .await
            .map_err(store_error)?;
        if counted == 1 {
            self.runs.retried(&id);
        }
        Ok(counted == 1)
    }

    /// The pending calls per function, from the queues' lengths. Unlike
    /// the embedded store's recover it leaves running calls alone: other
    /// replicas run them, and a dead replica's calls come back through
    /// their lapsed leases (`take_over`).
    pub(super) async fn pending_counts(&self) -> Result<PendingCounts, StoreError> {
        let queues = self.keys.key("queue:");
        let pattern = format!("{}*", glob_escaped(&queues));
        let mut connection = self.connection();
        let mut names: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await
                .map_err(store_error)?;
            names.extend(found);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            // An empty pipeline is no command at all to Redis.
            self.refresh_pending().await?;
            return Ok(Vec::new());
        }
        let mut lengths = redis::pipe();
        for name in &names {
            lengths.cmd("XLEN").arg(name);
        }
        let lengths: Vec<u64> = lengths
            .query_async(&mut connection)
            .await
            .map_err(store_error)?;
        self.refresh_pending().await?;
        Ok(names
            .iter()
            .zip(lengths)
            .filter(|(_, length)| *length > 0)
            .filter_map(|(name, length)| {
                let (app, function) = name.strip_prefix(&queues)?.split_once('/')?;
                Some(((app.to_owned(), function.to_owned()), length))
            })
            .collect())
    }

    pub(super) async fn sweep_expired(&self, now_ms: i64) -> Result<u64, StoreError> {
        let mut deleted = 0;
        loop {
            let answer = SWEEP
                .arg(self.keys.prefix())
                .arg(now_ms)
                .arg(SWEEP_BATCH)
                .invoke_async::<Value>(&mut self.connection())
                .await
                .map_err(store_error)?;
            let answer: Vec<i64> = items(answer, "sweep")?.iter().filter_map(int).collect();
            let [looked_at, swept] = answer[..] else {
                return Err(unexpected("sweep"));
            };
            deleted += u64::try_from(swept).unwrap_or(0);
            if looked_at < SWEEP_BATCH {
                return Ok(deleted);
            }
        }
    }

    pub(super) async fn read_state_counts(&self) -> Result<Vec<(CallState, u64)>, StoreError> {
        let counts: HashMap<String, i64> = redis::cmd("HGETALL")
            .arg(self.keys.key("states"))
            .query_async(&mut self.connection())
            .await
            .map_err(store_error)?;
        let mut counts: Vec<(CallState, u64)> = counts
            .into_iter()
            .filter_map(|(code, count)| {
                let state = state_of(code.parse().ok()?)?;
                Some((state, u64::try_from(count).ok().filter(|n| *n > 0)?))
            })
            .collect();
        counts.sort_unstable_by_key(|(state, _)| state.code());
        Ok(counts)
    }

    /// `P idem:{app}/{function}/{owner or empty}/{key}`: the embedded
    /// store's unique index (app, function, owner, key) as one key.
    fn idempotency_key(&self, call: &NewCall, key: &str) -> String {
        let owner = call.owner.as_deref().unwrap_or_default();
        self.keys.key(&format!(
            "idem:{}/{}/{owner}/{key}",
            call.app, call.function
        ))
    }

    /// The claim timeout in ms, as the scripts take it.
    pub(super) fn claim_timeout_ms(&self) -> u64 {
        u64::try_from(self.claim_timeout.as_millis()).unwrap_or(u64::MAX)
    }
}

/// A script's answer it did not give (a script and its caller disagree).
pub(super) fn unexpected(what: &str) -> StoreError {
    StoreError::Io(format!("redis: unexpected answer to the {what} script"))
}

/// The elements of a script's array answer.
pub(super) fn items(answer: Value, what: &str) -> Result<Vec<Value>, StoreError> {
    match answer {
        Value::Array(items) => Ok(items),
        _ => Err(unexpected(what)),
    }
}

/// An integer answer (Redis may give one as text).
pub(super) fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(text) => text.parse().ok(),
        _ => None,
    }
}

/// A text answer.
pub(super) fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

/// A call from a script's `HGETALL` of its hash.
fn record_of(fields: Value) -> Option<CallRecord> {
    let Value::Array(items) = fields else {
        return None;
    };
    let mut fields = HashMap::with_capacity(items.len() / 2);
    let mut items = items.into_iter();
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        if let (Value::BulkString(name), Value::BulkString(value)) = (name, value) {
            fields.insert(String::from_utf8_lossy(&name).into_owned(), value);
        }
    }
    record_from_fields(fields)
}

/// `text` with the glob characters of `SCAN MATCH` escaped.
fn glob_escaped(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_with_glob_characters_matches_only_itself() {
        assert_eq!(glob_escaped("team[1]*:queue:"), "team\\[1\\]\\*:queue:");
        assert_eq!(glob_escaped("fngate:queue:"), "fngate:queue:");
    }
}
