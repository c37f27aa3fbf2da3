//! The MCP edge (issue #3; mcp-spec-checklist.md §10–15): Streamable HTTP on `/mcp`, legacy
//! HTTP+SSE on `/sse` + `/messages`, sessions keyed by (user, client), routing between HTTP
//! streams and one stdio child per session, hibernation and transparent respawn.
//!
//! - [`jsonrpc`]: envelopes with raw bodies (sandbox-notes.md recommendation 9).
//! - [`streams`]: the per-session stream table and the exactly-one-stream rule.
//! - [`session`]: the actor that owns a child's stdio and remaps ids.
//! - [`context`]: what every session shares (launcher, credentials, child slots).
//! - [`registry`]: sessions by (user, client) with an id index; hibernation records.
//! - [`http`]: the handlers. See `docs/mcp.md` for the operator's view.

pub mod context;
pub mod http;
pub mod jsonrpc;
pub mod lines;
pub mod registry;
pub mod session;
pub mod store;
pub mod streams;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigErrors, Validate};
use crate::supervisor::TokenDelivery;

pub use http::{McpDeps, McpHandle, McpStartError, router};

/// Protocol revisions served with sessions (checklist §1). 2026-07-28 is answered only with the
/// fallback of item 133.
pub const SUPPORTED_VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// `[mcp]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpConfig {
    /// Seconds without a client request after which a session's child is stopped (the session
    /// is kept and resumes transparently).
    pub idle_timeout_secs: u64,
    /// A session lives this long after its last use, then answers 404 (default 7 days).
    pub session_ttl_secs: u64,
    /// Hard limit for one request to the child (item 143); the child gets
    /// `notifications/cancelled` when it passes.
    pub request_timeout_ms: u64,
    /// How long a (re)spawned child may take to answer `initialize`.
    pub initialize_timeout_ms: u64,
    /// How long a write to the child's stdin may block before the child is declared hung.
    pub write_timeout_ms: u64,
    /// Grace between closing stdin, SIGTERM and SIGKILL when stopping a child.
    pub stop_grace_ms: u64,
    /// Interval of SSE keep-alive comments (item 105).
    pub keepalive_secs: u64,
    /// How often sessions check timeouts, idleness and expiry.
    pub housekeeping_interval_ms: u64,
    pub max_sessions_per_user: usize,
    /// Requests in flight at once on one session (429 above it).
    pub max_in_flight_per_session: usize,
    /// Children running at once, all users together; at the limit the child idle the longest
    /// hibernates to make room.
    pub max_children: usize,
    /// Largest POST body accepted (413 above it).
    pub max_body_bytes: usize,
    /// Largest line a child may write; a longer one ends that child (its requests get errors).
    pub max_line_bytes: usize,
    /// Events kept per SSE stream for `Last-Event-ID` resumption.
    pub replay_buffer_events: usize,
    /// Messages kept for a session with no open stream.
    pub pending_queue_messages: usize,
    /// Bytes a session keeps, across its streams' replay buffers and its queue; past it the
    /// oldest replayable events go first, then the oldest queued messages.
    pub retained_bytes_per_session: usize,
    /// Lines of child stderr logged per second per child; the rest are counted and dropped.
    pub stderr_lines_per_second: u32,
    /// Checklist item 165: a non-initialize POST without `Mcp-Session-Id` from a caller (same
    /// user, client and authorization) with exactly one live session goes to that session
    /// instead of a 400 (clients that lose the header). Never for modern probes (item 133)
    /// and never when the caller has several sessions (it would be a guess).
    pub route_sessionless_to_sole_session: bool,
    pub child: ChildProfileConfig,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            idle_timeout_secs: 15 * 60,
            session_ttl_secs: 7 * 24 * 3600,
            request_timeout_ms: 5 * 60 * 1000,
            initialize_timeout_ms: 30_000,
            write_timeout_ms: 10_000,
            stop_grace_ms: 2_000,
            keepalive_secs: 15,
            housekeeping_interval_ms: 1_000,
            max_sessions_per_user: 16,
            max_in_flight_per_session: 64,
            max_children: 64,
            max_body_bytes: 4 * 1024 * 1024,
            max_line_bytes: 8 * 1024 * 1024,
            replay_buffer_events: 256,
            pending_queue_messages: 256,
            retained_bytes_per_session: 32 * 1024 * 1024,
            stderr_lines_per_second: 20,
            route_sessionless_to_sole_session: true,
            child: ChildProfileConfig::default(),
        }
    }
}

