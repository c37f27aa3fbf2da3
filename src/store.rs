//! The one SQLite database (ARCHITECTURE.md §3): WAL, foreign keys, migrations.
//!
//! Each component owns its tables and its ordered list of migrations, applied by
//! [`Db::migrate`] and recorded in `schema_migrations(component, version)`. A component's
//! migrations are append-only: a released step is never edited, a change is a new step.
//!
//! Queries are short and run synchronously under one connection mutex ([`Db::call`]); the
//! closure cannot `.await`, so the lock is never held across a suspension point.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, params};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot create database file {path}: {source}")]
    CreateFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("migration {component} step {step} failed: {source}")]
    Migration {
        component: String,
        step: usize,
        source: rusqlite::Error,
    },
    #[error(
        "database has {component} schema version {found}, newer than this broker knows ({known}); refusing to run an older broker on it"
    )]
    TooNew {
        component: String,
        found: i64,
        known: i64,
    },
    #[error("database lock poisoned by a panicking thread")]
    Poisoned,
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// See [`Db::change_stamp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeStamp {
    other_connections: i64,
    this_connection: u64,
}

/// A handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Mutex<Inner>>,
    path: Option<PathBuf>,
}

/// What the one mutex guards.
struct Inner {
    connection: Connection,
    /// Writes to the database's files by any connection, as inotify reports them; `None` for
    /// an in-memory database, or where the files cannot be watched.
    watch: Option<FileWatch>,
}

/// Counts writes to the database file and its WAL without asking SQLite: one non-blocking
/// `read` of an inotify descriptor, instead of a read transaction (shared-memory locks and
/// their system calls) per question.
struct FileWatch {
    inotify: nix::sys::inotify::Inotify,
    generation: i64,
    /// Set for good once the watch cannot be trusted.
    broken: bool,
}

impl FileWatch {
    /// Watches `database` and its `-wal` file (both must exist: the WAL does once a WAL
    /// database has been written).
    fn new(database: &Path) -> nix::Result<Self> {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let mut wal = database.as_os_str().to_owned();
        wal.push("-wal");
        for file in [database.as_os_str(), wal.as_os_str()] {
            inotify.add_watch(
                file,
                AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_DELETE_SELF,
            )?;
        }
        Ok(Self {
            inotify,
            generation: 0,
            broken: false,
        })
    }

    /// The generation of the files' writes: moved on by any write since the last call, once
    /// `connection` has waited out the writer (see [`Db::change_stamp`]). `None` once the
    /// watch cannot be trusted.
    fn generation(&mut self, connection: &Connection) -> Result<Option<i64>, StoreError> {
        match self.written() {
            Some(true) => {
                connection.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")?;
                self.generation += 1;
                Ok(Some(self.generation))
            }
            Some(false) => Ok(Some(self.generation)),
            None => Ok(None),
        }
    }

