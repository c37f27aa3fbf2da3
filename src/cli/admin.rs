//! `forgejo-mcp-broker admin clients|users ...`: operator actions on the database, audited.

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

fn print_one(value: &impl Serialize, json: bool, human: String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(value)?);
    } else {
        println!("{human}");
    }
    Ok(())
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
    let result = runtime.block_on(async {
        let admin = Admin::open(&config, &deps)?;
        execute(&admin, args.command, args.json).await
    });
    // Every action is on disk, checkpointed, before the command reports success.
    audit.close();
    result
}

async fn execute(admin: &Admin, command: AdminCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        AdminCommand::Clients {
            command: ClientsCommand::List,
        } => {
            let clients = admin.list_clients()?;
            if !json {
                println!("CLIENT_ID  KIND  NAME  CREATED  LIVE_GRANTS");
            }
            for client in &clients {
                print_one(
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
                println!("SESSION  USER_ID  CLIENT_ID  CREATED  LAST_SEEN");
            }
            for session in &sessions {
                print_one(
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
                println!("USER_ID  USERNAME  UPSTREAM  LIVE_GRANTS");
            }
            for user in &users {
                print_one(
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
