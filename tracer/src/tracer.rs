//! The [`Tracer`]: starts spans for one service and feeds its export pipeline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::context::{ClockCell, Context, Node};
use crate::export::batch::ProcessorLink;
use crate::export::{BatchConfig, BatchProcessor, Resource, SpanExporter};
use crate::idgen;
use crate::ids::{SpanContext, SpanId};
use crate::propagation::baggage::Baggage;
use crate::sampling::Sampler;
use crate::span::{KeyValue, Span, SpanBuilder, SpanData, SpanKind, SpanLimits, Str};
use crate::{ClewError, Result};

pub(crate) struct TracerInner {
    pub(crate) shared: Arc<TracerShared>,
    pub(crate) resource: Arc<Resource>,
    pub(crate) sampler: Sampler,
    processor: Option<BatchProcessor>,
    // Sampled spans started without a processor (no exporter).
    started: AtomicU64,
    unsampled: AtomicU64,
}

/// What a recording span needs of its tracer: limits, the vector-clock node
/// and the way to its export queue. Every span allocation holds one
/// reference, set when the allocation is made and kept while the export
/// worker recycles it, so starting and ending a span touches no reference
/// count. It keeps no processor alive (see [`ProcessorLink`]).
#[derive(Debug)]
pub(crate) struct TracerShared {
    pub(crate) limits: SpanLimits,
    pub(crate) processor: Option<ProcessorLink>,
    pub(crate) node: Node,
}

impl std::fmt::Debug for TracerInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("service", &self.resource.service_name)
            .field("node", &self.shared.node.id())
            .field("sampler", &self.sampler.to_string())
            .finish()
    }
}

/// Starts spans for one service. Cheap to clone; clones share the pipeline.
///
/// Dropping the last clone exports every span that has ended before it
/// returns. Spans still open then are exported as they end, for up to 30
/// seconds, after which the export worker stops (call
/// [`Tracer::shutdown`] to stop it at once).
#[derive(Clone, Debug)]
pub struct Tracer {
    pub(crate) inner: Arc<TracerInner>,
}

/// A snapshot of a tracer's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracerStats {
    /// Sampled spans started.
    pub started: u64,
    /// Spans started unsampled (context only).
    pub unsampled: u64,
    /// Spans handed to the exporter.
    pub exported: u64,
    /// Spans dropped because the export queue was full.
    pub dropped: u64,
    /// Spans whose export failed.
    pub export_failed: u64,
}

impl Tracer {
    /// Starts configuring a tracer for `service_name`.
    pub fn builder(service_name: impl Into<String>) -> TracerBuilder {
        TracerBuilder {
            service_name: service_name.into(),
            node_id: None,
            attributes: Vec::new(),
            sampler: Sampler::default(),
            limits: SpanLimits::default(),
            batch: BatchConfig::default(),
            exporter: None,
        }
    }

    /// A tracer that samples nothing and exports nothing.
    pub fn noop() -> Tracer {
        Tracer::builder("noop").sampler(Sampler::AlwaysOff).build()
    }

    /// The service name.
    pub fn service_name(&self) -> &str {
        &self.inner.resource.service_name
    }

    /// The vector-clock node id.
    pub fn node_id(&self) -> &str {
        self.inner.shared.node.id()
    }

    pub(crate) fn node(&self) -> &Node {
        &self.inner.shared.node
    }

    /// A builder for a span named `name`. Its parent is the current context
    /// unless [`SpanBuilder::parent`] or [`SpanBuilder::root`] says otherwise.
    pub fn span(&self, name: impl Into<Str>) -> SpanBuilder {
        SpanBuilder {
            tracer: self.clone(),
            name: name.into(),
            kind: SpanKind::Internal,
            parent: None,
            attributes: Vec::new(),
            links: Vec::new(),
            start_time: None,
        }
    }

    /// Starts an internal span under the current context.
    pub fn start(&self, name: impl Into<Str>) -> Span {
        self.start_span(name.into(), SpanKind::Internal, None, Vec::new())
    }

    /// Starts a span of `kind` under `parent`.
    pub fn start_with_context(
        &self,
        name: impl Into<Str>,
        kind: SpanKind,
        parent: &Context,
    ) -> Span {
        self.start_span(name.into(), kind, Some(parent), Vec::new())
    }

    pub(crate) fn build_span(&self, b: SpanBuilder) -> Span {
        let mut span = self.start_span(b.name, b.kind, b.parent.as_ref(), b.attributes);
        if let Some(data) = span.recording.as_deref_mut() {
            if let Some(t) = b.start_time {
                data.start_time_unix_nano = t;
                data.raw_times = crate::span::RawTimes::default();
            }
            data.links = b.links;
        }
        span
    }

