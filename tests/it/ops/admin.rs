//! Admin verbs against a live broker's database: listing, deleting a client, revoking a user
//! (Forgejo refresh token burned first, broker tokens dead at once), each audited.

use std::process::Command;

use forgejo_mcp_broker::admin::{Admin, AdminError};
use forgejo_mcp_broker::app::AppDeps;
use forgejo_mcp_broker::audit::AuditEvent;
use forgejo_mcp_broker::audit::review::{ShowFilter, VerifyPolicy, select, verify_files};
use forgejo_mcp_broker::audit::writer::log_files;
use forgejo_mcp_broker::auth::TokenRejection;
use forgejo_mcp_broker::metrics::Metrics;

use crate::fixtures::{ALICE, TestBroker};

fn admin_for(broker: &TestBroker) -> Admin {
    let deps = AppDeps {
        clock: broker.clock.clone(),
        audit: broker.audit.clone(),
        metrics: Metrics::new(),
        launcher: None,
        audit_file: None,
    };
    Admin::open(&broker.config(), &deps).unwrap()
}

#[tokio::test]
async fn revoking_a_user_burns_upstream_first_and_kills_their_tokens_at_once() {
    let broker = TestBroker::start().await;
    let (client, tokens) = broker.login_new_client().await;
    let verifier = broker.app().auth.verifier.clone();
    let resource = broker.resource();
    assert!(
        verifier
            .verify(&tokens.access_token, &resource)
            .await
            .is_ok()
    );
    let admin = admin_for(&broker);

    let users = admin.list_users().unwrap();
    let alice = users.iter().find(|u| u.user_id == ALICE).unwrap();
    assert_eq!((alice.upstream.as_str(), alice.live_grants), ("alive", 1));
    let clients = admin.list_clients().unwrap();
    assert!(
        clients
            .iter()
            .any(|c| c.client_id == client.client_id && c.live_grants == 1)
    );

    let issued_before = broker.standin.issued_tokens().len();
    let revocation = admin.revoke_user(ALICE, false).await.unwrap();
    assert!(revocation.upstream_burned);
    assert_eq!(revocation.grants_revoked, 1);
    assert!(revocation.forgejo_tokens_deleted);
    // The burn spent Forgejo's refresh token (one refresh, its result discarded).
    assert_eq!(broker.standin.issued_tokens().len(), issued_before + 2);

    // The serving broker refuses the user's tokens on the very next use.
    assert!(matches!(
        verifier.verify(&tokens.access_token, &resource).await,
        Err(TokenRejection::Revoked | TokenRejection::Unknown | TokenRejection::UpstreamGrantDead)
    ));
    let (status, body) = broker.refresh(&client, &tokens.refresh_token).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    assert!(!broker.app().auth.upstream.is_alive(ALICE).unwrap());
    let alice = admin
        .list_users()
        .unwrap()
        .into_iter()
        .find(|u| u.user_id == ALICE)
        .unwrap();
    assert_eq!((alice.upstream.as_str(), alice.live_grants), ("none", 0));

    let events = broker.audit_events();
    let dead = events
        .iter()
        .position(|e| matches!(e, AuditEvent::UpstreamGrantDead { user_id } if *user_id == ALICE));
    let revoked = events.iter().position(
        |e| matches!(e, AuditEvent::UserRevoked { user_id, by } if *user_id == ALICE && by == "admin"),
    );
    assert!(
        dead.is_some() && revoked.is_some() && dead < revoked,
        "{events:?}"
    );
    assert!(matches!(
        admin.revoke_user(4242, false).await,
        Err(AdminError::UnknownUser(4242))
    ));
    broker.shutdown().await;
}

