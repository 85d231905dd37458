//! The policies that look at one trace alone (no state, no clock).

use std::collections::HashSet;

use clew_proto::v1::{AnyValue, KeyValue, Span, any_value::Value};
use regex::Regex;

use super::policy::PolicyDecision;

/// `latency` (upstream `latency.go`): the trace's duration is the latest
/// span end minus the earliest span start, in whole milliseconds (Go's
/// `Duration.Milliseconds`, truncating). Without an upper bound it matches
/// at `threshold_ms` or more; with one, above `threshold_ms` and at most
/// `upper_threshold_ms`.
///
/// Differs from upstream: upstream tests the running duration after each
/// span in arrival order and stops at the first that fits, so with an upper
/// bound a trace whose first spans fit but whose whole duration is over the
/// bound is sampled there; here only the whole trace's duration counts.
/// Without an upper bound both agree.
#[derive(Debug)]
pub(crate) struct Latency {
    pub threshold_ms: i64,
    pub upper_threshold_ms: i64,
}

impl Latency {
    pub fn matches(&self, spans: &[Span]) -> bool {
        let (Some(start), Some(end)) = (
            spans.iter().map(|s| s.start_time_unix_nano).min(),
            spans.iter().map(|s| s.end_time_unix_nano).max(),
        ) else {
            return false; // no spans: upstream never runs its condition
        };
        let ms = i64::try_from(end.saturating_sub(start) / 1_000_000).unwrap_or(i64::MAX);
        if self.upper_threshold_ms == 0 {
            ms >= self.threshold_ms
        } else {
            self.threshold_ms < ms && ms <= self.upper_threshold_ms
        }
    }
}

/// `status_code` (upstream `status_code.go`): some span's status code is
/// one of the set (a span without a status is `UNSET`).
#[derive(Debug)]
pub(crate) struct StatusCodes {
    /// Wire values of the codes (0 unset, 1 ok, 2 error).
    pub codes: Vec<i32>,
}

impl StatusCodes {
    pub fn matches(&self, spans: &[Span]) -> bool {
        spans.iter().any(|s| {
            self.codes
                .contains(&s.status.as_ref().map_or(0, |st| st.code))
        })
    }
}

/// `probabilistic` (upstream `probabilistic.go`): FNV-1a (64-bit) over the
/// salt's bytes then the trace id's 16 bytes; sampled when the hash is at
/// most `threshold`, which is `sampling_percentage / 100` of `u64::MAX`
/// rounded as upstream's `big.Float` does ([`threshold`]). The same salt
/// keeps the same traces as an OpenTelemetry collector.
#[derive(Debug)]
pub(crate) struct Probabilistic {
    pub salt: String,
    pub threshold: u64,
}

/// Upstream's salt when none is given.
pub(crate) const DEFAULT_HASH_SALT: &str = "default-hash-seed";

impl Probabilistic {
    pub fn new(salt: &str, percentage: f64) -> Self {
        let salt = if salt.is_empty() {
            DEFAULT_HASH_SALT
        } else {
            salt
        };
        Probabilistic {
            salt: salt.to_string(),
            threshold: threshold(percentage / 100.0),
        }
    }

    pub fn matches(&self, trace_id: &[u8]) -> bool {
        fnv1a64(&[self.salt.as_bytes(), trace_id]) <= self.threshold
    }
}

/// FNV-1a, 64 bits, over the parts in order (Go's `hash/fnv.New64a`).
pub(crate) fn fnv1a64(parts: &[&[u8]]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    h
}

/// Upstream's `calculateThreshold`: `u64::MAX × ratio` as a `big.Float` of
/// 64 bits of precision (rounded to nearest, ties to even), then truncated
/// to an integer; 0 for a ratio of 0 or less, `u64::MAX` from 1 up.
pub(crate) fn threshold(ratio: f64) -> u64 {
    if ratio.is_nan() || ratio <= 0.0 {
        return 0;
    }
    if ratio >= 1.0 {
        return u64::MAX;
    }
    // ratio = mantissa × 2^exponent exactly.
    let bits = ratio.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1 << 52) - 1);
    let (mantissa, exponent) = match biased {
        0 => (fraction, -1074),
        _ => (fraction | (1 << 52), biased - 1075),
    };
    let product = round_to_64_bits(u128::from(u64::MAX) * u128::from(mantissa));
    let shift = exponent.unsigned_abs();
    if shift >= 128 {
        0
    } else {
        u64::try_from(product >> shift).unwrap_or(u64::MAX)
    }
}

/// `v` rounded to its 64 most significant bits, to nearest, ties to even.
fn round_to_64_bits(v: u128) -> u128 {
    let width = 128 - v.leading_zeros();
    if width <= 64 {
        return v;
    }
    let dropped = width - 64;
    let kept = v >> dropped;
    let rest = v & ((1u128 << dropped) - 1);
    let half = 1u128 << (dropped - 1);
    let up = rest > half || (rest == half && kept & 1 == 1);
    (kept + u128::from(up)) << dropped
}

