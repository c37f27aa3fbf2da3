//! `audit verify` and `audit show`: reading the log back.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::chain::{AuditKey, GENESIS, RawLine, line_hash, parse_time};
use crate::clock::UnixSeconds;

/// What broke, at the first place the log stops being trustworthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakKind {
    /// The line is not a JSON audit record.
    Unparseable,
    /// The first line of the whole log does not start the chain.
    BadGenesis,
    /// `seq` is not the previous line's plus one: a line was deleted, inserted or reordered.
    SequenceGap { expected: u64, found: u64 },
    /// `prev` does not match the previous line: that line was altered (or lines were swapped).
    PrevMismatch,
    /// A checkpoint's HMAC does not verify: the chain before it was rewritten, or the
    /// checkpoint was forged.
    CheckpointForged,
    /// A checkpoint made with a key other than the one given.
    CheckpointUnknownKey { key_id: String },
    /// A checkpoint line carries more (or other) than a writer writes: text was added to it.
    CheckpointAltered,
    /// The writer found the log shorter than it had left it (records removed, or the file
    /// deleted) and recorded it; the records between were lost.
    Rewound { last_written: u64, found: u64 },
}

impl fmt::Display for BreakKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unparseable => write!(f, "line is not an audit record"),
            Self::BadGenesis => write!(
                f,
                "first record of the log does not start the chain (seq 1, prev 0…0)"
            ),
            Self::SequenceGap { expected, found } => write!(
                f,
                "sequence broken: expected seq {expected}, found {found} (a record was deleted, inserted or reordered)"
            ),
            Self::PrevMismatch => write!(
                f,
                "hash chain broken: prev does not match the previous record (that record was altered, or records were swapped)"
            ),
            Self::CheckpointForged => write!(
                f,
                "checkpoint HMAC does not verify: the records before it were rewritten or the checkpoint is forged"
            ),
            Self::CheckpointUnknownKey { key_id } => write!(
                f,
                "checkpoint made with another key (key id {key_id}): wrong key given, or forged"
            ),
            Self::CheckpointAltered => write!(
                f,
                "checkpoint line altered: it carries more than seq, time, prev and its HMAC"
            ),
            Self::Rewound {
                last_written,
                found,
            } => write!(
                f,
                "the broker found its log rewound: it had written up to seq {last_written}, the file then ended at seq {found} (records removed or the file deleted)"
            ),
        }
    }
}

/// The first break found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub file: PathBuf,
    /// 1-based line number in `file`.
    pub line: usize,
    /// The record's own seq, when it could be read.
    pub seq: Option<u64>,
    pub kind: BreakKind,
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)?;
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        write!(f, ": {}", self.kind)
    }
}

/// The outcome of verifying a set of files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    pub checkpoints: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Seq of the last checkpoint that verified (or was present, without a key).
    pub last_checkpoint_seq: Option<u64>,
    /// Records after the last checkpoint: protected by the chain only, not by the HMAC.
    pub unauthenticated_tail: u64,
    /// Whether checkpoints were checked (a key was given).
    pub key_checked: bool,
    /// The files started mid-chain (not at seq 1): their first `prev` could not be checked.
    pub starts_mid_chain: bool,
    pub first_break: Option<Break>,
}

impl VerifyReport {
    /// Intact, checkpoints verified, and, unless `policy` relaxes it, complete: starting at
    /// seq 1 and every record covered by a checkpoint.
    pub fn is_ok(&self, policy: VerifyPolicy) -> bool {
        self.first_break.is_none()
            && self.key_checked
            && (policy.allow_open_tail || self.unauthenticated_tail == 0)
            && (policy.allow_partial || !self.starts_mid_chain)
    }
}

/// What a verification may accept besides a complete, closed log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyPolicy {
    /// Records after the last checkpoint (a log still being written).
    pub allow_open_tail: bool,
    /// A log that starts after seq 1 (older rotated files archived or deleted). Without this,
    /// deleting a prefix of the log would go unnoticed.
    pub allow_partial: bool,
}

