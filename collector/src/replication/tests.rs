use std::sync::Arc;
use std::time::Duration;

use clew_proto::v1::replication_server::Replication as _;
use clew_proto::v1::{ReplicateRequest, Span};
use tokio::sync::{mpsc, watch};

use super::*;

fn encoded(spans: Vec<Span>) -> Vec<prost::bytes::Bytes> {
    use prost::Message as _;
    spans.iter().map(|s| s.encode_to_vec().into()).collect()
}

fn enc(spans: Vec<Span>) -> Copy {
    Copy::Spans(encoded(spans))
}

fn span(trace: u8, id: u8) -> Span {
    Span {
        trace_id: [trace; 16].to_vec(),
        span_id: [id; 8].to_vec(),
        name: format!("op{id}"),
        service: "svc".into(),
        start_time_unix_nano: 1,
        end_time_unix_nano: 2,
        ..Default::default()
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    members: watch::Sender<Arc<Members>>,
    store: ReplicaStore,
    takeovers: mpsc::UnboundedReceiver<Takeover>,
    metrics: Arc<ReplicationMetrics>,
}

const ME: &str = "10.0.0.2:4317";
const ORIGIN: &str = "10.0.0.1:4317";

fn fixture(takeover_after: Duration) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replicas");
    let (members, rx) = watch::channel(Arc::new(Members::new(
        [ORIGIN.to_owned(), ME.to_owned()],
        ME,
    )));
    let metrics = Arc::new(ReplicationMetrics::new());
    let (tx, takeovers) = mpsc::unbounded_channel();
    let store = ReplicaStore::open(
        path.clone(),
        false,
        rx,
        takeover_after,
        Arc::clone(&metrics),
        tx,
    )
    .unwrap();
    Fixture {
        _dir: dir,
        path,
        members,
        store,
        takeovers,
        metrics,
    }
}

fn held(metrics: &ReplicationMetrics) -> i64 {
    metrics.replica_held.with_label_values(&[ORIGIN]).get()
}

#[tokio::test]
async fn copies_are_released_by_the_origins_watermark() {
    let f = fixture(Duration::from_secs(3600));
    for b in 10..15u64 {
        f.store
            .keep(ORIGIN, 7, b, 0, enc(vec![span(1, b as u8)]))
            .await
            .unwrap();
    }
    f.store.check();
    assert_eq!(held(&f.metrics), 5);
    // A heartbeat: batches below 13 are stored on the origin.
    f.store
        .keep(ORIGIN, 7, 0, 13, Copy::Spans(vec![]))
        .await
        .unwrap();
    f.store.check();
    assert_eq!(held(&f.metrics), 2);
    // A late copy of a released batch is not kept.
    f.store
        .keep(ORIGIN, 7, 11, 0, enc(vec![span(1, 99)]))
        .await
        .unwrap();
    f.store.check();
    assert_eq!(held(&f.metrics), 2);
    f.store.shutdown().await;
}

#[tokio::test]
async fn unreleased_copies_survive_a_restart_and_are_taken_over() {
    let mut f = fixture(Duration::from_secs(3600));
    f.store
        .keep(ORIGIN, 7, 1, 0, enc(vec![span(1, 1), span(1, 2)]))
        .await
        .unwrap();
    f.store
        .keep(ORIGIN, 7, 2, 0, enc(vec![span(2, 3)]))
        .await
        .unwrap();
    f.store
        .keep(ORIGIN, 7, 0, 2, Copy::Spans(vec![]))
        .await
        .unwrap();
    f.store.shutdown().await;
    drop(f.store);
    // Reopened: batch 2 is still held; unreachable at once (takeover after 0).
    let (tx, mut rx) = mpsc::unbounded_channel();
    let store = ReplicaStore::open(
        f.path.clone(),
        false,
        f.members.subscribe(),
        Duration::ZERO,
        Arc::clone(&f.metrics),
        tx,
    )
    .unwrap();
    store.check();
    let job = rx.try_recv().expect("a takeover");
    assert_eq!((job.origin.as_str(), job.reason), (ORIGIN, "unreachable"));
    let records = job.records().await.unwrap();
    let spans: Vec<Vec<u8>> = records
        .iter()
        .flat_map(|r| r.batch.spans.iter().map(|s| s.span_id.clone()))
        .collect();
    assert_eq!(spans, vec![vec![3u8; 8]], "only the unreleased batch");
    job.finish().await.unwrap();
    assert_eq!(std::fs::read_dir(&f.path).unwrap().count(), 0);
    assert!(f.takeovers.try_recv().is_err());
}

