//! Embedded storage: one [redb] file on local disk, inside the process, no
//! server. The default for local runs; survives restarts (every `store_trace`
//! is a committed, fsynced transaction).
//!
//! # Layout
//!
//! Keys are byte strings ordered lexicographically; numbers are big-endian.
//!
//! | table | key | value |
//! |---|---|---|
//! | `fragments` | tid ‖ fragment number (u32) | protobuf `Trace` holding the fragment's new spans |
//! | `trace_meta` | tid | newest span end ‖ next fragment number ‖ ids of the stored spans (8 bytes each) |
//! | `by_end` | end ‖ tid | — (what `prune_traces` walks) |
//! | `trace_index` | kind ‖ len ‖ text ‖ start ‖ tid | summary: min duration ‖ max duration ‖ error flag |
//! | `orphans` | tid ‖ parent sid ‖ child sid | child start ‖ error flag ‖ child service (a call whose parent has not arrived) |
//! | `edges` | child start ‖ tid ‖ child sid | parent svc `\0` child svc `\0` error flag |
//! | `operations` | len ‖ service ‖ kind ‖ operation | number of stored spans |
//!
//! Index kinds: `a` all spans, `s` service, `o` service + operation, `t` tag
//! (key `\0` value, short values only), `e` ERROR spans of a service, `E` all
//! ERROR spans.
//!
//! # Index entries per trace, not per span
//!
//! Each stored *fragment* writes one `trace_index` entry per distinct index it
//! touches, keyed by the start of its newest span under that index and
//! carrying the shortest and longest duration of those spans and whether one
//! is an ERROR. A 10-span fragment of one service thus writes ~2 entries per
//! span instead of ~8 (every B-tree insert is a copy-on-write page update in
//! redb: that was the cost). A search walks the most selective index from the
//! window's end backwards, skips entries whose summary rules the filter out
//! (duration bounds, errors: so duration-only searches need no extra index),
//! and checks the whole trace of each other entry exactly. A trace's first
//! entry met carries its newest span under that index, so once `limit` traces
//! matched at or after the entry being walked, no later entry can rank higher:
//! the order stays exactly "most recent matching span first".

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use prost::Message as _;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition};

use super::{
    BoxError, DependencyLink, FilterCriteria, PruneStats, Result, Span, SpanKind, Storage,
    StorageError, StoreOutcome, Trace, TraceId, validate,
};
use crate::filter::{self, DependencyCounter};

const BACKEND: &str = "embedded";

/// Most index entries one search walks before it returns what it found.
pub const MAX_SCANNED: usize = 200_000;

/// The longest a trace is expected to last from its first to its last span.
/// A search finds a trace through a span in its time window only if that
/// span started at most this long before the newest span of the trace under
/// the same index (in the same fragment).
pub const MAX_TRACE_SPAN_NS: u64 = 3_600_000_000_000;

/// Traces removed per pruning transaction.
const PRUNE_CHUNK: usize = 512;

const SPANS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("fragments");
const TRACES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("trace_meta");
const BY_END: TableDefinition<'_, &[u8], ()> = TableDefinition::new("by_end");
const INDEX: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("trace_index");
const ORPHANS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("orphans");
const EDGES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("edges");
const OPERATIONS: TableDefinition<'_, &[u8], u64> = TableDefinition::new("operations");

fn db_err(e: impl Into<BoxError>) -> StorageError {
    StorageError::unavailable(BACKEND, e)
}

fn corrupt(detail: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        backend: BACKEND,
        detail: detail.into(),
    }
}

/// Stores traces in a local redb file.
///
/// Writes go through one writer thread that commits whatever fragments are
/// waiting as one transaction (group commit), so concurrent stores share
/// one fsync.
#[derive(Debug, Clone)]
pub struct EmbeddedStorage {
    db: Arc<Database>,
    path: PathBuf,
    writer: std::sync::mpsc::Sender<WriteRequest>,
    // Declared after `writer`: when the last handle drops, the sender goes
    // first (ending the writer loop), then this joins the thread, so the
    // database file is closed once the storage is gone.
    _writer_thread: Arc<WriterThread>,
}

#[derive(Debug)]
struct WriterThread(parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        if let Some(handle) = self.0.lock().take() {
            let _ = handle.join();
        }
    }
}

#[derive(Debug)]
struct WriteRequest {
    trace: Trace,
    reply: tokio::sync::oneshot::Sender<Result<StoreOutcome>>,
}

/// Most fragments committed in one transaction.
const MAX_GROUP: usize = 4096;

