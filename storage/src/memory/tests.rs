use std::sync::Arc;

use super::*;
use crate::conformance::{Fixture, error, span, trace_id};

async fn fixture() -> Fixture {
    Fixture::new(Arc::new(MemoryStorage::new(1_000)))
}

conformance_tests!(fixture);

/// The same suite against a store split into shards.
mod sharded {
    use super::*;

    async fn fixture() -> Fixture {
        let store = MemoryStorage::new(4_096);
        assert_eq!(store.shards.len(), SHARDS);
        Fixture::new(Arc::new(store))
    }

    conformance_tests!(fixture);
}

fn random_trace(rng: &mut impl rand::Rng, start_ms: u64, services: &[&str]) -> Trace {
    let mut t = [0u8; 16];
    rng.fill(&mut t[..]);
    let t = TraceId(t);
    let spans = (0..rng.random_range(1..5u8))
        .map(|n| {
            let svc = services[rng.random_range(0..services.len())];
            let start = start_ms + u64::from(n);
            let s = span(
                t,
                n + 1,
                n.checked_sub(1).map(|p| p + 1),
                svc,
                "op",
                start,
                rng.random_range(1..50),
            );
            if rng.random_bool(0.1) { error(s) } else { s }
        })
        .collect();
    Trace {
        trace_id: t.0.to_vec(),
        spans,
    }
}

#[tokio::test]
async fn the_catalogue_counts_runs_of_services_and_forgets_evicted_spans() {
    let store = MemoryStorage::new(1);
    let t = trace_id(1);
    // Services alternate within the trace: a, a, b, a.
    let spans = vec![
        span(t, 1, None, "a", "x", 1, 10),
        span(t, 2, Some(1), "a", "y", 2, 1),
        span(t, 3, Some(1), "b", "z", 3, 1),
        span(t, 4, Some(1), "a", "x", 4, 1),
    ];
    store
        .store_trace(Trace {
            trace_id: t.0.to_vec(),
            spans,
        })
        .await
        .unwrap();
    assert_eq!(store.services().await.unwrap(), ["a", "b"]);
    let ops: Vec<String> = store
        .operations("a", None)
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(ops, ["x", "y"]);
    // A second trace evicts the first: only its own catalogue is left.
    let t2 = trace_id(2);
    store
        .store_trace(Trace {
            trace_id: t2.0.to_vec(),
            spans: vec![span(t2, 1, None, "c", "w", 100, 1)],
        })
        .await
        .unwrap();
    assert_eq!(store.services().await.unwrap(), ["c"]);
    assert!(store.operations("a", None).await.unwrap().is_empty());
}

#[test]
fn ids_that_differ_in_few_bytes_spread_over_the_shards() {
    let store = MemoryStorage::new(DEFAULT_MAX_TRACES);
    let mut counts = [0usize; SHARDS];
    for n in 0..16_000u32 {
        for at in [0usize, 12] {
            let mut tid = [0u8; 16];
            tid[at..at + 4].copy_from_slice(&n.to_be_bytes());
            let shard: *const Mutex<Shard> = store.shard(&tid);
            let i = store
                .shards
                .iter()
                .position(|s| std::ptr::eq(s, shard))
                .unwrap();
            counts[i] += 1;
        }
    }
    let even = 32_000 / SHARDS;
    for c in counts {
        assert!(c > even * 8 / 10 && c < even * 12 / 10, "{counts:?}");
    }
}

