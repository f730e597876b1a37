//! ed25519 keys in PEM (PKCS#8 private, SPKI public) and the keyring of trusted keys.

/// Short, stable name of a public key for messages: first 8 bytes of SHA-256 of the raw key, hex.
pub type KeyId = String;

/// Trusted public keys (several allow key rotation).
#[derive(Debug, Clone, Default)]
pub struct Keyring {}

impl Keyring {
    pub fn load(_paths: &[std::path::PathBuf]) -> Result<Keyring, super::BundleError> {
        Ok(Keyring {})
    }
    pub fn is_empty(&self) -> bool {
        true
    }
}
