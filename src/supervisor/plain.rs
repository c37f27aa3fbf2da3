//! [`PlainLauncher`]: starts a child with `tokio::process`, no sandbox. The sandbox launcher of
//! issue #6 replaces it in production; this one serves development, tests and hosts where the
//! operator accepts an unconfined child.
//!
//! What it still guarantees:
//! 1. The environment is cleared, then only the spec's allowlisted pairs are set (secrets never
//!    reach a child by inheritance: peers-lessons.md §3.7).
//! 2. The child leads its own process group, so a stop reaches everything it started.
//! 3. Stop = close stdin (done by the caller) → SIGTERM to the group → SIGKILL to the group after
//!    the grace period (checklist item 140, L2511 §Shutdown/stdio).
//! 4. Dropping the [`ChildHandle`] SIGKILLs the group (`kill_on_drop` covers the leader; the
//!    group kill covers grandchildren), so a child never outlives its owner.
//!
//! Not done here: `PR_SET_PDEATHSIG`, which needs a `pre_exec` closure (unsafe, forbidden in the
//! root crate) and is tied to the spawning *thread* (sandbox-notes.md §1.2). If the broker is
//! SIGKILLed, the child sees EOF on stdin, which ends any well-behaved stdio MCP server; the
//! sandbox launcher adds a pid namespace whose init dies with the launcher.

use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::{
    ChildControl, ChildExit, ChildHandle, ChildLauncher, ChildSpec, LaunchError, TokenDelivery,
};
use crate::secret::ExposeSecret as _;

/// Starts children directly (no namespaces, no seccomp).
#[derive(Debug, Default, Clone)]
pub struct PlainLauncher;

#[async_trait]
impl ChildLauncher for PlainLauncher {
    async fn launch(&self, spec: ChildSpec) -> Result<ChildHandle, LaunchError> {
        // Looked up as `execvp` in the child would: in the PATH the child gets, or the C
        // library's default; a relative path from the child's working directory.
        let program = super::trusted_program(
            &spec,
            super::search_path(&spec.env),
            spec.working_dir.as_deref(),
        )?;
        let mut command = Command::new(&program);
        command
            .arg0(&spec.program)
            .args(&spec.args)
            .env_clear()
            .envs(spec.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &spec.working_dir {
            command.current_dir(dir);
        }
        match (spec.delivery, &spec.credential) {
            (TokenDelivery::Env, Some((name, secret))) => {
                command.env(name, secret.expose_secret());
            }
            (TokenDelivery::Env | TokenDelivery::None, _) => {}
            (TokenDelivery::Inject | TokenDelivery::Pipe, _) => {
                return Err(LaunchError::Sandbox {
                    stage: "credential-delivery".to_owned(),
                    message: format!(
                        "token delivery `{}` needs the sandbox launcher; the plain launcher supports `env` and `none`",
                        match spec.delivery {
                            TokenDelivery::Inject => "inject",
                            _ => "pipe",
                        }
                    ),
                });
            }
        }
        let mut child = command.spawn().map_err(|source| LaunchError::Spawn {
            program: spec.program.clone(),
            source,
        })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(LaunchError::Spawn {
                program: spec.program.clone(),
                source: std::io::Error::other("child stdio was not captured"),
            });
        };
        let pid = child.id();
        Ok(ChildHandle {
            stdin: Box::pin(stdin),
            stdout: Box::pin(stdout),
            stderr: Box::pin(stderr),
            control: Box::new(PlainControl {
                pid,
                child: tokio::sync::Mutex::new(child),
                exit: Mutex::new(None),
            }),
        })
    }
}

struct PlainControl {
    pid: Option<u32>,
    child: tokio::sync::Mutex<Child>,
    exit: Mutex<Option<ChildExit>>,
}

impl PlainControl {
    fn signal_group(&self, signal: Signal) {
        if let Some(pid) = self.pid.and_then(|pid| i32::try_from(pid).ok()) {
            // The group may already be gone (ESRCH); nothing else can fail for our own child.
            let _ = killpg(Pid::from_raw(pid), signal);
        }
    }

    fn remember(&self, exit: ChildExit) -> ChildExit {
        if let Ok(mut slot) = self.exit.lock() {
            *slot = Some(exit.clone());
        }
        exit
    }
}

fn exit_of(status: std::io::Result<std::process::ExitStatus>) -> ChildExit {
    use std::os::unix::process::ExitStatusExt as _;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => ChildExit::Exited(code),
            (None, Some(signal)) => ChildExit::Signaled(signal),
            (None, None) => ChildExit::Unknown,
        },
        Err(_) => ChildExit::Unknown,
    }
}

