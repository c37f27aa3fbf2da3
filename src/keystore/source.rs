//! Reading the master key from its configured source, refusing anything loosely protected.

use std::ffi::OsString;
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use vault::{KeyFileError, KeyMaterial, Passphrase, parse_key_file};
use zeroize::Zeroizing;

use super::config::{KeySourceKind, VaultConfig};

/// Key files, credentials and passphrase files are small; anything larger is not one.
const MAX_SECRET_FILE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum KeySourceError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{what} {path} is accessible to group or others (mode {mode:o}); refusing it: run `chmod 600 {path}` (or 400)"
    )]
    LoosePermissions {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error(
        "{what} {path} is owned by uid {owner}, not by the broker's user (uid {expected}); refusing it: run `chown` so only the broker's user owns it"
    )]
    WrongOwner {
        what: &'static str,
        path: PathBuf,
        owner: u32,
        expected: u32,
    },
    #[error("{what} {path} is not a regular file")]
    NotAFile { what: &'static str, path: PathBuf },
    #[error("{what} {path} is larger than {MAX_SECRET_FILE} bytes; it is not a key")]
    TooLarge { what: &'static str, path: PathBuf },
    #[error("{what} {path}: {source}")]
    Format {
        what: &'static str,
        path: PathBuf,
        source: KeyFileError,
    },
    #[error("passphrase file {path}: {source}")]
    Passphrase {
        path: PathBuf,
        source: vault::KdfError,
    },
    #[error(
        "key_source = \"systemd-credential\" but $CREDENTIALS_DIRECTORY is not set (is the broker started by systemd with LoadCredentialEncrypted=?)"
    )]
    NoCredentialsDirectory,
    #[error("key_source = \"env\" but ${name} is not set")]
    EnvMissing { name: String },
    #[error("${name}: {source}")]
    EnvFormat { name: String, source: KeyFileError },
}

/// What the master key is made from.
pub enum MasterSecret {
    Key(KeyMaterial),
    Passphrase(Passphrase),
}

impl MasterSecret {
    /// Stored with the vault so a source of the wrong kind gets a clear message.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Key(_) => "key",
            Self::Passphrase(_) => "passphrase",
        }
    }
}

/// A loaded master secret and where it came from (for messages; never the secret itself).
pub struct LoadedSecret {
    pub secret: MasterSecret,
    pub origin: String,
}

impl std::fmt::Debug for LoadedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedSecret")
            .field("kind", &self.secret.kind())
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// The process environment, passed in so tests need not mutate the real one.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// An environment lookup a long-lived [`super::Vault`] keeps (to re-read its source).
pub type SharedEnv = std::sync::Arc<dyn Fn(&str) -> Option<OsString> + Send + Sync>;

/// The real process environment.
pub fn process_env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

/// Describes the configured source without reading it (for `vault status` and messages).
pub fn describe(config: &VaultConfig, data_dir: &Path) -> String {
    match config.key_source {
        KeySourceKind::KeyFile => {
            format!("key file {}", config.key_file_path(data_dir).display())
        }
        KeySourceKind::SystemdCredential => format!(
            "systemd credential {} ($CREDENTIALS_DIRECTORY)",
            config.credential_name
        ),
        KeySourceKind::PassphraseFile => format!(
            "passphrase file {} (Argon2id)",
            config
                .passphrase_file
                .as_deref()
                .unwrap_or(Path::new("?"))
                .display()
        ),
        KeySourceKind::Env => format!("environment variable ${} (discouraged)", config.env_var),
    }
}

/// Reads the configured master secret.
pub fn load(
    config: &VaultConfig,
    data_dir: &Path,
    env: EnvLookup<'_>,
) -> Result<LoadedSecret, KeySourceError> {
    let origin = describe(config, data_dir);
    let secret = match config.key_source {
        KeySourceKind::KeyFile => {
            let path = config.key_file_path(data_dir);
            MasterSecret::Key(read_key(&path, "key file", OwnerRule::Process)?)
        }
        KeySourceKind::SystemdCredential => {
            let directory = env("CREDENTIALS_DIRECTORY")
                .map(PathBuf::from)
                .ok_or(KeySourceError::NoCredentialsDirectory)?;
            let path = directory.join(&config.credential_name);
            // systemd makes credentials readable by the service user only; root may own them.
            MasterSecret::Key(read_key(
                &path,
                "systemd credential",
                OwnerRule::ProcessOrRoot,
            )?)
        }
        KeySourceKind::PassphraseFile => {
            let path = config.passphrase_file.clone().unwrap_or_default();
            let content = read_secret_file(&path, "passphrase file", OwnerRule::Process)?;
            MasterSecret::Passphrase(
                Passphrase::from_file_content(content)
                    .map_err(|source| KeySourceError::Passphrase { path, source })?,
            )
        }
        KeySourceKind::Env => {
            let name = config.env_var.clone();
            let value =
                env(&name).ok_or_else(|| KeySourceError::EnvMissing { name: name.clone() })?;
            let bytes = Zeroizing::new(std::os::unix::ffi::OsStringExt::into_vec(value));
            let key = parse_key_file(&bytes).map_err(|source| KeySourceError::EnvFormat {
                name: name.clone(),
                source,
            })?;
            // Loud, every start: the value stays in /proc/<pid>/environ and in whatever set it.
            tracing::warn!(
                target: "vault",
                variable = %name,
                "the vault master key comes from an environment variable; it stays readable in /proc/<pid>/environ for the process's lifetime. Use a systemd credential or a key file instead (docs/vault.md)"
            );
            MasterSecret::Key(key)
        }
    };
    Ok(LoadedSecret { secret, origin })
}

