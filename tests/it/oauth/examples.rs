//! `examples/broker.toml` stays valid, and `check-config` prints the redirect URI to register
//! at Forgejo.

use std::path::Path;
use std::process::Command;

use forgejo_mcp_broker::config::{CLIENT_SECRET_ENV, Config};

fn example() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/broker.toml"))
}

#[test]
fn the_example_config_loads() {
    // The example names no secret source (the operator picks one); give it the file form it
    // documents, pointing at a 0600 temporary file, and load it as production does.
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("client-secret");
    std::fs::write(&secret, "gto_example_secret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = std::fs::read_to_string(example()).unwrap();
    let documented = "# client_secret_file = \"/etc/forgejo-mcp-broker/client-secret\"";
    assert!(text.contains(documented));
    let copy = dir.path().join("broker.toml");
    std::fs::write(
        &copy,
        text.replace(
            documented,
            &format!("client_secret_file = \"{}\"", secret.display()),
        ),
    )
    .unwrap();
    let config = Config::load(&copy).unwrap();
    assert_eq!(config.server.issuer(), "https://mcp.example.org");
    assert_eq!(config.oauth.access_token_ttl_secs, 3600);
    assert!(!config.oauth.cimd_allow_loopback_for_tests);
    use forgejo_mcp_broker::secret::ExposeSecret as _;
    assert_eq!(
        config.forgejo.load_client_secret().unwrap().expose_secret(),
        "gto_example_secret"
    );

    // A group-readable secret file is refused, naming the key.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
    let error = Config::load(&copy).unwrap_err().to_string();
    assert!(
        error.contains("forgejo.client_secret") && error.contains("chmod 600"),
        "{error}"
    );
}

#[test]
fn check_config_prints_the_forgejo_redirect_uri() {
    let output = Command::new(env!("CARGO_BIN_EXE_forgejo-mcp-broker"))
        .args(["check-config", "--config"])
        .arg(example())
        .env(CLIENT_SECRET_ENV, "gto_example_secret")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("https://mcp.example.org/oauth/callback"),
        "{stdout}"
    );
    assert!(!stdout.contains("gto_example_secret"));
}

#[test]
fn without_any_client_secret_the_config_is_refused_naming_the_key() {
    let output = Command::new(env!("CARGO_BIN_EXE_forgejo-mcp-broker"))
        .args(["check-config", "--config"])
        .arg(example())
        .env_remove(CLIENT_SECRET_ENV)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("forgejo.client_secret"), "{stderr}");
}

#[test]
fn check_config_refuses_a_child_program_another_user_could_replace() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    let program = open.join("forgejo-mcp");
    std::fs::write(&program, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = std::fs::read_to_string(example()).unwrap();
    let copy = dir.path().join("broker.toml");
    std::fs::write(
        &copy,
        format!("{text}\n[mcp.child]\nprogram = \"{}\"\n", program.display()),
    )
    .unwrap();
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_forgejo-mcp-broker"))
            .args(["check-config", "--config"])
            .arg(&copy)
            .env(CLIENT_SECRET_ENV, "gto_example_secret")
            .output()
            .unwrap()
    };
    // Only root (the user the test runs as) can change it: said, and accepted.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = check();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("mcp.child.program: {}", program.display())),
        "{stdout}"
    );
    // Its directory writable by anyone: refused, naming the key and the directory.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let output = check();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "mcp.child.program: {}: writable by group or others",
            open.display()
        )),
        "{stderr}"
    );
}