    /// Whether anything was written since the last call. `None`, from then on, once the
    /// watch cannot be trusted (a watched file was removed, or reading the descriptor failed).
    fn written(&mut self) -> Option<bool> {
        use nix::sys::inotify::AddWatchFlags;
        if self.broken {
            return None;
        }
        let mut written = false;
        // Drain: a burst of writes leaves many events, and they all mean the same.
        for _ in 0..64 {
            match self.inotify.read_events() {
                Ok(events) if events.is_empty() => break,
                Ok(events) => {
                    written = true;
                    if events.iter().any(|event| {
                        event
                            .mask
                            .intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_IGNORED)
                    }) {
                        self.fail("a watched database file was removed");
                        return None;
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(error) => {
                    self.fail(&error.to_string());
                    return None;
                }
            }
        }
        Some(written)
    }

    fn fail(&mut self, why: &str) {
        self.broken = true;
        tracing::warn!(
            reason = why,
            "the database files' watch broke; every token check now asks SQLite whether they changed"
        );
    }
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

impl Db {
    /// Opens (creating if needed) the database file with WAL and foreign keys on. The file is
    /// created owner-only (it holds token hashes and vault ciphertext), and an existing one is
    /// made so.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        create_owner_only(path).map_err(|source| StoreError::CreateFile {
            path: path.to_path_buf(),
            source,
        })?;
        let connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        restrict_permissions(path);
        Self::configure(connection, Some(path.to_path_buf()))
    }

    /// A private in-memory database, for unit tests.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let connection = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: PathBuf::from(":memory:"),
            source,
        })?;
        Self::configure(connection, None)
    }

    fn configure(connection: Connection, path: Option<PathBuf>) -> Result<Self, StoreError> {
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        connection.pragma_update(None, "busy_timeout", 5000)?;
        // Freed pages are zeroed, so a deleted ciphertext or hash does not linger in the file.
        connection.pragma_update(None, "secure_delete", "ON")?;
        // Statements on every request's path (`prepare_cached`) are parsed once.
        connection.set_prepared_statement_cache_capacity(64);
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                component TEXT PRIMARY KEY,
                version INTEGER NOT NULL
            );",
        )?;
        // After the first write, so the WAL file exists.
        let watch = path.as_deref().and_then(|path| match FileWatch::new(path) {
            Ok(watch) => Some(watch),
            Err(error) => {
                tracing::warn!(%error, path = %path.display(), "cannot watch the database files; every token check will ask SQLite whether they changed");
                None
            }
        });
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner { connection, watch })),
            path,
        })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Applies the steps of `component` not yet applied, each in its own transaction.
    pub fn migrate(&self, component: &str, steps: &[&str]) -> Result<(), StoreError> {
        self.call(|connection| {
            let applied: i64 = connection
                .query_row(
                    "SELECT version FROM schema_migrations WHERE component = ?1",
                    params![component],
                    |row| row.get(0),
                )
                .or_else(|error| match error {
                    rusqlite::Error::QueryReturnedNoRows => Ok(0),
                    other => Err(other),
                })?;
            let known = i64::try_from(steps.len()).unwrap_or(i64::MAX);
            if applied > known {
                return Err(StoreError::TooNew {
                    component: component.to_owned(),
                    found: applied,
                    known,
                });
            }
            for (index, step) in steps.iter().enumerate() {
                let version = i64::try_from(index + 1).unwrap_or(i64::MAX);
                if version <= applied {
                    continue;
                }
                let migration_error = |source| StoreError::Migration {
                    component: component.to_owned(),
                    step: index + 1,
                    source,
                };
                let transaction = connection.transaction().map_err(migration_error)?;
                transaction.execute_batch(step).map_err(migration_error)?;
                transaction
                    .execute(
                        "INSERT INTO schema_migrations (component, version) VALUES (?1, ?2)
                         ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                        params![component, version],
                    )
                    .map_err(migration_error)?;
                transaction.commit().map_err(migration_error)?;
            }
            Ok(())
        })
    }

    /// A value that differs whenever anything was written to the database since it was last
    /// read: rows changed through this connection (`total_changes`) or a commit by any other
    /// connection, in this process or another. A verdict derived from the database may be
    /// reused for as long as this stamp stays the same.
    ///
    /// Other connections' commits are seen through the inotify watch on the database's files:
    /// a write to them bumps a generation. A commit's last write comes a moment before SQLite
    /// makes it visible, so after a write the stamp changes only once no writer holds the
    /// database (`BEGIN IMMEDIATE; ROLLBACK` waits for it): what is read under the new stamp
    /// includes the commit. Without a watch, `PRAGMA data_version` answers, at the cost of a
    /// read transaction per call.
    pub fn change_stamp(&self) -> Result<ChangeStamp, StoreError> {
        let mut inner = self.lock::<StoreError>()?;
        let Inner { connection, watch } = &mut *inner;
        let watched = match watch {
            Some(watch) => watch.generation(connection)?,
            None => None,
        };
        let other_connections = match watched {
            Some(generation) => generation,
            None => {
                let version: i64 = connection
                    .prepare_cached("PRAGMA data_version")?
                    .query_row([], |row| row.get(0))?;
                // Negative: never equal to a generation.
                -1 - version
            }
        };
        Ok(ChangeStamp {
            other_connections,
            this_connection: connection.total_changes(),
        })
    }

    /// Runs `f` with the connection. Keep it short: every other query waits.
    pub fn call<T, E>(&self, f: impl FnOnce(&mut Connection) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        f(&mut self.lock::<E>()?.connection)
    }

    fn lock<E: From<StoreError>>(&self) -> Result<std::sync::MutexGuard<'_, Inner>, E> {
        self.inner.lock().map_err(|_| E::from(StoreError::Poisoned))
    }
}

/// Creates the broker's data directory, and any missing parent, owner-only (0700). It holds
/// the database and, by default, the vault's key file; with the default mode (0755 under the
/// usual umask) every local user could list it. An existing directory keeps its mode: the
/// operator chose it.
pub fn create_data_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Creates the database file empty and owner-only (0600) unless it exists, before SQLite
/// opens it. SQLite itself would create it with its default mode (0644 under the usual umask)
/// and leave it readable by every local user until [`restrict_permissions`] runs; it accepts an
/// empty file as a new database and creates `-wal` and `-shm` with the database file's mode.
/// `create_new` (`O_EXCL`): an existing file, the usual case, is never truncated or reopened
/// for writing here, even if another process created it a moment ago.
fn create_owner_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

