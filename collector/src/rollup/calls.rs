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
//! What is kept is bounded by time, in two generations: spans seen since
//! the last turn and in the one before; [`Calls::turn`] forgets the older,
//! counting its children that never met their parent as unpaired (the
//! OpenTelemetry servicegraph connector's store, with its TTL). The WAL
//! keeps every record either generation holds ([`Calls::min_seq`]), so a
//! replay after a crash pairs what the crashed run had not written.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Instant;

use clew_analysis::rollup::CallRecord;

type Map<V> = HashMap<u64, V, foldhash::fast::RandomState>;

/// A span as the pairing sees it: hashes of `(trace, span)` and of
/// `(trace, parent span)`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ids {
    span: u64,
    parent: Option<u64>,
}

const HASHER: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x636c_6577);

impl Ids {
    /// `None` for a span without an id (it can be nobody's parent, and
    /// ingest refuses it anyway).
    pub fn of(trace_id: &[u8], span_id: &[u8], parent_span_id: &[u8]) -> Option<Ids> {
        if span_id.is_empty() {
            return None;
        }
        let parent =
            (!parent_span_id.is_empty()).then(|| HASHER.hash_one((trace_id, parent_span_id)));
        Some(Ids {
            span: HASHER.hash_one((trace_id, span_id)),
            parent,
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

#[derive(Debug, Default)]
struct Generation {
    /// `(trace, span)` → its service.
    spans: Map<u32>,
    /// `(trace, parent span)` → its children seen before it.
    waiting: Map<Vec<Waiting>>,
    /// The lowest record held.
    min_seq: Option<u64>,
}

/// Pairs parents and children into calls. See the [module docs](self).
#[derive(Debug)]
pub(super) struct Calls {
    current: Generation,
    previous: Generation,
    turned_at: Instant,
    services: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, u32, foldhash::fast::RandomState>,
    /// Children forgotten without meeting their parent.
    pub unpaired: u64,
}

/// Spans one generation holds at most: past it, it turns early (at 16
/// bytes a span, about 32 MiB a generation).
const MAX_SPANS: usize = 1 << 21;

impl Default for Calls {
    fn default() -> Self {
        Calls {
            current: Generation::default(),
            previous: Generation::default(),
            turned_at: Instant::now(),
            services: Vec::new(),
            ids: HashMap::default(),
            unpaired: 0,
        }
    }
}

impl Calls {
    /// Sees one span of record `seq` of `service`; returns the calls it
    /// completes (its own, when its parent was seen; its children's that
    /// waited for it).
    pub fn see(&mut self, seq: u64, ids: Ids, service: &str, callee: Callee) -> Vec<Call> {
        let mut calls = Vec::new();
        if self.current.spans.len() >= MAX_SPANS {
            self.turn();
        }
        let service = self.intern(service);
        let gen_ = &mut self.current;
        gen_.min_seq = Some(gen_.min_seq.map_or(seq, |m| m.min(seq)));
        if let Some(parent_key) = ids.parent {
            match self.service_of(parent_key) {
                Some(parent) => self.call(&mut calls, parent, service, callee),
                None => self
                    .current
                    .waiting
                    .entry(parent_key)
                    .or_default()
                    .push(Waiting { service, callee }),
            }
        }
        let key = ids.span;
        self.current.spans.insert(key, service);
        for g in [&mut self.current, &mut self.previous] {
            if let Some(children) = g.waiting.remove(&key) {
                for w in children {
                    let (s, c) = (&self.services, &mut calls);
                    push_call(s, c, service, w.service, w.callee);
                }
            }
        }
        calls
    }

    /// Forgets the older generation when the current one is `window` old,
    /// counting the children in it that never met their parent.
    pub fn turn_after(&mut self, window: std::time::Duration) {
        if self.turned_at.elapsed() >= window {
            self.turn();
        }
    }

    fn turn(&mut self) {
        self.turned_at = Instant::now();
        let old = std::mem::replace(&mut self.previous, std::mem::take(&mut self.current));
        let unpaired: u64 = old.waiting.values().map(|w| w.len() as u64).sum();
        self.unpaired = self.unpaired.saturating_add(unpaired);
    }

    /// The lowest record either generation holds: the WAL must keep it.
    pub fn min_seq(&self) -> Option<u64> {
        match (self.current.min_seq, self.previous.min_seq) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn service_of(&self, key: u64) -> Option<u32> {
        let found = self.current.spans.get(&key);
        found.or_else(|| self.previous.spans.get(&key)).copied()
    }

    fn call(&self, calls: &mut Vec<Call>, parent: u32, child: u32, callee: Callee) {
        push_call(&self.services, calls, parent, child, callee);
    }

    fn intern(&mut self, service: &str) -> u32 {
        if let Some(&id) = self.ids.get(service) {
            return id;
        }
        let id = self.services.len() as u32;
        let name: Arc<str> = Arc::from(service);
        self.services.push(Arc::clone(&name));
        self.ids.insert(name, id);
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
