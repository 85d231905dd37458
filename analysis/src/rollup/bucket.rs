//! One time bucket of roll-ups: RED statistics per (service, operation,
//! kind) and per call edge, with a cardinality guard, exact merge and a
//! compact encoding.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use super::RollupError;
use super::codec::{Reader, put_i32, put_str, put_u64};
use super::keyed::Keyed;
use super::sketch::{Sketch, read_header};

/// The operation (and, past the second limit, the service, parent or
/// child) of the keys that new keys fold into once a bucket is full. Its
/// kind is 0 (`SPAN_KIND_UNSPECIFIED`). A real operation of this name with
/// kind 0 would share the key.
pub const OVERFLOW: &str = "__overflow__";

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A RED key: one operation of one service, by span kind (the
/// `SpanKind` enum's value; 0 unspecified).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedKey<'a> {
    /// The span's service.
    pub service: &'a str,
    /// The span's name.
    pub operation: &'a str,
    /// The span's kind.
    pub kind: i32,
}

/// A call edge: spans of `child` whose parent span is of `parent`, another
/// service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeKey<'a> {
    /// The calling service.
    pub parent: &'a str,
    /// The called service.
    pub child: &'a str,
}

/// Requests, errors and latencies of one key. `requests` is the sketch's
/// count, so the two cannot disagree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    errors: u64,
    latency: Sketch,
}

impl Stats {
    /// Counts one span (or call) of this key.
    pub fn record(&mut self, is_error: bool, duration_nanos: u64) {
        self.errors = self.errors.saturating_add(u64::from(is_error));
        self.latency.insert(duration_nanos);
    }

    /// Counts one span's status (its duration goes in with
    /// [`record_durations`](Self::record_durations)).
    pub(super) fn record_error(&mut self, is_error: bool) {
        self.errors = self.errors.saturating_add(u64::from(is_error));
    }

    /// Counts durations whose statuses were counted.
    pub(super) fn record_durations(&mut self, durations: impl Iterator<Item = u64>) {
        for d in durations {
            self.latency.insert(d);
        }
    }

    /// Adds another key's statistics (exact).
    pub fn merge(&mut self, other: &Stats) {
        self.errors = self.errors.saturating_add(other.errors);
        self.latency.merge(&other.latency);
    }

    /// Spans counted.
    pub fn requests(&self) -> u64 {
        self.latency.count()
    }

    /// Of which with status ERROR.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Their durations, nanoseconds.
    pub fn latency(&self) -> &Sketch {
        &self.latency
    }
}

/// The cardinality guard of one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// RED keys a bucket takes before spans of new keys fold into their
    /// service's overflow key `(service, OVERFLOW, 0)`; once the bucket
    /// holds twice as many keys, into `(OVERFLOW, OVERFLOW, 0)`. So at most
    /// `2 × max_red_keys + 1` keys.
    pub max_red_keys: usize,
    /// Edges likewise: then `(parent, OVERFLOW)`, then
    /// `(OVERFLOW, OVERFLOW)`.
    pub max_edges: usize,
}

impl Default for Limits {
    /// 2,000 RED keys and 1,000 edges per bucket.
    fn default() -> Self {
        Limits {
            max_red_keys: 2_000,
            max_edges: 1_000,
        }
    }
}

/// One span, as the roll-up sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanRecord<'a> {
    /// Its service.
    pub service: &'a str,
    /// Its name.
    pub operation: &'a str,
    /// Its kind (`SpanKind` value).
    pub kind: i32,
    /// Whether its status is ERROR.
    pub is_error: bool,
    /// End minus start, nanoseconds (0 when it ends before it starts).
    pub duration_nanos: u64,
}

/// One call: a span whose parent span is of another service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallRecord<'a> {
    /// The parent span's service.
    pub parent: &'a str,
    /// The child span's service.
    pub child: &'a str,
    /// Whether the child span's status is ERROR.
    pub is_error: bool,
    /// The child span's duration, nanoseconds.
    pub duration_nanos: u64,
}

