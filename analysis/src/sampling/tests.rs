//! Traces whose decisions are known in advance, for every policy type, the
//! compound policies, the combination rules, determinism, and the errors of
//! bad files with their lines.

use clew_proto::v1::{self as pb, AnyValue, KeyValue, Span, any_value::Value};

use super::leaf::{fnv1a64, threshold, trace_state_get};
use super::*;
use crate::fixtures::{MS, T0, span};

use PolicyDecision::{Dropped, InvertNotSampled, InvertSampled, NotSampled, Sampled};

const SECOND: u64 = 1_000_000_000;
/// A decision time: the fixtures' T0, a whole Unix second.
const NOW: u64 = T0;

// ---- helpers -------------------------------------------------------------

/// An engine of the policies given in flow style: `{name: a, type: ...}, ...`.
fn engine(policies: &str) -> Engine {
    Engine::from_yaml(&format!("policies: [{policies}]"))
        .unwrap_or_else(|e| panic!("{e}\n{policies}"))
}

/// The decision of the engine's first policy for `spans` at `now`.
fn vote_at(e: &mut Engine, spans: &[Span], now: u64) -> PolicyDecision {
    e.decide(spans, now).votes[0].expect("the first policy is evaluated")
}

fn vote(policy: &str, spans: &[Span]) -> PolicyDecision {
    vote_at(&mut engine(policy), spans, NOW)
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

fn s(v: &str) -> Value {
    Value::StringValue(v.into())
}

/// A root span of 10 ms with these span attributes.
fn with_attrs(attrs: Vec<KeyValue>) -> Span {
    let mut sp = span(1, None, "svc", "op", 0, 10);
    sp.attributes = attrs;
    sp
}

/// A root span of 10 ms with these resource attributes.
fn with_resource(attrs: Vec<KeyValue>) -> Span {
    let mut sp = span(1, None, "svc", "op", 0, 10);
    sp.resource = attrs;
    sp
}

fn with_status(code: pb::status::Code) -> Span {
    let mut sp = span(2, Some(1), "svc", "child", 1, 2);
    sp.status = Some(pb::Status {
        code: code as i32,
        message: String::new(),
    });
    sp
}

/// A trace of `n` spans with this trace id.
fn spans(n: u16, trace_id: &[u8]) -> Vec<Span> {
    (1..=n)
        .map(|i| {
            let mut sp = span(i, (i > 1).then_some(1), "svc", "op", 0, 1);
            sp.trace_id = trace_id.to_vec();
            sp
        })
        .collect()
}

fn err(yaml: &str) -> ConfigError {
    match Engine::from_yaml(yaml) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e,
    }
}

// ---- leaf policies ---------------------------------------------------------

#[test]
fn always_sample_samples_everything_even_no_spans() {
    let p = "{name: a, type: always_sample}";
    assert_eq!(vote(p, &[span(1, None, "s", "o", 0, 1)]), Sampled);
    assert_eq!(vote(p, &[]), Sampled);
}

#[test]
fn latency_is_earliest_start_to_latest_end_in_whole_milliseconds() {
    let p = "{name: slow, type: latency, latency: {threshold_ms: 5000}}";
    // Two spans that do not overlap: 0..1000 and 4000..5000 is 5000 ms.
    let trace = [
        span(1, None, "a", "x", 4000, 5000),
        span(2, None, "b", "y", 0, 1000),
    ];
    assert_eq!(vote(p, &trace), Sampled);
    assert_eq!(vote(p, &[span(1, None, "a", "x", 0, 4999)]), NotSampled);
    // 4999.9 ms truncates to 4999, as Go's Duration.Milliseconds.
    let mut almost = span(1, None, "a", "x", 0, 4999);
    almost.end_time_unix_nano += 900_000;
    assert_eq!(vote(p, &[almost]), NotSampled);
    assert_eq!(vote(p, &[]), NotSampled);
}

#[test]
fn latency_with_an_upper_bound_is_above_the_threshold_and_at_most_the_bound() {
    let p = "{name: mid, type: latency, latency: {threshold_ms: 5000, upper_threshold_ms: 10000}}";
    for (ms, want) in [
        (5000, NotSampled),
        (5001, Sampled),
        (10000, Sampled),
        (10001, NotSampled),
    ] {
        assert_eq!(vote(p, &[span(1, None, "a", "x", 0, ms)]), want, "{ms} ms");
    }
}

#[test]
fn status_code_matches_any_span_and_a_missing_status_is_unset() {
    use pb::status::Code;
    let errors = "{name: e, type: status_code, status_code: {status_codes: [ERROR]}}";
    let root = span(1, None, "s", "o", 0, 5);
    assert_eq!(
        vote(errors, &[root.clone(), with_status(Code::Error)]),
        Sampled
    );
    assert_eq!(
        vote(errors, &[root.clone(), with_status(Code::Ok)]),
        NotSampled
    );
    let unset = "{name: u, type: status_code, status_code: {status_codes: [UNSET, OK]}}";
    assert_eq!(vote(unset, &[root]), Sampled);
    assert_eq!(vote(unset, &[with_status(Code::Error)]), NotSampled);
}

