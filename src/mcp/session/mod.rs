//! One session: the shared part the HTTP handlers see ([`SessionShared`]) and the actor task
//! that alone owns the child's stdio (STYLE.md habit 10).
//!
//! The actor remaps ids both ways (item 138): client request ids become the actor's own integer
//! ids towards the child (so clients that reuse ids, and the broker's own replay requests, never
//! collide), and child → client request ids become `srv-N` strings that survive a respawn (a
//! new child restarts its counter). Every child message is handed to [`StreamTable`], which
//! puts it on exactly one stream (items 108, 137).

mod lifecycle;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;
use tokio::io::{AsyncWriteExt as _, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::context::{Context, SpawnError};
use super::jsonrpc::{self, Id, Message, Outcome, codes};
use super::lines::{LineEvent, LineReader};
use super::store::SessionRecord;
use super::streams::{StreamId, StreamTable};
use crate::audit::AuditEvent;
use crate::auth::UserId;
use crate::supervisor::{BoxedRead, BoxedWrite, ChildControl};

/// What the HTTP side and the registry know about a session; the actor owns the rest.
pub struct SessionShared {
    /// SHA-256 of the session id (hex): the registry key and the database key.
    pub key: String,
    /// A short prefix of `key` for logs and the audit log (never the id itself).
    pub label: String,
    pub user_id: UserId,
    pub client_id: String,
    pub grant_id: String,
    pub legacy: bool,
    pub streams: Mutex<StreamTable>,
    pub last_activity: AtomicI64,
    /// When the sliding expiry was last written to the database.
    pub persisted_at: AtomicI64,
    pub in_flight: AtomicUsize,
    pub(super) pid: AtomicU32,
    /// Negotiated version and the child's `InitializeResult`, once known.
    pub negotiated: Mutex<Option<(String, String)>>,
    pub expires_at: AtomicI64,
    pub commands: mpsc::Sender<Command>,
}

impl SessionShared {
    /// The current child's pid, if one is running.
    pub fn pid(&self) -> Option<u32> {
        match self.pid.load(Ordering::SeqCst) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// Takes `requests` of the session's in-flight allowance, or none if that would pass
    /// `limit`. Taken by the HTTP side before it forwards, so that concurrent POSTs cannot all
    /// pass the check; each request gives its share back when it is answered (or refused).
    pub fn reserve_requests(&self, requests: usize, limit: usize) -> bool {
        self.in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |in_flight| {
                in_flight
                    .checked_add(requests)
                    .filter(|total| *total <= limit)
            })
            .is_ok()
    }

    /// Gives back what [`SessionShared::reserve_requests`] took.
    pub fn release_requests(&self, requests: usize) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |in_flight| {
                Some(in_flight.saturating_sub(requests))
            });
    }

    pub fn protocol_version(&self) -> Option<String> {
        self.negotiated
            .lock()
            .ok()
            .and_then(|slot| slot.as_ref().map(|(version, _)| version.clone()))
    }
}

impl std::fmt::Debug for SessionShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionShared")
            .field("label", &self.label)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// Why a forwarded message could not be taken.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    /// The user's Forgejo grant is dead: the session must end and the client start over.
    #[error("the user's Forgejo grant is dead")]
    Gone,
    /// The session ended before the message was taken (it was queued behind the end).
    #[error("session ended")]
    Ended,
    /// The broker is shutting down; the session is kept for after the restart.
    #[error("the broker is shutting down")]
    ShuttingDown,
}

pub enum Command {
    /// A new session's `initialize`: spawn, forward, answer with the child's reply.
    Initialize {
        id: Id,
        params: Option<Box<RawValue>>,
        reply: oneshot::Sender<InitializeOutcome>,
    },
    Forward {
        messages: Vec<Message>,
        stream: Option<StreamId>,
        /// Where the outcome goes, when the sender waits for it (only a request that may have
        /// to respawn the child does: no channel per call otherwise).
        reply: Option<oneshot::Sender<Result<(), SessionError>>>,
    },
    Hibernate {
        reason: &'static str,
        reply: oneshot::Sender<bool>,
    },
    End {
        reason: String,
        reply: oneshot::Sender<()>,
    },
}

