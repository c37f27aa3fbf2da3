//! `GET /oauth/authorize` and `POST /oauth/consent` (mcp-spec-checklist §5, §9).
//!
//! Order matters (RFC 6749 §4.1.2.1): until the client and its redirect URI are known good,
//! errors are shown as a page, never redirected; after that, errors go back to the client with
//! `state` and `iss`. Then the broker's own consent page (confused-deputy rule, items 47, 80–86)
//! comes *before* anything is sent to Forgejo. The consent form is bound to the browser by a
//! cookie and to the pending authorization by a single-use CSRF token.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use url::Url;

use super::OAuthState;
use super::client::redirect_uri_matches;
use super::error::{Delivery, OAuthError, OAuthFailure, client_redirect_url};
use super::pages::{ConsentView, consent_page, harden_page_headers};
use super::store::{ClientRecord, PendingAuthorization};
use crate::audit::AuditEvent;
use crate::config::is_loopback_url;
use crate::ratelimit::ClientIp;
use crate::secret::{
    ExposeSecret, SecretString, constant_time_eq, hash_token, random_id, random_token,
};

pub const MAX_STATE_LEN: usize = 2000;

/// The authorization request as it arrives (RFC 6749 §4.1.1, RFC 7636 §4.3, RFC 8707 §2).
/// Duplicate parameters fail deserialisation (RFC 6749 §3.1: MUST NOT repeat).
#[derive(Debug, Default, Deserialize)]
pub struct RawAuthorizeRequest {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub resource: Option<String>,
}

/// The parts checked without knowing the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedParams {
    pub code_challenge: String,
    pub resource: String,
    pub scope: Option<String>,
}

/// A syntactically checked request. `checked` holds the outcome of the checks whose failure is
/// reported by redirect, once the redirect URI is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizeParams {
    pub client_id: String,
    pub redirect_uri: Option<String>,
    pub state: Option<String>,
    pub checked: Result<CheckedParams, OAuthError>,
}

/// RFC 7636 §4.2: S256 challenges are 43 base64url characters.
fn valid_s256_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl TryFrom<RawAuthorizeRequest> for AuthorizeParams {
    type Error = OAuthError;

    fn try_from(raw: RawAuthorizeRequest) -> Result<Self, OAuthError> {
        let client_id = raw
            .client_id
            .filter(|id| !id.is_empty() && id.len() <= 2000)
            .ok_or(OAuthError::InvalidRequest("client_id is required"))?;
        if raw
            .state
            .as_ref()
            .is_some_and(|state| state.len() > MAX_STATE_LEN)
        {
            return Err(OAuthError::InvalidRequest("state is too long"));
        }
        let checked = (|| {
            if raw.response_type.as_deref() != Some("code") {
                return Err(OAuthError::UnsupportedResponseType(
                    "only response_type=code is supported",
                ));
            }
            let code_challenge = raw.code_challenge.ok_or(OAuthError::InvalidRequest(
                "PKCE code_challenge is required",
            ))?;
            // RFC 7636 §4.3: an absent method means plain, which OAuth 2.1 forbids here.
            if raw.code_challenge_method.as_deref() != Some("S256") {
                return Err(OAuthError::InvalidRequest(
                    "code_challenge_method must be S256",
                ));
            }
            if !valid_s256_challenge(&code_challenge) {
                return Err(OAuthError::InvalidRequest("code_challenge is malformed"));
            }
            let resource = raw
                .resource
                .ok_or(OAuthError::InvalidTarget("resource is required (RFC 8707)"))?;
            let scope = raw.scope.filter(|scope| !scope.is_empty());
            if scope.as_ref().is_some_and(|scope| scope.len() > 1000) {
                return Err(OAuthError::InvalidScope("scope is too long"));
            }
            Ok(CheckedParams {
                code_challenge,
                resource,
                scope,
            })
        })();
        Ok(Self {
            client_id,
            redirect_uri: raw.redirect_uri,
            state: raw.state,
            checked,
        })
    }
}

/// Parses the raw query string (pure; fuzz target).
pub fn parse_authorize_query(query: &str) -> Result<AuthorizeParams, OAuthError> {
    let raw: RawAuthorizeRequest = serde_urlencoded::from_str(query)
        .map_err(|_| OAuthError::InvalidRequest("malformed or repeated parameters"))?;
    AuthorizeParams::try_from(raw)
}

pub const BROWSER_COOKIE_SECURE: &str = "__Host-fmb_browser";
pub const BROWSER_COOKIE_PLAIN: &str = "fmb_browser";

