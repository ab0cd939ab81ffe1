//! Per-caller rate limits: a token bucket per principal (or per client IP
//! for calls without credentials), refilled at `requests_per_second` up to
//! `burst`. Memory stays bounded: idle buckets are forgotten.

use std::sync::Mutex;
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

use crate::config::RateLimitConfig;

/// Most callers tracked at once; past it, full (idle) buckets are dropped.
const MAX_TRACKED: usize = 100_000;

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: DashMap<String, Mutex<Bucket>>,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.updated = now;
    }
}

impl RateLimiter {
    pub fn new(config: &RateLimitConfig) -> RateLimiter {
        RateLimiter {
            rate: config.requests_per_second,
            burst: f64::from(config.burst),
            buckets: DashMap::new(),
        }
    }

    /// Takes one request from `caller`'s bucket, or says how long until
    /// one is there.
    pub fn check(&self, caller: &str) -> Result<(), Duration> {
        let now = Instant::now();
        if !self.buckets.contains_key(caller) {
            if self.buckets.len() >= MAX_TRACKED {
                self.forget_idle(now);
            }
            self.buckets.entry(caller.to_owned()).or_insert_with(|| {
                Mutex::new(Bucket {
                    tokens: self.burst,
                    updated: now,
                })
            });
        }
        let entry = self.buckets.get(caller).expect("the bucket was just made");
        let mut bucket = entry.lock().expect("bucket lock is never poisoned");
        bucket.refill(now, self.rate, self.burst);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }

    /// Drops buckets that have refilled completely: their callers are idle.
    fn forget_idle(&self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        self.buckets.retain(|_, bucket| {
            let bucket = bucket.get_mut().expect("bucket lock is never poisoned");
            bucket.refill(now, rate, burst);
            bucket.tokens < burst
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rps: f64, burst: u32) -> RateLimiter {
        RateLimiter::new(&RateLimitConfig {
            requests_per_second: rps,
            burst,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_then_the_rate_holds() {
        let limits = limiter(2.0, 3);
        for _ in 0..3 {
            assert!(limits.check("alice").is_ok());
        }
        let wait = limits.check("alice").unwrap_err();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // Others have their own bucket.
        assert!(limits.check("bob").is_ok());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(limits.check("alice").is_ok());
        assert!(limits.check("alice").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_callers_are_forgotten_when_many_are_tracked() {
        let limits = limiter(1000.0, 1);
        for i in 0..10 {
            limits.check(&format!("ip:{i}")).unwrap();
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        limits.forget_idle(Instant::now());
        assert_eq!(limits.buckets.len(), 0);
    }
}