impl VerifyPolicy {
    /// Only a complete, closed log passes.
    pub const STRICT: Self = Self {
        allow_open_tail: false,
        allow_partial: false,
    };
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(first_break) = &self.first_break {
            writeln!(f, "BROKEN at {first_break}")?;
        }
        writeln!(
            f,
            "{} records, {} checkpoints, seq {}..{}",
            self.records,
            self.checkpoints,
            self.first_seq.map_or("-".to_owned(), |s| s.to_string()),
            self.last_seq.map_or("-".to_owned(), |s| s.to_string()),
        )?;
        if self.starts_mid_chain {
            writeln!(
                f,
                "WARNING: the files start at seq {}, not 1 (earlier files not given, archived or deleted); their first link was not checked",
                self.first_seq.unwrap_or_default()
            )?;
        }
        if !self.key_checked {
            writeln!(
                f,
                "WARNING: no audit key given: checkpoints were NOT verified; only the hash chain was (anyone can recompute it)"
            )?;
        }
        if self.unauthenticated_tail > 0 && self.first_break.is_none() {
            writeln!(
                f,
                "WARNING: the last {} record(s) follow the last checkpoint{} and are not authenticated (expected only for a log still being written)",
                self.unauthenticated_tail,
                self.last_checkpoint_seq
                    .map_or(String::new(), |s| format!(" (seq {s})")),
            )?;
        }
        if self.first_break.is_none() {
            writeln!(f, "chain intact")?;
        }
        Ok(())
    }
}

/// Orders files by the seq of their first record, so `audit verify *.jsonl` works whatever
/// order the shell expands them in.
pub fn order_files(files: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut keyed = Vec::with_capacity(files.len());
    for file in files {
        let text = std::fs::read_to_string(file)?;
        let first = text
            .lines()
            .next()
            .and_then(|line| RawLine::parse(line).ok())
            .map_or(u64::MAX, |raw| raw.seq);
        keyed.push((first, file.clone()));
    }
    keyed.sort();
    Ok(keyed.into_iter().map(|(_, file)| file).collect())
}

/// Verifies `files` (in chain order) as one log. Reports the first break, precisely.
pub fn verify_files(files: &[PathBuf], key: Option<&AuditKey>) -> std::io::Result<VerifyReport> {
    let mut report = VerifyReport {
        key_checked: key.is_some(),
        ..VerifyReport::default()
    };
    let key_id = key.map(AuditKey::key_id);
    let mut expected: Option<(u64, String)> = None;
    for file in files {
        let text = std::fs::read_to_string(file)?;
        for (index, line) in text.lines().enumerate() {
            let at = |seq, kind| Break {
                file: file.clone(),
                line: index + 1,
                seq,
                kind,
            };
            let Ok(raw) = RawLine::parse(line) else {
                report.first_break = Some(at(None, BreakKind::Unparseable));
                return Ok(report);
            };
            let seq = Some(raw.seq);
            match &expected {
                None => {
                    if raw.seq == 1 && raw.prev != GENESIS {
                        report.first_break = Some(at(seq, BreakKind::BadGenesis));
                        return Ok(report);
                    }
                    report.starts_mid_chain = raw.seq != 1;
                    report.first_seq = seq;
                }
                Some((next_seq, prev)) => {
                    if raw.seq != *next_seq {
                        report.first_break = Some(at(
                            seq,
                            BreakKind::SequenceGap {
                                expected: *next_seq,
                                found: raw.seq,
                            },
                        ));
                        return Ok(report);
                    }
                    if raw.prev != *prev {
                        report.first_break = Some(at(seq, BreakKind::PrevMismatch));
                        return Ok(report);
                    }
                }
            }
            if let Some(checkpoint) = &raw.checkpoint {
                if let (Some(key), Some(key_id)) = (key, &key_id) {
                    if checkpoint.key_id != *key_id {
                        report.first_break = Some(at(
                            seq,
                            BreakKind::CheckpointUnknownKey {
                                key_id: checkpoint.key_id.clone(),
                            },
                        ));
                        return Ok(report);
                    }
                    if !key.verify_checkpoint(raw.seq, &raw.time, &raw.prev, &checkpoint.hmac) {
                        report.first_break = Some(at(seq, BreakKind::CheckpointForged));
                        return Ok(report);
                    }
                }
                if !raw.is_canonical_checkpoint(line) {
                    report.first_break = Some(at(seq, BreakKind::CheckpointAltered));
                    return Ok(report);
                }
                report.checkpoints += 1;
                report.last_checkpoint_seq = seq;
                report.unauthenticated_tail = 0;
            } else {
                if raw.event_name() == Some("audit_log_rewound") {
                    let number = |name: &str| {
                        raw.fields
                            .get(name)
                            .and_then(Value::as_u64)
                            .unwrap_or_default()
                    };
                    report.first_break = Some(at(
                        seq,
                        BreakKind::Rewound {
                            last_written: number("last_written"),
                            found: number("found"),
                        },
                    ));
                    return Ok(report);
                }
                report.records += 1;
                report.unauthenticated_tail += 1;
            }
            report.last_seq = seq;
            expected = Some((raw.seq.saturating_add(1), line_hash(line)));
        }
    }
    Ok(report)
}

