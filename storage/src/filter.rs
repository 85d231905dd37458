//! Matching and aggregation shared by the backends, so that they agree on
//! Jaeger's search semantics to the byte.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use clew_proto::v1::{AnyValue, DependencyLink, FilterCriteria, Span, SpanKind, any_value, status};

use super::{DEFAULT_LIMIT, MAX_LIMIT};

/// Tag values longer than this are not indexed (a filter on one still works,
/// through a slower scan). Keeps URLs with long query strings out of the indexes.
pub(crate) const MAX_INDEXED_TAG_LEN: usize = 128;

/// The number of traces a filter asks for.
pub fn effective_limit(filter: &FilterCriteria) -> usize {
    match filter.limit as usize {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    }
}

/// A value rendered the way tag filters compare it: strings as they are,
/// booleans as `true`/`false`, numbers in decimal, bytes in lowercase hex,
/// arrays as `[a,b]`.
pub fn render_value(v: &AnyValue) -> String {
    let mut out = String::new();
    render_into(v, &mut out);
    out
}

fn render_into(v: &AnyValue, out: &mut String) {
    match &v.value {
        None => {}
        Some(any_value::Value::StringValue(s)) => out.push_str(s),
        Some(any_value::Value::BoolValue(b)) => out.push_str(if *b { "true" } else { "false" }),
        Some(any_value::Value::IntValue(i)) => {
            let _ = write!(out, "{i}");
        }
        Some(any_value::Value::DoubleValue(d)) => {
            let _ = write!(out, "{d}");
        }
        Some(any_value::Value::BytesValue(b)) => {
            for byte in b {
                let _ = write!(out, "{byte:02x}");
            }
        }
        Some(any_value::Value::ArrayValue(a)) => {
            out.push('[');
            for (i, item) in a.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                render_into(item, out);
            }
            out.push(']');
        }
    }
}

/// Span duration in nanoseconds (0 when the end precedes the start).
pub fn duration(span: &Span) -> u64 {
    span.end_time_unix_nano
        .saturating_sub(span.start_time_unix_nano)
}

/// True when the span's status is ERROR.
pub fn is_error(span: &Span) -> bool {
    span.status
        .as_ref()
        .is_some_and(|s| s.code == status::Code::Error as i32)
}

/// The span's kind (unknown values read as UNSPECIFIED).
pub fn kind(span: &Span) -> SpanKind {
    SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified)
}

/// The span's id as an array (validated on store, so zeroes never show up).
pub fn span_id(span: &Span) -> [u8; 8] {
    span.span_id.as_slice().try_into().unwrap_or([0; 8])
}

/// The parent span id, `None` for a root (empty or all-zero parent).
pub fn parent_id(span: &Span) -> Option<[u8; 8]> {
    let p: [u8; 8] = span.parent_span_id.as_slice().try_into().ok()?;
    (p != [0; 8]).then_some(p)
}

/// All (key, rendered value) pairs a tag filter can match: span attributes,
/// then resource attributes.
pub(crate) fn tags(span: &Span) -> impl Iterator<Item = (&str, String)> {
    span.attributes
        .iter()
        .chain(span.resource.iter())
        .map(|kv| {
            let v = kv.value.as_ref().map(render_value).unwrap_or_default();
            (kv.key.as_str(), v)
        })
}

/// The tag pairs worth an index entry.
pub(crate) fn indexed_tags(span: &Span) -> impl Iterator<Item = (&str, String)> {
    tags(span).filter(|(k, v)| indexable_tag(k, v))
}

/// Whether a tag pair is indexed (and so usable as a search index).
pub(crate) fn indexable_tag(key: &str, value: &str) -> bool {
    key.len() + value.len() <= MAX_INDEXED_TAG_LEN
}

fn tag_matches(span: &Span, key: &str, want: &str) -> bool {
    span.attributes
        .iter()
        .chain(span.resource.iter())
        .any(|kv| kv.key == key && kv.value.as_ref().map(render_value).unwrap_or_default() == want)
}

/// Jaeger semantics: one span must satisfy every set field of the filter.
pub fn span_matches(span: &Span, f: &FilterCriteria) -> bool {
    if !f.service.is_empty() && span.service != f.service {
        return false;
    }
    if !f.operation.is_empty() && span.name != f.operation {
        return false;
    }
    let start = span.start_time_unix_nano;
    if f.start_time_min_unix_nano != 0 && start < f.start_time_min_unix_nano {
        return false;
    }
    if f.start_time_max_unix_nano != 0 && start > f.start_time_max_unix_nano {
        return false;
    }
    let d = duration(span);
    if f.min_duration_nanos != 0 && d < f.min_duration_nanos {
        return false;
    }
    if f.max_duration_nanos != 0 && d > f.max_duration_nanos {
        return false;
    }
    if f.errors_only && !is_error(span) {
        return false;
    }
    f.tags.iter().all(|(k, v)| tag_matches(span, k, v))
}

