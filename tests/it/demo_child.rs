//! The demo child is a real stdio MCP server: its tools reach the stand-in Forgejo with the
//! credential it was handed (here through `--token-file`, as the sandbox's pipe mode does).

use std::io::Write as _;
use std::process::Stdio;
use std::time::Duration;

use forgejo_mcp_broker::standin::{StandinApp, StandinConfig, StandinForgejo};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const BROKER: &str = env!("CARGO_BIN_EXE_forgejo-mcp-broker");

struct Child {
    process: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    next_id: i64,
}

impl Child {
    fn spawn(forgejo_url: &str, token_file: &std::path::Path) -> Self {
        let mut process = tokio::process::Command::new(BROKER)
            .arg("demo-child")
            .arg("--token-file")
            .arg(token_file)
            .env_clear()
            .env("FORGEJO_URL", forgejo_url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = process.stdin.take().unwrap();
        let stdout = BufReader::new(process.stdout.take().unwrap()).lines();
        Self {
            process,
            stdin,
            stdout,
            next_id: 1,
        }
    }

    async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_vec(
            &json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }),
        )
        .unwrap();
        line.push(b'\n');
        self.stdin.write_all(&line).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(30), self.stdout.next_line())
            .await
            .expect("the demo child answers within 30 s")
            .unwrap()
            .expect("the demo child keeps stdout open");
        let reply: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(reply["id"], id);
        reply
    }

    async fn call(&mut self, tool: &str, arguments: Value) -> (bool, String) {
        let reply = self
            .request(
                "tools/call",
                json!({ "name": tool, "arguments": arguments }),
            )
            .await;
        let result = &reply["result"];
        (
            result["isError"].as_bool().unwrap(),
            result["content"][0]["text"].as_str().unwrap().to_owned(),
        )
    }
}

#[tokio::test]
async fn demo_child_tools_act_on_forgejo_as_the_token_holder() {
    let forgejo = StandinForgejo::start(StandinConfig::with_demo_user().app(
        StandinApp::confidential("broker", "broker-secret", ["http://127.0.0.1/cb"]),
    ))
    .await
    .unwrap();
    let tokens = forgejo.issue_tokens(1, "broker", "").unwrap();
    let mut token_file = tempfile::NamedTempFile::new().unwrap();
    token_file
        .write_all(tokens.access_token.as_bytes())
        .unwrap();

    let mut child = Child::spawn(forgejo.base_url(), token_file.path());
    let init = child
        .request(
            "initialize",
            json!({ "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": { "name": "it", "version": "0" } }),
        )
        .await;
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18");
    let tools = child.request("tools/list", json!({})).await;
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tool| tool["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["whoami", "list_repositories", "create_issue"]);

    let (failed, text) = child.call("whoami", json!({})).await;
    assert!(!failed, "{text}");
    assert!(text.contains("alice") && text.contains("id 1"), "{text}");

    let (failed, text) = child.call("list_repositories", json!({})).await;
    assert!(!failed, "{text}");
    assert!(text.contains("alice/"), "{text}");

    let repo_name = text
        .split(": ")
        .nth(1)
        .and_then(|names| names.split(", ").next())
        .and_then(|full| full.split('/').nth(1))
        .unwrap()
        .to_owned();
    let before = forgejo.issues("alice", &repo_name).len();
    let (failed, text) = child
        .call(
            "create_issue",
            json!({ "owner": "alice", "repo": repo_name, "title": "Filed by the demo child" }),
        )
        .await;
    assert!(!failed, "{text}");
    let after = forgejo.issues("alice", &repo_name);
    assert_eq!(after.len(), before + 1);
    assert!(
        after
            .iter()
            .any(|issue| issue.title == "Filed by the demo child")
    );

    let (failed, text) = child
        .call("create_issue", json!({ "owner": "alice" }))
        .await;
    assert!(failed, "missing arguments must be a tool error: {text}");
    let garbage = child.request("no/such/method", json!({})).await;
    assert_eq!(garbage["error"]["code"], -32601);

    drop(child.stdin);
    let status = child.process.wait().await.unwrap();
    assert!(
        status.success(),
        "the child exits cleanly when stdin closes"
    );
}

#[tokio::test]
async fn demo_child_with_a_wrong_token_reports_a_tool_error_not_a_crash() {
    let forgejo = StandinForgejo::start(StandinConfig::with_demo_user())
        .await
        .unwrap();
    let mut token_file = tempfile::NamedTempFile::new().unwrap();
    token_file.write_all(b"not-a-forgejo-token").unwrap();
    let mut child = Child::spawn(forgejo.base_url(), token_file.path());
    let (failed, text) = child.call("whoami", json!({})).await;
    assert!(failed);
    assert!(text.contains("401"), "{text}");
    assert!(
        !text.contains("not-a-forgejo-token"),
        "the token never appears in errors"
    );
}
