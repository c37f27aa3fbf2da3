//! The HTTP handlers: Streamable HTTP on `/mcp` (T2511; checklist §10), legacy HTTP+SSE on
//! `/sse` + `/messages` (T2411; §11), and the fallback answer for modern probes (item 133).
//!
//! Handlers are thin (STYLE.md habit 5): check origin → verify the token → find the session →
//! hand messages to the session actor → turn what comes back into JSON or SSE. Every error is
//! an `EdgeError`, mapped to HTTP in one place.

mod cors;
mod errors;
mod legacy;
mod sse;
mod streamable;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::context::Context;
use super::jsonrpc::{self, Message};
use super::registry::Registry;
use super::store::SessionStore;
use super::{McpConfig, SUPPORTED_VERSIONS};
use crate::audit::SharedAudit;
use crate::auth::{AccessTokenVerifier, Principal, TokenRejection, UpstreamCredentials};
use crate::clock::SharedClock;
use crate::config::ServerConfig;
use crate::store::{Db, StoreError};
use crate::supervisor::{ChildLauncher, TokenDelivery};
use errors::*;
use legacy::*;
use sse::*;
use streamable::*;

pub const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
pub const MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// What the MCP edge needs from the rest of the broker (trait objects, so tests and the
/// sandbox issue can substitute them).
pub struct McpDeps {
    pub db: Db,
    pub clock: SharedClock,
    pub audit: SharedAudit,
    pub verifier: Arc<dyn AccessTokenVerifier>,
    pub upstream: Arc<dyn UpstreamCredentials>,
    pub launcher: Arc<dyn ChildLauncher>,
    /// Revoked grants and dead users announced by the OAuth half: their sessions end at once
    /// (their ids answer 404 from then on).
    pub access_ended: Option<tokio::sync::broadcast::Receiver<crate::auth::AccessEnded>>,
    /// Per-IP and per-user limits on `/mcp` and on new sessions (ARCHITECTURE.md §6).
    pub rate_limiter: Option<crate::ratelimit::SharedRateLimiter>,
}

#[derive(Debug, thiserror::Error)]
pub enum McpStartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid allowed origin `{0}`")]
    Origin(String),
}

/// The running edge: revocation hooks and shutdown.
pub struct McpHandle {
    registry: Arc<Registry>,
    cancel: CancellationToken,
}

impl McpHandle {
    /// Ends every session of a grant (call on revocation / refresh-token reuse).
    pub async fn end_grant(&self, grant_id: &str) -> usize {
        self.registry.end_grant(grant_id).await.unwrap_or(0)
    }

    /// Ends every session of a user (user revoked, or the Forgejo grant died).
    pub async fn end_user(&self, user_id: crate::auth::UserId) -> usize {
        self.registry.end_user(user_id).await.unwrap_or(0)
    }

    pub fn running_children(&self) -> usize {
        self.registry.ctx.running_children()
    }

    /// Stops every child (sessions stay in the database and resume after a restart) and
    /// waits for the session tasks, up to `deadline`. False if some did not finish.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        self.cancel.cancel();
        self.registry.ctx.tasks.close();
        tokio::time::timeout(deadline, self.registry.ctx.tasks.wait())
            .await
            .is_ok()
    }
}

/// The handlers' state, behind one `Arc`: axum clones the state for every request.
struct Edge {
    registry: Arc<Registry>,
    verifier: Arc<dyn AccessTokenVerifier>,
    resource: Arc<str>,
    issuer: Arc<str>,
    allowed_origins: Arc<[String]>,
    config: Arc<McpConfig>,
    rate_limiter: Option<crate::ratelimit::SharedRateLimiter>,
}

