//! `forgejo-mcp-broker demo` (issue #4): the whole chain on one machine with no setup.
//!
//! It runs the real broker ([`crate::app::start_on`], the same code a deployment runs) with two
//! things swapped: the upstream is the embedded stand-in Forgejo ([`crate::standin`], one demo
//! user, `alice`, already signed in) and the child is the built-in demo MCP server
//! ([`child`]), whose tools call the stand-in's API with the credentials the broker gave it.
//! The database, vault key and audit log live in the data dir (a fresh temporary one unless
//! given). It binds loopback only and says loudly that it is a demo.

pub mod child;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::{self, AppDeps, StartError};
use crate::config::{Config, ConfigLoadError};
use crate::secret::{ExposeSecret, random_token};
use crate::standin::{StandinApp, StandinConfig, StandinError, StandinForgejo};

/// The broker's OAuth application at the stand-in Forgejo.
const DEMO_CLIENT_ID: &str = "forgejo-mcp-broker-demo";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "the demo listens on loopback only (127.0.0.1 or [::1]); {0} is not loopback. Use `serve` with a configuration for a real deployment"
    )]
    NotLoopback(SocketAddr),
    #[error("cannot create the data directory: {0}")]
    DataDir(std::io::Error),
    #[error("cannot bind {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot find this program's own path (the demo child is a subcommand of it): {0}")]
    CurrentExe(std::io::Error),
    #[error("cannot start the stand-in Forgejo: {0}")]
    Standin(#[from] StandinError),
    #[error("demo configuration: {0}")]
    Config(#[from] ConfigLoadError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot generate the demo client secret")]
    Random,
}

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub listen: SocketAddr,
    /// `None`: a fresh temporary directory, removed when the demo stops.
    pub data_dir: Option<PathBuf>,
}

/// What outlives the demo's runtime: its audit log, closed once every task has stopped, and
/// the temporary data directory, removed after that.
#[derive(Debug)]
#[must_use = "call `finish` after the runtime has shut down"]
pub struct DemoStopped {
    audit: std::sync::Arc<crate::audit::FileAudit>,
    temporary: Option<tempfile::TempDir>,
}

impl DemoStopped {
    /// Writes the audit log's final checkpoint, then removes a temporary data directory.
    pub fn finish(self) {
        self.audit.close();
        drop(self.temporary);
    }
}

/// Runs the demo until `shutdown` is cancelled. Prints the banner (with the MCP URL) to stdout.
/// Shut the runtime down, then [`DemoStopped::finish`]: as `serve` does, so that a task still
/// recording is not cut off from the audit log.
pub async fn run(
    options: DemoOptions,
    shutdown: CancellationToken,
) -> Result<DemoStopped, DemoError> {
    if !options.listen.ip().is_loopback() {
        return Err(DemoError::NotLoopback(options.listen));
    }
    let temporary = match &options.data_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("forgejo-mcp-broker-demo-")
                .tempdir()
                .map_err(DemoError::DataDir)?,
        ),
    };
    let data_dir = match (&options.data_dir, &temporary) {
        (Some(dir), _) => dir.clone(),
        (None, Some(temporary)) => temporary.path().to_path_buf(),
        (None, None) => return Err(DemoError::DataDir(std::io::ErrorKind::NotFound.into())),
    };
    std::fs::create_dir_all(&data_dir).map_err(DemoError::DataDir)?;

    // Bind first: with port 0 the public URL (and Forgejo's redirect URI) needs the real port.
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| DemoError::Bind {
            address: options.listen,
            source,
        })?;
    let address = listener.local_addr().map_err(|source| DemoError::Bind {
        address: options.listen,
        source,
    })?;
    let public_url = format!("http://{address}");

    let client_secret = random_token(32).map_err(|_| DemoError::Random)?;
    let forgejo = StandinForgejo::start(StandinConfig::with_demo_user().app(
        StandinApp::confidential(
            DEMO_CLIENT_ID,
            client_secret.expose_secret(),
            [format!("{public_url}/oauth/callback")],
        ),
    ))
    .await?;

    let program = std::env::current_exe().map_err(DemoError::CurrentExe)?;
    let sandboxed = host_can_sandbox();
    let config = Config::from_toml(&demo_config(
        &public_url,
        &data_dir,
        forgejo.base_url(),
        client_secret.expose_secret(),
        &program,
        sandboxed,
    ))?;
    let mcp_url = config.server.mcp_resource();
    let (deps, audit) = AppDeps::for_config(&config)?;
    let running = app::start_on(config, listener, deps).await?;

    println!(
        "{}",
        banner(
            &mcp_url,
            forgejo.base_url(),
            &data_dir,
            temporary.is_some(),
            sandboxed
        )
    );
    tracing::warn!("DEMO MODE: stand-in Forgejo, demo child; not for real users or real tokens");

    let stopped = running.cancel_token();
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = stopped.cancelled() => {}
    }
    running.shutdown(Duration::from_secs(10)).await;
    forgejo.shutdown(Duration::from_secs(5)).await;
    Ok(DemoStopped { audit, temporary })
}

