//! `clew-loadgen`: sends OTLP/gRPC span batches to a collector as fast as it
//! takes them and reports spans per second — and, given the collector's pid,
//! spans per collector CPU-second (read from /proc).
//!
//! ```sh
//! clew-loadgen --target 127.0.0.1:4317 --spans 1000000 --batch 512 --concurrency 8 --collector-pid $PID
//! ```
//!
//! With `--wait-stored`, it then polls the collector's gRPC `Query` service
//! until a sample of the sent traces is stored whole (end-to-end throughput
//! and CPU include assembly and storage) — or, given `--metrics-addr`, until
//! the collector's `clew_spans_stored_total` (plus duplicates) counts every
//! span sent, which also works for a store that evicts — and with
//! `--queries N` it measures trace-by-ID and search latency (p50/p99) over
//! what is stored.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use clew_proto::v1 as pb;
use clew_proto::v1::query_client::QueryClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, trace_service_client::TraceServiceClient,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use tonic::transport::Channel;

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
    /// After sending, wait until a sample of the sent traces is stored whole
    /// (polled through the gRPC Query service) and report end-to-end figures.
    #[arg(long)]
    wait_stored: bool,
    /// The collector's ops address (`host:port`): with it, waiting for
    /// storage polls `/metrics` until every span sent is counted as stored,
    /// instead of polling a sample of traces.
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Give up waiting for storage after this many seconds.
    #[arg(long, default_value_t = 900)]
    wait_timeout_secs: u64,
    /// Queries per kind (trace by ID, each search) to time after storing;
    /// 0: none. Implies `--wait-stored`.
    #[arg(long, default_value_t = 0)]
    queries: usize,
    /// PEM CA certificates of the collector's TLS certificate: connect over
    /// TLS.
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// The name the collector's certificate carries, when it is not the
    /// target's host.
    #[arg(long, requires = "tls_ca")]
    tls_server_name: Option<String>,
}

fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

