//! The audit log's checkpoint key, kept in the vault (issue #7; docs/operations.md).
//!
//! The HMAC checkpoints of the audit log are only worth something if whoever can write the log
//! cannot also read the key. The key therefore lives where the Forgejo tokens live: sealed
//! under the vault's data key in the broker's database (one row of `vault_audit_key`), so it
//! is readable only with the master key, follows data-key rotations through the ordinary
//! re-encryption job (the column is in the sealed registry) and is untouched by master-key
//! rotations (only data keys are re-wrapped then). It is generated once and never changes, so
//! checkpoints written years apart verify with the same key; its public fingerprint (`key_id`)
//! is kept beside it and written in every checkpoint.
//!
//! Brokers from before this change kept the key in a 0600 file (`audit.key_file`). The first
//! start that finds such a file and no key in the vault moves it in: the key is sealed, the
//! file is removed, and the log's old checkpoints keep verifying because the key is the same.

use std::path::Path;

use rusqlite::{OptionalExtension as _, params};
use vault::{Aad, Sealer as _};

use super::{KeystoreError, SealedColumns, Vault};
use crate::audit::AuditKey;

const TABLE: &str = "vault_audit_key";
const COLUMN: &str = "sealed_key";

/// The sealed column, for [`crate::app::sealed_columns`].
pub const SEALED_COLUMNS: SealedColumns = SealedColumns {
    table: TABLE,
    id_column: "id",
    user_id_column: "user_id",
    columns: &[COLUMN],
};

fn aad() -> Aad<'static> {
    Aad {
        table: TABLE,
        column: COLUMN,
        row_id: "1",
        user_id: 0,
    }
}

/// Where a newly stored key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Generated,
    Imported,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Self::Generated => "generated",
            Self::Imported => "imported",
        }
    }
}

impl Vault {
    /// The audit checkpoint key this vault holds, if it holds one. A stored key that does not
    /// open (a damaged or tampered row) is an error, reported like any unreadable row.
    pub fn audit_key(&self) -> Result<Option<AuditKey>, KeystoreError> {
        let Some((sealed, key_id)) = self.db.call(|connection| {
            connection
                .query_row(
                    &format!("SELECT {COLUMN}, key_id FROM {TABLE} WHERE id = 1"),
                    [],
                    |row| Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, String>(1)?)),
                )
                .optional()
                .map_err(KeystoreError::from)
        })?
        else {
            return Ok(None);
        };
        let plain = self
            .open(&aad(), &sealed)
            .map_err(|_| KeystoreError::AuditKeyUnreadable)?;
        let bytes: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| KeystoreError::AuditKeyUnreadable)?;
        let key = AuditKey::from_bytes(bytes);
        if key.key_id() != key_id {
            return Err(KeystoreError::AuditKeyUnreadable);
        }
        Ok(Some(key))
    }

    /// The key the broker checkpoints its audit log with: the one in the vault; else the key of
    /// a pre-vault `legacy_file`, moved into the vault (the file is then removed); else a new
    /// random key, stored. Concurrent callers (a serving broker and an `admin` command) end up
    /// with the same key: the first insert wins and everyone reads it back.
    pub fn audit_key_or_create(&self, legacy_file: &Path) -> Result<AuditKey, KeystoreError> {
        if let Some(key) = self.audit_key()? {
            if legacy_file.exists() {
                // A copy of the vault's key (an earlier removal failed) goes; a different key
                // still verifies some older log and is left for the operator.
                match AuditKey::load(legacy_file) {
                    Ok(old) if old.key_id() == key.key_id() => remove_legacy_file(legacy_file),
                    _ => tracing::warn!(
                        target: "audit",
                        path = %legacy_file.display(),
                        "an old audit key file that is not the vault's key is still there; it may verify older logs (`audit verify` uses the vault's key); move it off this host"
                    ),
                }
            }
            return Ok(key);
        }
        let (key, origin) = if legacy_file.exists() {
            let key =
                AuditKey::load(legacy_file).map_err(|source| KeystoreError::AuditKeyImport {
                    path: legacy_file.to_path_buf(),
                    source,
                })?;
            (key, Origin::Imported)
        } else {
            (AuditKey::generate()?, Origin::Generated)
        };
        let sealed = self.seal(&aad(), key.expose_bytes())?;
        let key_id = key.key_id();
        let now = self.now();
        let inserted = self.db.call(|connection| {
            connection
                .execute(
                    &format!(
                        "INSERT OR IGNORE INTO {TABLE} (id, user_id, {COLUMN}, key_id, origin, created_at)
                         VALUES (1, 0, ?1, ?2, ?3, ?4)"
                    ),
                    params![sealed, key_id, origin.as_str(), now],
                )
                .map_err(KeystoreError::from)
        })?;
        if inserted == 1 {
            let detail = match origin {
                Origin::Generated => format!("key_id={key_id}"),
                Origin::Imported => {
                    format!("key_id={key_id} from={}", legacy_file.display())
                }
            };
            self.deps.record(
                match origin {
                    Origin::Generated => "audit_key_created",
                    Origin::Imported => "audit_key_imported",
                },
                detail,
            );
        }
        if origin == Origin::Imported {
            remove_legacy_file(legacy_file);
        }
        // Whoever inserted first, the stored key is the one.
        self.audit_key()?.ok_or(KeystoreError::AuditKeyUnreadable)
    }
}

/// The key is in the vault now: a copy in a file would let anyone who reads the data directory
/// forge checkpoints.
fn remove_legacy_file(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::warn!(
            target: "audit",
            path = %path.display(),
            "the audit checkpoint key now lives in the vault; removed the old key file"
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::error!(
            target: "audit",
            path = %path.display(),
            %error,
            "the audit checkpoint key now lives in the vault, but its old key file could not be removed; remove it by hand"
        ),
    }
}
