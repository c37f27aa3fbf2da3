//! Envelopes: how one sealed value is laid out, and the [`Keyring`] that seals and opens them.
//!
//! ```text
//! format (1 byte = 1) | key version (u32 BE) | nonce (24 bytes) | XChaCha20-Poly1305 ciphertext+tag
//! ```
//!
//! The associated data binds the envelope to where it lives ([`Aad`]: table, column, row id,
//! user id) and to the format and key version, so a ciphertext copied to another row, user or
//! column fails to open. The same layout wraps data keys under the master key
//! ([`crate::MasterKey`]), with a different domain label in the associated data.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::RwLock;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

pub const FORMAT_VERSION: u8 = 1;
pub(crate) const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
const TAG_LEN: usize = 16;
/// The smallest well-formed envelope: a header and a tag around an empty plaintext.
pub const MIN_ENVELOPE_LEN: usize = HEADER_LEN + TAG_LEN;

/// Where an envelope lives. Opening it anywhere else fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aad<'a> {
    pub table: &'a str,
    pub column: &'a str,
    pub row_id: &'a str,
    pub user_id: i64,
}

impl Aad<'_> {
    /// Canonical, unambiguous encoding: a domain label, then each field length-prefixed.
    fn encode(&self, format: u8, key_version: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(b"forgejo-mcp-broker/vault");
        out.push(format);
        out.extend_from_slice(&key_version.to_be_bytes());
        for field in [self.table, self.column, self.row_id] {
            out.extend_from_slice(&(field.len() as u64).to_be_bytes());
            out.extend_from_slice(field.as_bytes());
        }
        out.extend_from_slice(&self.user_id.to_be_bytes());
        out
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    #[error("envelope is malformed (too short or unknown format)")]
    Malformed,
    #[error("envelope sealed with key version {0}, which this vault does not hold")]
    UnknownKeyVersion(u32),
    /// Wrong key, tampered bytes, or an envelope moved from another row/user/column.
    #[error("envelope failed authentication")]
    Authentication,
    #[error("no data key is loaded")]
    NoKey,
    #[error("the operating system's random number generator failed")]
    Random,
}

/// Seals and opens envelopes. The broker only ever sees this trait.
pub trait Sealer: Send + Sync + 'static {
    fn seal(&self, aad: &Aad<'_>, plaintext: &[u8]) -> Result<Vec<u8>, VaultError>;
    fn open(&self, aad: &Aad<'_>, envelope: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError>;
}

/// A 256-bit data key. No `Debug` that prints it; zeroized on drop.
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// A fresh random key from the operating system.
    pub fn generate() -> Result<Self, VaultError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut_slice()).map_err(|_| VaultError::Random)?;
        Ok(Self(bytes))
    }

    /// The raw key bytes; the one accessor, so a grep finds every use.
    pub fn expose_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

/// A set of versioned data keys; seals with the newest, opens with whichever sealed.
#[derive(Debug, Default)]
pub struct Keyring {
    keys: BTreeMap<u32, DataKey>,
}

impl Keyring {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, version: u32, key: DataKey) {
        self.keys.insert(version, key);
    }

    pub fn current_version(&self) -> Option<u32> {
        self.keys.keys().next_back().copied()
    }

    pub fn versions(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.keys().copied()
    }

    pub fn remove(&mut self, version: u32) -> Option<DataKey> {
        self.keys.remove(&version)
    }

    pub fn contains(&self, version: u32) -> bool {
        self.keys.contains_key(&version)
    }

    /// The key version an envelope was sealed with, without opening it.
    pub fn envelope_key_version(envelope: &[u8]) -> Result<u32, VaultError> {
        Envelope::parse(envelope).map(|parsed| parsed.key_version)
    }
}

