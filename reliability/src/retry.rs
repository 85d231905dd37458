//! Retries with exponential backoff and jitter.
//!
//! The delay before retry number `n` (0-based: `n = 0` is the wait after the
//! first failed attempt) is built from
//! `base(n) = min(max, initial * multiplier^n)` and then jittered; with
//! [`Jitter::Full`] ("full jitter" from the AWS Architecture Blog post
//! *Exponential Backoff And Jitter*) it is uniform in `[0, base(n)]`, which
//! spreads out clients that failed together.

use std::future::Future;
use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::SmallRng};

/// How the exponential delay is randomised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// No randomness: exactly `base(n)`.
    None,
    /// Uniform in `[0, base(n)]`.
    #[default]
    Full,
    /// `base(n) / 2` plus uniform in `[0, base(n) / 2]`.
    Equal,
}

/// Exponential backoff settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Delay before the first retry (before jitter).
    pub initial: Duration,
    /// Upper bound on any delay (before jitter).
    pub max: Duration,
    /// Growth factor per retry. Values below `1.0` or not finite are treated
    /// as `1.0`.
    pub multiplier: f64,
    /// Total attempts, the first one included; `0` is treated as `1` (no
    /// retries).
    pub max_attempts: u32,
    /// How the delay is randomised.
    pub jitter: Jitter,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            max_attempts: 5,
            jitter: Jitter::Full,
        }
    }
}

impl RetryPolicy {
    /// The un-jittered delay before retry `retry` (0-based):
    /// `min(max, initial * multiplier^retry)`. Never panics, saturates at
    /// `max`.
    pub fn base_delay(&self, retry: u32) -> Duration {
        let multiplier = if self.multiplier.is_finite() && self.multiplier >= 1.0 {
            self.multiplier
        } else {
            1.0
        };
        let exponent = i32::try_from(retry).unwrap_or(i32::MAX);
        let secs = self.initial.as_secs_f64() * multiplier.powi(exponent);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            return self.max;
        }
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The jittered delay before retry `retry` (0-based), drawn from `rng`.
    /// Always within `[0, base_delay(retry)]` (within
    /// `[base_delay(retry) / 2, base_delay(retry)]` for [`Jitter::Equal`]);
    /// the same seed gives the same delays.
    pub fn delay<R: Rng + ?Sized>(&self, retry: u32, rng: &mut R) -> Duration {
        let base = self.base_delay(retry);
        // Nanosecond resolution; bases beyond u64 nanoseconds (584 years)
        // are clamped.
        let nanos = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX);
        match self.jitter {
            Jitter::None => base,
            Jitter::Full => Duration::from_nanos(rng.random_range(0..=nanos)),
            Jitter::Equal => {
                let half = nanos / 2;
                let rest = nanos - half;
                Duration::from_nanos(half + rng.random_range(0..=rest))
            }
        }
    }

    /// Total attempts allowed, the first one included (at least 1).
    pub fn attempts(&self) -> u32 {
        self.max_attempts.max(1)
    }
}

/// Runs `op` until it succeeds, fails with an error for which `is_retryable`
/// returns false, or `policy.max_attempts` attempts have been made; sleeps
/// [`RetryPolicy::delay`] (with `tokio::time::sleep`) between attempts.
/// Returns the first success or the last error.
pub async fn retry<T, E, F, Fut, P>(policy: &RetryPolicy, op: F, is_retryable: P) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    P: FnMut(&E) -> bool,
{
    let mut rng = SmallRng::from_os_rng();
    retry_with_rng(policy, &mut rng, op, is_retryable).await
}

