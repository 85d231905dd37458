//! The bounded queue and the batching worker thread.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, bounded};
use parking_lot::Mutex;
use rtrb::{Consumer, Producer, PushError, RingBuffer};

use super::{ExportBatch, Resource, SpanExporter};
use crate::clock::NodeId;
use crate::span::SpanData;

/// How often span timestamps are re-anchored to the system clock.
const REANCHOR: Duration = Duration::from_secs(1);

/// How often the worker looks at the queue while spans are flowing.
const BUSY_POLL: Duration = Duration::from_millis(1);

/// How often a lingering worker looks whether its last open span ended.
const LINGER_POLL: Duration = Duration::from_millis(20);

/// Queue and batching settings.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// Spans waiting for export beyond this, per thread that ends spans,
    /// are dropped and counted.
    pub max_queue_size: usize,
    /// At most this many spans go in one export call.
    pub max_export_batch_size: usize,
    /// A partial batch is exported after waiting this long.
    pub scheduled_delay: Duration,
    /// One export call is abandoned (and counted as failed) after this.
    pub export_timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_queue_size: 2048,
            max_export_batch_size: 512,
            scheduled_delay: Duration::from_millis(500),
            export_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters of one pipeline.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Spans handed to the exporter successfully.
    pub exported: AtomicU64,
    /// Spans dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Spans in batches whose export failed.
    pub failed: AtomicU64,
}

enum Control {
    Flush(Sender<()>),
    Shutdown(Sender<()>),
    // The last tracer handle is gone but spans are still open: export them
    // as they end, then stop (see `LINGER`).
    Linger,
}

/// How long a worker whose tracer is gone keeps exporting spans that were
/// still open then. A span outliving every handle of its tracer is still
/// exported when it ends, as when it kept the tracer alive; a span that is
/// never ended (leaked) keeps the worker no longer than this.
const LINGER: Duration = Duration::from_secs(30);

/// Pushes between two looks at how full a lane is (a look reads a cache
/// line the worker writes).
const WAKE_CHECK_EVERY: u32 = 64;

/// One thread's two single-producer single-consumer rings to the worker:
/// ended spans one way, cleared allocations back.
struct Lane {
    spans: Consumer<Box<SpanData>>,
    recycle: Producer<Box<SpanData>>,
    // Spans the thread started (see `LocalLane::started`).
    started: Arc<AtomicU64>,
}

/// The lanes of a processor, and the spans started by threads whose lanes
/// are gone.
#[derive(Debug, Default)]
struct Lanes {
    lanes: Vec<Lane>,
    retired_started: u64,
    // The worker has stopped: no new lanes, and the threads' started
    // counters of the lanes it let go of (those threads may still start
    // spans, which are then dropped and counted).
    stopped: bool,
    stopped_started: Vec<Arc<AtomicU64>>,
}

/// What the worker and the threads that end spans share: the lanes, the
/// counters and the way to wake the worker. Spans reach it through a
/// [`ProcessorLink`] (a weak reference), so a span never keeps it alive.
#[derive(Debug)]
struct Core {
    id: u64,
    lanes: Mutex<Lanes>,
    capacity: usize,
    stats: Arc<PipelineStats>,
    wake: Arc<Wake>,
    // Sampled spans started on threads that had no lane (exiting threads).
    laneless_started: AtomicU64,
}

/// Wakes the worker: set `pending`, unpark `thread`.
#[derive(Debug)]
struct Wake {
    pending: AtomicBool,
    thread: std::thread::Thread,
}

impl Wake {
    fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            self.thread.unpark();
        }
    }
}

/// The application thread's ends of a [`Lane`].
struct LocalLane {
    processor: u64,
    spans: Producer<Box<SpanData>>,
    recycle: Consumer<Box<SpanData>>,
    pushes: u32,
    // Sampled spans this thread started. Only this thread writes it, so a
    // load and a store count one (no locked read-modify-write).
    started: Arc<AtomicU64>,
    // The allocation of the last span dropped on a full ring, cleared.
    spare: Option<Box<SpanData>>,
    capacity: usize,
    wake: Arc<Wake>,
    stats: Arc<PipelineStats>,
}

thread_local! {
    // This thread's lanes, one per live processor it ended spans for.
    static LANES: RefCell<Vec<LocalLane>> = const { RefCell::new(Vec::new()) };
}

static NEXT_PROCESSOR: AtomicU64 = AtomicU64::new(1);

/// How a span finds the processor of the tracer that made it: the id its
/// thread's lane is kept under, and a weak reference for a thread's first
/// span. Holding it keeps nothing alive.
#[derive(Clone, Debug)]
pub(crate) struct ProcessorLink {
    id: u64,
    core: Weak<Core>,
}

