//! The audit log writer: one named thread owns the file; components hand it events through a
//! bounded queue and never wait on the disk.
//!
//! The queue is bounded so a flood cannot grow memory; when it is full the event is dropped and
//! counted (`audit_dropped_total`), which an operator must treat as an incident. Write errors
//! are counted too (`audit_write_errors_total`) and logged without the event's content.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::chain::{AuditKey, ChainHead, RawLine, line_hash};
use super::{AuditEvent, AuditSink};
use crate::clock::{SharedClock, UnixSeconds};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum AuditWriterError {
    #[error("cannot open audit log {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "audit log {path} does not end (or start) with an audit record; refusing to continue its chain"
    )]
    Corrupt { path: PathBuf },
    #[error("cannot start the audit writer thread: {0}")]
    Thread(std::io::Error),
}

/// Resolved `[audit]` settings the writer needs.
#[derive(Debug, Clone)]
pub struct AuditFileConfig {
    pub path: PathBuf,
    pub rotate_bytes: u64,
    pub checkpoint_every_lines: u64,
    pub checkpoint_every: Duration,
    pub queue_capacity: usize,
}

/// Most records one write carries.
const MAX_BATCH: usize = 256;

/// Writes are paced at most one per this interval (group commit). An event that follows a
/// write by less waits out the rest of it, so under load one wake-up, lock and write serve
/// every record of the interval instead of one each; an isolated event is written at once, and
/// a backlog (a full batch) without pause. Records are not durable before the next
/// checkpoint's fsync anyway, so the wait costs no durability.
const WRITE_INTERVAL: Duration = Duration::from_millis(2);

/// Lines serialised but not yet written.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    first_seq: Option<u64>,
    records: u64,
}

impl Pending {
    fn push(&mut self, line: &str) {
        self.bytes.extend_from_slice(line.as_bytes());
        self.bytes.push(b'\n');
    }
}

enum Message {
    Event(UnixSeconds, Box<AuditEvent>),
    /// The checkpoint key, once the vault that holds it is open.
    Key(AuditKey),
    /// Write a checkpoint if anything is pending, fsync, then answer.
    Flush(SyncSender<()>),
    Close,
}

/// The file-backed [`AuditSink`]. Call [`FileAudit::close`] at shutdown (outside async code) to
/// write the final checkpoint; dropping the last handle does the same.
pub struct FileAudit {
    sender: SyncSender<Message>,
    thread: Mutex<Option<JoinHandle<()>>>,
    clock: SharedClock,
    metrics: Metrics,
    dropped: AtomicU64,
    write_errors: Arc<AtomicU64>,
}

impl std::fmt::Debug for FileAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileAudit").finish_non_exhaustive()
    }
}

/// Rotated files are `{stem}.{first seq, 12 digits}.{ext}` beside the active file, so a
/// directory listing sorts them in chain order.
pub fn rotated_path(active: &Path, first_seq: u64) -> PathBuf {
    let stem = active
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "audit".to_owned());
    let extension = active
        .extension()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "log".to_owned());
    active.with_file_name(format!("{stem}.{first_seq:012}.{extension}"))
}

/// Every file of the log at `active` (rotated ones first, in chain order, then the active one
/// if it exists).
pub fn log_files(active: &Path) -> Vec<PathBuf> {
    let directory = active
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let stem = active
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let extension = active
        .extension()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "log".to_owned());
    let mut rotated: Vec<(u64, PathBuf)> = std::fs::read_dir(directory)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let middle = name
                .strip_prefix(&format!("{stem}."))?
                .strip_suffix(&format!(".{extension}"))?;
            if middle.len() != 12 || !middle.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((middle.parse().ok()?, entry.path()))
        })
        .collect();
    rotated.sort();
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, path)| path).collect();
    if active.exists() {
        files.push(active.to_path_buf());
    }
    files
}

impl FileAudit {
    /// Opens (or creates) the log, resumes its chain, and starts the writer thread.
    pub fn open(
        config: AuditFileConfig,
        key: AuditKey,
        clock: SharedClock,
        metrics: Metrics,
    ) -> Result<Arc<Self>, AuditWriterError> {
        Self::open_with(config, Some(key), clock, metrics)
    }

