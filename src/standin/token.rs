//! Forgejo's token endpoint logic, step for step as `routers/web/auth/oauth.go` does it
//! (`AccessTokenOAuth`, `handleRefreshToken`, `handleAuthorizationCode`,
//! `newAccessTokenResponse`, `IntrospectOAuth`); see forgejo-facts.md §1.2–§1.5. Error codes and
//! descriptions are Forgejo's, including where they differ from RFC 6749.

use serde::Serialize;

use super::authorize::redirect_uri_registered;
use super::config::StandinApp;
use super::state::{AuthorizationCode, Grant, Inner, TokenKind, jwt_shaped};
use crate::clock::UnixSeconds;
use crate::secret::{ExposeSecret, RandomError, constant_time_eq, pkce_s256};

/// Token endpoint error codes Forgejo uses (`AccessTokenErrorCode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
}

impl TokenErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
        }
    }
}

/// A token endpoint refusal: always HTTP 400 with `{error, error_description}` (§1.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {description}", code.as_str())]
pub struct TokenError {
    pub code: TokenErrorCode,
    pub description: String,
}

fn token_error(code: TokenErrorCode, description: impl Into<String>) -> TokenError {
    TokenError {
        code,
        description: description.into(),
    }
}

/// The token endpoint's form (`forms.AccessTokenForm`); every field may be empty. Its `Debug`
/// shows only the non-secret fields.
#[derive(Default, Clone, serde::Deserialize)]
#[serde(default)]
pub struct RawTokenRequest {
    pub grant_type: String,
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uri: String,
    pub code: String,
    pub refresh_token: String,
    pub code_verifier: String,
}

impl std::fmt::Debug for RawTokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawTokenRequest")
            .field("grant_type", &self.grant_type)
            .field("client_id", &self.client_id)
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

/// `AccessTokenResponse`. `token_type` is lowercase `bearer`, as Forgejo sends it. Its `Debug`
/// hides the tokens.
#[derive(Clone, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub refresh_token: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id_token: String,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// Fills client credentials from an HTTP Basic header when the body lacks either, rejecting a
/// header that disagrees with the body, exactly as `AccessTokenOAuth` does. Forgejo does not
/// URL-decode the Basic credentials, and neither does this.
pub fn merge_basic_auth(
    request: &mut RawTokenRequest,
    authorization: Option<&str>,
) -> Result<(), TokenError> {
    if !request.client_id.is_empty() && !request.client_secret.is_empty() {
        return Ok(());
    }
    let Some((scheme, payload)) = authorization.and_then(|header| header.split_once(' ')) else {
        return Ok(());
    };
    if scheme != "Basic" {
        return Ok(());
    }
    use base64::Engine as _;
    let unparsable = || {
        token_error(
            TokenErrorCode::InvalidRequest,
            "cannot parse basic auth header",
        )
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .map_err(|_| unparsable())?;
    let decoded = String::from_utf8(decoded).map_err(|_| unparsable())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(unparsable)?;
    if !request.client_id.is_empty() && request.client_id != id {
        return Err(token_error(
            TokenErrorCode::InvalidRequest,
            "client_id in request body inconsistent with Authorization header",
        ));
    }
    request.client_id = id.to_string();
    if !request.client_secret.is_empty() && request.client_secret != secret {
        return Err(token_error(
            TokenErrorCode::InvalidRequest,
            "client_secret in request body inconsistent with Authorization header",
        ));
    }
    request.client_secret = secret.to_string();
    Ok(())
}

/// Runs one token request against the state (fault injection is the caller's business).
pub fn exchange(
    inner: &mut Inner,
    request: &RawTokenRequest,
    now: UnixSeconds,
) -> Result<TokenResponse, TokenError> {
    match request.grant_type.as_str() {
        "refresh_token" => refresh(inner, request, now),
        "authorization_code" => authorization_code(inner, request, now),
        _ => Err(token_error(
            TokenErrorCode::UnsupportedGrantType,
            "Only refresh_token or authorization_code grant type is supported",
        )),
    }
}

fn secret_matches(app: &StandinApp, presented: &str) -> bool {
    match &app.client_secret {
        Some(secret) => constant_time_eq(secret.expose_secret().as_bytes(), presented.as_bytes()),
        None => true,
    }
}

fn secret_error_description(presented: &str) -> &'static str {
    if presented.is_empty() {
        "invalid empty client secret"
    } else {
        "invalid client secret"
    }
}

