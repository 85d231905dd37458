//! Wall-clock timestamps for spans, read from the CPU's timestamp counter.
//!
//! `SystemTime::now()` costs a vDSO call plus a conversion on every span
//! start and end. Here a span reads the TSC through `quanta` (falling back
//! to the monotonic clock where the TSC is not invariant) and adds an
//! offset to Unix time. The export worker re-anchors the offset every
//! second, so NTP corrections reach span timestamps within a second and the
//! counter's drift never accumulates.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

struct WallClock {
    clock: quanta::Clock,
    base: u64,
    // Unix nanoseconds minus counter nanoseconds since `base`, wrapping.
    offset: AtomicU64,
}

static WALL: OnceLock<WallClock> = OnceLock::new();

fn system_unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn wall() -> &'static WallClock {
    WALL.get_or_init(|| {
        // The first quanta clock calibrates the counter (10-20 ms, at most
        // 200 ms); tracers call `init` at start-up so no span pays for it.
        let clock = quanta::Clock::new();
        let base = clock.raw();
        let w = WallClock {
            clock,
            base,
            offset: AtomicU64::new(0),
        };
        anchor(&w);
        w
    })
}

fn anchor(w: &WallClock) {
    let mono = w.clock.delta_as_nanos(w.base, w.clock.raw());
    let unix = system_unix_nanos();
    w.offset.store(unix.wrapping_sub(mono), Ordering::Relaxed);
}

/// Calibrates the counter now rather than on the first span.
pub(crate) fn init() {
    let _ = wall();
}

/// Re-reads the system clock and re-anchors the counter to it.
pub(crate) fn recalibrate() {
    anchor(wall());
}

/// Now, as the counter's raw value (never 0): cheaper than
/// [`now_unix_nanos`] by the conversion, which [`raw_to_unix_nanos`] does
/// later (the export worker does it for span start and end times).
#[inline]
pub(crate) fn raw_now() -> u64 {
    wall().clock.raw().max(1)
}

/// A raw counter value from [`raw_now`], in Unix nanoseconds.
pub(crate) fn raw_to_unix_nanos(raw: u64) -> u64 {
    let w = wall();
    w.clock
        .delta_as_nanos(w.base, raw)
        .wrapping_add(w.offset.load(Ordering::Relaxed))
}

/// Now, in Unix nanoseconds.
#[inline]
pub fn now_unix_nanos() -> u64 {
    let w = wall();
    w.clock
        .delta_as_nanos(w.base, w.clock.raw())
        .wrapping_add(w.offset.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_the_system_clock() {
        init();
        let sys = system_unix_nanos();
        let ours = now_unix_nanos();
        let diff = sys.abs_diff(ours);
        assert!(diff < 50_000_000, "off by {diff} ns");
        recalibrate();
        let a = now_unix_nanos();
        let b = now_unix_nanos();
        assert!(b >= a, "monotone between anchors");
        // A raw reading converted later is the time it was taken.
        let before = now_unix_nanos();
        let raw = raw_now();
        let after = now_unix_nanos();
        let at = raw_to_unix_nanos(raw);
        assert!(
            (before..=after).contains(&at),
            "{before} <= {at} <= {after}"
        );
    }
}
