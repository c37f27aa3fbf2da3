//! Session lifecycle: ownership, DELETE, hibernation and transparent resume, restart, expiry,
//! revocation, and the limits.

use std::time::Duration;

use serde_json::{Value, json};

use super::fixtures::*;
use forgejo_mcp_broker::auth::AccessEnded;
use forgejo_mcp_broker::mcp::jsonrpc::codes;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn another_users_token_on_a_session_id_gets_404() {
    let broker = Broker::start(test_config(test_child_profile(&[]))).await;
    let mut alice = broker.user("alice", 1, "client-a", "grant-a");
    alice.initialize().await;
    let mut mallory = broker.user("mallory", 2, "client-a", "grant-m");
    mallory.session = alice.session.clone();
    let reply = mallory
        .post(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "pid"}}),
        )
        .await;
    assert_eq!(reply.status, 404);
    assert_eq!(mallory.open_get(None).await.0, 404);
    assert_eq!(mallory.delete().await, 404);
    // Same user, another client: not the session either.
    let mut other_client = broker.user("alice-2", 1, "client-b", "grant-b");
    other_client.session = alice.session.clone();
    assert_eq!(other_client.delete().await, 404);
    // Alice's session is untouched.
    assert_eq!(
        alice.tool_text("echo", json!({"message": "mine"})).await,
        "mine"
    );
    broker.stop().await;
}