#[tokio::test]
async fn a_sharded_store_keeps_its_bound_and_searches_like_a_scan() {
    use rand::SeedableRng as _;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let store = MemoryStorage::new(2_000);
    assert_eq!(store.shards.len(), SHARDS);
    let services = ["api", "db", "cache"];
    let mut all = Vec::new();
    for i in 0..6_000u64 {
        let trace = random_trace(&mut rng, i, &services);
        all.push(trace.clone());
        store.store_trace(trace).await.unwrap();
    }
    let held = store.len();
    assert!((1_900..=2_000).contains(&held), "held {held}");
    // Evicted traces are old ones: every held trace is among the
    // newest 2,600 stored.
    let mut held_ids = Vec::new();
    for (i, t) in all.iter().enumerate() {
        let id = TraceId(t.trace_id.as_slice().try_into().unwrap());
        if store.get_trace(id).await.unwrap().is_some() {
            assert!(i >= 6_000 - 2_600, "trace {i} outlived newer ones");
            held_ids.push(id);
        }
    }
    assert_eq!(held_ids.len(), held);
    // Searches agree with a scan of every held trace.
    let mut held_traces = Vec::new();
    for id in &held_ids {
        held_traces.push(store.get_trace(*id).await.unwrap().unwrap());
    }
    for (service, errors_only, min_ms, window) in [
        ("", false, 0, None),
        ("db", false, 0, None),
        ("cache", false, 30, None),
        ("api", false, 0, Some((5_000u64, 5_500u64))),
        ("nope", false, 0, None),
        ("api", true, 0, None),
    ] {
        for limit in [1u32, 20, 300] {
            let mut f = FilterCriteria {
                service: service.into(),
                errors_only,
                min_duration_nanos: min_ms * 1_000_000,
                limit,
                ..Default::default()
            };
            if let Some((a, b)) = window {
                f.start_time_min_unix_nano = crate::conformance::T0 + a * 1_000_000;
                f.start_time_max_unix_nano = crate::conformance::T0 + b * 1_000_000;
            }
            let mut want: Vec<(u64, Vec<u8>)> = held_traces
                .iter()
                .filter_map(|t| filter::best_match(&t.spans, &f).map(|b| (b, t.trace_id.clone())))
                .collect();
            want.sort_by(|a, b| b.cmp(a));
            want.truncate(limit as usize);
            let got: Vec<(u64, Vec<u8>)> = store
                .list_traces(&f)
                .await
                .unwrap()
                .into_iter()
                .map(|t| (filter::best_match(&t.spans, &f).unwrap(), t.trace_id))
                .collect();
            assert_eq!(
                got, want,
                "{service} errors={errors_only} min={min_ms} {window:?} limit {limit}"
            );
        }
    }
    // Pruning empties every shard's part.
    let stats = store.prune_traces(u64::MAX).await.unwrap();
    assert_eq!(stats.traces as usize, held);
    assert!(store.is_empty());
    assert!(store.services().await.unwrap().is_empty());
}

/// Trace `i` (distinct for every `u32`): one span starting `i` ms after
/// T0, with `attrs` small attributes and, when `value_len` > 0, one of
/// `value_len` bytes.
fn sized_trace(i: u32, attrs: usize, value_len: usize) -> Trace {
    let mut t = [0xa1; 16];
    t[12..].copy_from_slice(&i.to_be_bytes());
    let t = TraceId(t);
    let mut s = span(t, 1, None, "svc", "op", u64::from(i), 1);
    s.attributes = (0..attrs)
        .map(|n| kv(&format!("key.{n}"), "value"))
        .collect();
    if value_len > 0 {
        s.attributes.push(kv("payload", &"x".repeat(value_len)));
    }
    Trace {
        trace_id: t.0.to_vec(),
        spans: vec![s],
    }
}

fn kv(key: &str, value: &str) -> clew_proto::v1::KeyValue {
    clew_proto::v1::KeyValue {
        key: key.into(),
        value: Some(clew_proto::v1::AnyValue {
            value: Some(clew_proto::v1::any_value::Value::StringValue(value.into())),
        }),
    }
}

fn id_of(trace: &Trace) -> TraceId {
    TraceId(trace.trace_id.as_slice().try_into().unwrap())
}

