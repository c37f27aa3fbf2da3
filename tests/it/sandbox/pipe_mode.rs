//! `pipe` token delivery: the token reaches the child (as `/dev/fd/3`, or in its own
//! environment inside the sandbox) and nowhere else: not in any other process's environ or
//! cmdline, not in the broker's own, not in the audit log.

use std::time::Duration;

use tokio::io::BufReader;

use super::*;

/// Every readable `/proc/<pid>/{environ,cmdline}` on the host that contains `needle`, except
/// the pids in `allowed`.
fn processes_holding(needle: &str, allowed: &[u32]) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if allowed.contains(&pid) {
            continue;
        }
        for file in ["environ", "cmdline"] {
            if let Ok(bytes) = std::fs::read(entry.path().join(file))
                && String::from_utf8_lossy(&bytes).contains(needle)
            {
                found.push(format!("/proc/{pid}/{file}"));
            }
        }
    }
    found
}

#[tokio::test]
async fn a_file_token_is_only_in_the_childs_pipe() {
    require_sandbox!();
    let (launcher, audit) = launcher(config("native", Vec::new()));
    let token = format!(
        "PIPE-TOKEN-{}",
        forgejo_mcp_broker::secret::random_id(16).unwrap()
    );
    let mut child = launcher
        .launch_sandboxed(spec(PROBE.as_ref(), &["serve"], Some(("TOKEN", &token))))
        .await
        .unwrap();
    let mut stdout = BufReader::new(std::mem::replace(
        &mut child.handle.stdout,
        Box::pin(tokio::io::empty()),
    ));
    let ready = read_line(&mut stdout, Duration::from_secs(20)).await;
    // The child read it from /dev/fd/3.
    assert_eq!(ready.trim(), format!("ready token-bytes={}", token.len()));
    // Not in any process's environment or command line, the child's included (it got a
    // path, not the value), nor in ours.
    let holders = processes_holding(&token, &[]);
    assert!(holders.is_empty(), "token visible in {holders:?}");
    let own = std::fs::read(format!("/proc/{}/environ", std::process::id())).unwrap();
    assert!(!String::from_utf8_lossy(&own).contains(&token));
    assert!(!format!("{:?}", audit.events()).contains(&token));
    drop(child);
}

#[tokio::test]
async fn an_env_token_is_only_in_the_sandboxed_childs_own_environment() {
    require_sandbox!();
    // The `go` profile takes its token from the environment (forgejo-mcp, gitea-mcp style).
    // The probe is a dynamically linked binary, so give it the C library too.
    let extra = [
        "/usr/lib",
        "/lib",
        "/lib64",
        "/usr/lib64",
        "/etc/ld.so.cache",
    ]
    .into_iter()
    .map(std::path::PathBuf::from)
    .collect();
    let (launcher, _) = launcher(config("go", extra));
    let token = format!(
        "ENV-TOKEN-{}",
        forgejo_mcp_broker::secret::random_id(16).unwrap()
    );
    let mut child = launcher
        .launch_sandboxed(spec(
            PROBE.as_ref(),
            &["serve"],
            Some(("GITEA_TOKEN", &token)),
        ))
        .await
        .unwrap();
    let mut stdout = BufReader::new(std::mem::replace(
        &mut child.handle.stdout,
        Box::pin(tokio::io::empty()),
    ));
    let ready = read_line(&mut stdout, Duration::from_secs(20)).await;
    assert!(ready.starts_with("ready"), "{ready}");
    let child_pid = child.handle.control.pid().unwrap();
    let environ = std::fs::read(format!("/proc/{child_pid}/environ")).unwrap();
    assert!(
        String::from_utf8_lossy(&environ).contains(&format!("GITEA_TOKEN={token}")),
        "the child has it in its own environment"
    );
    let holders = processes_holding(&token, &[child_pid]);
    assert!(
        holders.is_empty(),
        "token visible outside the child: {holders:?}"
    );
    // The launcher's command line is only the hidden subcommand.
    let launchers: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("__launcher"))
        .collect();
    assert!(
        launchers.iter().all(|c| c.trim().ends_with("__launcher")),
        "{launchers:?}"
    );
    drop(child);
}
