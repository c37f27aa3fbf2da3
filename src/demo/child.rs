//! The demo's MCP child: a small stdio MCP server whose tools call the (stand-in) Forgejo API
//! with the credentials the broker gave it, so the demo shows the whole credential chain.
//!
//! It is a real stdio MCP server (newline-delimited JSON-RPC on stdin/stdout, logs on stderr)
//! and takes its credentials the way production children do: `FORGEJO_URL` plus
//! `FORGEJO_ACCESS_TOKEN` in its environment, or `--token-file PATH` (e.g. `/dev/fd/3` in the
//! sandbox's `pipe` mode). In `inject` mode the "token" is the broker's placeholder and
//! `FORGEJO_URL` points at the broker's egress proxy; the child cannot tell the difference.

use std::path::PathBuf;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::secret::{ExposeSecret, SecretString};

/// Protocol revisions this child speaks, newest first.
const PROTOCOL_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// Longest stdin line accepted; anything longer is answered with a parse error and dropped.
const MAX_LINE_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DemoChildError {
    #[error("no Forgejo URL: pass --url or set FORGEJO_URL")]
    NoUrl,
    #[error("no token: set FORGEJO_ACCESS_TOKEN or pass --token-file")]
    NoToken,
    #[error("cannot read the token file: {0}")]
    TokenFile(std::io::Error),
    #[error("stdio failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot build the HTTP client: {0}")]
    Http(reqwest::Error),
}

struct Forgejo {
    base: url::Url,
    token: SecretString,
    http: reqwest::Client,
}

/// Runs the demo child on this process's stdio until stdin closes.
pub async fn run(token_file: Option<PathBuf>, url: Option<String>) -> Result<(), DemoChildError> {
    let base = url
        .or_else(|| std::env::var("FORGEJO_URL").ok())
        .and_then(|value| url::Url::parse(&value).ok())
        .ok_or(DemoChildError::NoUrl)?;
    // The sandbox's `pipe`/`inject` hand-off names the token file in `FORGEJO_ACCESS_TOKEN_FILE`.
    let token_file = token_file
        .or_else(|| std::env::var_os("FORGEJO_ACCESS_TOKEN_FILE").map(std::path::PathBuf::from));
    let token = match token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(DemoChildError::TokenFile)?;
            SecretString::from(text.trim().to_owned())
        }
        None => std::env::var("FORGEJO_ACCESS_TOKEN")
            .map(SecretString::from)
            .map_err(|_| DemoChildError::NoToken)?,
    };
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(DemoChildError::Http)?;
    let forgejo = Forgejo { base, token, http };

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let reply = if line.len() > MAX_LINE_BYTES {
            Some(error_reply(&Value::Null, -32700, "message too large"))
        } else {
            match serde_json::from_str::<Value>(&line) {
                Ok(message) => handle(&forgejo, &message).await,
                Err(_) => Some(error_reply(&Value::Null, -32700, "parse error")),
            }
        };
        if let Some(reply) = reply {
            let mut bytes = serde_json::to_vec(&reply).unwrap_or_default();
            bytes.push(b'\n');
            stdout.write_all(&bytes).await?;
            stdout.flush().await?;
        }
    }
    Ok(())
}

async fn handle(forgejo: &Forgejo, message: &Value) -> Option<Value> {
    let method = message.get("method").and_then(Value::as_str)?;
    // Notifications (no id) and responses get no reply.
    let id = message.get("id")?.clone();
    let params = message.get("params").cloned().unwrap_or(Value::Null);
    let result = match method {
        "initialize" => Ok(initialize_result(&params)),
        "ping" => Ok(json!({})),
        "tools/list" => Ok(json!({ "tools": tool_definitions() })),
        "tools/call" => Ok(call_tool(forgejo, &params).await),
        _ => Err((-32601, "method not found")),
    };
    Some(match result {
        Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
        Err((code, text)) => error_reply(&id, code, text),
    })
}

fn error_reply(id: &Value, code: i64, message: &str) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
}

