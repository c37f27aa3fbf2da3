//! The egress proxy's upstream API policy (`policies/upstream/forgejo-api.toml`), over real
//! HTTP: what the policy refuses gets 403 and an `UpstreamApiDenied` record, and never reaches
//! Forgejo, nor makes the broker fetch the user's token; what it allows is forwarded with the
//! token injected. Forgejo here is a recorder that answers every request and remembers its
//! method, path and `Authorization`; it is mounted under a path prefix, as a Forgejo behind a
//! reverse proxy can be. A call Forgejo received is audited even if the child hangs up, or the
//! broker stops, before Forgejo answers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use forgejo_mcp_broker::audit::{AuditEvent, MemoryAudit};
use forgejo_mcp_broker::auth::{UpstreamCredentials, UpstreamCredentialsError, UserId};
use forgejo_mcp_broker::egress::{Egress, EgressSession, SessionCredential};
use forgejo_mcp_broker::secret::SecretString;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

use crate::fixtures::eventually;

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
    let (address, seen, _) = recording_forgejo_as(Some(false)).await;
    (address, seen)
}

/// The same, answering `GET /api/v1/user` for a site administrator or not (`None`: 403, as for
/// a token without `read:user`), and also keeping every request's headers.
async fn recording_forgejo_as(
    admin: Option<bool>,
) -> (
    std::net::SocketAddr,
    Seen,
    Arc<Mutex<Vec<axum::http::HeaderMap>>>,
) {
    let seen: Seen = Arc::default();
    let headers: Arc<Mutex<Vec<axum::http::HeaderMap>>> = Arc::default();
    let (record, record_headers) = (seen.clone(), headers.clone());
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let (record, record_headers) = (record.clone(), record_headers.clone());
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
            record_headers
                .lock()
                .unwrap()
                .push(request.headers().clone());
            match (request.uri().path().ends_with("/api/v1/user"), admin) {
                (true, Some(admin)) => (
                    axum::http::StatusCode::OK,
                    format!(r#"{{"id":7,"login":"alice","is_admin":{admin}}}"#),
                ),
                (true, None) => (axum::http::StatusCode::FORBIDDEN, "{}".to_owned()),
                (false, _) => (axum::http::StatusCode::OK, "{}".to_owned()),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, seen, headers)
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

/// [`start_proxy`] with the builtin policy, an `inject` session and a user whose token is
/// always there.
fn start_builtin_proxy(
    forgejo: std::net::SocketAddr,
    audit: Arc<MemoryAudit>,
) -> (std::net::SocketAddr, CancellationToken) {
    start_proxy(
        &format!("http://{forgejo}/"),
        Arc::new(Credentials::default()),
        audit,
        Some(policies::UpstreamPolicy::builtin().unwrap()),
        SessionCredential::Placeholder(SecretString::from(PLACEHOLDER.to_owned())),
    )
}

/// One request as the child's HTTP client would write it, the path exactly as given (no
/// client-side normalisation); the status and body.
async fn raw_request(
    proxy: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
) -> (u16, String) {
    raw_request_with(proxy, method, path, token, "", "").await
}

/// The same with `extra` header lines (each ending in CRLF) and a body.
async fn raw_request_with(
    proxy: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    extra: &str,
    body: &str,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: token {token}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
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

/// A request target that a URL parser would read as another origin (a backslash counts as a
/// slash; an absolute URL after the first slash) stays on Forgejo's origin, with or without a
/// policy: the token injected for Forgejo never goes anywhere else.
#[tokio::test]
async fn the_proxy_never_leaves_forgejos_origin() {
    let (forgejo, seen) = recording_forgejo().await;
    let (elsewhere, elsewhere_seen) = recording_forgejo().await;
    let port = elsewhere.port();
    for policy in [None, Some(policies::UpstreamPolicy::builtin().unwrap())] {
        let (proxy, cancel) = start_proxy(
            &format!("http://{forgejo}/"),
            Arc::new(Credentials::default()),
            MemoryAudit::new(),
            policy,
            SessionCredential::Placeholder(SecretString::from(PLACEHOLDER.to_owned())),
        );
        for path in [
            format!("/\\/127.0.0.1:{port}/api/v1/user"),
            format!("/\\\\127.0.0.1:{port}/api/v1/user"),
            format!("/http://127.0.0.1:{port}/api/v1/user"),
            format!("/http:127.0.0.1:{port}/api/v1/user"),
            format!("/http:/127.0.0.1:{port}/api/v1/user"),
            format!("/https://127.0.0.1:{port}/api/v1/user"),
        ] {
            let (status, body) = raw_request(proxy, "GET", &path, PLACEHOLDER).await;
            assert!([200, 400, 403].contains(&status), "{path}: {status} {body}");
        }
        cancel.cancel();
    }
    assert!(
        elsewhere_seen.lock().unwrap().is_empty(),
        "a request left Forgejo's origin: {:?}",
        elsewhere_seen.lock().unwrap()
    );
    // What did reach Forgejo stayed below its URL.
    for (_, path, _) in seen.lock().unwrap().iter() {
        assert!(path.starts_with('/') && !path.starts_with("//"), "{path}");
    }
}

/// Forgejo lets a site administrator's token act as any user named in a `Sudo` header or a
/// `sudo` form field (query, form body or multipart body): each is refused before the token is
/// fetched, and the headers a reverse proxy might trust never reach Forgejo.
#[tokio::test]
async fn acting_as_another_user_is_refused_and_only_api_headers_are_forwarded() {
    for admin in [false, true] {
        let (forgejo, seen, headers) = recording_forgejo_as(Some(admin)).await;
        let credentials = Arc::new(Credentials::default());
        let audit = MemoryAudit::new();
        let (proxy, cancel) = start_proxy(
            &format!("http://{forgejo}/"),
            credentials.clone(),
            audit.clone(),
            Some(policies::UpstreamPolicy::builtin().unwrap()),
            SessionCredential::Placeholder(SecretString::from(PLACEHOLDER.to_owned())),
        );
        let form = "Content-Type: application/x-www-form-urlencoded\r\n";
        for (method, path, extra, body) in [
            ("GET", "/api/v1/user/repos", "Sudo: bob\r\n", ""),
            ("GET", "/api/v1/user/repos", "sUdO: bob\r\n", ""),
            ("GET", "/api/v1/user/repos?sudo=bob", "", ""),
            ("GET", "/api/v1/user/repos?page=2&SUDO=bob", "", ""),
            ("GET", "/api/v1/user/repos?su%64o=bob", "", ""),
            ("PUT", "/api/v1/user/starred/bob/x", form, "sudo=bob"),
            ("PUT", "/api/v1/user/starred/bob/x", form, "a=1&%73udo=bob"),
        ] {
            let (status, reply) =
                raw_request_with(proxy, method, path, PLACEHOLDER, extra, body).await;
            assert_eq!(status, 403, "{method} {path} {extra:?} {body:?}: {reply}");
            assert!(reply.contains("sudo"), "{reply}");
        }
        // Go lowercases a Content-Type with Unicode rules (`İ` is `i` to it, the Kelvin sign
        // `k`): a form to Forgejo, none to an ASCII comparison. Such a header is refused.
        for content_type in [
            "appl\u{130}cation/x-www-form-urlencoded",
            "mult\u{130}part/form-data; boundary=XyZ",
        ] {
            let (status, reply) = raw_request_with(
                proxy,
                "PUT",
                "/api/v1/user/starred/bob/x",
                PLACEHOLDER,
                &format!("Content-Type: {content_type}\r\n"),
                "sudo=bob",
            )
            .await;
            assert_eq!(status, 403, "{content_type}: {reply}");
            assert!(reply.contains("ASCII"), "{reply}");
        }
        assert!(seen.lock().unwrap().is_empty(), "admin={admin}");
        assert_eq!(credentials.fetched.load(Ordering::SeqCst), 0);

        // A multipart body (an attachment upload) is forwarded for a user who is not a site
        // administrator, and refused for one who is.
        let multipart = "Content-Type: multipart/form-data; boundary=XyZ\r\n";
        let upload = "--XyZ\r\nContent-Disposition: form-data; name*0=su; name*1=do\r\n\r\nbob\r\n--XyZ--\r\n";
        let (status, reply) = raw_request_with(
            proxy,
            "POST",
            "/api/v1/repos/alice/notes/issues/1/assets",
            PLACEHOLDER,
            multipart,
            upload,
        )
        .await;
        let uploads = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, path, _)| path.ends_with("/assets"))
            .count();
        if admin {
            assert_eq!(status, 403, "{reply}");
            assert_eq!(uploads, 0);
        } else {
            assert_eq!(status, 200, "{reply}");
            assert_eq!(uploads, 1);
        }

        // Only what an API client needs to say reaches Forgejo.
        let (status, _) = raw_request_with(
            proxy,
            "GET",
            "/api/v1/repos/alice/notes",
            PLACEHOLDER,
            "X-WEBAUTH-USER: root\r\nX-Forwarded-For: 10.0.0.1\r\nCookie: i_like_gitea=abc\r\nAccept: application/json\r\nUser-Agent: child/1\r\n",
            "",
        )
        .await;
        assert_eq!(status, 200);
        let last = headers.lock().unwrap().last().cloned().unwrap();
        for dropped in ["x-webauth-user", "x-forwarded-for", "cookie", "sudo"] {
            assert!(!last.contains_key(dropped), "{dropped} reached Forgejo");
        }
        assert_eq!(last.get("accept").unwrap(), "application/json");
        assert_eq!(last.get("user-agent").unwrap(), "child/1");
        assert_eq!(
            last.get("authorization").unwrap(),
            &format!("token {REAL_TOKEN}")
        );
        let denied = audit
            .events()
            .iter()
            .filter(|event| matches!(event, AuditEvent::UpstreamApiDenied { .. }))
            .count();
        // Seven `sudo` spellings, two Content-Types, and the administrator's multipart body.
        assert_eq!(denied, 9 + usize::from(admin));
        cancel.cancel();
    }
}

/// A Forgejo stand-in that holds every answer until the test lets it go: each request's arrival
/// is reported on the receiver, and answers (200) wait until the sender says `true`.
async fn holding_forgejo() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<()>,
    tokio::sync::watch::Sender<bool>,
) {
    let (arrived, arrivals) = tokio::sync::mpsc::unbounded_channel();
    let (release, released) = tokio::sync::watch::channel(false);
    let app = axum::Router::new().fallback(move || {
        let (arrived, mut released) = (arrived.clone(), released.clone());
        async move {
            arrived.send(()).unwrap();
            released.wait_for(|released| *released).await.unwrap();
            "{}"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, arrivals, release)
}

/// A request for Forgejo, as the child writes it, left open (no `Connection: close`).
fn create_issue() -> String {
    format!(
        "POST /api/v1/repos/alice/notes/issues HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: token {PLACEHOLDER}\r\nContent-Length: 0\r\n\r\n"
    )
}

/// The `upstream_api_call` records of `audit` for [`create_issue`]: their statuses.
fn create_issue_calls(audit: &MemoryAudit) -> Vec<u16> {
    audit
        .events()
        .into_iter()
        .filter_map(|event| match event {
            AuditEvent::UpstreamApiCall {
                session,
                user_id: 7,
                method,
                path,
                status,
            } if session == "s-policy"
                && method == "POST"
                && path == "/api/v1/repos/alice/notes/issues" =>
            {
                Some(status)
            }
            _ => None,
        })
        .collect()
}

/// Forgejo has the child's request (and may act on it) once the proxy sent it: the child
/// closing its socket before Forgejo answers does not take the call out of the audit log.
#[tokio::test]
async fn a_call_is_audited_when_the_child_hangs_up_before_forgejo_answers() {
    let (forgejo, mut arrivals, release) = holding_forgejo().await;
    let audit = MemoryAudit::new();
    let (proxy, cancel) = start_builtin_proxy(forgejo, audit.clone());
    let mut child = tokio::net::TcpStream::connect(proxy).await.unwrap();
    child.write_all(create_issue().as_bytes()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), arrivals.recv())
        .await
        .expect("the request never reached Forgejo")
        .unwrap();

    // The child hangs up; the proxy closing its side too says it gave up on the request.
    child.shutdown().await.unwrap();
    let mut unanswered = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), child.read_to_end(&mut unanswered))
        .await
        .expect("the proxy kept the connection open")
        .unwrap();
    assert!(unanswered.is_empty(), "{unanswered:?}");
    drop(child);
    release.send(true).unwrap();

    // Recorded with Forgejo's answer (bounded poll: the record follows Forgejo's answer).
    assert!(
        eventually(Duration::from_secs(10), || !create_issue_calls(&audit)
            .is_empty())
        .await,
        "the call was never audited: {:?}",
        audit.events()
    );
    assert_eq!(create_issue_calls(&audit), vec![200]);
    let audited = format!("{:?}", audit.events());
    assert!(!audited.contains(REAL_TOKEN) && !audited.contains(PLACEHOLDER));
    cancel.cancel();
}

