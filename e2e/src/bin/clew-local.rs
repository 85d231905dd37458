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

/// Where everything runs: the hosts, ports, data and log directories.
struct Local {
    host: String,
    port_offset: u16,
    data_dir: PathBuf,
    logs: PathBuf,
    http: HttpClient,
}

impl Local {
    /// Creates the data and log directories.
    fn prepare(args: &Args) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("creating {}", args.data_dir.display()))?;
        let data_dir = args.data_dir.canonicalize()?;
        let logs = data_dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        Ok(Self {
            host: args.host.clone(),
            port_offset: args.port_offset,
            data_dir,
            logs,
            http: HttpClient::new(Duration::from_secs(2)),
        })
    }

    /// Default port `p` moved by `--port-offset`.
    fn port(&self, p: u16) -> anyhow::Result<u16> {
        p.checked_add(self.port_offset)
            .context("--port-offset too large")
    }

    /// `host:port` for default port `p`.
    fn addr(&self, p: u16) -> anyhow::Result<String> {
        Ok(format!("{}:{}", self.host, self.port(p)?))
    }

    /// The log file of the component called `name`.
    fn log(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }
}

/// Shorthand for the owned strings of environment variables.
fn s(v: &str) -> String {
    v.to_string()
}

async fn run(args: &Args, stack: &mut Stack) -> anyhow::Result<()> {
    let local = Local::prepare(args)?;
    start_collector(&local, stack).await?;
    start_services(&local, stack).await?;
    let has_viz = start_visualizer(&local, stack).await?;
    if args.rps > 0.0 {
        start_traffic(&local, args.rps, stack)?;
    }
    print_urls(&local, args.rps, has_viz)?;
    watch(&local, stack).await
}

/// Collector: embedded storage, a short idle window so traces show up fast.
async fn start_collector(local: &Local, stack: &mut Stack) -> anyhow::Result<()> {
    let collector = Proc::spawn(
        "collector",
        "clew-collector",
        &[],
        &[
            (s("CLEW_GRPC_ADDR"), local.addr(4317)?),
            (s("CLEW_HTTP_ADDR"), local.addr(4318)?),
            (s("CLEW_QUERY_ADDR"), local.addr(16686)?),
            (s("CLEW_OPS_ADDR"), local.addr(9464)?),
            (s("CLEW_STORAGE"), s("embedded")),
            (
                s("CLEW_DATA_DIR"),
                local.data_dir.join("collector").display().to_string(),
            ),
            (s("CLEW_IDLE_WINDOW"), s("1s")),
        ],
        Some(&local.log("collector")),
    )?;
    stack.procs.push(collector);
    let ready = format!("http://{}/readyz", local.addr(9464)?);
    wait_for("the collector", Duration::from_secs(60), || {
        local.http.ok(&ready)
    })
    .await
}

/// Demo services C, B and A (callees first), each exporting to the collector.
async fn start_services(local: &Local, stack: &mut Stack) -> anyhow::Result<()> {
    let otlp = format!("http://{}", local.addr(4317)?);
    let service = |name: &str, extra: Vec<(String, String)>| -> anyhow::Result<Proc> {
        let mut env = vec![
            (s("OTEL_EXPORTER_OTLP_ENDPOINT"), otlp.clone()),
            (s("OTEL_SERVICE_NAME"), name.to_string()),
        ];
        env.extend(extra);
        Proc::spawn(name, name, &[], &env, Some(&local.log(name)))
    };
    // C has occasional latency spikes and B a few errors, so the analysis
    // pages have bottlenecks and anomalies to show.
    stack.procs.push(service(
        "service-c",
        vec![
            (s("CLEW_SERVICE_C_ADDR"), local.addr(8002)?),
            (s("CLEW_SERVICE_C_OPS_ADDR"), local.addr(9472)?),
            (s("CLEW_DEMO_LATENCY"), s("4ms")),
            (s("CLEW_DEMO_SPIKE_RATE"), s("0.02")),
            (s("CLEW_DEMO_SPIKE_LATENCY"), s("120ms")),
        ],
    )?);
    stack.procs.push(service(
        "service-b",
        vec![
            (s("CLEW_SERVICE_B_ADDR"), local.addr(8001)?),
            (s("CLEW_SERVICE_B_OPS_ADDR"), local.addr(9471)?),
            (
                s("CLEW_SERVICE_C_URL"),
                format!("http://{}", local.addr(8002)?),
            ),
            (s("CLEW_DEMO_ERROR_RATE"), s("0.01")),
        ],
    )?);
    stack.procs.push(service(
        "service-a",
        vec![
            (s("CLEW_SERVICE_A_ADDR"), local.addr(8000)?),
            (s("CLEW_SERVICE_A_OPS_ADDR"), local.addr(9470)?),
            (
                s("CLEW_SERVICE_B_URL"),
                format!("http://{}", local.addr(8001)?),
            ),
        ],
    )?);
    for (name, p) in [
        ("service-c", 9472),
        ("service-b", 9471),
        ("service-a", 9470),
    ] {
        let url = format!("http://{}/healthz", local.addr(p)?);
        wait_for(name, Duration::from_secs(30), || local.http.ok(&url)).await?;
    }
    Ok(())
}