/// [`retry`] drawing jitter from `rng` (for reproducible schedules).
pub async fn retry_with_rng<T, E, F, Fut, P, R>(
    policy: &RetryPolicy,
    rng: &mut R,
    mut op: F,
    mut is_retryable: P,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    P: FnMut(&E) -> bool,
    R: Rng + ?Sized,
{
    let attempts = policy.attempts();
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                if attempt >= attempts || !is_retryable(&e) {
                    return Err(e);
                }
                let delay = policy.delay(attempt - 1, rng);
                tracing::debug!(attempt, ?delay, "retrying after failure");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use std::cell::Cell;

    fn policy(jitter: Jitter) -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            multiplier: 2.0,
            max_attempts: 4,
            jitter,
        }
    }

    #[test]
    fn base_delay_grows_and_caps() {
        let p = policy(Jitter::None);
        assert_eq!(p.base_delay(0), Duration::from_millis(100));
        assert_eq!(p.base_delay(1), Duration::from_millis(200));
        assert_eq!(p.base_delay(5), Duration::from_millis(3200));
        assert_eq!(p.base_delay(6), Duration::from_secs(5));
        assert_eq!(p.base_delay(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn odd_multipliers_do_not_panic() {
        for m in [f64::NAN, f64::INFINITY, -3.0, 0.0, 0.5, 1e300] {
            let p = RetryPolicy {
                multiplier: m,
                ..policy(Jitter::Full)
            };
            for n in [0, 1, 10, 1000, u32::MAX] {
                assert!(p.base_delay(n) <= p.max);
                assert!(p.delay(n, &mut StdRng::seed_from_u64(1)) <= p.max);
            }
        }
        let huge = RetryPolicy {
            initial: Duration::MAX,
            max: Duration::MAX,
            ..policy(Jitter::Equal)
        };
        let _ = huge.delay(3, &mut StdRng::seed_from_u64(1));
    }

    #[test]
    fn full_jitter_within_bounds_and_spread() {
        let p = policy(Jitter::Full);
        let mut rng = StdRng::seed_from_u64(42);
        for n in 0..10 {
            let base = p.base_delay(n);
            let samples: Vec<_> = (0..200).map(|_| p.delay(n, &mut rng)).collect();
            assert!(samples.iter().all(|d| *d <= base));
            assert!(samples.iter().any(|d| *d < base / 2), "no low samples");
            assert!(samples.iter().any(|d| *d > base / 2), "no high samples");
        }
    }

    #[test]
    fn equal_jitter_within_bounds() {
        let p = policy(Jitter::Equal);
        let mut rng = StdRng::seed_from_u64(7);
        for n in 0..10 {
            let base = p.base_delay(n);
            for _ in 0..200 {
                let d = p.delay(n, &mut rng);
                assert!(d >= base / 2 && d <= base, "{d:?} vs {base:?}");
            }
        }
    }

    #[test]
    fn no_jitter_is_exact_and_seed_is_deterministic() {
        let p = policy(Jitter::None);
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(p.delay(2, &mut rng), Duration::from_millis(400));
        let f = policy(Jitter::Full);
        let a: Vec<_> = (0..8)
            .map(|n| f.delay(n, &mut StdRng::seed_from_u64(9)))
            .collect();
        let b: Vec<_> = (0..8)
            .map(|n| f.delay(n, &mut StdRng::seed_from_u64(9)))
            .collect();
        assert_eq!(a, b);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_with_backoff() {
        let calls = Cell::new(0);
        let start = tokio::time::Instant::now();
        let r: Result<u32, &str> = retry(
            &policy(Jitter::None),
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move { if n < 3 { Err("unavailable") } else { Ok(n) } }
            },
            |_| true,
        )
        .await;
        assert_eq!(r, Ok(3));
        assert_eq!(calls.get(), 3);
        assert_eq!(start.elapsed(), Duration::from_millis(100 + 200));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts_with_last_error() {
        let calls = Cell::new(0);
        let start = tokio::time::Instant::now();
        let r: Result<(), u32> = retry(
            &policy(Jitter::None),
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move { Err(n) }
            },
            |_| true,
        )
        .await;
        assert_eq!(r, Err(4));
        assert_eq!(calls.get(), 4);
        assert_eq!(start.elapsed(), Duration::from_millis(100 + 200 + 400));
    }

    #[tokio::test(start_paused = true)]
    async fn non_retryable_error_returns_immediately() {
        let calls = Cell::new(0);
        let start = tokio::time::Instant::now();
        let r: Result<(), &str> = retry(
            &policy(Jitter::None),
            || {
                calls.set(calls.get() + 1);
                async { Err("invalid") }
            },
            |e| *e != "invalid",
        )
        .await;
        assert_eq!(r, Err("invalid"));
        assert_eq!(calls.get(), 1);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn jittered_total_wait_is_bounded() {
        let start = tokio::time::Instant::now();
        let mut rng = StdRng::seed_from_u64(3);
        let r: Result<(), ()> = retry_with_rng(
            &policy(Jitter::Full),
            &mut rng,
            || async { Err(()) },
            |_| true,
        )
        .await;
        assert_eq!(r, Err(()));
        assert!(start.elapsed() <= Duration::from_millis(700));
    }

    #[test]
    fn retry_future_is_send() {
        fn assert_send<T: Send>(_: T) {}
        let p = policy(Jitter::Full);
        assert_send(retry(&p, || async { Ok::<(), ()>(()) }, |_| true));
    }
}
