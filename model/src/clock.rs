//! Vector clocks: the causal order of events across services whose wall
//! clocks disagree.
//!
//! Each node (a service instance) owns one entry. A local event increments the
//! node's own entry; a send increments and attaches the clock (header
//! `clew-vclock`); a receive merges the incoming clock (entry-wise max) and
//! increments. Two clocks then compare as `Before`, `After`, `Equal` or
//! `Concurrent`, which is exactly happened-before.

use compact_str::CompactString;
use smallvec::SmallVec;
use std::cmp::Ordering;
use std::fmt;

/// Name of the header (HTTP) and metadata key (gRPC) that carries the clock.
pub const HEADER: &str = "clew-vclock";

/// At most this many entries travel in a header; see [`VectorClock::encode`].
pub const MAX_ENTRIES: usize = 64;

/// A header longer than this is rejected on decode.
pub const MAX_HEADER_BYTES: usize = 4096;

/// A node id longer than this is rejected.
pub const MAX_NODE_LEN: usize = 128;

/// A node id. Ids up to 24 bytes are stored inline, so copying a clock
/// touches no shared reference count (spans are ended on one thread and
/// exported on another; a shared count would bounce between their caches).
pub type NodeId = CompactString;

/// How two vector clocks relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClockOrdering {
    /// Every entry ≤ and at least one < : self happened before other.
    Before,
    /// Self happened after other.
    After,
    /// Identical clocks.
    Equal,
    /// Neither happened before the other.
    Concurrent,
}

impl ClockOrdering {
    /// The ordering seen from the other side.
    pub fn reverse(self) -> Self {
        match self {
            ClockOrdering::Before => ClockOrdering::After,
            ClockOrdering::After => ClockOrdering::Before,
            o => o,
        }
    }
}

/// Why a `clew-vclock` header was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClockDecodeError {
    /// Over [`MAX_HEADER_BYTES`].
    #[error("vector clock header longer than {MAX_HEADER_BYTES} bytes")]
    TooLong,
    /// Over [`MAX_ENTRIES`] entries.
    #[error("vector clock has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    /// An entry is not `node=counter`.
    #[error("malformed vector clock entry")]
    Malformed,
}

/// A vector clock: node id → counter, kept sorted by node id.
///
/// Entries with counter 0 are never stored, so equal clocks have equal
/// representations.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct VectorClock {
    // Most traces touch a handful of nodes: keep those inline, no allocation.
    entries: SmallVec<[(NodeId, u64); 2]>,
}

impl VectorClock {
    /// The empty clock (all counters zero).
    #[inline]
    pub fn new() -> Self {
        Self::default()
    }

    /// Resets every counter to zero.
    #[inline]
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Makes the clock `{node: counter}` (`counter` > 0), reusing its memory.
    /// For a span's clocks only: a clock with a single entry must hold
    /// `node`'s (see below).
    #[doc(hidden)]
    #[inline]
    pub fn reset_to(&mut self, node: &NodeId, counter: u64) {
        if counter > 0
            && let [(id, c)] = self.entries.as_mut_slice()
            && id.len() == node.len()
        {
            // Already this node's clock: no string to drop and clone again.
            // (Only spans recycled within one tracer keep a clock between
            // uses, and every clock such a span holds has this node's
            // entry, so a single entry is this node's: comparing lengths,
            // not strings, is enough.)
            debug_assert_eq!(id, node);
            *c = counter;
            return;
        }
        self.entries.clear();
        if counter > 0 {
            self.entries.push((node.clone(), counter));
        }
    }

    /// Number of non-zero entries.
    #[inline]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when every counter is zero.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The counter of `node` (0 when absent).
    #[inline]
    pub fn get(&self, node: &str) -> u64 {
        self.find(node).map(|i| self.entries[i].1).unwrap_or(0)
    }

