//! Rotation: of the master key (re-wrap the data keys; no row rewritten) and of the data key
//! (a new version for new writes; existing rows re-encrypted in the background by the serving
//! broker, then old versions retired once no row uses them — HashiCorp Vault transit's
//! `min_decryption_version` idea, sandbox-notes.md §3.3).
//!
//! Both operator commands are single SQLite transactions, safe while a broker serves the same
//! database (WAL; the broker keeps its unwrapped data keys in memory). The re-encryption job
//! keeps a cursor per sealed column in `vault_reencryption` and commits it in the same
//! transaction as each batch, so a broker stopped at any point resumes where it was.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{OptionalExtension as _, params};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vault::{Aad, DataKey, KdfParams, Sealer as _};

use super::registry::SealedColumn;
use super::source::{self, EnvLookup, MasterSecret, OwnerRule};
use super::{
    COMPONENT, KeySourceKind, KeystoreError, MIGRATIONS, Vault, VaultConfig, VaultDeps,
    derive_master, kdf_columns, read_active_keys, read_meta, unlock,
};
use crate::store::Db;

/// What the new master key is made from.
#[derive(Debug, Clone)]
pub enum NewMasterKey {
    /// A key file; generated (0600) if it does not exist.
    KeyFile(PathBuf),
    /// A passphrase file; stretched with the configured Argon2id parameters and a new salt.
    PassphraseFile(PathBuf),
    /// The same passphrase, re-stretched with the configured (raised) parameters and a new
    /// salt.
    SamePassphrase,
}

#[derive(Debug)]
pub struct MasterRotationReport {
    pub rewrapped_versions: Vec<u32>,
    pub generated_key_file: Option<PathBuf>,
    pub kdf: Option<KdfParams>,
    /// False if a reader kept the WAL from being fully checkpointed (then the old wrappings
    /// leave the WAL at the next checkpoint SQLite or the broker makes).
    pub wal_checkpointed: bool,
}

/// `PRAGMA wal_checkpoint(TRUNCATE)`: copies the WAL into the database and empties it. With
/// `secure_delete` on (store.rs), replaced values then no longer exist anywhere in the files.
/// Returns false if readers prevented a complete checkpoint.
pub fn checkpoint_wal(db: &Db) -> Result<bool, KeystoreError> {
    db.call(|connection| {
        connection
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                row.get::<_, i64>(0)
            })
            .map(|busy| busy == 0)
            .map_err(KeystoreError::from)
    })
}

fn require_meta(db: &Db) -> Result<super::StoredMeta, KeystoreError> {
    db.migrate(COMPONENT, MIGRATIONS)?;
    db.call(|connection| read_meta(connection))?
        .ok_or_else(|| KeystoreError::NotInitialised {
            database: db
                .path()
                .map_or_else(|| ":memory:".to_owned(), |path| path.display().to_string()),
        })
}