    #[inline]
    fn start_span(
        &self,
        name: Str,
        kind: SpanKind,
        parent: Option<&Context>,
        attributes: Vec<KeyValue>,
    ) -> Span {
        match parent {
            Some(cx) => self.start_under(
                name,
                kind,
                cx.span.as_ref(),
                cx.clock.clone(),
                cx.baggage.clone(),
                attributes,
            ),
            None => {
                // Copied out of the thread-local rather than started inside
                // a closure over it: the span is built in place, not moved
                // out through the thread-local's accessor.
                let Context {
                    span,
                    clock,
                    baggage,
                } = Context::current();
                self.start_under(name, kind, span.as_ref(), clock, baggage, attributes)
            }
        }
    }

    fn start_under(
        &self,
        name: Str,
        kind: SpanKind,
        parent: Option<&SpanContext>,
        clock: Option<Arc<ClockCell>>,
        baggage: Option<Arc<Baggage>>,
        mut attributes: Vec<KeyValue>,
    ) -> Span {
        let inner = &self.inner;
        let parent = parent.filter(|p| p.is_valid());
        let (trace_id, span_id) = match parent {
            Some(p) => (p.trace_id, idgen::span_id()),
            None => idgen::trace_and_span_id(),
        };
        let sampled = inner.sampler.should_sample(parent, trace_id);
        let context = SpanContext {
            trace_id,
            span_id,
            flags: parent
                .map(|p| p.flags)
                .unwrap_or_default()
                .with_sampled(sampled),
            trace_state: parent.map(|p| p.trace_state.clone()).unwrap_or_default(),
            is_remote: false,
        };
        if !sampled {
            inner.unsampled.fetch_add(1, Ordering::Relaxed);
            // Keep the upstream clock flowing through unsampled hops.
            return Span {
                context,
                clock: clock.map(Into::into).unwrap_or_default(),
                baggage,
                recording: std::mem::ManuallyDrop::new(None),
            };
        }
        // Counted on this thread's lane (no shared counter). A recycled span
        // was cleared by the export worker (`SpanData::clear_for_reuse`):
        // its fields are only written here; it keeps its attribute capacity
        // and its reference to this tracer from earlier use.
        let recycled = match &inner.processor {
            Some(p) => p.begin_span(),
            None => {
                inner.started.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        let mut data =
            recycled.unwrap_or_else(|| SpanData::for_recording(Arc::clone(&inner.shared)));
        debug_assert!(
            data.tracer
                .get()
                .is_some_and(|s| std::ptr::eq(s, &*inner.shared))
        );
        data.parent_span_id = parent.map(|p| p.span_id).unwrap_or(SpanId::INVALID);
        crate::span::overwrite(&mut data.context, context.clone());
        crate::span::overwrite(&mut data.name, name);
        data.kind = kind;
        // Converted to Unix time on the export worker (`SpanData::settle`).
        // (Both Unix time fields are written before export: from the raw
        // readings, or by an explicit start or end.)
        data.raw_times.start = crate::time::raw_now();
        let clock = match clock {
            Some(cell) => {
                cell.tick_into(&inner.shared.node, &mut data.clock_start);
                cell.into()
            }
            None => {
                data.pending_clock.start = inner.shared.node.next_after(0);
                std::sync::OnceLock::new()
            }
        };
        if data.attributes.capacity() == 0 && attributes.capacity() < 8 {
            // One allocation instead of growing 1, 2, 4, 8.
            data.attributes.reserve_exact(8);
        }
        if !attributes.is_empty() {
            attributes.truncate(inner.shared.limits.max_attributes);
            data.start_attributes(&mut attributes);
        }
        Span {
            context,
            clock,
            baggage,
            recording: std::mem::ManuallyDrop::new(Some(data)),
        }
    }

    /// Exports everything queued; waits at most `timeout`. False on timeout
    /// or when there is no exporter.
    pub fn force_flush(&self, timeout: Duration) -> bool {
        self.inner
            .processor
            .as_ref()
            .is_some_and(|p| p.force_flush(timeout))
    }

    /// Flushes and stops the export pipeline. Spans ended afterwards are
    /// dropped and counted.
    pub fn shutdown(&self, timeout: Duration) -> bool {
        self.inner
            .processor
            .as_ref()
            .is_none_or(|p| p.shutdown(timeout))
    }

    /// The tracer's counters.
    pub fn stats(&self) -> TracerStats {
        let (started, exported, dropped, export_failed) = match &self.inner.processor {
            Some(p) => {
                let s = p.stats();
                (
                    p.started(),
                    s.exported.load(Ordering::Relaxed),
                    s.dropped.load(Ordering::Relaxed),
                    s.failed.load(Ordering::Relaxed),
                )
            }
            None => (0, 0, 0, 0),
        };
        TracerStats {
            started: started + self.inner.started.load(Ordering::Relaxed),
            unsampled: self.inner.unsampled.load(Ordering::Relaxed),
            exported,
            dropped,
            export_failed,
        }
    }
}

/// Configures a [`Tracer`].
#[must_use]
pub struct TracerBuilder {
    service_name: String,
    node_id: Option<String>,
    attributes: Vec<KeyValue>,
    sampler: Sampler,
    limits: SpanLimits,
    batch: BatchConfig,
    exporter: Option<Box<dyn SpanExporter>>,
}

impl std::fmt::Debug for TracerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracerBuilder")
            .field("service_name", &self.service_name)
            .field("sampler", &self.sampler.to_string())
            .finish_non_exhaustive()
    }
}

