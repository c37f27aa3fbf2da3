//! The broker's own HTML: the consent page and the error page. Plain HTML forms, no external
//! resources, framing denied (mcp-spec-checklist item 82); the one script is the consent
//! page's guard against double-click clickjacking, allowed by its hash.

use axum::http::{HeaderMap, HeaderValue, header};

/// What the consent page tells the user.
pub struct ConsentView<'a> {
    pub client_name: &'a str,
    pub client_id: &'a str,
    /// Host of a CIMD `client_id` URL (item 48: show who vouches for the document).
    pub client_id_host: Option<&'a str>,
    pub redirect_host: &'a str,
    /// The whole redirect URI (item 82): hosts shared by path between owners
    /// (`script.google.com/macros/s/…`) look alike by host alone.
    pub redirect_uri: &'a str,
    pub redirect_is_loopback: bool,
    pub forgejo_origin: &'a str,
    pub forgejo_scopes: &'a [String],
    pub request_id: &'a str,
    pub csrf: &'a str,
}

/// Escapes text for HTML element content and double-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() || crate::text::is_invisible_or_reordering(c) => {
                out.push('\u{FFFD}');
            }
            c => out.push(c),
        }
    }
    out
}

/// The consent page's one script, against double-click clickjacking: a page that gets the
/// user to double-click can open the consent page as a top-level window under the second click
/// (framing is denied, so this is what is left). The buttons start disabled and are enabled
/// only after the user has moved the pointer or pressed a key on this page and a moment has
/// passed, so a click that was aimed elsewhere lands on a disabled button. Without scripts the
/// buttons stay enabled (the form works as before); the CSP allows this script by its hash
/// and nothing else.
pub const CONSENT_GUARD_SCRIPT: &str = "(()=>{const b=[...document.querySelectorAll('button')];\
b.forEach(x=>{x.disabled=true});let t;const arm=()=>{clearTimeout(t);\
t=setTimeout(()=>b.forEach(x=>{x.disabled=false}),600)};\
for(const e of['pointermove','keydown','touchstart'])addEventListener(e,arm,{once:true})})();";

/// The Content-Security-Policy of every broker page: nothing may load or run but the inline
/// style and [`CONSENT_GUARD_SCRIPT`], named by its SHA-256.
fn content_security_policy() -> &'static HeaderValue {
    static POLICY: std::sync::LazyLock<HeaderValue> = std::sync::LazyLock::new(|| {
        use base64::Engine as _;
        use sha2::Digest as _;
        let hash = base64::engine::general_purpose::STANDARD
            .encode(sha2::Sha256::digest(CONSENT_GUARD_SCRIPT.as_bytes()));
        HeaderValue::from_str(&format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
             frame-ancestors 'none'; base-uri 'none'"
        ))
        .unwrap_or_else(|_| {
            HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
            )
        })
    });
    &POLICY
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;line-height:1.5}\
code{background:#eee;padding:0 .2rem}.warn{background:#fff4d6;padding:.5rem;border-left:4px solid #e0a800}\
button{font-size:1rem;padding:.5rem 1.2rem;margin-right:1rem}";

pub fn consent_page(view: &ConsentView<'_>) -> String {
    let scopes = if view.forgejo_scopes.is_empty() {
        "<li>full access to your Forgejo account (no scopes configured)</li>".to_owned()
    } else {
        view.forgejo_scopes
            .iter()
            .map(|scope| format!("<li><code>{}</code></li>", escape(scope)))
            .collect::<String>()
    };
    let vouched = view
        .client_id_host
        .map(|host| {
            format!(
                "<p>This client is described by a document published at <strong>{}</strong>.</p>",
                escape(host)
            )
        })
        .unwrap_or_default();
    let loopback = if view.redirect_is_loopback {
        "<p class=\"warn\">This client sends you back to a program on <strong>this computer</strong> \
         (a loopback address). Only continue if you started it yourself.</p>"
    } else {
        ""
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width\"><title>Authorize {name}</title>\
<style>{STYLE}</style></head><body>\
<h1>Allow <em>{name}</em> to use Forgejo as you?</h1>\
<p>The application <strong>{name}</strong> (client id <code>{client_id}</code>) asks to act on \
<strong>{forgejo}</strong> on your behalf through this broker.</p>{vouched}\
<p>After you allow it, you will sign in at Forgejo, and then be sent back to \
<strong>{redirect_host}</strong>, at <code>{redirect_uri}</code>.</p>{loopback}\
<p>It will be able to:</p><ul>{scopes}</ul>\
<form method=\"post\" action=\"/oauth/consent\">\
<input type=\"hidden\" name=\"request\" value=\"{request}\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<button type=\"submit\" name=\"decision\" value=\"approve\">Allow</button>\
<button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button>\
</form><p><small>If you did not expect this, choose Deny.</small></p>\
<script>{CONSENT_GUARD_SCRIPT}</script></body></html>",
        name = escape(view.client_name),
        client_id = escape(view.client_id),
        forgejo = escape(view.forgejo_origin),
        redirect_host = escape(view.redirect_host),
        redirect_uri = escape(view.redirect_uri),
        request = escape(view.request_id),
        csrf = escape(view.csrf),
    )
}

pub fn error_page(code: &str, description: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Authorization failed</title>\
<style>{STYLE}</style></head><body><h1>Authorization failed</h1>\
<p><code>{}</code>: {}</p><p>Return to the application and try connecting again.</p></body></html>",
        escape(code),
        escape(description)
    )
}

