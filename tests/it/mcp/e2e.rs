//! The MCP edge as wired in `app.rs`, with the real OAuth flow in front (stand-in Forgejo):
//! a token from `/oauth/token` opens a session, the child gets the user's Forgejo token (not
//! the broker's), and revoking the grant at `/oauth/revoke` ends the session at once.

use serde_json::{Value, json};

use super::fixtures::{Client, eventually, test_child_path};
use crate::fixtures::TestBroker;

const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[tokio::test]
async fn a_real_token_opens_a_session_and_revocation_ends_it() {
    let broker = TestBroker::builder()
        .toml(&format!(
            "[mcp]\nhousekeeping_interval_ms = 25\n[mcp.child]\nprogram = \"{}\"\nargs = []\ndelivery = \"env\"\nenv_allowlist = []\n",
            test_child_path().display()
        ))
        .start()
        .await;
    let (client, tokens) = broker.login_new_client().await;
    let mut mcp = Client::new(&broker.base_url, &tokens.access_token);
    mcp.initialize().await;
    assert_eq!(
        mcp.tool_text("echo", json!({"message": "through the real flow"}))
            .await,
        "through the real flow"
    );

    // The child holds the user's Forgejo token, never the broker's (item 19).
    let env: Value = serde_json::from_str(&mcp.tool_text("env", json!({})).await).unwrap();
    let forgejo_token = env["FORGEJO_ACCESS_TOKEN"].as_str().unwrap();
    assert!(!forgejo_token.is_empty());
    assert_ne!(forgejo_token, tokens.access_token);
    assert_ne!(forgejo_token, tokens.refresh_token);
    assert_eq!(broker.app().mcp.running_children(), 1);

    // RFC 7009 revocation of the refresh token kills the family; the edge hears of it.
    let status = TestBroker::http()
        .post(broker.url("/oauth/revoke"))
        .form(&[
            ("token", tokens.refresh_token.as_str()),
            ("client_id", client.client_id.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    assert!(eventually(WAIT, || async { broker.app().mcp.running_children() == 0 }).await);
    let reply = mcp
        .post(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"}))
        .await;
    assert_eq!(reply.status, 401, "the revoked token is refused");
    broker.shutdown().await;
}

#[tokio::test]
async fn new_sessions_are_rate_limited_per_user() {
    let broker = TestBroker::builder()
        .toml(&format!(
            "[mcp.child]\nprogram = \"{}\"\nargs = []\ndelivery = \"none\"\n[rate_limits.mcp_session]\nper_user = \"1/h\"\n",
            test_child_path().display()
        ))
        .start()
        .await;
    let (_, tokens) = broker.login_new_client().await;
    Client::new(&broker.base_url, &tokens.access_token)
        .initialize()
        .await;
    let second = Client::new(&broker.base_url, &tokens.access_token);
    let reply = second
        .post(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
        .await;
    assert_eq!(reply.status, 429, "{}", reply.body);
    assert!(reply.headers.get("retry-after").is_some());
    assert!(
        reply.messages[0]["error"].is_object(),
        "a JSON-RPC error: {}",
        reply.body
    );
    broker.shutdown().await;
}
