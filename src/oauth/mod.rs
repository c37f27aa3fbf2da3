//! The authorization server MCP clients talk to (issue #2; ARCHITECTURE.md §2, §5;
//! mcp-spec-checklist.md §2–9): discovery, DCR, CIMD, authorize → consent → Forgejo →
//! callback, the token endpoint and RFC 7009 revocation. See docs/oauth.md.

pub mod authorize;
pub mod callback;
pub mod cimd;
pub mod client;
pub mod error;
pub mod maintenance;
pub mod metadata;
pub mod pages;
pub mod register;
pub mod revoke;
pub mod store;
pub mod token;
pub mod verifier;

use crate::ratelimit::{EndpointClass, RateKey, SharedRateLimiter};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, Method, header};
use axum::routing::{get, post};
use serde::Deserialize;
use tower_http::cors::{Any, CorsLayer};

use crate::audit::SharedAudit;
use crate::clock::{SharedClock, UnixSeconds};
use crate::config::{ConfigErrors, ServerConfig, Validate};
use crate::upstream::Upstream;
pub use error::{OAuthError, OAuthFailure};
use store::{ClientKind, ClientRecord, OAuthStore};
pub use verifier::{TokenVerifier, mcp_token_refused, mcp_unauthorized};

/// For hand-written `Debug` of wire types that carry secrets (codes, tokens, verifiers).
pub(crate) fn redacted(value: &Option<String>) -> &'static str {
    if value.is_some() {
        "[redacted]"
    } else {
        "None"
    }
}

/// The longest lifetime any `[oauth]` setting may give (10 years): far beyond any sensible
/// token or cache lifetime, and far from where `now + lifetime` leaves `i64`.
pub const MAX_LIFETIME_SECS: u64 = 10 * 365 * 24 * 3600;

/// `[oauth]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OAuthConfig {
    /// Broker access-token lifetime in seconds (default 1 h; checklist item 171).
    pub access_token_ttl_secs: u64,
    /// Broker refresh-token lifetime in seconds, renewed on every rotation (default 30 days).
    pub refresh_token_ttl_secs: u64,
    /// How long an already-rotated refresh token is still accepted once (lost responses;
    /// checklist item 55). 0 disables the grace.
    pub refresh_grace_secs: u64,
    /// Authorization code lifetime (default 60 s).
    pub code_ttl_secs: u64,
    /// How long the consent page stays valid (default 10 min).
    pub consent_ttl_secs: u64,
    /// How long the broker waits for Forgejo's callback after consent (default 10 min).
    pub upstream_login_ttl_secs: u64,
    /// Refresh the Forgejo token this long before it expires (default 5 min).
    pub upstream_refresh_ahead_secs: u64,
    /// Registered (DCR) clients with no grant this long after registration, and cached CIMD
    /// documents of clients with no live grant, are deleted (checklist item 65: Claude and
    /// VS Code register again and again). 0 keeps them forever.
    pub unused_client_ttl_secs: u64,
    /// Registered (DCR) clients kept with no grant and no authorization in progress, at most;
    /// registering one more forgets the oldest such. Registration is open to anyone, and per
    /// address limits do not stop someone holding many addresses from filling the disk.
    pub max_unused_clients: u64,
    /// Cap on authorizations in progress, in total and per client and client address.
    pub max_pending_authorizations: u64,
    pub max_pending_per_client: u64,
    /// Accept `https` URL client ids (CIMD).
    pub cimd_enabled: bool,
    /// Largest CIMD document read (default 16 KiB; at least 5 KiB, checklist item 77).
    pub cimd_max_bytes: usize,
    /// Time cap on a CIMD fetch, connect included.
    pub cimd_timeout_ms: u64,
    /// Longest a fetched CIMD document is cached (shorter if its `Cache-Control` says so).
    pub cimd_cache_ttl_secs: u64,
    /// Extra PEM CA bundle trusted for CIMD fetches (besides the built-in web roots).
    pub cimd_extra_ca_file: Option<PathBuf>,
    /// Lets CIMD documents be fetched from loopback addresses. Tests only: it opens an SSRF
    /// hole towards services on the broker host.
    pub cimd_allow_loopback_for_tests: bool,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self {
            access_token_ttl_secs: 3600,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            refresh_grace_secs: 30,
            code_ttl_secs: 60,
            consent_ttl_secs: 600,
            upstream_login_ttl_secs: 600,
            upstream_refresh_ahead_secs: 300,
            unused_client_ttl_secs: 30 * 24 * 3600,
            max_unused_clients: 10_000,
            max_pending_authorizations: 10_000,
            max_pending_per_client: 100,
            cimd_enabled: true,
            cimd_max_bytes: 16 * 1024,
            cimd_timeout_ms: 5000,
            cimd_cache_ttl_secs: 3600,
            cimd_extra_ca_file: None,
            cimd_allow_loopback_for_tests: false,
        }
    }
}

