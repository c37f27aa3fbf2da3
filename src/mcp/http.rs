//! The HTTP handlers: Streamable HTTP on `/mcp` (T2511; checklist §10), legacy HTTP+SSE on
//! `/sse` + `/messages` (T2411; §11), and the fallback answer for modern probes (item 133).
//!
//! Handlers are thin (STYLE.md habit 5): check origin → verify the token → find the session →
//! hand messages to the session actor → turn what comes back into JSON or SSE. Every error is
//! an [`EdgeError`], mapped to HTTP in one place.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt as _;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::context::Context;
use super::jsonrpc::{self, Message, codes};
use super::registry::{Registry, RegistryError};
use super::session::{Command, InitializeOutcome, SessionError, SessionShared};
use super::store::SessionStore;
use super::streams::{Frame, StreamKind};
use super::{McpConfig, SUPPORTED_VERSIONS};
use crate::audit::SharedAudit;
use crate::auth::{AccessTokenVerifier, Principal, UpstreamCredentials};
use crate::clock::SharedClock;
use crate::config::ServerConfig;
use crate::store::{Db, StoreError};
use crate::supervisor::{ChildLauncher, TokenDelivery};

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

#[derive(Clone)]
struct Edge {
    registry: Arc<Registry>,
    verifier: Arc<dyn AccessTokenVerifier>,
    resource: Arc<str>,
    resource_metadata: Arc<str>,
    allowed_origins: Arc<[String]>,
    config: Arc<McpConfig>,
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
        resource_metadata: Arc::from(format!("{issuer}/.well-known/oauth-protected-resource/mcp")),
        allowed_origins: Arc::from(allowed_origins.clone()),
        config: Arc::new(config.clone()),
    };
    spawn_housekeeping(registry.clone(), cancel.clone());
    let cors = cors_layer(&allowed_origins)?;
    let router = Router::new()
        .route("/mcp", post(post_mcp).get(get_mcp).delete(delete_mcp))
        .route("/sse", get(get_legacy_sse))
        .route("/messages", post(post_legacy_message))
        .with_state(edge)
        .layer(cors);
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

// ---- errors -------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
enum EdgeError {
    #[error("origin not allowed")]
    OriginNotAllowed,
    #[error("unauthorized")]
    Unauthorized { token_sent: bool },
    #[error("unsupported MCP-Protocol-Version")]
    UnsupportedVersion,
    #[error("no session")]
    NoSession,
    #[error("session not found")]
    SessionNotFound,
    #[error("body too large")]
    BodyTooLarge(usize),
    #[error("not JSON")]
    Parse,
    #[error("invalid message: {0}")]
    InvalidMessage(&'static str),
    #[error("not acceptable")]
    NotAcceptable(&'static str),
    #[error("too many sessions")]
    TooManySessions(usize),
    #[error("internal error")]
    Internal,
}

impl From<RegistryError> for EdgeError {
    fn from(error: RegistryError) -> Self {
        match error {
            RegistryError::NotFound => Self::SessionNotFound,
            RegistryError::TooManySessions(limit) => Self::TooManySessions(limit),
            RegistryError::Random | RegistryError::Store(_) => {
                tracing::error!(%error, "mcp registry failure");
                Self::Internal
            }
        }
    }
}

impl IntoResponse for EdgeError {
    fn into_response(self) -> Response {
        // Bodies are JSON-RPC errors with `id: null` (items 96, 100, 118), all with codes that
        // dual-era clients do not read as "modern" (item 133).
        let (status, code, message) = match &self {
            Self::OriginNotAllowed => (
                StatusCode::FORBIDDEN,
                codes::BAD_REQUEST,
                "Forbidden: Origin not allowed".to_owned(),
            ),
            Self::Unauthorized { .. } => (
                StatusCode::UNAUTHORIZED,
                codes::BAD_REQUEST,
                "Unauthorized".to_owned(),
            ),
            Self::UnsupportedVersion => (
                StatusCode::BAD_REQUEST,
                codes::BAD_REQUEST,
                format!(
                    "Bad Request: unsupported MCP-Protocol-Version (supported: {})",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ),
            Self::NoSession => (
                StatusCode::BAD_REQUEST,
                codes::BAD_REQUEST,
                "Bad Request: no session; send initialize".to_owned(),
            ),
            Self::SessionNotFound => (
                StatusCode::NOT_FOUND,
                codes::BAD_REQUEST,
                "Session not found; send initialize without a session id".to_owned(),
            ),
            Self::BodyTooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::LIMIT_REACHED,
                format!("Request body larger than the {limit}-byte limit"),
            ),
            Self::Parse => (
                StatusCode::BAD_REQUEST,
                codes::PARSE_ERROR,
                "Parse error: body is not JSON".to_owned(),
            ),
            Self::InvalidMessage(why) => (
                StatusCode::BAD_REQUEST,
                codes::INVALID_REQUEST,
                format!("Invalid Request: {why}"),
            ),
            Self::NotAcceptable(why) => (
                StatusCode::NOT_ACCEPTABLE,
                codes::BAD_REQUEST,
                format!("Not Acceptable: {why}"),
            ),
            Self::TooManySessions(limit) => (
                StatusCode::TOO_MANY_REQUESTS,
                codes::LIMIT_REACHED,
                format!(
                    "Too many sessions: this user already has {limit} (the limit); end one with DELETE or wait for it to expire"
                ),
            ),
            Self::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                codes::INTERNAL_ERROR,
                "Internal error".to_owned(),
            ),
        };
        let response = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            jsonrpc::error_line(None, code, &message),
        )
            .into_response();
        if status.is_client_error() {
            // Item 170: say why for every 4xx, without the request's secrets.
            tracing::info!(status = status.as_u16(), reason = %self, "mcp request refused");
        }
        response
    }
}