/// Tightens files an older broker or an operator left looser than 0600.
fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for candidate in [
        path.to_path_buf(),
        path.with_extension("db-wal"),
        path.with_extension("db-shm"),
    ] {
        if candidate.exists() {
            let _ = std::fs::set_permissions(&candidate, std::fs::Permissions::from_mode(0o600));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_through(db: &Db, value: i64) {
        db.call(|c| {
            c.execute("INSERT INTO t (a) VALUES (?1)", [value])
                .map_err(StoreError::from)
        })
        .unwrap();
    }

    /// Two connections to one file: each sees the other's commits in its stamp, and a
    /// stamp stays put while nothing is written.
    fn assert_stamps_follow_other_connections(watching: &Db, writer: &Db) {
        let before = watching.change_stamp().unwrap();
        assert_eq!(watching.change_stamp().unwrap(), before, "nothing written");
        write_through(writer, 1);
        let after = watching.change_stamp().unwrap();
        assert_ne!(after, before, "another connection's commit");
        assert_eq!(watching.change_stamp().unwrap(), after);
        write_through(watching, 2);
        assert_ne!(watching.change_stamp().unwrap(), after, "its own commit");
    }

    /// Two connections to one new database file with a table `t` (and the directory holding it).
    fn two_connections() -> (tempfile::TempDir, Db, Db) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.db");
        let first = Db::open(&path).unwrap();
        first
            .migrate("test", &["CREATE TABLE t (a INTEGER);"])
            .unwrap();
        let second = Db::open(&path).unwrap();
        (dir, first, second)
    }

    #[test]
    fn the_change_stamp_sees_every_connections_commits_through_the_watch() {
        let (_dir, first, second) = two_connections();
        assert!(first.lock::<StoreError>().unwrap().watch.is_some());
        assert!(second.lock::<StoreError>().unwrap().watch.is_some());
        assert_stamps_follow_other_connections(&first, &second);
        assert_stamps_follow_other_connections(&second, &first);
    }

    #[test]
    fn a_broken_watch_falls_back_to_sqlite_for_good() {
        let (_dir, watching, writer) = two_connections();
        let watched = watching.change_stamp().unwrap();
        if let Some(watch) = &mut watching.lock::<StoreError>().unwrap().watch {
            watch.fail("test");
        }
        assert_ne!(
            watching.change_stamp().unwrap(),
            watched,
            "no longer the watch's"
        );
        assert_stamps_follow_other_connections(&watching, &writer);
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_database_file_is_created_owner_only_and_an_existing_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.db");
        // The mode it has before SQLite ever sees it (a chmod afterwards would be too late).
        create_owner_only(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        let db = Db::open(&path).unwrap();
        db.migrate("test", &["CREATE TABLE t (a INTEGER);"])
            .unwrap();
        write_through(&db, 1);
        for file in [
            path.clone(),
            path.with_extension("db-wal"),
            path.with_extension("db-shm"),
        ] {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
        // An existing database is neither truncated nor replaced.
        let reopened = Db::open(&path).unwrap();
        let rows: i64 = reopened
            .call(|c| {
                c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                    .map_err(StoreError::from)
            })
            .unwrap();
        assert_eq!(rows, 1);
    }

    #[test]
    fn a_created_data_dir_is_owner_only_and_an_existing_one_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("var/forgejo-mcp-broker");
        create_data_dir(&data_dir).unwrap();
        assert_eq!(mode(&data_dir), 0o700);
        assert_eq!(mode(&dir.path().join("var")), 0o700);
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        create_data_dir(&data_dir).unwrap();
        assert_eq!(mode(&data_dir), 0o750);
    }

    #[test]
    fn migrations_apply_once_and_in_order() {
        let db = Db::open_in_memory().unwrap();
        let steps = [
            "CREATE TABLE t (a INTEGER);",
            "ALTER TABLE t ADD COLUMN b INTEGER;",
        ];
        db.migrate("test", &steps).unwrap();
        db.migrate("test", &steps).unwrap();
        let columns: i64 = db
            .call(|c| {
                c.query_row("SELECT count(*) FROM pragma_table_info('t')", [], |r| {
                    r.get(0)
                })
                .map_err(StoreError::from)
            })
            .unwrap();
        assert_eq!(columns, 2);
    }

    #[test]
    fn an_older_broker_refuses_a_newer_schema() {
        let db = Db::open_in_memory().unwrap();
        db.migrate("test", &["CREATE TABLE t (a);", "CREATE TABLE u (a);"])
            .unwrap();
        let error = db.migrate("test", &["CREATE TABLE t (a);"]).unwrap_err();
        assert!(matches!(
            error,
            StoreError::TooNew {
                found: 2,
                known: 1,
                ..
            }
        ));
    }

    #[test]
    fn a_failed_step_leaves_the_previous_version() {
        let db = Db::open_in_memory().unwrap();
        let error = db
            .migrate("test", &["CREATE TABLE t (a);", "NOT SQL"])
            .unwrap_err();
        assert!(matches!(error, StoreError::Migration { step: 2, .. }));
        db.migrate("test", &["CREATE TABLE t (a);", "CREATE TABLE u (a);"])
            .unwrap();
    }
}
