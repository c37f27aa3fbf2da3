//! Sessions in memory, keyed by (user, client) with the session id (hashed) as an index
//! (ARCHITECTURE.md §2 "Protocol revisions": the stateless 2026-07-28 revision will key children
//! by (user, client) without session ids), backed by the hibernation records in SQLite.
//!
//! A session id is a handle, not a credential (checklist items 88–90): every lookup checks that
//! the verified caller is the session's user, client and grant, and answers "not found" (404)
//! otherwise — never the session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::context::Context;
use super::session::{Actor, Command, SessionShared, new_record};
use super::store::SessionRecord;
use super::streams::StreamTable;
use crate::audit::AuditEvent;
use crate::auth::{Principal, UserId};
use crate::secret::{hash_token, random_id, random_token};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("session not found")]
    NotFound,
    #[error("this user already has {0} sessions (the limit); end one with DELETE")]
    TooManySessions(usize),
    #[error("cannot create a session id")]
    Random,
    #[error(transparent)]
    Store(#[from] StoreError),
}

type OwnerKey = (UserId, String);

#[derive(Default)]
struct Inner {
    by_owner: HashMap<OwnerKey, HashMap<String, Arc<SessionShared>>>,
    index: HashMap<String, OwnerKey>,
}

pub struct Registry {
    pub ctx: Arc<Context>,
    inner: Mutex<Inner>,
}

/// The session id as the client sees it. Not `Debug`: it is a bearer-like handle.
pub struct NewSessionId(pub String);

