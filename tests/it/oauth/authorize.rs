//! Authorize → consent → Forgejo → callback → code (mcp-spec-checklist §5, §9), with the
//! negative cases of issue #2.

use forgejo_mcp_broker::audit::AuditEvent;
use forgejo_mcp_broker::standin::{ApiFault, ConsentMode, TokenFault};

use crate::fixtures::{ALICE, TestBroker, TestClient};

fn consent_url(broker: &TestBroker) -> String {
    broker.url("/oauth/consent")
}

/// Asserts the browser was shown an error page (400, no redirect anywhere).
async fn assert_error_page(response: reqwest::Response, code: &str) {
    assert_eq!(response.status(), 400);
    assert!(response.headers().get("location").is_none());
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("frame-ancestors 'none'"));
    let html = response.text().await.unwrap();
    assert!(html.contains(code), "{html}");
}

#[tokio::test]
async fn the_whole_flow_yields_working_tokens_that_survive_a_restart() {
    let mut broker = TestBroker::start().await;
    let (client, tokens) = broker.login_new_client().await;
    assert!(tokens.access_token.starts_with("fmba_"));
    assert!(tokens.refresh_token.starts_with("fmbr_"));
    assert_eq!(tokens.expires_in, 3600);
    assert_eq!(tokens.body["token_type"], "Bearer");
    let verifier = broker.app().auth.verifier.clone();
    let principal = verifier
        .verify(&tokens.access_token, &broker.resource())
        .await
        .unwrap();
    assert_eq!(principal.user_id, ALICE);
    assert_eq!(&*principal.username, "alice");
    assert_eq!(&*principal.client_id, client.client_id.as_str());

    let events = broker.audit_events();
    for name in [
        "client_registered",
        "consent_granted",
        "upstream_login",
        "code_issued",
        "token_issued",
    ] {
        assert!(
            events.iter().any(|e| e.name() == name),
            "{name} missing: {events:?}"
        );
    }

    broker.restart().await;
    let verifier = broker.app().auth.verifier.clone();
    assert_eq!(
        verifier
            .verify(&tokens.access_token, &broker.resource())
            .await
            .unwrap()
            .user_id,
        ALICE
    );
    let (status, body) = broker.refresh(&client, &tokens.refresh_token).await;
    assert_eq!(status, 200, "{body}");
    broker.shutdown().await;
}

