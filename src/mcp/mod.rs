//! The MCP edge (issue #3; mcp-spec-checklist.md §10–15): Streamable HTTP on `/mcp`, legacy
//! HTTP+SSE on `/sse` + `/messages`, sessions keyed by (user, client), routing between HTTP
//! streams and one stdio child per session, hibernation and transparent respawn.

use serde::Deserialize;

use crate::config::{ConfigErrors, Validate};

/// `[mcp]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpConfig {
    /// Seconds without traffic after which a session's child is stopped (the session is kept).
    pub idle_timeout_secs: u64,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            idle_timeout_secs: 15 * 60,
        }
    }
}

impl Validate for McpConfig {
    fn validate(&self, errors: &mut ConfigErrors) {
        if self.idle_timeout_secs == 0 {
            errors.push("mcp.idle_timeout_secs", "must be positive");
        }
    }
}