/// Interned names: keys hold ids, so adding a span of a known key
/// allocates nothing.
#[derive(Debug, Clone, Default)]
struct Names {
    ids: FastMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

impl Names {
    fn get(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    fn intern(&mut self, s: &str) -> u32 {
        if let Some(id) = self.get(s) {
            return id;
        }
        let id = self.names.len() as u32;
        let name: Arc<str> = Arc::from(s);
        self.names.push(Arc::clone(&name));
        self.ids.insert(name, id);
        id
    }

    fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", |s| s)
    }
}

/// Roll-ups of the spans that started in `[start, start + width)`: RED
/// statistics per [`RedKey`] and per [`EdgeKey`]. Equality is by content
/// (the same keys with the same statistics), not by insertion order.
#[derive(Debug, Clone)]
pub struct Bucket {
    start_unix_nanos: u64,
    width_nanos: u64,
    names: Names,
    pub(super) red: Keyed<(u32, u32, i32)>,
    edges: Keyed<(u32, u32)>,
    folded_spans: u64,
    folded_calls: u64,
}

impl Bucket {
    /// An empty bucket. `width_nanos` must be > 0, divide
    /// `start_unix_nanos`, and the end must fit in a `u64`.
    pub fn new(start_unix_nanos: u64, width_nanos: u64) -> Result<Bucket, RollupError> {
        let aligned = width_nanos > 0
            && start_unix_nanos.is_multiple_of(width_nanos)
            && start_unix_nanos.checked_add(width_nanos).is_some();
        if !aligned {
            return Err(RollupError::Unaligned {
                start_unix_nanos,
                width_nanos,
            });
        }
        Ok(Bucket {
            start_unix_nanos,
            width_nanos,
            names: Names::default(),
            red: Keyed::default(),
            edges: Keyed::default(),
            folded_spans: 0,
            folded_calls: 0,
        })
    }

    /// Start, Unix nanoseconds (a multiple of the width).
    pub fn start_unix_nanos(&self) -> u64 {
        self.start_unix_nanos
    }

    /// Width, nanoseconds.
    pub fn width_nanos(&self) -> u64 {
        self.width_nanos
    }

    /// End (exclusive), Unix nanoseconds.
    pub fn end_unix_nanos(&self) -> u64 {
        self.start_unix_nanos + self.width_nanos
    }

    /// Whether a span starting at `t` belongs here.
    pub fn contains(&self, t_unix_nanos: u64) -> bool {
        (self.start_unix_nanos..self.end_unix_nanos()).contains(&t_unix_nanos)
    }

    /// Spans counted under an overflow key because the bucket was full.
    pub fn folded_spans(&self) -> u64 {
        self.folded_spans
    }

    /// Calls counted under an overflow edge because the bucket was full.
    pub fn folded_calls(&self) -> u64 {
        self.folded_calls
    }

    /// Whether no span and no call was added.
    pub fn is_empty(&self) -> bool {
        self.red.is_empty() && self.edges.is_empty()
    }

    /// Counts a span under its key, or an overflow key past `limits`.
    pub fn add_span(&mut self, span: &SpanRecord<'_>, limits: &Limits) {
        let at = self.red_place(span, limits);
        if let Some(stats) = self.red.at_mut(at) {
            stats.record(span.is_error, span.duration_nanos);
        }
    }

    /// The place of the key a span is counted under: its own, or an
    /// overflow key past `limits` (counted as folded); made when missing.
    pub(super) fn red_place(&mut self, span: &SpanRecord<'_>, limits: &Limits) -> u32 {
        let known = (self.names.get(span.service), self.names.get(span.operation));
        if let (Some(s), Some(o)) = known
            && let Some(&at) = self.red.index_of(&(s, o, span.kind))
        {
            return at;
        }
        let n = self.red.len();
        let (service, operation, kind) = if n < limits.max_red_keys {
            (span.service, span.operation, span.kind)
        } else {
            self.folded_spans = self.folded_spans.saturating_add(1);
            let own = self.names.get(span.service).zip(self.names.get(OVERFLOW));
            let has_own = own.is_some_and(|(s, o)| self.red.contains_key(&(s, o, 0)));
            if has_own || n < limits.max_red_keys.saturating_mul(2) {
                (span.service, OVERFLOW, 0)
            } else {
                (OVERFLOW, OVERFLOW, 0)
            }
        };
        let key = (
            self.names.intern(service),
            self.names.intern(operation),
            kind,
        );
        self.red.place(key)
    }