#[tokio::test]
async fn delete_ends_the_session_and_its_child() {
    let broker = Broker::start(test_config(test_child_profile(&[]))).await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    let pid = client.pid().await;
    assert_eq!(client.delete().await, 204);
    assert!(eventually(WAIT, || async { !process_alive(pid) }).await);
    let reply = client
        .post(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"}))
        .await;
    assert_eq!(reply.status, 404);
    broker.stop().await;
}

#[tokio::test]
async fn an_idle_session_hibernates_and_resumes_transparently_with_its_state_replayed() {
    let mut config = test_config(test_child_profile(&[]));
    config.idle_timeout_secs = 60;
    let broker = Broker::start(config).await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    client
        .request("resources/subscribe", json!({"uri": "file:///watched"}))
        .await;
    client
        .request("logging/setLevel", json!({"level": "debug"}))
        .await;
    let before = client.pid().await;

    broker.clock.advance(61);
    assert!(eventually(WAIT, || async { broker.handle.running_children() == 0 }).await);
    assert!(eventually(WAIT, || async { !process_alive(before) }).await);

    let after = client.pid().await;
    assert_ne!(before, after);
    let state: Value = serde_json::from_str(&client.tool_text("state", json!({})).await).unwrap();
    assert_eq!(state["subscriptions"], json!(["file:///watched"]));
    assert_eq!(state["log_level"], "debug");
    assert_eq!(state["initialized"], 1);
    let names: Vec<String> = broker.audit.events().iter().map(|e| e.name()).collect();
    assert!(
        names.contains(&"session_hibernated".to_owned()),
        "{names:?}"
    );
    assert!(names.contains(&"session_resumed".to_owned()), "{names:?}");
    broker.stop().await;
}

#[tokio::test]
async fn a_session_resumes_after_a_broker_restart() {
    let broker = Broker::start(test_config(test_child_profile(&[]))).await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    client
        .request("resources/subscribe", json!({"uri": "file:///kept"}))
        .await;
    let before = client.pid().await;
    let session = client.session.clone();

    let broker = broker.restart().await;
    assert!(!process_alive(before), "shutdown stops every child");
    let mut client = broker.client("t1");
    client.session = session;
    let after = client.pid().await;
    assert_ne!(before, after);
    let state: Value = serde_json::from_str(&client.tool_text("state", json!({})).await).unwrap();
    assert_eq!(state["subscriptions"], json!(["file:///kept"]));
    broker.stop().await;
}

#[tokio::test]
async fn an_expired_session_answers_404() {
    let mut config = test_config(test_child_profile(&[]));
    config.session_ttl_secs = 3600;
    let broker = Broker::start(config).await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    let pid = client.pid().await;
    broker.clock.advance(3601);
    let reply = client
        .post(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"}))
        .await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert!(eventually(WAIT, || async { !process_alive(pid) }).await);
    broker.stop().await;
}

/// A session in use slides its expiry, also in its stored record: one used every 30 s for
/// longer than its TTL is still there after a broker restart.
#[tokio::test]
async fn a_session_in_steady_use_slides_its_stored_expiry() {
    let mut config = test_config(test_child_profile(&[]));
    config.session_ttl_secs = 3600;
    let broker = Broker::start(config).await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    let session = client.session.clone();
    for id in 0..130 {
        broker.clock.advance(30);
        let reply = client
            .post(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"}))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let broker = broker.restart().await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.session = session;
    let reply = client
        .post(&json!({"jsonrpc": "2.0", "id": 999, "method": "tools/list"}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    broker.stop().await;
}

#[tokio::test]
async fn a_revoked_grant_ends_its_sessions() {
    let broker = Broker::start(test_config(test_child_profile(&[]))).await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    // The token itself is refused once revoked (401) …
    broker.verifier.revoke("t1");
    let reply = client
        .post(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
        .await;
    assert_eq!(reply.status, 401);
    // … the OAuth side announces the revocation, the edge ends the grant's sessions (child
    // stopped), and a fresh authorization of the same user and client does not get them back.
    assert_eq!(broker.handle.running_children(), 1);
    broker
        .access_ended
        .send(AccessEnded::Grant {
            grant_id: "grant-1".to_owned(),
            user_id: 1,
        })
        .unwrap();
    assert!(eventually(WAIT, || async { broker.handle.running_children() == 0 }).await);
    let mut renewed = broker.user("t2", 1, "client-a", "grant-2");
    renewed.session = client.session.clone();
    let reply = renewed
        .post(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}))
        .await;
    assert_eq!(reply.status, 404);
    broker.stop().await;
}

#[tokio::test]
async fn a_dead_user_announced_by_the_oauth_side_ends_all_their_sessions() {
    let broker = Broker::start(test_config(test_child_profile(&[]))).await;
    let mut first = broker.user("t1", 5, "client-a", "grant-1");
    first.initialize().await;
    let mut second = broker.user("t2", 5, "client-b", "grant-2");
    second.initialize().await;
    let mut other_user = broker.user("t3", 6, "client-a", "grant-3");
    other_user.initialize().await;
    assert_eq!(broker.handle.running_children(), 3);
    broker
        .access_ended
        .send(AccessEnded::User { user_id: 5 })
        .unwrap();
    assert!(eventually(WAIT, || async { broker.handle.running_children() == 1 }).await);
    for client in [&first, &second] {
        let reply = client
            .post(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}))
            .await;
        assert_eq!(reply.status, 404);
    }
    assert_eq!(
        other_user
            .tool_text("echo", json!({"message": "alive"}))
            .await,
        "alive"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_dead_forgejo_grant_ends_the_session_at_respawn() {
    let mut config = test_config(test_child_profile(&[]));
    config.idle_timeout_secs = 60;
    let broker = Broker::start(config).await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    broker.clock.advance(61);
    assert!(eventually(WAIT, || async { broker.handle.running_children() == 0 }).await);
    broker.upstream.dead.lock().unwrap().insert(1);
    let reply = client
        .post(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
        .await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    let again = client
        .post(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}))
        .await;
    assert_eq!(again.status, 404);
    broker.stop().await;
}

#[tokio::test]
async fn sessions_per_user_are_limited_with_a_clear_error() {
    let mut config = test_config(test_child_profile(&[]));
    config.max_sessions_per_user = 2;
    let broker = Broker::start(config).await;
    let mut first = broker.user("t1", 1, "client-a", "grant-1");
    first.initialize().await;
    broker.client("t1").initialize().await;
    let third = broker.client("t1");
    let reply = third
        .post(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
        .await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.messages[0]["error"]["code"], codes::LIMIT_REACHED);
    assert!(reply.body.contains("Too many sessions"));
    // Another user is not affected; ending one session makes room.
    broker
        .user("t9", 9, "client-a", "grant-9")
        .initialize()
        .await;
    assert_eq!(first.delete().await, 204);
    broker.client("t1").initialize().await;
    broker.stop().await;
}

#[tokio::test]
async fn at_the_child_limit_the_longest_idle_child_hibernates_first() {
    let mut config = test_config(test_child_profile(&[]));
    config.max_children = 2;
    let broker = Broker::start(config).await;
    let mut oldest = broker.user("t1", 1, "client-a", "grant-1");
    oldest.initialize().await;
    let oldest_pid = oldest.pid().await;
    broker.clock.advance(10);
    let mut middle = broker.user("t2", 2, "client-a", "grant-2");
    middle.initialize().await;
    let middle_pid = middle.pid().await;
    broker.clock.advance(10);
    let mut newest = broker.user("t3", 3, "client-a", "grant-3");
    newest.initialize().await;
    assert_eq!(broker.handle.running_children(), 2);
    assert!(eventually(WAIT, || async { !process_alive(oldest_pid) }).await);
    assert!(process_alive(middle_pid));
    // The hibernated session still works (and now the middle one makes room).
    assert_ne!(oldest.pid().await, oldest_pid);
    assert!(eventually(WAIT, || async { !process_alive(middle_pid) }).await);
    broker.stop().await;
}

#[tokio::test]
async fn at_the_child_limit_with_every_child_busy_a_clear_error() {
    let mut config = test_config(test_child_profile(&[]));
    config.max_children = 1;
    let broker = Broker::start(config).await;
    let mut busy = broker.user("t1", 1, "client-a", "grant-1");
    busy.initialize().await;
    // With SSE the response head arrives once the request has been written to the child, so
    // after `send` the request is in flight.
    let slow = busy
        .post_builder(&json!({"jsonrpc": "2.0", "id": 50, "method": "tools/call",
            "params": {"name": "slow", "arguments": {"ms": 2000}}}))
        .send()
        .await
        .unwrap();
    let other = broker.user("t2", 2, "client-a", "grant-2");
    let reply = other
        .post(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
        .await;
    assert_eq!(
        reply.messages[0]["error"]["code"],
        codes::CHILD_UNAVAILABLE,
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("maximum of 1 MCP servers"),
        "{}",
        reply.body
    );
    let slow = read_reply(slow).await;
    assert!(slow.body.contains("slept 2000 ms"), "{}", slow.body);
    broker.stop().await;
}

#[tokio::test]
async fn at_the_session_limit_the_least_recently_used_idle_session_makes_room() {
    let mut config = test_config(test_child_profile(&[]));
    config.max_sessions_per_user = 2;
    config.idle_timeout_secs = 60;
    let broker = Broker::start(config).await;
    let mut oldest = broker.user("t1", 1, "client-a", "grant-1");
    oldest.initialize().await;
    broker.clock.advance(30);
    let mut recent = broker.client("t1");
    recent.initialize().await;
    broker.clock.advance(45); // the oldest is now idle past the timeout, the recent one is not
    let mut third = broker.client("t1");
    third.initialize().await;
    let gone = oldest
        .post(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
        .await;
    assert_eq!(
        gone.status, 404,
        "the least recently used session was ended"
    );
    assert_eq!(
        recent.tool_text("echo", json!({"message": "kept"})).await,
        "kept"
    );
    assert_eq!(
        third.tool_text("echo", json!({"message": "new"})).await,
        "new"
    );
    broker.stop().await;
}

#[tokio::test]
async fn requests_in_flight_per_session_are_limited_with_a_clear_error() {
    let mut config = test_config(test_child_profile(&[]));
    config.max_in_flight_per_session = 1;
    let broker = Broker::start(config).await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    // The SSE head arrives once the first request is in flight.
    let (status, mut slow) = client
        .post_stream(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "slow", "arguments": {"ms": 500}}}))
        .await;
    assert_eq!(status, 200);
    let refused = client
        .post(
            &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "pid"}}),
        )
        .await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.messages[0]["error"]["code"], codes::LIMIT_REACHED);
    assert!(refused.body.contains("in flight"), "{}", refused.body);
    let (_, answer) = slow.next_message(WAIT).await.unwrap();
    assert_eq!(answer["result"]["content"][0]["text"], "slept 500 ms");
    // Once answered, the next request goes through.
    assert!(client.pid().await > 0);
    broker.stop().await;
}