impl TracerBuilder {
    /// The vector-clock node id. Must be unique per process; the default is
    /// the service name plus a random suffix (`service#3fa2c1`).
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = Some(id.into());
        self
    }

    /// Adds a resource attribute (`service.version`, `k8s.pod.name`, ...).
    pub fn resource_attribute(
        mut self,
        key: impl Into<Str>,
        value: impl Into<crate::Value>,
    ) -> Self {
        self.attributes.push(KeyValue::new(key, value));
        self
    }

    /// The head sampler (default: parent-based, always on for roots).
    pub fn sampler(mut self, sampler: Sampler) -> Self {
        self.sampler = sampler;
        self
    }

    /// Per-span limits.
    pub fn limits(mut self, limits: SpanLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Queue and batching settings.
    pub fn batch_config(mut self, config: BatchConfig) -> Self {
        self.batch = config;
        self
    }

    /// Where finished spans go. Without one, spans are recorded and dropped.
    pub fn exporter(mut self, exporter: impl SpanExporter) -> Self {
        self.exporter = Some(Box::new(exporter));
        self
    }

    /// Builds the tracer and starts its export worker; fails on an invalid
    /// node id or when the OS refuses the export thread.
    pub fn try_build(self) -> Result<Tracer> {
        if let Some(id) = &self.node_id
            && !valid_node_id(id)
        {
            return Err(ClewError::Config(format!("invalid node id {id:?}")));
        }
        match self.assemble() {
            (t, None) => Ok(t),
            (_, Some(e)) => Err(ClewError::Config(format!(
                "cannot start export thread: {e}"
            ))),
        }
    }

    /// Builds the tracer. An invalid node id is replaced by the default; if
    /// the export thread cannot start, the tracer works but exports nothing.
    /// Both are logged.
    pub fn build(self) -> Tracer {
        let (tracer, err) = self.assemble();
        if let Some(e) = err {
            tracing::error!(error = %e, "clew tracer cannot start its export thread; spans will not be exported");
        }
        tracer
    }

    fn assemble(self) -> (Tracer, Option<std::io::Error>) {
        crate::time::init();
        let node_id = match self.node_id {
            Some(id) if valid_node_id(&id) => id,
            other => {
                if let Some(bad) = other {
                    tracing::warn!(node_id = %bad, "invalid clew node id; using a generated one");
                }
                format!("{}#{:06x}", self.service_name, idgen::u64() & 0xff_ffff)
            }
        };
        let resource = Arc::new(Resource {
            service_name: self.service_name,
            node_id: node_id.clone(),
            attributes: self.attributes,
        });
        let (processor, err) = match self.exporter {
            Some(e) => match BatchProcessor::start(e, Arc::clone(&resource), self.batch) {
                Ok(p) => (Some(p), None),
                Err(e) => (None, Some(e)),
            },
            None => (None, None),
        };
        let tracer = Tracer {
            inner: Arc::new(TracerInner {
                shared: Arc::new(TracerShared {
                    limits: self.limits,
                    processor: processor.as_ref().map(BatchProcessor::link),
                    node: Node::new(node_id),
                }),
                resource,
                sampler: self.sampler,
                processor,
                started: AtomicU64::new(0),
                unsampled: AtomicU64::new(0),
            }),
        };
        (tracer, err)
    }
}

