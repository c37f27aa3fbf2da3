//! The stand-in's memory: applications, users, grants, codes, issued tokens, repositories, and
//! the knobs tests turn (fault injection, counters). One mutex guards it all; it is never held
//! across an `.await` (handlers copy out what they need, then release it).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::sync::watch;

use super::config::{ConsentMode, StandinApp, StandinConfig, StandinUser};
use super::data::Repositories;
use crate::auth::UserId;
use crate::clock::{SharedClock, UnixSeconds};
use crate::secret::{RandomError, random_id};

/// The JOSE header every stand-in token carries. Real Forgejo tokens are RS256 JWTs
/// (forgejo-facts.md §1.4); the `kid` makes stand-in tokens recognisable in leak scans.
const TOKEN_HEADER: &str = r#"{"alg":"RS256","kid":"forgejo-standin","typ":"JWT"}"#;

/// Random bytes in a token's "signature" part: the size of an RS256 signature with Forgejo's
/// auto-generated 4096-bit key, so tokens are as long as real ones (about 0.9 KB).
const SIGNATURE_BYTES: usize = 512;

/// The base64url text every stand-in access, refresh and id token starts with. A leak test
/// can grep any output for it.
pub fn token_marker() -> String {
    URL_SAFE_NO_PAD.encode(TOKEN_HEADER)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TokenKind {
    Access,
    Refresh,
}

/// What Forgejo would find inside one of its JWTs (`gnt`, `tt`, `cnt`, `exp`): the stand-in
/// keeps it in a table instead of signing it.
#[derive(Debug, Clone)]
pub(super) struct TokenRecord {
    pub grant_id: i64,
    pub kind: TokenKind,
    pub counter: i64,
    pub expires_at: UnixSeconds,
}

/// `OAuth2Grant`: one per (user, application), with the refresh counter (§0.1, §1.7).
#[derive(Debug, Clone)]
pub(super) struct Grant {
    pub id: i64,
    pub user_id: UserId,
    pub client_id: String,
    pub scope: String,
    pub counter: i64,
    pub nonce: String,
}

/// `OAuth2AuthorizationCode`.
#[derive(Debug, Clone)]
pub(super) struct AuthorizationCode {
    pub grant_id: i64,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub code_challenge_method: String,
    pub issued_at: UnixSeconds,
}

/// A consent page that was shown and not yet answered, keyed by the form's `_csrf` value.
#[derive(Debug, Clone)]
pub(super) struct PendingConsent {
    pub user_id: UserId,
    pub client_id: String,
    pub redirect_uri: String,
    pub state: String,
    pub code_challenge: String,
    pub code_challenge_method: String,
}

/// How the next token-endpoint call misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFault {
    /// HTTP 500 with Forgejo's plain-text body.
    ServerError,
    /// HTTP 400 `invalid_grant` "grant does not exist", as if the user had revoked the grant.
    InvalidGrant,
    /// The request waits until [`super::StandinHandle::release_hung_requests`], then is
    /// answered normally.
    Hang,
    /// The request is carried out (a refresh rotates the grant's tokens), then its answer waits
    /// until [`super::StandinHandle::release_hung_requests`]: the moment a caller that gives up
    /// loses the only valid refresh token.
    HangAnswer,
}

/// How the next `/api/v1/user` call misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFault {
    /// HTTP 500.
    ServerError,
    /// HTTP 401 as for an unknown token.
    Unauthorized,
}

/// How often each endpoint was called since start (every call, successful or not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StandinCounters {
    pub authorize: u64,
    pub token_requests: u64,
    pub authorization_code_grants: u64,
    pub refresh_grants: u64,
    /// Token requests answered with a 200.
    pub tokens_issued: u64,
    pub userinfo: u64,
    pub api_user: u64,
    pub api_version: u64,
    /// Every `/api/v1/**` call, `/api/v1/user` and `/api/v1/version` included.
    pub api_requests: u64,
}

/// The parameters of an authorize request as the browser sent them, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizeRecord {
    pub params: Vec<(String, String)>,
}

impl AuthorizeRecord {
    /// The first value of `name`, if present.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Settings copied out of [`StandinConfig`] that the protocol logic reads.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub access_token_lifetime: i64,
    pub refresh_token_lifetime: i64,
    pub invalidate_refresh_tokens: bool,
    pub authorization_code_lifetime: Option<i64>,
    pub lose_pkce_on_consent_page: bool,
    pub version: String,
}

