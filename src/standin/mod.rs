//! A stand-in Forgejo: one in-process HTTP server reproducing Forgejo's OAuth2 provider and the
//! part of its REST API the broker and Forgejo-API MCP servers use (forgejo-facts.md §0, §1).
//!
//! No Forgejo can be installed on the project's machines (forgejo-facts.md §0.9), so the test
//! suite's "fake Forgejo" and the `demo` subcommand's embedded upstream are this module. It
//! reproduces Forgejo's behaviour where the broker depends on it: one grant per (user, app)
//! with a refresh counter that every token response bumps; refresh-token reuse answered with
//! HTTP 400 `unauthorized_client` "token was already used" and nothing revoked; PKCE mandatory
//! for public clients only; exact redirect URI matching; granular API scopes.
//!
//! - [`config`]: applications, users, `[oauth2]` settings, the simulated browser.
//! - `authorize`, `token`: the OAuth2 provider's logic; `oauth`: its HTTP routes.
//! - `api`: `/api/v1`; `data`: repositories, issues and their JSON.
//! - `state`: the shared memory, fault injection and counters.
//!
//! Tests drive and observe it through [`StandinHandle`] (which [`RunningStandin`] derefs to).

mod api;
mod authorize;
pub mod config;
mod data;
mod oauth;
mod state;
mod token;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{ConsentMode, DEFAULT_VERSION, StandinApp, StandinConfig, StandinUser};
pub use data::Issue;
pub use state::{ApiFault, AuthorizeRecord, StandinCounters, TokenFault, token_marker};
pub use token::{TokenError, TokenErrorCode, TokenResponse};

use crate::auth::UserId;
use crate::secret::RandomError;
use state::{Shared, SharedState, TokenKind};

#[derive(Debug, thiserror::Error)]
pub enum StandinError {
    #[error("cannot bind the stand-in Forgejo to {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the stand-in Forgejo's listening address: {0}")]
    LocalAddr(std::io::Error),
    #[error("no application with client id {0:?}")]
    UnknownApp(String),
    #[error("no user with id {0}")]
    UnknownUser(UserId),
    #[error(transparent)]
    Random(#[from] RandomError),
    #[error("the stand-in refused to issue tokens: {0}")]
    Token(#[from] TokenError),
}

/// Entry point: `StandinForgejo::start(config)`.
#[derive(Debug)]
pub struct StandinForgejo;

impl StandinForgejo {
    /// Binds `127.0.0.1:0` and serves.
    pub async fn start(config: StandinConfig) -> Result<RunningStandin, StandinError> {
        let address = SocketAddr::from(([127, 0, 0, 1], 0));
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| StandinError::Bind { address, source })?;
        Self::start_on(config, listener)
    }

    /// Serves on an already-bound listener. The base URL is `http://{local address}`.
    pub fn start_on(
        config: StandinConfig,
        listener: TcpListener,
    ) -> Result<RunningStandin, StandinError> {
        let local_addr = listener.local_addr().map_err(StandinError::LocalAddr)?;
        let base_url = format!("http://{local_addr}");
        let shared = Shared::new(config);
        shared.lock().base_url.clone_from(&base_url);
        let router = oauth::routes()
            .merge(api::routes())
            .with_state(shared.clone())
            .layer(
                // Spans carry method and path only: queries and bodies hold codes and tokens.
                tower_http::trace::TraceLayer::new_for_http().make_span_with(
                    |request: &axum::http::Request<_>| {
                        tracing::debug_span!(
                            "standin_forgejo",
                            method = %request.method(),
                            path = %request.uri().path(),
                        )
                    },
                ),
            );
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let shutdown = cancel.clone();
        tasks.spawn(async move {
            let result = axum::serve(listener, router)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(error) = result {
                tracing::error!(task = "standin-forgejo", %error, "stand-in Forgejo failed");
            }
        });
        tracing::debug!(%local_addr, "stand-in Forgejo serving");
        Ok(RunningStandin {
            handle: StandinHandle {
                base_url,
                local_addr,
                shared,
            },
            cancel,
            tasks,
        })
    }
}

/// A serving stand-in Forgejo. It dereferences to its [`StandinHandle`], through which tests
/// inspect and steer it. Dropping it does not stop the server; call
/// [`RunningStandin::shutdown`].
pub struct RunningStandin {
    handle: StandinHandle,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for RunningStandin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningStandin")
            .field("base_url", &self.handle.base_url)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for RunningStandin {
    type Target = StandinHandle;

    fn deref(&self) -> &StandinHandle {
        &self.handle
    }
}

impl RunningStandin {
    /// A cloneable handle that outlives borrows of `self` (e.g. to move into a task).
    pub fn handle(&self) -> StandinHandle {
        self.handle.clone()
    }