#[tokio::test]
async fn forgejo_is_asked_as_a_confidential_client_with_its_own_pkce_and_state() {
    let broker = TestBroker::start().await;
    broker.login_new_client().await;
    let request = broker.standin.last_authorize_request().unwrap();
    let get = |name: &str| {
        request
            .params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    assert_eq!(
        get("client_id").as_deref(),
        Some(crate::fixtures::FORGEJO_CLIENT_ID)
    );
    assert_eq!(get("code_challenge_method").as_deref(), Some("S256"));
    assert_eq!(get("code_challenge").unwrap().len(), 43);
    assert_ne!(
        get("state").as_deref(),
        Some("xyz"),
        "the client's state must not be reused"
    );
    assert_eq!(
        get("redirect_uri").unwrap(),
        format!("{}/oauth/callback", broker.base_url)
    );
    assert_eq!(
        get("scope").as_deref(),
        Some("read:user read:repository write:issue")
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn the_consent_page_is_hardened_and_names_client_and_redirect_host() {
    let broker = TestBroker::start().await;
    let client = broker
        .register_public_client(&["https://claude.ai/api/mcp/auth_callback"])
        .await;
    let browser = broker.browser();
    let page = browser
        .open_consent(&broker.authorize_url(&client, &[]))
        .await;
    assert_eq!(page.status, 200);
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"));
    assert_eq!(page.headers["x-frame-options"], "DENY");
    assert_eq!(page.headers["cache-control"], "no-store");
    assert!(page.html.contains("Test Client"));
    assert!(page.html.contains("claude.ai"));
    // The whole redirect URI, not only its host (item 82).
    assert!(
        page.html
            .contains("<code>https://claude.ai/api/mcp/auth_callback</code>"),
        "{}",
        page.html
    );
    // The only script is the double-click guard, which the CSP names by its hash.
    assert_eq!(page.html.matches("<script").count(), 1, "{}", page.html);
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(
        page.html
            .contains("<form method=\"post\" action=\"/oauth/consent\">")
    );
    let cookie = page.headers["set-cookie"].to_str().unwrap();
    // Loopback http: a plain cookie, still HttpOnly and SameSite.
    assert!(cookie.starts_with("fmb_browser="), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"));
    broker.shutdown().await;
}

#[tokio::test]
async fn on_https_the_consent_cookie_is_a_secure_host_cookie() {
    let broker = TestBroker::builder()
        .public_url("https://broker.test")
        .start()
        .await;
    let client = broker
        .register_public_client(&["https://claude.com/api/mcp/auth_callback"])
        .await;
    let page = broker
        .browser()
        .open_consent(&broker.authorize_url(&client, &[]))
        .await;
    assert_eq!(page.status, 200, "{}", page.html);
    let cookie = page.headers["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with("__Host-fmb_browser="), "{cookie}");
    assert!(cookie.contains("; Secure") && cookie.contains("Path=/"));
    assert!(!cookie.contains("Domain"));
    broker.shutdown().await;
}

#[tokio::test]
async fn known_client_callbacks_register_and_complete_the_flow() {
    let broker = TestBroker::start().await;
    for redirect in [
        "https://claude.ai/api/mcp/auth_callback",
        "https://claude.com/api/mcp/auth_callback",
        "https://chatgpt.com/connector_platform_oauth_redirect",
        "https://chatgpt.com/connector/oauth/abc123",
        "https://vscode.dev/redirect",
        "https://insiders.vscode.dev/redirect",
        "http://127.0.0.1:33418/",
        "http://localhost:6274/oauth/callback",
    ] {
        let client = broker.register_public_client(&[redirect]).await;
        let landing = broker
            .browser()
            .complete_authorization(&broker.authorize_url(&client, &[]))
            .await;
        assert!(
            landing.url.as_str().starts_with(redirect),
            "{redirect}: {}",
            landing.url
        );
        let code = landing.param("code").unwrap();
        let (status, body) = broker.exchange_code(&client, &code).await;
        assert_eq!(status, 200, "{redirect}: {body}");
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn loopback_redirects_match_any_port_and_the_root_alias_works() {
    let broker = TestBroker::start().await;
    let registered = broker
        .register_public_client(&["http://127.0.0.1/callback"])
        .await;
    let client = TestClient {
        redirect_uri: "http://127.0.0.1:51234/callback".to_owned(),
        ..registered
    };
    let url = broker
        .authorize_url(&client, &[])
        .replace("/oauth/authorize", "/authorize");
    let landing = broker.browser().complete_authorization(&url).await;
    assert!(
        landing
            .url
            .as_str()
            .starts_with("http://127.0.0.1:51234/callback?")
    );
    let (status, body) = broker
        .exchange_code(&client, &landing.param("code").unwrap())
        .await;
    assert_eq!(status, 200, "{body}");
    broker.shutdown().await;
}

#[tokio::test]
async fn untrusted_client_or_redirect_gets_an_error_page_never_a_redirect() {
    let broker = TestBroker::start().await;
    let client = broker
        .register_public_client(&["https://app.example/cb"])
        .await;
    let browser = broker.browser();
    for url in [
        broker.authorize_url(
            &client,
            &[("redirect_uri", Some("https://evil.example/cb"))],
        ),
        broker.authorize_url(
            &client,
            &[("redirect_uri", Some("https://app.example/cb/"))],
        ),
        broker.authorize_url(
            &client,
            &[("redirect_uri", Some("https://app.example:8443/cb"))],
        ),
        broker.authorize_url(&client, &[("client_id", Some("mcp_unknown"))]),
        broker.authorize_url(&client, &[("client_id", None)]),
        format!("{}&state=again", broker.authorize_url(&client, &[])),
    ] {
        let response = browser.get(&url).await;
        assert_eq!(response.status(), 400, "{url}");
        assert!(response.headers().get("location").is_none(), "{url}");
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn pkce_and_resource_errors_are_redirected_with_state_and_iss() {
    let broker = TestBroker::start().await;
    let client = broker
        .register_public_client(&["https://app.example/cb"])
        .await;
    let browser = broker.browser();
    type Case<'a> = (Vec<(&'a str, Option<&'a str>)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (vec![("code_challenge", None)], "invalid_request"),
        (vec![("code_challenge_method", None)], "invalid_request"),
        (
            vec![("code_challenge_method", Some("plain"))],
            "invalid_request",
        ),
        (
            vec![("code_challenge", Some("too-short"))],
            "invalid_request",
        ),
        (vec![("resource", None)], "invalid_target"),
        (
            vec![("resource", Some("https://other.example/mcp"))],
            "invalid_target",
        ),
        (
            vec![("resource", Some("http://127.0.0.1:1/mcp"))],
            "invalid_target",
        ),
        (
            vec![("response_type", Some("token"))],
            "unsupported_response_type",
        ),
    ];
    for (extra, error) in cases {
        let response = browser.get(&broker.authorize_url(&client, &extra)).await;
        assert!(response.status().is_redirection(), "{extra:?}");
        let landing = browser.follow(response).await;
        assert!(landing.url.as_str().starts_with("https://app.example/cb?"));
        assert_eq!(landing.param("error").as_deref(), Some(error), "{extra:?}");
        assert_eq!(landing.param("state").as_deref(), Some("xyz"));
        assert_eq!(
            landing.param("iss").as_deref(),
            Some(broker.base_url.as_str())
        );
    }
    assert_eq!(
        broker.standin.counters().authorize,
        0,
        "nothing reached Forgejo"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn a_trailing_slash_on_the_bare_origin_is_tolerated_as_resource() {
    let broker = TestBroker::start().await;
    let client = broker
        .register_public_client(&["https://app.example/cb"])
        .await;
    let resource = format!("{}/", broker.base_url);
    let landing = broker
        .browser()
        .complete_authorization(&broker.authorize_url(&client, &[("resource", Some(&resource))]))
        .await;
    let code = landing.param("code").unwrap();
    let (status, body) = broker.exchange_code(&client, &code).await;
    assert_eq!(status, 200, "{body}");
    let verifier = broker.app().auth.verifier.clone();
    assert!(
        verifier
            .verify(body["access_token"].as_str().unwrap(), &broker.resource())
            .await
            .is_ok()
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn denied_consent_sends_access_denied_to_the_client() {
    let broker = TestBroker::start().await;
    let client = broker
        .register_public_client(&["https://app.example/cb"])
        .await;
    let browser = broker.browser();
    let page = browser
        .open_consent(&broker.authorize_url(&client, &[]))
        .await;
    let response = browser
        .submit_consent(&consent_url(&broker), &page, "deny")
        .await;
    let landing = browser.follow(response).await;
    assert_eq!(landing.param("error").as_deref(), Some("access_denied"));
    assert_eq!(landing.param("state").as_deref(), Some("xyz"));
    assert_eq!(broker.standin.counters().authorize, 0);
    assert!(broker.audit_events().contains(&AuditEvent::ConsentDenied {
        client_id: client.client_id.clone()
    }));
    // Single use: the same form cannot be approved afterwards.
    let again = browser
        .submit_consent(&consent_url(&broker), &page, "approve")
        .await;
    assert_error_page(again, "invalid_request").await;
    broker.shutdown().await;
}

#[tokio::test]
async fn consent_without_csrf_token_cookie_or_twice_is_refused() {
    let broker = TestBroker::start().await;
    let client = broker
        .register_public_client(&["https://app.example/cb"])
        .await;
    let browser = broker.browser();
    let page = browser
        .open_consent(&broker.authorize_url(&client, &[]))
        .await;
    let request = page.request.clone().unwrap();
    let csrf = page.csrf.clone().unwrap();

    let missing = browser
        .post_form(
            &consent_url(&broker),
            &[("request", &request), ("decision", "approve")],
        )
        .await;
    assert_error_page(missing, "invalid_request").await;
    let wrong = browser
        .post_form(
            &consent_url(&broker),
            &[
                ("request", &request),
                ("csrf", "A".repeat(43).as_str()),
                ("decision", "approve"),
            ],
        )
        .await;
    assert_error_page(wrong, "invalid_request").await;
    // Another browser (no cookie) with the right token: refused too.
    let other = broker.browser();
    let stolen = other
        .post_form(
            &consent_url(&broker),
            &[
                ("request", &request),
                ("csrf", &csrf),
                ("decision", "approve"),
            ],
        )
        .await;
    assert_error_page(stolen, "invalid_request").await;
    let malformed = browser
        .post_form(&consent_url(&broker), &[("request", "a"), ("request", "b")])
        .await;
    assert_error_page(malformed, "invalid_request").await;
    assert_eq!(broker.standin.counters().authorize, 0);

    // The real form still works once, and only once.
    let first = browser
        .submit_consent(&consent_url(&broker), &page, "approve")
        .await;
    assert!(first.status().is_redirection());
    let second = browser
        .submit_consent(&consent_url(&broker), &page, "approve")
        .await;
    assert_error_page(second, "invalid_request").await;
    broker.shutdown().await;
}

#[tokio::test]
async fn consent_expires_in_minutes() {
    let broker = TestBroker::builder().manual_clock().start().await;
    let client = broker
        .register_public_client(&["https://app.example/cb"])
        .await;
    let browser = broker.browser();
    let page = browser
        .open_consent(&broker.authorize_url(&client, &[]))
        .await;
    broker.advance(601);
    let response = browser
        .submit_consent(&consent_url(&broker), &page, "approve")
        .await;
    assert_error_page(response, "invalid_request").await;
    broker.shutdown().await;
}

#[tokio::test]
async fn the_callback_is_single_use_and_bound_to_the_consenting_browser() {
    let broker = TestBroker::start().await;
    let client = broker
        .register_public_client(&["https://app.example/cb"])
        .await;
    let browser = broker.browser();
    let page = browser
        .open_consent(&broker.authorize_url(&client, &[]))
        .await;
    let to_forgejo = browser
        .submit_consent(&consent_url(&broker), &page, "approve")
        .await;
    let forgejo_url = to_forgejo.headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    let at_forgejo = browser.get(&forgejo_url).await;
    let callback = at_forgejo.headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(callback.contains("/oauth/callback?"));

    // Login CSRF: the callback in a browser that never consented is refused...
    let other = broker.browser();
    assert_error_page(other.get(&callback).await, "invalid_request").await;
    // ...and that attempt consumed it (single use), so the right browser is refused too.
    assert_error_page(browser.get(&callback).await, "invalid_request").await;
    // An unknown state is refused.
    let forged = broker.url("/oauth/callback?code=x&state=unknown");
    assert_error_page(browser.get(&forged).await, "invalid_request").await;
    assert_error_page(
        browser.get(&broker.url("/oauth/callback")).await,
        "invalid_request",
    )
    .await;
    broker.shutdown().await;
}

async fn flow_ends_with_error(broker: &TestBroker) -> (Option<String>, Option<String>) {
    let client = broker
        .register_public_client(&["https://app.example/cb"])
        .await;
    let landing = broker
        .browser()
        .complete_authorization(&broker.authorize_url(&client, &[]))
        .await;
    assert!(landing.param("code").is_none());
    (landing.param("error"), landing.param("state"))
}

#[tokio::test]
async fn forgejo_denial_and_errors_reach_the_client_as_oauth_errors() {
    let broker = TestBroker::start().await;
    broker.standin.set_consent(ConsentMode::Deny);
    let (error, state) = flow_ends_with_error(&broker).await;
    assert_eq!(error.as_deref(), Some("access_denied"));
    assert_eq!(state.as_deref(), Some("xyz"));
    broker.standin.set_consent(ConsentMode::AutoApprove);

    broker
        .standin
        .inject_token_faults(TokenFault::ServerError, 1);
    let (error, _) = flow_ends_with_error(&broker).await;
    assert_eq!(error.as_deref(), Some("temporarily_unavailable"));

    broker
        .standin
        .inject_token_faults(TokenFault::InvalidGrant, 1);
    let (error, _) = flow_ends_with_error(&broker).await;
    assert_eq!(error.as_deref(), Some("access_denied"));

    broker
        .standin
        .inject_api_user_faults(ApiFault::Unauthorized, 1);
    let (error, _) = flow_ends_with_error(&broker).await;
    assert_eq!(error.as_deref(), Some("access_denied"));

    broker
        .standin
        .inject_api_user_faults(ApiFault::ServerError, 1);
    let (error, _) = flow_ends_with_error(&broker).await;
    assert_eq!(error.as_deref(), Some("temporarily_unavailable"));

    assert!(
        broker
            .audit_events()
            .iter()
            .any(|event| matches!(event, AuditEvent::UpstreamLoginFailed { .. }))
    );
    // After all that, a normal login still works.
    broker.login_new_client().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn pending_authorizations_are_capped_per_client() {
    let broker = TestBroker::builder()
        .oauth("max_pending_per_client = 2")
        .start()
        .await;
    let client = broker
        .register_public_client(&["https://app.example/cb"])
        .await;
    let browser = broker.browser();
    for _ in 0..2 {
        let page = browser
            .open_consent(&broker.authorize_url(&client, &[]))
            .await;
        assert_eq!(page.status, 200);
    }
    let response = browser.get(&broker.authorize_url(&client, &[])).await;
    let landing = browser.follow(response).await;
    assert_eq!(
        landing.param("error").as_deref(),
        Some("temporarily_unavailable")
    );
    // The cap is per client and address: whoever spent it from one address (anyone can name
    // a public client) has not spent it for the client's users elsewhere.
    let elsewhere = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = elsewhere
        .get(broker.authorize_url(&client, &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("<form"));
    broker.shutdown().await;
}

#[tokio::test]
async fn an_authorization_in_progress_survives_a_broker_restart() {
    let mut broker = TestBroker::start().await;
    let client = broker
        .register_public_client(&["https://app.example/cb"])
        .await;
    let browser = broker.browser();
    let page = browser
        .open_consent(&broker.authorize_url(&client, &[]))
        .await;
    broker.restart().await;
    // Consent given after the restart; Forgejo's callback after another one.
    let to_forgejo = browser
        .submit_consent(&consent_url(&broker), &page, "approve")
        .await;
    assert!(to_forgejo.status().is_redirection());
    let at_forgejo = browser
        .get(to_forgejo.headers()["location"].to_str().unwrap())
        .await;
    let callback = at_forgejo.headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    broker.restart().await;
    let landing = browser.follow(browser.get(&callback).await).await;
    let code = landing.param("code").expect("a code after two restarts");
    broker.restart().await;
    let (status, body) = broker.exchange_code(&client, &code).await;
    assert_eq!(status, 200, "{body}");
    broker.shutdown().await;
}

#[tokio::test]
async fn redirect_uris_are_kept_byte_for_byte_through_the_token_request() {
    let broker = TestBroker::start().await;
    for redirect in [
        "https://app.example",
        "http://127.0.0.1:33418",
        "https://app.example/cb?tenant=7",
    ] {
        let client = broker.register_public_client(&[redirect]).await;
        let landing = broker
            .browser()
            .complete_authorization(&broker.authorize_url(&client, &[]))
            .await;
        let code = landing
            .param("code")
            .unwrap_or_else(|| panic!("{redirect}: {}", landing.url));
        if redirect.contains("tenant") {
            assert_eq!(landing.param("tenant").as_deref(), Some("7"));
        }
        let (status, body) = broker.exchange_code(&client, &code).await;
        assert_eq!(status, 200, "{redirect}: {body}");
    }
    broker.shutdown().await;
}
