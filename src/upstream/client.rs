//! HTTP towards Forgejo's OAuth2 provider and API (forgejo-facts.md §1): the authorize URL,
//! the token endpoint (client_secret_basic), and `GET /api/v1/user`.
//!
//! Responses are read with a size cap; bodies of error responses are never logged or returned
//! (they could echo a token). Forgejo answers every token error with 400 (§1.2); the error code
//! is parsed only to tell the audit log which one it was.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::version::{UpstreamVersion, parse_version};
use crate::clock::UnixSeconds;
use crate::config::ForgejoConfig;
use crate::secret::{ExposeSecret, SecretString};

/// Largest Forgejo response read (tokens are ~1 KB JWTs; a user object is small).
const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// Forgejo's default access-token lifetime, used if a response omits `expires_in`.
const DEFAULT_EXPIRES_IN: i64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Forgejo refused the grant (any 400 from the token endpoint: forgejo-facts.md §1.2 says
    /// it uses `unauthorized_client` where RFC 6749 says `invalid_grant`). Not retryable.
    #[error("Forgejo rejected the grant ({code})")]
    Rejected { code: String },
    /// Network failure, timeout, 5xx: retryable.
    #[error("Forgejo could not be reached or failed: {0}")]
    Unavailable(String),
    /// A 2xx with a body we cannot use.
    #[error("Forgejo answered with an unexpected response: {0}")]
    Malformed(&'static str),
}

/// One Forgejo token set (access + refresh). No `Debug`: it holds secrets.
pub struct TokenSet {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub expires_at: UnixSeconds,
}

/// The Forgejo user a token belongs to (forgejo-facts.md §1.10: key on `id`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ForgejoUser {
    pub id: i64,
    pub login: String,
}

#[derive(Deserialize)]
struct RawTokenResponse {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
}

#[derive(Deserialize)]
struct RawErrorResponse {
    #[serde(default)]
    error: Option<String>,
}

/// The longest one request to Forgejo may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The broker as Forgejo's confidential client.
pub struct ForgejoClient {
    http: reqwest::Client,
    api_base: Url,
    browser_base: Url,
    client_id: String,
    client_secret: SecretString,
    redirect_uri: String,
    scopes: Vec<String>,
}

impl ForgejoClient {
    pub fn new(
        config: &ForgejoConfig,
        client_secret: SecretString,
        redirect_uri: String,
    ) -> Result<Self, UpstreamError> {
        // No redirects (a token endpoint that redirects is misconfigured, and following one
        // would resend credentials), bounded time.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("forgejo-mcp-broker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| UpstreamError::Unavailable(error.to_string()))?;
        Ok(Self {
            http,
            api_base: config.url.clone(),
            browser_base: config
                .browser_url
                .clone()
                .unwrap_or_else(|| config.url.clone()),
            client_id: config.client_id.clone(),
            client_secret,
            redirect_uri,
            scopes: config.scopes.clone(),
        })
    }

    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// Forgejo's origin as the user's browser sees it (shown on the consent page).
    pub fn browser_origin(&self) -> String {
        self.browser_base.origin().ascii_serialization()
    }

    fn join(base: &Url, path: &str) -> Result<Url, UpstreamError> {
        let base_path = base.path().trim_end_matches('/');
        let mut url = base.clone();
        url.set_path(&format!("{base_path}{path}"));
        url.set_query(None);
        Ok(url)
    }

    /// Where to send the user: Forgejo's authorize endpoint with our PKCE S256 challenge and
    /// state (forgejo-facts.md §1.3: always S256).
    pub fn authorize_url(&self, state: &str, code_challenge: &str) -> Result<Url, UpstreamError> {
        let mut url = Self::join(&self.browser_base, "/login/oauth/authorize")?;
        url.query_pairs_mut()
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("response_type", "code")
            .append_pair("scope", &self.scopes.join(" "))
            .append_pair("state", state)
            .append_pair("code_challenge", code_challenge)
            .append_pair("code_challenge_method", "S256");
        Ok(url)
    }

