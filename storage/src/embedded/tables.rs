//! The tables (see the module docs' layout) and the encoding of their keys
//! and values.

use std::collections::HashSet;

use prost::Message as _;
use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use super::{FilterCriteria, Result, Span, SpanKind, Trace, corrupt, db_err};
use crate::filter;

pub(super) const SPANS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("fragments");
pub(super) const TRACES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("trace_meta");
pub(super) const BY_END: TableDefinition<'_, &[u8], ()> = TableDefinition::new("by_end");
pub(super) const INDEX: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("trace_index");
pub(super) const ORPHANS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("orphans");
pub(super) const EDGES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("edges");
pub(super) const OPERATIONS: TableDefinition<'_, &[u8], u64> = TableDefinition::new("operations");

/// The tables a write or a prune changes (all but `operations`, whose
/// counts are written once per transaction), opened once per transaction.
pub(super) struct WriteTables<'t> {
    pub(super) spans: Table<'t, &'static [u8], &'static [u8]>,
    pub(super) traces: Table<'t, &'static [u8], &'static [u8]>,
    pub(super) by_end: Table<'t, &'static [u8], ()>,
    pub(super) index: Table<'t, &'static [u8], &'static [u8]>,
    pub(super) orphans: Table<'t, &'static [u8], &'static [u8]>,
    pub(super) edges: Table<'t, &'static [u8], &'static [u8]>,
}

impl<'t> WriteTables<'t> {
    pub(super) fn open(tx: &'t WriteTransaction) -> Result<Self> {
        Ok(WriteTables {
            spans: tx.open_table(SPANS).map_err(db_err)?,
            traces: tx.open_table(TRACES).map_err(db_err)?,
            by_end: tx.open_table(BY_END).map_err(db_err)?,
            index: tx.open_table(INDEX).map_err(db_err)?,
            orphans: tx.open_table(ORPHANS).map_err(db_err)?,
            edges: tx.open_table(EDGES).map_err(db_err)?,
        })
    }
}

pub(super) fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub(super) fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// `kind ‖ len ‖ text` (text may hold any bytes: the length keeps prefixes apart).
pub(super) fn index_prefix(kind: u8, text: &[&[u8]]) -> Vec<u8> {
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
pub(super) fn span_index_prefixes(span: &Span) -> Vec<Vec<u8>> {
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

pub(super) fn op_key(span: &Span) -> Vec<u8> {
    let mut k = index_prefix(b'O', &[span.service.as_bytes()]);
    k.remove(0);
    k.push(filter::kind(span) as i32 as u8);
    k.extend_from_slice(span.name.as_bytes());
    k
}

pub(super) fn decode_fragment(blob: &[u8]) -> Result<Trace> {
    Trace::decode(blob).map_err(|e| corrupt(format!("fragment: {e}")))
}

pub(super) fn tid_of(tail: &[u8]) -> Result<[u8; 16]> {
    tail.try_into()
        .map_err(|_| corrupt("bad trace id in a key"))
}

pub(super) fn edge_value(parent: &str, child: &str, error: bool) -> Vec<u8> {
    cat(&[
        parent.as_bytes(),
        b"\0",
        child.as_bytes(),
        b"\0",
        if error { b"1" } else { b"0" },
    ])
}

/// What one index entry says about the spans of a fragment filed under it.
/// The key carries `newest_start`; the value the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Summary {
    pub(super) newest_start: u64,
    pub(super) oldest_start: u64,
    pub(super) min_duration: u64,
    pub(super) max_duration: u64,
    pub(super) error: bool,
}

/// Length of an encoded [`Summary`] value.
const SUMMARY_LEN: usize = 25;

impl Summary {
    pub(super) fn of(span: &Span) -> Self {
        let d = filter::duration(span);
        Summary {
            newest_start: span.start_time_unix_nano,
            oldest_start: span.start_time_unix_nano,
            min_duration: d,
            max_duration: d,
            error: filter::is_error(span),
        }
    }

    pub(super) fn add(&mut self, other: Summary) {
        self.newest_start = self.newest_start.max(other.newest_start);
        self.oldest_start = self.oldest_start.min(other.oldest_start);
        self.min_duration = self.min_duration.min(other.min_duration);
        self.max_duration = self.max_duration.max(other.max_duration);
        self.error |= other.error;
    }

    pub(super) fn encode(&self) -> [u8; SUMMARY_LEN] {
        let mut v = [0u8; SUMMARY_LEN];
        v[..8].copy_from_slice(&be(self.oldest_start));
        v[8..16].copy_from_slice(&be(self.min_duration));
        v[16..24].copy_from_slice(&be(self.max_duration));
        v[24] = u8::from(self.error);
        v
    }

    /// The summary of an entry whose key says `newest_start`.
    pub(super) fn decode(newest_start: u64, v: &[u8]) -> Result<Self> {
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
    pub(super) fn may_match(&self, f: &FilterCriteria, lo: u64, hi: u64) -> bool {
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
pub(super) struct Meta {
    pub(super) newest_end: u64,
    pub(super) next_fragment: u32,
    pub(super) span_ids: HashSet<[u8; 8]>,
}

impl Meta {
    pub(super) fn decode(v: &[u8]) -> Result<Self> {
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

    pub(super) fn encode(&self) -> Vec<u8> {
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
pub(super) fn orphan_value(span: &Span) -> Vec<u8> {
    cat(&[
        &be(span.start_time_unix_nano),
        &[u8::from(filter::is_error(span))],
        span.service.as_bytes(),
    ])
}

pub(super) fn parse_orphan(v: &[u8]) -> Result<(u64, bool, &str)> {
    let start = v
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("orphan entry"))?;
    let error = v.get(8).ok_or_else(|| corrupt("orphan entry"))? == &1;
    let svc = std::str::from_utf8(&v[9..]).map_err(|_| corrupt("orphan entry"))?;
    Ok((start, error, svc))
}

pub(super) fn read_trace(
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

/// Splits an `operations` key into (service, kind, operation).
pub(super) fn parse_op_key(k: &[u8]) -> Option<(&str, SpanKind, &str)> {
    let len = u16::from_be_bytes(k.get(..2)?.try_into().ok()?) as usize;
    let svc = std::str::from_utf8(k.get(2..2 + len)?).ok()?;
    let kind = SpanKind::try_from(i32::from(*k.get(2 + len)?)).unwrap_or(SpanKind::Unspecified);
    let op = std::str::from_utf8(k.get(3 + len..)?).ok()?;
    Some((svc, kind, op))
}
