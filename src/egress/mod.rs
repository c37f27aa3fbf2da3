//! The per-session egress proxy towards Forgejo (ARCHITECTURE.md §2, "Giving the child its
//! credentials").
//!
//! A sandboxed child's network namespace has nothing but `lo` and one listening socket that the
//! launcher created there and passed back to the broker (SCM_RIGHTS). The child's Forgejo URL is
//! `http://127.0.0.1:<port>` inside its namespace; this module accepts on that socket and
//! re-originates each HTTP request to the real Forgejo:
//!
//! - `inject` mode: the child holds only a random per-session placeholder "token". The proxy
//!   requires it (constant-time compare), strips it, and injects `Authorization: token <the
//!   user's current Forgejo token>` from [`UpstreamCredentials`] — so a refresh needs no child
//!   restart and the real token never enters the sandbox.
//! - `pipe` mode: the child holds the real token; the proxy only forwards.
//!
//! Every request is checked against the upstream API policy (`policies/upstream/`, method and
//! path, after the path is resolved against Forgejo's URL) before the user's token is even
//! fetched; a refused one gets `403` and an `upstream_api_denied` audit record, and never
//! reaches Forgejo. Every call is audited (method, path, status; never headers or bodies); one
//! that was sent is audited whatever becomes of the child's connection, since Forgejo may act on
//! it (`CallRecord`).
//!
//! What else a child's request cannot do with the user's token:
//! - leave Forgejo's origin: the target is Forgejo's URL with the child's path set on it,
//!   never a URL reference resolved against it (`/\evil`, `/https://evil/` stay on Forgejo);
//! - act as another user: a `Sudo` header, a `sudo` query or url-encoded form field is refused,
//!   and a multipart body is refused when the user is a site administrator (whose token `sudo`
//!   would work for);
//! - carry headers an API call does not need: request headers are an allowlist
//!   (`FORWARDED_REQUEST`), so nothing a reverse proxy might trust (`X-WEBAUTH-USER`,
//!   `X-Forwarded-For`) reaches Forgejo; `Set-Cookie` never comes back.

use std::sync::Arc;

use axum::body::Body;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditEvent, SharedAudit};
use crate::auth::{UpstreamCredentials, UserId};
use crate::secret::{ExposeSecret, SecretString, constant_time_eq};

/// Largest request body a child may send upstream.
const MAX_REQUEST_BODY: usize = 16 * 1024 * 1024;

/// Connections one child may hold open to its proxy at once; more wait in the kernel's
/// backlog. Generous: a child's HTTP client may keep a pool of idle ones, which cost a
/// descriptor each and no body.
const MAX_CONNECTIONS_PER_SESSION: usize = 64;

/// Requests one child may have in the proxy at once, from the first byte of the body read to
/// Forgejo's answer, counting those it hung up on. With [`MAX_REQUEST_BODY`], what one child
/// can make the broker hold in memory; also how many calls it can have in flight at Forgejo.
const MAX_CALLS_PER_SESSION: usize = 8;

/// How long a child has to send a request's head, and then its whole body.
const REQUEST_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The methods Forgejo's API answers; anything else is refused before the policy is asked.
const METHODS: [http::Method; 7] = [
    http::Method::GET,
    http::Method::HEAD,
    http::Method::POST,
    http::Method::PUT,
    http::Method::PATCH,
    http::Method::DELETE,
    http::Method::OPTIONS,
];

/// Request headers a child's call may carry to Forgejo: what an API client needs to say what
/// it sends and wants. Everything else stays behind: hop-by-hop headers (RFC 9110 §7.6.1), the
/// child's own `Authorization` (replaced or checked), `Sudo` (refused before this), and
/// whatever a reverse proxy in front of Forgejo might trust (`X-WEBAUTH-USER`, `X-Forwarded-*`).
const FORWARDED_REQUEST: [&str; 12] = [
    "accept",
    "accept-encoding",
    "accept-language",
    "cache-control",
    "content-type",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "range",
    "user-agent",
];

/// Response headers that belong to one hop or would hand the child a Forgejo session.
const NOT_FORWARDED_RESPONSE: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "upgrade",
    "content-length",
    "set-cookie",
    "www-authenticate",
];

/// The `status` of an `upstream_api_call` whose answer never reached the broker: it stopped
/// while Forgejo was still answering. Not an HTTP status, so it cannot be mistaken for one.
const NO_ANSWER: u16 = 0;

/// The refusal of a request that would act as another user: Forgejo lets a site
/// administrator's token act as anyone named in a `Sudo` header or a `sudo` form field.
const SUDO: &str = "acting as another user (sudo)";

