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
//! | `spans` | tid ‖ sid | protobuf `Span` |
//! | `traces` | tid | newest span end |
//! | `by_end` | end ‖ tid | — (what `prune_traces` walks) |
//! | `index` | kind ‖ len ‖ text ‖ start ‖ tid ‖ sid | — (one entry per span and index) |
//! | `children` | tid ‖ parent sid ‖ child sid | — (to find calls when a parent arrives late) |
//! | `edges` | child start ‖ tid ‖ child sid | parent svc `\0` child svc `\0` error flag |
//! | `operations` | len ‖ service ‖ kind ‖ operation | number of stored spans |
//!
//! Index kinds: `a` all spans, `s` service, `o` service + operation, `t` tag
//! (key `\0` value, short values only), `e` ERROR spans of a service, `E` all
//! ERROR spans. A search walks one index (the most selective kind the filter
//! allows) from the window's end backwards, checks each span exactly and stops
//! at the limit: `O(log n + scanned)`, in exact "most recent matching span"
//! order, because index entries are per span.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use prost::Message as _;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition};

use super::query::{self, DependencyCounter};
use super::{
    BoxError, DependencyLink, FilterCriteria, PruneStats, Result, Span, SpanKind, Storage,
    StorageError, StoreOutcome, Trace, TraceId, validate,
};

const BACKEND: &str = "embedded";

/// Most index entries one search walks before it returns what it found.
pub const MAX_SCANNED: usize = 200_000;

/// Traces removed per pruning transaction.
const PRUNE_CHUNK: usize = 512;

const SPANS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("spans");
const TRACES: TableDefinition<'_, &[u8], u64> = TableDefinition::new("traces");
const BY_END: TableDefinition<'_, &[u8], ()> = TableDefinition::new("by_end");
const INDEX: TableDefinition<'_, &[u8], ()> = TableDefinition::new("index");
const CHILDREN: TableDefinition<'_, &[u8], ()> = TableDefinition::new("children");
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
const MAX_GROUP: usize = 256;

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
        tx.open_table(CHILDREN).map_err(db_err)?;
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
    if query::is_error(span) {
        out.push(index_prefix(b'e', &[svc]));
        out.push(index_prefix(b'E', &[]));
    }
    let mut seen = HashSet::new();
    for (k, v) in query::indexed_tags(span) {
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
    k.push(query::kind(span) as i32 as u8);
    k.extend_from_slice(span.name.as_bytes());
    k
}

fn decode(blob: &[u8]) -> Result<Span> {
    Span::decode(blob).map_err(|e| corrupt(format!("span: {e}")))
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
    traces: Table<'t, &'static [u8], u64>,
    by_end: Table<'t, &'static [u8], ()>,
    index: Table<'t, &'static [u8], ()>,
    children: Table<'t, &'static [u8], ()>,
    edges: Table<'t, &'static [u8], &'static [u8]>,
    ops: Table<'t, &'static [u8], u64>,
}

