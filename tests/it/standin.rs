//! The stand-in Forgejo over real HTTP: it must behave as forgejo-facts.md §1 says Forgejo
//! does, since the broker's upstream tests and the demo trust it to.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use forgejo_mcp_broker::clock::ManualClock;
use forgejo_mcp_broker::secret::pkce_s256;
use forgejo_mcp_broker::standin::{
    ApiFault, ConsentMode, RunningStandin, StandinApp, StandinConfig, StandinForgejo, StandinUser,
    TokenFault, token_marker,
};
use reqwest::StatusCode;
use serde_json::Value;

const BROKER: &str = "broker";
const BROKER_SECRET: &str = "gto_brokersecret";
const BROKER_CALLBACK: &str = "https://broker.example/oauth/callback";
const CLI: &str = "cli";
const CLI_CALLBACK: &str = "http://127.0.0.1/callback";
const VERIFIER: &str = "dBjftJeZ4CVP-mJ0q7Jtw8xQrB9DK3mZ8IHb3wR2gNc";
const ALICE: i64 = 1;
const BOB: i64 = 2;

struct Fixture {
    standin: RunningStandin,
    clock: Arc<ManualClock>,
    http: reqwest::Client,
}

fn config(clock: &Arc<ManualClock>) -> StandinConfig {
    StandinConfig::with_demo_user()
        .user(StandinUser::new(BOB, "bob", "Bob Builder"))
        .app(StandinApp::confidential(
            BROKER,
            BROKER_SECRET,
            [BROKER_CALLBACK],
        ))
        .app(StandinApp::public(CLI, [CLI_CALLBACK]))
        .clock(clock.clone())
}

async fn start_with(adjust: impl FnOnce(StandinConfig) -> StandinConfig) -> Fixture {
    let clock = ManualClock::new(1_800_000_000);
    let standin = StandinForgejo::start(adjust(config(&clock))).await.unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    Fixture {
        standin,
        clock,
        http,
    }
}

async fn start() -> Fixture {
    start_with(|config| config).await
}

fn query_of(location: &str) -> HashMap<String, String> {
    url::Url::parse(location)
        .unwrap()
        .query_pairs()
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect()
}

impl Fixture {
    async fn authorize_raw(&self, params: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .get(self.standin.authorize_url())
            .query(params)
            .send()
            .await
            .unwrap()
    }

    /// An authorize request expected to redirect; returns the Location's query.
    async fn authorize(&self, params: &[(&str, &str)]) -> HashMap<String, String> {
        let response = self.authorize_raw(params).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        query_of(response.headers()["location"].to_str().unwrap())
    }

    /// The broker's authorize request: confidential, S256, state.
    async fn broker_code(&self, scope: &str) -> String {
        let challenge = pkce_s256(VERIFIER);
        let query = self
            .authorize(&[
                ("client_id", BROKER),
                ("redirect_uri", BROKER_CALLBACK),
                ("response_type", "code"),
                ("state", "st4te"),
                ("scope", scope),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ])
            .await;
        assert_eq!(query["state"], "st4te");
        query["code"].clone()
    }

    async fn token(&self, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.standin.token_url())
            .form(form)
            .send()
            .await
            .unwrap();
        let status = response.status();
        // A 500 has Forgejo's plain-text body, not JSON.
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn exchange(&self, code: &str) -> (StatusCode, Value) {
        self.token(&[
            ("grant_type", "authorization_code"),
            ("client_id", BROKER),
            ("client_secret", BROKER_SECRET),
            ("redirect_uri", BROKER_CALLBACK),
            ("code", code),
            ("code_verifier", VERIFIER),
        ])
        .await
    }

    async fn refresh(&self, refresh_token: &str) -> (StatusCode, Value) {
        self.token(&[
            ("grant_type", "refresh_token"),
            ("client_id", BROKER),
            ("client_secret", BROKER_SECRET),
            ("refresh_token", refresh_token),
        ])
        .await
    }

    /// Code flow for the logged-in user; returns the token response.
    async fn login(&self, scope: &str) -> Value {
        let code = self.broker_code(scope).await;
        let (status, body) = self.exchange(&code).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn api(&self, path: &str, token: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.standin.base_url()))
            .header("authorization", format!("token {token}"))
            .send()
            .await
            .unwrap()
    }
}

fn field<'a>(body: &'a Value, name: &str) -> &'a str {
    body[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} in {body}"))
}

fn assert_token_error(answer: &(StatusCode, Value), error: &str, description: &str) {
    assert_eq!(answer.0, StatusCode::BAD_REQUEST, "{}", answer.1);
    assert_eq!(
        answer.1,
        serde_json::json!({"error": error, "error_description": description})
    );
}

