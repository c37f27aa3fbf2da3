//! The smallest useful stdio MCP server: `initialize` and an `echo` tool. The MCP latency
//! benchmark drives it directly and through the broker, so the difference is the broker.
#![forbid(unsafe_code)]

use std::io::{BufRead as _, Write as _};

use serde_json::{Value, json};

fn main() {
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
            Some("tools/call") => json!({
                "content": [{"type": "text", "text": message.pointer("/params/arguments/message")}]
            }),
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
