//! Dynamic batching (`batch = { max_size, wait }`): a `Backend` in front of
//! a function's real backend that gathers the calls arriving within `wait`
//! of the first (up to `max_size`) and runs them as ONE invocation whose
//! `batch` member lists their `{"args", "kwargs"}` in arrival order. The
//! function answers a JSON array of the same length; element `i` is the
//! result of call `i`.
//!
//! A batch runs in a task of its own, so a caller that leaves (a client
//! gone, a cancel) does not stop it for the others; only when every caller
//! has left is the batch stopped, as a cancelled call is. Calls of
//! different class parameter sets or different principals never share a
//! batch: they run on different instances, and a function must be able to
//! tell who it serves from the one invocation's headers.

use std::collections::HashMap;
use std::ops::Range;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Backend, BackendError, BoxFuture, RESULT_RULES};
use crate::config::BatchSpec;
use crate::invocation::{CallId, ClassCall, Invocation, ParentCall, Principal, Trace};
use crate::translate::json::{self, Kind};

/// Runs a function's calls in batches on its `inner` backend.
pub struct BatchBackend {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Arc<dyn Backend>,
    spec: BatchSpec,
    /// The batch still gathering calls, per key (at most one each).
    open: Mutex<HashMap<BatchKey, Gathering>>,
    /// Tells a gathering batch from a later one of the same key.
    next_id: AtomicU64,
}

/// What calls must share to share a batch: the class parameter set (it
/// picks the instances) and the principal (the invocation's headers name
/// one caller).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BatchKey {
    parameters: Option<String>,
    principal: Option<(String, Option<String>)>,
}

impl BatchKey {
    fn of(invocation: &Invocation) -> BatchKey {
        BatchKey {
            parameters: invocation.class.as_ref().map(|c| c.parameters.clone()),
            principal: (invocation.principal.as_ref())
                .map(|p| (p.subject.clone(), p.issuer.clone())),
        }
    }
}

/// A batch that still takes calls.
struct Gathering {
    id: u64,
    members: Vec<Member>,
    /// Hands the members to the batch's task when the batch fills up
    /// before its `wait` is over.
    full: oneshot::Sender<Vec<Member>>,
}

/// What every call of one batch has in common (they share a key), taken
/// from its first call.
struct Head {
    app: Arc<str>,
    function: Arc<str>,
    class: Option<Arc<ClassCall>>,
    principal: Option<Principal>,
}

/// One call of a batch, and where its element goes.
struct Member {
    call_id: CallId,
    args: String,
    kwargs: String,
    deadline: Instant,
    deadline_ms: u64,
    attempt: u32,
    trace: Trace,
    call_token: Option<Arc<str>>,
    parent: Option<Arc<ParentCall>>,
    reply: oneshot::Sender<Result<Bytes, BackendError>>,
}