impl Registry {
    pub fn new(ctx: Arc<Context>) -> Arc<Self> {
        Arc::new(Self {
            ctx,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// Creates an uninitialized session for `principal` (the caller runs `initialize` on it,
    /// or opens the legacy SSE stream).
    pub async fn create(
        &self,
        principal: &Principal,
        legacy: bool,
    ) -> Result<(NewSessionId, Arc<SessionShared>), RegistryError> {
        let now = self.ctx.clock.now();
        let limit = self.ctx.config.max_sessions_per_user;
        if self.ctx.store.count_live_for_user(principal.user_id, now)? >= limit {
            // Clients that never DELETE (Claude registers a new client per connection) would
            // otherwise lock a user out until expiry: the least recently used session that has
            // been idle past the idle timeout makes room. Only if none is idle is it an error.
            let idle_before = now.saturating_sub(self.ctx.config.idle_timeout_secs_i64());
            match self
                .ctx
                .store
                .least_recently_used(principal.user_id, now, idle_before)?
            {
                Some(key) => match self.in_memory(&key) {
                    Some(shared) => {
                        self.end(&shared, "session limit: least recently used")
                            .await
                    }
                    None => self.ctx.store.delete(&key)?,
                },
                None => return Err(RegistryError::TooManySessions(limit)),
            }
        }
        // Item 114: 32 random bytes, base64url — visible ASCII only.
        let id = random_token(32).map_err(|_| RegistryError::Random)?;
        let id = crate::secret::ExposeSecret::expose_secret(&id).to_owned();
        let key = hash_token(&id);
        let expires_at = now.saturating_add(self.ctx.config.session_ttl_secs_i64());
        let record = new_record(
            &key,
            principal.user_id,
            &principal.client_id,
            &principal.grant_id,
            legacy,
            now,
            expires_at,
        );
        self.ctx.store.insert(&record)?;
        let shared = self.activate(record)?;
        Ok((NewSessionId(id), shared))
    }

    /// Finds the caller's session by id: in memory, else from its hibernation record (after
    /// a restart). Expired sessions and other callers' sessions are "not found" (item 117).
    pub fn lookup(
        &self,
        session_id: &str,
        principal: &Principal,
    ) -> Result<Arc<SessionShared>, RegistryError> {
        let key = hash_token(session_id);
        let now = self.ctx.clock.now();
        let in_memory = self.inner.lock().ok().and_then(|inner| {
            let owner = inner.index.get(&key)?;
            inner.by_owner.get(owner)?.get(&key).cloned()
        });
        let shared = match in_memory {
            Some(shared) => {
                if !owned_by(
                    &shared.user_id,
                    &shared.client_id,
                    &shared.grant_id,
                    principal,
                ) {
                    return Err(RegistryError::NotFound);
                }
                shared
            }
            None => {
                let Some(record) = self.ctx.store.load(&key)? else {
                    return Err(RegistryError::NotFound);
                };
                if !owned_by(
                    &record.user_id,
                    &record.client_id,
                    &record.grant_id,
                    principal,
                ) || record.legacy
                    || record.initialize_params.is_none()
                {
                    return Err(RegistryError::NotFound);
                }
                if record.expires_at <= now {
                    self.ctx.store.delete(&key)?;
                    return Err(RegistryError::NotFound);
                }
                self.activate(record)?
            }
        };
        if shared.expires_at.load(Ordering::SeqCst) <= now {
            self.end_detached(shared, "expired");
            return Err(RegistryError::NotFound);
        }
        self.touch(&shared, now);
        Ok(shared)
    }

    /// Item 165: the caller's only live, initialized session (same user, client and
    /// authorization), if it has exactly one, counting those only on disk (after a restart);
    /// touched like a lookup. It must be in memory: only its id could load it from disk.
    pub fn sole_session(&self, principal: &Principal) -> Option<Arc<SessionShared>> {
        let now = self.ctx.clock.now();
        let owner: OwnerKey = (principal.user_id, principal.client_id.to_string());
        let mut candidates = {
            let inner = self.inner.lock().ok()?;
            inner
                .by_owner
                .get(&owner)?
                .values()
                .filter(|shared| {
                    !shared.legacy
                        && owned_by(
                            &shared.user_id,
                            &shared.client_id,
                            &shared.grant_id,
                            principal,
                        )
                        && shared.expires_at.load(Ordering::SeqCst) > now
                        && shared.protocol_version().is_some()
                })
                .cloned()
                .collect::<Vec<_>>()
        };
        if candidates.len() != 1 {
            return None;
        }
        let stored = self.ctx.store.count_live_for_owner(
            principal.user_id,
            &principal.client_id,
            &principal.grant_id,
            now,
        );
        if !matches!(stored, Ok(1)) {
            return None;
        }
        let shared = candidates.pop()?;
        self.touch(&shared, now);
        Some(shared)
    }

    /// Marks activity: resets the idle timer and slides the expiry, persisted at most once a
    /// minute (a busy session does not write on every request, and one never idle for a
    /// minute still slides its stored expiry).
    pub fn touch(&self, shared: &SessionShared, now: i64) {
        shared.last_activity.store(now, Ordering::SeqCst);
        let expires_at = now.saturating_add(self.ctx.config.session_ttl_secs_i64());
        shared.expires_at.store(expires_at, Ordering::SeqCst);
        let persisted = shared.persisted_at.load(Ordering::SeqCst);
        if now - persisted >= 60
            && shared
                .persisted_at
                .compare_exchange(persisted, now, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            && let Err(error) = self.ctx.store.touch(&shared.key, now, expires_at)
        {
            tracing::error!(session = %shared.label, %error, "cannot record session activity");
        }
    }

    /// Puts a record in memory with its actor (no child yet: it is spawned on demand).
    fn activate(&self, record: SessionRecord) -> Result<Arc<SessionShared>, RegistryError> {
        let key = record.id_hash.clone();
        let owner: OwnerKey = (record.user_id, record.client_id.clone());
        let (commands, receiver) = mpsc::channel(64);
        let epoch = random_id(6).map_err(|_| RegistryError::Random)?;
        let negotiated = record
            .protocol_version
            .clone()
            .zip(record.initialize_result.clone());
        let shared = Arc::new(SessionShared {
            label: key.get(..12).unwrap_or(&key).to_owned(),
            key: key.clone(),
            user_id: record.user_id,
            client_id: record.client_id.clone(),
            grant_id: record.grant_id.clone(),
            legacy: record.legacy,
            streams: Mutex::new(StreamTable::new(
                epoch,
                self.ctx.config.replay_buffer_events,
                self.ctx.config.pending_queue_messages,
                self.ctx.config.retained_bytes_per_session,
            )),
            last_activity: AtomicI64::new(record.last_seen),
            persisted_at: AtomicI64::new(record.last_seen),
            in_flight: AtomicUsize::new(0),
            pid: AtomicU32::new(0),
            negotiated: Mutex::new(negotiated),
            expires_at: AtomicI64::new(record.expires_at),
            commands,
        });
        {
            let mut inner = self.inner.lock().map_err(|_| StoreError::Poisoned)?;
            if let Some(existing) = inner
                .by_owner
                .get(&owner)
                .and_then(|sessions| sessions.get(&key))
            {
                // Two requests loaded the same record at once: keep the first.
                return Ok(existing.clone());
            }
            inner.index.insert(key.clone(), owner.clone());
            inner
                .by_owner
                .entry(owner)
                .or_default()
                .insert(key, shared.clone());
        }
        let actor = Actor::new(shared.clone(), self.ctx.clone(), receiver, record);
        self.ctx.tasks.spawn(actor.run());
        Ok(shared)
    }

    /// Ends a session: deletes its record, stops its child, closes its streams. The record
    /// goes first: a request that arrives while the child stops must not find the session
    /// gone from memory but still on disk, and load it again. Ending a session twice (a DELETE
    /// racing a revocation) waits for the same end and records it once.
    pub async fn end(&self, shared: &Arc<SessionShared>, reason: &str) {
        if let Err(error) = self.ctx.store.delete(&shared.key) {
            tracing::error!(session = %shared.label, %error, "cannot delete the session record");
        }
        let first = self.forget(&shared.key).is_some();
        let (reply, done) = oneshot::channel();
        if shared
            .commands
            .send(Command::End {
                reason: reason.to_owned(),
                reply,
            })
            .await
            .is_ok()
        {
            let _ = done.await;
        }
        if first {
            self.ctx.audit.record(AuditEvent::SessionEnded {
                session: shared.label.clone(),
                user_id: shared.user_id,
                reason: reason.to_owned(),
            });
        }
    }

    /// [`Registry::end`] without waiting (from synchronous contexts).
    pub fn end_detached(&self, shared: Arc<SessionShared>, reason: &'static str) {
        if let Err(error) = self.ctx.store.delete(&shared.key) {
            tracing::error!(session = %shared.label, %error, "cannot delete the session record");
        }
        let first = self.forget(&shared.key).is_some();
        let ctx = self.ctx.clone();
        self.ctx.tasks.spawn(async move {
            let (reply, done) = oneshot::channel();
            if shared
                .commands
                .send(Command::End {
                    reason: reason.to_owned(),
                    reply,
                })
                .await
                .is_ok()
            {
                let _ = done.await;
            }
            if first {
                ctx.audit.record(AuditEvent::SessionEnded {
                    session: shared.label.clone(),
                    user_id: shared.user_id,
                    reason: reason.to_owned(),
                });
            }
        });
    }

    fn forget(&self, key: &str) -> Option<Arc<SessionShared>> {
        let mut inner = self.inner.lock().ok()?;
        let owner = inner.index.remove(key)?;
        let sessions = inner.by_owner.get_mut(&owner)?;
        let shared = sessions.remove(key);
        if sessions.is_empty() {
            inner.by_owner.remove(&owner);
        }
        shared
    }

    fn in_memory(&self, key: &str) -> Option<Arc<SessionShared>> {
        let inner = self.inner.lock().ok()?;
        let owner = inner.index.get(key)?;
        inner.by_owner.get(owner)?.get(key).cloned()
    }

    /// Ends every session of a grant (the OAuth side calls this on revocation or refresh-token
    /// reuse) — afterwards those ids answer 404.
    pub async fn end_grant(&self, grant_id: &str) -> Result<usize, RegistryError> {
        let hashes = self.ctx.store.hashes_for_grant(grant_id)?;
        self.end_hashes(hashes, "grant revoked").await
    }

    /// Ends every session of a user (user revoked, or the Forgejo grant died).
    pub async fn end_user(&self, user_id: UserId) -> Result<usize, RegistryError> {
        let hashes = self.ctx.store.hashes_for_user(user_id)?;
        self.end_hashes(hashes, "user revoked").await
    }

    async fn end_hashes(&self, hashes: Vec<String>, reason: &str) -> Result<usize, RegistryError> {
        let count = hashes.len();
        for key in hashes {
            match self.in_memory(&key) {
                Some(shared) => self.end(&shared, reason).await,
                None => self.ctx.store.delete(&key)?,
            }
        }
        Ok(count)
    }

    /// Removes expired sessions (records and live actors); run by the housekeeping task.
    pub async fn reap_expired(&self) -> Result<(), RegistryError> {
        let now = self.ctx.clock.now();
        let expired: Vec<Arc<SessionShared>> = self
            .inner
            .lock()
            .map(|inner| {
                inner
                    .by_owner
                    .values()
                    .flat_map(HashMap::values)
                    .filter(|shared| shared.expires_at.load(Ordering::SeqCst) <= now)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for shared in expired {
            self.end(&shared, "expired").await;
        }
        for key in self.ctx.store.delete_expired(now)? {
            if let Some(shared) = self.in_memory(&key) {
                self.end(&shared, "expired").await;
            }
        }
        Ok(())
    }

    /// Sessions in memory for (user, client): the seam the stateless revision will use.
    pub fn sessions_of(&self, user_id: UserId, client_id: &str) -> usize {
        self.inner
            .lock()
            .ok()
            .and_then(|inner| {
                inner
                    .by_owner
                    .get(&(user_id, client_id.to_owned()))
                    .map(HashMap::len)
            })
            .unwrap_or(0)
    }
}

fn owned_by(user_id: &UserId, client_id: &str, grant_id: &str, principal: &Principal) -> bool {
    // Bound to the user and client (issue #3) and to the authorization that created it, so a
    // revoked-then-renewed authorization does not inherit old sessions.
    *user_id == principal.user_id
        && crate::secret::constant_time_eq(client_id.as_bytes(), principal.client_id.as_bytes())
        && crate::secret::constant_time_eq(grant_id.as_bytes(), principal.grant_id.as_bytes())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;
    use tokio::sync::oneshot;
    use tokio_util::sync::CancellationToken;

    use super::super::McpConfig;
    use super::super::jsonrpc::{Id, Message, codes};
    use super::super::session::{Command, SessionError};
    use super::super::store::SessionStore;
    use super::super::streams::{Frame, StreamKind};
    use super::*;
    use crate::audit::MemoryAudit;
    use crate::auth::{UpstreamCredentials, UpstreamCredentialsError};
    use crate::clock::ManualClock;
    use crate::secret::SecretString;
    use crate::store::Db;
    use crate::supervisor::plain::PlainLauncher;

    struct NoUpstream;

    #[async_trait]
    impl UpstreamCredentials for NoUpstream {
        async fn access_token(&self, _: UserId) -> Result<SecretString, UpstreamCredentialsError> {
            Err(UpstreamCredentialsError::NoGrant)
        }
    }

    fn registry(audit: Arc<MemoryAudit>) -> Arc<Registry> {
        let ctx = Context::new(
            McpConfig::default(),
            "http://127.0.0.1:9".to_owned(),
            Arc::new(PlainLauncher),
            Arc::new(NoUpstream),
            SessionStore::open(Db::open_in_memory().unwrap()).unwrap(),
            ManualClock::new(1_000_000),
            audit,
            CancellationToken::new(),
        );
        Registry::new(Arc::new(ctx))
    }

    fn principal() -> Principal {
        Principal {
            user_id: 7,
            username: "alice".into(),
            client_id: "client".into(),
            grant_id: "grant".into(),
            expires_at: 2_000_000,
        }
    }

    /// A POST that looked the session up just before it ended has its Forward queued behind
    /// the End. It used to be dropped with the actor: the request's stream closed with no
    /// answer (a 202 to a request). Now it gets a JSON-RPC error and the HTTP side a verdict.
    /// A single-threaded runtime, and both commands queued before the actor first runs, make
    /// the order certain.
    #[tokio::test(flavor = "current_thread")]
    async fn a_request_queued_behind_the_end_of_its_session_is_answered() {
        let audit = MemoryAudit::new();
        let registry = registry(audit.clone());
        let (_id, session) = registry.create(&principal(), false).await.unwrap();
        let (stream, mut frames) = session.streams.lock().unwrap().open(StreamKind::Json, 1);
        assert!(session.reserve_requests(1, 64));
        let (end_reply, ended) = oneshot::channel();
        let (forward_reply, forwarded) = oneshot::channel();
        let request = Message::Request {
            id: Id::number(41),
            method: "tools/call".to_owned(),
            params: None,
        };
        session
            .commands
            .try_send(Command::End {
                reason: "test".to_owned(),
                reply: end_reply,
            })
            .unwrap();
        session
            .commands
            .try_send(Command::Forward {
                messages: vec![request],
                stream: Some(stream),
                reply: Some(forward_reply),
            })
            .unwrap();
        ended.await.unwrap();
        assert_eq!(forwarded.await.unwrap(), Err(SessionError::Ended));
        let Some(Frame::Message { json, .. }) = frames.recv().await else {
            panic!("the request's stream closed without an answer");
        };
        let answer: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(answer["id"], 41);
        assert_eq!(answer["error"]["code"], codes::CHILD_UNAVAILABLE);
        assert!(matches!(frames.recv().await, Some(Frame::End) | None));
        assert_eq!(
            session.in_flight.load(Ordering::SeqCst),
            0,
            "the refused request gave its share back"
        );
        // Nothing more can be queued once the actor has stopped.
        let (reply, _) = oneshot::channel();
        assert!(
            session
                .commands
                .try_send(Command::Hibernate {
                    reason: "test",
                    reply
                })
                .is_err()
        );
    }

    /// Two ends of one session (a DELETE racing a revocation) both return once it has ended,
    /// and the audit log records one end.
    #[tokio::test(flavor = "current_thread")]
    async fn ending_a_session_twice_records_one_end() {
        let audit = MemoryAudit::new();
        let registry = registry(audit.clone());
        let (_id, session) = registry.create(&principal(), false).await.unwrap();
        tokio::join!(
            registry.end(&session, "deleted"),
            registry.end(&session, "revoked")
        );
        let ends: Vec<String> = audit
            .events()
            .into_iter()
            .filter_map(|event| match event {
                AuditEvent::SessionEnded { reason, .. } => Some(reason),
                _ => None,
            })
            .collect();
        assert_eq!(ends, ["deleted"]);
    }

    #[test]
    fn in_flight_shares_are_taken_whole_or_not_at_all() {
        let audit = MemoryAudit::new();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let session = runtime.block_on(async {
            let registry = registry(audit);
            registry.create(&principal(), false).await.unwrap().1
        });
        assert!(session.reserve_requests(2, 3));
        assert!(
            !session.reserve_requests(2, 3),
            "2 + 2 passes the limit of 3"
        );
        assert!(session.reserve_requests(1, 3));
        session.release_requests(3);
        session.release_requests(1);
        assert_eq!(
            session.in_flight.load(Ordering::SeqCst),
            0,
            "never below zero"
        );
    }
}
