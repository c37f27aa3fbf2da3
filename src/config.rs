//! Configuration: parsed and validated once, then immutable (STYLE.md habit 7).
//!
//! TOML with `deny_unknown_fields` at every level; [`Config::load`] reports every problem at
//! once. Each component owns its section type (`oauth::OAuthConfig`, `mcp::McpConfig`, ...)
//! and its validation ([`Validate`]). Secrets may be given inline, or better as `*_file`
//! paths or environment variables (see `docs/configuration.md`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use url::Url;

use crate::secret::SecretString;

/// Collects every configuration problem so the operator sees them all in one run.
#[derive(Debug, Default)]
pub struct ConfigErrors(Vec<String>);

impl ConfigErrors {
    pub fn push(&mut self, key: &str, message: impl fmt::Display) {
        self.0.push(format!("{key}: {message}"));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn messages(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} configuration error(s):", self.0.len())?;
        for message in &self.0 {
            writeln!(f, "  - {message}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A section that can check itself; `errors` collects, never short-circuits.
pub trait Validate {
    fn validate(&self, errors: &mut ConfigErrors);
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub forgejo: ForgejoConfig,
    #[serde(default)]
    pub oauth: crate::oauth::OAuthConfig,
    #[serde(default)]
    pub mcp: crate::mcp::McpConfig,
    #[serde(default)]
    pub audit: crate::audit::AuditConfig,
    #[serde(default)]
    pub rate_limits: crate::ratelimit::RateLimitConfig,
    #[serde(default)]
    pub limits: crate::ratelimit::HttpLimitsConfig,
    #[serde(default)]
    pub metrics: crate::metrics::MetricsConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub vault: crate::keystore::VaultConfig,
    #[serde(default)]
    pub sandbox: crate::supervisor::sandbox_config::SandboxConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The public origin clients see, e.g. `https://mcp.example.org` (no path). The MCP
    /// endpoint is `{public_url}/mcp`; the OAuth issuer is `{public_url}`.
    pub public_url: Url,
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Holds `broker.db` (and its WAL), the audit log and, if configured so, the key file.
    pub data_dir: PathBuf,
    /// Reverse proxies whose `X-Forwarded-For` is believed (exact addresses).
    #[serde(default)]
    pub trusted_proxies: Vec<IpAddr>,
    /// Extra `Origin` values accepted on `/mcp` besides the public origin.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

impl ServerConfig {
    /// The public origin without a trailing slash: the OAuth issuer (RFC 8414 §2).
    pub fn issuer(&self) -> String {
        self.public_url.as_str().trim_end_matches('/').to_owned()
    }

    /// The canonical resource identifier of the MCP endpoint (RFC 8707, RFC 9728 `resource`).
    pub fn mcp_resource(&self) -> String {
        format!("{}/mcp", self.issuer())
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("broker.db")
    }
}

impl Validate for ServerConfig {
    fn validate(&self, errors: &mut ConfigErrors) {
        let url = &self.public_url;
        if url.scheme() != "https" && !is_loopback_url(url) {
            errors.push(
                "server.public_url",
                "must be https (plain http is allowed only for loopback hosts)",
            );
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            errors.push(
                "server.public_url",
                "must be an origin without path, query or fragment (the issuer has no path)",
            );
        }
        if !url.username().is_empty() || url.password().is_some() {
            errors.push("server.public_url", "must not contain credentials");
        }
        if self.data_dir.as_os_str().is_empty() {
            errors.push("server.data_dir", "must not be empty");
        }
    }
}

/// True for `http(s)://127.0.0.1`, `[::1]` and `localhost` URLs.
pub fn is_loopback_url(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgejoConfig {
    /// Forgejo's base URL as the broker reaches it, e.g. `https://git.example.org`.
    pub url: Url,
    /// Forgejo's base URL as the user's browser reaches it, if different from `url`.
    #[serde(default)]
    pub browser_url: Option<Url>,
    /// The broker's OAuth2 application at Forgejo (a confidential client).
    pub client_id: String,
    /// Inline secret; prefer `client_secret_file` or `FORGEJO_MCP_BROKER_CLIENT_SECRET`.
    #[serde(default)]
    pub client_secret: Option<SecretString>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Scopes asked of Forgejo; empty means Forgejo's `all` (forgejo-facts.md §1.6).
    #[serde(default = "default_forgejo_scopes")]
    pub scopes: Vec<String>,
}

fn default_forgejo_scopes() -> Vec<String> {
    ["read:user", "read:repository", "write:issue"]
        .into_iter()
        .map(str::to_owned)
        .collect()
}

impl fmt::Debug for ForgejoConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForgejoConfig")
            .field("url", &self.url.as_str())
            .field("browser_url", &self.browser_url.as_ref().map(Url::as_str))
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("client_secret_file", &self.client_secret_file)
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// The environment variable that may hold the Forgejo client secret.
pub const CLIENT_SECRET_ENV: &str = "FORGEJO_MCP_BROKER_CLIENT_SECRET";

impl ForgejoConfig {
    /// The client secret from, in order: `client_secret`, `client_secret_file` (which must not
    /// be readable by group or others), the `FORGEJO_MCP_BROKER_CLIENT_SECRET` environment
    /// variable. The error names the source, never the value.
    pub fn load_client_secret(&self) -> Result<SecretString, String> {
        use secrecy::ExposeSecret as _;
        use std::os::unix::fs::PermissionsExt as _;
        if let Some(secret) = &self.client_secret {
            if secret.expose_secret().trim().is_empty() {
                return Err("client_secret is empty".to_owned());
            }
            return Ok(secret.clone());
        }
        if let Some(path) = &self.client_secret_file {
            let metadata = std::fs::metadata(path)
                .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(format!(
                    "{} is readable by group or others (mode {mode:o}); chmod 600 it",
                    path.display()
                ));
            }
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|error| format!("cannot read {}: {error}", path.display()))?,
            );
            let secret = text.trim();
            if secret.is_empty() {
                return Err(format!("{} is empty", path.display()));
            }
            return Ok(SecretString::from(secret.to_owned()));
        }
        match std::env::var(CLIENT_SECRET_ENV) {
            Ok(value) if !value.trim().is_empty() => {
                Ok(SecretString::from(value.trim().to_owned()))
            }
            _ => Err(format!(
                "no client secret: set client_secret_file (preferred), client_secret or {CLIENT_SECRET_ENV}"
            )),
        }
    }
}

impl Validate for ForgejoConfig {
    fn validate(&self, errors: &mut ConfigErrors) {
        if (self.client_secret.is_none() || self.client_secret_file.is_none())
            && let Err(message) = self.load_client_secret()
        {
            errors.push("forgejo.client_secret", message);
        }
        if !matches!(self.url.scheme(), "http" | "https") {
            errors.push("forgejo.url", "must be an http(s) URL");
        }
        if self.client_id.trim().is_empty() {
            errors.push("forgejo.client_id", "must not be empty");
        }
        if self.client_secret.is_some() && self.client_secret_file.is_some() {
            errors.push(
                "forgejo.client_secret",
                "give either client_secret or client_secret_file, not both",
            );
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info,forgejo_mcp_broker=debug`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            filter: "info".to_owned(),
        }
    }
}

/// Installs the process's log subscriber: `filter` (unless `RUST_LOG` says otherwise), in
/// `format`, to `writer` (the broker's is standard error; the benchmarks' a sink, so they pay
/// for logging as the broker does). Colours only when `terminal`: a journal or a log file gets
/// plain text, not escape sequences.
pub fn init_logging<W>(format: LogFormat, filter: &str, writer: W, terminal: bool)
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigLoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {errors}")]
    Invalid { path: PathBuf, errors: ConfigErrors },
}

impl Config {
    /// Reads, parses and validates `path`, reporting every problem at once.
    pub fn load(path: &Path) -> Result<Self, ConfigLoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigLoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|error| match error {
            ConfigLoadError::Parse { message, .. } => ConfigLoadError::Parse {
                path: path.to_path_buf(),
                message,
            },
            ConfigLoadError::Invalid { errors, .. } => ConfigLoadError::Invalid {
                path: path.to_path_buf(),
                errors,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, ConfigLoadError> {
        let config: Config = toml::from_str(text).map_err(|error| ConfigLoadError::Parse {
            path: PathBuf::new(),
            message: error.to_string(),
        })?;
        let mut errors = ConfigErrors::default();
        config.validate(&mut errors);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigLoadError::Invalid {
                path: PathBuf::new(),
                errors,
            })
        }
    }
}

impl Validate for Config {
    fn validate(&self, errors: &mut ConfigErrors) {
        self.server.validate(errors);
        self.forgejo.validate(errors);
        self.oauth.validate(errors);
        self.mcp.validate(errors);
        if self.mcp.max_body_bytes > self.limits.max_body_bytes {
            errors.push(
                "mcp.max_body_bytes",
                format!(
                    "must not exceed limits.max_body_bytes ({}), the server-wide cap",
                    self.limits.max_body_bytes
                ),
            );
        }
        self.audit.validate(errors);
        self.rate_limits.validate(errors);
        self.limits.validate(errors);
        self.metrics.validate(errors);
        self.vault.validate(errors);
        self.sandbox.validate(errors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [server]
        public_url = "https://mcp.example.org"
        data_dir = "/var/lib/forgejo-mcp-broker"
        [forgejo]
        url = "https://git.example.org"
        client_id = "abc"
        client_secret = "s3cr3t-value"
    "#;

    #[test]
    fn minimal_config_loads_and_derives_the_resource() {
        let config = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(config.server.issuer(), "https://mcp.example.org");
        assert_eq!(config.server.mcp_resource(), "https://mcp.example.org/mcp");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let text = format!("{MINIMAL}\nsurprise = 1\n");
        assert!(matches!(
            Config::from_toml(&text),
            Err(ConfigLoadError::Parse { .. })
        ));
    }

    #[test]
    fn all_validation_errors_are_reported_together() {
        let text = MINIMAL
            .replace("https://mcp.example.org", "http://mcp.example.org/sub")
            .replace("client_id = \"abc\"", "client_id = \"\"");
        let Err(ConfigLoadError::Invalid { errors, .. }) = Config::from_toml(&text) else {
            panic!("expected validation errors");
        };
        assert!(errors.messages().len() >= 3, "{errors}");
    }

    #[test]
    fn debug_output_redacts_the_client_secret() {
        let config = Config::from_toml(MINIMAL).unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cr3t-value"));
    }
}
