//! The audit log: chain and checkpoints verify across rotation and restarts; tampering of each
//! kind is caught at the right place; `audit show` filters; every event type is writable.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use forgejo_mcp_broker::audit::chain::{ChainHead, line_hash};
use forgejo_mcp_broker::audit::review::{
    BreakKind, ShowFilter, VerifyPolicy, VerifyReport, order_files, render_table, select,
    verify_files,
};
use forgejo_mcp_broker::audit::writer::log_files;
use forgejo_mcp_broker::audit::{AuditEvent, AuditFileConfig, AuditKey, AuditSink, FileAudit};
use forgejo_mcp_broker::clock::ManualClock;
use forgejo_mcp_broker::metrics::Metrics;

const KEY: [u8; 32] = [0x42; 32];
const START: i64 = 1_790_000_000;

fn key() -> AuditKey {
    AuditKey::from_bytes(KEY)
}

fn file_config(path: &Path, rotate_bytes: u64, every: u64) -> AuditFileConfig {
    AuditFileConfig {
        path: path.to_path_buf(),
        rotate_bytes,
        checkpoint_every_lines: every,
        // Long: checkpoints in these tests come from the line count, close and flush only.
        checkpoint_every: Duration::from_secs(3600),
        queue_capacity: 1024,
    }
}

/// A writer on `path` with the test key, timed by `clock`.
fn open_log(
    path: &Path,
    rotate_bytes: u64,
    every: u64,
    clock: &Arc<ManualClock>,
) -> Arc<FileAudit> {
    FileAudit::open(
        file_config(path, rotate_bytes, every),
        key(),
        clock.clone(),
        Metrics::new(),
    )
    .unwrap()
}

fn token_issued(n: i64) -> AuditEvent {
    AuditEvent::TokenIssued {
        client_id: format!("client-{}", n % 3),
        user_id: n % 4,
        grant_id: format!("grant-{n}"),
    }
}

/// A closed log of `events` records with a checkpoint every 5, in one file.
fn write_log(dir: &Path, events: i64) -> PathBuf {
    let path = dir.join("audit.jsonl");
    let clock = ManualClock::new(START);
    let audit = open_log(&path, 1 << 30, 5, &clock);
    for n in 0..events {
        clock.advance(60);
        audit.record(token_issued(n));
    }
    audit.close();
    path
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn verify(path: &Path) -> VerifyReport {
    verify_files(&[path.to_path_buf()], Some(&key())).unwrap()
}

fn break_of(report: &VerifyReport) -> (usize, Option<u64>, BreakKind) {
    let found = report.first_break.clone().expect("a break is reported");
    (found.line, found.seq, found.kind)
}

#[test]
fn a_closed_log_verifies_completely() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 12);
    let report = verify(&path);
    assert!(report.is_ok(VerifyPolicy::STRICT), "{report}");
    assert_eq!(report.records, 12);
    // Every 5 records, then the final one at close.
    assert_eq!(report.checkpoints, 3);
    assert_eq!(report.unauthenticated_tail, 0);
    // Without the key only the chain is checked, and the verdict says so.
    let keyless = verify_files(&[path], None).unwrap();
    assert!(keyless.first_break.is_none());
    assert!(!keyless.is_ok(VerifyPolicy {
        allow_open_tail: true,
        allow_partial: true
    }));
    assert!(keyless.to_string().contains("NOT verified"));
}