/// `vault rotate-master-key`: re-wraps every data key and the key check under a new master
/// key, in one transaction. Rows are not touched; a serving broker keeps serving.
pub fn rotate_master_key(
    db: &Db,
    config: &VaultConfig,
    data_dir: &Path,
    new: &NewMasterKey,
    deps: &VaultDeps,
    env: EnvLookup<'_>,
) -> Result<MasterRotationReport, KeystoreError> {
    let meta = require_meta(db)?;
    let old_master = unlock(&meta, config, data_dir, env)?;
    let mut generated_key_file = None;
    let new_secret = match new {
        NewMasterKey::KeyFile(path) => {
            if path == &config.key_file_path(data_dir)
                && config.key_source == KeySourceKind::KeyFile
            {
                return Err(KeystoreError::NothingToRotate(
                    "the new key file is the configured one; give a new path and switch [vault] key_file to it afterwards".into(),
                ));
            }
            if !path.exists() {
                source::generate_key_file(path)?;
                generated_key_file = Some(path.clone());
            }
            MasterSecret::Key(source::read_key(path, "new key file", OwnerRule::Process)?)
        }
        NewMasterKey::PassphraseFile(path) => {
            let content =
                source::read_secret_file(path, "new passphrase file", OwnerRule::Process)?;
            MasterSecret::Passphrase(vault::Passphrase::from_file_content(content)?)
        }
        NewMasterKey::SamePassphrase => {
            let loaded = source::load(config, data_dir, env)?;
            if !matches!(loaded.secret, MasterSecret::Passphrase(_)) {
                return Err(KeystoreError::NothingToRotate(
                    "the vault's master key is not a passphrase; give --new-key-file".into(),
                ));
            }
            loaded.secret
        }
    };
    let kdf = match new_secret {
        MasterSecret::Key(_) => None,
        MasterSecret::Passphrase(_) => Some((config.kdf.params(), vault::kdf::generate_salt()?)),
    };
    let new_master = derive_master(&new_secret, kdf.as_ref())?;
    let key_check = new_master.key_check()?;
    let now = deps.clock.now();
    let kind = new_secret.kind();
    let rewrapped_versions = db.call(|connection| {
        // IMMEDIATE: takes the write lock first, so a concurrent `rotate-data-key` either
        // committed before (its key is re-wrapped here) or commits after, and then finds the
        // key check changed under it and fails loudly instead of wrapping under the old key.
        // The same check here catches two master rotations racing each other.
        let transaction =
            connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current = read_meta(&transaction)?.ok_or(KeystoreError::NoActiveDataKey)?;
        if current.key_check != meta.key_check {
            return Err(KeystoreError::NothingToRotate(
                "the master key changed while this command ran; run it again".into(),
            ));
        }
        let mut versions = Vec::new();
        for (version, wrapped) in read_active_keys(&transaction)? {
            let key = old_master
                .unwrap_data_key(version, &wrapped)
                .map_err(|_| KeystoreError::DataKeyUnreadable { version })?;
            let rewrapped = new_master.wrap_data_key(version, &key)?;
            transaction.execute(
                "UPDATE vault_data_keys SET wrapped = ?1 WHERE version = ?2",
                params![rewrapped, version],
            )?;
            versions.push(version);
        }
        let (memory, iterations, parallelism, salt) = kdf_columns(kdf.as_ref());
        transaction.execute(
            "UPDATE vault_meta SET master_kind = ?1, kdf_memory_kib = ?2, kdf_iterations = ?3,
                 kdf_parallelism = ?4, kdf_salt = ?5, key_check = ?6, master_rotated_at = ?7
             WHERE id = 1",
            params![kind, memory, iterations, parallelism, salt, key_check, now],
        )?;
        transaction.commit()?;
        Ok::<_, KeystoreError>(versions)
    })?;
    // The old wrappings (the reason to rotate may be that the old master key leaked) still sit
    // in WAL frames until a checkpoint copies the new pages over them; do it now.
    let wal_checkpointed = checkpoint_wal(db)?;
    deps.record(
        "master_key_rotated",
        format!("kind={kind} rewrapped_versions={rewrapped_versions:?}"),
    );
    Ok(MasterRotationReport {
        rewrapped_versions,
        generated_key_file,
        kdf: kdf.map(|(params, _)| params),
        wal_checkpointed,
    })
}

/// `vault rotate-data-key`: adds a new data key version, wrapped under the current master
/// key. The serving broker loads it at its next tick, seals new writes with it and
/// re-encrypts existing rows in the background.
pub fn rotate_data_key(
    db: &Db,
    config: &VaultConfig,
    data_dir: &Path,
    deps: &VaultDeps,
    env: EnvLookup<'_>,
) -> Result<u32, KeystoreError> {
    let meta = require_meta(db)?;
    let master = unlock(&meta, config, data_dir, env)?;
    let key = DataKey::generate()?;
    let now = deps.clock.now();
    let version = db.call(|connection| {
        let transaction =
            connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current = read_meta(&transaction)?.ok_or(KeystoreError::NoActiveDataKey)?;
        if current.key_check != meta.key_check {
            return Err(KeystoreError::NothingToRotate(
                "the master key changed while this command ran; run it again with the new key"
                    .into(),
            ));
        }
        let latest: u32 =
            transaction.query_row("SELECT max(version) FROM vault_data_keys", [], |row| {
                row.get(0)
            })?;
        let version = latest
            .checked_add(1)
            .ok_or(KeystoreError::NoActiveDataKey)?;
        let wrapped = master.wrap_data_key(version, &key)?;
        transaction.execute(
            "INSERT INTO vault_data_keys (version, wrapped, state, created_at)
             VALUES (?1, ?2, 'active', ?3)",
            params![version, wrapped, now],
        )?;
        transaction.commit()?;
        Ok::<_, KeystoreError>(version)
    })?;
    deps.record("data_key_rotated", format!("new_version={version}"));
    Ok(version)
}

