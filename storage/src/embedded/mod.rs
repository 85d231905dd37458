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
//! | `rollups` | width ‖ start ‖ owner | through ‖ encoded roll-up bucket |
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
//!
//! # Files
//!
//! `tables.rs` the tables above and their encodings; `write.rs` the writer
//! thread and how a fragment is merged in; `search.rs` the search;
//! `prune.rs` pruning.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable};

use super::{
    BoxError, DependencyLink, FilterCriteria, Movable, Moved, PruneStats, Result, RollupPart, Span,
    SpanKind, Storage, StorageError, StoreOutcome, Trace, TraceId, validate,
};
use crate::filter::{self, DependencyCounter};
use tables::{
    BY_END, EDGES, INDEX, OPERATIONS, ORPHANS, SPANS, TRACES, be, cat, index_prefix, parse_op_key,
    read_trace,
};
use write::WriteRequest;

mod prune;
mod rollup;
mod search;
mod tables;
mod write;

const BACKEND: &str = "embedded";

/// Most index entries one search walks before it returns what it found.
pub const MAX_SCANNED: usize = 200_000;

/// The longest a trace is expected to last from its first to its last span.
/// A search finds a trace through a span in its time window only if that
/// span started at most this long before the newest span of the trace under
/// the same index (in the same fragment).
pub const MAX_TRACE_SPAN_NS: u64 = 3_600_000_000_000;

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
    leases: Arc<crate::LocalLeases>,
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
        tx.open_table(rollup::ROLLUPS).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        tracing::info!(path = %path.display(), "opened embedded trace store");
        let db = Arc::new(db);
        let (writer, rx) = std::sync::mpsc::channel();
        let writer_db = Arc::clone(&db);
        let handle = std::thread::Builder::new()
            .name("clew-redb-writer".into())
            .spawn(move || write::writer_loop(writer_db, rx))
            .map_err(db_err)?;
        Ok(EmbeddedStorage {
            db,
            path,
            writer,
            leases: Arc::default(),
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
        self.blocking(move |db| search::list_blocking(db, &filter))
            .await
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
            .blocking(move |db| prune::prune_blocking(db, older_than_unix_nanos))
            .await?;
        if stats.traces > 0 {
            tracing::info!(traces = stats.traces, spans = stats.spans, "pruned traces");
        }
        Ok(stats)
    }

    async fn movable(&self, ended_before_unix_nanos: u64, limit: usize) -> Result<Vec<Movable>> {
        self.blocking(move |db| prune::movable_blocking(db, ended_before_unix_nanos, limit))
            .await
    }

    async fn remove_moved(&self, moved: &[Moved]) -> Result<PruneStats> {
        let moved = moved.to_vec();
        self.blocking(move |db| prune::remove_moved_blocking(db, &moved))
            .await
    }

    async fn stored_bytes(&self) -> Result<Option<u64>> {
        let path = self.path.clone();
        self.blocking(move |_| Ok(Some(std::fs::metadata(&path).map_err(db_err)?.len())))
            .await
    }

    async fn lease(&self, name: &str, holder: &str, ttl: std::time::Duration) -> Result<bool> {
        Ok(self.leases.lease(name, holder, ttl))
    }

    async fn put_rollups(&self, parts: &[RollupPart]) -> Result<()> {
        crate::rollup::validate_all(parts)?;
        let parts = parts.to_vec();
        self.blocking(move |db| rollup::put_blocking(db, &parts))
            .await
    }

    async fn rollups(&self, width: u64, from: u64, to: u64) -> Result<Vec<RollupPart>> {
        self.blocking(move |db| rollup::range_blocking(db, width, from, to))
            .await
    }

    async fn prune_rollups(&self, ended_by_unix_nanos: u64) -> Result<u64> {
        self.blocking(move |db| rollup::prune_blocking(db, ended_by_unix_nanos))
            .await
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }
}

#[cfg(test)]
mod tests;
