//! A bucket filled with many spans: each key's durations wait in a short
//! buffer and go into its sketch a buffer at a time, so a sketch's bins
//! come into the cache once for many spans rather than once a span (a
//! collector's ingest passes through far more memory between two spans
//! of one key than the caches hold).

use super::RollupError;
use super::bucket::{Bucket, CallRecord, Limits, SpanRecord};

/// Durations a key holds before they go into its sketch.
pub const BUFFERED: usize = 256;

/// A [`Bucket`] being filled; [`finish`](Self::finish) gives the bucket
/// with every span in it.
#[derive(Debug, Clone)]
pub struct BucketBuilder {
    bucket: Bucket,
    /// Per RED key (by its place in the bucket): durations not yet in its
    /// sketch. Errors are counted at once.
    pending: Vec<Vec<u64>>,
}

impl BucketBuilder {
    /// An empty bucket, as [`Bucket::new`].
    pub fn new(start_unix_nanos: u64, width_nanos: u64) -> Result<Self, RollupError> {
        Ok(BucketBuilder::from(Bucket::new(
            start_unix_nanos,
            width_nanos,
        )?))
    }

    /// Counts a span, as [`Bucket::add_span`].
    pub fn add_span(&mut self, span: &SpanRecord<'_>, limits: &Limits) {
        let at = self.bucket.red_place(span, limits);
        let Some(stats) = self.bucket.red.at_mut(at) else {
            return;
        };
        stats.record_error(span.is_error);
        let at = at as usize;
        if self.pending.len() <= at {
            self.pending.resize_with(at + 1, Vec::new);
        }
        let pending = &mut self.pending[at];
        pending.push(span.duration_nanos);
        if pending.len() >= BUFFERED {
            stats.record_durations(pending.drain(..));
        }
    }

    /// Counts a call, as [`Bucket::add_call`] (calls are fewer: at once).
    pub fn add_call(&mut self, call: &CallRecord<'_>, limits: &Limits) {
        self.bucket.add_call(call, limits);
    }

    /// Adds `other`, as [`Bucket::merge`].
    pub fn merge(&mut self, other: &Bucket) -> Result<(), RollupError> {
        self.bucket.merge(other)
    }

    /// The bucket, every buffered duration in its sketch.
    pub fn finish(&mut self) -> &Bucket {
        for (at, pending) in self.pending.iter_mut().enumerate() {
            if pending.is_empty() {
                continue;
            }
            if let Some(stats) = self.bucket.red.at_mut(at as u32) {
                stats.record_durations(pending.drain(..));
            }
        }
        &self.bucket
    }
}

impl From<Bucket> for BucketBuilder {
    fn from(bucket: Bucket) -> Self {
        BucketBuilder {
            bucket,
            pending: Vec::new(),
        }
    }
}