/// Builds `/mcp`, `/sse` and `/messages` with their CORS layer, and starts housekeeping.
pub fn router(
    server: &ServerConfig,
    config: &McpConfig,
    forgejo_url: &str,
    deps: McpDeps,
) -> Result<(Router, McpHandle), McpStartError> {
    let store = SessionStore::open(deps.db)?;
    // Legacy sessions cannot outlive their SSE connection, which died with the last process.
    store.delete_legacy()?;
    if config.child.delivery == TokenDelivery::Env {
        tracing::warn!(
            "mcp.child.delivery = \"env\": every child holds the user's real Forgejo token in its environment; use only for debugging"
        );
    }
    let cancel = CancellationToken::new();
    let ctx = Arc::new(Context::new(
        config.clone(),
        forgejo_url.to_owned(),
        deps.launcher,
        deps.upstream,
        store,
        deps.clock,
        deps.audit,
        cancel.clone(),
    ));
    let registry = Registry::new(ctx.clone());
    let issuer = server.issuer();
    let mut allowed_origins = vec![issuer.clone()];
    allowed_origins.extend(
        server
            .allowed_origins
            .iter()
            .map(|o| o.trim_end_matches('/').to_owned()),
    );
    let edge = Edge {
        registry: registry.clone(),
        verifier: deps.verifier,
        resource: Arc::from(server.mcp_resource()),
        issuer: Arc::from(issuer.as_str()),
        allowed_origins: Arc::from(allowed_origins.clone()),
        config: Arc::new(config.clone()),
        rate_limiter: deps.rate_limiter,
    };
    spawn_housekeeping(registry.clone(), cancel.clone());
    if let Some(receiver) = deps.access_ended {
        spawn_access_ended_listener(registry.clone(), receiver, cancel.clone());
    }
    let cors = cors_layer(&allowed_origins)?;
    let rate_limit = edge
        .rate_limiter
        .as_ref()
        .map(|limiter| crate::ratelimit::layer(limiter, crate::ratelimit::EndpointClass::Mcp));
    let router = Router::new()
        .route("/mcp", post(post_mcp).get(get_mcp).delete(delete_mcp))
        .route("/sse", get(get_legacy_sse))
        .route("/messages", post(post_legacy_message))
        .with_state(Arc::new(edge))
        // One stack per route (axum clones it per request). The rate limit is inside CORS, so
        // a 429 still carries the CORS headers a browser client needs.
        .layer(
            tower::ServiceBuilder::new()
                .layer(cors::BrowserCorsLayer::new(cors))
                .option_layer(rate_limit),
        );
    Ok((router, McpHandle { registry, cancel }))
}

fn spawn_housekeeping(registry: Arc<Registry>, cancel: CancellationToken) {
    let interval = registry.ctx.config.housekeeping_interval();
    let tasks = registry.ctx.tasks.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {
                    if let Err(error) = registry.reap_expired().await {
                        tracing::error!(task = "mcp-housekeeping", %error, "cannot reap expired sessions");
                    }
                }
            }
        }
    });
}

/// Ends the sessions of revoked grants and dead users as soon as the OAuth half says so.
fn spawn_access_ended_listener(
    registry: Arc<Registry>,
    mut receiver: tokio::sync::broadcast::Receiver<crate::auth::AccessEnded>,
    cancel: CancellationToken,
) {
    use crate::auth::AccessEnded;
    use tokio::sync::broadcast::error::RecvError;
    let tasks = registry.ctx.tasks.clone();
    tasks.spawn(async move {
        loop {
            let event = tokio::select! {
                () = cancel.cancelled() => return,
                event = receiver.recv() => event,
            };
            let result = match event {
                Ok(AccessEnded::Grant { grant_id, .. }) => registry.end_grant(&grant_id).await,
                Ok(AccessEnded::User { user_id }) => registry.end_user(user_id).await,
                Err(RecvError::Lagged(missed)) => {
                    // The verifier refuses those users' tokens anyway; their sessions end
                    // on expiry instead of at once.
                    tracing::warn!(
                        task = "mcp-access-ended",
                        missed,
                        "access-ended events missed"
                    );
                    Ok(0)
                }
                Err(RecvError::Closed) => return,
            };
            if let Err(error) = result {
                tracing::error!(task = "mcp-access-ended", %error, "cannot end revoked sessions");
            }
        }
    });
}

/// Item 122: CORS for browser clients, consistent with the Origin allowlist (item 96).
fn cors_layer(origins: &[String]) -> Result<tower_http::cors::CorsLayer, McpStartError> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let values = origins
        .iter()
        .map(|origin| {
            HeaderValue::from_str(origin).map_err(|_| McpStartError::Origin(origin.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(values))
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            MCP_SESSION_ID,
            MCP_PROTOCOL_VERSION,
            LAST_EVENT_ID,
        ])
        .expose_headers([
            MCP_SESSION_ID,
            MCP_PROTOCOL_VERSION,
            header::WWW_AUTHENTICATE,
        ])
        .max_age(Duration::from_secs(3600)))
}

// ---- common checks ------------------------------------------------------------------------

