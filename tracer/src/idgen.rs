//! Generates ids from a fast per-thread PRNG seeded from the OS.
//!
//! The generator is wyrand (a Weyl sequence through a 128-bit multiply,
//! which passes BigCrush and PractRand) in a `const` thread-local: a span
//! id costs one multiply and no lazy-initialisation check beyond the seed
//! test. Each thread seeds its own state from the OS the first time, so
//! threads walk unrelated points of the 2^64 cycle.

use crate::ids::{SpanId, TraceId};
use rand::TryRngCore;
use std::cell::Cell;

thread_local! {
    // 0 until seeded.
    static STATE: Cell<u64> = const { Cell::new(0) };
}

const INCREMENT: u64 = 0xa076_1d64_78bd_642f;
const MIX: u64 = 0xe703_7ed1_a0b4_28db;

#[cold]
fn seed(cell: &Cell<u64>) -> u64 {
    match rand::rngs::OsRng.try_next_u64() {
        Ok(s) if s != 0 => s,
        // Without an OS source (never seen on Linux), the time and the
        // state's address still differ between threads and runs.
        _ => crate::time::now_unix_nanos() ^ (std::ptr::from_ref(cell) as usize as u64) | 1,
    }
}

/// The next `n` 64-bit outputs of this thread's generator.
#[inline]
fn next<const N: usize>() -> [u64; N] {
    STATE.with(|cell| {
        let mut s = cell.get();
        if s == 0 {
            s = seed(cell);
        }
        let out = std::array::from_fn(|_| {
            s = s.wrapping_add(INCREMENT);
            let t = u128::from(s) * u128::from(s ^ MIX);
            ((t >> 64) as u64) ^ (t as u64)
        });
        cell.set(s);
        out
    })
}

/// A random, valid trace id.
#[cfg(test)]
pub fn trace_id() -> TraceId {
    trace_and_span_id().0
}

/// A random, valid trace id and span id (one look-up of the generator).
#[inline]
pub fn trace_and_span_id() -> (TraceId, SpanId) {
    let [hi, lo, span] = next::<3>();
    // An all-zero id is invalid; a zero output is a 2^-64 event, mapped
    // to 1 rather than drawn again.
    let trace = TraceId::from_u128(((u128::from(hi) << 64) | u128::from(lo)).max(1));
    (trace, SpanId::from_u64(span.max(1)))
}

/// A random, valid span id.
#[inline]
pub fn span_id() -> SpanId {
    let [v] = next::<1>();
    SpanId::from_u64(v.max(1))
}

/// A random `u64`, for jitter and instance ids.
pub fn u64() -> u64 {
    let [v] = next::<1>();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = trace_id();
        let b = trace_id();
        assert!(a.is_valid() && b.is_valid());
        assert_ne!(a, b);
        assert!(span_id().is_valid());
    }

    #[test]
    fn ids_from_many_threads_never_repeat_and_every_bit_varies() {
        let per_thread = 50_000;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    (0..per_thread)
                        .map(|_| trace_and_span_id())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut traces = std::collections::HashSet::new();
        let mut spans = std::collections::HashSet::new();
        let mut ones = [0u32; 192];
        for t in threads {
            for (trace, span) in t.join().unwrap() {
                assert!(trace.is_valid() && span.is_valid());
                assert!(traces.insert(trace), "trace id repeated");
                assert!(spans.insert(span), "span id repeated");
                let (tv, sv) = (trace.to_u128(), span.to_u64());
                for (b, n) in ones.iter_mut().enumerate() {
                    let bit = if b < 128 {
                        (tv >> b) & 1 == 1
                    } else {
                        (sv >> (b - 128)) & 1 == 1
                    };
                    *n += u32::from(bit);
                }
            }
        }
        // Each bit is set in half the ids, give or take 2 % (over 200,000
        // ids the standard deviation is 0.11 %).
        let total = 4 * per_thread as u32;
        for (b, n) in ones.iter().enumerate() {
            let share = f64::from(*n) / f64::from(total);
            assert!((0.48..0.52).contains(&share), "bit {b} set in {share}");
        }
    }
}
