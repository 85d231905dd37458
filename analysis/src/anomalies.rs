//! Anomalies across many traces.
//!
//! - **Latency outliers.** Per (service, operation, span kind), the baseline is the
//!   median and the MAD (median absolute deviation, scaled by 1.4826 to
//!   estimate a standard deviation) of the durations in the window. A span's
//!   score is its robust z-score `(d − median) / (1.4826·MAD)`; above
//!   [`AnomalyConfig::latency_score`] (3.5, Iglewicz and Hoaglin) it is an
//!   outlier. Median and MAD ignore the outliers they are meant to find,
//!   where a mean and standard deviation would be dragged by them. When the
//!   MAD is 0 (over half the spans take exactly the median) the mean
//!   absolute deviation stands in; when that is 0 too, nothing is flagged.
//! - **Error-rate spikes.** The window is cut into [`AnomalyConfig::buckets`]
//!   equal time buckets (from roll-ups: the points of the resolution); a
//!   bucket whose error rate for an operation (and span kind) is far
//!   above the rest of the window (binomial z-score over
//!   [`AnomalyConfig::error_score`], at least [`AnomalyConfig::min_errors`]
//!   errors) is a spike.
//! - **New call edges.** A call (parent service/operation → child
//!   service/operation) seen in the most recent [`AnomalyConfig::recent`]
//!   share of the window but never before, while its caller ran at least
//!   [`AnomalyConfig::min_samples`] times before.
//! - **Missing children.** A call its caller made in at least
//!   [`AnomalyConfig::expected_share`] of its runs (and at least
//!   [`AnomalyConfig::min_samples`] runs), missing from one run.
//!
//! Two ways to run them:
//!
//! - [`detect_anomalies`]: every kind over a set of traces, each anomaly a
//!   span (or a stretch) with its trace.
//! - [`window_anomalies`]: latency outliers and error-rate spikes over
//!   roll-up buckets, so over every span of a window however many traces
//!   it holds: the same rules, with the median, MAD and outlier count
//!   read from the window's merged sketch (bounds in its module docs) and
//!   the spikes tested per point of a [`crate::rollup::Resolution`];
//!   examples are left to the caller (the collector finds them in its
//!   trace index). [`detect_structural`] finds the two kinds that need
//!   whole traces, new call edges and missing children, in the traces the
//!   caller could read.
//!
//! [`group_anomalies`] folds the anomalies of one (kind, service, operation,
//! span kind) into one [`AnomalyGroup`]: a recurring latency spike is one
//! row with a count, its baseline and its worst examples, not hundreds
//! ([`LatencyGroup::into_group`] builds that row from the roll-ups).

use std::collections::{BTreeMap, HashMap, HashSet};

use clew_proto::v1::{Span, SpanKind, Trace};
use serde::Serialize;

use super::{Tree, duration, hex, is_error, us};

mod groups;
mod window;
pub use groups::{AnomalyGroup, group_anomalies, sort_groups};
pub use window::{LatencyGroup, WindowAnomalies, window_anomalies};

/// Thresholds of [`detect_anomalies`].
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyConfig {
    /// Robust z-score above which a duration is an outlier.
    pub latency_score: f64,
    /// Fewest spans of an operation (or runs of a caller) for a baseline.
    pub min_samples: usize,
    /// Time buckets for error-rate spikes in [`detect_anomalies`]
    /// ([`window_anomalies`] uses the points of its resolution).
    pub buckets: usize,
    /// Binomial z-score above which a bucket's error rate is a spike.
    pub error_score: f64,
    /// Fewest errors in a bucket for a spike.
    pub min_errors: usize,
    /// The recent share of the window checked for new call edges.
    pub recent: f64,
    /// Share of a caller's runs that must make a call for it to be expected.
    pub expected_share: f64,
    /// Most anomalies returned (highest scores first).
    pub limit: usize,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            latency_score: 3.5,
            min_samples: 10,
            buckets: 10,
            error_score: 3.0,
            min_errors: 3,
            recent: 0.2,
            expected_share: 0.9,
            limit: 200,
        }
    }
}