fn writer_loop(db: Arc<Database>, rx: std::sync::mpsc::Receiver<WriteRequest>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let (traces, replies): (Vec<Trace>, Vec<_>) =
            group.into_iter().map(|r| (r.trace, r.reply)).unzip();
        for (reply, result) in replies.into_iter().zip(store_group(&db, traces)) {
            let _ = reply.send(result);
        }
    }
}

impl EmbeddedStorage {
    /// Opens (or creates) the database file at `path`, creating its directory.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(db_err)?;
        }
        let db = Database::create(&path).map_err(db_err)?;
        // Create every table, so that readers never meet a missing one.
        let tx = db.begin_write().map_err(db_err)?;
        tx.open_table(SPANS).map_err(db_err)?;
        tx.open_table(TRACES).map_err(db_err)?;
        tx.open_table(BY_END).map_err(db_err)?;
        tx.open_table(INDEX).map_err(db_err)?;
        tx.open_table(ORPHANS).map_err(db_err)?;
        tx.open_table(EDGES).map_err(db_err)?;
        tx.open_table(OPERATIONS).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        tracing::info!(path = %path.display(), "opened embedded trace store");
        let db = Arc::new(db);
        let (writer, rx) = std::sync::mpsc::channel();
        let writer_db = Arc::clone(&db);
        let handle = std::thread::Builder::new()
            .name("clew-redb-writer".into())
            .spawn(move || writer_loop(writer_db, rx))
            .map_err(db_err)?;
        Ok(EmbeddedStorage {
            db,
            path,
            writer,
            _writer_thread: Arc::new(WriterThread(parking_lot::Mutex::new(Some(handle)))),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs blocking database work off the async runtime.
    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(db_err)?
    }
}

fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// `kind ‖ len ‖ text` (text may hold any bytes: the length keeps prefixes apart).
fn index_prefix(kind: u8, text: &[&[u8]]) -> Vec<u8> {
    let len: usize = text.iter().map(|t| t.len()).sum();
    let mut k = Vec::with_capacity(3 + len + 32);
    k.push(kind);
    k.extend_from_slice(&(len.min(u16::MAX as usize) as u16).to_be_bytes());
    for t in text {
        k.extend_from_slice(t);
    }
    k
}

/// Every index prefix a span is filed under.
fn span_index_prefixes(span: &Span) -> Vec<Vec<u8>> {
    let svc = span.service.as_bytes();
    let mut out = vec![
        index_prefix(b'a', &[]),
        index_prefix(b's', &[svc]),
        index_prefix(b'o', &[svc, b"\0", span.name.as_bytes()]),
    ];
    if filter::is_error(span) {
        out.push(index_prefix(b'e', &[svc]));
        out.push(index_prefix(b'E', &[]));
    }
    let mut seen = HashSet::new();
    for (k, v) in filter::indexed_tags(span) {
        let p = index_prefix(b't', &[k.as_bytes(), b"\0", v.as_bytes()]);
        if seen.insert(p.clone()) {
            out.push(p);
        }
    }
    out
}

fn op_key(span: &Span) -> Vec<u8> {
    let mut k = index_prefix(b'O', &[span.service.as_bytes()]);
    k.remove(0);
    k.push(filter::kind(span) as i32 as u8);
    k.extend_from_slice(span.name.as_bytes());
    k
}

fn decode_fragment(blob: &[u8]) -> Result<Trace> {
    Trace::decode(blob).map_err(|e| corrupt(format!("fragment: {e}")))
}

fn tid_of(tail: &[u8]) -> Result<[u8; 16]> {
    tail.try_into()
        .map_err(|_| corrupt("bad trace id in a key"))
}

fn edge_value(parent: &str, child: &str, error: bool) -> Vec<u8> {
    cat(&[
        parent.as_bytes(),
        b"\0",
        child.as_bytes(),
        b"\0",
        if error { b"1" } else { b"0" },
    ])
}

/// The write-side tables, opened once per transaction.
struct WriteTables<'t> {
    spans: Table<'t, &'static [u8], &'static [u8]>,
    traces: Table<'t, &'static [u8], &'static [u8]>,
    by_end: Table<'t, &'static [u8], ()>,
    index: Table<'t, &'static [u8], &'static [u8]>,
    orphans: Table<'t, &'static [u8], &'static [u8]>,
    edges: Table<'t, &'static [u8], &'static [u8]>,
}

/// What one index entry says about the spans of a fragment filed under it.
/// The key carries `newest_start`; the value the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Summary {
    newest_start: u64,
    oldest_start: u64,
    min_duration: u64,
    max_duration: u64,
    error: bool,
}

/// Length of an encoded [`Summary`] value.
const SUMMARY_LEN: usize = 25;

