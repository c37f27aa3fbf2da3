//! Fault cases with the project's own test child: crashes, garbage, huge lines, slow answers,
//! children that exit at start, and what reaches the child's environment.

use std::time::Duration;

use serde_json::{Value, json};

use super::fixtures::*;
use forgejo_mcp_broker::mcp::jsonrpc::codes;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_crash_mid_request_answers_with_an_error_and_the_next_request_respawns() {
    let broker = Broker::start(test_config(test_child_profile(&[]))).await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    let session = client.session.clone();
    let before = client.pid().await;

    let crashed = client.call_tool("crash", json!({})).await;
    assert_eq!(
        crashed["error"]["code"],
        codes::CHILD_UNAVAILABLE,
        "{crashed}"
    );
    assert!(
        crashed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exited")
    );

    let after = client.pid().await;
    assert_ne!(before, after, "a new child serves the session");
    assert_eq!(client.session, session, "the client keeps its session id");
    assert!(!process_alive(before));
    broker.stop().await;
}

#[tokio::test]
async fn garbage_on_stdout_is_skipped() {
    let broker = Broker::start(test_config(test_child_profile(&["--garbage-at-start"]))).await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    assert_eq!(
        client.tool_text("garbage", json!({})).await,
        "after garbage"
    );
    assert_eq!(
        client
            .tool_text("echo", json!({"message": "still fine"}))
            .await,
        "still fine"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_line_over_the_limit_ends_the_child_with_a_clear_error() {
    let mut config = test_config(test_child_profile(&[]));
    config.max_line_bytes = 64 * 1024;
    let broker = Broker::start(config).await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    let before = client.pid().await;
    // Under the limit passes through whole.
    let fits = client.tool_text("huge", json!({"bytes": 32 * 1024})).await;
    assert_eq!(fits.len(), 32 * 1024);
    let too_big = client.call_tool("huge", json!({"bytes": 200 * 1024})).await;
    assert_eq!(
        too_big["error"]["code"],
        codes::CHILD_UNAVAILABLE,
        "{too_big}"
    );
    assert!(
        too_big["error"]["message"]
            .as_str()
            .unwrap()
            .contains("65536-byte line limit")
    );
    assert_ne!(
        client.pid().await,
        before,
        "the session continues on a fresh child"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_slow_request_times_out_and_the_child_is_told_to_cancel() {
    let mut config = test_config(test_child_profile(&[]));
    config.request_timeout_ms = 300;
    let broker = Broker::start(config).await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    let seen_id: i64 = client
        .tool_text("seen-id", json!({}))
        .await
        .parse()
        .unwrap();

    let slow = client.call_tool("slow", json!({"ms": 5_000})).await;
    assert_eq!(slow["error"]["code"], codes::REQUEST_TIMEOUT, "{slow}");

    // The child saw ids seen_id+1 (slow) …; its cancellation names that id (item 143).
    let state: Value = serde_json::from_str(&client.tool_text("state", json!({})).await).unwrap();
    assert_eq!(state["cancelled"], json!([seen_id + 1]), "{state}");
    broker.stop().await;
}

/// An `initialize` whose child cannot start: answered (200) with a JSON-RPC error and no
/// session. Returns the error object.
async fn initialize_refused(broker: &Broker) -> Value {
    let client = broker.user("t1", 1, "client-a", "grant-1");
    let reply = client
        .post(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
        .await;
    assert_eq!(reply.status, 200);
    assert!(reply.headers.get("mcp-session-id").is_none());
    let error = reply.messages[0]["error"].clone();
    assert_eq!(error["code"], codes::CHILD_UNAVAILABLE, "{}", reply.body);
    error
}

#[tokio::test]
async fn a_child_that_exits_at_start_fails_initialize_with_an_error_and_no_session() {
    let broker = Broker::start(test_config(test_child_profile(&["--exit-at-start"]))).await;
    let error = initialize_refused(&broker).await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("failed to start")
    );
    assert!(eventually(WAIT, || async { broker.handle.running_children() == 0 }).await);
    broker.stop().await;
}

#[tokio::test]
async fn a_child_program_another_user_could_replace_is_not_started() {
    use std::os::unix::fs::PermissionsExt as _;
    let logs = crate::fixtures::logs::capture();
    // The test child, copied into a directory anyone may write to (no sticky bit).
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let program = open.join("mcp-test-child");
    std::fs::copy(test_child_path(), &program).unwrap();
    let mut profile = test_child_profile(&[]);
    profile.program = program.clone();
    let broker = Broker::start(test_config(profile)).await;
    let error = initialize_refused(&broker).await;
    // The client learns nothing about the host; the operator's log says what and why.
    assert_eq!(error["message"], "the MCP server could not be started");
    let logged = logs.contents();
    assert!(
        logged.contains(&format!(
            "{}: writable by group or others (mode 777,",
            open.display()
        )),
        "{logged}"
    );
    assert_eq!(broker.handle.running_children(), 0);

    // Fixed (`chmod go-w`), the same program starts.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_a_child_starts(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_relative_program_is_found_from_the_childs_working_directory() {
    // As `execvp` in the child would find it: the broker's own directory is elsewhere.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(test_child_path(), dir.path().join("mcp-test-child")).unwrap();
    let mut profile = test_child_profile(&[]);
    profile.program = "./mcp-test-child".into();
    profile.working_dir = Some(dir.path().to_path_buf());
    let broker = Broker::start(test_config(profile)).await;
    assert_a_child_starts(&broker).await;
    broker.stop().await;
}

async fn assert_a_child_starts(broker: &Broker) {
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    assert!(client.pid().await > 0);
}

#[tokio::test]
async fn the_child_environment_is_the_allowlist_plus_the_credential() {
    // SAFETY of the test: a variable in the broker's environment that must not reach the child.
    let broker = Broker::start(test_config(test_child_profile(&[]))).await;
    let mut client = broker.user("t1", 7, "client-a", "grant-1");
    client.initialize().await;
    let env: Value = serde_json::from_str(&client.tool_text("env", json!({})).await).unwrap();
    let mut names: Vec<&str> = env
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["CHILD_MARKER", "FORGEJO_ACCESS_TOKEN", "PATH"]);
    assert_eq!(env["FORGEJO_ACCESS_TOKEN"], "forgejo-token-of-7");
    // The credential is never in argv.
    let pid = client.pid().await;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("forgejo-token"));
    broker.stop().await;
}

#[tokio::test]
async fn audit_events_carry_neither_session_ids_nor_tokens() {
    let broker = Broker::start(test_config(test_child_profile(&[]))).await;
    let mut client = broker.user("bearer-secret-value", 3, "client-a", "grant-1");
    client.initialize().await;
    client.tool_text("echo", json!({"message": "x"})).await;
    client.call_tool("crash", json!({})).await;
    client.tool_text("echo", json!({"message": "y"})).await;
    assert_eq!(client.delete().await, 204);
    let events = broker.audit.events();
    let names: Vec<String> = events.iter().map(|e| e.name()).collect();
    for expected in [
        "session_created",
        "child_spawned",
        "tool_called",
        "child_exited",
        "session_resumed",
        "session_ended",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    let text = serde_json::to_string(&events).unwrap();
    let session = client.session.as_deref().unwrap();
    assert!(
        !text.contains(session),
        "the session id leaked into the audit log"
    );
    assert!(!text.contains("forgejo-token-of-3"));
    assert!(!text.contains("bearer-secret-value"));
    broker.stop().await;
}
