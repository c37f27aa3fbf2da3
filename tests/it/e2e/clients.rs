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
    gitea_mcp_lists_repositories_and_files_an_issue(
        &broker,
        "Filed by gitea-mcp through the broker",
    )
    .await;
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

/// The full chain under the full sandbox (issue #6): `gitea-mcp` (Python) runs confined,
/// its only network the egress listener inside its own namespace; in `inject` mode it holds a
/// placeholder, and the broker's egress proxy adds the user's real Forgejo token on the way out.
#[tokio::test]
async fn gitea_mcp_under_the_sandbox_in_inject_mode_never_holds_the_forgejo_token() {
    let venv = peers_dir().join(".venv");
    let gitea_mcp = venv.join("bin/gitea-mcp");
    if !require_peer(&node()) || !require_peer(&gitea_mcp) {
        return;
    }
    let prefix = super::python_prefix(&venv);
    let Some(broker) = sandboxed_broker(
        "python",
        &[&venv, &prefix],
        &format!(
            r#"
            [mcp.child]
            program = "{}"
            args = []
            env_allowlist = []
            token_variable = "GITEA_TOKEN"
            delivery = "inject"
            [mcp.child.env]
            GITEA_URL = "{{forgejo_url}}"
            GITEA_MAX_RETRIES = "0"
            "#,
            gitea_mcp.display(),
        ),
    )
    .await
    else {
        return;
    };
    gitea_mcp_lists_repositories_and_files_an_issue(&broker, "Filed from inside the sandbox").await;
    let spawned = spawned_layers(&broker);
    for layer in ["user-namespace", "network-namespace", "seccomp"] {
        assert!(
            spawned.iter().any(|applied| applied == layer),
            "{layer} not in {spawned:?}"
        );
    }
    let events = broker.audit_events();
    let upstream_calls: Vec<_> = events
        .iter()
        .filter_map(|event| match event {
            forgejo_mcp_broker::audit::AuditEvent::UpstreamApiCall {
                method,
                path,
                status,
                ..
            } => Some((method.clone(), path.clone(), *status)),
            _ => None,
        })
        .collect();
    assert!(
        upstream_calls
            .iter()
            .any(|(method, path, status)| method == "POST"
                && path == "/api/v1/repos/alice/notes/issues"
                && *status == 201),
        "{upstream_calls:?}"
    );
    assert_no_forgejo_token_in(&broker, "the audit log", &format!("{events:?}"));
    broker.shutdown().await;
}

/// A broker whose children run under the full sandbox with `profile`, or `None` (with the
/// reason printed) where this host cannot sandbox.
async fn sandboxed_broker(
    profile: &str,
    extra_read_only: &[&std::path::Path],
    child_toml: &str,
) -> Option<TestBroker> {
    if let Some(reason) = crate::sandbox::unavailable() {
        eprintln!("skipped: {reason}");
        return None;
    }
    let extra: Vec<String> = extra_read_only
        .iter()
        .map(|path| format!("\"{}\"", path.display()))
        .collect();
    Some(
        TestBroker::builder()
            .sandboxed()
            .toml(&format!(
                r#"
                [sandbox]
                profile = "{profile}"
                extra_read_only = [{}]
                launcher = "{}"
                memory_limit_mib = 512
                {child_toml}
                "#,
                extra.join(", "),
                super::BROKER_BIN,
            ))
            .start()
            .await,
    )
}

fn spawned_layers(broker: &TestBroker) -> Vec<String> {
    broker
        .audit_events()
        .into_iter()
        .find_map(|event| match event {
            forgejo_mcp_broker::audit::AuditEvent::ChildSpawned { layers, .. } => Some(layers),
            _ => None,
        })
        .expect("the spawn is audited with its layers")
}

/// Node under the full sandbox, through the broker: server-everything answers a tool call.
#[tokio::test]
async fn server_everything_under_the_sandbox_answers_through_the_broker() {
    let modules = peers_dir().join("node_modules");
    let everything = modules.join("@modelcontextprotocol/server-everything/dist/index.js");
    if !require_peer(&node()) || !require_peer(&everything) {
        return;
    }
    let Some(broker) = sandboxed_broker(
        "node",
        &[&modules],
        &format!(
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
        ),
    )
    .await
    else {
        return;
    };
    let calls = json!([
        { "name": "echo", "arguments": { "message": "from the sandbox" }, "expect": "from the sandbox" }
    ])
    .to_string();
    let steps = run_typescript_client(&broker, &["--calls", &calls], &[]).await;
    assert_full_flow(&broker, &steps);
    let layers = spawned_layers(&broker);
    assert!(layers.iter().any(|layer| layer == "seccomp"), "{layers:?}");
    broker.shutdown().await;
}

/// A Go MCP server binary shipped on npm, under the full sandbox, through the broker: its
/// tool call reaches the egress proxy (its only way out) and is audited there.
#[tokio::test]
async fn a_go_mcp_server_under_the_sandbox_answers_through_the_broker() {
    let go =
        peers_dir().join("node_modules/mcp-prometheus-linux-amd64/bin/mcp-prometheus-linux-amd64");
    if !require_peer(&node()) || !require_peer(&go) {
        return;
    }
    let Some(broker) = sandboxed_broker(
        "go",
        &[],
        &format!(
            r#"
            [mcp.child]
            program = "{}"
            args = ["--url", "{{forgejo_url}}"]
            env_allowlist = []
            token_variable = "UNUSED_TOKEN"
            delivery = "none"
            "#,
            go.display()
        ),
    )
    .await
    else {
        return;
    };
    // No Prometheus behind it: the query fails upstream, but it went out through the proxy.
    let calls = json!([
        { "name": "query", "arguments": { "promql": "up" }, "allowError": true }
    ])
    .to_string();
    let steps = run_typescript_client(&broker, &["--calls", &calls], &[]).await;
    assert_full_flow(&broker, &steps);
    assert!(
        steps.find("tools_listed")["names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|name| name == "query")
    );
    let proxied = broker.audit_events().into_iter().any(|event| {
        matches!(event, forgejo_mcp_broker::audit::AuditEvent::UpstreamApiCall { path, .. }
            if path.starts_with("/api/v1/query"))
    });
    assert!(proxied, "the Go child's request reached the egress proxy");
    let layers = spawned_layers(&broker);
    assert!(
        layers.iter().any(|layer| layer == "network-namespace"),
        "{layers:?}"
    );
    broker.shutdown().await;
}

/// The TypeScript client's full flow with gitea-mcp as the child: it lists alice's
/// repositories and files an issue titled `title`, which must then exist at the stand-in.
async fn gitea_mcp_lists_repositories_and_files_an_issue(broker: &TestBroker, title: &str) {
    let calls = json!([
        { "name": "list_repos", "arguments": {}, "expect": "notes" },
        { "name": "create_issue",
          "arguments": { "owner": "alice", "repo": "notes", "title": title },
          "expect": title }
    ])
    .to_string();
    let steps = run_typescript_client(broker, &["--calls", &calls], &[]).await;
    assert_full_flow(broker, &steps);
    assert!(
        broker
            .standin
            .issues("alice", "notes")
            .iter()
            .any(|issue| issue.title == title)
    );
}