#[test]
fn fnv1a_and_the_threshold_match_go() {
    // FNV-1a 64 test vectors (Go's hash/fnv agrees).
    assert_eq!(fnv1a64(&[b""]), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a64(&[b"foo", b"bar"]), 0x8594_4171_f739_67e8);
    // u64::MAX × ratio in a 64-bit big.Float, then truncated: worked out
    // with exact fractions (10 % is not 1844674407370955161).
    for (pct, want) in [
        (10.0, 1_844_674_407_370_955_263u64),
        (0.1, 18_446_744_073_709_551),
        (1.0, 184_467_440_737_095_519),
        (29.0, 5_349_555_781_375_769_599),
        (33.3, 6_142_765_776_545_279_999),
        (50.0, 9_223_372_036_854_775_807),
        (99.99999999999999, 18_446_744_073_709_549_567),
        (100.0, u64::MAX),
        (0.0, 0),
    ] {
        assert_eq!(threshold(pct / 100.0), want, "{pct} %");
    }
}

#[test]
fn probabilistic_keeps_the_traces_the_otel_collector_keeps() {
    // Hashes of salt + id worked out independently; a trace is kept when
    // its hash is at most the threshold of the percentage.
    let ids: [&[u8]; 3] = [
        &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
        &[0xab; 16],
        &[
            0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
            0x47, 0x36,
        ],
    ];
    let cases: [(&str, [&[u64]; 3]); 2] = [
        ("", [&[90], &[10, 25, 50, 75, 90], &[75, 90]]),
        ("layer-2", [&[75, 90], &[], &[75, 90]]),
    ];
    for (salt, kept_at) in cases {
        for (id, kept) in ids.iter().zip(kept_at) {
            for pct in [1, 10, 25, 50, 75, 90] {
                let p = format!(
                    "{{name: p, type: probabilistic, probabilistic: {{hash_salt: '{salt}', sampling_percentage: {pct}}}}}"
                );
                let want = if kept.contains(&pct) {
                    Sampled
                } else {
                    NotSampled
                };
                assert_eq!(
                    vote(&p, &spans(2, id)),
                    want,
                    "salt {salt:?} id {id:?} {pct} %"
                );
            }
        }
    }
    let all = "{name: p, type: probabilistic, probabilistic: {sampling_percentage: 100}}";
    assert_eq!(vote(all, &spans(1, &[0xff; 16])), Sampled);
}

#[test]
fn string_attribute_checks_span_and_resource_string_values() {
    let p =
        "{name: s, type: string_attribute, string_attribute: {key: env, values: [prod, staging]}}";
    assert_eq!(vote(p, &[with_attrs(vec![kv("env", s("prod"))])]), Sampled);
    assert_eq!(
        vote(p, &[with_resource(vec![kv("env", s("staging"))])]),
        Sampled
    );
    assert_eq!(
        vote(p, &[with_attrs(vec![kv("env", s("dev"))])]),
        NotSampled
    );
    assert_eq!(
        vote(p, &[with_attrs(vec![kv("other", s("prod"))])]),
        NotSampled
    );
    // Exact: no substring; other types never match; the first occurrence counts.
    assert_eq!(
        vote(p, &[with_attrs(vec![kv("env", s("production"))])]),
        NotSampled
    );
    assert_eq!(
        vote(p, &[with_attrs(vec![kv("env", Value::IntValue(1))])]),
        NotSampled
    );
    let twice = vec![kv("env", s("dev")), kv("env", s("prod"))];
    assert_eq!(vote(p, &[with_attrs(twice)]), NotSampled);
}

#[test]
fn string_attribute_regexes_match_anywhere_in_the_value() {
    let p = r"{name: r, type: string_attribute, string_attribute: {key: url.path, values: ['\/health', '^/v1/name/.+$'], enabled_regex_matching: true}}";
    for (path, want) in [
        ("/health", Sampled),
        ("/api/health/live", Sampled), // unanchored, as Go's MatchString
        ("/v1/name/42", Sampled),
        ("/v1/name/", NotSampled),
        ("/metrics", NotSampled),
        ("", NotSampled),
    ] {
        assert_eq!(
            vote(p, &[with_attrs(vec![kv("url.path", s(path))])]),
            want,
            "{path}"
        );
    }
}

#[test]
fn invert_match_gives_inverted_decisions() {
    let p = "{name: i, type: string_attribute, string_attribute: {key: team, values: [a], invert_match: true}}";
    assert_eq!(
        vote(p, &[with_attrs(vec![kv("team", s("a"))])]),
        InvertNotSampled
    );
    assert_eq!(
        vote(p, &[with_resource(vec![kv("team", s("a"))])]),
        InvertNotSampled
    );
    assert_eq!(
        vote(p, &[with_attrs(vec![kv("team", s("b"))])]),
        InvertSampled
    );
    // No span has the key: "all other values are sampled", so sampled.
    assert_eq!(vote(p, &[with_attrs(vec![])]), InvertSampled);
    // One matching span among others is enough to invert-not-sample.
    let trace = [
        with_attrs(vec![kv("team", s("b"))]),
        with_resource(vec![kv("team", s("a"))]),
    ];
    assert_eq!(vote(p, &trace), InvertNotSampled);
}

