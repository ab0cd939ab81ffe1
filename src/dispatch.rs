//! Admission of calls to a function: its concurrency limit, the bounded
//! queue of sync callers waiting for a slot, and the rule that spawned
//! calls come second: they take a slot only when no sync caller is
//! waiting, and never the slots reserved for sync callers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// `concurrency` calls run at once; up to `queue` sync callers wait for a
/// slot; anyone beyond both is turned away at once.
pub struct Limiter {
    slots: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    queue: usize,
    /// Slots spawned calls may never take: a quarter of them, rounded down.
    reserved: usize,
    /// Woken when a slot is freed or a waiting caller leaves.
    changed: Arc<Notify>,
}

/// The caller was turned away: every slot and queue place is taken.
#[derive(Debug, PartialEq, Eq)]
pub struct Overloaded;

/// A running slot; freeing it wakes the spawned-call dispatcher.
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    changed: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The slot is free before anyone is woken for it: a dispatcher
        // woken on another thread while the permit was still held would
        // find no slot, wait again, and hear of none.
        drop(self.permit.take());
        self.changed.notify_one();
    }
}

impl Limiter {
    pub fn new(concurrency: usize, queue: usize) -> Limiter {
        Limiter {
            slots: Arc::new(Semaphore::new(concurrency)),
            waiting: Arc::new(AtomicUsize::new(0)),
            queue,
            reserved: concurrency / 4,
            changed: Arc::new(Notify::new()),
        }
    }

    /// Sync callers waiting for a slot now (for `/_/metrics`).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Slots free now (for `/_/metrics`).
    pub fn free(&self) -> usize {
        self.slots.available_permits()
    }

    fn slot(&self, permit: OwnedSemaphorePermit) -> Slot {
        Slot {
            permit: Some(permit),
            changed: self.changed.clone(),
        }
    }

    /// A slot for a sync caller, waiting in the queue when there is room in it.
    pub async fn acquire(&self) -> Result<Slot, Overloaded> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(self.slot(permit));
        }
        let place = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.queue).then_some(n + 1)
            });
        if place.is_err() {
            return Err(Overloaded);
        }
        // Leaves the queue however the wait ends, the caller giving up included.
        let _leave = LeaveQueue(self);
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Overloaded)?;
        Ok(self.slot(permit))
    }

    /// A slot for a spawned call: waits while sync callers wait or only
    /// reserved slots are free.
    pub async fn acquire_background(&self) -> Slot {
        loop {
            let changed = self.changed.notified();
            if let Some(slot) = self.try_acquire_background() {
                return slot;
            }
            changed.await;
        }
    }

    /// Slots for up to `most` spawned calls, so that they can be taken from
    /// the store in one write: waits for the first as `acquire_background`
    /// does, then adds only slots that are free at once, by the same rule.
    pub async fn acquire_background_many(&self, most: usize) -> Vec<Slot> {
        let mut slots = vec![self.acquire_background().await];
        while slots.len() < most {
            match self.try_acquire_background() {
                Some(slot) => slots.push(slot),
                None => break,
            }
        }
        slots
    }

    /// A slot for a spawned call if one is free now, by the same rule.
    pub fn try_acquire_background(&self) -> Option<Slot> {
        if self.waiting.load(Ordering::Acquire) > 0
            || self.slots.available_permits() <= self.reserved
        {
            return None;
        }
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(self.slot(permit))
    }
}

struct LeaveQueue<'a>(&'a Limiter);

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn callers_beyond_slots_and_queue_are_turned_away() {
        let limiter = Arc::new(Limiter::new(1, 1));
        let running = limiter.acquire().await.unwrap();
        let queued = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.acquire().await.map(drop) })
        };
        // Wait until the second caller sits in the queue.
        while limiter.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(limiter.acquire().await.err(), Some(Overloaded));
        drop(running);
        assert_eq!(queued.await.unwrap(), Ok(()));
        assert_eq!(limiter.waiting.load(Ordering::Acquire), 0);
        assert!(limiter.acquire().await.is_ok());
    }

    #[tokio::test]
    async fn a_caller_giving_up_leaves_the_queue() {
        let limiter = Limiter::new(1, 1);
        let _running = limiter.acquire().await.unwrap();
        let wait = tokio::time::timeout(Duration::from_millis(10), limiter.acquire()).await;
        assert!(wait.is_err());
        assert_eq!(limiter.waiting.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn spawned_calls_leave_reserved_slots_and_yield_to_waiting_callers() {
        let limiter = Arc::new(Limiter::new(4, 4));
        let mut background = Vec::new();
        for _ in 0..3 {
            background.push(limiter.acquire_background().await);
        }
        // The fourth slot is reserved for sync callers.
        let blocked =
            tokio::time::timeout(Duration::from_millis(20), limiter.acquire_background()).await;
        assert!(blocked.is_err());
        let sync = limiter.acquire().await.unwrap();
        // A sync caller waits; a freed slot goes to it, not to a spawned call.
        let waiter = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.acquire().await.map(drop) })
        };
        while limiter.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        let spawned = {
            let limiter = limiter.clone();
            tokio::spawn(async move { drop(limiter.acquire_background().await) })
        };
        drop(background.pop());
        assert_eq!(waiter.await.unwrap(), Ok(()));
        drop(sync);
        tokio::time::timeout(Duration::from_secs(5), spawned)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_batch_of_background_slots_takes_only_free_unreserved_ones() {
        let limiter = Limiter::new(8, 8);
        let _sync = limiter.acquire().await.unwrap();
        // 7 free, 2 of them reserved: 5 for spawned calls, however many are asked.
        let batch = limiter.acquire_background_many(64).await;
        assert_eq!(batch.len(), 5);
        assert!(limiter.try_acquire_background().is_none());
        drop(batch);
        // Freed slots can be taken again, no more than asked for.
        assert_eq!(limiter.acquire_background_many(3).await.len(), 3);
    }

    /// A slot freed on one thread while a dispatcher waits for it on
    /// another: the dispatcher gets it (it once was woken before the slot
    /// was free, found none, and waited on).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slot_freed_on_another_thread_reaches_its_waiter() {
        let limiter = Arc::new(Limiter::new(1, 1));
        for round in 0..2000 {
            let held = limiter.acquire_background().await;
            let waiter = {
                let limiter = limiter.clone();
                tokio::spawn(async move { drop(limiter.acquire_background().await) })
            };
            tokio::task::yield_now().await;
            let freeing = tokio::spawn(async move { drop(held) });
            freeing.await.unwrap();
            let got = tokio::time::timeout(Duration::from_secs(5), waiter).await;
            assert!(got.is_ok(), "round {round}: the waiter never got the slot");
        }
    }
}
