//! Spans: the live [`Span`] handle and the finished [`SpanData`] it exports.

use std::borrow::Cow;
use std::sync::Arc;

use crate::clock::{NodeId, VectorClock};
use crate::context::{ClockCell, Context};
use crate::ids::{SpanContext, SpanId, TraceId};
use crate::tracer::TracerShared;

/// A string that is usually static: no allocation for literal keys and names.
pub type Str = Cow<'static, str>;

/// A typed attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A string.
    String(Str),
    /// A boolean.
    Bool(bool),
    /// A signed 64-bit integer.
    I64(i64),
    /// A 64-bit float.
    F64(f64),
    /// A list of values.
    Array(Vec<Value>),
}

macro_rules! value_from {
    ($($t:ty => $v:ident $(as $c:ty)?),* $(,)?) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self { Value::$v((v $(as $c)?).into()) }
        }
    )*};
}
value_from!(
    &'static str => String,
    String => String,
    Str => String,
    bool => Bool,
    i64 => I64,
    i32 => I64 as i64,
    u32 => I64 as i64,
    f64 => F64,
);

impl From<u64> for Value {
    /// Values above `i64::MAX` saturate (OTLP has no unsigned integers).
    fn from(v: u64) -> Self {
        Value::I64(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::from(v as u64)
    }
}

impl Value {
    /// The value as display text (strings unquoted).
    pub fn to_text(&self) -> String {
        match self {
            Value::String(s) => s.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::I64(i) => i.to_string(),
            Value::F64(f) => f.to_string(),
            Value::Array(a) => {
                let parts: Vec<String> = a.iter().map(Value::to_text).collect();
                format!("[{}]", parts.join(","))
            }
        }
    }
}

/// An attribute: a key and a typed value.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyValue {
    /// The attribute name, e.g. `http.request.method`.
    pub key: Str,
    /// The value.
    pub value: Value,
}

impl KeyValue {
    /// True when dropping the attribute frees nothing (static key, static
    /// string or scalar value).
    #[inline]
    fn is_trivial(&self) -> bool {
        matches!(self.key, Cow::Borrowed(_))
            && matches!(
                self.value,
                Value::String(Cow::Borrowed(_)) | Value::Bool(_) | Value::I64(_) | Value::F64(_)
            )
    }

    /// A new attribute.
    pub fn new(key: impl Into<Str>, value: impl Into<Value>) -> Self {
        KeyValue {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// What a span represents, as in OpenTelemetry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum SpanKind {
    /// Internal work.
    #[default]
    Internal,
    /// Handling an incoming request.
    Server,
    /// Making an outgoing request.
    Client,
    /// Sending a message.
    Producer,
    /// Receiving a message.
    Consumer,
}

/// The outcome of a span.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Status {
    /// Not set (the default).
    #[default]
    Unset,
    /// Explicitly successful.
    Ok,
    /// Failed, with a description.
    Error(Str),
}

impl Status {
    /// True for [`Status::Error`].
    pub fn is_error(&self) -> bool {
        matches!(self, Status::Error(_))
    }
}

/// A timestamped event inside a span.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Unix nanoseconds.
    pub time_unix_nano: u64,
    /// Event name, e.g. `exception`.
    pub name: Str,
    /// Event attributes.
    pub attributes: Vec<KeyValue>,
}

/// A link to another span.
#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    /// The linked span.
    pub context: SpanContext,
    /// Link attributes.
    pub attributes: Vec<KeyValue>,
}

/// Limits that keep one span bounded in memory.
#[derive(Clone, Copy, Debug)]
pub struct SpanLimits {
    /// Attributes beyond this are dropped and counted.
    pub max_attributes: usize,
    /// Events beyond this are dropped and counted.
    pub max_events: usize,
    /// Links beyond this are dropped and counted.
    pub max_links: usize,
}

impl Default for SpanLimits {
    fn default() -> Self {
        SpanLimits {
            max_attributes: 128,
            max_events: 128,
            max_links: 128,
        }
    }
}

