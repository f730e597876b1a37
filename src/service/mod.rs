//! The D-Bus face of rota.
//!
//! [`native`] serves `io.rota.Agent1` at `/io/rota` under the name `io.rota`; with
//! `[dbus] rauc-compat = true`, [`rauc`] also serves RAUC's
//! `de.pengutronix.rauc.Installer` at `/` under `de.pengutronix.rauc`, so the `rauc` CLI
//! and rauc-hawkbit-updater work unchanged. Both only translate: every call becomes a
//! message to the [`AgentHandle`](crate::agent::AgentHandle), and agent events become
//! property changes and signals. [`access`] checks what the caller may read; [`proxy`]
//! is the client side the `rota` CLI uses. The MCU node objects
//! ([`crate::service::mcu`]) are registered on the same connection.
//!
//! Start-up is split in two so that a second `rota service` can never run a second
//! agent next to the first: [`claim`] connects and takes `io.rota` (failing if another
//! process owns it) before the agent starts, then [`serve`] exports the objects and
//! forwards agent events.

pub mod access;
pub mod mcu;
pub mod native;
pub mod proxy;
pub mod rauc;
pub mod relayer;

use crate::agent::{AgentEvent, AgentHandle};
use crate::config::Config;
use tokio::sync::watch;
use zbus::Connection;

/// Bus name of the native interface.
pub const BUS_NAME: &str = "io.rota";
/// Object path of the native interface.
pub const OBJECT_PATH: &str = "/io/rota";
/// RAUC's bus name, served with `[dbus] rauc-compat = true`.
pub const RAUC_BUS_NAME: &str = "de.pengutronix.rauc";
/// RAUC's object path.
pub const RAUC_OBJECT_PATH: &str = "/";

/// A system-bus connection that owns rota's names, objects not yet exported.
pub struct Claimed {
    conn: Connection,
    rauc_compat: bool,
}

/// The running D-Bus service.
pub struct Served {
    pub conn: Connection,
    /// Transaction of the last install whose `Completed` signal has been sent.
    pub completed: watch::Receiver<Option<String>>,
    /// The MCU node objects (`/io/rota/mcu/<name>`), to mirror relays started elsewhere.
    pub mcu: crate::service::mcu::McuBus,
}

/// Connects to the system bus (honouring `DBUS_SYSTEM_BUS_ADDRESS`) and takes `io.rota`
/// and, with `[dbus] rauc-compat`, `de.pengutronix.rauc`. Fails if another process owns
/// either name. Calls that arrive before [`serve`] get `UnknownObject`.
pub async fn claim(config: &Config) -> Result<Claimed, String> {
    let conn = Connection::system()
        .await
        .map_err(|e| format!("cannot connect to the system bus: {e}"))?;
    // Set up the object server before owning names, so no early call goes unanswered.
    let _ = conn.object_server();
    let mut names = vec![BUS_NAME];
    if config.dbus.rauc_compat {
        names.push(RAUC_BUS_NAME);
    }
    for name in names {
        // Neither queue nor allow replacement (zbus's default would let a second
        // instance take the name away from a running one).
        let flags = zbus::fdo::RequestNameFlags::DoNotQueue.into();
        conn.request_name_with_flags(name, flags)
            .await
            .map_err(|e| match e {
                zbus::Error::NameTaken => {
                    format!(
                        "the bus name {name} is taken: another rota service (or RAUC) is running"
                    )
                }
                e => format!("cannot take the bus name {name}: {e}"),
            })?;
    }
    Ok(Claimed {
        conn,
        rauc_compat: config.dbus.rauc_compat,
    })
}

/// Exports the interfaces and forwards agent events to them until the connection closes.
pub async fn serve(
    claimed: Claimed,
    config: &Config,
    agent: AgentHandle,
) -> Result<Served, String> {
    let Claimed { conn, rauc_compat } = claimed;
    let export_failed = |e: zbus::Error| format!("cannot export the D-Bus interfaces: {e}");
    let group = config
        .dbus
        .group
        .clone()
        .unwrap_or_else(|| access::DEFAULT_GROUP.to_owned());
    conn.object_server()
        .at(
            OBJECT_PATH,
            native::Agent1::new(agent.clone(), group.clone()),
        )
        .await
        .map_err(export_failed)?;
    if rauc_compat {
        conn.object_server()
            .at(
                RAUC_OBJECT_PATH,
                rauc::Installer::new(agent.clone(), config.clone()),
            )
            .await
            .map_err(export_failed)?;
    }
    // One io.rota.Mcu1 object per [mcu.<name>] under /io/rota/mcu.
    let mcu = crate::service::mcu::register(&conn, &config.mcu, &config.system.data_dir, &group)
        .await
        .map_err(export_failed)?;
    let (completed_tx, completed) = watch::channel(None);
    let forwarder = Forwarder::new(&conn, rauc_compat)
        .await
        .map_err(export_failed)?;
    tokio::spawn(forwarder.run(agent, completed_tx));
    Ok(Served {
        conn,
        completed,
        mcu,
    })
}

