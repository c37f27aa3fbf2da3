//! Wiring: builds every component from a validated [`Config`], serves the public router, and
//! owns the tasks (STYLE.md habit 9: every task has a name, an owner and a join).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{SharedAudit, TracingAudit};
use crate::auth::AccessTokenVerifier;
use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::keystore::{self, KeystoreError, SealedRegistry, Vault, VaultDeps};
use crate::oauth::TokenVerifier;
use crate::oauth::store::OAuthStore;
use crate::store::{Db, StoreError};
use crate::upstream::{ForgejoClient, GrantStore, Upstream};

/// What the process provides from outside the config: time and the audit sink. Tests pass a
/// manual clock and an in-memory audit.
#[derive(Clone)]
pub struct AppDeps {
    pub clock: SharedClock,
    pub audit: SharedAudit,
}

impl AppDeps {
    pub fn production() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            audit: Arc::new(TracingAudit),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot bind {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the listener's address: {0}")]
    LocalAddr(std::io::Error),
    #[error("forgejo.client_secret: {0}")]
    ClientSecret(String),
    #[error("cannot build the Forgejo client: {0}")]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error(transparent)]
    Cimd(#[from] crate::oauth::cimd::CimdError),
    #[error("refusing to start: {0}")]
    Vault(#[from] KeystoreError),
    #[error("refusing to start: the vault could not be opened: {0}")]
    VaultTask(tokio::task::JoinError),
}

/// Every column that holds vault ciphertext, declared by the component that owns it
/// (keystore/registry.rs). The re-encryption job and `vault status` walk these.
pub fn sealed_columns() -> Result<SealedRegistry, keystore::registry::RegistryError> {
    SealedRegistry::new().with(crate::upstream::store::SEALED_COLUMNS)
}

/// What other components (the MCP edge, admin verbs, tests) need from the OAuth half.
#[derive(Clone)]
pub struct AuthHandles {
    /// Checks broker access tokens on `/mcp`.
    pub verifier: Arc<dyn AccessTokenVerifier>,
    /// Users' Forgejo token sets: [`crate::auth::UpstreamCredentials`], refresh, burn.
    pub upstream: Arc<Upstream>,
    /// The public origin (for [`crate::oauth::mcp_unauthorized`]).
    pub issuer: String,
}

/// A broker that is serving. Dropping it does not stop it: call [`RunningApp::shutdown`].
pub struct RunningApp {
    local_addr: SocketAddr,
    cancel: CancellationToken,
    tasks: TaskTracker,
    pub db: Db,
    pub auth: AuthHandles,
    pub vault: Arc<Vault>,
}

impl RunningApp {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A token that, when cancelled, starts a graceful shutdown.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Waits until shutdown has been requested and every task has finished.
    pub async fn wait(&self) {
        self.cancel.cancelled().await;
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Stops accepting, lets in-flight requests finish (up to `deadline`), stops every task.
    pub async fn shutdown(self, deadline: Duration) -> bool {
        self.cancel.cancel();
        self.tasks.close();
        tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_ok()
    }
}

/// Binds `config.server.listen` and starts serving.
pub async fn start(config: Config, deps: AppDeps) -> Result<RunningApp, StartError> {
    let address = config.server.listen;
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Bind { address, source })?;
    start_on(config, listener, deps).await
}

/// Starts serving on an already-bound listener (tests bind port 0 first, then put the port in
/// `server.public_url`).
pub async fn start_on(
    config: Config,
    listener: TcpListener,
    deps: AppDeps,
) -> Result<RunningApp, StartError> {
    std::fs::create_dir_all(&config.server.data_dir).map_err(|source| StartError::DataDir {
        path: config.server.data_dir.clone(),
        source,
    })?;
    let db = Db::open(&config.server.database_path())?;
    // A missing or wrong master key stops the start here, before anything is served or
    // written (the vault checks the key against its stored key check first).
    let vault = {
        let (db, vault_config, data_dir) = (
            db.clone(),
            config.vault.clone(),
            config.server.data_dir.clone(),
        );
        let vault_deps = VaultDeps {
            audit: Arc::clone(&deps.audit),
            clock: Arc::clone(&deps.clock),
        };
        // Argon2id (for a passphrase) takes a noticeable moment: off the async workers.
        tokio::task::spawn_blocking(move || {
            Vault::open(
                db,
                vault_config,
                &data_dir,
                sealed_columns()?,
                vault_deps,
                Arc::new(keystore::source::process_env),
            )
        })
        .await
        .map_err(StartError::VaultTask)??
    };
    let vault = Arc::new(vault);

    // The OAuth half (issue #2): upstream token keeper first, then the authorization server.
    let sealer: Arc<dyn vault::Sealer> = vault.clone();
    let client_secret = config
        .forgejo
        .load_client_secret()
        .map_err(StartError::ClientSecret)?;
    let forgejo = ForgejoClient::new(
        &config.forgejo,
        client_secret,
        crate::upstream::forgejo_redirect_uri(&config.server),
    )?;
    let grants = GrantStore::new(db.clone(), sealer.clone())?;
    let upstream = Arc::new(Upstream::new(
        forgejo,
        grants,
        sealer,
        deps.clock.clone(),
        deps.audit.clone(),
        i64::try_from(config.oauth.upstream_refresh_ahead_secs).unwrap_or(i64::MAX),
    ));
    let oauth_store = OAuthStore::new(db.clone())?;
    let auth = AuthHandles {
        verifier: Arc::new(TokenVerifier::new(
            oauth_store.clone(),
            upstream.clone(),
            deps.clock.clone(),
        )),
        upstream: upstream.clone(),
        issuer: config.server.issuer(),
    };
    if config.oauth.cimd_allow_loopback_for_tests {
        tracing::warn!(
            "oauth.cimd_allow_loopback_for_tests is on: CIMD fetches may reach services on this host; never use it in production"
        );
    }
    let sweep_store = oauth_store.clone();
    let oauth_state = Arc::new(crate::oauth::build_state(
        &config.oauth,
        &config.server,
        oauth_store,
        upstream,
        deps.clock.clone(),
        deps.audit.clone(),
    )?);

    let router = crate::http::router([crate::oauth::router(oauth_state)]);

    let local_addr = listener.local_addr().map_err(StartError::LocalAddr)?;
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    keystore::rotation::spawn_background(Arc::clone(&vault), &tasks, cancel.clone());
    let shutdown = cancel.clone();
    tasks.spawn(async move {
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        let result = axum::serve(listener, service)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = result {
            tracing::error!(task = "http", %error, "http server failed");
        }
    });
    tasks.spawn(crate::oauth::maintenance::run_sweeper(
        sweep_store,
        deps.clock.clone(),
        Duration::from_secs(600),
        cancel.clone(),
    ));
    tracing::info!(%local_addr, "serving");
    Ok(RunningApp {
        local_addr,
        cancel,
        tasks,
        db,
        auth,
        vault,
    })
}
