use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use clew_proto::v1::{AnyValue, ClockEntry, KeyValue, Span, VectorClock, any_value};
use clew_tracer::reliability::spill::{decode_segment, segment_file_name};

use super::*;

/// A span of trace `trace` with id `span`, with realistic content.
pub(crate) fn span(trace: u64, span: u64) -> Span {
    let attr = |key: &str, value: any_value::Value| KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
    };
    let mut trace_id = [0u8; 16];
    trace_id[8..].copy_from_slice(&(trace + 1).to_be_bytes());
    Span {
        trace_id: trace_id.to_vec(),
        span_id: (span + 1).to_be_bytes().to_vec(),
        parent_span_id: span.to_be_bytes().to_vec(),
        name: format!("GET /api/orders/{}", span % 7),
        service: "checkout".into(),
        kind: 2,
        start_time_unix_nano: 1_700_000_000_000_000_000 + span * 1000,
        end_time_unix_nano: 1_700_000_000_000_000_000 + span * 1000 + 250_000,
        attributes: vec![
            attr("http.method", any_value::Value::StringValue("GET".into())),
            attr(
                "http.route",
                any_value::Value::StringValue("/api/orders/{id}".into()),
            ),
            attr("http.status_code", any_value::Value::IntValue(200)),
            attr(
                "net.peer.name",
                any_value::Value::StringValue("orders.default.svc".into()),
            ),
            attr("retry", any_value::Value::BoolValue(false)),
        ],
        clock_start: Some(VectorClock {
            entries: vec![ClockEntry {
                node: "checkout-7d9f".into(),
                counter: span,
            }],
        }),
        clock_end: Some(VectorClock {
            entries: vec![ClockEntry {
                node: "checkout-7d9f".into(),
                counter: span + 1,
            }],
        }),
        resource: vec![
            attr(
                "k8s.pod.name",
                any_value::Value::StringValue("checkout-7d9f-x2".into()),
            ),
            attr(
                "k8s.namespace.name",
                any_value::Value::StringValue("shop".into()),
            ),
        ],
        node: "checkout-7d9f".into(),
        ..Default::default()
    }
}

/// A batch of `n` spans of trace `tag`, distinct for every tag.
pub(crate) fn batch(tag: u64, n: u64) -> ExportRequest {
    ExportRequest {
        spans: (0..n).map(|i| span(tag, tag * 1_000_000 + i)).collect(),
    }
}

pub(crate) fn fast_config() -> WalConfig {
    WalConfig {
        fsync: false,
        checkpoint_interval: Duration::from_secs(3600),
        ..WalConfig::default()
    }
}