/// 401 with the RFC 9728 pointer (item 16); `error="invalid_token"` only when a token was sent
/// (RFC 6750 §3).
fn unauthorized(edge: &Edge, token_sent: bool) -> Response {
    let mut challenge = format!("Bearer resource_metadata=\"{}\"", edge.resource_metadata);
    if token_sent {
        challenge.push_str(", error=\"invalid_token\"");
    }
    let mut response = EdgeError::Unauthorized { token_sent }.into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
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
    let token = match headers.get(header::AUTHORIZATION) {
        None => return Err(unauthorized(edge, false)),
        Some(value) => value.to_str().ok().and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        }),
    };
    let Some(token) = token.filter(|token| !token.is_empty()) else {
        return Err(unauthorized(edge, true));
    };
    let principal = match edge.verifier.verify(token, &edge.resource).await {
        Ok(principal) => principal,
        Err(rejection) => {
            tracing::info!(reason = %rejection, "mcp bearer token rejected");
            return Err(unauthorized(edge, true));
        }
    };
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

async fn read_body(body: Body, limit: usize) -> Result<Vec<Message>, (EdgeError, bool)> {
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| (EdgeError::BodyTooLarge(limit), false))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| (EdgeError::Parse, false))?;
    if text.trim_start().starts_with('[') {
        let items: Vec<&RawValue> =
            serde_json::from_str(text).map_err(|_| (EdgeError::Parse, true))?;
        if items.is_empty() {
            return Err((EdgeError::InvalidMessage("empty batch"), true));
        }
        let messages = items
            .iter()
            .map(|item| Message::parse(item.get()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                (
                    EdgeError::InvalidMessage("not a JSON-RPC 2.0 message"),
                    true,
                )
            })?;
        Ok(messages)
    } else {
        let message = Message::parse(text).map_err(|error| match error {
            jsonrpc::EnvelopeError::NotJson => (EdgeError::Parse, false),
            _ => (
                EdgeError::InvalidMessage("not a JSON-RPC 2.0 message"),
                false,
            ),
        })?;
        Ok(vec![message])
    }
}

// ---- POST /mcp ----------------------------------------------------------------------------