impl Validate for OAuthConfig {
    fn validate(&self, errors: &mut ConfigErrors) {
        let positive = [
            ("oauth.access_token_ttl_secs", self.access_token_ttl_secs),
            ("oauth.refresh_token_ttl_secs", self.refresh_token_ttl_secs),
            ("oauth.code_ttl_secs", self.code_ttl_secs),
            ("oauth.consent_ttl_secs", self.consent_ttl_secs),
            (
                "oauth.upstream_login_ttl_secs",
                self.upstream_login_ttl_secs,
            ),
            (
                "oauth.max_pending_authorizations",
                self.max_pending_authorizations,
            ),
            ("oauth.max_pending_per_client", self.max_pending_per_client),
            ("oauth.cimd_timeout_ms", self.cimd_timeout_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                errors.push(key, "must be positive");
            }
        }
        let lifetimes = [
            ("oauth.access_token_ttl_secs", self.access_token_ttl_secs),
            ("oauth.refresh_token_ttl_secs", self.refresh_token_ttl_secs),
            (
                "oauth.upstream_login_ttl_secs",
                self.upstream_login_ttl_secs,
            ),
            (
                "oauth.upstream_refresh_ahead_secs",
                self.upstream_refresh_ahead_secs,
            ),
            ("oauth.unused_client_ttl_secs", self.unused_client_ttl_secs),
            ("oauth.cimd_cache_ttl_secs", self.cimd_cache_ttl_secs),
        ];
        for (key, value) in lifetimes {
            if value > MAX_LIFETIME_SECS {
                errors.push(
                    key,
                    format!("must be at most {MAX_LIFETIME_SECS} (10 years)"),
                );
            }
        }
        if self.code_ttl_secs > 600 {
            errors.push(
                "oauth.code_ttl_secs",
                "must be at most 600 (OAuth 2.1 §4.1.2)",
            );
        }
        if self.consent_ttl_secs > 3600 {
            errors.push("oauth.consent_ttl_secs", "must be at most 3600");
        }
        if self.max_unused_clients == 0 {
            errors.push("oauth.max_unused_clients", "must be positive");
        }
        if self.refresh_grace_secs > 300 {
            errors.push("oauth.refresh_grace_secs", "must be at most 300");
        }
        if self.cimd_max_bytes < 5 * 1024 || self.cimd_max_bytes > 1024 * 1024 {
            errors.push("oauth.cimd_max_bytes", "must be between 5120 and 1048576");
        }
        if let Some(path) = &self.cimd_extra_ca_file
            && !path.is_file()
        {
            errors.push(
                "oauth.cimd_extra_ca_file",
                format!("{} is not a file", path.display()),
            );
        }
    }
}

/// Everything the OAuth handlers share.
pub struct OAuthState {
    pub config: OAuthConfig,
    /// The public origin, no trailing slash (RFC 8414 issuer).
    pub issuer: String,
    /// The canonical `/mcp` URL (RFC 8707 resource).
    pub resource: String,
    /// `__Host-` + `Secure` cookies when the issuer is https.
    pub secure_cookies: bool,
    pub store: OAuthStore,
    pub upstream: Arc<Upstream>,
    pub cimd: cimd::CimdFetcher,
    pub clock: SharedClock,
    pub audit: SharedAudit,
    /// Per-client limits (issue #7): CIMD fetches per client id URL, so no one can make the
    /// broker hammer a URL; token and revocation requests per confidential client, once its
    /// secret is verified ([`token::client_rate_refusal`]). `None` in unit tests.
    pub limiter: Option<SharedRateLimiter>,
}