/// The visualizer, when built; returns whether it runs.
async fn start_visualizer(local: &Local, stack: &mut Stack) -> anyhow::Result<bool> {
    if !bin_dir()?.join("clew-visualizer").is_file() {
        return Ok(false);
    }
    stack.procs.push(Proc::spawn(
        "visualizer",
        "clew-visualizer",
        &[],
        &[
            (s("CLEW_VISUALIZER_ADDR"), local.addr(8080)?),
            (
                s("CLEW_QUERY_URL"),
                format!("http://{}", local.addr(16686)?),
            ),
        ],
        Some(&local.log("visualizer")),
    )?);
    let url = format!("http://{}/healthz", local.addr(8080)?);
    wait_for("the visualizer", Duration::from_secs(30), || {
        local.http.ok(&url)
    })
    .await?;
    Ok(true)
}

/// The traffic generator, sending `rps` requests a second to service A.
fn start_traffic(local: &Local, rps: f64, stack: &mut Stack) -> anyhow::Result<()> {
    stack.procs.push(Proc::spawn(
        "traffic",
        "clew-traffic",
        &[],
        &[
            (
                s("CLEW_TRAFFIC_TARGET"),
                format!("http://{}", local.addr(8000)?),
            ),
            (s("CLEW_TRAFFIC_RPS"), rps.to_string()),
        ],
        Some(&local.log("traffic")),
    )?);
    Ok(())
}

/// Prints where to find each part of the running stack.
fn print_urls(local: &Local, rps: f64, has_viz: bool) -> anyhow::Result<()> {
    println!("clew is running (Ctrl-C stops everything):");
    if has_viz {
        println!("  visualizer      http://{}/", local.addr(8080)?);
    } else {
        println!("  visualizer      not built (cargo build -p clew-visualizer)");
    }
    println!(
        "  query API       http://{}/api/services  (Jaeger-compatible)",
        local.addr(16686)?
    );
    println!(
        "  OTLP ingest     grpc://{}  http://{}/v1/traces",
        local.addr(4317)?,
        local.addr(4318)?
    );
    println!(
        "  service A       http://{}/api/v1/search?q=example",
        local.addr(8000)?
    );
    println!("  metrics         http://{}/metrics", local.addr(9464)?);
    println!("  data and logs   {}", local.data_dir.display());
    if rps > 0.0 {
        println!("  traffic         {rps} requests/s to service A");
    }
    Ok(())
}

/// Fails as soon as any component exits; otherwise runs until cancelled.
async fn watch(local: &Local, stack: &mut Stack) -> anyhow::Result<()> {
    let mut check = tokio::time::interval(Duration::from_millis(500));
    loop {
        check.tick().await;
        for p in stack.procs.iter_mut() {
            if !p.is_running() {
                anyhow::bail!(
                    "{} exited unexpectedly; see {}",
                    p.name,
                    local.log(&p.name).display()
                );
            }
        }
    }
}
