//! Placement of traces on collectors: rendezvous (highest-random-weight)
//! hashing by trace ID.
//!
//! Sidecars route every span of a trace to the collector that scores
//! highest for it; collectors rank the same set the same way to choose a
//! trace's replicas (the owner first, then the next `R - 1`). Both must
//! agree, so the hash is a fixed function of the member's address and the
//! trace ID (no per-process seed), and a member is named by its address
//! alone, `host:port`: the scheme a sidecar dials (`http://`, `https://`)
//! does not change where a trace goes.
//!
//! When a member joins it takes only the traces for which it now scores
//! highest (about `1/n` of them); when one leaves, only its own traces move.
//! That is the "consistent hashing" property, without a ring to rebuild, and
//! exact for the few members a collector set has.

/// FNV-1a over `bytes`.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The SplitMix64 finaliser: a bijective 64-bit mixer.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The name a member is hashed by: its address without a scheme or a
/// trailing slash (`http://10.0.0.1:4317/` → `10.0.0.1:4317`).
pub fn member_key(address: &str) -> &str {
    let rest = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))
        .unwrap_or(address);
    rest.trim_end_matches('/')
}

/// The stable hash of a member, by its address (see [`member_key`]).
pub fn member_hash(address: &str) -> u64 {
    mix(fnv1a(member_key(address).as_bytes()))
}

/// The hash of a trace ID (any length; OTLP's is 16 bytes).
pub fn trace_hash(trace_id: &[u8]) -> u64 {
    if let Ok(b) = <[u8; 16]>::try_from(trace_id) {
        let (hi, lo) = b.split_at(8);
        let hi = u64::from_be_bytes(hi.try_into().unwrap_or_default());
        let lo = u64::from_be_bytes(lo.try_into().unwrap_or_default());
        mix(hi ^ mix(lo))
    } else {
        mix(fnv1a(trace_id))
    }
}

/// The score of a member (by its [`member_hash`]) for a trace (by its
/// [`trace_hash`]); ties, which need equal member hashes, go to the larger
/// hash so that every process orders the same.
fn score(member: u64, trace: u64) -> (u64, u64) {
    (mix(member ^ trace), member)
}

/// The index of the member (given by hashes) a trace goes to: its owner.
/// `None` when there is no member.
pub fn pick(members: &[u64], trace_id: &[u8]) -> Option<usize> {
    let t = trace_hash(trace_id);
    members
        .iter()
        .enumerate()
        .max_by_key(|(_, m)| score(**m, t))
        .map(|(i, _)| i)
}

/// Every member's index, best first, for a trace: the owner, then the
/// members that take its copies, in order.
pub fn rank(members: &[u64], trace_id: &[u8]) -> Vec<usize> {
    let t = trace_hash(trace_id);
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.sort_unstable_by_key(|i| std::cmp::Reverse(score(members[*i], t)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tid(i: u64) -> Vec<u8> {
        let mut v = mix(i).to_be_bytes().to_vec();
        v.extend_from_slice(&mix(i + 7).to_be_bytes());
        v
    }

    fn members(names: &[&str]) -> Vec<u64> {
        names.iter().map(|n| member_hash(n)).collect()
    }

    #[test]
    fn the_scheme_does_not_change_a_member() {
        assert_eq!(member_key("http://10.0.0.1:4317"), "10.0.0.1:4317");
        assert_eq!(member_key("https://10.0.0.1:4317/"), "10.0.0.1:4317");
        assert_eq!(member_key("10.0.0.1:4317"), "10.0.0.1:4317");
        assert_eq!(
            member_hash("http://c-0.svc:4317"),
            member_hash("c-0.svc:4317")
        );
        assert_ne!(member_hash("c-0.svc:4317"), member_hash("c-1.svc:4317"));
    }

    #[test]
    fn same_trace_same_member_and_even_spread() {
        let m = members(&["10.0.0.1:4317", "10.0.0.2:4317", "10.0.0.3:4317"]);
        let mut counts = [0usize; 3];
        for i in 0..30_000 {
            let a = pick(&m, &tid(i));
            assert_eq!(a, pick(&m, &tid(i)));
            counts[a.unwrap()] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "uneven spread {counts:?}");
        }
    }

    #[test]
    fn adding_a_member_moves_only_its_share() {
        let before = members(&["a:1", "b:1", "c:1"]);
        let after = members(&["a:1", "b:1", "c:1", "d:1"]);
        let mut moved = 0;
        for i in 0..20_000 {
            let b = pick(&before, &tid(i)).unwrap();
            let a = pick(&after, &tid(i)).unwrap();
            if a != b {
                // A trace only ever moves to the new member.
                assert_eq!(a, 3);
                moved += 1;
            }
        }
        assert!((4_000..6_000).contains(&moved), "moved {moved}");
    }

    #[test]
    fn removing_a_member_moves_only_its_traces() {
        let before = members(&["a:1", "b:1", "c:1"]);
        let after = members(&["a:1", "c:1"]);
        for i in 0..10_000 {
            let b = pick(&before, &tid(i)).unwrap();
            let a = pick(&after, &tid(i)).unwrap();
            match b {
                0 => assert_eq!(a, 0),
                2 => assert_eq!(a, 1),
                _ => {}
            }
        }
    }

    #[test]
    fn a_departed_owners_traces_go_to_their_first_replica() {
        // The member that held a trace's first copy is the one that takes it
        // over: it is the trace's owner once the old owner is gone.
        let names = ["a:1", "b:1", "c:1", "d:1"];
        let all = members(&names);
        for i in 0..5_000 {
            let order = rank(&all, &tid(i));
            let gone = order[0];
            let rest: Vec<u64> = (0..4).filter(|j| *j != gone).map(|j| all[j]).collect();
            let new_owner = pick(&rest, &tid(i)).unwrap();
            assert_eq!(rest[new_owner], all[order[1]]);
        }
    }

    #[test]
    fn empty_member_list_picks_nothing() {
        assert_eq!(pick(&[], &tid(1)), None);
        assert!(rank(&[], &tid(1)).is_empty());
    }

    proptest! {
        #[test]
        fn rank_starts_with_pick_and_is_a_permutation(
            n in 1usize..8,
            trace in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let names: Vec<String> = (0..n).map(|i| format!("10.1.0.{i}:4317")).collect();
            let m: Vec<u64> = names.iter().map(|s| member_hash(s)).collect();
            let order = rank(&m, &trace);
            prop_assert_eq!(Some(order[0]), pick(&m, &trace));
            let mut sorted = order.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, (0..n).collect::<Vec<_>>());
            // Removing any member keeps the others' relative order.
            for gone in 0..n {
                let rest: Vec<u64> = (0..n).filter(|j| *j != gone).map(|j| m[j]).collect();
                let sub: Vec<u64> = rank(&rest, &trace).into_iter().map(|j| rest[j]).collect();
                let expect: Vec<u64> = order.iter().filter(|j| **j != gone).map(|j| m[*j]).collect();
                prop_assert_eq!(sub, expect);
            }
        }
    }
}
