//! One collector endpoint: its memory queue, its disk log, and the group
//! commit that makes appends durable.
//!
//! With [`Durability::Disk`] every accepted record is appended to the log,
//! and the queue is a cache of a contiguous run of the log's records, so
//! that forwarding rarely reads the disk; a batch is released by committing
//! the log's cursor past it. With [`Durability::Memory`] the queue holds
//! records that are nowhere else, and only what could not be sent (or did
//! not fit in memory) is appended to the log.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clew_reliability::{BreakerState, CircuitBreaker, SpillLog};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use parking_lot::Mutex;
use prost::Message as _;
use tokio::sync::{Notify, watch};

use super::batch::{Batch, Coalescer, Limits};
use super::{Durability, Error, Pipeline, append_checked};
use crate::client::unframe;

/// Encoded spans waiting in memory.
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) body: Bytes,
    pub(super) spans: usize,
    /// The record's sequence number in the log (disk durability).
    pub(super) seq: Option<u64>,
}

/// A batch being sent.
#[derive(Debug)]
pub(super) struct Work {
    pub(super) batch: Batch,
    pub(super) source: Source,
    /// Read back from the disk (a replay), not from memory.
    pub(super) from_disk: bool,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Source {
    /// Popped from the memory queue: this many bytes count against the
    /// buffer (memory durability).
    Memory { bytes: usize },
    /// Log records up to and including this sequence number.
    Log { last_seq: u64 },
}

#[derive(Debug)]
pub(super) struct EpState {
    pub(super) queue: VecDeque<Queued>,
    /// `None` once the endpoint is retired.
    pub(super) spill: Option<SpillLog>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    Run,
    /// Flush memory (or spill it) and stop.
    Shutdown,
    /// The endpoint left the set: stop at once.
    Remove,
}

/// What [`Endpoint::enqueue`] did with a part.
pub(super) enum Enqueued {
    /// Taken; with disk durability, its record's sequence number, durable
    /// once [`Endpoint::wait_durable`] says so.
    Taken(Option<u64>),
    /// The endpoint was retired: route the part again.
    Retired(ExportTraceServiceRequest),
}

/// One collector endpoint.
#[derive(Debug)]
pub(super) struct Endpoint {
    pub(super) url: String,
    pub(super) breaker: CircuitBreaker,
    pub(super) state: Mutex<EpState>,
    /// Wakes the forwarder.
    pub(super) notify: Notify,
    pub(super) stop: watch::Sender<Stop>,
    /// Every record with a lower sequence number is on stable storage.
    pub(super) durable: watch::Sender<u64>,
    /// Every record with a lower sequence number was acknowledged by the
    /// collector (the log's cursor).
    pub(super) delivered: watch::Sender<u64>,
    /// Wakes the group-commit task.
    pub(super) sync_wanted: Notify,
    /// Most spans per request: the configured limit, lowered to what the
    /// collector says its limit is when it refuses a request as too large.
    pub(super) max_spans: AtomicUsize,
}

impl Endpoint {
    pub(super) fn new(
        url: String,
        breaker: CircuitBreaker,
        spill: SpillLog,
        max_spans: usize,
    ) -> Self {
        let next = spill.next_seq();
        let (stop, _) = watch::channel(Stop::Run);
        Endpoint {
            url,
            breaker,
            state: Mutex::new(EpState {
                queue: VecDeque::new(),
                spill: Some(spill),
            }),
            notify: Notify::new(),
            stop,
            durable: watch::channel(next).0,
            delivered: watch::channel(0).0,
            sync_wanted: Notify::new(),
            max_spans: AtomicUsize::new(max_spans),
        }
    }

    pub(super) fn limits(&self, p: &Pipeline) -> Limits {
        Limits {
            max_spans: self.max_spans.load(Ordering::Relaxed).max(1),
            max_bytes: p.0.cfg.batch_max_bytes,
        }
    }

