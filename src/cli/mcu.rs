//! `rota mcu list|state|relay`.
use super::{CliResult, Failure, McuCommand};
use std::path::Path;
pub fn run(_config: &Path, _cmd: McuCommand) -> CliResult {
    Err(Failure::Failed("not implemented yet".into()))
}
