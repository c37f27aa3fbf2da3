//! `POST /oauth/revoke`, RFC 7009: access or refresh tokens; unknown or foreign tokens answer
//! 200 too (§2.2: nothing to tell an attacker). Revoking a refresh token revokes its whole
//! family, access tokens included (§2.1 SHOULD); revoking an access token revokes only it.

use crate::ratelimit::EndpointClass;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::OAuthState;
use super::error::{OAuthError, OAuthFailure};
use super::token::{
    ACCESS_TOKEN_PREFIX, REFRESH_TOKEN_PREFIX, authenticate_client, client_rate_refusal, parse_form,
};
use crate::audit::AuditEvent;
use crate::secret::hash_token;

#[derive(Default, Deserialize)]
pub struct RawRevokeRequest {
    pub token: Option<String>,
    pub token_type_hint: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

impl std::fmt::Debug for RawRevokeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawRevokeRequest")
            .field("token", &super::redacted(&self.token))
            .field("token_type_hint", &self.token_type_hint)
            .field("client_id", &self.client_id)
            .field("client_secret", &super::redacted(&self.client_secret))
            .finish()
    }
}

/// Longer than any token the broker issues.
const MAX_TOKEN_LEN: usize = 512;

pub async fn revoke(
    State(state): State<Arc<OAuthState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthFailure> {
    let raw: RawRevokeRequest = parse_form(&body)?;
    let token = raw
        .token
        .as_deref()
        .filter(|token| !token.is_empty())
        .ok_or(OAuthError::InvalidRequest("token is required"))?;
    if let Some(hint) = raw.token_type_hint.as_deref()
        && hint != "access_token"
        && hint != "refresh_token"
    {
        // RFC 7009 §2.2.1 lists this error for hints the server does not know; we only know two.
        return Err(OAuthError::UnsupportedTokenType("unknown token_type_hint").into());
    }
    let client = authenticate_client(
        &state,
        &headers,
        raw.client_id.as_deref(),
        raw.client_secret.as_deref(),
    )
    .await?;
    if let Some(limited) = client_rate_refusal(&state, EndpointClass::Revoke, &client) {
        return Ok(limited);
    }
    let now = state.now();
    let token_hash = hash_token(token);
    // The prefix says which table to look in; the hint is only a hint (§2.1). A token longer
    // than any the broker issues is simply not one of them: 200, like every invalid token
    // (§2.2), without a lookup.
    let could_be_ours = token.len() <= MAX_TOKEN_LEN;
    if could_be_ours && token.starts_with(REFRESH_TOKEN_PREFIX) {
        if let Some(found) = state.store.find_refresh(&token_hash)?
            && found.grant.client_id == client.client_id
            && state.store.revoke_grant(&found.grant.grant_id, now)?
        {
            state.audit.record(AuditEvent::TokenRevoked {
                client_id: client.client_id.clone(),
                user_id: found.grant.user_id,
                grant_id: found.grant.grant_id.clone(),
                token_type: "refresh_token".to_owned(),
            });
        }
    } else if could_be_ours
        && token.starts_with(ACCESS_TOKEN_PREFIX)
        && let Some(found) = state.store.find_access(&token_hash)?
        && found.grant.client_id == client.client_id
        && !found.revoked
    {
        state.store.revoke_access(&token_hash, now)?;
        state.audit.record(AuditEvent::TokenRevoked {
            client_id: client.client_id.clone(),
            user_id: found.grant.user_id,
            grant_id: found.grant.grant_id.clone(),
            token_type: "access_token".to_owned(),
        });
    }
    let mut response = StatusCode::OK.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