/// Writes one validated fragment inside an open write transaction.
fn apply_fragment(t: &mut WriteTables<'_>, fragment: super::Fragment) -> Result<StoreOutcome> {
    let WriteTables {
        spans,
        traces,
        by_end,
        index,
        children,
        edges,
        ops,
    } = t;
    let tid = fragment.trace_id;
    let mut out = StoreOutcome {
        stored: 0,
        duplicates: fragment.duplicates,
    };
    let old_end = traces.get(&tid[..]).map_err(db_err)?.map(|g| g.value());
    let mut newest_end = old_end.unwrap_or(0);
    for span in &fragment.spans {
        let sid = query::span_id(span);
        let key = cat(&[&tid, &sid]);
        if spans.get(key.as_slice()).map_err(db_err)?.is_some() {
            out.duplicates += 1;
            continue;
        }
        out.stored += 1;
        spans
            .insert(key.as_slice(), span.encode_to_vec().as_slice())
            .map_err(db_err)?;
        newest_end = newest_end.max(span.end_time_unix_nano);
        let start = be(span.start_time_unix_nano);
        for prefix in span_index_prefixes(span) {
            let k = cat(&[&prefix, &start, &tid, &sid]);
            index.insert(k.as_slice(), ()).map_err(db_err)?;
        }
        let ok = op_key(span);
        let n = ops
            .get(ok.as_slice())
            .map_err(db_err)?
            .map_or(0, |g| g.value());
        ops.insert(ok.as_slice(), n + 1).map_err(db_err)?;

        // Calls: to the parent, if stored, and from children stored earlier.
        if let Some(parent) = query::parent_id(span) {
            children
                .insert(cat(&[&tid, &parent, &sid]).as_slice(), ())
                .map_err(db_err)?;
            if let Some(p) = spans
                .get(cat(&[&tid, &parent]).as_slice())
                .map_err(db_err)?
            {
                let p = decode(p.value())?;
                if p.service != span.service {
                    edges
                        .insert(
                            cat(&[&start, &tid, &sid]).as_slice(),
                            edge_value(&p.service, &span.service, query::is_error(span)).as_slice(),
                        )
                        .map_err(db_err)?;
                }
            }
        }
        let lo = cat(&[&tid, &sid, &[0; 8]]);
        let hi = cat(&[&tid, &sid, &[0xff; 8]]);
        let mut kids = Vec::new();
        for entry in children
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(db_err)?
        {
            let (k, _) = entry.map_err(db_err)?;
            kids.push(k.value()[24..].to_vec());
        }
        for kid in kids {
            if let Some(c) = spans.get(cat(&[&tid, &kid]).as_slice()).map_err(db_err)? {
                let c = decode(c.value())?;
                if c.service != span.service {
                    edges
                        .insert(
                            cat(&[&be(c.start_time_unix_nano), &tid, &kid]).as_slice(),
                            edge_value(&span.service, &c.service, query::is_error(&c)).as_slice(),
                        )
                        .map_err(db_err)?;
                }
            }
        }
    }
    if out.stored > 0 {
        if let Some(old) = old_end {
            by_end
                .remove(cat(&[&be(old), &tid]).as_slice())
                .map_err(db_err)?;
        }
        by_end
            .insert(cat(&[&be(newest_end), &tid]).as_slice(), ())
            .map_err(db_err)?;
        traces.insert(&tid[..], newest_end).map_err(db_err)?;
    }
    Ok(out)
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
            children: tx.open_table(CHILDREN).map_err(db_err)?,
            edges: tx.open_table(EDGES).map_err(db_err)?,
            ops: tx.open_table(OPERATIONS).map_err(db_err)?,
        };
        for (slot, fragment) in work {
            outcomes.push((slot, apply_fragment(&mut t, fragment)?));
        }
    }
    tx.commit().map_err(db_err)?;
    Ok(outcomes)
}

fn read_trace(
    spans: &impl ReadableTable<&'static [u8], &'static [u8]>,
    tid: &[u8; 16],
) -> Result<Vec<Span>> {
    let lo = cat(&[tid, &[0; 8]]);
    let hi = cat(&[tid, &[0xff; 8]]);
    let mut out = Vec::new();
    for entry in spans.range(lo.as_slice()..=hi.as_slice()).map_err(db_err)? {
        let (_, v) = entry.map_err(db_err)?;
        out.push(decode(v.value())?);
    }
    query::sort_spans(&mut out);
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
    if let Some((k, v)) = tags.into_iter().find(|(k, v)| query::indexable_tag(k, v)) {
        return index_prefix(b't', &[k.as_bytes(), b"\0", v.as_bytes()]);
    }
    match (f.service.is_empty(), f.operation.is_empty()) {
        (false, false) => index_prefix(b'o', &[svc, b"\0", f.operation.as_bytes()]),
        (false, true) => index_prefix(b's', &[svc]),
        _ => index_prefix(b'a', &[]),
    }
}

