//! The authorization server's tables (component `oauth`). Every broker-issued secret (code,
//! access token, refresh token, CSRF token, browser binding, upstream state) is stored as its
//! SHA-256 hash only ([`crate::secret::hash_token`]).

use rusqlite::{Connection, OptionalExtension as _, Row, params};

use super::client::ClientMetadata;
use super::error::OAuthError;
use crate::auth::{AccessEnded, AccessEndedSender, UserId};
use crate::clock::UnixSeconds;
use crate::store::Db;

pub const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE oauth_clients (
        client_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('dcr', 'cimd')),
        secret_hash TEXT,
        metadata TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER
    );
    CREATE TABLE oauth_pending (
        id TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        redirect_uri TEXT NOT NULL,
        state TEXT,
        code_challenge TEXT NOT NULL,
        resource TEXT NOT NULL,
        scope TEXT,
        browser_hash TEXT NOT NULL,
        csrf_hash TEXT NOT NULL,
        stage TEXT NOT NULL CHECK (stage IN ('consent', 'upstream')),
        upstream_state_hash TEXT UNIQUE,
        upstream_verifier BLOB,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX oauth_pending_client ON oauth_pending (client_id);
    CREATE TABLE oauth_grants (
        grant_id TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        user_id INTEGER NOT NULL,
        username TEXT NOT NULL,
        resource TEXT NOT NULL,
        scope TEXT,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE INDEX oauth_grants_user ON oauth_grants (user_id);
    CREATE TABLE oauth_codes (
        code_hash TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        redirect_uri TEXT NOT NULL,
        code_challenge TEXT NOT NULL,
        resource TEXT NOT NULL,
        scope TEXT,
        user_id INTEGER NOT NULL,
        username TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at INTEGER,
        grant_id TEXT
    );
    CREATE TABLE oauth_access_tokens (
        token_hash TEXT PRIMARY KEY,
        grant_id TEXT NOT NULL REFERENCES oauth_grants (grant_id) ON DELETE CASCADE,
        expires_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE INDEX oauth_access_tokens_grant ON oauth_access_tokens (grant_id);
    CREATE TABLE oauth_refresh_tokens (
        token_hash TEXT PRIMARY KEY,
        grant_id TEXT NOT NULL REFERENCES oauth_grants (grant_id) ON DELETE CASCADE,
        expires_at INTEGER NOT NULL,
        used_at INTEGER,
        grace_used INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX oauth_refresh_tokens_grant ON oauth_refresh_tokens (grant_id);
",
    "
    -- The sealed PKCE verifier's user id for the vault's registry contract: always 0 (the
    -- user is not known before Forgejo's callback).
    ALTER TABLE oauth_pending ADD COLUMN sealed_user_id INTEGER NOT NULL DEFAULT 0;
",
    "
    -- Who started the authorization (a hash of the client address): the per-client cap
    -- counts per client and address, since anyone can start authorizations for a public
    -- client id and would otherwise spend that client's share for all its users.
    ALTER TABLE oauth_pending ADD COLUMN origin_hash TEXT NOT NULL DEFAULT '';
    CREATE INDEX oauth_pending_client_origin ON oauth_pending (client_id, origin_hash);
",
];

/// The sealed column of this component (the upstream PKCE verifier of a pending login,
/// sealed by `upstream::Upstream::seal_verifier` with row id = `id`, user id 0), declared to
/// the vault's re-encryption job and `vault status` (keystore/registry.rs).
pub const SEALED_COLUMNS: crate::keystore::SealedColumns = crate::keystore::SealedColumns {
    table: "oauth_pending",
    id_column: "id",
    user_id_column: "sealed_user_id",
    columns: &["upstream_verifier"],
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    Dcr,
    Cimd,
}

#[derive(Debug, Clone)]
pub struct ClientRecord {
    pub client_id: String,
    pub kind: ClientKind,
    pub secret_hash: Option<String>,
    pub metadata: ClientMetadata,
    /// For CIMD: when the cached document must be fetched again.
    pub expires_at: Option<UnixSeconds>,
}

#[derive(Debug, Clone)]
pub struct PendingAuthorization {
    pub id: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub code_challenge: String,
    pub resource: String,
    pub scope: Option<String>,
    pub browser_hash: String,
    pub csrf_hash: String,
    pub upstream_verifier: Option<Vec<u8>>,
    pub expires_at: UnixSeconds,
}

#[derive(Debug, Clone)]
pub struct CodeRecord {
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub resource: String,
    pub scope: Option<String>,
    pub user_id: UserId,
    pub username: String,
    pub expires_at: UnixSeconds,
}

/// What presenting a code found.
#[derive(Debug)]
pub enum CodeLookup {
    Unknown,
    /// First use: the code is now marked used.
    Fresh(CodeRecord),
    /// Second use: what it issued must be revoked (OAuth 2.1 §4.1.3).
    Reused {
        client_id: String,
        user_id: UserId,
        grant_id: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct GrantRecord {
    pub grant_id: String,
    pub client_id: String,
    pub user_id: UserId,
    pub username: String,
    pub resource: String,
    pub scope: Option<String>,
    pub revoked: bool,
}

#[derive(Debug)]
pub struct RefreshLookup {
    pub grant: GrantRecord,
    pub expires_at: UnixSeconds,
    pub used_at: Option<UnixSeconds>,
    pub grace_used: bool,
}

#[derive(Debug)]
pub struct AccessLookup {
    pub grant: GrantRecord,
    pub expires_at: UnixSeconds,
    pub revoked: bool,
}

/// Hashes of a freshly issued token pair.
pub struct IssuedHashes<'a> {
    pub access_hash: &'a str,
    pub access_expires_at: UnixSeconds,
    pub refresh_hash: &'a str,
    pub refresh_expires_at: UnixSeconds,
}

/// `oauth_codes.grant_id` of a code replayed before its first use created a grant.
const REPLAYED_BEFORE_GRANT: &str = "";

#[derive(Clone, Debug)]
pub struct OAuthStore {
    db: Db,
    access_ended: AccessEndedSender,
}

type ClientRow = (String, String, Option<String>, String, Option<i64>);

fn client_from_row(row: &Row<'_>) -> rusqlite::Result<ClientRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

fn grant_from_row(row: &Row<'_>, offset: usize) -> rusqlite::Result<GrantRecord> {
    Ok(GrantRecord {
        grant_id: row.get(offset)?,
        client_id: row.get(offset + 1)?,
        user_id: row.get(offset + 2)?,
        username: row.get(offset + 3)?,
        resource: row.get(offset + 4)?,
        scope: row.get(offset + 5)?,
        revoked: row.get::<_, Option<i64>>(offset + 6)?.is_some(),
    })
}

const GRANT_COLUMNS: &str =
    "g.grant_id, g.client_id, g.user_id, g.username, g.resource, g.scope, g.revoked_at";

impl OAuthStore {
    /// `access_ended` hears of every revoked grant ([`Self::revoke_grant`]).
    pub fn new(db: Db, access_ended: AccessEndedSender) -> Result<Self, crate::store::StoreError> {
        db.migrate("oauth", MIGRATIONS)?;
        Ok(Self { db, access_ended })
    }

    /// See [`Db::change_stamp`].
    pub fn change_stamp(&self) -> Result<crate::store::ChangeStamp, crate::store::StoreError> {
        self.db.change_stamp()
    }

    pub(super) fn call<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, OAuthError>,
    ) -> Result<T, OAuthError> {
        self.db.call(f)
    }

    // ---- clients ----

    pub fn put_client(&self, record: &ClientRecord, now: UnixSeconds) -> Result<(), OAuthError> {
        let metadata = serde_json::to_string(&record.metadata)
            .map_err(|_| OAuthError::ServerError("cannot store the client"))?;
        let kind = match record.kind {
            ClientKind::Dcr => "dcr",
            ClientKind::Cimd => "cimd",
        };
        self.call(|c| {
            c.execute(
                "INSERT INTO oauth_clients (client_id, kind, secret_hash, metadata, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(client_id) DO UPDATE SET metadata = excluded.metadata,
                    expires_at = excluded.expires_at",
                params![record.client_id, kind, record.secret_hash, metadata, now, record.expires_at],
            )?;
            Ok(())
        })
    }

    /// Stores a newly registered (DCR) client, first forgetting the oldest registered clients
    /// nobody uses (no grant, no authorization in progress) as far as needed to keep at most
    /// `max_unused` of them. Returns the ids forgotten.
    pub fn register_client(
        &self,
        record: &ClientRecord,
        now: UnixSeconds,
        max_unused: u64,
    ) -> Result<Vec<String>, OAuthError> {
        let metadata = serde_json::to_string(&record.metadata)
            .map_err(|_| OAuthError::ServerError("cannot store the client"))?;
        let keep = i64::try_from(max_unused.saturating_sub(1)).unwrap_or(i64::MAX);
        self.call(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let forgotten = {
                let mut statement = tx.prepare(
                    "DELETE FROM oauth_clients WHERE client_id IN (
                       SELECT client_id FROM oauth_clients
                       WHERE kind = 'dcr'
                         AND NOT EXISTS (SELECT 1 FROM oauth_grants g
                                         WHERE g.client_id = oauth_clients.client_id)
                         AND NOT EXISTS (SELECT 1 FROM oauth_pending p
                                         WHERE p.client_id = oauth_clients.client_id)
                       ORDER BY created_at DESC, rowid DESC
                       LIMIT -1 OFFSET ?1)
                     RETURNING client_id",
                )?;
                statement
                    .query_map(params![keep], |row| row.get(0))?
                    .collect::<Result<Vec<String>, _>>()?
            };
            tx.execute(
                "INSERT INTO oauth_clients (client_id, kind, secret_hash, metadata, created_at, expires_at)
                 VALUES (?1, 'dcr', ?2, ?3, ?4, NULL)",
                params![record.client_id, record.secret_hash, metadata, now],
            )?;
            tx.commit()?;
            Ok(forgotten)
        })
    }

    pub fn get_client(&self, client_id: &str) -> Result<Option<ClientRecord>, OAuthError> {
        let row = self.call(|c| {
            Ok(c.query_row(
                "SELECT client_id, kind, secret_hash, metadata, expires_at FROM oauth_clients
                 WHERE client_id = ?1",
                params![client_id],
                client_from_row,
            )
            .optional()?)
        })?;
        let Some((client_id, kind, secret_hash, metadata, expires_at)) = row else {
            return Ok(None);
        };
        let metadata: ClientMetadata = serde_json::from_str(&metadata)
            .map_err(|_| OAuthError::ServerError("a stored client is unreadable"))?;
        Ok(Some(ClientRecord {
            client_id,
            kind: if kind == "cimd" {
                ClientKind::Cimd
            } else {
                ClientKind::Dcr
            },
            secret_hash,
            metadata,
            expires_at,
        }))
    }

    // ---- pending authorizations ----

    /// Stores a pending authorization unless a cap is reached (ARCHITECTURE.md §6): in total,
    /// or for its client from `origin_hash` (the hashed client address). Expired rows are swept
    /// first, so the caps count only live ones.
    pub fn insert_pending(
        &self,
        pending: &PendingAuthorization,
        origin_hash: &str,
        now: UnixSeconds,
        max_total: u64,
        max_per_client: u64,
    ) -> Result<(), OAuthError> {
        self.call(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "DELETE FROM oauth_pending WHERE expires_at <= ?1",
                params![now],
            )?;
            let total: u64 =
                tx.query_row("SELECT count(*) FROM oauth_pending", [], |r| r.get(0))?;
            let per_client: u64 = tx.query_row(
                "SELECT count(*) FROM oauth_pending WHERE client_id = ?1 AND origin_hash = ?2",
                params![pending.client_id, origin_hash],
                |r| r.get(0),
            )?;
            if total >= max_total || per_client >= max_per_client {
                return Err(OAuthError::TemporarilyUnavailable(
                    "too many authorizations in progress; try again later",
                ));
            }
            tx.execute(
                "INSERT INTO oauth_pending (id, client_id, redirect_uri, state, code_challenge,
                    resource, scope, browser_hash, csrf_hash, stage, created_at, expires_at,
                    origin_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'consent', ?10, ?11, ?12)",
                params![
                    pending.id,
                    pending.client_id,
                    pending.redirect_uri,
                    pending.state,
                    pending.code_challenge,
                    pending.resource,
                    pending.scope,
                    pending.browser_hash,
                    pending.csrf_hash,
                    now,
                    pending.expires_at,
                    origin_hash
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn pending_from_row(row: &Row<'_>) -> rusqlite::Result<PendingAuthorization> {
        Ok(PendingAuthorization {
            id: row.get(0)?,
            client_id: row.get(1)?,
            redirect_uri: row.get(2)?,
            state: row.get(3)?,
            code_challenge: row.get(4)?,
            resource: row.get(5)?,
            scope: row.get(6)?,
            browser_hash: row.get(7)?,
            csrf_hash: row.get(8)?,
            upstream_verifier: row.get(9)?,
            expires_at: row.get(10)?,
        })
    }

    const PENDING_COLUMNS: &'static str =
        "id, client_id, redirect_uri, state, code_challenge, resource, scope,
        browser_hash, csrf_hash, upstream_verifier, expires_at";

    /// A pending authorization still waiting for consent.
    pub fn pending_for_consent(
        &self,
        id: &str,
        now: UnixSeconds,
    ) -> Result<Option<PendingAuthorization>, OAuthError> {
        self.call(|c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {} FROM oauth_pending WHERE id = ?1 AND stage = 'consent' AND expires_at > ?2",
                    Self::PENDING_COLUMNS
                ),
                params![id, now],
                Self::pending_from_row,
            )
            .optional()?)
        })
    }

    /// Consent given: the row moves to the upstream stage, once (single-use consent).
    pub fn consent_to_upstream(
        &self,
        id: &str,
        upstream_state_hash: &str,
        sealed_verifier: &[u8],
        now: UnixSeconds,
        expires_at: UnixSeconds,
    ) -> Result<bool, OAuthError> {
        self.call(|c| {
            let changed = c.execute(
                "UPDATE oauth_pending SET stage = 'upstream', upstream_state_hash = ?2,
                    upstream_verifier = ?3, expires_at = ?5, csrf_hash = ''
                 WHERE id = ?1 AND stage = 'consent' AND expires_at > ?4",
                params![id, upstream_state_hash, sealed_verifier, now, expires_at],
            )?;
            Ok(changed == 1)
        })
    }

    /// Consent denied (or the row otherwise finished): delete it; true if it was there.
    pub fn delete_pending(&self, id: &str) -> Result<bool, OAuthError> {
        self.call(|c| Ok(c.execute("DELETE FROM oauth_pending WHERE id = ?1", params![id])? == 1))
    }

    /// The Forgejo callback: takes (deletes) the pending authorization its `state` names.
    pub fn take_pending_by_upstream_state(
        &self,
        upstream_state_hash: &str,
        now: UnixSeconds,
    ) -> Result<Option<PendingAuthorization>, OAuthError> {
        self.call(|c| {
            let row = c
                .query_row(
                    &format!(
                        "DELETE FROM oauth_pending WHERE upstream_state_hash = ?1 AND stage = 'upstream'
                         RETURNING {}",
                        Self::PENDING_COLUMNS
                    ),
                    params![upstream_state_hash],
                    Self::pending_from_row,
                )
                .optional()?;
            Ok(row.filter(|pending| pending.expires_at > now))
        })
    }

    // ---- codes ----

    pub fn insert_code(&self, code_hash: &str, code: &CodeRecord) -> Result<(), OAuthError> {
        self.call(|c| {
            c.execute(
                "INSERT INTO oauth_codes (code_hash, client_id, redirect_uri, code_challenge, resource,
                    scope, user_id, username, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    code_hash,
                    code.client_id,
                    code.redirect_uri,
                    code.code_challenge,
                    code.resource,
                    code.scope,
                    code.user_id,
                    code.username,
                    code.expires_at
                ],
            )?;
            Ok(())
        })
    }

    /// Marks the code used and returns it, or reports that it was already used.
    pub fn take_code(&self, code_hash: &str, now: UnixSeconds) -> Result<CodeLookup, OAuthError> {
        self.call(|c| {
            let tx = c.transaction()?;
            type Row = (CodeRecord, Option<i64>, Option<String>);
            let row: Option<Row> = tx
                .query_row(
                    "SELECT client_id, redirect_uri, code_challenge, resource, scope, user_id, username,
                        expires_at, used_at, grant_id FROM oauth_codes WHERE code_hash = ?1",
                    params![code_hash],
                    |r| {
                        Ok((
                            CodeRecord {
                                client_id: r.get(0)?,
                                redirect_uri: r.get(1)?,
                                code_challenge: r.get(2)?,
                                resource: r.get(3)?,
                                scope: r.get(4)?,
                                user_id: r.get(5)?,
                                username: r.get(6)?,
                                expires_at: r.get(7)?,
                            },
                            r.get(8)?,
                            r.get(9)?,
                        ))
                    },
                )
                .optional()?;
            let lookup = match row {
                None => CodeLookup::Unknown,
                Some((code, Some(_), grant_id)) => CodeLookup::Reused {
                    client_id: code.client_id,
                    user_id: code.user_id,
                    grant_id: grant_id.filter(|id| id != REPLAYED_BEFORE_GRANT),
                },
                Some((code, None, _)) => {
                    tx.execute(
                        "UPDATE oauth_codes SET used_at = ?2 WHERE code_hash = ?1",
                        params![code_hash, now],
                    )?;
                    CodeLookup::Fresh(code)
                }
            };
            // Used and expired codes are kept a day so a replay is recognised, then swept.
            tx.execute(
                "DELETE FROM oauth_codes WHERE expires_at < ?1",
                params![now - 86_400],
            )?;
            tx.commit()?;
            Ok(lookup)
        })
    }

    // ---- grants and tokens ----

    /// A replay of a code whose first use has not created its grant yet (the two requests ran
    /// at once): the grant it is about to create must not come to be.
    /// Returns the grant the first use created if it got there first after all (the replay
    /// read the code before the grant was claimed): the caller revokes it.
    pub fn poison_code(&self, code_hash: &str) -> Result<Option<String>, OAuthError> {
        self.call(|c| {
            let tx = c.transaction()?;
            let poisoned = tx.execute(
                "UPDATE oauth_codes SET grant_id = ?2 WHERE code_hash = ?1 AND grant_id IS NULL",
                params![code_hash, REPLAYED_BEFORE_GRANT],
            )?;
            let issued = if poisoned == 1 {
                None
            } else {
                tx.query_row(
                    "SELECT grant_id FROM oauth_codes WHERE code_hash = ?1",
                    params![code_hash],
                    |row| row.get::<_, Option<String>>(0),
                )
                .optional()?
                .flatten()
                .filter(|grant_id| grant_id != REPLAYED_BEFORE_GRANT)
            };
            tx.commit()?;
            Ok(issued)
        })
    }

    /// A new grant (token family) from a code, with its first token pair; `invalid_grant` if
    /// the code was replayed meanwhile ([`OAuthStore::poison_code`]).
    pub fn create_grant(
        &self,
        grant: &GrantRecord,
        code_hash: &str,
        hashes: &IssuedHashes<'_>,
        now: UnixSeconds,
    ) -> Result<(), OAuthError> {
        self.call(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO oauth_grants (grant_id, client_id, user_id, username, resource, scope, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    grant.grant_id,
                    grant.client_id,
                    grant.user_id,
                    grant.username,
                    grant.resource,
                    grant.scope,
                    now
                ],
            )?;
            let claimed = tx.execute(
                "UPDATE oauth_codes SET grant_id = ?2 WHERE code_hash = ?1 AND grant_id IS NULL",
                params![code_hash, grant.grant_id],
            )?;
            if claimed != 1 {
                // Dropping the transaction rolls the grant back.
                return Err(OAuthError::InvalidGrant(
                    "the authorization code was presented twice",
                ));
            }
            Self::insert_pair(&tx, &grant.grant_id, hashes)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn insert_pair(
        tx: &Connection,
        grant_id: &str,
        hashes: &IssuedHashes<'_>,
    ) -> rusqlite::Result<()> {
        tx.execute(
            "INSERT INTO oauth_access_tokens (token_hash, grant_id, expires_at) VALUES (?1, ?2, ?3)",
            params![hashes.access_hash, grant_id, hashes.access_expires_at],
        )?;
        tx.execute(
            "INSERT INTO oauth_refresh_tokens (token_hash, grant_id, expires_at) VALUES (?1, ?2, ?3)",
            params![hashes.refresh_hash, grant_id, hashes.refresh_expires_at],
        )?;
        Ok(())
    }

    pub fn find_refresh(&self, token_hash: &str) -> Result<Option<RefreshLookup>, OAuthError> {
        self.call(|c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {GRANT_COLUMNS}, r.expires_at, r.used_at, r.grace_used
                     FROM oauth_refresh_tokens r JOIN oauth_grants g ON g.grant_id = r.grant_id
                     WHERE r.token_hash = ?1"
                ),
                params![token_hash],
                |row| {
                    Ok(RefreshLookup {
                        grant: grant_from_row(row, 0)?,
                        expires_at: row.get(7)?,
                        used_at: row.get(8)?,
                        grace_used: row.get(9)?,
                    })
                },
            )
            .optional()?)
        })
    }

    /// Rotates: marks `old_hash` used (or its grace spent) and stores the new pair, atomically.
    /// Returns false if someone else rotated it first (the caller treats that as reuse).
    /// Spends `old_hash` and stores the new pair: a first use marks the token used; a use
    /// within `grace_secs` of that (`within_grace`, or a first use that lost the race with a
    /// concurrent one: the same client retrying) spends the one grace replay instead. `false`
    /// when neither is left.
    pub fn rotate_refresh(
        &self,
        old_hash: &str,
        within_grace: bool,
        grace_secs: i64,
        grant_id: &str,
        hashes: &IssuedHashes<'_>,
        now: UnixSeconds,
    ) -> Result<bool, OAuthError> {
        self.call(|c| {
            let tx = c.transaction()?;
            let first_use = if within_grace {
                0
            } else {
                tx.execute(
                    "UPDATE oauth_refresh_tokens SET used_at = ?2 WHERE token_hash = ?1 AND used_at IS NULL",
                    params![old_hash, now],
                )?
            };
            let changed = if first_use == 0 && grace_secs > 0 {
                tx.execute(
                    "UPDATE oauth_refresh_tokens SET grace_used = 1
                     WHERE token_hash = ?1 AND used_at IS NOT NULL AND grace_used = 0
                       AND ?2 - used_at <= ?3",
                    params![old_hash, now, grace_secs],
                )?
            } else {
                first_use
            };
            if changed != 1 {
                return Ok(false);
            }
            Self::insert_pair(&tx, grant_id, hashes)?;
            tx.commit()?;
            Ok(true)
        })
    }

    /// Every request on `/mcp` runs this: a cached statement, parsed once per connection.
    pub fn find_access(&self, token_hash: &str) -> Result<Option<AccessLookup>, OAuthError> {
        self.call(|c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {GRANT_COLUMNS}, a.expires_at, a.revoked_at
                 FROM oauth_access_tokens a JOIN oauth_grants g ON g.grant_id = a.grant_id
                 WHERE a.token_hash = ?1"
            ))?
            .query_row(params![token_hash], |row| {
                Ok(AccessLookup {
                    grant: grant_from_row(row, 0)?,
                    expires_at: row.get(7)?,
                    revoked: row.get::<_, Option<i64>>(8)?.is_some(),
                })
            })
            .optional()?)
        })
    }

    /// Revokes a whole family: the grant, its access tokens, its refresh tokens; announces it
    /// on the access-ended channel. True if it was live.
    pub fn revoke_grant(&self, grant_id: &str, now: UnixSeconds) -> Result<bool, OAuthError> {
        let revoked_user: Option<UserId> = self.call(|c| {
            let tx = c.transaction()?;
            let user_id: Option<UserId> = tx
                .query_row(
                    "UPDATE oauth_grants SET revoked_at = ?2 WHERE grant_id = ?1 AND revoked_at IS NULL
                     RETURNING user_id",
                    params![grant_id, now],
                    |row| row.get(0),
                )
                .optional()?;
            tx.execute(
                "UPDATE oauth_access_tokens SET revoked_at = ?2 WHERE grant_id = ?1 AND revoked_at IS NULL",
                params![grant_id, now],
            )?;
            // Refresh tokens of a revoked grant are useless; drop them.
            tx.execute(
                "DELETE FROM oauth_refresh_tokens WHERE grant_id = ?1",
                params![grant_id],
            )?;
            tx.commit()?;
            Ok(user_id)
        })?;
        if let Some(user_id) = revoked_user {
            let _ = self.access_ended.send(AccessEnded::Grant {
                grant_id: grant_id.to_owned(),
                user_id,
            });
        }
        Ok(revoked_user.is_some())
    }

    pub fn revoke_access(&self, token_hash: &str, now: UnixSeconds) -> Result<(), OAuthError> {
        self.call(|c| {
            c.execute(
                "UPDATE oauth_access_tokens SET revoked_at = ?2 WHERE token_hash = ?1 AND revoked_at IS NULL",
                params![token_hash, now],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Client A's code for Alice.
    fn code_record() -> CodeRecord {
        CodeRecord {
            client_id: "client-a".into(),
            redirect_uri: "https://client.example/cb".into(),
            code_challenge: "challenge".into(),
            resource: "https://broker.example/mcp".into(),
            scope: None,
            user_id: 1,
            username: "alice".into(),
            expires_at: 2_000,
        }
    }

    /// The grant [`code_record`]'s first use creates.
    fn grant_record() -> GrantRecord {
        GrantRecord {
            grant_id: "grant-1".into(),
            client_id: "client-a".into(),
            user_id: 1,
            username: "alice".into(),
            resource: code_record().resource,
            scope: None,
            revoked: false,
        }
    }

    /// Its first token pair.
    const ISSUED: IssuedHashes<'static> = IssuedHashes {
        access_hash: "access-hash",
        access_expires_at: 5_000,
        refresh_hash: "refresh-hash",
        refresh_expires_at: 9_000,
    };

    /// A store where [`code_record`] was taken by its first use and then by a replay, before
    /// the first use created its grant.
    fn a_code_taken_twice() -> OAuthStore {
        let db = Db::open_in_memory().unwrap();
        let store = OAuthStore::new(db, tokio::sync::broadcast::channel(1).0).unwrap();
        store.insert_code("code-hash", &code_record()).unwrap();
        assert!(matches!(
            store.take_code("code-hash", 1_000).unwrap(),
            CodeLookup::Fresh(_)
        ));
        assert!(matches!(
            store.take_code("code-hash", 1_001).unwrap(),
            CodeLookup::Reused { grant_id: None, .. }
        ));
        store
    }

    #[test]
    fn a_code_replayed_while_its_first_use_runs_creates_no_grant() {
        let store = a_code_taken_twice();
        assert_eq!(store.poison_code("code-hash").unwrap(), None);
        assert!(matches!(
            store.create_grant(&grant_record(), "code-hash", &ISSUED, 1_002),
            Err(OAuthError::InvalidGrant(_))
        ));
        assert!(store.find_refresh("refresh-hash").unwrap().is_none());
        // A third use still reads as a replay, with nothing to revoke.
        assert!(matches!(
            store.take_code("code-hash", 1_003).unwrap(),
            CodeLookup::Reused { grant_id: None, .. }
        ));
    }

    #[test]
    fn a_replay_read_before_its_first_use_claimed_the_code_names_the_grant_to_revoke() {
        let store = a_code_taken_twice();
        // The first use's grant is created before the replay poisons the code: the replay
        // must end it.
        store
            .create_grant(&grant_record(), "code-hash", &ISSUED, 1_002)
            .unwrap();
        assert_eq!(
            store.poison_code("code-hash").unwrap(),
            Some("grant-1".to_owned())
        );
    }

    #[test]
    fn two_first_uses_of_a_refresh_token_at_once_are_a_rotation_and_its_grace_replay() {
        let db = Db::open_in_memory().unwrap();
        let store = OAuthStore::new(db, tokio::sync::broadcast::channel(1).0).unwrap();
        let grant = GrantRecord {
            grant_id: "grant-1".into(),
            client_id: "client-a".into(),
            user_id: 1,
            username: "alice".into(),
            resource: "https://broker.example/mcp".into(),
            scope: None,
            revoked: false,
        };
        store
            .insert_code(
                "code-hash",
                &CodeRecord {
                    client_id: "client-a".into(),
                    redirect_uri: "https://client.example/cb".into(),
                    code_challenge: "challenge".into(),
                    resource: grant.resource.clone(),
                    scope: None,
                    user_id: 1,
                    username: "alice".into(),
                    expires_at: 2_000,
                },
            )
            .unwrap();
        let pair = |n: u32| (format!("access-{n}"), format!("refresh-{n}"));
        fn issued((access, refresh): &(String, String)) -> IssuedHashes<'_> {
            IssuedHashes {
                access_hash: access,
                access_expires_at: 5_000,
                refresh_hash: refresh,
                refresh_expires_at: 9_000,
            }
        }
        store
            .create_grant(&grant, "code-hash", &issued(&pair(0)), 1_000)
            .unwrap();
        // Both requests found the token unused; the second to rotate takes the grace replay.
        for (n, expected) in [(1, true), (2, true), (3, false)] {
            let rotated = store
                .rotate_refresh("refresh-0", false, 30, "grant-1", &issued(&pair(n)), 1_010)
                .unwrap();
            assert_eq!(rotated, expected, "use {n}");
        }
        // Without a grace window the loser gets nothing.
        let rotated = store
            .rotate_refresh("refresh-1", false, 0, "grant-1", &issued(&pair(4)), 1_020)
            .unwrap();
        assert!(rotated);
        let rotated = store
            .rotate_refresh("refresh-1", false, 0, "grant-1", &issued(&pair(5)), 1_020)
            .unwrap();
        assert!(!rotated);
        // Past the window, neither.
        let rotated = store
            .rotate_refresh("refresh-4", false, 30, "grant-1", &issued(&pair(6)), 1_030)
            .unwrap();
        assert!(rotated);
        let rotated = store
            .rotate_refresh("refresh-4", false, 30, "grant-1", &issued(&pair(7)), 1_061)
            .unwrap();
        assert!(!rotated);
    }
}
