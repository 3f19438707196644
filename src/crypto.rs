//! Sealing secrets and tokens at rest (AES-256-GCM), random tokens, and hashes.
//!
//! Every ciphertext is stored with the id of the key that sealed it, so old keys can stay in the
//! keyring for reading while new writes use the current one. The owner of a value (project and
//! key, or Endpoint) is bound in as associated data: a ciphertext copied to another row fails to open.

use std::io::Write;
use std::path::Path;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("master key must be base64 of exactly 32 bytes")]
    BadKey,
    #[error("no key with id {0} in the keyring")]
    UnknownKey(String),
    #[error("ciphertext failed to open (wrong key, owner or tampered)")]
    Open,
    #[error("master key file: {0}")]
    Io(#[from] std::io::Error),
}

/// A value sealed under a master key: `blob` is the nonce followed by ciphertext and tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub blob: Vec<u8>,
}

struct MasterKey {
    id: String,
    cipher: Aes256Gcm,
}

impl MasterKey {
    fn decode(encoded: &str) -> Result<Self, CryptoError> {
        let bytes = STANDARD.decode(encoded.trim()).map_err(|_| CryptoError::BadKey)?;
        if bytes.len() != 32 {
            return Err(CryptoError::BadKey);
        }
        // The id is a fingerprint, not the key: safe to store beside every ciphertext.
        let id = hex::encode(&Sha256::new().chain_update(b"wearlink-key-id").chain_update(&bytes).finalize()[..8]);
        Ok(Self { id, cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)) })
    }
}

/// The current master key (seals) and any previous ones (open only).
pub struct Keyring {
    current: MasterKey,
    previous: Vec<MasterKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("current", &self.current.id).finish_non_exhaustive()
    }
}

impl Keyring {
    pub fn from_encoded(current: &str, previous: &[String]) -> Result<Self, CryptoError> {
        Ok(Self {
            current: MasterKey::decode(current)?,
            previous: previous.iter().map(|k| MasterKey::decode(k)).collect::<Result<_, _>>()?,
        })
    }

    /// A fresh random key, base64-encoded (the `WEARLINK_MASTER_KEY` format).
    pub fn generate_encoded() -> String {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        STANDARD.encode(key)
    }

    /// Reads the key file, or creates it (mode 0600) when it does not exist yet.
    /// Returns the key and whether it was just created.
    pub fn load_or_create_file(path: &Path) -> Result<(String, bool), CryptoError> {
        match std::fs::read_to_string(path) {
            Ok(key) => Ok((key.trim().to_string(), false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let key = Self::generate_encoded();
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(path)?;
                file.write_all(key.as_bytes())?;
                Ok((key, true))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn current_key_id(&self) -> &str {
        &self.current.id
    }

    pub fn seal(&self, plaintext: &[u8], owner: &str) -> Sealed {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = self
            .current
            .cipher
            .encrypt(&nonce, Payload { msg: plaintext, aad: owner.as_bytes() })
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ciphertext);
        Sealed { key_id: self.current.id.clone(), blob }
    }

    pub fn open(&self, sealed: &Sealed, owner: &str) -> Result<Vec<u8>, CryptoError> {
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == sealed.key_id)
            .ok_or_else(|| CryptoError::UnknownKey(sealed.key_id.clone()))?;
        if sealed.blob.len() < NONCE_LEN {
            return Err(CryptoError::Open);
        }
        let (nonce, ciphertext) = sealed.blob.split_at(NONCE_LEN);
        key.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: owner.as_bytes() })
            .map_err(|_| CryptoError::Open)
    }
}

/// `bytes` random bytes from the OS CSPRNG, base64url without padding.
pub fn random_token(bytes: usize) -> String {
    prefixed_random_token(&[], bytes)
}

/// `prefix`, then `bytes` random bytes from the OS CSPRNG, base64url without padding.
pub fn prefixed_random_token(prefix: &[u8], bytes: usize) -> String {
    let mut buf = vec![0u8; prefix.len() + bytes];
    buf[..prefix.len()].copy_from_slice(prefix);
    OsRng.fill_bytes(&mut buf[prefix.len()..]);
    URL_SAFE_NO_PAD.encode(buf)
}

/// The bytes of a `random_token`, when `token` is one.
pub fn token_bytes(token: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(token).ok()
}

/// Hex SHA-256. Used for high-entropy values only (API tokens, states), where a slow hash adds nothing.
pub fn sha256_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring() -> Keyring {
        Keyring::from_encoded(&Keyring::generate_encoded(), &[]).unwrap()
    }

    #[test]
    fn seal_then_open_round_trips() {
        let ring = keyring();
        let sealed = ring.seal(b"client-secret", "secret:p1:K");
        assert!(!sealed.blob.windows(13).any(|w| w == b"client-secret"));
        assert_eq!(ring.open(&sealed, "secret:p1:K").unwrap(), b"client-secret");
    }

    #[test]
    fn a_ciphertext_moved_to_another_owner_does_not_open() {
        let ring = keyring();
        let sealed = ring.seal(b"x", "secret:p1:K");
        assert!(matches!(ring.open(&sealed, "secret:p2:K"), Err(CryptoError::Open)));
    }

    #[test]
    fn a_tampered_ciphertext_does_not_open() {
        let ring = keyring();
        let mut sealed = ring.seal(b"x", "o");
        let last = sealed.blob.len() - 1;
        sealed.blob[last] ^= 1;
        assert!(matches!(ring.open(&sealed, "o"), Err(CryptoError::Open)));
    }

    #[test]
    fn previous_keys_still_open_after_rotation() {
        let old = Keyring::generate_encoded();
        let sealed = Keyring::from_encoded(&old, &[]).unwrap().seal(b"v", "o");
        let rotated = Keyring::from_encoded(&Keyring::generate_encoded(), &[old]).unwrap();
        assert_eq!(rotated.open(&sealed, "o").unwrap(), b"v");
        assert_ne!(rotated.seal(b"v", "o").key_id, sealed.key_id);
    }

    #[test]
    fn a_short_or_long_key_is_refused() {
        assert!(Keyring::from_encoded(&STANDARD.encode([0u8; 16]), &[]).is_err());
        assert!(Keyring::from_encoded("not base64!", &[]).is_err());
    }

    #[test]
    fn random_tokens_carry_enough_entropy() {
        let a = random_token(32);
        assert_eq!(a.len(), 43);
        assert_ne!(a, random_token(32));
    }
}
