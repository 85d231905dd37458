//! The sidecar's forwarding pipeline: route, log, buffer, forward, replay.
//!
//! ```text
//! accept(request) ─ split by trace ID (rendezvous hash) ─▶ one part per endpoint
//!   ─ cut into records within the collector's limits (spans and bytes)
//!   disk durability: append to the endpoint's log (+ memory cache while it
//!     has room); answer once a collector acknowledged the record or a
//!     group-commit fsync covers it, whichever comes first
//!   memory durability: memory queue, or the spill log when the breaker is
//!     open or memory is full; answer at once
//!                                                                ▼
//!   forwarder (one task per endpoint): the oldest records first, coalesced
//!   within the limits, through the endpoint's circuit breaker
//!     ok ─▶ commit the log cursor / release the memory
//!     retryable failure ─▶ kept (memory batches go to the log), back off
//!     refused for good ─▶ sent again in halves; a single span refused for
//!       good is dropped, counted and logged with the reason
//! ```
//!
//! Every endpoint has its own log (a directory named after its address),
//! so replay after an outage or a restart sends each collector its own data
//! in order and commits as it goes. When an endpoint leaves the set, its
//! log (and with memory durability its memory queue) is handed to the
//! re-router, which routes the spans again over the current endpoints;
//! spans that cannot be routed (no endpoint at all) wait in the
//! `_unrouted` log.
//!
//! With [`Durability::Disk`] (the default) a request is acknowledged only
//! once its spans are on stable storage, so `kill -9` or a power loss at
//! any moment loses nothing acknowledged. With [`Durability::Memory`]
//! spans are acknowledged once in memory or in the spill log, and what is
//! only in memory dies with the process. Delivery to collectors is at
//! least once either way: a crash between a send and its commit resends,
//! and collectors store a span id once.

mod batch;
mod endpoint;
mod forward;
mod reroute;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clew_reliability::{
    CircuitBreaker, CircuitBreakerConfig, FsyncPolicy, RetryPolicy, SpillConfig, SpillLog,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use parking_lot::{Mutex, RwLock};
use prost::Message as _;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::client::{CollectorClient, frame_head};
use crate::metrics::Metrics;
use crate::routing::{endpoint_hash, span_count, split};
pub use batch::Limits;
use endpoint::{Endpoint, Enqueued, Stop};

/// Name of the spill log holding spans waiting to be routed.
const UNROUTED: &str = "_unrouted";

/// Pipeline settings.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Root directory of the spill logs (one subdirectory per endpoint).
    pub spill_dir: PathBuf,
    /// Memory buffer limit over all endpoints, in encoded bytes.
    pub buffer_bytes: usize,
    /// Size cap of each spill log, in bytes.
    pub spill_max_bytes: u64,
    /// Largest request sent to a collector, in encoded bytes.
    pub batch_max_bytes: usize,
    /// Most spans in one request sent to a collector; at most the
    /// collectors' `--max-spans-per-batch`.
    pub batch_max_spans: usize,
    /// When a request is acknowledged to the application.
    pub durability: Durability,
    /// Disk durability: how long appended records wait for the collector's
    /// acknowledgement before they are fsynced (the group-commit window).
    pub fsync_delay: Duration,
    /// Deadline of one export request.
    pub request_timeout: Duration,
    /// Per-endpoint circuit breaker.
    pub breaker: CircuitBreakerConfig,
    /// Backoff between failed sends to one endpoint.
    pub retry: RetryPolicy,
    /// How long shutdown tries to deliver the memory buffer before spilling it.
    pub shutdown_timeout: Duration,
    /// When spill appends are forced to disk (memory durability; disk
    /// durability syncs every append by group commit).
    pub fsync: FsyncPolicy,
    /// TLS towards the collectors, else plain text.
    pub tls: Option<clew_runtime::tls::ClientTls>,
}

/// Default of [`PipelineConfig::batch_max_spans`]: below the collector's
/// default `--max-spans-per-batch` (10,000).
pub const DEFAULT_BATCH_MAX_SPANS: usize = 8192;

/// When the sidecar acknowledges a request to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// Once its spans, written to the endpoint's disk log, are acknowledged
    /// by a collector or fsynced (group commit), whichever comes first:
    /// nothing acknowledged is lost to `kill -9` or a power loss.
    Disk,
    /// Once its spans are in memory or in the spill log: faster to answer,
    /// but spans only in memory are lost if the process dies.
    Memory,
}

