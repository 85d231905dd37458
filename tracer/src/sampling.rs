//! Head sampling: which traces are recorded.
//!
//! Names and arguments follow `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`
//! so configuration carries over from OpenTelemetry SDKs, plus clew's
//! rate-limiting sampler.

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use parking_lot::Mutex;

use crate::ids::{SpanContext, TraceId};

/// A head sampler.
#[derive(Debug)]
pub enum Sampler {
    /// Record every trace.
    AlwaysOn,
    /// Record none.
    AlwaysOff,
    /// Record a fixed fraction of traces, chosen from the trace id so every
    /// service makes the same decision for one trace without talking. The
    /// rule matches OpenTelemetry SDKs' `TraceIdRatioBased`.
    TraceIdRatio(f64),
    /// Follow the parent's sampled flag; use the inner sampler for roots.
    ParentBased(Box<Sampler>),
    /// At most this many new traces per second (token bucket, burst of one
    /// second's worth).
    RateLimiting(RateLimiter),
}

/// Token bucket state for [`Sampler::RateLimiting`].
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A limiter that admits `per_second` traces per second.
    pub fn new(per_second: f64) -> Self {
        let per_second = per_second.max(0.0);
        RateLimiter {
            per_second,
            state: Mutex::new((per_second.max(1.0), Instant::now())),
        }
    }

    fn admit_at(&self, now: Instant) -> bool {
        let mut s = self.state.lock();
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * self.per_second).min(self.per_second.max(1.0));
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Sampler {
    /// Decides whether a new span is recorded.
    #[inline]
    pub fn should_sample(&self, parent: Option<&SpanContext>, trace_id: TraceId) -> bool {
        match self {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::TraceIdRatio(r) => ratio_decision(*r, trace_id),
            Sampler::ParentBased(root) => match parent {
                Some(p) if p.is_valid() => p.is_sampled(),
                _ => root.should_sample(None, trace_id),
            },
            Sampler::RateLimiting(l) => l.admit_at(Instant::now()),
        }
    }

    /// Parses OpenTelemetry's sampler names with an optional argument:
    /// `always_on`, `always_off`, `traceidratio`, `parentbased_always_on`,
    /// `parentbased_always_off`, `parentbased_traceidratio`, plus
    /// `ratelimiting` and `parentbased_ratelimiting` (argument: traces/s).
    pub fn from_name(name: &str, arg: Option<&str>) -> Result<Sampler, SamplerError> {
        let ratio = || -> Result<f64, SamplerError> {
            match arg {
                None => Ok(1.0),
                Some(a) => match a.trim().parse::<f64>() {
                    Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                    _ => Err(SamplerError::BadArgument(a.to_string())),
                },
            }
        };
        let rate = || -> Result<f64, SamplerError> {
            match arg {
                None => Ok(100.0),
                Some(a) => match a.trim().parse::<f64>() {
                    Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
                    _ => Err(SamplerError::BadArgument(a.to_string())),
                },
            }
        };
        Ok(match name.trim() {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::TraceIdRatio(ratio()?),
            "ratelimiting" => Sampler::RateLimiting(RateLimiter::new(rate()?)),
            "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            "parentbased_traceidratio" => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatio(ratio()?)))
            }
            "parentbased_ratelimiting" => {
                Sampler::ParentBased(Box::new(Sampler::RateLimiting(RateLimiter::new(rate()?))))
            }
            other => return Err(SamplerError::UnknownName(other.to_string())),
        })
    }
}

impl Default for Sampler {
    /// `parentbased_always_on`, as in OpenTelemetry.
    fn default() -> Self {
        Sampler::ParentBased(Box::new(Sampler::AlwaysOn))
    }
}

impl FromStr for Sampler {
    type Err = SamplerError;

    /// `name` or `name:arg`, e.g. `parentbased_traceidratio:0.25`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some((n, a)) => Sampler::from_name(n, Some(a)),
            None => Sampler::from_name(s, None),
        }
    }
}

/// A sampler configuration that could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SamplerError {
    /// Not one of the known sampler names.
    #[error(
        "unknown sampler {0:?}; expected always_on, always_off, traceidratio, ratelimiting or a parentbased_ variant"
    )]
    UnknownName(String),
    /// The argument is not a ratio in [0, 1] or a non-negative rate.
    #[error("invalid sampler argument {0:?}")]
    BadArgument(String),
}

