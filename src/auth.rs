//! The seam between the authorization server ([`crate::oauth`]), the upstream token keeper
//! ([`crate::upstream`]) and the MCP edge ([`crate::mcp`]).
//!
//! The MCP edge only knows these traits: it asks an [`AccessTokenVerifier`] who is calling,
//! and an [`UpstreamCredentials`] for the user's current Forgejo access token when a child (or
//! the egress proxy) needs one.

use std::sync::Arc;

use async_trait::async_trait;

use crate::clock::UnixSeconds;
use crate::secret::SecretString;

/// Forgejo's numeric user id: the key of a user everywhere in the broker
/// (forgejo-facts.md §1.10: usernames can change, ids don't).
pub type UserId = i64;

/// Who is calling `/mcp`: the result of a verified broker access token.
#[derive(Debug, Clone, PartialEq, Eq)]
/// The strings are shared (`Arc<str>`): a principal is cloned out of the verdict cache on every
/// request, and a clone should not copy them.
pub struct Principal {
    pub user_id: UserId,
    /// Forgejo login name at the time the grant was made; for display and the audit log.
    pub username: Arc<str>,
    pub client_id: Arc<str>,
    /// The token family (one per authorization), so a revocation can find live sessions.
    pub grant_id: Arc<str>,
    /// When the access token presented expires.
    pub expires_at: UnixSeconds,
}

/// Why a bearer token was not accepted. All variants but [`TokenRejection::Unavailable`] map to
/// 401 `invalid_token`; they exist for metrics and the audit log, never for the client
/// (RFC 6750 §3.1). `Unavailable` is a 503: the token was not checked, so it is not known to be
/// bad ([`crate::oauth::mcp_token_refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("no bearer token")]
    Missing,
    #[error("malformed authorization header")]
    Malformed,
    #[error("unknown token")]
    Unknown,
    #[error("token expired")]
    Expired,
    #[error("token issued for another resource")]
    WrongAudience,
    #[error("grant revoked")]
    Revoked,
    #[error("upstream grant dead; the user must authorize again")]
    UpstreamGrantDead,
    /// The broker could not check the token (its store failed).
    #[error("token store unavailable")]
    Unavailable,
}

/// Broker access that has just ended, published by the OAuth half so the MCP edge can end the
/// matching sessions at once (the verifier would refuse their next request anyway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessEnded {
    /// A token family was revoked: RFC 7009 revocation of a refresh token, a replayed refresh
    /// token or code, or an operator.
    Grant { grant_id: String, user_id: UserId },
    /// The user's Forgejo grant is dead (Forgejo refused a refresh, or it was burned): every
    /// session of the user.
    User { user_id: UserId },
}

/// Where [`AccessEnded`] events go; subscribers call `subscribe()`. Sending never blocks and
/// never fails the sender (no subscriber is fine).
pub type AccessEndedSender = tokio::sync::broadcast::Sender<AccessEnded>;

/// A sender with room for bursts (an admin revoking a user with many grants).
pub fn access_ended_channel() -> AccessEndedSender {
    tokio::sync::broadcast::channel(1024).0
}

#[async_trait]
pub trait AccessTokenVerifier: Send + Sync + 'static {
    /// Checks a bearer access token presented to `resource` (the canonical `/mcp` URL).
    async fn verify(&self, token: &str, resource: &str) -> Result<Principal, TokenRejection>;
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamCredentialsError {
    /// Forgejo said `invalid_grant` (or the user was revoked): they must authorize again.
    #[error("the user's Forgejo grant is dead")]
    GrantDead,
    #[error("no Forgejo token stored for this user")]
    NoGrant,
    #[error("Forgejo could not be reached or answered unexpectedly")]
    Unavailable,
}

#[async_trait]
pub trait UpstreamCredentials: Send + Sync + 'static {
    /// The user's current Forgejo access token, refreshed first if it is close to expiry
    /// (single-flight per user).
    async fn access_token(&self, user_id: UserId)
    -> Result<SecretString, UpstreamCredentialsError>;
}
