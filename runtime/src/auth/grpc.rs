//! A tonic service wrapper: `authorization: Bearer` or UNAUTHENTICATED.
//!
//! A wrapper rather than a `tonic::service::Interceptor`: an interceptor is
//! synchronous, and a JWT naming a key not yet cached waits for the JWKS
//! to be fetched again.

use std::convert::Infallible;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http::{Request, Response, header};
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;
use tonic::transport::server::TcpConnectInfo;

use super::Authenticator;

/// `inner` behind an [`Authenticator`]; add it to a tonic server in place
/// of `inner` (it keeps `inner`'s service name).
#[derive(Debug, Clone)]
pub struct RequireBearer<S> {
    inner: S,
    auth: Option<Authenticator>,
}

impl<S> RequireBearer<S> {
    /// Guards `inner` with `auth`; with `None`, every request goes through.
    pub fn new(inner: S, auth: Option<Authenticator>) -> Self {
        RequireBearer { inner, auth }
    }
}

impl<S: NamedService> NamedService for RequireBearer<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<Request<B>> for RequireBearer<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone that was polled ready serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(auth) = self.auth.clone() else {
            return Box::pin(inner.call(req));
        };
        Box::pin(async move {
            let peer = req
                .extensions()
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr);
            match auth
                .admit(req.headers().get(header::AUTHORIZATION), peer)
                .await
            {
                Ok(()) => inner.call(req).await,
                Err(reason) => {
                    let msg = if reason.token_given() {
                        "invalid credentials"
                    } else {
                        "authentication required"
                    };
                    Ok(tonic::Status::unauthenticated(msg).into_http())
                }
            }
        })
    }
}
