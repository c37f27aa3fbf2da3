//! The broker's Forgejo token sets (forgejo-facts.md §0.1, §1.5): refreshed ahead of expiry,
//! single-flight per user, persisted before use; a dead upstream grant stops the user's broker
//! tokens until they authorize again.

use std::time::Duration;

use forgejo_mcp_broker::audit::AuditEvent;
use forgejo_mcp_broker::auth::{TokenRejection, UpstreamCredentials, UpstreamCredentialsError};
use forgejo_mcp_broker::secret::{ExposeSecret, SecretString};
use forgejo_mcp_broker::standin::TokenFault;

use crate::fixtures::{ALICE, TestBroker, eventually, logs};

/// Forgejo access tokens live 600 s; the broker refreshes 300 s ahead.
async fn broker() -> TestBroker {
    TestBroker::builder()
        .manual_clock()
        .standin(|config| forgejo_mcp_broker::standin::StandinConfig {
            access_token_lifetime: 600,
            ..config
        })
        .start()
        .await
}

/// Alice's stored token is `token`, served as it is: Forgejo saw one refresh in all.
async fn assert_served_without_a_new_refresh(broker: &TestBroker, token: &SecretString) {
    let upstream = broker.app().auth.upstream.clone();
    let served = upstream.access_token(ALICE).await.unwrap();
    assert_eq!(served.expose_secret(), token.expose_secret());
    assert_eq!(broker.standin.counters().refresh_grants, 1);
}

