//! Metrics derived from the audit stream: components already record every security-relevant
//! event, so sessions, children, upstream refreshes and vault operations are counted here
//! without each component holding a metrics handle.
//!
//! Label values are mapped onto fixed sets (`other` for anything unexpected): event fields
//! are free text written by other components, and must not grow the label space.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::{Metrics, SessionState};
use crate::audit::{AuditEvent, AuditSink, SharedAudit};

/// An [`AuditSink`] that updates [`Metrics`] from each event, then forwards it.
pub struct AuditMetrics {
    inner: SharedAudit,
    metrics: Metrics,
    /// Live sessions' states, so an end is subtracted from the right gauge. Bounded by the
    /// MCP edge's session cap: entries leave on `session_ended`.
    sessions: Mutex<HashMap<String, SessionState>>,
}

impl AuditMetrics {
    pub fn new(inner: SharedAudit, metrics: Metrics) -> Self {
        Self {
            inner,
            metrics,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn session(&self, session: &str, to: Option<SessionState>) {
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let from = match to {
            Some(state) => sessions.insert(session.to_owned(), state),
            None => sessions.remove(session),
        };
        self.metrics.session_transition(from, to);
    }

    fn observe(&self, event: &AuditEvent) {
        match event {
            AuditEvent::UpstreamRefreshed { .. } => self.metrics.upstream_refresh("ok"),
            AuditEvent::UpstreamRefreshFailed { .. } => self.metrics.upstream_refresh("failed"),
            AuditEvent::UpstreamGrantDead { .. } => self.metrics.upstream_refresh("grant_dead"),
            AuditEvent::UpstreamVersion { product, version } => {
                self.metrics.set_upstream_version(product, version);
            }
            AuditEvent::SessionCreated { session, .. }
            | AuditEvent::SessionResumed { session, .. } => {
                self.session(session, Some(SessionState::Active));
            }
            AuditEvent::SessionHibernated { session, .. } => {
                self.session(session, Some(SessionState::Hibernated));
            }
            AuditEvent::SessionEnded { session, .. } => self.session(session, None),
            AuditEvent::ChildSpawned { .. } => self.metrics.child_started(),
            AuditEvent::ChildExited { reason, .. } => {
                self.metrics.child_exited(exit_reason(reason));
            }
            AuditEvent::VaultEvent { action, .. } => {
                let (operation, outcome) = vault_action(action);
                self.metrics.vault_operation(operation, outcome);
            }
            _ => {}
        }
    }
}

impl AuditSink for AuditMetrics {
    fn record(&self, event: AuditEvent) {
        self.observe(&event);
        self.inner.record(event);
    }
}

fn exit_reason(reason: &str) -> &'static str {
    // The first word: "idle timeout" and "idle" are one reason.
    match reason.split([' ', ':', '_']).next().unwrap_or_default() {
        "exited" | "exit" => "exited",
        "crashed" | "crash" | "signal" => "crashed",
        "killed" | "kill" => "killed",
        "idle" => "idle",
        "oom" => "oom",
        "timeout" => "timeout",
        "shutdown" => "shutdown",
        "revoked" => "revoked",
        _ => "other",
    }
}

/// The vault's audit actions (src/keystore) as a fixed label set, with their outcome.
fn vault_action(action: &str) -> (&'static str, &'static str) {
    match action {
        "vault_initialised" => ("initialise", "ok"),
        "vault_opened" => ("open", "ok"),
        "key_source_discouraged" => ("open", "warning"),
        "row_unreadable" => ("open_row", "error"),
        "master_key_rotated" => ("rotate_master_key", "ok"),
        "data_key_rotated" => ("rotate_data_key", "ok"),
        "data_key_retired" => ("retire_data_key", "ok"),
        _ => ("other", "ok"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::MemoryAudit;

    #[test]
    fn session_and_child_gauges_follow_the_events_and_labels_stay_bounded() {
        let memory = MemoryAudit::new();
        let metrics = Metrics::new();
        let sink = AuditMetrics::new(memory.clone(), metrics.clone());
        let created = |session: &str| AuditEvent::SessionCreated {
            session: session.into(),
            user_id: 1,
            client_id: "c".into(),
            protocol_version: "2025-06-18".into(),
        };
        sink.record(created("a"));
        sink.record(created("b"));
        sink.record(AuditEvent::SessionHibernated {
            session: "a".into(),
            user_id: 1,
        });
        sink.record(AuditEvent::SessionEnded {
            session: "a".into(),
            user_id: 1,
            reason: "delete".into(),
        });
        sink.record(AuditEvent::ChildSpawned {
            session: "b".into(),
            user_id: 1,
            layers: vec![],
            degraded: vec![],
        });
        sink.record(AuditEvent::ChildExited {
            session: "b".into(),
            user_id: 1,
            reason: "weird reason with user text 12345".into(),
        });
        sink.record(AuditEvent::UpstreamGrantDead { user_id: 1 });
        sink.record(AuditEvent::VaultEvent {
            action: "row_unreadable".into(),
            detail: "table=upstream_grants".into(),
        });
        let text = metrics.encode();
        assert!(text.contains(r#"mcp_sessions{state="active"} 1"#), "{text}");
        assert!(
            text.contains(r#"mcp_sessions{state="hibernated"} 0"#),
            "{text}"
        );
        assert!(text.contains("forgejo_mcp_broker_children 0"));
        assert!(text.contains(r#"child_exits_total{reason="other"} 1"#));
        assert!(!text.contains("12345"));
        assert!(text.contains(r#"upstream_refreshes_total{outcome="grant_dead"} 1"#));
        // Everything was forwarded.
        assert!(text.contains(r#"vault_operations_total{operation="open_row",outcome="error"} 1"#));
        assert_eq!(memory.events().len(), 8);
    }
}