pub(super) struct Inner {
    pub settings: Settings,
    pub apps: Vec<StandinApp>,
    pub users: Vec<StandinUser>,
    pub logged_in_user: Option<UserId>,
    pub consent: ConsentMode,
    pub grants: HashMap<i64, Grant>,
    next_grant_id: i64,
    pub codes: HashMap<String, AuthorizationCode>,
    pub tokens: HashMap<String, TokenRecord>,
    /// Every access and refresh token ever issued, in order (for leak scans).
    pub issued: Vec<String>,
    pub pending_consents: HashMap<String, PendingConsent>,
    pub token_faults: VecDeque<TokenFault>,
    /// Faults for `refresh_token` grants only; consulted before `token_faults`.
    pub refresh_faults: VecDeque<TokenFault>,
    pub api_user_faults: VecDeque<ApiFault>,
    pub counters: StandinCounters,
    pub last_authorize: Option<AuthorizeRecord>,
    pub repositories: Repositories,
    /// The public base URL (`ROOT_URL` without trailing slash), known once bound.
    pub base_url: String,
}

impl Inner {
    pub fn app(&self, client_id: &str) -> Option<&StandinApp> {
        self.apps.iter().find(|app| app.client_id == client_id)
    }

    pub fn user(&self, id: UserId) -> Option<&StandinUser> {
        self.users.iter().find(|user| user.id == id)
    }

    pub fn grant_for(&self, user_id: UserId, client_id: &str) -> Option<&Grant> {
        self.grants
            .values()
            .find(|grant| grant.user_id == user_id && grant.client_id == client_id)
    }

    pub fn create_grant(&mut self, user_id: UserId, client_id: &str, scope: &str) -> i64 {
        self.next_grant_id += 1;
        let id = self.next_grant_id;
        self.grants.insert(
            id,
            Grant {
                id,
                user_id,
                client_id: client_id.to_string(),
                scope: scope.to_string(),
                counter: 1,
                nonce: String::new(),
            },
        );
        id
    }

    /// Deletes a grant; its codes go with it and its tokens stop working, as when the user
    /// clicks "Revoke" under Settings → Applications (forgejo-facts.md §1.7).
    pub fn delete_grant(&mut self, grant_id: i64) -> bool {
        self.codes.retain(|_, code| code.grant_id != grant_id);
        self.grants.remove(&grant_id).is_some()
    }

    /// Mints an access or refresh token for `grant_id` and records it.
    pub fn mint_token(
        &mut self,
        grant_id: i64,
        kind: TokenKind,
        counter: i64,
        now: UnixSeconds,
    ) -> Result<String, RandomError> {
        let expires_at = now.saturating_add(match kind {
            TokenKind::Access => self.settings.access_token_lifetime,
            TokenKind::Refresh => self.settings.refresh_token_lifetime,
        });
        // The claims Forgejo puts in its tokens (§1.4): grant id, type, counter, exp, iat.
        let claims = match kind {
            TokenKind::Access => {
                serde_json::json!({"gnt": grant_id, "tt": 0, "exp": expires_at, "iat": now})
            }
            TokenKind::Refresh => serde_json::json!({
                "gnt": grant_id, "tt": 1, "cnt": counter, "exp": expires_at, "iat": now
            }),
        };
        let token = jwt_shaped(&claims)?;
        self.tokens.insert(
            token.clone(),
            TokenRecord {
                grant_id,
                kind,
                counter,
                expires_at,
            },
        );
        self.issued.push(token.clone());
        Ok(token)
    }

    /// The user and grant scope behind a live access token (`CheckOAuthAccessToken`: the grant
    /// must still exist, the token must be an access token, `exp` must hold).
    pub fn authenticate(&self, token: &str, now: UnixSeconds) -> Option<(UserId, String)> {
        let record = self.tokens.get(token)?;
        if record.kind != TokenKind::Access || record.expires_at <= now {
            return None;
        }
        let grant = self.grants.get(&record.grant_id)?;
        Some((grant.user_id, grant.scope.clone()))
    }
}

/// A JWT-shaped string: the fixed header, the claims, and random bytes as the signature, so the
/// token is unguessable without any key material.
pub(super) fn jwt_shaped(claims: &serde_json::Value) -> Result<String, RandomError> {
    let signature = random_id(SIGNATURE_BYTES)?;
    Ok(format!(
        "{}.{}.{}",
        token_marker(),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        signature
    ))
}

