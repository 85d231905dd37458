//! The tracked listener: admission at the limit, eviction, idle reaping,
//! and the IO wrapper that records activity and fails once closed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::{ConnLimits, ConnMetrics};

/// How often a listener at its limit may log that it is.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// One connection's shared state: when bytes last moved, whether it is
/// being closed, and the wakers of the task serving it.
#[derive(Debug, Default)]
struct Slot {
    /// Milliseconds since the tracker's epoch.
    last_active: AtomicU64,
    closing: AtomicBool,
    read_waker: Mutex<Option<Waker>>,
    write_waker: Mutex<Option<Waker>>,
}

impl Slot {
    /// Flags the connection closed and wakes its task; false if it already
    /// was.
    fn close(&self) -> bool {
        if self.closing.swap(true, Ordering::AcqRel) {
            return false;
        }
        for w in [&self.read_waker, &self.write_waker] {
            if let Some(w) = w.lock().take() {
                w.wake();
            }
        }
        true
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }
}

fn register(slot: &Mutex<Option<Waker>>, cx: &Context<'_>) {
    let mut w = slot.lock();
    match &*w {
        Some(old) if old.will_wake(cx.waker()) => {}
        _ => *w = Some(cx.waker().clone()),
    }
}

#[derive(Debug)]
struct Inner {
    name: &'static str,
    limits: ConnLimits,
    epoch: Instant,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Slot>>>,
    /// Connections flagged closed whose stream is not dropped yet.
    closing: AtomicUsize,
    open: IntGauge,
    refused: IntCounter,
    idle_closed: IntCounter,
    evicted: IntCounter,
    last_warn: Mutex<Option<Instant>>,
}

impl Inner {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The longest-idle connection idle at least `evict_after`, flagged
    /// closed; false if there is none.
    fn evict_one(&self, conns: &HashMap<u64, Arc<Slot>>, now: u64) -> bool {
        let min_idle = millis(self.limits.evict_after);
        let victim = conns
            .values()
            .filter(|s| !s.is_closing())
            .map(|s| (s.last_active.load(Ordering::Relaxed), s))
            .filter(|(last, _)| now.saturating_sub(*last) >= min_idle)
            .min_by_key(|(last, _)| *last);
        match victim {
            Some((_, slot)) if slot.close() => {
                self.closing.fetch_add(1, Ordering::AcqRel);
                self.evicted.inc();
                true
            }
            _ => false,
        }
    }

    /// Flags every connection idle past the idle timeout; returns how many.
    fn close_idle(&self) -> usize {
        let now = self.now_ms();
        let idle = millis(self.limits.idle_timeout);
        let conns = self.conns.lock();
        let mut closed = 0;
        for slot in conns.values() {
            let last = slot.last_active.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= idle && slot.close() {
                self.closing.fetch_add(1, Ordering::AcqRel);
                closed += 1;
            }
        }
        self.idle_closed.inc_by(closed as u64);
        closed
    }

    fn warn_at_limit(&self, open: usize) {
        let mut last = self.last_warn.lock();
        if last.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        tracing::warn!(
            listener = self.name,
            max_connections = self.limits.max_connections,
            open,
            refused_total = self.refused.get(),
            evicted_total = self.evicted.get(),
            "listener at its connection limit: evicting idle connections, refusing the rest"
        );
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The connections of one listener: admits, evicts, reaps idle ones, and
/// reports them under `listener=<name>`. Cloning shares the same set.
#[derive(Debug, Clone)]
pub struct ConnTracker {
    inner: Arc<Inner>,
}

impl ConnTracker {
    /// A tracker for the listener `name` (a metric label: keep the set of
    /// names small and fixed). Starts its idle reaper, so call it inside a
    /// Tokio runtime; the reaper stops once the tracker and its streams are
    /// gone.
    pub fn new(name: &'static str, limits: ConnLimits, metrics: &ConnMetrics) -> Self {
        let inner = Arc::new(Inner {
            name,
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            closing: AtomicUsize::new(0),
            open: metrics.open.with_label_values(&[name]),
            refused: metrics.refused.with_label_values(&[name]),
            idle_closed: metrics.idle_closed.with_label_values(&[name]),
            evicted: metrics.evicted.with_label_values(&[name]),
            last_warn: Mutex::new(None),
            limits,
        });
        // Checking a few times per idle timeout keeps the overshoot small.
        let every = (inner.limits.idle_timeout / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        tokio::spawn(reap(Arc::downgrade(&inner), every));
        Self { inner }
    }

    /// Admits `io` as a tracked connection, evicting the longest-idle
    /// connection if the listener is at its limit; `None` (counted as
    /// refused) when every connection is busy — drop `io` to close it.
    pub fn admit<S>(&self, io: S) -> Option<TrackedStream<S>> {
        let inner = &self.inner;
        let now = inner.now_ms();
        let mut conns = inner.conns.lock();
        let live = conns
            .len()
            .saturating_sub(inner.closing.load(Ordering::Acquire));
        if live >= inner.limits.max_connections {
            inner.warn_at_limit(live);
            if !inner.evict_one(&conns, now) {
                inner.refused.inc();
                return None;
            }
        }
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::default());
        slot.last_active.store(now, Ordering::Relaxed);
        conns.insert(id, Arc::clone(&slot));
        inner.open.inc();
        Some(TrackedStream {
            io,
            slot,
            id,
            tracker: Arc::clone(inner),
        })
    }

    /// Connections open now (including ones being closed).
    pub fn open(&self) -> usize {
        self.inner.conns.lock().len()
    }

    /// The limits this tracker enforces.
    pub fn limits(&self) -> &ConnLimits {
        &self.inner.limits
    }

    /// The listener's name (its metric label).
    pub fn name(&self) -> &'static str {
        self.inner.name
    }
}

async fn reap(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let closed = inner.close_idle();
        if closed > 0 {
            tracing::debug!(listener = inner.name, closed, "closed idle connections");
        }
    }
}

