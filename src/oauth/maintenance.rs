//! Housekeeping and operator actions on the authorization server's tables: the periodic sweep
//! of dead rows (so the database does not grow with every login), and revocation of every
//! grant of a user or a client (for the admin verbs of issue #7).

use std::time::Duration;

use rusqlite::params;
use tokio_util::sync::CancellationToken;

use super::error::OAuthError;
use super::store::OAuthStore;
use crate::audit::{AuditEvent, SharedAudit};
use crate::auth::UserId;
use crate::clock::{SharedClock, UnixSeconds};

/// Rows past their use are kept this long (a replayed code or token is still recognised as a
/// replay rather than as unknown), then deleted.
const KEEP_AFTER_EXPIRY: i64 = 86_400;

/// What a sweep deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepCounts {
    pub pending: usize,
    pub codes: usize,
    pub access_tokens: usize,
    pub refresh_tokens: usize,
    pub grants: usize,
}

impl OAuthStore {
    pub fn sweep(&self, now: UnixSeconds) -> Result<SweepCounts, OAuthError> {
        let old = now - KEEP_AFTER_EXPIRY;
        self.call(|c| {
            let tx = c.transaction()?;
            let counts = SweepCounts {
                pending: tx.execute("DELETE FROM oauth_pending WHERE expires_at <= ?1", params![now])?,
                codes: tx.execute("DELETE FROM oauth_codes WHERE expires_at < ?1", params![old])?,
                access_tokens: tx.execute(
                    "DELETE FROM oauth_access_tokens WHERE expires_at < ?1",
                    params![old],
                )?,
                refresh_tokens: tx.execute(
                    "DELETE FROM oauth_refresh_tokens WHERE expires_at < ?1",
                    params![old],
                )?,
                // A family with no token left can never be used again.
                grants: tx.execute(
                    "DELETE FROM oauth_grants WHERE created_at < ?1
                       AND NOT EXISTS (SELECT 1 FROM oauth_access_tokens a WHERE a.grant_id = oauth_grants.grant_id)
                       AND NOT EXISTS (SELECT 1 FROM oauth_refresh_tokens r WHERE r.grant_id = oauth_grants.grant_id)",
                    params![old],
                )?,
            };
            tx.commit()?;
            Ok(counts)
        })
    }

    /// Deletes clients nobody uses: DCR clients registered before `now - ttl` that have no
    /// grant and no authorization in progress, and CIMD cache entries expired for a day with
    /// no live grant (a CIMD client comes back by being fetched again; anyone can make the
    /// broker cache a document, so these must not pile up). Returns their ids.
    pub fn sweep_clients(&self, now: UnixSeconds, ttl: i64) -> Result<Vec<String>, OAuthError> {
        let cutoff = now.saturating_sub(ttl);
        let cimd_cutoff = now.saturating_sub(KEEP_AFTER_EXPIRY);
        self.call(|c| {
            let tx = c.transaction()?;
            let ids = {
                let mut statement = tx.prepare(
                    "DELETE FROM oauth_clients
                     WHERE ((kind = 'dcr' AND created_at < ?1) OR (kind = 'cimd' AND expires_at < ?2))
                       AND NOT EXISTS (SELECT 1 FROM oauth_grants g
                                       WHERE g.client_id = oauth_clients.client_id
                                         AND (oauth_clients.kind = 'dcr' OR g.revoked_at IS NULL))
                       AND NOT EXISTS (SELECT 1 FROM oauth_pending p WHERE p.client_id = oauth_clients.client_id)
                     RETURNING client_id",
                )?;
                statement
                    .query_map(params![cutoff, cimd_cutoff], |row| row.get(0))?
                    .collect::<Result<Vec<String>, _>>()?
            };
            tx.commit()?;
            Ok(ids)
        })
    }

    /// Revokes every live grant of a user; returns the grant ids revoked.
    pub fn revoke_user(
        &self,
        user_id: UserId,
        now: UnixSeconds,
    ) -> Result<Vec<String>, OAuthError> {
        self.revoke_where(
            "user_id = ?1",
            rusqlite::types::Value::Integer(user_id),
            now,
        )
    }

    /// Revokes every live grant of a client; returns the grant ids revoked.
    pub fn revoke_client(
        &self,
        client_id: &str,
        now: UnixSeconds,
    ) -> Result<Vec<String>, OAuthError> {
        self.revoke_where(
            "client_id = ?1",
            rusqlite::types::Value::Text(client_id.to_owned()),
            now,
        )
    }

