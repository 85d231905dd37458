//! Causal order from vector clocks, and clock skew.
//!
//! Every span carries the vector clock of its node when it started and when
//! it ended: two events per span. Event `e` happened before `f` exactly when
//! `e`'s clock is below `f`'s ([`VectorClock::compare`]).
//!
//! - **Order.** Sorting events by the sum of their clock's entries (then wall
//!   time) is a linear extension of happened-before: if `e → f` every entry
//!   of `f` is ≥ and one is >, so its sum is larger.
//! - **Evidence.** For each event `f` and each other node `m` in its clock,
//!   the latest recorded event of `m` that happened before `f` is found by
//!   binary search on `m`'s own counter (each event ticks its node's counter).
//!   These direct pairs between services are the constraints: `f`'s wall
//!   time must not be earlier than `e`'s. A pair that breaks it is a
//!   **violation**: wall clocks contradict causality.
//! - **Correction.** Offsets per service (added to that service's wall
//!   times) satisfy `o_f − o_e ≥ t_e − t_f` for every pair. The root span's
//!   service is the reference (offset 0); the other services are placed in
//!   call-graph order from it, each at the offset nearest zero that satisfies
//!   every pair with the services already placed. A service no pair says
//!   anything wrong about keeps 0. Offsets are reported with their evidence,
//!   never applied to the stored spans.

use std::collections::{BTreeMap, HashMap, VecDeque};

use clew_model::VectorClock;
use clew_proto::v1::{Span, Trace};
use serde::Serialize;

use super::{Tree, hex, us_signed};

/// How many violations an answer lists (all are counted).
pub const MAX_VIOLATIONS: usize = 50;

/// How many earlier events of a node are tried when the latest one by
/// counter is not below the event (a concurrent request of the same trace
/// in that process may sit in between).
const CANDIDATES: usize = 4;

/// Which end of a span.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum ClockEvent {
    /// The span started.
    Start,
    /// The span ended.
    End,
}

/// One span event with its raw timestamp and clock.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventRef {
    /// The span.
    #[serde(rename = "spanID")]
    pub span_id: String,
    /// Its service.
    pub service: String,
    /// Its operation.
    pub operation: String,
    /// The vector-clock node that emitted it.
    pub node: String,
    /// Start or end.
    pub event: ClockEvent,
    /// The raw wall-clock timestamp, Unix nanoseconds as a decimal string
    /// (a JavaScript number cannot hold it exactly).
    pub wall_ns: String,
    /// The vector clock, `node=counter,…`.
    pub clock: String,
}

/// An event in causal order (kept small: a 10,000-span trace has 20,000;
/// the span's clocks and timestamps are in the trace itself).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CausalEvent {
    /// Position in the order (0 first).
    pub rank: usize,
    /// The span.
    #[serde(rename = "spanID")]
    pub span_id: String,
    /// Start or end.
    pub event: ClockEvent,
}

/// Wall clocks contradicting causality: `after` happened after `before`
/// (its clock is above), yet its timestamp is earlier.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Violation {
    /// The event that happened first.
    pub before: EventRef,
    /// The event that happened after it.
    pub after: EventRef,
    /// How much earlier `after`'s timestamp is, microseconds.
    pub by_us: f64,
}

/// The correction proposed for one service.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceOffset {
    /// The service.
    pub service: String,
    /// Microseconds to add to this service's timestamps (positive: its clock
    /// is behind the reference).
    pub offset_us: f64,
    /// True for the reference service (the root span's).
    pub reference: bool,
    /// Violations this service takes part in.
    pub violations: usize,
    /// True when its pairs contradict each other (no single offset fits:
    /// clocks drifting apart during the trace); the offset is then the
    /// middle of the conflicting bounds.
    pub conflict: bool,
    /// One plain sentence.
    pub explanation: String,
}

