//! The vault's keys at rest and its operations (issue #5; ARCHITECTURE.md §3; docs/vault.md).
//!
//! The `vault` crate is the cryptography and the formats, without I/O. This module is the part
//! that touches the broker's world: it reads the master key from its source ([`source`]),
//! keeps the wrapped data keys, the key check and the Argon2id parameters in the broker's
//! SQLite database (component `vault`), re-encrypts sealed columns after a data-key rotation
//! ([`rotation`], walking the [`registry`] that components fill), reports ([`status`]) and
//! audits. It lives in the root crate rather than giving `vault` a rusqlite dependency because
//! it needs the broker's [`Db`] (one connection, per-component migrations), its audit sink and
//! its clock; `vault` stays small, pure and fuzzable, and the benchmarks use it without a
//! database.
//!
//! The serving broker holds a [`Vault`]: it is the [`vault::Sealer`] every component seals and
//! opens with. A row that fails to open is reported here (audit event and
//! [`VaultCounters::row_authentication_failures`]) and the caller treats it as "this user must
//! authorize again"; nothing is deleted.

pub mod audit_key;
pub mod config;
pub mod registry;
pub mod rotation;
pub mod scan;
pub mod source;
pub mod status;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{OptionalExtension as _, params};
use vault::{
    Aad, DataKey, KdfParams, Keyring, LiveKeyring, MasterKey, SALT_LEN, Sealer, VaultError,
};
use zeroize::Zeroizing;

use crate::audit::{AuditEvent, SharedAudit};
use crate::clock::{SharedClock, UnixSeconds};
use crate::store::{Db, StoreError};
pub use config::{KeySourceKind, VaultConfig};
pub use registry::{SealedColumns, SealedRegistry};
use source::{EnvLookup, KeySourceError, MasterSecret, SharedEnv};

pub const COMPONENT: &str = "vault";

/// Append-only (store.rs): a released step is never edited.
const MIGRATIONS: &[&str] = &[
    // 1: the master key's metadata (one row), the wrapped data keys, re-encryption progress.
    "CREATE TABLE vault_meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        master_kind TEXT NOT NULL CHECK (master_kind IN ('key', 'passphrase')),
        kdf_memory_kib INTEGER,
        kdf_iterations INTEGER,
        kdf_parallelism INTEGER,
        kdf_salt BLOB,
        key_check BLOB NOT NULL,
        min_decryption_version INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        master_rotated_at INTEGER
    );
    CREATE TABLE vault_data_keys (
        version INTEGER PRIMARY KEY CHECK (version >= 1),
        wrapped BLOB,
        state TEXT NOT NULL CHECK (state IN ('active', 'retired')),
        created_at INTEGER NOT NULL,
        retired_at INTEGER,
        CHECK ((state = 'active') = (wrapped IS NOT NULL))
    );
    CREATE TABLE vault_reencryption (
        table_name TEXT NOT NULL,
        column_name TEXT NOT NULL,
        target_version INTEGER NOT NULL,
        last_id,
        rows_done INTEGER NOT NULL DEFAULT 0,
        rows_failed INTEGER NOT NULL DEFAULT 0,
        started_at INTEGER NOT NULL,
        finished_at INTEGER,
        PRIMARY KEY (table_name, column_name)
    );",
    // 2: the audit log's checkpoint key, sealed under the data key like any other secret
    // (audit_key.rs). `user_id` is always 0: it exists for the sealed-column contract.
    "CREATE TABLE vault_audit_key (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        user_id INTEGER NOT NULL DEFAULT 0 CHECK (user_id = 0),
        sealed_key BLOB NOT NULL,
        key_id TEXT NOT NULL,
        origin TEXT NOT NULL CHECK (origin IN ('generated', 'imported')),
        created_at INTEGER NOT NULL
    );",
];

