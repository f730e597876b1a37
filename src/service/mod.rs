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
use crate::model::{Operation, Progress};
use std::sync::{Arc, Mutex};
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
    let published = Arc::new(Mutex::new(Published::from_snapshot(&agent.snapshot())));
    let group = config
        .dbus
        .group
        .clone()
        .unwrap_or_else(|| access::DEFAULT_GROUP.to_owned());
    conn.object_server()
        .at(
            OBJECT_PATH,
            native::Agent1::new(agent.clone(), group.clone(), published.clone()),
        )
        .await
        .map_err(export_failed)?;
    if rauc_compat {
        conn.object_server()
            .at(
                RAUC_OBJECT_PATH,
                rauc::Installer::new(agent.clone(), config.clone(), published.clone()),
            )
            .await
            .map_err(export_failed)?;
    }
    // One io.rota.Mcu1 object per [mcu.<name>] under /io/rota/mcu.
    let mcu = crate::service::mcu::register(&conn, &config.mcu, &config.system.data_dir, &group)
        .await
        .map_err(export_failed)?;
    let (completed_tx, completed) = watch::channel(None);
    let forwarder = Forwarder::new(&conn, rauc_compat, published)
        .await
        .map_err(export_failed)?;
    tokio::spawn(forwarder.run(agent, completed_tx));
    Ok(Served {
        conn,
        completed,
        mcu,
    })
}

/// What the forwarder decided to signal last. The getters of both `Progress` properties
/// and of RAUC's `Operation` answer with it, so a PropertiesChanged carries the value
/// that was decided from the event — not a later snapshot read when the signal goes out,
/// which repeated one value and lost steps in between.
#[derive(Debug, Clone, Default)]
pub(crate) struct Published {
    /// io.rota.Agent1 Progress: every field counts as a change.
    pub native_progress: Progress,
    /// RAUC's Progress (percent, message, depth): a change of these three only, as RAUC
    /// signals it (a client posts each as feedback).
    pub rauc_progress: (i32, String, i32),
    /// RAUC's Operation. At the end of an install it turns `idle` only after `Completed`
    /// went out (RAUC's order: LastError, Completed, then Operation).
    pub rauc_operation: Operation,
}

pub(crate) type SharedPublished = Arc<Mutex<Published>>;

impl Published {
    fn from_snapshot(snap: &crate::agent::Snapshot) -> Published {
        Published {
            native_progress: snap.progress.clone(),
            rauc_progress: rauc_progress(&snap.progress),
            rauc_operation: snap.operation,
        }
    }
}

fn rauc_progress(p: &Progress) -> (i32, String, i32) {
    (i32::from(p.percent), p.message.clone(), p.depth.max(1))
}

/// A copy of the published values (a poisoned lock still holds them).
pub(crate) fn published(p: &SharedPublished) -> Published {
    p.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// What one event changes of the published values.
#[derive(Debug, Default, PartialEq)]
struct Moves {
    native_progress: bool,
    rauc_progress: bool,
    /// RAUC's Operation turned (to installing at once; to idle with Completed).
    rauc_operation: bool,
}

/// Decides, from `ev`, which published values change, and records them.
fn decide(p: &mut Published, ev: &AgentEvent) -> Moves {
    let mut m = Moves::default();
    let progress = match ev {
        AgentEvent::Progress(p) => Some(p),
        AgentEvent::Changed(snap) => Some(&snap.progress),
        _ => None,
    };
    if let Some(now) = progress {
        if *now != p.native_progress {
            p.native_progress = now.clone();
            m.native_progress = true;
        }
        let r = rauc_progress(now);
        if r != p.rauc_progress {
            p.rauc_progress = r;
            m.rauc_progress = true;
        }
    }
    match ev {
        AgentEvent::Changed(snap)
            if snap.operation == Operation::Installing
                && p.rauc_operation != Operation::Installing =>
        {
            p.rauc_operation = Operation::Installing;
            m.rauc_operation = true;
        }
        AgentEvent::Completed { .. } if p.rauc_operation != Operation::Idle => {
            p.rauc_operation = Operation::Idle;
            m.rauc_operation = true;
        }
        _ => {}
    }
    m
}

/// Turns agent events into PropertiesChanged and Completed on both interfaces.
struct Forwarder {
    native: zbus::object_server::InterfaceRef<native::Agent1>,
    rauc: Option<zbus::object_server::InterfaceRef<rauc::Installer>>,
    published: SharedPublished,
}

impl Forwarder {
    async fn new(
        conn: &Connection,
        rauc_compat: bool,
        published: SharedPublished,
    ) -> zbus::Result<Forwarder> {
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
        Ok(Forwarder {
            native,
            rauc,
            published,
        })
    }

    async fn run(self, agent: AgentHandle, completed: watch::Sender<Option<String>>) {
        let mut events = agent.subscribe();
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
            // Decided here, once; the getters answer with what was decided until the
            // next event (this task is the only writer and awaits each signal).
            let moves = decide(
                &mut self.published.lock().unwrap_or_else(|e| e.into_inner()),
                &ev,
            );
            if let Err(err) = self.native(&ev, &moves).await {
                log::warn!("D-Bus: cannot emit io.rota.Agent1 signals: {err}");
            }
            if let Err(err) = self.rauc(&ev, &moves).await {
                log::warn!("D-Bus: cannot emit de.pengutronix.rauc.Installer signals: {err}");
            }
            if let AgentEvent::Completed { transaction, .. } = ev {
                completed.send_replace(Some(transaction));
            }
        }
    }

    async fn native(&self, ev: &AgentEvent, moves: &Moves) -> zbus::Result<()> {
        let n = self.native.get().await;
        let e = self.native.signal_emitter();
        if moves.native_progress {
            n.progress_zero_changed(e).await?;
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

    /// RAUC's order: Operation `installing` before the first Progress of an install; at
    /// the end LastError (with the Changed event before Completed), then `Completed`, then
    /// Operation `idle`.
    async fn rauc(&self, ev: &AgentEvent, moves: &Moves) -> zbus::Result<()> {
        let Some(r) = &self.rauc else { return Ok(()) };
        let i = r.get().await;
        let e = r.signal_emitter();
        match ev {
            AgentEvent::Progress(_) => {
                if moves.rauc_progress {
                    i.progress_changed(e).await?;
                }
                Ok(())
            }
            AgentEvent::Changed(_) => {
                if moves.rauc_operation {
                    i.operation_changed(e).await?;
                }
                if moves.rauc_progress {
                    i.progress_changed(e).await?;
                }
                i.last_error_changed(e).await
            }
            AgentEvent::Completed { result, .. } => {
                rauc::Installer::completed(e, result.code()).await?;
                if moves.rauc_operation {
                    i.operation_changed(e).await?;
                }
                Ok(())
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
