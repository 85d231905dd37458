//! RED roll-ups at ingest: every span of every durable WAL record counted
//! per (service, operation, span kind), and every call (a span whose parent
//! span is of another service, paired in `rollup/calls.rs`) per (parent service,
//! child service), into time buckets of each tier
//! ([`TIER_WIDTHS_NANOS`]: 10 s, 1 min, 10 min, 1 h), before assembly and
//! before any sampling; written to storage as this collector's parts
//! ([`RollupPart`]) every [`RollupConfig::flush_interval`].
//!
//! # Counted once, across restarts
//!
//! A bucket is placed by the span's start time, so a span lands in the same
//! bucket whenever it is counted. Each process writes parts under its own
//! owner, `<incarnation>.<epoch>` (the WAL directory's identity and the
//! process's start), each part holding everything this process counted in
//! the bucket and `through`: every record of the WAL below it that has a
//! span in the bucket is in the part. Three rules make the count exact:
//!
//! - `through` is what the WAL says every record below has been handed on
//!   ([`Wal::consumed_below`]), read under the same lock under which a
//!   record is counted and handed on ([`Rollups::record_appended`]), so a
//!   part holds every record below its `through` and none at or above it.
//!   A record that arrives while an earlier one is still on its way waits
//!   aside (what its spans contribute, copied) until every record before
//!   it has been handed on: then it is below any `through` read later.
//! - The WAL keeps every record at or after the last `through` written
//!   ([`Wal::set_floor`]), whatever storage has released: a crash before a
//!   flush replays them.
//! - At replay, a span of record `seq` is not counted in a bucket that an
//!   earlier process of the same incarnation wrote with `through > seq`:
//!   it is in that part already ([`Rollups::prepare_replay`]).
//!
//! A span is counted into its 10 s bucket's delta (a
//! [`BucketBuilder`]: its duration waits in its key's buffer and goes into
//! the sketch with the buffer); a flush folds the deltas into every tier's
//! bucket. A bucket stays in memory
//! [`RollupConfig::keep`] after its end. A span for a bucket this process
//! wrote and let go waits while the next flush reads the part back, adds
//! it and writes it again (the WAL keeps its record meanwhile).
//!
//! A call is counted with the record of whichever of parent and child came
//! second, under the same rules; the WAL's floor also keeps every record
//! the pairing still holds ([`Rollups::floor`]), so a replay pairs again
//! what the crashed run counted and did not write.
//!
//! Readers merge every owner's parts (`clew_analysis::rollup`): the
//! buckets of several collectors, and of one collector's several runs, add
//! up.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clew_analysis::rollup::{
    Bucket, BucketBuilder, CallRecord, Limits, SpanRecord, TIER_WIDTHS_NANOS, align_down,
};
use clew_proto::v1::Span;
use parking_lot::Mutex;

use crate::storage::{RollupPart, Storage, StorageError, filter};
use crate::wal::{Appended, Wal, WalRecord};

mod calls;

use calls::{Callee, Calls, Ids};

/// A bucket: (width, start), nanoseconds.
type Key = (u64, u64);

/// Settings of the roll-ups.
#[derive(Debug, Clone)]
pub struct RollupConfig {
    /// How often buckets that changed are written to storage.
    pub flush_interval: Duration,
    /// How long a bucket stays in memory after its end.
    pub keep: Duration,
    /// How long a span waits for its parent (or children) to make a call
    /// edge: between one and two of these (`rollup/calls.rs`).
    pub call_window: Duration,
    /// Cardinality limits per bucket (overflow folds into one series).
    pub limits: Limits,
}

impl Default for RollupConfig {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_secs(10),
            keep: Duration::from_secs(600),
            call_window: Duration::from_secs(10),
            limits: Limits::default(),
        }
    }
}

