//! Memory and pids limits through cgroups: v2 where the host delegates it, v1 where that is
//! what the host has (these machines: v1 hybrid, the unified hierarchy holds only `hugetlb`),
//! and a clear "unavailable" otherwise (sandbox-notes §1.11).

use std::io;
use std::path::{Path, PathBuf};

/// Where session cgroups are created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupBackend {
    /// A cgroup v2 directory with `memory` and `pids` enabled for its children.
    V2 { base: PathBuf },
    /// cgroup v1 `memory` and `pids` hierarchies.
    V1 { memory: PathBuf, pids: PathBuf },
    /// Neither is usable; the reason says why.
    Unavailable { reason: String },
}

/// Limits for one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    pub memory_bytes: u64,
    pub pids: u64,
}

/// One session's cgroup directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCgroup {
    pub dirs: Vec<PathBuf>,
    /// `cgroup.procs` of each directory (the launcher writes its pid there).
    pub procs: Vec<String>,
}

struct Mount {
    point: PathBuf,
    fstype: String,
    options: Vec<String>,
}

fn mounts() -> Vec<Mount> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fstype = right.next()?.to_owned();
            let _source = right.next();
            let options = right
                .next()
                .unwrap_or_default()
                .split(',')
                .map(str::to_owned)
                .collect();
            Some(Mount {
                point: PathBuf::from(point),
                fstype,
                options,
            })
        })
        .collect()
}

/// `controller → our cgroup path` from /proc/self/cgroup (`""` is the v2 line).
fn own_cgroups() -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string("/proc/self/cgroup") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?.to_owned();
            let path = parts.next()?.to_owned();
            Some((controllers, path))
        })
        .collect()
}

fn join(mount: &Path, cgroup_path: &str, name: &str) -> PathBuf {
    mount.join(cgroup_path.trim_start_matches('/')).join(name)
}

impl CgroupBackend {
    /// Finds a usable backend and prepares `<our cgroup>/<name>` under it.
    pub fn detect(name: &str) -> Self {
        let mounts = mounts();
        let own = own_cgroups();
        let mut reasons = Vec::new();

        // cgroup v2.
        let v2_mount = mounts.iter().find(|m| m.fstype == "cgroup2");
        let v2_path = own
            .iter()
            .find(|(c, _)| c.is_empty())
            .map(|(_, p)| p.clone());
        match (v2_mount, v2_path) {
            (Some(mount), Some(path)) => match prepare_v2(&mount.point, &path, name) {
                Ok(base) => return Self::V2 { base },
                Err(reason) => reasons.push(format!("cgroup v2: {reason}")),
            },
            _ => reasons.push("cgroup v2: not mounted".to_owned()),
        }

        // cgroup v1.
        let v1 = |controller: &str| -> Option<PathBuf> {
            let mount = mounts
                .iter()
                .find(|m| m.fstype == "cgroup" && m.options.iter().any(|o| o == controller))?;
            let path = own
                .iter()
                .find(|(c, _)| c.split(',').any(|c| c == controller))
                .map(|(_, p)| p.clone())?;
            Some(join(&mount.point, &path, name))
        };
        match (v1("memory"), v1("pids")) {
            (Some(memory), Some(pids)) => {
                let ready = std::fs::create_dir_all(&memory)
                    .and_then(|()| std::fs::create_dir_all(&pids))
                    .and_then(|()| probe_writable(&memory))
                    .and_then(|()| probe_writable(&pids));
                match ready {
                    Ok(()) => return Self::V1 { memory, pids },
                    Err(error) => reasons.push(format!(
                        "cgroup v1: cannot create {} or {}: {error}",
                        memory.display(),
                        pids.display()
                    )),
                }
            }
            _ => reasons.push("cgroup v1: memory or pids hierarchy not mounted".to_owned()),
        }
        Self::Unavailable {
            reason: reasons.join("; "),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::V2 { .. } => "cgroup v2",
            Self::V1 { .. } => "cgroup v1",
            Self::Unavailable { .. } => "none",
        }
    }