/// Queues a finished span for export by the processor of the tracer that
/// made it; never blocks. The span is dropped and counted when the queue is
/// full, and dropped when the processor has stopped or there is none.
#[inline]
pub(crate) fn end_span(span: Box<SpanData>) {
    let Some(id) = link_of(&span).map(|l| l.id) else {
        return;
    };
    let mut slot = Some(span);
    // The common case: this thread already has a lane to the worker.
    on_local_lane(id, |lane| slot.take().map(|span| lane.push(span)));
    if let Some(span) = slot {
        end_span_slow(span);
    }
}

/// Runs `f` on this thread's lane to processor `id`, if it has one and its
/// thread-locals are still there; `f` is not called otherwise.
#[inline]
fn on_local_lane<T>(id: u64, f: impl FnOnce(&mut LocalLane) -> T) -> Option<T> {
    LANES
        .try_with(|lanes| {
            let mut lanes = lanes.try_borrow_mut().ok()?;
            lanes.iter_mut().find(|l| l.processor == id).map(f)
        })
        .ok()
        .flatten()
}

fn link_of(span: &SpanData) -> Option<&ProcessorLink> {
    span.tracer.get().and_then(|t| t.processor.as_ref())
}

/// A thread's first span for a processor, or a thread without its
/// thread-locals (exiting).
#[cold]
fn end_span_slow(span: Box<SpanData>) {
    if let Some(core) = link_of(&span).and_then(|l| l.core.upgrade()) {
        core.on_end(span);
    }
}

impl LocalLane {
    #[inline]
    fn push(&mut self, span: Box<SpanData>) {
        if self.spans.is_abandoned() {
            // The worker has stopped (shut down): nobody would read it.
            self.discard(span);
            return;
        }
        if let Err(PushError::Full(span)) = self.spans.push(span) {
            self.discard(span);
            return;
        }
        self.pushes = self.pushes.wrapping_add(1);
        if self.pushes.is_multiple_of(WAKE_CHECK_EVERY) && self.spans.slots() * 2 <= self.capacity {
            self.wake.wake();
        }
    }

