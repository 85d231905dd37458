//! A circuit breaker: Closed → Open → HalfOpen → Closed.
//!
//! While **Closed** every call is let through and its outcome recorded. The
//! breaker trips to **Open** when either `consecutive_failures` calls in a row
//! fail, or, over the rolling `window`, at least `min_calls` calls were
//! recorded and the share of failures is at least `failure_rate_threshold`.
//! While **Open** every call is rejected until `cool_down` has passed; the
//! next call then moves it to **HalfOpen**, where up to
//! `half_open_max_calls` trial calls are let through. When that many trial
//! calls succeed the breaker closes; any trial failure reopens it for another
//! cool-down.
//!
//! Outcomes are reported through a [`Permit`]. A permit dropped without a
//! report counts as a **failure**: the usual way a permit is dropped is a
//! timeout or cancellation wrapped around the call (`tokio::time::timeout`
//! around [`CircuitBreaker::execute`]), and a collector that hangs must trip
//! the breaker. Use [`Permit::release`] to give a permit back without
//! recording anything (the call was not made).
//!
//! Reports from permits taken before the last state change are ignored, so a
//! slow call started while Closed cannot close a breaker that has since
//! reopened.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{Clock, SystemClock};

/// Number of buckets the rolling failure-rate window is split into; the window
/// slides in steps of `window / WINDOW_BUCKETS`.
const WINDOW_BUCKETS: usize = 10;

/// Settings for a [`CircuitBreaker`].
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitBreakerConfig {
    /// Trip after this many failures in a row while Closed. `0` disables the
    /// consecutive-failure trigger.
    pub consecutive_failures: u32,
    /// Trip when the share of failed calls over `window` reaches this value
    /// (`0.0 < rate <= 1.0`). Values outside that range (or NaN) disable the
    /// failure-rate trigger.
    pub failure_rate_threshold: f64,
    /// Length of the rolling window over which the failure rate is computed.
    /// It slides in tenths of its length. `Duration::ZERO` disables the
    /// failure-rate trigger.
    pub window: Duration,
    /// The failure rate is only considered once at least this many calls were
    /// recorded in the window (`0` is treated as `1`).
    pub min_calls: u32,
    /// How long the breaker stays Open before letting trial calls through.
    pub cool_down: Duration,
    /// Trial calls let through while HalfOpen; the breaker closes once this
    /// many of them succeed (`0` is treated as `1`).
    pub half_open_max_calls: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate_threshold: 0.5,
            window: Duration::from_secs(30),
            min_calls: 20,
            cool_down: Duration::from_secs(10),
            half_open_max_calls: 1,
        }
    }
}

/// The externally visible state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls flow; outcomes are recorded.
    Closed,
    /// Calls are rejected until the cool-down passes.
    Open,
    /// A limited number of trial calls are let through.
    HalfOpen,
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        })
    }
}

/// A call was rejected because the breaker is open (or all half-open trial
/// slots are taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker is open (retry after {retry_after:?})")]
pub struct BreakerOpen {
    /// Time left until the breaker lets trial calls through; zero when it is
    /// half-open and waiting for trial calls in flight.
    pub retry_after: Duration,
}

/// The error of [`CircuitBreaker::execute`].
#[derive(Debug, thiserror::Error)]
pub enum CircuitError<E> {
    /// The breaker rejected the call; the operation was not run.
    #[error(transparent)]
    Open(BreakerOpen),
    /// The operation ran and failed.
    #[error("operation failed: {0}")]
    Inner(E),
}

impl<E> CircuitError<E> {
    /// The operation's own error, if it ran.
    pub fn into_inner(self) -> Option<E> {
        match self {
            CircuitError::Open(_) => None,
            CircuitError::Inner(e) => Some(e),
        }
    }

    /// True when the breaker rejected the call.
    pub fn is_open(&self) -> bool {
        matches!(self, CircuitError::Open(_))
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    tick: u64,
    successes: u32,
    failures: u32,
}

/// Success and failure counts over a window that slides bucket by bucket.
#[derive(Debug)]
struct RollingWindow {
    epoch: Instant,
    bucket_nanos: u64,
    buckets: [Bucket; WINDOW_BUCKETS],
}

impl RollingWindow {
    fn new(epoch: Instant, window: Duration) -> Self {
        let nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        Self {
            epoch,
            bucket_nanos: (nanos / WINDOW_BUCKETS as u64).max(1),
            buckets: [Bucket::default(); WINDOW_BUCKETS],
        }
    }

