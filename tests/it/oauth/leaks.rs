//! No Forgejo token ever reaches an MCP client, a log line, the audit log or the database in
//! clear (mcp-spec-checklist items 19–20, 23). The stand-in lists every token it issued; every
//! byte the client side saw, every captured log line, every audit event and the database files
//! are searched for each of them (and for the marker all stand-in tokens start with).

use forgejo_mcp_broker::auth::UpstreamCredentials;
use forgejo_mcp_broker::standin::{ApiFault, TokenFault, token_marker};

use crate::fixtures::{ALICE, TestBroker, Tokens, logs};

/// Everything the client side saw: status, headers and body of each response.
#[derive(Default)]
struct Transcript(Vec<String>);

impl Transcript {
    async fn record(
        &mut self,
        response: reqwest::Response,
    ) -> (u16, String, reqwest::header::HeaderMap) {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap();
        self.0.push(format!("{status} {headers:?} {body}"));
        (status, body, headers)
    }
}

fn location(headers: &reqwest::header::HeaderMap) -> String {
    headers["location"].to_str().unwrap().to_owned()
}

/// One browser walk, recording every response; returns the final client redirect.
async fn walk(broker: &TestBroker, transcript: &mut Transcript, authorize_url: &str) -> String {
    let browser = broker.browser();
    let (_, html, _) = transcript.record(browser.get(authorize_url).await).await;
    let field = |name: &str| {
        let marker = format!("name=\"{name}\" value=\"");
        let start = html.find(&marker).unwrap() + marker.len();
        html[start..start + html[start..].find('"').unwrap()].to_owned()
    };
    let (request, csrf) = (field("request"), field("csrf"));
    let response = browser
        .post_form(
            &broker.url("/oauth/consent"),
            &[
                ("request", &request),
                ("csrf", &csrf),
                ("decision", "approve"),
            ],
        )
        .await;
    let (_, _, headers) = transcript.record(response).await;
    // Forgejo's own responses are not the broker's output; only follow them.
    let at_forgejo = browser.get(&location(&headers)).await;
    let callback = location(at_forgejo.headers());
    let (_, _, headers) = transcript.record(browser.get(&callback).await).await;
    location(&headers)
}

#[tokio::test]
async fn no_forgejo_token_reaches_clients_logs_audit_or_disk() {
    let logs = logs::capture();
    let broker = TestBroker::builder()
        .manual_clock()
        .standin(|config| forgejo_mcp_broker::standin::StandinConfig {
            access_token_lifetime: 600,
            ..config
        })
        .start()
        .await;
    let mut transcript = Transcript::default();
    let client = broker
        .register_public_client(&["https://app.example/cb"])
        .await;

    // A good login, the token exchange, a broker refresh.
    let landing = walk(
        &broker,
        &mut transcript,
        &broker.authorize_url(&client, &[]),
    )
    .await;
    let code = url::Url::parse(&landing)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("code_verifier", crate::fixtures::VERIFIER),
        ("client_id", client.client_id.as_str()),
    ];
    let response = TestBroker::http()
        .post(broker.url("/oauth/token"))
        .form(&form)
        .send()
        .await
        .unwrap();
    let (_, body, _) = transcript.record(response).await;
    let tokens = Tokens::from_body(serde_json::from_str(&body).unwrap());
    let (_, body) = broker.refresh(&client, &tokens.refresh_token).await;
    transcript.0.push(body.to_string());

    // Upstream refreshes, one of them failing, then a dead grant.
    let upstream = broker.app().auth.upstream.clone();
    broker.advance(400);
    upstream.access_token(ALICE).await.unwrap();
    broker.advance(400);
    broker
        .standin
        .inject_token_faults(TokenFault::ServerError, 1);
    let _ = upstream.access_token(ALICE).await;
    broker
        .standin
        .inject_token_faults(TokenFault::InvalidGrant, 1);
    let _ = upstream.access_token(ALICE).await;

    // Logins that fail at Forgejo after tokens were issued (the user endpoint refuses them).
    for fault in [ApiFault::Unauthorized, ApiFault::ServerError] {
        broker.standin.inject_api_user_faults(fault, 1);
        walk(
            &broker,
            &mut transcript,
            &broker.authorize_url(&client, &[]),
        )
        .await;
    }
    // And a final good login.
    walk(
        &broker,
        &mut transcript,
        &broker.authorize_url(&client, &[]),
    )
    .await;

    let issued = broker.standin.issued_tokens();
    assert!(
        issued.len() >= 6,
        "the scenario issued Forgejo tokens: {}",
        issued.len()
    );
    let marker = token_marker();
    let audit = serde_json::to_string(&broker.audit_events()).unwrap();
    let log_text = logs.contents();
    assert!(log_text.contains("serving"), "logs were captured");
    let transcript_text = transcript.0.join("\n");

    let database = broker.data_dir.path().join("broker.db");
    let mut disk = Vec::new();
    for suffix in ["", "-wal"] {
        if let Ok(bytes) = std::fs::read(format!("{}{suffix}", database.display())) {
            disk.extend(bytes);
        }
    }
    assert!(!disk.is_empty());
    for (what, text) in [
        ("responses", &transcript_text),
        ("logs", &log_text),
        ("audit", &audit),
    ] {
        assert!(!text.contains(&marker), "a Forgejo token marker in {what}");
        for token in &issued {
            assert!(!text.contains(token.as_str()), "a Forgejo token in {what}");
        }
    }
    // Broker tokens are stored only as hashes, too.
    for token in [&tokens.access_token, &tokens.refresh_token, &code] {
        let bytes = token.as_bytes();
        assert!(
            !disk.windows(bytes.len()).any(|w| w == bytes),
            "a broker token or code in clear on disk"
        );
    }
    let marker_bytes = marker.as_bytes();
    assert!(
        !disk.windows(marker_bytes.len()).any(|w| w == marker_bytes),
        "a Forgejo token in clear on disk"
    );
    broker.shutdown().await;
}