#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    #[error(
        "the vault is not initialised in {database}; run `forgejo-mcp-broker vault init --config <file>` (see docs/vault.md)"
    )]
    NotInitialised { database: String },
    #[error("the vault is already initialised; refusing to overwrite its keys")]
    AlreadyInitialised,
    #[error("vault master key: {0}")]
    KeySource(#[from] KeySourceError),
    #[error(
        "the vault was created with a {stored} master key but {origin} provides a {configured}; check [vault] key_source"
    )]
    KindMismatch {
        stored: String,
        configured: &'static str,
        origin: String,
    },
    #[error(
        "the master key from {origin} does not open this vault (key check failed): wrong key, wrong passphrase or a different database. Nothing was changed. After `vault rotate-master-key`, point [vault] at the new key; otherwise restore the right key (docs/vault.md, \"Backup and restore\")"
    )]
    WrongKey { origin: String },
    #[error(
        "data key version {version} cannot be unwrapped although the key check passed: the vault tables are damaged; restore them from a backup"
    )]
    DataKeyUnreadable { version: u32 },
    #[error(
        "{rows} sealed values exist but the vault's keys are missing from the database; refusing to create a new vault over them: restore the database from a backup (docs/vault.md)"
    )]
    OrphanedSealedValues { rows: u64 },
    #[error("the vault holds no active data key")]
    NoActiveDataKey,
    #[error("the stored Argon2id parameters or salt are damaged")]
    DamagedKdfParams,
    #[error("{0}")]
    NothingToRotate(String),
    #[error("Argon2id: {0}")]
    Kdf(#[from] vault::KdfError),
    #[error("vault: {0}")]
    Crypto(#[from] VaultError),
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    /// Only the test hook ([`rotation::JobHooks`]) produces this.
    #[error("re-encryption stopped by a test hook after {rows} rows")]
    Interrupted { rows: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("vault database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error(
        "the audit checkpoint key stored in the vault cannot be opened: the vault tables are damaged or were tampered with; restore them from a backup"
    )]
    AuditKeyUnreadable,
    #[error(
        "cannot move the audit checkpoint key from {path} into the vault: {source} (fix or remove the file; removing it starts a new key, and older checkpoints then no longer verify)"
    )]
    AuditKeyImport {
        path: PathBuf,
        source: crate::audit::AuditKeyError,
    },
    #[error("audit checkpoint key: {0}")]
    AuditKey(#[from] crate::audit::AuditKeyError),
}

/// What the vault needs from the process besides the database.
#[derive(Clone)]
pub struct VaultDeps {
    pub audit: SharedAudit,
    pub clock: SharedClock,
}

impl VaultDeps {
    fn record(&self, action: &str, detail: impl Into<String>) {
        self.audit.record(AuditEvent::VaultEvent {
            action: action.to_owned(),
            detail: detail.into(),
        });
    }
}

/// Counters for the metrics endpoint (issue #7 wires them into Prometheus).
#[derive(Debug, Default)]
pub struct VaultCounters {
    row_authentication_failures: AtomicU64,
    rows_reencrypted: AtomicU64,
}

impl VaultCounters {
    /// Sealed values that failed to open (tampered, moved, or sealed under another key).
    pub fn row_authentication_failures(&self) -> u64 {
        self.row_authentication_failures.load(Ordering::Relaxed)
    }

    /// Sealed values re-encrypted under the newest data key by the background job.
    pub fn rows_reencrypted(&self) -> u64 {
        self.rows_reencrypted.load(Ordering::Relaxed)
    }
}

/// The stored master-key metadata.
pub(crate) struct StoredMeta {
    master_kind: String,
    kdf: Option<(KdfParams, [u8; SALT_LEN])>,
    key_check: Vec<u8>,
    min_decryption_version: u32,
}

pub(crate) fn read_meta(
    connection: &rusqlite::Connection,
) -> Result<Option<StoredMeta>, KeystoreError> {
    let row = connection
        .query_row(
            "SELECT master_kind, kdf_memory_kib, kdf_iterations, kdf_parallelism, kdf_salt,
                    key_check, min_decryption_version
             FROM vault_meta WHERE id = 1",
            [],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, Option<u32>>(1)?,
                    row.get::<_, Option<u32>>(2)?,
                    row.get::<_, Option<u32>>(3)?,
                    row.get::<_, Option<Vec<u8>>>(4)?,
                    row.get::<_, Vec<u8>>(5)?,
                    row.get::<_, u32>(6)?,
                ))
            },
        )
        .optional()?;
    let Some((master_kind, memory, iterations, parallelism, salt, key_check, min)) = row else {
        return Ok(None);
    };
    let kdf = match (memory, iterations, parallelism, salt) {
        (Some(memory_kib), Some(iterations), Some(parallelism), Some(salt)) => {
            let salt: [u8; SALT_LEN] = salt
                .try_into()
                .map_err(|_| KeystoreError::DamagedKdfParams)?;
            Some((
                KdfParams {
                    memory_kib,
                    iterations,
                    parallelism,
                },
                salt,
            ))
        }
        (None, None, None, None) => None,
        _ => return Err(KeystoreError::DamagedKdfParams),
    };
    Ok(Some(StoredMeta {
        master_kind,
        kdf,
        key_check,
        min_decryption_version: min,
    }))
}