    /// Takes a part: with disk durability into the log (and memory when it
    /// has room); with memory durability into memory, or the spill log when
    /// the breaker is open or memory is full.
    pub(super) fn enqueue(
        &self,
        p: &Pipeline,
        body: Bytes,
        spans: usize,
    ) -> Result<Enqueued, Error> {
        let sh = &p.0;
        let mut st = self.state.lock();
        let Some(log) = st.spill.as_mut() else {
            drop(st);
            let req = ExportTraceServiceRequest::decode(body).unwrap_or_default();
            return Ok(Enqueued::Retired(req));
        };
        let len = body.len();
        let fits = sh.mem_bytes.load(Ordering::Relaxed) + len <= sh.cfg.buffer_bytes;
        let taken = match sh.cfg.durability {
            Durability::Disk => {
                let seq = append_checked(&sh.cfg, log, spans, &body)?;
                let contiguous = st
                    .queue
                    .back()
                    .is_none_or(|q| q.seq == Some(seq.wrapping_sub(1)));
                let open = self.breaker.state() == BreakerState::Open;
                if fits && contiguous && !open {
                    st.queue.push_back(Queued {
                        body,
                        spans,
                        seq: Some(seq),
                    });
                    sh.mem_bytes.fetch_add(len, Ordering::Relaxed);
                } else {
                    // Only on disk: forwarding will read it back.
                    sh.metrics.spilled.inc_by(spans as u64);
                }
                self.sync_wanted.notify_one();
                Some(seq)
            }
            Durability::Memory => {
                if self.breaker.state() == BreakerState::Open || !fits {
                    append_checked(&sh.cfg, log, spans, &body)?;
                    sh.metrics.spilled.inc_by(spans as u64);
                } else {
                    st.queue.push_back(Queued {
                        body,
                        spans,
                        seq: None,
                    });
                    sh.mem_bytes.fetch_add(len, Ordering::Relaxed);
                }
                None
            }
        };
        drop(st);
        self.notify.notify_one();
        Ok(Enqueued::Taken(taken))
    }

    /// Waits until the record `seq` is on stable storage or acknowledged
    /// by the collector, whichever comes first.
    pub(super) async fn wait_durable(&self, seq: u64, timeout: Duration) -> Result<(), Error> {
        let mut durable = self.durable.subscribe();
        let mut delivered = self.delivered.subscribe();
        let safe = async {
            loop {
                if *durable.borrow_and_update() > seq || *delivered.borrow_and_update() > seq {
                    return;
                }
                tokio::select! {
                    r = durable.changed() => if r.is_err() { std::future::pending::<()>().await },
                    r = delivered.changed() => if r.is_err() { std::future::pending::<()>().await },
                }
            }
        };
        tokio::time::timeout(timeout, safe)
            .await
            .map_err(|_| Error::NotDurable)
    }

    /// The next batch. Memory durability: the spill log first (it holds
    /// the oldest spans), then memory. Disk durability: the log from its
    /// cursor, read from memory where the queue caches it.
    pub(super) fn next_work(&self, p: &Pipeline, memory_only: bool) -> Option<Work> {
        let limits = self.limits(p);
        let mut st = self.state.lock();
        if p.0.cfg.durability == Durability::Disk {
            return self.next_logged(p, &mut st, limits);
        }
        if !memory_only && let Some(work) = self.next_spilled(p, &mut st, limits) {
            return Some(work);
        }
        let mut c = Coalescer::new(limits);
        while let Some(q) = st.queue.front() {
            if !c.fits(q.body.len(), q.spans) {
                break;
            }
            if let Some(q) = st.queue.pop_front() {
                c.push(q.body, q.spans);
            }
        }
        if c.is_empty() {
            return None;
        }
        let batch = c.finish();
        let bytes = batch.body.len();
        Some(Work {
            batch,
            source: Source::Memory { bytes },
            from_disk: false,
        })
    }

