//! Reliability building blocks shared by the tracer's users, the sidecar
//! and the collector.
//!
//! - [`circuit_breaker`]: stop calling a collector that keeps failing, probe it
//!   again after a cool-down.
//! - [`retry`](mod@retry): exponential backoff with jitter around a fallible async call.
//! - [`spill`]: an append-only, crash-safe log of CRC-framed records in
//!   segment files, with a cursor: the sidecar's per-endpoint log and the
//!   base of the collector's write-ahead log.
//!
//! Time-dependent pieces read time through the [`Clock`] trait so tests can
//! drive them with a [`ManualClock`] instead of sleeping.

pub mod circuit_breaker;
pub mod retry;
pub mod spill;

use std::fmt;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub use circuit_breaker::{
    BreakerOpen, BreakerState, CircuitBreaker, CircuitBreakerConfig, CircuitError, Permit,
};
pub use retry::{Jitter, RetryPolicy, retry, retry_with_rng};
pub use spill::{
    Error as SpillError, FsyncPolicy, ScanEnd, SegmentScan, SpillConfig, SpillLog, SpillStats,
    decode_segment,
};

/// A source of monotonic time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The real monotonic clock ([`Instant::now`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Tokio's clock ([`tokio::time::Instant::now`]): follows paused and advanced
/// time in tests that use `start_paused`, and real time otherwise.
#[derive(Debug, Default, Clone, Copy)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// A clock that only moves when told to, for tests.
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    offset: Mutex<Duration>,
}

impl ManualClock {
    /// A clock frozen at the moment of creation.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut offset = self.offset.lock();
        *offset = offset.saturating_add(by);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        let offset = *self.offset.lock();
        // An offset too large for `Instant` pins the clock at the base instead
        // of panicking; tests never advance that far.
        self.base.checked_add(offset).unwrap_or(self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        assert_eq!(clock.now(), t0);
        clock.advance(Duration::from_secs(3));
        assert_eq!(clock.now() - t0, Duration::from_secs(3));
    }
}
