//! Passphrases stretched with Argon2id (RFC 9106) into key material.
//!
//! The parameters and the salt are stored beside the wrapped data keys, so a vault opens with
//! the parameters it was created with, and an operator can raise them later by re-wrapping
//! (`vault rotate-master-key`) without touching any row.

use zeroize::Zeroizing;

use crate::keyfile::{KEY_LEN, KeyMaterial};

pub const SALT_LEN: usize = 16;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KdfParams {
    /// RFC 9106 §4, second recommended option (for memory-constrained environments):
    /// Argon2id, t=3, p=4, m=64 MiB. The broker derives its master key once per start, so this
    /// costs well under a second there and nothing afterwards.
    pub const RFC9106_SECOND: Self = Self {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 4,
    };

    /// True if every cost is at least `other`'s.
    pub fn at_least(&self, other: &Self) -> bool {
        self.memory_kib >= other.memory_kib
            && self.iterations >= other.iterations
            && self.parallelism >= other.parallelism
    }

    fn argon2(&self) -> Result<argon2::Argon2<'static>, KdfError> {
        let params = argon2::Params::new(
            self.memory_kib,
            self.iterations,
            self.parallelism,
            Some(KEY_LEN),
        )
        .map_err(|error| KdfError::Params(error.to_string()))?;
        Ok(argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            params,
        ))
    }

    /// Checks the parameters are acceptable to Argon2 without deriving anything.
    pub fn check(&self) -> Result<(), KdfError> {
        self.argon2().map(|_| ())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KdfError {
    #[error("invalid Argon2id parameters: {0}")]
    Params(String),
    #[error("Argon2id failed: {0}")]
    Derive(String),
    #[error("the passphrase is empty")]
    EmptyPassphrase,
    #[error("the passphrase is not UTF-8")]
    NotUtf8,
    #[error("the operating system's random number generator failed")]
    Random,
}

/// A passphrase; zeroized on drop, no `Debug` that prints it.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// From the content of a passphrase file: UTF-8, one trailing newline removed.
    pub fn from_file_content(content: Zeroizing<Vec<u8>>) -> Result<Self, KdfError> {
        let text = std::str::from_utf8(&content).map_err(|_| KdfError::NotUtf8)?;
        let text = text
            .strip_suffix('\n')
            .map(|line| line.strip_suffix('\r').unwrap_or(line))
            .unwrap_or(text);
        if text.is_empty() {
            return Err(KdfError::EmptyPassphrase);
        }
        Ok(Self(Zeroizing::new(text.to_owned())))
    }

    /// The passphrase; the one accessor.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase([redacted])")
    }
}

/// A fresh random salt (128 bits, RFC 9106 §3.1 recommends 16 bytes).
pub fn generate_salt() -> Result<[u8; SALT_LEN], KdfError> {
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt).map_err(|_| KdfError::Random)?;
    Ok(salt)
}

/// Argon2id(passphrase, salt, params) → 32 bytes of key material.
pub fn stretch_passphrase(
    passphrase: &Passphrase,
    params: &KdfParams,
    salt: &[u8; SALT_LEN],
) -> Result<KeyMaterial, KdfError> {
    let argon2 = params.argon2()?;
    // The working memory (64 MiB by default) holds blocks computed from the passphrase, from
    // which the output follows without it. `hash_password_into` allocates it as a plain `Vec`
    // and frees it as it is; this buffer is zeroized on drop (argon2's `zeroize` feature makes
    // `Block: Zeroize`), so the freed pages do not keep it for a later allocation or a core
    // dump to find.
    let mut memory = Zeroizing::new(vec![
        argon2::Block::default();
        argon2.params().block_count()
    ]);
    let mut output = Zeroizing::new([0u8; KEY_LEN]);
    argon2
        .hash_password_into_with_memory(
            passphrase.expose_secret().as_bytes(),
            salt,
            output.as_mut_slice(),
            memory.as_mut_slice(),
        )
        .map_err(|error| KdfError::Derive(error.to_string()))?;
    Ok(KeyMaterial::from_bytes(*output))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn passphrase(text: &str) -> Passphrase {
        Passphrase::from_file_content(Zeroizing::new(text.as_bytes().to_vec())).unwrap()
    }

    #[test]
    fn the_same_inputs_give_the_same_key_and_any_change_another() {
        let salt = [1u8; SALT_LEN];
        let base = stretch_passphrase(&passphrase("hunter2 hunter2"), &SMALL, &salt).unwrap();
        let again = stretch_passphrase(&passphrase("hunter2 hunter2\n"), &SMALL, &salt).unwrap();
        assert!(
            base == again,
            "a trailing newline is not part of the passphrase"
        );
        let others = [
            stretch_passphrase(&passphrase("hunter2 hunter3"), &SMALL, &salt).unwrap(),
            stretch_passphrase(&passphrase("hunter2 hunter2"), &SMALL, &[2u8; SALT_LEN]).unwrap(),
            stretch_passphrase(
                &passphrase("hunter2 hunter2"),
                &KdfParams {
                    iterations: 2,
                    ..SMALL
                },
                &salt,
            )
            .unwrap(),
            stretch_passphrase(
                &passphrase("hunter2 hunter2"),
                &KdfParams {
                    memory_kib: 128,
                    ..SMALL
                },
                &salt,
            )
            .unwrap(),
        ];
        for other in others {
            assert!(base != other);
        }
    }

    #[test]
    fn matches_the_argon2_reference_implementation() {
        // RFC 9106 §5.3's vector uses a secret and associated data, which the broker does not;
        // instead compare with the reference implementation's CLI (Debian package `argon2`):
        // `echo -n password | argon2 somesaltsomesalt -id -t 2 -k 64 -p 1 -l 32 -r`.
        let key = stretch_passphrase(
            &passphrase("password"),
            &KdfParams {
                memory_kib: 64,
                iterations: 2,
                parallelism: 1,
            },
            b"somesaltsomesalt",
        )
        .unwrap();
        assert_eq!(
            hex(key.expose_bytes()),
            "1a98fba8e6394425c9bdc333a9c750aaf811df070f5fb4a5788e1cf4db5793a1"
        );
    }

    #[test]
    fn several_lanes_give_the_known_key() {
        let key = stretch_passphrase(
            &passphrase("password"),
            &KdfParams {
                memory_kib: 256,
                iterations: 2,
                parallelism: 4,
            },
            b"somesaltsomesalt",
        )
        .unwrap();
        // The value the crate's own allocating `hash_password_into` gave before the working
        // memory became ours to zeroize: the derivation must not change with it.
        assert_eq!(
            hex(key.expose_bytes()),
            "e42674cb8105a3c6863674ceab28f466fdcbcbffc512caf46cf67a0469c43bd5"
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn bad_parameters_and_passphrases_are_refused() {
        assert!(
            KdfParams {
                memory_kib: 1,
                ..SMALL
            }
            .check()
            .is_err()
        );
        assert!(KdfParams::RFC9106_SECOND.check().is_ok());
        assert!(KdfParams::RFC9106_SECOND.at_least(&SMALL));
        assert!(!SMALL.at_least(&KdfParams::RFC9106_SECOND));
        assert!(matches!(
            Passphrase::from_file_content(Zeroizing::new(b"\n".to_vec())),
            Err(KdfError::EmptyPassphrase)
        ));
        assert!(matches!(
            Passphrase::from_file_content(Zeroizing::new(vec![0xff, 0xfe])),
            Err(KdfError::NotUtf8)
        ));
        assert_eq!(
            format!("{:?}", passphrase("hunter2")),
            "Passphrase([redacted])"
        );
    }
}
