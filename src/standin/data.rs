//! Repositories and issues, and the JSON Forgejo's API gives for them (`modules/structs`:
//! `User`, `Repository`, `Issue`). Only the fields clients read are filled with meaning; the
//! rest carry Forgejo's defaults so strict decoders (the Go SDK, gitea-mcp) accept them.

use serde_json::{Value, json};

use super::config::StandinUser;
use crate::auth::UserId;
use crate::clock::UnixSeconds;

#[derive(Debug, Clone)]
pub struct Repository {
    pub id: i64,
    pub owner_id: UserId,
    pub name: String,
    pub description: String,
    pub private: bool,
    pub created: UnixSeconds,
    pub updated: UnixSeconds,
    pub next_issue_index: i64,
}

#[derive(Debug, Clone)]
pub struct Issue {
    pub id: i64,
    pub repository_id: i64,
    pub index: i64,
    pub poster_id: UserId,
    pub title: String,
    pub body: String,
    pub closed: bool,
    pub created: UnixSeconds,
    pub updated: UnixSeconds,
}

/// Every repository and issue of the instance.
#[derive(Debug, Clone, Default)]
pub struct Repositories {
    pub repositories: Vec<Repository>,
    pub issues: Vec<Issue>,
    next_repository_id: i64,
    next_issue_id: i64,
}

impl Repositories {
    /// Two repositories per user, one public and one private, each with one open issue.
    pub fn seeded(users: &[StandinUser], now: UnixSeconds) -> Self {
        let mut repositories = Self::default();
        for user in users {
            for (name, private) in [("notes", false), ("private-notes", true)] {
                let id = repositories.create_repository(
                    user.id,
                    name,
                    &format!("{}'s {} (stand-in Forgejo demo data)", user.login, name),
                    private,
                    now,
                );
                repositories.create_issue(
                    id,
                    user.id,
                    "Welcome",
                    "This issue was created by the stand-in Forgejo.",
                    now,
                );
            }
        }
        repositories
    }

    pub fn create_repository(
        &mut self,
        owner_id: UserId,
        name: &str,
        description: &str,
        private: bool,
        now: UnixSeconds,
    ) -> i64 {
        self.next_repository_id += 1;
        let id = self.next_repository_id;
        self.repositories.push(Repository {
            id,
            owner_id,
            name: name.to_string(),
            description: description.to_string(),
            private,
            created: now,
            updated: now,
            next_issue_index: 1,
        });
        id
    }

    /// Creates an issue with the repository's next index; `None` if there is no such
    /// repository.
    pub fn create_issue(
        &mut self,
        repository_id: i64,
        poster_id: UserId,
        title: &str,
        body: &str,
        now: UnixSeconds,
    ) -> Option<Issue> {
        let repository = self
            .repositories
            .iter_mut()
            .find(|repository| repository.id == repository_id)?;
        let index = repository.next_issue_index;
        repository.next_issue_index += 1;
        repository.updated = now;
        self.next_issue_id += 1;
        let issue = Issue {
            id: self.next_issue_id,
            repository_id,
            index,
            poster_id,
            title: title.to_string(),
            body: body.to_string(),
            closed: false,
            created: now,
            updated: now,
        };
        self.issues.push(issue.clone());
        Some(issue)
    }

    pub fn open_issue_count(&self, repository_id: i64) -> usize {
        self.issues
            .iter()
            .filter(|issue| issue.repository_id == repository_id && !issue.closed)
            .count()
    }
}

