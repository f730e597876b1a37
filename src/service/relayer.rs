//! Relays the MCU images an install staged, at the moment the ordering decision in
//! [`crate::mcu`] names: once that install is good — marked good after the reboot into
//! its new rootfs, or at once when the bundle had no slot to boot. A rollback (or a
//! failed or cancelled install) drops them instead, so the MCUs stay on the firmware the
//! running rootfs was shipped with.
//!
//! It looks at start-up (a relay cut short by a restart, or a node that was unreachable,
//! is tried again) and whenever the agent says [`AgentEvent::McuRelayDue`]. Each node is
//! relayed on its own task through its D-Bus object, so progress shows on
//! `/io/rota/mcu/<name>` and a slow node holds up neither the others nor the agent.

use crate::agent::{AgentEvent, AgentHandle};
use crate::mcu::staging;
use crate::model::UpdateResult;
use crate::service::mcu::McuBus;
use std::path::PathBuf;
use tokio::sync::broadcast::error::RecvError;

/// Starts the relayer task.
pub fn spawn(agent: AgentHandle, mcu: McuBus, data_dir: PathBuf) -> tokio::task::JoinHandle<()> {
    let mut events = agent.subscribe();
    tokio::spawn(async move {
        loop {
            relay_if_due(&agent, &mcu, &data_dir).await;
            loop {
                match events.recv().await {
                    Ok(AgentEvent::McuRelayDue) => break,
                    Ok(_) | Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                }
            }
        }
    })
}

async fn relay_if_due(agent: &AgentHandle, mcu: &McuBus, data_dir: &std::path::Path) {
    let staged = match staging::staged_nodes(data_dir) {
        Ok(s) if s.is_empty() => return,
        Ok(s) => s,
        Err(e) => return log::error!("mcu: {e}"),
    };
    let result = match agent.status().await {
        Ok(st) => match st.last_install {
            Some(l) => l.result,
            None => {
                return log::info!("mcu: {} staged, no install recorded yet", staged.join(", "))
            }
        },
        Err(e) => return log::error!("mcu: cannot read the install state: {e}"),
    };
    match result {
        UpdateResult::Good => {}
        UpdateResult::RolledBack | UpdateResult::Failed | UpdateResult::Cancelled => {
            for node in &staged {
                log::warn!("mcu {node}: the update that staged its image is {result}; image dropped, not relayed");
                if let Err(e) = staging::discard(data_dir, node) {
                    log::error!("mcu {node}: {e}");
                }
            }
            return;
        }
        other @ (UpdateResult::Installing | UpdateResult::Activated | UpdateResult::Booted) => {
            return log::info!(
                "mcu: {} staged, waiting for the update to be marked good (it is {other})",
                staged.join(", ")
            )
        }
    }
    for node in staged {
        if !mcu.nodes().contains(&node) {
            log::warn!(
                "mcu {node}: staged, but no [mcu.{node}] is configured any more; image dropped"
            );
            if let Err(e) = staging::discard(data_dir, &node) {
                log::error!("mcu {node}: {e}");
            }
            continue;
        }
        let mcu = mcu.clone();
        tokio::spawn(async move {
            log::info!("mcu {node}: relaying the staged image");
            match mcu.relay_staged(&node).await {
                Ok(outcome) if outcome.is_success() => {
                    log::info!(NODE = node.as_str(); "mcu {node}: {}", outcome.describe())
                }
                Ok(outcome) => {
                    log::warn!(NODE = node.as_str(); "mcu {node}: {}", outcome.describe())
                }
                Err(e) => log::error!(
                    NODE = node.as_str();
                    "mcu {node}: relay failed: {e} (the image stays staged; retried at the next start)"
                ),
            }
        });
    }
}
