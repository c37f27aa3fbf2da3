//! The token endpoint and revocation (mcp-spec-checklist §6): codes, PKCE, resource binding,
//! client authentication, refresh rotation with reuse detection and grace, RFC 7009.

use forgejo_mcp_broker::audit::AuditEvent;
use forgejo_mcp_broker::auth::TokenRejection;
use forgejo_mcp_broker::secret::pkce_s256;

use crate::fixtures::{TestBroker, TestClient, Tokens, VERIFIER};

async fn verify(broker: &TestBroker, token: &str) -> Result<i64, TokenRejection> {
    broker
        .app()
        .auth
        .verifier
        .verify(token, &broker.resource())
        .await
        .map(|principal| principal.user_id)
}

async fn new_client(broker: &TestBroker) -> TestClient {
    broker
        .register_public_client(&["https://app.example/cb"])
        .await
}

#[tokio::test]
async fn token_responses_are_not_cached_and_match_rfc_6749() {
    let broker = TestBroker::start().await;
    let client = new_client(&broker).await;
    let code = broker.authorize(&client).await;
    let response = TestBroker::http()
        .post(broker.url("/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("code_verifier", VERIFIER),
            ("redirect_uri", client.redirect_uri.as_str()),
            ("client_id", client.client_id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_in"].as_i64().unwrap() > 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_reused_code_fails_and_revokes_what_it_issued() {
    let broker = TestBroker::start().await;
    let client = new_client(&broker).await;
    let code = broker.authorize(&client).await;
    let (status, body) = broker.exchange_code(&client, &code).await;
    assert_eq!(status, 200);
    let tokens = Tokens::from_body(body);
    assert!(verify(&broker, &tokens.access_token).await.is_ok());

    let (status, body) = broker.exchange_code(&client, &code).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    broker.assert_revoked(&client, &tokens).await;
    assert!(
        broker
            .audit_events()
            .iter()
            .any(|event| matches!(event, AuditEvent::CodeReused { .. }))
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn another_clients_replay_of_a_used_code_fails_without_revoking_the_victims_tokens() {
    let broker = TestBroker::start().await;
    let victim = new_client(&broker).await;
    let attacker = new_client(&broker).await;
    let code = broker.authorize(&victim).await;
    let (status, body) = broker.exchange_code(&victim, &code).await;
    assert_eq!(status, 200, "{body}");
    let tokens = Tokens::from_body(body);

    let (status, body) = broker.exchange_code(&attacker, &code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert!(verify(&broker, &tokens.access_token).await.is_ok());
    let (status, body) = broker.refresh(&victim, &tokens.refresh_token).await;
    assert_eq!(status, 200, "{body}");
    // Audited all the same, naming who presented it.
    assert!(broker.audit_events().iter().any(|event| matches!(
        event,
        AuditEvent::CodeReused { client_id, presented_by, .. }
            if *client_id == victim.client_id && *presented_by == attacker.client_id
    )));
    broker.shutdown().await;
}

#[tokio::test]
async fn an_expired_code_is_refused() {
    let broker = TestBroker::builder().manual_clock().start().await;
    let client = new_client(&broker).await;
    let code = broker.authorize(&client).await;
    broker.advance(61);
    let (status, body) = broker.exchange_code(&client, &code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn wrong_verifier_redirect_resource_or_client_fail_and_burn_the_code() {
    let broker = TestBroker::start().await;
    let client = new_client(&broker).await;
    let other = new_client(&broker).await;
    let resource = broker.resource();
    let wrong_verifier = "x".repeat(43);
    type Case<'a> = (&'a TestClient, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            &client,
            vec![("code_verifier", wrong_verifier.as_str())],
            "invalid_grant",
        ),
        (&client, vec![("code_verifier", "short")], "invalid_request"),
        (
            &client,
            vec![("redirect_uri", "https://app.example/other")],
            "invalid_grant",
        ),
        (
            &client,
            vec![("resource", "https://elsewhere.example/mcp")],
            "invalid_target",
        ),
        (&other, vec![], "invalid_grant"),
    ];
    for (who, overrides, error) in cases {
        let code = broker.authorize(&client).await;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("code_verifier", VERIFIER),
            ("redirect_uri", client.redirect_uri.as_str()),
            ("resource", resource.as_str()),
        ];
        for (key, value) in &overrides {
            form.retain(|(k, _)| k != key);
            form.push((key, value));
        }
        let (status, body) = broker.token_request(who, &form).await;
        assert_eq!(status, 400, "{overrides:?}: {body}");
        assert_eq!(body["error"], error, "{overrides:?}");
        if error != "invalid_request" {
            // The code was spent by the failed attempt.
            let (status, _) = broker.exchange_code(&client, &code).await;
            assert_eq!(status, 400, "{overrides:?}");
        }
    }
    // A correct challenge for a different verifier is still the code's challenge: sanity.
    assert_ne!(pkce_s256(VERIFIER), pkce_s256(&wrong_verifier));
    broker.shutdown().await;
}

/// `replayed`, an already-rotated refresh token, comes back: `invalid_grant`, and the whole
/// family is gone (`newest`'s refresh and access tokens too), audited as a reuse.
async fn assert_the_replay_kills_the_family(
    broker: &TestBroker,
    client: &TestClient,
    replayed: &Tokens,
    newest: &Tokens,
) {
    let (status, body) = broker.refresh(client, &replayed.refresh_token).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    broker.assert_revoked(client, newest).await;
    assert!(
        broker
            .audit_events()
            .iter()
            .any(|event| matches!(event, AuditEvent::RefreshTokenReuse { .. }))
    );
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_replay_after_the_grace_window_kills_the_family() {
    let broker = TestBroker::builder().manual_clock().start().await;
    let (client, first) = broker.login_new_client().await;
    let (status, body) = broker.refresh(&client, &first.refresh_token).await;
    assert_eq!(status, 200, "{body}");
    let second = Tokens::from_body(body);
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);
    assert!(verify(&broker, &second.access_token).await.is_ok());

    broker.advance(31);
    assert_the_replay_kills_the_family(&broker, &client, &first, &second).await;
    // Every access token of the family, the first one's too.
    assert_eq!(
        verify(&broker, &first.access_token).await,
        Err(TokenRejection::Revoked)
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn a_rotated_refresh_token_replayed_after_it_expired_still_kills_the_family() {
    let broker = TestBroker::builder().manual_clock().start().await;
    let (client, first) = broker.login_new_client().await;
    let month = 30 * 24 * 3600;
    // Rotated ten seconds before it would have expired…
    broker.advance(month - 10);
    let (status, body) = broker.refresh(&client, &first.refresh_token).await;
    assert_eq!(status, 200, "{body}");
    let second = Tokens::from_body(body);
    // …and replayed once expired, after the grace window: theft all the same, which ends
    // the family.
    broker.advance(40);
    assert_the_replay_kills_the_family(&broker, &client, &first, &second).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn a_lost_refresh_response_is_forgiven_once_within_the_grace_window() {
    let broker = TestBroker::builder().manual_clock().start().await;
    let (client, first) = broker.login_new_client().await;
    let (status, _) = broker.refresh(&client, &first.refresh_token).await;
    assert_eq!(status, 200);
    broker.advance(10);
    // The client never saw that response and retries with the old token.
    let (status, body) = broker.refresh(&client, &first.refresh_token).await;
    assert_eq!(status, 200, "{body}");
    let retried = Tokens::from_body(body);
    assert!(verify(&broker, &retried.access_token).await.is_ok());
    // A second replay is theft, grace or not.
    let (status, _) = broker.refresh(&client, &first.refresh_token).await;
    assert_eq!(status, 400);
    assert_eq!(
        verify(&broker, &retried.access_token).await,
        Err(TokenRejection::Revoked)
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn without_a_grace_window_a_replay_in_the_same_second_kills_the_family() {
    let broker = TestBroker::builder()
        .manual_clock()
        .oauth("refresh_grace_secs = 0")
        .start()
        .await;
    let (client, first) = broker.login_new_client().await;
    let (status, body) = broker.refresh(&client, &first.refresh_token).await;
    assert_eq!(status, 200, "{body}");
    let second = Tokens::from_body(body);
    // The clock has not moved: the replay comes 0 s after the rotation.
    assert_the_replay_kills_the_family(&broker, &client, &first, &second).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn access_tokens_expire_and_are_bound_to_the_resource() {
    let broker = TestBroker::builder()
        .manual_clock()
        .oauth("access_token_ttl_secs = 120")
        .start()
        .await;
    let (client, tokens) = broker.login_new_client().await;
    assert_eq!(tokens.expires_in, 120);
    let verifier = broker.app().auth.verifier.clone();
    assert_eq!(
        verifier
            .verify(&tokens.access_token, "https://other.example/mcp")
            .await,
        Err(TokenRejection::WrongAudience)
    );
    assert_eq!(
        verifier.verify("fmba_unknown", &broker.resource()).await,
        Err(TokenRejection::Unknown)
    );
    broker.advance(121);
    assert_eq!(
        verify(&broker, &tokens.access_token).await,
        Err(TokenRejection::Expired)
    );
    // The refresh token outlives it.
    let (status, body) = broker.refresh(&client, &tokens.refresh_token).await;
    assert_eq!(status, 200, "{body}");
    // A refresh asking for another resource is refused.
    let renewed = Tokens::from_body(body);
    let (status, body) = broker
        .token_request(
            &client,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &renewed.refresh_token),
                ("resource", "https://other.example/mcp"),
            ],
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target"))
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn confidential_clients_authenticate_by_post_or_basic() {
    let broker = TestBroker::start().await;
    for method in ["client_secret_post", "client_secret_basic"] {
        let client = broker
            .register_client(&["https://app.example/cb"], method)
            .await;
        let secret = client.client_secret.clone().unwrap();
        let code = broker.authorize(&client).await;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("code_verifier", VERIFIER),
            ("redirect_uri", client.redirect_uri.as_str()),
        ];
        // Wrong secret first: 401 invalid_client with a challenge, code untouched.
        let wrong = TestBroker::http()
            .post(broker.url("/oauth/token"))
            .basic_auth(&client.client_id, Some("wrong"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401);
        assert!(wrong.headers().contains_key("www-authenticate"));
        let body: serde_json::Value = wrong.json().await.unwrap();
        assert_eq!(body["error"], "invalid_client");
        let missing = TestBroker::http()
            .post(broker.url("/oauth/token"))
            .form(&[form.as_slice(), &[("client_id", client.client_id.as_str())]].concat())
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 401);

        let request = TestBroker::http().post(broker.url("/oauth/token"));
        let request = if method == "client_secret_basic" {
            request
                .basic_auth(&client.client_id, Some(&secret))
                .form(&form)
        } else {
            request.form(
                &[
                    form.as_slice(),
                    &[
                        ("client_id", client.client_id.as_str()),
                        ("client_secret", secret.as_str()),
                    ],
                ]
                .concat(),
            )
        };
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{method}");
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn unknown_clients_and_grant_types_get_rfc_errors() {
    let broker = TestBroker::start().await;
    let ghost = TestClient {
        client_id: "mcp_ghost".into(),
        client_secret: None,
        redirect_uri: "https://app.example/cb".into(),
    };
    let (status, body) = broker.refresh(&ghost, "fmbr_x").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let client = new_client(&broker).await;
    let (status, body) = broker
        .token_request(&client, &[("grant_type", "client_credentials")])
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    let (status, body) = broker
        .token_request(
            &client,
            &[
                ("grant_type", "refresh_token"),
                ("grant_type", "refresh_token"),
            ],
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, body) = broker.refresh(&client, "fmbr_unknown").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    broker.shutdown().await;
}

async fn revoke(broker: &TestBroker, client: &TestClient, token: &str, hint: Option<&str>) -> u16 {
    let mut form = vec![("token", token), ("client_id", client.client_id.as_str())];
    if let Some(hint) = hint {
        form.push(("token_type_hint", hint));
    }
    TestBroker::http()
        .post(broker.url("/oauth/revoke"))
        .form(&form)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn revocation_follows_rfc_7009() {
    let broker = TestBroker::start().await;
    let (client, tokens) = broker.login_new_client().await;
    // Verified twice first: the verifier's reuse of a verdict must not outlive a revocation.
    for _ in 0..2 {
        assert!(verify(&broker, &tokens.access_token).await.is_ok());
    }
    // An access token: only it dies.
    assert_eq!(
        revoke(&broker, &client, &tokens.access_token, Some("access_token")).await,
        200
    );
    assert_eq!(
        verify(&broker, &tokens.access_token).await,
        Err(TokenRejection::Revoked)
    );
    let (status, body) = broker.refresh(&client, &tokens.refresh_token).await;
    assert_eq!(status, 200);
    let renewed = Tokens::from_body(body);
    for _ in 0..2 {
        assert!(verify(&broker, &renewed.access_token).await.is_ok());
    }
    // A refresh token (with a misleading hint): the family dies.
    assert_eq!(
        revoke(
            &broker,
            &client,
            &renewed.refresh_token,
            Some("access_token")
        )
        .await,
        200
    );
    assert_eq!(
        verify(&broker, &renewed.access_token).await,
        Err(TokenRejection::Revoked)
    );
    let (status, _) = broker.refresh(&client, &renewed.refresh_token).await;
    assert_eq!(status, 400);
    // Unknown tokens and other clients' tokens: 200, nothing happens.
    assert_eq!(
        revoke(&broker, &client, "fmbr_never-issued", None).await,
        200
    );
    assert_eq!(revoke(&broker, &client, "garbage", None).await, 200);
    // However long: an invalid token is not an error (§2.2).
    assert_eq!(revoke(&broker, &client, &"x".repeat(4096), None).await, 200);
    let (other_client, other_tokens) = broker.login_new_client().await;
    assert_eq!(
        revoke(&broker, &client, &other_tokens.refresh_token, None).await,
        200
    );
    assert!(verify(&broker, &other_tokens.access_token).await.is_ok());
    let _ = other_client;
    assert!(
        broker
            .audit_events()
            .iter()
            .any(|event| matches!(event, AuditEvent::TokenRevoked { .. }))
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn revoked_families_are_announced_for_the_mcp_edge() {
    use forgejo_mcp_broker::auth::AccessEnded;
    let broker = TestBroker::builder().manual_clock().start().await;
    let mut events = broker.app().auth.access_ended.subscribe();
    let (client, tokens) = broker.login_new_client().await;
    let grant_id = broker
        .app()
        .auth
        .verifier
        .verify(&tokens.access_token, &broker.resource())
        .await
        .unwrap()
        .grant_id;
    broker.refresh(&client, &tokens.refresh_token).await;
    broker.advance(31);
    broker.refresh(&client, &tokens.refresh_token).await;
    assert_eq!(
        events.try_recv().unwrap(),
        AccessEnded::Grant {
            grant_id: grant_id.to_string(),
            user_id: crate::fixtures::ALICE
        }
    );
    assert!(events.try_recv().is_err(), "announced once");

    // Operator revocation of a user announces each grant.
    let (_, second) = broker.login_new_client().await;
    let revoked = broker
        .app()
        .auth
        .oauth_store
        .revoke_user(crate::fixtures::ALICE, broker.now())
        .unwrap();
    assert_eq!(revoked.len(), 1);
    assert!(matches!(events.try_recv(), Ok(AccessEnded::Grant { .. })));
    assert_eq!(
        verify(&broker, &second.access_token).await,
        Err(TokenRejection::Revoked)
    );
    broker.shutdown().await;
}
