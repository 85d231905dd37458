//! The policies with a rate budget. They never read the clock: the time of
//! each decision is an argument, so replaying the same traces at the same
//! times in the same order spends the budgets the same way.

use super::policy::{Policy, TraceView};

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// `rate_limiting` (upstream `rate_limiting.go`, a
/// `golang.org/x/time/rate` limiter): a bucket of at most `burst` spans,
/// full at the first decision, refilled continuously at `rate` spans per
/// second; a trace passes when the bucket holds at least its span count,
/// which it then takes. A time earlier than the last pass refills nothing.
///
/// Differs from upstream only in arithmetic: tokens are counted exactly
/// (in spans × 10⁹, integers) where Go uses `float64`.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    /// Spans per second.
    rate: u64,
    /// Most spans held.
    burst: u64,
    /// Spans held × 10⁹, as of `last`.
    tokens: u128,
    /// Time of the last pass; `None` before the first decision.
    last: Option<u64>,
}

impl TokenBucket {
    pub fn new(spans_per_second: u64, burst: u64) -> Self {
        TokenBucket {
            rate: spans_per_second,
            burst,
            tokens: 0,
            last: None,
        }
    }

    /// Whether `spans` may pass at `now` (Unix nanoseconds), taking them
    /// from the bucket if so (Go's `Limiter.AllowN`).
    pub fn allow(&mut self, spans: u64, now: u64) -> bool {
        let full = u128::from(self.burst) * u128::from(NANOS_PER_SECOND);
        let held = match self.last {
            None => full,
            Some(last) => {
                let refill = u128::from(now.saturating_sub(last)) * u128::from(self.rate);
                self.tokens.saturating_add(refill).min(full)
            }
        };
        let need = u128::from(spans) * u128::from(NANOS_PER_SECOND);
        if spans > self.burst || held < need {
            return false;
        }
        self.tokens = held - need;
        self.last = Some(now);
        true
    }
}

/// One sub-policy of a composite, with its share of the budget.
#[derive(Debug)]
pub(crate) struct SubPolicy {
    pub policy: Policy,
    /// Spans per second it may sample; `None` for no share of its own (it
    /// may use what the whole composite has left).
    pub allocation: Option<u64>,
    /// Spans it sampled in the current second.
    pub sampled: u64,
}

/// `composite` (upstream `composite.go`): the sub-policies in order; the
/// first that samples the trace (`Sampled` or `InvertSampled`) decides:
/// sampled if its spans still fit this second's budget, not sampled if not
/// (no later sub-policy is asked). Budgets restart at each Unix second of
/// the decision time.
///
/// Differs from upstream, where a sub-policy without a `rate_allocation`
/// entry gets a budget of 0 (it never samples a trace with spans) and
/// `max_total_spans_per_second` bounds each sub-policy's own count rather
/// than their sum: here a sub-policy without an entry may sample while the
/// composite's total this second stays within `max_total_spans_per_second`
/// (the "remaining capacity" upstream's README describes), and the total
/// of all sub-policies never exceeds it.
#[derive(Debug)]
pub(crate) struct Composite {
    pub max_total: u64,
    pub subs: Vec<SubPolicy>,
    /// The Unix second the counters are for.
    second: Option<u64>,
    /// Spans sampled by all sub-policies in that second.
    total: u64,
}

impl Composite {
    pub fn new(max_total: u64, subs: Vec<SubPolicy>) -> Self {
        Composite {
            max_total,
            subs,
            second: None,
            total: 0,
        }
    }

    /// Whether the composite samples `trace` at `now` (Unix nanoseconds).
    pub fn evaluate(&mut self, trace: &TraceView<'_>, now: u64) -> bool {
        let second = now / NANOS_PER_SECOND;
        if self.second != Some(second) {
            self.second = Some(second);
            self.total = 0;
            self.subs.iter_mut().for_each(|s| s.sampled = 0);
        }
        let spans = trace.span_count;
        for sub in &mut self.subs {
            if !sub.policy.evaluate(trace, now).is_sampling() {
                continue;
            }
            let own = sub.sampled.saturating_add(spans);
            let total = self.total.saturating_add(spans);
            if sub.allocation.is_some_and(|a| own > a) || total > self.max_total {
                // Over budget: not sampled, and nothing spent, so a smaller
                // trace may still fit this second (as upstream).
                return false;
            }
            sub.sampled = own;
            self.total = total;
            return true;
        }
        false
    }
}
