//! Latency outliers and error-rate spikes over a whole window, from the
//! roll-up buckets (every span counted at ingest) rather than from a
//! sample of traces.
//!
//! - **Latency.** Per (service, operation, span kind), the window's merged
//!   sketch gives the median ([`Sketch::quantile`], within α = 1 % of the
//!   exact one) and the MAD ([`Sketch::median_abs_deviation`] around that
//!   median, within α·(2·median + MAD) + 1 ns of the exact one); when the
//!   MAD is 0 (over half the spans in the median's bin, within about 2 %
//!   of it) the mean absolute deviation stands in, when that is 0 too or
//!   there are fewer than [`AnomalyConfig::min_samples`] spans nothing is
//!   flagged, as in [`super::detect_anomalies`]. A span is an outlier when
//!   its duration exceeds the threshold median + `latency_score`·scale;
//!   the count adds up each point's [`Sketch::count_above`] the
//!   threshold: exact for every span outside the threshold's bin (spans within a factor γ ≈ 1.02 of
//!   the threshold may land on either side). The worst duration is the
//!   sketch's exact maximum. First and last seen are the starts of the
//!   first and last buckets holding an outlier (the tier's precision).
//!   Example spans are not in the roll-ups: the caller finds them in the
//!   trace index with [`LatencyGroup::examples_min_nanos`].
//! - **Error spikes.** Per (service, operation, span kind), a point per
//!   step of the [`Resolution`]: the same binomial z-score against the
//!   rest of the window as [`super::detect_anomalies`], over exact counts.

use std::collections::BTreeMap;

use super::{
    Anomaly, AnomalyConfig, AnomalyGroup, AnomalyKind, Baseline, fmt_dur, groups, kind_name,
};
use crate::rollup::{Bucket, OVERFLOW, RedKey, Resolution, Sketch, Stats};
use crate::{hex, us};

/// Scale of a MAD to a standard deviation (normal data).
const MAD_SCALE: f64 = 1.4826;
/// Scale of a mean absolute deviation to a standard deviation.
const MEAN_DEV_SCALE: f64 = 1.2533;

/// A (service, operation, span kind), borrowed from the buckets.
type Key<'a> = (&'a str, &'a str, i32);

/// The latency outliers of one (service, operation, span kind) over the
/// window, without examples.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyGroup {
    /// The service.
    pub service: String,
    /// The operation.
    pub operation: String,
    /// The span kind (see [`Anomaly::span_kind`]).
    pub span_kind: &'static str,
    /// Every span of the window: samples, median and MAD (µs).
    pub baseline: Baseline,
    /// The standard deviation the score divides by, µs: 1.4826·MAD, or
    /// 1.2533 × the mean absolute deviation when the MAD is 0.
    pub scale_us: f64,
    /// A span is an outlier when its duration exceeds this (ns).
    pub threshold_nanos: u64,
    /// Spans above the threshold (see the module docs for the bound).
    pub count: u64,
    /// The slowest span, ns (exact).
    pub max_nanos: u64,
    /// Start of the first bucket holding an outlier, Unix µs.
    pub first_us: u64,
    /// Start of the last bucket holding an outlier, Unix µs.
    pub last_us: u64,
    /// Every one of the group's worst spans (as many as examples were
    /// asked for) lasts at least this, ns: search the index from here.
    pub examples_min_nanos: u64,
}

impl LatencyGroup {
    /// The robust z-score of a duration.
    pub fn score(&self, duration_nanos: u64) -> f64 {
        (us(duration_nanos) - self.baseline.median_us.unwrap_or(0.0)) / self.scale_us
    }

    /// One of the group's spans as an example anomaly (`duration_nanos`
    /// its duration, `start_unix_nanos` its start).
    pub fn example(
        &self,
        trace_id: &[u8],
        span_id: &[u8],
        start_unix_nanos: u64,
        duration_nanos: u64,
    ) -> Anomaly {
        let score = self.score(duration_nanos);
        let (value, median) = (us(duration_nanos), self.baseline.median_us.unwrap_or(0.0));
        Anomaly {
            kind: AnomalyKind::LatencyOutlier,
            service: self.service.clone(),
            operation: self.operation.clone(),
            span_kind: self.span_kind,
            trace_id: Some(hex(trace_id)),
            span_id: Some(hex(span_id)),
            time_us: start_unix_nanos / 1_000,
            score,
            value,
            baseline: self.baseline.clone(),
            message: format!(
                "{} \"{}\" took {} where it usually takes {} (median of {} spans; {:.1} robust deviations above).",
                self.service,
                self.operation,
                fmt_dur(value),
                fmt_dur(median),
                self.baseline.samples,
                score
            ),
        }
    }

    /// The group as the answer shows it, with `examples` (worst first).
    pub fn into_group(self, examples: Vec<Anomaly>) -> AnomalyGroup {
        let worst_value = us(self.max_nanos);
        let ratio = self
            .baseline
            .median_us
            .filter(|m| *m > 0.0)
            .map(|m| worst_value / m);
        let mut g = AnomalyGroup {
            kind: AnomalyKind::LatencyOutlier,
            worst_score: self.score(self.max_nanos),
            service: self.service,
            operation: self.operation,
            span_kind: self.span_kind,
            count: usize::try_from(self.count).unwrap_or(usize::MAX),
            baseline: self.baseline,
            worst_value,
            ratio,
            first_us: self.first_us,
            last_us: self.last_us,
            message: String::new(),
            examples,
        };
        g.message = groups::message(&g);
        g
    }
}