#[test]
fn numeric_attribute_takes_integers_within_inclusive_bounds() {
    let p = "{name: n, type: numeric_attribute, numeric_attribute: {key: code, min_value: 500, max_value: 599}}";
    let one = |v: Value| [with_attrs(vec![kv("code", v)])];
    assert_eq!(vote(p, &one(Value::IntValue(500))), Sampled);
    assert_eq!(vote(p, &one(Value::IntValue(599))), Sampled);
    assert_eq!(vote(p, &one(Value::IntValue(600))), NotSampled);
    assert_eq!(vote(p, &one(Value::DoubleValue(550.0))), NotSampled);
    assert_eq!(vote(p, &one(s("550"))), NotSampled);
    let res = [with_resource(vec![kv("code", Value::IntValue(503))])];
    assert_eq!(vote(p, &res), Sampled);
    // One bound alone; an explicit 0 is a bound.
    let min_only =
        "{name: n, type: numeric_attribute, numeric_attribute: {key: code, min_value: 0}}";
    assert_eq!(vote(min_only, &one(Value::IntValue(i64::MAX))), Sampled);
    assert_eq!(vote(min_only, &one(Value::IntValue(-1))), NotSampled);
    let inv = "{name: n, type: numeric_attribute, numeric_attribute: {key: code, max_value: 399, invert_match: true}}";
    assert_eq!(vote(inv, &one(Value::IntValue(200))), InvertNotSampled);
    assert_eq!(vote(inv, &one(Value::IntValue(404))), InvertSampled);
}

#[test]
fn boolean_attribute_takes_booleans_only() {
    let p = "{name: b, type: boolean_attribute, boolean_attribute: {key: force, value: true}}";
    let one = |v: Value| [with_attrs(vec![kv("force", v)])];
    assert_eq!(vote(p, &one(Value::BoolValue(true))), Sampled);
    assert_eq!(vote(p, &one(Value::BoolValue(false))), NotSampled);
    assert_eq!(vote(p, &one(s("true"))), NotSampled);
    assert_eq!(
        vote(
            p,
            &[with_resource(vec![kv("force", Value::BoolValue(true))])]
        ),
        Sampled
    );
    let no = "{name: b, type: boolean_attribute, boolean_attribute: {key: force, value: false}}";
    // Upstream reads a string as false; here only a boolean false matches.
    assert_eq!(vote(no, &one(s("x"))), NotSampled);
    assert_eq!(vote(no, &one(Value::BoolValue(false))), Sampled);
    let inv = "{name: b, type: boolean_attribute, boolean_attribute: {key: force, value: true, invert_match: true}}";
    assert_eq!(vote(inv, &one(Value::BoolValue(true))), InvertNotSampled);
    assert_eq!(vote(inv, &one(Value::BoolValue(false))), InvertSampled);
}

#[test]
fn span_count_is_inclusive_and_max_zero_is_unbounded() {
    let p = "{name: c, type: span_count, span_count: {min_spans: 2, max_spans: 20}}";
    for (n, want) in [
        (1, NotSampled),
        (2, Sampled),
        (20, Sampled),
        (21, NotSampled),
    ] {
        assert_eq!(vote(p, &spans(n, &[1; 16])), want, "{n} spans");
    }
    let min = "{name: c, type: span_count, span_count: {min_spans: 3}}";
    assert_eq!(vote(min, &spans(300, &[1; 16])), Sampled);
    assert_eq!(vote(min, &spans(2, &[1; 16])), NotSampled);
}

#[test]
fn trace_state_reads_a_w3c_tracestate_strictly() {
    let p = "{name: t, type: trace_state, trace_state: {key: key3, values: [value1, value2]}}";
    let with = |ts: &str| {
        let mut sp = span(1, None, "s", "o", 0, 1);
        sp.trace_state = ts.into();
        [sp]
    };
    assert_eq!(vote(p, &with("key3=value1")), Sampled);
    assert_eq!(vote(p, &with("vendor=x, key3=value2 ,other=y")), Sampled);
    assert_eq!(vote(p, &with("key3=value3")), NotSampled);
    assert_eq!(vote(p, &with("")), NotSampled);
    // Invalid headers match nothing, as Go's ParseTraceState fails on them.
    assert_eq!(vote(p, &with("Key3=value1")), NotSampled); // upper-case key
    assert_eq!(vote(p, &with("key3=value1,key3=value2")), NotSampled); // twice
    assert_eq!(vote(p, &with("key3=value1,novalue")), NotSampled);
    let many: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
    assert_eq!(trace_state_get(&many.join(","), "k31"), Some("v"));
    let too_many = format!("{},key3=value1", many.join(","));
    assert_eq!(vote(p, &with(&too_many)), NotSampled);
    assert_eq!(trace_state_get("t@sys=a", "t@sys"), Some("a"));
}

