//! A traffic generator for service A: a realistic mix of searches (some
//! popular, some rare queries), process calls, and a little bad input.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::SeedableRng as _;
use rand::seq::IndexedRandom as _;

/// Traffic settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "clew-traffic",
    version,
    about = "Drives demo service A with a realistic request mix"
)]
pub struct TrafficConfig {
    /// Base URL of service A.
    #[arg(
        long,
        env = "CLEW_TRAFFIC_TARGET",
        default_value = "http://127.0.0.1:8000"
    )]
    pub target: String,
    /// Requests per second.
    #[arg(long, env = "CLEW_TRAFFIC_RPS", default_value_t = 5.0)]
    pub rps: f64,
    /// Stop after this long (default: run until stopped).
    #[arg(long, env = "CLEW_TRAFFIC_DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Most requests in flight at once.
    #[arg(long, env = "CLEW_TRAFFIC_CONCURRENCY", default_value_t = 32)]
    pub concurrency: usize,
}

/// What the generator saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// 2xx answers.
    pub ok: AtomicU64,
    /// 4xx answers (the deliberate bad input).
    pub client_errors: AtomicU64,
    /// 5xx answers.
    pub server_errors: AtomicU64,
    /// Requests that got no answer.
    pub failed: AtomicU64,
}

const POPULAR: &[&str] = &[
    "example",
    "tracing",
    "critical path",
    "vector clocks",
    "sidecar",
];
const RARE: &[&str] = &[
    "redis ttl",
    "jaeger api",
    "tail latency",
    "shards",
    "disk spill",
];

/// One request path from the mix: 60% popular search, 15% rare search, 20%
/// process, 5% invalid.
pub fn next_path(rng: &mut impl rand::Rng) -> String {
    let roll: f64 = rng.random();
    let enc = |s: &str| s.replace(' ', "+");
    if roll < 0.60 {
        let q = POPULAR.choose(rng).copied().unwrap_or("example");
        format!("/api/v1/search?q={}", enc(q))
    } else if roll < 0.75 {
        let q = RARE.choose(rng).copied().unwrap_or("shards");
        format!("/api/v1/search?q={}&limit=5", enc(q))
    } else if roll < 0.95 {
        let n: u32 = rng.random_range(1..50);
        format!("/api/v1/process?data=order+{n}+items+shipped")
    } else if roll < 0.975 {
        "/api/v1/search?q=".to_string()
    } else {
        "/api/v1/search?q=x&limit=1000".to_string()
    }
}

/// Sends traffic until `duration` passes or `stop` resolves.
pub async fn run(
    cfg: TrafficConfig,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Arc<Tally>> {
    anyhow::ensure!(
        cfg.rps > 0.0 && cfg.rps.is_finite(),
        "--rps must be a positive number"
    );
    let base: hyper::Uri = cfg.target.trim_end_matches('/').parse()?;
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let tally = Arc::new(Tally::default());
    let permits = Arc::new(tokio::sync::Semaphore::new(cfg.concurrency.max(1)));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / cfg.rps));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = cfg.duration.map(|d| tokio::time::Instant::now() + d);
    let mut report = tokio::time::interval(Duration::from_secs(10));
    report.tick().await;
    tokio::pin!(stop);
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = report.tick() => {
                tracing::info!(
                    ok = tally.ok.load(Ordering::Relaxed),
                    client_errors = tally.client_errors.load(Ordering::Relaxed),
                    server_errors = tally.server_errors.load(Ordering::Relaxed),
                    failed = tally.failed.load(Ordering::Relaxed),
                    "traffic"
                );
                continue;
            }
            _ = tick.tick() => {}
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let uri: hyper::Uri = format!("{base}{}", next_path(&mut rng).trim_start_matches('/'))
            .parse()
            .or_else(|_| format!("{base}").parse())?;
        let client = client.clone();
        let tally = tally.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let res = tokio::time::timeout(Duration::from_secs(10), async {
                let resp = client.get(uri).await?;
                let status = resp.status();
                let _ = resp.into_body().collect().await;
                anyhow::Ok(status)
            })
            .await;
            let counter = match res {
                Ok(Ok(s)) if s.is_success() => &tally.ok,
                Ok(Ok(s)) if s.is_client_error() => &tally.client_errors,
                Ok(Ok(_)) => &tally.server_errors,
                _ => &tally.failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        });
    }
    // Let requests in flight finish.
    let _ = permits.acquire_many(cfg.concurrency.max(1) as u32).await;
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_has_every_kind_of_request() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let paths: Vec<String> = (0..2000).map(|_| next_path(&mut rng)).collect();
        let search = paths
            .iter()
            .filter(|p| p.contains("search?q=") && !p.ends_with("q=") && !p.contains("1000"))
            .count();
        let process = paths.iter().filter(|p| p.contains("process")).count();
        let bad = paths
            .iter()
            .filter(|p| p.ends_with("q=") || p.contains("limit=1000"))
            .count();
        assert!((1350..1650).contains(&search), "{search}");
        assert!((300..500).contains(&process), "{process}");
        assert!((50..160).contains(&bad), "{bad}");
    }
}
