use super::*;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;

fn span(i: usize, pad: usize) -> Span {
    Span {
        trace_id: (i as u128 + 1).to_be_bytes().to_vec(),
        span_id: (i as u64 + 1).to_be_bytes().to_vec(),
        name: format!("op-{i}"),
        attributes: vec![KeyValue {
            key: "pad".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("x".repeat(pad))),
            }),
            ..KeyValue::default()
        }],
        ..Span::default()
    }
}

/// `groups` resources of `per` spans each, in two scopes per resource.
fn request(groups: usize, per: usize, pad: usize) -> ExportTraceServiceRequest {
    let mut n = 0;
    let resource_spans = (0..groups)
        .map(|g| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(format!("svc-{g}"))),
                    }),
                    ..KeyValue::default()
                }],
                ..Resource::default()
            }),
            scope_spans: (0..2)
                .map(|s| ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: format!("scope-{s}"),
                        ..InstrumentationScope::default()
                    }),
                    spans: (0..per / 2)
                        .map(|_| {
                            n += 1;
                            span(n, pad)
                        })
                        .collect(),
                    schema_url: String::new(),
                })
                .collect(),
            schema_url: String::new(),
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

/// (service, scope, span name) of every span, in order.
fn flatten(req: &ExportTraceServiceRequest) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let svc = format!("{:?}", rs.resource.as_ref().map(|r| &r.attributes));
        for ss in &rs.scope_spans {
            let scope = ss
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for s in &ss.spans {
                out.push((svc.clone(), scope.clone(), s.name.clone()));
            }
        }
    }
    out
}

fn decode_all(parts: &[(Bytes, usize)]) -> Vec<(String, String, String)> {
    parts
        .iter()
        .flat_map(|(b, n)| {
            let r = ExportTraceServiceRequest::decode(b.clone()).unwrap();
            assert_eq!(crate::routing::span_count(&r), *n);
            flatten(&r)
        })
        .collect()
}

#[test]
fn chunks_respect_the_span_limit_and_keep_every_span_in_its_groups() {
    let req = request(3, 10_000, 4);
    let want = flatten(&req);
    let limits = Limits {
        max_spans: 8192,
        max_bytes: usize::MAX,
    };
    let parts = chunk(req, limits);
    assert!(parts.len() >= 4);
    assert!(parts.iter().all(|(_, n)| *n <= 8192 && *n > 0));
    assert_eq!(decode_all(&parts), want);
}

#[test]
fn chunks_respect_the_byte_limit() {
    let req = request(2, 400, 500);
    let want = flatten(&req);
    let limits = Limits {
        max_spans: 10_000,
        max_bytes: 20_000,
    };
    let parts = chunk(req, limits);
    assert!(parts.len() > 1);
    for (body, _) in &parts {
        assert!(body.len() <= 20_000, "{} bytes", body.len());
    }
    assert_eq!(decode_all(&parts), want);
}

#[test]
fn a_request_within_the_limits_is_one_chunk_and_a_huge_span_goes_alone() {
    let req = request(1, 10, 10);
    let parts = chunk(
        req.clone(),
        Limits {
            max_spans: 10,
            max_bytes: 1 << 20,
        },
    );
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].0, Bytes::from(req.encode_to_vec()));
    let big = request(1, 2, 50_000);
    let parts = chunk(
        big,
        Limits {
            max_spans: 10,
            max_bytes: 1_000,
        },
    );
    assert_eq!(parts.iter().map(|p| p.1).collect::<Vec<_>>(), vec![1, 1]);
}

#[test]
fn halves_split_by_records_then_by_spans_down_to_one_span() {
    let req = request(2, 20, 3);
    let want = flatten(&req);
    let parts = chunk(
        req,
        Limits {
            max_spans: 7,
            max_bytes: usize::MAX,
        },
    );
    let mut c = Coalescer::new(Limits {
        max_spans: usize::MAX,
        max_bytes: usize::MAX,
    });
    for (b, n) in &parts {
        c.push(b.clone(), *n);
    }
    let batch = c.finish();
    assert_eq!(
        flatten(&ExportTraceServiceRequest::decode(batch.body.clone()).unwrap()),
        want
    );
    // Halving again and again ends in single spans that, in order, are the
    // whole request.
    let mut todo = vec![batch];
    let mut singles = Vec::new();
    while let Some(b) = todo.pop() {
        match b.halves() {
            Some((x, y)) => {
                assert_eq!(x.spans + y.spans, b.spans);
                todo.push(y);
                todo.push(x);
            }
            None => {
                assert_eq!(b.spans, 1);
                singles.push((b.body, b.spans));
            }
        }
    }
    assert_eq!(decode_all(&singles), want);
}

#[test]
fn coalescer_stops_at_either_limit() {
    let limits = Limits {
        max_spans: 10,
        max_bytes: 100,
    };
    let mut c = Coalescer::new(limits);
    assert!(c.fits(1_000, 50), "the first record always fits");
    c.push(Bytes::from(vec![0u8; 40]), 4);
    assert!(c.fits(60, 6));
    assert!(!c.fits(61, 1));
    assert!(!c.fits(1, 7));
    c.push(Bytes::from(vec![1u8; 60]), 6);
    let b = c.finish();
    assert_eq!((b.body.len(), b.spans), (100, 10));
    assert_eq!(b.records, vec![(40, 4), (100, 6)]);
}

#[test]
fn the_collector_limit_is_read_from_its_refusal() {
    assert_eq!(
        limit_in_refusal("request has 22600 spans, more than the limit of 10000"),
        Some(10_000)
    );
    assert_eq!(limit_in_refusal("invalid protobuf"), None);
    assert_eq!(limit_in_refusal("more than the limit of 0"), None);
}