fn list_blocking(db: &Database, f: &FilterCriteria) -> Result<Vec<Trace>> {
    let limit = query::effective_limit(f);
    let lo = f.start_time_min_unix_nano;
    let hi = match f.start_time_max_unix_nano {
        0 => u64::MAX,
        t => t,
    };
    if lo > hi {
        return Ok(Vec::new());
    }
    let tx = db.begin_read().map_err(db_err)?;
    let spans = tx.open_table(SPANS).map_err(db_err)?;
    let index = tx.open_table(INDEX).map_err(db_err)?;
    let prefix = primary_index(f);
    let from = cat(&[&prefix, &be(lo), &[0; 24]]);
    let to = cat(&[&prefix, &be(hi), &[0xff; 24]]);
    let mut found: Vec<[u8; 16]> = Vec::new();
    let mut seen: HashSet<[u8; 16]> = HashSet::new();
    for entry in index
        .range(from.as_slice()..=to.as_slice())
        .map_err(db_err)?
        .rev()
        .take(MAX_SCANNED)
    {
        if found.len() >= limit {
            break;
        }
        let (k, _) = entry.map_err(db_err)?;
        let k = k.value();
        let n = k.len();
        let tid = tid_of(&k[n - 24..n - 8])?;
        if seen.contains(&tid) {
            continue;
        }
        let Some(blob) = spans.get(&k[n - 24..]).map_err(db_err)? else {
            continue;
        };
        if query::span_matches(&decode(blob.value())?, f) {
            seen.insert(tid);
            found.push(tid);
        }
    }
    found
        .iter()
        .map(|tid| {
            Ok(Trace {
                trace_id: tid.to_vec(),
                spans: read_trace(&spans, tid)?,
            })
        })
        .collect()
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
            let mut children = tx.open_table(CHILDREN).map_err(db_err)?;
            let mut edges = tx.open_table(EDGES).map_err(db_err)?;
            let mut ops = tx.open_table(OPERATIONS).map_err(db_err)?;
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
            for end_key in old {
                let tid = tid_of(&end_key[8..])?;
                for span in read_trace(&spans, &tid)? {
                    stats.spans += 1;
                    remove_span(
                        &span,
                        &tid,
                        &mut spans,
                        &mut index,
                        &mut children,
                        &mut edges,
                        &mut ops,
                    )?;
                }
                traces.remove(&tid[..]).map_err(db_err)?;
                by_end.remove(end_key.as_slice()).map_err(db_err)?;
                stats.traces += 1;
            }
        }
        tx.commit().map_err(db_err)?;
        if done {
            return Ok(stats);
        }
    }
}

type BytesTable<'t, V> = Table<'t, &'static [u8], V>;

fn remove_span(
    span: &Span,
    tid: &[u8; 16],
    spans: &mut BytesTable<'_, &'static [u8]>,
    index: &mut BytesTable<'_, ()>,
    children: &mut BytesTable<'_, ()>,
    edges: &mut BytesTable<'_, &'static [u8]>,
    ops: &mut BytesTable<'_, u64>,
) -> Result<()> {
    let sid = query::span_id(span);
    let start = be(span.start_time_unix_nano);
    spans.remove(cat(&[tid, &sid]).as_slice()).map_err(db_err)?;
    for prefix in span_index_prefixes(span) {
        index
            .remove(cat(&[&prefix, &start, tid, &sid]).as_slice())
            .map_err(db_err)?;
    }
    if let Some(parent) = query::parent_id(span) {
        children
            .remove(cat(&[tid, &parent, &sid]).as_slice())
            .map_err(db_err)?;
    }
    edges
        .remove(cat(&[&start, tid, &sid]).as_slice())
        .map_err(db_err)?;
    let ok = op_key(span);
    let n = ops
        .get(ok.as_slice())
        .map_err(db_err)?
        .map_or(0, |g| g.value());
    if n <= 1 {
        ops.remove(ok.as_slice()).map_err(db_err)?;
    } else {
        ops.insert(ok.as_slice(), n - 1).map_err(db_err)?;
    }
    Ok(())
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
            out.sort();
            Ok(out)
        })
        .await
    }

    async fn dependencies(
        &self,
        start_unix_nanos: u64,
        end_unix_nanos: u64,
    ) -> Result<Vec<DependencyLink>> {
        self.blocking(move |db| {
            let end = match end_unix_nanos {
                0 => u64::MAX,
                t => t,
            };
            let mut counter = DependencyCounter::default();
            if start_unix_nanos > end {
                return Ok(counter.finish());
            }
            let tx = db.begin_read().map_err(db_err)?;
            let edges = tx.open_table(EDGES).map_err(db_err)?;
            let lo = cat(&[&be(start_unix_nanos), &[0; 24]]);
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
    use crate::storage::conformance::{Fixture, span, trace_id};

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
    async fn errors_hide_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = EmbeddedStorage::open(file.join("traces.redb")).unwrap_err();
        assert_eq!(err.to_string(), "storage unavailable");
        assert!(err.detail().contains("embedded"), "{}", err.detail());
    }
}
