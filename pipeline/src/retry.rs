//! How a failed task is tried again: the pipeline's `retries`, overridden per table.

use std::time::Duration;

use crate::spec::{Backoff, RetrySpec};

/// The resolved retry settings of one table's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per task, the first one included.
    pub max_attempts: u32,
    /// The pause after the first failed attempt.
    pub delay: Duration,
    pub backoff: Backoff,
    /// The longest pause.
    pub max_delay: Duration,
    /// How long one attempt may run; one that runs out fails for good (it would again).
    pub timeout: Duration,
}

impl RetryPolicy {
    pub const DEFAULT_ATTEMPTS: u32 = 3;
    pub const DEFAULT_DELAY: Duration = Duration::from_secs(2);
    pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(3600);

    /// `table`'s settings over the pipeline's, over the defaults (validated beforehand, so
    /// values that do not parse were refused already).
    pub fn resolve(pipeline: &RetrySpec, table: Option<&RetrySpec>, timeout: Duration) -> Self {
        let pick =
            |f: &dyn Fn(&RetrySpec) -> Option<Duration>| table.and_then(f).or_else(|| f(pipeline));
        let delay = pick(&|r| r.delay()).unwrap_or(Self::DEFAULT_DELAY);
        let max_delay = pick(&|r| r.max_delay()).unwrap_or(Self::DEFAULT_MAX_DELAY);
        let attempts = |r: &RetrySpec| r.max_attempts.as_ref().map(|a| a.value);
        Self {
            max_attempts: table
                .and_then(attempts)
                .or_else(|| attempts(pipeline))
                .unwrap_or(Self::DEFAULT_ATTEMPTS),
            delay,
            backoff: table
                .and_then(|r| r.backoff)
                .or(pipeline.backoff)
                .unwrap_or(Backoff::Exponential),
            max_delay: max_delay.max(delay),
            timeout,
        }
    }

    /// The pause after failed attempt `attempt` (1-based).
    pub fn wait_after(&self, attempt: u32) -> Duration {
        match self.backoff {
            Backoff::Fixed => self.delay,
            Backoff::Exponential => self
                .delay
                .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
                .min(self.max_delay),
        }
    }
}

impl RetrySpec {
    /// `delay` (or the older `delay_seconds`), when given and valid.
    pub fn delay(&self) -> Option<Duration> {
        match (&self.delay, &self.delay_seconds) {
            (Some(d), _) => humantime::parse_duration(&d.value).ok(),
            (None, Some(s)) => Some(Duration::from_secs(s.value)),
            (None, None) => None,
        }
    }

    pub fn max_delay(&self) -> Option<Duration> {
        self.max_delay
            .as_ref()
            .and_then(|d| humantime::parse_duration(&d.value).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> RetrySpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn exponential_delays_double_up_to_max_delay() {
        let p = RetryPolicy::resolve(&spec("{ delay: 5s, max_delay: 1m }"), None, Duration::ZERO);
        let secs: Vec<u64> = (1..=6).map(|a| p.wait_after(a).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 60, 60]);
        assert_eq!(p.wait_after(1000).as_secs(), 60);
    }

    #[test]
    fn fixed_delays_stay_put() {
        let p = RetryPolicy::resolve(&spec("{ delay: 5m, backoff: fixed }"), None, Duration::ZERO);
        assert_eq!(p.wait_after(1), Duration::from_secs(300));
        assert_eq!(p.wait_after(7), Duration::from_secs(300));
    }

    #[test]
    fn a_table_overrides_only_what_it_sets() {
        let pipeline = spec("{ max_attempts: 5, delay: 10s, backoff: fixed }");
        let table = spec("{ max_attempts: 2 }");
        let p = RetryPolicy::resolve(&pipeline, Some(&table), Duration::from_secs(9));
        assert_eq!(p.max_attempts, 2);
        assert_eq!(
            (p.delay, p.backoff),
            (Duration::from_secs(10), Backoff::Fixed)
        );
        assert_eq!(p.timeout, Duration::from_secs(9));
    }

    #[test]
    fn defaults_and_the_older_delay_seconds() {
        let p = RetryPolicy::resolve(&RetrySpec::default(), None, Duration::ZERO);
        assert_eq!((p.max_attempts, p.delay), (3, Duration::from_secs(2)));
        let old = RetryPolicy::resolve(&spec("{ delay_seconds: 7 }"), None, Duration::ZERO);
        assert_eq!(old.delay, Duration::from_secs(7));
    }
}
