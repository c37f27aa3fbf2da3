//! Random tokens, hashes of tokens and constant-time comparison.
//!
//! Secrets the broker holds in memory are [`secrecy::SecretString`] (zeroized on drop, no
//! `Debug`/`Display` that prints them, one accessor `expose_secret()` that a grep finds).
//! Tokens the broker issues are stored only as SHA-256 hashes ([`hash_token`]).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
pub use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed")]
pub struct RandomError;

/// `bytes` random bytes from the OS, base64url without padding.
pub fn random_token(bytes: usize) -> Result<SecretString, RandomError> {
    let mut buffer = zeroize::Zeroizing::new(vec![0u8; bytes]);
    getrandom::fill(&mut buffer).map_err(|_| RandomError)?;
    Ok(SecretString::from(
        URL_SAFE_NO_PAD.encode(buffer.as_slice()),
    ))
}

/// A random identifier that is not a secret (session ids are secrets; client ids are not).
pub fn random_id(bytes: usize) -> Result<String, RandomError> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).map_err(|_| RandomError)?;
    Ok(URL_SAFE_NO_PAD.encode(buffer))
}

/// The stored form of a broker-issued token: hex SHA-256. Tokens are 256-bit random values, so
/// a plain hash (no salt, no KDF) is the right tool: there is nothing to brute-force.
pub fn hash_token(token: &str) -> String {
    to_hex(&Sha256::digest(token.as_bytes()))
}

/// Lowercase hex of `bytes`, spelled as `hex::encode` spells it, but written into one buffer
/// instead of being collected a `char` at a time (which showed in the per-request profile:
/// every request hashes its token and its session id).
pub fn to_hex(bytes: &[u8]) -> String {
    let mut out = vec![0; bytes.len() * 2];
    // The buffer is exactly twice the input, the one length `encode_to_slice` accepts.
    let _ = hex::encode_to_slice(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Constant-time equality for secrets of possibly different lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// base64url(SHA-256(verifier)), the PKCE S256 transform (RFC 7636 §4.2).
pub fn pkce_s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn to_hex_spells_bytes_as_hex_encode_does() {
        for bytes in [&b""[..], &[0x00], &[0xff, 0x0a, 0xb0], &[0x5a; 32]] {
            assert_eq!(super::to_hex(bytes), hex::encode(bytes));
        }
        assert_eq!(super::to_hex(&[0xde, 0xad, 0x01]), "dead01");
    }

    use super::*;

    #[test]
    fn random_tokens_differ_and_have_the_asked_entropy() {
        let a = random_token(32).unwrap();
        let b = random_token(32).unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(a.expose_secret().len(), 43);
    }

    #[test]
    fn pkce_matches_an_independent_sha256_implementation() {
        assert_eq!(
            pkce_s256("dBjftJeZ4CVP-mJ0q7Jtw8xQrB9DK3mZ8IHb3wR2gNc"),
            "0y4XsySJlw8Iz18xJ8QGT_GBY7Gl2mLvq3o9DmA9NtM" // python3 hashlib
        );
    }

    #[test]
    fn constant_time_eq_handles_lengths() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn secret_debug_does_not_print_the_secret() {
        let s = SecretString::from("hunter2-very-secret".to_string());
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
