//! Costs of the abuse-resistance and accountability paths, each against a baseline measured
//! in the same run (bench/src/lib.rs):
//! - one rate-limit check (per-IP key, allowed), vs a mutex-guarded HashMap counter;
//! - recording one audit event on the caller's side (queue hand-off), vs pushing it to a
//!   mutex-guarded Vec (`MemoryAudit`);
//! - the writer's cost per event (serialise, hash-chain, append, checkpoint every 100), vs
//!   serialising and appending the bare event line to a file;
//! - `audit verify` per line, vs parsing each line as JSON only;
//! - the database change stamp every token check reads (an inotify watch on the database's
//!   files), vs the `PRAGMA data_version` read transaction it replaced.
//!
//! Run: `cargo bench -p bench --bench ops`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bench::{quantile, sample};
use forgejo_mcp_broker::audit::review::verify_files;
use forgejo_mcp_broker::audit::{
    AuditEvent, AuditFileConfig, AuditKey, AuditSink, FileAudit, MemoryAudit,
};
use forgejo_mcp_broker::clock::SystemClock;
use forgejo_mcp_broker::metrics::Metrics;
use forgejo_mcp_broker::ratelimit::{EndpointClass, RateKey, RateLimitConfig, RateLimiter};

fn report(name: &str, samples: &[Duration], baseline: &[Duration], base_name: &str) {
    let (median, base) = (quantile(samples, 0.5), quantile(baseline, 0.5));
    println!(
        "{name:<40} median {:>9.2?}  ({base_name} {:>9.2?}, x{:.2})  p99 {:>9.2?}",
        median,
        base,
        median.as_secs_f64() / base.as_secs_f64().max(1e-12),
        quantile(samples, 0.99),
    );
}

fn event(n: u64) -> AuditEvent {
    AuditEvent::TokenIssued {
        client_id: format!("client-{}", n % 17),
        user_id: i64::try_from(n % 1000).unwrap(),
        grant_id: format!("grant-{n}"),
    }
}

fn per_item(total: Duration, items: u64) -> Duration {
    total / u32::try_from(items).unwrap()
}

fn main() {
    change_stamp();

    // Rate limiting.
    let config: RateLimitConfig = toml_like_unlimited();
    let limiter = RateLimiter::new(&config, &[], Metrics::new(), MemoryAudit::new());
    let mut n = 0u32;
    let checks = sample(200_000, || {
        n = n.wrapping_add(1);
        let key = RateKey::ip(IpAddr::V4(Ipv4Addr::from(n % 4096)));
        let _ = limiter.check(EndpointClass::Token, &key);
    });
    let counters: Mutex<HashMap<RateKey, u64>> = Mutex::new(HashMap::new());
    let mut m = 0u32;
    let baseline = sample(200_000, || {
        m = m.wrapping_add(1);
        let key = RateKey::ip(IpAddr::V4(Ipv4Addr::from(m % 4096)));
        *counters.lock().unwrap().entry(key).or_default() += 1;
    });
    report(
        "rate-limit check (per IP)",
        &checks,
        &baseline,
        "hashmap counter",
    );

    // Audit: the caller's side.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = [7u8; 32];
    let file_config = AuditFileConfig {
        path: path.clone(),
        rotate_bytes: 1 << 40,
        checkpoint_every_lines: 100,
        checkpoint_every: Duration::from_secs(3600),
        queue_capacity: 1 << 20,
    };
    let audit = FileAudit::open(
        file_config,
        AuditKey::from_bytes(key),
        Arc::new(SystemClock),
        Metrics::new(),
    )
    .unwrap();
    let mut i = 0u64;
    let records = sample(100_000, || {
        i += 1;
        audit.record(event(i));
    });
    let memory = MemoryAudit::new();
    let mut j = 0u64;
    let memory_records = sample(100_000, || {
        j += 1;
        memory.record(event(j));
    });
    report(
        "audit record (caller side)",
        &records,
        &memory_records,
        "MemoryAudit",
    );

    // Audit: the writer's cost per event (everything above, then flushed).
    let start = Instant::now();
    audit.flush();
    let total = start.elapsed();
    let mut writer_samples = Vec::new();
    let events = 20_000u64;
    for round in 0..5u64 {
        let start = Instant::now();
        for k in 0..events {
            audit.record(event(round * events + k));
        }
        audit.flush();
        writer_samples.push(per_item(start.elapsed(), events));
    }
    writer_samples.sort();
    let plain_path = dir.path().join("plain.jsonl");
    let mut plain = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&plain_path)
        .unwrap();
    let mut plain_samples = Vec::new();
    for round in 0..5u64 {
        let start = Instant::now();
        for k in 0..events {
            let mut line = serde_json::to_vec(&event(round * events + k)).unwrap();
            line.push(b'\n');
            plain.write_all(&line).unwrap();
        }
        plain.sync_data().unwrap();
        plain_samples.push(per_item(start.elapsed(), events));
    }
    plain_samples.sort();
    report(
        "audit writer per event",
        &writer_samples,
        &plain_samples,
        "plain append",
    );
    println!("  (draining the 100k-event backlog took {total:.2?})");
    audit.close();

    // Verify.
    let lines = std::fs::read_to_string(&path).unwrap().lines().count() as u64;
    let files = vec![path.clone()];
    let verify_samples: Vec<Duration> = {
        let mut samples: Vec<Duration> = (0..3)
            .map(|_| {
                let start = Instant::now();
                let report = verify_files(&files, Some(&AuditKey::from_bytes(key))).unwrap();
                assert!(report.first_break.is_none());
                per_item(start.elapsed(), lines)
            })
            .collect();
        samples.sort();
        samples
    };
    let parse_samples: Vec<Duration> = {
        let mut samples: Vec<Duration> = (0..3)
            .map(|_| {
                let start = Instant::now();
                let text = std::fs::read_to_string(&path).unwrap();
                for line in text.lines() {
                    let _: serde_json::Value = serde_json::from_str(line).unwrap();
                }
                per_item(start.elapsed(), lines)
            })
            .collect();
        samples.sort();
        samples
    };
    report(
        &format!("audit verify per line ({lines} lines)"),
        &verify_samples,
        &parse_samples,
        "JSON parse",
    );
}

/// The verifier's question "did the database change?", answered by the watch, against the
/// SQLite read transaction that answered it before (a second connection, so nothing is cached).
fn change_stamp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.db");
    let db = forgejo_mcp_broker::store::Db::open(&path).unwrap();
    db.migrate("bench", &["CREATE TABLE t (a INTEGER);"])
        .unwrap();
    let stamps = sample(100_000, || {
        db.change_stamp().unwrap();
    });
    let connection = rusqlite::Connection::open(&path).unwrap();
    let pragma = sample(100_000, || {
        let _: i64 = connection
            .prepare_cached("PRAGMA data_version")
            .unwrap()
            .query_row([], |row| row.get(0))
            .unwrap();
    });
    report(
        "database change stamp (inotify watch)",
        &stamps,
        &pragma,
        "PRAGMA data_version",
    );
}

/// Limits high enough that every check is allowed (the common path).
fn toml_like_unlimited() -> RateLimitConfig {
    let mut config = RateLimitConfig::default();
    config.token.per_ip = Some(forgejo_mcp_broker::ratelimit::Rates(vec![
        forgejo_mcp_broker::ratelimit::Rate::new(1_000_000, 1),
    ]));
    config
}
