//! A minimal stdio MCP server for the broker's fault-injection tests (issue #3). Not shipped for
//! production use: it exists so tests can make a child misbehave on purpose.
//!
//! Start-up behaviours by argument: `--exit-at-start` (exits 3 before reading anything),
//! `--garbage-at-start` (writes a non-JSON line first), `--never-answer METHOD` (requests for
//! METHOD are read and never answered), `--linger` (stays after its stdin closes, until a
//! signal ends it). Per-call behaviours by tool name:
//! `echo`, `pid` (so tests see respawns), `seen-id` (the request id the child received),
//! `state` (subscriptions, log level, `initialized` count, cancellations seen), `env`,
//! `crash` (exits mid-request), `garbage` (a non-JSON line, then the answer), `huge` (an
//! answer of `bytes` bytes), `slow` (answers after `ms`), `progress` (progress notifications
//! for the request's token), `notify` (a log notification), `sample` (asks the client for
//! sampling and returns its answer), `stderr` (writes `lines` lines to stderr), `ping-client`
//! (sends `count` pings to the client without waiting; `state` lists the answers that came).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{BufRead as _, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

#[derive(Default)]
struct State {
    subscriptions: Vec<String>,
    log_level: Option<String>,
    initialized: u64,
    cancelled: Vec<Value>,
    /// Ids of answers to requests nobody waits for (`ping-client`'s pings).
    answered: Vec<Value>,
}

struct Child {
    out: Mutex<std::io::Stdout>,
    state: Mutex<State>,
    waiting: Mutex<HashMap<String, mpsc::Sender<Value>>>,
    next_request: AtomicU64,
    never_answer: Option<String>,
}

impl Child {
    fn send(&self, message: &Value) {
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{message}");
            let _ = out.flush();
        }
    }

    fn send_raw(&self, line: &str) {
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }

    fn reply(&self, id: &Value, result: Value) {
        self.send(&json!({"jsonrpc": "2.0", "id": id, "result": result}));
    }

    fn text(&self, id: &Value, text: impl Into<String>) {
        self.reply(
            id,
            json!({"content": [{"type": "text", "text": text.into()}]}),
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--exit-at-start") {
        std::process::exit(3);
    }
    let child = Arc::new(Child {
        out: Mutex::new(std::io::stdout()),
        state: Mutex::new(State::default()),
        waiting: Mutex::new(HashMap::new()),
        next_request: AtomicU64::new(1),
        never_answer: args
            .iter()
            .position(|a| a == "--never-answer")
            .and_then(|i| args.get(i + 1).cloned()),
    });
    if args.iter().any(|a| a == "--garbage-at-start") {
        child.send_raw("this is not JSON-RPC");
    }
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        handle(&child, message);
    }
    if args.iter().any(|a| a == "--linger") {
        loop {
            std::thread::park();
        }
    }
}

fn handle(child: &Arc<Child>, message: Value) {
    let id = message.get("id").cloned();
    let method = message
        .get("method")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let params = message.get("params").cloned().unwrap_or(Value::Null);
    let Some(method) = method else {
        // A response to one of our requests.
        if let Some(key) = id.as_ref().map(Value::to_string)
            && let Some(sender) = child.waiting.lock().ok().and_then(|mut w| w.remove(&key))
        {
            let _ = sender.send(message);
        } else if let (Some(id), Ok(mut state)) = (id, child.state.lock()) {
            state.answered.push(id);
        }
        return;
    };
    let Some(id) = id else {
        notification(child, &method, &params);
        return;
    };
    if child.never_answer.as_deref() == Some(method.as_str()) {
        return;
    }
    match method.as_str() {
        "initialize" => {
            let version = params
                .get("protocolVersion")
                .cloned()
                .unwrap_or_else(|| json!("2025-06-18"));
            child.reply(
                &id,
                json!({
                    "protocolVersion": version,
                    "capabilities": {"tools": {}, "resources": {"subscribe": true}, "logging": {}},
                    "serverInfo": {"name": "mcp-test-child", "version": "1"}
                }),
            );
        }
        "ping" => child.reply(&id, json!({})),
        "resources/subscribe" => {
            if let (Some(uri), Ok(mut state)) = (
                params.get("uri").and_then(Value::as_str),
                child.state.lock(),
            ) {
                state.subscriptions.push(uri.to_owned());
            }
            child.reply(&id, json!({}));
        }
        "logging/setLevel" => {
            if let (Some(level), Ok(mut state)) = (
                params.get("level").and_then(Value::as_str),
                child.state.lock(),
            ) {
                state.log_level = Some(level.to_owned());
            }
            child.reply(&id, json!({}));
        }
        "tools/list" => {
            let names = [
                "echo",
                "pid",
                "seen-id",
                "state",
                "env",
                "crash",
                "garbage",
                "huge",
                "slow",
                "progress",
                "notify",
                "sample",
                "stderr",
                "ping-client",
            ];
            let tools: Vec<Value> = names
                .iter()
                .map(|name| json!({"name": name, "inputSchema": {"type": "object"}}))
                .collect();
            child.reply(&id, json!({"tools": tools}));
        }
        "tools/call" => call(child, id, &params),
        _ => child.send(&json!({
            "jsonrpc": "2.0", "id": id,
            "error": {"code": -32601, "message": format!("Method not found: {method}")}
        })),
    }
}

