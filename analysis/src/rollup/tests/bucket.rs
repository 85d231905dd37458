use std::collections::BTreeMap;

use proptest::prelude::*;

use super::Rng;
use crate::rollup::{
    Bucket, BucketBuilder, CallRecord, EdgeKey, Limits, OVERFLOW, RedKey, RollupError, Sketch,
    SpanRecord, Stats, coarsen,
};

pub(super) const SECOND: u64 = 1_000_000_000;
/// A whole hour (of 2023-11-14).
pub(super) const T0: u64 = 1_699_999_200 * SECOND;

/// A generated span: start, service, operation, kind, error, duration,
/// and the parent's service when the parent is in another service.
#[derive(Debug, Clone)]
pub(super) struct Gen {
    pub start: u64,
    pub service: String,
    pub operation: String,
    pub kind: i32,
    pub is_error: bool,
    pub duration: u64,
    pub caller: Option<String>,
}

impl Gen {
    pub fn span(&self) -> SpanRecord<'_> {
        SpanRecord {
            service: &self.service,
            operation: &self.operation,
            kind: self.kind,
            is_error: self.is_error,
            duration_nanos: self.duration,
        }
    }

    pub fn call(&self) -> Option<CallRecord<'_>> {
        self.caller.as_deref().map(|parent| CallRecord {
            parent,
            child: &self.service,
            is_error: self.is_error,
            duration_nanos: self.duration,
        })
    }
}

/// `n` spans over `window` from T0: `services` services with
/// `ops` operations each, 5 % errors, lognormal durations, a third of them
/// calls from another service.
pub(super) fn spans(seed: u64, n: usize, window: u64, services: u64, ops: u64) -> Vec<Gen> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let s = rng.below(services);
            let caller = (rng.below(3) == 0)
                .then(|| format!("svc-{}", (s + 1 + rng.below(services - 1)) % services));
            Gen {
                start: T0 + rng.below(window),
                service: format!("svc-{s}"),
                operation: format!("op-{}", rng.below(ops)),
                kind: rng.below(3) as i32 + 1,
                is_error: rng.below(20) == 0,
                duration: (2e6 * rng.normal().exp()) as u64,
                caller,
            }
        })
        .collect()
}

/// The spans added into aligned buckets of `width`, sorted by start.
pub(super) fn buckets_of(spans: &[Gen], width: u64, limits: &Limits) -> Vec<Bucket> {
    let mut out: BTreeMap<u64, Bucket> = BTreeMap::new();
    for g in spans {
        let start = g.start - g.start % width;
        let b = out
            .entry(start)
            .or_insert_with(|| Bucket::new(start, width).unwrap());
        b.add_span(&g.span(), limits);
        if let Some(call) = g.call() {
            b.add_call(&call, limits);
        }
    }
    out.into_values().collect()
}

pub(super) fn encoded(b: &Bucket) -> Vec<u8> {
    let mut out = Vec::new();
    b.encode(&mut out);
    out
}

#[test]
fn counts_are_exact() {
    let spans = spans(3, 50_000, 60 * SECOND, 6, 5);
    let buckets = buckets_of(&spans, 10 * SECOND, &Limits::default());
    assert_eq!(buckets.len(), 6);
    // Counted directly from the spans: (requests, errors, durations).
    type Counts = (u64, u64, Sketch);
    let mut red: BTreeMap<(u64, &str, &str, i32), Counts> = BTreeMap::new();
    let mut edges: BTreeMap<(u64, &str, &str), (u64, u64)> = BTreeMap::new();
    for g in &spans {
        let b = g.start - g.start % (10 * SECOND);
        let e = red
            .entry((b, &g.service, &g.operation, g.kind))
            .or_default();
        (e.0, e.1) = (e.0 + 1, e.1 + u64::from(g.is_error));
        e.2.insert(g.duration);
        if let Some(caller) = &g.caller {
            let e = edges.entry((b, caller, &g.service)).or_default();
            (e.0, e.1) = (e.0 + 1, e.1 + u64::from(g.is_error));
        }
    }
    let from_buckets: BTreeMap<_, _> = buckets
        .iter()
        .flat_map(|b| {
            b.red().map(|(k, s)| {
                let key = (b.start_unix_nanos(), k.service, k.operation, k.kind);
                (key, (s.requests(), s.errors(), s.latency().clone()))
            })
        })
        .collect();
    assert_eq!(from_buckets, red);
    let from_buckets: BTreeMap<_, _> = buckets
        .iter()
        .flat_map(|b| {
            b.edges().map(|(k, s)| {
                (
                    (b.start_unix_nanos(), k.parent, k.child),
                    (s.requests(), s.errors()),
                )
            })
        })
        .collect();
    assert_eq!(from_buckets, edges);
    assert!(
        buckets
            .iter()
            .all(|b| b.folded_spans() == 0 && b.folded_calls() == 0)
    );
}