/// What every session's proxy shares: where Forgejo is and who holds the users' tokens.
pub struct Egress {
    forgejo: url::Url,
    credentials: Arc<dyn UpstreamCredentials>,
    audit: SharedAudit,
    client: reqwest::Client,
    /// `None`: `sandbox.upstream_policy = "unrestricted"`.
    policy: Option<policies::UpstreamPolicy>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the egress HTTP client: {0}")]
pub struct EgressError(reqwest::Error);

/// How one session's child authenticates to the proxy.
pub enum SessionCredential {
    /// `inject`: the placeholder the child was given.
    Placeholder(SecretString),
    /// `pipe`/`env`: the child sends the real token itself.
    PassThrough,
}

/// A session as its proxy serves it: with the slots its calls take.
struct ServedSession {
    session: EgressSession,
    calls: Arc<tokio::sync::Semaphore>,
}

/// One child's proxy: the session it belongs to and how it authenticates.
pub struct EgressSession {
    pub user_id: UserId,
    pub session_label: String,
    pub credential: SessionCredential,
}

impl Egress {
    pub fn new(
        forgejo: url::Url,
        credentials: Arc<dyn UpstreamCredentials>,
        audit: SharedAudit,
        policy: Option<policies::UpstreamPolicy>,
    ) -> Result<Self, EgressError> {
        let client = reqwest::Client::builder()
            // A redirect from Forgejo goes back to the child as is; the proxy never follows one
            // to another host with the user's token.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .map_err(EgressError)?;
        Ok(Self {
            forgejo,
            credentials,
            audit,
            client,
            policy,
        })
    }

