//! The generic HTTP caps: slow clients are dropped, oversized bodies and heads are refused.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use forgejo_mcp_broker::ratelimit::HttpLimitsConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::TestServer;

fn limits() -> HttpLimitsConfig {
    HttpLimitsConfig {
        max_body_bytes: 4096,
        max_header_bytes: 8192,
        header_read_timeout_secs: 1,
        body_read_timeout_secs: 1,
    }
}

fn echo() -> Router {
    Router::new().route(
        "/echo",
        post(|body: Bytes| async move { format!("{} bytes", body.len()) }),
    )
}

/// Reads until the server closes the connection; fails the test if it does not within
/// `deadline` (a generous bound, not a timing assertion: the configured timeout is 1 s).
async fn read_until_closed(stream: &mut TcpStream, deadline: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let result = tokio::time::timeout(deadline, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "the server kept a slow client's connection open"
    );
    received
}

#[tokio::test]
async fn slowloris_is_dropped_after_the_header_read_timeout() {
    let server = TestServer::start(echo(), limits()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // A request head that never ends.
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
        .await
        .unwrap();
    let received = read_until_closed(&mut stream, Duration::from_secs(15)).await;
    let text = String::from_utf8_lossy(&received);
    assert!(!text.contains("200 OK"), "{text}");
    // The server is still serving others.
    let healthy = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(healthy.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_body_fails_the_request_and_drops_the_connection() {
    let server = TestServer::start(echo(), limits()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let received = read_until_closed(&mut stream, Duration::from_secs(15)).await;
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 4"),
        "a stalled body must not succeed: {text}"
    );
    assert!(!text.contains("100 bytes"));
    server.stop().await;
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let server = TestServer::start(echo(), limits()).await;
    let client = reqwest::Client::new();
    let fits = client
        .post(server.url("/echo"))
        .body(vec![b'a'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(fits.status(), 200);
    // Declared length too large: refused before the body is read.
    let declared = client
        .post(server.url("/echo"))
        .body(vec![b'a'; 4097])
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), 413);
    // Chunked (no length): refused once the limit is crossed while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..10).map(|_| Ok(vec![b'b'; 1000])).collect();
    let streamed = client
        .post(server.url("/echo"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 413);
    // The metrics layer sits outside the body caps: both refusals are counted on their route.
    let metrics = server.metrics.encode();
    assert!(
        metrics.contains(
            r#"forgejo_mcp_broker_http_requests_total{route="/echo",method="POST",status="413"} 2"#
        ),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn every_response_carries_a_fresh_request_id_or_the_clients_own() {
    let server = TestServer::start(echo(), limits()).await;
    let client = reqwest::Client::new();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..50 {
        let response = client.get(server.url("/healthz")).send().await.unwrap();
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        assert!(seen.insert(id), "a request id repeated");
    }
    let response = client
        .get(server.url("/healthz"))
        .header("x-request-id", "client-chose-this")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "client-chose-this");
    server.stop().await;
}

#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let server = TestServer::start(echo(), limits()).await;
    let big = "a".repeat(10_000);
    let response = reqwest::Client::new()
        .get(server.url("/healthz"))
        .header("x-big", big)
        .send()
        .await;
    assert_eq!(response.unwrap().status(), 431);
    let fine = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(fine.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_by_the_same_timeout() {
    let server = TestServer::start(echo(), limits()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The response comes, then the connection idles without a next request until dropped.
    let received = read_until_closed(&mut stream, Duration::from_secs(15)).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    server.stop().await;
}