/// A builder holds durations back; once finished it is the bucket the same
/// spans make one by one, bytes and all: keys with fewer spans than a
/// buffer, keys with many buffers' worth, keys past the limits, and spans
/// added after a finish.
#[test]
fn a_builder_equals_adding_span_by_span() {
    // Few keys with many spans each, among many keys with a few each.
    let mut all = spans(11, 20_000, 10 * SECOND, 3, 2);
    for (i, g) in spans(12, 4_000, 10 * SECOND, 6, 40).into_iter().enumerate() {
        all.insert(i * 5, g);
    }
    let small = Limits {
        max_red_keys: 60,
        max_edges: 10,
    };
    for limits in [Limits::default(), small] {
        let mut one = Bucket::new(T0, 10 * SECOND).unwrap();
        let mut built = BucketBuilder::new(T0, 10 * SECOND).unwrap();
        for (i, g) in all.iter().enumerate() {
            one.add_span(&g.span(), &limits);
            built.add_span(&g.span(), &limits);
            if let Some(call) = g.call() {
                one.add_call(&call, &limits);
                built.add_call(&call, &limits);
            }
            if i == all.len() / 2 {
                assert_eq!(built.finish(), &one, "finished half way");
            }
        }
        // Every key had fewer spans than a buffer, or several buffers.
        assert!(one.red().any(|(_, s)| s.requests() < 256), "{limits:?}");
        assert!(one.red().any(|(_, s)| s.requests() > 2 * 256), "{limits:?}");
        let finished = built.finish();
        assert_eq!(finished, &one, "{limits:?}");
        assert_eq!(encoded(finished), encoded(&one), "{limits:?}");
        assert_eq!(finished.folded_spans(), one.folded_spans());
    }
}

#[test]
fn coarsening_equals_adding_straight_into_coarse_buckets() {
    let spans = spans(4, 30_000, 3 * 3_600 * SECOND, 5, 4);
    let limits = Limits::default();
    let fine = buckets_of(&spans, 10 * SECOND, &limits);
    for width in [60 * SECOND, 600 * SECOND, 3_600 * SECOND] {
        let direct = buckets_of(&spans, width, &limits);
        let coarse = coarsen(&fine, width).unwrap();
        assert_eq!(coarse, direct, "width {width}");
        let bytes: Vec<_> = coarse.iter().map(encoded).collect();
        assert_eq!(bytes, direct.iter().map(encoded).collect::<Vec<_>>());
        // Coarsening in steps gives the same.
        let via_minutes = coarsen(&coarsen(&fine, 60 * SECOND).unwrap(), width).unwrap();
        assert_eq!(via_minutes, direct);
    }
    assert!(matches!(
        coarsen(&fine, 15 * SECOND),
        Err(RollupError::NotContained { .. })
    ));
    assert!(coarsen(&fine, 0).is_err());
}

#[test]
fn merging_collectors_equals_one_collector() {
    let spans = spans(5, 20_000, 10 * SECOND, 4, 4);
    let limits = Limits::default();
    let whole = buckets_of(&spans, 10 * SECOND, &limits);
    let (a, b): (Vec<Gen>, Vec<Gen>) = spans.iter().cloned().partition(|g| g.duration % 2 == 0);
    let mut merged = buckets_of(&a, 10 * SECOND, &limits).remove(0);
    merged
        .merge(&buckets_of(&b, 10 * SECOND, &limits)[0])
        .unwrap();
    assert_eq!(encoded(&merged), encoded(&whole[0]));
    // Not inside: refused.
    let other = Bucket::new(T0 + 20 * SECOND, 10 * SECOND).unwrap();
    assert!(matches!(
        merged.merge(&other),
        Err(RollupError::NotContained { .. })
    ));
}