fn refresh(
    inner: &mut Inner,
    request: &RawTokenRequest,
    now: UnixSeconds,
) -> Result<TokenResponse, TokenError> {
    let app = inner.app(&request.client_id).ok_or_else(|| {
        token_error(
            TokenErrorCode::InvalidClient,
            format!("cannot load client with client id: {:?}", request.client_id),
        )
    })?;
    // RFC 6749 §6: confidential clients authenticate on refresh too.
    if app.is_confidential() && !secret_matches(app, &request.client_secret) {
        return Err(token_error(
            TokenErrorCode::InvalidClient,
            secret_error_description(&request.client_secret),
        ));
    }
    // Forgejo parses the JWT (signature and `exp`); an unknown or expired token fails here.
    let unparsable = || {
        token_error(
            TokenErrorCode::UnauthorizedClient,
            "unable to parse refresh token",
        )
    };
    let record = inner
        .tokens
        .get(&request.refresh_token)
        .filter(|record| record.expires_at > now)
        .cloned()
        .ok_or_else(unparsable)?;
    let grant = inner
        .grants
        .get(&record.grant_id)
        .cloned()
        .ok_or_else(|| token_error(TokenErrorCode::InvalidGrant, "grant does not exist"))?;
    // Later Forgejo (forgejo-facts.md §1.5) refuses a token from another application.
    if grant.client_id != request.client_id {
        return Err(token_error(
            TokenErrorCode::InvalidGrant,
            "refresh token was not issued to this client",
        ));
    }
    // The rotation check (§1.5): an access token has counter 0 and fails it too. Nothing is
    // revoked on reuse.
    let token_counter = match record.kind {
        TokenKind::Refresh => record.counter,
        TokenKind::Access => 0,
    };
    if inner.settings.invalidate_refresh_tokens
        && (grant.counter != token_counter || token_counter == 0)
    {
        tracing::warn!(
            grant_id = grant.id,
            "stand-in Forgejo: a refresh token was used twice"
        );
        return Err(token_error(
            TokenErrorCode::UnauthorizedClient,
            "token was already used",
        ));
    }
    if record.kind != TokenKind::Refresh {
        return Err(unparsable());
    }
    new_token_response(inner, grant.id, now)
}

fn authorization_code(
    inner: &mut Inner,
    request: &RawTokenRequest,
    now: UnixSeconds,
) -> Result<TokenResponse, TokenError> {
    let app = inner.app(&request.client_id).ok_or_else(|| {
        token_error(
            TokenErrorCode::InvalidClient,
            format!("cannot load client with client id: '{}'", request.client_id),
        )
    })?;
    // Forgejo answers a bad secret on this grant with `unauthorized_client` (not
    // `invalid_client` as on refresh).
    if app.is_confidential() && !secret_matches(app, &request.client_secret) {
        return Err(token_error(
            TokenErrorCode::UnauthorizedClient,
            secret_error_description(&request.client_secret),
        ));
    }
    let unexpected_redirect = || {
        token_error(
            TokenErrorCode::UnauthorizedClient,
            "unexpected redirect URI",
        )
    };
    if !request.redirect_uri.is_empty() && !redirect_uri_registered(app, &request.redirect_uri) {
        return Err(unexpected_redirect());
    }
    let code = inner
        .codes
        .get(&request.code)
        .filter(|code| match inner.settings.authorization_code_lifetime {
            Some(lifetime) => code.issued_at.saturating_add(lifetime) > now,
            None => true,
        })
        .cloned()
        .ok_or_else(|| {
            token_error(
                TokenErrorCode::UnauthorizedClient,
                "client is not authorized",
            )
        })?;
    // Later Forgejo requires the same redirect URI as on the authorize request (§1.2).
    if !request.redirect_uri.is_empty()
        && !request
            .redirect_uri
            .eq_ignore_ascii_case(&code.redirect_uri)
    {
        return Err(unexpected_redirect());
    }
    // The code is kept on a PKCE failure: Forgejo deletes it only on success.
    if !code_challenge_satisfied(&code, &request.code_verifier) {
        return Err(token_error(
            TokenErrorCode::UnauthorizedClient,
            "failed PKCE code challenge",
        ));
    }
    let grant_client = inner
        .grants
        .get(&code.grant_id)
        .map(|grant| grant.client_id.clone());
    if grant_client.as_deref() != Some(request.client_id.as_str()) {
        return Err(token_error(TokenErrorCode::InvalidGrant, "invalid grant"));
    }
    inner.codes.remove(&request.code);
    new_token_response(inner, code.grant_id, now)
}