/// Turns agent events into PropertiesChanged and Completed on both interfaces.
struct Forwarder {
    native: zbus::object_server::InterfaceRef<native::Agent1>,
    rauc: Option<zbus::object_server::InterfaceRef<rauc::Installer>>,
}

impl Forwarder {
    async fn new(conn: &Connection, rauc_compat: bool) -> zbus::Result<Forwarder> {
        let native = conn
            .object_server()
            .interface::<_, native::Agent1>(OBJECT_PATH)
            .await?;
        let rauc = if rauc_compat {
            Some(
                conn.object_server()
                    .interface::<_, rauc::Installer>(RAUC_OBJECT_PATH)
                    .await?,
            )
        } else {
            None
        };
        Ok(Forwarder { native, rauc })
    }

    async fn run(self, agent: AgentHandle, completed: watch::Sender<Option<String>>) {
        let mut events = agent.subscribe();
        // The Progress last published: a snapshot change re-publishes it only if it moved
        // (RAUC clients print every Progress change).
        let mut published = agent.snapshot().progress;
        loop {
            let ev = match events.recv().await {
                Ok(ev) => ev,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    // Only progress is ever dropped; the next event carries fresh values.
                    log::debug!("D-Bus: {n} agent events skipped");
                    continue;
                }
                Err(_) => break,
            };
            let now = match &ev {
                AgentEvent::Progress(p) => p.clone(),
                AgentEvent::Changed(snap) => snap.progress.clone(),
                _ => published.clone(),
            };
            let progress = now != published;
            published = now;
            if let Err(err) = self.native(&ev, progress).await {
                log::warn!("D-Bus: cannot emit io.rota.Agent1 signals: {err}");
            }
            if let Err(err) = self.rauc(&ev, progress).await {
                log::warn!("D-Bus: cannot emit de.pengutronix.rauc.Installer signals: {err}");
            }
            if let AgentEvent::Completed { transaction, .. } = ev {
                completed.send_replace(Some(transaction));
            }
        }
    }

    async fn native(&self, ev: &AgentEvent, progress: bool) -> zbus::Result<()> {
        let n = self.native.get().await;
        let e = self.native.signal_emitter();
        if progress {
            n.progress_changed(e).await?;
        }
        match ev {
            AgentEvent::Progress(_) => Ok(()),
            // Transaction first: clients follow progress once it names their install.
            AgentEvent::Changed(_) => {
                n.transaction_changed(e).await?;
                n.operation_changed(e).await?;
                n.last_error_changed(e).await?;
                n.primary_changed(e).await
            }
            AgentEvent::Completed {
                transaction,
                result,
                message,
            } => {
                native::Agent1::completed(e, transaction, native::result_code(*result), message)
                    .await
            }
            AgentEvent::PollRequested | AgentEvent::McuRelayDue => Ok(()),
        }
    }

    async fn rauc(&self, ev: &AgentEvent, progress: bool) -> zbus::Result<()> {
        let Some(r) = &self.rauc else { return Ok(()) };
        let i = r.get().await;
        let e = r.signal_emitter();
        if progress {
            i.progress_changed(e).await?;
        }
        match ev {
            AgentEvent::Progress(_) => Ok(()),
            AgentEvent::Changed(_) => {
                i.operation_changed(e).await?;
                i.last_error_changed(e).await
            }
            // LastError went out with the Changed event that precedes Completed.
            AgentEvent::Completed { result, .. } => {
                rauc::Installer::completed(e, result.code()).await
            }
            AgentEvent::PollRequested | AgentEvent::McuRelayDue => Ok(()),
        }
    }
}

/// Values for `a{sv}` dictionaries.
pub(crate) fn ov<'a>(v: impl Into<zbus::zvariant::Value<'a>>) -> zbus::zvariant::OwnedValue {
    // Only file descriptors fail to convert, and none are sent here.
    zbus::zvariant::OwnedValue::try_from(v.into())
        .unwrap_or_else(|_| zbus::zvariant::OwnedValue::from(0u8))
}
