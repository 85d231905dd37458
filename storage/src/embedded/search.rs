//! Search: the most selective index walked from the window's end (see the
//! module docs).

use std::collections::HashSet;

use redb::{Database, ReadableDatabase};

use super::tables::{INDEX, SPANS, Summary, be, cat, index_prefix, read_trace, tid_of};
use super::{FilterCriteria, MAX_SCANNED, MAX_TRACE_SPAN_NS, Result, Span, Trace, corrupt, db_err};
use crate::filter;

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

/// The traces matching a filter, most recent matching span first; see the
/// module docs.
pub(super) fn list_blocking(db: &Database, f: &FilterCriteria) -> Result<Vec<Trace>> {
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
            insert_ranked(&mut found, limit, at, tid, trace_spans);
        }
    }
    Ok(found.into_iter().map(|(_, t)| t).collect())
}

/// Inserts a matching trace into `found` (newest matching start first, ties
/// by trace id, highest first), keeping at most `limit`.
fn insert_ranked(
    found: &mut Vec<(u64, Trace)>,
    limit: usize,
    at: u64,
    tid: [u8; 16],
    spans: Vec<Span>,
) {
    let pos = found
        .partition_point(|(t, trace)| *t > at || *t == at && trace.trace_id.as_slice() > &tid[..]);
    found.insert(
        pos,
        (
            at,
            Trace {
                trace_id: tid.to_vec(),
                spans,
            },
        ),
    );
    found.truncate(limit);
}