#[derive(Debug)]
pub enum InitializeOutcome {
    /// The child answered (result or error); the line carries the client's id.
    Answered {
        line: String,
        succeeded: bool,
    },
    Failed(SpawnError),
}

enum Pending {
    Client {
        client_id: Id,
        stream: StreamId,
        progress_token: Option<String>,
        deadline: Instant,
        tool: Option<String>,
    },
    /// A request the broker made itself; its response is swallowed (item 138). Past its
    /// deadline it is cancelled like a client's, so that a child that never answers cannot keep
    /// the session from hibernating.
    Internal { initialize: bool, deadline: Instant },
}

struct LiveChild {
    stdin: BoxedWrite,
    stdout: LineReader<BufReader<BoxedRead>>,
    control: Box<dyn ChildControl>,
    stderr_task: tokio::task::JoinHandle<()>,
}

/// The tool name an audit record keeps: the client chose it, so at most
/// [`MAX_AUDITED_TOOL_NAME`] characters (a body of megabytes must not become a record of
/// megabytes; `audit show` escapes what a terminal would act on).
fn audited_tool_name(name: Option<&str>) -> String {
    let name = name.unwrap_or_default();
    match name.char_indices().nth(MAX_AUDITED_TOOL_NAME) {
        Some((end, _)) => format!("{}…", name.get(..end).unwrap_or_default()),
        None => name.to_owned(),
    }
}

const MAX_AUDITED_TOOL_NAME: usize = 128;

/// Child → client requests awaiting the client's answer, per session. A client that never
/// answers (or a child that keeps asking) must not grow the broker's memory without bound.
const MAX_OUTBOUND_REQUESTS: usize = 256;

pub struct Actor {
    shared: Arc<SessionShared>,
    ctx: Arc<Context>,
    commands: mpsc::Receiver<Command>,
    record: SessionRecord,
    child: Option<LiveChild>,
    next_id: i64,
    /// Child → client requests are `srv-{tag}-{N}` to the client; the tag is random per actor,
    /// so an answer to a request from before a restart never matches one made since.
    outbound_tag: String,
    next_outbound: u64,
    pending: HashMap<i64, Pending>,
    progress: HashMap<String, StreamId>,
    /// `N` → the child's own id, for the current child only; at most
    /// [`MAX_OUTBOUND_REQUESTS`], the oldest forgotten first.
    outbound: BTreeMap<u64, Id>,
    init_result: Option<Outcome>,
}

enum Step {
    Command(Option<Command>),
    Line(LineEvent),
    Tick,
    Shutdown,
}

impl Actor {
    pub fn new(
        shared: Arc<SessionShared>,
        ctx: Arc<Context>,
        commands: mpsc::Receiver<Command>,
        record: SessionRecord,
    ) -> Self {
        Self {
            shared,
            ctx,
            commands,
            record,
            child: None,
            next_id: 1,
            outbound_tag: crate::secret::random_id(6).unwrap_or_else(|_| "0".to_owned()),
            next_outbound: 1,
            pending: HashMap::new(),
            progress: HashMap::new(),
            outbound: BTreeMap::new(),
            init_result: None,
        }
    }

