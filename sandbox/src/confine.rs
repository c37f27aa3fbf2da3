//! Confinement as one linear function of named stages (the firecracker jailer habit): read it
//! top to bottom to know exactly what a child goes through. Every failure names its stage.
//!
//! It runs in the launcher, a fresh single-threaded process (the broker re-exec'd with the
//! hidden `__launcher` subcommand), never in a `pre_exec` of the tokio broker
//! (sandbox-notes §1.2). The launcher does the namespace work, forks the child as PID 1 of the
//! new pid namespace and stays outside as its monitor and reaper ([`crate::launcher`]).

use std::os::fd::RawFd;

use crate::ipc::{BrokerMessage, LauncherMessage, StatusRecord};
use crate::plan::{
    Bind, EGRESS_PLACEHOLDER, Errno, IdMapping, LaunchPlan, Stage, StageError, TOKEN_FD, TokenPlan,
};
use crate::syscall::{Forked, Syscall};

/// Where the launcher keeps the control socket (the broker maps it there).
pub const CONTROL_FD: RawFd = 3;

/// What `confine` returns.
#[derive(Debug, PartialEq, Eq)]
pub enum Role {
    /// In the launcher: the child runs (or is about to exec); watch it.
    Monitor {
        child: i32,
        /// Read end of the child's status pipe: landlock report, or a failed stage; EOF when
        /// the child's `execve` succeeded (the write end is close-on-exec).
        status: RawFd,
        egress_port: Option<u16>,
    },
    /// Only with a fake `Syscall`: the child's path ran to its end (exec or failure).
    ChildFinished(StageError),
}

// Mount flags (linux/mount.h).
const MS_RDONLY: u64 = 1;
const MS_NOSUID: u64 = 2;
const MS_NODEV: u64 = 4;
const MS_NOEXEC: u64 = 8;
const MS_REMOUNT: u64 = 32;
const MS_BIND: u64 = 4096;
const MS_REC: u64 = 16384;
const MS_PRIVATE: u64 = 1 << 18;

// securebits (linux/securebits.h): NOROOT (0x01), NO_SETUID_FIXUP (0x04) and
// NO_CAP_AMBIENT_RAISE (0x40) set, KEEP_CAPS (0x10) clear, each locked (0x02, 0x08, 0x80,
// 0x20), so an exec'd program can never regain capabilities.
const SECURE_BITS_LOCKED_NOROOT: u64 = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80;

/// Staging mount point and the directories inside it (bubblewrap's double `pivot_root`).
const STAGING: &str = "/tmp";
const NEW_ROOT: &str = "/newroot";
const OLD_ROOT: &str = "/oldroot";

/// Devices the child gets, bound from the host's `/dev`.
const DEVICES: [&str; 3] = ["null", "zero", "urandom"];

