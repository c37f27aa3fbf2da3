//! The HTTP side: auth and Origin, routing (exactly one stream, id remapping), resumption,
//! the modern-probe fallback, batches, legacy HTTP+SSE, body limits, CORS.

use std::time::Duration;

use serde_json::{Value, json};

use super::fixtures::*;
use forgejo_mcp_broker::mcp::jsonrpc::codes;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn requests_without_a_valid_token_get_401_with_the_metadata_pointer() {
    let broker = Broker::start(test_config(test_child_profile(&[]))).await;
    let anonymous = reqwest::Client::new()
        .post(format!("{}/mcp", broker.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let challenge = anonymous.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        challenge,
        format!(
            "Bearer resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
            broker.url
        )
    );
    let bad = broker.client("not-a-token");
    let reply = bad
        .post(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .await;
    assert_eq!(reply.status, 401);
    let challenge = reply.headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains(", error=\"invalid_token\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("/.well-known/oauth-protected-resource/mcp"),
        "{challenge}"
    );
    // Tokens in the query string are never accepted (item 17).
    broker.verifier.issue("query-token", 1, "c", "g");
    let in_query = reqwest::Client::new()
        .post(format!("{}/mcp?access_token=query-token", broker.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(in_query.status(), 401);
    broker.stop().await;
}

#[tokio::test]
async fn a_foreign_origin_gets_403_and_cors_exposes_the_mcp_headers() {
    let broker = Broker::start(test_config(test_child_profile(&[]))).await;
    let client = broker.user("t1", 1, "client-a", "grant-1");
    let evil = client
        .post_builder(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(evil.status(), 403);
    let preflight = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, format!("{}/mcp", broker.url))
        .header("origin", "https://inspector.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, mcp-session-id, mcp-protocol-version",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://inspector.example"
    );
    let mut allowed = client
        .post_builder(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
        .header("origin", "https://inspector.example")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    let exposed = allowed
        .headers_mut()
        .remove("access-control-expose-headers")
        .unwrap();
    let exposed = exposed.to_str().unwrap().to_ascii_lowercase();
    for header in ["mcp-session-id", "mcp-protocol-version", "www-authenticate"] {
        assert!(exposed.contains(header), "{exposed}");
    }
    let vary = allowed.headers()["vary"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(vary.contains("origin"), "{vary}");
    // A client that is not a browser page sends no Origin: no CORS work, no CORS headers.
    let plain = client
        .post_builder(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
    for header in [
        "access-control-expose-headers",
        "access-control-allow-origin",
        "vary",
    ] {
        assert!(plain.headers().get(header).is_none(), "{header}");
    }
    broker.stop().await;
}

#[tokio::test]
async fn a_sessionless_modern_probe_gets_a_non_modern_400() {
    let broker = Broker::start(test_config(test_child_profile(&[]))).await;
    let client = broker.user("t1", 1, "client-a", "grant-1");
    let reply = client
        .post_builder(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover",
            "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}}),
        )
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "server/discover")
        .send()
        .await
        .unwrap();
    let reply = read_reply(reply).await;
    assert_eq!(reply.status, 400);
    let code = reply.messages[0]["error"]["code"].as_i64().unwrap();
    // Item 133: never -32601 or the -32020…-32022 range that dual-era clients read as modern.
    assert_eq!(code, -32000, "{}", reply.body);
    assert!(reply.messages[0]["id"].is_null());
    // Without the header too.
    let reply = client
        .post(&json!({"jsonrpc": "2.0", "id": 2, "method": "server/discover"}))
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.messages[0]["error"]["code"], -32000);
    // Item 166: `initialized` without a session is accepted and dropped.
    let reply = client
        .post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    assert_eq!(reply.status, 202);
    broker.stop().await;
}

/// Item 165: a client that lost its `Mcp-Session-Id` but has exactly one session (same user,
/// client and authorization) is routed there; with two it is a 400, and modern probes keep
/// their non-modern 400 (item 133).
#[tokio::test]
async fn a_sessionless_request_goes_to_the_callers_only_session() {
    let broker = Broker::start(test_config(test_child_profile(&[]))).await;
    let mut first = broker.user("t1", 1, "client-a", "grant-1");
    first.initialize().await;
    let lost = broker.user("t1", 1, "client-a", "grant-1");
    assert!(lost.session.is_none());
    let reply = lost
        .post(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list"}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.messages[0]["id"], 7);
    assert!(
        reply.messages[0]["result"]["tools"].is_array(),
        "{}",
        reply.body
    );
    let reply = lost
        .post(&json!({"jsonrpc": "2.0", "id": 8, "method": "server/discover"}))
        .await;
    assert_eq!(
        (reply.status, reply.messages[0]["error"]["code"].as_i64()),
        (400, Some(-32000))
    );
    let reply = lost
        .post(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list",
            "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}}))
        .await;
    assert_eq!(
        reply.status, 400,
        "modern _meta is a probe too: {}",
        reply.body
    );
    // Another client of the same user, or another authorization, has no session to go to.
    for (token, client, grant) in [("t2", "client-b", "grant-2"), ("t3", "client-a", "grant-3")] {
        let stranger = broker.user(token, 1, client, grant);
        let reply = stranger
            .post(&json!({"jsonrpc": "2.0", "id": 10, "method": "tools/list"}))
            .await;
        assert_eq!(reply.status, 400, "{token}: {}", reply.body);
    }
    // Two sessions: routing would be a guess.
    let mut second = broker.user("t1", 1, "client-a", "grant-1");
    second.initialize().await;
    let reply = lost
        .post(&json!({"jsonrpc": "2.0", "id": 11, "method": "tools/list"}))
        .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    // After a restart, with one of the two loaded again: the other still exists on disk.
    let broker = broker.restart().await;
    let mut first_again = broker.client("t1");
    first_again.session = first.session.clone();
    assert!(first_again.pid().await > 0);
    let lost = broker.client("t1");
    let reply = lost
        .post(&json!({"jsonrpc": "2.0", "id": 12, "method": "tools/list"}))
        .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    drop(second);
    broker.stop().await;
}

#[tokio::test]
async fn protocol_version_header_is_validated_but_not_required() {
    let broker = Broker::start(test_config(test_child_profile(&[]))).await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    let unsupported = client
        .post_builder(&json!({"jsonrpc": "2.0", "id": 5, "method": "tools/list"}))
        .header("mcp-protocol-version", "1999-01-01")
        .send()
        .await
        .unwrap();
    assert_eq!(unsupported.status(), 400);
    let supported = client
        .post_builder(&json!({"jsonrpc": "2.0", "id": 6, "method": "tools/list"}))
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(supported.status(), 200);
    // Absent (item 121): fine.
    let reply = client.request("tools/list", json!({})).await;
    assert!(reply["result"]["tools"].is_array());
    broker.stop().await;
}

#[tokio::test]
async fn clashing_client_ids_are_remapped_and_each_answer_reaches_its_post() {
    let broker = Broker::start(test_config(test_child_profile(&[]))).await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    // Two requests in flight with the same client id, one slow and one fast.
    let slow = client.post(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "slow", "arguments": {"ms": 300}}}));
    let fast = client.post(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "fast"}}}));
    let (slow, fast) = tokio::join!(slow, fast);
    assert_eq!(slow.messages.len(), 1);
    assert_eq!(fast.messages.len(), 1);
    assert_eq!(slow.messages[0]["id"], 1);
    assert_eq!(fast.messages[0]["id"], 1);
    assert_eq!(
        slow.messages[0]["result"]["content"][0]["text"],
        "slept 300 ms"
    );
    assert_eq!(fast.messages[0]["result"]["content"][0]["text"], "fast");
    // The child never sees the client's ids: string ids come through as the broker's integers.
    let reply = client
        .post(
            &json!({"jsonrpc": "2.0", "id": "client-string-id", "method": "tools/call",
            "params": {"name": "seen-id", "arguments": {}}}),
        )
        .await;
    assert_eq!(reply.messages[0]["id"], "client-string-id");
    let seen = reply.messages[0]["result"]["content"][0]["text"]
        .as_str()
        .unwrap();
    assert!(seen.parse::<i64>().is_ok(), "child saw {seen}");
    broker.stop().await;
}

