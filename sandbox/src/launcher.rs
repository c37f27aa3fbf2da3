//! The launcher process: the broker binary re-exec'd as `__launcher`, single-threaded, before
//! any async runtime exists. It reads the plan from the control socket (fd 3), runs
//! [`confine`], then stays outside the child's pid namespace as its monitor: it reports the
//! start (or the failed stage) to the broker, kills the sandbox when the broker closes the
//! control socket, and exits with the child's status.

use std::os::fd::RawFd;

use zeroize::Zeroizing;

use crate::confine::{CONTROL_FD, Role, confine};
use crate::ipc::{
    BrokerMessage, LauncherMessage, MAX_MESSAGE, STATUS_RECORD_LEN, StatusRecord, receive_message,
    send_message,
};
use crate::linux::Linux;
use crate::plan::{Errno, LandlockOutcome, LaunchPlan, Stage, StageError};

/// Exit status of a launcher that could not start the child.
pub const LAUNCH_FAILED: i32 = 127;

/// Runs the launcher; returns the process exit code.
pub fn run() -> i32 {
    let control = CONTROL_FD;
    let (plan, token) = match read_request(control) {
        Ok(request) => request,
        Err(errno) => {
            report(control, StageError::new(Stage::Sanitize, errno));
            return LAUNCH_FAILED;
        }
    };
    let Some(arch) = policies::Arch::native() else {
        report(
            control,
            StageError::new(Stage::Seccomp, Errno(libc::ENOTSUP)),
        );
        return LAUNCH_FAILED;
    };
    let programs = match policies::seccomp_programs(arch) {
        Ok(programs) => programs
            .into_iter()
            .map(|(_, program)| program)
            .collect::<Vec<_>>(),
        Err(_) => {
            report(
                control,
                StageError::new(Stage::Seccomp, Errno(libc::EINVAL)),
            );
            return LAUNCH_FAILED;
        }
    };
    let mut sys = Linux { control };
    let outcome = confine(
        &mut sys,
        &plan,
        token.as_ref().map(|t| t.as_slice()),
        &programs,
    );
    // The child has its copy; ours goes now.
    drop(token);
    match outcome {
        Ok(Role::Monitor { child, status, .. }) => monitor(control, child, status),
        Ok(Role::ChildFinished(_)) => LAUNCH_FAILED,
        Err(error) => {
            report(control, error);
            LAUNCH_FAILED
        }
    }
}

/// The plan and, in pipe mode, the token (zeroized on drop).
type Request = (LaunchPlan, Option<Zeroizing<Vec<u8>>>);

fn read_request(control: RawFd) -> Result<Request, Errno> {
    let mut buffer = Zeroizing::new(vec![0u8; MAX_MESSAGE]);
    let (length, _) = receive_message(control, &mut buffer)?;
    let plan = match BrokerMessage::decode(buffer.get(..length).unwrap_or_default()) {
        Ok(BrokerMessage::Plan(plan)) => *plan,
        _ => return Err(Errno(libc::EPROTO)),
    };
    let token = if plan.token.is_some() {
        let (length, _) = receive_message(control, &mut buffer)?;
        match BrokerMessage::decode(buffer.get(..length).unwrap_or_default()) {
            Ok(BrokerMessage::Token(token)) => Some(token),
            _ => return Err(Errno(libc::EPROTO)),
        }
    } else {
        None
    };
    Ok((plan, token))
}

fn report(control: RawFd, error: StageError) {
    let _ = send_message(control, &LauncherMessage::Failed { error }.encode(), None);
}

