//! The egress proxy's upstream API policy (`policies/upstream/forgejo-api.toml`), over real
//! HTTP: what the policy refuses gets 403 and an `UpstreamApiDenied` record, and never reaches
//! Forgejo, nor makes the broker fetch the user's token; what it allows is forwarded with the
//! token injected. Forgejo here is a recorder that answers every request and remembers its
//! method, path and `Authorization`; it is mounted under a path prefix, as a Forgejo behind a
//! reverse proxy can be.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use forgejo_mcp_broker::audit::{AuditEvent, MemoryAudit};
use forgejo_mcp_broker::auth::{UpstreamCredentials, UpstreamCredentialsError, UserId};
use forgejo_mcp_broker::egress::{Egress, EgressSession, SessionCredential};
use forgejo_mcp_broker::secret::SecretString;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

const REAL_TOKEN: &str = "real-forgejo-token-9f2c";
const PLACEHOLDER: &str = "session-placeholder-41ab";

/// The user's token, counting how often the proxy asked for it.
#[derive(Default)]
struct Credentials {
    fetched: AtomicUsize,
}

#[async_trait]
impl UpstreamCredentials for Credentials {
    async fn access_token(&self, _: UserId) -> Result<SecretString, UpstreamCredentialsError> {
        self.fetched.fetch_add(1, Ordering::SeqCst);
        Ok(SecretString::from(REAL_TOKEN.to_owned()))
    }
}

type Seen = Arc<Mutex<Vec<(String, String, Option<String>)>>>;

/// A Forgejo stand-in that records every request that reaches it.
async fn recording_forgejo() -> (std::net::SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let record = record.clone();
        async move {
            let authorization = request
                .headers()
                .get("authorization")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            record.lock().unwrap().push((
                request.method().to_string(),
                request.uri().path().to_owned(),
                authorization,
            ));
            "{}"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, seen)
}

/// One session's egress proxy towards `forgejo`, on a fresh local port (a test needs no
/// network namespace to speak to it); its address and what stops it.
fn start_proxy(
    forgejo: &str,
    credentials: Arc<Credentials>,
    audit: Arc<MemoryAudit>,
    policy: Option<policies::UpstreamPolicy>,
    credential: SessionCredential,
) -> (std::net::SocketAddr, CancellationToken) {
    let egress =
        Arc::new(Egress::new(forgejo.parse().unwrap(), credentials, audit, policy).unwrap());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let session = EgressSession {
        user_id: 7,
        session_label: "s-policy".to_owned(),
        credential,
    };
    egress.serve(listener, session, cancel.clone()).unwrap();
    (proxy, cancel)
}

/// One request as the child's HTTP client would write it, the path exactly as given (no
/// client-side normalisation); the status and body.
async fn raw_request(
    proxy: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: token {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn the_upstream_api_policy_refuses_before_forgejo_or_the_token_is_reached() {
    let (forgejo, seen) = recording_forgejo().await;
    let credentials = Arc::new(Credentials::default());
    let audit = MemoryAudit::new();
    let (proxy, cancel) = start_proxy(
        &format!("http://{forgejo}/forgejo/"),
        credentials.clone(),
        audit.clone(),
        Some(policies::UpstreamPolicy::builtin().unwrap()),
        SessionCredential::Placeholder(SecretString::from(PLACEHOLDER.to_owned())),
    );

    // Allowed: forwarded under Forgejo's prefix, with the real token instead of the placeholder.
    let (status, _) = raw_request(
        proxy,
        "POST",
        "/api/v1/repos/alice/notes/issues",
        PLACEHOLDER,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        seen.lock().unwrap().clone(),
        vec![(
            "POST".to_owned(),
            "/forgejo/api/v1/repos/alice/notes/issues".to_owned(),
            Some(format!("token {REAL_TOKEN}"))
        )]
    );
    assert_eq!(credentials.fetched.load(Ordering::SeqCst), 1);

    // A name with a slash, escaped as the SDKs send it, reaches Forgejo still escaped (its
    // router reads `feature%2Fparser` as one segment).
    let (status, _) = raw_request(
        proxy,
        "DELETE",
        "/api/v1/repos/alice/notes/branches/feature%2Fparser",
        PLACEHOLDER,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        seen.lock().unwrap().last().map(|(_, path, _)| path.clone()),
        Some("/forgejo/api/v1/repos/alice/notes/branches/feature%2Fparser".to_owned())
    );
    assert_eq!(credentials.fetched.load(Ordering::SeqCst), 2);

    // Refused: 403 with the policy's reason; Forgejo never sees them, the token is not fetched.
    for (method, path, reason) in [
        ("GET", "/api/v1/admin/users", "site administration"),
        (
            "POST",
            "/api/v1/users/alice/tokens",
            "access tokens outlive the session",
        ),
        (
            "POST",
            "/api/v1/repos/alice/notes/hooks",
            "webhooks send data elsewhere",
        ),
        ("GET", "/api/v1/%61dmin/users", "site administration"),
        // Resolved against Forgejo's URL before the check, as Forgejo would see it.
        (
            "GET",
            "/api/v1/repos/alice/../../admin/users",
            "site administration",
        ),
        ("GET", "/../../admin/users", "outside Forgejo's URL"),
        // An escaped slash is also read as a proxy in front of Forgejo might decode it.
        (
            "GET",
            "/api/v1/repos/alice%2Fnotes/hooks",
            "webhooks send data elsewhere",
        ),
        (
            "GET",
            "/api/v1/repos/a/b/branches/x%2F..%2F..%2F..%2Fadmin",
            "not in canonical form",
        ),
        ("GET", "/user/settings", "no rule allows it"),
    ] {
        let (status, body) = raw_request(proxy, method, path, PLACEHOLDER).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert!(body.contains(reason), "{method} {path}: {body}");
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "a refused request reached Forgejo"
    );
    assert_eq!(credentials.fetched.load(Ordering::SeqCst), 2);

    // The placeholder is checked first: a stranger learns nothing about the policy.
    let (status, _) = raw_request(proxy, "GET", "/api/v1/admin/users", "guess").await;
    assert_eq!(status, 401);

    let events = audit.events();
    let denied: Vec<_> = events
        .iter()
        .filter_map(|event| match event {
            AuditEvent::UpstreamApiDenied {
                session,
                user_id,
                method,
                path,
            } => Some((session.as_str(), *user_id, method.as_str(), path.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(denied.len(), 9, "{denied:?}");
    assert!(denied.contains(&("s-policy", 7, "GET", "/api/v1/admin/users")));
    let calls = events
        .iter()
        .filter(|event| matches!(event, AuditEvent::UpstreamApiCall { .. }))
        .count();
    assert_eq!(calls, 3, "the forwarded calls and the 401");
    let audited = format!("{events:?}");
    assert!(!audited.contains(REAL_TOKEN) && !audited.contains(PLACEHOLDER));
    cancel.cancel();
}

#[tokio::test]
async fn an_unrestricted_proxy_forwards_what_the_policy_would_refuse() {
    let (forgejo, seen) = recording_forgejo().await;
    let (proxy, cancel) = start_proxy(
        &format!("http://{forgejo}/"),
        Arc::new(Credentials::default()),
        MemoryAudit::new(),
        None,
        SessionCredential::PassThrough,
    );
    let (status, _) = raw_request(proxy, "GET", "/api/v1/admin/users", REAL_TOKEN).await;
    assert_eq!(status, 200);
    assert_eq!(seen.lock().unwrap().len(), 1);
    cancel.cancel();
}