#[tokio::test]
async fn deleting_a_client_revokes_its_grants_and_forgets_it() {
    let broker = TestBroker::start().await;
    let (client, tokens) = broker.login_new_client().await;
    let (other, other_tokens) = broker.login_new_client().await;
    let admin = admin_for(&broker);
    let deletion = admin.delete_client(&client.client_id).unwrap();
    assert_eq!(deletion.grants_revoked, 1);
    assert!(
        !admin
            .list_clients()
            .unwrap()
            .iter()
            .any(|c| c.client_id == client.client_id)
    );
    let (status, _) = broker.refresh(&client, &tokens.refresh_token).await;
    assert!(status == 400 || status == 401, "{status}");
    // Other clients of the same user are untouched.
    let (status, body) = broker.refresh(&other, &other_tokens.refresh_token).await;
    assert_eq!(status, 200, "{body}");
    assert!(matches!(
        admin.delete_client(&client.client_id),
        Err(AdminError::UnknownClient(_))
    ));
    assert!(broker.audit_events().iter().any(|e| matches!(
        e,
        AuditEvent::ClientDeleted { client_id, by } if *client_id == client.client_id && by == "admin"
    )));
    broker.shutdown().await;
}

#[tokio::test]
async fn the_admin_command_works_beside_the_serving_broker_and_audits_to_the_file() {
    use std::os::unix::fs::PermissionsExt;

    let broker = TestBroker::start().await;
    let (client, _) = broker.login_new_client().await;
    let config_path = broker.data_dir.path().join("broker.toml");
    std::fs::write(&config_path, broker.config_text()).unwrap();
    std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = config_path.to_str().unwrap().to_owned();
    let run = |args: &[&str]| {
        let config = config.clone();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                let output = Command::new(env!("CARGO_BIN_EXE_forgejo-mcp-broker"))
                    .arg("admin")
                    .arg("--config")
                    .arg(&config)
                    .args(&args)
                    .env_remove("FORGEJO_MCP_BROKER_CONFIG")
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&output.stdout).into_owned();
                assert!(
                    output.status.success(),
                    "{text}{}",
                    String::from_utf8_lossy(&output.stderr)
                );
                text
            })
            .await
            .unwrap()
        }
    };
    let users = run(&["users", "list", "--json"]).await;
    let alice: serde_json::Value = serde_json::from_str(users.lines().next().unwrap()).unwrap();
    assert_eq!(alice["user_id"], ALICE);
    assert_eq!(alice["username"], "alice");
    let clients = run(&["clients", "list"]).await;
    assert!(clients.contains(&client.client_id), "{clients}");
    let deleted = run(&["clients", "delete", &client.client_id, "--json"]).await;
    assert!(deleted.contains("\"grants_revoked\":1"), "{deleted}");
    let revoked = run(&["users", "revoke", "1"]).await;
    assert!(revoked.contains("burned"), "{revoked}");

    let data_dir = broker.data_dir.path().to_path_buf();
    let files = log_files(&data_dir.join("audit.jsonl"));
    assert!(!data_dir.join("audit.key").exists());
    let key = forgejo_mcp_broker::app::audit_key_for_verification(&broker.config())
        .unwrap()
        .unwrap();
    let report = verify_files(&files, Some(&key)).unwrap();
    assert!(report.is_ok(VerifyPolicy::STRICT), "{report}");
    let by_admin = select(
        &files,
        &ShowFilter {
            events: vec!["client_deleted".into(), "user_revoked".into()],
            ..ShowFilter::default()
        },
    )
    .unwrap();
    assert_eq!(by_admin.len(), 2, "{by_admin:?}");
    assert!(by_admin.iter().all(|r| r["by"] == "admin"));
    broker.shutdown().await;
}

/// A config for the admin verbs over an MCP-only test broker's data dir.
fn admin_over(data_dir: &std::path::Path, url: &str) -> Admin {
    let config = forgejo_mcp_broker::config::Config::from_toml(
        &crate::fixtures::minimal_config_toml(url, data_dir),
    )
    .unwrap();
    let deps = AppDeps {
        clock: std::sync::Arc::new(forgejo_mcp_broker::clock::SystemClock),
        audit: forgejo_mcp_broker::audit::MemoryAudit::new(),
        metrics: Metrics::new(),
        launcher: None,
        audit_file: None,
    };
    Admin::open(&config, &deps).unwrap()
}

