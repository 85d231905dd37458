//! `clew-sidecar-load`: paced OTLP/gRPC load for a sidecar, measuring the
//! sidecar's memory and CPU — the sidecar benchmark of docs/PERFORMANCE.md.
//!
//! It sends `--rate` spans per second in batches of `--batch` (the
//! OpenTelemetry SDKs' default batch is 512) for `--duration`, and samples
//! the resident set size (VmRSS) and CPU time of `--pid` from /proc: once
//! idle before the load, and throughout it.

use std::time::{Duration, Instant};

use clap::Parser as _;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, trace_service_client::TraceServiceClient,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use rand::{Rng as _, SeedableRng as _};

#[derive(Debug, clap::Parser)]
#[command(
    name = "clew-sidecar-load",
    about = "Paced OTLP load for a sidecar, with its RSS and CPU"
)]
struct Args {
    /// The sidecar's OTLP/gRPC address.
    #[arg(long, default_value = "127.0.0.1:4317")]
    target: String,
    /// Spans per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Spans per request.
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// How long to send.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The sidecar's pid, to sample its memory and CPU.
    #[arg(long)]
    pid: Option<u32>,
    /// Clients sending at once (each `--rate / --concurrency` spans/s), as
    /// several application processes behind one agent.
    #[arg(long, default_value_t = 1)]
    concurrency: u64,
}

/// What one client sent and had refused.
#[derive(Default)]
struct Sent {
    sent: u64,
    refused: u64,
}

/// One client sending `rate` spans/s in batches of `batch` until `until`.
async fn client_loop(
    target: String,
    rate: u64,
    batch_len: usize,
    until: Instant,
) -> anyhow::Result<Sent> {
    let mut client = TraceServiceClient::connect(format!("http://{target}")).await?;
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    let every = Duration::from_secs_f64(batch_len as f64 / rate as f64);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut out = Sent::default();
    while Instant::now() < until {
        tick.tick().await;
        match client.export(batch(&mut rng, batch_len)).await {
            Ok(_) => out.sent += batch_len as u64,
            Err(_) => out.refused += batch_len as u64,
        }
    }
    Ok(out)
}

/// (RSS bytes, CPU seconds) of `pid`.
fn sample(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((rss_kb * 1024, ticks / 100.0))
}

fn attr(key: &str, v: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

/// A batch like an instrumented HTTP service sends: traces of 8 spans with
/// the usual semantic-convention attributes.
fn batch(rng: &mut rand::rngs::SmallRng, n: usize) -> ExportTraceServiceRequest {
    let now = clew_model::now_unix_nanos();
    let mut spans = Vec::with_capacity(n);
    let mut trace = [0u8; 16];
    for i in 0..n {
        if i % 8 == 0 {
            rng.fill(&mut trace);
        }
        let id: [u8; 8] = rng.random();
        spans.push(Span {
            trace_id: trace.to_vec(),
            span_id: id.to_vec(),
            name: ["GET /api/v1/search", "SELECT items", "redis GET"][i % 3].into(),
            kind: 2,
            start_time_unix_nano: now - 3_000_000,
            end_time_unix_nano: now,
            attributes: vec![
                attr("http.request.method", Value::StringValue("GET".into())),
                attr("url.path", Value::StringValue("/api/v1/search".into())),
                attr("http.response.status_code", Value::IntValue(200)),
                attr("server.address", Value::StringValue("service-a".into())),
            ],
            ..Default::default()
        });
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![attr("service.name", Value::StringValue("load".into()))],
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.rate > 0 && args.batch > 0 && args.concurrency > 0,
        "--rate, --batch and --concurrency must be positive"
    );
    let idle = args.pid.and_then(sample);
    let start = Instant::now();
    let until = start + args.duration;
    let clients: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let rate = (args.rate / args.concurrency).max(1);
            tokio::spawn(client_loop(args.target.clone(), rate, args.batch, until))
        })
        .collect();
    let cpu0 = idle.map(|s| s.1);
    let (mut peak, mut rss_sum, mut rss_n) = (0u64, 0u64, 0u64);
    let mut every = tokio::time::interval(Duration::from_millis(10));
    while Instant::now() < until {
        every.tick().await;
        if let Some((rss, _)) = args.pid.and_then(sample) {
            peak = peak.max(rss);
            rss_sum += rss;
            rss_n += 1;
        }
    }
    let (mut sent, mut refused) = (0u64, 0u64);
    for c in clients {
        let c = c.await??;
        sent += c.sent;
        refused += c.refused;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "sent {sent} spans in {secs:.1} s ({:.0} spans/s), refused {refused}",
        sent as f64 / secs
    );
    if let (Some((idle_rss, _)), Some(cpu0), Some((_, cpu1))) =
        (idle, cpu0, args.pid.and_then(sample))
    {
        println!(
            "sidecar: idle RSS {:.1} MiB; under load RSS mean {:.1} MiB, peak {:.1} MiB; CPU {:.2}% of one core",
            idle_rss as f64 / 1048576.0,
            rss_sum as f64 / rss_n.max(1) as f64 / 1048576.0,
            peak as f64 / 1048576.0,
            (cpu1 - cpu0) / secs * 100.0
        );
    }
    Ok(())
}
