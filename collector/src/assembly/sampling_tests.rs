//! The assembler with tail sampling: decisions when a trace goes idle for
//! the decision wait, late spans following the cached decision, the
//! pending-trace limit and the span cap counted, and a crash in the middle
//! of the decision window replayed to the same decisions.

use std::collections::BTreeSet;
use std::path::Path;

use clew_analysis::sampling::{Decision, Engine};
use proptest::prelude::*;

use super::tests::{MemorySink, append, config, drain, trace_id};
use super::*;
use crate::sampling::{Sampler, SamplerConfig};
use crate::wal::tests::{fast_config, snapshot, span};

/// Keeps traces of three spans or more (policy 0, `big`).
const BIG_TRACES: &str =
    "policies:\n  - {name: big, type: span_count, span_count: {min_spans: 3}}\n";

/// Keeps half the traces, by the hash of their id (policy 0, `half`).
const HALF: &str =
    "policies:\n  - {name: half, type: probabilistic, probabilistic: {sampling_percentage: 50}}\n";

fn sampler(yaml: &str, config: SamplerConfig) -> Arc<Sampler> {
    Arc::new(Sampler::new(Engine::from_yaml(yaml).unwrap(), config))
}

fn sampler_config() -> SamplerConfig {
    SamplerConfig {
        decision_wait: Duration::from_millis(200),
        cache_size: 1_000,
        max_pending_traces: 1_000,
    }
}

struct Sampled {
    _dir: tempfile::TempDir,
    wal: Wal,
    sink: Arc<MemorySink>,
    asm: Assembler,
    sampler: Arc<Sampler>,
}

fn setup(yaml: &str, assembler: AssemblerConfig, sampling: SamplerConfig) -> Sampled {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), fast_config()).unwrap();
    let sink = Arc::new(MemorySink::default());
    let sampler = sampler(yaml, sampling);
    let asm =
        Assembler::with_sampler(assembler, sink.clone(), wal.clone(), sampler.clone()).unwrap();
    Sampled {
        _dir: dir,
        wal,
        sink,
        asm,
        sampler,
    }
}

/// Lets the flush task and the stores run (without moving time) until
/// `cond` holds; fails after a bounded number of turns.
async fn settle(cond: impl Fn() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition not reached");
}

