//! Reading the cold tier: the list of blocks (their `meta.json`, cached
//! and refreshed by listing), a trace by id (block trace-id range, row
//! group statistics, then the row group's bloom filter, then only the
//! matching rows), searches (blocks pruned by time range and services
//! before any is opened) and dependencies.
//!
//! A block that cannot be read (truncated, corrupt, another version) is
//! skipped with an error log naming it and counted in
//! [`ColdStore::skipped_blocks`]; the answer comes from the rest.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::{Array as _, BooleanArray, RecordBatch};
use clew_proto::v1::{FilterCriteria, Span, SpanKind};
use clew_storage::filter;
use futures_util::{StreamExt as _, TryStreamExt as _};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _};
use parking_lot::{Mutex, RwLock};
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowPredicateFn, ArrowReaderMetadata, ArrowReaderOptions, RowFilter,
};
use parquet::bloom_filter::Sbbf;
use parquet::file::statistics::Statistics;

use crate::block::{data_path, meta_path};
use crate::meta::BlockMeta;
use crate::reader::ObjectReader;
use crate::schema::{self, Columns, col};
use crate::{ColdError, json};

/// One listed block and what is cached of it.
#[derive(Debug)]
pub struct Block {
    /// Its metadata object.
    pub meta: BlockMeta,
    footer: tokio::sync::OnceCell<ArrowReaderMetadata>,
    blooms: Mutex<HashMap<usize, Option<Arc<Sbbf>>>>,
}

/// The cold tier of one store prefix.
#[derive(Debug)]
pub struct ColdStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    blocks: RwLock<Arc<BTreeMap<String, Arc<Block>>>>,
    /// Listed blocks that a listed compacted block replaces, with the
    /// creation time of the block replacing them (deleted after a grace).
    replaced: RwLock<BTreeMap<String, u64>>,
    /// Block directories without `meta.json` at the last listing, with
    /// their data's last-modified time.
    partial: RwLock<BTreeMap<String, u64>>,
    skipped: AtomicU64,
    metrics: Option<crate::metrics::ColdMetrics>,
}

type Blocks = Arc<BTreeMap<String, Arc<Block>>>;

