//! `rota install|cancel|status|mark|poll`: D-Bus clients of the running service.
use super::{CliResult, Failure};
pub fn install(
    _source: &str,
    _json: bool,
    _force_version: bool,
    _ignore_compatible: bool,
    _reboot: bool,
) -> CliResult {
    Err(Failure::Failed("not implemented yet".into()))
}
pub fn cancel() -> CliResult {
    Err(Failure::Failed("not implemented yet".into()))
}
pub fn status(_json: bool) -> CliResult {
    Err(Failure::Failed("not implemented yet".into()))
}
pub fn mark(_state: &str, _slot: &str) -> CliResult {
    Err(Failure::Failed("not implemented yet".into()))
}
pub fn poll() -> CliResult {
    Err(Failure::Failed("not implemented yet".into()))
}
