//! `GET /oauth/callback`: Forgejo sends the user back here (ARCHITECTURE.md §2). The broker
//! matches `state` (single-use, short-lived, created only after consent: checklist item 85),
//! checks the browser is the one that consented (login CSRF), exchanges the code with its own
//! PKCE verifier, identifies the user, stores their Forgejo token set, and sends the MCP client
//! a single-use code bound to (client, redirect URI, challenge, resource, user).

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use url::Url;

use super::OAuthState;
use super::authorize::{
    BROWSER_COOKIE_PLAIN, BROWSER_COOKIE_SECURE, browser_cookie, code_redirect,
};
use super::error::{Delivery, OAuthError, OAuthFailure};
use super::store::CodeRecord;
use crate::audit::AuditEvent;
use crate::secret::{ExposeSecret, constant_time_eq, hash_token, random_token};
use crate::upstream::{LoginError, UpstreamError};

#[derive(Default, Deserialize)]
pub struct RawCallback {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

impl std::fmt::Debug for RawCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawCallback")
            .field("code", &super::redacted(&self.code))
            .field("state", &super::redacted(&self.state))
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

pub async fn callback(
    State(state): State<Arc<OAuthState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, OAuthFailure> {
    const INVALID: OAuthError = OAuthError::InvalidRequest(
        "this sign-in is invalid, expired or already used; start again from the application",
    );
    let raw: RawCallback = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|_| OAuthFailure::page(INVALID))?;
    let upstream_state = raw
        .state
        .as_deref()
        .filter(|value| !value.is_empty() && value.len() <= 200)
        .ok_or(OAuthFailure::page(INVALID))?;
    let now = state.now();
    let pending = state
        .store
        .take_pending_by_upstream_state(&hash_token(upstream_state), now)
        .map_err(OAuthFailure::page)?
        .ok_or(OAuthFailure::page(INVALID))?;
    let cookie_name = if state.secure_cookies {
        BROWSER_COOKIE_SECURE
    } else {
        BROWSER_COOKIE_PLAIN
    };
    let browser_ok = browser_cookie(&headers, cookie_name).is_some_and(|browser| {
        constant_time_eq(
            hash_token(&browser).as_bytes(),
            pending.browser_hash.as_bytes(),
        )
    });
    if !browser_ok {
        return Err(OAuthFailure::page(INVALID));
    }
    let redirect_url = Url::parse(&pending.redirect_uri)
        .map_err(|_| OAuthFailure::page(OAuthError::ServerError("stored redirect is invalid")))?;
    let to_client = |error: OAuthError| OAuthFailure {
        error,
        delivery: Delivery::Redirect {
            redirect_uri: redirect_url.clone(),
            state: pending.state.clone(),
            issuer: state.issuer.clone(),
        },
    };

    if let Some(error) = raw.error.as_deref() {
        // Forgejo's own description is not forwarded (it is Forgejo's, not ours to vouch for).
        let reason = format!(
            "forgejo returned {}",
            error.chars().take(64).collect::<String>()
        );
        state
            .audit
            .record(AuditEvent::UpstreamLoginFailed { reason });
        return Err(to_client(if error == "access_denied" {
            OAuthError::AccessDenied("the user denied access at Forgejo")
        } else {
            OAuthError::ServerError("Forgejo refused the sign-in")
        }));
    }
    let code = raw
        .code
        .as_deref()
        .filter(|code| !code.is_empty() && code.len() <= 4096)
        .ok_or_else(|| to_client(OAuthError::ServerError("Forgejo returned no code")))?;
    let verifier = pending
        .upstream_verifier
        .as_deref()
        .and_then(|sealed| state.upstream.open_verifier(&pending.id, sealed))
        .ok_or_else(|| to_client(OAuthError::ServerError("the sign-in state is unreadable")))?;

    let user = state
        .upstream
        .complete_login(code, &verifier)
        .await
        .map_err(|error| {
            tracing::warn!(%error, "Forgejo login failed");
            to_client(match error {
                LoginError::Upstream(UpstreamError::Unavailable(_)) => {
                    OAuthError::TemporarilyUnavailable("Forgejo could not be reached; try again")
                }
                LoginError::Upstream(_) => {
                    OAuthError::AccessDenied("Forgejo did not confirm the sign-in")
                }
                _ => OAuthError::ServerError("the sign-in could not be completed"),
            })
        })?;

    let code = random_token(32).map_err(|error| to_client(error.into()))?;
    state
        .store
        .insert_code(
            &hash_token(code.expose_secret()),
            &CodeRecord {
                client_id: pending.client_id.clone(),
                redirect_uri: pending.redirect_uri.clone(),
                code_challenge: pending.code_challenge.clone(),
                resource: pending.resource.clone(),
                scope: pending.scope.clone(),
                user_id: user.id,
                username: user.login.clone(),
                expires_at: OAuthState::expires_at(now, state.config.code_ttl_secs),
            },
        )
        .map_err(to_client)?;
    state.audit.record(AuditEvent::CodeIssued {
        client_id: pending.client_id.clone(),
        user_id: user.id,
    });
    Ok(code_redirect(
        &redirect_url,
        code.expose_secret(),
        pending.state.as_deref(),
        &state.issuer,
    ))
}
