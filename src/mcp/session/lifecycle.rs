//! The child's lifecycle inside the session actor: (re)spawn with the `initialize` replay,
//! failure, hibernation, stop, and the periodic housekeeping (timeouts, idleness).

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::io::BufReader;
use tokio::time::Instant;

use super::super::context::SpawnError;
use super::super::jsonrpc::{self, Outcome, codes};
use super::super::lines::LineReader;
use super::{Actor, LiveChild, Pending};
use crate::audit::AuditEvent;

impl Actor {
    // ---- lifecycle --------------------------------------------------------------------------

    /// Starts a child and runs `initialize` on it with the recorded params. `replay` also sends
    /// `notifications/initialized`, subscriptions and the log level (item 141, 164).
    pub(super) async fn spawn_child(&mut self, replay: bool) -> Result<(), SpawnError> {
        let Some(params) = self.record.initialize_params.clone() else {
            return Err(SpawnError::Initialize(
                "the session was never initialized".to_owned(),
            ));
        };
        let handle = self.ctx.start_child(&self.shared).await?;
        let pid = handle.control.pid();
        let stderr_task = self
            .ctx
            .spawn_stderr_logger(handle.stderr, self.shared.label.clone());
        self.child = Some(LiveChild {
            stdin: handle.stdin,
            stdout: LineReader::new(
                BufReader::with_capacity(64 * 1024, handle.stdout),
                self.ctx.config.max_line_bytes,
            ),
            control: handle.control,
            stderr_task,
        });
        self.shared.pid.store(pid.unwrap_or(0), Ordering::SeqCst);
        let init_id = self.allocate_id();
        let deadline = Instant::now() + self.ctx.config.initialize_timeout();
        self.pending.insert(
            init_id,
            Pending::Internal {
                initialize: true,
                deadline,
            },
        );
        let params_raw = RawValue::from_string(params).ok();
        self.write_line(jsonrpc::request_line(
            init_id,
            "initialize",
            params_raw.as_deref(),
        ))
        .await;
        self.init_result = None;
        while self.init_result.is_none() {
            let Some(child) = self.child.as_mut() else {
                return Err(SpawnError::Initialize(
                    "the MCP server exited during initialize".to_owned(),
                ));
            };
            match tokio::time::timeout_at(deadline, child.stdout.next()).await {
                Ok(event) => self.handle_line_event(event).await,
                Err(_) => {
                    self.child_failed("it did not answer initialize in time")
                        .await;
                    return Err(SpawnError::Initialize(
                        "the MCP server did not answer initialize in time".to_owned(),
                    ));
                }
            }
        }
        self.ctx.audit.record(AuditEvent::ChildSpawned {
            session: self.shared.label.clone(),
            user_id: self.shared.user_id,
            layers: Vec::new(),
            degraded: Vec::new(),
        });
        if !replay {
            return Ok(());
        }
        let Some(Outcome::Result(result)) = self.init_result.take() else {
            self.child_failed("it refused the replayed initialize")
                .await;
            return Err(SpawnError::Initialize(
                "the MCP server refused the replayed initialize".to_owned(),
            ));
        };
        let version = jsonrpc::peek(Some(&result)).protocol_version;
        if version != self.record.protocol_version {
            // The spec has no way to renegotiate mid-session (item 141): keep going, loudly.
            tracing::warn!(session = %self.shared.label, "respawned child negotiated a different protocol version");
        }
        self.write_line(jsonrpc::notification_line(
            "notifications/initialized",
            None,
        ))
        .await;
        for uri in self.record.subscriptions.clone() {
            let id = self.allocate_id();
            self.pending.insert(
                id,
                Pending::Internal {
                    initialize: false,
                    deadline: Instant::now() + self.ctx.config.request_timeout(),
                },
            );
            let params = serde_json::json!({ "uri": uri }).to_string();
            let raw = RawValue::from_string(params).ok();
            self.write_line(jsonrpc::request_line(
                id,
                "resources/subscribe",
                raw.as_deref(),
            ))
            .await;
        }
        if let Some(level) = self.record.log_level.clone() {
            let id = self.allocate_id();
            self.pending.insert(
                id,
                Pending::Internal {
                    initialize: false,
                    deadline: Instant::now() + self.ctx.config.request_timeout(),
                },
            );
            let raw = RawValue::from_string(serde_json::json!({ "level": level }).to_string()).ok();
            self.write_line(jsonrpc::request_line(
                id,
                "logging/setLevel",
                raw.as_deref(),
            ))
            .await;
        }
        self.ctx.audit.record(AuditEvent::SessionResumed {
            session: self.shared.label.clone(),
            user_id: self.shared.user_id,
            reason: "request after hibernation, crash or restart".to_owned(),
        });
        if self.child.is_none() {
            return Err(SpawnError::Initialize(
                "the MCP server exited during the replay".to_owned(),
            ));
        }
        Ok(())
    }