/// What kind of anomaly.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum AnomalyKind {
    /// A span far slower than its operation's baseline.
    LatencyOutlier,
    /// An operation failing far more often than usual for a while.
    ErrorSpike,
    /// A call never seen before in the window.
    NewEdge,
    /// A call the caller usually makes, missing.
    MissingChild,
}

/// The baseline an anomaly broke.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Baseline {
    /// Spans (or runs) it is computed from.
    pub samples: usize,
    /// Median duration, microseconds (latency).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub median_us: Option<f64>,
    /// Median absolute deviation, microseconds (latency).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mad_us: Option<f64>,
    /// Error rate outside the bucket (error spikes), or the share of runs
    /// making the call (missing children).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
}

/// One anomaly.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Anomaly {
    /// What kind.
    pub kind: AnomalyKind,
    /// The service concerned (the caller, for call edges).
    pub service: String,
    /// The operation concerned (the caller's, for call edges).
    pub operation: String,
    /// The span kind of the operation's spans (the caller's, for call
    /// edges): `server`, `client`, `producer`, `consumer`, `internal` or
    /// `unspecified`.
    pub span_kind: &'static str,
    /// An example trace.
    #[serde(rename = "traceID", skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// An example span.
    #[serde(rename = "spanID", skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    /// When, Unix microseconds (the span's start, or the bucket's).
    pub time_us: u64,
    /// How far from normal (z-score; for structural anomalies the baseline
    /// share or sample count behind it).
    pub score: f64,
    /// The observed value: duration in microseconds, error rate, or calls.
    pub value: f64,
    /// The baseline broken.
    pub baseline: Baseline,
    /// One plain sentence.
    pub message: String,
}

struct SpanRef<'a> {
    trace: &'a Trace,
    span: &'a Span,
}

fn fmt_dur(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2} s", us / 1_000_000.0)
    } else if us >= 1_000.0 {
        format!("{:.2} ms", us / 1_000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// Jaeger's name of a span kind, `unspecified` for none (and for an
/// unknown value): the [`Anomaly::span_kind`] of a span.
pub fn kind_name(kind: i32) -> &'static str {
    match SpanKind::try_from(kind).unwrap_or(SpanKind::Unspecified) {
        SpanKind::Unspecified => "unspecified",
        SpanKind::Internal => "internal",
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
    }
}

/// A (service, operation, span kind): what a baseline is computed for.
type OpKind<'a> = (&'a str, &'a str, &'static str);

fn op_kind<'a>(s: &'a Span) -> OpKind<'a> {
    (&s.service, &s.name, kind_name(s.kind))
}

