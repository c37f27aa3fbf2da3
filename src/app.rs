//! Wiring: builds every component from a validated [`Config`], serves the public router, and
//! owns the tasks (STYLE.md habit 9: every task has a name, an owner and a join).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{
    AuditEvent, AuditKey, AuditSink as _, AuditWriterError, FileAudit, SharedAudit, TracingAudit,
};
use crate::auth::AccessTokenVerifier;
use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::http::HttpOptions;
use crate::keystore::{self, KeystoreError, SealedRegistry, Vault, VaultDeps};
use crate::metrics::{AuditMetrics, Metrics};
use crate::oauth::TokenVerifier;
use crate::oauth::store::OAuthStore;
use crate::ratelimit::{RateLimiter, SharedRateLimiter};
use crate::store::{Db, StoreError};
use crate::upstream::{ForgejoClient, GrantStore, Upstream};

/// What the process provides from outside the config: time, the audit sink and the metrics
/// registry. Tests pass a manual clock and an in-memory audit.
#[derive(Clone)]
pub struct AppDeps {
    pub clock: SharedClock,
    pub audit: SharedAudit,
    pub metrics: Metrics,
    /// Starts MCP children; `None` means the launcher the configuration asks for.
    pub launcher: Option<Arc<dyn crate::supervisor::ChildLauncher>>,
    /// The hash-chained file behind `audit`, when there is one: its checkpoint key lives in
    /// the vault, so [`start_on`] hands it over once the vault is open.
    pub audit_file: Option<Arc<FileAudit>>,
}

impl AppDeps {
    pub fn production() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            audit: Arc::new(TracingAudit),
            metrics: Metrics::new(),
            launcher: None,
            audit_file: None,
        }
    }

    /// What `serve` uses: the system clock, a fresh metrics registry and the hash-chained
    /// audit file of `config`, whose checkpoint key [`start_on`] takes from the vault. The
    /// caller keeps the [`FileAudit`] to [`FileAudit::close`] it after shutdown.
    pub fn for_config(config: &Config) -> Result<(Self, Arc<FileAudit>), StartError> {
        let clock: SharedClock = Arc::new(SystemClock);
        let metrics = Metrics::new();
        let audit = open_file_audit(config, clock.clone(), metrics.clone())?;
        audit.record(AuditEvent::ConfigLoaded {
            source: "serve".to_owned(),
        });
        let deps = Self {
            clock,
            audit: audit.clone(),
            metrics,
            launcher: None,
            audit_file: Some(audit.clone()),
        };
        Ok((deps, audit))
    }
}

/// The hash-chained audit file of `config`, waiting for its checkpoint key: the key is in
/// the vault, and opening the vault is audited, so the log opens first and
/// [`provide_audit_key`] follows. Commands run beside the serving broker (`admin`) open it
/// too: writers share it safely.
pub fn open_file_audit(
    config: &Config,
    clock: SharedClock,
    metrics: Metrics,
) -> Result<Arc<FileAudit>, StartError> {
    Ok(FileAudit::open_awaiting_key(
        config.audit.file_config(&config.server.data_dir),
        clock,
        metrics,
    )?)
}

/// Gives `audit` its checkpoint key from `vault`: the stored one, or (first start) the key of a
/// pre-vault `audit.key_file`, moved in, or a new one. Blocking (SQLite).
pub fn provide_audit_key(
    config: &Config,
    vault: &Vault,
    audit: &FileAudit,
) -> Result<(), StartError> {
    let legacy_file = config.audit.key_file(&config.server.data_dir);
    audit.provide_key(vault.audit_key_or_create(&legacy_file)?);
    Ok(())
}

/// The audit checkpoint key of the vault `config` names, for `audit verify`: opens the vault
/// (the master key must be available, as for serving) but never creates one or a key, and
/// audits nothing (verification only reads). `Ok(None)` when the vault holds no audit key yet.
pub fn audit_key_for_verification(config: &Config) -> Result<Option<AuditKey>, KeystoreError> {
    let db = Db::open(&config.server.database_path())?;
    let mut config = config.clone();
    config.vault.auto_init = false;
    open_vault(&config, &db, &AppDeps::production())?.audit_key()
}

/// Opens the vault, refusing (and changing nothing) when the master key is missing or wrong.
/// Blocking: a passphrase source runs Argon2id.
pub fn open_vault(config: &Config, db: &Db, deps: &AppDeps) -> Result<Vault, KeystoreError> {
    let vault_deps = VaultDeps {
        audit: Arc::clone(&deps.audit),
        clock: Arc::clone(&deps.clock),
    };
    let registry = sealed_columns()?;
    Ok(Vault::open(
        db.clone(),
        config.vault.clone(),
        &config.server.data_dir,
        registry,
        vault_deps,
        Arc::new(keystore::source::process_env),
    )?
    .with_metrics(deps.metrics.clone()))
}

