//! `clew-local`: the whole pipeline on one machine, no cluster: the
//! collector (embedded storage), the query API, the visualizer (when
//! built), demo services A → B → C exporting to the collector, and the
//! traffic generator. Prints the URLs; Ctrl-C stops everything cleanly.
//! Data lives in `--data-dir`, so a second start finds the earlier traces.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use clew_e2e::http::HttpClient;
use clew_e2e::proc::{Proc, bin_dir, wait_for};

#[derive(Debug, clap::Parser)]
#[command(
    name = "clew-local",
    version,
    about = "Runs clew locally: collector, query API, visualizer, demo services A→B→C and traffic"
)]
struct Args {
    /// Where the collector keeps its data (and where logs go).
    #[arg(long, env = "CLEW_LOCAL_DATA_DIR", default_value = "./clew-data")]
    data_dir: PathBuf,
    /// Added to every default port (collector 4317/4318/16686/9464,
    /// visualizer 8080, services 8000-8002 and 9470-9472), to run beside
    /// something that already uses them.
    #[arg(long, env = "CLEW_LOCAL_PORT_OFFSET", default_value_t = 0)]
    port_offset: u16,
    /// Requests per second the traffic generator sends to service A
    /// (0: no traffic generator).
    #[arg(long, env = "CLEW_LOCAL_RPS", default_value_t = 5.0)]
    rps: f64,
    /// Listen address host for every component.
    #[arg(long, env = "CLEW_LOCAL_HOST", default_value = "127.0.0.1")]
    host: String,
}

struct Stack {
    procs: Vec<Proc>,
}