#[tokio::test]
async fn code_flow_with_pkce_gives_forgejo_shaped_tokens_that_open_the_api() {
    let fixture = start().await;
    let body = fixture.login("openid profile read:user").await;

    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "access_token",
            "expires_in",
            "id_token",
            "refresh_token",
            "token_type"
        ]
    );
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 3600);
    let access = field(&body, "access_token");
    assert!(access.starts_with(&token_marker()));

    let record = fixture.standin.last_authorize_request().unwrap();
    assert_eq!(record.param("code_challenge_method"), Some("S256"));
    assert_eq!(record.param("state"), Some("st4te"));
    assert_eq!(record.param("scope"), Some("openid profile read:user"));

    for scheme in ["token", "Bearer", "bearer"] {
        let user: Value = fixture
            .http
            .get(format!("{}/api/v1/user", fixture.standin.base_url()))
            .header("authorization", format!("{scheme} {access}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            (user["id"].as_i64(), user["login"].as_str()),
            (Some(ALICE), Some("alice"))
        );
    }
    let userinfo: Value = fixture
        .http
        .get(format!(
            "{}/login/oauth/userinfo",
            fixture.standin.base_url()
        ))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(userinfo["sub"], "1");
    assert_eq!(userinfo["preferred_username"], "alice");

    let counters = fixture.standin.counters();
    assert_eq!(
        (
            counters.authorize,
            counters.authorization_code_grants,
            counters.api_user
        ),
        (1, 1, 3)
    );
    let issued = fixture.standin.issued_tokens();
    assert_eq!(issued, [access, field(&body, "refresh_token")]);
}

#[tokio::test]
async fn codes_are_single_use_and_never_expire_by_default() {
    let fixture = start().await;
    let code = fixture.broker_code("read:user").await;
    assert!(code.starts_with("gta_"));
    fixture.clock.advance(7 * 24 * 3600);
    assert_eq!(fixture.exchange(&code).await.0, StatusCode::OK);
    assert_token_error(
        &fixture.exchange(&code).await,
        "unauthorized_client",
        "client is not authorized",
    );
}

#[tokio::test]
async fn codes_expire_when_a_lifetime_is_configured() {
    let fixture = start_with(|config| StandinConfig {
        authorization_code_lifetime: Some(60),
        ..config
    })
    .await;
    let code = fixture.broker_code("read:user").await;
    fixture.clock.advance(61);
    assert_token_error(
        &fixture.exchange(&code).await,
        "unauthorized_client",
        "client is not authorized",
    );
}

