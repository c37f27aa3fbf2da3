//! The streams of one session and the routing rule that puts every child message on exactly
//! one of them (checklist items 108, 137).
//!
//! A stream is a POST's answer (SSE or plain JSON), the GET stream, or a legacy `/sse`
//! connection. Each SSE stream keeps a bounded replay buffer keyed by event id, so a client
//! that lost the connection resumes with `Last-Event-ID` and gets what it missed *on that
//! stream only* (items 109–112). Event ids are `{epoch}-{stream}-{seq}`: unique across the
//! session's streams (item 109), and the epoch (fresh each time a session is loaded into
//! memory) keeps ids from before a broker restart from matching new streams.
//!
//! The table lives behind a plain mutex shared by the session actor (which delivers) and the
//! HTTP handlers (which attach and detach); no critical section awaits.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::mpsc;

/// What an HTTP response body receives.
#[derive(Debug, Clone)]
pub enum Frame {
    /// One JSON-RPC message, with its SSE event id (none on JSON responses).
    Message {
        event_id: Option<String>,
        json: Arc<str>,
    },
    /// The stream is complete (all responses delivered): end the body.
    End,
}

pub type StreamId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// A POST answered as `application/json`: carries only its responses, no event ids.
    Json,
    /// A POST answered as `text/event-stream`.
    PostSse,
    /// The GET stream (server → client, item 106).
    Get,
    /// A 2024-11-05 `/sse` connection: carries everything of its session (item 125).
    Legacy,
}

struct Stream {
    kind: StreamKind,
    next_seq: u64,
    replay: VecDeque<(u64, Arc<str>)>,
    live: Option<mpsc::Sender<Frame>>,
    awaiting_responses: usize,
    finished: bool,
}

impl Stream {
    fn is_live(&self) -> bool {
        self.live.as_ref().is_some_and(|sender| !sender.is_closed())
    }
}

/// Where a routed message ended up (for tests and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Stream(StreamId),
    Queued,
    /// The queue was full; the oldest queued message was dropped to make room.
    QueuedDroppingOldest,
}

pub struct StreamTable {
    epoch: String,
    next_stream: StreamId,
    streams: HashMap<StreamId, Stream>,
    /// Stream ids in creation order, to forget the oldest finished ones first.
    order: VecDeque<StreamId>,
    get_stream: Option<StreamId>,
    legacy_stream: Option<StreamId>,
    queue: VecDeque<Arc<str>>,
    replay_capacity: usize,
    queue_capacity: usize,
    /// Bytes held by replay buffers and the queue together, and the most they may hold.
    retained_bytes: usize,
    max_retained_bytes: usize,
    max_streams: usize,
    live_capacity: usize,
}

impl StreamTable {
    pub fn new(
        epoch: String,
        replay_capacity: usize,
        queue_capacity: usize,
        max_retained_bytes: usize,
    ) -> Self {
        Self {
            epoch,
            next_stream: 1,
            streams: HashMap::new(),
            order: VecDeque::new(),
            get_stream: None,
            legacy_stream: None,
            queue: VecDeque::new(),
            replay_capacity: replay_capacity.max(1),
            queue_capacity: queue_capacity.max(1),
            retained_bytes: 0,
            max_retained_bytes,
            max_streams: 64,
            live_capacity: 256,
        }
    }

    /// Opens a stream with a live receiver. `awaiting` is the number of responses it carries
    /// before it ends (0 for GET and legacy streams, which end only when the client leaves).
    pub fn open(&mut self, kind: StreamKind, awaiting: usize) -> (StreamId, mpsc::Receiver<Frame>) {
        let id = self.next_stream;
        self.next_stream += 1;
        let (sender, receiver) = mpsc::channel(self.live_capacity);
        self.streams.insert(
            id,
            Stream {
                kind,
                next_seq: 1,
                replay: VecDeque::new(),
                live: Some(sender),
                awaiting_responses: awaiting,
                finished: false,
            },
        );
        self.order.push_back(id);
        match kind {
            StreamKind::Get => {
                // One GET stream at a time: a reconnect (Claude switches nodes) replaces the
                // old one rather than being refused, and the old connection is ended.
                if let Some(old) = self.get_stream.replace(id)
                    && let Some(stream) = self.streams.get_mut(&old)
                {
                    stream.finished = true;
                    if let Some(live) = stream.live.take() {
                        let _ = live.try_send(Frame::End);
                    }
                }
            }
            StreamKind::Legacy => self.legacy_stream = Some(id),
            StreamKind::Json | StreamKind::PostSse => {}
        }
        self.forget_old_streams();
        if kind != StreamKind::Json {
            self.drain_queue_into(id);
        }
        (id, receiver)
    }

