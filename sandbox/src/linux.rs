//! The real [`Syscall`] implementation. Runs only in the launcher and its child: both are
//! single-threaded processes, so allocating between `fork` and `execve` is safe here (it is not
//! in a `pre_exec` of a multi-threaded process, sandbox-notes §1.2).

use std::ffi::CString;
use std::os::fd::{IntoRawFd, RawFd};

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, path_beneath_rules,
};

use crate::plan::{Errno, LandlockOutcome, LandlockPlan, PartState};
use crate::syscall::{Forked, PassedFd, SysResult, Syscall};

/// The real system calls. `control` is the launcher's control socket.
#[derive(Debug)]
pub struct Linux {
    pub control: RawFd,
}

fn c_string(text: &str) -> SysResult<CString> {
    CString::new(text).map_err(|_| Errno(libc::EINVAL))
}

fn check(rc: libc::c_int) -> SysResult<()> {
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}

fn check_long(rc: libc::c_long) -> SysResult<()> {
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// The kernel's landlock ABI version, 0 when landlock is unsupported or disabled.
pub fn landlock_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a NULL attribute, size 0 and the VERSION flag the call only returns a number.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    i32::try_from(version.max(0)).unwrap_or(0)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const policies::sock_filter,
}

impl Syscall for Linux {
    fn close_from(&mut self, first: RawFd) -> SysResult<()> {
        let first = libc::c_uint::try_from(first).map_err(|_| Errno(libc::EINVAL))?;
        // SAFETY: close_range only closes descriptors of this single-threaded process; nothing
        // in this process holds them afterwards (we only ever keep fds below `first`).
        check_long(unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) })
    }

    fn close(&mut self, fd: RawFd) -> SysResult<()> {
        // SAFETY: the caller owns `fd` and does not use it afterwards.
        check(unsafe { libc::close(fd) })
    }

    fn getpid(&mut self) -> i32 {
        std::process::id() as i32
    }

    fn write_file(&mut self, path: &str, data: &[u8]) -> SysResult<()> {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.write_all(data)?;
        Ok(())
    }

    fn unshare(&mut self, flags: i32) -> SysResult<()> {
        // SAFETY: unshare takes only flags; the launcher is single-threaded as CLONE_NEWUSER
        // requires.
        check(unsafe { libc::unshare(flags) })
    }

    fn control_send(&mut self, message: &[u8], fd: PassedFd) -> SysResult<()> {
        crate::ipc::send_message(self.control, message, fd).map_err(Errno::from)
    }

    fn control_recv(&mut self, buffer: &mut [u8]) -> SysResult<usize> {
        let (length, _fd) =
            crate::ipc::receive_message(self.control, buffer).map_err(Errno::from)?;
        Ok(length)
    }

    fn clear_groups(&mut self) -> SysResult<()> {
        // SAFETY: an empty group list with a NULL pointer is valid for setgroups(2).
        check(unsafe { libc::setgroups(0, std::ptr::null()) })
    }

    fn become_mapped_root(&mut self) -> SysResult<()> {
        // SAFETY: plain id-setting call.
        check(unsafe { libc::setresgid(0, 0, 0) })?;
        // SAFETY: plain id-setting call.
        check(unsafe { libc::setresuid(0, 0, 0) })
    }

    fn loopback_up(&mut self) -> SysResult<()> {
        // SAFETY: creating a socket has no memory-safety preconditions.
        let socket =
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if socket < 0 {
            return Err(Errno::last());
        }
        // SAFETY: ifreq is plain data; all-zero is valid.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *slot = *byte as libc::c_char;
        }
        // SAFETY: `request` is a valid ifreq naming "lo"; SIOCGIFFLAGS fills its flags.
        let result = check(unsafe { libc::ioctl(socket, libc::SIOCGIFFLAGS, &raw mut request) })
            .and_then(|()| {
                // SAFETY: SIOCGIFFLAGS set the `ifru_flags` member of the union.
                let flags = unsafe { request.ifr_ifru.ifru_flags };
                request.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
                // SAFETY: `request` is a valid ifreq with the new flags.
                check(unsafe { libc::ioctl(socket, libc::SIOCSIFFLAGS, &raw const request) })
            });
        // SAFETY: `socket` is ours and not used afterwards.
        unsafe { libc::close(socket) };
        result
    }

    fn listen_loopback(&mut self) -> SysResult<(RawFd, u16)> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        Ok((listener.into_raw_fd(), port))
    }

    fn pipe(&mut self) -> SysResult<(RawFd, RawFd)> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid array of two ints.
        check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
        Ok((fds[0], fds[1]))
    }

    fn fork(&mut self) -> SysResult<Forked> {
        // SAFETY: the launcher is single-threaded, so the child may keep running ordinary code.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => Err(Errno::last()),
            0 => Ok(Forked::Child),
            child => Ok(Forked::Parent { child }),
        }
    }

    fn set_parent_death_signal(&mut self, signal: i32) -> SysResult<()> {
        // SAFETY: PR_SET_PDEATHSIG takes a signal number.
        check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) })
    }

    fn mount(
        &mut self,
        source: Option<&str>,
        target: &str,
        fstype: Option<&str>,
        flags: u64,
        data: Option<&str>,
    ) -> SysResult<()> {
        let source = source.map(c_string).transpose()?;
        let target = c_string(target)?;
        let fstype = fstype.map(c_string).transpose()?;
        let data = data.map(c_string).transpose()?;
        let pointer =
            |value: &Option<CString>| value.as_ref().map_or(std::ptr::null(), |v| v.as_ptr());
        // SAFETY: every pointer is NULL or a NUL-terminated string alive for the call.
        check(unsafe {
            libc::mount(
                pointer(&source),
                target.as_ptr(),
                pointer(&fstype),
                flags as libc::c_ulong,
                pointer(&data).cast(),
            )
        })
    }

    fn open_path(&mut self, path: &str) -> SysResult<RawFd> {
        let path = c_string(path)?;
        // SAFETY: `path` is NUL-terminated; O_PATH opens no file contents.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(Errno::last());
        }
        Ok(fd)
    }

    fn mount_flags(&mut self, path: &str) -> SysResult<u64> {
        let path = c_string(path)?;
        // SAFETY: statvfs is plain data; all-zero is valid.
        let mut info: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is NUL-terminated and `info` writable.
        check(unsafe { libc::statvfs(path.as_ptr(), &raw mut info) })?;
        let flags = info.f_flag;
        let mut keep = 0u64;
        for (st, ms) in [
            (libc::ST_NOSUID, libc::MS_NOSUID),
            (libc::ST_NODEV, libc::MS_NODEV),
            (libc::ST_NOEXEC, libc::MS_NOEXEC),
            (libc::ST_NOATIME, libc::MS_NOATIME),
            (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
            (libc::ST_RELATIME, libc::MS_RELATIME),
        ] {
            if flags & st != 0 {
                keep |= ms;
            }
        }
        Ok(keep)
    }

    fn mount_setattr_read_only(&mut self, path: &str) -> SysResult<()> {
        let path = c_string(path)?;
        let attr = libc::mount_attr {
            attr_set: libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        // SAFETY: `path` is NUL-terminated; `attr` is a valid `struct mount_attr` of the size
        // passed, alive for the call; the kernel only reads it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                path.as_ptr(),
                libc::AT_RECURSIVE as libc::c_uint,
                &raw const attr,
                std::mem::size_of::<libc::mount_attr>(),
            )
        };
        if rc < 0 {
            return Err(Errno::last());
        }
        Ok(())
    }

    fn umount_detach(&mut self, target: &str) -> SysResult<()> {
        let target = c_string(target)?;
        // SAFETY: `target` is NUL-terminated.
        check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) })
    }

    fn mkdir(&mut self, path: &str, mode: u32) -> SysResult<()> {
        let path = c_string(path)?;
        // SAFETY: `path` is NUL-terminated.
        check(unsafe { libc::mkdir(path.as_ptr(), mode) })
    }

    fn create_file(&mut self, path: &str, mode: u32) -> SysResult<()> {
        let path = c_string(path)?;
        // SAFETY: `path` is NUL-terminated.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                mode,
            )
        };
        if fd < 0 {
            return Err(Errno::last());
        }
        self.close(fd)
    }

    fn symlink(&mut self, target: &str, link: &str) -> SysResult<()> {
        let target = c_string(target)?;
        let link = c_string(link)?;
        // SAFETY: both are NUL-terminated.
        check(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) })
    }

    fn chdir(&mut self, path: &str) -> SysResult<()> {
        let path = c_string(path)?;
        // SAFETY: `path` is NUL-terminated.
        check(unsafe { libc::chdir(path.as_ptr()) })
    }

    fn pivot_root(&mut self, new_root: &str, put_old: &str) -> SysResult<()> {
        let new_root = c_string(new_root)?;
        let put_old = c_string(put_old)?;
        // SAFETY: both are NUL-terminated; pivot_root has no glibc wrapper.
        check_long(unsafe {
            libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr())
        })
    }

    fn sethostname(&mut self, name: &str) -> SysResult<()> {
        // SAFETY: pointer and length describe `name`.
        check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
    }

    fn setrlimit(&mut self, resource: u32, soft: u64, hard: u64) -> SysResult<()> {
        let limit = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: `limit` is a valid rlimit.
        check(unsafe { libc::setrlimit(resource as libc::__rlimit_resource_t, &raw const limit) })
    }

    fn dup2(&mut self, old: RawFd, new: RawFd) -> SysResult<()> {
        // SAFETY: dup2 on descriptors this process owns; `new` is replaced on purpose.
        check(unsafe { libc::dup2(old, new) })
    }

    fn set_cloexec(&mut self, fd: RawFd) -> SysResult<()> {
        // SAFETY: F_SETFD on a descriptor we own.
        check(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) })
    }

    fn write_all(&mut self, fd: RawFd, mut data: &[u8]) -> SysResult<()> {
        while !data.is_empty() {
            // SAFETY: pointer and length describe `data`.
            let written = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
            if written < 0 {
                let errno = Errno::last();
                if errno.0 == libc::EINTR {
                    continue;
                }
                return Err(errno);
            }
            data = data.get(written as usize..).unwrap_or_default();
        }
        Ok(())
    }

    fn set_securebits(&mut self, bits: u64) -> SysResult<()> {
        // SAFETY: PR_SET_SECUREBITS takes a bit mask.
        check(unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits as libc::c_ulong, 0, 0, 0) })
    }

    fn last_capability(&mut self) -> SysResult<u32> {
        let text = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")?;
        text.trim().parse().map_err(|_| Errno(libc::EINVAL))
    }

    fn drop_bounding_capability(&mut self, capability: u32) -> SysResult<()> {
        // SAFETY: PR_CAPBSET_DROP takes a capability number.
        check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, capability as libc::c_ulong, 0, 0, 0) })
    }

    fn clear_ambient_capabilities(&mut self) -> SysResult<()> {
        // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointers.
        check(unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            )
        })
    }

    fn clear_capabilities(&mut self) -> SysResult<()> {
        const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [CapData::default(); 2];
        // SAFETY: header and a two-element data array, as version 3 of capset(2) requires.
        check_long(unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) })
    }

    fn set_no_new_privs(&mut self) -> SysResult<()> {
        // SAFETY: PR_SET_NO_NEW_PRIVS takes a flag.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
    }

    fn landlock(&mut self, plan: &LandlockPlan) -> SysResult<LandlockOutcome> {
        apply_landlock(plan)
    }

    fn seccomp(&mut self, program: &[policies::sock_filter]) -> SysResult<()> {
        let program_len =
            libc::c_ushort::try_from(program.len()).map_err(|_| Errno(libc::E2BIG))?;
        let fprog = SockFprog {
            len: program_len,
            filter: program.as_ptr(),
        };
        // SAFETY: `fprog` points at `program`, alive for the call; the kernel copies it.
        check_long(unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &raw const fprog,
            )
        })
    }

    fn execve(&mut self, program: &str, argv: &[String], env: &[String]) -> Errno {
        let to_c = |items: &[String]| -> SysResult<Vec<CString>> {
            items.iter().map(|item| c_string(item)).collect()
        };
        let (program, argv, env) = match (c_string(program), to_c(argv), to_c(env)) {
            (Ok(program), Ok(argv), Ok(env)) => (program, argv, env),
            _ => return Errno(libc::EINVAL),
        };
        let mut argv_pointers: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_pointers.push(std::ptr::null());
        let mut env_pointers: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        env_pointers.push(std::ptr::null());
        // SAFETY: NUL-terminated strings in NULL-terminated arrays, alive for the call.
        unsafe {
            libc::execve(
                program.as_ptr(),
                argv_pointers.as_ptr(),
                env_pointers.as_ptr(),
            )
        };
        Errno::last()
    }

    fn exit(&mut self, code: i32) {
        // SAFETY: _exit never returns and runs no destructors or atexit handlers, which is
        // what a forked child that failed to exec must do.
        unsafe { libc::_exit(code) }
    }
}

