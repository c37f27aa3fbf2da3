//! The public HTTP surface: composes each component's routes and the common layers, in a
//! visible order (outermost first), and serves them with the generic caps of issue #7 (header
//! size and read timeout, body size and read timeout).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, StatusCode};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
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

/// Builds the public router from the components' routers.
pub fn router(components: impl IntoIterator<Item = Router>, options: &HttpOptions) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(|| async { (StatusCode::OK, "ready\n") }));
    for component in components {
        router = router.merge(component);
    }
    router
        // Innermost first: body limits, then metrics (sees the matched route and final status),
        // then tracing, then request ids (outermost).
        // The length limit sits inside the timeout so its error reaches the extractors
        // unwrapped and becomes 413 (a wrapped one would be a generic 400).
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            options.limits.max_body_bytes,
        ))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            options.limits.body_read_timeout(),
        ))
        .layer(axum::middleware::from_fn_with_state(
            options.metrics.clone(),
            crate::metrics::track_requests,
        ))
        .layer(
            // Spans carry method, path and request id only: never headers, queries or bodies
            // (tokens, codes and verifiers travel in them).
            TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
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
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets open requests finish
/// (up to `drain`).
///
/// hyper's connection builder rather than `axum::serve`: only it has a header read timeout, so a
/// client that trickles its request head (slowloris) is dropped instead of holding a connection
/// and a task forever. Each request gets the peer address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &HttpLimitsConfig,
    shutdown: CancellationToken,
    drain: Duration,
) {
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
            hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
                router.clone().oneshot(request.map(axum::body::Body::new))
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