#[tokio::test]
async fn a_new_incarnation_takes_over_the_old_ones_copies() {
    let mut f = fixture(Duration::from_secs(3600));
    f.store
        .keep(ORIGIN, 7, 5, 0, enc(vec![span(1, 1)]))
        .await
        .unwrap();
    // The origin lost its disk: a new incarnation.
    f.store
        .keep(ORIGIN, 8, 1, 0, enc(vec![span(2, 2)]))
        .await
        .unwrap();
    let job = f.takeovers.try_recv().expect("a takeover");
    assert_eq!(job.reason, "incarnation");
    let records = job.records().await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].batch.spans[0].span_id, vec![1u8; 8]);
    assert_eq!(records[0].tag, 5);
    assert_eq!(
        f.metrics
            .takeovers
            .with_label_values(&["incarnation"])
            .get(),
        1
    );
    f.store.shutdown().await;
}

#[tokio::test]
async fn an_origin_that_left_the_set_is_taken_over() {
    let mut f = fixture(Duration::from_secs(3600));
    f.store
        .keep(ORIGIN, 7, 5, 0, enc(vec![span(1, 1)]))
        .await
        .unwrap();
    f.store.check();
    assert!(f.takeovers.try_recv().is_err(), "still a member");
    f.members
        .send(Arc::new(Members::new([ME.to_owned()], ME)))
        .unwrap();
    f.store.check();
    let job = f.takeovers.try_recv().expect("a takeover");
    assert_eq!(job.reason, "left");
    f.store.shutdown().await;
}

fn request(source: &str, spans: Vec<Span>) -> tonic::Request<ReplicateRequest> {
    tonic::Request::new(ReplicateRequest {
        source: source.into(),
        spans: encoded(spans),
        batch_seq: 1,
        incarnation: 7,
        released_below: 0,
        otlp: Default::default(),
    })
}

#[tokio::test]
async fn bad_requests_are_refused_naming_the_field_and_keep_nothing() {
    let f = fixture(Duration::from_secs(3600));
    let svc = ReplicationService(f.store.clone());
    let e = svc
        .replicate(request("10.9.9.9:4317", vec![span(1, 1)]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(e.message().contains("not a member"), "{}", e.message());
    let e = svc
        .replicate(request(ME, vec![span(1, 1)]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "not its own peer");
    let mut bad = span(1, 2);
    bad.span_id = vec![1, 2, 3];
    let e = svc
        .replicate(request(ORIGIN, vec![span(1, 1), bad]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("spans[1]: "), "{}", e.message());
    let mut zero = request(ORIGIN, vec![span(1, 1)]).into_inner();
    zero.incarnation = 0;
    let e = svc.replicate(tonic::Request::new(zero)).await.unwrap_err();
    assert!(e.message().starts_with("incarnation"), "{}", e.message());
    f.store.check();
    assert_eq!(held(&f.metrics), 0, "nothing kept");
    assert_eq!(
        f.metrics
            .replica_refused
            .with_label_values(&["invalid"])
            .get(),
        2
    );
    let ok = svc
        .replicate(request(ORIGIN, vec![span(1, 1)]))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().acked_batch_seq, 1);
    f.store.shutdown().await;
}

#[test]
fn a_request_encoded_from_borrowed_spans_decodes_as_prost_would() {
    use prost::Message as _;
    let spans = vec![span(1, 1), span(2, 2)];
    let body = origin::encode_for_test("a:1", 9, 3, 2, &spans);
    let decoded = ReplicateRequest::decode(body).unwrap();
    assert_eq!(
        decoded,
        ReplicateRequest {
            source: "a:1".into(),
            spans: encoded(spans),
            batch_seq: 3,
            incarnation: 9,
            released_below: 2,
            otlp: Default::default(),
        }
    );
}

/// A replica collector on loopback: its store served over real gRPC.
struct Peer {
    name: String,
    fixture: Fixture,
    server: tokio::task::JoinHandle<()>,
}

async fn serve_peer(all: &[String]) -> Peer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let name = listener.local_addr().unwrap().to_string();
    let f = fixture(Duration::from_secs(3600));
    let names: Vec<String> = all.iter().cloned().chain([name.clone()]).collect();
    f.members
        .send(Arc::new(Members::new(names, &name)))
        .unwrap();
    let svc = ReplicationService(f.store.clone()).into_server(64 << 20);
    let server = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await;
    });
    Peer {
        name,
        fixture: f,
        server,
    }
}