/// The causal view of one trace.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CausalAnalysis {
    /// Spans with a start or end clock.
    pub spans_with_clocks: usize,
    /// Cross-service happened-before pairs checked.
    pub constraints: usize,
    /// True when no pair contradicts wall-clock time.
    pub consistent: bool,
    /// Number of violations.
    pub violation_count: usize,
    /// The largest violations, largest first (at most [`MAX_VIOLATIONS`]).
    pub violations: Vec<Violation>,
    /// One entry per service with clocked spans; the reference first.
    pub offsets: Vec<ServiceOffset>,
    /// Violations left after applying the offsets (0 unless clocks drift).
    pub residual_violations: usize,
    /// One plain sentence summing it up.
    pub explanation: String,
    /// Every clocked event in causal order.
    pub order: Vec<CausalEvent>,
}

struct Ev {
    span: usize,
    kind: ClockEvent,
    clock: VectorClock,
    own: u64,
    wall: u64,
}

fn event_ref(spans: &[Span], e: &Ev) -> EventRef {
    let s = &spans[e.span];
    EventRef {
        span_id: hex(&s.span_id),
        service: s.service.clone(),
        operation: s.name.clone(),
        node: s.node.clone(),
        event: e.kind,
        wall_ns: e.wall.to_string(),
        clock: e.clock.encode(),
    }
}

/// The services linked to `reference` by pairs, breadth first (each
/// level sorted by name), the reference first.
fn bfs_order<'a>(reference: &'a str, neighbours: &BTreeMap<&'a str, Vec<&'a str>>) -> Vec<&'a str> {
    let mut order = vec![reference];
    let mut queue: VecDeque<&str> = VecDeque::from([reference]);
    while let Some(p) = queue.pop_front() {
        let mut next: Vec<&str> = neighbours.get(p).cloned().unwrap_or_default();
        next.sort_unstable();
        next.dedup();
        for s in next {
            if !order.contains(&s) {
                order.push(s);
                queue.push_back(s);
            }
        }
    }
    order
}

/// Most services [`solve_offsets`] takes on (its cost grows with the cube).
const MAX_SOLVED_SERVICES: usize = 256;

/// Offsets for the services in `order` (the reference first) such that
/// `o_b − o_a ≥ need[(a, b)]` for every pair, the reference at 0: the
/// constraints are difference constraints, so all-pairs shortest paths
/// give each service's feasible range given the others, and each service
/// in turn takes the value in its range nearest 0 (which always leaves the
/// rest solvable). `None` when no offsets satisfy every pair (a negative
/// cycle) or there are too many services.
pub(super) fn solve_offsets<'a>(
    reference: &'a str,
    order: &[&'a str],
    need: &BTreeMap<(&'a str, &'a str), i128>,
) -> Option<HashMap<&'a str, i128>> {
    let n = order.len();
    if n > MAX_SOLVED_SERVICES || order.first() != Some(&reference) {
        return None;
    }
    let index: HashMap<&str, usize> = order.iter().enumerate().map(|(i, &s)| (s, i)).collect();
    // d[i][j]: the least upper bound on o_j − o_i (None: unbounded).
    let mut d: Vec<Vec<Option<i128>>> = vec![vec![None; n]; n];
    for (i, row) in d.iter_mut().enumerate() {
        row[i] = Some(0);
    }
    for (&(a, b), &g) in need {
        // o_b − o_a ≥ g  ⇔  o_a − o_b ≤ −g: an edge b → a of weight −g.
        if let (Some(&ia), Some(&ib)) = (index.get(a), index.get(b)) {
            let w = g.checked_neg()?;
            if d[ib][ia].is_none_or(|old| w < old) {
                d[ib][ia] = Some(w);
            }
        }
    }
    for k in 0..n {
        let row_k = d[k].clone();
        for row in d.iter_mut() {
            let Some(ik) = row[k] else { continue };
            for (cell, kj) in row.iter_mut().zip(&row_k) {
                if let Some(kj) = kj {
                    let via = ik.checked_add(*kj)?;
                    if cell.is_none_or(|old| via < old) {
                        *cell = Some(via);
                    }
                }
            }
        }
    }
    if (0..n).any(|i| d[i][i].is_some_and(|x| x < 0)) {
        return None;
    }
    // Adds the edge u → v of weight w (o_v − o_u ≤ w) to the closure.
    fn add_edge(d: &mut [Vec<Option<i128>>], u: usize, v: usize, w: i128) -> Option<()> {
        let row_v = d[v].clone();
        for row in d.iter_mut() {
            let Some(iu) = row[u] else { continue };
            let iuw = iu.checked_add(w)?;
            for (cell, vj) in row.iter_mut().zip(&row_v) {
                if let Some(vj) = vj {
                    let via = iuw.checked_add(*vj)?;
                    if cell.is_none_or(|old| via < old) {
                        *cell = Some(via);
                    }
                }
            }
        }
        Some(())
    }
    let mut offsets = HashMap::from([(reference, 0i128)]);
    for (s, &name) in order.iter().enumerate().skip(1) {
        let hi = d[0][s].unwrap_or(i128::MAX);
        let lo = d[s][0].map_or(i128::MIN, |x| -x);
        if lo > hi {
            return None;
        }
        let o = 0.clamp(lo, hi);
        // Pin it: o_s − o_ref ≤ o and o_ref − o_s ≤ −o.
        add_edge(&mut d, 0, s, o)?;
        add_edge(&mut d, s, 0, -o)?;
        offsets.insert(name, o);
    }
    Some(offsets)
}