#[tokio::test]
async fn the_forgejo_token_is_refreshed_ahead_of_expiry_and_persisted() {
    let mut broker = broker().await;
    broker.login_new_client().await;
    let upstream = broker.app().auth.upstream.clone();
    let first = upstream.access_token(ALICE).await.unwrap();
    assert_eq!(
        broker.standin.counters().refresh_grants,
        0,
        "fresh: no refresh"
    );
    assert!(
        broker
            .standin
            .issued_tokens()
            .contains(&first.expose_secret().to_owned())
    );

    broker.advance(301);
    let second = upstream.access_token(ALICE).await.unwrap();
    assert_ne!(second.expose_secret(), first.expose_secret());
    assert_eq!(broker.standin.counters().refresh_grants, 1);
    assert!(
        broker
            .audit_events()
            .contains(&AuditEvent::UpstreamRefreshed { user_id: ALICE })
    );

    // Persisted: after a restart the same token comes back without another refresh.
    broker.restart().await;
    assert_served_without_a_new_refresh(&broker, &second).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn concurrent_refreshes_make_exactly_one_upstream_call() {
    let broker = broker().await;
    broker.login_new_client().await;
    let upstream = broker.app().auth.upstream.clone();
    broker.advance(400);
    // The first refresh hangs at Forgejo while nine more callers arrive.
    broker.standin.inject_token_faults(TokenFault::Hang, 1);
    let mut calls = Vec::new();
    for _ in 0..10 {
        let upstream = upstream.clone();
        calls.push(tokio::spawn(
            async move { upstream.access_token(ALICE).await },
        ));
    }
    assert!(
        broker
            .standin
            .wait_for_hung_requests(1, Duration::from_secs(10))
            .await
    );
    broker.standin.release_hung_requests();
    let mut tokens = Vec::new();
    for call in calls {
        tokens.push(call.await.unwrap().unwrap().expose_secret().to_owned());
    }
    assert!(
        tokens.windows(2).all(|pair| pair[0] == pair[1]),
        "everyone got the new token"
    );
    assert_eq!(broker.standin.counters().refresh_grants, 1);
    assert_eq!(broker.standin.hung_requests(), 0);
    broker.shutdown().await;
}

/// A refresh in flight: Forgejo has rotated Alice's tokens, and its answer hangs until
/// released. Returns the access token from before and the caller waiting for the new one.
async fn refresh_hanging_after_rotation(
    broker: &TestBroker,
) -> (
    SecretString,
    tokio::task::JoinHandle<Result<SecretString, UpstreamCredentialsError>>,
) {
    broker.login_new_client().await;
    let upstream = broker.app().auth.upstream.clone();
    let before = upstream.access_token(ALICE).await.unwrap();
    broker.advance(400);
    broker
        .standin
        .inject_token_faults(TokenFault::HangAnswer, 1);
    let caller = tokio::spawn(async move { upstream.access_token(ALICE).await });
    assert!(
        broker
            .standin
            .wait_for_hung_requests(1, Duration::from_secs(10))
            .await
    );
    assert_eq!(broker.standin.counters().refresh_grants, 1);
    (before, caller)
}

/// Polls `holds` until it is true; fails, saying `what` was awaited, after 10 s.
async fn until(what: &str, holds: impl FnMut() -> bool) {
    assert!(
        eventually(Duration::from_secs(10), holds).await,
        "waited for {what}"
    );
}

#[tokio::test]
async fn a_caller_that_gives_up_mid_refresh_does_not_lose_the_rotated_tokens() {
    let broker = broker().await;
    // The caller (a child's request, say) is gone before Forgejo's answer arrives.
    let (before, caller) = refresh_hanging_after_rotation(&broker).await;
    let upstream = broker.app().auth.upstream.clone();
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled());
    broker.standin.release_hung_requests();
    // The refresh finished without its caller: the new set was kept, and the next caller gets
    // it without asking Forgejo again (the old refresh token no longer works there).
    let token = upstream.access_token(ALICE).await.unwrap();
    assert_ne!(token.expose_secret(), before.expose_secret());
    assert!(
        broker
            .standin
            .issued_tokens()
            .contains(&token.expose_secret().to_owned())
    );
    assert_eq!(broker.standin.counters().refresh_grants, 1);
    assert!(
        broker
            .audit_events()
            .contains(&AuditEvent::UpstreamRefreshed { user_id: ALICE })
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn shutdown_waits_for_a_refresh_forgejo_has_already_carried_out() {
    let logs = logs::capture();
    let mut broker = broker().await;
    // The broker is told to stop while Forgejo's answer is on its way.
    let (before, caller) = refresh_hanging_after_rotation(&broker).await;
    assert_eq!(broker.app().auth.upstream.in_flight(), 1);
    let stopping = tokio::spawn(broker.take_app().shutdown(Duration::from_secs(10)));
    // Everything else stopped; the refresh is waited for, and the operator is told why.
    let waiting = "waiting for Forgejo token exchanges in flight to be stored";
    until("shutdown to wait for the refresh in flight", || {
        logs.contents().contains(waiting)
    })
    .await;
    assert!(!stopping.is_finished());
    broker.standin.release_hung_requests();
    assert!(stopping.await.unwrap(), "shutdown ran out of time");
    let rotated = caller.await.unwrap().unwrap();
    assert_ne!(rotated.expose_secret(), before.expose_secret());
    // Stored before shutdown returned: the next start serves it without asking Forgejo (where
    // the old refresh token no longer works).
    broker.start_again().await;
    assert_served_without_a_new_refresh(&broker, &rotated).await;
    broker.shutdown().await;
}

/// How many `upstream_login` records there are.
fn logins(broker: &TestBroker) -> usize {
    broker
        .audit_events()
        .iter()
        .filter(|event| matches!(event, AuditEvent::UpstreamLogin { .. }))
        .count()
}

/// Alice logs in, then again with another MCP client: Forgejo exchanges the second code, which
/// moves the grant's refresh counter and so retires the stored set, and its answer hangs until
/// released; the browser is gone before it arrives.
async fn login_hanging_after_the_exchange(broker: &TestBroker) {
    broker.login_new_client().await;
    assert_eq!(logins(broker), 1);
    let second = broker
        .register_public_client(&["http://127.0.0.1/callback"])
        .await;
    broker
        .standin
        .inject_token_faults(TokenFault::HangAnswer, 1);
    let login = broker.login(&second);
    tokio::pin!(login);
    tokio::select! {
        _ = &mut login => panic!("the code exchange was to hang"),
        hung = broker.standin.wait_for_hung_requests(1, Duration::from_secs(10)) => {
            assert!(hung);
        }
    }
}

#[tokio::test]
async fn a_browser_that_gives_up_mid_login_does_not_cost_the_user_their_forgejo_grant() {
    let broker = broker().await;
    login_hanging_after_the_exchange(&broker).await;
    broker.standin.release_hung_requests();
    // The login finished without its browser: the new set is stored and refreshes.
    until("the login dropped with its browser to finish", || {
        logins(&broker) >= 2
    })
    .await;
    let upstream = broker.app().auth.upstream.clone();
    upstream.refresh_now(ALICE).await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn shutdown_waits_for_a_login_forgejo_has_already_exchanged() {
    let logs = logs::capture();
    let mut broker = broker().await;
    login_hanging_after_the_exchange(&broker).await;
    let stopping = tokio::spawn(broker.take_app().shutdown(Duration::from_secs(10)));
    until("shutdown to wait for the login in flight", || {
        logs.contents()
            .contains("waiting for Forgejo token exchanges in flight to be stored")
    })
    .await;
    assert!(!stopping.is_finished());
    broker.standin.release_hung_requests();
    assert!(stopping.await.unwrap(), "shutdown ran out of time");
    assert_eq!(logins(&broker), 2);
    // The set the second login got is the stored one: it refreshes after the restart.
    broker.start_again().await;
    broker.app().auth.upstream.refresh_now(ALICE).await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn invalid_grant_from_forgejo_revokes_the_users_broker_grants_until_they_log_in_again() {
    let broker = broker().await;
    let mut ended = broker.app().auth.access_ended.subscribe();
    let (client, tokens) = broker.login_new_client().await;
    let verifier = broker.app().auth.verifier.clone();
    let upstream = broker.app().auth.upstream.clone();
    assert!(
        verifier
            .verify(&tokens.access_token, &broker.resource())
            .await
            .is_ok()
    );

    broker.advance(400);
    broker
        .standin
        .inject_token_faults(TokenFault::InvalidGrant, 1);
    assert!(matches!(
        upstream.access_token(ALICE).await,
        Err(UpstreamCredentialsError::GrantDead)
    ));
    // The broker grant went with it.
    broker.assert_revoked(&client, &tokens).await;
    assert!(
        broker
            .audit_events()
            .contains(&AuditEvent::UpstreamGrantDead { user_id: ALICE })
    );
    let announced: Vec<_> = std::iter::from_fn(|| ended.try_recv().ok()).collect();
    assert!(
        announced.contains(&forgejo_mcp_broker::auth::AccessEnded::User { user_id: ALICE }),
        "{announced:?}"
    );
    // No retry storm: a dead grant is not refreshed again.
    let refreshes = broker.standin.counters().refresh_grants;
    assert!(upstream.access_token(ALICE).await.is_err());
    assert_eq!(broker.standin.counters().refresh_grants, refreshes);

    assert!(broker.audit_events().contains(&AuditEvent::UserRevoked {
        user_id: ALICE,
        by: "forgejo refused the grant".into(),
    }));

    // Authorizing again revives the user, through this client only: another login does not
    // bring back the tokens issued before (a client the user did not authorize again).
    let fresh = broker.login(&client).await;
    assert!(
        verifier
            .verify(&fresh.access_token, &broker.resource())
            .await
            .is_ok()
    );
    assert!(upstream.access_token(ALICE).await.is_ok());
    broker.assert_revoked(&client, &tokens).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn forgejo_reusing_a_refresh_token_is_also_a_dead_grant() {
    // Forgejo answers reuse with 400 unauthorized_client (forgejo-facts.md §1.2): simulate a
    // second broker instance having refreshed behind our back.
    let broker = broker().await;
    broker.login_new_client().await;
    let upstream = broker.app().auth.upstream.clone();
    broker
        .standin
        .issue_tokens(ALICE, crate::fixtures::FORGEJO_CLIENT_ID, "")
        .unwrap();
    broker.advance(400);
    assert!(matches!(
        upstream.access_token(ALICE).await,
        Err(UpstreamCredentialsError::GrantDead)
    ));
    broker.shutdown().await;
}

#[tokio::test]
async fn a_forgejo_outage_keeps_the_current_token_while_it_is_valid() {
    let broker = broker().await;
    broker.login_new_client().await;
    let upstream = broker.app().auth.upstream.clone();
    let current = upstream.access_token(ALICE).await.unwrap();
    broker.advance(400);
    broker
        .standin
        .inject_token_faults(TokenFault::ServerError, 1);
    let during = upstream.access_token(ALICE).await.unwrap();
    assert_eq!(during.expose_secret(), current.expose_secret());
    assert!(broker.audit_events().iter().any(|event| matches!(
        event,
        AuditEvent::UpstreamRefreshFailed { user_id: ALICE, .. }
    )));
    // Past expiry and still down: unavailable, not dead.
    broker.advance(300);
    broker
        .standin
        .inject_token_faults(TokenFault::ServerError, 1);
    assert!(matches!(
        upstream.access_token(ALICE).await,
        Err(UpstreamCredentialsError::Unavailable)
    ));
    // Forgejo is back: the next call refreshes.
    assert!(upstream.access_token(ALICE).await.is_ok());
    broker.shutdown().await;
}

#[tokio::test]
async fn burn_spends_the_refresh_chain_and_kills_the_grant() {
    let broker = broker().await;
    let (_, tokens) = broker.login_new_client().await;
    let upstream = broker.app().auth.upstream.clone();
    let before = broker.standin.counters().refresh_grants;
    upstream.burn(ALICE).await.unwrap();
    assert_eq!(broker.standin.counters().refresh_grants, before + 1);
    assert!(matches!(
        upstream.access_token(ALICE).await,
        Err(UpstreamCredentialsError::GrantDead)
    ));
    let verifier = broker.app().auth.verifier.clone();
    assert_eq!(
        verifier
            .verify(&tokens.access_token, &broker.resource())
            .await,
        Err(TokenRejection::UpstreamGrantDead)
    );
    assert!(matches!(
        upstream.access_token(2).await,
        Err(UpstreamCredentialsError::NoGrant)
    ));
    broker.shutdown().await;
}

/// A data-key rotation re-encrypts both sealed columns of the OAuth half (the users' token
/// sets and the PKCE verifier of a login in progress) and retires the old key; the login
/// completes and the stored tokens still open afterwards.
#[tokio::test]
async fn sealed_values_survive_a_data_key_rotation_and_retirement() {
    use forgejo_mcp_broker::keystore::VaultDeps;
    use forgejo_mcp_broker::keystore::rotation::{self, JobHooks};
    let mut broker = broker().await;
    broker.login_new_client().await;
    let client = broker
        .register_public_client(&["https://app.example/cb"])
        .await;
    let browser = broker.browser();
    let page = browser
        .open_consent(&broker.authorize_url(&client, &[]))
        .await;
    let to_forgejo = browser
        .submit_consent(&broker.url("/oauth/consent"), &page, "approve")
        .await;
    let at_forgejo = browser
        .get(to_forgejo.headers()["location"].to_str().unwrap())
        .await;
    let callback = at_forgejo.headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();

    let config = broker.config();
    let no_env = |_: &str| None;
    let version = rotation::rotate_data_key(
        &broker.app().db,
        &config.vault,
        broker.data_dir.path(),
        &VaultDeps {
            audit: broker.audit.clone(),
            clock: broker.clock.clone(),
        },
        &no_env,
    )
    .unwrap();
    let vault = broker.app().vault.clone();
    let mut retired = Vec::new();
    for _ in 0..100 {
        let step = vault.reencrypt_step(JobHooks::default()).unwrap();
        assert_eq!(step.failed, 0);
        retired.extend(step.retired);
        if step.idle && !retired.is_empty() {
            break;
        }
    }
    assert_eq!(retired, vec![version - 1], "the old key is retired");
    drop(vault);
    // After a restart only the new key is loaded: everything sealed must have moved to it.
    broker.restart().await;

    let landing = browser.follow(browser.get(&callback).await).await;
    let code = landing
        .param("code")
        .expect("the login completes after the rotation");
    let (status, body) = broker.exchange_code(&client, &code).await;
    assert_eq!(status, 200, "{body}");
    let upstream = broker.app().auth.upstream.clone();
    assert!(upstream.access_token(ALICE).await.is_ok());
    broker.shutdown().await;
}

/// The first `upstream_version` record (the version is asked in the background).
async fn upstream_version_record(broker: &TestBroker) -> AuditEvent {
    let recorded = || {
        broker
            .audit_events()
            .into_iter()
            .find(|event| matches!(event, AuditEvent::UpstreamVersion { .. }))
    };
    until("an upstream_version record", || recorded().is_some()).await;
    recorded().unwrap()
}

#[tokio::test]
async fn the_forge_and_its_version_are_recorded_at_start() {
    let broker = broker().await;
    let recorded = upstream_version_record(&broker).await;
    assert_eq!(
        recorded,
        AuditEvent::UpstreamVersion {
            product: "forgejo".into(),
            version: forgejo_mcp_broker::standin::DEFAULT_VERSION.into(),
        }
    );
    let metrics = broker.metrics.encode();
    assert!(
        metrics.contains(&format!(
            "upstream_info{{product=\"forgejo\",version=\"{}\"}} 1",
            forgejo_mcp_broker::standin::DEFAULT_VERSION
        )),
        "{metrics}"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn a_gitea_upstream_is_recorded_as_gitea() {
    // Gitea answers a bare version and has no /api/forgejo/v1/version.
    let broker = TestBroker::builder()
        .standin(|config| forgejo_mcp_broker::standin::StandinConfig {
            version: "1.24.2".into(),
            ..config
        })
        .start()
        .await;
    let recorded = upstream_version_record(&broker).await;
    assert_eq!(
        recorded,
        AuditEvent::UpstreamVersion {
            product: "gitea".into(),
            version: "1.24.2".into(),
        }
    );
    broker.shutdown().await;
}
