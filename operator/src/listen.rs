//! The webhook's HTTPS server with bounded connections: axum-server's
//! accept step admits each TCP connection through a [`ConnTracker`] (a
//! limit with eviction of idle connections, idle reaping) before the TLS
//! handshake (itself bounded by the header-read timeout), and its HTTP
//! builder gets the header-read timeout and HTTP/2
//! limits of every clew server.

use std::io;
use std::net::SocketAddr;

use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use clew_runtime::net::{ConnLimits, ConnMetrics, ConnTracker, TrackedStream};
use tokio::net::TcpStream;

/// Admits accepted TCP connections through a [`ConnTracker`]; a connection
/// refused at the limit is an accept error, which closes it at once.
#[derive(Clone, Debug)]
pub struct TrackingAcceptor {
    tracker: ConnTracker,
}

impl TrackingAcceptor {
    /// Admits through `tracker`.
    pub fn new(tracker: ConnTracker) -> Self {
        Self { tracker }
    }
}

impl<S> Accept<TcpStream, S> for TrackingAcceptor {
    type Stream = TrackedStream<TcpStream>;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Self::Stream, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let _ = stream.set_nodelay(true);
        std::future::ready(match self.tracker.admit(stream) {
            Some(s) => Ok((s, service)),
            None => Err(io::Error::other("at the connection limit")),
        })
    }
}

/// The webhook's HTTPS server on `addr`: TLS from `tls`, connections
/// bounded by `limits` and counted under `listener="webhook"` in `conns`.
/// Call inside a Tokio runtime; add a handle and serve it.
pub fn webhook_server(
    addr: SocketAddr,
    tls: RustlsConfig,
    limits: &ConnLimits,
    conns: &ConnMetrics,
) -> axum_server::Server<SocketAddr, RustlsAcceptor<TrackingAcceptor>> {
    let tracker = ConnTracker::new("webhook", limits.clone(), conns);
    // A TLS handshake is held to the same deadline as HTTP/1 headers.
    let acceptor = RustlsAcceptor::new(tls)
        .handshake_timeout(limits.header_read_timeout)
        .acceptor(TrackingAcceptor::new(tracker));
    let mut server = axum_server::bind(addr).acceptor(acceptor);
    clew_runtime::net::configure_http(server.http_builder(), limits);
    server
}