    fn revoke_where(
        &self,
        condition: &'static str,
        value: rusqlite::types::Value,
        now: UnixSeconds,
    ) -> Result<Vec<String>, OAuthError> {
        let grant_ids: Vec<String> = self.call(|c| {
            let mut statement = c.prepare(&format!(
                "SELECT grant_id FROM oauth_grants WHERE revoked_at IS NULL AND {condition}"
            ))?;
            let ids = statement
                .query_map(params![value], |row| row.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(ids)
        })?;
        for grant_id in &grant_ids {
            self.revoke_grant(grant_id, now)?;
        }
        Ok(grant_ids)
    }
}

/// What the sweeper needs.
pub struct Sweeper {
    pub store: OAuthStore,
    pub clock: SharedClock,
    pub audit: SharedAudit,
    pub interval: Duration,
    /// `oauth.unused_client_ttl_secs`; 0 keeps clients forever.
    pub unused_client_ttl_secs: u64,
}

impl Sweeper {
    /// One pass: dead rows, then unused clients (each audited as `client_expired`).
    pub fn sweep_once(&self) {
        let now = self.clock.now();
        match self.store.sweep(now) {
            Ok(counts) => tracing::debug!(task = "oauth-sweep", ?counts, "swept"),
            Err(error) => tracing::warn!(task = "oauth-sweep", %error, "sweep failed"),
        }
        // 0 keeps DCR clients forever; stale CIMD cache entries are swept regardless.
        let ttl = match self.unused_client_ttl_secs {
            0 => i64::MAX,
            secs => i64::try_from(secs).unwrap_or(i64::MAX),
        };
        match self.store.sweep_clients(now, ttl) {
            Ok(ids) => {
                for client_id in ids {
                    self.audit.record(AuditEvent::ClientExpired { client_id });
                }
            }
            Err(error) => tracing::warn!(task = "oauth-sweep", %error, "client sweep failed"),
        }
    }
}

/// The `oauth-sweep` task: sweeps every `interval` until `cancel`.
pub async fn run_sweeper(sweeper: Sweeper, cancel: CancellationToken) {
    let mut ticker = tokio::time::interval(sweeper.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        sweeper.sweep_once();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::store::{CodeRecord, GrantRecord, IssuedHashes};
    use crate::store::Db;

    fn store_with_grant(user_id: UserId, client_id: &str, grant_id: &str, now: i64) -> OAuthStore {
        let store = OAuthStore::new(
            Db::open_in_memory().unwrap(),
            crate::auth::access_ended_channel(),
        )
        .unwrap();
        add_grant(&store, user_id, client_id, grant_id, now);
        store
    }

    fn add_grant(store: &OAuthStore, user_id: UserId, client_id: &str, grant_id: &str, now: i64) {
        let code_hash = format!("code-{grant_id}");
        store
            .insert_code(
                &code_hash,
                &CodeRecord {
                    client_id: client_id.into(),
                    redirect_uri: "https://c.example/cb".into(),
                    code_challenge: "challenge".into(),
                    resource: "https://b.example/mcp".into(),
                    scope: None,
                    user_id,
                    username: "u".into(),
                    expires_at: now + 60,
                },
            )
            .unwrap();
        store
            .create_grant(
                &GrantRecord {
                    grant_id: grant_id.into(),
                    client_id: client_id.into(),
                    user_id,
                    username: "u".into(),
                    resource: "https://b.example/mcp".into(),
                    scope: None,
                    revoked: false,
                },
                &code_hash,
                &IssuedHashes {
                    access_hash: &format!("a-{grant_id}"),
                    access_expires_at: now + 3600,
                    refresh_hash: &format!("r-{grant_id}"),
                    refresh_expires_at: now + 7200,
                },
                now,
            )
            .unwrap();
    }

    #[test]
    fn sweep_keeps_live_rows_and_drops_long_dead_ones() {
        let store = store_with_grant(1, "c", "g1", 1_000);
        assert_eq!(store.sweep(2_000).unwrap(), SweepCounts::default());
        let counts = store.sweep(1_000 + 7200 + KEEP_AFTER_EXPIRY + 1).unwrap();
        assert_eq!(counts.access_tokens, 1);
        assert_eq!(counts.refresh_tokens, 1);
        assert_eq!(counts.grants, 1);
        assert!(store.find_access("a-g1").unwrap().is_none());
    }

    #[test]
    fn unused_clients_are_swept_used_ones_kept() {
        use crate::oauth::client::{ClientMetadata, TokenEndpointAuthMethod};
        use crate::oauth::store::{ClientKind, ClientRecord};
        let store = store_with_grant(1, "used", "g1", 1_000);
        let metadata = ClientMetadata {
            redirect_uris: vec!["https://a.example/cb".into()],
            token_endpoint_auth_method: TokenEndpointAuthMethod::None,
            grant_types: vec!["authorization_code".into()],
            client_name: None,
            client_uri: None,
            logo_uri: None,
            tos_uri: None,
            policy_uri: None,
            scope: None,
            contacts: vec![],
            software_id: None,
            software_version: None,
            application_type: None,
        };
        for (id, kind, expires_at) in [
            ("used", ClientKind::Dcr, None),
            ("unused", ClientKind::Dcr, None),
            ("https://c.example/meta", ClientKind::Cimd, Some(1_500)),
        ] {
            let record = ClientRecord {
                client_id: id.into(),
                kind,
                secret_hash: None,
                metadata: metadata.clone(),
                expires_at,
            };
            store.put_client(&record, 1_000).unwrap();
        }
        assert!(
            store.sweep_clients(1_100, 1_000).unwrap().is_empty(),
            "too young"
        );
        let mut swept = store
            .sweep_clients(1_500 + KEEP_AFTER_EXPIRY + 1, 1_000)
            .unwrap();
        swept.sort();
        assert_eq!(
            swept,
            vec!["https://c.example/meta".to_owned(), "unused".to_owned()]
        );
        assert!(store.get_client("used").unwrap().is_some());
    }

    #[test]
    fn revoking_a_user_or_client_revokes_only_theirs() {
        let store = store_with_grant(1, "c1", "g1", 1_000);
        add_grant(&store, 2, "c1", "g2", 1_000);
        add_grant(&store, 2, "c2", "g3", 1_000);
        assert_eq!(store.revoke_user(1, 1_001).unwrap(), vec!["g1".to_owned()]);
        assert!(store.find_access("a-g1").unwrap().unwrap().revoked);
        assert!(!store.find_access("a-g2").unwrap().unwrap().revoked);
        assert_eq!(
            store.revoke_client("c2", 1_002).unwrap(),
            vec!["g3".to_owned()]
        );
        assert!(!store.find_access("a-g2").unwrap().unwrap().revoked);
        assert!(
            store.revoke_user(1, 1_003).unwrap().is_empty(),
            "already revoked"
        );
    }
}
