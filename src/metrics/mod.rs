//! Prometheus metrics (issue #7): bounded-cardinality labels only, never user or client ids.
//!
//! Components hold a [`Metrics`] handle (cheap to clone) and call its typed methods. Every label
//! value is either a `&'static str` chosen by the caller from a fixed set (an OAuth error code,
//! an exit reason), a matched route template (finite: the router's own paths) or an HTTP
//! status code. Nothing a client controls can become a label value, so a scraper's memory and
//! the registry's are bounded.
//!
//! `/metrics` is served on `metrics.listen`, a separate address, so the public listener never
//! exposes it ([`router`], served by `app`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Deserialize;

pub use self::from_audit::AuditMetrics;
use crate::config::{ConfigErrors, Validate};

mod from_audit;

/// `[metrics]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `/metrics` is served; `None` (the default) disables it. Never the public listener:
    /// the numbers tell an attacker how busy the instance is and what fails.
    pub listen: Option<SocketAddr>,
}

impl Validate for MetricsConfig {
    fn validate(&self, _errors: &mut ConfigErrors) {}
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The matched route template (`/oauth/token`, `/mcp`), or `unmatched`.
    route: String,
    method: &'static str,
    status: u16,
}

/// Put on a response by the OAuth error conversion: the RFC error code, counted in
/// `oauth_outcomes_total` by [`TrackRequestsLayer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OAuthOutcome(pub &'static str);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OAuthLabels {
    endpoint: &'static str,
    /// `ok` or the RFC error code (`invalid_grant`, ...).
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLimitLabels {
    class: &'static str,
    key_kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    product: String,
    /// Checked to look like a version ([`crate::upstream::version::parse_version`]).
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VaultLabels {
    operation: &'static str,
    outcome: &'static str,
}

/// A session's place in its lifecycle, for the sessions gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Active,
    Hibernated,
}

impl SessionState {
    fn label(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Hibernated => "hibernated",
        }
    }
}

struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    oauth_outcomes: Family<OAuthLabels, Counter>,
    sessions: Family<StateLabels, Gauge>,
    children: Gauge,
    spawn_seconds: Histogram,
    child_exits: Family<ReasonLabels, Counter>,
    upstream_refreshes: Family<OutcomeLabels, Counter>,
    rate_limit_rejections: Family<RateLimitLabels, Counter>,
    rate_limit_tracked_keys: Gauge,
    vault_operations: Family<VaultLabels, Counter>,
    upstream_info: Family<UpstreamLabels, Gauge>,
    audit_write_errors: Counter,
    audit_dropped: Counter,
    audit_events: Counter,
}

