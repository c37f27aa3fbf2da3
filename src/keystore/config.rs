//! The `[vault]` configuration section.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use vault::KdfParams;

use crate::config::{ConfigErrors, Validate};

/// Where the master key comes from (docs/vault.md, "Key sources").
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum KeySourceKind {
    /// A key file: base64 of 32 random bytes, owner-only permissions, owned by the broker's user.
    #[default]
    KeyFile,
    /// `$CREDENTIALS_DIRECTORY/<credential_name>` (systemd `LoadCredentialEncrypted=`), same
    /// format as a key file. Preferred: never on disk in clear, TPM-bound if the host has one.
    SystemdCredential,
    /// A passphrase in a file (owner-only), stretched with Argon2id.
    PassphraseFile,
    /// A key in an environment variable. Discouraged: it stays readable in
    /// `/proc/<pid>/environ` for the process's lifetime; accepted with a warning at every start.
    Env,
}

impl KeySourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeyFile => "key-file",
            Self::SystemdCredential => "systemd-credential",
            Self::PassphraseFile => "passphrase-file",
            Self::Env => "env",
        }
    }
}

/// Argon2id parameters used when a passphrase vault is created or its master key rotated.
/// An existing vault opens with the parameters stored beside its salt, not these.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct KdfConfig {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfConfig {
    fn default() -> Self {
        let params = KdfParams::RFC9106_SECOND;
        Self {
            memory_kib: params.memory_kib,
            iterations: params.iterations,
            parallelism: params.parallelism,
        }
    }
}

impl KdfConfig {
    pub fn params(&self) -> KdfParams {
        KdfParams {
            memory_kib: self.memory_kib,
            iterations: self.iterations,
            parallelism: self.parallelism,
        }
    }
}

pub const DEFAULT_CREDENTIAL_NAME: &str = "forgejo-mcp-broker-vault-key";
pub const DEFAULT_ENV_VAR: &str = "FORGEJO_MCP_BROKER_VAULT_KEY";

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaultConfig {
    pub key_source: KeySourceKind,
    /// For `key-file`; default `{data_dir}/vault.key`. Keep it out of the data directory if the
    /// database is backed up with it (a backup holding both protects nothing).
    pub key_file: Option<PathBuf>,
    /// For `systemd-credential`: the file name under `$CREDENTIALS_DIRECTORY`.
    pub credential_name: String,
    /// For `passphrase-file`.
    pub passphrase_file: Option<PathBuf>,
    /// For `env`.
    pub env_var: String,
    pub kdf: KdfConfig,
    /// Allows Argon2id parameters below RFC 9106's second recommended setting. For tests only.
    pub allow_weak_kdf: bool,
    /// On the first start (no vault in the database), initialise it as `vault init` would
    /// (generating the key file if that is the source and it does not exist), with a warning.
    /// An initialised vault is never re-initialised: a missing or wrong key stops the broker.
    pub auto_init: bool,
    /// Rows re-encrypted per transaction by the background job after `vault rotate-data-key`.
    pub rotation_batch_rows: u32,
    /// How often the serving broker looks for new data keys and re-encrypts a batch.
    pub rotation_interval_secs: u64,
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            key_source: KeySourceKind::default(),
            key_file: None,
            credential_name: DEFAULT_CREDENTIAL_NAME.to_owned(),
            passphrase_file: None,
            env_var: DEFAULT_ENV_VAR.to_owned(),
            kdf: KdfConfig::default(),
            allow_weak_kdf: false,
            auto_init: true,
            rotation_batch_rows: 200,
            rotation_interval_secs: 30,
        }
    }
}

impl VaultConfig {
    pub fn key_file_path(&self, data_dir: &Path) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| data_dir.join("vault.key"))
    }
}

impl Validate for VaultConfig {
    fn validate(&self, errors: &mut ConfigErrors) {
        let params = self.kdf.params();
        if let Err(error) = params.check() {
            errors.push("vault.kdf", error);
        } else if !self.allow_weak_kdf && !params.at_least(&KdfParams::RFC9106_SECOND) {
            errors.push(
                "vault.kdf",
                "below RFC 9106's second recommended setting (memory_kib = 65536, iterations = 3, parallelism = 4); set vault.allow_weak_kdf = true only for tests",
            );
        }
        if self.key_source == KeySourceKind::PassphraseFile && self.passphrase_file.is_none() {
            errors.push(
                "vault.passphrase_file",
                "required when key_source = \"passphrase-file\"",
            );
        }
        if self.key_source != KeySourceKind::KeyFile && self.key_file.is_some() {
            errors.push(
                "vault.key_file",
                format!("is set but key_source = {:?}", self.key_source.as_str()),
            );
        }
        if self.key_source != KeySourceKind::PassphraseFile && self.passphrase_file.is_some() {
            errors.push(
                "vault.passphrase_file",
                format!("is set but key_source = {:?}", self.key_source.as_str()),
            );
        }
        let name = &self.credential_name;
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            errors.push(
                "vault.credential_name",
                "must be a plain file name (as in LoadCredentialEncrypted=<name>:...)",
            );
        }
        if self.env_var.is_empty() || self.env_var.contains('=') {
            errors.push("vault.env_var", "must be an environment variable name");
        }
        if !(1..=10_000).contains(&self.rotation_batch_rows) {
            errors.push("vault.rotation_batch_rows", "must be between 1 and 10000");
        }
        if !(1..=86_400).contains(&self.rotation_interval_secs) {
            errors.push(
                "vault.rotation_interval_secs",
                "must be between 1 and 86400",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> VaultConfig {
        toml::from_str(text).unwrap()
    }

    fn errors(config: &VaultConfig) -> Vec<String> {
        let mut errors = ConfigErrors::default();
        config.validate(&mut errors);
        errors.messages().to_vec()
    }

    #[test]
    fn defaults_are_valid_and_at_least_rfc_9106_second_setting() {
        let config = VaultConfig::default();
        assert!(errors(&config).is_empty());
        assert_eq!(config.kdf.params(), KdfParams::RFC9106_SECOND);
    }

    #[test]
    fn weak_kdf_needs_an_explicit_opt_in() {
        let weak = parse("kdf = { memory_kib = 1024, iterations = 1, parallelism = 1 }");
        assert!(errors(&weak).iter().any(|e| e.contains("RFC 9106")));
        let opted = parse(
            "allow_weak_kdf = true\nkdf = { memory_kib = 1024, iterations = 1, parallelism = 1 }",
        );
        assert!(errors(&opted).is_empty());
    }

    #[test]
    fn inconsistent_sources_are_reported_together() {
        let config = parse(
            "key_source = \"passphrase-file\"\nkey_file = \"/k\"\ncredential_name = \"../x\"\nrotation_batch_rows = 0",
        );
        let found = errors(&config);
        assert_eq!(found.len(), 4, "{found:?}");
    }

    #[test]
    fn unknown_keys_and_sources_are_errors() {
        assert!(toml::from_str::<VaultConfig>("key_source = \"tpm\"").is_err());
        assert!(toml::from_str::<VaultConfig>("surprise = 1").is_err());
    }
}
