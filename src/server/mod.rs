//! The async driver: portals, the accept loops, per-connection tasks and shutdown. Generic over
//! the [`Net`] and [`Clock`] seams so that the simulation runs this very code.

pub mod access;
pub mod admission;
pub mod connection;
pub mod net;
pub mod pollers;
pub mod registry;
pub mod supervisor;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use admission::{Admission, AdmissionLimits};

pub use crate::clock::{Clock, TokioClock};
pub use connection::Endpoint;
pub use net::{Listener, Net, TokioNet};
pub use registry::{Control, Registry, TargetEntry};

use crate::iscsi::conn::ConnConfig;
use crate::iscsi::params::TargetLimits;

/// Default of [`Settings::busy_poll`], in microseconds: a little more than the time an
/// initiator on a fast network needs to answer a response with its next command.
pub const DEFAULT_BUSY_POLL_US: u64 = 50;
/// Default of [`Settings::sessions_per_initiator`].
pub const DEFAULT_SESSIONS_PER_INITIATOR: u32 = 64;

/// Protocol settings shared by every connection.
#[derive(Debug, Clone)]
pub struct Settings {
    pub limits: TargetLimits,
    pub conn: ConnConfig,
    /// A login must complete within this time.
    pub login_timeout: Duration,
    /// Seconds the initiator is given to log out when the target shuts down.
    pub logout_grace_secs: u16,
    /// How long a connection keeps polling for its next PDU or completion after an event
    /// before its worker may sleep. Waking a sleeping thread (an idle CPU, in a VM) costs tens
    /// of microseconds on every command at low queue depth; polling for a while trades CPU for
    /// that latency, the way SPDK's reactors and Linux's busy_poll do. Zero turns it off (the
    /// simulation must: simulated time does not pass while a task only yields).
    pub busy_poll: Duration,
    /// Connections that may busy-poll at once (one per runtime worker), shared by all.
    pub pollers: Arc<pollers::PollerSlots>,
    /// Connections admitted at once: in total, per source address, still logging in.
    pub admission: AdmissionLimits,
    /// Sessions one initiator name may hold at once.
    pub sessions_per_initiator: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            limits: TargetLimits::default(),
            conn: ConnConfig::default(),
            login_timeout: Duration::from_secs(30),
            logout_grace_secs: 5,
            busy_poll: Duration::from_micros(DEFAULT_BUSY_POLL_US),
            pollers: Arc::new(pollers::PollerSlots::new(1)),
            admission: AdmissionLimits::default(),
            sessions_per_initiator: DEFAULT_SESSIONS_PER_INITIATOR,
        }
    }
}

/// A running target: its registry and the means to serve connections.
pub struct Server<N: Net> {
    net: N,
    clock: Arc<dyn Clock>,
    pub registry: Arc<Registry>,
    pub settings: Arc<Settings>,
    pub admission: Arc<Admission>,
}

/// A listening portal.
pub struct Portal<L> {
    pub tpgt: u16,
    pub addr: SocketAddr,
    listener: L,
}

impl<N: Net> Server<N> {
    pub fn new(net: N, clock: Arc<dyn Clock>, registry: Arc<Registry>, settings: Settings) -> Self {
        let admission = Admission::new(settings.admission);
        Server { net, clock, registry, settings: Arc::new(settings), admission }
    }

    /// Binds every portal of every portal group. Port 0 binds a free port; the bound address
    /// replaces it in the registry so that discovery reports it.
    pub async fn bind(&self) -> io::Result<Vec<Portal<N::Listener>>> {
        let mut portals = Vec::new();
        for (tpgt, addrs) in self.registry.portal_groups() {
            let mut bound = Vec::new();
            for addr in addrs {
                let portal = self.listen(tpgt, addr).await?;
                bound.push(portal.addr);
                portals.push(portal);
            }
            self.registry.set_portal_group(tpgt, bound);
        }
        Ok(portals)
    }

    /// Binds one portal (it serves once handed to [`Server::accept_loop`]).
    pub async fn listen(&self, tpgt: u16, addr: SocketAddr) -> io::Result<Portal<N::Listener>> {
        let listener =
            self.net.bind(addr).await.map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let addr = listener.local_addr()?;
        Ok(Portal { tpgt, addr, listener })
    }

    /// Accepts connections on a portal until the task is dropped.
    pub async fn accept_loop(self: Arc<Self>, mut portal: Portal<N::Listener>) {
        info!(addr = %portal.addr, tpgt = portal.tpgt, "listening");
        loop {
            match portal.listener.accept().await {
                Ok((stream, peer)) => {
                    let admitted = match self.admission.admit(peer.ip()) {
                        Ok(admitted) => admitted,
                        Err(why) => {
                            // Closed before anything is read or allocated for it.
                            debug!(%peer, %why, "connection refused");
                            continue;
                        }
                    };
                    let endpoint = Endpoint { tpgt: portal.tpgt, local: portal.addr, peer };
                    tokio::spawn(connection::serve(
                        stream,
                        endpoint,
                        admitted,
                        self.registry.clone(),
                        self.settings.clone(),
                        self.clock.clone(),
                    ));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(addr = %portal.addr, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Asks every initiator to log out, waits up to `grace`, then closes what is left and
    /// flushes every logical unit.
    pub async fn shutdown(&self, grace: Duration) {
        let sessions = self.registry.sessions();
        info!(sessions = sessions.len(), "shutting down: asking initiators to log out");
        if !registry::ask_to_log_out(&sessions, grace).await {
            for s in self.registry.sessions() {
                s.send(Control::Close);
            }
            for s in &sessions {
                let _ = tokio::time::timeout(Duration::from_secs(5), s.closed()).await;
            }
        }
        for target in self.registry.targets() {
            // No LUN is opened again behind the flush.
            target.stop_supervisors().await;
            for (lun, lu) in target.scsi.luns() {
                if let Err(e) = lu.store().shutdown().await {
                    warn!(target = %target.name, lun, error = %e, "flush at shutdown failed");
                }
            }
        }
    }
}