/// A finished span, as handed to exporters.
///
/// Build one with `SpanData { .., ..Default::default() }`: four hidden
/// fields are the live span's bookkeeping (equality ignores them).
///
/// The fields are laid out by hand, in whole cache lines: what the
/// application thread writes for every span (bookkeeping, context, parent,
/// name) fills the first three lines, what only some spans or only the
/// export worker touch comes after. A recycled span's lines were last
/// written by the worker, so each line the application needs costs it a
/// transfer between cores.
#[derive(Clone, Debug)]
#[repr(C, align(64))]
pub struct SpanData {
    /// The tracer a live span records for (none outside the pipeline).
    /// Public only for `..Default::default()`.
    #[doc(hidden)]
    pub tracer: TracerLink,
    /// Attributes in insertion order.
    pub attributes: Vec<KeyValue>,
    /// While the span is live: how many of `attributes` are its own. A
    /// recycled span keeps its earlier attributes as slots to overwrite in
    /// place (cheaper than building each one and moving it in); the export
    /// worker cuts the rest off before the exporter sees the span.
    /// `usize::MAX` outside a live span (all attributes count).
    ///
    /// Bookkeeping of the live span, public only so that
    /// `SpanData { .., ..Default::default() }` works outside this crate.
    #[doc(hidden)]
    pub live_attributes: usize,
    /// Trace id, span id, flags and trace state.
    pub context: SpanContext,
    /// The parent's id, [`SpanId::INVALID`] for a root span.
    pub parent_span_id: SpanId,
    /// Start and end as raw counter readings (0: none, the Unix time field
    /// holds the time): the export worker converts them, so the application
    /// thread only reads the counter. Public only for `..Default::default()`.
    #[doc(hidden)]
    pub raw_times: RawTimes,
    /// The node's own counter at start and end when the span had no shared
    /// clock cell (a root span nothing asked the context of): the export
    /// worker writes them into `clock_start` / `clock_end`, so the
    /// application thread never builds a vector clock for such spans.
    /// 0 means "already in the clock". Public only for `..Default::default()`.
    #[doc(hidden)]
    pub pending_clock: PendingClock,
    /// Operation name.
    pub name: Str,
    /// Span kind.
    pub kind: SpanKind,
    /// Attributes, events and links dropped by [`SpanLimits`].
    pub dropped: u32,
    /// Unix nanoseconds at start.
    pub start_time_unix_nano: u64,
    /// Unix nanoseconds at end.
    pub end_time_unix_nano: u64,
    /// Outcome.
    pub status: Status,
    /// Events in insertion order.
    pub events: Vec<Event>,
    /// Links.
    pub links: Vec<Link>,
    /// The node's vector clock when the span started.
    pub clock_start: VectorClock,
    /// The node's vector clock when the span ended.
    pub clock_end: VectorClock,
}

/// The tracer a span allocation belongs to: set once when the allocation is
/// made and kept through recycling, so no span pays for a reference count.
#[doc(hidden)]
#[derive(Clone, Default)]
pub struct TracerLink(Option<Arc<TracerShared>>);

impl TracerLink {
    #[inline]
    pub(crate) fn get(&self) -> Option<&TracerShared> {
        self.0.as_deref()
    }
}

impl std::fmt::Debug for TracerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TracerLink")
    }
}

/// Raw counter readings not yet converted to Unix nanoseconds.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawTimes {
    pub(crate) start: u64,
    pub(crate) end: u64,
}

/// Node counters not yet written into a span's vector clocks.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingClock {
    pub(crate) start: u64,
    pub(crate) end: u64,
}

impl PartialEq for SpanData {
    fn eq(&self, o: &Self) -> bool {
        self.context == o.context
            && self.parent_span_id == o.parent_span_id
            && self.name == o.name
            && self.kind == o.kind
            && self.start_time_unix_nano == o.start_time_unix_nano
            && self.end_time_unix_nano == o.end_time_unix_nano
            && self.attributes == o.attributes
            && self.events == o.events
            && self.links == o.links
            && self.status == o.status
            && self.clock_start == o.clock_start
            && self.clock_end == o.clock_end
            && self.dropped == o.dropped
    }
}