impl PipelineConfig {
    /// Defaults, spilling under `spill_dir`.
    pub fn new(spill_dir: impl Into<PathBuf>) -> Self {
        PipelineConfig {
            spill_dir: spill_dir.into(),
            buffer_bytes: 8 << 20,
            spill_max_bytes: 256 << 20,
            batch_max_bytes: 2 << 20,
            batch_max_spans: DEFAULT_BATCH_MAX_SPANS,
            durability: Durability::Disk,
            fsync_delay: Duration::from_millis(20),
            request_timeout: Duration::from_secs(5),
            breaker: CircuitBreakerConfig {
                consecutive_failures: 3,
                cool_down: Duration::from_secs(2),
                ..CircuitBreakerConfig::default()
            },
            retry: RetryPolicy {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(5),
                ..RetryPolicy::default()
            },
            shutdown_timeout: Duration::from_secs(5),
            fsync: FsyncPolicy::Interval(Duration::from_secs(1)),
            tls: None,
        }
    }
}

/// Errors of the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The memory buffer and the spill log are both full.
    #[error("sidecar buffer is full; retry later")]
    Full,
    /// The spill log's file system is full.
    #[error("sidecar spill disk is full; retry later")]
    DiskFull,
    /// The spans were written but not confirmed durable in time.
    #[error("sidecar could not make spans durable in time; retry later")]
    NotDurable,
    /// The spill log failed.
    #[error("spill log: {0}")]
    Spill(#[from] clew_reliability::SpillError),
    /// An endpoint address is not a valid URI.
    #[error("invalid collector endpoint {0:?}")]
    InvalidEndpoint(String),
    /// Creating the spill directory failed.
    #[error("cannot create spill directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

#[derive(Debug, Default)]
struct Table {
    endpoints: Vec<Arc<Endpoint>>,
    hashes: Vec<u64>,
}

#[derive(Debug)]
struct Shared {
    cfg: PipelineConfig,
    table: RwLock<Arc<Table>>,
    mem_bytes: AtomicUsize,
    metrics: Metrics,
    /// Spill logs of endpoints that left, and the unrouted log, drained by
    /// the re-router.
    unrouted: Mutex<SpillLog>,
    orphans: Mutex<Vec<SpillLog>>,
    reroute: Notify,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    shutdown: watch::Sender<bool>,
}

/// The forwarding pipeline. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Pipeline(Arc<Shared>);

/// A spill directory name for an endpoint address.
fn dir_name(url: &str) -> String {
    url.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Normalises `host:port` to `http://host:port`.
pub fn normalize_endpoint(s: &str) -> String {
    let s = s.trim().trim_end_matches('/');
    if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    }
}

impl Pipeline {
    /// Opens the spill root (creating it) and starts the re-router. Call
    /// [`Pipeline::set_endpoints`] next; spill logs left by an earlier run
    /// for endpoints not in that set are re-routed.
    pub fn open(cfg: PipelineConfig, metrics: Metrics) -> Result<Self, Error> {
        std::fs::create_dir_all(&cfg.spill_dir).map_err(|source| Error::Dir {
            path: cfg.spill_dir.clone(),
            source,
        })?;
        let unrouted = open_log(&cfg, &cfg.spill_dir.join(UNROUTED))?;
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            cfg,
            table: RwLock::new(Arc::default()),
            mem_bytes: AtomicUsize::new(0),
            metrics,
            unrouted: Mutex::new(unrouted),
            orphans: Mutex::new(Vec::new()),
            reroute: Notify::new(),
            tasks: Mutex::new(Vec::new()),
            shutdown,
        });
        let p = Pipeline(shared);
        let task = tokio::spawn(reroute::reroute_loop(p.clone()));
        p.0.tasks.lock().push(task);
        Ok(p)
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// The endpoints currently routed to.
    pub fn endpoints(&self) -> Vec<String> {
        self.0
            .table
            .read()
            .endpoints
            .iter()
            .map(|e| e.url.clone())
            .collect()
    }

    /// Replaces the endpoint set. Endpoints that stay keep their queues;
    /// new ones get a forwarder (and replay a spill log an earlier run left
    /// for them); removed ones hand their spans to the re-router. Spill logs
    /// on disk for no current endpoint are re-routed too.
    pub fn set_endpoints(&self, urls: &[String]) -> Result<(), Error> {
        let mut urls: Vec<String> = urls.iter().map(|u| normalize_endpoint(u)).collect();
        urls.sort();
        urls.dedup();
        for u in &urls {
            if u.parse::<http::Uri>().is_err() {
                return Err(Error::InvalidEndpoint(u.clone()));
            }
        }
        let sh = &self.0;
        let old = sh.table.read().clone();
        let unchanged = old.endpoints.len() == urls.len()
            && old.endpoints.iter().zip(&urls).all(|(e, u)| &e.url == u);
        if unchanged && !old.endpoints.is_empty() {
            return Ok(());
        }
        let mut endpoints = Vec::with_capacity(urls.len());
        for url in &urls {
            match old.endpoints.iter().find(|e| &e.url == url) {
                Some(e) => endpoints.push(e.clone()),
                None => endpoints.push(self.add_endpoint(url)?),
            }
        }
        let hashes = endpoints.iter().map(|e| endpoint_hash(&e.url)).collect();
        *sh.table.write() = Arc::new(Table { endpoints, hashes });
        sh.metrics.endpoints.set(urls.len() as i64);
        for ep in old.endpoints.iter().filter(|e| !urls.contains(&e.url)) {
            self.retire_endpoint(ep);
        }
        self.adopt_stray_logs();
        self.update_gauges();
        sh.reroute.notify_one();
        Ok(())
    }

    /// A new endpoint with its forwarder (and group commit), replaying the
    /// log an earlier run, or a re-routing in progress, left for it.
    fn add_endpoint(&self, url: &str) -> Result<Arc<Endpoint>, Error> {
        let sh = &self.0;
        let dir = sh.cfg.spill_dir.join(dir_name(url));
        // A log being re-routed may belong to an endpoint that is back.
        let adopted = {
            let mut orphans = sh.orphans.lock();
            orphans
                .iter()
                .position(|l| l.dir() == dir)
                .map(|i| orphans.swap_remove(i))
        };
        let spill = match adopted {
            Some(l) => l,
            None => open_log(&sh.cfg, &dir)?,
        };
        let client = CollectorClient::new(url, sh.cfg.request_timeout, sh.cfg.tls.as_ref())
            .map_err(|_| Error::InvalidEndpoint(url.to_string()))?;
        let ep = Arc::new(Endpoint::new(
            url.to_string(),
            CircuitBreaker::new(sh.cfg.breaker.clone()),
            spill,
            sh.cfg.batch_max_spans,
        ));
        let stop_rx = ep.stop.subscribe();
        let mut tasks = sh.tasks.lock();
        let forward = forward::forward_loop(ep.clone(), self.clone(), client, stop_rx.clone());
        tasks.push(tokio::spawn(forward));
        if sh.cfg.durability == Durability::Disk {
            let sync = endpoint::sync_loop(ep.clone(), sh.cfg.fsync_delay, stop_rx);
            tasks.push(tokio::spawn(sync));
        }
        tracing::info!(endpoint = %url, "collector endpoint added");
        Ok(ep)
    }

    /// Stops an endpoint that left the set and hands its spans to the
    /// re-router.
    fn retire_endpoint(&self, ep: &Endpoint) {
        let sh = &self.0;
        tracing::info!(endpoint = %ep.url, "collector endpoint removed; re-routing its spans");
        let _ = ep.stop.send(Stop::Remove);
        let _ = sh.metrics.breaker_open.remove_label_values(&[&ep.url]);
        let (queue, spill) = {
            let mut st = ep.state.lock();
            (std::mem::take(&mut st.queue), st.spill.take())
        };
        for q in queue {
            sh.mem_bytes.fetch_sub(q.body.len(), Ordering::Relaxed);
            // With disk durability the queue only caches the log.
            if q.seq.is_none() {
                self.park_unrouted(q.spans, &q.body);
            }
        }
        if let Some(log) = spill {
            sh.orphans.lock().push(log);
        }
    }

    /// Opens spill logs on disk that belong to no current endpoint and are
    /// not open yet, for re-routing.
    fn adopt_stray_logs(&self) {
        let sh = &self.0;
        let Ok(entries) = std::fs::read_dir(&sh.cfg.spill_dir) else {
            return;
        };
        let table = sh.table.read().clone();
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() || path.file_name().is_some_and(|n| n == UNROUTED) {
                continue;
            }
            let owned = table
                .endpoints
                .iter()
                .any(|e| sh.cfg.spill_dir.join(dir_name(&e.url)) == path);
            let open = sh.orphans.lock().iter().any(|l| l.dir() == path);
            if owned || open {
                continue;
            }
            match open_log(&sh.cfg, &path) {
                Ok(log) => {
                    tracing::info!(dir = %path.display(), records = log.len(), "re-routing spans spilled for a former endpoint");
                    sh.orphans.lock().push(log);
                }
                Err(e) => {
                    tracing::warn!(dir = %path.display(), error = %e, "cannot open spill log")
                }
            }
        }
    }

    /// Takes a request from an application. Returns once its spans are
    /// durable (disk durability) or in the memory buffer or the spill log
    /// (memory durability).
    pub async fn accept(
        &self,
        req: ExportTraceServiceRequest,
        protocol: &str,
    ) -> Result<(), Error> {
        let n = span_count(&req);
        self.0
            .metrics
            .received
            .with_label_values(&[protocol])
            .inc_by(n as u64);
        let mut taken = 0;
        let mut tickets = Vec::new();
        let mut r = self.route(req, &mut taken, &mut tickets);
        if r.is_ok() {
            r = self.wait_durable(&tickets).await;
        }
        if r.is_err() {
            // The parts already taken stay (the client's retry of the whole
            // request sends them again; collectors keep one copy of each
            // span): only the rest was refused.
            let refused = if matches!(r, Err(Error::NotDurable)) {
                n
            } else {
                n.saturating_sub(taken)
            };
            self.0.metrics.refused.inc_by(refused as u64);
        }
        r
    }

    /// Waits until every appended record of `tickets` is durable.
    async fn wait_durable(&self, tickets: &[(Arc<Endpoint>, u64)]) -> Result<(), Error> {
        for (ep, seq) in tickets {
            ep.wait_durable(*seq, self.0.cfg.request_timeout).await?;
        }
        Ok(())
    }

    /// Routes `req` over the current endpoints, adding to `taken` the spans
    /// of each part taken and to `tickets` the log records to wait for.
    fn route(
        &self,
        req: ExportTraceServiceRequest,
        taken: &mut usize,
        tickets: &mut Vec<(Arc<Endpoint>, u64)>,
    ) -> Result<(), Error> {
        let sh = &self.0;
        let mut pending = vec![req];
        // The table can change between reading it and enqueueing; a part
        // that reaches a retired endpoint is routed again.
        for _ in 0..8 {
            let table = sh.table.read().clone();
            let mut retry = Vec::new();
            for req in pending {
                if table.endpoints.is_empty() {
                    let spans = span_count(&req);
                    self.spill_unrouted(spans, &req.encode_to_vec())?;
                    *taken += spans;
                    continue;
                }
                for (idx, part) in split(req, &table.hashes) {
                    let ep = &table.endpoints[idx];
                    for (body, spans) in batch::chunk(part, ep.limits(self)) {
                        match ep.enqueue(self, body, spans)? {
                            Enqueued::Retired(back) => retry.push(back),
                            Enqueued::Taken(seq) => {
                                *taken += spans;
                                if let Some(seq) = seq {
                                    tickets.push((ep.clone(), seq));
                                }
                            }
                        }
                    }
                }
            }
            if retry.is_empty() {
                return Ok(());
            }
            pending = retry;
        }
        for req in pending {
            let spans = span_count(&req);
            self.spill_unrouted(spans, &req.encode_to_vec())?;
            *taken += spans;
        }
        Ok(())
    }

    fn spill_unrouted(&self, spans: usize, encoded: &[u8]) -> Result<(), Error> {
        let sh = &self.0;
        let mut log = sh.unrouted.lock();
        append_checked(&sh.cfg, &mut log, spans, encoded)?;
        if sh.cfg.durability == Durability::Disk {
            // Rare (no endpoint at all, or re-routing): synced inline.
            log.sync().map_err(disk_error)?;
        }
        sh.metrics.spilled.inc_by(spans as u64);
        drop(log);
        sh.reroute.notify_one();
        Ok(())
    }

    /// Parks already-accepted spans for re-routing; they are lost only if
    /// the disk fails, and that is logged and counted.
    fn park_unrouted(&self, spans: usize, encoded: &[u8]) {
        if let Err(e) = self.spill_unrouted(spans, encoded) {
            tracing::error!(error = %e, spans, "cannot park spans for re-routing; they are lost");
            self.0
                .metrics
                .dropped
                .with_label_values(&["disk_error"])
                .inc_by(spans as u64);
        }
    }

    fn update_gauges(&self) {
        let sh = &self.0;
        sh.metrics
            .buffer_bytes
            .set(sh.mem_bytes.load(Ordering::Relaxed) as i64);
        let table = sh.table.read().clone();
        let mut spill: u64 = sh.unrouted.lock().unconsumed_bytes();
        spill += sh
            .orphans
            .lock()
            .iter()
            .map(SpillLog::unconsumed_bytes)
            .sum::<u64>();
        for ep in &table.endpoints {
            if let Some(l) = ep.state.lock().spill.as_ref() {
                spill += l.unconsumed_bytes();
            }
        }
        sh.metrics.spill_bytes.set(spill as i64);
    }

    /// Spans waiting in memory and in spill logs (for tests and shutdown).
    pub fn pending(&self) -> (usize, u64) {
        self.update_gauges();
        (
            self.0.mem_bytes.load(Ordering::Relaxed),
            self.0.metrics.spill_bytes.get() as u64,
        )
    }

    /// Stops forwarding: each endpoint delivers what it holds in memory
    /// within the shutdown timeout and spills the rest; spill logs are
    /// synced. Returns when every task has finished.
    pub async fn shutdown(&self) {
        let sh = &self.0;
        let _ = sh.shutdown.send(true);
        let table = sh.table.read().clone();
        for ep in &table.endpoints {
            let _ = ep.stop.send(Stop::Shutdown);
        }
        sh.reroute.notify_one();
        let tasks: Vec<_> = std::mem::take(&mut *sh.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
        if let Err(e) = sh.unrouted.lock().sync() {
            tracing::error!(error = %e, "syncing the unrouted spill log failed");
        }
        for log in sh.orphans.lock().iter_mut() {
            if let Err(e) = log.sync() {
                tracing::error!(error = %e, "syncing a spill log failed");
            }
        }
        self.update_gauges();
    }
}