/// RFC 3339 in UTC, as Forgejo formats `time.Time` in JSON.
pub fn timestamp(seconds: UnixSeconds) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|moment| {
            moment
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

/// `structs.User`.
pub fn user_json(base_url: &str, user: &StandinUser) -> Value {
    json!({
        "id": user.id,
        "login": user.login,
        "login_name": "",
        "source_id": 0,
        "full_name": user.full_name,
        "email": user.email,
        "avatar_url": format!("{base_url}/avatars/{}", user.id),
        "html_url": format!("{base_url}/{}", user.login),
        "language": "en-US",
        "is_admin": user.is_admin,
        "last_login": timestamp(0),
        "created": timestamp(0),
        "restricted": false,
        "active": true,
        "prohibit_login": false,
        "location": "",
        "pronouns": "",
        "website": "",
        "description": "",
        "visibility": "public",
        "followers_count": 0,
        "following_count": 0,
        "starred_repos_count": 0,
        "username": user.login,
    })
}

/// `structs.Repository`, with the permissions of `viewer`.
pub fn repository_json(
    base_url: &str,
    repository: &Repository,
    owner: &StandinUser,
    viewer: UserId,
    open_issues: usize,
) -> Value {
    let full_name = format!("{}/{}", owner.login, repository.name);
    let is_owner = viewer == repository.owner_id;
    let mut body = json!({
        "id": repository.id,
        "owner": user_json(base_url, owner),
        "name": repository.name,
        "full_name": full_name,
        "description": repository.description,
        "empty": false,
        "private": repository.private,
        "fork": false,
        "template": false,
        "parent": null,
        "mirror": false,
        "size": 24,
        "language": "",
        "languages_url": format!("{base_url}/api/v1/repos/{full_name}/languages"),
        "html_url": format!("{base_url}/{full_name}"),
        "url": format!("{base_url}/api/v1/repos/{full_name}"),
        "link": "",
        "ssh_url": format!("ssh://git@forgejo.invalid/{full_name}.git"),
        "clone_url": format!("{base_url}/{full_name}.git"),
        "original_url": "",
        "website": "",
        "stars_count": 0,
        "forks_count": 0,
        "watchers_count": 1,
        "open_issues_count": open_issues,
        "open_pr_counter": 0,
        "release_counter": 0,
        "default_branch": "main",
        "archived": false,
        "created_at": timestamp(repository.created),
        "updated_at": timestamp(repository.updated),
        "archived_at": timestamp(0),
        "permissions": {"admin": is_owner, "push": is_owner, "pull": true},
    });
    // Two literals: one would exceed `json!`'s macro recursion limit.
    let settings = json!({
        "has_issues": true,
        "internal_tracker": {
            "enable_time_tracker": true,
            "allow_only_contributors_to_track_time": true,
            "enable_issue_dependencies": true
        },
        "has_wiki": true,
        "wiki_branch": "main",
        "globally_editable_wiki": false,
        "has_pull_requests": true,
        "has_projects": true,
        "has_releases": true,
        "has_packages": true,
        "has_actions": true,
        "ignore_whitespace_conflicts": false,
        "allow_merge_commits": true,
        "allow_rebase": true,
        "allow_rebase_explicit": true,
        "allow_squash_merge": true,
        "allow_fast_forward_only_merge": true,
        "allow_rebase_update": true,
        "default_delete_branch_after_merge": false,
        "default_merge_style": "merge",
        "default_allow_maintainer_edit": false,
        "default_update_style": "merge",
        "avatar_url": "",
        "internal": false,
        "mirror_interval": "",
        "object_format_name": "sha1",
        "mirror_updated": timestamp(0),
        "repo_transfer": null,
        "topics": [],
    });
    if let (Some(object), Value::Object(more)) = (body.as_object_mut(), settings) {
        object.extend(more);
    }
    body
}

/// `structs.Issue`.
pub fn issue_json(
    base_url: &str,
    issue: &Issue,
    repository: &Repository,
    owner: &StandinUser,
    poster: &StandinUser,
) -> Value {
    let full_name = format!("{}/{}", owner.login, repository.name);
    json!({
        "id": issue.id,
        "url": format!("{base_url}/api/v1/repos/{full_name}/issues/{}", issue.index),
        "html_url": format!("{base_url}/{full_name}/issues/{}", issue.index),
        "number": issue.index,
        "user": user_json(base_url, poster),
        "original_author": "",
        "original_author_id": 0,
        "title": issue.title,
        "body": issue.body,
        "ref": "",
        "assets": [],
        "labels": [],
        "milestone": null,
        "assignee": null,
        "assignees": null,
        "state": if issue.closed { "closed" } else { "open" },
        "is_locked": false,
        "comments": 0,
        "created_at": timestamp(issue.created),
        "updated_at": timestamp(issue.updated),
        "closed_at": null,
        "due_date": null,
        "pull_request": null,
        "repository": {
            "id": repository.id,
            "name": repository.name,
            "owner": owner.login,
            "full_name": full_name,
        },
        "pin_order": 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeding_gives_each_user_a_public_and_a_private_repository_with_an_issue() {
        let users = [StandinUser::new(1, "a", "A"), StandinUser::new(2, "b", "B")];
        let data = Repositories::seeded(&users, 0);
        assert_eq!(data.repositories.len(), 4);
        assert_eq!(data.issues.len(), 4);
        assert!(
            data.repositories
                .iter()
                .any(|repository| repository.owner_id == 2 && repository.private)
        );
        assert!(data.issues.iter().all(|issue| issue.index == 1));
    }

    #[test]
    fn issue_indexes_count_per_repository() {
        let mut data = Repositories::default();
        let repository = data.create_repository(1, "r", "", false, 0);
        let first = data.create_issue(repository, 1, "a", "", 0).unwrap();
        let second = data.create_issue(repository, 1, "b", "", 0).unwrap();
        assert_eq!((first.index, second.index), (1, 2));
        assert!(data.create_issue(99, 1, "c", "", 0).is_none());
        assert_eq!(data.open_issue_count(repository), 2);
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp(86_400), "1970-01-02T00:00:00Z");
    }
}