const ORIGIN_ME: &str = "127.0.0.1:1";

fn replicator(members: &[String], factor: usize, min: usize) -> Replicator {
    let (_tx, rx) = watch::channel(Arc::new(Members::new(
        members.iter().cloned().chain([ORIGIN_ME.to_owned()]),
        ORIGIN_ME,
    )));
    std::mem::forget(_tx);
    Replicator::new(
        ReplicationConfig {
            me: ORIGIN_ME.into(),
            copies: Copies {
                configured: factor,
                min,
            },
            timeout: Duration::from_secs(2),
            ..ReplicationConfig::default()
        },
        42,
        0,
        rx,
        Arc::new(ReplicationMetrics::new()),
    )
}

fn spans_of(traces: std::ops::Range<u8>) -> Vec<Span> {
    traces.map(|t| span(t, t)).collect()
}

fn kept_spans(p: &Peer) -> u64 {
    p.fixture
        .metrics
        .replica_spans
        .with_label_values(&[ORIGIN_ME])
        .get()
}

#[tokio::test]
async fn each_trace_is_copied_to_its_first_peer_in_placement_order() {
    let a = serve_peer(&[ORIGIN_ME.to_owned()]).await;
    let b = serve_peer(&[ORIGIN_ME.to_owned(), a.name.clone()]).await;
    let names = vec![a.name.clone(), b.name.clone()];
    let r = replicator(&names, 2, 0);
    let spans = spans_of(1..101);
    let mut out = r.begin(&spans, None).unwrap().expect("copies needed");
    out.send().await.unwrap();
    out.wal_done(Some(0));
    // Each span went to exactly one peer: the first of its trace's ranking
    // other than the origin.
    let members = r.members();
    let mut expect_a = 0;
    for s in &spans {
        let first = members.peers_for(&s.trace_id).next().unwrap();
        if members.names()[first] == a.name {
            expect_a += 1;
        }
    }
    assert_eq!(kept_spans(&a), expect_a);
    assert_eq!(kept_spans(&b), 100 - expect_a);
    assert!(expect_a > 20 && expect_a < 80, "spread {expect_a}");
    a.server.abort();
    b.server.abort();
}

#[tokio::test]
async fn a_dead_peer_fails_the_batch_then_is_passed_over() {
    let a = serve_peer(&[ORIGIN_ME.to_owned()]).await;
    let b = serve_peer(&[ORIGIN_ME.to_owned(), a.name.clone()]).await;
    let names = vec![a.name.clone(), b.name.clone()];
    let r = replicator(&names, 2, 0);
    b.server.abort();
    let _ = b.server.await;
    let spans = spans_of(1..41);
    let mut out = r.begin(&spans, None).unwrap().expect("copies needed");
    let e = out.send().await.unwrap_err();
    assert!(e.why.contains(&b.name), "names the peer: {e}");
    drop(out);
    // The dead peer is passed over: its traces' copies go to the next peer.
    let mut out = r.begin(&spans, None).unwrap().expect("copies needed");
    out.send().await.unwrap();
    out.wal_done(Some(1));
    // Every span of the second batch, and of the first at most those whose
    // call to it was not cut short by the failure.
    let kept = kept_spans(&a) as usize;
    assert!(
        (spans.len()..=spans.len() + a_share(&r, &a.name, &spans)).contains(&kept),
        "kept {kept}"
    );
    a.server.abort();
}

/// Spans of `spans` whose first copy goes to `peer` while every peer is up.
fn a_share(r: &Replicator, peer: &str, spans: &[Span]) -> usize {
    let members = r.members();
    spans
        .iter()
        .filter(|s| members.names()[members.peers_for(&s.trace_id).next().unwrap()] == peer)
        .count()
}