impl Sealer for Keyring {
    fn seal(&self, aad: &Aad<'_>, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        let (version, key) = self.keys.iter().next_back().ok_or(VaultError::NoKey)?;
        let associated = aad.encode(FORMAT_VERSION, *version);
        seal_raw(key.expose_bytes(), *version, &associated, plaintext)
    }

    fn open(&self, aad: &Aad<'_>, envelope: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let parsed = Envelope::parse(envelope)?;
        let key = self
            .keys
            .get(&parsed.key_version)
            .ok_or(VaultError::UnknownKeyVersion(parsed.key_version))?;
        let associated = aad.encode(FORMAT_VERSION, parsed.key_version);
        open_raw(key.expose_bytes(), &parsed, &associated)
    }
}

/// A stored envelope split into its parts, without opening it. [`Envelope::parse`] and
/// [`Envelope::to_bytes`] are inverse of each other (the fuzz oracle checks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub key_version: u32,
    pub nonce: &'a [u8; NONCE_LEN],
    /// Ciphertext followed by the 16-byte Poly1305 tag.
    pub ciphertext_and_tag: &'a [u8],
}

impl<'a> Envelope<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, VaultError> {
        let (format, rest) = bytes.split_first().ok_or(VaultError::Malformed)?;
        if *format != FORMAT_VERSION || bytes.len() < MIN_ENVELOPE_LEN {
            return Err(VaultError::Malformed);
        }
        let (version, rest) = rest.split_first_chunk::<4>().ok_or(VaultError::Malformed)?;
        let (nonce, ciphertext_and_tag) = rest
            .split_first_chunk::<NONCE_LEN>()
            .ok_or(VaultError::Malformed)?;
        Ok(Self {
            key_version: u32::from_be_bytes(*version),
            nonce,
            ciphertext_and_tag,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.ciphertext_and_tag.len());
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.key_version.to_be_bytes());
        out.extend_from_slice(self.nonce);
        out.extend_from_slice(self.ciphertext_and_tag);
        out
    }
}

/// Seals `plaintext` under `key` with a fresh random nonce into an envelope labelled `version`.
/// `associated` must already encode `version` (callers build it with their own domain label).
pub(crate) fn seal_raw(
    key: &[u8; 32],
    version: u32,
    associated: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, VaultError> {
    let cipher = XChaCha20Poly1305::new(key.into());
    // 192-bit random nonces: collisions are negligible for any number of writes a broker makes,
    // which is why XChaCha20 rather than ChaCha20 (96-bit) was chosen (sandbox-notes.md §3).
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|_| VaultError::Random)?;
    let ciphertext = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: associated,
            },
        )
        .map_err(|_| VaultError::Authentication)?;
    Ok(Envelope {
        key_version: version,
        nonce: &nonce,
        ciphertext_and_tag: &ciphertext,
    }
    .to_bytes())
}

pub(crate) fn open_raw(
    key: &[u8; 32],
    envelope: &Envelope<'_>,
    associated: &[u8],
) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher
        .decrypt(
            XNonce::from_slice(envelope.nonce),
            Payload {
                msg: envelope.ciphertext_and_tag,
                aad: associated,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| VaultError::Authentication)
}

/// A [`Keyring`] the serving broker can change while others seal and open through it: a new
/// data key is added when an operator rotates, an old one removed once no row uses it.
#[derive(Debug, Default)]
pub struct LiveKeyring {
    inner: RwLock<Keyring>,
}

impl LiveKeyring {
    pub fn new(keyring: Keyring) -> Self {
        Self {
            inner: RwLock::new(keyring),
        }
    }

    /// Runs `f` with the keyring for writing. A poisoned lock is recovered: the keyring is a
    /// map that a panic cannot leave half-updated.
    pub fn update<T>(&self, f: impl FnOnce(&mut Keyring) -> T) -> T {
        let mut guard = self
            .inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    pub fn read<T>(&self, f: impl FnOnce(&Keyring) -> T) -> T {
        let guard = self
            .inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&guard)
    }

