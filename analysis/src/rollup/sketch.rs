//! A DDSketch of durations in nanoseconds: relative-accuracy quantiles,
//! exact merge, bins in pages, a compact encoding. See the module docs of
//! [`super`] for the guarantee and the format.

use super::RollupError;
use super::codec::{Reader, put_u64, put_u128};

/// Relative accuracy α: a quantile is within α of the true value at its
/// rank (plus the half nanosecond of rounding to whole nanoseconds).
pub const RELATIVE_ACCURACY: f64 = 0.01;

/// At most this many non-empty bins; beyond, the lowest bins are folded
/// into one (only the lowest quantiles lose accuracy).
pub const MAX_BINS: usize = 2048;

/// γ = (1 + α) / (1 − α): each bin's upper bound is γ times the previous.
/// A hair (10⁻¹²) narrower than that, so the float rounding of the table
/// can never widen a bin past the bound.
const GAMMA: f64 = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY) * (1.0 - 1e-12);

/// 2^64 as a float: the first power of γ past it closes the last bin.
const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;

/// Bins needed to cover 1..=u64::MAX.
const NUM_BINS: usize = bin_count();

/// `BOUNDS[i]` is the largest value in bin `i`: ⌊γ^i⌋ with γ^i computed by
/// repeated IEEE multiplication at compile time, so identical on every
/// platform (bin `i` holds the integers in `(BOUNDS[i-1], BOUNDS[i]]`;
/// bins whose range holds no integer stay empty). The last is `u64::MAX`.
static BOUNDS: [u64; NUM_BINS] = bounds();

const fn bin_count() -> usize {
    let mut p = 1.0;
    let mut n = 1;
    while p < TWO_POW_64 {
        p *= GAMMA;
        n += 1;
    }
    n
}

const fn bounds() -> [u64; NUM_BINS] {
    let mut out = [0u64; NUM_BINS];
    let mut p = 1.0;
    let mut i = 0;
    while i < NUM_BINS {
        // `as` saturates: powers past 2^64 give u64::MAX.
        out[i] = p as u64;
        p *= GAMMA;
        i += 1;
    }
    out[NUM_BINS - 1] = u64::MAX;
    out
}

/// Bins per doubling: 1 / log2(γ).
const BINS_PER_OCTAVE: f64 = 34.656_203_753_620_87;

/// log2(1 + t) for t in [0, 1), within 3·10⁻⁵ (a least-squares fit): a
/// thousandth of a bin, enough for a guess the table then checks.
fn log2_1p(t: f64) -> f64 {
    const C: [f64; 5] = [
        1.441_825_123_619_364_7,
        -0.708_674_935_187_736_4,
        0.415_397_766_842_492_3,
        -0.194_390_433_053_699_96,
        0.045_870_751_700_650_8,
    ];
    t * (C[0] + t * (C[1] + t * (C[2] + t * (C[3] + t * C[4]))))
}

/// The bin of a value ≥ 1: the first whose upper bound is ≥ it. A
/// logarithm from the float's exponent and a polynomial of its mantissa
/// guesses (no libm call); the table decides, so the answer is exact and
/// the same everywhere.
fn bin_of(v: u64) -> usize {
    let bits = (v as f64).to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as f64 - 1023.0;
    let mantissa = f64::from_bits((bits & ((1 << 52) - 1)) | (1023 << 52)) - 1.0;
    let x = (exponent + log2_1p(mantissa)) * BINS_PER_OCTAVE;
    // The ceiling of x ≥ 0, without a libm call.
    let floor = x.max(0.0) as usize;
    let guess = floor + usize::from((floor as f64) < x);
    let mut i = guess.min(NUM_BINS - 1);
    // The last bound is u64::MAX, so this stops inside the table.
    while BOUNDS[i] < v {
        i += 1;
    }
    while i > 0 && BOUNDS[i - 1] >= v {
        i -= 1;
    }
    i
}