#[test]
fn rate_limiting_is_a_token_bucket_of_spans() {
    // 10 spans/s, bucket of 20 (twice the rate): traces of 8 spans.
    let mut e = engine("{name: r, type: rate_limiting, rate_limiting: {spans_per_second: 10}}");
    let t = spans(8, &[1; 16]);
    assert_eq!(vote_at(&mut e, &t, NOW), Sampled); // 20 -> 12
    assert_eq!(vote_at(&mut e, &t, NOW), Sampled); // 12 -> 4
    assert_eq!(vote_at(&mut e, &t, NOW), NotSampled); // 4 < 8, nothing taken
    assert_eq!(vote_at(&mut e, &t, NOW + 399 * MS), NotSampled); // 7.99
    assert_eq!(vote_at(&mut e, &t, NOW + 400 * MS), Sampled); // 8 -> 0
    // An earlier time refills nothing.
    assert_eq!(vote_at(&mut e, &spans(1, &[1; 16]), NOW), NotSampled);
    // The bucket never holds more than the burst.
    assert_eq!(vote_at(&mut e, &t, NOW + 3600 * SECOND), Sampled);
    assert_eq!(vote_at(&mut e, &t, NOW + 3600 * SECOND), Sampled);
    assert_eq!(vote_at(&mut e, &t, NOW + 3600 * SECOND), NotSampled);
}

#[test]
fn rate_limiting_burst_capacity_bounds_one_trace() {
    let mut e = engine(
        "{name: r, type: rate_limiting, rate_limiting: {spans_per_second: 100, burst_capacity: 5}}",
    );
    assert_eq!(vote_at(&mut e, &spans(6, &[1; 16]), NOW), NotSampled);
    assert_eq!(vote_at(&mut e, &spans(5, &[1; 16]), NOW), Sampled);
    assert_eq!(vote_at(&mut e, &spans(1, &[1; 16]), NOW + 10 * MS), Sampled);
}

// ---- compound policies -------------------------------------------------------

const PROD: &str =
    "{name: prod, type: string_attribute, string_attribute: {key: env, values: [prod]}}";
const SLOW: &str = "{name: slow, type: latency, latency: {threshold_ms: 100}}";

fn prod_trace(ms: u64) -> Vec<Span> {
    let mut sp = span(1, None, "s", "o", 0, ms);
    sp.attributes = vec![kv("env", s("prod"))];
    vec![sp]
}

#[test]
fn and_samples_only_when_every_sub_policy_samples() {
    let p = format!("{{name: both, type: and, and: {{and_sub_policy: [{PROD}, {SLOW}]}}}}");
    assert_eq!(vote(&p, &prod_trace(150)), Sampled);
    assert_eq!(vote(&p, &prod_trace(50)), NotSampled);
    assert_eq!(vote(&p, &[span(1, None, "s", "o", 0, 150)]), NotSampled);
    // An inverted sub-policy: InvertSampled passes, InvertNotSampled fails,
    // and the and's own decision is never inverted.
    let not_team_a = "{name: na, type: string_attribute, string_attribute: {key: team, values: [a], invert_match: true}}";
    let p = format!("{{name: x, type: and, and: {{and_sub_policy: [{not_team_a}, {SLOW}]}}}}");
    let mut slow_b = prod_trace(150);
    slow_b[0].attributes.push(kv("team", s("b")));
    assert_eq!(vote(&p, &slow_b), Sampled);
    slow_b[0].attributes.push(kv("team", s("a"))); // first `team` still b
    assert_eq!(vote(&p, &slow_b), Sampled);
    slow_b[0].resource.push(kv("team", s("a")));
    assert_eq!(vote(&p, &slow_b), NotSampled);
}

#[test]
fn and_spends_a_rate_budget_only_on_traces_its_earlier_sub_policies_pass() {
    let limit =
        "{name: r, type: rate_limiting, rate_limiting: {spans_per_second: 1, burst_capacity: 1}}";
    let mut e = engine(&format!(
        "{{name: x, type: and, and: {{and_sub_policy: [{SLOW}, {limit}]}}}}"
    ));
    assert_eq!(vote_at(&mut e, &prod_trace(5), NOW), NotSampled); // not slow: budget untouched
    assert_eq!(vote_at(&mut e, &prod_trace(500), NOW), Sampled);
    assert_eq!(vote_at(&mut e, &prod_trace(500), NOW), NotSampled); // budget spent
}

#[test]
fn drop_wins_over_every_other_policy_and_stops_the_evaluation() {
    let health = r"{name: health, type: string_attribute, string_attribute: {key: url.path, values: ['\/health'], enabled_regex_matching: true}}";
    let limit =
        "{name: r, type: rate_limiting, rate_limiting: {spans_per_second: 1, burst_capacity: 1}}";
    // The drop is listed last but evaluated first; after a drop nothing else
    // is asked, so the rate budget is not spent.
    let mut e = engine(&format!(
        "{{name: all, type: always_sample}}, {limit}, {{name: no-health, type: drop, drop: {{drop_sub_policy: [{health}, {SLOW}]}}}}"
    ));
    let mut trace = vec![with_attrs(vec![kv("url.path", s("/health"))])];
    trace[0].end_time_unix_nano = T0 + 500 * MS;
    let v = e.decide(&trace, NOW);
    assert_eq!(v.decision, Decision::Dropped);
    assert_eq!(v.votes, vec![None, None, Some(Dropped)]);
    assert_eq!(v.decided_by, Some(2));
    // A fast health check is not dropped (every sub-policy must match).
    trace[0].end_time_unix_nano = T0 + 5 * MS;
    let v = e.decide(&trace, NOW);
    assert_eq!(v.decision, Decision::Sampled);
    assert_eq!(
        v.votes,
        vec![Some(Sampled), Some(Sampled), Some(NotSampled)]
    );
    assert_eq!(v.decided_by, Some(0));
}

