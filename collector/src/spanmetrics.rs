//! Span metrics as the OpenTelemetry Collector's spanmetrics connector
//! exports them through a Prometheus exporter, so dashboards built for it
//! (Grafana's span-metrics dashboards, Jaeger's Monitor tab) work on clew.
//!
//! Every span of every durable record is counted once, before assembly and
//! any sampling, per (`service_name`, `span_name`, `span_kind`,
//! `status_code`) into a calls counter and a duration histogram, cumulative
//! for the life of the process (the connector's default temporality). The
//! names, labels, label values and buckets are the connector's defaults:
//!
//! - `traces_span_metrics_calls_total`: the connector's `calls` sum under
//!   its default namespace `traces.span.metrics`;
//! - `traces_span_metrics_duration_milliseconds_{bucket,sum,count}`: its
//!   `duration` histogram, unit `ms`, with `defaultHistogramBucketsMs`.
//!
//! Source: opentelemetry-collector-contrib
//! `connector/spanmetricsconnector/config.go` (the default buckets, the
//! `aggregation_cardinality_limit` setting), its `README.md` (the default
//! namespace: `traces.span.metrics.calls{service.name=…}`) and
//! `connector.go` (the
//! `calls` and `duration` names, the `service.name`, `span.name`,
//! `span.kind`, `status.code` attributes, valued with
//! `traceutil.SpanKindStr` / `StatusCodeStr`: `SPAN_KIND_SERVER`,
//! `STATUS_CODE_ERROR`; the Prometheus exporter turns the dots of names
//! and attributes into underscores and adds `_total` and the unit).
//!
//! A cardinality limit bounds the series (the connector's
//! `aggregation_cardinality_limit`, in `config.go`): once a new series
//! would take the count to the limit, the span is counted into one
//! overflow series whose only label is `otel_metric_overflow="true"`.
//! That is the overflow attribute of the OpenTelemetry metrics SDK
//! specification (`specification/metrics/sdk.md`, "Overflow attribute":
//! `otel.metric.overflow=true`, the overflow series counted in the limit,
//! so at most `limit - 1` other series). This follows the specification;
//! it is not checked against the connector's overflow code. Series already
//! present keep counting.

use std::fmt::Write as _;

use clew_proto::v1::Span;
// The fast, seeded hasher assembly uses too: the keys come from clients.
use foldhash::HashMap;
use parking_lot::Mutex;

use crate::storage::filter;

#[cfg(test)]
mod tests;

/// The connector's default explicit buckets, in milliseconds
/// (`defaultHistogramBucketsMs` in `spanmetricsconnector/config.go`).
pub const BUCKETS_MS: [f64; 16] = [
    2.0, 4.0, 6.0, 8.0, 10.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1000.0, 1400.0, 2000.0, 5000.0,
    10_000.0, 15_000.0,
];

/// The calls counter's name.
pub const CALLS: &str = "traces_span_metrics_calls_total";
/// The duration histogram's name (before `_bucket`, `_sum`, `_count`).
pub const DURATION: &str = "traces_span_metrics_duration_milliseconds";
/// The label of the overflow series.
pub const OVERFLOW_LABEL: &str = "otel_metric_overflow";

/// `span_kind` values, indexed by the proto's `SpanKind`.
const KINDS: [&str; 6] = [
    "SPAN_KIND_UNSPECIFIED",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
];

/// `status_code` values, indexed by the proto's `Status.Code`.
const STATUSES: [&str; 3] = ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"];

/// The calls and duration of one series: per-bucket (not cumulative)
/// counts, the last one above the largest bound; the count is their sum.
#[derive(Debug, Clone, PartialEq)]
struct Stats {
    buckets: [u64; BUCKETS_MS.len() + 1],
    sum_ms: f64,
}

impl Stats {
    const fn new() -> Self {
        Stats {
            buckets: [0; BUCKETS_MS.len() + 1],
            sum_ms: 0.0,
        }
    }

    fn observe(&mut self, ms: f64) {
        // The first bucket whose bound is >= the value (`le`), as the
        // connector's `sort.SearchFloat64s`.
        let i = BUCKETS_MS.partition_point(|b| *b < ms);
        self.buckets[i] += 1;
        self.sum_ms += ms;
    }

    fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// The series of one (service, span name): one per (kind, status) seen,
/// usually one or two, so a short list.
type Group = Vec<(u8, Stats)>;

#[derive(Debug, Default)]
struct Series {
    /// service → span name → (kind, status) → stats.
    by_service: HashMap<Box<str>, HashMap<Box<str>, Group>>,
    /// Series in `by_service`.
    len: usize,
    /// The overflow series, once a span overflowed.
    overflow: Option<Stats>,
}

/// One series as rendered: its labels (`None`: the overflow series).
type Row = (Option<(Box<str>, Box<str>, u8)>, Stats);

/// The span-metrics aggregator. See the [module docs](self).
#[derive(Debug)]
pub struct SpanMetrics {
    /// Most series, the overflow series counted (0: no limit).
    limit: usize,
    series: Mutex<Series>,
}

impl SpanMetrics {
    /// An empty aggregator holding at most `limit` series, the overflow
    /// series included (`0`: no limit).
    pub fn new(limit: usize) -> Self {
        SpanMetrics {
            limit,
            series: Mutex::new(Series::default()),
        }
    }

