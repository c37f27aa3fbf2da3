//! The `forgejo-mcp-broker` command: `serve`, `check-config`, and the operator verbs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod cli;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use forgejo_mcp_broker::app::{self, AppDeps};
use forgejo_mcp_broker::config::{Config, LogFormat, init_logging};
use forgejo_mcp_broker::supervisor::sandbox_config::SandboxConfig;

/// mimalloc in its secure mode (guard pages, randomised allocation, encoded free lists): it
/// hardens the heap the broker's parsers write into, and costs less than glibc's malloc even
/// so: `bench/benches/mcp_latency.rs` measured 21% more calls per second than with glibc's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long `serve` waits, once the app has shut down, for blocking work still running on the
/// runtime (a vault or SQLite call) before the audit log is closed anyway.
const RUNTIME_SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(name = "forgejo-mcp-broker", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the broker.
    Serve {
        #[arg(long, short, env = "FORGEJO_MCP_BROKER_CONFIG")]
        config: PathBuf,
    },
    /// Validate the configuration without serving; prints the redirect URI to register at Forgejo.
    CheckConfig {
        #[arg(long, short, env = "FORGEJO_MCP_BROKER_CONFIG")]
        config: PathBuf,
    },
    /// Operator actions on clients and users (each audited).
    Admin(cli::admin::AdminArgs),
    /// Review the audit log: verify its hash chain and checkpoints, or show filtered records.
    Audit {
        #[command(subcommand)]
        command: cli::audit::AuditCommand,
    },
    /// Run the whole chain on this machine with no setup: an embedded stand-in Forgejo (demo
    /// user `alice`), the demo MCP child, a temporary data dir. Loopback only.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Keep the database, vault key and audit log here (default: a fresh temporary dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// The demo's stdio MCP child (whoami, list_repositories, create_issue against Forgejo's
    /// API). Reads FORGEJO_URL and FORGEJO_ACCESS_TOKEN, or the token from --token-file.
    DemoChild {
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Forgejo's base URL (default: $FORGEJO_URL).
        #[arg(long)]
        url: Option<String>,
    },
    /// The vault holding Forgejo tokens at rest: init, status, key rotation (docs/vault.md).
    Vault {
        #[command(subcommand)]
        command: VaultCommand,
    },
    /// Sandbox operations.
    Sandbox {
        #[command(subcommand)]
        action: SandboxAction,
    },
    /// Internal: the sandbox launcher (re-exec of this binary, fd 3 = control socket).
    #[command(name = "__launcher", hide = true)]
    Launcher,
}

#[derive(Subcommand)]
enum SandboxAction {
    /// Prints, per layer, whether this host enforces it (enforced / degraded / unavailable),
    /// confirmed by starting a trial child. Exits non-zero if a layer in `sandbox.require` is
    /// not enforced or no child can start.
    Check {
        #[arg(long, short, env = "FORGEJO_MCP_BROKER_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum VaultCommand {
    /// Create the vault for a new deployment (generates the key file if that is the source).
    Init {
        #[arg(long, short, env = "FORGEJO_MCP_BROKER_CONFIG")]
        config: PathBuf,
    },
    /// Key source, key versions, rows per version, re-encryption progress. Never a secret.
    Status {
        #[arg(long, short, env = "FORGEJO_MCP_BROKER_CONFIG")]
        config: PathBuf,
    },
    /// Re-wrap the data keys under a new master key. No row is rewritten; a serving broker
    /// keeps serving.
    RotateMasterKey {
        #[arg(long, short, env = "FORGEJO_MCP_BROKER_CONFIG")]
        config: PathBuf,
        /// The new key file (generated, 0600, if it does not exist).
        #[arg(long, group = "new")]
        new_key_file: Option<PathBuf>,
        /// A file holding the new passphrase.
        #[arg(long, group = "new")]
        new_passphrase_file: Option<PathBuf>,
        /// Keep the passphrase; re-derive with the configured Argon2id parameters and a new salt.
        #[arg(long, group = "new")]
        same_passphrase: bool,
    },
    /// Add a new data key; the serving broker re-encrypts existing rows in the background.
    RotateDataKey {
        #[arg(long, short, env = "FORGEJO_MCP_BROKER_CONFIG")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Launcher = cli.command {
        // Single-threaded and before any async runtime exists (sandbox-notes §1.2): the
        // launcher unshares a user namespace, which a multi-threaded process cannot do.
        std::process::exit(sandbox::launcher::run());
    }
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("forgejo-mcp-broker: {}", render_error(&error));
            ExitCode::FAILURE
        }
    }
}

/// Raises the open-file soft limit to the hard limit: every connection, child pipe and
/// database file is a descriptor, and service managers start services at a soft limit of 1024
/// (systemd) whatever the hard limit allows. Warns when even the hard limit leaves little room
/// beyond `limits.max_connections`.
fn raise_open_file_limit(max_connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let limit = if hard > soft && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let wanted = u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_add(1024);
    if limit < wanted {
        tracing::warn!(
            open_files = limit,
            max_connections,
            "the open-file limit leaves little room beside limits.max_connections for children, the database and the audit log; raise LimitNOFILE or lower limits.max_connections"
        );
    }
}

