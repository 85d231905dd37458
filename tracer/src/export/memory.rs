//! An exporter that keeps spans in memory, for tests.

use std::sync::Arc;

use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::{BoxFuture, ExportBatch, ExportError, Resource, SpanExporter};
use crate::span::SpanData;

/// Collects exported spans; clones share the same storage.
#[derive(Clone, Debug, Default)]
pub struct InMemoryExporter {
    spans: Arc<Mutex<Vec<SpanData>>>,
    resource: Arc<Mutex<Option<Arc<Resource>>>>,
    exported: Arc<Condvar>,
}

impl InMemoryExporter {
    /// An empty exporter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every span exported so far, in export order.
    pub fn finished_spans(&self) -> Vec<SpanData> {
        self.spans.lock().clone()
    }

    /// The resource of the last batch.
    pub fn resource(&self) -> Option<Arc<Resource>> {
        self.resource.lock().clone()
    }

    /// Waits until `pred` holds for the exported spans, or `timeout`
    /// passes; returns whether it held. Wakes on every export, no polling.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[SpanData]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut spans = self.spans.lock();
        while !pred(&spans) {
            if self.exported.wait_until(&mut spans, deadline).timed_out() {
                return pred(&spans);
            }
        }
        true
    }

    /// Forgets every span.
    pub fn reset(&self) {
        self.spans.lock().clear();
    }
}

impl SpanExporter for InMemoryExporter {
    fn export<'a>(&'a mut self, batch: &'a ExportBatch) -> BoxFuture<'a, Result<(), ExportError>> {
        *self.resource.lock() = Some(Arc::clone(&batch.resource));
        self.spans
            .lock()
            .extend(batch.spans.iter().map(|s| SpanData::clone(s)));
        self.exported.notify_all();
        Box::pin(async { Ok(()) })
    }
}
