//! The audit log (ARCHITECTURE.md §6, issue #7): every security-relevant event, never a secret.
//!
//! Components record [`AuditEvent`]s through an [`AuditSink`]. In production the sink is
//! [`FileAudit`]: an append-only, hash-chained JSON Lines file with HMAC checkpoints
//! ([`chain`]), written by one dedicated thread ([`writer`]), checked and filtered by
//! `audit verify` / `audit show` ([`review`]). [`MemoryAudit`] keeps events for tests and
//! [`TracingAudit`] writes them to the log.
//!
//! Fields are identifiers (user id, client id, session id prefix, tool name), never tokens,
//! codes, verifiers, arguments or Forgejo tokens.

pub mod chain;
pub mod review;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

pub use self::chain::{AuditKey, AuditKeyError};
pub use self::writer::{AuditFileConfig, AuditWriterError, FileAudit};
use crate::auth::UserId;
use crate::config::{ConfigErrors, Validate};

/// One audited event. The serialised form is `{"event": "<snake_case name>", ...fields}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    ConfigLoaded {
        source: String,
    },
    ClientRegistered {
        client_id: String,
        client_name: Option<String>,
        method: String,
        ip: Option<String>,
    },
    ClientExpired {
        client_id: String,
    },
    ClientDeleted {
        client_id: String,
        by: String,
    },
    ConsentGranted {
        client_id: String,
        user_id: Option<UserId>,
    },
    ConsentDenied {
        client_id: String,
    },
    UpstreamLogin {
        user_id: UserId,
        username: String,
    },
    UpstreamLoginFailed {
        reason: String,
    },
    /// The forge the broker works against, as its `/api/v1/version` says: at start and when
    /// it changes.
    UpstreamVersion {
        /// `forgejo` or `gitea`.
        product: String,
        version: String,
    },
    UpstreamRefreshed {
        user_id: UserId,
    },
    UpstreamRefreshFailed {
        user_id: UserId,
        reason: String,
    },
    UpstreamGrantDead {
        user_id: UserId,
    },
    CodeIssued {
        client_id: String,
        user_id: UserId,
    },
    CodeReused {
        client_id: String,
        user_id: UserId,
        /// The client that presented the code again: another than `client_id` cannot revoke
        /// what the code issued.
        presented_by: String,
    },
    TokenIssued {
        client_id: String,
        user_id: UserId,
        grant_id: String,
    },
    TokenRefreshed {
        client_id: String,
        user_id: UserId,
        grant_id: String,
    },
    RefreshTokenReuse {
        client_id: String,
        user_id: UserId,
        grant_id: String,
    },
    TokenRevoked {
        client_id: String,
        user_id: UserId,
        grant_id: String,
        token_type: String,
    },
    UserRevoked {
        user_id: UserId,
        by: String,
    },
    SessionCreated {
        session: String,
        user_id: UserId,
        client_id: String,
        protocol_version: String,
    },
    SessionHibernated {
        session: String,
        user_id: UserId,
    },
    SessionResumed {
        session: String,
        user_id: UserId,
        reason: String,
    },
    SessionEnded {
        session: String,
        user_id: UserId,
        reason: String,
    },
    ChildSpawned {
        session: String,
        user_id: UserId,
        layers: Vec<String>,
        degraded: Vec<String>,
    },
    ChildExited {
        session: String,
        user_id: UserId,
        reason: String,
    },
    ToolCalled {
        session: String,
        user_id: UserId,
        tool: String,
        /// `ok` or `error`.
        outcome: &'static str,
    },
    UpstreamApiCall {
        session: String,
        user_id: UserId,
        method: String,
        path: String,
        status: u16,
    },
    UpstreamApiDenied {
        session: String,
        user_id: UserId,
        method: String,
        path: String,
    },
    RateLimited {
        endpoint: String,
        key_kind: String,
        /// The client address when the limit was per IP (an address is not a secret).
        ip: Option<String>,
    },
    VaultEvent {
        action: String,
        detail: String,
    },
    /// The writer found the log ending before the last record it wrote (`last_written`), at
    /// `found`: records were removed or the file deleted. `audit verify` reports it as a break.
    AuditLogRewound {
        last_written: u64,
        found: u64,
    },
}