/// The broker's metrics. Clone freely: clones share the same counters.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("forgejo_mcp_broker");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by matched route, method and status",
            requests.clone(),
        );
        let oauth_outcomes = Family::<OAuthLabels, Counter>::default();
        registry.register(
            "oauth_outcomes",
            "OAuth endpoint outcomes by endpoint and RFC error code (ok on success)",
            oauth_outcomes.clone(),
        );
        let sessions = Family::<StateLabels, Gauge>::default();
        registry.register("mcp_sessions", "MCP sessions by state", sessions.clone());
        // Both states are always exported, so a dashboard shows 0 rather than a gap.
        for state in [SessionState::Active, SessionState::Hibernated] {
            sessions
                .get_or_create(&StateLabels {
                    state: state.label(),
                })
                .set(0);
        }
        let children = Gauge::default();
        registry.register("children", "Running MCP server children", children.clone());
        // 10 ms .. ~20 s: a warm namespace spawn is tens of ms, a cold npx start seconds.
        let spawn_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 12));
        registry.register(
            "child_spawn_seconds",
            "Time from spawn request to a child ready to serve",
            spawn_seconds.clone(),
        );
        let child_exits = Family::<ReasonLabels, Counter>::default();
        registry.register("child_exits", "Child exits by reason", child_exits.clone());
        let upstream_refreshes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "upstream_refreshes",
            "Forgejo token refreshes by outcome (ok, failed, grant_dead)",
            upstream_refreshes.clone(),
        );
        let rate_limit_rejections = Family::<RateLimitLabels, Counter>::default();
        registry.register(
            "rate_limit_rejections",
            "Requests rejected by a rate limit, by endpoint class and key kind",
            rate_limit_rejections.clone(),
        );
        let rate_limit_tracked_keys = Gauge::default();
        registry.register(
            "rate_limit_tracked_keys",
            "Keys currently held by all rate limiters (bounded by rate_limits.max_keys)",
            rate_limit_tracked_keys.clone(),
        );
        let vault_operations = Family::<VaultLabels, Counter>::default();
        registry.register(
            "vault_operations",
            "Vault operations by kind and outcome",
            vault_operations.clone(),
        );
        let upstream_info = Family::<UpstreamLabels, Gauge>::default();
        registry.register(
            "upstream_info",
            "The forge the broker works against, as its /api/v1/version says (1 for the current one)",
            upstream_info.clone(),
        );
        let audit_write_errors = Counter::default();
        registry.register(
            "audit_write_errors",
            "Audit log write failures",
            audit_write_errors.clone(),
        );
        let audit_dropped = Counter::default();
        registry.register(
            "audit_dropped",
            "Audit events dropped because the writer's queue was full",
            audit_dropped.clone(),
        );
        let audit_events = Counter::default();
        registry.register("audit_events", "Audit events written", audit_events.clone());
        Self(Arc::new(Inner {
            registry,
            requests,
            oauth_outcomes,
            sessions,
            children,
            spawn_seconds,
            child_exits,
            upstream_refreshes,
            rate_limit_rejections,
            rate_limit_tracked_keys,
            vault_operations,
            upstream_info,
            audit_write_errors,
            audit_dropped,
            audit_events,
        }))
    }

    /// One HTTP request finished. `route` is the matched template, never the raw path.
    pub fn http_request(&self, route: Option<&str>, method: &axum::http::Method, status: u16) {
        let method = match method.as_str() {
            "GET" => "GET",
            "POST" => "POST",
            "DELETE" => "DELETE",
            "OPTIONS" => "OPTIONS",
            "HEAD" => "HEAD",
            "PUT" => "PUT",
            _ => "other",
        };
        self.0
            .requests
            .get_or_create(&RequestLabels {
                route: route.unwrap_or("unmatched").to_owned(),
                method,
                status,
            })
            .inc();
    }

    /// An OAuth endpoint answered: `outcome` is `"ok"` or the RFC error code.
    pub fn oauth_outcome(&self, endpoint: &'static str, outcome: &'static str) {
        self.0
            .oauth_outcomes
            .get_or_create(&OAuthLabels { endpoint, outcome })
            .inc();
    }

    /// A session entered `to` from `from` (`None` = did not exist / no longer exists).
    pub fn session_transition(&self, from: Option<SessionState>, to: Option<SessionState>) {
        if let Some(from) = from {
            self.0
                .sessions
                .get_or_create(&StateLabels {
                    state: from.label(),
                })
                .dec();
        }
        if let Some(to) = to {
            self.0
                .sessions
                .get_or_create(&StateLabels { state: to.label() })
                .inc();
        }
    }

    /// Sets the session gauges outright (for a registry that counts itself).
    pub fn set_sessions(&self, active: i64, hibernated: i64) {
        for (state, value) in [
            (SessionState::Active, active),
            (SessionState::Hibernated, hibernated),
        ] {
            self.0
                .sessions
                .get_or_create(&StateLabels {
                    state: state.label(),
                })
                .set(value);
        }
    }

    /// A child started (counted from the `child_spawned` audit event).
    pub fn child_started(&self) {
        self.0.children.inc();
    }

    /// Time from the spawn request to a child ready to serve; the MCP edge reports it.
    pub fn spawn_latency(&self, latency: Duration) {
        self.0.spawn_seconds.observe(latency.as_secs_f64());
    }

    /// A child exited; `reason` from a fixed set (`exited`, `crashed`, `killed`, `idle`, ...).
    pub fn child_exited(&self, reason: &'static str) {
        self.0.children.dec();
        self.0
            .child_exits
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A Forgejo token refresh finished: `ok`, `failed` or `grant_dead`.
    pub fn upstream_refresh(&self, outcome: &'static str) {
        self.0
            .upstream_refreshes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn rate_limit_rejected(&self, class: &'static str, key_kind: &'static str) {
        self.0
            .rate_limit_rejections
            .get_or_create(&RateLimitLabels { class, key_kind })
            .inc();
    }

    pub fn set_rate_limit_tracked_keys(&self, keys: usize) {
        self.0
            .rate_limit_tracked_keys
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
    }

    /// A vault operation (`seal`, `open`, `rotate`, ...) ended with `ok` or `error`.
    pub fn vault_operation(&self, operation: &'static str, outcome: &'static str) {
        self.0
            .vault_operations
            .get_or_create(&VaultLabels { operation, outcome })
            .inc();
    }

    /// The upstream forge's product and version: the one series of `upstream_info`.
    pub fn set_upstream_version(&self, product: &str, version: &str) {
        let info = &self.0.upstream_info;
        info.clear();
        info.get_or_create(&UpstreamLabels {
            product: product.to_owned(),
            version: version.to_owned(),
        })
        .set(1);
    }

    pub fn audit_write_error(&self) {
        self.0.audit_write_errors.inc();
    }

    pub fn audit_dropped(&self) {
        self.0.audit_dropped.inc();
    }

    pub fn audit_written(&self) {
        self.0.audit_events.inc();
    }

    /// The registry in Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.0.registry) {
            tracing::error!(%error, "cannot encode metrics");
        }
        text
    }
}