impl OAuthState {
    pub fn now(&self) -> UnixSeconds {
        self.clock.now()
    }

    /// The client named by `client_id`: a registered DCR client, or a CIMD document (from the
    /// cache while fresh, fetched otherwise). At the token endpoint `allow_stale` accepts a
    /// cached CIMD client past its cache lifetime: the code is already bound to it.
    pub async fn resolve_client(
        &self,
        client_id: &str,
        allow_stale: bool,
    ) -> Result<ClientRecord, OAuthError> {
        const UNKNOWN: OAuthError = OAuthError::InvalidClient("unknown client");
        if !cimd::is_cimd_client_id(client_id) {
            if client_id.is_empty() || client_id.len() > 200 {
                return Err(UNKNOWN);
            }
            return match self.store.get_client(client_id)? {
                Some(record) if record.kind == ClientKind::Dcr => Ok(record),
                _ => Err(UNKNOWN),
            };
        }
        if !self.config.cimd_enabled {
            return Err(UNKNOWN);
        }
        let url = cimd::validate_client_id_url(client_id)?;
        let now = self.now();
        let cached = self
            .store
            .get_client(client_id)?
            .filter(|record| record.kind == ClientKind::Cimd);
        if let Some(record) = cached.as_ref()
            && (allow_stale || record.expires_at.is_some_and(|expires| expires > now))
        {
            return Ok(record.clone());
        }
        if let Some(limiter) = &self.limiter
            && limiter
                .check(EndpointClass::CimdFetch, &RateKey::client(client_id))
                .is_err()
        {
            // The budget is per document URL, and anyone can name a popular client: with a
            // copy in hand, its users keep working on it until the next fetch is allowed.
            return cached.ok_or(OAuthError::TemporarilyUnavailable(
                "too many fetches of this client's metadata document; retry later",
            ));
        }
        let document = self.cimd.fetch(&url).await?;
        let ttl = i64::try_from(self.config.cimd_cache_ttl_secs).unwrap_or(i64::MAX);
        // At least a minute, whatever the document says (`no-store` included): otherwise every
        // authorization, anyone's, would fetch it again and spend its fetch budget.
        let lifetime = document.max_age.map_or(ttl, |max_age| {
            max_age.clamp(cimd::MIN_CACHE_SECS.min(ttl), ttl)
        });
        let record = ClientRecord {
            client_id: client_id.to_owned(),
            kind: ClientKind::Cimd,
            secret_hash: None,
            metadata: document.metadata,
            expires_at: Some(now.saturating_add(lifetime)),
        };
        self.store.put_client(&record, now)?;
        Ok(record)
    }

    /// RFC 8707 `resource` check (item 44): the canonical `/mcp` URL, scheme and host compared
    /// case-insensitively (the url crate lowercases them), a trailing slash tolerated, and the
    /// bare origin with a trailing slash that Claude sends for origin-only connector URLs.
    pub fn check_resource(&self, resource: &str) -> Result<String, OAuthError> {
        const WRONG: OAuthError =
            OAuthError::InvalidTarget("resource must be this broker's MCP endpoint URL");
        let url = url::Url::parse(resource).map_err(|_| WRONG)?;
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(WRONG);
        }
        let origin = url.origin().ascii_serialization();
        let path = url.path();
        if origin == self.issuer && matches!(path, "/mcp" | "/mcp/" | "/") {
            Ok(self.resource.clone())
        } else {
            Err(WRONG)
        }
    }

    pub fn ttl(seconds: u64) -> i64 {
        i64::try_from(seconds).unwrap_or(i64::MAX)
    }

    /// When something made at `now` that lives `ttl_secs` ends. Saturates: validation bounds
    /// the lifetimes, but a wrapped expiry would be in the past (release) or a panic (debug).
    pub fn expires_at(now: UnixSeconds, ttl_secs: u64) -> UnixSeconds {
        now.saturating_add(Self::ttl(ttl_secs))
    }
}

