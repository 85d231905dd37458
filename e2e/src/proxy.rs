//! A TCP proxy that can cut the network: while blocked it resets every
//! open connection and refuses new ones, which is what a sidecar sees when
//! its collectors become unreachable.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy. Dropping it stops it.
#[derive(Debug)]
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    blocked: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Proxies `listen` (use port 0 for any) to `target`.
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = watch::channel(false);
        let blocked = Arc::new(tx);
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if *rx.borrow() {
                    drop(inbound);
                    continue;
                }
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut inbound = inbound;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(|b| *b) => {
                            // Reset rather than close: a cut network does not say goodbye.
                            let _ = inbound.set_zero_linger();
                        }
                    }
                });
            }
        });
        Ok(Proxy {
            addr,
            blocked,
            task,
        })
    }

    /// Cuts (true) or restores (false) the network.
    pub fn set_blocked(&self, blocked: bool) {
        let _ = self.blocked.send(blocked);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
