//! The launcher protocol (sandbox-notes §1.14) over an inherited `SOCK_SEQPACKET` socketpair:
//! message boundaries are kept and every message is atomic, so the launcher and its child can
//! both write to it without interleaving.
//!
//! ```text
//! broker                                   launcher
//!   Plan (JSON)                     ──►
//!   Token (pipe mode, raw frame)    ──►
//!                                   ◄──    Ready            (after unshare(CLONE_NEWUSER))
//!   write uid_map / gid_map
//!   MapsWritten                     ──►
//!                                   ◄──    EgressListener + fd (SCM_RIGHTS, inject mode)
//!                                   ◄──    Started { pid, landlock } | Failed { stage, errno }
//!   (close = kill the sandbox)
//! ```

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::plan::{LandlockOutcome, LaunchPlan, Stage, StageError};

/// Upper bound of one control message (a plan with many binds is a few KiB).
pub const MAX_MESSAGE: usize = 256 * 1024;
/// Upper bound of a token.
pub const MAX_TOKEN: usize = 16 * 1024;
const TOKEN_TAG: u8 = b'T';

#[derive(Serialize, Deserialize)]
pub enum BrokerMessage {
    Plan(Box<LaunchPlan>),
    MapsWritten,
    /// Never serialised as JSON: see [`encode_token`]. Zeroized on drop.
    #[serde(skip)]
    Token(Zeroizing<Vec<u8>>),
}

/// Hand-written so the token can never reach a log through `{:?}`.
impl std::fmt::Debug for BrokerMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plan(plan) => f.debug_tuple("Plan").field(plan).finish(),
            Self::MapsWritten => f.write_str("MapsWritten"),
            Self::Token(token) => write!(f, "Token([redacted; {} bytes])", token.len()),
        }
    }
}

impl BrokerMessage {
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        if let Some((&TOKEN_TAG, token)) = bytes.split_first() {
            return Ok(Self::Token(Zeroizing::new(token.to_vec())));
        }
        serde_json::from_slice(bytes)
    }
}

