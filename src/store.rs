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
    connection: Arc<Mutex<Connection>>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

impl Db {
    /// Opens (creating if needed) the database file with WAL and foreign keys on. The file is
    /// created owner-only (it holds token hashes and vault ciphertext).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
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
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
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
    /// connection, in this process or another (`PRAGMA data_version`). A verdict derived from
    /// the database may be reused for as long as this stamp stays the same.
    pub fn change_stamp(&self) -> Result<ChangeStamp, StoreError> {
        self.call(|connection| {
            let version: i64 = connection
                .prepare_cached("PRAGMA data_version")?
                .query_row([], |row| row.get(0))?;
            Ok(ChangeStamp {
                other_connections: version,
                this_connection: connection.total_changes(),
            })
        })
    }

    /// Runs `f` with the connection. Keep it short: every other query waits.
    pub fn call<T, E>(&self, f: impl FnOnce(&mut Connection) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let mut guard = self
            .connection
            .lock()
            .map_err(|_| E::from(StoreError::Poisoned))?;
        f(&mut guard)
    }
}

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