/// Runs every stage. In the launcher it returns [`Role::Monitor`]; in the child it either
/// `execve`s (never returns) or reports the failed stage on the status pipe and exits 127.
pub fn confine<S: Syscall>(
    sys: &mut S,
    plan: &LaunchPlan,
    token: Option<&[u8]>,
    seccomp: &[policies::BpfProgram],
) -> Result<Role, StageError> {
    let at = |stage: Stage| move |errno: Errno| StageError::new(stage, errno);

    // 1. Sanitize: nothing but stdio and the control socket crosses into the sandbox. The
    //    broker spawned us with an empty environment; close every other inherited descriptor.
    sys.close_from(CONTROL_FD + 1)
        .map_err(at(Stage::Sanitize))?;

    // 2. Join the session's cgroups before unsharing, so the cgroup namespace created below is
    //    rooted there and the child cannot see or leave it. (The broker usually has placed us
    //    there already, while we were starting; then the plan lists nothing here.)
    let pid = sys.getpid();
    for procs in &plan.cgroup_procs {
        sys.write_file(procs, pid.to_string().as_bytes())
            .map_err(at(Stage::JoinCgroup))?;
    }

    // 3. A new user namespace first: it gives us the capabilities for everything after.
    sys.unshare(libc::CLONE_NEWUSER)
        .map_err(at(Stage::UserNamespace))?;

    // 4. The broker writes our uid/gid maps from outside (only a writer in the parent
    //    namespace may map a uid other than its own, user_namespaces(7)); wait for it.
    send(sys, &LauncherMessage::Ready).map_err(at(Stage::IdMaps))?;
    match receive(sys).map_err(at(Stage::IdMaps))? {
        BrokerMessage::MapsWritten => {}
        _ => return Err(StageError::new(Stage::IdMaps, Errno(libc::EPROTO))),
    }

    // 5. The other namespaces. CLONE_NEWPID applies to our next child only: it will be PID 1.
    sys.unshare(
        libc::CLONE_NEWNS
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWCGROUP
            | libc::CLONE_NEWPID,
    )
    .map_err(at(Stage::Namespaces))?;

    // 6. The new network namespace has only `lo`, and it is down.
    sys.loopback_up().map_err(at(Stage::Loopback))?;

    // 7. `inject` mode: the egress endpoint is a listener inside the child's namespace, handed
    //    to the broker over SCM_RIGHTS (sandbox-notes §1.5). The child reaches it as
    //    127.0.0.1:<port> and nothing else.
    let egress_port = if plan.egress_listener {
        let (listener, port) = sys.listen_loopback().map_err(at(Stage::EgressListener))?;
        send_with_fd(sys, &LauncherMessage::EgressListener { port }, listener)
            .map_err(at(Stage::EgressListener))?;
        sys.close(listener).map_err(at(Stage::EgressListener))?;
        Some(port)
    } else {
        None
    };
    let substitute = |text: &str| match egress_port {
        Some(port) => text.replace(EGRESS_PLACEHOLDER, &format!("127.0.0.1:{port}")),
        None => text.to_owned(),
    };
    let argv: Vec<String> = plan.argv.iter().map(|arg| substitute(arg)).collect();
    let mut env: Vec<String> = plan
        .env
        .iter()
        .map(|(key, value)| format!("{key}={}", substitute(value)))
        .collect();
    let mut landlock = plan.landlock.clone();
    landlock.connect_tcp.extend(egress_port);

    // 8. Fork: the child is PID 1 of the new pid namespace; we stay outside as its monitor.
    let (status_read, status_write) = sys.pipe().map_err(at(Stage::Fork))?;
    match sys.fork().map_err(at(Stage::Fork))? {
        Forked::Parent { child } => {
            sys.close(status_write).map_err(at(Stage::Fork))?;
            return Ok(Role::Monitor {
                child,
                status: status_read,
                egress_port,
            });
        }
        Forked::Child => {}
    }

    // ---- From here on we are the child. A failure is reported on the status pipe. ----
    let mut status_fd = status_write;
    let failure = (|| -> StageError {
        macro_rules! step {
            ($stage:expr, $call:expr) => {
                if let Err(errno) = $call {
                    return StageError::new($stage, errno);
                }
            };
        }

        // 9. Die with the launcher, so the whole pid namespace dies with it.
        step!(
            Stage::ParentDeathSignal,
            sys.set_parent_death_signal(libc::SIGKILL)
        );
        step!(Stage::ParentDeathSignal, sys.close(status_read));

        // 10. Open every bind source (and the devices) while we still have the broker's host
        //     identity: a source may sit below a directory only that identity can traverse
        //     (an interpreter under /root). The mounts below name them /proc/self/fd/N.
        let mut sources: Vec<RawFd> = Vec::new();
        for bind in &plan.binds {
            if !matches!(bind, Bind::Symlink { .. }) {
                match sys.open_path(bind.path()) {
                    Ok(fd) => sources.push(fd),
                    Err(errno) => return StageError::new(Stage::OpenBindSources, errno),
                }
            }
        }
        let mut device_sources: Vec<RawFd> = Vec::new();
        for device in DEVICES {
            match sys.open_path(&format!("/dev/{device}")) {
                Ok(fd) => device_sources.push(fd),
                Err(errno) => return StageError::new(Stage::OpenBindSources, errno),
            }
        }

        // 11. Become the mapped root: from outside, the session's own host uid (or the
        //     broker's uid when it is not root); files created from here on belong to it.
        //     Supplementary groups go too where the broker may allow it.
        if matches!(plan.ids, IdMapping::Distinct { .. }) {
            step!(Stage::Identity, sys.clear_groups());
        }
        step!(Stage::Identity, sys.become_mapped_root());
        // 11b. The kernel clears the parent-death signal when the effective ids change (a root
        //      broker's launcher is host uid 0; the child now runs as the session's uid): set
        //      it again. Nothing below changes ids; dropping capabilities does not clear it. If
        //      the launcher died in between, the status write of step 25 fails and the child
        //      exits before it runs anything.
        step!(
            Stage::ParentDeathSignal,
            sys.set_parent_death_signal(libc::SIGKILL)
        );

        // 12. Nothing we mount may propagate back to the host.
        step!(
            Stage::MountPrivate,
            sys.mount(None, "/", None, MS_REC | MS_PRIVATE, None)
        );

        // 13. Staging: a tmpfs over /tmp, pivoted to, with the host root kept at /oldroot so
        //     bind sources can be named while the new root is assembled in /newroot.
        step!(
            Stage::MountStaging,
            sys.mount(
                Some("tmpfs"),
                STAGING,
                Some("tmpfs"),
                MS_NOSUID | MS_NODEV,
                Some("mode=0755,size=64k")
            )
        );
        step!(Stage::MountStaging, sys.chdir(STAGING));
        step!(Stage::MountStaging, sys.mkdir("newroot", 0o755));
        step!(Stage::MountStaging, sys.mkdir("oldroot", 0o755));
        step!(Stage::MountStaging, sys.pivot_root(".", "oldroot"));
        step!(Stage::MountStaging, sys.chdir("/"));
        step!(
            Stage::MountStaging,
            sys.mount(
                Some("tmpfs"),
                NEW_ROOT,
                Some("tmpfs"),
                MS_NOSUID | MS_NODEV,
                Some("mode=0755,size=1m")
            )
        );

        // 14. The only writable place: a size-limited tmpfs /tmp. Before the binds: a profile
        //     path under /tmp (a program built or unpacked there) is bound on top of it;
        //     mounted after, the tmpfs would hide the bind or fail on its mount point.
        let tmp = format!("{NEW_ROOT}/tmp");
        step!(Stage::MountTmp, make_parents(sys, &tmp));
        step!(Stage::MountTmp, sys.mkdir(&tmp, 0o1777));
        let tmp_options = format!("mode=1777,size={}", plan.tmp_size_bytes);
        step!(
            Stage::MountTmp,
            sys.mount(
                Some("tmpfs"),
                &tmp,
                Some("tmpfs"),
                MS_NOSUID | MS_NODEV,
                Some(&tmp_options)
            )
        );

        // 15. Read-only binds of exactly what the profile needs, nosuid and nodev, all the way
        //     down: a recursive bind brings the mounts below its source along (a separate
        //     /usr/local, something mounted under /opt), and a remount reaches only the top
        //     one, so `mount_setattr(AT_RECURSIVE)` sets the flags on each. Before Linux 5.12
        //     the source alone is bound (what is mounted below it stays out of sight) and
        //     remounted, keeping any flags the kernel locked on it.
        let mut source_fds = sources.iter();
        for bind in &plan.binds {
            let target = format!("{NEW_ROOT}{}", bind.path());
            step!(Stage::BindMounts, make_parents(sys, &target));
            match bind {
                Bind::Symlink { target: link, .. } => {
                    step!(Stage::BindMounts, sys.symlink(link, &target));
                    continue;
                }
                Bind::Dir(_) => step!(Stage::BindMounts, sys.mkdir(&target, 0o755)),
                Bind::File(_) => step!(Stage::BindMounts, sys.create_file(&target, 0o444)),
            }
            let Some(fd) = source_fds.next() else {
                return StageError::new(Stage::BindMounts, Errno(libc::EBADF));
            };
            let source = format!("{OLD_ROOT}/proc/self/fd/{fd}");
            step!(
                Stage::BindMounts,
                sys.mount(Some(&source), &target, None, MS_BIND | MS_REC, None)
            );
            match sys.mount_setattr_read_only(&target) {
                Ok(()) => continue,
                Err(Errno(libc::ENOSYS)) => {}
                Err(errno) => return StageError::new(Stage::BindMounts, errno),
            }
            step!(Stage::BindMounts, sys.umount_detach(&target));
            step!(
                Stage::BindMounts,
                sys.mount(Some(&source), &target, None, MS_BIND, None)
            );
            let locked = match sys.mount_flags(&target) {
                Ok(flags) => flags,
                Err(errno) => return StageError::new(Stage::BindMounts, errno),
            };
            step!(
                Stage::BindMounts,
                sys.mount(
                    None,
                    &target,
                    None,
                    MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | locked,
                    None
                )
            );
        }

        // 16. A fresh /proc of the new pid namespace; hidepid=invisible hides processes the
        //     child does not own (there are none others, but it costs nothing).
        let proc = format!("{NEW_ROOT}/proc");
        step!(Stage::MountProc, sys.mkdir(&proc, 0o555));
        step!(
            Stage::MountProc,
            sys.mount(
                Some("proc"),
                &proc,
                Some("proc"),
                MS_NOSUID | MS_NODEV | MS_NOEXEC,
                Some("hidepid=invisible")
            )
        );

        // 17. /dev: a tmpfs with null, zero and urandom bound from the host (mknod is not
        //     allowed in a user namespace) and the /dev/fd links.
        let dev = format!("{NEW_ROOT}/dev");
        step!(Stage::MountDev, sys.mkdir(&dev, 0o755));
        step!(
            Stage::MountDev,
            sys.mount(
                Some("tmpfs"),
                &dev,
                Some("tmpfs"),
                MS_NOSUID | MS_NOEXEC,
                Some("mode=0755,size=64k")
            )
        );
        for (device, fd) in DEVICES.into_iter().zip(&device_sources) {
            let target = format!("{dev}/{device}");
            let source = format!("{OLD_ROOT}/proc/self/fd/{fd}");
            step!(Stage::MountDev, sys.create_file(&target, 0o666));
            step!(
                Stage::MountDev,
                sys.mount(Some(&source), &target, None, MS_BIND, None)
            );
        }
        for (link, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            step!(
                Stage::MountDev,
                sys.symlink(target, &format!("{dev}/{link}"))
            );
        }

        for fd in sources.iter().chain(&device_sources) {
            step!(Stage::MountDev, sys.close(*fd));
        }
        // /dev itself read-only (the device binds stay writable).
        step!(
            Stage::MountDev,
            sys.mount(
                None,
                &dev,
                None,
                MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC,
                None
            )
        );

        // 18. Detach the host root from the staging area, then make the new root read-only.
        step!(Stage::RemountRootReadOnly, sys.umount_detach(OLD_ROOT));
        step!(
            Stage::RemountRootReadOnly,
            sys.mount(
                None,
                NEW_ROOT,
                None,
                MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV,
                None
            )
        );

        // 19. pivot_root(".", ".") stacks the old root on the new one; detaching "." removes
        //     it (the trick runc and LXC use), leaving no path back to the host.
        step!(Stage::PivotRoot, sys.chdir(NEW_ROOT));
        step!(Stage::PivotRoot, sys.pivot_root(".", "."));
        step!(Stage::PivotRoot, sys.umount_detach("."));
        step!(Stage::PivotRoot, sys.chdir("/"));
        // The child starts in its working directory (default /tmp).
        step!(Stage::PivotRoot, sys.chdir(&plan.cwd));

        // 20. The UTS namespace is private; give it a neutral name.
        step!(Stage::Hostname, sys.sethostname(&plan.hostname));

        // 21. rlimits. Never RLIMIT_AS: Go and Node reserve huge address space (§1.10).
        for limit in &plan.rlimits {
            step!(
                Stage::Rlimits,
                sys.setrlimit(limit.resource, limit.soft, limit.hard)
            );
        }

        // 22. pipe mode: the token goes into a pipe readable as /dev/fd/3, or into the
        //     child's own environment. It never touched argv, the broker's env or a file.
        match (&plan.token, token) {
            (Some(TokenPlan::File { file_var }), Some(secret)) => {
                let (read, write) = match sys.pipe() {
                    Ok(ends) => ends,
                    Err(errno) => return StageError::new(Stage::TokenPipe, errno),
                };
                step!(Stage::TokenPipe, sys.write_all(write, secret));
                step!(Stage::TokenPipe, sys.close(write));
                // dup2 clears close-on-exec on the copy at fd 3 (which was the control socket).
                step!(Stage::TokenPipe, sys.dup2(read, TOKEN_FD));
                step!(Stage::TokenPipe, sys.close(read));
                env.push(format!("{file_var}=/dev/fd/{TOKEN_FD}"));
            }
            (Some(TokenPlan::Env { var }), Some(secret)) => {
                let Ok(secret) = std::str::from_utf8(secret) else {
                    return StageError::new(Stage::TokenPipe, Errno(libc::EINVAL));
                };
                env.push(format!("{var}={secret}"));
            }
            (Some(_), None) => return StageError::new(Stage::TokenPipe, Errno(libc::ENODATA)),
            (None, _) => {}
        }

        // 23. Capabilities: lock the securebits, empty the bounding and ambient sets, then the
        //     process's own sets (securebits and the bounding set need CAP_SETPCAP, so last).
        step!(
            Stage::Capabilities,
            sys.set_securebits(SECURE_BITS_LOCKED_NOROOT)
        );
        let last = match sys.last_capability() {
            Ok(last) => last,
            Err(errno) => return StageError::new(Stage::Capabilities, errno),
        };
        for capability in 0..=last {
            step!(
                Stage::Capabilities,
                sys.drop_bounding_capability(capability)
            );
        }
        step!(Stage::Capabilities, sys.clear_ambient_capabilities());
        step!(Stage::Capabilities, sys.clear_capabilities());

        // 24. no_new_privs: execve can never add privilege (setuid bits, file capabilities).
        step!(Stage::NoNewPrivs, sys.set_no_new_privs());

        // 25. landlock, after pivot_root so its paths are the sandbox's. Every part the
        //     kernel supports is a hard requirement; what it lacks is reported, not hidden.
        let outcome = match sys.landlock(&landlock) {
            Ok(outcome) => outcome,
            Err(errno) => return StageError::new(Stage::Landlock, errno),
        };
        let record = StatusRecord::Landlock(outcome).encode();
        step!(Stage::Landlock, sys.write_all(status_fd, &record));

        // 26. Close everything but stdio, the token pipe and the status pipe (close-on-exec).
        let keep_token = matches!(plan.token, Some(TokenPlan::File { .. }));
        if !keep_token {
            step!(Stage::CloseFds, sys.close(CONTROL_FD));
        }
        step!(Stage::CloseFds, sys.dup2(status_write, CONTROL_FD + 1));
        step!(Stage::CloseFds, sys.set_cloexec(CONTROL_FD + 1));
        status_fd = CONTROL_FD + 1;
        step!(Stage::CloseFds, sys.close_from(CONTROL_FD + 2));

        // 27. seccomp last, immediately before execve: the guard (x32 → kill, unknown
        //     numbers → ENOSYS), then the EPERM and ENOSYS denylists from `policies`.
        for program in seccomp {
            step!(Stage::Seccomp, sys.seccomp(program));
        }

        // 28. exec. On success the status pipe closes (close-on-exec) and the launcher knows.
        StageError::new(Stage::Exec, sys.execve(&plan.program, &argv, &env))
    })();

    let _ = sys.write_all(status_fd, &StatusRecord::Failed(failure).encode());
    sys.exit(127);
    Ok(Role::ChildFinished(failure))
}

