//! `rota keygen --out-dir DIR --name NAME`: an ed25519 key pair in PEM.

use super::{CliResult, Failure};
use std::path::Path;

pub fn run(out_dir: &Path, name: &str) -> CliResult {
    let (key, pubkey) = crate::bundle::keys::write_keypair(out_dir, name)
        .map_err(|e| Failure::Failed(e.to_string()))?;
    let id = crate::bundle::keys::load_verifying_key(&pubkey)
        .map(|k| crate::bundle::keys::key_id(&k))
        .map_err(|e| Failure::Failed(e.to_string()))?;
    println!("private key: {} (keep it secret)", key.display());
    println!(
        "public key:  {} (id {id}; put it in [keyring] paths)",
        pubkey.display()
    );
    Ok(())
}