/// The smallest and largest integers in bin `i`.
fn bin_range(i: usize) -> (u64, u64) {
    let lo = if i == 0 { 1 } else { BOUNDS[i - 1] + 1 };
    (lo, BOUNDS[i])
}

/// The value reported for bin `i`: 2·lo·hi/(lo+hi) rounded to the nearest
/// integer, in exact integer arithmetic; its relative distance to both
/// ends is (hi−lo)/(hi+lo) < α (before the rounding).
fn bin_value(i: usize) -> u64 {
    let (lo, hi) = bin_range(i);
    if lo >= hi {
        return hi; // one integer (or none: never reported)
    }
    let (l, h) = (u128::from(lo), u128::from(hi));
    // lo + (hi−lo)·lo/(lo+hi), rounded half up; (hi−lo)·lo < 2^123.
    let num = 2 * (h - l) * l + (l + h);
    let offset = num / (2 * (l + h));
    lo + offset as u64
}

/// A non-empty bin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bin {
    index: u16,
    count: u64,
}

/// Bins per page of [`Bins`].
const PAGE: usize = 16;

// Page numbers fit a byte.
const _: () = assert!(NUM_BINS.div_ceil(PAGE) <= 256);

/// Non-empty bins, in pages of [`PAGE`] neighbouring bins: a value's page
/// is found by direct index in a table of the pages from the lowest to the
/// highest used (at most one byte each), and the value counted in it, so
/// an insert reads two places whatever the number of bins. Pages are
/// stored in the order they were made; a page holding no non-empty bin
/// is only ever the result of a collapse, which rebuilds the store.
#[derive(Debug, Clone, Default)]
struct Bins {
    /// The page number of `table[0]`.
    base: usize,
    /// Per page from `base`: its position in `pages` plus one; 0 for none.
    table: Vec<u8>,
    /// Each page's counts, by bin index % [`PAGE`].
    pages: Vec<[u64; PAGE]>,
    /// Non-empty bins.
    len: usize,
}

impl PartialEq for Bins {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for Bins {}

impl Bins {
    fn len(&self) -> usize {
        self.len
    }

    /// The non-empty bins, ascending.
    fn iter(&self) -> impl DoubleEndedIterator<Item = Bin> + '_ {
        let pages = self.table.iter().enumerate().filter(|(_, p)| **p > 0);
        pages.flat_map(move |(k, &p)| {
            let page = self.base + k;
            let counts = self.pages.get(usize::from(p) - 1).unwrap_or(&[0; PAGE]);
            let bins = counts.iter().enumerate().filter(|(_, c)| **c > 0);
            bins.map(move |(i, &count)| Bin {
                index: (page * PAGE + i) as u16,
                count,
            })
        })
    }

    fn first(&self) -> Option<Bin> {
        self.iter().next()
    }

    fn last(&self) -> Option<Bin> {
        self.iter().next_back()
    }

    /// The counts of bin `index`'s page, made when missing.
    fn page(&mut self, index: u16) -> &mut [u64; PAGE] {
        let page = usize::from(index) / PAGE;
        if self.table.is_empty() {
            self.base = page;
        }
        if page < self.base {
            let grow = self.base - page;
            self.table.splice(0..0, std::iter::repeat_n(0, grow));
            self.base = page;
        }
        let k = page - self.base;
        if k >= self.table.len() {
            self.table.resize(k + 1, 0);
        }
        if self.table[k] == 0 {
            self.pages.push([0; PAGE]);
            // At most NUM_BINS / PAGE < 256 pages.
            self.table[k] = self.pages.len() as u8;
        }
        let p = usize::from(self.table[k]) - 1;
        &mut self.pages[p]
    }

    /// Adds `n` ≥ 1 to bin `index`, making it when missing; true when made.
    fn add(&mut self, index: u16, n: u64) -> bool {
        let slot = &mut self.page(index)[usize::from(index) % PAGE];
        let made = *slot == 0;
        *slot = slot.saturating_add(n);
        self.len += usize::from(made);
        made
    }

