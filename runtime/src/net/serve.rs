//! Serving HTTP (axum) and gRPC (tonic) over tracked listeners.

use std::future::Future;

use axum::extract::ConnectInfo;
use tower_layer::Layer as _;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;

use super::{ConnLimits, TrackedListener};

/// Applies `limits` to a hyper connection builder: the HTTP/1 header-read
/// timeout (which needs a timer to take effect at all) and keep-alive;
/// HTTP/2 keepalive pings and concurrent streams.
pub fn configure_http(builder: &mut Builder<TokioExecutor>, limits: &ConnLimits) {
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keepalive_interval)
        .keep_alive_timeout(limits.http2_keepalive_timeout)
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        // As axum::serve: the CONNECT protocol, for HTTP/2 WebSockets.
        .enable_connect_protocol();
}

/// A hyper connection builder (HTTP/1 and HTTP/2) configured by `limits`.
pub fn http_builder(limits: &ConnLimits) -> Builder<TokioExecutor> {
    let mut b = Builder::new(TokioExecutor::new());
    configure_http(&mut b, limits);
    b
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops
/// accepting, lets every connection finish its requests, and returns once
/// all are closed (as `axum::serve(..).with_graceful_shutdown`).
pub async fn serve_http(
    listener: TrackedListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()>,
) {
    let limits = listener.tracker().limits().clone();
    let incoming = futures_util::stream::unfold(listener, |l| async move {
        let s = l.accept().await;
        let peer = s.get_ref().peer_addr().unwrap_or(UNKNOWN_PEER);
        Some(((s, peer), l))
    });
    serve_http_incoming(incoming, &limits, app, shutdown).await;
}

/// [`serve_http`] over TLS: each connection of `listener` is served once
/// its handshake with `tls` completed.
#[cfg(feature = "tls")]
pub async fn serve_https(
    listener: TrackedListener,
    tls: crate::tls::ServerTls,
    app: axum::Router,
    shutdown: impl Future<Output = ()>,
) {
    use futures_util::StreamExt as _;
    let limits = listener.tracker().limits().clone();
    let incoming = crate::tls::TlsIncoming::new(listener, tls).filter_map(|s| async {
        let s = s.ok()?;
        let peer = s.peer_addr().unwrap_or(UNKNOWN_PEER);
        Some((s, peer))
    });
    serve_http_incoming(incoming, &limits, app, shutdown).await;
}

/// [`serve_https`] with `tls`, else [`serve_http`].
#[cfg(feature = "tls")]
pub async fn serve_http_with(
    listener: TrackedListener,
    tls: Option<crate::tls::ServerTls>,
    app: axum::Router,
    shutdown: impl Future<Output = ()>,
) {
    match tls {
        Some(tls) => serve_https(listener, tls, app, shutdown).await,
        None => serve_http(listener, app, shutdown).await,
    }
}

/// The address given to handlers when a connection's peer is unknown.
const UNKNOWN_PEER: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// Serves `app` on every connection `incoming` yields (with its peer's
/// address), as [`serve_http`].
async fn serve_http_incoming<S, IO>(
    incoming: S,
    limits: &ConnLimits,
    app: axum::Router,
    shutdown: impl Future<Output = ()>,
) where
    S: futures_util::Stream<Item = (IO, std::net::SocketAddr)>,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    use futures_util::StreamExt as _;
    let builder = http_builder(limits);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut incoming = Box::pin(incoming);
    loop {
        tokio::select! {
            stream = incoming.next() => {
                let Some((stream, peer)) = stream else { break };
                // The peer's address for handlers and middleware (a refused
                // credential is logged with it).
                let app = axum::Extension(ConnectInfo(peer)).layer(app.clone());
                let service = TowerToHyperService::new(app);
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::trace!(error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(incoming);
    graceful.shutdown().await;
}

/// A tonic server builder configured by `limits` (HTTP/2 keepalive and
/// concurrent streams); serve it with `serve_with_incoming_shutdown` over
/// [`TrackedListener::into_incoming`].
#[cfg(feature = "grpc")]
pub fn grpc_server(limits: &ConnLimits) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
}