/// Every record in the segment files of `dir`, by sequence number, read
/// straight from the files.
pub(crate) fn records_on_disk(dir: &Path) -> BTreeMap<u64, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let Some(first_seq) = name
            .strip_suffix(".log")
            .and_then(|d| d.parse::<u64>().ok())
        else {
            continue;
        };
        assert_eq!(name, segment_file_name(first_seq));
        let bytes = fs::read(&path).unwrap();
        let scan = decode_segment(&bytes);
        for (i, range) in scan.records.into_iter().enumerate() {
            out.insert(first_seq + i as u64, bytes[range].to_vec());
        }
    }
    out
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// Copies the WAL directory as it is now: what `kill -9` would leave (the
/// page cache outlives the process).
pub(crate) fn snapshot(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

#[test]
fn the_payload_is_the_batch_as_prost_encodes_it_with_each_span_sized() {
    for n in [0, 1, 7, 300] {
        let batch = batch(3, n);
        let (payload, sizes) = encode_batch(&batch);
        assert_eq!(payload, batch.encode_to_vec());
        let expected: Vec<u64> = batch.spans.iter().map(|s| s.encoded_len() as u64).collect();
        assert_eq!(sizes, expected);
        assert_eq!(ExportRequest::decode(payload.as_slice()).unwrap(), batch);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_syncs_once_for_concurrent_appends_and_acks_only_durable_records() {
    let dir = tempfile::tempdir().unwrap();
    const N: u64 = 32;
    let (wal, replay) = Wal::open(
        dir.path(),
        WalConfig {
            // Deterministic grouping: the writer waits (up to far longer than
            // needed) until all N are queued.
            group_linger: Duration::from_secs(30),
            max_group_records: N as usize,
            ..WalConfig::default()
        },
    )
    .unwrap();
    assert!(replay.is_empty());

    let mut tasks = Vec::new();
    for tag in 0..N {
        let wal = wal.clone();
        tasks.push(tokio::spawn(async move {
            let b = batch(tag, 4);
            let appended = wal.append(&b).await.unwrap();
            // Acknowledged: the record must already be in the file.
            let on_disk = records_on_disk(wal.dir());
            let payload = on_disk
                .get(&appended.seq())
                .expect("acked record not on disk");
            assert_eq!(ExportRequest::decode(payload.as_slice()).unwrap(), b);
            (tag, appended.into_held_seq())
        }));
    }
    let mut acked = BTreeMap::new();
    for t in tasks {
        let (tag, seq) = t.await.unwrap();
        acked.insert(seq, tag);
    }
    assert_eq!(acked.len() as u64, N);
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        (0..N).collect::<Vec<_>>()
    );
    let stats = wal.stats();
    assert_eq!(stats.records.load(Ordering::Relaxed), N);
    let fsyncs = stats.fsyncs.load(Ordering::Relaxed);
    assert!((1..N).contains(&fsyncs), "fsyncs = {fsyncs}");
    assert_eq!(stats.groups.load(Ordering::Relaxed), fsyncs);
    assert!(stats.max_group_records.load(Ordering::Relaxed) > 1);

    // Crash: what the files hold now is what a restart sees.
    let crashed = tempfile::tempdir().unwrap();
    snapshot(dir.path(), crashed.path());
    drop(wal);
    let (_wal2, replay) = Wal::open(crashed.path(), WalConfig::default()).unwrap();
    let replayed: BTreeMap<u64, ExportRequest> =
        replay.into_iter().map(|r| (r.seq, r.batch)).collect();
    assert_eq!(replayed.len() as u64, N);
    for (seq, tag) in acked {
        assert_eq!(replayed[&seq], batch(tag, 4));
    }
}

#[tokio::test]
async fn natural_grouping_without_linger_still_acks_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalConfig::default()).unwrap();
    let futures: Vec<_> = (0..64).map(|tag| wal.append(&batch(tag, 2))).collect();
    let mut seqs = Vec::new();
    for f in futures {
        seqs.push(f.await.unwrap().into_held_seq());
    }
    // Queued in call order, so acknowledged in that order.
    assert_eq!(seqs, (0..64).collect::<Vec<_>>());
    let fsyncs = wal.stats().fsyncs.load(Ordering::Relaxed);
    assert!((1..=64).contains(&fsyncs));
    assert_eq!(records_on_disk(dir.path()).len(), 64);
}

#[tokio::test]
async fn crash_recovery_replays_exactly_the_acknowledged_records_after_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), fast_config()).unwrap();
    let mut seqs = Vec::new();
    for tag in 0..10 {
        seqs.push(wal.append(&batch(tag, 3)).await.unwrap().into_held_seq());
    }
    for &seq in &seqs[..4] {
        wal.release(seq);
    }
    // A hole: record 6 is stored but 4 and 5 are not; the checkpoint stops
    // at 4.
    wal.release(seqs[6]);
    assert_eq!(wal.checkpoint(), 4);
    assert_eq!(wal.persist_checkpoint().await.unwrap(), 4);
    assert_eq!(wal.stats().persisted_checkpoint.load(Ordering::Relaxed), 4);
    for tag in 10..13 {
        let _ = wal.append(&batch(tag, 3)).await.unwrap().into_held_seq();
    }

    // Crash without shutdown.
    let crashed = tempfile::tempdir().unwrap();
    snapshot(dir.path(), crashed.path());
    drop(wal);
    let (wal, replay) = Wal::open(crashed.path(), fast_config()).unwrap();
    let got: Vec<(u64, ExportRequest)> = replay.into_iter().map(|r| (r.seq, r.batch)).collect();
    let want: Vec<(u64, ExportRequest)> = (4..13).map(|tag| (tag, batch(tag, 3))).collect();
    assert_eq!(
        got, want,
        "replay = acked records from the checkpoint on, in order"
    );
    // Replayed records hold the checkpoint until released.
    assert_eq!(wal.checkpoint(), 4);
    assert_eq!(wal.outstanding(), 9);

    // A torn last record (a write cut short by the crash; never acked).
    let b = batch(13, 3);
    let torn_seq = wal.append(&b).await.unwrap().into_held_seq();
    assert_eq!(torn_seq, 13);
    drop(wal);
    let last = segment_files(crashed.path()).pop().unwrap();
    let len = fs::metadata(&last).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let (wal, replay) = Wal::open(crashed.path(), fast_config()).unwrap();
    let got: Vec<(u64, ExportRequest)> = replay.into_iter().map(|r| (r.seq, r.batch)).collect();
    assert_eq!(got, want);
    // The log goes on after the cut.
    let next = wal.append(&batch(14, 1)).await.unwrap().into_held_seq();
    assert_eq!(next, 13);
    drop(wal);
    let (_wal, replay) = Wal::open(crashed.path(), fast_config()).unwrap();
    assert_eq!(replay.last().unwrap().batch, batch(14, 1));
}

