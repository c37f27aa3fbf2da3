//! Paths a child is started from (its program, its working directory, the read-only binds of
//! its sandbox) must be out of other local users' reach: one who could replace the program, or
//! a directory on its way, would run code in every user's session, with that session's Forgejo
//! access. The rule is OpenSSH's `StrictModes`: every entry on the way, as written and through
//! every symlink, belongs to root or to the broker's own user, and no directory on the way is
//! writable by others, or by a group other than root's, unless it is sticky (like `/tmp`, where
//! nobody can replace an entry they do not own). Nor may the entry itself be.
//!
//! Checked when a child is started, on the path it is started from, and by `check-config`.
//! Not covered: what the program itself loads (an interpreter's script and modules named in
//! `args`, shared libraries); keep those in such directories too.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};

/// Why a path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {why}")]
pub struct Untrusted {
    /// The entry at fault (the path itself, or a directory or symlink on its way).
    pub path: PathBuf,
    pub why: String,
}

/// The most symlinks followed on one path (Linux's own limit).
const MAX_SYMLINKS: usize = 40;

/// Whether only root and this process's user can change what `path` names.
pub fn check(path: &Path) -> Result<(), Untrusted> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|error| Untrusted {
                path: path.to_path_buf(),
                why: format!("cannot resolve it against the current directory: {error}"),
            })?
            .join(path)
    };
    let mut links = 0;
    walk(&absolute, nix::unistd::geteuid().as_raw(), &mut links, true).map(|_| ())
}