fn fmt_ms(us: f64) -> String {
    format!("{:.3} ms", us / 1_000.0)
}

/// Orders a trace's events causally and checks its wall clocks; see the
/// module docs.
pub fn causal_order(trace: &Trace) -> CausalAnalysis {
    let spans = &trace.spans;
    let (evs, clocked) = clock_events(spans);
    let pairs = direct_pairs(spans, &evs);
    let violating = violating_pairs(&evs, &pairs);
    let services = clocked_services(spans, &evs);
    let reference = reference_service(spans, &evs, &services);
    let (need, neighbours) = offset_bounds(spans, &evs, &pairs);
    let placement = place_services(reference.as_deref(), &need, &neighbours);
    let residual = pairs
        .iter()
        .filter(|&&(e, f)| {
            let (e, f) = (&evs[e], &evs[f]);
            i128::from(f.wall) + placement.offset(&spans[f.span].service)
                < i128::from(e.wall) + placement.offset(&spans[e.span].service)
        })
        .count();
    let clocks = Clocks { spans, evs: &evs };
    let offsets = service_offsets(
        &clocks,
        &services,
        reference.as_deref(),
        &violating,
        &placement,
    );
    let explanation = summary(&evs, &violating, pairs.len(), &offsets, residual);
    CausalAnalysis {
        spans_with_clocks: clocked,
        constraints: pairs.len(),
        consistent: violating.is_empty(),
        violation_count: violating.len(),
        violations: violating
            .iter()
            .take(MAX_VIOLATIONS)
            .map(|&(e, f)| Violation {
                before: event_ref(spans, &evs[e]),
                after: event_ref(spans, &evs[f]),
                by_us: us_signed(gap(&evs[e], &evs[f])),
            })
            .collect(),
        offsets,
        residual_violations: residual,
        explanation,
        order: causal_events(spans, &evs),
    }
}

/// How much earlier `f`'s timestamp is than `e`'s, nanoseconds.
fn gap(e: &Ev, f: &Ev) -> i128 {
    i128::from(e.wall) - i128::from(f.wall)
}

