//! What this host can enforce, layer by layer (`forgejo-mcp-broker sandbox check`, the
//! `sandbox.require` preflight, and the per-spawn audit record).

use serde::Serialize;

use crate::cgroup::CgroupBackend;
use crate::plan::{LandlockOutcome, PartState};

/// Every layer, by the name used in config (`sandbox.require`), reports and the audit log.
pub const LAYERS: [&str; 19] = [
    "user-namespace",
    "pid-namespace",
    "mount-namespace",
    "network-namespace",
    "ipc-namespace",
    "uts-namespace",
    "cgroup-namespace",
    "distinct-uid",
    "minimal-root",
    "rlimits",
    "cgroup-memory",
    "cgroup-pids",
    "capabilities",
    "no-new-privs",
    "landlock-fs",
    "landlock-net",
    "landlock-scope",
    "close-fds",
    "seccomp",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "lowercase")]
pub enum LayerStatus {
    Enforced,
    Degraded(String),
    Unavailable(String),
}

impl LayerStatus {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Enforced => "enforced",
            Self::Degraded(_) => "degraded",
            Self::Unavailable(_) => "unavailable",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Enforced => None,
            Self::Degraded(reason) | Self::Unavailable(reason) => Some(reason),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerReport {
    pub layer: &'static str,
    #[serde(flatten)]
    pub status: LayerStatus,
}

fn read_number(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Detects, without starting anything, what this host can enforce. `root` says whether the
/// broker runs as root (distinct host uids per session).
pub fn detect(root: bool, cgroups: &CgroupBackend) -> Vec<LayerReport> {
    let userns = user_namespaces(root);
    let landlock = landlock_from_abi(crate::linux::landlock_abi());
    let seccomp = if policies::Arch::native().is_none() {
        LayerStatus::Unavailable("no seccomp policy for this CPU architecture".to_owned())
    } else if std::fs::read_to_string("/proc/self/status")
        .map(|status| status.contains("Seccomp:"))
        .unwrap_or(false)
    {
        LayerStatus::Enforced
    } else {
        LayerStatus::Unavailable("the kernel has no seccomp filter support".to_owned())
    };
    LAYERS
        .into_iter()
        .map(|layer| {
            let status = match layer {
                "user-namespace" | "pid-namespace" | "mount-namespace" | "network-namespace"
                | "ipc-namespace" | "uts-namespace" | "cgroup-namespace" | "minimal-root" => {
                    userns.clone()
                }
                "distinct-uid" => distinct_uid(root),
                "cgroup-memory" => cgroup_memory_status(cgroups),
                "cgroup-pids" => cgroup_status(cgroups),
                "landlock-fs" => part(landlock.fs, "filesystem", landlock.abi, 1),
                "landlock-net" => part(landlock.net, "TCP bind/connect", landlock.abi, 4),
                "landlock-scope" => part(
                    landlock.scope,
                    "signal and abstract-socket scoping",
                    landlock.abi,
                    6,
                ),
                "seccomp" => seccomp.clone(),
                _ => LayerStatus::Enforced,
            };
            LayerReport { layer, status }
        })
        .collect()
}

fn user_namespaces(root: bool) -> LayerStatus {
    if read_number("/proc/sys/user/max_user_namespaces") == Some(0) {
        return LayerStatus::Unavailable("user.max_user_namespaces is 0".to_owned());
    }
    if !root {
        if read_number("/proc/sys/kernel/unprivileged_userns_clone") == Some(0) {
            return LayerStatus::Unavailable(
                "kernel.unprivileged_userns_clone is 0 (unprivileged user namespaces disabled)"
                    .to_owned(),
            );
        }
        if read_number("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == Some(1) {
            return LayerStatus::Unavailable(
                "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1); add a profile for the broker or run it as root"
                    .to_owned(),
            );
        }
    }
    LayerStatus::Enforced
}

pub fn distinct_uid(root: bool) -> LayerStatus {
    if root {
        LayerStatus::Enforced
    } else {
        LayerStatus::Degraded(
            "the broker is not root: every session runs as the broker's own uid; pid namespaces, landlock signal scoping and seccomp keep sessions apart".to_owned(),
        )
    }
}

/// The memory layer: [`cgroup_status`], degraded when the host swaps and the cgroups cannot
/// cap a session's swap (no swap accounting): the child could then page past its memory limit
/// into the host's swap.
pub fn cgroup_memory_status(cgroups: &CgroupBackend) -> LayerStatus {
    cgroup_memory_status_with(cgroups, host_swap_bytes())
}

fn cgroup_memory_status_with(cgroups: &CgroupBackend, swap_bytes: u64) -> LayerStatus {
    let swap_file = match cgroups {
        CgroupBackend::V2 { base } => base.join("memory.swap.max"),
        CgroupBackend::V1 { memory, .. } => memory.join("memory.memsw.limit_in_bytes"),
        CgroupBackend::Unavailable { .. } => return cgroup_status(cgroups),
    };
    if swap_bytes > 0 && !swap_file.exists() {
        return LayerStatus::Degraded(format!(
            "the host has swap and no swap accounting ({} is missing): a session's memory limit does not cover swap",
            swap_file.display()
        ));
    }
    cgroup_status(cgroups)
}

/// `SwapTotal` from `/proc/meminfo`, in bytes (0 when unreadable).
fn host_swap_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|meminfo| {
            meminfo
                .lines()
                .find_map(|line| line.strip_prefix("SwapTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kib| kib.saturating_mul(1024))
}

pub fn cgroup_status(cgroups: &CgroupBackend) -> LayerStatus {
    match cgroups {
        CgroupBackend::V2 { .. } => LayerStatus::Enforced,
        CgroupBackend::V1 { .. } => LayerStatus::Enforced,
        CgroupBackend::Unavailable { reason } => LayerStatus::Unavailable(format!(
            "{reason}; only rlimits apply (no memory limit, processes capped by RLIMIT_NPROC)"
        )),
    }
}

/// What landlock will do on a kernel with this ABI (the launcher reports the real outcome).
pub fn landlock_from_abi(abi: i32) -> LandlockOutcome {
    let state = |needed: i32, full: i32| {
        if abi >= full {
            PartState::Enforced
        } else if abi >= needed {
            PartState::Degraded
        } else {
            PartState::Unavailable
        }
    };
    LandlockOutcome {
        abi,
        fs: state(1, 5),
        net: state(4, 4),
        scope: state(6, 6),
    }
}

/// A landlock part as a layer status.
pub fn part(state: PartState, what: &str, abi: i32, needed: i32) -> LayerStatus {
    match state {
        PartState::Enforced => LayerStatus::Enforced,
        PartState::Degraded => LayerStatus::Degraded(format!(
            "landlock ABI {abi} enforces {what} with fewer access rights than ABI 5"
        )),
        PartState::Unavailable => LayerStatus::Unavailable(format!(
            "landlock {what} needs ABI {needed}, the kernel has {abi}"
        )),
    }
}

/// The landlock layers of one actual launch.
pub fn landlock_layers(outcome: LandlockOutcome) -> [LayerReport; 3] {
    [
        LayerReport {
            layer: "landlock-fs",
            status: part(outcome.fs, "filesystem", outcome.abi, 1),
        },
        LayerReport {
            layer: "landlock-net",
            status: part(outcome.net, "TCP bind/connect", outcome.abi, 4),
        },
        LayerReport {
            layer: "landlock-scope",
            status: part(
                outcome.scope,
                "signal and abstract-socket scoping",
                outcome.abi,
                6,
            ),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_seven_enforces_everything_and_abi_three_degrades() {
        let seven = landlock_from_abi(7);
        assert_eq!(
            (seven.fs, seven.net, seven.scope),
            (
                PartState::Enforced,
                PartState::Enforced,
                PartState::Enforced
            )
        );
        let three = landlock_from_abi(3);
        assert_eq!(
            (three.fs, three.net, three.scope),
            (
                PartState::Degraded,
                PartState::Unavailable,
                PartState::Unavailable
            )
        );
    }

    #[test]
    fn memory_without_swap_accounting_is_degraded_only_where_the_host_swaps() {
        let dir = tempfile::tempdir().unwrap();
        let memory = dir.path().join("memory");
        std::fs::create_dir(&memory).unwrap();
        let v1 = CgroupBackend::V1 {
            memory: memory.clone(),
            pids: dir.path().join("pids"),
        };
        assert_eq!(cgroup_memory_status_with(&v1, 0), LayerStatus::Enforced);
        let degraded = cgroup_memory_status_with(&v1, 1 << 30);
        assert_eq!(degraded.label(), "degraded", "{degraded:?}");
        std::fs::write(memory.join("memory.memsw.limit_in_bytes"), "0").unwrap();
        assert_eq!(
            cgroup_memory_status_with(&v1, 1 << 30),
            LayerStatus::Enforced
        );
        let v2 = CgroupBackend::V2 {
            base: dir.path().to_path_buf(),
        };
        assert_eq!(cgroup_memory_status_with(&v2, 1 << 30).label(), "degraded");
        std::fs::write(dir.path().join("memory.swap.max"), "max").unwrap();
        assert_eq!(
            cgroup_memory_status_with(&v2, 1 << 30),
            LayerStatus::Enforced
        );
    }

    #[test]
    fn every_layer_is_reported_once() {
        let report = detect(
            true,
            &CgroupBackend::Unavailable {
                reason: "test".to_owned(),
            },
        );
        assert_eq!(report.len(), LAYERS.len());
        let memory = report.iter().find(|r| r.layer == "cgroup-memory").unwrap();
        assert_eq!(memory.status.label(), "unavailable");
        assert!(memory.status.reason().unwrap().contains("test"));
    }
}
