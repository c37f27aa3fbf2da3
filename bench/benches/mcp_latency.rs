//! Added latency of `tools/call` through the broker (issue #3 "Measure"), against the same
//! child driven directly over stdio in the same run: one session sequentially, then 32
//! sessions concurrently. Run with `cargo bench -p bench --bench mcp_latency`.
//!
//! The broker figure includes the HTTP client (reqwest, HTTP/1.1 keep-alive) on the same two
//! cores, which is what a client on this machine would see.
// A benchmark is a test-like program: a failed setup step should stop it loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bench::quantile;
use forgejo_mcp_broker::audit::MemoryAudit;
use forgejo_mcp_broker::auth::{
    AccessTokenVerifier, Principal, TokenRejection, UpstreamCredentials, UpstreamCredentialsError,
    UserId,
};
use forgejo_mcp_broker::clock::SystemClock;
use forgejo_mcp_broker::config::ServerConfig;
use forgejo_mcp_broker::mcp::{self, ChildProfileConfig, McpConfig, McpDeps};
use forgejo_mcp_broker::secret::SecretString;
use forgejo_mcp_broker::store::Db;
use forgejo_mcp_broker::supervisor::TokenDelivery;
use forgejo_mcp_broker::supervisor::plain::PlainLauncher;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

const CHILD: &str = env!("CARGO_BIN_EXE_bench-echo-child");
const WARMUP: usize = 300;
const CALLS_ONE: usize = 3_000;
const SESSIONS: usize = 32;
const CALLS_EACH: usize = 300;

/// Bench-only verifier: `bench-<n>` is user n.
struct BenchVerifier;

#[async_trait]
impl AccessTokenVerifier for BenchVerifier {
    async fn verify(&self, token: &str, _resource: &str) -> Result<Principal, TokenRejection> {
        let user_id: UserId = token
            .strip_prefix("bench-")
            .and_then(|n| n.parse().ok())
            .ok_or(TokenRejection::Unknown)?;
        Ok(Principal {
            user_id,
            username: format!("u{user_id}"),
            client_id: "bench".to_owned(),
            grant_id: format!("g{user_id}"),
            expires_at: i64::MAX,
        })
    }
}

struct NoUpstream;

#[async_trait]
impl UpstreamCredentials for NoUpstream {
    async fn access_token(&self, _: UserId) -> Result<SecretString, UpstreamCredentialsError> {
        Err(UpstreamCredentialsError::NoGrant)
    }
}

fn call_line(id: usize) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "hello from the benchmark"}}})
    .to_string()
}

// ---- direct stdio ---------------------------------------------------------------------------

struct Direct {
    _child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Direct {
    async fn start() -> Self {
        let mut child = tokio::process::Command::new(CHILD)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the bench child");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut direct = Self {
            _child: child,
            stdin,
            stdout,
        };
        direct
            .round_trip(&json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "b", "version": "1"}}})
            .to_string())
            .await;
        direct
    }

    async fn round_trip(&mut self, line: &str) -> String {
        self.stdin.write_all(line.as_bytes()).await.expect("write");
        self.stdin.write_all(b"\n").await.expect("write");
        self.stdin.flush().await.expect("flush");
        self.stdout.next_line().await.expect("read").expect("line")
    }

    async fn calls(&mut self, n: usize) -> Vec<Duration> {
        let mut samples = Vec::with_capacity(n);
        for id in 0..n {
            let line = call_line(id + 1);
            let start = Instant::now();
            let answer = self.round_trip(&line).await;
            samples.push(start.elapsed());
            assert!(answer.contains("hello from the benchmark"));
        }
        samples
    }
}

// ---- through the broker ---------------------------------------------------------------------

struct Session {
    http: reqwest::Client,
    url: String,
    token: String,
    session: String,
    accept: &'static str,
}