    /// Opens the log before its checkpoint key is known: the key is in the vault, and opening
    /// the vault is itself audited. Records are chained and written at once; checkpoints wait
    /// for [`FileAudit::provide_key`], and the first one then covers everything before it.
    pub fn open_awaiting_key(
        config: AuditFileConfig,
        clock: SharedClock,
        metrics: Metrics,
    ) -> Result<Arc<Self>, AuditWriterError> {
        Self::open_with(config, None, clock, metrics)
    }

    /// Hands the writer its checkpoint key (see [`FileAudit::open_awaiting_key`]); a checkpoint
    /// follows at once if records are waiting for one.
    pub fn provide_key(&self, key: AuditKey) {
        if self.sender.send(Message::Key(key)).is_err() {
            tracing::error!(target: "audit", "audit writer stopped: checkpoint key not delivered");
        }
    }

    fn open_with(
        config: AuditFileConfig,
        key: Option<AuditKey>,
        clock: SharedClock,
        metrics: Metrics,
    ) -> Result<Arc<Self>, AuditWriterError> {
        let state = WriterState::open(&config, key, clock.clone(), metrics.clone())?;
        let (sender, receiver) = std::sync::mpsc::sync_channel(config.queue_capacity.max(1));
        let write_errors = Arc::clone(&state.write_errors);
        let thread = std::thread::Builder::new()
            .name("audit-writer".to_owned())
            .spawn(move || state.run(receiver))
            .map_err(AuditWriterError::Thread)?;
        Ok(Arc::new(Self {
            sender,
            thread: Mutex::new(Some(thread)),
            clock,
            metrics,
            dropped: AtomicU64::new(0),
            write_errors,
        }))
    }

    /// Waits until every event recorded so far is on disk, checkpointed and fsynced. Blocking:
    /// not for async code (use `spawn_blocking`).
    pub fn flush(&self) {
        let (reply, done) = std::sync::mpsc::sync_channel(1);
        if self.sender.send(Message::Flush(reply)).is_ok() {
            let _ = done.recv();
        }
    }

    /// Writes the final checkpoint and stops the writer. Blocking; idempotent.
    pub fn close(&self) {
        let thread = self
            .thread
            .lock()
            .map(|mut guard| guard.take())
            .unwrap_or_default();
        if let Some(thread) = thread {
            let _ = self.sender.send(Message::Close);
            if thread.join().is_err() {
                tracing::error!(task = "audit-writer", "audit writer thread panicked");
            }
        }
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }
}

impl Drop for FileAudit {
    fn drop(&mut self) {
        self.close();
    }
}

impl AuditSink for FileAudit {
    fn record(&self, event: AuditEvent) {
        let now = self.clock.now();
        match self.sender.try_send(Message::Event(now, Box::new(event))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.metrics.audit_dropped();
                tracing::error!(target: "audit", "audit queue full: event dropped");
            }
            Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.metrics.audit_dropped();
                tracing::error!(target: "audit", "audit writer stopped: event dropped");
            }
        }
    }
}

struct WriterState {
    config: AuditFileConfig,
    /// `None` until the vault is open; checkpoints wait for it.
    key: Option<AuditKey>,
    clock: SharedClock,
    metrics: Metrics,
    file: File,
    /// Inode of `file`: when the path names another inode, another process rotated the log.
    inode: u64,
    /// Length of `file` after this writer's last write; any other length means another
    /// process (an admin or vault command) appended meanwhile, so the chain head is re-read.
    size: u64,
    /// Seq of the active file's first line (names it when rotated).
    first_seq: Option<u64>,
    head: ChainHead,
    /// Whether `head` is where this writer knows the chain to be (after its first resync): a
    /// log found behind it later was cut or deleted, which no writer ever does.
    head_known: bool,
    /// Such a rewind, found by `resync`, to be recorded before anything else is written.
    rewound: Option<AuditEvent>,
    since_checkpoint: u64,
    /// When the file was last fsynced: checkpoints written under load are made durable at most
    /// once per [`SYNC_INTERVAL`].
    last_sync: Instant,
    write_errors: Arc<AtomicU64>,
}

/// Under load, how often a checkpoint written with a batch is fsynced (a quiet log's timer,
/// flush, close and rotation always fsync theirs).
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .open(path)
}

