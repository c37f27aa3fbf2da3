//! Logs of full requests carry no secret the request carried.

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::post;
use forgejo_mcp_broker::ratelimit::HttpLimitsConfig;
use tracing_subscriber::fmt::MakeWriter;

use super::TestServer;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

const SECRETS: [&str; 4] = [
    "bearer-SECRET-0b9f2c1d",
    "code-SECRET-77aa1e",
    "refresh-SECRET-c0ffee",
    "cookie-SECRET-5150",
];

/// Current-thread runtime: the subscriber set for this thread sees the server's tasks too.
#[tokio::test(flavor = "current_thread")]
async fn request_logs_at_trace_level_contain_no_secrets() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("trace")
        .json()
        .with_writer(captured.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let routes = Router::new().route("/oauth/token", post(|| async { "{}" }));
    let server = TestServer::start(routes, HttpLimitsConfig::default()).await;
    let response = reqwest::Client::new()
        .post(server.url(&format!("/oauth/token?code={}", SECRETS[1])))
        .header("authorization", format!("Bearer {}", SECRETS[0]))
        .header("cookie", format!("session={}", SECRETS[3]))
        .body(format!(
            "grant_type=refresh_token&refresh_token={}",
            SECRETS[2]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let metrics = server.metrics.encode();
    server.stop().await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("/oauth/token"),
        "the request was logged: {logs}"
    );
    assert!(logs.contains("request_id"), "{logs}");
    for secret in SECRETS {
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
        assert!(!metrics.contains(secret), "{secret} leaked into metrics");
    }
}
