//! Fuzz oracles for the vault's parsers, shared by the `fuzz/` targets (cargo-fuzz) and by a
//! unit test that replays every committed corpus file, so CI covers them on stable Rust.
//!
//! Each oracle panics when a property is violated; the fuzzer reports that as a crash. They
//! check properties, not only "does not panic" (sandbox-notes.md §5.1).

use base64::Engine as _;

use crate::envelope::{Aad, DataKey, Envelope, Keyring, MIN_ENVELOPE_LEN, Sealer, VaultError};
use crate::keyfile::{KEY_FILE_BASE64_LEN, KeyMaterial, parse_key_file};
use crate::master::MasterKey;

fn fixed_keyring() -> Keyring {
    let mut keyring = Keyring::new();
    keyring.insert(1, DataKey::from_bytes([0x11; 32]));
    keyring.insert(7, DataKey::from_bytes([0x77; 32]));
    keyring
}

fn aad_from(data: &[u8]) -> (String, i64) {
    let row = data.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let user = data.first().map_or(0, |b| i64::from(*b));
    (row, user)
}

/// Stored envelope parser: `parse` and `to_bytes` are inverse; a parse failure means the input
/// really is too short or of another format; opening arbitrary bytes never panics and only
/// succeeds for a genuine envelope; sealing the input and opening it gives it back.
pub fn envelope_oracle(data: &[u8]) {
    match Envelope::parse(data) {
        Ok(envelope) => {
            assert_eq!(envelope.to_bytes(), data, "parse then serialise differs");
            assert_eq!(
                Keyring::envelope_key_version(data),
                Ok(envelope.key_version)
            );
        }
        Err(error) => {
            assert_eq!(error, VaultError::Malformed);
            assert!(data.len() < MIN_ENVELOPE_LEN || data.first() != Some(&1));
        }
    }

    let keyring = fixed_keyring();
    let (row, user) = aad_from(data);
    let aad = Aad {
        table: "fuzz",
        column: "value",
        row_id: &row,
        user_id: user,
    };
    if let Ok(plaintext) = keyring.open(&aad, data) {
        // Only a real envelope under the fixed keys opens (corpus seeds contain some): sealing
        // its plaintext again must round-trip too.
        let resealed = keyring.seal(&aad, &plaintext).unwrap_or_default();
        assert_eq!(
            keyring.open(&aad, &resealed).ok().as_deref(),
            Some(&*plaintext)
        );
    }
    let master = MasterKey::derive(&KeyMaterial::from_bytes([0x42; 32]));
    let _ = master.unwrap_data_key(1, data);
    let _ = master.verify_key_check(data);

    let sealed = keyring.seal(&aad, data).unwrap_or_default();
    assert_eq!(Keyring::envelope_key_version(&sealed), Ok(7));
    assert_eq!(
        keyring
            .open(&aad, &sealed)
            .ok()
            .as_deref()
            .map(Vec::as_slice),
        Some(data)
    );
    if let Some(bit) = data.first().map(|b| usize::from(*b)) {
        let mut flipped = sealed.clone();
        let index = bit % flipped.len().max(1);
        if let Some(byte) = flipped.get_mut(index) {
            *byte ^= 1 << (bit % 8);
        }
        assert!(keyring.open(&aad, &flipped).is_err(), "bit flip undetected");
    }
}

/// Key-file parser: accepted inputs are exactly the canonical encodings (with or without one
/// newline); serialising what was parsed gives the input back.
pub fn key_file_oracle(data: &[u8]) {
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let model_accepts = body.len() == KEY_FILE_BASE64_LEN
        && base64::engine::general_purpose::STANDARD
            .decode(body)
            .is_ok_and(|bytes| bytes.len() == 32);
    match parse_key_file(data) {
        Ok(key) => {
            assert!(model_accepts, "accepted a non-canonical key file");
            let serialised = key.to_key_file();
            assert_eq!(serialised.as_bytes().strip_suffix(b"\n"), Some(body));
            assert!(parse_key_file(serialised.as_bytes()).is_ok_and(|again| again == key));
        }
        Err(error) => {
            assert!(!model_accepts, "refused a canonical key file");
            // The error carries the length only, never content (it may be a misplaced
            // secret). A substring check would be wrong: the fuzzer found an input that *is*
            // a piece of the message (artifacts/key_file/crash-9eb0…).
            assert_eq!(
                error,
                crate::keyfile::KeyFileError::Format {
                    found_len: data.len()
                }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Replays every file under `fuzz/corpus/<target>/` and `fuzz/artifacts/<target>/`.
    fn replay(target: &str, oracle: fn(&[u8])) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut replayed = 0;
        for dir in ["corpus", "artifacts"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| oracle(&data));
                assert!(outcome.is_ok(), "{} violates the oracle", path.display());
                replayed += 1;
            }
        }
        assert!(replayed >= 5, "only {replayed} corpus files for {target}");
    }

    #[test]
    fn envelope_corpus_replays() {
        replay("envelope", envelope_oracle);
    }

    #[test]
    fn key_file_corpus_replays() {
        replay("key_file", key_file_oracle);
    }
}
