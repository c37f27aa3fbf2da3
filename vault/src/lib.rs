//! Forgejo tokens encrypted at rest (issue #5; ARCHITECTURE.md §3; sandbox-notes.md §3).
//!
//! This crate is the cryptography and the formats, with no I/O: [`envelope`] (how a sealed
//! value is laid out and bound to its row), [`master`] (the key-encryption key that wraps the
//! data keys), [`keyfile`] (the on-disk form of raw key material) and [`kdf`] (passphrases
//! stretched with Argon2id). Reading key sources, storing wrapped keys in SQLite and rotating
//! live in the broker's `keystore` module.
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

pub mod envelope;
/// Fuzz oracles: only in tests and `cargo fuzz` builds (`--cfg fuzzing`), never in the broker.
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzzing;
pub mod kdf;
pub mod keyfile;
pub mod master;

pub use envelope::{
    Aad, DataKey, Envelope, FORMAT_VERSION, Keyring, LiveKeyring, MIN_ENVELOPE_LEN, Sealer,
    VaultError,
};
pub use kdf::{KdfError, KdfParams, Passphrase, SALT_LEN};
pub use keyfile::{KeyFileError, KeyMaterial, parse_key_file};
pub use master::MasterKey;