impl Default for SpanData {
    fn default() -> Self {
        SpanData::empty()
    }
}

impl SpanData {
    /// An empty span, ready to be filled.
    pub(crate) fn empty() -> Self {
        SpanData {
            context: SpanContext::default(),
            parent_span_id: SpanId::INVALID,
            name: Cow::Borrowed(""),
            kind: SpanKind::Internal,
            start_time_unix_nano: 0,
            end_time_unix_nano: 0,
            attributes: Vec::new(),
            events: Vec::new(),
            links: Vec::new(),
            status: Status::Unset,
            clock_start: VectorClock::new(),
            clock_end: VectorClock::new(),
            dropped: 0,
            live_attributes: usize::MAX,
            pending_clock: PendingClock { start: 0, end: 0 },
            raw_times: RawTimes { start: 0, end: 0 },
            tracer: TracerLink(None),
        }
    }

    /// A new span for a live [`Span`] of `tracer` to record into.
    pub(crate) fn for_recording(tracer: Arc<TracerShared>) -> Box<Self> {
        let mut d = Box::new(SpanData::empty());
        d.live_attributes = 0;
        d.tracer = TracerLink(Some(tracer));
        d
    }

    /// Clears an exported span for reuse, keeping its allocations. Runs on
    /// the export worker, which has just read the span anyway, so that the
    /// application thread only writes to a recycled span and never waits
    /// on reading it: afterwards every field the application overwrites
    /// holds a value with nothing to free (see [`overwrite`]), and every
    /// attribute kept as a slot is trivial.
    pub(crate) fn clear_for_reuse(&mut self) {
        self.context = SpanContext::default();
        self.name = Cow::Borrowed("");
        if !self.attributes.iter().all(KeyValue::is_trivial) {
            self.attributes.clear();
        }
        // The attributes stay, as slots for the next use (`live_attributes`).
        self.live_attributes = 0;
        self.events.clear();
        self.links.clear();
        self.status = Status::Unset;
        // The clocks stay: every span overwrites both (`tick_into`, or
        // `reset_to` in `settle`), and keeping this node's entry spares
        // dropping and cloning its id for each span.
        self.pending_clock = PendingClock::default();
        self.raw_times = RawTimes::default();
        self.dropped = 0;
    }

    /// Appends attributes known at start (replacing any recycled slots).
    pub(crate) fn start_attributes(&mut self, attributes: &mut Vec<KeyValue>) {
        self.attributes.truncate(self.live_attributes);
        self.attributes.append(attributes);
        self.live_attributes = self.attributes.len();
    }

    /// Makes the span what exporters expect: drops recycled attribute slots,
    /// applies attribute replacement, writes pending clock entries for
    /// `node`. Called once, on the export worker.
    pub(crate) fn settle(&mut self, node: &NodeId) {
        let RawTimes { start, end } = std::mem::take(&mut self.raw_times);
        if start != 0 {
            self.start_time_unix_nano = crate::time::raw_to_unix_nanos(start);
        }
        if end != 0 {
            self.end_time_unix_nano = crate::time::raw_to_unix_nanos(end);
        }
        self.end_time_unix_nano = self.end_time_unix_nano.max(self.start_time_unix_nano);
        self.attributes.truncate(self.live_attributes);
        self.dedupe_attributes();
        self.live_attributes = self.attributes.len();
        let PendingClock { start, end } = std::mem::take(&mut self.pending_clock);
        if start > 0 {
            // No shared clock at start: the start clock is this node's
            // entry alone (whatever a recycled span held before).
            self.clock_start.reset_to(node, start);
        }
        if end > 0 {
            if self.clock_start.len() == 1 {
                self.clock_end.reset_to(node, end);
            } else {
                self.clock_end.clone_from(&self.clock_start);
                self.clock_end.set(node.as_str(), end);
            }
        }
    }

