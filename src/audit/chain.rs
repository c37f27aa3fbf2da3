//! The audit log's line format: a SHA-256 hash chain with HMAC checkpoints.
//!
//! Each line is one JSON object: `{"seq":N,"time":"RFC 3339","prev":"<hex>",...}` followed by
//! either the event's fields (`"event":"token_issued",...`) or a checkpoint
//! (`"checkpoint":{"key_id":"…","hmac":"…"}`). `prev` is the hex SHA-256 of the previous line's
//! exact bytes (without its newline), `0…0` for the first line ever. A checkpoint's HMAC
//! (keyed by the audit key, which never touches the log) covers its own `seq`, `time` and
//! `prev`, and so, through the chain, every line before it.
//!
//! Someone who can write the file can recompute hashes, but not HMACs: any change, deletion,
//! insertion or reordering before the last checkpoint breaks either the chain or a checkpoint.
//! Lines after the last checkpoint are only chain-protected; the writer checkpoints every N
//! lines, every few seconds while busy, at rotation and at shutdown to keep that tail short.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::AuditEvent;
use crate::clock::UnixSeconds;

/// `prev` of the very first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const CHECKPOINT_CONTEXT: &str = "forgejo-mcp-broker audit checkpoint v1";
const KEY_ID_CONTEXT: &str = "forgejo-mcp-broker audit key id v1";

#[derive(Debug, thiserror::Error)]
pub enum AuditKeyError {
    #[error("cannot read audit key {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("audit key {path} must hold 64 hex digits (32 bytes)")]
    Malformed { path: std::path::PathBuf },
    #[error("audit key {path} must not be readable by group or others (chmod 600)")]
    Permissions { path: std::path::PathBuf },
    #[error("the operating system's random number generator failed")]
    Random,
}

/// The checkpoint HMAC key: 32 bytes, zeroized on drop, never printed.
///
/// It lives sealed in the vault (keystore/audit_key.rs), generated once per broker; [`AuditKey::load`]
/// reads the 0600 key file of brokers from before that, to move it in.
pub struct AuditKey(SecretBox<[u8; 32]>);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditKey({})", self.key_id())
    }
}

impl AuditKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(SecretBox::new(Box::new(bytes)))
    }

    pub fn generate() -> Result<Self, AuditKeyError> {
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut_slice()).map_err(|_| AuditKeyError::Random)?;
        Ok(Self::from_bytes(*bytes))
    }

    /// Reads a pre-vault key file (64 hex digits); refuses one others can read.
    pub fn load(path: &std::path::Path) -> Result<Self, AuditKeyError> {
        use std::os::unix::fs::PermissionsExt;
        let read_error = |source| AuditKeyError::Read {
            path: path.to_path_buf(),
            source,
        };
        let metadata = std::fs::metadata(path).map_err(read_error)?;
        if metadata.permissions().mode() & 0o077 != 0 {
            return Err(AuditKeyError::Permissions {
                path: path.to_path_buf(),
            });
        }
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(read_error)?);
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), bytes.as_mut_slice()).map_err(|_| {
            AuditKeyError::Malformed {
                path: path.to_path_buf(),
            }
        })?;
        Ok(Self::from_bytes(*bytes))
    }

    /// The key's bytes, for sealing it into the vault (keystore/audit_key.rs).
    pub(crate) fn expose_bytes(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; 32 bytes cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(self.0.expose_secret())
            .unwrap_or_else(|_| unreachable_hmac())
    }

    /// A public fingerprint of the key, written in checkpoints so a verifier can tell "wrong
    /// key" from "forged checkpoint".
    pub fn key_id(&self) -> String {
        let mut mac = self.mac();
        mac.update(KEY_ID_CONTEXT.as_bytes());
        let digest = mac.finalize().into_bytes();
        crate::secret::to_hex(digest.get(..8).unwrap_or_default())
    }

    fn checkpoint_mac(&self, seq: u64, time: &str, prev: &str) -> Hmac<Sha256> {
        let mut mac = self.mac();
        mac.update(format!("{CHECKPOINT_CONTEXT}\n{seq}\n{time}\n{prev}").as_bytes());
        mac
    }

    pub fn sign_checkpoint(&self, seq: u64, time: &str, prev: &str) -> String {
        crate::secret::to_hex(&self.checkpoint_mac(seq, time, prev).finalize().into_bytes())
    }

    /// Constant-time check of a checkpoint's HMAC. Only the canonical spelling (64 lowercase
    /// hex digits, as written) is accepted, so not even a change of letter case goes unnoticed;
    /// the rest of the line is held to its canonical form by
    /// [`RawLine::is_canonical_checkpoint`].
    pub fn verify_checkpoint(&self, seq: u64, time: &str, prev: &str, hmac_hex: &str) -> bool {
        let canonical = hmac_hex.len() == 64
            && hmac_hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let Some(tag) = canonical.then(|| hex::decode(hmac_hex).ok()).flatten() else {
            return false;
        };
        self.checkpoint_mac(seq, time, prev)
            .verify_slice(&tag)
            .is_ok()
    }
}

