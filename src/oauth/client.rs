//! Client metadata: the RFC 7591 wire shape ([`RawClientMetadata`]) and the validated shape
//! ([`ClientMetadata`]), shared by DCR and CIMD; redirect URI validation and matching.
//!
//! The `TryFrom` conversions are pure functions of their input (fuzz targets call them).

use serde::{Deserialize, Serialize};
use url::Url;

use super::error::OAuthError;
use crate::config::is_loopback_url;

pub const MAX_REDIRECT_URIS: usize = 20;
pub const MAX_URI_LEN: usize = 2000;
pub const MAX_NAME_LEN: usize = 200;
pub const MAX_SCOPE_LEN: usize = 1000;
pub const MAX_CONTACTS: usize = 10;

/// Client metadata as it arrives (RFC 7591 §2). Unknown members are ignored, as RFC 7591 §2
/// requires; every known member is typed loosely so that a wrong type becomes our
/// `invalid_client_metadata`, not a framework error.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawClientMetadata {
    #[serde(default)]
    pub client_id: Option<serde_json::Value>,
    #[serde(default)]
    pub redirect_uris: Option<serde_json::Value>,
    #[serde(default)]
    pub token_endpoint_auth_method: Option<serde_json::Value>,
    #[serde(default)]
    pub grant_types: Option<serde_json::Value>,
    #[serde(default)]
    pub response_types: Option<serde_json::Value>,
    #[serde(default)]
    pub client_name: Option<serde_json::Value>,
    #[serde(default)]
    pub client_uri: Option<serde_json::Value>,
    #[serde(default)]
    pub logo_uri: Option<serde_json::Value>,
    #[serde(default)]
    pub tos_uri: Option<serde_json::Value>,
    #[serde(default)]
    pub policy_uri: Option<serde_json::Value>,
    #[serde(default)]
    pub scope: Option<serde_json::Value>,
    #[serde(default)]
    pub contacts: Option<serde_json::Value>,
    #[serde(default)]
    pub software_id: Option<serde_json::Value>,
    #[serde(default)]
    pub software_version: Option<serde_json::Value>,
    #[serde(default)]
    pub application_type: Option<serde_json::Value>,
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    #[serde(default)]
    pub jwks_uri: Option<serde_json::Value>,
    #[serde(default)]
    pub client_secret: Option<serde_json::Value>,
    #[serde(default)]
    pub client_secret_expires_at: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenEndpointAuthMethod {
    None,
    ClientSecretPost,
    ClientSecretBasic,
}

impl TokenEndpointAuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ClientSecretPost => "client_secret_post",
            Self::ClientSecretBasic => "client_secret_basic",
        }
    }

    pub fn is_confidential(self) -> bool {
        !matches!(self, Self::None)
    }
}

/// Validated client metadata; what the broker stores and shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientMetadata {
    pub redirect_uris: Vec<String>,
    pub token_endpoint_auth_method: TokenEndpointAuthMethod,
    pub grant_types: Vec<String>,
    pub client_name: Option<String>,
    pub client_uri: Option<String>,
    pub logo_uri: Option<String>,
    pub tos_uri: Option<String>,
    pub policy_uri: Option<String>,
    pub scope: Option<String>,
    pub contacts: Vec<String>,
    pub software_id: Option<String>,
    pub software_version: Option<String>,
    pub application_type: Option<String>,
}

const METADATA: fn(&'static str) -> OAuthError = OAuthError::InvalidClientMetadata;

fn optional_string(
    value: Option<&serde_json::Value>,
    max: usize,
    error: &'static str,
) -> Result<Option<String>, OAuthError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(text)) => {
            // No control characters, and none that a reader does not see but that reorder or
            // hide what is shown around them (a name carrying U+202E garbles the consent page
            // sentence that holds it).
            if text.chars().count() > max
                || text
                    .chars()
                    .any(|c| c.is_control() || crate::text::is_invisible_or_reordering(c))
            {
                Err(METADATA(error))
            } else {
                Ok(Some(text.clone()))
            }
        }
        Some(_) => Err(METADATA(error)),
    }
}