/// Counts requests by matched route, method and status, and OAuth outcomes by endpoint. Add
/// it with `Router::layer`, so it sees the route axum matched ([`MatchedPath`]).
///
/// A plain tower layer rather than `axum::middleware::from_fn`: it sits on every request, and
/// costs no box, no clone of the inner service and no `Next` per request.
#[derive(Clone)]
pub struct TrackRequestsLayer(Metrics);

impl TrackRequestsLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self(metrics)
    }
}

impl<S> tower::Layer<S> for TrackRequestsLayer {
    type Service = TrackRequests<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TrackRequests {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct TrackRequests<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B> tower::Service<Request> for TrackRequests<S>
where
    S: tower::Service<Request, Response = axum::http::Response<B>>,
{
    type Response = axum::http::Response<B>;
    type Error = S::Error;
    type Future = TrackedResponse<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let route = request.extensions().get::<MatchedPath>().cloned();
        let method = request.method().clone();
        TrackedResponse {
            inner: self.inner.call(request),
            seen: Some((self.metrics.clone(), route, method)),
        }
    }
}

pin_project_lite::pin_project! {
    /// [`TrackRequests`]' future: counts the response when it is ready.
    pub struct TrackedResponse<F> {
        #[pin]
        inner: F,
        seen: Option<(Metrics, Option<MatchedPath>, axum::http::Method)>,
    }
}

impl<F, B, E> std::future::Future for TrackedResponse<F>
where
    F: std::future::Future<Output = Result<axum::http::Response<B>, E>>,
{
    type Output = Result<axum::http::Response<B>, E>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let (Ok(response), Some((metrics, route, method))) = (&result, this.seen.take()) {
            count_response(
                &metrics,
                route.as_ref().map(MatchedPath::as_str),
                &method,
                response,
            );
        }
        std::task::Poll::Ready(result)
    }
}

fn count_response<B>(
    metrics: &Metrics,
    route: Option<&str>,
    method: &axum::http::Method,
    response: &axum::http::Response<B>,
) {
    let status = response.status();
    metrics.http_request(route, method, status.as_u16());
    if let Some(endpoint) = route.and_then(oauth_endpoint) {
        let outcome = match response.extensions().get::<OAuthOutcome>() {
            Some(OAuthOutcome(code)) => code,
            None if status == axum::http::StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
            None if status.is_client_error() || status.is_server_error() => "other_error",
            None => "ok",
        };
        metrics.oauth_outcome(endpoint, outcome);
    }
}

/// The OAuth endpoint a matched route is (aliases share their endpoint's name).
fn oauth_endpoint(route: &str) -> Option<&'static str> {
    match route {
        "/oauth/register" | "/register" => Some("register"),
        "/oauth/token" | "/token" => Some("token"),
        "/oauth/revoke" | "/revoke" => Some("revoke"),
        "/oauth/authorize" | "/authorize" => Some("authorize"),
        "/oauth/consent" => Some("consent"),
        "/oauth/callback" => Some("callback"),
        _ => None,
    }
}

/// The metrics listener's router: `GET /metrics` only.
pub fn router(metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics)
}

async fn scrape(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_appear_in_the_exposition() {
        let metrics = Metrics::new();
        metrics.http_request(Some("/healthz"), &axum::http::Method::GET, 200);
        metrics.oauth_outcome("token", "invalid_grant");
        metrics.child_started();
        metrics.spawn_latency(Duration::from_millis(30));
        metrics.child_exited("idle");
        metrics.session_transition(None, Some(SessionState::Active));
        metrics.session_transition(Some(SessionState::Active), Some(SessionState::Hibernated));
        let text = metrics.encode();
        assert!(text.contains(
            r#"forgejo_mcp_broker_http_requests_total{route="/healthz",method="GET",status="200"} 1"#
        ), "{text}");
        assert!(text.contains(
            r#"forgejo_mcp_broker_oauth_outcomes_total{endpoint="token",outcome="invalid_grant"} 1"#
        ));
        assert!(text.contains(r#"forgejo_mcp_broker_mcp_sessions{state="hibernated"} 1"#));
        assert!(text.contains(r#"forgejo_mcp_broker_mcp_sessions{state="active"} 0"#));
        assert!(text.contains("forgejo_mcp_broker_children 0"));
        assert!(text.contains("forgejo_mcp_broker_child_spawn_seconds_count 1"));
        assert!(text.trim_end().ends_with("# EOF"));
    }

    #[test]
    fn unknown_methods_collapse_into_one_label() {
        let metrics = Metrics::new();
        for method in ["PURGE", "BREW", "XYZZY"] {
            let method = axum::http::Method::from_bytes(method.as_bytes()).unwrap();
            metrics.http_request(None, &method, 404);
        }
        let text = metrics.encode();
        assert!(text.contains(
            r#"forgejo_mcp_broker_http_requests_total{route="unmatched",method="other",status="404"} 3"#
        ), "{text}");
    }
}