/// The token frame: a tag byte and the raw token, in a buffer zeroized on drop.
pub fn encode_token(token: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut frame = Zeroizing::new(Vec::with_capacity(token.len() + 1));
    frame.push(TOKEN_TAG);
    frame.extend_from_slice(token);
    frame
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LauncherMessage {
    Ready,
    EgressListener { port: u16 },
    Started { pid: i32, landlock: LandlockOutcome },
    Failed { error: StageError },
}

impl LauncherMessage {
    pub fn encode(&self) -> Vec<u8> {
        // Serialising these plain enums cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Fixed-size records the child writes on its status pipe before `execve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusRecord {
    Landlock(LandlockOutcome),
    Failed(StageError),
}

pub const STATUS_RECORD_LEN: usize = 12;

impl StatusRecord {
    pub fn encode(self) -> [u8; STATUS_RECORD_LEN] {
        let (kind, a, b): (u32, u32, i32) = match self {
            Self::Landlock(outcome) => (1, outcome.to_bits(), outcome.abi),
            Self::Failed(error) => (2, error.stage as u32, error.errno),
        };
        let mut out = [0u8; STATUS_RECORD_LEN];
        for (slot, bytes) in
            out.chunks_exact_mut(4)
                .zip([kind.to_le_bytes(), a.to_le_bytes(), b.to_le_bytes()])
        {
            slot.copy_from_slice(&bytes);
        }
        out
    }

    pub fn decode(bytes: &[u8; STATUS_RECORD_LEN]) -> Option<Self> {
        let word = |index: usize| -> [u8; 4] {
            let mut word = [0u8; 4];
            if let Some(slice) = bytes.get(index * 4..index * 4 + 4) {
                word.copy_from_slice(slice);
            }
            word
        };
        let kind = u32::from_le_bytes(word(0));
        let a = u32::from_le_bytes(word(1));
        let b = i32::from_le_bytes(word(2));
        match kind {
            1 => Some(Self::Landlock(LandlockOutcome::from_bits(b, a))),
            2 => Some(Self::Failed(StageError {
                stage: Stage::from_u32(a)?,
                errno: b,
            })),
            _ => None,
        }
    }
}

/// A connected `SOCK_SEQPACKET` pair, both ends close-on-exec.
pub fn control_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid, writable array of two ints, as socketpair(2) requires.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let [a, b] = fds;
    // SAFETY: socketpair succeeded, so both are fresh descriptors nobody else owns.
    let a = unsafe { OwnedFd::from_raw_fd(a) };
    // SAFETY: as above.
    let b = unsafe { OwnedFd::from_raw_fd(b) };
    Ok((a, b))
}

/// Bounds how long a blocking receive on `fd` may wait.
pub fn set_receive_timeout(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let value = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    // SAFETY: `value` is a valid timeval and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const value).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends one message, optionally carrying `fd` as `SCM_RIGHTS`.
pub fn send_message(socket: RawFd, message: &[u8], fd: Option<RawFd>) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: message.as_ptr().cast_mut().cast(),
        iov_len: message.len(),
    };
    // Room for one descriptor, aligned as cmsghdr requires.
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &raw mut iov;
    header.msg_iovlen = 1;
    if let Some(fd) = fd {
        let space = cmsg_space_for_one_fd();
        header.msg_control = control.as_mut_ptr().cast();
        header.msg_controllen = space;
        // SAFETY: msg_control points at `control`, large enough for one cmsghdr with an int.
        let cmsg = unsafe { libc::CMSG_FIRSTHDR(&raw const header) };
        if cmsg.is_null() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: `cmsg` points into `control` (checked non-null above) and is aligned.
        let cmsg = unsafe { &mut *cmsg };
        cmsg.cmsg_level = libc::SOL_SOCKET;
        cmsg.cmsg_type = libc::SCM_RIGHTS;
        // SAFETY: CMSG_LEN only computes a length.
        cmsg.cmsg_len = unsafe { libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) } as _;
        // SAFETY: CMSG_DATA of a valid cmsghdr inside `control` has room for one int.
        let data = unsafe { libc::CMSG_DATA(cmsg) };
        // SAFETY: `data` points to at least size_of::<RawFd>() writable bytes; unaligned write.
        unsafe { std::ptr::write_unaligned(data.cast::<RawFd>(), fd) };
    }
    // SAFETY: `header` points at live buffers (`iov`, `message`, `control`) for the call.
    let sent = unsafe { libc::sendmsg(socket, &raw const header, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn cmsg_space_for_one_fd() -> usize {
    // SAFETY: CMSG_SPACE only computes a length.
    unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize }
}

/// Receives one message into `buffer`; returns its length and a passed descriptor, if any.
/// Length 0 means the peer closed its end.
pub fn receive_message(socket: RawFd, buffer: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &raw mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr().cast();
    header.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: `header` points at live, writable buffers for the duration of the call.
    let received = unsafe { libc::recvmsg(socket, &raw mut header, libc::MSG_CMSG_CLOEXEC) };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut passed = None;
    // SAFETY: `header` was filled by recvmsg; CMSG_FIRSTHDR reads only within msg_control.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&raw const header) };
    if !cmsg.is_null() {
        // SAFETY: non-null cmsg returned by CMSG_FIRSTHDR points into `control`.
        let cmsg = unsafe { &*cmsg };
        if cmsg.cmsg_level == libc::SOL_SOCKET && cmsg.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: an SCM_RIGHTS cmsg carries at least one int after its header.
            let data = unsafe { libc::CMSG_DATA(cmsg) };
            // SAFETY: `data` points to an int inside `control`; unaligned read.
            let fd = unsafe { std::ptr::read_unaligned(data.cast::<RawFd>()) };
            // SAFETY: the kernel installed this descriptor for us; we own it now.
            passed = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    if header.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
    }
    Ok((usize::try_from(received).unwrap_or(0), passed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_records_round_trip() {
        let failed = StatusRecord::Failed(StageError {
            stage: Stage::PivotRoot,
            errno: libc::EPERM,
        });
        assert_eq!(StatusRecord::decode(&failed.encode()), Some(failed));
        let landlock = StatusRecord::Landlock(LandlockOutcome {
            abi: 7,
            ..LandlockOutcome::default()
        });
        assert_eq!(StatusRecord::decode(&landlock.encode()), Some(landlock));
    }

    #[test]
    fn a_descriptor_travels_with_its_message() {
        let (a, b) = control_pair().unwrap();
        let (pipe_read, _pipe_write) = {
            let (x, y) = control_pair().unwrap();
            (x, y)
        };
        send_message(a.as_raw_fd(), b"hello", Some(pipe_read.as_raw_fd())).unwrap();
        let mut buffer = [0u8; 64];
        let (length, fd) = receive_message(b.as_raw_fd(), &mut buffer).unwrap();
        assert_eq!(&buffer[..length], b"hello");
        assert!(fd.is_some());
        drop(a);
        let (length, fd) = receive_message(b.as_raw_fd(), &mut buffer).unwrap();
        assert_eq!((length, fd.is_none()), (0, true));
    }

    #[test]
    fn the_token_frame_never_prints_its_token() {
        let message = BrokerMessage::decode(&encode_token(b"hunter2-secret")).unwrap();
        assert!(!format!("{message:?}").contains("hunter2"));
    }

    #[test]
    fn token_frames_are_not_json_and_decode_back() {
        let frame = encode_token(b"secret-token");
        match BrokerMessage::decode(&frame).unwrap() {
            BrokerMessage::Token(token) => assert_eq!(token.as_slice(), b"secret-token"),
            other => panic!("{other:?}"),
        }
    }
}