/// The start and end events of every span that carries a clock, and the
/// number of such spans.
fn clock_events(spans: &[Span]) -> (Vec<Ev>, usize) {
    let mut evs: Vec<Ev> = Vec::with_capacity(spans.len() * 2);
    let mut clocked = 0;
    for (i, s) in spans.iter().enumerate() {
        let mut any = false;
        for (kind, clock, wall) in [
            (ClockEvent::Start, &s.clock_start, s.start_time_unix_nano),
            (ClockEvent::End, &s.clock_end, s.end_time_unix_nano),
        ] {
            let Some(c) = clock.as_ref().filter(|c| !c.entries.is_empty()) else {
                continue;
            };
            any = true;
            let clock = VectorClock::from_proto(c);
            let own = clock.get(&s.node);
            evs.push(Ev {
                span: i,
                kind,
                clock,
                own,
                wall,
            });
        }
        clocked += usize::from(any);
    }
    (evs, clocked)
}

/// Direct cross-service happened-before pairs (e, f), by event index.
fn direct_pairs(spans: &[Span], evs: &[Ev]) -> Vec<(usize, usize)> {
    // Events of each node by own counter.
    let mut by_node: HashMap<&str, Vec<(u64, usize)>> = HashMap::new();
    for (k, e) in evs.iter().enumerate() {
        if e.own > 0 {
            by_node
                .entry(spans[e.span].node.as_str())
                .or_default()
                .push((e.own, k));
        }
    }
    for v in by_node.values_mut() {
        v.sort_unstable();
    }
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for (fk, f) in evs.iter().enumerate() {
        let f_node = spans[f.span].node.as_str();
        for (m, c) in f.clock.iter() {
            if m == f_node {
                continue;
            }
            let Some(list) = by_node.get(m) else { continue };
            let upto = list.partition_point(|&(own, _)| own <= c);
            for &(_, ek) in list[..upto].iter().rev().take(CANDIDATES) {
                let e = &evs[ek];
                if spans[e.span].service == spans[f.span].service {
                    break;
                }
                if e.clock.happened_before(&f.clock) {
                    pairs.push((ek, fk));
                    break;
                }
            }
        }
    }
    pairs
}

/// The pairs whose wall clocks contradict them, largest gap first.
fn violating_pairs(evs: &[Ev], pairs: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut violating: Vec<(usize, usize)> = pairs
        .iter()
        .copied()
        .filter(|&(e, f)| evs[f].wall < evs[e].wall)
        .collect();
    violating.sort_by_key(|&(e, f)| std::cmp::Reverse(gap(&evs[e], &evs[f])));
    violating
}

/// The services with clocked events, in order of their first event.
fn clocked_services(spans: &[Span], evs: &[Ev]) -> Vec<String> {
    let mut services: Vec<String> = Vec::new();
    for e in evs {
        let s = &spans[e.span].service;
        if !services.contains(s) {
            services.push(s.clone());
        }
    }
    services
}

/// The reference clock: the root span's service when it has clocked
/// events, else the service of the earliest event.
fn reference_service(spans: &[Span], evs: &[Ev], services: &[String]) -> Option<String> {
    Tree::new(spans)
        .root(spans)
        .map(|r| spans[r].service.clone())
        .filter(|s| services.contains(s))
        .or_else(|| {
            evs.iter()
                .min_by_key(|e| e.wall)
                .map(|e| spans[e.span].service.clone())
        })
}

/// `o_b − o_a ≥ need[(a, b)]` for each ordered pair of services.
type Need<'a> = BTreeMap<(&'a str, &'a str), i128>;

/// The services each service shares a pair with (repeats included).
type Neighbours<'a> = BTreeMap<&'a str, Vec<&'a str>>;

/// The bound each ordered pair of services puts on their offsets, and
/// which services are linked by pairs.
fn offset_bounds<'a>(
    spans: &'a [Span],
    evs: &[Ev],
    pairs: &[(usize, usize)],
) -> (Need<'a>, Neighbours<'a>) {
    let mut need: Need<'a> = BTreeMap::new();
    let mut neighbours: Neighbours<'a> = BTreeMap::new();
    for &(e, f) in pairs {
        let a = spans[evs[e].span].service.as_str();
        let b = spans[evs[f].span].service.as_str();
        let g = gap(&evs[e], &evs[f]);
        need.entry((a, b))
            .and_modify(|n| *n = (*n).max(g))
            .or_insert(g);
        neighbours.entry(a).or_default().push(b);
        neighbours.entry(b).or_default().push(a);
    }
    (need, neighbours)
}

