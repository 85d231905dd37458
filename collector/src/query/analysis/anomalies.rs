//! `GET /api/clew/anomalies`: latency outliers and error-rate spikes over
//! the whole window from the roll-ups (every span, every collector), with
//! example traces found in the trace index; new call edges and missing
//! children, which need whole traces, from the most recent traces.
//!
//! - **Latency outliers** ([`clew_analysis::window_anomalies`]): per
//!   (service, operation, span kind), median and MAD of the window's
//!   merged sketch, the count of spans above the threshold, the exact
//!   worst. Examples: the index's spans of that operation at least
//!   [`LatencyGroup::examples_min_nanos`] long, worst first.
//! - **Error spikes**: a point per step of the resolution of at most
//!   [`SPIKE_POINTS`] points; each spiking point's example is an error
//!   span of that operation in that point.
//! - **New call edges, missing children** ([`detect_structural`]): over
//!   the most recent [`MAX_LIMIT`] traces of the window, as the answer's
//!   `structuralFromTraces` and `structuralTruncated` say.
//!
//! Examples come from the stored traces: a span counted in the roll-ups
//! but whose trace tail sampling dropped has none, so a group may list
//! fewer examples than its count.

use std::collections::HashMap;
use std::sync::Arc;

use clew_analysis::rollup::{Bucket, Resolution, resolution};
use clew_analysis::{
    Anomaly, AnomalyConfig, AnomalyGroup, LatencyGroup, detect_structural, group_anomalies,
    kind_name, sort_anomalies, sort_groups, window_anomalies,
};
use clew_proto::v1::{FilterCriteria, Span, Trace};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::Serialize;

use super::{Covered, GROUP_EXAMPLES, blocking};
use crate::query::{AppError, Result, rollups};
use crate::storage::filter::{duration, span_matches};
use crate::storage::{MAX_LIMIT, Storage};

/// Most points of the error-spike series: a 1 h window is read in 1 min
/// points, 10 min in 10 s points.
pub const SPIKE_POINTS: usize = 60;
/// Index lookups for examples run at most this many at a time.
const LOOKUPS_AT_ONCE: usize = 8;
/// Most groups (of each of latency and error spikes) whose examples are
/// looked up: those with the worst score.
const GROUPS_WITH_EXAMPLES: usize = 50;
/// Traces read per example lookup.
const EXAMPLE_TRACES: u32 = 20;

/// The answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct AnomalyAnswer {
    /// The most significant single anomalies, at most `limit`: the error
    /// spikes, each latency group's examples, the structural anomalies.
    anomalies: Vec<Anomaly>,
    /// Every anomaly found, grouped; the most severe group first.
    groups: Vec<AnomalyGroup>,
    /// The window asked for, Unix µs.
    start_us: u64,
    end_us: u64,
    /// What the roll-up figures cover (whole buckets).
    #[serde(flatten)]
    covered: Covered,
    /// What the structural anomalies were found in.
    #[serde(flatten)]
    structural: Structural,
}

/// The traces new call edges and missing children were looked for in.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Structural {
    /// Traces read.
    structural_from_traces: usize,
    /// True when the window held more traces than were read.
    structural_truncated: bool,
    /// When truncated: the earliest start of the traces read.
    #[serde(skip_serializing_if = "Option::is_none")]
    structural_from_us: Option<u64>,
}

/// The traces of `[start, end]` (with a span of `service`, unless empty),
/// at most [`MAX_LIMIT`], most recent first.
async fn recent_traces(
    st: &dyn Storage,
    service: &str,
    start: u64,
    end: u64,
) -> Result<(Vec<Trace>, Structural)> {
    let traces = st
        .list_traces(&FilterCriteria {
            service: service.to_owned(),
            start_time_min_unix_nano: start,
            start_time_max_unix_nano: end,
            limit: MAX_LIMIT as u32,
            ..Default::default()
        })
        .await?;
    let truncated = traces.len() >= MAX_LIMIT;
    let from_us = truncated
        .then(|| {
            traces
                .iter()
                .flat_map(|t| &t.spans)
                .map(|s| s.start_time_unix_nano)
                .min()
        })
        .flatten()
        .map(|ns| ns.max(start) / 1_000);
    let structural = Structural {
        structural_from_traces: traces.len(),
        structural_truncated: truncated,
        structural_from_us: from_us,
    };
    Ok((traces, structural))
}

