//! The bounded queue and the batching worker thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};
use parking_lot::Mutex;

use super::{ExportBatch, Resource, SpanExporter};
use crate::span::SpanData;

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
#[derive(Debug)]
pub struct BatchProcessor {
    spans: Sender<Box<SpanData>>,
    control: Sender<Control>,
    stats: Arc<PipelineStats>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl BatchProcessor {
    /// Starts the worker thread. Fails only if the OS refuses a thread.
    pub fn start<E: SpanExporter>(
        exporter: E,
        resource: Arc<Resource>,
        config: BatchConfig,
    ) -> std::io::Result<Self> {
        let (tx, rx) = bounded(config.max_queue_size.max(1));
        let (ctx, crx) = bounded(16);
        let stats = Arc::new(PipelineStats::default());
        let worker = Worker {
            exporter,
            resource,
            config,
            spans: rx,
            control: crx,
            stats: Arc::clone(&stats),
        };
        let handle = std::thread::Builder::new()
            .name("clew-export".into())
            .spawn(move || worker.run())?;
        Ok(BatchProcessor {
            spans: tx,
            control: ctx,
            stats,
            worker: Mutex::new(Some(handle)),
        })
    }

    /// Queues a finished span; never blocks.
    pub fn on_end(&self, span: Box<SpanData>) {
        match self.spans.try_send(span) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The pipeline's counters.
    pub fn stats(&self) -> &PipelineStats {
        &self.stats
    }

    /// Exports everything queued so far; waits at most `timeout`.
    /// Returns false on timeout or when the worker is gone.
    pub fn force_flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = bounded(1);
        if self
            .control
            .send_timeout(Control::Flush(tx), timeout)
            .is_err()
        {
            return false;
        }
        rx.recv_timeout(timeout).is_ok()
    }

    /// Exports what is queued, shuts the exporter down and stops the worker.
    /// Later calls return true at once.
    pub fn shutdown(&self, timeout: Duration) -> bool {
        let Some(handle) = self.worker.lock().take() else {
            return true;
        };
        let (tx, rx) = bounded(1);
        if self
            .control
            .send_timeout(Control::Shutdown(tx), timeout)
            .is_err()
        {
            return false;
        }
        let done = rx.recv_timeout(timeout).is_ok();
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
    spans: Receiver<Box<SpanData>>,
    control: Receiver<Control>,
    stats: Arc<PipelineStats>,
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
        let mut batch: Vec<SpanData> = Vec::with_capacity(max);
        let mut deadline = Instant::now() + self.config.scheduled_delay;
        loop {
            // Control messages first, so flush and shutdown are prompt.
            if let Ok(msg) = self.control.try_recv() {
                if self.on_control(&rt, &mut batch, msg) {
                    return;
                }
                continue;
            }
            let wait = deadline.saturating_duration_since(Instant::now());
            crossbeam_channel::select! {
                recv(self.spans) -> msg => match msg {
                    Ok(span) => {
                        batch.push(*span);
                        if batch.len() >= max {
                            self.export(&rt, &mut batch);
                            deadline = Instant::now() + self.config.scheduled_delay;
                        }
                    }
                    Err(_) => {
                        self.drain(&rt, &mut batch);
                        return;
                    }
                },
                recv(self.control) -> msg => {
                    let stop = match msg {
                        Ok(msg) => self.on_control(&rt, &mut batch, msg),
                        Err(_) => {
                            self.drain(&rt, &mut batch);
                            true
                        }
                    };
                    if stop {
                        return;
                    }
                },
                default(wait) => {
                    if !batch.is_empty() {
                        self.export(&rt, &mut batch);
                    }
                    deadline = Instant::now() + self.config.scheduled_delay;
                }
            }
        }
    }

    /// Handles flush or shutdown; true when the worker must stop.
    fn on_control(
        &mut self,
        rt: &tokio::runtime::Runtime,
        batch: &mut Vec<SpanData>,
        msg: Control,
    ) -> bool {
        self.drain(rt, batch);
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

    /// Exports the current batch and everything queued.
    fn drain(&mut self, rt: &tokio::runtime::Runtime, batch: &mut Vec<SpanData>) {
        let max = self.config.max_export_batch_size.max(1);
        loop {
            while batch.len() < max {
                match self.spans.recv_timeout(Duration::ZERO) {
                    Ok(s) => batch.push(*s),
                    Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            if batch.is_empty() {
                return;
            }
            let full = batch.len() >= max;
            self.export(rt, batch);
            if !full {
                return;
            }
        }
    }

    fn export(&mut self, rt: &tokio::runtime::Runtime, batch: &mut Vec<SpanData>) {
        let spans = std::mem::replace(batch, Vec::with_capacity(self.config.max_export_batch_size));
        let n = spans.len() as u64;
        let b = ExportBatch {
            resource: Arc::clone(&self.resource),
            spans,
        };
        let timeout = self.config.export_timeout;
        let res =
            rt.block_on(async { tokio::time::timeout(timeout, self.exporter.export(b)).await });
        match res {
            Ok(Ok(())) => {
                self.stats.exported.fetch_add(n, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                self.stats.failed.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(error = %e, spans = n, "clew span export failed");
            }
            Err(_) => {
                self.stats.failed.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(spans = n, ?timeout, "clew span export timed out");
            }
        }
    }
}