#[tokio::test]
async fn each_child_message_goes_to_exactly_one_stream() {
    let broker = Broker::start(test_config(test_child_profile(&[]))).await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;

    // No GET stream: the unrelated notification rides on the open POST stream.
    let reply = client
        .post(&json!({"jsonrpc": "2.0", "id": 10, "method": "tools/call", "params": {"name": "notify"}}))
        .await;
    let methods: Vec<&str> = reply
        .messages
        .iter()
        .filter_map(|m| m["method"].as_str())
        .collect();
    assert_eq!(methods, ["notifications/message"], "{}", reply.body);

    // With a GET stream: the notification goes there, and only there.
    let (status, mut get) = client.open_get(None).await;
    assert_eq!(status, 200);
    let reply = client
        .post(&json!({"jsonrpc": "2.0", "id": 11, "method": "tools/call", "params": {"name": "notify"}}))
        .await;
    assert_eq!(
        reply.messages.len(),
        1,
        "only the response on the POST: {}",
        reply.body
    );
    assert_eq!(reply.messages[0]["id"], 11);
    let (_, message) = get.next_message(WAIT).await.unwrap();
    assert_eq!(message["method"], "notifications/message");

    // Progress goes to the stream of the request that owns the token, even with GET open.
    let reply = client
        .post(&json!({"jsonrpc": "2.0", "id": 12, "method": "tools/call",
            "params": {"name": "progress", "arguments": {"steps": 3}, "_meta": {"progressToken": "tok-12"}}}))
        .await;
    let progress = reply
        .messages
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .count();
    assert_eq!(progress, 3, "{}", reply.body);
    assert_eq!(reply.messages.last().unwrap()["id"], 12);
    assert!(
        get.next_message(Duration::from_millis(300)).await.is_none(),
        "nothing leaked to GET"
    );
    broker.stop().await;
}