    /// Entries in node order.
    #[inline]
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.entries.iter().map(|(n, c)| (&**n, *c))
    }

    fn find(&self, node: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(n, _)| n.as_str().cmp(node))
    }

    /// Sets `node`'s counter (0 removes it).
    pub fn set(&mut self, node: impl Into<NodeId> + AsRef<str>, counter: u64) {
        match self.find(node.as_ref()) {
            Ok(i) if counter == 0 => {
                self.entries.remove(i);
            }
            Ok(i) => self.entries[i].1 = counter,
            Err(_) if counter == 0 => {}
            Err(i) => self.entries.insert(i, (node.into(), counter)),
        }
    }

    /// Increments `node`'s counter (saturating) and returns the new value.
    pub fn increment(&mut self, node: &NodeId) -> u64 {
        match self.find(node) {
            Ok(i) => {
                let c = &mut self.entries[i].1;
                *c = c.saturating_add(1);
                *c
            }
            Err(i) => {
                self.entries.insert(i, (node.clone(), 1));
                1
            }
        }
    }

    /// Entry-wise maximum with `other`.
    pub fn merge(&mut self, other: &VectorClock) {
        if other.entries.is_empty() {
            return;
        }
        if self.entries.is_empty() {
            self.entries.clone_from(&other.entries);
            return;
        }
        let mut out: SmallVec<[(NodeId, u64); 2]> =
            SmallVec::with_capacity(self.entries.len().max(other.entries.len()));
        let (mut i, mut j) = (0, 0);
        let (a, b) = (&self.entries, &other.entries);
        while i < a.len() && j < b.len() {
            match a[i].0.cmp(&b[j].0) {
                Ordering::Less => {
                    out.push(a[i].clone());
                    i += 1;
                }
                Ordering::Greater => {
                    out.push(b[j].clone());
                    j += 1;
                }
                Ordering::Equal => {
                    out.push((a[i].0.clone(), a[i].1.max(b[j].1)));
                    i += 1;
                    j += 1;
                }
            }
        }
        out.extend(a[i..].iter().cloned());
        out.extend(b[j..].iter().cloned());
        self.entries = out;
    }

    /// How `self` relates to `other` under happened-before.
    pub fn compare(&self, other: &VectorClock) -> ClockOrdering {
        let (mut less, mut greater) = (false, false);
        let (a, b) = (&self.entries, &other.entries);
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            let ord = match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) => x.0.cmp(&y.0),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => break,
            };
            match ord {
                // Present only in self (other has 0): self is greater there.
                Ordering::Less => {
                    greater = true;
                    i += 1;
                }
                Ordering::Greater => {
                    less = true;
                    j += 1;
                }
                Ordering::Equal => {
                    match a[i].1.cmp(&b[j].1) {
                        Ordering::Less => less = true,
                        Ordering::Greater => greater = true,
                        Ordering::Equal => {}
                    }
                    i += 1;
                    j += 1;
                }
            }
            if less && greater {
                return ClockOrdering::Concurrent;
            }
        }
        match (less, greater) {
            (false, false) => ClockOrdering::Equal,
            (true, false) => ClockOrdering::Before,
            (false, true) => ClockOrdering::After,
            (true, true) => ClockOrdering::Concurrent,
        }
    }

    /// True when `self` happened before `other`.
    pub fn happened_before(&self, other: &VectorClock) -> bool {
        self.compare(other) == ClockOrdering::Before
    }

    /// The compact header form: `node=counter,node=counter`, node ids
    /// percent-encoded outside `[A-Za-z0-9._~@:/+-]`.
    ///
    /// At most [`MAX_ENTRIES`] entries are written: beyond that the entries
    /// with the smallest counters are left out. A truncated clock can make a
    /// receiver see `Concurrent` where the full clocks say `Before`, never the
    /// reverse, so the cap errs on the side of "unordered".
    pub fn encode(&self) -> String {
        let mut keep: Vec<&(NodeId, u64)> = self.entries.iter().collect();
        if keep.len() > MAX_ENTRIES {
            keep.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
            keep.truncate(MAX_ENTRIES);
            keep.sort_by(|x, y| x.0.cmp(&y.0));
        }
        let mut out = String::with_capacity(keep.len() * 16);
        for (k, (node, counter)) in keep.into_iter().enumerate() {
            if k > 0 {
                out.push(',');
            }
            out.extend(percent_encoding::utf8_percent_encode(node, NODE_ENCODE));
            out.push('=');
            out.push_str(&counter.to_string());
        }
        out
    }

    /// Parses the header form. Multiple header values may be joined with
    /// `,`; a node that appears twice keeps its larger counter.
    pub fn decode(value: &str) -> Result<VectorClock, ClockDecodeError> {
        if value.len() > MAX_HEADER_BYTES {
            return Err(ClockDecodeError::TooLong);
        }
        let mut clock = VectorClock::new();
        let mut n = 0usize;
        for part in value.split(',') {
            let part = part.trim_matches([' ', '\t']);
            if part.is_empty() {
                continue;
            }
            n += 1;
            if n > MAX_ENTRIES {
                return Err(ClockDecodeError::TooManyEntries);
            }
            let (node, counter) = part.split_once('=').ok_or(ClockDecodeError::Malformed)?;
            if node.is_empty()
                || !node
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._~@:/+-%".contains(&b))
            {
                return Err(ClockDecodeError::Malformed);
            }
            if counter.is_empty() || !counter.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ClockDecodeError::Malformed);
            }
            let counter: u64 = counter.parse().map_err(|_| ClockDecodeError::Malformed)?;
            let node = percent_encoding::percent_decode_str(node)
                .decode_utf8()
                .map_err(|_| ClockDecodeError::Malformed)?;
            if node.is_empty() || node.len() > MAX_NODE_LEN {
                return Err(ClockDecodeError::Malformed);
            }
            if counter > clock.get(&node) {
                clock.set(&*node, counter);
            }
        }
        Ok(clock)
    }

    /// The protobuf form.
    pub fn to_proto(&self) -> clew_proto::v1::VectorClock {
        clew_proto::v1::VectorClock {
            entries: self
                .entries
                .iter()
                .map(|(n, c)| clew_proto::v1::ClockEntry {
                    node: n.to_string(),
                    counter: *c,
                })
                .collect(),
        }
    }

    /// From the protobuf form; zero counters dropped, duplicates max-merged.
    pub fn from_proto(p: &clew_proto::v1::VectorClock) -> VectorClock {
        let mut c = VectorClock::new();
        for e in &p.entries {
            if e.counter > c.get(&e.node) {
                c.set(e.node.as_str(), e.counter);
            }
        }
        c
    }
}

