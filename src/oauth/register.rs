//! Dynamic Client Registration, RFC 7591 (mcp-spec-checklist §7): public and confidential
//! clients, every field validated ([`ClientMetadata::try_from`]), RFC-shaped errors.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::OAuthState;
use super::client::{ClientMetadata, RawClientMetadata};
use super::error::{OAuthError, OAuthFailure};
use super::store::{ClientKind, ClientRecord};
use crate::audit::AuditEvent;
use crate::ratelimit::ClientIp;
use crate::secret::{ExposeSecret, hash_token, random_id, random_token};

/// Registration bodies are small; anything larger is not metadata.
const MAX_REGISTRATION_BYTES: usize = 64 * 1024;

/// Parses a registration body: the pure part of DCR (fuzz target).
pub fn parse_registration(body: &[u8]) -> Result<ClientMetadata, OAuthError> {
    if body.len() > MAX_REGISTRATION_BYTES {
        return Err(OAuthError::InvalidClientMetadata(
            "registration body too large",
        ));
    }
    let raw: RawClientMetadata = serde_json::from_slice(body).map_err(|_| {
        OAuthError::InvalidClientMetadata("the body must be a JSON object of client metadata")
    })?;
    ClientMetadata::try_from(&raw)
}

pub async fn register(
    State(state): State<Arc<OAuthState>>,
    // The address behind trusted proxies, from the route's rate-limit layer (as everywhere).
    Extension(ClientIp(ip)): Extension<ClientIp>,
    body: Bytes,
) -> Result<Response, OAuthFailure> {
    let metadata = parse_registration(&body)?;
    let now = state.now();
    // "mcp_" prefix: never mistaken for a CIMD URL (checklist item 64).
    let client_id = format!("mcp_{}", random_id(16)?);
    let secret = if metadata.token_endpoint_auth_method.is_confidential() {
        Some(random_token(32)?)
    } else {
        None
    };
    let record = ClientRecord {
        client_id: client_id.clone(),
        kind: ClientKind::Dcr,
        secret_hash: secret.as_ref().map(|s| hash_token(s.expose_secret())),
        metadata: metadata.clone(),
        expires_at: None,
    };
    let forgotten = state
        .store
        .register_client(&record, now, state.config.max_unused_clients)?;
    for client_id in forgotten {
        // Made room: the oldest client nobody had used (`oauth.max_unused_clients`).
        state.audit.record(AuditEvent::ClientExpired { client_id });
    }
    state.audit.record(AuditEvent::ClientRegistered {
        client_id: client_id.clone(),
        client_name: metadata.client_name.clone(),
        method: "dcr".to_owned(),
        ip: Some(ip.to_string()),
    });

    let mut body = serde_json::to_value(&metadata)
        .map_err(|_| OAuthError::ServerError("cannot encode the registration"))?;
    if let Some(object) = body.as_object_mut() {
        object.retain(|_, value| !value.is_null() && value != &json!([]));
        object.insert("client_id".into(), json!(client_id));
        object.insert("client_id_issued_at".into(), json!(now));
        object.insert("response_types".into(), json!(["code"]));
        if let Some(secret) = &secret {
            object.insert("client_secret".into(), json!(secret.expose_secret()));
            object.insert("client_secret_expires_at".into(), json!(0));
        }
    }
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