impl AuditEvent {
    /// The event's name as written in the log (`client_registered`, ...).
    pub fn name(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|value| {
                value
                    .get("event")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_default()
    }
}

pub trait AuditSink: Send + Sync + 'static {
    /// Records one event. Must not block for long and must not fail the caller: a write error
    /// is counted and logged by the sink itself.
    fn record(&self, event: AuditEvent);
}

pub type SharedAudit = Arc<dyn AuditSink>;

/// Keeps events in memory; for tests and the demo's "what happened" view.
#[derive(Debug, Default)]
pub struct MemoryAudit {
    events: Mutex<Vec<AuditEvent>>,
}

impl MemoryAudit {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn events(&self) -> Vec<AuditEvent> {
        self.events
            .lock()
            .map(|events| events.clone())
            .unwrap_or_default()
    }
}

impl AuditSink for MemoryAudit {
    fn record(&self, event: AuditEvent) {
        if let Ok(mut events) = self.events.lock() {
            events.push(event);
        }
    }
}

/// Sends every event to each of several sinks (e.g. the audit file and a test's memory).
pub struct TeeAudit(pub Vec<SharedAudit>);

impl AuditSink for TeeAudit {
    fn record(&self, event: AuditEvent) {
        for sink in &self.0 {
            sink.record(event.clone());
        }
    }
}

/// Writes events to the `tracing` log at INFO under the `audit` target.
#[derive(Debug, Default)]
pub struct TracingAudit;

impl AuditSink for TracingAudit {
    fn record(&self, event: AuditEvent) {
        match serde_json::to_string(&event) {
            Ok(line) => tracing::info!(target: "audit", "{line}"),
            Err(error) => tracing::error!(target: "audit", %error, "audit event not serialisable"),
        }
    }
}

/// `[audit]` section.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// The active JSON Lines file; default `{data_dir}/audit.jsonl`. Rotated files sit beside
    /// it as `audit.<first seq>.jsonl`.
    pub path: Option<PathBuf>,
    /// Where releases before the key moved into the vault kept the checkpoint key (64 hex
    /// digits, 0600); default `{data_dir}/audit.key`. Only read to move that key into the vault
    /// on the first start that finds it, after which the file is removed (docs/operations.md).
    pub key_file: Option<PathBuf>,
    /// Rotate the active file once it reaches this size.
    pub rotate_bytes: u64,
    /// Write a checkpoint after this many records...
    pub checkpoint_every_lines: u64,
    /// ...or after this many seconds with records pending, whichever comes first.
    pub checkpoint_every_secs: u64,
    /// Events waiting for the writer; beyond it events are dropped and counted.
    pub queue_capacity: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            path: None,
            key_file: None,
            rotate_bytes: 64 * 1024 * 1024,
            checkpoint_every_lines: 100,
            checkpoint_every_secs: 10,
            queue_capacity: 8192,
        }
    }
}

impl AuditConfig {
    pub fn path(&self, data_dir: &Path) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| data_dir.join("audit.jsonl"))
    }

    pub fn key_file(&self, data_dir: &Path) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| data_dir.join("audit.key"))
    }

    pub fn file_config(&self, data_dir: &Path) -> AuditFileConfig {
        AuditFileConfig {
            path: self.path(data_dir),
            rotate_bytes: self.rotate_bytes,
            checkpoint_every_lines: self.checkpoint_every_lines,
            checkpoint_every: Duration::from_secs(self.checkpoint_every_secs),
            queue_capacity: self.queue_capacity,
        }
    }
}

impl Validate for AuditConfig {
    fn validate(&self, errors: &mut ConfigErrors) {
        if self.rotate_bytes < 4096 {
            errors.push("audit.rotate_bytes", "must be at least 4096");
        }
        if self.checkpoint_every_lines == 0 {
            errors.push("audit.checkpoint_every_lines", "must be positive");
        }
        if self.checkpoint_every_secs == 0 {
            errors.push("audit.checkpoint_every_secs", "must be positive");
        }
        if self.queue_capacity == 0 {
            errors.push("audit.queue_capacity", "must be positive");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_with_their_snake_case_name() {
        let event = AuditEvent::ConsentDenied {
            client_id: "c1".into(),
        };
        assert_eq!(event.name(), "consent_denied");
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(json, r#"{"event":"consent_denied","client_id":"c1"}"#);
    }
}