/// Origin (item 96), bearer token (items 14–18), `MCP-Protocol-Version` (item 120).
async fn admit(edge: &Edge, headers: &HeaderMap) -> Result<Principal, Response> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|origin| edge.allowed_origins.iter().any(|allowed| allowed == origin));
        if !allowed {
            return Err(EdgeError::OriginNotAllowed.into_response());
        }
    }
    // The bearer token and the 401 are the OAuth half's (one helper for the whole broker):
    // `Authorization: Bearer` only, never the query (item 17); the challenge points at the
    // protected-resource metadata and says `invalid_token` only when a token was sent (item 16).
    // A token that could not be checked is a 503, so the client keeps it.
    let token = match crate::oauth::verifier::bearer_token(headers) {
        Ok(Some(token)) => token,
        Ok(None) => return Err(token_refused(edge, TokenRejection::Missing)),
        Err(rejection) => return Err(token_refused(edge, rejection)),
    };
    let principal = match edge.verifier.verify(token, &edge.resource).await {
        Ok(principal) => principal,
        Err(TokenRejection::Unavailable) => {
            tracing::warn!("mcp bearer token not checked: the token store failed");
            return Err(token_refused(edge, TokenRejection::Unavailable));
        }
        Err(rejection) => {
            tracing::info!(reason = %rejection, "mcp bearer token rejected");
            return Err(token_refused(edge, rejection));
        }
    };
    if let Some(refusal) = rate_refusal(edge, crate::ratelimit::EndpointClass::Mcp, &principal) {
        return Err(refusal);
    }
    if let Some(version) = headers.get(MCP_PROTOCOL_VERSION) {
        let supported = version
            .to_str()
            .is_ok_and(|version| SUPPORTED_VERSIONS.contains(&version));
        if !supported {
            return Err(EdgeError::UnsupportedVersion.into_response());
        }
    }
    Ok(principal)
}

/// Per-user limit of `class` (the per-IP one is the router's layer): the 429 if exceeded.
fn rate_refusal(
    edge: &Edge,
    class: crate::ratelimit::EndpointClass,
    principal: &Principal,
) -> Option<Response> {
    let limiter = edge.rate_limiter.as_ref()?;
    limiter
        .check(class, &crate::ratelimit::RateKey::user(principal.user_id))
        .err()
        .map(IntoResponse::into_response)
}

fn session_header(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(MCP_SESSION_ID)
        .and_then(|value| value.to_str().ok())
}

enum Answer {
    Json,
    Sse,
}

/// Item 98: `Accept` should list both; tolerate `*/*` and a missing header.
fn answer_kind(headers: &HeaderMap) -> Result<Answer, EdgeError> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(Answer::Json);
    };
    let accept = accept.to_ascii_lowercase();
    if accept.contains("text/event-stream") {
        Ok(Answer::Sse)
    } else if accept.contains("application/json")
        || accept.contains("*/*")
        || accept.contains("application/*")
    {
        Ok(Answer::Json)
    } else {
        Err(EdgeError::NotAcceptable(
            "accept application/json or text/event-stream",
        ))
    }
}

/// Whether reading a body failed on a size limit (this read's own, or the router's), as
/// opposed to a timeout or a broken connection.
fn is_length_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        current = error.source();
    }
    false
}

/// A POST body's messages, and whether they came as a JSON array (a batch, even of one: it is
/// answered with an array, and only where batches are allowed).
async fn read_body(body: Body, limit: usize) -> Result<(Vec<Message>, bool), EdgeError> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|error| {
        if is_length_limit(&error) {
            EdgeError::BodyTooLarge(limit)
        } else {
            // Too slow (the body timeouts) or cut off: not a size problem.
            EdgeError::BodyUnreadable
        }
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|_| EdgeError::Parse)?;
    if text.trim_start().starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|_| EdgeError::Parse)?;
        if items.is_empty() {
            return Err(EdgeError::InvalidMessage("empty batch"));
        }
        let messages = items
            .iter()
            .map(|item| Message::parse(item.get()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| EdgeError::InvalidMessage("not a JSON-RPC 2.0 message"))?;
        Ok((messages, true))
    } else {
        let message = Message::parse(text).map_err(|error| match error {
            jsonrpc::EnvelopeError::NotJson => EdgeError::Parse,
            _ => EdgeError::InvalidMessage("not a JSON-RPC 2.0 message"),
        })?;
        Ok((vec![message], false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing_body(error: Box<dyn std::error::Error + Send + Sync>) -> Body {
        let chunks: Vec<Result<bytes::Bytes, Box<dyn std::error::Error + Send + Sync>>> =
            vec![Ok(bytes::Bytes::from_static(b"{\"jsonrpc\"")), Err(error)];
        Body::from_stream(futures_util::stream::iter(chunks))
    }

    #[tokio::test]
    async fn a_body_that_breaks_off_is_unreadable_not_too_large() {
        let timeout: Box<dyn std::error::Error + Send + Sync> =
            Box::new(std::io::Error::new(std::io::ErrorKind::TimedOut, "slow"));
        assert!(matches!(
            read_body(failing_body(timeout), 1024).await,
            Err(EdgeError::BodyUnreadable)
        ));
        let big = Body::from(vec![b' '; 2048]);
        assert!(matches!(
            read_body(big, 1024).await,
            Err(EdgeError::BodyTooLarge(1024))
        ));
    }
}
