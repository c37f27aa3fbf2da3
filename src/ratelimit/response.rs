//! The 429 answers: an OAuth error object on OAuth endpoints, a JSON-RPC error on `/mcp`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::RateLimited;

fn with_retry_after(status_body: impl IntoResponse, limited: &RateLimited) -> Response {
    let mut response = (StatusCode::TOO_MANY_REQUESTS, status_body).into_response();
    let headers = response.headers_mut();
    // RFC 6585 §4: a 429 MAY carry Retry-After; clients (and the TypeScript SDK) honour it.
    headers.insert(
        header::RETRY_AFTER,
        HeaderValue::from(limited.retry_after_secs()),
    );
    // RFC 6749 §5.1: responses of OAuth endpoints are not cached.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// 429 with an OAuth-shaped error body (RFC 6749 §5.2 shape). `too_many_requests` is the code
/// the TypeScript SDK's authorization-server router uses for the same condition.
pub fn oauth_too_many_requests(limited: &RateLimited) -> Response {
    with_retry_after(
        Json(json!({
            "error": "too_many_requests",
            "error_description": "Too many requests; retry after the time given in Retry-After.",
        })),
        limited,
    )
}

/// 429 with a JSON-RPC 2.0 error response (§5.1: code in the implementation-defined server
/// error range). `id` is the request's id when known, else `null` (JSON-RPC §5).
pub fn jsonrpc_too_many_requests(limited: &RateLimited, id: Option<Value>) -> Response {
    with_retry_after(
        Json(json!({
            "jsonrpc": "2.0",
            "id": id.unwrap_or(Value::Null),
            "error": {
                "code": -32000,
                "message": "Too many requests",
                "data": { "retry_after": limited.retry_after_secs() },
            },
        })),
        limited,
    )
}

impl IntoResponse for RateLimited {
    fn into_response(self) -> Response {
        if self.class.is_mcp() {
            jsonrpc_too_many_requests(&self, None)
        } else {
            oauth_too_many_requests(&self)
        }
    }
}