impl Stack {
    /// Stops in reverse start order: traffic first, the collector last so
    /// it stores every span the services flushed.
    async fn stop(&mut self) {
        while let Some(mut p) = self.procs.pop() {
            match p.stop(Duration::from_secs(20)).await {
                Ok(true) => println!("  stopped {}", p.name),
                Ok(false) => println!("  {} did not exit cleanly", p.name),
                Err(e) => println!("  stopping {} failed: {e}", p.name),
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut stack = Stack { procs: Vec::new() };
    // Signals are handled from the first moment, so a Ctrl-C during
    // start-up still stops what was started.
    // The children run in process groups of their own (so Ctrl-C stops them
    // in order through this process): a closed terminal's SIGHUP stops
    // them too.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let result = tokio::select! {
        r = run(&args, &mut stack) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
        _ = hangup.recv() => Ok(()),
    };
    if let Err(e) = &result {
        eprintln!("clew-local: {e:#}");
    }
    println!("stopping…");
    stack.stop().await;
    result
}

async fn run(args: &Args, stack: &mut Stack) -> anyhow::Result<()> {
    let off = args.port_offset;
    let host = &args.host;
    let port =
        |p: u16| -> anyhow::Result<u16> { p.checked_add(off).context("--port-offset too large") };
    let addr = |p: u16| -> anyhow::Result<String> { Ok(format!("{host}:{}", port(p)?)) };
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let logs = data_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let http = HttpClient::new(Duration::from_secs(2));
    let s = |v: &str| v.to_string();

    // Collector: embedded storage, a short idle window so traces show up fast.
    let collector = Proc::spawn(
        "collector",
        "clew-collector",
        &[],
        &[
            (s("CLEW_GRPC_ADDR"), addr(4317)?),
            (s("CLEW_HTTP_ADDR"), addr(4318)?),
            (s("CLEW_QUERY_ADDR"), addr(16686)?),
            (s("CLEW_OPS_ADDR"), addr(9464)?),
            (s("CLEW_STORAGE"), s("embedded")),
            (
                s("CLEW_DATA_DIR"),
                data_dir.join("collector").display().to_string(),
            ),
            (s("CLEW_IDLE_WINDOW"), s("1s")),
        ],
        Some(&logs.join("collector.log")),
    )?;
    stack.procs.push(collector);
    let ready = format!("http://{}/readyz", addr(9464)?);
    wait_for("the collector", Duration::from_secs(60), || http.ok(&ready)).await?;

    let otlp = format!("http://{}", addr(4317)?);
    let service = |name: &str, extra: Vec<(String, String)>| -> anyhow::Result<Proc> {
        let mut env = vec![
            (s("OTEL_EXPORTER_OTLP_ENDPOINT"), otlp.clone()),
            (s("OTEL_SERVICE_NAME"), name.to_string()),
        ];
        env.extend(extra);
        Proc::spawn(
            name,
            name,
            &[],
            &env,
            Some(&logs.join(format!("{name}.log"))),
        )
    };
    // C has occasional latency spikes and B a few errors, so the analysis
    // pages have bottlenecks and anomalies to show.
    stack.procs.push(service(
        "service-c",
        vec![
            (s("CLEW_SERVICE_C_ADDR"), addr(8002)?),
            (s("CLEW_SERVICE_C_OPS_ADDR"), addr(9472)?),
            (s("CLEW_DEMO_LATENCY"), s("4ms")),
            (s("CLEW_DEMO_SPIKE_RATE"), s("0.02")),
            (s("CLEW_DEMO_SPIKE_LATENCY"), s("120ms")),
        ],
    )?);
    stack.procs.push(service(
        "service-b",
        vec![
            (s("CLEW_SERVICE_B_ADDR"), addr(8001)?),
            (s("CLEW_SERVICE_B_OPS_ADDR"), addr(9471)?),
            (s("CLEW_SERVICE_C_URL"), format!("http://{}", addr(8002)?)),
            (s("CLEW_DEMO_ERROR_RATE"), s("0.01")),
        ],
    )?);
    stack.procs.push(service(
        "service-a",
        vec![
            (s("CLEW_SERVICE_A_ADDR"), addr(8000)?),
            (s("CLEW_SERVICE_A_OPS_ADDR"), addr(9470)?),
            (s("CLEW_SERVICE_B_URL"), format!("http://{}", addr(8001)?)),
        ],
    )?);
    for (name, p) in [
        ("service-c", 9472),
        ("service-b", 9471),
        ("service-a", 9470),
    ] {
        let url = format!("http://{}/healthz", addr(p)?);
        wait_for(name, Duration::from_secs(30), || http.ok(&url)).await?;
    }

    let viz_url = format!("http://{}", addr(8080)?);
    let has_viz = bin_dir()?.join("clew-visualizer").is_file();
    if has_viz {
        stack.procs.push(Proc::spawn(
            "visualizer",
            "clew-visualizer",
            &[],
            &[
                (s("CLEW_VISUALIZER_ADDR"), addr(8080)?),
                (s("CLEW_QUERY_URL"), format!("http://{}", addr(16686)?)),
            ],
            Some(&logs.join("visualizer.log")),
        )?);
        let url = format!("{viz_url}/healthz");
        wait_for("the visualizer", Duration::from_secs(30), || http.ok(&url)).await?;
    }
    if args.rps > 0.0 {
        stack.procs.push(Proc::spawn(
            "traffic",
            "clew-traffic",
            &[],
            &[
                (s("CLEW_TRAFFIC_TARGET"), format!("http://{}", addr(8000)?)),
                (s("CLEW_TRAFFIC_RPS"), args.rps.to_string()),
            ],
            Some(&logs.join("traffic.log")),
        )?);
    }

    println!("clew is running (Ctrl-C stops everything):");
    if has_viz {
        println!("  visualizer      {viz_url}/");
    } else {
        println!("  visualizer      not built (cargo build -p clew-visualizer)");
    }
    println!(
        "  query API       http://{}/api/services  (Jaeger-compatible)",
        addr(16686)?
    );
    println!(
        "  OTLP ingest     grpc://{}  http://{}/v1/traces",
        addr(4317)?,
        addr(4318)?
    );
    println!(
        "  service A       http://{}/api/v1/search?q=example",
        addr(8000)?
    );
    println!("  metrics         http://{}/metrics", addr(9464)?);
    println!("  data and logs   {}", data_dir.display());
    if args.rps > 0.0 {
        println!("  traffic         {} requests/s to service A", args.rps);
    }

    let mut check = tokio::time::interval(Duration::from_millis(500));
    loop {
        check.tick().await;
        for p in stack.procs.iter_mut() {
            if !p.is_running() {
                anyhow::bail!(
                    "{} exited unexpectedly; see {}",
                    p.name,
                    logs.join(format!("{}.log", p.name)).display()
                );
            }
        }
    }
}
