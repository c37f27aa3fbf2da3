//! Oracles for the broker's parsers of untrusted input, shared by the cargo-fuzz targets in
//! `fuzz/` and by the unit test below that replays every committed corpus file on stable Rust
//! (so CI covers them without nightly). Each oracle asserts a property, not just "no panic":
//! validation is idempotent, serialisation round-trips. (The vault's own oracles live in
//! `vault::fuzzing`.)
#![allow(clippy::panic, clippy::expect_used)] // An oracle's whole job is to panic on a violation.

use crate::mcp::jsonrpc::Message;
use crate::oauth::client::{ClientMetadata, RawClientMetadata};
use crate::oauth::register::parse_registration;

/// DCR bodies (RFC 7591): whatever validation accepts, it accepts again unchanged once
/// re-serialised (the stored form is a fixpoint); a rejection is an RFC error, never a panic.
pub fn registration_oracle(data: &[u8]) {
    if let Ok(metadata) = parse_registration(data) {
        let again = serde_json::to_vec(&metadata).expect("validated metadata serialises");
        let reparsed = parse_registration(&again).expect("validated metadata validates again");
        assert_eq!(reparsed, metadata, "validation is not idempotent");
    }
}

/// Client ID Metadata Documents: a document is accepted only for the URL it names, and never
/// with a secret; what is accepted is valid DCR metadata too.
pub fn cimd_document_oracle(data: &[u8]) {
    const URL: &str = "https://client.example/metadata.json";
    let Ok(raw) = serde_json::from_slice::<RawClientMetadata>(data) else {
        return;
    };
    if let Ok(metadata) = crate::oauth::cimd::validate_document(&raw, URL) {
        assert_eq!(
            raw.client_id.as_ref().and_then(|value| value.as_str()),
            Some(URL),
            "a document was accepted for another URL"
        );
        assert!(
            raw.client_secret.is_none(),
            "a document with a secret was accepted"
        );
        let again = serde_json::to_vec(&metadata).expect("validated metadata serialises");
        let reparsed: ClientMetadata =
            parse_registration(&again).expect("a CIMD client is valid client metadata");
        assert_eq!(reparsed, metadata);
    }
}

/// `/oauth/authorize` query strings: parsing is a pure function of its input.
pub fn authorize_query_oracle(data: &[u8]) {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let first = crate::oauth::authorize::parse_authorize_query(query);
    let second = crate::oauth::authorize::parse_authorize_query(query);
    match (first, second) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        _ => panic!("parse_authorize_query is not deterministic"),
    }
}

/// `/oauth/token` bodies: form parsing then grant validation never panics, and a grant is
/// only ever one of the two this server supports.
pub fn token_request_oracle(data: &[u8]) {
    let Ok(raw) = crate::oauth::token::parse_form::<crate::oauth::token::RawTokenRequest>(data)
    else {
        return;
    };
    if crate::oauth::token::TokenGrant::try_from(&raw).is_ok() {
        let grant_type = raw.grant_type.as_deref().unwrap_or_default();
        assert!(
            grant_type == "authorization_code" || grant_type == "refresh_token",
            "accepted grant_type {grant_type:?}"
        );
    }
}

/// JSON-RPC envelopes from clients and children: what parses re-serialises (with its id
/// kept) to a line that parses to the same message, and that line is a fixpoint.
pub fn jsonrpc_oracle(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The bridge's fast path for responses agrees with the full parse: a borrowed response is
    // exactly a parsed response, and splicing a new id in gives the same message with that id.
    if let Ok(raw) = crate::mcp::jsonrpc::RawMessage::parse(text) {
        let borrowed = crate::mcp::jsonrpc::ResponseRef::of(text, &raw);
        let parsed = Message::parse(text);
        assert_eq!(
            borrowed.is_some(),
            matches!(parsed, Ok(Message::Response { .. })),
            "the fast path and the full parse disagree on what is a response"
        );
        if let (Some(response), Ok(message)) = (borrowed, parsed) {
            let new_id = crate::mcp::jsonrpc::Id::string("client-\u{e9}\"1");
            let spliced = response
                .with_id(&new_id)
                .expect("the id is borrowed from the line");
            let reparsed = Message::parse(&spliced).expect("a spliced response parses");
            assert_eq!(
                reparsed.to_line_with_id(None),
                message.to_line_with_id(Some(&new_id)),
                "splicing changed more than the id"
            );
        }
    }
    let Ok(message) = Message::parse(text) else {
        return;
    };
    let line = message.to_line_with_id(None);
    let reparsed = Message::parse(&line).expect("a re-serialised message parses");
    assert_eq!(reparsed.method(), message.method());
    assert_eq!(
        reparsed.params().map(|params| params.get()),
        message.params().map(|params| params.get())
    );
    assert_eq!(reparsed.to_line_with_id(None), line, "not a fixpoint");
    // What the child reads: one line, with the same meaning.
    let framed = crate::mcp::jsonrpc::single_line(line.clone());
    assert!(
        !framed.contains(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}']),
        "a line break reaches the child: {framed:?}"
    );
    // `Value` cannot hold every number JSON can spell (`1e999` is valid JSON, passed through
    // verbatim); the comparison is for the lines it can represent.
    if let Ok(original) = serde_json::from_str::<serde_json::Value>(&line) {
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&framed).expect("the framed line parses"),
            original,
            "framing changed the message"
        );
    }
}