/// The offset of each service placed, and the services no offset fits.
#[derive(Default)]
struct Placement<'a> {
    offset: HashMap<&'a str, i128>,
    conflict: HashMap<&'a str, bool>,
}

impl Placement<'_> {
    /// A service's offset (0 when it was not placed).
    fn offset(&self, svc: &str) -> i128 {
        self.offset.get(svc).copied().unwrap_or(0)
    }

    /// Whether the service's pairs contradict each other.
    fn conflict(&self, svc: &str) -> bool {
        self.conflict.get(svc).copied().unwrap_or(false)
    }
}

/// Offsets for every service linked to the reference: exact when the
/// pairs allow it, else one by one with the misfits flagged.
fn place_services<'a>(
    reference: Option<&'a str>,
    need: &Need<'a>,
    neighbours: &Neighbours<'a>,
) -> Placement<'a> {
    let Some(r) = reference else {
        return Placement::default();
    };
    let order = bfs_order(r, neighbours);
    match solve_offsets(r, &order, need) {
        Some(offset) => Placement {
            offset,
            conflict: HashMap::new(),
        },
        None => place_one_by_one(r, need, neighbours),
    }
}

/// The pairs contradict each other (no offsets satisfy them all): places
/// services one by one and flags the ones that cannot fit.
fn place_one_by_one<'a>(r: &'a str, need: &Need<'a>, neighbours: &Neighbours<'a>) -> Placement<'a> {
    let mut offset = HashMap::from([(r, 0i128)]);
    let mut conflict = HashMap::new();
    let mut queue: VecDeque<&str> = VecDeque::from([r]);
    // Breadth-first from the reference; then any service not reached
    // (no pairs link it) keeps 0.
    while let Some(p) = queue.pop_front() {
        let mut next: Vec<&str> = neighbours.get(p).cloned().unwrap_or_default();
        next.sort_unstable();
        next.dedup();
        for s in next {
            if offset.contains_key(s) {
                continue;
            }
            let (mut lo, mut hi) = (i128::MIN, i128::MAX);
            for (&placed, &o) in &offset {
                if let Some(n) = need.get(&(placed, s)) {
                    lo = lo.max(o + n);
                }
                if let Some(n) = need.get(&(s, placed)) {
                    hi = hi.min(o - n);
                }
            }
            let o = if lo <= hi {
                0.clamp(lo, hi)
            } else {
                conflict.insert(s, true);
                lo / 2 + hi / 2
            };
            offset.insert(s, o);
            queue.push_back(s);
        }
    }
    Placement { offset, conflict }
}

/// A trace's spans and their clocked events.
struct Clocks<'a> {
    spans: &'a [Span],
    evs: &'a [Ev],
}

impl Clocks<'_> {
    /// The span of event `k`.
    fn span(&self, k: usize) -> &Span {
        &self.spans[self.evs[k].span]
    }
}

/// One entry per service with clocked events, the reference first.
fn service_offsets(
    clocks: &Clocks<'_>,
    services: &[String],
    reference: Option<&str>,
    violating: &[(usize, usize)],
    placement: &Placement<'_>,
) -> Vec<ServiceOffset> {
    let mut offsets: Vec<ServiceOffset> = services
        .iter()
        .map(|svc| {
            let o = placement.offset(svc);
            let involved: Vec<&(usize, usize)> = violating
                .iter()
                .filter(|(e, f)| clocks.span(*e).service == *svc || clocks.span(*f).service == *svc)
                .collect();
            let is_ref = reference == Some(svc.as_str());
            ServiceOffset {
                service: svc.clone(),
                offset_us: us_signed(o),
                reference: is_ref,
                violations: involved.len(),
                conflict: placement.conflict(svc),
                explanation: offset_explanation(clocks, svc, o, is_ref, &involved),
            }
        })
        .collect();
    offsets.sort_by(|a, b| {
        b.reference
            .cmp(&a.reference)
            .then_with(|| a.service.cmp(&b.service))
    });
    offsets
}

