//! Tail sampling: which assembled traces to keep, by the policies of the
//! OpenTelemetry Collector contrib `tail_sampling` processor, with the same
//! names, file format and semantics (the differences are listed in
//! `docs/SAMPLING.md` and on each policy).
//!
//! ```
//! use clew_analysis::sampling::{Decision, Engine};
//!
//! let mut engine = Engine::from_yaml(
//!     "policies:\n  - {name: all, type: always_sample}\n",
//! )?;
//! let verdict = engine.decide(&[], 1_700_000_000_000_000_000);
//! assert_eq!(verdict.decision, Decision::Sampled);
//! assert_eq!(engine.policy_names()[verdict.decided_by.unwrap_or(0)], "all");
//! # Ok::<(), clew_analysis::sampling::ConfigError>(())
//! ```
//!
//! | part | what |
//! |---|---|
//! | [`SamplingConfig`] | the policy file, parsed from YAML (or JSON) with line numbers |
//! | [`Engine`] | the built policies; [`Engine::decide`] gives a [`Verdict`] for one trace |
//! | [`combine`] | upstream's rules from the policies' decisions to the final one |
//! | [`ConfigError`] | why a file is refused, naming the line (and the policy) |
//!
//! Pure code: no I/O and no clock. The policies with a rate budget
//! (`rate_limiting`, `composite`) count time from the `now_unix_nanos`
//! given to [`Engine::decide`].

mod build;
mod config;
mod engine;
mod error;
mod leaf;
mod policy;
mod rate;
#[cfg(test)]
mod tests;

pub use config::{
    AndConfig, BooleanAttributeConfig, CompositeConfig, DropConfig, LatencyConfig, Located,
    NumericAttributeConfig, PolicyConfig, PolicyType, ProbabilisticConfig, RateAllocationConfig,
    RateLimitingConfig, SamplingConfig, SpanCountConfig, StatusCodeConfig, StatusCodeName,
    StringAttributeConfig, TraceStateConfig,
};
pub use engine::{Decision, Engine, Verdict, combine};
pub use error::ConfigError;
pub use policy::PolicyDecision;
