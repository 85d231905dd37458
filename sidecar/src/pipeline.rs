//! The sidecar's forwarding pipeline: route, buffer, spill, forward, replay.
//!
//! ```text
//! accept(request) ─ split by trace ID (rendezvous hash) ─▶ one part per endpoint
//!   endpoint healthy and memory under its limit ─▶ memory queue ─┐
//!   breaker open, or memory full ─────────────────▶ spill log ───┤
//!                                                                ▼
//!   forwarder (one task per endpoint): spill log first, then memory,
//!   coalesced up to `batch_max_bytes`, through the endpoint's circuit breaker
//!     ok ─▶ commit the spill cursor / release the memory
//!     retryable failure ─▶ the batch goes to the spill log, back off
//!     permanent refusal ─▶ dropped and counted
//! ```
//!
//! Every endpoint has its own spill log (a directory named after its
//! address), so replay after an outage or a restart sends each collector
//! its own data in order and commits as it goes. When an endpoint leaves
//! the set, its memory queue and spill log are handed to the re-router,
//! which routes their spans again over the current endpoints; spans that
//! cannot be routed (no endpoint at all) wait in the `_unrouted` log.
//!
//! Spans are acknowledged to the application once they are in memory or in
//! the spill log. Delivery to collectors is at least once: a crash between a
//! send and its commit resends, and collectors store a span id once.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clew_tracer::reliability::{
    BreakerState, CircuitBreaker, CircuitBreakerConfig, FsyncPolicy, RetryPolicy, SpillConfig,
    SpillLog,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use parking_lot::{Mutex, RwLock};
use prost::Message as _;
use rand::SeedableRng as _;
use rand::rngs::SmallRng;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::client::{CollectorClient, SendError, frame, unframe};
use crate::metrics::Metrics;
use crate::routing::{endpoint_hash, span_count, split};

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
    /// Deadline of one export request.
    pub request_timeout: Duration,
    /// Per-endpoint circuit breaker.
    pub breaker: CircuitBreakerConfig,
    /// Backoff between failed sends to one endpoint.
    pub retry: RetryPolicy,
    /// How long shutdown tries to deliver the memory buffer before spilling it.
    pub shutdown_timeout: Duration,
    /// When spill appends are forced to disk.
    pub fsync: FsyncPolicy,
}

impl PipelineConfig {
    /// Defaults, spilling under `spill_dir`.
    pub fn new(spill_dir: impl Into<PathBuf>) -> Self {
        PipelineConfig {
            spill_dir: spill_dir.into(),
            buffer_bytes: 8 << 20,
            spill_max_bytes: 256 << 20,
            batch_max_bytes: 2 << 20,
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
        }
    }
}

