//! Paced OTLP/gRPC load whose every span can be checked afterwards.
//!
//! Request `seq` of a run holds `spans_per_request` spans in traces of
//! `spans_per_trace`; every id is derived from (run nonce, `seq`, position),
//! so [`Load`] only records which requests were acknowledged and
//! [`expected_traces`] rebuilds what each of them must have stored.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, trace_service_client::TraceServiceClient,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tokio::task::JoinHandle;

/// What to send.
#[derive(Debug, Clone, Copy)]
pub struct LoadShape {
    /// Distinguishes this run's ids from any other's.
    pub nonce: u64,
    /// Spans per second.
    pub spans_per_sec: u32,
    /// Spans per export request.
    pub spans_per_request: u32,
    /// Spans per trace (divides `spans_per_request`).
    pub spans_per_trace: u32,
}

impl LoadShape {
    /// `spans_per_sec` in requests of 50 spans, two traces of 25 each, with
    /// a nonce from the clock and the process id.
    pub fn new(spans_per_sec: u32) -> Self {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        LoadShape {
            nonce: clock ^ (u64::from(std::process::id()) << 40),
            spans_per_sec,
            spans_per_request: 50,
            spans_per_trace: 25,
        }
    }

    fn trace_id(&self, seq: u32, t: u32) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.nonce.to_be_bytes());
        id[8..12].copy_from_slice(&seq.to_be_bytes());
        id[12..].copy_from_slice(&t.to_be_bytes());
        id
    }

    fn span_id(seq: u32, i: u32) -> [u8; 8] {
        let mut id = [0u8; 8];
        id[..4].copy_from_slice(&seq.to_be_bytes());
        // Position + 1: a span id must not be all zeros.
        id[4..].copy_from_slice(&(i + 1).to_be_bytes());
        id
    }

    /// Export request `seq`.
    pub fn request(&self, seq: u32) -> ExportTraceServiceRequest {
        let now = now_nanos();
        let spans = (0..self.spans_per_request)
            .map(|i| Span {
                trace_id: self.trace_id(seq, i / self.spans_per_trace).to_vec(),
                span_id: Self::span_id(seq, i).to_vec(),
                name: format!("chaos {}", i % 5),
                kind: 2,
                start_time_unix_nano: now - 2_000_000,
                end_time_unix_nano: now,
                attributes: vec![
                    attr("request.seq", Value::IntValue(i64::from(seq))),
                    attr("http.request.method", Value::StringValue("GET".into())),
                    attr("url.path", Value::StringValue("/api/v1/chaos".into())),
                ],
                ..Default::default()
            })
            .collect();
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![attr("service.name", Value::StringValue("chaos".into()))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// The traces (hex trace id, hex span ids) request `seq` holds.
    pub fn expected_traces(&self, seq: u32) -> Vec<(String, Vec<String>)> {
        let per = self.spans_per_trace;
        (0..self.spans_per_request / per)
            .map(|t| {
                let spans = (t * per..(t + 1) * per)
                    .map(|i| hex(&Self::span_id(seq, i)))
                    .collect();
                (hex(&self.trace_id(seq, t)), spans)
            })
            .collect()
    }
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(key: &str, v: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

/// The outcome of a load run.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Sequence numbers of the requests answered OK.
    pub acked: Vec<u32>,
    /// Requests not answered OK, by gRPC code name (`ClientTimeout` when
    /// no answer came within the client's deadline).
    pub refused: BTreeMap<String, u64>,
    /// Requests sent.
    pub sent: u32,
}

impl LoadReport {
    /// All refused requests.
    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }
}

/// Load running in the background until [`Load::stop`].
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<LoadReport>>,
    driver: JoinHandle<Vec<JoinHandle<()>>>,
}

/// Deadline of one export request to the sidecar.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl Load {
    /// Starts sending `shape` to the OTLP/gRPC server at `target`. Each
    /// request runs in its own task, so a slow or dead server does not
    /// slow the pace; the channel reconnects by itself after a restart.
    pub fn start(target: SocketAddr, shape: LoadShape) -> anyhow::Result<Load> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{target}"))?
            .connect_timeout(Duration::from_secs(1))
            .timeout(REQUEST_TIMEOUT)
            .connect_lazy();
        let client = TraceServiceClient::new(channel);
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let every = Duration::from_secs_f64(
            f64::from(shape.spans_per_request) / f64::from(shape.spans_per_sec),
        );
        let driver = tokio::spawn({
            let (stop, report) = (stop.clone(), report.clone());
            async move {
                let mut tick = tokio::time::interval(every);
                let mut tasks = Vec::new();
                let mut seq = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let (mut client, report) = (client.clone(), report.clone());
                    let req = shape.request(seq);
                    tasks.push(tokio::spawn(async move {
                        let answer =
                            tokio::time::timeout(REQUEST_TIMEOUT, client.export(req)).await;
                        let mut r = report.lock().unwrap_or_else(|e| e.into_inner());
                        match answer {
                            Ok(Ok(_)) => r.acked.push(seq),
                            Ok(Err(status)) => {
                                *r.refused.entry(format!("{:?}", status.code())).or_default() += 1
                            }
                            Err(_) => *r.refused.entry("ClientTimeout".into()).or_default() += 1,
                        }
                    }));
                    tasks.retain(|t| !t.is_finished());
                    seq += 1;
                }
                report.lock().unwrap_or_else(|e| e.into_inner()).sent = seq;
                tasks
            }
        });
        Ok(Load {
            stop,
            report,
            driver,
        })
    }

    /// A snapshot of the report so far.
    pub fn report(&self) -> LoadReport {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops sending, waits for the requests in flight and reports.
    pub async fn stop(self) -> anyhow::Result<LoadReport> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.driver.await? {
            t.await?;
        }
        let mut r = self
            .report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        r.acked.sort_unstable();
        Ok(r)
    }
}