#[tokio::test]
async fn min_copies_below_the_factor_needs_only_that_many() {
    let a = serve_peer(&[ORIGIN_ME.to_owned()]).await;
    let b = serve_peer(&[ORIGIN_ME.to_owned(), a.name.clone()]).await;
    let names = vec![a.name.clone(), b.name.clone()];
    // Factor 3 (both peers get every span), 2 copies needed: one peer is
    // enough.
    let r = replicator(&names, 3, 2);
    b.server.abort();
    let _ = b.server.await;
    let spans = spans_of(1..11);
    let mut out = r.begin(&spans, None).unwrap().expect("copies needed");
    out.send().await.unwrap();
    assert_eq!(kept_spans(&a), 10);
    // With every copy required, the same loss refuses the batch.
    let strict = replicator(&names, 3, 3);
    let mut out = strict.begin(&spans, None).unwrap().expect("copies needed");
    assert!(out.send().await.is_err());
    a.server.abort();
}

#[test]
fn a_factor_of_one_needs_no_copy() {
    let r = replicator(&["127.0.0.1:2".to_owned()], 1, 0);
    assert!(r.begin(&spans_of(1..3), None).unwrap().is_none());
}

#[test]
fn the_sidecars_owner_is_first_in_the_collectors_ranking() {
    let names: Vec<String> = (1..=5).map(|i| format!("10.0.0.{i}:4317")).collect();
    let urls: Vec<u64> = names
        .iter()
        .map(|n| clew_model::placement::member_hash(&format!("http://{n}")))
        .collect();
    for i in 0u8..200 {
        let trace = [i; 16];
        let owner = clew_model::placement::pick(&urls, &trace).unwrap();
        // Seen from any non-owner, the owner is the first peer.
        let other = names.iter().find(|n| **n != names[owner]).unwrap();
        let m = Members::new(names.clone(), other);
        let first = m.peers_for(&trace).next().unwrap();
        assert_eq!(m.names()[first], names[owner]);
    }
}

#[test]
fn the_registry_matches_the_catalogue() {
    let m = ReplicationMetrics::new();
    // Children for the labelled metrics, as a running collector has.
    m.batches.with_label_values(&["a:1", "ok"]);
    m.spans.with_label_values(&["a:1"]);
    m.bytes.with_label_values(&["a:1"]);
    m.ack_seconds.with_label_values(&["a:1"]);
    m.lag_seconds.with_label_values(&["a:1"]);
    m.peer_up.with_label_values(&["a:1"]);
    m.replica_batches.with_label_values(&["a:1"]);
    m.replica_spans.with_label_values(&["a:1"]);
    m.replica_held.with_label_values(&["a:1"]);
    clew_runtime::metrics::catalogue_check("collector replication", m.registry());
}