fn valid_node_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= crate::clock::MAX_NODE_LEN
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::FutureExt;
    use crate::export::InMemoryExporter;
    use crate::span::{Status, Value};

    fn setup(sampler: Sampler) -> (Tracer, InMemoryExporter) {
        let exp = InMemoryExporter::new();
        let t = Tracer::builder("svc")
            .node_id("svc#1")
            .resource_attribute("service.version", "1.2.3")
            .sampler(sampler)
            .exporter(exp.clone())
            .build();
        (t, exp)
    }

    fn flush(t: &Tracer) {
        assert!(t.force_flush(Duration::from_secs(5)));
    }

    #[test]
    fn span_records_everything_and_ends_once() {
        let (t, exp) = setup(Sampler::AlwaysOn);
        let mut s = t
            .span("op")
            .kind(SpanKind::Server)
            .attribute("a", 1i64)
            .start();
        s.set_attribute("b", "x");
        s.set_attribute("a", 2i64);
        s.set_attribute("b", "y");
        s.set_attribute("a", 3i64);
        s.add_event("ev", vec![KeyValue::new("k", true)]);
        s.set_status(Status::Error("bad".into()));
        s.end();
        s.end();
        drop(s);
        flush(&t);
        let spans = exp.finished_spans();
        assert_eq!(spans.len(), 1, "ending twice and dropping exports once");
        let d = &spans[0];
        assert_eq!(d.name, "op");
        assert_eq!(d.kind, SpanKind::Server);
        // The last value wins and each key appears once, in first-set order.
        let keys: Vec<&str> = d.attributes.iter().map(|kv| &*kv.key).collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(d.attribute("a"), Some(&Value::I64(3)));
        assert_eq!(d.attribute("b"), Some(&Value::String("y".into())));
        assert_eq!(d.events.len(), 1);
        assert!(d.status.is_error());
        assert!(d.end_time_unix_nano >= d.start_time_unix_nano);
        assert!(!d.parent_span_id.is_valid());
        assert!(d.clock_start.happened_before(&d.clock_end));
        let r = exp.resource().unwrap();
        assert_eq!(r.service_name, "svc");
        assert_eq!(r.node_id, "svc#1");
    }

    #[test]
    fn dropped_span_is_ended() {
        let (t, exp) = setup(Sampler::AlwaysOn);
        {
            let _s = t.start("scoped");
        }
        flush(&t);
        assert_eq!(exp.finished_spans().len(), 1);
    }

    #[test]
    fn ok_status_is_final() {
        let (t, exp) = setup(Sampler::AlwaysOn);
        let mut s = t.start("x");
        s.set_status(Status::Ok);
        s.set_status(Status::Error("late".into()));
        s.end();
        flush(&t);
        assert_eq!(exp.finished_spans()[0].status, Status::Ok);
    }

    #[test]
    fn parent_from_explicit_context_and_from_current() {
        let (t, exp) = setup(Sampler::AlwaysOn);
        let root = t.start("root");
        let explicit = t.span("explicit").parent(&root.context()).start();
        let implicit = {
            let _g = root.context().attach();
            t.start("implicit")
        };
        let orphan = t.start("orphan");
        let (root_id, trace) = (root.span_id(), root.trace_id());
        drop((explicit, implicit, orphan, root));
        flush(&t);
        let spans = exp.finished_spans();
        let get = |n: &str| spans.iter().find(|s| s.name == n).unwrap().clone();
        assert_eq!(get("explicit").parent_span_id, root_id);
        assert_eq!(get("implicit").parent_span_id, root_id);
        assert_eq!(get("implicit").context.trace_id, trace);
        assert!(!get("orphan").parent_span_id.is_valid());
        assert_ne!(get("orphan").context.trace_id, trace);
        // Children start after the parent started, in causal order.
        assert!(
            get("root")
                .clock_start
                .happened_before(&get("explicit").clock_start)
        );
    }

    #[tokio::test]
    async fn parent_follows_the_task() {
        let (t, exp) = setup(Sampler::AlwaysOn);
        let root = t.start("root");
        let root_id = root.span_id();
        let t2 = t.clone();
        tokio::spawn(
            async move {
                tokio::task::yield_now().await;
                let _child = t2.start("child");
            }
            .with_context(root.context()),
        )
        .await
        .unwrap();
        drop(root);
        flush(&t);
        let child = exp
            .finished_spans()
            .into_iter()
            .find(|s| s.name == "child")
            .unwrap();
        assert_eq!(child.parent_span_id, root_id);
    }

    #[tokio::test]
    async fn in_span_ends_the_span_when_the_future_completes() {
        let (t, exp) = setup(Sampler::AlwaysOn);
        let span = t.start("work");
        let t2 = t.clone();
        async move {
            let _inner = t2.start("inner");
        }
        .in_span(span)
        .await;
        flush(&t);
        let spans = exp.finished_spans();
        assert_eq!(spans.len(), 2);
        let work = spans.iter().find(|s| s.name == "work").unwrap();
        let inner = spans.iter().find(|s| s.name == "inner").unwrap();
        assert_eq!(inner.parent_span_id, work.context.span_id);
    }

    #[test]
    fn unsampled_spans_propagate_but_do_not_record() {
        let (t, exp) = setup(Sampler::AlwaysOff);
        let mut s = t.start("x");
        assert!(!s.is_recording());
        assert!(s.span_context().is_valid());
        assert!(!s.span_context().is_sampled());
        s.set_attribute("k", 1i64);
        let child = t.span("c").parent(&s.context()).start();
        assert_eq!(child.trace_id(), s.trace_id());
        drop((child, s));
        flush(&t);
        assert!(exp.finished_spans().is_empty());
        assert_eq!(t.stats().unsampled, 2);
    }

    #[test]
    fn attribute_limit_drops_and_counts() {
        let exp = InMemoryExporter::new();
        let t = Tracer::builder("svc")
            .sampler(Sampler::AlwaysOn)
            .limits(crate::span::SpanLimits {
                max_attributes: 2,
                max_events: 1,
                max_links: 0,
            })
            .exporter(exp.clone())
            .build();
        let mut s = t.start("x");
        for i in 0..4i64 {
            s.set_attribute(format!("k{i}"), i);
        }
        s.add_event("a", vec![]);
        s.add_event("b", vec![]);
        s.end();
        flush(&t);
        let d = &exp.finished_spans()[0];
        assert_eq!(d.attributes.len(), 2);
        assert_eq!(d.events.len(), 1);
        assert_eq!(d.dropped, 3);
    }

    /// An exporter that blocks until released, to fill the queue.
    struct Gate(std::sync::mpsc::Receiver<()>);
    impl SpanExporter for Gate {
        fn export(
            &mut self,
            _batch: &crate::export::ExportBatch,
        ) -> crate::export::BoxFuture<'_, Result<(), crate::export::ExportError>> {
            let _ = self.0.recv();
            Box::pin(async { Ok(()) })
        }
    }

    #[test]
    fn full_queue_drops_and_counts_without_blocking() {
        let (release, gate) = std::sync::mpsc::channel();
        let t = Tracer::builder("svc")
            .sampler(Sampler::AlwaysOn)
            .batch_config(BatchConfig {
                max_queue_size: 4,
                max_export_batch_size: 1,
                scheduled_delay: Duration::from_millis(1),
                export_timeout: Duration::from_secs(30),
            })
            .exporter(Gate(gate))
            .build();
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            t.start("x").end();
        }
        // Ending 1000 spans against a stuck exporter must not wait on it.
        assert!(started.elapsed() < Duration::from_secs(5));
        let dropped = t.stats().dropped;
        assert!(dropped >= 1000 - 4 - 2, "dropped {dropped}");
        for _ in 0..1000 {
            let _ = release.send(());
        }
        assert!(t.shutdown(Duration::from_secs(10)));
        let s = t.stats();
        assert_eq!(s.exported + s.dropped, 1000);
    }

    #[test]
    fn recycled_spans_carry_nothing_over() {
        let (t, exp) = setup(Sampler::AlwaysOn);
        // Spans under a remote parent whose clock has another node in it:
        // their clocks have two entries.
        let remote = SpanContext {
            trace_id: crate::TraceId::from_u128(7),
            span_id: SpanId::from_u64(9),
            ..Default::default()
        };
        let mut upstream = crate::VectorClock::new();
        upstream.set("upstream", 41);
        let cx = Context::with_remote_parent(remote, Some(upstream));
        for i in 0..50i64 {
            let mut s = t.span("full").parent(&cx).attribute("i", i).start();
            s.add_event("e", vec![]);
            s.add_link(s.span_context().clone(), vec![]);
            s.set_status(Status::Error("x".into()));
        }
        flush(&t);
        for _ in 0..50 {
            t.start("bare").end();
        }
        flush(&t);
        let spans = exp.finished_spans();
        let full = spans.iter().find(|s| s.name == "full").unwrap();
        assert_eq!(full.clock_start.get("upstream"), 41);
        assert_eq!(full.clock_end.len(), 2);
        let bare: Vec<_> = spans.iter().filter(|s| s.name == "bare").collect();
        assert_eq!(bare.len(), 50);
        for s in bare {
            assert!(s.attributes.is_empty() && s.events.is_empty() && s.links.is_empty());
            assert_eq!(s.status, Status::Unset);
            assert!(!s.parent_span_id.is_valid());
            // Only this node's entry, in both clocks, start before end.
            assert_eq!(s.clock_start.len(), 1);
            assert_eq!(s.clock_end.len(), 1);
            let (start, end) = (s.clock_start.get("svc#1"), s.clock_end.get("svc#1"));
            assert!(0 < start && start < end, "{s:?}");
        }
    }

    #[test]
    fn recycled_attribute_slots_never_leak_into_a_later_span() {
        let (t, exp) = setup(Sampler::AlwaysOn);
        // Many spans with 6 attributes, then fewer with 2: recycled spans
        // keep the earlier attributes as slots, which must not be exported.
        for round in 0..3 {
            for i in 0..200i64 {
                let mut s = t.start("wide");
                for k in ["k0", "k1", "k2", "k3", "k4", "k5"] {
                    s.set_attribute(k, format!("{round}-{i}"));
                }
            }
            flush(&t);
        }
        for i in 0..200i64 {
            let mut s = t.start("narrow");
            s.set_attribute("k5", i);
            s.set_attribute("n", true);
        }
        // And one built with start attributes after wide spans.
        drop(t.span("built").attribute("only", 1i64).start());
        flush(&t);
        let spans = exp.finished_spans();
        for s in spans.iter().filter(|s| s.name == "narrow") {
            let keys: Vec<&str> = s.attributes.iter().map(|kv| &*kv.key).collect();
            assert_eq!(keys, ["k5", "n"], "stale slots exported: {s:?}");
            assert!(matches!(s.attribute("k5"), Some(Value::I64(_))));
        }
        let built = spans.iter().find(|s| s.name == "built").unwrap();
        assert_eq!(built.attributes, vec![KeyValue::new("only", 1i64)]);
        assert_eq!(spans.iter().filter(|s| s.name == "narrow").count(), 200);
    }

    #[test]
    fn spans_ended_on_many_threads_are_all_exported_even_after_the_threads_exit() {
        let (t, exp) = setup(Sampler::AlwaysOn);
        let threads: Vec<_> = (0..8)
            .map(|n| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for i in 0..500i64 {
                        let mut s = t.start("threaded");
                        s.set_attribute("thread", n as i64);
                        s.set_attribute("i", i);
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        // The threads are gone; their queued spans are not.
        flush(&t);
        let spans = exp.finished_spans();
        let mut seen = std::collections::HashSet::new();
        for s in spans.iter().filter(|s| s.name == "threaded") {
            let (Some(Value::I64(n)), Some(Value::I64(i))) =
                (s.attribute("thread"), s.attribute("i"))
            else {
                panic!("attributes lost: {s:?}");
            };
            assert!(seen.insert((*n, *i)), "span exported twice: {n} {i}");
        }
        assert_eq!(seen.len(), 8 * 500);
        let st = t.stats();
        assert_eq!((st.started, st.exported, st.dropped), (4000, 4000, 0));
    }

    #[test]
    fn a_span_without_a_shared_clock_reports_the_end_clock_it_exports() {
        let (t, exp) = setup(Sampler::AlwaysOn);
        let mut s = t.start("solo");
        let end = s.end_with_clock().unwrap();
        assert!(s.end_with_clock().is_none(), "ends once");
        flush(&t);
        let spans = exp.finished_spans();
        let d = spans.iter().find(|d| d.name == "solo").unwrap();
        assert_eq!(d.clock_end, end);
        assert_eq!(d.clock_start.len(), 1);
        assert!(d.clock_start.happened_before(&d.clock_end));
        // A span whose context was asked for after start (a lazily made
        // cell) still has both clocks.
        let mut p = t.start("parent");
        let cx = p.context();
        drop(t.start_with_context("child", SpanKind::Internal, &cx));
        let end = p.end_with_clock().unwrap();
        flush(&t);
        let spans = exp.finished_spans();
        let p = spans.iter().find(|d| d.name == "parent").unwrap();
        let c = spans.iter().find(|d| d.name == "child").unwrap();
        assert_eq!(p.clock_end, end);
        assert!(p.clock_start.happened_before(&c.clock_start));
        assert!(c.clock_end.happened_before(&p.clock_end));
    }

    /// Delegates to an in-memory exporter and reports its shutdown.
    struct Reporting {
        spans: InMemoryExporter,
        shut: std::sync::mpsc::Sender<()>,
    }
    impl SpanExporter for Reporting {
        fn export<'a>(
            &'a mut self,
            batch: &'a crate::export::ExportBatch,
        ) -> crate::export::BoxFuture<'a, Result<(), crate::export::ExportError>> {
            self.spans.export(batch)
        }
        fn shutdown(
            &mut self,
        ) -> crate::export::BoxFuture<'_, Result<(), crate::export::ExportError>> {
            let _ = self.shut.send(());
            Box::pin(async { Ok(()) })
        }
    }

    fn reporting() -> (Tracer, InMemoryExporter, std::sync::mpsc::Receiver<()>) {
        let exp = InMemoryExporter::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = Tracer::builder("svc")
            .sampler(Sampler::AlwaysOn)
            .exporter(Reporting {
                spans: exp.clone(),
                shut: tx,
            })
            .build();
        (t, exp, rx)
    }

    #[test]
    fn a_span_that_outlives_its_tracer_is_still_exported_then_the_worker_stops() {
        let (t, exp, shut) = reporting();
        t.start("ended before").end();
        let mut open = t.start("outlives the tracer");
        open.set_attribute("k", 1i64);
        let mut other_thread = t.start("ended on another thread");
        drop(t);
        // Dropping the tracer exported what had ended, before returning.
        let names =
            |spans: &[SpanData]| spans.iter().map(|s| s.name.to_string()).collect::<Vec<_>>();
        assert_eq!(names(&exp.finished_spans()), ["ended before"]);
        // The worker stays while spans are open.
        assert!(shut.try_recv().is_err(), "stopped with spans open");
        std::thread::spawn(move || other_thread.end())
            .join()
            .unwrap();
        open.end();
        assert!(exp.wait_for(Duration::from_secs(10), |s| s.len() == 3));
        let spans = exp.finished_spans();
        let late = spans
            .iter()
            .find(|s| s.name == "outlives the tracer")
            .unwrap();
        assert_eq!(late.attribute("k"), Some(&Value::I64(1)));
        // With nothing open any more, it shuts the exporter down and stops.
        assert!(shut.recv_timeout(Duration::from_secs(10)).is_ok());
        // A span ended after that is dropped quietly.
        drop(open);
    }

    #[test]
    fn dropping_the_last_handle_with_nothing_open_shuts_down_at_once() {
        let (t, exp, shut) = reporting();
        for _ in 0..10 {
            t.start("x").end();
        }
        drop(t);
        assert_eq!(exp.finished_spans().len(), 10);
        assert!(
            shut.try_recv().is_ok(),
            "exporter shut down before drop returned"
        );
    }

    #[test]
    fn spans_ended_after_shutdown_are_dropped_and_counted() {
        let (t, exp, _shut) = reporting();
        let open = t.start("late");
        t.start("early").end();
        assert!(t.shutdown(Duration::from_secs(5)));
        drop(open);
        // On a thread that never made a lane, too.
        let t2 = t.clone();
        let other = t.start("late, elsewhere");
        std::thread::spawn(move || drop(other)).join().unwrap();
        let s = t2.stats();
        assert_eq!(exp.finished_spans().len(), 1);
        assert_eq!((s.started, s.exported, s.dropped), (3, 1, 2));
    }

    #[test]
    fn explicit_and_measured_times_are_exported_as_unix_nanoseconds() {
        let (t, exp) = setup(Sampler::AlwaysOn);
        let before = crate::span::now_unix_nanos();
        t.start("measured").end();
        let after = crate::span::now_unix_nanos();
        let mut both = t.span("both explicit").start_time(1_000).start();
        both.end_at(5_000);
        t.span("explicit start")
            .start_time(before - 7)
            .start()
            .end();
        let mut early = t.start("ends before it starts");
        early.end_at(10);
        flush(&t);
        let spans = exp.finished_spans();
        let get = |n: &str| spans.iter().find(|s| s.name == n).unwrap();
        let m = get("measured");
        assert!(before <= m.start_time_unix_nano, "{before} {m:?}");
        assert!(m.start_time_unix_nano <= m.end_time_unix_nano && m.end_time_unix_nano <= after);
        let b = get("both explicit");
        assert_eq!(
            (b.start_time_unix_nano, b.end_time_unix_nano),
            (1_000, 5_000)
        );
        let e = get("explicit start");
        assert_eq!(e.start_time_unix_nano, before - 7);
        assert!(
            e.end_time_unix_nano >= before && e.end_time_unix_nano <= crate::span::now_unix_nanos()
        );
        let x = get("ends before it starts");
        assert!(x.start_time_unix_nano >= before);
        assert_eq!(
            x.end_time_unix_nano, x.start_time_unix_nano,
            "clamped to the start"
        );
    }

    #[test]
    fn invalid_node_id_is_rejected_by_try_build() {
        assert!(Tracer::builder("s").node_id("").try_build().is_err());
        let t = Tracer::builder("s").node_id("").build();
        assert!(t.node_id().starts_with("s#"));
    }
}

