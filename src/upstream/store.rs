//! The one Forgejo token set per Forgejo user, sealed with the vault (ARCHITECTURE.md §3).
//!
//! This is the narrow storage seam: `put`, `get`, `mark_dead`, `is_alive`. Tokens go in and
//! out only as [`TokenSet`]; in the database they exist only as vault envelopes whose AAD
//! names the table, the column and the user, so a ciphertext moved to another row fails.

use std::sync::Arc;

use rusqlite::{OptionalExtension as _, params};
use vault::{Aad, Sealer};

use super::client::TokenSet;
use crate::auth::UserId;
use crate::clock::UnixSeconds;
use crate::secret::{ExposeSecret, SecretString};
use crate::store::{Db, StoreError};

pub const MIGRATIONS: &[&str] = &["CREATE TABLE upstream_grants (
        user_id INTEGER PRIMARY KEY,
        username TEXT NOT NULL,
        access_token BLOB NOT NULL,
        refresh_token BLOB,
        expires_at INTEGER NOT NULL,
        dead_at INTEGER,
        generation INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );"];

const TABLE: &str = "upstream_grants";

/// The sealed columns of this table, declared to the vault's re-encryption job and
/// `vault status` (keystore/registry.rs). Row id = `user_id` in decimal, as `aad` uses.
pub const SEALED_COLUMNS: crate::keystore::SealedColumns = crate::keystore::SealedColumns {
    table: TABLE,
    id_column: "user_id",
    user_id_column: "user_id",
    columns: &["access_token", "refresh_token"],
};

#[derive(Debug, thiserror::Error)]
pub enum GrantStoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("vault: {0}")]
    Vault(#[from] vault::VaultError),
    #[error("a stored token is not valid UTF-8")]
    Encoding,
}

impl From<rusqlite::Error> for GrantStoreError {
    fn from(error: rusqlite::Error) -> Self {
        Self::Store(StoreError::from(error))
    }
}

/// A user's stored grant, opened.
pub struct StoredGrant {
    pub username: String,
    pub tokens: TokenSet,
    pub dead: bool,
    pub generation: i64,
}

#[derive(Clone)]
pub struct GrantStore {
    db: Db,
    sealer: Arc<dyn Sealer>,
}

fn aad<'a>(user_id: UserId, column: &'a str, row_id: &'a str) -> Aad<'a> {
    Aad {
        table: TABLE,
        column,
        row_id,
        user_id,
    }
}

impl GrantStore {
    pub fn new(db: Db, sealer: Arc<dyn Sealer>) -> Result<Self, StoreError> {
        db.migrate("upstream", MIGRATIONS)?;
        Ok(Self { db, sealer })
    }

    /// Replaces the user's token set (a new login or a refresh) and marks the grant alive.
    pub fn put(
        &self,
        user_id: UserId,
        username: &str,
        tokens: &TokenSet,
        now: UnixSeconds,
    ) -> Result<(), GrantStoreError> {
        let row_id = user_id.to_string();
        let access = self.sealer.seal(
            &aad(user_id, "access_token", &row_id),
            tokens.access_token.expose_secret().as_bytes(),
        )?;
        let refresh = tokens
            .refresh_token
            .as_ref()
            .map(|token| {
                self.sealer.seal(
                    &aad(user_id, "refresh_token", &row_id),
                    token.expose_secret().as_bytes(),
                )
            })
            .transpose()?;
        self.db.call(|connection| {
            connection.execute(
                "INSERT INTO upstream_grants
                    (user_id, username, access_token, refresh_token, expires_at, dead_at, generation, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, NULL, 1, ?6)
                 ON CONFLICT(user_id) DO UPDATE SET
                    username = excluded.username,
                    access_token = excluded.access_token,
                    refresh_token = excluded.refresh_token,
                    expires_at = excluded.expires_at,
                    dead_at = NULL,
                    generation = upstream_grants.generation + 1,
                    updated_at = excluded.updated_at",
                params![user_id, username, access, refresh, tokens.expires_at, now],
            )?;
            Ok::<_, GrantStoreError>(())
        })
    }

