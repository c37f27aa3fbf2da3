//! Client ID Metadata Documents over local TLS (mcp-spec-checklist §8): fetched with SSRF
//! guards, validated, cached.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde_json::json;

use crate::fixtures::tls::TlsServer;
use crate::fixtures::{TestBroker, TestClient};

const CALLBACK: &str = "https://app.example/callback";

/// A document server: `/client.json` (good), `/no-store` (good, not to be cached), `/redirect`, `/large`, `/slow`, `/wrong-redirect`,
/// `/secret`; counts hits.
async fn document_server() -> (TlsServer, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let document = |path: &'static str, redirect: &'static str| {
        move |headers: HeaderMap| async move {
            let host = headers["host"].to_str().unwrap().to_owned();
            axum::Json(json!({
                "client_id": format!("https://{host}{path}"),
                "client_name": "CIMD Test Client",
                "redirect_uris": [redirect],
                "grant_types": ["authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:jwt-bearer"],
                "token_endpoint_auth_method": "none",
            }))
        }
    };
    let router = Router::new()
        .route("/client.json", get(document("/client.json", CALLBACK)))
        .route(
            "/wrong-redirect",
            get(document("/wrong-redirect", "https://other.example/cb")),
        )
        .route(
            "/redirect",
            get(|| async { Redirect::temporary("/client.json") }),
        )
        .route(
            "/no-store",
            get({
                let document = document("/no-store", CALLBACK);
                move |headers: HeaderMap| async move {
                    let mut response = document(headers).await.into_response();
                    response
                        .headers_mut()
                        .insert("cache-control", "no-store".parse().unwrap());
                    response
                }
            }),
        )
        .route("/large", get(|| async { "x".repeat(64 * 1024) }))
        .route(
            "/slow",
            get(|| async {
                std::future::pending::<()>().await;
                StatusCode::OK
            }),
        )
        .route(
            "/secret",
            get(|headers: HeaderMap| async move {
                let host = headers["host"].to_str().unwrap().to_owned();
                axum::Json(json!({
                    "client_id": format!("https://{host}/secret"),
                    "client_name": "Leaky",
                    "redirect_uris": [CALLBACK],
                    "client_secret": "should-not-be-here",
                }))
                .into_response()
            }),
        )
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let response: Response = next.run(request).await;
                    response
                }
            },
        ));
    (TlsServer::start(router).await, hits)
}

async fn broker_trusting(server: &TlsServer, allow_loopback: bool) -> TestBroker {
    TestBroker::builder()
        .oauth(&format!(
            "cimd_extra_ca_file = \"{}\"",
            server.ca_file.display()
        ))
        .oauth(&format!("cimd_allow_loopback_for_tests = {allow_loopback}"))
        .oauth("cimd_timeout_ms = 1000")
        .start()
        .await
}

fn cimd_client(server: &TlsServer, path: &str) -> TestClient {
    TestClient {
        client_id: server.url(path),
        client_secret: None,
        redirect_uri: CALLBACK.to_owned(),
    }
}

#[tokio::test]
async fn a_cimd_client_completes_the_flow_and_its_document_is_cached() {
    let (server, hits) = document_server().await;
    let broker = broker_trusting(&server, true).await;
    let client = cimd_client(&server, "/client.json");
    let browser = broker.browser();
    let page = browser
        .open_consent(&broker.authorize_url(&client, &[]))
        .await;
    assert_eq!(page.status, 200, "{}", page.html);
    assert!(page.html.contains("CIMD Test Client"));
    assert!(
        page.html
            .contains("published at <strong>localhost</strong>")
    );
    assert!(page.html.contains("app.example"));
    let tokens = broker.login(&client).await;
    assert!(tokens.access_token.starts_with("fmba_"));
    let (status, _) = broker.refresh(&client, &tokens.refresh_token).await;
    assert_eq!(status, 200);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "fetched once, then cached");
    broker.shutdown().await;
}

#[tokio::test]
async fn a_no_store_document_is_kept_a_minute_and_a_spent_fetch_budget_serves_the_copy() {
    let (server, hits) = document_server().await;
    let broker = TestBroker::builder()
        .manual_clock()
        .oauth(&format!(
            "cimd_extra_ca_file = \"{}\"",
            server.ca_file.display()
        ))
        .oauth("cimd_allow_loopback_for_tests = true")
        .toml("[rate_limits.cimd_fetch]\nper_client = \"2/h\"")
        .start()
        .await;
    let client = cimd_client(&server, "/no-store");
    let open = || async {
        let page = broker
            .browser()
            .open_consent(&broker.authorize_url(&client, &[]))
            .await;
        assert_eq!(page.status, 200, "{}", page.html);
        assert!(page.html.contains("CIMD Test Client"));
    };
    // Anyone's authorizations within the minute use the copy: no fetch, no budget spent.
    for _ in 0..5 {
        open().await;
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    broker.advance(61);
    open().await;
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // The budget (2 an hour) is spent: the expired copy serves instead of a refusal.
    broker.advance(61);
    open().await;
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    broker.shutdown().await;
}

async fn assert_refused(broker: &TestBroker, client: &TestClient) {
    let response = broker
        .browser()
        .get(&broker.authorize_url(client, &[]))
        .await;
    assert_eq!(response.status(), 400, "{}", client.client_id);
    assert!(response.headers().get("location").is_none());
    let html = response.text().await.unwrap();
    assert!(
        html.contains("invalid_client") || html.contains("invalid_request"),
        "{html}"
    );
}

#[tokio::test]
async fn bad_documents_are_refused_and_not_cached() {
    let (server, hits) = document_server().await;
    let broker = broker_trusting(&server, true).await;
    for path in ["/redirect", "/large", "/slow", "/secret", "/missing"] {
        assert_refused(&broker, &cimd_client(&server, path)).await;
    }
    // A document that does not list the redirect URI.
    assert_refused(&broker, &cimd_client(&server, "/wrong-redirect")).await;
    let before = hits.load(Ordering::SeqCst);
    assert_refused(&broker, &cimd_client(&server, "/secret")).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        before + 1,
        "errors are not cached"
    );
    // The redirect was not followed: /client.json was never fetched.
    assert_eq!(before, 6);
    broker.shutdown().await;
}

#[tokio::test]
async fn private_and_loopback_addresses_are_refused_without_a_fetch() {
    let (server, hits) = document_server().await;
    // Production setting: loopback forbidden, even with the CA trusted.
    let broker = broker_trusting(&server, false).await;
    assert_refused(&broker, &cimd_client(&server, "/client.json")).await;
    let literal = TestClient {
        client_id: format!("https://127.0.0.1:{}/client.json", server.address.port()),
        ..cimd_client(&server, "/client.json")
    };
    assert_refused(&broker, &literal).await;
    for private in [
        "https://10.0.0.1/client.json",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/client.json",
        "https://[fd00::1]/client.json",
        "https://192.168.1.1/client.json",
    ] {
        let client = TestClient {
            client_id: private.to_owned(),
            ..cimd_client(&server, "/client.json")
        };
        assert_refused(&broker, &client).await;
    }
    // Malformed client id URLs never cause a fetch either.
    for bad in [
        "https://localhost/",
        "https://localhost/a/../b",
        "https://localhost/x?y=1",
    ] {
        let client = TestClient {
            client_id: bad.to_owned(),
            ..cimd_client(&server, "/client.json")
        };
        assert_refused(&broker, &client).await;
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    broker.shutdown().await;
}
