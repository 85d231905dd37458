use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use clew_analysis::rollup::{Bucket, RedKey};
use clew_proto::v1::{ExportRequest, Span, Status, status};

use super::*;
use crate::storage::memory::MemoryStorage;
use crate::wal::tests::fast_config;

const SEC: u64 = 1_000_000_000;
const W: u64 = 10 * SEC;

/// A span of `service`/`op` starting `ago` before `base`; every seventh an
/// error.
fn span(n: u64, base: u64, ago: u64) -> Span {
    let mut trace_id = [0u8; 16];
    trace_id[8..].copy_from_slice(&(n / 5 + 1).to_be_bytes());
    let start = base - ago;
    Span {
        trace_id: trace_id.to_vec(),
        span_id: (n + 1).to_be_bytes().to_vec(),
        name: format!("op-{}", n % 3),
        service: format!("svc-{}", n % 2),
        kind: (n % 3) as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + (n % 11 + 1) * 1_000_000,
        status: n.is_multiple_of(7).then(|| Status {
            code: status::Code::Error as i32,
            message: String::new(),
        }),
        ..Span::default()
    }
}

/// Ten batches of 40 spans spread over the last 50 seconds.
fn batches(base: u64) -> Vec<ExportRequest> {
    (0..10u64)
        .map(|b| ExportRequest {
            spans: (0..40)
                .map(|i| span(b * 40 + i, base, (b * 40 + i) % 50 * SEC))
                .collect(),
        })
        .collect()
}

type Counts = BTreeMap<(u64, String, String, i32), (u64, u64)>;

/// (bucket start, service, op, kind) → (requests, errors), straight from the spans.
fn expected(batches: &[ExportRequest]) -> Counts {
    let mut out = Counts::new();
    for s in batches.iter().flat_map(|b| &b.spans) {
        let key = (
            align_down(s.start_time_unix_nano, W),
            s.service.clone(),
            s.name.clone(),
            s.kind,
        );
        let e = out.entry(key).or_default();
        e.0 += 1;
        e.1 += u64::from(filter::is_error(s));
    }
    out
}

/// The same from every owner's 10 s parts in storage, merged.
async fn stored(storage: &dyn Storage) -> Counts {
    let mut merged: BTreeMap<u64, Bucket> = BTreeMap::new();
    for p in storage.rollups(W, 0, u64::MAX).await.unwrap() {
        let b = Bucket::decode(&p.bytes).unwrap();
        match merged.get_mut(&p.start_unix_nanos) {
            Some(m) => m.merge(&b).unwrap(),
            None => {
                merged.insert(p.start_unix_nanos, b);
            }
        }
    }
    let mut out = Counts::new();
    for (start, b) in &merged {
        for (
            RedKey {
                service,
                operation,
                kind,
            },
            stats,
        ) in b.red()
        {
            let key = (*start, service.to_owned(), operation.to_owned(), kind);
            out.insert(key, (stats.requests(), stats.errors()));
        }
    }
    out
}

/// What a start-up does with the records `Wal::open` returned: the parts
/// earlier runs wrote are read, the records counted, one flush. Returns
/// its `through`.
async fn replay_and_flush(r: &Rollups, storage: &dyn Storage, replay: &[WalRecord]) -> u64 {
    r.prepare_replay(storage, replay).await.unwrap();
    for rec in replay {
        r.record(rec.seq, &rec.batch.spans);
    }
    r.flush(storage).await.unwrap()
}

#[tokio::test]
async fn every_span_is_counted_once_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new(1000));
    let batches = batches(clew_model::now_unix_nanos());
    let (wal, _) = Wal::open(dir.path(), fast_config()).unwrap();
    let r = Rollups::new(wal.clone(), 7, RollupConfig::default());
    let mut acks = Vec::new();
    for b in &batches[..7] {
        acks.push(wal.append(b).await.unwrap());
    }
    let mut acks = acks.into_iter();
    for b in &batches[..5] {
        r.record_appended(acks.next().unwrap(), &b.spans);
    }
    // Batch 6 is handed on before batch 5: it waits aside.
    let (a5, a6) = (acks.next().unwrap(), acks.next().unwrap());
    r.record_appended(a6, &batches[6].spans);
    assert_eq!(r.flush(storage.as_ref()).await.unwrap(), 5);
    let spans = || r.stats().spans.load(Ordering::Relaxed);
    assert_eq!(spans(), 5 * 40, "batch 6 is not counted yet");
    r.record_appended(a5, &batches[5].spans);
    assert_eq!(
        spans(),
        7 * 40,
        "batch 6 is counted as soon as 5 is handed on"
    );
    assert_eq!(r.flush(storage.as_ref()).await.unwrap(), 7);
    // Three more counted, never written: then the process dies.
    for b in &batches[7..] {
        r.record_appended(wal.append(b).await.unwrap(), &b.spans);
    }
    drop((r, wal));

    let (wal, replay) = Wal::open(dir.path(), fast_config()).unwrap();
    assert_eq!(replay.len(), 10, "nothing was released");
    let again = Rollups::new(wal, 7, RollupConfig::default());
    assert_ne!(again.owner(), "", "a run has an owner");
    assert_eq!(
        replay_and_flush(&again, storage.as_ref(), &replay).await,
        10
    );
    assert_eq!(stored(storage.as_ref()).await, expected(&batches));
    assert_eq!(again.stats().replay_skipped.load(Ordering::Relaxed), 7 * 40);
    assert_eq!(again.stats().spans.load(Ordering::Relaxed), 3 * 40);
}