/// The HMAC of a checkpoint covers its seq, time and prev only: text added to the last
/// checkpoint of a closed log (where no next line's `prev` covers it) must still be caught, and
/// never shown as an event.
#[test]
fn text_added_to_a_checkpoint_line_is_caught_and_never_shown_as_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 12);
    let mut log = lines(&path);
    let last = log.len() - 1;
    assert!(log[last].contains("\"checkpoint\""), "{}", log[last]);
    let forged = format!(
        "{},\"event\":\"user_revoked\",\"user_id\":7,\"by\":\"admin\"}}",
        log[last].strip_suffix('}').unwrap()
    );
    log[last] = forged;
    write_lines(&path, &log);
    let report = verify(&path);
    assert!(!report.is_ok(VerifyPolicy::STRICT), "{report}");
    assert_eq!(
        break_of(&report),
        (log.len(), Some(15), BreakKind::CheckpointAltered)
    );
    let shown = select(std::slice::from_ref(&path), &ShowFilter::default()).unwrap();
    assert!(
        shown.iter().all(|record| record["event"] != "user_revoked"),
        "{shown:?}"
    );
}

/// Someone with write access to the log cuts it (or deletes it) while the broker runs: the
/// writer, which knows where it left the chain, must not continue from the cut and let its next
/// checkpoint sign over the gap.
#[test]
fn a_log_cut_or_deleted_under_the_writer_is_recorded_and_fails_verify() {
    for delete in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let clock = ManualClock::new(START);
        let audit = open_log(&path, 1 << 30, 1000, &clock);
        for n in 0..5 {
            audit.record(token_issued(n));
        }
        audit.flush();
        let log = lines(&path);
        assert_eq!(log.len(), 6, "5 records and the flush's checkpoint");
        if delete {
            std::fs::remove_file(&path).unwrap();
        } else {
            write_lines(&path, &log[..2]);
        }
        audit.record(token_issued(9));
        audit.close();
        let report = verify(&path);
        assert!(!report.is_ok(VerifyPolicy::STRICT), "{report}");
        let (_, _, kind) = break_of(&report);
        assert_eq!(
            kind,
            BreakKind::Rewound {
                last_written: 6,
                found: if delete { 0 } else { 2 }
            },
            "delete: {delete}"
        );
    }
}

/// Strings from clients (a tool name) reach `audit show`'s table decoded: what a terminal would
/// act on (line breaks, escape sequences, bidi overrides) is shown escaped, never acted on.
#[test]
fn audit_show_never_prints_a_clients_control_characters() {
    let record = serde_json::to_value(AuditEvent::ToolCalled {
        session: "s1".into(),
        user_id: 7,
        tool: "x\n\u{1b}[2Kfake row\u{202E}gnp.exe".into(),
        outcome: "ok",
    })
    .unwrap();
    let table = render_table(&[record]);
    assert_eq!(table.lines().count(), 2, "a header and one row: {table:?}");
    assert!(!table.contains(['\u{1b}', '\u{202E}', '\r']), "{table:?}");
    assert!(
        table.contains("x\\u{a}\\u{1b}[2Kfake row\\u{202e}gnp.exe"),
        "{table}"
    );
}

#[test]
fn a_tampered_line_breaks_the_link_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 12);
    let mut log = lines(&path);
    log[2] = log[2].replace("\"client-2\"", "\"client-0\"");
    write_lines(&path, &log);
    assert_eq!(
        break_of(&verify(&path)),
        (4, Some(4), BreakKind::PrevMismatch)
    );
}

#[test]
fn a_deleted_line_is_a_sequence_gap_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 12);
    let mut log = lines(&path);
    log.remove(2);
    write_lines(&path, &log);
    assert_eq!(
        break_of(&verify(&path)),
        (
            3,
            Some(4),
            BreakKind::SequenceGap {
                expected: 3,
                found: 4
            }
        )
    );
}

#[test]
fn a_deleted_prefix_does_not_pass_as_a_complete_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 12);
    let log = lines(&path);
    // Everything up to and including the first checkpoint removed.
    write_lines(&path, &log[6..]);
    let report = verify(&path);
    assert!(report.first_break.is_none());
    assert!(report.starts_mid_chain);
    assert_eq!(report.first_seq, Some(7));
    assert!(!report.is_ok(VerifyPolicy::STRICT));
    assert!(
        report.to_string().contains("start at seq 7, not 1"),
        "{report}"
    );
}

