//! Paths a child is started from (its program, its working directory, the read-only binds of
//! its sandbox, the sandbox launcher) must be out of other local users' reach: one who could
//! replace the program, or a directory on its way, would run code in every user's session,
//! with that session's Forgejo access. The rule is OpenSSH's `StrictModes`: every entry on the
//! way, as written and through every symlink, belongs to root or to this process's user (the
//! broker's), and no directory on the way is writable by others, or by a group other than
//! root's, unless it is sticky (like `/tmp`, where nobody can replace an entry they do not
//! own); nor may the entry itself be, sticky or not. Group bits that are a POSIX ACL's mask
//! count as others'.
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
    let absolute = std::path::absolute(path).map_err(|error| Untrusted {
        path: path.to_path_buf(),
        why: format!("cannot resolve it against the current directory: {error}"),
    })?;
    let euid = nix::unistd::geteuid().as_raw();
    let mut links = 0;
    let real = walk(&absolute, euid, &mut links, true)?;
    // A path ending in `..` ends at a directory the walk checked only as one on the way.
    check_entry(&real, euid, true).map(|_| ())
}

/// For a path that may not exist yet (a read-only bind): checked if it does, a dangling
/// symlink included; otherwise its nearest existing ancestor is checked as the path itself,
/// since whoever can write there could create it.
pub fn check_present_or_creatable(path: &Path) -> Result<(), Untrusted> {
    let mut existing = path;
    while std::fs::symlink_metadata(existing).is_err() {
        match existing.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => existing = parent,
            _ => break,
        }
    }
    check(existing)
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
        let chown = if metadata.is_symlink() {
            "`chown -h` the link"
        } else {
            "`chown` it"
        };
        return refuse(format!(
            "owned by uid {}, neither root nor this process's user (uid {euid}), so that user could replace what it holds; {chown}",
            metadata.uid(),
        ));
    }
    if metadata.is_symlink() {
        // A symlink's own mode means nothing; its target is walked next.
        return Ok(metadata);
    }
    let mode = metadata.mode();
    let acl_may_write = mode & 0o020 != 0 && has_access_acl(path);
    // Group root's members are root's peers (a root shell under umask 002 makes root:root
    // 0775 directories); unless an ACL lets others in under the same group bits.
    let group_may_write = mode & 0o020 != 0 && (metadata.gid() != 0 || acl_may_write);
    let writable_by_others = group_may_write || mode & 0o002 != 0;
    let sticky = metadata.is_dir() && mode & 0o1000 != 0;
    if !writable_by_others || (sticky && !last) {
        return Ok(metadata);
    }
    let mode = mode & 0o7777;
    if sticky {
        refuse(format!(
            "a directory anyone may add entries to (mode {mode:o}); use one only root or this process's user can write to"
        ))
    } else if acl_may_write {
        refuse(format!(
            "its ACL lets others write to it (mode {mode:o}, the group bits being the ACL mask); see `getfacl`, `setfacl -b` or `chmod go-w` it"
        ))
    } else {
        refuse(format!(
            "writable by group or others (mode {mode:o}, group {}); `chmod go-w` it",
            metadata.gid()
        ))
    }
}

/// Whether `path` (not followed) has an extended POSIX access ACL: then its group bits are
/// the ACL's mask, the most any named user or group may do.
fn has_access_acl(path: &Path) -> bool {
    rustix::fs::lgetxattr_query(path, "system.posix_acl_access").is_ok_and(|size| size > 0)
}

