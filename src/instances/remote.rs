//! Workers on other machines (`fngate worker`) as instances of a pool. A
//! worker that asks for a call (`POST /_/work/{app}/{function}/next`) is
//! attached to the function's pool as one more instance, with the
//! function's `instance_concurrency`; the calls it takes are queued here
//! for its polls, and its posts end them. A worker is gone when a call it
//! runs misses its heartbeats for [`HEARTBEAT_LAPSE`] (it vanished: its
//! calls end as crashed, so a spawned call runs again), or when it has not
//! polled for [`POLL_LAPSE`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::runtime_api::{Delivery, Reply};
use crate::backend::BackendError;

/// A running call whose worker sent no heartbeat for this long is lost.
pub const HEARTBEAT_LAPSE: Duration = Duration::from_secs(5);

/// A worker that has not asked for a call for this long is no longer an
/// instance (its polls last up to 20 s).
pub const POLL_LAPSE: Duration = Duration::from_secs(30);

/// How often a worker's liveness is checked.
pub(super) const WATCH_EVERY: Duration = Duration::from_secs(1);

/// One worker's side of its pool: the calls waiting for its polls and the
/// ones it runs.
pub struct Remote {
    /// The id the worker chose (`Fngate-Worker`).
    pub worker: String,
    state: Mutex<RemoteState>,
    /// A call was queued, or the worker was detached.
    wake: Notify,
}

struct RemoteState {
    queued: VecDeque<(Delivery, oneshot::Sender<Reply>)>,
    /// By call id: who waits for its end, and its last sign of life.
    running: HashMap<String, (oneshot::Sender<Reply>, Instant)>,
    last_poll: Instant,
    /// Polls waiting now.
    polling: usize,
    closed: bool,
}

/// What a worker's poll gets.
pub enum Polled {
    Call(Delivery),
    /// Nothing came within the poll's wait: poll again.
    Nothing,
    /// The worker was detached from its pool (it will be attached anew).
    Detached,
}

impl Remote {
    pub(super) fn new(worker: String) -> Arc<Remote> {
        Arc::new(Remote {
            worker,
            state: Mutex::new(RemoteState {
                queued: VecDeque::new(),
                running: HashMap::new(),
                last_poll: Instant::now(),
                polling: 0,
                closed: false,
            }),
            wake: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RemoteState> {
        self.state
            .lock()
            .expect("no code panics holding a worker's lock")
    }

    /// Queues a call for the worker's next poll.
    pub fn deliver(&self, delivery: Delivery) -> Result<oneshot::Receiver<Reply>, BackendError> {
        let (reply, ended) = oneshot::channel();
        {
            let mut state = self.lock();
            if state.closed {
                return Err(BackendError::Crashed("the worker is gone".to_owned()));
            }
            state.queued.push_back((delivery, reply));
        }
        self.wake.notify_one();
        Ok(ended)
    }

    /// A worker's poll: the next queued call, waiting up to `wait`.
    pub async fn next(&self, wait: Duration) -> Polled {
        let until = Instant::now() + wait;
        self.lock().polling += 1;
        let polled = loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            // Registered before the look, so a wake-up after it is kept.
            woken.as_mut().enable();
            if let Some(polled) = self.take() {
                break polled;
            }
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep_until(until) => break Polled::Nothing,
            }
        };
        let mut state = self.lock();
        state.polling -= 1;
        state.last_poll = Instant::now();
        polled
    }

    /// The next queued call whose caller still waits, now running.
    fn take(&self) -> Option<Polled> {
        let mut state = self.lock();
        state.last_poll = Instant::now();
        if state.closed {
            return Some(Polled::Detached);
        }
        while let Some((delivery, reply)) = state.queued.pop_front() {
            if !reply.is_closed() {
                let id = delivery.call_id.clone();
                state.running.insert(id, (reply, Instant::now()));
                return Some(Polled::Call(delivery));
            }
        }
        None
    }

    /// A heartbeat for call `id`: false when the worker does not run it
    /// (cancelled, timed out, or another worker's).
    pub fn heartbeat(&self, id: &str) -> bool {
        let mut state = self.lock();
        match state.running.get_mut(id) {
            Some((reply, beat)) if !reply.is_closed() => {
                *beat = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// Ends call `id` with `reply`; false when this worker does not run it.
    pub fn end(&self, id: &str, reply: Reply) -> bool {
        match self.lock().running.remove(id) {
            Some((sender, _)) => sender.send(reply).is_ok(),
            None => false,
        }
    }

    /// True when the worker vanished (a call's heartbeats lapsed) or
    /// stopped polling while it runs nothing.
    pub(super) fn lapsed(&self) -> bool {
        let state = self.lock();
        let now = Instant::now();
        let vanished = state
            .running
            .values()
            .any(|(reply, beat)| !reply.is_closed() && now.duration_since(*beat) > HEARTBEAT_LAPSE);
        let idle = state.running.is_empty()
            && state.polling == 0
            && now.duration_since(state.last_poll) > POLL_LAPSE;
        vanished || idle
    }

    /// Detaches the worker: its calls end as crashed (a spawned call runs
    /// again), its polls answer at once.
    pub(super) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.queued.clear();
        state.running.clear();
        drop(state);
        self.wake.notify_waiters();
    }
}
