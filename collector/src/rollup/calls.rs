//! Call edges at ingest: a span whose parent span belongs to another
//! service is a call, parent service → child service (Jaeger's dependency
//! rule: calls within one service are not edges), with the child span's
//! status and duration.
//!
//! The roll-ups see every span of a trace (all spans of a trace reach one
//! collector), in WAL order, but a parent and its child may come in
//! different records and in either order. [`Calls`] pairs them: each span
//! seen is kept as `(trace, span) → service`, and a child whose parent has
//! not been seen waits under `(trace, parent)`; whichever of the two comes
//! second makes the call, counted with that record's sequence number (the
//! later of the two), so the roll-ups' exactly-once rules hold for calls as
//! for spans.
//!
//! Spans are kept per trace (a run of one trace's spans costs one lookup
//! in the large map, then a small vector that stays in cache); children
//! waiting for their parent in a map of their own, small while parents
//! come soon.
//!
//! What is kept is bounded by time, in two generations: spans seen since
//! the last turn and in the one before; [`Calls::turn`] forgets the older,
//! counting its children that never met their parent as unpaired (the
//! OpenTelemetry servicegraph connector's store, with its TTL). The WAL
//! keeps every record either generation holds ([`Calls::min_seq`]), so a
//! replay after a crash pairs what the crashed run had not written.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::Instant;

use clew_analysis::rollup::CallRecord;

/// Keys are hashes already: used as they are.
type Map<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;

/// The identity hasher of a `u64` key that is itself a hash.
#[derive(Debug, Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A span as the pairing sees it: its trace (hashed) and the ids of it
/// and of its parent.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ids {
    trace: u64,
    span: u64,
    parent: Option<u64>,
}

const HASHER: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x636c_6577);

/// A span id as a key: its 8 bytes, or a hash of other lengths.
fn span_key(id: &[u8]) -> u64 {
    match <[u8; 8]>::try_from(id) {
        Ok(b) => u64::from_ne_bytes(b),
        Err(_) => HASHER.hash_one(id),
    }
}

impl Ids {
    /// `None` for a span without an id (it can be nobody's parent, and
    /// ingest refuses it anyway).
    pub fn of(trace_id: &[u8], span_id: &[u8], parent_span_id: &[u8]) -> Option<Ids> {
        if span_id.is_empty() {
            return None;
        }
        Some(Ids {
            trace: HASHER.hash_one(trace_id),
            span: span_key(span_id),
            parent: (!parent_span_id.is_empty()).then(|| span_key(parent_span_id)),
        })
    }
}

/// The child side of a call: what the call is counted with.
#[derive(Debug, Clone, Copy)]
pub(super) struct Callee {
    pub start_unix_nanos: u64,
    pub is_error: bool,
    pub duration_nanos: u64,
}

/// A call found: counted in the bucket of the child's start.
#[derive(Debug, Clone)]
pub(super) struct Call {
    pub parent: Arc<str>,
    pub child: Arc<str>,
    pub callee: Callee,
}

impl Call {
    pub fn record(&self) -> CallRecord<'_> {
        CallRecord {
            parent: &self.parent,
            child: &self.child,
            is_error: self.callee.is_error,
            duration_nanos: self.callee.duration_nanos,
        }
    }
}

#[derive(Debug)]
struct Waiting {
    service: u32,
    callee: Callee,
}

/// Spans of a trace kept in a vector, searched in order, up to this many;
/// past it in a map.
const SMALL_TRACE: usize = 32;

/// One trace's spans in a generation: span id → its service.
#[derive(Debug, Default)]
struct TraceSpans {
    /// While the trace is small.
    spans: Vec<(u64, u32)>,
    /// Once it is not.
    index: Option<Box<Map<u32>>>,
}

impl TraceSpans {
    fn service_of(&self, span: u64) -> Option<u32> {
        match &self.index {
            Some(index) => index.get(&span).copied(),
            None => self.spans.iter().find(|(s, _)| *s == span).map(|&(_, v)| v),
        }
    }

    fn insert(&mut self, span: u64, service: u32) {
        if let Some(index) = &mut self.index {
            index.insert(span, service);
            return;
        }
        if self.spans.is_empty() {
            self.spans.reserve_exact(8);
        }
        self.spans.push((span, service));
        if self.spans.len() > SMALL_TRACE {
            self.index = Some(Box::new(self.spans.drain(..).collect()));
            self.spans = Vec::new();
        }
    }
}

/// (trace, parent span id) → the children seen before their parent.
type Waiters = HashMap<(u64, u64), Vec<Waiting>, foldhash::fast::FixedState>;

#[derive(Debug, Default)]
struct Generation {
    /// Per trace: one lookup for a run of its spans, then a small vector.
    traces: Map<TraceSpans>,
    /// Children waiting for their parent: apart from the traces, so that
    /// looking for a span's waiting children reads a small map (only the
    /// children whose parent is late), not the trace's entry.
    waiting: Waiters,
    /// Spans held.
    spans: usize,
    /// The lowest record held.
    min_seq: Option<u64>,
}

