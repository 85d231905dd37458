//! Anomalies folded into one row per (kind, service, operation, span kind).
//!
//! A latency spike that recurs all through a window makes one anomaly per
//! slow span; read one by one they say the same thing hundreds of times.
//! A group says it once: how many, against which baseline, how bad at
//! worst, from when to when, and the worst few as examples to open. The
//! anomaly kind is part of the key because a group's value and baseline
//! are in the kind's unit (a duration, an error rate, a count of calls).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Anomaly, AnomalyKind, Baseline, fmt_dur};

/// The anomalies of one (kind, service, operation, span kind).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnomalyGroup {
    /// What kind.
    pub kind: AnomalyKind,
    /// The service concerned (the caller, for call edges).
    pub service: String,
    /// The operation concerned (the caller's, for call edges).
    pub operation: String,
    /// The span kind (see [`Anomaly::span_kind`]).
    pub span_kind: &'static str,
    /// How many anomalies: slow spans, spiking stretches of the window,
    /// new calls, or runs missing a call.
    pub count: usize,
    /// The baseline the worst one broke. Latency outliers of one group all
    /// share it: the median and MAD of the operation's durations in the
    /// window.
    pub baseline: Baseline,
    /// The worst one's observed value: duration in microseconds, error
    /// rate, or calls.
    pub worst_value: f64,
    /// The worst one's score (see [`Anomaly::score`]).
    pub worst_score: f64,
    /// The worst value over the baseline: times the median duration
    /// (latency), times the usual error rate (spikes); absent when the
    /// baseline is zero or has no such figure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// The earliest anomaly, Unix microseconds.
    pub first_us: u64,
    /// The latest anomaly, Unix microseconds.
    pub last_us: u64,
    /// One plain sentence about the whole group.
    pub message: String,
    /// The worst anomalies (highest score, then most recent), each with
    /// its trace and span.
    pub examples: Vec<Anomaly>,
}

impl AnomalyKind {
    /// The order kinds are listed in: errors first, then latency, then the
    /// structural ones.
    pub(crate) fn rank(self) -> u8 {
        match self {
            AnomalyKind::ErrorSpike => 0,
            AnomalyKind::LatencyOutlier => 1,
            AnomalyKind::NewEdge => 2,
            AnomalyKind::MissingChild => 3,
        }
    }
}

/// Worst first: highest score, then most recent.
fn worse(a: &Anomaly, b: &Anomaly) -> std::cmp::Ordering {
    b.score.total_cmp(&a.score).then(b.time_us.cmp(&a.time_us))
}

/// Folds `anomalies` into one group per (kind, service, operation, span
/// kind), each with at most `examples` of its worst anomalies. Groups are
/// sorted by severity: by kind (error spikes, latency outliers, new calls,
/// missing calls), then worst score, then count.
pub fn group_anomalies(anomalies: &[Anomaly], examples: usize) -> Vec<AnomalyGroup> {
    type Key<'a> = (u8, &'a str, &'a str, &'static str);
    let mut by_key: BTreeMap<Key<'_>, Vec<&Anomaly>> = BTreeMap::new();
    for a in anomalies {
        let key = (
            a.kind.rank(),
            a.service.as_str(),
            a.operation.as_str(),
            a.span_kind,
        );
        by_key.entry(key).or_default().push(a);
    }
    let mut groups: Vec<AnomalyGroup> = by_key
        .into_values()
        .map(|mut members| {
            members.sort_by(|a, b| worse(a, b));
            group(&members, examples)
        })
        .collect();
    sort_groups(&mut groups);
    groups
}

/// Sorts groups by severity, as [`group_anomalies`] returns them: by kind
/// (error spikes, latency outliers, new calls, missing calls), then worst
/// score, then count.
pub fn sort_groups(groups: &mut [AnomalyGroup]) {
    groups.sort_by(|a, b| {
        a.kind
            .rank()
            .cmp(&b.kind.rank())
            .then(b.worst_score.total_cmp(&a.worst_score))
            .then(b.count.cmp(&a.count))
    });
}

/// One group from its members, worst first (never empty).
fn group(members: &[&Anomaly], examples: usize) -> AnomalyGroup {
    let worst = members[0];
    let ratio = match worst.kind {
        AnomalyKind::LatencyOutlier => worst.baseline.median_us,
        AnomalyKind::ErrorSpike => worst.baseline.rate,
        AnomalyKind::NewEdge | AnomalyKind::MissingChild => None,
    }
    .filter(|b| *b > 0.0)
    .map(|b| worst.value / b);
    let mut g = AnomalyGroup {
        kind: worst.kind,
        service: worst.service.clone(),
        operation: worst.operation.clone(),
        span_kind: worst.span_kind,
        count: members.len(),
        baseline: worst.baseline.clone(),
        worst_value: worst.value,
        worst_score: worst.score,
        ratio,
        first_us: members.iter().map(|a| a.time_us).min().unwrap_or(0),
        last_us: members.iter().map(|a| a.time_us).max().unwrap_or(0),
        message: String::new(),
        examples: members
            .iter()
            .take(examples)
            .map(|a| (*a).clone())
            .collect(),
    };
    g.message = message(&g);
    g
}

/// `n thing` or `n things`.
fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The group's sentence.
pub(super) fn message(g: &AnomalyGroup) -> String {
    let who = format!("{} \"{}\" ({})", g.service, g.operation, g.span_kind);
    let b = &g.baseline;
    match g.kind {
        AnomalyKind::LatencyOutlier => format!(
            "{who} was slow in {}: up to {} where it usually takes {}{} (median of {}).",
            plural(g.count, "span", "spans"),
            fmt_dur(g.worst_value),
            fmt_dur(b.median_us.unwrap_or(0.0)),
            g.ratio.map(|r| format!(", {r:.1}×")).unwrap_or_default(),
            plural(b.samples, "span", "spans"),
        ),
        AnomalyKind::ErrorSpike => format!(
            "{who} failed far more often than usual in {} of the window: up to {:.0}% of calls, against {:.1}% of {}.",
            plural(g.count, "stretch", "stretches"),
            g.worst_value * 100.0,
            b.rate.unwrap_or(0.0) * 100.0,
            plural(b.samples, "call", "calls"),
        ),
        AnomalyKind::NewEdge => format!(
            "{who} made {}, not seen in its {}.",
            plural(g.count, "new call", "new calls"),
            plural(b.samples, "earlier run", "earlier runs"),
        ),
        AnomalyKind::MissingChild => format!(
            "{} of {who} left out a call it makes in {:.0}% of its {}.",
            plural(g.count, "run", "runs"),
            b.rate.unwrap_or(0.0) * 100.0,
            plural(b.samples, "run", "runs"),
        ),
    }
}
