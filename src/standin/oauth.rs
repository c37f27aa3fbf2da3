//! HTTP handlers for Forgejo's `/login/oauth/*` routes (forgejo-facts.md §1.1) and the bits of
//! the web UI a browser meets on the way (sign-in page, consent page). Handlers are thin: parse,
//! one call into [`super::authorize`] or [`super::token`], map the result.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use super::authorize::{self, AuthorizeOutcome, ConsentPage, RawAuthorizeRequest};
use super::state::{AuthorizeRecord, SharedState, TokenFault};
use super::token::{self, RawTokenRequest, TokenError, TokenErrorCode};

pub(super) fn routes() -> Router<SharedState> {
    Router::new()
        .route("/login/oauth/authorize", get(authorize).post(authorize))
        .route("/login/oauth/grant", post(grant))
        .route(
            "/login/oauth/access_token",
            post(access_token).options(access_token_preflight),
        )
        .route("/login/oauth/userinfo", get(userinfo).post(userinfo))
        .route("/login/oauth/introspect", post(introspect))
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/user/login", get(sign_in_page))
}

impl IntoResponse for TokenError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": self.code.as_str(),
            "error_description": self.description,
        });
        (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
    }
}

/// `application/x-www-form-urlencoded` pairs, in order.
pub(super) fn form_pairs(bytes: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(bytes)
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect()
}

pub(super) fn first<'a>(pairs: &'a [(String, String)], name: &str) -> &'a str {
    pairs
        .iter()
        .find(|(key, _)| key == name)
        .map_or("", |(_, value)| value.as_str())
}

fn internal_error() -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response()
}

/// Forgejo's redirects (`ctx.Redirect`) are 303 See Other.
fn see_other(location: &str) -> Response {
    Redirect::to(location).into_response()
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

async fn authorize(
    State(shared): State<SharedState>,
    method: Method,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    // `web.Bind` reads the query on GET and the form body on POST.
    let pairs = if method == Method::POST {
        form_pairs(&body)
    } else {
        form_pairs(query.as_deref().unwrap_or("").as_bytes())
    };
    let request = RawAuthorizeRequest {
        response_type: first(&pairs, "response_type").into(),
        client_id: first(&pairs, "client_id").into(),
        redirect_uri: first(&pairs, "redirect_uri").into(),
        state: first(&pairs, "state").into(),
        scope: first(&pairs, "scope").into(),
        nonce: first(&pairs, "nonce").into(),
        code_challenge_method: first(&pairs, "code_challenge_method").into(),
        code_challenge: first(&pairs, "code_challenge").into(),
    };
    let now = shared.now();
    let outcome = {
        let mut inner = shared.lock();
        inner.counters.authorize += 1;
        inner.last_authorize = Some(AuthorizeRecord { params: pairs });
        authorize::authorize(&mut inner, &request, now)
    };
    match outcome {
        Err(_) => internal_error(),
        Ok(AuthorizeOutcome::LoginRequired) => {
            // Forgejo remembers where to come back to in a `redirect_to` cookie.
            let mut response = see_other("/user/login");
            let back = format!(
                "/login/oauth/authorize?{}",
                query.as_deref().unwrap_or_default()
            );
            let cookie = format!(
                "redirect_to={}; Path=/; HttpOnly; SameSite=Lax",
                url::form_urlencoded::byte_serialize(back.as_bytes()).collect::<String>()
            );
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        Ok(AuthorizeOutcome::ErrorPage { description }) => (
            StatusCode::BAD_REQUEST,
            Html(format!(
                "<!DOCTYPE html><html><head><title>Authorization failed</title></head><body>\
                 <h1>Authorization failed</h1><p>{}</p></body></html>",
                html_escape(&description)
            )),
        )
            .into_response(),
        Ok(AuthorizeOutcome::Redirect(location)) => see_other(&location),
        Ok(AuthorizeOutcome::Consent(page)) => consent_page(&page),
    }
}

/// Forgejo's "Authorize application" page (`templates/user/auth/grant.tmpl`), reduced to the
/// form: the same fields post to `/login/oauth/grant`.
fn consent_page(page: &ConsentPage) -> Response {
    let hidden = |name: &str, value: &str| {
        format!(
            r#"<input type="hidden" name="{name}" value="{}">"#,
            html_escape(value)
        )
    };
    let fields = [
        hidden("_csrf", &page.form_id),
        hidden("client_id", &page.client_id),
        hidden("state", &page.state),
        hidden("scope", &page.scope),
        hidden("nonce", &page.nonce),
        hidden("redirect_uri", &page.redirect_uri),
    ]
    .concat();
    let body = format!(
        "<!DOCTYPE html><html><head><title>Authorize application</title></head><body>\
         <h1>Authorize \"{app}\" to access your account?</h1>\
         <p>You will be redirected to <strong>{redirect}</strong> if you authorize this \
         application.</p>\
         <form method=\"post\" action=\"/login/oauth/grant\">{fields}\
         <button type=\"submit\" name=\"granted\" value=\"true\">Authorize application</button>\
         <button type=\"submit\" name=\"granted\" value=\"false\">Cancel</button>\
         </form></body></html>",
        app = html_escape(&page.app_name),
        redirect = html_escape(&page.redirect_uri),
    );
    let mut response = Html(body).into_response();
    // Forgejo forbids framing its pages.
    response.headers_mut().insert(
        header::X_FRAME_OPTIONS,
        HeaderValue::from_static("SAMEORIGIN"),
    );
    response
}

async fn grant(State(shared): State<SharedState>, body: Bytes) -> Response {
    let pairs = form_pairs(&body);
    let now = shared.now();
    let outcome = {
        let mut inner = shared.lock();
        // The consent form must match what the page was shown for (Forgejo compares the
        // session's client_id, state and redirect_uri with the form's).
        let pending = inner.pending_consents.remove(first(&pairs, "_csrf"));
        match pending {
            Some(pending)
                if pending.client_id == first(&pairs, "client_id")
                    && pending.state == first(&pairs, "state")
                    && pending.redirect_uri == first(&pairs, "redirect_uri") =>
            {
                let granted = first(&pairs, "granted") == "true";
                Some(authorize::grant_consent(
                    &mut inner,
                    &pending,
                    granted,
                    first(&pairs, "scope"),
                    first(&pairs, "nonce"),
                    now,
                ))
            }
            _ => None,
        }
    };
    match outcome {
        None => (StatusCode::BAD_REQUEST, "Bad Request").into_response(),
        Some(Err(_)) => internal_error(),
        Some(Ok(location)) => see_other(&location),
    }
}

/// The token request from either body type Forgejo's binding accepts: JSON when the content
/// type says so, the urlencoded form otherwise.
fn parse_token_request(headers: &HeaderMap, body: &[u8]) -> Result<RawTokenRequest, TokenError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.contains("json"));
    if is_json {
        return serde_json::from_slice(body).map_err(|_| TokenError {
            code: TokenErrorCode::InvalidRequest,
            description: "cannot parse the request body".into(),
        });
    }
    let pairs = form_pairs(body);
    Ok(RawTokenRequest {
        grant_type: first(&pairs, "grant_type").into(),
        client_id: first(&pairs, "client_id").into(),
        client_secret: first(&pairs, "client_secret").into(),
        redirect_uri: first(&pairs, "redirect_uri").into(),
        code: first(&pairs, "code").into(),
        refresh_token: first(&pairs, "refresh_token").into(),
        code_verifier: first(&pairs, "code_verifier").into(),
    })
}

