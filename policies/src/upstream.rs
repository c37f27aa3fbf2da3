//! The upstream API policy (`upstream/forgejo-api.toml`): which method and path a child may ask
//! of Forgejo through the egress proxy. See the file's header for the rules' meaning.

use serde::Deserialize;

use crate::PolicyError;

const BUILTIN: &str = include_str!("../upstream/forgejo-api.toml");

/// A parsed policy: rules in order, the first match decides, no match refuses.
#[derive(Debug, Clone)]
pub struct UpstreamPolicy {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    allow: bool,
    pattern: Vec<Segment>,
    /// Upper-case method names; empty means every method.
    methods: Vec<String>,
    why: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: any one segment.
    One,
    /// A final `**`: the rest of the path, nothing included.
    Rest,
}

/// What the policy says of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused, with the reason the matching rule gives (or why no rule could match).
    Refused(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    rule: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    allow: Option<String>,
    deny: Option<String>,
    methods: Vec<String>,
    why: String,
}

impl UpstreamPolicy {
    /// The reviewed policy shipped with the broker.
    pub fn builtin() -> Result<Self, PolicyError> {
        Self::from_toml(BUILTIN)
    }

    /// A policy in the builtin's format (an operator's own file).
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let file: File =
            toml::from_str(text).map_err(|error| PolicyError::Upstream(error.to_string()))?;
        let rules = file
            .rule
            .into_iter()
            .enumerate()
            .map(|(index, raw)| {
                Rule::parse(raw).map_err(|message| {
                    PolicyError::Upstream(format!("rule {}: {message}", index + 1))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { rules })
    }

    /// The verdict on `method` of `path`: the path as Forgejo will route it (absolute, dot
    /// segments already resolved), still percent-encoded.
    ///
    /// An encoded `/` (`%2F`) is read both ways, and the request must pass both: Forgejo's
    /// router matches the raw path, where `feature%2Fx` is one segment (a branch, tag or
    /// package name with a slash, as the Gitea and Forgejo SDKs send them), while a proxy in
    /// front of Forgejo may decode it into a separator (`repos/o%2Fr/hooks` would then name a
    /// repository's webhooks).
    pub fn decide(&self, method: &str, path: &str) -> Verdict {
        let Some(segments) = decoded_segments(path) else {
            return Verdict::Refused(NOT_CANONICAL.to_owned());
        };
        let verdict = self.first_match(method, &segments);
        if verdict != Verdict::Allowed || !segments.iter().any(|s| s.contains('/')) {
            return verdict;
        }
        match split_segments(&segments) {
            Some(split) => self.first_match(method, &split),
            None => Verdict::Refused(NOT_CANONICAL.to_owned()),
        }
    }

    fn first_match(&self, method: &str, segments: &[String]) -> Verdict {
        for rule in &self.rules {
            let method_matches =
                rule.methods.is_empty() || rule.methods.iter().any(|allowed| allowed == method);
            if method_matches && matches(&rule.pattern, segments) {
                return if rule.allow {
                    Verdict::Allowed
                } else {
                    Verdict::Refused(rule.why.clone())
                };
            }
        }
        Verdict::Refused("no rule allows it".to_owned())
    }
}

const NOT_CANONICAL: &str = "the path is not in canonical form";

impl Rule {
    fn parse(raw: RawRule) -> Result<Self, String> {
        let (allow, pattern) = match (raw.allow, raw.deny) {
            (Some(pattern), None) => (true, pattern),
            (None, Some(pattern)) => (false, pattern),
            _ => return Err("needs exactly one of `allow` and `deny`".to_owned()),
        };
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err(format!("{pattern:?} does not start with /"));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let last = parts.len().saturating_sub(1);
        let pattern = parts
            .iter()
            .enumerate()
            .map(|(index, part)| match *part {
                "" => Err(format!("{pattern:?} has an empty segment")),
                "*" => Ok(Segment::One),
                "**" if index == last => Ok(Segment::Rest),
                "**" => Err(format!("{pattern:?}: ** only at the end")),
                literal if literal.contains('*') => {
                    Err(format!("{pattern:?}: * only as a whole segment"))
                }
                literal => Ok(Segment::Literal(literal.to_owned())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if raw.methods.is_empty() {
            return Err("`methods` is empty (use [\"*\"] for every method)".to_owned());
        }
        let methods = if raw.methods.iter().any(|method| method == "*") {
            Vec::new()
        } else {
            raw.methods.iter().map(|m| m.to_ascii_uppercase()).collect()
        };
        Ok(Self {
            allow,
            pattern,
            methods,
            why: raw.why,
        })
    }
}

/// The path's segments, percent-decoded; `None` unless the path is absolute and canonical: no
/// `.`/`..` segments, no empty segment but a trailing one, and no segment that is not UTF-8 or
/// that holds a backslash (each would let a request name one route to the policy and reach
/// another in Forgejo). A segment may hold a decoded `/` (see [`UpstreamPolicy::decide`]).
fn decoded_segments(path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    let last = parts.len().saturating_sub(1);
    let mut segments = Vec::with_capacity(parts.len());
    for (index, part) in parts.iter().enumerate() {
        if part.is_empty() {
            if index == last {
                break;
            }
            return None;
        }
        let decoded = percent_decode(part)?;
        if decoded == "." || decoded == ".." || decoded.contains('\\') {
            return None;
        }
        segments.push(decoded);
    }
    Some(segments)
}

/// The segments as a proxy that decodes `%2F` would pass them on; `None` if that path is not
/// canonical (an empty, `.` or `..` segment).
fn split_segments(segments: &[String]) -> Option<Vec<String>> {
    let mut split = Vec::with_capacity(segments.len() + 2);
    for part in segments.iter().flat_map(|segment| segment.split('/')) {
        if part.is_empty() || part == "." || part == ".." {
            return None;
        }
        split.push(part.to_owned());
    }
    Some(split)
}

/// `%XX` decoding of one segment; `None` for a malformed escape or a result that is not UTF-8.
/// (The `percent-encoding` crate keeps a malformed escape as literal text; a policy should not
/// guess what Forgejo makes of one, so it is refused here instead.)
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        if byte == b'%' {
            let hex = segment.get(index + 1..index + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            out.push(byte);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn matches(pattern: &[Segment], path: &[String]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((Segment::Rest, _)) => true,
        Some((head, pattern_rest)) => match path.split_first() {
            None => false,
            Some((segment, path_rest)) => {
                let here = match head {
                    Segment::Literal(literal) => literal == segment,
                    Segment::One | Segment::Rest => true,
                };
                here && matches(pattern_rest, path_rest)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(method: &str, path: &str) -> Verdict {
        UpstreamPolicy::builtin().unwrap().decide(method, path)
    }

    #[test]
    fn the_builtin_policy_keeps_the_work_and_refuses_the_keys_to_the_kingdom() {
        for (method, path) in [
            ("GET", "/api/v1/version"),
            ("GET", "/api/v1/user"),
            ("GET", "/api/v1/user/repos"),
            ("GET", "/api/v1/repos/alice/notes"),
            ("GET", "/api/v1/repos/alice/notes/contents/docs/a%20b.md"),
            ("POST", "/api/v1/repos/alice/notes/issues"),
            ("PATCH", "/api/v1/repos/alice/notes/issues/1"),
            ("POST", "/api/v1/repos/alice/notes/pulls"),
            ("DELETE", "/api/v1/repos/alice/notes/contents/old.md"),
            ("GET", "/api/v1/repos/alice/notes/collaborators"),
            ("GET", "/api/v1/repos/alice/notes/teams"),
            ("GET", "/api/v1/repos/alice/notes/push_mirrors"),
            ("POST", "/api/v1/repos/alice/notes/mirror-sync"),
            ("GET", "/api/v1/notifications"),
            ("GET", "/api/v1/repos/search/"),
        ] {
            assert_eq!(verdict(method, path), Verdict::Allowed, "{method} {path}");
        }
        for (method, path, why) in [
            ("GET", "/api/v1/admin/users", "site administration"),
            (
                "POST",
                "/api/v1/admin/users/bob/orgs",
                "site administration",
            ),
            ("GET", "/api/v1/admin", "site administration"),
            (
                "POST",
                "/api/v1/users/alice/tokens",
                "access tokens outlive the session",
            ),
            ("POST", "/api/v1/user/keys", "SSH keys are credentials"),
            (
                "POST",
                "/api/v1/user/applications/oauth2",
                "OAuth2 applications are credentials",
            ),
            (
                "POST",
                "/api/v1/repos/alice/notes/hooks",
                "webhooks send data elsewhere",
            ),
            (
                "GET",
                "/api/v1/repos/alice/notes/keys",
                "deploy keys are credentials",
            ),
            (
                "PUT",
                "/api/v1/repos/alice/notes/actions/secrets/X",
                "CI secrets",
            ),
            (
                "POST",
                "/api/v1/repos/alice/notes/transfer",
                "a transfer gives the repository away",
            ),
            (
                "PUT",
                "/api/v1/repos/alice/notes/collaborators/mallory",
                "granting access to others",
            ),
            (
                "DELETE",
                "/api/v1/repos/alice/notes",
                "deleting a repository",
            ),
            ("PATCH", "/api/v1/user/settings", "account settings"),
            (
                "PUT",
                "/api/v1/repos/alice/notes/teams/owners",
                "granting access to others",
            ),
            (
                "GET",
                "/api/v1/repos/alice/notes/actions/runners/registration-token",
                "CI runners (a registration token runs jobs, with their secrets, on a machine of the caller's choosing)",
            ),
            (
                "POST",
                "/api/v1/repos/alice/notes/push_mirrors",
                "push mirrors send data elsewhere",
            ),
            (
                "POST",
                "/api/v1/repos/alice/notes/push_mirrors-sync",
                "push mirrors send data elsewhere",
            ),
            (
                "POST",
                "/api/v1/repos/migrate",
                "a migration makes Forgejo fetch from a URL of the caller's choosing",
            ),
            ("GET", "/login/oauth/authorize", "no rule allows it"),
            (
                "GET",
                "/alice/notes/raw/branch/main/secret",
                "no rule allows it",
            ),
            ("GET", "/", "no rule allows it"),
        ] {
            assert_eq!(
                verdict(method, path),
                Verdict::Refused(why.to_owned()),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn encodings_that_name_another_route_are_refused() {
        // Percent-decoding happens before matching: Forgejo's router decodes too.
        assert_eq!(
            verdict("GET", "/api/v1/%61dmin/users"),
            Verdict::Refused("site administration".to_owned())
        );
        for path in [
            "/api/v1/repos/a/b/../../admin/users",
            "/api/v1/./admin/users",
            "/api/v1//admin/users",
            "/api/v1/%2e%2e/admin",
            "/api/v1/repos/%zz",
            "/api/v1/repos/%ff",
            "/api/v1/repos/a\\b",
            "api/v1/user",
        ] {
            assert_eq!(
                verdict("GET", path),
                Verdict::Refused("the path is not in canonical form".to_owned()),
                "{path}"
            );
        }
        // Case matters as it does to Forgejo's router: an unknown spelling is no route.
        assert_eq!(
            verdict("GET", "/API/v1/admin/users"),
            Verdict::Refused("no rule allows it".to_owned())
        );
        // A trailing slash is the same route.
        assert_eq!(
            verdict("GET", "/api/v1/admin/"),
            Verdict::Refused("site administration".to_owned())
        );
    }

    #[test]
    fn an_encoded_slash_must_pass_as_one_segment_and_as_two() {
        // Names with a slash, escaped as the SDKs send them: one segment to Forgejo's router.
        for path in [
            "/api/v1/repos/alice/notes/branches/feature%2Fparser",
            "/api/v1/repos/alice/notes/branch_protections/release%2F%2A",
            "/api/v1/packages/alice/npm/%40acme%2Fwidget/1.2.0",
        ] {
            assert_eq!(verdict("DELETE", path), Verdict::Allowed, "{path}");
        }
        // Refused as Forgejo's router reads it (`alice/notes` is one owner segment there)...
        assert_eq!(
            verdict("GET", "/api/v1/repos/alice%2Fnotes/x/hooks"),
            Verdict::Refused("webhooks send data elsewhere".to_owned())
        );
        // ...or as a proxy that decodes `%2F` in front of Forgejo would pass it on.
        for (path, why) in [
            (
                "/api/v1/repos/alice%2Fnotes/hooks",
                "webhooks send data elsewhere",
            ),
            (
                "/api/v1/users/alice%2Ftokens",
                "access tokens outlive the session",
            ),
            ("/api/v1/admin%2Fusers", "site administration"),
            (
                "/api/v1/repos/a/b/branches/x%2F..%2F..%2F..%2Fadmin",
                "the path is not in canonical form",
            ),
            (
                "/api/v1/repos/a/b/branches/x%2F%2Fy",
                "the path is not in canonical form",
            ),
            (
                "/api/v1/repos/a/b/branches/x%2F",
                "the path is not in canonical form",
            ),
            (
                "/api/v1/repos/a/b/branches/%2F",
                "the path is not in canonical form",
            ),
        ] {
            assert_eq!(
                verdict("GET", path),
                Verdict::Refused(why.to_owned()),
                "{path}"
            );
        }
    }

    /// Every request the known MCP servers make (`upstream/calls/*.txt`) gets the verdict
    /// written beside it, and a refusal comes from a rule that says why, never from a path the
    /// policy cannot read or no rule covers.
    #[test]
    fn known_servers_get_the_verdicts_their_call_lists_record() {
        let policy = UpstreamPolicy::builtin().unwrap();
        for (file, text) in [
            (
                "forgejo-mcp-3.2.0.txt",
                include_str!("../upstream/calls/forgejo-mcp-3.2.0.txt"),
            ),
            (
                "gitea-mcp-0.5.1.txt",
                include_str!("../upstream/calls/gitea-mcp-0.5.1.txt"),
            ),
        ] {
            let mut lines = 0;
            for line in text
                .lines()
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
            {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let [expected, method, path, ..] = fields[..] else {
                    panic!("{file}: malformed line {line:?}");
                };
                let verdict = policy.decide(method, path);
                match expected {
                    "allow" => assert_eq!(verdict, Verdict::Allowed, "{file}: {line}"),
                    "refuse" => assert!(
                        matches!(&verdict, Verdict::Refused(why)
                            if why != "no rule allows it" && why != NOT_CANONICAL),
                        "{file}: {line}: {verdict:?}"
                    ),
                    other => panic!("{file}: unknown verdict {other:?}"),
                }
                lines += 1;
            }
            assert!(lines > 20, "{file}: only {lines} calls");
        }
    }

    #[test]
    fn bad_policies_are_refused_with_the_rule_named() {
        for (text, expected) in [
            (
                "[[rule]]\nallow = \"/a\"\ndeny = \"/b\"\nmethods = [\"*\"]\nwhy = \"x\"",
                "rule 1",
            ),
            (
                "[[rule]]\nallow = \"a\"\nmethods = [\"*\"]\nwhy = \"x\"",
                "does not start with /",
            ),
            (
                "[[rule]]\nallow = \"/a/**/b\"\nmethods = [\"*\"]\nwhy = \"x\"",
                "only at the end",
            ),
            (
                "[[rule]]\nallow = \"/a*\"\nmethods = [\"*\"]\nwhy = \"x\"",
                "whole segment",
            ),
            (
                "[[rule]]\nallow = \"/a\"\nmethods = []\nwhy = \"x\"",
                "is empty",
            ),
            (
                "[[rule]]\nallow = \"/a\"\nmethods = [\"*\"]\nwhy = \"x\"\nextra = 1",
                "unknown field",
            ),
        ] {
            let error = UpstreamPolicy::from_toml(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }
}
