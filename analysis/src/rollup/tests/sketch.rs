use proptest::prelude::*;

use super::{Rng, within};
use crate::quantile as exact_quantile;
use crate::rollup::sketch::table;
use crate::rollup::{MAX_BINS, RollupError, Sketch};

fn sketch_of(values: &[u64]) -> Sketch {
    let mut s = Sketch::new();
    values.iter().for_each(|&v| s.insert(v));
    s
}

fn encoded(s: &Sketch) -> Vec<u8> {
    let mut out = Vec::new();
    s.encode(&mut out);
    out
}

/// Every q in steps of 0.001, plus the usual percentiles.
fn quantiles() -> impl Iterator<Item = f64> {
    (0..=1000)
        .map(|i| f64::from(i) / 1000.0)
        .chain([0.5, 0.9, 0.95, 0.99, 0.999, 0.9999])
}

/// Checks every quantile of a sketch against the sorted values.
fn assert_quantiles(name: &str, values: &[u64]) {
    let s = sketch_of(values);
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    for q in quantiles() {
        let v = exact_quantile(&sorted, q);
        let est = s.quantile(q);
        assert!(
            est.is_some_and(|e| within(e, v)),
            "{name}: q={q} estimate {est:?}, exact {v}"
        );
    }
    assert_eq!(s.count(), values.len() as u64, "{name}");
    assert_eq!(s.min(), sorted.first().copied(), "{name}");
    assert_eq!(s.max(), sorted.last().copied(), "{name}");
    let sum: u128 = values.iter().map(|&v| u128::from(v)).sum();
    assert_eq!(s.sum(), sum, "{name}");
}

fn distributions() -> Vec<(&'static str, Vec<u64>)> {
    let mut rng = Rng::new(7);
    let n = 20_000;
    let uniform = (0..n).map(|_| 1_000 + rng.below(10_000_000)).collect();
    // Lognormal around 5 ms, σ = 1.5: spans decades.
    let lognormal = (0..n)
        .map(|_| (5e6 * (1.5 * rng.normal()).exp()) as u64)
        .collect();
    // Bimodal: 90 % fast around 200 µs, 10 % slow around 2 s.
    let bimodal = (0..n)
        .map(|_| {
            let centre = if rng.below(10) == 0 { 2e9 } else { 2e5 };
            (centre * (1.0 + 0.1 * rng.normal())) as u64
        })
        .collect();
    let small = (0..n).map(|_| rng.below(300)).collect();
    // Log-uniform from 1 ns to 2^40 ns (18 minutes): over 1,300 bins.
    let wide = (0..n).map(|_| rng.next() >> (24 + rng.below(40))).collect();
    vec![
        ("uniform", uniform),
        ("lognormal", lognormal),
        ("bimodal", bimodal),
        ("constant", vec![123_456_789; 1_000]),
        ("zeros", vec![0; 1_000]),
        ("small and zero", small),
        ("wide", wide),
        ("one value", vec![42]),
    ]
}

#[test]
fn every_bin_meets_the_bound_at_both_ends() {
    // The bound is checked at a bin's smallest and largest integers, the
    // worst cases (the error grows towards both ends), so every u64 is
    // covered.
    let mut prev_hi = 0;
    let mut bins = 0;
    for i in 0..table::NUM_BINS {
        let (lo, hi, value) = table::bin(i);
        if lo > hi {
            continue; // no integer maps here
        }
        bins += 1;
        assert_eq!(lo, prev_hi + 1, "bin {i} follows the previous one");
        assert!((lo..=hi).contains(&value), "bin {i}");
        assert!(
            within(value, lo) && within(value, hi),
            "bin {i}: [{lo}, {hi}] → {value}"
        );
        assert_eq!((table::bin_of(lo), table::bin_of(hi)), (i, i), "bin {i}");
        prev_hi = hi;
    }
    assert_eq!(prev_hi, u64::MAX);
    assert!(bins > MAX_BINS, "collapsing is reachable ({bins} bins)");
}

