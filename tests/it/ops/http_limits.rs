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
        ..HttpLimitsConfig::default()
    }
}

/// A connection from `source` (any 127.0.0.x is loopback) that sends nothing: it holds its
/// slot until the header read timeout, which these tests set long.
async fn idle_connection(server: &TestServer, source: [u8; 4]) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::from((source, 0)))
        .unwrap();
    socket.connect(server.addr).await.unwrap()
}

/// Sends `GET /healthz` on `stream` and reads the answer until the server closes the
/// connection or `deadline` passes (a bound, not a timing assertion).
async fn health_answer(stream: &mut TcpStream, deadline: Duration) -> Option<String> {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut received = Vec::new();
    tokio::time::timeout(deadline, stream.read_to_end(&mut received))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&received).into_owned())
}

#[tokio::test]
async fn one_address_gets_its_share_of_connections_and_no_more() {
    let server = TestServer::start(
        echo(),
        HttpLimitsConfig {
            header_read_timeout_secs: 60,
            max_connections_per_ip: 3,
            ..limits()
        },
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(idle_connection(&server, [127, 0, 0, 1]).await);
    }
    // A fourth from the same address is closed unanswered.
    let mut fourth = idle_connection(&server, [127, 0, 0, 1]).await;
    let answer = health_answer(&mut fourth, Duration::from_secs(10)).await;
    assert_eq!(answer.as_deref(), Some(""), "closed without an answer");
    // Another address is served.
    let mut other = idle_connection(&server, [127, 0, 0, 2]).await;
    let answer = health_answer(&mut other, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Once one of the three closes, the address may connect again.
    drop(held.pop());
    let mut again = None;
    for _ in 0..200 {
        let mut stream = idle_connection(&server, [127, 0, 0, 1]).await;
        let answer = health_answer(&mut stream, Duration::from_secs(10)).await;
        if answer
            .as_deref()
            .is_some_and(|a| a.starts_with("HTTP/1.1 200"))
        {
            again = answer;
            break;
        }
        // The server has not yet seen the close: try again (bounded).
        tokio::task::yield_now().await;
    }
    assert!(again.is_some(), "the freed slot was never given back");
    server.stop().await;
}

#[tokio::test]
async fn at_the_total_cap_a_new_connection_waits_for_a_free_slot() {
    let server = TestServer::start(
        echo(),
        HttpLimitsConfig {
            header_read_timeout_secs: 60,
            max_connections: 2,
            ..limits()
        },
    )
    .await;
    let first = idle_connection(&server, [127, 0, 0, 1]).await;
    let _second = idle_connection(&server, [127, 0, 0, 2]).await;
    let mut third = idle_connection(&server, [127, 0, 0, 3]).await;
    // Not served while both slots are held (the connection waits in the backlog) …
    assert_eq!(
        health_answer(&mut third, Duration::from_millis(500)).await,
        None,
        "a third connection was served past max_connections = 2"
    );
    // … and served once one closes.
    drop(first);
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), third.read_to_end(&mut received))
        .await
        .expect("the waiting connection is served once a slot frees")
        .unwrap();
    let answer = String::from_utf8_lossy(&received);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.stop().await;
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

/// A body trickled a byte at a time, each pause shorter than `body_read_timeout_secs`, still
/// has to be complete within `body_total_timeout_secs`; otherwise one client holds a
/// connection (and, with enough of them, every connection slot) for as long as it likes.
#[tokio::test]
async fn a_trickled_body_fails_at_its_total_deadline() {
    let server = TestServer::start(
        echo(),
        HttpLimitsConfig {
            body_read_timeout_secs: 2,
            body_total_timeout_secs: 2,
            ..limits()
        },
    )
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        .await
        .unwrap();
    // One byte every 200 ms (well inside the 2 s pause timeout) for up to 30 s, until the
    // server answers or closes.
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    let mut sent = 0;
    let outcome = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            tokio::select! {
                read = stream.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => received.extend_from_slice(&buffer[..n]),
                },
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if sent < 999 && stream.write_all(b"x").await.is_ok() {
                        sent += 1;
                    }
                }
            }
        }
    })
    .await;
    assert!(
        outcome.is_ok(),
        "the trickle was still accepted after 30 s ({sent} bytes)"
    );
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 4"),
        "a trickled body must not succeed: {text}"
    );
    assert!(sent < 999, "the whole body went through ({sent} bytes)");
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
    // An id that would read as several log fields (or is absurdly long) is replaced by ours.
    for forged in ["a b", "x status=200 user=admin", &"x".repeat(65)] {
        let response = client
            .get(server.url("/healthz"))
            .header("x-request-id", forged)
            .send()
            .await
            .unwrap();
        let id = response.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(id, forged);
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
    }
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