/// Errors of the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The memory buffer and the spill log are both full.
    #[error("sidecar buffer is full; retry later")]
    Full,
    /// The spill log failed.
    #[error("spill log: {0}")]
    Spill(#[from] clew_tracer::reliability::SpillError),
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

/// Encoded spans waiting in memory.
#[derive(Debug)]
struct Queued {
    body: Bytes,
    spans: usize,
}

/// A batch being sent.
#[derive(Debug)]
struct Work {
    body: Bytes,
    spans: usize,
    source: Source,
}

#[derive(Debug, Clone, Copy)]
enum Source {
    /// From the memory queue: this many bytes count against the buffer.
    Memory { bytes: usize },
    /// From the spill log, up to and including this sequence number.
    Spill { last_seq: u64 },
}

#[derive(Debug)]
struct EpState {
    queue: VecDeque<Queued>,
    /// `None` once the endpoint is retired.
    spill: Option<SpillLog>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Run,
    /// Flush memory (or spill it) and stop.
    Shutdown,
    /// The endpoint left the set: stop at once.
    Remove,
}

/// One collector endpoint.
#[derive(Debug)]
struct Endpoint {
    url: String,
    breaker: CircuitBreaker,
    state: Mutex<EpState>,
    notify: Notify,
    stop: watch::Sender<Stop>,
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
        let task = tokio::spawn(reroute_loop(p.clone()));
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
            if let Some(e) = old.endpoints.iter().find(|e| &e.url == url) {
                endpoints.push(e.clone());
                continue;
            }
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
            let client = CollectorClient::new(url, sh.cfg.request_timeout)
                .map_err(|_| Error::InvalidEndpoint(url.clone()))?;
            let (stop, stop_rx) = watch::channel(Stop::Run);
            let ep = Arc::new(Endpoint {
                url: url.clone(),
                breaker: CircuitBreaker::new(sh.cfg.breaker.clone()),
                state: Mutex::new(EpState {
                    queue: VecDeque::new(),
                    spill: Some(spill),
                }),
                notify: Notify::new(),
                stop,
            });
            let task = tokio::spawn(forward_loop(ep.clone(), self.clone(), client, stop_rx));
            sh.tasks.lock().push(task);
            tracing::info!(endpoint = %url, "collector endpoint added");
            endpoints.push(ep);
        }
        let hashes = endpoints.iter().map(|e| endpoint_hash(&e.url)).collect();
        *sh.table.write() = Arc::new(Table { endpoints, hashes });
        sh.metrics.endpoints.set(urls.len() as i64);

        for ep in &old.endpoints {
            if urls.contains(&ep.url) {
                continue;
            }
            tracing::info!(endpoint = %ep.url, "collector endpoint removed; re-routing its spans");
            let _ = ep.stop.send(Stop::Remove);
            let _ = sh.metrics.breaker_open.remove_label_values(&[&ep.url]);
            let (queue, spill) = {
                let mut st = ep.state.lock();
                (std::mem::take(&mut st.queue), st.spill.take())
            };
            for q in queue {
                sh.mem_bytes.fetch_sub(q.body.len(), Ordering::Relaxed);
                self.park_unrouted(q.spans, &q.body);
            }
            if let Some(log) = spill {
                sh.orphans.lock().push(log);
            }
        }
        self.adopt_stray_logs();
        self.update_gauges();
        sh.reroute.notify_one();
        Ok(())
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

    /// Takes a request from an application. Returns once its spans are in
    /// the memory buffer or the spill log.
    pub fn accept(&self, req: ExportTraceServiceRequest, protocol: &str) -> Result<(), Error> {
        let n = span_count(&req);
        self.0
            .metrics
            .received
            .with_label_values(&[protocol])
            .inc_by(n as u64);
        let mut taken = 0;
        let r = self.route(req, &mut taken);
        if r.is_err() {
            // The parts already queued stay (the client's retry of the whole
            // request sends them again; collectors keep one copy of each
            // span): only the rest was refused.
            self.0
                .metrics
                .refused
                .inc_by(n.saturating_sub(taken) as u64);
        }
        r
    }

    /// Routes `req` over the current endpoints, adding to `taken` the spans
    /// of each part queued or spilled.
    fn route(&self, req: ExportTraceServiceRequest, taken: &mut usize) -> Result<(), Error> {
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
                    let spans = span_count(&part);
                    let body = Bytes::from(part.encode_to_vec());
                    match table.endpoints[idx].enqueue(self, body, spans)? {
                        Some(back) => retry.push(back),
                        None => *taken += spans,
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
            self.0.metrics.dropped.inc_by(spans as u64);
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
    Ok(SpillLog::open(
        dir,
        SpillConfig {
            segment_size: (cfg.spill_max_bytes / 8).clamp(64 << 10, 8 << 20),
            max_total_size: cfg.spill_max_bytes,
            fsync: cfg.fsync,
        },
    )?)
}

/// Appends a framed record unless that would take the log past its cap
/// (which would evict older, already-accepted spans).
fn append_checked(
    cfg: &PipelineConfig,
    log: &mut SpillLog,
    spans: usize,
    encoded: &[u8],
) -> Result<(), Error> {
    let record = frame(spans, encoded);
    let need = record.len() as u64 + clew_tracer::reliability::spill::FRAME_HEADER_LEN as u64;
    if log.disk_bytes() + need > cfg.spill_max_bytes {
        return Err(Error::Full);
    }
    log.append(&record)?;
    Ok(())
}

impl Endpoint {
    /// Queues a part in memory, or spills it when the breaker is open or
    /// memory is full. Returns the part back when the endpoint was retired.
    fn enqueue(
        &self,
        p: &Pipeline,
        body: Bytes,
        spans: usize,
    ) -> Result<Option<ExportTraceServiceRequest>, Error> {
        let sh = &p.0;
        let mut st = self.state.lock();
        let Some(log) = st.spill.as_mut() else {
            drop(st);
            return Ok(ExportTraceServiceRequest::decode(body).ok());
        };
        let len = body.len();
        let open = self.breaker.state() == BreakerState::Open;
        let fits = sh.mem_bytes.load(Ordering::Relaxed) + len <= sh.cfg.buffer_bytes;
        if open || !fits {
            append_checked(&sh.cfg, log, spans, &body)?;
            sh.metrics.spilled.inc_by(spans as u64);
        } else {
            st.queue.push_back(Queued { body, spans });
            sh.mem_bytes.fetch_add(len, Ordering::Relaxed);
        }
        drop(st);
        self.notify.notify_one();
        Ok(None)
    }

    /// The next batch: the spill log first (it holds the oldest spans),
    /// then memory, coalesced up to `batch_max_bytes`.
    fn next_work(&self, p: &Pipeline, memory_only: bool) -> Option<Work> {
        let sh = &p.0;
        let mut st = self.state.lock();
        let max = sh.cfg.batch_max_bytes;
        if !memory_only && let Some(log) = st.spill.as_mut().filter(|l| !l.is_empty()) {
            match log.read_batch(4096, max) {
                Ok(records) if !records.is_empty() => {
                    let mut body = BytesMut::new();
                    let mut spans = 0;
                    let mut last_seq = 0;
                    for (seq, payload) in &records {
                        last_seq = *seq;
                        match unframe(payload) {
                            Some((n, encoded)) => {
                                spans += n;
                                body.extend_from_slice(encoded);
                            }
                            None => sh.metrics.spill_corrupt.inc(),
                        }
                    }
                    return Some(Work {
                        body: body.freeze(),
                        spans,
                        source: Source::Spill { last_seq },
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(endpoint = %self.url, error = %e, "reading the spill log failed")
                }
            }
        }
        let first = st.queue.pop_front()?;
        if st
            .queue
            .front()
            .is_none_or(|q| first.body.len() + q.body.len() > max)
        {
            let bytes = first.body.len();
            return Some(Work {
                body: first.body,
                spans: first.spans,
                source: Source::Memory { bytes },
            });
        }
        let mut body = BytesMut::from(&first.body[..]);
        let mut spans = first.spans;
        while let Some(q) = st.queue.front() {
            if body.len() + q.body.len() > max {
                break;
            }
            if let Some(q) = st.queue.pop_front() {
                body.extend_from_slice(&q.body);
                spans += q.spans;
            }
        }
        let bytes = body.len();
        Some(Work {
            body: body.freeze(),
            spans,
            source: Source::Memory { bytes },
        })
    }

    /// A batch was delivered (or refused for good): release it.
    fn done(&self, p: &Pipeline, work: &Work) {
        let sh = &p.0;
        match work.source {
            Source::Memory { bytes } => {
                sh.mem_bytes.fetch_sub(bytes, Ordering::Relaxed);
            }
            Source::Spill { last_seq } => {
                let mut st = self.state.lock();
                if let Some(log) = st.spill.as_mut()
                    && let Err(e) = log.commit(last_seq)
                {
                    tracing::error!(endpoint = %self.url, error = %e, "committing the spill cursor failed");
                }
            }
        }
    }

    /// A batch could not be delivered now: memory batches go to the spill
    /// log (or back to the front of the queue when the log is full); spill
    /// batches simply stay unconsumed.
    fn park(&self, p: &Pipeline, work: Work) {
        let Source::Memory { bytes } = work.source else {
            return;
        };
        let sh = &p.0;
        let mut st = self.state.lock();
        let Some(log) = st.spill.as_mut() else {
            drop(st);
            sh.mem_bytes.fetch_sub(bytes, Ordering::Relaxed);
            p.park_unrouted(work.spans, &work.body);
            return;
        };
        match append_checked(&sh.cfg, log, work.spans, &work.body) {
            Ok(()) => {
                sh.mem_bytes.fetch_sub(bytes, Ordering::Relaxed);
                sh.metrics.spilled.inc_by(work.spans as u64);
            }
            Err(e) => {
                if !matches!(e, Error::Full) {
                    tracing::error!(endpoint = %self.url, error = %e, "spilling failed; keeping spans in memory");
                }
                st.queue.push_front(Queued {
                    body: work.body,
                    spans: work.spans,
                });
            }
        }
    }

    /// Moves the whole memory queue to the spill log (the breaker is open).
    fn spill_queue(&self, p: &Pipeline) {
        while let Some(work) = self.next_work(p, true) {
            let before = self.state.lock().queue.len();
            self.park(p, work);
            if self.state.lock().queue.len() > before {
                // The log is full: the batch went back to memory.
                break;
            }
        }
    }
}

async fn forward_loop(
    ep: Arc<Endpoint>,
    p: Pipeline,
    mut client: CollectorClient,
    mut stop: watch::Receiver<Stop>,
) {
    let sh = p.0.clone();
    let mut rng = SmallRng::from_os_rng();
    let mut failures: u32 = 0;
    let open_gauge = sh.metrics.breaker_open.with_label_values(&[&ep.url]);
    loop {
        match *stop.borrow() {
            Stop::Run => {}
            Stop::Remove => return,
            Stop::Shutdown => break,
        }
        let Some(work) = ep.next_work(&p, false) else {
            tokio::select! {
                _ = ep.notify.notified() => {}
                _ = stop.changed() => {}
                // A fallback poll: a spill log written by `enqueue` also notifies.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        };
        let permit = match ep.breaker.try_acquire() {
            Ok(permit) => permit,
            Err(open) => {
                open_gauge.set(1);
                ep.park(&p, work);
                ep.spill_queue(&p);
                p.update_gauges();
                let wait = open
                    .retry_after
                    .clamp(Duration::from_millis(20), Duration::from_secs(1));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
        };
        let started = Instant::now();
        match client.export(work.body.clone()).await {
            Ok(rejected) => {
                permit.success();
                open_gauge.set(i64::from(ep.breaker.state() != BreakerState::Closed));
                failures = 0;
                sh.metrics
                    .send_seconds
                    .observe(started.elapsed().as_secs_f64());
                ep.done(&p, &work);
                sh.metrics.forwarded.inc_by(work.spans as u64);
                if matches!(work.source, Source::Spill { .. }) {
                    sh.metrics.replayed.inc_by(work.spans as u64);
                }
                if rejected > 0 {
                    sh.metrics.rejected.inc_by(rejected as u64);
                }
            }
            Err(SendError::Retryable(status)) => {
                permit.failure();
                // Open or half-open: either way the endpoint is not trusted.
                open_gauge.set(i64::from(ep.breaker.state() != BreakerState::Closed));
                sh.metrics.send_failures.with_label_values(&[&ep.url]).inc();
                if failures == 0 {
                    tracing::warn!(endpoint = %ep.url, code = ?status.code(), message = status.message(), "sending to collector failed; buffering and retrying");
                }
                ep.park(&p, work);
                if ep.breaker.state() != BreakerState::Closed {
                    // The endpoint is not trusted: what waits in memory goes
                    // to disk now, not after the back-off (which can outlast
                    // the cool-down, so the loop may never see `Open`).
                    ep.spill_queue(&p);
                }
                let delay = sh.cfg.retry.delay(failures, &mut rng);
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => {}
                }
            }
            Err(SendError::Permanent(status)) => {
                // The collector answered: it is up, the data is the problem.
                permit.success();
                tracing::error!(endpoint = %ep.url, code = ?status.code(), message = status.message(), spans = work.spans, "collector refused spans for good; dropping them");
                sh.metrics.dropped.inc_by(work.spans as u64);
                ep.done(&p, &work);
            }
        }
        p.update_gauges();
    }
    // Shutdown: deliver memory within the deadline, spill the rest.
    let deadline = tokio::time::Instant::now() + sh.cfg.shutdown_timeout;
    while let Some(work) = ep.next_work(&p, true) {
        let healthy = ep.breaker.state() != BreakerState::Open;
        let sent = if healthy && tokio::time::Instant::now() < deadline {
            matches!(
                tokio::time::timeout_at(deadline, client.export(work.body.clone())).await,
                Ok(Ok(_))
            )
        } else {
            false
        };
        if sent {
            ep.done(&p, &work);
            sh.metrics.forwarded.inc_by(work.spans as u64);
            continue;
        }
        let spans = work.spans;
        let before = ep.state.lock().queue.len();
        ep.park(&p, work);
        if ep.state.lock().queue.len() > before {
            tracing::error!(endpoint = %ep.url, spans, "spill log full at shutdown; spans lost");
            sh.metrics.dropped.inc_by(spans as u64);
            let mut st = ep.state.lock();
            if let Some(q) = st.queue.pop_front() {
                sh.mem_bytes.fetch_sub(q.body.len(), Ordering::Relaxed);
            }
        }
    }
    if let Some(log) = ep.state.lock().spill.as_mut()
        && let Err(e) = log.sync()
    {
        tracing::error!(endpoint = %ep.url, error = %e, "syncing the spill log failed");
    }
}

/// Drains the unrouted log and the logs of former endpoints through
/// [`Pipeline::route`].
async fn reroute_loop(p: Pipeline) {
    let sh = p.0.clone();
    let mut shutdown = sh.shutdown.subscribe();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let mut progress = false;
        if !sh.table.read().endpoints.is_empty() {
            progress |= drain_one(&p, &sh.unrouted);
            let orphans: Vec<SpillLog> = std::mem::take(&mut *sh.orphans.lock());
            for log in orphans {
                let log = Mutex::new(log);
                progress |= drain_one(&p, &log);
                let log = log.into_inner();
                if log.is_empty() {
                    let dir = log.dir().to_path_buf();
                    drop(log);
                    if let Err(e) = std::fs::remove_dir_all(&dir) {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove drained spill log");
                    }
                } else {
                    sh.orphans.lock().push(log);
                }
            }
        }
        if progress {
            p.update_gauges();
            continue;
        }
        tokio::select! {
            _ = sh.reroute.notified() => {}
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Routes one batch of records from `log`. Returns whether any moved.
fn drain_one(p: &Pipeline, log: &Mutex<SpillLog>) -> bool {
    let records = match log.lock().read_batch(1024, 4 << 20) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "reading a spill log for re-routing failed");
            return false;
        }
    };
    let mut committed = None;
    for (seq, payload) in &records {
        let req = unframe(payload).and_then(|(_, b)| ExportTraceServiceRequest::decode(b).ok());
        match req {
            None => p.0.metrics.spill_corrupt.inc(),
            Some(req) => {
                // A part routed before a failure goes again with the whole
                // record next time; collectors keep one copy of each span.
                if p.route(req, &mut 0).is_err() {
                    break;
                }
            }
        }
        committed = Some(*seq);
    }
    match committed {
        Some(seq) => {
            if let Err(e) = log.lock().commit(seq) {
                tracing::error!(error = %e, "committing a re-routed spill log failed");
            }
            true
        }
        None => false,
    }
}