impl Summary {
    fn of(span: &Span) -> Self {
        let d = filter::duration(span);
        Summary {
            newest_start: span.start_time_unix_nano,
            oldest_start: span.start_time_unix_nano,
            min_duration: d,
            max_duration: d,
            error: filter::is_error(span),
        }
    }

    fn add(&mut self, other: Summary) {
        self.newest_start = self.newest_start.max(other.newest_start);
        self.oldest_start = self.oldest_start.min(other.oldest_start);
        self.min_duration = self.min_duration.min(other.min_duration);
        self.max_duration = self.max_duration.max(other.max_duration);
        self.error |= other.error;
    }

    fn encode(&self) -> [u8; SUMMARY_LEN] {
        let mut v = [0u8; SUMMARY_LEN];
        v[..8].copy_from_slice(&be(self.oldest_start));
        v[8..16].copy_from_slice(&be(self.min_duration));
        v[16..24].copy_from_slice(&be(self.max_duration));
        v[24] = u8::from(self.error);
        v
    }

    /// The summary of an entry whose key says `newest_start`.
    fn decode(newest_start: u64, v: &[u8]) -> Result<Self> {
        let word = |i: usize| {
            v.get(i..i + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt("index entry"))
        };
        Ok(Summary {
            newest_start,
            oldest_start: word(0)?,
            min_duration: word(8)?,
            max_duration: word(16)?,
            error: v.get(24).ok_or_else(|| corrupt("index entry"))? == &1,
        })
    }

    /// Whether some span under this entry may satisfy the filter's time
    /// window (`[lo, hi]`), duration and error conditions.
    fn may_match(&self, f: &FilterCriteria, lo: u64, hi: u64) -> bool {
        !(self.oldest_start > hi
            || self.newest_start < lo
            || f.min_duration_nanos != 0 && self.max_duration < f.min_duration_nanos
            || f.max_duration_nanos != 0 && self.min_duration > f.max_duration_nanos
            || f.errors_only && !self.error)
    }
}

/// A trace's `trace_meta` value: newest end ‖ next fragment number ‖ the ids
/// of its stored spans.
#[derive(Debug, Default)]
struct Meta {
    newest_end: u64,
    next_fragment: u32,
    span_ids: HashSet<[u8; 8]>,
}