/// A composite of 10 spans/s: `prod` traces get 50 % (5 spans/s), the
/// others go to `rest`, which has no share of its own and fills what is left.
fn composite_engine(order: &str) -> Engine {
    engine(&format!(
        "{{name: c, type: composite, composite: {{max_total_spans_per_second: 10, {order}
          composite_sub_policy: [{PROD}, {{name: rest, type: always_sample}}],
          rate_allocation: [{{policy: prod, percent: 50}}]}}}}"
    ))
}

/// A trace of `n` spans, with `env=prod` on its first when `prod`.
fn trace_of(n: u16, prod: bool) -> Vec<Span> {
    let mut t = spans(n, &[9; 16]);
    if prod {
        t[0].attributes = vec![kv("env", s("prod"))];
    }
    t
}

#[test]
fn composite_gives_each_sub_policy_its_share_per_second() {
    let mut e = composite_engine("");
    let decide = |e: &mut Engine, prod, now| vote_at(e, &trace_of(3, prod), now);
    assert_eq!(decide(&mut e, true, NOW), Sampled); // prod 3/5, total 3/10
    // Over prod's share: not sampled, and `rest` is not asked.
    assert_eq!(decide(&mut e, true, NOW + 100 * MS), NotSampled);
    assert_eq!(decide(&mut e, false, NOW + 200 * MS), Sampled); // total 6/10
    assert_eq!(decide(&mut e, false, NOW + 300 * MS), Sampled); // total 9/10
    assert_eq!(decide(&mut e, false, NOW + 400 * MS), NotSampled); // 12 > 10
    // A new Unix second: budgets start again.
    assert_eq!(decide(&mut e, true, NOW + SECOND), Sampled);
    assert_eq!(decide(&mut e, false, NOW + SECOND), Sampled);
}

#[test]
fn composite_asks_its_sub_policies_in_policy_order() {
    // `rest` first: it samples everything, so `prod`'s share is never used
    // and the total is the only bound.
    let mut e = composite_engine("policy_order: [rest, prod],");
    let decide = |e: &mut Engine| vote_at(e, &trace_of(3, true), NOW);
    assert_eq!(
        [decide(&mut e), decide(&mut e), decide(&mut e)],
        [Sampled; 3]
    );
    assert_eq!(decide(&mut e), NotSampled);
}

#[test]
fn composite_percent_zero_is_an_equal_share() {
    // 9 spans/s over 3 sub-policies: 3 each.
    let mut e = engine(&format!(
        "{{name: c, type: composite, composite: {{max_total_spans_per_second: 9,
          composite_sub_policy: [{PROD}, {SLOW}, {{name: all, type: always_sample}}],
          rate_allocation: [{{policy: prod, percent: 0}}]}}}}"
    ));
    assert_eq!(vote_at(&mut e, &trace_of(3, true), NOW), Sampled);
    assert_eq!(vote_at(&mut e, &trace_of(1, true), NOW), NotSampled);
    assert_eq!(vote_at(&mut e, &trace_of(1, false), NOW), Sampled);
}

// ---- combination rules ---------------------------------------------------------

#[test]
fn the_final_decision_follows_upstreams_precedence() {
    let cases: &[(&[PolicyDecision], Decision, Option<usize>)] = &[
        (&[], Decision::NotSampled, None),
        (&[NotSampled, NotSampled], Decision::NotSampled, None),
        (&[NotSampled, Sampled, Sampled], Decision::Sampled, Some(1)),
        // A drop beats everything, wherever it is.
        (
            &[Sampled, InvertSampled, Dropped],
            Decision::Dropped,
            Some(2),
        ),
        // An inverted "not sampled" beats a sample.
        (&[Sampled, InvertNotSampled], Decision::NotSampled, None),
        // An inverted "sampled" samples only when nobody said "not sampled"…
        (&[InvertSampled, InvertSampled], Decision::Sampled, Some(0)),
        (&[InvertSampled, NotSampled], Decision::NotSampled, None),
        // …but a plain sample does not care.
        (
            &[NotSampled, InvertSampled, Sampled],
            Decision::Sampled,
            Some(2),
        ),
    ];
    for (votes, decision, by) in cases {
        let indexed: Vec<(usize, PolicyDecision)> = votes.iter().copied().enumerate().collect();
        assert_eq!(combine(&indexed), (*decision, *by), "{votes:?}");
    }
}