/// The first line, the last complete line and the length of the complete part of `file` (a
/// torn last line, left by a crash, is not part of it). Reads only the ends of the file.
fn read_ends(file: &File) -> std::io::Result<(Option<String>, Option<String>, u64)> {
    const WINDOW: u64 = 64 * 1024;
    let length = file.metadata()?.len();
    let read = |start: u64, end: u64| -> std::io::Result<Vec<u8>> {
        let mut buffer = vec![0u8; usize::try_from(end - start).unwrap_or(0)];
        file.read_exact_at(&mut buffer, start)?;
        Ok(buffer)
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    // The last complete line: the bytes between the last two newlines of a window that
    // holds both (or starts at the file's start).
    let mut window = WINDOW;
    let (last, complete) = loop {
        let start = length.saturating_sub(window);
        let chunk = read(start, length)?;
        let Some(end) = chunk.iter().rposition(|b| *b == b'\n') else {
            if start == 0 {
                break (None, 0);
            }
            window = window.saturating_mul(2);
            continue;
        };
        let complete = start + u64::try_from(end).unwrap_or(0) + 1;
        let before = chunk.get(..end).unwrap_or_default();
        match before.iter().rposition(|b| *b == b'\n') {
            Some(previous) => {
                break (
                    Some(text(before.get(previous + 1..).unwrap_or_default())),
                    complete,
                );
            }
            None if start == 0 => break (Some(text(before)), complete),
            None => window = window.saturating_mul(2),
        }
    };
    if complete == 0 {
        return Ok((None, None, 0));
    }
    let mut window = WINDOW.min(complete);
    let first = loop {
        let chunk = read(0, window)?;
        match chunk.iter().position(|b| *b == b'\n') {
            Some(end) => break text(chunk.get(..end).unwrap_or_default()),
            None => window = window.saturating_mul(2).min(complete),
        }
    };
    Ok((Some(first), last, complete))
}

/// Where the chain stands for an active file.
struct ChainPosition {
    head: ChainHead,
    /// Seq of the active file's first line.
    first_seq: Option<u64>,
    /// Length of the file's complete lines (a torn last line is not part of it).
    complete: u64,
    /// The last line is a checkpoint (or there is none): no record awaits one.
    covered: bool,
}

/// Where the chain stands for the active file `file` at `path`: after its last complete line;
/// if it has none, after the newest rotated file's last line; else at genesis.
fn chain_position(path: &Path, file: &File) -> Result<ChainPosition, AuditWriterError> {
    let corrupt = |path: &Path| AuditWriterError::Corrupt {
        path: path.to_path_buf(),
    };
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AuditWriterError::Open { path, source }
    };
    let (first, last, complete) = read_ends(file).map_err(io_error(path))?;
    let first_seq = match first {
        Some(first) => Some(RawLine::parse(&first).map_err(|_| corrupt(path))?.seq),
        None => None,
    };
    // The head after `line`, and whether `line` is a checkpoint (nothing left to cover).
    let head_after = |line: &str, path: &Path| -> Result<(ChainHead, bool), AuditWriterError> {
        let raw = RawLine::parse(line).map_err(|_| corrupt(path))?;
        let head = ChainHead {
            next_seq: raw.seq.saturating_add(1),
            prev: line_hash(line),
        };
        Ok((head, raw.checkpoint.is_some()))
    };
    let (head, covered) = match last {
        Some(last) => head_after(&last, path)?,
        None => match log_files(path).into_iter().rfind(|p| p != path) {
            Some(rotated) => {
                let rotated_file = File::open(&rotated).map_err(io_error(&rotated))?;
                match read_ends(&rotated_file).map_err(io_error(&rotated))? {
                    (_, Some(last), _) => head_after(&last, &rotated)?,
                    _ => (ChainHead::genesis(), true),
                }
            }
            None => (ChainHead::genesis(), true),
        },
    };
    Ok(ChainPosition {
        head,
        first_seq,
        complete,
        covered,
    })
}

