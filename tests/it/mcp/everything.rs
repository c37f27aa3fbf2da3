//! Protocol coverage through the broker with a real third-party child:
//! `@modelcontextprotocol/server-everything` (pinned in tests/peers/package.json).

use std::time::Duration;

use serde_json::{Value, json};

use super::fixtures::*;

const WAIT: Duration = Duration::from_secs(20);

async fn start() -> Option<Broker> {
    let path = everything_path()?;
    Some(Broker::start(test_config(everything_profile(&path))).await)
}

/// Waits on the GET stream for a message matching `pick`, skipping others.
async fn wait_for(get: &mut SseStream, pick: impl Fn(&Value) -> bool) -> Value {
    loop {
        let (_, message) = get
            .next_message(WAIT)
            .await
            .expect("expected message on the GET stream");
        if pick(&message) {
            return message;
        }
    }
}

#[tokio::test]
async fn tools_resources_and_prompts() {
    let Some(broker) = start().await else { return };
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    let init = client.initialize().await;
    assert_eq!(
        init["result"]["serverInfo"]["name"],
        "mcp-servers/everything"
    );
    let tools = client.request("tools/list", json!({})).await;
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"echo"), "{names:?}");
    assert_eq!(
        client.tool_text("echo", json!({"message": "über"})).await,
        "Echo: über"
    );
    let sum = client.tool_text("get-sum", json!({"a": 2, "b": 40})).await;
    assert!(sum.contains("42"), "{sum}");

    let resources = client.request("resources/list", json!({})).await;
    let uri = resources["result"]["resources"][0]["uri"]
        .as_str()
        .unwrap()
        .to_owned();
    let read = client.request("resources/read", json!({"uri": uri})).await;
    assert_eq!(read["result"]["contents"][0]["uri"], uri);

    let prompt = client
        .request("prompts/get", json!({"name": "simple-prompt"}))
        .await;
    assert!(prompt["result"]["messages"].is_array(), "{prompt}");
    broker.stop().await;
}

#[tokio::test]
async fn progress_notifications_reach_the_requests_stream() {
    let Some(broker) = start().await else { return };
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    let reply = client
        .post(&json!({"jsonrpc": "2.0", "id": 77, "method": "tools/call",
            "params": {"name": "trigger-long-running-operation", "arguments": {"duration": 1, "steps": 2},
                       "_meta": {"progressToken": "progress-77"}}}))
        .await;
    let progress: Vec<&Value> = reply
        .messages
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .collect();
    assert_eq!(progress.len(), 2, "{}", reply.body);
    assert!(
        progress
            .iter()
            .all(|m| m["params"]["progressToken"] == "progress-77")
    );
    assert_eq!(reply.messages.last().unwrap()["id"], 77);
    broker.stop().await;
}

#[tokio::test]
async fn sampling_and_elicitation_round_trip_through_the_get_stream() {
    let Some(broker) = start().await else { return };
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    let (_, mut get) = client.open_get(None).await;
    // The conditional tools appear after `initialized` (their list_changed comes on GET).
    wait_for(&mut get, |m| {
        m["method"] == "notifications/tools/list_changed"
    })
    .await;

    let call = client.post(&json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
        "params": {"name": "trigger-sampling-request", "arguments": {"prompt": "hello", "maxTokens": 5}}}));
    let answer = async {
        let request = wait_for(&mut get, |m| m["method"] == "sampling/createMessage").await;
        let reply = client
            .post(&json!({"jsonrpc": "2.0", "id": request["id"], "result": {"role": "assistant",
                "content": {"type": "text", "text": "sampled-by-the-test"}, "model": "test-model"}}))
            .await;
        assert_eq!(reply.status, 202);
    };
    let (reply, ()) = tokio::join!(call, answer);
    let text = reply.messages.last().unwrap()["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(text.contains("sampled-by-the-test"), "{text}");

    let call = client.post(&json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call",
        "params": {"name": "trigger-elicitation-request", "arguments": {}}}));
    let answer = async {
        let request = wait_for(&mut get, |m| m["method"] == "elicitation/create").await;
        let reply = client
            .post(
                &json!({"jsonrpc": "2.0", "id": request["id"], "result": {"action": "accept",
                "content": {"name": "Ada Lovelace"}}}),
            )
            .await;
        assert_eq!(reply.status, 202);
    };
    let (reply, ()) = tokio::join!(call, answer);
    assert!(reply.body.contains("Ada Lovelace"), "{}", reply.body);
    broker.stop().await;
}

#[tokio::test]
async fn logging_subscriptions_and_list_changed_arrive_on_the_get_stream() {
    let Some(broker) = start().await else { return };
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    // list_changed was emitted with no stream open: queued, delivered when GET opens.
    let (_, mut get) = client.open_get(None).await;
    wait_for(&mut get, |m| {
        m["method"] == "notifications/tools/list_changed"
    })
    .await;

    client
        .request("logging/setLevel", json!({"level": "debug"}))
        .await;
    client
        .call_tool("toggle-simulated-logging", json!({}))
        .await;
    let log = wait_for(&mut get, |m| m["method"] == "notifications/message").await;
    assert!(log["params"]["level"].is_string());
    client
        .call_tool("toggle-simulated-logging", json!({}))
        .await;

    let resources = client.request("resources/list", json!({})).await;
    let uri = resources["result"]["resources"][0]["uri"]
        .as_str()
        .unwrap()
        .to_owned();
    client
        .request("resources/subscribe", json!({"uri": uri}))
        .await;
    client
        .call_tool("toggle-subscriber-updates", json!({}))
        .await;
    let updated = wait_for(&mut get, |m| {
        m["method"] == "notifications/resources/updated"
    })
    .await;
    assert_eq!(updated["params"]["uri"], uri);
    client
        .call_tool("toggle-subscriber-updates", json!({}))
        .await;
    broker.stop().await;
}