    /// Memory durability: the oldest spilled records, as one batch.
    fn next_spilled(&self, p: &Pipeline, st: &mut EpState, limits: Limits) -> Option<Work> {
        let log = st.spill.as_mut().filter(|l| !l.is_empty())?;
        let cursor = log.cursor();
        read_log(p, &self.url, log, cursor, u64::MAX, limits)
    }

    /// Disk durability: the records from the log's cursor on, from memory
    /// when the queue starts there, else from the disk up to where the
    /// queue starts.
    fn next_logged(&self, p: &Pipeline, st: &mut EpState, limits: Limits) -> Option<Work> {
        let (cursor, empty) = st.spill.as_ref().map(|l| (l.cursor(), l.is_empty()))?;
        if empty {
            return None;
        }
        let front = st.queue.front().and_then(|q| q.seq);
        if front != Some(cursor) {
            let end = front.filter(|&f| f > cursor).unwrap_or(u64::MAX);
            let log = st.spill.as_mut()?;
            return read_log(p, &self.url, log, cursor, end, limits);
        }
        let mut c = Coalescer::new(limits);
        let mut last_seq = cursor;
        for q in &st.queue {
            if !c.fits(q.body.len(), q.spans) {
                break;
            }
            c.push(q.body.clone(), q.spans);
            last_seq = q.seq.unwrap_or(last_seq);
        }
        Some(Work {
            batch: c.finish(),
            source: Source::Log { last_seq },
            from_disk: false,
        })
    }

    /// A batch was delivered (or refused for good): release it.
    pub(super) fn done(&self, p: &Pipeline, work: &Work) {
        let sh = &p.0;
        match work.source {
            Source::Memory { bytes } => {
                sh.mem_bytes.fetch_sub(bytes, Ordering::Relaxed);
            }
            Source::Log { last_seq } => {
                let mut st = self.state.lock();
                while st
                    .queue
                    .front()
                    .is_some_and(|q| q.seq.is_some_and(|s| s <= last_seq))
                {
                    if let Some(q) = st.queue.pop_front() {
                        sh.mem_bytes.fetch_sub(q.body.len(), Ordering::Relaxed);
                    }
                }
                if let Some(log) = st.spill.as_mut() {
                    if let Err(e) = log.commit(last_seq) {
                        // The commit took effect in memory: replay moves on.
                        tracing::warn!(endpoint = %self.url, error = %e, "writing the spill cursor failed; delivered spans may be sent again after a crash");
                    }
                    let cursor = log.cursor();
                    self.delivered.send_if_modified(|d| advance(d, cursor));
                }
            }
        }
    }

    /// A batch could not be delivered now. Memory durability: memory
    /// batches go to the spill log (or back to the front of the queue when
    /// the log is full). Log batches simply stay unconsumed.
    pub(super) fn park(&self, p: &Pipeline, work: Work) {
        let Source::Memory { bytes } = work.source else {
            return;
        };
        let sh = &p.0;
        let mut st = self.state.lock();
        let Some(log) = st.spill.as_mut() else {
            drop(st);
            sh.mem_bytes.fetch_sub(bytes, Ordering::Relaxed);
            p.park_unrouted(work.batch.spans, &work.batch.body);
            return;
        };
        match append_checked(&sh.cfg, log, work.batch.spans, &work.batch.body) {
            Ok(_) => {
                sh.mem_bytes.fetch_sub(bytes, Ordering::Relaxed);
                sh.metrics.spilled.inc_by(work.batch.spans as u64);
            }
            Err(e) => {
                if !matches!(e, Error::Full | Error::DiskFull) {
                    tracing::error!(endpoint = %self.url, error = %e, "spilling failed; keeping spans in memory");
                }
                st.queue.push_front(Queued {
                    body: work.batch.body,
                    spans: work.batch.spans,
                    seq: None,
                });
            }
        }
    }

