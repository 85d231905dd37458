//! The bounded queue and the batching worker thread.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
}

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
}

thread_local! {
    // This thread's lanes, one per live processor it ended spans for.
    static LANES: RefCell<Vec<LocalLane>> = const { RefCell::new(Vec::new()) };
}

static NEXT_PROCESSOR: AtomicU64 = AtomicU64::new(1);

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
#[derive(Debug)]
pub struct BatchProcessor {
    id: u64,
    lanes: Arc<Mutex<Lanes>>,
    capacity: usize,
    control: Sender<Control>,
    stats: Arc<PipelineStats>,
    wake_pending: Arc<AtomicBool>,
    worker_thread: std::thread::Thread,
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
        let lanes = Arc::new(Mutex::new(Lanes::default()));
        let capacity = config.max_queue_size.max(1);
        let (ctx, crx) = bounded(16);
        let stats = Arc::new(PipelineStats::default());
        let wake_pending = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            exporter,
            node: NodeId::from(resource.node_id.as_str()),
            resource,
            config,
            lanes: Arc::clone(&lanes),
            next_lane: 0,
            control: crx,
            stats: Arc::clone(&stats),
            wake_pending: Arc::clone(&wake_pending),
        };
        let handle = std::thread::Builder::new()
            .name("clew-export".into())
            .spawn(move || worker.run())?;
        Ok(BatchProcessor {
            id: NEXT_PROCESSOR.fetch_add(1, Ordering::Relaxed),
            lanes,
            capacity,
            control: ctx,
            stats,
            wake_pending,
            worker_thread: handle.thread().clone(),
            worker: Mutex::new(Some(handle)),
        })
    }

    /// Runs `f` on this thread's lane, making it on first use.
    #[inline]
    fn with_lane<T>(&self, f: impl FnOnce(&mut LocalLane) -> T) -> Option<T> {
        LANES
            .try_with(|lanes| {
                let mut lanes = lanes.try_borrow_mut().ok()?;
                if let Some(l) = lanes.iter_mut().find(|l| l.processor == self.id) {
                    return Some(f(l));
                }
                // Rare: this thread's first span for this processor. Forget
                // lanes of processors that are gone.
                lanes.retain(|l| !l.spans.is_abandoned());
                let (spans_tx, spans_rx) = RingBuffer::new(self.capacity);
                let (recycle_tx, recycle_rx) = RingBuffer::new(self.capacity.min(1024));
                let started = Arc::new(AtomicU64::new(0));
                self.lanes.lock().lanes.push(Lane {
                    spans: spans_rx,
                    recycle: recycle_tx,
                    started: Arc::clone(&started),
                });
                lanes.push(LocalLane {
                    processor: self.id,
                    spans: spans_tx,
                    recycle: recycle_rx,
                    pushes: 0,
                    started,
                    spare: None,
                });
                lanes.last_mut().map(f)
            })
            .ok()
            .flatten()
    }

    /// Queues a finished span; never blocks.
    pub fn on_end(&self, span: Box<SpanData>) {
        let pushed = self.with_lane(|lane| {
            if let Err(PushError::Full(mut span)) = lane.spans.push(span) {
                // Dropped and counted; its allocation serves the thread's
                // next span instead of being freed now and allocated again.
                span.clear_for_reuse();
                lane.spare = Some(span);
                return false;
            }
            lane.pushes = lane.pushes.wrapping_add(1);
            if lane.pushes.is_multiple_of(WAKE_CHECK_EVERY)
                && lane.spans.slots() * 2 <= self.capacity
                && !self.wake_pending.swap(true, Ordering::AcqRel)
            {
                self.worker_thread.unpark();
            }
            true
        });
        if pushed != Some(true) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a sampled span started on this thread and returns a cleared
    /// span allocation from an exported batch, if one is waiting. `None`
    /// when this thread has no lane (it is exiting): the span is not
    /// counted then.
    #[inline]
    pub(crate) fn begin_span(&self) -> Option<Option<Box<SpanData>>> {
        self.with_lane(|lane| {
            let n = lane.started.load(Ordering::Relaxed);
            lane.started.store(n + 1, Ordering::Relaxed);
            lane.recycle.pop().ok().or_else(|| lane.spare.take())
        })
    }

    /// Sampled spans started by [`BatchProcessor::begin_span`].
    pub(crate) fn started(&self) -> u64 {
        let lanes = self.lanes.lock();
        lanes
            .lanes
            .iter()
            .map(|l| l.started.load(Ordering::Relaxed))
            .sum::<u64>()
            + lanes.retired_started
    }

    /// The pipeline's counters.
    pub fn stats(&self) -> &PipelineStats {
        &self.stats
    }

    fn send_control(&self, msg: Control, timeout: Duration) -> bool {
        if self.control.send_timeout(msg, timeout).is_err() {
            return false;
        }
        self.worker_thread.unpark();
        true
    }

    /// Exports everything queued so far; waits at most `timeout`.
    /// Returns false on timeout or when the worker is gone.
    pub fn force_flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = bounded(1);
        self.send_control(Control::Flush(tx), timeout) && rx.recv_timeout(timeout).is_ok()
    }

    /// Exports what is queued, shuts the exporter down and stops the worker.
    /// Later calls return true at once.
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
        self.shutdown(Duration::from_secs(5));
    }
}

