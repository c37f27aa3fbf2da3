//! The vault against a real SQLite file: key sources, refusal on a wrong or missing key,
//! master-key and data-key rotation (also under concurrent reads and writes), interrupted
//! rotation, unreadable rows, and no secret in Debug, status or logs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use forgejo_mcp_broker::audit::{AuditEvent, MemoryAudit};
use forgejo_mcp_broker::clock::ManualClock;
use forgejo_mcp_broker::keystore::config::KdfConfig;
use forgejo_mcp_broker::keystore::rotation::{self, JobHooks, NewMasterKey};
use forgejo_mcp_broker::keystore::source::{self, SharedEnv};
use forgejo_mcp_broker::keystore::{
    self, KeySourceKind, KeystoreError, SealedColumns, SealedRegistry, Vault, VaultConfig,
    VaultDeps, scan,
};
use forgejo_mcp_broker::store::{Db, StoreError};
use rusqlite::params;
use vault::{Aad, Sealer};

const TABLE: SealedColumns = SealedColumns {
    table: "test_secrets",
    id_column: "id",
    user_id_column: "user_id",
    columns: &["access_token", "refresh_token"],
};

struct Fixture {
    dir: tempfile::TempDir,
    audit: Arc<MemoryAudit>,
    config: VaultConfig,
}

fn no_env(_: &str) -> Option<OsString> {
    None
}

fn shared_no_env() -> SharedEnv {
    Arc::new(no_env)
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = VaultConfig {
            key_file: Some(dir.path().join("keys/vault.key")),
            rotation_batch_rows: 3,
            ..VaultConfig::default()
        };
        Self {
            audit: MemoryAudit::new(),
            dir,
            config,
        }
    }

    fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    fn db_path(&self) -> PathBuf {
        self.dir.path().join("broker.db")
    }

    /// A new connection to the database, as another process (the CLI) would have.
    fn db(&self) -> Db {
        let db = Db::open(&self.db_path()).unwrap();
        db.call(|connection| {
            connection
                .execute_batch(
                    "CREATE TABLE IF NOT EXISTS test_secrets (
                        id INTEGER PRIMARY KEY,
                        user_id INTEGER NOT NULL,
                        access_token BLOB,
                        refresh_token BLOB
                    );",
                )
                .map_err(StoreError::from)
        })
        .unwrap();
        db
    }

    fn deps(&self) -> VaultDeps {
        VaultDeps {
            audit: self.audit.clone(),
            clock: ManualClock::new(1_700_000_000),
        }
    }

    fn init(&self) {
        keystore::init(
            &self.db(),
            &self.config,
            self.data_dir(),
            &SealedRegistry::new().with(TABLE).unwrap(),
            &self.deps(),
            &no_env,
        )
        .unwrap();
    }

    fn open(&self) -> Result<Vault, KeystoreError> {
        self.open_with(&self.config)
    }

    /// `vault rotate-data-key` against `db`; the new version.
    fn rotate_data_key(&self, db: &Db) -> u32 {
        rotation::rotate_data_key(db, &self.config, self.data_dir(), &self.deps(), &no_env).unwrap()
    }

    fn open_with(&self, config: &VaultConfig) -> Result<Vault, KeystoreError> {
        Vault::open(
            self.db(),
            config.clone(),
            self.data_dir(),
            SealedRegistry::new().with(TABLE).unwrap(),
            self.deps(),
            shared_no_env(),
        )
    }

    fn key_file(&self) -> PathBuf {
        self.config.key_file_path(self.data_dir())
    }

    fn vault_tables(&self) -> Vec<(String, Vec<u8>)> {
        self.db()
            .call(|connection| {
                let mut statement = connection.prepare(
                    "SELECT 'meta', key_check FROM vault_meta
                     UNION ALL SELECT 'key' || version, coalesce(wrapped, x'') FROM vault_data_keys",
                )?;
                let rows = statement
                    .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, StoreError>(rows)
            })
            .unwrap()
    }
}

