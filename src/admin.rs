//! Operator actions on the database (issue #7): list and delete clients, list and revoke
//! users. Each change is audited (`client_deleted`, `user_revoked`, by `admin`).
//!
//! Run as a separate process beside the serving broker: SQLite (WAL, busy timeout) serialises
//! the writes, the audit file is shared through its lock, and the serving broker sees the
//! effect on its next database read (a revoked grant fails the next token check).
//!
//! Sessions (list, end) belong to the MCP edge's tables and are not covered yet.

use std::sync::Arc;

use rusqlite::{OptionalExtension as _, params};
use serde::Serialize;

use crate::app::{AppDeps, StartError, build_upstream, open_vault};
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

/// What `admin clients delete` did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClientDeletion {
    pub client_id: String,
    pub grants_revoked: usize,
}

/// What `admin users revoke` did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UserRevocation {
    pub user_id: UserId,
    /// Whether Forgejo's refresh token was burned first (false only with `force`).
    pub upstream_burned: bool,
    pub grants_revoked: usize,
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
        let vault: Arc<dyn vault::Sealer> = Arc::new(open_vault(config, &db, deps)?);
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
            forgejo_tokens_deleted: deleted > 0,
        })
    }
}
