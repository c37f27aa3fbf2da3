//! Escape attempts for the hostile-child probe (`src/bin/sandbox-probe.rs`), which runs inside
//! the sandbox and reports what happened. Each attempt says whether it *escaped* (the sandbox
//! failed) and what the kernel answered; controls are things a confined child must still be
//! able to do, so a probe that fails everything for an unrelated reason is noticed.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use serde::Serialize;

/// What the test tells the probe (none of it secret).
#[derive(Debug, Default, Clone)]
pub struct ProbeTargets {
    /// The broker's pid in the host pid namespace.
    pub broker_pid: Option<i32>,
    /// A TCP port listening on the host's loopback.
    pub host_tcp_port: Option<u16>,
    /// A UDP echo server on the host's loopback.
    pub host_udp_port: Option<u16>,
    /// Another session's egress port.
    pub other_endpoint_port: Option<u16>,
    /// This probe's own egress port (a control: must connect).
    pub own_endpoint_port: Option<u16>,
    /// An abstract unix socket name listening on the host.
    pub abstract_socket: Option<String>,
    /// Host files that must not be readable (database, config, key file).
    pub deny_read: Vec<String>,
    /// Directories bound into the sandbox that must be visible and on a read-only mount
    /// (a mount below a bound directory included).
    pub read_only: Vec<String>,
    /// How much the memory bomb tries to allocate.
    pub memory_bomb_mib: u64,
    /// Stop the fork bomb here (a success beyond it means no limit).
    pub fork_bomb_cap: u32,
}

