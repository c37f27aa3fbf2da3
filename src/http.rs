//! The public HTTP surface: composes each component's routes and the common layers, in a
//! visible order (outermost first), and serves them with the generic caps of issue #7 (header
//! size and read timeout, body size and read timeout).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future as _;
use std::hash::BuildHasher as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceBuilder, ServiceExt as _};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::metrics::Metrics;
use crate::ratelimit::{HttpLimitsConfig, RateKey};

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
            .map_request({
                let total = options.limits.body_total_timeout();
                move |request: Request<_>| request.map(|body| DeadlineBody::new(body, total))
            })
            .layer(tower_http::limit::RequestBodyLimitLayer::new(
                options.limits.max_body_bytes,
            ))
            .map_request(|request: Request<_>| request.map(Body::new)),
    );
    ServiceBuilder::new()
        // A client's own request id is kept only if it is a plain token: it is written into
        // every log line of the request, where spaces or `key=value` text would fake fields.
        .map_request(|mut request: Request<Body>| {
            if request
                .headers()
                .get(REQUEST_ID)
                .is_some_and(|id| !is_plain_request_id(id.as_bytes()))
            {
                request.headers_mut().remove(REQUEST_ID);
            }
            request
        })
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

/// A client-chosen request id the broker keeps: 1 to 64 of `A-Z a-z 0-9 - _ . :` (UUIDs,
/// hex ids, the usual tracing formats), nothing a log line would read as more than one value.
fn is_plain_request_id(id: &[u8]) -> bool {
    (1..=64).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
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
///
/// Connections are capped (`limits.max_connections` in all, `limits.max_connections_per_ip`
/// per client address, `exempt` peers — trusted proxies — aside), and data a client leaves
/// unacknowledged for `limits.send_timeout_secs` ends its connection (`TCP_USER_TIMEOUT`).
pub async fn serve<S, B>(
    listener: TcpListener,
    router: S,
    limits: &HttpLimitsConfig,
    exempt: &[IpAddr],
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
    let slots = ConnectionSlots::new(limits, exempt);
    let send_timeout = u32::try_from(limits.send_timeout().as_millis()).unwrap_or(u32::MAX);
    loop {
        // Reap finished connections so the set holds only live ones.
        while connections.try_join_next().is_some() {}
        let total = tokio::select! {
            total = slots.total() => total,
            () = shutdown.cancelled() => break,
        };
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
        let Some(slot) = slots.take(total, peer.ip()) else {
            // Closed at once: the client already holds its share of connections.
            tracing::debug!(peer = %peer.ip(), "connection refused: too many from this address");
            continue;
        };
        // Small JSON-RPC answers and SSE events must leave at once: Nagle plus delayed ACKs
        // otherwise hold them for up to 40 ms (measured in bench/benches/mcp_latency.rs).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        // A client that stops reading (or shrinks its window to zero) would otherwise hold the
        // connection, its task and its descriptor for as long as TCP keeps probing.
        if let Err(error) = nix::sys::socket::setsockopt(
            &stream,
            nix::sys::socket::sockopt::TcpUserTimeout,
            &send_timeout,
        ) {
            tracing::debug!(%error, "cannot set TCP_USER_TIMEOUT");
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
            // Held until the connection ends.
            let _slot = slot;
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

/// Open connections per client address.
type AddressCounts = Arc<Mutex<HashMap<RateKey, usize>>>;

/// The connection caps of [`serve`]: a semaphore for the total, a count per client address.
struct ConnectionSlots {
    total: Arc<Semaphore>,
    max_total: usize,
    per_address: AddressCounts,
    max_per_address: usize,
    exempt: Arc<[IpAddr]>,
    /// Whether the total cap is reached (logged when it starts and when it ends).
    saturated: AtomicBool,
}

/// One open connection's share; given back when dropped.
struct ConnectionSlot {
    _total: OwnedSemaphorePermit,
    address: Option<(RateKey, AddressCounts)>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some((key, per_address)) = &self.address
            && let Ok(mut counts) = per_address.lock()
            && let Some(count) = counts.get_mut(key)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(key);
            }
        }
    }
}

impl ConnectionSlots {
    fn new(limits: &HttpLimitsConfig, exempt: &[IpAddr]) -> Self {
        Self {
            total: Arc::new(Semaphore::new(limits.max_connections)),
            max_total: limits.max_connections,
            per_address: Arc::new(Mutex::new(HashMap::new())),
            max_per_address: limits.max_connections_per_ip,
            exempt: exempt.iter().map(|ip| ip.to_canonical()).collect(),
            saturated: AtomicBool::new(false),
        }
    }

    /// Waits for room under the total cap.
    async fn total(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = Arc::clone(&self.total).try_acquire_owned() {
            if self.saturated.swap(false, Ordering::Relaxed) {
                tracing::info!("connections below the limit again; accepting");
            }
            return Some(permit);
        }
        if !self.saturated.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                limit = self.max_total,
                "open connections at limits.max_connections; new ones wait until one closes"
            );
        }
        Arc::clone(&self.total).acquire_owned().await.ok()
    }

    /// The connection's slot, or `None` when its address already holds its share.
    fn take(&self, total: Option<OwnedSemaphorePermit>, peer: IpAddr) -> Option<ConnectionSlot> {
        let total = total?;
        let peer = peer.to_canonical();
        if self.exempt.contains(&peer) {
            return Some(ConnectionSlot {
                _total: total,
                address: None,
            });
        }
        let key = RateKey::ip(peer);
        let mut counts = self.per_address.lock().ok()?;
        let count = counts.entry(key).or_insert(0);
        if *count >= self.max_per_address {
            return None;
        }
        *count += 1;
        drop(counts);
        Some(ConnectionSlot {
            _total: total,
            address: Some((key, Arc::clone(&self.per_address))),
        })
    }
}

pin_project_lite::pin_project! {
    /// A request body that must be complete within a deadline from when its request arrived
    /// (`limits.body_total_timeout_secs`). tower-http's body timeout restarts with every chunk,
    /// so on its own a client sending a byte every few seconds holds its connection for days.
    struct DeadlineBody<B> {
        #[pin]
        inner: B,
        #[pin]
        deadline: tokio::time::Sleep,
    }
}

impl<B> DeadlineBody<B> {
    fn new(inner: B, total: Duration) -> Self {
        Self {
            inner,
            deadline: tokio::time::sleep(total),
        }
    }
}

/// The request body was not complete by its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not complete within limits.body_total_timeout_secs")]
struct BodyDeadlineElapsed;

impl<B> HttpBody for DeadlineBody<B>
where
    B: HttpBody,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let std::task::Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return std::task::Poll::Ready(frame.map(|result| result.map_err(Into::into)));
        }
        match this.deadline.poll(cx) {
            std::task::Poll::Ready(()) => {
                std::task::Poll::Ready(Some(Err(Box::new(BodyDeadlineElapsed))))
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