/// Counters of the roll-ups, for `/metrics`.
#[derive(Debug, Default)]
pub struct RollupStats {
    /// Spans counted (once per span, not per tier).
    pub spans: AtomicU64,
    /// Spans of replayed records already in an earlier run's parts.
    pub replay_skipped: AtomicU64,
    /// Parts written.
    pub parts_written: AtomicU64,
    /// Flushes that failed (retried at the next interval).
    pub flush_failures: AtomicU64,
    /// Buckets read back from storage for a late span.
    pub reloaded: AtomicU64,
    /// Calls (parent service → child service) counted.
    pub calls: AtomicU64,
    /// Spans whose parent had not been seen within the call window.
    pub unpaired: AtomicU64,
}

/// What a span contributes, kept while an earlier record is on its way.
#[derive(Debug, Clone)]
struct Fact {
    start_unix_nanos: u64,
    ids: Option<Ids>,
    service: String,
    operation: String,
    kind: i32,
    is_error: bool,
    duration_nanos: u64,
}

impl Fact {
    fn of(span: &Span) -> Fact {
        Fact {
            start_unix_nanos: span.start_time_unix_nano,
            ids: ids(span),
            service: span.service.clone(),
            operation: span.name.clone(),
            kind: span.kind,
            is_error: filter::is_error(span),
            duration_nanos: filter::duration(span),
        }
    }
}

/// A span, or what it contributes: what the roll-ups count.
trait Countable {
    fn start_unix_nanos(&self) -> u64;
    fn record(&self) -> SpanRecord<'_>;
    fn ids(&self) -> Option<Ids>;

    fn seen(&self) -> Seen<'_> {
        Seen {
            start_unix_nanos: self.start_unix_nanos(),
            ids: self.ids(),
            record: self.record(),
        }
    }
}

impl Countable for Span {
    fn start_unix_nanos(&self) -> u64 {
        self.start_time_unix_nano
    }

    fn record(&self) -> SpanRecord<'_> {
        span_record(self)
    }

    fn ids(&self) -> Option<Ids> {
        ids(self)
    }
}

impl Countable for Fact {
    fn start_unix_nanos(&self) -> u64 {
        self.start_unix_nanos
    }

    fn record(&self) -> SpanRecord<'_> {
        SpanRecord {
            service: &self.service,
            operation: &self.operation,
            kind: self.kind,
            is_error: self.is_error,
            duration_nanos: self.duration_nanos,
        }
    }

    fn ids(&self) -> Option<Ids> {
        self.ids
    }
}

/// A span as it is counted.
#[derive(Debug, Clone, Copy)]
struct Seen<'a> {
    start_unix_nanos: u64,
    ids: Option<Ids>,
    record: SpanRecord<'a>,
}

/// What is counted in a bucket.
#[derive(Debug, Clone, Copy)]
enum Item<'a> {
    Span(&'a SpanRecord<'a>),
    Call(&'a CallRecord<'a>),
}

impl Item<'_> {
    fn add_to(self, bucket: &mut impl Fill, limits: &Limits) {
        match self {
            Item::Span(s) => bucket.add_span(s, limits),
            Item::Call(c) => bucket.add_call(c, limits),
        }
    }
}

