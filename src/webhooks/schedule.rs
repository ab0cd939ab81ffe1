//! Which due deliveries run now: at most `PER_HOST` attempts at once per
//! receiver host and `MAX_RUNNING` in all, so a receiver that hangs holds
//! up only its own deliveries. The store stays the queue; this keeps the
//! few deliveries taken from it (running, or waiting for their host).

use std::collections::{HashMap, VecDeque};

use crate::store::Delivery;

/// Attempts to one receiver host at once.
pub(super) const PER_HOST: usize = 8;
/// Attempts at once in all.
const MAX_RUNNING: usize = 128;
/// Deliveries kept waiting for a slot of their host, so a busy host's next
/// attempt starts without reading the store; the rest stay in the store.
const HOST_WAITING: usize = 32;
/// Deliveries kept waiting in all.
const MAX_WAITING: usize = 1024;
/// Rows read beyond the ones held and the ones left in the store last time.
const READ_AHEAD: usize = 32;
/// The most rows one read of the store returns. A receiver host with more
/// due deliveries left in the store than this, all older than another
/// host's, delays that host until its backlog shrinks below it.
const MAX_READ: usize = 4096;

/// The deliveries taken from the store and not yet recorded.
#[derive(Default)]
pub(super) struct Schedule {
    /// Call id -> receiver host, for each delivery running or waiting.
    held: HashMap<String, String>,
    hosts: HashMap<String, Host>,
    running: usize,
    waiting: usize,
    /// Due rows the last read had to leave in the store (their host full).
    left: usize,
    /// Those rows, to hand back to the store: a store shared by replicas
    /// leases what it gives out, and keeps a delivery left here from the
    /// others until its lease lapses unless it is handed back.
    left_over: Vec<Delivery>,
}

#[derive(Default)]
struct Host {
    running: usize,
    waiting: VecDeque<Delivery>,
}

impl Schedule {
    /// How many due rows to read: enough to see past the ones held and the
    /// ones left last time.
    pub(super) fn read_limit(&self) -> usize {
        (self.held.len() + self.left + READ_AHEAD).min(MAX_READ)
    }

    /// Whether due rows were left in the store, to be read again when a
    /// slot frees.
    pub(super) fn left_some(&self) -> bool {
        self.left > 0
    }

    /// Takes the due deliveries not held yet (as `host_of` names their
    /// host); returns those to start now. The ones that fit neither a slot
    /// nor a waiting place stay in the store.
    pub(super) fn offer(
        &mut self,
        due: Vec<Delivery>,
        host_of: impl Fn(&str) -> String,
    ) -> Vec<Delivery> {
        self.left = 0;
        let mut start = Vec::new();
        for delivery in due {
            if self.held.contains_key(&delivery.call_id) {
                continue;
            }
            let name = host_of(&delivery.url);
            let host = self.hosts.entry(name.clone()).or_default();
            if host.running < PER_HOST && self.running < MAX_RUNNING {
                host.running += 1;
                self.running += 1;
                self.held.insert(delivery.call_id.clone(), name);
                start.push(delivery);
            } else if host.waiting.len() < HOST_WAITING && self.waiting < MAX_WAITING {
                self.waiting += 1;
                self.held.insert(delivery.call_id.clone(), name);
                host.waiting.push_back(delivery);
            } else {
                self.left += 1;
                if host.running == 0 && host.waiting.is_empty() {
                    self.hosts.remove(&name);
                }
                self.left_over.push(delivery);
            }
        }
        start
    }

    /// The deliveries the last offers left in the store, once.
    pub(super) fn take_left_over(&mut self) -> Vec<Delivery> {
        std::mem::take(&mut self.left_over)
    }