/// One request of `n` spans in traces of `trace_size`, all fresh ids. The
/// trace ids and their span counts are pushed to `ids`.
fn request(
    rng: &mut SmallRng,
    args: &Args,
    n: usize,
    ids: &mut Vec<([u8; 16], usize)>,
) -> ExportTraceServiceRequest {
    let now = clew_model::now_unix_nanos();
    let service = rng.random_range(0..args.services);
    let mut spans = Vec::with_capacity(n);
    let mut trace_id = [0u8; 16];
    let mut root = [0u8; 8];
    for i in 0..n {
        if i % args.trace_size == 0 {
            rng.fill(&mut trace_id);
            rng.fill(&mut root);
            ids.push((trace_id, args.trace_size.min(n - i)));
        }
        let mut span_id = [0u8; 8];
        rng.fill(&mut span_id);
        let is_root = i % args.trace_size == 0;
        if is_root {
            span_id = root;
        }
        spans.push(span(
            rng,
            now,
            i,
            trace_id,
            span_id,
            (!is_root).then_some(root),
        ));
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

/// The `i`-th span of a request, a child of `parent` (a root without one),
/// with a random operation, duration and (one in 50) error.
fn span(
    rng: &mut SmallRng,
    now: u64,
    i: usize,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
) -> Span {
    let is_root = parent.is_none();
    let dur = rng.random_range(100_000..50_000_000u64);
    let error = rng.random_ratio(1, 50);
    Span {
        trace_id: trace_id.to_vec(),
        span_id: span_id.to_vec(),
        parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
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
    let args = parse_args()?;
    let endpoint = format!("http://{}", args.target);
    let requests_total = args.spans.div_ceil(args.batch as u64);
    let mut pids: Vec<u32> = args.collector_pid.into_iter().collect();
    pids.extend(&args.also_pid);
    let cpu_before = total_cpu(&pids);

    // Requests are generated before the clock starts, so the figure is the
    // collector's, not the generator's.
    // Span times are taken while requests are prepared.
    let load_start = clew_model::now_unix_nanos().saturating_sub(1_000_000_000);
    let (prepared, trace_ids) = prepare(&args, requests_total);
    let sent = send(&args, &endpoint, prepared, requests_total).await?;
    let (spans, elapsed) = (sent.spans, sent.elapsed);
    println!(
        "sent {spans} spans in {elapsed:.2} s: {:.0} spans/s ({} requests of {}, {} connections, {} refused with RESOURCE_EXHAUSTED or UNAVAILABLE and resent)",
        spans as f64 / elapsed,
        requests_total,
        args.batch,
        args.concurrency,
        sent.refused
    );
    if !sent.latencies.is_empty() {
        let (p50, p99) = percentiles(sent.latencies.clone());
        println!("acknowledgement latency: p50 {p50:.2} ms, p99 {p99:.2} ms");
    }
    print_cpu("", cpu_before, &pids, &args, spans);
    if !args.wait_stored && args.queries == 0 {
        return Ok(());
    }
    let acked = acked_traces(&trace_ids, &sent.requests);
    anyhow::ensure!(!acked.is_empty(), "nothing was sent");
    let mut query =
        QueryClient::new(connect(&args, &endpoint).await?).max_decoding_message_size(64 << 20);
    match &args.metrics_addr {
        Some(addr) => wait_counted(addr, spans, &args, sent.start).await?,
        None => wait_stored(&mut query, &acked, &args, sent.start).await?,
    }
    print_cpu(
        "end to end (sent, assembled, stored): ",
        cpu_before,
        &pids,
        &args,
        spans,
    );
    if args.queries > 0 {
        query_latency(&mut query, &acked, &args, load_start).await?;
    }
    Ok(())
}

/// The command line, checked; `--queries` implies `--wait-stored`.
/// A connection to `endpoint` (`http://host:port`), over TLS with
/// `--tls-ca`.
async fn connect(args: &Args, endpoint: &str) -> anyhow::Result<Channel> {
    let e = tonic::transport::Endpoint::from_shared(endpoint.to_string())?;
    let channel = match &args.tls_ca {
        Some(ca) => {
            let tls = clew_runtime::tls::ClientTls::load(clew_runtime::tls::ClientTlsFiles {
                ca: ca.clone(),
                identity: None,
                server_name: args.tls_server_name.clone(),
            })?;
            e.connect_with_connector(tls.connector()).await
        }
        None => e.connect().await,
    };
    channel.context("connecting to the collector")
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args::parse();
    args.wait_stored |= args.queries > 0;
    anyhow::ensure!(
        args.batch > 0 && args.trace_size > 0 && args.concurrency > 0,
        "sizes must be positive"
    );
    Ok(args)
}

/// The requests of each connection, and the traces of each of its requests
/// (in the order the requests are sent).
type Prepared = (
    Vec<Vec<ExportTraceServiceRequest>>,
    Vec<Vec<Vec<SentTrace>>>,
);

/// Generates every request up front, one seeded generator per connection.
fn prepare(args: &Args, requests_total: u64) -> Prepared {
    let per_worker = requests_total.div_ceil(args.concurrency as u64) as usize;
    let mut prepared = Vec::new();
    let mut trace_ids: Vec<Vec<Vec<SentTrace>>> = Vec::new();
    for w in 0..args.concurrency {
        let mut rng = SmallRng::seed_from_u64(w as u64 + 1);
        let mut ids = Vec::new();
        prepared.push(
            (0..per_worker)
                .map(|_| {
                    let mut these = Vec::new();
                    let req = request(&mut rng, args, args.batch, &mut these);
                    ids.push(these);
                    req
                })
                .collect::<Vec<_>>(),
        );
        trace_ids.push(ids);
    }
    (prepared, trace_ids)
}

/// State the sending connections share.
struct Shared {
    /// Requests to send in all.
    requests_total: u64,
    /// Spans in each request.
    batch: u64,
    /// Requests claimed so far.
    next: AtomicU64,
    /// Spans acknowledged.
    sent: AtomicU64,
    /// Requests refused with RESOURCE_EXHAUSTED or UNAVAILABLE (each
    /// resent).
    refused: AtomicU64,
    /// Milliseconds from sending each acknowledged request to its answer.
    latencies: parking_lot::Mutex<Vec<f64>>,
}

/// What sending achieved.
struct Sent {
    /// When the first connection started.
    start: Instant,
    /// Seconds from `start` until every request was acknowledged.
    elapsed: f64,
    /// Spans acknowledged.
    spans: u64,
    /// Requests refused with RESOURCE_EXHAUSTED or UNAVAILABLE and resent.
    refused: u64,
    /// Requests acknowledged on each connection.
    requests: Vec<u64>,
    /// Milliseconds from sending each acknowledged request to its answer.
    latencies: Vec<f64>,
}

/// Sends the prepared requests over one connection each, concurrently.
async fn send(
    args: &Args,
    endpoint: &str,
    prepared: Vec<Vec<ExportTraceServiceRequest>>,
    requests_total: u64,
) -> anyhow::Result<Sent> {
    let shared = Arc::new(Shared {
        requests_total,
        batch: args.batch as u64,
        next: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        latencies: parking_lot::Mutex::new(Vec::with_capacity(requests_total as usize)),
    });
    let sent_requests: Vec<Arc<AtomicU64>> = (0..args.concurrency)
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (batch, done) in prepared.into_iter().zip(&sent_requests) {
        tasks.push(tokio::spawn(send_connection(
            connect(args, endpoint).await?,
            batch,
            Arc::clone(&shared),
            Arc::clone(done),
        )));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(Sent {
        start,
        elapsed,
        spans: shared.sent.load(Ordering::Relaxed),
        refused: shared.refused.load(Ordering::Relaxed),
        requests: sent_requests
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect(),
        latencies: std::mem::take(&mut *shared.latencies.lock()),
    })
}

/// One connection: sends its requests until all are claimed, counting each
/// acknowledged one in `done`.
async fn send_connection(
    channel: Channel,
    batch: Vec<ExportTraceServiceRequest>,
    shared: Arc<Shared>,
    done: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut client = TraceServiceClient::new(channel).max_encoding_message_size(64 << 20);
    for req in batch {
        if shared.next.fetch_add(1, Ordering::Relaxed) >= shared.requests_total {
            break;
        }
        loop {
            let sent_at = Instant::now();
            match client.export(req.clone()).await {
                Ok(_) => {
                    let ms = sent_at.elapsed().as_secs_f64() * 1e3;
                    shared.latencies.lock().push(ms);
                    shared.sent.fetch_add(shared.batch, Ordering::Relaxed);
                    done.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::ResourceExhausted | tonic::Code::Unavailable
                    ) =>
                {
                    // Backpressure, or copies missing: back off and resend.
                    shared.refused.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(s) => anyhow::bail!("export failed: {s}"),
            }
        }
    }
    Ok(())
}

/// The ids of every trace that was acknowledged: those of the first
/// `requests[w]` requests of each connection `w`.
fn acked_traces(trace_ids: &[Vec<Vec<SentTrace>>], requests: &[u64]) -> Vec<SentTrace> {
    trace_ids
        .iter()
        .zip(requests)
        .flat_map(|(ids, &n)| ids.iter().take(n as usize))
        .flatten()
        .copied()
        .collect()
}

/// Polls a sample of `acked` (trace ids with their span counts) until each
/// is stored whole; prints the end-to-end rate.
async fn wait_stored(
    query: &mut QueryClient<Channel>,
    acked: &[([u8; 16], usize)],
    args: &Args,
    start: Instant,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.wait_timeout_secs);
    // Every 97th trace and the last 64: storage order is not send order, so
    // a spread sample bounds how much is still missing.
    let mut sample: Vec<([u8; 16], usize)> = acked.iter().step_by(97).copied().collect();
    sample.extend(acked.iter().rev().take(64));
    let mut waiting = sample;
    loop {
        let mut still = Vec::new();
        for &(id, expected) in &waiting {
            let complete = match query
                .get_trace(pb::GetTraceRequest {
                    trace_id: id.to_vec(),
                })
                .await
            {
                Ok(t) => t.into_inner().spans.len() >= expected,
                Err(s) if s.code() == tonic::Code::NotFound => false,
                Err(s) => anyhow::bail!("get_trace failed: {s}"),
            };
            if !complete {
                still.push((id, expected));
            }
        }
        if still.is_empty() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} sampled traces still not stored after {} s",
            still.len(),
            args.wait_timeout_secs
        );
        waiting = still;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let spans: usize = acked.iter().map(|(_, n)| n).sum();
    println!(
        "stored: sampled traces complete {secs:.2} s after the first request → {:.0} spans/s end to end",
        spans as f64 / secs
    );
    Ok(())
}

/// Polls the collector's `/metrics` at `addr` until the spans it stored (or
/// found to be duplicates) reach `spans`; prints the end-to-end rate.
async fn wait_counted(addr: &str, spans: u64, args: &Args, start: Instant) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.wait_timeout_secs);
    loop {
        let counted = stored_spans(addr).await?;
        if counted >= spans {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {counted} of {spans} spans stored after {} s",
            args.wait_timeout_secs
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "stored: every span counted as stored {secs:.2} s after the first request → {:.0} spans/s end to end",
        spans as f64 / secs
    );
    Ok(())
}

/// `clew_spans_stored_total + clew_spans_duplicate_total` from the
/// collector's Prometheus text at `http://addr/metrics`.
async fn stored_spans(addr: &str) -> anyhow::Result<u64> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: collector\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = Vec::new();
    conn.read_to_end(&mut body).await?;
    let text = String::from_utf8_lossy(&body);
    anyhow::ensure!(
        text.starts_with("HTTP/1.1 200"),
        "GET http://{addr}/metrics did not answer 200"
    );
    let value = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0) as u64
    };
    Ok(value("clew_spans_stored_total") + value("clew_spans_duplicate_total"))
}