/// The default sandbox when the host supports it (user namespaces are the one layer the
/// launcher cannot do without); otherwise plain children, said in the banner.
fn host_can_sandbox() -> bool {
    let (report, _) = crate::supervisor::sandbox_config::host_report();
    report
        .iter()
        .any(|layer| layer.layer == "user-namespace" && layer.status.label() == "enforced")
}

fn demo_config(
    public_url: &str,
    data_dir: &std::path::Path,
    forgejo_url: &str,
    client_secret: &str,
    program: &std::path::Path,
    sandboxed: bool,
) -> String {
    // Confined: the child holds a placeholder and reaches the stand-in only through the egress
    // proxy, which injects alice's token. Unconfined: the token in its environment.
    let (sandbox, delivery) = if sandboxed {
        ("enabled = true\nprofile = \"native\"", "inject")
    } else {
        ("enabled = false", "env")
    };
    // TOML basic strings: paths are escaped through the `toml` crate's own string encoder.
    let quote = |text: &str| toml::Value::String(text.to_owned()).to_string();
    format!(
        r#"
[server]
public_url = {public_url}
data_dir = {data_dir}

[forgejo]
url = {forgejo_url}
client_id = "{DEMO_CLIENT_ID}"
client_secret = {client_secret}

[sandbox]
{sandbox}

[mcp.child]
program = {program}
args = ["demo-child", "--url", "{{forgejo_url}}"]
env_allowlist = []
token_variable = "FORGEJO_ACCESS_TOKEN"
delivery = "{delivery}"
"#,
        public_url = quote(public_url),
        data_dir = quote(&data_dir.display().to_string()),
        forgejo_url = quote(forgejo_url),
        client_secret = quote(client_secret),
        program = quote(&program.display().to_string()),
    )
}

fn banner(
    mcp_url: &str,
    forgejo_url: &str,
    data_dir: &std::path::Path,
    temporary: bool,
    sandboxed: bool,
) -> String {
    let rule = "=".repeat(78);
    let children = if sandboxed {
        "each session's child runs in the full sandbox and never holds the token"
    } else {
        "this host cannot sandbox (no user namespaces): children run unconfined"
    };
    format!(
        "{rule}
  forgejo-mcp-broker DEMO — not a deployment
  A stand-in Forgejo with one demo user (alice, already signed in) and a demo MCP child.
  Nothing here talks to a real Forgejo; every token is a throwaway.

  MCP URL:    {mcp_url}
    paste it into MCP Inspector (Streamable HTTP) or any MCP client; it will register,
    show the broker's consent page, sign in at the stand-in Forgejo and connect.
    Tools: whoami, list_repositories, create_issue (they act as alice at the stand-in).
  Forgejo:    {forgejo_url} (stand-in)
  Data dir:   {} {}
  Children:   {children}

  Ctrl-C stops the demo.
{rule}",
        data_dir.display(),
        if temporary {
            "(temporary, removed on exit)"
        } else {
            ""
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_configuration_is_valid_and_quotes_paths() {
        let text = demo_config(
            "http://127.0.0.1:8080",
            std::path::Path::new("/tmp/a \"quoted\" dir"),
            "http://127.0.0.1:9",
            "secret",
            std::path::Path::new("/usr/bin/forgejo-mcp-broker"),
            true,
        );
        let config = Config::from_toml(&text).unwrap();
        assert_eq!(config.server.mcp_resource(), "http://127.0.0.1:8080/mcp");
        assert_eq!(
            config.server.data_dir,
            std::path::Path::new("/tmp/a \"quoted\" dir")
        );
    }

    #[tokio::test]
    async fn the_demo_refuses_a_non_loopback_address() {
        let options = DemoOptions {
            listen: "0.0.0.0:0".parse().unwrap(),
            data_dir: None,
        };
        let error = run(options, CancellationToken::new()).await.unwrap_err();
        assert!(matches!(error, DemoError::NotLoopback(_)));
    }
}
