//! Forgejo's authorization endpoint and consent logic, step for step as
//! `routers/web/auth/oauth.go` does it (`AuthorizeOAuth`, `GrantApplicationOAuth`); see
//! forgejo-facts.md §1.3, §1.7, §1.8.

use std::net::IpAddr;

use super::config::{ConsentMode, StandinApp};
use super::state::{AuthorizationCode, Inner, PendingConsent};
use crate::clock::UnixSeconds;
use crate::secret::{RandomError, random_id};

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
#[derive(Debug, Default, Clone)]
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
            [
                "http://127.0.0.1/callback",
                "http://[::1]/callback",
                "https://app.example/CB/",
            ],
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
        assert!(redirect_uri_registered(&app, "http://[::1]:5173/callback"));
        assert!(!redirect_uri_registered(
            &app,
            "http://localhost:5173/callback"
        ));
        assert!(!redirect_uri_registered(
            &app,
            "https://127.0.0.1:5173/callback"
        ));
        let confidential = StandinApp::confidential("c", "s", ["http://127.0.0.1/callback"]);
        assert!(!redirect_uri_registered(
            &confidential,
            "http://127.0.0.1:5173/callback"
        ));
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
    fn nobody_logged_in_means_the_sign_in_page_before_any_validation() {
        let shared = super::super::state::Shared::new(super::super::config::StandinConfig {
            logged_in_user: Some(42),
            ..super::super::config::StandinConfig::with_demo_user()
        });
        let mut inner = shared.lock();
        let request = RawAuthorizeRequest {
            client_id: "unknown".into(),
            ..RawAuthorizeRequest::default()
        };
        // User 42 does not exist: same as no session.
        assert_eq!(
            authorize(&mut inner, &request, 0).unwrap(),
            AuthorizeOutcome::LoginRequired
        );
        inner.logged_in_user = Some(1);
        assert_eq!(
            authorize(&mut inner, &request, 0).unwrap(),
            AuthorizeOutcome::ErrorPage {
                description: "Client ID not registered".into()
            }
        );
    }
}
