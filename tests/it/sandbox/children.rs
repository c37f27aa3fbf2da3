//! Real MCP servers still work under the full sandbox: Node (server-everything), Python
//! (gitea-mcp, token in pipe mode) and Go (mcp-prometheus) complete initialize, tools/list
//! and a tools/call, driven over stdio through `SandboxLauncher`. Their only network is the
//! egress listener created in their namespace, which the test serves as a stand-in API.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

use super::*;

fn peers() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers")
}

fn installed(path: &Path) -> bool {
    if path.exists() {
        return true;
    }
    eprintln!(
        "skipped: {} is not installed (run tests/peers/install.sh)",
        path.display()
    );
    false
}

/// Serves every connection on the egress listener with `respond(request head)` and records
/// the request heads.
fn serve_egress(
    listener: std::net::TcpListener,
    respond: fn(&str) -> String,
) -> (Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap_or(0) == 1
                {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let body = respond(&head);
                record.lock().unwrap().push(head);
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (seen, task)
}

/// A JSON-RPC client over the child's stdio.
struct Mcp {
    child: SandboxedChild,
    stdout: BufReader<forgejo_mcp_broker::supervisor::BoxedRead>,
    next_id: u64,
}

impl Mcp {
    fn new(mut child: SandboxedChild) -> Self {
        let stdout = BufReader::new(std::mem::replace(
            &mut child.handle.stdout,
            Box::pin(tokio::io::empty()),
        ));
        Self {
            child,
            stdout,
            next_id: 0,
        }
    }

    async fn notify(&mut self, method: &str) {
        let line = json!({"jsonrpc": "2.0", "method": method}).to_string();
        write_line(&mut self.child, &line).await;
    }

    async fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let line =
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string();
        write_line(&mut self.child, &line).await;
        loop {
            let mut line = String::new();
            let read =
                tokio::time::timeout(Duration::from_secs(60), self.stdout.read_line(&mut line))
                    .await;
            match read {
                Ok(Ok(n)) if n > 0 => {}
                other => panic!(
                    "{method}: no answer ({other:?}); stderr: {}",
                    self.stderr().await
                ),
            }
            let Ok(message) = serde_json::from_str::<Value>(line.trim()) else {
                continue;
            };
            if message["id"] == json!(id) {
                assert!(message.get("error").is_none(), "{method}: {message}");
                return message["result"].clone();
            }
        }
    }

    async fn stderr(&mut self) -> String {
        let mut text = String::new();
        let _ = tokio::time::timeout(
            Duration::from_millis(500),
            self.child.handle.stderr.read_to_string(&mut text),
        )
        .await;
        text
    }

    async fn handshake(&mut self) -> Vec<String> {
        let init = self
            .request(
                "initialize",
                json!({"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "sandbox-test", "version": "1"}}),
            )
            .await;
        assert!(init["serverInfo"]["name"].is_string(), "{init}");
        self.notify("notifications/initialized").await;
        let tools = self.request("tools/list", json!({})).await;
        tools["tools"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect()
    }
}

fn assert_fully_confined(child: &SandboxedChild) {
    let weak: Vec<String> = child
        .layers
        .iter()
        .filter(|l| {
            l.status.label() != "enforced"
                && !l.layer.starts_with("cgroup")
                && l.layer != "distinct-uid"
        })
        .map(|l| format!("{} {:?}", l.layer, l.status))
        .collect();
    assert!(weak.is_empty(), "not fully confined: {weak:?}");
}

#[tokio::test]
async fn node_server_everything_works_inside_the_sandbox() {
    require_sandbox!();
    let modules = peers().join("node_modules");
    let script = modules.join("@modelcontextprotocol/server-everything/dist/index.js");
    if !installed(&script) {
        return;
    }
    let (launcher, _) = launcher(config("node", vec![modules]));
    let child = launcher
        .launch_sandboxed(spec(
            Path::new("/usr/bin/node"),
            &[script.to_str().unwrap(), "stdio"],
            None,
        ))
        .await
        .expect("node starts");
    assert_fully_confined(&child);
    let mut mcp = Mcp::new(child);
    let tools = mcp.handshake().await;
    assert!(tools.iter().any(|t| t == "echo"), "{tools:?}");
    let result = mcp
        .request(
            "tools/call",
            json!({"name": "echo", "arguments": {"message": "hello from the sandbox"}}),
        )
        .await;
    assert!(
        result.to_string().contains("hello from the sandbox"),
        "{result}"
    );
}

#[tokio::test]
async fn python_gitea_mcp_works_inside_the_sandbox_with_a_pipe_mode_token() {
    require_sandbox!();
    let venv = peers().join(".venv");
    let program = venv.join("bin/gitea-mcp");
    if !installed(&program) {
        return;
    }
    let prefix = crate::e2e::python_prefix(&venv);
    let (launcher, _) = launcher(config("python", vec![venv.clone(), prefix]));
    let token = format!(
        "GITEA-PIPE-{}",
        forgejo_mcp_broker::secret::random_id(12).unwrap()
    );
    let mut spec = spec(&program, &[], Some(("GITEA_TOKEN", &token)));
    spec.env = vec![("GITEA_URL".into(), "http://{egress}".into())];
    let mut child = launcher
        .launch_sandboxed(spec)
        .await
        .expect("gitea-mcp starts");
    assert_fully_confined(&child);
    let (seen, server) = serve_egress(child.egress.take().unwrap(), |head| {
        if head.contains("/version") {
            r#"{"version":"9.0.0-sandbox-test"}"#.to_owned()
        } else {
            r#"{"id":7,"login":"sandboxed-user"}"#.to_owned()
        }
    });
    let mut mcp = Mcp::new(child);
    let tools = mcp.handshake().await;
    assert!(tools.iter().any(|t| t == "get_server_info"), "{tools:?}");
    // GET /user and GET /version through the egress endpoint, with the token.
    let result = mcp
        .request(
            "tools/call",
            json!({"name": "get_server_info", "arguments": {}}),
        )
        .await;
    let text = result.to_string();
    assert!(
        text.contains("9.0.0-sandbox-test") && text.contains("sandboxed-user"),
        "{text}"
    );
    // The token reached the child (its own environment, inside the sandbox) and from there
    // its only endpoint.
    let heads = seen.lock().unwrap().join("\n");
    assert!(heads.contains(&format!("token {token}")), "{heads}");
    server.abort();
}

#[tokio::test]
async fn go_mcp_prometheus_works_inside_the_sandbox() {
    require_sandbox!();
    let program =
        peers().join("node_modules/mcp-prometheus-linux-amd64/bin/mcp-prometheus-linux-amd64");
    if !installed(&program) {
        return;
    }
    let (launcher, _) = launcher(config("go", Vec::new()));
    let mut child = launcher
        .launch_sandboxed(spec(&program, &["--url", "http://{egress}"], None))
        .await
        .expect("mcp-prometheus starts");
    assert_fully_confined(&child);
    let (seen, server) = serve_egress(child.egress.take().unwrap(), |_| {
        r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"job":"sandbox"},"value":[1700000000,"1"]}]}}"#.to_owned()
    });
    let mut mcp = Mcp::new(child);
    let tools = mcp.handshake().await;
    assert!(tools.iter().any(|t| t == "query"), "{tools:?}");
    let result = mcp
        .request(
            "tools/call",
            json!({"name": "query", "arguments": {"promql": "up"}}),
        )
        .await;
    assert!(result.to_string().contains("sandbox"), "{result}");
    let heads = seen.lock().unwrap().join("\n");
    assert!(heads.contains("/api/v1/query"), "{heads}");
    server.abort();
}