impl WriterState {
    fn open(
        config: &AuditFileConfig,
        key: Option<AuditKey>,
        clock: SharedClock,
        metrics: Metrics,
    ) -> Result<Self, AuditWriterError> {
        let path = &config.path;
        let open_error = |source| AuditWriterError::Open {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(open_error)?;
        }
        let file = open_append(path).map_err(open_error)?;
        let inode = file.metadata().map_err(open_error)?.ino();
        let mut state = Self {
            config: config.clone(),
            key,
            clock,
            metrics,
            file,
            inode,
            // Forces the first locked operation to read the chain head.
            size: u64::MAX,
            first_seq: None,
            head: ChainHead::genesis(),
            head_known: false,
            rewound: None,
            since_checkpoint: 0,
            last_sync: Instant::now(),
            write_errors: Arc::new(AtomicU64::new(0)),
        };
        // Read the head now, so a corrupt log is refused at start rather than on first write.
        state.lock_active().map_err(open_error)?;
        let synced = state.resync();
        let _ = state.file.unlock();
        synced?;
        Ok(state)
    }

    fn run(mut self, receiver: Receiver<Message>) {
        // A message taken from the queue while gathering a batch, handled next.
        let mut carried = None;
        // When the last write was, if it left the queue empty (a full batch means a backlog,
        // which is written without pause).
        let mut last_write: Option<Instant> = None;
        // When the records pending a checkpoint must get one: `checkpoint_every` after the
        // first of them, however many follow (a fresh timeout per message would never fire
        // while events keep coming less than `checkpoint_every` apart).
        let mut checkpoint_due: Option<Instant> = None;
        loop {
            if self.since_checkpoint == 0 || self.key.is_none() {
                checkpoint_due = None;
            } else if checkpoint_due.is_none() {
                checkpoint_due = Some(Instant::now() + self.config.checkpoint_every);
            }
            if checkpoint_due.is_some_and(|due| due <= Instant::now()) {
                self.locked(Self::checkpoint_if_pending);
                checkpoint_due = None;
                continue;
            }
            let wait = checkpoint_due.map_or(self.config.checkpoint_every, |due| {
                due.saturating_duration_since(Instant::now())
            });
            let message = match carried.take() {
                Some(message) => Ok(message),
                None => receiver.recv_timeout(wait),
            };
            match message {
                Ok(Message::Event(time, event)) => {
                    // Whatever else is queued goes in the same locked write; under load, what
                    // arrives until the pacing interval is over does too.
                    if let Some(wait) =
                        last_write.and_then(|at| WRITE_INTERVAL.checked_sub(at.elapsed()))
                    {
                        std::thread::sleep(wait);
                    }
                    let mut batch = vec![(time, event)];
                    while batch.len() < MAX_BATCH {
                        match receiver.try_recv() {
                            Ok(Message::Event(time, event)) => batch.push((time, event)),
                            Ok(other) => {
                                carried = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.locked(|state| state.write_events(&batch));
                    last_write = (batch.len() < MAX_BATCH).then(Instant::now);
                }
                Ok(Message::Key(key)) => {
                    match &self.key {
                        Some(held) if held.key_id() != key.key_id() => tracing::error!(
                            target: "audit",
                            held = %held.key_id(),
                            offered = %key.key_id(),
                            "a second, different audit checkpoint key was offered; keeping the first"
                        ),
                        Some(_) => {}
                        None => self.key = Some(key),
                    }
                    self.locked(Self::checkpoint_if_pending);
                }
                Ok(Message::Flush(reply)) => {
                    self.locked(Self::checkpoint_if_pending);
                    self.sync();
                    let _ = reply.send(());
                }
                Ok(Message::Close) | Err(RecvTimeoutError::Disconnected) => {
                    self.locked(Self::checkpoint_if_pending);
                    self.sync();
                    if self.key.is_none() && self.since_checkpoint > 0 {
                        // By design for `vault` commands; after a failed start the start's
                        // own error says why.
                        tracing::debug!(
                            target: "audit",
                            records = self.since_checkpoint,
                            "audit records await a checkpoint: this process never held the checkpoint key (it is in the vault); the serving broker's next checkpoint covers them"
                        );
                    }
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.since_checkpoint > 0 {
                        self.locked(Self::checkpoint_if_pending);
                    }
                }
            }
        }
    }

    fn count_error(&self, what: &str, error: &dyn std::fmt::Display) {
        self.write_errors.fetch_add(1, Ordering::Relaxed);
        self.metrics.audit_write_error();
        tracing::error!(target: "audit", %error, "audit {what} failed");
    }

    /// Runs `operation` holding an exclusive lock (flock) on the active file, with the chain
    /// head re-read if another process wrote since. Other processes (`admin`, `vault` commands
    /// run while the broker serves) append through the same protocol, so the chain stays one.
    fn locked(&mut self, operation: impl FnOnce(&mut Self)) {
        if let Err(error) = self.lock_active() {
            self.count_error("lock", &error);
            return;
        }
        match self.resync() {
            Ok(()) => {
                if let Some(event) = self.rewound.take() {
                    let now = self.clock.now();
                    self.write_events(&[(now, Box::new(event))]);
                }
                operation(self);
            }
            Err(error) => self.count_error("resync", &error),
        }
        if let Err(error) = self.file.unlock() {
            self.count_error("unlock", &error);
        }
    }

    /// Locks the file the log's path names now (following a rotation by another process).
    fn lock_active(&mut self) -> std::io::Result<()> {
        for _ in 0..16 {
            self.file.lock()?;
            match std::fs::metadata(&self.config.path) {
                Ok(metadata) if metadata.ino() == self.inode => return Ok(()),
                _ => {
                    self.file.unlock()?;
                    let file = open_append(&self.config.path)?;
                    self.inode = file.metadata()?.ino();
                    self.file = file;
                    self.size = u64::MAX;
                }
            }
        }
        Err(std::io::Error::other("the audit log keeps being replaced"))
    }

    /// Under the lock: if the file is not as this writer left it, continue after its last line
    /// (cutting a torn line a crashed writer left).
    fn resync(&mut self) -> Result<(), AuditWriterError> {
        let open_error = |source| AuditWriterError::Open {
            path: self.config.path.clone(),
            source,
        };
        let length = self.file.metadata().map_err(open_error)?.len();
        if length == self.size {
            return Ok(());
        }
        let ChainPosition {
            head,
            first_seq,
            complete,
            covered,
        } = chain_position(&self.config.path, &self.file)?;
        if length > complete {
            tracing::warn!(target: "audit", path = %self.config.path.display(), "cutting a torn last line left by a crash");
            self.file.set_len(complete).map_err(open_error)?;
        }
        // Writers only ever append (rotation keeps the chain): a log that now ends before what
        // this writer wrote, or at the same seq with another line, was cut, rewritten or
        // deleted. Continuing silently would let the next checkpoint sign over the gap.
        if self.head_known
            && (head.next_seq < self.head.next_seq
                || (head.next_seq == self.head.next_seq && head.prev != self.head.prev))
        {
            let last_written = self.head.next_seq.saturating_sub(1);
            let found = head.next_seq.saturating_sub(1);
            tracing::error!(target: "audit", path = %self.config.path.display(), last_written, found, "the audit log was cut, rewritten or deleted behind the writer; recording it");
            self.rewound = Some(AuditEvent::AuditLogRewound {
                last_written,
                found,
            });
        }
        self.head_known = true;
        self.head = head;
        self.first_seq = first_seq;
        self.size = complete;
        // Records another process (or a crashed or keyless run) left without a checkpoint:
        // this writer's next checkpoint covers them.
        if !covered {
            self.since_checkpoint = self.since_checkpoint.max(1);
        }
        Ok(())
    }

    fn write_line(&mut self, line: &str) -> bool {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        // One write per line on an O_APPEND file, under the lock.
        match self.file.write_all(&bytes) {
            Ok(()) => {
                if self.first_seq.is_none() {
                    self.first_seq = RawLine::parse(line).ok().map(|raw| raw.seq);
                }
                self.size = self
                    .size
                    .saturating_add(u64::try_from(bytes.len()).unwrap_or(0));
                true
            }
            Err(error) => {
                self.count_error("write", &error);
                // What reached the file is unknown: re-read it before the next write.
                self.size = u64::MAX;
                false
            }
        }
    }

    /// Appends `batch` as consecutive records (with a checkpoint wherever one falls due) in as
    /// few writes as rotation allows: a file is rotated as soon as it reaches its size.
    fn write_events(&mut self, batch: &[(UnixSeconds, Box<AuditEvent>)]) {
        let mut pending = Pending::default();
        // Work on a copy: a failed write must not advance the chain past lines not written.
        let mut head = self.head.clone();
        let mut since_checkpoint = self.since_checkpoint;
        // Whether a checkpoint went into this batch (fsynced with it, now and then).
        let mut signed = false;
        for (time, event) in batch {
            let seq = head.next_seq;
            match head.event_line(*time, event) {
                Ok(line) => {
                    pending.first_seq.get_or_insert(seq);
                    pending.push(&line);
                    pending.records += 1;
                    since_checkpoint += 1;
                }
                Err(error) => {
                    self.count_error("serialisation", &error);
                    continue;
                }
            }
            if since_checkpoint >= self.config.checkpoint_every_lines
                && let Some(key) = &self.key
                && let Ok(line) = head.checkpoint_line(self.clock.now(), key)
            {
                pending.push(&line);
                since_checkpoint = 0;
                signed = true;
            }
            let reached = self
                .size
                .saturating_add(u64::try_from(pending.bytes.len()).unwrap_or(u64::MAX));
            if reached >= self.config.rotate_bytes {
                let written = self.commit(std::mem::take(&mut pending), &head, since_checkpoint);
                if !written {
                    return;
                }
                self.rotate();
                // The new file is not locked yet, and another writer may have begun it:
                // lock it and continue from where it stands.
                if let Err(error) = self.lock_active() {
                    self.count_error("lock", &error);
                    return;
                }
                if let Err(error) = self.resync() {
                    self.count_error("resync", &error);
                    return;
                }
                head = self.head.clone();
                since_checkpoint = self.since_checkpoint;
            }
        }
        if self.commit(pending, &head, since_checkpoint)
            && signed
            && self.last_sync.elapsed() >= SYNC_INTERVAL
        {
            self.sync();
        }
    }

    /// One write of `pending` on the O_APPEND file, under the lock; on success the chain
    /// moves to `head`. False if the write failed.
    fn commit(&mut self, pending: Pending, head: &ChainHead, since_checkpoint: u64) -> bool {
        if pending.bytes.is_empty() {
            return true;
        }
        match self.file.write_all(&pending.bytes) {
            Ok(()) => {
                if self.first_seq.is_none() {
                    self.first_seq = pending.first_seq;
                }
                self.size = self
                    .size
                    .saturating_add(u64::try_from(pending.bytes.len()).unwrap_or(0));
                self.head = head.clone();
                self.since_checkpoint = since_checkpoint;
                for _ in 0..pending.records {
                    self.metrics.audit_written();
                }
                true
            }
            Err(error) => {
                self.count_error("write", &error);
                // What reached the file is unknown: re-read it before the next write.
                self.size = u64::MAX;
                false
            }
        }
    }

    fn checkpoint(&mut self) {
        let Some(key) = &self.key else {
            return;
        };
        let mut head = self.head.clone();
        let now = self.clock.now();
        if let Ok(line) = head.checkpoint_line(now, key)
            && self.write_line(&line)
        {
            self.head = head;
            self.since_checkpoint = 0;
            self.sync();
        }
    }

    fn checkpoint_if_pending(&mut self) {
        if self.since_checkpoint > 0 {
            self.checkpoint();
        }
    }

    fn sync(&mut self) {
        self.last_sync = Instant::now();
        if let Err(error) = self.file.sync_data() {
            self.count_error("fsync", &error);
        }
    }

    /// Under the lock: closes the active file with a checkpoint, renames it after its first
    /// seq and starts a new one; the chain continues into it.
    fn rotate(&mut self) {
        self.checkpoint_if_pending();
        self.sync();
        let Some(first_seq) = self.first_seq else {
            return;
        };
        let target = rotated_path(&self.config.path, first_seq);
        if let Err(error) = std::fs::rename(&self.config.path, &target) {
            self.count_error("rotation", &error);
            return;
        }
        match open_append(&self.config.path).and_then(|file| {
            let inode = file.metadata()?.ino();
            Ok((file, inode))
        }) {
            Ok((file, inode)) => {
                // Replacing the old handle closes it, which releases its lock.
                self.file = file;
                self.inode = inode;
                self.size = 0;
                self.first_seq = None;
            }
            Err(error) => {
                // The next write follows the path to whatever file is there by then.
                self.count_error("reopen after rotation", &error);
            }
        }
    }
}
