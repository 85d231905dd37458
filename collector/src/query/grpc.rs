//! clew's gRPC `Query` service over a [`Storage`].

use std::sync::Arc;

use clew_proto::v1 as pb;
use pb::query_server::Query;
use tonic::{Request, Response, Status};

use crate::storage::{Storage, StorageError, TraceId};

/// The `clew.v1.Query` gRPC service.
#[derive(Debug, Clone)]
pub struct QueryGrpc(pub Arc<dyn Storage>);

impl QueryGrpc {
    /// The tonic server for this service.
    pub fn into_server(self) -> pb::query_server::QueryServer<Self> {
        pb::query_server::QueryServer::new(self)
    }
}

/// A status for a storage error, without backend internals.
fn storage_status(e: StorageError) -> Status {
    tracing::warn!(error = %e.detail(), "query failed");
    match &e {
        StorageError::InvalidTrace(_) => Status::invalid_argument(e.to_string()),
        e if e.is_retryable() => Status::unavailable(e.to_string()),
        e => Status::internal(e.to_string()),
    }
}

#[tonic::async_trait]
impl Query for QueryGrpc {
    async fn get_trace(
        &self,
        request: Request<pb::GetTraceRequest>,
    ) -> Result<Response<pb::Trace>, Status> {
        let raw = request.into_inner().trace_id;
        let id = TraceId::from_slice(&raw)
            .filter(TraceId::is_valid)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "trace_id must be 16 bytes, not all zero (got {} bytes)",
                    raw.len()
                ))
            })?;
        match self.0.get_trace(id).await.map_err(storage_status)? {
            Some(trace) => Ok(Response::new(trace)),
            None => Err(Status::not_found("trace not found")),
        }
    }

    async fn find_traces(
        &self,
        request: Request<pb::FindTracesRequest>,
    ) -> Result<Response<pb::FindTracesResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        if filter.min_duration_nanos != 0
            && filter.max_duration_nanos != 0
            && filter.max_duration_nanos < filter.min_duration_nanos
        {
            return Err(Status::invalid_argument(
                "max_duration_nanos is below min_duration_nanos",
            ));
        }
        if filter.start_time_max_unix_nano != 0
            && filter.start_time_max_unix_nano < filter.start_time_min_unix_nano
        {
            return Err(Status::invalid_argument(
                "start_time_max_unix_nano is before start_time_min_unix_nano",
            ));
        }
        let traces = self.0.list_traces(&filter).await.map_err(storage_status)?;
        Ok(Response::new(pb::FindTracesResponse { traces }))
    }

    async fn get_services(
        &self,
        _request: Request<pb::GetServicesRequest>,
    ) -> Result<Response<pb::GetServicesResponse>, Status> {
        let services = self.0.services().await.map_err(storage_status)?;
        Ok(Response::new(pb::GetServicesResponse { services }))
    }

    async fn get_operations(
        &self,
        request: Request<pb::GetOperationsRequest>,
    ) -> Result<Response<pb::GetOperationsResponse>, Status> {
        let req = request.into_inner();
        if req.service.is_empty() {
            return Err(Status::invalid_argument("service is required"));
        }
        let kind = match pb::SpanKind::try_from(req.span_kind) {
            Ok(pb::SpanKind::Unspecified) => None,
            Ok(k) => Some(k),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown span_kind {}",
                    req.span_kind
                )));
            }
        };
        let operations = self
            .0
            .operations(&req.service, kind)
            .await
            .map_err(storage_status)?
            .into_iter()
            .map(|(name, kind)| pb::Operation {
                name,
                span_kind: kind as i32,
            })
            .collect();
        Ok(Response::new(pb::GetOperationsResponse { operations }))
    }

    async fn get_dependencies(
        &self,
        request: Request<pb::GetDependenciesRequest>,
    ) -> Result<Response<pb::GetDependenciesResponse>, Status> {
        let req = request.into_inner();
        if req.end_time_unix_nano != 0 && req.end_time_unix_nano < req.start_time_unix_nano {
            return Err(Status::invalid_argument(
                "end_time_unix_nano is before start_time_unix_nano",
            ));
        }
        let (start, end) = (req.start_time_unix_nano, req.end_time_unix_nano);
        let dependencies = crate::query::rollups::edges(self.0.as_ref(), start, end)
            .await
            .map_err(storage_status)?
            .into_iter()
            .map(|e| pb::DependencyLink {
                parent: e.parent,
                child: e.child,
                call_count: e.calls,
                error_count: e.errors,
            })
            .collect();
        Ok(Response::new(pb::GetDependenciesResponse { dependencies }))
    }
}