/// Where `launcher` refused to start the probe: the untrusted entry.
async fn refused_at(launcher: &SandboxLauncher) -> PathBuf {
    use forgejo_mcp_broker::supervisor::LaunchError;
    match launcher
        .launch_sandboxed(spec(Path::new(PROBE), &[], None))
        .await
    {
        Err(LaunchError::Untrusted(untrusted)) => untrusted.path,
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("started"),
    }
}

#[tokio::test]
async fn a_read_only_bind_or_launcher_another_user_could_change_stops_the_start() {
    use std::os::unix::fs::PermissionsExt as _;
    require_sandbox!();
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();

    // An extra read-only path in a directory anyone may write to.
    let (launcher, audit) = launcher(config("native", vec![open.join("lib")]));
    assert_eq!(refused_at(&launcher).await, open);
    // Nothing was started, so nothing was recorded as spawned.
    assert!(audit.events().is_empty(), "{:?}", audit.events());

    // A launcher binary in it.
    let copy = open.join("forgejo-mcp-broker");
    std::fs::copy(LAUNCHER, &copy).unwrap();
    let launcher = SandboxLauncher::new(config("native", Vec::new()), Some(copy), None)
        .expect("sandbox launcher");
    assert_eq!(refused_at(&launcher).await, open);
}