/// Prints the CPU the collector (and the `--also-pid`s) used since
/// `before`, and spans per CPU-second.
fn print_cpu(label: &str, before: Option<f64>, pids: &[u32], args: &Args, spans: u64) {
    if let (Some(before), Some(after)) = (before, total_cpu(pids)) {
        let cpu = after - before;
        let who = if args.also_pid.is_empty() {
            "collector"
        } else {
            "collector (+ also-pids)"
        };
        println!(
            "{label}{who} CPU: {cpu:.2} s → {:.0} spans per CPU-second",
            spans as f64 / cpu.max(0.01)
        );
    }
}

/// A trace id and its number of spans.
type SentTrace = ([u8; 16], usize);

/// Builds the filter of the i-th run of a search.
type MakeFilter<'a> = Box<dyn Fn(usize) -> pb::FilterCriteria + 'a>;

/// p50 and p99 of a set of latencies, in milliseconds.
fn percentiles(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 * q) as usize).min(ms.len() - 1)];
    (at(0.50), at(0.99))
}

/// Times trace-by-ID lookups and a set of searches over the stored traces.
async fn query_latency(
    query: &mut QueryClient<Channel>,
    acked: &[([u8; 16], usize)],
    args: &Args,
    load_start: u64,
) -> anyhow::Result<()> {
    time_lookups(query, acked, args).await?;
    let runs = (args.queries / 10).max(20);
    for (name, make) in &searches(args.services, load_start) {
        time_search(query, name, make, runs).await?;
    }
    Ok(())
}