impl Generation {
    fn service_of(&self, trace: u64, span: u64) -> Option<u32> {
        self.traces.get(&trace)?.service_of(span)
    }

    fn waiting_for(&mut self, trace: u64, span: u64) -> Option<Vec<Waiting>> {
        if self.waiting.is_empty() {
            return None;
        }
        self.waiting.remove(&(trace, span))
    }

    fn unpaired(&self) -> u64 {
        self.waiting.values().map(|w| w.len() as u64).sum()
    }
}

/// Pairs parents and children into calls. See the [module docs](self).
#[derive(Debug)]
pub(super) struct Calls {
    current: Generation,
    previous: Generation,
    turned_at: Instant,
    services: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, u32, foldhash::fast::RandomState>,
    /// The service interned last.
    last: u32,
    /// Children forgotten without meeting their parent.
    pub unpaired: u64,
}

/// Spans one generation holds at most: past it, it turns early.
const MAX_SPANS: usize = 1 << 21;

impl Default for Calls {
    fn default() -> Self {
        Calls {
            current: Generation::default(),
            previous: Generation::default(),
            turned_at: Instant::now(),
            services: Vec::new(),
            ids: HashMap::default(),
            last: 0,
            unpaired: 0,
        }
    }
}

impl Calls {
    /// Sees one span of record `seq` of `service`; adds to `calls` those
    /// it completes (its own, when its parent was seen; its children's
    /// that waited for it).
    pub fn see(
        &mut self,
        seq: u64,
        ids: Ids,
        service: &str,
        callee: Callee,
        calls: &mut Vec<Call>,
    ) {
        if self.current.spans >= MAX_SPANS {
            self.turn();
        }
        let service = self.intern(service);
        let Calls {
            current,
            previous,
            services,
            ..
        } = self;
        current.min_seq = Some(current.min_seq.map_or(seq, |m| m.min(seq)));
        current.spans += 1;
        let t = current.traces.entry(ids.trace).or_default();
        if let Some(parent) = ids.parent {
            let seen = t.service_of(parent);
            match seen.or_else(|| previous.service_of(ids.trace, parent)) {
                Some(p) => push_call(services, calls, p, service, callee),
                None => {
                    let w = Waiting { service, callee };
                    let key = (ids.trace, parent);
                    current.waiting.entry(key).or_default().push(w);
                }
            }
        }
        t.insert(ids.span, service);
        let mine = current
            .waiting_for(ids.trace, ids.span)
            .into_iter()
            .flatten();
        let earlier = previous.waiting_for(ids.trace, ids.span);
        for w in mine.chain(earlier.into_iter().flatten()) {
            push_call(services, calls, service, w.service, w.callee);
        }
    }

    /// Reads where each trace of `ids` is kept in the current generation,
    /// changing nothing: the cache misses of a record's traces overlap,
    /// ahead of [`see`](Self::see) taking them one by one.
    pub fn touch(&self, ids: &[Option<Ids>]) -> usize {
        let mut last = None;
        let mut touched = 0;
        for trace in ids.iter().flatten().map(|i| i.trace) {
            if last != Some(trace) {
                last = Some(trace);
                touched += self.current.traces.get(&trace).map_or(0, |t| t.spans.len());
            }
        }
        touched
    }

    /// Forgets the older generation when the current one is `window` old,
    /// counting the children in it that never met their parent.
    pub fn turn_after(&mut self, window: std::time::Duration) {
        if self.turned_at.elapsed() >= window {
            self.turn();
        }
    }

    /// The older generation's maps, emptied, become the current one's:
    /// they keep their capacity, so a steady load stops growing them.
    fn turn(&mut self) {
        self.turned_at = Instant::now();
        let mut old = std::mem::take(&mut self.previous);
        self.unpaired = self.unpaired.saturating_add(old.unpaired());
        old.traces.clear();
        old.waiting.clear();
        old.spans = 0;
        old.min_seq = None;
        self.previous = std::mem::replace(&mut self.current, old);
    }

    /// The lowest record either generation holds: the WAL must keep it.
    pub fn min_seq(&self) -> Option<u64> {
        match (self.current.min_seq, self.previous.min_seq) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn intern(&mut self, service: &str) -> u32 {
        // The spans of a record are mostly of one service.
        if let Some(last) = self.services.get(self.last as usize)
            && **last == *service
        {
            return self.last;
        }
        if let Some(&id) = self.ids.get(service) {
            self.last = id;
            return id;
        }
        let id = self.services.len() as u32;
        let name: Arc<str> = Arc::from(service);
        self.services.push(Arc::clone(&name));
        self.ids.insert(name, id);
        self.last = id;
        id
    }
}

/// A call between two services (none within one).
fn push_call(services: &[Arc<str>], calls: &mut Vec<Call>, parent: u32, child: u32, c: Callee) {
    if parent == child {
        return;
    }
    let name = |id: u32| {
        services
            .get(id as usize)
            .cloned()
            .unwrap_or_else(|| "".into())
    };
    calls.push(Call {
        parent: name(parent),
        child: name(child),
        callee: c,
    });
}