    pub fn current_version(&self) -> Option<u32> {
        self.read(Keyring::current_version)
    }

    pub fn versions(&self) -> Vec<u32> {
        self.read(|keyring| keyring.versions().collect())
    }
}

impl Sealer for LiveKeyring {
    fn seal(&self, aad: &Aad<'_>, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        self.read(|keyring| keyring.seal(aad, plaintext))
    }

    fn open(&self, aad: &Aad<'_>, envelope: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        self.read(|keyring| keyring.open(aad, envelope))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring() -> Keyring {
        let mut keyring = Keyring::new();
        keyring.insert(1, DataKey::generate().unwrap());
        keyring
    }

    const AAD: Aad<'static> = Aad {
        table: "upstream_grants",
        column: "access_token",
        row_id: "42",
        user_id: 42,
    };

    #[test]
    fn round_trip() {
        let keyring = keyring();
        let envelope = keyring.seal(&AAD, b"gto_secret").unwrap();
        assert_eq!(
            keyring.open(&AAD, &envelope).unwrap().as_slice(),
            b"gto_secret"
        );
        assert!(!envelope.windows(10).any(|w| w == b"gto_secret"));
    }

    #[test]
    fn envelope_moved_to_another_place_fails() {
        let keyring = keyring();
        let envelope = keyring.seal(&AAD, b"t").unwrap();
        for moved in [
            Aad {
                row_id: "43",
                ..AAD
            },
            Aad { user_id: 7, ..AAD },
            Aad {
                column: "refresh_token",
                ..AAD
            },
            Aad {
                table: "other",
                ..AAD
            },
        ] {
            assert_eq!(
                keyring.open(&moved, &envelope),
                Err(VaultError::Authentication)
            );
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let keyring = keyring();
        let envelope = keyring.seal(&AAD, b"token").unwrap();
        for index in 0..envelope.len() {
            for bit in 0..8 {
                let mut flipped = envelope.clone();
                flipped[index] ^= 1 << bit;
                assert!(
                    keyring.open(&AAD, &flipped).is_err(),
                    "byte {index} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn envelope_parse_and_serialise_are_inverse() {
        let envelope = keyring().seal(&AAD, b"token").unwrap();
        let parsed = Envelope::parse(&envelope).unwrap();
        assert_eq!(parsed.key_version, 1);
        assert_eq!(parsed.to_bytes(), envelope);
        for short in 0..MIN_ENVELOPE_LEN {
            assert_eq!(
                Envelope::parse(&envelope[..short]),
                Err(VaultError::Malformed)
            );
        }
    }

    #[test]
    fn old_versions_stay_readable_and_new_writes_use_the_newest() {
        let live = LiveKeyring::new(keyring());
        let old = live.seal(&AAD, b"token").unwrap();
        live.update(|keyring| keyring.insert(2, DataKey::generate().unwrap()));
        let new = live.seal(&AAD, b"token").unwrap();
        assert_eq!(Keyring::envelope_key_version(&new), Ok(2));
        assert_eq!(live.open(&AAD, &old).unwrap().as_slice(), b"token");
        live.update(|keyring| keyring.remove(1));
        assert_eq!(live.open(&AAD, &old), Err(VaultError::UnknownKeyVersion(1)));
        assert_eq!(live.versions(), vec![2]);
    }

    #[test]
    fn debug_output_never_shows_key_bytes() {
        let key = DataKey::from_bytes([0xAB; 32]);
        let mut keyring = Keyring::new();
        keyring.insert(1, key);
        let debug = format!("{keyring:?}");
        assert!(!debug.to_lowercase().contains("ab, ab"), "{debug}");
        assert!(!debug.contains("171"), "{debug}");
    }

    #[test]
    fn wrong_key_fails() {
        let envelope = keyring().seal(&AAD, b"token").unwrap();
        assert_eq!(
            keyring().open(&AAD, &envelope),
            Err(VaultError::Authentication)
        );
    }
}