/// `mkdir -p` of the parents of `path` (all inside the fresh tmpfs root).
fn make_parents<S: Syscall>(sys: &mut S, path: &str) -> Result<(), Errno> {
    let mut prefix = String::new();
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let Some((_, parents)) = components.split_last() else {
        return Ok(());
    };
    for component in parents {
        prefix.push('/');
        prefix.push_str(component);
        match sys.mkdir(&prefix, 0o755) {
            Ok(()) | Err(Errno(libc::EEXIST)) => {}
            Err(errno) => return Err(errno),
        }
    }
    Ok(())
}

fn send<S: Syscall>(sys: &mut S, message: &LauncherMessage) -> Result<(), Errno> {
    sys.control_send(&message.encode(), None)
}

fn send_with_fd<S: Syscall>(
    sys: &mut S,
    message: &LauncherMessage,
    fd: RawFd,
) -> Result<(), Errno> {
    sys.control_send(&message.encode(), Some(fd))
}

fn receive<S: Syscall>(sys: &mut S) -> Result<BrokerMessage, Errno> {
    let mut buffer = vec![0u8; crate::ipc::MAX_MESSAGE];
    let length = sys.control_recv(&mut buffer)?;
    if length == 0 {
        return Err(Errno(libc::ECONNRESET));
    }
    BrokerMessage::decode(buffer.get(..length).unwrap_or_default()).map_err(|_| Errno(libc::EPROTO))
}

