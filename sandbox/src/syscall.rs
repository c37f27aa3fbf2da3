//! Every privileged operation confinement performs, behind one trait (the youki habit): the
//! real implementation ([`crate::linux::Linux`]) makes the system calls; the recording fake
//! ([`crate::fake::Recorder`]) lets the *order* of confinement be unit-tested without root.

use std::os::fd::RawFd;

use crate::plan::{Errno, LandlockOutcome, LandlockPlan};

pub type SysResult<T> = Result<T, Errno>;

/// The two sides of `fork`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    Parent { child: i32 },
    Child,
}

/// A file descriptor passed along with a control message.
pub type PassedFd = Option<RawFd>;

pub trait Syscall {
    /// `close_range(first, ~0, 0)`: closes every descriptor from `first` on.
    fn close_from(&mut self, first: RawFd) -> SysResult<()>;
    fn close(&mut self, fd: RawFd) -> SysResult<()>;
    fn getpid(&mut self) -> i32;
    /// Opens an existing file write-only and writes `data` (cgroup files).
    fn write_file(&mut self, path: &str, data: &[u8]) -> SysResult<()>;
    /// `unshare(2)` with `CLONE_NEW*` flags.
    fn unshare(&mut self, flags: i32) -> SysResult<()>;
    /// Sends one message on the control socket, optionally with a descriptor (`SCM_RIGHTS`).
    fn control_send(&mut self, message: &[u8], fd: PassedFd) -> SysResult<()>;
    /// Receives one message from the control socket; 0 bytes means the broker went away.
    fn control_recv(&mut self, buffer: &mut [u8]) -> SysResult<usize>;
    /// `setgroups(0, NULL)`.
    fn clear_groups(&mut self) -> SysResult<()>;
    /// `setresgid(0,0,0)` then `setresuid(0,0,0)`: become the namespace's mapped root, which
    /// is the session's host uid from outside.
    fn become_mapped_root(&mut self) -> SysResult<()>;
    /// Brings `lo` up in the current network namespace (`SIOCSIFFLAGS`).
    fn loopback_up(&mut self) -> SysResult<()>;
    /// A listening TCP socket on 127.0.0.1, any port: returns it and the port.
    fn listen_loopback(&mut self) -> SysResult<(RawFd, u16)>;
    /// `pipe2(O_CLOEXEC)`: (read end, write end).
    fn pipe(&mut self) -> SysResult<(RawFd, RawFd)>;
    fn fork(&mut self) -> SysResult<Forked>;
    /// `PR_SET_PDEATHSIG`, then checks the parent did not die before it took effect.
    fn set_parent_death_signal(&mut self, signal: i32) -> SysResult<()>;
    /// `open(path, O_PATH | O_CLOEXEC)`.
    fn open_path(&mut self, path: &str) -> SysResult<RawFd>;
    fn mount(
        &mut self,
        source: Option<&str>,
        target: &str,
        fstype: Option<&str>,
        flags: u64,
        data: Option<&str>,
    ) -> SysResult<()>;
    /// The `MS_*` flags a read-only remount of `path` must keep (the "locked" flags of a mount
    /// inherited into a user namespace, bubblewrap's `bind-mount.c`).
    fn mount_flags(&mut self, path: &str) -> SysResult<u64>;
    /// `mount_setattr(path, AT_RECURSIVE)` setting read-only, nosuid and nodev on the mount at
    /// `path` and every mount below it (Linux 5.12; `ENOSYS` before).
    fn mount_setattr_read_only(&mut self, path: &str) -> SysResult<()>;
    fn umount_detach(&mut self, target: &str) -> SysResult<()>;
    fn mkdir(&mut self, path: &str, mode: u32) -> SysResult<()>;
    /// Creates an empty file to bind a file onto.
    fn create_file(&mut self, path: &str, mode: u32) -> SysResult<()>;
    fn symlink(&mut self, target: &str, link: &str) -> SysResult<()>;
    fn chdir(&mut self, path: &str) -> SysResult<()>;
    fn pivot_root(&mut self, new_root: &str, put_old: &str) -> SysResult<()>;
    fn sethostname(&mut self, name: &str) -> SysResult<()>;
    fn setrlimit(&mut self, resource: u32, soft: u64, hard: u64) -> SysResult<()>;
    fn dup2(&mut self, old: RawFd, new: RawFd) -> SysResult<()>;
    /// Sets `FD_CLOEXEC`.
    fn set_cloexec(&mut self, fd: RawFd) -> SysResult<()>;
    /// Writes all of `data`.
    fn write_all(&mut self, fd: RawFd, data: &[u8]) -> SysResult<()>;
    /// `PR_SET_SECUREBITS`.
    fn set_securebits(&mut self, bits: u64) -> SysResult<()>;
    /// The highest capability number the kernel knows.
    fn last_capability(&mut self) -> SysResult<u32>;
    /// `PR_CAPBSET_DROP`.
    fn drop_bounding_capability(&mut self, capability: u32) -> SysResult<()>;
    /// `PR_CAP_AMBIENT_CLEAR_ALL`.
    fn clear_ambient_capabilities(&mut self) -> SysResult<()>;
    /// `capset` with empty effective, permitted and inheritable sets.
    fn clear_capabilities(&mut self) -> SysResult<()>;
    fn set_no_new_privs(&mut self) -> SysResult<()>;
    /// Builds and applies the landlock ruleset (ABI-aware, see [`crate::linux`]).
    fn landlock(&mut self, plan: &LandlockPlan) -> SysResult<LandlockOutcome>;
    /// Installs one seccomp filter (`SECCOMP_SET_MODE_FILTER`).
    fn seccomp(&mut self, program: &[policies::sock_filter]) -> SysResult<()>;
    /// `execve`; returns only on failure.
    fn execve(&mut self, program: &str, argv: &[String], env: &[String]) -> Errno;
    /// `_exit`; the fake returns so tests can inspect what happened.
    fn exit(&mut self, code: i32);
}