#[test]
fn a_reordered_pair_is_caught_at_the_first_of_the_two() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 12);
    let mut log = lines(&path);
    log.swap(6, 7);
    write_lines(&path, &log);
    assert_eq!(
        break_of(&verify(&path)),
        (
            7,
            Some(8),
            BreakKind::SequenceGap {
                expected: 7,
                found: 8
            }
        )
    );
}

/// Rewrites records from line `from` (1-based) on with a consistent chain, as an attacker
/// without the key can; checkpoints get the real key id but a made-up HMAC.
fn forge_from(log: &[String], from: usize, edit: impl Fn(&mut serde_json::Value)) -> Vec<String> {
    let mut forged: Vec<String> = log[..from - 1].to_vec();
    let previous = &forged[from - 2];
    let mut head = ChainHead {
        next_seq: serde_json::from_str::<serde_json::Value>(previous).unwrap()["seq"]
            .as_u64()
            .unwrap()
            + 1,
        prev: line_hash(previous),
    };
    for line in &log[from - 1..] {
        let mut record: serde_json::Value = serde_json::from_str(line).unwrap();
        edit(&mut record);
        record["seq"] = head.next_seq.into();
        record["prev"] = head.prev.clone().into();
        if record.get("checkpoint").is_some() {
            record["checkpoint"]["hmac"] = "ab".repeat(32).into();
        }
        let text = serde_json::to_string(&record).unwrap();
        head = ChainHead {
            next_seq: head.next_seq + 1,
            prev: line_hash(&text),
        };
        forged.push(text);
    }
    forged
}

#[test]
fn rewriting_history_with_recomputed_hashes_fails_at_the_next_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 12);
    let log = lines(&path);
    // Line 2 (seq 2) gets a different user; every later hash is recomputed to match.
    let forged = forge_from(&log, 2, |record| {
        if record["seq"] == 2 {
            record["user_id"] = 999.into();
        }
    });
    write_lines(&path, &forged);
    // The chain is consistent; the checkpoint at line 6 (seq 6) is where it fails.
    assert_eq!(
        break_of(&verify(&path)),
        (6, Some(6), BreakKind::CheckpointForged)
    );
}

#[test]
fn a_forged_tail_is_caught_at_its_checkpoint_or_reported_as_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 12);
    let log = lines(&path);
    // Cut after the second checkpoint (line 12) and append forged records plus a checkpoint.
    let mut tail: Vec<String> = log[..12].to_vec();
    tail.extend(log[..6].iter().cloned());
    let forged = forge_from(&tail, 13, |_| {});
    write_lines(&path, &forged);
    assert_eq!(
        break_of(&verify(&path)),
        (18, Some(18), BreakKind::CheckpointForged)
    );

    // Records appended after the final checkpoint, without one: no break in the chain, but
    // verify refuses them as unauthenticated (the broker always closes with a checkpoint).
    let mut appended = log.clone();
    appended.extend(log[..2].iter().cloned());
    let appended = forge_from(&appended, log.len() + 1, |_| {});
    write_lines(&path, &appended);
    let report = verify(&path);
    assert!(report.first_break.is_none(), "{report}");
    assert_eq!(report.unauthenticated_tail, 2);
    assert!(!report.is_ok(VerifyPolicy::STRICT));
    assert!(report.to_string().contains("not authenticated"));
}

#[test]
fn checkpoints_made_with_another_key_are_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 6);
    let other = AuditKey::from_bytes([1; 32]);
    let report = verify_files(&[path], Some(&other)).unwrap();
    assert!(matches!(
        break_of(&report),
        (6, Some(6), BreakKind::CheckpointUnknownKey { .. })
    ));
}