    /// Stops accepting, lets in-flight requests finish (hung ones are released first), and
    /// waits up to `deadline`. Returns whether everything stopped in time.
    pub async fn shutdown(self, deadline: Duration) -> bool {
        self.handle.release_hung_requests();
        self.cancel.cancel();
        self.tasks.close();
        tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_ok()
    }
}

/// Inspects and steers a running stand-in; cheap to clone.
#[derive(Clone)]
pub struct StandinHandle {
    base_url: String,
    local_addr: SocketAddr,
    shared: SharedState,
}

impl std::fmt::Debug for StandinHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandinHandle")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// The tokens of a [`StandinHandle::issue_tokens`] call.
pub type IssuedTokens = TokenResponse;

impl StandinHandle {
    /// `http://127.0.0.1:PORT`, without trailing slash (Forgejo's `ROOT_URL` trimmed).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `{base}/login/oauth/authorize`.
    pub fn authorize_url(&self) -> String {
        format!("{}/login/oauth/authorize", self.base_url)
    }

    /// `{base}/login/oauth/access_token`.
    pub fn token_url(&self) -> String {
        format!("{}/login/oauth/access_token", self.base_url)
    }

    pub fn counters(&self) -> StandinCounters {
        self.shared.lock().counters
    }

    /// Every access and refresh token issued so far, oldest first, for leak scans.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.lock().issued.clone()
    }

    /// The parameters of the most recent `/login/oauth/authorize` request.
    pub fn last_authorize_request(&self) -> Option<AuthorizeRecord> {
        self.shared.lock().last_authorize.clone()
    }

    /// Switches the user whose session the simulated browser carries; `None` logs out (the
    /// next authorize request is sent to `/user/login` and the flow stops there).
    pub fn set_logged_in_user(&self, user: Option<UserId>) {
        self.shared.lock().logged_in_user = user;
    }

    pub fn set_consent(&self, consent: ConsentMode) {
        self.shared.lock().consent = consent;
    }

    /// The next `times` token-endpoint calls misbehave as `fault` says.
    pub fn inject_token_faults(&self, fault: TokenFault, times: usize) {
        let mut inner = self.shared.lock();
        inner.token_faults.extend(std::iter::repeat_n(fault, times));
    }

    /// The next `times` `refresh_token` grant calls misbehave as `fault` says; code exchanges
    /// are not affected. Consulted before the faults of [`Self::inject_token_faults`].
    pub fn inject_refresh_faults(&self, fault: TokenFault, times: usize) {
        let mut inner = self.shared.lock();
        inner
            .refresh_faults
            .extend(std::iter::repeat_n(fault, times));
    }

    /// The next `times` `/api/v1/user` calls misbehave as `fault` says.
    pub fn inject_api_user_faults(&self, fault: ApiFault, times: usize) {
        let mut inner = self.shared.lock();
        inner
            .api_user_faults
            .extend(std::iter::repeat_n(fault, times));
    }

    /// How many token requests are hung by [`TokenFault::Hang`] right now.
    pub fn hung_requests(&self) -> usize {
        *self.shared.hung.borrow()
    }

    /// Waits until at least `count` requests are hung, or `deadline` passes (returns false).
    pub async fn wait_for_hung_requests(&self, count: usize, deadline: Duration) -> bool {
        let mut receiver = self.shared.hung.subscribe();
        tokio::time::timeout(deadline, receiver.wait_for(|hung| *hung >= count))
            .await
            .is_ok_and(|result| result.is_ok())
    }

