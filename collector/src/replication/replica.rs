//! The replica's side: a log per origin incarnation of the copies this
//! collector keeps, released as the origin stores its batches, and taken
//! over when the origin is gone.
//!
//! Each log is a [`Wal`] (group commit, CRC-framed segments, a checkpoint)
//! in its own directory under `replicas/`, with a file `origin` naming the
//! origin and its incarnation; every record is tagged with the origin's
//! batch number. New copies go to the origin incarnation's *active* log;
//! logs found at start-up, or of an older incarnation, only wait to be
//! released or taken over.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use prost::bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::members::Members;
use super::metrics::ReplicationMetrics;
use crate::wal::{self, Wal, WalConfig, WalRecord};

/// Why a copy could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The replica log is at its size limit.
    #[error("replica log full")]
    Full,
    /// The replica log could not be opened or written.
    #[error("replica log unavailable")]
    Unavailable,
}

impl From<wal::Error> for ReplicaError {
    fn from(e: wal::Error) -> Self {
        match e {
            wal::Error::Full { .. } => ReplicaError::Full,
            e => {
                tracing::error!(error = %e, "replica log");
                ReplicaError::Unavailable
            }
        }
    }
}

/// One origin incarnation's log.
#[derive(Debug)]
struct OriginLog {
    origin: String,
    incarnation: u64,
    dir: PathBuf,
    wal: Wal,
    /// Batch number → the log's records holding it.
    held: Mutex<BTreeMap<u64, Vec<u64>>>,
    released_below: AtomicU64,
    last_seen: Mutex<Instant>,
    /// Takes new copies (else it only waits to be released or taken over).
    active: AtomicBool,
}

impl OriginLog {
    /// Releases every batch below `below`.
    fn release_below(&self, below: u64) {
        if self.released_below.fetch_max(below, Ordering::AcqRel) >= below {
            return;
        }
        let mut held = self.held.lock();
        let keep = held.split_off(&below);
        for seq in std::mem::replace(&mut *held, keep).into_values().flatten() {
            self.wal.release(seq);
        }
    }

    /// Keeps record `seq` for batch `batch_seq`, unless the batch is
    /// already released.
    fn hold(&self, batch_seq: u64, seq: u64) {
        let mut held = self.held.lock();
        if batch_seq < self.released_below.load(Ordering::Acquire) {
            self.wal.release(seq);
        } else {
            held.entry(batch_seq).or_default().push(seq);
        }
    }

    fn held(&self) -> usize {
        self.held.lock().len()
    }
}

/// The spans of a copy, as they came.
#[derive(Debug, Clone)]
pub enum Copy {
    /// Encoded clew `Span`s.
    Spans(Vec<Bytes>),
    /// An OTLP/protobuf request body, and how many spans it holds.
    Otlp(Bytes, usize),
}

impl Copy {
    fn len(&self) -> usize {
        match self {
            Copy::Spans(spans) => spans.len(),
            Copy::Otlp(_, n) => *n,
        }
    }
}

/// A log handed over to be stored by this collector.
#[derive(Debug)]
pub struct Takeover {
    /// The origin.
    pub origin: String,
    /// Why: `left`, `unreachable` or `incarnation`.
    pub reason: &'static str,
    log: Arc<OriginLog>,
}

impl Takeover {
    /// Closes the log and reads back its batches not yet released.
    pub async fn records(&self) -> Result<Vec<WalRecord>, wal::Error> {
        self.log.wal.shutdown().await?;
        let dir = self.log.dir.clone();
        let below = self.log.released_below.load(Ordering::Acquire);
        let (reopened, records) =
            tokio::task::spawn_blocking(move || Wal::open(wal_dir(&dir), replica_wal_config(true)))
                .await
                .map_err(|_| wal::Error::Closed)??;
        drop(reopened);
        Ok(records.into_iter().filter(|r| r.tag >= below).collect())
    }

    /// Deletes the log: its batches are stored.
    pub async fn finish(self) -> std::io::Result<()> {
        let dir = self.log.dir.clone();
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir))
            .await
            .map_err(std::io::Error::other)?
    }
}

fn wal_dir(log_dir: &Path) -> PathBuf {
    log_dir.join("wal")
}

fn replica_wal_config(fsync: bool) -> WalConfig {
    WalConfig {
        fsync,
        ..WalConfig::default()
    }
}

/// The copies this collector keeps for its peers.
#[derive(Debug, Clone)]
pub struct ReplicaStore {
    inner: Arc<StoreInner>,
}