fn latency_outliers(spans: &[SpanRef<'_>], cfg: &AnomalyConfig, out: &mut Vec<Anomaly>) {
    let mut groups: BTreeMap<OpKind<'_>, Vec<&SpanRef<'_>>> = BTreeMap::new();
    for s in spans {
        groups.entry(op_kind(s.span)).or_default().push(s);
    }
    for ((service, operation, span_kind), group) in groups {
        if group.len() < cfg.min_samples {
            continue;
        }
        let mut d: Vec<f64> = group.iter().map(|s| us(duration(s.span))).collect();
        d.sort_by(f64::total_cmp);
        let med = median(&d);
        let mut dev: Vec<f64> = d.iter().map(|x| (x - med).abs()).collect();
        dev.sort_by(f64::total_cmp);
        let mad = median(&dev);
        let scale = if mad > 0.0 {
            1.4826 * mad
        } else {
            // Mean absolute deviation, scaled to a standard deviation.
            1.2533 * dev.iter().sum::<f64>() / dev.len() as f64
        };
        if scale <= 0.0 {
            continue;
        }
        for s in group {
            let x = us(duration(s.span));
            let score = (x - med) / scale;
            if score > cfg.latency_score {
                out.push(Anomaly {
                    kind: AnomalyKind::LatencyOutlier,
                    service: service.to_owned(),
                    operation: operation.to_owned(),
                    span_kind,
                    trace_id: Some(hex(&s.trace.trace_id)),
                    span_id: Some(hex(&s.span.span_id)),
                    time_us: s.span.start_time_unix_nano / 1_000,
                    score,
                    value: x,
                    baseline: Baseline {
                        samples: d.len(),
                        median_us: Some(med),
                        mad_us: Some(mad),
                        rate: None,
                    },
                    message: format!(
                        "{service} \"{operation}\" took {} where it usually takes {} (median of {} spans; {:.1} robust deviations above).",
                        fmt_dur(x),
                        fmt_dur(med),
                        d.len(),
                        score
                    ),
                });
            }
        }
    }
}

fn error_spikes(spans: &[SpanRef<'_>], cfg: &AnomalyConfig, out: &mut Vec<Anomaly>) {
    let (Some(lo), Some(hi)) = (
        spans.iter().map(|s| s.span.start_time_unix_nano).min(),
        spans.iter().map(|s| s.span.start_time_unix_nano).max(),
    ) else {
        return;
    };
    let buckets = cfg.buckets.max(1);
    let width = ((hi - lo) / buckets as u64).max(1);
    let bucket_of = |t: u64| (((t - lo) / width) as usize).min(buckets - 1);
    // (service, op, kind) → per bucket (calls, errors, an example error span)
    type Bucket<'a> = (usize, usize, Option<&'a SpanRef<'a>>);
    let mut groups: BTreeMap<OpKind<'_>, Vec<Bucket<'_>>> = BTreeMap::new();
    for s in spans {
        let g = groups
            .entry(op_kind(s.span))
            .or_insert_with(|| vec![(0, 0, None); buckets]);
        let b = &mut g[bucket_of(s.span.start_time_unix_nano)];
        b.0 += 1;
        if is_error(s.span) {
            b.1 += 1;
            b.2.get_or_insert(s);
        }
    }
    for (key, g) in groups {
        let (calls, errors) = g.iter().fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        for (k, &(n, e, example)) in g.iter().enumerate() {
            let (n, e, calls, errors) = (n as u64, e as u64, calls as u64, errors as u64);
            let Some(spike) = Spike::test(n, e, calls - n, errors - e, cfg) else {
                continue;
            };
            let mut a = spike.anomaly(key, lo + k as u64 * width, width);
            a.trace_id = example.map(|s| hex(&s.trace.trace_id));
            a.span_id = example.map(|s| hex(&s.span.span_id));
            out.push(a);
        }
    }
}

/// A stretch of the window whose error rate for an operation is far above
/// the rest of the window's.
#[derive(Clone, Copy)]
struct Spike {
    /// Calls and errors in the stretch.
    n: u64,
    e: u64,
    /// Calls and errors in the rest of the window.
    rest_n: u64,
    rest_e: u64,
    /// The binomial z-score.
    z: f64,
}

impl Spike {
    /// The spike of a stretch with `n` calls and `e` errors against the
    /// rest's `rest_n` and `rest_e`, if its z-score is over
    /// [`AnomalyConfig::error_score`] with at least
    /// [`AnomalyConfig::min_errors`] errors and
    /// [`AnomalyConfig::min_samples`] calls in the rest.
    fn test(n: u64, e: u64, rest_n: u64, rest_e: u64, cfg: &AnomalyConfig) -> Option<Spike> {
        if e < cfg.min_errors as u64 || n == 0 || rest_n < cfg.min_samples as u64 {
            return None;
        }
        // A floor on the baseline rate, so a clean history does not make
        // any error infinitely surprising.
        let p0 = (rest_e as f64 / rest_n as f64).max(1.0 / (rest_n as f64 + 1.0));
        let p = e as f64 / n as f64;
        let z = (p - p0) / (p0 * (1.0 - p0) / n as f64).sqrt();
        (z > cfg.error_score).then_some(Spike {
            n,
            e,
            rest_n,
            rest_e,
            z,
        })
    }

    /// The anomaly of the stretch `[start, start + width)` (ns), without
    /// an example trace.
    fn anomaly(
        &self,
        (service, operation, span_kind): OpKind<'_>,
        start: u64,
        width: u64,
    ) -> Anomaly {
        let Spike {
            n,
            e,
            rest_n,
            rest_e,
            z,
        } = *self;
        let p = e as f64 / n as f64;
        let rest_rate = rest_e as f64 / rest_n as f64;
        Anomaly {
            kind: AnomalyKind::ErrorSpike,
            service: service.to_owned(),
            operation: operation.to_owned(),
            span_kind,
            trace_id: None,
            span_id: None,
            time_us: start / 1_000,
            score: z,
            value: p,
            baseline: Baseline {
                samples: usize::try_from(rest_n).unwrap_or(usize::MAX),
                median_us: None,
                mad_us: None,
                rate: Some(rest_rate),
            },
            message: format!(
                "{service} \"{operation}\" failed {e} of {n} calls ({:.0}%) in this {} stretch, against {:.1}% of {rest_n} calls in the rest of the window.",
                p * 100.0,
                fmt_dur(us(width)),
                100.0 * rest_rate,
            ),
        }
    }
}

fn structural(traces: &[Trace], cfg: &AnomalyConfig, out: &mut Vec<Anomaly>) {
    let (Some(lo), Some(hi)) = (
        traces
            .iter()
            .flat_map(|t| &t.spans)
            .map(|s| s.start_time_unix_nano)
            .min(),
        traces
            .iter()
            .flat_map(|t| &t.spans)
            .map(|s| s.start_time_unix_nano)
            .max(),
    ) else {
        return;
    };
    let recent_from = hi - ((hi - lo) as f64 * cfg.recent) as u64;
    let calls = Calls::of(traces, recent_from);
    calls.new_edges(cfg, out);
    calls.missing_children(cfg, out);
}

/// A (service, operation).
type Op<'a> = (&'a str, &'a str);

/// Who calls whom across a window, before its recent part and in all of it.
struct Calls<'a> {
    /// Caller op → runs before the recent part.
    runs_before: HashMap<Op<'a>, usize>,
    /// Caller op → runs in the whole window.
    runs_all: HashMap<Op<'a>, usize>,
    /// Calls seen before the recent part.
    edge_before: HashSet<(Op<'a>, Op<'a>)>,
    /// Per call, the runs of its caller that made it.
    edge_runs: HashMap<(Op<'a>, Op<'a>), usize>,
    /// Per call, its first child span in the recent part, and the kind of
    /// the caller's span.
    first_recent: BTreeMap<(Op<'a>, Op<'a>), (&'a Trace, &'a Span, &'static str)>,
    /// Every run with the ops it called.
    run_children: Vec<(&'a Trace, &'a Span, HashSet<Op<'a>>)>,
}

impl<'a> Calls<'a> {
    fn of(traces: &'a [Trace], recent_from: u64) -> Self {
        let mut calls = Calls {
            runs_before: HashMap::new(),
            runs_all: HashMap::new(),
            edge_before: HashSet::new(),
            edge_runs: HashMap::new(),
            first_recent: BTreeMap::new(),
            run_children: Vec::new(),
        };
        for t in traces {
            let tree = Tree::new(&t.spans);
            for (i, p) in t.spans.iter().enumerate() {
                let pop: Op<'_> = (&p.service, &p.name);
                let before = p.start_time_unix_nano < recent_from;
                *calls.runs_all.entry(pop).or_default() += 1;
                if before {
                    *calls.runs_before.entry(pop).or_default() += 1;
                }
                let mut kids: HashSet<Op<'_>> = HashSet::new();
                for &c in &tree.children[i] {
                    let k: Op<'_> = (&t.spans[c].service, &t.spans[c].name);
                    if !kids.insert(k) {
                        continue;
                    }
                    *calls.edge_runs.entry((pop, k)).or_default() += 1;
                    if before {
                        calls.edge_before.insert((pop, k));
                    } else {
                        calls.first_recent.entry((pop, k)).or_insert((
                            t,
                            &t.spans[c],
                            kind_name(p.kind),
                        ));
                    }
                }
                calls.run_children.push((t, p, kids));
            }
        }
        calls
    }

    /// Calls seen in the recent part only, from callers with enough runs
    /// before it.
    fn new_edges(&self, cfg: &AnomalyConfig, out: &mut Vec<Anomaly>) {
        for (&(from, to), &(t, s, span_kind)) in &self.first_recent {
            let before = self.runs_before.get(&from).copied().unwrap_or(0);
            if self.edge_before.contains(&(from, to)) || before < cfg.min_samples {
                continue;
            }
            out.push(Anomaly {
                kind: AnomalyKind::NewEdge,
                service: from.0.to_owned(),
                operation: from.1.to_owned(),
                span_kind,
                trace_id: Some(hex(&t.trace_id)),
                span_id: Some(hex(&s.span_id)),
                time_us: s.start_time_unix_nano / 1_000,
                score: before as f64,
                value: self.edge_runs.get(&(from, to)).copied().unwrap_or(0) as f64,
                baseline: Baseline {
                    samples: before,
                    median_us: None,
                    mad_us: None,
                    rate: Some(0.0),
                },
                message: format!(
                    "{} \"{}\" called {} \"{}\", a call not seen in its {before} earlier runs.",
                    from.0, from.1, to.0, to.1
                ),
            });
        }
    }

    /// Runs missing a call their caller makes in enough of its runs.
    fn missing_children(&self, cfg: &AnomalyConfig, out: &mut Vec<Anomaly>) {
        // Per caller, the calls it makes in enough of its runs, sorted.
        let mut expected: HashMap<Op<'_>, Vec<(Op<'_>, usize)>> = HashMap::new();
        for (&(from, to), &n) in &self.edge_runs {
            let runs = self.runs_all.get(&from).copied().unwrap_or(0);
            if runs >= cfg.min_samples && n as f64 >= cfg.expected_share * runs as f64 {
                expected.entry(from).or_default().push((to, n));
            }
        }
        expected.values_mut().for_each(|v| v.sort_unstable());
        for (t, p, kids) in &self.run_children {
            let pop: Op<'_> = (&p.service, &p.name);
            let runs = self.runs_all.get(&pop).copied().unwrap_or(0);
            let Some(calls) = expected.get(&pop) else {
                continue;
            };
            for &(to, n) in calls.iter().filter(|(to, _)| !kids.contains(to)) {
                let share = n as f64 / runs as f64;
                out.push(Anomaly {
                    kind: AnomalyKind::MissingChild,
                    service: pop.0.to_owned(),
                    operation: pop.1.to_owned(),
                    span_kind: kind_name(p.kind),
                    trace_id: Some(hex(&t.trace_id)),
                    span_id: Some(hex(&p.span_id)),
                    time_us: p.start_time_unix_nano / 1_000,
                    score: share,
                    value: 0.0,
                    baseline: Baseline { samples: runs, median_us: None, mad_us: None, rate: Some(share) },
                    message: format!(
                        "{} \"{}\" did not call {} \"{}\", which it called in {n} of its {runs} runs ({:.0}%).",
                        pop.0, pop.1, to.0, to.1, share * 100.0
                    ),
                });
            }
        }
    }
}

/// Most significant first within each kind (error spikes, latency, new
/// calls, missing calls), then most recent: the order
/// [`detect_anomalies`] returns.
pub fn sort_anomalies(out: &mut [Anomaly]) {
    out.sort_by(|a, b| {
        a.kind
            .rank()
            .cmp(&b.kind.rank())
            .then(b.score.total_cmp(&a.score))
            .then(b.time_us.cmp(&a.time_us))
    });
}

/// Only the anomalies that need whole traces, new call edges and missing
/// children, in a set of traces; ordered and cut as [`detect_anomalies`].
/// With [`window_anomalies`] for the other kinds.
pub fn detect_structural(traces: &[Trace], cfg: &AnomalyConfig) -> Vec<Anomaly> {
    let mut out = Vec::new();
    structural(traces, cfg, &mut out);
    sort_anomalies(&mut out);
    out.truncate(cfg.limit);
    out
}

/// Finds anomalies in a set of traces (one window); see the module docs.
/// Most significant first within each kind; latency outliers and spikes by
/// score, then structural anomalies; at most `cfg.limit`.
pub fn detect_anomalies(traces: &[Trace], cfg: &AnomalyConfig) -> Vec<Anomaly> {
    let spans: Vec<SpanRef<'_>> = traces
        .iter()
        .flat_map(|t| t.spans.iter().map(move |span| SpanRef { trace: t, span }))
        .collect();
    let mut out = Vec::new();
    latency_outliers(&spans, cfg, &mut out);
    error_spikes(&spans, cfg, &mut out);
    structural(traces, cfg, &mut out);
    sort_anomalies(&mut out);
    out.truncate(cfg.limit);
    out
}
