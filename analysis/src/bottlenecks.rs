//! The critical path and self time.
//!
//! **Critical path**, as Jaeger's UI computes it: starting at the root, the
//! last child to finish is on the path, and the parent's time after it is
//! too; walking back, the child that finished last *before* that child
//! started is next, and so on; a span without such a child is on the path
//! from its start. Children are first clipped to their parent (a child that
//! lies entirely outside its parent is left out, with its subtree), so
//! asynchronous work that outlives its parent does not stretch the path.
//!
//! **Self time** of a span: its duration minus the union of its (clipped)
//! children's intervals — the time it was the one doing the work.

use std::collections::HashMap;

use clew_proto::v1::{Span, Trace};
use serde::Serialize;

use super::{Tree, hex, us};

/// How many spans [`Bottlenecks::spans`] lists.
pub const TOP_SPANS: usize = 100;

/// Where a trace's time went.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Bottlenecks {
    /// Start of the earliest span, Unix microseconds.
    pub trace_start_us: u64,
    /// From the earliest start to the latest end, microseconds.
    pub duration_us: f64,
    /// The root span the critical path starts from.
    #[serde(rename = "rootSpanID")]
    pub root_span_id: Option<String>,
    /// The critical path in time order: each section is a stretch of one
    /// span's own time that the trace's end-to-end latency waited on.
    pub critical_path: Vec<CriticalSection>,
    /// The spans with the most self time, most first (at most [`TOP_SPANS`]).
    pub spans: Vec<SpanTime>,
    /// Self time per service, most first.
    pub services: Vec<GroupTime>,
    /// Self time per (service, operation), most first.
    pub operations: Vec<GroupTime>,
}

/// A stretch of the critical path.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CriticalSection {
    /// The span.
    #[serde(rename = "spanID")]
    pub span_id: String,
    /// Its service.
    pub service: String,
    /// Its operation.
    pub operation: String,
    /// Start, microseconds after the trace's start.
    pub start_us: f64,
    /// End, microseconds after the trace's start.
    pub end_us: f64,
}

/// One span's time.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SpanTime {
    /// The span.
    #[serde(rename = "spanID")]
    pub span_id: String,
    /// Its service.
    pub service: String,
    /// Its operation.
    pub operation: String,
    /// Time not covered by its children, microseconds.
    pub self_us: f64,
    /// Time on the critical path, microseconds.
    pub critical_us: f64,
    /// `self_us` over the trace's duration (0..=1).
    pub share: f64,
}

/// Time of a service or an operation, summed over its spans.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GroupTime {
    /// The service.
    pub service: String,
    /// The operation (`None` in the per-service list).
    pub operation: Option<String>,
    /// Number of spans.
    pub spans: usize,
    /// Summed self time, microseconds.
    pub self_us: f64,
    /// Summed critical-path time, microseconds.
    pub critical_us: f64,
    /// `self_us` over the trace's duration. Concurrent spans can make the
    /// shares add up to more than 1.
    pub share: f64,
    /// `critical_us` over the trace's duration (these add up to at most 1).
    pub critical_share: f64,
}

/// Finds the critical path and ranks self time; see the module docs.
pub fn detect_bottlenecks(trace: &Trace) -> Bottlenecks {
    let spans = &trace.spans;
    let tree = Tree::new(spans);
    let trace_start = spans
        .iter()
        .map(|s| s.start_time_unix_nano)
        .min()
        .unwrap_or(0);
    let trace_end = spans
        .iter()
        .map(|s| s.end_time_unix_nano.max(s.start_time_unix_nano))
        .max()
        .unwrap_or(0);
    let total = trace_end.saturating_sub(trace_start);
    let clipped = Clipped::new(spans, &tree);
    let self_ns = clipped.self_times();
    let root = tree.root(spans);
    let path = root.map_or_else(Vec::new, |root| clipped.critical_path(&tree, root));
    let mut critical_ns = vec![0u64; spans.len()];
    for &(i, a, b) in &path {
        critical_ns[i] += b - a;
    }
    let times = Times {
        spans,
        self_ns: &self_ns,
        critical_ns: &critical_ns,
        total,
    };
    Bottlenecks {
        trace_start_us: trace_start / 1_000,
        duration_us: us(total),
        root_span_id: root.map(|r| hex(&spans[r].span_id)),
        critical_path: path
            .iter()
            .map(|&(i, a, b)| CriticalSection {
                span_id: hex(&spans[i].span_id),
                service: spans[i].service.clone(),
                operation: spans[i].name.clone(),
                start_us: us(a - trace_start),
                end_us: us(b - trace_start),
            })
            .collect(),
        spans: times.top_spans(),
        services: times.group(&|s| (s.service.clone(), None)),
        operations: times.group(&|s| (s.service.clone(), Some(s.name.clone()))),
    }
}

/// Each span's interval clipped into its ancestors.
struct Clipped {
    /// (start, end) of each span after clipping.
    bounds: Vec<(u64, u64)>,
    /// False for a span left out: it (or an ancestor) lies entirely
    /// outside its parent.
    reachable: Vec<bool>,
    /// Each span's children that are kept, as (child, start, end).
    kids: Vec<Vec<(usize, u64, u64)>>,
}