/// The vault's metadata and its active wrapped data keys, from one snapshot. Read apart, a
/// master-key rotation committing in between would pair the old key check (which this
/// process's master key passes) with data keys already wrapped under the new master key.
pub(crate) fn read_key_state(
    connection: &mut rusqlite::Connection,
) -> Result<(Option<StoredMeta>, WrappedKeys), KeystoreError> {
    let transaction = connection.transaction()?;
    let state = (read_meta(&transaction)?, read_active_keys(&transaction)?);
    transaction.commit()?;
    Ok(state)
}

/// Data keys by version, each wrapped under the master key.
pub(crate) type WrappedKeys = Vec<(u32, Vec<u8>)>;

/// Active wrapped data keys, oldest first.
pub(crate) fn read_active_keys(
    connection: &rusqlite::Connection,
) -> Result<WrappedKeys, KeystoreError> {
    let mut statement = connection.prepare(
        "SELECT version, wrapped FROM vault_data_keys WHERE state = 'active' ORDER BY version",
    )?;
    let rows = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Derives the master key from a secret; for a passphrase, with the given parameters and salt.
pub(crate) fn derive_master(
    secret: &MasterSecret,
    kdf: Option<&(KdfParams, [u8; SALT_LEN])>,
) -> Result<MasterKey, KeystoreError> {
    match secret {
        MasterSecret::Key(material) => Ok(MasterKey::derive(material)),
        MasterSecret::Passphrase(passphrase) => {
            let (params, salt) = kdf.ok_or(KeystoreError::DamagedKdfParams)?;
            let material = vault::kdf::stretch_passphrase(passphrase, params, salt)?;
            Ok(MasterKey::derive(&material))
        }
    }
}

/// Reads the source, derives the master key with the stored parameters and checks it against
/// the stored key check. Reads only.
pub(crate) fn unlock(
    meta: &StoredMeta,
    config: &VaultConfig,
    data_dir: &Path,
    env: EnvLookup<'_>,
) -> Result<MasterKey, KeystoreError> {
    let loaded = source::load(config, data_dir, env)?;
    if loaded.secret.kind() != meta.master_kind {
        return Err(KeystoreError::KindMismatch {
            stored: meta.master_kind.clone(),
            configured: loaded.secret.kind(),
            origin: loaded.origin,
        });
    }
    let master = derive_master(&loaded.secret, meta.kdf.as_ref())?;
    if !master.verify_key_check(&meta.key_check) {
        return Err(KeystoreError::WrongKey {
            origin: loaded.origin,
        });
    }
    Ok(master)
}

/// A data key row is active although its version is below `min_decryption_version`: only a
/// write to the database outside the broker (a restored old row, tampering) does that, since
/// retirement deletes the wrapped key and raises the minimum in one transaction. Such a key
/// is never loaded — its envelopes were all re-encrypted before it retired, so honouring it
/// could only open values someone put back — and, like an unreadable row, it is reported
/// while the broker keeps serving with its other keys.
fn report_below_minimum(deps: &VaultDeps, version: u32, minimum: u32) {
    tracing::error!(
        target: "vault",
        version,
        min_decryption_version = minimum,
        "a retired data key is marked active again in the database (restored or tampered row); it is not loaded"
    );
    deps.record(
        "data_key_below_minimum",
        format!("version={version} min_decryption_version={minimum}"),
    );
}

/// What `vault init` did.
#[derive(Debug)]
pub struct InitReport {
    pub origin: String,
    pub generated_key_file: Option<PathBuf>,
    pub kdf: Option<KdfParams>,
}

/// Creates the vault in a new database: master key metadata, key check, data key 1. Refuses
/// if one exists. With the `key-file` source and no key file, generates one (0600).
pub fn init(
    db: &Db,
    config: &VaultConfig,
    data_dir: &Path,
    registry: &SealedRegistry,
    deps: &VaultDeps,
    env: EnvLookup<'_>,
) -> Result<InitReport, KeystoreError> {
    db.migrate(COMPONENT, MIGRATIONS)?;
    if db.call(|connection| read_meta(connection))?.is_some() {
        return Err(KeystoreError::AlreadyInitialised);
    }
    // Sealed values without vault metadata: the metadata was lost or removed. A new vault
    // would never open them; stop so the operator restores the database instead.
    let orphaned = db.call(|connection| {
        let mut total = 0u64;
        for column in registry.columns() {
            for (_, rows) in rotation::rows_per_version(connection, &column)? {
                total += rows;
            }
        }
        Ok::<_, KeystoreError>(total)
    })?;
    if orphaned > 0 {
        return Err(KeystoreError::OrphanedSealedValues { rows: orphaned });
    }
    let mut generated_key_file = None;
    if config.key_source == KeySourceKind::KeyFile {
        let path = config.key_file_path(data_dir);
        if !path.exists() {
            source::generate_key_file(&path)?;
            generated_key_file = Some(path);
        }
    }
    let loaded = source::load(config, data_dir, env)?;
    let kdf = match loaded.secret {
        MasterSecret::Key(_) => None,
        MasterSecret::Passphrase(_) => Some((config.kdf.params(), vault::kdf::generate_salt()?)),
    };
    let master = derive_master(&loaded.secret, kdf.as_ref())?;
    let key_check = master.key_check()?;
    let data_key = DataKey::generate()?;
    let wrapped = master.wrap_data_key(1, &data_key)?;
    let now = deps.clock.now();
    let kind = loaded.secret.kind();
    db.call(|connection| {
        let transaction = connection.transaction()?;
        // Inside the transaction: two concurrent `init`s cannot both succeed (id = 1).
        if read_meta(&transaction)?.is_some() {
            return Err(KeystoreError::AlreadyInitialised);
        }
        let (memory, iterations, parallelism, salt) = kdf_columns(kdf.as_ref());
        transaction.execute(
            "INSERT INTO vault_meta (id, master_kind, kdf_memory_kib, kdf_iterations,
                 kdf_parallelism, kdf_salt, key_check, min_decryption_version, created_at)
             VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, 1, ?7)",
            params![kind, memory, iterations, parallelism, salt, key_check, now],
        )?;
        transaction.execute(
            "INSERT INTO vault_data_keys (version, wrapped, state, created_at)
             VALUES (1, ?1, 'active', ?2)",
            params![wrapped, now],
        )?;
        transaction.commit()?;
        Ok::<_, KeystoreError>(())
    })?;
    deps.record("vault_initialised", format!("source={}", loaded.origin));
    Ok(InitReport {
        origin: loaded.origin,
        generated_key_file,
        kdf: kdf.map(|(params, _)| params),
    })
}

