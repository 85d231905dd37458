//! Service C: the data layer (gRPC, :8002). An in-memory key-value store
//! and a sharded search corpus.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use clew_tracer::{Status as SpanStatus, Tracer};
use parking_lot::RwLock;
use tonic::{Request, Response, Status};

use crate::Faults;
use crate::ops::Metrics;
use crate::pb;

/// Number of search shards C holds; B fans a search out to all of them.
pub const SHARDS: u32 = 3;

/// Most keys kept by `Store`; the oldest half is dropped beyond it.
const MAX_KEYS: usize = 10_000;

const CORPUS: &[&str] = &[
    "an example of distributed tracing",
    "vector clocks order events across hosts",
    "critical path analysis finds bottlenecks",
    "the sidecar buffers spans on disk",
    "redis stores traces with a ttl",
    "an example request fans out to shards",
    "jaeger compatible query api",
    "tail latency hides in the critical path",
    "example traffic from the generator",
];

/// The key-value store: values and keys in insertion order.
type Kv = (HashMap<String, String>, Vec<String>);

/// Service C.
#[derive(Debug, Clone)]
pub struct DataService {
    tracer: Tracer,
    faults: Faults,
    metrics: Metrics,
    store: Arc<RwLock<Kv>>,
}

impl DataService {
    /// C with its tracer and fault knobs.
    pub fn new(tracer: Tracer, faults: Faults, metrics: Metrics) -> Self {
        DataService {
            tracer,
            faults,
            metrics,
            store: Arc::default(),
        }
    }

    /// The tonic service.
    pub fn into_server(self) -> pb::data_server::DataServer<Self> {
        pb::data_server::DataServer::new(self)
    }

    async fn faults(&self, op: &str) -> Result<(), Status> {
        let roll = self.faults.apply().await;
        if roll.fail {
            self.metrics.observe(op, false, Instant::now());
            return Err(Status::unavailable(
                "data layer unavailable (injected fault)",
            ));
        }
        Ok(())
    }
}

/// Scores `doc` for `query`: the share of query words it contains.
fn score(doc: &str, query: &str) -> f64 {
    let words: Vec<&str> = query.split_whitespace().collect();
    if words.is_empty() {
        return 0.0;
    }
    let hits = words
        .iter()
        .filter(|w| doc.contains(&w.to_lowercase()))
        .count();
    hits as f64 / words.len() as f64
}

#[tonic::async_trait]
impl pb::data_server::Data for DataService {
    async fn lookup(
        &self,
        req: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::LookupResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        if req.shard >= SHARDS {
            return Err(Status::invalid_argument(format!(
                "shard must be below {SHARDS}"
            )));
        }
        self.faults("lookup").await?;
        let mut scan = self.tracer.start("shard.scan");
        scan.set_attribute("shard", i64::from(req.shard));
        let results: Vec<pb::SearchResult> = CORPUS
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as u32 % SHARDS == req.shard)
            .map(|(i, doc)| pb::SearchResult {
                id: format!("doc-{i}"),
                title: (*doc).to_string(),
                score: score(doc, &req.query),
            })
            .filter(|r| r.score > 0.0)
            .collect();
        scan.set_attribute("results", results.len() as i64);
        scan.end();
        self.metrics.observe("lookup", true, started);
        Ok(Response::new(pb::LookupResponse { results }))
    }

    async fn store(
        &self,
        req: Request<pb::StoreRequest>,
    ) -> Result<Response<pb::StoreResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        if req.key.is_empty() {
            return Err(Status::invalid_argument("key must not be empty"));
        }
        self.faults("store").await?;
        let mut write = self.tracer.start("kv.write");
        write.set_attribute("bytes", req.value.len() as i64);
        let created = {
            let mut g = self.store.write();
            let (map, order) = &mut *g;
            let created = map.insert(req.key.clone(), req.value).is_none();
            if created {
                order.push(req.key);
            }
            if order.len() > MAX_KEYS {
                for k in order.drain(..MAX_KEYS / 2) {
                    map.remove(&k);
                }
            }
            created
        };
        write.end();
        self.metrics.observe("store", true, started);
        Ok(Response::new(pb::StoreResponse { created }))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        self.faults("get").await?;
        let mut read = self.tracer.start("kv.read");
        let value = self.store.read().0.get(&req.key).cloned();
        if value.is_none() {
            read.set_status(SpanStatus::Error("key not found".into()));
        }
        read.end();
        self.metrics.observe("get", value.is_some(), started);
        Ok(Response::new(pb::GetResponse {
            found: value.is_some(),
            value: value.unwrap_or_default(),
        }))
    }
}
