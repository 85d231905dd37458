//! The engine: every policy's decision for one trace, and the final one.

use clew_proto::v1::Span;

use super::build::build_all;
use super::config::{PolicyType, SamplingConfig};
use super::error::ConfigError;
use super::policy::{Policy, PolicyDecision, TraceView};

/// What happens to a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Keep it: store it, and its late spans.
    Sampled,
    /// Do not keep it, nor its late spans.
    NotSampled,
    /// A `drop` policy matched: do not keep it, whatever the others said.
    Dropped,
}

impl Decision {
    /// Whether the trace is kept.
    pub fn is_sampled(self) -> bool {
        self == Decision::Sampled
    }

    /// `sampled`, `not_sampled` or `dropped`, as upstream's metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Decision::Sampled => "sampled",
            Decision::NotSampled => "not_sampled",
            Decision::Dropped => "dropped",
        }
    }
}

/// The decision for one trace and how it was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The final decision.
    pub decision: Decision,
    /// Each top-level policy's decision, in the order of
    /// [`Engine::policy_names`]; `None` for a policy not evaluated (after a
    /// drop, or after a sample with `sample_on_first_match`).
    pub votes: Vec<Option<PolicyDecision>>,
    /// The policy the decision is credited to (upstream's
    /// `tailsampling.policy`): the first that dropped, or the first that
    /// sampled; `None` when not sampled.
    pub decided_by: Option<usize>,
}

/// The tail sampler: the built policies of a [`SamplingConfig`] and their
/// rate budgets. One engine decides for a stream of traces; it never reads
/// the clock, so the same traces given with the same times in the same
/// order to a new engine get the same verdicts (what replaying pending
/// traces after a restart relies on).
#[derive(Debug)]
pub struct Engine {
    names: Vec<String>,
    /// Built policies, in file order.
    policies: Vec<Policy>,
    /// Evaluation order: `drop` policies first, then the others, each in
    /// file order (upstream: a drop decision takes precedence, so it is
    /// looked for first).
    order: Vec<usize>,
    sample_on_first_match: bool,
}

impl Engine {
    /// Builds the policies, refusing bad settings with an error naming the
    /// policy and its line.
    pub fn new(config: &SamplingConfig) -> Result<Self, ConfigError> {
        let policies = build_all(config)?;
        let is_drop =
            |i: &usize| (config.policies.get(*i)).is_some_and(|p| p.kind.value == PolicyType::Drop);
        let all = 0..policies.len();
        let order = all
            .clone()
            .filter(is_drop)
            .chain(all.filter(|i| !is_drop(i)));
        Ok(Engine {
            names: config
                .policies
                .iter()
                .map(|p| p.name.value.clone())
                .collect(),
            order: order.collect(),
            policies,
            sample_on_first_match: config.sample_on_first_match,
        })
    }

    /// Parses and builds a policy file.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        Engine::new(&SamplingConfig::from_yaml(text)?)
    }

    /// The top-level policies' names, in file order: the labels of the
    /// per-policy metrics and the index of [`Verdict::votes`].
    pub fn policy_names(&self) -> &[String] {
        &self.names
    }

    /// Whether some policy has a rate budget (`rate_limiting`, or a
    /// `composite`), so that decisions depend on the times and the order of
    /// earlier decisions, not on the trace alone.
    pub fn is_stateful(&self) -> bool {
        self.policies.iter().any(Policy::is_stateful)
    }

    /// Decides for one assembled trace (its spans in arrival order) at
    /// `now_unix_nanos`, the time the rate budgets are counted at. Any
    /// spans, even none or malformed ones, give a verdict.
    pub fn decide(&mut self, spans: &[Span], now_unix_nanos: u64) -> Verdict {
        let trace = TraceView::new(spans);
        let mut votes = vec![None; self.policies.len()];
        let mut evaluated = Vec::with_capacity(self.order.len());
        for &i in &self.order {
            let (Some(policy), Some(vote)) = (self.policies.get_mut(i), votes.get_mut(i)) else {
                continue;
            };
            let d = policy.evaluate(&trace, now_unix_nanos);
            *vote = Some(d);
            evaluated.push((i, d));
            if d == PolicyDecision::Dropped
                || (self.sample_on_first_match && d == PolicyDecision::Sampled)
            {
                break;
            }
        }
        let (decision, decided_by) = combine(&evaluated);
        Verdict {
            decision,
            votes,
            decided_by,
        }
    }
}

/// The final decision from the policies' decisions in evaluation order, by
/// upstream's rules (`processor.go`, `makeDecision`), first that applies:
///
/// 1. any `Dropped` → dropped;
/// 2. any `InvertNotSampled` → not sampled;
/// 3. any `Sampled` → sampled;
/// 4. any `InvertSampled` and no `NotSampled` → sampled;
/// 5. otherwise not sampled.
///
/// Also returns the policy credited: the first `Dropped` for a drop, the
/// first `Sampled` (else `InvertSampled`) for a sample.
pub fn combine(votes: &[(usize, PolicyDecision)]) -> (Decision, Option<usize>) {
    let first = |want: PolicyDecision| votes.iter().find(|(_, d)| *d == want).map(|(i, _)| *i);
    if let Some(i) = first(PolicyDecision::Dropped) {
        return (Decision::Dropped, Some(i));
    }
    if first(PolicyDecision::InvertNotSampled).is_some() {
        return (Decision::NotSampled, None);
    }
    if let Some(i) = first(PolicyDecision::Sampled) {
        return (Decision::Sampled, Some(i));
    }
    match first(PolicyDecision::InvertSampled) {
        Some(i) if first(PolicyDecision::NotSampled).is_none() => (Decision::Sampled, Some(i)),
        _ => (Decision::NotSampled, None),
    }
}
