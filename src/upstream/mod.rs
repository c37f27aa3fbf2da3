//! The broker as a confidential OAuth2 client of Forgejo (issue #2; forgejo-facts.md): the
//! login redirect, the code exchange, `/api/v1/user`, and the one token set per Forgejo user,
//! refreshed ahead of expiry, single-flight, persisted before use.
//!
//! Why one set per user and single-flight: Forgejo's refresh tokens share one counter per
//! (user, app) grant, so every refresh invalidates every earlier refresh token
//! (forgejo-facts.md §0.1, §1.5); two concurrent refreshes would leave one caller with a dead
//! token (woodpecker-ci/woodpecker#5839).

pub mod client;
pub mod store;
pub mod version;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use vault::{Aad, Sealer};

use crate::audit::{AuditEvent, SharedAudit};
use crate::auth::{
    AccessEnded, AccessEndedSender, UpstreamCredentials, UpstreamCredentialsError, UserId,
};
use crate::clock::SharedClock;
use crate::secret::{ExposeSecret, RandomError, SecretString, pkce_s256, random_token};
pub use client::{ForgejoClient, ForgejoUser, TokenSet, UpstreamError};
pub use store::{GrantStore, GrantStoreError};

/// The redirect URI to register at Forgejo: `{public origin}/oauth/callback`.
pub fn forgejo_redirect_uri(server: &crate::config::ServerConfig) -> String {
    format!("{}/oauth/callback", server.issuer())
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Store(#[from] GrantStoreError),
    #[error(transparent)]
    Random(#[from] RandomError),
    #[error("the login did not finish")]
    Interrupted,
}

/// A login about to be sent to Forgejo: what the broker must remember until the callback.
pub struct UpstreamLogin {
    pub state: SecretString,
    pub code_verifier: SecretString,
    pub authorize_url: url::Url,
}

/// Owns Forgejo token sets: logins, refreshes, and the answer to "what is this user's current
/// Forgejo token?" ([`UpstreamCredentials`]).
pub struct Upstream {
    client: Arc<ForgejoClient>,
    store: GrantStore,
    sealer: Arc<dyn Sealer>,
    clock: SharedClock,
    audit: SharedAudit,
    refresh_ahead_secs: i64,
    locks: UserLocks,
    access_ended: AccessEndedSender,
    /// What else ends when Forgejo refuses a user's grant (the broker's own grants of theirs).
    on_grant_dead: Option<GrantDeadHook>,
    /// Code exchanges and refreshes in flight. Once Forgejo has answered one, its token set is
    /// the only one that works, so shutdown waits for them to be stored
    /// ([`Upstream::settle`]) instead of dropping them with the runtime.
    in_flight: tokio_util::task::TaskTracker,
}

impl Upstream {
    pub fn new(
        client: ForgejoClient,
        store: GrantStore,
        sealer: Arc<dyn Sealer>,
        clock: SharedClock,
        audit: SharedAudit,
        refresh_ahead_secs: i64,
        access_ended: AccessEndedSender,
    ) -> Self {
        Self {
            client: Arc::new(client),
            store,
            sealer,
            clock,
            audit,
            refresh_ahead_secs,
            locks: Arc::new(Mutex::new(HashMap::new())),
            access_ended,
            in_flight: tokio_util::task::TaskTracker::new(),
            on_grant_dead: None,
        }
    }

    /// Called with the user's id whenever Forgejo refuses their grant (a refresh answered
    /// 400): `serve` revokes the user's broker grants there, so that a later login, which
    /// revives the Forgejo grant, does not also revive clients the user did not authorize
    /// again.
    pub fn on_grant_dead(mut self, hook: GrantDeadHook) -> Self {
        self.on_grant_dead = Some(hook);
        self
    }

    /// How many code exchanges and refreshes are in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// For shutdown: waits until every code exchange and refresh in flight (and any started
    /// meanwhile) has finished, its token set stored. Each is bounded by the Forgejo client's
    /// timeouts.
    pub async fn settle(&self) {
        self.in_flight.close();
        self.in_flight.wait().await;
    }

    pub fn client(&self) -> &ForgejoClient {
        &self.client
    }

    /// Fresh state and PKCE S256 pair for one trip to Forgejo.
    pub fn begin_login(&self) -> Result<UpstreamLogin, LoginError> {
        let state = random_token(32)?;
        let code_verifier = random_token(32)?;
        let authorize_url = self.client.authorize_url(
            state.expose_secret(),
            &pkce_s256(code_verifier.expose_secret()),
        )?;
        Ok(UpstreamLogin {
            state,
            code_verifier,
            authorize_url,
        })
    }

    /// Seals the PKCE verifier of a pending login (it waits in the database until the callback).
    pub fn seal_verifier(
        &self,
        pending_id: &str,
        verifier: &SecretString,
    ) -> Result<Vec<u8>, vault::VaultError> {
        self.sealer.seal(
            &verifier_aad(pending_id),
            verifier.expose_secret().as_bytes(),
        )
    }

    pub fn open_verifier(&self, pending_id: &str, envelope: &[u8]) -> Option<SecretString> {
        let plain = self.sealer.open(&verifier_aad(pending_id), envelope).ok()?;
        std::str::from_utf8(&plain)
            .ok()
            .map(|text| SecretString::from(text.to_owned()))
    }

    /// The callback: exchange the code, identify the user, replace their token set (under
    /// their lock, so it cannot race a refresh).
    ///
    /// In a task of its own, like a refresh: exchanging a code moves the (user, app) grant's
    /// refresh counter at Forgejo, so the set stored before is dead from then on, and the new
    /// one must be stored whatever happens to the callback's request (a browser that gives up).
    /// Shutdown waits for it ([`Upstream::settle`]).
    pub async fn complete_login(
        &self,
        code: &str,
        code_verifier: &SecretString,
    ) -> Result<ForgejoUser, LoginError> {
        let client = self.client.clone();
        let store = self.store.clone();
        let clock = self.clock.clone();
        let audit = self.audit.clone();
        let locks = self.locks.clone();
        let code = code.to_owned();
        let code_verifier = code_verifier.clone();
        let task = self.in_flight.spawn(async move {
            let failed = |error: &UpstreamError| {
                audit.record(AuditEvent::UpstreamLoginFailed {
                    reason: error.to_string(),
                });
            };
            let tokens = client
                .exchange_code(&code, code_verifier.expose_secret(), clock.now())
                .await
                .inspect_err(failed)?;
            let user = client
                .current_user(&tokens.access_token)
                .await
                .inspect_err(failed)?;
            let lock = lock_for(&locks, user.id);
            let _guard = lock.lock().await;
            store.put(user.id, &user.login, &tokens, clock.now())?;
            audit.record(AuditEvent::UpstreamLogin {
                user_id: user.id,
                username: user.login.clone(),
            });
            Ok(user)
        });
        task.await.unwrap_or(Err(LoginError::Interrupted))
    }

    pub fn is_alive(&self, user_id: UserId) -> Result<bool, crate::store::StoreError> {
        self.store.is_alive(user_id)
    }

    fn lock_for(&self, user_id: UserId) -> Arc<tokio::sync::Mutex<()>> {
        lock_for(&self.locks, user_id)
    }

    fn load(&self, user_id: UserId) -> Result<store::StoredGrant, UpstreamCredentialsError> {
        match self.store.get(user_id) {
            Ok(Some(grant)) if grant.dead => Err(UpstreamCredentialsError::GrantDead),
            Ok(Some(grant)) => Ok(grant),
            Ok(None) => Err(UpstreamCredentialsError::NoGrant),
            // A sealed token that does not open (tampered, moved, or sealed under a key this
            // vault lacks): the vault has reported it (audit `row_unreadable`, counter); the row
            // is kept and the user must authorize again, which replaces it (issue #5).
            Err(GrantStoreError::Vault(_)) => Err(UpstreamCredentialsError::GrantDead),
            Err(error) => {
                tracing::error!(user_id, %error, "cannot read the upstream grant");
                Err(UpstreamCredentialsError::Unavailable)
            }
        }
    }

    fn fresh_enough(&self, grant: &store::StoredGrant) -> bool {
        grant.tokens.expires_at - self.clock.now() > self.refresh_ahead_secs
    }

    /// Refreshes under the user's lock, in a task of its own, and returns the new access token.
    ///
    /// Forgejo's refresh tokens are single-use: once Forgejo has answered a refresh, the set it
    /// returned is the only one that works, and it must reach the database whatever happens to
    /// the caller. A caller's future can be dropped at any await (a child's request abandoned, a
    /// client gone); done in that future, a refresh dropped after Forgejo rotated the token
    /// would lose the new set and leave the user's grant dead. The task owns the lock guard, so
    /// the next caller waits until the new set is stored; shutdown waits for it too.
    async fn refresh(
        &self,
        guard: tokio::sync::OwnedMutexGuard<()>,
        user_id: UserId,
        grant: store::StoredGrant,
    ) -> Result<SecretString, UpstreamCredentialsError> {
        let refresher = Refresher {
            client: self.client.clone(),
            store: self.store.clone(),
            clock: self.clock.clone(),
            audit: self.audit.clone(),
            access_ended: self.access_ended.clone(),
            on_grant_dead: self.on_grant_dead.clone(),
        };
        let task = self.in_flight.spawn(async move {
            let result = refresher.refresh_locked(user_id, grant).await;
            drop(guard);
            result
        });
        task.await.unwrap_or_else(|error| {
            tracing::error!(user_id, %error, "the upstream refresh task failed");
            Err(UpstreamCredentialsError::Unavailable)
        })
    }

    /// Forces a refresh now (single-flight), whatever the expiry. For tests and operators.
    pub async fn refresh_now(
        &self,
        user_id: UserId,
    ) -> Result<SecretString, UpstreamCredentialsError> {
        let guard = self.lock_for(user_id).lock_owned().await;
        let grant = self.load(user_id)?;
        self.refresh(guard, user_id, grant).await
    }

    /// Admin revoke: Forgejo has no revocation endpoint (forgejo-facts.md §0.2), so "burn" the
    /// chain: refresh once and discard the result, leaving no valid refresh token anywhere,
    /// then mark the grant dead. Access tokens already issued by Forgejo live until `exp`.
    pub async fn burn(&self, user_id: UserId) -> Result<(), UpstreamCredentialsError> {
        let lock = self.lock_for(user_id);
        let _guard = lock.lock().await;
        let grant = match self.load(user_id) {
            Ok(grant) => grant,
            Err(UpstreamCredentialsError::GrantDead | UpstreamCredentialsError::NoGrant) => {
                return Ok(());
            }
            Err(error) => return Err(error),
        };
        if let Some(refresh_token) = grant.tokens.refresh_token.as_ref() {
            match self.client.refresh(refresh_token, self.clock.now()).await {
                Ok(discarded) => drop(discarded),
                Err(UpstreamError::Rejected { .. }) => {}
                Err(_) => return Err(UpstreamCredentialsError::Unavailable),
            }
        }
        if let Err(error) = self.store.mark_dead(user_id, self.clock.now()) {
            tracing::error!(user_id, %error, "cannot mark the upstream grant dead");
            return Err(UpstreamCredentialsError::Unavailable);
        }
        self.audit.record(AuditEvent::UpstreamGrantDead { user_id });
        let _ = self.access_ended.send(AccessEnded::User { user_id });
        Ok(())
    }
}

/// What a refresh needs, owned, so that it can finish in a task of its own.
struct Refresher {
    client: Arc<ForgejoClient>,
    store: GrantStore,
    clock: SharedClock,
    audit: SharedAudit,
    access_ended: AccessEndedSender,
    on_grant_dead: Option<GrantDeadHook>,
}

impl Refresher {
    /// Refreshes with the lock held; persists the new set before returning its access token.
    async fn refresh_locked(
        &self,
        user_id: UserId,
        grant: store::StoredGrant,
    ) -> Result<SecretString, UpstreamCredentialsError> {
        let now = self.clock.now();
        let Some(refresh_token) = grant.tokens.refresh_token.as_ref() else {
            if grant.tokens.expires_at > now {
                return Ok(grant.tokens.access_token);
            }
            self.declare_dead(user_id, "no refresh token");
            return Err(UpstreamCredentialsError::GrantDead);
        };
        match self.client.refresh(refresh_token, now).await {
            Ok(mut tokens) => {
                if tokens.refresh_token.is_none() {
                    tokens.refresh_token = grant.tokens.refresh_token;
                }
                // Persisted before use: if we crashed after using it, the only valid refresh
                // token would be lost (forgejo-facts.md §1.5).
                if let Err(error) = self.store.put(user_id, &grant.username, &tokens, now) {
                    tracing::error!(user_id, %error, "cannot persist the refreshed upstream tokens");
                    return Err(UpstreamCredentialsError::Unavailable);
                }
                self.audit.record(AuditEvent::UpstreamRefreshed { user_id });
                Ok(tokens.access_token)
            }
            Err(UpstreamError::Rejected { code }) => {
                self.declare_dead(user_id, &code);
                Err(UpstreamCredentialsError::GrantDead)
            }
            Err(error) => {
                self.audit.record(AuditEvent::UpstreamRefreshFailed {
                    user_id,
                    reason: error.to_string(),
                });
                // Still valid? Use it; the next call retries the refresh.
                if grant.tokens.expires_at > now {
                    Ok(grant.tokens.access_token)
                } else {
                    Err(UpstreamCredentialsError::Unavailable)
                }
            }
        }
    }

    fn declare_dead(&self, user_id: UserId, reason: &str) {
        self.audit.record(AuditEvent::UpstreamRefreshFailed {
            user_id,
            reason: reason.to_owned(),
        });
        if let Err(error) = self.store.mark_dead(user_id, self.clock.now()) {
            tracing::error!(user_id, %error, "cannot mark the upstream grant dead");
        }
        self.audit.record(AuditEvent::UpstreamGrantDead { user_id });
        if let Some(hook) = &self.on_grant_dead {
            hook(user_id);
        }
        let _ = self.access_ended.send(AccessEnded::User { user_id });
    }
}

/// The per-user lock that makes refreshes (and logins) single-flight.
fn lock_for(locks: &UserLocks, user_id: UserId) -> Arc<tokio::sync::Mutex<()>> {
    let Ok(mut locks) = locks.lock() else {
        // A poisoned map only means another thread panicked while inserting; a fresh lock
        // loses single-flight for this call only.
        return Arc::new(tokio::sync::Mutex::new(()));
    };
    if locks.len() > 10_000 {
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
    }
    locks
        .entry(user_id)
        .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
        .clone()
}

type UserLocks = Arc<Mutex<HashMap<UserId, Arc<tokio::sync::Mutex<()>>>>>;

/// See [`Upstream::on_grant_dead`].
pub type GrantDeadHook = Arc<dyn Fn(UserId) + Send + Sync>;

fn verifier_aad(pending_id: &str) -> Aad<'_> {
    Aad {
        table: "oauth_pending",
        column: "upstream_verifier",
        row_id: pending_id,
        user_id: 0,
    }
}

#[async_trait]
impl UpstreamCredentials for Upstream {
    async fn access_token(
        &self,
        user_id: UserId,
    ) -> Result<SecretString, UpstreamCredentialsError> {
        let grant = self.load(user_id)?;
        if self.fresh_enough(&grant) {
            return Ok(grant.tokens.access_token);
        }
        let guard = self.lock_for(user_id).lock_owned().await;
        // Another caller may have refreshed while we waited: read again under the lock.
        let grant = self.load(user_id)?;
        if self.fresh_enough(&grant) {
            return Ok(grant.tokens.access_token);
        }
        self.refresh(guard, user_id, grant).await
    }
}
