//! The keys that say how a function's calls run beyond one plain call:
//! `stream`, `may_call`, `retries` and `batch`, checked against each other
//! and against the function's backend.

use super::raw::{RawBatch, RawFunction, RawRetries};
use super::*;

/// Most retries a function may ask for, and the bounds of their backoff
/// (the same as Modal's `Retries`).
const MAX_RETRIES: i64 = 10;
const MAX_BACKOFF_COEFFICIENT: f64 = 10.0;
const MAX_INITIAL_DELAY: Duration = Duration::from_secs(60);
const MIN_MAX_DELAY: Duration = Duration::from_secs(1);
const MAX_MAX_DELAY: Duration = Duration::from_secs(60);
/// Most calls one batch may hold, and the longest a batch may wait.
const MAX_BATCH_SIZE: i64 = 1000;
const MAX_BATCH_WAIT: Duration = Duration::from_secs(600);

/// How a spawned call or map input that ended `failed` or `timed_out` runs
/// again: `max_retries` more runs, the `n`th (from 1) after
/// `initial_delay * backoff_coefficient^(n-1)`, never more than `max_delay`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub backoff_coefficient: f64,
    pub initial_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// `retries = N`: N more runs, each 1 s after the last one ended.
    pub fn fixed(max_retries: u32) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            backoff_coefficient: 1.0,
            initial_delay: Duration::from_secs(1),
            max_delay: MAX_MAX_DELAY,
        }
    }

    /// The pause before run `attempt + 1`, after run `attempt` (from 1)
    /// failed; `None` when no run is left.
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        if attempt == 0 || attempt > self.max_retries {
            return None;
        }
        let factor = self.backoff_coefficient.powi(attempt as i32 - 1);
        let delay = self.initial_delay.as_secs_f64() * factor;
        Some(Duration::from_secs_f64(
            delay.min(self.max_delay.as_secs_f64()),
        ))
    }
}

/// `batch = { max_size, wait }`: calls that arrive within `wait` of the
/// first, up to `max_size`, go to the backend as one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSpec {
    pub max_size: usize,
    pub wait: Duration,
}

/// One entry of `may_call`: `"APP/NAME"` (a function, or every method of
/// a class), `"APP/CLASS/METHOD"`, or `"APP/*"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallTarget {
    pub app: String,
    /// `None` for `APP/*`.
    pub name: Option<String>,
    /// A class method's name, for `APP/CLASS/METHOD`.
    pub method: Option<String>,
}

impl CallTarget {
    fn parse(text: &str) -> Result<CallTarget, String> {
        let parts: Vec<&str> = text.split('/').collect();
        let bad = || {
            format!(
                "'{text}' is not a function: write \"APP/FUNCTION\", \"APP/CLASS/METHOD\" or \"APP/*\""
            )
        };
        let (app, name, method) = match parts.as_slice() {
            [app, "*"] => (*app, None, None),
            [app, name] => (*app, Some(*name), None),
            [app, class, method] => (*app, Some(*class), Some(*method)),
            _ => return Err(bad()),
        };
        let names = [Some(app), name, method];
        if !names.into_iter().flatten().all(is_valid_name) {
            return Err(bad());
        }
        Ok(CallTarget {
            app: app.to_owned(),
            name: name.map(str::to_owned),
            method: method.map(str::to_owned),
        })
    }

    /// Whether this entry lets a call reach `app`'s function `name`, or
    /// `app`'s class `name` method `method`.
    pub fn allows(&self, app: &str, name: &str, method: Option<&str>) -> bool {
        if self.app != app {
            return false;
        }
        match (&self.name, &self.method) {
            (None, _) => true,
            (Some(own), None) => own == name,
            (Some(own), Some(own_method)) => own == name && method == Some(own_method.as_str()),
        }
    }
}

/// The checked `stream`, `may_call`, `retries` and `batch` of one table.
pub(super) struct Policies {
    pub stream: bool,
    pub may_call: Vec<CallTarget>,
    pub retries: Option<RetryPolicy>,
    pub batch: Option<BatchSpec>,
}