/// Identifies the current content of a file-based source without reading it (inode, size,
/// modification time): enough to notice that an operator replaced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFingerprint {
    inode: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

/// The fingerprint of the configured source's file; `None` for the environment or a file
/// that cannot be stat'ed.
pub fn fingerprint(
    config: &VaultConfig,
    data_dir: &Path,
    env: EnvLookup<'_>,
) -> Option<SourceFingerprint> {
    let path = match config.key_source {
        KeySourceKind::KeyFile => config.key_file_path(data_dir),
        KeySourceKind::SystemdCredential => {
            PathBuf::from(env("CREDENTIALS_DIRECTORY")?).join(&config.credential_name)
        }
        KeySourceKind::PassphraseFile => config.passphrase_file.clone()?,
        KeySourceKind::Env => return None,
    };
    let metadata = std::fs::metadata(path).ok()?;
    Some(SourceFingerprint {
        inode: metadata.ino(),
        len: metadata.len(),
        modified: metadata.modified().ok(),
    })
}

/// Reads and parses a key-file-format file.
pub fn read_key(
    path: &Path,
    what: &'static str,
    owner: OwnerRule,
) -> Result<KeyMaterial, KeySourceError> {
    let content = read_secret_file(path, what, owner)?;
    parse_key_file(&content).map_err(|source| KeySourceError::Format {
        what,
        path: path.to_path_buf(),
        source,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerRule {
    /// Owned by the broker's effective user.
    Process,
    /// Owned by the broker's effective user or by root.
    ProcessOrRoot,
}

/// Opens `path`, checks the *opened* file (fstat, so no swap between check and read): a
/// regular file, no group/other permission bits, the right owner; then reads it into zeroizing
/// memory sized up front so no reallocation leaves a copy behind.
pub fn read_secret_file(
    path: &Path,
    what: &'static str,
    owner: OwnerRule,
) -> Result<Zeroizing<Vec<u8>>, KeySourceError> {
    let read_error = |source| KeySourceError::Read {
        what,
        path: path.to_path_buf(),
        source,
    };
    // O_NONBLOCK: a FIFO put in place of the key must not hang the start (the type check
    // below then refuses it); it changes nothing for regular files.
    let file = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(read_error)?
    };
    let metadata = file.metadata().map_err(read_error)?;
    if !metadata.is_file() {
        return Err(KeySourceError::NotAFile {
            what,
            path: path.to_path_buf(),
        });
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeySourceError::LoosePermissions {
            what,
            path: path.to_path_buf(),
            mode,
        });
    }
    let expected = nix::unistd::geteuid().as_raw();
    let owner_ok = match owner {
        OwnerRule::Process => metadata.uid() == expected,
        OwnerRule::ProcessOrRoot => metadata.uid() == expected || metadata.uid() == 0,
    };
    if !owner_ok {
        return Err(KeySourceError::WrongOwner {
            what,
            path: path.to_path_buf(),
            owner: metadata.uid(),
            expected,
        });
    }
    if metadata.len() > MAX_SECRET_FILE {
        return Err(KeySourceError::TooLarge {
            what,
            path: path.to_path_buf(),
        });
    }
    let mut content = Zeroizing::new(Vec::with_capacity(MAX_SECRET_FILE as usize + 1));
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut content)
        .map_err(read_error)?;
    if content.len() as u64 > MAX_SECRET_FILE {
        return Err(KeySourceError::TooLarge {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(content)
}

/// Writes a new random key file, owner-only, refusing to replace an existing file.
pub fn generate_key_file(path: &Path) -> Result<KeyMaterial, KeySourceError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let write_error = |source| KeySourceError::Read {
        what: "new key file",
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(write_error)?;
    }
    let key = KeyMaterial::generate().map_err(|source| KeySourceError::Format {
        what: "new key file",
        path: path.to_path_buf(),
        source,
    })?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write_error)?;
    file.write_all(key.to_key_file().as_bytes())
        .map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    // The file's directory entry is durable only once its directory is synced (fsync(2)):
    // without it a crash right after `vault init` could lose the file while the database
    // already holds a vault sealed under the key, which nothing could then open.
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::File::open(directory)
        .and_then(|directory| directory.sync_all())
        .map_err(write_error)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    fn key_file_config(path: &Path) -> VaultConfig {
        VaultConfig {
            key_file: Some(path.to_path_buf()),
            ..VaultConfig::default()
        }
    }

    #[test]
    fn a_generated_key_file_is_owner_only_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/vault.key");
        let key = generate_key_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = load(&key_file_config(&path), dir.path(), &no_env).unwrap();
        let MasterSecret::Key(read) = loaded.secret else {
            panic!("expected a key");
        };
        assert!(read == key);
        assert!(
            generate_key_file(&path).is_err(),
            "never replaces a key file"
        );
    }

    #[test]
    fn loose_permissions_are_refused_with_a_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.key");
        generate_key_file(&path).unwrap();
        for mode in [0o640, 0o604, 0o644, 0o660, 0o606] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let error = load(&key_file_config(&path), dir.path(), &no_env).unwrap_err();
            assert!(
                matches!(error, KeySourceError::LoosePermissions { .. }),
                "{mode:o}: {error}"
            );
            assert!(error.to_string().contains("chmod 600"));
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(load(&key_file_config(&path), dir.path(), &no_env).is_ok());
    }

    #[test]
    fn a_fifo_or_directory_is_refused_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let error = load(&key_file_config(&fifo), dir.path(), &no_env).unwrap_err();
        assert!(matches!(error, KeySourceError::NotAFile { .. }), "{error}");
        let directory = dir.path().join("directory");
        std::fs::create_dir(&directory).unwrap();
        std::fs::set_permissions(&directory, std::fs::Permissions::from_mode(0o700)).unwrap();
        let error = load(&key_file_config(&directory), dir.path(), &no_env).unwrap_err();
        assert!(matches!(error, KeySourceError::NotAFile { .. }), "{error}");
    }

    #[test]
    fn a_file_owned_by_someone_else_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.key");
        generate_key_file(&path).unwrap();
        if nix::unistd::geteuid().is_root() {
            nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            let error = load(&key_file_config(&path), dir.path(), &no_env).unwrap_err();
            assert!(
                matches!(error, KeySourceError::WrongOwner { owner: 65534, .. }),
                "{error}"
            );
        } else {
            // Without root the test cannot give a file away; the rule is then only checked
            // for the positive case.
            eprintln!("skipped: chown needs root");
        }
    }

    #[test]
    fn systemd_credentials_and_env_are_read_from_the_given_environment() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate_key_file(&dir.path().join("cred")).unwrap();
        let config = VaultConfig {
            key_source: KeySourceKind::SystemdCredential,
            credential_name: "cred".into(),
            ..VaultConfig::default()
        };
        let credentials = dir.path().as_os_str().to_owned();
        let env = move |name: &str| (name == "CREDENTIALS_DIRECTORY").then(|| credentials.clone());
        let MasterSecret::Key(read) = load(&config, dir.path(), &env).unwrap().secret else {
            panic!("expected a key");
        };
        assert!(read == key);
        assert!(matches!(
            load(&config, dir.path(), &no_env),
            Err(KeySourceError::NoCredentialsDirectory)
        ));

        let config = VaultConfig {
            key_source: KeySourceKind::Env,
            ..VaultConfig::default()
        };
        let value = OsString::from(key.to_key_file().as_str());
        let env = move |name: &str| {
            (name == super::super::config::DEFAULT_ENV_VAR).then(|| value.clone())
        };
        assert!(matches!(
            load(&config, dir.path(), &env).unwrap().secret,
            MasterSecret::Key(_)
        ));
        let bad = |_: &str| Some(OsString::from("not a key but a secret"));
        let error = load(&config, dir.path(), &bad).unwrap_err();
        assert!(!error.to_string().contains("not a key but"), "{error}");
    }

    #[test]
    fn a_passphrase_file_is_read_and_debug_shows_only_the_kind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passphrase");
        std::fs::write(&path, "correct horse battery staple\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = VaultConfig {
            key_source: KeySourceKind::PassphraseFile,
            passphrase_file: Some(path),
            ..VaultConfig::default()
        };
        let loaded = load(&config, dir.path(), &no_env).unwrap();
        let debug = format!("{loaded:?}");
        assert!(
            debug.contains("passphrase") && !debug.contains("horse"),
            "{debug}"
        );
    }
}