#[test]
fn encoding_is_canonical_and_round_trips() {
    let spans = spans(6, 5_000, 10 * SECOND, 5, 5);
    let limits = Limits::default();
    let b = buckets_of(&spans, 10 * SECOND, &limits).remove(0);
    let mut reversed = spans.clone();
    reversed.reverse();
    let r = buckets_of(&reversed, 10 * SECOND, &limits).remove(0);
    assert_eq!(encoded(&b), encoded(&r), "insertion order does not show");
    let blob = encoded(&b);
    assert_eq!(Bucket::decode(&blob).as_ref(), Ok(&b));
    let empty = Bucket::new(T0, 10 * SECOND).unwrap();
    assert_eq!(Bucket::decode(&encoded(&empty)), Ok(empty));
}

#[test]
fn alignment_is_required() {
    assert!(Bucket::new(T0 + 1, 10 * SECOND).is_err());
    assert!(Bucket::new(T0, 0).is_err());
    assert!(
        Bucket::new(u64::MAX - u64::MAX % 1_000, 1_000).is_err(),
        "end overflows"
    );
    let b = Bucket::new(T0, 10 * SECOND).unwrap();
    assert!(b.contains(T0) && b.contains(T0 + 10 * SECOND - 1) && !b.contains(T0 + 10 * SECOND));
}

fn span<'a>(service: &'a str, operation: &'a str) -> SpanRecord<'a> {
    SpanRecord {
        service,
        operation,
        kind: 2,
        is_error: false,
        duration_nanos: 1_000,
    }
}

#[test]
fn keys_past_the_limit_fold_into_overflow_keys() {
    let limits = Limits {
        max_red_keys: 3,
        max_edges: 1,
    };
    let mut b = Bucket::new(T0, 10 * SECOND).unwrap();
    for (s, o) in [("a", "1"), ("a", "2"), ("b", "1")] {
        b.add_span(&span(s, o), &limits);
    }
    // Full: a new key of "a" goes to a's overflow key; known keys still count.
    b.add_span(&span("a", "3"), &limits);
    b.add_span(&span("a", "4"), &limits);
    b.add_span(&span("a", "1"), &limits);
    // Services "c" and "d" get theirs (5 and 6 keys ≤ 2 × 3) …
    b.add_span(&span("c", "1"), &limits);
    b.add_span(&span("d", "1"), &limits);
    // … then the bucket holds 2 × 3 keys: the next new service folds globally,
    // while a service with an overflow key still uses it.
    b.add_span(&span("e", "1"), &limits);
    b.add_span(&span("f", "1"), &limits);
    b.add_span(&span("c", "2"), &limits);
    let count = |service, operation, kind| {
        b.red_stats(&RedKey {
            service,
            operation,
            kind,
        })
        .map_or(0, |s| s.requests())
    };
    assert_eq!(count("a", "1", 2), 2);
    assert_eq!(count("a", OVERFLOW, 0), 2);
    assert_eq!(count("c", OVERFLOW, 0), 2);
    assert_eq!(count("d", OVERFLOW, 0), 1);
    assert_eq!(count(OVERFLOW, OVERFLOW, 0), 2);
    assert_eq!(count("a", "3", 2), 0);
    assert_eq!(b.red().count(), 7, "2 × limit + 1");
    assert_eq!(b.folded_spans(), 7);
    let total: u64 = b.red().map(|(_, s)| s.requests()).sum();
    assert_eq!(total, 11, "nothing lost");

    let call = |parent, child| CallRecord {
        parent,
        child,
        is_error: true,
        duration_nanos: 5,
    };
    for (p, c) in [("a", "b"), ("a", "c"), ("b", "c"), ("d", "e"), ("a", "b")] {
        b.add_call(&call(p, c), &limits);
    }
    let edge = |parent, child| {
        b.edge_stats(&EdgeKey { parent, child })
            .map_or(0, |s| s.errors())
    };
    assert_eq!(
        (
            edge("a", "b"),
            edge("a", OVERFLOW),
            edge(OVERFLOW, OVERFLOW)
        ),
        (2, 1, 2)
    );
    assert_eq!(b.folded_calls(), 3);
    // The folded counts survive encoding and add up in a merge.
    let decoded = Bucket::decode(&encoded(&b)).unwrap();
    assert_eq!(decoded, b);
    let mut twice = decoded.clone();
    twice.merge(&b).unwrap();
    assert_eq!((twice.folded_spans(), twice.folded_calls()), (14, 6));
}