/// Headers every broker page carries: no framing (clickjacking on the consent button), no
/// script but the consent page's guard, no caching, no referrer leaking the query.
pub fn harden_page_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        content_security_policy().clone(),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(
            escape("<script>\"x\"&'y'</script>"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn consent_page_names_client_and_redirect_host_and_escapes_them() {
        let scopes = vec!["read:repository".to_owned()];
        let page = consent_page(&ConsentView {
            client_name: "<b>Evil</b>",
            client_id: "abc",
            client_id_host: None,
            redirect_host: "claude.ai",
            redirect_uri: "https://claude.ai/api/mcp/auth_callback",
            redirect_is_loopback: false,
            forgejo_origin: "https://git.example.org",
            forgejo_scopes: &scopes,
            request_id: "r1",
            csrf: "c1",
        });
        assert!(page.contains("&lt;b&gt;Evil&lt;/b&gt;"));
        assert!(page.contains("claude.ai"));
        assert!(page.contains("<code>https://claude.ai/api/mcp/auth_callback</code>"));
        assert!(page.contains("name=\"csrf\" value=\"c1\""));
        // One script, the guard, and the CSP allows exactly it.
        assert_eq!(page.matches("<script").count(), 1);
        assert!(page.contains(&format!("<script>{CONSENT_GUARD_SCRIPT}</script>")));
    }

    #[test]
    fn the_csp_allows_the_consent_guard_by_its_hash_and_nothing_else() {
        use base64::Engine as _;
        use sha2::Digest as _;
        let mut headers = HeaderMap::new();
        harden_page_headers(&mut headers);
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        let hash = base64::engine::general_purpose::STANDARD
            .encode(sha2::Sha256::digest(CONSENT_GUARD_SCRIPT.as_bytes()));
        assert!(
            csp.contains(&format!("script-src 'sha256-{hash}';")),
            "{csp}"
        );
        assert!(csp.starts_with("default-src 'none';"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        let script_src = csp
            .split(';')
            .map(str::trim)
            .find(|directive| directive.starts_with("script-src"))
            .unwrap();
        assert_eq!(script_src, format!("script-src 'sha256-{hash}'"), "{csp}");
        // The guard starts with the buttons disabled and enables them only after input.
        assert!(CONSENT_GUARD_SCRIPT.contains("x.disabled=true"));
        assert!(CONSENT_GUARD_SCRIPT.contains("pointermove"));
    }
}
