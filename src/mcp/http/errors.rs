//! Every refusal of the MCP edge, mapped to HTTP in one place (STYLE.md habit 4).

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::super::SUPPORTED_VERSIONS;
use super::super::jsonrpc::{self, codes};
use super::super::registry::RegistryError;
use super::*;

// ---- errors -------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub(super) enum EdgeError {
    #[error("origin not allowed")]
    OriginNotAllowed,
    #[error("unsupported MCP-Protocol-Version")]
    UnsupportedVersion,
    #[error("no session")]
    NoSession,
    #[error("session not found")]
    SessionNotFound,
    #[error("body too large")]
    BodyTooLarge(usize),
    #[error("body unreadable")]
    BodyUnreadable,
    #[error("not JSON")]
    Parse,
    #[error("invalid message: {0}")]
    InvalidMessage(&'static str),
    #[error("not acceptable")]
    NotAcceptable(&'static str),
    #[error("too many requests in flight")]
    TooManyInFlight(usize),
    #[error("too many sessions")]
    TooManySessions(usize),
    #[error("the broker is shutting down")]
    ShuttingDown,
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
            Self::BodyUnreadable => (
                StatusCode::BAD_REQUEST,
                codes::BAD_REQUEST,
                "Bad Request: the request body could not be read (too slow, or cut off)".to_owned(),
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
            Self::TooManyInFlight(limit) => (
                StatusCode::TOO_MANY_REQUESTS,
                codes::LIMIT_REACHED,
                format!(
                    "Too many requests in flight on this session (limit {limit}); wait for answers"
                ),
            ),
            Self::TooManySessions(limit) => (
                StatusCode::TOO_MANY_REQUESTS,
                codes::LIMIT_REACHED,
                format!(
                    "Too many sessions: this user already has {limit} (the limit); end one with DELETE or wait for it to expire"
                ),
            ),
            Self::ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                codes::CHILD_UNAVAILABLE,
                "The broker is shutting down; retry the request (the session is kept)".to_owned(),
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

/// The broker-wide answer to a refused bearer token on `/mcp`: the 401, or a 503 when the token
/// could not be checked ([`crate::oauth::mcp_token_refused`]).
pub(super) fn token_refused(edge: &Edge, rejection: crate::auth::TokenRejection) -> Response {
    crate::oauth::mcp_token_refused(&edge.issuer, rejection)
}