async fn post_mcp(State(edge): State<Edge>, headers: HeaderMap, body: Body) -> Response {
    let principal = match admit(&edge, &headers).await {
        Ok(principal) => principal,
        Err(response) => return response,
    };
    match post_inner(&edge, &principal, &headers, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn post_inner(
    edge: &Edge,
    principal: &Principal,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, EdgeError> {
    let answer = answer_kind(headers)?;
    let (messages, batch) = match read_body(body, edge.config.max_body_bytes).await {
        Ok(messages) => {
            let batch = messages.len() > 1;
            (messages, batch)
        }
        Err((error, _)) => return Err(error),
    };
    let is_initialize = messages.iter().any(|m| m.method() == Some("initialize"));
    let Some(session_id) = session_header(headers) else {
        return match messages.as_slice() {
            [Message::Request { method, .. }] if method == "initialize" => {
                initialize_new(edge, principal, messages, answer).await
            }
            // Item 166: Claude has sent `initialized` without a session id; accept and drop.
            [Message::Notification { method, .. }] if method == "notifications/initialized" => {
                Ok(StatusCode::ACCEPTED.into_response())
            }
            // Item 133: a modern probe (`server/discover`, …) must see a non-modern 400 so
            // dual-era clients fall back to `initialize`.
            _ => Err(EdgeError::NoSession),
        };
    };
    let session = edge.registry.lookup(session_id, principal)?;
    if session.legacy {
        return Err(EdgeError::SessionNotFound);
    }
    let version = session.protocol_version().unwrap_or_default();
    // Item 99: batches only for sessions negotiated at 2025-03-26; `initialize` never in one.
    if batch && (version != "2025-03-26" || is_initialize) {
        return Err(EdgeError::InvalidMessage(if is_initialize {
            "initialize must not be in a batch"
        } else {
            "batches are only accepted at protocol version 2025-03-26"
        }));
    }
    if is_initialize {
        // Item 169: a repeated `initialize` on a live session (a client reconnecting through
        // another node) is answered from the session, not refused.
        return repeat_initialize(&session, messages, session_id);
    }
    let requests = messages
        .iter()
        .filter(|m| matches!(m, Message::Request { .. }))
        .count();
    if requests == 0 {
        forward(edge, &session, messages, None).await?;
        return Ok(with_session(
            StatusCode::ACCEPTED.into_response(),
            session_id,
        ));
    }
    let kind = match answer {
        Answer::Json => StreamKind::Json,
        Answer::Sse => StreamKind::PostSse,
    };
    let (stream, receiver, priming) = {
        let mut streams = session.streams.lock().map_err(|_| EdgeError::Internal)?;
        let (stream, receiver) = streams.open(kind, requests);
        let priming = (kind == StreamKind::PostSse && primes(&version))
            .then(|| streams.priming_event_id(stream))
            .flatten();
        (stream, receiver, priming)
    };
    forward(edge, &session, messages, Some(stream)).await?;
    let response = match answer {
        Answer::Json => json_response(receiver, batch).await,
        Answer::Sse => sse_response(
            Vec::new(),
            Some(receiver),
            priming,
            false,
            &edge.config,
            None,
        ),
    };
    Ok(with_session(response, session_id))
}

/// Item 103: the priming event is a 2025-11-25 SHOULD; older clients get none.
fn primes(version: &str) -> bool {
    version >= "2025-11-25"
}

async fn forward(
    edge: &Edge,
    session: &Arc<SessionShared>,
    messages: Vec<Message>,
    stream: Option<u64>,
) -> Result<(), EdgeError> {
    let (reply, result) = oneshot::channel();
    session
        .commands
        .send(Command::Forward {
            messages,
            stream,
            reply,
        })
        .await
        .map_err(|_| EdgeError::SessionNotFound)?;
    match result.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(SessionError::Gone)) | Err(_) => {
            // The user's Forgejo grant died (or the session ended meanwhile): 404 from now on.
            edge.registry.end(session, "upstream grant dead").await;
            Err(EdgeError::SessionNotFound)
        }
    }
}

async fn initialize_new(
    edge: &Edge,
    principal: &Principal,
    messages: Vec<Message>,
    answer: Answer,
) -> Result<Response, EdgeError> {
    let Some(Message::Request { id, params, .. }) = messages.into_iter().next() else {
        return Err(EdgeError::InvalidMessage("initialize must be a request"));
    };
    let (session_id, session) = edge.registry.create(principal, false)?;
    let (reply, outcome) = oneshot::channel();
    session
        .commands
        .send(Command::Initialize {
            id: id.clone(),
            params,
            reply,
        })
        .await
        .map_err(|_| EdgeError::Internal)?;
    let outcome = outcome.await.map_err(|_| EdgeError::Internal)?;
    let line = match outcome {
        InitializeOutcome::Answered {
            line,
            succeeded: true,
        } => {
            tracing::info!(session = %session.label, user_id = principal.user_id, client_id = %principal.client_id, "mcp session created");
            let response = single_message_response(line, answer);
            return Ok(with_session(response, &session_id.0));
        }
        InitializeOutcome::Answered {
            line,
            succeeded: false,
        } => line,
        InitializeOutcome::Failed(error) => {
            tracing::warn!(session = %session.label, %error, "mcp session could not start its child");
            jsonrpc::error_line(Some(&id), codes::CHILD_UNAVAILABLE, &error.client_message())
        }
    };
    // No session survives a failed initialize; the client retries from scratch.
    edge.registry.end(&session, "initialize failed").await;
    Ok(single_message_response(line, answer))
}

fn repeat_initialize(
    session: &SessionShared,
    messages: Vec<Message>,
    session_id: &str,
) -> Result<Response, EdgeError> {
    let Some(Message::Request { id, .. }) = messages.into_iter().next() else {
        return Err(EdgeError::InvalidMessage("initialize must be a request"));
    };
    let negotiated = session
        .negotiated
        .lock()
        .map_err(|_| EdgeError::Internal)?
        .clone();
    let Some((_, result)) = negotiated else {
        return Err(EdgeError::InvalidMessage(
            "the session is still initializing",
        ));
    };
    let result = RawValue::from_string(result).map_err(|_| EdgeError::Internal)?;
    let line = Message::Response {
        id,
        outcome: jsonrpc::Outcome::Result(result),
    }
    .to_line();
    Ok(with_session(
        single_message_response(line, Answer::Json),
        session_id,
    ))
}

fn single_message_response(line: String, answer: Answer) -> Response {
    match answer {
        Answer::Json => ([(header::CONTENT_TYPE, "application/json")], line).into_response(),
        Answer::Sse => {
            let event = Event::default().data(line);
            let stream = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(event)]);
            sse_headers(Sse::new(stream).into_response())
        }
    }
}

