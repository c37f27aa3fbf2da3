//! SSE responses: event framing, keep-alives, proxy headers, legacy guards.

use std::sync::Arc;

use axum::http::{HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use tokio::sync::mpsc;

use super::super::McpConfig;
use super::super::registry::Registry;
use super::super::session::SessionShared;
use super::super::streams::Frame;
use super::*;

// ---- SSE ----------------------------------------------------------------------------------

/// Ends a legacy session when its SSE connection goes away (2024-11-05 has no resumption).
pub(super) struct LegacyGuard {
    pub(super) registry: Arc<Registry>,
    pub(super) session: Option<Arc<SessionShared>>,
}

impl Drop for LegacyGuard {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            self.registry
                .end_detached(session, "legacy SSE connection closed");
        }
    }
}

pub(super) fn frame_event(frame: Frame, legacy: bool) -> Option<Event> {
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

/// The reconnection delay announced in priming events.
const PRIMING_RETRY_MS: u64 = 1000;

pub(super) fn sse_response(
    initial: Vec<Frame>,
    receiver: Option<mpsc::Receiver<Frame>>,
    priming: Option<String>,
    legacy: bool,
    config: &McpConfig,
    guard: Option<LegacyGuard>,
) -> Response {
    let mut first: Vec<Event> = Vec::new();
    if let Some(id) = priming {
        // SEP-1699 (2025-11-25): the priming event carries an id to resume from and `retry:`,
        // how long a client waits before reconnecting with Last-Event-ID if the stream drops.
        first.push(
            Event::default()
                .id(id)
                .retry(std::time::Duration::from_millis(PRIMING_RETRY_MS))
                .data(""),
        );
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

pub(super) fn sse_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    // Item 105 / peers-lessons §3.8: proxies must not buffer the stream.
    headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
