//! Spawned maps in Redis: the map is a call (`P call:{id}`, running until
//! its last input ends, with its input counters), its inputs the fields
//! of one hash by index, its pending inputs a list that any replica claims
//! from (one script, so two replicas never take one input), its running
//! inputs a set (so a cancel can drop their leases).
//!
//! An input's fields in `P map:{id}:inputs`: `{index}:s` its state code,
//! `{index}:a` its attempt (absent: 0), `{index}:in` its arguments while
//! it may still run, `{index}:out` how it ended (or the problem that
//! refused it). The map's counters (`inputs_pending`, `inputs_running`,
//! `inputs_succeeded`, `inputs_failed`, `inputs_cancelled`) are its
//! progress; a cancel moves the open ones to `inputs_cancelled` without
//! touching each input, so an open input of a cancelled map reads back
//! as cancelled.

use std::sync::LazyLock;

use super::super::map::{ClaimedInput, InputEnded, MapInput, MapProgress, OpenMap, StoredInput};
use super::super::{CallState, FailureKind, Inserted, NewCall, Outcome, now_ms};
use super::record::{self, Field};
use super::{RedisStore, StoreError, store_error};

/// The scripts that end a map start with what the call scripts share (a
/// map ends as a call ends) and the end of a map.
fn with_end(script: &str) -> redis::Script {
    redis::Script::new(&format!(
        "{}\n{}\n{script}",
        include_str!("call_common.lua"),
        include_str!("map_end.lua")
    ))
}

static INSERT: LazyLock<redis::Script> = LazyLock::new(|| with_end(include_str!("map_insert.lua")));
static CLAIM: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("map_claim.lua")));
static FINISH: LazyLock<redis::Script> = LazyLock::new(|| with_end(include_str!("map_finish.lua")));
static RETRYING: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("map_retrying.lua")));

/// Most inputs read with one `HMGET` of a page.
const PAGE_CHUNK: u64 = 1000;

/// The keys of one map.
struct MapKeys {
    call: String,
    inputs: String,
    pending: String,
    running: String,
}

/// An input's state code as stored at insert: it runs, or it was refused.
const PENDING: &str = "0";
const REFUSED: &str = "3";

/// A failed input's outcome, as its `{index}:out` holds it (after `f`).
#[derive(serde::Serialize, serde::Deserialize)]
struct Failure {
    kind: String,
    #[serde(rename = "type")]
    error_type: String,
    message: String,
}

/// An input's arguments as `{index}:in`: the length of `args` in decimal,
/// `:`, then `args` and `kwargs` as given.
fn encode_arguments(args: &str, kwargs: &str) -> Vec<u8> {
    let mut encoded = format!("{}:", args.len()).into_bytes();
    encoded.extend_from_slice(args.as_bytes());
    encoded.extend_from_slice(kwargs.as_bytes());
    encoded
}

/// `args` and `kwargs` from `{index}:in` (the embedded defaults when it
/// cannot be read).
fn decode_arguments(encoded: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(encoded);
    let split = text.split_once(':').and_then(|(length, rest)| {
        let length = length.parse::<usize>().ok()?;
        rest.is_char_boundary(length).then(|| rest.split_at(length))
    });
    match split {
        Some((args, kwargs)) => (args.to_owned(), kwargs.to_owned()),
        None => ("[]".to_owned(), "{}".to_owned()),
    }
}

/// How an input ended, as `{index}:out` (one letter, then its data): `s`
/// and the result (a passthrough answer keeps its body only, as the
/// embedded store does), `f` and a [`Failure`], `t` timed out; and the
/// ended state's code.
fn encode_outcome(outcome: &Outcome) -> (i64, Vec<u8>) {
    let code = record::state_code(record::ended_state(outcome));
    let encoded = match outcome {
        Outcome::Succeeded(body) | Outcome::Answered { body, .. } => {
            let mut encoded = Vec::with_capacity(body.len() + 1);
            encoded.push(b's');
            encoded.extend_from_slice(body);
            encoded
        }
        Outcome::Failed {
            kind,
            error_type,
            message,
        } => {
            let failure = Failure {
                kind: kind.as_str().to_owned(),
                error_type: error_type.clone(),
                message: message.clone(),
            };
            let mut encoded = b"f".to_vec();
            encoded.extend(serde_json::to_vec(&failure).expect("strings always serialise"));
            encoded
        }
        Outcome::TimedOut => b"t".to_vec(),
    };
    (code, encoded)
}

/// A refused input's problem+json object as `{index}:out`.
fn encode_problem(problem: &[u8]) -> Vec<u8> {
    let mut encoded = Vec::with_capacity(problem.len() + 1);
    encoded.push(b'p');
    encoded.extend_from_slice(problem);
    encoded
}

