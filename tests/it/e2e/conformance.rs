//! The official MCP conformance suite (`@modelcontextprotocol/conformance`, server scenarios)
//! run through the broker against a stdio child that implements the suite's test tools
//! (`tests/peers/conformance-child.mjs`, on the TypeScript SDK). The bearer token comes from
//! the real OAuth flow; a test-only forwarder adds it to the suite's requests.

use std::time::Duration;

use super::{forwarder, node, peers_dir, require_peer};
use crate::fixtures::TestBroker;

async fn run_suite(extra: &[&str], expected_failures: &str) -> (bool, String) {
    let child = peers_dir().join("conformance-child.mjs");
    let broker = TestBroker::builder()
        .toml(&format!(
            r#"
            [mcp]
            # The suite opens ~35 sessions within seconds and never deletes them.
            max_sessions_per_user = 64
            max_children = 64
            [rate_limits.mcp_session]
            per_ip = "1000/h"
            per_user = "1000/h"
            [mcp.child]
            program = "{}"
            args = ["{}"]
            env_allowlist = []
            token_variable = "UNUSED_TOKEN"
            delivery = "none"
            "#,
            node().display(),
            child.display()
        ))
        .start()
        .await;
    let (_client, tokens) = broker.login_new_client().await;
    let forward = forwarder::start(broker.app().local_addr(), tokens.access_token.clone()).await;
    let mut command = tokio::process::Command::new("bash");
    command
        .arg(peers_dir().join("run-conformance.sh"))
        .arg(format!("{}/mcp", forward.url))
        .args(extra)
        .env(
            "CONFORMANCE_EXPECTED_FAILURES",
            peers_dir().join(expected_failures),
        )
        .current_dir(peers_dir())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .expect("the conformance suite finished within 10 minutes")
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    drop(forward);
    broker.shutdown().await;
    (output.status.success(), text)
}

/// Every active scenario passes through the broker, or is listed with a reason in
/// `tests/peers/conformance-expected-failures.yml` (the suite fails on a listed scenario that
/// passes, so the list cannot go stale).
#[tokio::test]
async fn conformance_suite_server_scenarios_pass_through_the_broker() {
    let suite = peers_dir().join("node_modules/@modelcontextprotocol/conformance/dist/index.js");
    if !require_peer(&node()) || !require_peer(&suite) {
        return;
    }
    let (passed, text) = run_suite(&[], "conformance-expected-failures.yml").await;
    let total = text
        .lines()
        .rev()
        .find(|line| line.contains("Total:"))
        .unwrap_or_default()
        .to_owned();
    assert!(passed, "conformance suite failed ({total}):\n{text}");
    assert!(total.contains(" 0 failed"), "{total}\n{text}");
}

/// The pending scenarios too (`--suite all`: JSON Schema 2020-12 tool schemas, SSE polling with
/// priming events and `retry:`), for the session-based revisions. One expected failure, with
/// its reason in `tests/peers/conformance-expected-failures-broker-all.yml`.
#[tokio::test]
async fn conformance_suite_all_scenarios_pass_through_the_broker() {
    let suite = peers_dir().join("node_modules/@modelcontextprotocol/conformance/dist/index.js");
    if !require_peer(&node()) || !require_peer(&suite) {
        return;
    }
    let (passed, text) = run_suite(
        &["--suite", "all"],
        "conformance-expected-failures-broker-all.yml",
    )
    .await;
    let total = text
        .lines()
        .rev()
        .find(|line| line.contains("Total:"))
        .unwrap_or_default()
        .to_owned();
    assert!(passed, "conformance suite failed ({total}):\n{text}");
    assert!(total.contains(" 0 failed"), "{total}\n{text}");
}