impl McpConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn initialize_timeout(&self) -> Duration {
        Duration::from_millis(self.initialize_timeout_ms)
    }
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }
    pub fn stop_grace(&self) -> Duration {
        Duration::from_millis(self.stop_grace_ms)
    }
    pub fn housekeeping_interval(&self) -> Duration {
        Duration::from_millis(self.housekeeping_interval_ms.max(1))
    }
    pub fn keepalive(&self) -> Duration {
        Duration::from_secs(self.keepalive_secs.max(1))
    }
    pub fn idle_timeout_secs_i64(&self) -> i64 {
        i64::try_from(self.idle_timeout_secs).unwrap_or(i64::MAX)
    }
    pub fn session_ttl_secs_i64(&self) -> i64 {
        i64::try_from(self.session_ttl_secs).unwrap_or(i64::MAX)
    }
}

impl Validate for McpConfig {
    fn validate(&self, errors: &mut ConfigErrors) {
        let positive = [
            ("mcp.idle_timeout_secs", self.idle_timeout_secs),
            ("mcp.session_ttl_secs", self.session_ttl_secs),
            ("mcp.request_timeout_ms", self.request_timeout_ms),
            ("mcp.initialize_timeout_ms", self.initialize_timeout_ms),
            ("mcp.write_timeout_ms", self.write_timeout_ms),
            ("mcp.keepalive_secs", self.keepalive_secs),
            (
                "mcp.housekeeping_interval_ms",
                self.housekeeping_interval_ms,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                errors.push(key, "must be positive");
            }
        }
        let sizes = [
            ("mcp.max_sessions_per_user", self.max_sessions_per_user),
            (
                "mcp.max_in_flight_per_session",
                self.max_in_flight_per_session,
            ),
            ("mcp.max_children", self.max_children),
            ("mcp.max_body_bytes", self.max_body_bytes),
            ("mcp.max_line_bytes", self.max_line_bytes),
            ("mcp.replay_buffer_events", self.replay_buffer_events),
            ("mcp.pending_queue_messages", self.pending_queue_messages),
            (
                "mcp.retained_bytes_per_session",
                self.retained_bytes_per_session,
            ),
        ];
        for (key, value) in sizes {
            if value == 0 {
                errors.push(key, "must be positive");
            }
        }
        self.child.validate(errors);
    }
}

/// `[mcp.child]`: what runs per session. Only this configured command is ever started, never
/// one taken from a request (checklist item 92). The default is the `forgejo-mcp` preset:
/// `forgejo-mcp --transport stdio --url {forgejo_url}` with `FORGEJO_ACCESS_TOKEN`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChildProfileConfig {
    pub program: PathBuf,
    /// `{forgejo_url}` is replaced with the Forgejo URL the child should use.
    pub args: Vec<String>,
    /// Variables copied from the broker's environment when set there; nothing else is inherited.
    pub env_allowlist: Vec<String>,
    /// Fixed variables for the child; `{forgejo_url}` is replaced as in `args`.
    pub env: BTreeMap<String, String>,
    /// The variable carrying the credential (`env` delivery, and `pipe` where the child reads env).
    pub token_variable: String,
    pub delivery: TokenDelivery,
    pub working_dir: Option<PathBuf>,
}

impl ChildProfileConfig {
    /// The `forgejo-mcp` preset (forgejo-facts.md; test-peers.md).
    pub fn forgejo_mcp(program: PathBuf) -> Self {
        Self {
            program,
            args: ["--transport", "stdio", "--url", "{forgejo_url}"]
                .into_iter()
                .map(str::to_owned)
                .collect(),
            env_allowlist: ["PATH", "LANG", "LC_ALL", "TZ"]
                .into_iter()
                .map(str::to_owned)
                .collect(),
            env: BTreeMap::new(),
            token_variable: "FORGEJO_ACCESS_TOKEN".to_owned(),
            delivery: TokenDelivery::Inject,
            working_dir: None,
        }
    }
}