/// Applies landlock with every part the kernel supports as a hard requirement
/// (`CompatLevel::HardRequirement`): a part the kernel has is enforced fully or the stage
/// fails; a part it lacks is reported as unavailable or degraded, never silently dropped
/// (the rust-landlock `CompatLevel` habit).
fn apply_landlock(plan: &LandlockPlan) -> SysResult<LandlockOutcome> {
    let kernel_abi = landlock_abi();
    let mut outcome = LandlockOutcome {
        abi: kernel_abi,
        ..LandlockOutcome::default()
    };
    if kernel_abi < 1 {
        return Ok(outcome);
    }
    // Filesystem rights: ABI 5 is the full set we use (refer, truncate, ioctl_dev); older
    // kernels enforce fewer rights, reported as degraded.
    let (fs_abi, fs_state) = match kernel_abi {
        1 => (ABI::V1, PartState::Degraded),
        2 => (ABI::V2, PartState::Degraded),
        3 => (ABI::V3, PartState::Degraded),
        4 => (ABI::V4, PartState::Degraded),
        _ => (ABI::V5, PartState::Enforced),
    };
    let failed = |_| Errno(libc::ENOTSUP);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(fs_abi))
        .map_err(failed)?;
    let handles_net = kernel_abi >= 4;
    if handles_net {
        ruleset = ruleset
            .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)
            .map_err(failed)?;
    }
    let handles_scope = kernel_abi >= 6;
    if handles_scope {
        ruleset = ruleset.scope(Scope::from_all(ABI::V6)).map_err(failed)?;
    }
    let read = AccessFs::from_read(fs_abi);
    let write = AccessFs::from_all(fs_abi) & !AccessFs::Execute;
    let mut created = ruleset
        .create()
        .map_err(failed)?
        .add_rules(path_beneath_rules(&plan.read_only, read))
        .map_err(failed)?
        .add_rules(path_beneath_rules(&plan.read_write, write))
        .map_err(failed)?;
    if handles_net {
        for port in &plan.connect_tcp {
            created = created
                .add_rule(NetPort::new(*port, AccessNet::ConnectTcp))
                .map_err(failed)?;
        }
    }
    let status = created.restrict_self().map_err(failed)?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(Errno(libc::ENOTSUP));
    }
    outcome.fs = fs_state;
    if handles_net {
        outcome.net = PartState::Enforced;
    }
    if handles_scope {
        outcome.scope = PartState::Enforced;
    }
    Ok(outcome)
}