#[derive(Debug, Serialize)]
pub struct Attempt {
    pub name: String,
    pub escaped: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Control {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub attempts: Vec<Attempt>,
    pub controls: Vec<Control>,
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn describe(rc: i64) -> String {
    if rc < 0 {
        format!("denied: {}", std::io::Error::from_raw_os_error(errno()))
    } else {
        format!("returned {rc}")
    }
}

/// Outcome of a raw syscall attempt: escaped when it succeeded.
fn syscall_attempt(name: &str, rc: i64) -> Attempt {
    Attempt {
        name: name.to_owned(),
        escaped: rc >= 0,
        detail: describe(rc),
    }
}

fn io_attempt<T>(name: &str, result: std::io::Result<T>) -> Attempt {
    Attempt {
        name: name.to_owned(),
        escaped: result.is_ok(),
        detail: match result {
            Ok(_) => "succeeded".to_owned(),
            Err(error) => format!("denied: {error}"),
        },
    }
}

/// Runs every attempt and control.
pub fn run(targets: &ProbeTargets) -> Report {
    let mut attempts = Vec::new();
    let mut controls = Vec::new();

    // --- Other processes: the pid namespace shows only us. ---
    let own = std::process::id();
    let visible: Vec<u32> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|pid| *pid != own)
                .collect()
        })
        .unwrap_or_default();
    let mut leaked = String::new();
    for pid in &visible {
        for file in ["environ", "cmdline"] {
            if let Ok(bytes) = std::fs::read(format!("/proc/{pid}/{file}")) {
                leaked.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }
    attempts.push(Attempt {
        name: "see-other-processes".into(),
        escaped: !visible.is_empty(),
        detail: format!("other pids visible: {visible:?}; their environ/cmdline: {leaked:?}"),
    });
    if let Some(pid) = targets.broker_pid {
        attempts.push(io_attempt(
            "read-broker-environ",
            std::fs::read(format!("/proc/{pid}/environ")).and_then(non_empty),
        ));
        // SAFETY: signal 0 only checks whether the pid exists and may be signalled.
        let rc = unsafe { libc::kill(pid, 0) };
        attempts.push(syscall_attempt("signal-broker", i64::from(rc)));
    }
    // SAFETY: signal 0 to -1: "is there any process I may signal" (none but us, excluded).
    let rc = unsafe { libc::kill(-1, 0) };
    attempts.push(syscall_attempt("signal-anything", i64::from(rc)));

    // --- ptrace and friends. ---
    // SAFETY: PTRACE_TRACEME takes no pointers.
    let rc = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
    attempts.push(syscall_attempt("ptrace-traceme", rc));
    let child = spawn_sleeper();
    if child > 0 {
        // SAFETY: PTRACE_ATTACH to our own child; no pointers.
        let rc = unsafe { libc::ptrace(libc::PTRACE_ATTACH, child, 0, 0) };
        attempts.push(syscall_attempt("ptrace-attach-child", rc));
        let mut byte = [0u8; 1];
        let local = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let remote = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 1,
        };
        // SAFETY: one local iovec over `byte`; the remote address is only read by the kernel.
        let rc =
            unsafe { libc::process_vm_readv(child, &raw const local, 1, &raw const remote, 1, 0) };
        attempts.push(syscall_attempt("process-vm-readv", rc as i64));
        reap(child);
    }

    // --- The filesystem. ---
    for (name, path) in [
        ("write-root", "/probe-escape"),
        ("write-etc", "/etc/probe-escape"),
        ("write-usr", "/usr/probe-escape"),
        ("write-proc-sys", "/proc/sys/kernel/hostname"),
        ("write-sysrq", "/proc/sysrq-trigger"),
    ] {
        attempts.push(io_attempt(
            name,
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .and_then(|mut f| f.write_all(b"x")),
        ));
    }
    if let Ok(exe) = std::fs::read_link("/proc/self/exe")
        && let Some(dir) = exe.parent()
    {
        // A program that lives under /tmp on the host sits, inside, on the child's own tmpfs
        // scratch: writing beside it reaches nothing of the host (the host-side test checks
        // the real directory), so only a program elsewhere makes this an escape attempt.
        if !dir.starts_with("/tmp") {
            attempts.push(io_attempt(
                "write-program-dir",
                std::fs::write(dir.join("probe-escape"), b"x"),
            ));
        }
        attempts.push(io_attempt(
            "overwrite-own-program",
            std::fs::OpenOptions::new()
                .write(true)
                .open(&exe)
                .map(|_| ()),
        ));
    }
    for path in ["/root", "/home", "/var", "/sys", "/boot", "/run"] {
        attempts.push(Attempt {
            name: format!("see {path}"),
            escaped: std::path::Path::new(path).exists(),
            detail: "must not exist in the minimal root".to_owned(),
        });
    }
    for path in ["/etc/shadow", "/etc/passwd", "/dev/mem", "/dev/kmsg"] {
        attempts.push(io_attempt(
            &format!("read {path}"),
            std::fs::read(path).and_then(non_empty),
        ));
    }
    for path in &targets.deny_read {
        attempts.push(io_attempt(
            &format!("read {path}"),
            std::fs::read(path).and_then(non_empty),
        ));
    }

    // --- Mounts: read-only everywhere but /tmp, /proc and the device binds. ---
    match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(mountinfo) => {
            let writable = writable_mounts(&mountinfo);
            attempts.push(Attempt {
                name: "writable-mount".into(),
                escaped: !writable.is_empty(),
                detail: format!(
                    "read-write mounts besides /tmp, /proc and the device binds: {writable:?}"
                ),
            });
        }
        Err(error) => controls.push(control("read-mountinfo", Err::<(), _>(error))),
    }
    for path in &targets.read_only {
        controls.push(control(
            &format!("visible {path}"),
            std::fs::read_dir(path).and_then(|mut entries| {
                entries
                    .next()
                    .ok_or_else(|| std::io::Error::other("empty"))?
            }),
        ));
        let read_only = mount_is_read_only(path);
        attempts.push(Attempt {
            name: format!("writable-mount {path}"),
            escaped: !matches!(read_only, Ok(true)),
            detail: format!("statvfs: read-only {read_only:?}"),
        });
    }

    // --- The network: nothing but our own endpoint. ---
    let timeout = Duration::from_secs(2);
    let connect =
        |port: u16| TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), timeout);
    if let Some(port) = targets.host_tcp_port {
        attempts.push(io_attempt("tcp-host-loopback", connect(port)));
    }
    if let Some(port) = targets.other_endpoint_port {
        attempts.push(io_attempt("tcp-other-session-endpoint", connect(port)));
    }
    attempts.push(io_attempt(
        "tcp-external",
        TcpStream::connect_timeout(&SocketAddr::from(([1, 1, 1, 1], 443)), timeout),
    ));
    attempts.push(io_attempt(
        "udp-external",
        UdpSocket::bind("0.0.0.0:0").and_then(|s| s.send_to(b"x", "1.1.1.1:53")),
    ));
    if let Some(port) = targets.host_udp_port {
        let echoed = UdpSocket::bind("127.0.0.1:0").and_then(|socket| {
            socket.set_read_timeout(Some(Duration::from_millis(500)))?;
            socket.send_to(b"ping", ("127.0.0.1", port))?;
            let mut buffer = [0u8; 16];
            socket.recv(&mut buffer)
        });
        attempts.push(io_attempt("udp-host-loopback", echoed));
    }
    for (name, domain, kind, protocol) in [
        (
            "raw-socket",
            libc::AF_INET,
            libc::SOCK_RAW,
            libc::IPPROTO_ICMP,
        ),
        ("packet-socket", libc::AF_PACKET, libc::SOCK_RAW, 0),
        ("mptcp-socket", libc::AF_INET, libc::SOCK_STREAM, 262),
        (
            "sctp-socket",
            libc::AF_INET,
            libc::SOCK_STREAM,
            libc::IPPROTO_SCTP,
        ),
        ("alg-socket", libc::AF_ALG, libc::SOCK_SEQPACKET, 0),
    ] {
        // SAFETY: creating a socket takes no pointers.
        let fd = unsafe { libc::socket(domain, kind, protocol) };
        attempts.push(syscall_attempt(name, i64::from(fd)));
        close(fd);
    }
    if let Some(name) = &targets.abstract_socket {
        attempts.push(io_attempt("abstract-unix-socket", connect_abstract(name)));
    }

    // --- Namespaces, mounts, kernel interfaces. ---
    for (name, flags) in [
        ("unshare-user", libc::CLONE_NEWUSER),
        ("unshare-net", libc::CLONE_NEWNET),
        ("unshare-mount", libc::CLONE_NEWNS),
    ] {
        // SAFETY: unshare takes flags only.
        let rc = unsafe { libc::unshare(flags) };
        attempts.push(syscall_attempt(name, i64::from(rc)));
    }
    attempts.push(clone_attempt("clone-newuser", libc::CLONE_NEWUSER));
    attempts.push(clone_attempt("clone-newnet", libc::CLONE_NEWNET));
    // SAFETY: clone3 with a NULL argument: the filter answers before the kernel reads it.
    let rc = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
    attempts.push(Attempt {
        name: "clone3".into(),
        escaped: rc >= 0 || errno() != libc::ENOSYS,
        detail: format!(
            "{} (must be ENOSYS so libc falls back to clone)",
            describe(rc)
        ),
    });
    if let Ok(ns) = std::fs::File::open("/proc/self/ns/net") {
        use std::os::fd::AsRawFd as _;
        // SAFETY: setns on an fd we hold.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), 0) };
        attempts.push(syscall_attempt("setns", i64::from(rc)));
    }
    let tmp = c"/tmp";
    // SAFETY: NUL-terminated strings; NULL data.
    let rc = unsafe {
        libc::mount(
            c"none".as_ptr(),
            tmp.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    attempts.push(syscall_attempt("mount-tmpfs", i64::from(rc)));
    // SAFETY: NUL-terminated strings.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, tmp.as_ptr(), tmp.as_ptr()) };
    attempts.push(syscall_attempt("pivot-root", rc));
    // SAFETY: NUL-terminated string.
    let rc = unsafe { libc::chroot(tmp.as_ptr()) };
    attempts.push(syscall_attempt("chroot", i64::from(rc)));
    let mut attr = [0u8; 128];
    // SAFETY: BPF_PROG_LOAD (5) with a zeroed attribute buffer of the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 5, attr.as_mut_ptr(), attr.len()) };
    attempts.push(syscall_attempt("bpf-prog-load", rc));
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup with a zeroed params buffer of the expected size.
    let rc = unsafe { libc::syscall(libc::SYS_io_uring_setup, 8, params.as_mut_ptr()) };
    attempts.push(syscall_attempt("io-uring-setup", rc));
    // SAFETY: KEYCTL_GET_KEYRING_ID (0) of the session keyring (-3), no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_keyctl, 0, -3, 0) };
    attempts.push(syscall_attempt("keyctl", rc));
    // SAFETY: NUL-terminated strings and a 1-byte payload.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            c"user".as_ptr(),
            c"probe".as_ptr(),
            c"x".as_ptr(),
            1usize,
            -2,
        )
    };
    attempts.push(syscall_attempt("add-key", rc));
    let mut perf = [0u8; 128];
    perf[4..8].copy_from_slice(&128u32.to_ne_bytes());
    // SAFETY: a perf_event_attr-sized zeroed buffer (type 0 hardware, size set).
    let rc = unsafe { libc::syscall(libc::SYS_perf_event_open, perf.as_mut_ptr(), 0, -1, -1, 0) };
    attempts.push(syscall_attempt("perf-event-open", rc));
    close(rc as i32);
    // SAFETY: personality takes a flag word.
    let rc = unsafe { libc::personality(0x0040000) };
    // SAFETY: 0xffffffff only queries.
    let now = unsafe { libc::personality(0xffff_ffff) };
    attempts.push(Attempt {
        name: "personality-no-randomize".into(),
        escaped: now & 0x0040000 != 0,
        detail: format!("{}; persona now {now:#x}", describe(i64::from(rc))),
    });
    // SAFETY: userfaultfd takes flags.
    let rc = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
    attempts.push(syscall_attempt("userfaultfd", rc));
    close(rc as i32);
    // SAFETY: finit_module on fd -1: the filter answers first.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, -1, c"".as_ptr(), 0) };
    attempts.push(Attempt {
        name: "finit-module".into(),
        escaped: rc >= 0 || errno() != libc::EPERM,
        detail: describe(rc),
    });
    // SAFETY: kexec_load with no segments.
    let rc = unsafe { libc::syscall(libc::SYS_kexec_load, 0, 0, std::ptr::null::<u8>(), 0) };
    attempts.push(Attempt {
        name: "kexec-load".into(),
        escaped: rc >= 0 || errno() != libc::EPERM,
        detail: describe(rc),
    });
    // SAFETY: pointer and length describe a static string.
    let rc = unsafe { libc::sethostname(c"escaped".as_ptr(), 7) };
    attempts.push(syscall_attempt("sethostname", i64::from(rc)));
    attempts.push(x32_attempt());
    // SAFETY: an unassigned syscall number with no arguments.
    let rc = unsafe { libc::syscall(1000) };
    attempts.push(Attempt {
        name: "unknown-syscall".into(),
        escaped: rc >= 0 || errno() != libc::ENOSYS,
        detail: describe(rc),
    });

    // --- Privilege. ---
    // SAFETY: PR_GET_NO_NEW_PRIVS takes no pointers.
    let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps: Vec<&str> = status.lines().filter(|l| l.starts_with("Cap")).collect();
    let no_caps = caps
        .iter()
        .filter(|l| {
            l.starts_with("CapEff")
                || l.starts_with("CapPrm")
                || l.starts_with("CapBnd")
                || l.starts_with("CapAmb")
        })
        .all(|l| l.ends_with("0000000000000000"));
    attempts.push(Attempt {
        name: "capabilities-or-setuid".into(),
        escaped: nnp != 1 || !no_caps,
        detail: format!("no_new_privs={nnp}; {}", caps.join(", ")),
    });
    attempts.push(exec_from_tmp_attempt());

    // --- Resources. ---
    attempts.push(fork_bomb(targets.fork_bomb_cap.max(1)));
    if targets.memory_bomb_mib > 0 {
        attempts.push(memory_bomb(targets.memory_bomb_mib));
    }

    // --- Descriptors inherited from the broker. ---
    let token_file = std::env::vars()
        .find(|(k, _)| k.ends_with("_FILE"))
        .map(|(_, v)| v);
    let fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|entries| {
            entries
                .filter_map(|e| {
                    let entry = e.ok()?;
                    let target = std::fs::read_link(entry.path()).ok()?;
                    Some(format!(
                        "{}->{}",
                        entry.file_name().to_string_lossy(),
                        target.display()
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let unexpected: Vec<&String> = fds
        .iter()
        .filter(|fd| {
            let number: i32 = fd
                .split("->")
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(-1);
            let expected = number <= 2 || (number == 3 && token_file.is_some());
            // The directory handle read_dir itself holds.
            !expected && !fd.contains("/proc/") && !fd.ends_with("/fd")
        })
        .collect();
    attempts.push(Attempt {
        name: "inherited-fds".into(),
        escaped: !unexpected.is_empty(),
        detail: format!("open: {fds:?}"),
    });

    // --- Controls. ---
    // PID 1 of its own pid namespace; the launcher stays outside.
    let pid = std::process::id();
    controls.push(Control {
        name: "pid-1-of-its-namespace".into(),
        ok: pid == 1,
        detail: format!("getpid() = {pid}"),
    });
    // rlimits are set, but never RLIMIT_AS (Go and Node reserve large address ranges).
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let limit = |name: &str| -> String {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| {
                l.get(name.len()..)
                    .unwrap_or_default()
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .unwrap_or_default()
    };
    let (address_space, open_files, core) = (
        limit("Max address space"),
        limit("Max open files"),
        limit("Max core file size"),
    );
    controls.push(Control {
        name: "rlimits-without-address-space-cap".into(),
        ok: address_space == "unlimited" && open_files != "unlimited" && core == "1",
        detail: format!("address space {address_space}, open files {open_files}, core {core}"),
    });
    controls.push(control(
        "write-tmp",
        std::fs::write("/tmp/probe-ok", b"ok").and_then(|()| std::fs::read("/tmp/probe-ok")),
    ));
    controls.push(control(
        "read-own-program",
        std::fs::read("/proc/self/exe").and_then(non_empty),
    ));
    if let Some(port) = targets.own_endpoint_port {
        controls.push(control("connect-own-endpoint", connect(port)));
    }
    if let Some(path) = token_file {
        // Never print the token: only its length.
        let token = std::fs::read(&path).and_then(non_empty);
        controls.push(Control {
            name: "read-token-file".into(),
            ok: token.is_ok(),
            detail: match token {
                Ok(bytes) => format!("{path}: {} bytes", bytes.len()),
                Err(error) => format!("{path}: {error}"),
            },
        });
    }
    Report { attempts, controls }
}

/// Mount points whose per-mount options are read-write, from `/proc/self/mountinfo`, leaving
/// out what a confined child may write: its /tmp, its /proc and the device binds in /dev.
pub fn writable_mounts(mountinfo: &str) -> Vec<String> {
    const WRITABLE: [&str; 5] = ["/tmp", "/proc", "/dev/null", "/dev/zero", "/dev/urandom"];
    mountinfo
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ').skip(4);
            let mount_point = fields.next()?;
            let options = fields.next()?;
            let writable = options.split(',').any(|option| option == "rw");
            (writable && !WRITABLE.contains(&mount_point)).then(|| mount_point.to_owned())
        })
        .collect()
}

fn mount_is_read_only(path: &str) -> std::io::Result<bool> {
    let path = std::ffi::CString::new(path).map_err(std::io::Error::other)?;
    // SAFETY: statvfs is plain data; all-zero is valid.
    let mut info: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `info` writable.
    if unsafe { libc::statvfs(path.as_ptr(), &raw mut info) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.f_flag & libc::ST_RDONLY != 0)
}

fn non_empty(bytes: Vec<u8>) -> std::io::Result<Vec<u8>> {
    if bytes.is_empty() {
        Err(std::io::Error::other("empty"))
    } else {
        Ok(bytes)
    }
}

fn control<T>(name: &str, result: std::io::Result<T>) -> Control {
    Control {
        name: name.to_owned(),
        ok: result.is_ok(),
        detail: match result {
            Ok(_) => "ok".to_owned(),
            Err(error) => error.to_string(),
        },
    }
}

fn close(fd: i32) {
    if fd >= 0 {
        // SAFETY: closing a descriptor this probe just created.
        unsafe { libc::close(fd) };
    }
}

/// A child that sleeps until killed.
fn spawn_sleeper() -> i32 {
    // SAFETY: the probe is single-threaded; the child only calls pause/_exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        loop {
            // SAFETY: pause takes nothing.
            unsafe { libc::pause() };
        }
    }
    pid
}

fn reap(pid: i32) {
    // SAFETY: kill and waitpid on our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let mut status = 0;
    // SAFETY: `status` is writable.
    unsafe { libc::waitpid(pid, &raw mut status, 0) };
}

fn wait_status(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: `status` is writable.
    unsafe { libc::waitpid(pid, &raw mut status, 0) };
    status
}

fn clone_attempt(name: &str, flag: i32) -> Attempt {
    let flags = (flag | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: raw clone without a new stack behaves like fork; the child exits at once.
    let rc = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    if rc == 0 {
        // SAFETY: leave the child immediately.
        unsafe { libc::_exit(0) };
    }
    if rc > 0 {
        wait_status(rc as i32);
    }
    syscall_attempt(name, rc)
}

fn x32_attempt() -> Attempt {
    // SAFETY: the probe is single-threaded; the child makes one syscall and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // x32 getpid (0x40000000 | 39 on x86_64): must be killed by the guard filter.
        // SAFETY: a syscall without arguments.
        unsafe { libc::syscall(0x4000_0000 | 39) };
        // SAFETY: leave the child.
        unsafe { libc::_exit(0) };
    }
    let status = wait_status(pid);
    let killed = libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS;
    Attempt {
        name: "x32-syscall".into(),
        escaped: !killed,
        detail: format!("child status {status:#x} (expected: killed by SIGSYS)"),
    }
}

fn exec_from_tmp_attempt() -> Attempt {
    let copy = std::fs::read("/proc/self/exe").and_then(|bytes| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write("/tmp/probe-copy", bytes)?;
        std::fs::set_permissions("/tmp/probe-copy", std::fs::Permissions::from_mode(0o4755))
    });
    if let Err(error) = copy {
        return Attempt {
            name: "exec-from-tmp".into(),
            escaped: false,
            detail: format!("could not even copy: {error}"),
        };
    }
    let result = std::process::Command::new("/tmp/probe-copy")
        .arg("--version")
        .output();
    Attempt {
        name: "exec-from-tmp".into(),
        escaped: result.as_ref().is_ok_and(|o| o.status.success()),
        detail: match result {
            Ok(output) => format!("ran: {:?}", output.status),
            Err(error) => format!("denied: {error}"),
        },
    }
}

