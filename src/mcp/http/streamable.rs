//! Streamable HTTP on `/mcp`: POST, GET, DELETE (checklist §10).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use super::super::jsonrpc::{self, Message, codes};
use super::super::session::{Command, InitializeOutcome, SessionError, SessionShared};
use super::super::streams::{Frame, StreamKind};
use super::*;
use crate::auth::Principal;
use axum::extract::State;

// ---- POST /mcp ----------------------------------------------------------------------------

pub(super) async fn post_mcp(
    State(edge): State<Arc<Edge>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let principal = match admit(&edge, &headers).await {
        Ok(principal) => principal,
        Err(response) => return response,
    };
    match post_inner(&edge, &principal, &headers, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

pub(super) async fn post_inner(
    edge: &Edge,
    principal: &Principal,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, EdgeError> {
    let answer = answer_kind(headers)?;
    let (messages, batch) = read_body(body, edge.config.max_body_bytes).await?;
    let is_initialize = messages.iter().any(|m| m.method() == Some("initialize"));
    if batch && is_initialize {
        // Item 99, before anything else: there is no session whose version could allow it.
        return Err(EdgeError::InvalidMessage(
            "initialize must not be in a batch",
        ));
    }
    let Some(session_id) = session_header(headers) else {
        return match messages.as_slice() {
            [Message::Request { method, .. }] if method == "initialize" => {
                initialize_new(edge, principal, messages, answer).await
            }
            // Item 166: Claude has sent `initialized` without a session id; accept and drop.
            [Message::Notification { method, .. }] if method == "notifications/initialized" => {
                Ok(StatusCode::ACCEPTED.into_response())
            }
            // Item 165: a client that lost the header, with exactly one session: route there.
            _ if edge.config.route_sessionless_to_sole_session
                && !is_initialize
                && !messages.iter().any(is_modern) =>
            {
                match edge.registry.sole_session(principal) {
                    Some(session) => {
                        tracing::info!(session = %session.label, user_id = principal.user_id, "request without Mcp-Session-Id routed to the caller's only session (item 165)");
                        post_to_session(edge, session, None, messages, batch, answer).await
                    }
                    None => Err(EdgeError::NoSession),
                }
            }
            // Item 133: a modern probe (`server/discover`, …) must see a non-modern 400 so
            // dual-era clients fall back to `initialize`.
            _ => Err(EdgeError::NoSession),
        };
    };
    let session = edge.registry.lookup(session_id, principal)?;
    // The answer echoes the request's own header value: no copy of the id.
    let echoed = headers.get(MCP_SESSION_ID);
    post_to_session(edge, session, echoed, messages, batch, answer).await
}

/// Item 133: what only a client of the stateless 2026-07-28 revision sends. Such a request
/// must get the non-modern 400, never be routed to a session.
fn is_modern(message: &Message) -> bool {
    #[derive(serde::Deserialize)]
    struct Params {
        #[serde(rename = "_meta")]
        meta: Option<std::collections::HashMap<String, serde::de::IgnoredAny>>,
    }
    message.method() == Some("server/discover")
        || message
            .params()
            .and_then(|params| serde_json::from_str::<Params>(params.get()).ok())
            .and_then(|params| params.meta)
            .is_some_and(|meta| {
                meta.keys()
                    .any(|key| key.starts_with("io.modelcontextprotocol/"))
            })
}

/// A POST's messages on a session the caller owns; `session_id` (the request's header) is
/// echoed in the response when the client sent it.
async fn post_to_session(
    edge: &Edge,
    session: Arc<SessionShared>,
    session_id: Option<&HeaderValue>,
    messages: Vec<Message>,
    batch: bool,
    answer: Answer,
) -> Result<Response, EdgeError> {
    let is_initialize = messages.iter().any(|m| m.method() == Some("initialize"));
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
        let session_id = session_id.and_then(|value| value.to_str().ok());
        return repeat_initialize(&session, messages, session_id.unwrap_or_default());
    }
    let requests = messages
        .iter()
        .filter(|m| matches!(m, Message::Request { .. }))
        .count();
    // Each request in flight holds a stream and its replay buffer: bound them. The share is
    // taken here, before forwarding, and given back by the session as each is answered.
    if requests > 0 && !session.reserve_requests(requests, edge.config.max_in_flight_per_session) {
        return Err(EdgeError::TooManyInFlight(
            edge.config.max_in_flight_per_session,
        ));
    }
    if requests == 0 {
        forward(edge, &session, messages, None).await?;
        return Ok(echo_session(
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
    Ok(echo_session(response, session_id))
}

/// Item 103: the priming event is a 2025-11-25 SHOULD; older clients get none.
pub(super) fn primes(version: &str) -> bool {
    version >= "2025-11-25"
}

pub(super) async fn forward(
    edge: &Edge,
    session: &Arc<SessionShared>,
    messages: Vec<Message>,
    stream: Option<u64>,
) -> Result<(), EdgeError> {
    // Only a request that may respawn the child can turn into a 404 (a dead Forgejo grant);
    // with a child running, the answer comes on the stream, and waiting for the actor's
    // acknowledgement (or even making the channel for it) would only add to every call.
    let wait = stream.is_some() && session.pid().is_none();
    let (reply, result) = if wait {
        let (reply, result) = oneshot::channel();
        (Some(reply), Some(result))
    } else {
        (None, None)
    };
    let reserved = if stream.is_some() {
        messages
            .iter()
            .filter(|m| matches!(m, Message::Request { .. }))
            .count()
    } else {
        0
    };
    if session
        .commands
        .send(Command::Forward {
            messages,
            stream,
            reply,
        })
        .await
        .is_err()
    {
        // The session's actor has stopped: it ended meanwhile.
        session.release_requests(reserved);
        return Err(EdgeError::SessionNotFound);
    }
    let Some(result) = result else {
        return Ok(());
    };
    match result.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(SessionError::Gone)) => {
            // The user's Forgejo grant died: 404 from now on.
            edge.registry.end(session, "upstream grant dead").await;
            Err(EdgeError::SessionNotFound)
        }
        Ok(Err(SessionError::Ended)) => Err(EdgeError::SessionNotFound),
        Ok(Err(SessionError::ShuttingDown)) => Err(EdgeError::ShuttingDown),
        Err(_) => {
            // The actor stopped without a word (it cannot, short of a bug): the session is
            // unusable, so it ends rather than answering 500s forever.
            edge.registry.end(session, "session stopped").await;
            Err(EdgeError::SessionNotFound)
        }
    }
}

pub(super) async fn initialize_new(
    edge: &Edge,
    principal: &Principal,
    messages: Vec<Message>,
    answer: Answer,
) -> Result<Response, EdgeError> {
    let Some(Message::Request { id, params, .. }) = messages.into_iter().next() else {
        return Err(EdgeError::InvalidMessage("initialize must be a request"));
    };
    // A new session spawns a child: the most expensive thing a client can ask for.
    if let Some(response) =
        rate_refusal(edge, crate::ratelimit::EndpointClass::McpSession, principal)
    {
        return Ok(response);
    }
    let (session_id, session) = edge.registry.create(principal, false).await?;
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
            return Ok(with_session(response, session_id.0.as_str()));
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

pub(super) fn repeat_initialize(
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

/// `Content-Type: application/json`, built once (a `&str` would be copied per response).
pub(super) const JSON: HeaderValue = HeaderValue::from_static("application/json");

pub(super) fn single_message_response(line: String, answer: Answer) -> Response {
    match answer {
        Answer::Json => ([(header::CONTENT_TYPE, JSON)], line).into_response(),
        Answer::Sse => {
            let event = Event::default().data(line);
            let stream = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(event)]);
            sse_headers(Sse::new(stream).into_response())
        }
    }
}

pub(super) async fn json_response(mut receiver: mpsc::Receiver<Frame>, batch: bool) -> Response {
    let mut lines = Vec::new();
    while let Some(Frame::Message { json, .. }) = receiver.recv().await {
        if !json.is_empty() {
            lines.push(json);
        }
    }
    let body = match lines.as_slice() {
        [] => return StatusCode::ACCEPTED.into_response(),
        // One answer: the body is the delivered line itself, not a copy of it.
        [line, ..] if !batch => Body::from(bytes::Bytes::from_owner(SharedLine(line.clone()))),
        lines => Body::from(format!(
            "[{}]",
            lines
                .iter()
                .map(|l| l.as_ref())
                .collect::<Vec<_>>()
                .join(",")
        )),
    };
    ([(header::CONTENT_TYPE, JSON)], body).into_response()
}

/// A delivered line as a response body's bytes.
struct SharedLine(Arc<str>);

impl AsRef<[u8]> for SharedLine {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// `response` with the request's `Mcp-Session-Id` value, if it had one.
fn echo_session(mut response: Response, session_id: Option<&HeaderValue>) -> Response {
    if let Some(value) = session_id {
        response.headers_mut().insert(MCP_SESSION_ID, value.clone());
    }
    response
}

pub(super) fn with_session<'a>(
    mut response: Response,
    session_id: impl Into<Option<&'a str>>,
) -> Response {
    if let Some(Ok(value)) = session_id.into().map(HeaderValue::from_str) {
        response.headers_mut().insert(MCP_SESSION_ID, value);
    }
    response
}

// ---- GET /mcp, DELETE /mcp ----------------------------------------------------------------

pub(super) async fn get_mcp(State(edge): State<Arc<Edge>>, headers: HeaderMap) -> Response {
    let principal = match admit(&edge, &headers).await {
        Ok(principal) => principal,
        Err(response) => return response,
    };
    get_inner(&edge, &principal, &headers).unwrap_or_else(IntoResponse::into_response)
}

pub(super) fn get_inner(
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

pub(super) async fn delete_mcp(State(edge): State<Arc<Edge>>, headers: HeaderMap) -> Response {
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