    pub async fn exchange_code(
        &self,
        code: &str,
        code_verifier: &str,
        now: UnixSeconds,
    ) -> Result<TokenSet, UpstreamError> {
        self.token_request(
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("code_verifier", code_verifier),
                // forgejo-facts.md §1.2: always send the same redirect_uri as on authorize.
                ("redirect_uri", &self.redirect_uri),
            ],
            now,
        )
        .await
    }

    pub async fn refresh(
        &self,
        refresh_token: &SecretString,
        now: UnixSeconds,
    ) -> Result<TokenSet, UpstreamError> {
        self.token_request(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token.expose_secret()),
            ],
            now,
        )
        .await
    }

    async fn token_request(
        &self,
        form: &[(&str, &str)],
        now: UnixSeconds,
    ) -> Result<TokenSet, UpstreamError> {
        let url = Self::join(&self.api_base, "/login/oauth/access_token")?;
        let response = self
            .http
            .post(url)
            .basic_auth(&self.client_id, Some(self.client_secret.expose_secret()))
            .header(reqwest::header::ACCEPT, "application/json")
            .form(form)
            .send()
            .await
            .map_err(|error| UpstreamError::Unavailable(redact(&error)))?;
        let status = response.status();
        let body = read_capped(response).await?;
        if status.is_client_error() {
            let code = serde_json::from_slice::<RawErrorResponse>(&body)
                .ok()
                .and_then(|raw| raw.error)
                .filter(|code| code.len() <= 64 && code.bytes().all(|b| b.is_ascii_graphic()))
                .unwrap_or_else(|| format!("http {}", status.as_u16()));
            return Err(UpstreamError::Rejected { code });
        }
        if !status.is_success() {
            return Err(UpstreamError::Unavailable(format!(
                "token endpoint answered {}",
                status.as_u16()
            )));
        }
        let raw: RawTokenResponse = serde_json::from_slice(&body)
            .map_err(|_| UpstreamError::Malformed("token response is not the expected JSON"))?;
        if raw.access_token.is_empty() {
            return Err(UpstreamError::Malformed("empty access token"));
        }
        let expires_in = raw
            .expires_in
            .filter(|seconds| *seconds > 0)
            .unwrap_or(DEFAULT_EXPIRES_IN);
        Ok(TokenSet {
            access_token: SecretString::from(raw.access_token),
            refresh_token: raw
                .refresh_token
                .filter(|token| !token.is_empty())
                .map(SecretString::from),
            expires_at: now.saturating_add(expires_in),
        })
    }

    /// `GET /api/v1/user` with the user's new access token.
    pub async fn current_user(
        &self,
        access_token: &SecretString,
    ) -> Result<ForgejoUser, UpstreamError> {
        let url = Self::join(&self.api_base, "/api/v1/user")?;
        let response = self
            .http
            .get(url)
            .bearer_auth(access_token.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|error| UpstreamError::Unavailable(redact(&error)))?;
        let status = response.status();
        let body = read_capped(response).await?;
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(UpstreamError::Rejected {
                code: format!("user endpoint {}", status.as_u16()),
            });
        }
        if !status.is_success() {
            return Err(UpstreamError::Unavailable(format!(
                "user endpoint answered {}",
                status.as_u16()
            )));
        }
        let user: ForgejoUser = serde_json::from_slice(&body)
            .map_err(|_| UpstreamError::Malformed("user response is not the expected JSON"))?;
        if user.id <= 0 {
            return Err(UpstreamError::Malformed("user id is not positive"));
        }
        Ok(user)
    }

    /// `GET /api/v1/version` (no authentication) and, when the answer does not say Forgejo,
    /// whether `/api/forgejo/v1/version` exists.
    pub async fn version(&self) -> Result<UpstreamVersion, UpstreamError> {
        let body = self.get_public("/api/v1/version").await?.ok_or_else(|| {
            UpstreamError::Unavailable("version endpoint answered 404".to_owned())
        })?;
        let reported = parse_version(&body)
            .map_err(|_| UpstreamError::Malformed("the version answer is not a version"))?;
        let forgejo_endpoint = !UpstreamVersion::says_forgejo(&reported)
            && self.get_public("/api/forgejo/v1/version").await?.is_some();
        Ok(UpstreamVersion::classify(reported, forgejo_endpoint))
    }

    /// A GET that needs no token: the body of a 2xx, `None` for a 404.
    async fn get_public(&self, path: &str) -> Result<Option<Vec<u8>>, UpstreamError> {
        let url = Self::join(&self.api_base, path)?;
        let response = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|error| UpstreamError::Unavailable(redact(&error)))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(UpstreamError::Unavailable(format!(
                "{path} answered {}",
                status.as_u16()
            )));
        }
        read_capped(response).await.map(Some)
    }
}

/// reqwest's errors print the URL; ours carry no secret in URLs, but keep only the kind.
fn redact(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout".to_owned()
    } else if error.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    }
}

async fn read_capped(response: reqwest::Response) -> Result<Vec<u8>, UpstreamError> {
    use futures_util::StreamExt as _;
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| UpstreamError::Unavailable(redact(&error)))?;
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(UpstreamError::Malformed("response too large"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