/// Request targets a sandboxed child sends the egress proxy (path and query, as hyper hands
/// them over): whatever [`crate::egress::target_url`] makes of one stays on Forgejo's origin,
/// with no credentials in it, wherever Forgejo is mounted.
pub fn egress_target_oracle(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(target) = http::uri::PathAndQuery::try_from(text) else {
        return;
    };
    for base in [
        "https://forgejo.example/",
        "https://forgejo.example/git/",
        "http://10.0.0.5:3000/forgejo",
    ] {
        let forgejo = url::Url::parse(base).expect("a valid base");
        let Some(url) = crate::egress::target_url(&forgejo, target.path(), target.query()) else {
            continue;
        };
        assert_eq!(
            url.origin(),
            forgejo.origin(),
            "{text:?} left {base}: {url}"
        );
        assert_eq!(url.host_str(), forgejo.host_str(), "{text:?}: {url}");
        assert!(
            url.username().is_empty() && url.password().is_none(),
            "{text:?} put credentials in {url}"
        );
        assert!(url.fragment().is_none(), "{text:?}: {url}");
    }
}

/// Requests a sandboxed child sends the egress proxy (`METHOD path`, one line): the builtin
/// upstream API policy decides every one without panicking, and spelling a character of the
/// path as a `%XX` escape never changes the verdict (Forgejo's router decodes escapes, so a
/// verdict that changed would be a way around a rule), and a path allowed with an escaped `/`
/// is allowed with the `/` itself (what a proxy that decodes it would pass on). Paths with the
/// proxy's own resolution applied are what reach the policy; the oracle also feeds it raw ones.
pub fn upstream_path_oracle(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (method, path) = text.split_once(' ').unwrap_or(("GET", text));
    let policy = builtin_upstream_policy();
    let verdict = policy.decide(method, path);
    if verdict == policies::Verdict::Allowed {
        let decoded = path.replace("%2F", "/").replace("%2f", "/");
        assert_eq!(
            policy.decide(method, &decoded),
            policies::Verdict::Allowed,
            "{path:?} is allowed but {decoded:?} is not"
        );
    }
    // Escape the first plain alphanumeric character after the leading slash.
    let bytes = path.as_bytes();
    let mut index = 1;
    while let Some(&byte) = bytes.get(index) {
        if byte == b'%' {
            index += 3;
            continue;
        }
        if byte.is_ascii_alphanumeric() {
            let escaped = format!(
                "{}%{byte:02X}{}",
                path.get(..index).unwrap_or_default(),
                path.get(index + 1..).unwrap_or_default()
            );
            assert_eq!(
                policy.decide(method, &escaped),
                verdict,
                "{path:?} and {escaped:?} are decided differently"
            );
            break;
        }
        index += 1;
    }
}

fn builtin_upstream_policy() -> &'static policies::UpstreamPolicy {
    static POLICY: std::sync::OnceLock<policies::UpstreamPolicy> = std::sync::OnceLock::new();
    POLICY.get_or_init(|| policies::UpstreamPolicy::builtin().expect("the builtin policy parses"))
}

/// `/api/v1/version` answers (the upstream's word): a version is kept only if it is short and
/// made of version characters, it survives being written out and read back, and the
/// `+gitea-` suffix alone makes it Forgejo.
pub fn upstream_version_oracle(data: &[u8]) {
    use crate::upstream::version::{MAX_VERSION_LEN, Product, UpstreamVersion, parse_version};
    let Ok(version) = parse_version(data) else {
        return;
    };
    assert!(!version.is_empty() && version.len() <= MAX_VERSION_LEN);
    assert!(version.bytes().all(|b| b.is_ascii_graphic()), "{version:?}");
    let again = serde_json::to_vec(&serde_json::json!({ "version": version })).expect("JSON");
    assert_eq!(parse_version(&again).as_ref(), Ok(&version));
    let product = UpstreamVersion::classify(version.clone(), false).product;
    assert_eq!(product == Product::Forgejo, version.contains("+gitea-"));
}

/// An oracle: panics when its property does not hold for the input.
pub type Oracle = fn(&[u8]);

/// The fuzz targets, by directory name under `fuzz/corpus/`.
pub const TARGETS: &[(&str, Oracle)] = &[
    ("registration", registration_oracle),
    ("cimd_document", cimd_document_oracle),
    ("authorize_query", authorize_query_oracle),
    ("token_request", token_request_oracle),
    ("jsonrpc", jsonrpc_oracle),
    ("upstream_path", upstream_path_oracle),
    ("egress_target", egress_target_oracle),
    ("upstream_version", upstream_version_oracle),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays every committed corpus (and crash artifact) file through its oracle.
    #[test]
    fn every_corpus_replays_through_its_oracle() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        for (target, oracle) in TARGETS {
            let mut replayed = 0;
            for dir in ["corpus", "artifacts"] {
                let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
                    continue;
                };
                for entry in entries {
                    let path = entry.unwrap().path();
                    oracle(&std::fs::read(&path).unwrap());
                    replayed += 1;
                }
            }
            assert!(replayed >= 3, "only {replayed} corpus files for {target}");
        }
    }
}