    /// The priming event of a new SSE stream (item 103): an id and empty data.
    pub fn priming_event_id(&mut self, stream: StreamId) -> Option<String> {
        let entry = self.streams.get_mut(&stream)?;
        let seq = entry.next_seq;
        entry.next_seq += 1;
        Some(format!("{}-{stream}-{seq}", self.epoch))
    }

    /// Keeps at most `max_streams`: the oldest finished streams go first; a disconnected one
    /// that still awaits a response (its client may resume it with `Last-Event-ID`) goes only
    /// when no finished stream is left to forget.
    fn forget_old_streams(&mut self) {
        while self.streams.len() > self.max_streams {
            let forgettable = |finished_only: bool| {
                self.order.iter().position(|id| {
                    Some(*id) != self.get_stream
                        && Some(*id) != self.legacy_stream
                        && self.streams.get(id).is_none_or(|stream| {
                            stream.finished || (!finished_only && !stream.is_live())
                        })
                })
            };
            let Some(position) = forgettable(true).or_else(|| forgettable(false)) else {
                return;
            };
            if let Some(id) = self.order.remove(position)
                && let Some(stream) = self.streams.remove(&id)
            {
                self.retained_bytes -= stream
                    .replay
                    .iter()
                    .map(|(_, json)| json.len())
                    .sum::<usize>();
            }
        }
    }

    fn drain_queue_into(&mut self, id: StreamId) {
        while let Some(json) = self.queue.pop_front() {
            self.retained_bytes -= json.len();
            self.push(id, json);
        }
    }

    /// Appends to a stream's replay buffer and sends it live if a connection is attached. A
    /// message pushed to a stream belongs to that stream from then on, connected or not.
    fn push(&mut self, id: StreamId, json: Arc<str>) {
        let epoch = &self.epoch;
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let seq = stream.next_seq;
        stream.next_seq += 1;
        let replayable = stream.kind != StreamKind::Json;
        if replayable {
            if stream.replay.len() >= self.replay_capacity
                && let Some((_, dropped)) = stream.replay.pop_front()
            {
                self.retained_bytes -= dropped.len();
            }
            self.retained_bytes += json.len();
            stream.replay.push_back((seq, json.clone()));
        }
        if let Some(live) = &stream.live {
            let event_id = replayable.then(|| format!("{epoch}-{id}-{seq}"));
            if live.try_send(Frame::Message { event_id, json }).is_err() {
                // Closed, or the client reads too slowly: detach. The message stays in the
                // replay buffer; the client resumes with Last-Event-ID.
                stream.live = None;
            }
        }
        self.trim_to_budget();
    }

    /// A response to a request of `stream`; ends the stream after its last response.
    pub fn deliver_response(&mut self, id: StreamId, json: Arc<str>) {
        self.push(id, json);
        if let Some(stream) = self.streams.get_mut(&id)
            && stream.kind != StreamKind::Get
            && stream.kind != StreamKind::Legacy
        {
            stream.awaiting_responses = stream.awaiting_responses.saturating_sub(1);
            if stream.awaiting_responses == 0 {
                stream.finished = true;
                if let Some(live) = stream.live.take() {
                    let _ = live.try_send(Frame::End);
                }
            }
        }
    }