#[tokio::test]
async fn a_byte_bound_holds_the_accounted_bytes_under_it_evicting_the_oldest_first() {
    let bound = 256 << 10;
    let store = MemoryStorage::bounded(1_000_000, bound);
    assert_eq!(store.shards.len(), 1);
    let n = 2_000u32; // about 1.6 KiB each: 12 times the bound
    for i in 0..n {
        store.store_trace(sized_trace(i, 4, 1024)).await.unwrap();
        assert!(store.stats().bytes <= bound, "over the bound after {i}");
    }
    let stats = store.stats();
    let held = u32::try_from(stats.traces).unwrap();
    assert!(held > 100 && held < n / 4, "held {held}");
    // Exactly the newest `held` traces are left.
    for i in 0..n {
        let stored = store.get_trace(id_of(&sized_trace(i, 0, 0))).await.unwrap();
        assert_eq!(stored.is_some(), i >= n - held, "trace {i}");
    }
    assert_eq!(stats.evicted_for_bytes, u64::from(n - held));
    assert_eq!(stats.evicted_for_traces, 0);
    // The count is the sum of the held spans' estimates, and near the
    // bound (the next trace would not have fitted).
    let want: u64 = (n - held..n)
        .map(|i| span_bytes(&sized_trace(i, 4, 1024).spans[0]))
        .sum();
    assert_eq!(stats.bytes, want);
    assert!(stats.bytes > bound - want / u64::from(held));
    // Whatever leaves the store leaves the count.
    store.prune_traces(u64::MAX).await.unwrap();
    assert_eq!(store.stats().bytes, 0);
}

#[tokio::test]
async fn a_sharded_store_keeps_its_byte_bound_and_the_newest_traces() {
    let bound = 64 << 20;
    let store = MemoryStorage::bounded(1_000_000, bound);
    assert_eq!(store.shards.len(), SHARDS);
    let n = 8_000u32; // 16 KiB each: twice the bound
    for i in 0..n {
        store
            .store_trace(sized_trace(i, 0, 16 << 10))
            .await
            .unwrap();
    }
    let stats = store.stats();
    let one = span_bytes(&sized_trace(0, 0, 16 << 10).spans[0]);
    assert!(stats.bytes <= bound);
    // Every shard is full to within one trace.
    assert!(stats.bytes > bound - SHARDS as u64 * one, "{stats:?}");
    assert_eq!(stats.evicted_for_bytes, u64::from(n) - stats.traces);
    // Evicted traces are old ones: every held trace is among the newest
    // 130 % of what is held.
    let held = u32::try_from(stats.traces).unwrap();
    for i in 0..n - held * 13 / 10 {
        let stored = store.get_trace(id_of(&sized_trace(i, 0, 0))).await.unwrap();
        assert!(stored.is_none(), "trace {i} outlived newer ones");
    }
}

#[tokio::test]
async fn the_trace_bound_still_applies_under_the_byte_bound() {
    let store = MemoryStorage::bounded(3, 1 << 30);
    for i in 0..10 {
        store.store_trace(sized_trace(i, 1, 0)).await.unwrap();
    }
    let stats = store.stats();
    assert_eq!((stats.traces, stats.evicted_for_traces), (3, 7));
    assert_eq!(stats.evicted_for_bytes, 0);
}

fn alloc(bytes: usize) -> usize {
    bytes.next_multiple_of(16)
}

fn vec_heap<T>(v: &[T]) -> usize {
    alloc(std::mem::size_of_val(v))
}

fn kvs_heap(kvs: &[clew_proto::v1::KeyValue]) -> usize {
    use clew_proto::v1::any_value::Value;
    let value =
        |v: &Option<clew_proto::v1::AnyValue>| match v.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => alloc(s.len()),
            Some(Value::BytesValue(b)) => alloc(b.len()),
            _ => 0,
        };
    vec_heap(kvs)
        + kvs
            .iter()
            .map(|kv| alloc(kv.key.len()) + value(&kv.value))
            .sum::<usize>()
}