fn with_cors(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

async fn access_token_preflight() -> Response {
    let mut response = with_cors(StatusCode::OK.into_response());
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type, Authorization"),
    );
    response
}

async fn access_token(
    State(shared): State<SharedState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    with_cors(token_endpoint(&shared, &headers, &body).await)
}

async fn token_endpoint(shared: &SharedState, headers: &HeaderMap, body: &[u8]) -> Response {
    let parsed = parse_token_request(headers, body);
    let fault = {
        let mut inner = shared.lock();
        inner.counters.token_requests += 1;
        let is_refresh = match parsed.as_ref().map(|request| request.grant_type.as_str()) {
            Ok("authorization_code") => {
                inner.counters.authorization_code_grants += 1;
                false
            }
            Ok("refresh_token") => {
                inner.counters.refresh_grants += 1;
                true
            }
            _ => false,
        };
        let refresh_fault = is_refresh
            .then(|| inner.refresh_faults.pop_front())
            .flatten();
        refresh_fault.or_else(|| inner.token_faults.pop_front())
    };
    match fault {
        Some(TokenFault::ServerError) => return internal_error(),
        Some(TokenFault::InvalidGrant) => {
            return TokenError {
                code: TokenErrorCode::InvalidGrant,
                description: "grant does not exist".into(),
            }
            .into_response();
        }
        Some(TokenFault::Hang) => shared.hang().await,
        Some(TokenFault::HangAnswer) | None => {}
    }
    let mut request = match parsed {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    if let Err(error) = token::merge_basic_auth(&mut request, authorization) {
        return error.into_response();
    }
    let now = shared.now();
    let result = {
        let mut inner = shared.lock();
        let result = token::exchange(&mut inner, &request, now);
        if result.is_ok() {
            inner.counters.tokens_issued += 1;
        }
        result
    };
    if fault == Some(TokenFault::HangAnswer) {
        shared.hang().await;
    }
    match result {
        Ok(response) => axum::Json(response).into_response(),
        Err(error) => error.into_response(),
    }
}

/// `Authorization: token X` or `Authorization: Bearer X` (scheme `token` exact, `bearer` in any
/// case), as Forgejo's `auth.GetTokenFromRequest` reads it (forgejo-facts.md §1.4).
pub(super) fn presented_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let mut parts = value.split_whitespace();
    let scheme = parts.next()?;
    let token = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    (scheme == "token" || scheme.eq_ignore_ascii_case("bearer")).then(|| token.to_string())
}

