//! Resolution tiers: which bucket width answers a window, and coarse
//! buckets built by merging fine ones.

use std::collections::BTreeMap;

use super::{Bucket, RollupError};

const SECOND: u64 = 1_000_000_000;

/// Bucket widths kept, finest first: 10 s, 1 min, 10 min, 1 h. Each
/// divides the next, so coarser buckets are merges of finer ones.
pub const TIER_WIDTHS_NANOS: [u64; 4] = [10 * SECOND, 60 * SECOND, 600 * SECOND, 3_600 * SECOND];

/// `t` rounded down to a multiple of `width` (`t` when `width` is 0).
pub fn align_down(t: u64, width: u64) -> u64 {
    t.checked_rem(width).map_or(t, |r| t - r)
}

/// `t` rounded up to a multiple of `width`, saturating at the last
/// multiple that fits in a `u64`.
fn align_up(t: u64, width: u64) -> u64 {
    let down = align_down(t, width);
    if down == t {
        return t;
    }
    down.checked_add(width).unwrap_or(down)
}

/// How to answer a window: read buckets of `tier_nanos`, draw points of
/// `step_nanos` (the tier's width, or past the coarsest tier a multiple of
/// it), over `[from_unix_nanos, to_unix_nanos)`: the window widened to
/// whole steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    /// The width of the stored buckets to read.
    pub tier_nanos: u64,
    /// The width of one point (a multiple of `tier_nanos`).
    pub step_nanos: u64,
    /// The first point's start (a multiple of `step_nanos`).
    pub from_unix_nanos: u64,
    /// The end of the last point (exclusive).
    pub to_unix_nanos: u64,
}

impl Resolution {
    /// Number of points.
    pub fn points(&self) -> usize {
        ((self.to_unix_nanos - self.from_unix_nanos) / self.step_nanos.max(1)) as usize
    }

    /// The start of each point, oldest first.
    pub fn point_starts(&self) -> impl Iterator<Item = u64> + use<> {
        (self.from_unix_nanos..self.to_unix_nanos).step_by(self.step_nanos.max(1) as usize)
    }

    /// The start of each stored bucket to read, oldest first.
    pub fn bucket_starts(&self) -> impl Iterator<Item = u64> + use<> {
        (self.from_unix_nanos..self.to_unix_nanos).step_by(self.tier_nanos.max(1) as usize)
    }

    /// The covered range in seconds: what rates are per.
    pub fn seconds(&self) -> f64 {
        (self.to_unix_nanos - self.from_unix_nanos) as f64 / 1e9
    }

    /// The point a bucket starting at `t` falls in, if inside.
    pub fn point_of(&self, t: u64) -> Option<usize> {
        (self.from_unix_nanos..self.to_unix_nanos)
            .contains(&t)
            .then(|| ((t - self.from_unix_nanos) / self.step_nanos.max(1)) as usize)
    }
}

/// The finest tier that answers `[start, end)` in at most `max_points`
/// points (at least 1). A window too long even for hourly points is read
/// from the hourly tier with a step of as many hours as it takes. An empty
/// window (`end ≤ start`) gives zero points at the finest tier.
pub fn resolution(start_unix_nanos: u64, end_unix_nanos: u64, max_points: usize) -> Resolution {
    let max_points = max_points.max(1) as u64;
    let fit = |step: u64| {
        let from = align_down(start_unix_nanos, step);
        let to = align_up(end_unix_nanos.max(start_unix_nanos), step).max(from);
        ((to - from) / step <= max_points).then_some((from, to))
    };
    let pick = |tier: u64, step: u64, (from, to): (u64, u64)| Resolution {
        tier_nanos: tier,
        step_nanos: step,
        from_unix_nanos: from,
        to_unix_nanos: to,
    };
    for tier in TIER_WIDTHS_NANOS {
        if let Some(range) = fit(tier) {
            return pick(tier, tier, range);
        }
    }
    let hour = TIER_WIDTHS_NANOS[TIER_WIDTHS_NANOS.len() - 1];
    let hours = end_unix_nanos
        .saturating_sub(start_unix_nanos)
        .div_ceil(hour);
    // Alignment to the step can add a point at each end: try a few more.
    let mut k = hours.div_ceil(max_points).max(1);
    loop {
        let step = k.saturating_mul(hour);
        match fit(step) {
            Some(range) => return pick(hour, step, range),
            None if step == u64::MAX => return pick(hour, step, (0, 0)),
            None => k += 1,
        }
    }
}

/// Merges buckets into aligned buckets of `width`: every bucket lands in
/// the one containing it. Exact: the result equals adding the same spans
/// straight into the coarse buckets (below the cardinality limits). Sorted
/// by start; fails when `width` is not a multiple of a bucket's width.
pub fn coarsen(buckets: &[Bucket], width_nanos: u64) -> Result<Vec<Bucket>, RollupError> {
    let mut out: BTreeMap<u64, Bucket> = BTreeMap::new();
    for b in buckets {
        if width_nanos == 0 || !width_nanos.is_multiple_of(b.width_nanos()) {
            return Err(RollupError::NotContained {
                inner_start: b.start_unix_nanos(),
                inner_width: b.width_nanos(),
                outer_start: align_down(b.start_unix_nanos(), width_nanos),
                outer_width: width_nanos,
            });
        }
        let start = align_down(b.start_unix_nanos(), width_nanos);
        let coarse = match out.entry(start) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(Bucket::new(start, width_nanos)?)
            }
        };
        coarse.merge(b)?;
    }
    Ok(out.into_values().collect())
}
