//! The launch plan (what the broker asks the launcher to build) and the named stages of
//! confinement with their errors.
//!
//! The plan is plain data, serialised over the control socket; it never contains the token
//! (that travels in its own frame and is zeroized after use, see [`crate::ipc`]).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Everything the launcher needs. Paths are absolute and identical inside and outside the
/// sandbox (every bind mount lands at its host path).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LaunchPlan {
    /// The program to execute, as seen inside the sandbox.
    pub program: String,
    /// `argv`, including `argv[0]`. May contain [`EGRESS_PLACEHOLDER`].
    pub argv: Vec<String>,
    /// The complete environment (no token; may contain [`EGRESS_PLACEHOLDER`] in values).
    pub env: Vec<(String, String)>,
    pub cwd: String,
    /// Read-only binds and symlinks of the minimal root, parents before children.
    pub binds: Vec<Bind>,
    /// Size of the writable `/tmp` tmpfs (tmpfs pages are charged to the memory cgroup).
    pub tmp_size_bytes: u64,
    pub hostname: String,
    pub rlimits: Vec<Rlimit>,
    /// `cgroup.procs` files the launcher writes its pid into before unsharing (so the cgroup
    /// namespace is rooted at the session's cgroup).
    pub cgroup_procs: Vec<String>,
    pub landlock: LandlockPlan,
    pub token: Option<TokenPlan>,
    /// Create a listening TCP socket on 127.0.0.1 inside the child's network namespace and pass
    /// it to the broker (the egress endpoint of `inject` mode).
    pub egress_listener: bool,
    pub ids: IdMapping,
}

/// Replaced in argv and env values by `127.0.0.1:<port>` of the egress listener.
pub const EGRESS_PLACEHOLDER: &str = "{egress}";

/// The file descriptor number the token pipe has in the child (`/dev/fd/3`).
pub const TOKEN_FD: i32 = 3;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Bind {
    /// A directory bound read-only.
    Dir(String),
    /// A single file bound read-only.
    File(String),
    /// A symlink recreated as is (e.g. `/lib -> usr/lib` on merged-usr systems).
    Symlink { path: String, target: String },
}

