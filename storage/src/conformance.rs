//! The conformance suite every backend runs unchanged.
//!
//! A backend's test module defines `async fn fixture() -> Fixture` (a fresh,
//! empty store, plus whatever must live as long as it, such as a Redis server)
//! and invokes `conformance_tests!(fixture)`, which makes one `#[tokio::test]`
//! per case below. Other crates (feature `testing`) run it on stores built
//! over these backends: `clew_storage::conformance_tests!(fixture)`, or
//! `conformance_tests!(core fixture)` for a store that is not itself hot
//! storage (without the cases of what a cold tier needs of hot storage).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;

use clew_proto::v1::{
    AnyValue, ClockEntry, Event, KeyValue, Link, Status, VectorClock, any_value, status,
};

use super::{
    DEFAULT_LIMIT, DependencyLink, FilterCriteria, Moved, PruneStats, RollupPart, Span, SpanKind,
    Storage, StorageError, StoreOutcome, Trace, TraceId,
};

/// A fresh store and what must outlive it.
pub struct Fixture {
    pub storage: Arc<dyn Storage>,
    pub _guard: Option<Box<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("storage", &self.storage)
            .finish_non_exhaustive()
    }
}

impl Fixture {
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Fixture {
            storage,
            _guard: None,
        }
    }

    pub fn with_guard(storage: Arc<dyn Storage>, guard: impl Any + Send + Sync) -> Self {
        Fixture {
            storage,
            _guard: Some(Box::new(guard)),
        }
    }
}

/// Instantiates every conformance case as a test, given a fixture function.
#[macro_export]
macro_rules! conformance_tests {
    ($make:ident) => {
        $crate::conformance_tests!(core $make);
        $crate::conformance_tests!(@cases $make, hot;
            movable_traces_are_the_ended_ones_and_leave_when_moved,
            a_trace_that_grew_after_it_was_read_is_not_removed,
            a_lease_has_one_holder_until_it_expires,
        );
    };
    (core $make:ident) => {
        $crate::conformance_tests!(@cases $make, conformance;
            round_trip_keeps_every_field,
            missing_trace_is_none,
            fragments_merge_sorted_by_start,
            duplicates_are_dropped_and_counted,
            invalid_fragments_are_rejected,
            empty_fragment_stores_nothing,
            concurrent_overlapping_stores_store_each_span_once,
            search_by_service_and_operation,
            search_by_tags_on_attributes_and_resource,
            search_conditions_hold_on_one_span,
            search_duration_bounds,
            search_time_window,
            search_errors_only,
            search_orders_most_recent_first_and_limits,
            search_returns_whole_traces,
            services_and_operations,
            dependencies_count_calls_and_errors,
            prune_removes_old_traces_and_their_index_entries,
            rollup_parts_are_kept_per_bucket_and_owner,
            rollup_parts_of_ended_buckets_are_pruned,
            invalid_rollup_parts_are_rejected,
        );
    };
    (@cases $make:ident, $module:ident; $($case:ident),* $(,)?) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fixture = super::$make().await;
                    $crate::conformance::$case(fixture.storage.clone()).await;
                    drop(fixture);
                }
            )*
        }
    };
}

/// A base time (2023-11-14) so that scores look like real timestamps.
pub const T0: u64 = 1_700_000_000_000_000_000;
const MS: u64 = 1_000_000;

/// A distinct, valid trace id.
pub fn trace_id(n: u8) -> TraceId {
    let mut b = [0u8; 16];
    b[0] = 0xa0;
    b[15] = n;
    TraceId(b)
}

fn sid(n: u8) -> Vec<u8> {
    vec![0x50, 0, 0, 0, 0, 0, 0, n]
}

