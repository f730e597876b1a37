//! Client side of `io.rota.Agent1`, used by the `rota` CLI.

use std::collections::HashMap;
use zbus::zvariant::Value;

#[zbus::proxy(
    interface = "io.rota.Agent1",
    default_service = "io.rota",
    default_path = "/io/rota"
)]
pub trait Agent1 {
    fn install(&self, source: &str, options: HashMap<&str, Value<'_>>) -> zbus::Result<String>;
    fn estimate_download(
        &self,
        source: &str,
        options: HashMap<&str, Value<'_>>,
    ) -> zbus::Result<(u64, u64, u64, u64)>;
    fn cancel(&self) -> zbus::Result<()>;
    fn mark(&self, state: &str, slot: &str) -> zbus::Result<(String, String)>;
    fn get_status(&self) -> zbus::Result<String>;
    fn poll(&self) -> zbus::Result<()>;
    #[zbus(property)]
    #[allow(clippy::type_complexity)]
    fn progress(&self) -> zbus::Result<(u32, String, u64, u64, u64, u64, u64, u64)>;
    #[zbus(property)]
    fn operation(&self) -> zbus::Result<String>;
    #[zbus(signal)]
    fn completed(&self, transaction: String, result: i32, message: String) -> zbus::Result<()>;
}
