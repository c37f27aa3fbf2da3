//! The resource-server side: [`TokenVerifier`] checks a broker access token on every `/mcp`
//! request (mcp-spec-checklist §3), and [`mcp_token_refused`] builds the answer the MCP edge
//! sends when it refuses one: the 401 ([`mcp_unauthorized`]), or a 503 when the broker could
//! not check the token at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::store::OAuthStore;
use crate::auth::{AccessTokenVerifier, Principal, TokenRejection};
use crate::clock::{SharedClock, UnixSeconds};
use crate::secret::{constant_time_eq, hash_token};
use crate::store::ChangeStamp;
use crate::upstream::Upstream;

pub struct TokenVerifier {
    store: OAuthStore,
    upstream: Arc<Upstream>,
    clock: SharedClock,
    verdicts: Mutex<Verdicts>,
}

/// Tokens found valid, reused only while the database is unchanged since (the verdict is the
/// database's answer, and nothing that could change it has been written): every revocation,
/// rotation, dead Forgejo grant or admin command — in this process or another — is a write,
/// so it takes effect on the very next request, as without the cache. Only successes are kept.
struct Verdicts {
    stamp: Option<ChangeStamp>,
    by_token_hash: HashMap<String, Verdict>,
}

struct Verdict {
    principal: Principal,
    resource: String,
}

/// Bounds the memory of [`Verdicts`]: past it the map starts again.
const MAX_VERDICTS: usize = 4096;

impl TokenVerifier {
    pub fn new(store: OAuthStore, upstream: Arc<Upstream>, clock: SharedClock) -> Self {
        Self {
            store,
            upstream,
            clock,
            verdicts: Mutex::new(Verdicts {
                stamp: None,
                by_token_hash: HashMap::new(),
            }),
        }
    }

    /// The database's answer for a token: who it is for, and the resource it was granted for
    /// (expiry and audience are checked by the caller on every use).
    fn look_up_uncached(&self, token_hash: &str) -> Result<(Principal, String), TokenRejection> {
        // The store logged the failure (`oauth store failure`).
        let found = self
            .store
            .find_access(token_hash)
            .map_err(|_| TokenRejection::Unavailable)?
            .ok_or(TokenRejection::Unknown)?;
        if found.revoked || found.grant.revoked {
            return Err(TokenRejection::Revoked);
        }
        match self.upstream.is_alive(found.grant.user_id) {
            Ok(true) => {}
            Ok(false) => return Err(TokenRejection::UpstreamGrantDead),
            Err(error) => {
                tracing::error!(%error, "cannot read the upstream grant");
                return Err(TokenRejection::Unavailable);
            }
        }
        let principal = Principal {
            user_id: found.grant.user_id,
            username: found.grant.username.into(),
            client_id: found.grant.client_id.into(),
            grant_id: found.grant.grant_id.into(),
            expires_at: found.expires_at,
        };
        Ok((principal, found.grant.resource))
    }

    /// A live token's principal, checked for expiry and audience (item 18).
    fn admit(
        principal: &Principal,
        granted_resource: &str,
        resource: &str,
        now: UnixSeconds,
    ) -> Result<Principal, TokenRejection> {
        if principal.expires_at <= now {
            return Err(TokenRejection::Expired);
        }
        if !constant_time_eq(granted_resource.as_bytes(), resource.as_bytes()) {
            return Err(TokenRejection::WrongAudience);
        }
        Ok(principal.clone())
    }

    /// Keeps a verdict reached under `stamp`, unless the database changed meanwhile.
    fn remember_at(
        &self,
        stamp: ChangeStamp,
        token_hash: &str,
        principal: &Principal,
        resource: String,
    ) {
        let Ok(mut verdicts) = self.verdicts.lock() else {
            return;
        };
        if verdicts.stamp != Some(stamp) {
            return;
        }
        if verdicts.by_token_hash.len() >= MAX_VERDICTS {
            verdicts.by_token_hash.clear();
        }
        verdicts.by_token_hash.insert(
            token_hash.to_owned(),
            Verdict {
                principal: principal.clone(),
                resource,
            },
        );
    }
}

