//! Scans files for byte strings: the check that no secret reached the disk in clear (the
//! database, its WAL and shared-memory files, logs).
//!
//! Test helper, kept in the library so the full-OAuth-flow test is one line:
//! `assert!(scan::database_files(&db_path, &[token.as_bytes()]).is_empty())`.

use std::path::{Path, PathBuf};

/// One occurrence of a needle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanHit {
    pub file: PathBuf,
    /// Index into the needles given.
    pub needle: usize,
    pub offset: usize,
}

/// Every occurrence of every non-empty needle in `files` (missing files are skipped).
pub fn files(files: &[PathBuf], needles: &[&[u8]]) -> Vec<ScanHit> {
    let mut hits = Vec::new();
    for file in files {
        let Ok(content) = std::fs::read(file) else {
            continue;
        };
        for (index, needle) in needles.iter().enumerate() {
            if needle.is_empty() || needle.len() > content.len() {
                continue;
            }
            for (offset, window) in content.windows(needle.len()).enumerate() {
                if window == *needle {
                    hits.push(ScanHit {
                        file: file.clone(),
                        needle: index,
                        offset,
                    });
                }
            }
        }
    }
    hits
}

/// The database file and its `-wal`, `-shm` and `-journal` companions.
pub fn database_companions(database: &Path) -> Vec<PathBuf> {
    let mut out = vec![database.to_path_buf()];
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut name = database.as_os_str().to_owned();
        name.push(suffix);
        out.push(PathBuf::from(name));
    }
    out
}

/// [`files`] over the database and its companions.
pub fn database_files(database: &Path, needles: &[&[u8]]) -> Vec<ScanHit> {
    files(&database_companions(database), needles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_needle_in_the_database_and_its_wal() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("broker.db");
        std::fs::write(&database, b"....secret-one....").unwrap();
        std::fs::write(dir.path().join("broker.db-wal"), b"secret-two secret-one").unwrap();
        let hits = database_files(&database, &[b"secret-one", b"secret-two", b"absent", b""]);
        assert_eq!(hits.len(), 3, "{hits:?}");
        assert!(
            hits.iter()
                .any(|hit| hit.needle == 1 && hit.file.ends_with("broker.db-wal"))
        );
        assert!(!hits.iter().any(|hit| hit.needle >= 2));
    }
}
