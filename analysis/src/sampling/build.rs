//! From the file's settings to built policies, refusing what cannot work
//! with an error naming the policy and the line.

use std::collections::{HashMap, HashSet};

use clew_proto::v1::status;
use regex::Regex;

use super::config::*;
use super::error::ConfigError;
use super::leaf::{
    AttributeMatch, Latency, Probabilistic, SpanCount, StatusCodes, TraceState, ValueTest,
};
use super::policy::Policy;
use super::rate::{Composite, SubPolicy, TokenBucket};

/// Where a policy sits, which limits its type (upstream's config nesting:
/// `and` and `drop` hold single policies, `composite` also `and`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Top,
    And,
    Drop,
    Composite,
}

impl Place {
    fn allows(self, kind: PolicyType) -> bool {
        match self {
            Place::Top => true,
            Place::And | Place::Drop => !kind.is_compound(),
            Place::Composite => !matches!(kind, PolicyType::Composite | PolicyType::Drop),
        }
    }

    fn parent(self) -> &'static str {
        match self {
            Place::Top => "",
            Place::And => "and",
            Place::Drop => "drop",
            Place::Composite => "composite",
        }
    }
}

/// The policy being built: its path of names and its name's line, for
/// errors.
struct Ctx {
    path: String,
    line: u64,
}

impl Ctx {
    /// An error at `line`, or at the policy's name when `line` is unknown.
    fn err(&self, line: u64, message: impl Into<String>) -> ConfigError {
        let line = if line == 0 { self.line } else { line };
        ConfigError::invalid(&self.path, line, message)
    }
}

/// Builds the top-level policies in file order.
pub(crate) fn build_all(config: &SamplingConfig) -> Result<Vec<Policy>, ConfigError> {
    if config.policies.is_empty() {
        return Err(ConfigError::Empty);
    }
    unique_names(&config.policies, "")?;
    config
        .policies
        .iter()
        .map(|p| build(p, Place::Top, ""))
        .collect()
}

/// Refuses a name used twice in `policies` (siblings under `parent`).
fn unique_names(policies: &[PolicyConfig], parent: &str) -> Result<(), ConfigError> {
    let mut seen: HashMap<&str, u64> = HashMap::new();
    for p in policies {
        if let Some(first) = seen.insert(&p.name.value, p.name.line) {
            let ctx = Ctx {
                path: join(parent, &p.name.value),
                line: p.name.line,
            };
            return Err(ctx.err(
                0,
                format!("name already used by the policy at line {first}"),
            ));
        }
    }
    Ok(())
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent} / {name}")
    }
}

fn build(cfg: &PolicyConfig, place: Place, parent: &str) -> Result<Policy, ConfigError> {
    let ctx = Ctx {
        path: join(parent, &cfg.name.value),
        line: cfg.name.line,
    };
    let kind = cfg.kind.value;
    if cfg.name.value.trim().is_empty() {
        return Err(ctx.err(0, "name: must not be empty"));
    }
    if !place.allows(kind) {
        return Err(ctx.err(
            cfg.kind.line,
            format!(
                "type: a `{kind}` policy cannot be a sub-policy of `{}` (`and` and `drop` \
                 hold single policies; `composite` also `and`)",
                place.parent()
            ),
        ));
    }
    check_blocks(cfg, &ctx)?;
    build_kind(cfg, &ctx)
}

/// Refuses settings blocks of another type than the policy's (upstream
/// ignores them; here `type: boolean_attribute` with a `string_attribute:`
/// block is a mistake to point at, not a policy that matches nothing).
fn check_blocks(cfg: &PolicyConfig, ctx: &Ctx) -> Result<(), ConfigError> {
    let kind = cfg.kind.value;
    let present = [
        (PolicyType::Latency, cfg.latency.is_some()),
        (PolicyType::StatusCode, cfg.status_code.is_some()),
        (PolicyType::Probabilistic, cfg.probabilistic.is_some()),
        (PolicyType::StringAttribute, cfg.string_attribute.is_some()),
        (
            PolicyType::NumericAttribute,
            cfg.numeric_attribute.is_some(),
        ),
        (
            PolicyType::BooleanAttribute,
            cfg.boolean_attribute.is_some(),
        ),
        (PolicyType::RateLimiting, cfg.rate_limiting.is_some()),
        (PolicyType::SpanCount, cfg.span_count.is_some()),
        (PolicyType::TraceState, cfg.trace_state.is_some()),
        (PolicyType::And, cfg.and.is_some()),
        (PolicyType::Composite, cfg.composite.is_some()),
        (PolicyType::Drop, cfg.drop.is_some()),
    ];
    match present.iter().find(|(t, on)| *on && *t != kind) {
        Some((other, _)) => Err(ctx.err(
            cfg.kind.line,
            format!("`{other}` settings do not apply to a `{kind}` policy"),
        )),
        None => Ok(()),
    }
}