#[allow(clippy::panic)] // HMAC-SHA256 takes keys of every length; this cannot run.
fn unreachable_hmac() -> Hmac<Sha256> {
    panic!("HMAC-SHA256 rejected a 32-byte key")
}

/// Hex SHA-256 of a line's bytes (without the newline): the next line's `prev`.
pub fn line_hash(line: &str) -> String {
    crate::secret::to_hex(&Sha256::digest(line.as_bytes()))
}

/// RFC 3339 UTC with second precision.
pub fn format_time(time: UnixSeconds) -> String {
    time::OffsetDateTime::from_unix_timestamp(time)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| time.to_string())
}

pub fn parse_time(text: &str) -> Option<UnixSeconds> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Some(seconds);
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// An event's line: `{"seq":…,"time":…,"prev":…,` then the event's own fields. Written as
/// the event's object with the chain fields put in front of its first field, which is what
/// `#[serde(flatten)]` would write (the tests hold it to that), without flatten's detour
/// through serde's buffered map (≈3,000 instructions a record).
fn event_line_text(
    seq: u64,
    time: &str,
    prev: &str,
    event: &AuditEvent,
) -> serde_json::Result<String> {
    use std::io::Write as _;
    let mut out = Vec::with_capacity(256);
    write!(out, "{{\"seq\":{seq},\"time\":").map_err(serde_json::Error::io)?;
    serde_json::to_writer(&mut out, time)?;
    out.extend_from_slice(b",\"prev\":");
    serde_json::to_writer(&mut out, prev)?;
    let fields_at = out.len();
    // An internally tagged enum is always an object with at least its tag: `{"event":…}`.
    serde_json::to_writer(&mut out, event)?;
    match out.get(fields_at) {
        Some(b'{') if out.len() > fields_at + 2 => {
            if let Some(brace) = out.get_mut(fields_at) {
                *brace = b',';
            }
        }
        _ => {
            return Err(serde::ser::Error::custom(
                "an audit event must serialise as a non-empty object",
            ));
        }
    }
    String::from_utf8(out).map_err(serde::ser::Error::custom)
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    pub key_id: String,
    pub hmac: String,
}

#[derive(Serialize)]
struct CheckpointLine<'a> {
    seq: u64,
    time: &'a str,
    prev: &'a str,
    checkpoint: Checkpoint,
}

/// The writer's view of the chain: the next sequence number and the previous line's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub next_seq: u64,
    pub prev: String,
}

impl ChainHead {
    pub fn genesis() -> Self {
        Self {
            next_seq: 1,
            prev: GENESIS.to_owned(),
        }
    }

    /// Serialises `event` as the next line and advances the head.
    pub fn event_line(
        &mut self,
        time: UnixSeconds,
        event: &AuditEvent,
    ) -> serde_json::Result<String> {
        let time = format_time(time);
        let line = event_line_text(self.next_seq, &time, &self.prev, event)?;
        self.advance(&line);
        Ok(line)
    }

    /// A checkpoint line signed with `key`, and the head advanced past it.
    pub fn checkpoint_line(
        &mut self,
        time: UnixSeconds,
        key: &AuditKey,
    ) -> serde_json::Result<String> {
        let time = format_time(time);
        let line = serde_json::to_string(&CheckpointLine {
            seq: self.next_seq,
            time: &time,
            prev: &self.prev,
            checkpoint: Checkpoint {
                key_id: key.key_id(),
                hmac: key.sign_checkpoint(self.next_seq, &time, &self.prev),
            },
        })?;
        self.advance(&line);
        Ok(line)
    }

    fn advance(&mut self, line: &str) {
        self.next_seq = self.next_seq.saturating_add(1);
        self.prev = line_hash(line);
    }
}

