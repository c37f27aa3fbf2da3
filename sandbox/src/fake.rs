//! A recording [`Syscall`] fake: every call is appended to [`Recorder::calls`] as a short text,
//! nothing touches the kernel. `fork` returns whichever side the test asks for, and any call
//! can be made to fail, so the order of confinement and the stage named by each failure are
//! unit-tested without root.

use std::os::fd::RawFd;

use crate::ipc::{BrokerMessage, MAX_MESSAGE};
use crate::plan::{Errno, LandlockOutcome, LandlockPlan, PartState};
use crate::syscall::{Forked, PassedFd, SysResult, Syscall};

#[derive(Debug)]
pub struct Recorder {
    pub calls: Vec<String>,
    /// Which side of `fork` to continue on.
    pub fork_as_child: bool,
    /// The first call whose text starts with this prefix fails with `fail_errno`.
    pub fail_on: Option<String>,
    /// The errno of that failure (`EPERM` unless a test says otherwise).
    pub fail_errno: i32,
    /// What `control_recv` returns, in order.
    pub inbox: Vec<Vec<u8>>,
    /// Token bytes written to pipes (to assert where the token went).
    pub written: Vec<(RawFd, Vec<u8>)>,
    next_fd: RawFd,
}

impl Recorder {
    pub fn new(fork_as_child: bool) -> Self {
        let maps = BrokerMessage::MapsWritten.encode().unwrap_or_default();
        Self {
            calls: Vec::new(),
            fork_as_child,
            fail_on: None,
            fail_errno: libc::EPERM,
            inbox: vec![maps],
            written: Vec::new(),
            next_fd: 10,
        }
    }

    /// Index of the first call starting with `prefix`.
    pub fn position(&self, prefix: &str) -> Option<usize> {
        self.calls.iter().position(|call| call.starts_with(prefix))
    }

    fn record(&mut self, call: String) -> SysResult<()> {
        let fails = self
            .fail_on
            .as_ref()
            .is_some_and(|prefix| call.starts_with(prefix.as_str()));
        self.calls.push(call);
        if fails {
            self.fail_on = None;
            return Err(Errno(self.fail_errno));
        }
        Ok(())
    }

    fn fresh_fd(&mut self) -> RawFd {
        self.next_fd += 1;
        self.next_fd
    }
}

