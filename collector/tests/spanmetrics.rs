//! Span metrics through the real server: spans sent over OTLP/gRPC,
//! `/metrics` scraped and parsed by Prometheus' own Python parser
//! (`prometheus_client`, from the test venv), every family, label set,
//! count and bucket equal to what was sent, past the cardinality limit
//! too.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser as _;
use clew_collector::server::{Bound, Config, run};
use clew_collector::spanmetrics::BUCKETS_MS;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// The venv's python when it has `prometheus_client`, else `None` (the
/// test then says so and skips).
fn python() -> Option<PathBuf> {
    let p = std::env::var_os("CLEW_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/tmp/clew-venv/bin/python".into());
    let ok = std::process::Command::new(&p)
        .args(["-c", "import prometheus_client"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(p)
}

/// One span to send: service, name, OTLP kind, OTLP status code, duration.
struct Sent {
    service: &'static str,
    name: &'static str,
    kind: i32,
    code: i32,
    ms: f64,
}

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const INTERNAL: i32 = 1;
const UNSET: i32 = 0;
const OK: i32 = 1;
const ERROR: i32 = 2;
/// A span name that needs escaping in the text format.
const ODD: &str = "SELECT \"a\\b\"\nFROM t";

fn request(spans: &[Sent], seed: u8) -> ExportTraceServiceRequest {
    let mut by_service: BTreeMap<&str, Vec<Span>> = BTreeMap::new();
    for (i, s) in spans.iter().enumerate() {
        let start = 1_700_000_000_000_000_000u64 + i as u64 * 1_000_000_000;
        let span = Span {
            trace_id: vec![seed; 16],
            span_id: [seed, i as u8 + 1, 0, 0, 0, 0, 0, 1].to_vec(),
            name: s.name.into(),
            kind: s.kind,
            start_time_unix_nano: start,
            end_time_unix_nano: start + (s.ms * 1e6).round() as u64,
            status: Some(Status {
                code: s.code,
                message: String::new(),
            }),
            ..Default::default()
        };
        by_service.entry(s.service).or_default().push(span);
    }
    let resource_spans = by_service
        .into_iter()
        .map(|(service, spans)| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(service.into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

async fn start(data: &std::path::Path, extra: &[&str]) -> (Bound, oneshot::Sender<()>) {
    let mut args = vec!["clew-collector", "--storage", "memory"];
    for flag in ["--grpc-addr", "--http-addr", "--query-addr", "--ops-addr"] {
        args.extend([flag, "127.0.0.1:0"]);
    }
    args.extend(["--data-dir", data.to_str().unwrap()]);
    args.extend_from_slice(extra);
    let config = Config::try_parse_from(args).unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (bound_tx, bound_rx) = oneshot::channel();
    tokio::spawn(async move {
        let stop = async move {
            let _ = stop_rx.await;
        };
        run(config, stop, move |b| {
            let _ = bound_tx.send(b);
        })
        .await
        .unwrap();
    });
    let bound = tokio::time::timeout(Duration::from_secs(30), bound_rx)
        .await
        .unwrap()
        .unwrap();
    (bound, stop_tx)
}

async fn scrape(ops: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(ops).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// `text` parsed by `prometheus_client`: family name → its JSON.
fn parse(python: &PathBuf, text: &str) -> serde_json::Map<String, Value> {
    use std::io::Write as _;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/parse_metrics.py");
    let mut child = std::process::Command::new(python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).unwrap() {
        Value::Object(m) => m,
        other => panic!("{other}"),
    }
}

/// A series' labels, as the parser gives them (sorted by name).
type Labels = BTreeMap<String, String>;

fn labels_of(v: &Value) -> Labels {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

fn series(service: &str, name: &str, kind: &str, status: &str) -> Labels {
    [
        ("service_name", service),
        ("span_name", name),
        ("span_kind", kind),
        ("status_code", status),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn overflow() -> Labels {
    [("otel_metric_overflow".to_owned(), "true".to_owned())].into()
}

/// What the spans of each series should give: their durations.
fn expected(sent: &[Sent]) -> BTreeMap<Labels, Vec<f64>> {
    let kind = |k| match k {
        SERVER => "SPAN_KIND_SERVER",
        CLIENT => "SPAN_KIND_CLIENT",
        INTERNAL => "SPAN_KIND_INTERNAL",
        _ => unreachable!(),
    };
    let status = |c| match c {
        UNSET => "STATUS_CODE_UNSET",
        OK => "STATUS_CODE_OK",
        ERROR => "STATUS_CODE_ERROR",
        _ => unreachable!(),
    };
    let mut out: BTreeMap<Labels, Vec<f64>> = BTreeMap::new();
    for s in sent {
        // The limit is 4: the first three series are kept (in the order
        // they arrive), the rest overflow.
        let mut key = series(s.service, s.name, kind(s.kind), status(s.code));
        if !out.contains_key(&key) && out.len() >= 3 {
            key = overflow();
        }
        out.entry(key).or_default().push(s.ms);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_parses_the_span_metrics_and_they_count_what_was_sent() {
    let Some(python) = python() else {
        eprintln!(
            "SKIPPED: no python with prometheus_client (set CLEW_PYTHON or run scripts/test.sh, \
             which installs it into /var/tmp/clew-venv)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (bound, stop) = start(dir.path(), &["--spanmetrics-cardinality-limit", "4"]).await;
    let batches = [
        vec![
            Sent {
                service: "checkout",
                name: "GET /cart",
                kind: SERVER,
                code: UNSET,
                ms: 1.0,
            },
            Sent {
                service: "checkout",
                name: "GET /cart",
                kind: SERVER,
                code: UNSET,
                ms: 2.0,
            },
            Sent {
                service: "checkout",
                name: "GET /cart",
                kind: SERVER,
                code: ERROR,
                ms: 7.5,
            },
            Sent {
                service: "checkout",
                name: ODD,
                kind: CLIENT,
                code: OK,
                ms: 0.25,
            },
        ],
        vec![
            Sent {
                service: "checkout",
                name: "GET /cart",
                kind: SERVER,
                code: UNSET,
                ms: 120.0,
            },
            // New series past the limit: into the overflow series.
            Sent {
                service: "pay",
                name: "charge",
                kind: INTERNAL,
                code: UNSET,
                ms: 2500.0,
            },
            Sent {
                service: "pay",
                name: "refund",
                kind: SERVER,
                code: OK,
                ms: 20_000.0,
            },
            Sent {
                service: "checkout",
                name: "GET /cart",
                kind: SERVER,
                code: ERROR,
                ms: 3.0,
            },
        ],
    ];
    let mut client = TraceServiceClient::connect(format!("http://{}", bound.grpc))
        .await
        .unwrap();
    for (i, batch) in batches.iter().enumerate() {
        // Acknowledged once durable, and counted before that.
        client.export(request(batch, i as u8 + 1)).await.unwrap();
    }
    let text = scrape(bound.ops).await;
    let families = parse(&python, &text);
    let sent: Vec<Sent> = batches.into_iter().flatten().collect();
    let want = expected(&sent);
    assert_eq!(want.len(), 4, "three series and the overflow series");

    let calls = &families["traces_span_metrics_calls"];
    assert_eq!(calls["type"], "counter");
    let mut got_calls = BTreeMap::new();
    for s in calls["samples"].as_array().unwrap() {
        assert_eq!(s[0], "traces_span_metrics_calls_total");
        got_calls.insert(labels_of(&s[1]), s[2].as_f64().unwrap());
    }
    let want_calls: BTreeMap<Labels, f64> = want
        .iter()
        .map(|(k, v)| (k.clone(), v.len() as f64))
        .collect();
    assert_eq!(got_calls, want_calls, "{text}");

    let duration = &families["traces_span_metrics_duration_milliseconds"];
    assert_eq!(duration["type"], "histogram");
    let samples = duration["samples"].as_array().unwrap();
    assert_eq!(samples.len(), want.len() * (BUCKETS_MS.len() + 3));
    for (labels, durations) in &want {
        let of = |suffix: &str, le: Option<String>| -> f64 {
            let name = format!("traces_span_metrics_duration_milliseconds_{suffix}");
            let found = samples.iter().find(|s| {
                let mut l = labels_of(&s[1]);
                let got_le = l.remove("le");
                s[0] == name.as_str() && &l == labels && got_le == le
            });
            found.unwrap_or_else(|| panic!("no {name} {labels:?} le={le:?}"))[2]
                .as_f64()
                .unwrap()
        };
        for b in BUCKETS_MS {
            let n = durations.iter().filter(|d| **d <= b).count() as f64;
            assert_eq!(of("bucket", Some(format!("{b}"))), n, "{labels:?} le={b}");
        }
        let all = durations.len() as f64;
        assert_eq!(of("bucket", Some("+Inf".into())), all, "{labels:?}");
        assert_eq!(of("count", None), all, "{labels:?}");
        let sum: f64 = durations.iter().sum();
        assert!((of("sum", None) - sum).abs() < 1e-9, "{labels:?}");
    }
    // The odd name came through escaped and was read back whole.
    assert!(want.contains_key(&series(
        "checkout",
        ODD,
        "SPAN_KIND_CLIENT",
        "STATUS_CODE_OK"
    )));
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switched_off_there_are_no_span_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (bound, stop) = start(dir.path(), &["--spanmetrics", "false"]).await;
    let mut client = TraceServiceClient::connect(format!("http://{}", bound.grpc))
        .await
        .unwrap();
    let one = [Sent {
        service: "s",
        name: "n",
        kind: SERVER,
        code: UNSET,
        ms: 1.0,
    }];
    client.export(request(&one, 1)).await.unwrap();
    let text = scrape(bound.ops).await;
    assert!(
        text.contains("clew_spans_total{outcome=\"accepted\"} 1"),
        "{text}"
    );
    assert!(!text.contains("traces_span_metrics"), "{text}");
    let _ = stop.send(());
}
