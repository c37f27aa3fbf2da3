//! Forgejo's OAuth2 provider logic, step for step as `routers/web/auth/oauth.go` does it
//! (`AuthorizeOAuth`, `GrantApplicationOAuth`, `AccessTokenOAuth`, `handleRefreshToken`,
//! `handleAuthorizationCode`, `newAccessTokenResponse`); see forgejo-facts.md §1. Error codes
//! and descriptions are Forgejo's, including where they differ from RFC 6749.

use std::net::IpAddr;

use serde::Serialize;

use super::config::{ConsentMode, StandinApp};
use super::state::{AuthorizationCode, Inner, PendingConsent, TokenKind, jwt_shaped};
use crate::clock::UnixSeconds;
use crate::secret::{ExposeSecret, RandomError, constant_time_eq, pkce_s256, random_id};

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

/// The token endpoint's form (`forms.AccessTokenForm`); every field may be empty.
#[derive(Debug, Default, Clone, serde::Deserialize)]
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

/// `AccessTokenResponse`. `token_type` is lowercase `bearer`, as Forgejo sends it.
#[derive(Debug, Clone, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub refresh_token: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id_token: String,
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

fn id_token(
    inner: &Inner,
    grant: &super::state::Grant,
    now: UnixSeconds,
) -> Result<String, RandomError> {
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

/// `grant.ScopeContains`: whole words of the space-separated scope.
pub fn scope_contains(scope: &str, wanted: &str) -> bool {
    scope.split(' ').any(|word| word == wanted)
}

/// `ContainsRedirectURI` (forgejo-facts.md §1.8): exact but case-insensitive, one trailing `/`
/// ignored; for public clients only, an `http` IP-literal loopback URI matches with any port.
pub fn redirect_uri_registered(app: &StandinApp, redirect_uri: &str) -> bool {
    let normalise = |uri: &str| {
        let lower = uri.to_lowercase();
        lower.strip_suffix('/').map(str::to_string).unwrap_or(lower)
    };
    let contains = |uri: &str| {
        let wanted = normalise(uri);
        app.redirect_uris
            .iter()
            .any(|registered| normalise(registered) == wanted)
    };
    if !app.is_confidential()
        && let Ok(mut parsed) = url::Url::parse(redirect_uri)
        && parsed.scheme() == "http"
        && parsed.port().is_some()
        && parsed
            .host_str()
            .map(|host| host.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|host| host.parse::<IpAddr>().ok())
            .is_some_and(|ip| ip.is_loopback())
        && parsed.set_port(None).is_ok()
        && contains(parsed.as_str())
    {
        return true;
    }
    contains(redirect_uri)
}

/// What `/login/oauth/authorize` does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeOutcome {
    /// Nobody is logged in: Forgejo sends the browser to its sign-in page.
    LoginRequired,
    /// Forgejo's HTML error page (HTTP 400): the client or redirect URI cannot be trusted, so
    /// the browser is not sent back.
    ErrorPage { description: String },
    /// A 303 to the client's redirect URI, with `code` or `error`.
    Redirect(String),
    /// The consent page, with the value that identifies its form.
    Consent(ConsentPage),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentPage {
    pub form_id: String,
    pub app_name: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub state: String,
    pub scope: String,
    pub nonce: String,
}

/// The authorize request's fields (`forms.AuthorizationForm`); absent means empty.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(default)]
pub struct RawAuthorizeRequest {
    pub response_type: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub state: String,
    pub scope: String,
    pub nonce: String,
    pub code_challenge_method: String,
    pub code_challenge: String,
}

/// `handleAuthorizeError` with a redirect URI: `error`, `error_description` and `state`
/// (always, even empty) added to the query, keys sorted as Go's `url.Values.Encode` does.
pub fn error_redirect(redirect_uri: &str, error: &str, description: &str, state: &str) -> String {
    with_query(
        redirect_uri,
        &[
            ("error", error),
            ("error_description", description),
            ("state", state),
        ],
    )
}

fn with_query(uri: &str, set: &[(&str, &str)]) -> String {
    let Ok(mut parsed) = url::Url::parse(uri) else {
        return uri.to_string();
    };
    let mut pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(key, _)| !set.iter().any(|(name, _)| name == key))
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    pairs.extend(
        set.iter()
            .map(|(key, value)| ((*key).to_string(), (*value).to_string())),
    );
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    parsed.query_pairs_mut().clear().extend_pairs(pairs);
    parsed.to_string()
}