#[tokio::test]
async fn a_replayed_request_the_child_never_answers_does_not_keep_the_session_awake() {
    let mut config = test_config(test_child_profile(&[
        "--never-answer",
        "resources/subscribe",
    ]));
    config.idle_timeout_secs = 60;
    config.request_timeout_ms = 300;
    let broker = Broker::start(config).await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    let subscribe = client
        .request("resources/subscribe", json!({"uri": "file:///watched"}))
        .await;
    assert_eq!(
        subscribe["error"]["code"],
        codes::REQUEST_TIMEOUT,
        "{subscribe}"
    );
    broker.clock.advance(61);
    assert!(eventually(WAIT, || async { broker.handle.running_children() == 0 }).await);

    // The respawn replays the subscription; the child never answers the broker's request.
    let respawned = client.pid().await;
    broker.clock.advance(61);
    assert!(
        eventually(WAIT, || async { broker.handle.running_children() == 0 }).await,
        "the unanswered replay kept the child running"
    );
    assert!(eventually(WAIT, || async { !process_alive(respawned) }).await);
    broker.stop().await;
}

#[tokio::test]
async fn a_request_while_delete_stops_the_child_does_not_bring_the_session_back() {
    // The child stays after its stdin closes, so stopping it takes the grace period: requests
    // keep arriving while the session is no longer in memory.
    let mut config = test_config(test_child_profile(&["--linger"]));
    config.stop_grace_ms = 4_000;
    let broker = Broker::start(config).await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    let pid = client.pid().await;
    let deleting = {
        let request = client
            .http
            .delete(format!("{}/mcp", client.base))
            .bearer_auth(&client.token)
            .header("mcp-session-id", client.session.clone().unwrap());
        tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
    };
    let gone = eventually(WAIT, || async {
        let reply = client
            .post(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"}))
            .await;
        reply.status == 404
    })
    .await;
    assert!(gone, "the session came back from its stored record");
    assert_eq!(deleting.await.unwrap(), 204);
    assert!(!process_alive(pid));
    assert_eq!(broker.handle.running_children(), 0);
    broker.stop().await;
}