    /// The actor's loop: commands from HTTP, lines from the child, housekeeping ticks.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(self.ctx.config.housekeeping_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Registered once: a fresh `cancelled()` per turn would lock the token's shared waiter
        // list twice per message, for every session at once.
        let cancelled = self.ctx.cancel.clone().cancelled_owned();
        tokio::pin!(cancelled);
        loop {
            let step = {
                let child = &mut self.child;
                let commands = &mut self.commands;
                let child_lines = async {
                    match child.as_mut() {
                        Some(child) => child.stdout.next().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    command = commands.recv() => Step::Command(command),
                    line = child_lines => Step::Line(line),
                    _ = tick.tick() => Step::Tick,
                    () = &mut cancelled => Step::Shutdown,
                }
            };
            match step {
                Step::Command(None) | Step::Shutdown => {
                    // Broker shutdown: stop the child, keep the record (resume after restart).
                    self.stop_child("broker shutdown").await;
                    self.refuse_queued(
                        SessionError::ShuttingDown,
                        "the broker is shutting down; retry the request",
                    )
                    .await;
                    return;
                }
                Step::Command(Some(Command::End { reason, reply })) => {
                    self.stop_child(&reason).await;
                    self.refuse_queued(
                        SessionError::Ended,
                        "the session ended; the request was not completed",
                    )
                    .await;
                    if let Ok(mut streams) = self.shared.streams.lock() {
                        streams.close_all();
                    }
                    let _ = reply.send(());
                    return;
                }
                Step::Command(Some(command)) => self.handle_command(command).await,
                Step::Line(event) => self.handle_line_event(event).await,
                Step::Tick => self.housekeeping().await,
            }
        }
    }

