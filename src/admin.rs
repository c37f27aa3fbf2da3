//! Operator actions on the database (issue #7): list and delete clients, list and revoke
//! users. Each change is audited (`client_deleted`, `user_revoked`, by `admin`).
//!
//! Run as a separate process beside the serving broker: SQLite (WAL, busy timeout) serialises
//! the writes, the audit file is shared through its lock, and the serving broker sees the
//! effect on its next database read (a revoked grant fails the next token check).
//!
//! Sessions are ended by expiring their row: the serving broker's housekeeping (every
//! `mcp.housekeeping_interval_ms`) reaps expired rows and stops their live children.

use std::sync::Arc;

use rusqlite::{OptionalExtension as _, params};
use serde::Serialize;

use crate::app::{AppDeps, StartError, build_upstream, open_vault, provide_audit_key};
use crate::audit::{AuditEvent, SharedAudit};
use crate::auth::{UpstreamCredentialsError, UserId};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::oauth::error::OAuthError;
use crate::oauth::store::OAuthStore;
use crate::store::{Db, StoreError};
use crate::upstream::Upstream;

/// Who the audit log names as the actor of these actions.
const ACTOR: &str = "admin";

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("authorization server tables: {0}")]
    OAuth(#[from] OAuthError),
    #[error("no client {0:?}")]
    UnknownClient(String),
    #[error("no user {0} is known to the broker")]
    UnknownUser(UserId),
    #[error("no session {0:?} (give the 12-character label shown by `admin sessions list`)")]
    UnknownSession(String),
    #[error("{0:?} names more than one session; give more characters")]
    AmbiguousSession(String),
    #[error(
        "Forgejo could not be reached to burn user {0}'s refresh token; nothing was revoked (retry, or pass --force to revoke without burning)"
    )]
    BurnFailed(UserId),
}

impl From<rusqlite::Error> for AdminError {
    fn from(error: rusqlite::Error) -> Self {
        Self::Store(StoreError::from(error))
    }
}

/// One registered client, for `admin clients list`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClientSummary {
    pub client_id: String,
    /// `dcr` (registered) or `cimd` (metadata document).
    pub kind: String,
    pub client_name: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    /// Grants (token families) not revoked.
    pub live_grants: i64,
}

/// One user known to the broker, for `admin users list`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UserSummary {
    pub user_id: UserId,
    pub username: String,
    /// `alive`, `dead` (must log in again) or `none` (no Forgejo token stored).
    pub upstream: String,
    pub live_grants: i64,
}

/// One MCP session, for `admin sessions list`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SessionSummary {
    /// The first 12 hex digits of the session id's hash: the `session` of its audit records.
    pub session: String,
    pub user_id: UserId,
    pub client_id: String,
    pub legacy: bool,
    pub created_at: i64,
    pub last_seen: i64,
    pub expires_at: i64,
}

/// What `admin clients delete` did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClientDeletion {
    pub client_id: String,
    pub grants_revoked: usize,
    pub sessions_ended: usize,
}

/// What `admin users revoke` did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UserRevocation {
    pub user_id: UserId,
    /// Whether Forgejo's refresh token was burned first (false only with `force`).
    pub upstream_burned: bool,
    pub grants_revoked: usize,
    pub sessions_ended: usize,
    pub forgejo_tokens_deleted: bool,
}

pub struct Admin {
    db: Db,
    oauth: OAuthStore,
    upstream: Arc<Upstream>,
    audit: SharedAudit,
    clock: SharedClock,
}

impl Admin {
    /// Opens the broker's database (applying migrations, like `serve`) with `deps`' audit
    /// sink and clock.
    pub fn open(config: &Config, deps: &AppDeps) -> Result<Self, AdminError> {
        let db = Db::open(&config.server.database_path())?;
        // The serving broker notices revocations on its next token check (every request
        // reads the grant from the database); this process's channel has no listeners.
        let access_ended = crate::auth::access_ended_channel();
        let oauth = OAuthStore::new(db.clone(), access_ended.clone())?;
        // The MCP edge's table, migrated as `serve` would.
        crate::mcp::store::SessionStore::open(db.clone())?;
        let vault = Arc::new(open_vault(config, &db, deps).map_err(StartError::from)?);
        if let Some(audit_file) = &deps.audit_file {
            provide_audit_key(config, &vault, audit_file)?;
        }
        let vault: Arc<dyn vault::Sealer> = vault;
        let upstream = build_upstream(config, &db, deps, vault, access_ended)?;
        Ok(Self {
            db,
            oauth,
            upstream,
            audit: deps.audit.clone(),
            clock: deps.clock.clone(),
        })
    }

