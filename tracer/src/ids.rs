//! Trace and span identifiers, trace flags and the span context that crosses
//! process boundaries.

use std::fmt;

/// A 16-byte W3C trace id. All-zero is invalid.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte W3C span (parent) id. All-zero is invalid.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// The invalid, all-zero trace id.
    pub const INVALID: TraceId = TraceId([0; 16]);

    /// True unless all bytes are zero.
    pub fn is_valid(&self) -> bool {
        self.0 != [0; 16]
    }

    /// Builds a trace id from a `u128` (big-endian byte order).
    pub fn from_u128(v: u128) -> Self {
        TraceId(v.to_be_bytes())
    }

    /// The id as a `u128` (big-endian byte order).
    pub fn to_u128(self) -> u128 {
        u128::from_be_bytes(self.0)
    }

    /// Builds a trace id from a byte slice of exactly 16 bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; 16]>::try_from(b).ok().map(TraceId)
    }

    /// Parses 32 lowercase hex characters. Uppercase is rejected, as W3C requires.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 16];
        decode_lower_hex(s.as_bytes(), &mut out).then_some(TraceId(out))
    }
}

impl SpanId {
    /// The invalid, all-zero span id.
    pub const INVALID: SpanId = SpanId([0; 8]);

    /// True unless all bytes are zero.
    pub fn is_valid(&self) -> bool {
        self.0 != [0; 8]
    }

    /// Builds a span id from a `u64` (big-endian byte order).
    pub fn from_u64(v: u64) -> Self {
        SpanId(v.to_be_bytes())
    }

    /// The id as a `u64` (big-endian byte order).
    pub fn to_u64(self) -> u64 {
        u64::from_be_bytes(self.0)
    }

    /// Builds a span id from a byte slice of exactly 8 bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; 8]>::try_from(b).ok().map(SpanId)
    }

    /// Parses 16 lowercase hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 8];
        decode_lower_hex(s.as_bytes(), &mut out).then_some(SpanId(out))
    }
}

/// Decodes exactly `2 * out.len()` lowercase hex digits into `out`.
pub(crate) fn decode_lower_hex(s: &[u8], out: &mut [u8]) -> bool {
    if s.len() != out.len() * 2 {
        return false;
    }
    fn nib(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    for (i, pair) in s.chunks_exact(2).enumerate() {
        match (nib(pair[0]), nib(pair[1])) {
            (Some(h), Some(l)) => out[i] = (h << 4) | l,
            _ => return false,
        }
    }
    true
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (i, b) in bytes.iter().enumerate() {
        buf[2 * i] = HEX[(b >> 4) as usize];
        buf[2 * i + 1] = HEX[(b & 0xf) as usize];
    }
    // Only ASCII hex digits were written.
    f.write_str(std::str::from_utf8(&buf[..bytes.len() * 2]).map_err(|_| fmt::Error)?)
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}
impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}
impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}
impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// W3C trace flags. Only the `sampled` bit (0x01) is defined.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct TraceFlags(pub u8);

impl TraceFlags {
    /// The sampled bit.
    pub const SAMPLED: TraceFlags = TraceFlags(0x01);
    /// No flags set.
    pub const NONE: TraceFlags = TraceFlags(0);

    /// True when the sampled bit is set.
    pub fn is_sampled(self) -> bool {
        self.0 & 0x01 == 0x01
    }

    /// These flags with the sampled bit set or cleared.
    pub fn with_sampled(self, sampled: bool) -> Self {
        if sampled {
            TraceFlags(self.0 | 0x01)
        } else {
            TraceFlags(self.0 & !0x01)
        }
    }
}

/// The W3C `tracestate`: an ordered list of at most 32 vendor entries.
///
/// Stored as the validated header value, so propagating it is a copy.
#[derive(Clone, PartialEq, Eq, Default, Debug)]
pub struct TraceState(pub(crate) Option<std::sync::Arc<str>>);

impl TraceState {
    /// The empty trace state.
    pub const EMPTY: TraceState = TraceState(None);

    /// The header value, or `""` when empty.
    pub fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or("")
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

/// The part of a span that propagates: ids, flags and trace state.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct SpanContext {
    /// The trace this span belongs to.
    pub trace_id: TraceId,
    /// This span's id.
    pub span_id: SpanId,
    /// W3C trace flags (sampled bit).
    pub flags: TraceFlags,
    /// Vendor trace state carried through unchanged.
    pub trace_state: TraceState,
    /// True when this context was extracted from an incoming request.
    pub is_remote: bool,
}

impl SpanContext {
    /// A context with both ids valid.
    pub fn is_valid(&self) -> bool {
        self.trace_id.is_valid() && self.span_id.is_valid()
    }

    /// True when the sampled flag is set.
    pub fn is_sampled(&self) -> bool {
        self.flags.is_sampled()
    }
}

/// Generates ids from a fast per-thread PRNG seeded from the OS.
///
/// The generator is wyrand (a Weyl sequence through a 128-bit multiply,
/// which passes BigCrush and PractRand) in a `const` thread-local: a span
/// id costs one multiply and no lazy-initialisation check beyond the seed
/// test. Each thread seeds its own state from the OS the first time, so
/// threads walk unrelated points of the 2^64 cycle.
pub(crate) mod idgen {
    use super::{SpanId, TraceId};
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let t = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        assert_eq!(t.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let s = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        assert_eq!(s.to_string(), "00f067aa0ba902b7");
        assert_eq!(SpanId::from_u64(s.to_u64()), s);
        assert_eq!(TraceId::from_u128(t.to_u128()), t);
    }

    #[test]
    fn hex_rejects_upper_and_bad_length() {
        assert!(TraceId::from_hex("4BF92F3577B34DA6A3CE929D0E0E4736").is_none());
        assert!(TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e473").is_none());
        assert!(SpanId::from_hex("00f067aa0ba902bz").is_none());
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = idgen::trace_id();
        let b = idgen::trace_id();
        assert!(a.is_valid() && b.is_valid());
        assert_ne!(a, b);
        assert!(idgen::span_id().is_valid());
    }

    #[test]
    fn ids_from_many_threads_never_repeat_and_every_bit_varies() {
        let per_thread = 50_000;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    (0..per_thread)
                        .map(|_| idgen::trace_and_span_id())
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

    #[test]
    fn flags() {
        assert!(TraceFlags::SAMPLED.is_sampled());
        assert!(!TraceFlags(0x02).is_sampled());
        assert_eq!(TraceFlags(0x02).with_sampled(true), TraceFlags(0x03));
        assert_eq!(TraceFlags(0x03).with_sampled(false), TraceFlags(0x02));
    }
}