    pub fn get(&self, user_id: UserId) -> Result<Option<StoredGrant>, GrantStoreError> {
        type Row = (String, Vec<u8>, Option<Vec<u8>>, i64, Option<i64>, i64);
        let row: Option<Row> = self.db.call(|connection| {
            connection
                .query_row(
                    "SELECT username, access_token, refresh_token, expires_at, dead_at, generation
                     FROM upstream_grants WHERE user_id = ?1",
                    params![user_id],
                    |row| {
                        Ok((
                            row.get(0)?,
                            row.get(1)?,
                            row.get(2)?,
                            row.get(3)?,
                            row.get(4)?,
                            row.get(5)?,
                        ))
                    },
                )
                .optional()
                .map_err(GrantStoreError::from)
        })?;
        let Some((username, access, refresh, expires_at, dead_at, generation)) = row else {
            return Ok(None);
        };
        let row_id = user_id.to_string();
        let open =
            |column: &'static str, envelope: &[u8]| -> Result<SecretString, GrantStoreError> {
                let plain = self.sealer.open(&aad(user_id, column, &row_id), envelope)?;
                let text = std::str::from_utf8(&plain).map_err(|_| GrantStoreError::Encoding)?;
                Ok(SecretString::from(text.to_owned()))
            };
        Ok(Some(StoredGrant {
            username,
            tokens: TokenSet {
                access_token: open("access_token", &access)?,
                refresh_token: refresh
                    .map(|envelope| open("refresh_token", &envelope))
                    .transpose()?,
                expires_at,
            },
            dead: dead_at.is_some(),
            generation,
        }))
    }

    /// Forgejo refused the refresh: the grant is dead until the user authorizes again. Only
    /// the refresh token's ciphertext is dropped. The access token's stays (sealed, never
    /// handed out again: a dead grant yields `GrantDead`) until the user authorizes again or
    /// `users revoke` deletes the row: `access_token` is NOT NULL, and an empty placeholder
    /// would read as an unreadable value to `get` and to the vault's re-encryption job, which
    /// then never retires the key version.
    pub fn mark_dead(&self, user_id: UserId, now: UnixSeconds) -> Result<(), GrantStoreError> {
        self.db.call(|connection| {
            connection.execute(
                "UPDATE upstream_grants SET dead_at = ?2, refresh_token = NULL, updated_at = ?2
                 WHERE user_id = ?1",
                params![user_id, now],
            )?;
            Ok::<_, GrantStoreError>(())
        })
    }

    /// True if the user has a stored token set that Forgejo has not refused.
    /// Every request on `/mcp` runs this: a cached statement, parsed once per connection.
    pub fn is_alive(&self, user_id: UserId) -> Result<bool, StoreError> {
        self.db.call(|connection| {
            connection
                .prepare_cached("SELECT dead_at IS NULL FROM upstream_grants WHERE user_id = ?1")?
                .query_row(params![user_id], |row| row.get::<_, bool>(0))
                .optional()
                .map(|alive| alive.unwrap_or(false))
                .map_err(StoreError::from)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vault::{DataKey, Keyring};

    fn store() -> (GrantStore, Db) {
        let db = Db::open_in_memory().unwrap();
        let mut keyring = Keyring::new();
        keyring.insert(1, DataKey::generate().unwrap());
        (GrantStore::new(db.clone(), Arc::new(keyring)).unwrap(), db)
    }

    fn tokens(access: &str, refresh: &str) -> TokenSet {
        TokenSet {
            access_token: SecretString::from(access.to_owned()),
            refresh_token: Some(SecretString::from(refresh.to_owned())),
            expires_at: 5_000,
        }
    }

    #[test]
    fn tokens_round_trip_and_are_never_stored_in_clear() {
        let (store, db) = store();
        store
            .put(
                7,
                "alice",
                &tokens("gto_access_secret", "gto_refresh_secret"),
                1,
            )
            .unwrap();
        let grant = store.get(7).unwrap().unwrap();
        assert_eq!(
            grant.tokens.access_token.expose_secret(),
            "gto_access_secret"
        );
        assert_eq!(
            grant.tokens.refresh_token.unwrap().expose_secret(),
            "gto_refresh_secret"
        );
        let blobs: Vec<u8> = db
            .call(|c| {
                c.query_row(
                    "SELECT access_token, refresh_token FROM upstream_grants",
                    [],
                    |r| Ok([r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?].concat()),
                )
                .map_err(StoreError::from)
            })
            .unwrap();
        assert!(
            !blobs
                .windows(8)
                .any(|w| w == b"gto_acce" || w == b"gto_refr")
        );
    }

    #[test]
    fn a_ciphertext_moved_to_another_user_does_not_open() {
        let (store, db) = store();
        store.put(7, "alice", &tokens("a7", "r7"), 1).unwrap();
        store.put(8, "bob", &tokens("a8", "r8"), 1).unwrap();
        db.call(|c| {
            c.execute(
                "UPDATE upstream_grants SET access_token =
                   (SELECT access_token FROM upstream_grants WHERE user_id = 7) WHERE user_id = 8",
                [],
            )
            .map_err(StoreError::from)
        })
        .unwrap();
        assert!(matches!(store.get(8), Err(GrantStoreError::Vault(_))));
    }

    #[test]
    fn dead_grants_are_not_alive_until_replaced() {
        let (store, _) = store();
        assert!(!store.is_alive(7).unwrap());
        store.put(7, "alice", &tokens("a", "r"), 1).unwrap();
        assert!(store.is_alive(7).unwrap());
        store.mark_dead(7, 2).unwrap();
        assert!(!store.is_alive(7).unwrap());
        assert!(store.get(7).unwrap().unwrap().dead);
        store.put(7, "alice", &tokens("a2", "r2"), 3).unwrap();
        assert!(store.is_alive(7).unwrap());
    }
}