/// The settings block of the policy's type, which must be there.
fn block<'a, T>(b: &'a Option<T>, cfg: &PolicyConfig, ctx: &Ctx) -> Result<&'a T, ConfigError> {
    let kind = cfg.kind.value;
    b.as_ref().ok_or_else(|| {
        ctx.err(
            cfg.kind.line,
            format!("a `{kind}` policy needs its settings under `{kind}:`"),
        )
    })
}

fn build_kind(cfg: &PolicyConfig, ctx: &Ctx) -> Result<Policy, ConfigError> {
    match cfg.kind.value {
        PolicyType::AlwaysSample => Ok(Policy::AlwaysSample),
        PolicyType::Latency => latency(block(&cfg.latency, cfg, ctx)?, ctx),
        PolicyType::StatusCode => status_code(block(&cfg.status_code, cfg, ctx)?, ctx),
        PolicyType::Probabilistic => probabilistic(block(&cfg.probabilistic, cfg, ctx)?, ctx),
        PolicyType::StringAttribute => string_attr(block(&cfg.string_attribute, cfg, ctx)?, ctx),
        PolicyType::NumericAttribute => numeric_attr(block(&cfg.numeric_attribute, cfg, ctx)?, ctx),
        PolicyType::BooleanAttribute => {
            let b = block(&cfg.boolean_attribute, cfg, ctx)?;
            attribute(&b.key, ValueTest::Bool(b.value), b.invert_match, ctx)
        }
        PolicyType::RateLimiting => rate_limiting(block(&cfg.rate_limiting, cfg, ctx)?, ctx),
        PolicyType::SpanCount => span_count(block(&cfg.span_count, cfg, ctx)?, ctx),
        PolicyType::TraceState => trace_state(block(&cfg.trace_state, cfg, ctx)?, ctx),
        PolicyType::And => {
            let subs = &block(&cfg.and, cfg, ctx)?.and_sub_policy;
            sub_policies(subs, "and_sub_policy", Place::And, ctx).map(Policy::And)
        }
        PolicyType::Drop => {
            let subs = &block(&cfg.drop, cfg, ctx)?.drop_sub_policy;
            sub_policies(subs, "drop_sub_policy", Place::Drop, ctx).map(Policy::Drop)
        }
        PolicyType::Composite => composite(block(&cfg.composite, cfg, ctx)?, ctx),
    }
}

fn latency(c: &LatencyConfig, ctx: &Ctx) -> Result<Policy, ConfigError> {
    let (low, high) = (c.threshold_ms.value, c.upper_threshold_ms);
    if low < 0 {
        return Err(ctx.err(
            c.threshold_ms.line,
            format!("threshold_ms: must not be negative, got {low}"),
        ));
    }
    if high < 0 || (high != 0 && high <= low) {
        return Err(ctx.err(
            c.threshold_ms.line,
            format!(
                "upper_threshold_ms: must be 0 (none) or above threshold_ms ({low}), got {high}"
            ),
        ));
    }
    Ok(Policy::Latency(Latency {
        threshold_ms: low,
        upper_threshold_ms: high,
    }))
}

fn status_code(c: &StatusCodeConfig, ctx: &Ctx) -> Result<Policy, ConfigError> {
    if c.status_codes.value.is_empty() {
        return Err(ctx.err(
            c.status_codes.line,
            "status_codes: give at least one of OK, ERROR, UNSET",
        ));
    }
    let codes = c
        .status_codes
        .value
        .iter()
        .map(|s| match s {
            StatusCodeName::Ok => status::Code::Ok as i32,
            StatusCodeName::Error => status::Code::Error as i32,
            StatusCodeName::Unset => status::Code::Unset as i32,
        })
        .collect();
    Ok(Policy::StatusCode(StatusCodes { codes }))
}