/// The upstream token keeper (users' Forgejo token sets) over `db`; `serve` and the admin
/// verbs build it the same way.
pub fn build_upstream(
    config: &Config,
    db: &Db,
    deps: &AppDeps,
    sealer: Arc<dyn vault::Sealer>,
    access_ended: crate::auth::AccessEndedSender,
) -> Result<Arc<Upstream>, StartError> {
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
    // A grant Forgejo refused takes the user's broker grants with it: each client must be
    // authorized again, not revived by the user's next login through another one.
    let oauth = OAuthStore::new(db.clone(), access_ended.clone())?;
    let (clock, audit) = (deps.clock.clone(), deps.audit.clone());
    let revoke_broker_grants = move |user_id| match oauth.revoke_user(user_id, clock.now()) {
        Ok(revoked) if !revoked.is_empty() => audit.record(AuditEvent::UserRevoked {
            user_id,
            by: "forgejo refused the grant".to_owned(),
        }),
        Ok(_) => {}
        Err(error) => {
            tracing::error!(user_id, %error, "cannot revoke the broker grants of a user whose Forgejo grant died");
        }
    };
    Ok(Arc::new(
        Upstream::new(
            forgejo,
            grants,
            sealer,
            deps.clock.clone(),
            deps.audit.clone(),
            i64::try_from(config.oauth.upstream_refresh_ahead_secs).unwrap_or(i64::MAX),
            access_ended,
        )
        .on_grant_dead(Arc::new(revoke_broker_grants)),
    ))
}

/// How long open requests may run on after shutdown was requested.
const DRAIN: Duration = Duration::from_secs(5);