fn fork_bomb(cap: u32) -> Attempt {
    let mut forked = 0u32;
    let mut failure = String::new();
    while forked < cap {
        let pid = spawn_sleeper();
        if pid < 0 {
            failure = std::io::Error::last_os_error().to_string();
            break;
        }
        forked += 1;
    }
    // We are PID 1 of our namespace: kill(-1) takes every other process in it.
    // SAFETY: kill takes a pid and a signal.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    loop {
        let mut status = 0;
        // SAFETY: `status` is writable.
        if unsafe { libc::waitpid(-1, &raw mut status, 0) } < 0 {
            break;
        }
    }
    Attempt {
        name: "fork-bomb".into(),
        escaped: forked >= cap,
        detail: format!("forked {forked} processes before: {failure}"),
    }
}

fn memory_bomb(mib: u64) -> Attempt {
    // SAFETY: the probe is single-threaded; the child only allocates and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let chunk = 16usize << 20;
        let mut held: Vec<Vec<u8>> = Vec::new();
        for _ in 0..(mib / 16) {
            // Touch every page so it is really charged.
            held.push(vec![1u8; chunk]);
        }
        std::hint::black_box(&held);
        // SAFETY: leave the child; it allocated everything.
        unsafe { libc::_exit(0) };
    }
    let status = wait_status(pid);
    let completed = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    Attempt {
        name: "memory-bomb".into(),
        escaped: completed,
        detail: format!("allocating {mib} MiB ended with status {status:#x} (expected: killed)"),
    }
}

