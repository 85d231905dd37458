//! RED and dependency roll-ups: counts and latency sketches per time
//! bucket, mergeable across collectors and into coarser buckets, so RED
//! and dependency answers over any window come from every span rather
//! than from a sample of traces.
//!
//! | part | what |
//! |---|---|
//! | [`Sketch`] | a DDSketch of durations (ns): quantiles within 1 % relative error, exact count/min/max/sum, exact merge, compact encoding |
//! | [`Bucket`] | one time bucket: [`Stats`] per [`RedKey`] (service, operation, kind) and per [`EdgeKey`] (parent → child service), with a cardinality guard ([`Limits`]) |
//! | [`resolution`], [`coarsen`] | which tier (10 s, 1 min, 10 min, 1 h) answers a window; coarse buckets merged from fine ones |
//! | [`red_summary`], [`edge_summary`], [`red_series`] | the answers: rate, error rate, p50/p90/p95/p99 per group over a window, and per point for charts |
//!
//! Pure code: no I/O and no clock. Which spans are counted (every span
//! before sampling; a call is a span whose parent span is of another
//! service) is the caller's business; the buckets count what they are
//! given.
//!
//! ```
//! use clew_analysis::rollup::{Bucket, GroupBy, Limits, SpanRecord, red_summary, resolution};
//!
//! let mut b = Bucket::new(1_700_000_000_000_000_000, 10_000_000_000)?;
//! for i in 0..100u64 {
//!     let span = SpanRecord {
//!         service: "api",
//!         operation: "GET /",
//!         kind: 2,
//!         is_error: i % 10 == 0,
//!         duration_nanos: (i + 1) * 1_000_000,
//!     };
//!     b.add_span(&span, &Limits::default());
//! }
//! let mut blob = Vec::new();
//! b.encode(&mut blob);
//! let b = Bucket::decode(&blob)?;
//! let res = resolution(b.start_unix_nanos(), b.end_unix_nanos(), 100);
//! let red = red_summary(&[b], &res, GroupBy::Operation, |_| true);
//! assert_eq!((red[0].requests, red[0].errors), (100, 10));
//! assert!((red[0].rate - 10.0).abs() < 1e-9);
//! assert!((red[0].latency.p50_us - 50_000.0).abs() <= 500.0);
//! # Ok::<(), clew_analysis::rollup::RollupError>(())
//! ```
//!
//! # The sketch and its guarantee
//!
//! Written here rather than taken from a crate: `sketches-ddsketch` keeps a
//! dense store of `f64` values and has no compact encoding (serde only),
//! and the roll-ups want integer nanoseconds, sparse bins, a byte-stable
//! encoding (to compare and store blobs) and a bin mapping that is the same
//! on every platform. It is about 300 lines.
//!
//! Values are `u64` nanoseconds. Zero has a bin of its own. A value v ≥ 1
//! goes to bin i, holding the integers in (⌊γ^(i−1)⌋, ⌊γ^i⌋] with
//! γ = (1 + α)/(1 − α), α = [`RELATIVE_ACCURACY`] = 0.01; the bounds are
//! a table computed at compile time by repeated IEEE multiplication (so the
//! same bits everywhere; a logarithm from the float's exponent and a
//! polynomial only guesses where to start looking). 2,219
//! bins cover 1 ns to `u64::MAX`. A bin reports the integer nearest
//! 2·lo·hi/(lo + hi), lo and hi its smallest and largest integers.
//!
//! **Rank**: [`Sketch::quantile`]`(q)` estimates the value of rank
//! r = max(1, ⌈q·n⌉) (1-based) among the n values sorted ascending — the
//! nearest-rank definition clew's exact percentiles use. q = 0 and q = 1
//! (and any q whose rank is 1 or n) return the exact minimum and maximum.
//!
//! **Guarantee**: if v is the true value of that rank, the answer q̂
//! satisfies |q̂ − v| ≤ α·v + ½ ns: within 1 % of v, plus at most half a
//! nanosecond from reporting whole nanoseconds (which only shows below
//! 50 ns, where a bin holds a single integer and the answer is exact
//! anyway). Answers are clamped to the exact [min, max], which only brings
//! them closer. A test checks the bound at both ends of every bin, which
//! covers every `u64`.
//!
//! **Size and collapsing**: in memory, bins are kept in pages of 16
//! neighbouring bins, found by direct index in a table of the pages in
//! use, so an insert reads two places whatever the number of bins;
//! encoded, only the non-empty bins (index, count). At most
//! [`MAX_BINS`] = 2,048 non-empty bins. Past that the lowest bins are folded into the
//! lowest kept one (DDSketch's "collapsing lowest"): quantiles whose rank
//! falls in a folded bin are overstated (reported as that bin's value, at
//! least the exact minimum), while every quantile above the folded bins
//! keeps the guarantee. The result depends only on the values, not their
//! order, so merge stays exact. With α = 1 % it takes values spread over
//! more than 17 decades (1 ns to years) to reach 2,048 bins: latencies
//! never do.
//!
//! **Merge** adds bin counts: merging sketches gives exactly the sketch of
//! all their values (the same bytes when encoded).
//!
//! # Encoding
//!
//! Varints are unsigned LEB128 (7 bits a byte, low first), in their
//! shortest form; signed values are zigzag. Every blob starts with a tag byte and a version byte.
//!
//! - **Sketch** (`S`, 1): `count`; if non-zero: `zeros`, `min`,
//!   `max − min`, `sum` (≤ 128 bits), `bins`, then per bin the index gap
//!   from the previous bin (the first index absolute) and the count.
//! - **Bucket** (`R`, 1): `start` (Unix ns), `width` (ns),
//!   `foldedSpans`, `foldedCalls`; the string table (`n`, then per string
//!   its byte length and UTF-8 bytes, sorted, each once); the RED entries
//!   (`n`, then per entry service and operation as table indexes, kind
//!   zigzag, errors, the sketch body without tag or version; sorted by
//!   (service, operation, kind)); the edges (`n`, then parent and child
//!   indexes, errors, sketch body; sorted). Requests are the sketch's
//!   count.
//!
//! The same content always gives the same bytes. Decoding accepts only
//! what encoding produces: sorted unique strings each used by a key, sorted
//! unique keys, folded counts within their overflow keys', increasing bin
//! indexes of bins that hold integers, counts that add up, min and max in
//! the lowest and highest bins, errors ≤ requests, no trailing bytes; any
//! other input is a [`RollupError`] naming the field and offset, never a
//! panic, and nothing is allocated beyond the input's length.
//!
//! # Cardinality
//!
//! [`Bucket::add_span`] takes up to [`Limits::max_red_keys`] keys. Past
//! it, a span of a new key is counted under its service's overflow key
//! `(service, "__overflow__", 0)` ([`OVERFLOW`]), so per-service totals stay
//! exact; once the bucket holds twice the limit, under
//! `("__overflow__", "__overflow__", 0)`. Edges likewise with
//! `(parent, "__overflow__")`. Spans and calls so folded are counted
//! ([`Bucket::folded_spans`], [`Bucket::folded_calls`]). Merging applies no
//! limit: it keeps every key it is given.

mod bucket;
mod builder;
mod codec;
mod error;
mod keyed;
mod query;
mod sketch;
#[cfg(test)]
mod tests;
mod tiers;

pub use bucket::{Bucket, CallRecord, EdgeKey, Limits, OVERFLOW, RedKey, SpanRecord, Stats};
pub use builder::BucketBuilder;
pub use error::RollupError;
pub use query::{
    EdgeSummary, GroupBy, Latency, RedSeries, RedSummary, SeriesPoint, edge_summary, red_series,
    red_summary,
};
pub use sketch::{MAX_BINS, RELATIVE_ACCURACY, Sketch};
pub use tiers::{Resolution, TIER_WIDTHS_NANOS, align_down, coarsen, resolution};
