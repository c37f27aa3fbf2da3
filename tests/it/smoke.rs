//! The broker starts, serves its health endpoints, and shuts down on request.

use std::time::Duration;

use forgejo_mcp_broker::app::{self, AppDeps};
use forgejo_mcp_broker::config::Config;

#[tokio::test]
async fn broker_serves_health_and_shuts_down() {
    let data_dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = Config::from_toml(&crate::fixtures::minimal_config_toml(
        &format!("http://127.0.0.1:{port}"),
        data_dir.path(),
    ))
    .unwrap();
    let running = app::start_on(config, listener, AppDeps::production())
        .await
        .unwrap();
    let body = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .unwrap();
    assert_eq!(body.status(), 200);
    assert!(body.headers().contains_key("x-request-id"));
    assert!(running.shutdown(Duration::from_secs(5)).await);
    assert!(data_dir.path().join("broker.db").exists());
}