fn string_array(
    value: Option<&serde_json::Value>,
    max_items: usize,
    error: &'static str,
) -> Result<Option<Vec<String>>, OAuthError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Array(items)) => {
            if items.len() > max_items {
                return Err(METADATA(error));
            }
            items
                .iter()
                .map(|item| match item {
                    serde_json::Value::String(text) if text.len() <= MAX_URI_LEN => {
                        Ok(text.clone())
                    }
                    _ => Err(METADATA(error)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        }
        Some(_) => Err(METADATA(error)),
    }
}

fn optional_https_uri(
    value: Option<&serde_json::Value>,
    error: &'static str,
) -> Result<Option<String>, OAuthError> {
    let Some(text) = optional_string(value, MAX_URI_LEN, error)? else {
        return Ok(None);
    };
    match Url::parse(&text) {
        Ok(url) if url.scheme() == "https" && url.username().is_empty() => Ok(Some(text)),
        _ => Err(METADATA(error)),
    }
}

/// Checks one redirect URI for registration: absolute, `https` or loopback `http`
/// (mcp-spec-checklist item 41; private-use schemes such as `cursor://` are refused, see
/// docs/oauth.md), no fragment (RFC 6749 §3.1.2), no userinfo.
pub fn validate_redirect_uri(text: &str) -> Result<Url, OAuthError> {
    const BAD: OAuthError = OAuthError::InvalidRedirectUri(
        "redirect URIs must be absolute https URLs (or http on a loopback host) without fragment or credentials",
    );
    if text.len() > MAX_URI_LEN {
        return Err(BAD);
    }
    let url = Url::parse(text).map_err(|_| BAD)?;
    let scheme_ok = match url.scheme() {
        "https" => url.host().is_some(),
        "http" => is_loopback_url(&url),
        _ => false,
    };
    if !scheme_ok || url.fragment().is_some() || !url.username().is_empty() {
        return Err(BAD);
    }
    if url.password().is_some() {
        return Err(BAD);
    }
    Ok(url)
}

/// Does the redirect URI of a request match one registered? Exact string match, except that
/// a registered loopback `http` URI matches any port (RFC 8252 §7.3, OAuth 2.1 §8.4.2;
/// mcp-spec-checklist item 40: VS Code and Claude Code use ephemeral ports).
pub fn redirect_uri_matches(registered: &[String], requested: &str) -> bool {
    if registered.iter().any(|uri| uri == requested) {
        return true;
    }
    let Ok(requested_url) = Url::parse(requested) else {
        return false;
    };
    if requested_url.scheme() != "http" || !is_loopback_url(&requested_url) {
        return false;
    }
    registered.iter().any(|uri| {
        Url::parse(uri).is_ok_and(|registered_url| {
            registered_url.scheme() == "http"
                && is_loopback_url(&registered_url)
                && registered_url.host_str() == requested_url.host_str()
                && registered_url.path() == requested_url.path()
                && registered_url.query() == requested_url.query()
                && requested_url.fragment().is_none()
                && requested_url.username().is_empty()
                && requested_url.password().is_none()
        })
    })
}

/// Grant types we do not implement and will not pretend to: a client asking for them is
/// misconfigured. Other unknown values (Claude's CIMD lists the JWT bearer grant) are dropped.
const REFUSED_GRANT_TYPES: [&str; 4] =
    ["implicit", "password", "client_credentials", "device_code"];

impl TryFrom<&RawClientMetadata> for ClientMetadata {
    type Error = OAuthError;

    fn try_from(raw: &RawClientMetadata) -> Result<Self, OAuthError> {
        let redirect_uris = string_array(
            raw.redirect_uris.as_ref(),
            MAX_REDIRECT_URIS,
            "redirect_uris must be an array of at most 20 strings",
        )?
        .ok_or(OAuthError::InvalidRedirectUri("redirect_uris is required"))?;
        if redirect_uris.is_empty() {
            return Err(OAuthError::InvalidRedirectUri(
                "redirect_uris must not be empty",
            ));
        }
        for uri in &redirect_uris {
            validate_redirect_uri(uri)?;
        }

        let token_endpoint_auth_method = match raw.token_endpoint_auth_method.as_ref() {
            // RFC 7591 §2: the default is client_secret_basic.
            None | Some(serde_json::Value::Null) => TokenEndpointAuthMethod::ClientSecretBasic,
            Some(value) => serde_json::from_value(value.clone()).map_err(|_| {
                METADATA(
                    "token_endpoint_auth_method must be none, client_secret_post or client_secret_basic",
                )
            })?,
        };

        let grant_types = string_array(
            raw.grant_types.as_ref(),
            10,
            "grant_types must be an array of strings",
        )?
        .unwrap_or_else(|| vec!["authorization_code".to_owned()]);
        if grant_types
            .iter()
            .any(|grant| REFUSED_GRANT_TYPES.contains(&grant.as_str()))
        {
            return Err(METADATA(
                "only the authorization_code and refresh_token grants are supported",
            ));
        }
        if !grant_types
            .iter()
            .any(|grant| grant == "authorization_code")
        {
            return Err(METADATA("grant_types must include authorization_code"));
        }
        let grant_types: Vec<String> = grant_types
            .into_iter()
            .filter(|grant| grant == "authorization_code" || grant == "refresh_token")
            .collect();

        if let Some(response_types) = string_array(
            raw.response_types.as_ref(),
            10,
            "response_types must be an array of strings",
        )? && response_types.iter().any(|response| response != "code")
        {
            return Err(METADATA("only the code response type is supported"));
        }

        if raw.jwks.is_some() || raw.jwks_uri.is_some() {
            return Err(METADATA("jwks and jwks_uri are not supported"));
        }

        let application_type = optional_string(
            raw.application_type.as_ref(),
            16,
            "application_type must be web or native",
        )?;
        if let Some(kind) = &application_type
            && kind != "web"
            && kind != "native"
        {
            return Err(METADATA("application_type must be web or native"));
        }

        let contacts = string_array(
            raw.contacts.as_ref(),
            MAX_CONTACTS,
            "contacts must be an array of at most 10 strings",
        )?
        .unwrap_or_default();
        if contacts
            .iter()
            .any(|contact| contact.len() > 320 || contact.chars().any(char::is_control))
        {
            return Err(METADATA("contacts must be short strings"));
        }

        Ok(Self {
            redirect_uris,
            token_endpoint_auth_method,
            grant_types,
            client_name: optional_string(
                raw.client_name.as_ref(),
                MAX_NAME_LEN,
                "client_name must be a string of at most 200 characters",
            )?,
            client_uri: optional_https_uri(raw.client_uri.as_ref(), "client_uri must be https")?,
            logo_uri: optional_https_uri(raw.logo_uri.as_ref(), "logo_uri must be https")?,
            tos_uri: optional_https_uri(raw.tos_uri.as_ref(), "tos_uri must be https")?,
            policy_uri: optional_https_uri(raw.policy_uri.as_ref(), "policy_uri must be https")?,
            scope: optional_string(
                raw.scope.as_ref(),
                MAX_SCOPE_LEN,
                "scope must be a string of at most 1000 characters",
            )?,
            contacts,
            software_id: optional_string(
                raw.software_id.as_ref(),
                MAX_NAME_LEN,
                "software_id must be a short string",
            )?,
            software_version: optional_string(
                raw.software_version.as_ref(),
                MAX_NAME_LEN,
                "software_version must be a short string",
            )?,
            application_type,
        })
    }
}

impl ClientMetadata {
    /// The refresh grant is always available: Claude never asks for it (checklist item 56).
    pub fn allows_refresh(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: serde_json::Value) -> RawClientMetadata {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn known_client_callbacks_are_accepted() {
        for uri in [
            "https://claude.ai/api/mcp/auth_callback",
            "https://claude.com/api/mcp/auth_callback",
            "https://chatgpt.com/connector_platform_oauth_redirect",
            "https://chatgpt.com/connector/oauth/abc123",
            "https://vscode.dev/redirect",
            "https://insiders.vscode.dev/redirect",
            "http://127.0.0.1:33418/",
            "http://127.0.0.1/",
            "http://localhost:6274/oauth/callback",
            "http://[::1]:8080/cb",
        ] {
            assert!(validate_redirect_uri(uri).is_ok(), "{uri}");
        }
    }

    #[test]
    fn bad_redirect_uris_are_refused() {
        for uri in [
            "http://example.com/cb",
            "https://example.com/cb#frag",
            "https://user:pw@example.com/cb",
            "cursor://anysphere.cursor-mcp/oauth/callback",
            "javascript:alert(1)",
            "/relative",
            "",
        ] {
            assert!(validate_redirect_uri(uri).is_err(), "{uri}");
        }
    }

    #[test]
    fn loopback_matches_any_port_but_nothing_else_does() {
        let registered = vec![
            "http://127.0.0.1/callback".to_owned(),
            "https://app.example/cb".to_owned(),
            "http://localhost/cb".to_owned(),
        ];
        assert!(redirect_uri_matches(
            &registered,
            "http://127.0.0.1:5555/callback"
        ));
        assert!(redirect_uri_matches(&registered, "http://localhost:1/cb"));
        assert!(redirect_uri_matches(&registered, "https://app.example/cb"));
        assert!(!redirect_uri_matches(
            &registered,
            "https://app.example:444/cb"
        ));
        assert!(!redirect_uri_matches(
            &registered,
            "https://app.example/cb/"
        ));
        assert!(!redirect_uri_matches(
            &registered,
            "http://127.0.0.1:5555/other"
        ));
        assert!(!redirect_uri_matches(
            &registered,
            "http://[::1]:5555/callback"
        ));
        assert!(!redirect_uri_matches(
            &registered,
            "https://127.0.0.1:5555/callback"
        ));
    }

    #[test]
    fn defaults_follow_rfc_7591() {
        let metadata = ClientMetadata::try_from(&raw(
            serde_json::json!({"redirect_uris": ["https://a.example/cb"]}),
        ))
        .unwrap();
        assert_eq!(
            metadata.token_endpoint_auth_method,
            TokenEndpointAuthMethod::ClientSecretBasic
        );
        assert_eq!(metadata.grant_types, vec!["authorization_code"]);
    }

    #[test]
    fn malformed_metadata_is_refused_with_the_rfc_codes() {
        let cases = [
            (serde_json::json!({}), "invalid_redirect_uri"),
            (
                serde_json::json!({"redirect_uris": []}),
                "invalid_redirect_uri",
            ),
            (
                serde_json::json!({"redirect_uris": "https://a.example/cb"}),
                "invalid_client_metadata",
            ),
            (
                serde_json::json!({"redirect_uris": ["http://a.example/cb"]}),
                "invalid_redirect_uri",
            ),
            (
                serde_json::json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "private_key_jwt"}),
                "invalid_client_metadata",
            ),
            (
                serde_json::json!({"redirect_uris": ["https://a.example/cb"], "grant_types": ["implicit"]}),
                "invalid_client_metadata",
            ),
            (
                serde_json::json!({"redirect_uris": ["https://a.example/cb"], "grant_types": ["refresh_token"]}),
                "invalid_client_metadata",
            ),
            (
                serde_json::json!({"redirect_uris": ["https://a.example/cb"], "response_types": ["token"]}),
                "invalid_client_metadata",
            ),
            (
                serde_json::json!({"redirect_uris": ["https://a.example/cb"], "client_name": 7}),
                "invalid_client_metadata",
            ),
            (
                serde_json::json!({"redirect_uris": ["https://a.example/cb"], "client_name": "x".repeat(201)}),
                "invalid_client_metadata",
            ),
            // A right-to-left override would reorder the consent page sentence around the name.
            (
                serde_json::json!({"redirect_uris": ["https://a.example/cb"], "client_name": "Claude\u{202E}lanigiro"}),
                "invalid_client_metadata",
            ),
            (
                serde_json::json!({"redirect_uris": ["https://a.example/cb"], "client_name": "Clau\u{200B}de"}),
                "invalid_client_metadata",
            ),
            (
                serde_json::json!({"redirect_uris": ["https://a.example/cb"], "logo_uri": "http://a.example/l.png"}),
                "invalid_client_metadata",
            ),
            (
                serde_json::json!({"redirect_uris": ["https://a.example/cb"], "jwks_uri": "https://a.example/j"}),
                "invalid_client_metadata",
            ),
            (
                serde_json::json!({"redirect_uris": ["https://a.example/cb"], "application_type": "desktop"}),
                "invalid_client_metadata",
            ),
        ];
        for (json, code) in cases {
            let error = ClientMetadata::try_from(&raw(json.clone())).unwrap_err();
            assert_eq!(error.code(), code, "{json}");
        }
    }

    proptest::proptest! {
        /// The pure parsers behind every endpoint answer any input with a value or an OAuth
        /// error, never a panic.
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = crate::oauth::register::parse_registration(&bytes);
            let _ = crate::oauth::authorize::parse_authorize_query(&text);
            let _ = crate::oauth::token::parse_form::<crate::oauth::token::RawTokenRequest>(&bytes)
                .map(|raw| crate::oauth::token::TokenGrant::try_from(&raw));
            let _ = validate_redirect_uri(&text);
            let _ = crate::oauth::cimd::validate_client_id_url(&text);
        }

        /// A registered URI always matches itself; a different https port or path never does.
        #[test]
        fn https_redirects_match_exactly(host in "[a-z]{1,12}", path in "/[a-z]{0,12}", port in 1u16..65535) {
            let registered = vec![format!("https://{host}.example{path}")];
            proptest::prop_assert!(redirect_uri_matches(&registered, &registered[0]));
            let other_port = format!("https://{host}.example:{port}{path}");
            proptest::prop_assert!(port == 443 || !redirect_uri_matches(&registered, &other_port));
            let other_path = format!("https://{host}.example{path}x");
            proptest::prop_assert!(!redirect_uri_matches(&registered, &other_path));
        }

        /// Loopback registrations match every port, but only on the same host and path.
        #[test]
        fn loopback_redirects_match_any_port(port in 1u16..65535, path in "/[a-z]{0,12}") {
            let registered = vec![format!("http://127.0.0.1{path}")];
            let with_port = format!("http://127.0.0.1:{port}{path}");
            proptest::prop_assert!(redirect_uri_matches(&registered, &with_port));
            let other_host = format!("http://localhost:{port}{path}");
            proptest::prop_assert!(!redirect_uri_matches(&registered, &other_host));
        }
    }

    #[test]
    fn unknown_grant_types_are_dropped_not_fatal() {
        let metadata = ClientMetadata::try_from(&raw(serde_json::json!({
            "redirect_uris": ["https://claude.ai/api/mcp/auth_callback"],
            "grant_types": ["authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:jwt-bearer"],
            "token_endpoint_auth_method": "none",
            "unknown_member": {"ignored": true}
        })))
        .unwrap();
        assert_eq!(
            metadata.grant_types,
            vec!["authorization_code", "refresh_token"]
        );
    }
}