#[tokio::test]
async fn server_to_client_requests_round_trip_with_remapped_ids() {
    let broker = Broker::start(test_config(test_child_profile(&[]))).await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    let (_, mut get) = client.open_get(None).await;
    for round in 0..2 {
        let call = client.post(
            &json!({"jsonrpc": "2.0", "id": 100 + round, "method": "tools/call",
            "params": {"name": "sample"}}),
        );
        let answer = async {
            let (_, request) = get.next_message(WAIT).await.unwrap();
            assert_eq!(request["method"], "sampling/createMessage");
            let id = request["id"].as_str().unwrap().to_owned();
            assert!(id.starts_with("srv-"), "{request}");
            let reply = client
                .post(
                    &json!({"jsonrpc": "2.0", "id": id, "result": {"role": "assistant",
                    "content": {"type": "text", "text": format!("answer {round}")}, "model": "m"}}),
                )
                .await;
            assert_eq!(reply.status, 202);
        };
        let (reply, ()) = tokio::join!(call, answer);
        let text = reply.messages[0]["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(text.contains(&format!("answer {round}")), "{text}");
    }
    broker.stop().await;
}

#[tokio::test]
async fn a_dropped_post_stream_resumes_with_last_event_id() {
    let broker = Broker::start(test_config(test_child_profile(&[]))).await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    let (status, mut stream) = client
        .post_stream(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "slow", "arguments": {"ms": 400}}}))
        .await;
    assert_eq!(status, 200);
    // Item 103: the priming event carries an id and no data.
    let priming = stream.next_event(WAIT).await.unwrap();
    assert!(priming.data.is_empty());
    let last_id = priming.id.unwrap();
    drop(stream); // the connection is lost before the answer
    let (status, mut resumed) = client.open_get(Some(&last_id)).await;
    assert_eq!(status, 200);
    let (_, message) = resumed.next_message(WAIT).await.unwrap();
    assert_eq!(message["id"], 7);
    assert_eq!(message["result"]["content"][0]["text"], "slept 400 ms");
    assert!(
        resumed
            .next_message(Duration::from_millis(200))
            .await
            .is_none(),
        "stream complete"
    );
    // Another user cannot resume it (item 111).
    let mut other = broker.user("t2", 2, "client-a", "grant-2");
    other.session = client.session.clone();
    assert_eq!(other.open_get(Some(&last_id)).await.0, 404);
    broker.stop().await;
}

