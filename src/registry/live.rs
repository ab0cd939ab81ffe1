//! The registry serving now, swapped whole when a reload or a deploy
//! changes what is deployed. A request takes the registry of the moment
//! it is resolved and keeps it to its end: calls in flight finish on the
//! version they started on, new ones take the new one.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::Registry;

pub struct LiveRegistry {
    current: ArcSwap<Registry>,
    /// Counts the swaps, for whoever follows them (the dispatchers).
    swaps: watch::Sender<u64>,
}

impl LiveRegistry {
    pub fn new(registry: Registry) -> Arc<LiveRegistry> {
        Arc::new(LiveRegistry {
            current: ArcSwap::from_pointee(registry),
            swaps: watch::Sender::new(0),
        })
    }

    /// The registry serving now.
    pub fn current(&self) -> Arc<Registry> {
        self.current.load_full()
    }

    /// Serves `next` from now on; returns the registry it replaced.
    pub fn replace(&self, next: Registry) -> Arc<Registry> {
        let previous = self.current.swap(Arc::new(next));
        self.swaps.send_modify(|count| *count += 1);
        previous
    }

    /// Changes each time the registry is replaced.
    pub fn swaps(&self) -> watch::Receiver<u64> {
        self.swaps.subscribe()
    }
}
