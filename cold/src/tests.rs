#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use clew_proto::v1::{
    AnyValue, ArrayValue, ClockEntry, Event, FilterCriteria, KeyValue, Link, Span, SpanKind,
    Status, VectorClock, any_value,
};
use clew_storage::filter;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

use crate::block::{self, BlockOptions};
use crate::read::ColdStore;

const SEC: u64 = 1_000_000_000;
const BASE: u64 = 1_750_000_000 * SEC;

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
    }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

/// A span with every field set, most with values JSON finds awkward.
fn rich_span(trace: [u8; 16], n: u8) -> Span {
    use any_value::Value as V;
    Span {
        trace_id: trace.to_vec(),
        span_id: vec![n, 1, 2, 3, 4, 5, 6, 7],
        parent_span_id: if n == 1 {
            Vec::new()
        } else {
            vec![1, 1, 2, 3, 4, 5, 6, 7]
        },
        name: format!("op-{n} \u{e9}\u{1f600}"),
        service: format!("svc-{}", n % 3),
        kind: i32::from(n % 6),
        start_time_unix_nano: BASE + u64::from(n) * 1000,
        end_time_unix_nano: BASE + u64::from(n) * 1000 + 777,
        attributes: vec![
            kv("str", s("a \"quoted\" \n line")),
            kv("int", V::IntValue(i64::MIN)),
            kv("big", V::IntValue(i64::MAX)),
            kv("dbl", V::DoubleValue(0.1)),
            kv("nan", V::DoubleValue(f64::NAN)),
            kv("inf", V::DoubleValue(f64::NEG_INFINITY)),
            kv("bool", V::BoolValue(false)),
            kv("bytes", V::BytesValue(vec![0, 255, 7])),
            kv(
                "arr",
                V::ArrayValue(ArrayValue {
                    values: vec![
                        AnyValue {
                            value: Some(s("x")),
                        },
                        AnyValue { value: None },
                    ],
                }),
            ),
            KeyValue {
                key: "no-value".into(),
                value: None,
            },
            kv("str", s("duplicate key kept")),
        ],
        events: vec![Event {
            time_unix_nano: u64::MAX,
            name: "ev".into(),
            attributes: vec![kv("e", V::IntValue(-1))],
        }],
        links: vec![Link {
            trace_id: vec![9; 16],
            span_id: vec![8; 8],
            trace_state: "k=v".into(),
            attributes: vec![kv("l", s("x"))],
        }],
        status: match n % 3 {
            0 => None,
            1 => Some(Status::default()),
            _ => Some(Status {
                code: 2,
                message: "boom".into(),
            }),
        },
        clock_start: match n % 2 {
            0 => None,
            _ => Some(VectorClock {
                entries: vec![ClockEntry {
                    node: "a".into(),
                    counter: u64::MAX,
                }],
            }),
        },
        clock_end: Some(VectorClock::default()),
        trace_state: "ts".into(),
        resource: vec![kv("host.name", s("h1"))],
        node: "node-1".into(),
    }
}

fn dir_store() -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir().unwrap();
    let fs = LocalFileSystem::new_with_prefix(dir.path())
        .unwrap()
        .with_automatic_cleanup(true);
    (dir, Arc::new(fs))
}

fn sorted(mut spans: Vec<Span>) -> Vec<Span> {
    filter::sort_spans(&mut spans);
    spans
}

/// NaN != NaN: compare encodings.
fn same(a: &[Span], b: &[Span]) -> bool {
    use prost::Message as _;
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.encode_to_vec() == y.encode_to_vec())
}

#[tokio::test]
async fn a_block_gives_back_every_field_of_every_span() {
    let (_dir, store) = dir_store();
    let trace = [7; 16];
    let spans: Vec<Span> = (1..=6).map(|n| rich_span(trace, n)).collect();
    let meta = block::write(
        &store,
        &Path::default(),
        spans.clone(),
        vec![],
        &BlockOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!((meta.traces, meta.spans), (1, 6));
    assert!(meta.bytes > 0);
    let cold = ColdStore::new(store, Path::default());
    cold.refresh().await.unwrap();
    let back = sorted(cold.trace_spans(&trace).await.unwrap());
    assert!(same(&back, &sorted(spans)), "{back:#?}");
    assert!(cold.trace_spans(&[8; 16]).await.unwrap().is_empty());
}

/// `traces` traces of 1..=5 spans each over `services` services and an
/// hour, some failing, with a `customer` tag.
fn many(traces: u32, services: u32) -> Vec<Span> {
    let mut out = Vec::new();
    for t in 0..traces {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&t.wrapping_mul(2_654_435_761).to_be_bytes());
        id[15] = 1;
        let start = BASE + u64::from(t) * 3600 * SEC / u64::from(traces);
        for n in 0..=(t % 5) {
            let svc = (t + n) % services;
            out.push(Span {
                trace_id: id.to_vec(),
                span_id: vec![n as u8 + 1, 0, 0, 0, 0, 0, 0, 1],
                parent_span_id: if n == 0 {
                    Vec::new()
                } else {
                    vec![n as u8, 0, 0, 0, 0, 0, 0, 1]
                },
                name: format!("op-{}", n % 2),
                service: format!("svc-{svc}"),
                kind: SpanKind::Server as i32,
                start_time_unix_nano: start + u64::from(n) * 1000,
                end_time_unix_nano: start + u64::from(n) * 1000 + u64::from(t % 7) * 1_000_000,
                status: (t % 11 == 0 && n == 0).then(|| Status {
                    code: 2,
                    message: String::new(),
                }),
                attributes: vec![kv("customer", s(&format!("c{}", t % 4)))],
                ..Span::default()
            });
        }
    }
    out
}