    #[cold]
    fn discard(&mut self, mut span: Box<SpanData>) {
        // Dropped and counted; its allocation serves the thread's next span
        // instead of being freed now and allocated again.
        span.clear_for_reuse();
        self.spare = Some(span);
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

impl Core {
    /// Runs `f` on this thread's lane, making it on first use. `None` when
    /// the thread-local is gone (the thread is exiting).
    #[inline]
    fn with_lane<T>(&self, f: impl FnOnce(&mut LocalLane) -> T) -> Option<T> {
        let mut f = Some(f);
        if let Some(out) = on_local_lane(self.id, |l| f.take().map(|f| f(l))).flatten() {
            return Some(out);
        }
        self.new_lane(f?)
    }

    /// This thread's first span for this processor: makes its lane and runs
    /// `f` on it.
    #[cold]
    fn new_lane<T>(&self, f: impl FnOnce(&mut LocalLane) -> T) -> Option<T> {
        LANES
            .try_with(|lanes| {
                let mut lanes = lanes.try_borrow_mut().ok()?;
                // Forget lanes of processors that are gone.
                lanes.retain(|l| !l.spans.is_abandoned());
                let mut registry = self.lanes.lock();
                if registry.stopped {
                    return None;
                }
                let (spans_tx, spans_rx) = RingBuffer::new(self.capacity);
                let (recycle_tx, recycle_rx) = RingBuffer::new(self.capacity.min(1024));
                let started = Arc::new(AtomicU64::new(0));
                registry.lanes.push(Lane {
                    spans: spans_rx,
                    recycle: recycle_tx,
                    started: Arc::clone(&started),
                });
                drop(registry);
                lanes.push(LocalLane {
                    processor: self.id,
                    spans: spans_tx,
                    recycle: recycle_rx,
                    pushes: 0,
                    started,
                    spare: None,
                    capacity: self.capacity,
                    wake: Arc::clone(&self.wake),
                    stats: Arc::clone(&self.stats),
                });
                lanes.last_mut().map(f)
            })
            .ok()
            .flatten()
    }

    fn on_end(&self, span: Box<SpanData>) {
        if self.with_lane(|lane| lane.push(span)).is_none() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sampled spans started, on every thread.
    fn started(&self) -> u64 {
        let lanes = self.lanes.lock();
        lanes
            .lanes
            .iter()
            .map(|l| &l.started)
            .chain(&lanes.stopped_started)
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
            + lanes.retired_started
            + self.laneless_started.load(Ordering::Relaxed)
    }

    /// Spans started and not yet accounted for as exported, failed or
    /// dropped: still open, or ended and waiting in a lane.
    fn unsettled(&self) -> u64 {
        let s = &self.stats;
        let settled = s.exported.load(Ordering::Relaxed)
            + s.failed.load(Ordering::Relaxed)
            + s.dropped.load(Ordering::Relaxed);
        self.started().saturating_sub(settled)
    }
}

/// Owns the per-thread queues and the worker thread.
///
/// Ending a span pushes it on the ending thread's own single-producer ring
/// (no compare-and-swap, no shared counter), and starting one takes a
/// cleared allocation from the ring the worker hands them back on. The
/// application thread almost never wakes the worker: a wake-up is a futex
/// call plus, in a VM, an inter-processor interrupt, which costs more than
/// many spans. Instead the worker polls every millisecond while spans flow
/// and sleeps for the scheduled delay when idle; the application wakes it
/// only when its ring is half full, or for a flush or shutdown.
///
/// Dropping the processor exports what has ended. Spans still open then
/// are exported as they end, for up to 30 seconds, before the worker stops.
#[derive(Debug)]
pub struct BatchProcessor {
    core: Arc<Core>,
    control: Sender<Control>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("queued", &self.spans.slots())
            .finish()
    }
}

impl BatchProcessor {
    /// Starts the worker thread. Fails only if the OS refuses a thread.
    pub fn start<E: SpanExporter>(
        exporter: E,
        resource: Arc<Resource>,
        config: BatchConfig,
    ) -> std::io::Result<Self> {
        let capacity = config.max_queue_size.max(1);
        let (ctx, crx) = bounded(16);
        let stats = Arc::new(PipelineStats::default());
        let (core_tx, core_rx) = crossbeam_channel::bounded::<Arc<Core>>(1);
        let node = NodeId::from(resource.node_id.as_str());
        let handle = std::thread::Builder::new()
            .name("clew-export".into())
            .spawn(move || {
                // The core names this thread (to wake it), so it is made
                // here and handed back.
                let Ok(core) = core_rx.recv() else { return };
                Worker {
                    exporter,
                    node,
                    resource,
                    config,
                    core,
                    next_lane: 0,
                    control: crx,
                    linger_until: None,
                }
                .run()
            })?;
        let core = Arc::new(Core {
            id: NEXT_PROCESSOR.fetch_add(1, Ordering::Relaxed),
            lanes: Mutex::new(Lanes::default()),
            capacity,
            stats,
            wake: Arc::new(Wake {
                pending: AtomicBool::new(false),
                thread: handle.thread().clone(),
            }),
            laneless_started: AtomicU64::new(0),
        });
        let _ = core_tx.send(Arc::clone(&core));
        Ok(BatchProcessor {
            core,
            control: ctx,
            worker: Mutex::new(Some(handle)),
        })
    }

    /// How spans made for this processor find it again.
    pub(crate) fn link(&self) -> ProcessorLink {
        ProcessorLink {
            id: self.core.id,
            core: Arc::downgrade(&self.core),
        }
    }

    /// Queues a finished span; never blocks.
    pub fn on_end(&self, span: Box<SpanData>) {
        self.core.on_end(span);
    }

    /// Counts a sampled span started on this thread and returns a cleared
    /// span allocation from an exported batch, if one is waiting.
    #[inline]
    pub(crate) fn begin_span(&self) -> Option<Box<SpanData>> {
        self.core
            .with_lane(|lane| {
                let n = lane.started.load(Ordering::Relaxed);
                lane.started.store(n + 1, Ordering::Relaxed);
                lane.recycle.pop().ok().or_else(|| lane.spare.take())
            })
            .unwrap_or_else(|| {
                // No lane (the thread is exiting): counted here instead.
                self.core.laneless_started.fetch_add(1, Ordering::Relaxed);
                None
            })
    }

    /// Sampled spans started by [`BatchProcessor::begin_span`].
    pub(crate) fn started(&self) -> u64 {
        self.core.started()
    }

    /// The pipeline's counters.
    pub fn stats(&self) -> &PipelineStats {
        &self.core.stats
    }

    fn send_control(&self, msg: Control, timeout: Duration) -> bool {
        if self.control.send_timeout(msg, timeout).is_err() {
            return false;
        }
        self.core.wake.thread.unpark();
        true
    }

    /// Exports everything queued so far; waits at most `timeout`.
    /// Returns false on timeout or when the worker is gone.
    pub fn force_flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = bounded(1);
        self.send_control(Control::Flush(tx), timeout) && rx.recv_timeout(timeout).is_ok()
    }

    /// Exports what is queued, shuts the exporter down and stops the worker.
    /// Spans ended afterwards are dropped. Later calls return true at once.
    pub fn shutdown(&self, timeout: Duration) -> bool {
        let Some(handle) = self.worker.lock().take() else {
            return true;
        };
        let (tx, rx) = bounded(1);
        let done =
            self.send_control(Control::Shutdown(tx), timeout) && rx.recv_timeout(timeout).is_ok();
        if done {
            let _ = handle.join();
        }
        done
    }
}

impl Drop for BatchProcessor {
    fn drop(&mut self) {
        const WAIT: Duration = Duration::from_secs(5);
        if self.worker.lock().is_none() {
            return;
        }
        // What has ended is exported before this returns, as before; then
        // either nothing is open and the worker stops now, or it stays to
        // export the open spans as they end (`LINGER`) and stops by itself.
        self.force_flush(WAIT);
        if self.core.unsettled() == 0 {
            self.shutdown(WAIT);
        } else if self.send_control(Control::Linger, WAIT) {
            // Detached: the worker exits on its own.
            drop(self.worker.lock().take());
        } else {
            self.shutdown(WAIT);
        }
    }
}

struct Worker<E> {
    exporter: E,
    resource: Arc<Resource>,
    // The resource's node id, in the form clocks hold it.
    node: NodeId,
    config: BatchConfig,
    core: Arc<Core>,
    // Where the next batch starts taking spans, so that no thread's lane
    // waits behind a busier one.
    next_lane: usize,
    control: Receiver<Control>,
    // Set when the processor was dropped with spans still open.
    linger_until: Option<Instant>,
}

impl<E: SpanExporter> Worker<E> {
    fn run(mut self) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "clew export worker could not start a runtime; spans will be dropped");
                return;
            }
        };
        let max = self.config.max_export_batch_size.max(1);
        let delay = self.config.scheduled_delay;
        let busy_poll = BUSY_POLL.min(delay);
        let mut last_export = Instant::now();
        let mut last_anchor = Instant::now();
        let mut busy = false;
        loop {
            if last_anchor.elapsed() >= REANCHOR {
                crate::time::recalibrate();
                last_anchor = Instant::now();
            }
            // Control messages first, so flush and shutdown are prompt.
            match self.control.try_recv() {
                Ok(msg) => {
                    if self.on_control(&rt, msg) {
                        return;
                    }
                    last_export = Instant::now();
                    continue;
                }
                Err(TryRecvError::Disconnected) if self.linger_until.is_none() => {
                    self.drain(&rt);
                    self.stop();
                    return;
                }
                Err(_) => {}
            }
            let queued = self.queued();
            if let Some(until) = self.linger_until
                && ((queued == 0 && self.core.unsettled() == 0) || Instant::now() >= until)
            {
                self.drain(&rt);
                let open = self.core.unsettled();
                if open > 0 {
                    tracing::warn!(
                        spans = open,
                        "clew tracer dropped {}s ago with spans still open; they will not be exported",
                        LINGER.as_secs()
                    );
                }
                self.shutdown_exporter(&rt);
                self.stop();
                return;
            }
            if queued >= max || (queued > 0 && last_export.elapsed() >= delay) {
                self.export_some(&rt, max);
                last_export = Instant::now();
                busy = true;
                continue;
            }
            self.core.wake.pending.store(false, Ordering::Release);
            // Re-check after clearing the flag: a producer that saw the flag
            // set did not unpark us.
            let queued = self.queued();
            if queued >= max || !self.control.is_empty() {
                continue;
            }
            let mut wait = if busy {
                // Spans are flowing: come back soon rather than be woken.
                busy_poll
            } else if queued == 0 {
                delay
            } else {
                delay.saturating_sub(last_export.elapsed())
            };
            busy = false;
            if self.linger_until.is_some() {
                // Look for the end of the last open span now and then.
                wait = wait.min(LINGER_POLL);
            }
            std::thread::park_timeout(wait);
        }
    }

    /// Handles flush or shutdown; true when the worker must stop.
    fn on_control(&mut self, rt: &tokio::runtime::Runtime, msg: Control) -> bool {
        self.drain(rt);
        match msg {
            Control::Flush(reply) => {
                let _ = reply.send(());
                false
            }
            Control::Linger => {
                self.linger_until = Some(Instant::now() + LINGER);
                false
            }
            Control::Shutdown(reply) => {
                self.shutdown_exporter(rt);
                self.stop();
                let _ = reply.send(());
                true
            }
        }
    }

    fn shutdown_exporter(&mut self, rt: &tokio::runtime::Runtime) {
        let timeout = self.config.export_timeout;
        let res =
            rt.block_on(async { tokio::time::timeout(timeout, self.exporter.shutdown()).await });
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "clew exporter shutdown failed"),
            Err(_) => tracing::warn!(?timeout, "clew exporter shutdown timed out"),
        }
    }

    /// Lets go of the lanes, so that each thread's rings are freed (the
    /// thread drops its ends when it next makes a lane, or exits) and a span
    /// ended from now on is dropped at once. Their started counts are kept.
    fn stop(&mut self) {
        let mut lanes = self.core.lanes.lock();
        let Lanes {
            lanes,
            stopped,
            stopped_started,
            ..
        } = &mut *lanes;
        *stopped = true;
        stopped_started.extend(lanes.drain(..).map(|l| l.started));
    }

    /// Exports everything queued, in batches.
    fn drain(&mut self, rt: &tokio::runtime::Runtime) {
        let max = self.config.max_export_batch_size.max(1);
        while self.export_some(rt, max) > 0 {}
    }

    /// Spans waiting in every lane. Drops the lanes of threads that ended
    /// and have nothing left.
    fn queued(&self) -> usize {
        let mut lanes = self.core.lanes.lock();
        let Lanes {
            lanes,
            retired_started,
            ..
        } = &mut *lanes;
        lanes.retain(|l| {
            let gone = l.spans.is_abandoned() && l.spans.is_empty();
            if gone {
                *retired_started += l.started.load(Ordering::Relaxed);
            }
            !gone
        });
        lanes.iter().map(|l| l.spans.slots()).sum()
    }

    /// Exports up to `max` queued spans; returns how many.
    fn export_some(&mut self, rt: &tokio::runtime::Runtime, max: usize) -> usize {
        let mut spans: Vec<Box<SpanData>> = Vec::with_capacity(max.min(4096));
        // Which lane each span came from, to hand its allocation back.
        let mut from: Vec<(usize, usize)> = Vec::new();
        {
            let mut lanes = self.core.lanes.lock();
            let lanes = &mut lanes.lanes;
            let count = lanes.len();
            for k in 0..count {
                if spans.len() >= max {
                    break;
                }
                let i = (self.next_lane + k) % count;
                let before = spans.len();
                let lane = &mut lanes[i];
                while spans.len() < max {
                    match lane.spans.pop() {
                        Ok(mut s) => {
                            s.settle(&self.node);
                            spans.push(s);
                        }
                        Err(_) => break,
                    }
                }
                if spans.len() > before {
                    from.push((i, spans.len() - before));
                }
            }
            self.next_lane = self.next_lane.wrapping_add(1);
        }
        let n = spans.len();
        if n == 0 {
            return 0;
        }
        let b = ExportBatch {
            resource: Arc::clone(&self.resource),
            spans,
        };
        let timeout = self.config.export_timeout;
        let res =
            rt.block_on(async { tokio::time::timeout(timeout, self.exporter.export(&b)).await });
        {
            // Cleared here, where the span was just read, so that the
            // application only writes to it when it reuses it (a store that
            // misses costs it less than a load). A full ring means the
            // thread has enough spare spans: free this one.
            // (Lanes are only removed here, by this thread, so indexes hold.)
            let mut lanes = self.core.lanes.lock();
            let lanes = &mut lanes.lanes;
            let mut spans = b.spans.into_iter();
            for (i, k) in from {
                for mut span in spans.by_ref().take(k) {
                    // Only spans a tracer made go back (a span handed to
                    // `BatchProcessor::on_end` by hand has no tracer link).
                    if let Some(lane) = lanes.get_mut(i)
                        && !lane.recycle.is_full()
                        && span.tracer.get().is_some()
                    {
                        span.clear_for_reuse();
                        let _ = lane.recycle.push(span);
                    }
                }
            }
        }
        match res {
            Ok(Ok(())) => {
                self.core
                    .stats
                    .exported
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                self.core
                    .stats
                    .failed
                    .fetch_add(n as u64, Ordering::Relaxed);
                tracing::warn!(error = %e, spans = n, "clew span export failed");
            }
            Err(_) => {
                self.core
                    .stats
                    .failed
                    .fetch_add(n as u64, Ordering::Relaxed);
                tracing::warn!(spans = n, ?timeout, "clew span export timed out");
            }
        }
        n
    }
}