/// The guess of `bin_of` is a fast path only (the table decides), but a
/// wrong constant or polynomial would make every lookup walk the table.
#[test]
fn bin_guess_is_within_a_thousandth_of_a_bin() {
    let (used, exact) = table::bins_per_octave();
    assert!((used - exact).abs() < 1e-9, "{used} against {exact}");
    for i in 0..=10_000 {
        let t = f64::from(i) / 10_000.0;
        let (approx, exact) = table::log2_1p(t);
        assert!((approx - exact).abs() * used < 1e-3, "log2(1 + {t})");
    }
}

#[test]
fn bin_lookup_matches_the_table_for_random_values() {
    let mut rng = Rng::new(1);
    for _ in 0..200_000 {
        let v = (rng.next() >> rng.below(64)).max(1);
        let (lo, hi, _) = table::bin(table::bin_of(v));
        assert!((lo..=hi).contains(&v), "{v} in [{lo}, {hi}]");
    }
}

#[test]
fn quantiles_are_within_the_relative_accuracy() {
    for (name, values) in distributions() {
        assert_quantiles(name, &values);
    }
}

#[test]
fn empty_and_out_of_range() {
    let s = Sketch::new();
    assert_eq!(
        (s.count(), s.quantile(0.5), s.min(), s.max()),
        (0, None, None, None)
    );
    let s = sketch_of(&[5, 6]);
    assert_eq!(
        (s.quantile(-0.1), s.quantile(1.1), s.quantile(f64::NAN)),
        (None, None, None)
    );
    assert_eq!((s.quantile(0.0), s.quantile(1.0)), (Some(5), Some(6)));
}

#[test]
fn insert_n_equals_repeated_inserts() {
    let mut a = Sketch::new();
    a.insert_n(1_000, 5);
    a.insert_n(0, 2);
    a.insert_n(7, 0);
    let b = sketch_of(&[1_000, 0, 1_000, 1_000, 0, 1_000, 1_000]);
    assert_eq!(encoded(&a), encoded(&b));
    assert_eq!((a.count(), a.sum(), a.min()), (7, 5_000, Some(0)));
}

#[test]
fn merging_shards_equals_the_whole() {
    for (name, values) in distributions() {
        let whole = sketch_of(&values);
        for shards in [2, 3, 7] {
            let parts: Vec<Sketch> = (0..shards)
                .map(|k| {
                    sketch_of(
                        &values
                            .iter()
                            .copied()
                            .skip(k)
                            .step_by(shards)
                            .collect::<Vec<_>>(),
                    )
                })
                .collect();
            let mut forward = Sketch::new();
            parts.iter().for_each(|p| forward.merge(p));
            let mut backward = Sketch::new();
            parts.iter().rev().for_each(|p| backward.merge(p));
            assert_eq!(
                encoded(&forward),
                encoded(&whole),
                "{name}, {shards} shards"
            );
            assert_eq!(backward, whole, "{name}, {shards} shards reversed");
        }
    }
}

#[test]
fn round_trip() {
    for (name, values) in distributions() {
        let s = sketch_of(&values);
        let blob = encoded(&s);
        assert_eq!(Sketch::decode(&blob), Ok(s), "{name}");
    }
    let empty = encoded(&Sketch::new());
    assert_eq!(empty, [b'S', 1, 0]);
    assert_eq!(Sketch::decode(&empty), Ok(Sketch::new()));
}

/// One value in each bin that holds an integer, largest first, plus more
/// copies at the top: more bins than MAX_BINS.
fn every_bin() -> Vec<u64> {
    let mut values: Vec<u64> = (0..table::NUM_BINS)
        .map(table::bin)
        .filter(|(lo, hi, _)| lo <= hi)
        .map(|(_, hi, _)| hi)
        .rev()
        .collect();
    values.extend(std::iter::repeat_n(u64::MAX / 3, 10_000));
    values
}