/// How long shutdown waits for Forgejo code exchanges and refreshes in flight: a login is two
/// Forgejo requests, and may then wait for the user's refresh in flight, another.
pub const UPSTREAM_SETTLE: Duration =
    Duration::from_secs(3 * crate::upstream::client::REQUEST_TIMEOUT.as_secs());

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
    #[error(transparent)]
    Sandbox(#[from] crate::supervisor::sandbox_config::RequirementError),
    #[error(transparent)]
    Audit(#[from] AuditWriterError),
    #[error("forgejo.client_secret: {0}")]
    ClientSecret(String),
    #[error("cannot build the Forgejo client: {0}")]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error(transparent)]
    Cimd(#[from] crate::oauth::cimd::CimdError),
    #[error(transparent)]
    Mcp(#[from] crate::mcp::McpStartError),
    #[error("refusing to start: {0}")]
    Vault(#[from] KeystoreError),
    #[error(transparent)]
    Egress(#[from] crate::egress::EgressError),
    #[error("sandbox.upstream_policy: {0}")]
    UpstreamPolicy(String),
    #[error("cannot set up the sandbox: {0}")]
    SandboxSetup(#[from] crate::supervisor::sandboxed::SandboxSetupError),
    #[error("refusing to start: the vault could not be opened: {0}")]
    VaultTask(tokio::task::JoinError),
}

/// Every column that holds vault ciphertext, declared by the component that owns it
/// (keystore/registry.rs). The re-encryption job and `vault status` walk these.
pub fn sealed_columns() -> Result<SealedRegistry, keystore::registry::RegistryError> {
    SealedRegistry::new()
        .with(crate::upstream::store::SEALED_COLUMNS)?
        .with(crate::oauth::store::SEALED_COLUMNS)?
        .with(keystore::audit_key::SEALED_COLUMNS)
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
    /// Revoked grants and dead users are announced here: the MCP edge subscribes and ends
    /// the matching sessions.
    pub access_ended: crate::auth::AccessEndedSender,
    /// For operator actions: `revoke_user`, `revoke_client`.
    pub oauth_store: OAuthStore,
}

/// A broker that is serving. Dropping it does not stop it: call [`RunningApp::shutdown`].
pub struct RunningApp {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    pub db: Db,
    pub metrics: Metrics,
    pub rate_limiter: SharedRateLimiter,
    pub auth: AuthHandles,
    pub vault: Arc<Vault>,
    /// The MCP edge: running children, revocation hooks.
    pub mcp: Arc<crate::mcp::McpHandle>,
}

impl RunningApp {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/metrics` is served, when `metrics.listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
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

    /// Stops accepting, lets in-flight requests finish (up to `deadline`), stops every task,
    /// then waits for the Forgejo code exchanges and refreshes still in flight (up to
    /// [`UPSTREAM_SETTLE`]): Forgejo has retired the stored set once it answers one, so a
    /// token set dropped on the way to the database would cost its user their grant. `false`
    /// if either wait ran out.
    pub async fn shutdown(self, deadline: Duration) -> bool {
        self.cancel.cancel();
        self.tasks.close();
        let stopped = tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_ok();
        let upstream = &self.auth.upstream;
        let in_flight = upstream.in_flight();
        if in_flight > 0 {
            tracing::info!(
                in_flight,
                "waiting for Forgejo token exchanges in flight to be stored before stopping"
            );
        }
        let settled = tokio::time::timeout(UPSTREAM_SETTLE, upstream.settle())
            .await
            .is_ok();
        if !settled {
            tracing::error!(
                in_flight = upstream.in_flight(),
                "Forgejo token exchanges were still in flight at shutdown; their users may have to authorize again"
            );
        }
        stopped && settled
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
    crate::store::create_data_dir(&config.server.data_dir).map_err(|source| {
        StartError::DataDir {
            path: config.server.data_dir.clone(),
            source,
        }
    })?;
    crate::supervisor::sandbox_config::preflight(&config.sandbox)?;
    let db = Db::open(&config.server.database_path())?;
    // Every component's audit events also move the metrics derived from them (sessions,
    // children, upstream refreshes, vault operations).
    let deps = AppDeps {
        audit: Arc::new(AuditMetrics::new(deps.audit.clone(), deps.metrics.clone())),
        ..deps
    };
    // A missing or wrong master key stops the start here, before anything is served or
    // written (the vault checks the key against its stored key check first).
    let vault = {
        let (config, db, deps) = (config.clone(), db.clone(), deps.clone());
        // Argon2id (for a passphrase) takes a noticeable moment: off the async workers.
        tokio::task::spawn_blocking(move || open_vault(&config, &db, &deps))
            .await
            .map_err(StartError::VaultTask)??
    };
    let vault = Arc::new(vault);
    if let Some(audit_file) = deps.audit_file.clone() {
        let (config, vault) = (config.clone(), Arc::clone(&vault));
        tokio::task::spawn_blocking(move || provide_audit_key(&config, &vault, &audit_file))
            .await
            .map_err(StartError::VaultTask)??;
    }

    let metrics = deps.metrics.clone();
    // Routers attach per-IP limits route by route, e.g.
    // `post(token).layer(ratelimit::layer(&rate_limiter, EndpointClass::Token))`.
    let rate_limiter = RateLimiter::new(
        &config.rate_limits,
        &config.server.trusted_proxies,
        metrics.clone(),
        deps.audit.clone(),
    );

    // The OAuth half (issue #2): upstream token keeper first, then the authorization server.
    let access_ended = crate::auth::access_ended_channel();
    let upstream = build_upstream(&config, &db, &deps, vault.clone(), access_ended.clone())?;
    let oauth_store = OAuthStore::new(db.clone(), access_ended.clone())?;
    let auth = AuthHandles {
        verifier: Arc::new(TokenVerifier::new(
            oauth_store.clone(),
            upstream.clone(),
            deps.clock.clone(),
        )),
        upstream: upstream.clone(),
        issuer: config.server.issuer(),
        access_ended,
        oauth_store: oauth_store.clone(),
    };
    // Children (issue #6): confined by the sandbox launcher, their only way out the egress
    // proxy, which injects the user's token in `inject` mode.
    let launcher: Arc<dyn crate::supervisor::ChildLauncher> = match deps.launcher.clone() {
        Some(launcher) => launcher,
        None if config.sandbox.enabled => {
            let policy = config
                .sandbox
                .upstream_policy()
                .map_err(StartError::UpstreamPolicy)?;
            if policy.is_none() {
                tracing::warn!(
                    "sandbox.upstream_policy = \"unrestricted\": children may call every Forgejo API path with the user's token, site administration included"
                );
            }
            let egress = Arc::new(crate::egress::Egress::new(
                config.forgejo.url.clone(),
                auth.upstream.clone(),
                deps.audit.clone(),
                policy,
            )?);
            Arc::new(
                crate::supervisor::sandboxed::SandboxLauncher::new(
                    config.sandbox.clone(),
                    None,
                    Some(deps.audit.clone()),
                )?
                .with_egress(egress),
            )
        }
        None => {
            tracing::warn!(
                "sandbox.enabled = false: MCP children run unconfined with the broker's privileges; for development only"
            );
            Arc::new(crate::supervisor::plain::PlainLauncher)
        }
    };
    let child_forgejo_url =
        launcher.child_forgejo_url(config.forgejo.url.as_str().trim_end_matches('/'));
    let (mcp_router, mcp_handle) = crate::mcp::router(
        &config.server,
        &config.mcp,
        &child_forgejo_url,
        crate::mcp::McpDeps {
            db: db.clone(),
            clock: deps.clock.clone(),
            audit: deps.audit.clone(),
            verifier: auth.verifier.clone(),
            upstream: auth.upstream.clone(),
            launcher,
            access_ended: Some(auth.access_ended.subscribe()),
            rate_limiter: Some(rate_limiter.clone()),
        },
    )?;
    let mcp_handle = Arc::new(mcp_handle);
    if config.oauth.cimd_allow_loopback_for_tests {
        tracing::warn!(
            "oauth.cimd_allow_loopback_for_tests is on: CIMD fetches may reach services on this host; never use it in production"
        );
    }
    let sweep_store = oauth_store.clone();
    let mut oauth_state = crate::oauth::build_state(
        &config.oauth,
        &config.server,
        oauth_store,
        upstream,
        deps.clock.clone(),
        deps.audit.clone(),
    )?;
    oauth_state.limiter = Some(rate_limiter.clone());
    let oauth_state = Arc::new(oauth_state);

    let options = HttpOptions {
        limits: config.limits.clone(),
        metrics: metrics.clone(),
    };
    let router = crate::http::router(
        [crate::oauth::router(oauth_state, &rate_limiter), mcp_router],
        &options,
    );

    let local_addr = listener.local_addr().map_err(StartError::LocalAddr)?;
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    keystore::rotation::spawn_background(Arc::clone(&vault), &tasks, cancel.clone());

    // `/metrics` on its own listener, never on the public one (issue #7).
    let metrics_addr = match config.metrics.listen {
        None => None,
        Some(address) => {
            if !address.ip().is_loopback() {
                // No authentication on /metrics: counts of users, clients and sessions, and
                // failure rates, for anyone who can reach the address.
                tracing::warn!(%address, "metrics.listen is not a loopback address: /metrics is served without authentication to whoever can reach it; firewall it or bind it to 127.0.0.1");
            }
            let metrics_listener = TcpListener::bind(address)
                .await
                .map_err(|source| StartError::Bind { address, source })?;
            let bound = metrics_listener
                .local_addr()
                .map_err(StartError::LocalAddr)?;
            let shutdown = cancel.clone();
            let limits = config.limits.clone();
            let metrics_router = crate::metrics::router(metrics.clone());
            tasks.spawn(async move {
                crate::http::serve(
                    metrics_listener,
                    metrics_router,
                    &limits,
                    &[],
                    shutdown,
                    DRAIN,
                )
                .await;
                tracing::debug!(task = "metrics-http", "stopped");
            });
            tracing::info!(metrics_addr = %bound, "serving metrics");
            Some(bound)
        }
    };

    let shutdown = cancel.clone();
    let limits = config.limits.clone();
    let trusted_proxies = config.server.trusted_proxies.clone();
    tasks.spawn(async move {
        crate::http::serve(listener, router, &limits, &trusted_proxies, shutdown, DRAIN).await;
        tracing::debug!(task = "http", "stopped");
    });
    // Shutdown stops every MCP child; the session records stay for the next start.
    let mcp_shutdown = (cancel.clone(), Arc::clone(&mcp_handle));
    tasks.spawn(async move {
        let (cancel, mcp) = mcp_shutdown;
        cancel.cancelled().await;
        if !mcp.shutdown(DRAIN).await {
            tracing::warn!(
                task = "mcp",
                "some MCP sessions did not stop within the deadline"
            );
        }
    });
    tasks.spawn(crate::upstream::version::watch(
        Arc::clone(&auth.upstream),
        deps.audit.clone(),
        cancel.clone(),
    ));
    tasks.spawn(crate::oauth::maintenance::run_sweeper(
        crate::oauth::maintenance::Sweeper {
            store: sweep_store,
            clock: deps.clock.clone(),
            audit: deps.audit.clone(),
            interval: Duration::from_secs(600),
            unused_client_ttl_secs: config.oauth.unused_client_ttl_secs,
        },
        cancel.clone(),
    ));
    tracing::info!(%local_addr, "serving");
    Ok(RunningApp {
        local_addr,
        metrics_addr,
        cancel,
        tasks,
        db,
        metrics,
        rate_limiter,
        auth,
        vault,
        mcp: mcp_handle,
    })
}