    /// The child died or broke the protocol: fail what it was doing (item 142) and keep the
    /// session; the next request respawns (item 164).
    pub(super) async fn child_failed(&mut self, reason: &str) {
        tracing::warn!(session = %self.shared.label, reason, "MCP server child stopped");
        let message = format!("the MCP server stopped ({reason}); the request was not completed");
        self.fail_pending(&message);
        self.stop_child(reason).await;
    }

    pub(super) fn fail_pending(&mut self, message: &str) {
        let pending: Vec<Pending> = self.pending.drain().map(|(_, pending)| pending).collect();
        for entry in pending {
            if let Pending::Client {
                client_id,
                stream,
                progress_token,
                ..
            } = entry
            {
                self.finish_client_request(progress_token.as_deref());
                self.answer_error(stream, &client_id, codes::CHILD_UNAVAILABLE, message);
            }
        }
        self.progress.clear();
    }

    pub(super) async fn hibernate(&mut self, reason: &'static str) {
        self.stop_child(reason).await;
        self.ctx.audit.record(AuditEvent::SessionHibernated {
            session: self.shared.label.clone(),
            user_id: self.shared.user_id,
        });
    }

    /// Close stdin → SIGTERM → SIGKILL of the group (item 140); frees the child slot.
    pub(super) async fn stop_child(&mut self, reason: &str) {
        self.fail_pending("the MCP server was stopped; the request was not completed");
        self.outbound.clear();
        let Some(child) = self.child.take() else {
            return;
        };
        let LiveChild {
            stdin,
            stdout,
            control,
            stderr_task,
        } = child;
        drop(stdin);
        drop(stdout);
        let exit = control.terminate(self.ctx.config.stop_grace()).await;
        drop(control);
        let _ = tokio::time::timeout(Duration::from_secs(1), stderr_task).await;
        self.shared.pid.store(0, Ordering::SeqCst);
        self.ctx.release_slot(&self.shared.key);
        self.ctx.audit.record(AuditEvent::ChildExited {
            session: self.shared.label.clone(),
            user_id: self.shared.user_id,
            reason: format!("{reason} ({exit:?})"),
        });
    }

    pub(super) async fn housekeeping(&mut self) {
        let now = Instant::now();
        let expired: Vec<i64> = self
            .pending
            .iter()
            .filter_map(|(id, pending)| match pending {
                Pending::Client { deadline, .. } | Pending::Internal { deadline, .. }
                    if *deadline <= now =>
                {
                    Some(*id)
                }
                _ => None,
            })
            .collect();
        for broker_id in expired {
            if let Some(Pending::Client {
                client_id,
                stream,
                progress_token,
                ..
            }) = self.pending.remove(&broker_id)
            {
                self.finish_client_request(progress_token.as_deref());
                self.answer_error(
                    stream,
                    &client_id,
                    codes::REQUEST_TIMEOUT,
                    "the MCP server did not answer in time; the request was cancelled",
                );
            }
            // Item 143: tell the child to stop working on it.
            let line = jsonrpc::notification_line(
                "notifications/cancelled",
                Some(&serde_json::json!({"requestId": broker_id, "reason": "timeout"})),
            );
            self.write_line(line).await;
        }
        let idle_for = self.ctx.clock.now() - self.shared.last_activity.load(Ordering::SeqCst);
        if self.child.is_some()
            && self.pending.is_empty()
            && idle_for >= self.ctx.config.idle_timeout_secs_i64()
        {
            self.hibernate("idle").await;
        }
    }
}