/// The cold tier of `spans` in `blocks` blocks, with what each holds.
async fn blocks_of(
    spans: &[Span],
    blocks: usize,
) -> (tempfile::TempDir, ColdStore, HashMap<String, Vec<Span>>) {
    let (dir, store) = dir_store();
    let options = BlockOptions {
        row_group_rows: 64,
        ..BlockOptions::default()
    };
    let mut held = HashMap::new();
    for chunk in spans.chunks(spans.len().div_ceil(blocks)) {
        let meta = block::write(&store, &Path::default(), chunk.to_vec(), vec![], &options)
            .await
            .unwrap();
        held.insert(meta.id, chunk.to_vec());
    }
    let cold = ColdStore::new(store, Path::default());
    assert_eq!(cold.refresh().await.unwrap().len(), blocks);
    (dir, cold, held)
}

async fn store_with(spans: &[Span], blocks: usize) -> (tempfile::TempDir, ColdStore) {
    let (dir, cold, _) = blocks_of(spans, blocks).await;
    (dir, cold)
}

fn by_trace(spans: &[Span]) -> HashMap<[u8; 16], Vec<Span>> {
    let mut m: HashMap<[u8; 16], Vec<Span>> = HashMap::new();
    for s in spans {
        m.entry(s.trace_id.as_slice().try_into().unwrap())
            .or_default()
            .push(s.clone());
    }
    m
}

#[tokio::test]
async fn every_trace_is_found_by_id_across_blocks_and_row_groups() {
    let spans = many(600, 4);
    let (_dir, cold) = store_with(&spans, 3).await;
    for (id, want) in by_trace(&spans) {
        let got = sorted(cold.trace_spans(&id).await.unwrap());
        assert!(same(&got, &sorted(want)), "trace {id:?}");
    }
    let mut absent = [0u8; 16];
    absent[0] = 0xff;
    assert!(cold.trace_spans(&absent).await.unwrap().is_empty());
}

/// What the filter finds, computed from the raw spans.
fn expected(spans: &[Span], f: &FilterCriteria) -> HashMap<[u8; 16], u64> {
    by_trace(spans)
        .into_iter()
        .filter_map(|(id, t)| Some((id, filter::best_match(t.iter(), f)?)))
        .collect()
}

#[tokio::test]
async fn searches_find_what_the_raw_spans_say() {
    let spans = many(500, 4);
    let (_dir, cold) = store_with(&spans, 4).await;
    let mid = BASE + 1800 * SEC;
    let filters = [
        FilterCriteria::default(),
        FilterCriteria {
            service: "svc-1".into(),
            ..Default::default()
        },
        FilterCriteria {
            service: "svc-2".into(),
            operation: "op-1".into(),
            ..Default::default()
        },
        FilterCriteria {
            tags: [("customer".to_owned(), "c3".to_owned())].into(),
            ..Default::default()
        },
        FilterCriteria {
            min_duration_nanos: 3_000_000,
            max_duration_nanos: 5_000_000,
            ..Default::default()
        },
        FilterCriteria {
            start_time_min_unix_nano: mid,
            start_time_max_unix_nano: mid + 600 * SEC,
            ..Default::default()
        },
        FilterCriteria {
            errors_only: true,
            service: "svc-0".into(),
            ..Default::default()
        },
        FilterCriteria {
            service: "nobody".into(),
            ..Default::default()
        },
    ];
    for f in &filters {
        let want = expected(&spans, f);
        assert_eq!(cold.search(f).await.unwrap(), want, "{f:?}");
        // The newest 20: the top of what the raw spans say.
        let top = cold.search_top(f, 20).await.unwrap();
        let mut want_top: Vec<u64> = want.values().copied().collect();
        want_top.sort_unstable_by(|a, b| b.cmp(a));
        want_top.truncate(20);
        let mut got_top: Vec<u64> = top.values().copied().collect();
        got_top.sort_unstable_by(|a, b| b.cmp(a));
        got_top.truncate(20);
        assert_eq!(got_top, want_top, "{f:?}");
        assert!(top.iter().all(|(id, start)| want.get(id) == Some(start)));
    }
}

