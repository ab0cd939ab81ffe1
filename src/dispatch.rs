//! Admission and running of calls: each function's concurrency limit and
//! bounded wait queue, and the deadline every call runs under.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// `concurrency` calls run at once; up to `queue` more wait for a slot;
/// anyone beyond both is turned away at once.
pub struct Limiter {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue: usize,
}

/// The caller was turned away: every slot and queue place is taken.
#[derive(Debug, PartialEq, Eq)]
pub struct Overloaded;

impl Limiter {
    pub fn new(concurrency: usize, queue: usize) -> Limiter {
        Limiter {
            slots: Arc::new(Semaphore::new(concurrency)),
            waiting: AtomicUsize::new(0),
            queue,
        }
    }

    /// A running slot, waiting in the queue when there is room in it.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, Overloaded> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
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
        let _leave = LeaveQueue(&self.waiting);
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Overloaded)
    }
}

struct LeaveQueue<'a>(&'a AtomicUsize);

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let wait =
            tokio::time::timeout(std::time::Duration::from_millis(10), limiter.acquire()).await;
        assert!(wait.is_err());
        assert_eq!(limiter.waiting.load(Ordering::Acquire), 0);
    }
}
