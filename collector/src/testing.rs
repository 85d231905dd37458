//! Test support shared by the unit tests and the integration tests
//! (feature `testing`): a real `redis-server` child process (from
//! `clew-storage`) and the OpenTelemetry Python SDK.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

pub use clew_storage::testing::RedisServer;

use std::path::Path;
use std::time::Duration;

/// The Python interpreter of the venv `scripts/test.sh` prepares with the
/// OpenTelemetry SDK and its OTLP exporters (`CLEW_PYTHON`).
pub fn python() -> std::path::PathBuf {
    let p = std::env::var_os("CLEW_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/var/tmp/clew-venv/bin/python".into());
    assert!(
        p.exists(),
        "{} not found: run scripts/test.sh, which creates the venv with opentelemetry-sdk, \
         or set CLEW_PYTHON",
        p.display()
    );
    p
}

/// Runs `collector/tests/python/otel_sdk_send.py`: the real OpenTelemetry
/// Python SDK exports, plain and gzip, to OTLP/gRPC at `grpc` and OTLP/HTTP
/// at `http_url`. Returns the trace id (hex) of each export, keyed `grpc`,
/// `http`, `grpc-gzip`, `http-gzip`; panics with Python's stderr if any failed.
pub async fn otel_sdk_send(grpc: std::net::SocketAddr, http_url: &str) -> serde_json::Value {
    run_otel_sdk_send(grpc, http_url, &[]).await
}

/// [`otel_sdk_send`] `--oversized`: the SDK, its own limits lifted, exports
/// over OTLP/gRPC and OTLP/HTTP a span of 100,000 attributes and a span
/// with a 15 MB string value, each its own trace. Returns the trace ids,
/// keyed `grpc-attributes`, `grpc-value`, `http-attributes`, `http-value`.
pub async fn otel_sdk_send_oversized(
    grpc: std::net::SocketAddr,
    http_url: &str,
) -> serde_json::Value {
    run_otel_sdk_send(grpc, http_url, &["--oversized"]).await
}

/// [`otel_sdk_send`] over TLS, trusting the CA certificates in `ca`
/// (`None`: plain-text exporters, as a client that does not know TLS is
/// on). `Ok` with the trace ids when every export succeeded, else `Err`
/// with Python's stderr. `timeout` bounds each export.
pub async fn otel_sdk_send_tls(
    grpc: std::net::SocketAddr,
    https_url: &str,
    ca: Option<&Path>,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    let mut extra = vec!["--timeout".to_owned(), timeout.as_secs_f64().to_string()];
    if let Some(ca) = ca {
        extra.extend(["--ca".to_owned(), ca.display().to_string()]);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let out = otel_sdk_command(grpc, https_url, &extra).await;
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

async fn run_otel_sdk_send(
    grpc: std::net::SocketAddr,
    http_url: &str,
    extra: &[&str],
) -> serde_json::Value {
    match try_otel_sdk_send(grpc, http_url, extra).await {
        Ok(ids) => ids,
        Err(stderr) => panic!("python failed: {stderr}"),
    }
}

/// [`otel_sdk_send`] with `extra` arguments of the script (`--header
/// authorization=Bearer …`); Python's stderr when an export failed.
pub async fn try_otel_sdk_send(
    grpc: std::net::SocketAddr,
    http_url: &str,
    extra: &[&str],
) -> Result<serde_json::Value, String> {
    let out = otel_sdk_command(grpc, http_url, extra).await;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

async fn otel_sdk_command(
    grpc: std::net::SocketAddr,
    http_url: &str,
    extra: &[&str],
) -> std::process::Output {
    // The runtime variable (set by cargo and nextest), so a test binary reused
    // from a build in another checkout does not look there; every crate sits
    // in the workspace root.
    let crate_dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let script = Path::new(&crate_dir)
        .parent()
        .unwrap()
        .join("collector/tests/python/otel_sdk_send.py");
    tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(python())
            .arg(&script)
            .arg("--grpc")
            .arg(grpc.to_string())
            .arg("--http")
            .arg(http_url)
            .args(extra)
            // requests prefers these to the exporter's own CA file (its
            // session's `verify`): a machine that sets them would make the
            // exporter ignore `--ca`.
            .env_remove("REQUESTS_CA_BUNDLE")
            .env_remove("CURL_CA_BUNDLE")
            .output(),
    )
    .await
    .expect("python finished")
    .unwrap()
}

/// Counts `traces` into roll-up parts in `storage` the way a collector
/// does at ingest (each trace one WAL record, then one flush).
pub async fn store_rollups(
    storage: &dyn crate::storage::Storage,
    traces: &[clew_proto::v1::Trace],
) {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = crate::wal::Wal::open(dir.path(), crate::wal::WalConfig::default()).unwrap();
    let r = crate::rollup::Rollups::new(wal, 1, crate::rollup::RollupConfig::default());
    for (seq, t) in traces.iter().enumerate() {
        r.record(seq as u64, &t.spans);
    }
    r.flush(storage).await.unwrap();
}