async fn json_response(mut receiver: mpsc::Receiver<Frame>, batch: bool) -> Response {
    let mut lines = Vec::new();
    while let Some(Frame::Message { json, .. }) = receiver.recv().await {
        lines.push(json);
    }
    let body = if batch {
        format!(
            "[{}]",
            lines
                .iter()
                .map(|l| l.as_ref())
                .collect::<Vec<_>>()
                .join(",")
        )
    } else {
        lines.first().map(|l| l.to_string()).unwrap_or_default()
    };
    if body.is_empty() {
        return StatusCode::ACCEPTED.into_response();
    }
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn with_session(mut response: Response, session_id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(session_id) {
        response.headers_mut().insert(MCP_SESSION_ID, value);
    }
    response
}

// ---- SSE ----------------------------------------------------------------------------------

/// Ends a legacy session when its SSE connection goes away (2024-11-05 has no resumption).
struct LegacyGuard {
    registry: Arc<Registry>,
    session: Option<Arc<SessionShared>>,
}

impl Drop for LegacyGuard {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            self.registry
                .end_detached(session, "legacy SSE connection closed");
        }
    }
}

fn frame_event(frame: Frame, legacy: bool) -> Option<Event> {
    match frame {
        Frame::Message { event_id, json } => {
            let mut event = Event::default().data(json.as_ref());
            if let Some(id) = event_id {
                event = event.id(id);
            }
            if legacy {
                // Item 125: server messages are `event: message`.
                event = event.event("message");
            }
            Some(event)
        }
        Frame::End => None,
    }
}