#[test]
fn policies_combine_inside_the_engine_as_in_combine() {
    let inv = "{name: not-a, type: string_attribute, string_attribute: {key: team, values: [a], invert_match: true}}";
    let mut e = engine(&format!("{PROD}, {inv}, {SLOW}"));
    let mut t = prod_trace(5);
    assert_eq!(e.decide(&t, NOW).decision, Decision::Sampled);
    t[0].attributes.push(kv("team", s("a")));
    let v = e.decide(&t, NOW);
    assert_eq!(
        v.votes,
        vec![Some(Sampled), Some(InvertNotSampled), Some(NotSampled)]
    );
    assert_eq!(v.decision, Decision::NotSampled);
    // No plain sample: the inverted one samples unless someone said no.
    let mut e = engine(inv);
    assert_eq!(e.decide(&prod_trace(5), NOW).decision, Decision::Sampled);
    let mut e = engine(&format!("{inv}, {SLOW}"));
    assert_eq!(e.decide(&prod_trace(5), NOW).decision, Decision::NotSampled);
    assert_eq!(e.decide(&prod_trace(500), NOW).decision, Decision::Sampled);
}

#[test]
fn sample_on_first_match_stops_at_the_first_sample() {
    let limit =
        "{name: r, type: rate_limiting, rate_limiting: {spans_per_second: 1, burst_capacity: 1}}";
    let yaml = format!("sample_on_first_match: true\npolicies: [{PROD}, {limit}]");
    let mut e = Engine::from_yaml(&yaml).unwrap();
    let v = e.decide(&prod_trace(5), NOW);
    assert_eq!(
        (v.decision, v.votes),
        (Decision::Sampled, vec![Some(Sampled), None])
    );
    // The limiter was not asked, so its one span is still there.
    let v = e.decide(&spans(1, &[1; 16]), NOW);
    assert_eq!(v.votes, vec![Some(NotSampled), Some(Sampled)]);
}

// ---- determinism ---------------------------------------------------------------

const STATEFUL: &str = "
policies:
  - name: limit
    type: rate_limiting
    rate_limiting: {spans_per_second: 20}
  - name: pct
    type: probabilistic
    probabilistic: {sampling_percentage: 30}
  - name: mix
    type: composite
    composite:
      max_total_spans_per_second: 12
      composite_sub_policy:
        - {name: big, type: span_count, span_count: {min_spans: 4}}
        - {name: any, type: always_sample}
      rate_allocation: [{policy: big, percent: 60}]
";

/// Traces of 1 to 7 spans with varied ids, decided every 70 ms.
fn stream() -> Vec<(Vec<Span>, u64)> {
    (0u64..200)
        .map(|i| {
            let id: Vec<u8> = (0..16).map(|b| (i * 31 + b * 7) as u8).collect();
            (spans((i % 7 + 1) as u16, &id), NOW + i * 70 * MS)
        })
        .collect()
}

#[test]
fn the_same_traces_at_the_same_times_get_the_same_verdicts() {
    let run = || {
        let mut e = Engine::from_yaml(STATEFUL).unwrap();
        assert!(e.is_stateful());
        stream()
            .iter()
            .map(|(t, now)| e.decide(t, *now))
            .collect::<Vec<_>>()
    };
    let (first, replay) = (run(), run());
    assert_eq!(first, replay);
    // The budgets did bind: some traces of each policy went each way.
    for p in 0..3 {
        let sampled = first.iter().filter(|v| v.votes[p] == Some(Sampled)).count();
        assert!(
            0 < sampled && sampled < first.len(),
            "policy {p}: {sampled}"
        );
    }
    assert!(!engine("{name: a, type: always_sample}").is_stateful());
}

#[test]
fn any_spans_get_a_verdict() {
    let mut e = Engine::from_yaml(STATEFUL).unwrap();
    let mut odd = span(1, None, "", "", 0, 0);
    odd.trace_id = vec![];
    odd.start_time_unix_nano = u64::MAX;
    odd.end_time_unix_nano = 3;
    odd.trace_state = ",,=,@@=".into();
    odd.attributes = vec![KeyValue {
        key: "k".into(),
        value: None,
    }];
    for now in [0, u64::MAX, NOW] {
        for t in [vec![], vec![odd.clone()], vec![odd.clone(); 50]] {
            let v = e.decide(&t, now);
            assert_eq!(v.votes.len(), 3);
        }
    }
}

// ---- bad files -------------------------------------------------------------------

/// The error's line, and its message for the failure's text.
fn line_and_text(yaml: &str) -> (u64, String) {
    let e = err(yaml);
    (e.line(), e.to_string())
}

#[test]
fn an_unknown_or_unsupported_type_is_named_with_its_line() {
    let (line, text) = line_and_text(
        "policies:\n  - name: a\n    type: always_sample\n  - name: ottl\n    type: ottl_condition\n    ottl_condition: {span: ['true']}\n",
    );
    assert_eq!(line, 5);
    assert!(text.starts_with("line 5, column 11"), "{text}");
    assert!(
        text.contains("policy type `ottl_condition` is not supported by clew"),
        "{text}"
    );
    let (line, text) = line_and_text("policies:\n  - name: a\n    type: sometimes\n");
    assert_eq!(line, 3);
    assert!(
        text.contains("unknown policy type `sometimes` (supported: always_sample, latency"),
        "{text}"
    );
}

