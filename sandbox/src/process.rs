//! Broker-side helpers: how the tokio process starts the launcher and controls a sandbox
//! without `unsafe` of its own and without any namespace work in `pre_exec`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;

use crate::confine::CONTROL_FD;
use crate::plan::IdMapping;

/// Makes `fd` the launcher's fd 3 (the control socket). The `pre_exec` closure makes exactly
/// one async-signal-safe system call and allocates nothing (sandbox-notes §1.2).
pub fn map_control_fd(command: &mut std::process::Command, fd: RawFd) {
    let closure = move || {
        let rc = if fd == CONTROL_FD {
            // Already in place: only clear close-on-exec.
            // SAFETY: F_SETFD on an fd this (forked) process owns.
            unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }
        } else {
            // SAFETY: dup2 onto fd 3; the copy does not carry close-on-exec.
            unsafe { libc::dup2(fd, CONTROL_FD) }
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the closure only calls dup2/fcntl (async-signal-safe) and does not allocate.
    unsafe { command.pre_exec(closure) };
}

/// The broker's effective uid and gid.
pub fn effective_ids() -> (u32, u32) {
    // SAFETY: geteuid cannot fail and takes no arguments.
    let uid = unsafe { libc::geteuid() };
    // SAFETY: getegid cannot fail and takes no arguments.
    let gid = unsafe { libc::getegid() };
    (uid, gid)
}

/// Writes the launcher's uid/gid maps from outside its user namespace (user_namespaces(7)):
/// one line mapping sandbox 0 to the session's host id. An unprivileged broker may only map its
/// own ids and must deny `setgroups` first (CVE-2014-8989).
pub fn write_id_maps(pid: u32, ids: IdMapping) -> io::Result<()> {
    let base = format!("/proc/{pid}");
    let (uid, gid) = match ids {
        IdMapping::Distinct { host_uid, host_gid } => (host_uid, host_gid),
        IdMapping::OwnIds { host_uid, host_gid } => {
            std::fs::write(format!("{base}/setgroups"), b"deny")?;
            (host_uid, host_gid)
        }
    };
    std::fs::write(format!("{base}/uid_map"), format!("0 {uid} 1\n"))?;
    std::fs::write(format!("{base}/gid_map"), format!("0 {gid} 1\n"))?;
    Ok(())
}

/// A pid file descriptor: signals reach exactly the process it was opened for, even after its
/// pid is reused.
#[derive(Debug)]
pub struct Pidfd(OwnedFd);

impl From<OwnedFd> for Pidfd {
    /// A pidfd received from the launcher (`SCM_RIGHTS`).
    fn from(fd: OwnedFd) -> Self {
        Self(fd)
    }
}

impl Pidfd {
    pub fn open(pid: i32) -> io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        // SAFETY: pidfd_open returned a fresh descriptor we own.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn signal(&self, signal: i32) -> io::Result<()> {
        // SAFETY: pidfd_send_signal with a NULL siginfo and no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
