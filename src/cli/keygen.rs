//! `rota keygen`.
use super::{CliResult, Failure};
use std::path::Path;
pub fn run(_out_dir: &Path, _name: &str) -> CliResult {
    Err(Failure::Failed("not implemented yet".into()))
}