pub(crate) fn kdf_columns(
    kdf: Option<&(KdfParams, [u8; SALT_LEN])>,
) -> (Option<u32>, Option<u32>, Option<u32>, Option<Vec<u8>>) {
    match kdf {
        Some((params, salt)) => (
            Some(params.memory_kib),
            Some(params.iterations),
            Some(params.parallelism),
            Some(salt.to_vec()),
        ),
        None => (None, None, None, None),
    }
}

#[derive(Debug, PartialEq, Eq)]
struct ReloadAttempt {
    key_check: Vec<u8>,
    source: Option<source::SourceFingerprint>,
}

/// The serving broker's vault: the [`Sealer`] components use.
pub struct Vault {
    db: Db,
    keyring: LiveKeyring,
    master: Mutex<MasterKey>,
    config: VaultConfig,
    data_dir: PathBuf,
    registry: SealedRegistry,
    deps: VaultDeps,
    counters: VaultCounters,
    origin: String,
    /// The last failed attempt to reload the master key from its source (after a rotation).
    last_reload: Mutex<Option<ReloadAttempt>>,
    /// Data key versions already reported as active below `min_decryption_version`.
    reported_below_minimum: Mutex<BTreeSet<u32>>,
    /// The target version the previous job step found no older row for (rotation.rs).
    pub(crate) retire_candidate: Mutex<Option<u32>>,
    metrics: Option<crate::metrics::Metrics>,
    env: SharedEnv,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("origin", &self.origin)
            .field("versions", &self.keyring.versions())
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Opens the vault for serving. Refuses (and changes nothing) when the key is missing or
    /// wrong; initialises only a vault that never existed, and only with `auto_init`.
    pub fn open(
        db: Db,
        config: VaultConfig,
        data_dir: &Path,
        registry: SealedRegistry,
        deps: VaultDeps,
        env: SharedEnv,
    ) -> Result<Self, KeystoreError> {
        db.migrate(COMPONENT, MIGRATIONS)?;
        let (mut meta, mut active) = db.call(read_key_state)?;
        // A database without vault metadata holds no sealed value, so creating a vault in it
        // cannot make anything unreadable; a database with one is never re-initialised.
        if meta.is_none() && config.auto_init {
            let report = init(&db, &config, data_dir, &registry, &deps, &*env)?;
            tracing::warn!(
                target: "vault",
                source = %report.origin,
                generated_key_file = ?report.generated_key_file,
                "initialised a new vault (first start); back the master key up separately from the database — without it the stored Forgejo tokens cannot be read (docs/vault.md)"
            );
            (meta, active) = db.call(read_key_state)?;
        }
        let Some(meta) = meta else {
            return Err(KeystoreError::NotInitialised {
                database: db
                    .path()
                    .map_or_else(|| ":memory:".to_owned(), |path| path.display().to_string()),
            });
        };
        let master = unlock(&meta, &config, data_dir, &*env)?;
        if let Some((stored, _)) = &meta.kdf
            && !stored.at_least(&config.kdf.params())
        {
            tracing::warn!(
                target: "vault",
                ?stored,
                configured = ?config.kdf.params(),
                "the vault's Argon2id parameters are weaker than configured; run `forgejo-mcp-broker vault rotate-master-key` to raise them"
            );
        }
        let mut keyring = Keyring::new();
        for (version, wrapped) in active {
            if version < meta.min_decryption_version {
                report_below_minimum(&deps, version, meta.min_decryption_version);
                continue;
            }
            let key = master
                .unwrap_data_key(version, &wrapped)
                .map_err(|_| KeystoreError::DataKeyUnreadable { version })?;
            keyring.insert(version, key);
        }
        if keyring.current_version().is_none() {
            return Err(KeystoreError::NoActiveDataKey);
        }
        let origin = source::describe(&config, data_dir);
        if config.key_source == KeySourceKind::Env {
            deps.record("key_source_discouraged", format!("source={origin}"));
        }
        deps.record(
            "vault_opened",
            format!(
                "source={origin} versions={:?}",
                keyring.versions().collect::<Vec<_>>()
            ),
        );
        Ok(Self {
            db,
            keyring: LiveKeyring::new(keyring),
            master: Mutex::new(master),
            config,
            data_dir: data_dir.to_path_buf(),
            registry,
            deps,
            counters: VaultCounters::default(),
            origin,
            last_reload: Mutex::new(None),
            reported_below_minimum: Mutex::new(BTreeSet::new()),
            retire_candidate: Mutex::new(None),
            metrics: None,
            env,
        })
    }