impl BatchBackend {
    pub fn new(inner: Arc<dyn Backend>, spec: BatchSpec) -> BatchBackend {
        BatchBackend {
            shared: Arc::new(Shared {
                inner,
                spec,
                open: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// Puts `invocation` in its key's gathering batch (opening one when
    /// there is none) and waits for its element.
    async fn join(&self, invocation: &Invocation) -> Result<Bytes, BackendError> {
        let (reply, answer) = oneshot::channel();
        let member = Member {
            call_id: invocation.call_id.clone(),
            args: invocation.args.clone(),
            kwargs: invocation.kwargs.clone(),
            deadline: invocation.deadline,
            deadline_ms: invocation.deadline_ms,
            attempt: invocation.attempt,
            trace: invocation.trace.clone(),
            call_token: invocation.call_token.clone(),
            parent: invocation.parent.clone(),
            reply,
        };
        self.shared.add(BatchKey::of(invocation), member, || Head {
            app: invocation.app.clone(),
            function: invocation.function.clone(),
            class: invocation.class.clone(),
            principal: invocation.principal.clone(),
        });
        match answer.await {
            Ok(outcome) => outcome,
            Err(_) => Err(BackendError::Crashed(
                "the batch this call was in ended without an answer".to_owned(),
            )),
        }
    }
}

impl Shared {
    /// Adds `member` to the batch of `key`: a full batch leaves for its
    /// task at once; a new one starts its `wait`.
    fn add(self: &Arc<Self>, key: BatchKey, member: Member, head: impl FnOnce() -> Head) {
        let mut open = self.open.lock().expect("batch lock poisoned");
        if let Some(gathering) = open.get_mut(&key) {
            gathering.members.push(member);
            if gathering.members.len() >= self.spec.max_size {
                let full = open.remove(&key).expect("the batch was just found");
                // Its task waits for this (or has woken and looks for it).
                let _ = full.full.send(full.members);
            }
            return;
        }
        let head = head();
        if self.spec.max_size <= 1 {
            drop(open);
            tokio::spawn(self.clone().run(head, vec![member]));
            return;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (full, filled) = oneshot::channel();
        open.insert(
            key.clone(),
            Gathering {
                id,
                members: vec![member],
                full,
            },
        );
        drop(open);
        let ready_at = Instant::now() + self.spec.wait;
        tokio::spawn(self.clone().gather(key, id, head, ready_at, filled));
    }

    /// The task of batch `id`: waits until it is full or `ready_at`,
    /// whichever comes first, then runs it.
    async fn gather(
        self: Arc<Self>,
        key: BatchKey,
        id: u64,
        head: Head,
        ready_at: Instant,
        mut filled: oneshot::Receiver<Vec<Member>>,
    ) {
        let members = tokio::select! {
            members = &mut filled => members.ok(),
            () = tokio::time::sleep_until(ready_at) => {
                let mut open = self.open.lock().expect("batch lock poisoned");
                match open.get(&key) {
                    Some(gathering) if gathering.id == id => open.remove(&key).map(|g| g.members),
                    // It filled up as the wait ended: its members are sent.
                    _ => None,
                }
            }
        };
        let members = match members {
            Some(members) => members,
            None => match filled.await {
                Ok(members) => members,
                Err(_) => return,
            },
        };
        self.run(head, members).await;
    }

    /// Runs one batch and gives each caller still there its element.
    async fn run(self: Arc<Self>, head: Head, mut members: Vec<Member>) {
        let now = Instant::now();
        members.retain(|m| !m.reply.is_closed());
        // A call whose deadline passed while it waited is not sent.
        let (late, mut members): (Vec<Member>, Vec<Member>) =
            members.into_iter().partition(|m| m.deadline <= now);
        for member in late {
            let _ = member.reply.send(Err(BackendError::Timeout));
        }
        if members.is_empty() {
            return;
        }
        let invocation = batch_invocation(&head, &members);
        tracing::debug!(
            call_id = %invocation.call_id,
            size = members.len(),
            calls = %members.iter().map(|m| m.call_id.as_str()).collect::<Vec<_>>().join(","),
            "batch sent"
        );
        let outcome = {
            let mut work = pin!(self.inner.invoke(&invocation));
            let gone = futures_util::future::join_all(members.iter_mut().map(|m| m.reply.closed()));
            tokio::select! {
                outcome = &mut work => Some(outcome),
                _ = gone => {
                    // Every caller left: stop what runs the batch while the
                    // work still holds it, then drop the work.
                    self.inner.abort(invocation.call_id.as_str());
                    None
                }
            }
        };
        let Some(outcome) = outcome else {
            tracing::debug!(call_id = %invocation.call_id, "every call of the batch left: it was stopped");
            return;
        };
        let elements = outcome.and_then(|body| {
            let ranges = elements(&body, members.len())?;
            Ok(ranges
                .into_iter()
                .map(|r| body.slice(r))
                .collect::<Vec<_>>())
        });
        match elements {
            Ok(elements) => {
                for (member, element) in members.into_iter().zip(elements) {
                    let _ = member.reply.send(Ok(element));
                }
            }
            Err(e) => {
                for member in members {
                    let _ = member.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The one invocation of a batch: a call id of its own, no arguments but
/// `batch`, the highest attempt of its calls, and the deadline of the call
/// whose deadline comes first, with that call's trace, token and parent
/// (the token names that call's trace and id, so they go together).
fn batch_invocation(head: &Head, members: &[Member]) -> Invocation {
    let earliest = members
        .iter()
        .min_by_key(|m| m.deadline)
        .expect("a batch has at least one call");
    let mut batch = String::with_capacity(
        2 + members
            .iter()
            .map(|m| 22 + m.args.len() + m.kwargs.len())
            .sum::<usize>(),
    );
    batch.push('[');
    for (i, member) in members.iter().enumerate() {
        if i > 0 {
            batch.push(',');
        }
        batch.push_str("{\"args\":");
        batch.push_str(&member.args);
        batch.push_str(",\"kwargs\":");
        batch.push_str(&member.kwargs);
        batch.push('}');
    }
    batch.push(']');
    Invocation {
        call_id: CallId::generate(),
        app: head.app.clone(),
        function: head.function.clone(),
        args: "[]".to_owned(),
        kwargs: "{}".to_owned(),
        deadline_ms: earliest.deadline_ms,
        deadline: earliest.deadline,
        attempt: members.iter().map(|m| m.attempt).max().unwrap_or(1),
        trace: earliest.trace.clone(),
        principal: head.principal.clone(),
        class: head.class.clone(),
        call_token: earliest.call_token.clone(),
        parent: earliest.parent.clone(),
        batch: Some(batch),
    }
}

/// The byte ranges of the `count` elements of a batch's result, which must
/// be a JSON array of exactly that many.
fn elements(body: &[u8], count: usize) -> Result<Vec<Range<usize>>, BackendError> {
    let doc = json::check(body, RESULT_RULES)
        .map_err(|e| BackendError::Garbage(format!("a batch's result is not JSON: {e}")))?;
    if doc.kind != Kind::Array {
        return Err(BackendError::Garbage(format!(
            "a batch of {count} calls must be answered with a JSON array of {count} results"
        )));
    }
    let ranges = array_elements(body, doc.start..doc.end);
    if ranges.len() != count {
        return Err(BackendError::Garbage(format!(
            "a batch of {count} calls was answered with {} results",
            ranges.len()
        )));
    }
    Ok(ranges)
}

/// The ranges of the elements of the checked JSON array at `array` in
/// `body`, each without its surrounding whitespace.
fn array_elements(body: &[u8], array: Range<usize>) -> Vec<Range<usize>> {
    let inner = array.start + 1..array.end - 1;
    let mut ranges = Vec::new();
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut start = inner.start;
    let push = |from: usize, to: usize, ranges: &mut Vec<Range<usize>>| {
        let text = &body[from..to];
        let lead = text
            .iter()
            .take_while(|&&b| json::is_json_whitespace(b))
            .count();
        let trail = text[lead..]
            .iter()
            .rev()
            .take_while(|&&b| json::is_json_whitespace(b))
            .count();
        if lead + trail < text.len() {
            ranges.push(from + lead..to - trail);
        }
    };
    for at in inner.clone() {
        let byte = body[at];
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth -= 1,
            b',' if depth == 0 => {
                push(start, at, &mut ranges);
                start = at + 1;
            }
            _ => {}
        }
    }
    push(start, inner.end, &mut ranges);
    ranges
}

impl Backend for BatchBackend {
    fn invoke<'a>(
        &'a self,
        invocation: &'a Invocation,
    ) -> BoxFuture<'a, Result<Bytes, BackendError>> {
        Box::pin(self.join(invocation))
    }

    fn describe(&self) -> String {
        format!(
            "{}, in batches of up to {} calls within {}",
            self.shared.inner.describe(),
            self.shared.spec.max_size,
            humantime::format_duration(self.shared.spec.wait)
        )
    }

    /// A cancelled call leaves its batch when its future is dropped; the
    /// batch goes on for the others (and stops when none is left), so
    /// nothing is stopped here.
    fn abort(&self, _call_id: &str) {}
}

#[cfg(test)]
mod tests;