/// Stage-order tests through the recording fake: no root, no kernel features.
#[cfg(test)]
mod tests {
    use super::{Role, confine};
    use crate::fake::Recorder;
    use crate::ipc::StatusRecord;
    use crate::plan::{
        Bind, IdMapping, LandlockPlan, LaunchPlan, Rlimit, Stage, StageError, TokenPlan,
    };

    fn plan() -> LaunchPlan {
        LaunchPlan {
            program: "/usr/bin/server".to_owned(),
            argv: vec!["server".to_owned(), "--url=http://{egress}".to_owned()],
            env: vec![("PATH".to_owned(), "/usr/bin".to_owned())],
            cwd: "/srv/app".to_owned(),
            binds: vec![
                Bind::Dir("/usr".to_owned()),
                Bind::Symlink {
                    path: "/lib".to_owned(),
                    target: "usr/lib".to_owned(),
                },
                Bind::File("/opt/app/server.js".to_owned()),
            ],
            tmp_size_bytes: 1 << 20,
            hostname: "sandbox".to_owned(),
            rlimits: vec![Rlimit {
                resource: libc::RLIMIT_NOFILE,
                soft: 256,
                hard: 256,
            }],
            cgroup_procs: vec!["/sys/fs/cgroup/memory/s1/cgroup.procs".to_owned()],
            landlock: LandlockPlan::default(),
            token: Some(TokenPlan::File {
                file_var: "TOKEN_FILE".to_owned(),
            }),
            egress_listener: true,
            ids: IdMapping::Distinct {
                host_uid: 100_000,
                host_gid: 100_000,
            },
        }
    }

