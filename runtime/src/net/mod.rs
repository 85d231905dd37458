//! Bounded connections for every clew listener.
//!
//! A [`TrackedListener`] accepts TCP connections, sets `TCP_NODELAY`, and
//! wraps each in a [`TrackedStream`] that records when bytes last moved. Its
//! [`ConnTracker`] holds at most [`ConnLimits::max_connections`]: at the
//! limit a new connection evicts the longest-idle one (idle at least
//! [`ConnLimits::evict_after`]), or is closed at once and counted; a reaper
//! closes connections idle past [`ConnLimits::idle_timeout`]. Closing flags
//! the stream and wakes its task, so its next read or write fails and the
//! HTTP stack (hyper for axum, tonic) drops it.
//!
//! [`serve_http`] serves an axum router over a tracked listener with an
//! HTTP/1 header-read timeout (slowloris) and HTTP/2 keepalive and stream
//! limits; [`grpc_server`] (feature `grpc`) configures tonic alike.
//! [`raise_nofile_limit`] lifts the open-file limit at start-up.

mod metrics;
mod nofile;
mod serve;
mod tracked;

#[cfg(feature = "testing")]
pub mod testing;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use metrics::ConnMetrics;
pub use nofile::{NofileLimit, raise_nofile_limit, raise_nofile_limit_logged, set_nofile_limit};
#[cfg(feature = "grpc")]
pub use serve::grpc_server;
pub use serve::{configure_http, http_builder, serve_http};
#[cfg(feature = "tls")]
pub use serve::{serve_http_with, serve_https};
pub use tracked::{ConnTracker, TrackedListener, TrackedStream};

/// Connection limits of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLimits {
    /// Most open connections; beyond it a new connection evicts the
    /// longest-idle one or is closed at once.
    pub max_connections: usize,
    /// A connection that moves no bytes (HTTP/2 pings aside) for this long
    /// is closed.
    pub idle_timeout: Duration,
    /// An HTTP/1 request's whole header block must arrive within this long
    /// (it also bounds how long a keep-alive connection waits for its next
    /// request).
    pub header_read_timeout: Duration,
    /// How often an HTTP/2 connection is pinged when it is quiet.
    pub http2_keepalive_interval: Duration,
    /// An HTTP/2 connection whose ping is not answered within this long is
    /// closed.
    pub http2_keepalive_timeout: Duration,
    /// Most concurrent streams (requests) on one HTTP/2 connection.
    pub http2_max_concurrent_streams: u32,
    /// At the limit, only a connection idle at least this long may be
    /// evicted for a new one.
    pub evict_after: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            idle_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(10),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            http2_max_concurrent_streams: 256,
            evict_after: Duration::from_secs(1),
        }
    }
}

impl ConnLimits {
    /// These limits with another maximum number of connections (e.g. the
    /// ops listener's own, small one).
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }
}

/// Parses a duration flag such as `10s` or `1m`.
///
/// # Errors
///
/// A message naming what is wrong with `s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Declares a `clap::Args` struct of connection-limit flags whose
/// environment variables start with `env`, and a `limits()` method turning
/// it into a [`ConnLimits`]. Flatten it into a binary's config with
/// `#[command(flatten)]`; its long names are YAML config keys like any
/// other flag.
///
/// ```ignore
/// clew_runtime::conn_limit_flags!(pub struct ConnFlags, env = "CLEW_");
/// ```
#[macro_export]
macro_rules! conn_limit_flags {
    ($(#[$meta:meta])* $vis:vis struct $name:ident, env = $prefix:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, clap::Args)]
        $vis struct $name {
            /// Most connections each listener holds (the ops listener has its
            /// own limit). At the limit a new connection evicts the
            /// longest-idle one (idle at least 1 s) or is closed at once.
            #[arg(long, env = concat!($prefix, "MAX_CONNECTIONS"), default_value_t = 4096)]
            pub max_connections: usize,
            /// A connection that sends and receives nothing for this long is
            /// closed.
            #[arg(long, env = concat!($prefix, "CONN_IDLE_TIMEOUT"), default_value = "60s", value_parser = $crate::net::parse_duration)]
            pub conn_idle_timeout: ::std::time::Duration,
            /// An HTTP/1 request's headers must all arrive within this long
            /// (slow clients are cut off); also how long a keep-alive
            /// connection waits for its next request.
            #[arg(long, env = concat!($prefix, "HEADER_READ_TIMEOUT"), default_value = "10s", value_parser = $crate::net::parse_duration)]
            pub header_read_timeout: ::std::time::Duration,
            /// How often a quiet HTTP/2 (and gRPC) connection is pinged.
            #[arg(long, env = concat!($prefix, "HTTP2_KEEPALIVE_INTERVAL"), default_value = "30s", value_parser = $crate::net::parse_duration)]
            pub http2_keepalive_interval: ::std::time::Duration,
            /// An HTTP/2 connection whose ping goes unanswered this long is
            /// closed.
            #[arg(long, env = concat!($prefix, "HTTP2_KEEPALIVE_TIMEOUT"), default_value = "10s", value_parser = $crate::net::parse_duration)]
            pub http2_keepalive_timeout: ::std::time::Duration,
            /// Most concurrent requests on one HTTP/2 (gRPC) connection.
            #[arg(long, env = concat!($prefix, "HTTP2_MAX_CONCURRENT_STREAMS"), default_value_t = 256)]
            pub http2_max_concurrent_streams: u32,
        }

        impl $name {
            /// The limits these flags describe.
            pub fn limits(&self) -> $crate::net::ConnLimits {
                $crate::net::ConnLimits {
                    max_connections: self.max_connections,
                    idle_timeout: self.conn_idle_timeout,
                    header_read_timeout: self.header_read_timeout,
                    http2_keepalive_interval: self.http2_keepalive_interval,
                    http2_keepalive_timeout: self.http2_keepalive_timeout,
                    http2_max_concurrent_streams: self.http2_max_concurrent_streams,
                    ..$crate::net::ConnLimits::default()
                }
            }
        }
    };
}
