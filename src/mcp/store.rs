//! Session records in SQLite (ARCHITECTURE.md §2 "Idle, crash, refresh, restart"): what a
//! hibernated session needs to come back — owner, the client's `initialize` params and the
//! child's answer, negotiated version, subscriptions, log level — keyed by the SHA-256 of the
//! session id (the id itself is a bearer-like handle and is never stored).

use std::collections::BTreeSet;

use rusqlite::{OptionalExtension as _, params};

use crate::auth::UserId;
use crate::clock::UnixSeconds;
use crate::store::{Db, StoreError};

pub const COMPONENT: &str = "mcp";

/// Append-only (see `crate::store`).
pub const MIGRATIONS: &[&str] = &["CREATE TABLE mcp_sessions (
        id_hash TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL,
        client_id TEXT NOT NULL,
        grant_id TEXT NOT NULL,
        legacy INTEGER NOT NULL DEFAULT 0,
        protocol_version TEXT,
        initialize_params TEXT,
        initialize_result TEXT,
        subscriptions TEXT NOT NULL DEFAULT '[]',
        log_level TEXT,
        created_at INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX mcp_sessions_user ON mcp_sessions (user_id, expires_at);
    CREATE INDEX mcp_sessions_grant ON mcp_sessions (grant_id);"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id_hash: String,
    pub user_id: UserId,
    pub client_id: String,
    pub grant_id: String,
    pub legacy: bool,
    pub protocol_version: Option<String>,
    pub initialize_params: Option<String>,
    pub initialize_result: Option<String>,
    pub subscriptions: BTreeSet<String>,
    pub log_level: Option<String>,
    pub created_at: UnixSeconds,
    pub last_seen: UnixSeconds,
    pub expires_at: UnixSeconds,
}

#[derive(Clone, Debug)]
pub struct SessionStore {
    db: Db,
}

impl SessionStore {
    pub fn open(db: Db) -> Result<Self, StoreError> {
        db.migrate(COMPONENT, MIGRATIONS)?;
        Ok(Self { db })
    }

