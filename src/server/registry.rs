//! The live state of a running target: targets and their LUNs, portal groups, and sessions.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{mpsc, watch};

use super::access::Access;
use crate::iscsi::chap::ChapSecrets;
use crate::iscsi::conn::TargetRecord;
use crate::iscsi::params::{Params, SessionKind};
use crate::scsi::ScsiTarget;

/// A target: a name, its SCSI side (LUNs) and the portal groups it is reachable through.
pub struct TargetEntry {
    pub name: String,
    pub alias: Option<String>,
    pub scsi: Arc<ScsiTarget>,
    pub portal_groups: RwLock<BTreeSet<u16>>,
    /// Who may log in (replaced when the configuration changes).
    access: RwLock<Arc<Access>>,
    /// The tasks that keep its LUNs open (`supervisor.rs`), by LUN.
    supervisors: Mutex<BTreeMap<u16, tokio::task::JoinHandle<()>>>,
}

impl TargetEntry {
    pub fn new(name: &str, alias: Option<String>, portal_groups: BTreeSet<u16>) -> TargetEntry {
        TargetEntry {
            name: name.to_string(),
            alias,
            scsi: Arc::new(ScsiTarget::new(name)),
            portal_groups: RwLock::new(portal_groups),
            access: RwLock::new(Arc::new(Access::default())),
            supervisors: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn access(&self) -> Arc<Access> {
        self.access.read().expect("poisoned").clone()
    }

    pub fn set_access(&self, access: Access) {
        *self.access.write().expect("poisoned") = Arc::new(access);
    }

    /// Hands a LUN to its supervisor task (replacing any earlier one).
    pub fn set_supervisor(&self, lun: u16, task: tokio::task::JoinHandle<()>) {
        if let Some(old) = self.supervisors.lock().expect("poisoned").insert(lun, task) {
            old.abort();
        }
    }

    /// Stops the supervisor of a LUN and waits until it is gone.
    pub async fn stop_supervisor(&self, lun: u16) {
        let task = self.supervisors.lock().expect("poisoned").remove(&lun);
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Stops every supervisor (removal, shutdown): no LUN is opened again afterwards.
    pub async fn stop_supervisors(&self) {
        let tasks = std::mem::take(&mut *self.supervisors.lock().expect("poisoned"));
        for (_, task) in tasks {
            task.abort();
            let _ = task.await;
        }
    }

    /// Whether `initiator` may send TARGET WARM or COLD RESET ([`Access::may_reset`]).
    pub fn may_reset(&self, initiator: &str) -> bool {
        self.access().may_reset(initiator, !self.scsi.is_masked())
    }

    pub fn in_portal_group(&self, tag: u16) -> bool {
        self.portal_groups.read().expect("poisoned").contains(&tag)
    }
}

/// Requests from the rest of the target to a session's connection task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Another session reset this LUN: abort our tasks on it.
    AbortLun(u64),
    /// A target reset from another session: abort all our tasks.
    AbortAll,
    /// Close the session now (reinstatement, cold reset, forced logout).
    Close,
    /// Ask the initiator to log out (graceful shutdown).
    RequestLogout,
}

/// Asks `sessions` to log out (an Async Message) and waits up to `grace` for them to end:
/// whether they all did.
pub async fn ask_to_log_out(sessions: &[Arc<SessionEntry>], grace: std::time::Duration) -> bool {
    for s in sessions {
        s.send(Control::RequestLogout);
    }
    let all_closed = async {
        for s in sessions {
            s.closed().await;
        }
    };
    tokio::time::timeout(grace, all_closed).await.is_ok()
}

/// Counters of a session, shared with the management API.
#[derive(Debug, Default)]
pub struct SessionStats {
    pub commands: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
}

/// A logged-in session as the rest of the target sees it.
pub struct SessionEntry {
    pub tsih: u16,
    pub kind: SessionKind,
    pub initiator_name: String,
    pub isid: u64,
    pub target: Option<String>,
    pub tpgt: u16,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub params: Params,
    pub stats: Arc<SessionStats>,
    control: mpsc::UnboundedSender<Control>,
    done: watch::Receiver<bool>,
}

impl SessionEntry {
    pub fn send(&self, c: Control) {
        let _ = self.control.send(c);
    }

    /// Resolves once the session's connection task has finished (tasks drained, state released).
    pub async fn closed(&self) {
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }
}

/// What a connection task keeps to talk to the registry about its session.
pub struct SessionHandle {
    pub tsih: u16,
    pub control: mpsc::UnboundedReceiver<Control>,
    pub stats: Arc<SessionStats>,
    done: watch::Sender<bool>,
}

impl SessionHandle {
    pub fn mark_done(&self) {
        let _ = self.done.send(true);
    }

    /// The planted lost wake-up: whoever waits for this session to close is never woken.
    pub(crate) fn lose_wakeup(&mut self) {
        let (never, _) = watch::channel(false);
        std::mem::forget(std::mem::replace(&mut self.done, never));
    }
}

/// Details of a session about to be registered.
pub struct NewSession {
    pub kind: SessionKind,
    pub initiator_name: String,
    pub isid: u64,
    pub target: Option<String>,
    pub tpgt: u16,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub params: Params,
    /// Sessions the initiator may hold at once (this one included).
    pub per_initiator_max: u32,
}

#[derive(Default)]
struct Sessions {
    next_tsih: u16,
    by_tsih: BTreeMap<u16, Arc<SessionEntry>>,
}

/// Why a completed login gets no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterError {
    /// The table of sessions is full.
    TooManySessions,
    /// The initiator holds `sessions_per_initiator` sessions already.
    TooManyOfInitiator,
    /// The login would reinstate a session held from another address.
    ReinstatementFromElsewhere { old: SocketAddr },
}

impl std::fmt::Display for RegisterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegisterError::TooManySessions => write!(f, "too many sessions"),
            RegisterError::TooManyOfInitiator => write!(f, "too many sessions of this initiator"),
            RegisterError::ReinstatementFromElsewhere { old } => {
                write!(f, "the session to reinstate is held from another address ({old})")
            }
        }
    }
}