fn sse_response(
    initial: Vec<Frame>,
    receiver: Option<mpsc::Receiver<Frame>>,
    priming: Option<String>,
    legacy: bool,
    config: &McpConfig,
    guard: Option<LegacyGuard>,
) -> Response {
    let mut first: Vec<Event> = Vec::new();
    if let Some(id) = priming {
        first.push(Event::default().id(id).data(""));
    }
    first.extend(
        initial
            .into_iter()
            .filter_map(|frame| frame_event(frame, legacy)),
    );
    let head = futures_util::stream::iter(first);
    let tail =
        futures_util::stream::unfold((receiver, guard), move |(receiver, guard)| async move {
            let mut receiver = receiver?;
            let frame = receiver.recv().await?;
            let event = frame_event(frame, legacy)?;
            Some((event, (Some(receiver), guard)))
        });
    let stream = head.chain(tail).map(Ok::<_, std::convert::Infallible>);
    // Item 105: keep-alive comments against proxy idle timeouts.
    let sse = Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(config.keepalive())
            .text("keep-alive"),
    );
    sse_headers(sse.into_response())
}

fn sse_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    // Item 105 / peers-lessons §3.8: proxies must not buffer the stream.
    headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

// ---- GET /mcp, DELETE /mcp ----------------------------------------------------------------

async fn get_mcp(State(edge): State<Edge>, headers: HeaderMap) -> Response {
    let principal = match admit(&edge, &headers).await {
        Ok(principal) => principal,
        Err(response) => return response,
    };
    get_inner(&edge, &principal, &headers).unwrap_or_else(IntoResponse::into_response)
}

fn get_inner(
    edge: &Edge,
    principal: &Principal,
    headers: &HeaderMap,
) -> Result<Response, EdgeError> {
    let accepts_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|accept| accept.contains("text/event-stream") || accept.contains("*/*"));
    if !accepts_sse {
        return Err(EdgeError::NotAcceptable(
            "the GET stream is text/event-stream",
        ));
    }
    let session_id = session_header(headers).ok_or(EdgeError::NoSession)?;
    let session = edge.registry.lookup(session_id, principal)?;
    if session.legacy {
        return Err(EdgeError::SessionNotFound);
    }
    let version = session.protocol_version().unwrap_or_default();
    let mut streams = session.streams.lock().map_err(|_| EdgeError::Internal)?;
    // Items 110–111: resumption is authenticated like any request and confined to this
    // session's streams (the id is looked up in this session's table only).
    let last_event_id = headers.get(LAST_EVENT_ID).and_then(|v| v.to_str().ok());
    if let Some((frames, receiver)) = last_event_id.and_then(|id| streams.resume(id)) {
        drop(streams);
        let response = sse_response(frames, receiver, None, false, &edge.config, None);
        return Ok(with_session(response, session_id));
    }
    let (stream, receiver) = streams.open(StreamKind::Get, 0);
    let priming = primes(&version)
        .then(|| streams.priming_event_id(stream))
        .flatten();
    drop(streams);
    Ok(with_session(
        sse_response(
            Vec::new(),
            Some(receiver),
            priming,
            false,
            &edge.config,
            None,
        ),
        session_id,
    ))
}