fn connect_abstract(name: &str) -> std::io::Result<()> {
    // SAFETY: creating a socket takes no pointers.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: sockaddr_un is plain data; all-zero is valid.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = name.as_bytes();
    // Abstract: sun_path starts with a NUL byte.
    for (slot, byte) in address.sun_path.iter_mut().skip(1).zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    let length = std::mem::size_of::<libc::sa_family_t>() + 1 + bytes.len();
    // SAFETY: `address` is a valid sockaddr_un of the given length.
    let rc = unsafe { libc::connect(fd, (&raw const address).cast(), length as libc::socklen_t) };
    let result = if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    };
    close(fd);
    result
}

/// Parses `key=value` arguments (no secrets travel here).
pub fn parse_targets(args: impl Iterator<Item = String>) -> ProbeTargets {
    let mut targets = ProbeTargets {
        fork_bomb_cap: 4096,
        ..ProbeTargets::default()
    };
    for arg in args {
        let Some((key, value)) = arg.split_once('=') else {
            continue;
        };
        match key {
            "broker-pid" => targets.broker_pid = value.parse().ok(),
            "host-tcp" => targets.host_tcp_port = value.parse().ok(),
            "host-udp" => targets.host_udp_port = value.parse().ok(),
            "other-endpoint" => targets.other_endpoint_port = value.parse().ok(),
            "own-endpoint" => {
                targets.own_endpoint_port = value.rsplit(':').next().and_then(|p| p.parse().ok())
            }
            "abstract" => targets.abstract_socket = Some(value.to_owned()),
            "deny-read" => targets.deny_read.push(value.to_owned()),
            "read-only" => targets.read_only.push(value.to_owned()),
            "memory-bomb-mib" => targets.memory_bomb_mib = value.parse().unwrap_or(0),
            "fork-bomb-cap" => targets.fork_bomb_cap = value.parse().unwrap_or(4096),
            _ => {}
        }
    }
    targets
}

/// `serve` mode: prints the token's length and `ready`, echoes stdin lines until EOF, so a test
/// can inspect the running sandbox from outside.
pub fn serve() -> i32 {
    let token_len = std::env::vars()
        .find(|(k, _)| k.ends_with("_FILE"))
        .and_then(|(_, path)| std::fs::read(path).ok())
        .map_or(0, |t| t.len());
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "ready token-bytes={token_len}");
    let _ = stdout.flush();
    let mut stdin = std::io::stdin();
    let mut buffer = [0u8; 1024];
    while let Ok(n) = stdin.read(&mut buffer) {
        if n == 0 {
            break;
        }
        let _ = stdout.write_all(buffer.get(..n).unwrap_or_default());
        let _ = stdout.flush();
    }
    0
}
