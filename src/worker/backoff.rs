//! Pauses between failed tries that double with each failure in a row, up
//! to a cap: for polls the gateway could not answer (100 ms to 5 s) and for
//! instances that failed to start or crashed (100 ms to 30 s).

use std::time::Duration;

/// The first pause after a failure.
const FIRST: Duration = Duration::from_millis(100);

/// Failures in a row, and the pause each more one brings.
#[derive(Debug, Clone)]
pub(super) struct Backoff {
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// For requests to the gateway: 100 ms doubling to 5 s.
    pub(super) fn requests() -> Backoff {
        Backoff::up_to(Duration::from_secs(5))
    }

    /// For starting the instance again: 100 ms doubling to 30 s.
    pub(super) fn instances() -> Backoff {
        Backoff::up_to(Duration::from_secs(30))
    }

    fn up_to(max: Duration) -> Backoff {
        Backoff { max, failures: 0 }
    }

    /// Counts one more failure in a row; returns the pause before the next
    /// try.
    pub(super) fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.pause()
    }

    /// The pause the failures so far call for (none without a failure).
    pub(super) fn pause(&self) -> Duration {
        if self.failures == 0 {
            return Duration::ZERO;
        }
        let doublings = (self.failures - 1).min(16);
        FIRST.saturating_mul(1 << doublings).min(self.max)
    }

    /// A try succeeded: the next failure starts over at 100 ms.
    pub(super) fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pauses(mut backoff: Backoff, count: usize) -> Vec<u64> {
        (0..count)
            .map(|_| backoff.failed().as_millis() as u64)
            .collect()
    }

    #[test]
    fn request_pauses_double_from_100_ms_to_5_s() {
        assert_eq!(
            pauses(Backoff::requests(), 9),
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]
        );
    }

    #[test]
    fn instance_pauses_double_from_100_ms_to_30_s() {
        assert_eq!(
            pauses(Backoff::instances(), 11),
            [
                100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000
            ]
        );
    }

    #[test]
    fn a_success_starts_the_pauses_over_and_many_failures_stay_capped() {
        let mut backoff = Backoff::instances();
        assert_eq!(backoff.pause(), Duration::ZERO);
        for _ in 0..1000 {
            backoff.failed();
        }
        assert_eq!(backoff.pause(), Duration::from_secs(30));
        backoff.reset();
        assert_eq!(backoff.pause(), Duration::ZERO);
        assert_eq!(backoff.failed(), Duration::from_millis(100));
    }
}