fn cookie_name(state: &OAuthState) -> &'static str {
    if state.secure_cookies {
        BROWSER_COOKIE_SECURE
    } else {
        BROWSER_COOKIE_PLAIN
    }
}

/// The browser-binding cookie value, if the request carries a well-formed one.
pub fn browser_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
        .filter(|value| {
            value.len() == 43
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn set_cookie_header(state: &OAuthState, value: &str) -> Option<HeaderValue> {
    let max_age = state
        .config
        .consent_ttl_secs
        .saturating_add(state.config.upstream_login_ttl_secs);
    // __Host-: Secure, Path=/, no Domain (RFC 6265bis §4.1.3.2). SameSite=Lax lets the cookie
    // ride along on Forgejo's top-level redirect back to /oauth/callback.
    let text = if state.secure_cookies {
        format!(
            "{BROWSER_COOKIE_SECURE}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}"
        )
    } else {
        format!("{BROWSER_COOKIE_PLAIN}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}")
    };
    HeaderValue::from_str(&text).ok()
}

/// Step 1: the client and its redirect URI. Failures here are shown as a page, never
/// redirected: the redirect URI is not trusted yet (RFC 6749 §4.1.2.1).
async fn trusted_client(
    state: &OAuthState,
    params: &AuthorizeParams,
) -> Result<(ClientRecord, String, Url), OAuthFailure> {
    let client = state
        .resolve_client(&params.client_id, false)
        .await
        .map_err(OAuthFailure::page)?;
    let registered = &client.metadata.redirect_uris;
    let redirect_uri = match params.redirect_uri.as_deref() {
        Some(uri) if redirect_uri_matches(registered, uri) => uri.to_owned(),
        Some(_) => {
            return Err(OAuthFailure::page(OAuthError::InvalidRequest(
                "redirect_uri is not registered for this client",
            )));
        }
        // RFC 6749 §3.1.2.3: optional when exactly one is registered.
        None => match registered.as_slice() {
            [only] => only.clone(),
            _ => {
                return Err(OAuthFailure::page(OAuthError::InvalidRequest(
                    "redirect_uri is required",
                )));
            }
        },
    };
    let redirect_url = Url::parse(&redirect_uri)
        .map_err(|_| OAuthFailure::page(OAuthError::InvalidRequest("redirect_uri is malformed")))?;
    // The string is kept as sent: the token request must repeat it byte for byte.
    Ok((client, redirect_uri, redirect_url))
}

/// What the consent page needs after the pending authorization is stored.
struct OpenedConsent {
    request_id: String,
    csrf: SecretString,
    browser: SecretString,
}

/// Who is authorizing: the browser's cookie, if it has one, and the client address.
struct Visitor {
    browser: Option<String>,
    ip: std::net::IpAddr,
}

/// What the per-client cap on authorizations in progress counts by: the hashed subscriber
/// prefix of the client address (an IPv6 /64, as rate limits key it), so that rotating through
/// the addresses of one /64 does not make one requester many.
fn pending_origin(client_ip: std::net::IpAddr) -> String {
    hash_token(&crate::ratelimit::subscriber_prefix(client_ip).to_string())
}

/// Step 3: stores the pending authorization, bound to this browser (its existing cookie, or a
/// new one) and to a fresh single-use CSRF token; both only as hashes.
fn open_consent(
    state: &OAuthState,
    client: &ClientRecord,
    redirect_uri: String,
    params: &AuthorizeParams,
    checked: CheckedParams,
    resource: String,
    visitor: Visitor,
) -> Result<OpenedConsent, OAuthError> {
    let now = state.now();
    let Visitor {
        browser: existing_browser,
        ip: client_ip,
    } = visitor;
    let browser = match existing_browser {
        Some(value) => SecretString::from(value),
        None => random_token(32)?,
    };
    let csrf = random_token(32)?;
    let pending = PendingAuthorization {
        id: random_id(16)?,
        client_id: client.client_id.clone(),
        redirect_uri,
        state: params.state.clone(),
        code_challenge: checked.code_challenge,
        resource,
        scope: checked.scope,
        browser_hash: hash_token(browser.expose_secret()),
        csrf_hash: hash_token(csrf.expose_secret()),
        upstream_verifier: None,
        expires_at: OAuthState::expires_at(now, state.config.consent_ttl_secs),
    };
    state.store.insert_pending(
        &pending,
        &pending_origin(client_ip),
        now,
        state.config.max_pending_authorizations,
        state.config.max_pending_per_client,
    )?;
    Ok(OpenedConsent {
        request_id: pending.id,
        csrf,
        browser,
    })
}

/// Step 4: the page, its hardening headers and the browser cookie.
fn consent_response(
    state: &OAuthState,
    client: &ClientRecord,
    redirect_url: &Url,
    opened: &OpenedConsent,
) -> Response {
    let client_id_host = super::cimd::is_cimd_client_id(&client.client_id)
        .then(|| Url::parse(&client.client_id).ok())
        .flatten()
        .and_then(|url| url.host_str().map(str::to_owned));
    let forgejo_origin = state.upstream.client().browser_origin();
    let page = consent_page(&ConsentView {
        client_name: client
            .metadata
            .client_name
            .as_deref()
            .unwrap_or("An unnamed application"),
        client_id: &client.client_id,
        client_id_host: client_id_host.as_deref(),
        redirect_host: redirect_url.host_str().unwrap_or(""),
        redirect_uri: redirect_url.as_str(),
        redirect_is_loopback: is_loopback_url(redirect_url),
        forgejo_origin: &forgejo_origin,
        forgejo_scopes: state.upstream.client().scopes(),
        request_id: &opened.request_id,
        csrf: opened.csrf.expose_secret(),
    });
    let mut response = Html(page).into_response();
    harden_page_headers(response.headers_mut());
    if let Some(cookie) = set_cookie_header(state, opened.browser.expose_secret()) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

pub async fn authorize(
    State(state): State<Arc<OAuthState>>,
    // The address behind trusted proxies, from the route's rate-limit layer.
    Extension(ClientIp(client_ip)): Extension<ClientIp>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, OAuthFailure> {
    let params =
        parse_authorize_query(query.as_deref().unwrap_or("")).map_err(OAuthFailure::page)?;
    let (client, redirect_uri, redirect_url) = trusted_client(&state, &params).await?;
    // Step 2: from here on, errors go back to the client with state and iss.
    let to_client = |error: OAuthError| OAuthFailure {
        error,
        delivery: Delivery::Redirect {
            redirect_uri: redirect_url.clone(),
            state: params.state.clone(),
            issuer: state.issuer.clone(),
        },
    };
    let checked = params.checked.clone().map_err(to_client)?;
    let resource = state.check_resource(&checked.resource).map_err(to_client)?;
    let browser = browser_cookie(&headers, cookie_name(&state));
    let opened = open_consent(
        &state,
        &client,
        redirect_uri,
        &params,
        checked,
        resource,
        Visitor {
            browser,
            ip: client_ip,
        },
    )
    .map_err(to_client)?;
    Ok(consent_response(&state, &client, &redirect_url, &opened))
}

/// The consent form (RFC-less: the broker's own page).
#[derive(Deserialize)]
pub struct RawConsentForm {
    pub request: Option<String>,
    pub csrf: Option<String>,
    pub decision: Option<String>,
}

impl std::fmt::Debug for RawConsentForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawConsentForm")
            .field("request", &self.request)
            .field("csrf", &super::redacted(&self.csrf))
            .field("decision", &self.decision)
            .finish()
    }
}

pub async fn consent(
    State(state): State<Arc<OAuthState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthFailure> {
    const INVALID: OAuthError = OAuthError::InvalidRequest(
        "this consent form is invalid, expired or already used; start again from the application",
    );
    let form: RawConsentForm =
        serde_urlencoded::from_bytes(&body).map_err(|_| OAuthFailure::page(INVALID))?;
    let now = state.now();
    let (Some(request_id), Some(csrf)) = (form.request.as_deref(), form.csrf.as_deref()) else {
        return Err(OAuthFailure::page(INVALID));
    };
    let browser =
        browser_cookie(&headers, cookie_name(&state)).ok_or(OAuthFailure::page(INVALID))?;
    let pending = state
        .store
        .pending_for_consent(request_id, now)
        .map_err(OAuthFailure::page)?
        .ok_or(OAuthFailure::page(INVALID))?;
    let csrf_ok = constant_time_eq(hash_token(csrf).as_bytes(), pending.csrf_hash.as_bytes());
    let browser_ok = constant_time_eq(
        hash_token(&browser).as_bytes(),
        pending.browser_hash.as_bytes(),
    );
    if !csrf_ok || !browser_ok {
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

    match form.decision.as_deref() {
        Some("approve") => {}
        Some("deny") => {
            if !state
                .store
                .delete_pending(&pending.id)
                .map_err(OAuthFailure::page)?
            {
                return Err(OAuthFailure::page(INVALID));
            }
            state.audit.record(AuditEvent::ConsentDenied {
                client_id: pending.client_id.clone(),
            });
            return Err(to_client(OAuthError::AccessDenied(
                "the user denied access",
            )));
        }
        _ => return Err(OAuthFailure::page(INVALID)),
    }

    // Item 85: the upstream state exists only after consent, is random, single-use, short-lived.
    let login = state.upstream.begin_login().map_err(|error| {
        tracing::error!(%error, "cannot start the Forgejo login");
        to_client(OAuthError::ServerError("cannot start the Forgejo login"))
    })?;
    let sealed = state
        .upstream
        .seal_verifier(&pending.id, &login.code_verifier)
        .map_err(|error| {
            tracing::error!(%error, "cannot seal the PKCE verifier");
            to_client(OAuthError::ServerError("cannot start the Forgejo login"))
        })?;
    let moved = state
        .store
        .consent_to_upstream(
            &pending.id,
            &hash_token(login.state.expose_secret()),
            &sealed,
            now,
            OAuthState::expires_at(now, state.config.upstream_login_ttl_secs),
        )
        .map_err(OAuthFailure::page)?;
    if !moved {
        return Err(OAuthFailure::page(INVALID));
    }
    state.audit.record(AuditEvent::ConsentGranted {
        client_id: pending.client_id.clone(),
        user_id: None,
    });
    let mut response = Redirect::to(login.authorize_url.as_str()).into_response();
    harden_page_headers(response.headers_mut());
    Ok(response)
}

/// The successful authorization response (RFC 6749 §4.1.2 + RFC 9207 `iss`).
pub fn code_redirect(
    redirect_uri: &Url,
    code: &str,
    state: Option<&str>,
    issuer: &str,
) -> Response {
    let url = client_redirect_url(redirect_uri, &[("code", code)], state, issuer);
    let mut response = Redirect::to(url.as_str()).into_response();
    harden_page_headers(response.headers_mut());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_authorizations_count_one_requester_per_ipv6_64() {
        let ip = |text: &str| text.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(
            pending_origin(ip("2001:db8:1:2::1")),
            pending_origin(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_ne!(
            pending_origin(ip("2001:db8:1:2::1")),
            pending_origin(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            pending_origin(ip("::ffff:198.51.100.7")),
            pending_origin(ip("198.51.100.7"))
        );
        assert_ne!(
            pending_origin(ip("198.51.100.7")),
            pending_origin(ip("198.51.100.8"))
        );
    }

    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn query(extra: &str) -> String {
        format!(
            "response_type=code&client_id=c&redirect_uri=https%3A%2F%2Fa.example%2Fcb&state=s\
             &code_challenge={CHALLENGE}&code_challenge_method=S256&resource=https%3A%2F%2Fb.example%2Fmcp{extra}"
        )
    }

    #[test]
    fn a_good_request_parses() {
        let params = parse_authorize_query(&query("")).unwrap();
        assert_eq!(params.client_id, "c");
        assert_eq!(params.state.as_deref(), Some("s"));
        assert_eq!(params.checked.unwrap().code_challenge, CHALLENGE);
    }

    #[test]
    fn repeated_parameters_and_missing_client_are_page_errors() {
        assert!(parse_authorize_query(&query("&state=t")).is_err());
        assert!(parse_authorize_query("response_type=code").is_err());
        assert!(parse_authorize_query("%%%").is_err());
    }

    #[test]
    fn pkce_and_resource_problems_are_deferred_to_the_redirect() {
        let plain = query("").replace("S256", "plain");
        assert_eq!(
            parse_authorize_query(&plain)
                .unwrap()
                .checked
                .unwrap_err()
                .code(),
            "invalid_request"
        );
        let missing = query("").replace("&code_challenge_method=S256", "");
        assert!(parse_authorize_query(&missing).unwrap().checked.is_err());
        let short = query("").replace(CHALLENGE, "abc");
        assert!(parse_authorize_query(&short).unwrap().checked.is_err());
        let no_resource = query("").replace("&resource=https%3A%2F%2Fb.example%2Fmcp", "");
        assert_eq!(
            parse_authorize_query(&no_resource)
                .unwrap()
                .checked
                .unwrap_err()
                .code(),
            "invalid_target"
        );
        let token = query("").replace("response_type=code", "response_type=token");
        assert_eq!(
            parse_authorize_query(&token)
                .unwrap()
                .checked
                .unwrap_err()
                .code(),
            "unsupported_response_type"
        );
    }

    #[test]
    fn browser_cookie_is_found_and_checked() {
        let mut headers = HeaderMap::new();
        let value = "a".repeat(43);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("x=1; fmb_browser={value}")).unwrap(),
        );
        assert_eq!(browser_cookie(&headers, "fmb_browser"), Some(value));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("fmb_browser=short"),
        );
        assert_eq!(browser_cookie(&headers, "fmb_browser"), None);
    }
}
