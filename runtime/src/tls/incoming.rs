//! TLS connections from a tracked listener, handshaken concurrently.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

use super::ServerTls;
use crate::net::{TrackedListener, TrackedStream};

/// A server-side TLS connection over a tracked TCP connection.
#[derive(Debug)]
pub struct ServerTlsStream(tokio_rustls::server::TlsStream<TrackedStream>);

impl ServerTlsStream {
    /// The TLS session (negotiated protocol, client certificates).
    pub fn session(&self) -> &rustls::ServerConnection {
        self.0.get_ref().1
    }

    /// The client's address.
    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.get_ref().peer_addr()
    }
}

impl AsyncRead for ServerTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServerTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(feature = "grpc")]
impl tonic::transport::server::Connected for ServerTlsStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

/// The TLS connections of a listener: a task accepts, a task per
/// connection handshakes (within the listener's header-read timeout), and
/// the connections that completed one come out of this stream. Dropping
/// the stream stops accepting.
#[derive(Debug)]
pub struct TlsIncoming {
    rx: mpsc::Receiver<ServerTlsStream>,
}

impl TlsIncoming {
    /// Starts accepting on `listener` with `tls` (its configuration as of
    /// each handshake). Call inside a Tokio runtime.
    pub fn new(listener: TrackedListener, tls: ServerTls) -> TlsIncoming {
        let (tx, rx) = mpsc::channel(64);
        let timeout = listener.tracker().limits().header_read_timeout;
        let name = listener.tracker().name();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    s = listener.accept() => s,
                    () = tx.closed() => return,
                };
                let (tx, config) = (tx.clone(), tls.config());
                tokio::spawn(async move {
                    let peer = stream.get_ref().peer_addr().ok();
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            let _ = tx.send(ServerTlsStream(s)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::info!(listener = name, ?peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::info!(listener = name, ?peer, "TLS handshake timed out");
                        }
                    }
                });
            }
        });
        TlsIncoming { rx }
    }
}

impl futures_util::Stream for TlsIncoming {
    type Item = Result<ServerTlsStream, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|s| s.map(Ok))
    }
}