#[test]
fn the_chain_continues_across_rotation_restarts_and_a_torn_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let clock = ManualClock::new(START);
    let metrics = Metrics::new();
    let audit = FileAudit::open(
        file_config(&path, 4096, 7),
        key(),
        clock.clone(),
        metrics.clone(),
    )
    .unwrap();
    for n in 0..100 {
        clock.advance(1);
        audit.record(token_issued(n));
    }
    audit.close();
    // A crash mid-write leaves a torn line; the next start cuts it and continues the chain.
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    text.push_str(r#"{"seq":999,"time":"#);
    std::fs::write(&path, text).unwrap();
    let audit = FileAudit::open(
        file_config(&path, 4096, 7),
        key(),
        clock.clone(),
        metrics.clone(),
    )
    .unwrap();
    for n in 100..150 {
        audit.record(token_issued(n));
    }
    audit.flush();
    assert_eq!(audit.dropped(), 0);
    assert_eq!(audit.write_errors(), 0);
    drop(audit); // Dropping the last handle closes with a checkpoint too.

    let files = log_files(&path);
    assert!(files.len() >= 3, "rotation happened: {files:?}");
    // Rotated files are named by their first seq and hold at most a little over 4 KiB.
    for file in &files[..files.len() - 1] {
        assert!(std::fs::metadata(file).unwrap().len() < 4096 + 512);
    }
    // Order on the command line does not matter.
    let mut shuffled = files.clone();
    shuffled.reverse();
    let ordered = order_files(&shuffled).unwrap();
    assert_eq!(ordered, files);
    let report = verify_files(&files, Some(&key())).unwrap();
    assert!(report.is_ok(VerifyPolicy::STRICT), "{report}");
    assert_eq!(report.records, 150);
    assert_eq!(report.first_seq, Some(1));
    // A later file alone verifies too, noting it starts mid-chain.
    let last_alone = verify_files(&files[files.len() - 1..], Some(&key())).unwrap();
    assert!(last_alone.first_break.is_none());
    assert!(last_alone.starts_mid_chain);
    // ...which passes only when partial logs are accepted: a deleted prefix must not pass.
    assert!(!last_alone.is_ok(VerifyPolicy::STRICT));
    assert!(last_alone.is_ok(VerifyPolicy {
        allow_partial: true,
        ..VerifyPolicy::STRICT
    }));
    assert!(
        metrics
            .encode()
            .contains("forgejo_mcp_broker_audit_events_total 150")
    );
}