    /// Counts `spans`: one call each, and its duration (0 when the end
    /// precedes the start, as the connector) in milliseconds.
    pub fn record(&self, spans: &[Span]) {
        if spans.is_empty() {
            return;
        }
        let mut s = self.series.lock();
        for span in spans {
            let ms = filter::duration(span) as f64 / 1e6;
            let slot = slot(span);
            s.observe(self.limit, &span.service, &span.name, slot, ms);
        }
    }

    /// Series held, the overflow series included.
    pub fn series(&self) -> usize {
        let s = self.series.lock();
        s.len + usize::from(s.overflow.is_some())
    }

    /// Appends the two families in the Prometheus text format to `out`
    /// (nothing before the first span).
    pub fn render_into(&self, out: &mut String) {
        let rows = self.snapshot();
        if rows.is_empty() {
            return;
        }
        render_calls(&rows, out);
        render_duration(&rows, out);
    }

    /// A copy of every series, sorted by labels (the overflow series
    /// last), so that formatting happens outside the lock.
    fn snapshot(&self) -> Vec<Row> {
        let mut rows: Vec<Row> = {
            let s = self.series.lock();
            let mut rows = Vec::with_capacity(s.len + 1);
            for (service, names) in &s.by_service {
                for (name, group) in names {
                    for (slot, stats) in group {
                        rows.push((Some((service.clone(), name.clone(), *slot)), stats.clone()));
                    }
                }
            }
            if let Some(o) = &s.overflow {
                rows.push((None, o.clone()));
            }
            rows
        };
        rows.sort_by(|a, b| match (&a.0, &b.0) {
            (Some(x), Some(y)) => x.cmp(y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
        rows
    }
}

impl Series {
    /// Counts one span into its series, or into the overflow series when
    /// its series is new and the limit is reached.
    fn observe(&mut self, limit: usize, service: &str, name: &str, slot: u8, ms: f64) {
        if let Some(stats) = self.find(service, name, slot) {
            stats.observe(ms);
            return;
        }
        // The overflow series takes one place of the limit.
        if limit != 0 && self.len + 1 >= limit {
            self.overflow(ms);
            return;
        }
        self.len += 1;
        let mut stats = Stats::new();
        stats.observe(ms);
        self.by_service
            .entry(service.into())
            .or_default()
            .entry(name.into())
            .or_default()
            .push((slot, stats));
    }

    /// The series' stats when it exists; looked up without allocating.
    fn find(&mut self, service: &str, name: &str, slot: u8) -> Option<&mut Stats> {
        let group = self.by_service.get_mut(service)?.get_mut(name)?;
        group
            .iter_mut()
            .find(|(s, _)| *s == slot)
            .map(|(_, stats)| stats)
    }

    fn overflow(&mut self, ms: f64) {
        let o = self.overflow.get_or_insert_with(|| {
            tracing::warn!(
                series = self.len,
                "span metrics: the cardinality limit is reached; new series count into \
                 otel_metric_overflow=\"true\" (raise --spanmetrics-cardinality-limit)"
            );
            Stats::new()
        });
        o.observe(ms);
    }
}

/// The (kind, status) slot of a span; values the proto does not know
/// read as `SPAN_KIND_UNSPECIFIED` / `STATUS_CODE_UNSET`.
fn slot(span: &Span) -> u8 {
    let kind = u8::try_from(span.kind)
        .ok()
        .filter(|k| usize::from(*k) < KINDS.len())
        .unwrap_or(0);
    let status = span
        .status
        .as_ref()
        .and_then(|s| u8::try_from(s.code).ok())
        .filter(|c| usize::from(*c) < STATUSES.len())
        .unwrap_or(0);
    kind * STATUSES.len() as u8 + status
}

/// The labels of a row, escaped, without braces.
fn labels(row: &Row) -> String {
    let mut out = String::with_capacity(128);
    match &row.0 {
        Some((service, name, slot)) => {
            let kind = KINDS[usize::from(*slot) / STATUSES.len()];
            let status = STATUSES[usize::from(*slot) % STATUSES.len()];
            out.push_str("service_name=\"");
            escape(&mut out, service);
            out.push_str("\",span_name=\"");
            escape(&mut out, name);
            let _ = write!(out, "\",span_kind=\"{kind}\",status_code=\"{status}\"");
        }
        None => {
            let _ = write!(out, "{OVERFLOW_LABEL}=\"true\"");
        }
    }
    out
}

/// A label value escaped for the text format: `\`, `"` and newline.
fn escape(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn render_calls(rows: &[Row], out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP {CALLS} Spans by service, span name, span kind and status code \
         (OpenTelemetry spanmetrics connector calls).\n# TYPE {CALLS} counter"
    );
    for row in rows {
        let _ = writeln!(out, "{CALLS}{{{}}} {}", labels(row), row.1.count());
    }
}

fn render_duration(rows: &[Row], out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP {DURATION} Span duration in milliseconds by service, span name, span kind and \
         status code (OpenTelemetry spanmetrics connector duration).\n# TYPE {DURATION} histogram"
    );
    let les: Vec<String> = BUCKETS_MS
        .iter()
        .map(ToString::to_string)
        .chain(std::iter::once("+Inf".to_owned()))
        .collect();
    for row in rows {
        let l = labels(row);
        let mut cumulative = 0;
        for (n, le) in row.1.buckets.iter().zip(&les) {
            cumulative += n;
            let _ = writeln!(out, "{DURATION}_bucket{{{l},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{DURATION}_sum{{{l}}} {}", row.1.sum_ms);
        let _ = writeln!(out, "{DURATION}_count{{{l}}} {}", row.1.count());
    }
}