/// Times `--queries` lookups of random stored traces by ID.
async fn time_lookups(
    query: &mut QueryClient<Channel>,
    acked: &[([u8; 16], usize)],
    args: &Args,
) -> anyhow::Result<()> {
    let mut rng = SmallRng::seed_from_u64(42);
    let mut lat = Vec::with_capacity(args.queries);
    for _ in 0..args.queries {
        let (id, _) = acked[rng.random_range(0..acked.len())];
        let t = Instant::now();
        let trace = query
            .get_trace(pb::GetTraceRequest {
                trace_id: id.to_vec(),
            })
            .await
            .context("get_trace")?
            .into_inner();
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(!trace.spans.is_empty(), "a stored trace came back empty");
    }
    let (p50, p99) = percentiles(lat);
    println!(
        "query trace by id ({} lookups): p50 {p50:.2} ms, p99 {p99:.2} ms",
        args.queries
    );
    Ok(())
}

/// Times `runs` runs of one search and prints how many traces each found.
async fn time_search(
    query: &mut QueryClient<Channel>,
    name: &str,
    make: &MakeFilter<'_>,
    runs: usize,
) -> anyhow::Result<()> {
    let mut lat = Vec::with_capacity(runs);
    let mut found = 0;
    for i in 0..runs {
        let t = Instant::now();
        let traces = query
            .find_traces(pb::FindTracesRequest {
                filter: Some(make(i)),
            })
            .await
            .with_context(|| format!("find_traces ({name})"))?
            .into_inner()
            .traces;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        found += traces.len();
    }
    let (p50, p99) = percentiles(lat);
    println!(
        "query search {name} (limit 20, {runs} runs, {:.1} traces each): p50 {p50:.2} ms, p99 {p99:.2} ms",
        found as f64 / runs as f64
    );
    Ok(())
}