/// The start of the most recent span of the trace matching the filter.
pub fn best_match<'a>(
    spans: impl IntoIterator<Item = &'a Span>,
    f: &FilterCriteria,
) -> Option<u64> {
    spans
        .into_iter()
        .filter(|s| span_matches(s, f))
        .map(|s| s.start_time_unix_nano)
        .max()
}

/// Sorts spans by start time (then span id, so the order is deterministic).
pub fn sort_spans(spans: &mut [Span]) {
    spans.sort_by(|a, b| {
        a.start_time_unix_nano
            .cmp(&b.start_time_unix_nano)
            .then_with(|| a.span_id.cmp(&b.span_id))
    });
}

/// One service-to-service call: a span whose parent is in another service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub parent: String,
    pub child: String,
    pub child_span: [u8; 8],
    pub child_start: u64,
    pub error: bool,
}

/// The calls inside one trace (each child span once).
pub fn edges<'a>(spans: impl IntoIterator<Item = &'a Span> + Clone) -> Vec<Edge> {
    let by_id: HashMap<[u8; 8], &Span> =
        spans.clone().into_iter().map(|s| (span_id(s), s)).collect();
    let mut out = Vec::new();
    for child in spans {
        let Some(parent) = parent_id(child).and_then(|p| by_id.get(&p)) else {
            continue;
        };
        if parent.service != child.service {
            out.push(Edge {
                parent: parent.service.clone(),
                child: child.service.clone(),
                child_span: span_id(child),
                child_start: child.start_time_unix_nano,
                error: is_error(child),
            });
        }
    }
    out
}

/// Adds up calls into links, sorted by (parent, child).
#[derive(Debug, Default)]
pub struct DependencyCounter(BTreeMap<(String, String), (u64, u64)>);

impl DependencyCounter {
    /// Counts one call.
    pub fn add(&mut self, parent: &str, child: &str, error: bool) {
        let e = self
            .0
            .entry((parent.to_owned(), child.to_owned()))
            .or_default();
        e.0 += 1;
        e.1 += u64::from(error);
    }

    /// Counts `calls` calls, `errors` of them failed (links of another
    /// count, merged).
    pub fn add_many(&mut self, parent: &str, child: &str, calls: u64, errors: u64) {
        let e = self
            .0
            .entry((parent.to_owned(), child.to_owned()))
            .or_default();
        e.0 += calls;
        e.1 += errors;
    }

    /// The links.
    pub fn finish(self) -> Vec<DependencyLink> {
        self.0
            .into_iter()
            .map(
                |((parent, child), (call_count, error_count))| DependencyLink {
                    parent,
                    child,
                    call_count,
                    error_count,
                },
            )
            .collect()
    }
}

/// The span ids of one trace, for de-duplication. While the trace is small
/// a new id is checked by scanning the ids the caller already holds (no
/// allocation: most traces never need more); past [`SpanIds::SCAN`] spans a
/// hash set takes over.
#[derive(Debug, Default)]
pub struct SpanIds(Option<foldhash::HashSet<[u8; 8]>>);

impl SpanIds {
    /// Up to this many spans, a trace is de-duplicated by a scan.
    pub(crate) const SCAN: usize = 32;

    /// The ids of a trace whose `len` spans, `known()`, are all distinct.
    pub fn of_unique<I: Iterator<Item = [u8; 8]>>(len: usize, known: impl FnOnce() -> I) -> Self {
        SpanIds((len >= Self::SCAN).then(|| known().collect()))
    }

    /// Records `id` for a trace whose `len` ids so far are `known()`; false
    /// when it is already there. The caller keeps the id when it is new.
    pub fn insert<I: Iterator<Item = [u8; 8]>>(
        &mut self,
        id: [u8; 8],
        len: usize,
        known: impl FnOnce() -> I,
    ) -> bool {
        if let Some(set) = &mut self.0 {
            return set.insert(id);
        }
        if len < Self::SCAN {
            return !known().any(|k| k == id);
        }
        let mut set: foldhash::HashSet<[u8; 8]> = known().collect();
        let new = set.insert(id);
        self.0 = Some(set);
        new
    }
}

/// `end` of 0 means unbounded.
pub fn in_window(t: u64, start: u64, end: u64) -> bool {
    t >= start && (end == 0 || t <= end)
}

/// The window `[start, end]` with an `end` of 0 read as unbounded
/// (`u64::MAX`); `None` when it is empty (`start` after `end`).
pub fn window(start: u64, end: u64) -> Option<(u64, u64)> {
    let end = match end {
        0 => u64::MAX,
        t => t,
    };
    (start <= end).then_some((start, end))
}

