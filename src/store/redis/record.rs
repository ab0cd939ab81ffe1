//! A call as the fields of its hash (`P call:{id}`): the embedded store's
//! column names, each value as text (numbers in decimal, JSON as JSON) or,
//! for results and forwarded requests, the bytes as given. Absent fields
//! are `NULL`s. Scripts read and write only `state`, `attempt`,
//! `started_ms`, `finished_ms`, `expires_ms`, the outcome's fields and the
//! bookkeeping fields (`entry`, `idem`); everything else is written once.

use std::collections::HashMap;

use super::super::{CallRecord, CallState, FailureKind, NewCall, Origin, Outcome};

/// One field of a call's hash.
pub(crate) type Field = (&'static str, Vec<u8>);

/// The fields a new call is stored with (`state` and `attempt` included:
/// `Running` for an adopted sync call, whose attempt is 1).
pub(crate) fn new_call_fields(call: &NewCall) -> Vec<Field> {
    let mut fields: Vec<Field> = vec![
        ("id", call.id.clone().into_bytes()),
        ("app", call.app.clone().into_bytes()),
        ("function", call.function.clone().into_bytes()),
        ("args", call.args.clone().into_bytes()),
        ("kwargs", call.kwargs.clone().into_bytes()),
        ("state", call.state.code().to_string().into_bytes()),
        (
            "attempt",
            u32::from(call.state == CallState::Running)
                .to_string()
                .into_bytes(),
        ),
        ("created_ms", call.created_ms.to_string().into_bytes()),
    ];
    if call.state == CallState::Running {
        fields.push(("started_ms", call.created_ms.to_string().into_bytes()));
    }
    if call.from_sync {
        fields.push(("from_sync", b"1".to_vec()));
    }
    let mut optional = |name: &'static str, value: Option<Vec<u8>>| {
        if let Some(value) = value {
            fields.push((name, value));
        }
    };
    optional("owner", call.owner.clone().map(String::into_bytes));
    optional(
        "callback_url",
        call.callback_url.clone().map(String::into_bytes),
    );
    optional("forward", call.forward.clone());
    optional(
        "principal",
        call.principal
            .as_ref()
            .and_then(|p| serde_json::to_vec(p).ok()),
    );
    optional(
        "parameters",
        call.parameters.clone().map(String::into_bytes),
    );
    if let Some(origin) = &call.origin {
        optional(
            "parent_call_id",
            origin.parent_call_id.clone().map(String::into_bytes),
        );
        optional("origin", serde_json::to_vec(origin).ok());
    }
    fields
}

/// The fields that record how a call ended (besides `state`, which the
/// script sets from [`ended_state`]). Every outcome field not named here is
/// to be deleted, so an outcome never mixes with an earlier one.
pub(crate) fn outcome_fields(outcome: &Outcome) -> Vec<Field> {
    match outcome {
        Outcome::Succeeded(body) => vec![("result", body.clone())],
        Outcome::Answered {
            status,
            content_type,
            body,
        } => {
            let mut fields = vec![
                ("result", body.clone()),
                ("result_status", status.to_string().into_bytes()),
            ];
            if let Some(content_type) = content_type {
                fields.push(("result_type", content_type.clone().into_bytes()));
            }
            fields
        }
        Outcome::Failed {
            kind,
            error_type,
            message,
        } => vec![
            ("error_kind", kind.as_str().as_bytes().to_vec()),
            ("error_type", error_type.clone().into_bytes()),
            ("error_message", message.clone().into_bytes()),
        ],
        Outcome::TimedOut => Vec::new(),
    }
}

/// Every field an outcome may write.
pub(crate) const OUTCOME_FIELDS: [&str; 6] = [
    "result",
    "result_status",
    "result_type",
    "error_kind",
    "error_type",
    "error_message",
];

/// The state a call ends in with `outcome`.
pub(crate) fn ended_state(outcome: &Outcome) -> CallState {
    match outcome {
        Outcome::Succeeded(_) | Outcome::Answered { .. } => CallState::Succeeded,
        Outcome::Failed { .. } => CallState::Failed,
        Outcome::TimedOut => CallState::TimedOut,
    }
}

/// A state's code as stored (the embedded store's).
pub(crate) fn state_code(state: CallState) -> i64 {
    state.code()
}

/// The state a stored code stands for.
pub(crate) fn state_of(code: i64) -> Option<CallState> {
    CallState::from_code(code)
}

