//! The public HTTP surface: composes each component's routes and the common layers, in a
//! visible order (outermost first), and serves them with the generic caps of issue #7 (header
//! size and read timeout, body size and read timeout).

use std::convert::Infallible;
use std::hash::BuildHasher as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceBuilder, ServiceExt as _};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::metrics::Metrics;
use crate::ratelimit::HttpLimitsConfig;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the common layers need.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub limits: HttpLimitsConfig,
    pub metrics: Metrics,
}

/// Builds the public service from the components' routers.
///
/// Only what needs the matched route (metrics) and what must answer inside it (body caps) is
/// a `Router::layer`, combined into one layer so each route carries one stack, not one boxed
/// service per layer. Request ids and tracing wrap the router once, outside it: axum clones a
/// route's whole stack on every request, so nothing goes there that need not.
pub fn router(
    components: impl IntoIterator<Item = Router>,
    options: &HttpOptions,
) -> impl Service<
    Request<Body>,
    Response = Response<impl HttpBody<Data = Bytes, Error = axum::Error> + Send + 'static>,
    Error = Infallible,
    Future: Send,
> + Clone
+ Send
+ Sync
+ 'static {
    let mut router = Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(|| async { (StatusCode::OK, "ready\n") }));
    for component in components {
        router = router.merge(component);
    }
    // Outermost first: metrics (sees the matched route and the final status, a 413 included),
    // the body read timeout, then the length limit, which sits inside the timeout so its error
    // reaches the extractors unwrapped and becomes 413 (a wrapped one would be a generic 400).
    let router = router.layer(
        ServiceBuilder::new()
            .layer(crate::metrics::TrackRequestsLayer::new(
                options.metrics.clone(),
            ))
            .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
                options.limits.body_read_timeout(),
            ))
            .layer(tower_http::limit::RequestBodyLimitLayer::new(
                options.limits.max_body_bytes,
            ))
            .map_request(|request: Request<_>| request.map(Body::new)),
    );
    ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, RequestIds::new()))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            // Spans carry method, path and request id only: never headers, queries or bodies
            // (tokens, codes and verifiers travel in them).
            TraceLayer::new_for_http().make_span_with(|request: &Request<Body>| {
                let request_id = request
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!(
                    "http",
                    method = %request.method(),
                    path = %request.uri().path(),
                    request_id = %request_id,
                )
            }),
        )
        .service(router)
}

/// Request ids: unique within the process and unguessable (a counter run through SipHash
/// under a random key), so they neither repeat nor tell a client how many requests others
/// made; no system call per request, unlike a random UUID.
#[derive(Clone)]
struct RequestIds(Arc<(std::hash::RandomState, AtomicU64)>);

impl RequestIds {
    fn new() -> Self {
        Self(Arc::new((std::hash::RandomState::new(), AtomicU64::new(0))))
    }
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let (keys, counter) = &*self.0;
        let n = counter.fetch_add(1, Ordering::Relaxed);
        // Two keyed hashes of the counter: 128 bits, like the UUID it replaces, as 32 hex
        // digits written straight into the header's buffer.
        let bits = (u128::from(keys.hash_one((n, 0u8))) << 64
            | u128::from(keys.hash_one((n, 1u8))))
        .to_be_bytes();
        let mut id = [0u8; 32];
        hex::encode_to_slice(bits, &mut id).ok()?;
        HeaderValue::from_bytes(&id).ok().map(RequestId::new)
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets open requests finish
/// (up to `drain`).
///
/// hyper's connection builder rather than `axum::serve`: only it has a header read timeout, so a
/// client that trickles its request head (slowloris) is dropped instead of holding a connection
/// and a task forever. Each request gets the peer address as `ConnectInfo<SocketAddr>`.
pub async fn serve<S, B>(
    listener: TcpListener,
    router: S,
    limits: &HttpLimitsConfig,
    shutdown: CancellationToken,
    drain: Duration,
) where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout())
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_header_size(limits.max_header_bytes)
        .max_headers(100);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connections so the set holds only live ones.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning on a full fd table.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // Small JSON-RPC answers and SSE events must leave at once: Nagle plus delayed ACKs
        // otherwise hold them for up to 40 ms (measured in bench/benches/mcp_latency.rs).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
                router.clone().oneshot(request.map(Body::new))
            });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        connections.spawn(async move {
            // Timeouts and resets are the client's doing; they are not the broker's errors.
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "open connections did not finish within the shutdown deadline; closing them"
        );
    }
    // Aborts whatever is left and waits until every connection task has ended.
    connections.shutdown().await;
}