    /// Counts a call under its edge, or an overflow edge past `limits`.
    pub fn add_call(&mut self, call: &CallRecord<'_>, limits: &Limits) {
        let known = (self.names.get(call.parent), self.names.get(call.child));
        if let (Some(p), Some(c)) = known
            && let Some(&at) = self.edges.index_of(&(p, c))
            && let Some(stats) = self.edges.at_mut(at)
        {
            stats.record(call.is_error, call.duration_nanos);
            return;
        }
        let n = self.edges.len();
        let (parent, child) = if n < limits.max_edges {
            (call.parent, call.child)
        } else {
            self.folded_calls = self.folded_calls.saturating_add(1);
            let own = self.names.get(call.parent).zip(self.names.get(OVERFLOW));
            let has_own = own.is_some_and(|k| self.edges.contains_key(&k));
            if has_own || n < limits.max_edges.saturating_mul(2) {
                (call.parent, OVERFLOW)
            } else {
                (OVERFLOW, OVERFLOW)
            }
        };
        let key = (self.names.intern(parent), self.names.intern(child));
        self.edges
            .entry(key)
            .record(call.is_error, call.duration_nanos);
    }

    /// The RED keys and their statistics, in no particular order.
    pub fn red(&self) -> impl Iterator<Item = (RedKey<'_>, &Stats)> {
        self.red.iter().map(|(&(s, o, kind), stats)| {
            let key = RedKey {
                service: self.names.name(s),
                operation: self.names.name(o),
                kind,
            };
            (key, stats)
        })
    }

    /// The edges and their statistics, in no particular order.
    pub fn edges(&self) -> impl Iterator<Item = (EdgeKey<'_>, &Stats)> {
        self.edges.iter().map(|(&(p, c), stats)| {
            let key = EdgeKey {
                parent: self.names.name(p),
                child: self.names.name(c),
            };
            (key, stats)
        })
    }

    /// RED keys, sorted by (service, operation, kind).
    pub fn red_sorted(&self) -> Vec<(RedKey<'_>, &Stats)> {
        let mut v: Vec<_> = self.red().collect();
        v.sort_unstable_by_key(|e| e.0);
        v
    }

    /// Edges, sorted by (parent, child).
    pub fn edges_sorted(&self) -> Vec<(EdgeKey<'_>, &Stats)> {
        let mut v: Vec<_> = self.edges().collect();
        v.sort_unstable_by_key(|e| e.0);
        v
    }

    /// The statistics of one RED key.
    pub fn red_stats(&self, key: &RedKey<'_>) -> Option<&Stats> {
        let id = (self.names.get(key.service)?, self.names.get(key.operation)?);
        self.red.get(&(id.0, id.1, key.kind))
    }

    /// The statistics of one edge.
    pub fn edge_stats(&self, key: &EdgeKey<'_>) -> Option<&Stats> {
        let id = (self.names.get(key.parent)?, self.names.get(key.child)?);
        self.edges.get(&id)
    }

