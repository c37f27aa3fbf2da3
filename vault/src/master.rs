//! The master key (key-encryption key): wraps the data keys, never touches a row.
//!
//! ```text
//! key material (key file / systemd credential / env, or Argon2id(passphrase))
//!   │ HKDF-SHA256(salt = "forgejo-mcp-broker/vault", info = "master-key/v1")
//!   ▼
//! master key ── wraps ──▶ data key v1, v2, …  (XChaCha20-Poly1305, AAD = label ‖ version)
//!            └─ seals ──▶ key check           (a constant; tells "wrong key" from "corrupt row")
//! ```
//!
//! HKDF (RFC 5869) turns the raw material into a key used for exactly one purpose, so the
//! same file could later feed other subkeys under other `info` labels without reuse.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::envelope::{DataKey, Envelope, FORMAT_VERSION, VaultError, open_raw, seal_raw};
use crate::keyfile::{KEY_LEN, KeyMaterial};

const HKDF_SALT: &[u8] = b"forgejo-mcp-broker/vault";
const HKDF_INFO: &[u8] = b"master-key/v1";
const DATA_KEY_LABEL: &[u8] = b"forgejo-mcp-broker/vault/data-key";
const KEY_CHECK_LABEL: &[u8] = b"forgejo-mcp-broker/vault/key-check";
const KEY_CHECK_PLAINTEXT: &[u8] = b"forgejo-mcp-broker vault key check v1";

/// The key-encryption key. Zeroized on drop; no `Debug` that prints it.
pub struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

fn label_with_version(label: &[u8], version: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(label.len() + 5);
    out.extend_from_slice(label);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&version.to_be_bytes());
    out
}

impl MasterKey {
    pub fn derive(material: &KeyMaterial) -> Self {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        let hkdf = Hkdf::<Sha256>::new(Some(HKDF_SALT), material.expose_bytes());
        // Cannot fail: 32 bytes is far below HKDF-SHA256's output limit of 255 * 32 bytes
        // (RFC 5869 §2.3), the only error `expand` has.
        let _ = hkdf.expand(HKDF_INFO, key.as_mut_slice());
        Self(key)
    }

    /// Wraps data key `version`. The version is bound, so a wrapped key cannot be swapped
    /// for another version's.
    pub fn wrap_data_key(&self, version: u32, key: &DataKey) -> Result<Vec<u8>, VaultError> {
        seal_raw(
            &self.0,
            version,
            &label_with_version(DATA_KEY_LABEL, version),
            key.expose_bytes(),
        )
    }

    pub fn unwrap_data_key(&self, version: u32, wrapped: &[u8]) -> Result<DataKey, VaultError> {
        let envelope = Envelope::parse(wrapped)?;
        if envelope.key_version != version {
            return Err(VaultError::Authentication);
        }
        let plaintext = open_raw(
            &self.0,
            &envelope,
            &label_with_version(DATA_KEY_LABEL, version),
        )?;
        let bytes: [u8; KEY_LEN] = plaintext
            .as_slice()
            .try_into()
            .map_err(|_| VaultError::Malformed)?;
        Ok(DataKey::from_bytes(bytes))
    }

    /// A value stored beside the wrapped keys; only this master key opens it.
    pub fn key_check(&self) -> Result<Vec<u8>, VaultError> {
        seal_raw(
            &self.0,
            0,
            &label_with_version(KEY_CHECK_LABEL, 0),
            KEY_CHECK_PLAINTEXT,
        )
    }

    /// True if `check` was made by [`MasterKey::key_check`] with this key.
    pub fn verify_key_check(&self, check: &[u8]) -> bool {
        let Ok(envelope) = Envelope::parse(check) else {
            return false;
        };
        open_raw(&self.0, &envelope, &label_with_version(KEY_CHECK_LABEL, 0))
            .map(|plaintext| {
                subtle::ConstantTimeEq::ct_eq(plaintext.as_slice(), KEY_CHECK_PLAINTEXT).into()
            })
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master() -> MasterKey {
        MasterKey::derive(&KeyMaterial::generate().unwrap())
    }

    #[test]
    fn data_keys_round_trip_and_are_bound_to_their_version() {
        let master = master();
        let key = DataKey::generate().unwrap();
        let wrapped = master.wrap_data_key(3, &key).unwrap();
        let unwrapped = master.unwrap_data_key(3, &wrapped).unwrap();
        assert_eq!(unwrapped.expose_bytes(), key.expose_bytes());
        assert!(master.unwrap_data_key(4, &wrapped).is_err());
        assert!(
            !wrapped
                .windows(KEY_LEN)
                .any(|window| window == key.expose_bytes())
        );
    }

    #[test]
    fn another_master_key_opens_nothing() {
        let (a, b) = (master(), master());
        let wrapped = a.wrap_data_key(1, &DataKey::generate().unwrap()).unwrap();
        assert_eq!(
            b.unwrap_data_key(1, &wrapped).err(),
            Some(VaultError::Authentication)
        );
        let check = a.key_check().unwrap();
        assert!(a.verify_key_check(&check));
        assert!(!b.verify_key_check(&check));
        assert!(!a.verify_key_check(b"short"));
    }

    #[test]
    fn a_key_check_is_not_a_data_key_and_vice_versa() {
        let master = master();
        let check = master.key_check().unwrap();
        assert!(master.unwrap_data_key(0, &check).is_err());
        let wrapped = master
            .wrap_data_key(0, &DataKey::generate().unwrap())
            .unwrap();
        assert!(!master.verify_key_check(&wrapped));
    }

    #[test]
    fn derivation_is_deterministic_and_not_the_identity() {
        let material = KeyMaterial::from_bytes([9; 32]);
        let (a, b) = (MasterKey::derive(&material), MasterKey::derive(&material));
        assert!(b.verify_key_check(&a.key_check().unwrap()));
        assert_ne!(a.0.as_slice(), material.expose_bytes());
        assert_eq!(format!("{a:?}"), "MasterKey([redacted])");
    }
}
