//! `/metrics` is served on its own listener, parses as Prometheus text, and its counters move.

use std::time::Duration;

use forgejo_mcp_broker::app::{self, AppDeps};
use forgejo_mcp_broker::config::Config;

/// Checks every sample line is `name{labels} value` with a numeric value, and returns the value
/// of the sample whose name-and-labels equal `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = value.parse().expect("numeric sample value");
        let metric = name.split('{').next().unwrap();
        assert!(
            metric
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        if name == series {
            found = Some(value);
        }
    }
    found
}

#[tokio::test]
async fn metrics_scrape_parses_and_request_counters_move() {
    let data_dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = Config::from_toml(&format!(
        r#"
        [server]
        public_url = "http://127.0.0.1:{port}"
        data_dir = "{}"
        [forgejo]
        url = "http://127.0.0.1:9"
        client_id = "broker"
        client_secret = "secret"
        [metrics]
        listen = "127.0.0.1:0"
        "#,
        data_dir.path().display()
    ))
    .unwrap();
    let running = app::start_on(config, listener, AppDeps::production())
        .await
        .unwrap();
    let metrics_addr = running.metrics_addr().expect("metrics listener configured");
    assert_ne!(metrics_addr.port(), port);
    let scrape = || async {
        let response = reqwest::get(format!("http://{metrics_addr}/metrics"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text")
        );
        response.text().await.unwrap()
    };
    let healthz =
        r#"forgejo_mcp_broker_http_requests_total{route="/healthz",method="GET",status="200"}"#;
    let before = sample(&scrape().await, healthz).unwrap_or(0.0);
    for _ in 0..3 {
        let response = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // The public listener does not expose metrics; the miss is counted without its raw path.
    let public = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
    let text = scrape().await;
    assert_eq!(sample(&text, healthz), Some(before + 3.0));
    assert_eq!(
        sample(
            &text,
            r#"forgejo_mcp_broker_http_requests_total{route="unmatched",method="GET",status="404"}"#
        ),
        Some(1.0)
    );
    assert!(
        !text.contains("/metrics\""),
        "raw paths never become labels"
    );
    // The vault's start was counted from its audit event.
    assert!(
        text.contains(
            r#"forgejo_mcp_broker_vault_operations_total{operation="initialise",outcome="ok"} 1"#
        ),
        "{text}"
    );
    // The typed handle other components use moves the same registry.
    running.metrics.upstream_refresh("grant_dead");
    running.metrics.rate_limit_rejected("token", "client");
    let text = scrape().await;
    assert_eq!(
        sample(
            &text,
            r#"forgejo_mcp_broker_upstream_refreshes_total{outcome="grant_dead"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"forgejo_mcp_broker_rate_limit_rejections_total{class="token",key_kind="client"}"#
        ),
        Some(1.0)
    );
    assert!(running.shutdown(Duration::from_secs(10)).await);
}
