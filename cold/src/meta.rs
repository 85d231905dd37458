//! The metadata object of a block (`blocks/<id>/meta.json`): what a search
//! needs to skip the block without opening it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ColdError;

/// What a block holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockMeta {
    /// Block format version ([`crate::schema::FORMAT_VERSION`]).
    pub version: u32,
    /// The block's id: its directory under `blocks/`.
    pub id: String,
    /// When it was written.
    pub created_unix_nano: u64,
    /// The earliest span start in the block.
    pub min_start_unix_nano: u64,
    /// The latest span start in the block.
    pub max_start_unix_nano: u64,
    /// The latest span end in the block.
    pub max_end_unix_nano: u64,
    /// Distinct traces.
    pub traces: u64,
    /// Rows (spans).
    pub spans: u64,
    /// Size of `data.parquet`.
    pub bytes: u64,
    /// The smallest trace id, hex.
    pub min_trace_id: String,
    /// The largest trace id, hex.
    pub max_trace_id: String,
    /// Every service with its operations (span name and span kind).
    pub services: BTreeMap<String, Vec<Operation>>,
    /// Blocks whose spans this block holds (compaction): readers ignore
    /// them once this block is listed.
    #[serde(default)]
    pub replaces: Vec<String>,
}

/// An operation of a service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Operation {
    /// The span name.
    pub name: String,
    /// The span kind (OpenTelemetry's numbers).
    pub kind: i32,
}

impl BlockMeta {
    /// Parses a `meta.json`, refusing a version this build cannot read.
    pub fn parse(bytes: &[u8]) -> Result<BlockMeta, ColdError> {
        let meta: BlockMeta = serde_json::from_slice(bytes)
            .map_err(|e| ColdError::Corrupt(format!("meta.json: {e}")))?;
        if meta.version != crate::schema::FORMAT_VERSION {
            return Err(ColdError::Corrupt(format!(
                "meta.json: format version {} (this build reads {})",
                meta.version,
                crate::schema::FORMAT_VERSION
            )));
        }
        Ok(meta)
    }

    /// The JSON written.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Whether a span starting in `[min, max]` (0: unbounded) can be here.
    pub fn overlaps(&self, min: u64, max: u64) -> bool {
        (min == 0 || self.max_start_unix_nano >= min)
            && (max == 0 || self.min_start_unix_nano <= max)
    }

    /// Whether `trace_id` (hex) is within the block's trace id range.
    pub fn may_hold(&self, trace_hex: &str) -> bool {
        self.min_trace_id.as_str() <= trace_hex && trace_hex <= self.max_trace_id.as_str()
    }

    /// Whether the block has spans of `service` (with `operation`, when
    /// not empty).
    pub fn has(&self, service: &str, operation: &str) -> bool {
        if service.is_empty() {
            return operation.is_empty()
                || self
                    .services
                    .values()
                    .flatten()
                    .any(|o| o.name == operation);
        }
        self.services
            .get(service)
            .is_some_and(|ops| operation.is_empty() || ops.iter().any(|o| o.name == operation))
    }
}
