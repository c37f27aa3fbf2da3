//! Fixtures for the MCP edge tests: a broker serving only the MCP router on 127.0.0.1, a
//! test-only token verifier and credential source, a small MCP client over real HTTP, and the
//! children (the project's own fault-injection child, and server-everything from npm).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use forgejo_mcp_broker::audit::MemoryAudit;
use forgejo_mcp_broker::auth::{
    AccessTokenVerifier, Principal, TokenRejection, UpstreamCredentials, UpstreamCredentialsError,
    UserId,
};
use forgejo_mcp_broker::clock::ManualClock;
use forgejo_mcp_broker::config::ServerConfig;
use forgejo_mcp_broker::mcp::{self, ChildProfileConfig, McpConfig, McpDeps, McpHandle};
use forgejo_mcp_broker::secret::SecretString;
use forgejo_mcp_broker::store::Db;
use forgejo_mcp_broker::supervisor::TokenDelivery;
use forgejo_mcp_broker::supervisor::plain::PlainLauncher;
use futures_util::StreamExt as _;
use serde_json::{Value, json};

/// TEST FIXTURE ONLY: maps bearer tokens to principals. Stands in for the OAuth branch's real
/// verifier until the lead switches these tests to the real flow.
#[derive(Default)]
pub struct TestOnlyVerifier {
    tokens: Mutex<HashMap<String, Principal>>,
    resource: Mutex<String>,
}

impl TestOnlyVerifier {
    pub fn issue(&self, token: &str, user_id: UserId, client_id: &str, grant_id: &str) {
        self.tokens.lock().unwrap().insert(
            token.to_owned(),
            Principal {
                user_id,
                username: format!("user{user_id}").into(),
                client_id: client_id.into(),
                grant_id: grant_id.into(),
                expires_at: i64::MAX,
            },
        );
    }

    pub fn revoke(&self, token: &str) {
        self.tokens.lock().unwrap().remove(token);
    }
}

#[async_trait]
impl AccessTokenVerifier for TestOnlyVerifier {
    async fn verify(&self, token: &str, resource: &str) -> Result<Principal, TokenRejection> {
        if *self.resource.lock().unwrap() != resource {
            return Err(TokenRejection::WrongAudience);
        }
        self.tokens
            .lock()
            .unwrap()
            .get(token)
            .cloned()
            .ok_or(TokenRejection::Unknown)
    }
}

/// TEST FIXTURE ONLY: a Forgejo token per user, or a dead grant.
#[derive(Default)]
pub struct TestOnlyUpstream {
    pub dead: Mutex<HashSet<UserId>>,
}

#[async_trait]
impl UpstreamCredentials for TestOnlyUpstream {
    async fn access_token(
        &self,
        user_id: UserId,
    ) -> Result<SecretString, UpstreamCredentialsError> {
        if self.dead.lock().unwrap().contains(&user_id) {
            return Err(UpstreamCredentialsError::GrantDead);
        }
        Ok(SecretString::from(format!("forgejo-token-of-{user_id}")))
    }
}

pub fn test_child_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mcp-test-child"))
}

/// server-everything from tests/peers (npm ci). Fails under CI=true when missing; otherwise
/// the caller skips with a printed reason.
pub fn everything_path() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{} is missing: run tests/peers/install.sh (CI must install the pinned peers)",
            path.display()
        );
    }
    eprintln!(
        "SKIP: server-everything not installed ({}); run tests/peers/install.sh",
        path.display()
    );
    None
}