#[tokio::test]
async fn refresh_rotates_and_reuse_is_refused_without_revoking_the_grant() {
    let fixture = start().await;
    let first = fixture.login("read:user").await;
    assert_eq!(fixture.standin.grant_counter(ALICE, BROKER), Some(2));

    let (status, second) = fixture.refresh(field(&first, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert!(second.get("id_token").is_none(), "no openid, no id_token");

    // Reuse: Forgejo's answer, not RFC 6749's (forgejo-facts.md §0.2, §1.5).
    assert_token_error(
        &fixture.refresh(field(&first, "refresh_token")).await,
        "unauthorized_client",
        "token was already used",
    );
    // ... and nothing was revoked: the newest refresh token still works, and the old access
    // token lives until its exp (§0.3).
    let (status, third) = fixture.refresh(field(&second, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK);
    let old_access = fixture
        .api("/api/v1/user", field(&first, "access_token"))
        .await;
    assert_eq!(old_access.status(), StatusCode::OK);
    assert_eq!(fixture.standin.grant_counter(ALICE, BROKER), Some(4));

    // An access token is not a refresh token (its counter is 0).
    assert_token_error(
        &fixture.refresh(field(&third, "access_token")).await,
        "unauthorized_client",
        "token was already used",
    );
    assert_token_error(
        &fixture.refresh("not-a-token").await,
        "unauthorized_client",
        "unable to parse refresh token",
    );
    assert_eq!(fixture.standin.counters().refresh_grants, 5);
}

#[tokio::test]
async fn a_new_login_invalidates_the_refresh_token_of_the_previous_one() {
    let fixture = start().await;
    let first = fixture.login("read:user").await;
    // Second authorization of a confidential client with a grant: silent (§1.7).
    let second = fixture.login("read:user").await;
    assert_token_error(
        &fixture.refresh(field(&first, "refresh_token")).await,
        "unauthorized_client",
        "token was already used",
    );
    assert_eq!(
        fixture.refresh(field(&second, "refresh_token")).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn without_invalidate_refresh_tokens_old_refresh_tokens_keep_working() {
    let fixture = start_with(|config| StandinConfig {
        invalidate_refresh_tokens: false,
        ..config
    })
    .await;
    let first = fixture.login("read:user").await;
    for _ in 0..2 {
        assert_eq!(
            fixture.refresh(field(&first, "refresh_token")).await.0,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn pkce_is_required_for_public_clients_only() {
    let fixture = start().await;
    let public = |method: &'static str, challenge: &'static str| {
        vec![
            ("client_id", CLI),
            ("redirect_uri", "http://127.0.0.1:43123/callback"),
            ("response_type", "code"),
            ("state", "s"),
            ("code_challenge_method", method),
            ("code_challenge", challenge),
        ]
    };
    let query = fixture.authorize(&public("", "")).await;
    assert_eq!(query["error"], "invalid_request");
    assert_eq!(
        query["error_description"],
        "PKCE is required for public clients"
    );
    assert_eq!(query["state"], "s");

    let query = fixture.authorize(&public("S512", "x")).await;
    assert_eq!(
        query["error_description"],
        "unsupported code challenge method"
    );

    // plain works for a public client once the page is passed (fixed Forgejo).
    let query = fixture.authorize(&public("plain", "plain-verifier")).await;
    let exchange = |code: String, verifier: &'static str| {
        let fixture = &fixture;
        async move {
            fixture
                .token(&[
                    ("grant_type", "authorization_code"),
                    ("client_id", CLI),
                    ("code", &code),
                    ("code_verifier", verifier),
                ])
                .await
        }
    };
    assert_token_error(
        &exchange(query["code"].clone(), "wrong").await,
        "unauthorized_client",
        "failed PKCE code challenge",
    );
    // A failed verifier does not burn the code (Forgejo deletes it on success only).
    assert_eq!(
        exchange(query["code"].clone(), "plain-verifier").await.0,
        StatusCode::OK
    );

    // Confidential: PKCE optional, but checked when a challenge was sent.
    let query = fixture
        .authorize(&[
            ("client_id", BROKER),
            ("redirect_uri", BROKER_CALLBACK),
            ("response_type", "code"),
        ])
        .await;
    assert!(!query.contains_key("state"), "no state sent, none returned");
    assert_eq!(fixture.exchange(&query["code"]).await.0, StatusCode::OK);
    let code = fixture.broker_code("read:user").await;
    let answer = fixture
        .token(&[
            ("grant_type", "authorization_code"),
            ("client_id", BROKER),
            ("client_secret", BROKER_SECRET),
            ("code", &code),
            ("code_verifier", "wrong-verifier"),
        ])
        .await;
    assert_token_error(&answer, "unauthorized_client", "failed PKCE code challenge");
}

#[tokio::test]
async fn the_old_consent_page_bug_can_be_reproduced() {
    let fixture = start_with(|config| StandinConfig {
        lose_pkce_on_consent_page: true,
        ..config
    })
    .await;
    // First authorization goes through the consent page: the challenge is lost (§1.3)...
    let code = fixture.broker_code("read:user").await;
    let answer = fixture
        .token(&[
            ("grant_type", "authorization_code"),
            ("client_id", BROKER),
            ("client_secret", BROKER_SECRET),
            ("code", &code),
            ("code_verifier", "anything"),
        ])
        .await;
    assert_eq!(answer.0, StatusCode::OK);
    // ... the silent second one keeps and checks it.
    let code = fixture.broker_code("read:user").await;
    let answer = fixture
        .token(&[
            ("grant_type", "authorization_code"),
            ("client_id", BROKER),
            ("client_secret", BROKER_SECRET),
            ("code", &code),
            ("code_verifier", "anything"),
        ])
        .await;
    assert_token_error(&answer, "unauthorized_client", "failed PKCE code challenge");
}

#[tokio::test]
async fn redirect_uris_must_match_exactly() {
    let fixture = start().await;
    for (client, uri) in [
        (BROKER, "https://broker.example/oauth/callback/extra"),
        (BROKER, "https://evil.example/oauth/callback"),
        // Loopback any-port is for public clients only.
        (BROKER, "https://broker.example:8443/oauth/callback"),
        (CLI, "http://localhost:5000/callback"),
    ] {
        let response = fixture
            .authorize_raw(&[
                ("client_id", client),
                ("redirect_uri", uri),
                ("response_type", "code"),
                ("code_challenge", "x"),
                ("code_challenge_method", "S256"),
            ])
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{uri}");
        assert!(response.headers().get("location").is_none());
        assert!(
            response
                .text()
                .await
                .unwrap()
                .contains("Unregistered Redirect URI")
        );
    }
    let response = fixture
        .authorize_raw(&[("client_id", "nobody"), ("redirect_uri", BROKER_CALLBACK)])
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("Client ID not registered")
    );

    // Case and one trailing slash do not matter.
    let query = fixture
        .authorize(&[
            ("client_id", BROKER),
            ("redirect_uri", "https://BROKER.example/oauth/callback/"),
            ("response_type", "code"),
        ])
        .await;
    // A different registered-looking URI at the token endpoint is refused.
    let answer = fixture
        .token(&[
            ("grant_type", "authorization_code"),
            ("client_id", BROKER),
            ("client_secret", BROKER_SECRET),
            ("redirect_uri", "https://broker.example/elsewhere"),
            ("code", &query["code"]),
        ])
        .await;
    assert_token_error(&answer, "unauthorized_client", "unexpected redirect URI");

    let query = fixture
        .authorize(&[
            ("client_id", BROKER),
            ("redirect_uri", BROKER_CALLBACK),
            ("response_type", "token"),
            ("state", "z"),
        ])
        .await;
    assert_eq!(query["error"], "unsupported_response_type");
    assert_eq!(query["state"], "z");
}

#[tokio::test]
async fn clients_authenticate_by_basic_or_by_body() {
    let fixture = start().await;
    let code = fixture.broker_code("read:user").await;
    let response = fixture
        .http
        .post(fixture.standin.token_url())
        .basic_auth(BROKER, Some(BROKER_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let tokens: Value = response.json().await.unwrap();

    // JSON bodies are accepted too.
    let response = fixture
        .http
        .post(fixture.standin.token_url())
        .json(&serde_json::json!({
            "grant_type": "refresh_token",
            "client_id": BROKER,
            "client_secret": BROKER_SECRET,
            "refresh_token": tokens["refresh_token"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let answer = fixture
        .token(&[
            ("grant_type", "refresh_token"),
            ("client_id", BROKER),
            ("refresh_token", "x"),
        ])
        .await;
    assert_token_error(&answer, "invalid_client", "invalid empty client secret");
    let answer = fixture
        .token(&[
            ("grant_type", "authorization_code"),
            ("client_id", BROKER),
            ("client_secret", "wrong"),
            ("code", "gta_x"),
        ])
        .await;
    assert_token_error(&answer, "unauthorized_client", "invalid client secret");

    let response = fixture
        .http
        .post(fixture.standin.token_url())
        .basic_auth("someone-else", Some(BROKER_SECRET))
        .form(&[("grant_type", "refresh_token"), ("client_id", BROKER)])
        .send()
        .await
        .unwrap();
    let answer = (response.status(), response.json().await.unwrap());
    assert_token_error(
        &answer,
        "invalid_request",
        "client_id in request body inconsistent with Authorization header",
    );
    let answer = fixture.token(&[("grant_type", "client_credentials")]).await;
    assert_token_error(
        &answer,
        "unsupported_grant_type",
        "Only refresh_token or authorization_code grant type is supported",
    );
}

#[tokio::test]
async fn lifetimes_follow_the_clock() {
    let fixture = start_with(|config| StandinConfig {
        access_token_lifetime: 600,
        refresh_token_lifetime: 3600,
        ..config
    })
    .await;
    let tokens = fixture.login("read:user").await;
    assert_eq!(tokens["expires_in"], 600);
    let access = field(&tokens, "access_token");
    fixture.clock.advance(599);
    assert_eq!(
        fixture.api("/api/v1/user", access).await.status(),
        StatusCode::OK
    );
    fixture.clock.advance(1);
    let response = fixture.api("/api/v1/user", access).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["message"], "token is required");

    fixture.clock.advance(3000);
    assert_token_error(
        &fixture.refresh(field(&tokens, "refresh_token")).await,
        "unauthorized_client",
        "unable to parse refresh token",
    );
}

#[tokio::test]
async fn tests_can_expire_tokens_early_and_revoke_grants() {
    let fixture = start().await;
    let tokens = fixture.login("read:user").await;
    let access = field(&tokens, "access_token");
    fixture.standin.expire_access_tokens(ALICE);
    assert_eq!(
        fixture.api("/api/v1/user", access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let (status, fresh) = fixture.refresh(field(&tokens, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK);

    assert!(fixture.standin.revoke_grant(ALICE, BROKER));
    assert_eq!(
        fixture
            .api("/api/v1/user", field(&fresh, "access_token"))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_token_error(
        &fixture.refresh(field(&fresh, "refresh_token")).await,
        "invalid_grant",
        "grant does not exist",
    );
    // After revocation the next authorization goes through consent again and works.
    fixture.login("read:user").await;
}

#[tokio::test]
async fn faults_can_be_injected_into_the_token_endpoint_and_api() {
    let fixture = start().await;
    let tokens = fixture.login("read:user").await;
    let refresh = field(&tokens, "refresh_token").to_string();

    fixture
        .standin
        .inject_token_faults(TokenFault::ServerError, 1);
    let response = fixture
        .http
        .post(fixture.standin.token_url())
        .form(&[("grant_type", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);

    fixture
        .standin
        .inject_token_faults(TokenFault::InvalidGrant, 1);
    assert_token_error(
        &fixture.refresh(&refresh).await,
        "invalid_grant",
        "grant does not exist",
    );
    // Injected faults do not touch the grant: the token still works afterwards.
    assert_eq!(fixture.refresh(&refresh).await.0, StatusCode::OK);

    // Refresh-only faults leave code exchanges alone.
    fixture
        .standin
        .inject_refresh_faults(TokenFault::ServerError, 1);
    let tokens = fixture.login("read:user").await;
    assert_eq!(
        fixture.refresh(field(&tokens, "refresh_token")).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );

    // Hang: the request waits for a release, then is answered normally.
    fixture.standin.inject_token_faults(TokenFault::Hang, 1);
    let hung = {
        let fixture_http = fixture.http.clone();
        let url = fixture.standin.token_url();
        let refresh = field(&tokens, "refresh_token").to_string();
        tokio::spawn(async move {
            fixture_http
                .post(url)
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("client_id", BROKER),
                    ("client_secret", BROKER_SECRET),
                    ("refresh_token", refresh.as_str()),
                ])
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    assert!(
        fixture
            .standin
            .wait_for_hung_requests(1, Duration::from_secs(10))
            .await
    );
    assert_eq!(fixture.standin.hung_requests(), 1);
    assert!(!hung.is_finished());
    fixture.standin.release_hung_requests();
    assert_eq!(hung.await.unwrap(), StatusCode::OK);
    assert_eq!(fixture.standin.hung_requests(), 0);
    assert_eq!(fixture.standin.counters().refresh_grants, 5);

    let access = field(&tokens, "access_token");
    fixture
        .standin
        .inject_api_user_faults(ApiFault::ServerError, 1);
    fixture
        .standin
        .inject_api_user_faults(ApiFault::Unauthorized, 1);
    let statuses = [
        fixture.api("/api/v1/user", access).await.status(),
        fixture.api("/api/v1/user", access).await.status(),
        fixture.api("/api/v1/user", access).await.status(),
    ];
    assert_eq!(
        statuses,
        [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::UNAUTHORIZED,
            StatusCode::OK
        ]
    );
}

#[tokio::test]
async fn the_browser_can_be_logged_out_switched_or_refuse_consent() {
    let fixture = start().await;
    fixture.standin.set_logged_in_user(None);
    let response = fixture
        .authorize_raw(&[("client_id", BROKER), ("redirect_uri", BROKER_CALLBACK)])
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()["location"], "/user/login");

    fixture.standin.set_logged_in_user(Some(BOB));
    let tokens = fixture.login("read:user").await;
    let user: Value = fixture
        .api("/api/v1/user", field(&tokens, "access_token"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(user["login"], "bob");

    // Bob already granted: silent. Alice has not: consent, here refused.
    fixture.standin.set_consent(ConsentMode::Deny);
    fixture.login("read:user").await;
    fixture.standin.set_logged_in_user(Some(ALICE));
    let query = fixture
        .authorize(&[
            ("client_id", BROKER),
            ("redirect_uri", BROKER_CALLBACK),
            ("response_type", "code"),
            ("state", "q"),
        ])
        .await;
    assert_eq!(query["error"], "access_denied");
    assert_eq!(query["state"], "q");
}

#[tokio::test]
async fn the_consent_page_can_be_shown_and_submitted() {
    let fixture = start_with(|config| StandinConfig {
        consent: ConsentMode::ShowPage,
        ..config
    })
    .await;
    let challenge = pkce_s256(VERIFIER);
    let response = fixture
        .authorize_raw(&[
            ("client_id", BROKER),
            ("redirect_uri", BROKER_CALLBACK),
            ("response_type", "code"),
            ("state", "p"),
            ("scope", "read:user"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ])
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let page = response.text().await.unwrap();
    let csrf = page
        .split(r#"name="_csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    let submit = |granted: &'static str, csrf: String, scope: &'static str| {
        let fixture = &fixture;
        async move {
            fixture
                .http
                .post(format!("{}/login/oauth/grant", fixture.standin.base_url()))
                .form(&[
                    ("_csrf", csrf.as_str()),
                    ("client_id", BROKER),
                    ("state", "p"),
                    ("scope", scope),
                    ("nonce", ""),
                    ("redirect_uri", BROKER_CALLBACK),
                    ("granted", granted),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    let response = submit("true", csrf.clone(), "read:user").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let query = query_of(response.headers()["location"].to_str().unwrap());
    assert_eq!(query["state"], "p");
    assert_eq!(fixture.exchange(&query["code"]).await.0, StatusCode::OK);
    // The form is single-use.
    assert_eq!(
        submit("true", csrf, "read:user").await.status(),
        StatusCode::BAD_REQUEST
    );

    // The silent path ignores a new scope: the grant keeps the old one (§0.5).
    let code = fixture.broker_code("write:repository").await;
    assert_eq!(fixture.exchange(&code).await.0, StatusCode::OK);
    assert_eq!(
        fixture.standin.grant_scope(ALICE, BROKER).as_deref(),
        Some("read:user")
    );
}

#[tokio::test]
async fn scopes_restrict_the_api() {
    let fixture = start().await;
    let tokens = fixture.login("openid read:user").await;
    let access = field(&tokens, "access_token");
    assert_eq!(
        fixture.api("/api/v1/user", access).await.status(),
        StatusCode::OK
    );
    let response = fixture.api("/api/v1/user/repos", access).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["message"],
        "token does not have at least one of required scope(s): [read:repository]"
    );
    // Only OIDC scopes: full access (§0.4).
    let all = fixture
        .standin
        .issue_tokens(BOB, BROKER, "openid profile")
        .unwrap();
    assert_eq!(
        fixture
            .api("/api/v1/user/repos", &all.access_token)
            .await
            .status(),
        StatusCode::OK
    );
    let response = fixture
        .http
        .get(format!("{}/api/v1/user", fixture.standin.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let version: Value = fixture
        .http
        .get(format!("{}/api/v1/version", fixture.standin.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(version["version"], "11.0.1+gitea-1.22.0");
}

#[tokio::test]
async fn repositories_and_issues_are_served_forgejo_shaped() {
    let fixture = start().await;
    let alice = fixture.standin.issue_tokens(ALICE, BROKER, "").unwrap();
    let bob = fixture.standin.issue_tokens(BOB, BROKER, "").unwrap();

    let response = fixture
        .api("/api/v1/user/repos?limit=1", &alice.access_token)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-total-count"], "2");
    assert!(
        response.headers()["link"]
            .to_str()
            .unwrap()
            .contains(r#"rel="next""#),
        "pagination"
    );
    let repositories: Value = response.json().await.unwrap();
    assert_eq!(repositories[0]["full_name"], "alice/notes");
    assert_eq!(repositories[0]["owner"]["login"], "alice");
    assert_eq!(repositories[0]["permissions"]["admin"], true);

    // Bob sees Alice's public repository only.
    let found: Value = fixture
        .api("/api/v1/repos/search?q=notes&uid=1", &bob.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(found["ok"], true);
    assert_eq!(found["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        fixture
            .api("/api/v1/repos/alice/private-notes", &bob.access_token)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        fixture
            .api("/api/v1/repos/alice/private-notes", &alice.access_token)
            .await
            .status(),
        StatusCode::OK
    );

    let create = |token: String, body: Value| {
        let fixture = &fixture;
        async move {
            fixture
                .http
                .post(format!(
                    "{}/api/v1/repos/alice/notes/issues",
                    fixture.standin.base_url()
                ))
                .header("authorization", format!("token {token}"))
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let response = create(
        bob.access_token.clone(),
        serde_json::json!({"title": "Hello from Bob", "body": "text"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let issue: Value = response.json().await.unwrap();
    assert_eq!(issue["number"], 2);
    assert_eq!(issue["user"]["login"], "bob");
    assert_eq!(issue["state"], "open");
    assert_eq!(issue["repository"]["full_name"], "alice/notes");
    let response = create(bob.access_token.clone(), serde_json::json!({"body": "x"})).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let listed: Value = fixture
        .api(
            "/api/v1/repos/alice/notes/issues?state=open",
            &alice.access_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["title"], "Hello from Bob");
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let single: Value = fixture
        .api("/api/v1/repos/alice/notes/issues/2", &alice.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(single["body"], "text");
    assert_eq!(
        fixture
            .api("/api/v1/repos/alice/notes/issues/99", &alice.access_token)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    let titles: Vec<String> = fixture
        .standin
        .issues("alice", "notes")
        .into_iter()
        .map(|issue| issue.title)
        .collect();
    assert_eq!(titles, ["Welcome", "Hello from Bob"]);

    // A read-only token cannot create issues.
    let reader = fixture
        .standin
        .issue_tokens(ALICE, CLI, "read:issue read:repository")
        .unwrap();
    let response = create(reader.access_token, serde_json::json!({"title": "no"})).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn shutdown_stops_serving_even_with_a_hung_request() {
    let fixture = start().await;
    let url = fixture.standin.token_url();
    fixture.standin.inject_token_faults(TokenFault::Hang, 1);
    let http = fixture.http.clone();
    let hung = tokio::spawn(async move {
        http.post(url)
            .form(&[("grant_type", "refresh_token")])
            .send()
            .await
    });
    assert!(
        fixture
            .standin
            .wait_for_hung_requests(1, Duration::from_secs(10))
            .await
    );
    let base = fixture.standin.base_url().to_string();
    assert!(fixture.standin.shutdown(Duration::from_secs(10)).await);
    let _ = hung.await.unwrap();
    assert!(
        reqwest::get(format!("{base}/api/v1/version"))
            .await
            .is_err()
    );
}

/// A real Forgejo-API MCP server (`gitea-mcp` 0.5.1 from PyPI, installed by
/// `tests/peers/install.sh`) lists repositories and creates an issue against the stand-in.
#[tokio::test]
async fn gitea_mcp_lists_repositories_and_creates_an_issue() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let binary =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/.venv/bin/gitea-mcp");
    if !binary.exists() {
        eprintln!(
            "skipped: {} is absent (run tests/peers/install.sh)",
            binary.display()
        );
        return;
    }
    let fixture = start().await;
    let tokens = fixture
        .standin
        .issue_tokens(ALICE, BROKER, "read:user read:repository write:issue")
        .unwrap();
    let mut child = tokio::process::Command::new(&binary)
        .env_clear()
        .env("GITEA_URL", fixture.standin.base_url())
        .env("GITEA_TOKEN", &tokens.access_token)
        .env("GITEA_MAX_RETRIES", "0")
        .env("HOME", std::env::temp_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut peer = StdioPeer {
        stdin: child.stdin.take().unwrap(),
        lines: BufReader::new(child.stdout.take().unwrap()).lines(),
    };
    let initialized = peer
        .call(
            1,
            "initialize",
            serde_json::json!({
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "standin-test", "version": "0"}
            }),
        )
        .await;
    assert!(
        initialized["result"]["serverInfo"].is_object(),
        "{initialized}"
    );
    peer.send(serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;

    let listed = peer
        .call(
            2,
            "tools/call",
            serde_json::json!({"name": "list_repos", "arguments": {}}),
        )
        .await;
    assert_eq!(listed["result"]["isError"], false, "{listed}");
    let text = listed["result"]["content"].to_string();
    assert!(
        text.contains("alice/notes") && text.contains("alice/private-notes"),
        "{text}"
    );

    let created = peer.call(
        3,
        "tools/call",
        serde_json::json!({"name": "create_issue", "arguments": {
            "owner": "alice", "repo": "notes", "title": "Filed by gitea-mcp", "body": "via the stand-in"
        }}),
    )
    .await;
    assert_eq!(created["result"]["isError"], false, "{created}");
    let titles: Vec<String> = fixture
        .standin
        .issues("alice", "notes")
        .into_iter()
        .map(|issue| issue.title)
        .collect();
    assert_eq!(titles, ["Welcome", "Filed by gitea-mcp"]);

    let info = peer
        .call(
            4,
            "tools/call",
            serde_json::json!({"name": "get_server_info", "arguments": {}}),
        )
        .await;
    let text = info["result"]["content"].to_string();
    assert!(
        text.contains("alice") && text.contains("11.0.1+gitea-1.22.0"),
        "{text}"
    );
    child.kill().await.unwrap();
}

/// A stdio MCP server spoken to with newline-delimited JSON-RPC.
struct StdioPeer {
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl StdioPeer {
    async fn send(&mut self, message: Value) {
        use tokio::io::AsyncWriteExt;
        self.stdin
            .write_all(format!("{message}\n").as_bytes())
            .await
            .unwrap();
    }

    /// Sends a request and returns the response with the same id, skipping notifications.
    async fn call(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send(
            serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        )
        .await;
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
                .await
                .expect("the peer answers within a minute")
                .unwrap()
                .expect("the peer closed stdout");
            let message: Value = serde_json::from_str(&line).unwrap();
            if message["id"] == id {
                return message;
            }
        }
    }
}

#[tokio::test]
async fn public_clients_always_pass_consent_and_a_scope_change_there_fails() {
    let fixture = start().await;
    let challenge = pkce_s256(VERIFIER);
    let authorize = |scope: &'static str| {
        let fixture = &fixture;
        let challenge = challenge.clone();
        async move {
            fixture
                .authorize(&[
                    ("client_id", CLI),
                    ("redirect_uri", CLI_CALLBACK),
                    ("response_type", "code"),
                    ("state", "c"),
                    ("scope", scope),
                    ("code_challenge", &challenge),
                    ("code_challenge_method", "S256"),
                ])
                .await
        }
    };
    assert!(authorize("read:user").await.contains_key("code"));
    // Same scope: consent passes again (public clients are never silent, RFC 6749 §10.2).
    assert!(authorize("read:user").await.contains_key("code"));
    // A different scope on the consent page: Forgejo's "a grant exists with different scope".
    let query = authorize("write:repository").await;
    assert_eq!(query["error"], "server_error");
    assert_eq!(
        query["error_description"],
        "a grant exists with different scope"
    );
    assert_eq!(query["state"], "c");
    // Consent refused by the user: access_denied; the existing grant is untouched.
    fixture.standin.set_consent(ConsentMode::Deny);
    assert_eq!(authorize("read:user").await["error"], "access_denied");
    assert_eq!(
        fixture.standin.grant_scope(ALICE, CLI).as_deref(),
        Some("read:user")
    );
}

#[tokio::test]
async fn an_openid_scope_adds_an_id_token_for_the_client() {
    let fixture = start().await;
    let tokens = fixture.login("openid email").await;
    let id_token = field(&tokens, "id_token");
    let payload = id_token.split('.').nth(1).unwrap();
    use base64::Engine as _;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["iss"], fixture.standin.base_url());
    assert_eq!(claims["aud"], serde_json::json!([BROKER]));
    assert_eq!(claims["sub"], "1");
    assert_eq!(claims["email"], "alice@forgejo.invalid");
    assert!(
        claims.get("preferred_username").is_none(),
        "no profile scope"
    );
    // The discovery document names the endpoints and offers no revocation or registration.
    let discovery: Value = fixture
        .http
        .get(format!(
            "{}/.well-known/openid-configuration",
            fixture.standin.base_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["token_endpoint"], fixture.standin.token_url());
    assert!(discovery.get("revocation_endpoint").is_none());
    assert!(discovery.get("registration_endpoint").is_none());
}

#[tokio::test]
async fn concurrent_refreshes_with_one_token_let_exactly_one_through() {
    let fixture = start().await;
    let tokens = fixture.login("read:user").await;
    let refresh = field(&tokens, "refresh_token");
    let answers = futures_util::future::join_all((0..8).map(|_| fixture.refresh(refresh))).await;
    let ok = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .count();
    assert_eq!(ok, 1, "{answers:?}");
    for answer in answers
        .iter()
        .filter(|(status, _)| *status != StatusCode::OK)
    {
        assert_token_error(answer, "unauthorized_client", "token was already used");
    }
    assert_eq!(fixture.standin.counters().refresh_grants, 8);
    assert_eq!(fixture.standin.counters().tokens_issued, 2);
}

#[tokio::test]
async fn introspection_needs_client_basic_auth() {
    let fixture = start().await;
    let tokens = fixture.login("read:user").await;
    let url = format!("{}/login/oauth/introspect", fixture.standin.base_url());
    let introspect = |token: String, secret: &'static str| {
        let fixture = &fixture;
        let url = url.clone();
        async move {
            fixture
                .http
                .post(url)
                .basic_auth(BROKER, Some(secret))
                .form(&[("token", token.as_str())])
                .send()
                .await
                .unwrap()
        }
    };
    let response = introspect(field(&tokens, "access_token").into(), BROKER_SECRET).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["active"], true);
    assert_eq!(body["sub"], "1");
    assert_eq!(body["scope"], "read:user");
    let body: Value = introspect("unknown".into(), BROKER_SECRET)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body, serde_json::json!({"active": false}));
    assert_eq!(
        introspect("unknown".into(), "wrong").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let response = fixture
        .http
        .get(format!(
            "{}/login/oauth/userinfo",
            fixture.standin.base_url()
        ))
        .bearer_auth("unknown")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], r#"Bearer realm="""#);
    assert_eq!(response.text().await.unwrap(), "no valid authorization");
}

#[tokio::test]
async fn malformed_input_gets_forgejo_errors_never_a_500() {
    let fixture = start().await;
    let base = fixture.standin.base_url().to_string();
    let token = fixture
        .standin
        .issue_tokens(ALICE, BROKER, "")
        .unwrap()
        .access_token;

    let response = fixture
        .http
        .get(fixture.standin.authorize_url())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = fixture
        .http
        .get(format!(
            "{}?client_id=%FF%FE&redirect_uri=%00",
            fixture.standin.authorize_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    for (content_type, body) in [
        ("application/json", b"{not json".to_vec()),
        ("application/json", b"[1,2]".to_vec()),
        (
            "application/x-www-form-urlencoded",
            vec![0xff, 0x00, b'&', b'=', b'='],
        ),
        ("text/plain", b"grant_type".to_vec()),
    ] {
        let response = fixture
            .http
            .post(fixture.standin.token_url())
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{content_type}");
        let error: Value = response.json().await.unwrap();
        assert!(error["error"].is_string());
    }

    let grant = fixture
        .http
        .post(format!("{base}/login/oauth/grant"))
        .body("garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(grant.status(), StatusCode::BAD_REQUEST);

    for path in [
        "/api/v1/repos/alice/notes/issues/not-a-number",
        "/api/v1/repos/alice/notes/issues/-1",
        "/api/v1/repos/nobody/nothing",
        "/api/v1/repos/alice/notes/issues/99999999999999999999999",
        "/api/v1/no/such/route",
    ] {
        let response = fixture.api(path, &token).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let response = fixture
        .api("/api/v1/user/repos?page=-3&limit=abc", &token)
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    let response = fixture
        .http
        .post(format!("{base}/api/v1/repos/alice/notes/issues"))
        .header("authorization", format!("token {token}"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // Query-string tokens are not accepted (Forgejo removed them).
    let response = fixture
        .http
        .get(format!(
            "{base}/api/v1/user?token={token}&access_token={token}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}