impl Session {
    async fn start(url: &str, user: usize, accept: &'static str) -> Self {
        let http = reqwest::Client::new();
        let token = format!("bench-{user}");
        let response = http
            .post(format!("{url}/mcp"))
            .bearer_auth(&token)
            .header("accept", "application/json")
            .body(
                json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "b", "version": "1"}}})
                .to_string(),
            )
            .send()
            .await
            .expect("initialize");
        let session = response.headers()["mcp-session-id"]
            .to_str()
            .expect("id")
            .to_owned();
        let session = Self {
            http,
            url: url.to_owned(),
            token,
            session,
            accept,
        };
        session
            .post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string())
            .await;
        session
    }

    async fn post(&self, body: String) -> String {
        self.http
            .post(format!("{}/mcp", self.url))
            .bearer_auth(&self.token)
            .header("mcp-session-id", &self.session)
            .header("accept", self.accept)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("post")
            .text()
            .await
            .expect("body")
    }

    async fn calls(&self, n: usize) -> Vec<Duration> {
        let mut samples = Vec::with_capacity(n);
        for id in 0..n {
            let line = call_line(id + 1);
            let start = Instant::now();
            let answer = self.post(line).await;
            samples.push(start.elapsed());
            assert!(answer.contains("hello from the benchmark"), "{answer}");
        }
        samples
    }
}

async fn start_broker(data_dir: &std::path::Path) -> (String, mcp::McpHandle) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr");
    let url = format!("http://{address}");
    let server = ServerConfig {
        public_url: url.parse().expect("url"),
        listen: address,
        data_dir: data_dir.to_path_buf(),
        trusted_proxies: Vec::new(),
        allowed_origins: Vec::new(),
    };
    let config = McpConfig {
        child: ChildProfileConfig {
            program: CHILD.into(),
            args: Vec::new(),
            env_allowlist: Vec::new(),
            env: Default::default(),
            token_variable: "FORGEJO_ACCESS_TOKEN".to_owned(),
            delivery: TokenDelivery::None,
            working_dir: None,
        },
        max_sessions_per_user: 4,
        ..McpConfig::default()
    };
    let (router, handle) = mcp::router(
        &server,
        &config,
        "http://127.0.0.1:9",
        McpDeps {
            db: Db::open(&server.database_path()).expect("db"),
            clock: Arc::new(SystemClock),
            audit: MemoryAudit::new(),
            verifier: Arc::new(BenchVerifier),
            upstream: Arc::new(NoUpstream),
            launcher: Arc::new(PlainLauncher),
            access_ended: None,
            rate_limiter: None,
        },
    )
    .expect("router");
    tokio::spawn(async move {
        // Small SSE writes must not wait for delayed ACKs (Nagle).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let _ = axum::serve(listener, router).await;
    });
    (url, handle)
}

/// The HTTP floor: the same client and server stack answering at once, no MCP, no child. The
/// broker's own share is what remains above this and the direct child.
async fn start_http_floor() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let router = axum::Router::new().route(
        "/mcp",
        axum::routing::post(|body: String| async move {
            ([("content-type", "application/json")], body)
        }),
    );
    tokio::spawn(async move {
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let _ = axum::serve(listener, router).await;
    });
    url
}

