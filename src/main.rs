//! The `forgejo-mcp-broker` command: `serve`, `check-config`, and the operator verbs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use forgejo_mcp_broker::app::{self, AppDeps};
use forgejo_mcp_broker::config::{Config, LogFormat};

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
    /// The demo's stdio MCP child (whoami, list_repositories, create_issue against Forgejo's
    /// API). Reads FORGEJO_URL and FORGEJO_ACCESS_TOKEN, or the token from --token-file.
    DemoChild {
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("forgejo-mcp-broker: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            init_logging(config.log.format, &config.log.filter);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("broker")
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(serve(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config } => {
            let config = Config::load(&config)?;
            println!("configuration OK");
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
        Command::DemoChild { token_file } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(forgejo_mcp_broker::demo::child::run(token_file))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let running = app::start(config, AppDeps::production()).await?;
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

fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}
