//! W3C Trace Context: parsing and formatting of the `traceparent` and
//! `tracestate` header values.
//!
//! Pure functions over header values; reading and writing actual headers is
//! the caller's job. The rules followed, and the few choices the spec leaves
//! open:
//!
//! * `traceparent` is Level 1 strict: lowercase hex only, version `ff`
//!   rejected, version `00` exactly 55 characters, a higher version parsed by
//!   its first 55 characters when character 55 is absent or `-`. Leading and
//!   trailing spaces and tabs are trimmed, as HTTP does with field values and
//!   the W3C test suite expects.
//! * Flags: for version `00` the sampled (`0x01`) and Level 2 random-trace-id
//!   (`0x02`) bits are kept and the undefined bits dropped, since the spec
//!   says vendors MUST set those to zero. For a higher version only the
//!   sampled bit is kept: the spec says to parse the sampled bit and assume
//!   nothing else about an unknown version.
//! * `tracestate` keys follow the Level 1 grammar (`simple-key` or
//!   `tenant@system`), which the W3C test suite checks. Level 2's looser key
//!   rule would also accept keys such as `1abc` or `a@b@c`; those are
//!   rejected here.
//! * An invalid `tracestate` is an error as a whole; the caller drops it and
//!   keeps `traceparent`, as the spec requires.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::ids::{SpanId, TraceFlags, TraceId, TraceState, decode_lower_hex};

/// Length of a version `00` `traceparent` value.
pub const TRACEPARENT_LEN: usize = 55;

/// Flag bits kept for version `00`: sampled (Level 1) and random-trace-id
/// (Level 2).
pub const KNOWN_FLAGS: u8 = 0x03;

/// Most list-members a `tracestate` may hold.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// Why a `traceparent` value was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TraceparentError {
    /// Not two lowercase hex digits followed by `-`.
    #[error("traceparent: bad version")]
    InvalidVersion,
    /// Version `ff`, which the spec forbids.
    #[error("traceparent: version ff is forbidden")]
    ForbiddenVersion,
    /// Wrong length for the version (`00` must be exactly 55 characters;
    /// higher versions at least 55).
    #[error("traceparent: wrong length {0}")]
    InvalidLength(usize),
    /// The trace id is not 32 lowercase hex digits followed by `-`.
    #[error("traceparent: bad trace-id")]
    InvalidTraceId,
    /// The trace id is all zeros.
    #[error("traceparent: all-zero trace-id")]
    ZeroTraceId,
    /// The parent id is not 16 lowercase hex digits followed by `-`.
    #[error("traceparent: bad parent-id")]
    InvalidParentId,
    /// The parent id is all zeros.
    #[error("traceparent: all-zero parent-id")]
    ZeroParentId,
    /// The flags are not 2 lowercase hex digits.
    #[error("traceparent: bad trace-flags")]
    InvalidFlags,
    /// A higher version whose flags are followed by something other than `-`.
    #[error("traceparent: bad data after trace-flags")]
    InvalidTrailer,
}

/// Why a `tracestate` value was rejected. `member` counts non-empty
/// list-members from 0 across all combined header values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TracestateError {
    /// More than [`MAX_TRACESTATE_MEMBERS`] list-members.
    #[error("tracestate: more than 32 list-members")]
    TooManyMembers,
    /// A list-member without `=`.
    #[error("tracestate: list-member {member} has no '='")]
    MissingEquals {
        /// Index of the offending list-member.
        member: usize,
    },
    /// A key outside the `simple-key` / `tenant@system` grammar.
    #[error("tracestate: list-member {member} has a bad key")]
    InvalidKey {
        /// Index of the offending list-member.
        member: usize,
    },
    /// A value that is empty, longer than 256 characters or holds a
    /// character outside 0x20–0x7E, or `,` or `=`.
    #[error("tracestate: list-member {member} has a bad value")]
    InvalidValue {
        /// Index of the offending list-member.
        member: usize,
    },
    /// A key seen earlier in the list.
    #[error("tracestate: list-member {member} repeats a key")]
    DuplicateKey {
        /// Index of the offending list-member.
        member: usize,
    },
}