fn floor_session(url: &str) -> Session {
    Session {
        http: reqwest::Client::new(),
        url: url.to_owned(),
        token: "none".to_owned(),
        session: "none".to_owned(),
        accept: "application/json",
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn summary(label: &str, mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let p50 = quantile(&samples, 0.50);
    let p99 = quantile(&samples, 0.99);
    println!(
        "{label:<44} p50 {:>8.1} µs   p99 {:>8.1} µs   (n={})",
        micros(p50),
        micros(p99),
        samples.len()
    );
    (p50, p99)
}

async fn run() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let (url, handle) = start_broker(data_dir.path()).await;
    let floor_url = start_http_floor().await;

    println!("== 1 session, sequential tools/call (echo)");
    let mut direct = Direct::start().await;
    direct.calls(WARMUP).await;
    let via_json = Session::start(&url, 1, "application/json").await;
    via_json.calls(WARMUP).await;
    let via_sse = Session::start(&url, 2, "application/json, text/event-stream").await;
    via_sse.calls(WARMUP).await;
    let floor = floor_session(&floor_url);
    floor.calls(WARMUP).await;
    // Interleave in rounds so drift in machine load hits all equally.
    let (mut d, mut j, mut s, mut f) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..10 {
        f.extend(floor.calls(CALLS_ONE / 10).await);
        d.extend(direct.calls(CALLS_ONE / 10).await);
        j.extend(via_json.calls(CALLS_ONE / 10).await);
        s.extend(via_sse.calls(CALLS_ONE / 10).await);
    }
    let (d50, d99) = summary("direct stdio", d);
    let (j50, j99) = summary("broker, JSON response", j);
    let (s50, s99) = summary("broker, SSE response", s);
    let (f50, _) = summary("HTTP floor (echo handler, no MCP, no child)", f);
    println!(
        "broker's own share above HTTP floor + direct child (JSON): p50 {:.1} µs",
        micros(j50) - micros(f50) - micros(d50)
    );
    println!(
        "added by the broker (JSON): p50 {:.1} µs, p99 {:.1} µs; (SSE): p50 {:.1} µs, p99 {:.1} µs",
        micros(j50) - micros(d50),
        micros(j99) - micros(d99),
        micros(s50) - micros(d50),
        micros(s99) - micros(d99),
    );

    println!("== {SESSIONS} sessions, concurrent, {CALLS_EACH} calls each");
    let mut children = Vec::new();
    for _ in 0..SESSIONS {
        let mut direct = Direct::start().await;
        direct.calls(20).await;
        children.push(direct);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut direct in children {
        tasks.push(tokio::spawn(async move { direct.calls(CALLS_EACH).await }));
    }
    let mut direct_all = Vec::new();
    for task in tasks {
        direct_all.extend(task.await.expect("direct task"));
    }
    let direct_elapsed = start.elapsed();

    let mut sessions = Vec::new();
    for user in 0..SESSIONS {
        let session = Session::start(&url, 100 + user, "application/json").await;
        session.calls(20).await;
        sessions.push(session);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for session in sessions {
        tasks.push(tokio::spawn(async move { session.calls(CALLS_EACH).await }));
    }
    let mut broker_all = Vec::new();
    for task in tasks {
        broker_all.extend(task.await.expect("broker task"));
    }
    let broker_elapsed = start.elapsed();
    let mut floors = Vec::new();
    for _ in 0..SESSIONS {
        let session = floor_session(&floor_url);
        session.calls(20).await;
        floors.push(session);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for session in floors {
        tasks.push(tokio::spawn(async move { session.calls(CALLS_EACH).await }));
    }
    let mut floor_all = Vec::new();
    for task in tasks {
        floor_all.extend(task.await.expect("floor task"));
    }
    let floor_elapsed = start.elapsed();
    let total = (SESSIONS * CALLS_EACH) as f64;
    let floor_rate = total / floor_elapsed.as_secs_f64();
    summary("HTTP floor, 32 concurrent", floor_all);
    let direct_rate = total / direct_elapsed.as_secs_f64();
    let broker_rate = total / broker_elapsed.as_secs_f64();
    summary("direct stdio, 32 concurrent", direct_all);
    summary("broker (JSON), 32 concurrent", broker_all);
    println!(
        "throughput: direct {direct_rate:.0} calls/s, broker {broker_rate:.0} calls/s, ratio {:.1}%",
        100.0 * broker_rate / direct_rate
    );
    println!(
        "HTTP floor {floor_rate:.0} calls/s; broker vs floor {:.1}%",
        100.0 * broker_rate / floor_rate
    );
    let _ = handle.shutdown(Duration::from_secs(10)).await;
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}
