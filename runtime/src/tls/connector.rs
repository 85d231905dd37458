//! A TLS connector for tonic channels: each new connection uses the
//! client configuration in force (so re-read certificates take effect
//! without rebuilding the channel).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::ClientTls;

/// Connects over TCP, then TLS, to the host and port of a URI; for
/// `tonic::transport::Endpoint::connect_with_connector` (the endpoint's
/// scheme stays `http`: TLS is done here).
#[derive(Debug, Clone)]
pub struct TlsConnector {
    tls: ClientTls,
}

type Connected = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl TlsConnector {
    pub(super) fn new(tls: ClientTls) -> Self {
        TlsConnector { tls }
    }
}

impl tower::Service<http::Uri> for TlsConnector {
    type Response = Connected;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Connected, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = uri.host().ok_or("the address has no host")?.to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp =
                TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
                    .await?;
            tcp.set_nodelay(true)?;
            let name = tls.server_name(&host)?;
            let stream = tokio_rustls::TlsConnector::from(tls.config())
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(stream))
        })
    }
}
