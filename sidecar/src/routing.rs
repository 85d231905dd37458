//! Routing by trace ID: every span goes to the collector its trace is placed
//! on, by the rendezvous hash of [`clew_model::placement`] that the
//! collectors also use to choose a trace's replicas.

pub use clew_model::placement::{member_hash as endpoint_hash, pick};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

/// Number of spans in a request.
pub fn span_count(req: &ExportTraceServiceRequest) -> usize {
    req.resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum()
}

/// Splits `req` into one request per endpoint (index into `endpoints`),
/// keeping each span under its resource and scope. Empty parts are left
/// out. With one endpoint, or when every span goes to the same one, the
/// request is moved, not copied.
pub fn split(
    req: ExportTraceServiceRequest,
    endpoints: &[u64],
) -> Vec<(usize, ExportTraceServiceRequest)> {
    if endpoints.is_empty() {
        return Vec::new();
    }
    if endpoints.len() == 1 {
        return vec![(0, req)];
    }
    // Common case: a batch of one trace, or every trace on one endpoint.
    let mut first = None;
    let mut uniform = true;
    'scan: for r in &req.resource_spans {
        for s in &r.scope_spans {
            for span in &s.spans {
                let idx = pick(endpoints, &span.trace_id);
                match first {
                    None => first = idx,
                    Some(f) if Some(f) != idx => {
                        uniform = false;
                        break 'scan;
                    }
                    Some(_) => {}
                }
            }
        }
    }
    if uniform {
        return first.map(|f| vec![(f, req)]).unwrap_or_default();
    }
    let mut parts: Vec<Option<ExportTraceServiceRequest>> = vec![None; endpoints.len()];
    for rs in req.resource_spans {
        let ResourceSpans {
            resource,
            scope_spans,
            schema_url,
        } = rs;
        for ss in scope_spans {
            let ScopeSpans {
                scope,
                spans,
                schema_url: scope_schema,
            } = ss;
            for span in spans {
                let Some(idx) = pick(endpoints, &span.trace_id) else {
                    continue;
                };
                let part = parts[idx].get_or_insert_with(ExportTraceServiceRequest::default);
                // Spans arrive grouped by resource and scope, so the group
                // to append to is nearly always the last one.
                let needs_resource = part
                    .resource_spans
                    .last()
                    .is_none_or(|last| last.resource != resource || last.schema_url != schema_url);
                if needs_resource {
                    part.resource_spans.push(ResourceSpans {
                        resource: resource.clone(),
                        scope_spans: Vec::new(),
                        schema_url: schema_url.clone(),
                    });
                }
                let Some(last_rs) = part.resource_spans.last_mut() else {
                    continue;
                };
                let needs_scope = last_rs
                    .scope_spans
                    .last()
                    .is_none_or(|last| last.scope != scope || last.schema_url != scope_schema);
                if needs_scope {
                    last_rs.scope_spans.push(ScopeSpans {
                        scope: scope.clone(),
                        spans: Vec::new(),
                        schema_url: scope_schema.clone(),
                    });
                }
                if let Some(last_ss) = last_rs.scope_spans.last_mut() {
                    last_ss.spans.push(span);
                }
            }
        }
    }
    parts
        .into_iter()
        .enumerate()
        .filter_map(|(i, p)| p.map(|p| (i, p)))
        .collect()
}

/// Appends `more` to `into` (for coalescing queued requests into one send).
pub fn merge(into: &mut ExportTraceServiceRequest, more: ExportTraceServiceRequest) {
    into.resource_spans.extend(more.resource_spans);
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::Span;

    fn tid(i: u64) -> Vec<u8> {
        use clew_model::placement::mix;
        let mut v = mix(i).to_be_bytes().to_vec();
        v.extend_from_slice(&mix(i + 7).to_be_bytes());
        v
    }

    fn eps(names: &[&str]) -> Vec<u64> {
        names.iter().map(|n| endpoint_hash(n)).collect()
    }

    #[test]
    fn empty_endpoint_list_picks_nothing() {
        assert_eq!(pick(&[], &tid(1)), None);
        let req = ExportTraceServiceRequest::default();
        assert!(split(req, &[]).is_empty());
    }

    fn request(traces: &[u64]) -> ExportTraceServiceRequest {
        let spans = traces
            .iter()
            .enumerate()
            .map(|(i, t)| Span {
                trace_id: tid(*t),
                span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                name: format!("op{i}"),
                ..Default::default()
            })
            .collect();
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource::default()),
                scope_spans: vec![ScopeSpans {
                    scope: None,
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    #[test]
    fn split_keeps_every_span_once_with_its_resource() {
        let e = eps(&["a:1", "b:1"]);
        let traces: Vec<u64> = (0..200).map(|i| i % 37).collect();
        let req = request(&traces);
        let parts = split(req, &e);
        assert_eq!(parts.len(), 2);
        let mut total = 0;
        for (idx, part) in &parts {
            assert_eq!(part.resource_spans.len(), 1, "one resource group per part");
            for s in &part.resource_spans[0].scope_spans[0].spans {
                assert_eq!(pick(&e, &s.trace_id), Some(*idx));
                total += 1;
            }
        }
        assert_eq!(total, 200);
    }

    #[test]
    fn split_of_one_trace_moves_the_request() {
        let e = eps(&["a:1", "b:1", "c:1"]);
        let req = request(&[5, 5, 5]);
        let parts = split(req.clone(), &e);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].1, req);
    }
}
