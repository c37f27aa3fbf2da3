//! Discovery (mcp-spec-checklist §2, §4) and the `/mcp` 401 (§3).

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use forgejo_mcp_broker::auth::{AccessTokenVerifier, TokenRejection};
use forgejo_mcp_broker::oauth::verifier::bearer_token;
use forgejo_mcp_broker::oauth::{mcp_token_refused, mcp_unauthorized};
use serde_json::Value;

use crate::fixtures::TestBroker;

async fn get_json(broker: &TestBroker, path: &str) -> (reqwest::header::HeaderMap, Value) {
    let response = TestBroker::http()
        .get(broker.url(path))
        .header("origin", "http://localhost:6274")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    let headers = response.headers().clone();
    (headers, response.json().await.unwrap())
}

#[tokio::test]
async fn protected_resource_metadata_at_both_paths_names_the_mcp_url() {
    let broker = TestBroker::start().await;
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let (headers, body) = get_json(&broker, path).await;
        assert_eq!(body["resource"], broker.resource());
        assert_eq!(body["authorization_servers"][0], broker.base_url);
        assert_eq!(headers["access-control-allow-origin"], "*");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn authorization_server_metadata_in_both_forms() {
    let broker = TestBroker::start().await;
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let (headers, body) = get_json(&broker, path).await;
        let issuer = broker.base_url.clone();
        assert_eq!(body["issuer"], issuer);
        assert_eq!(
            body["authorization_endpoint"],
            format!("{issuer}/oauth/authorize")
        );
        assert_eq!(body["token_endpoint"], format!("{issuer}/oauth/token"));
        assert_eq!(
            body["registration_endpoint"],
            format!("{issuer}/oauth/register")
        );
        assert_eq!(
            body["revocation_endpoint"],
            format!("{issuer}/oauth/revoke")
        );
        assert_eq!(
            body["code_challenge_methods_supported"],
            serde_json::json!(["S256"])
        );
        assert_eq!(
            body["response_types_supported"],
            serde_json::json!(["code"])
        );
        assert_eq!(body["client_id_metadata_document_supported"], true);
        assert_eq!(
            body["token_endpoint_auth_methods_supported"],
            serde_json::json!(["none", "client_secret_post", "client_secret_basic"])
        );
        assert_eq!(headers["access-control-allow-origin"], "*");
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn cors_preflight_is_answered_on_oauth_endpoints() {
    let broker = TestBroker::start().await;
    for path in [
        "/oauth/token",
        "/oauth/register",
        "/token",
        "/register",
        "/oauth/revoke",
    ] {
        let response = TestBroker::http()
            .request(reqwest::Method::OPTIONS, broker.url(path))
            .header("origin", "http://localhost:6274")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        assert_eq!(
            response.headers()["access-control-allow-origin"],
            "*",
            "{path}"
        );
    }
    broker.shutdown().await;
}

/// What the MCP edge will do: verify the bearer token, answer failures with the helper.
async fn mcp_stand_in(
    State((verifier, issuer, resource)): State<(Arc<dyn AccessTokenVerifier>, String, String)>,
    headers: HeaderMap,
) -> Response {
    let token = match bearer_token(&headers) {
        Ok(Some(token)) => token,
        Ok(None) => return mcp_unauthorized(&issuer, TokenRejection::Missing),
        Err(rejection) => return mcp_unauthorized(&issuer, rejection),
    };
    match verifier.verify(token, &resource).await {
        Ok(principal) => format!("hello {}", principal.username).into_response(),
        Err(rejection) => mcp_token_refused(&issuer, rejection),
    }
}

#[tokio::test]
async fn mcp_requests_without_a_valid_token_get_the_401_challenge() {
    let broker = TestBroker::start().await;
    let auth = broker.app().auth.clone();
    let router = axum::Router::new()
        .route("/mcp", axum::routing::post(mcp_stand_in))
        .with_state((
            auth.verifier.clone(),
            auth.issuer.clone(),
            broker.resource(),
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let mcp = format!("http://{address}/mcp");
    let metadata = format!(
        "resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
        broker.base_url
    );

    let response = TestBroker::http().post(&mcp).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(challenge, format!("Bearer {metadata}"));

    let response = TestBroker::http()
        .post(&mcp)
        .bearer_auth("fmba_not-a-real-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.contains(&metadata) && challenge.contains("error=\"invalid_token\""));

    let (_, tokens) = broker.login_new_client().await;
    let response = TestBroker::http()
        .post(&mcp)
        .bearer_auth(&tokens.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "hello alice");
    server.abort();
    broker.shutdown().await;
}

#[tokio::test]
async fn mcp_answers_503_not_401_when_the_token_store_fails() {
    let broker = TestBroker::start().await;
    let (_, tokens) = broker.login_new_client().await;
    let post = || {
        TestBroker::http()
            .post(broker.url("/mcp"))
            .bearer_auth(&tokens.access_token)
            .header("accept", "application/json, text/event-stream")
            .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
            .send()
    };
    let admitted = post().await.unwrap().status();
    assert!(admitted != 401 && admitted != 503, "{admitted}");

    // The store fails under the broker: the table the verifier reads is gone.
    let db = rusqlite::Connection::open(broker.config().server.database_path()).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    db.execute_batch("DROP TABLE oauth_access_tokens").unwrap();
    assert_eq!(
        broker
            .app()
            .auth
            .verifier
            .verify(&tokens.access_token, &broker.resource())
            .await,
        Err(TokenRejection::Unavailable)
    );

    // The token may well be valid: the client must keep it and retry, not start OAuth again.
    let response = post().await.unwrap();
    assert_eq!(response.status(), 503);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert!(!response.headers().contains_key("www-authenticate"));
    let body = response.text().await.unwrap();
    for internal in ["oauth_access_tokens", "table", "sqlite", "SQLite"] {
        assert!(!body.contains(internal), "{body}");
    }
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    broker.shutdown().await;
}