/// A call read back from its hash (`HGETALL`); `None` for an empty hash
/// (no such call) or one without its identity.
pub(crate) fn record_from_fields(mut fields: HashMap<String, Vec<u8>>) -> Option<CallRecord> {
    let mut text = |name: &str| {
        fields
            .remove(name)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    };
    let number = |value: Option<String>| value.and_then(|v| v.parse::<i64>().ok());
    let id = text("id")?;
    let app = text("app")?;
    let function = text("function")?;
    let state = state_of(number(text("state"))?).unwrap_or(CallState::Failed);
    let args = text("args").unwrap_or_else(|| "[]".to_owned());
    let kwargs = text("kwargs").unwrap_or_else(|| "{}".to_owned());
    let owner = text("owner");
    let callback_url = text("callback_url");
    let attempt = number(text("attempt")).unwrap_or(0) as u32;
    let created_ms = number(text("created_ms")).unwrap_or(0);
    let started_ms = number(text("started_ms"));
    let finished_ms = number(text("finished_ms"));
    let expires_ms = number(text("expires_ms"));
    let from_sync = text("from_sync").is_some_and(|v| v == "1");
    let principal = text("principal").and_then(|t| serde_json::from_str(&t).ok());
    let parameters = text("parameters");
    let parent_call_id = text("parent_call_id");
    let origin_text = text("origin");
    let map_inputs = number(text("map_inputs")).map(|n| n as u64);
    let result_status = number(text("result_status"));
    let result_type = text("result_type");
    let error_kind = text("error_kind");
    let error_type = text("error_type");
    let error_message = text("error_message");
    let forward = fields.remove("forward");
    let result = fields.remove("result");
    let outcome = match state {
        CallState::Succeeded => {
            let body = result.unwrap_or_default();
            Some(match result_status {
                Some(status) => Outcome::Answered {
                    status: status as u16,
                    content_type: result_type,
                    body,
                },
                None => Outcome::Succeeded(body),
            })
        }
        CallState::Failed => Some(Outcome::Failed {
            kind: FailureKind::parse(error_kind.as_deref().unwrap_or_default()),
            error_type: error_type.unwrap_or_default(),
            message: error_message.unwrap_or_default(),
        }),
        CallState::TimedOut => Some(Outcome::TimedOut),
        _ => None,
    };
    let origin = match (parent_call_id, origin_text) {
        (None, None) => None,
        (parent_call_id, origin) => Some(Origin {
            parent_call_id,
            ..origin
                .and_then(|text| serde_json::from_str(&text).ok())
                .unwrap_or_default()
        }),
    };
    Some(CallRecord {
        id,
        app,
        function,
        args,
        kwargs,
        owner,
        callback_url,
        state,
        attempt,
        created_ms,
        started_ms,
        finished_ms,
        expires_ms,
        outcome,
        from_sync,
        forward,
        principal,
        parameters,
        origin,
        map_inputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(state: CallState) -> NewCall {
        NewCall {
            id: "fc-abc".into(),
            app: "demo".into(),
            function: "Model.predict".into(),
            args: "[1]".into(),
            kwargs: "{\"x\":2}".into(),
            owner: Some("alice".into()),
            idempotency: None,
            callback_url: Some("https://hooks.example/x".into()),
            state,
            from_sync: state == CallState::Running,
            forward: Some(vec![0, 159, 255]),
            principal: None,
            parameters: Some("{\"size\":\"large\"}".into()),
            origin: Some(Origin {
                parent_call_id: Some("fc-parent".into()),
                depth: 2,
                trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
                scopes: vec!["invoke:demo/*".into()],
            }),
            created_ms: 1_700_000_000_123,
        }
    }

    fn hash(fields: Vec<Field>) -> HashMap<String, Vec<u8>> {
        fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    #[test]
    fn a_new_call_reads_back_as_stored() {
        let record = record_from_fields(hash(new_call_fields(&call(CallState::Pending))))
            .expect("a stored call reads back");
        assert_eq!(record.id, "fc-abc");
        assert_eq!(record.function, "Model.predict");
        assert_eq!(record.state, CallState::Pending);
        assert_eq!(record.attempt, 0);
        assert_eq!(record.forward, Some(vec![0, 159, 255]));
        assert_eq!(record.owner.as_deref(), Some("alice"));
        assert_eq!(record.created_ms, 1_700_000_000_123);
        assert_eq!(record.started_ms, None);
        assert!(!record.from_sync);
        let origin = record.origin.expect("its origin");
        assert_eq!(origin.parent_call_id.as_deref(), Some("fc-parent"));
        assert_eq!(origin.depth, 2);
        assert_eq!(origin.scopes, vec!["invoke:demo/*".to_owned()]);
    }

    #[test]
    fn an_adopted_sync_call_is_running_in_its_first_attempt() {
        let record = record_from_fields(hash(new_call_fields(&call(CallState::Running))))
            .expect("a stored call reads back");
        assert_eq!(record.state, CallState::Running);
        assert_eq!(record.attempt, 1);
        assert_eq!(record.started_ms, Some(1_700_000_000_123));
        assert!(record.from_sync);
    }

    #[test]
    fn each_outcome_reads_back_with_its_state() {
        let outcomes = [
            Outcome::Succeeded(b"{\"ok\":1}".to_vec()),
            Outcome::Answered {
                status: 201,
                content_type: Some("text/plain".into()),
                body: b"made".to_vec(),
            },
            Outcome::Failed {
                kind: FailureKind::Function,
                error_type: "ValueError".into(),
                message: "bad x".into(),
            },
            Outcome::TimedOut,
        ];
        for outcome in outcomes {
            let mut fields = hash(new_call_fields(&call(CallState::Pending)));
            fields.extend(hash(outcome_fields(&outcome)));
            fields.insert(
                "state".into(),
                state_code(ended_state(&outcome)).to_string().into_bytes(),
            );
            let record = record_from_fields(fields).expect("reads back");
            assert_eq!(record.outcome, Some(outcome));
        }
    }

    #[test]
    fn an_empty_hash_is_no_call() {
        assert_eq!(record_from_fields(HashMap::new()), None);
    }
}
