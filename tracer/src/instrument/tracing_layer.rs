//! A `tracing_subscriber::Layer` that turns `tracing` spans into clew spans.
//!
//! - A `tracing` span becomes a clew span; its parent is the enclosing
//!   `tracing` span's clew span, else the current clew [`Context`].
//! - Fields become attributes (on creation and on `record`).
//!   `otel.name` renames, `otel.kind` (`server`, `client`, `producer`,
//!   `consumer`, `internal`) sets the kind, `otel.status_code` (`ok`/`error`)
//!   and `otel.status_message` set the status.
//! - Events become span events; an `ERROR` event sets status Error.
//! - Entering a `tracing` span attaches its clew context, so clew spans and
//!   outgoing requests made inside see it as parent.

use std::cell::RefCell;
use std::fmt::Write as _;

use tracing_core::field::{Field, Visit};
use tracing_core::span::{Attributes, Id, Record};
use tracing_core::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context as LayerContext;
use tracing_subscriber::registry::LookupSpan;

use crate::context::{Context, ContextGuard};
use crate::span::{KeyValue, Span, SpanKind, Status, Value};
use crate::tracer::Tracer;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct ClewLayer {
    tracer: Tracer,
}

impl ClewLayer {
    /// A layer that records through `tracer`.
    pub fn new(tracer: Tracer) -> Self {
        ClewLayer { tracer }
    }
}

/// The clew span kept in a `tracing` span's extensions.
struct Stored(Span);

thread_local! {
    // Context guards of entered spans, innermost last.
    static ENTERED: RefCell<Vec<(Id, ContextGuard)>> = const { RefCell::new(Vec::new()) };
}

#[derive(Default)]
struct FieldVisitor {
    attrs: Vec<KeyValue>,
    name: Option<String>,
    kind: Option<SpanKind>,
    status: Option<Status>,
    status_message: Option<String>,
    message: Option<String>,
}

impl FieldVisitor {
    fn put(&mut self, field: &Field, value: Value) {
        match field.name() {
            "otel.name" => self.name = Some(value.to_text()),
            "otel.kind" => {
                self.kind = Some(match value.to_text().to_ascii_lowercase().as_str() {
                    "server" => SpanKind::Server,
                    "client" => SpanKind::Client,
                    "producer" => SpanKind::Producer,
                    "consumer" => SpanKind::Consumer,
                    _ => SpanKind::Internal,
                })
            }
            "otel.status_code" => {
                self.status = match value.to_text().to_ascii_lowercase().as_str() {
                    "ok" => Some(Status::Ok),
                    "error" => Some(Status::Error("".into())),
                    _ => None,
                }
            }
            "otel.status_message" => self.status_message = Some(value.to_text()),
            "message" => self.message = Some(value.to_text()),
            name => self.attrs.push(KeyValue::new(name, value)),
        }
    }

    fn apply(self, span: &mut Span) {
        for kv in self.attrs {
            span.set_attribute(kv.key, kv.value);
        }
        if let Some(n) = self.name {
            span.update_name(n);
        }
        if let Some(k) = self.kind {
            span.set_kind(k);
        }
        match (self.status, self.status_message) {
            (Some(Status::Error(_)), msg) => {
                span.set_status(Status::Error(msg.unwrap_or_default().into()))
            }
            (Some(s), _) => span.set_status(s),
            (None, _) => {}
        }
    }
}

impl Visit for FieldVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        self.put(field, Value::String(s.into()));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string().into()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::I64(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::F64(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string().into()));
    }
}

impl<S> Layer<S> for ClewLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let Some(span_ref) = ctx.span(id) else { return };
        let parent_cx = if attrs.is_root() {
            Some(Context::new())
        } else {
            let parent = match attrs.parent() {
                Some(p) => ctx.span(p),
                None => ctx.lookup_current(),
            };
            parent.and_then(|p| p.extensions().get::<Stored>().map(|s| s.0.context()))
        };
        let meta = attrs.metadata();
        let mut builder = self.tracer.span(meta.name());
        if let Some(cx) = &parent_cx {
            builder = builder.parent(cx);
        }
        let mut span = builder.start();
        if span.is_recording() {
            let mut v = FieldVisitor::default();
            attrs.record(&mut v);
            v.apply(&mut span);
            span.set_attribute("code.namespace", meta.target());
        }
        span_ref.extensions_mut().insert(Stored(span));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: LayerContext<'_, S>) {
        if let Some(s) = ctx.span(id)
            && let Some(Stored(span)) = s.extensions_mut().get_mut::<Stored>()
        {
            let mut v = FieldVisitor::default();
            values.record(&mut v);
            v.apply(span);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: LayerContext<'_, S>) {
        let Some(s) = ctx.event_span(event) else {
            return;
        };
        let mut ext = s.extensions_mut();
        let Some(Stored(span)) = ext.get_mut::<Stored>() else {
            return;
        };
        if !span.is_recording() {
            return;
        }
        let mut v = FieldVisitor::default();
        event.record(&mut v);
        let meta = event.metadata();
        let name = v.message.clone().unwrap_or_else(|| meta.name().to_string());
        let mut attrs = std::mem::take(&mut v.attrs);
        attrs.push(KeyValue::new("level", meta.level().as_str()));
        attrs.push(KeyValue::new("target", meta.target()));
        if *meta.level() == Level::ERROR {
            span.set_status(Status::Error(name.clone().into()));
        }
        span.add_event(name, attrs);
    }

    fn on_enter(&self, id: &Id, ctx: LayerContext<'_, S>) {
        let Some(s) = ctx.span(id) else { return };
        let cx = match s.extensions().get::<Stored>() {
            Some(Stored(span)) => span.context(),
            None => return,
        };
        let guard = cx.attach();
        ENTERED.with(|e| e.borrow_mut().push((id.clone(), guard)));
    }

    fn on_exit(&self, id: &Id, _ctx: LayerContext<'_, S>) {
        ENTERED.with(|e| {
            let mut e = e.borrow_mut();
            // Spans usually exit in LIFO order; tolerate the odd one out.
            if let Some(pos) = e.iter().rposition(|(i, _)| i == id) {
                let (_, guard) = e.remove(pos);
                drop(guard);
            }
        });
    }

    fn on_close(&self, id: Id, ctx: LayerContext<'_, S>) {
        if let Some(s) = ctx.span(&id)
            && let Some(Stored(mut span)) = s.extensions_mut().remove::<Stored>()
        {
            span.end();
        }
    }
}