/// The error and its causes, `: `-separated, each said once: many of the broker's errors
/// already quote their source in their own message.
fn render_error(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            log_to_stderr(config.log.format, &config.log.filter);
            raise_open_file_limit(config.limits.max_connections);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("broker")
                .build()
                .context("cannot start the async runtime")?;
            let (deps, audit) = AppDeps::for_config(&config)?;
            let served = runtime.block_on(serve(config, deps));
            // The runtime stops before the audit writer does: tasks `serve` does not own can
            // still be recording (an egress call whose record is written when its task is
            // dropped; a login or refresh that outlived `serve`'s wait), and a record after
            // `close` is dropped ("writer stopped"). Shutting down drops every task, which
            // records what its guards record, and waits for blocking work up to the deadline.
            runtime.shutdown_timeout(RUNTIME_SHUTDOWN_DEADLINE);
            // The final checkpoint covers every event.
            audit.close();
            served?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config } => {
            let config = Config::load(&config)?;
            let (notes, refused) = forgejo_mcp_broker::supervisor::trusted::check_configured(
                &config.mcp.child,
                &config.sandbox,
            );
            if !refused.is_empty() {
                anyhow::bail!(
                    "paths another local user could change (children would not start):\n{}",
                    refused.join("\n")
                );
            }
            println!("configuration OK");
            for note in notes {
                println!("{note}");
            }
            println!(
                "MCP endpoint (paste into the client): {}",
                config.server.mcp_resource()
            );
            println!(
                "Register at Forgejo (Settings → Applications → OAuth2, confidential client) with redirect URI: {}",
                forgejo_mcp_broker::upstream::forgejo_redirect_uri(&config.server)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command } => cli::audit::run(command),
        Command::Admin(args) => cli::admin::run(args),
        Command::Demo { listen, data_dir } => {
            log_to_stderr(LogFormat::Human, "warn,forgejo_mcp_broker=info");
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("broker-demo")
                .build()
                .context("cannot start the async runtime")?;
            let stopped = runtime.block_on(async move {
                let shutdown = tokio_util::sync::CancellationToken::new();
                let stop = shutdown.clone();
                tokio::spawn(async move {
                    wait_for_signal().await;
                    stop.cancel();
                });
                forgejo_mcp_broker::demo::run(
                    forgejo_mcp_broker::demo::DemoOptions { listen, data_dir },
                    shutdown,
                )
                .await
            })?;
            // As for `serve`: every task stops before the audit log is closed.
            runtime.shutdown_timeout(RUNTIME_SHUTDOWN_DEADLINE);
            stopped.finish();
            Ok(ExitCode::SUCCESS)
        }
        Command::DemoChild { token_file, url } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(forgejo_mcp_broker::demo::child::run(token_file, url))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Vault { command } => vault_command(command),
        Command::Sandbox {
            action: SandboxAction::Check { config },
        } => {
            let sandbox = match config {
                Some(path) => Config::load(&path)?.sandbox,
                None => SandboxConfig::default(),
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let report =
                runtime.block_on(forgejo_mcp_broker::supervisor::sandbox_check::run(&sandbox));
            print!("{}", report.render());
            Ok(if report.requirements_met {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Launcher => Ok(ExitCode::FAILURE),
    }
}

fn vault_command(command: VaultCommand) -> anyhow::Result<ExitCode> {
    use forgejo_mcp_broker::keystore::VaultDeps;
    let config_path = match &command {
        VaultCommand::Init { config }
        | VaultCommand::Status { config }
        | VaultCommand::RotateMasterKey { config, .. }
        | VaultCommand::RotateDataKey { config } => config.clone(),
    };
    let config = Config::load(&config_path)?;
    log_to_stderr(config.log.format, &config.log.filter);
    let data_dir = &config.server.data_dir;
    forgejo_mcp_broker::store::create_data_dir(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let db = forgejo_mcp_broker::store::Db::open(&config.server.database_path())?;
    let clock: forgejo_mcp_broker::clock::SharedClock =
        std::sync::Arc::new(forgejo_mcp_broker::clock::SystemClock);
    if let VaultCommand::Status { .. } = command {
        // Reads only: nothing to audit.
        let deps = VaultDeps {
            audit: std::sync::Arc::new(forgejo_mcp_broker::audit::TracingAudit),
            clock,
        };
        return vault_verb(command, &config, &db, &deps);
    }
    // Vault operations go into the audit log beside the serving broker's records. This
    // command does not hold the checkpoint key (that would take opening the vault once more):
    // its records are chained at once and covered by the serving broker's next checkpoint.
    let audit = forgejo_mcp_broker::app::open_file_audit(
        &config,
        clock.clone(),
        forgejo_mcp_broker::metrics::Metrics::new(),
    )
    .context("cannot open the audit log")?;
    let deps = VaultDeps {
        audit: audit.clone(),
        clock,
    };
    let result = vault_verb(command, &config, &db, &deps);
    // As for `admin` verbs: an operation whose records did not reach the log fails the
    // command, though what it did is done (and was printed).
    audit.close();
    let shortfall = cli::admin::audit_shortfall(
        &config.audit.path(&config.server.data_dir),
        audit.write_errors(),
        audit.dropped(),
    );
    match (result, shortfall) {
        (result, None) => result,
        (Ok(_), Some(shortfall)) => Err(anyhow::anyhow!(shortfall)),
        (Err(error), Some(shortfall)) => Err(error.context(shortfall)),
    }
}

fn vault_verb(
    command: VaultCommand,
    config: &Config,
    db: &forgejo_mcp_broker::store::Db,
    deps: &forgejo_mcp_broker::keystore::VaultDeps,
) -> anyhow::Result<ExitCode> {
    use forgejo_mcp_broker::keystore::{self, rotation, source};
    let data_dir = &config.server.data_dir;
    let env = &source::process_env;
    match command {
        VaultCommand::Init { .. } => {
            let registry = forgejo_mcp_broker::app::sealed_columns()?;
            let report = keystore::init(db, &config.vault, data_dir, &registry, deps, env)?;
            println!("vault initialised; master key from {}", report.origin);
            if let Some(path) = report.generated_key_file {
                println!(
                    "generated key file {} — back it up now, apart from the database: without it the stored Forgejo tokens are lost",
                    path.display()
                );
            }
            if let Some(kdf) = report.kdf {
                println!(
                    "argon2id m={} KiB t={} p={}",
                    kdf.memory_kib, kdf.iterations, kdf.parallelism
                );
            }
        }
        VaultCommand::Status { .. } => {
            let registry = forgejo_mcp_broker::app::sealed_columns()?;
            let report = keystore::status::status(db, &config.vault, data_dir, &registry, env)?;
            print!("{report}");
            if report.initialised && report.key != "ok" {
                return Ok(ExitCode::FAILURE);
            }
        }
        VaultCommand::RotateMasterKey {
            new_key_file,
            new_passphrase_file,
            same_passphrase,
            ..
        } => {
            let new = match (new_key_file, new_passphrase_file, same_passphrase) {
                (Some(path), None, false) => rotation::NewMasterKey::KeyFile(path),
                (None, Some(path), false) => rotation::NewMasterKey::PassphraseFile(path),
                (None, None, true) => rotation::NewMasterKey::SamePassphrase,
                _ => anyhow::bail!(
                    "give exactly one of --new-key-file, --new-passphrase-file, --same-passphrase"
                ),
            };
            let report = rotation::rotate_master_key(db, &config.vault, data_dir, &new, deps, env)?;
            println!(
                "master key rotated: data key versions {:?} re-wrapped, no row rewritten",
                report.rewrapped_versions
            );
            if let Some(path) = report.generated_key_file {
                println!("generated new key file {}", path.display());
            }
            if !report.wal_checkpointed {
                println!(
                    "note: a reader kept the WAL from being checkpointed; the old wrappings leave {}-wal at the next checkpoint",
                    config.server.database_path().display()
                );
            }
            match new {
                rotation::NewMasterKey::KeyFile(path) => println!(
                    "now point [vault] at the new key (key_file = {:?}, or re-encrypt the systemd credential from it), back it up, then restart the broker at a convenient time; the old key no longer opens this vault",
                    path.display().to_string()
                ),
                rotation::NewMasterKey::PassphraseFile(path) => println!(
                    "now set [vault] key_source = \"passphrase-file\", passphrase_file = {:?}, and restart at a convenient time",
                    path.display().to_string()
                ),
                rotation::NewMasterKey::SamePassphrase => {
                    println!(
                        "the passphrase is unchanged; new Argon2id parameters apply from the next start"
                    )
                }
            }
        }
        VaultCommand::RotateDataKey { .. } => {
            let version = rotation::rotate_data_key(db, &config.vault, data_dir, deps, env)?;
            println!(
                "data key v{version} added; the serving broker loads it within {} s, seals new writes with it and re-encrypts existing rows in the background (watch `vault status`)",
                config.vault.rotation_interval_secs
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: Config, deps: AppDeps) -> anyhow::Result<()> {
    let running = app::start(config, deps).await?;
    let cancel = running.cancel_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        cancel.cancel();
    });
    running.cancel_token().cancelled().await;
    if !running.shutdown(Duration::from_secs(10)).await {
        tracing::warn!("some tasks did not finish within the shutdown deadline");
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The broker's logs go to standard error, coloured only if that is a terminal.
fn log_to_stderr(format: LogFormat, filter: &str) {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    init_logging(format, filter, std::io::stderr, terminal);
}