    /// Also counts operations in the Prometheus registry (`vault_operations{operation,
    /// outcome}`): `seal`, `open`, `reencrypt`, `load_data_key`, `retire`.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub(crate) fn count(&self, operation: &'static str, ok: bool) {
        if let Some(metrics) = &self.metrics {
            metrics.vault_operation(operation, if ok { "ok" } else { "error" });
        }
    }

    pub fn counters(&self) -> &VaultCounters {
        &self.counters
    }

    pub fn config(&self) -> &VaultConfig {
        &self.config
    }

    pub fn registry(&self) -> &SealedRegistry {
        &self.registry
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The data key versions this broker holds.
    pub fn versions(&self) -> Vec<u32> {
        self.keyring.versions()
    }

    pub fn current_version(&self) -> Option<u32> {
        self.keyring.current_version()
    }

    fn now(&self) -> UnixSeconds {
        self.deps.clock.now()
    }

    /// Opens a sealed value, treating failure as "the user must authorize again": the failure
    /// is already reported (see [`Sealer::open`] on [`Vault`]); callers map `Err` to that.
    pub fn open_or_reauthorize(
        &self,
        aad: &Aad<'_>,
        envelope: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, MustAuthorizeAgain> {
        self.open(aad, envelope).map_err(|_| MustAuthorizeAgain)
    }

    pub(crate) fn report_unreadable(&self, aad: &Aad<'_>, error: &VaultError) {
        self.counters
            .row_authentication_failures
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            target: "vault",
            table = aad.table,
            column = aad.column,
            row_id = aad.row_id,
            user_id = aad.user_id,
            %error,
            "a sealed value could not be opened; the user must authorize again (the row is kept)"
        );
        self.deps.record(
            "row_unreadable",
            format!(
                "table={} column={} row_id={} user_id={} reason={error}",
                aad.table, aad.column, aad.row_id, aad.user_id
            ),
        );
    }

    /// Loads data keys added since start (an operator ran `vault rotate-data-key`) and drops
    /// retired ones. After a master-key rotation this process's master key no longer unwraps
    /// new data keys; it then re-reads its configured source once per new version (the
    /// operator may have replaced the key file in place), and otherwise keeps serving with the
    /// keys it has and warns: a restart with the new key picks them up. A version below
    /// `min_decryption_version` is never loaded, whatever its row says (`report_below_minimum`).
    pub fn refresh_keys(&self) -> Result<(), KeystoreError> {
        let (meta, active) = self.db.call(read_key_state)?;
        let Some(meta) = meta else {
            return Ok(());
        };
        for (version, wrapped) in active {
            if self.keyring.read(|keyring| keyring.contains(version)) {
                continue;
            }
            if version < meta.min_decryption_version {
                // Reported once per version, not at every tick; the job retires the row
                // again once no sealed value uses the version (rotation.rs).
                let mut reported = self
                    .reported_below_minimum
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if reported.insert(version) {
                    self.count("load_data_key", false);
                    report_below_minimum(&self.deps, version, meta.min_decryption_version);
                }
                continue;
            }
            let unwrapped = {
                let master = self
                    .master
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                master.unwrap_data_key(version, &wrapped)
            };
            let key = match unwrapped {
                Ok(key) => key,
                Err(_) => {
                    // Re-reading the source (and, for a passphrase, running Argon2id again)
                    // is retried only when the stored key check or the source file changed
                    // since the last failed attempt, not on every tick.
                    let attempt = ReloadAttempt {
                        key_check: meta.key_check.clone(),
                        source: source::fingerprint(&self.config, &self.data_dir, &*self.env),
                    };
                    let mut last = self
                        .last_reload
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if last.as_ref() == Some(&attempt) {
                        continue;
                    }
                    match unlock(&meta, &self.config, &self.data_dir, &*self.env) {
                        Ok(new_master) => {
                            let key = new_master
                                .unwrap_data_key(version, &wrapped)
                                .map_err(|_| KeystoreError::DataKeyUnreadable { version })?;
                            *self
                                .master
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) = new_master;
                            *last = None;
                            tracing::info!(target: "vault", "master key reloaded from its source after a rotation");
                            key
                        }
                        Err(error) => {
                            *last = Some(attempt);
                            self.count("load_data_key", false);
                            tracing::warn!(
                                target: "vault",
                                version,
                                %error,
                                "a new data key is wrapped under a master key this broker does not hold (the master key was rotated while serving); replace the key in place or restart the broker with the new key to use it"
                            );
                            continue;
                        }
                    }
                }
            };
            self.keyring.update(|keyring| keyring.insert(version, key));
            self.count("load_data_key", true);
            tracing::info!(target: "vault", version, "data key loaded");
        }
        // Retired versions stay in this process's keyring until it restarts: a write that
        // sealed under an old version just before the switch and landed after the retirement
        // is still opened, and re-encrypted by the job's next pass (rotation.rs).
        Ok(())
    }
}

/// A sealed value could not be opened: the user must authorize again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the stored credential cannot be read; the user must authorize again")]
pub struct MustAuthorizeAgain;

impl Sealer for Vault {
    fn seal(&self, aad: &Aad<'_>, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        let result = self.keyring.seal(aad, plaintext);
        self.count("seal", result.is_ok());
        result
    }

    /// Opens, and reports every failure to authenticate (audit `vault_event`
    /// `row_unreadable`, error log, counter). Never deletes anything.
    fn open(&self, aad: &Aad<'_>, envelope: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let result = self.keyring.open(aad, envelope);
        self.count("open", result.is_ok());
        if let Err(error) = &result {
            self.report_unreadable(aad, error);
        }
        result
    }
}
