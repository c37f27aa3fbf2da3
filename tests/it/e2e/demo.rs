//! `forgejo-mcp-broker demo` is exercised the way a newcomer meets it: start it on a free
//! loopback port, read the MCP URL it prints, and let the TypeScript SDK do the whole flow.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::{BROKER_BIN, assert_full_flow_at, node, require_peer, run_typescript_client_at};

#[tokio::test]
async fn the_demo_serves_the_whole_chain_to_the_typescript_sdk() {
    if !require_peer(&node()) {
        return;
    }
    let mut demo = tokio::process::Command::new(BROKER_BIN)
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    let mcp_url = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            banner.push(line.clone());
            if let Some(url) = line.trim().strip_prefix("MCP URL:") {
                return url.trim().to_owned();
            }
        }
        panic!("the demo ended without printing its MCP URL: {banner:?}");
    })
    .await
    .expect("the demo printed its MCP URL within 60 s");
    assert!(mcp_url.starts_with("http://127.0.0.1:"), "{mcp_url}");
    assert!(
        banner.iter().any(|line| line.contains("DEMO")),
        "{banner:?}"
    );

    let calls = serde_json::json!([
        { "name": "whoami", "expect": "alice" },
        { "name": "create_issue",
          "arguments": { "owner": "alice", "repo": "notes", "title": "Hello from the demo" },
          "expect": "Created issue" }
    ])
    .to_string();
    let steps = run_typescript_client_at(&mcp_url, &["--calls", &calls], &[]).await;
    let base_url = mcp_url.trim_end_matches("/mcp");
    assert_full_flow_at(base_url, &steps);

    // SIGTERM stops it cleanly.
    let pid = demo.id().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), demo.wait())
        .await
        .expect("the demo stops within 30 s of SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}