impl Context {
    pub(super) fn call_policies(
        &self,
        key: &str,
        raw: &RawFunction,
        backend: &BackendSpec,
    ) -> Result<Policies, ConfigError> {
        let field = |f: &str| format!("{key}.{f}");
        let stream = raw.stream.unwrap_or(false);
        if stream && backend.is_passthrough() {
            return Err(self.invalid(
                field("stream"),
                "a passthrough function's answer is streamed as the backend sends it: stream does not apply",
            ));
        }
        let may_call = (raw.may_call.iter().flatten().enumerate())
            .map(|(i, text)| {
                CallTarget::parse(text).map_err(|m| self.invalid(format!("{key}.may_call[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let retries = match &raw.retries {
            None => None,
            Some(raw) => Some(self.retries(&field("retries"), raw)?),
        };
        let batch = match &raw.batch {
            None => None,
            Some(raw) => Some(self.batch(&field("batch"), raw, backend, stream)?),
        };
        Ok(Policies {
            stream,
            may_call,
            retries,
            batch,
        })
    }

    fn retries(&self, key: &str, raw: &RawRetries) -> Result<RetryPolicy, ConfigError> {
        let count = |key: String, n: i64| {
            u32::try_from(n)
                .ok()
                .filter(|n| i64::from(*n) <= MAX_RETRIES)
                .ok_or_else(|| self.invalid(key, format!("must be between 0 and {MAX_RETRIES}")))
        };
        let policy = match raw {
            RawRetries::Count(n) => return Ok(RetryPolicy::fixed(count(key.to_owned(), *n)?)),
            RawRetries::Policy(policy) => policy,
        };
        let backoff_coefficient = policy.backoff_coefficient.unwrap_or(2.0);
        if !(1.0..=MAX_BACKOFF_COEFFICIENT).contains(&backoff_coefficient) {
            return Err(self.invalid(
                format!("{key}.backoff_coefficient"),
                format!("must be between 1.0 and {MAX_BACKOFF_COEFFICIENT:.1}"),
            ));
        }
        let initial_delay = self.duration(
            &format!("{key}.initial_delay"),
            policy.initial_delay.as_deref(),
            Duration::from_secs(1),
        )?;
        if initial_delay > MAX_INITIAL_DELAY {
            return Err(self.invalid(format!("{key}.initial_delay"), "must be at most 60s"));
        }
        let max_delay = self.duration(
            &format!("{key}.max_delay"),
            policy.max_delay.as_deref(),
            MAX_MAX_DELAY,
        )?;
        if !(MIN_MAX_DELAY..=MAX_MAX_DELAY).contains(&max_delay) {
            return Err(self.invalid(format!("{key}.max_delay"), "must be between 1s and 60s"));
        }
        Ok(RetryPolicy {
            max_retries: count(format!("{key}.max_retries"), policy.max_retries)?,
            backoff_coefficient,
            initial_delay,
            max_delay,
        })
    }

    fn batch(
        &self,
        key: &str,
        raw: &RawBatch,
        backend: &BackendSpec,
        stream: bool,
    ) -> Result<BatchSpec, ConfigError> {
        let refuse = |why: &str| Err(self.invalid(key, why));
        match backend {
            BackendSpec::Exec { .. } => {
                return refuse(
                    "only lambda and http functions take batches: an exec function starts a process per call",
                );
            }
            _ if backend.is_passthrough() => {
                return refuse(
                    "a passthrough function forwards each request as it is: it cannot batch",
                );
            }
            _ if stream => return refuse("a streaming function cannot batch its calls"),
            _ => {}
        }
        if !(1..=MAX_BATCH_SIZE).contains(&raw.max_size) {
            return Err(self.invalid(
                format!("{key}.max_size"),
                format!("must be between 1 and {MAX_BATCH_SIZE}"),
            ));
        }
        let wait = self.duration(&format!("{key}.wait"), Some(&raw.wait), Duration::ZERO)?;
        if wait.is_zero() || wait > MAX_BATCH_WAIT {
            return Err(self.invalid(format!("{key}.wait"), "must be above 0 and at most 10m"));
        }
        Ok(BatchSpec {
            max_size: raw.max_size as usize,
            wait,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_retries_wait_a_second_each() {
        let policy = RetryPolicy::fixed(3);
        assert_eq!(policy.delay_after(1), Some(Duration::from_secs(1)));
        assert_eq!(policy.delay_after(3), Some(Duration::from_secs(1)));
        assert_eq!(policy.delay_after(4), None);
        assert_eq!(RetryPolicy::fixed(0).delay_after(1), None);
    }

    #[test]
    fn backoff_grows_by_its_coefficient_up_to_the_cap() {
        let policy = RetryPolicy {
            max_retries: 10,
            backoff_coefficient: 2.0,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(3),
        };
        let delays: Vec<_> = (1..=5).map(|n| policy.delay_after(n).unwrap()).collect();
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [500, 1000, 2000, 3000, 3000]);
    }

    #[test]
    fn call_targets_name_functions_classes_methods_or_a_whole_app() {
        let square = CallTarget::parse("demo/square").unwrap();
        assert!(square.allows("demo", "square", None));
        assert!(!square.allows("demo", "cube", None));
        assert!(!square.allows("other", "square", None));
        let class = CallTarget::parse("demo/model").unwrap();
        assert!(class.allows("demo", "model", Some("predict")));
        let method = CallTarget::parse("demo/model/predict").unwrap();
        assert!(method.allows("demo", "model", Some("predict")));
        assert!(!method.allows("demo", "model", Some("embed")));
        let app = CallTarget::parse("demo/*").unwrap();
        assert!(app.allows("demo", "anything", None));
        assert!(!app.allows("other", "anything", None));
        for bad in [
            "demo",
            "*",
            "*/square",
            "demo/Square",
            "demo/a/b/c",
            "demo/",
            "",
        ] {
            assert!(CallTarget::parse(bad).is_err(), "{bad}");
        }
    }
}