    /// The span's clock at start, pending entry included.
    pub(crate) fn start_clock(&self, node: &str) -> VectorClock {
        if self.pending_clock.start > 0 {
            // No shared clock at start: this node's entry alone (what
            // `clock_start` holds meanwhile is a recycled span's).
            let mut c = VectorClock::new();
            c.set(node, self.pending_clock.start);
            return c;
        }
        self.clock_start.clone()
    }

    /// Keeps one attribute per key: the last value set, at the position the
    /// key was first set.
    pub fn dedupe_attributes(&mut self) {
        if !may_repeat_a_key(&self.attributes) {
            // The common case, told apart without comparing strings.
            return;
        }
        let attrs = &mut self.attributes;
        let mut i = 0;
        while i + 1 < attrs.len() {
            let mut latest = None;
            let mut j = i + 1;
            while j < attrs.len() {
                if attrs[j].key == attrs[i].key {
                    // Later duplicates overwrite earlier ones.
                    latest = Some(attrs.remove(j).value);
                } else {
                    j += 1;
                }
            }
            if let Some(v) = latest {
                attrs[i].value = v;
            }
            i += 1;
        }
    }

    /// Duration in nanoseconds (0 if the clock went backwards).
    pub fn duration_nanos(&self) -> u64 {
        self.end_time_unix_nano
            .saturating_sub(self.start_time_unix_nano)
    }

    /// The attribute with `key`, if any.
    pub fn attribute(&self, key: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find(|kv| kv.key == key)
            .map(|kv| &kv.value)
    }
}

/// False when no two attributes can share a key: their keys' fingerprints
/// (length, first and last eight bytes) all differ. True means "compare
/// the strings" (a repeat, or two different keys alike in all three).
fn may_repeat_a_key(attrs: &[KeyValue]) -> bool {
    const SMALL: usize = 16;
    match attrs.len() {
        0 | 1 => false,
        n if n <= SMALL => {
            let mut fps = [0u64; SMALL];
            for (f, kv) in fps.iter_mut().zip(attrs) {
                *f = key_fingerprint(&kv.key);
            }
            (1..n).any(|j| fps[..j].contains(&fps[j]))
        }
        _ => {
            let mut fps: Vec<u64> = attrs.iter().map(|kv| key_fingerprint(&kv.key)).collect();
            fps.sort_unstable();
            fps.windows(2).any(|w| w[0] == w[1])
        }
    }
}

fn key_fingerprint(key: &str) -> u64 {
    let b = key.as_bytes();
    let n = b.len();
    let (head, tail) = match (b.first_chunk::<8>(), b.last_chunk::<8>()) {
        (Some(h), Some(t)) => (u64::from_le_bytes(*h), u64::from_le_bytes(*t)),
        // Under eight bytes: the whole key, one byte at a time.
        _ => (b.iter().fold(0u64, |w, &c| (w << 8) | u64::from(c)), 0),
    };
    head ^ tail.rotate_left(29) ^ (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

pub use crate::time::now_unix_nanos;

/// Writes `value` over `slot` without dropping the old value, which must
/// have nothing to free: an attribute slot or a field of a span cleared by
/// [`SpanData::clear_for_reuse`]. Not reading the old value matters: the
/// slot's cache line was last touched by the export worker, and a store
/// that misses does not stall the thread the way a load does. (Were the old
/// value to own memory after all, it would leak, nothing worse.)
#[inline(always)]
pub(crate) fn overwrite<T>(slot: &mut T, value: T) {
    std::mem::forget(std::mem::replace(slot, value));
}

/// A live span. End it with [`Span::end`]; a span that is dropped is ended
/// then. Ending twice is harmless.
///
/// An unsampled span records nothing but still carries its [`SpanContext`],
/// so context propagates through it.
pub struct Span {
    pub(crate) context: SpanContext,
    // The trace's clock cell. A root span that no child or outgoing call
    // has asked for yet has none: its clock is just its own entry, and the
    // cell is made on the first `context()`.
    pub(crate) clock: std::sync::OnceLock<Arc<ClockCell>>,
    pub(crate) baggage: Option<Arc<crate::propagation::baggage::Baggage>>,
    // Dropped by hand in `Drop` (it is `None` by then unless ending failed),
    // which spares every span an out-of-line drop call for the field.
    pub(crate) recording: std::mem::ManuallyDrop<Option<Box<SpanData>>>,
}

impl std::fmt::Debug for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Span")
            .field("context", &self.context)
            .field("recording", &self.recording.is_some())
            .finish()
    }
}