/// Test hooks for the re-encryption job.
#[derive(Debug, Default, Clone, Copy)]
pub struct JobHooks {
    /// Stop (as if the process died) once this many rows were committed in this call.
    pub stop_after_rows: Option<u64>,
}

/// What one [`Vault::reencrypt_step`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StepReport {
    pub reencrypted: u64,
    pub failed: u64,
    /// Versions retired by this step.
    pub retired: Vec<u32>,
    /// True once every sealed column is at the current version (or only unreadable rows
    /// remain) and there is nothing more to do until the next rotation.
    pub idle: bool,
}

fn id_as_text(value: &Value) -> Option<String> {
    match value {
        Value::Integer(number) => Some(number.to_string()),
        Value::Text(text) => Some(text.clone()),
        _ => None,
    }
}

struct Cursor {
    target_version: u32,
    last_id: Value,
    rows_failed: u64,
    finished: bool,
}

fn table_exists(connection: &rusqlite::Connection, table: &str) -> Result<bool, rusqlite::Error> {
    connection
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            params![table],
            |_| Ok(()),
        )
        .optional()
        .map(|found| found.is_some())
}

/// Rows per key version in one sealed column (the version is read from the envelope header,
/// bytes 2..=5, without opening anything).
pub(crate) fn rows_per_version(
    connection: &rusqlite::Connection,
    column: &SealedColumn,
) -> Result<Vec<(Option<u32>, u64)>, rusqlite::Error> {
    if !table_exists(connection, column.table)? {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT hex(substr(\"{c}\", 2, 4)), count(*) FROM \"{t}\" WHERE \"{c}\" IS NOT NULL GROUP BY 1 ORDER BY 1",
        c = column.column,
        t = column.table
    );
    let mut statement = connection.prepare(&sql)?;
    let rows = statement
        .query_map([], |row| {
            let hex: String = row.get(0)?;
            let count: u64 = row.get(1)?;
            let version = if hex.len() == 8 {
                u32::from_str_radix(&hex, 16).ok()
            } else {
                None
            };
            Ok((version, count))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

impl Vault {
    /// One tick of the background job: load new data keys, re-encrypt up to
    /// `rotation_batch_rows` rows per sealed column, retire versions no row uses any more.
    pub fn reencrypt_step(&self, hooks: JobHooks) -> Result<StepReport, KeystoreError> {
        self.refresh_keys()?;
        let mut report = StepReport::default();
        let Some(target) = self.current_version() else {
            return Ok(report);
        };
        let mut budget = hooks.stop_after_rows;
        let mut all_done = true;
        let columns: Vec<SealedColumn> = self.registry.columns().collect();
        for column in &columns {
            let (done, reencrypted, failed) = self.reencrypt_batch(column, target, budget)?;
            report.reencrypted += reencrypted;
            report.failed += failed;
            all_done &= done;
            if let Some(remaining) = budget.as_mut() {
                *remaining = remaining.saturating_sub(reencrypted + failed);
                if *remaining == 0 && !done {
                    return Err(KeystoreError::Interrupted {
                        rows: report.reencrypted + report.failed,
                    });
                }
            }
        }
        // Retire only at the second consecutive step that finds every column done: a value
        // sealed under the old version just before the keyring switched has had a whole
        // interval to be written and is then found (and re-encrypted) instead of stranded.
        // With no sealed column registered, "no row uses the old key" proves nothing (a
        // component may not have registered yet): never retire then.
        let mut candidate = self
            .retire_candidate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        report.idle = if !all_done {
            *candidate = None;
            false
        } else if columns.is_empty() {
            true
        } else if *candidate == Some(target) {
            report.retired = self.retire_unused(target, &columns)?;
            true
        } else {
            *candidate = Some(target);
            !self.has_active_older_than(target)?
        };
        Ok(report)
    }

    /// Re-encrypts one batch of `column`. Returns (pass complete, rows re-encrypted, rows
    /// that failed to open).
    fn reencrypt_batch(
        &self,
        column: &SealedColumn,
        target: u32,
        budget: Option<u64>,
    ) -> Result<(bool, u64, u64), KeystoreError> {
        let now = self.now();
        let batch = u64::from(self.config.rotation_batch_rows).min(budget.unwrap_or(u64::MAX));
        let target_header = target.to_be_bytes().to_vec();
        let mut unreadable = Vec::new();
        let outcome = self.db.call(|connection| {
            let transaction =
                connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if !table_exists(&transaction, column.table)? {
                return Ok((true, 0, 0));
            }
            let mut cursor = read_cursor(&transaction, column)?;
            if cursor.as_ref().is_none_or(|c| c.target_version != target) {
                transaction.execute(
                    "INSERT INTO vault_reencryption (table_name, column_name, target_version,
                         last_id, rows_done, rows_failed, started_at, finished_at)
                     VALUES (?1, ?2, ?3, NULL, 0, 0, ?4, NULL)
                     ON CONFLICT (table_name, column_name) DO UPDATE SET
                         target_version = excluded.target_version, last_id = NULL,
                         rows_done = 0, rows_failed = 0, started_at = excluded.started_at,
                         finished_at = NULL",
                    params![column.table, column.column, target, now],
                )?;
                cursor = read_cursor(&transaction, column)?;
            }
            let Some(cursor) = cursor else {
                return Ok((true, 0, 0));
            };
            let old_rows = count_not_at(&transaction, column, &target_header)?;
            if cursor.finished {
                // A finished pass restarts only if rows other than known-unreadable ones were
                // written under an old key since (so unreadable rows are not re-reported
                // every tick).
                if old_rows <= cursor.rows_failed {
                    transaction.commit()?;
                    return Ok((true, 0, 0));
                }
                transaction.execute(
                    "UPDATE vault_reencryption SET last_id = NULL, rows_done = 0,
                         rows_failed = 0, started_at = ?3, finished_at = NULL
                     WHERE table_name = ?1 AND column_name = ?2",
                    params![column.table, column.column, now],
                )?;
                transaction.commit()?;
                return Ok((false, 0, 0));
            }
            let sql = format!(
                "SELECT \"{id}\", \"{user}\", \"{c}\" FROM \"{t}\"
                 WHERE (?1 IS NULL OR \"{id}\" > ?1) AND \"{c}\" IS NOT NULL
                   AND substr(\"{c}\", 2, 4) <> ?2
                 ORDER BY \"{id}\" LIMIT ?3",
                id = column.id_column,
                user = column.user_id_column,
                c = column.column,
                t = column.table,
            );
            let rows: Vec<(Value, i64, Vec<u8>)> = {
                let mut statement = transaction.prepare(&sql)?;
                statement
                    .query_map(
                        params![
                            cursor.last_id,
                            target_header,
                            i64::try_from(batch).unwrap_or(i64::MAX)
                        ],
                        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                    )?
                    .collect::<Result<Vec<_>, _>>()?
            };
            let update = format!(
                "UPDATE \"{t}\" SET \"{c}\" = ?1 WHERE \"{id}\" = ?2 AND \"{c}\" = ?3",
                id = column.id_column,
                c = column.column,
                t = column.table,
            );
            let (mut reencrypted, mut failed) = (0u64, 0u64);
            let mut last_id = cursor.last_id.clone();
            for (id, user_id, envelope) in &rows {
                last_id = id.clone();
                let Some(row_id) = id_as_text(id) else {
                    failed += 1;
                    unreadable.push((
                        String::from("<non-text id>"),
                        *user_id,
                        vault::VaultError::Malformed,
                    ));
                    continue;
                };
                let aad = Aad {
                    table: column.table,
                    column: column.column,
                    row_id: &row_id,
                    user_id: *user_id,
                };
                match self.keyring.open(&aad, envelope) {
                    Ok(plaintext) => {
                        let sealed = self.keyring.seal(&aad, &plaintext)?;
                        // Compare-and-swap: a write by the owning component since the SELECT
                        // (it sealed with the new key already) wins.
                        transaction.execute(&update, params![sealed, id, envelope])?;
                        reencrypted += 1;
                    }
                    Err(error) => {
                        failed += 1;
                        unreadable.push((row_id, *user_id, error));
                    }
                }
            }
            // A short batch means the cursor reached the end of the table.
            let complete = (rows.len() as u64) < batch;
            transaction.execute(
                "UPDATE vault_reencryption SET last_id = ?3, rows_done = rows_done + ?4,
                     rows_failed = rows_failed + ?5, finished_at = ?6
                 WHERE table_name = ?1 AND column_name = ?2",
                params![
                    column.table,
                    column.column,
                    last_id,
                    reencrypted,
                    failed,
                    complete.then_some(now)
                ],
            )?;
            transaction.commit()?;
            Ok::<_, KeystoreError>((complete, reencrypted, failed))
        })?;
        for (row_id, user_id, error) in unreadable {
            let aad = Aad {
                table: column.table,
                column: column.column,
                row_id: &row_id,
                user_id,
            };
            self.report_unreadable(&aad, &error);
        }
        self.counters
            .rows_reencrypted
            .fetch_add(outcome.1, std::sync::atomic::Ordering::Relaxed);
        for _ in 0..outcome.1 {
            self.count("reencrypt", true);
        }
        for _ in 0..outcome.2 {
            self.count("reencrypt", false);
        }
        Ok(outcome)
    }

    /// True while a data key older than `target` is still active.
    fn has_active_older_than(&self, target: u32) -> Result<bool, KeystoreError> {
        self.db.call(|connection| {
            connection
                .query_row(
                    "SELECT count(*) FROM vault_data_keys WHERE state = 'active' AND version < ?1",
                    params![target],
                    |row| row.get::<_, i64>(0),
                )
                .map(|count| count > 0)
                .map_err(KeystoreError::from)
        })
    }

    /// Retires every data key older than `target` once no sealed row uses it: raises
    /// `min_decryption_version` and deletes the wrapped key from the database. This process
    /// keeps the key in memory until it restarts (see `Vault::refresh_keys`).
    fn retire_unused(
        &self,
        target: u32,
        columns: &[SealedColumn],
    ) -> Result<Vec<u32>, KeystoreError> {
        let now = self.now();
        let retired = self.db.call(|connection| {
            let transaction =
                connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for column in columns {
                for (version, count) in rows_per_version(&transaction, column)? {
                    if count > 0 && version.is_none_or(|v| v < target) {
                        return Ok(Vec::new());
                    }
                }
            }
            let versions: Vec<u32> = {
                let mut statement = transaction.prepare(
                    "SELECT version FROM vault_data_keys WHERE state = 'active' AND version < ?1",
                )?;
                statement
                    .query_map(params![target], |row| row.get(0))?
                    .collect::<Result<Vec<_>, _>>()?
            };
            if versions.is_empty() {
                return Ok(Vec::new());
            }
            transaction.execute(
                "UPDATE vault_data_keys SET state = 'retired', wrapped = NULL, retired_at = ?2
                 WHERE state = 'active' AND version < ?1",
                params![target, now],
            )?;
            transaction.execute(
                "UPDATE vault_meta SET min_decryption_version = ?1 WHERE id = 1",
                params![target],
            )?;
            transaction.commit()?;
            Ok::<_, KeystoreError>(versions)
        })?;
        if !retired.is_empty() {
            // Best effort: the deleted wrapped keys leave the WAL now rather than later.
            let _ = checkpoint_wal(&self.db);
        }
        for version in &retired {
            self.count("retire", true);
            self.deps
                .record("data_key_retired", format!("version={version}"));
            tracing::info!(target: "vault", version, "data key retired: no row uses it any more");
        }
        Ok(retired)
    }
}

fn read_cursor(
    connection: &rusqlite::Connection,
    column: &SealedColumn,
) -> Result<Option<Cursor>, rusqlite::Error> {
    connection
        .query_row(
            "SELECT target_version, last_id, rows_failed, finished_at IS NOT NULL
             FROM vault_reencryption WHERE table_name = ?1 AND column_name = ?2",
            params![column.table, column.column],
            |row| {
                Ok(Cursor {
                    target_version: row.get(0)?,
                    last_id: row.get(1)?,
                    rows_failed: row.get(2)?,
                    finished: row.get(3)?,
                })
            },
        )
        .optional()
}

fn count_not_at(
    connection: &rusqlite::Connection,
    column: &SealedColumn,
    target_header: &[u8],
) -> Result<u64, rusqlite::Error> {
    let sql = format!(
        "SELECT count(*) FROM \"{t}\" WHERE \"{c}\" IS NOT NULL AND substr(\"{c}\", 2, 4) <> ?1",
        c = column.column,
        t = column.table
    );
    connection.query_row(&sql, params![target_header], |row| row.get(0))
}

/// Runs the re-encryption job every `rotation_interval_secs` until `cancel`, as the named
/// task `vault-rotation` on `tasks`.
pub fn spawn_background(vault: Arc<Vault>, tasks: &TaskTracker, cancel: CancellationToken) {
    let interval = Duration::from_secs(vault.config().rotation_interval_secs);
    tasks.spawn(async move {
        loop {
            let step_vault = Arc::clone(&vault);
            // The step does SQLite and crypto synchronously: keep it off the async workers.
            match tokio::task::spawn_blocking(move || step_vault.reencrypt_step(JobHooks::default()))
                .await
            {
                Ok(Ok(report)) if report.reencrypted > 0 || !report.retired.is_empty() => {
                    tracing::info!(
                        task = "vault-rotation",
                        reencrypted = report.reencrypted,
                        failed = report.failed,
                        retired = ?report.retired,
                        "re-encryption progress"
                    );
                }
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::error!(task = "vault-rotation", %error, "re-encryption step failed; retrying later");
                }
                Err(error) => {
                    tracing::error!(task = "vault-rotation", %error, "re-encryption step panicked");
                }
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(interval) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMN: SealedColumn = SealedColumn {
        table: "t",
        id_column: "id",
        user_id_column: "user_id",
        column: "secret",
    };

    #[test]
    fn rows_per_version_reads_headers_and_flags_non_envelopes() {
        let db = Db::open_in_memory().unwrap();
        let counts = db
            .call(|c| rows_per_version(c, &COLUMN).map_err(crate::store::StoreError::from))
            .unwrap();
        assert!(counts.is_empty(), "a missing table has no rows");
        let counts = db
            .call(|c| {
                c.execute_batch(
                    "CREATE TABLE t (id INTEGER PRIMARY KEY, user_id INTEGER, secret BLOB);
                     INSERT INTO t VALUES (1, 1, x'0100000002aa'), (2, 1, x'0100000002bb'),
                         (3, 1, x'0100000001cc'), (4, 1, x'01'), (5, 1, NULL);",
                )?;
                rows_per_version(c, &COLUMN).map_err(crate::store::StoreError::from)
            })
            .unwrap();
        assert_eq!(counts, vec![(None, 1), (Some(1), 1), (Some(2), 2)]);
    }

    #[test]
    fn ids_become_aad_text_as_documented() {
        assert_eq!(id_as_text(&Value::Integer(42)).as_deref(), Some("42"));
        assert_eq!(id_as_text(&Value::Integer(-1)).as_deref(), Some("-1"));
        assert_eq!(
            id_as_text(&Value::Text("01JD6Q".into())).as_deref(),
            Some("01JD6Q")
        );
        assert_eq!(id_as_text(&Value::Blob(vec![1])), None);
        assert_eq!(id_as_text(&Value::Null), None);
    }
}
