//! One tower layer for both protocols and both sides: gRPC (tonic) and
//! plain HTTP (axum, hyper, reqwest-style clients), server and client.
//!
//! - Server: extracts the remote context, starts a server span, runs the
//!   handler with the span as the current context, attaches the trace's
//!   vector clock to the response.
//! - Client: starts a client span under the current context, injects
//!   `traceparent`/`tracestate`/`baggage`/`clew-vclock`, merges the clock the
//!   server sent back.
//!
//! The span ends when the response body ends, so streaming calls are timed
//! to their last message; gRPC status is read from headers (trailers-only
//! responses) or trailers. A request dropped before it completes (the caller
//! cancelled, or the client went away) ends its span with status Error
//! `cancelled` and `rpc.cancelled = true`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower_layer::Layer;
use tower_service::Service;

use crate::context::{Context, FutureExt, WithContext};
use crate::propagation;
use crate::span::{Span, SpanKind, Status, Str};
use crate::tracer::Tracer;

/// Which protocol the layer instruments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC over HTTP/2: names from the path, status from `grpc-status`.
    Grpc,
    /// Plain HTTP: names from method and path, status from the status code.
    Http,
}

/// Names a server span from the request (e.g. to use a route template
/// instead of a raw path with ids in it).
pub type NameFn = Arc<dyn Fn(&http::request::Parts) -> Str + Send + Sync>;

/// Instruments a tower service; see the module docs.
#[derive(Clone)]
pub struct TraceLayer {
    tracer: Tracer,
    kind: SpanKind,
    protocol: Protocol,
    name: Option<NameFn>,
}

impl std::fmt::Debug for TraceLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceLayer")
            .field("kind", &self.kind)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl TraceLayer {
    /// Server side of a tonic server: `Server::builder().layer(TraceLayer::grpc_server(t))`.
    pub fn grpc_server(tracer: Tracer) -> Self {
        Self::new(tracer, SpanKind::Server, Protocol::Grpc)
    }

    /// Client side of a tonic client: wrap the `Channel` with
    /// `ServiceBuilder::new().layer(TraceLayer::grpc_client(t)).service(channel)`.
    pub fn grpc_client(tracer: Tracer) -> Self {
        Self::new(tracer, SpanKind::Client, Protocol::Grpc)
    }

    /// HTTP server side (e.g. `axum::Router::layer`).
    pub fn http_server(tracer: Tracer) -> Self {
        Self::new(tracer, SpanKind::Server, Protocol::Http)
    }

    /// HTTP client side (e.g. around a hyper-util client).
    pub fn http_client(tracer: Tracer) -> Self {
        Self::new(tracer, SpanKind::Client, Protocol::Http)
    }

    fn new(tracer: Tracer, kind: SpanKind, protocol: Protocol) -> Self {
        TraceLayer {
            tracer,
            kind,
            protocol,
            name: None,
        }
    }

    /// Overrides how spans are named.
    pub fn with_name_fn(
        mut self,
        f: impl Fn(&http::request::Parts) -> Str + Send + Sync + 'static,
    ) -> Self {
        self.name = Some(Arc::new(f));
        self
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = TraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service produced by [`TraceLayer`].
#[derive(Clone, Debug)]
pub struct TraceService<S> {
    inner: S,
    layer: TraceLayer,
}

fn default_name(protocol: Protocol, parts: &http::request::Parts) -> Str {
    match protocol {
        Protocol::Grpc => parts.uri.path().trim_start_matches('/').to_string().into(),
        Protocol::Http => format!("{} {}", parts.method, parts.uri.path()).into(),
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for TraceService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: std::fmt::Display,
    ResB: Body,
{
    type Response = Response<TracedBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let l = &self.layer;
        let (mut parts, body) = req.into_parts();
        let name = match &l.name {
            Some(f) => f(&parts),
            None => default_name(l.protocol, &parts),
        };
        let mut builder = l.tracer.span(name).kind(l.kind);
        if l.kind == SpanKind::Server {
            builder = builder.parent(&propagation::extract(&parts.headers));
        }
        builder = match l.protocol {
            Protocol::Grpc => {
                let path = parts.uri.path().trim_start_matches('/');
                let (svc, method) = path.split_once('/').unwrap_or((path, ""));
                builder
                    .attribute("rpc.system", "grpc")
                    .attribute("rpc.service", svc.to_string())
                    .attribute("rpc.method", method.to_string())
            }
            Protocol::Http => builder
                .attribute("http.request.method", parts.method.to_string())
                .attribute("url.path", parts.uri.path().to_string()),
        };
        let span = builder.start();
        let cx = span.context();
        if l.kind == SpanKind::Client {
            propagation::inject(&l.tracer, &cx, &mut parts.headers);
        }
        let req = Request::from_parts(parts, body);
        // The inner call's synchronous part runs under the span, too.
        let fut = {
            let _guard = cx.clone().attach();
            self.inner.call(req)
        };
        ResponseFuture {
            inner: fut.with_context(cx.clone()),
            state: Some(CallState {
                guard: SpanGuard(span),
                cx,
                tracer: l.tracer.clone(),
                kind: l.kind,
                protocol: l.protocol,
            }),
        }
    }
}

/// Ends a span on drop, marking it cancelled if it was still open.
struct SpanGuard(Span);

impl Drop for SpanGuard {
    fn drop(&mut self) {
        if self.0.is_recording() {
            self.0.set_attribute("rpc.cancelled", true);
            self.0.set_status(Status::Error("cancelled".into()));
            self.0.end();
        }
    }
}

struct CallState {
    guard: SpanGuard,
    cx: Context,
    tracer: Tracer,
    kind: SpanKind,
    protocol: Protocol,
}

impl std::fmt::Debug for CallState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallState")
            .field("kind", &self.kind)
            .finish()
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`TraceService`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: WithContext<F>,
        state: Option<CallState>,
    }
}

impl<F, ResB, E> std::future::Future for ResponseFuture<F>
where
    F: std::future::Future<Output = Result<Response<ResB>, E>>,
    E: std::fmt::Display,
    ResB: Body,
{
    type Output = Result<Response<TracedBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, task: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(task));
        let Some(mut st) = this.state.take() else {
            // Polled after completion: the inner future decides what that means.
            return Poll::Ready(res.map(|r| r.map(TracedBody::passthrough)));
        };
        Poll::Ready(match res {
            Ok(mut resp) => {
                let span = &mut st.guard.0;
                match st.protocol {
                    Protocol::Http => {
                        let code = resp.status().as_u16();
                        span.set_attribute("http.response.status_code", i64::from(code));
                        let failed = code >= 500 || (st.kind == SpanKind::Client && code >= 400);
                        if failed {
                            span.set_status(Status::Error(format!("HTTP {code}").into()));
                        }
                    }
                    Protocol::Grpc => {
                        // A trailers-only response carries grpc-status in the headers.
                        grpc_status_from(span, resp.headers());
                    }
                }
                let end_now = resp.body().is_end_stream();
                match st.kind {
                    // Headers alone are the whole response: they carry the
                    // span's end clock, its last send.
                    SpanKind::Server if end_now => {
                        if let Some(c) = st.guard.0.end_with_clock() {
                            propagation::Injector::set(
                                resp.headers_mut(),
                                propagation::VCLOCK,
                                c.encode(),
                            );
                        }
                    }
                    SpanKind::Server => {
                        propagation::inject_response_clock(&st.tracer, &st.cx, resp.headers_mut())
                    }
                    _ => propagation::receive_response_clock(&st.tracer, &st.cx, resp.headers()),
                }
                let (parts, body) = resp.into_parts();
                let mut traced = TracedBody {
                    inner: body,
                    state: Some(st),
                };
                if end_now {
                    traced.finish();
                }
                Ok(Response::from_parts(parts, traced))
            }
            Err(e) => {
                let span = &mut st.guard.0;
                span.set_status(Status::Error(e.to_string().into()));
                span.end();
                Err(e)
            }
        })
    }
}

