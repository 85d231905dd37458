//! The policy file: the `policies` list of the OpenTelemetry Collector
//! contrib `tail_sampling` processor, with the same field names and nesting
//! (`processor/tailsamplingprocessor/config.go` upstream).
//!
//! ```yaml
//! policies:
//!   - name: errors
//!     type: status_code
//!     status_code: {status_codes: [ERROR]}
//!   - name: slow
//!     type: latency
//!     latency: {threshold_ms: 5000}
//! ```
//!
//! Every struct refuses unknown fields, so a misspelt field is an error
//! naming its line rather than a setting silently ignored.

use serde::{Deserialize, Deserializer};

use super::error::ConfigError;

/// A tail-sampling policy file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    /// The policies, evaluated for every trace when it goes idle. Drop
    /// policies are evaluated first, then the others in file order.
    pub policies: Vec<PolicyConfig>,
    /// Stop at the first policy that says "sample", leaving the policies
    /// after it unevaluated (and their rate budgets untouched). Default false.
    #[serde(default)]
    pub sample_on_first_match: bool,
}

impl SamplingConfig {
    /// Parses a policy file (YAML, or JSON, which is YAML too). Errors name
    /// the line and column; the policies are checked only by
    /// [`Engine::new`](super::Engine::new).
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let blank = |l: &str| l.trim().is_empty() || l.trim_start().starts_with('#');
        if text.lines().all(blank) {
            return Err(ConfigError::Empty);
        }
        serde_saphyr::from_str(text).map_err(|e| ConfigError::from_yaml(&e, text))
    }
}

/// A value with the line it was read from (0 when not read from YAML).
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// The 1-based line of the value in the file; 0 when unknown.
    pub line: u64,
}

impl<T> Located<T> {
    /// A value with no known line.
    pub fn new(value: T) -> Self {
        Located { value, line: 0 }
    }
}

impl<T: Default> Default for Located<T> {
    fn default() -> Self {
        Located::new(T::default())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = serde_saphyr::Spanned::<T>::deserialize(d)?;
        Ok(Located {
            line: spanned.referenced.line(),
            value: spanned.value,
        })
    }
}

/// One policy: a name, a type, and the block of settings named after the
/// type (`latency: {...}` for `type: latency`). `always_sample` has no block.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The policy's name, unique among the top-level policies and among the
    /// sub-policies of one composite; it labels the policy's metrics.
    pub name: Located<String>,
    /// What the policy looks at.
    #[serde(rename = "type")]
    pub kind: Located<PolicyType>,
    /// Settings of a `latency` policy.
    pub latency: Option<LatencyConfig>,
    /// Settings of a `status_code` policy.
    pub status_code: Option<StatusCodeConfig>,
    /// Settings of a `probabilistic` policy.
    pub probabilistic: Option<ProbabilisticConfig>,
    /// Settings of a `string_attribute` policy.
    pub string_attribute: Option<StringAttributeConfig>,
    /// Settings of a `numeric_attribute` policy.
    pub numeric_attribute: Option<NumericAttributeConfig>,
    /// Settings of a `boolean_attribute` policy.
    pub boolean_attribute: Option<BooleanAttributeConfig>,
    /// Settings of a `rate_limiting` policy.
    pub rate_limiting: Option<RateLimitingConfig>,
    /// Settings of a `span_count` policy.
    pub span_count: Option<SpanCountConfig>,
    /// Settings of a `trace_state` policy.
    pub trace_state: Option<TraceStateConfig>,
    /// Settings of an `and` policy.
    pub and: Option<AndConfig>,
    /// Settings of a `composite` policy.
    pub composite: Option<CompositeConfig>,
    /// Settings of a `drop` policy.
    pub drop: Option<DropConfig>,
}

/// The policy types clew evaluates (upstream's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyType {
    /// Samples every trace.
    AlwaysSample,
    /// The trace's duration, earliest start to latest end.
    Latency,
    /// Any span's status code.
    StatusCode,
    /// A share of traces chosen by a hash of the trace id.
    Probabilistic,
    /// A string attribute of any span or its resource.
    StringAttribute,
    /// An integer attribute of any span or its resource.
    NumericAttribute,
    /// A boolean attribute of any span or its resource.
    BooleanAttribute,
    /// A budget of spans per second.
    RateLimiting,
    /// The number of spans in the trace.
    SpanCount,
    /// A key of any span's W3C trace state.
    TraceState,
    /// Samples when every sub-policy samples.
    And,
    /// Sub-policies in order, each with a share of a spans-per-second budget.
    Composite,
    /// Drops the trace when every sub-policy matches.
    Drop,
}