/// The window of span starts a search looks in, as [`window`] reads it.
pub fn start_window(f: &FilterCriteria) -> Option<(u64, u64)> {
    window(f.start_time_min_unix_nano, f.start_time_max_unix_nano)
}

/// A service's operations as `Storage::operations` answers them: sorted,
/// each (name, kind) once.
pub fn sorted_operations(mut ops: Vec<(String, SpanKind)>) -> Vec<(String, SpanKind)> {
    ops.sort();
    ops.dedup();
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    use clew_proto::v1::{ArrayValue, KeyValue};

    #[test]
    fn span_ids_find_duplicates_below_and_above_the_scan_limit() {
        let mut ids = SpanIds::default();
        let mut held: Vec<[u8; 8]> = Vec::new();
        for round in 0..2 {
            for n in 0..100u64 {
                let id = n.to_le_bytes();
                let new = ids.insert(id, held.len(), || held.iter().copied());
                assert_eq!(new, round == 0, "id {n} in round {round}");
                if new {
                    held.push(id);
                }
            }
        }
        assert_eq!(held.len(), 100);
        assert!(ids.0.is_some(), "a set past the scan limit");
        // Started from distinct ids, small or large, it still finds them.
        for n in [3usize, 40] {
            let held: Vec<[u8; 8]> = (0..n as u64).map(u64::to_le_bytes).collect();
            let mut ids = SpanIds::of_unique(n, || held.iter().copied());
            assert!(!ids.insert(held[n - 1], n, || held.iter().copied()));
            assert!(ids.insert(99u64.to_le_bytes(), n, || held.iter().copied()));
        }
    }

    fn v(value: any_value::Value) -> AnyValue {
        AnyValue { value: Some(value) }
    }

    #[test]
    fn renders_values_as_strings() {
        assert_eq!(
            render_value(&v(any_value::Value::StringValue("x".into()))),
            "x"
        );
        assert_eq!(render_value(&v(any_value::Value::BoolValue(true))), "true");
        assert_eq!(render_value(&v(any_value::Value::IntValue(-42))), "-42");
        assert_eq!(render_value(&v(any_value::Value::DoubleValue(1.5))), "1.5");
        assert_eq!(render_value(&v(any_value::Value::DoubleValue(2.0))), "2");
        assert_eq!(
            render_value(&v(any_value::Value::BytesValue(vec![0xab, 1]))),
            "ab01"
        );
        let arr = v(any_value::Value::ArrayValue(ArrayValue {
            values: vec![
                v(any_value::Value::IntValue(1)),
                v(any_value::Value::StringValue("a".into())),
            ],
        }));
        assert_eq!(render_value(&arr), "[1,a]");
        assert_eq!(render_value(&AnyValue { value: None }), "");
    }

    #[test]
    fn all_filter_fields_must_hold_on_one_span() {
        let span = Span {
            service: "api".into(),
            name: "GET /".into(),
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 1_500,
            attributes: vec![KeyValue {
                key: "http.status_code".into(),
                value: Some(v(any_value::Value::IntValue(200))),
            }],
            ..Default::default()
        };
        let mut f = FilterCriteria {
            service: "api".into(),
            operation: "GET /".into(),
            min_duration_nanos: 500,
            max_duration_nanos: 500,
            start_time_min_unix_nano: 1_000,
            start_time_max_unix_nano: 1_000,
            ..Default::default()
        };
        f.tags.insert("http.status_code".into(), "200".into());
        assert!(span_matches(&span, &f));
        f.tags.insert("http.status_code".into(), "500".into());
        assert!(!span_matches(&span, &f));
        f.tags.clear();
        f.errors_only = true;
        assert!(!span_matches(&span, &f));
    }

    #[test]
    fn windows_read_an_end_of_zero_as_unbounded_and_may_be_empty() {
        assert_eq!(window(0, 0), Some((0, u64::MAX)));
        assert_eq!(window(5, 9), Some((5, 9)));
        assert_eq!(window(9, 9), Some((9, 9)));
        assert_eq!(window(10, 9), None);
        let f = FilterCriteria {
            start_time_min_unix_nano: 7,
            ..Default::default()
        };
        assert_eq!(start_window(&f), Some((7, u64::MAX)));
    }

    #[test]
    fn limit_defaults_and_caps() {
        let mut f = FilterCriteria::default();
        assert_eq!(effective_limit(&f), DEFAULT_LIMIT);
        f.limit = 5;
        assert_eq!(effective_limit(&f), 5);
        f.limit = u32::MAX;
        assert_eq!(effective_limit(&f), MAX_LIMIT);
    }
}
