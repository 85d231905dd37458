//! Service B: business logic (gRPC, :8001). A search fans out to every
//! shard of C in parallel and merges; a process call stores the data in C
//! and reads it back.

use std::time::Instant;

use clew_tracer::Tracer;
use clew_tracer::instrument::{TraceLayer, TraceService};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::Faults;
use crate::data::SHARDS;
use crate::ops::Metrics;
use crate::pb;

/// The traced client B uses for C.
pub type DataClient = pb::data_client::DataClient<TraceService<Channel>>;

/// A traced, lazily connecting client for C at `url`; a call that has no
/// answer after `timeout` fails (and B answers UNAVAILABLE).
pub fn data_client(
    url: &str,
    tracer: &Tracer,
    timeout: std::time::Duration,
) -> anyhow::Result<DataClient> {
    let channel = crate::downstream(url, timeout)?;
    Ok(pb::data_client::DataClient::new(
        tower::ServiceBuilder::new()
            .layer(TraceLayer::grpc_client(tracer.clone()))
            .service(channel),
    ))
}

/// Service B.
#[derive(Debug, Clone)]
pub struct BusinessService {
    tracer: Tracer,
    data: DataClient,
    faults: Faults,
    metrics: Metrics,
}

/// Maps a failure of C to what B tells A: no internals.
fn upstream(op: &str, s: &Status) -> Status {
    tracing::warn!(operation = op, code = ?s.code(), "data layer call failed");
    Status::unavailable("data layer unavailable")
}

impl BusinessService {
    /// B calling C through `data`.
    pub fn new(tracer: Tracer, data: DataClient, faults: Faults, metrics: Metrics) -> Self {
        BusinessService {
            tracer,
            data,
            faults,
            metrics,
        }
    }

    /// The tonic service.
    pub fn into_server(self) -> pb::business_server::BusinessServer<Self> {
        pb::business_server::BusinessServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::business_server::Business for BusinessService {
    async fn search(
        &self,
        req: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        if req.query.trim().is_empty() {
            return Err(Status::invalid_argument("query must not be empty"));
        }
        if self.faults.apply().await.fail {
            self.metrics.observe("search", false, started);
            return Err(Status::internal("search failed (injected fault)"));
        }
        let calls = (0..SHARDS).map(|shard| {
            let mut c = self.data.clone();
            let query = req.query.clone();
            async move { c.lookup(pb::LookupRequest { query, shard }).await }
        });
        let answers = futures_util::future::join_all(calls).await;
        let mut results = Vec::new();
        for a in answers {
            match a {
                Ok(r) => results.extend(r.into_inner().results),
                Err(s) => {
                    self.metrics.observe("search", false, started);
                    return Err(upstream("lookup", &s));
                }
            }
        }
        let mut rank = self.tracer.start("rank.results");
        rank.set_attribute("candidates", results.len() as i64);
        results.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        let limit = if req.limit == 0 {
            10
        } else {
            req.limit.min(100)
        } as usize;
        results.truncate(limit);
        rank.end();
        self.metrics.observe("search", true, started);
        Ok(Response::new(pb::SearchResponse {
            results,
            shards: SHARDS,
        }))
    }

    async fn process(
        &self,
        req: Request<pb::ProcessRequest>,
    ) -> Result<Response<pb::ProcessResponse>, Status> {
        let started = Instant::now();
        let data = req.into_inner().data;
        if data.is_empty() {
            return Err(Status::invalid_argument("data must not be empty"));
        }
        if self.faults.apply().await.fail {
            self.metrics.observe("process", false, started);
            return Err(Status::internal("process failed (injected fault)"));
        }
        let mut digest_span = self.tracer.start("digest");
        // FNV-1a: a stable, cheap digest for the demo.
        let digest = data.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        digest_span.end();
        let id = format!("{digest:016x}");
        let mut data_client = self.data.clone();
        data_client
            .store(pb::StoreRequest {
                key: id.clone(),
                value: data.clone(),
            })
            .await
            .map_err(|s| upstream("store", &s))?;
        let back = data_client
            .get(pb::GetRequest { key: id.clone() })
            .await
            .map_err(|s| upstream("get", &s))?
            .into_inner();
        if !back.found {
            self.metrics.observe("process", false, started);
            return Err(Status::unavailable("data layer lost the write"));
        }
        self.metrics.observe("process", true, started);
        Ok(Response::new(pb::ProcessResponse {
            id,
            digest: format!("fnv1a:{digest:016x}"),
            words: data.split_whitespace().count() as u32,
        }))
    }
}
