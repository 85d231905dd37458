//! The current context: which span is the parent of new spans, the trace's
//! vector clock in this process, and baggage.
//!
//! A context is attached to the current thread with [`Context::attach`], or
//! to a future with [`FutureExt::with_context`], which attaches it on every
//! poll so it follows the task across threads.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};

use parking_lot::Mutex;

use crate::clock::{NodeId, VectorClock};
use crate::ids::SpanContext;
use crate::propagation::baggage::Baggage;
use crate::span::Span;

/// One vector-clock node: an id and its counter, shared by every trace this
/// process takes part in.
///
/// The node's own entry comes from one process-wide counter, so no two events
/// of this node ever carry the same counter, even across concurrent requests
/// of one trace. Other nodes' entries live per trace, in a [`ClockCell`].
#[derive(Debug)]
pub struct Node {
    pub(crate) id: NodeId,
    // Written by every span on every thread: on a cache line of its own, so
    // that reading the id (or whatever sits beside the node) does not
    // contend with it.
    counter: CounterLine,
}

#[derive(Debug)]
#[repr(align(128))]
struct CounterLine(AtomicU64);

impl std::ops::Deref for CounterLine {
    type Target = AtomicU64;
    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

impl Node {
    /// A node with a fresh counter.
    pub fn new(id: impl Into<NodeId>) -> Self {
        Node {
            id: id.into(),
            counter: CounterLine(AtomicU64::new(0)),
        }
    }

    /// The node id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next counter value, strictly above both every value handed out
    /// before and `seen` (our own entry as it came back in a received clock).
    pub(crate) fn next_after(&self, seen: u64) -> u64 {
        // The counter only grows: when it is already at `seen` or above, the
        // read-modify-write of `fetch_max` would change nothing.
        if seen > 0 && self.counter.load(Ordering::Relaxed) < seen {
            self.counter.fetch_max(seen, Ordering::Relaxed);
        }
        self.counter
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1)
    }
}

/// A trace's vector clock within this process, shared by its local spans.
#[derive(Debug, Default)]
pub struct ClockCell {
    clock: Mutex<VectorClock>,
}

impl ClockCell {
    /// A cell starting at `clock` (e.g. one received from upstream).
    pub fn new(clock: VectorClock) -> Arc<Self> {
        Arc::new(ClockCell {
            clock: Mutex::new(clock),
        })
    }

    /// A local event on `node`: increment, return the new clock.
    pub fn tick(&self, node: &Node) -> VectorClock {
        let mut out = VectorClock::new();
        self.tick_into(node, &mut out);
        out
    }

    /// [`ClockCell::tick`], writing the new clock into `out` (reusing its
    /// storage).
    pub fn tick_into(&self, node: &Node, out: &mut VectorClock) {
        let mut c = self.clock.lock();
        let v = node.next_after(c.get(&node.id));
        c.set(node.id.as_str(), v);
        out.clone_from(&c);
    }

    /// A receive: merge `other` (e.g. a response's clock), then tick.
    pub fn receive(&self, other: &VectorClock, node: &Node) -> VectorClock {
        let mut c = self.clock.lock();
        c.merge(other);
        let v = node.next_after(c.get(&node.id));
        c.set(node.id.as_str(), v);
        c.clone()
    }

    /// Merge without ticking (no node known yet).
    pub fn merge(&self, other: &VectorClock) {
        self.clock.lock().merge(other);
    }

    /// The current value.
    pub fn snapshot(&self) -> VectorClock {
        self.clock.lock().clone()
    }
}

/// What flows from a parent to its children: the parent span's context, the
/// trace's clock cell and baggage. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Context {
    pub(crate) span: Option<SpanContext>,
    pub(crate) clock: Option<Arc<ClockCell>>,
    pub(crate) baggage: Option<Arc<Baggage>>,
}

thread_local! {
    static CURRENT: RefCell<Context> = const {
        RefCell::new(Context {
            span: None,
            clock: None,
            baggage: None,
        })
    };
}

impl Context {
    /// The empty context: a span started under it is a root.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn from_parts(
        span: Option<SpanContext>,
        clock: Option<Arc<ClockCell>>,
        baggage: Option<Arc<Baggage>>,
    ) -> Self {
        Context {
            span,
            clock,
            baggage,
        }
    }

    /// A context whose parent is a remote span (as extracted from headers).
    pub fn with_remote_parent(span: SpanContext, clock: Option<VectorClock>) -> Self {
        Context {
            span: Some(span),
            clock: clock.map(ClockCell::new),
            baggage: None,
        }
    }

    /// A copy of the current thread's context.
    pub fn current() -> Self {
        CURRENT.with(|c| c.borrow().clone())
    }

    /// Runs `f` with a reference to the current context, without cloning it.
    pub fn map_current<T>(f: impl FnOnce(&Context) -> T) -> T {
        CURRENT.with(|c| f(&c.borrow()))
    }

    /// The parent span's context, if any.
    pub fn span_context(&self) -> Option<&SpanContext> {
        self.span.as_ref()
    }

    /// The trace's clock in this process, if any.
    pub fn clock(&self) -> Option<&Arc<ClockCell>> {
        self.clock.as_ref()
    }

    /// Baggage carried by this context.
    pub fn baggage(&self) -> Option<&Baggage> {
        self.baggage.as_deref()
    }

    /// This context with `baggage`.
    pub fn with_baggage(mut self, baggage: Baggage) -> Self {
        self.baggage = if baggage.is_empty() {
            None
        } else {
            Some(Arc::new(baggage))
        };
        self
    }

    /// Makes this the current context until the guard drops.
    pub fn attach(self) -> ContextGuard {
        let previous = CURRENT.with(|c| c.replace(self));
        ContextGuard {
            previous: Some(previous),
            _not_send: std::marker::PhantomData,
        }
    }
}