/// A span of trace `t` with id `n`, starting `start_ms` after [`T0`] and
/// lasting `dur_ms`.
pub fn span(
    t: TraceId,
    n: u8,
    parent: Option<u8>,
    service: &str,
    name: &str,
    start_ms: u64,
    dur_ms: u64,
) -> Span {
    Span {
        trace_id: t.0.to_vec(),
        span_id: sid(n),
        parent_span_id: parent.map(sid).unwrap_or_default(),
        name: name.into(),
        service: service.into(),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: T0 + start_ms * MS,
        end_time_unix_nano: T0 + (start_ms + dur_ms) * MS,
        ..Default::default()
    }
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

pub fn error(mut span: Span) -> Span {
    span.status = Some(Status {
        code: status::Code::Error as i32,
        message: "boom".into(),
    });
    span
}

fn frag(t: TraceId, spans: Vec<Span>) -> Trace {
    Trace {
        trace_id: t.0.to_vec(),
        spans,
    }
}

async fn store(st: &Arc<dyn Storage>, t: TraceId, spans: Vec<Span>) -> StoreOutcome {
    st.store_trace(frag(t, spans)).await.unwrap()
}

fn ids(traces: &[Trace]) -> Vec<TraceId> {
    traces
        .iter()
        .map(|t| TraceId::from_slice(&t.trace_id).unwrap())
        .collect()
}

fn filter(service: &str) -> FilterCriteria {
    FilterCriteria {
        service: service.into(),
        ..Default::default()
    }
}

pub async fn round_trip_keeps_every_field(st: Arc<dyn Storage>) {
    let t = trace_id(1);
    let mut full = span(t, 1, None, "api", "GET /users", 0, 30);
    full.kind = SpanKind::Client as i32;
    full.attributes = vec![
        kv("http.method", s("GET")),
        kv("http.status_code", any_value::Value::IntValue(200)),
        kv("retry", any_value::Value::BoolValue(false)),
        kv("ratio", any_value::Value::DoubleValue(0.25)),
        kv("blob", any_value::Value::BytesValue(vec![1, 2, 3])),
    ];
    full.events = vec![Event {
        time_unix_nano: T0 + 5 * MS,
        name: "cache miss".into(),
        attributes: vec![kv("key", s("u:1"))],
    }];
    full.links = vec![Link {
        trace_id: trace_id(9).0.to_vec(),
        span_id: sid(9),
        trace_state: "k=v".into(),
        attributes: vec![],
    }];
    full.status = Some(Status {
        code: status::Code::Ok as i32,
        message: String::new(),
    });
    full.clock_start = Some(VectorClock {
        entries: vec![ClockEntry {
            node: "api-0".into(),
            counter: 3,
        }],
    });
    full.clock_end = Some(VectorClock {
        entries: vec![
            ClockEntry {
                node: "api-0".into(),
                counter: 5,
            },
            ClockEntry {
                node: "db-0".into(),
                counter: 2,
            },
        ],
    });
    full.trace_state = "vendor=1".into();
    full.resource = vec![kv("host.name", s("node-1"))];
    full.node = "api-0".into();
    let child = span(t, 2, Some(1), "db", "SELECT", 10, 5);

    let out = store(&st, t, vec![child.clone(), full.clone()]).await;
    assert_eq!(
        out,
        StoreOutcome {
            stored: 2,
            duplicates: 0
        }
    );
    let got = st.get_trace(t).await.unwrap().expect("trace stored");
    assert_eq!(got.trace_id, t.0.to_vec());
    assert_eq!(got.spans, vec![full, child]);
}

pub async fn missing_trace_is_none(st: Arc<dyn Storage>) {
    assert!(st.get_trace(trace_id(42)).await.unwrap().is_none());
    let t = trace_id(1);
    store(&st, t, vec![span(t, 1, None, "a", "x", 0, 1)]).await;
    assert!(st.get_trace(trace_id(42)).await.unwrap().is_none());
}

pub async fn fragments_merge_sorted_by_start(st: Arc<dyn Storage>) {
    let t = trace_id(1);
    let other = trace_id(2);
    store(&st, t, vec![span(t, 3, Some(1), "b", "y", 20, 5)]).await;
    store(&st, other, vec![span(other, 1, None, "a", "x", 0, 1)]).await;
    store(
        &st,
        t,
        vec![
            span(t, 1, None, "a", "x", 0, 100),
            span(t, 2, Some(1), "a", "z", 10, 5),
        ],
    )
    .await;
    let got = st.get_trace(t).await.unwrap().unwrap();
    let starts: Vec<u64> = got
        .spans
        .iter()
        .map(|s| (s.start_time_unix_nano - T0) / MS)
        .collect();
    assert_eq!(starts, vec![0, 10, 20]);
    assert!(got.spans.iter().all(|s| s.trace_id == t.0.to_vec()));
    assert_eq!(st.get_trace(other).await.unwrap().unwrap().spans.len(), 1);
}

pub async fn duplicates_are_dropped_and_counted(st: Arc<dyn Storage>) {
    let t = trace_id(1);
    let a = span(t, 1, None, "a", "x", 0, 10);
    let b = span(t, 2, Some(1), "b", "y", 1, 5);
    let c = span(t, 3, Some(1), "b", "y", 2, 5);
    // A duplicate inside one fragment.
    let out = store(&st, t, vec![a.clone(), b.clone(), a.clone()]).await;
    assert_eq!(
        out,
        StoreOutcome {
            stored: 2,
            duplicates: 1
        }
    );
    // The same fragment again (a retry).
    let out = store(&st, t, vec![a.clone(), b.clone()]).await;
    assert_eq!(
        out,
        StoreOutcome {
            stored: 0,
            duplicates: 2
        }
    );
    // An overlapping fragment; the stored copy wins over a changed duplicate.
    let mut b_changed = b.clone();
    b_changed.name = "renamed".into();
    let out = store(&st, t, vec![b_changed, c.clone()]).await;
    assert_eq!(
        out,
        StoreOutcome {
            stored: 1,
            duplicates: 1
        }
    );
    let got = st.get_trace(t).await.unwrap().unwrap();
    assert_eq!(got.spans, vec![a, b, c]);
}

pub async fn invalid_fragments_are_rejected(st: Arc<dyn Storage>) {
    let t = trace_id(1);
    let good = span(t, 1, None, "a", "x", 0, 1);
    let cases = vec![
        Trace {
            trace_id: vec![1; 15],
            spans: vec![good.clone()],
        },
        Trace {
            trace_id: vec![0; 16],
            spans: vec![],
        },
        frag(
            t,
            vec![Span {
                span_id: vec![1; 7],
                ..good.clone()
            }],
        ),
        frag(
            t,
            vec![Span {
                span_id: vec![0; 8],
                ..good.clone()
            }],
        ),
        frag(
            t,
            vec![Span {
                trace_id: trace_id(2).0.to_vec(),
                ..good.clone()
            }],
        ),
        frag(
            t,
            vec![Span {
                parent_span_id: vec![1; 3],
                ..good.clone()
            }],
        ),
    ];
    for bad in cases {
        let err = st.store_trace(bad).await.unwrap_err();
        assert!(matches!(err, StorageError::InvalidTrace(_)), "{err:?}");
        assert!(!err.is_retryable());
    }
    // Nothing of a rejected fragment was stored.
    assert!(st.get_trace(t).await.unwrap().is_none());
    // A span with an empty trace id takes the fragment's.
    let out = store(
        &st,
        t,
        vec![Span {
            trace_id: vec![],
            ..good
        }],
    )
    .await;
    assert_eq!(out.stored, 1);
    assert_eq!(
        st.get_trace(t).await.unwrap().unwrap().spans[0].trace_id,
        t.0.to_vec()
    );
}

pub async fn empty_fragment_stores_nothing(st: Arc<dyn Storage>) {
    let t = trace_id(1);
    assert_eq!(store(&st, t, vec![]).await, StoreOutcome::default());
    assert!(st.get_trace(t).await.unwrap().is_none());
    assert!(st.services().await.unwrap().is_empty());
}

pub async fn concurrent_overlapping_stores_store_each_span_once(st: Arc<dyn Storage>) {
    let t = trace_id(1);
    let spans: Vec<Span> = (1..=40u8)
        .map(|i| span(t, i, (i > 1).then_some(1), "svc", "op", u64::from(i), 1))
        .collect();
    // Eight writers, each storing an overlapping window of the spans.
    let mut tasks = Vec::new();
    for w in 0..8usize {
        let st = st.clone();
        let part: Vec<Span> = spans.iter().skip(w * 4).take(12).cloned().collect();
        tasks.push(tokio::spawn(async move {
            st.store_trace(frag(t, part)).await.unwrap()
        }));
    }
    let mut stored = 0;
    let mut dups = 0;
    for task in tasks {
        let out = task.await.unwrap();
        stored += out.stored;
        dups += out.duplicates;
    }
    let covered: HashSet<usize> = (0..8).flat_map(|w| (w * 4)..(w * 4 + 12).min(40)).collect();
    assert_eq!(stored, covered.len() as u64);
    assert_eq!(
        stored + dups,
        (0..8).map(|w| (40 - w * 4).min(12) as u64).sum::<u64>()
    );
    let got = st.get_trace(t).await.unwrap().unwrap();
    assert_eq!(got.spans.len(), covered.len());
    let unique: HashSet<&Vec<u8>> = got.spans.iter().map(|s| &s.span_id).collect();
    assert_eq!(unique.len(), got.spans.len());
}

/// Three traces: t1 api/GET -> db/SELECT, t2 api/POST, t3 web/GET.
async fn seed_search(st: &Arc<dyn Storage>) -> [TraceId; 3] {
    let (t1, t2, t3) = (trace_id(1), trace_id(2), trace_id(3));
    store(
        st,
        t1,
        vec![
            span(t1, 1, None, "api", "GET", 0, 50),
            span(t1, 2, Some(1), "db", "SELECT", 10, 20),
        ],
    )
    .await;
    store(st, t2, vec![span(t2, 1, None, "api", "POST", 100, 10)]).await;
    store(st, t3, vec![span(t3, 1, None, "web", "GET", 200, 10)]).await;
    [t1, t2, t3]
}

pub async fn search_by_service_and_operation(st: Arc<dyn Storage>) {
    let [t1, t2, t3] = seed_search(&st).await;
    assert_eq!(
        ids(&st.list_traces(&filter("api")).await.unwrap()),
        vec![t2, t1]
    );
    assert_eq!(ids(&st.list_traces(&filter("db")).await.unwrap()), vec![t1]);
    assert!(st.list_traces(&filter("nope")).await.unwrap().is_empty());
    let mut f = filter("api");
    f.operation = "GET".into();
    assert_eq!(ids(&st.list_traces(&f).await.unwrap()), vec![t1]);
    f.operation = "SELECT".into();
    assert!(st.list_traces(&f).await.unwrap().is_empty());
    // Operation without service matches any service.
    let f = FilterCriteria {
        operation: "GET".into(),
        ..Default::default()
    };
    assert_eq!(ids(&st.list_traces(&f).await.unwrap()), vec![t3, t1]);
    // No criteria: everything, most recent first.
    assert_eq!(
        ids(&st.list_traces(&FilterCriteria::default()).await.unwrap()),
        vec![t3, t2, t1]
    );
}

pub async fn search_by_tags_on_attributes_and_resource(st: Arc<dyn Storage>) {
    let (t1, t2) = (trace_id(1), trace_id(2));
    let mut a = span(t1, 1, None, "api", "GET", 0, 10);
    a.attributes = vec![
        kv("http.status_code", any_value::Value::IntValue(500)),
        kv("cache.hit", any_value::Value::BoolValue(true)),
        kv("long", s(&"x".repeat(300))),
    ];
    a.resource = vec![kv("k8s.pod", s("api-7f9c"))];
    let mut b = span(t2, 1, None, "api", "GET", 100, 10);
    b.attributes = vec![kv("http.status_code", any_value::Value::IntValue(200))];
    b.resource = vec![kv("k8s.pod", s("api-1234"))];
    store(&st, t1, vec![a]).await;
    store(&st, t2, vec![b]).await;

    let tagged = |pairs: &[(&str, &str)]| {
        let mut f = filter("api");
        for (k, v) in pairs {
            f.tags.insert((*k).into(), (*v).into());
        }
        f
    };
    let q = |f: FilterCriteria| {
        let st = st.clone();
        async move { ids(&st.list_traces(&f).await.unwrap()) }
    };
    assert_eq!(q(tagged(&[("http.status_code", "500")])).await, vec![t1]);
    assert_eq!(q(tagged(&[("http.status_code", "200")])).await, vec![t2]);
    assert_eq!(q(tagged(&[("cache.hit", "true")])).await, vec![t1]);
    assert_eq!(q(tagged(&[("k8s.pod", "api-1234")])).await, vec![t2]);
    assert_eq!(
        q(tagged(&[
            ("k8s.pod", "api-7f9c"),
            ("http.status_code", "500")
        ]))
        .await,
        vec![t1]
    );
    assert!(
        q(tagged(&[
            ("k8s.pod", "api-7f9c"),
            ("http.status_code", "200")
        ]))
        .await
        .is_empty()
    );
    assert_eq!(q(tagged(&[("long", &"x".repeat(300))])).await, vec![t1]);
    assert!(q(tagged(&[("http.status_code", "404")])).await.is_empty());
    // Tags without a service.
    let mut f = FilterCriteria::default();
    f.tags.insert("k8s.pod".into(), "api-1234".into());
    assert_eq!(q(f).await, vec![t2]);
}

pub async fn search_conditions_hold_on_one_span(st: Arc<dyn Storage>) {
    // api/GET has the tag on its child only, in another service: no match.
    let t = trace_id(1);
    let root = span(t, 1, None, "api", "GET", 0, 10);
    let mut child = span(t, 2, Some(1), "db", "SELECT", 1, 500);
    child.attributes = vec![kv("db.system", s("postgres"))];
    store(&st, t, vec![root, child]).await;
    let mut f = filter("api");
    f.tags.insert("db.system".into(), "postgres".into());
    assert!(st.list_traces(&f).await.unwrap().is_empty());
    let mut f = filter("api");
    f.min_duration_nanos = 100 * MS;
    assert!(st.list_traces(&f).await.unwrap().is_empty());
    let mut f = filter("db");
    f.tags.insert("db.system".into(), "postgres".into());
    f.min_duration_nanos = 100 * MS;
    assert_eq!(ids(&st.list_traces(&f).await.unwrap()), vec![t]);
}

pub async fn search_duration_bounds(st: Arc<dyn Storage>) {
    let ts: Vec<TraceId> = (1..=4).map(trace_id).collect();
    for (i, t) in ts.iter().enumerate() {
        let dur = [5, 50, 500, 5000][i];
        store(
            &st,
            *t,
            vec![span(*t, 1, None, "api", "GET", i as u64 * 10, dur)],
        )
        .await;
    }
    let q = |min_ms: u64, max_ms: u64| {
        let st = st.clone();
        async move {
            let mut f = filter("api");
            f.min_duration_nanos = min_ms * MS;
            f.max_duration_nanos = max_ms * MS;
            ids(&st.list_traces(&f).await.unwrap())
        }
    };
    assert_eq!(q(50, 0).await, vec![ts[3], ts[2], ts[1]]);
    assert_eq!(q(0, 50).await, vec![ts[1], ts[0]]);
    assert_eq!(q(50, 500).await, vec![ts[2], ts[1]]);
    assert_eq!(q(51, 499).await, Vec::<TraceId>::new());
    // Without a service too.
    let f = FilterCriteria {
        min_duration_nanos: 5000 * MS,
        ..Default::default()
    };
    assert_eq!(ids(&st.list_traces(&f).await.unwrap()), vec![ts[3]]);
}

pub async fn search_time_window(st: Arc<dyn Storage>) {
    let ts: Vec<TraceId> = (1..=5).map(trace_id).collect();
    for (i, t) in ts.iter().enumerate() {
        store(
            &st,
            *t,
            vec![span(*t, 1, None, "api", "GET", i as u64 * 1000, 10)],
        )
        .await;
    }
    let q = |min_ms: Option<u64>, max_ms: Option<u64>| {
        let st = st.clone();
        async move {
            let mut f = filter("api");
            f.start_time_min_unix_nano = min_ms.map_or(0, |m| T0 + m * MS);
            f.start_time_max_unix_nano = max_ms.map_or(0, |m| T0 + m * MS);
            ids(&st.list_traces(&f).await.unwrap())
        }
    };
    // Bounds are inclusive.
    assert_eq!(q(Some(1000), Some(3000)).await, vec![ts[3], ts[2], ts[1]]);
    assert_eq!(q(Some(3000), None).await, vec![ts[4], ts[3]]);
    assert_eq!(q(None, Some(1000)).await, vec![ts[1], ts[0]]);
    assert_eq!(q(Some(1001), Some(1999)).await, Vec::<TraceId>::new());
    assert_eq!(q(Some(3000), Some(1000)).await, Vec::<TraceId>::new());
    // A long trace: its root is in the window, a later span is not.
    let long = trace_id(9);
    store(
        &st,
        long,
        vec![
            span(long, 1, None, "api", "GET", 1500, 10_000),
            span(long, 2, Some(1), "api", "GET", 9000, 10),
        ],
    )
    .await;
    assert_eq!(q(Some(1001), Some(1999)).await, vec![long]);
}

pub async fn search_errors_only(st: Arc<dyn Storage>) {
    let (t1, t2, t3) = (trace_id(1), trace_id(2), trace_id(3));
    store(
        &st,
        t1,
        vec![
            span(t1, 1, None, "api", "GET", 0, 10),
            error(span(t1, 2, Some(1), "db", "SELECT", 1, 5)),
        ],
    )
    .await;
    store(
        &st,
        t2,
        vec![error(span(t2, 1, None, "api", "GET", 100, 10))],
    )
    .await;
    store(&st, t3, vec![span(t3, 1, None, "api", "GET", 200, 10)]).await;
    let mut f = filter("api");
    f.errors_only = true;
    assert_eq!(ids(&st.list_traces(&f).await.unwrap()), vec![t2]);
    let f = FilterCriteria {
        errors_only: true,
        ..Default::default()
    };
    assert_eq!(ids(&st.list_traces(&f).await.unwrap()), vec![t2, t1]);
}

pub async fn search_orders_most_recent_first_and_limits(st: Arc<dyn Storage>) {
    let ts: Vec<TraceId> = (1..=30).map(trace_id).collect();
    for (i, t) in ts.iter().enumerate() {
        store(&st, *t, vec![span(*t, 1, None, "api", "GET", i as u64, 1)]).await;
    }
    let newest_first: Vec<TraceId> = ts.iter().rev().copied().collect();
    let got = ids(&st.list_traces(&filter("api")).await.unwrap());
    assert_eq!(got, newest_first[..DEFAULT_LIMIT].to_vec());
    let mut f = filter("api");
    f.limit = 3;
    assert_eq!(
        ids(&st.list_traces(&f).await.unwrap()),
        newest_first[..3].to_vec()
    );
    f.limit = 100;
    assert_eq!(ids(&st.list_traces(&f).await.unwrap()), newest_first);

    // The order is by the most recent *matching* span: t_old has an old api span
    // and a recent db span, so it ranks by the api span when searching api.
    let t_old = trace_id(100);
    let mut api = span(t_old, 2, None, "api", "GET", 15, 1);
    api.start_time_unix_nano += MS / 2;
    store(
        &st,
        t_old,
        vec![span(t_old, 1, None, "db", "SELECT", 10_000, 1), api],
    )
    .await;
    let mut f = filter("api");
    f.limit = 100;
    let got = ids(&st.list_traces(&f).await.unwrap());
    assert_eq!(got.len(), 31);
    assert_eq!(got[0], ts[29]);
    let pos = got.iter().position(|t| *t == t_old).unwrap();
    assert_eq!(got[pos - 1], ts[16]);
    assert_eq!(got[pos + 1], ts[15]);
    // With no service, its db span makes it the most recent.
    let got = ids(&st.list_traces(&FilterCriteria::default()).await.unwrap());
    assert_eq!(got[0], t_old);
}

pub async fn search_returns_whole_traces(st: Arc<dyn Storage>) {
    let [t1, ..] = seed_search(&st).await;
    let got = st.list_traces(&filter("db")).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0], st.get_trace(t1).await.unwrap().unwrap());
    assert_eq!(got[0].spans.len(), 2);
}