impl Syscall for Recorder {
    fn close_from(&mut self, first: RawFd) -> SysResult<()> {
        self.record(format!("close_from {first}"))
    }
    fn close(&mut self, fd: RawFd) -> SysResult<()> {
        self.record(format!("close {fd}"))
    }
    fn getpid(&mut self) -> i32 {
        4242
    }
    fn write_file(&mut self, path: &str, data: &[u8]) -> SysResult<()> {
        self.record(format!(
            "write_file {path} {}",
            String::from_utf8_lossy(data)
        ))
    }
    fn unshare(&mut self, flags: i32) -> SysResult<()> {
        let mut names = Vec::new();
        for (flag, name) in [
            (libc::CLONE_NEWUSER, "user"),
            (libc::CLONE_NEWNS, "mount"),
            (libc::CLONE_NEWNET, "net"),
            (libc::CLONE_NEWIPC, "ipc"),
            (libc::CLONE_NEWUTS, "uts"),
            (libc::CLONE_NEWCGROUP, "cgroup"),
            (libc::CLONE_NEWPID, "pid"),
        ] {
            if flags & flag != 0 {
                names.push(name);
            }
        }
        self.record(format!("unshare {}", names.join(",")))
    }
    fn control_send(&mut self, message: &[u8], fd: PassedFd) -> SysResult<()> {
        let text = String::from_utf8_lossy(message);
        self.record(format!("control_send {text} fd={fd:?}"))
    }
    fn control_recv(&mut self, buffer: &mut [u8]) -> SysResult<usize> {
        self.record("control_recv".to_owned())?;
        if self.inbox.is_empty() {
            return Ok(0);
        }
        let message = self.inbox.remove(0);
        let length = message.len().min(buffer.len()).min(MAX_MESSAGE);
        if let (Some(target), Some(source)) = (buffer.get_mut(..length), message.get(..length)) {
            target.copy_from_slice(source);
        }
        Ok(length)
    }
    fn clear_groups(&mut self) -> SysResult<()> {
        self.record("clear_groups".to_owned())
    }
    fn become_mapped_root(&mut self) -> SysResult<()> {
        self.record("become_mapped_root".to_owned())
    }
    fn loopback_up(&mut self) -> SysResult<()> {
        self.record("loopback_up".to_owned())
    }
    fn listen_loopback(&mut self) -> SysResult<(RawFd, u16)> {
        self.record("listen_loopback".to_owned())?;
        Ok((self.fresh_fd(), 40_000))
    }
    fn pipe(&mut self) -> SysResult<(RawFd, RawFd)> {
        self.record("pipe".to_owned())?;
        Ok((self.fresh_fd(), self.fresh_fd()))
    }
    fn fork(&mut self) -> SysResult<Forked> {
        self.record("fork".to_owned())?;
        Ok(if self.fork_as_child {
            Forked::Child
        } else {
            Forked::Parent { child: 4343 }
        })
    }
    fn set_parent_death_signal(&mut self, signal: i32) -> SysResult<()> {
        self.record(format!("set_parent_death_signal {signal}"))
    }
    fn mount(
        &mut self,
        source: Option<&str>,
        target: &str,
        fstype: Option<&str>,
        flags: u64,
        data: Option<&str>,
    ) -> SysResult<()> {
        self.record(format!(
            "mount {} {target} {} {flags:#x} {}",
            source.unwrap_or("-"),
            fstype.unwrap_or("-"),
            data.unwrap_or("-")
        ))
    }
    fn open_path(&mut self, path: &str) -> SysResult<RawFd> {
        self.record(format!("open_path {path}"))?;
        Ok(self.fresh_fd())
    }
    fn mount_flags(&mut self, path: &str) -> SysResult<u64> {
        self.record(format!("mount_flags {path}"))?;
        Ok(0)
    }
    fn mount_setattr_read_only(&mut self, path: &str) -> SysResult<()> {
        self.record(format!("mount_setattr_read_only {path}"))
    }
    fn umount_detach(&mut self, target: &str) -> SysResult<()> {
        self.record(format!("umount_detach {target}"))
    }
    fn mkdir(&mut self, path: &str, mode: u32) -> SysResult<()> {
        self.record(format!("mkdir {path} {mode:o}"))
    }
    fn create_file(&mut self, path: &str, mode: u32) -> SysResult<()> {
        self.record(format!("create_file {path} {mode:o}"))
    }
    fn symlink(&mut self, target: &str, link: &str) -> SysResult<()> {
        self.record(format!("symlink {link} -> {target}"))
    }
    fn chdir(&mut self, path: &str) -> SysResult<()> {
        self.record(format!("chdir {path}"))
    }
    fn pivot_root(&mut self, new_root: &str, put_old: &str) -> SysResult<()> {
        self.record(format!("pivot_root {new_root} {put_old}"))
    }
    fn sethostname(&mut self, name: &str) -> SysResult<()> {
        self.record(format!("sethostname {name}"))
    }
    fn setrlimit(&mut self, resource: u32, soft: u64, hard: u64) -> SysResult<()> {
        self.record(format!("setrlimit {resource} {soft} {hard}"))
    }
    fn dup2(&mut self, old: RawFd, new: RawFd) -> SysResult<()> {
        self.record(format!("dup2 {old} {new}"))
    }
    fn set_cloexec(&mut self, fd: RawFd) -> SysResult<()> {
        self.record(format!("set_cloexec {fd}"))
    }
    fn write_all(&mut self, fd: RawFd, data: &[u8]) -> SysResult<()> {
        self.written.push((fd, data.to_vec()));
        self.record(format!("write_all {fd} ({} bytes)", data.len()))
    }
    fn set_securebits(&mut self, bits: u64) -> SysResult<()> {
        self.record(format!("set_securebits {bits:#x}"))
    }
    fn last_capability(&mut self) -> SysResult<u32> {
        self.record("last_capability".to_owned())?;
        Ok(40)
    }
    fn drop_bounding_capability(&mut self, capability: u32) -> SysResult<()> {
        self.record(format!("drop_bounding_capability {capability}"))
    }
    fn clear_ambient_capabilities(&mut self) -> SysResult<()> {
        self.record("clear_ambient_capabilities".to_owned())
    }
    fn clear_capabilities(&mut self) -> SysResult<()> {
        self.record("clear_capabilities".to_owned())
    }
    fn set_no_new_privs(&mut self) -> SysResult<()> {
        self.record("set_no_new_privs".to_owned())
    }
    fn landlock(&mut self, plan: &LandlockPlan) -> SysResult<LandlockOutcome> {
        self.record(format!("landlock connect={:?}", plan.connect_tcp))?;
        Ok(LandlockOutcome {
            abi: 7,
            fs: PartState::Enforced,
            net: PartState::Enforced,
            scope: PartState::Enforced,
        })
    }
    fn seccomp(&mut self, program: &[policies::sock_filter]) -> SysResult<()> {
        self.record(format!("seccomp ({} instructions)", program.len()))
    }
    fn execve(&mut self, program: &str, argv: &[String], env: &[String]) -> Errno {
        let _ = self.record(format!("execve {program} {argv:?} {env:?}"));
        Errno(0)
    }
    fn exit(&mut self, code: i32) {
        let _ = self.record(format!("exit {code}"));
    }
}
