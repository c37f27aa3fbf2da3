//! Which forge the broker works against, as `/api/v1/version` says (forgejo-facts.md §1.10):
//! recorded in the audit log and the metrics at start and whenever it changes, so that a
//! security review can tell which upstream code handled the users' tokens (older Gitea
//! releases accepted an access token as a refresh token).
//!
//! Forgejo answers e.g. `11.0.1+gitea-1.22.0` (its version, then the Gitea API it is compatible
//! with), and also serves `/api/forgejo/v1/version`; Gitea answers e.g. `1.24.2`. The answer
//! is the upstream's word, so it is kept only if it looks like a version: at most
//! [`MAX_VERSION_LEN`] characters of `0-9 A-Z a-z . + - _ ~`.

use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditEvent, SharedAudit};

/// The longest version string kept.
pub const MAX_VERSION_LEN: usize = 64;

/// How often the version is asked again once known (an upgrade of the forge is recorded).
const RECHECK: Duration = Duration::from_secs(6 * 3600);
/// How soon after a failed probe the next one is made.
const RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    Forgejo,
    /// Gitea, or another server with Gitea's API and no Forgejo endpoint.
    Gitea,
}

impl Product {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forgejo => "forgejo",
            Self::Gitea => "gitea",
        }
    }
}

/// What the upstream reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamVersion {
    pub product: Product,
    /// As reported by `/api/v1/version` (`11.0.1+gitea-1.22.0`, `1.24.2`).
    pub reported: String,
}

impl UpstreamVersion {
    /// From the reported version, and whether `/api/forgejo/v1/version` answered (asked
    /// only when the version does not carry Forgejo's `+gitea-` suffix).
    pub fn classify(reported: String, forgejo_endpoint: bool) -> Self {
        let product = if forgejo_endpoint || Self::says_forgejo(&reported) {
            Product::Forgejo
        } else {
            Product::Gitea
        };
        Self { product, reported }
    }

    /// Whether the reported version says Forgejo, without asking the Forgejo endpoint.
    pub fn says_forgejo(reported: &str) -> bool {
        reported.contains("+gitea-")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VersionError {
    #[error("the version answer is not the expected JSON")]
    NotJson,
    #[error(
        "the reported version is empty, longer than {MAX_VERSION_LEN} characters, or has characters a version does not have"
    )]
    Unlikely,
}

#[derive(Deserialize)]
struct RawVersion {
    version: String,
}

/// A `{"version": "..."}` body (other fields ignored): the version, if it looks like one.
pub fn parse_version(body: &[u8]) -> Result<String, VersionError> {
    let raw: RawVersion = serde_json::from_slice(body).map_err(|_| VersionError::NotJson)?;
    let version = raw.version;
    let plausible = !version.is_empty()
        && version.len() <= MAX_VERSION_LEN
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-' | b'_' | b'~'));
    if plausible {
        Ok(version)
    } else {
        Err(VersionError::Unlikely)
    }
}

/// Asks the upstream for its version at start, again every 6 hours (every minute until
/// it first answers), and records each version it has not recorded before: an
/// `upstream_version` audit record (which the metrics follow) and a log line.
pub async fn watch(
    upstream: std::sync::Arc<super::Upstream>,
    audit: SharedAudit,
    cancel: CancellationToken,
) {
    let mut last: Option<UpstreamVersion> = None;
    let mut failures = 0u32;
    loop {
        // A probe may take two Forgejo timeouts; shutdown does not wait for it.
        let probe = tokio::select! {
            () = cancel.cancelled() => return,
            probe = upstream.client().version() => probe,
        };
        let wait = match probe {
            Ok(version) => {
                failures = 0;
                if last.as_ref() != Some(&version) {
                    tracing::info!(
                        product = version.product.as_str(),
                        version = %version.reported,
                        "upstream forge identified"
                    );
                    audit.record(AuditEvent::UpstreamVersion {
                        product: version.product.as_str().to_owned(),
                        version: version.reported.clone(),
                    });
                    last = Some(version);
                }
                RECHECK
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                // Once, not every minute of an outage: the login and refresh paths report
                // an unreachable Forgejo where it matters.
                if failures == 1 {
                    tracing::warn!(%error, "cannot ask the upstream forge for its version; retrying");
                }
                if last.is_some() { RECHECK } else { RETRY }
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgejo_and_gitea_answers_are_told_apart() {
        let forgejo = parse_version(br#"{"version":"11.0.1+gitea-1.22.0"}"#).unwrap();
        assert!(UpstreamVersion::says_forgejo(&forgejo));
        assert_eq!(
            UpstreamVersion::classify(forgejo.clone(), false).product,
            Product::Forgejo
        );
        let gitea = parse_version(br#"{"version":"1.24.2","extra":1}"#).unwrap();
        assert!(!UpstreamVersion::says_forgejo(&gitea));
        assert_eq!(
            UpstreamVersion::classify(gitea.clone(), false).product,
            Product::Gitea
        );
        // A Forgejo that answers without the suffix is still known by its own endpoint.
        assert_eq!(
            UpstreamVersion::classify("12.0.0".to_owned(), true).product,
            Product::Forgejo
        );
    }

    #[test]
    fn what_does_not_look_like_a_version_is_not_kept() {
        for body in [
            &br#"{"version":""}"#[..],
            br#"{"version":"1.0 <script>"}"#,
            br#"{"version":"1.0\n"}"#,
            br#"{"version":7}"#,
            br#"not json"#,
        ] {
            assert!(
                parse_version(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let long = format!(r#"{{"version":"{}"}}"#, "1".repeat(MAX_VERSION_LEN + 1));
        assert_eq!(parse_version(long.as_bytes()), Err(VersionError::Unlikely));
    }
}