/// Builds the shared state from configuration.
pub fn build_state(
    config: &OAuthConfig,
    server: &ServerConfig,
    store: OAuthStore,
    upstream: Arc<Upstream>,
    clock: SharedClock,
    audit: SharedAudit,
) -> Result<OAuthState, cimd::CimdError> {
    let cimd = cimd::CimdFetcher::new(
        cimd::CimdSettings {
            max_bytes: config.cimd_max_bytes,
            timeout: Duration::from_millis(config.cimd_timeout_ms),
            allow_loopback: config.cimd_allow_loopback_for_tests,
        },
        config.cimd_extra_ca_file.as_deref(),
    )?;
    Ok(OAuthState {
        config: config.clone(),
        issuer: server.issuer(),
        resource: server.mcp_resource(),
        secure_cookies: server.public_url.scheme() == "https",
        store,
        upstream,
        cimd,
        clock,
        audit,
        limiter: None,
    })
}

/// CORS for browser clients (MCP Inspector) on metadata and the machine-facing OAuth endpoints
/// (checklist items 13, 122). Bearer tokens, not cookies: no credentials mode needed.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("mcp-protocol-version"),
        ])
        .expose_headers([header::WWW_AUTHENTICATE])
        .max_age(Duration::from_secs(3600))
}

/// The authorization server's routes (ARCHITECTURE.md §5), each abuse-prone one limited per
/// client IP (issue #7; aliases share their endpoint's class).
pub fn router(state: Arc<OAuthState>, limiter: &SharedRateLimiter) -> Router {
    let limit = |class| crate::ratelimit::layer(limiter, class);
    let machine = Router::new()
        .route(
            "/.well-known/oauth-protected-resource",
            get(metadata::protected_resource),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(metadata::protected_resource),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(metadata::authorization_server),
        )
        .route(
            "/.well-known/openid-configuration",
            get(metadata::authorization_server),
        )
        .route(
            "/oauth/register",
            post(register::register).layer(limit(EndpointClass::Register)),
        )
        .route(
            "/register",
            post(register::register).layer(limit(EndpointClass::Register)),
        )
        .route(
            "/oauth/token",
            post(token::token).layer(limit(EndpointClass::Token)),
        )
        .route(
            "/token",
            post(token::token).layer(limit(EndpointClass::Token)),
        )
        .route(
            "/oauth/revoke",
            post(revoke::revoke).layer(limit(EndpointClass::Revoke)),
        )
        // OAuth requests are small; refuse big bodies before reading them.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(64 * 1024))
        .layer(cors());
    // Browser navigations: no CORS (nothing to read cross-origin), pages hardened instead.
    let browser = Router::new()
        .route(
            "/oauth/authorize",
            get(authorize::authorize).layer(limit(EndpointClass::Authorize)),
        )
        .route(
            "/authorize",
            get(authorize::authorize).layer(limit(EndpointClass::Authorize)),
        )
        .route(
            "/oauth/consent",
            post(authorize::consent).layer(limit(EndpointClass::Consent)),
        )
        .route("/oauth/callback", get(callback::callback))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(16 * 1024));
    machine.merge(browser).with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_saturate_instead_of_overflowing() {
        assert_eq!(OAuthState::expires_at(1_800_000_000, 60), 1_800_000_060);
        assert_eq!(OAuthState::expires_at(1_800_000_000, u64::MAX), i64::MAX);
        // The largest integer a TOML file can hold.
        assert_eq!(
            OAuthState::expires_at(1_800_000_000, 9_223_372_036_854_775_807),
            i64::MAX
        );
    }

    #[test]
    fn absurd_lifetimes_are_refused_naming_the_setting() {
        let config = OAuthConfig {
            access_token_ttl_secs: MAX_LIFETIME_SECS + 1,
            refresh_token_ttl_secs: u64::MAX,
            ..OAuthConfig::default()
        };
        let mut errors = ConfigErrors::default();
        config.validate(&mut errors);
        let text = errors.to_string();
        assert_eq!(errors.messages().len(), 2, "{text}");
        assert!(
            text.contains("oauth.access_token_ttl_secs: must be at most 315360000 (10 years)"),
            "{text}"
        );
        assert!(text.contains("oauth.refresh_token_ttl_secs"), "{text}");

        let mut errors = ConfigErrors::default();
        OAuthConfig {
            access_token_ttl_secs: MAX_LIFETIME_SECS,
            refresh_token_ttl_secs: MAX_LIFETIME_SECS,
            ..OAuthConfig::default()
        }
        .validate(&mut errors);
        assert!(errors.is_empty(), "{errors}");
    }
}
