//! `POST /oauth/token` (mcp-spec-checklist §6): the `authorization_code` and `refresh_token`
//! grants, client authentication (`none`, `client_secret_post`, `client_secret_basic`),
//! rotation with reuse detection and a grace window.
//!
//! Tokens are opaque: a prefix (so secret scanners recognise them) and 256 random bits. Only
//! their SHA-256 hashes are stored.

use crate::ratelimit::{EndpointClass, RateKey};
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::OAuthState;
use super::error::{OAuthError, OAuthFailure};
use super::store::{ClientRecord, CodeLookup, GrantRecord, IssuedHashes};
use crate::audit::AuditEvent;
use crate::secret::{
    ExposeSecret, SecretString, constant_time_eq, hash_token, pkce_s256, random_id, random_token,
};

pub const ACCESS_TOKEN_PREFIX: &str = "fmba_";
pub const REFRESH_TOKEN_PREFIX: &str = "fmbr_";

/// A token request as it arrives (RFC 6749 §4.1.3, §6; RFC 7636 §4.5; RFC 8707 §2.2).
#[derive(Default, Deserialize)]
pub struct RawTokenRequest {
    pub grant_type: Option<String>,
    pub code: Option<String>,
    pub redirect_uri: Option<String>,
    pub code_verifier: Option<String>,
    pub refresh_token: Option<String>,
    pub resource: Option<String>,
    pub scope: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

impl std::fmt::Debug for RawTokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use super::redacted;
        f.debug_struct("RawTokenRequest")
            .field("grant_type", &self.grant_type)
            .field("code", &redacted(&self.code))
            .field("redirect_uri", &self.redirect_uri)
            .field("code_verifier", &redacted(&self.code_verifier))
            .field("refresh_token", &redacted(&self.refresh_token))
            .field("resource", &self.resource)
            .field("scope", &self.scope)
            .field("client_id", &self.client_id)
            .field("client_secret", &redacted(&self.client_secret))
            .finish()
    }
}

/// The validated grant. Its `Debug` names the grant only: the rest are secrets.
#[derive(PartialEq, Eq)]
pub enum TokenGrant {
    AuthorizationCode {
        code: String,
        code_verifier: String,
        redirect_uri: Option<String>,
        resource: Option<String>,
    },
    RefreshToken {
        refresh_token: String,
        resource: Option<String>,
    },
}

impl std::fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AuthorizationCode { .. } => f.write_str("AuthorizationCode([redacted])"),
            Self::RefreshToken { .. } => f.write_str("RefreshToken([redacted])"),
        }
    }
}

/// RFC 7636 §4.1: 43–128 unreserved characters.
fn valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

impl TryFrom<&RawTokenRequest> for TokenGrant {
    type Error = OAuthError;

    fn try_from(raw: &RawTokenRequest) -> Result<Self, OAuthError> {
        match raw.grant_type.as_deref() {
            Some("authorization_code") => {
                let code = raw
                    .code
                    .clone()
                    .filter(|code| !code.is_empty() && code.len() <= 512)
                    .ok_or(OAuthError::InvalidRequest("code is required"))?;
                let code_verifier = raw.code_verifier.clone().ok_or(OAuthError::InvalidRequest(
                    "code_verifier is required (PKCE)",
                ))?;
                if !valid_verifier(&code_verifier) {
                    return Err(OAuthError::InvalidRequest("code_verifier is malformed"));
                }
                Ok(Self::AuthorizationCode {
                    code,
                    code_verifier,
                    redirect_uri: raw.redirect_uri.clone(),
                    resource: raw.resource.clone(),
                })
            }
            Some("refresh_token") => {
                let refresh_token = raw
                    .refresh_token
                    .clone()
                    .filter(|token| !token.is_empty() && token.len() <= 512)
                    .ok_or(OAuthError::InvalidRequest("refresh_token is required"))?;
                Ok(Self::RefreshToken {
                    refresh_token,
                    resource: raw.resource.clone(),
                })
            }
            Some(_) => Err(OAuthError::UnsupportedGrantType(
                "only authorization_code and refresh_token are supported",
            )),
            None => Err(OAuthError::InvalidRequest("grant_type is required")),
        }
    }
}

/// Parses a form body (pure; fuzz target). Repeated parameters are refused (RFC 6749 §3.2).
pub fn parse_form<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, OAuthError> {
    serde_urlencoded::from_bytes(body)
        .map_err(|_| OAuthError::InvalidRequest("malformed or repeated parameters"))
}