/// Exhaustive on purpose: a new event type does not compile until it is listed here.
fn every_event() -> Vec<AuditEvent> {
    use AuditEvent as E;
    let events = vec![
        E::ConfigLoaded {
            source: "serve".into(),
        },
        E::ClientRegistered {
            client_id: "c1".into(),
            client_name: Some("Inspector".into()),
            method: "dcr".into(),
            ip: Some("192.0.2.1".into()),
        },
        E::ClientExpired {
            client_id: "c1".into(),
        },
        E::ClientDeleted {
            client_id: "c1".into(),
            by: "admin".into(),
        },
        E::ConsentGranted {
            client_id: "c1".into(),
            user_id: Some(7),
        },
        E::ConsentDenied {
            client_id: "c1".into(),
        },
        E::UpstreamLogin {
            user_id: 7,
            username: "alice".into(),
        },
        E::UpstreamLoginFailed {
            reason: "state_mismatch".into(),
        },
        E::UpstreamVersion {
            product: "forgejo".into(),
            version: "11.0.1+gitea-1.22.0".into(),
        },
        E::UpstreamRefreshed { user_id: 7 },
        E::UpstreamRefreshFailed {
            user_id: 7,
            reason: "timeout".into(),
        },
        E::UpstreamGrantDead { user_id: 7 },
        E::CodeIssued {
            client_id: "c1".into(),
            user_id: 7,
        },
        E::CodeReused {
            client_id: "c1".into(),
            user_id: 7,
            presented_by: "c2".into(),
        },
        E::TokenIssued {
            client_id: "c1".into(),
            user_id: 7,
            grant_id: "g1".into(),
        },
        E::TokenRefreshed {
            client_id: "c1".into(),
            user_id: 7,
            grant_id: "g1".into(),
        },
        E::RefreshTokenReuse {
            client_id: "c1".into(),
            user_id: 7,
            grant_id: "g1".into(),
        },
        E::TokenRevoked {
            client_id: "c1".into(),
            user_id: 7,
            grant_id: "g1".into(),
            token_type: "refresh_token".into(),
        },
        E::UserRevoked {
            user_id: 7,
            by: "admin".into(),
        },
        E::SessionCreated {
            session: "s-abc".into(),
            user_id: 7,
            client_id: "c1".into(),
            protocol_version: "2025-06-18".into(),
        },
        E::SessionHibernated {
            session: "s-abc".into(),
            user_id: 7,
        },
        E::SessionResumed {
            session: "s-abc".into(),
            user_id: 7,
            reason: "request".into(),
        },
        E::SessionEnded {
            session: "s-abc".into(),
            user_id: 7,
            reason: "delete".into(),
        },
        E::ChildSpawned {
            session: "s-abc".into(),
            user_id: 7,
            layers: vec!["landlock".into()],
            degraded: vec![],
        },
        E::ChildExited {
            session: "s-abc".into(),
            user_id: 7,
            reason: "idle".into(),
        },
        E::ToolCalled {
            session: "s-abc".into(),
            user_id: 7,
            tool: "list_issues".into(),
            outcome: "ok",
        },
        E::UpstreamApiCall {
            session: "s-abc".into(),
            user_id: 7,
            method: "GET".into(),
            path: "/api/v1/user".into(),
            status: 200,
        },
        E::UpstreamApiDenied {
            session: "s-abc".into(),
            user_id: 7,
            method: "DELETE".into(),
            path: "/api/v1/repos/a/b".into(),
        },
        E::RateLimited {
            endpoint: "token".into(),
            key_kind: "ip".into(),
            ip: Some("192.0.2.1".into()),
        },
        E::VaultEvent {
            action: "rotate".into(),
            detail: "key 2".into(),
        },
    ];
    for event in &events {
        match event {
            E::ConfigLoaded { .. }
            | E::ClientRegistered { .. }
            | E::ClientExpired { .. }
            | E::ClientDeleted { .. }
            | E::ConsentGranted { .. }
            | E::ConsentDenied { .. }
            | E::UpstreamLogin { .. }
            | E::UpstreamLoginFailed { .. }
            | E::UpstreamVersion { .. }
            | E::UpstreamRefreshed { .. }
            | E::UpstreamRefreshFailed { .. }
            | E::UpstreamGrantDead { .. }
            | E::CodeIssued { .. }
            | E::CodeReused { .. }
            | E::TokenIssued { .. }
            | E::TokenRefreshed { .. }
            | E::RefreshTokenReuse { .. }
            | E::TokenRevoked { .. }
            | E::UserRevoked { .. }
            | E::SessionCreated { .. }
            | E::SessionHibernated { .. }
            | E::SessionResumed { .. }
            | E::SessionEnded { .. }
            | E::ChildSpawned { .. }
            | E::ChildExited { .. }
            | E::ToolCalled { .. }
            | E::UpstreamApiCall { .. }
            | E::UpstreamApiDenied { .. }
            | E::RateLimited { .. }
            | E::VaultEvent { .. } => {}
            // Written by the writer itself when it finds the log cut; a break for verify
            // (`a_log_cut_or_deleted_under_the_writer_is_recorded_and_fails_verify`).
            E::AuditLogRewound { .. } => {}
        }
    }
    events
}

#[test]
fn every_event_type_is_written_verified_and_found_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let clock = ManualClock::new(START);
    let audit = open_log(&path, 1 << 30, 10, &clock);
    let events = every_event();
    for event in &events {
        audit.record(event.clone());
    }
    audit.close();
    let files = vec![path];
    assert!(
        verify_files(&files, Some(&key()))
            .unwrap()
            .is_ok(VerifyPolicy::STRICT)
    );
    for event in &events {
        let filter = ShowFilter {
            events: vec![event.name()],
            ..ShowFilter::default()
        };
        let found = select(&files, &filter).unwrap();
        assert_eq!(found.len(), 1, "{}", event.name());
        let mut expected = serde_json::to_value(event).unwrap();
        let record = &found[0];
        for (name, value) in expected.as_object_mut().unwrap().iter() {
            assert_eq!(&record[name], value, "{}: {name}", event.name());
        }
    }
}