/// The broker stopping (its runtime dropping every task) while Forgejo is still answering
/// leaves the call in the audit log too, with status 0: sent, Forgejo's answer unknown. `serve`
/// stops the runtime this way before it closes the audit file.
#[test]
fn a_call_is_audited_when_the_broker_stops_before_forgejo_answers() {
    let outside = tokio::runtime::Runtime::new().unwrap();
    let broker = tokio::runtime::Runtime::new().unwrap();
    let (forgejo, mut arrivals, release) = outside.block_on(holding_forgejo());
    let audit = MemoryAudit::new();
    let (proxy, _cancel) = broker.block_on(async { start_builtin_proxy(forgejo, audit.clone()) });
    let child = outside.spawn(async move {
        let mut child = tokio::net::TcpStream::connect(proxy).await.unwrap();
        child.write_all(create_issue().as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = child.read_to_end(&mut answer).await;
    });
    outside.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), arrivals.recv())
            .await
            .expect("the request never reached Forgejo")
            .unwrap();
    });

    // Returns once every task of the broker's runtime is dropped.
    broker.shutdown_timeout(Duration::from_secs(10));
    assert_eq!(create_issue_calls(&audit), vec![0], "{:?}", audit.events());
    release.send(true).unwrap();
    outside.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), child)
            .await
            .expect("the child's connection outlived the broker")
            .unwrap();
    });
}