/// One sentence on a service's offset `o`, with the largest violation it
/// takes part in as evidence.
fn offset_explanation(
    clocks: &Clocks<'_>,
    svc: &str,
    o: i128,
    is_ref: bool,
    involved: &[&(usize, usize)],
) -> String {
    if is_ref {
        return format!(
            "{svc} is the reference clock (the root span's service); other services are corrected relative to it."
        );
    }
    if o == 0 {
        return format!(
            "{svc}'s timestamps agree with the causal order relative to the reference; no correction is needed."
        );
    }
    let evs = clocks.evs;
    let (e, f) = involved.first().map(|&&p| p).unwrap_or((0, 0));
    let evidence = if involved.is_empty() {
        String::new()
    } else {
        format!(
            ", e.g. {} {} of \"{}\" happened after {} {} of \"{}\" yet is stamped {} earlier",
            clocks.span(f).service,
            if evs[f].kind == ClockEvent::Start {
                "start"
            } else {
                "end"
            },
            clocks.span(f).name,
            clocks.span(e).service,
            if evs[e].kind == ClockEvent::Start {
                "start"
            } else {
                "end"
            },
            clocks.span(e).name,
            fmt_ms(us_signed(gap(&evs[e], &evs[f]))),
        )
    };
    format!(
        "{svc}'s clock looks {} by about {}: adding {} to its timestamps makes them agree with causality ({} violating pair{}{evidence}).",
        if o > 0 { "behind" } else { "ahead" },
        fmt_ms(us_signed(o.abs())),
        fmt_ms(us_signed(o)),
        involved.len(),
        if involved.len() == 1 { "" } else { "s" },
    )
}

/// One sentence summing up the trace.
fn summary(
    evs: &[Ev],
    violating: &[(usize, usize)],
    pairs: usize,
    offsets: &[ServiceOffset],
    residual: usize,
) -> String {
    if evs.is_empty() {
        return "No span carries a vector clock, so causal order cannot be checked.".to_owned();
    }
    if violating.is_empty() {
        return format!(
            "Wall-clock timestamps agree with the vector clocks ({} cross-service happened-before pair{} checked).",
            pairs,
            if pairs == 1 { "" } else { "s" }
        );
    }
    let fixes: Vec<String> = offsets
        .iter()
        .filter(|o| o.offset_us != 0.0)
        .map(|o| format!("{} by {:+.3} ms", o.service, o.offset_us / 1_000.0))
        .collect();
    format!(
        "{} of {} cross-service happened-before pairs contradict wall-clock time (clock skew); shifting {} would make the trace consistent{}. Timestamps are shown as recorded.",
        violating.len(),
        pairs,
        if fixes.is_empty() {
            "nothing".to_owned()
        } else {
            fixes.join(", ")
        },
        if residual > 0 {
            format!(" except {residual} pairs whose clocks drift")
        } else {
            String::new()
        },
    )
}

/// Every event ranked in causal order: by the sum of its clock's entries,
/// then wall time.
fn causal_events(spans: &[Span], evs: &[Ev]) -> Vec<CausalEvent> {
    let mut order: Vec<usize> = (0..evs.len()).collect();
    let sums: Vec<u128> = evs
        .iter()
        .map(|e| e.clock.iter().map(|(_, c)| u128::from(c)).sum())
        .collect();
    order.sort_by_key(|&k| (sums[k], evs[k].wall, evs[k].span, evs[k].kind));
    order
        .into_iter()
        .enumerate()
        .map(|(rank, k)| CausalEvent {
            rank,
            span_id: hex(&spans[evs[k].span].span_id),
            event: evs[k].kind,
        })
        .collect()
}
