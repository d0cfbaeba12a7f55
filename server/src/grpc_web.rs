//! Browsers on the gRPC port: gRPC-Web requests go through `tonic-web`'s translation, every
//! other request (native gRPC, the leaderboard page, `/metrics`) passes untouched — `tonic-web`
//! alone answers 400 to any HTTP/1.1 request that is not gRPC-Web.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::body::Body;
use tower::{Layer, Service};

/// The layer; see the module.
#[derive(Debug, Clone, Copy, Default)]
pub struct BrowserLayer;

impl<S> Layer<S> for BrowserLayer {
    type Service = Browser<S>;

    fn layer(&self, inner: S) -> Browser<S> {
        Browser { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Browser<S> {
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

fn is_grpc_web<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc-web"))
}

impl<S, B> Service<http::Request<B>> for Browser<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        if is_grpc_web(&req) {
            let mut web = tonic_web::GrpcWebLayer::new().layer(inner);
            Box::pin(web.call(req))
        } else {
            let mut inner = inner;
            Box::pin(inner.call(req.map(Body::new)))
        }
    }
}
