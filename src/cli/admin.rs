//! `forgejo-mcp-broker admin clients|users ...`: operator actions on the database, audited.
//!
//! A command reports its result only once its audit records are on disk: an action whose record
//! could not be written exits non-zero and says so (the action itself is done and stays done).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use forgejo_mcp_broker::admin::Admin;
use forgejo_mcp_broker::app::{AppDeps, open_file_audit};
use forgejo_mcp_broker::audit::chain::format_time;
use forgejo_mcp_broker::clock::{SharedClock, SystemClock};
use forgejo_mcp_broker::config::Config;
use forgejo_mcp_broker::metrics::Metrics;
use serde::Serialize;

#[derive(Args)]
pub struct AdminArgs {
    #[arg(long, short, env = "FORGEJO_MCP_BROKER_CONFIG")]
    config: PathBuf,
    /// JSON output (one object per line for lists).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Registered MCP clients.
    Clients {
        #[command(subcommand)]
        command: ClientsCommand,
    },
    /// Users (Forgejo accounts) known to the broker.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// MCP sessions.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    List {
        /// Only this Forgejo user id's sessions.
        #[arg(long)]
        user: Option<i64>,
    },
    /// End a session (the serving broker stops its child at its next housekeeping pass).
    End {
        /// The session label from `sessions list` (also the `session` of audit records).
        session: String,
    },
}

#[derive(Subcommand)]
enum ClientsCommand {
    List,
    /// Revoke every grant of the client and delete it.
    Delete {
        client_id: String,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    List,
    /// Burn the user's Forgejo refresh token, revoke their broker tokens, delete their stored
    /// Forgejo tokens.
    Revoke {
        user_id: i64,
        /// Go on even if Forgejo cannot be reached to burn the refresh token.
        #[arg(long)]
        force: bool,
    },
}

/// Adds one result line to `out`: JSON, or the `human` text.
fn print_one(
    out: &mut String,
    value: &impl Serialize,
    json: bool,
    human: String,
) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(value)?)?;
    } else {
        writeln!(out, "{human}")?;
    }
    Ok(())
}

/// Why the audit log at `path` lacks some of this command's records, if it does. Read after
/// [`FileAudit::close`](forgejo_mcp_broker::audit::FileAudit::close), when the counts are final.
pub(crate) fn audit_shortfall(
    path: &std::path::Path,
    write_errors: u64,
    dropped: u64,
) -> Option<String> {
    (write_errors > 0 || dropped > 0).then(|| {
        format!(
            "the audit log {} lacks this command's records ({write_errors} write error(s), {dropped} record(s) dropped): what the command did is done, but not audited; fix the log's storage (space, permissions) and record the action by other means",
            path.display()
        )
    })
}

pub fn run(args: AdminArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config)?;
    let clock: SharedClock = Arc::new(SystemClock);
    let metrics = Metrics::new();
    let audit = open_file_audit(&config, clock.clone(), metrics.clone())
        .context("cannot open the audit log")?;
    let deps = AppDeps {
        clock,
        audit: audit.clone(),
        metrics,
        launcher: None,
        audit_file: Some(audit.clone()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut out = String::new();
    let result = runtime.block_on(async {
        let admin = Admin::open(&config, &deps)?;
        execute(&admin, args.command, args.json, &mut out).await
    });
    // Tasks of the runtime (an upstream call finishing in a task of its own) are done
    // recording before the writer stops: a record after `close` would be dropped.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    // Every action is on disk, checkpointed, and known to be, before the command reports it: a
    // write error or a dropped record turns its success into a failure.
    audit.close();
    let shortfall = audit_shortfall(
        &config.audit.path(&config.server.data_dir),
        audit.write_errors(),
        audit.dropped(),
    );
    // What was done is printed even then: the operator must know it.
    print!("{out}");
    match (result, shortfall) {
        (result, None) => result,
        (Ok(_), Some(shortfall)) => Err(anyhow::anyhow!(shortfall)),
        (Err(error), Some(shortfall)) => Err(error.context(shortfall)),
    }
}

async fn execute(
    admin: &Admin,
    command: AdminCommand,
    json: bool,
    out: &mut String,
) -> anyhow::Result<ExitCode> {
    match command {
        AdminCommand::Clients {
            command: ClientsCommand::List,
        } => {
            let clients = admin.list_clients()?;
            if !json {
                writeln!(out, "CLIENT_ID  KIND  NAME  CREATED  LIVE_GRANTS")?;
            }
            for client in &clients {
                print_one(
                    out,
                    client,
                    json,
                    format!(
                        "{}  {}  {}  {}  {}",
                        client.client_id,
                        client.kind,
                        client.client_name.as_deref().unwrap_or("-"),
                        format_time(client.created_at),
                        client.live_grants
                    ),
                )?;
            }
        }
        AdminCommand::Clients {
            command: ClientsCommand::Delete { client_id },
        } => {
            let deletion = admin.delete_client(&client_id)?;
            print_one(
                out,
                &deletion,
                json,
                format!(
                    "deleted client {} ({} grant(s) revoked, {} session(s) ended)",
                    deletion.client_id, deletion.grants_revoked, deletion.sessions_ended
                ),
            )?;
        }
        AdminCommand::Sessions {
            command: SessionsCommand::List { user },
        } => {
            let sessions = admin.list_sessions(user)?;
            if !json {
                writeln!(out, "SESSION  USER_ID  CLIENT_ID  CREATED  LAST_SEEN")?;
            }
            for session in &sessions {
                print_one(
                    out,
                    session,
                    json,
                    format!(
                        "{}  {}  {}  {}  {}",
                        session.session,
                        session.user_id,
                        session.client_id,
                        format_time(session.created_at),
                        format_time(session.last_seen)
                    ),
                )?;
            }
        }
        AdminCommand::Sessions {
            command: SessionsCommand::End { session },
        } => {
            let ended = admin.end_session(&session)?;
            print_one(
                out,
                &ended,
                json,
                format!("ended session {} of user {}", ended.session, ended.user_id),
            )?;
        }
        AdminCommand::Users {
            command: UsersCommand::List,
        } => {
            let users = admin.list_users()?;
            if !json {
                writeln!(out, "USER_ID  USERNAME  UPSTREAM  LIVE_GRANTS")?;
            }
            for user in &users {
                print_one(
                    out,
                    user,
                    json,
                    format!(
                        "{}  {}  {}  {}",
                        user.user_id, user.username, user.upstream, user.live_grants
                    ),
                )?;
            }
        }
        AdminCommand::Users {
            command: UsersCommand::Revoke { user_id, force },
        } => {
            let revocation = admin.revoke_user(user_id, force).await?;
            print_one(
                out,
                &revocation,
                json,
                format!(
                    "revoked user {}: Forgejo refresh token {}, {} grant(s) revoked, {} session(s) ended, stored Forgejo tokens {}",
                    revocation.user_id,
                    if revocation.upstream_burned {
                        "burned"
                    } else {
                        "NOT burned (--force)"
                    },
                    revocation.grants_revoked,
                    revocation.sessions_ended,
                    if revocation.forgejo_tokens_deleted {
                        "deleted"
                    } else {
                        "none"
                    },
                ),
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