    /// The actor is about to stop: no command is taken any more, and each one already queued
    /// (a request that looked the session up just before it ended) is answered, its requests
    /// with a JSON-RPC error on their stream, rather than dropped unanswered.
    async fn refuse_queued(&mut self, why: SessionError, text: &str) {
        self.commands.close();
        while let Some(command) = self.commands.recv().await {
            match command {
                Command::Initialize { reply, .. } => {
                    let _ = reply.send(InitializeOutcome::Failed(SpawnError::Initialize(
                        why.to_string(),
                    )));
                }
                Command::Forward {
                    messages,
                    stream,
                    reply,
                } => {
                    if let Some(stream) = stream {
                        for message in messages {
                            if let Message::Request { id, .. } = message {
                                self.refuse_request(stream, &id, codes::CHILD_UNAVAILABLE, text);
                            }
                        }
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(why.clone()));
                    }
                }
                Command::Hibernate { reply, .. } => {
                    let _ = reply.send(false);
                }
                Command::End { reply, .. } => {
                    let _ = reply.send(());
                }
            }
        }
    }

    /// A forwarded request that will not be answered by the child gives back its share.
    fn release_reservation(&self) {
        self.shared.release_requests(1);
    }

    /// Answers a forwarded request the child will not see with an error on its stream, and
    /// gives back its in-flight share: the two always go together.
    fn refuse_request(&self, stream: StreamId, id: &Id, code: i64, message: &str) {
        self.release_reservation();
        self.answer_error(stream, id, code, message);
    }

    async fn handle_command(&mut self, command: Command) {
        match command {
            Command::Initialize { id, params, reply } => {
                let outcome = self.initialize_new(id, params).await;
                let _ = reply.send(outcome);
            }
            Command::Forward {
                messages,
                stream,
                reply,
            } => {
                let result = self.forward(messages, stream).await;
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Command::Hibernate { reason, reply } => {
                let stopped = self.child.is_some() && self.pending.is_empty();
                if stopped {
                    self.hibernate(reason).await;
                }
                let _ = reply.send(stopped);
            }
            Command::End { .. } => {}
        }
    }

    // ---- client → child -------------------------------------------------------------------

    async fn initialize_new(&mut self, id: Id, params: Option<Box<RawValue>>) -> InitializeOutcome {
        if self.record.initialize_params.is_some() {
            // Item 146: one `initialize` per session (the Streamable HTTP edge answers repeats
            // from the record before they get here; this guards the legacy transport).
            return InitializeOutcome::Failed(SpawnError::Initialize(
                "the session is already initialized".to_owned(),
            ));
        }
        let params_text = params.as_deref().map_or("{}", RawValue::get).to_owned();
        self.record.initialize_params = Some(params_text);
        match self.spawn_child(false).await {
            Ok(()) => {}
            Err(error) => {
                self.record.initialize_params = None;
                return InitializeOutcome::Failed(error);
            }
        }
        let Some(outcome) = self.init_result.take() else {
            return InitializeOutcome::Failed(SpawnError::Initialize("no answer".to_owned()));
        };
        let succeeded = matches!(outcome, Outcome::Result(_));
        let response = Message::Response { id, outcome };
        if let Message::Response {
            outcome: Outcome::Result(result),
            ..
        } = &response
        {
            let version = jsonrpc::peek(Some(result))
                .protocol_version
                .unwrap_or_else(|| "2025-03-26".to_owned());
            let params = self.record.initialize_params.clone().unwrap_or_default();
            self.record.protocol_version = Some(version.clone());
            self.record.initialize_result = Some(result.get().to_owned());
            if let Ok(mut slot) = self.shared.negotiated.lock() {
                *slot = Some((version.clone(), result.get().to_owned()));
            }
            if let Err(error) =
                self.ctx
                    .store
                    .save_initialized(&self.shared.key, &version, &params, result.get())
            {
                tracing::error!(session = %self.shared.label, %error, "cannot save the session record");
            }
            self.ctx.audit.record(AuditEvent::SessionCreated {
                session: self.shared.label.clone(),
                user_id: self.shared.user_id,
                client_id: self.shared.client_id.clone(),
                protocol_version: version,
            });
        }
        InitializeOutcome::Answered {
            line: response.to_line(),
            succeeded,
        }
    }

    async fn forward(
        &mut self,
        messages: Vec<Message>,
        stream: Option<StreamId>,
    ) -> Result<(), SessionError> {
        let has_request = messages
            .iter()
            .any(|m| matches!(m, Message::Request { .. }));
        if has_request && self.child.is_none() {
            match self.spawn_child(true).await {
                Ok(()) => {}
                Err(SpawnError::GrantDead) => {
                    // Answered on the stream as well, in case nobody waits for the verdict.
                    for message in messages {
                        if let (Message::Request { id, .. }, Some(stream)) = (message, stream) {
                            self.refuse_request(
                                stream,
                                &id,
                                codes::CHILD_UNAVAILABLE,
                                &SpawnError::GrantDead.client_message(),
                            );
                        }
                    }
                    return Err(SessionError::Gone);
                }
                Err(error) => {
                    // Requests get a JSON-RPC error, never silence (item 142).
                    for message in messages {
                        if let (Message::Request { id, .. }, Some(stream)) = (message, stream) {
                            self.refuse_request(
                                stream,
                                &id,
                                codes::CHILD_UNAVAILABLE,
                                &error.client_message(),
                            );
                        }
                    }
                    return Ok(());
                }
            }
        }
        for message in messages {
            match message {
                Message::Request { .. } => {
                    if let Some(stream) = stream {
                        self.forward_request(message, stream).await;
                    }
                }
                Message::Notification { .. } => self.forward_notification(message).await,
                Message::Response { .. } => self.forward_response(message).await,
            }
        }
        Ok(())
    }

    async fn forward_request(&mut self, message: Message, stream: StreamId) {
        let Message::Request {
            id: client_id,
            method,
            params,
        } = &message
        else {
            return;
        };
        if self.child.is_none() {
            // The child died while an earlier message of this batch was written.
            self.refuse_request(
                stream,
                client_id,
                codes::CHILD_UNAVAILABLE,
                "the MCP server stopped; retry the request",
            );
            return;
        }
        let peek = jsonrpc::peek(params.as_deref());
        let broker_id = self.allocate_id();
        let progress_token = peek
            .meta
            .as_ref()
            .and_then(|meta| meta.progress_token.as_ref())
            .map(|token| token.get().to_owned());
        if let Some(token) = &progress_token {
            self.progress.insert(token.clone(), stream);
        }
        self.remember_replay_state(method, &peek);
        self.pending.insert(
            broker_id,
            Pending::Client {
                client_id: client_id.clone(),
                stream,
                progress_token,
                deadline: Instant::now() + self.ctx.config.request_timeout(),
                tool: (method == "tools/call").then(|| audited_tool_name(peek.name.as_deref())),
            },
        );
        // The request keeps the in-flight share the HTTP side reserved for it until it is
        // answered ([`Actor::finish_client_request`]).
        let line = message.to_line_with_id(Some(&Id::number(broker_id)));
        self.write_line(line).await;
    }

    /// Subscriptions and the log level are child state the client set up once; a respawned
    /// child must get them again (item 141).
    fn remember_replay_state(&mut self, method: &str, peek: &jsonrpc::PeekParams) {
        let changed = match (method, &peek.uri, &peek.level) {
            ("resources/subscribe", Some(uri), _) => self.record.subscriptions.insert(uri.clone()),
            ("resources/unsubscribe", Some(uri), _) => self.record.subscriptions.remove(uri),
            ("logging/setLevel", _, Some(level)) => {
                self.record.log_level = Some(level.clone());
                true
            }
            _ => false,
        };
        if changed
            && let Err(error) = self.ctx.store.save_replay_state(
                &self.shared.key,
                &self.record.subscriptions,
                self.record.log_level.as_deref(),
            )
        {
            tracing::error!(session = %self.shared.label, %error, "cannot save subscriptions");
        }
    }

    async fn forward_notification(&mut self, message: Message) {
        if self.child.is_none() {
            // Nothing to tell a hibernated child: cancellations refer to requests of a child
            // that is gone, and `initialized` is replayed on respawn.
            return;
        }
        if message.method() == Some("notifications/cancelled") {
            // Map the client's id to ours (item 148); unknown ids are dropped (MAY ignore).
            let peek = jsonrpc::peek(message.params());
            let Some(request_id) = peek.request_id else {
                return;
            };
            let found = self
                .pending
                .iter()
                .find_map(|(broker_id, pending)| match pending {
                    Pending::Client { client_id, .. } if client_id.key() == request_id.get() => {
                        Some(*broker_id)
                    }
                    _ => None,
                });
            let Some(broker_id) = found else {
                return;
            };
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
                    codes::CANCELLED,
                    "request cancelled by the client",
                );
            }
            let line = jsonrpc::notification_line(
                "notifications/cancelled",
                Some(
                    &serde_json::json!({"requestId": broker_id, "reason": "cancelled by the client"}),
                ),
            );
            self.write_line(line).await;
            return;
        }
        self.write_line(message.to_line()).await;
    }

    async fn forward_response(&mut self, message: Message) {
        let Message::Response { id, .. } = &message else {
            return;
        };
        let Some(child_id) = id
            .as_str()
            .and_then(|key| self.outbound_number(&key))
            .and_then(|n| self.outbound.remove(&n))
        else {
            // A response for a request of an earlier child (or unknown): nobody waits for it.
            return;
        };
        if self.child.is_some() {
            self.write_line(message.to_line_with_id(Some(&child_id)))
                .await;
        }
    }

    fn allocate_id(&mut self) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn answer_error(&self, stream: StreamId, id: &Id, code: i64, message: &str) {
        let line = jsonrpc::error_line(Some(id), code, message);
        if let Ok(mut streams) = self.shared.streams.lock() {
            streams.deliver_response(stream, Arc::from(line));
        }
    }

    fn finish_client_request(&mut self, progress_token: Option<&str>) {
        if let Some(token) = progress_token {
            self.progress.remove(token);
        }
        self.release_reservation();
    }

    async fn write_line(&mut self, line: String) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let timeout = self.ctx.config.write_timeout();
        // A client's raw values keep its line breaks; the child must see one line per message.
        let mut line = jsonrpc::single_line(line);
        // One write per message: the line and its newline together (stdin is unbuffered).
        line.push('\n');
        let write = async {
            child.stdin.write_all(line.as_bytes()).await?;
            child.stdin.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => self.child_failed("its stdin is closed").await,
            Err(_) => self.child_failed("it stopped reading its stdin").await,
        }
    }

    // ---- child → client -------------------------------------------------------------------

    async fn handle_line_event(&mut self, event: LineEvent) {
        match event {
            LineEvent::Line(bytes) => self.handle_line(&bytes),
            LineEvent::TooLong => {
                let limit = self.ctx.config.max_line_bytes;
                self.child_failed(&format!(
                    "it sent a message larger than the {limit}-byte line limit"
                ))
                .await;
            }
            LineEvent::Eof => self.child_failed("it exited").await,
        }
    }

    fn handle_line(&mut self, bytes: &[u8]) {
        let Ok(text) = std::str::from_utf8(bytes) else {
            tracing::warn!(session = %self.shared.label, "child wrote a line that is not UTF-8; ignored");
            return;
        };
        let message = match jsonrpc::RawMessage::parse(text) {
            Ok(raw) => {
                // The common case, the answer to a client's request, is forwarded as the child
                // wrote it with only the id replaced: its result is neither copied into a
                // message nor serialised again.
                if let Some(response) = jsonrpc::ResponseRef::of(text, &raw)
                    && self.answer_client(&response)
                {
                    return;
                }
                Message::try_from(raw)
            }
            Err(error) => Err(error),
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                // Item 139: only MCP messages belong on stdout. Tolerate stray output rather
                // than kill a child that logs to the wrong stream, but say so.
                tracing::warn!(session = %self.shared.label, %error, "child wrote a line that is not a JSON-RPC message; ignored");
                return;
            }
        };
        match &message {
            Message::Response { id, .. } => self.route_response(message_id_i64(id), message),
            Message::Request { id, .. } => {
                let n = self.next_outbound;
                self.next_outbound += 1;
                if self.outbound.len() >= MAX_OUTBOUND_REQUESTS
                    && let Some((forgotten, _)) = self.outbound.pop_first()
                {
                    tracing::warn!(session = %self.shared.label, forgotten, "the MCP server has too many requests to the client unanswered; the oldest is forgotten");
                }
                self.outbound.insert(n, id.clone());
                let line = message.to_line_with_id(Some(&Id::string(&self.outbound_id(n))));
                self.deliver_unrelated(line);
            }
            Message::Notification { method, .. } => {
                let peek = jsonrpc::peek(message.params());
                if method == "notifications/progress" {
                    let owner = peek
                        .progress_token
                        .as_ref()
                        .and_then(|token| self.progress.get(token.get()).copied());
                    if let Ok(mut streams) = self.shared.streams.lock() {
                        streams.deliver_related(owner, Arc::from(message.to_line()));
                    }
                } else if method == "notifications/cancelled" {
                    // The child gave up on one of its requests to the client: use the id the
                    // client knows.
                    let known = peek.request_id.as_ref().and_then(|child_id| {
                        self.outbound
                            .iter()
                            .find(|(_, id)| id.key() == child_id.get())
                            .map(|(n, _)| *n)
                    });
                    if let Some(n) = known {
                        self.outbound.remove(&n);
                        let line = jsonrpc::notification_line(
                            "notifications/cancelled",
                            Some(&serde_json::json!({"requestId": self.outbound_id(n)})),
                        );
                        self.deliver_unrelated(line);
                    }
                } else {
                    self.deliver_unrelated(message.to_line());
                }
            }
        }
    }

    fn outbound_id(&self, n: u64) -> String {
        format!("srv-{}-{n}", self.outbound_tag)
    }

    /// `N` of an id this actor gave out as `srv-{tag}-{N}`.
    fn outbound_number(&self, id: &str) -> Option<u64> {
        id.strip_prefix("srv-")?
            .strip_prefix(self.outbound_tag.as_str())?
            .strip_prefix('-')?
            .parse()
            .ok()
    }

    fn deliver_unrelated(&self, line: String) {
        if let Ok(mut streams) = self.shared.streams.lock() {
            streams.deliver_unrelated(Arc::from(line));
        }
    }

    fn route_response(&mut self, broker_id: Option<i64>, message: Message) {
        let Some(pending) = broker_id.and_then(|id| self.pending.remove(&id)) else {
            // Late (after a timeout or cancellation) or never asked: drop.
            return;
        };
        match pending {
            Pending::Internal {
                initialize: true, ..
            } => {
                if let Message::Response { outcome, .. } = message {
                    self.init_result = Some(outcome);
                }
            }
            Pending::Internal {
                initialize: false, ..
            } => {}
            Pending::Client {
                client_id,
                stream,
                progress_token,
                tool,
                ..
            } => {
                let is_error = !matches!(
                    &message,
                    Message::Response {
                        outcome: Outcome::Result(_),
                        ..
                    }
                );
                let line = message.to_line_with_id(Some(&client_id));
                self.deliver_answer(stream, progress_token, tool, is_error, line);
            }
        }
    }

    /// Answers a client's request with `response` if it is the answer to one (then `true`).
    fn answer_client(&mut self, response: &jsonrpc::ResponseRef<'_>) -> bool {
        let Some(broker_id) = response.id_i64() else {
            return false;
        };
        if !matches!(self.pending.get(&broker_id), Some(Pending::Client { .. })) {
            return false;
        }
        let Some(Pending::Client {
            client_id,
            stream,
            progress_token,
            tool,
            ..
        }) = self.pending.remove(&broker_id)
        else {
            return false;
        };
        let line = response.with_id(&client_id).unwrap_or_else(|| {
            // The parser did not borrow the id from the line (it always does): re-serialise.
            Message::parse(response.line()).map_or_else(
                |_| {
                    jsonrpc::error_line(
                        Some(&client_id),
                        codes::INTERNAL_ERROR,
                        "the MCP server's answer could not be forwarded",
                    )
                },
                |message| message.to_line_with_id(Some(&client_id)),
            )
        });
        self.deliver_answer(stream, progress_token, tool, response.is_error, line);
        true
    }

    /// The end of a client's request: its bookkeeping, its audit record, its answer.
    fn deliver_answer(
        &mut self,
        stream: StreamId,
        progress_token: Option<String>,
        tool: Option<String>,
        is_error: bool,
        line: String,
    ) {
        self.finish_client_request(progress_token.as_deref());
        if let Some(tool) = tool {
            self.ctx.audit.record(AuditEvent::ToolCalled {
                session: self.shared.label.clone(),
                user_id: self.shared.user_id,
                tool,
                outcome: if is_error { "error" } else { "ok" },
            });
        }
        if let Ok(mut streams) = self.shared.streams.lock() {
            streams.deliver_response(stream, Arc::from(line));
        }
    }
}

fn message_id_i64(id: &Id) -> Option<i64> {
    id.as_i64()
}

/// A record for a session that has not been initialized yet.
pub fn new_record(
    key: &str,
    user_id: UserId,
    client_id: &str,
    grant_id: &str,
    legacy: bool,
    now: i64,
    expires_at: i64,
) -> SessionRecord {
    SessionRecord {
        id_hash: key.to_owned(),
        user_id,
        client_id: client_id.to_owned(),
        grant_id: grant_id.to_owned(),
        legacy,
        protocol_version: None,
        initialize_params: None,
        initialize_result: None,
        subscriptions: BTreeSet::new(),
        log_level: None,
        created_at: now,
        last_seen: now,
        expires_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audited_tool_name_is_bounded() {
        assert_eq!(audited_tool_name(Some("create_issue")), "create_issue");
        assert_eq!(audited_tool_name(None), "");
        let long = "é".repeat(10_000);
        let kept = audited_tool_name(Some(&long));
        assert_eq!(kept.chars().count(), 129, "128 characters and an ellipsis");
        assert!(kept.ends_with('…'));
    }
}