    fn tick(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(elapsed).unwrap_or(u64::MAX) / self.bucket_nanos
    }

    fn record(&mut self, now: Instant, success: bool) {
        let tick = self.tick(now);
        let bucket = &mut self.buckets[(tick % WINDOW_BUCKETS as u64) as usize];
        if bucket.tick != tick {
            *bucket = Bucket {
                tick,
                ..Bucket::default()
            };
        }
        if success {
            bucket.successes = bucket.successes.saturating_add(1);
        } else {
            bucket.failures = bucket.failures.saturating_add(1);
        }
    }

    /// (calls, failures) in the window ending at `now`.
    fn totals(&self, now: Instant) -> (u64, u64) {
        let tick = self.tick(now);
        let oldest = tick.saturating_sub(WINDOW_BUCKETS as u64 - 1);
        self.buckets
            .iter()
            .filter(|b| b.tick >= oldest && b.tick <= tick)
            .fold((0, 0), |(calls, failures), b| {
                (
                    calls + u64::from(b.successes) + u64::from(b.failures),
                    failures + u64::from(b.failures),
                )
            })
    }

    fn reset(&mut self) {
        self.buckets = [Bucket::default(); WINDOW_BUCKETS];
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed {
        consecutive_failures: u32,
    },
    /// `until == None`: the cool-down does not fit in an `Instant`.
    Open {
        until: Option<Instant>,
    },
    HalfOpen {
        issued: u32,
        successes: u32,
    },
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// Bumped on every state change; permits from an older generation are
    /// ignored when reported.
    generation: u64,
    window: RollingWindow,
}

/// What a permit reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure,
    Released,
}

/// A thread-safe circuit breaker. See the [module docs](self).
///
/// All methods take `&self`; share it with an `Arc`. Each call takes one
/// short, uncontended-in-practice lock with O(1) work.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: CircuitBreakerConfig,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
    calls_rejected: AtomicU64,
    times_opened: AtomicU64,
}

impl CircuitBreaker {
    /// A closed breaker on the system clock.
    pub fn new(config: CircuitBreakerConfig) -> Self {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// A closed breaker reading time from `clock`.
    pub fn with_clock(config: CircuitBreakerConfig, clock: Arc<dyn Clock>) -> Self {
        let now = clock.now();
        Self {
            inner: Mutex::new(Inner {
                state: State::Closed {
                    consecutive_failures: 0,
                },
                generation: 0,
                window: RollingWindow::new(now, config.window),
            }),
            config,
            clock,
            calls_rejected: AtomicU64::new(0),
            times_opened: AtomicU64::new(0),
        }
    }

    /// The configuration this breaker was built with.
    pub fn config(&self) -> &CircuitBreakerConfig {
        &self.config
    }

    /// The current state. An Open breaker whose cool-down has passed reports
    /// (and becomes) HalfOpen.
    pub fn state(&self) -> BreakerState {
        let now = self.clock.now();
        let mut inner = self.inner.lock();
        self.refresh(&mut inner, now);
        match inner.state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Calls rejected because the breaker was open or its trial slots taken.
    pub fn calls_rejected(&self) -> u64 {
        self.calls_rejected.load(Ordering::Relaxed)
    }

    /// How many times the breaker has moved to Open.
    pub fn times_opened(&self) -> u64 {
        self.times_opened.load(Ordering::Relaxed)
    }

    /// Asks to make one call. On `Ok`, make the call and report its outcome
    /// with [`Permit::success`] or [`Permit::failure`]; dropping the permit
    /// unreported counts as a failure.
    pub fn try_acquire(&self) -> Result<Permit<'_>, BreakerOpen> {
        let now = self.clock.now();
        let mut inner = self.inner.lock();
        self.refresh(&mut inner, now);
        let generation = inner.generation;
        let rejection = match &mut inner.state {
            State::Closed { .. } => None,
            State::HalfOpen { issued, .. } => {
                if *issued < self.half_open_max_calls() {
                    *issued += 1;
                    None
                } else {
                    Some(Duration::ZERO)
                }
            }
            State::Open { until } => Some(match until {
                Some(until) => until.saturating_duration_since(now),
                None => Duration::MAX,
            }),
        };
        drop(inner);
        match rejection {
            None => Ok(Permit {
                breaker: self,
                generation,
                reported: false,
            }),
            Some(retry_after) => {
                self.calls_rejected.fetch_add(1, Ordering::Relaxed);
                Err(BreakerOpen { retry_after })
            }
        }
    }

    /// Runs `f` if the breaker lets the call through, recording `Err` as a
    /// failure and `Ok` as a success. If the returned future is dropped before
    /// `f` completes, the call counts as a failure.
    pub async fn execute<F, Fut, T, E>(&self, f: F) -> Result<T, CircuitError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.execute_classified(f, |_| true).await
    }

