//! Opening a bundle from any [`ByteSource`](crate::source::ByteSource): manifest and
//! signature first, then the tar headers, so nothing unsigned is trusted.

use super::Manifest;
use std::collections::BTreeMap;

/// A tar member's data location inside the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// Offset of the member's first data byte in the bundle.
    pub offset: u64,
    pub size: u64,
}

/// A bundle whose manifest signature has been verified against the keyring.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub manifest: Manifest,
    /// Lower-case hex SHA-256 of the manifest bytes: the bundle's identity.
    pub manifest_hash: String,
    /// Id of the keyring key that verified the signature.
    pub signer: super::KeyId,
    pub members: BTreeMap<String, Member>,
    /// Total bundle size in bytes.
    pub size: u64,
}