/// `ValidateCodeChallenge`: an empty stored method means no PKCE was used, so no check.
fn code_challenge_satisfied(code: &AuthorizationCode, verifier: &str) -> bool {
    match code.code_challenge_method.as_str() {
        "S256" => constant_time_eq(
            pkce_s256(verifier).as_bytes(),
            code.code_challenge.as_bytes(),
        ),
        "plain" => constant_time_eq(verifier.as_bytes(), code.code_challenge.as_bytes()),
        "" => true,
        _ => false,
    }
}

/// Issues a token response for an existing grant, as a successful code exchange would.
pub fn issue_for_grant(
    inner: &mut Inner,
    grant_id: i64,
    now: UnixSeconds,
) -> Result<TokenResponse, TokenError> {
    new_token_response(inner, grant_id, now)
}

/// `newAccessTokenResponse`: bump the grant's counter (which invalidates every earlier refresh
/// token, §0.1), then sign a new access token, refresh token and, for `openid`, an id token.
fn new_token_response(
    inner: &mut Inner,
    grant_id: i64,
    now: UnixSeconds,
) -> Result<TokenResponse, TokenError> {
    let server_error =
        |_: RandomError| token_error(TokenErrorCode::InvalidRequest, "cannot sign token");
    let invalidate = inner.settings.invalidate_refresh_tokens;
    let grant = inner.grants.get_mut(&grant_id).ok_or_else(|| {
        token_error(
            TokenErrorCode::InvalidGrant,
            "cannot increase the grant counter",
        )
    })?;
    if invalidate {
        grant.counter = grant.counter.saturating_add(1);
    }
    let grant = grant.clone();
    let access_token = inner
        .mint_token(grant_id, TokenKind::Access, 0, now)
        .map_err(server_error)?;
    let refresh_token = inner
        .mint_token(grant_id, TokenKind::Refresh, grant.counter, now)
        .map_err(server_error)?;
    let id_token = if scope_contains(&grant.scope, "openid") {
        id_token(inner, &grant, now).map_err(server_error)?
    } else {
        String::new()
    };
    Ok(TokenResponse {
        access_token,
        token_type: "bearer",
        expires_in: inner.settings.access_token_lifetime,
        refresh_token,
        id_token,
    })
}

fn id_token(inner: &Inner, grant: &Grant, now: UnixSeconds) -> Result<String, RandomError> {
    let mut claims = serde_json::json!({
        "iss": inner.base_url,
        "aud": [grant.client_id],
        "sub": grant.user_id.to_string(),
        "exp": now.saturating_add(inner.settings.access_token_lifetime),
        "nonce": grant.nonce,
    });
    if let (Some(user), Some(object)) = (inner.user(grant.user_id), claims.as_object_mut()) {
        if scope_contains(&grant.scope, "profile") {
            object.insert("name".into(), user.full_name.clone().into());
            object.insert("preferred_username".into(), user.login.clone().into());
        }
        if scope_contains(&grant.scope, "email") {
            object.insert("email".into(), user.email.clone().into());
            object.insert("email_verified".into(), true.into());
        }
    }
    jwt_shaped(&claims)
}