/// Credentials from `Authorization: Basic` (RFC 6749 §2.3.1: each part form-urlencoded).
pub fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    const BAD: OAuthError = OAuthError::InvalidClient("malformed Basic credentials");
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| BAD)?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(BAD);
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(BAD);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| BAD)?;
    let text = String::from_utf8(decoded).map_err(|_| BAD)?;
    let (id, secret) = text.split_once(':').ok_or(BAD)?;
    let decode = |part: &str| -> Result<String, OAuthError> {
        url::form_urlencoded::parse(format!("x={part}").as_bytes())
            .next()
            .map(|(_, value)| value.into_owned())
            .ok_or(BAD)
    };
    Ok(Some((decode(id)?, decode(secret)?)))
}

/// Authenticates the client of a token or revocation request.
pub async fn authenticate_client(
    state: &OAuthState,
    headers: &HeaderMap,
    client_id: Option<&str>,
    client_secret: Option<&str>,
) -> Result<ClientRecord, OAuthError> {
    const FAILED: OAuthError = OAuthError::InvalidClient("client authentication failed");
    let (client_id, secret) = match basic_credentials(headers)? {
        Some((id, secret)) => {
            if client_secret.is_some() || client_id.is_some_and(|body_id| body_id != id) {
                return Err(OAuthError::InvalidRequest(
                    "use one client authentication method",
                ));
            }
            (id, Some(secret))
        }
        None => (
            client_id
                .ok_or(OAuthError::InvalidClient("client_id is required"))?
                .to_owned(),
            client_secret.map(str::to_owned),
        ),
    };
    let client = state.resolve_client(&client_id, true).await?;
    match (&client.secret_hash, secret) {
        (Some(expected), Some(secret)) => {
            if constant_time_eq(hash_token(&secret).as_bytes(), expected.as_bytes()) {
                Ok(client)
            } else {
                Err(FAILED)
            }
        }
        (Some(_), None) => Err(FAILED),
        // A public client: any secret it sends is meaningless, not a reason to refuse.
        (None, _) => Ok(client),
    }
}

/// The per-client limit of `class` (issue #7), applied only to a client that proved itself with
/// its secret ([`authenticate_client`] accepted a confidential client). A public client proves
/// nothing: its id is public, so a budget anyone naming it could spend would let a stranger lock
/// it out. Public clients are limited per IP only. The 429 when over the limit.
pub fn client_rate_refusal(
    state: &OAuthState,
    class: EndpointClass,
    client: &ClientRecord,
) -> Option<Response> {
    let (Some(limiter), Some(_verified_secret)) = (&state.limiter, &client.secret_hash) else {
        return None;
    };
    limiter
        .check(class, &RateKey::client(&client.client_id))
        .err()
        .map(IntoResponse::into_response)
}

#[derive(Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: i64,
    refresh_token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

struct NewPair {
    access: SecretString,
    refresh: SecretString,
    access_expires_at: i64,
    refresh_expires_at: i64,
}

impl NewPair {
    fn generate(state: &OAuthState, now: i64) -> Result<Self, OAuthError> {
        Ok(Self {
            access: SecretString::from(format!(
                "{ACCESS_TOKEN_PREFIX}{}",
                random_token(32)?.expose_secret()
            )),
            refresh: SecretString::from(format!(
                "{REFRESH_TOKEN_PREFIX}{}",
                random_token(32)?.expose_secret()
            )),
            access_expires_at: OAuthState::expires_at(now, state.config.access_token_ttl_secs),
            refresh_expires_at: OAuthState::expires_at(now, state.config.refresh_token_ttl_secs),
        })
    }

