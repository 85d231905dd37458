//! Pruning: the traces whose newest span ended before the cut, with their
//! index entries, calls and catalogue counts.

use std::collections::HashMap;

use redb::{Database, ReadableTable};

use super::tables::{
    BY_END, Meta, OPERATIONS, SPANS, TRACES, WriteTables, be, cat, op_key, read_trace,
    span_index_prefixes, tid_of,
};
use super::write::apply_op_counts;
use super::{PruneStats, Result, Trace, db_err};
use crate::filter;
use crate::{Movable, Moved};

/// Traces removed per pruning transaction.
const PRUNE_CHUNK: usize = 512;

/// Removes the traces whose newest span ended before `cut`, a transaction
/// per [`PRUNE_CHUNK`] traces.
pub(super) fn prune_blocking(db: &Database, cut: u64) -> Result<PruneStats> {
    let mut stats = PruneStats::default();
    loop {
        let tx = db.begin_write().map_err(db_err)?;
        let done;
        {
            let mut t = WriteTables::open(&tx)?;
            let upper = be(cut);
            let mut old: Vec<Vec<u8>> = Vec::new();
            for entry in t.by_end.range(..upper.as_slice()).map_err(db_err)? {
                let (k, _) = entry.map_err(db_err)?;
                old.push(k.value().to_vec());
                if old.len() >= PRUNE_CHUNK {
                    break;
                }
            }
            done = old.len() < PRUNE_CHUNK;
            let mut op_counts: HashMap<Vec<u8>, i64> = HashMap::new();
            for end_key in old {
                remove_trace(&mut t, &end_key, &mut op_counts, &mut stats)?;
            }
            apply_op_counts(&mut tx.open_table(OPERATIONS).map_err(db_err)?, op_counts)?;
        }
        tx.commit().map_err(db_err)?;
        if done {
            return Ok(stats);
        }
    }
}

/// Up to `limit` traces whose newest span ended before `cut`, oldest end
/// first; the version is the number of spans stored.
pub(super) fn movable_blocking(db: &Database, cut: u64, limit: usize) -> Result<Vec<Movable>> {
    use redb::ReadableDatabase as _;
    let tx = db.begin_read().map_err(db_err)?;
    let by_end = tx.open_table(BY_END).map_err(db_err)?;
    let traces = tx.open_table(TRACES).map_err(db_err)?;
    let spans = tx.open_table(SPANS).map_err(db_err)?;
    let upper = be(cut);
    let mut out = Vec::new();
    for entry in by_end
        .range(..upper.as_slice())
        .map_err(db_err)?
        .take(limit)
    {
        let (k, _) = entry.map_err(db_err)?;
        let tid = tid_of(k.value().get(8..).unwrap_or_default())?;
        let version = match traces.get(&tid[..]).map_err(db_err)? {
            Some(v) => Meta::decode(v.value())?.span_ids.len() as u64,
            None => continue,
        };
        let trace = Trace {
            trace_id: tid.to_vec(),
            spans: read_trace(&spans, &tid)?,
        };
        out.push(Movable { trace, version });
    }
    Ok(out)
}

/// Removes each moved trace still holding the number of spans it was read
/// with, in one write transaction (writes are serialised with it).
pub(super) fn remove_moved_blocking(db: &Database, moved: &[Moved]) -> Result<PruneStats> {
    let mut stats = PruneStats::default();
    let tx = db.begin_write().map_err(db_err)?;
    {
        let mut t = WriteTables::open(&tx)?;
        let mut op_counts: HashMap<Vec<u8>, i64> = HashMap::new();
        for m in moved {
            let tid = m.trace_id.0;
            let meta = match t.traces.get(&tid[..]).map_err(db_err)? {
                Some(v) => Meta::decode(v.value())?,
                None => continue,
            };
            if meta.span_ids.len() as u64 != m.version {
                continue;
            }
            let end_key = cat(&[&be(meta.newest_end), &tid]);
            remove_trace(&mut t, &end_key, &mut op_counts, &mut stats)?;
        }
        apply_op_counts(&mut tx.open_table(OPERATIONS).map_err(db_err)?, op_counts)?;
    }
    tx.commit().map_err(db_err)?;
    Ok(stats)
}

/// Removes the trace of a `by_end` key from every table; its operations are
/// uncounted in `op_counts`.
fn remove_trace(
    t: &mut WriteTables<'_>,
    end_key: &[u8],
    op_counts: &mut HashMap<Vec<u8>, i64>,
    stats: &mut PruneStats,
) -> Result<()> {
    let tid = tid_of(&end_key[8..])?;
    for span in read_trace(&t.spans, &tid)? {
        stats.spans += 1;
        let sid = filter::span_id(&span);
        let start = be(span.start_time_unix_nano);
        // Each index entry of the trace is keyed by the start of
        // one of its spans: removing every candidate removes them.
        for prefix in span_index_prefixes(&span) {
            t.index
                .remove(cat(&[&prefix, &start, &tid]).as_slice())
                .map_err(db_err)?;
        }
        t.edges
            .remove(cat(&[&start, &tid, &sid]).as_slice())
            .map_err(db_err)?;
        *op_counts.entry(op_key(&span)).or_default() -= 1;
    }
    let lo = cat(&[&tid, &[0; 16]]);
    let hi = cat(&[&tid, &[0xff; 16]]);
    t.orphans
        .retain_in(lo.as_slice()..=hi.as_slice(), |_, _| false)
        .map_err(db_err)?;
    let lo = cat(&[&tid, &[0; 4]]);
    let hi = cat(&[&tid, &[0xff; 4]]);
    t.spans
        .retain_in(lo.as_slice()..=hi.as_slice(), |_, _| false)
        .map_err(db_err)?;
    t.traces.remove(&tid[..]).map_err(db_err)?;
    t.by_end.remove(end_key).map_err(db_err)?;
    stats.traces += 1;
    Ok(())
}
