//! Automatic spans for tonic (gRPC) and tower/axum (HTTP) services and
//! clients, and a `tracing` layer.
//!
//! ```no_run
//! # use clew_tracer::{Tracer, instrument::TraceLayer};
//! # async fn f(tracer: Tracer, channel: tonic::transport::Channel) {
//! // gRPC client: every call gets a client span and carries the context.
//! let svc = tower::ServiceBuilder::new()
//!     .layer(TraceLayer::grpc_client(tracer.clone()))
//!     .service(channel);
//! // pass `svc` to a generated client: `MyClient::new(svc)`
//! # }
//! ```

mod layer;
mod tracing_layer;

pub use layer::{NameFn, Protocol, ResponseFuture, TraceLayer, TraceService, TracedBody};
pub use tracing_layer::ClewLayer;

use crate::context::Context;
use crate::tracer::Tracer;

/// A tonic interceptor that only injects the current context into outgoing
/// metadata (no client span): for `Client::with_interceptor` when a full
/// [`TraceLayer`] cannot be used.
#[derive(Clone, Debug)]
pub struct InjectInterceptor {
    tracer: Tracer,
}

impl InjectInterceptor {
    /// Injects with `tracer`'s vector-clock node.
    pub fn new(tracer: Tracer) -> Self {
        InjectInterceptor { tracer }
    }
}

impl tonic::service::Interceptor for InjectInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let cx = Context::current();
        crate::propagation::inject(&self.tracer, &cx, req.metadata_mut());
        Ok(req)
    }
}
