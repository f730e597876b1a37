//! The U-Boot environment (placeholder until the codec lands: same public API).
use std::collections::BTreeMap;
use std::path::Path;

pub type EnvVars = BTreeMap<String, String>;

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("{0}")]
    Invalid(String),
}

pub struct UbootEnv {}

impl UbootEnv {
    pub fn open(_fw_env_config: &Path) -> Result<Self, EnvError> {
        Err(EnvError::Invalid("U-Boot env support not built yet".into()))
    }
    pub fn read(&self) -> Result<EnvVars, EnvError> {
        Err(EnvError::Invalid("U-Boot env support not built yet".into()))
    }
    pub fn update<F: FnOnce(&mut EnvVars) -> Result<(), EnvError>>(
        &self,
        _f: F,
    ) -> Result<EnvVars, EnvError> {
        Err(EnvError::Invalid("U-Boot env support not built yet".into()))
    }
}