    /// Adds every bin of `other`.
    fn add_all(&mut self, other: &Bins) {
        for bin in other.iter() {
            self.add(bin.index, bin.count);
        }
    }

    /// Folds the lowest bins into the lowest kept one while there are more
    /// than `max`. The result depends only on the multiset of values (the
    /// top `max` indexes are kept, everything below lands in the lowest of
    /// them), which keeps merge exact.
    fn collapse(&mut self, max: usize) {
        let Some(extra) = self.len.checked_sub(max).filter(|e| *e > 0) else {
            return;
        };
        let mut bins = self.iter();
        let folded = bins
            .by_ref()
            .take(extra)
            .fold(0u64, |acc, b| acc.saturating_add(b.count));
        let mut out = Bins::default();
        for (k, mut bin) in bins.enumerate() {
            if k == 0 {
                bin.count = bin.count.saturating_add(folded);
            }
            out.add(bin.index, bin.count);
        }
        *self = out;
    }
}

/// A mergeable latency sketch (DDSketch, α = [`RELATIVE_ACCURACY`]) over
/// durations in nanoseconds; count, min, max and sum are exact.
///
/// ```
/// use clew_analysis::rollup::Sketch;
///
/// let mut s = Sketch::new();
/// for v in 1..=1000u64 {
///     s.insert(v * 1_000);
/// }
/// let p99 = s.quantile(0.99).unwrap_or(0);
/// assert!(p99.abs_diff(990_000) <= 9_900);
/// assert_eq!((s.min(), s.max()), (Some(1_000), Some(1_000_000)));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sketch {
    count: u64,
    zeros: u64,
    min: u64,
    max: u64,
    sum: u128,
    /// Sorted by index, no zero counts, at most [`MAX_BINS`].
    bins: Bins,
}

impl Sketch {
    /// An empty sketch.
    pub fn new() -> Self {
        Sketch::default()
    }

    /// Adds one value.
    pub fn insert(&mut self, v: u64) {
        self.insert_n(v, 1);
    }

    /// Adds `n` copies of a value (nothing when `n` is 0). Counts saturate
    /// at `u64::MAX`.
    pub fn insert_n(&mut self, v: u64, n: u64) {
        if n == 0 {
            return;
        }
        self.note_extremes(v);
        self.count = self.count.saturating_add(n);
        self.sum = self.sum.saturating_add(u128::from(v) * u128::from(n));
        if v == 0 {
            self.zeros = self.zeros.saturating_add(n);
            return;
        }
        if self.bins.add(bin_of(v) as u16, n) {
            self.bins.collapse(MAX_BINS);
        }
    }