/// `IntrospectOAuth`: the client authenticates with HTTP Basic only; an unknown, expired or
/// revoked token is `{"active": false}`. Returns `None` when the client failed to authenticate.
pub fn introspect(
    inner: &Inner,
    authorization: Option<&str>,
    token: &str,
    now: UnixSeconds,
) -> Option<serde_json::Value> {
    let mut credentials = RawTokenRequest::default();
    merge_basic_auth(&mut credentials, authorization).ok()?;
    let app = inner.app(&credentials.client_id)?;
    if credentials.client_id.is_empty() || !secret_matches(app, &credentials.client_secret) {
        return None;
    }
    let active = inner
        .tokens
        .get(token)
        .filter(|record| record.expires_at > now)
        .and_then(|record| {
            inner
                .grants
                .get(&record.grant_id)
                .map(|grant| (record, grant))
        })
        .and_then(|(record, grant)| {
            let app = inner.app(&grant.client_id)?;
            Some(serde_json::json!({
                "active": true,
                "scope": grant.scope,
                "iss": inner.base_url,
                "aud": [app.client_id],
                "sub": grant.user_id.to_string(),
                "exp": record.expires_at,
            }))
        });
    Some(active.unwrap_or_else(|| serde_json::json!({"active": false})))
}

/// `grant.ScopeContains`: whole words of the space-separated scope.
pub fn scope_contains(scope: &str, wanted: &str) -> bool {
    scope.split(' ').any(|word| word == wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_fills_and_must_agree_with_the_body() {
        let header = format!(
            "Basic {}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "id:sec")
        );
        let mut request = RawTokenRequest::default();
        merge_basic_auth(&mut request, Some(&header)).unwrap();
        assert_eq!(
            (request.client_id.as_str(), request.client_secret.as_str()),
            ("id", "sec")
        );

        let mut request = RawTokenRequest {
            client_id: "other".into(),
            ..RawTokenRequest::default()
        };
        let error = merge_basic_auth(&mut request, Some(&header)).unwrap_err();
        assert_eq!(error.code, TokenErrorCode::InvalidRequest);

        let mut request = RawTokenRequest::default();
        let error = merge_basic_auth(&mut request, Some("Basic !!!")).unwrap_err();
        assert_eq!(error.description, "cannot parse basic auth header");
    }

    #[test]
    fn debug_output_hides_secrets_and_tokens() {
        let request = RawTokenRequest {
            client_secret: "s3cret-value".into(),
            refresh_token: "refresh-value".into(),
            code: "gta_code-value".into(),
            code_verifier: "verifier-value".into(),
            ..RawTokenRequest::default()
        };
        let response = TokenResponse {
            access_token: "access-value".into(),
            token_type: "bearer",
            expires_in: 1,
            refresh_token: "refresh-value".into(),
            id_token: "id-value".into(),
        };
        let printed = format!("{request:?} {response:?}");
        for secret in [
            "s3cret",
            "refresh-value",
            "code-value",
            "verifier-value",
            "access-value",
        ] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }

    #[test]
    fn pkce_methods_are_checked_as_forgejo_does() {
        let code = |method: &str, challenge: &str| AuthorizationCode {
            grant_id: 1,
            redirect_uri: String::new(),
            code_challenge: challenge.into(),
            code_challenge_method: method.into(),
            issued_at: 0,
        };
        let verifier = "dBjftJeZ4CVP-mJ0q7Jtw8xQrB9DK3mZ8IHb3wR2gNc";
        assert!(code_challenge_satisfied(
            &code("S256", &pkce_s256(verifier)),
            verifier
        ));
        assert!(!code_challenge_satisfied(
            &code("S256", &pkce_s256(verifier)),
            "wrong"
        ));
        assert!(code_challenge_satisfied(&code("plain", "abc"), "abc"));
        assert!(!code_challenge_satisfied(&code("plain", "abc"), "abd"));
        assert!(code_challenge_satisfied(&code("", ""), "anything"));
        assert!(!code_challenge_satisfied(&code("S512", "x"), "x"));
    }
}