pub fn test_child_profile(args: &[&str]) -> ChildProfileConfig {
    ChildProfileConfig {
        program: test_child_path(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env_allowlist: vec!["PATH".to_owned()],
        env: [("CHILD_MARKER".to_owned(), "fixed".to_owned())].into(),
        token_variable: "FORGEJO_ACCESS_TOKEN".to_owned(),
        delivery: TokenDelivery::Env,
        working_dir: None,
    }
}

pub fn everything_profile(path: &Path) -> ChildProfileConfig {
    ChildProfileConfig {
        program: PathBuf::from("node"),
        args: vec![path.display().to_string(), "stdio".to_owned()],
        env_allowlist: vec!["PATH".to_owned(), "HOME".to_owned()],
        env: Default::default(),
        token_variable: "FORGEJO_ACCESS_TOKEN".to_owned(),
        delivery: TokenDelivery::None,
        working_dir: None,
    }
}

/// Small timeouts so fault tests finish quickly; time-driven behaviour (idle, TTL) uses the
/// manual clock.
pub fn test_config(child: ChildProfileConfig) -> McpConfig {
    McpConfig {
        housekeeping_interval_ms: 25,
        stop_grace_ms: 500,
        keepalive_secs: 1,
        child,
        ..McpConfig::default()
    }
}

pub struct Broker {
    pub url: String,
    pub handle: McpHandle,
    pub clock: Arc<ManualClock>,
    pub audit: Arc<MemoryAudit>,
    pub verifier: Arc<TestOnlyVerifier>,
    pub upstream: Arc<TestOnlyUpstream>,
    pub data_dir: Arc<tempfile::TempDir>,
    /// What the OAuth half publishes on revocation (the edge listens).
    pub access_ended: forgejo_mcp_broker::auth::AccessEndedSender,
    config: McpConfig,
    server: tokio::task::JoinHandle<()>,
}

pub const START: i64 = 1_800_000_000;

impl Broker {
    pub async fn start(config: McpConfig) -> Self {
        let data_dir = Arc::new(tempfile::tempdir().unwrap());
        Self::start_with(
            config,
            data_dir,
            ManualClock::new(START),
            Default::default(),
        )
        .await
    }

    async fn start_with(
        config: McpConfig,
        data_dir: Arc<tempfile::TempDir>,
        clock: Arc<ManualClock>,
        verifier: Arc<TestOnlyVerifier>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}");
        let server_config = ServerConfig {
            public_url: url.parse().unwrap(),
            listen: listener.local_addr().unwrap(),
            data_dir: data_dir.path().to_path_buf(),
            trusted_proxies: Vec::new(),
            allowed_origins: vec!["https://inspector.example".to_owned()],
        };
        *verifier.resource.lock().unwrap() = server_config.mcp_resource();
        let audit = MemoryAudit::new();
        let upstream = Arc::new(TestOnlyUpstream::default());
        let db = Db::open(&server_config.database_path()).unwrap();
        let access_ended = forgejo_mcp_broker::auth::access_ended_channel();
        let (router, handle) = mcp::router(
            &server_config,
            &config,
            "http://127.0.0.1:9",
            McpDeps {
                db,
                clock: clock.clone(),
                audit: audit.clone(),
                verifier: verifier.clone(),
                upstream: upstream.clone(),
                launcher: Arc::new(PlainLauncher),
                access_ended: Some(access_ended.subscribe()),
                rate_limiter: None,
            },
        )
        .unwrap();
        let server = tokio::spawn(async move {
            // Small SSE writes must not wait for delayed ACKs (Nagle).
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let _ = axum::serve(listener, router).await;
        });
        Self {
            url,
            handle,
            clock,
            audit,
            verifier,
            upstream,
            data_dir,
            access_ended,
            config,
            server,
        }
    }

    /// Stops the broker (children stopped, records kept) and starts a new one on the same
    /// database, with the same tokens — a broker restart.
    pub async fn restart(self) -> Self {
        assert!(self.handle.shutdown(Duration::from_secs(10)).await);
        self.server.abort();
        let _ = self.server.await;
        Self::start_with(self.config, self.data_dir, self.clock, self.verifier).await
    }

    pub fn client(&self, token: &str) -> Client {
        Client::new(&self.url, token)
    }

    /// Issues a token and returns a client using it.
    pub fn user(&self, token: &str, user_id: UserId, client_id: &str, grant_id: &str) -> Client {
        self.verifier.issue(token, user_id, client_id, grant_id);
        self.client(token)
    }

    pub async fn stop(self) {
        assert!(self.handle.shutdown(Duration::from_secs(10)).await);
        self.server.abort();
    }
}

#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// An SSE body read incrementally.
pub struct SseStream {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl SseStream {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next event (comments skipped), or None at the end of the body or after `wait`.
    pub async fn next_event(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: None,
                    data: String::new(),
                };
                let mut has_field = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim_start().to_owned());
                        has_field = true;
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event.event = Some(v.trim_start().to_owned());
                        has_field = true;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !event.data.is_empty() {
                            event.data.push('\n');
                        }
                        event.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        has_field = true;
                    }
                }
                if has_field {
                    return Some(event);
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk.ok()?));
        }
    }

    /// The next event carrying a JSON-RPC message (priming events skipped).
    pub async fn next_message(&mut self, wait: Duration) -> Option<(Option<String>, Value)> {
        loop {
            let event = self.next_event(wait).await?;
            if !event.data.is_empty() {
                return Some((event.id.clone(), event.json()));
            }
        }
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub messages: Vec<Value>,
    pub body: String,
}

pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
    pub session: Option<String>,
    pub accept: &'static str,
    next_id: AtomicI64,
}

pub const BOTH: &str = "application/json, text/event-stream";