    fn note_extremes(&mut self, v: u64) {
        if self.count == 0 {
            (self.min, self.max) = (v, v);
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
    }

    /// Adds every value of `other`. Exact: the result equals the sketch of
    /// all the values inserted into either, whatever the order.
    pub fn merge(&mut self, other: &Sketch) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = other.clone();
            return;
        }
        self.note_extremes(other.min);
        self.note_extremes(other.max);
        self.count = self.count.saturating_add(other.count);
        self.zeros = self.zeros.saturating_add(other.zeros);
        self.sum = self.sum.saturating_add(other.sum);
        self.bins.add_all(&other.bins);
        self.bins.collapse(MAX_BINS);
    }

    /// Values inserted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The smallest value (exact); `None` when empty.
    pub fn min(&self) -> Option<u64> {
        (self.count > 0).then_some(self.min)
    }

    /// The largest value (exact); `None` when empty.
    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max)
    }

    /// The sum of the values (exact; saturates at `u128::MAX`, which takes
    /// more than 2^64 values).
    pub fn sum(&self) -> u128 {
        self.sum
    }

    /// The mean (exact up to `f64` rounding); `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    /// Non-empty bins (without the zero bin): the size of the sketch.
    pub fn bin_count(&self) -> usize {
        self.bins.len()
    }

    /// The `q` quantile, `0 ≤ q ≤ 1`: an estimate of the value of rank
    /// r = max(1, ⌈q·n⌉) among the n sorted values (nearest rank: q = 0 is
    /// the minimum, q = 1 the maximum, both exact). `None` when empty or
    /// when `q` is outside [0, 1] or NaN. See the module docs for the bound.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        if rank == 1 {
            return Some(self.min);
        }
        if rank == self.count {
            return Some(self.max);
        }
        if rank <= self.zeros {
            return Some(0);
        }
        let mut seen = self.zeros;
        for bin in self.bins.iter() {
            seen = seen.saturating_add(bin.count);
            if seen >= rank {
                return Some(bin_value(usize::from(bin.index)).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    /// Every value as the sketch reports it, ascending: the zero bin, then
    /// each bin's value clamped to the exact [min, max], with its count.
    fn reported(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let zeros = (self.zeros > 0).then_some((0, self.zeros));
        zeros.into_iter().chain(self.bins.iter().map(|b| {
            let v = bin_value(usize::from(b.index)).clamp(self.min, self.max);
            (v, b.count)
        }))
    }

    /// The median absolute deviation around `center`: an estimate of the
    /// value of rank r = max(1, ⌈n/2⌉) among the n deviations |v − center|
    /// sorted ascending (nearest rank, as [`Sketch::quantile`]). `None`
    /// when empty.
    ///
    /// **Bound**: each value is read as its bin's value, within α·v of it,
    /// so each deviation moves by at most α·v. The deviations at or below
    /// the exact one, D, come from values v ≤ center + D, which bounds the
    /// error: |estimate − D| ≤ α·(center + D) + ½ ns. With the sketch's
    /// own median as `center` (itself within α·m of the exact median m),
    /// add α·m: the estimate is within α·(2m + D) + 1 ns of the exact
    /// MAD around the exact median. Values folded into the lowest bin
    /// ([`MAX_BINS`]) are overstated and carry no bound.
    pub fn median_abs_deviation(&self, center: u64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = self.count.div_ceil(2).max(1);
        let values: Vec<(u64, u64)> = self.reported().collect();
        // Walk outwards from `center`: the nearer of the next value below
        // and the next above comes next in order of deviation.
        let split = values.partition_point(|&(v, _)| v <= center);
        let (mut below, mut above) = (values[..split].iter().rev(), values[split..].iter());
        let (mut lo, mut hi) = (below.next(), above.next());
        let mut seen = 0u64;
        loop {
            let (deviation, count) = match (lo, hi) {
                (Some(&(l, c)), Some(&(h, _))) if center - l <= h - center => {
                    lo = below.next();
                    (center - l, c)
                }
                (_, Some(&(h, c))) => {
                    hi = above.next();
                    (h - center, c)
                }
                (Some(&(l, c)), None) => {
                    lo = below.next();
                    (center - l, c)
                }
                (None, None) => return None,
            };
            seen = seen.saturating_add(count);
            if seen >= rank {
                return Some(deviation);
            }
        }
    }

    /// The mean absolute deviation around `center`, as an `f64` of
    /// nanoseconds: within α times the mean value (each |v − center| is
    /// read within α·v). `None` when empty.
    pub fn mean_abs_deviation(&self, center: u64) -> Option<f64> {
        (self.count > 0).then(|| {
            let total = self
                .reported()
                .map(|(v, c)| v.abs_diff(center) as f64 * c as f64)
                .sum::<f64>();
            total / self.count as f64
        })
    }

    /// How many values exceed `t`, each value read as its bin's value.
    ///
    /// **Bound**: bins are ordered and do not overlap, so every value
    /// outside the bin that holds `t` is counted exactly; only the values
    /// of that one bin (within a factor γ = (1 + α)/(1 − α) ≈ 1.02 of `t`)
    /// may be counted on the wrong side. Exactly 0 when `t` ≥ the maximum,
    /// and the whole count when `t` < the minimum.
    pub fn count_above(&self, t: u64) -> u64 {
        self.reported()
            .filter(|&(v, _)| v > t)
            .fold(0u64, |acc, (_, c)| acc.saturating_add(c))
    }

    /// A lower bound for the value of rank `rank` (1-based, ascending;
    /// clamped to 1..=n): the smallest integer of the bin holding it (the
    /// exact minimum for the lowest bin, which may hold folded values).
    /// Every value of that rank or above is at least this, and it is
    /// within a factor γ ≈ 1.02 of the value. `None` when empty.
    pub fn rank_floor(&self, rank: u64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = rank.clamp(1, self.count);
        let mut seen = self.zeros;
        if rank <= seen {
            return Some(0);
        }
        for (k, bin) in self.bins.iter().enumerate() {
            seen = seen.saturating_add(bin.count);
            if seen >= rank {
                let lo = bin_range(usize::from(bin.index)).0;
                return Some(if k == 0 { self.min } else { lo.max(self.min) });
            }
        }
        Some(self.min)
    }
}

/// First byte of a standalone sketch blob.
const TAG: u8 = b'S';
/// The sketch format version this build writes and reads.
const VERSION: u8 = 1;

impl Sketch {
    /// Appends the sketch as a standalone blob: tag `S`, version 1, then
    /// the body described in the module docs.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[TAG, VERSION]);
        self.encode_body(out);
    }

    /// Reads a blob written by [`Sketch::encode`]. Any input is safe: a
    /// malformed one is an error naming the field and offset.
    pub fn decode(bytes: &[u8]) -> Result<Sketch, RollupError> {
        let mut r = Reader::new(bytes);
        read_header(&mut r, TAG, "sketch", VERSION)?;
        let sketch = Sketch::decode_body(&mut r)?;
        r.finish()?;
        Ok(sketch)
    }

    /// The body: `count`; when non-zero, `zeros`, `min`, `max − min`,
    /// `sum` (up to 128 bits), the number of bins, then per bin the index
    /// (the first absolute, the others as the gap from the previous) and
    /// the count. All varints.
    pub(crate) fn encode_body(&self, out: &mut Vec<u8>) {
        put_u64(out, self.count);
        if self.count == 0 {
            return;
        }
        put_u64(out, self.zeros);
        put_u64(out, self.min);
        put_u64(out, self.max - self.min);
        put_u128(out, self.sum);
        put_u64(out, self.bins.len() as u64);
        let mut prev = 0;
        for bin in self.bins.iter() {
            put_u64(out, u64::from(bin.index - prev));
            put_u64(out, bin.count);
            prev = bin.index;
        }
    }

    /// Reads a body and checks every invariant the methods rely on.
    pub(crate) fn decode_body(r: &mut Reader<'_>) -> Result<Sketch, RollupError> {
        let count = r.u64("sketch.count")?;
        if count == 0 {
            return Ok(Sketch::default());
        }
        let zeros = r.u64("sketch.zeros")?;
        let min = r.u64("sketch.min")?;
        let max = min
            .checked_add(r.u64("sketch.max")?)
            .ok_or_else(|| r.invalid("sketch.max", "min + (max − min) overflows"))?;
        let sum = r.u128("sketch.sum")?;
        let bins = read_bins(r)?;
        let sketch = Sketch {
            count,
            zeros,
            min,
            max,
            sum,
            bins,
        };
        sketch.check(r)?;
        Ok(sketch)
    }

    /// The invariants a decoded sketch must hold.
    fn check(&self, r: &Reader<'_>) -> Result<(), RollupError> {
        let total = self
            .bins
            .iter()
            .fold(self.zeros, |acc, b| acc.saturating_add(b.count));
        if total != self.count {
            return Err(r.invalid("sketch.count", "differs from the sum of the bins"));
        }
        if (self.zeros > 0) != (self.min == 0) {
            return Err(r.invalid("sketch.min", "zero exactly when the zero bin is used"));
        }
        let top = self.bins.last().map(|b| usize::from(b.index));
        if top != (self.max > 0).then(|| bin_of(self.max)) {
            return Err(r.invalid("sketch.max", "not in the highest bin"));
        }
        let bottom = self.bins.first().map(|b| usize::from(b.index));
        let folded = self.bins.len() == MAX_BINS;
        if self.min > 0
            && bottom.is_some_and(|b| bin_of(self.min) > b || (!folded && bin_of(self.min) < b))
        {
            return Err(r.invalid("sketch.min", "not in the lowest bin"));
        }
        let lo = u128::from(self.min) * u128::from(self.count);
        // Past a saturated count the sum may exceed max × count.
        let hi = (self.count < u64::MAX).then(|| u128::from(self.max) * u128::from(self.count));
        if self.sum < lo || hi.is_some_and(|hi| self.sum > hi) {
            return Err(r.invalid("sketch.sum", "outside count × [min, max]"));
        }
        Ok(())
    }
}

/// The bins of a body: strictly increasing indexes below the table's end,
/// non-zero counts, at most [`MAX_BINS`].
fn read_bins(r: &mut Reader<'_>) -> Result<Bins, RollupError> {
    let n = r.len("sketch.bins")?;
    if n > MAX_BINS {
        return Err(r.invalid("sketch.bins", "more bins than MAX_BINS"));
    }
    let mut bins = Bins::default();
    let mut prev: Option<u64> = None;
    for _ in 0..n {
        let gap = r.u64("sketch.bin.index")?;
        let index = match prev {
            None => Some(gap),
            Some(p) if gap > 0 => p.checked_add(gap),
            Some(_) => None,
        }
        .filter(|&i| i < NUM_BINS as u64)
        .ok_or_else(|| r.invalid("sketch.bin.index", "not increasing, or past the last bin"))?;
        let (lo, hi) = bin_range(index as usize);
        if lo > hi {
            return Err(r.invalid("sketch.bin.index", "a bin no integer maps to"));
        }
        let count = r.u64("sketch.bin.count")?;
        if count == 0 {
            return Err(r.invalid("sketch.bin.count", "an empty bin"));
        }
        bins.add(index as u16, count);
        prev = Some(index);
    }
    Ok(bins)
}

/// Checks a blob's tag and version bytes.
pub(crate) fn read_header(
    r: &mut Reader<'_>,
    tag: u8,
    what: &'static str,
    version: u8,
) -> Result<(), RollupError> {
    let found = r.byte("tag").map_err(|_| RollupError::BadTag {
        expected: what,
        found: 0,
    })?;
    if found != tag {
        return Err(RollupError::BadTag {
            expected: what,
            found,
        });
    }
    match r.byte("version")? {
        v if v == version => Ok(()),
        found => Err(RollupError::UnsupportedVersion {
            what,
            found,
            supported: version,
        }),
    }
}

#[cfg(test)]
pub(crate) mod table {
    //! The bin table, for the exhaustive accuracy test.

    /// Number of bins.
    pub const NUM_BINS: usize = super::NUM_BINS;

    /// (lo, hi, reported value) of bin `i`.
    pub fn bin(i: usize) -> (u64, u64, u64) {
        let (lo, hi) = super::bin_range(i);
        (lo, hi, super::bin_value(i))
    }

    /// The bin of a value ≥ 1.
    pub fn bin_of(v: u64) -> usize {
        super::bin_of(v)
    }

    /// The bins per doubling `bin_of` guesses with, and 1 / log2(γ).
    pub fn bins_per_octave() -> (f64, f64) {
        (super::BINS_PER_OCTAVE, 1.0 / super::GAMMA.log2())
    }

    /// The polynomial `bin_of` guesses with, against `log2(1 + t)`.
    pub fn log2_1p(t: f64) -> (f64, f64) {
        (super::log2_1p(t), (1.0 + t).log2())
    }
}