/// An OTLP/protobuf request of one resource with `traces` traces of two
/// spans each, and its spans as ingest converts them.
fn otlp_request(traces: std::ops::Range<u8>) -> (prost::bytes::Bytes, Vec<Span>) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1 as otlp;
    use prost::Message as _;
    let spans = traces
        .flat_map(|t| {
            (1..=2u8).map(move |i| otlp::Span {
                trace_id: vec![t; 16],
                span_id: vec![t, i, 1, 1, 1, 1, 1, 1],
                name: format!("op{i}"),
                start_time_unix_nano: 1,
                end_time_unix_nano: 2,
                ..Default::default()
            })
        })
        .collect();
    let req = ExportTraceServiceRequest {
        resource_spans: vec![otlp::ResourceSpans {
            scope_spans: vec![otlp::ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let body: prost::bytes::Bytes = req.encode_to_vec().into();
    let raw = crate::ingest::otlp::RawExport::decode_body(body.clone()).unwrap();
    let converted =
        crate::ingest::otlp::from_raw(raw, &crate::ingest::otlp::Limits::default()).unwrap();
    (body, converted.spans)
}

#[tokio::test]
async fn otlp_requests_are_forwarded_as_they_came_and_taken_over_whole() {
    let a = serve_peer(&[ORIGIN_ME.to_owned()]).await;
    let b = serve_peer(&[ORIGIN_ME.to_owned(), a.name.clone()]).await;
    let names = vec![a.name.clone(), b.name.clone()];
    let r = replicator(&names, 2, 0);
    let (body, spans) = otlp_request(1..41);
    let mut out = r
        .begin(&spans, Some(&body))
        .unwrap()
        .expect("copies needed");
    out.send().await.unwrap();
    drop(out);
    // Each peer kept its traces' spans (a subset of the request), and
    // nothing else.
    let share = a_share(&r, &a.name, &spans);
    assert_eq!(kept_spans(&a) as usize, share);
    assert_eq!(kept_spans(&b) as usize, spans.len() - share);
    // Taken over, the copies give back the very spans ingest converted.
    let mut got = Vec::new();
    for p in [&a, &b] {
        p.fixture
            .members
            .send(Arc::new(Members::new([p.name.clone()], &p.name)))
            .unwrap();
        p.fixture.store.check();
    }
    let mut jobs = Vec::new();
    let mut fixtures = Vec::new();
    for p in [a, b] {
        p.server.abort();
        let mut f = p.fixture;
        jobs.push(f.takeovers.try_recv().expect("a takeover"));
        fixtures.push(f);
    }
    for job in jobs {
        for record in job.records().await.unwrap() {
            got.extend(record.batch.spans);
        }
    }
    let key = |s: &Span| s.span_id.clone();
    got.sort_by_key(key);
    let mut want = spans.clone();
    want.sort_by_key(key);
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_malformed_otlp_copy_is_refused_naming_the_span() {
    let f = fixture(Duration::from_secs(3600));
    let svc = ReplicationService(f.store.clone());
    // A request whose second span has a 3-byte span id.
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;
    let mut req = ExportTraceServiceRequest::decode(otlp_request(1..3).0).unwrap();
    req.resource_spans[0].scope_spans[0].spans[1].span_id = vec![1, 2, 3];
    let mut bad = request(ORIGIN, vec![]).into_inner();
    bad.otlp = req.encode_to_vec().into();
    let e = svc.replicate(tonic::Request::new(bad)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "otlp: span 1: span_id must be 8 bytes and not all zero"
    );
    let mut garbage = request(ORIGIN, vec![]).into_inner();
    garbage.otlp = vec![0xff, 0xff, 0xff].into();
    let e = svc
        .replicate(tonic::Request::new(garbage))
        .await
        .unwrap_err();
    assert!(e.message().starts_with("otlp: "), "{}", e.message());
    f.store.check();
    assert_eq!(held(&f.metrics), 0, "nothing kept");
}

#[test]
fn inconsistent_replication_flags_are_refused_naming_the_flag() {
    use clap::Parser as _;
    let parse = |args: &[&str]| {
        crate::server::Config::try_parse_from(["clew-collector"].iter().chain(args)).unwrap()
    };
    let c = parse(&[
        "--peers",
        "a:1,b:1",
        "--replication-factor",
        "2",
        "--replication-min-copies",
        "3",
    ]);
    let e = c
        .replication
        .config(c.grpc_addr, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--replication-min-copies (3)"), "{e}");
    let c = parse(&["--peers", "a:1,b:1"]);
    let e = c
        .replication
        .config(c.grpc_addr, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--advertise-addr is required"), "{e}");
    let c = parse(&["--peers", "a:1,b:1", "--grpc-addr", "10.0.0.1:4317"]);
    assert_eq!(
        c.replication.config(c.grpc_addr, None).unwrap().me,
        "10.0.0.1:4317"
    );
    let c = parse(&["--peers", "a:1,b:1", "--advertise-addr", "http://b:1"]);
    assert_eq!(c.replication.config(c.grpc_addr, None).unwrap().me, "b:1");
    assert!(!parse(&[]).replication.enabled());
}

#[test]
fn a_set_smaller_than_the_factor_is_degraded() {
    let r = replicator(&[], 2, 0);
    assert!(r.publish_gauges(false));
    let m = r.metrics();
    assert_eq!(
        (m.members.get(), m.factor.get(), m.degraded.get()),
        (1, 1, 1)
    );
    let r = replicator(&["127.0.0.1:2".to_owned()], 2, 0);
    assert!(!r.publish_gauges(true));
    let m = r.metrics();
    assert_eq!(
        (
            m.members.get(),
            m.factor.get(),
            m.required_copies.get(),
            m.degraded.get()
        ),
        (2, 2, 2, 0)
    );
}