/// What spans and calls are counted into: a bucket, or a bucket being
/// filled.
trait Fill {
    fn add_span(&mut self, span: &SpanRecord<'_>, limits: &Limits);
    fn add_call(&mut self, call: &CallRecord<'_>, limits: &Limits);
}

impl Fill for Bucket {
    fn add_span(&mut self, span: &SpanRecord<'_>, limits: &Limits) {
        Bucket::add_span(self, span, limits);
    }

    fn add_call(&mut self, call: &CallRecord<'_>, limits: &Limits) {
        Bucket::add_call(self, call, limits);
    }
}

impl Fill for BucketBuilder {
    fn add_span(&mut self, span: &SpanRecord<'_>, limits: &Limits) {
        BucketBuilder::add_span(self, span, limits);
    }

    fn add_call(&mut self, call: &CallRecord<'_>, limits: &Limits) {
        BucketBuilder::add_call(self, call, limits);
    }
}

/// A bucket in memory.
#[derive(Debug)]
struct Open {
    bucket: Bucket,
    /// Changed since it was last written.
    dirty: bool,
}

/// Spans counted and not yet folded into [`Open`] buckets (or not yet
/// added to a bucket read back), with the lowest record they come from.
#[derive(Debug)]
struct Delta<B = Bucket> {
    bucket: B,
    min_seq: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Every tier's buckets in memory (what this run counted in each).
    open: BTreeMap<Key, Open>,
    /// Spans since the last flush, by finest-tier bucket; a flush folds
    /// them into every tier.
    delta: BTreeMap<Key, Delta<BucketBuilder>>,
    /// Buckets written by this process and let go.
    evicted: HashSet<Key>,
    /// What was counted for buckets let go, until the bucket is read back.
    waiting: BTreeMap<Key, Delta>,
    /// From replay: earlier runs' `through` per bucket.
    skip: HashMap<Key, u64>,
    /// The highest of them: records from it on were counted by no earlier
    /// run (every record appended in this run).
    skip_below: u64,
    /// Records handed on while an earlier one was still on its way, by
    /// seq: counted once every record before them is handed on.
    deferred: BTreeMap<u64, Vec<Fact>>,
    /// Parents and children waiting for each other.
    calls: Calls,
    /// The calls a span completed (kept to reuse its allocation).
    found: Vec<calls::Call>,
    /// The pairing ids of a record's spans (kept to reuse its allocation).
    ids: Vec<Option<Ids>>,
}

/// What counting a record did.
#[derive(Debug, Default)]
struct Counted {
    spans: u64,
    skipped: u64,
    calls: u64,
}

/// The roll-ups of one collector process. See the [module docs](self).
#[derive(Debug)]
pub struct Rollups {
    owner: String,
    /// `<incarnation>.`: the owners of earlier runs on the same WAL.
    lineage: String,
    config: RollupConfig,
    wal: Wal,
    state: Mutex<State>,
    stats: RollupStats,
}

impl Rollups {
    /// Roll-ups of the records of `wal`, whose directory's identity is
    /// `incarnation`; this run's owner is named by the current time.
    pub fn new(wal: Wal, incarnation: u64, config: RollupConfig) -> Rollups {
        let lineage = format!("{incarnation:016x}.");
        Rollups {
            owner: format!("{lineage}{}", clew_model::now_unix_nanos()),
            lineage,
            config,
            wal,
            state: Mutex::new(State::default()),
            stats: RollupStats::default(),
        }
    }

    /// This run's owner name in storage.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Counters.
    pub fn stats(&self) -> &RollupStats {
        &self.stats
    }

    /// Reads what earlier runs of this incarnation wrote for the buckets of
    /// the replayed records, so that [`record`](Self::record) skips what
    /// they counted. Call before replaying.
    pub async fn prepare_replay(
        &self,
        storage: &dyn Storage,
        records: &[WalRecord],
    ) -> Result<(), StorageError> {
        let mut ranges: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for span in records.iter().flat_map(|r| &r.batch.spans) {
            for key in keys(span.start_time_unix_nano) {
                let r = ranges.entry(key.0).or_insert((key.1, key.1));
                *r = (r.0.min(key.1), r.1.max(key.1));
            }
        }
        let mut skip = HashMap::new();
        for (width, (lo, hi)) in ranges {
            let parts = storage.rollups(width, lo, hi.saturating_add(1)).await?;
            for p in parts.iter().filter(|p| p.owner.starts_with(&self.lineage)) {
                let through = skip.entry((width, p.start_unix_nanos)).or_insert(0);
                *through = p.through.max(*through);
            }
        }
        let mut state = self.state.lock();
        state.skip_below = skip.values().copied().max().unwrap_or(0);
        state.skip = skip;
        Ok(())
    }

    /// Counts the spans of a record read back at start-up (before the
    /// flushes start), except where an earlier run counted it.
    pub fn record(&self, seq: u64, spans: &[Span]) {
        let mut state = self.state.lock();
        self.count(&mut state, seq, spans);
    }

    /// Counts the spans of a record just appended and hands the record on
    /// (to the assembler, which owes its release): both under the lock a
    /// flush reads `through` under.
    pub fn record_appended(&self, appended: Appended, spans: &[Span]) -> u64 {
        let mut state = self.state.lock();
        let seq = appended.seq();
        if self.wal.consumed_below() < seq {
            // An earlier record is on its way: this one may not be in a part
            // whose `through` is at or below it.
            let facts = spans.iter().map(Fact::of).collect();
            state.deferred.insert(seq, facts);
        } else {
            self.count(&mut state, seq, spans);
        }
        let held = appended.into_held_seq();
        // Records that waited for this one are counted now, while their
        // facts are fresh: the wait lasts while a record is on its way.
        if !state.deferred.is_empty() {
            let through = self.wal.consumed_below();
            let counted = state.count_deferred(through, &self.config.limits);
            self.tally(&counted);
        }
        held
    }

    fn count(&self, state: &mut State, seq: u64, spans: &[Span]) {
        let mut counted = Counted::default();
        state.count_record(seq, spans, &self.config.limits, &mut counted);
        self.tally(&counted);
    }

    fn tally(&self, c: &Counted) {
        let s = &self.stats;
        s.spans.fetch_add(c.spans, Ordering::Relaxed);
        s.replay_skipped.fetch_add(c.skipped, Ordering::Relaxed);
        s.calls.fetch_add(c.calls, Ordering::Relaxed);
    }

    /// Writes every bucket that changed, as of `through` (below which every
    /// record is counted), then lets go of buckets ended
    /// [`RollupConfig::keep`] ago. Returns the `through` now durable: the
    /// WAL may forget records below it.
    pub async fn flush(&self, storage: &dyn Storage) -> Result<u64, StorageError> {
        // Fold first, so that what arrived for buckets let go is read back
        // in this flush.
        self.settle(self.wal.consumed_below());
        self.reload(storage).await?;
        let (parts, through) = {
            let through = self.wal.consumed_below();
            self.settle(through);
            let mut state = self.state.lock();
            // Spans waiting for their bucket to be read back are not in it.
            let waiting = state.waiting.values().map(|d| d.min_seq).min();
            let through = waiting.map_or(through, |w| w.min(through));
            (state.take_dirty(&self.owner, through), through)
        };
        if let Err(e) = storage.put_rollups(&parts).await {
            self.stats.flush_failures.fetch_add(1, Ordering::Relaxed);
            self.state.lock().mark_dirty(&parts);
            return Err(e);
        }
        self.stats
            .parts_written
            .fetch_add(parts.len() as u64, Ordering::Relaxed);
        let keep = u64::try_from(self.config.keep.as_nanos()).unwrap_or(u64::MAX);
        let horizon = clew_model::now_unix_nanos().saturating_sub(keep);
        self.state.lock().evict(horizon);
        Ok(through)
    }

    /// Counts what waited for `through` and folds the deltas (under the
    /// lock).
    fn settle(&self, through: u64) {
        let mut state = self.state.lock();
        let counted = state.settle(through, &self.config.limits);
        self.tally(&counted);
    }

    /// The WAL's floor after a flush that wrote `through`: nothing the
    /// call pairing still holds is forgotten either. Turns the pairing's
    /// generations when the window has passed.
    pub fn floor(&self, through: u64) -> u64 {
        let mut state = self.state.lock();
        state.calls.turn_after(self.config.call_window);
        self.stats
            .unpaired
            .store(state.calls.unpaired, Ordering::Relaxed);
        state.calls.min_seq().map_or(through, |m| m.min(through))
    }

    /// Reads back the buckets late spans wait for and adds them.
    async fn reload(&self, storage: &dyn Storage) -> Result<(), StorageError> {
        let keys: Vec<Key> = self.state.lock().waiting.keys().copied().collect();
        for (width, start) in keys {
            let parts = storage
                .rollups(width, start, start.saturating_add(1))
                .await?;
            let own = parts.iter().find(|p| p.owner == self.owner);
            let mut bucket = match own {
                Some(p) => Bucket::decode(&p.bytes).map_err(|e| StorageError::Corrupt {
                    backend: "rollups",
                    detail: e.to_string(),
                })?,
                None => match new_bucket((width, start)) {
                    Some(b) => b,
                    None => continue,
                },
            };
            let mut state = self.state.lock();
            state.evicted.remove(&(width, start));
            if let Some(w) = state.waiting.remove(&(width, start)) {
                merge_into(&mut bucket, &w.bucket);
            }
            state.open.insert(
                (width, start),
                Open {
                    bucket,
                    dirty: true,
                },
            );
            self.stats.reloaded.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Flushes every `flush_interval` until `stop` resolves, then once
    /// more; moves the WAL's floor to each `through` written.
    pub async fn run(
        &self,
        storage: std::sync::Arc<dyn Storage>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(self.config.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                () = &mut stop => true,
            };
            match self.flush(storage.as_ref()).await {
                Ok(through) => self.wal.set_floor(Some(self.floor(through))),
                Err(e) => tracing::warn!(error = %e.detail(), "roll-ups not written; retrying"),
            }
            if stopping {
                return;
            }
        }
    }
}

impl State {
    /// Counts the deferred records below `through`, then folds every
    /// delta into the buckets of every tier holding it.
    fn settle(&mut self, through: u64, limits: &Limits) -> Counted {
        let counted = self.count_deferred(through, limits);
        for ((_, start), mut delta) in std::mem::take(&mut self.delta) {
            let part = delta.bucket.finish();
            for key in keys(start) {
                self.fold(key, part, delta.min_seq);
            }
        }
        counted
    }

    /// Counts the deferred records below `through`.
    fn count_deferred(&mut self, through: u64, limits: &Limits) -> Counted {
        let mut counted = Counted::default();
        if self
            .deferred
            .first_key_value()
            .is_none_or(|(s, _)| *s >= through)
        {
            return counted;
        }
        let later = self.deferred.split_off(&through);
        let ready = std::mem::replace(&mut self.deferred, later);
        for (seq, facts) in ready {
            self.count_record(seq, &facts, limits, &mut counted);
        }
        counted
    }

    /// Counts a span of record `seq` and the calls it completes, except in
    /// the tiers where an earlier run counted them.
    fn count_span(&mut self, seq: u64, s: &Seen<'_>, limits: &Limits, c: &mut Counted) {
        match self.add(seq, s.start_unix_nanos, Item::Span(&s.record), limits) {
            true => c.spans += 1,
            false => c.skipped += 1,
        }
        self.count_calls(seq, s, limits, c);
    }

    /// Counts the spans of record `seq` when no earlier run counted any:
    /// each run of spans of one finest-tier bucket in one batch.
    fn add_fresh_spans<T: Countable>(&mut self, seq: u64, items: &[T], limits: &Limits) {
        let bucket_of = |t: &T| align_down(t.start_unix_nanos(), TIER_WIDTHS_NANOS[0]);
        let mut rest = items;
        while let Some(first) = rest.first() {
            let start = bucket_of(first);
            let n = rest.iter().take_while(|t| bucket_of(t) == start).count();
            let (run, later) = rest.split_at(n);
            rest = later;
            if let Some(delta) = self.delta_at(start, seq) {
                for item in run {
                    delta.add_span(&item.record(), limits);
                }
            }
        }
    }

    /// The delta of the finest-tier bucket holding time `t`, taking a
    /// span of record `seq`.
    fn delta_at(&mut self, t: u64, seq: u64) -> Option<&mut BucketBuilder> {
        let key = (TIER_WIDTHS_NANOS[0], align_down(t, TIER_WIDTHS_NANOS[0]));
        let make = |bucket: Bucket| Delta {
            bucket: bucket.into(),
            min_seq: seq,
        };
        let delta = slot(&mut self.delta, key, make)?;
        delta.min_seq = delta.min_seq.min(seq);
        Some(&mut delta.bucket)
    }

    /// Counts the spans of record `seq` and the calls they complete.
    fn count_record<T: Countable>(
        &mut self,
        seq: u64,
        items: &[T],
        limits: &Limits,
        c: &mut Counted,
    ) {
        if seq >= self.skip_below {
            // No earlier run counted it: a run of spans at a time.
            self.add_fresh_spans(seq, items, limits);
            c.spans += items.len() as u64;
            self.count_fresh_calls(seq, items, limits, c);
        } else {
            for item in items {
                self.count_span(seq, &item.seen(), limits, c);
            }
        }
    }

    /// Counts the calls the spans of record `seq` complete, when no earlier
    /// run counted any: where their traces are kept is read first, for
    /// all of them (the cache misses overlap), then they are paired.
    fn count_fresh_calls<T: Countable>(
        &mut self,
        seq: u64,
        items: &[T],
        limits: &Limits,
        c: &mut Counted,
    ) {
        let mut ids = std::mem::take(&mut self.ids);
        ids.clear();
        ids.extend(items.iter().map(Countable::ids));
        std::hint::black_box(self.calls.touch(&ids));
        for (item, &ids) in items.iter().zip(&ids) {
            let seen = Seen {
                start_unix_nanos: item.start_unix_nanos(),
                ids,
                record: item.record(),
            };
            self.count_calls(seq, &seen, limits, c);
        }
        self.ids = ids;
    }

    /// Counts the calls a span of record `seq` completes, except in the
    /// tiers where an earlier run counted them.
    fn count_calls(&mut self, seq: u64, s: &Seen<'_>, limits: &Limits, c: &mut Counted) {
        let Some(ids) = s.ids else { return };
        let callee = Callee {
            start_unix_nanos: s.start_unix_nanos,
            is_error: s.record.is_error,
            duration_nanos: s.record.duration_nanos,
        };
        let mut found = std::mem::take(&mut self.found);
        self.calls
            .see(seq, ids, s.record.service, callee, &mut found);
        for call in found.drain(..) {
            let start = call.callee.start_unix_nanos;
            if self.add(seq, start, Item::Call(&call.record()), limits) {
                c.calls += 1;
            }
        }
        self.found = found;
    }

    /// Counts `item` of record `seq` at time `start` in every tier an
    /// earlier run did not count it in; false when that is none.
    fn add(&mut self, seq: u64, start: u64, item: Item<'_>, limits: &Limits) -> bool {
        let skips = |k: &Key| self.skip.get(k).is_some_and(|t| seq < *t);
        if self.skip.is_empty() || !keys(start).any(|k| skips(&k)) {
            self.add_fresh(seq, start, item, limits);
            return true;
        }
        // Replayed, and in an earlier run's part for some tiers.
        let wanted: Vec<Key> = keys(start).filter(|k| !skips(k)).collect();
        for key in &wanted {
            self.add_one_tier(*key, seq, item, limits);
        }
        !wanted.is_empty()
    }

    /// A span into the delta of its finest-tier bucket.
    fn add_fresh(&mut self, seq: u64, start: u64, item: Item<'_>, limits: &Limits) {
        if let Some(delta) = self.delta_at(start, seq) {
            item.add_to(delta, limits);
        }
    }

    /// A span into one tier's bucket only (replay, where an earlier run
    /// counted it in the others).
    fn add_one_tier(&mut self, key: Key, seq: u64, item: Item<'_>, limits: &Limits) {
        if let Some(mut bucket) = new_bucket(key) {
            item.add_to(&mut bucket, limits);
            self.fold(key, &bucket, seq);
        }
    }

    /// Adds `part` (spans of a bucket inside `key`'s) to the bucket `key`,
    /// or to what waits for it when it was let go.
    fn fold(&mut self, key: Key, part: &Bucket, min_seq: u64) {
        if self.evicted.contains(&key) {
            let make = |bucket| Delta { bucket, min_seq };
            if let Some(waiting) = slot(&mut self.waiting, key, make) {
                waiting.min_seq = waiting.min_seq.min(min_seq);
                merge_into(&mut waiting.bucket, part);
            }
            return;
        }
        let make = |bucket| Open {
            bucket,
            dirty: true,
        };
        if let Some(open) = slot(&mut self.open, key, make) {
            merge_into(&mut open.bucket, part);
            open.dirty = true;
        }
    }

    fn take_dirty(&mut self, owner: &str, through: u64) -> Vec<RollupPart> {
        let mut parts = Vec::new();
        for (&(width, start), open) in self.open.iter_mut().filter(|(_, o)| o.dirty) {
            let mut bytes = Vec::new();
            open.bucket.encode(&mut bytes);
            open.dirty = false;
            parts.push(RollupPart {
                width_nanos: width,
                start_unix_nanos: start,
                owner: owner.to_owned(),
                through,
                bytes,
            });
        }
        parts
    }

    fn mark_dirty(&mut self, parts: &[RollupPart]) {
        for p in parts {
            if let Some(open) = self.open.get_mut(&(p.width_nanos, p.start_unix_nanos)) {
                open.dirty = true;
            }
        }
    }

    /// Lets go of the clean buckets that ended before `horizon`.
    fn evict(&mut self, horizon: u64) {
        let evicted = &mut self.evicted;
        self.open.retain(|&(w, s), o| {
            let keep = o.dirty || s.saturating_add(w) >= horizon;
            if !keep {
                evicted.insert((w, s));
            }
            keep
        });
    }
}

/// The value of `key` in `map`, made from an empty bucket when missing
/// (`None` only for an unaligned key, which [`keys`] never makes).
fn slot<V>(map: &mut BTreeMap<Key, V>, key: Key, make: impl FnOnce(Bucket) -> V) -> Option<&mut V> {
    match map.entry(key) {
        Entry::Occupied(e) => Some(e.into_mut()),
        Entry::Vacant(e) => Some(e.insert(make(new_bucket(key)?))),
    }
}

/// Merges `part` into `into`; both come from aligned keys, `part`
/// inside `into`, so this does not fail.
fn merge_into(into: &mut Bucket, part: &Bucket) {
    if let Err(e) = into.merge(part) {
        tracing::error!(error = %e, "roll-up bucket merge");
    }
}

fn span_record(span: &Span) -> SpanRecord<'_> {
    SpanRecord {
        service: &span.service,
        operation: &span.name,
        kind: span.kind,
        is_error: filter::is_error(span),
        duration_nanos: filter::duration(span),
    }
}

fn ids(span: &Span) -> Option<Ids> {
    Ids::of(&span.trace_id, &span.span_id, &span.parent_span_id)
}

/// The bucket of each tier holding time `t`.
fn keys(t: u64) -> impl Iterator<Item = Key> {
    TIER_WIDTHS_NANOS
        .into_iter()
        .map(move |w| (w, align_down(t, w)))
}

/// An empty bucket (`None` only for an unaligned key, which [`keys`]
/// never makes).
fn new_bucket((width, start): Key) -> Option<Bucket> {
    Bucket::new(start, width).ok()
}

#[cfg(test)]
mod tests;