#[tokio::test]
async fn checkpoint_deletes_whole_segments_below_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig {
        // About one record per segment.
        segment_size: 1024,
        ..fast_config()
    };
    let (wal, _) = Wal::open(dir.path(), config.clone()).unwrap();
    let mut seqs = Vec::new();
    for tag in 0..6 {
        seqs.push(wal.append(&batch(tag, 2)).await.unwrap().into_held_seq());
    }
    let before = segment_files(dir.path()).len();
    assert!(before >= 5, "{before} segments");
    for &seq in &seqs[..4] {
        wal.release(seq);
    }
    assert_eq!(wal.persist_checkpoint().await.unwrap(), 4);
    let on_disk = records_on_disk(dir.path());
    assert!(
        on_disk.keys().all(|&seq| seq >= 3),
        "segments wholly below the checkpoint remain: {:?}",
        on_disk.keys()
    );
    assert!(segment_files(dir.path()).len() < before);
    drop(wal);
    let (_wal, replay) = Wal::open(dir.path(), config).unwrap();
    assert_eq!(replay.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4, 5]);
}

#[tokio::test]
async fn an_acknowledgement_nobody_receives_releases_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), fast_config()).unwrap();
    // Queued, then the caller gives up (a cancelled ingest call).
    drop(wal.append(&batch(0, 1)));
    let held = wal.append(&batch(1, 1)).await.unwrap();
    // The queue is FIFO: record 0 was written and its orphaned ack dropped
    // before record 1 was acknowledged.
    assert_eq!(held.seq(), 1);
    assert_eq!(wal.checkpoint(), 1);
    // Dropping an acknowledgement releases its record too.
    drop(held);
    assert_eq!(wal.checkpoint(), 2);
    assert_eq!(wal.outstanding(), 0);
}

#[tokio::test]
async fn appends_fail_when_the_disk_limit_is_reached() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(
        dir.path(),
        WalConfig {
            max_disk_bytes: Some(4096),
            ..fast_config()
        },
    )
    .unwrap();
    let mut ok = 0;
    let err = loop {
        match wal.append(&batch(ok, 2)).await {
            Ok(a) => {
                let _ = a.into_held_seq();
                ok += 1;
            }
            Err(e) => break e,
        }
        assert!(ok < 100);
    };
    assert!(matches!(err, Error::Full { limit: 4096, .. }), "{err}");
    assert!(ok > 0);
    assert!(wal.stats().disk_bytes.load(Ordering::Relaxed) <= 4096);
}

#[tokio::test]
async fn shutdown_persists_the_checkpoint_and_closes() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), fast_config()).unwrap();
    let a = wal.append(&batch(0, 1)).await.unwrap().into_held_seq();
    let _b = wal.append(&batch(1, 1)).await.unwrap().into_held_seq();
    wal.release(a);
    assert_eq!(wal.shutdown().await.unwrap(), 1);
    assert!(matches!(wal.append(&batch(2, 1)).await, Err(Error::Closed)));
    let (_wal, replay) = Wal::open(dir.path(), fast_config()).unwrap();
    assert_eq!(replay.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1]);
}