#[tokio::test]
async fn services_operations_and_dependencies_come_from_the_blocks() {
    let spans = many(200, 3);
    let (_dir, cold) = store_with(&spans, 1).await;
    assert_eq!(cold.services(), ["svc-0", "svc-1", "svc-2"]);
    assert_eq!(
        cold.operations("svc-1", None),
        [
            ("op-0".to_owned(), SpanKind::Server),
            ("op-1".to_owned(), SpanKind::Server)
        ]
    );
    assert!(cold.operations("svc-1", Some(SpanKind::Client)).is_empty());
    let mut want = filter::DependencyCounter::default();
    for trace in by_trace(&spans).values() {
        for e in filter::edges(trace.iter()) {
            want.add(&e.parent, &e.child, e.error);
        }
    }
    let found = cold.dependencies(0, 0).await.unwrap();
    assert_eq!(found.calls.finish(), want.finish());
    assert!(found.dangling.is_empty());
}

#[tokio::test]
async fn an_unreadable_block_is_skipped_and_the_rest_answers() {
    let spans = many(300, 3);
    let (dir, cold, held) = blocks_of(&spans, 3).await;
    let mut ids: Vec<&String> = held.keys().collect();
    ids.sort();
    let (truncated, garbled, good) = (ids[0], ids[1], ids[2]);
    // Truncate one block's data, and garble another's metadata.
    let data = dir
        .path()
        .join("blocks")
        .join(truncated)
        .join("data.parquet");
    let len = std::fs::metadata(&data).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    file.set_len(len / 2).unwrap();
    std::fs::write(
        dir.path().join("blocks").join(garbled).join("meta.json"),
        "{",
    )
    .unwrap();
    let fresh = ColdStore::new(Arc::clone(cold.store()), Path::default());
    assert_eq!(fresh.refresh().await.unwrap().len(), 2);
    assert_eq!(fresh.skipped_blocks(), 1, "the garbled meta.json");
    let found = fresh.search(&FilterCriteria::default()).await.unwrap();
    assert_eq!(fresh.skipped_blocks(), 2, "and the truncated block");
    let want: HashSet<[u8; 16]> = by_trace(&held[good]).into_keys().collect();
    assert_eq!(found.into_keys().collect::<HashSet<_>>(), want);
    // A trace lookup still answers from the good block.
    let (id, spans) = by_trace(&held[good]).into_iter().next().unwrap();
    let got = fresh.trace_spans(&id).await.unwrap();
    assert!(got.len() >= spans.len());
}

fn listed_dirs(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("blocks")).map_or(0, |d| d.count())
}

#[tokio::test]
async fn compaction_merges_small_blocks_and_the_sweep_removes_them_after_the_grace() {
    use crate::maintain::MaintainOptions;
    use std::time::Duration;
    let spans = many(400, 3);
    let (dir, cold) = store_with(&spans, 4).await;
    let before = cold.search(&FilterCriteria::default()).await.unwrap();
    let options = MaintainOptions {
        compact_below_bytes: u64::MAX,
        ..MaintainOptions::default()
    };
    let merged = cold.compact(&options).await.unwrap().unwrap();
    assert_eq!(merged.replaces.len(), 4);
    assert_eq!(merged.spans as usize, spans.len());
    // Listed: only the merged block; the sources stay on disk for readers
    // of the old listing until the grace has passed.
    assert_eq!(cold.blocks().keys().collect::<Vec<_>>(), [&merged.id]);
    assert_eq!(listed_dirs(dir.path()), 5);
    assert_eq!(
        cold.search(&FilterCriteria::default()).await.unwrap(),
        before
    );
    for (id, want) in by_trace(&spans) {
        let got = sorted(cold.trace_spans(&id).await.unwrap());
        assert!(same(&got, &sorted(want)));
    }
    let now = merged.created_unix_nano;
    assert_eq!(cold.sweep(now, Duration::from_secs(60)).await.unwrap(), 0);
    assert_eq!(
        cold.sweep(now + 61 * SEC, Duration::from_secs(60))
            .await
            .unwrap(),
        4
    );
    assert_eq!(listed_dirs(dir.path()), 1);
    // One block is not compacted with itself.
    assert_eq!(cold.compact(&options).await.unwrap(), None);
}