    pub fn insert(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let subscriptions = encode_set(&record.subscriptions);
        self.db.call(|connection| {
            connection.execute(
                "INSERT INTO mcp_sessions (id_hash, user_id, client_id, grant_id, legacy,
                    protocol_version, initialize_params, initialize_result, subscriptions,
                    log_level, created_at, last_seen, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    record.id_hash,
                    record.user_id,
                    record.client_id,
                    record.grant_id,
                    record.legacy,
                    record.protocol_version,
                    record.initialize_params,
                    record.initialize_result,
                    subscriptions,
                    record.log_level,
                    record.created_at,
                    record.last_seen,
                    record.expires_at,
                ],
            )?;
            Ok(())
        })
    }

    pub fn save_initialized(
        &self,
        id_hash: &str,
        version: &str,
        params: &str,
        result: &str,
    ) -> Result<(), StoreError> {
        self.db.call(|connection| {
            connection.execute(
                "UPDATE mcp_sessions SET protocol_version = ?2, initialize_params = ?3,
                    initialize_result = ?4 WHERE id_hash = ?1",
                params![id_hash, version, params, result],
            )?;
            Ok(())
        })
    }

    pub fn save_replay_state(
        &self,
        id_hash: &str,
        subscriptions: &BTreeSet<String>,
        log_level: Option<&str>,
    ) -> Result<(), StoreError> {
        let subscriptions = encode_set(subscriptions);
        self.db.call(|connection| {
            connection.execute(
                "UPDATE mcp_sessions SET subscriptions = ?2, log_level = ?3 WHERE id_hash = ?1",
                params![id_hash, subscriptions, log_level],
            )?;
            Ok(())
        })
    }

    /// Sliding expiry: a session lives `ttl` past its last use.
    pub fn touch(
        &self,
        id_hash: &str,
        now: UnixSeconds,
        expires_at: UnixSeconds,
    ) -> Result<(), StoreError> {
        self.db.call(|connection| {
            connection.execute(
                "UPDATE mcp_sessions SET last_seen = ?2, expires_at = ?3 WHERE id_hash = ?1",
                params![id_hash, now, expires_at],
            )?;
            Ok(())
        })
    }

    pub fn load(&self, id_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.db.call(|connection| {
            connection
                .query_row(
                    "SELECT id_hash, user_id, client_id, grant_id, legacy, protocol_version,
                        initialize_params, initialize_result, subscriptions, log_level,
                        created_at, last_seen, expires_at
                     FROM mcp_sessions WHERE id_hash = ?1",
                    params![id_hash],
                    |row| {
                        let subscriptions: String = row.get(8)?;
                        Ok(SessionRecord {
                            id_hash: row.get(0)?,
                            user_id: row.get(1)?,
                            client_id: row.get(2)?,
                            grant_id: row.get(3)?,
                            legacy: row.get(4)?,
                            protocol_version: row.get(5)?,
                            initialize_params: row.get(6)?,
                            initialize_result: row.get(7)?,
                            subscriptions: serde_json::from_str(&subscriptions).unwrap_or_default(),
                            log_level: row.get(9)?,
                            created_at: row.get(10)?,
                            last_seen: row.get(11)?,
                            expires_at: row.get(12)?,
                        })
                    },
                )
                .optional()
                .map_err(StoreError::from)
        })
    }

    pub fn delete(&self, id_hash: &str) -> Result<(), StoreError> {
        self.db.call(|connection| {
            connection.execute(
                "DELETE FROM mcp_sessions WHERE id_hash = ?1",
                params![id_hash],
            )?;
            Ok(())
        })
    }

    pub fn count_live_for_user(
        &self,
        user_id: UserId,
        now: UnixSeconds,
    ) -> Result<usize, StoreError> {
        self.db.call(|connection| {
            let count: i64 = connection.query_row(
                "SELECT count(*) FROM mcp_sessions WHERE user_id = ?1 AND expires_at > ?2",
                params![user_id, now],
                |row| row.get(0),
            )?;
            Ok(usize::try_from(count).unwrap_or(usize::MAX))
        })
    }

    /// Live, initialized Streamable HTTP sessions of one (user, client, authorization), whether
    /// in memory or only on disk (item 165 routes to a sole session only).
    pub fn count_live_for_owner(
        &self,
        user_id: UserId,
        client_id: &str,
        grant_id: &str,
        now: UnixSeconds,
    ) -> Result<usize, StoreError> {
        let (client_id, grant_id) = (client_id.to_owned(), grant_id.to_owned());
        self.db.call(move |connection| {
            let count: i64 = connection.query_row(
                "SELECT count(*) FROM mcp_sessions WHERE user_id = ?1 AND client_id = ?2
                    AND grant_id = ?3 AND legacy = 0 AND initialize_params IS NOT NULL
                    AND expires_at > ?4",
                params![user_id, client_id, grant_id, now],
                |row| row.get(0),
            )?;
            Ok(usize::try_from(count).unwrap_or(usize::MAX))
        })
    }

    /// The user's live session used least recently, if it was last used before `idle_before`.
    pub fn least_recently_used(
        &self,
        user_id: UserId,
        now: UnixSeconds,
        idle_before: UnixSeconds,
    ) -> Result<Option<String>, StoreError> {
        self.db.call(|connection| {
            connection
                .query_row(
                    "SELECT id_hash FROM mcp_sessions
                     WHERE user_id = ?1 AND expires_at > ?2 AND last_seen <= ?3 AND legacy = 0
                     ORDER BY last_seen ASC LIMIT 1",
                    params![user_id, now, idle_before],
                    |row| row.get(0),
                )
                .optional()
                .map_err(StoreError::from)
        })
    }

    /// Deletes expired records; returns their hashes so live actors can be ended too.
    pub fn delete_expired(&self, now: UnixSeconds) -> Result<Vec<String>, StoreError> {
        self.db.call(|connection| {
            let mut statement = connection
                .prepare("DELETE FROM mcp_sessions WHERE expires_at <= ?1 RETURNING id_hash")?;
            let rows = statement.query_map(params![now], |row| row.get::<_, String>(0))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::from)
        })
    }

    pub fn hashes_for_grant(&self, grant_id: &str) -> Result<Vec<String>, StoreError> {
        self.select_hashes(
            "SELECT id_hash FROM mcp_sessions WHERE grant_id = ?1",
            grant_id,
        )
    }

    pub fn hashes_for_user(&self, user_id: UserId) -> Result<Vec<String>, StoreError> {
        self.select_hashes(
            "SELECT id_hash FROM mcp_sessions WHERE user_id = ?1",
            &user_id.to_string(),
        )
    }

    fn select_hashes(&self, sql: &str, key: &str) -> Result<Vec<String>, StoreError> {
        self.db.call(|connection| {
            let mut statement = connection.prepare(sql)?;
            let rows = statement.query_map(params![key], |row| row.get::<_, String>(0))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::from)
        })
    }

    /// Removes legacy (2024-11-05) sessions left by a previous run: their SSE connection,
    /// which was their only channel, died with that process.
    pub fn delete_legacy(&self) -> Result<(), StoreError> {
        self.db.call(|connection| {
            connection.execute("DELETE FROM mcp_sessions WHERE legacy = 1", [])?;
            Ok(())
        })
    }
}

fn encode_set(set: &BTreeSet<String>) -> String {
    serde_json::to_string(set).unwrap_or_else(|_| "[]".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(hash: &str, user: UserId, expires_at: UnixSeconds) -> SessionRecord {
        SessionRecord {
            id_hash: hash.to_owned(),
            user_id: user,
            client_id: "c".to_owned(),
            grant_id: "g".to_owned(),
            legacy: false,
            protocol_version: None,
            initialize_params: None,
            initialize_result: None,
            subscriptions: BTreeSet::new(),
            log_level: None,
            created_at: 0,
            last_seen: 0,
            expires_at,
        }
    }

    #[test]
    fn records_round_trip_and_expire() {
        let store = SessionStore::open(Db::open_in_memory().unwrap()).unwrap();
        store.insert(&record("a", 1, 100)).unwrap();
        store.insert(&record("b", 1, 200)).unwrap();
        store
            .save_initialized("a", "2025-06-18", "{}", "{}")
            .unwrap();
        let subs: BTreeSet<String> = ["file:///x".to_owned()].into();
        store.save_replay_state("a", &subs, Some("debug")).unwrap();
        let loaded = store.load("a").unwrap().unwrap();
        assert_eq!(loaded.protocol_version.as_deref(), Some("2025-06-18"));
        assert_eq!(loaded.subscriptions, subs);
        assert_eq!(loaded.log_level.as_deref(), Some("debug"));
        assert_eq!(store.count_live_for_user(1, 150).unwrap(), 1);
        assert_eq!(store.delete_expired(150).unwrap(), ["a"]);
        assert!(store.load("a").unwrap().is_none());
    }
}