/// Reads the child's status pipe until EOF (exec succeeded) or a failure record.
fn read_status(status: RawFd) -> Result<LandlockOutcome, StageError> {
    let mut landlock = LandlockOutcome::default();
    loop {
        let mut record = [0u8; STATUS_RECORD_LEN];
        let mut filled = 0;
        while filled < STATUS_RECORD_LEN {
            let Some(rest) = record.get_mut(filled..) else {
                break;
            };
            // SAFETY: pointer and length describe the unfilled part of `record`.
            let read = unsafe { libc::read(status, rest.as_mut_ptr().cast(), rest.len()) };
            if read < 0 && Errno::last().0 == libc::EINTR {
                continue;
            }
            if read <= 0 {
                break;
            }
            filled += read as usize;
        }
        if filled < STATUS_RECORD_LEN {
            return Ok(landlock);
        }
        match StatusRecord::decode(&record) {
            Some(StatusRecord::Landlock(outcome)) => landlock = outcome,
            Some(StatusRecord::Failed(error)) => return Err(error),
            None => return Err(StageError::new(Stage::Exec, Errno(libc::EPROTO))),
        }
    }
}

fn monitor(control: RawFd, child: i32, status: RawFd) -> i32 {
    let started = read_status(status);
    // SAFETY: `status` is ours and not used afterwards.
    unsafe { libc::close(status) };
    // A pidfd taken now stays valid after the child exits and is reaped, so the broker gets a
    // handle that can never signal a recycled pid, even for a child that exits at once.
    // SAFETY: pidfd_open takes a pid and flags.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, child, 0) } as RawFd;
    match started {
        Ok(landlock) => {
            let message = LauncherMessage::Started {
                pid: child,
                landlock,
            };
            let passed = (pidfd >= 0).then_some(pidfd);
            if send_message(control, &message.encode(), passed).is_err() {
                kill(child);
            }
        }
        Err(error) => {
            report(control, error);
            let _ = wait_for(child);
            return LAUNCH_FAILED;
        }
    }
    watch(control, child, pidfd);
    mirror(wait_for(child))
}

/// Blocks until the child exits or the broker closes the control socket (then kills the
/// child: SIGKILL to PID 1 of a pid namespace kills every process in it).
fn watch(control: RawFd, child: i32, pidfd: RawFd) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: control,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: pidfd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let count = if pidfd >= 0 { 2 } else { 1 };
        // SAFETY: `fds` holds `count` valid pollfd entries.
        let ready =
            unsafe { libc::poll(fds.as_mut_ptr(), count, if pidfd >= 0 { -1 } else { 200 }) };
        if ready < 0 {
            if Errno::last().0 == libc::EINTR {
                continue;
            }
            kill(child);
            return;
        }
        let [control_fd, child_fd] = fds;
        if child_fd.revents != 0 {
            return;
        }
        if pidfd < 0 && child_exited(child) {
            return;
        }
        if control_fd.revents != 0 {
            let mut buffer = [0u8; 64];
            match receive_message(control, &mut buffer) {
                Ok((0, _)) | Err(_) => {
                    kill(child);
                    return;
                }
                Ok(_) => {}
            }
        }
    }
}

fn kill(child: i32) {
    // SAFETY: kill takes a pid and a signal.
    unsafe { libc::kill(child, libc::SIGKILL) };
}

fn child_exited(child: i32) -> bool {
    // SAFETY: a zeroed siginfo_t is valid for waitid to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: WNOWAIT|WNOHANG only inspects; `info` is writable.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            child as libc::id_t,
            &raw mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid is valid to read after waitid filled `info` (0 if nothing exited).
    rc == 0 && unsafe { info.si_pid() } != 0
}

fn wait_for(child: i32) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: `status` is writable.
        let rc = unsafe { libc::waitpid(child, &raw mut status, 0) };
        if rc >= 0 || Errno::last().0 != libc::EINTR {
            return status;
        }
    }
}

/// Exits like the child did: same code, or the same signal (re-raised on ourselves).
fn mirror(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        return libc::WEXITSTATUS(status);
    }
    if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        // No core dump of the launcher.
        let limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid rlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &raw const limit) };
        // SAFETY: resetting a disposition to default takes no pointers we own.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
        // SAFETY: raise takes a signal number.
        unsafe { libc::raise(signal) };
        return 128 + signal;
    }
    LAUNCH_FAILED
}
