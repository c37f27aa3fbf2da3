//! What a stand-in Forgejo knows at start: its OAuth2 applications, its users, the `[oauth2]`
//! settings that change token behaviour (forgejo-facts.md §1.4), and how the simulated browser
//! behaves (who is logged in, whether the consent page is approved).

use std::sync::Arc;

use crate::auth::UserId;
use crate::clock::{SharedClock, SystemClock};
use crate::secret::SecretString;

/// Forgejo's `ACCESS_TOKEN_EXPIRATION_TIME` default, in seconds.
pub const DEFAULT_ACCESS_TOKEN_LIFETIME: i64 = 3600;
/// Forgejo's `REFRESH_TOKEN_EXPIRATION_TIME` default: 730 hours.
pub const DEFAULT_REFRESH_TOKEN_LIFETIME: i64 = 730 * 3600;
/// What `/api/v1/version` answers by default: a Forgejo version with the Gitea compatibility
/// suffix Forgejo adds (forgejo-facts.md §1.10).
pub const DEFAULT_VERSION: &str = "11.0.1+gitea-1.22.0";

/// One registered OAuth2 application (forgejo-facts.md §1.9).
#[derive(Clone)]
pub struct StandinApp {
    pub name: String,
    pub client_id: String,
    /// `None` makes the application a public client (no secret, PKCE mandatory).
    pub client_secret: Option<SecretString>,
    pub redirect_uris: Vec<String>,
}

impl std::fmt::Debug for StandinApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandinApp")
            .field("name", &self.name)
            .field("client_id", &self.client_id)
            .field("confidential", &self.is_confidential())
            .field("redirect_uris", &self.redirect_uris)
            .finish()
    }
}

impl StandinApp {
    /// A confidential client, the kind the broker registers ("Confidential client" checked).
    pub fn confidential(
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        redirect_uris: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        let client_id = client_id.into();
        Self {
            name: client_id.clone(),
            client_id,
            client_secret: Some(SecretString::from(client_secret.into())),
            redirect_uris: redirect_uris.into_iter().map(Into::into).collect(),
        }
    }

    /// A public client: no secret, PKCE required (forgejo-facts.md §1.3).
    pub fn public(
        client_id: impl Into<String>,
        redirect_uris: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        let client_id = client_id.into();
        Self {
            name: client_id.clone(),
            client_id,
            client_secret: None,
            redirect_uris: redirect_uris.into_iter().map(Into::into).collect(),
        }
    }

    pub fn is_confidential(&self) -> bool {
        self.client_secret.is_some()
    }
}

/// A Forgejo account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandinUser {
    pub id: UserId,
    pub login: String,
    pub full_name: String,
    pub email: String,
    pub is_admin: bool,
}

impl StandinUser {
    pub fn new(id: UserId, login: impl Into<String>, full_name: impl Into<String>) -> Self {
        let login = login.into();
        Self {
            id,
            email: format!("{login}@forgejo.invalid"),
            login,
            full_name: full_name.into(),
            is_admin: false,
        }
    }
}

/// What the simulated user does when Forgejo would show its consent page (first authorization
/// of an application, and every authorization of a public client; forgejo-facts.md §1.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentMode {
    /// Clicks "Authorize" without a page being shown: the flow continues with a redirect.
    AutoApprove,
    /// Clicks "Cancel": the client receives `access_denied`.
    Deny,
    /// Forgejo's page is served (an HTML form posting to `/login/oauth/grant`); whoever drives
    /// the browser submits it.
    ShowPage,
}

/// Configuration of one stand-in Forgejo.
#[derive(Clone)]
pub struct StandinConfig {
    pub apps: Vec<StandinApp>,
    pub users: Vec<StandinUser>,
    /// `ACCESS_TOKEN_EXPIRATION_TIME`, seconds.
    pub access_token_lifetime: i64,
    /// `REFRESH_TOKEN_EXPIRATION_TIME`, seconds (Forgejo configures hours).
    pub refresh_token_lifetime: i64,
    /// `INVALIDATE_REFRESH_TOKENS`: `true` is Forgejo's default since v9 (forgejo-facts.md §0.1).
    pub invalidate_refresh_tokens: bool,
    /// Authorization codes never expire in Forgejo (§1.2: `ValidUntil` is never checked).
    /// `Some(seconds)` makes them expire, for tests that want the stricter behaviour.
    pub authorization_code_lifetime: Option<i64>,
    /// Reproduces the PKCE bug of Forgejo ≤ v11 (§1.3): when the consent page is passed, the
    /// code is issued without the challenge, so the verifier is never checked.
    pub lose_pkce_on_consent_page: bool,
    /// The user whose Forgejo session cookie the browser carries; `None` means nobody is
    /// logged in, so `/login/oauth/authorize` sends the browser to `/user/login`.
    pub logged_in_user: Option<UserId>,
    pub consent: ConsentMode,
    /// What `/api/v1/version` reports.
    pub version: String,
    /// Each user gets a couple of repositories (one public, one private) with an issue.
    pub seed_repositories: bool,
    pub clock: SharedClock,
}

impl std::fmt::Debug for StandinConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandinConfig")
            .field("apps", &self.apps)
            .field("users", &self.users)
            .field("access_token_lifetime", &self.access_token_lifetime)
            .field("refresh_token_lifetime", &self.refresh_token_lifetime)
            .field("invalidate_refresh_tokens", &self.invalidate_refresh_tokens)
            .field("logged_in_user", &self.logged_in_user)
            .field("consent", &self.consent)
            .finish_non_exhaustive()
    }
}

impl Default for StandinConfig {
    fn default() -> Self {
        Self {
            apps: Vec::new(),
            users: Vec::new(),
            access_token_lifetime: DEFAULT_ACCESS_TOKEN_LIFETIME,
            refresh_token_lifetime: DEFAULT_REFRESH_TOKEN_LIFETIME,
            invalidate_refresh_tokens: true,
            authorization_code_lifetime: None,
            lose_pkce_on_consent_page: false,
            logged_in_user: None,
            consent: ConsentMode::AutoApprove,
            version: DEFAULT_VERSION.to_string(),
            seed_repositories: true,
            clock: Arc::new(SystemClock),
        }
    }
}

impl StandinConfig {
    /// One user (`alice`, id 1, logged in), consent auto-approved, no applications yet.
    pub fn with_demo_user() -> Self {
        let alice = StandinUser::new(1, "alice", "Alice Liddell");
        Self {
            logged_in_user: Some(alice.id),
            users: vec![alice],
            ..Self::default()
        }
    }

    pub fn app(mut self, app: StandinApp) -> Self {
        self.apps.push(app);
        self
    }

    pub fn user(mut self, user: StandinUser) -> Self {
        self.users.push(user);
        self
    }

    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }
}