/// What [`window_anomalies`] finds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowAnomalies {
    /// Latency outliers per (service, operation, span kind), the worst
    /// score first.
    pub latency: Vec<LatencyGroup>,
    /// Error-rate spikes, one per spiking point, highest score first; no
    /// example trace yet (`trace_id` and `span_id` are `None`).
    pub spikes: Vec<Anomaly>,
}

/// Latency outliers and error spikes of the keys `select` accepts, over
/// the buckets starting inside `res`'s range (every collector's, one
/// tier); see the module docs. `examples` is how many worst spans
/// [`LatencyGroup::examples_min_nanos`] must let through. Overflow keys
/// (mixed operations, see [`OVERFLOW`]) are skipped.
pub fn window_anomalies(
    buckets: &[Bucket],
    res: &Resolution,
    cfg: &AnomalyConfig,
    examples: usize,
    select: impl Fn(&RedKey<'_>) -> bool,
) -> WindowAnomalies {
    let inside: Vec<(usize, &Bucket)> = buckets
        .iter()
        .filter_map(|b| res.point_of(b.start_unix_nanos()).map(|p| (p, b)))
        .collect();
    let keep = |k: &RedKey<'_>| k.service != OVERFLOW && k.operation != OVERFLOW && select(k);
    let mut points: BTreeMap<Key<'_>, Vec<Stats>> = BTreeMap::new();
    for &(p, b) in &inside {
        for (k, stats) in b.red().filter(|(k, _)| keep(k)) {
            let key = (k.service, k.operation, k.kind);
            let series = points
                .entry(key)
                .or_insert_with(|| vec![Stats::default(); res.points()]);
            if let Some(point) = series.get_mut(p) {
                point.merge(stats);
            }
        }
    }
    let mut out = WindowAnomalies::default();
    for (key, series) in &points {
        let mut total = Stats::default();
        series.iter().for_each(|s| total.merge(s));
        if let Some(g) = latency_group(*key, &total, series, res, cfg, examples) {
            out.latency.push(g);
        }
        error_spikes(*key, &total, series, res, cfg, &mut out.spikes);
    }
    out.latency.sort_by(|a, b| {
        let worst = |g: &LatencyGroup| g.score(g.max_nanos);
        worst(b).total_cmp(&worst(a)).then(b.count.cmp(&a.count))
    });
    out.spikes.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}

/// Median, MAD and the score's scale of a sketch, ns; `None` without
/// enough spans or spread.
fn baseline(s: &Sketch, cfg: &AnomalyConfig) -> Option<(u64, u64, f64)> {
    if s.count() < cfg.min_samples as u64 {
        return None;
    }
    let median = s.quantile(0.5)?;
    let mad = s.median_abs_deviation(median)?;
    let scale = if mad > 0 {
        MAD_SCALE * mad as f64
    } else {
        MEAN_DEV_SCALE * s.mean_abs_deviation(median)?
    };
    (scale > 0.0).then_some((median, mad, scale))
}

/// The latency group of one key, if it has outliers.
fn latency_group(
    (service, operation, kind): Key<'_>,
    total: &Stats,
    series: &[Stats],
    res: &Resolution,
    cfg: &AnomalyConfig,
    examples: usize,
) -> Option<LatencyGroup> {
    let sketch = total.latency();
    let (median, mad, scale) = baseline(sketch, cfg)?;
    // Outliers exceed median + score·scale: with whole nanoseconds, those
    // above its floor.
    let threshold = (median as f64 + cfg.latency_score * scale).floor() as u64;
    // Counted per point (each point's exact min and max sharpen its
    // count), so the points with outliers add up to the count.
    let per_point: Vec<(u64, u64)> = res
        .point_starts()
        .zip(series)
        .map(|(start, s)| (start / 1_000, s.latency().count_above(threshold)))
        .filter(|&(_, n)| n > 0)
        .collect();
    let count = per_point.iter().map(|&(_, n)| n).sum::<u64>();
    let (&(first_us, _), &(last_us, _)) = (per_point.first()?, per_point.last()?);
    let worst_rank = sketch.count().saturating_sub(examples.max(1) as u64) + 1;
    let floor = sketch.rank_floor(worst_rank).unwrap_or(0);
    Some(LatencyGroup {
        service: service.to_owned(),
        operation: operation.to_owned(),
        span_kind: kind_name(kind),
        baseline: Baseline {
            samples: usize::try_from(sketch.count()).unwrap_or(usize::MAX),
            median_us: Some(us(median)),
            mad_us: Some(us(mad)),
            rate: None,
        },
        scale_us: scale / 1_000.0,
        threshold_nanos: threshold,
        count,
        max_nanos: sketch.max().unwrap_or(0),
        first_us,
        last_us,
        examples_min_nanos: floor.max(threshold.saturating_add(1)),
    })
}

/// The spiking points of one key.
fn error_spikes(
    (service, operation, kind): Key<'_>,
    total: &Stats,
    series: &[Stats],
    res: &Resolution,
    cfg: &AnomalyConfig,
    out: &mut Vec<Anomaly>,
) {
    let (calls, errors) = (total.requests(), total.errors());
    for (start, s) in res.point_starts().zip(series) {
        let (n, e) = (s.requests(), s.errors());
        let Some(spike) = super::Spike::test(n, e, calls - n, errors - e, cfg) else {
            continue;
        };
        out.push(spike.anomaly((service, operation, kind_name(kind)), start, res.step_nanos));
    }
}