/// The anomalies of `[start, end]` for `service` (every service when
/// empty), at most `limit` listed singly.
pub(super) async fn answer(
    st: Arc<dyn Storage>,
    service: String,
    (start, end): (u64, u64),
    limit: usize,
) -> Result<AnomalyAnswer> {
    let res = resolution(start, end, SPIKE_POINTS);
    let buckets = rollups::buckets(st.as_ref(), &res).await?;
    let (traces, structural) = recent_traces(st.as_ref(), &service, start, end).await?;
    let svc = service.clone();
    let (found, mut singles) = blocking(move || detect(&buckets, &res, &traces, &svc)).await?;
    let st = st.as_ref();
    let latency = with_examples(st, found.latency, &res).await?;
    let spikes = spike_examples(st, found.spikes, res.step_nanos).await?;
    singles.extend(spikes);
    let mut groups = group_anomalies(&singles, GROUP_EXAMPLES);
    for (g, examples) in latency {
        singles.extend(examples.iter().cloned());
        groups.push(g.into_group(examples));
    }
    sort_groups(&mut groups);
    sort_anomalies(&mut singles);
    singles.truncate(limit);
    Ok(AnomalyAnswer {
        anomalies: singles,
        groups,
        start_us: start / 1_000,
        end_us: end / 1_000,
        covered: Covered::from(&res),
        structural,
    })
}

/// The roll-up anomalies of `service`'s keys (every key when empty) and
/// the structural anomalies of the traces.
fn detect(
    buckets: &[Bucket],
    res: &Resolution,
    traces: &[Trace],
    service: &str,
) -> (clew_analysis::WindowAnomalies, Vec<Anomaly>) {
    let cfg = AnomalyConfig {
        limit: usize::MAX,
        ..Default::default()
    };
    let found = window_anomalies(buckets, res, &cfg, GROUP_EXAMPLES, |k| {
        service.is_empty() || k.service == service
    });
    let mut structural = detect_structural(traces, &cfg);
    if !service.is_empty() {
        structural.retain(|a| a.service == service);
    }
    (found, structural)
}

/// The latency groups, each with its examples (none past the first
/// [`GROUPS_WITH_EXAMPLES`]).
async fn with_examples(
    st: &dyn Storage,
    groups: Vec<LatencyGroup>,
    res: &Resolution,
) -> Result<Vec<(LatencyGroup, Vec<Anomaly>)>> {
    stream::iter(groups.into_iter().enumerate())
        .map(|(k, g)| async move {
            let examples = if k < GROUPS_WITH_EXAMPLES {
                latency_examples(st, &g, res).await?
            } else {
                Vec::new()
            };
            Ok::<_, AppError>((g, examples))
        })
        .buffered(LOOKUPS_AT_ONCE)
        .try_collect()
        .await
}

/// The spans of `traces` matching `filter` whose kind is `span_kind`.
fn matching<'a>(
    traces: &'a [Trace],
    filter: &'a FilterCriteria,
    span_kind: &'a str,
) -> impl Iterator<Item = &'a Span> + 'a {
    traces
        .iter()
        .flat_map(|t| &t.spans)
        .filter(move |s| span_matches(s, filter) && kind_name(s.kind) == span_kind)
}

