//! Raw master key material and its on-disk form (key file, systemd credential, environment).
//!
//! The form is deliberately strict: standard padded base64 of exactly 32 bytes, optionally
//! followed by one `\n` (what `openssl rand -base64 32 > vault.key` writes). Nothing else is
//! accepted — no whitespace, no comments, no other encodings — so a file that is not a key (a
//! passphrase, a truncated copy) is refused instead of being stretched into some other key.
//! [`parse_key_file`] and [`KeyMaterial::to_key_file`] are inverse of each other; the
//! `key_file` fuzz target checks it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

/// Length of the key in bytes and of its base64 form in characters.
pub const KEY_LEN: usize = 32;
pub const KEY_FILE_BASE64_LEN: usize = 44;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    /// The message never includes the content: it may be a secret that was put in the wrong
    /// place.
    #[error(
        "not a vault key: expected the base64 encoding of {KEY_LEN} random bytes ({KEY_FILE_BASE64_LEN} characters) and at most one trailing newline, found {found_len} bytes"
    )]
    Format { found_len: usize },
    #[error("the operating system's random number generator failed")]
    Random,
}

/// 32 bytes of secret key material; the master key is derived from it with HKDF
/// ([`crate::MasterKey::derive`]). Zeroized on drop; no `Debug` that prints it.
pub struct KeyMaterial(Zeroizing<[u8; KEY_LEN]>);

impl KeyMaterial {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn generate() -> Result<Self, KeyFileError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(bytes.as_mut_slice()).map_err(|_| KeyFileError::Random)?;
        Ok(Self(bytes))
    }

    /// The raw bytes; the one accessor.
    pub fn expose_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The canonical key-file content: base64 and one newline.
    pub fn to_key_file(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(KEY_FILE_BASE64_LEN + 1));
        STANDARD.encode_string(self.0.as_slice(), &mut out);
        out.push('\n');
        out
    }
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyMaterial([redacted])")
    }
}

impl PartialEq for KeyMaterial {
    /// Constant time, so comparing keys (tests, the fuzz oracle) leaks nothing by timing.
    fn eq(&self, other: &Self) -> bool {
        subtle::ConstantTimeEq::ct_eq(self.0.as_slice(), other.0.as_slice()).into()
    }
}

/// Parses a key file (or credential, or environment value). See the module comment.
pub fn parse_key_file(content: &[u8]) -> Result<KeyMaterial, KeyFileError> {
    let format = KeyFileError::Format {
        found_len: content.len(),
    };
    let encoded = content.strip_suffix(b"\n").unwrap_or(content);
    if encoded.len() != KEY_FILE_BASE64_LEN {
        return Err(format);
    }
    let mut decoded = Zeroizing::new([0u8; KEY_LEN + 2]);
    // base64's standard engine rejects non-canonical padding and trailing bits, so every
    // accepted input is the one encoding of its key.
    let written = STANDARD
        .decode_slice(encoded, decoded.as_mut_slice())
        .map_err(|_| format)?;
    let bytes: [u8; KEY_LEN] = decoded
        .get(..written)
        .and_then(|slice| slice.try_into().ok())
        .ok_or(format)?;
    Ok(KeyMaterial::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_through_the_file_form() {
        let key = KeyMaterial::generate().unwrap();
        let file = key.to_key_file();
        assert_eq!(file.len(), KEY_FILE_BASE64_LEN + 1);
        assert!(parse_key_file(file.as_bytes()).unwrap() == key);
        let without_newline = file.trim_end_matches('\n');
        assert!(parse_key_file(without_newline.as_bytes()).unwrap() == key);
    }

    #[test]
    fn anything_else_is_refused_without_echoing_it() {
        let good = KeyMaterial::from_bytes([7; 32]).to_key_file().to_string();
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"correct horse battery staple".to_vec(),
            format!("{good}\n").into_bytes(),
            format!(" {good}").into_bytes(),
            good.replace('\n', "\r\n").into_bytes(),
            // 33 bytes encoded: 44 characters without padding.
            STANDARD.encode([1u8; 33]).into_bytes(),
            // Non-canonical trailing bits: 'c' -> 'd' in the last data character.
            good.trim_end().replace("wc=", "wd=").into_bytes(),
        ];
        for case in cases {
            let error = parse_key_file(&case).unwrap_err();
            let message = error.to_string();
            assert!(!message.contains("horse"), "{message}");
        }
    }

    #[test]
    fn debug_is_redacted() {
        let key = KeyMaterial::from_bytes([0x41; 32]);
        assert_eq!(format!("{key:?}"), "KeyMaterial([redacted])");
    }
}
