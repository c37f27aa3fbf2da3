//! Confinement of one MCP server child (ARCHITECTURE.md §4, sandbox-notes.md §1).
//!
//! This is the only crate of the workspace allowed `unsafe`: one system call per block, each
//! with a `// SAFETY:` comment. Map of the crate:
//!
//! - [`confine`]: the one linear function of named stages, run by the launcher.
//! - [`syscall`]: the [`syscall::Syscall`] trait; [`linux`] is the real implementation,
//!   [`fake`] the recording fake the stage-order tests use.
//! - [`launcher`]: the launcher process (re-exec of the broker, `__launcher`), monitor of its
//!   child; [`ipc`] its protocol with the broker.
//! - [`plan`]: the launch plan and the stages; [`cgroup`], [`host`]: resource limits and what
//!   the host can enforce; [`process`]: broker-side helpers (pidfd, id maps, fd mapping).
//! - [`probe`]: the escape attempts of the hostile-child test probe.
#![deny(unsafe_op_in_unsafe_fn)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod binds;
pub mod cgroup;
pub mod confine;
pub mod fake;
pub mod host;
pub mod ipc;
pub mod launcher;
pub mod linux;
pub mod plan;
pub mod probe;
pub mod process;
pub mod syscall;