impl Bind {
    pub fn path(&self) -> &str {
        match self {
            Self::Dir(path) | Self::File(path) | Self::Symlink { path, .. } => path,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LandlockPlan {
    /// Read and execute beneath these.
    pub read_only: Vec<String>,
    /// Read and write (not execute) beneath these.
    pub read_write: Vec<String>,
    /// TCP ports the child may connect to (the egress port is added by the launcher).
    pub connect_tcp: Vec<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum TokenPlan {
    /// The token is readable at `/dev/fd/3`; `file_var` names that path for the child.
    File { file_var: String },
    /// The token is put in the child's own environment under `var` (inside the sandbox only).
    Env { var: String },
}

/// How the broker maps ids (sandbox-notes §1.3).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum IdMapping {
    /// The broker runs as root: sandbox uid/gid 0 is a distinct host uid/gid for this session,
    /// supplementary groups are dropped.
    Distinct { host_uid: u32, host_gid: u32 },
    /// Unprivileged broker: sandbox 0 is the broker's own uid/gid; `setgroups` is denied.
    OwnIds { host_uid: u32, host_gid: u32 },
}

/// The named stages of confinement, in the order [`crate::confine::confine`] runs them. Every
/// failure carries its stage, so "user namespaces disabled", "mount too revealing" or "cgroup
/// not delegated" are distinct, actionable errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u32)]
pub enum Stage {
    Sanitize = 1,
    JoinCgroup,
    UserNamespace,
    IdMaps,
    Namespaces,
    Loopback,
    EgressListener,
    Fork,
    ParentDeathSignal,
    OpenBindSources,
    Identity,
    MountPrivate,
    MountStaging,
    MountTmp,
    BindMounts,
    MountProc,
    MountDev,
    RemountRootReadOnly,
    PivotRoot,
    Hostname,
    Rlimits,
    TokenPipe,
    Capabilities,
    NoNewPrivs,
    Landlock,
    CloseFds,
    Seccomp,
    Exec,
}

impl Stage {
    pub const ALL: [Stage; 28] = [
        Stage::Sanitize,
        Stage::JoinCgroup,
        Stage::UserNamespace,
        Stage::IdMaps,
        Stage::Namespaces,
        Stage::Loopback,
        Stage::EgressListener,
        Stage::Fork,
        Stage::ParentDeathSignal,
        Stage::OpenBindSources,
        Stage::Identity,
        Stage::MountPrivate,
        Stage::MountStaging,
        Stage::MountTmp,
        Stage::BindMounts,
        Stage::MountProc,
        Stage::MountDev,
        Stage::RemountRootReadOnly,
        Stage::PivotRoot,
        Stage::Hostname,
        Stage::Rlimits,
        Stage::TokenPipe,
        Stage::Capabilities,
        Stage::NoNewPrivs,
        Stage::Landlock,
        Stage::CloseFds,
        Stage::Seccomp,
        Stage::Exec,
    ];

    pub fn from_u32(value: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|stage| *stage as u32 == value)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sanitize => "sanitize",
            Self::JoinCgroup => "join-cgroup",
            Self::UserNamespace => "user-namespace",
            Self::IdMaps => "id-maps",
            Self::Namespaces => "namespaces",
            Self::Loopback => "loopback",
            Self::EgressListener => "egress-listener",
            Self::Fork => "fork",
            Self::ParentDeathSignal => "parent-death-signal",
            Self::OpenBindSources => "open-bind-sources",
            Self::MountPrivate => "mount-private",
            Self::MountStaging => "mount-staging",
            Self::BindMounts => "bind-mounts",
            Self::MountTmp => "mount-tmp",
            Self::MountProc => "mount-proc",
            Self::MountDev => "mount-dev",
            Self::RemountRootReadOnly => "remount-root-read-only",
            Self::PivotRoot => "pivot-root",
            Self::Hostname => "hostname",
            Self::Identity => "identity",
            Self::Rlimits => "rlimits",
            Self::TokenPipe => "token-pipe",
            Self::Capabilities => "capabilities",
            Self::NoNewPrivs => "no-new-privs",
            Self::Landlock => "landlock",
            Self::CloseFds => "close-fds",
            Self::Seccomp => "seccomp",
            Self::Exec => "exec",
        }
    }

    /// A hint for the operator when this stage fails with `errno`.
    pub fn hint(self, errno: i32) -> &'static str {
        match (self, errno) {
            (Self::UserNamespace, libc::EPERM | libc::ENOSPC | libc::EINVAL) => {
                "unprivileged user namespaces are disabled on this host (kernel.unprivileged_userns_clone, user.max_user_namespaces, or an AppArmor/SELinux policy)"
            }
            (Self::MountProc, libc::EPERM) => {
                "the outer /proc has masked or over-mounted paths (\"mount too revealing\"), typical inside Docker/Podman"
            }
            (Self::JoinCgroup, libc::EACCES | libc::EPERM | libc::ENOENT) => {
                "the session cgroup is not writable: delegate a cgroup to the broker (systemd Delegate=yes) or run as root"
            }
            (Self::Landlock, _) => "landlock refused a required feature on this kernel",
            (Self::Seccomp, _) => "the seccomp filter could not be installed",
            (Self::Exec, libc::ENOENT) => {
                "the program or its interpreter/loader is not inside the sandbox (add it to the profile or sandbox.extra_read_only)"
            }
            (Self::Exec, libc::EACCES) => {
                "the program is not executable inside the sandbox (landlock grants execute only beneath read-only paths)"
            }
            _ => "",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed stage: which one and the `errno` it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageError {
    pub stage: Stage,
    pub errno: i32,
}

impl StageError {
    pub fn new(stage: Stage, errno: Errno) -> Self {
        Self {
            stage,
            errno: errno.0,
        }
    }
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let description = std::io::Error::from_raw_os_error(self.errno);
        write!(f, "stage {} failed: {description}", self.stage)?;
        let hint = self.stage.hint(self.errno);
        if !hint.is_empty() {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for StageError {}

/// An `errno` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// The calling thread's last error.
    pub fn last() -> Self {
        Self(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }
}

impl From<std::io::Error> for Errno {
    fn from(error: std::io::Error) -> Self {
        Self(error.raw_os_error().unwrap_or(libc::EIO))
    }
}

/// What landlock enforced, per part (reported to the broker and into the audit log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LandlockOutcome {
    /// The kernel's landlock ABI (0 when unsupported).
    pub abi: i32,
    pub fs: PartState,
    pub net: PartState,
    pub scope: PartState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum PartState {
    #[default]
    Unavailable,
    /// Enforced with fewer access rights than the full set (older ABI).
    Degraded,
    Enforced,
}

impl PartState {
    fn bits(self) -> u32 {
        match self {
            Self::Unavailable => 0,
            Self::Degraded => 1,
            Self::Enforced => 2,
        }
    }

    fn from_bits(bits: u32) -> Self {
        match bits & 3 {
            2 => Self::Enforced,
            1 => Self::Degraded,
            _ => Self::Unavailable,
        }
    }
}

impl LandlockOutcome {
    pub fn to_bits(self) -> u32 {
        self.fs.bits() | (self.net.bits() << 2) | (self.scope.bits() << 4)
    }

    pub fn from_bits(abi: i32, bits: u32) -> Self {
        Self {
            abi,
            fs: PartState::from_bits(bits),
            net: PartState::from_bits(bits >> 2),
            scope: PartState::from_bits(bits >> 4),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_round_trip_through_their_number() {
        for stage in Stage::ALL {
            assert_eq!(Stage::from_u32(stage as u32), Some(stage));
        }
        assert_eq!(Stage::from_u32(0), None);
        let mut sorted = Stage::ALL;
        sorted.sort();
        assert_eq!(sorted, Stage::ALL, "ALL is in execution order");
    }

    #[test]
    fn landlock_outcome_round_trips_through_bits() {
        let outcome = LandlockOutcome {
            abi: 7,
            fs: PartState::Enforced,
            net: PartState::Degraded,
            scope: PartState::Unavailable,
        };
        assert_eq!(LandlockOutcome::from_bits(7, outcome.to_bits()), outcome);
    }

    #[test]
    fn stage_errors_name_their_stage_and_hint() {
        let error = StageError::new(Stage::UserNamespace, Errno(libc::EPERM));
        let text = error.to_string();
        assert!(text.contains("user-namespace"), "{text}");
        assert!(text.contains("unprivileged user namespaces"), "{text}");
    }
}