#[test]
fn missing_unknown_and_mistyped_fields_are_named_with_their_line() {
    let missing = "policies:\n  - name: slow\n    type: latency\n    latency:\n      upper_threshold_ms: 10\n";
    let (line, text) = line_and_text(missing);
    assert_eq!(line, 5);
    assert!(text.contains("missing field `threshold_ms`"), "{text}");
    let unknown = "policies:\n  - name: slow\n    type: latency\n    latency:\n      threshold_ms: 10\n      treshold: 5\n";
    let (line, text) = line_and_text(unknown);
    assert_eq!(line, 6);
    assert!(text.contains("unknown field `treshold`"), "{text}");
    let mistyped =
        "policies:\n  - name: slow\n    type: latency\n    latency: {threshold_ms: soon}\n";
    let e = err(mistyped);
    assert_eq!(e.line(), 4);
    assert_eq!(
        e.to_string(),
        "line 4, column 29, `threshold_ms`: expected an integer"
    );
    let bad_code = "policies:\n  - {name: e, type: status_code, status_code: {status_codes: [ERROR, FATAL]}}\n";
    let (line, text) = line_and_text(bad_code);
    assert_eq!(line, 2);
    assert!(
        text.contains("`status_codes`: unknown variant `FATAL`"),
        "{text}"
    );
    let (line, text) = line_and_text("policies:\n  - name: x\n");
    assert_eq!(line, 2);
    assert!(text.contains("missing field `type`"), "{text}");
    let (line, _) = line_and_text("policies:\n  - {name: a, type: always_sample}\nnum_traces: 5\n");
    assert_eq!(line, 3);
    let (line, _) = line_and_text("policies: [\n  {name: a,\n");
    assert!(line >= 2, "{line}");
}

#[test]
fn bad_settings_name_the_policy_and_the_line() {
    let cases: &[(&str, u64, &str)] = &[
        (
            "policies:\n  - name: regex\n    type: string_attribute\n    string_attribute:\n      key: path\n      enabled_regex_matching: true\n      values:\n        - ok\n        - '(unclosed'\n",
            9,
            "policy `regex` (line 9): values: `(unclosed` is not a valid regular expression: unclosed group",
        ),
        (
            "policies:\n  - name: pct\n    type: probabilistic\n    probabilistic:\n      sampling_percentage: 150\n",
            5,
            "policy `pct` (line 5): sampling_percentage: must be between 0 and 100, got 150",
        ),
        (
            "policies:\n  - name: a\n    type: always_sample\n  - name: a\n    type: always_sample\n",
            4,
            "policy `a` (line 4): name already used by the policy at line 2",
        ),
        (
            "policies:\n  - name: b\n    type: boolean_attribute\n    string_attribute: {key: k, values: [v]}\n",
            3,
            "policy `b` (line 3): `string_attribute` settings do not apply to a `boolean_attribute` policy",
        ),
        (
            "policies:\n  - name: l\n    type: latency\n",
            3,
            "policy `l` (line 3): a `latency` policy needs its settings under `latency:`",
        ),
        (
            "policies:\n  - name: n\n    type: numeric_attribute\n    numeric_attribute: {key: k}\n",
            2,
            "policy `n` (line 2): numeric_attribute: give min_value, max_value or both",
        ),
        (
            "policies:\n  - name: r\n    type: rate_limiting\n    rate_limiting: {spans_per_second: 0}\n",
            4,
            "policy `r` (line 4): spans_per_second: must be above 0, got 0",
        ),
    ];
    for (yaml, line, start) in cases {
        let e = err(yaml);
        assert_eq!(e.line(), *line, "{e}");
        assert!(e.to_string().starts_with(start), "{e}\nwanted: {start}");
    }
    assert_eq!(err("policies: []\n"), ConfigError::Empty);
    assert_eq!(err("# nothing yet\n\n"), ConfigError::Empty);
}

const COMPOSITE_HEAD: &str = "policies:
  - name: c
    type: composite
    composite:
      max_total_spans_per_second: 100
      composite_sub_policy:
        - {name: one, type: always_sample}
        - {name: two, type: always_sample}
";