#[test]
fn collapsing_keeps_the_upper_quantiles_and_the_merge_exact() {
    let values = every_bin();
    let s = sketch_of(&values);
    assert_eq!(s.bin_count(), MAX_BINS);
    assert_eq!((s.min(), s.max()), (Some(1), Some(u64::MAX)));
    let mut sorted = values.clone();
    sorted.sort_unstable();
    let folded = (0..table::NUM_BINS)
        .map(table::bin)
        .filter(|(lo, hi, _)| lo <= hi)
        .count()
        - MAX_BINS;
    for q in quantiles() {
        let v = exact_quantile(&sorted, q);
        let rank = ((q * values.len() as f64).ceil() as usize).max(1);
        let est = s.quantile(q).unwrap_or(0);
        if rank > folded + 1 {
            assert!(within(est, v), "q={q}: {est} vs {v}");
        } else {
            assert!(est >= v, "a folded rank is overstated, never understated");
        }
    }
    // Order does not matter, and merged halves give the same bytes.
    let mut reversed = values.clone();
    reversed.reverse();
    assert_eq!(encoded(&sketch_of(&reversed)), encoded(&s));
    let (a, b) = values.split_at(values.len() / 3);
    let mut merged = sketch_of(b);
    merged.merge(&sketch_of(a));
    assert_eq!(encoded(&merged), encoded(&s));
    assert_eq!(Sketch::decode(&encoded(&s)), Ok(s));
}

#[test]
fn decode_names_what_is_wrong() {
    let blob = encoded(&sketch_of(&[1, 2, 3, 1_000]));
    assert_eq!(
        Sketch::decode(&[]),
        Err(RollupError::BadTag {
            expected: "sketch",
            found: 0
        })
    );
    assert!(matches!(
        Sketch::decode(b"R\x01\x00"),
        Err(RollupError::BadTag { found: b'R', .. })
    ));
    assert!(matches!(
        Sketch::decode(b"S\x02\x00"),
        Err(RollupError::UnsupportedVersion {
            found: 2,
            supported: 1,
            ..
        })
    ));
    let mut trailing = blob.clone();
    trailing.push(0);
    assert!(matches!(
        Sketch::decode(&trailing),
        Err(RollupError::TrailingBytes { extra: 1, .. })
    ));
    for len in 0..blob.len() {
        assert!(Sketch::decode(&blob[..len]).is_err(), "truncated to {len}");
    }
    // A count of 2^64 needs an 11th byte: refused.
    let overlong = [
        b'S', 1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02,
    ];
    assert!(matches!(
        Sketch::decode(&overlong),
        Err(RollupError::BadVarint { .. })
    ));
    // Count 2 with one bin of count 1.
    let bad_count = [b'S', 1, 2, 0, 5, 0, 5, 1, 0, 1];
    assert!(matches!(
        Sketch::decode(&bad_count),
        Err(RollupError::Invalid {
            field: "sketch.count",
            ..
        })
    ));
}

proptest! {
    #[test]
    fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Sketch::decode(&bytes);
        let mut tagged = vec![b'S', 1];
        tagged.extend_from_slice(&bytes);
        if let Ok(s) = Sketch::decode(&tagged) {
            // Whatever decodes is a sketch that answers, and re-encodes to
            // the very bytes read: one encoding per sketch.
            let _ = s.quantile(0.5);
            prop_assert_eq!(encoded(&s), tagged);
        }
    }

    #[test]
    fn corrupting_a_blob_never_panics(
        values in proptest::collection::vec(any::<u64>(), 1..50),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut blob = encoded(&sketch_of(&values));
        let i = at.index(blob.len());
        blob[i] = byte;
        if let Ok(s) = Sketch::decode(&blob) {
            let _ = (s.quantile(0.99), s.mean());
            prop_assert_eq!(encoded(&s), blob);
        }
    }

    #[test]
    fn any_values_round_trip_and_merge(a in proptest::collection::vec(any::<u64>(), 0..100),
                                       b in proptest::collection::vec(0u64..10_000, 0..100)) {
        let (sa, sb) = (sketch_of(&a), sketch_of(&b));
        let mut merged = sa.clone();
        merged.merge(&sb);
        let whole = sketch_of(&[a.clone(), b].concat());
        prop_assert_eq!(encoded(&merged), encoded(&whole));
        prop_assert_eq!(Sketch::decode(&encoded(&sa)), Ok(sa));
    }
}

