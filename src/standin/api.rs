//! The slice of Forgejo's REST API (`/api/v1`) the broker and Forgejo-API MCP servers use:
//! the authenticated user, the version, repositories and issues. Every route but `/version`
//! and `/settings/api` needs an OAuth access token with the right scope (forgejo-facts.md §1.6).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::config::StandinUser;
use super::data::{Repository, issue_json, repository_json, user_json};
use super::oauth::{first, form_pairs, presented_token};
use super::state::{ApiFault, Inner, SharedState};
use crate::auth::UserId;

/// `[api] DEFAULT_PAGING_NUM` and `MAX_RESPONSE_ITEMS`.
const DEFAULT_PAGE_SIZE: usize = 30;
const MAX_PAGE_SIZE: usize = 50;

pub(super) fn routes() -> Router<SharedState> {
    Router::new()
        .route("/api/v1/version", get(version))
        .route("/api/forgejo/v1/version", get(forgejo_version))
        .route("/api/v1/settings/api", get(settings_api))
        .route("/api/v1/user", get(current_user))
        .route("/api/v1/user/repos", get(my_repositories))
        .route("/api/v1/users/{username}/repos", get(user_repositories))
        .route("/api/v1/orgs/{org}/repos", get(org_repositories))
        .route("/api/v1/repos/search", get(search_repositories))
        .route("/api/v1/repos/{owner}/{repo}", get(repository))
        .route(
            "/api/v1/repos/{owner}/{repo}/issues",
            get(list_issues).post(create_issue),
        )
        .route("/api/v1/repos/{owner}/{repo}/issues/{index}", get(issue))
        .route(
            "/api/v1/repos/{owner}/{repo}/issues/{index}/comments",
            get(issue_comments),
        )
        .route("/api/v1/repos/{owner}/{repo}/labels", get(labels))
        .fallback(not_found)
}

/// Forgejo's `APIError`: a status and `{message, url}`.
struct ApiError {
    status: StatusCode,
    message: String,
    url: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"message": self.message, "url": self.url});
        (self.status, axum::Json(body)).into_response()
    }
}

fn api_error(status: StatusCode, base_url: &str, message: &str) -> ApiError {
    ApiError {
        status,
        message: message.to_string(),
        url: format!("{base_url}/api/swagger"),
    }
}