    /// The breaker is open: memory durability moves the whole memory queue
    /// to the spill log; disk durability drops the memory copies of logged
    /// records (read back from the disk once the endpoint is back).
    pub(super) fn spill_queue(&self, p: &Pipeline) {
        let sh = &p.0;
        if sh.cfg.durability == Durability::Disk {
            let queue = std::mem::take(&mut self.state.lock().queue);
            for q in queue {
                sh.mem_bytes.fetch_sub(q.body.len(), Ordering::Relaxed);
                sh.metrics.spilled.inc_by(q.spans as u64);
            }
            return;
        }
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

/// Reads records `[from, end)` of `log` as one batch within `limits`.
fn read_log(
    p: &Pipeline,
    url: &str,
    log: &mut SpillLog,
    from: u64,
    end: u64,
    limits: Limits,
) -> Option<Work> {
    let max_records = usize::try_from(end.saturating_sub(from))
        .unwrap_or(usize::MAX)
        .min(4096);
    let records = match log.read_from(from, max_records, limits.max_bytes) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(endpoint = %url, error = %e, "reading the spill log failed");
            return None;
        }
    };
    let mut c = Coalescer::new(limits);
    let mut last_seq = None;
    for (seq, payload) in records {
        if seq >= end {
            break;
        }
        match unframe(&payload) {
            Some((n, encoded)) => {
                if !c.fits(encoded.len(), n) {
                    break;
                }
                c.push(Bytes::copy_from_slice(encoded), n);
            }
            None => p.0.metrics.spill_corrupt.inc(),
        }
        last_seq = Some(seq);
    }
    Some(Work {
        batch: c.finish(),
        source: Source::Log {
            last_seq: last_seq?,
        },
        from_disk: true,
    })
}

/// Group commit (disk durability). Once records are appended, it waits
/// `delay` (the collector's acknowledgement usually comes first: then no
/// fsync is needed for them), then one `fsync` of the log's active segment,
/// off the endpoint's lock, makes every undelivered record durable and
/// wakes every request waiting for them.
pub(super) async fn sync_loop(ep: Arc<Endpoint>, delay: Duration, mut stop: watch::Receiver<Stop>) {
    loop {
        match next_sync(&ep) {
            Ok(None) => {}
            Ok(Some((upto, file))) => {
                match tokio::task::spawn_blocking(move || file.sync_data()).await {
                    Ok(Ok(())) => {
                        if let Some(log) = ep.state.lock().spill.as_mut() {
                            log.mark_synced(upto);
                        }
                        ep.durable.send_if_modified(|d| advance(d, upto));
                        continue;
                    }
                    Ok(Err(e)) => {
                        tracing::error!(endpoint = %ep.url, error = %e, "fsync of the spill log failed; retrying")
                    }
                    Err(e) => tracing::error!(endpoint = %ep.url, error = %e, "fsync task failed"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(()) => return,
        }
        if *stop.borrow() != Stop::Run {
            return;
        }
        tokio::select! {
            _ = ep.sync_wanted.notified() => {}
            r = stop.changed() => if r.is_err() { return },
        }
        // The group-commit window: appends gather, and the collector may
        // acknowledge them meanwhile.
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => {}
        }
    }
}

/// What the group commit must sync now: `None` when nothing appended is
/// both unsynced and undelivered (then everything appended counts as
/// durable); `Err` once the endpoint is retired.
fn next_sync(ep: &Endpoint) -> Result<Option<(u64, std::fs::File)>, ()> {
    let mut st = ep.state.lock();
    let log = st.spill.as_mut().ok_or(())?;
    let next = log.next_seq();
    if log.cursor() >= next {
        // Every record appended was acknowledged by the collector.
        log.mark_synced(next);
    }
    match log.sync_handle() {
        Ok(Some(h)) => Ok(Some(h)),
        Ok(None) => {
            ep.durable.send_if_modified(|d| advance(d, next));
            Ok(None)
        }
        Err(e) => {
            tracing::error!(endpoint = %ep.url, error = %e, "cannot sync the spill log");
            Ok(None)
        }
    }
}

fn advance(durable: &mut u64, to: u64) -> bool {
    if to > *durable {
        *durable = to;
        true
    } else {
        false
    }
}
