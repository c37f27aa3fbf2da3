//! `vault status`: what an operator needs to see — never a secret.

use std::fmt;
use std::path::Path;

use rusqlite::params;
use vault::KdfParams;

use super::registry::SealedRegistry;
use super::rotation::rows_per_version;
use super::source::{self, EnvLookup};
use super::{COMPONENT, KeystoreError, MIGRATIONS, VaultConfig, read_meta, unlock};
use crate::clock::UnixSeconds;
use crate::store::Db;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataKeyStatus {
    pub version: u32,
    pub state: String,
    pub created_at: UnixSeconds,
    pub retired_at: Option<UnixSeconds>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnStatus {
    pub column: String,
    /// (key version, rows); `None` for values whose header is not an envelope.
    pub rows_per_version: Vec<(Option<u32>, u64)>,
    /// (target version, rows done, rows that failed to open, finished).
    pub reencryption: Option<(u32, u64, u64, bool)>,
}

#[derive(Debug, Clone)]
pub struct StatusReport {
    pub source: String,
    pub initialised: bool,
    /// "ok", or why the configured key does not open the vault.
    pub key: String,
    pub master_kind: Option<String>,
    pub kdf: Option<KdfParams>,
    pub configured_kdf: KdfParams,
    pub data_keys: Vec<DataKeyStatus>,
    pub min_decryption_version: Option<u32>,
    pub columns: Vec<ColumnStatus>,
}

impl StatusReport {
    pub fn current_version(&self) -> Option<u32> {
        self.data_keys
            .iter()
            .filter(|key| key.state == "active")
            .map(|key| key.version)
            .max()
    }

    /// Rows not yet at the current version, over every sealed column.
    pub fn rows_pending(&self) -> u64 {
        let current = self.current_version();
        self.columns
            .iter()
            .flat_map(|column| column.rows_per_version.iter())
            .filter(|(version, _)| *version != current)
            .map(|(_, rows)| rows)
            .sum()
    }
}

/// Gathers the status; the key is loaded only to say whether it opens the vault.
pub fn status(
    db: &Db,
    config: &VaultConfig,
    data_dir: &Path,
    registry: &SealedRegistry,
    env: EnvLookup<'_>,
) -> Result<StatusReport, KeystoreError> {
    db.migrate(COMPONENT, MIGRATIONS)?;
    let meta = db.call(|connection| read_meta(connection))?;
    let key = match &meta {
        None => "vault not initialised".to_owned(),
        Some(meta) => match unlock(meta, config, data_dir, env) {
            Ok(_) => "ok".to_owned(),
            Err(error) => error.to_string(),
        },
    };
    let (data_keys, columns) = db.call(|connection| {
        let mut statement = connection.prepare(
            "SELECT version, state, created_at, retired_at FROM vault_data_keys ORDER BY version",
        )?;
        let data_keys = statement
            .query_map([], |row| {
                Ok(DataKeyStatus {
                    version: row.get(0)?,
                    state: row.get(1)?,
                    created_at: row.get(2)?,
                    retired_at: row.get(3)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut columns = Vec::new();
        for column in registry.columns() {
            let reencryption = connection
                .query_row(
                    "SELECT target_version, rows_done, rows_failed, finished_at IS NOT NULL
                     FROM vault_reencryption WHERE table_name = ?1 AND column_name = ?2",
                    params![column.table, column.column],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
                )
                .ok();
            columns.push(ColumnStatus {
                column: column.to_string(),
                rows_per_version: rows_per_version(connection, &column)?,
                reencryption,
            });
        }
        Ok::<_, KeystoreError>((data_keys, columns))
    })?;
    Ok(StatusReport {
        source: source::describe(config, data_dir),
        initialised: meta.is_some(),
        key,
        master_kind: meta.as_ref().map(|meta| meta.master_kind.clone()),
        kdf: meta
            .as_ref()
            .and_then(|meta| meta.kdf.as_ref().map(|(params, _)| *params)),
        configured_kdf: config.kdf.params(),
        data_keys,
        min_decryption_version: meta.as_ref().map(|meta| meta.min_decryption_version),
        columns,
    })
}

/// RFC 3339 in UTC, or the raw number if it is out of range.
fn timestamp(unix: UnixSeconds) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

impl fmt::Display for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "key source:        {}", self.source)?;
        if !self.initialised {
            return writeln!(
                f,
                "vault:             not initialised (run `forgejo-mcp-broker vault init`)"
            );
        }
        writeln!(f, "key:               {}", self.key)?;
        writeln!(
            f,
            "master key kind:   {}",
            self.master_kind.as_deref().unwrap_or("?")
        )?;
        if let Some(kdf) = self.kdf {
            let weaker = !kdf.at_least(&self.configured_kdf);
            writeln!(
                f,
                "argon2id:          m={} KiB t={} p={}{}",
                kdf.memory_kib,
                kdf.iterations,
                kdf.parallelism,
                if weaker {
                    " (weaker than configured: run `vault rotate-master-key`)"
                } else {
                    ""
                }
            )?;
        }
        writeln!(
            f,
            "current data key:  v{}",
            self.current_version().unwrap_or_default()
        )?;
        writeln!(
            f,
            "min decryption:    v{}",
            self.min_decryption_version.unwrap_or_default()
        )?;
        writeln!(f, "data keys:")?;
        for key in &self.data_keys {
            writeln!(
                f,
                "  v{:<4} {:<8} created {}{}",
                key.version,
                key.state,
                timestamp(key.created_at),
                key.retired_at
                    .map(|at| format!(", retired {}", timestamp(at)))
                    .unwrap_or_default()
            )?;
        }
        writeln!(f, "sealed columns:")?;
        if self.columns.is_empty() {
            writeln!(f, "  (none registered)")?;
        }
        for column in &self.columns {
            let per_version: Vec<String> = column
                .rows_per_version
                .iter()
                .map(|(version, rows)| match version {
                    Some(version) => format!("v{version}: {rows}"),
                    None => format!("not an envelope: {rows}"),
                })
                .collect();
            writeln!(
                f,
                "  {:<40} rows {}",
                column.column,
                if per_version.is_empty() {
                    "none".to_owned()
                } else {
                    per_version.join(", ")
                }
            )?;
            if let Some((target, done, failed, finished)) = column.reencryption {
                writeln!(
                    f,
                    "  {:<40} re-encryption to v{target}: {done} done, {failed} unreadable, {}",
                    "",
                    if finished { "finished" } else { "in progress" }
                )?;
            }
        }
        writeln!(f, "rows pending re-encryption: {}", self.rows_pending())
    }
}