#[derive(Debug)]
struct StoreInner {
    dir: PathBuf,
    fsync: bool,
    members: watch::Receiver<Arc<Members>>,
    takeover_after: Duration,
    logs: RwLock<Vec<Arc<OriginLog>>>,
    opening: tokio::sync::Mutex<()>,
    takeovers: mpsc::UnboundedSender<Takeover>,
    metrics: Arc<ReplicationMetrics>,
}

impl ReplicaStore {
    /// Opens the replica logs under `dir` (blocking I/O: call at start-up).
    /// Logs taken over are sent to `takeovers`.
    pub fn open(
        dir: PathBuf,
        fsync: bool,
        members: watch::Receiver<Arc<Members>>,
        takeover_after: Duration,
        metrics: Arc<ReplicationMetrics>,
        takeovers: mpsc::UnboundedSender<Takeover>,
    ) -> Result<Self, wal::Error> {
        std::fs::create_dir_all(&dir).map_err(wal::Error::Io)?;
        let mut logs = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(wal::Error::Io)? {
            let path = entry.map_err(wal::Error::Io)?.path();
            match reopen(&path, fsync)? {
                Some(log) => logs.push(Arc::new(log)),
                None => {
                    tracing::warn!(dir = %path.display(), "not a replica log; removing it");
                    let _ = std::fs::remove_dir_all(&path);
                }
            }
        }
        if !logs.is_empty() {
            tracing::info!(logs = logs.len(), "replica logs reopened");
        }
        Ok(ReplicaStore {
            inner: Arc::new(StoreInner {
                dir,
                fsync,
                members,
                takeover_after,
                logs: RwLock::new(logs),
                opening: tokio::sync::Mutex::new(()),
                takeovers,
                metrics,
            }),
        })
    }

    /// The members as known now.
    pub fn members(&self) -> Arc<Members> {
        Arc::clone(&self.inner.members.borrow())
    }

    /// The metrics.
    pub fn metrics(&self) -> &ReplicationMetrics {
        &self.inner.metrics
    }

    /// Keeps `spans` (encoded; batch `batch_seq`, none for a heartbeat) for
    /// `origin`'s incarnation `incarnation` and releases what it says is
    /// stored. Returns once the copy is durable.
    pub async fn keep(
        &self,
        origin: &str,
        incarnation: u64,
        batch_seq: u64,
        released_below: u64,
        spans: Copy,
    ) -> Result<(), ReplicaError> {
        let log = self.active_log(origin, incarnation).await?;
        for l in self.inner.logs.read().iter() {
            if l.incarnation == incarnation && l.origin == origin {
                *l.last_seen.lock() = Instant::now();
                l.release_below(released_below);
            }
        }
        if spans.len() == 0 || batch_seq < log.released_below.load(Ordering::Acquire) {
            return Ok(());
        }
        let n = spans.len() as u64;
        let appended = match &spans {
            Copy::Spans(spans) => log.wal.append_encoded_tagged(spans, batch_seq).await?,
            Copy::Otlp(body, _) => log.wal.append_otlp_tagged(body, batch_seq).await?,
        };
        log.hold(batch_seq, appended.into_held_seq());
        let m = &self.inner.metrics;
        m.replica_batches.with_label_values(&[origin]).inc();
        m.replica_spans.with_label_values(&[origin]).inc_by(n);
        Ok(())
    }

    /// The active log of `origin`'s `incarnation`, opened on first use;
    /// logs of its other incarnations are taken over.
    async fn active_log(
        &self,
        origin: &str,
        incarnation: u64,
    ) -> Result<Arc<OriginLog>, ReplicaError> {
        let find = || {
            self.inner
                .logs
                .read()
                .iter()
                .find(|l| {
                    l.incarnation == incarnation
                        && l.origin == origin
                        && l.active.load(Ordering::Acquire)
                })
                .cloned()
        };
        if let Some(log) = find() {
            return Ok(log);
        }
        let _opening = self.inner.opening.lock().await;
        if let Some(log) = find() {
            return Ok(log);
        }
        let dir = self.inner.dir.join(format!(
            "{}-{incarnation:016x}-{}",
            sanitize(origin),
            clew_model::now_unix_nanos()
        ));
        let (origin_owned, fsync) = (origin.to_owned(), self.inner.fsync);
        let log =
            tokio::task::spawn_blocking(move || create(dir, origin_owned, incarnation, fsync))
                .await
                .map_err(|_| ReplicaError::Unavailable)??;
        let log = Arc::new(log);
        self.inner.logs.write().push(Arc::clone(&log));
        tracing::info!(
            origin,
            incarnation = format!("{incarnation:016x}"),
            "keeping copies for a new origin incarnation"
        );
        self.take_over_where(
            |l| l.origin == origin && l.incarnation != incarnation,
            "incarnation",
        );
        Ok(log)
    }