fn token(id: i64, column: &str) -> String {
    format!("gto_{column}_{id:04}_e3b0c44298fc1c149afbf4c8996fb924")
}

fn aad<'a>(column: &'a str, row_id: &'a str, user_id: i64) -> Aad<'a> {
    Aad {
        table: "test_secrets",
        column,
        row_id,
        user_id,
    }
}

/// Seals and writes both columns of row `id` (user `id % 7`), as the owning component would.
fn write_row(vault: &Vault, db: &Db, id: i64) {
    let user = id % 7;
    let row_id = id.to_string();
    let access = vault
        .seal(
            &aad("access_token", &row_id, user),
            token(id, "access_token").as_bytes(),
        )
        .unwrap();
    let refresh = vault
        .seal(
            &aad("refresh_token", &row_id, user),
            token(id, "refresh_token").as_bytes(),
        )
        .unwrap();
    db.call(|connection| {
        connection
            .execute(
                "INSERT INTO test_secrets (id, user_id, access_token, refresh_token)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET access_token = excluded.access_token,
                     refresh_token = excluded.refresh_token",
                params![id, user, access, refresh],
            )
            .map_err(StoreError::from)
    })
    .unwrap();
}

/// Reads and opens both columns of row `id`, checking the plaintext.
fn check_row(vault: &Vault, db: &Db, id: i64) {
    let (user, access, refresh): (i64, Vec<u8>, Vec<u8>) = db
        .call(|connection| {
            connection
                .query_row(
                    "SELECT user_id, access_token, refresh_token FROM test_secrets WHERE id = ?1",
                    params![id],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .map_err(StoreError::from)
        })
        .unwrap();
    let row_id = id.to_string();
    for (column, envelope) in [("access_token", access), ("refresh_token", refresh)] {
        let opened = vault.open(&aad(column, &row_id, user), &envelope).unwrap();
        assert_eq!(opened.as_slice(), token(id, column).as_bytes());
    }
}

fn sealed_columns(db: &Db) -> Vec<(i64, Vec<u8>, Vec<u8>)> {
    db.call(|connection| {
        let mut statement = connection
            .prepare("SELECT id, access_token, refresh_token FROM test_secrets ORDER BY id")?;
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, StoreError>(rows)
    })
    .unwrap()
}

fn versions_in_use(db: &Db) -> Vec<u32> {
    let mut versions: Vec<u32> = sealed_columns(db)
        .iter()
        .flat_map(|(_, a, r)| [a, r])
        .map(|envelope| vault::Keyring::envelope_key_version(envelope).unwrap())
        .collect();
    versions.sort_unstable();
    versions.dedup();
    versions
}

fn run_job_to_idle(vault: &Vault) -> rotation::StepReport {
    let mut total = rotation::StepReport::default();
    for _ in 0..1_000 {
        let step = vault.reencrypt_step(JobHooks::default()).unwrap();
        total.reencrypted += step.reencrypted;
        total.failed += step.failed;
        total.retired.extend(step.retired);
        if step.idle {
            total.idle = true;
            return total;
        }
    }
    panic!("the re-encryption job never became idle");
}

#[test]
fn init_then_serve_round_trips_and_init_never_overwrites() {
    let fixture = Fixture::new();
    fixture.init();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(fixture.key_file()).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let vault = fixture.open().unwrap();
    let db = fixture.db();
    write_row(&vault, &db, 1);
    check_row(&vault, &db, 1);
    let before = fixture.vault_tables();
    let again = keystore::init(
        &db,
        &fixture.config,
        fixture.data_dir(),
        &SealedRegistry::new().with(TABLE).unwrap(),
        &fixture.deps(),
        &no_env,
    );
    assert!(matches!(again, Err(KeystoreError::AlreadyInitialised)));
    assert_eq!(fixture.vault_tables(), before);
}

#[test]
fn a_wrong_or_missing_key_refuses_and_changes_nothing() {
    let fixture = Fixture::new();
    fixture.init();
    let vault = fixture.open().unwrap();
    write_row(&vault, &fixture.db(), 1);
    drop(vault);
    let before = fixture.vault_tables();
    let rows_before = sealed_columns(&fixture.db());

    let original = std::fs::read(fixture.key_file()).unwrap();
    std::fs::remove_file(fixture.key_file()).unwrap();
    source::generate_key_file(&fixture.key_file()).unwrap();
    let error = fixture.open().unwrap_err();
    assert!(matches!(error, KeystoreError::WrongKey { .. }), "{error}");
    assert!(error.to_string().contains("Nothing was changed"), "{error}");

    std::fs::remove_file(fixture.key_file()).unwrap();
    let error = fixture.open().unwrap_err();
    assert!(matches!(error, KeystoreError::KeySource(_)), "{error}");
    assert!(
        !fixture.key_file().exists(),
        "an initialised vault never generates a replacement key"
    );
    assert_eq!(fixture.vault_tables(), before);
    assert_eq!(sealed_columns(&fixture.db()), rows_before);

    std::fs::write(fixture.key_file(), original).unwrap();
    std::fs::set_permissions(
        fixture.key_file(),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let vault = fixture.open().unwrap();
    check_row(&vault, &fixture.db(), 1);
}

#[test]
fn a_passphrase_vault_honours_its_stored_kdf_parameters_and_can_raise_them() {
    let fixture = Fixture::new();
    let passphrase = fixture.data_dir().join("passphrase");
    std::fs::write(&passphrase, "correct horse battery staple\n").unwrap();
    std::fs::set_permissions(
        &passphrase,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let weak = KdfConfig {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    let mut config = VaultConfig {
        key_source: KeySourceKind::PassphraseFile,
        passphrase_file: Some(passphrase.clone()),
        allow_weak_kdf: true,
        kdf: weak,
        ..VaultConfig::default()
    };
    let db = fixture.db();
    keystore::init(
        &db,
        &config,
        fixture.data_dir(),
        &SealedRegistry::new().with(TABLE).unwrap(),
        &fixture.deps(),
        &no_env,
    )
    .unwrap();
    let vault = fixture.open_with(&config).unwrap();
    write_row(&vault, &db, 1);
    drop(vault);

    // The configuration now asks for more; the vault still opens with what it stored.
    config.kdf = KdfConfig {
        memory_kib: 256,
        iterations: 2,
        parallelism: 2,
    };
    let registry = SealedRegistry::new().with(TABLE).unwrap();
    let status =
        keystore::status::status(&db, &config, fixture.data_dir(), &registry, &no_env).unwrap();
    assert_eq!(status.kdf.unwrap().memory_kib, 64);
    assert!(
        status.to_string().contains("weaker than configured"),
        "{status}"
    );
    let vault = fixture.open_with(&config).unwrap();
    check_row(&vault, &db, 1);
    drop(vault);

    let rows_before = sealed_columns(&db);
    rotation::rotate_master_key(
        &db,
        &config,
        fixture.data_dir(),
        &NewMasterKey::SamePassphrase,
        &fixture.deps(),
        &no_env,
    )
    .unwrap();
    let status =
        keystore::status::status(&db, &config, fixture.data_dir(), &registry, &no_env).unwrap();
    assert_eq!(status.kdf.unwrap(), config.kdf.params());
    assert!(!status.to_string().contains("weaker than configured"));
    assert_eq!(sealed_columns(&db), rows_before, "no row rewritten");
    let vault = fixture.open_with(&config).unwrap();
    check_row(&vault, &db, 1);
    drop(vault);

    std::fs::write(&passphrase, "a different passphrase\n").unwrap();
    assert!(matches!(
        fixture.open_with(&config),
        Err(KeystoreError::WrongKey { .. })
    ));
}

#[test]
fn master_key_rotation_rewraps_keys_without_touching_rows() {
    let fixture = Fixture::new();
    fixture.init();
    let serving = fixture.open().unwrap();
    let db = fixture.db();
    for id in 1..=5 {
        write_row(&serving, &db, id);
    }
    let rows_before = sealed_columns(&db);
    let keys_before = fixture.vault_tables();
    let new_key = fixture.data_dir().join("keys/vault-2.key");
    let report = rotation::rotate_master_key(
        &fixture.db(),
        &fixture.config,
        fixture.data_dir(),
        &NewMasterKey::KeyFile(new_key.clone()),
        &fixture.deps(),
        &no_env,
    )
    .unwrap();
    assert_eq!(report.rewrapped_versions, vec![1]);
    assert!(report.wal_checkpointed);
    // The old wrapping is gone from the database file and its WAL.
    let old_wrapped = keys_before
        .iter()
        .find(|(name, _)| name == "key1")
        .map(|(_, wrapped)| wrapped.clone())
        .unwrap();
    assert_eq!(
        scan::database_files(&fixture.db_path(), &[old_wrapped.as_slice()]),
        vec![]
    );
    assert_eq!(
        report.generated_key_file.as_deref(),
        Some(new_key.as_path())
    );
    assert_eq!(sealed_columns(&db), rows_before, "no row rewritten");
    assert_ne!(fixture.vault_tables(), keys_before, "keys re-wrapped");
    // The serving broker did not notice: it keeps its data keys.
    check_row(&serving, &db, 3);
    write_row(&serving, &db, 6);

    assert!(matches!(
        fixture.open(),
        Err(KeystoreError::WrongKey { .. })
    ));
    let switched = VaultConfig {
        key_file: Some(new_key),
        ..fixture.config.clone()
    };
    let restarted = fixture.open_with(&switched).unwrap();
    for id in 1..=6 {
        check_row(&restarted, &db, id);
    }
    assert!(fixture.audit.events().iter().any(|event| matches!(
        event,
        AuditEvent::VaultEvent { action, .. } if action == "master_key_rotated"
    )));
}

#[test]
fn data_key_rotation_reencrypts_in_the_background_then_retires_the_old_key() {
    let fixture = Fixture::new();
    fixture.init();
    let vault = fixture.open().unwrap();
    let db = fixture.db();
    for id in 1..=10 {
        write_row(&vault, &db, id);
    }
    assert_eq!(run_job_to_idle(&vault).reencrypted, 0);
    let version = fixture.rotate_data_key(&fixture.db());
    assert_eq!(version, 2);
    // Status before the broker's next tick: all rows pending.
    let registry = SealedRegistry::new().with(TABLE).unwrap();
    let status =
        keystore::status::status(&db, &fixture.config, fixture.data_dir(), &registry, &no_env)
            .unwrap();
    assert_eq!(status.rows_pending(), 20);

    // One tick: the new key is loaded, new writes use it (lazy re-encryption on write).
    let first = vault.reencrypt_step(JobHooks::default()).unwrap();
    assert_eq!(vault.current_version(), Some(2));
    assert_eq!(first.reencrypted, 6, "batch of 3 per column");
    write_row(&vault, &db, 10);
    let status =
        keystore::status::status(&db, &fixture.config, fixture.data_dir(), &registry, &no_env)
            .unwrap();
    assert_eq!(status.rows_pending(), 20 - 6 - 2);
    assert!(status.to_string().contains("in progress"), "{status}");

    let rest = run_job_to_idle(&vault);
    assert_eq!(rest.reencrypted, 12);
    assert_eq!(rest.retired, vec![1]);
    assert_eq!(versions_in_use(&db), vec![2]);
    for id in 1..=10 {
        check_row(&vault, &db, id);
    }
    let status =
        keystore::status::status(&db, &fixture.config, fixture.data_dir(), &registry, &no_env)
            .unwrap();
    assert_eq!(status.min_decryption_version, Some(2));
    assert_eq!(status.rows_pending(), 0);
    assert_eq!(vault.counters().rows_reencrypted(), 18);
    // A restart loads only the active key.
    let restarted = fixture.open().unwrap();
    assert_eq!(restarted.versions(), vec![2]);
    check_row(&restarted, &db, 4);
}

/// `min_decryption_version` is enforced, not only shown: a retired data key whose row someone
/// with write access to the database puts back (from an old backup) is never loaded, neither
/// at start nor at a tick, so envelopes under it stay closed; the job retires the row again.
#[test]
fn a_retired_data_key_put_back_as_active_is_never_loaded() {
    let fixture = Fixture::new();
    fixture.init();
    let vault = fixture.open().unwrap();
    let db = fixture.db();
    write_row(&vault, &db, 1);
    // What an old backup holds: the wrapped v1 key and a value sealed under it.
    let (_, old_access, _) = sealed_columns(&db).remove(0);
    let wrapped_v1: Vec<u8> = db
        .call(|connection| {
            connection
                .query_row(
                    "SELECT wrapped FROM vault_data_keys WHERE version = 1",
                    [],
                    |row| row.get(0),
                )
                .map_err(StoreError::from)
        })
        .unwrap();
    fixture.rotate_data_key(&db);
    assert_eq!(run_job_to_idle(&vault).retired, vec![1]);
    let serving = fixture.open().unwrap();
    assert_eq!(serving.versions(), vec![2]);

    db.call(|connection| {
        connection
            .execute(
                "UPDATE vault_data_keys SET state = 'active', wrapped = ?1, retired_at = NULL
                 WHERE version = 1",
                params![wrapped_v1],
            )
            .map_err(StoreError::from)
    })
    .unwrap();
    assert_eq!(active_versions(&db), vec![1, 2]);
    let old_aad = aad("access_token", "1", 1);

    // A serving broker's tick does not load it.
    serving.refresh_keys().unwrap();
    assert_eq!(serving.versions(), vec![2]);
    assert!(serving.open(&old_aad, &old_access).is_err());
    // Nor does a restart.
    let restarted = fixture.open().unwrap();
    assert_eq!(restarted.versions(), vec![2]);
    assert!(restarted.open(&old_aad, &old_access).is_err());
    check_row(&restarted, &db, 1);

    // Reported once per process (not at every tick), then retired again by the job.
    assert_eq!(run_job_to_idle(&serving).retired, vec![1]);
    assert_eq!(active_versions(&db), vec![2]);
    let reports = fixture
        .audit
        .events()
        .iter()
        .filter(|event| {
            matches!(
                event,
                AuditEvent::VaultEvent { action, detail }
                    if action == "data_key_below_minimum" && detail.contains("version=1 ")
            )
        })
        .count();
    assert_eq!(reports, 2);
}

#[test]
fn a_rotation_stopped_midway_resumes_after_a_restart() {
    let fixture = Fixture::new();
    fixture.init();
    let vault = fixture.open().unwrap();
    let db = fixture.db();
    for id in 1..=9 {
        write_row(&vault, &db, id);
    }
    fixture.rotate_data_key(&db);
    let error = vault
        .reencrypt_step(JobHooks {
            stop_after_rows: Some(4),
        })
        .unwrap_err();
    assert!(
        matches!(error, KeystoreError::Interrupted { rows: 4 }),
        "{error}"
    );
    drop(vault);
    let old_rows: usize = sealed_columns(&db)
        .iter()
        .flat_map(|(_, a, r)| [a, r])
        .filter(|envelope| vault::Keyring::envelope_key_version(envelope).unwrap() == 1)
        .count();
    assert_eq!(old_rows, 18 - 4);

    let restarted = fixture.open().unwrap();
    let report = run_job_to_idle(&restarted);
    assert_eq!(report.reencrypted, 14, "resumed, nothing done twice");
    assert_eq!(report.retired, vec![1]);
    for id in 1..=9 {
        check_row(&restarted, &db, id);
    }
}

#[test]
fn an_unreadable_row_is_reported_kept_and_keeps_its_key_alive() {
    let fixture = Fixture::new();
    fixture.init();
    let vault = fixture.open().unwrap();
    let db = fixture.db();
    for id in 1..=4 {
        write_row(&vault, &db, id);
    }
    // Move row 2's ciphertext to row 3 (an attacker with write access to the file).
    db.call(|connection| {
        connection
            .execute(
                "UPDATE test_secrets SET access_token =
                     (SELECT access_token FROM test_secrets WHERE id = 2) WHERE id = 3",
                [],
            )
            .map_err(StoreError::from)
    })
    .unwrap();
    let moved = sealed_columns(&db)[2].1.clone();
    let error = vault
        .open_or_reauthorize(&aad("access_token", "3", 3), &moved)
        .unwrap_err();
    assert_eq!(error, keystore::MustAuthorizeAgain);
    assert_eq!(vault.counters().row_authentication_failures(), 1);

    fixture.rotate_data_key(&db);
    let report = run_job_to_idle(&vault);
    assert_eq!((report.reencrypted, report.failed), (7, 1));
    assert!(
        report.retired.is_empty(),
        "v1 still used by the unreadable row"
    );
    assert_eq!(versions_in_use(&db), vec![1, 2]);
    assert_eq!(
        sealed_columns(&db)[2].1,
        moved,
        "kept, not deleted or rewritten"
    );
    // Idle means idle: no re-report every tick.
    let again = run_job_to_idle(&vault);
    assert_eq!((again.reencrypted, again.failed), (0, 0));
    let reports = fixture
        .audit
        .events()
        .into_iter()
        .filter(|event| matches!(event, AuditEvent::VaultEvent { action, detail }
            if action == "row_unreadable" && detail.contains("row_id=3") && detail.contains("user_id=3")))
        .count();
    assert_eq!(reports, 2, "once on read, once by the job");
    assert_eq!(vault.counters().row_authentication_failures(), 2);

    // The user authorizes again: the row is replaced and v1 retires.
    write_row(&vault, &db, 3);
    let done = run_job_to_idle(&vault);
    assert_eq!(done.retired, vec![1]);
}

#[test]
fn rotations_under_concurrent_reads_and_writes() {
    let fixture = Arc::new(Fixture::new());
    fixture.init();
    let vault = Arc::new(fixture.open().unwrap());
    let db = fixture.db();
    for id in 1..=30 {
        write_row(&vault, &db, id);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..3i64 {
        let (vault, db, stop) = (Arc::clone(&vault), db.clone(), Arc::clone(&stop));
        workers.push(std::thread::spawn(move || {
            let mut operations = 0u64;
            let mut id = worker;
            while !stop.load(Ordering::Relaxed) {
                id = id % 30 + 1;
                if operations.is_multiple_of(3) {
                    write_row(&vault, &db, id);
                } else {
                    check_row(&vault, &db, id);
                }
                operations += 1;
                // The connection mutex is not fair: without a yield, three tight loops can
                // starve the re-encryption job on a loaded 2-core machine.
                std::thread::yield_now();
            }
            operations
        }));
    }
    // The operator, from another connection (another process), while the broker serves.
    let job = {
        let (vault, stop) = (Arc::clone(&vault), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                vault.reencrypt_step(JobHooks::default()).unwrap();
            }
        })
    };
    let operator = fixture.db();
    let deps = fixture.deps();
    rotation::rotate_data_key(
        &operator,
        &fixture.config,
        fixture.data_dir(),
        &deps,
        &no_env,
    )
    .unwrap();
    rotation::rotate_data_key(
        &operator,
        &fixture.config,
        fixture.data_dir(),
        &deps,
        &no_env,
    )
    .unwrap();
    // Replace the key file in place after the master-key rotation, as an operator would:
    // the serving broker re-reads it when it meets a data key it cannot unwrap.
    let new_key = fixture.data_dir().join("keys/next.key");
    rotation::rotate_master_key(
        &operator,
        &fixture.config,
        fixture.data_dir(),
        &NewMasterKey::KeyFile(new_key.clone()),
        &deps,
        &no_env,
    )
    .unwrap();
    std::fs::rename(&new_key, fixture.key_file()).unwrap();
    rotation::rotate_data_key(
        &operator,
        &fixture.config,
        fixture.data_dir(),
        &deps,
        &no_env,
    )
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    while !(active_versions(&db) == vec![4] && versions_in_use(&db) == vec![4]) {
        assert!(
            Instant::now() < deadline,
            "rotation did not converge: {:?}",
            active_versions(&db)
        );
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    job.join().unwrap();
    for worker in workers {
        assert!(worker.join().unwrap() > 0);
    }
    for id in 1..=30 {
        check_row(&vault, &db, id);
    }
    assert_eq!(vault.counters().row_authentication_failures(), 0);
    // The serving broker's job keeps running: one more pass catches a write that sealed
    // under v3 just before the switch and landed after the loop above.
    run_job_to_idle(&vault);
    assert_eq!(versions_in_use(&db), vec![4]);
    // Durability: a restarted broker holds only v4, and every row opens with it.
    let restarted = fixture.open().unwrap();
    assert_eq!(restarted.versions(), vec![4]);
    for id in 1..=30 {
        check_row(&restarted, &db, id);
    }
}

fn active_versions(db: &Db) -> Vec<u32> {
    db.call(|connection| {
        let mut statement = connection.prepare(
            "SELECT version FROM vault_data_keys WHERE state = 'active' ORDER BY version",
        )?;
        let rows = statement
            .query_map([], |row| row.get(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, StoreError>(rows)
    })
    .unwrap()
}

#[test]
fn no_secret_in_debug_status_logs_or_the_database_file() {
    let fixture = Fixture::new();
    let logs = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let writer = {
        let logs = Arc::clone(&logs);
        move || LogWriter(Arc::clone(&logs))
    };
    let subscriber = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let (vault, db) = tracing::subscriber::with_default(subscriber, || {
        fixture.init();
        let vault = fixture.open().unwrap();
        let db = fixture.db();
        for id in 1..=3 {
            write_row(&vault, &db, id);
        }
        let _ = vault.open(&aad("access_token", "99", 1), b"garbage");
        fixture.rotate_data_key(&db);
        run_job_to_idle(&vault);
        (vault, db)
    });
    let key_file = std::fs::read_to_string(fixture.key_file()).unwrap();
    let key_base64 = key_file.trim_end();
    let registry = SealedRegistry::new().with(TABLE).unwrap();
    let status =
        keystore::status::status(&db, &fixture.config, fixture.data_dir(), &registry, &no_env)
            .unwrap();
    let texts = [
        String::from_utf8(logs.lock().unwrap().clone()).unwrap(),
        format!("{vault:?}"),
        format!("{status}"),
        format!("{status:?}"),
        format!("{:?}", fixture.audit.events()),
    ];
    assert!(texts[0].contains("row_unreadable") || texts[0].contains("could not be opened"));
    for text in &texts {
        assert!(!text.contains(key_base64), "key in {text}");
        assert!(!text.contains("gto_"), "token in {text}");
    }
    let needles: Vec<String> = (1..=3)
        .flat_map(|id| [token(id, "access_token"), token(id, "refresh_token")])
        .collect();
    let mut needles: Vec<&[u8]> = needles.iter().map(|n| n.as_bytes()).collect();
    needles.push(b"gto_");
    let decoded_key = vault::parse_key_file(key_file.as_bytes()).unwrap();
    needles.push(decoded_key.expose_bytes());
    assert_eq!(scan::database_files(&fixture.db_path(), &needles), vec![]);
}

struct LogWriter(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_serving_broker_picks_up_a_master_key_replaced_in_place() {
    let fixture = Fixture::new();
    fixture.init();
    let serving = fixture.open().unwrap();
    let db = fixture.db();
    write_row(&serving, &db, 1);
    let new_key = fixture.data_dir().join("keys/next.key");
    rotation::rotate_master_key(
        &db,
        &fixture.config,
        fixture.data_dir(),
        &NewMasterKey::KeyFile(new_key.clone()),
        &fixture.deps(),
        &no_env,
    )
    .unwrap();
    // The operator adds a data key with the new master key (its config already switched).
    let switched = VaultConfig {
        key_file: Some(new_key.clone()),
        ..fixture.config.clone()
    };
    rotation::rotate_data_key(&db, &switched, fixture.data_dir(), &fixture.deps(), &no_env)
        .unwrap();
    // The serving broker cannot unwrap v2 with the master key it holds: it keeps serving v1.
    serving.reencrypt_step(JobHooks::default()).unwrap();
    serving.reencrypt_step(JobHooks::default()).unwrap();
    assert_eq!(serving.versions(), vec![1]);
    check_row(&serving, &db, 1);
    // Once the key file is replaced in place, the next tick reloads it and loads v2.
    std::fs::rename(&new_key, fixture.key_file()).unwrap();
    let mut retired = serving.reencrypt_step(JobHooks::default()).unwrap().retired;
    assert_eq!(serving.current_version(), Some(2));
    retired.extend(run_job_to_idle(&serving).retired);
    assert_eq!(retired, vec![1]);
    check_row(&serving, &db, 1);
}

#[test]
fn first_start_initialises_from_a_prepared_key_and_env_sources_are_audited() {
    let fixture = Fixture::new();
    let key = vault::KeyMaterial::generate().unwrap();
    let value = OsString::from(key.to_key_file().as_str());
    let config = VaultConfig {
        key_source: KeySourceKind::Env,
        ..VaultConfig::default()
    };
    let env: SharedEnv = Arc::new(move |name: &str| {
        (name == keystore::config::DEFAULT_ENV_VAR).then(|| value.clone())
    });
    let registry = SealedRegistry::new().with(TABLE).unwrap();
    let open = || {
        Vault::open(
            fixture.db(),
            config.clone(),
            fixture.data_dir(),
            registry.clone(),
            fixture.deps(),
            Arc::clone(&env),
        )
    };
    let vault = open().unwrap();
    write_row(&vault, &fixture.db(), 1);
    drop(vault);
    let vault = open().unwrap();
    check_row(&vault, &fixture.db(), 1);
    let events = fixture.audit.events();
    let count = |wanted: &str| {
        events
            .iter()
            .filter(
                |event| matches!(event, AuditEvent::VaultEvent { action, .. } if action == wanted),
            )
            .count()
    };
    assert_eq!(count("vault_initialised"), 1);
    assert_eq!(count("key_source_discouraged"), 2);
    assert!(!format!("{events:?}").contains(key.to_key_file().trim_end()));
}

#[test]
fn a_lost_vault_is_never_replaced_over_existing_ciphertext() {
    let fixture = Fixture::new();
    fixture.init();
    let vault = fixture.open().unwrap();
    let db = fixture.db();
    write_row(&vault, &db, 1);
    drop(vault);
    // Someone removed the vault's tables' content (or restored half a backup).
    db.call(|connection| {
        connection
            .execute_batch("DELETE FROM vault_data_keys; DELETE FROM vault_meta;")
            .map_err(StoreError::from)
    })
    .unwrap();
    let rows_before = sealed_columns(&db);
    let error = fixture.open().unwrap_err();
    assert!(
        matches!(error, KeystoreError::OrphanedSealedValues { rows: 2 }),
        "{error}"
    );
    assert!(error.to_string().contains("restore the database"));
    assert_eq!(sealed_columns(&db), rows_before);
    assert!(
        fixture.vault_tables().is_empty(),
        "no new vault was created"
    );
}
