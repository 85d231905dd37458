//! The `Replication` gRPC service: checks a request and keeps its copy.

use clew_proto::v1::{ReplicateRequest, ReplicateResponse, replication_server};
use tonic::{Request, Response, Status};

use super::replica::{Copy, ReplicaError, ReplicaStore};
use crate::ingest::otlp::RawExport;

/// Serves `Replicate` from the collector's peers.
#[derive(Debug, Clone)]
pub struct ReplicationService(pub ReplicaStore);

impl ReplicationService {
    /// The tonic server, taking requests up to `max_bytes`.
    pub fn into_server(self, max_bytes: usize) -> replication_server::ReplicationServer<Self> {
        replication_server::ReplicationServer::new(self).max_decoding_message_size(max_bytes)
    }
}

#[tonic::async_trait]
impl replication_server::Replication for ReplicationService {
    async fn replicate(
        &self,
        request: Request<ReplicateRequest>,
    ) -> Result<Response<ReplicateResponse>, Status> {
        let req = request.into_inner();
        let metrics = self.0.metrics();
        let copy = match check(&self.0, &req).and_then(|()| copy_of(&req)) {
            Ok(copy) => copy,
            Err(status) => {
                let reason = if status.code() == tonic::Code::PermissionDenied {
                    "not_member"
                } else {
                    "invalid"
                };
                metrics.replica_refused.with_label_values(&[reason]).inc();
                tracing::warn!(source = %req.source, error = %status.message(), "replication request refused");
                return Err(status);
            }
        };
        let batch_seq = req.batch_seq;
        let kept = self
            .0
            .keep(
                &req.source,
                req.incarnation,
                batch_seq,
                req.released_below,
                copy,
            )
            .await;
        if let Err(e) = kept {
            metrics
                .replica_refused
                .with_label_values(&["unavailable"])
                .inc();
            return Err(match e {
                ReplicaError::Full => Status::resource_exhausted(e.to_string()),
                ReplicaError::Unavailable => Status::unavailable(e.to_string()),
            });
        }
        Ok(Response::new(ReplicateResponse {
            acked_batch_seq: batch_seq,
        }))
    }
}

/// Refuses a request from outside the set, or with a malformed field
/// (named in the message); nothing of it is kept.
fn check(store: &ReplicaStore, req: &ReplicateRequest) -> Result<(), Status> {
    if req.source.is_empty() {
        return Err(Status::invalid_argument(
            "source: must name the sending collector",
        ));
    }
    if !store.members().is_peer(&req.source) {
        return Err(Status::permission_denied(format!(
            "source: {} is not a member of this collector's set",
            req.source
        )));
    }
    if req.incarnation == 0 {
        return Err(Status::invalid_argument("incarnation: must not be 0"));
    }
    if (!req.spans.is_empty() || !req.otlp.is_empty()) && req.batch_seq == 0 {
        return Err(Status::invalid_argument(
            "batch_seq: must not be 0 in a request with spans",
        ));
    }
    for (i, span) in req.spans.iter().enumerate() {
        check_span(span).map_err(|e| Status::invalid_argument(format!("spans[{i}]: {e}")))?;
    }
    Ok(())
}

/// The copy a checked request holds: its spans, or its OTLP body (checked
/// here: it decodes, and each span's ids are valid).
fn copy_of(req: &ReplicateRequest) -> Result<Copy, Status> {
    if req.otlp.is_empty() {
        return Ok(Copy::Spans(req.spans.clone()));
    }
    if !req.spans.is_empty() {
        return Err(Status::invalid_argument("otlp: must not come with spans"));
    }
    let raw = RawExport::decode_body(req.otlp.clone())
        .map_err(|_| Status::invalid_argument("otlp: not an OTLP/protobuf export request"))?;
    raw.check_ids()
        .map_err(|e| Status::invalid_argument(format!("otlp: {e}")))?;
    Ok(Copy::Otlp(req.otlp.clone(), raw.span_count()))
}

/// The ids of a [`Span`](clew_proto::v1::Span), decoded alone: a replica
/// checks them and keeps the rest as the origin encoded it (the origin
/// decoded and checked every field at ingest).
#[derive(Clone, PartialEq, prost::Message)]
struct SpanIds {
    #[prost(bytes = "vec", tag = "1")]
    trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    span_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    parent_span_id: Vec<u8>,
}

fn check_span(encoded: &[u8]) -> Result<(), String> {
    use prost::Message as _;
    let ids = SpanIds::decode(encoded).map_err(|e| format!("not a Span: {e}"))?;
    let span = clew_proto::v1::Span {
        trace_id: ids.trace_id,
        span_id: ids.span_id,
        parent_span_id: ids.parent_span_id,
        ..Default::default()
    };
    clew_model::otlp::check(&span).map_err(|e| e.to_string())
}