    /// Adds `other`'s roll-ups: the same bucket from another collector, or
    /// a finer bucket inside this one. Exact, and without the cardinality
    /// guard (the guard bounds what one collector builds; a merge keeps
    /// every key it is given). Fails when `other`'s range is not inside.
    pub fn merge(&mut self, other: &Bucket) -> Result<(), RollupError> {
        if other.start_unix_nanos < self.start_unix_nanos
            || other.end_unix_nanos() > self.end_unix_nanos()
        {
            return Err(RollupError::NotContained {
                inner_start: other.start_unix_nanos,
                inner_width: other.width_nanos,
                outer_start: self.start_unix_nanos,
                outer_width: self.width_nanos,
            });
        }
        for (k, stats) in other.red() {
            let id = (self.names.intern(k.service), self.names.intern(k.operation));
            self.red.entry((id.0, id.1, k.kind)).merge(stats);
        }
        for (k, stats) in other.edges() {
            let id = (self.names.intern(k.parent), self.names.intern(k.child));
            self.edges.entry(id).merge(stats);
        }
        self.folded_spans = self.folded_spans.saturating_add(other.folded_spans);
        self.folded_calls = self.folded_calls.saturating_add(other.folded_calls);
        Ok(())
    }
}

impl PartialEq for Bucket {
    fn eq(&self, other: &Self) -> bool {
        self.start_unix_nanos == other.start_unix_nanos
            && self.width_nanos == other.width_nanos
            && self.folded_spans == other.folded_spans
            && self.folded_calls == other.folded_calls
            && self.red.len() == other.red.len()
            && self.edges.len() == other.edges.len()
            && self.red().all(|(k, s)| other.red_stats(&k) == Some(s))
            && self.edges().all(|(k, s)| other.edge_stats(&k) == Some(s))
    }
}

impl Eq for Bucket {}

/// First byte of a bucket blob.
const TAG: u8 = b'R';
/// The bucket format version this build writes and reads.
const VERSION: u8 = 1;

impl Bucket {
    /// Appends the bucket as a blob (format in the module docs). The same
    /// content gives the same bytes, whatever the insertion order.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[TAG, VERSION]);
        for v in [
            self.start_unix_nanos,
            self.width_nanos,
            self.folded_spans,
            self.folded_calls,
        ] {
            put_u64(out, v);
        }
        let red = self.red_sorted();
        let edges = self.edges_sorted();
        let mut table: Vec<&str> = red
            .iter()
            .flat_map(|(k, _)| [k.service, k.operation])
            .chain(edges.iter().flat_map(|(k, _)| [k.parent, k.child]))
            .collect();
        table.sort_unstable();
        table.dedup();
        put_u64(out, table.len() as u64);
        table.iter().for_each(|s| put_str(out, s));
        let id = |s: &str| table.binary_search(&s).unwrap_or(0) as u64;
        put_u64(out, red.len() as u64);
        for (k, stats) in &red {
            put_u64(out, id(k.service));
            put_u64(out, id(k.operation));
            put_i32(out, k.kind);
            encode_stats(out, stats);
        }
        put_u64(out, edges.len() as u64);
        for (k, stats) in &edges {
            put_u64(out, id(k.parent));
            put_u64(out, id(k.child));
            encode_stats(out, stats);
        }
    }

    /// Reads a blob written by [`Bucket::encode`]. Any input is safe: a
    /// malformed one is an error naming the field and offset.
    pub fn decode(bytes: &[u8]) -> Result<Bucket, RollupError> {
        let mut r = Reader::new(bytes);
        read_header(&mut r, TAG, "bucket", VERSION)?;
        let start = r.u64("bucket.start")?;
        let width = r.u64("bucket.width")?;
        let mut b = Bucket::new(start, width)?;
        b.folded_spans = r.u64("bucket.foldedSpans")?;
        b.folded_calls = r.u64("bucket.foldedCalls")?;
        let table = read_table(&mut r)?;
        for &s in &table {
            b.names.intern(s);
        }
        b.red = read_red(&mut r, table.len())?;
        b.edges = read_edges(&mut r, table.len())?;
        r.finish()?;
        b.check(&r)?;
        Ok(b)
    }

