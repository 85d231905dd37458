use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::AtomicU32;

use clew_tracer::reliability::Jitter;
use proptest::prelude::*;

use super::*;
use crate::wal::WalConfig;
use crate::wal::tests::{fast_config, snapshot, span};

/// One call to the sink.
#[derive(Debug, Clone)]
pub(super) struct Call {
    pub(super) trace_id: Vec<u8>,
    pub(super) span_ids: Vec<Vec<u8>>,
    pub(super) at: Instant,
    ok: bool,
}

/// Stored spans by trace ID, then span ID.
pub(super) type Stored = HashMap<Vec<u8>, BTreeMap<Vec<u8>, Span>>;

/// Storage in memory: merges fragments, keeps a span ID once, can be told to
/// fail.
#[derive(Debug, Default)]
pub(super) struct MemorySink {
    pub(super) traces: Mutex<Stored>,
    pub(super) calls: Mutex<Vec<Call>>,
    /// Fail this many of the next calls.
    fail_next: AtomicU32,
    /// Fail every call for these traces.
    fail_traces: Mutex<HashSet<Vec<u8>>>,
    /// Reject these traces as invalid.
    reject_traces: Mutex<HashSet<Vec<u8>>>,
    changed: Notify,
}

impl TraceSink for MemorySink {
    fn store_trace(&self, trace: Trace) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let fail = self.fail_traces.lock().contains(&trace.trace_id)
                || self
                    .fail_next
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            self.calls.lock().push(Call {
                trace_id: trace.trace_id.clone(),
                span_ids: trace.spans.iter().map(|s| s.span_id.clone()).collect(),
                at: Instant::now(),
                ok: !fail,
            });
            if self.reject_traces.lock().contains(&trace.trace_id) {
                return Err(SinkError::rejected("invalid trace"));
            }
            if fail {
                self.changed.notify_waiters();
                return Err(SinkError::new("injected failure", trace));
            }
            {
                let mut traces = self.traces.lock();
                let stored = traces.entry(trace.trace_id).or_default();
                for span in trace.spans {
                    stored.entry(span.span_id.clone()).or_insert(span);
                }
            }
            self.changed.notify_waiters();
            Ok(())
        })
    }
}

impl MemorySink {
    pub(super) fn ok_calls(&self) -> Vec<Call> {
        self.calls.lock().iter().filter(|c| c.ok).cloned().collect()
    }

    fn failed_calls(&self) -> usize {
        self.calls.lock().iter().filter(|c| !c.ok).count()
    }

    /// Waits (in virtual time: timers fire as needed) for `n` successful
    /// stores.
    pub(super) async fn wait_for(&self, cond: impl Fn(&Self) -> bool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if cond(self) {
                return;
            }
            changed.await;
        }
    }

    pub(super) async fn wait_for_stores(&self, n: usize) {
        self.wait_for(|s| s.ok_calls().len() >= n).await;
    }

    pub(super) fn keys(&self) -> BTreeSet<(Vec<u8>, Vec<u8>)> {
        let traces = self.traces.lock();
        traces
            .iter()
            .flat_map(|(t, spans)| spans.keys().map(move |s| (t.clone(), s.clone())))
            .collect()
    }
}

/// `flush_all`, failing instead of hanging if it never finishes (in paused
/// time the day passes at once once nothing else can run).
pub(super) async fn drain(asm: &Assembler) {
    tokio::time::timeout(Duration::from_secs(24 * 3600), asm.flush_all())
        .await
        .expect("flush_all never finished");
}

pub(super) fn trace_id(trace: u64) -> Vec<u8> {
    span(trace, 0).trace_id
}

fn span_id(span_no: u64) -> Vec<u8> {
    span(0, span_no).span_id
}

pub(super) fn config() -> AssemblerConfig {
    AssemblerConfig {
        idle_window: Duration::from_millis(100),
        max_trace_age: Duration::from_secs(10),
        retry: RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            multiplier: 2.0,
            max_attempts: u32::MAX,
            jitter: Jitter::None,
        },
        ..AssemblerConfig::default()
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    wal: Wal,
    sink: Arc<MemorySink>,
    asm: Assembler,
}