impl Span {
    /// A span that records nothing and has an invalid context.
    pub fn noop() -> Span {
        Span {
            context: SpanContext::default(),
            clock: std::sync::OnceLock::new(),
            baggage: None,
            recording: std::mem::ManuallyDrop::new(None),
        }
    }

    /// This span's propagating context.
    pub fn span_context(&self) -> &SpanContext {
        &self.context
    }

    /// The trace id.
    pub fn trace_id(&self) -> TraceId {
        self.context.trace_id
    }

    /// The span id.
    pub fn span_id(&self) -> SpanId {
        self.context.span_id
    }

    /// True while the span records (sampled and not yet ended).
    pub fn is_recording(&self) -> bool {
        self.recording.is_some()
    }

    /// A [`Context`] whose parent span is this one: pass it to children,
    /// [`Context::attach`] it, or inject it into outgoing requests.
    pub fn context(&self) -> Context {
        Context::from_parts(
            Some(self.context.clone()),
            self.clock_cell(),
            self.baggage.clone(),
        )
    }

    fn clock_cell(&self) -> Option<Arc<ClockCell>> {
        if let Some(c) = self.clock.get() {
            return Some(Arc::clone(c));
        }
        let data = self.recording.as_deref()?;
        let node = data.tracer.get()?.node.id();
        Some(Arc::clone(
            self.clock
                .get_or_init(|| ClockCell::new(data.start_clock(node))),
        ))
    }

    /// Sets an attribute; a later value for the same key replaces an earlier
    /// one. Over the limit it is dropped and counted.
    ///
    /// This only appends: replacing happens on the export thread
    /// ([`SpanData::dedupe_attributes`]), off the application's path. Each
    /// call counts against the limit, repeated keys included.
    #[inline]
    pub fn set_attribute(&mut self, key: impl Into<Str>, value: impl Into<Value>) {
        if let Some(data) = self.recording.as_deref_mut() {
            let n = data.live_attributes;
            let max = data.tracer.get().map_or(0, |t| t.limits.max_attributes);
            if n < max {
                match data.attributes.get_mut(n) {
                    // Written in place: no temporary to copy in.
                    Some(slot) => overwrite(
                        slot,
                        KeyValue {
                            key: key.into(),
                            value: value.into(),
                        },
                    ),
                    None => data.attributes.push(KeyValue {
                        key: key.into(),
                        value: value.into(),
                    }),
                }
                data.live_attributes = n + 1;
            } else {
                data.dropped = data.dropped.saturating_add(1);
            }
        }
    }

    /// Adds an event timestamped now.
    pub fn add_event(&mut self, name: impl Into<Str>, attributes: Vec<KeyValue>) {
        if let Some(data) = self.recording.as_deref_mut() {
            let max = data.tracer.get().map_or(0, |t| t.limits.max_events);
            if data.events.len() < max {
                data.events.push(Event {
                    time_unix_nano: now_unix_nanos(),
                    name: name.into(),
                    attributes,
                });
            } else {
                data.dropped = data.dropped.saturating_add(1);
            }
        }
    }

    /// Adds a link to another span.
    pub fn add_link(&mut self, context: SpanContext, attributes: Vec<KeyValue>) {
        if let Some(data) = self.recording.as_deref_mut() {
            let max = data.tracer.get().map_or(0, |t| t.limits.max_links);
            if data.links.len() < max {
                data.links.push(Link {
                    context,
                    attributes,
                });
            } else {
                data.dropped = data.dropped.saturating_add(1);
            }
        }
    }