    fn run_child(plan: &LaunchPlan, fail_on: Option<&str>) -> (Recorder, Result<Role, StageError>) {
        let mut sys = Recorder::new(true);
        sys.fail_on = fail_on.map(str::to_owned);
        let programs = vec![policies::guard_program(policies::Arch::X86_64)];
        let result = confine(&mut sys, plan, Some(b"tok-123"), &programs);
        (sys, result)
    }

    fn index(sys: &Recorder, prefix: &str) -> usize {
        sys.position(prefix)
            .unwrap_or_else(|| panic!("no call {prefix:?} in {:#?}", sys.calls))
    }

    #[test]
    fn stages_run_in_the_documented_order() {
        let (sys, result) = run_child(&plan(), None);
        assert!(matches!(
            result,
            Ok(Role::ChildFinished(StageError {
                stage: Stage::Exec,
                ..
            }))
        ));
        let order = [
            "close_from 4",
            "write_file /sys/fs/cgroup/memory/s1/cgroup.procs 4242",
            "unshare user",
            "control_send \"Ready\"",
            "control_recv",
            "unshare mount,net,ipc,uts,cgroup,pid",
            "loopback_up",
            "listen_loopback",
            "fork",
            "set_parent_death_signal 9",
            "open_path /usr",
            "clear_groups",
            "become_mapped_root",
            "mount - / - 0x44000",
            "pivot_root . oldroot",
            "mount /oldroot/proc/self/fd/",
            "mount proc /newroot/proc proc",
            "umount_detach /oldroot",
            "pivot_root . .",
            "umount_detach .",
            "chdir /srv/app",
            "sethostname sandbox",
            "setrlimit",
            "dup2 19 3",
            "set_securebits",
            "drop_bounding_capability 0",
            "drop_bounding_capability 40",
            "clear_ambient_capabilities",
            "clear_capabilities",
            "set_no_new_privs",
            "landlock",
            "close_from 5",
            "seccomp",
            "execve",
            "exit 127",
        ];
        let positions: Vec<usize> = order.iter().map(|call| index(&sys, call)).collect();
        for (pair, names) in positions.windows(2).zip(order.windows(2)) {
            assert!(
                pair[0] < pair[1],
                "{} must come before {}",
                names[0],
                names[1]
            );
        }
        // Seccomp is the last thing before execve.
        let exec = index(&sys, "execve");
        assert!(
            sys.calls[exec - 1].starts_with("seccomp"),
            "{:?}",
            sys.calls[exec - 1]
        );
    }

