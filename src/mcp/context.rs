//! What all sessions share: configuration, the launcher and credential seams, the session store,
//! and the child slots that enforce `max_children` (the child idle the longest hibernates first).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use tokio::io::AsyncBufReadExt as _;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::McpConfig;
use super::session::{Command, SessionShared};
use super::store::SessionStore;
use crate::audit::SharedAudit;
use crate::auth::{UpstreamCredentials, UpstreamCredentialsError};
use crate::clock::SharedClock;
use crate::supervisor::{BoxedRead, ChildHandle, ChildLauncher, ChildSpec, TokenDelivery};

/// Why a child could not be (re)started.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SpawnError {
    #[error("too many MCP servers are running (limit {0}) and none is idle")]
    Capacity(usize),
    /// The user's Forgejo grant is dead: the session ends (404) and the user re-authorizes.
    #[error("the user's Forgejo grant is dead")]
    GrantDead,
    #[error("Forgejo is unavailable")]
    UpstreamUnavailable,
    #[error("cannot start the MCP server: {0}")]
    Launch(String),
    #[error("{0}")]
    Initialize(String),
}

impl SpawnError {
    /// What the client is told: no paths, no internal detail beyond the kind of failure.
    pub fn client_message(&self) -> String {
        match self {
            Self::Capacity(limit) => format!(
                "the broker is running its maximum of {limit} MCP servers and none is idle; retry later"
            ),
            Self::GrantDead => "the Forgejo authorization ended; reconnect".to_owned(),
            Self::UpstreamUnavailable => "Forgejo is unavailable; retry later".to_owned(),
            Self::Launch(_) => "the MCP server could not be started".to_owned(),
            Self::Initialize(reason) => format!("the MCP server failed to start: {reason}"),
        }
    }
}

