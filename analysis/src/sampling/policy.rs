//! Built policies and how each decides for one trace.
//!
//! Each evaluator mirrors the file of the same policy in upstream's
//! `processor/tailsamplingprocessor/internal/sampling/`; the doc comment of
//! each says where clew differs.

use clew_proto::v1::Span;

use super::leaf::{AttributeMatch, Latency, Probabilistic, SpanCount, StatusCodes, TraceState};
use super::rate::{Composite, TokenBucket};

/// What one policy says about one trace (upstream's `samplingpolicy.Decision`
/// values that a policy can return).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyDecision {
    /// Keep the trace.
    Sampled,
    /// This policy does not keep the trace.
    NotSampled,
    /// An `invert_match` policy found no match: keep the trace unless
    /// another policy says `NotSampled` (upstream's deprecated
    /// `InvertSampled`).
    InvertSampled,
    /// An `invert_match` policy found a match: do not keep the trace,
    /// whatever the others say short of a drop (upstream's deprecated
    /// `InvertNotSampled`).
    InvertNotSampled,
    /// A `drop` policy matched: the trace is dropped whatever the others say.
    Dropped,
}

impl PolicyDecision {
    /// The decision as upstream's per-policy metric labels it:
    /// `sampled`, `not_sampled` or `dropped` (inverted decisions fold into
    /// the first two).
    pub fn label(self) -> &'static str {
        match self {
            PolicyDecision::Sampled | PolicyDecision::InvertSampled => "sampled",
            PolicyDecision::NotSampled | PolicyDecision::InvertNotSampled => "not_sampled",
            PolicyDecision::Dropped => "dropped",
        }
    }

    /// Whether this says "sample" (`Sampled` or `InvertSampled`), as a
    /// composite's sub-policy must to spend the composite's budget.
    pub(crate) fn is_sampling(self) -> bool {
        matches!(
            self,
            PolicyDecision::Sampled | PolicyDecision::InvertSampled
        )
    }

    /// Whether a sub-policy of `and` or `drop` counts this as a
    /// match (upstream: anything but `NotSampled` and `InvertNotSampled`).
    pub(crate) fn matched(self) -> bool {
        !matches!(
            self,
            PolicyDecision::NotSampled | PolicyDecision::InvertNotSampled
        )
    }

    /// `Sampled` when `hit`, else `NotSampled`; the inverted pair when
    /// `invert` (then a hit means "not sampled").
    pub(crate) fn from_match(hit: bool, invert: bool) -> Self {
        match (invert, hit) {
            (false, true) => PolicyDecision::Sampled,
            (false, false) => PolicyDecision::NotSampled,
            (true, true) => PolicyDecision::InvertNotSampled,
            (true, false) => PolicyDecision::InvertSampled,
        }
    }
}

/// One assembled trace as the policies see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TraceView<'a> {
    /// Its spans, in arrival order.
    pub spans: &'a [Span],
    /// The trace id of its first span (empty for an empty trace).
    pub trace_id: &'a [u8],
    /// Its number of spans, as upstream's `SpanCount`.
    pub span_count: u64,
}

impl<'a> TraceView<'a> {
    pub fn new(spans: &'a [Span]) -> Self {
        TraceView {
            spans,
            trace_id: spans.first().map_or(&[][..], |s| &s.trace_id[..]),
            span_count: spans.len() as u64,
        }
    }
}

/// A built policy.
#[derive(Debug)]
pub(crate) enum Policy {
    AlwaysSample,
    Latency(Latency),
    StatusCode(StatusCodes),
    Probabilistic(Probabilistic),
    Attribute(AttributeMatch),
    RateLimiting(TokenBucket),
    SpanCount(SpanCount),
    TraceState(TraceState),
    And(Vec<Policy>),
    Drop(Vec<Policy>),
    Composite(Composite),
}

impl Policy {
    /// The policy's decision for `trace` at `now_unix_nanos` (read only by
    /// the policies with a rate budget).
    pub fn evaluate(&mut self, trace: &TraceView<'_>, now_unix_nanos: u64) -> PolicyDecision {
        let hit = |b| PolicyDecision::from_match(b, false);
        match self {
            Policy::AlwaysSample => PolicyDecision::Sampled,
            Policy::Latency(p) => hit(p.matches(trace.spans)),
            Policy::StatusCode(p) => hit(p.matches(trace.spans)),
            Policy::Probabilistic(p) => hit(p.matches(trace.trace_id)),
            Policy::Attribute(p) => p.evaluate(trace.spans),
            Policy::RateLimiting(b) => hit(b.allow(trace.span_count, now_unix_nanos)),
            Policy::SpanCount(p) => hit(p.matches(trace.span_count)),
            Policy::TraceState(p) => hit(p.matches(trace.spans)),
            Policy::And(subs) => hit(all_match(subs, trace, now_unix_nanos)),
            Policy::Drop(subs) => match all_match(subs, trace, now_unix_nanos) {
                true => PolicyDecision::Dropped,
                false => PolicyDecision::NotSampled,
            },
            Policy::Composite(c) => hit(c.evaluate(trace, now_unix_nanos)),
        }
    }

    /// Whether the decision depends on earlier decisions and the time.
    pub fn is_stateful(&self) -> bool {
        match self {
            Policy::RateLimiting(_) | Policy::Composite(_) => true,
            Policy::And(subs) | Policy::Drop(subs) => subs.iter().any(Policy::is_stateful),
            _ => false,
        }
    }
}

/// `and` and `drop` (upstream `and.go`, `drop.go`): sub-policies in order,
/// stopping at the first that does not match, so a later rate budget is
/// spent only on traces the earlier sub-policies let through.
fn all_match(subs: &mut [Policy], trace: &TraceView<'_>, now: u64) -> bool {
    subs.iter_mut().all(|p| p.evaluate(trace, now).matched())
}
