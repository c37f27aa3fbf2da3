//! Reviewed sandbox policy data (ARCHITECTURE.md §4).
//!
//! - `seccomp/<arch>.json`: the seccomp denylist, in seccompiler's JSON format with a comment on
//!   every rule (the firecracker habit: the policy is data a reviewer reads, not code). It is
//!   embedded at build time and compiled by [`seccomp_programs`].
//! - A hand-written guard filter ([`guard_program`]) that seccompiler cannot express: x32 system
//!   calls kill the process, and numbers beyond the last reviewed one return `ENOSYS` (a
//!   denylist must not let new syscalls through by default — sandbox-notes.md §1.7).
//! - `profiles/profiles.toml`: what each kind of child may see (bind mounts and landlock
//!   rules), see [`Profile`].
//! - `upstream/forgejo-api.toml`: what a child may ask of Forgejo through the egress proxy,
//!   see [`UpstreamPolicy`].
#![forbid(unsafe_code)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use std::collections::BTreeMap;

mod upstream;
pub use upstream::{UpstreamPolicy, Verdict};

pub use seccompiler::{BpfProgram, sock_filter};
use serde::Deserialize;

const X86_64_POLICY: &str = include_str!("../seccomp/x86_64.json");
const AARCH64_POLICY: &str = include_str!("../seccomp/aarch64.json");
const PROFILES: &str = include_str!("../profiles/profiles.toml");

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("seccomp policy for {arch} does not compile: {message}")]
    Seccomp { arch: &'static str, message: String },
    #[error("seccomp policy for {arch} lacks the filter {name:?}")]
    MissingFilter {
        arch: &'static str,
        name: &'static str,
    },
    #[error("no seccomp policy for this architecture")]
    UnsupportedArch,
    #[error("profiles.toml does not parse: {0}")]
    Profiles(String),
    #[error("unknown child profile {0:?}")]
    UnknownProfile(String),
    #[error("upstream API policy: {0}")]
    Upstream(String),
}

/// CPU architectures with a reviewed policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The architecture this binary runs on, if it has a policy.
    pub fn native() -> Option<Self> {
        if cfg!(target_arch = "x86_64") {
            Some(Self::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Self::Aarch64)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
        }
    }

    /// `AUDIT_ARCH_*` as seen in `seccomp_data.arch` (linux/audit.h).
    fn audit_arch(self) -> u32 {
        match self {
            Self::X86_64 => 0xC000_003E,
            Self::Aarch64 => 0xC000_00B7,
        }
    }

    /// The highest system call number this policy was reviewed against (the last entry of
    /// seccompiler 0.5's table: `mseal`, 462, on both). Anything above returns `ENOSYS`, which
    /// every libc treats as "not implemented" and falls back from.
    pub fn last_reviewed_syscall(self) -> u32 {
        match self {
            Self::X86_64 => 462,
            Self::Aarch64 => 462,
        }
    }

    fn target(self) -> seccompiler::TargetArch {
        match self {
            Self::X86_64 => seccompiler::TargetArch::x86_64,
            Self::Aarch64 => seccompiler::TargetArch::aarch64,
        }
    }

    fn policy(self) -> &'static str {
        match self {
            Self::X86_64 => X86_64_POLICY,
            Self::Aarch64 => AARCH64_POLICY,
        }
    }
}

/// The filters to install, in order, with their names (for error reports). The kernel runs
/// every installed filter and takes the most severe verdict (KILL > ERRNO > ALLOW, seccomp(2)),
/// so three filters with different actions compose; their rule sets do not overlap, so equal
/// precedence never has to be resolved.
pub fn seccomp_programs(arch: Arch) -> Result<Vec<(&'static str, BpfProgram)>, PolicyError> {
    let mut compiled = seccompiler::compile_from_json(arch.policy().as_bytes(), arch.target())
        .map_err(|error| PolicyError::Seccomp {
            arch: arch.name(),
            message: error.to_string(),
        })?;
    let mut programs = vec![("guard", guard_program(arch))];
    for name in ["deny_eperm", "deny_enosys"] {
        let program = compiled.remove(name).ok_or(PolicyError::MissingFilter {
            arch: arch.name(),
            name,
        })?;
        programs.push((name, program));
    }
    Ok(programs)
}

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_JGT_K: u16 = 0x25;
const BPF_RET_K: u16 = 0x06;
// seccomp return values (linux/seccomp.h).
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const ENOSYS: u32 = 38;
/// `__X32_SYSCALL_BIT`: x32 calls share `AUDIT_ARCH_X86_64` with native ones, so an arch check
/// does not stop them; a denylist keyed on native numbers would be bypassed (sandbox-notes §1.7).
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
// Offsets in `struct seccomp_data`.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;