impl ColdStore {
    /// The cold tier under `prefix` of `store` (nothing is read yet: call
    /// [`refresh`](Self::refresh)).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path) -> Self {
        ColdStore {
            store,
            prefix,
            blocks: RwLock::new(Arc::default()),
            replaced: RwLock::new(BTreeMap::new()),
            partial: RwLock::new(BTreeMap::new()),
            skipped: AtomicU64::new(0),
            metrics: None,
        }
    }

    /// Counts into `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::ColdMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The metrics, when counted.
    pub fn metrics(&self) -> Option<&crate::metrics::ColdMetrics> {
        self.metrics.as_ref()
    }

    fn timed(&self, op: &str) -> Option<prometheus::HistogramTimer> {
        self.metrics
            .as_ref()
            .map(|m| m.read_seconds.with_label_values(&[op]).start_timer())
    }

    /// The object store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The prefix blocks live under.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// Blocks skipped because they could not be read, since start.
    pub fn skipped_blocks(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// The blocks listed, by id (those replaced by a compacted block left
    /// out).
    pub fn blocks(&self) -> Blocks {
        Arc::clone(&self.blocks.read())
    }

    /// Lists the blocks again: new `meta.json` objects are read, deleted
    /// blocks forgotten. A `meta.json` that does not parse is skipped (and
    /// logged) until it is replaced.
    pub async fn refresh(&self) -> Result<Blocks, ColdError> {
        let listed: Vec<_> = self
            .store
            .list(Some(&self.prefix.clone().join("blocks")))
            .try_collect()
            .await?;
        let ids: HashSet<String> = listed
            .iter()
            .filter(|o| o.location.filename() == Some("meta.json"))
            .filter_map(|o| block_id(&o.location))
            .collect();
        *self.partial.write() = listed
            .iter()
            .filter_map(|o| Some((block_id(&o.location)?, o)))
            .filter(|(id, _)| !ids.contains(id))
            .map(|(id, o)| {
                (
                    id,
                    u64::try_from(o.last_modified.timestamp_nanos_opt().unwrap_or(0)).unwrap_or(0),
                )
            })
            .collect();
        let old = self.blocks();
        let mut all: BTreeMap<String, Arc<Block>> = BTreeMap::new();
        for id in ids {
            match old.get(&id) {
                Some(b) => {
                    all.insert(id, Arc::clone(b));
                }
                None => {
                    if let Some(b) = self.load_meta(&id).await? {
                        all.insert(id, Arc::new(b));
                    }
                }
            }
        }
        let replaced: BTreeMap<String, u64> = all
            .values()
            .flat_map(|b| {
                b.meta
                    .replaces
                    .iter()
                    .map(|r| (r.clone(), b.meta.created_unix_nano))
            })
            .filter(|(r, _)| all.contains_key(r))
            .collect();
        all.retain(|id, _| !replaced.contains_key(id));
        *self.replaced.write() = replaced;
        if let Some(m) = &self.metrics {
            m.blocks.set(i64::try_from(all.len()).unwrap_or(i64::MAX));
            let bytes: u64 = all.values().map(|b| b.meta.bytes).sum();
            m.bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        let all = Arc::new(all);
        *self.blocks.write() = Arc::clone(&all);
        Ok(all)
    }

    async fn load_meta(&self, id: &str) -> Result<Option<Block>, ColdError> {
        let bytes = match self.store.get(&meta_path(&self.prefix, id)).await {
            Ok(r) => r.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match BlockMeta::parse(&bytes) {
            Ok(meta) => Ok(Some(Block {
                meta,
                footer: tokio::sync::OnceCell::new(),
                blooms: Mutex::new(HashMap::new()),
            })),
            Err(e) => {
                self.skip(id, &e);
                Ok(None)
            }
        }
    }

    fn skip(&self, id: &str, e: &ColdError) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.unreadable.inc();
        }
        tracing::error!(block = id, error = %e, "skipping an unreadable cold block");
    }

    /// Runs `read` on a block; an unreadable block is skipped (`None`),
    /// an object-store failure other than a vanished block is returned.
    async fn guarded<T>(
        &self,
        block: &Block,
        read: impl Future<Output = Result<T, ColdError>>,
    ) -> Result<Option<T>, ColdError> {
        match read.await {
            Ok(v) => Ok(Some(v)),
            Err(ColdError::Store(object_store::Error::NotFound { .. })) => Ok(None),
            Err(e @ ColdError::Store(_)) => Err(e),
            Err(e) => {
                self.skip(&block.meta.id, &e);
                Ok(None)
            }
        }
    }

    fn reader(&self, block: &Block) -> ObjectReader {
        ObjectReader::new(
            Arc::clone(&self.store),
            data_path(&self.prefix, &block.meta.id),
        )
    }

    /// A stream builder over `block`, its footer read once and cached.
    async fn builder(
        &self,
        block: &Block,
    ) -> Result<ParquetRecordBatchStreamBuilder<ObjectReader>, ColdError> {
        let footer = block
            .footer
            .get_or_try_init(|| async {
                let mut reader = self.reader(block);
                let options = ArrowReaderOptions::new().with_schema(schema::schema());
                ArrowReaderMetadata::load_async(&mut reader, options).await
            })
            .await?;
        Ok(ParquetRecordBatchStreamBuilder::new_with_metadata(
            self.reader(block),
            footer.clone(),
        ))
    }

    /// Every span of `trace_id` in the cold tier, unsorted (a trace may
    /// be in several blocks).
    pub async fn trace_spans(&self, trace_id: &[u8; 16]) -> Result<Vec<Span>, ColdError> {
        let _t = self.timed("trace");
        let hex = json::hex(trace_id);
        let mut out = Vec::new();
        for block in self.blocks().values().filter(|b| b.meta.may_hold(&hex)) {
            if let Some(spans) = self
                .guarded(block, self.block_trace(block, trace_id))
                .await?
            {
                out.extend(spans);
            }
        }
        // A span moved twice (a crash before its hot copy was deleted) is
        // in two blocks: keep one.
        out.sort_by(|a, b| a.span_id.cmp(&b.span_id));
        out.dedup_by(|a, b| a.span_id == b.span_id);
        Ok(out)
    }

    async fn block_trace(&self, block: &Block, id: &[u8; 16]) -> Result<Vec<Span>, ColdError> {
        let mut builder = self.builder(block).await?;
        let mut groups = Vec::new();
        for rg in 0..builder.metadata().num_row_groups() {
            if !stats_may_hold(
                builder
                    .metadata()
                    .row_group(rg)
                    .column(schema::indices([col::TRACE_ID])[0])
                    .statistics(),
                id,
            ) {
                continue;
            }
            if bloom(block, &mut builder, rg)
                .await?
                .is_none_or(|b| b.check(&id[..]))
            {
                groups.push(rg);
            }
        }
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let mask =
            ProjectionMask::roots(builder.parquet_schema(), schema::indices([col::TRACE_ID]));
        let want = *id;
        let predicate = ArrowPredicateFn::new(mask, move |batch: RecordBatch| {
            let ids = Columns::new(&batch)
                .binary(col::TRACE_ID)
                .map_err(|e| arrow_schema::ArrowError::ExternalError(Box::new(e)))?;
            Ok(ids
                .iter()
                .map(|v| Some(v == Some(&want[..])))
                .collect::<BooleanArray>())
        });
        let stream = builder
            .with_row_groups(groups)
            .with_row_filter(RowFilter::new(vec![Box::new(predicate)]))
            .build()?;
        let batches: Vec<RecordBatch> = stream.try_collect().await?;
        let mut spans = Vec::new();
        for b in &batches {
            spans.extend(schema::from_batch(b)?);
        }
        Ok(spans)
    }

    /// Trace ids with a span matching `f`, each with the start of its most
    /// recent matching span (not limited: the caller merges tiers).
    pub async fn search(&self, f: &FilterCriteria) -> Result<HashMap<[u8; 16], u64>, ColdError> {
        self.search_top(f, usize::MAX).await
    }

    /// [`search`](Self::search) for the `limit` traces with the most recent
    /// matching spans (and maybe a few more): blocks are read newest
    /// first, and no block is opened whose spans all started before the
    /// `limit`-th best match found so far.
    pub async fn search_top(
        &self,
        f: &FilterCriteria,
        limit: usize,
    ) -> Result<HashMap<[u8; 16], u64>, ColdError> {
        let _t = self.timed("search");
        let mut best: HashMap<[u8; 16], u64> = HashMap::new();
        let Some((min, max)) = filter::start_window(f) else {
            return Ok(best);
        };
        let blocks = self.blocks();
        let mut candidates: Vec<&Arc<Block>> = blocks
            .values()
            .filter(|b| {
                b.meta.overlaps(min, if max == u64::MAX { 0 } else { max })
                    && b.meta.has(&f.service, &f.operation)
            })
            .collect();
        candidates.sort_by_key(|b| std::cmp::Reverse(b.meta.max_start_unix_nano));
        for block in candidates {
            if kth_best(&best, limit).is_some_and(|kth| block.meta.max_start_unix_nano < kth) {
                break;
            }
            if let Some(found) = self
                .guarded(block, self.block_search(block, f, (min, max)))
                .await?
            {
                for (id, start) in found {
                    let e = best.entry(id).or_insert(start);
                    *e = (*e).max(start);
                }
            }
        }
        Ok(best)
    }

    async fn block_search(
        &self,
        block: &Block,
        f: &FilterCriteria,
        (min, max): (u64, u64),
    ) -> Result<Vec<([u8; 16], u64)>, ColdError> {
        let builder = self.builder(block).await?;
        let groups: Vec<usize> = (0..builder.metadata().num_row_groups())
            .filter(|rg| {
                let [start] = schema::indices([col::START]);
                let stats = builder.metadata().row_group(*rg).column(start).statistics();
                u64_range(stats).is_none_or(|(lo, hi)| hi >= min && lo <= max)
            })
            .collect();
        let mut cols = schema::indices([
            col::TRACE_ID,
            col::SERVICE,
            col::NAME,
            col::START,
            col::END,
            col::STATUS_CODE,
        ])
        .to_vec();
        if !f.tags.is_empty() {
            cols.extend(schema::indices([col::ATTRIBUTES, col::RESOURCE]));
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), cols);
        let mut stream = builder
            .with_row_groups(groups)
            .with_projection(mask)
            .build()?;
        let mut out = Vec::new();
        while let Some(batch) = stream.next().await {
            SearchRows::new(&batch?)?.matches(f, &mut out)?;
        }
        Ok(out)
    }

    /// Services with spans in the cold tier, sorted.
    pub fn services(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .blocks()
            .values()
            .flat_map(|b| b.meta.services.keys().cloned())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// A service's operations in the cold tier, of `kind` when given.
    pub fn operations(&self, service: &str, kind: Option<SpanKind>) -> Vec<(String, SpanKind)> {
        let ops = self
            .blocks()
            .values()
            .filter_map(|b| b.meta.services.get(service).cloned())
            .flatten()
            .filter_map(|o| Some((o.name, SpanKind::try_from(o.kind).ok()?)))
            .filter(|(_, k)| kind.is_none_or(|want| *k == want))
            .collect();
        filter::sorted_operations(ops)
    }

    /// Service calls whose child span started in `[start, end]` (0:
    /// unbounded), from the blocks overlapping the window: the calls whose
    /// parent is in the child's block, and the children whose parent is
    /// not (a trace split across blocks or tiers), for the caller to
    /// resolve.
    pub async fn dependencies(&self, start: u64, end: u64) -> Result<ColdDependencies, ColdError> {
        let _t = self.timed("dependencies");
        let mut out = ColdDependencies::default();
        let blocks = self.blocks();
        for block in blocks.values().filter(|b| b.meta.overlaps(start, end)) {
            let Some(spans) = self.guarded(block, self.block_edges_spans(block)).await? else {
                continue;
            };
            for trace in spans.chunk_by(|a, b| a.trace_id == b.trace_id) {
                out.add_trace(trace, start, end);
            }
        }
        Ok(out)
    }

    /// Every span of a block.
    pub(crate) async fn block_spans(&self, block: &Block) -> Result<Vec<Span>, ColdError> {
        let batches: Vec<RecordBatch> = self.builder(block).await?.build()?.try_collect().await?;
        let mut out = Vec::new();
        for b in &batches {
            out.extend(schema::from_batch(b)?);
        }
        Ok(out)
    }

    /// Blocks a listed compacted block replaces, with the creation time of
    /// the block replacing each.
    pub fn replaced(&self) -> BTreeMap<String, u64> {
        self.replaced.read().clone()
    }

    /// Block directories without `meta.json`, with their data's age stamp.
    pub fn partial(&self) -> BTreeMap<String, u64> {
        self.partial.read().clone()
    }

    /// The spans of a block with the columns dependencies need.
    async fn block_edges_spans(&self, block: &Block) -> Result<Vec<Span>, ColdError> {
        let builder = self.builder(block).await?;
        let mask = ProjectionMask::roots(
            builder.parquet_schema(),
            schema::indices([
                col::TRACE_ID,
                col::SPAN_ID,
                col::PARENT_SPAN_ID,
                col::SERVICE,
                col::START,
                col::STATUS_CODE,
            ]),
        );
        let batches: Vec<RecordBatch> =
            builder.with_projection(mask).build()?.try_collect().await?;
        let mut out = Vec::new();
        for b in &batches {
            out.extend(edge_spans(b)?);
        }
        Ok(out)
    }

    /// Deletes blocks (data first, then metadata: a block whose data is
    /// gone is never listed).
    pub async fn delete_block(&self, id: &str) -> Result<(), ColdError> {
        for path in [data_path(&self.prefix, id), meta_path(&self.prefix, id)] {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Calls found in the cold tier, and children whose parent is elsewhere.
#[derive(Debug, Default)]
pub struct ColdDependencies {
    /// Calls whose parent and child are in one block.
    pub calls: filter::DependencyCounter,
    /// Children in the window whose parent span is not in their block.
    pub dangling: Vec<Span>,
}

impl ColdDependencies {
    fn add_trace(&mut self, trace: &[Span], start: u64, end: u64) {
        for e in filter::edges(trace.iter()) {
            if filter::in_window(e.child_start, start, end) {
                self.calls.add(&e.parent, &e.child, e.error);
            }
        }
        let ids: HashSet<&[u8]> = trace.iter().map(|s| s.span_id.as_slice()).collect();
        self.dangling.extend(
            trace
                .iter()
                .filter(|s| {
                    !s.parent_span_id.is_empty() && !ids.contains(s.parent_span_id.as_slice())
                })
                .filter(|s| filter::in_window(s.start_time_unix_nano, start, end))
                .cloned(),
        );
    }
}

/// The `limit`-th most recent best match, once there are that many.
fn kth_best(best: &HashMap<[u8; 16], u64>, limit: usize) -> Option<u64> {
    if limit == 0 || best.len() < limit {
        return None;
    }
    let mut starts: Vec<u64> = best.values().copied().collect();
    let (_, kth, _) = starts.select_nth_unstable_by(limit - 1, |a, b| b.cmp(a));
    Some(*kth)
}

/// `blocks/<id>/meta.json` → `<id>`.
fn block_id(path: &Path) -> Option<String> {
    let parts: Vec<_> = path.parts().collect();
    let n = parts.len();
    (n >= 3 && parts[n - 3].as_ref() == "blocks").then(|| parts[n - 2].as_ref().to_owned())
}

/// Whether a row group's trace-id statistics allow `id`.
fn stats_may_hold(stats: Option<&Statistics>, id: &[u8; 16]) -> bool {
    match stats {
        Some(Statistics::FixedLenByteArray(s)) => match (s.min_opt(), s.max_opt()) {
            (Some(lo), Some(hi)) => lo.data() <= &id[..] && &id[..] <= hi.data(),
            _ => true,
        },
        _ => true,
    }
}

/// A row group's `u64` column range (unsigned statistics are stored as
/// INT64 with an unsigned logical type; the min/max are the unsigned
/// order).
fn u64_range(stats: Option<&Statistics>) -> Option<(u64, u64)> {
    match stats {
        Some(Statistics::Int64(s)) => {
            let (lo, hi) = (s.min_opt()?, s.max_opt()?);
            Some((*lo as u64, *hi as u64))
        }
        _ => None,
    }
}

/// The bloom filter of `trace_id` in row group `rg`, read once.
async fn bloom(
    block: &Block,
    builder: &mut ParquetRecordBatchStreamBuilder<ObjectReader>,
    rg: usize,
) -> Result<Option<Arc<Sbbf>>, ColdError> {
    if let Some(b) = block.blooms.lock().get(&rg) {
        return Ok(b.clone());
    }
    let b = builder
        .get_row_group_column_bloom_filter(rg, schema::indices([col::TRACE_ID])[0])
        .await?
        .map(Arc::new);
    block.blooms.lock().insert(rg, b.clone());
    Ok(b)
}

/// The rows of a search projection.
struct SearchRows<'a> {
    ids: &'a arrow_array::FixedSizeBinaryArray,
    service: &'a arrow_array::StringArray,
    name: &'a arrow_array::StringArray,
    start: &'a arrow_array::UInt64Array,
    end: &'a arrow_array::UInt64Array,
    code: &'a arrow_array::Int32Array,
    /// Attributes and resource, when the batch has them (tag filters).
    tags: Option<(&'a arrow_array::StringArray, &'a arrow_array::StringArray)>,
}

impl<'a> SearchRows<'a> {
    fn new(batch: &'a RecordBatch) -> Result<Self, ColdError> {
        let c = Columns::new(batch);
        let tags = match (c.string(col::ATTRIBUTES), c.string(col::RESOURCE)) {
            (Ok(a), Ok(r)) => Some((a, r)),
            _ => None,
        };
        Ok(SearchRows {
            ids: c.binary(col::TRACE_ID)?,
            service: c.string(col::SERVICE)?,
            name: c.string(col::NAME)?,
            start: c.u64(col::START)?,
            end: c.u64(col::END)?,
            code: c.i32(col::STATUS_CODE)?,
            tags,
        })
    }

    /// Adds (trace id, start) of each row matching `f` to `out`: the
    /// columns are checked in place, the attributes parsed only for rows
    /// that pass everything else and whose JSON can hold the tag values.
    fn matches(&self, f: &FilterCriteria, out: &mut Vec<([u8; 16], u64)>) -> Result<(), ColdError> {
        for i in 0..self.ids.len() {
            if !self.plain_match(i, f) || !self.tags_match(i, f)? {
                continue;
            }
            let id: [u8; 16] = self
                .ids
                .value(i)
                .try_into()
                .map_err(|_| ColdError::Corrupt("trace id is not 16 bytes".into()))?;
            out.push((id, self.start.value(i)));
        }
        Ok(())
    }

    /// Every condition of `f` but its tags.
    fn plain_match(&self, i: usize, f: &FilterCriteria) -> bool {
        let (start, end) = (self.start.value(i), self.end.value(i));
        let d = end.saturating_sub(start);
        (f.service.is_empty() || self.service.value(i) == f.service)
            && (f.operation.is_empty() || self.name.value(i) == f.operation)
            && (f.start_time_min_unix_nano == 0 || start >= f.start_time_min_unix_nano)
            && (f.start_time_max_unix_nano == 0 || start <= f.start_time_max_unix_nano)
            && (f.min_duration_nanos == 0 || d >= f.min_duration_nanos)
            && (f.max_duration_nanos == 0 || d <= f.max_duration_nanos)
            && (!f.errors_only || (!self.code.is_null(i) && self.code.value(i) == 2))
    }

    fn tags_match(&self, i: usize, f: &FilterCriteria) -> Result<bool, ColdError> {
        if f.tags.is_empty() {
            return Ok(true);
        }
        let Some((a, r)) = self.tags else {
            return Ok(false);
        };
        let (a, r) = (a.value(i), r.value(i));
        if !f.tags.iter().all(|(k, v)| may_hold(a, r, k, v)) {
            return Ok(false);
        }
        let kv = |text: &str, name: &str| {
            serde_json::from_str(text)
                .map_err(|e| ColdError::Corrupt(format!("column {name}: {e}")))
                .and_then(|v| json::parse_key_values(&v).map_err(|e| ColdError::Corrupt(e.0)))
        };
        let span = Span {
            attributes: kv(a, col::ATTRIBUTES)?,
            resource: kv(r, col::RESOURCE)?,
            ..Span::default()
        };
        let tags_only = FilterCriteria {
            tags: f.tags.clone(),
            ..FilterCriteria::default()
        };
        Ok(filter::span_matches(&span, &tags_only))
    }
}

/// Whether the JSON of a row's attributes and resource can hold tag
/// `key`=`value`: both appear in it as text, unless a value is of a kind
/// whose JSON differs from how filters render it (doubles, bytes, arrays)
/// or the text needs escaping.
fn may_hold(attributes: &str, resource: &str, key: &str, value: &str) -> bool {
    let plain = |t: &str| !t.chars().any(|c| c == '"' || c == '\\' || c.is_control());
    let typed =
        |j: &str| j.contains("doubleValue") || j.contains("bytesValue") || j.contains("arrayValue");
    if !plain(key) || !plain(value) || typed(attributes) || typed(resource) {
        return true;
    }
    let quoted = format!("\"{key}\"");
    [attributes, resource]
        .iter()
        .any(|j| j.contains(&quoted) && j.contains(value))
}

/// Spans with the ids, service, start and status of each row.
fn edge_spans(batch: &RecordBatch) -> Result<Vec<Span>, ColdError> {
    let c = Columns::new(batch);
    let (trace, span, parent) = (
        c.binary(col::TRACE_ID)?,
        c.binary(col::SPAN_ID)?,
        c.binary(col::PARENT_SPAN_ID)?,
    );
    let (service, start, code) = (
        c.string(col::SERVICE)?,
        c.u64(col::START)?,
        c.i32(col::STATUS_CODE)?,
    );
    Ok((0..batch.num_rows())
        .map(|i| Span {
            trace_id: trace.value(i).to_vec(),
            span_id: span.value(i).to_vec(),
            parent_span_id: if parent.is_null(i) {
                Vec::new()
            } else {
                parent.value(i).to_vec()
            },
            service: service.value(i).to_owned(),
            start_time_unix_nano: start.value(i),
            status: (!code.is_null(i)).then(|| clew_proto::v1::Status {
                code: code.value(i),
                message: String::new(),
            }),
            ..Span::default()
        })
        .collect())
}
