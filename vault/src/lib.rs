//! Forgejo tokens encrypted at rest (issue #5; ARCHITECTURE.md §3; sandbox-notes.md §3).
//!
//! Every stored upstream secret is a sealed *envelope*:
//!
//! ```text
//! format (1 byte = 1) | key version (u32 BE) | nonce (24 bytes) | XChaCha20-Poly1305 ciphertext+tag
//! ```
//!
//! The associated data binds the envelope to where it lives ([`Aad`]: table, column, row id,
//! user id) and to the format and key version, so a ciphertext copied to another row, user or
//! column fails to open.
#![forbid(unsafe_code)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use std::collections::BTreeMap;
use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

pub const FORMAT_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
const TAG_LEN: usize = 16;

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

    /// The key version an envelope was sealed with, without opening it.
    pub fn envelope_key_version(envelope: &[u8]) -> Result<u32, VaultError> {
        let (format, rest) = envelope.split_first().ok_or(VaultError::Malformed)?;
        if *format != FORMAT_VERSION || envelope.len() < HEADER_LEN + TAG_LEN {
            return Err(VaultError::Malformed);
        }
        let version: [u8; 4] = rest
            .get(..4)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(VaultError::Malformed)?;
        Ok(u32::from_be_bytes(version))
    }
}

impl Sealer for Keyring {
    fn seal(&self, aad: &Aad<'_>, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        let (version, key) = self.keys.iter().next_back().ok_or(VaultError::NoKey)?;
        let cipher = XChaCha20Poly1305::new(key.expose_bytes().into());
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| VaultError::Random)?;
        let associated = aad.encode(FORMAT_VERSION, *version);
        let ciphertext = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &associated,
                },
            )
            .map_err(|_| VaultError::Authentication)?;
        let mut envelope = Vec::with_capacity(HEADER_LEN + ciphertext.len());
        envelope.push(FORMAT_VERSION);
        envelope.extend_from_slice(&version.to_be_bytes());
        envelope.extend_from_slice(&nonce);
        envelope.extend_from_slice(&ciphertext);
        Ok(envelope)
    }

    fn open(&self, aad: &Aad<'_>, envelope: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let version = Self::envelope_key_version(envelope)?;
        let key = self
            .keys
            .get(&version)
            .ok_or(VaultError::UnknownKeyVersion(version))?;
        let nonce = envelope.get(5..HEADER_LEN).ok_or(VaultError::Malformed)?;
        let ciphertext = envelope.get(HEADER_LEN..).ok_or(VaultError::Malformed)?;
        let cipher = XChaCha20Poly1305::new(key.expose_bytes().into());
        let associated = aad.encode(FORMAT_VERSION, version);
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &associated,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| VaultError::Authentication)
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
    fn wrong_key_fails() {
        let envelope = keyring().seal(&AAD, b"token").unwrap();
        assert_eq!(
            keyring().open(&AAD, &envelope),
            Err(VaultError::Authentication)
        );
    }
}