#[tokio::test]
async fn sse_responses_disable_proxy_buffering_and_send_keepalives() {
    let broker = Broker::start(test_config(test_child_profile(&[]))).await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    let response = client
        .http
        .get(format!("{}/mcp", broker.url))
        .bearer_auth("t1")
        .header("accept", "text/event-stream")
        .header("mcp-session-id", client.session.as_deref().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    let mut body = response;
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(chunk) = body.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen
                .lines()
                .any(|line| line.starts_with(':') && line.contains("keep-alive"))
            {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "{seen}");
    broker.stop().await;
}

#[tokio::test]
async fn batches_only_for_sessions_at_2025_03_26() {
    let broker = Broker::start(test_config(test_child_profile(&[]))).await;
    let mut modern = broker.user("t1", 1, "client-a", "grant-1");
    modern.initialize().await;
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "a"}}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "b"}}}
    ]);
    let refused = modern.post(&batch).await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.messages[0]["error"]["code"], codes::INVALID_REQUEST);

    let mut old = broker.user("t2", 2, "client-a", "grant-2");
    old.accept = "application/json";
    old.initialize_with(json!({}), "2025-03-26").await;
    let reply = old.post(&batch).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let mut texts: Vec<String> = reply
        .messages
        .iter()
        .map(|m| {
            m["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    texts.sort();
    assert_eq!(texts, ["a", "b"]);

    // A batch of one is still a batch: refused where batches are, answered with an array
    // where they are allowed.
    let one = json!([
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "c"}}}
    ]);
    let refused = modern.post(&one).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    let reply = old.post(&one).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(answer[0]["result"]["content"][0]["text"], "c", "{answer}");
    let fresh = broker.user("t3", 3, "client-a", "grant-3");
    let init = fresh
        .post(&json!([{"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-03-26", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "1"}}}]))
        .await;
    assert_eq!(init.status, 400, "{}", init.body);
    assert!(
        init.body.contains("initialize must not be in a batch"),
        "{}",
        init.body
    );
    assert!(init.headers.get("mcp-session-id").is_none());
    broker.stop().await;
}

#[tokio::test]
async fn an_oversized_body_gets_413_with_a_clear_error() {
    let mut config = test_config(test_child_profile(&[]));
    config.max_body_bytes = 16 * 1024;
    let broker = Broker::start(config).await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    let reply = client
        .post(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"message": "x".repeat(20 * 1024)}}}))
        .await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.messages[0]["error"]["code"], codes::LIMIT_REACHED);
    assert!(reply.body.contains("16384-byte limit"), "{}", reply.body);
    // Malformed JSON is a parse error, not a 500.
    let garbage = client
        .http
        .post(format!("{}/mcp", broker.url))
        .bearer_auth("t1")
        .header("mcp-session-id", client.session.as_deref().unwrap())
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);
    broker.stop().await;
}