#[test]
fn decode_refuses_what_encode_never_writes() {
    let b = buckets_of(
        &spans(8, 200, 10 * SECOND, 3, 2),
        10 * SECOND,
        &Limits::default(),
    )
    .remove(0);
    let blob = encoded(&b);
    for len in 0..blob.len() {
        assert!(Bucket::decode(&blob[..len]).is_err(), "truncated to {len}");
    }
    assert!(matches!(
        Bucket::decode(b"S\x01\x00"),
        Err(RollupError::BadTag {
            expected: "bucket",
            ..
        })
    ));
    // Unaligned start.
    let unaligned = [b'R', 1, 7, 10, 0, 0, 0, 0, 0];
    assert!(matches!(
        Bucket::decode(&unaligned),
        Err(RollupError::Unaligned { .. })
    ));
    // Strings out of order.
    let unsorted = [b'R', 1, 0, 10, 0, 0, 2, 1, b'b', 1, b'a', 0, 0];
    assert!(matches!(
        Bucket::decode(&unsorted),
        Err(RollupError::Invalid {
            field: "bucket.string",
            ..
        })
    ));
    // A key pointing past the table.
    let past = [
        b'R', 1, 0, 10, 0, 0, 1, 1, b'a', 1, 0, 1, 4, 0, 1, 0, 5, 0, 5, 1, 3, 1, 0,
    ];
    assert!(matches!(
        Bucket::decode(&past),
        Err(RollupError::Invalid {
            field: "red.operation",
            ..
        })
    ));
    // A string no key uses.
    let unused = [b'R', 1, 0, 10, 0, 0, 1, 1, b'a', 0, 0];
    assert!(matches!(
        Bucket::decode(&unused),
        Err(RollupError::Invalid {
            field: "bucket.string",
            ..
        })
    ));
    // A folded span without an overflow key to hold it.
    let folded = [b'R', 1, 0, 10, 1, 0, 0, 0, 0];
    assert!(matches!(
        Bucket::decode(&folded),
        Err(RollupError::Invalid {
            field: "bucket.foldedSpans",
            ..
        })
    ));
    // A huge entry count in a short blob allocates nothing and fails.
    let huge = [b'R', 1, 0, 10, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
    assert!(matches!(
        Bucket::decode(&huge),
        Err(RollupError::Truncated { .. })
    ));
}

proptest! {
    #[test]
    fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Bucket::decode(&bytes);
        let mut tagged = vec![b'R', 1];
        tagged.extend_from_slice(&bytes);
        if let Ok(b) = Bucket::decode(&tagged) {
            // One encoding per bucket: what decodes re-encodes to itself.
            prop_assert_eq!(encoded(&b), tagged);
        }
    }

    #[test]
    fn corrupting_a_blob_never_panics(
        seed in any::<u64>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let b = buckets_of(&spans(seed, 50, 10 * SECOND, 3, 2), 10 * SECOND, &Limits::default());
        let mut blob = encoded(&b[0]);
        for (at, byte) in edits {
            let i = at.index(blob.len());
            blob[i] = byte;
        }
        if let Ok(b) = Bucket::decode(&blob) {
            // Whatever decodes can be used.
            for (_, s) in b.red_sorted() {
                let _ = s.latency().quantile(0.9);
            }
            prop_assert_eq!(encoded(&b), blob);
        }
    }
}

