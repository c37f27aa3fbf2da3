//! Dynamic Client Registration, RFC 7591 (mcp-spec-checklist §7).

use forgejo_mcp_broker::audit::AuditEvent;
use serde_json::json;

use crate::fixtures::TestBroker;

#[tokio::test]
async fn public_and_confidential_clients_register() {
    let broker = TestBroker::start().await;
    let (status, body) = broker
        .register(json!({
            "client_name": "MCP Inspector",
            "redirect_uris": ["http://localhost:6274/oauth/callback", "http://localhost:6274/oauth/callback/debug"],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "scope": "read write",
            "some_future_member": {"ignored": true},
        }))
        .await;
    assert_eq!(status, 201, "{body}");
    let client_id = body["client_id"].as_str().unwrap();
    assert!(!client_id.starts_with("https://"));
    assert!(body["client_id_issued_at"].as_i64().unwrap() > 0);
    assert_eq!(body["token_endpoint_auth_method"], "none");
    assert!(body.get("client_secret").is_none());
    assert!(body.get("some_future_member").is_none());
    assert_eq!(
        body["redirect_uris"][1],
        "http://localhost:6274/oauth/callback/debug"
    );

    // RFC 7591 §2: an omitted method means client_secret_basic, and we say so.
    let (status, body) = broker
        .register(json!({"redirect_uris": ["https://claude.ai/api/mcp/auth_callback"]}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["token_endpoint_auth_method"], "client_secret_basic");
    assert!(body["client_secret"].as_str().unwrap().len() >= 43);
    assert_eq!(body["client_secret_expires_at"], 0);

    // The root alias answers too.
    let response = TestBroker::http()
        .post(broker.url("/register"))
        .json(&json!({"redirect_uris": ["https://vscode.dev/redirect"], "token_endpoint_auth_method": "client_secret_post"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["cache-control"], "no-store");
    broker.shutdown().await;
}

#[tokio::test]
async fn malformed_metadata_gets_rfc_7591_errors() {
    let broker = TestBroker::start().await;
    let cases = [
        (json!({}), "invalid_redirect_uri"),
        (json!({"redirect_uris": []}), "invalid_redirect_uri"),
        (
            json!({"redirect_uris": ["http://evil.example/cb"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb#x"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["cursor://anysphere.cursor-mcp/oauth/callback"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": "https://a.example/cb"}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "private_key_jwt"}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "grant_types": ["client_credentials"]}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "response_types": ["token"]}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "client_name": ["x"]}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "logo_uri": "javascript:alert(1)"}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "jwks": {"keys": []}}),
            "invalid_client_metadata",
        ),
        (json!([1, 2, 3]), "invalid_client_metadata"),
    ];
    for (metadata, error) in cases {
        let (status, body) = broker.register(metadata.clone()).await;
        assert_eq!(status, 400, "{metadata}");
        assert_eq!(body["error"], error, "{metadata}");
        assert!(body["error_description"].is_string());
    }
    for raw in ["not json", "{\"redirect_uris\": [", ""] {
        let response = TestBroker::http()
            .post(broker.url("/oauth/register"))
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{raw}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_client_metadata");
    }
    let huge =
        json!({"redirect_uris": ["https://a.example/cb"], "client_name": "x".repeat(70_000)});
    let (status, _) = broker.register(huge).await;
    assert_eq!(status, 413, "bodies over 64 KiB are refused before parsing");
    let long_name =
        json!({"redirect_uris": ["https://a.example/cb"], "client_name": "x".repeat(201)});
    let (status, body) = broker.register(long_name).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_client_metadata"))
    );
    let events = broker.audit_events();
    assert!(
        events
            .iter()
            .all(|event| event.name() != "client_registered")
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn the_registration_audit_record_carries_the_address_behind_a_trusted_proxy() {
    // The test client connects from 127.0.0.1: the proxy, as far as the broker knows.
    let broker = TestBroker::builder()
        .server(r#"trusted_proxies = ["127.0.0.1"]"#)
        .start()
        .await;
    let response = TestBroker::http()
        .post(broker.url("/oauth/register"))
        .header("x-forwarded-for", "198.51.100.7")
        .json(&json!({
            "redirect_uris": ["http://127.0.0.1/callback"],
            "token_endpoint_auth_method": "none",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let ips: Vec<Option<String>> = broker
        .audit_events()
        .into_iter()
        .filter_map(|event| match event {
            AuditEvent::ClientRegistered { ip, .. } => Some(ip),
            _ => None,
        })
        .collect();
    assert_eq!(ips, [Some("198.51.100.7".to_owned())]);
    broker.shutdown().await;
}

/// Registration is open to anyone, and per-address limits do not stop someone with many
/// addresses: the registered clients nobody uses are capped, the oldest forgotten first; a
/// client with a grant is never counted or forgotten.
#[tokio::test]
async fn registering_past_the_unused_client_cap_forgets_the_oldest_unused_client() {
    let broker = TestBroker::builder()
        .oauth("max_unused_clients = 2")
        .start()
        .await;
    let (used, _) = broker.login_new_client().await;
    let mut unused = Vec::new();
    for _ in 0..3 {
        unused.push(
            broker
                .register_public_client(&["https://app.example/cb"])
                .await,
        );
    }
    let known = |client: &crate::fixtures::TestClient| {
        let url = broker.authorize_url(client, &[]);
        async move {
            TestBroker::http()
                .get(url)
                .send()
                .await
                .unwrap()
                .status()
                .is_success()
        }
    };
    assert!(
        !known(&unused[0]).await,
        "the oldest unused client is forgotten"
    );
    assert!(known(&unused[1]).await && known(&unused[2]).await);
    assert!(known(&used).await, "a client with a grant is kept");
    let expired: Vec<String> = broker
        .audit_events()
        .into_iter()
        .filter_map(|event| match event {
            AuditEvent::ClientExpired { client_id } => Some(client_id),
            _ => None,
        })
        .collect();
    assert_eq!(expired, [unused[0].client_id.clone()]);
    broker.shutdown().await;
}
