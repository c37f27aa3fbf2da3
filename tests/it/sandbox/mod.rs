//! Sandbox tests against the real kernel (issue #6). Each test runs in its own process
//! (nextest), and every sandbox is a fresh launcher process anyway: confinement never touches
//! the test process itself. Tests that need user namespaces (or root, or an installed peer)
//! print `skipped: <reason>` and return when the host lacks it; CI runs as root and has them.

mod children;
mod egress_policy;
mod hostile;
mod pipe_mode;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use forgejo_mcp_broker::audit::MemoryAudit;
use forgejo_mcp_broker::secret::SecretString;
use forgejo_mcp_broker::supervisor::sandbox_config::SandboxConfig;
use forgejo_mcp_broker::supervisor::sandboxed::{SandboxLauncher, SandboxedChild};
use forgejo_mcp_broker::supervisor::{ChildSpec, TokenDelivery};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

pub const LAUNCHER: &str = env!("CARGO_BIN_EXE_forgejo-mcp-broker");
pub const PROBE: &str = env!("CARGO_BIN_EXE_sandbox-probe");

/// `Some(reason)` when this host cannot run sandboxes (then the test prints it and returns).
pub fn unavailable() -> Option<String> {
    if !cfg!(target_os = "linux") {
        return Some("not Linux".into());
    }
    let (report, _) = forgejo_mcp_broker::supervisor::sandbox_config::host_report();
    report
        .into_iter()
        .find(|r| r.layer == "user-namespace" && r.status.label() != "enforced")
        .map(|r| {
            format!(
                "user namespaces unavailable: {}",
                r.status.reason().unwrap_or_default()
            )
        })
}

pub fn is_root() -> bool {
    sandbox::process::effective_ids().0 == 0
}

macro_rules! require_sandbox {
    () => {
        if let Some(reason) = crate::sandbox::unavailable() {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}
pub(crate) use require_sandbox;

pub fn config(profile: &str, extra: Vec<PathBuf>) -> SandboxConfig {
    SandboxConfig {
        profile: profile.to_owned(),
        extra_read_only: extra,
        memory_limit_mib: 256,
        pids_limit: 64,
        tmp_size_mib: 16,
        ..SandboxConfig::default()
    }
}

pub fn launcher(config: SandboxConfig) -> (SandboxLauncher, Arc<MemoryAudit>) {
    let audit = MemoryAudit::new();
    let launcher = SandboxLauncher::new(config, Some(PathBuf::from(LAUNCHER)), Some(audit.clone()))
        .expect("sandbox launcher");
    (launcher, audit)
}

pub fn spec(program: &Path, args: &[&str], token: Option<(&str, &str)>) -> ChildSpec {
    ChildSpec {
        program: program.to_path_buf(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env: Vec::new(),
        working_dir: None,
        credential: token
            .map(|(var, value)| (var.to_owned(), SecretString::from(value.to_owned()))),
        delivery: if token.is_some() {
            TokenDelivery::Pipe
        } else {
            TokenDelivery::None
        },
        session_label: "test-session".to_owned(),
        user_id: 7,
    }
}

/// Reads the child's stdout to EOF (bounded).
pub async fn read_all_stdout(child: &mut SandboxedChild, limit: Duration) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut output = String::new();
    let read = tokio::time::timeout(limit, child.handle.stdout.read_to_string(&mut output)).await;
    assert!(
        read.is_ok(),
        "child did not finish within {limit:?}; got so far: {output}"
    );
    output
}

/// Reads one line from the child's stdout (bounded).
pub async fn read_line(
    reader: &mut BufReader<forgejo_mcp_broker::supervisor::BoxedRead>,
    limit: Duration,
) -> String {
    let mut line = String::new();
    match tokio::time::timeout(limit, reader.read_line(&mut line)).await {
        Ok(Ok(_)) => line,
        other => panic!("no line within {limit:?}: {other:?}"),
    }
}

pub async fn write_line(child: &mut SandboxedChild, line: &str) {
    child.handle.stdin.write_all(line.as_bytes()).await.unwrap();
    child.handle.stdin.write_all(b"\n").await.unwrap();
    child.handle.stdin.flush().await.unwrap();
}

pub use crate::fixtures::eventually;

#[tokio::test]
async fn sandbox_check_reports_every_layer_and_the_trial_child_runs() {
    require_sandbox!();
    let output = std::process::Command::new(LAUNCHER)
        .args(["sandbox", "check"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for layer in sandbox::host::LAYERS {
        assert!(text.contains(layer), "{layer} missing from:\n{text}");
    }
    assert!(text.contains("trial child: started"), "{text}");
    assert!(text.contains("seccomp            enforced"), "{text}");
}

#[tokio::test]
async fn a_required_layer_the_host_lacks_refuses_start_with_the_reason() {
    // Whatever this host is, require a layer and check the verdict matches the report.
    let (report, _) = forgejo_mcp_broker::supervisor::sandbox_config::host_report();
    let missing = report.iter().find(|r| r.status.label() != "enforced");
    let config = SandboxConfig {
        require: vec![missing.map_or("seccomp", |r| r.layer).to_owned()],
        ..SandboxConfig::default()
    };
    let result = forgejo_mcp_broker::supervisor::sandbox_config::preflight(&config);
    match missing {
        Some(layer) => {
            let text = result.unwrap_err().to_string();
            assert!(text.contains(layer.layer), "{text}");
            assert!(text.contains(layer.status.reason().unwrap()), "{text}");
        }
        None => assert!(result.is_ok()),
    }
}

#[tokio::test]
async fn an_unprivileged_broker_still_confines_with_its_own_uid() {
    require_sandbox!();
    if !is_root() || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipped: needs root and setpriv to start the broker as an unprivileged user");
        return;
    }
    // `sandbox check` as nobody: own-uid mapping, setgroups denied, no cgroups.
    let output = std::process::Command::new("/usr/bin/setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            LAUNCHER,
        ])
        .args(["sandbox", "check"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stdout.is_empty() && stderr.contains("Permission denied") {
        eprintln!("skipped: the broker binary is not reachable by uid 65534: {stderr}");
        return;
    }
    if stdout.contains("user-namespace     unavailable") && !stdout.contains("trial child: started")
    {
        eprintln!("skipped: unprivileged user namespaces are disabled here:\n{stdout}");
        return;
    }
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("distinct-uid       degraded"), "{stdout}");
    assert!(stdout.contains("trial child: started"), "{stdout}");
    assert!(stdout.contains("seccomp            enforced"), "{stdout}");
}