    /// Lets every hung request continue; each is then answered normally.
    pub fn release_hung_requests(&self) {
        self.shared
            .release
            .send_modify(|generation| *generation += 1);
    }

    /// Deletes the user's grant for `client_id`, as the user clicking "Revoke" under Settings →
    /// Applications: its access and refresh tokens die at once (forgejo-facts.md §1.7).
    pub fn revoke_grant(&self, user: UserId, client_id: &str) -> bool {
        let mut inner = self.shared.lock();
        let grant = inner.grant_for(user, client_id).map(|grant| grant.id);
        grant.is_some_and(|id| inner.delete_grant(id))
    }

    /// The refresh counter of the user's grant for `client_id`.
    pub fn grant_counter(&self, user: UserId, client_id: &str) -> Option<i64> {
        let inner = self.shared.lock();
        inner.grant_for(user, client_id).map(|grant| grant.counter)
    }

    /// The scope string of the user's grant for `client_id`.
    pub fn grant_scope(&self, user: UserId, client_id: &str) -> Option<String> {
        let inner = self.shared.lock();
        inner
            .grant_for(user, client_id)
            .map(|grant| grant.scope.clone())
    }

    /// Makes every access token of `user` expired now (refresh tokens stay valid).
    pub fn expire_access_tokens(&self, user: UserId) {
        self.expire(user, TokenKind::Access);
    }

    /// Makes every refresh token of `user` expired now.
    pub fn expire_refresh_tokens(&self, user: UserId) {
        self.expire(user, TokenKind::Refresh);
    }

    fn expire(&self, user: UserId, kind: TokenKind) {
        let now = self.shared.now();
        let mut inner = self.shared.lock();
        let grants: Vec<i64> = inner
            .grants
            .values()
            .filter(|grant| grant.user_id == user)
            .map(|grant| grant.id)
            .collect();
        for record in inner.tokens.values_mut() {
            if record.kind == kind && grants.contains(&record.grant_id) {
                record.expires_at = record.expires_at.min(now);
            }
        }
    }

    /// Issues a token set for `user` and `client_id` without a browser, as a code exchange
    /// would (creating the grant with `scope` if there is none; bumping its counter).
    pub fn issue_tokens(
        &self,
        user: UserId,
        client_id: &str,
        scope: &str,
    ) -> Result<IssuedTokens, StandinError> {
        let now = self.shared.now();
        let mut inner = self.shared.lock();
        if inner.app(client_id).is_none() {
            return Err(StandinError::UnknownApp(client_id.to_string()));
        }
        if inner.user(user).is_none() {
            return Err(StandinError::UnknownUser(user));
        }
        let grant = match inner.grant_for(user, client_id) {
            Some(grant) => grant.id,
            None => inner.create_grant(user, client_id, scope),
        };
        Ok(token::issue_for_grant(&mut inner, grant, now)?)
    }

    /// The issues of `owner/repository`, oldest first (empty if there is no such repository).
    pub fn issues(&self, owner: &str, repository: &str) -> Vec<Issue> {
        let inner = self.shared.lock();
        let Some(owner) = inner.users.iter().find(|user| user.login == owner) else {
            return Vec::new();
        };
        let Some(repository) = inner
            .repositories
            .repositories
            .iter()
            .find(|found| found.owner_id == owner.id && found.name == repository)
        else {
            return Vec::new();
        };
        inner
            .repositories
            .issues
            .iter()
            .filter(|issue| issue.repository_id == repository.id)
            .cloned()
            .collect()
    }

    /// Creates a repository owned by `owner`.
    pub fn create_repository(
        &self,
        owner: UserId,
        name: &str,
        private: bool,
    ) -> Result<(), StandinError> {
        let now = self.shared.now();
        let mut inner = self.shared.lock();
        if inner.user(owner).is_none() {
            return Err(StandinError::UnknownUser(owner));
        }
        inner
            .repositories
            .create_repository(owner, name, "", private, now);
        Ok(())
    }
}
