//! `rota service`: load the config, start the agent and the D-Bus service, run until SIGTERM.
use super::{CliResult, Failure};
use std::path::Path;
pub fn run(_config: &Path) -> CliResult {
    Err(Failure::Failed("not implemented yet".into()))
}
