//! Writes: the writer thread's group commit and how one fragment is merged
//! into the tables.

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message as _;
use redb::{Database, ReadableTable, Table};

use super::tables::{
    Meta, OPERATIONS, Summary, WriteTables, be, cat, edge_value, op_key, orphan_value,
    parse_orphan, read_trace, span_index_prefixes,
};
use super::{Result, Span, StoreOutcome, Trace, corrupt, db_err, validate};
use crate::Fragment;
use crate::filter;

/// A fragment handed to the writer thread, and who waits for the result.
#[derive(Debug)]
pub(super) struct WriteRequest {
    pub(super) trace: Trace,
    pub(super) reply: tokio::sync::oneshot::Sender<Result<StoreOutcome>>,
}

/// Most fragments committed in one transaction.
const MAX_GROUP: usize = 4096;

/// The writer thread: commits whatever fragments are waiting as one
/// transaction, until every sender is gone.
pub(super) fn writer_loop(db: Arc<Database>, rx: std::sync::mpsc::Receiver<WriteRequest>) {
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

/// The spans of a fragment not stored yet, and what they add.
struct NewSpans<'f> {
    /// The new spans by id.
    by_id: HashMap<[u8; 8], &'f Span>,
    /// The new spans as the fragment's `fragments` row.
    blob: Trace,
    /// Index entries of the new spans: prefix -> summary of its spans there.
    entries: HashMap<Vec<u8>, Summary>,
    /// Newest span end of the trace with them.
    newest_end: u64,
}

/// A child span for the `edges` table: (span id, start, error, service).
type Child<'a> = (&'a [u8; 8], u64, bool, &'a str);

/// Writes one validated fragment inside an open write transaction. Operation
/// counts are added to `op_counts` (written once per transaction).
fn apply_fragment(
    t: &mut WriteTables<'_>,
    fragment: Fragment,
    op_counts: &mut HashMap<Vec<u8>, i64>,
) -> Result<StoreOutcome> {
    let tid = fragment.trace_id;
    let mut out = StoreOutcome {
        stored: 0,
        duplicates: fragment.duplicates,
    };
    let meta = match t.traces.get(&tid[..]).map_err(db_err)? {
        Some(v) => Some(Meta::decode(v.value())?),
        None => None,
    };
    let old_end = meta.as_ref().map(|m| m.newest_end);
    let new = new_spans(&fragment, meta.as_ref(), &mut out, op_counts);
    if out.stored == 0 {
        return Ok(out);
    }
    let mut meta = meta.unwrap_or_default();
    let seq = meta.next_fragment;
    write_spans(t, &tid, seq, &new, old_end.is_some())?;
    link_new_spans(t, &tid, &new.by_id, &meta)?;
    if old_end.is_some() {
        adopt_orphans(t, &tid, &new.by_id)?;
    }
    if let Some(old) = old_end {
        t.by_end
            .remove(cat(&[&be(old), &tid]).as_slice())
            .map_err(db_err)?;
    }
    t.by_end
        .insert(cat(&[&be(new.newest_end), &tid]).as_slice(), ())
        .map_err(db_err)?;
    meta.newest_end = new.newest_end;
    meta.next_fragment = seq.wrapping_add(1);
    meta.span_ids.extend(new.by_id.keys());
    t.traces
        .insert(&tid[..], meta.encode().as_slice())
        .map_err(db_err)?;
    Ok(out)
}

/// Sorts the fragment's spans into new ones and duplicates of stored ones
/// (counted in `out`), with the index entries and operation counts of the
/// new ones.
fn new_spans<'f>(
    fragment: &'f Fragment,
    meta: Option<&Meta>,
    out: &mut StoreOutcome,
    op_counts: &mut HashMap<Vec<u8>, i64>,
) -> NewSpans<'f> {
    let mut new = NewSpans {
        by_id: HashMap::with_capacity(fragment.spans.len()),
        blob: Trace::default(),
        entries: HashMap::new(),
        newest_end: meta.map_or(0, |m| m.newest_end),
    };
    for span in &fragment.spans {
        let sid = filter::span_id(span);
        if meta.is_some_and(|m| m.span_ids.contains(&sid)) {
            out.duplicates += 1;
            continue;
        }
        out.stored += 1;
        new.blob.spans.push(span.clone());
        new.newest_end = new.newest_end.max(span.end_time_unix_nano);
        let summary = Summary::of(span);
        for prefix in span_index_prefixes(span) {
            new.entries
                .entry(prefix)
                .and_modify(|s| s.add(summary))
                .or_insert(summary);
        }
        *op_counts.entry(op_key(span)).or_default() += 1;
        new.by_id.insert(sid, span);
    }
    new
}