/// Which records `audit show` prints.
#[derive(Debug, Clone, Default)]
pub struct ShowFilter {
    pub user_id: Option<i64>,
    pub client_id: Option<String>,
    /// Matches records whose `session` starts with this.
    pub session: Option<String>,
    /// Event names (`token_issued`, ...); empty means all.
    pub events: Vec<String>,
    pub since: Option<UnixSeconds>,
    pub until: Option<UnixSeconds>,
}

impl ShowFilter {
    fn matches(&self, record: &Value) -> bool {
        let field = |name: &str| record.get(name);
        if let Some(user_id) = self.user_id
            && field("user_id").and_then(Value::as_i64) != Some(user_id)
        {
            return false;
        }
        if let Some(client_id) = &self.client_id
            && field("client_id").and_then(Value::as_str) != Some(client_id.as_str())
        {
            return false;
        }
        if let Some(session) = &self.session
            && !field("session")
                .and_then(Value::as_str)
                .is_some_and(|s| s.starts_with(session.as_str()))
        {
            return false;
        }
        if !self.events.is_empty() {
            let name = field("event").and_then(Value::as_str).unwrap_or_default();
            if !self.events.iter().any(|wanted| wanted == name) {
                return false;
            }
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(time) = field("time").and_then(Value::as_str).and_then(parse_time) else {
                return false;
            };
            if self.since.is_some_and(|since| time < since)
                || self.until.is_some_and(|until| time > until)
            {
                return false;
            }
        }
        true
    }
}

/// The event records (checkpoints left out) of `files` that match `filter`, in order. Does not
/// verify: run `audit verify` for that.
pub fn select(files: &[PathBuf], filter: &ShowFilter) -> std::io::Result<Vec<Value>> {
    let mut selected = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)?;
        for line in text.lines() {
            let Ok(record) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if record.get("event").is_some()
                && record.get("checkpoint").is_none()
                && filter.matches(&record)
            {
                selected.push(record);
            }
        }
    }
    Ok(selected)
}

/// A fixed-column table: seq, time, event, user, client, session, then the other fields.
pub fn render_table(records: &[Value]) -> String {
    const SHOWN: [&str; 7] = [
        "seq",
        "time",
        "event",
        "user_id",
        "client_id",
        "session",
        "prev",
    ];
    let mut rows = vec![[
        "SEQ".to_owned(),
        "TIME".to_owned(),
        "EVENT".to_owned(),
        "USER".to_owned(),
        "CLIENT".to_owned(),
        "SESSION".to_owned(),
        "DETAILS".to_owned(),
    ]];
    let text = |value: Option<&Value>| match value {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => terminal_safe(s),
        Some(other) => terminal_safe(&other.to_string()),
    };
    for record in records {
        let details = record
            .as_object()
            .map(|object| {
                object
                    .iter()
                    .filter(|(name, _)| !SHOWN.contains(&name.as_str()))
                    .map(|(name, value)| format!("{name}={}", text(Some(value))))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        rows.push([
            text(record.get("seq")),
            text(record.get("time")),
            text(record.get("event")),
            text(record.get("user_id")),
            text(record.get("client_id")),
            text(record.get("session")),
            details,
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row.iter()) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (index, (cell, width)) in row.iter().zip(widths.iter()).enumerate() {
            if index + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `text` with what a terminal would act on rather than show (control characters: line
/// breaks, escape sequences; bidi overrides and zero-width characters) written as `\u{…}`.
/// Records hold strings that came from clients (a tool name, an error parameter); the JSON
/// escapes them, but `audit show` prints them decoded to an operator's terminal.
fn terminal_safe(text: &str) -> String {
    let mut safe = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || crate::text::is_invisible_or_reordering(c) {
            safe.extend(c.escape_unicode());
        } else {
            safe.push(c);
        }
    }
    safe
}

/// The files of a log given on the command line, or found from its active path.
pub fn files_or_default(files: &[PathBuf], active: Option<&Path>) -> Vec<PathBuf> {
    if !files.is_empty() {
        return files.to_vec();
    }
    active.map(super::writer::log_files).unwrap_or_default()
}
