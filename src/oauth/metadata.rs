//! Discovery documents: RFC 9728 protected-resource metadata and RFC 8414 authorization-server
//! metadata (mcp-spec-checklist §2, §4).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::OAuthState;

fn cacheable(body: serde_json::Value) -> Response {
    let mut response = Json(body).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// RFC 9728 §2, served at both well-known URLs (item 10); `resource` is exactly the canonical
/// `/mcp` URL (item 8: clients compare it with the URL they asked about).
pub async fn protected_resource(State(state): State<Arc<OAuthState>>) -> Response {
    cacheable(json!({
        "resource": state.resource,
        "authorization_servers": [state.issuer],
        "bearer_methods_supported": ["header"],
        "resource_name": "Forgejo via forgejo-mcp-broker",
    }))
}

/// RFC 8414 §2 (items 25–34). The same document answers `/.well-known/openid-configuration`
/// because clients try it second (item 26); it claims no OIDC features it lacks.
pub async fn authorization_server(State(state): State<Arc<OAuthState>>) -> Response {
    let issuer = &state.issuer;
    cacheable(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/oauth/authorize"),
        "token_endpoint": format!("{issuer}/oauth/token"),
        "registration_endpoint": format!("{issuer}/oauth/register"),
        "revocation_endpoint": format!("{issuer}/oauth/revoke"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
        "revocation_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
        "client_id_metadata_document_supported": state.config.cimd_enabled,
        "authorization_response_iss_parameter_supported": true,
        "scopes_supported": ["offline_access"],
    }))
}