/// Reads a [`TracerBuilder`] from the standard OpenTelemetry environment
/// variables, so a pod configured by the clew operator (or any OTel setup)
/// needs no code changes:
///
/// | variable | effect |
/// |---|---|
/// | `OTEL_SERVICE_NAME` | service name (else `default_service`) |
/// | `OTEL_RESOURCE_ATTRIBUTES` | `k=v,k2=v2` resource attributes (percent-decoded); `service.name` there is used when `OTEL_SERVICE_NAME` is unset |
/// | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | the sampler |
/// | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` | OTLP/gRPC exporter endpoint |
/// | `OTEL_EXPORTER_OTLP_PROTOCOL` | must be `grpc` (the default) when set |
/// | `OTEL_SDK_DISABLED=true` | sample nothing, export nothing |
pub fn builder_from_env(default_service: &str) -> Result<TracerBuilder> {
    builder_from_lookup(default_service, |k| std::env::var(k).ok())
}

/// [`builder_from_env`] with an explicit variable lookup (for tests and
/// for configuration files that mirror the variables).
pub fn builder_from_lookup(
    default_service: &str,
    get: impl Fn(&str) -> Option<String>,
) -> Result<TracerBuilder> {
    let get = |k: &str| {
        get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let mut resource = Vec::new();
    let mut resource_service = None;
    if let Some(attrs) = get("OTEL_RESOURCE_ATTRIBUTES") {
        for pair in attrs.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                ClewError::Config(format!(
                    "OTEL_RESOURCE_ATTRIBUTES: {pair:?} is not key=value"
                ))
            })?;
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s.trim())
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .map_err(|_| {
                        ClewError::Config(format!(
                            "OTEL_RESOURCE_ATTRIBUTES: {pair:?} is not UTF-8"
                        ))
                    })
            };
            let (k, v) = (decode(k)?, decode(v)?);
            if k == "service.name" {
                resource_service = Some(v);
            } else {
                resource.push((k, v));
            }
        }
    }
    let service = get("OTEL_SERVICE_NAME")
        .or(resource_service)
        .unwrap_or_else(|| default_service.to_string());
    let mut b = Tracer::builder(service);
    for (k, v) in resource {
        b = b.resource_attribute(k, v);
    }
    if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(b.sampler(Sampler::AlwaysOff));
    }
    if let Some(name) = get("OTEL_TRACES_SAMPLER") {
        let arg = get("OTEL_TRACES_SAMPLER_ARG");
        let s = Sampler::from_name(&name, arg.as_deref())
            .map_err(|e| ClewError::Config(format!("OTEL_TRACES_SAMPLER: {e}")))?;
        b = b.sampler(s);
    }
    if let Some(p) = get("OTEL_EXPORTER_OTLP_PROTOCOL")
        && p != "grpc"
    {
        return Err(ClewError::Config(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={p:?}: clew-tracer exports OTLP over gRPC; set it to grpc"
        )));
    }
    if let Some(ep) =
        get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    {
        b = b.exporter(crate::export::OtlpGrpcExporter::new(&ep)?);
    }
    Ok(b)
}