#[test]
fn composite_and_nesting_errors_name_the_line() {
    let cases: &[(&str, u64, &str)] = &[
        (
            "      rate_allocation:\n        - {policy: one, percent: 30}\n        - {policy: three, percent: 30}\n",
            11,
            "policy `c` (line 11): rate_allocation: no sub-policy named `three` (sub-policies: one, two)",
        ),
        (
            "      rate_allocation:\n        - policy: one\n          percent: 130\n",
            11,
            "policy `c` (line 11): rate_allocation: percent of `one` must be between 0 and 100, got 130",
        ),
        (
            "      rate_allocation: [{policy: one, percent: 60}, {policy: two, percent: 60}]\n",
            2,
            "policy `c` (line 2): rate_allocation: percents add up to 120, more than 100",
        ),
        (
            "      policy_order: [two, zero]\n",
            9,
            "policy `c` (line 9): policy_order: no sub-policy named `zero`",
        ),
    ];
    for (tail, line, start) in cases {
        let e = err(&format!("{COMPOSITE_HEAD}{tail}"));
        assert_eq!(e.line(), *line, "{e}");
        assert!(e.to_string().starts_with(start), "{e}\nwanted: {start}");
    }
    let nested = "policies:\n  - name: outer\n    type: and\n    and:\n      and_sub_policy:\n        - name: inner\n          type: drop\n          drop: {drop_sub_policy: [{name: x, type: always_sample}]}\n";
    let e = err(nested);
    assert_eq!(e.line(), 7);
    assert!(
        e.to_string().starts_with(
            "policy `outer / inner` (line 7): type: a `drop` policy cannot be a sub-policy of `and`"
        ),
        "{e}"
    );
    let deep = "policies:\n  - name: c\n    type: composite\n    composite:\n      max_total_spans_per_second: 10\n      composite_sub_policy:\n        - name: a\n          type: and\n          and:\n            and_sub_policy:\n              - name: p\n                type: probabilistic\n                probabilistic: {sampling_percentage: -1}\n";
    let e = err(deep);
    assert_eq!(e.line(), 13);
    assert!(
        e.to_string()
            .starts_with("policy `c / a / p` (line 13): sampling_percentage"),
        "{e}"
    );
}

// ---- compatibility -------------------------------------------------------------

#[test]
fn the_otel_readme_example_parses_and_decides() {
    let yaml = include_str!("testdata/otel_readme_policies.yaml");
    let mut e = Engine::from_yaml(yaml).unwrap();
    let names = e.policy_names().to_vec();
    assert_eq!(names.len(), 14);
    assert_eq!(
        names[..3],
        ["test-policy-1", "test-policy-2", "test-policy-3"]
    );
    assert_eq!(
        names[11..],
        ["and-policy-1", "drop-policy-1", "composite-policy-1"]
    );
    // A health check is dropped whatever always_sample says.
    let health = e.decide(&[with_attrs(vec![kv("url.path", s("/health"))])], NOW);
    assert_eq!(
        (health.decision, health.decided_by),
        (Decision::Dropped, Some(12))
    );
    let plain = e.decide(&[with_attrs(vec![kv("url.path", s("/orders"))])], NOW);
    assert_eq!(
        (plain.decision, plain.decided_by),
        (Decision::Sampled, Some(0))
    );
    let drop_policy = names.iter().position(|n| n == "drop-policy-1").unwrap();
    assert_eq!(plain.votes[drop_policy], Some(NotSampled));
}

#[test]
fn json_reads_the_same_policies_without_lines() {
    let json = r#"{"policies": [{"name": "p", "type": "probabilistic", "probabilistic": {"sampling_percentage": 101}}]}"#;
    let from_yaml = SamplingConfig::from_yaml(json).unwrap();
    let from_json: SamplingConfig = serde_json::from_str(json).unwrap();
    assert_eq!(from_yaml.policies[0].name.line, 1);
    assert_eq!(from_json.policies[0].name.line, 0);
    assert_eq!(
        Engine::new(&from_json).unwrap_err().to_string(),
        "policy `p`: sampling_percentage: must be between 0 and 100, got 101"
    );
    // Sequences wrapped for their lines read from JSON too.
    let json = r#"{"policies": [{"name": "a", "type": "and", "and": {"and_sub_policy": [
        {"name": "e", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
        {"name": "s", "type": "string_attribute", "string_attribute": {"key": "env", "values": ["prod"]}}
    ]}}]}"#;
    let config: SamplingConfig = serde_json::from_str(json).unwrap();
    assert_eq!(
        config,
        SamplingConfig::from_yaml(json)
            .map(|mut c| {
                strip_lines(&mut c);
                c
            })
            .unwrap()
    );
    let mut trace = prod_trace(5);
    trace.push(with_status(pb::status::Code::Error));
    assert_eq!(
        Engine::new(&config).unwrap().decide(&trace, NOW).decision,
        Decision::Sampled
    );
}

/// Sets every line of an `and` of leaf policies to 0, as JSON leaves them.
fn strip_lines(c: &mut SamplingConfig) {
    fn leaf(p: &mut PolicyConfig) {
        p.name.line = 0;
        p.kind.line = 0;
        if let Some(sc) = &mut p.status_code {
            sc.status_codes.line = 0;
        }
        if let Some(sa) = &mut p.string_attribute {
            sa.values.line = 0;
            sa.values.value.iter_mut().for_each(|v| v.line = 0);
        }
    }
    for p in &mut c.policies {
        leaf(p);
        if let Some(and) = &mut p.and {
            and.and_sub_policy.line = 0;
            and.and_sub_policy.value.iter_mut().for_each(leaf);
        }
    }
}

#[test]
fn deep_nesting_is_refused_without_crashing() {
    let mut p = "{name: leaf, type: always_sample}".to_string();
    for i in 0..40 {
        p = format!("{{name: n{i}, type: and, and: {{and_sub_policy: [{p}]}}}}");
    }
    let e = err(&format!("policies: [{p}]"));
    assert!(e.line() > 0, "{e}");
}