    /// What encoding guarantees beyond each field: every string is used by
    /// a key, and the folded counts are within their overflow keys' counts.
    fn check(&self, r: &Reader<'_>) -> Result<(), RollupError> {
        let mut used = vec![false; self.names.names.len()];
        let ids = self.red.keys().flat_map(|&(s, o, _)| [s, o]);
        for id in ids.chain(self.edges.keys().flat_map(|&(p, c)| [p, c])) {
            if let Some(u) = used.get_mut(id as usize) {
                *u = true;
            }
        }
        if used.contains(&false) {
            return Err(r.invalid("bucket.string", "a string no key uses"));
        }
        let overflow = self.names.get(OVERFLOW);
        let into_overflow = |acc: u64, s: &Stats| acc.saturating_add(s.requests());
        let spans = (self.red.iter())
            .filter(|((_, o, kind), _)| Some(*o) == overflow && *kind == 0)
            .fold(0, |acc, (_, s)| into_overflow(acc, s));
        if self.folded_spans > spans {
            return Err(r.invalid("bucket.foldedSpans", "more than the overflow keys hold"));
        }
        let calls = (self.edges.iter())
            .filter(|((_, c), _)| Some(*c) == overflow)
            .fold(0, |acc, (_, s)| into_overflow(acc, s));
        if self.folded_calls > calls {
            return Err(r.invalid("bucket.foldedCalls", "more than the overflow edges hold"));
        }
        Ok(())
    }
}

/// Errors, then the latency sketch's body (requests are its count).
fn encode_stats(out: &mut Vec<u8>, stats: &Stats) {
    put_u64(out, stats.errors);
    stats.latency.encode_body(out);
}

fn decode_stats(r: &mut Reader<'_>) -> Result<Stats, RollupError> {
    let errors = r.u64("stats.errors")?;
    let latency = Sketch::decode_body(r)?;
    if latency.is_empty() {
        return Err(r.invalid("stats.latency", "a key without requests"));
    }
    if errors > latency.count() {
        return Err(r.invalid("stats.errors", "more errors than requests"));
    }
    Ok(Stats { errors, latency })
}

/// The string table: strictly increasing (sorted, no duplicates).
fn read_table<'a>(r: &mut Reader<'a>) -> Result<Vec<&'a str>, RollupError> {
    let n = r.len("bucket.strings")?;
    let mut table: Vec<&str> = Vec::with_capacity(n);
    for _ in 0..n {
        let s = r.str("bucket.string")?;
        if table.last().is_some_and(|&prev| prev >= s) {
            return Err(r.invalid("bucket.string", "strings not sorted or repeated"));
        }
        table.push(s);
    }
    Ok(table)
}

/// An index into the string table.
fn read_id(r: &mut Reader<'_>, strings: usize, field: &'static str) -> Result<u32, RollupError> {
    let id = r.u64(field)?;
    match u32::try_from(id) {
        Ok(id) if (id as usize) < strings => Ok(id),
        _ => Err(r.invalid(field, "past the end of the string table")),
    }
}

fn read_red(r: &mut Reader<'_>, strings: usize) -> Result<Keyed<(u32, u32, i32)>, RollupError> {
    let n = r.len("bucket.red")?;
    let mut red = Keyed::default();
    let mut prev = None;
    for _ in 0..n {
        let s = read_id(r, strings, "red.service")?;
        let o = read_id(r, strings, "red.operation")?;
        let key = (s, o, r.i32("red.kind")?);
        // Ids follow the sorted table, so id order is name order.
        if prev.is_some_and(|p| p >= key) {
            return Err(r.invalid("red.kind", "keys not sorted or repeated"));
        }
        prev = Some(key);
        *red.entry(key) = decode_stats(r)?;
    }
    Ok(red)
}

fn read_edges(r: &mut Reader<'_>, strings: usize) -> Result<Keyed<(u32, u32)>, RollupError> {
    let n = r.len("bucket.edges")?;
    let mut edges = Keyed::default();
    let mut prev = None;
    for _ in 0..n {
        let key = (
            read_id(r, strings, "edge.parent")?,
            read_id(r, strings, "edge.child")?,
        );
        if prev.is_some_and(|p| p >= key) {
            return Err(r.invalid("edge.child", "edges not sorted or repeated"));
        }
        prev = Some(key);
        *edges.entry(key) = decode_stats(r)?;
    }
    Ok(edges)
}
