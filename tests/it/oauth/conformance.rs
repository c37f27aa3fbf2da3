//! The MCP conformance suite's authorization-server scenarios (pre-release 0.2.0-alpha.12,
//! installed by `tests/peers/install.sh`) against the broker: metadata, then a full
//! authorization-code grant with DCR, played through the broker's consent page and the
//! stand-in Forgejo by `tests/peers/run-conformance-authorization.mjs`.

use std::path::Path;
use std::time::Duration;

use crate::fixtures::TestBroker;

#[tokio::test]
async fn the_conformance_suite_accepts_the_authorization_server() {
    let peers = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers"));
    assert!(
        peers.join("node_modules/conformance-alpha").is_dir(),
        "run tests/peers/install.sh first (CI does)"
    );
    let broker = TestBroker::start().await;
    let run = tokio::process::Command::new("node")
        .arg(peers.join("run-conformance-authorization.mjs"))
        .args(["--issuer", &broker.base_url, "--register", "--resource"])
        .arg(broker.resource())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the conformance run finished in time")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(!stdout.contains("FAILURE"), "{stdout}");
    assert!(
        stdout.contains("authorization-code-grant: 1 passed, 0 failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("authorization-server-metadata-endpoint: 2 passed, 0 failed"),
        "{stdout}"
    );
    broker.shutdown().await;
}