    /// Serves `listener` (the socket inside the child's namespace) until `cancel`.
    pub fn serve(
        self: &Arc<Self>,
        listener: std::net::TcpListener,
        session: EgressSession,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let egress = Arc::clone(self);
        let session = Arc::new(ServedSession {
            session,
            calls: Arc::new(tokio::sync::Semaphore::new(MAX_CALLS_PER_SESSION)),
        });
        let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS_PER_SESSION));
        tokio::spawn(async move {
            loop {
                // A connection slot first: a child holding its share waits for one to close.
                let slot = tokio::select! {
                    () = cancel.cancelled() => return,
                    slot = Arc::clone(&connections).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => return,
                    },
                };
                let stream = tokio::select! {
                    () = cancel.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(error) => {
                            // EMFILE, ECONNABORTED: this connection is lost, the proxy is not.
                            tracing::warn!(task = "egress", %error, "accept failed; retrying");
                            tokio::select! {
                                () = cancel.cancelled() => return,
                                () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                            }
                            continue;
                        }
                    },
                };
                let (egress, session, cancel) =
                    (Arc::clone(&egress), Arc::clone(&session), cancel.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    let service = hyper::service::service_fn(move |request| {
                        let (egress, session) = (Arc::clone(&egress), Arc::clone(&session));
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                egress.forward(&session, request).await,
                            )
                        }
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(REQUEST_READ_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        result = connection => {
                            if let Err(error) = result {
                                tracing::debug!(task = "egress", %error, "connection ended");
                            }
                        }
                    }
                });
            }
        });
        Ok(())
    }

    async fn forward(
        &self,
        session: &ServedSession,
        request: Request<hyper::body::Incoming>,
    ) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        // A call slot before the body is read: held until Forgejo has answered.
        let Ok(call_slot) = Arc::clone(&session.calls).acquire_owned().await else {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "egress: the session is ending",
            );
        };
        let session = &session.session;
        match self.forward_inner(session, call_slot, request).await {
            Ok(Reply::Upstream(response)) => response,
            Ok(Reply::Local(response)) => {
                self.audit.record(AuditEvent::UpstreamApiCall {
                    session: session.session_label.clone(),
                    user_id: session.user_id,
                    method: method.to_string(),
                    path,
                    status: response.status().as_u16(),
                });
                response
            }
            Err(Refused(why)) => {
                tracing::warn!(session = %session.session_label, %method, %path, reason = %why, "egress: refused by the upstream API policy");
                self.audit.record(AuditEvent::UpstreamApiDenied {
                    session: session.session_label.clone(),
                    user_id: session.user_id,
                    method: method.to_string(),
                    path,
                });
                let mut response = Response::new(Body::from(format!(
                    "egress: {method} refused by the broker's upstream API policy: {why}\n"
                )));
                *response.status_mut() = StatusCode::FORBIDDEN;
                response
            }
        }
    }

    /// Whether the user behind `authorization` is a site administrator (`GET /api/v1/user`);
    /// `None` when Forgejo cannot say.
    async fn is_site_admin(
        &self,
        target: &url::Url,
        authorization: Option<&HeaderValue>,
    ) -> Option<bool> {
        #[derive(serde::Deserialize)]
        struct User {
            #[serde(default)]
            is_admin: bool,
        }
        let mut user = target.clone();
        let base = self.forgejo.path().trim_end_matches('/');
        user.set_path(&format!("{base}/api/v1/user"));
        user.set_query(None);
        let mut request = self.client.get(user);
        if let Some(authorization) = authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        let response = request.send().await.ok()?;
        if response.status() == StatusCode::UNAUTHORIZED {
            // No user behind the credential: nobody to act as another.
            return Some(false);
        }
        if !response.status().is_success() {
            // A token without `read:user` (403), a rate limit (429): Forgejo did not say.
            return None;
        }
        response.json::<User>().await.ok().map(|user| user.is_admin)
    }

    /// The policy's verdict on `method` of `target` (already resolved against Forgejo's URL).
    /// Policy or none, `target` must be below the configured URL's path (Forgejo may live under
    /// a prefix), which a resolved `..` must not have left: the policy speaks of Forgejo's own
    /// paths, and the token is for Forgejo alone.
    fn check_policy(&self, method: &http::Method, target: &url::Url) -> Result<(), Refused> {
        let Some(path) = below(&self.forgejo, target) else {
            return Err(Refused("outside Forgejo's URL".to_owned()));
        };
        let Some(policy) = &self.policy else {
            return Ok(());
        };
        match policy.decide(method.as_str(), path) {
            policies::Verdict::Allowed => Ok(()),
            policies::Verdict::Refused(why) => Err(Refused(why)),
        }
    }

    /// The `Authorization` to send Forgejo: the user's token for an `inject` session, the
    /// child's own otherwise; or the answer when there is none to send.
    async fn authorization(
        &self,
        session: &EgressSession,
        headers: &http::HeaderMap,
    ) -> Result<Option<HeaderValue>, Response<Body>> {
        let SessionCredential::Placeholder(_) = &session.credential else {
            return Ok(headers.get(header::AUTHORIZATION).cloned());
        };
        let token = match self.credentials.access_token(session.user_id).await {
            Ok(token) => token,
            Err(crate::auth::UpstreamCredentialsError::Unavailable) => {
                return Err(plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "egress: the user's Forgejo token cannot be had right now; retry later",
                ));
            }
            Err(_) => {
                return Err(plain(
                    StatusCode::UNAUTHORIZED,
                    "egress: the user must authorize again",
                ));
            }
        };
        let mut value = HeaderValue::from_str(&format!("token {}", token.expose_secret()))
            .map_err(|_| plain(StatusCode::BAD_GATEWAY, "egress: unusable token"))?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    async fn forward_inner(
        &self,
        session: &EgressSession,
        call_slot: tokio::sync::OwnedSemaphorePermit,
        request: Request<hyper::body::Incoming>,
    ) -> Result<Reply, Refused> {
        let (parts, body) = request.into_parts();
        if !METHODS.contains(&parts.method) {
            return Ok(Reply::Local(plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "egress: not a method of Forgejo's API",
            )));
        }
        if let SessionCredential::Placeholder(placeholder) = &session.credential {
            let presented = parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| {
                    value
                        .strip_prefix("token ")
                        .or_else(|| value.strip_prefix("Bearer "))
                        .or_else(|| value.strip_prefix("bearer "))
                })
                .unwrap_or_default();
            if !constant_time_eq(presented.as_bytes(), placeholder.expose_secret().as_bytes()) {
                return Ok(Reply::Local(plain(
                    StatusCode::UNAUTHORIZED,
                    "egress: unknown session credential",
                )));
            }
        }
        let (path, query) = parts
            .uri
            .path_and_query()
            .map_or(("/", None), |pq| (pq.path(), pq.query()));
        let Some(target) = target_url(&self.forgejo, path, query) else {
            return Ok(Reply::Local(plain(
                StatusCode::BAD_REQUEST,
                "egress: a path on Forgejo only (origin-form)",
            )));
        };
        // Before the token is fetched (a refused call must not even refresh it).
        self.check_policy(&parts.method, &target)?;
        if parts.headers.contains_key("sudo") || query.is_some_and(|q| names_sudo(q.as_bytes())) {
            return Err(Refused(SUDO.to_owned()));
        }
        let form = form_body(&parts.headers)?;
        let body = match read_body(body).await {
            Ok(body) => body,
            Err(answer) => return Ok(Reply::Local(answer)),
        };
        if form == Some(FormBody::UrlEncoded) && names_sudo(&body) {
            return Err(Refused(SUDO.to_owned()));
        }
        let authorization = match self.authorization(session, &parts.headers).await {
            Ok(authorization) => authorization,
            Err(answer) => return Ok(Reply::Local(answer)),
        };
        // A multipart body's fields are form fields to Forgejo too, and its encodings (RFC 2231
        // parameters, folded headers) are more than a check here should second-guess: from an
        // administrator, whose token `sudo` would work for, it is refused outright.
        if form == Some(FormBody::Multipart) {
            match self.is_site_admin(&target, authorization.as_ref()).await {
                Some(false) => {}
                Some(true) => {
                    return Err(Refused(format!(
                        "{SUDO}: a form body from an administrator's session"
                    )));
                }
                None => {
                    return Ok(Reply::Local(plain(
                        StatusCode::BAD_GATEWAY,
                        "egress: Forgejo unreachable",
                    )));
                }
            }
        }
        let record = CallRecord {
            audit: Arc::clone(&self.audit),
            session: session.session_label.clone(),
            user_id: session.user_id,
            method: parts.method.to_string(),
            path: path.to_owned(),
            written: false,
        };
        let mut outgoing = self.client.request(parts.method, target).body(body);
        for (name, value) in &parts.headers {
            if FORWARDED_REQUEST.contains(&name.as_str()) {
                outgoing = outgoing.header(name, value);
            }
        }
        if let Some(authorization) = authorization {
            outgoing = outgoing.header(header::AUTHORIZATION, authorization);
        }
        // Sent and recorded in a task of its own, which this handler awaits: once the request
        // is on its way Forgejo may act on it, so its record must not depend on the child.
        // Hyper drops this handler when the child closes its socket, and the session's cancel
        // drops the whole connection; the task lives on until Forgejo answers (the client's
        // timeout bounds it), and if it is dropped itself (the broker stopping) the record is
        // written then.
        // The call keeps the request's slot until Forgejo answers, even if the child hangs up
        // meanwhile: a child cannot pile up calls by sending and closing.
        let call = tokio::spawn(async move {
            let _call_slot = call_slot;
            let mut record = record;
            let sent = outgoing.send().await;
            record.write(
                sent.as_ref()
                    .map_or(StatusCode::BAD_GATEWAY.as_u16(), |upstream| {
                        upstream.status().as_u16()
                    }),
            );
            sent
        });
        let upstream = match call.await {
            Ok(Ok(upstream)) => upstream,
            // Recorded as such by the call (or with `NO_ANSWER`, if its task ended first).
            Ok(Err(_)) | Err(_) => {
                return Ok(Reply::Upstream(plain(
                    StatusCode::BAD_GATEWAY,
                    "egress: Forgejo unreachable",
                )));
            }
        };
        let mut response = Response::builder().status(upstream.status());
        for (name, value) in upstream.headers() {
            if !NOT_FORWARDED_RESPONSE.contains(&name.as_str()) {
                response = response.header(name, value);
            }
        }
        Ok(Reply::Upstream(
            response
                .body(Body::from_stream(upstream.bytes_stream()))
                .unwrap_or_else(|_| {
                    plain(StatusCode::BAD_GATEWAY, "egress: bad upstream response")
                }),
        ))
    }
}