#[tokio::test]
async fn another_incarnation_counts_everything_it_replays() {
    // A WAL directory lost and started afresh shares nothing with the old
    // one's parts: nothing of its own is skipped.
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new(1000));
    let batches = batches(clew_model::now_unix_nanos());
    let (wal, _) = Wal::open(dir.path(), fast_config()).unwrap();
    let old = Rollups::new(wal.clone(), 1, RollupConfig::default());
    for b in &batches {
        old.record_appended(wal.append(b).await.unwrap(), &b.spans);
    }
    old.flush(storage.as_ref()).await.unwrap();
    drop((old, wal));
    let (wal, replay) = Wal::open(dir.path(), fast_config()).unwrap();
    let other = Rollups::new(wal, 2, RollupConfig::default());
    replay_and_flush(&other, storage.as_ref(), &replay).await;
    let twice: Counts = expected(&batches)
        .into_iter()
        .map(|(k, (n, e))| (k, (2 * n, 2 * e)))
        .collect();
    assert_eq!(stored(storage.as_ref()).await, twice);
}

#[tokio::test]
async fn the_wal_keeps_what_the_rollups_have_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new(1000));
    let (wal, _) = Wal::open(dir.path(), fast_config()).unwrap();
    wal.set_floor(Some(wal.checkpoint()));
    let r = Rollups::new(wal.clone(), 3, RollupConfig::default());
    for b in &batches(clew_model::now_unix_nanos())[..3] {
        let seq = r.record_appended(wal.append(b).await.unwrap(), &b.spans);
        wal.release(seq); // stored by the assembler
    }
    assert_eq!(wal.checkpoint(), 0, "the floor holds the records");
    let through = r.flush(storage.as_ref()).await.unwrap();
    wal.set_floor(Some(through));
    assert_eq!(wal.checkpoint(), 3);
}

#[tokio::test]
async fn a_late_span_is_added_to_its_written_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new(1000));
    let (wal, _) = Wal::open(dir.path(), fast_config()).unwrap();
    let config = RollupConfig {
        keep: Duration::ZERO,
        ..RollupConfig::default()
    };
    let r = Rollups::new(wal.clone(), 4, config);
    let hour_ago = clew_model::now_unix_nanos() - 3_600 * SEC;
    let first = ExportRequest {
        spans: vec![span(0, hour_ago, 0)],
    };
    r.record_appended(wal.append(&first).await.unwrap(), &first.spans);
    r.flush(storage.as_ref()).await.unwrap();
    let late = ExportRequest {
        spans: vec![span(2, hour_ago, 0)],
    };
    let seq = r.record_appended(wal.append(&late).await.unwrap(), &late.spans);
    assert_eq!(seq, 1);
    assert_eq!(r.flush(storage.as_ref()).await.unwrap(), 2);
    let all = [first, late];
    assert_eq!(stored(storage.as_ref()).await, expected(&all));
    // One part per tier, read back and written again.
    assert_eq!(r.stats().reloaded.load(Ordering::Relaxed), 4);
    let parts = storage.rollups(W, 0, u64::MAX).await.unwrap();
    assert_eq!(parts.len(), 1, "still one part of this owner: {parts:?}");
}