/// Checks each entry on `path` (absolute) from the root down; returns where it really is.
/// `whole`: the path ends at the entry being checked (not at a directory on its way, as a
/// symlink's target in the middle of a path does).
fn walk(path: &Path, euid: u32, links: &mut usize, whole: bool) -> Result<PathBuf, Untrusted> {
    let mut current = PathBuf::from("/");
    check_entry(&current, euid, false)?;
    let mut components = path.components().peekable();
    while let Some(component) = components.next() {
        let last = whole && components.peek().is_none();
        match component {
            Component::Normal(name) => current.push(name),
            // `current` is always where the walk really is (symlinks resolved), so its parent
            // is the physical one, as the kernel's `..` is.
            Component::ParentDir => {
                current.pop();
                continue;
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => continue,
        }
        let metadata = check_entry(&current, euid, last)?;
        if metadata.is_symlink() {
            *links += 1;
            if *links > MAX_SYMLINKS {
                return Err(Untrusted {
                    path: current,
                    why: "too many levels of symbolic links".to_owned(),
                });
            }
            let target =
                std::fs::read_link(&current).map_err(|error| unreadable(&current, &error))?;
            let parent = current.parent().unwrap_or(Path::new("/")).to_path_buf();
            current = walk(&parent.join(target), euid, links, last)?;
        }
    }
    Ok(current)
}

/// One entry: its owner, and for a directory on the way (or the entry itself) who may write.
fn check_entry(path: &Path, euid: u32, last: bool) -> Result<std::fs::Metadata, Untrusted> {
    let metadata = std::fs::symlink_metadata(path).map_err(|error| unreadable(path, &error))?;
    let refuse = |why: String| {
        Err(Untrusted {
            path: path.to_path_buf(),
            why,
        })
    };
    if metadata.uid() != 0 && metadata.uid() != euid {
        return refuse(format!(
            "owned by uid {}, neither root nor the broker's user (uid {euid}), who could replace what it holds; chown it",
            metadata.uid(),
        ));
    }
    if metadata.is_symlink() {
        // A symlink's own mode means nothing; its target is walked next.
        return Ok(metadata);
    }
    let mode = metadata.mode();
    // Group root's members are root's peers (a root shell under umask 002 makes root:root
    // 0775 directories).
    let group_may_write = metadata.gid() != 0 && mode & 0o020 != 0;
    let writable_by_others = group_may_write || mode & 0o002 != 0;
    let sticky = mode & 0o1000 != 0;
    if writable_by_others && (last || !metadata.is_dir() || !sticky) {
        return refuse(format!(
            "writable by group or others (mode {:o}, group {}); `chmod go-w` it",
            mode & 0o7777,
            metadata.gid()
        ));
    }
    Ok(metadata)
}

/// For `check-config`: the configured child's program (looked up in this process's PATH, as
/// the sandbox launcher does), its working directory, the sandbox's launcher and
/// `sandbox.extra_read_only`, checked as a start checks them. What to tell the operator, and what is refused. A program not
/// installed yet is noted, not refused.
pub fn check_configured(
    child: &crate::mcp::ChildProfileConfig,
    sandbox: &super::sandbox_config::SandboxConfig,
) -> (Vec<String>, Vec<String>) {
    let mut notes = Vec::new();
    let mut checks = Vec::new();
    match super::resolve_program(&child.program, None) {
        Ok(program) if !program.exists() => notes.push(format!(
            "mcp.child.program: {} does not exist here; sessions cannot start until it does",
            program.display()
        )),
        Ok(program) => checks.push(("mcp.child.program", program)),
        Err(_) => notes.push(format!(
            "mcp.child.program: `{}` is not in PATH here; sessions cannot start until it is",
            child.program.display()
        )),
    }
    checks.extend(
        child
            .working_dir
            .iter()
            .map(|dir| ("mcp.child.working_dir", dir.clone())),
    );
    if sandbox.enabled {
        checks.extend(
            sandbox
                .launcher
                .clone()
                .or_else(|| std::env::current_exe().ok())
                .map(|launcher| ("sandbox.launcher", launcher)),
        );
    }
    checks.extend(
        sandbox
            .extra_read_only
            .iter()
            .filter(|path| path.exists())
            .map(|path| ("sandbox.extra_read_only", path.clone())),
    );
    let mut refused = Vec::new();
    for (key, path) in checks {
        match check(&path) {
            Ok(()) => notes.push(format!(
                "{key}: {} (only root or this user can change it)",
                path.display()
            )),
            Err(error) => refused.push(format!("{key}: {error}")),
        }
    }
    (notes, refused)
}

fn unreadable(path: &Path, error: &std::io::Error) -> Untrusted {
    Untrusted {
        path: path.to_path_buf(),
        why: format!("cannot be examined: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A private directory with `bin/program` (0755) in it.
    fn tree() -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        chmod(&bin, 0o755);
        let program = bin.join("program");
        std::fs::write(&program, "#!/bin/sh\n").unwrap();
        chmod(&program, 0o755);
        (root, program)
    }

    fn refused_at(path: &Path) -> PathBuf {
        check(path).expect_err("must be refused").path
    }

    /// `path` is refused because of the entry `at`, for a reason that mentions `why`.
    fn assert_refused(path: &Path, at: &Path, why: &str) {
        let error = check(path).expect_err("must be refused");
        assert_eq!(error.path, at);
        assert!(error.why.contains(why), "{error}");
    }

    #[test]
    fn a_program_only_its_owner_can_change_is_trusted() {
        let (_root, program) = tree();
        assert_eq!(check(&program), Ok(()));
    }

    #[test]
    fn a_directory_others_can_write_on_the_way_is_refused() {
        let (_root, program) = tree();
        let bin = program.parent().unwrap();
        chmod(bin, 0o777);
        assert_eq!(refused_at(&program), bin);
    }

    #[test]
    fn a_directory_its_group_can_write_is_refused_unless_the_group_is_roots() {
        if !nix::unistd::geteuid().is_root() {
            // Only root can hand a directory to any group; CI runs as root.
            return;
        }
        let (_root, program) = tree();
        let bin = program.parent().unwrap();
        chmod(bin, 0o775);
        nix::unistd::chown(bin, None, Some(nix::unistd::Gid::from_raw(0))).unwrap();
        assert_eq!(check(&program), Ok(()));
        nix::unistd::chown(bin, None, Some(nix::unistd::Gid::from_raw(64_001))).unwrap();
        assert_refused(&program, bin, "group 64001");
    }

    #[test]
    fn a_sticky_directory_is_fine_for_the_entries_it_holds() {
        let (_root, program) = tree();
        chmod(program.parent().unwrap(), 0o1777);
        assert_eq!(check(&program), Ok(()));
        // …but not as the path itself (a working directory others can write to).
        assert_eq!(
            refused_at(program.parent().unwrap()),
            program.parent().unwrap()
        );
    }

    #[test]
    fn a_program_others_can_write_is_refused() {
        let (_root, program) = tree();
        chmod(&program, 0o757);
        assert_refused(&program, &program, "mode 757");
    }

    #[test]
    fn symlinks_are_followed_and_their_targets_checked() {
        let (root, program) = tree();
        let open = root.path().join("open");
        std::fs::create_dir(&open).unwrap();
        chmod(&open, 0o777);
        let elsewhere = open.join("program");
        std::fs::copy(&program, &elsewhere).unwrap();
        chmod(&elsewhere, 0o755);
        let link = program.parent().unwrap().join("link");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        assert_eq!(refused_at(&link), open);
        // A relative link to a trusted target is fine, `..` and all.
        let relative = program.parent().unwrap().join("relative");
        std::os::unix::fs::symlink("../bin/program", &relative).unwrap();
        assert_eq!(check(&relative), Ok(()));
    }

    #[test]
    fn a_symlink_loop_is_refused_not_followed_forever() {
        let (root, _) = tree();
        let a = root.path().join("a");
        let b = root.path().join("b");
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let error = check(&a).unwrap_err();
        assert!(error.why.contains("symbolic links"), "{error}");
    }

    #[test]
    fn an_entry_of_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            // Only root can give a file away; CI runs as root.
            return;
        }
        let (_root, program) = tree();
        nix::unistd::chown(&program, Some(nix::unistd::Uid::from_raw(64_001)), None).unwrap();
        assert_refused(&program, &program, "uid 64001");
    }

    #[test]
    fn a_missing_path_is_refused_with_the_reason() {
        let (root, _) = tree();
        let missing = root.path().join("nothing");
        assert_refused(&missing, &missing, "cannot be examined");
    }
}