static INVALID_HEADERS: AtomicU64 = AtomicU64::new(0);

/// Number of invalid trace-context or baggage headers seen by this process.
pub fn invalid_headers_total() -> u64 {
    INVALID_HEADERS.load(Ordering::Relaxed)
}

/// Counts one invalid incoming header; called by the extractor when a parse
/// fails.
pub(crate) fn count_invalid() {
    INVALID_HEADERS.fetch_add(1, Ordering::Relaxed);
}

/// True for HTTP optional whitespace (SP / HTAB).
pub(crate) fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Parses a `traceparent` value into its trace id, parent (span) id and
/// flags.
///
/// Flags keep only [`KNOWN_FLAGS`] for version `00`, and only the sampled bit
/// for higher versions.
pub fn parse_traceparent(value: &str) -> Result<(TraceId, SpanId, TraceFlags), TraceparentError> {
    let b = value.trim_matches(is_ows).as_bytes();

    let mut version = [0u8; 1];
    if b.len() < 3 || b[2] != b'-' || !decode_lower_hex(&b[..2], &mut version) {
        return Err(TraceparentError::InvalidVersion);
    }
    let version = version[0];
    if version == 0xff {
        return Err(TraceparentError::ForbiddenVersion);
    }
    if b.len() < TRACEPARENT_LEN || (version == 0 && b.len() != TRACEPARENT_LEN) {
        return Err(TraceparentError::InvalidLength(b.len()));
    }
    if b.len() > TRACEPARENT_LEN && b[TRACEPARENT_LEN] != b'-' {
        return Err(TraceparentError::InvalidTrailer);
    }

    let mut trace = [0u8; 16];
    if b[35] != b'-' || !decode_lower_hex(&b[3..35], &mut trace) {
        return Err(TraceparentError::InvalidTraceId);
    }
    let mut span = [0u8; 8];
    if b[52] != b'-' || !decode_lower_hex(&b[36..52], &mut span) {
        return Err(TraceparentError::InvalidParentId);
    }
    let mut flags = [0u8; 1];
    if !decode_lower_hex(&b[53..55], &mut flags) {
        return Err(TraceparentError::InvalidFlags);
    }

    let (trace_id, span_id) = (TraceId(trace), SpanId(span));
    if !trace_id.is_valid() {
        return Err(TraceparentError::ZeroTraceId);
    }
    if !span_id.is_valid() {
        return Err(TraceparentError::ZeroParentId);
    }
    let mask = if version == 0 {
        KNOWN_FLAGS
    } else {
        TraceFlags::SAMPLED.0
    };
    Ok((trace_id, span_id, TraceFlags(flags[0] & mask)))
}

/// Formats a version `00` `traceparent` value.
///
/// Flag bits outside [`KNOWN_FLAGS`] are cleared, as the spec requires. Both
/// ids should be valid (non-zero); receivers reject a header that is not.
pub fn format_traceparent(trace_id: TraceId, span_id: SpanId, flags: TraceFlags) -> String {
    format!("00-{trace_id}-{span_id}-{:02x}", flags.0 & KNOWN_FLAGS)
}

/// Parses one or more `tracestate` header field values, combined as if
/// joined with `,` (RFC 7230 §3.2.2).
///
/// Empty and whitespace-only list-members are skipped; the result is
/// normalized to `key=value` members joined by `,` with no whitespace around
/// them. An empty list gives [`TraceState::EMPTY`].
pub fn parse_tracestate(values: &[&str]) -> Result<TraceState, TracestateError> {
    let mut keys: Vec<&str> = Vec::new();
    let mut out = String::new();
    for member in values.iter().flat_map(|v| v.split(',')) {
        let member = member.trim_matches(is_ows);
        if member.is_empty() {
            continue;
        }
        let index = keys.len();
        if index == MAX_TRACESTATE_MEMBERS {
            return Err(TracestateError::TooManyMembers);
        }
        let (key, value) = member
            .split_once('=')
            .ok_or(TracestateError::MissingEquals { member: index })?;
        if !is_valid_key(key) {
            return Err(TracestateError::InvalidKey { member: index });
        }
        if !is_valid_value(value) {
            return Err(TracestateError::InvalidValue { member: index });
        }
        if keys.contains(&key) {
            return Err(TracestateError::DuplicateKey { member: index });
        }
        keys.push(key);
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(member);
    }
    if out.is_empty() {
        Ok(TraceState::EMPTY)
    } else {
        Ok(TraceState::from_validated(Arc::from(out)))
    }
}