/// The shared state plus what lives outside the mutex: the clock and the channel that releases
/// hung requests.
pub(super) struct Shared {
    inner: Mutex<Inner>,
    pub clock: SharedClock,
    /// Bumped by `release_hung_requests`; a hung request waits for the next bump.
    pub release: watch::Sender<u64>,
    /// How many requests are hung right now, observable without polling.
    pub hung: watch::Sender<usize>,
}

pub(super) type SharedState = Arc<Shared>;

impl Shared {
    pub fn new(config: StandinConfig) -> SharedState {
        let StandinConfig {
            apps,
            users,
            access_token_lifetime,
            refresh_token_lifetime,
            invalidate_refresh_tokens,
            authorization_code_lifetime,
            lose_pkce_on_consent_page,
            logged_in_user,
            consent,
            version,
            seed_repositories,
            clock,
        } = config;
        let now = clock.now();
        let repositories = if seed_repositories {
            Repositories::seeded(&users, now)
        } else {
            Repositories::default()
        };
        let inner = Inner {
            settings: Settings {
                access_token_lifetime,
                refresh_token_lifetime,
                invalidate_refresh_tokens,
                authorization_code_lifetime,
                lose_pkce_on_consent_page,
                version,
            },
            apps,
            users,
            logged_in_user,
            consent,
            grants: HashMap::new(),
            next_grant_id: 0,
            codes: HashMap::new(),
            tokens: HashMap::new(),
            issued: Vec::new(),
            pending_consents: HashMap::new(),
            token_faults: VecDeque::new(),
            refresh_faults: VecDeque::new(),
            api_user_faults: VecDeque::new(),
            counters: StandinCounters::default(),
            last_authorize: None,
            repositories,
            base_url: String::new(),
        };
        Arc::new(Self {
            inner: Mutex::new(inner),
            clock,
            release: watch::channel(0).0,
            hung: watch::channel(0).0,
        })
    }

    /// Locks the state. A panic while holding the lock cannot leave it half-updated in a way
    /// that matters for a stand-in, so a poisoned lock is recovered rather than propagated.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn now(&self) -> UnixSeconds {
        self.clock.now()
    }

    /// Waits until the next `release_hung_requests`, counting itself as hung meanwhile (also
    /// when the client gives up and the request is dropped mid-wait).
    pub async fn hang(&self) {
        struct Hung<'a>(&'a watch::Sender<usize>);
        impl Drop for Hung<'_> {
            fn drop(&mut self) {
                self.0.send_modify(|count| *count = count.saturating_sub(1));
            }
        }
        let mut receiver = self.release.subscribe();
        receiver.borrow_and_update();
        self.hung.send_modify(|count| *count += 1);
        let _hung = Hung(&self.hung);
        // An error means the sender is gone, i.e. the stand-in is shutting down: stop waiting.
        let _ = receiver.changed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn state() -> SharedState {
        let clock = ManualClock::new(1_000);
        Shared::new(
            StandinConfig::with_demo_user()
                .app(StandinApp::confidential("c", "s", ["http://x/cb"]))
                .clock(clock),
        )
    }

    #[test]
    fn tokens_carry_the_marker_and_differ() {
        let shared = state();
        let mut inner = shared.lock();
        let grant = inner.create_grant(1, "c", "read:user");
        let a = inner
            .mint_token(grant, TokenKind::Access, 0, 1_000)
            .unwrap();
        let b = inner
            .mint_token(grant, TokenKind::Access, 0, 1_000)
            .unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(&token_marker()));
        assert_eq!(a.split('.').count(), 3);
        assert!(a.len() > 800, "as long as a real RS256 token: {}", a.len());
        assert_eq!(inner.issued, vec![a, b]);
    }

    #[test]
    fn access_tokens_die_at_exp_and_with_their_grant() {
        let shared = state();
        let mut inner = shared.lock();
        let grant = inner.create_grant(1, "c", "read:user");
        let access = inner
            .mint_token(grant, TokenKind::Access, 0, 1_000)
            .unwrap();
        let refresh = inner
            .mint_token(grant, TokenKind::Refresh, 1, 1_000)
            .unwrap();
        assert_eq!(
            inner.authenticate(&access, 1_000).map(|(id, _)| id),
            Some(1)
        );
        assert!(inner.authenticate(&access, 1_000 + 3_600).is_none());
        assert!(
            inner.authenticate(&refresh, 1_000).is_none(),
            "not an access token"
        );
        assert!(inner.delete_grant(grant));
        assert!(inner.authenticate(&access, 1_000).is_none());
    }
}