/// Most sessions at once; further logins get "out of resources".
pub const SESSIONS_MAX: usize = 4096;

#[derive(Default)]
pub struct Registry {
    targets: RwLock<BTreeMap<String, Arc<TargetEntry>>>,
    portal_groups: RwLock<BTreeMap<u16, Vec<SocketAddr>>>,
    sessions: Mutex<Sessions>,
    /// CHAP required of discovery sessions.
    discovery_chap: RwLock<Option<ChapSecrets>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    // ---- targets and portal groups ----

    pub fn discovery_chap(&self) -> Option<ChapSecrets> {
        self.discovery_chap.read().expect("poisoned").clone()
    }

    pub fn set_discovery_chap(&self, chap: Option<ChapSecrets>) {
        *self.discovery_chap.write().expect("poisoned") = chap;
    }

    pub fn add_target(&self, target: TargetEntry) -> Result<Arc<TargetEntry>, String> {
        let mut targets = self.targets.write().expect("poisoned");
        if targets.contains_key(&target.name) {
            return Err(format!("target {} already exists", target.name));
        }
        let target = Arc::new(target);
        targets.insert(target.name.clone(), target.clone());
        Ok(target)
    }

    pub fn remove_target(&self, name: &str) -> Option<Arc<TargetEntry>> {
        self.targets.write().expect("poisoned").remove(name)
    }

    pub fn target(&self, name: &str) -> Option<Arc<TargetEntry>> {
        self.targets.read().expect("poisoned").get(name).cloned()
    }

    pub fn targets(&self) -> Vec<Arc<TargetEntry>> {
        self.targets.read().expect("poisoned").values().cloned().collect()
    }

    pub fn set_portal_group(&self, tag: u16, portals: Vec<SocketAddr>) {
        self.portal_groups.write().expect("poisoned").insert(tag, portals);
    }

    pub fn remove_portal_group(&self, tag: u16) -> Option<Vec<SocketAddr>> {
        self.portal_groups.write().expect("poisoned").remove(&tag)
    }

    pub fn portal_groups(&self) -> BTreeMap<u16, Vec<SocketAddr>> {
        self.portal_groups.read().expect("poisoned").clone()
    }