fn decided(sampler: &Sampler) -> u64 {
    let s = sampler.stats();
    let policies = (0..sampler.policy_names().len()).map(Some).chain([None]);
    policies
        .flat_map(|p| [Decision::Sampled, Decision::NotSampled, Decision::Dropped].map(|d| (p, d)))
        .map(|(p, d)| s.decided(p, d))
        .sum()
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Stored `(trace, span)` keys of the given `(trace, span)` numbers.
fn keys(spans: impl IntoIterator<Item = (u64, u64)>) -> BTreeSet<(Vec<u8>, Vec<u8>)> {
    spans
        .into_iter()
        .map(|(t, s)| {
            let span = span(t, s);
            (span.trace_id, span.span_id)
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_trace_is_decided_once_idle_for_the_decision_wait() {
    let s = setup(BIG_TRACES, config(), sampler_config());
    let (a1, s1) = append(&s.wal, &[(1, 1), (1, 2), (1, 3), (2, 1)]).await;
    let t0 = Instant::now();
    s.asm.add(a1, s1);
    // Past the idle window (100 ms), before the decision wait (200 ms).
    tokio::time::advance(Duration::from_millis(150)).await;
    settle(|| true).await;
    assert!(s.sink.calls.lock().is_empty());
    assert_eq!(decided(&s.sampler), 0);
    s.sink.wait_for_stores(1).await;
    settle(|| s.wal.outstanding() == 0).await;
    let calls = s.sink.ok_calls();
    assert_eq!(calls.len(), 1, "only the sampled trace is stored");
    assert_eq!(calls[0].trace_id, trace_id(1));
    assert_eq!(calls[0].at - t0, Duration::from_millis(200));
    let stats = s.sampler.stats();
    assert_eq!(stats.decided(Some(0), Decision::Sampled), 1);
    assert_eq!(stats.decided(None, Decision::NotSampled), 1);
    assert_eq!(s.sink.keys(), keys([(1, 1), (1, 2), (1, 3)]));
    // The trace not sampled was released as if stored.
    assert_eq!(s.asm.pending_bytes(), 0);
    assert_eq!(s.asm.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn late_spans_follow_the_cached_decision() {
    let s = setup(BIG_TRACES, config(), sampler_config());
    let (a1, s1) = append(&s.wal, &[(1, 1), (1, 2), (1, 3), (2, 1)]).await;
    // Late: trace 1 (kept) gets span 4 and trace 2 (not kept) spans 2 to 4,
    // which would have made it big enough.
    let (a2, s2) = append(&s.wal, &[(1, 4), (2, 2), (2, 3), (2, 4)]).await;
    s.asm.add(a1, s1);
    s.sink.wait_for_stores(1).await;
    settle(|| decided(&s.sampler) == 2).await;
    s.asm.add(a2, s2);
    let stats = s.sampler.stats();
    // The not-sampled trace's late spans go at once.
    assert_eq!(load(&stats.late_not_sampled_spans), 3);
    assert_eq!(s.asm.pending_traces(), 1);
    s.sink.wait_for_stores(2).await;
    settle(|| s.wal.outstanding() == 0).await;
    assert_eq!(s.sink.keys(), keys([(1, 1), (1, 2), (1, 3), (1, 4)]));
    assert_eq!(load(&stats.late_sampled_spans), 1);
    // Nothing decided twice.
    assert_eq!(decided(&s.sampler), 2);
    // A late fragment waits for the idle window, not the decision wait.
    let calls = s.sink.ok_calls();
    assert_eq!(calls[1].at - calls[0].at, Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn the_pending_trace_limit_drops_the_oldest_trace_before_its_decision() {
    let sampling = SamplerConfig {
        max_pending_traces: 2,
        ..sampler_config()
    };
    let s = setup(BIG_TRACES, config(), sampling);
    let mut batches = Vec::new();
    for t in 1..=3 {
        batches.push(append(&s.wal, &[(t, 1), (t, 2), (t, 3)]).await);
    }
    for (appended, spans) in batches {
        s.asm.add(appended, spans);
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    assert_eq!(s.asm.pending_traces(), 2);
    s.sink.wait_for_stores(2).await;
    settle(|| s.wal.outstanding() == 0).await;
    let stats = s.sampler.stats();
    assert_eq!(load(&stats.pending_limit_traces), 1);
    assert_eq!(load(&stats.pending_limit_spans), 3);
    assert_eq!(stats.decided(Some(0), Decision::Sampled), 2);
    // Trace 1 arrived first and went; the others were decided and stored.
    assert_eq!(
        s.sink.keys(),
        keys([(2, 1), (2, 2), (2, 3), (3, 1), (3, 2), (3, 3)])
    );
}

#[tokio::test(start_paused = true)]
async fn spans_beyond_the_span_cap_are_dropped_before_the_decision_and_counted() {
    let assembler = AssemblerConfig {
        max_spans_per_trace: 3,
        ..config()
    };
    let s = setup(BIG_TRACES, assembler, sampler_config());
    let (a1, s1) = append(&s.wal, &[(1, 1), (1, 2), (1, 3), (1, 4), (1, 5)]).await;
    let (a2, s2) = append(&s.wal, &[(1, 6), (1, 7), (1, 8), (1, 9)]).await;
    s.asm.add(a1, s1);
    assert_eq!(load(&s.sampler.stats().span_cap_spans), 2);
    s.sink.wait_for_stores(1).await;
    assert_eq!(s.sink.keys(), keys([(1, 1), (1, 2), (1, 3)]));
    // Once the trace is kept, its late spans are cut into fragments at the
    // cap as without sampling, and all stored.
    settle(|| decided(&s.sampler) == 1).await;
    s.asm.add(a2, s2);
    s.sink.wait_for_stores(3).await;
    settle(|| s.wal.outstanding() == 0).await;
    assert_eq!(
        s.sink.keys(),
        keys((1..=9).filter(|&n| n != 4 && n != 5).map(|n| (1, n)))
    );
    assert_eq!(load(&s.sampler.stats().span_cap_spans), 2);
    assert_eq!(load(&s.sampler.stats().late_sampled_spans), 4);
}

/// The traces `HALF` keeps among `traces`, by a fresh engine.
fn kept_by_half(traces: impl Iterator<Item = u64>) -> BTreeSet<u64> {
    let mut engine = Engine::from_yaml(HALF).unwrap();
    traces
        .filter(|&t| engine.decide(&[span(t, 1)], 0).decision.is_sampled())
        .collect()
}

/// Trace number `k` spread over 63 bits.
fn mix(k: u64) -> u64 {
    k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 1
}

#[tokio::test(start_paused = true)]
async fn a_crash_mid_window_replays_pending_traces_to_the_same_decisions() {
    let root = tempfile::tempdir().unwrap();
    let (dir, new_dir) = (root.path().join("0"), root.path().join("1"));
    let (wal, _) = Wal::open(&dir, fast_config()).unwrap();
    let sink = Arc::new(MemorySink::default());
    let first = sampler(HALF, sampler_config());
    let asm = Assembler::with_sampler(config(), sink.clone(), wal.clone(), first.clone()).unwrap();
    // Trace ids that differ in every byte, so the hash spreads them.
    let spans_of = |k: u64| [(mix(k), 1), (mix(k), 2)];
    // Traces 0..10 are decided before the crash.
    for t in 0..10 {
        let (appended, spans) = append(&wal, &spans_of(t)).await;
        asm.add(appended, spans);
        tokio::time::advance(Duration::from_millis(300)).await;
        settle(|| decided(&first) == t + 1 && wal.outstanding() == 0).await;
    }
    wal.persist_checkpoint().await.unwrap();
    // Traces 10..40 are pending (appended first: no timer runs meanwhile).
    let mut pending = Vec::new();
    for t in 10..40 {
        pending.push(append(&wal, &spans_of(t)).await);
    }
    for (appended, spans) in pending {
        asm.add(appended, spans);
    }
    tokio::time::advance(Duration::from_millis(150)).await;
    settle(|| true).await;
    assert_eq!(decided(&first), 10);
    assert_eq!(asm.pending_traces(), 30);
    // kill -9: the directory as it is, the assembler gone without a flush.
    snapshot(&dir, &new_dir);
    drop(asm);
    let _ = wal.shutdown().await;
    let (wal, replay) = Wal::open(&new_dir, fast_config()).unwrap();
    let replayed: BTreeSet<_> = replay
        .iter()
        .flat_map(|r| r.batch.spans.iter())
        .map(|s| (s.trace_id.clone(), s.span_id.clone()))
        .collect();
    assert_eq!(replayed, keys((10..40).flat_map(spans_of)));
    let second = sampler(HALF, sampler_config());
    let asm = Assembler::with_sampler(config(), sink.clone(), wal.clone(), second.clone()).unwrap();
    asm.replay(replay);
    tokio::time::advance(Duration::from_millis(300)).await;
    settle(|| decided(&second) == 30 && wal.outstanding() == 0).await;
    // Every trace stored whole or not at all, as a run without the crash
    // would have decided.
    let kept = kept_by_half((0..40).map(mix));
    assert!(
        kept.len() > 5 && kept.len() < 35,
        "both decisions occur: {kept:?}"
    );
    assert_eq!(
        sink.keys(),
        keys(kept.iter().flat_map(|&t| [(t, 1), (t, 2)]))
    );
    let later: BTreeSet<u64> = (10..40).map(mix).collect();
    let kept_after = kept.intersection(&later).count() as u64;
    let stats = second.stats();
    assert_eq!(stats.decided(Some(0), Decision::Sampled), kept_after);
    assert_eq!(stats.decided(None, Decision::NotSampled), 30 - kept_after);
    drain(&asm).await;
    assert_eq!(asm.pending_bytes(), 0);
}

/// Resident set size of this process, in bytes (Linux).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// A sink that stores nothing.
struct NullSink;

impl TraceSink for NullSink {
    fn store_trace(&self, _trace: Trace) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }
}

const BENCH_TRACES: u64 = 20_000;
const BENCH_SPANS: u64 = 5;

/// Holds `BENCH_TRACES` traces of `BENCH_SPANS` spans pending (an hour's
/// window), with tail sampling or without, and prints the memory they take.
async fn pending_memory(sampling: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), fast_config()).unwrap();
    let assembler = AssemblerConfig {
        idle_window: Duration::from_secs(3600),
        max_trace_age: Duration::from_secs(7200),
        max_pending_bytes: u64::MAX,
        ..AssemblerConfig::default()
    };
    let sampling_config = SamplerConfig {
        decision_wait: Duration::from_secs(3600),
        max_pending_traces: 1_000_000,
        ..SamplerConfig::default()
    };
    let sink = Arc::new(NullSink);
    let asm = match sampling {
        true => {
            let s = sampler(HALF, sampling_config);
            Assembler::with_sampler(assembler, sink, wal, s).unwrap()
        }
        false => Assembler::new(assembler, sink, wal).unwrap(),
    };
    let before = rss_bytes();
    // Generated on the fly: the spans' memory is the assembler's.
    asm.replay((0..BENCH_TRACES).map(|t| WalRecord {
        seq: t,
        batch: ExportRequest {
            spans: (0..BENCH_SPANS).map(|s| span(mix(t), s)).collect(),
        },
        tag: 0,
    }));
    let grown = rss_bytes().saturating_sub(before);
    assert_eq!(asm.pending_traces() as u64, BENCH_TRACES);
    println!(
        "pending traces ({} sampling): {BENCH_TRACES} traces of {BENCH_SPANS} spans; \
         pending_bytes (encoded spans) {} B/trace; RSS growth {} B/trace",
        if sampling { "with" } else { "without" },
        asm.pending_bytes() / BENCH_TRACES,
        grown / BENCH_TRACES,
    );
}

/// `cargo test --release -p clew-collector --lib pending_trace_memory -- --ignored --nocapture --test-threads 1`
#[tokio::test]
#[ignore = "measurement: run by hand, see docs/PERFORMANCE.md"]
async fn pending_trace_memory_with_sampling() {
    pending_memory(true).await;
}

/// The same without sampling, the figure to compare with (run on its own:
/// memory freed by another test in the process would be reused).
#[tokio::test]
#[ignore = "measurement: run by hand, see docs/PERFORMANCE.md"]
async fn pending_trace_memory_without_sampling() {
    pending_memory(false).await;
}

/// The decision cache's memory per remembered decision.
#[test]
#[ignore = "measurement: run by hand, see docs/PERFORMANCE.md"]
fn pending_trace_memory_of_the_decision_cache() {
    const DECIDED: u64 = 200_000;
    let config = SamplerConfig {
        cache_size: DECIDED as usize,
        ..SamplerConfig::default()
    };
    let s = sampler(HALF, config);
    let probe = span(0, 0);
    let before = rss_bytes();
    for t in 0..DECIDED {
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&mix(t).to_be_bytes());
        s.judge(&id, std::slice::from_ref(&probe), false, 0);
    }
    let grown = rss_bytes().saturating_sub(before);
    println!(
        "decision cache: {DECIDED} decisions remembered; RSS growth {} B/decision",
        grown / DECIDED
    );
}

/// One step of the crash model.
#[derive(Debug, Clone)]
enum Op {
    /// Ingest spans `(trace, span)` (traces 0..6 spread by `mix`).
    Append(Vec<(u8, u8)>),
    /// Let time pass (ms).
    Advance(u16),
    /// `kill -9` and restart on a copy of the WAL directory.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec((0u8..6, 0u8..12), 1..6).prop_map(Op::Append),
        3 => (1u16..500).prop_map(Op::Advance),
        1 => Just(Op::Crash),
    ]
}

/// Restarts on a copy of `dir` (what `kill -9` leaves) with a new sampler.
async fn restart(asm: Assembler, dir: &Path, new_dir: &Path, sink: &Arc<MemorySink>) -> Assembler {
    snapshot(dir, new_dir);
    let old_wal = asm.wal().clone();
    drop(asm);
    let _ = old_wal.shutdown().await;
    let (wal, replay) = Wal::open(new_dir, fast_config()).unwrap();
    let asm = Assembler::with_sampler(config(), sink.clone(), wal, sampler(HALF, sampler_config()))
        .unwrap();
    asm.replay(replay);
    asm
}

fn run_crash_model(ops: Vec<Op>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let root = tempfile::tempdir().unwrap();
        let mut dir = root.path().join("0");
        let (wal, _) = Wal::open(&dir, fast_config()).unwrap();
        let sink = Arc::new(MemorySink::default());
        let s = sampler(HALF, sampler_config());
        let mut asm = Assembler::with_sampler(config(), sink.clone(), wal, s).unwrap();
        let kept = kept_by_half((0..6).map(mix));
        let mut want = BTreeSet::new();
        for (generation, op) in ops.into_iter().enumerate() {
            match op {
                Op::Append(pairs) => {
                    let spans: Vec<Span> = pairs
                        .iter()
                        .map(|&(t, n)| span(mix(u64::from(t)), u64::from(n)))
                        .collect();
                    for (&(t, _), s) in pairs.iter().zip(&spans) {
                        if kept.contains(&mix(u64::from(t))) {
                            want.insert((s.trace_id.clone(), s.span_id.clone()));
                        }
                    }
                    asm.ingest(ExportRequest { spans }).await.unwrap();
                }
                Op::Advance(ms) => {
                    tokio::time::advance(Duration::from_millis(u64::from(ms))).await;
                    settle(|| true).await;
                }
                Op::Crash => {
                    let new_dir = root.path().join(format!("{}", generation + 1));
                    asm = restart(asm, &dir, &new_dir, &sink).await;
                    dir = new_dir;
                }
            }
        }
        let asm = restart(asm, &dir, &root.path().join("final"), &sink).await;
        drain(&asm).await;
        // Every acknowledged span of a kept trace stored, none of the others.
        assert_eq!(sink.keys(), want);
        assert_eq!(asm.wal().outstanding(), 0);
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn crashes_never_change_what_is_kept(ops in proptest::collection::vec(op(), 1..30)) {
        run_crash_model(ops);
    }
}