#[tokio::test]
async fn legacy_http_sse_transport_works_end_to_end() {
    let broker = Broker::start(test_config(test_child_profile(&[]))).await;
    broker.verifier.issue("t1", 1, "client-a", "grant-1");
    let http = reqwest::Client::new();
    let response = http
        .get(format!("{}/sse", broker.url))
        .bearer_auth("t1")
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = SseStream::new(response);
    let endpoint = stream.next_event(WAIT).await.unwrap();
    assert_eq!(endpoint.event.as_deref(), Some("endpoint"));
    assert!(endpoint.data.starts_with("/messages?sessionId="));
    let post = |body: Value| {
        http.post(format!("{}{}", broker.url, endpoint.data))
            .bearer_auth("t1")
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let accepted = post(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "old", "version": "1"}}}))
    .await
    .unwrap();
    assert_eq!(accepted.status(), 202);
    let init = stream.next_event(WAIT).await.unwrap();
    assert_eq!(init.event.as_deref(), Some("message"));
    assert_eq!(init.json()["result"]["protocolVersion"], "2024-11-05");
    assert_eq!(
        post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await
            .unwrap()
            .status(),
        202
    );
    post(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "legacy"}}}))
    .await
    .unwrap();
    let answer = stream.next_event(WAIT).await.unwrap().json();
    assert_eq!(answer["id"], 2);
    assert_eq!(answer["result"]["content"][0]["text"], "legacy");
    // Another user cannot post to it.
    broker.verifier.issue("t2", 2, "client-a", "grant-2");
    let foreign = http
        .post(format!("{}{}", broker.url, endpoint.data))
        .bearer_auth("t2")
        .body(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 404);
    // Closing the SSE connection ends the session and its child.
    drop(stream);
    assert!(eventually(WAIT, || async { broker.handle.running_children() == 0 }).await);
    broker.stop().await;
}

#[tokio::test]
async fn legacy_requests_in_flight_are_limited_too() {
    let mut config = test_config(test_child_profile(&[]));
    config.max_in_flight_per_session = 1;
    let broker = Broker::start(config).await;
    broker.verifier.issue("t1", 1, "client-a", "grant-1");
    let http = reqwest::Client::new();
    let response = http
        .get(format!("{}/sse", broker.url))
        .bearer_auth("t1")
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut stream = SseStream::new(response);
    let endpoint = stream.next_event(WAIT).await.unwrap();
    let post = |body: Value| {
        http.post(format!("{}{}", broker.url, endpoint.data))
            .bearer_auth("t1")
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    post(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2024-11-05", "capabilities": {"sampling": {}},
                   "clientInfo": {"name": "old", "version": "1"}}}))
    .await
    .unwrap();
    stream.next_event(WAIT).await.unwrap();
    post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await
        .unwrap();
    // A request the child holds open until the client answers its sampling request.
    let held = post(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "sample"}}))
    .await
    .unwrap();
    assert_eq!(held.status(), 202);
    let sampling = stream.next_event(WAIT).await.unwrap().json();
    assert_eq!(sampling["method"], "sampling/createMessage", "{sampling}");
    let refused = post(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "pid"}}))
    .await
    .unwrap();
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], codes::LIMIT_REACHED, "{body}");
    // Once the held request is answered, the next one goes through.
    post(
        json!({"jsonrpc": "2.0", "id": sampling["id"], "result": {"role": "assistant",
        "content": {"type": "text", "text": "ok"}, "model": "m"}}),
    )
    .await
    .unwrap();
    let answer = stream.next_event(WAIT).await.unwrap().json();
    assert_eq!(answer["id"], 2, "{answer}");
    let accepted = post(json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
        "params": {"name": "pid"}}))
    .await
    .unwrap();
    assert_eq!(accepted.status(), 202);
    assert_eq!(stream.next_event(WAIT).await.unwrap().json()["id"], 4);
    broker.stop().await;
}