/// An input as read back from its state code and `{index}:out`; an open
/// input of a cancelled map is cancelled.
fn stored_input(index: u64, code: i64, out: Option<Vec<u8>>, map_cancelled: bool) -> StoredInput {
    let mut state = record::state_of(code).unwrap_or(CallState::Failed);
    if map_cancelled && !state.is_finished() {
        state = CallState::Cancelled;
    }
    let (mut outcome, mut problem) = (None, None);
    if let Some(out) = out.filter(|_| state.is_finished()) {
        let data = out.get(1..).unwrap_or_default();
        match out.first() {
            Some(b'p') => problem = Some(data.to_vec()),
            Some(b's') => outcome = Some(Outcome::Succeeded(data.to_vec())),
            Some(b't') => outcome = Some(Outcome::TimedOut),
            Some(b'f') => {
                let failure: Option<Failure> = serde_json::from_slice(data).ok();
                let (kind, error_type, message) = failure
                    .map(|f| (f.kind, f.error_type, f.message))
                    .unwrap_or_default();
                outcome = Some(Outcome::Failed {
                    kind: FailureKind::parse(&kind),
                    error_type,
                    message,
                });
            }
            _ => {}
        }
    }
    StoredInput {
        index,
        state,
        outcome,
        problem,
    }
}

impl RedisStore {
    fn map_keys(&self, id: &str) -> MapKeys {
        MapKeys {
            call: self.keys.call(id),
            inputs: self.keys.key(&format!("map:{id}:inputs")),
            pending: self.keys.key(&format!("map:{id}:pending")),
            running: self.keys.key(&format!("map:{id}:running")),
        }
    }

    /// `P idem:{app}/{function}/{owner or empty}/{key}`, as calls use.
    fn map_idem_key(&self, call: &NewCall, key: &str) -> String {
        let owner = call.owner.as_deref().unwrap_or_default();
        self.keys.key(&format!(
            "idem:{}/{}/{owner}/{key}",
            call.app, call.function
        ))
    }

    /// A map's own keys, in the order the scripts that may end it name
    /// them (`map_insert.lua`, `map_finish.lua`); the keys every call's
    /// end writes, they make from the prefix.
    fn end_keys(&self, id: &str, invocation: &mut redis::ScriptInvocation<'_>) {
        let keys = self.map_keys(id);
        invocation
            .key(keys.call)
            .key(keys.inputs)
            .key(keys.pending)
            .key(keys.running);
    }

    /// The map's hash as first stored: the call's fields, running, with
    /// its input counters (refused inputs have failed already).
    fn map_fields(call: &NewCall, inputs: &[MapInput], idem: Option<&str>) -> Vec<Field> {
        let runnable = inputs
            .iter()
            .filter(|input| matches!(input, MapInput::Arguments { .. }))
            .count();
        let mut fields = record::new_call_fields(call);
        for field in &mut fields {
            if field.0 == "state" {
                field.1 = record::state_code(CallState::Running)
                    .to_string()
                    .into_bytes();
            }
        }
        let count = |n: usize| n.to_string().into_bytes();
        fields.extend([
            ("map_inputs", count(inputs.len())),
            ("inputs_pending", count(runnable)),
            ("inputs_running", count(0)),
            ("inputs_succeeded", count(0)),
            ("inputs_failed", count(inputs.len() - runnable)),
            ("inputs_cancelled", count(0)),
        ]);
        if let (Some(key), Some((_, digest))) = (idem, &call.idempotency) {
            fields.push(("idem", key.as_bytes().to_vec()));
            fields.push(("idem_hash", digest.clone()));
        }
        fields
    }

    pub(super) async fn insert_map_call(
        &self,
        call: NewCall,
        inputs: Vec<MapInput>,
        expires_ms: i64,
    ) -> Result<Inserted, StoreError> {
        let idem = call
            .idempotency
            .as_ref()
            .map(|(key, _)| self.map_idem_key(&call, key));
        let fields = Self::map_fields(&call, &inputs, idem.as_deref());
        let runnable = inputs
            .iter()
            .filter(|input| matches!(input, MapInput::Arguments { .. }))
            .count();
        let digest = call
            .idempotency
            .as_ref()
            .map(|(_, digest)| digest.clone())
            .unwrap_or_default();
        let mut invocation = INSERT.prepare_invoke();
        self.end_keys(&call.id, &mut invocation);
        if let Some(idem) = &idem {
            invocation.key(idem);
        }
        invocation
            .arg(self.keys.prefix())
            .arg(&call.id)
            .arg(now_ms())
            .arg(expires_ms)
            .arg(digest)
            .arg(inputs.len())
            .arg(runnable)
            .arg(fields.len());
        for (name, value) in &fields {
            invocation.arg(*name).arg(value.as_slice());
        }
        for input in &inputs {
            match input {
                MapInput::Arguments { args, kwargs } => {
                    invocation.arg(PENDING).arg(encode_arguments(args, kwargs))
                }
                MapInput::Refused(problem) => invocation.arg(REFUSED).arg(encode_problem(problem)),
            };
        }
        let (existing, same, found): (i64, i64, Vec<Vec<u8>>) = invocation
            .invoke_async(&mut self.connection())
            .await
            .map_err(store_error)?;
        if existing == 0 {
            return Ok(Inserted::Created);
        }
        let mut pairs = found.into_iter();
        let mut hash = std::collections::HashMap::new();
        while let (Some(name), Some(value)) = (pairs.next(), pairs.next()) {
            hash.insert(String::from_utf8_lossy(&name).into_owned(), value);
        }
        let record = record::record_from_fields(hash).ok_or_else(|| {
            StoreError::Io("redis: an idempotency key names a call without its id".to_owned())
        })?;
        Ok(Inserted::Existing {
            record: Box::new(record),
            same_request: same == 1,
        })
    }