/// The encoded size of a realistic bucket (50 RED keys, 20 edges, 100,000
/// spans of lognormal durations), and the time to add, encode and decode:
/// `cargo test -p clew-analysis --release -- --ignored --nocapture size`.
#[test]
#[ignore = "a measurement, not a check"]
fn size_and_speed_of_a_bucket() {
    let mut rng = Rng::new(9);
    let generated: Vec<Gen> = (0..100_000)
        .map(|_| {
            let s = rng.below(10);
            Gen {
                start: T0,
                service: format!("service-{s}"),
                operation: format!("GET /api/v1/resource-{}", rng.below(5)),
                kind: 2,
                is_error: rng.below(50) == 0,
                duration: (2e6 * rng.normal().exp()) as u64,
                caller: Some(format!("service-{}", (s + 1 + rng.below(2)) % 10)),
            }
        })
        .collect();
    let limits = Limits::default();
    let mut b = Bucket::new(T0, 10 * SECOND).unwrap();
    let t = std::time::Instant::now();
    for g in &generated {
        b.add_span(&g.span(), &limits);
        b.add_call(&g.call().unwrap(), &limits);
    }
    let add = t.elapsed();
    let t = std::time::Instant::now();
    let mut blob = Vec::new();
    for _ in 0..100 {
        blob.clear();
        b.encode(&mut blob);
    }
    let enc = t.elapsed() / 100;
    let t = std::time::Instant::now();
    for _ in 0..100 {
        assert!(Bucket::decode(&blob).is_ok());
    }
    let dec = t.elapsed() / 100;
    let red_bins: usize = b.red().map(|(_, s)| s.latency().bin_count()).sum();
    let edge_bins: usize = b.edges().map(|(_, s)| s.latency().bin_count()).sum();
    println!(
        "{} RED keys, {} edges, 100000 spans (+ as many calls): {} bytes encoded, \
         {} + {} non-empty bins; add span + call {:.0} ns, encode {enc:?}, decode {dec:?}",
        b.red().count(),
        b.edges().count(),
        blob.len(),
        red_bins,
        edge_bins,
        add.as_nanos() as f64 / 100_000.0,
    );
}

proptest! {
    #[test]
    fn merging_collectors_in_any_order_equals_one_collector(
        seed in any::<u64>(),
        split in any::<u64>(),
    ) {
        let spans = spans(seed, 300, 10 * SECOND, 4, 3);
        let limits = Limits::default();
        let whole = encoded(&buckets_of(&spans, 10 * SECOND, &limits)[0]);
        let mut rng = Rng::new(split);
        let mut parts: [Vec<Gen>; 3] = Default::default();
        spans.iter().for_each(|g| parts[rng.below(3) as usize].push(g.clone()));
        let collectors: Vec<Bucket> = parts
            .iter()
            .map(|p| buckets_of(p, 10 * SECOND, &limits).pop().unwrap_or_else(empty))
            .collect();
        for order in [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] {
            let mut m = empty();
            for i in order {
                m.merge(&collectors[i]).unwrap();
            }
            prop_assert_eq!(encoded(&m), whole.clone(), "order {:?}", order);
        }
        // (a + b) + c = a + (b + c), through the encoding as a collector ships it.
        let mut bc = Bucket::decode(&encoded(&collectors[1])).unwrap();
        bc.merge(&collectors[2]).unwrap();
        let mut a_bc = collectors[0].clone();
        a_bc.merge(&Bucket::decode(&encoded(&bc)).unwrap()).unwrap();
        prop_assert_eq!(encoded(&a_bc), whole);
    }
}

fn empty() -> Bucket {
    Bucket::new(T0, 10 * SECOND).unwrap()
}

/// A span or a call of small random names (never [`OVERFLOW`]).
type Rec = (u8, u8, i32, bool, u64);

fn rec() -> impl Strategy<Value = Rec> {
    (0u8..5, 0u8..4, 0i32..3, any::<bool>(), 0u64..1_000_000)
}

/// Per key: the statistics of every record of it, keys in order of
/// first appearance.
fn exact<K: Ord + Clone>(recs: &[(K, bool, u64)]) -> (Vec<K>, BTreeMap<K, Stats>) {
    let mut first = Vec::new();
    let mut stats: BTreeMap<K, Stats> = BTreeMap::new();
    for (k, err, dur) in recs {
        if !stats.contains_key(k) {
            first.push(k.clone());
        }
        stats.entry(k.clone()).or_default().record(*err, *dur);
    }
    (first, stats)
}

