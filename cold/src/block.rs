//! Writing a block: spans sorted by trace id (then start), row groups of
//! [`BlockOptions::row_group_rows`], zstd, bloom filters on `trace_id` and
//! `service`; `data.parquet` first, then `meta.json`. A block without its
//! `meta.json` is not listed, so a crash mid-write leaves nothing readers
//! see (and [`crate::read::ColdStore`] deletes such leftovers).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use clew_proto::v1::Span;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _};
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::meta::{BlockMeta, Operation};
use crate::schema::{self, FORMAT_VERSION, col};
use crate::{ColdError, json};

/// How blocks are written.
#[derive(Debug, Clone)]
pub struct BlockOptions {
    /// Rows per row group (the unit a trace lookup reads).
    pub row_group_rows: usize,
    /// zstd level.
    pub zstd_level: i32,
}

impl Default for BlockOptions {
    fn default() -> Self {
        BlockOptions {
            row_group_rows: 8192,
            zstd_level: 3,
        }
    }
}

/// `<prefix>/blocks/<id>/data.parquet`.
pub fn data_path(prefix: &Path, id: &str) -> Path {
    prefix.clone().join("blocks").join(id).join("data.parquet")
}

/// `<prefix>/blocks/<id>/meta.json`.
pub fn meta_path(prefix: &Path, id: &str) -> Path {
    prefix.clone().join("blocks").join(id).join("meta.json")
}

/// The Parquet key-value metadata key holding the format version.
pub const VERSION_KEY: &str = "clew.block.version";

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Writes `spans` (whole or partial traces, any order) as one block and
/// returns its metadata once both objects are stored. `replaces` names the
/// blocks it supersedes (compaction).
pub async fn write(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    mut spans: Vec<Span>,
    replaces: Vec<String>,
    options: &BlockOptions,
) -> Result<BlockMeta, ColdError> {
    if spans.is_empty() {
        return Err(ColdError::InvalidSpan(
            "a block needs at least one span".into(),
        ));
    }
    spans.sort_by(|a, b| {
        (
            a.trace_id.as_slice(),
            a.start_time_unix_nano,
            a.span_id.as_slice(),
        )
            .cmp(&(
                b.trace_id.as_slice(),
                b.start_time_unix_nano,
                b.span_id.as_slice(),
            ))
    });
    let created = now_nanos();
    let id = format!(
        "{created:016x}-{}",
        json::hex(&spans[0].trace_id[..4.min(spans[0].trace_id.len())])
    );
    let mut meta = summarize(&spans, &id, created, replaces);
    let path = data_path(prefix, &id);
    let writer = BufWriter::new(Arc::clone(store), path.clone());
    let props = properties(options, meta.traces);
    let mut out = AsyncArrowWriter::try_new(writer, schema::schema(), Some(props))?;
    for chunk in spans.chunks(options.row_group_rows.max(1)) {
        out.write(&schema::to_batch(chunk.iter())?).await?;
        out.flush().await?;
    }
    out.close().await?;
    meta.bytes = store.head(&path).await?.size;
    store
        .put(&meta_path(prefix, &id), meta.to_json().into())
        .await?;
    Ok(meta)
}

fn properties(options: &BlockOptions, traces: u64) -> WriterProperties {
    let zstd = ZstdLevel::try_new(options.zstd_level).unwrap_or_default();
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(zstd))
        .set_max_row_group_row_count(Some(options.row_group_rows.max(1)))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_key_value_metadata(Some(vec![KeyValue::new(
            VERSION_KEY.to_owned(),
            FORMAT_VERSION.to_string(),
        )]))
        .set_sorting_columns(Some(
            schema::indices([col::TRACE_ID, col::START])
                .map(sorting)
                .to_vec(),
        ));
    for c in [col::TRACE_ID, col::SERVICE] {
        let path = ColumnPath::from(c);
        b = b
            .set_column_bloom_filter_enabled(path.clone(), true)
            .set_column_bloom_filter_fpp(path.clone(), 0.01)
            .set_column_bloom_filter_max_ndv(path, traces.max(1));
    }
    // The JSON columns are mostly distinct per row: no dictionary.
    for c in [
        col::ATTRIBUTES,
        col::RESOURCE,
        col::EVENTS,
        col::LINKS,
        col::CLOCK_START,
        col::CLOCK_END,
    ] {
        b = b.set_column_dictionary_enabled(ColumnPath::from(c), false);
    }
    b.build()
}

/// Ascending on column `i`.
fn sorting(i: usize) -> parquet::file::metadata::SortingColumn {
    parquet::file::metadata::SortingColumn {
        column_idx: i32::try_from(i).unwrap_or(i32::MAX),
        descending: false,
        nulls_first: false,
    }
}

/// The metadata of sorted `spans` (`bytes` filled in after writing).
fn summarize(spans: &[Span], id: &str, created: u64, replaces: Vec<String>) -> BlockMeta {
    let mut services: BTreeMap<String, BTreeSet<Operation>> = BTreeMap::new();
    let mut traces = 0u64;
    let mut last: Option<&[u8]> = None;
    for s in spans {
        if last != Some(s.trace_id.as_slice()) {
            traces += 1;
            last = Some(&s.trace_id);
        }
        services
            .entry(s.service.clone())
            .or_default()
            .insert(Operation {
                name: s.name.clone(),
                kind: s.kind,
            });
    }
    let hex_of = |s: Option<&Span>| s.map(|s| json::hex(&s.trace_id)).unwrap_or_default();
    BlockMeta {
        version: FORMAT_VERSION,
        id: id.to_owned(),
        created_unix_nano: created,
        min_start_unix_nano: spans
            .iter()
            .map(|s| s.start_time_unix_nano)
            .min()
            .unwrap_or(0),
        max_start_unix_nano: spans
            .iter()
            .map(|s| s.start_time_unix_nano)
            .max()
            .unwrap_or(0),
        max_end_unix_nano: spans
            .iter()
            .map(|s| s.end_time_unix_nano)
            .max()
            .unwrap_or(0),
        traces,
        spans: spans.len() as u64,
        bytes: 0,
        min_trace_id: hex_of(spans.first()),
        max_trace_id: hex_of(spans.last()),
        services: services
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect(),
        replaces,
    }
}
