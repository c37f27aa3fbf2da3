//! CORS for the browser clients that ask for it (item 122), and no work for the clients that
//! do not.
//!
//! tower-http's `Cors` builds its headers (`Vary` joined afresh, every list extended into the
//! response) on every request, and axum clones a route's whole stack per request, lists
//! included: ≈10,000 instructions per `tools/call`, 6% of the broker's (`bench/instructions.sh`).
//! MCP clients other than browsers send no `Origin`, and CORS headers mean nothing to them; a
//! request without `Origin` that is not a preflight goes straight to the route. `/mcp` answers
//! are never cached by a shared cache (they answer requests with `Authorization`, RFC 9111
//! §3.5), so leaving `Vary: Origin` off those answers misleads no cache.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{Method, Request, Response, header};
use futures_util::future::Either;
use tower::{Layer, Service};
use tower_http::cors::CorsLayer;

/// [`CorsLayer`] applied only to requests that carry `Origin`, and to preflights.
#[derive(Clone)]
pub(super) struct BrowserCorsLayer(Arc<CorsLayer>);

impl BrowserCorsLayer {
    pub(super) fn new(cors: CorsLayer) -> Self {
        Self(Arc::new(cors))
    }
}

impl<S> Layer<S> for BrowserCorsLayer {
    type Service = BrowserCors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BrowserCors {
            inner,
            cors: Arc::clone(&self.0),
        }
    }
}

#[derive(Clone)]
pub(super) struct BrowserCors<S> {
    inner: S,
    cors: Arc<CorsLayer>,
}

/// A request `Cors` must see: from a browser page (`Origin`), or a preflight.
fn wants_cors<B>(request: &Request<B>) -> bool {
    request.headers().contains_key(header::ORIGIN) || request.method() == Method::OPTIONS
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for BrowserCors<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Either<S::Future, tower_http::cors::ResponseFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if !wants_cors(&request) {
            return Either::Left(self.inner.call(request));
        }
        // The service polled ready is the one that serves: it moves into `Cors`, a clone
        // stays for the next request.
        let fresh = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, fresh);
        Either::Right(self.cors.layer(ready).call(request))
    }
}
