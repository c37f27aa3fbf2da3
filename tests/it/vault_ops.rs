//! The vault through the product's surfaces: the broker refusing to start, and the operator
//! commands (`forgejo-mcp-broker vault ...`) run as a separate process while a broker serves.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use forgejo_mcp_broker::app::{self, AppDeps, StartError};
use forgejo_mcp_broker::config::Config;
use vault::{Aad, Sealer};

fn config_text(data_dir: &Path, port: u16, extra: &str) -> String {
    format!(
        r#"
        [server]
        public_url = "http://127.0.0.1:{port}"
        data_dir = "{}"
        [forgejo]
        url = "http://127.0.0.1:9"
        client_id = "broker"
        client_secret = "secret"
        [vault]
        key_file = "{}/vault.key"
        rotation_interval_secs = 1
        {extra}
        "#,
        data_dir.display(),
        data_dir.display()
    )
}

async fn start(data_dir: &Path, extra: &str) -> Result<app::RunningApp, StartError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = Config::from_toml(&config_text(data_dir, port, extra)).unwrap();
    app::start_on(config, listener, AppDeps::production()).await
}

fn cli(config: &Path, args: &[&str]) -> (bool, String) {
    let config = config.to_str().unwrap();
    let mut all = vec!["vault"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--config", config]);
    broker_command(&all)
}

/// Runs the broker's binary with `args`; its success and everything it printed.
fn broker_command(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_forgejo-mcp-broker"))
        .args(args)
        .env_remove("FORGEJO_MCP_BROKER_VAULT_KEY")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn the_broker_refuses_to_start_with_a_loose_missing_or_wrong_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("vault.key");
    // First start: no vault, no key file → auto-initialised with a generated key file.
    let running = start(dir.path(), "").await.unwrap();
    assert!(running.shutdown(Duration::from_secs(5)).await);
    let original = std::fs::read(&key).unwrap();

    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let error = start(dir.path(), "").await.err().unwrap().to_string();
    assert!(
        error.contains("refusing") && error.contains("chmod 600"),
        "{error}"
    );

    std::fs::remove_file(&key).unwrap();
    let error = start(dir.path(), "").await.err().unwrap().to_string();
    assert!(error.contains("cannot read key file"), "{error}");
    assert!(
        !key.exists(),
        "an initialised vault never gets a new key silently"
    );

    std::fs::write(
        &key,
        vault::KeyMaterial::generate()
            .unwrap()
            .to_key_file()
            .as_bytes(),
    )
    .unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let error = start(dir.path(), "").await.err().unwrap().to_string();
    assert!(error.contains("does not open this vault"), "{error}");

    std::fs::write(&key, original).unwrap();
    let running = start(dir.path(), "").await.unwrap();
    assert!(running.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn operator_commands_run_while_the_broker_serves() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broker.toml");
    std::fs::write(&config, config_text(dir.path(), 9, "auto_init = false")).unwrap();

    let (ok, text) = cli(&config, &["status"]);
    assert!(ok, "{text}");
    assert!(text.contains("not initialised"), "{text}");
    let (ok, text) = cli(&config, &["init"]);
    assert!(ok && text.contains("generated key file"), "{text}");
    let (ok, text) = cli(&config, &["init"]);
    assert!(!ok && text.contains("already initialised"), "{text}");

    let running = start(dir.path(), "auto_init = false").await.unwrap();
    // A real sealed row (the upstream token table is a registered sealed column), so the
    // re-encryption job has something to carry from v1 to v2 before v1 may retire.
    let aad = Aad {
        table: "upstream_grants",
        column: "access_token",
        row_id: "1",
        user_id: 1,
    };
    let sealed_v1 = running.vault.seal(&aad, b"gto_token").unwrap();
    running
        .db
        .call(|connection| {
            connection
                .execute(
                    "INSERT INTO upstream_grants (user_id, username, access_token, expires_at, generation, updated_at)
                     VALUES (1, 'alice', ?1, 0, 1, 0)",
                    [&sealed_v1],
                )
                .map_err(forgejo_mcp_broker::store::StoreError::from)
        })
        .unwrap();
    let stored_row = |running: &forgejo_mcp_broker::app::RunningApp| -> Vec<u8> {
        running
            .db
            .call(|connection| {
                connection
                    .query_row(
                        "SELECT access_token FROM upstream_grants WHERE user_id = 1",
                        [],
                        |row| row.get(0),
                    )
                    .map_err(forgejo_mcp_broker::store::StoreError::from)
            })
            .unwrap()
    };

    let (ok, text) = cli(&config, &["rotate-data-key"]);
    assert!(ok && text.contains("data key v2 added"), "{text}");
    // The serving broker's background task loads the new key (interval 1 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    while running.vault.current_version() != Some(2) {
        assert!(Instant::now() < deadline, "broker never loaded data key v2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sealed_v2 = running.vault.seal(&aad, b"gto_token").unwrap();
    assert_eq!(vault::Keyring::envelope_key_version(&sealed_v2), Ok(2));

    let new_key = dir.path().join("vault-2.key");
    let (ok, text) = cli(
        &config,
        &[
            "rotate-master-key",
            "--new-key-file",
            new_key.to_str().unwrap(),
        ],
    );
    assert!(ok && text.contains("no row rewritten"), "{text}");
    // Still serving; the stored row opens whichever key version it now carries.
    assert_eq!(
        running
            .vault
            .open(&aad, &stored_row(&running))
            .unwrap()
            .as_slice(),
        b"gto_token"
    );
    assert_eq!(
        running.vault.open(&aad, &sealed_v2).unwrap().as_slice(),
        b"gto_token"
    );
    let health = reqwest::get(format!("http://{}/healthz", running.local_addr()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // The old key no longer opens the vault: status says so and fails.
    let (ok, text) = cli(&config, &["status"]);
    assert!(!ok && text.contains("does not open this vault"), "{text}");
    std::fs::write(
        &config,
        config_text(dir.path(), 9, "auto_init = false").replace("/vault.key", "/vault-2.key"),
    )
    .unwrap();
    let (ok, text) = cli(&config, &["status"]);
    assert!(ok, "{text}");
    assert!(text.contains("key:               ok"), "{text}");
    assert!(text.contains("current data key:  v2"), "{text}");
    let key = std::fs::read_to_string(&new_key).unwrap();
    assert!(!text.contains(key.trim_end()), "{text}");
    assert!(running.shutdown(Duration::from_secs(5)).await);
}

/// Both rotations while the broker serves real OAuth traffic: users' Forgejo token sets (the
/// registered `upstream_grants` columns) are read and refreshed throughout; afterwards every
/// grant is at the new data key, the old one is retired, a restart with the new master key
/// works, and no Forgejo token is on disk in clear.
#[tokio::test]
async fn rotations_while_serving_real_upstream_grants() {
    use forgejo_mcp_broker::auth::UpstreamCredentials;
    use forgejo_mcp_broker::keystore::rotation::{self, JobHooks, NewMasterKey};
    use forgejo_mcp_broker::keystore::{VaultDeps, scan, source};

    use crate::fixtures::{ALICE, TestBroker};

    let mut broker = TestBroker::builder().manual_clock().start().await;
    let (_client, _tokens) = broker.login_new_client().await;
    let upstream = broker.app().auth.upstream.clone();
    upstream.access_token(ALICE).await.unwrap();

    let config = broker.config();
    let data_dir = config.server.data_dir.clone();
    let operator = forgejo_mcp_broker::store::Db::open(&config.server.database_path()).unwrap();
    let deps = VaultDeps {
        audit: broker.audit.clone(),
        clock: broker.clock.clone(),
    };
    let grant_versions = |db: &forgejo_mcp_broker::store::Db| -> Vec<u32> {
        let rows: Vec<Vec<u8>> = db
            .call(|c| {
                let mut statement = c.prepare(
                    "SELECT access_token FROM upstream_grants
                     UNION ALL SELECT refresh_token FROM upstream_grants",
                )?;
                let rows = statement
                    .query_map([], |row| row.get(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, forgejo_mcp_broker::store::StoreError>(rows)
            })
            .unwrap();
        let mut versions: Vec<u32> = rows
            .iter()
            .map(|envelope| vault::Keyring::envelope_key_version(envelope).unwrap())
            .collect();
        versions.sort_unstable();
        versions.dedup();
        versions
    };
    assert_eq!(grant_versions(&operator), vec![1]);

    // Users keep reading and refreshing while the operator rotates.
    let traffic = {
        let upstream = upstream.clone();
        tokio::spawn(async move {
            for round in 0..40 {
                if round % 4 == 0 {
                    upstream.refresh_now(ALICE).await.unwrap();
                } else {
                    upstream.access_token(ALICE).await.unwrap();
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let env = &source::process_env;
    rotation::rotate_data_key(&operator, &config.vault, &data_dir, &deps, env).unwrap();
    let vault = std::sync::Arc::clone(&broker.app().vault);
    let new_key = data_dir.join("vault-next.key");
    let key_path = config.vault.key_file_path(&data_dir);
    let steps = {
        let vault = std::sync::Arc::clone(&vault);
        tokio::task::spawn_blocking(move || {
            for _ in 0..50 {
                vault.reencrypt_step(JobHooks::default()).unwrap();
            }
        })
    };
    let report = rotation::rotate_master_key(
        &operator,
        &config.vault,
        &data_dir,
        &NewMasterKey::KeyFile(new_key.clone()),
        &deps,
        env,
    )
    .unwrap();
    // v1 may already be retired by the job running alongside; v2 is always re-wrapped.
    assert_eq!(report.rewrapped_versions.last(), Some(&2));
    std::fs::rename(&new_key, &key_path).unwrap();
    traffic.await.unwrap();
    steps.await.unwrap();
    // Let the job finish what traffic wrote last (as its next ticks would).
    for _ in 0..5 {
        vault.reencrypt_step(JobHooks::default()).unwrap();
    }
    assert_eq!(grant_versions(&operator), vec![2]);
    let retired = broker
        .audit_events()
        .into_iter()
        .filter(|event| {
            matches!(event, forgejo_mcp_broker::audit::AuditEvent::VaultEvent { action, detail }
            if action == "data_key_retired" && detail == "version=1")
        })
        .count();
    assert_eq!(retired, 1);
    assert_eq!(vault.counters().row_authentication_failures(), 0);
    drop(vault);

    // A restart opens with the new master key (replaced in place) and data key v2 only.
    broker.restart().await;
    assert_eq!(broker.app().vault.versions(), vec![2]);
    let upstream = broker.app().auth.upstream.clone();
    upstream.access_token(ALICE).await.unwrap();
    upstream.refresh_now(ALICE).await.unwrap();

    let issued = broker.standin.issued_tokens();
    assert!(issued.len() >= 10, "{}", issued.len());
    let mut needles: Vec<&[u8]> = issued.iter().map(|token| token.as_bytes()).collect();
    let marker = forgejo_mcp_broker::standin::token_marker();
    needles.push(marker.as_bytes());
    assert_eq!(
        scan::database_files(&config.server.database_path(), &needles),
        vec![]
    );
    broker.shutdown().await;
}

/// A grant whose ciphertext does not open is reported and means "authorize again": the row is
/// kept untouched, and a new login replaces it.
#[tokio::test]
async fn an_unreadable_upstream_grant_means_authorize_again_and_is_kept() {
    use forgejo_mcp_broker::audit::AuditEvent;
    use forgejo_mcp_broker::auth::{UpstreamCredentials, UpstreamCredentialsError};

    use crate::fixtures::{ALICE, TestBroker};

    let broker = TestBroker::builder().start().await;
    let (client, _tokens) = broker.login_new_client().await;
    let upstream = broker.app().auth.upstream.clone();
    upstream.access_token(ALICE).await.unwrap();
    let db = broker.app().db.clone();
    let read = || -> Vec<u8> {
        db.call(|c| {
            c.query_row(
                "SELECT access_token FROM upstream_grants WHERE user_id = ?1",
                [ALICE],
                |row| row.get(0),
            )
            .map_err(forgejo_mcp_broker::store::StoreError::from)
        })
        .unwrap()
    };
    let mut tampered = read();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    db.call(|c| {
        c.execute(
            "UPDATE upstream_grants SET access_token = ?1 WHERE user_id = ?2",
            rusqlite::params![tampered, ALICE],
        )
        .map_err(forgejo_mcp_broker::store::StoreError::from)
    })
    .unwrap();

    let error = upstream.access_token(ALICE).await.unwrap_err();
    assert!(
        matches!(error, UpstreamCredentialsError::GrantDead),
        "{error}"
    );
    assert_eq!(read(), tampered, "kept as it was, not deleted or rewritten");
    assert_eq!(
        broker.app().vault.counters().row_authentication_failures(),
        1
    );
    let metrics = broker.app().metrics.encode();
    let line = |operation: &str, outcome: &str| {
        metrics
            .lines()
            .find(|line| {
                line.starts_with("forgejo_mcp_broker_vault_operations")
                    && line.contains(&format!("operation=\"{operation}\""))
                    && line.contains(&format!("outcome=\"{outcome}\""))
            })
            .map(str::to_owned)
    };
    assert!(
        line("open", "error").is_some_and(|l| l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(line("seal", "ok").is_some(), "{metrics}");
    assert!(broker.audit_events().iter().any(|event| matches!(
        event,
        AuditEvent::VaultEvent { action, detail }
            if action == "row_unreadable" && detail.contains("table=upstream_grants")
                && detail.contains(&format!("user_id={ALICE}"))
    )));

    // Authorizing again replaces the row.
    broker.login(&client).await;
    upstream.access_token(ALICE).await.unwrap();
    assert_ne!(read(), tampered);
    broker.shutdown().await;
}

/// The audit log's checkpoint key lives in the vault (issue #7): no key file beside the log,
/// the same key across a data-key rotation (its row re-encrypted like any sealed value) and a
/// master-key rotation, so `audit verify` passes over every run's checkpoints. Without the
/// master key it cannot be read, and a tampered key row stops the broker.
#[tokio::test]
async fn the_audit_checkpoint_key_lives_in_the_vault_and_survives_both_rotations() {
    use forgejo_mcp_broker::keystore::rotation::JobHooks;

    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("broker.toml");
    std::fs::write(&config_path, config_text(dir.path(), 9, "")).unwrap();
    let config = Config::load(&config_path).unwrap();
    // One run of the serving broker with its hash-chained audit file; `work` runs on it.
    async fn serve_once(config: &Config, work: impl FnOnce(&app::RunningApp)) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (deps, audit) = AppDeps::for_config(config).unwrap();
        let running = app::start_on(config.clone(), listener, deps).await.unwrap();
        work(&running);
        assert!(running.shutdown(Duration::from_secs(5)).await);
        tokio::task::spawn_blocking(move || audit.close())
            .await
            .unwrap();
    }
    let sealed_key = |config: &Config| -> Vec<u8> {
        forgejo_mcp_broker::store::Db::open(&config.server.database_path())
            .unwrap()
            .call(|c| {
                c.query_row("SELECT sealed_key FROM vault_audit_key", [], |row| {
                    row.get(0)
                })
                .map_err(forgejo_mcp_broker::store::StoreError::from)
            })
            .unwrap()
    };
    let verify = |config_path: &Path| -> (bool, String) {
        broker_command(&["audit", "verify", "--config", config_path.to_str().unwrap()])
    };

    serve_once(&config, |_| {}).await;
    assert!(!config.audit.key_file(dir.path()).exists());
    let key_id = app::audit_key_for_verification(&config)
        .unwrap()
        .unwrap()
        .key_id();
    assert_eq!(
        vault::Keyring::envelope_key_version(&sealed_key(&config)).unwrap(),
        1
    );

    let (ok, text) = cli(&config_path, &["rotate-data-key"]);
    assert!(ok, "{text}");
    serve_once(&config, |running| {
        let mut idle = false;
        for _ in 0..20 {
            idle = running
                .vault
                .reencrypt_step(JobHooks::default())
                .unwrap()
                .idle;
            if idle {
                break;
            }
        }
        assert!(idle, "the re-encryption job finished");
    })
    .await;
    assert_eq!(
        vault::Keyring::envelope_key_version(&sealed_key(&config)).unwrap(),
        2,
        "the key row was re-encrypted under the new data key"
    );

    let next = dir.path().join("vault-next.key");
    let next_arg = next.to_str().unwrap().to_owned();
    let (ok, text) = cli(
        &config_path,
        &["rotate-master-key", "--new-key-file", &next_arg],
    );
    assert!(ok, "{text}");
    std::fs::rename(&next, config.vault.key_file_path(dir.path())).unwrap();
    serve_once(&config, |_| {}).await;
    assert_eq!(
        app::audit_key_for_verification(&config)
            .unwrap()
            .unwrap()
            .key_id(),
        key_id
    );

    let (ok, text) = verify(&config_path);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("checkpoint key {key_id} (from the vault)")),
        "{text}"
    );
    let log = std::fs::read_to_string(config.audit.path(dir.path())).unwrap();
    for action in [
        "audit_key_created",
        "data_key_rotated",
        "master_key_rotated",
        "data_key_retired",
    ] {
        assert!(
            log.contains(&format!(r#""action":"{action}""#)),
            "{action} missing from the log"
        );
    }
    assert_eq!(
        log.matches(r#""event":"config_loaded""#).count(),
        3,
        "one per start"
    );

    // Whoever can read the data directory but not the master key cannot read the key.
    // (A well-formed key, written over the real one in place: the file stays 0600.)
    let key_path = config.vault.key_file_path(dir.path());
    let real_key = std::fs::read(&key_path).unwrap();
    std::fs::write(&key_path, "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n").unwrap();
    let (ok, text) = verify(&config_path);
    assert!(!ok && text.contains("does not open this vault"), "{text}");
    std::fs::write(&key_path, &real_key).unwrap();

    // A tampered key row stops the broker rather than checkpointing with a key it cannot trust.
    let mut tampered = sealed_key(&config);
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    forgejo_mcp_broker::store::Db::open(&config.server.database_path())
        .unwrap()
        .call(|c| {
            c.execute("UPDATE vault_audit_key SET sealed_key = ?1", [&tampered])
                .map_err(forgejo_mcp_broker::store::StoreError::from)
        })
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (deps, audit) = AppDeps::for_config(&config).unwrap();
    let error = app::start_on(config.clone(), listener, deps)
        .await
        .err()
        .unwrap()
        .to_string();
    tokio::task::spawn_blocking(move || audit.close())
        .await
        .unwrap();
    assert!(
        error.contains("audit checkpoint key stored in the vault cannot be opened"),
        "{error}"
    );
}

/// Logs to a pipe (a journal, a file) are plain text: no colour escape sequences.
#[test]
fn logs_written_to_a_pipe_carry_no_escape_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broker.toml");
    std::fs::write(&config, config_text(dir.path(), 9, "")).unwrap();
    let (ok, text) = cli(&config, &["init"]);
    assert!(ok, "{text}");
    let output = Command::new(env!("CARGO_BIN_EXE_forgejo-mcp-broker"))
        .args([
            "vault",
            "rotate-data-key",
            "--config",
            config.to_str().unwrap(),
        ])
        .env_remove("FORGEJO_MCP_BROKER_VAULT_KEY")
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{logs}");
    assert!(logs.contains("DEBUG"), "a log line was written: {logs}");
    assert!(!logs.contains('\x1b'), "escape sequences in {logs:?}");
}

/// A vault operation whose audit record cannot be written fails the command (after saying what
/// it did, which is done), as `admin` verbs do. `/dev/full` opens and fails every write.
#[tokio::test]
async fn a_vault_operation_the_audit_log_cannot_record_fails_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), "").await.unwrap();
    assert!(running.shutdown(Duration::from_secs(5)).await);
    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        config_text(dir.path(), 9, "[audit]\npath = \"/dev/full\""),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (ok, text) = cli(&config, &["rotate-data-key"]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("data key v2 added"),
        "what was done is said: {text}"
    );
    assert!(
        text.contains("the audit log /dev/full lacks this command's records"),
        "{text}"
    );
}