/// Writes the new spans as fragment `seq` of the trace, and their index
/// entries (merged with an entry of an earlier fragment under the same key
/// when the trace is `known`).
fn write_spans(
    t: &mut WriteTables<'_>,
    tid: &[u8; 16],
    seq: u32,
    new: &NewSpans<'_>,
    known: bool,
) -> Result<()> {
    t.spans
        .insert(
            cat(&[tid, &seq.to_be_bytes()]).as_slice(),
            new.blob.encode_to_vec().as_slice(),
        )
        .map_err(db_err)?;
    for (prefix, summary) in &new.entries {
        let k = cat(&[prefix, &be(summary.newest_start), tid]);
        let mut merged = *summary;
        // Another fragment of the trace with the same newest start.
        if known && let Some(old) = t.index.get(k.as_slice()).map_err(db_err)? {
            merged.add(Summary::decode(summary.newest_start, old.value())?);
        }
        t.index
            .insert(k.as_slice(), merged.encode().as_slice())
            .map_err(db_err)?;
    }
    Ok(())
}

/// Records a call from a span of `parent_svc` to `child` (when the services
/// differ).
fn add_edge(
    edges: &mut Table<'_, &'static [u8], &'static [u8]>,
    tid: &[u8; 16],
    parent_svc: &str,
    child: Child<'_>,
) -> Result<()> {
    let (sid, start, error, svc) = child;
    if parent_svc != svc {
        edges
            .insert(
                cat(&[&be(start), tid, sid]).as_slice(),
                edge_value(parent_svc, svc, error).as_slice(),
            )
            .map_err(db_err)?;
    }
    Ok(())
}

/// Calls: each new span to its parent (in this fragment or stored), or
/// left as an orphan until the parent arrives.
fn link_new_spans(
    t: &mut WriteTables<'_>,
    tid: &[u8; 16],
    new: &HashMap<[u8; 8], &Span>,
    meta: &Meta,
) -> Result<()> {
    // Services of the spans stored before, read only if a call needs them.
    let mut stored_services: Option<HashMap<[u8; 8], String>> = None;
    for (sid, span) in new {
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
            add_edge(&mut t.edges, tid, &p.service, child)?;
        } else if meta.span_ids.contains(&parent) {
            if stored_services.is_none() {
                let before = read_trace(&t.spans, tid)?;
                stored_services = Some(
                    before
                        .into_iter()
                        .map(|s| (filter::span_id(&s), s.service))
                        .collect(),
                );
            }
            if let Some(svc) = stored_services.as_ref().and_then(|m| m.get(&parent)) {
                add_edge(&mut t.edges, tid, svc, child)?;
            }
        } else {
            t.orphans
                .insert(
                    cat(&[tid, &parent, sid]).as_slice(),
                    orphan_value(span).as_slice(),
                )
                .map_err(db_err)?;
        }
    }
    Ok(())
}

/// Children stored earlier whose parent is among the new spans: their
/// calls are recorded and they stop waiting.
fn adopt_orphans(
    t: &mut WriteTables<'_>,
    tid: &[u8; 16],
    new: &HashMap<[u8; 8], &Span>,
) -> Result<()> {
    let lo = cat(&[tid, &[0; 16]]);
    let hi = cat(&[tid, &[0xff; 16]]);
    let mut adopted = Vec::new();
    for entry in t
        .orphans
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
        add_edge(&mut t.edges, tid, &parent_svc, (&child, start, error, &svc))?;
        t.orphans.remove(key.as_slice()).map_err(db_err)?;
    }
    Ok(())
}

/// Adds (or, negative, removes) operation counts.
pub(super) fn apply_op_counts(
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

/// Writes the fragments of a group in one transaction.
fn write_group(db: &Database, work: Vec<(usize, Fragment)>) -> Result<Vec<(usize, StoreOutcome)>> {
    let tx = db.begin_write().map_err(db_err)?;
    let mut outcomes = Vec::with_capacity(work.len());
    {
        let mut t = WriteTables::open(&tx)?;
        let mut op_counts = HashMap::new();
        for (slot, fragment) in work {
            outcomes.push((slot, apply_fragment(&mut t, fragment, &mut op_counts)?));
        }
        apply_op_counts(&mut tx.open_table(OPERATIONS).map_err(db_err)?, op_counts)?;
    }
    tx.commit().map_err(db_err)?;
    Ok(outcomes)
}