#[tokio::test]
async fn a_replayed_span_skips_only_the_tiers_an_earlier_run_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new(1000));
    let batches = batches(clew_model::now_unix_nanos());
    let (wal, _) = Wal::open(dir.path(), fast_config()).unwrap();
    for b in &batches {
        let _ = wal.append(b).await.unwrap().into_held_seq();
    }
    drop(wal);
    // An earlier run of this WAL wrote the minute tier (only) past them all.
    let minute = TIER_WIDTHS_NANOS[1];
    let starts: HashSet<u64> = batches
        .iter()
        .flat_map(|b| &b.spans)
        .map(|s| align_down(s.start_time_unix_nano, minute))
        .collect();
    let earlier: Vec<RollupPart> = starts
        .iter()
        .map(|&start| {
            let mut bytes = Vec::new();
            Bucket::new(start, minute).unwrap().encode(&mut bytes);
            RollupPart {
                width_nanos: minute,
                start_unix_nanos: start,
                owner: format!("{:016x}.1", 7),
                through: 100,
                bytes,
            }
        })
        .collect();
    storage.put_rollups(&earlier).await.unwrap();
    let (wal, replay) = Wal::open(dir.path(), fast_config()).unwrap();
    let r = Rollups::new(wal, 7, RollupConfig::default());
    replay_and_flush(&r, storage.as_ref(), &replay).await;
    assert_eq!(stored(storage.as_ref()).await, expected(&batches));
    let mine = |w| {
        let storage = Arc::clone(&storage);
        let owner = r.owner().to_owned();
        async move {
            let parts = storage.rollups(w, 0, u64::MAX).await.unwrap();
            parts.into_iter().filter(|p| p.owner == owner).count()
        }
    };
    assert_eq!(mine(minute).await, 0, "the minute tier was counted before");
    assert!(mine(TIER_WIDTHS_NANOS[2]).await > 0);
    assert_eq!(r.stats().spans.load(Ordering::Relaxed), 400);
}

type Edges = BTreeMap<(u64, String, String), (u64, u64)>;

/// Traces of four to seven spans over four services; a span's parent is
/// an earlier span of its trace. Every fifth span an error.
fn call_traces(n: u64, base: u64) -> Vec<Span> {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |m: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % m
    };
    let mut spans: Vec<Span> = Vec::new();
    for t in 0..n {
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&(t + 1).to_be_bytes());
        let first = spans.len();
        for i in 0..4 + next(4) {
            let parent: Vec<u8> = match i {
                0 => Vec::new(),
                _ => spans[first + next(i) as usize].span_id.clone(),
            };
            let start = base - next(40) * SEC;
            let id = (spans.len() as u64 + 1).to_be_bytes().to_vec();
            spans.push(Span {
                trace_id: trace_id.to_vec(),
                parent_span_id: parent,
                span_id: id,
                name: "op".into(),
                service: format!("svc-{}", next(4)),
                start_time_unix_nano: start,
                end_time_unix_nano: start + (1 + next(50)) * 1_000_000,
                status: next(5).eq(&0).then(|| Status {
                    code: status::Code::Error as i32,
                    message: String::new(),
                }),
                ..Span::default()
            });
        }
    }
    spans
}

/// (bucket start, parent service, child service) → (calls, errors),
/// straight from the spans: a span whose parent is of another service.
fn expected_edges(spans: &[Span]) -> Edges {
    let by_id: BTreeMap<(&[u8], &[u8]), &Span> = spans
        .iter()
        .map(|s| ((&s.trace_id[..], &s.span_id[..]), s))
        .collect();
    let mut out = Edges::new();
    for s in spans {
        let Some(p) = by_id.get(&(&s.trace_id[..], &s.parent_span_id[..])) else {
            continue;
        };
        if p.service != s.service {
            let key = (
                align_down(s.start_time_unix_nano, W),
                p.service.clone(),
                s.service.clone(),
            );
            let e = out.entry(key).or_default();
            e.0 += 1;
            e.1 += u64::from(filter::is_error(s));
        }
    }
    out
}

/// The edges of every owner's 10 s parts in storage, merged.
async fn stored_edges(storage: &dyn Storage) -> Edges {
    let mut out = Edges::new();
    for p in storage.rollups(W, 0, u64::MAX).await.unwrap() {
        let b = Bucket::decode(&p.bytes).unwrap();
        for (k, stats) in b.edges() {
            let key = (p.start_unix_nanos, k.parent.to_owned(), k.child.to_owned());
            let e = out.entry(key).or_default();
            e.0 += stats.requests();
            e.1 += stats.errors();
        }
    }
    out
}

/// The spans in batches of `size`, each trace's spans in reverse (children
/// before their parents) every other trace, and scattered over batches.
fn shuffled_batches(spans: &[Span], size: usize) -> Vec<ExportRequest> {
    let mut order: Vec<&Span> = spans.iter().collect();
    order.sort_by_key(|s| {
        let t = u64::from_be_bytes(s.trace_id[..8].try_into().unwrap());
        let i = u64::from_be_bytes(s.span_id[..8].try_into().unwrap());
        let rank = if t % 2 == 0 { i } else { u64::MAX - i };
        ((i * 7919) % 13, t, rank)
    });
    order
        .chunks(size)
        .map(|c| ExportRequest {
            spans: c.iter().map(|s| (*s).clone()).collect(),
        })
        .collect()
}