impl fmt::Display for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sampler::AlwaysOn => f.write_str("always_on"),
            Sampler::AlwaysOff => f.write_str("always_off"),
            Sampler::TraceIdRatio(r) => write!(f, "traceidratio:{r}"),
            Sampler::RateLimiting(l) => write!(f, "ratelimiting:{}", l.per_second),
            Sampler::ParentBased(inner) => write!(f, "parentbased_{inner}"),
        }
    }
}

/// OpenTelemetry's rule: the low 64 bits of the trace id, shifted right by
/// one, below `ratio * 2^63`.
fn ratio_decision(ratio: f64, trace_id: TraceId) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 || ratio.is_nan() {
        return false;
    }
    let bound = (ratio * (1u64 << 63) as f64) as u64;
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id.0[8..16]);
    (u64::from_be_bytes(low) >> 1) < bound
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idgen;
    use crate::ids::{SpanId, TraceFlags};
    use std::time::Duration;

    #[test]
    fn ratio_is_deterministic_and_close_to_target() {
        let s = Sampler::TraceIdRatio(0.25);
        let ids: Vec<TraceId> = (0..20_000).map(|_| idgen::trace_id()).collect();
        let first: Vec<bool> = ids.iter().map(|t| s.should_sample(None, *t)).collect();
        let again: Vec<bool> = ids.iter().map(|t| s.should_sample(None, *t)).collect();
        assert_eq!(first, again, "one trace, one decision");
        let n = first.iter().filter(|b| **b).count() as f64 / ids.len() as f64;
        assert!((0.22..0.28).contains(&n), "sampled fraction {n}");
    }

    #[test]
    fn ratio_matches_opentelemetry_rule_at_edges() {
        let low = TraceId([0xff; 16]);
        assert!(!Sampler::TraceIdRatio(0.5).should_sample(None, low));
        let high = TraceId::from_u128(1);
        assert!(Sampler::TraceIdRatio(0.0001).should_sample(None, high));
        assert!(!Sampler::TraceIdRatio(0.0).should_sample(None, high));
    }

    #[test]
    fn parent_based_follows_parent() {
        let s = Sampler::ParentBased(Box::new(Sampler::AlwaysOff));
        let mut p = SpanContext {
            trace_id: TraceId::from_u128(9),
            span_id: SpanId::from_u64(9),
            flags: TraceFlags::SAMPLED,
            ..Default::default()
        };
        assert!(s.should_sample(Some(&p), p.trace_id));
        p.flags = TraceFlags::NONE;
        assert!(!s.should_sample(Some(&p), p.trace_id));
        assert!(!s.should_sample(None, p.trace_id));
    }

    #[test]
    fn rate_limiter_admits_per_second() {
        let l = RateLimiter::new(10.0);
        let t0 = Instant::now();
        let admitted = (0..100).filter(|_| l.admit_at(t0)).count();
        assert_eq!(admitted, 10);
        assert!(!l.admit_at(t0));
        assert!(l.admit_at(t0 + Duration::from_millis(150)));
        let later = (0..100)
            .filter(|_| l.admit_at(t0 + Duration::from_secs(5)))
            .count();
        assert_eq!(later, 10, "burst is capped at one second's worth");
    }

    #[test]
    fn parse_names() {
        assert!(matches!("always_on".parse(), Ok(Sampler::AlwaysOn)));
        assert!(matches!(
            "parentbased_traceidratio:0.5".parse::<Sampler>(),
            Ok(Sampler::ParentBased(b)) if matches!(*b, Sampler::TraceIdRatio(r) if r == 0.5)
        ));
        assert_eq!(
            "traceidratio:1.5".parse::<Sampler>().err(),
            Some(SamplerError::BadArgument("1.5".into()))
        );
        assert!(matches!(
            "nope".parse::<Sampler>(),
            Err(SamplerError::UnknownName(_))
        ));
        let s: Sampler = "parentbased_ratelimiting:5".parse().unwrap();
        assert_eq!(s.to_string(), "parentbased_ratelimiting:5");
    }
}
