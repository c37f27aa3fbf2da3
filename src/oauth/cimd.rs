//! Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document;
//! mcp-spec-checklist §8): an `https` `client_id` URL is fetched and its document validated.
//!
//! SSRF guards (item 76): no redirects; a size cap and a time cap; hosts whose addresses are
//! special-use (RFC 6890: loopback, private, link-local, CGNAT, ULA, multicast, documentation,
//! v4-mapped of any of these) are refused, both for IP literals and through a custom DNS
//! resolver whose answer is the address reqwest then connects to (no second lookup, so no
//! rebinding between check and connect); no credentials, no cookies, no proxy. Valid documents
//! are cached ([`super::store`]); errors are not (item 75).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Url;

use super::client::{ClientMetadata, RawClientMetadata, TokenEndpointAuthMethod};
use super::error::OAuthError;

#[derive(Debug, thiserror::Error)]
pub enum CimdError {
    #[error("cannot read the extra CA file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// Is this a URL-shaped `client_id` (rather than a DCR id)?
pub fn is_cimd_client_id(client_id: &str) -> bool {
    client_id.starts_with("https://")
}

/// Item 70: https, a path, no dot segments, no fragment, no userinfo, no query.
pub fn validate_client_id_url(client_id: &str) -> Result<Url, OAuthError> {
    const BAD: OAuthError = OAuthError::InvalidClient(
        "a URL client_id must be an https URL with a path and no query, fragment or credentials",
    );
    if client_id.len() > 2000 {
        return Err(BAD);
    }
    let url = Url::parse(client_id).map_err(|_| BAD)?;
    // The url crate normalises away dot segments; a client_id that changed under parsing had them.
    if url.as_str() != client_id
        || url.scheme() != "https"
        || url.path() == "/"
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
        || url.host().is_none()
    {
        return Err(BAD);
    }
    Ok(url)
}

/// RFC 6890 special-use and other non-public addresses.
pub fn is_forbidden_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_forbidden_v4(v4);
            }
            let segments = v6.segments();
            let first = segments[0];
            v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // fc00::/7 unique local
                || (first & 0xffc0) == 0xfe80 // fe80::/10 link-local
                || (first & 0xffc0) == 0xfec0 // fec0::/10 site-local (deprecated)
                || (first == 0x2001 && segments[1] == 0x0db8) // documentation
                || (first == 0x2001 && segments[1] < 0x0200) // 2001::/23 IETF protocol assignments (Teredo, ...)
                || first == 0x2002 // 6to4 embeds an IPv4 address
                || (first == 0x0064 && segments[1] == 0xff9b) // NAT64
                || (first == 0x0100 && segments[1..4] == [0, 0, 0]) // discard-only
                || segments[..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible (deprecated)
        }
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn address_allowed(ip: IpAddr, allow_loopback: bool) -> bool {
    (allow_loopback && is_loopback(ip)) || !is_forbidden_address(ip)
}

/// A resolver that refuses a name if *any* of its addresses is forbidden (a name that mixes
/// public and private answers is treated as hostile).
struct GuardedResolver {
    allow_loopback: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_loopback = self.allow_loopback;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addresses.is_empty()
                || addresses
                    .iter()
                    .any(|address| !address_allowed(address.ip(), allow_loopback))
            {
                return Err("the client_id host resolves to a forbidden address".into());
            }
            let addrs: Addrs = Box::new(addresses.into_iter());
            Ok(addrs)
        })
    }
}

/// Fetch limits and trust settings, from [`super::OAuthConfig`].
#[derive(Debug, Clone)]
pub struct CimdSettings {
    pub max_bytes: usize,
    pub timeout: Duration,
    pub allow_loopback: bool,
}

pub struct CimdFetcher {
    http: reqwest::Client,
    settings: CimdSettings,
}

/// The shortest time a fetched document is kept, whatever its `Cache-Control` says.
pub const MIN_CACHE_SECS: i64 = 60;

/// A fetched, validated document and how long it may be cached.
pub struct FetchedDocument {
    pub metadata: ClientMetadata,
    pub max_age: Option<i64>,
}

impl CimdFetcher {
    pub fn new(settings: CimdSettings, extra_ca_file: Option<&Path>) -> Result<Self, CimdError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .no_proxy()
            .https_only(true)
            .user_agent(concat!("forgejo-mcp-broker/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(GuardedResolver {
                allow_loopback: settings.allow_loopback,
            }));
        if let Some(path) = extra_ca_file {
            let ca_error = |message: String| CimdError::CaFile {
                path: path.display().to_string(),
                message,
            };
            let pem = std::fs::read(path).map_err(|error| ca_error(error.to_string()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|error| ca_error(error.to_string()))?;
            if certificates.is_empty() {
                return Err(ca_error("no certificate in the file".to_owned()));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder
            .build()
            .map_err(|error| CimdError::Client(error.to_string()))?;
        Ok(Self { http, settings })
    }

    /// Fetches and validates the document for `client_id` (already checked by
    /// [`validate_client_id_url`]).
    pub async fn fetch(&self, url: &Url) -> Result<FetchedDocument, OAuthError> {
        const UNAVAILABLE: OAuthError =
            OAuthError::InvalidClient("the client metadata document could not be fetched");
        if let Some(host) = url.host() {
            let literal = match host {
                url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
                url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
                url::Host::Domain(_) => None,
            };
            // IP literals never reach the resolver: check them here.
            if let Some(ip) = literal
                && !address_allowed(ip, self.settings.allow_loopback)
            {
                return Err(UNAVAILABLE);
            }
        }
        let response = self
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|error| {
                tracing::info!(client_id = %url, timeout = error.is_timeout(), "CIMD fetch failed");
                UNAVAILABLE
            })?;
        // Item 71: 200 only; a redirect is not followed and is an error.
        if response.status() != reqwest::StatusCode::OK {
            tracing::info!(client_id = %url, status = response.status().as_u16(), "CIMD fetch refused");
            return Err(UNAVAILABLE);
        }
        if response
            .content_length()
            .is_some_and(|length| length > self.settings.max_bytes as u64)
        {
            return Err(OAuthError::InvalidClient(
                "the client metadata document is too large",
            ));
        }
        let max_age = cache_max_age(response.headers());
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| UNAVAILABLE)?;
            if body.len() + chunk.len() > self.settings.max_bytes {
                return Err(OAuthError::InvalidClient(
                    "the client metadata document is too large",
                ));
            }
            body.extend_from_slice(&chunk);
        }
        let raw: RawClientMetadata = serde_json::from_slice(&body).map_err(|_| {
            OAuthError::InvalidClient("the client metadata document is not a JSON object")
        })?;
        let metadata = validate_document(&raw, url.as_str())?;
        Ok(FetchedDocument { metadata, max_age })
    }
}

