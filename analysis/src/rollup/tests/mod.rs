//! Tests of the roll-ups against answers computed directly from the values.

mod bucket;
mod query;
mod sketch;
mod traces;

use crate::rollup::RELATIVE_ACCURACY;

/// The sketch's bound, |estimate − v| ≤ α·v + ½ with α = 1/100, in exact
/// integers: 100·|estimate − v| ≤ v + 50.
pub(super) fn within(estimate: u64, v: u64) -> bool {
    assert_eq!(RELATIVE_ACCURACY, 0.01);
    100 * u128::from(estimate.abs_diff(v)) <= u128::from(v) + 50
}

/// A deterministic PRNG (splitmix64), so failures reproduce.
pub(super) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Roughly standard normal (Irwin–Hall of 12 uniforms).
    pub fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.unit()).sum::<f64>() - 6.0
    }
}
