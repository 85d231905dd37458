use std::sync::Arc;
use std::time::Duration;

use clew_proto::v1::replication_server::Replication as _;
use clew_proto::v1::{ReplicateRequest, Span};
use tokio::sync::{mpsc, watch};

use super::*;

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
            .keep(ORIGIN, 7, b, 0, vec![span(1, b as u8)])
            .await
            .unwrap();
    }
    f.store.check();
    assert_eq!(held(&f.metrics), 5);
    // A heartbeat: batches below 13 are stored on the origin.
    f.store.keep(ORIGIN, 7, 0, 13, vec![]).await.unwrap();
    f.store.check();
    assert_eq!(held(&f.metrics), 2);
    // A late copy of a released batch is not kept.
    f.store
        .keep(ORIGIN, 7, 11, 0, vec![span(1, 99)])
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
        .keep(ORIGIN, 7, 1, 0, vec![span(1, 1), span(1, 2)])
        .await
        .unwrap();
    f.store
        .keep(ORIGIN, 7, 2, 0, vec![span(2, 3)])
        .await
        .unwrap();
    f.store.keep(ORIGIN, 7, 0, 2, vec![]).await.unwrap();
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
        .keep(ORIGIN, 7, 5, 0, vec![span(1, 1)])
        .await
        .unwrap();
    // The origin lost its disk: a new incarnation.
    f.store
        .keep(ORIGIN, 8, 1, 0, vec![span(2, 2)])
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
        .keep(ORIGIN, 7, 5, 0, vec![span(1, 1)])
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
        spans,
        batch_seq: 1,
        incarnation: 7,
        released_below: 0,
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
            spans,
            batch_seq: 3,
            incarnation: 9,
            released_below: 2,
        }
    );
}
