//! The signed manifest (`manifest.toml` inside a bundle) and the hand-written input
//! manifest that `rota bundle create` reads.

use serde::{Deserialize, Serialize};

/// Manifest format version written by this rota.
pub const FORMAT: u32 = 1;

/// The manifest inside a bundle, exactly as signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub update: UpdateInfo,
    #[serde(rename = "image", default)]
    pub images: Vec<ImageEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UpdateInfo {
    pub compatible: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// When and how the bundle was built (free text, e.g. an RFC 3339 time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
}

/// Where an image goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageTarget {
    /// The inactive slot of this class.
    SlotClass(String),
    /// The MCU node of this name.
    Mcu(String),
}

impl std::fmt::Display for ImageTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageTarget::SlotClass(c) => write!(f, "slot class {c}"),
            ImageTarget::Mcu(m) => write!(f, "MCU {m}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ImageEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcu: Option<String>,
    /// Tar member holding the image.
    pub file: String,
    pub size: u64,
    /// Lower-case hex SHA-256 of the whole image.
    pub sha256: String,
    /// CRC-32 (IEEE) of the whole image.
    pub crc32: u32,
    pub chunk_size: u32,
    /// Lower-case hex SHA-256 of the `<file>.chunks` member.
    pub chunks_sha256: String,
}

impl ImageEntry {
    /// The target, once the manifest has been validated (exactly one of slot-class / mcu).
    pub fn target(&self) -> ImageTarget {
        match (&self.slot_class, &self.mcu) {
            (Some(c), _) => ImageTarget::SlotClass(c.clone()),
            (None, Some(m)) => ImageTarget::Mcu(m.clone()),
            (None, None) => ImageTarget::SlotClass(String::new()),
        }
    }

    /// Tar member name of this image's chunk index.
    pub fn chunks_file(&self) -> String {
        format!("{}{}", self.file, super::CHUNKS_SUFFIX)
    }
}

impl Manifest {
    pub fn version(&self) -> Result<semver::Version, super::BundleError> {
        semver::Version::parse(&self.update.version).map_err(|e| {
            super::BundleError::Manifest(format!(
                "version {:?} is not semver: {e}",
                self.update.version
            ))
        })
    }
}