/// The worst [`GROUP_EXAMPLES`] spans of a latency group in the index:
/// first from the floor of its worst spans; when sampling left fewer of
/// those, from its threshold.
async fn latency_examples(
    st: &dyn Storage,
    g: &LatencyGroup,
    res: &Resolution,
) -> Result<Vec<Anomaly>> {
    let mut filter = FilterCriteria {
        service: g.service.clone(),
        operation: g.operation.clone(),
        min_duration_nanos: g.examples_min_nanos,
        start_time_min_unix_nano: res.from_unix_nanos,
        start_time_max_unix_nano: res.to_unix_nanos.saturating_sub(1),
        limit: EXAMPLE_TRACES,
        ..Default::default()
    };
    let mut traces = st.list_traces(&filter).await?;
    let above = g.threshold_nanos.saturating_add(1);
    if matching(&traces, &filter, g.span_kind).count() < GROUP_EXAMPLES
        && filter.min_duration_nanos > above
    {
        filter.min_duration_nanos = above;
        traces = st.list_traces(&filter).await?;
    }
    let mut spans: Vec<&Span> = matching(&traces, &filter, g.span_kind).collect();
    // Worst first: the longest, then the most recent.
    spans.sort_by(|a, b| {
        duration(b)
            .cmp(&duration(a))
            .then(b.start_time_unix_nano.cmp(&a.start_time_unix_nano))
    });
    spans.dedup_by(|a, b| a.trace_id == b.trace_id && a.span_id == b.span_id);
    Ok(spans
        .into_iter()
        .take(GROUP_EXAMPLES)
        .map(|s| g.example(&s.trace_id, &s.span_id, s.start_time_unix_nano, duration(s)))
        .collect())
}

/// The error spikes with an example each (an error span of the operation
/// in the spike's point, the most recent), for the worst
/// [`GROUP_EXAMPLES`] spikes of the [`GROUPS_WITH_EXAMPLES`] operations
/// spiking hardest; the other spikes keep none.
async fn spike_examples(
    st: &dyn Storage,
    mut spikes: Vec<Anomaly>,
    step_nanos: u64,
) -> Result<Vec<Anomaly>> {
    // Highest score first, so each operation's first spikes are its worst.
    sort_anomalies(&mut spikes);
    let mut per_key: HashMap<(&str, &str, &str), usize> = HashMap::new();
    let mut wanted = Vec::new();
    for (i, a) in spikes.iter().enumerate() {
        let key = (a.service.as_str(), a.operation.as_str(), a.span_kind);
        if !per_key.contains_key(&key) && per_key.len() >= GROUPS_WITH_EXAMPLES {
            continue;
        }
        let n = per_key.entry(key).or_insert(0);
        if *n < GROUP_EXAMPLES {
            *n += 1;
            wanted.push(i);
        }
    }
    let found: Vec<(usize, Option<Ids>)> = stream::iter(wanted)
        .map(|i| {
            let a = &spikes[i];
            async move { Ok::<_, AppError>((i, spike_example(st, a, step_nanos).await?)) }
        })
        .buffered(LOOKUPS_AT_ONCE)
        .try_collect()
        .await?;
    for (i, example) in found {
        if let Some((trace_id, span_id)) = example {
            spikes[i].trace_id = Some(clew_analysis::hex(&trace_id));
            spikes[i].span_id = Some(clew_analysis::hex(&span_id));
        }
    }
    Ok(spikes)
}

/// A span's trace id and span id.
type Ids = (Vec<u8>, Vec<u8>);

/// The most recent error span of a spike's operation in its point.
async fn spike_example(st: &dyn Storage, a: &Anomaly, step_nanos: u64) -> Result<Option<Ids>> {
    let from = a.time_us.saturating_mul(1_000);
    let filter = FilterCriteria {
        service: a.service.clone(),
        operation: a.operation.clone(),
        errors_only: true,
        start_time_min_unix_nano: from,
        start_time_max_unix_nano: from.saturating_add(step_nanos).saturating_sub(1),
        limit: EXAMPLE_TRACES,
        ..Default::default()
    };
    let traces = st.list_traces(&filter).await?;
    Ok(matching(&traces, &filter, a.span_kind)
        .max_by_key(|s| s.start_time_unix_nano)
        .map(|s| (s.trace_id.clone(), s.span_id.clone())))
}