#[tokio::test]
async fn calls_pair_parents_and_children_in_any_order_and_record() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new(1000));
    let spans = call_traces(300, clew_model::now_unix_nanos());
    let expected = expected_edges(&spans);
    assert!(expected.len() > 20, "the fixture has calls: {expected:?}");
    let (wal, _) = Wal::open(dir.path(), fast_config()).unwrap();
    let r = Rollups::new(wal.clone(), 5, RollupConfig::default());
    for (i, b) in shuffled_batches(&spans, 37).iter().enumerate() {
        r.record_appended(wal.append(b).await.unwrap(), &b.spans);
        if i % 9 == 0 {
            r.flush(storage.as_ref()).await.unwrap();
        }
    }
    r.flush(storage.as_ref()).await.unwrap();
    assert_eq!(stored_edges(storage.as_ref()).await, expected);
    let calls: u64 = expected.values().map(|v| v.0).sum();
    assert_eq!(r.stats().calls.load(Ordering::Relaxed), calls);
}

#[tokio::test]
async fn calls_are_counted_once_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new(1000));
    let spans = call_traces(200, clew_model::now_unix_nanos());
    let batches = shuffled_batches(&spans, 29);
    let (wal, _) = Wal::open(dir.path(), fast_config()).unwrap();
    wal.set_floor(Some(0));
    let r = Rollups::new(wal.clone(), 6, RollupConfig::default());
    let half = batches.len() / 2;
    for (i, b) in batches.iter().enumerate() {
        let seq = r.record_appended(wal.append(b).await.unwrap(), &b.spans);
        wal.release(seq); // stored at once: only the floor keeps it
        if i == half {
            let through = r.flush(storage.as_ref()).await.unwrap();
            wal.set_floor(Some(r.floor(through)));
        }
    }
    // Killed before the next flush.
    drop((r, wal));
    let (wal, replay) = Wal::open(dir.path(), fast_config()).unwrap();
    assert!(
        replay.len() > batches.len() - half,
        "the pairing kept records"
    );
    let again = Rollups::new(wal, 6, RollupConfig::default());
    replay_and_flush(&again, storage.as_ref(), &replay).await;
    assert_eq!(stored_edges(storage.as_ref()).await, expected_edges(&spans));
    assert_eq!(stored(storage.as_ref()).await, expected(&batches));
}

#[tokio::test]
async fn a_child_whose_parent_never_comes_is_counted_unpaired() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), fast_config()).unwrap();
    let config = RollupConfig {
        call_window: Duration::ZERO,
        ..RollupConfig::default()
    };
    let r = Rollups::new(wal.clone(), 8, config);
    let mut orphan = span(3, clew_model::now_unix_nanos(), 0);
    orphan.parent_span_id = vec![9; 8];
    let b = ExportRequest {
        spans: vec![orphan],
    };
    let seq = r.record_appended(wal.append(&b).await.unwrap(), &b.spans);
    assert_eq!(r.stats().unpaired.load(Ordering::Relaxed), 0);
    // The window (zero here) passes at each floor: the child moves to the
    // older generation, then is forgotten.
    assert_eq!(r.floor(10), seq, "the WAL keeps the waiting child");
    assert_eq!(r.stats().unpaired.load(Ordering::Relaxed), 0);
    assert_eq!(r.floor(10), 10, "forgotten after two windows");
    assert_eq!(r.stats().unpaired.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn calls_of_a_large_trace_pair_in_any_order() {
    // 300 spans of one trace (past the small-trace vector), parents over
    // three services, the children of each record before their parents.
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new(1000));
    let now = clew_model::now_unix_nanos();
    let spans: Vec<Span> = (0..300u64)
        .map(|i| {
            let mut s = span(i, now, 0);
            s.trace_id = vec![7; 16];
            s.service = format!("svc-{}", i % 3);
            s.parent_span_id = match i {
                0 => Vec::new(),
                _ => ((i - 1) / 2 + 1).to_be_bytes().to_vec(),
            };
            s
        })
        .collect();
    let expected = expected_edges(&spans);
    assert!(expected.values().map(|v| v.0).sum::<u64>() > 150);
    let (wal, _) = Wal::open(dir.path(), fast_config()).unwrap();
    let r = Rollups::new(wal.clone(), 9, RollupConfig::default());
    let mut reversed = spans.clone();
    reversed.reverse();
    for chunk in reversed.chunks(70) {
        let b = ExportRequest {
            spans: chunk.to_vec(),
        };
        r.record_appended(wal.append(&b).await.unwrap(), &b.spans);
    }
    r.flush(storage.as_ref()).await.unwrap();
    assert_eq!(stored_edges(storage.as_ref()).await, expected);
}
