//! Interim vault key loading: one data key in `{data_dir}/vault.key` (0600, hex), created on
//! first start. Issue #5 replaces [`load_keyring`] with real master-key management (systemd
//! credential, wrapped data keys, rotation); nothing else in the broker knows where the key
//! comes from.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use vault::{DataKey, Keyring};
use zeroize::Zeroizing;

pub const KEY_FILE: &str = "vault.key";

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read or create the vault key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vault key file {path} is readable by group or others (mode {mode:o}); chmod 600 it")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("vault key file {path} does not hold a 64-hex-digit key")]
    Malformed { path: PathBuf },
    #[error("cannot generate a vault key: {0}")]
    Generate(vault::VaultError),
}

/// Loads the data key from `{data_dir}/vault.key`, creating it (0600) if absent.
pub fn load_keyring(data_dir: &Path) -> Result<Keyring, KeyFileError> {
    let path = data_dir.join(KEY_FILE);
    let io = |source| KeyFileError::Io {
        path: path.clone(),
        source,
    };
    if !path.exists() {
        let key = DataKey::generate().map_err(KeyFileError::Generate)?;
        let text = Zeroizing::new(hex::encode(key.expose_bytes()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    let mode = std::fs::metadata(&path).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions { path, mode });
    }
    let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(io)?);
    let mut bytes = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), bytes.as_mut_slice())
        .map_err(|_| KeyFileError::Malformed { path: path.clone() })?;
    let mut keyring = Keyring::new();
    keyring.insert(1, DataKey::from_bytes(*bytes));
    Ok(keyring)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vault::{Aad, Sealer as _};

    const AAD: Aad<'static> = Aad {
        table: "t",
        column: "c",
        row_id: "1",
        user_id: 1,
    };

    #[test]
    fn key_is_created_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_keyring(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let envelope = first.seal(&AAD, b"x").unwrap();
        let second = load_keyring(dir.path()).unwrap();
        assert_eq!(second.open(&AAD, &envelope).unwrap().as_slice(), b"x");
    }

    #[test]
    fn a_world_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_keyring(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_keyring(dir.path()),
            Err(KeyFileError::Permissions { .. })
        ));
    }
}
