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

/// The data directory the broker creates, and the database in it, are owner-only from the
/// start (the database holds token hashes and vault ciphertext).
#[tokio::test]
async fn the_data_directory_and_database_are_created_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let parent = tempfile::tempdir().unwrap();
    let data_dir = parent.path().join("data");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = Config::from_toml(&crate::fixtures::minimal_config_toml(
        &format!("http://127.0.0.1:{port}"),
        &data_dir,
    ))
    .unwrap();
    let running = app::start_on(config, listener, AppDeps::production())
        .await
        .unwrap();
    assert_eq!(mode(&data_dir), 0o700);
    assert_eq!(mode(&data_dir.join("broker.db")), 0o600);
    assert!(running.shutdown(Duration::from_secs(5)).await);
}