pub async fn services_and_operations(st: Arc<dyn Storage>) {
    let t = trace_id(1);
    let mut client = span(t, 2, Some(1), "api", "GET /users", 1, 5);
    client.kind = SpanKind::Client as i32;
    store(
        &st,
        t,
        vec![
            span(t, 1, None, "api", "GET /users", 0, 10),
            client,
            span(t, 3, Some(2), "users", "Lookup", 2, 2),
            span(t, 4, Some(3), "users", "Lookup", 3, 1),
        ],
    )
    .await;
    assert_eq!(st.services().await.unwrap(), vec!["api", "users"]);
    assert_eq!(
        st.operations("api", None).await.unwrap(),
        vec![
            ("GET /users".to_string(), SpanKind::Server),
            ("GET /users".to_string(), SpanKind::Client),
        ]
    );
    assert_eq!(
        st.operations("api", Some(SpanKind::Client)).await.unwrap(),
        vec![("GET /users".to_string(), SpanKind::Client)]
    );
    assert_eq!(
        st.operations("users", None).await.unwrap(),
        vec![("Lookup".to_string(), SpanKind::Server)]
    );
    assert!(
        st.operations("users", Some(SpanKind::Consumer))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(st.operations("nope", None).await.unwrap().is_empty());
}

pub async fn dependencies_count_calls_and_errors(st: Arc<dyn Storage>) {
    let (t1, t2) = (trace_id(1), trace_id(2));
    // t1: api -> users (ok), api -> users (error), users -> db, api -> api (same
    // service: no edge). The children arrive before their parents.
    store(
        &st,
        t1,
        vec![
            span(t1, 3, Some(2), "users", "Lookup", 2, 1),
            error(span(t1, 4, Some(2), "users", "Lookup", 3, 1)),
            span(t1, 5, Some(3), "db", "SELECT", 4, 1),
        ],
    )
    .await;
    store(
        &st,
        t1,
        vec![
            span(t1, 1, None, "api", "GET", 0, 10),
            span(t1, 2, Some(1), "api", "call", 1, 8),
        ],
    )
    .await;
    // A duplicate child counts once.
    store(&st, t1, vec![span(t1, 3, Some(2), "users", "Lookup", 2, 1)]).await;
    // t2, much later: api -> users.
    store(
        &st,
        t2,
        vec![
            span(t2, 1, None, "api", "GET", 60_000, 10),
            span(t2, 2, Some(1), "users", "Lookup", 60_001, 1),
        ],
    )
    .await;
    let link = |p: &str, c: &str, calls, errors| DependencyLink {
        parent: p.into(),
        child: c.into(),
        call_count: calls,
        error_count: errors,
    };
    assert_eq!(
        st.dependencies(T0, T0 + 1_000 * MS).await.unwrap(),
        vec![link("api", "users", 2, 1), link("users", "db", 1, 0)]
    );
    assert_eq!(
        st.dependencies(0, 0).await.unwrap(),
        vec![link("api", "users", 3, 1), link("users", "db", 1, 0)]
    );
    // The window applies to the child's start, inclusively.
    assert_eq!(
        st.dependencies(T0 + 3 * MS, T0 + 60_001 * MS)
            .await
            .unwrap(),
        vec![link("api", "users", 2, 1), link("users", "db", 1, 0)]
    );
    assert!(
        st.dependencies(T0 + 70_000 * MS, 0)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn prune_removes_old_traces_and_their_index_entries(st: Arc<dyn Storage>) {
    let (old, spanning, young) = (trace_id(1), trace_id(2), trace_id(3));
    store(
        &st,
        old,
        vec![
            span(old, 1, None, "legacy", "GET", 0, 10),
            span(old, 2, Some(1), "api", "call", 1, 5),
        ],
    )
    .await;
    // Starts before the cut but its newest span ends after it: kept.
    store(
        &st,
        spanning,
        vec![span(spanning, 1, None, "api", "GET", 5, 10_000)],
    )
    .await;
    store(
        &st,
        young,
        vec![span(young, 1, None, "api", "GET", 20_000, 10)],
    )
    .await;

    let stats = st.prune_traces(T0 + 1_000 * MS).await.unwrap();
    assert_eq!(
        stats,
        PruneStats {
            traces: 1,
            spans: 2
        }
    );
    assert!(st.get_trace(old).await.unwrap().is_none());
    assert!(st.get_trace(spanning).await.unwrap().is_some());
    assert!(st.get_trace(young).await.unwrap().is_some());

    let mut f = filter("api");
    f.limit = 100;
    assert_eq!(
        ids(&st.list_traces(&f).await.unwrap()),
        vec![young, spanning]
    );
    assert!(st.list_traces(&filter("legacy")).await.unwrap().is_empty());
    let all = FilterCriteria {
        limit: 100,
        ..Default::default()
    };
    assert_eq!(
        ids(&st.list_traces(&all).await.unwrap()),
        vec![young, spanning]
    );
    assert_eq!(st.services().await.unwrap(), vec!["api"]);
    assert!(st.operations("legacy", None).await.unwrap().is_empty());
    assert!(st.dependencies(0, 0).await.unwrap().is_empty());

    // Pruning again removes nothing; a later cut removes the rest.
    assert_eq!(
        st.prune_traces(T0 + 1_000 * MS).await.unwrap(),
        PruneStats::default()
    );
    let stats = st.prune_traces(u64::MAX).await.unwrap();
    assert_eq!(
        stats,
        PruneStats {
            traces: 2,
            spans: 2
        }
    );
    assert!(st.list_traces(&all).await.unwrap().is_empty());
    assert!(st.services().await.unwrap().is_empty());
}

pub async fn movable_traces_are_the_ended_ones_and_leave_when_moved(st: Arc<dyn Storage>) {
    let (old, older, spanning, young) = (trace_id(1), trace_id(2), trace_id(3), trace_id(4));
    store(
        &st,
        old,
        vec![
            span(old, 1, None, "legacy", "GET", 100, 10),
            span(old, 2, Some(1), "api", "call", 101, 5),
        ],
    )
    .await;
    store(&st, older, vec![span(older, 1, None, "api", "GET", 0, 10)]).await;
    store(
        &st,
        spanning,
        vec![span(spanning, 1, None, "api", "GET", 5, 10_000)],
    )
    .await;
    store(
        &st,
        young,
        vec![span(young, 1, None, "api", "GET", 20_000, 10)],
    )
    .await;
    let cut = T0 + 1_000 * MS;
    let movable = st.movable(cut, 10).await.unwrap();
    let got: Vec<TraceId> = movable
        .iter()
        .map(|m| TraceId::from_slice(&m.trace.trace_id).unwrap())
        .collect();
    // Oldest first; the trace ending after the cut and the young one stay.
    assert_eq!(got, vec![older, old]);
    assert_eq!(movable[1].trace.spans.len(), 2);
    assert_eq!(st.movable(cut, 1).await.unwrap().len(), 1);
    let moved: Vec<Moved> = movable
        .iter()
        .map(|m| Moved {
            trace_id: TraceId::from_slice(&m.trace.trace_id).unwrap(),
            version: m.version,
        })
        .collect();
    assert_eq!(
        st.remove_moved(&moved).await.unwrap(),
        PruneStats {
            traces: 2,
            spans: 3
        }
    );
    assert!(st.get_trace(old).await.unwrap().is_none());
    assert!(st.get_trace(older).await.unwrap().is_none());
    assert!(st.list_traces(&filter("legacy")).await.unwrap().is_empty());
    let mut f = filter("api");
    f.limit = 100;
    assert_eq!(
        ids(&st.list_traces(&f).await.unwrap()),
        vec![young, spanning]
    );
    assert!(st.movable(cut, 10).await.unwrap().is_empty());
    // Removing again changes nothing.
    assert_eq!(
        st.remove_moved(&moved).await.unwrap(),
        PruneStats::default()
    );
}

pub async fn a_trace_that_grew_after_it_was_read_is_not_removed(st: Arc<dyn Storage>) {
    let t = trace_id(5);
    store(&st, t, vec![span(t, 1, None, "api", "GET", 0, 10)]).await;
    let read = st.movable(T0 + 1_000 * MS, 10).await.unwrap();
    assert_eq!(read.len(), 1);
    // A late span arrives between the read and the removal.
    store(&st, t, vec![span(t, 2, Some(1), "db", "SELECT", 1, 2)]).await;
    let moved = [Moved {
        trace_id: t,
        version: read[0].version,
    }];
    assert_eq!(
        st.remove_moved(&moved).await.unwrap(),
        PruneStats::default()
    );
    assert_eq!(st.get_trace(t).await.unwrap().unwrap().spans.len(), 2);
    // Read again, it goes.
    let again = st.movable(T0 + 1_000 * MS, 10).await.unwrap();
    let moved = [Moved {
        trace_id: t,
        version: again[0].version,
    }];
    assert_eq!(
        st.remove_moved(&moved).await.unwrap(),
        PruneStats {
            traces: 1,
            spans: 2
        }
    );
}

pub async fn a_lease_has_one_holder_until_it_expires(st: Arc<dyn Storage>) {
    use std::time::{Duration, Instant};
    let long = Duration::from_secs(60);
    assert!(st.lease("mover", "a", long).await.unwrap());
    assert!(!st.lease("mover", "b", long).await.unwrap());
    assert!(
        st.lease("mover", "a", long).await.unwrap(),
        "the holder extends it"
    );
    assert!(
        st.lease("other", "b", long).await.unwrap(),
        "leases are per name"
    );
    // A short lease lapses and another holder takes it.
    assert!(
        st.lease("short", "a", Duration::from_millis(50))
            .await
            .unwrap()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !st.lease("short", "b", long).await.unwrap() {
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!st.lease("short", "a", long).await.unwrap());
}

const SEC: u64 = 1_000_000_000;

fn part(width: u64, start: u64, owner: &str, through: u64, bytes: &[u8]) -> RollupPart {
    RollupPart {
        width_nanos: width,
        start_unix_nanos: start,
        owner: owner.to_owned(),
        through,
        bytes: bytes.to_vec(),
    }
}

pub async fn rollup_parts_are_kept_per_bucket_and_owner(st: Arc<dyn Storage>) {
    let w = 10 * SEC;
    // Binary content, a large part, and owners written out of order.
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let parts = vec![
        part(w, T0 + w, "b", 7, &[0, 1, 0, 255]),
        part(w, T0, "b", 3, &big),
        part(w, T0, "a", 5, b"a0"),
        part(w, T0 + 2 * w, "a", 9, b"a2"),
        part(6 * w, T0, "a", 5, b"minute"),
    ];
    st.put_rollups(&parts).await.unwrap();
    let got = st.rollups(w, T0, T0 + 2 * w).await.unwrap();
    let want = vec![parts[2].clone(), parts[1].clone(), parts[0].clone()];
    assert_eq!(
        got, want,
        "sorted by start, then owner; the window's end excluded"
    );
    assert_eq!(
        st.rollups(6 * w, T0, T0 + 1).await.unwrap(),
        vec![parts[4].clone()]
    );
    assert!(
        st.rollups(w, T0 + 3 * w, T0 + 9 * w)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        st.rollups(w, T0 + w, T0 + w).await.unwrap().is_empty(),
        "an empty window"
    );
    assert!(
        st.rollups(w, T0 + 1, T0 + w).await.unwrap().is_empty(),
        "starts only"
    );
    assert!(
        st.rollups(2 * w, 0, u64::MAX).await.unwrap().is_empty(),
        "another width"
    );

    // A part replaces its owner's part of the bucket, not the others'.
    let newer = part(w, T0, "a", 11, b"a0, later");
    st.put_rollups(std::slice::from_ref(&newer)).await.unwrap();
    let got = st.rollups(w, T0, T0 + w).await.unwrap();
    assert_eq!(got, vec![newer, parts[1].clone()]);
    st.put_rollups(&[]).await.unwrap();
}

pub async fn rollup_parts_of_ended_buckets_are_pruned(st: Arc<dyn Storage>) {
    let w = 10 * SEC;
    let mut parts = Vec::new();
    for i in 0..4 {
        parts.push(part(w, T0 + i * w, "a", i, b"x"));
        parts.push(part(w, T0 + i * w, "b", i, b"y"));
    }
    parts.push(part(6 * w, T0, "a", 1, b"z"));
    st.put_rollups(&parts).await.unwrap();
    // Ended by T0 + 2w: the 10 s buckets at T0 and T0 + w (two owners each).
    assert_eq!(st.prune_rollups(T0 + 2 * w).await.unwrap(), 4);
    let left = st.rollups(w, 0, u64::MAX).await.unwrap();
    assert_eq!(left, parts[4..8].to_vec());
    assert_eq!(st.rollups(6 * w, 0, u64::MAX).await.unwrap().len(), 1);
    assert_eq!(
        st.prune_rollups(T0 + 2 * w).await.unwrap(),
        0,
        "nothing twice"
    );
    // One nanosecond short of the minute bucket's end keeps it.
    assert_eq!(st.prune_rollups(T0 + 6 * w - 1).await.unwrap(), 4);
    assert_eq!(st.rollups(6 * w, 0, u64::MAX).await.unwrap().len(), 1);
    assert_eq!(st.prune_rollups(T0 + 6 * w).await.unwrap(), 1);
    assert!(st.rollups(6 * w, 0, u64::MAX).await.unwrap().is_empty());
}

pub async fn invalid_rollup_parts_are_rejected(st: Arc<dyn Storage>) {
    let w = 10 * SEC;
    let good = part(w, T0, "a", 1, b"ok");
    let cases = [
        (part(0, T0, "a", 1, b"x"), "width_nanos"),
        (part(w, T0, "", 1, b"x"), "owner"),
        (part(w, T0, &"o".repeat(129), 1, b"x"), "owner"),
    ];
    for (bad, field) in cases {
        let err = st.put_rollups(&[good.clone(), bad]).await.unwrap_err();
        assert!(
            matches!(&err, StorageError::InvalidRollup(m) if m.contains(field)),
            "{err:?} should name {field}"
        );
    }
    assert!(
        st.rollups(w, 0, u64::MAX).await.unwrap().is_empty(),
        "nothing of a rejected batch is stored"
    );
}