    /// Hands every log matching `which` with batches held to takeover, and
    /// deletes those with none.
    fn take_over_where(&self, which: impl Fn(&OriginLog) -> bool, reason: &'static str) {
        let gone: Vec<Arc<OriginLog>> = {
            let mut logs = self.inner.logs.write();
            let (gone, keep) = logs.drain(..).partition(|l| which(l));
            *logs = keep;
            gone
        };
        for log in gone {
            log.active.store(false, Ordering::Release);
            let origin = log.origin.clone();
            if log.held() == 0 {
                let dir = log.dir.clone();
                tokio::spawn(async move {
                    let _ = log.wal.shutdown().await;
                    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
                });
                continue;
            }
            tracing::warn!(origin = %origin, reason, batches = log.held(), "taking over an origin's unreleased batches");
            self.inner
                .metrics
                .takeovers
                .with_label_values(&[reason])
                .inc();
            let _ = self.inner.takeovers.send(Takeover {
                origin,
                reason,
                log,
            });
        }
    }

    /// One round of the periodic check: takes over the logs of origins
    /// that left the set or were not heard from for `takeover_after`;
    /// updates the gauges.
    pub fn check(&self) {
        let members = self.members();
        let after = self.inner.takeover_after;
        self.take_over_where(|l| !members.is_peer(&l.origin), "left");
        self.take_over_where(|l| l.last_seen.lock().elapsed() > after, "unreachable");
        let m = &self.inner.metrics;
        let mut disk = 0u64;
        m.replica_held.reset();
        for log in self.inner.logs.read().iter() {
            disk += log.wal.stats().disk_bytes.load(Ordering::Relaxed);
            m.replica_held
                .with_label_values(&[&log.origin])
                .add(log.held() as i64);
        }
        m.replica_disk_bytes
            .set(i64::try_from(disk).unwrap_or(i64::MAX));
    }

    /// Runs [`check`](Self::check) every `every` until `stop`.
    pub async fn check_loop(self, every: Duration, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.check(),
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Persists every log's checkpoint and stops their writers.
    pub async fn shutdown(&self) {
        let logs: Vec<Arc<OriginLog>> = self.inner.logs.read().clone();
        for log in logs {
            if let Err(e) = log.wal.shutdown().await {
                tracing::warn!(origin = %log.origin, error = %e, "closing a replica log");
            }
        }
    }
}

/// A directory name for an origin address.
fn sanitize(origin: &str) -> String {
    origin
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Makes a new, active log in `dir`.
fn create(
    dir: PathBuf,
    origin: String,
    incarnation: u64,
    fsync: bool,
) -> Result<OriginLog, ReplicaError> {
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join("origin.tmp");
        std::fs::write(&tmp, format!("{origin}\n{incarnation:016x}\n"))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, dir.join("origin"))?;
        std::fs::File::open(&dir)?.sync_all()
    };
    write().map_err(|e| {
        tracing::error!(dir = %dir.display(), error = %e, "creating a replica log");
        ReplicaError::Unavailable
    })?;
    let (wal, _) = Wal::open(wal_dir(&dir), replica_wal_config(fsync))?;
    Ok(OriginLog {
        origin,
        incarnation,
        dir,
        wal,
        held: Mutex::new(BTreeMap::new()),
        released_below: AtomicU64::new(0),
        last_seen: Mutex::new(Instant::now()),
        active: AtomicBool::new(true),
    })
}

/// Reopens a log found at start-up (inactive: it waits to be released or
/// taken over); `None` when `dir` is not a replica log.
fn reopen(dir: &Path, fsync: bool) -> Result<Option<OriginLog>, wal::Error> {
    let Ok(text) = std::fs::read_to_string(dir.join("origin")) else {
        return Ok(None);
    };
    let mut lines = text.lines();
    let (Some(origin), Some(inc)) = (lines.next(), lines.next()) else {
        return Ok(None);
    };
    let Ok(incarnation) = u64::from_str_radix(inc, 16) else {
        return Ok(None);
    };
    let (wal, records) = Wal::open(wal_dir(dir), replica_wal_config(fsync))?;
    let mut held: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for r in records {
        held.entry(r.tag).or_default().push(r.seq);
    }
    Ok(Some(OriginLog {
        origin: origin.to_owned(),
        incarnation,
        dir: dir.to_path_buf(),
        wal,
        held: Mutex::new(held),
        released_below: AtomicU64::new(0),
        last_seen: Mutex::new(Instant::now()),
        active: AtomicBool::new(false),
    }))
}