fn cli(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_forgejo-mcp-broker"))
        .args(args)
        .env_remove("FORGEJO_MCP_BROKER_CONFIG")
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// A pre-vault broker's 0600 checkpoint key file holding [`KEY`].
fn legacy_key_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("audit.key");
    std::fs::write(&path, hex::encode(KEY)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A broker configuration over `dir` (vault key file and audit log inside it).
fn config_file(dir: &Path) -> PathBuf {
    let path = dir.join("broker.toml");
    std::fs::write(
        &path,
        crate::fixtures::minimal_config_toml("http://127.0.0.1:9", dir),
    )
    .unwrap();
    path
}

/// The log of a broker from before the key moved into the vault: its checkpoints were made
/// with the key file's key. The first command that opens the vault moves that key in and
/// removes the file; `audit verify --config` then verifies the old checkpoints with the
/// vault's key, and catches a deleted line at the right place.
#[test]
fn audit_verify_cli_takes_the_key_from_the_vault_and_reports_the_first_break() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 12);
    let legacy = legacy_key_file(dir.path());
    let config = config_file(dir.path());
    let config = config.to_str().unwrap();
    let log_path = path.to_str().unwrap();

    let (ok, out) = cli(&["vault", "init", "--config", config]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&["audit", "verify", log_path, "--config", config]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("the vault holds no audit checkpoint key yet"),
        "{out}"
    );
    // Any command that opens the vault for writing moves the key in.
    let (ok, out) = cli(&["admin", "--config", config, "users", "list"]);
    assert!(ok, "{out}");
    assert!(
        !legacy.exists(),
        "the key file is removed once the key is in the vault"
    );

    let (ok, out) = cli(&["audit", "verify", log_path, "--config", config]);
    assert!(ok, "{out}");
    assert!(out.contains("chain intact"), "{out}");
    let key_id = key().key_id();
    assert!(
        out.contains(&key_id),
        "checkpoints verified with the imported key: {out}"
    );
    let (ok, out) = cli(&["audit", "verify", log_path]);
    assert!(!ok, "without a key the verdict is not a pass: {out}");
    let log = std::fs::read_to_string(&path).unwrap();
    assert!(log.contains(r#""action":"audit_key_imported""#), "{log}");
    assert!(!log.contains(&hex::encode(KEY)));

    let mut log = lines(&path);
    log.remove(8);
    write_lines(&path, &log);
    let (ok, out) = cli(&["audit", "verify", log_path, "--config", config]);
    assert!(!ok);
    assert!(
        out.contains(&format!(
            "BROKEN at {log_path}:9 (seq 10): sequence broken: expected seq 9, found 10"
        )),
        "{out}"
    );
}

#[test]
fn audit_show_filters_by_user_client_session_event_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let clock = ManualClock::new(START);
    let audit = open_log(&path, 1 << 30, 10, &clock);
    for n in 0..12 {
        clock.advance(60);
        audit.record(token_issued(n));
    }
    clock.advance(60);
    audit.record(AuditEvent::SessionCreated {
        session: "sess-1234".into(),
        user_id: 1,
        client_id: "client-1".into(),
        protocol_version: "2025-06-18".into(),
    });
    audit.close();
    let log_path = path.to_str().unwrap();
    let show = |extra: &[&str]| {
        let mut args = vec!["audit", "show", log_path, "--json"];
        args.extend_from_slice(extra);
        let (ok, out) = cli(&args);
        assert!(ok, "{out}");
        out.lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .collect::<Vec<_>>()
    };
    // user_id = n % 4 == 1 → n = 1, 5, 9, plus the session.
    let by_user = show(&["--user", "1"]);
    assert_eq!(by_user.len(), 4);
    assert!(by_user.iter().all(|r| r["user_id"] == 1));
    let tokens_of_user = show(&["--user", "1", "--event", "token_issued"]);
    assert_eq!(tokens_of_user.len(), 3);
    let by_client = show(&["--client", "client-0"]);
    assert_eq!(by_client.len(), 4); // n = 0, 3, 6, 9
    let by_session = show(&["--session", "sess-12"]);
    assert_eq!(by_session.len(), 1);
    assert_eq!(by_session[0]["event"], "session_created");
    // Records at START+60·k for n = k-1; the window [START+180, START+300] holds n = 2, 3, 4.
    let since = (START + 180).to_string();
    let until = forgejo_mcp_broker::audit::chain::format_time(START + 300);
    let window = show(&["--since", &since, "--until", &until]);
    let grants: Vec<_> = window
        .iter()
        .map(|r| r["grant_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(grants, ["grant-2", "grant-3", "grant-4"]);
    assert!(show(&[]).iter().all(|r| r.get("checkpoint").is_none()));

    let (ok, table) = cli(&["audit", "show", log_path, "--session", "sess"]);
    assert!(ok);
    let mut rows = table.lines();
    assert!(rows.next().unwrap().starts_with("SEQ"));
    let row = rows.next().unwrap();
    assert!(
        row.contains("session_created")
            && row.contains("client-1")
            && row.contains("protocol_version=2025-06-18"),
        "{row}"
    );
    assert!(rows.next().is_none());
}

#[tokio::test]
async fn the_served_broker_writes_a_verifiable_log_without_secrets() {
    use forgejo_mcp_broker::app;
    use forgejo_mcp_broker::config::Config;

    let data_dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = Config::from_toml(&format!(
        r#"
        [server]
        public_url = "http://127.0.0.1:{port}"
        data_dir = "{}"
        [forgejo]
        url = "http://127.0.0.1:9"
        client_id = "broker"
        client_secret = "forgejo-client-SECRET-31337"
        [rate_limits.register]
        per_ip = "1/h"
        "#,
        data_dir.path().display()
    ))
    .unwrap();
    let (deps, audit) = app::AppDeps::for_config(&config).unwrap();
    let running = app::start_on(config.clone(), listener, deps).await.unwrap();
    // A rate-limit trip goes through the shared limiter into the file.
    let key = forgejo_mcp_broker::ratelimit::RateKey::ip("192.0.2.9".parse().unwrap());
    let limiter = Arc::clone(&running.rate_limiter);
    let register = forgejo_mcp_broker::ratelimit::EndpointClass::Register;
    assert!(limiter.check(register, &key).is_ok());
    assert!(limiter.check(register, &key).is_err());
    assert!(running.shutdown(Duration::from_secs(10)).await);
    tokio::task::spawn_blocking(move || audit.close())
        .await
        .unwrap();

    let active = config.audit.path(&config.server.data_dir);
    // The checkpoint key is in the vault, never in a file beside the log.
    assert!(!config.audit.key_file(&config.server.data_dir).exists());
    let key = app::audit_key_for_verification(&config).unwrap().unwrap();
    let report = verify_files(&log_files(&active), Some(&key)).unwrap();
    assert!(report.is_ok(VerifyPolicy::STRICT), "{report}");
    let text = std::fs::read_to_string(&active).unwrap();
    assert!(text.contains(r#""event":"config_loaded""#));
    assert!(
        text.contains(
            r#""event":"rate_limited","endpoint":"register","key_kind":"ip","ip":"192.0.2.9""#
        ),
        "{text}"
    );
    assert!(!text.contains("SECRET"));
    assert!(
        text.contains(&format!(
            r#""action":"audit_key_created","detail":"key_id={}""#,
            key.key_id()
        )),
        "{text}"
    );
}

#[test]
fn a_quiet_writer_checkpoints_pending_records_on_its_timer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let config = AuditFileConfig {
        checkpoint_every: Duration::from_millis(100),
        ..file_config(&path, 1 << 30, 1000)
    };
    let audit = FileAudit::open(config, key(), ManualClock::new(START), Metrics::new()).unwrap();
    audit.record(token_issued(1));
    // Nothing but the timer would write a checkpoint.
    poll_for_checkpoint(&path, Duration::from_millis(20), || {});
    let report = verify_files(std::slice::from_ref(&path), Some(&key())).unwrap();
    assert!(report.is_ok(VerifyPolicy::STRICT), "{report}");
    audit.close();
}

/// Records arriving more often than `checkpoint_every` still get their checkpoint about
/// `checkpoint_every` after the first of them (a timer restarted by every record never fired).
#[test]
fn a_steady_trickle_of_records_still_gets_its_timed_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let config = AuditFileConfig {
        checkpoint_every: Duration::from_millis(300),
        ..file_config(&path, 1 << 30, 1000)
    };
    let audit = FileAudit::open(config, key(), ManualClock::new(START), Metrics::new()).unwrap();
    // One record every 50 ms, well inside the 300 ms period, until a checkpoint shows.
    let mut n = 0;
    poll_for_checkpoint(&path, Duration::from_millis(50), || {
        audit.record(token_issued(n));
        n += 1;
    });
    audit.close();
}

/// Waits (at most 10 s, failing then) until the log at `path` holds a checkpoint, which only
/// the writer's timer can write in these tests; `between` runs before each pause of `every`.
fn poll_for_checkpoint(path: &Path, every: Duration, mut between: impl FnMut()) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains("\"checkpoint\"") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint within 10 s: {text}"
        );
        between();
        std::thread::sleep(every);
    }
}