    /// A running delivery ended (recorded or not); returns the waiting
    /// deliveries that may start in the slots it freed.
    pub(super) fn finished(&mut self, call_id: &str) -> Vec<Delivery> {
        let Some(name) = self.held.remove(call_id) else {
            return Vec::new();
        };
        self.running -= 1;
        if let Some(host) = self.hosts.get_mut(&name) {
            host.running -= 1;
        }
        let mut start = Vec::new();
        // Its own host first: it has a free slot now.
        self.start_waiting(&name, &mut start);
        // A global slot may have been the limit for other hosts.
        if self.waiting > 0 && self.running < MAX_RUNNING {
            let names: Vec<String> = self
                .hosts
                .iter()
                .filter(|(_, h)| !h.waiting.is_empty() && h.running < PER_HOST)
                .map(|(n, _)| n.clone())
                .collect();
            for name in names {
                self.start_waiting(&name, &mut start);
            }
        }
        start
    }

    /// Moves `name`'s waiting deliveries into its free slots (within the
    /// global bound), and forgets the host once it has nothing.
    fn start_waiting(&mut self, name: &str, start: &mut Vec<Delivery>) {
        let Some(host) = self.hosts.get_mut(name) else {
            return;
        };
        while host.running < PER_HOST && self.running < MAX_RUNNING {
            let Some(delivery) = host.waiting.pop_front() else {
                break;
            };
            host.running += 1;
            self.running += 1;
            self.waiting -= 1;
            start.push(delivery);
        }
        if host.running == 0 && host.waiting.is_empty() {
            self.hosts.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(host: &str, n: usize, from: usize) -> Vec<Delivery> {
        (from..from + n)
            .map(|i| Delivery {
                call_id: format!("fc-{host}-{i}"),
                url: host.to_owned(),
                attempts: 0,
            })
            .collect()
    }

    fn host_of(url: &str) -> String {
        url.to_owned()
    }

    #[test]
    fn one_host_runs_at_most_per_host_and_the_rest_wait_or_stay_in_the_store() {
        let mut schedule = Schedule::default();
        let started = schedule.offer(due("slow", 50, 0), host_of);
        assert_eq!(started.len(), PER_HOST);
        assert!(schedule.left_some(), "50 - 8 running - 32 waiting stay");
        assert_eq!(schedule.left, 50 - PER_HOST - HOST_WAITING);
        // Read again: what is held is not taken twice.
        let again = schedule.offer(due("slow", 50, 0), host_of);
        assert!(again.is_empty());
        assert_eq!(schedule.held.len(), PER_HOST + HOST_WAITING);
    }

    #[test]
    fn another_host_starts_while_one_is_full() {
        let mut schedule = Schedule::default();
        let mut rows = due("slow", 40, 0);
        rows.extend(due("fast", 1, 0));
        let started = schedule.offer(rows, host_of);
        assert_eq!(started.len(), PER_HOST + 1);
        assert!(started.iter().any(|d| d.url == "fast"));
        assert!(!schedule.left_some());
    }

    #[test]
    fn a_finished_delivery_frees_its_slot_for_the_next_of_its_host() {
        let mut schedule = Schedule::default();
        let started = schedule.offer(due("h", 10, 0), host_of);
        assert_eq!(started.len(), PER_HOST);
        let next = schedule.finished(&started[0].call_id);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].call_id, format!("fc-h-{PER_HOST}"));
        assert!(schedule.finished("fc-unknown").is_empty());
        for d in started[1..].iter().chain(&next) {
            schedule.finished(&d.call_id);
        }
        let last: Vec<_> = schedule.held.keys().cloned().collect();
        for id in last {
            schedule.finished(&id);
        }
        assert!(schedule.hosts.is_empty() && schedule.held.is_empty());
        assert_eq!((schedule.running, schedule.waiting), (0, 0));
    }

    #[test]
    fn all_hosts_together_run_at_most_max_running() {
        let mut schedule = Schedule::default();
        let hosts = MAX_RUNNING / PER_HOST + 2;
        let rows = (0..hosts)
            .flat_map(|h| due(&format!("h{h}"), PER_HOST, 0))
            .collect();
        let started = schedule.offer(rows, host_of);
        assert_eq!(started.len(), MAX_RUNNING);
        assert_eq!(schedule.waiting, 2 * PER_HOST);
        // A slot freed anywhere goes to a host that waits.
        let next = schedule.finished(&started[0].call_id);
        assert_eq!(next.len(), 1);
        assert_eq!(schedule.running, MAX_RUNNING);
    }
}