/// Restores the previous context when dropped. Not `Send`: it belongs to the
/// thread whose context it changed.
#[derive(Debug)]
pub struct ContextGuard {
    previous: Option<Context>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        if let Some(prev) = self.previous.take() {
            // The thread-local is gone only during thread teardown.
            let _ = CURRENT.try_with(|c| c.replace(prev));
        }
    }
}

/// Swaps a context in for one poll and back out, even if the poll panics.
struct Swap<'a> {
    slot: &'a mut Context,
}

impl<'a> Swap<'a> {
    fn enter(slot: &'a mut Context) -> Self {
        CURRENT.with(|c| std::mem::swap(&mut *c.borrow_mut(), slot));
        Swap { slot }
    }
}

impl Drop for Swap<'_> {
    fn drop(&mut self) {
        let _ = CURRENT.try_with(|c| std::mem::swap(&mut *c.borrow_mut(), self.slot));
    }
}

pin_project_lite::pin_project! {
    /// A future that runs with a context attached on every poll.
    #[derive(Debug)]
    pub struct WithContext<F> {
        #[pin]
        inner: F,
        cx: Context,
    }
}

impl<F: Future> Future for WithContext<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, task: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _swap = Swap::enter(this.cx);
        this.inner.poll(task)
    }
}

pin_project_lite::pin_project! {
    /// A future that runs inside a span and ends the span when it completes
    /// (or is dropped, e.g. on cancellation).
    #[derive(Debug)]
    pub struct InSpan<F> {
        #[pin]
        inner: WithContext<F>,
        span: Span,
    }
}

impl<F: Future> Future for InSpan<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, task: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = this.inner.poll(task);
        if out.is_ready() {
            this.span.end();
        }
        out
    }
}

/// Attaching contexts and spans to futures.
pub trait FutureExt: Future + Sized {
    /// Runs the future with `cx` as the current context on every poll.
    fn with_context(self, cx: Context) -> WithContext<Self> {
        WithContext { inner: self, cx }
    }

    /// Runs the future inside `span` (its children see it as parent) and
    /// ends the span when the future completes or is dropped.
    fn in_span(self, span: Span) -> InSpan<Self> {
        let cx = span.context();
        InSpan {
            inner: WithContext { inner: self, cx },
            span,
        }
    }
}

impl<F: Future> FutureExt for F {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{SpanId, TraceFlags, TraceId};

    fn sc(n: u64) -> SpanContext {
        SpanContext {
            trace_id: TraceId::from_u128(1),
            span_id: SpanId::from_u64(n),
            flags: TraceFlags::SAMPLED,
            ..Default::default()
        }
    }

    #[test]
    fn attach_nests_and_restores() {
        assert!(Context::current().span.is_none());
        let g1 = Context::with_remote_parent(sc(1), None).attach();
        assert_eq!(
            Context::current().span.unwrap().span_id,
            SpanId::from_u64(1)
        );
        {
            let _g2 = Context::with_remote_parent(sc(2), None).attach();
            assert_eq!(
                Context::current().span.unwrap().span_id,
                SpanId::from_u64(2)
            );
        }
        assert_eq!(
            Context::current().span.unwrap().span_id,
            SpanId::from_u64(1)
        );
        drop(g1);
        assert!(Context::current().span.is_none());
    }

    #[tokio::test]
    async fn with_context_follows_the_future_only_while_polled() {
        let cx = Context::with_remote_parent(sc(7), None);
        let seen = async {
            tokio::task::yield_now().await;
            Context::current().span.map(|s| s.span_id)
        }
        .with_context(cx)
        .await;
        assert_eq!(seen, Some(SpanId::from_u64(7)));
        assert!(Context::current().span.is_none());
    }

    #[test]
    fn node_counter_is_unique_and_above_seen() {
        let node = Node::new("n");
        let cell = ClockCell::new(VectorClock::new());
        let a = cell.tick(&node);
        let other = ClockCell::new(VectorClock::new());
        let b = other.tick(&node);
        assert_ne!(a.get("n"), b.get("n"));
        let mut seen = VectorClock::new();
        seen.set("n", 100);
        let c = cell.receive(&seen, &node);
        assert_eq!(c.get("n"), 101);
        assert!(other.tick(&node).get("n") > 101);
    }
}