impl Client {
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.to_owned(),
            token: token.to_owned(),
            session: None,
            accept: BOTH,
            next_id: AtomicI64::new(1),
        }
    }

    pub fn next_id(&self) -> i64 {
        self.next_id.fetch_add(1, Ordering::SeqCst)
    }

    pub fn post_builder(&self, body: &Value) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .post(format!("{}/mcp", self.base))
            .bearer_auth(&self.token)
            .header("accept", self.accept)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(session) = &self.session {
            request = request.header("mcp-session-id", session);
        }
        request
    }

    /// POSTs and reads the whole answer (JSON or a complete SSE stream).
    pub fn post(&self, body: &Value) -> impl std::future::Future<Output = Reply> + 'static {
        let request = self.post_builder(body);
        async move { read_reply(request.send().await.unwrap()).await }
    }

    /// POSTs `body` exactly as written (say, pretty-printed) and reads the whole answer.
    pub async fn post_text(&self, body: String) -> Reply {
        let request = self.post_builder(&Value::Null).body(body);
        read_reply(request.send().await.unwrap()).await
    }

    pub async fn post_stream(&self, body: &Value) -> (u16, SseStream) {
        let response = self.post_builder(body).send().await.unwrap();
        (response.status().as_u16(), SseStream::new(response))
    }

    pub async fn initialize_with(&mut self, capabilities: Value, version: &str) -> Value {
        let reply = self
            .post(&json!({
                "jsonrpc": "2.0", "id": self.next_id(), "method": "initialize",
                "params": {"protocolVersion": version, "capabilities": capabilities,
                           "clientInfo": {"name": "broker-tests", "version": "1"}}
            }))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let session = reply
            .headers
            .get("mcp-session-id")
            .unwrap_or_else(|| panic!("no session id: {}", reply.body))
            .to_str()
            .unwrap()
            .to_owned();
        self.session = Some(session);
        let initialized = self
            .post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        assert_eq!(initialized.status, 202);
        reply.messages.into_iter().next().unwrap()
    }

    pub async fn initialize(&mut self) -> Value {
        self.initialize_with(json!({"sampling": {}, "elicitation": {}}), "2025-11-25")
            .await
    }

    pub async fn request(&self, method: &str, params: Value) -> Value {
        let reply = self
            .post(&json!({"jsonrpc": "2.0", "id": self.next_id(), "method": method, "params": params}))
            .await;
        assert_eq!(reply.status, 200, "{method}: {}", reply.body);
        reply
            .messages
            .into_iter()
            .find(|m| m.get("result").is_some() || m.get("error").is_some())
            .unwrap_or_else(|| panic!("no response to {method}: {}", reply.body))
    }

    pub async fn call_tool(&self, name: &str, arguments: Value) -> Value {
        self.request("tools/call", json!({"name": name, "arguments": arguments}))
            .await
    }

    /// The text of the first content item of a tool result.
    pub async fn tool_text(&self, name: &str, arguments: Value) -> String {
        let response = self.call_tool(name, arguments).await;
        response["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: {response}"))
            .to_owned()
    }

    pub async fn pid(&self) -> u32 {
        self.tool_text("pid", json!({})).await.parse().unwrap()
    }

    pub async fn open_get(&self, last_event_id: Option<&str>) -> (u16, SseStream) {
        let mut request = self
            .http
            .get(format!("{}/mcp", self.base))
            .bearer_auth(&self.token)
            .header("accept", "text/event-stream");
        if let Some(session) = &self.session {
            request = request.header("mcp-session-id", session);
        }
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), SseStream::new(response))
    }

    pub async fn delete(&self) -> u16 {
        let mut request = self
            .http
            .delete(format!("{}/mcp", self.base))
            .bearer_auth(&self.token);
        if let Some(session) = &self.session {
            request = request.header("mcp-session-id", session);
        }
        request.send().await.unwrap().status().as_u16()
    }
}

pub async fn read_reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let is_sse = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if is_sse {
        let mut stream = SseStream::new(response);
        let mut messages = Vec::new();
        while let Some((_, message)) = stream.next_message(Duration::from_secs(30)).await {
            messages.push(message);
        }
        let body = serde_json::to_string(&messages).unwrap();
        return Reply {
            status,
            headers,
            messages,
            body,
        };
    }
    let body = response.text().await.unwrap();
    let messages = match serde_json::from_str::<Value>(&body) {
        Ok(Value::Array(items)) => items,
        Ok(value) => vec![value],
        Err(_) => Vec::new(),
    };
    Reply {
        status,
        headers,
        messages,
        body,
    }
}

/// Polls `check` until it holds or `wait` passes (no sleeps as synchronisation).
pub async fn eventually<F, Fut>(wait: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

pub fn process_alive(pid: u32) -> bool {
    // /proc/<pid> disappears once the process is reaped; a zombie still counts as dead.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}
