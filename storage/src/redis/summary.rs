//! What a fragment (or a stored trace) contributes to the indexes and the
//! facts.

use std::borrow::Cow;
use std::collections::HashMap;

use clew_proto::v1::{AnyValue, any_value};

use super::Span;
use super::keys::{FACT_MAX, FACT_MIN, Mode, ShardKeys, bucket};
use crate::filter;

/// A tag's value as filters compare it, borrowed when it is a string.
fn tag_value(v: Option<&AnyValue>) -> Cow<'_, str> {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => Cow::Borrowed(s),
        _ => Cow::Owned(v.map(filter::render_value).unwrap_or_default()),
    }
}

/// What a fragment (or a stored trace) contributes to the indexes.
#[derive(Debug)]
pub(super) struct Summary<'a> {
    /// Earliest start.
    start: u64,
    /// Newest end.
    end: u64,
    /// Earliest start of an ERROR span.
    error: Option<u64>,
    /// Shortest span duration.
    min_dur: u64,
    /// Per service, in order of its first span.
    pub(super) services: Vec<ServiceSummary<'a>>,
    /// (service, operation) → earliest start, and newest end per span kind.
    pub(super) ops: HashMap<(&'a str, &'a str), OpSummary>,
    /// Indexed tag pairs → earliest start.
    tags: HashMap<(&'a str, Cow<'a, str>), u64>,
}

/// The spans of one service in a [`Summary`].
#[derive(Debug)]
pub(super) struct ServiceSummary<'a> {
    pub(super) name: &'a str,
    start: u64,
    pub(super) end: u64,
    error: Option<u64>,
    min_dur: u64,
    max_dur: u64,
}

/// The spans of one operation in a [`Summary`].
#[derive(Debug)]
pub(super) struct OpSummary {
    start: u64,
    /// (kind, newest end).
    pub(super) kinds: Vec<(i32, u64)>,
}

fn earliest(at: &mut Option<u64>, t: u64) {
    *at = Some(at.map_or(t, |a| a.min(t)));
}

impl<'a> Summary<'a> {
    pub(super) fn of(spans: &'a [Span]) -> Self {
        let mut s = Summary {
            start: u64::MAX,
            end: 0,
            error: None,
            min_dur: u64::MAX,
            services: Vec::new(),
            ops: HashMap::new(),
            tags: HashMap::new(),
        };
        for span in spans {
            s.add(span);
        }
        s
    }

    /// Adds one span: to the whole, its service, its operation, its tags.
    fn add(&mut self, span: &'a Span) {
        let (start, end) = (span.start_time_unix_nano, span.end_time_unix_nano);
        let dur = filter::duration(span);
        let error = filter::is_error(span);
        self.start = self.start.min(start);
        self.end = self.end.max(end);
        self.min_dur = self.min_dur.min(dur);
        if error {
            earliest(&mut self.error, start);
        }
        let name = span.service.as_str();
        self.add_to_service(name, (start, end), dur, error);
        let op = self
            .ops
            .entry((name, span.name.as_str()))
            .or_insert(OpSummary {
                start,
                kinds: Vec::new(),
            });
        op.start = op.start.min(start);
        match op.kinds.iter_mut().find(|(k, _)| *k == span.kind) {
            Some((_, e)) => *e = (*e).max(end),
            None => op.kinds.push((span.kind, end)),
        }
        for kv in span.attributes.iter().chain(span.resource.iter()) {
            let value = tag_value(kv.value.as_ref());
            if filter::indexable_tag(&kv.key, &value) {
                let e = self.tags.entry((kv.key.as_str(), value)).or_insert(start);
                *e = (*e).min(start);
            }
        }
    }

    /// Adds a span of service `name` to that service's summary.
    fn add_to_service(&mut self, name: &'a str, (start, end): (u64, u64), dur: u64, error: bool) {
        let i = match self.services.iter().position(|x| x.name == name) {
            Some(i) => i,
            None => {
                self.services.push(ServiceSummary {
                    name,
                    start,
                    end,
                    error: None,
                    min_dur: dur,
                    max_dur: dur,
                });
                self.services.len() - 1
            }
        };
        let svc = &mut self.services[i];
        svc.start = svc.start.min(start);
        svc.end = svc.end.max(end);
        svc.min_dur = svc.min_dur.min(dur);
        svc.max_dur = svc.max_dur.max(dur);
        if error {
            earliest(&mut svc.error, start);
        }
    }

    /// (index key, mode, score) of the trace in each index it belongs to.
    pub(super) fn index_entries(&self, k: &ShardKeys<'_>) -> Vec<(Vec<u8>, Mode, u64)> {
        let mut out = vec![(k.all(), Mode::Lt, self.start)];
        if self.services.is_empty() {
            return out;
        }
        out.reserve(1 + 3 * self.services.len() + self.ops.len() + self.tags.len());
        if let Some(at) = self.error {
            out.push((k.errors(None), Mode::Lt, at));
        }
        for svc in &self.services {
            out.push((k.service(svc.name), Mode::Lt, svc.start));
            out.push((k.short(svc.name, bucket(svc.min_dur)), Mode::Lt, svc.start));
            if let Some(at) = svc.error {
                out.push((k.errors(Some(svc.name)), Mode::Lt, at));
            }
        }
        for ((svc, name), op) in &self.ops {
            out.push((k.operation(svc, name), Mode::Lt, op.start));
        }
        for ((key, value), start) in &self.tags {
            out.push((k.tag(key, value), Mode::Lt, *start));
        }
        out
    }

    /// Facts (kind, service, duration): longest and shortest span per
    /// service, shortest overall (service ""). The store script keeps the
    /// maximum ([`FACT_MAX`]) or minimum of what it finds and what it is
    /// given.
    pub(super) fn facts(&self) -> Vec<(u8, &'a str, u64)> {
        let mut out = Vec::with_capacity(1 + 2 * self.services.len());
        out.push((FACT_MIN, "", self.min_dur));
        for svc in &self.services {
            out.push((FACT_MAX, svc.name, svc.max_dur));
            out.push((FACT_MIN, svc.name, svc.min_dur));
        }
        out
    }
}