    pub(super) async fn claim_map_inputs(
        &self,
        id: String,
        limit: usize,
    ) -> Result<Vec<ClaimedInput>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let keys = self.map_keys(&id);
        let claimed: Vec<(u64, u32, Vec<u8>)> = CLAIM
            .key(keys.call)
            .key(keys.inputs)
            .key(keys.pending)
            .key(keys.running)
            .key(self.keys.key("leases"))
            .arg(&id)
            .arg(limit)
            .arg(self.claim_timeout.as_millis() as u64)
            .invoke_async(&mut self.connection())
            .await
            .map_err(store_error)?;
        let mut claimed: Vec<ClaimedInput> = claimed
            .into_iter()
            .map(|(index, attempt, arguments)| {
                let (args, kwargs) = decode_arguments(&arguments);
                ClaimedInput {
                    index,
                    args,
                    kwargs,
                    attempt,
                }
            })
            .collect();
        // Inputs taken over go back to the front, in no set order.
        claimed.sort_unstable_by_key(|input| input.index);
        Ok(claimed)
    }

    pub(super) async fn finish_map_input(
        &self,
        id: String,
        index: u64,
        outcome: Outcome,
        expires_ms: i64,
    ) -> Result<InputEnded, StoreError> {
        let (code, encoded) = encode_outcome(&outcome);
        let mut invocation = FINISH.prepare_invoke();
        self.end_keys(&id, &mut invocation);
        invocation
            .key(self.keys.key("leases"))
            .arg(self.keys.prefix())
            .arg(&id)
            .arg(index)
            .arg(code)
            .arg(encoded)
            .arg(now_ms())
            .arg(expires_ms);
        let (recorded, map_ended): (i64, i64) = invocation
            .invoke_async(&mut self.connection())
            .await
            .map_err(store_error)?;
        Ok(InputEnded {
            recorded: recorded == 1,
            map_ended: map_ended == 1,
        })
    }

    pub(super) async fn map_input_retrying(
        &self,
        id: String,
        index: u64,
    ) -> Result<bool, StoreError> {
        let keys = self.map_keys(&id);
        let counted: i64 = RETRYING
            .key(keys.call)
            .key(keys.inputs)
            .arg(index)
            .invoke_async(&mut self.connection())
            .await
            .map_err(store_error)?;
        Ok(counted == 1)
    }

    pub(super) async fn read_map_progress(&self, id: String) -> Result<MapProgress, StoreError> {
        let counts: Vec<Option<u64>> = redis::cmd("HMGET")
            .arg(self.keys.call(&id))
            .arg(&[
                "map_inputs",
                "inputs_pending",
                "inputs_running",
                "inputs_succeeded",
                "inputs_failed",
                "inputs_cancelled",
            ])
            .query_async(&mut self.connection())
            .await
            .map_err(store_error)?;
        let count = |i: usize| counts.get(i).copied().flatten().unwrap_or(0);
        Ok(MapProgress {
            inputs: count(0),
            pending: count(1),
            running: count(2),
            succeeded: count(3),
            failed: count(4),
            cancelled: count(5),
        })
    }

    pub(super) async fn read_map_page(
        &self,
        id: String,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredInput>, StoreError> {
        let keys = self.map_keys(&id);
        // The count never changes once stored.
        let inputs: Option<u64> = redis::cmd("HGET")
            .arg(&keys.call)
            .arg("map_inputs")
            .query_async(&mut self.connection())
            .await
            .map_err(store_error)?;
        let end = inputs
            .unwrap_or(0)
            .min(from.saturating_add(u64::try_from(limit).unwrap_or(u64::MAX)));
        if from >= end {
            return Ok(Vec::new());
        }
        // The map's state and its inputs as of one moment.
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("HGET").arg(&keys.call).arg("state");
        let mut start = from;
        while start < end {
            let stop = end.min(start + PAGE_CHUNK);
            let command = pipe.cmd("HMGET").arg(&keys.inputs);
            for index in start..stop {
                command
                    .arg(format!("{index}:s"))
                    .arg(format!("{index}:out"));
            }
            start = stop;
        }
        let mut answers: Vec<redis::Value> = pipe
            .query_async(&mut self.connection())
            .await
            .map_err(store_error)?;
        let chunks = answers.split_off(1.min(answers.len()));
        let map_state: Option<i64> = answers
            .pop()
            .map(redis::from_redis_value)
            .transpose()
            .map_err(|e| store_error(e.into()))?;
        let map_cancelled = map_state == Some(record::state_code(CallState::Cancelled));
        let mut page = Vec::with_capacity((end - from) as usize);
        let mut index = from;
        for chunk in chunks {
            let values: Vec<Option<Vec<u8>>> =
                redis::from_redis_value(chunk).map_err(|e| store_error(e.into()))?;
            let mut values = values.into_iter();
            while let (Some(code), Some(out)) = (values.next(), values.next()) {
                let code = code.and_then(|c| String::from_utf8_lossy(&c).parse::<i64>().ok());
                if let Some(code) = code {
                    page.push(stored_input(index, code, out, map_cancelled));
                }
                index += 1;
            }
        }
        Ok(page)
    }

    pub(super) async fn read_open_maps(&self) -> Result<Vec<OpenMap>, StoreError> {
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.key("maps"))
            .query_async(&mut self.connection())
            .await
            .map_err(store_error)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HMGET").arg(self.keys.call(id)).arg(&[
                "app",
                "function",
                "state",
                "created_ms",
            ]);
        }
        type Fields = (Option<String>, Option<String>, Option<i64>, Option<i64>);
        let rows: Vec<Fields> = pipe
            .query_async(&mut self.connection())
            .await
            .map_err(store_error)?;
        let running = record::state_code(CallState::Running);
        let mut open: Vec<(i64, OpenMap)> = ids
            .into_iter()
            .zip(rows)
            .filter_map(|(id, row)| match row {
                (Some(app), Some(function), Some(state), created) if state == running => {
                    Some((created.unwrap_or(0), OpenMap { id, app, function }))
                }
                _ => None,
            })
            .collect();
        // Oldest first, as the embedded store lists them.
        open.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
        Ok(open.into_iter().map(|(_, map)| map).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_read_back_as_stored() {
        for (args, kwargs) in [("[1]", "{}"), ("[\"a:b\",\n2]", "{\"x\":\"é:\"}"), ("", "")] {
            let encoded = encode_arguments(args, kwargs);
            assert_eq!(
                decode_arguments(&encoded),
                (args.to_owned(), kwargs.to_owned())
            );
        }
    }

    #[test]
    fn each_outcome_reads_back_as_the_embedded_store_keeps_it() {
        let failed = Outcome::Failed {
            kind: FailureKind::Function,
            error_type: "ValueError".into(),
            message: "bad\nx".into(),
        };
        let answered = Outcome::Answered {
            status: 201,
            content_type: Some("text/plain".into()),
            body: b"made".to_vec(),
        };
        let cases = [
            (
                Outcome::Succeeded(b"[1]".to_vec()),
                CallState::Succeeded,
                Outcome::Succeeded(b"[1]".to_vec()),
            ),
            (
                answered,
                CallState::Succeeded,
                Outcome::Succeeded(b"made".to_vec()),
            ),
            (failed.clone(), CallState::Failed, failed),
            (Outcome::TimedOut, CallState::TimedOut, Outcome::TimedOut),
        ];
        for (outcome, state, read) in cases {
            let (code, encoded) = encode_outcome(&outcome);
            assert_eq!(code, state.code());
            let input = stored_input(7, code, Some(encoded), false);
            assert_eq!(
                (input.state, input.outcome, input.problem),
                (state, Some(read), None)
            );
        }
    }

    #[test]
    fn a_refused_input_has_its_problem_and_no_outcome() {
        let input = stored_input(0, 3, Some(encode_problem(b"{\"status\":400}")), false);
        assert_eq!(input.state, CallState::Failed);
        assert_eq!(input.outcome, None);
        assert_eq!(input.problem.as_deref(), Some(&b"{\"status\":400}"[..]));
    }

    #[test]
    fn an_open_input_of_a_cancelled_map_is_cancelled() {
        assert_eq!(stored_input(0, 0, None, true).state, CallState::Cancelled);
        assert_eq!(stored_input(0, 1, None, true).state, CallState::Cancelled);
        let ended = stored_input(0, 2, Some(b"s1".to_vec()), true);
        assert_eq!(ended.state, CallState::Succeeded);
        assert_eq!(stored_input(0, 1, None, false).state, CallState::Running);
    }
}