/// Latencies as they come, and the edges: 0, 1 ns, `u64::MAX`, small
/// integers (single-integer bins), and log-uniform over the whole range.
fn latency() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1u64),
        Just(u64::MAX),
        0u64..200,
        (0u32..64, any::<u64>()).prop_map(|(shift, v)| v >> shift),
        any::<u64>(),
    ]
}

proptest! {
    #[test]
    fn any_quantile_of_any_values_is_within_the_accuracy(
        values in proptest::collection::vec(latency(), 1..400),
    ) {
        let s = sketch_of(&values);
        let mut sorted = values.clone();
        sorted.sort_unstable();
        for q in (0..=200).map(|i| f64::from(i) / 200.0).chain([0.999, 0.9999]) {
            let v = exact_quantile(&sorted, q);
            let est = s.quantile(q);
            prop_assert!(est.is_some_and(|e| within(e, v)), "q={} estimate {:?}, exact {}", q, est, v);
        }
        prop_assert_eq!((s.min(), s.max()), (sorted.first().copied(), sorted.last().copied()));
    }

    #[test]
    fn merge_is_the_sketch_of_the_union_in_any_order(
        parts in proptest::collection::vec(proptest::collection::vec(latency(), 0..80), 3),
    ) {
        let whole = encoded(&sketch_of(&parts.concat()));
        let sketches: Vec<Sketch> = parts.iter().map(|p| sketch_of(p)).collect();
        for order in [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] {
            let mut m = Sketch::new();
            order.iter().for_each(|&i| m.merge(&sketches[i]));
            prop_assert_eq!(encoded(&m), whole.clone(), "order {:?}", order);
        }
        // (a + b) + c = a + (b + c)
        let mut bc = sketches[1].clone();
        bc.merge(&sketches[2]);
        let mut a_bc = sketches[0].clone();
        a_bc.merge(&bc);
        prop_assert_eq!(encoded(&a_bc), whole);
    }
}

#[test]
fn a_varint_has_one_encoding() {
    // Count 1 of value 5, then the same with the count written in two bytes.
    let blob = encoded(&sketch_of(&[5]));
    assert_eq!(Sketch::decode(&blob).map(|s| s.count()), Ok(1));
    let mut padded = blob[..2].to_vec();
    padded.extend_from_slice(&[0x81, 0x00]);
    padded.extend_from_slice(&blob[3..]);
    assert!(matches!(
        Sketch::decode(&padded),
        Err(RollupError::BadVarint {
            at: 2,
            field: "sketch.count"
        })
    ));
}

/// The exact median (nearest rank) and MAD around a centre (nearest rank
/// of the sorted deviations).
fn exact_mad(sorted: &[u64], center: u64) -> u64 {
    let mut dev: Vec<u64> = sorted.iter().map(|v| v.abs_diff(center)).collect();
    dev.sort_unstable();
    exact_quantile(&dev, 0.5)
}

/// The distributions, and two tight ones where the MAD is small against
/// the median (latencies of one operation).
fn deviation_cases() -> Vec<(&'static str, Vec<u64>)> {
    let mut rng = Rng::new(11);
    let mut cases = distributions();
    let tight = (0..5_000)
        .map(|_| 10_000_000 + rng.below(2_000_001))
        .collect();
    let spiky = (0..5_000)
        .map(|i| {
            if i % 10 == 0 {
                200_000_000
            } else {
                (11e6 * (1.0 + 0.05 * rng.normal())) as u64
            }
        })
        .collect();
    cases.extend([("tight", tight), ("spiky", spiky)]);
    cases
}