/// Whether a multipart body may carry `sudo` depends on the user being a site administrator:
/// when Forgejo does not say (a token without `read:user` gets 403), the upload is not sent.
#[tokio::test]
async fn a_multipart_body_is_held_back_when_forgejo_does_not_say_who_the_user_is() {
    let (forgejo, seen, _) = recording_forgejo_as(None).await;
    let (proxy, cancel) = start_builtin_proxy(forgejo, MemoryAudit::new());
    let (status, reply) = raw_request_with(
        proxy,
        "POST",
        "/api/v1/repos/alice/notes/issues/1/assets",
        PLACEHOLDER,
        "Content-Type: multipart/form-data; boundary=XyZ\r\n",
        "--XyZ\r\nContent-Disposition: form-data; name=\"sudo\"\r\n\r\nbob\r\n--XyZ--\r\n",
    )
    .await;
    assert_eq!(status, 502, "{reply}");
    let paths: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, path, _)| path.clone())
        .collect();
    assert_eq!(paths, ["/api/v1/user"], "only the question reached Forgejo");
    cancel.cancel();
}

/// Only the methods Forgejo's API answers are forwarded; a lowercase `delete` would match no
/// method-specific rule of the policy.
#[tokio::test]
async fn a_method_forgejos_api_does_not_have_is_refused() {
    let (forgejo, seen) = recording_forgejo().await;
    let (proxy, cancel) = start_builtin_proxy(forgejo, MemoryAudit::new());
    for method in ["delete", "PROPFIND", "TRACE"] {
        let (status, reply) =
            raw_request(proxy, method, "/api/v1/repos/alice/notes", PLACEHOLDER).await;
        assert_eq!(status, 405, "{method}: {reply}");
    }
    assert!(seen.lock().unwrap().is_empty());
    cancel.cancel();
}