#[tokio::test]
async fn a_client_cancellation_maps_to_the_childs_id() {
    let broker = Broker::start(test_config(test_child_profile(&[]))).await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    let seen: i64 = client
        .tool_text("seen-id", json!({}))
        .await
        .parse()
        .unwrap();
    // With SSE the head arrives once the request is in flight at the child.
    let (status, mut stream) = client
        .post_stream(
            &json!({"jsonrpc": "2.0", "id": "mine-1", "method": "tools/call",
            "params": {"name": "slow", "arguments": {"ms": 3000}}}),
        )
        .await;
    assert_eq!(status, 200);
    let cancel = client
        .post(
            &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": "mine-1", "reason": "user gave up"}}),
        )
        .await;
    assert_eq!(cancel.status, 202);
    let (_, answer) = stream.next_message(WAIT).await.unwrap();
    assert_eq!(answer["id"], "mine-1");
    assert_eq!(answer["error"]["code"], codes::CANCELLED);
    let state: Value = serde_json::from_str(&client.tool_text("state", json!({})).await).unwrap();
    assert_eq!(
        state["cancelled"],
        json!([seen + 1]),
        "the child got its own id: {state}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_repeated_initialize_on_a_live_session_is_answered_from_the_session() {
    let broker = Broker::start(test_config(test_child_profile(&[]))).await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    let first = client.initialize().await;
    let pid = client.pid().await;
    let again = client
        .post(&json!({"jsonrpc": "2.0", "id": 99, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.messages[0]["id"], 99);
    assert_eq!(again.messages[0]["result"], first["result"]);
    assert_eq!(client.pid().await, pid, "no second child");
    broker.stop().await;
}

#[tokio::test]
async fn a_pretty_printed_request_reaches_the_child_as_one_message() {
    let broker = Broker::start(test_config(test_child_profile(&[]))).await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    let pid = client.pid().await;
    // Line breaks (LF and CRLF) between tokens, and params that hold, on a line of their own,
    // what a line-reading child would take for a message of its own: one the broker never
    // mapped, with an id of the client's choosing.
    let body = "{\r\n  \"jsonrpc\": \"2.0\",\r\n  \"id\": 5,\n  \"method\": \"tools/call\",\n  \"params\": {\"name\": \"echo\", \"arguments\": {\"message\": \"one\u{2028}line\"}, \"extra\":\n{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \"tools/call\", \"params\": {\"name\": \"crash\"}}\n}\n}\n";
    let reply = tokio::time::timeout(Duration::from_secs(20), client.post_text(body.to_owned()))
        .await
        .expect("the child never got the request whole");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.messages.len(), 1, "{}", reply.body);
    assert_eq!(reply.messages[0]["id"], 5);
    assert_eq!(
        reply.messages[0]["result"]["content"][0]["text"],
        "one\u{2028}line"
    );
    // The smuggled crash never ran: the same child is still there.
    assert_eq!(client.pid().await, pid);
    broker.stop().await;
}

#[tokio::test]
async fn requests_to_the_client_left_unanswered_are_bounded_and_ids_never_repeat() {
    let broker = Broker::start(test_config(test_child_profile(&[]))).await;
    let mut client = broker.user("t1", 1, "client-a", "grant-1");
    client.initialize().await;
    let (_, mut get) = client.open_get(None).await;
    let mut ids = Vec::new();
    // In two bursts, each within what a live stream buffers for a slow reader.
    for from in [1, 151] {
        let sent = client
            .tool_text("ping-client", json!({"count": 150, "from": from}))
            .await;
        assert_eq!(sent, "sent 150 pings");
        while ids.len() < from + 149 {
            let (_, ping) = get.next_message(WAIT).await.expect("a ping");
            assert_eq!(ping["method"], "ping", "{ping}");
            ids.push(ping["id"].as_str().unwrap().to_owned());
        }
    }
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 300);
    // The 44 oldest were forgotten (at most 256 wait): their answers reach nobody.
    for id in [&ids[0], &ids[43], &ids[44], &ids[299]] {
        let reply = client
            .post(&json!({"jsonrpc": "2.0", "id": id, "result": {}}))
            .await;
        assert_eq!(reply.status, 202);
    }
    let state: Value = serde_json::from_str(&client.tool_text("state", json!({})).await).unwrap();
    assert_eq!(state["answered"], json!(["ping-45", "ping-300"]), "{state}");

    // After a restart the same session's requests get ids that none from before can match.
    let session = client.session.clone();
    let broker = broker.restart().await;
    let mut client = broker.client("t1");
    client.session = session;
    let (_, mut get) = client.open_get(None).await;
    client.tool_text("ping-client", json!({"count": 1})).await;
    let (_, ping) = get.next_message(WAIT).await.expect("a ping");
    let id = ping["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("srv-") && !ids.contains(&id), "{id}");
    let stale = client
        .post(&json!({"jsonrpc": "2.0", "id": ids[299], "result": {}}))
        .await;
    assert_eq!(stale.status, 202);
    let state: Value = serde_json::from_str(&client.tool_text("state", json!({})).await).unwrap();
    assert_eq!(state["answered"], json!([]), "{state}");
    broker.stop().await;
}
