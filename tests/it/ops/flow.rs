//! The real OAuth endpoints behind the limits, and the accountability trail of a full flow: the
//! audit file verifies and names what happened; no token reaches it, the logs or the metrics.

use std::sync::Arc;
use std::time::Duration;

use forgejo_mcp_broker::audit::review::{ShowFilter, VerifyPolicy, select, verify_files};
use forgejo_mcp_broker::audit::writer::log_files;
use forgejo_mcp_broker::audit::{AuditFileConfig, AuditKey, FileAudit};
use forgejo_mcp_broker::clock::SystemClock;
use forgejo_mcp_broker::metrics::Metrics;
use forgejo_mcp_broker::standin::token_marker;

use super::client_from;
use crate::fixtures::{TestBroker, logs};

#[tokio::test]
async fn full_flow_leaves_a_verifiable_audit_trail_and_no_token_anywhere() {
    let logs = logs::capture();
    let audit_dir = tempfile::tempdir().unwrap();
    let audit_path = audit_dir.path().join("audit.jsonl");
    let key = [0x5a; 32];
    let file_audit = FileAudit::open(
        AuditFileConfig {
            path: audit_path.clone(),
            rotate_bytes: 1 << 30,
            checkpoint_every_lines: 4,
            checkpoint_every: Duration::from_secs(3600),
            queue_capacity: 1024,
        },
        AuditKey::from_bytes(key),
        Arc::new(SystemClock),
        Metrics::new(),
    )
    .unwrap();
    let broker = TestBroker::builder()
        .audit_sink(file_audit.clone())
        .start()
        .await;

    // Register (confidential, so a client secret exists too), log in, refresh, revoke.
    let client = broker
        .register_client(&["http://127.0.0.1/callback"], "client_secret_post")
        .await;
    let tokens = broker.login(&client).await;
    let (status, refreshed) = broker.refresh(&client, &tokens.refresh_token).await;
    assert_eq!(status, 200, "{refreshed}");
    let new_refresh = refreshed["refresh_token"].as_str().unwrap().to_owned();
    let revoked = TestBroker::http()
        .post(broker.url("/oauth/revoke"))
        .form(&[
            ("token", new_refresh.as_str()),
            ("client_id", client.client_id.as_str()),
            ("client_secret", client.client_secret.as_deref().unwrap()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    // A revoked refresh token is refused, and the refusal is counted by its RFC code.
    let (status, body) = broker.refresh(&client, &new_refresh).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let metrics = broker.metrics.encode();
    for (endpoint, outcome, count) in [
        ("register", "ok", 1),
        ("authorize", "ok", 1),
        ("token", "ok", 2),
        ("token", "invalid_grant", 1),
        ("revoke", "ok", 1),
    ] {
        let series =
            format!(r#"oauth_outcomes_total{{endpoint="{endpoint}",outcome="{outcome}"}} {count}"#);
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }
    let issued = broker.standin.issued_tokens();
    broker.shutdown().await;
    tokio::task::spawn_blocking(move || file_audit.close())
        .await
        .unwrap();

    // The trail verifies and tells the story.
    let files = log_files(&audit_path);
    let report = verify_files(&files, Some(&AuditKey::from_bytes(key))).unwrap();
    assert!(report.is_ok(VerifyPolicy::STRICT), "{report}");
    let names: Vec<String> = select(&files, &ShowFilter::default())
        .unwrap()
        .iter()
        .map(|record| record["event"].as_str().unwrap().to_owned())
        .collect();
    for expected in [
        "client_registered",
        "consent_granted",
        "upstream_login",
        "code_issued",
        "token_issued",
        "token_refreshed",
        "token_revoked",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    let of_client = select(
        &files,
        &ShowFilter {
            client_id: Some(client.client_id.clone()),
            ..ShowFilter::default()
        },
    )
    .unwrap();
    assert!(of_client.len() >= 5, "{of_client:?}");

    // Requests were counted by route and status; the OAuth outcomes too.
    assert!(
        metrics
            .contains(r#"http_requests_total{route="/oauth/token",method="POST",status="200"} 2"#),
        "{metrics}"
    );

    // No secret of the flow anywhere.
    let audit_text: String = files
        .iter()
        .map(|file| std::fs::read_to_string(file).unwrap())
        .collect();
    let log_text = logs.contents();
    assert!(log_text.contains("/oauth/token"), "logs were captured");
    let mut secrets = vec![
        tokens.access_token.clone(),
        tokens.refresh_token.clone(),
        refreshed["access_token"].as_str().unwrap().to_owned(),
        new_refresh,
        client.client_secret.clone().unwrap(),
        token_marker(),
    ];
    secrets.extend(issued);
    for (what, text) in [
        ("audit", &audit_text),
        ("logs", &log_text),
        ("metrics", &metrics),
    ] {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "a secret in the {what}");
        }
    }
}

#[tokio::test]
async fn floods_against_the_oauth_endpoints_get_429_and_spare_other_ips() {
    let broker = TestBroker::builder()
        .toml(
            r#"
            [rate_limits.register]
            per_ip = "2/h"
            [rate_limits.token]
            per_ip = "2/h"
            [rate_limits.revoke]
            per_ip = "2/h"
            [rate_limits.authorize]
            per_ip = "2/h"
            [rate_limits.consent]
            per_ip = "2/h"
            "#,
        )
        .start()
        .await;
    let flooder = client_from([127, 0, 0, 1]);
    let bystander = client_from([127, 0, 0, 2]);
    // (method, first path, alias sharing the budget)
    let endpoints = [
        ("POST", "/oauth/register", Some("/register")),
        ("POST", "/oauth/token", Some("/token")),
        ("POST", "/oauth/revoke", None),
        ("GET", "/oauth/authorize", Some("/authorize")),
        ("POST", "/oauth/consent", None),
    ];
    let send = |client: &reqwest::Client, method: &str, path: &str| {
        let url = broker.url(path);
        let request = match method {
            "GET" => client.get(url),
            _ => client.post(url).form(&[("x", "y")]),
        };
        request.header("origin", "https://inspector.example").send()
    };
    for (method, path, alias) in endpoints {
        for _ in 0..2 {
            let response = send(&flooder, method, path).await.unwrap();
            assert_ne!(response.status(), 429, "{path}");
        }
        for target in [Some(path), alias].into_iter().flatten() {
            let response = send(&flooder, method, target).await.unwrap();
            assert_eq!(response.status(), 429, "{target}");
            assert!(response.headers().contains_key("retry-after"));
            if method == "POST" && target != "/oauth/consent" {
                // Browser clients (Inspector) can read the refusal.
                assert!(
                    response
                        .headers()
                        .contains_key("access-control-allow-origin"),
                    "{target}"
                );
            }
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"], "too_many_requests");
        }
        let response = send(&bystander, method, path).await.unwrap();
        assert_ne!(
            response.status(),
            429,
            "{path}: another address is unaffected"
        );
    }
    let metrics = broker.metrics.encode();
    assert!(
        metrics.contains(r#"rate_limit_rejections_total{class="register",key_kind="ip"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"oauth_outcomes_total{endpoint="register",outcome="too_many_requests"} 2"#)
    );
    let trips = broker
        .audit_events()
        .into_iter()
        .filter(|event| {
            matches!(
                event,
                forgejo_mcp_broker::audit::AuditEvent::RateLimited { .. }
            )
        })
        .count();
    assert_eq!(trips, 5, "one audited trip per endpoint class");
    broker.shutdown().await;
}

#[tokio::test]
async fn cimd_fetches_are_limited_per_client_id_url() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::HeaderMap;
    use axum::routing::get;

    use crate::fixtures::TestClient;
    use crate::fixtures::tls::TlsServer;

    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let router = axum::Router::new().route(
        "/client.json",
        get(move |headers: HeaderMap| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                let host = headers["host"].to_str().unwrap().to_owned();
                axum::Json(serde_json::json!({
                    "client_id": format!("https://{host}/client.json"),
                    "client_name": "CIMD Flood Target",
                    "redirect_uris": ["https://app.example/callback"],
                    "token_endpoint_auth_method": "none",
                }))
            }
        }),
    );
    let server = TlsServer::start(router).await;
    let broker = TestBroker::builder()
        .oauth(&format!(
            "cimd_extra_ca_file = \"{}\"",
            server.ca_file.display()
        ))
        .oauth("cimd_allow_loopback_for_tests = true")
        // No caching: every authorization would fetch the document again.
        .oauth("cimd_cache_ttl_secs = 0")
        .toml("[rate_limits.cimd_fetch]\nper_client = \"2/h\"\n")
        .start()
        .await;
    let client = TestClient {
        client_id: server.url("/client.json"),
        client_secret: None,
        redirect_uri: "https://app.example/callback".to_owned(),
    };
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = broker
            .browser()
            .get(&broker.authorize_url(&client, &[]))
            .await;
        statuses.push(response.status().as_u16());
    }
    // Past the budget the copy fetched last serves: the flood costs the document's host
    // nothing more, and the client's users nothing.
    assert_eq!(statuses, [200, 200, 200, 200]);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "the broker fetched only twice"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn token_requests_are_limited_per_authenticated_client_only() {
    let broker = TestBroker::builder()
        .toml("[rate_limits.token]\nper_client = \"2/h\"\n")
        .start()
        .await;
    let client = broker
        .register_client(&["http://127.0.0.1/callback"], "client_secret_post")
        .await;
    let other = broker
        .register_client(&["http://127.0.0.1/callback"], "client_secret_post")
        .await;
    let tokens = broker.login(&client).await; // 1 of 2
    // Requests naming the client without its secret do not spend its budget.
    for _ in 0..5 {
        let response = TestBroker::http()
            .post(broker.url("/oauth/token"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", tokens.refresh_token.as_str()),
                ("client_id", client.client_id.as_str()),
                ("client_secret", "wrong"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    let (status, body) = broker.refresh(&client, &tokens.refresh_token).await; // 2 of 2
    assert_eq!(status, 200, "{body}");
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    let (status, body) = broker.refresh(&client, &refresh).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "too_many_requests");
    // Another client from the same address is unaffected.
    let other_tokens = broker.login(&other).await;
    let (status, _) = broker.refresh(&other, &other_tokens.refresh_token).await;
    assert_eq!(status, 200);
    assert!(
        broker
            .metrics
            .encode()
            .contains(r#"rate_limit_rejections_total{class="token",key_kind="client"} 1"#)
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn public_clients_have_no_per_client_budget_that_anyone_naming_them_could_spend() {
    let broker = TestBroker::builder()
        .toml("[rate_limits.token]\nper_client = \"2/h\"\n[rate_limits.revoke]\nper_client = \"2/h\"\n")
        .start()
        .await;
    let (client, tokens) = broker.login_new_client().await;
    // A public client proves nothing: anyone can send its client_id. Such requests are limited
    // per IP only, so a stranger cannot lock the client out.
    for _ in 0..3 {
        let (status, body) = broker.refresh(&client, "fmbr_forged").await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant"))
        );
    }
    let (status, body) = broker.refresh(&client, &tokens.refresh_token).await;
    assert_eq!(status, 200, "{body}");
    let renewed = body["refresh_token"].as_str().unwrap().to_owned();
    let revoke = |token: String| {
        TestBroker::http()
            .post(broker.url("/oauth/revoke"))
            .form(&[("token", token), ("client_id", client.client_id.clone())])
            .send()
    };
    for _ in 0..3 {
        assert_eq!(
            revoke("fmbr_forged".to_owned()).await.unwrap().status(),
            200
        );
    }
    assert_eq!(revoke(renewed.clone()).await.unwrap().status(), 200);
    let (status, _) = broker.refresh(&client, &renewed).await;
    assert_eq!(status, 400, "the revocation took effect");
    assert!(!broker.metrics.encode().contains(r#"key_kind="client""#));
    broker.shutdown().await;
}

#[tokio::test]
async fn mcp_requests_are_limited_per_ip_inside_cors() {
    let broker = TestBroker::builder()
        .toml("[rate_limits.mcp]\nper_ip = \"3/h\"\n")
        .start()
        .await;
    let flooder = client_from([127, 0, 0, 1]);
    let bystander = client_from([127, 0, 0, 2]);
    let post = |client: &reqwest::Client| {
        client
            .post(broker.url("/mcp"))
            .header("origin", broker.base_url.as_str())
            .header("accept", "application/json, text/event-stream")
            .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
            .send()
    };
    for _ in 0..3 {
        // No token: the edge answers 401, but the request counted.
        assert_eq!(post(&flooder).await.unwrap().status(), 401);
    }
    let refused = post(&flooder).await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    assert!(
        refused
            .headers()
            .contains_key("access-control-allow-origin")
    );
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], -32000, "{body}");
    // Preflights are answered by CORS and never counted.
    let preflight = flooder
        .request(reqwest::Method::OPTIONS, broker.url("/mcp"))
        .header("origin", broker.base_url.as_str())
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(post(&bystander).await.unwrap().status(), 401);
    broker.shutdown().await;
}

#[tokio::test]
async fn new_sessions_and_mcp_requests_are_limited_per_user() {
    let broker = TestBroker::builder()
        .toml(&crate::e2e::demo_child_toml())
        .toml("[rate_limits.mcp_session]\nper_user = \"2/h\"\nper_ip = \"off\"\n")
        .toml("[rate_limits.mcp]\nper_user = \"4/h\"\nper_ip = \"off\"\n")
        .start()
        .await;
    let (_, tokens) = broker.login_new_client().await;
    let http = reqwest::Client::new();
    let send = |session: Option<String>, body: serde_json::Value| {
        let mut request = http
            .post(broker.url("/mcp"))
            .bearer_auth(&tokens.access_token)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(session) = session {
            request = request
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-06-18");
        }
        request.send()
    };
    let initialize = serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "ops-test", "version": "1"}},
    });
    let first = send(None, initialize.clone()).await.unwrap();
    assert_eq!(first.status(), 200);
    let session = first.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(send(None, initialize.clone()).await.unwrap().status(), 200);
    // The third new session of this user: refused before a child is spawned.
    let refused = send(None, initialize.clone()).await.unwrap();
    assert_eq!(refused.status(), 429);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], -32000, "{body}");
    // Request 4 of 4 on an existing session passes; the fifth is over the per-user budget.
    let ping = serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "ping"});
    assert_eq!(
        send(Some(session.clone()), ping.clone())
            .await
            .unwrap()
            .status(),
        200
    );
    let over = send(Some(session), ping).await.unwrap();
    assert_eq!(over.status(), 429);
    assert!(over.headers().contains_key("retry-after"));
    let metrics = broker.metrics.encode();
    assert!(
        metrics.contains(r#"rate_limit_rejections_total{class="mcp_session",key_kind="user"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"rate_limit_rejections_total{class="mcp",key_kind="user"} 1"#));
    broker.shutdown().await;
}