    /// A notification or child → client request related to a request of `owner` (progress,
    /// item 137): that stream if it is an open SSE stream, else the general rule.
    pub fn deliver_related(&mut self, owner: Option<StreamId>, json: Arc<str>) -> Placement {
        if let Some(id) = owner
            && self.streams.get(&id).is_some_and(|stream| {
                matches!(stream.kind, StreamKind::PostSse | StreamKind::Legacy) && !stream.finished
            })
        {
            self.push(id, json);
            return Placement::Stream(id);
        }
        self.deliver_unrelated(json)
    }

    /// Everything else (item 137): the legacy stream, else the GET stream if connected, else a
    /// connected POST SSE stream (the newest), else the bounded queue.
    pub fn deliver_unrelated(&mut self, json: Arc<str>) -> Placement {
        let target = self
            .legacy_stream
            .filter(|id| self.streams.get(id).is_some_and(|s| !s.finished))
            .or_else(|| {
                self.get_stream.filter(|id| {
                    self.streams
                        .get(id)
                        .is_some_and(|s| !s.finished && s.is_live())
                })
            })
            .or_else(|| {
                self.order.iter().rev().copied().find(|id| {
                    self.streams.get(id).is_some_and(|s| {
                        s.kind == StreamKind::PostSse && !s.finished && s.is_live()
                    })
                })
            });
        if let Some(id) = target {
            self.push(id, json);
            return Placement::Stream(id);
        }
        let mut placement = Placement::Queued;
        if self.queue.len() >= self.queue_capacity
            && let Some(dropped) = self.queue.pop_front()
        {
            self.retained_bytes -= dropped.len();
            placement = Placement::QueuedDroppingOldest;
        }
        self.retained_bytes += json.len();
        self.queue.push_back(json);
        if self.trim_to_budget() {
            placement = Placement::QueuedDroppingOldest;
        }
        placement
    }

    /// Drops what the session holds beyond its byte budget: the oldest replayable events
    /// first (they were sent, or belong to a stream the client may never resume), then the
    /// oldest queued messages. Whether a queued message had to go.
    fn trim_to_budget(&mut self) -> bool {
        let mut dropped_queued = false;
        while self.retained_bytes > self.max_retained_bytes {
            let oldest = self.order.iter().copied().find(|id| {
                self.streams
                    .get(id)
                    .is_some_and(|stream| !stream.replay.is_empty())
            });
            let dropped = oldest
                .and_then(|id| self.streams.get_mut(&id))
                .and_then(|stream| stream.replay.pop_front());
            if let Some((_, dropped)) = dropped {
                self.retained_bytes -= dropped.len();
            } else if let Some(dropped) = self.queue.pop_front() {
                self.retained_bytes -= dropped.len();
                dropped_queued = true;
            } else {
                break;
            }
        }
        dropped_queued
    }

    /// Resumes a stream after `last_event_id` (items 110–112): returns the messages after it
    /// and, unless the stream is complete, a receiver for what comes next. `None` when the id
    /// is not one of this session's (then the caller opens a fresh GET stream).
    pub fn resume(
        &mut self,
        last_event_id: &str,
    ) -> Option<(Vec<Frame>, Option<mpsc::Receiver<Frame>>)> {
        let (epoch, rest) = last_event_id.rsplit_once('-').and_then(|(head, seq)| {
            let (epoch, stream) = head.rsplit_once('-')?;
            Some((
                epoch,
                (stream.parse::<StreamId>().ok()?, seq.parse::<u64>().ok()?),
            ))
        })?;
        if epoch != self.epoch {
            return None;
        }
        let (id, after) = rest;
        let epoch_owned = self.epoch.clone();
        let live_capacity = self.live_capacity;
        let stream = self.streams.get_mut(&id)?;
        if stream.kind == StreamKind::Json {
            return None;
        }
        let frames: Vec<Frame> = stream
            .replay
            .iter()
            .filter(|(seq, _)| *seq > after)
            .map(|(seq, json)| Frame::Message {
                event_id: Some(format!("{epoch_owned}-{id}-{seq}")),
                json: json.clone(),
            })
            .collect();
        if stream.finished {
            return Some((frames, None));
        }
        let (sender, receiver) = mpsc::channel(live_capacity);
        if let Some(old) = stream.live.replace(sender) {
            let _ = old.try_send(Frame::End);
        }
        // A stream that is connected again takes what waited for one, as a new one would.
        self.drain_queue_into(id);
        Some((frames, Some(receiver)))
    }

