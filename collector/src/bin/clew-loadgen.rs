//! `clew-loadgen`: sends OTLP/gRPC span batches to a collector as fast as it
//! takes them and reports spans per second — and, given the collector's pid,
//! spans per collector CPU-second (read from /proc).
//!
//! ```sh
//! clew-loadgen --target 127.0.0.1:4317 --spans 1000000 --batch 512 --concurrency 8 --collector-pid $PID
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, trace_service_client::TraceServiceClient,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use rand::{Rng, SeedableRng, rngs::SmallRng};

#[derive(Debug, Parser)]
#[command(
    name = "clew-loadgen",
    about = "OTLP/gRPC load generator for clew-collector"
)]
struct Args {
    /// Collector OTLP/gRPC address.
    #[arg(long, default_value = "127.0.0.1:4317")]
    target: String,
    /// Spans to send in total.
    #[arg(long, default_value_t = 1_000_000)]
    spans: u64,
    /// Spans per request.
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Spans per trace (a root and its children).
    #[arg(long, default_value_t = 10)]
    trace_size: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Distinct services.
    #[arg(long, default_value_t = 8)]
    services: usize,
    /// The collector's pid, to report spans per collector CPU-second.
    #[arg(long)]
    collector_pid: Option<u32>,
    /// Extra pids whose CPU counts with the collector's (e.g. redis-server).
    #[arg(long)]
    also_pid: Vec<u32>,
}

fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

/// One request of `n` spans in traces of `trace_size`, all fresh ids.
fn request(rng: &mut SmallRng, args: &Args, n: usize) -> ExportTraceServiceRequest {
    let now = clew_tracer::span::now_unix_nanos();
    let service = rng.random_range(0..args.services);
    let mut spans = Vec::with_capacity(n);
    let mut trace_id = [0u8; 16];
    let mut root = [0u8; 8];
    for i in 0..n {
        if i % args.trace_size == 0 {
            rng.fill(&mut trace_id);
            rng.fill(&mut root);
        }
        let mut span_id = [0u8; 8];
        rng.fill(&mut span_id);
        let is_root = i % args.trace_size == 0;
        if is_root {
            span_id = root;
        }
        let dur = rng.random_range(100_000..50_000_000u64);
        let error = rng.random_ratio(1, 50);
        spans.push(Span {
            trace_id: trace_id.to_vec(),
            span_id: span_id.to_vec(),
            parent_span_id: if is_root { Vec::new() } else { root.to_vec() },
            name: format!("op-{}", rng.random_range(0..20)),
            kind: if is_root {
                span::SpanKind::Server as i32
            } else {
                span::SpanKind::Client as i32
            },
            start_time_unix_nano: now - dur,
            end_time_unix_nano: now,
            attributes: vec![
                kv("http.request.method", Value::StringValue("GET".into())),
                kv(
                    "http.response.status_code",
                    Value::IntValue(if error { 500 } else { 200 }),
                ),
                kv(
                    "customer.tier",
                    Value::StringValue(["free", "pro", "enterprise"][i % 3].into()),
                ),
                kv("retry", Value::BoolValue(false)),
            ],
            status: Some(Status {
                code: if error { 2 } else { 0 },
                message: String::new(),
            }),
            ..Default::default()
        });
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv(
                    "service.name",
                    Value::StringValue(format!("service-{service}")),
                )],
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

/// user + system CPU seconds of a process, from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // USER_HZ is 100 on Linux.
    Some((utime + stime) / 100.0)
}

fn total_cpu(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|p| cpu_seconds(*p)).sum()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    anyhow::ensure!(
        args.batch > 0 && args.trace_size > 0 && args.concurrency > 0,
        "sizes must be positive"
    );
    let endpoint = format!("http://{}", args.target);
    let requests_total = args.spans.div_ceil(args.batch as u64);
    let next = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut pids: Vec<u32> = args.collector_pid.into_iter().collect();
    pids.extend(&args.also_pid);
    let cpu_before = total_cpu(&pids);

    // Requests are generated before the clock starts, so the figure is the
    // collector's, not the generator's.
    let per_worker = requests_total.div_ceil(args.concurrency as u64) as usize;
    let mut prepared = Vec::new();
    for w in 0..args.concurrency {
        let mut rng = SmallRng::seed_from_u64(w as u64 + 1);
        prepared.push(
            (0..per_worker)
                .map(|_| request(&mut rng, &args, args.batch))
                .collect::<Vec<_>>(),
        );
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for batch in prepared {
        let (next, sent, refused, endpoint) = (
            Arc::clone(&next),
            Arc::clone(&sent),
            Arc::clone(&refused),
            endpoint.clone(),
        );
        let args = Arc::clone(&args);
        tasks.push(tokio::spawn(async move {
            let mut client = TraceServiceClient::connect(endpoint)
                .await
                .context("connecting to the collector")?
                .max_encoding_message_size(64 << 20);
            for req in batch {
                if next.fetch_add(1, Ordering::Relaxed) >= requests_total {
                    break;
                }
                loop {
                    match client.export(req.clone()).await {
                        Ok(_) => {
                            sent.fetch_add(args.batch as u64, Ordering::Relaxed);
                            break;
                        }
                        Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                            // Backpressure: back off and resend.
                            refused.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(s) => anyhow::bail!("export failed: {s}"),
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let spans = sent.load(Ordering::Relaxed);
    println!(
        "sent {spans} spans in {elapsed:.2} s: {:.0} spans/s ({} requests of {}, {} connections, {} refused with RESOURCE_EXHAUSTED and resent)",
        spans as f64 / elapsed,
        requests_total,
        args.batch,
        args.concurrency,
        refused.load(Ordering::Relaxed)
    );
    if let (Some(before), Some(after)) = (cpu_before, total_cpu(&pids)) {
        let cpu = after - before;
        println!(
            "collector{} CPU: {cpu:.2} s → {:.0} spans per CPU-second",
            if args.also_pid.is_empty() {
                ""
            } else {
                " (+ also-pids)"
            },
            spans as f64 / cpu.max(0.01)
        );
    }
    Ok(())
}
