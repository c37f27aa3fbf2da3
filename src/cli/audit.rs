//! `forgejo-mcp-broker audit verify|show`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use forgejo_mcp_broker::app::audit_key_for_verification;
use forgejo_mcp_broker::audit::chain::parse_time;
use forgejo_mcp_broker::audit::review::{
    ShowFilter, VerifyPolicy, files_or_default, order_files, render_table, select, verify_files,
};
use forgejo_mcp_broker::config::Config;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain and the HMAC checkpoints; report the first break precisely.
    /// Exit status 0 only if intact, checkpoints verified and nothing follows the last one.
    Verify {
        /// Log files (any order; rotated files are ordered by their first seq). Default: the
        /// configured log and its rotated files.
        files: Vec<PathBuf>,
        /// The broker's configuration: names the log, and the vault that holds the checkpoint
        /// key (its master key must be available, as for `serve`). Without it only the hash
        /// chain is checked, which anyone can recompute.
        #[arg(long, short, env = "FORGEJO_MCP_BROKER_CONFIG")]
        config: Option<PathBuf>,
        /// Accept records after the last checkpoint (a log that is still being written).
        #[arg(long)]
        allow_open_tail: bool,
        /// Accept a log that starts after seq 1 (older rotated files archived or deleted).
        #[arg(long)]
        allow_partial: bool,
    },
    /// Print records matching every given filter (does not verify: run `verify` for that).
    Show {
        files: Vec<PathBuf>,
        #[arg(long, short, env = "FORGEJO_MCP_BROKER_CONFIG")]
        config: Option<PathBuf>,
        /// Forgejo user id.
        #[arg(long)]
        user: Option<i64>,
        #[arg(long)]
        client: Option<String>,
        /// Session id prefix.
        #[arg(long)]
        session: Option<String>,
        /// Event name (`token_issued`, `session_ended`, ...); repeatable.
        #[arg(long = "event")]
        events: Vec<String>,
        /// RFC 3339 time or Unix seconds.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// One JSON record per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn resolve_files(files: Vec<PathBuf>, config: Option<&Config>) -> anyhow::Result<Vec<PathBuf>> {
    let active = config.map(|config| config.audit.path(&config.server.data_dir));
    let files = files_or_default(&files, active.as_deref());
    if files.is_empty() {
        bail!("no audit log files: give FILES or --config");
    }
    order_files(&files).context("cannot read the audit log")
}

pub fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify {
            files,
            config,
            allow_open_tail,
            allow_partial,
        } => {
            let config = config.map(|path| Config::load(&path)).transpose()?;
            let files = resolve_files(files, config.as_ref())?;
            let key = match &config {
                None => None,
                Some(config) => Some(
                    audit_key_for_verification(config)
                        .context("cannot read the audit checkpoint key from the vault")?
                        .context(
                            "the vault holds no audit checkpoint key yet: start the broker once (it creates the key), then verify",
                        )?,
                ),
            };
            let report = verify_files(&files, key.as_ref()).context("cannot read the audit log")?;
            for file in &files {
                println!("file {}", file.display());
            }
            if let Some(key) = &key {
                println!("checkpoint key {} (from the vault)", key.key_id());
            }
            print!("{report}");
            let policy = VerifyPolicy {
                allow_open_tail,
                allow_partial,
            };
            Ok(if report.is_ok(policy) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AuditCommand::Show {
            files,
            config,
            user,
            client,
            session,
            events,
            since,
            until,
            json,
        } => {
            let config = config.map(|path| Config::load(&path)).transpose()?;
            let files = resolve_files(files, config.as_ref())?;
            let time = |text: Option<String>| -> anyhow::Result<Option<i64>> {
                text.map(|text| {
                    parse_time(&text).with_context(|| {
                        format!("{text:?} is not an RFC 3339 time or Unix seconds")
                    })
                })
                .transpose()
            };
            let filter = ShowFilter {
                user_id: user,
                client_id: client,
                session,
                events,
                since: time(since)?,
                until: time(until)?,
            };
            let records = select(&files, &filter).context("cannot read the audit log")?;
            if json {
                for record in &records {
                    println!("{record}");
                }
            } else {
                print!("{}", render_table(&records));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