/// A connection of a tracked listener. Reads and writes record activity
/// (HTTP/2 pings aside, so keepalive does not keep an idle connection
/// open); once the tracker closes it, they fail with `ConnectionAborted`.
#[derive(Debug)]
pub struct TrackedStream<S = TcpStream> {
    io: S,
    slot: Arc<Slot>,
    id: u64,
    tracker: Arc<Inner>,
}

impl<S> TrackedStream<S> {
    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Records that `bytes` moved, unless they are nothing or a lone
    /// HTTP/2 ping.
    fn touch(&self, bytes: &[u8]) {
        if !bytes.is_empty() && !is_h2_ping(bytes) {
            self.mark_active();
        }
    }

    /// [`Self::touch`] for a vectored write of `n` bytes: a lone ping lies
    /// within the first slice; more than that is activity.
    fn touch_vectored(&self, bufs: &[io::IoSlice<'_>], n: usize) {
        match bufs.iter().find(|b| !b.is_empty()) {
            Some(first) if n <= first.len() => self.touch(&first[..n]),
            _ if n > 0 => self.mark_active(),
            _ => {}
        }
    }

    fn mark_active(&self) {
        let now = self.tracker.now_ms();
        self.slot.last_active.store(now, Ordering::Relaxed);
    }
}

/// An HTTP/2 PING frame (9-byte header of length 8 and type 6, then 8
/// bytes), alone in one read or write: keepalive, not use.
pub(super) fn is_h2_ping(bytes: &[u8]) -> bool {
    bytes.len() == 17 && bytes[..4] == [0, 0, 8, 6]
}

fn closed_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection closed by the listener (idle, or evicted at the connection limit)",
    )
}

impl<S> Drop for TrackedStream<S> {
    fn drop(&mut self) {
        let mut conns = self.tracker.conns.lock();
        conns.remove(&self.id);
        if self.slot.is_closing() {
            self.tracker.closing.fetch_sub(1, Ordering::AcqRel);
        }
        self.tracker.open.dec();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TrackedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Register before checking, so a close in between still wakes us.
        register(&this.slot.read_waker, cx);
        if this.slot.is_closing() {
            return Poll::Ready(Err(closed_error()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.touch(&buf.filled()[before..]);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TrackedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        register(&this.slot.write_waker, cx);
        if this.slot.is_closing() {
            return Poll::Ready(Err(closed_error()));
        }
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.touch(&buf[..n.min(buf.len())]);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        register(&this.slot.write_waker, cx);
        if this.slot.is_closing() {
            return Poll::Ready(Err(closed_error()));
        }
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            this.touch_vectored(bufs, n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(feature = "grpc")]
impl tonic::transport::server::Connected for TrackedStream<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// A TCP listener whose connections are tracked: `TCP_NODELAY`, bounded in
/// number, closed when idle.
#[derive(Debug)]
pub struct TrackedListener {
    listener: TcpListener,
    tracker: ConnTracker,
}

impl TrackedListener {
    /// Tracks `listener`'s connections under the name `name` (a metric
    /// label). Call inside a Tokio runtime.
    pub fn new(
        listener: TcpListener,
        name: &'static str,
        limits: ConnLimits,
        metrics: &ConnMetrics,
    ) -> Self {
        Self {
            listener,
            tracker: ConnTracker::new(name, limits, metrics),
        }
    }

    /// The tracker of this listener's connections.
    pub fn tracker(&self) -> &ConnTracker {
        &self.tracker
    }

    /// The bound address.
    ///
    /// # Errors
    ///
    /// As [`TcpListener::local_addr`].
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// The next admitted connection. Connections refused at the limit are
    /// closed here at once; accept errors (e.g. out of file descriptors)
    /// are logged and retried after a short pause, never returned.
    pub async fn accept(&self) -> TrackedStream {
        loop {
            match self.listener.accept().await {
                Ok((tcp, _)) => {
                    // Small replies (acks, query results) must not wait for
                    // Nagle's algorithm and the peer's delayed ACK (40 ms).
                    let _ = tcp.set_nodelay(true);
                    if let Some(s) = self.tracker.admit(tcp) {
                        return s;
                    }
                }
                Err(e) => self.accept_failed(e).await,
            }
        }
    }

    async fn accept_failed(&self, e: io::Error) {
        use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
        if matches!(
            e.kind(),
            ConnectionAborted | ConnectionRefused | ConnectionReset
        ) {
            return;
        }
        tracing::warn!(listener = self.tracker.inner.name, error = %e, "accept failed; retrying");
        // Out of descriptors: retrying at once would spin on the same error.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// The admitted connections as a stream (for tonic's
    /// `serve_with_incoming_shutdown`); it never ends nor fails.
    pub fn into_incoming(
        self,
    ) -> impl futures_util::Stream<Item = Result<TrackedStream, Infallible>> + Send {
        futures_util::stream::unfold(self, |l| async move {
            let s = l.accept().await;
            Some((Ok(s), l))
        })
    }
}