fn statement(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The guard filter, installed first:
///
/// ```text
/// 0: ld  arch
/// 1: jeq AUDIT_ARCH_<native>, 0, 4   ; foreign ABI (e.g. i386 int 0x80) → kill
/// 2: ld  nr
/// 3: jge X32_SYSCALL_BIT, 2, 0       ; x32 → kill
/// 4: jgt LAST_REVIEWED, 2, 0         ; newer than this policy → ENOSYS
/// 5: ret ALLOW
/// 6: ret KILL_PROCESS
/// 7: ret ERRNO(ENOSYS)
/// ```
pub fn guard_program(arch: Arch) -> BpfProgram {
    vec![
        statement(BPF_LD_W_ABS, 0, 0, OFFSET_ARCH),
        statement(BPF_JEQ_K, 0, 4, arch.audit_arch()),
        statement(BPF_LD_W_ABS, 0, 0, OFFSET_NR),
        statement(BPF_JGE_K, 2, 0, X32_SYSCALL_BIT),
        statement(BPF_JGT_K, 2, 0, arch.last_reviewed_syscall()),
        statement(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        statement(BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        statement(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | ENOSYS),
    ]
}

/// How a profile's child can take the token in `pipe` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenVia {
    /// Reads a file named by `<VAR>_FILE` (the broker passes `/dev/fd/3`).
    File,
    /// Reads only an environment variable (set inside the sandbox).
    Env,
}

/// What one kind of child may see. See `profiles/profiles.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub comment: String,
    /// Bound read-only at the same path; landlock read+execute beneath each.
    pub read_only: Vec<String>,
    /// Default environment variables (the child spec's own env wins).
    pub env: Vec<(String, String)>,
    pub token: TokenVia,
}

/// Every profile, by name.
pub fn profiles() -> Result<BTreeMap<String, Profile>, PolicyError> {
    toml::from_str(PROFILES).map_err(|error| PolicyError::Profiles(error.to_string()))
}

/// One profile by name.
pub fn profile(name: &str) -> Result<Profile, PolicyError> {
    profiles()?
        .remove(name)
        .ok_or_else(|| PolicyError::UnknownProfile(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_architectures_compile_into_three_filters() {
        for arch in [Arch::X86_64, Arch::Aarch64] {
            let programs = seccomp_programs(arch).unwrap();
            let names: Vec<_> = programs.iter().map(|(name, _)| *name).collect();
            assert_eq!(names, ["guard", "deny_eperm", "deny_enosys"]);
            assert!(programs.iter().all(|(_, program)| !program.is_empty()));
        }
    }

    #[test]
    fn every_rule_carries_a_comment() {
        for text in [X86_64_POLICY, AARCH64_POLICY] {
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            for (name, filter) in value.as_object().unwrap() {
                for rule in filter["filter"].as_array().unwrap() {
                    assert!(
                        rule["comment"].as_str().is_some_and(|c| c.len() > 5),
                        "{name}: rule without a comment: {rule}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_policy_denies_what_the_issue_lists() {
        let required = [
            "ptrace",
            "mount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "bpf",
            "keyctl",
            "add_key",
            "request_key",
            "perf_event_open",
            "userfaultfd",
            "kexec_load",
            "init_module",
            "finit_module",
            "personality",
        ];
        for name in required {
            assert!(
                X86_64_POLICY.contains(&format!("\"syscall\": \"{name}\"")),
                "{name} missing from the x86_64 policy"
            );
        }
        for name in ["clone3", "io_uring_setup", "io_uring_enter"] {
            let enosys = X86_64_POLICY.split("deny_enosys").nth(1).unwrap();
            assert!(
                enosys.contains(&format!("\"syscall\": \"{name}\"")),
                "{name}"
            );
        }
    }

    #[test]
    fn the_guard_jumps_land_on_the_intended_returns() {
        let program = guard_program(Arch::X86_64);
        // jf of the arch check and jt of the x32 check both land on KILL.
        assert_eq!(program[1 + 1 + 4].k, SECCOMP_RET_KILL_PROCESS);
        assert_eq!(program[3 + 1 + 2].k, SECCOMP_RET_KILL_PROCESS);
        assert_eq!(program[4 + 1 + 2].k, SECCOMP_RET_ERRNO | ENOSYS);
    }

    #[test]
    fn profiles_parse_and_name_their_token_mode() {
        let all = profiles().unwrap();
        for name in ["native", "go", "node", "python"] {
            assert!(all.contains_key(name), "{name}");
        }
        assert_eq!(profile("native").unwrap().token, TokenVia::File);
        assert!(matches!(
            profile("nope"),
            Err(PolicyError::UnknownProfile(_))
        ));
    }
}