fn initialize_result(params: &Value) -> Value {
    let requested = params
        .get("protocolVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let version = PROTOCOL_VERSIONS
        .iter()
        .find(|version| **version == requested)
        .copied()
        .unwrap_or(PROTOCOL_VERSIONS[0]);
    json!({
        "protocolVersion": version,
        "capabilities": { "tools": { "listChanged": false } },
        "serverInfo": { "name": "forgejo-mcp-broker-demo-child", "version": env!("CARGO_PKG_VERSION") },
        "instructions": "Demo tools that act on the stand-in Forgejo as the signed-in user."
    })
}

fn tool_definitions() -> Value {
    json!([
        {
            "name": "whoami",
            "description": "The Forgejo user this session acts as.",
            "inputSchema": { "type": "object", "properties": {} }
        },
        {
            "name": "list_repositories",
            "description": "Repositories of the signed-in user.",
            "inputSchema": { "type": "object", "properties": {} }
        },
        {
            "name": "create_issue",
            "description": "Open an issue in a repository.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "owner": { "type": "string" },
                    "repo": { "type": "string" },
                    "title": { "type": "string" },
                    "body": { "type": "string" }
                },
                "required": ["owner", "repo", "title"]
            }
        }
    ])
}

async fn call_tool(forgejo: &Forgejo, params: &Value) -> Value {
    let name = params
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let arguments = params.get("arguments").cloned().unwrap_or(Value::Null);
    let outcome = match name {
        "whoami" => forgejo.get("api/v1/user").await.map(|user| {
            format!(
                "You are {} (Forgejo user id {}).",
                user.get("login").and_then(Value::as_str).unwrap_or("?"),
                user.get("id").and_then(Value::as_i64).unwrap_or_default()
            )
        }),
        "list_repositories" => forgejo.get("api/v1/user/repos").await.map(|repos| {
            let names: Vec<&str> = repos
                .as_array()
                .map(|repos| {
                    repos
                        .iter()
                        .filter_map(|repo| repo.get("full_name").and_then(Value::as_str))
                        .collect()
                })
                .unwrap_or_default();
            format!("{} repositories: {}", names.len(), names.join(", "))
        }),
        "create_issue" => create_issue(forgejo, &arguments).await,
        _ => Err(format!("unknown tool {name}")),
    };
    match outcome {
        Ok(text) => json!({ "content": [{ "type": "text", "text": text }], "isError": false }),
        Err(text) => json!({ "content": [{ "type": "text", "text": text }], "isError": true }),
    }
}

async fn create_issue(forgejo: &Forgejo, arguments: &Value) -> Result<String, String> {
    let field = |key: &str| arguments.get(key).and_then(Value::as_str);
    let (Some(owner), Some(repo), Some(title)) = (field("owner"), field("repo"), field("title"))
    else {
        return Err("owner, repo and title are required".to_owned());
    };
    let path = format!("api/v1/repos/{owner}/{repo}/issues");
    let body = json!({ "title": title, "body": field("body").unwrap_or_default() });
    let issue = forgejo.post(&path, &body).await?;
    Ok(format!(
        "Created issue #{} in {owner}/{repo}: {}",
        issue
            .get("number")
            .and_then(Value::as_i64)
            .unwrap_or_default(),
        issue
            .get("html_url")
            .and_then(Value::as_str)
            .unwrap_or_default()
    ))
}

impl Forgejo {
    async fn get(&self, path: &str) -> Result<Value, String> {
        let url = self.base.join(path).map_err(|_| "bad path".to_owned())?;
        self.send(self.http.get(url)).await
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        let url = self.base.join(path).map_err(|_| "bad path".to_owned())?;
        self.send(self.http.post(url).json(body)).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, String> {
        let response = request
            .header(
                reqwest::header::AUTHORIZATION,
                format!("token {}", self.token.expose_secret()),
            )
            .send()
            .await
            // reqwest errors carry the URL, never headers: safe to show.
            .map_err(|error| format!("Forgejo unreachable: {error}"))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(body)
        } else {
            let message = body.get("message").and_then(Value::as_str).unwrap_or("");
            Err(format!("Forgejo answered {status}: {message}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initialize_echoes_a_supported_version_and_falls_back_to_the_newest() {
        let old = initialize_result(&json!({ "protocolVersion": "2025-03-26" }));
        assert_eq!(old["protocolVersion"], "2025-03-26");
        let unknown = initialize_result(&json!({ "protocolVersion": "1999-01-01" }));
        assert_eq!(unknown["protocolVersion"], PROTOCOL_VERSIONS[0]);
    }

    #[test]
    fn tools_have_object_schemas() {
        let tools = tool_definitions();
        for tool in tools.as_array().unwrap() {
            assert_eq!(tool["inputSchema"]["type"], "object");
        }
    }
}