impl Meta {
    fn decode(v: &[u8]) -> Result<Self> {
        let bad = || corrupt("trace meta");
        let newest_end =
            u64::from_be_bytes(v.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
        let next_fragment = u32::from_be_bytes(
            v.get(8..12)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        );
        let ids = v.get(12..).ok_or_else(bad)?;
        if ids.len() % 8 != 0 {
            return Err(bad());
        }
        Ok(Meta {
            newest_end,
            next_fragment,
            span_ids: ids
                .chunks_exact(8)
                .map(|c| c.try_into().unwrap_or([0; 8]))
                .collect(),
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(12 + 8 * self.span_ids.len());
        v.extend_from_slice(&be(self.newest_end));
        v.extend_from_slice(&self.next_fragment.to_be_bytes());
        for id in &self.span_ids {
            v.extend_from_slice(id);
        }
        v
    }
}

/// A child span waiting for its parent: start ‖ error flag ‖ service.
fn orphan_value(span: &Span) -> Vec<u8> {
    cat(&[
        &be(span.start_time_unix_nano),
        &[u8::from(filter::is_error(span))],
        span.service.as_bytes(),
    ])
}

fn parse_orphan(v: &[u8]) -> Result<(u64, bool, &str)> {
    let start = v
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("orphan entry"))?;
    let error = v.get(8).ok_or_else(|| corrupt("orphan entry"))? == &1;
    let svc = std::str::from_utf8(&v[9..]).map_err(|_| corrupt("orphan entry"))?;
    Ok((start, error, svc))
}

/// Writes one validated fragment inside an open write transaction. Operation
/// counts are added to `op_counts` (written once per transaction).
fn apply_fragment(
    t: &mut WriteTables<'_>,
    fragment: super::Fragment,
    op_counts: &mut HashMap<Vec<u8>, i64>,
) -> Result<StoreOutcome> {
    let WriteTables {
        spans,
        traces,
        by_end,
        index,
        orphans,
        edges,
    } = t;
    let tid = fragment.trace_id;
    let mut out = StoreOutcome {
        stored: 0,
        duplicates: fragment.duplicates,
    };
    let mut meta = match traces.get(&tid[..]).map_err(db_err)? {
        Some(v) => Some(Meta::decode(v.value())?),
        None => None,
    };
    let old_end = meta.as_ref().map(|m| m.newest_end);
    let mut newest_end = old_end.unwrap_or(0);
    // The new spans of this fragment, by id.
    let mut new: HashMap<[u8; 8], &Span> = HashMap::with_capacity(fragment.spans.len());
    let mut blob = Trace::default();
    // Index entries of this fragment: prefix -> summary of its spans there.
    let mut entries: HashMap<Vec<u8>, Summary> = HashMap::new();
    for span in &fragment.spans {
        let sid = filter::span_id(span);
        if meta.as_ref().is_some_and(|m| m.span_ids.contains(&sid)) {
            out.duplicates += 1;
            continue;
        }
        out.stored += 1;
        blob.spans.push(span.clone());
        newest_end = newest_end.max(span.end_time_unix_nano);
        let summary = Summary::of(span);
        for prefix in span_index_prefixes(span) {
            entries
                .entry(prefix)
                .and_modify(|s| s.add(summary))
                .or_insert(summary);
        }
        *op_counts.entry(op_key(span)).or_default() += 1;
        new.insert(sid, span);
    }
    if out.stored == 0 {
        return Ok(out);
    }
    // Services of the spans stored before, read only if a call needs them.
    let mut stored_services: Option<HashMap<[u8; 8], String>> = None;
    let mut meta = meta.take().unwrap_or_default();
    let seq = meta.next_fragment;
    spans
        .insert(
            cat(&[&tid, &seq.to_be_bytes()]).as_slice(),
            blob.encode_to_vec().as_slice(),
        )
        .map_err(db_err)?;
    for (prefix, summary) in &entries {
        let k = cat(&[prefix, &be(summary.newest_start), &tid]);
        let mut merged = *summary;
        // Another fragment of the trace with the same newest start.
        if old_end.is_some()
            && let Some(old) = index.get(k.as_slice()).map_err(db_err)?
        {
            merged.add(Summary::decode(summary.newest_start, old.value())?);
        }
        index
            .insert(k.as_slice(), merged.encode().as_slice())
            .map_err(db_err)?;
    }

    // Calls: each new span to its parent (in this fragment or stored), or
    // left as an orphan until the parent arrives.
    let mut add_edge = |parent_svc: &str, child: (&[u8; 8], u64, bool, &str)| -> Result<()> {
        let (sid, start, error, svc) = child;
        if parent_svc != svc {
            edges
                .insert(
                    cat(&[&be(start), &tid, sid]).as_slice(),
                    edge_value(parent_svc, svc, error).as_slice(),
                )
                .map_err(db_err)?;
        }
        Ok(())
    };
    for (sid, span) in &new {
        let Some(parent) = filter::parent_id(span) else {
            continue;
        };
        let child = (
            sid,
            span.start_time_unix_nano,
            filter::is_error(span),
            span.service.as_str(),
        );
        if let Some(p) = new.get(&parent) {
            add_edge(&p.service, child)?;
        } else if meta.span_ids.contains(&parent) {
            if stored_services.is_none() {
                let before = read_trace(spans, &tid)?;
                stored_services = Some(
                    before
                        .into_iter()
                        .map(|s| (filter::span_id(&s), s.service))
                        .collect(),
                );
            }
            if let Some(svc) = stored_services.as_ref().and_then(|m| m.get(&parent)) {
                add_edge(svc, child)?;
            }
        } else {
            orphans
                .insert(
                    cat(&[&tid, &parent, sid]).as_slice(),
                    orphan_value(span).as_slice(),
                )
                .map_err(db_err)?;
        }
    }
    // Children stored earlier whose parent is in this fragment.
    if old_end.is_some() {
        let lo = cat(&[&tid, &[0; 16]]);
        let hi = cat(&[&tid, &[0xff; 16]]);
        let mut adopted = Vec::new();
        for entry in orphans
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(db_err)?
        {
            let (k, v) = entry.map_err(db_err)?;
            let k = k.value();
            let parent: [u8; 8] = k[16..24].try_into().map_err(|_| corrupt("orphan key"))?;
            if let Some(p) = new.get(&parent) {
                let child: [u8; 8] = k[24..32].try_into().map_err(|_| corrupt("orphan key"))?;
                let (start, error, svc) = parse_orphan(v.value())?;
                adopted.push((
                    k.to_vec(),
                    p.service.clone(),
                    child,
                    start,
                    error,
                    svc.to_owned(),
                ));
            }
        }
        for (key, parent_svc, child, start, error, svc) in adopted {
            add_edge(&parent_svc, (&child, start, error, &svc))?;
            orphans.remove(key.as_slice()).map_err(db_err)?;
        }
    }
    if let Some(old) = old_end {
        by_end
            .remove(cat(&[&be(old), &tid]).as_slice())
            .map_err(db_err)?;
    }
    by_end
        .insert(cat(&[&be(newest_end), &tid]).as_slice(), ())
        .map_err(db_err)?;
    meta.newest_end = newest_end;
    meta.next_fragment = seq.wrapping_add(1);
    meta.span_ids.extend(new.keys());
    traces
        .insert(&tid[..], meta.encode().as_slice())
        .map_err(db_err)?;
    Ok(out)
}

/// Adds (or, negative, removes) operation counts.
fn apply_op_counts(
    ops: &mut Table<'_, &'static [u8], u64>,
    counts: HashMap<Vec<u8>, i64>,
) -> Result<()> {
    for (key, delta) in counts {
        let n = ops
            .get(key.as_slice())
            .map_err(db_err)?
            .map_or(0, |g| g.value());
        let n = n.saturating_add_signed(delta);
        if n == 0 {
            ops.remove(key.as_slice()).map_err(db_err)?;
        } else {
            ops.insert(key.as_slice(), n).map_err(db_err)?;
        }
    }
    Ok(())
}

/// Stores several fragments in one write transaction: one commit (and one
/// fsync) for the group instead of one per fragment. Each fragment gets its
/// own result; a failure of the transaction itself fails every fragment in
/// it (the caller retries, and storing is idempotent).
fn store_group(db: &Database, traces: Vec<Trace>) -> Vec<Result<StoreOutcome>> {
    let mut results: Vec<Option<Result<StoreOutcome>>> = Vec::with_capacity(traces.len());
    let mut work = Vec::new();
    for (slot, trace) in traces.into_iter().enumerate() {
        match validate(trace) {
            Err(e) => results.push(Some(Err(e))),
            Ok(f) if f.spans.is_empty() => results.push(Some(Ok(StoreOutcome {
                stored: 0,
                duplicates: f.duplicates,
            }))),
            Ok(f) => {
                results.push(None);
                work.push((slot, f));
            }
        }
    }
    if !work.is_empty() {
        let slots: Vec<usize> = work.iter().map(|(slot, _)| *slot).collect();
        match write_group(db, work) {
            Ok(outcomes) => {
                for (slot, outcome) in outcomes {
                    results[slot] = Some(Ok(outcome));
                }
            }
            Err(e) => {
                let msg = e.detail();
                for slot in slots {
                    results[slot] = Some(Err(db_err(msg.clone())));
                }
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(db_err("fragment not written"))))
        .collect()
}

fn write_group(
    db: &Database,
    work: Vec<(usize, super::Fragment)>,
) -> Result<Vec<(usize, StoreOutcome)>> {
    let tx = db.begin_write().map_err(db_err)?;
    let mut outcomes = Vec::with_capacity(work.len());
    {
        let mut t = WriteTables {
            spans: tx.open_table(SPANS).map_err(db_err)?,
            traces: tx.open_table(TRACES).map_err(db_err)?,
            by_end: tx.open_table(BY_END).map_err(db_err)?,
            index: tx.open_table(INDEX).map_err(db_err)?,
            orphans: tx.open_table(ORPHANS).map_err(db_err)?,
            edges: tx.open_table(EDGES).map_err(db_err)?,
        };
        let mut op_counts = HashMap::new();
        for (slot, fragment) in work {
            outcomes.push((slot, apply_fragment(&mut t, fragment, &mut op_counts)?));
        }
        apply_op_counts(&mut tx.open_table(OPERATIONS).map_err(db_err)?, op_counts)?;
    }
    tx.commit().map_err(db_err)?;
    Ok(outcomes)
}

fn read_trace(
    spans: &impl ReadableTable<&'static [u8], &'static [u8]>,
    tid: &[u8; 16],
) -> Result<Vec<Span>> {
    let lo = cat(&[tid, &[0; 4]]);
    let hi = cat(&[tid, &[0xff; 4]]);
    let mut out = Vec::new();
    for entry in spans.range(lo.as_slice()..=hi.as_slice()).map_err(db_err)? {
        let (_, v) = entry.map_err(db_err)?;
        out.extend(decode_fragment(v.value())?.spans);
    }
    filter::sort_spans(&mut out);
    Ok(out)
}

/// The index to walk for a filter: the most selective one it allows.
fn primary_index(f: &FilterCriteria) -> Vec<u8> {
    let svc = f.service.as_bytes();
    if f.errors_only {
        return if f.service.is_empty() {
            index_prefix(b'E', &[])
        } else {
            index_prefix(b'e', &[svc])
        };
    }
    let mut tags: Vec<(&String, &String)> = f.tags.iter().collect();
    tags.sort();
    if let Some((k, v)) = tags.into_iter().find(|(k, v)| filter::indexable_tag(k, v)) {
        return index_prefix(b't', &[k.as_bytes(), b"\0", v.as_bytes()]);
    }
    match (f.service.is_empty(), f.operation.is_empty()) {
        (false, false) => index_prefix(b'o', &[svc, b"\0", f.operation.as_bytes()]),
        (false, true) => index_prefix(b's', &[svc]),
        _ => index_prefix(b'a', &[]),
    }
}

fn list_blocking(db: &Database, f: &FilterCriteria) -> Result<Vec<Trace>> {
    let limit = filter::effective_limit(f);
    let Some((lo, hi)) = filter::start_window(f) else {
        return Ok(Vec::new());
    };
    let tx = db.begin_read().map_err(db_err)?;
    let spans = tx.open_table(SPANS).map_err(db_err)?;
    let index = tx.open_table(INDEX).map_err(db_err)?;
    let prefix = primary_index(f);
    // An entry's key is the newest start of its spans: a trace whose
    // matching span is in the window may have its entry up to
    // `MAX_TRACE_SPAN_NS` later.
    let from = cat(&[&prefix, &be(lo), &[0; 16]]);
    let to = cat(&[
        &prefix,
        &be(hi.saturating_add(MAX_TRACE_SPAN_NS)),
        &[0xff; 16],
    ]);
    // (newest matching start, trace), kept sorted newest first.
    let mut found: Vec<(u64, Trace)> = Vec::new();
    let mut seen: HashSet<[u8; 16]> = HashSet::new();
    for entry in index
        .range(from.as_slice()..=to.as_slice())
        .map_err(db_err)?
        .rev()
        .take(MAX_SCANNED)
    {
        let (k, v) = entry.map_err(db_err)?;
        let k = k.value();
        let n = k.len();
        let start = u64::from_be_bytes(
            k[n - 24..n - 16]
                .try_into()
                .map_err(|_| corrupt("bad index key"))?,
        );
        // Every trace not seen yet has its matching spans at or before `start`.
        if found.len() >= limit && found[limit - 1].0 > start {
            break;
        }
        let tid = tid_of(&k[n - 16..])?;
        if seen.contains(&tid) || !Summary::decode(start, v.value())?.may_match(f, lo, hi) {
            continue;
        }
        seen.insert(tid);
        let trace_spans = read_trace(&spans, &tid)?;
        if let Some(at) = filter::best_match(&trace_spans, f) {
            let pos = found.partition_point(|(t, trace)| {
                *t > at || *t == at && trace.trace_id.as_slice() > &tid[..]
            });
            found.insert(
                pos,
                (
                    at,
                    Trace {
                        trace_id: tid.to_vec(),
                        spans: trace_spans,
                    },
                ),
            );
            found.truncate(limit);
        }
    }
    Ok(found.into_iter().map(|(_, t)| t).collect())
}

fn prune_blocking(db: &Database, cut: u64) -> Result<PruneStats> {
    let mut stats = PruneStats::default();
    loop {
        let tx = db.begin_write().map_err(db_err)?;
        let done;
        {
            let mut spans = tx.open_table(SPANS).map_err(db_err)?;
            let mut traces = tx.open_table(TRACES).map_err(db_err)?;
            let mut by_end = tx.open_table(BY_END).map_err(db_err)?;
            let mut index = tx.open_table(INDEX).map_err(db_err)?;
            let mut orphans = tx.open_table(ORPHANS).map_err(db_err)?;
            let mut edges = tx.open_table(EDGES).map_err(db_err)?;
            let upper = be(cut);
            let mut old: Vec<Vec<u8>> = Vec::new();
            for entry in by_end.range(..upper.as_slice()).map_err(db_err)? {
                let (k, _) = entry.map_err(db_err)?;
                old.push(k.value().to_vec());
                if old.len() >= PRUNE_CHUNK {
                    break;
                }
            }
            done = old.len() < PRUNE_CHUNK;
            let mut op_counts: HashMap<Vec<u8>, i64> = HashMap::new();
            for end_key in old {
                let tid = tid_of(&end_key[8..])?;
                for span in read_trace(&spans, &tid)? {
                    stats.spans += 1;
                    let sid = filter::span_id(&span);
                    let start = be(span.start_time_unix_nano);
                    // Each index entry of the trace is keyed by the start of
                    // one of its spans: removing every candidate removes them.
                    for prefix in span_index_prefixes(&span) {
                        index
                            .remove(cat(&[&prefix, &start, &tid]).as_slice())
                            .map_err(db_err)?;
                    }
                    edges
                        .remove(cat(&[&start, &tid, &sid]).as_slice())
                        .map_err(db_err)?;
                    *op_counts.entry(op_key(&span)).or_default() -= 1;
                }
                let lo = cat(&[&tid, &[0; 16]]);
                let hi = cat(&[&tid, &[0xff; 16]]);
                orphans
                    .retain_in(lo.as_slice()..=hi.as_slice(), |_, _| false)
                    .map_err(db_err)?;
                let lo = cat(&[&tid, &[0; 4]]);
                let hi = cat(&[&tid, &[0xff; 4]]);
                spans
                    .retain_in(lo.as_slice()..=hi.as_slice(), |_, _| false)
                    .map_err(db_err)?;
                traces.remove(&tid[..]).map_err(db_err)?;
                by_end.remove(end_key.as_slice()).map_err(db_err)?;
                stats.traces += 1;
            }
            apply_op_counts(&mut tx.open_table(OPERATIONS).map_err(db_err)?, op_counts)?;
        }
        tx.commit().map_err(db_err)?;
        if done {
            return Ok(stats);
        }
    }
}

/// Splits an `operations` key into (service, kind, operation).
fn parse_op_key(k: &[u8]) -> Option<(&str, SpanKind, &str)> {
    let len = u16::from_be_bytes(k.get(..2)?.try_into().ok()?) as usize;
    let svc = std::str::from_utf8(k.get(2..2 + len)?).ok()?;
    let kind = SpanKind::try_from(i32::from(*k.get(2 + len)?)).unwrap_or(SpanKind::Unspecified);
    let op = std::str::from_utf8(k.get(3 + len..)?).ok()?;
    Some((svc, kind, op))
}

#[async_trait]
impl Storage for EmbeddedStorage {
    async fn store_trace(&self, trace: Trace) -> Result<StoreOutcome> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.writer
            .send(WriteRequest { trace, reply })
            .map_err(|_| db_err("writer stopped"))?;
        rx.await.map_err(|_| db_err("writer stopped"))?
    }

    async fn get_trace(&self, trace_id: TraceId) -> Result<Option<Trace>> {
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let spans = tx.open_table(SPANS).map_err(db_err)?;
            let spans = read_trace(&spans, &trace_id.0)?;
            Ok((!spans.is_empty()).then(|| Trace {
                trace_id: trace_id.0.to_vec(),
                spans,
            }))
        })
        .await
    }