    #[test]
    fn the_launcher_side_returns_monitor_and_the_child_never_runs_there() {
        let mut sys = Recorder::new(false);
        let result = confine(&mut sys, &plan(), Some(b"tok-123"), &[]);
        assert!(matches!(
            result,
            Ok(Role::Monitor {
                child: 4343,
                egress_port: Some(40_000),
                ..
            })
        ));
        assert!(sys.position("mount").is_none());
        assert!(sys.position("execve").is_none());
        // The listener went to the broker with its descriptor.
        let sent = index(&sys, "control_send {\"EgressListener\"");
        assert!(sys.calls[sent].contains("fd=Some("), "{}", sys.calls[sent]);
    }

    #[test]
    fn the_egress_port_replaces_the_placeholder_and_is_the_only_landlock_port() {
        let (sys, _) = run_child(&plan(), None);
        let exec = &sys.calls[index(&sys, "execve")];
        assert!(exec.contains("--url=http://127.0.0.1:40000"), "{exec}");
        assert!(sys.calls[index(&sys, "landlock")].contains("connect=[40000]"));
    }

    #[test]
    fn the_token_goes_into_a_pipe_and_never_into_argv_or_env() {
        let (sys, _) = run_child(&plan(), None);
        let exec = &sys.calls[index(&sys, "execve")];
        assert!(!exec.contains("tok-123"), "{exec}");
        assert!(exec.contains("TOKEN_FILE=/dev/fd/3"), "{exec}");
        assert!(sys.written.iter().any(|(_, data)| data == b"tok-123"));
    }

