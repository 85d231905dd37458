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

/// Lowercase hex of any bytes (an id in Jaeger's and clew's JSON).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Decodes exactly `2 * out.len()` lowercase hex digits into `out`.
pub fn decode_lower_hex(s: &[u8], out: &mut [u8]) -> bool {
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

    /// A trace state from a header value the caller has validated (the
    /// tracer's `tracestate` parser, or a value this type produced).
    #[doc(hidden)]
    pub fn from_validated(value: std::sync::Arc<str>) -> Self {
        TraceState(Some(value))
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
    fn flags() {
        assert!(TraceFlags::SAMPLED.is_sampled());
        assert!(!TraceFlags(0x02).is_sampled());
        assert_eq!(TraceFlags(0x02).with_sampled(true), TraceFlags(0x03));
        assert_eq!(TraceFlags(0x03).with_sampled(false), TraceFlags(0x02));
    }
}
