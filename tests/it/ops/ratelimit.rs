//! Floods against each limited endpoint class: 429 with `Retry-After` and a spec-shaped body for
//! the flooder, nothing for everyone else; address rotation keeps limiter memory bounded.

use std::sync::Arc;

use axum::Router;
use axum::routing::post;
use forgejo_mcp_broker::audit::{AuditEvent, MemoryAudit};
use forgejo_mcp_broker::metrics::Metrics;
use forgejo_mcp_broker::ratelimit::{
    self, EndpointClass, HttpLimitsConfig, RateLimitConfig, RateLimiter, SharedRateLimiter,
};

use super::{TestServer, client_from};

/// Every class limited to 3 requests per hour per IP, one route per class (plus a root alias
/// sharing `register`'s class, as the OAuth router's aliases will).
fn routes(limiter: &SharedRateLimiter) -> Router {
    let mut router = Router::new();
    for class in EndpointClass::ALL {
        let path = format!("/limited/{}", class.as_str());
        router = router.route(
            &path,
            post(|| async { "ok" }).layer(ratelimit::layer(limiter, class)),
        );
    }
    router.route(
        "/register",
        post(|| async { "ok" }).layer(ratelimit::layer(limiter, EndpointClass::Register)),
    )
}

fn limiter_with(
    config_toml: &str,
    trusted: &[std::net::IpAddr],
) -> (SharedRateLimiter, Arc<MemoryAudit>, Metrics) {
    let config: RateLimitConfig = toml::from_str(config_toml).unwrap();
    let audit = MemoryAudit::new();
    let metrics = Metrics::new();
    (
        RateLimiter::new(&config, trusted, metrics.clone(), audit.clone()),
        audit,
        metrics,
    )
}

const THREE_PER_HOUR: &str = r#"
    [register]
    per_ip = "3/h"
    [token]
    per_ip = "3/h"
    [authorize]
    per_ip = "3/h"
    [consent]
    per_ip = "3/h"
    [revoke]
    per_ip = "3/h"
    [cimd_fetch]
    per_ip = "3/h"
    [mcp_session]
    per_ip = "3/h"
    [mcp]
    per_ip = "3/h"
"#;