async fn delete_mcp(State(edge): State<Edge>, headers: HeaderMap) -> Response {
    let principal = match admit(&edge, &headers).await {
        Ok(principal) => principal,
        Err(response) => return response,
    };
    let Some(session_id) = session_header(&headers) else {
        return EdgeError::NoSession.into_response();
    };
    match edge.registry.lookup(session_id, &principal) {
        Ok(session) if !session.legacy => {
            // Item 115: DELETE ends the session and its child.
            edge.registry.end(&session, "deleted by the client").await;
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(_) => EdgeError::SessionNotFound.into_response(),
        Err(error) => EdgeError::from(error).into_response(),
    }
}

// ---- legacy HTTP+SSE (2024-11-05) ---------------------------------------------------------

async fn get_legacy_sse(State(edge): State<Edge>, headers: HeaderMap) -> Response {
    let principal = match admit(&edge, &headers).await {
        Ok(principal) => principal,
        Err(response) => return response,
    };
    let (session_id, session) = match edge.registry.create(&principal, true) {
        Ok(created) => created,
        Err(error) => return EdgeError::from(error).into_response(),
    };
    let Ok(mut streams) = session.streams.lock() else {
        return EdgeError::Internal.into_response();
    };
    let (_, receiver) = streams.open(StreamKind::Legacy, 0);
    drop(streams);
    // Item 124: the first event names the POST endpoint.
    let endpoint = Event::default()
        .event("endpoint")
        .data(format!("/messages?sessionId={}", session_id.0));
    let guard = LegacyGuard {
        registry: edge.registry.clone(),
        session: Some(session),
    };
    let head = futures_util::stream::iter([endpoint]);
    let rest = sse_response_stream(receiver, guard);
    let stream = head.chain(rest).map(Ok::<_, std::convert::Infallible>);
    let sse = Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(edge.config.keepalive())
            .text("keep-alive"),
    );
    sse_headers(sse.into_response())
}

fn sse_response_stream(
    receiver: mpsc::Receiver<Frame>,
    guard: LegacyGuard,
) -> impl futures_util::Stream<Item = Event> {
    futures_util::stream::unfold((receiver, guard), |(mut receiver, guard)| async move {
        let frame = receiver.recv().await?;
        let event = frame_event(frame, true)?;
        Some((event, (receiver, guard)))
    })
}

#[derive(serde::Deserialize)]
struct LegacyQuery {
    #[serde(rename = "sessionId")]
    session_id: Option<String>,
}

async fn post_legacy_message(
    State(edge): State<Edge>,
    Query(query): Query<LegacyQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let principal = match admit(&edge, &headers).await {
        Ok(principal) => principal,
        Err(response) => return response,
    };
    legacy_inner(&edge, &principal, query, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn legacy_inner(
    edge: &Edge,
    principal: &Principal,
    query: LegacyQuery,
    body: Body,
) -> Result<Response, EdgeError> {
    let session_id = query.session_id.ok_or(EdgeError::NoSession)?;
    let session = edge.registry.lookup(&session_id, principal)?;
    if !session.legacy {
        return Err(EdgeError::SessionNotFound);
    }
    let messages = read_body(body, edge.config.max_body_bytes)
        .await
        .map_err(|(error, _)| error)?;
    if messages.len() != 1 {
        return Err(EdgeError::InvalidMessage(
            "2024-11-05 takes one message per POST",
        ));
    }
    let stream = session
        .streams
        .lock()
        .map_err(|_| EdgeError::Internal)?
        .legacy_stream()
        .ok_or(EdgeError::SessionNotFound)?;
    let first = messages.into_iter().next().ok_or(EdgeError::Internal)?;
    if first.method() == Some("initialize") {
        let Message::Request { id, params, .. } = first else {
            return Err(EdgeError::InvalidMessage("initialize must be a request"));
        };
        let (reply, outcome) = oneshot::channel();
        session
            .commands
            .send(Command::Initialize {
                id: id.clone(),
                params,
                reply,
            })
            .await
            .map_err(|_| EdgeError::SessionNotFound)?;
        let line = match outcome.await.map_err(|_| EdgeError::Internal)? {
            InitializeOutcome::Answered { line, .. } => line,
            InitializeOutcome::Failed(error) => {
                jsonrpc::error_line(Some(&id), codes::CHILD_UNAVAILABLE, &error.client_message())
            }
        };
        if let Ok(mut streams) = session.streams.lock() {
            streams.deliver_response(stream, Arc::from(line));
        }
        return Ok(StatusCode::ACCEPTED.into_response());
    }
    let is_request = matches!(first, Message::Request { .. });
    forward(edge, &session, vec![first], is_request.then_some(stream)).await?;
    // Item 125: POSTs are acknowledged; the answer travels on the SSE stream.
    Ok(StatusCode::ACCEPTED.into_response())
}
