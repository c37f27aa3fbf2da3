//! The smallest useful stdio MCP server: `initialize` and an `echo` tool. The MCP latency
//! benchmark drives it directly and through the broker, so the difference is the broker.
//! `--spin-us N` makes every call busy for N µs first (a child that computes, as a real
//! server does, rather than answering at once).
#![forbid(unsafe_code)]

use std::io::{BufRead as _, Write as _};

use serde_json::{Value, json};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let spin = args
        .iter()
        .position(|arg| arg == "--spin-us")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse::<u64>().ok())
        .map(std::time::Duration::from_micros);
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let Some(id) = message.get("id").cloned() else {
            continue;
        };
        let result = match message.get("method").and_then(Value::as_str) {
            Some("initialize") => json!({
                "protocolVersion": message.pointer("/params/protocolVersion"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "bench-echo-child", "version": "1"}
            }),
            Some("tools/call") => {
                if let Some(spin) = spin {
                    let start = std::time::Instant::now();
                    while start.elapsed() < spin {
                        std::hint::spin_loop();
                    }
                }
                json!({
                "content": [{"type": "text", "text": message.pointer("/params/arguments/message")}]
                })
            }
            _ => json!({}),
        };
        let _ = writeln!(
            stdout,
            "{}",
            json!({"jsonrpc": "2.0", "id": id, "result": result})
        );
        let _ = stdout.flush();
    }
}