/// A line as read back: the chain fields, and the rest (event or checkpoint) as JSON.
#[derive(Debug, Deserialize)]
pub struct RawLine {
    pub seq: u64,
    pub time: String,
    pub prev: String,
    #[serde(default)]
    pub checkpoint: Option<Checkpoint>,
    #[serde(flatten)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl RawLine {
    pub fn parse(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line)
    }

    /// Whether `line` (which parsed as `self`) is a checkpoint exactly as a writer writes it.
    /// The HMAC covers only seq, time and prev: anything else on a checkpoint line (an
    /// `"event"` added to the last line of a closed log, say) would otherwise pass unnoticed.
    pub fn is_canonical_checkpoint(&self, line: &str) -> bool {
        let Some(checkpoint) = &self.checkpoint else {
            return false;
        };
        serde_json::to_string(&CheckpointLine {
            seq: self.seq,
            time: &self.time,
            prev: &self.prev,
            checkpoint: Checkpoint {
                key_id: checkpoint.key_id.clone(),
                hmac: checkpoint.hmac.clone(),
            },
        })
        .is_ok_and(|canonical| canonical == line)
    }

    pub fn event_name(&self) -> Option<&str> {
        self.fields.get("event").and_then(|v| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_chain_and_checkpoints_verify_only_with_their_key() {
        let key = AuditKey::from_bytes([7; 32]);
        let mut head = ChainHead::genesis();
        let first = head
            .event_line(
                1_700_000_000,
                &AuditEvent::ConsentDenied {
                    client_id: "c".into(),
                },
            )
            .unwrap();
        assert!(
            first.starts_with(r#"{"seq":1,"time":"2023-11-14T22:13:20Z","prev":"000"#),
            "{first}"
        );
        assert!(
            first.ends_with(r#""event":"consent_denied","client_id":"c"}"#),
            "{first}"
        );
        let checkpoint = head.checkpoint_line(1_700_000_001, &key).unwrap();
        let raw = RawLine::parse(&checkpoint).unwrap();
        assert_eq!(raw.prev, line_hash(&first));
        let mark = raw.checkpoint.unwrap();
        assert_eq!(mark.key_id, key.key_id());
        assert!(key.verify_checkpoint(2, &raw.time, &raw.prev, &mark.hmac));
        assert!(!key.verify_checkpoint(3, &raw.time, &raw.prev, &mark.hmac));
        let uppercase = mark.hmac.to_ascii_uppercase();
        assert!(!key.verify_checkpoint(2, &raw.time, &raw.prev, &uppercase));
        let other = AuditKey::from_bytes([8; 32]);
        assert!(!other.verify_checkpoint(2, &raw.time, &raw.prev, &mark.hmac));
        assert_ne!(other.key_id(), key.key_id());
    }

    /// The line as `#[serde(flatten)]` writes it: what `event_line_text` must match.
    #[derive(Serialize)]
    struct FlattenedLine<'a> {
        seq: u64,
        time: &'a str,
        prev: &'a str,
        #[serde(flatten)]
        event: &'a AuditEvent,
    }

    #[test]
    fn event_lines_are_byte_for_byte_the_flattened_form() {
        let events = [
            AuditEvent::ConsentDenied {
                client_id: "c\"\\\u{1b}\u{2028}é".into(),
            },
            AuditEvent::ToolCalled {
                session: "s-1".into(),
                user_id: -3,
                tool: "list_issues".into(),
                outcome: "error",
            },
            AuditEvent::SessionEnded {
                session: "s-2".into(),
                user_id: 9,
                reason: "idle".into(),
            },
        ];
        for (n, event) in events.iter().enumerate() {
            let seq = u64::MAX - n as u64;
            let time = format_time(1_700_000_000);
            let expected = serde_json::to_string(&FlattenedLine {
                seq,
                time: &time,
                prev: GENESIS,
                event,
            })
            .unwrap();
            assert_eq!(
                event_line_text(seq, &time, GENESIS, event).unwrap(),
                expected
            );
        }
    }

    #[test]
    fn key_debug_shows_only_the_fingerprint() {
        let key = AuditKey::from_bytes([0xab; 32]);
        let debug = format!("{key:?}");
        assert!(!debug.contains("abab"), "{debug}");
        assert!(debug.contains(&key.key_id()));
    }

    #[test]
    fn legacy_key_files_are_read_and_refused_when_readable_or_malformed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        let key = AuditKey::from_bytes([0x5a; 32]);
        std::fs::write(&path, format!("{}\n", hex::encode([0x5a; 32]))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(AuditKey::load(&path).unwrap().key_id(), key.key_id());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            AuditKey::load(&path),
            Err(AuditKeyError::Permissions { .. })
        ));
        std::fs::write(&path, "not hex").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            AuditKey::load(&path),
            Err(AuditKeyError::Malformed { .. })
        ));
    }

    #[test]
    fn times_round_trip() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_time("1970-01-01T00:01:00Z"), Some(60));
        assert_eq!(parse_time("60"), Some(60));
        assert_eq!(parse_time("yesterday"), None);
    }
}