const NODE_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'@')
    .remove(b':')
    .remove(b'/')
    .remove(b'+')
    .remove(b'-');

impl fmt::Debug for VectorClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl fmt::Display for VectorClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vc(pairs: &[(&str, u64)]) -> VectorClock {
        let mut c = VectorClock::new();
        for (n, v) in pairs {
            c.set(*n, *v);
        }
        c
    }

    #[test]
    fn compare_basic() {
        let a = vc(&[("a", 1)]);
        let b = vc(&[("a", 1), ("b", 1)]);
        let c = vc(&[("c", 1)]);
        assert_eq!(a.compare(&b), ClockOrdering::Before);
        assert_eq!(b.compare(&a), ClockOrdering::After);
        assert_eq!(a.compare(&a.clone()), ClockOrdering::Equal);
        assert_eq!(a.compare(&c), ClockOrdering::Concurrent);
        assert_eq!(VectorClock::new().compare(&a), ClockOrdering::Before);
    }

    #[test]
    fn send_receive_orders_events() {
        let (na, nb): (NodeId, NodeId) = ("a".into(), "b".into());
        let mut a = VectorClock::new();
        let mut b = VectorClock::new();
        b.increment(&nb); // an unrelated event on b
        a.increment(&na); // send
        let sent = a.clone();
        b.merge(&sent); // receive
        b.increment(&nb);
        assert_eq!(sent.compare(&b), ClockOrdering::Before);
        a.increment(&na); // a's next local event is concurrent with b's receive
        assert_eq!(a.compare(&b), ClockOrdering::Concurrent);
    }

    #[test]
    fn encode_decode_round_trip_with_odd_names() {
        let c = vc(&[("svc-a@host-1", 3), ("b c,=%", 7), ("ünï", 1)]);
        let s = c.encode();
        assert!(!s.contains(' '));
        assert_eq!(VectorClock::decode(&s).unwrap(), c);
    }

    #[test]
    fn decode_rejects_garbage() {
        for bad in [
            "a",
            "a=",
            "=1",
            "a=-1",
            "a=1x",
            "a b=1",
            "a=99999999999999999999999",
            "a=%ff",
        ] {
            assert!(VectorClock::decode(bad).is_err(), "{bad}");
        }
        assert_eq!(
            VectorClock::decode(&"x".repeat(MAX_HEADER_BYTES + 1)),
            Err(ClockDecodeError::TooLong)
        );
        let many: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("n{i}=1")).collect();
        assert_eq!(
            VectorClock::decode(&many.join(",")),
            Err(ClockDecodeError::TooManyEntries)
        );
    }

    #[test]
    fn decode_joins_multiple_values_and_ignores_zero() {
        let c = VectorClock::decode("a=1, b=0 ,,a=4").unwrap();
        assert_eq!(c, vc(&[("a", 4)]));
    }

    #[test]
    fn encode_caps_entries_keeping_largest() {
        let mut c = VectorClock::new();
        for i in 0..(MAX_ENTRIES as u64 + 10) {
            c.set(format!("n{i:03}"), i + 1);
        }
        let d = VectorClock::decode(&c.encode()).unwrap();
        assert_eq!(d.len(), MAX_ENTRIES);
        assert_eq!(d.get("n000"), 0);
        assert_eq!(
            d.get(&format!("n{:03}", MAX_ENTRIES + 9)),
            MAX_ENTRIES as u64 + 10
        );
        // Truncation can only lose order, never invent it.
        assert_ne!(d.compare(&c), ClockOrdering::After);
    }

    fn arb_clock() -> impl Strategy<Value = VectorClock> {
        prop::collection::btree_map("[a-e]", 0u64..5, 0..5).prop_map(|m| {
            let mut c = VectorClock::new();
            for (k, v) in m {
                c.set(k, v);
            }
            c
        })
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_clock(), b in arb_clock()) {
            let mut x = a.clone(); x.merge(&b);
            let mut y = b.clone(); y.merge(&a);
            prop_assert_eq!(x, y);
        }

        #[test]
        fn merge_is_associative(a in arb_clock(), b in arb_clock(), c in arb_clock()) {
            let mut x = a.clone(); x.merge(&b); x.merge(&c);
            let mut bc = b.clone(); bc.merge(&c);
            let mut y = a.clone(); y.merge(&bc);
            prop_assert_eq!(x, y);
        }

        #[test]
        fn merge_is_idempotent(a in arb_clock()) {
            let mut x = a.clone(); x.merge(&a);
            prop_assert_eq!(x, a);
        }

        #[test]
        fn merge_is_least_upper_bound(a in arb_clock(), b in arb_clock()) {
            let mut m = a.clone(); m.merge(&b);
            prop_assert!(matches!(a.compare(&m), ClockOrdering::Before | ClockOrdering::Equal));
            prop_assert!(matches!(b.compare(&m), ClockOrdering::Before | ClockOrdering::Equal));
        }

        #[test]
        fn compare_is_antisymmetric(a in arb_clock(), b in arb_clock()) {
            prop_assert_eq!(a.compare(&b), b.compare(&a).reverse());
            prop_assert_eq!(a.compare(&b) == ClockOrdering::Equal, a == b);
        }

        #[test]
        fn compare_is_reflexive(a in arb_clock()) {
            prop_assert_eq!(a.compare(&a), ClockOrdering::Equal);
        }

        #[test]
        fn before_is_transitive(a in arb_clock(), b in arb_clock(), c in arb_clock()) {
            if a.happened_before(&b) && b.happened_before(&c) {
                prop_assert!(a.happened_before(&c));
            }
        }

        #[test]
        fn increment_moves_strictly_after(a in arb_clock(), n in "[a-f]") {
            let mut b = a.clone();
            b.increment(&NodeId::from(n.as_str()));
            prop_assert_eq!(a.compare(&b), ClockOrdering::Before);
        }

        #[test]
        fn encode_round_trips(a in arb_clock()) {
            prop_assert_eq!(VectorClock::decode(&a.encode()).unwrap(), a);
        }

        #[test]
        fn decode_never_panics(s in ".{0,200}") {
            let _ = VectorClock::decode(&s);
        }
    }
}