    /// Sets the status. `Ok` is final: a later `Error` does not replace it,
    /// as the OpenTelemetry spec requires.
    pub fn set_status(&mut self, status: Status) {
        if let Some(data) = self.recording.as_deref_mut() {
            match (&data.status, &status) {
                (Status::Ok, _) | (_, Status::Unset) => {}
                _ => data.status = status,
            }
        }
    }

    /// Records an error: status Error and an `exception` event.
    pub fn record_error(&mut self, err: &dyn std::error::Error) {
        if self.recording.is_some() {
            let msg = err.to_string();
            self.add_event(
                "exception",
                vec![KeyValue::new("exception.message", msg.clone())],
            );
            self.set_status(Status::Error(msg.into()));
        }
    }

    /// Renames the span.
    pub fn update_name(&mut self, name: impl Into<Str>) {
        if let Some(data) = self.recording.as_deref_mut() {
            data.name = name.into();
        }
    }

    /// Changes the kind (for layers that learn it late).
    pub fn set_kind(&mut self, kind: SpanKind) {
        if let Some(data) = self.recording.as_deref_mut() {
            data.kind = kind;
        }
    }

    /// Ends the span now. Later calls do nothing.
    pub fn end(&mut self) {
        if self.recording.is_some() {
            self.finish::<false>(None);
        }
    }

    /// Ends the span with an explicit end time. Later calls do nothing.
    pub fn end_at(&mut self, end_time_unix_nano: u64) {
        self.finish::<false>(Some(end_time_unix_nano));
    }

    /// Ends the span now and returns its end clock, so a server can send
    /// exactly that clock back with its last message.
    pub(crate) fn end_with_clock(&mut self) -> Option<VectorClock> {
        self.finish::<true>(None)
    }

    /// Ends the span, now or at `end_time_unix_nano`; with `CLOCK`, returns
    /// its end clock. (An end before the start is moved to the start, on
    /// the export worker.)
    #[inline]
    fn finish<const CLOCK: bool>(
        &mut self,
        end_time_unix_nano: Option<u64>,
    ) -> Option<VectorClock> {
        let mut data = self.recording.take()?;
        // Moved out and back (no reference count): `data` is written below.
        let tracer = data.tracer.0.take()?;
        match end_time_unix_nano {
            None => data.raw_times.end = crate::time::raw_now(),
            Some(t) => data.end_time_unix_nano = t,
        }
        match self.clock.get() {
            Some(cell) => cell.tick_into(&tracer.node, &mut data.clock_end),
            None => {
                // Nothing shared this span's clock: the end is one more
                // local event after the start (written on the export worker).
                data.pending_clock.end = tracer.node.next_after(data.pending_clock.start);
            }
        }
        let end_clock = CLOCK.then(|| {
            if data.pending_clock.end == 0 {
                return data.clock_end.clone();
            }
            let mut end = data.start_clock(tracer.node.id());
            end.set(tracer.node.id(), data.pending_clock.end);
            end
        });
        data.tracer.0 = Some(tracer);
        crate::export::batch::end_span(data);
        end_clock
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.end();
        drop(self.recording.take());
    }
}

/// Builds a span: set what you know before start, then [`SpanBuilder::start`].
#[derive(Debug)]
#[must_use = "a span builder does nothing until start()"]
pub struct SpanBuilder {
    pub(crate) tracer: crate::Tracer,
    pub(crate) name: Str,
    pub(crate) kind: SpanKind,
    pub(crate) parent: Option<Context>,
    pub(crate) attributes: Vec<KeyValue>,
    pub(crate) links: Vec<Link>,
    pub(crate) start_time: Option<u64>,
}

impl SpanBuilder {
    /// Sets the span kind.
    pub fn kind(mut self, kind: SpanKind) -> Self {
        self.kind = kind;
        self
    }

    /// Uses `cx` as the parent instead of the current context.
    pub fn parent(mut self, cx: &Context) -> Self {
        self.parent = Some(cx.clone());
        self
    }

    /// Starts a new trace, ignoring the current context.
    pub fn root(mut self) -> Self {
        self.parent = Some(Context::new());
        self
    }