/// The `tracestate` header value to send, or `None` when the state is empty
/// (the spec asks vendors not to send empty `tracestate` headers).
pub fn format_tracestate(state: &TraceState) -> Option<&str> {
    if state.is_empty() {
        None
    } else {
        Some(state.as_str())
    }
}

/// `lcalpha / DIGIT / "_" / "-" / "*" / "/"`.
fn is_key_char(c: u8) -> bool {
    matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/')
}

/// Level 1 key grammar:
/// `simple-key = lcalpha 0*255(keychar)` or
/// `tenant-id "@" system-id` with
/// `tenant-id = (lcalpha / DIGIT) 0*240(keychar)` and
/// `system-id = lcalpha 0*13(keychar)`.
fn is_valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    match b.iter().position(|&c| c == b'@') {
        None => {
            (1..=256).contains(&b.len())
                && b[0].is_ascii_lowercase()
                && b[1..].iter().all(|&c| is_key_char(c))
        }
        Some(at) => {
            let (tenant, system) = (&b[..at], &b[at + 1..]);
            (1..=241).contains(&tenant.len())
                && (tenant[0].is_ascii_lowercase() || tenant[0].is_ascii_digit())
                && tenant[1..].iter().all(|&c| is_key_char(c))
                && (1..=14).contains(&system.len())
                && system[0].is_ascii_lowercase()
                && system[1..].iter().all(|&c| is_key_char(c))
        }
    }
}