    /// Like [`execute`](Self::execute), but only errors for which
    /// `is_failure` returns true count as failures; the others (say, a
    /// collector rejecting a malformed batch) show the collector is reachable
    /// and count as successes.
    pub async fn execute_classified<F, Fut, T, E, C>(
        &self,
        f: F,
        is_failure: C,
    ) -> Result<T, CircuitError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        C: FnOnce(&E) -> bool,
    {
        let permit = self.try_acquire().map_err(CircuitError::Open)?;
        match f().await {
            Ok(v) => {
                permit.success();
                Ok(v)
            }
            Err(e) => {
                if is_failure(&e) {
                    permit.failure();
                } else {
                    permit.success();
                }
                Err(CircuitError::Inner(e))
            }
        }
    }

    fn half_open_max_calls(&self) -> u32 {
        self.config.half_open_max_calls.max(1)
    }

    /// Applies time-driven transitions (Open → HalfOpen after the cool-down).
    fn refresh(&self, inner: &mut Inner, now: Instant) {
        if let State::Open { until: Some(until) } = inner.state
            && now >= until
        {
            inner.state = State::HalfOpen {
                issued: 0,
                successes: 0,
            };
            inner.generation = inner.generation.wrapping_add(1);
            tracing::info!("circuit breaker half-open: letting trial calls through");
        }
    }

    fn trips(&self, inner: &Inner, consecutive_failures: u32, now: Instant) -> bool {
        let cfg = &self.config;
        if cfg.consecutive_failures > 0 && consecutive_failures >= cfg.consecutive_failures {
            return true;
        }
        let rate = cfg.failure_rate_threshold;
        if !(rate > 0.0 && rate <= 1.0) || cfg.window.is_zero() {
            return false;
        }
        let (calls, failures) = inner.window.totals(now);
        calls >= u64::from(cfg.min_calls.max(1)) && failures as f64 >= rate * calls as f64
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        inner.state = State::Open {
            until: now.checked_add(self.config.cool_down),
        };
        inner.generation = inner.generation.wrapping_add(1);
        inner.window.reset();
        self.times_opened.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(cool_down = ?self.config.cool_down, "circuit breaker opened");
    }

    fn close(&self, inner: &mut Inner) {
        inner.state = State::Closed {
            consecutive_failures: 0,
        };
        inner.generation = inner.generation.wrapping_add(1);
        inner.window.reset();
        tracing::info!("circuit breaker closed");
    }

    fn report(&self, generation: u64, outcome: Outcome) {
        let now = self.clock.now();
        let mut inner = self.inner.lock();
        if inner.generation != generation {
            return;
        }
        match inner.state {
            State::Closed {
                consecutive_failures,
            } => match outcome {
                Outcome::Released => {}
                Outcome::Success => {
                    inner.window.record(now, true);
                    inner.state = State::Closed {
                        consecutive_failures: 0,
                    };
                }
                Outcome::Failure => {
                    inner.window.record(now, false);
                    let consecutive_failures = consecutive_failures.saturating_add(1);
                    inner.state = State::Closed {
                        consecutive_failures,
                    };
                    if self.trips(&inner, consecutive_failures, now) {
                        self.open(&mut inner, now);
                    }
                }
            },
            State::HalfOpen { issued, successes } => match outcome {
                Outcome::Released => {
                    inner.state = State::HalfOpen {
                        issued: issued.saturating_sub(1),
                        successes,
                    };
                }
                Outcome::Success => {
                    let successes = successes.saturating_add(1);
                    if successes >= self.half_open_max_calls() {
                        self.close(&mut inner);
                    } else {
                        inner.state = State::HalfOpen { issued, successes };
                    }
                }
                Outcome::Failure => self.open(&mut inner, now),
            },
            // Every move to Open bumps the generation, so no live permit
            // belongs to an Open breaker.
            State::Open { .. } => {}
        }
    }
}

