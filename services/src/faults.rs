//! Injected latency and failures.

use std::time::Duration;

use rand::Rng as _;

/// Fault-injection knobs of a demo service.
#[derive(Debug, Clone, clap::Args)]
pub struct Faults {
    /// Added latency per handled call (e.g. `5ms`).
    #[arg(long, env = "CLEW_DEMO_LATENCY", default_value = "2ms", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// Uniform random extra latency, up to this much.
    #[arg(long, env = "CLEW_DEMO_JITTER", default_value = "3ms", value_parser = humantime::parse_duration)]
    pub jitter: Duration,
    /// Share of calls (0..=1) that take `--spike-latency` longer.
    #[arg(long, env = "CLEW_DEMO_SPIKE_RATE", default_value_t = 0.0)]
    pub spike_rate: f64,
    /// Extra latency of a spike.
    #[arg(long, env = "CLEW_DEMO_SPIKE_LATENCY", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub spike_latency: Duration,
    /// Share of calls (0..=1) that fail.
    #[arg(long, env = "CLEW_DEMO_ERROR_RATE", default_value_t = 0.0)]
    pub error_rate: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            spike_rate: 0.0,
            spike_latency: Duration::ZERO,
            error_rate: 0.0,
        }
    }
}

/// What the dice said for one call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Roll {
    /// How long to wait.
    pub delay: Duration,
    /// Whether the call was a latency spike.
    pub spiked: bool,
    /// Whether the call must fail.
    pub fail: bool,
}

impl Faults {
    /// Checks the rates are in `0..=1`.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("error-rate", self.error_rate),
            ("spike-rate", self.spike_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("--{name} must be between 0 and 1, got {v}"));
            }
        }
        Ok(())
    }

    /// Decides one call's fate.
    pub fn roll(&self) -> Roll {
        let mut rng = rand::rng();
        let mut delay = self.latency;
        if !self.jitter.is_zero() {
            delay += self.jitter.mul_f64(rng.random::<f64>());
        }
        let spiked = self.spike_rate > 0.0 && rng.random::<f64>() < self.spike_rate;
        if spiked {
            delay += self.spike_latency;
        }
        let fail = self.error_rate > 0.0 && rng.random::<f64>() < self.error_rate;
        Roll {
            delay,
            spiked,
            fail,
        }
    }

    /// Waits the rolled delay and returns the roll.
    pub async fn apply(&self) -> Roll {
        let roll = self.roll();
        if !roll.delay.is_zero() {
            tokio::time::sleep(roll.delay).await;
        }
        roll
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_outside_zero_one_are_rejected() {
        let f = Faults {
            error_rate: 1.5,
            ..Faults::default()
        };
        assert!(f.validate().unwrap_err().contains("error-rate"));
        assert!(Faults::default().validate().is_ok());
    }

    #[test]
    fn certain_failure_and_spike_always_happen() {
        let f = Faults {
            error_rate: 1.0,
            spike_rate: 1.0,
            spike_latency: Duration::from_millis(7),
            ..Faults::default()
        };
        let r = f.roll();
        assert!(r.fail && r.spiked);
        assert_eq!(r.delay, Duration::from_millis(7));
        let none = Faults::default().roll();
        assert!(!none.fail && !none.spiked && none.delay.is_zero());
    }
}