/// `GenerateRedirectURI`: `code`, and `state` when one was sent.
fn code_redirect(redirect_uri: &str, code: &str, state: &str) -> String {
    if state.is_empty() {
        with_query(redirect_uri, &[("code", code)])
    } else {
        with_query(redirect_uri, &[("code", code), ("state", state)])
    }
}

/// `GenerateNewAuthorizationCode`: `gta_` and base32 of random bytes, as Forgejo's codes look.
fn new_code(
    inner: &mut Inner,
    grant_id: i64,
    redirect_uri: &str,
    code_challenge: &str,
    code_challenge_method: &str,
    now: UnixSeconds,
) -> Result<String, RandomError> {
    let code = format!(
        "gta_{}",
        random_id(32)?.to_lowercase().replace(['-', '_'], "a")
    );
    inner.codes.insert(
        code.clone(),
        AuthorizationCode {
            grant_id,
            redirect_uri: redirect_uri.to_string(),
            code_challenge: code_challenge.to_string(),
            code_challenge_method: code_challenge_method.to_string(),
            issued_at: now,
        },
    );
    Ok(code)
}

/// `AuthorizeOAuth`, for the user whose session the browser carries.
pub fn authorize(
    inner: &mut Inner,
    request: &RawAuthorizeRequest,
    now: UnixSeconds,
) -> Result<AuthorizeOutcome, RandomError> {
    let Some(user_id) = inner.logged_in_user.filter(|id| inner.user(*id).is_some()) else {
        return Ok(AuthorizeOutcome::LoginRequired);
    };
    let Some(app) = inner.app(&request.client_id).cloned() else {
        return Ok(AuthorizeOutcome::ErrorPage {
            description: "Client ID not registered".into(),
        });
    };
    if !redirect_uri_registered(&app, &request.redirect_uri) {
        return Ok(AuthorizeOutcome::ErrorPage {
            description: "Unregistered Redirect URI".into(),
        });
    }
    let redirect_error = |error: &str, description: &str| {
        AuthorizeOutcome::Redirect(error_redirect(
            &request.redirect_uri,
            error,
            description,
            &request.state,
        ))
    };
    if request.response_type != "code" {
        return Ok(redirect_error(
            "unsupported_response_type",
            "Only code response type is supported.",
        ));
    }
    match request.code_challenge_method.as_str() {
        "S256" | "plain" => {}
        // RFC 7636 §4.4.1 and RFC 8252 §8.1: public clients must use PKCE.
        "" if !app.is_confidential() => {
            return Ok(redirect_error(
                "invalid_request",
                "PKCE is required for public clients",
            ));
        }
        "" => {}
        _ => {
            return Ok(redirect_error(
                "invalid_request",
                "unsupported code challenge method",
            ));
        }
    }
    // A confidential client with an existing grant skips the consent page; the requested
    // scope is ignored and the old grant's scope stays (§1.7, §0.5).
    if app.is_confidential()
        && let Some(grant) = inner.grant_for(user_id, &app.client_id).cloned()
    {
        if !request.nonce.is_empty()
            && let Some(stored) = inner.grants.get_mut(&grant.id)
        {
            stored.nonce.clone_from(&request.nonce);
        }
        let code = new_code(
            inner,
            grant.id,
            &request.redirect_uri,
            &request.code_challenge,
            &request.code_challenge_method,
            now,
        )?;
        return Ok(AuthorizeOutcome::Redirect(code_redirect(
            &request.redirect_uri,
            &code,
            &request.state,
        )));
    }
    let pending = PendingConsent {
        user_id,
        client_id: app.client_id.clone(),
        redirect_uri: request.redirect_uri.clone(),
        state: request.state.clone(),
        code_challenge: request.code_challenge.clone(),
        code_challenge_method: request.code_challenge_method.clone(),
    };
    match inner.consent {
        ConsentMode::AutoApprove => {
            grant_consent(inner, &pending, true, &request.scope, &request.nonce, now)
                .map(AuthorizeOutcome::Redirect)
        }
        ConsentMode::Deny => {
            grant_consent(inner, &pending, false, &request.scope, &request.nonce, now)
                .map(AuthorizeOutcome::Redirect)
        }
        ConsentMode::ShowPage => {
            let form_id = random_id(24)?;
            inner.pending_consents.insert(form_id.clone(), pending);
            Ok(AuthorizeOutcome::Consent(ConsentPage {
                form_id,
                app_name: app.name.clone(),
                client_id: app.client_id.clone(),
                redirect_uri: request.redirect_uri.clone(),
                state: request.state.clone(),
                scope: request.scope.clone(),
                nonce: request.nonce.clone(),
            }))
        }
    }
}

