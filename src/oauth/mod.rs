//! The authorization server MCP clients talk to (issue #2; ARCHITECTURE.md §2, §5;
//! mcp-spec-checklist.md §2–9): discovery, DCR, CIMD, authorize → consent → Forgejo →
//! callback, the token endpoint and RFC 7009 revocation.

use serde::Deserialize;

use crate::config::{ConfigErrors, Validate};

/// `[oauth]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OAuthConfig {
    /// Broker access-token lifetime in seconds.
    pub access_token_ttl_secs: u64,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self {
            access_token_ttl_secs: 3600,
        }
    }
}

impl Validate for OAuthConfig {
    fn validate(&self, errors: &mut ConfigErrors) {
        if self.access_token_ttl_secs == 0 {
            errors.push("oauth.access_token_ttl_secs", "must be positive");
        }
    }
}
