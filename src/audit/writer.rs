//! The audit log writer: one named thread owns the file; components hand it events through a
//! bounded queue and never wait on the disk.
//!
//! The queue is bounded so a flood cannot grow memory; when it is full the event is dropped and
//! counted (`audit_dropped_total`), which an operator must treat as an incident. Write errors
//! are counted too (`audit_write_errors_total`) and logged without the event's content.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

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
    #[error("audit log {path} line {line} is not an audit record; refusing to continue its chain")]
    Corrupt { path: PathBuf, line: usize },
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

enum Message {
    Event(UnixSeconds, Box<AuditEvent>),
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
    key: AuditKey,
    clock: SharedClock,
    metrics: Metrics,
    file: File,
    size: u64,
    /// Seq of the active file's first line (names it when rotated).
    first_seq: Option<u64>,
    head: ChainHead,
    since_checkpoint: u64,
    write_errors: Arc<AtomicU64>,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .open(path)
}

/// The chain position after the last complete line of `path`, the seq of its first line, and
/// the length of the complete part (a torn last line from a crash is cut off).
fn scan(path: &Path) -> Result<(Option<ChainHead>, Option<u64>, u64), AuditWriterError> {
    let open_error = |source| AuditWriterError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut text = String::new();
    match File::open(path) {
        Ok(mut file) => {
            file.read_to_string(&mut text).map_err(open_error)?;
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok((None, None, 0)),
        Err(error) => return Err(open_error(error)),
    }
    let complete = text.rfind('\n').map_or(0, |end| end + 1);
    let complete_text = text.get(..complete).unwrap_or_default();
    let mut lines = complete_text.lines();
    let corrupt = |line| AuditWriterError::Corrupt {
        path: path.to_path_buf(),
        line,
    };
    let first_seq = match lines.next() {
        Some(first) => Some(RawLine::parse(first).map_err(|_| corrupt(1))?.seq),
        None => None,
    };
    let head = match complete_text.lines().last() {
        Some(last) => {
            let raw = RawLine::parse(last).map_err(|_| corrupt(complete_text.lines().count()))?;
            Some(ChainHead {
                next_seq: raw.seq.saturating_add(1),
                prev: line_hash(last),
            })
        }
        None => None,
    };
    Ok((head, first_seq, u64::try_from(complete).unwrap_or(u64::MAX)))
}

impl WriterState {
    fn open(
        config: &AuditFileConfig,
        key: AuditKey,
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
        let (active_head, first_seq, complete) = scan(path)?;
        // An empty active file continues the newest rotated file's chain.
        let head = match active_head {
            Some(head) => head,
            None => {
                let mut head = ChainHead::genesis();
                if let Some(newest) = log_files(path).into_iter().rfind(|p| p != path)
                    && let (Some(rotated_head), _, _) = scan(&newest)?
                {
                    head = rotated_head;
                }
                head
            }
        };
        let file = open_append(path).map_err(open_error)?;
        let size = file.metadata().map_err(open_error)?.len();
        if size > complete {
            tracing::warn!(target: "audit", path = %path.display(), "cutting a torn last line left by a crash");
            file.set_len(complete).map_err(open_error)?;
        }
        Ok(Self {
            config: config.clone(),
            key,
            clock,
            metrics,
            file,
            size: complete,
            first_seq,
            head,
            since_checkpoint: 0,
            write_errors: Arc::new(AtomicU64::new(0)),
        })
    }

    fn run(mut self, receiver: Receiver<Message>) {
        loop {
            match receiver.recv_timeout(self.config.checkpoint_every) {
                Ok(Message::Event(time, event)) => {
                    self.write_event(time, &event);
                    if self.since_checkpoint >= self.config.checkpoint_every_lines {
                        self.checkpoint();
                    }
                    if self.size >= self.config.rotate_bytes {
                        self.rotate();
                    }
                }
                Ok(Message::Flush(reply)) => {
                    self.checkpoint_if_pending();
                    self.sync();
                    let _ = reply.send(());
                }
                Ok(Message::Close) | Err(RecvTimeoutError::Disconnected) => {
                    self.checkpoint_if_pending();
                    self.sync();
                    return;
                }
                Err(RecvTimeoutError::Timeout) => self.checkpoint_if_pending(),
            }
        }
    }

    fn write_line(&mut self, line: &str) -> bool {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        // One write per line on an O_APPEND file: a line is never interleaved with another.
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
                self.write_errors.fetch_add(1, Ordering::Relaxed);
                self.metrics.audit_write_error();
                tracing::error!(target: "audit", %error, "audit write failed");
                false
            }
        }
    }

    fn write_event(&mut self, time: UnixSeconds, event: &AuditEvent) {
        // Work on a copy: a failed write must not advance the chain past a line not written.
        let mut head = self.head.clone();
        match head.event_line(time, event) {
            Ok(line) => {
                if self.write_line(&line) {
                    self.head = head;
                    self.since_checkpoint += 1;
                    self.metrics.audit_written();
                }
            }
            Err(error) => {
                self.write_errors.fetch_add(1, Ordering::Relaxed);
                self.metrics.audit_write_error();
                tracing::error!(target: "audit", %error, "audit event not serialisable");
            }
        }
    }

    fn checkpoint(&mut self) {
        let mut head = self.head.clone();
        let now = self.clock.now();
        if let Ok(line) = head.checkpoint_line(now, &self.key)
            && self.write_line(&line)
        {
            self.head = head;
            self.since_checkpoint = 0;
        }
    }

    fn checkpoint_if_pending(&mut self) {
        if self.since_checkpoint > 0 {
            self.checkpoint();
        }
    }

    fn sync(&mut self) {
        if let Err(error) = self.file.sync_data() {
            self.write_errors.fetch_add(1, Ordering::Relaxed);
            self.metrics.audit_write_error();
            tracing::error!(target: "audit", %error, "audit fsync failed");
        }
    }

    /// Closes the active file with a checkpoint, renames it after its first seq and starts a
    /// new one; the chain continues into it.
    fn rotate(&mut self) {
        self.checkpoint_if_pending();
        self.sync();
        let Some(first_seq) = self.first_seq else {
            return;
        };
        let target = rotated_path(&self.config.path, first_seq);
        if let Err(error) = std::fs::rename(&self.config.path, &target) {
            self.write_errors.fetch_add(1, Ordering::Relaxed);
            self.metrics.audit_write_error();
            tracing::error!(target: "audit", %error, "audit rotation failed; continuing in the same file");
            return;
        }
        match open_append(&self.config.path) {
            Ok(file) => {
                self.file = file;
                self.size = 0;
                self.first_seq = None;
            }
            Err(error) => {
                // Keep writing into the renamed file (still open): nothing is lost.
                self.write_errors.fetch_add(1, Ordering::Relaxed);
                self.metrics.audit_write_error();
                tracing::error!(target: "audit", %error, "cannot open a new audit file after rotation");
            }
        }
        let _ = self.file.seek(SeekFrom::End(0));
    }
}