/// `GrantApplicationOAuth` after the session checks: the user's answer on the consent page.
/// Returns the URL to send the browser to.
pub fn grant_consent(
    inner: &mut Inner,
    pending: &PendingConsent,
    granted: bool,
    scope: &str,
    nonce: &str,
    now: UnixSeconds,
) -> Result<String, RandomError> {
    let redirect_error = |error: &str, description: &str| {
        error_redirect(&pending.redirect_uri, error, description, &pending.state)
    };
    if !granted {
        return Ok(redirect_error("access_denied", "the request is denied"));
    }
    let grant_id = match inner.grant_for(pending.user_id, &pending.client_id) {
        None => inner.create_grant(pending.user_id, &pending.client_id, scope),
        Some(grant) if grant.scope != scope => {
            return Ok(redirect_error(
                "server_error",
                "a grant exists with different scope",
            ));
        }
        Some(grant) => grant.id,
    };
    if !nonce.is_empty()
        && let Some(grant) = inner.grants.get_mut(&grant_id)
    {
        grant.nonce = nonce.to_string();
    }
    // Forgejo ≤ v11 loses the challenge on this path (§1.3); later versions keep it.
    let (challenge, method) = if inner.settings.lose_pkce_on_consent_page {
        ("", "")
    } else {
        (
            pending.code_challenge.as_str(),
            pending.code_challenge_method.as_str(),
        )
    };
    let code = new_code(
        inner,
        grant_id,
        &pending.redirect_uri,
        challenge,
        method,
        now,
    )?;
    Ok(code_redirect(&pending.redirect_uri, &code, &pending.state))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public_app() -> StandinApp {
        StandinApp::public(
            "pub",
            ["http://127.0.0.1/callback", "https://app.example/CB/"],
        )
    }

    #[test]
    fn redirect_uris_match_case_insensitively_ignoring_one_trailing_slash() {
        let app = public_app();
        assert!(redirect_uri_registered(&app, "https://APP.example/cb"));
        assert!(redirect_uri_registered(&app, "https://app.example/cb/"));
        assert!(!redirect_uri_registered(&app, "https://app.example/cb//"));
        assert!(!redirect_uri_registered(&app, "https://app.example/cb/x"));
        assert!(!redirect_uri_registered(&app, "https://app.example/cb?x=1"));
    }

    #[test]
    fn loopback_ports_are_ignored_for_public_ip_literals_only() {
        let app = public_app();
        assert!(redirect_uri_registered(
            &app,
            "http://127.0.0.1:5173/callback"
        ));
        assert!(!redirect_uri_registered(
            &app,
            "http://localhost:5173/callback"
        ));
        let confidential = StandinApp::confidential("c", "s", ["http://127.0.0.1/callback"]);
        assert!(!redirect_uri_registered(
            &confidential,
            "http://127.0.0.1:5173/callback"
        ));
    }

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
    fn error_redirects_keep_existing_query_and_sort_keys() {
        let url = error_redirect("https://c.example/cb?z=1", "access_denied", "no", "");
        assert_eq!(
            url,
            "https://c.example/cb?error=access_denied&error_description=no&state=&z=1"
        );
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