#[test]
fn mad_from_the_bins_is_within_its_bound() {
    for (name, values) in deviation_cases() {
        let s = sketch_of(&values);
        let mut sorted = values.clone();
        sorted.sort_unstable();
        let m = exact_quantile(&sorted, 0.5);
        let mad = exact_mad(&sorted, m);
        // Around the exact median: within α·(m + MAD) + ½ ns.
        let est = s.median_abs_deviation(m).unwrap();
        let bound = 0.01 * (m + mad) as f64 + 0.5;
        assert!(
            (est.abs_diff(mad) as f64) <= bound,
            "{name}: around m={m}: {est} vs exact {mad} (bound {bound})"
        );
        // Around the sketch's own median: within α·(2m + MAD) + 1 ns of
        // the exact MAD around the exact median.
        let m_hat = s.quantile(0.5).unwrap();
        let est = s.median_abs_deviation(m_hat).unwrap();
        let bound = 0.01 * (2 * m + mad) as f64 + 1.0;
        assert!(
            (est.abs_diff(mad) as f64) <= bound,
            "{name}: around m̂={m_hat}: {est} vs exact {mad} (bound {bound})"
        );
        // The mean absolute deviation: within α × the mean.
        let exact_mean_dev =
            sorted.iter().map(|v| v.abs_diff(m) as f64).sum::<f64>() / sorted.len() as f64;
        let mean = s.mean().unwrap();
        let est = s.mean_abs_deviation(m).unwrap();
        assert!(
            (est - exact_mean_dev).abs() <= 0.01 * mean + 0.5,
            "{name}: mean deviation {est} vs {exact_mean_dev}"
        );
    }
    assert_eq!(Sketch::new().median_abs_deviation(5), None);
    assert_eq!(Sketch::new().mean_abs_deviation(5), None);
}

#[test]
fn counts_above_are_exact_outside_the_thresholds_bin() {
    for (name, values) in deviation_cases() {
        let s = sketch_of(&values);
        let mut sorted = values.clone();
        sorted.sort_unstable();
        for q in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let exact_t = exact_quantile(&sorted, q);
            for t in [
                exact_t.saturating_sub(1),
                exact_t,
                exact_t + 1,
                exact_t * 3 / 2,
            ] {
                let same_bin = |v: u64| t >= 1 && v >= 1 && table::bin_of(v) == table::bin_of(t);
                let outside = values.iter().filter(|&&v| v > t && !same_bin(v)).count() as u64;
                let in_bin = values.iter().filter(|&&v| same_bin(v)).count() as u64;
                let est = s.count_above(t);
                assert!(
                    (outside..=outside + in_bin).contains(&est),
                    "{name}: above {t}: {est}, exact outside its bin {outside}, in it {in_bin}"
                );
            }
        }
        let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
        assert_eq!(s.count_above(max), 0, "{name}");
        if min > 0 {
            assert_eq!(s.count_above(min - 1), s.count(), "{name}");
        }
    }
}

#[test]
fn rank_floors_bound_the_worst_values() {
    for (name, values) in deviation_cases() {
        let s = sketch_of(&values);
        let mut sorted = values.clone();
        sorted.sort_unstable();
        let n = sorted.len() as u64;
        for rank in [1, 2, n / 2, n.saturating_sub(4), n.saturating_sub(1), n] {
            let rank = rank.clamp(1, n);
            let v = sorted[rank as usize - 1];
            let floor = s.rank_floor(rank).unwrap();
            assert!(floor <= v, "{name}: rank {rank}: floor {floor} > {v}");
            // Within one bin: γ ≈ 1.0202 (and exact below 50 ns).
            assert!(
                100 * u128::from(v - floor) <= 3 * u128::from(v),
                "{name}: rank {rank}: floor {floor} far below {v}"
            );
            // Every value of that rank or above is at least the floor.
            assert!(sorted[rank as usize - 1..].iter().all(|&w| w >= floor));
        }
    }
    assert_eq!(Sketch::new().rank_floor(1), None);
}