    #[test]
    fn env_mode_puts_the_token_only_in_the_childs_exec_environment() {
        let mut plan = plan();
        plan.token = Some(TokenPlan::Env {
            var: "GITEA_TOKEN".to_owned(),
        });
        let (sys, _) = run_child(&plan, None);
        let exec = &sys.calls[index(&sys, "execve")];
        assert!(exec.contains("GITEA_TOKEN=tok-123"), "{exec}");
        assert!(
            !exec.split(']').next().unwrap().contains("tok-123"),
            "not in argv: {exec}"
        );
        // The control socket at fd 3 is closed instead of being replaced by the token pipe.
        assert!(sys.position("close 3").is_some());
    }

    #[test]
    fn each_failure_names_its_stage_and_stops_there() {
        for (call, stage) in [
            ("write_file", Stage::JoinCgroup),
            ("unshare user", Stage::UserNamespace),
            ("unshare mount", Stage::Namespaces),
            ("loopback_up", Stage::Loopback),
            ("listen_loopback", Stage::EgressListener),
            ("fork", Stage::Fork),
            ("mount proc", Stage::MountProc),
            ("pivot_root . .", Stage::PivotRoot),
            ("become_mapped_root", Stage::Identity),
            ("mount_setattr_read_only", Stage::BindMounts),
            ("clear_capabilities", Stage::Capabilities),
            ("set_no_new_privs", Stage::NoNewPrivs),
            ("landlock", Stage::Landlock),
            ("seccomp", Stage::Seccomp),
        ] {
            let (sys, result) = run_child(&plan(), Some(call));
            let failed_stage = match result {
                Err(error) => error.stage,
                Ok(Role::ChildFinished(error)) => {
                    // In the child the failure is reported on the status pipe, then exit(127).
                    let record = StatusRecord::Failed(error).encode();
                    assert!(sys.written.iter().any(|(_, data)| data == &record));
                    assert_eq!(sys.calls.last().unwrap(), "exit 127");
                    error.stage
                }
                Ok(other) => panic!("{call}: {other:?}"),
            };
            assert_eq!(failed_stage, stage, "failing {call}");
            assert!(
                sys.position("execve").is_none(),
                "{call}: no exec after a failure"
            );
        }
    }