fn setup(config: AssemblerConfig) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (wal, replay) = Wal::open(dir.path(), fast_config()).unwrap();
    assert!(replay.is_empty());
    let sink = Arc::new(MemorySink::default());
    let asm = Assembler::new(config, sink.clone(), wal.clone()).unwrap();
    Setup {
        _dir: dir,
        wal,
        sink,
        asm,
    }
}

/// Appends a batch of the given `(trace, span)` spans. Tests append before
/// they start adding, so no assembler timer is armed while the (real) WAL
/// thread works and paused time cannot jump.
pub(super) async fn append(wal: &Wal, spans: &[(u64, u64)]) -> (Appended, Vec<Span>) {
    let spans: Vec<Span> = spans.iter().map(|&(t, s)| span(t, s)).collect();
    let appended = wal
        .append(&ExportRequest {
            spans: spans.clone(),
        })
        .await
        .unwrap();
    (appended, spans)
}

#[tokio::test(start_paused = true)]
async fn a_trace_is_flushed_once_idle_for_the_window() {
    let Setup {
        _dir,
        wal,
        sink,
        asm,
    } = setup(config());
    let (a1, s1) = append(&wal, &[(1, 1), (1, 2)]).await;
    let (a2, s2) = append(&wal, &[(1, 3)]).await;
    let t0 = Instant::now();
    asm.add(a1, s1);
    tokio::time::advance(Duration::from_millis(60)).await;
    assert!(sink.calls.lock().is_empty());
    // A new span restarts the idle window.
    asm.add(a2, s2);
    sink.wait_for_stores(1).await;
    let calls = sink.ok_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].at - t0, Duration::from_millis(160));
    assert_eq!(calls[0].trace_id, trace_id(1));
    assert_eq!(calls[0].span_ids, vec![span_id(1), span_id(2), span_id(3)]);
    assert_eq!(asm.stats().flushed_idle.load(Ordering::Relaxed), 1);
    assert_eq!(asm.pending_traces(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_trace_that_never_goes_idle_is_flushed_at_max_age() {
    let Setup {
        _dir,
        wal,
        sink,
        asm,
    } = setup(AssemblerConfig {
        max_trace_age: Duration::from_millis(250),
        ..config()
    });
    let mut records = Vec::new();
    for i in 0..4 {
        records.push(append(&wal, &[(1, i)]).await);
    }
    let t0 = Instant::now();
    for (i, (appended, spans)) in records.into_iter().enumerate() {
        if i > 0 {
            tokio::time::advance(Duration::from_millis(80)).await;
        }
        asm.add(appended, spans);
    }
    sink.wait_for_stores(1).await;
    let calls = sink.ok_calls();
    assert_eq!(calls[0].at - t0, Duration::from_millis(250));
    assert_eq!(calls[0].span_ids.len(), 4);
    assert_eq!(asm.stats().flushed_age.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn the_span_cap_flushes_at_once_in_capped_fragments() {
    let Setup {
        _dir,
        wal,
        sink,
        asm,
    } = setup(AssemblerConfig {
        max_spans_per_trace: 3,
        ..config()
    });
    let spans: Vec<(u64, u64)> = (0..7).map(|i| (1, i)).chain([(2, 100)]).collect();
    let (a, s) = append(&wal, &spans).await;
    let t0 = Instant::now();
    asm.add(a, s);
    sink.wait_for_stores(2).await;
    let calls = sink.ok_calls();
    // No waiting for the idle window.
    assert!(calls.iter().all(|c| c.at == t0), "{calls:?}");
    assert!(calls.iter().all(|c| c.trace_id == trace_id(1)));
    assert_eq!(calls[0].span_ids, vec![span_id(0), span_id(1), span_id(2)]);
    assert_eq!(calls[1].span_ids, vec![span_id(3), span_id(4), span_id(5)]);
    assert_eq!(asm.stats().flushed_span_cap.load(Ordering::Relaxed), 2);
    // Span 6 of trace 1 and trace 2 wait for their idle window.
    assert_eq!(asm.pending_traces(), 2);
    assert_eq!(wal.outstanding(), 1);
    drain(&asm).await;
    assert_eq!(sink.keys().len(), 8);
    assert_eq!(wal.outstanding(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_bytes_cap_flushes_the_least_recently_updated_trace_first() {
    let one_span = span(1, 1).encoded_len() as u64;
    let Setup {
        _dir,
        wal,
        sink,
        asm,
    } = setup(AssemblerConfig {
        max_pending_bytes: 2 * one_span + one_span / 2,
        ..config()
    });
    let mut records = Vec::new();
    for t in 1..=3 {
        records.push(append(&wal, &[(t, 1)]).await);
    }
    let t0 = Instant::now();
    for (i, (appended, spans)) in records.into_iter().enumerate() {
        if i > 0 {
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        asm.add(appended, spans);
    }
    sink.wait_for_stores(1).await;
    let calls = sink.ok_calls();
    assert_eq!(calls[0].trace_id, trace_id(1));
    assert_eq!(calls[0].at - t0, Duration::from_millis(20));
    assert_eq!(asm.stats().flushed_bytes_cap.load(Ordering::Relaxed), 1);
    assert_eq!(asm.pending_traces(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_late_span_is_stored_as_a_second_fragment_and_merged_by_storage() {
    let Setup {
        _dir,
        wal,
        sink,
        asm,
    } = setup(config());
    let (a1, s1) = append(&wal, &[(1, 1), (1, 2)]).await;
    // A late span, plus a repeat of span 1 (already stored, no longer
    // pending): storage drops the repeat.
    let (a2, s2) = append(&wal, &[(1, 3), (1, 1)]).await;
    asm.add(a1, s1);
    sink.wait_for_stores(1).await;
    asm.add(a2, s2);
    sink.wait_for_stores(2).await;
    let calls = sink.ok_calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].span_ids, vec![span_id(1), span_id(2)]);
    assert_eq!(calls[1].span_ids, vec![span_id(3), span_id(1)]);
    let stored = sink.traces.lock()[&trace_id(1)]
        .keys()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(stored, vec![span_id(1), span_id(2), span_id(3)]);
    assert_eq!(wal.outstanding(), 0);
}

#[tokio::test(start_paused = true)]
async fn duplicates_in_the_pending_set_are_kept_once() {
    let Setup {
        _dir,
        wal,
        sink,
        asm,
    } = setup(config());
    let (a1, s1) = append(&wal, &[(1, 1), (1, 1), (1, 2)]).await;
    let (a2, s2) = append(&wal, &[(1, 2), (1, 3)]).await;
    let (a3, s3) = append(&wal, &[(1, 1)]).await;
    let seq3 = a3.seq();
    asm.add(a1, s1);
    asm.add(a2, s2);
    let before = asm.pending_bytes();
    asm.add(a3, s3);
    assert_eq!(asm.pending_bytes(), before, "a duplicate took memory");
    assert_eq!(asm.stats().duplicate_spans.load(Ordering::Relaxed), 3);
    // Record 3 brought nothing new: released at once, while 1 and 2 are
    // held until their spans are stored.
    assert_eq!(wal.outstanding(), 2);
    assert_eq!(wal.checkpoint(), 0);
    assert!(seq3 == 2);
    sink.wait_for_stores(1).await;
    assert_eq!(
        sink.ok_calls()[0].span_ids,
        vec![span_id(1), span_id(2), span_id(3)]
    );
    assert_eq!(wal.outstanding(), 0);
    assert_eq!(wal.checkpoint(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_checkpoint_advances_only_past_records_whose_spans_are_stored() {
    let Setup {
        _dir,
        wal,
        sink,
        asm,
    } = setup(config());
    // Trace 2's stores fail until told otherwise.
    sink.fail_traces.lock().insert(trace_id(2));
    let records = vec![
        append(&wal, &[(1, 1)]).await,
        append(&wal, &[(1, 2), (2, 1)]).await,
        append(&wal, &[(2, 2)]).await,
    ];
    for (appended, spans) in records {
        asm.add(appended, spans);
    }
    assert_eq!(wal.checkpoint(), 0);
    sink.wait_for(|s| !s.ok_calls().is_empty() && s.failed_calls() >= 3)
        .await;
    // Trace 1 is stored: record 0 is released; record 1 is still held by
    // trace 2's fragment.
    assert_eq!(sink.ok_calls()[0].trace_id, trace_id(1));
    assert_eq!(wal.checkpoint(), 1);
    assert_eq!(wal.outstanding(), 2);
    assert_eq!(wal.persist_checkpoint().await.unwrap(), 1);
    // Still held, still in memory while retried.
    assert_eq!(asm.in_flight(), 1);
    assert!(asm.pending_bytes() > 0);

    sink.fail_traces.lock().clear();
    sink.wait_for_stores(2).await;
    // The store's completion (release) follows the sink's answer.
    drain(&asm).await;
    assert_eq!(wal.checkpoint(), 3);
    assert_eq!(asm.pending_bytes(), 0);
    let dir = wal.dir().to_path_buf();
    assert_eq!(wal.shutdown().await.unwrap(), 3);
    drop(asm);
    let (_wal, replay) = Wal::open(&dir, fast_config()).unwrap();
    assert!(replay.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failing_sink_is_retried_with_backoff_and_nothing_is_lost() {
    let Setup {
        _dir,
        wal,
        sink,
        asm,
    } = setup(config());
    sink.fail_next.store(5, Ordering::SeqCst);
    let (a, s) = append(&wal, &[(1, 1), (1, 2), (2, 3)]).await;
    let t0 = Instant::now();
    asm.add(a, s);
    sink.wait_for_stores(2).await;
    drain(&asm).await;
    assert_eq!(asm.stats().store_failures.load(Ordering::Relaxed), 5);
    assert_eq!(asm.stats().stores.load(Ordering::Relaxed), 2);
    assert_eq!(sink.keys().len(), 3);
    // The retries waited: 100 ms idle, then the backoff of the fragment
    // that took the failures (two fragments share the 5 failures, and each
    // waited its own exponential delays).
    let last = sink.ok_calls().iter().map(|c| c.at).max().unwrap();
    assert!(last - t0 > Duration::from_millis(100 + 100 + 200));
    assert_eq!(wal.checkpoint(), 1);
    assert_eq!(asm.pending_bytes(), 0);
}

#[tokio::test(start_paused = true)]
async fn store_retries_start_a_new_round_when_attempts_run_out() {
    let Setup {
        _dir,
        wal,
        sink,
        asm,
    } = setup(AssemblerConfig {
        retry: RetryPolicy {
            max_attempts: 2,
            ..config().retry
        },
        ..config()
    });
    sink.fail_next.store(7, Ordering::SeqCst);
    let (a, s) = append(&wal, &[(1, 1)]).await;
    asm.add(a, s);
    sink.wait_for_stores(1).await;
    assert_eq!(sink.failed_calls(), 7);
    assert_eq!(sink.keys().len(), 1);
    drain(&asm).await;
    assert_eq!(wal.outstanding(), 0);
}

#[tokio::test(start_paused = true)]
async fn flush_all_drains_everything_without_waiting_for_idle() {
    let Setup {
        _dir,
        wal,
        sink,
        asm,
    } = setup(AssemblerConfig {
        idle_window: Duration::from_secs(3600),
        ..config()
    });
    // Nothing pending: returns at once.
    drain(&asm).await;
    sink.fail_next.store(2, Ordering::SeqCst);
    let (a1, s1) = append(&wal, &[(1, 1), (2, 2)]).await;
    let (a2, s2) = append(&wal, &[(3, 3), (1, 4)]).await;
    let expected_bytes: u64 = s1.iter().chain(&s2).map(|s| s.encoded_len() as u64).sum();
    asm.add(a1, s1);
    asm.add(a2, s2);
    assert_eq!(asm.pending_bytes(), expected_bytes);
    assert_eq!(asm.pending_traces(), 3);
    drain(&asm).await;
    assert_eq!(sink.keys().len(), 4);
    assert_eq!(asm.pending_bytes(), 0);
    assert_eq!(asm.pending_traces(), 0);
    assert_eq!(asm.in_flight(), 0);
    assert_eq!(asm.stats().flushed_shutdown.load(Ordering::Relaxed), 3);
    assert_eq!(wal.outstanding(), 0);
    assert_eq!(wal.checkpoint(), 2);
}

#[tokio::test(start_paused = true)]
async fn ingest_then_crash_then_replay_stores_every_acknowledged_span() {
    let Setup {
        _dir: dir,
        sink,
        asm,
        ..
    } = setup(config());
    let mut acked = BTreeSet::new();
    for b in 0..5u64 {
        let spans: Vec<Span> = (0..4).map(|i| span(b % 2, b * 10 + i)).collect();
        acked.extend(
            spans
                .iter()
                .map(|s| (s.trace_id.clone(), s.span_id.clone())),
        );
        asm.ingest(ExportRequest { spans }).await.unwrap();
    }
    // kill -9: the directory as it is, nothing flushed.
    let crashed = tempfile::tempdir().unwrap();
    snapshot(dir.path(), crashed.path());
    drop(asm);

    let (wal, replay) = Wal::open(crashed.path(), fast_config()).unwrap();
    let asm = Assembler::new(config(), sink.clone(), wal.clone()).unwrap();
    asm.replay(replay);
    drain(&asm).await;
    assert!(sink.keys().is_superset(&acked));
    assert_eq!(wal.outstanding(), 0);
    assert_eq!(wal.checkpoint(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_fragment_the_sink_rejects_as_invalid_is_dropped_not_retried() {
    let Setup {
        _dir,
        wal,
        sink,
        asm,
    } = setup(config());
    sink.reject_traces.lock().insert(trace_id(2));
    let (a, s) = append(&wal, &[(1, 1), (2, 2), (2, 3)]).await;
    asm.add(a, s);
    drain(&asm).await;
    let stats = asm.stats();
    assert_eq!(stats.rejected_fragments.load(Ordering::Relaxed), 1);
    assert_eq!(stats.rejected_spans.load(Ordering::Relaxed), 2);
    assert_eq!(stats.store_failures.load(Ordering::Relaxed), 0);
    // One attempt each: trace 2 was not retried.
    assert_eq!(sink.calls.lock().len(), 2);
    assert_eq!(sink.keys().len(), 1);
    // The poison does not hold the checkpoint back.
    assert_eq!(wal.checkpoint(), 1);
}

#[test]
fn new_needs_a_runtime_and_a_sane_config() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), fast_config()).unwrap();
    let sink: Arc<dyn TraceSink> = Arc::new(MemorySink::default());
    assert!(matches!(
        Assembler::new(config(), sink.clone(), wal.clone()),
        Err(Error::NoRuntime)
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    assert!(matches!(
        Assembler::new(
            AssemblerConfig {
                max_spans_per_trace: 0,
                ..config()
            },
            sink,
            wal
        ),
        Err(Error::InvalidConfig(_))
    ));
}

// ---------------------------------------------------------------------------
// Model check: whatever happens, no acknowledged span is lost.

#[derive(Debug, Clone)]
enum Op {
    /// Ingest a batch of `(trace, span)` spans (repeats allowed).
    Append(Vec<(u8, u8)>),
    /// Let virtual time pass.
    Advance(u16),
    /// Make the next `n` stores fail.
    FailNext(u8),
    /// Persist the checkpoint (truncating the WAL).
    Persist,
    /// Graceful flush.
    FlushAll,
    /// kill -9 and restart; with `true`, the writer had just persisted the
    /// checkpoint.
    Crash(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => proptest::collection::vec((0u8..4, 0u8..16), 0..8).prop_map(Op::Append),
        3 => (1u16..400).prop_map(Op::Advance),
        1 => (0u8..12).prop_map(Op::FailNext),
        1 => Just(Op::Persist),
        1 => Just(Op::FlushAll),
        1 => any::<bool>().prop_map(Op::Crash),
    ]
}

fn model_config() -> AssemblerConfig {
    AssemblerConfig {
        idle_window: Duration::from_millis(100),
        max_trace_age: Duration::from_millis(300),
        max_spans_per_trace: 5,
        max_pending_bytes: 6 * span(0, 0).encoded_len() as u64,
        max_concurrent_stores: 2,
        retry: RetryPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(80),
            multiplier: 2.0,
            max_attempts: 3,
            jitter: Jitter::Full,
        },
    }
}

fn model_wal_config() -> WalConfig {
    WalConfig {
        // Several segments, so truncation deletes files.
        segment_size: 2048,
        ..fast_config()
    }
}

/// Crashes the running instance: copies its WAL directory as it is (what
/// `kill -9` leaves), abandons the assembler, and starts a new instance on
/// the copy. Returns the new instance and its directory.
async fn crash_and_restart(
    asm: Assembler,
    dir: &Path,
    new_dir: &Path,
    sink: &Arc<MemorySink>,
    acked: &BTreeSet<(Vec<u8>, Vec<u8>)>,
) -> Assembler {
    snapshot(dir, new_dir);
    let old_wal = asm.wal().clone();
    drop(asm);
    // Stop the old writer (it would otherwise live as long as the old store
    // tasks); it only touches the old directory.
    let _ = old_wal.shutdown().await;
    let (wal, replay) = Wal::open(new_dir, model_wal_config()).unwrap();
    // Invariant at the crash: every acknowledged span is stored or replayed.
    let mut have = sink.keys();
    let mut last_seq = None;
    for record in &replay {
        assert!(last_seq < Some(record.seq), "replay out of order");
        last_seq = Some(record.seq);
        have.extend(
            record
                .batch
                .spans
                .iter()
                .map(|s| (s.trace_id.clone(), s.span_id.clone())),
        );
    }
    let lost: Vec<_> = acked.difference(&have).collect();
    assert!(lost.is_empty(), "lost at crash: {lost:?}");
    let asm = Assembler::new(model_config(), sink.clone(), wal).unwrap();
    asm.replay(replay);
    asm
}

fn run_model(ops: Vec<Op>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let root = tempfile::tempdir().unwrap();
        let mut generation = 0;
        let mut dir = root.path().join("0");
        let sink = Arc::new(MemorySink::default());
        let (wal, replay) = Wal::open(&dir, model_wal_config()).unwrap();
        assert!(replay.is_empty());
        let mut asm = Assembler::new(model_config(), sink.clone(), wal).unwrap();
        let mut acked = BTreeSet::new();
        for op in ops {
            match op {
                Op::Append(pairs) => {
                    let spans: Vec<Span> = pairs
                        .iter()
                        .map(|&(t, s)| span(u64::from(t), u64::from(s)))
                        .collect();
                    let keys: Vec<_> = spans
                        .iter()
                        .map(|s| (s.trace_id.clone(), s.span_id.clone()))
                        .collect();
                    asm.ingest(ExportRequest { spans }).await.unwrap();
                    acked.extend(keys);
                }
                Op::Advance(ms) => {
                    tokio::time::advance(Duration::from_millis(u64::from(ms))).await;
                    for _ in 0..8 {
                        tokio::task::yield_now().await;
                    }
                }
                Op::FailNext(n) => sink.fail_next.store(u32::from(n), Ordering::SeqCst),
                Op::Persist => {
                    let persisted = asm.wal().persist_checkpoint().await.unwrap();
                    assert!(persisted <= asm.wal().checkpoint());
                }
                Op::FlushAll => {
                    drain(&asm).await;
                    assert!(sink.keys().is_superset(&acked));
                    assert_eq!(asm.pending_bytes(), 0);
                    assert_eq!(asm.wal().outstanding(), 0);
                }
                Op::Crash(persist_first) => {
                    if persist_first {
                        asm.wal().persist_checkpoint().await.unwrap();
                    }
                    generation += 1;
                    let new_dir = root.path().join(generation.to_string());
                    asm = crash_and_restart(asm, &dir, &new_dir, &sink, &acked).await;
                    dir = new_dir;
                }
            }
        }
        // A last crash, then a graceful drain: storage holds exactly the
        // acknowledged spans, once each.
        let new_dir = root.path().join("final");
        let asm = crash_and_restart(asm, &dir, &new_dir, &sink, &acked).await;
        drain(&asm).await;
        assert_eq!(sink.keys(), acked);
        assert_eq!(asm.wal().outstanding(), 0);
        assert_eq!(
            asm.wal().checkpoint(),
            asm.wal().persist_checkpoint().await.unwrap()
        );
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn no_acknowledged_span_is_ever_lost(ops in proptest::collection::vec(op(), 1..40)) {
        run_model(ops);
    }
}