    pub fn list_clients(&self) -> Result<Vec<ClientSummary>, AdminError> {
        self.db.call(|c| {
            let mut statement = c.prepare(
                "SELECT client_id, kind, json_extract(metadata, '$.client_name'), created_at,
                        expires_at,
                        (SELECT count(*) FROM oauth_grants g
                          WHERE g.client_id = oauth_clients.client_id AND g.revoked_at IS NULL)
                   FROM oauth_clients ORDER BY created_at, client_id",
            )?;
            let rows = statement
                .query_map([], |row| {
                    Ok(ClientSummary {
                        client_id: row.get(0)?,
                        kind: row.get(1)?,
                        client_name: row.get(2)?,
                        created_at: row.get(3)?,
                        expires_at: row.get(4)?,
                        live_grants: row.get(5)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Revokes every grant of the client, drops its pending authorizations and codes, and
    /// deletes it. A DCR client must register again; a CIMD client is fetched afresh.
    pub fn delete_client(&self, client_id: &str) -> Result<ClientDeletion, AdminError> {
        let exists = self.db.call(|c| {
            c.query_row(
                "SELECT 1 FROM oauth_clients WHERE client_id = ?1",
                params![client_id],
                |_| Ok(()),
            )
            .optional()
            .map_err(AdminError::from)
        })?;
        if exists.is_none() {
            return Err(AdminError::UnknownClient(client_id.to_owned()));
        }
        let revoked = self.oauth.revoke_client(client_id, self.clock.now())?;
        let sessions_ended = self.expire_sessions("client_id = ?1", client_id)?;
        self.db.call(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "DELETE FROM oauth_pending WHERE client_id = ?1",
                params![client_id],
            )?;
            tx.execute(
                "DELETE FROM oauth_codes WHERE client_id = ?1",
                params![client_id],
            )?;
            tx.execute(
                "DELETE FROM oauth_clients WHERE client_id = ?1",
                params![client_id],
            )?;
            tx.commit().map_err(AdminError::from)
        })?;
        self.audit.record(AuditEvent::ClientDeleted {
            client_id: client_id.to_owned(),
            by: ACTOR.to_owned(),
        });
        Ok(ClientDeletion {
            client_id: client_id.to_owned(),
            grants_revoked: revoked.len(),
            sessions_ended,
        })
    }

    pub fn list_users(&self) -> Result<Vec<UserSummary>, AdminError> {
        self.db.call(|c| {
            let mut statement = c.prepare(
                "WITH users AS (
                     SELECT user_id, username FROM upstream_grants
                     UNION SELECT user_id, username FROM oauth_grants
                 )
                 SELECT u.user_id, max(u.username),
                        (SELECT CASE WHEN g.dead_at IS NULL THEN 'alive' ELSE 'dead' END
                           FROM upstream_grants g WHERE g.user_id = u.user_id),
                        (SELECT count(*) FROM oauth_grants o
                          WHERE o.user_id = u.user_id AND o.revoked_at IS NULL)
                   FROM users u GROUP BY u.user_id ORDER BY u.user_id",
            )?;
            let rows = statement
                .query_map([], |row| {
                    Ok(UserSummary {
                        user_id: row.get(0)?,
                        username: row.get(1)?,
                        upstream: row
                            .get::<_, Option<String>>(2)?
                            .unwrap_or_else(|| "none".to_owned()),
                        live_grants: row.get(3)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Revokes a user entirely, in this order: burn their Forgejo refresh token (refresh once
    /// and discard, since Forgejo has no revocation endpoint) so it cannot be used again even
    /// by someone holding a copy; revoke every broker grant (access and refresh tokens); delete
    /// the stored Forgejo tokens. With `force`, an unreachable Forgejo does not stop the rest.
    pub async fn revoke_user(
        &self,
        user_id: UserId,
        force: bool,
    ) -> Result<UserRevocation, AdminError> {
        if !self
            .list_users()?
            .iter()
            .any(|user| user.user_id == user_id)
        {
            return Err(AdminError::UnknownUser(user_id));
        }
        let upstream_burned = match self.upstream.burn(user_id).await {
            Ok(()) => true,
            Err(UpstreamCredentialsError::Unavailable) if force => false,
            Err(_) => return Err(AdminError::BurnFailed(user_id)),
        };
        let revoked = self.oauth.revoke_user(user_id, self.clock.now())?;
        let sessions_ended = self.expire_sessions("user_id = ?1", &user_id.to_string())?;
        let deleted = self.db.call(|c| {
            c.execute(
                "DELETE FROM upstream_grants WHERE user_id = ?1",
                params![user_id],
            )
            .map_err(AdminError::from)
        })?;
        self.audit.record(AuditEvent::UserRevoked {
            user_id,
            by: ACTOR.to_owned(),
        });
        Ok(UserRevocation {
            user_id,
            upstream_burned,
            grants_revoked: revoked.len(),
            sessions_ended,
            forgejo_tokens_deleted: deleted > 0,
        })
    }

    /// Sessions, newest first; only `user_id`'s if given.
    pub fn list_sessions(
        &self,
        user_id: Option<UserId>,
    ) -> Result<Vec<SessionSummary>, AdminError> {
        self.db.call(|c| {
            let mut statement = c.prepare(
                "SELECT substr(id_hash, 1, 12), user_id, client_id, legacy, created_at, last_seen,
                        expires_at
                   FROM mcp_sessions WHERE ?1 IS NULL OR user_id = ?1
                  ORDER BY created_at DESC, id_hash",
            )?;
            let rows = statement
                .query_map(params![user_id], |row| {
                    Ok(SessionSummary {
                        session: row.get(0)?,
                        user_id: row.get(1)?,
                        client_id: row.get(2)?,
                        legacy: row.get::<_, i64>(3)? != 0,
                        created_at: row.get(4)?,
                        last_seen: row.get(5)?,
                        expires_at: row.get(6)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Ends one session, named by its label (or a longer prefix of its id hash).
    pub fn end_session(&self, label: &str) -> Result<SessionSummary, AdminError> {
        let wanted = label.trim().to_ascii_lowercase();
        if wanted.len() < 8 || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AdminError::UnknownSession(label.to_owned()));
        }
        let matching: Vec<SessionSummary> = self
            .list_sessions(None)?
            .into_iter()
            .filter(|session| {
                session.session.starts_with(&wanted) || wanted.starts_with(&session.session)
            })
            .collect();
        // A prefix longer than the label is checked against the full hash below.
        let session = match matching.as_slice() {
            [] => return Err(AdminError::UnknownSession(label.to_owned())),
            [one] => one.clone(),
            _ => return Err(AdminError::AmbiguousSession(label.to_owned())),
        };
        let pattern = format!("{wanted}%");
        let changed = self.db.call(|c| {
            c.execute(
                "UPDATE mcp_sessions SET expires_at = 0 WHERE id_hash LIKE ?1",
                params![pattern],
            )
            .map_err(AdminError::from)
        })?;
        if changed == 0 {
            return Err(AdminError::UnknownSession(label.to_owned()));
        }
        self.audit.record(AuditEvent::SessionEnded {
            session: session.session.clone(),
            user_id: session.user_id,
            reason: "ended by admin".to_owned(),
        });
        Ok(session)
    }

    /// Expires matching sessions so the serving broker's housekeeping ends them (and their
    /// children); returns how many.
    fn expire_sessions(&self, condition: &'static str, value: &str) -> Result<usize, AdminError> {
        self.db.call(|c| {
            c.execute(
                &format!("UPDATE mcp_sessions SET expires_at = 0 WHERE {condition}"),
                params![value],
            )
            .map_err(AdminError::from)
        })
    }
}