/// Checks a folded table against the records: the first `limit` keys
/// keep exact statistics, every other record is in the overflow keys
/// (their merge equals the statistics of those records) and counted as
/// folded, and there are at most 2 × limit + 1 keys.
fn check_folding<K: Ord + Clone + std::fmt::Debug>(
    recs: &[(K, bool, u64)],
    got: &BTreeMap<K, Stats>,
    is_overflow: impl Fn(&K) -> bool,
    limit: usize,
    folded: u64,
) -> Result<(), TestCaseError> {
    let (first, per_key) = exact(recs);
    let kept: Vec<K> = first.iter().take(limit).cloned().collect();
    let real: Vec<K> = got.keys().filter(|k| !is_overflow(k)).cloned().collect();
    let mut sorted_kept = kept.clone();
    sorted_kept.sort();
    prop_assert_eq!(&real, &sorted_kept);
    for k in &kept {
        prop_assert_eq!(got.get(k), per_key.get(k), "{:?}", k);
    }
    let mut rest = Stats::default();
    recs.iter()
        .filter(|(k, _, _)| !kept.contains(k))
        .for_each(|(_, e, d)| rest.record(*e, *d));
    let mut overflow = Stats::default();
    got.iter()
        .filter(|(k, _)| is_overflow(k))
        .for_each(|(_, s)| overflow.merge(s));
    prop_assert_eq!(&overflow, &rest);
    prop_assert_eq!(folded, rest.requests());
    prop_assert!(got.len() <= 2 * limit + 1);
    Ok(())
}

proptest! {
    #[test]
    fn folding_loses_no_span_and_no_call(
        spans in proptest::collection::vec(rec(), 0..300),
        calls in proptest::collection::vec(rec(), 0..300),
        max_red_keys in 0usize..8,
        max_edges in 0usize..6,
    ) {
        let limits = Limits { max_red_keys, max_edges };
        let names: Vec<String> = (0..5).map(|i| format!("n{i}")).collect();
        let mut b = empty();
        for &(s, o, kind, is_error, duration_nanos) in &spans {
            let (service, operation) = (&names[usize::from(s)], &names[usize::from(o)]);
            b.add_span(&SpanRecord { service, operation, kind, is_error, duration_nanos }, &limits);
        }
        for &(p, c, _, is_error, duration_nanos) in &calls {
            let (parent, child) = (&names[usize::from(p)], &names[usize::from(c)]);
            b.add_call(&CallRecord { parent, child, is_error, duration_nanos }, &limits);
        }
        let red_recs: Vec<_> = spans
            .iter()
            .map(|&(s, o, k, e, d)| ((names[usize::from(s)].as_str(), names[usize::from(o)].as_str(), k), e, d))
            .collect();
        let got: BTreeMap<_, Stats> = b
            .red()
            .map(|(k, s)| ((k.service, k.operation, k.kind), s.clone()))
            .collect();
        check_folding(&red_recs, &got, |k| k.1 == OVERFLOW, max_red_keys, b.folded_spans())?;
        // Per-service totals stay exact unless spans went to the global key.
        if !got.contains_key(&(OVERFLOW, OVERFLOW, 0)) {
            for name in &names {
                let raw = red_recs.iter().filter(|r| r.0.0 == name).count() as u64;
                let kept: u64 = got.iter().filter(|(k, _)| k.0 == name).map(|(_, s)| s.requests()).sum();
                prop_assert_eq!(kept, raw, "{}", name);
            }
        }
        let edge_recs: Vec<_> = calls
            .iter()
            .map(|&(p, c, _, e, d)| ((names[usize::from(p)].as_str(), names[usize::from(c)].as_str()), e, d))
            .collect();
        let got: BTreeMap<_, Stats> = b.edges().map(|(k, s)| ((k.parent, k.child), s.clone())).collect();
        check_folding(&edge_recs, &got, |k| k.1 == OVERFLOW, max_edges, b.folded_calls())?;
        // Folded or not, the bucket survives its encoding.
        prop_assert_eq!(Bucket::decode(&encoded(&b)), Ok(b));
    }
}