fn grpc_status_from(span: &mut Span, headers: &http::HeaderMap) {
    let Some(code) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    span.set_attribute("rpc.grpc.status_code", i64::from(code));
    if code != 0 {
        let name = format!("{:?}", tonic::Code::from_i32(code));
        span.set_status(Status::Error(name.into()));
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its call's span when the body ends.
    #[derive(Debug)]
    pub struct TracedBody<B> {
        #[pin]
        inner: B,
        state: Option<CallState>,
    }
}

impl<B> TracedBody<B> {
    fn passthrough(inner: B) -> Self {
        TracedBody { inner, state: None }
    }

    fn finish(&mut self) {
        if let Some(mut st) = self.state.take() {
            st.guard.0.end();
        }
    }
}

impl<B: Body> Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let mut inner = this.inner;
        let mut res = ready!(inner.as_mut().poll_frame(cx));
        match (&mut res, this.state.as_mut()) {
            (Some(Ok(frame)), Some(st)) => {
                if let Some(trailers) = frame.trailers_mut() {
                    if st.protocol == Protocol::Grpc {
                        grpc_status_from(&mut st.guard.0, trailers);
                    }
                    match st.kind {
                        // Trailers are the server's last send: end the span
                        // and send its end clock with them.
                        SpanKind::Server => {
                            if let Some(c) = st.guard.0.end_with_clock() {
                                propagation::Injector::set(
                                    trailers,
                                    propagation::VCLOCK,
                                    c.encode(),
                                );
                            }
                        }
                        _ => propagation::receive_response_clock(&st.tracer, &st.cx, trailers),
                    }
                }
            }
            (Some(Err(_)), Some(st)) => {
                st.guard
                    .0
                    .set_status(Status::Error("response body error".into()));
            }
            _ => {}
        }
        // hyper stops polling once the body says it has ended, so end the
        // span on the last frame rather than waiting for a `None`.
        if (res.is_none() || matches!(res, Some(Err(_))) || inner.is_end_stream())
            && let Some(mut st) = this.state.take()
        {
            st.guard.0.end();
        }
        Poll::Ready(res)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
