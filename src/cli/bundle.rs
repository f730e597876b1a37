//! `rota bundle create|info|verify`.
use super::{CliResult, Failure};
use std::path::{Path, PathBuf};
pub fn create(_dir: &Path, _out: &Path, _key: &Path, _chunk_size: Option<u32>) -> CliResult {
    Err(Failure::Failed("not implemented yet".into()))
}
pub fn info(_bundle: &Path, _keyring: &[PathBuf], _json: bool) -> CliResult {
    Err(Failure::Failed("not implemented yet".into()))
}
pub fn verify(_bundle: &Path, _keyring: &[PathBuf]) -> CliResult {
    Err(Failure::Failed("not implemented yet".into()))
}