mod any_single_byte_change {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Whatever byte of a closed log is changed, to whatever other printable character,
        /// verification with the key does not pass.
        #[test]
        fn is_never_accepted(position in any::<prop::sample::Index>(), replacement in 0x20u8..0x7f) {
            let dir = tempfile::tempdir().unwrap();
            let path = write_log(dir.path(), 12);
            let mut bytes = std::fs::read(&path).unwrap();
            // Newlines are structure, not content: change a byte inside a line.
            let candidates: Vec<usize> = bytes
                .iter()
                .enumerate()
                .filter(|(_, b)| **b != b'\n')
                .map(|(i, _)| i)
                .collect();
            let index = candidates[position.index(candidates.len())];
            prop_assume!(bytes[index] != replacement);
            bytes[index] = replacement;
            std::fs::write(&path, &bytes).unwrap();
            let report = verify_files(std::slice::from_ref(&path), Some(&key())).unwrap();
            prop_assert!(!report.is_ok(VerifyPolicy::STRICT), "byte {index} → {:?} accepted:\n{report}", replacement as char);
        }
    }
}

/// The broker and a command run beside it (`admin`, `vault`) append to the same log: the
/// lock-and-resync protocol keeps one chain, through rotations by either.
#[test]
fn two_writers_on_one_log_keep_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let clock = ManualClock::new(START);
    let open = || open_log(&path, 8192, 7, &clock);
    let serving = open();
    let command = open();
    // Both writers' threads race for the file.
    std::thread::scope(|scope| {
        scope.spawn(|| (0..150).for_each(|n| serving.record(token_issued(n))));
        scope.spawn(|| (150..300).for_each(|n| command.record(token_issued(n))));
    });
    command.close();
    serving.close();
    assert_eq!(serving.write_errors() + command.write_errors(), 0);
    let files = log_files(&path);
    assert!(files.len() > 2, "{files:?}");
    let report = verify_files(&files, Some(&key())).unwrap();
    assert!(report.is_ok(VerifyPolicy::STRICT), "{report}");
    assert_eq!(report.records, 300);
}