fn notification(child: &Child, method: &str, params: &Value) {
    let Ok(mut state) = child.state.lock() else {
        return;
    };
    match method {
        "notifications/initialized" => state.initialized += 1,
        "notifications/cancelled" => state
            .cancelled
            .push(params.get("requestId").cloned().unwrap_or(Value::Null)),
        _ => {}
    }
}

fn argument_u64(params: &Value, name: &str, default: u64) -> u64 {
    params
        .get("arguments")
        .and_then(|a| a.get(name))
        .and_then(Value::as_u64)
        .unwrap_or(default)
}

fn call(child: &Arc<Child>, id: Value, params: &Value) {
    let name = params
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match name {
        "echo" => {
            let text = params
                .get("arguments")
                .and_then(|a| a.get("message"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            child.text(&id, text);
        }
        "pid" => child.text(&id, std::process::id().to_string()),
        "seen-id" => child.text(&id, id.to_string()),
        "state" => {
            let text = child
                .state
                .lock()
                .map(|state| {
                    json!({
                        "subscriptions": state.subscriptions,
                        "log_level": state.log_level,
                        "initialized": state.initialized,
                        "cancelled": state.cancelled,
                        "answered": state.answered,
                    })
                    .to_string()
                })
                .unwrap_or_default();
            child.text(&id, text);
        }
        "env" => {
            let env: HashMap<String, String> = std::env::vars().collect();
            child.text(&id, json!(env).to_string());
        }
        "crash" => std::process::exit(1),
        "garbage" => {
            child.send_raw("}{ definitely not json");
            child.text(&id, "after garbage");
        }
        "huge" => {
            let bytes = usize::try_from(argument_u64(params, "bytes", 1024)).unwrap_or(1024);
            child.text(&id, "x".repeat(bytes));
        }
        "slow" => {
            let ms = argument_u64(params, "ms", 1000);
            let child = child.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(ms));
                child.text(&id, format!("slept {ms} ms"));
            });
        }
        "progress" => {
            let token = params
                .get("_meta")
                .and_then(|m| m.get("progressToken"))
                .cloned();
            let steps = argument_u64(params, "steps", 3);
            if let Some(token) = token {
                for step in 1..=steps {
                    child.send(&json!({
                        "jsonrpc": "2.0", "method": "notifications/progress",
                        "params": {"progressToken": token, "progress": step, "total": steps}
                    }));
                }
            }
            child.text(&id, format!("{steps} steps done"));
        }
        "notify" => {
            child.send(&json!({
                "jsonrpc": "2.0", "method": "notifications/message",
                "params": {"level": "info", "data": "hello from the child"}
            }));
            child.text(&id, "notified");
        }
        "ping-client" => {
            // `count` pings to the client, ids `ping-{from}`…, answered before any reply comes
            // back.
            let count = argument_u64(params, "count", 1);
            let from = argument_u64(params, "from", 1);
            for n in from..from + count {
                child.send(&json!({"jsonrpc": "2.0", "id": format!("ping-{n}"), "method": "ping"}));
            }
            child.text(&id, format!("sent {count} pings"));
        }
        "sample" => {
            // The child's own request ids restart at 1 in every process, on purpose: the
            // broker must remap them (item 138).
            let request_id = json!(child.next_request.fetch_add(1, Ordering::SeqCst));
            let (sender, receiver) = mpsc::channel();
            if let Ok(mut waiting) = child.waiting.lock() {
                waiting.insert(request_id.to_string(), sender);
            }
            child.send(&json!({
                "jsonrpc": "2.0", "id": request_id, "method": "sampling/createMessage",
                "params": {"messages": [{"role": "user", "content": {"type": "text", "text": "hi"}}], "maxTokens": 5}
            }));
            let child = child.clone();
            std::thread::spawn(move || {
                let answer = receiver
                    .recv_timeout(Duration::from_secs(30))
                    .map(|message| message.to_string())
                    .unwrap_or_else(|_| "no answer".to_owned());
                child.text(&id, answer);
            });
        }
        "stderr" => {
            let lines = argument_u64(params, "lines", 10);
            let mut err = std::io::stderr();
            for line in 0..lines {
                let _ = writeln!(err, "stderr line {line}");
            }
            child.text(&id, "written");
        }
        _ => child.send(&json!({
            "jsonrpc": "2.0", "id": id,
            "error": {"code": -32602, "message": format!("Unknown tool: {name}")}
        })),
    }
}
