//! Vault costs, each against a baseline measured in the same run (bench/src/lib.rs):
//! - seal and open of one Forgejo-token-sized value, vs a "sealer" that only copies;
//! - the storage side of a token refresh (read the row, open the refresh token, seal the new
//!   access and refresh tokens, write the row; SQLite file in WAL mode), vs the same path with
//!   encryption swapped for a copy;
//! - the once-per-start master key derivation (HKDF from a key file; Argon2id at RFC 9106's
//!   second recommended setting for a passphrase).
//!
//! Run: `cargo bench -p bench --bench vault`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::Duration;

use bench::{quantile, sample};
use forgejo_mcp_broker::store::{Db, StoreError};
use rusqlite::params;
use vault::{Aad, DataKey, KdfParams, KeyMaterial, Keyring, MasterKey, Sealer, VaultError};
use zeroize::Zeroizing;

/// The baseline: the same trait, encryption replaced by a copy.
struct CopySealer;

impl Sealer for CopySealer {
    fn seal(&self, _aad: &Aad<'_>, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        Ok(plaintext.to_vec())
    }

    fn open(&self, _aad: &Aad<'_>, envelope: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        Ok(Zeroizing::new(envelope.to_vec()))
    }
}

const AAD: Aad<'static> = Aad {
    table: "upstream_grants",
    column: "access_token",
    row_id: "01JD6Q2ZK9M3B7T5X8W4N0R2Y6",
    user_id: 42,
};

/// A Forgejo OAuth access token is a JWT of several hundred bytes; refresh tokens are similar.
fn token(n: u8) -> Vec<u8> {
    let mut token = b"eyJhbGciOiJSUzI1NiIsImtpZCI6".to_vec();
    token.resize(600, b'A' + n % 26);
    token
}

fn report(name: &str, samples: &[Duration], baseline: &[Duration]) {
    let (median, base) = (quantile(samples, 0.5), quantile(baseline, 0.5));
    let (p99, base_p99) = (quantile(samples, 0.99), quantile(baseline, 0.99));
    println!(
        "{name:<44} median {:>9.2?} (copy {:>9.2?}, +{:>8.2?}, x{:.2})  p99 {:>9.2?} (copy {:>9.2?})",
        median,
        base,
        median.saturating_sub(base),
        median.as_secs_f64() / base.as_secs_f64().max(1e-12),
        p99,
        base_p99
    );
}

fn seal_open(keyring: &Keyring) {
    let plaintext = token(1);
    let envelope = keyring.seal(&AAD, &plaintext).unwrap();
    let copy = CopySealer.seal(&AAD, &plaintext).unwrap();
    let iterations = 20_000;
    let seal = sample(iterations, || {
        std::hint::black_box(
            keyring
                .seal(&AAD, std::hint::black_box(&plaintext))
                .unwrap(),
        );
    });
    let seal_copy = sample(iterations, || {
        std::hint::black_box(
            CopySealer
                .seal(&AAD, std::hint::black_box(&plaintext))
                .unwrap(),
        );
    });
    report("seal one 600-byte token", &seal, &seal_copy);
    let open = sample(iterations, || {
        std::hint::black_box(keyring.open(&AAD, std::hint::black_box(&envelope)).unwrap());
    });
    let open_copy = sample(iterations, || {
        std::hint::black_box(CopySealer.open(&AAD, std::hint::black_box(&copy)).unwrap());
    });
    report("open one 600-byte token", &open, &open_copy);
}

/// The storage half of a refresh: read, open the refresh token, seal two new tokens, write.
fn refresh_path(db: &Db, sealer: &dyn Sealer, n: u8) {
    let row_id = "01JD6Q2ZK9M3B7T5X8W4N0R2Y6";
    let refresh_aad = Aad {
        column: "refresh_token",
        ..AAD
    };
    let stored: Vec<u8> = db
        .call(|c| {
            c.query_row(
                "SELECT refresh_token FROM upstream_grants WHERE id = ?1",
                params![row_id],
                |row| row.get(0),
            )
            .map_err(StoreError::from)
        })
        .unwrap();
    let refresh = sealer.open(&refresh_aad, &stored).unwrap();
    std::hint::black_box(&refresh);
    let access = sealer.seal(&AAD, &token(n)).unwrap();
    let refresh = sealer
        .seal(&refresh_aad, &token(n.wrapping_add(1)))
        .unwrap();
    db.call(|c| {
        c.execute(
            "UPDATE upstream_grants SET access_token = ?1, refresh_token = ?2 WHERE id = ?3",
            params![access, refresh, row_id],
        )
        .map_err(StoreError::from)
    })
    .unwrap();
}

fn refresh(keyring: &Keyring) {
    let dir = tempfile::tempdir().unwrap();
    let setup = |sealer: &dyn Sealer, name: &str| {
        let db = Db::open(&dir.path().join(name)).unwrap();
        db.call(|c| {
            c.execute_batch(
                "CREATE TABLE upstream_grants (id TEXT PRIMARY KEY, user_id INTEGER,
                     access_token BLOB, refresh_token BLOB);",
            )
            .map_err(StoreError::from)
        })
        .unwrap();
        let refresh_aad = Aad {
            column: "refresh_token",
            ..AAD
        };
        let (a, r) = (
            sealer.seal(&AAD, &token(0)).unwrap(),
            sealer.seal(&refresh_aad, &token(1)).unwrap(),
        );
        db.call(|c| {
            c.execute(
                "INSERT INTO upstream_grants VALUES (?1, 42, ?2, ?3)",
                params![AAD.row_id, a, r],
            )
            .map_err(StoreError::from)
        })
        .unwrap();
        db
    };
    let vault_db = setup(keyring, "vault.db");
    let copy_db = setup(&CopySealer, "copy.db");
    let iterations = 3_000;
    // Interleave in blocks so drift (page cache, WAL growth) hits both sides alike.
    let (mut with_vault, mut with_copy) = (Vec::new(), Vec::new());
    for block in 0..10u8 {
        with_vault.extend(sample(iterations / 10, || {
            refresh_path(&vault_db, keyring, block)
        }));
        with_copy.extend(sample(iterations / 10, || {
            refresh_path(&copy_db, &CopySealer, block)
        }));
    }
    with_vault.sort();
    with_copy.sort();
    report(
        "token refresh storage path (SQLite WAL)",
        &with_vault,
        &with_copy,
    );
}

fn master_key() {
    let material = KeyMaterial::generate().unwrap();
    let hkdf = sample(1_000, || {
        std::hint::black_box(MasterKey::derive(&material));
    });
    println!(
        "master key from key file (HKDF)              median {:>9.2?}",
        quantile(&hkdf, 0.5)
    );
    let passphrase = vault::Passphrase::from_file_content(Zeroizing::new(
        b"correct horse battery staple".to_vec(),
    ))
    .unwrap();
    let salt = [7u8; vault::SALT_LEN];
    let params = KdfParams::RFC9106_SECOND;
    let argon = sample(3, || {
        std::hint::black_box(vault::kdf::stretch_passphrase(&passphrase, &params, &salt).unwrap());
    });
    println!(
        "master key from passphrase (Argon2id m=64MiB t=3 p=4) median {:>9.2?} (once per start)",
        quantile(&argon, 0.5)
    );
}

fn main() {
    let mut keyring = Keyring::new();
    keyring.insert(1, DataKey::generate().unwrap());
    seal_open(&keyring);
    refresh(&keyring);
    master_key();
}
