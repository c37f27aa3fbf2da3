//! Session cold start with the full sandbox against a plain spawn of the same child, in the
//! same run (issue #6 target: the sandbox adds under 10 ms), and broker-side memory per
//! sandboxed session. Run: `cargo bench -p bench --bench sandbox` (needs user namespaces;
//! as root it also exercises cgroups and distinct uids).
//!
//! The child is the test probe in `serve` mode: it prints one line as soon as it runs, so
//! "cold start" is spawn → first byte of stdout.
// A benchmark is a test harness: failing loudly on a broken setup is what it should do.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bench::quantile;
use forgejo_mcp_broker::supervisor::sandbox_config::SandboxConfig;
use forgejo_mcp_broker::supervisor::sandboxed::{SandboxLauncher, SandboxedChild};
use forgejo_mcp_broker::supervisor::{ChildSpec, TokenDelivery};
use tokio::io::{AsyncBufReadExt as _, BufReader};

const ITERATIONS: usize = 40;
const HELD_SESSIONS: usize = 20;

/// Builds the broker (the launcher) and the probe in release mode and returns their paths.
fn binaries() -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--bin",
            "forgejo-mcp-broker",
            "--bin",
            "sandbox-probe",
        ])
        .status()
        .expect("cargo build");
    assert!(status.success());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("release");
    (
        target.join("forgejo-mcp-broker"),
        target.join("sandbox-probe"),
    )
}

fn spec(probe: &Path) -> ChildSpec {
    ChildSpec {
        program: probe.to_path_buf(),
        args: vec!["serve".into()],
        env: Vec::new(),
        working_dir: None,
        credential: None,
        delivery: TokenDelivery::None,
        session_label: "bench".into(),
        user_id: 0,
    }
}

async fn first_line(reader: forgejo_mcp_broker::supervisor::BoxedRead) -> String {
    let mut reader = BufReader::new(reader);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .expect("child answers")
        .expect("read");
    line
}

async fn plain(probe: &Path) -> Duration {
    let start = Instant::now();
    let mut child = tokio::process::Command::new(probe)
        .arg("serve")
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let line = first_line(Box::pin(child.stdout.take().unwrap())).await;
    let elapsed = start.elapsed();
    assert!(line.starts_with("ready"));
    elapsed
}

async fn sandboxed(launcher: &SandboxLauncher, probe: &Path) -> (Duration, SandboxedChild) {
    let start = Instant::now();
    let mut child = launcher.launch_sandboxed(spec(probe)).await.unwrap();
    let stdout = std::mem::replace(&mut child.handle.stdout, Box::pin(tokio::io::empty()));
    let line = first_line(stdout).await;
    let elapsed = start.elapsed();
    assert!(line.starts_with("ready"));
    (elapsed, child)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Proportional set size: shared pages (the broker binary mapped by every launcher) counted
/// once across the processes sharing them.
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn main() {
    let (launcher_bin, probe) = binaries();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = SandboxConfig {
            profile: "native".into(),
            ..SandboxConfig::default()
        };
        let launcher = SandboxLauncher::new(config, Some(launcher_bin), None).unwrap();
        // Warm-up (page cache, first cgroup directories).
        let _ = plain(&probe).await;
        let _ = sandboxed(&launcher, &probe).await;

        // Interleaved, so both see the same machine load.
        let mut plain_samples = Vec::new();
        let mut sandbox_samples = Vec::new();
        for _ in 0..ITERATIONS {
            plain_samples.push(plain(&probe).await);
            let (elapsed, child) = sandboxed(&launcher, &probe).await;
            sandbox_samples.push(elapsed);
            drop(child);
        }
        plain_samples.sort();
        sandbox_samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let (p50, s50) = (
            quantile(&plain_samples, 0.5),
            quantile(&sandbox_samples, 0.5),
        );
        let (p90, s90) = (
            quantile(&plain_samples, 0.9),
            quantile(&sandbox_samples, 0.9),
        );
        println!("cold start, spawn → first stdout line ({ITERATIONS} runs each, interleaved):");
        println!(
            "  plain spawn      p50 {:7.2} ms   p90 {:7.2} ms",
            ms(p50),
            ms(p90)
        );
        println!(
            "  full sandbox     p50 {:7.2} ms   p90 {:7.2} ms",
            ms(s50),
            ms(s90)
        );
        println!(
            "  added by sandbox p50 {:7.2} ms   p90 {:7.2} ms   (target < 10 ms; ratio {:.1}x)",
            ms(s50.saturating_sub(p50)),
            ms(s90.saturating_sub(p90)),
            s50.as_secs_f64() / p50.as_secs_f64().max(1e-9)
        );

        // Broker-side memory: this process's RSS growth and each session's launcher.
        let own = std::process::id();
        let before = rss_kib(own);
        let mut held = Vec::new();
        for _ in 0..HELD_SESSIONS {
            held.push(sandboxed(&launcher, &probe).await.1);
        }
        let after = rss_kib(own);
        let launchers: Vec<u32> = held
            .iter()
            .filter_map(|c| c.handle.control.pid())
            .filter_map(parent_of)
            .collect();
        let count = launchers.len().max(1) as u64;
        let launcher_avg = launchers.iter().map(|p| rss_kib(*p)).sum::<u64>() / count;
        let launcher_pss = launchers.iter().map(|p| pss_kib(*p)).sum::<u64>() / count;
        println!("memory per sandboxed session ({HELD_SESSIONS} held open):");
        println!(
            "  broker process     {:6} KiB  (RSS {before} → {after} KiB)",
            after.saturating_sub(before) / HELD_SESSIONS as u64
        );
        println!(
            "  launcher process   {launcher_pss:6} KiB PSS ({launcher_avg} KiB RSS; outside the sandbox, one per session)"
        );
        drop(held);
    });
}