impl PolicyType {
    /// Every supported type, in upstream's documentation order.
    pub const ALL: [PolicyType; 13] = [
        PolicyType::AlwaysSample,
        PolicyType::Latency,
        PolicyType::StatusCode,
        PolicyType::Probabilistic,
        PolicyType::StringAttribute,
        PolicyType::NumericAttribute,
        PolicyType::BooleanAttribute,
        PolicyType::RateLimiting,
        PolicyType::SpanCount,
        PolicyType::TraceState,
        PolicyType::And,
        PolicyType::Composite,
        PolicyType::Drop,
    ];

    /// Upstream types clew does not evaluate, refused with a message saying so.
    pub const UNSUPPORTED: [&'static str; 6] = [
        "ottl_condition",
        "bytes_limiting",
        "trace_flags",
        "not",
        "rare_spans",
        "stratified_probabilistic",
    ];

    /// The name used in the file, which is also the settings block's key.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyType::AlwaysSample => "always_sample",
            PolicyType::Latency => "latency",
            PolicyType::StatusCode => "status_code",
            PolicyType::Probabilistic => "probabilistic",
            PolicyType::StringAttribute => "string_attribute",
            PolicyType::NumericAttribute => "numeric_attribute",
            PolicyType::BooleanAttribute => "boolean_attribute",
            PolicyType::RateLimiting => "rate_limiting",
            PolicyType::SpanCount => "span_count",
            PolicyType::TraceState => "trace_state",
            PolicyType::And => "and",
            PolicyType::Composite => "composite",
            PolicyType::Drop => "drop",
        }
    }

    /// The type with this name.
    pub fn parse(name: &str) -> Option<PolicyType> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// Whether this type holds sub-policies.
    pub fn is_compound(self) -> bool {
        matches!(
            self,
            PolicyType::And | PolicyType::Composite | PolicyType::Drop
        )
    }

    fn supported_list() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|t| t.as_str()).collect();
        names.join(", ")
    }
}

impl std::fmt::Display for PolicyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PolicyType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        if let Some(t) = PolicyType::parse(&name) {
            return Ok(t);
        }
        let message = if PolicyType::UNSUPPORTED.contains(&name.as_str()) {
            format!(
                "policy type `{name}` is not supported by clew (supported: {})",
                PolicyType::supported_list()
            )
        } else {
            format!(
                "unknown policy type `{name}` (supported: {})",
                PolicyType::supported_list()
            )
        };
        Err(serde::de::Error::custom(message))
    }
}

/// `latency`: samples traces whose duration (earliest span start to latest
/// span end, whole milliseconds) is at least `threshold_ms`, or, with an
/// upper bound, above `threshold_ms` and at most `upper_threshold_ms`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyConfig {
    /// Lower bound in milliseconds (inclusive without an upper bound,
    /// exclusive with one, as upstream).
    pub threshold_ms: Located<i64>,
    /// Upper bound in milliseconds, inclusive; 0 or absent for none.
    #[serde(default)]
    pub upper_threshold_ms: i64,
}

/// A span status code, as upstream spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum StatusCodeName {
    /// `OK`.
    #[serde(rename = "OK")]
    Ok,
    /// `ERROR`.
    #[serde(rename = "ERROR")]
    Error,
    /// `UNSET` (also a span without a status).
    #[serde(rename = "UNSET")]
    Unset,
}

/// `status_code`: samples traces with a span whose status is one of these.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusCodeConfig {
    /// `OK`, `ERROR` and/or `UNSET`; at least one.
    pub status_codes: Located<Vec<StatusCodeName>>,
}

/// `probabilistic`: samples `sampling_percentage` % of traces, chosen by
/// the FNV-1a hash of the salt and the trace id (the same traces as
/// upstream with the same salt).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbabilisticConfig {
    /// Salt of the hash; empty or absent means upstream's
    /// `default-hash-seed`. Give collector layers with different rates
    /// different salts, or the traces one keeps are the ones the other keeps.
    #[serde(default)]
    pub hash_salt: String,
    /// The share of traces to sample, 0 to 100.
    pub sampling_percentage: Located<f64>,
}