    /// Creates the session's cgroup(s) and writes the limits.
    pub fn create_session(&self, session: &str, limits: CgroupLimits) -> io::Result<SessionCgroup> {
        let write = |dir: &Path, file: &str, value: &str| std::fs::write(dir.join(file), value);
        match self {
            Self::V2 { base } => {
                let dir = base.join(session);
                std::fs::create_dir(&dir)?;
                write(&dir, "memory.max", &limits.memory_bytes.to_string())?;
                // Swap would let the child exceed its memory limit unseen.
                let _ = write(&dir, "memory.swap.max", "0");
                // An OOM kill takes the whole sandbox, not one random process in it.
                let _ = write(&dir, "memory.oom.group", "1");
                write(&dir, "pids.max", &limits.pids.to_string())?;
                Ok(SessionCgroup {
                    procs: vec![dir.join("cgroup.procs").display().to_string()],
                    dirs: vec![dir],
                })
            }
            Self::V1 { memory, pids } => {
                let memory_dir = memory.join(session);
                let pids_dir = pids.join(session);
                std::fs::create_dir(&memory_dir)?;
                std::fs::create_dir(&pids_dir)?;
                write(
                    &memory_dir,
                    "memory.limit_in_bytes",
                    &limits.memory_bytes.to_string(),
                )?;
                // With swap accounting, cap memory+swap too.
                let _ = write(
                    &memory_dir,
                    "memory.memsw.limit_in_bytes",
                    &limits.memory_bytes.to_string(),
                );
                write(&pids_dir, "pids.max", &limits.pids.to_string())?;
                Ok(SessionCgroup {
                    procs: vec![
                        memory_dir.join("cgroup.procs").display().to_string(),
                        pids_dir.join("cgroup.procs").display().to_string(),
                    ],
                    dirs: vec![memory_dir, pids_dir],
                })
            }
            Self::Unavailable { reason } => Err(io::Error::other(reason.clone())),
        }
    }
}

fn prepare_v2(mount: &Path, own_path: &str, name: &str) -> Result<PathBuf, String> {
    let own = mount.join(own_path.trim_start_matches('/'));
    let controllers = std::fs::read_to_string(own.join("cgroup.controllers"))
        .map_err(|error| format!("cannot read cgroup.controllers: {error}"))?;
    for needed in ["memory", "pids"] {
        if !controllers.split_whitespace().any(|c| c == needed) {
            return Err(format!(
                "the {needed} controller is not delegated to {} (available: {})",
                own.display(),
                controllers.trim()
            ));
        }
    }
    let base = own.join(name);
    std::fs::create_dir_all(&base)
        .and_then(|()| probe_writable(&base))
        .map_err(|error| format!("cannot create cgroups in {}: {error}", base.display()))?;
    // Controllers must be enabled on every level down to the session directories. Enabling
    // them on our own cgroup fails with EBUSY while we live in it ("no internal processes");
    // under systemd use Delegate=yes and move the broker into a leaf first.
    for dir in [&own, &base] {
        std::fs::write(dir.join("cgroup.subtree_control"), "+memory +pids").map_err(|error| {
            format!(
                "cannot enable memory and pids in {}: {error}",
                dir.display()
            )
        })?;
    }
    Ok(base)
}

/// Whether this process may create (and remove) cgroups in `dir`.
fn probe_writable(dir: &Path) -> io::Result<()> {
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    std::fs::create_dir(&probe)?;
    std::fs::remove_dir(&probe)
}

impl CgroupBackend {
    /// Removes session cgroups left behind by a previous broker (or a handle dropped just
    /// before the process exited): empty directories older than `min_age`. `rmdir` refuses
    /// a cgroup that still has processes, and the age keeps a directory another broker has
    /// just created (and not yet joined) from being taken away under it.
    pub fn sweep_stale(&self, min_age: std::time::Duration) -> usize {
        let bases: Vec<&PathBuf> = match self {
            Self::V2 { base } => vec![base],
            Self::V1 { memory, pids } => vec![memory, pids],
            Self::Unavailable { .. } => Vec::new(),
        };
        let mut removed = 0;
        for base in bases {
            let Ok(entries) = std::fs::read_dir(base) else {
                continue;
            };
            for entry in entries.flatten() {
                let old_enough = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|modified| modified.elapsed().ok())
                    .is_some_and(|age| age >= min_age);
                if entry.path().is_dir() && old_enough && std::fs::remove_dir(entry.path()).is_ok()
                {
                    removed += 1;
                }
            }
        }
        removed
    }
}

impl SessionCgroup {
    /// Kills whatever is left in the cgroup and removes it. Returns false if a directory is
    /// still busy (processes not yet reaped); call again later.
    pub fn remove(&self) -> bool {
        let mut removed = true;
        for dir in &self.dirs {
            if !dir.exists() {
                continue;
            }
            // cgroup.kill exists on v2 (5.14+); v1 needs a signal per process.
            if std::fs::write(dir.join("cgroup.kill"), "1").is_err()
                && let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs"))
            {
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: kill takes a pid and a signal; the pids are our sandbox's.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            if std::fs::remove_dir(dir).is_err() {
                removed = false;
            }
        }
        removed
    }
}