    fn respond(self, state: &OAuthState, scope: Option<String>) -> Response {
        let body = TokenResponse {
            access_token: self.access.expose_secret().to_owned(),
            token_type: "Bearer",
            expires_in: OAuthState::ttl(state.config.access_token_ttl_secs),
            refresh_token: self.refresh.expose_secret().to_owned(),
            scope,
        };
        let mut response = Json(body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        response
    }
}

pub async fn token(
    State(state): State<Arc<OAuthState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthFailure> {
    let raw: RawTokenRequest = parse_form(&body)?;
    let grant = TokenGrant::try_from(&raw)?;
    let client = authenticate_client(
        &state,
        &headers,
        raw.client_id.as_deref(),
        raw.client_secret.as_deref(),
    )
    .await?;
    if let Some(limited) = client_rate_refusal(&state, EndpointClass::Token, &client) {
        return Ok(limited);
    }
    let response = match grant {
        TokenGrant::AuthorizationCode {
            code,
            code_verifier,
            redirect_uri,
            resource,
        } => exchange_code(
            &state,
            &client,
            &code,
            &code_verifier,
            redirect_uri,
            resource,
        )?,
        TokenGrant::RefreshToken {
            refresh_token,
            resource,
        } => refresh(&state, &client, &refresh_token, resource)?,
    };
    Ok(response)
}

fn exchange_code(
    state: &OAuthState,
    client: &ClientRecord,
    code: &str,
    code_verifier: &str,
    redirect_uri: Option<String>,
    resource: Option<String>,
) -> Result<Response, OAuthError> {
    const INVALID: OAuthError =
        OAuthError::InvalidGrant("the authorization code is invalid, expired or already used");
    let now = state.now();
    let code_hash = hash_token(code);
    let record = match state.store.take_code(&code_hash, now)? {
        CodeLookup::Unknown => return Err(INVALID),
        CodeLookup::Reused {
            client_id,
            user_id,
            grant_id,
        } => {
            // OAuth 2.1 §4.1.3: a replayed code revokes what it issued, when its own client
            // replays it. Any other client would fail the client check anyway, and must not be
            // able to end another client's grant with a code it should never have held.
            if client_id == client.client_id {
                match grant_id {
                    Some(grant_id) => {
                        state.store.revoke_grant(&grant_id, now)?;
                    }
                    // The first use was still creating its grant: stop it, or, if it has
                    // got there meanwhile, revoke what it made.
                    None => {
                        if let Some(grant_id) = state.store.poison_code(&code_hash)? {
                            state.store.revoke_grant(&grant_id, now)?;
                        }
                    }
                }
            }
            state.audit.record(AuditEvent::CodeReused {
                client_id,
                user_id,
                presented_by: client.client_id.clone(),
            });
            return Err(INVALID);
        }
        CodeLookup::Fresh(record) => record,
    };
    // The code is spent from here on, whatever fails below (single use).
    if record.client_id != client.client_id || record.expires_at <= now {
        return Err(INVALID);
    }
    if redirect_uri.is_some_and(|uri| uri != record.redirect_uri) {
        return Err(OAuthError::InvalidGrant(
            "redirect_uri does not match the authorization request",
        ));
    }
    if !constant_time_eq(
        pkce_s256(code_verifier).as_bytes(),
        record.code_challenge.as_bytes(),
    ) {
        return Err(OAuthError::InvalidGrant("PKCE verification failed"));
    }
    if let Some(resource) = resource
        && state.check_resource(&resource)? != record.resource
    {
        return Err(OAuthError::InvalidTarget(
            "resource does not match the authorization request",
        ));
    }
    let grant = GrantRecord {
        grant_id: random_id(16)?,
        client_id: record.client_id.clone(),
        user_id: record.user_id,
        username: record.username.clone(),
        resource: record.resource.clone(),
        scope: record.scope.clone(),
        revoked: false,
    };
    let pair = NewPair::generate(state, now)?;
    state.store.create_grant(
        &grant,
        &code_hash,
        &IssuedHashes {
            access_hash: &hash_token(pair.access.expose_secret()),
            access_expires_at: pair.access_expires_at,
            refresh_hash: &hash_token(pair.refresh.expose_secret()),
            refresh_expires_at: pair.refresh_expires_at,
        },
        now,
    )?;
    state.audit.record(AuditEvent::TokenIssued {
        client_id: grant.client_id.clone(),
        user_id: grant.user_id,
        grant_id: grant.grant_id.clone(),
    });
    Ok(pair.respond(state, grant.scope))
}

fn refresh(
    state: &OAuthState,
    client: &ClientRecord,
    refresh_token: &str,
    resource: Option<String>,
) -> Result<Response, OAuthError> {
    let now = state.now();
    let token_hash = hash_token(refresh_token);
    let found = state
        .store
        .find_refresh(&token_hash)?
        .ok_or(INVALID_REFRESH)?;
    let grant = &found.grant;
    if grant.client_id != client.client_id || grant.revoked {
        return Err(INVALID_REFRESH);
    }
    // Grace 0 means none: a replay in the same second as the rotation is theft too.
    let grace = OAuthState::ttl(state.config.refresh_grace_secs);
    let within_grace = match found.used_at {
        None => false,
        Some(used_at) if !found.grace_used && grace > 0 && now - used_at <= grace => true,
        // A rotated token that comes back is theft however old it is: judged before expiry.
        Some(_) => return Err(reuse_detected(state, grant, now)?),
    };
    if found.expires_at <= now {
        return Err(INVALID_REFRESH);
    }
    if let Some(resource) = resource
        && state.check_resource(&resource)? != grant.resource
    {
        return Err(OAuthError::InvalidTarget(
            "resource does not match the grant",
        ));
    }
    // Checklist item 24: no broker token outlives the user's Forgejo grant.
    if !state.upstream.is_alive(grant.user_id)? {
        return Err(OAuthError::InvalidGrant(
            "the Forgejo authorization has ended; authorize again",
        ));
    }
    let pair = NewPair::generate(state, now)?;
    let rotated = state.store.rotate_refresh(
        &token_hash,
        within_grace,
        grace,
        &grant.grant_id,
        &IssuedHashes {
            access_hash: &hash_token(pair.access.expose_secret()),
            access_expires_at: pair.access_expires_at,
            refresh_hash: &hash_token(pair.refresh.expose_secret()),
            refresh_expires_at: pair.refresh_expires_at,
        },
        now,
    )?;
    if !rotated {
        // Lost a race with concurrent uses of the same token (the grace replay included):
        // judged as it would be had it come just after them, a reuse.
        return Err(reuse_detected(state, grant, now)?);
    }
    state.audit.record(AuditEvent::TokenRefreshed {
        client_id: grant.client_id.clone(),
        user_id: grant.user_id,
        grant_id: grant.grant_id.clone(),
    });
    Ok(pair.respond(state, grant.scope.clone()))
}

/// What a refresh with an unusable refresh token gets, whatever the reason.
const INVALID_REFRESH: OAuthError =
    OAuthError::InvalidGrant("the refresh token is invalid, expired or revoked");

/// A rotated refresh token came back: treated as theft, its whole family is revoked (OAuth 2.1
/// §4.3.1). The error to answer with.
fn reuse_detected(
    state: &OAuthState,
    grant: &GrantRecord,
    now: crate::clock::UnixSeconds,
) -> Result<OAuthError, OAuthError> {
    state.store.revoke_grant(&grant.grant_id, now)?;
    state.audit.record(AuditEvent::RefreshTokenReuse {
        client_id: grant.client_id.clone(),
        user_id: grant.user_id,
        grant_id: grant.grant_id.clone(),
    });
    Ok(INVALID_REFRESH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(form: &str) -> RawTokenRequest {
        parse_form(form.as_bytes()).unwrap()
    }

    #[test]
    fn grants_are_validated() {
        let verifier = "a".repeat(43);
        assert!(matches!(
            TokenGrant::try_from(&raw(&format!(
                "grant_type=authorization_code&code=c&code_verifier={verifier}"
            ))),
            Ok(TokenGrant::AuthorizationCode { .. })
        ));
        let cases = [
            ("grant_type=authorization_code&code=c", "invalid_request"),
            (
                "grant_type=authorization_code&code=c&code_verifier=short",
                "invalid_request",
            ),
            ("grant_type=refresh_token", "invalid_request"),
            ("grant_type=password&username=a", "unsupported_grant_type"),
            ("code=c", "invalid_request"),
        ];
        for (form, code) in cases {
            assert_eq!(
                TokenGrant::try_from(&raw(form)).unwrap_err().code(),
                code,
                "{form}"
            );
        }
        assert!(parse_form::<RawTokenRequest>(b"grant_type=a&grant_type=b").is_err());
    }

    #[test]
    fn debug_output_never_shows_codes_verifiers_or_tokens() {
        let raw = raw(
            "grant_type=authorization_code&code=secret-code-1&code_verifier=secret-verifier-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\
             &refresh_token=secret-refresh&client_secret=secret-client",
        );
        let grant = TokenGrant::try_from(&raw).unwrap();
        let text = format!("{raw:?} {grant:?}");
        assert!(!text.contains("secret-"), "{text}");
        assert!(text.contains("authorization_code"));
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let mut headers = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode("my%20id:p%3Aw+d");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
        );
        assert_eq!(
            basic_credentials(&headers).unwrap(),
            Some(("my id".to_owned(), "p:w d".to_owned()))
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert!(basic_credentials(&headers).is_err());
    }
}
