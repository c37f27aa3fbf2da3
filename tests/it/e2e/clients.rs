//! Real clients (TypeScript SDK, MCP Inspector CLI) and real children (the demo child,
//! `gitea-mcp` from PyPI, `server-everything` from npm) through the broker.

use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::get;
use serde_json::json;

use super::{
    assert_full_flow, assert_no_forgejo_token_in, demo_child_toml, node, peers_dir, require_peer,
    run_typescript_client,
};
use crate::fixtures::TestBroker;
use crate::fixtures::tls::TlsServer;

#[tokio::test]
async fn typescript_sdk_with_dcr_completes_the_flow_and_the_demo_child_acts_as_the_user() {
    if !require_peer(&node()) {
        return;
    }
    let broker = TestBroker::builder().toml(&demo_child_toml()).start().await;
    let calls = json!([
        { "name": "whoami", "expect": "alice" },
        { "name": "list_repositories", "expect": "alice/" },
        { "name": "create_issue", "arguments": { "owner": "alice", "repo": "notes", "title": "From the TypeScript SDK" },
          "expect": "Created issue" }
    ])
    .to_string();
    let steps = run_typescript_client(&broker, &["--calls", &calls], &[]).await;
    assert_full_flow(&broker, &steps);
    let registered = steps.find("client_information_saved");
    assert_eq!(registered["registered"], true, "DCR, not CIMD");
    let names = &steps.find("tools_listed")["names"];
    assert_eq!(
        names,
        &json!(["whoami", "list_repositories", "create_issue"])
    );
    // The issue really exists at Forgejo, filed as alice with the broker-held token.
    assert!(
        broker
            .standin
            .issues("alice", "notes")
            .iter()
            .any(|issue| issue.title == "From the TypeScript SDK")
    );
    let everything = format!("{:?}\n{:?}", steps, broker.audit_events());
    assert_no_forgejo_token_in(&broker, "the client's view or the audit log", &everything);
    broker.shutdown().await;
}

#[tokio::test]
async fn typescript_sdk_with_a_client_id_metadata_document_completes_the_flow() {
    if !require_peer(&node()) {
        return;
    }
    // The client's metadata document, served over local HTTPS with a throwaway CA that the
    // broker is configured to trust.
    let documents = TlsServer::start(Router::new().route(
        "/client.json",
        get(|headers: HeaderMap| async move {
            let host = headers["host"].to_str().unwrap().to_owned();
            axum::Json(json!({
                "client_id": format!("https://{host}/client.json"),
                "client_name": "TypeScript SDK via CIMD",
                "redirect_uris": ["http://127.0.0.1:33418/callback"],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none"
            }))
        }),
    ))
    .await;
    let broker = TestBroker::builder()
        .oauth(&format!(
            "cimd_extra_ca_file = \"{}\"",
            documents.ca_file.display()
        ))
        .oauth("cimd_allow_loopback_for_tests = true")
        .toml(&demo_child_toml())
        .start()
        .await;
    let cimd = documents.url("/client.json");
    let steps = run_typescript_client(
        &broker,
        &[
            "--cimd",
            &cimd,
            "--tool",
            "whoami",
            "--expect-text",
            "alice",
        ],
        &[],
    )
    .await;
    assert_full_flow(&broker, &steps);
    let client = steps.find("client_information_saved");
    assert_eq!(client["client_id"], cimd.as_str());
    assert_eq!(
        client["registered"], false,
        "no DCR: the URL is the client id"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn gitea_mcp_from_pypi_lists_repositories_and_creates_an_issue_through_the_broker() {
    let gitea_mcp = peers_dir().join(".venv/bin/gitea-mcp");
    if !require_peer(&node()) || !require_peer(&gitea_mcp) {
        return;
    }
    let broker = TestBroker::builder()
        .toml(&format!(
            r#"
            [mcp.child]
            program = "{}"
            args = []
            env_allowlist = []
            token_variable = "GITEA_TOKEN"
            delivery = "env"
            [mcp.child.env]
            GITEA_URL = "{{forgejo_url}}"
            GITEA_MAX_RETRIES = "0"
            HOME = "/tmp"
            "#,
            gitea_mcp.display()
        ))
        .oauth("access_token_ttl_secs = 3600")
        .start()
        .await;
    let calls = json!([
        { "name": "list_repos", "arguments": {}, "expect": "notes" },
        { "name": "create_issue",
          "arguments": { "owner": "alice", "repo": "notes", "title": "Filed by gitea-mcp through the broker", "body": "e2e" },
          "expect": "Filed by gitea-mcp through the broker" }
    ])
    .to_string();
    let steps = run_typescript_client(&broker, &["--calls", &calls], &[]).await;
    assert_full_flow(&broker, &steps);
    assert!(
        broker
            .standin
            .issues("alice", "notes")
            .iter()
            .any(|issue| issue.title == "Filed by gitea-mcp through the broker")
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn server_everything_from_npm_answers_through_the_broker() {
    let everything =
        peers_dir().join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    if !require_peer(&node()) || !require_peer(&everything) {
        return;
    }
    let broker = TestBroker::builder()
        .toml(&format!(
            r#"
            [mcp.child]
            program = "{}"
            args = ["{}", "stdio"]
            env_allowlist = []
            token_variable = "UNUSED_TOKEN"
            delivery = "none"
            "#,
            node().display(),
            everything.display()
        ))
        .start()
        .await;
    let calls = json!([
        { "name": "echo", "arguments": { "message": "through the broker" }, "expect": "through the broker" }
    ])
    .to_string();
    let steps = run_typescript_client(&broker, &["--calls", &calls], &[]).await;
    assert_full_flow(&broker, &steps);
    broker.shutdown().await;
}

#[tokio::test]
async fn mcp_inspector_cli_lists_and_calls_tools_through_the_broker() {
    let inspector =
        peers_dir().join("node_modules/@modelcontextprotocol/inspector/cli/build/cli.js");
    if !require_peer(&node()) || !require_peer(&inspector) {
        return;
    }
    let broker = TestBroker::builder().toml(&demo_child_toml()).start().await;
    let (_client, tokens) = broker.login_new_client().await;
    let header = format!("Authorization: Bearer {}", tokens.access_token);
    let inspect = |method_args: Vec<String>| {
        let mut command = tokio::process::Command::new(node());
        command
            .arg(&inspector)
            .arg("--cli")
            .arg(broker.resource())
            .args(["--transport", "http", "--header", &header])
            .args(method_args)
            .current_dir(peers_dir())
            .kill_on_drop(true);
        async move {
            let output = tokio::time::timeout(Duration::from_secs(120), command.output())
                .await
                .expect("the Inspector CLI finished within 120 s")
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            assert!(output.status.success(), "{stdout}\n{stderr}");
            stdout
        }
    };
    let listed = inspect(vec!["--method".into(), "tools/list".into()]).await;
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let names: Vec<&str> = listed["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tool| tool["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["whoami", "list_repositories", "create_issue"]);
    let called = inspect(vec![
        "--method".into(),
        "tools/call".into(),
        "--tool-name".into(),
        "whoami".into(),
    ])
    .await;
    assert!(called.contains("alice"), "{called}");
    // Without the header the Inspector gets the broker's 401.
    let mut unauthenticated = tokio::process::Command::new(node());
    unauthenticated
        .arg(&inspector)
        .arg("--cli")
        .arg(broker.resource())
        .args(["--transport", "http", "--method", "tools/list"])
        .current_dir(peers_dir())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), unauthenticated.output())
        .await
        .unwrap()
        .unwrap();
    assert!(!output.status.success());
    broker.shutdown().await;
}