/// What a stored span takes on the heap, counted field by field (its
/// strings and vectors at their lengths, rounded up to 16 bytes as
/// allocators do), with its slot in the trace's spans and its brief.
fn heap(span: &Span) -> usize {
    let strings = [&span.name, &span.service, &span.trace_state, &span.node];
    let clock = |c: &Option<clew_proto::v1::VectorClock>| {
        c.as_ref().map_or(0, |c| {
            vec_heap(&c.entries) + c.entries.iter().map(|e| alloc(e.node.len())).sum::<usize>()
        })
    };
    std::mem::size_of::<Span>()
        + std::mem::size_of::<Brief>()
        + [&span.trace_id, &span.span_id, &span.parent_span_id]
            .iter()
            .map(|v| vec_heap(v))
            .sum::<usize>()
        + strings.iter().map(|s| alloc(s.len())).sum::<usize>()
        + kvs_heap(&span.attributes)
        + kvs_heap(&span.resource)
        + vec_heap(&span.events)
        + span
            .events
            .iter()
            .map(|e| alloc(e.name.len()) + kvs_heap(&e.attributes))
            .sum::<usize>()
        + vec_heap(&span.links)
        + span
            .links
            .iter()
            .map(|l| {
                vec_heap(&l.trace_id)
                    + vec_heap(&l.span_id)
                    + alloc(l.trace_state.len())
                    + kvs_heap(&l.attributes)
            })
            .sum::<usize>()
        + span.status.as_ref().map_or(0, |s| alloc(s.message.len()))
        + clock(&span.clock_start)
        + clock(&span.clock_end)
}

#[tokio::test]
async fn the_byte_estimate_tracks_the_heap_spans_take() {
    use prost::Message as _;
    let typical = {
        let mut s = sized_trace(1, 8, 0).spans.remove(0);
        s.resource = vec![
            kv("host.name", "node-12"),
            kv("k8s.pod.name", "checkout-7d9f"),
        ];
        s.events.push(clew_proto::v1::Event {
            time_unix_nano: 5,
            name: "retry".into(),
            attributes: vec![kv("attempt", "2")],
        });
        error(s)
    };
    let spans = [
        ("a bare span", sized_trace(2, 0, 0).spans.remove(0)),
        ("a typical span", typical),
        ("128 attributes", sized_trace(3, 128, 0).spans.remove(0)),
        (
            "a 16 KiB value",
            sized_trace(4, 2, 16 << 10).spans.remove(0),
        ),
    ];
    let store = MemoryStorage::new(100);
    let mut encoded = 0;
    for (what, span) in &spans {
        let (estimate, real) = (span_bytes(span) as f64, heap(span) as f64);
        assert!(
            (0.75..1.33).contains(&(estimate / real)),
            "{what}: estimated {estimate} bytes, takes {real}"
        );
        encoded += span.encoded_len() as u64;
        store
            .store_trace(Trace {
                trace_id: span.trace_id.clone(),
                spans: vec![span.clone()],
            })
            .await
            .unwrap();
    }
    // The store counts the estimates: more than the encoded lengths, by
    // the fixed overheads only.
    let held = store.stats().bytes;
    let want: u64 = spans.iter().map(|(_, s)| span_bytes(s)).sum();
    assert_eq!(held, want);
    assert!(
        held > encoded && held < encoded + 200 * SPAN_OVERHEAD,
        "{held} vs {encoded}"
    );
}

#[tokio::test]
async fn evicts_the_oldest_trace_beyond_the_bound() {
    let store = MemoryStorage::new(2);
    for i in 1..=3u8 {
        let t = trace_id(i);
        let s = span(t, i, None, "svc", "op", u64::from(i) * 1_000, 10);
        store
            .store_trace(Trace {
                trace_id: t.0.to_vec(),
                spans: vec![s],
            })
            .await
            .unwrap();
    }
    assert_eq!(store.len(), 2);
    assert!(store.get_trace(trace_id(1)).await.unwrap().is_none());
    assert!(store.get_trace(trace_id(2)).await.unwrap().is_some());
    assert!(store.get_trace(trace_id(3)).await.unwrap().is_some());
    // The evicted trace's spans left the search index and the catalogue.
    let all = store.list_traces(&FilterCriteria::default()).await.unwrap();
    assert_eq!(all.len(), 2);
}