pub struct Context {
    pub config: McpConfig,
    /// `{forgejo_url}` in the child's args and fixed environment values.
    pub forgejo_url: String,
    pub launcher: Arc<dyn ChildLauncher>,
    pub upstream: Arc<dyn UpstreamCredentials>,
    pub store: SessionStore,
    pub clock: SharedClock,
    pub audit: SharedAudit,
    pub cancel: CancellationToken,
    pub tasks: TaskTracker,
    slots: Mutex<HashMap<String, Weak<SessionShared>>>,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: McpConfig,
        forgejo_url: String,
        launcher: Arc<dyn ChildLauncher>,
        upstream: Arc<dyn UpstreamCredentials>,
        store: SessionStore,
        clock: SharedClock,
        audit: SharedAudit,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            config,
            forgejo_url,
            launcher,
            upstream,
            store,
            clock,
            audit,
            cancel,
            tasks: TaskTracker::new(),
            slots: Mutex::new(HashMap::new()),
        }
    }

    pub fn running_children(&self) -> usize {
        self.slots.lock().map(|slots| slots.len()).unwrap_or(0)
    }

    /// Takes a child slot for `session`, hibernating the child idle the longest if all are
    /// taken (issue #3 "Limits").
    async fn reserve_slot(&self, session: &Arc<SessionShared>) -> Result<(), SpawnError> {
        let limit = self.config.max_children;
        for _ in 0..4 {
            let victim = {
                let Ok(mut slots) = self.slots.lock() else {
                    return Err(SpawnError::Capacity(limit));
                };
                slots.retain(|_, weak| weak.strong_count() > 0);
                if slots.len() < limit {
                    slots.insert(session.key.clone(), Arc::downgrade(session));
                    return Ok(());
                }
                slots
                    .iter()
                    .filter(|(key, _)| **key != session.key)
                    .filter_map(|(_, weak)| weak.upgrade())
                    .filter(|other| other.in_flight.load(Ordering::SeqCst) == 0)
                    .min_by_key(|other| other.last_activity.load(Ordering::SeqCst))
            };
            let Some(victim) = victim else {
                return Err(SpawnError::Capacity(limit));
            };
            let (reply, stopped) = oneshot::channel();
            if victim
                .commands
                .send(Command::Hibernate {
                    reason: "child limit reached",
                    reply,
                })
                .await
                .is_err()
            {
                // Its actor is gone; its slot is released with it.
                if let Ok(mut slots) = self.slots.lock() {
                    slots.remove(&victim.key);
                }
                continue;
            }
            let _ = stopped.await;
        }
        Err(SpawnError::Capacity(limit))
    }

    pub fn release_slot(&self, key: &str) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.remove(key);
        }
    }

    /// Reserves a slot, fetches the credential, launches. The slot is released on failure.
    pub async fn start_child(
        &self,
        session: &Arc<SessionShared>,
    ) -> Result<ChildHandle, SpawnError> {
        self.reserve_slot(session).await?;
        let result = self.launch(session).await;
        if result.is_err() {
            self.release_slot(&session.key);
        }
        result
    }

    async fn launch(&self, session: &Arc<SessionShared>) -> Result<ChildHandle, SpawnError> {
        let profile = &self.config.child;
        let credential = match profile.delivery {
            TokenDelivery::None => None,
            _ => match self.upstream.access_token(session.user_id).await {
                Ok(token) => Some((profile.token_variable.clone(), token)),
                Err(UpstreamCredentialsError::GrantDead | UpstreamCredentialsError::NoGrant) => {
                    return Err(SpawnError::GrantDead);
                }
                Err(UpstreamCredentialsError::Unavailable) => {
                    return Err(SpawnError::UpstreamUnavailable);
                }
            },
        };
        let env = profile.environment(&self.forgejo_url);
        let spec = ChildSpec {
            program: profile.program.clone(),
            args: profile
                .args
                .iter()
                .map(|arg| arg.replace("{forgejo_url}", &self.forgejo_url))
                .collect(),
            env,
            working_dir: profile.working_dir.clone(),
            credential,
            delivery: profile.delivery,
            session_label: session.label.clone(),
            user_id: session.user_id,
        };
        self.launcher.launch(spec).await.map_err(|error| {
            tracing::error!(session = %session.label, %error, "cannot start the MCP server child");
            SpawnError::Launch(error.to_string())
        })
    }

    /// Child stderr is logs, not an error signal (item 139): to the log, rate-limited so a
    /// chatty child cannot flood it.
    pub fn spawn_stderr_logger(
        &self,
        stderr: BoxedRead,
        label: String,
    ) -> tokio::task::JoinHandle<()> {
        let per_second = self.config.stderr_lines_per_second;
        self.tasks.spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).split(b'\n');
            let mut limiter = LineRateLimiter::new(per_second);
            while let Ok(Some(line)) = lines.next_segment().await {
                let now = tokio::time::Instant::now();
                match limiter.admit(now) {
                    Admit::Yes { dropped_before } => {
                        if dropped_before > 0 {
                            tracing::warn!(task = "child-stderr", session = %label, dropped = dropped_before, "child stderr lines dropped by the rate limit");
                        }
                        let text = String::from_utf8_lossy(line.get(..line.len().min(2048)).unwrap_or_default());
                        tracing::info!(task = "child-stderr", session = %label, "{}", text.trim_end());
                    }
                    Admit::No => {}
                }
            }
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    Yes { dropped_before: u64 },
    No,
}

/// A fixed one-second window: at most `per_second` lines, the rest counted.
pub struct LineRateLimiter {
    per_second: u32,
    window_start: Option<tokio::time::Instant>,
    in_window: u32,
    dropped: u64,
}

impl LineRateLimiter {
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            window_start: None,
            in_window: 0,
            dropped: 0,
        }
    }

    pub fn admit(&mut self, now: tokio::time::Instant) -> Admit {
        let fresh = self
            .window_start
            .is_none_or(|start| now.duration_since(start) >= std::time::Duration::from_secs(1));
        if fresh {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window < self.per_second {
            self.in_window += 1;
            Admit::Yes {
                dropped_before: std::mem::take(&mut self.dropped),
            }
        } else {
            self.dropped += 1;
            Admit::No
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stderr_rate_limit_counts_what_it_drops() {
        let start = tokio::time::Instant::now();
        let mut limiter = LineRateLimiter::new(2);
        assert_eq!(limiter.admit(start), Admit::Yes { dropped_before: 0 });
        assert_eq!(limiter.admit(start), Admit::Yes { dropped_before: 0 });
        assert_eq!(limiter.admit(start), Admit::No);
        assert_eq!(limiter.admit(start), Admit::No);
        let later = start + Duration::from_secs(1);
        assert_eq!(limiter.admit(later), Admit::Yes { dropped_before: 2 });
    }
}
