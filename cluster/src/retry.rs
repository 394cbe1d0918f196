//! Retrying what must eventually succeed (etcd writes, connecting, taking a lock), on the
//! `backon` crate: exponential delays with a cap, the first error logged once.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

/// Delays from `min`, doubling up to `max`, with no limit on attempts.
pub fn forever(min: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(min)
        .with_max_delay(max)
        .without_max_times()
}

/// Delays from `min`, doubling up to `max`, for at most `retries` retries.
pub fn limited(min: Duration, max: Duration, retries: usize) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_max_times(retries)
}

/// Runs `op` until it succeeds, waiting as `backoff` says between attempts (use
/// [`forever`]: a limited backoff that runs out panics). The first error is logged as a
/// warning naming `what`, and the eventual success after it.
pub async fn until_ok<T, E, F, Fut>(what: &str, backoff: ExponentialBuilder, op: F) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut failures = 0u32;
    let outcome = op
        .retry(backoff)
        .notify(|e: &E, _| {
            if failures == 0 {
                tracing::warn!(what, error = %e, "failed; retrying until it succeeds");
            }
            failures += 1;
        })
        .await;
    match outcome {
        Ok(value) => {
            if failures > 0 {
                tracing::info!(what, failures, "succeeded after all");
            }
            value
        }
        Err(e) => panic!("{what}: retries ran out ({e}); until_ok needs a backoff without a limit"),
    }
}

/// Runs `op` until it succeeds, `retryable` says an error is final, or `backoff` runs out;
/// the error returned is the last one, with the first one when they differ.
pub async fn with_first_error<T, F, Fut>(
    backoff: ExponentialBuilder,
    op: F,
    retryable: impl FnMut(&anyhow::Error) -> bool,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut first: Option<String> = None;
    let outcome = op
        .retry(backoff)
        .when(retryable)
        .notify(|e: &anyhow::Error, _| {
            first.get_or_insert_with(|| format!("{e:#}"));
        })
        .await;
    outcome.map_err(|last| match first {
        Some(first) if first != format!("{last:#}") => {
            last.context(format!("(the first attempt failed with: {first})"))
        }
        _ => last,
    })
}

#[cfg(test)]
mod tests {
    use backon::BackoffBuilder;

    use super::*;

    /// The first `n` delays, in whole milliseconds (backon multiplies in `f32`).
    fn ms(backoff: ExponentialBuilder, n: usize) -> Vec<u64> {
        let rounded = |d: Duration| (d.as_secs_f64() * 1000.0).round() as u64;
        backoff.build().take(n).map(rounded).collect()
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let backoff = forever(Duration::from_millis(100), Duration::from_millis(500));
        assert_eq!(ms(backoff, 7), [100, 200, 400, 500, 500, 500, 500]);
    }

    #[test]
    fn a_limited_backoff_runs_out() {
        let backoff = limited(Duration::from_millis(10), Duration::from_secs(1), 3);
        assert_eq!(ms(backoff, 10), [10, 20, 40]);
    }

    #[tokio::test]
    async fn until_ok_outlasts_many_failures() {
        let mut calls = 0;
        let got = until_ok(
            "test",
            forever(Duration::from_micros(10), Duration::from_micros(20)),
            || {
                calls += 1;
                let n = calls;
                async move { if n <= 50 { Err("down") } else { Ok(n) } }
            },
        )
        .await;
        assert_eq!((got, calls), (51, 51));
    }

    #[tokio::test]
    async fn a_final_error_keeps_the_first_one() {
        let mut n = 0;
        let err = with_first_error(
            limited(Duration::from_millis(1), Duration::from_millis(1), 2),
            || {
                n += 1;
                let n = n;
                async move { Err::<(), _>(anyhow::anyhow!("failure {n}")) }
            },
            |_| true,
        )
        .await
        .unwrap_err();
        assert_eq!(n, 3);
        let text = format!("{err:#}");
        assert!(
            text.contains("failure 3") && text.contains("failure 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_error_that_is_not_retryable_ends_at_once() {
        let mut n = 0;
        let err = with_first_error(
            limited(Duration::from_millis(1), Duration::from_millis(1), 5),
            || {
                n += 1;
                async { Err::<(), _>(anyhow::anyhow!("bad request")) }
            },
            |e| !e.to_string().contains("bad"),
        )
        .await
        .unwrap_err();
        assert_eq!((n, format!("{err:#}")), (1, "bad request".to_string()));
    }

    #[tokio::test]
    async fn a_later_success_returns_its_value() {
        let mut n = 0;
        let got = with_first_error(
            limited(Duration::from_millis(1), Duration::from_millis(1), 3),
            || {
                n += 1;
                let n = n;
                async move {
                    if n < 3 {
                        anyhow::bail!("not yet")
                    }
                    Ok(n)
                }
            },
            |_| true,
        )
        .await
        .unwrap();
        assert_eq!(got, 3);
    }
}