#[async_trait]
impl ChildControl for PlainControl {
    fn pid(&self) -> Option<u32> {
        self.pid
    }

    async fn wait(&self) -> ChildExit {
        if let Some(exit) = self.exit.lock().ok().and_then(|slot| slot.clone()) {
            return exit;
        }
        let status = self.child.lock().await.wait().await;
        self.remember(exit_of(status))
    }

    async fn terminate(&self, grace: Duration) -> ChildExit {
        if let Some(exit) = self.exit.lock().ok().and_then(|slot| slot.clone()) {
            // The leader is gone; grandchildren in its group may not be.
            self.signal_group(Signal::SIGKILL);
            return exit;
        }
        let mut child = self.child.lock().await;
        // stdin is closed by the caller first; give the child the grace period to exit by
        // itself before signalling (item 140).
        if let Ok(status) = tokio::time::timeout(grace / 2, child.wait()).await {
            self.signal_group(Signal::SIGKILL);
            return self.remember(exit_of(status));
        }
        self.signal_group(Signal::SIGTERM);
        let status = match tokio::time::timeout(grace / 2, child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                self.signal_group(Signal::SIGKILL);
                child.wait().await
            }
        };
        // Whatever the leader did, nothing of its group survives a stop.
        self.signal_group(Signal::SIGKILL);
        self.remember(exit_of(status))
    }
}

impl Drop for PlainControl {
    fn drop(&mut self) {
        // kill_on_drop reaches the leader only; the group kill reaches what it started.
        self.signal_group(Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretString;
    use tokio::io::AsyncReadExt as _;

    fn spec(program: &str, args: &[&str]) -> ChildSpec {
        ChildSpec {
            program: program.into(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            env: vec![("ALLOWED".to_owned(), "yes".to_owned())],
            working_dir: None,
            credential: Some((
                "FORGEJO_ACCESS_TOKEN".to_owned(),
                SecretString::from("tok-123".to_owned()),
            )),
            delivery: TokenDelivery::Env,
            session_label: "test".to_owned(),
            user_id: 1,
        }
    }

    #[tokio::test]
    async fn environment_is_only_the_allowlist_and_the_credential() {
        // SAFETY-free: the broker's own environment is what must not leak.
        let mut handle = PlainLauncher
            .launch(spec("/usr/bin/env", &[]))
            .await
            .unwrap();
        let mut out = String::new();
        handle.stdout.read_to_string(&mut out).await.unwrap();
        let mut names: Vec<&str> = out.lines().filter_map(|l| l.split('=').next()).collect();
        names.sort_unstable();
        assert_eq!(names, ["ALLOWED", "FORGEJO_ACCESS_TOKEN"]);
        assert_eq!(handle.control.wait().await, ChildExit::Exited(0));
    }

    #[tokio::test]
    async fn terminate_kills_the_whole_group() {
        let handle = PlainLauncher
            .launch(spec(
                "/bin/sh",
                &["-c", "trap '' TERM; sleep 300 & sleep 300; wait"],
            ))
            .await
            .unwrap();
        let pid = handle.control.pid().unwrap();
        drop(handle.stdin);
        let exit = handle.control.terminate(Duration::from_millis(200)).await;
        assert_eq!(exit, ChildExit::Signaled(9));
        // No live process of the group is left (zombies wait for their reaper, which in a
        // container may be slow; they run nothing).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !live_members_of_group(pid).is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            live_members_of_group(pid),
            Vec::<u32>::new(),
            "group {pid} survived"
        );
    }

    #[tokio::test]
    async fn dropping_the_handle_kills_the_whole_group() {
        let handle = PlainLauncher
            .launch(spec("/bin/sh", &["-c", "sleep 300 & sleep 300; wait"]))
            .await
            .unwrap();
        let pid = handle.control.pid().unwrap();
        assert!(!live_members_of_group(pid).is_empty());
        drop(handle);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !live_members_of_group(pid).is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            live_members_of_group(pid),
            Vec::<u32>::new(),
            "group {pid} survived its owner"
        );
    }

    fn live_members_of_group(pgid: u32) -> Vec<u32> {
        let mut members = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Fields after the command: state, ppid, pgrp, …
            let Some((_, rest)) = stat.rsplit_once(") ") else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields[2] == pgid.to_string() && fields[0] != "Z" {
                members.push(pid);
            }
        }
        members
    }

    #[tokio::test]
    async fn inject_mode_is_refused_with_a_clear_error() {
        let mut spec = spec("/bin/true", &[]);
        spec.delivery = TokenDelivery::Inject;
        let Err(error) = PlainLauncher.launch(spec).await else {
            panic!("inject must be refused");
        };
        assert!(error.to_string().contains("sandbox launcher"), "{error}");
    }
}