/// What the proxy answers a request it does not refuse.
enum Reply {
    /// Forgejo's answer (or a 502 for none): the call's [`CallRecord`] has audited it.
    Upstream(Response<Body>),
    /// The proxy's own answer to a request it never sent (unknown credential, body too large,
    /// Forgejo unreachable for a check), still to be audited with that answer's status.
    Local(Response<Body>),
}

/// The `upstream_api_call` record of a request handed to Forgejo, written exactly once: with
/// Forgejo's status (or 502 when the call failed) by [`CallRecord::write`], or with
/// [`NO_ANSWER`] when it is dropped unwritten (the task sending the call was dropped: the broker
/// stopped while Forgejo was still answering). Forgejo may have acted on the request in every
/// case, so no path leaves it out of the log. Identifiers only, like every audit record.
struct CallRecord {
    audit: SharedAudit,
    session: String,
    user_id: UserId,
    method: String,
    path: String,
    written: bool,
}

impl CallRecord {
    fn write(&mut self, status: u16) {
        if std::mem::replace(&mut self.written, true) {
            return;
        }
        self.audit.record(AuditEvent::UpstreamApiCall {
            session: std::mem::take(&mut self.session),
            user_id: self.user_id,
            method: std::mem::take(&mut self.method),
            path: std::mem::take(&mut self.path),
            status,
        });
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.write(NO_ANSWER);
    }
}

