//! The D-Bus face of rota.
//!
//! [`native`] serves `io.rota.Agent1` at `/io/rota` under the name `io.rota`; with
//! `[dbus] rauc-compat = true`, [`rauc`] also serves RAUC's
//! `de.pengutronix.rauc.Installer` at `/` under `de.pengutronix.rauc`, so the `rauc` CLI
//! and rauc-hawkbit-updater work unchanged. Both only translate: every call becomes a
//! message to the [`AgentHandle`](crate::agent::AgentHandle), and agent events become
//! property changes and signals. [`access`] checks what the caller may read.

pub mod access;
pub mod native;
pub mod proxy;
pub mod rauc;

use crate::agent::{AgentEvent, AgentHandle};
use crate::config::Config;
use zbus::Connection;

/// Bus name of the native interface.
pub const BUS_NAME: &str = "io.rota";
/// Object path of the native interface.
pub const OBJECT_PATH: &str = "/io/rota";
/// RAUC's bus name, served with `[dbus] rauc-compat = true`.
pub const RAUC_BUS_NAME: &str = "de.pengutronix.rauc";

/// Connects to the system bus (honouring `DBUS_SYSTEM_BUS_ADDRESS`), serves the
/// interfaces, takes the names, and forwards agent events until the connection closes.
pub async fn serve(config: &Config, agent: AgentHandle) -> zbus::Result<Connection> {
    let conn = zbus::connection::Builder::system()?
        .serve_at(OBJECT_PATH, native::Agent1::new(agent.clone()))?
        .build()
        .await?;
    if config.dbus.rauc_compat {
        conn.object_server()
            .at("/", rauc::Installer::new(agent.clone(), config.clone()))
            .await?;
    }
    conn.request_name(BUS_NAME).await?;
    if config.dbus.rauc_compat {
        conn.request_name(RAUC_BUS_NAME).await?;
    }
    tokio::spawn(forward_events(conn.clone(), agent, config.dbus.rauc_compat));
    Ok(conn)
}

/// Agent events → PropertiesChanged and Completed on both interfaces.
async fn forward_events(conn: Connection, agent: AgentHandle, rauc_compat: bool) {
    let mut events = agent.subscribe();
    let native = match conn
        .object_server()
        .interface::<_, native::Agent1>(OBJECT_PATH)
        .await
    {
        Ok(i) => i,
        Err(e) => return log::error!("D-Bus: cannot find the native interface: {e}"),
    };
    let rauc = if rauc_compat {
        conn.object_server()
            .interface::<_, rauc::Installer>("/")
            .await
            .ok()
    } else {
        None
    };
    loop {
        let ev = match events.recv().await {
            Ok(ev) => ev,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => break,
        };
        let n = native.get().await;
        let e = native.signal_emitter();
        let res = match &ev {
            AgentEvent::Progress(_) => n.progress_changed(e).await,
            AgentEvent::Changed(_) => {
                let _ = n.operation_changed(e).await;
                let _ = n.last_error_changed(e).await;
                let _ = n.primary_changed(e).await;
                n.transaction_changed(e).await
            }
            AgentEvent::Completed {
                transaction,
                result,
                message,
            } => {
                let _ = n.progress_changed(e).await;
                native::Agent1::completed(e, transaction, result.code(), message).await
            }
            AgentEvent::PollRequested => Ok(()),
        };
        if let Err(err) = res {
            log::warn!("D-Bus: cannot emit signal: {err}");
        }
        drop(n);
        if let Some(r) = &rauc {
            let i = r.get().await;
            let e = r.signal_emitter();
            let _ = match &ev {
                AgentEvent::Progress(_) => i.progress_changed(e).await,
                AgentEvent::Changed(_) => {
                    let _ = i.operation_changed(e).await;
                    i.last_error_changed(e).await
                }
                AgentEvent::Completed { result, .. } => {
                    let _ = i.last_error_changed(e).await;
                    rauc::Installer::completed(e, result.code()).await
                }
                AgentEvent::PollRequested => Ok(()),
            };
        }
    }
}

/// Values for `a{sv}` dictionaries.
pub(crate) fn ov<'a>(v: impl Into<zbus::zvariant::Value<'a>>) -> zbus::zvariant::OwnedValue {
    // Only file descriptors fail to convert, and none are sent here.
    zbus::zvariant::OwnedValue::try_from(v.into())
        .unwrap_or_else(|_| zbus::zvariant::OwnedValue::from(0u8))
}
