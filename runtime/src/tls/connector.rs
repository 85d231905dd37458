//! A TLS connector for tonic channels and hyper clients: each new
//! connection uses the client configuration in force (so re-read
//! certificates take effect without rebuilding the channel or client).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::ClientTls;

/// Connects over TCP, then TLS, to the host and port of a URI; for
/// `tonic::transport::Endpoint::connect_with_connector` (the endpoint's
/// scheme stays `http`: TLS is done here) and for hyper-util's pooled
/// client (`https://` or `http://` URIs alike: every connection is TLS).
#[derive(Debug, Clone)]
pub struct TlsConnector {
    tls: ClientTls,
}

/// A client TLS connection made by [`TlsConnector`].
#[derive(Debug)]
pub struct TlsConnection(TokioIo<tokio_rustls::client::TlsStream<TcpStream>>);

impl TlsConnection {
    /// The TLS stream (for its session: the protocol agreed, the peer's
    /// certificates).
    pub fn get_ref(&self) -> &tokio_rustls::client::TlsStream<TcpStream> {
        self.0.inner()
    }

    /// The TLS stream, to use with tokio's I/O traits.
    pub fn into_inner(self) -> tokio_rustls::client::TlsStream<TcpStream> {
        self.0.into_inner()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl TlsConnector {
    pub(super) fn new(tls: ClientTls) -> Self {
        TlsConnector { tls }
    }
}

impl tower::Service<http::Uri> for TlsConnector {
    type Response = TlsConnection;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsConnection, BoxError>> + Send>>;

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
            Ok(TlsConnection(TokioIo::new(stream)))
        })
    }
}

impl Connection for TlsConnection {
    fn connected(&self) -> Connected {
        let (tcp, session) = self.get_ref().get_ref();
        let connected = tcp.connected();
        if session.alpn_protocol() == Some(b"h2") {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl Read for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
