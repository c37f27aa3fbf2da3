//! The hostile-child matrix: the probe tries every escape from inside the full sandbox while
//! another session runs next to it; every attempt must fail and every control succeed.

use std::net::{TcpListener, UdpSocket};
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use forgejo_mcp_broker::audit::AuditEvent;
use tokio::io::BufReader;

use super::*;

#[tokio::test]
async fn every_escape_attempt_of_a_hostile_child_fails() {
    require_sandbox!();
    let mut config = config("native", Vec::new());
    config.memory_limit_mib = 96;
    config.pids_limit = 32;
    let (launcher, audit) = launcher(config);

    // Another session, holding its own token, running next to the probe.
    let other_token = format!(
        "OTHER-SESSION-{}",
        forgejo_mcp_broker::secret::random_id(16).unwrap()
    );
    let mut other = launcher
        .launch_sandboxed(spec(
            PROBE.as_ref(),
            &["serve"],
            Some(("TOKEN", &other_token)),
        ))
        .await
        .expect("other session starts");
    let mut other_stdout = BufReader::new(std::mem::replace(
        &mut other.handle.stdout,
        Box::pin(tokio::io::empty()),
    ));
    let ready = read_line(&mut other_stdout, Duration::from_secs(20)).await;
    assert!(ready.starts_with("ready"), "{ready}");

    // Things on the host the probe must not reach.
    let host_tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    host_tcp.set_nonblocking(true).unwrap();
    let host_udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    host_udp.set_nonblocking(true).unwrap();
    let abstract_name = format!("fmb-probe-{}", std::process::id());
    let abstract_listener =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(&abstract_name).unwrap()).unwrap();
    abstract_listener.set_nonblocking(true).unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let db = secrets.path().join("broker.db");
    let config_file = secrets.path().join("broker.toml");
    let key_file = secrets.path().join("vault.key");
    for file in [&db, &config_file, &key_file] {
        std::fs::write(file, format!("secret contents of {}", file.display())).unwrap();
    }
    let udp_seen = Arc::new(AtomicUsize::new(0));

    let memory_bomb_mib = if launcher.cgroup_backend().name() == "none" {
        eprintln!(
            "skipped: the memory bomb (no cgroup backend: {:?})",
            launcher.cgroup_backend()
        );
        0
    } else {
        512
    };
    let own_token = format!(
        "PROBE-TOKEN-{}",
        forgejo_mcp_broker::secret::random_id(16).unwrap()
    );
    let args: Vec<String> = vec![
        format!("broker-pid={}", std::process::id()),
        format!("host-tcp={}", host_tcp.local_addr().unwrap().port()),
        format!("host-udp={}", host_udp.local_addr().unwrap().port()),
        format!("other-endpoint={}", other.egress_port.unwrap()),
        "own-endpoint={egress}".to_owned(),
        format!("abstract={abstract_name}"),
        format!("deny-read={}", db.display()),
        format!("deny-read={}", config_file.display()),
        format!("deny-read={}", key_file.display()),
        // Without a cgroup backend there is no memory limit to test (reported as unavailable
        // by `sandbox check`, refusable with `sandbox.require`).
        format!("memory-bomb-mib={memory_bomb_mib}"),
        "fork-bomb-cap=2000".to_owned(),
    ];
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut probe = launcher
        .launch_sandboxed(spec(PROBE.as_ref(), &arg_refs, Some(("TOKEN", &own_token))))
        .await
        .expect("probe starts");
    assert!(
        probe.egress.is_some(),
        "the egress listener came back over SCM_RIGHTS"
    );
    let output = read_all_stdout(&mut probe, Duration::from_secs(120)).await;
    let exit = probe.handle.control.wait().await;
    let report: serde_json::Value = serde_json::from_str(output.trim())
        .unwrap_or_else(|e| panic!("probe output is not JSON ({e}; exit {exit:?}): {output}"));

    // Host-side evidence, independent of what the probe believes.
    assert!(
        host_tcp.accept().is_err(),
        "the host TCP listener was reached"
    );
    let mut buffer = [0u8; 16];
    if host_udp.recv_from(&mut buffer).is_ok() {
        udp_seen.fetch_add(1, Ordering::SeqCst);
    }
    assert_eq!(
        udp_seen.load(Ordering::SeqCst),
        0,
        "the host UDP socket got a datagram"
    );
    assert!(
        abstract_listener.accept().is_err(),
        "the abstract socket was reached"
    );
    assert!(
        !output.contains(&other_token),
        "the other session's token leaked into the probe"
    );
    assert!(!output.contains("secret contents"), "a host file was read");
    let beside_program = std::path::Path::new(super::PROBE)
        .parent()
        .unwrap()
        .join("probe-escape");
    assert!(
        !beside_program.exists(),
        "the probe wrote into the host's program directory"
    );

    eprintln!("probe report: {output}");
    let attempts = report["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 25, "only {} attempts", attempts.len());
    let escaped: Vec<String> = attempts
        .iter()
        .filter(|a| a["escaped"] != false)
        .map(|a| format!("{}: {}", a["name"], a["detail"]))
        .collect();
    assert!(escaped.is_empty(), "escapes:\n{}", escaped.join("\n"));
    let failed_controls: Vec<String> = report["controls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] != true)
        .map(|c| format!("{}: {}", c["name"], c["detail"]))
        .collect();
    assert!(
        failed_controls.is_empty(),
        "controls failed:\n{}",
        failed_controls.join("\n")
    );
    let names: Vec<&str> = attempts.iter().filter_map(|a| a["name"].as_str()).collect();
    assert_eq!(names.contains(&"memory-bomb"), memory_bomb_mib > 0);
    for required in ["fork-bomb", "x32-syscall", "mptcp-socket", "io-uring-setup"] {
        assert!(
            names.contains(&required),
            "{required} not attempted: {names:?}"
        );
    }

    // The broker (this process) and the other session are unharmed by the bombs.
    write_line(&mut other, "still-alive").await;
    let echo = read_line(&mut other_stdout, Duration::from_secs(10)).await;
    assert_eq!(echo.trim(), "still-alive");

    // Every spawn recorded its layers.
    let spawned: Vec<AuditEvent> = audit
        .events()
        .into_iter()
        .filter(|e| matches!(e, AuditEvent::ChildSpawned { .. }))
        .collect();
    assert_eq!(spawned.len(), 2);
    let AuditEvent::ChildSpawned { layers, .. } = &spawned[0] else {
        unreachable!()
    };
    for layer in [
        "user-namespace",
        "pid-namespace",
        "network-namespace",
        "seccomp",
        "no-new-privs",
    ] {
        assert!(
            layers.iter().any(|l| l == layer),
            "{layer} not in {layers:?}"
        );
    }
    let audit_text = format!("{:?}", audit.events());
    assert!(!audit_text.contains(&own_token) && !audit_text.contains(&other_token));
    drop(other);
}

#[tokio::test]
async fn dropping_the_handle_kills_the_whole_sandbox_and_removes_its_cgroup() {
    require_sandbox!();
    let (launcher, _) = launcher(config("native", Vec::new()));
    let child = launcher
        .launch_sandboxed(spec(PROBE.as_ref(), &["serve"], None))
        .await
        .unwrap();
    let pid = child.handle.control.pid().unwrap();
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    assert!(proc_dir.exists());
    drop(child);
    assert!(
        eventually(Duration::from_secs(10), || {
            // Gone, or a zombie waiting for its reaper.
            std::fs::read_to_string(proc_dir.join("stat"))
                .map(|stat| stat.contains(") Z "))
                .unwrap_or(true)
        })
        .await,
        "the sandbox's PID 1 survived its handle"
    );
}

#[tokio::test]
async fn a_session_cgroup_exists_while_the_child_runs_and_is_removed_after() {
    require_sandbox!();
    if !super::is_root() {
        eprintln!("skipped: cgroup limits need root (or a delegated cgroup) on this host");
        return;
    }
    let (launcher, _) = launcher(config("native", Vec::new()));
    if launcher.cgroup_backend().name() == "none" {
        eprintln!(
            "skipped: no usable cgroup backend: {:?}",
            launcher.cgroup_backend()
        );
        return;
    }
    let child = launcher
        .launch_sandboxed(spec(PROBE.as_ref(), &["serve"], None))
        .await
        .unwrap();
    let pid = child.handle.control.pid().unwrap();
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let Some(memory_line) = cgroups.lines().find(|l| l.contains(":memory:")) else {
        eprintln!("skipped: the removal check reads the cgroup v1 memory path; host: {cgroups}");
        return;
    };
    assert!(
        memory_line.contains("forgejo-mcp-broker/test-session-"),
        "{cgroups}"
    );
    // `serve` exits when its stdin closes.
    drop(child.handle.stdin);
    let exit = child.handle.control.wait().await;
    assert!(
        matches!(exit, forgejo_mcp_broker::supervisor::ChildExit::Exited(0)),
        "{exit:?}"
    );
    let path = memory_line.rsplit(':').next().unwrap().to_owned();
    let dir = PathBuf::from("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
    assert!(
        eventually(Duration::from_secs(10), || !dir.exists()).await,
        "{} still exists",
        dir.display()
    );
}

#[tokio::test]
async fn each_session_runs_as_its_own_host_uid_when_the_broker_is_root() {
    require_sandbox!();
    if !super::is_root() {
        eprintln!("skipped: distinct host uids need a root broker");
        return;
    }
    let config = config("native", Vec::new());
    let base = config.host_id_base;
    let (launcher, _) = launcher(config);
    let first = launcher
        .launch_sandboxed(spec(PROBE.as_ref(), &["serve"], None))
        .await
        .unwrap();
    let second = launcher
        .launch_sandboxed(spec(PROBE.as_ref(), &["serve"], None))
        .await
        .unwrap();
    let host_ids = |child: &forgejo_mcp_broker::supervisor::sandboxed::SandboxedChild| {
        let pid = child.handle.control.pid().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| -> Vec<u32> {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap()
                .split_whitespace()
                .skip(1)
                .map(|v| v.parse().unwrap())
                .collect()
        };
        (field("Uid:"), field("Gid:"), field("Groups:"))
    };
    let (uid1, gid1, groups1) = host_ids(&first);
    let (uid2, _, _) = host_ids(&second);
    assert!(uid1.iter().all(|u| *u >= base && *u == uid1[0]), "{uid1:?}");
    assert!(gid1.iter().all(|g| *g >= base), "{gid1:?}");
    assert!(groups1.is_empty(), "supplementary groups kept: {groups1:?}");
    assert_ne!(uid1[0], uid2[0], "two sessions share a host uid");
}

/// A tmpfs mounted on the host for one test, unmounted when dropped (even if the test fails).
struct HostTmpfs(PathBuf);

impl HostTmpfs {
    fn mount(at: &std::path::Path) -> std::io::Result<Self> {
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some("size=1m,mode=0755"),
        )
        .map_err(std::io::Error::from)?;
        Ok(Self(at.to_path_buf()))
    }
}

impl Drop for HostTmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A directory bound into the sandbox with a mount below it (a separate /usr/local, a volume
/// under /opt): the recursive bind brings that mount along, and it must be read-only inside
/// too, not only the bound directory's own mount (a remount reaches only the top one).
#[tokio::test]
async fn a_mount_below_a_bound_directory_is_read_only_inside_the_sandbox() {
    require_sandbox!();
    if !super::is_root() {
        eprintln!("skipped: mounting below a bound directory needs root on the host");
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let bound = tempfile::tempdir().unwrap();
    // The child runs as its own host uid: it must be able to read what it is given.
    std::fs::set_permissions(bound.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(bound.path().join("top-file"), "top").unwrap();
    let below = bound.path().join("below");
    std::fs::create_dir(&below).unwrap();
    let _tmpfs = HostTmpfs::mount(&below).expect("a tmpfs below the bound directory");
    std::fs::write(below.join("marker"), "below").unwrap();
    assert!(
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&format!(" {} ", below.display())),
        "the host sees the mount below"
    );

    let (launcher, _) = launcher(config("native", vec![bound.path().to_path_buf()]));
    let args = [
        format!("read-only={}", bound.path().display()),
        format!("read-only={}", below.display()),
    ];
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut probe = launcher
        .launch_sandboxed(spec(PROBE.as_ref(), &arg_refs, None))
        .await
        .expect("probe starts");
    let output = read_all_stdout(&mut probe, Duration::from_secs(120)).await;
    let report: serde_json::Value = serde_json::from_str(output.trim())
        .unwrap_or_else(|e| panic!("probe output is not JSON ({e}): {output}"));
    let named = |list: &str, prefix: &str| -> Vec<serde_json::Value> {
        report[list]
            .as_array()
            .unwrap()
            .iter()
            .filter(|entry| entry["name"].as_str().unwrap().starts_with(prefix))
            .cloned()
            .collect()
    };
    let visible = named("controls", "visible ");
    assert_eq!(visible.len(), 2, "{output}");
    for control in &visible {
        assert_eq!(
            control["ok"], true,
            "the bind and the mount below it are seen: {control}"
        );
    }
    let mounts = named("attempts", "writable-mount");
    assert_eq!(
        mounts.len(),
        3,
        "the mountinfo scan and both paths: {output}"
    );
    for attempt in &mounts {
        assert_eq!(attempt["escaped"], false, "{attempt}");
    }
}