/// `string_attribute`: samples traces where a span or its resource has the
/// attribute `key` with a string value equal to one of `values` (or, with
/// `enabled_regex_matching`, matching one of them as a regular expression
/// anywhere in the value).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringAttributeConfig {
    /// The attribute key.
    pub key: String,
    /// The values (or regular expressions); at least one.
    pub values: Located<Vec<Located<String>>>,
    /// Treat `values` as regular expressions (Rust `regex` syntax, close to
    /// Go's RE2), unanchored as upstream: `/health` matches `/api/health`.
    #[serde(default)]
    pub enabled_regex_matching: bool,
    /// Upstream's size of a cache of regex results; accepted for
    /// compatibility and unused (matching is not cached, so a decision never
    /// depends on what was matched before).
    #[serde(default)]
    pub cache_max_size: i64,
    /// Sample traces where NO span or resource matches instead (an
    /// "inverted" decision, see the combination rules).
    #[serde(default)]
    pub invert_match: bool,
}

/// `numeric_attribute`: samples traces where a span or its resource has the
/// integer attribute `key` within `[min_value, max_value]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumericAttributeConfig {
    /// The attribute key.
    pub key: String,
    /// Lowest matching value, inclusive; absent for no lower bound.
    #[serde(default)]
    pub min_value: Option<i64>,
    /// Highest matching value, inclusive; absent for no upper bound. At
    /// least one bound must be given.
    #[serde(default)]
    pub max_value: Option<i64>,
    /// Sample traces where NO span or resource matches instead.
    #[serde(default)]
    pub invert_match: bool,
}

/// `boolean_attribute`: samples traces where a span or its resource has the
/// boolean attribute `key` equal to `value`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BooleanAttributeConfig {
    /// The attribute key.
    pub key: String,
    /// The value that matches.
    pub value: bool,
    /// Sample traces where NO span or resource matches instead.
    #[serde(default)]
    pub invert_match: bool,
}

/// `rate_limiting`: samples while a token bucket of spans allows: it holds
/// at most `burst_capacity` spans, refills at `spans_per_second`, and a
/// trace takes as many tokens as it has spans (upstream's token bucket).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitingConfig {
    /// Spans per second, more than 0.
    pub spans_per_second: Located<i64>,
    /// Most spans passed at once; absent for twice `spans_per_second`.
    #[serde(default)]
    pub burst_capacity: Option<Located<i64>>,
}

/// `span_count`: samples traces with at least `min_spans` spans and, when
/// `max_spans` is set, at most `max_spans`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpanCountConfig {
    /// Fewest spans, inclusive.
    #[serde(default)]
    pub min_spans: i64,
    /// Most spans, inclusive; 0 or absent for no upper bound.
    #[serde(default)]
    pub max_spans: i64,
}

/// `trace_state`: samples traces with a span whose W3C trace state has
/// `key` set to one of `values`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceStateConfig {
    /// The trace-state key.
    pub key: String,
    /// The matching values; at least one.
    pub values: Located<Vec<String>>,
}

/// `and`: samples when every sub-policy samples.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AndConfig {
    /// The sub-policies (not `and`, `composite` or `drop`); at least one.
    pub and_sub_policy: Located<Vec<PolicyConfig>>,
}

/// `drop`: drops the trace, whatever the other policies say, when every
/// sub-policy samples it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropConfig {
    /// The sub-policies (not `and`, `composite` or `drop`); at least one.
    pub drop_sub_policy: Located<Vec<PolicyConfig>>,
}

/// `composite`: the first sub-policy (in `policy_order`) that samples the
/// trace decides, within its share of `max_total_spans_per_second`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompositeConfig {
    /// The most spans the composite samples per second, more than 0.
    pub max_total_spans_per_second: Located<i64>,
    /// Sub-policy names in evaluation order; sub-policies not named follow
    /// in file order.
    #[serde(default)]
    pub policy_order: Vec<Located<String>>,
    /// The sub-policies (not `composite` or `drop`); at least one.
    pub composite_sub_policy: Located<Vec<PolicyConfig>>,
    /// Shares of the budget by sub-policy name.
    #[serde(default)]
    pub rate_allocation: Vec<RateAllocationConfig>,
}

/// A sub-policy's share of a composite's budget.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateAllocationConfig {
    /// The sub-policy's name.
    pub policy: Located<String>,
    /// Its share in percent, 0 to 100; 0 or absent gives an equal share
    /// (`max_total_spans_per_second` / number of sub-policies), as upstream.
    #[serde(default)]
    pub percent: Located<i64>,
}