/// `InfoOAuth`: only an OAuth access token is accepted; the claims are returned whatever OIDC
/// scopes were granted (§1.1).
async fn userinfo(State(shared): State<SharedState>, headers: HeaderMap) -> Response {
    let now = shared.now();
    let found = {
        let mut inner = shared.lock();
        inner.counters.userinfo += 1;
        let base_url = inner.base_url.clone();
        presented_token(&headers)
            .and_then(|token| inner.authenticate(&token, now))
            .and_then(|(user_id, _)| inner.user(user_id).cloned())
            .map(|user| (user, base_url))
    };
    match found {
        Some((user, base_url)) => axum::Json(serde_json::json!({
            "sub": user.id.to_string(),
            "name": user.full_name,
            "preferred_username": user.login,
            "email": user.email,
            "picture": format!("{base_url}/avatars/{}", user.id),
            "groups": null,
        }))
        .into_response(),
        None => no_valid_authorization(),
    }
}

/// Forgejo's 401 on its OAuth endpoints: plain text and an empty Bearer realm.
fn no_valid_authorization() -> Response {
    let mut response = (StatusCode::UNAUTHORIZED, "no valid authorization").into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(r#"Bearer realm="""#),
    );
    response
}

async fn introspect(
    State(shared): State<SharedState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let pairs = form_pairs(&body);
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let now = shared.now();
    let answer = {
        let inner = shared.lock();
        token::introspect(&inner, authorization, first(&pairs, "token"), now)
    };
    match answer {
        Some(body) => axum::Json(body).into_response(),
        None => no_valid_authorization(),
    }
}

/// The discovery document (`oidc_wellknown.tmpl`): no revocation, registration or
/// `token_endpoint_auth_methods_supported` (§1.1).
async fn openid_configuration(State(shared): State<SharedState>) -> Response {
    let base = shared.lock().base_url.clone();
    axum::Json(serde_json::json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/login/oauth/authorize"),
        "token_endpoint": format!("{base}/login/oauth/access_token"),
        "jwks_uri": format!("{base}/login/oauth/keys"),
        "userinfo_endpoint": format!("{base}/login/oauth/userinfo"),
        "introspection_endpoint": format!("{base}/login/oauth/introspect"),
        "response_types_supported": ["code", "id_token"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "subject_types_supported": ["public"],
        "scopes_supported": ["openid", "profile", "email", "groups"],
        "claims_supported": [
            "aud", "exp", "iat", "iss", "sub", "name", "preferred_username", "profile",
            "picture", "website", "locale", "updated_at", "email", "email_verified", "groups"
        ],
        "code_challenge_methods_supported": ["plain", "S256"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
    }))
    .into_response()
}

/// Where Forgejo sends a browser without a session. The stand-in's "login" is configured, not
/// typed, so this page only says that the simulated user is not signed in.
async fn sign_in_page() -> Response {
    Html(
        "<!DOCTYPE html><html><head><title>Sign in</title></head><body>\
         <h1>Sign in</h1><p>Stand-in Forgejo: no user is logged in.</p></body></html>",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(authorization).unwrap(),
        );
        headers
    }

    #[test]
    fn tokens_are_read_from_token_and_bearer_schemes_only() {
        assert_eq!(
            presented_token(&headers("token abc")).as_deref(),
            Some("abc")
        );
        assert_eq!(
            presented_token(&headers("Bearer abc")).as_deref(),
            Some("abc")
        );
        assert_eq!(
            presented_token(&headers("bEaReR abc")).as_deref(),
            Some("abc")
        );
        assert_eq!(presented_token(&headers("Token abc")), None);
        assert_eq!(presented_token(&headers("Basic abc")), None);
        assert_eq!(presented_token(&headers("abc")), None);
        assert_eq!(presented_token(&headers("Bearer a b")), None);
        assert_eq!(presented_token(&HeaderMap::new()), None);
    }

    #[test]
    fn token_requests_parse_from_form_and_json() {
        let form = parse_token_request(
            &HeaderMap::new(),
            b"grant_type=refresh_token&refresh_token=a%2Bb",
        )
        .unwrap();
        assert_eq!(form.grant_type, "refresh_token");
        assert_eq!(form.refresh_token, "a+b");
        let mut json_headers = HeaderMap::new();
        json_headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let json = parse_token_request(
            &json_headers,
            br#"{"grant_type":"authorization_code","code":"x"}"#,
        )
        .unwrap();
        assert_eq!(
            (json.grant_type.as_str(), json.code.as_str()),
            ("authorization_code", "x")
        );
        assert!(parse_token_request(&json_headers, b"{").is_err());
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            html_escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