#[cfg(test)]
mod env_tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn reads_service_resource_and_sampler() {
        let t = builder_from_lookup(
            "fallback",
            lookup(&[
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "service.name=res-svc,k8s.pod.name=p%2D1, k8s.namespace.name=ns",
                ),
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0"),
            ]),
        )
        .unwrap()
        .build();
        assert_eq!(t.service_name(), "res-svc");
        let attrs = &t.inner.resource.attributes;
        assert!(
            attrs
                .iter()
                .any(|kv| kv.key == "k8s.pod.name" && kv.value == "p-1".into())
        );
        assert!(!t.start("x").is_recording(), "ratio 0 samples nothing");
    }

    #[test]
    fn service_name_variable_wins_and_default_applies() {
        let t = builder_from_lookup(
            "fallback",
            lookup(&[
                ("OTEL_SERVICE_NAME", "svc"),
                ("OTEL_RESOURCE_ATTRIBUTES", "service.name=other"),
            ]),
        )
        .unwrap()
        .build();
        assert_eq!(t.service_name(), "svc");
        let t = builder_from_lookup("fallback", lookup(&[]))
            .unwrap()
            .build();
        assert_eq!(t.service_name(), "fallback");
    }

    #[test]
    fn bad_settings_are_clear_errors() {
        for (k, v, needle) in [
            ("OTEL_TRACES_SAMPLER", "sometimes", "OTEL_TRACES_SAMPLER"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "novalue",
                "OTEL_RESOURCE_ATTRIBUTES",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf", "grpc"),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://bad host:1",
                "endpoint",
            ),
        ] {
            let err = builder_from_lookup("s", lookup(&[(k, v)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{k}: {err}");
        }
    }

    #[test]
    fn disabled_sdk_samples_nothing() {
        let t = builder_from_lookup("s", lookup(&[("OTEL_SDK_DISABLED", "true")]))
            .unwrap()
            .build();
        assert!(!t.start("x").is_recording());
    }
}
