//! The bounded queue and the batching worker thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, bounded};
use crossbeam_queue::ArrayQueue;
use parking_lot::Mutex;

use super::{ExportBatch, Resource, SpanExporter};
use crate::span::SpanData;

/// How often span timestamps are re-anchored to the system clock.
const REANCHOR: Duration = Duration::from_secs(1);

/// How often the worker looks at the queue while spans are flowing.
const BUSY_POLL: Duration = Duration::from_millis(1);

/// Queue and batching settings.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// Spans waiting for export beyond this are dropped and counted.
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
            max_queue_size: 8192,
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

/// Owns the queue and the worker thread.
///
/// Ending a span is a `try_send` on a bounded lock-free queue and nothing
/// else. The application thread almost never wakes the worker: a wake-up is
/// a futex call plus, in a VM, an inter-processor interrupt, which costs
/// more than many spans. Instead the worker polls every millisecond while
/// spans flow and sleeps for the scheduled delay when idle; the application
/// wakes it only when the queue is half full, or for a flush or shutdown.
#[derive(Debug)]
pub struct BatchProcessor {
    spans: Arc<ArrayQueue<Box<SpanData>>>,
    control: Sender<Control>,
    stats: Arc<PipelineStats>,
    wake_pending: Arc<AtomicBool>,
    wake_at: usize,
    recycle: Arc<ArrayQueue<Box<SpanData>>>,
    worker_thread: std::thread::Thread,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl BatchProcessor {
    /// Starts the worker thread. Fails only if the OS refuses a thread.
    pub fn start<E: SpanExporter>(
        exporter: E,
        resource: Arc<Resource>,
        config: BatchConfig,
    ) -> std::io::Result<Self> {
        let spans = Arc::new(ArrayQueue::new(config.max_queue_size.max(1)));
        let (ctx, crx) = bounded(16);
        let recycle = Arc::new(ArrayQueue::new(
            config.max_export_batch_size.clamp(1, 4096) * 2,
        ));
        let stats = Arc::new(PipelineStats::default());
        let wake_pending = Arc::new(AtomicBool::new(false));
        let wake_at = (config.max_queue_size / 2)
            .max(config.max_export_batch_size)
            .max(1);
        let worker = Worker {
            exporter,
            resource,
            config,
            spans: Arc::clone(&spans),
            control: crx,
            stats: Arc::clone(&stats),
            wake_pending: Arc::clone(&wake_pending),
            recycle: Arc::clone(&recycle),
        };
        let handle = std::thread::Builder::new()
            .name("clew-export".into())
            .spawn(move || worker.run())?;
        Ok(BatchProcessor {
            spans,
            control: ctx,
            stats,
            wake_pending,
            wake_at,
            recycle,
            worker_thread: handle.thread().clone(),
            worker: Mutex::new(Some(handle)),
        })
    }

    /// Queues a finished span; never blocks.
    pub fn on_end(&self, span: Box<SpanData>) {
        match self.spans.push(span) {
            Ok(()) => {
                if self.spans.len() >= self.wake_at
                    && !self.wake_pending.swap(true, Ordering::AcqRel)
                {
                    self.worker_thread.unpark();
                }
            }
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A cleared span allocation from an exported batch, if one is waiting.
    pub(crate) fn recycled(&self) -> Option<Box<SpanData>> {
        self.recycle.pop()
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
    config: BatchConfig,
    spans: Arc<ArrayQueue<Box<SpanData>>>,
    control: Receiver<Control>,
    stats: Arc<PipelineStats>,
    wake_pending: Arc<AtomicBool>,
    recycle: Arc<ArrayQueue<Box<SpanData>>>,
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
            if self.spans.len() >= max || (!self.spans.is_empty() && last_export.elapsed() >= delay)
            {
                self.export_some(&rt, max);
                last_export = Instant::now();
                busy = true;
                continue;
            }
            self.wake_pending.store(false, Ordering::Release);
            // Re-check after clearing the flag: a producer that saw the flag
            // set did not unpark us.
            if self.spans.len() >= max || !self.control.is_empty() {
                continue;
            }
            let wait = if busy {
                // Spans are flowing: come back soon rather than be woken.
                busy_poll
            } else if self.spans.is_empty() {
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

    /// Exports up to `max` queued spans; returns how many.
    fn export_some(&mut self, rt: &tokio::runtime::Runtime, max: usize) -> usize {
        let spans: Vec<Box<SpanData>> = std::iter::from_fn(|| self.spans.pop())
            .take(max)
            .map(|mut s| {
                s.dedupe_attributes();
                s
            })
            .collect();
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
        for span in b.spans {
            // The application clears a span when it reuses it: writing here
            // would pull the span's cache lines over to this core and make
            // the application's next write to them a cross-core miss.
            // Full: the application has enough spare spans; free this one.
            let _ = self.recycle.push(span);
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