    /// Ends every stream (session deleted or expired).
    pub fn close_all(&mut self) {
        for stream in self.streams.values_mut() {
            stream.finished = true;
            if let Some(live) = stream.live.take() {
                let _ = live.try_send(Frame::End);
            }
        }
        self.queue.clear();
    }

    pub fn legacy_stream(&self) -> Option<StreamId> {
        self.legacy_stream
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn has_live_get(&self) -> bool {
        self.get_stream
            .and_then(|id| self.streams.get(&id))
            .is_some_and(|s| !s.finished && s.is_live())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &str) -> Arc<str> {
        Arc::from(text)
    }

    fn next_json(receiver: &mut mpsc::Receiver<Frame>) -> Option<String> {
        match receiver.try_recv() {
            Ok(Frame::Message { json, .. }) => Some(json.to_string()),
            _ => None,
        }
    }

    #[test]
    fn notifications_prefer_get_then_post_then_queue() {
        let mut table = StreamTable::new("e".into(), 8, 2, 1 << 20);
        assert_eq!(table.deliver_unrelated(msg("a")), Placement::Queued);
        let (post, mut post_rx) = table.open(StreamKind::PostSse, 1);
        // Opening a stream drains the queue into it.
        assert_eq!(next_json(&mut post_rx).as_deref(), Some("a"));
        assert_eq!(table.deliver_unrelated(msg("b")), Placement::Stream(post));
        let (get, mut get_rx) = table.open(StreamKind::Get, 0);
        assert_eq!(table.deliver_unrelated(msg("c")), Placement::Stream(get));
        assert_eq!(next_json(&mut get_rx).as_deref(), Some("c"));
        assert_eq!(next_json(&mut post_rx).as_deref(), Some("b"));
        assert_eq!(
            next_json(&mut post_rx),
            None,
            "exactly one stream per message"
        );
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut table = StreamTable::new("e".into(), 8, 2, 1 << 20);
        table.deliver_unrelated(msg("1"));
        table.deliver_unrelated(msg("2"));
        assert_eq!(
            table.deliver_unrelated(msg("3")),
            Placement::QueuedDroppingOldest
        );
        assert_eq!(table.queued(), 2);
    }

    #[test]
    fn a_post_stream_ends_after_its_responses_and_replays_what_was_missed() {
        let mut table = StreamTable::new("e".into(), 8, 8, 1 << 20);
        let (post, mut rx) = table.open(StreamKind::PostSse, 2);
        table.deliver_related(Some(post), msg("progress"));
        let Ok(Frame::Message {
            event_id: Some(first),
            ..
        }) = rx.try_recv()
        else {
            panic!("expected the progress event");
        };
        drop(rx); // the client lost the connection
        table.deliver_response(post, msg("r1"));
        table.deliver_response(post, msg("r2"));
        let (frames, live) = table.resume(&first).unwrap();
        let replayed: Vec<String> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::Message { json, .. } => Some(json.to_string()),
                Frame::End => None,
            })
            .collect();
        assert_eq!(replayed, ["r1", "r2"]);
        assert!(live.is_none(), "the stream is complete");
    }

    #[test]
    fn a_disconnected_stream_awaiting_its_response_outlives_finished_ones() {
        let mut table = StreamTable::new("e".into(), 8, 8, 1 << 20);
        let (waiting, rx) = table.open(StreamKind::PostSse, 1);
        let primed = table.priming_event_id(waiting).unwrap();
        drop(rx); // the client lost the connection while the request runs
        for _ in 0..100 {
            let (done, _rx) = table.open(StreamKind::PostSse, 1);
            table.deliver_response(done, msg("quick"));
        }
        table.deliver_response(waiting, msg("slow"));
        let (frames, live) = table.resume(&primed).expect("the stream is still there");
        assert!(live.is_none(), "it ended with its response");
        assert!(
            matches!(frames.as_slice(), [Frame::Message { json, .. }] if json.as_ref() == "slow")
        );
    }

    /// What the table holds, counted the slow way.
    fn held(table: &StreamTable) -> usize {
        let replay: usize = table
            .streams
            .values()
            .flat_map(|stream| stream.replay.iter())
            .map(|(_, json)| json.len())
            .sum();
        replay + table.queue.iter().map(|json| json.len()).sum::<usize>()
    }

    #[test]
    fn a_session_holds_at_most_its_byte_budget_oldest_first() {
        let ten = "0123456789";
        let mut table = StreamTable::new("e".into(), 100, 100, 36);
        // Queued only: the fourth message pushes the oldest out.
        for n in 0..3 {
            assert_eq!(
                table.deliver_unrelated(msg(&format!("q{n}{ten}"))),
                Placement::Queued
            );
        }
        assert_eq!(
            table.deliver_unrelated(msg(&format!("q3{ten}"))),
            Placement::QueuedDroppingOldest
        );
        assert_eq!(table.queued(), 3);
        assert_eq!(held(&table), table.retained_bytes);
        // A stream takes the queue; its oldest replayable events go before newer ones.
        let (post, rx) = table.open(StreamKind::PostSse, 10);
        let primed = table.priming_event_id(post).unwrap();
        drop(rx);
        for n in 0..5 {
            table.deliver_related(Some(post), msg(&format!("g{n}{ten}")));
            assert!(table.retained_bytes <= 36);
            assert_eq!(held(&table), table.retained_bytes);
        }
        let (frames, _) = table.resume(&primed).unwrap();
        let replayed: Vec<String> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::Message { json, .. } => Some(json.to_string()),
                Frame::End => None,
            })
            .collect();
        assert_eq!(
            replayed,
            [format!("g2{ten}"), format!("g3{ten}"), format!("g4{ten}")]
        );
        // Forgotten streams give their bytes back.
        for _ in 0..80 {
            let (post, _rx) = table.open(StreamKind::PostSse, 1);
            table.deliver_response(post, msg("r"));
            assert_eq!(held(&table), table.retained_bytes);
        }
    }

    #[test]
    fn a_resumed_stream_takes_what_was_queued() {
        let mut table = StreamTable::new("e".into(), 8, 8, 1 << 20);
        let (get, rx) = table.open(StreamKind::Get, 0);
        let primed = table.priming_event_id(get).unwrap();
        drop(rx); // the client lost the connection: nothing is live
        assert_eq!(
            table.deliver_unrelated(msg("while away")),
            Placement::Queued
        );
        let (frames, live) = table.resume(&primed).unwrap();
        assert!(frames.is_empty());
        let mut live = live.expect("the GET stream goes on");
        assert_eq!(next_json(&mut live).as_deref(), Some("while away"));
        assert_eq!(table.queued(), 0);
    }

    #[test]
    fn foreign_or_stale_event_ids_are_not_resumed() {
        let mut table = StreamTable::new("epoch1".into(), 8, 8, 1 << 20);
        let _ = table.open(StreamKind::Get, 0);
        assert!(table.resume("epoch0-1-1").is_none());
        assert!(table.resume("epoch1-99-1").is_none());
        assert!(table.resume("garbage").is_none());
        assert!(table.resume("epoch1-1-0").is_some());
    }

    #[test]
    fn a_new_get_stream_replaces_the_old_one() {
        let mut table = StreamTable::new("e".into(), 8, 8, 1 << 20);
        let (_, mut old) = table.open(StreamKind::Get, 0);
        let (new, _new_rx) = table.open(StreamKind::Get, 0);
        assert!(matches!(old.try_recv(), Ok(Frame::End)));
        assert_eq!(table.deliver_unrelated(msg("x")), Placement::Stream(new));
    }
}