/// The i-th run's service, cycling through the `services` generated.
fn svc(i: usize, services: usize) -> String {
    format!("service-{}", i % services)
}

/// A tag filter of one key and value.
fn tag(k: &str, v: &str) -> HashMap<String, String> {
    [(k.to_string(), v.to_string())].into_iter().collect()
}

/// The searches timed, in the order they are reported.
fn searches(services: usize, load_start: u64) -> Vec<(&'static str, MakeFilter<'static>)> {
    let mut all = name_and_tag_searches(services);
    all.extend(status_and_time_searches(services, load_start));
    all
}

/// Searches by service, operation and tag.
fn name_and_tag_searches(services: usize) -> Vec<(&'static str, MakeFilter<'static>)> {
    vec![
        (
            "service",
            Box::new(move |i| pb::FilterCriteria {
                service: svc(i, services),
                ..Default::default()
            }),
        ),
        (
            "service+operation",
            Box::new(move |i| pb::FilterCriteria {
                service: svc(i, services),
                operation: format!("op-{}", i % 20),
                ..Default::default()
            }),
        ),
        (
            "service+tag (1 in 50 spans)",
            Box::new(move |i| pb::FilterCriteria {
                service: svc(i, services),
                tags: tag("http.response.status_code", "500"),
                ..Default::default()
            }),
        ),
        (
            "tag only",
            Box::new(|i| pb::FilterCriteria {
                tags: tag("customer.tier", ["free", "pro", "enterprise"][i % 3]),
                ..Default::default()
            }),
        ),
    ]
}

/// Searches by error status, duration and time window.
fn status_and_time_searches(
    services: usize,
    load_start: u64,
) -> Vec<(&'static str, MakeFilter<'static>)> {
    vec![
        (
            "service+errors only",
            Box::new(move |i| pb::FilterCriteria {
                service: svc(i, services),
                errors_only: true,
                ..Default::default()
            }),
        ),
        (
            "service+min duration 49 ms",
            Box::new(move |i| pb::FilterCriteria {
                service: svc(i, services),
                min_duration_nanos: 49_000_000,
                ..Default::default()
            }),
        ),
        (
            "service+max duration 0.2 ms",
            Box::new(move |i| pb::FilterCriteria {
                service: svc(i, services),
                max_duration_nanos: 200_000,
                ..Default::default()
            }),
        ),
        (
            "max duration 0.2 ms only",
            Box::new(|_| pb::FilterCriteria {
                max_duration_nanos: 200_000,
                ..Default::default()
            }),
        ),
        (
            "service+10 s window",
            Box::new(move |i| pb::FilterCriteria {
                service: svc(i, services),
                start_time_min_unix_nano: load_start,
                start_time_max_unix_nano: load_start + 10_000_000_000,
                ..Default::default()
            }),
        ),
    ]
}
