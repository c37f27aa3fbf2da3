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
    let output = Command::new(env!("CARGO_BIN_EXE_forgejo-mcp-broker"))
        .arg("vault")
        .args(args)
        .arg("--config")
        .arg(config)
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