    /// The binds' calls for `/usr` (the first bind of [`plan`]), in order.
    fn usr_bind_calls(sys: &Recorder) -> Vec<String> {
        let first = index(sys, "mount /oldroot/proc/self/fd/");
        sys.calls[first..]
            .iter()
            .take_while(|call| !call.starts_with("mkdir") && !call.starts_with("symlink"))
            .cloned()
            .collect()
    }

    #[test]
    fn the_parent_death_signal_is_set_again_after_the_identity_changes() {
        let (sys, _) = run_child(&plan(), None);
        let identity = index(&sys, "become_mapped_root");
        assert!(
            sys.calls[identity..]
                .iter()
                .any(|call| call == "set_parent_death_signal 9"),
            "a change of effective uid clears PR_SET_PDEATHSIG: {:#?}",
            sys.calls
        );
    }

    #[test]
    fn securebits_forbid_ambient_raise_and_keep_no_capabilities() {
        let (sys, _) = run_child(&plan(), None);
        let call = &sys.calls[index(&sys, "set_securebits")];
        let bits = u64::from_str_radix(
            call.trim_start_matches("set_securebits ")
                .trim_start_matches("0x"),
            16,
        )
        .unwrap_or_else(|_| panic!("{call}"));
        assert_eq!(bits & 0x40, 0x40, "SECBIT_NO_CAP_AMBIENT_RAISE: {call}");
        assert_eq!(bits & 0x10, 0, "SECBIT_KEEP_CAPS clear: {call}");
        assert_eq!(bits & 0xaa, 0xaa, "every bit locked: {call}");
    }

    #[test]
    fn binds_are_read_only_all_the_way_down() {
        let (sys, result) = run_child(&plan(), None);
        assert!(matches!(result, Ok(Role::ChildFinished(_))));
        let calls = usr_bind_calls(&sys);
        assert_eq!(
            calls,
            [
                "mount /oldroot/proc/self/fd/14 /newroot/usr - 0x5000 -",
                "mount_setattr_read_only /newroot/usr",
            ],
            "a recursive bind (MS_BIND | MS_REC), then read-only on every mount below it"
        );
    }

    #[test]
    fn without_mount_setattr_a_bind_takes_only_its_source_mount() {
        let mut sys = Recorder::new(true);
        sys.fail_on = Some("mount_setattr_read_only /newroot/usr".to_owned());
        sys.fail_errno = libc::ENOSYS;
        let programs = vec![policies::guard_program(policies::Arch::X86_64)];
        let result = confine(&mut sys, &plan(), Some(b"tok-123"), &programs);
        assert!(
            matches!(
                result,
                Ok(Role::ChildFinished(StageError {
                    stage: Stage::Exec,
                    ..
                }))
            ),
            "{result:?}"
        );
        let calls = usr_bind_calls(&sys);
        assert_eq!(
            calls,
            [
                "mount /oldroot/proc/self/fd/14 /newroot/usr - 0x5000 -",
                "mount_setattr_read_only /newroot/usr",
                "umount_detach /newroot/usr",
                "mount /oldroot/proc/self/fd/14 /newroot/usr - 0x1000 -",
                "mount_flags /newroot/usr",
                "mount - /newroot/usr - 0x1027 -",
            ],
            "a kernel before 5.12: the source alone (MS_BIND), remounted read-only, nosuid, nodev"
        );
    }

    #[test]
    fn an_unprivileged_broker_keeps_supplementary_groups_untouched() {
        let mut plan = plan();
        plan.ids = IdMapping::OwnIds {
            host_uid: 1000,
            host_gid: 1000,
        };
        let (sys, _) = run_child(&plan, None);
        // setgroups is denied in that mode (the broker wrote "deny"); calling it would fail.
        assert!(sys.position("clear_groups").is_none());
        assert!(sys.position("become_mapped_root").is_some());
    }
}