const CHILD_DIR_ENV: &str = "CLEW_WAL_KILL9_DIR";

/// Runs in a child process: appends from 4 concurrent writers forever and
/// prints `ACK <seq> <tag>` after each durable append.
fn kill9_child(dir: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    runtime.block_on(async {
        let (wal, _) = Wal::open(dir, WalConfig::default()).unwrap();
        let mut tasks = Vec::new();
        for writer in 0..4u64 {
            let wal = wal.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let tag = writer * 1_000_000 + i;
                    let seq = wal.append(&batch(tag, 8)).await.unwrap().into_held_seq();
                    use std::io::Write;
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {seq} {tag}").unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn kill_9_loses_no_acknowledged_batch() {
    if let Ok(dir) = std::env::var(CHILD_DIR_ENV) {
        kill9_child(&dir);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let module = module_path!()
        .split_once("::")
        .map_or(module_path!(), |(_, rest)| rest);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            &format!("{module}::kill_9_loses_no_acknowledged_batch"),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = BTreeMap::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let Some(rest) = line.strip_prefix("ACK ") else {
            continue;
        };
        let (seq, tag) = rest.split_once(' ').unwrap();
        acked.insert(seq.parse::<u64>().unwrap(), tag.parse::<u64>().unwrap());
        if acked.len() >= 300 {
            break;
        }
    }
    assert_eq!(acked.len(), 300, "the child stopped early");
    // SIGKILL while the writers are still appending.
    child.kill().unwrap();
    child.wait().unwrap();

    let (_wal, replay) = Wal::open(dir.path(), WalConfig::default()).unwrap();
    let replayed: BTreeMap<u64, ExportRequest> =
        replay.into_iter().map(|r| (r.seq, r.batch)).collect();
    for (seq, tag) in acked {
        assert_eq!(
            replayed.get(&seq),
            Some(&batch(tag, 8)),
            "acknowledged record {seq} lost"
        );
    }
}

/// Group-commit throughput: 8 concurrent writers appending 512-span batches.
/// `cargo test --release --lib wal::tests::group_commit_throughput -- --ignored --nocapture`
#[test]
#[ignore = "benchmark; run by hand"]
fn group_commit_throughput() {
    const WRITERS: u64 = 8;
    const SPANS: u64 = 512;
    let seconds: f64 = std::env::var("CLEW_WAL_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    for (label, max_group_records) in [("group commit", 1024), ("fsync per batch", 1)] {
        let dir =
            tempfile::tempdir_in(std::env::var("CLEW_WAL_BENCH_DIR").unwrap_or("/tmp".into()))
                .unwrap();
        let (wal, _) = Wal::open(
            dir.path(),
            WalConfig {
                max_group_records,
                ..WalConfig::default()
            },
        )
        .unwrap();
        let template = batch(1, SPANS);
        let bytes_per_batch = template.encoded_len();
        let started = Instant::now();
        let deadline = started + Duration::from_secs_f64(seconds);
        let appended: u64 = runtime.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..WRITERS {
                let wal = wal.clone();
                let template = template.clone();
                tasks.push(tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        // Released at once: this measures the WAL alone.
                        drop(wal.append(&template).await.unwrap());
                        n += 1;
                    }
                    n
                }));
            }
            let mut total = 0;
            for t in tasks {
                total += t.await.unwrap();
            }
            total
        });
        let elapsed = started.elapsed().as_secs_f64();
        let stats = wal.stats();
        let groups = stats.groups.load(Ordering::Relaxed).max(1);
        let fsync_ms = stats.fsync_nanos.load(Ordering::Relaxed) as f64
            / stats.fsyncs.load(Ordering::Relaxed).max(1) as f64
            / 1e6;
        println!(
            "{label}: {WRITERS} writers x {SPANS}-span batches ({bytes_per_batch} B): \
             {:.0} spans/s, {:.0} batches/s, {:.1} MB/s, {groups} fsyncs, \
             {:.2} batches/fsync, mean fsync {fsync_ms:.2} ms",
            (appended * SPANS) as f64 / elapsed,
            appended as f64 / elapsed,
            (appended as f64 * bytes_per_batch as f64) / elapsed / 1e6,
            appended as f64 / groups as f64,
        );
    }
}

