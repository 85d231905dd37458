//! clew's cold tier: traces kept as Parquet blocks on object storage (a
//! local directory or S3), read by the same queries as hot storage.
//!
//! - [`schema`]: block format version 1, one row per span (the spec is
//!   `docs/COLD-FORMAT.md`); [`json`]: the OTLP/JSON of its nested columns.
//! - [`meta`]: the small metadata object written beside each block, which
//!   lets a search skip a block without opening it.
//! - [`block`]: writes a block (sorted by trace id, bloom filters on trace
//!   id and service), data first and metadata last: a block is listed only
//!   once it is whole.
//! - [`read`]: finds a trace by id and searches blocks, caching metadata,
//!   Parquet footers and bloom filters.
//! - [`maintain`]: compaction of small blocks, retention, and the sweep of
//!   what compactions and crashes leave behind.
//! - [`tiered`]: hot storage and the cold tier as one `Storage`.
//! - [`url`]: opens `file:///…` or `s3://bucket/prefix` as an object store.

pub mod block;
pub mod json;
pub mod maintain;
pub mod meta;
pub mod metrics;
pub mod mover;
pub mod read;
pub mod reader;
pub mod schema;
pub mod tiered;
pub mod url;

#[cfg(test)]
mod tests;

/// Why a cold-tier operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ColdError {
    /// The object store failed (unreachable, refused, not found).
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// Parquet could not write or read a block.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// A span cannot be written (an id of the wrong length).
    #[error("invalid span: {0}")]
    InvalidSpan(String),
    /// Spans could not be encoded as a record batch.
    #[error("encoding a block: {0}")]
    Encode(String),
    /// A block or its metadata is not what this version writes.
    #[error("corrupt block: {0}")]
    Corrupt(String),
    /// A `--cold-url` or its settings are unusable.
    #[error("{0}")]
    Config(String),
}