    /// Adds an attribute known at start (samplers see these).
    pub fn attribute(mut self, key: impl Into<Str>, value: impl Into<Value>) -> Self {
        self.attributes.push(KeyValue::new(key, value));
        self
    }

    /// Adds attributes known at start.
    pub fn attributes(mut self, attrs: impl IntoIterator<Item = KeyValue>) -> Self {
        self.attributes.extend(attrs);
        self
    }

    /// Adds a link.
    pub fn link(mut self, context: SpanContext, attributes: Vec<KeyValue>) -> Self {
        self.links.push(Link {
            context,
            attributes,
        });
        self
    }

    /// Sets an explicit start time (Unix nanoseconds).
    pub fn start_time(mut self, unix_nanos: u64) -> Self {
        self.start_time = Some(unix_nanos);
        self
    }

    /// Starts the span.
    pub fn start(self) -> Span {
        let tracer = self.tracer.clone();
        tracer.build_span(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Keys alike in length, head or tail, so that fingerprints are put
    /// to the test (more than 16 of them, for the sorted path too).
    const KEYS: [&str; 24] = [
        "k0",
        "k1",
        "k2",
        "k3",
        "k4",
        "k5",
        "",
        "a",
        "http.request.method",
        "http.request.methoD",
        "xttp.request.method",
        "http.response.status_code",
        "http.response.status_codf",
        "user_agent.original",
        "url.path",
        "url.pat",
        "url.pathh",
        "aaaaaaaaaaaaaaaaaaaa",
        "aaaaaaaaaaaaaaaaaaab",
        "baaaaaaaaaaaaaaaaaaa",
        "aaaaaaaabaaaaaaaaaaa",
        "12345678",
        "1234567",
        "123456789",
    ];

    #[test]
    fn distinct_keys_need_no_string_comparison() {
        let attrs: Vec<KeyValue> = [
            "http.request.method",
            "url.path",
            "server.address",
            "user_agent.original",
            "app.tenant",
        ]
        .into_iter()
        .map(|k| KeyValue::new(k, "v"))
        .collect();
        assert!(!may_repeat_a_key(&attrs));
        let many: Vec<KeyValue> = (0..40)
            .map(|i| KeyValue::new(format!("key.{i}"), i))
            .collect();
        assert!(!may_repeat_a_key(&many));
        assert!(may_repeat_a_key(&[many[3].clone(), many[3].clone()]));
    }

    #[test]
    fn keys_that_differ_only_inside_still_count_as_different() {
        // Same length, head and tail: the fingerprint collides, and the
        // strings decide.
        let mut d = SpanData::empty();
        d.attributes
            .push(KeyValue::new("aaaaaaaabaaaaaaaaaaa", 1i64));
        d.attributes
            .push(KeyValue::new("aaaaaaaacaaaaaaaaaaa", 2i64));
        assert!(may_repeat_a_key(&d.attributes));
        d.dedupe_attributes();
        assert_eq!(d.attributes.len(), 2);
    }

    proptest! {
        #[test]
        fn dedupe_keeps_last_value_in_first_position(
            keys in prop::collection::vec(0usize..KEYS.len(), 0..40)
        ) {
            let mut d = SpanData::empty();
            for (i, k) in keys.iter().enumerate() {
                d.attributes.push(KeyValue::new(KEYS[*k], i as i64));
            }
            d.dedupe_attributes();
            let mut expected: Vec<(String, i64)> = Vec::new();
            for (i, k) in keys.iter().enumerate() {
                let key = KEYS[*k].to_string();
                match expected.iter_mut().find(|(ek, _)| *ek == key) {
                    Some(e) => e.1 = i as i64,
                    None => expected.push((key, i as i64)),
                }
            }
            let got: Vec<(String, i64)> = d
                .attributes
                .iter()
                .map(|kv| (kv.key.to_string(), match kv.value { Value::I64(v) => v, _ => -1 }))
                .collect();
            prop_assert_eq!(got, expected);
        }
    }
}