impl ChildProfileConfig {
    /// The child's whole environment: the allowlisted variables the broker has, then the fixed
    /// ones (`{forgejo_url}` replaced), which win over an allowlisted one of the same name. One
    /// entry per name, so what the child gets is what a reader of the list sees.
    pub fn environment(&self, forgejo_url: &str) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .env_allowlist
            .iter()
            .filter(|name| !self.env.contains_key(*name))
            .filter_map(|name| std::env::var(name).ok().map(|value| (name.clone(), value)))
            .collect();
        env.extend(
            self.env
                .iter()
                .map(|(name, value)| (name.clone(), value.replace("{forgejo_url}", forgejo_url))),
        );
        env
    }
}

impl Default for ChildProfileConfig {
    fn default() -> Self {
        Self::forgejo_mcp(PathBuf::from("forgejo-mcp"))
    }
}

impl Validate for ChildProfileConfig {
    fn validate(&self, errors: &mut ConfigErrors) {
        if self.program.as_os_str().is_empty() {
            errors.push("mcp.child.program", "must not be empty");
        }
        let valid_name = |name: &str| {
            !name.is_empty()
                && !name.contains('=')
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        if !valid_name(&self.token_variable) {
            errors.push("mcp.child.token_variable", "must be a plain variable name");
        }
        for name in self.env_allowlist.iter().chain(self.env.keys()) {
            if !valid_name(name) {
                errors.push(
                    "mcp.child.env",
                    format!("`{name}` is not a plain variable name"),
                );
            }
        }
        if self.env.contains_key(&self.token_variable)
            || self.env_allowlist.contains(&self.token_variable)
        {
            errors.push(
                "mcp.child.env",
                "must not set the token variable; the broker sets it per session",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_use_the_forgejo_mcp_preset() {
        let config = McpConfig::default();
        let mut errors = ConfigErrors::default();
        config.validate(&mut errors);
        assert!(errors.is_empty(), "{errors}");
        assert_eq!(config.child.token_variable, "FORGEJO_ACCESS_TOKEN");
        assert_eq!(config.child.args[..2], ["--transport", "stdio"]);
        assert_eq!(config.session_ttl_secs, 7 * 24 * 3600);
    }

    #[test]
    fn a_fixed_variable_wins_over_an_allowlisted_one_and_appears_once() {
        // PATH is set in every test process; `{forgejo_url}` is replaced in fixed values.
        let profile = ChildProfileConfig {
            env_allowlist: vec!["PATH".to_owned(), "NOT_SET_ANYWHERE_4b1f".to_owned()],
            env: [
                ("PATH".to_owned(), "/opt/mcp/bin".to_owned()),
                ("FORGE".to_owned(), "{forgejo_url}/api".to_owned()),
            ]
            .into(),
            ..ChildProfileConfig::default()
        };
        let env = profile.environment("https://forge.example");
        assert_eq!(
            env,
            [
                ("FORGE".to_owned(), "https://forge.example/api".to_owned()),
                ("PATH".to_owned(), "/opt/mcp/bin".to_owned()),
            ]
        );
        assert_eq!(
            crate::supervisor::search_path(&env),
            std::ffi::OsStr::new("/opt/mcp/bin")
        );
        assert_eq!(
            crate::supervisor::search_path(&[]),
            std::ffi::OsStr::new("/bin:/usr/bin")
        );
    }

    #[test]
    fn bad_values_are_all_reported() {
        let config: McpConfig = toml::from_str(
            r#"
            idle_timeout_secs = 0
            max_children = 0
            [child]
            token_variable = "A=B"
            env = { FORGEJO_ACCESS_TOKEN = "x" }
            "#,
        )
        .unwrap();
        let mut errors = ConfigErrors::default();
        config.validate(&mut errors);
        assert!(errors.messages().len() >= 3, "{errors}");
    }
}
