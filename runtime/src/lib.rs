//! What every clew binary shares: the ops endpoint ([`ops`]), logging
//! ([`init_logging`]), shutdown on SIGTERM or Ctrl-C ([`shutdown_signal`]),
//! and an optional configuration file layered under flags and environment
//! variables ([`config`]); the Prometheus registry helper every binary's
//! metrics go through ([`metrics`]); OTLP/HTTP bodies for the servers that
//! take them ([`otlp_http`]); bounded, idle-reaped connections for every
//! listener ([`net`]); TLS and mTLS with certificates re-read when they
//! change (`tls`, feature `tls`); bearer authentication (`auth`, feature
//! `auth`).

#[cfg(feature = "auth")]
pub mod auth;
pub mod config;
pub mod metrics;
pub mod net;
pub mod ops;
pub mod otlp_http;
#[cfg(feature = "tls")]
pub mod tls;

/// Logs to stderr through `tracing`, filtered by `RUST_LOG` (default
/// `info`).
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
}

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends before killing a
/// pod).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