/// Permission to make one call through a [`CircuitBreaker`].
///
/// Report the outcome with [`success`](Self::success) or
/// [`failure`](Self::failure). Dropping the permit without a report counts as
/// a failure; [`release`](Self::release) gives it back without recording
/// anything.
#[must_use = "report the call's outcome; a dropped permit counts as a failure"]
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    generation: u64,
    reported: bool,
}

impl Permit<'_> {
    /// The call succeeded.
    pub fn success(mut self) {
        self.finish(Outcome::Success);
    }

    /// The call failed.
    pub fn failure(mut self) {
        self.finish(Outcome::Failure);
    }

    /// The call was not made: give the permit back without recording an
    /// outcome (frees a half-open trial slot).
    pub fn release(mut self) {
        self.finish(Outcome::Released);
    }

    fn finish(&mut self, outcome: Outcome) {
        if !self.reported {
            self.reported = true;
            self.breaker.report(self.generation, outcome);
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.finish(Outcome::Failure);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;

    fn breaker(config: CircuitBreakerConfig) -> (CircuitBreaker, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        (CircuitBreaker::with_clock(config, clock.clone()), clock)
    }

    fn consecutive_only(n: u32) -> CircuitBreakerConfig {
        CircuitBreakerConfig {
            consecutive_failures: n,
            failure_rate_threshold: 0.0,
            cool_down: Duration::from_secs(10),
            ..CircuitBreakerConfig::default()
        }
    }

    fn fail(b: &CircuitBreaker) {
        b.try_acquire().unwrap().failure();
    }

    fn succeed(b: &CircuitBreaker) {
        b.try_acquire().unwrap().success();
    }

    #[test]
    fn trips_on_consecutive_failures() {
        let (b, _clock) = breaker(consecutive_only(3));
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.times_opened(), 1);
        let err = b.try_acquire().unwrap_err();
        assert_eq!(err.retry_after, Duration::from_secs(10));
        assert_eq!(b.calls_rejected(), 1);
    }

    #[test]
    fn success_resets_consecutive_count() {
        let (b, _clock) = breaker(consecutive_only(3));
        for _ in 0..10 {
            fail(&b);
            fail(&b);
            succeed(&b);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.times_opened(), 0);
    }

    #[test]
    fn trips_on_failure_rate_after_min_calls() {
        let cfg = CircuitBreakerConfig {
            consecutive_failures: 0,
            failure_rate_threshold: 0.5,
            window: Duration::from_secs(10),
            min_calls: 10,
            ..CircuitBreakerConfig::default()
        };
        let (b, _clock) = breaker(cfg);
        // Alternate: 50% failures, but fewer than min_calls until the 10th.
        for i in 0..9 {
            if i % 2 == 0 {
                fail(&b);
            } else {
                succeed(&b);
            }
            assert_eq!(b.state(), BreakerState::Closed, "call {i}");
        }
        // 10th call: 6 failures out of 10 >= 0.5.
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn failure_rate_below_threshold_stays_closed() {
        let cfg = CircuitBreakerConfig {
            consecutive_failures: 0,
            failure_rate_threshold: 0.5,
            window: Duration::from_secs(10),
            min_calls: 10,
            ..CircuitBreakerConfig::default()
        };
        let (b, _clock) = breaker(cfg);
        for i in 0..100 {
            if i % 3 == 0 {
                fail(&b);
            } else {
                succeed(&b);
            }
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn old_failures_slide_out_of_the_window() {
        let cfg = CircuitBreakerConfig {
            consecutive_failures: 0,
            failure_rate_threshold: 0.5,
            window: Duration::from_secs(10),
            min_calls: 4,
            ..CircuitBreakerConfig::default()
        };
        let (b, clock) = breaker(cfg);
        fail(&b);
        fail(&b);
        fail(&b);
        clock.advance(Duration::from_secs(11));
        // The three old failures have left the window: 1 failure of 4 calls.
        succeed(&b);
        succeed(&b);
        succeed(&b);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
        // Without the slide this would be 4 of 7 >= 0.5; now 2 of 5 < 0.5.
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b);
        // 3 of 6 >= 0.5.
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn cool_down_then_half_open_success_closes() {
        let (b, clock) = breaker(consecutive_only(1));
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        clock.advance(Duration::from_secs(9));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.try_acquire().unwrap_err().retry_after,
            Duration::from_secs(1)
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let trial = b.try_acquire().unwrap();
        // Only one trial call by default.
        assert_eq!(b.try_acquire().unwrap_err().retry_after, Duration::ZERO);
        trial.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.times_opened(), 1);
    }

    #[test]
    fn half_open_failure_reopens_for_a_full_cool_down() {
        let (b, clock) = breaker(consecutive_only(1));
        fail(&b);
        clock.advance(Duration::from_secs(10));
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.times_opened(), 2);
        clock.advance(Duration::from_secs(9));
        assert_eq!(b.state(), BreakerState::Open);
        clock.advance(Duration::from_secs(1));
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn half_open_needs_all_trials_to_succeed() {
        let cfg = CircuitBreakerConfig {
            half_open_max_calls: 3,
            ..consecutive_only(1)
        };
        let (b, clock) = breaker(cfg);
        fail(&b);
        clock.advance(Duration::from_secs(10));
        let p1 = b.try_acquire().unwrap();
        let p2 = b.try_acquire().unwrap();
        let p3 = b.try_acquire().unwrap();
        assert!(b.try_acquire().is_err());
        p1.success();
        p2.success();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        p3.success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn dropped_permit_counts_as_failure() {
        let (b, _clock) = breaker(consecutive_only(2));
        drop(b.try_acquire().unwrap());
        drop(b.try_acquire().unwrap());
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn released_permit_records_nothing_and_frees_trial_slot() {
        let (b, clock) = breaker(consecutive_only(1));
        b.try_acquire().unwrap().release();
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b);
        clock.advance(Duration::from_secs(10));
        b.try_acquire().unwrap().release();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.try_acquire().unwrap().success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn stale_permit_reports_are_ignored() {
        let (b, clock) = breaker(consecutive_only(1));
        let slow = b.try_acquire().unwrap();
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        clock.advance(Duration::from_secs(10));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // A success from before the trip must not close the breaker.
        slow.success();
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[tokio::test]
    async fn execute_maps_outcomes() {
        let (b, _clock) = breaker(consecutive_only(2));
        let ok: Result<u32, CircuitError<&str>> = b.execute(|| async { Ok(7) }).await;
        assert_eq!(ok.unwrap(), 7);
        for _ in 0..2 {
            let r: Result<u32, _> = b.execute(|| async { Err("down") }).await;
            assert!(matches!(r, Err(CircuitError::Inner("down"))));
        }
        let mut ran = false;
        let r: Result<u32, CircuitError<&str>> = b
            .execute(|| {
                ran = true;
                async { Ok(1) }
            })
            .await;
        assert!(r.unwrap_err().is_open());
        assert!(!ran, "operation must not run while open");
    }

    #[tokio::test]
    async fn execute_classified_ignores_non_failures() {
        let (b, _clock) = breaker(consecutive_only(1));
        let r: Result<(), _> = b
            .execute_classified(|| async { Err("bad request") }, |_| false)
            .await;
        assert!(matches!(r, Err(CircuitError::Inner("bad request"))));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn breaker_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<CircuitBreaker>();
        assert_send_sync::<Permit<'static>>();
    }

    #[test]
    fn concurrent_use_keeps_counts_consistent() {
        let b = Arc::new(CircuitBreaker::new(consecutive_only(u32::MAX)));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        let p = b.try_acquire().unwrap();
                        if i % 2 == 0 { p.success() } else { p.failure() }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.calls_rejected(), 0);
    }
}
