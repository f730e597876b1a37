//! ed25519 keys in PEM — private keys PKCS#8 (as `openssl genpkey -algorithm ed25519`
//! writes them), public keys SPKI (as `openssl pkey -pubout` writes them) — and the
//! keyring of trusted public keys (several, for key rotation).

use super::BundleError;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey, KeypairBytes};
use ed25519_dalek::{Signature, SigningKey, Verifier, VerifyingKey};
use std::path::{Path, PathBuf};

/// Short, stable name of a public key for messages: first 8 bytes of SHA-256 of the raw key, hex.
pub type KeyId = String;

/// Largest key file read (a PEM key is ~120 bytes).
const MAX_KEY_FILE: u64 = 64 * 1024;

pub fn key_id(key: &VerifyingKey) -> KeyId {
    hex::encode(&super::digest::sha256(key.as_bytes())[..8])
}

fn read_pem(path: &Path) -> Result<String, BundleError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| BundleError::Key(format!("{}: {e}", path.display())))?;
    if meta.len() > MAX_KEY_FILE {
        return Err(BundleError::Key(format!(
            "{}: {} bytes is too large for a PEM key",
            path.display(),
            meta.len()
        )));
    }
    std::fs::read_to_string(path).map_err(|e| BundleError::Key(format!("{}: {e}", path.display())))
}

/// A fresh key from the operating system's random source.
pub fn generate() -> Result<SigningKey, BundleError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| BundleError::Key(format!("no randomness for a new key: {e}")))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// PKCS#8 v1 PEM (no embedded public key), the form OpenSSL writes.
pub fn signing_key_pem(key: &SigningKey) -> Result<String, BundleError> {
    let bytes = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    bytes
        .to_pkcs8_pem(LineEnding::LF)
        .map(|z| z.to_string())
        .map_err(|e| BundleError::Key(format!("cannot encode private key: {e}")))
}

pub fn verifying_key_pem(key: &VerifyingKey) -> Result<String, BundleError> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| BundleError::Key(format!("cannot encode public key: {e}")))
}

/// Writes `NAME.key.pem` (mode 0600) and `NAME.pub.pem` into `dir`; refuses to overwrite.
pub fn write_keypair(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), BundleError> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(BundleError::Key(format!(
            "key name {name:?} must be a plain file name"
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| BundleError::Key(format!("{}: {e}", dir.display())))?;
    let key = generate()?;
    let priv_path = dir.join(format!("{name}.key.pem"));
    let pub_path = dir.join(format!("{name}.pub.pem"));
    for p in [&priv_path, &pub_path] {
        if p.exists() {
            return Err(BundleError::Key(format!(
                "{} exists; not overwriting a key",
                p.display()
            )));
        }
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&priv_path)
        .map_err(|e| BundleError::Key(format!("{}: {e}", priv_path.display())))?;
    f.write_all(signing_key_pem(&key)?.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| BundleError::Key(format!("{}: {e}", priv_path.display())))?;
    crate::fsutil::write_atomic_mode(
        &pub_path,
        verifying_key_pem(&key.verifying_key())?.as_bytes(),
        0o644,
    )
    .map_err(|e| BundleError::Key(format!("{}: {e}", pub_path.display())))?;
    Ok((priv_path, pub_path))
}

pub fn load_signing_key(path: &Path) -> Result<SigningKey, BundleError> {
    let pem = read_pem(path)?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
        BundleError::Key(format!(
            "{}: not an ed25519 private key in PKCS#8 PEM ({e})",
            path.display()
        ))
    })
}

pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, BundleError> {
    let pem = read_pem(path)?;
    VerifyingKey::from_public_key_pem(&pem).map_err(|e| {
        BundleError::Key(format!(
            "{}: not an ed25519 public key in SPKI PEM ({e})",
            path.display()
        ))
    })
}

/// Trusted public keys (several allow key rotation).
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    keys: Vec<(KeyId, VerifyingKey)>,
}

impl Keyring {
    /// Loads every PEM public key named; any unreadable key is an error.
    pub fn load(paths: &[PathBuf]) -> Result<Keyring, BundleError> {
        let keys = paths
            .iter()
            .map(|p| load_verifying_key(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_keys(keys))
    }

    pub fn from_keys(keys: Vec<VerifyingKey>) -> Keyring {
        Keyring {
            keys: keys.into_iter().map(|k| (key_id(&k), k)).collect(),
        }
    }

    pub fn ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(|(id, _)| id.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The id of the key whose signature `sig` over `msg` is, or an error naming the keys tried.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<KeyId, BundleError> {
        let sig = Signature::from_slice(sig).map_err(|_| {
            BundleError::Signature(format!(
                "signature is {} bytes, an ed25519 signature is 64",
                sig.len()
            ))
        })?;
        for (id, key) in &self.keys {
            if key.verify(msg, &sig).is_ok() {
                return Ok(id.clone());
            }
        }
        Err(BundleError::Signature(format!(
            "the manifest signature does not match any of the {} key(s) in the keyring (ids {})",
            self.keys.len(),
            self.ids().join(", ")
        )))
    }
}