#[async_trait]
impl AccessTokenVerifier for TokenVerifier {
    /// Audience (item 18), expiry, the grant not revoked, the user's Forgejo grant alive
    /// (item 24).
    async fn verify(&self, token: &str, resource: &str) -> Result<Principal, TokenRejection> {
        if token.is_empty() || token.len() > 512 {
            return Err(TokenRejection::Malformed);
        }
        let token_hash = hash_token(token);
        let stamp = self.store.change_stamp().map_err(|error| {
            tracing::error!(%error, "cannot read the token store's change stamp");
            TokenRejection::Unavailable
        })?;
        let now = self.clock.now();
        let cached = {
            let mut verdicts = self
                .verdicts
                .lock()
                .map_err(|_| TokenRejection::Unavailable)?;
            if verdicts.stamp != Some(stamp) {
                verdicts.by_token_hash.clear();
                verdicts.stamp = Some(stamp);
            }
            verdicts
                .by_token_hash
                .get(&token_hash)
                .map(|verdict| Self::admit(&verdict.principal, &verdict.resource, resource, now))
        };
        if let Some(outcome) = cached {
            return outcome;
        }
        let (principal, granted_resource) = self.look_up_uncached(&token_hash)?;
        let outcome = Self::admit(&principal, &granted_resource, resource, now);
        self.remember_at(stamp, &token_hash, &principal, granted_resource);
        outcome
    }
}

/// The protected-resource metadata URL the 401 points at (the path-inserted form, item 10).
pub fn resource_metadata_url(issuer: &str) -> String {
    format!("{issuer}/.well-known/oauth-protected-resource/mcp")
}

/// How long a client is asked to wait when its token could not be checked.
const UNAVAILABLE_RETRY_AFTER_SECS: u32 = 5;

/// The answer to a refused bearer token on `/mcp`. A token the broker could not check (its
/// store failed) is not known to be bad: a 401 would make the client throw it away and run
/// OAuth again, so that is a 503 with `Retry-After` (RFC 9110 §15.6.4). Every other rejection
/// is the 401.
pub fn mcp_token_refused(issuer: &str, rejection: TokenRejection) -> Response {
    if rejection != TokenRejection::Unavailable {
        return mcp_unauthorized(issuer, rejection);
    }
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({
            "error": "temporarily_unavailable",
            "error_description": "the access token cannot be checked right now; retry later",
        })),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::RETRY_AFTER,
        HeaderValue::from(UNAVAILABLE_RETRY_AFTER_SECS),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The 401 for `/mcp` (items 15–16, RFC 6750 §3): `WWW-Authenticate: Bearer
/// resource_metadata="…"`, plus `error="invalid_token"` when a token was sent.
pub fn mcp_unauthorized(issuer: &str, rejection: TokenRejection) -> Response {
    let metadata = resource_metadata_url(issuer);
    let challenge = match rejection {
        TokenRejection::Missing => format!("Bearer resource_metadata=\"{metadata}\""),
        _ => format!(
            "Bearer resource_metadata=\"{metadata}\", error=\"invalid_token\", error_description=\"the access token is invalid or expired\""
        ),
    };
    let mut response = (
        StatusCode::UNAUTHORIZED,
        axum::Json(serde_json::json!({
            "error": if rejection == TokenRejection::Missing { "unauthorized" } else { "invalid_token" },
        })),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The bearer token of a request: `Authorization: Bearer <token>` only (never the query,
/// item 17). `Ok(None)` when absent.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Result<Option<&str>, TokenRejection> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| TokenRejection::Malformed)?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(TokenRejection::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_401_points_at_the_metadata_and_names_the_error_only_when_a_token_was_sent() {
        let missing = mcp_unauthorized("https://b.example", TokenRejection::Missing);
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        let challenge = missing.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap();
        assert_eq!(
            challenge,
            "Bearer resource_metadata=\"https://b.example/.well-known/oauth-protected-resource/mcp\""
        );
        let expired = mcp_unauthorized("https://b.example", TokenRejection::Expired);
        let challenge = expired.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap();
        assert!(challenge.contains("error=\"invalid_token\""));
    }

    #[test]
    fn a_token_that_could_not_be_checked_gets_503_and_every_other_refusal_401() {
        let unavailable = mcp_token_refused("https://b.example", TokenRejection::Unavailable);
        assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(unavailable.headers()[header::RETRY_AFTER], "5");
        assert!(!unavailable.headers().contains_key(header::WWW_AUTHENTICATE));
        for rejection in [
            TokenRejection::Missing,
            TokenRejection::Malformed,
            TokenRejection::Unknown,
            TokenRejection::Expired,
            TokenRejection::WrongAudience,
            TokenRejection::Revoked,
            TokenRejection::UpstreamGrantDead,
        ] {
            let response = mcp_token_refused("https://b.example", rejection);
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{rejection:?}");
            assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
        }
    }

    #[test]
    fn bearer_tokens_come_only_from_the_header() {
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(bearer_token(&headers), Ok(None));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer_token(&headers), Ok(Some("abc")));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&headers), Err(TokenRejection::Malformed));
    }
}
