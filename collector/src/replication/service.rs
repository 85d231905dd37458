//! The `Replication` gRPC service: checks a request and keeps its copy.

use clew_proto::v1::{ReplicateRequest, ReplicateResponse, replication_server};
use tonic::{Request, Response, Status};

use super::replica::{ReplicaError, ReplicaStore};

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
        if let Err(status) = check(&self.0, &req) {
            let reason = if status.code() == tonic::Code::PermissionDenied {
                "not_member"
            } else {
                "invalid"
            };
            metrics.replica_refused.with_label_values(&[reason]).inc();
            tracing::warn!(source = %req.source, error = %status.message(), "replication request refused");
            return Err(status);
        }
        let batch_seq = req.batch_seq;
        self.0
            .keep(
                &req.source,
                req.incarnation,
                batch_seq,
                req.released_below,
                req.spans,
            )
            .await
            .map_err(|e| {
                metrics
                    .replica_refused
                    .with_label_values(&["unavailable"])
                    .inc();
                match e {
                    ReplicaError::Full => Status::resource_exhausted(e.to_string()),
                    ReplicaError::Unavailable => Status::unavailable(e.to_string()),
                }
            })?;
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
    if !req.spans.is_empty() && req.batch_seq == 0 {
        return Err(Status::invalid_argument(
            "batch_seq: must not be 0 in a request with spans",
        ));
    }
    for (i, span) in req.spans.iter().enumerate() {
        clew_model::otlp::check(span)
            .map_err(|e| Status::invalid_argument(format!("spans[{i}]: {e}")))?;
    }
    Ok(())
}