/// `value = 0*255(chr) nblk-chr`, `chr = %x20 / nblk-chr`,
/// `nblk-chr = %x21-2B / %x2D-3C / %x3E-7E`.
fn is_valid_value(value: &str) -> bool {
    let b = value.as_bytes();
    (1..=256).contains(&b.len())
        && b.last() != Some(&b' ')
        && b.iter()
            .all(|&c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TID: &str = "12345678901234567890123456789012";
    const SID: &str = "1234567890123456";

    fn tp(s: &str) -> Result<(TraceId, SpanId, TraceFlags), TraceparentError> {
        parse_traceparent(s)
    }

    fn ok_ids(s: &str) -> (TraceId, SpanId, TraceFlags) {
        tp(s).unwrap_or_else(|e| panic!("{s:?} rejected: {e}"))
    }

    #[test]
    fn traceparent_valid() {
        let (t, s, f) = ok_ids("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(t.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.to_string(), "00f067aa0ba902b7");
        assert!(f.is_sampled());
        let (_, _, f) = ok_ids("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(!f.is_sampled());
    }

    #[test]
    fn traceparent_flags_masking() {
        // Undefined bits dropped, Level 2 random bit kept.
        let (_, _, f) = ok_ids(&format!("00-{TID}-{SID}-ff"));
        assert_eq!(f, TraceFlags(0x03));
        let (_, _, f) = ok_ids(&format!("00-{TID}-{SID}-09"));
        assert_eq!(f, TraceFlags(0x01));
        // Higher version: only the sampled bit.
        let (_, _, f) = ok_ids(&format!("cc-{TID}-{SID}-03"));
        assert_eq!(f, TraceFlags(0x01));
        assert_eq!(
            format_traceparent(TraceId::from_u128(1), SpanId::from_u64(2), TraceFlags(0xff)),
            "00-00000000000000000000000000000001-0000000000000002-03"
        );
    }

    #[test]
    fn traceparent_uppercase_rejected() {
        assert_eq!(
            tp("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            Err(TraceparentError::InvalidTraceId)
        );
        assert_eq!(
            tp("00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01"),
            Err(TraceparentError::InvalidParentId)
        );
        assert_eq!(
            tp(&format!("00-{TID}-{SID}-0A")),
            Err(TraceparentError::InvalidFlags)
        );
        assert_eq!(
            tp(&format!("0A-{TID}-{SID}-01")),
            Err(TraceparentError::InvalidVersion)
        );
    }

    #[test]
    fn traceparent_version_rules() {
        // Version 00 with anything extra.
        assert!(tp(&format!("00-{TID}-{SID}-01.")).is_err());
        assert!(tp(&format!("00-{TID}-{SID}-01-what-the-future-will-be-like")).is_err());
        assert!(tp(&format!("00-{TID}-{SID}-01-")).is_err());
        // Future version.
        assert!(tp(&format!("cc-{TID}-{SID}-01")).is_ok());
        let (t, _, _) = ok_ids(&format!("cc-{TID}-{SID}-01-what-the-future-will-be-like"));
        assert_eq!(t.to_string(), TID);
        assert_eq!(
            tp(&format!("cc-{TID}-{SID}-01.what-the-future-will-be-like")),
            Err(TraceparentError::InvalidTrailer)
        );
        assert!(tp(&format!("cc-{TID}-{SID}-0")).is_err());
        // Forbidden and malformed versions.
        assert_eq!(
            tp(&format!("ff-{TID}-{SID}-01")),
            Err(TraceparentError::ForbiddenVersion)
        );
        assert_eq!(
            tp(&format!(".0-{TID}-{SID}-01")),
            Err(TraceparentError::InvalidVersion)
        );
        assert_eq!(
            tp(&format!("0.-{TID}-{SID}-01")),
            Err(TraceparentError::InvalidVersion)
        );
        assert_eq!(
            tp(&format!("000-{TID}-{SID}-01")),
            Err(TraceparentError::InvalidVersion)
        );
        assert_eq!(
            tp(&format!("0000-{TID}-{SID}-01")),
            Err(TraceparentError::InvalidVersion)
        );
        assert_eq!(
            tp(&format!("0-{TID}-{SID}-01")),
            Err(TraceparentError::InvalidVersion)
        );
    }

    #[test]
    fn traceparent_wrong_lengths() {
        for s in [
            format!("00-{TID}3-{SID}-01"),
            format!("00-{}-{SID}-01", &TID[1..]),
            format!("00-{TID}-{SID}7-01"),
            format!("00-{TID}-{}-01", &SID[1..]),
            format!("00-{TID}-{SID}-001"),
            format!("00-{TID}-{SID}-1"),
            String::new(),
            "00".into(),
            "00-".into(),
        ] {
            assert!(tp(&s).is_err(), "{s:?} accepted");
        }
        // A longer trace id must not be silently truncated in either direction.
        assert!(tp(&format!("cc-{TID}3-{SID}-01")).is_err());
    }

    #[test]
    fn traceparent_zero_ids() {
        assert_eq!(
            tp(&format!("00-{}-{SID}-01", "0".repeat(32))),
            Err(TraceparentError::ZeroTraceId)
        );
        assert_eq!(
            tp(&format!("00-{TID}-{}-01", "0".repeat(16))),
            Err(TraceparentError::ZeroParentId)
        );
    }

    #[test]
    fn traceparent_bad_chars() {
        for s in [
            format!("00-.{}-{SID}-01", &TID[1..]),
            format!("00-{}.-{SID}-01", &TID[..31]),
            format!("00-{TID}-.{}-01", &SID[1..]),
            format!("00-{TID}-{}.-01", &SID[..15]),
            format!("00-{TID}-{SID}-.0"),
            format!("00-{TID}-{SID}-0."),
            format!("00-{TID}-{SID}-0g"),
            format!("00_{TID}-{SID}-01"),
            format!("00-{TID}_{SID}-01"),
            format!("00-{TID}-{SID}_01"),
            // Multi-byte characters where hex is expected must not panic.
            format!("00-é{}-{SID}-01", &TID[2..]),
            format!("é0-{TID}-{SID}-01"),
            format!("00-{TID}-{SID}-é"),
        ] {
            assert!(tp(&s).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn traceparent_ows_trimmed() {
        for s in [
            format!(" 00-{TID}-{SID}-01"),
            format!("\t00-{TID}-{SID}-01"),
            format!("00-{TID}-{SID}-01 "),
            format!("00-{TID}-{SID}-01\t"),
            format!("\t 00-{TID}-{SID}-01 \t"),
        ] {
            assert_eq!(ok_ids(&s).0.to_string(), TID);
        }
        // Only SP and HTAB are OWS.
        assert!(tp(&format!("\n00-{TID}-{SID}-01")).is_err());
        assert!(tp(&format!("00 -{TID}-{SID}-01")).is_err());
    }

    #[test]
    fn tracestate_basic_and_normalized() {
        let ts = parse_tracestate(&["rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"]).unwrap();
        assert_eq!(ts.as_str(), "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
        let ts = parse_tracestate(&["foo=1 \t , \t bar=2, \t baz=3"]).unwrap();
        assert_eq!(ts.as_str(), "foo=1,bar=2,baz=3");
        let ts = parse_tracestate(&["foo=1\t \t,\t \tbar=2,\t \tbaz=3"]).unwrap();
        assert_eq!(ts.as_str(), "foo=1,bar=2,baz=3");
        for s in [" foo=1", "\tfoo=1", "foo=1 ", "foo=1\t", "\t foo=1 \t"] {
            assert_eq!(parse_tracestate(&[s]).unwrap().as_str(), "foo=1");
        }
        // Leading spaces belong to the value.
        let ts = parse_tracestate(&["a=  x ,b=y"]).unwrap();
        assert_eq!(ts.as_str(), "a=  x,b=y");
        assert_eq!(format_tracestate(&ts), Some("a=  x,b=y"));
    }

    #[test]
    fn tracestate_empty() {
        for v in [&[""][..], &[], &[" , ,\t,"], &["", ""]] {
            let ts = parse_tracestate(v).unwrap();
            assert!(ts.is_empty());
            assert_eq!(format_tracestate(&ts), None);
        }
        assert_eq!(parse_tracestate(&["foo=1", ""]).unwrap().as_str(), "foo=1");
        assert_eq!(parse_tracestate(&["", "foo=1"]).unwrap().as_str(), "foo=1");
        assert_eq!(
            parse_tracestate(&["foo=1,,bar=2,"]).unwrap().as_str(),
            "foo=1,bar=2"
        );
    }

    #[test]
    fn tracestate_multi_value_combining() {
        let ts = parse_tracestate(&["foo=1,bar=2", "rojo=1,congo=2", "baz=3"]).unwrap();
        assert_eq!(ts.as_str(), "foo=1,bar=2,rojo=1,congo=2,baz=3");
    }

    fn members(range: std::ops::RangeInclusive<usize>) -> String {
        range
            .map(|i| format!("bar{i:02}={i:02}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    #[test]
    fn tracestate_member_limit() {
        let ts = parse_tracestate(&[&members(1..=10), &members(11..=20), &members(21..=32)]);
        assert_eq!(ts.unwrap().as_str().split(',').count(), 32);
        assert_eq!(
            parse_tracestate(&[&members(1..=30), &members(31..=33)]),
            Err(TracestateError::TooManyMembers)
        );
        // Empty members do not count.
        let padded = format!("{},,,, ,", members(1..=32));
        assert!(parse_tracestate(&[&padded]).is_ok());
    }

    #[test]
    fn tracestate_duplicate_keys() {
        for v in [
            &["foo=1,foo=1"][..],
            &["foo=1,foo=2"],
            &["foo=1", "foo=1"],
            &["foo=1", "foo=2"],
        ] {
            assert_eq!(
                parse_tracestate(v),
                Err(TracestateError::DuplicateKey { member: 1 })
            );
        }
    }

    #[test]
    fn tracestate_invalid_keys() {
        for s in [
            "foo =1",
            "FOO=1",
            "foo.bar=1",
            "foo@=1,bar=2",
            "@foo=1,bar=2",
            "foo@@bar=1,bar=2",
            "foo@bar@baz=1,bar=2",
            "1abc=1",
            "_a=1",
            "=1",
            "a@1b=1",
        ] {
            assert!(
                matches!(
                    parse_tracestate(&[s]),
                    Err(TracestateError::InvalidKey { .. })
                ),
                "{s:?} accepted"
            );
        }
        assert_eq!(
            parse_tracestate(&["foo"]),
            Err(TracestateError::MissingEquals { member: 0 })
        );
    }

    #[test]
    fn tracestate_key_lengths() {
        let ok = |k: String| parse_tracestate(&["foo=1", &format!("{k}=1")]).is_ok();
        assert!(ok("z".repeat(256)));
        assert!(!ok("z".repeat(257)));
        assert!(ok(format!("{}@{}", "t".repeat(241), "v".repeat(14))));
        assert!(!ok(format!("{}@v", "t".repeat(242))));
        assert!(!ok(format!("t@{}", "v".repeat(15))));
        assert!(ok("0tenant@sys".into()));
    }

    #[test]
    fn tracestate_all_allowed_characters() {
        let key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/";
        let value: String = (0x20u8..=0x7e)
            .filter(|&c| c != b',' && c != b'=')
            .map(char::from)
            .collect();
        for k in [key.to_string(), format!("{key}@a-z0-9_-*/")] {
            let member = format!("{k}={value}");
            assert_eq!(parse_tracestate(&[&member]).unwrap().as_str(), member);
        }
    }

    #[test]
    fn tracestate_invalid_values() {
        for s in [
            "foo=bar=baz",
            "foo=,bar=3",
            "foo=a\tb",
            "foo=é",
            "foo=a\u{7f}",
            "foo= ",
        ] {
            assert!(
                matches!(
                    parse_tracestate(&[s]),
                    Err(TracestateError::InvalidValue { .. })
                ),
                "{s:?} accepted"
            );
        }
        let ok = |v: String| parse_tracestate(&[&format!("k={v}")]).is_ok();
        assert!(ok("v".repeat(256)));
        assert!(!ok("v".repeat(257)));
    }

    #[test]
    fn counter_increments() {
        let before = invalid_headers_total();
        count_invalid();
        assert!(invalid_headers_total() > before);
    }

    fn valid_key() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z][a-z0-9_*/-]{0,20}",
            "[a-z0-9][a-z0-9_*/-]{0,10}@[a-z][a-z0-9_*/-]{0,13}",
        ]
    }

    proptest! {
        #[test]
        fn traceparent_round_trip(t in 1u128.., s in 1u64.., f in any::<u8>()) {
            let (t, s) = (TraceId::from_u128(t), SpanId::from_u64(s));
            let header = format_traceparent(t, s, TraceFlags(f));
            prop_assert_eq!(header.len(), TRACEPARENT_LEN);
            prop_assert_eq!(parse_traceparent(&header), Ok((t, s, TraceFlags(f & KNOWN_FLAGS))));
        }

        #[test]
        fn tracestate_round_trip(
            entries in proptest::collection::btree_map(valid_key(), "[ -+\\--<>-~]{0,20}[!-+\\--<>-~]", 0..=32),
        ) {
            let header = entries
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" , ");
            let ts = parse_tracestate(&[&header]).unwrap();
            let again = parse_tracestate(&[ts.as_str()]).unwrap();
            prop_assert_eq!(&again, &ts);
            prop_assert_eq!(ts.as_str().split(',').filter(|m| !m.is_empty()).count(), entries.len());
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,80}", raw in proptest::collection::vec(any::<u8>(), 0..80)) {
            let lossy = String::from_utf8_lossy(&raw);
            for input in [s.as_str(), &lossy] {
                let _ = parse_traceparent(input);
                if let Ok(ts) = parse_tracestate(&[input, input]) {
                    prop_assert_eq!(parse_tracestate(&[ts.as_str()]), Ok(ts.clone()));
                }
            }
        }

        #[test]
        fn traceparent_mutations_never_panic(
            t in 1u128.., s in 1u64.., pos in 0usize..60, c in any::<char>()
        ) {
            let mut header = format_traceparent(TraceId::from_u128(t), SpanId::from_u64(s), TraceFlags(1));
            let pos = pos.min(header.len());
            header.insert(pos, c);
            let _ = parse_traceparent(&header);
            header.replace_range(pos..pos + c.len_utf8(), "");
            if pos < header.len() {
                header.remove(pos);
                let _ = parse_traceparent(&header);
            }
        }
    }
}
