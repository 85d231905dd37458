use super::*;

fn any(v: pb::any_value::Value) -> Option<pb::AnyValue> {
    Some(pb::AnyValue { value: Some(v) })
}

fn native(trace: u8, span: u8, service: &str) -> pb::Span {
    let mut start = VectorClock::new();
    start.set("svc#1", 3);
    let mut end = start.clone();
    end.set("svc#1", 4);
    pb::Span {
        trace_id: vec![trace; 16],
        span_id: vec![span; 8],
        parent_span_id: vec![9; 8],
        name: "GET /x".into(),
        service: service.into(),
        kind: pb::SpanKind::Server as i32,
        start_time_unix_nano: 10,
        end_time_unix_nano: 20,
        attributes: vec![
            pb::KeyValue {
                key: "s".into(),
                value: any(pb::any_value::Value::StringValue("v".into())),
            },
            pb::KeyValue {
                key: "b".into(),
                value: any(pb::any_value::Value::BytesValue(vec![1, 2])),
            },
        ],
        events: vec![pb::Event {
            time_unix_nano: 15,
            name: "retry".into(),
            attributes: Vec::new(),
        }],
        links: vec![
            pb::Link {
                trace_id: vec![7; 16],
                span_id: vec![7; 8],
                trace_state: String::new(),
                attributes: Vec::new(),
            },
            pb::Link {
                trace_id: vec![7; 3],
                ..Default::default()
            },
        ],
        status: Some(pb::Status {
            code: pb::status::Code::Error as i32,
            message: "boom".into(),
        }),
        clock_start: Some(start.to_proto()),
        clock_end: Some(end.to_proto()),
        trace_state: "k=v".into(),
        resource: vec![pb::KeyValue {
            key: "host".into(),
            value: any(pb::any_value::Value::StringValue("h1".into())),
        }],
        node: "svc#1".into(),
    }
}

fn str_attr<'a>(kvs: &'a [common::KeyValue], key: &str) -> Option<&'a str> {
    kvs.iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            common::any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
}

#[test]
fn a_native_span_keeps_every_field_and_its_clocks() {
    let c = from_native(&[native(1, 2, "api")]);
    assert_eq!((c.rejected, c.first_error.as_str()), (0, ""));
    let rs = &c.request.resource_spans[0];
    let res = &rs.resource.as_ref().unwrap().attributes;
    assert_eq!(str_attr(res, attrs::SERVICE_NAME), Some("api"));
    assert_eq!(str_attr(res, attrs::NODE), Some("svc#1"));
    assert_eq!(str_attr(res, "host"), Some("h1"));
    let s = &rs.scope_spans[0].spans[0];
    assert_eq!(s.trace_id, vec![1; 16]);
    assert_eq!(s.parent_span_id, vec![9; 8]);
    assert_eq!(
        (s.kind, s.start_time_unix_nano, s.end_time_unix_nano),
        (2, 10, 20)
    );
    assert_eq!(s.trace_state, "k=v");
    assert_eq!(str_attr(&s.attributes, "s"), Some("v"));
    assert_eq!(
        str_attr(&s.attributes, attrs::CLOCK_START),
        Some("svc%231=3")
    );
    assert_eq!(str_attr(&s.attributes, attrs::CLOCK_END), Some("svc%231=4"));
    assert_eq!(s.events[0].name, "retry");
    assert_eq!(s.links.len(), 1, "the link with a bad id is left out");
    let st = s.status.as_ref().unwrap();
    assert_eq!((st.code, st.message.as_str()), (2, "boom"));
}

#[test]
fn spans_are_grouped_by_resource_and_invalid_ones_counted() {
    let mut bad_trace = native(0, 2, "api");
    bad_trace.trace_id = vec![0; 16];
    let mut bad_parent = native(1, 3, "api");
    bad_parent.parent_span_id = vec![1; 3];
    let spans = [
        native(1, 2, "api"),
        native(1, 4, "db"),
        bad_trace,
        native(2, 5, "api"),
        bad_parent,
    ];
    let c = from_native(&spans);
    assert_eq!(c.rejected, 2);
    assert_eq!(c.first_error, Invalid::TraceId.to_string());
    let sizes: Vec<usize> = c
        .request
        .resource_spans
        .iter()
        .map(|rs| rs.scope_spans[0].spans.len())
        .collect();
    assert_eq!(sizes, vec![2, 1]);
}