fn probabilistic(c: &ProbabilisticConfig, ctx: &Ctx) -> Result<Policy, ConfigError> {
    let pct = c.sampling_percentage.value;
    if !(0.0..=100.0).contains(&pct) {
        return Err(ctx.err(
            c.sampling_percentage.line,
            format!("sampling_percentage: must be between 0 and 100, got {pct}"),
        ));
    }
    Ok(Policy::Probabilistic(Probabilistic::new(&c.hash_salt, pct)))
}

fn string_attr(c: &StringAttributeConfig, ctx: &Ctx) -> Result<Policy, ConfigError> {
    let values = &c.values.value;
    if values.is_empty() {
        return Err(ctx.err(c.values.line, "values: give at least one value"));
    }
    let test = if c.enabled_regex_matching {
        let compiled = values.iter().map(|v| {
            Regex::new(&v.value).map_err(|e| {
                let text = e.to_string();
                let why = text.lines().last().unwrap_or_default().trim();
                let why = why.strip_prefix("error: ").unwrap_or(why);
                ctx.err(
                    v.line,
                    format!(
                        "values: `{}` is not a valid regular expression: {why}",
                        v.value
                    ),
                )
            })
        });
        ValueTest::Regex(compiled.collect::<Result<_, _>>()?)
    } else {
        ValueTest::Exact(values.iter().map(|v| v.value.clone()).collect())
    };
    attribute(&c.key, test, c.invert_match, ctx)
}

fn numeric_attr(c: &NumericAttributeConfig, ctx: &Ctx) -> Result<Policy, ConfigError> {
    let (min, max) = match (c.min_value, c.max_value) {
        (None, None) => {
            return Err(ctx.err(0, "numeric_attribute: give min_value, max_value or both"));
        }
        (min, max) => (min.unwrap_or(i64::MIN), max.unwrap_or(i64::MAX)),
    };
    if min > max {
        return Err(ctx.err(0, format!("min_value ({min}) is above max_value ({max})")));
    }
    attribute(&c.key, ValueTest::Range { min, max }, c.invert_match, ctx)
}

fn attribute(key: &str, test: ValueTest, invert: bool, ctx: &Ctx) -> Result<Policy, ConfigError> {
    if key.is_empty() {
        return Err(ctx.err(0, "key: must not be empty"));
    }
    Ok(Policy::Attribute(AttributeMatch {
        key: key.to_string(),
        test,
        invert,
    }))
}

/// A count that must be above 0.
fn positive(v: &Located<i64>, field: &str, ctx: &Ctx) -> Result<u64, ConfigError> {
    match u64::try_from(v.value) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ctx.err(v.line, format!("{field}: must be above 0, got {}", v.value))),
    }
}

fn rate_limiting(c: &RateLimitingConfig, ctx: &Ctx) -> Result<Policy, ConfigError> {
    let rate = positive(&c.spans_per_second, "spans_per_second", ctx)?;
    let burst = match &c.burst_capacity {
        Some(b) => positive(b, "burst_capacity", ctx)?,
        None => rate.saturating_mul(2),
    };
    Ok(Policy::RateLimiting(TokenBucket::new(rate, burst)))
}

fn span_count(c: &SpanCountConfig, ctx: &Ctx) -> Result<Policy, ConfigError> {
    let (Ok(min), Ok(max)) = (u64::try_from(c.min_spans), u64::try_from(c.max_spans)) else {
        return Err(ctx.err(0, "min_spans and max_spans must not be negative"));
    };
    if max != 0 && max < min {
        return Err(ctx.err(0, format!("max_spans ({max}) is below min_spans ({min})")));
    }
    Ok(Policy::SpanCount(SpanCount { min, max }))
}

fn trace_state(c: &TraceStateConfig, ctx: &Ctx) -> Result<Policy, ConfigError> {
    if c.key.is_empty() {
        return Err(ctx.err(0, "key: must not be empty"));
    }
    if c.values.value.is_empty() {
        return Err(ctx.err(c.values.line, "values: give at least one value"));
    }
    Ok(Policy::TraceState(TraceState::new(&c.key, &c.values.value)))
}