#[tokio::test]
async fn a_trace_moved_twice_is_read_and_compacted_once() {
    use crate::maintain::MaintainOptions;
    let spans = many(50, 2);
    let (_dir, cold) = store_with(&spans, 1).await;
    // The same spans again (a crash between the block and the hot delete).
    block::write(
        cold.store(),
        &Path::default(),
        spans.clone(),
        vec![],
        &BlockOptions::default(),
    )
    .await
    .unwrap();
    cold.refresh().await.unwrap();
    for (id, want) in by_trace(&spans) {
        assert!(same(
            &sorted(cold.trace_spans(&id).await.unwrap()),
            &sorted(want)
        ));
    }
    let options = MaintainOptions {
        compact_below_bytes: u64::MAX,
        ..MaintainOptions::default()
    };
    let merged = cold.compact(&options).await.unwrap().unwrap();
    assert_eq!(merged.spans as usize, spans.len());
}

#[tokio::test]
async fn retention_deletes_old_blocks_and_the_sweep_removes_partial_ones() {
    use std::time::Duration;
    let spans = many(300, 2);
    let (dir, cold) = store_with(&spans, 3).await;
    let mut metas: Vec<_> = cold.blocks().values().map(|b| b.meta.clone()).collect();
    metas.sort_by_key(|m| m.max_end_unix_nano);
    // Everything of the oldest block ended before the cutoff; the others
    // have spans after it.
    let cutoff = metas[0].max_end_unix_nano + 1;
    assert!(metas[1].max_end_unix_nano >= cutoff);
    assert_eq!(cold.expire(cutoff).await.unwrap(), 1);
    let left: Vec<_> = cold.blocks().keys().cloned().collect();
    assert_eq!(left.len(), 2);
    assert!(!left.contains(&metas[0].id));
    // A block whose writer died before meta.json: never listed, swept.
    let partial = &metas[1].id;
    std::fs::remove_file(dir.path().join("blocks").join(partial).join("meta.json")).unwrap();
    assert_eq!(cold.refresh().await.unwrap().len(), 1);
    let far = u64::MAX / 2;
    assert_eq!(cold.sweep(far, Duration::from_secs(1)).await.unwrap(), 1);
    assert!(
        !dir.path()
            .join("blocks")
            .join(partial)
            .join("data.parquet")
            .exists()
    );
}

#[test]
fn the_metrics_match_the_catalogue() {
    let m = crate::metrics::ColdMetrics::new();
    m.read_seconds.with_label_values(&["trace"]);
    clew_runtime::metrics::catalogue_check("collector cold tier", m.registry());
}

#[tokio::test]
async fn tag_searches_match_typed_and_escaped_values() {
    let (_dir, store) = dir_store();
    let trace = [5; 16];
    let spans: Vec<Span> = (1..=3).map(|n| rich_span(trace, n)).collect();
    block::write(
        &store,
        &Path::default(),
        spans,
        vec![],
        &BlockOptions::default(),
    )
    .await
    .unwrap();
    let cold = ColdStore::new(store, Path::default());
    cold.refresh().await.unwrap();
    let min = i64::MIN.to_string();
    for (k, v, found) in [
        ("dbl", "0.1", true),
        ("str", "a \"quoted\" \n line", true),
        ("str", "duplicate key kept", true),
        ("bool", "false", true),
        ("int", min.as_str(), true),
        ("bytes", "00ff07", true),
        ("host.name", "h1", true),
        ("host.name", "h2", false),
        ("absent", "x", false),
    ] {
        let f = FilterCriteria {
            tags: [(k.to_owned(), v.to_owned())].into(),
            ..Default::default()
        };
        assert_eq!(!cold.search(&f).await.unwrap().is_empty(), found, "{k}={v}");
    }
}

#[tokio::test]
async fn compaction_goes_on_past_a_block_that_is_full() {
    use crate::maintain::MaintainOptions;
    let spans = many(400, 3);
    let (_dir, cold) = store_with(&spans, 4).await;
    let per_block = cold.blocks().values().map(|b| b.meta.spans).max().unwrap();
    // Room for two blocks in one: the first merge fills a block, which
    // the next pass leaves alone and merges the other two.
    let options = MaintainOptions {
        compact_below_bytes: u64::MAX,
        compact_max_spans: 2 * per_block,
        ..MaintainOptions::default()
    };
    let mut merges = 0;
    while cold.compact(&options).await.unwrap().is_some() {
        merges += 1;
        assert!(merges <= 2, "compaction does not settle");
    }
    assert_eq!(merges, 2);
    assert_eq!(cold.blocks().len(), 2);
    assert_eq!(
        cold.search(&FilterCriteria::default()).await.unwrap(),
        expected(&spans, &FilterCriteria::default())
    );
}