#[tokio::test]
async fn flooding_each_endpoint_from_one_ip_gets_429_and_spares_other_ips() {
    let (limiter, audit, metrics) = limiter_with(THREE_PER_HOUR, &[]);
    let server = TestServer::start_with(
        routes(&limiter),
        HttpLimitsConfig::default(),
        metrics.clone(),
        audit.clone(),
    )
    .await;
    let flooder = client_from([127, 0, 0, 1]);
    let bystander = client_from([127, 0, 0, 2]);
    for class in EndpointClass::ALL {
        let url = server.url(&format!("/limited/{}", class.as_str()));
        for attempt in 0..3 {
            let response = flooder.post(&url).send().await.unwrap();
            assert_eq!(response.status(), 200, "{class:?} attempt {attempt}");
        }
        for _ in 0..5 {
            let response = flooder.post(&url).send().await.unwrap();
            assert_eq!(response.status(), 429, "{class:?}");
            let retry_after: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            // One request back every 20 minutes.
            assert!(
                (1..=1200).contains(&retry_after),
                "{class:?}: {retry_after}"
            );
            let body: serde_json::Value = response.json().await.unwrap();
            if class.is_mcp() {
                assert_eq!(body["jsonrpc"], "2.0", "{body}");
                assert_eq!(body["error"]["code"], -32000, "{body}");
                assert!(body["id"].is_null());
            } else {
                assert_eq!(body["error"], "too_many_requests", "{body}");
            }
        }
        let response = bystander.post(&url).send().await.unwrap();
        assert_eq!(
            response.status(),
            200,
            "{class:?}: another IP is unaffected"
        );
    }
    // The root alias shares the class budget: the flooder is already out of it.
    let alias = flooder.post(server.url("/register")).send().await.unwrap();
    assert_eq!(alias.status(), 429);

    let text = metrics.encode();
    assert!(
        text.contains(r#"rate_limit_rejections_total{class="token",key_kind="ip"} 5"#),
        "{text}"
    );
    assert!(text.contains(r#"route="/limited/token",method="POST",status="429"} 5"#));
    let trips = audit
        .events()
        .into_iter()
        .filter(|event| matches!(event, AuditEvent::RateLimited { ip: Some(ip), .. } if ip == "127.0.0.1"))
        .count();
    // One audit record per tripped (class, address), not one per refused request.
    assert_eq!(trips, 8);
    server.stop().await;
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let proxy: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    let (limiter, _, _) = limiter_with("[token]\nper_ip = \"2/h\"\n", &[proxy]);
    let server = TestServer::start(routes(&limiter), HttpLimitsConfig::default()).await;
    let url = server.url("/limited/token");
    let via_proxy = client_from([127, 0, 0, 3]);
    let forwarded = |client: &'static str| {
        via_proxy
            .post(&url)
            .header("x-forwarded-for", client)
            .send()
    };
    // Two clients behind the proxy have separate budgets.
    for _ in 0..2 {
        assert_eq!(forwarded("198.51.100.1").await.unwrap().status(), 200);
    }
    assert_eq!(forwarded("198.51.100.1").await.unwrap().status(), 429);
    assert_eq!(forwarded("198.51.100.2").await.unwrap().status(), 200);
    // A client that is not a trusted proxy cannot pick its key by forging the header.
    let direct = client_from([127, 0, 0, 4]);
    for forged in ["10.9.9.1", "10.9.9.2"] {
        let response = direct
            .post(&url)
            .header("x-forwarded-for", forged)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let response = direct
        .post(&url)
        .header("x-forwarded-for", "10.9.9.3")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429, "keyed by the peer, not the header");
    server.stop().await;
}

#[tokio::test]
async fn ip_rotation_flood_keeps_limiter_memory_bounded() {
    let proxy: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let (limiter, _, metrics) =
        limiter_with("max_keys = 64\n[register]\nper_ip = \"1/h\"\n", &[proxy]);
    let server = TestServer::start(routes(&limiter), HttpLimitsConfig::default()).await;
    let client = client_from([127, 0, 0, 1]);
    let url = server.url("/limited/register");
    // 2000 distinct client addresses through the trusted proxy path.
    for n in 0u32..2000 {
        let address = std::net::Ipv4Addr::from(0x0a00_0000 + n);
        let response = client
            .post(&url)
            .header("x-forwarded-for", address.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "each fresh address gets its first request"
        );
    }
    assert!(
        limiter.tracked_keys() <= 64,
        "tracked {} keys",
        limiter.tracked_keys()
    );
    assert!(metrics.encode().contains("rate_limit_tracked_keys"));
    server.stop().await;
}

#[tokio::test]
async fn per_client_and_per_user_checks_inside_handlers_answer_in_their_protocol() {
    use axum::extract::State;
    use axum::response::IntoResponse;
    use forgejo_mcp_broker::ratelimit::RateKey;

    let (limiter, _, _) = limiter_with(
        "[token]\nper_client = \"1/h\"\n[mcp]\nper_user = \"1/h\"\nper_ip = \"off\"\n",
        &[],
    );
    async fn token(State(limiter): State<SharedRateLimiter>) -> axum::response::Response {
        match limiter.check(EndpointClass::Token, &RateKey::client("client-a")) {
            Ok(()) => "token".into_response(),
            Err(limited) => limited.into_response(),
        }
    }
    async fn mcp(State(limiter): State<SharedRateLimiter>) -> axum::response::Response {
        match limiter.check(EndpointClass::Mcp, &RateKey::user(42)) {
            Ok(()) => "result".into_response(),
            Err(limited) => {
                ratelimit::jsonrpc_too_many_requests(&limited, Some(serde_json::json!(7)))
            }
        }
    }
    let routes = Router::new()
        .route("/token", post(token))
        .route("/mcp", post(mcp))
        .with_state(limiter);
    let server = TestServer::start(routes, HttpLimitsConfig::default()).await;
    let client = client_from([127, 0, 0, 1]);
    assert_eq!(
        client
            .post(server.url("/token"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let refused = client.post(server.url("/token")).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(refused.headers()["cache-control"], "no-store");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "too_many_requests");

    assert_eq!(
        client
            .post(server.url("/mcp"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let refused = client.post(server.url("/mcp")).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["id"], 7);
    assert_eq!(body["error"]["code"], -32000);
    assert!(body["error"]["data"]["retry_after"].as_u64().unwrap() >= 1);
    server.stop().await;
}