struct Worker<E> {
    exporter: E,
    resource: Arc<Resource>,
    // The resource's node id, in the form clocks hold it.
    node: NodeId,
    config: BatchConfig,
    lanes: Arc<Mutex<Lanes>>,
    // Where the next batch starts taking spans, so that no thread's lane
    // waits behind a busier one.
    next_lane: usize,
    control: Receiver<Control>,
    stats: Arc<PipelineStats>,
    wake_pending: Arc<AtomicBool>,
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
                Err(TryRecvError::Disconnected) => {
                    self.drain(&rt);
                    return;
                }
                Err(TryRecvError::Empty) => {}
            }
            let queued = self.queued();
            if queued >= max || (queued > 0 && last_export.elapsed() >= delay) {
                self.export_some(&rt, max);
                last_export = Instant::now();
                busy = true;
                continue;
            }
            self.wake_pending.store(false, Ordering::Release);
            // Re-check after clearing the flag: a producer that saw the flag
            // set did not unpark us.
            let queued = self.queued();
            if queued >= max || !self.control.is_empty() {
                continue;
            }
            let wait = if busy {
                // Spans are flowing: come back soon rather than be woken.
                busy_poll
            } else if queued == 0 {
                delay
            } else {
                delay.saturating_sub(last_export.elapsed())
            };
            busy = false;
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
            Control::Shutdown(reply) => {
                let timeout = self.config.export_timeout;
                let res = rt.block_on(async {
                    tokio::time::timeout(timeout, self.exporter.shutdown()).await
                });
                match res {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "clew exporter shutdown failed"),
                    Err(_) => tracing::warn!(?timeout, "clew exporter shutdown timed out"),
                }
                let _ = reply.send(());
                true
            }
        }
    }

    /// Exports everything queued, in batches.
    fn drain(&mut self, rt: &tokio::runtime::Runtime) {
        let max = self.config.max_export_batch_size.max(1);
        while self.export_some(rt, max) > 0 {}
    }

    /// Spans waiting in every lane. Drops the lanes of threads that ended
    /// and have nothing left.
    fn queued(&self) -> usize {
        let mut lanes = self.lanes.lock();
        let Lanes {
            lanes,
            retired_started,
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
            let mut lanes = self.lanes.lock();
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
            let mut lanes = self.lanes.lock();
            let lanes = &mut lanes.lanes;
            let mut spans = b.spans.into_iter();
            for (i, k) in from {
                for mut span in spans.by_ref().take(k) {
                    if let Some(lane) = lanes.get_mut(i)
                        && !lane.recycle.is_full()
                    {
                        span.clear_for_reuse();
                        let _ = lane.recycle.push(span);
                    }
                }
            }
        }
        match res {
            Ok(Ok(())) => {
                self.stats.exported.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                self.stats.failed.fetch_add(n as u64, Ordering::Relaxed);
                tracing::warn!(error = %e, spans = n, "clew span export failed");
            }
            Err(_) => {
                self.stats.failed.fetch_add(n as u64, Ordering::Relaxed);
                tracing::warn!(spans = n, ?timeout, "clew span export timed out");
            }
        }
        n
    }
}