/// For `check-config`: the configured child's program (looked up as the launcher in use will
/// look it up), its working directory, and with the sandbox its launcher and
/// `sandbox.extra_read_only`, checked as a start checks them, against this process's user:
/// run it as the user `serve` runs as. What to tell the operator, and what is refused. What
/// does not exist yet is noted, not refused.
pub fn check_configured(
    child: &crate::mcp::ChildProfileConfig,
    sandbox: &super::sandbox_config::SandboxConfig,
) -> (Vec<String>, Vec<String>) {
    let euid = nix::unistd::geteuid().as_raw();
    let mut notes = Vec::new();
    let mut checks = Vec::new();
    let search = if sandbox.enabled {
        std::env::var_os("PATH").unwrap_or_default()
    } else {
        super::search_path(&child.environment("")).to_owned()
    };
    let base = if sandbox.enabled {
        None
    } else {
        child.working_dir.as_deref()
    };
    match super::resolve_program(&child.program, &search, base) {
        Ok(program) if std::fs::symlink_metadata(&program).is_err() => notes.push(format!(
            "mcp.child.program: {} does not exist here; sessions cannot start until it does",
            program.display()
        )),
        Ok(program) => checks.push(("mcp.child.program", program)),
        Err(_) => notes.push(format!(
            "mcp.child.program: `{}` is not in the search path here; sessions cannot start until it is",
            child.program.display()
        )),
    }
    if let Some(dir) = &child.working_dir {
        if std::fs::symlink_metadata(dir).is_ok() {
            checks.push(("mcp.child.working_dir", dir.clone()));
        } else {
            notes.push(format!(
                "mcp.child.working_dir: {} does not exist here; sessions cannot start until it does",
                dir.display()
            ));
        }
    }
    if sandbox.enabled {
        checks.extend(
            sandbox
                .launcher
                .clone()
                .or_else(|| std::env::current_exe().ok())
                .map(|launcher| ("sandbox.launcher", launcher)),
        );
    }
    let mut refused = Vec::new();
    for (key, path) in checks {
        match check(&path) {
            Ok(()) => notes.push(format!(
                "{key}: {} (only root or uid {euid} can change it)",
                path.display()
            )),
            Err(error) => refused.push(format!("{key}: {error}")),
        }
    }
    if sandbox.enabled {
        for path in &sandbox.extra_read_only {
            if let Err(error) = check_present_or_creatable(path) {
                refused.push(format!("sandbox.extra_read_only: {error}"));
            }
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
        let bin = dir_in(root.path(), "bin", 0o755);
        let program = bin.join("program");
        std::fs::write(&program, "#!/bin/sh\n").unwrap();
        chmod(&program, 0o755);
        (root, program)
    }

    /// [`tree`] with `bin` writable by group root (0775 root:root); `None` unless this runs as
    /// root, who alone can hand a directory to any group (CI runs as root).
    fn root_group_writable_tree() -> Option<(tempfile::TempDir, PathBuf)> {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        let (root, program) = tree();
        let bin = program.parent().unwrap();
        nix::unistd::chown(bin, None, Some(nix::unistd::Gid::from_raw(0))).unwrap();
        chmod(bin, 0o775);
        Some((root, program))
    }

    /// A new directory `name` in `parent`, with `mode`.
    fn dir_in(parent: &Path, name: &str, mode: u32) -> PathBuf {
        let dir = parent.join(name);
        std::fs::create_dir(&dir).unwrap();
        chmod(&dir, mode);
        dir
    }

    fn refused_at(path: &Path) -> PathBuf {
        check(path).expect_err("must be refused").path
    }

    /// `path` is refused because of the entry `at`, for a reason that mentions `why`.
    fn assert_refused(path: &Path, at: &Path, why: &str) {
        assert_refused_by(check(path), at, why);
    }

    fn assert_refused_by(verdict: Result<(), Untrusted>, at: &Path, why: &str) {
        let error = verdict.expect_err("must be refused");
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
        let Some((_root, program)) = root_group_writable_tree() else {
            return;
        };
        let bin = program.parent().unwrap();
        assert_eq!(check(&program), Ok(()));
        nix::unistd::chown(bin, None, Some(nix::unistd::Gid::from_raw(64_001))).unwrap();
        assert_refused(&program, bin, "group 64001");
    }

    #[test]
    fn group_bits_that_are_an_acl_mask_count_as_others() {
        let Some((_root, program)) = root_group_writable_tree() else {
            return;
        };
        let bin = program.parent().unwrap();
        // user::rwx user:64001:rwx group::r-x mask::rwx other::r-x, in the kernel's
        // `system.posix_acl_access` format (version 2; tag, permissions, id per entry).
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (0x01u16, 7u16, u32::MAX),
            (0x02, 7, 64_001),
            (0x04, 5, u32::MAX),
            (0x10, 7, u32::MAX),
            (0x20, 5, u32::MAX),
        ] {
            acl.extend(tag.to_le_bytes());
            acl.extend(perm.to_le_bytes());
            acl.extend(id.to_le_bytes());
        }
        let set = rustix::fs::lsetxattr(
            bin,
            "system.posix_acl_access",
            &acl,
            rustix::fs::XattrFlags::empty(),
        );
        if set.is_err() {
            // A filesystem without ACLs cannot carry this risk.
            return;
        }
        assert_refused(&program, bin, "ACL");
    }

    #[test]
    fn a_path_that_ends_in_dot_dot_is_checked_where_it_ends() {
        let (_root, program) = tree();
        let bin = program.parent().unwrap();
        let open = dir_in(bin, "open", 0o1777);
        chmod(bin, 0o1777);
        // `bin/open/..` is `bin`: anyone may add entries there, so it is no working directory.
        assert_refused(&open.join(".."), bin, "anyone may add entries");
    }

    #[test]
    fn a_symlink_to_a_sticky_directory_is_checked_as_that_directory() {
        let (root, _) = tree();
        let shared = dir_in(root.path(), "shared", 0o1777);
        let link = root.path().join("workdir");
        std::os::unix::fs::symlink(&shared, &link).unwrap();
        assert_refused(&link, &shared, "anyone may add entries");
        // On the way to an entry root owns, the same directory is fine.
        let file = shared.join("file");
        std::fs::write(&file, "").unwrap();
        chmod(&file, 0o644);
        assert_eq!(check(&link.join("file")), Ok(()));
    }

    #[test]
    fn a_symlink_another_user_owns_is_refused_even_in_a_sticky_directory() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let (root, program) = tree();
        let shared = dir_in(root.path(), "shared", 0o1777);
        let link = shared.join("program");
        std::os::unix::fs::symlink(&program, &link).unwrap();
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &link,
            Some(nix::unistd::Uid::from_raw(64_001)),
            None,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .unwrap();
        assert_refused(&link, &link, "`chown -h` the link");
    }

    #[test]
    fn a_missing_bind_is_judged_by_who_could_create_it() {
        let (root, _) = tree();
        let private = dir_in(root.path(), "private", 0o755);
        assert_eq!(
            check_present_or_creatable(&private.join("later/deeper")),
            Ok(())
        );
        chmod(&private, 0o1777);
        assert_refused_by(
            check_present_or_creatable(&private.join("later")),
            &private,
            "anyone may add entries",
        );
        // A dangling symlink is examined, not skipped.
        chmod(&private, 0o755);
        let dangling = private.join("dangling");
        std::os::unix::fs::symlink(root.path().join("nowhere"), &dangling).unwrap();
        assert!(check_present_or_creatable(&dangling).is_err());
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
        let open = dir_in(root.path(), "open", 0o777);
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