    async fn list_traces(&self, filter: &FilterCriteria) -> Result<Vec<Trace>> {
        let filter = filter.clone();
        self.blocking(move |db| list_blocking(db, &filter)).await
    }

    async fn services(&self) -> Result<Vec<String>> {
        self.blocking(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let ops = tx.open_table(OPERATIONS).map_err(db_err)?;
            let mut out = BTreeSet::new();
            for entry in ops.iter().map_err(db_err)? {
                let (k, _) = entry.map_err(db_err)?;
                let (svc, _, _) =
                    parse_op_key(k.value()).ok_or_else(|| corrupt("operations key"))?;
                out.insert(svc.to_owned());
            }
            Ok(out.into_iter().collect())
        })
        .await
    }

    async fn operations(
        &self,
        service: &str,
        kind: Option<SpanKind>,
    ) -> Result<Vec<(String, SpanKind)>> {
        let service = service.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let ops = tx.open_table(OPERATIONS).map_err(db_err)?;
            let mut prefix = index_prefix(0, &[service.as_bytes()]);
            prefix.remove(0);
            let lo = prefix.clone();
            let hi = cat(&[&prefix, &[0xff; 1]]);
            let mut out = Vec::new();
            for entry in ops.range(lo.as_slice()..hi.as_slice()).map_err(db_err)? {
                let (k, _) = entry.map_err(db_err)?;
                let (_, k_kind, op) =
                    parse_op_key(k.value()).ok_or_else(|| corrupt("operations key"))?;
                if kind.is_none_or(|want| want == k_kind) {
                    out.push((op.to_owned(), k_kind));
                }
            }
            Ok(filter::sorted_operations(out))
        })
        .await
    }

    async fn dependencies(
        &self,
        start_unix_nanos: u64,
        end_unix_nanos: u64,
    ) -> Result<Vec<DependencyLink>> {
        self.blocking(move |db| {
            let mut counter = DependencyCounter::default();
            let Some((start, end)) = filter::window(start_unix_nanos, end_unix_nanos) else {
                return Ok(counter.finish());
            };
            let tx = db.begin_read().map_err(db_err)?;
            let edges = tx.open_table(EDGES).map_err(db_err)?;
            let lo = cat(&[&be(start), &[0; 24]]);
            let hi = cat(&[&be(end), &[0xff; 24]]);
            for entry in edges.range(lo.as_slice()..=hi.as_slice()).map_err(db_err)? {
                let (_, v) = entry.map_err(db_err)?;
                let v = std::str::from_utf8(v.value()).map_err(|_| corrupt("edge"))?;
                let mut parts = v.split('\0');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(parent), Some(child), Some(err)) => {
                        counter.add(parent, child, err == "1")
                    }
                    _ => return Err(corrupt("edge")),
                }
            }
            Ok(counter.finish())
        })
        .await
    }

    async fn prune_traces(&self, older_than_unix_nanos: u64) -> Result<PruneStats> {
        let stats = self
            .blocking(move |db| prune_blocking(db, older_than_unix_nanos))
            .await?;
        if stats.traces > 0 {
            tracing::info!(traces = stats.traces, spans = stats.spans, "pruned traces");
        }
        Ok(stats)
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{Fixture, span, trace_id};

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStorage::open(dir.path().join("traces.redb")).unwrap();
        Fixture::with_guard(Arc::new(store), dir)
    }

    conformance_tests!(fixture);

    #[tokio::test]
    async fn survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("traces.redb");
        let t = trace_id(1);
        let spans = vec![
            span(t, 1, None, "api", "GET", 0, 10),
            span(t, 2, Some(1), "db", "SELECT", 1, 5),
        ];
        {
            let store = EmbeddedStorage::open(&path).unwrap();
            let out = store
                .store_trace(Trace {
                    trace_id: t.0.to_vec(),
                    spans: spans.clone(),
                })
                .await
                .unwrap();
            assert_eq!(out.stored, 2);
        }
        let store = EmbeddedStorage::open(&path).unwrap();
        assert_eq!(store.get_trace(t).await.unwrap().unwrap().spans, spans);
        assert_eq!(store.services().await.unwrap(), vec!["api", "db"]);
        assert_eq!(store.dependencies(0, 0).await.unwrap().len(), 1);
        // Still deduplicates against what was stored before the restart.
        let out = store
            .store_trace(Trace {
                trace_id: t.0.to_vec(),
                spans,
            })
            .await
            .unwrap();
        assert_eq!(
            out,
            StoreOutcome {
                stored: 0,
                duplicates: 2
            }
        );
    }

    #[tokio::test]
    async fn a_late_child_finds_its_stored_parent_and_search_sees_every_fragment() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStorage::open(dir.path().join("traces.redb")).unwrap();
        let t = trace_id(1);
        let frag = |spans| Trace {
            trace_id: t.0.to_vec(),
            spans,
        };
        store
            .store_trace(frag(vec![span(t, 1, None, "api", "GET", 0, 10)]))
            .await
            .unwrap();
        // Fragments 2 and 3: a child of the stored root, then its own child.
        store
            .store_trace(frag(vec![span(t, 2, Some(1), "db", "SELECT", 5, 1)]))
            .await
            .unwrap();
        let out = store
            .store_trace(frag(vec![
                span(t, 3, Some(2), "cache", "GET", 6, 1),
                span(t, 2, Some(1), "db", "SELECT", 5, 1),
            ]))
            .await
            .unwrap();
        assert_eq!(
            out,
            StoreOutcome {
                stored: 1,
                duplicates: 1
            }
        );
        let deps = store.dependencies(0, 0).await.unwrap();
        let pairs: Vec<(&str, &str)> = deps
            .iter()
            .map(|d| (d.parent.as_str(), d.child.as_str()))
            .collect();
        assert_eq!(pairs, vec![("api", "db"), ("db", "cache")]);
        assert_eq!(store.get_trace(t).await.unwrap().unwrap().spans.len(), 3);
        // A filter met only by the span of the last fragment.
        let found = store
            .list_traces(&FilterCriteria {
                service: "cache".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].spans.len(), 3);
        // Pruning removes every fragment and index entry.
        let stats = store.prune_traces(u64::MAX).await.unwrap();
        assert_eq!(
            stats,
            PruneStats {
                traces: 1,
                spans: 3
            }
        );
        assert!(store.get_trace(t).await.unwrap().is_none());
        assert!(store.services().await.unwrap().is_empty());
        assert!(store.dependencies(0, 0).await.unwrap().is_empty());
        assert!(
            store
                .list_traces(&FilterCriteria::default())
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn errors_hide_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = EmbeddedStorage::open(file.join("traces.redb")).unwrap_err();
        assert_eq!(err.to_string(), "storage unavailable");
        assert!(err.detail().contains("embedded"), "{}", err.detail());
    }
}