fn not_found_error(base_url: &str) -> Response {
    let body = json!({
        "errors": [],
        "message": "The target couldn't be found.",
        "url": format!("{base_url}/api/swagger"),
    });
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

async fn not_found(State(shared): State<SharedState>) -> Response {
    let base_url = shared.lock().base_url.clone();
    not_found_error(&base_url)
}

/// OIDC scope names are not API scopes (§1.6 step 1).
const OIDC_SCOPES: [&str; 4] = ["openid", "profile", "email", "groups"];
const SCOPE_CATEGORIES: [&str; 9] = [
    "activitypub",
    "admin",
    "misc",
    "notification",
    "organization",
    "package",
    "issue",
    "repository",
    "user",
];

fn is_api_scope(word: &str) -> bool {
    word == "all"
        || word == "public-only"
        || word
            .strip_prefix("read:")
            .or_else(|| word.strip_prefix("write:"))
            .is_some_and(|category| SCOPE_CATEGORIES.contains(&category))
}

/// Whether a grant's scope allows `category` at read (or, with `write`, write) level: OIDC
/// names removed, unknown names dropped, nothing left means `all`; write implies read.
pub(super) fn scope_allows(grant_scope: &str, category: &str, write: bool) -> bool {
    let api_scopes: Vec<&str> = grant_scope
        .split(' ')
        .filter(|word| !OIDC_SCOPES.contains(word) && is_api_scope(word))
        .collect();
    if api_scopes.is_empty() || api_scopes.contains(&"all") {
        return true;
    }
    api_scopes.iter().any(|scope| {
        scope.strip_prefix("write:") == Some(category)
            || (!write && scope.strip_prefix("read:") == Some(category))
    })
}

/// Who called, once the token and its scope were checked.
struct Caller {
    user_id: UserId,
}

/// Checks the request's token against `category`/`write`; the error is Forgejo's 401 or 403.
fn authorize_call(
    inner: &mut Inner,
    headers: &HeaderMap,
    now: i64,
    category: &str,
    write: bool,
) -> Result<Caller, ApiError> {
    inner.counters.api_requests += 1;
    let Some((user_id, scope)) =
        presented_token(headers).and_then(|token| inner.authenticate(&token, now))
    else {
        return Err(api_error(
            StatusCode::UNAUTHORIZED,
            &inner.base_url,
            "token is required",
        ));
    };
    if !scope_allows(&scope, category, write) {
        let level = if write { "write" } else { "read" };
        return Err(api_error(
            StatusCode::FORBIDDEN,
            &inner.base_url,
            &format!("token does not have at least one of required scope(s): [{level}:{category}]"),
        ));
    }
    Ok(Caller { user_id })
}

async fn version(State(shared): State<SharedState>) -> Response {
    let mut inner = shared.lock();
    inner.counters.api_requests += 1;
    inner.counters.api_version += 1;
    axum::Json(json!({"version": inner.settings.version})).into_response()
}

/// Forgejo's own version endpoint answers without the Gitea compatibility suffix. A stand-in
/// configured with a version without that suffix plays Gitea, which has no such endpoint.
async fn forgejo_version(State(shared): State<SharedState>) -> Response {
    let inner = shared.lock();
    if !inner.settings.version.contains("+gitea-") {
        return StatusCode::NOT_FOUND.into_response();
    }
    let version = inner
        .settings
        .version
        .split('+')
        .next()
        .unwrap_or_default()
        .to_string();
    axum::Json(json!({"version": version})).into_response()
}

async fn settings_api(State(shared): State<SharedState>) -> Response {
    shared.lock().counters.api_requests += 1;
    axum::Json(json!({
        "max_response_items": MAX_PAGE_SIZE,
        "default_paging_num": DEFAULT_PAGE_SIZE,
        "default_git_trees_per_page": 1000,
        "default_max_blob_size": 10_485_760,
    }))
    .into_response()
}

async fn current_user(State(shared): State<SharedState>, headers: HeaderMap) -> Response {
    let now = shared.now();
    let mut inner = shared.lock();
    inner.counters.api_user += 1;
    match inner.api_user_faults.pop_front() {
        Some(ApiFault::ServerError) => {
            inner.counters.api_requests += 1;
            return (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response();
        }
        Some(ApiFault::Unauthorized) => {
            inner.counters.api_requests += 1;
            return api_error(
                StatusCode::UNAUTHORIZED,
                &inner.base_url,
                "token is required",
            )
            .into_response();
        }
        None => {}
    }
    let caller = match authorize_call(&mut inner, &headers, now, "user", false) {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    match inner.user(caller.user_id) {
        Some(user) => axum::Json(user_json(&inner.base_url, user)).into_response(),
        None => not_found_error(&inner.base_url),
    }
}

/// `page` and `limit` as Forgejo reads them: 1-based pages, default 30 items, at most 50.
struct Page {
    page: usize,
    limit: usize,
}

impl Page {
    fn from_query(pairs: &[(String, String)]) -> Self {
        let number = |name: &str| first(pairs, name).parse::<usize>().ok().filter(|n| *n > 0);
        Self {
            page: number("page").unwrap_or(1),
            limit: number("limit")
                .unwrap_or(DEFAULT_PAGE_SIZE)
                .min(MAX_PAGE_SIZE),
        }
    }

    fn slice<T: Clone>(&self, items: &[T]) -> Vec<T> {
        items
            .iter()
            .skip(self.page.saturating_sub(1).saturating_mul(self.limit))
            .take(self.limit)
            .cloned()
            .collect()
    }

    /// `X-Total-Count` and `Link` (`first`, `prev`, `next`, `last`) as `SetLinkHeader` writes.
    fn headers(&self, response: &mut Response, base_url: &str, path: &str, total: usize) {
        let last = total.div_ceil(self.limit).max(1);
        let link = |page: usize, rel: &str| {
            format!(
                r#"<{base_url}{path}?limit={}&page={page}>; rel="{rel}""#,
                self.limit
            )
        };
        let mut links = Vec::new();
        if self.page < last {
            links.push(link(self.page + 1, "next"));
            links.push(link(last, "last"));
        }
        if self.page > 1 {
            links.push(link(1, "first"));
            links.push(link(self.page - 1, "prev"));
        }
        let headers = response.headers_mut();
        headers.insert("x-total-count", HeaderValue::from(total));
        if !links.is_empty()
            && let Ok(value) = HeaderValue::from_str(&links.join(","))
        {
            headers.insert(header::LINK, value);
        }
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Link, X-Total-Count"),
        );
    }
}

fn visible_to(repository: &Repository, viewer: UserId) -> bool {
    !repository.private || repository.owner_id == viewer
}

fn repositories_json(inner: &Inner, repositories: &[Repository], viewer: UserId) -> Vec<Value> {
    repositories
        .iter()
        .filter_map(|repository| {
            let owner = inner.user(repository.owner_id)?;
            let open = inner.repositories.open_issue_count(repository.id);
            Some(repository_json(
                &inner.base_url,
                repository,
                owner,
                viewer,
                open,
            ))
        })
        .collect()
}

/// A JSON list, one page of it, with the pagination headers.
fn paged_list(inner: &Inner, query: Option<&str>, path: &str, items: Vec<Value>) -> Response {
    let page = Page::from_query(&form_pairs(query.unwrap_or("").as_bytes()));
    let total = items.len();
    let mut response = axum::Json(page.slice(&items)).into_response();
    page.headers(&mut response, &inner.base_url, path, total);
    response
}

async fn my_repositories(
    State(shared): State<SharedState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let now = shared.now();
    let mut inner = shared.lock();
    let caller = match authorize_call(&mut inner, &headers, now, "repository", false) {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    let owned: Vec<Repository> = inner
        .repositories
        .repositories
        .iter()
        .filter(|repository| repository.owner_id == caller.user_id)
        .cloned()
        .collect();
    let items = repositories_json(&inner, &owned, caller.user_id);
    paged_list(&inner, query.as_deref(), "/api/v1/user/repos", items)
}

fn user_by_login<'a>(inner: &'a Inner, login: &str) -> Option<&'a StandinUser> {
    inner
        .users
        .iter()
        .find(|user| user.login.eq_ignore_ascii_case(login))
}

async fn user_repositories(
    State(shared): State<SharedState>,
    headers: HeaderMap,
    Path(username): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let now = shared.now();
    let mut inner = shared.lock();
    let caller = match authorize_call(&mut inner, &headers, now, "user", false) {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    let Some(owner_id) = user_by_login(&inner, &username).map(|user| user.id) else {
        return not_found_error(&inner.base_url);
    };
    let listed: Vec<Repository> = inner
        .repositories
        .repositories
        .iter()
        .filter(|repository| {
            repository.owner_id == owner_id && visible_to(repository, caller.user_id)
        })
        .cloned()
        .collect();
    let items = repositories_json(&inner, &listed, caller.user_id);
    let path = format!("/api/v1/users/{username}/repos");
    paged_list(&inner, query.as_deref(), &path, items)
}

/// The stand-in has no organisations.
async fn org_repositories(State(shared): State<SharedState>, headers: HeaderMap) -> Response {
    let now = shared.now();
    let mut inner = shared.lock();
    if let Err(error) = authorize_call(&mut inner, &headers, now, "organization", false) {
        return error.into_response();
    }
    not_found_error(&inner.base_url)
}

/// `/repos/search`: `q` matches names (case-insensitively), `uid` filters by owner; the body
/// is `{"ok": true, "data": [...]}`.
async fn search_repositories(
    State(shared): State<SharedState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let now = shared.now();
    let mut inner = shared.lock();
    let caller = match authorize_call(&mut inner, &headers, now, "repository", false) {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    let pairs = form_pairs(query.as_deref().unwrap_or("").as_bytes());
    let needle = first(&pairs, "q").to_lowercase();
    let owner = first(&pairs, "uid")
        .parse::<UserId>()
        .ok()
        .filter(|id| *id > 0);
    let found: Vec<Repository> = inner
        .repositories
        .repositories
        .iter()
        .filter(|repository| visible_to(repository, caller.user_id))
        .filter(|repository| repository.name.to_lowercase().contains(&needle))
        .filter(|repository| owner.is_none_or(|id| repository.owner_id == id))
        .cloned()
        .collect();
    let items = repositories_json(&inner, &found, caller.user_id);
    let page = Page::from_query(&pairs);
    let total = items.len();
    let mut response = axum::Json(json!({"ok": true, "data": page.slice(&items)})).into_response();
    page.headers(
        &mut response,
        &inner.base_url,
        "/api/v1/repos/search",
        total,
    );
    response
}

/// The repository `owner/name` as `viewer` may see it; private repositories of others are
/// "not found", as in Forgejo.
fn find_repository(inner: &Inner, owner: &str, name: &str, viewer: UserId) -> Option<Repository> {
    let owner_id = user_by_login(inner, owner)?.id;
    inner
        .repositories
        .repositories
        .iter()
        .find(|repository| {
            repository.owner_id == owner_id
                && repository.name.eq_ignore_ascii_case(name)
                && visible_to(repository, viewer)
        })
        .cloned()
}

async fn repository(
    State(shared): State<SharedState>,
    headers: HeaderMap,
    Path((owner, name)): Path<(String, String)>,
) -> Response {
    let now = shared.now();
    let mut inner = shared.lock();
    let caller = match authorize_call(&mut inner, &headers, now, "repository", false) {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    let Some(found) = find_repository(&inner, &owner, &name, caller.user_id) else {
        return not_found_error(&inner.base_url);
    };
    match repositories_json(&inner, &[found], caller.user_id).pop() {
        Some(body) => axum::Json(body).into_response(),
        None => not_found_error(&inner.base_url),
    }
}

fn issues_json(inner: &Inner, repository: &Repository, indexes: Option<i64>) -> Vec<Value> {
    let Some(owner) = inner.user(repository.owner_id) else {
        return Vec::new();
    };
    inner
        .repositories
        .issues
        .iter()
        .filter(|issue| issue.repository_id == repository.id)
        .filter(|issue| indexes.is_none_or(|index| issue.index == index))
        .filter_map(|issue| {
            let poster = inner.user(issue.poster_id)?;
            Some(issue_json(
                &inner.base_url,
                issue,
                repository,
                owner,
                poster,
            ))
        })
        .collect()
}

async fn list_issues(
    State(shared): State<SharedState>,
    headers: HeaderMap,
    Path((owner, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let now = shared.now();
    let mut inner = shared.lock();
    let caller = match authorize_call(&mut inner, &headers, now, "issue", false) {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    let Some(found) = find_repository(&inner, &owner, &name, caller.user_id) else {
        return not_found_error(&inner.base_url);
    };
    let pairs = form_pairs(query.as_deref().unwrap_or("").as_bytes());
    let state = match first(&pairs, "state") {
        "" => "open",
        other => other,
    };
    let needle = first(&pairs, "q").to_lowercase();
    // The stand-in has no pull requests, so `type=pulls` lists nothing.
    let only_pulls = first(&pairs, "type") == "pulls";
    let mut items: Vec<Value> = issues_json(&inner, &found, None)
        .into_iter()
        .filter(|issue| state == "all" || issue["state"] == state)
        .filter(|issue| {
            issue["title"]
                .as_str()
                .is_some_and(|title| title.to_lowercase().contains(&needle))
        })
        .filter(|_| !only_pulls)
        .collect();
    // Newest first, as Forgejo sorts by default.
    items.reverse();
    let path = format!("/api/v1/repos/{owner}/{name}/issues");
    paged_list(&inner, query.as_deref(), &path, items)
}

/// `structs.CreateIssueOption`; only `title` is required.
#[derive(Debug, serde::Deserialize)]
struct RawCreateIssue {
    #[serde(default)]
    title: String,
    #[serde(default)]
    body: String,
}

async fn create_issue(
    State(shared): State<SharedState>,
    headers: HeaderMap,
    Path((owner, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let now = shared.now();
    let mut inner = shared.lock();
    let caller = match authorize_call(&mut inner, &headers, now, "issue", true) {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    let Some(found) = find_repository(&inner, &owner, &name, caller.user_id) else {
        return not_found_error(&inner.base_url);
    };
    let Ok(option) = serde_json::from_slice::<RawCreateIssue>(&body) else {
        return api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &inner.base_url,
            "invalid JSON body",
        )
        .into_response();
    };
    if option.title.trim().is_empty() {
        return api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &inner.base_url,
            "[Title]: Required",
        )
        .into_response();
    }
    let Some(created) =
        inner
            .repositories
            .create_issue(found.id, caller.user_id, &option.title, &option.body, now)
    else {
        return not_found_error(&inner.base_url);
    };
    match issues_json(&inner, &found, Some(created.index)).pop() {
        Some(body) => (StatusCode::CREATED, axum::Json(body)).into_response(),
        None => not_found_error(&inner.base_url),
    }
}

async fn issue(
    State(shared): State<SharedState>,
    headers: HeaderMap,
    Path((owner, name, index)): Path<(String, String, String)>,
) -> Response {
    let now = shared.now();
    let mut inner = shared.lock();
    let caller = match authorize_call(&mut inner, &headers, now, "issue", false) {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    let found = find_repository(&inner, &owner, &name, caller.user_id);
    let issue = found
        .zip(index.parse::<i64>().ok())
        .and_then(|(repository, index)| issues_json(&inner, &repository, Some(index)).pop());
    match issue {
        Some(body) => axum::Json(body).into_response(),
        None => not_found_error(&inner.base_url),
    }
}

/// The stand-in keeps no comments: every issue has an empty list.
async fn issue_comments(
    State(shared): State<SharedState>,
    headers: HeaderMap,
    Path((owner, name, index)): Path<(String, String, String)>,
) -> Response {
    let now = shared.now();
    let mut inner = shared.lock();
    let caller = match authorize_call(&mut inner, &headers, now, "issue", false) {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    let exists = find_repository(&inner, &owner, &name, caller.user_id)
        .zip(index.parse::<i64>().ok())
        .is_some_and(|(repository, index)| {
            !issues_json(&inner, &repository, Some(index)).is_empty()
        });
    if exists {
        axum::Json(json!([])).into_response()
    } else {
        not_found_error(&inner.base_url)
    }
}

/// The stand-in defines no labels.
async fn labels(
    State(shared): State<SharedState>,
    headers: HeaderMap,
    Path((owner, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let now = shared.now();
    let mut inner = shared.lock();
    let caller = match authorize_call(&mut inner, &headers, now, "issue", false) {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    if find_repository(&inner, &owner, &name, caller.user_id).is_none() {
        return not_found_error(&inner.base_url);
    }
    let path = format!("/api/v1/repos/{owner}/{name}/labels");
    paged_list(&inner, query.as_deref(), &path, Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_api_scope_means_all() {
        assert!(scope_allows("", "user", true));
        assert!(scope_allows("openid profile email", "admin", true));
        assert!(scope_allows("openid bogus:scope", "repository", true));
        assert!(scope_allows("all", "issue", true));
    }

    #[test]
    fn granular_scopes_restrict_and_write_implies_read() {
        let scope = "openid read:user write:issue";
        assert!(scope_allows(scope, "user", false));
        assert!(!scope_allows(scope, "user", true));
        assert!(scope_allows(scope, "issue", false));
        assert!(scope_allows(scope, "issue", true));
        assert!(!scope_allows(scope, "repository", false));
        assert!(!scope_allows("public-only", "user", false));
    }

    #[test]
    fn pages_are_one_based_and_capped() {
        let pairs = vec![
            ("page".to_string(), "2".to_string()),
            ("limit".to_string(), "500".to_string()),
        ];
        let page = Page::from_query(&pairs);
        assert_eq!((page.page, page.limit), (2, MAX_PAGE_SIZE));
        let items: Vec<usize> = (0..120).collect();
        assert_eq!(page.slice(&items).first(), Some(&50));
        let page = Page::from_query(&[("page".to_string(), "0".to_string())]);
        assert_eq!((page.page, page.limit), (1, DEFAULT_PAGE_SIZE));
    }
}
