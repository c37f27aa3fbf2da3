//! A test-only forwarder that adds `Authorization: Bearer <token>` to every request and passes
//! everything else through, streaming both ways (SSE included). The conformance suite's server
//! mode sends no token; this stands where a real client's OAuth layer would.
//!
//! `Host` and `Origin`: the forwarder's own `host:port` (and `http://host:port`) is rewritten
//! to the broker's, so the broker sees the address it serves; any other value (the suite's
//! DNS-rebinding probe sends a foreign one in both) passes through unchanged, so the broker
//! itself must refuse it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use futures_util::TryStreamExt as _;

struct Forward {
    broker: SocketAddr,
    own_authority: String,
    token: String,
    client: reqwest::Client,
}

pub struct Forwarder {
    pub url: String,
    cancel: tokio_util::sync::CancellationToken,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
    "te",
];

pub async fn start(broker: SocketAddr, token: String) -> Forwarder {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let own = listener.local_addr().unwrap();
    let state = Arc::new(Forward {
        broker,
        own_authority: own.to_string(),
        token,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    });
    let router = axum::Router::new().fallback(forward).with_state(state);
    let cancel = tokio_util::sync::CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .unwrap();
    });
    Forwarder {
        url: format!("http://{own}"),
        cancel,
    }
}

async fn forward(State(state): State<Arc<Forward>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let url = format!("http://{}{}", state.broker, path);
    let body = axum::body::to_bytes(body, 16 * 1024 * 1024).await.unwrap();
    let mut outgoing = state.client.request(parts.method.clone(), url).body(body);
    for (name, value) in &parts.headers {
        if HOP_BY_HOP.contains(&name.as_str()) || name == "content-length" {
            continue;
        }
        if name == "host" || name == "origin" {
            let text = value.to_str().unwrap_or_default();
            let own_origin = format!("http://{}", state.own_authority);
            let rewritten = if text == state.own_authority {
                state.broker.to_string()
            } else if text == own_origin {
                format!("http://{}", state.broker)
            } else {
                text.to_owned()
            };
            outgoing = outgoing.header(name, rewritten);
            continue;
        }
        outgoing = outgoing.header(name, value);
    }
    if !parts.headers.contains_key("authorization") {
        outgoing = outgoing.bearer_auth(&state.token);
    }
    let upstream = match outgoing.send().await {
        Ok(upstream) => upstream,
        Err(error) => {
            return Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .body(Body::from(error.to_string()))
                .unwrap();
        }
    };
    let mut response = Response::builder().status(upstream.status().as_u16());
    for (name, value) in upstream.headers() {
        if HOP_BY_HOP.contains(&name.as_str()) || name == "content-length" {
            continue;
        }
        response = response.header(
            HeaderName::from_bytes(name.as_str().as_bytes()).unwrap(),
            HeaderValue::from_bytes(value.as_bytes()).unwrap(),
        );
    }
    let stream = upstream.bytes_stream().map_err(std::io::Error::other);
    response.body(Body::from_stream(stream)).unwrap()
}
