//! Turns the paths a child needs into the bind list of its minimal root: symlinks are
//! recreated (merged-usr `/lib -> usr/lib`) and followed to their real target, missing paths are
//! reported, and a path already visible beneath another bind is not bound twice (a bind
//! inside a read-only bind could not even get its mount point).

use std::path::{Path, PathBuf};

use crate::plan::Bind;

/// The binds for `paths`, parents before children, and the paths that do not exist.
pub fn resolve_binds<P: AsRef<Path>>(paths: &[P]) -> (Vec<Bind>, Vec<PathBuf>) {
    let mut binds: Vec<Bind> = Vec::new();
    let mut missing = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let mut current = path.to_path_buf();
        // Follow a chain of symlinks (bounded), recreating each link.
        for _ in 0..8 {
            let Ok(metadata) = std::fs::symlink_metadata(&current) else {
                missing.push(path.to_path_buf());
                break;
            };
            if metadata.file_type().is_symlink() {
                let (Ok(target), Some(parent), Some(name)) = (
                    std::fs::read_link(&current),
                    current.parent(),
                    current.file_name(),
                ) else {
                    missing.push(path.to_path_buf());
                    break;
                };
                // The link itself lives at its parent's real location.
                let parent = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf());
                binds.push(Bind::Symlink {
                    path: parent.join(name).display().to_string(),
                    target: target.display().to_string(),
                });
                match std::fs::canonicalize(&current) {
                    Ok(real) => current = real,
                    Err(_) => {
                        missing.push(path.to_path_buf());
                        break;
                    }
                }
                continue;
            }
            let real = std::fs::canonicalize(&current).unwrap_or(current.clone());
            let real = real.display().to_string();
            binds.push(if metadata.is_dir() {
                Bind::Dir(real)
            } else {
                Bind::File(real)
            });
            break;
        }
    }
    (deduplicate(binds), missing)
}

fn beneath(path: &str, dir: &str) -> bool {
    dir == "/" || path == dir || path.starts_with(&format!("{}/", dir.trim_end_matches('/')))
}

/// Sorts by path and drops entries visible through an earlier directory bind or duplicated.
fn deduplicate(mut binds: Vec<Bind>) -> Vec<Bind> {
    binds.sort_by(|a, b| a.path().cmp(b.path()));
    binds.dedup_by(|a, b| a.path() == b.path());
    let mut kept: Vec<Bind> = Vec::new();
    for bind in binds {
        let covered = kept.iter().any(|earlier| match earlier {
            Bind::Dir(dir) => beneath(bind.path(), dir),
            // Nothing can be mounted beneath a symlink or a file.
            Bind::Symlink { path, .. } | Bind::File(path) => beneath(bind.path(), path),
        });
        if !covered {
            kept.push(bind);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_are_recreated_and_followed_and_nested_paths_dropped() {
        let dir = tempdir();
        let real = dir.join("real");
        std::fs::create_dir_all(real.join("sub")).unwrap();
        std::fs::write(real.join("sub/file"), "x").unwrap();
        std::os::unix::fs::symlink("real", dir.join("link")).unwrap();
        let (binds, missing) =
            resolve_binds(&[dir.join("link"), real.join("sub/file"), dir.join("nope")]);
        let real = std::fs::canonicalize(&real).unwrap().display().to_string();
        assert!(binds.contains(&Bind::Dir(real.clone())), "{binds:?}");
        assert!(
            binds
                .iter()
                .any(|b| matches!(b, Bind::Symlink { target, .. } if target == "real")),
            "{binds:?}"
        );
        assert!(
            !binds.contains(&Bind::File(format!("{real}/sub/file"))),
            "{binds:?}"
        );
        assert_eq!(missing, vec![dir.join("nope")]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("binds-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