/// The child's request body, whole: at most [`MAX_REQUEST_BODY`], within
/// [`REQUEST_READ_TIMEOUT`]; otherwise the answer saying which limit it broke.
async fn read_body(body: hyper::body::Incoming) -> Result<bytes::Bytes, Response<Body>> {
    let collect =
        http_body_util::BodyExt::collect(http_body_util::Limited::new(body, MAX_REQUEST_BODY));
    match tokio::time::timeout(REQUEST_READ_TIMEOUT, collect).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "egress: body too large",
        )),
        Ok(Err(_)) => Err(plain(
            StatusCode::BAD_REQUEST,
            "egress: the request body could not be read",
        )),
        Err(_) => Err(plain(
            StatusCode::REQUEST_TIMEOUT,
            "egress: the request body took too long",
        )),
    }
}

/// Where a child's `path` and `query` go: below `forgejo` (the configured URL), on its origin;
/// `None` for anything but an origin-form path. The child may only reach Forgejo's own origin:
/// a path, never an absolute or scheme-relative URL (a backslash counts as a slash to URL
/// parsers). The path is set on a copy of Forgejo's URL (dot segments resolve there, and the
/// policy then checks they did not climb out); it is never parsed as a URL reference, which
/// could name another host.
pub fn target_url(forgejo: &url::Url, path: &str, query: Option<&str>) -> Option<url::Url> {
    if !path.starts_with('/') || path.starts_with("//") || path.contains('\\') {
        return None;
    }
    let mut target = forgejo.clone();
    let base = forgejo.path().trim_end_matches('/');
    target.set_path(&format!("{base}{path}"));
    target.set_query(query);
    target.set_fragment(None);
    (target.origin() == forgejo.origin()
        && target.username().is_empty()
        && target.password().is_none())
    .then_some(target)
}

/// `target`'s path below `forgejo`'s (from its leading slash); `None` when it is not below.
fn below<'t>(forgejo: &url::Url, target: &'t url::Url) -> Option<&'t str> {
    let base = forgejo.path().trim_end_matches('/');
    target
        .path()
        .strip_prefix(base)
        .filter(|path| path.starts_with('/'))
}

/// A request the upstream API policy refuses, and the policy's reason.
struct Refused(String);

/// A request body Forgejo reads form fields from (`ctx.FormString`, so `sudo` among them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FormBody {
    UrlEncoded,
    Multipart,
}

/// Whether any `Content-Type` the request carries is one Go's form parsing reads: multipart
/// wins, as the stricter check. A value that is not visible ASCII is refused: Go lowercases
/// with Unicode rules (`İ` becomes `i`, the Kelvin sign `k`), so such a spelling could be a
/// form to Forgejo and none to an ASCII comparison.
fn form_body(headers: &http::HeaderMap) -> Result<Option<FormBody>, Refused> {
    let mut form = None;
    for value in headers.get_all(header::CONTENT_TYPE) {
        let Ok(essence) = value.to_str() else {
            return Err(Refused("a Content-Type that is not plain ASCII".to_owned()));
        };
        let essence = essence.split(';').next().unwrap_or_default().trim();
        if essence.eq_ignore_ascii_case("multipart/form-data") {
            return Ok(Some(FormBody::Multipart));
        }
        if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            form = Some(FormBody::UrlEncoded);
        }
    }
    Ok(form)
}

/// Whether form-encoded `data` (a query string or a body) has a `sudo` field, in any case.
fn names_sudo(data: &[u8]) -> bool {
    url::form_urlencoded::parse(data).any(|(name, _)| name.trim().eq_ignore_ascii_case("sudo"))
}

fn plain(status: StatusCode, message: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(message));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_stays_below_forgejos_url_even_without_a_policy() {
        let forgejo: url::Url = "https://forge.example/forgejo/".parse().unwrap();
        let target = target_url(&forgejo, "/api/v1/version", Some("a=1")).unwrap();
        assert_eq!(
            target.as_str(),
            "https://forge.example/forgejo/api/v1/version?a=1"
        );
        assert_eq!(below(&forgejo, &target), Some("/api/v1/version"));
        for path in ["/../other/x", "/api/../../other", "/%2e%2e/other"] {
            let target = target_url(&forgejo, path, None).unwrap();
            assert_eq!(below(&forgejo, &target), None, "{path} -> {target}");
        }
        // At the root, `..` cannot climb further.
        let root: url::Url = "https://forge.example/".parse().unwrap();
        let target = target_url(&root, "/../api/v1/version", None).unwrap();
        assert_eq!(below(&root, &target), Some("/api/v1/version"));
    }
}