/// The sub-policies of an `and`, `drop` or `composite`, in file order.
fn sub_policies(
    subs: &Located<Vec<PolicyConfig>>,
    field: &str,
    place: Place,
    ctx: &Ctx,
) -> Result<Vec<Policy>, ConfigError> {
    if subs.value.is_empty() {
        return Err(ctx.err(subs.line, format!("{field}: give at least one sub-policy")));
    }
    subs.value
        .iter()
        .map(|p| build(p, place, &ctx.path))
        .collect()
}

fn composite(c: &CompositeConfig, ctx: &Ctx) -> Result<Policy, ConfigError> {
    let max_total = positive(
        &c.max_total_spans_per_second,
        "max_total_spans_per_second",
        ctx,
    )?;
    let configs = &c.composite_sub_policy.value;
    let built = sub_policies(
        &c.composite_sub_policy,
        "composite_sub_policy",
        Place::Composite,
        ctx,
    )?;
    unique_names(configs, &ctx.path)?;
    let names: Vec<&str> = configs.iter().map(|p| p.name.value.as_str()).collect();
    let shares = allocations(c, &names, max_total, ctx)?;
    let mut built: Vec<Option<Policy>> = built.into_iter().map(Some).collect();
    let subs = evaluation_order(c, &names, ctx)?
        .into_iter()
        .filter_map(|i| {
            Some(SubPolicy {
                policy: built.get_mut(i)?.take()?,
                allocation: shares.get(names[i]).copied(),
                sampled: 0,
            })
        })
        .collect();
    Ok(Policy::Composite(Composite::new(max_total, subs)))
}

/// Indices of the sub-policies in evaluation order: `policy_order` first,
/// then the ones it does not name in file order.
fn evaluation_order(
    c: &CompositeConfig,
    names: &[&str],
    ctx: &Ctx,
) -> Result<Vec<usize>, ConfigError> {
    let mut order = Vec::with_capacity(names.len());
    for entry in &c.policy_order {
        let Some(i) = names.iter().position(|n| *n == entry.value) else {
            return Err(ctx.err(entry.line, unknown_sub("policy_order", &entry.value, names)));
        };
        if order.contains(&i) {
            return Err(ctx.err(
                entry.line,
                format!("policy_order: `{}` is listed twice", entry.value),
            ));
        }
        order.push(i);
    }
    order.extend(
        (0..names.len())
            .filter(|i| !order.contains(i))
            .collect::<Vec<_>>(),
    );
    Ok(order)
}

fn unknown_sub(field: &str, name: &str, names: &[&str]) -> String {
    format!(
        "{field}: no sub-policy named `{name}` (sub-policies: {})",
        names.join(", ")
    )
}

/// Spans per second of each sub-policy named in `rate_allocation`:
/// `percent` % of the total (rounded down), or an equal share
/// (`max_total / number of sub-policies`) for a percent of 0, as upstream.
fn allocations(
    c: &CompositeConfig,
    names: &[&str],
    max_total: u64,
    ctx: &Ctx,
) -> Result<HashMap<String, u64>, ConfigError> {
    let mut shares = HashMap::new();
    let mut seen = HashSet::new();
    let mut sum = 0;
    for a in &c.rate_allocation {
        let (name, pct) = (&a.policy.value, a.percent.value);
        if !names.contains(&name.as_str()) {
            return Err(ctx.err(a.policy.line, unknown_sub("rate_allocation", name, names)));
        }
        if !seen.insert(name) {
            return Err(ctx.err(
                a.policy.line,
                format!("rate_allocation: `{name}` has two entries"),
            ));
        }
        let pct = match u64::try_from(pct) {
            Ok(p) if p <= 100 => p,
            _ => {
                return Err(ctx.err(
                    a.percent.line.max(a.policy.line),
                    format!(
                        "rate_allocation: percent of `{name}` must be between 0 and 100, got {pct}"
                    ),
                ));
            }
        };
        sum += pct;
        let share = match pct {
            0 => max_total / names.len() as u64,
            p => u64::try_from(u128::from(max_total) * u128::from(p) / 100).unwrap_or(u64::MAX),
        };
        shares.insert(name.clone(), share);
    }
    if sum > 100 {
        return Err(ctx.err(
            0,
            format!("rate_allocation: percents add up to {sum}, more than 100"),
        ));
    }
    Ok(shares)
}