/// An OTLP/protobuf request body of `n` spans of trace `tag` that converts
/// with nothing rejected or shortened, and the batch it converts to.
fn otlp_body(tag: u64, n: u64) -> (Vec<u8>, ExportRequest) {
    use opentelemetry_proto::tonic::common::v1 as common;
    use opentelemetry_proto::tonic::trace::v1 as trace;
    let kv = |key: &str, value: common::any_value::Value| common::KeyValue {
        key: key.into(),
        value: Some(common::AnyValue { value: Some(value) }),
        ..Default::default()
    };
    let spans = (0..n)
        .map(|i| trace::Span {
            trace_id: [tag.to_be_bytes(), 1u64.to_be_bytes()].concat(),
            span_id: (tag * 1_000_000 + i + 1).to_be_bytes().to_vec(),
            name: format!("op-{i}"),
            kind: 2,
            start_time_unix_nano: 1_700_000_000_000_000_000 + i,
            end_time_unix_nano: 1_700_000_000_000_500_000 + i,
            attributes: vec![
                kv(
                    "http.route",
                    common::any_value::Value::StringValue("/cart".into()),
                ),
                kv("retries", common::any_value::Value::IntValue(i as i64)),
            ],
            status: Some(trace::Status {
                code: 2,
                message: "out of stock".into(),
            }),
            ..Default::default()
        })
        .collect();
    let request = ExportTraceServiceRequest {
        resource_spans: vec![trace::ResourceSpans {
            resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                attributes: vec![kv(
                    "service.name",
                    common::any_value::Value::StringValue("checkout".into()),
                )],
                ..Default::default()
            }),
            scope_spans: vec![trace::ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let converted =
        crate::ingest::otlp::from_otlp(request.clone(), &crate::ingest::otlp::Limits::default())
            .unwrap();
    assert_eq!(converted.rejected, 0);
    assert!(converted.truncated.is_empty());
    assert_eq!(converted.spans.len() as u64, n);
    (
        request.encode_to_vec(),
        ExportRequest {
            spans: converted.spans,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_bodies_are_logged_as_they_came_and_replay_as_converted() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), fast_config()).unwrap();
    let (body, converted) = otlp_body(2, 5);
    let first = wal.append(&batch(1, 3)).await.unwrap();
    let second = wal.append_otlp(&body).await.unwrap();
    let third = wal.append(&batch(3, 2)).await.unwrap();
    // The record is the body itself behind one field key, not a re-encoding.
    let on_disk = records_on_disk(dir.path());
    let logged = &on_disk[&second.seq()];
    assert_eq!(logged[0], 0x12, "field 2, length-delimited");
    assert!(logged.ends_with(&body) && logged.len() < body.len() + 6);
    let crashed = tempfile::tempdir().unwrap();
    snapshot(dir.path(), crashed.path());
    drop((first, second, third));
    let (wal2, replay) = Wal::open(crashed.path(), fast_config()).unwrap();
    let batches: Vec<ExportRequest> = replay.into_iter().map(|r| r.batch).collect();
    assert_eq!(batches, vec![batch(1, 3), converted, batch(3, 2)]);
    assert_eq!(wal2.stats().undecodable_records.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otlp_record_that_does_not_decode_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), fast_config()).unwrap();
    let bad = wal.append_otlp(&[0x0a, 0x05, 0x01]).await.unwrap();
    let good = wal.append(&batch(4, 1)).await.unwrap();
    let crashed = tempfile::tempdir().unwrap();
    snapshot(dir.path(), crashed.path());
    drop((bad, good));
    let (wal2, replay) = Wal::open(crashed.path(), fast_config()).unwrap();
    let batches: Vec<ExportRequest> = replay.into_iter().map(|r| r.batch).collect();
    assert_eq!(batches, vec![batch(4, 1)]);
    assert_eq!(wal2.stats().undecodable_records.load(Ordering::Relaxed), 1);
}