    /// Discovery records: every target with the addresses of its portal groups. A portal
    /// bound to a wildcard address is reported as `local` (the address the initiator reached).
    /// Targets `initiator` at `peer` may log in to, with their addresses (SendTargets).
    pub fn target_records(&self, local: SocketAddr, initiator: &str, peer: std::net::IpAddr) -> Vec<TargetRecord> {
        let groups = self.portal_groups();
        self.targets()
            .iter()
            .filter(|t| t.access().admits(initiator, peer))
            .map(|t| {
                let mut addresses = Vec::new();
                for tag in t.portal_groups.read().expect("poisoned").iter() {
                    for portal in groups.get(tag).into_iter().flatten() {
                        let addr = if portal.ip().is_unspecified() {
                            SocketAddr::new(local.ip(), portal.port())
                        } else {
                            *portal
                        };
                        let host = match addr {
                            SocketAddr::V4(a) => a.to_string(),
                            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
                        };
                        addresses.push(format!("{host},{tag}"));
                    }
                }
                TargetRecord { name: t.name.clone(), addresses }
            })
            .collect()
    }

    // ---- sessions ----

    /// Registers a session and allocates its TSIH. A session of the same initiator port (name
    /// and ISID) to the same target is reinstated: it is told to close, and returned so that
    /// the caller can wait for it before completing the login. Only a login from the old
    /// session's own address may do that: a name and an ISID are easily claimed, and another
    /// host could otherwise cut a session off. (If the old host is really gone, its session ends
    /// at the NOP timeout and the retried login goes through.)
    pub fn register_session(
        &self,
        new: NewSession,
    ) -> Result<(SessionHandle, Option<Arc<SessionEntry>>), RegisterError> {
        let mut s = self.sessions.lock().expect("poisoned");
        let old = s
            .by_tsih
            .values()
            .find(|e| {
                e.initiator_name == new.initiator_name
                    && e.isid == new.isid
                    && e.target == new.target
                    && e.kind == new.kind
            })
            .cloned();
        if let Some(old) = &old
            && old.peer.ip().to_canonical() != new.peer.ip().to_canonical()
        {
            return Err(RegisterError::ReinstatementFromElsewhere { old: old.peer });
        }
        // Counted without the session being reinstated, which is refused nothing.
        let replaced = usize::from(old.is_some());
        if s.by_tsih.len() - replaced >= SESSIONS_MAX {
            return Err(RegisterError::TooManySessions);
        }
        let of_initiator = s.by_tsih.values().filter(|e| e.initiator_name == new.initiator_name).count();
        if of_initiator - replaced >= new.per_initiator_max as usize {
            return Err(RegisterError::TooManyOfInitiator);
        }
        if let Some(old) = &old {
            s.by_tsih.remove(&old.tsih);
            old.send(Control::Close);
        }
        let tsih = loop {
            s.next_tsih = s.next_tsih.wrapping_add(1);
            if s.next_tsih != 0 && !s.by_tsih.contains_key(&s.next_tsih) {
                break s.next_tsih;
            }
        };
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = watch::channel(false);
        let stats = Arc::new(SessionStats::default());
        let entry = SessionEntry {
            tsih,
            kind: new.kind,
            initiator_name: new.initiator_name,
            isid: new.isid,
            target: new.target,
            tpgt: new.tpgt,
            peer: new.peer,
            local: new.local,
            params: new.params,
            stats: stats.clone(),
            control: control_tx,
            done: done_rx,
        };
        s.by_tsih.insert(tsih, Arc::new(entry));
        Ok((SessionHandle { tsih, control: control_rx, stats, done: done_tx }, old))
    }

    pub fn unregister_session(&self, tsih: u16) {
        self.sessions.lock().expect("poisoned").by_tsih.remove(&tsih);
    }

    pub fn session(&self, tsih: u16) -> Option<Arc<SessionEntry>> {
        self.sessions.lock().expect("poisoned").by_tsih.get(&tsih).cloned()
    }

    pub fn sessions(&self) -> Vec<Arc<SessionEntry>> {
        self.sessions.lock().expect("poisoned").by_tsih.values().cloned().collect()
    }

    /// Sends a control message to every session logged in to `target` except `except`.
    pub fn tell_sessions(&self, target: &str, except: Option<u16>, c: Control) {
        for s in self.sessions() {
            if s.target.as_deref() == Some(target) && Some(s.tsih) != except {
                s.send(c);
            }
        }
    }

    pub fn session_count(&self) -> usize {
        self.sessions.lock().expect("poisoned").by_tsih.len()
    }
}