/// What an attribute policy compares a value with.
#[derive(Debug)]
pub(crate) enum ValueTest {
    /// `string_attribute` without regular expressions: one of these strings.
    Exact(HashSet<String>),
    /// `string_attribute` with `enabled_regex_matching`: any of these
    /// expressions matches somewhere in the value (unanchored, as Go's
    /// `MatchString`).
    Regex(Vec<Regex>),
    /// `numeric_attribute`: an integer within the bounds, inclusive.
    Range { min: i64, max: i64 },
    /// `boolean_attribute`: this boolean.
    Bool(bool),
}

impl ValueTest {
    /// Whether `value` passes. Only values of the policy's own type can:
    /// upstream reads other types as `""`, `0` or `false` (Go's pdata
    /// accessors), so there a string attribute could pass `min_value: 0`
    /// and any non-boolean `value: false`; here it never does. Empty
    /// strings never match, as upstream's span check.
    fn passes(&self, value: &Value) -> bool {
        match (self, value) {
            (ValueTest::Exact(set), Value::StringValue(s)) => !s.is_empty() && set.contains(s),
            (ValueTest::Regex(res), Value::StringValue(s)) => {
                !s.is_empty() && res.iter().any(|r| r.is_match(s))
            }
            (ValueTest::Range { min, max }, Value::IntValue(v)) => min <= v && v <= max,
            (ValueTest::Bool(want), Value::BoolValue(b)) => want == b,
            _ => false,
        }
    }
}

/// `string_attribute`, `numeric_attribute` and `boolean_attribute`
/// (upstream `string_tag_filter.go`, `numeric_tag_filter.go`,
/// `boolean_tag_filter.go` with `util.go`): the trace matches when any span
/// or the resource of any span has the attribute `key` (its first
/// occurrence) passing the test. With `invert_match`, a match gives
/// `InvertNotSampled` and no match `InvertSampled`.
#[derive(Debug)]
pub(crate) struct AttributeMatch {
    pub key: String,
    pub test: ValueTest,
    pub invert: bool,
}

impl AttributeMatch {
    pub fn evaluate(&self, spans: &[Span]) -> PolicyDecision {
        let passes =
            |attrs: &[KeyValue]| first_value(attrs, &self.key).is_some_and(|v| self.test.passes(v));
        let hit = spans
            .iter()
            .any(|s| passes(&s.resource) || passes(&s.attributes));
        PolicyDecision::from_match(hit, self.invert)
    }
}

/// The value of the first attribute named `key` (as pdata's `Map.Get`).
fn first_value<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

/// `span_count` (upstream `span_count_sampler.go`): at least `min` spans
/// and, when `max` is not 0, at most `max`.
#[derive(Debug)]
pub(crate) struct SpanCount {
    pub min: u64,
    pub max: u64,
}

impl SpanCount {
    pub fn matches(&self, count: u64) -> bool {
        count >= self.min && (self.max == 0 || count <= self.max)
    }
}

/// `trace_state` (upstream `trace_state_filter.go`): some span's W3C trace
/// state, parsed as strictly as OpenTelemetry Go's `ParseTraceState`
/// (a span whose trace state does not parse does not match), has `key`
/// set to one of `values`. As upstream, values that are empty or would
/// make the member 256 characters or longer are left out of the set.
#[derive(Debug)]
pub(crate) struct TraceState {
    pub key: String,
    pub values: HashSet<String>,
}

impl TraceState {
    pub fn new(key: &str, values: &[String]) -> Self {
        let values = values
            .iter()
            .filter(|v| !v.is_empty() && key.len() + v.len() < 256)
            .cloned()
            .collect();
        TraceState {
            key: key.to_string(),
            values,
        }
    }

    pub fn matches(&self, spans: &[Span]) -> bool {
        spans.iter().any(|s| {
            trace_state_get(&s.trace_state, &self.key).is_some_and(|v| self.values.contains(v))
        })
    }
}

/// The value of `key` in a W3C `tracestate`, or `None` when the key is not
/// there or the header is invalid (a bad member or key or value, a key
/// twice, more than 32 members), as OpenTelemetry Go parses it.
pub(crate) fn trace_state_get<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let mut found = None;
    let mut seen: Vec<&str> = Vec::new();
    for member in header.split(',').filter(|m| !m.is_empty()) {
        let (k, v) = member.split_once('=')?;
        let (k, v) = (
            k.trim_start_matches([' ', '\t']),
            v.trim_end_matches([' ', '\t']),
        );
        if !valid_key(k) || !valid_value(v) || seen.contains(&k) || seen.len() == 32 {
            return None;
        }
        seen.push(k);
        if k == key {
            found = Some(v);
        }
    }
    found
}

fn key_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'*' | b'/')
}

/// `[a-z][_0-9a-z-*/]{0,255}` or `[a-z0-9][_0-9a-z-*/]{0,240}@[a-z][_0-9a-z-*/]{0,13}`.
fn valid_key(key: &str) -> bool {
    let part = |s: &str, first_digit: bool, max: usize| {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= max
            && (b[0].is_ascii_lowercase() || (first_digit && b[0].is_ascii_digit()))
            && b.iter().all(|&c| key_char(c))
    };
    match key.split_once('@') {
        None => part(key, false, 256),
        Some((tenant, system)) => part(tenant, true, 241) && part(system, false, 14),
    }
}

/// 1 to 256 printable ASCII characters but `,` and `=`, not ending in a space.
fn valid_value(value: &str) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && b.last() != Some(&b' ')
        && b.iter()
            .all(|&c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
}
