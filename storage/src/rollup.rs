//! Roll-up parts: what every backend stores of the RED and dependency
//! roll-ups (opaque encoded buckets, one part per bucket and collector).

use std::collections::BTreeMap;

use crate::{Result, StorageError};

/// One collector's roll-up of one time bucket (RED and dependency counts
/// with latency sketches, encoded by `clew_analysis::rollup::Bucket`; the
/// store keeps the bytes as they are).
///
/// A bucket is `(width_nanos, start_unix_nanos)`; each collector writes its
/// own part of it, named by `owner`, and readers merge the parts. `through`
/// is the writer's position in its own log: the part counts exactly its
/// records below it, which is what lets a restarted collector count the
/// rest without counting anything twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupPart {
    /// The bucket's width (10 s, 1 min, ...), in nanoseconds; not 0.
    pub width_nanos: u64,
    /// The bucket's start, Unix nanoseconds.
    pub start_unix_nanos: u64,
    /// The collector whose part it is (its WAL's incarnation); 1 to
    /// [`MAX_ROLLUP_OWNER_LEN`] bytes.
    pub owner: String,
    /// The owner's log position the part covers (opaque to the store).
    pub through: u64,
    /// The encoded bucket.
    pub bytes: Vec<u8>,
}

/// Longest [`RollupPart::owner`], in bytes.
pub const MAX_ROLLUP_OWNER_LEN: usize = 128;

impl RollupPart {
    /// The end of the bucket (exclusive), saturating.
    pub fn end_unix_nanos(&self) -> u64 {
        self.start_unix_nanos.saturating_add(self.width_nanos)
    }

    /// Checks what the stores rely on: a width, an owner of sane length.
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(StorageError::InvalidRollup(why.to_owned()));
        if self.width_nanos == 0 {
            return bad("width_nanos is 0");
        }
        if self.owner.is_empty() || self.owner.len() > MAX_ROLLUP_OWNER_LEN {
            return bad("owner must be 1 to 128 bytes");
        }
        Ok(())
    }
}

/// Checks every part before any is stored: a batch is taken whole or not
/// at all.
pub(crate) fn validate_all(parts: &[RollupPart]) -> Result<()> {
    parts.iter().try_for_each(RollupPart::validate)
}

/// Whether `rollups(width, from, to)` asks for nothing.
pub(crate) fn empty_window(width: u64, from: u64, to: u64) -> bool {
    width == 0 || from >= to
}

/// The big-endian `u64` the stored forms start with.
pub(crate) fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

/// Sorts parts by bucket start, then owner: the order
/// [`Storage::rollups`] answers in.
pub(crate) fn sort_parts(parts: &mut [RollupPart]) {
    parts.sort_by(|a, b| (a.start_unix_nanos, &a.owner).cmp(&(b.start_unix_nanos, &b.owner)));
}

/// A part's place: (width, start, owner).
type PartKey = (u64, u64, String);

/// Roll-up parts of a store only one process opens (memory): key → (through, bytes).
#[derive(Debug, Default)]
pub(crate) struct LocalRollups(parking_lot::Mutex<BTreeMap<PartKey, (u64, Vec<u8>)>>);

impl LocalRollups {
    pub(crate) fn put(&self, parts: &[RollupPart]) -> Result<()> {
        validate_all(parts)?;
        let mut map = self.0.lock();
        for p in parts {
            let key = (p.width_nanos, p.start_unix_nanos, p.owner.clone());
            map.insert(key, (p.through, p.bytes.clone()));
        }
        Ok(())
    }

    pub(crate) fn range(&self, width: u64, from: u64, to: u64) -> Vec<RollupPart> {
        if empty_window(width, from, to) {
            return Vec::new();
        }
        let lo = (width, from, String::new());
        let map = self.0.lock();
        map.range(lo..)
            .take_while(|((w, start, _), _)| *w == width && *start < to)
            .map(|((w, start, owner), (through, bytes))| RollupPart {
                width_nanos: *w,
                start_unix_nanos: *start,
                owner: owner.clone(),
                through: *through,
                bytes: bytes.clone(),
            })
            .collect()
    }

    pub(crate) fn prune(&self, ended_by: u64) -> u64 {
        let mut map = self.0.lock();
        let before = map.len();
        map.retain(|(w, start, _), _| start.saturating_add(*w) > ended_by);
        (before - map.len()) as u64
    }
}
