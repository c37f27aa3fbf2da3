//! Legacy HTTP+SSE (2024-11-05): `GET /sse` and `POST /messages?sessionId=…` (checklist §11).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use tokio::sync::{mpsc, oneshot};

use super::super::jsonrpc::{self, Message, codes};
use super::super::session::{Command, InitializeOutcome};
use super::super::streams::{Frame, StreamKind};
use super::*;
use crate::auth::Principal;
use axum::extract::{Query, State};

// ---- legacy HTTP+SSE (2024-11-05) ---------------------------------------------------------

pub(super) async fn get_legacy_sse(State(edge): State<Arc<Edge>>, headers: HeaderMap) -> Response {
    let principal = match admit(&edge, &headers).await {
        Ok(principal) => principal,
        Err(response) => return response,
    };
    if let Some(response) = rate_refusal(
        &edge,
        crate::ratelimit::EndpointClass::McpSession,
        &principal,
    ) {
        return response;
    }
    let (session_id, session) = match edge.registry.create(&principal, true).await {
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

pub(super) fn sse_response_stream(
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
pub(super) struct LegacyQuery {
    #[serde(rename = "sessionId")]
    session_id: Option<String>,
}

pub(super) async fn post_legacy_message(
    State(edge): State<Arc<Edge>>,
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

pub(super) async fn legacy_inner(
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
    let (messages, batch) = read_body(body, edge.config.max_body_bytes).await?;
    if batch || messages.len() != 1 {
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
    if is_request && !session.reserve_requests(1, edge.config.max_in_flight_per_session) {
        return Err(EdgeError::TooManyInFlight(
            edge.config.max_in_flight_per_session,
        ));
    }
    forward(edge, &session, vec![first], is_request.then_some(stream)).await?;
    // Item 125: POSTs are acknowledged; the answer travels on the SSE stream.
    Ok(StatusCode::ACCEPTED.into_response())
}
