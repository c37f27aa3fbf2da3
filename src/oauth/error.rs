//! The one OAuth error type and the one place it becomes HTTP (STYLE.md habit 4).
//!
//! [`OAuthError`] is closed: each variant's [`OAuthError::code`] is the RFC error code
//! (RFC 6749 §4.1.2.1 and §5.2, RFC 7591 §3.2.2, RFC 8707 §2). Descriptions are fixed strings
//! written for the client developer; internal detail (SQL errors, upstream bodies) is logged,
//! never sent. How the error reaches the client is the [`Delivery`]: JSON (token, register,
//! revoke), an HTML page (authorize errors that must not redirect, RFC 6749 §4.1.2.1), or a
//! redirect back to the client with `error`, `state` and `iss` (RFC 9207).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Serialize;
use url::Url;

use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    #[error("invalid_request: {0}")]
    InvalidRequest(&'static str),
    /// Client authentication failed or the client is unknown (RFC 6749 §5.2). 401: Claude
    /// re-registers on it (mcp-spec-checklist item 53).
    #[error("invalid_client: {0}")]
    InvalidClient(&'static str),
    #[error("invalid_grant: {0}")]
    InvalidGrant(&'static str),
    #[error("unauthorized_client: {0}")]
    UnauthorizedClient(&'static str),
    #[error("unsupported_grant_type: {0}")]
    UnsupportedGrantType(&'static str),
    #[error("unsupported_response_type: {0}")]
    UnsupportedResponseType(&'static str),
    #[error("unsupported_token_type: {0}")]
    UnsupportedTokenType(&'static str),
    #[error("invalid_scope: {0}")]
    InvalidScope(&'static str),
    /// RFC 8707 §2: the `resource` is not this broker's MCP endpoint.
    #[error("invalid_target: {0}")]
    InvalidTarget(&'static str),
    #[error("access_denied: {0}")]
    AccessDenied(&'static str),
    /// RFC 7591 §3.2.2.
    #[error("invalid_redirect_uri: {0}")]
    InvalidRedirectUri(&'static str),
    #[error("invalid_client_metadata: {0}")]
    InvalidClientMetadata(&'static str),
    #[error("server_error: {0}")]
    ServerError(&'static str),
    #[error("temporarily_unavailable: {0}")]
    TemporarilyUnavailable(&'static str),
}

impl OAuthError {
    /// The RFC error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidClient(_) => "invalid_client",
            Self::InvalidGrant(_) => "invalid_grant",
            Self::UnauthorizedClient(_) => "unauthorized_client",
            Self::UnsupportedGrantType(_) => "unsupported_grant_type",
            Self::UnsupportedResponseType(_) => "unsupported_response_type",
            Self::UnsupportedTokenType(_) => "unsupported_token_type",
            Self::InvalidScope(_) => "invalid_scope",
            Self::InvalidTarget(_) => "invalid_target",
            Self::AccessDenied(_) => "access_denied",
            Self::InvalidRedirectUri(_) => "invalid_redirect_uri",
            Self::InvalidClientMetadata(_) => "invalid_client_metadata",
            Self::ServerError(_) => "server_error",
            Self::TemporarilyUnavailable(_) => "temporarily_unavailable",
        }
    }

    pub fn description(&self) -> &'static str {
        match self {
            Self::InvalidRequest(d)
            | Self::InvalidClient(d)
            | Self::InvalidGrant(d)
            | Self::UnauthorizedClient(d)
            | Self::UnsupportedGrantType(d)
            | Self::UnsupportedResponseType(d)
            | Self::UnsupportedTokenType(d)
            | Self::InvalidScope(d)
            | Self::InvalidTarget(d)
            | Self::AccessDenied(d)
            | Self::InvalidRedirectUri(d)
            | Self::InvalidClientMetadata(d)
            | Self::ServerError(d)
            | Self::TemporarilyUnavailable(d) => d,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::InvalidClient(_) => StatusCode::UNAUTHORIZED,
            Self::ServerError(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::TemporarilyUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl From<StoreError> for OAuthError {
    fn from(error: StoreError) -> Self {
        tracing::error!(%error, "oauth store failure");
        Self::ServerError("the authorization server failed; try again")
    }
}

impl From<rusqlite::Error> for OAuthError {
    fn from(error: rusqlite::Error) -> Self {
        Self::from(StoreError::from(error))
    }
}

impl From<crate::secret::RandomError> for OAuthError {
    fn from(_: crate::secret::RandomError) -> Self {
        tracing::error!("random number generator failed");
        Self::ServerError("the authorization server failed; try again")
    }
}

/// How an error reaches the client.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// `{error, error_description}` with `Cache-Control: no-store` (RFC 6749 §5.2).
    Json,
    /// An HTML page for the user: the redirect URI is not trusted yet, so we must not redirect
    /// (RFC 6749 §4.1.2.1, mcp-spec-checklist item 42).
    Page,
    /// Back to the client's (validated) redirect URI.
    Redirect {
        redirect_uri: Url,
        state: Option<String>,
        issuer: String,
    },
}

/// An [`OAuthError`] with its delivery: what handlers return.
#[derive(Debug, Clone)]
pub struct OAuthFailure {
    pub error: OAuthError,
    pub delivery: Delivery,
}

impl OAuthFailure {
    pub fn page(error: OAuthError) -> Self {
        Self {
            error,
            delivery: Delivery::Page,
        }
    }
}

impl From<crate::secret::RandomError> for OAuthFailure {
    fn from(error: crate::secret::RandomError) -> Self {
        Self::from(OAuthError::from(error))
    }
}

impl From<OAuthError> for OAuthFailure {
    fn from(error: OAuthError) -> Self {
        Self {
            error,
            delivery: Delivery::Json,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: &'static str,
    error_description: &'static str,
}

/// Builds the client redirect `redirect_uri?{params}&state=…&iss=…`; shared with successful
/// authorization responses so both carry `state` and `iss` the same way.
pub fn client_redirect_url(
    redirect_uri: &Url,
    params: &[(&str, &str)],
    state: Option<&str>,
    issuer: &str,
) -> Url {
    let mut url = redirect_uri.clone();
    {
        let mut pairs = url.query_pairs_mut();
        for (key, value) in params {
            pairs.append_pair(key, value);
        }
        if let Some(state) = state {
            pairs.append_pair("state", state);
        }
        pairs.append_pair("iss", issuer);
    }
    url
}

impl IntoResponse for OAuthFailure {
    fn into_response(self) -> Response {
        let error = self.error;
        let code = error.code();
        let mut response = match self.delivery {
            Delivery::Json => {
                let body = ErrorBody {
                    error: error.code(),
                    error_description: error.description(),
                };
                let mut response = (error.status(), axum::Json(body)).into_response();
                let headers = response.headers_mut();
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
                if matches!(error, OAuthError::InvalidClient(_)) {
                    // RFC 6749 §5.2: a 401 carries a challenge for the scheme the client can use.
                    headers.insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"forgejo-mcp-broker\""),
                    );
                }
                response
            }
            Delivery::Page => {
                let status = if error.status() == StatusCode::UNAUTHORIZED {
                    StatusCode::BAD_REQUEST
                } else {
                    error.status()
                };
                let body = super::pages::error_page(error.code(), error.description());
                let mut response = (status, Html(body)).into_response();
                super::pages::harden_page_headers(response.headers_mut());
                response
            }
            Delivery::Redirect {
                redirect_uri,
                state,
                issuer,
            } => {
                let url = client_redirect_url(
                    &redirect_uri,
                    &[
                        ("error", error.code()),
                        ("error_description", error.description()),
                    ],
                    state.as_deref(),
                    &issuer,
                );
                let mut response = Redirect::to(url.as_str()).into_response();
                response
                    .headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                response
            }
        };
        // Counted by the metrics layer as `oauth_outcomes_total{outcome=code}`.
        response
            .extensions_mut()
            .insert(crate::metrics::OAuthOutcome(code));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn json_errors_carry_the_rfc_code_and_no_store() {
        let response =
            OAuthFailure::from(OAuthError::InvalidGrant("the code is invalid")).into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"], "invalid_grant");
    }

    #[test]
    fn invalid_client_is_401_with_a_challenge() {
        let response =
            OAuthFailure::from(OAuthError::InvalidClient("unknown client")).into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
    }

    #[test]
    fn redirect_errors_keep_state_and_add_iss() {
        let failure = OAuthFailure {
            error: OAuthError::AccessDenied("the user denied access"),
            delivery: Delivery::Redirect {
                redirect_uri: Url::parse("https://client.example/cb?x=1").unwrap(),
                state: Some("s 1".into()),
                issuer: "https://broker.example".into(),
            },
        };
        let response = failure.into_response();
        let location = response.headers()[header::LOCATION].to_str().unwrap();
        let url = Url::parse(location).unwrap();
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert!(pairs.contains(&("x".into(), "1".into())));
        assert!(pairs.contains(&("error".into(), "access_denied".into())));
        assert!(pairs.contains(&("state".into(), "s 1".into())));
        assert!(pairs.contains(&("iss".into(), "https://broker.example".into())));
    }
}