impl Clipped {
    fn new(spans: &[Span], tree: &Tree) -> Self {
        // Top down, so that a parent is clipped before its children.
        let mut bounds: Vec<(u64, u64)> = spans
            .iter()
            .map(|s| {
                (
                    s.start_time_unix_nano,
                    s.end_time_unix_nano.max(s.start_time_unix_nano),
                )
            })
            .collect();
        let mut reachable = vec![true; spans.len()];
        let mut order: Vec<usize> = (0..spans.len())
            .filter(|&i| tree.parent[i].is_none())
            .collect();
        let mut k = 0;
        while k < order.len() {
            let p = order[k];
            k += 1;
            let (ps, pe) = bounds[p];
            for &c in &tree.children[p] {
                let (cs, ce) = bounds[c];
                if !reachable[p] || ce < ps || cs > pe {
                    reachable[c] = false;
                } else {
                    bounds[c] = (cs.max(ps), ce.min(pe));
                }
                order.push(c);
            }
        }
        // Children clipped into their parent; a child entirely outside is
        // left out with its subtree.
        let kids = tree
            .children
            .iter()
            .map(|v| {
                v.iter()
                    .filter(|&&c| reachable[c])
                    .map(|&c| (c, bounds[c].0, bounds[c].1))
                    .collect()
            })
            .collect();
        Clipped {
            bounds,
            reachable,
            kids,
        }
    }

    /// Self time: each span's duration minus the union of its children's
    /// intervals.
    fn self_times(&self) -> Vec<u64> {
        (0..self.bounds.len())
            .map(|i| {
                let (s, e) = self.bounds[i];
                let mut iv: Vec<(u64, u64)> =
                    self.kids[i].iter().map(|&(_, a, b)| (a, b)).collect();
                iv.sort_unstable();
                let mut covered = 0;
                let mut cur: Option<(u64, u64)> = None;
                for (a, b) in iv {
                    match &mut cur {
                        Some((_, ce)) if a <= *ce => *ce = (*ce).max(b),
                        _ => {
                            if let Some((ca, cb)) = cur {
                                covered += cb - ca;
                            }
                            cur = Some((a, b));
                        }
                    }
                }
                if let Some((ca, cb)) = cur {
                    covered += cb - ca;
                }
                (e - s).saturating_sub(covered)
            })
            .collect()
    }

    /// The critical path from `root` as (span, start, end) sections in time
    /// order, found iteratively (a deep trace must not overflow the stack).
    fn critical_path(&self, tree: &Tree, root: usize) -> Vec<(usize, u64, u64)> {
        let bounds = &self.bounds;
        // Children by end, latest first; a cursor per span, because the
        // "returning child start" only moves earlier.
        let by_end: Vec<Vec<(usize, u64, u64)>> = self
            .kids
            .iter()
            .map(|v| {
                let mut v = v.clone();
                v.sort_by(|a, b| b.2.cmp(&a.2).then(b.1.cmp(&a.1)));
                v
            })
            .collect();
        let mut path = Vec::new();
        let mut cursor = vec![0usize; bounds.len()];
        let mut cur = root;
        let mut returning: Option<u64> = None;
        loop {
            let section_end = returning.unwrap_or(bounds[cur].1);
            let list = &by_end[cur];
            let mut next = None;
            while cursor[cur] < list.len() {
                let cand = list[cursor[cur]];
                cursor[cur] += 1;
                if returning.is_none_or(|r| cand.2 <= r) {
                    next = Some(cand);
                    break;
                }
            }
            match next {
                Some((child, _, child_end)) => {
                    if child_end < section_end {
                        path.push((cur, child_end, section_end));
                    }
                    cur = child;
                    returning = None;
                }
                None => {
                    if bounds[cur].0 < section_end {
                        path.push((cur, bounds[cur].0, section_end));
                    }
                    match tree.parent[cur] {
                        Some(p) if self.reachable[cur] => {
                            returning = Some(bounds[cur].0);
                            cur = p;
                        }
                        _ => break,
                    }
                }
            }
        }
        path.reverse();
        path
    }
}

/// Self and critical-path time per span, and the trace's duration.
struct Times<'a> {
    spans: &'a [Span],
    self_ns: &'a [u64],
    critical_ns: &'a [u64],
    total: u64,
}

impl Times<'_> {
    /// `ns` over the trace's duration.
    fn share(&self, ns: u64) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            ns as f64 / self.total as f64
        }
    }

    /// The spans with the most self time (then critical time), most first.
    fn top_spans(&self) -> Vec<SpanTime> {
        let (spans, self_ns, critical_ns) = (self.spans, self.self_ns, self.critical_ns);
        let mut ranked: Vec<usize> = (0..spans.len()).collect();
        ranked.sort_by(|&a, &b| {
            self_ns[b]
                .cmp(&self_ns[a])
                .then(critical_ns[b].cmp(&critical_ns[a]))
                .then(a.cmp(&b))
        });
        ranked
            .iter()
            .take(TOP_SPANS)
            .map(|&i| SpanTime {
                span_id: hex(&spans[i].span_id),
                service: spans[i].service.clone(),
                operation: spans[i].name.clone(),
                self_us: us(self_ns[i]),
                critical_us: us(critical_ns[i]),
                share: self.share(self_ns[i]),
            })
            .collect()
    }

    /// Time summed per `key` (service, operation), most self time first.
    fn group(&self, key: &dyn Fn(&Span) -> (String, Option<String>)) -> Vec<GroupTime> {
        let mut m: HashMap<(String, Option<String>), (usize, u64, u64)> = HashMap::new();
        for (i, s) in self.spans.iter().enumerate() {
            let e = m.entry(key(s)).or_default();
            e.0 += 1;
            e.1 += self.self_ns[i];
            e.2 += self.critical_ns[i];
        }
        let mut v: Vec<GroupTime> = m
            .into_iter()
            .map(|((service, operation), (n, s, c))| GroupTime {
                service,
                operation,
                spans: n,
                self_us: us(s),
                critical_us: us(c),
                share: self.share(s),
                critical_share: self.share(c),
            })
            .collect();
        v.sort_by(|a, b| {
            b.self_us
                .total_cmp(&a.self_us)
                .then_with(|| a.service.cmp(&b.service))
                .then_with(|| a.operation.cmp(&b.operation))
        });
        v
    }
}