#[tokio::test]
async fn ending_a_session_from_the_admin_command_stops_it_in_the_serving_broker() {
    use crate::mcp::fixtures::{Broker, test_child_profile, test_config};
    use serde_json::json;

    let broker = Broker::start(test_config(test_child_profile(&[]))).await;
    let mut alice = broker.user("tok-alice", 7, "client-a", "grant-a");
    alice.initialize().await;
    let mut bob = broker.user("tok-bob", 8, "client-b", "grant-b");
    bob.initialize().await;
    let admin = admin_over(broker.data_dir.path(), &broker.url);

    let sessions = admin.list_sessions(None).unwrap();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let alices = admin.list_sessions(Some(7)).unwrap();
    assert_eq!(alices.len(), 1);
    let label = alices[0].session.clone();
    assert_eq!(alices[0].client_id, "client-a");
    // The label is what the audit log calls the session.
    assert!(broker.audit.events().iter().any(|e| matches!(
        e,
        AuditEvent::SessionCreated { session, .. } if *session == label
    )));

    admin.end_session(&label).unwrap();
    // The serving broker's housekeeping ends it (bounded wait, polled).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !broker.audit.events().iter().any(|e| {
        matches!(
            e,
            AuditEvent::SessionEnded { session, .. } if *session == label
        )
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "the session was not ended"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let reply = alice
        .post(&json!({"jsonrpc": "2.0", "id": 99, "method": "tools/list"}))
        .await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    // Bob's session is untouched.
    let reply = bob
        .post(&json!({"jsonrpc": "2.0", "id": 99, "method": "tools/list"}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(matches!(
        admin.end_session("00000000"),
        Err(AdminError::UnknownSession(_))
    ));
    assert!(matches!(
        admin.end_session("not-hex!"),
        Err(AdminError::UnknownSession(_))
    ));
    broker.stop().await;
}

#[tokio::test]
async fn admin_revoke_of_a_user_kills_their_live_mcp_session() {
    let broker = TestBroker::builder()
        .toml(&crate::e2e::demo_child_toml())
        .start()
        .await;
    let (_, tokens) = broker.login_new_client().await;
    let http = reqwest::Client::new();
    let post = |session: Option<&str>, body: serde_json::Value| {
        let mut request = http
            .post(broker.url("/mcp"))
            .bearer_auth(&tokens.access_token)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(session) = session {
            request = request
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-06-18");
        }
        request.send()
    };
    let initialized = post(
        None,
        serde_json::json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "ops-test", "version": "1"}},
        }),
    )
    .await
    .unwrap();
    assert_eq!(initialized.status(), 200);
    let session = initialized.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let ping = serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "ping"});
    assert_eq!(
        post(Some(&session), ping.clone()).await.unwrap().status(),
        200
    );

    let admin = admin_for(&broker);
    let revocation = admin.revoke_user(ALICE, false).await.unwrap();
    assert_eq!(revocation.sessions_ended, 1);
    // The very next request is refused: the token is dead.
    assert_eq!(post(Some(&session), ping).await.unwrap().status(), 401);
    // And the serving broker's housekeeping ends the session (bounded poll).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !broker
        .audit_events()
        .iter()
        .any(|e| matches!(e, AuditEvent::SessionEnded { user_id, .. } if *user_id == ALICE))
    {
        assert!(std::time::Instant::now() < deadline, "the session lived on");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    broker.shutdown().await;
}

/// An admin action whose audit record cannot be written is not reported as a success: the
/// command says the record is missing and exits non-zero, after saying what it did (done is
/// done). The log here is `/dev/full`: it opens, and every write fails (ENOSPC), as on a full
/// disk; a permission would not stop the tests, which run as root.
#[tokio::test]
async fn an_admin_action_the_audit_log_cannot_record_fails_the_command() {
    use std::os::unix::fs::PermissionsExt;

    let broker = TestBroker::start().await;
    let (client, _) = broker.login_new_client().await;
    let config_path = broker.data_dir.path().join("broker.toml");
    std::fs::write(
        &config_path,
        format!("{}\n[audit]\npath = \"/dev/full\"\n", broker.config_text()),
    )
    .unwrap();
    std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let client_id = client.client_id.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_forgejo-mcp-broker"))
            .arg("admin")
            .arg("--config")
            .arg(&config_path)
            .args(["clients", "delete", &client_id])
            .env_remove("FORGEJO_MCP_BROKER_CONFIG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(!output.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("the audit log /dev/full lacks this command's records"),
        "{stderr}"
    );
    assert!(stdout.contains("deleted client"), "{stdout}");
    broker.shutdown().await;
}