fn open_log(cfg: &PipelineConfig, dir: &Path) -> Result<SpillLog, Error> {
    let fsync = match cfg.durability {
        // Appends only write; the group-commit task syncs them.
        Durability::Disk => FsyncPolicy::EveryN(u32::MAX),
        Durability::Memory => cfg.fsync,
    };
    SpillLog::open(
        dir,
        SpillConfig {
            segment_size: (cfg.spill_max_bytes / 8).clamp(64 << 10, 8 << 20),
            max_total_size: cfg.spill_max_bytes,
            fsync,
        },
    )
    .map_err(disk_error)
}

/// A spill error, with a full file system told apart (the client is asked
/// to retry).
fn disk_error(e: clew_reliability::SpillError) -> Error {
    use clew_reliability::SpillError;
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    match &e {
        SpillError::Io { source, .. } if matches!(source.raw_os_error(), Some(ENOSPC | EDQUOT)) => {
            Error::DiskFull
        }
        _ => Error::Spill(e),
    }
}

/// Appends a framed record unless that would take the log past its cap
/// (which would evict older, already-accepted spans). Returns its sequence
/// number.
fn append_checked(
    cfg: &PipelineConfig,
    log: &mut SpillLog,
    spans: usize,
    encoded: &[u8],
) -> Result<u64, Error> {
    let head = frame_head(spans);
    let need = (head.len() + encoded.len() + clew_reliability::spill::FRAME_HEADER_LEN) as u64;
    if log.disk_bytes() + need > cfg.spill_max_bytes {
        return Err(Error::Full);
    }
    log.append_parts(&[&head, encoded]).map_err(disk_error)
}