/// Items 72–73: the document names itself, carries no secret, is a public client.
pub fn validate_document(
    raw: &RawClientMetadata,
    client_id: &str,
) -> Result<ClientMetadata, OAuthError> {
    if raw.client_id.as_ref().and_then(|value| value.as_str()) != Some(client_id) {
        return Err(OAuthError::InvalidClient(
            "the client metadata document's client_id does not match its URL",
        ));
    }
    if raw.client_secret.is_some() || raw.client_secret_expires_at.is_some() {
        return Err(OAuthError::InvalidClient(
            "a client metadata document must not contain a client secret",
        ));
    }
    let mut raw = raw.clone();
    // CIMD clients are public: an absent method means `none` (not RFC 7591's default).
    if raw.token_endpoint_auth_method.is_none() {
        raw.token_endpoint_auth_method = Some(serde_json::Value::String("none".to_owned()));
    }
    let metadata = ClientMetadata::try_from(&raw).map_err(|_| {
        OAuthError::InvalidClient("the client metadata document is not valid client metadata")
    })?;
    if metadata.token_endpoint_auth_method != TokenEndpointAuthMethod::None {
        return Err(OAuthError::InvalidClient(
            "a client metadata document must use token_endpoint_auth_method none",
        ));
    }
    if metadata.client_name.is_none() {
        return Err(OAuthError::InvalidClient(
            "the client metadata document must name the client",
        ));
    }
    Ok(metadata)
}

/// `Cache-Control: max-age=N` → N; `no-store`/`no-cache` → 0.
fn cache_max_age(headers: &reqwest::header::HeaderMap) -> Option<i64> {
    let value = headers.get(reqwest::header::CACHE_CONTROL)?.to_str().ok()?;
    let mut max_age = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(0);
        }
        if let Some(seconds) = lower.strip_prefix("max-age=") {
            max_age = seconds.trim_matches('"').parse::<i64>().ok();
        }
    }
    max_age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_urls_are_checked_before_any_fetch() {
        assert!(
            validate_client_id_url("https://claude.ai/oauth/mcp-oauth-client-metadata").is_ok()
        );
        assert!(
            validate_client_id_url("https://vscode.dev:8443/oauth/client-metadata.json").is_ok()
        );
        for bad in [
            "http://claude.ai/oauth/x",
            "https://claude.ai",
            "https://claude.ai/",
            "https://claude.ai/a/../b",
            "https://claude.ai/a/./b",
            "https://claude.ai/x?y=1",
            "https://claude.ai/x#f",
            "https://u:p@claude.ai/x",
        ] {
            assert!(validate_client_id_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn special_use_addresses_are_forbidden() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
            "::127.0.0.1",
        ] {
            assert!(is_forbidden_address(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "160.79.104.10",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(!is_forbidden_address(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn loopback_is_allowed_only_when_configured() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(!address_allowed(ip, false));
        assert!(address_allowed(ip, true));
        assert!(!address_allowed("10.0.0.1".parse().unwrap(), true));
    }

    #[test]
    fn documents_must_be_public_self_naming_clients() {
        let id = "https://client.example/meta.json";
        let good = serde_json::json!({
            "client_id": id, "client_name": "C", "redirect_uris": ["https://client.example/cb"]
        });
        let raw: RawClientMetadata = serde_json::from_value(good.clone()).unwrap();
        assert_eq!(
            validate_document(&raw, id)
                .unwrap()
                .token_endpoint_auth_method,
            TokenEndpointAuthMethod::None
        );
        for patch in [
            serde_json::json!({"client_id": "https://other.example/meta.json"}),
            serde_json::json!({"client_secret": "x"}),
            serde_json::json!({"token_endpoint_auth_method": "client_secret_post"}),
            serde_json::json!({"client_name": null}),
            serde_json::json!({"redirect_uris": []}),
        ] {
            let mut doc = good.clone();
            for (key, value) in patch.as_object().unwrap() {
                doc[key] = value.clone();
            }
            let raw: RawClientMetadata = serde_json::from_value(doc).unwrap();
            assert!(validate_document(&raw, id).is_err(), "{patch}");
        }
    }

    #[test]
    fn cache_headers_are_read() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("cache-control", "public, max-age=600".parse().unwrap());
        assert_eq!(cache_max_age(&headers), Some(600));
        headers.insert("cache-control", "no-store".parse().unwrap());
        assert_eq!(cache_max_age(&headers), Some(0));
    }
}
