//! The running configuration: one `Config` that is always what the target serves. Every change
//! (an API call, a reload) is a new `Config`, validated, reconciled into the registry and the
//! listening portals, then written atomically to the configuration file. One mechanism serves
//! the API, `SIGHUP` and `rtgt reload`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{BuildContext, Config, LunConfig, TargetConfig};
use crate::iscsi::params::SessionKind;
use crate::overrides::Overrides;
use crate::server::supervisor::supervise;
use crate::server::{Control, Registry, Server, TargetEntry, TokioNet};

/// Why a change was refused; the API maps each kind to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeError {
    /// The request or the configuration it leads to is invalid (400).
    Invalid(String),
    /// What the request names does not exist (404).
    NotFound(String),
    /// The change conflicts with the current state (409).
    Conflict(String),
    /// The change was valid but could not be carried out (500): a backend failed to open, a
    /// portal failed to bind, the configuration file could not be written.
    Failed(String),
}

impl std::fmt::Display for ChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeError::Invalid(m) | ChangeError::NotFound(m) | ChangeError::Conflict(m) | ChangeError::Failed(m) => {
                f.write_str(m)
            }
        }
    }
}

struct Inner {
    /// What is being served (always valid).
    config: Config,
    /// The configuration as its file holds it: what is served, less `rtgt serve`'s overrides.
    file: Config,
    /// Accept loops by configured portal address string.
    listeners: BTreeMap<(u16, String), JoinHandle<()>>,
    /// At start, LUNs open in the background; how their first attempts went arrives here.
    first_attempts: Option<Vec<FirstAttempt>>,
    /// A reload was refused: the file holds edits that do not run, which a change through the
    /// API would overwrite with what runs. Cleared by a reload that succeeds.
    file_refused: Option<String>,
}

/// A LUN opening at start (target, LUN) and how its first attempt went.
type FirstAttempt = (String, u16, oneshot::Receiver<Result<(), String>>);

/// How long start-up waits for the LUNs' first attempts to open before the portals accept:
/// long enough for an S3 volume to open, short of waiting out another target's lease.
const FIRST_ATTEMPTS_WAIT: Duration = Duration::from_secs(20);

/// Owns the running configuration and applies changes to it.
pub struct Manager {
    inner: tokio::sync::Mutex<Inner>,
    pub registry: Arc<Registry>,
    pub server: Arc<Server<TokioNet>>,
    ctx: BuildContext,
    /// Where changes are persisted (None: not persisted).
    path: Option<PathBuf>,
    /// What `rtgt serve`'s flags change for this run only: applied to what is read, kept out of
    /// what is saved.
    overrides: Overrides,
}

/// How long a removed target's sessions have to log out once asked, before they are closed.
const LOGOUT_WAIT: Duration = Duration::from_secs(5);
/// How long a forced target delete waits for its sessions to close.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

impl Manager {
    /// Starts serving `config`: builds its targets and LUNs and binds its portals.
    /// `file` is the configuration as read (served with `overrides` applied).
    pub async fn start(
        file: Config,
        overrides: Overrides,
        server: Arc<Server<TokioNet>>,
        ctx: BuildContext,
        path: Option<PathBuf>,
    ) -> Result<Arc<Manager>, String> {
        let registry = server.registry.clone();
        let config = overrides.apply(&file);
        let manager = Arc::new(Manager {
            inner: tokio::sync::Mutex::new(Inner {
                config: Config { server: config.server.clone(), ..Config::default() },
                file,
                listeners: BTreeMap::new(),
                first_attempts: Some(Vec::new()),
                file_refused: None,
            }),
            registry,
            server,
            ctx,
            path,
            overrides,
        });
        {
            let mut inner = manager.inner.lock().await;
            inner.config.embedded_s3 = config.embedded_s3.clone();
            inner.config.api = config.api.clone();
            let problems = manager.reconcile(&mut inner, &config).await;
            inner.first_attempts = None;
            if !problems.is_empty() {
                for (_, h) in std::mem::take(&mut inner.listeners) {
                    close_portal(h).await;
                }
                return Err(format!("cannot start:\n  - {}", problems.join("\n  - ")));
            }
        }
        Ok(manager)
    }

    /// Stops accepting connections on every portal (shutdown).
    pub async fn stop_listening(&self) {
        for (_, h) in std::mem::take(&mut self.inner.lock().await.listeners) {
            close_portal(h).await;
        }
    }

    /// The configuration being served.
    pub async fn config(&self) -> Config {
        self.inner.lock().await.config.clone()
    }

    pub fn config_path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Applies `edit` to a copy of the running configuration, validates the result, reconciles
    /// and persists it. Nothing changes when `edit` or validation fails.
    pub async fn change(&self, edit: impl FnOnce(&mut Config) -> Result<(), ChangeError>) -> Result<(), ChangeError> {
        let mut inner = self.inner.lock().await;
        if let Some(why) = &inner.file_refused {
            return Err(ChangeError::Conflict(format!(
                "the configuration file holds edits a reload refused ({why}): fix them and reload, or undo them and \
                 reload, before changing the target through the API (which would write over them)"
            )));
        }
        let mut want = inner.config.clone();
        edit(&mut want)?;
        if let Some(why) = self.overrides.hides(&inner.config, &want) {
            return Err(ChangeError::Conflict(why));
        }
        // What the change adds falls under the run's overrides too (a LUN added under --force).
        let want = self.overrides.apply(&want);
        want.validate().map_err(|e| ChangeError::Invalid(e.0.join("; ")))?;
        let before = inner.config.clone();
        let applied = self.apply_whole(&mut inner, &want).await;
        if inner.config != before {
            inner.file = self.overrides.strip(&inner.config, &inner.file);
            self.persist(&inner.file).map_err(ChangeError::Failed)?;
        }
        applied
    }

    /// Brings what runs to `want`, or, if a step fails (a LUN that does not open, a portal that
    /// does not bind), back to what ran before: a change applies whole or not at all.
    async fn apply_whole(&self, inner: &mut Inner, want: &Config) -> Result<(), ChangeError> {
        let before = inner.config.clone();
        let problems = self.reconcile(inner, want).await;
        if problems.is_empty() {
            self.close_sessions_no_longer_admitted();
            forget_reservations_of_removed_luns(&before, want);
            return Ok(());
        }
        let undo = self.reconcile(inner, &before).await;
        let outcome = match undo.is_empty() {
            true => "nothing of the change was applied".to_string(),
            false => format!("undoing the rest of the change failed too: {}", undo.join("; ")),
        };
        warn!(problems = %problems.join("; "), "a change failed: {outcome}");
        Err(ChangeError::Failed(format!("{} ({outcome})", problems.join("; "))))
    }

    /// Re-reads the configuration file and applies what changed (SIGHUP, `rtgt reload`).
    pub async fn reload(&self) -> Result<(), ChangeError> {
        let Some(path) = &self.path else {
            return Err(ChangeError::Conflict("the target runs without a configuration file".into()));
        };
        // Read under the lock: a file read before a change through the API saved its own
        // would undo that change.
        let mut inner = self.inner.lock().await;
        let refused = |inner: &mut Inner, e: ChangeError| {
            inner.file_refused = Some(e.to_string());
            e
        };
        let file = match Config::load(path) {
            Ok(file) => file,
            Err(e) => return Err(refused(&mut inner, ChangeError::Invalid(e.0.join("; ")))),
        };
        let want = self.overrides.apply(&file);
        if let Err(e) = self.apply_whole(&mut inner, &want).await {
            return Err(refused(&mut inner, e));
        }
        inner.file = self.overrides.strip(&inner.config, &file);
        inner.file_refused = None;
        info!(path = %path.display(), "configuration reloaded");
        Ok(())
    }

    /// Writes the configuration atomically (a temporary file, fsync, rename, fsync of the
    /// directory), into the file's own text: its comments and layout stay.
    fn persist(&self, config: &Config) -> Result<(), String> {
        let Some(path) = &self.path else { return Ok(()) };
        let old = std::fs::read_to_string(path).unwrap_or_default();
        let text = super::config_file::updated_text(&old, config);
        write_atomically(path, text.as_bytes()).map_err(|e| format!("cannot save {}: {e}", path.display()))
    }

    /// Brings the registry and the portals from `inner.config` to `want`, step by step;
    /// `inner.config` follows every step that succeeded. Returns the steps that failed.
    /// Targets come before portals: a portal never accepts a login for a configured target
    /// that is not registered yet. At start, the portals wait (a bounded time) for the LUNs'
    /// first attempts to open, so that a target that accepts logins serves its LUNs.
    async fn reconcile(&self, inner: &mut Inner, want: &Config) -> Vec<String> {
        let mut problems = Vec::new();
        if inner.config.server != want.server {
            warn!("[server] settings changed: they take effect at the next restart");
        }
        match want.discovery_chap.as_ref().map(crate::config::ChapConfig::resolve).transpose() {
            Ok(chap) => self.registry.set_discovery_chap(chap),
            Err(e) => problems.push(format!("discovery_chap.{e}")),
        }
        self.reconcile_targets(inner, want, &mut problems).await;
        if let Some(attempts) = inner.first_attempts.as_mut() {
            wait_for_first_attempts(std::mem::take(attempts)).await;
        }
        self.reconcile_portal_groups(inner, want, &mut problems).await;
        problems
    }

    async fn reconcile_targets(&self, inner: &mut Inner, want: &Config, problems: &mut Vec<String>) {
        // Targets that went away.
        let gone: Vec<String> = inner
            .config
            .targets
            .iter()
            .filter(|t| !want.targets.iter().any(|w| w.name == t.name))
            .map(|t| t.name.clone())
            .collect();
        for name in gone {
            self.remove_target(&name).await;
            inner.config.targets.retain(|t| t.name != name);
        }
        for t in &want.targets {
            match inner.config.targets.iter().position(|c| c.name == t.name) {
                None => {
                    let applied = self.add_target(inner, want, t, problems).await;
                    inner.config.targets.push(applied);
                }
                Some(i) => {
                    let mut current = inner.config.targets[i].clone();
                    self.update_target(inner, want, &mut current, t, problems).await;
                    inner.config.targets[i] = current;
                }
            }
        }
        // Keep the order of `want` so that the saved file reads like the one written.
        inner.config.targets.sort_by_key(|t| want.targets.iter().position(|w| w.name == t.name).unwrap_or(usize::MAX));
    }

    /// Puts a LUN in service, kept open by a supervisor from then on. At start it opens in the
    /// background (NOT READY until it is: the target never exits for one LUN); later (an API
    /// change, a reload) it must open now, or the change is refused.
    async fn serve_lun(&self, inner: &mut Inner, entry: &TargetEntry, l: &LunConfig) -> Result<(), String> {
        let config = &inner.config;
        entry.scsi.set_mask(l.lun, l.mask());
        let open = config.opener(&entry.name, l, &self.ctx);
        let placeholder = config.placeholder(&entry.name, l, "opening")?;
        let clock = self.ctx.clock.clone();
        let scsi = entry.scsi.clone();
        let task = match inner.first_attempts.as_mut() {
            Some(attempts) => {
                entry.scsi.add_lun(l.lun, placeholder.lu.clone())?;
                let (tx, rx) = oneshot::channel();
                attempts.push((entry.name.clone(), l.lun, rx));
                tokio::spawn(supervise(scsi, l.lun, open, placeholder, None, Some(tx), clock))
            }
            None => {
                let lu = open().await.map_err(|e| e.to_string())?;
                entry.scsi.add_lun(l.lun, lu.clone())?;
                tokio::spawn(supervise(scsi, l.lun, open, placeholder, Some(lu), None, clock))
            }
        };
        entry.set_supervisor(l.lun, task);
        Ok(())
    }

    async fn reconcile_portal_groups(&self, inner: &mut Inner, want: &Config, problems: &mut Vec<String>) {
        let wanted: BTreeSet<(u16, String)> =
            want.portal_groups.iter().flat_map(|pg| pg.portals.iter().map(move |p| (pg.tag, p.clone()))).collect();
        let stale: Vec<(u16, String)> = inner.listeners.keys().filter(|k| !wanted.contains(k)).cloned().collect();
        for key in stale {
            if let Some(h) = inner.listeners.remove(&key) {
                close_portal(h).await;
                info!(tpgt = key.0, portal = %key.1, "portal removed");
            }
        }
        let mut applied = Vec::new();
        for pg in &want.portal_groups {
            let mut bound = Vec::new();
            let mut portals = Vec::new();
            for p in &pg.portals {
                let key = (pg.tag, p.clone());
                if let Some(addr) = self.bound_address(pg.tag, p)
                    && inner.listeners.contains_key(&key)
                {
                    bound.push(addr);
                    portals.push(p.clone());
                    continue;
                }
                let addr: SocketAddr = match p.parse() {
                    Ok(a) => a,
                    Err(_) => continue, // validation reported it
                };
                match self.server.listen(pg.tag, addr).await {
                    Ok(portal) => {
                        bound.push(portal.addr);
                        portals.push(p.clone());
                        let h = tokio::spawn(self.server.clone().accept_loop(portal));
                        inner.listeners.insert(key, h);
                    }
                    Err(e) => problems.push(format!("portal_group {}: {e}", pg.tag)),
                }
            }
            if !portals.is_empty() {
                self.registry.set_portal_group(pg.tag, bound);
                applied.push(crate::config::PortalGroupConfig { tag: pg.tag, portals, alua_state: pg.alua_state });
            }
        }
        for (tag, _) in self.registry.portal_groups() {
            if !applied.iter().any(|pg| pg.tag == tag) {
                self.registry.remove_portal_group(tag);
            }
        }
        inner.config.portal_groups = applied;
        self.apply_alua_states(want);
    }

    /// Gives every target the states of the portal groups it is reachable through.
    fn apply_alua_states(&self, want: &Config) {
        for entry in self.registry.targets() {
            let tags = entry.portal_groups.read().expect("poisoned").clone();
            let states = tags
                .into_iter()
                .map(|tag| {
                    (
                        tag,
                        want.portal_groups.iter().find(|pg| pg.tag == tag).map(|pg| pg.alua_state).unwrap_or_default(),
                    )
                })
                .collect();
            entry.scsi.set_port_groups(states);
        }
    }

    /// The address a configured portal is bound to (port 0 resolved), if it is listening.
    fn bound_address(&self, tag: u16, configured: &str) -> Option<SocketAddr> {
        let addr: SocketAddr = configured.parse().ok()?;
        let group = self.registry.portal_groups().remove(&tag)?;
        if addr.port() == 0 {
            group.into_iter().find(|a| a.ip() == addr.ip())
        } else {
            group.into_iter().find(|a| *a == addr)
        }
    }

    fn portal_groups_of(want: &Config, t: &TargetConfig) -> BTreeSet<u16> {
        match &t.portal_groups {
            Some(g) => g.iter().copied().collect(),
            None => want.portal_groups.iter().map(|p| p.tag).collect(),
        }
    }

    async fn add_target(
        &self,
        inner: &mut Inner,
        want: &Config,
        t: &TargetConfig,
        problems: &mut Vec<String>,
    ) -> TargetConfig {
        let entry = TargetEntry::new(&t.name, t.alias.clone(), Self::portal_groups_of(want, t));
        match t.access() {
            Ok(access) => entry.set_access(access),
            Err(e) => problems.push(format!("target {}: {e}", t.name)),
        }
        let mut applied = TargetConfig { luns: Vec::new(), ..t.clone() };
        for l in &t.luns {
            match self.serve_lun(inner, &entry, l).await {
                Ok(()) => applied.luns.push(l.clone()),
                Err(e) => problems.push(format!("target {} LUN {}: {e}", t.name, l.lun)),
            }
        }
        if let Err(e) = self.registry.add_target(entry) {
            problems.push(format!("target {}: {e}", t.name));
        } else {
            info!(target = %t.name, luns = applied.luns.len(), "target added");
        }
        applied
    }

    async fn update_target(
        &self,
        inner: &mut Inner,
        want: &Config,
        applied: &mut TargetConfig,
        t: &TargetConfig,
        problems: &mut Vec<String>,
    ) {
        let Some(entry) = self.registry.target(&t.name) else { return };
        if applied.alias != t.alias {
            warn!(target = %t.name, "alias changed: it takes effect at the next restart");
        }
        *entry.portal_groups.write().expect("poisoned") = Self::portal_groups_of(want, t);
        applied.portal_groups = t.portal_groups.clone();
        match t.access() {
            Ok(access) => {
                entry.set_access(access);
                applied.allowed_initiators = t.allowed_initiators.clone();
                applied.allowed_addresses = t.allowed_addresses.clone();
                applied.reset_initiators = t.reset_initiators.clone();
                applied.chap = t.chap.clone();
            }
            Err(e) => problems.push(format!("target {}: {e}", t.name)),
        }
        let gone: Vec<u16> =
            applied.luns.iter().filter(|l| !t.luns.iter().any(|w| w.lun == l.lun)).map(|l| l.lun).collect();
        for lun in gone {
            entry.stop_supervisor(lun).await;
            if let Some(lu) = entry.scsi.remove_lun(lun) {
                if let Err(e) = lu.store().shutdown().await {
                    warn!(target = %t.name, lun, error = %e, "flush of a removed LUN failed");
                }
                info!(target = %t.name, lun, "LUN removed");
            }
            applied.luns.retain(|l| l.lun != lun);
        }
        for l in &t.luns {
            match applied.luns.iter().position(|a| a.lun == l.lun) {
                None => match self.serve_lun(inner, &entry, l).await {
                    Ok(()) => {
                        info!(target = %t.name, lun = l.lun, backend = %l.backend, "LUN added");
                        applied.luns.push(l.clone());
                    }
                    Err(e) => problems.push(format!("target {} LUN {}: {e}", t.name, l.lun)),
                },
                Some(i) => {
                    let old = &applied.luns[i];
                    if old == l {
                        continue;
                    }
                    if (LunConfig { initiators: l.initiators.clone(), ..old.clone() }) == *l {
                        entry.scsi.set_mask(l.lun, l.mask());
                        applied.luns[i].initiators = l.initiators.clone();
                        info!(target = %t.name, lun = l.lun, "LUN mask changed");
                        continue;
                    }
                    if (LunConfig { size: l.size, ..old.clone() }) == *l {
                        match self.grow(&entry, l).await {
                            Ok(()) => applied.luns[i].size = l.size,
                            Err(e) => problems.push(format!("target {} LUN {}: {e}", t.name, l.lun)),
                        }
                    } else {
                        problems.push(format!(
                            "target {} LUN {}: only the size of a LUN can change while it is served; delete it and \
                             create it again",
                            t.name, l.lun
                        ));
                    }
                }
            }
        }
        applied.luns.sort_by_key(|l| t.luns.iter().position(|w| w.lun == l.lun).unwrap_or(usize::MAX));
    }

    async fn grow(&self, entry: &TargetEntry, l: &LunConfig) -> Result<(), String> {
        let lu = entry.scsi.lun(l.lun).ok_or("the LUN is not served")?;
        let size = l.size.ok_or("size is required")?.0;
        lu.resize(size).await?;
        info!(target = %entry.name, lun = l.lun, size, "LUN grown");
        Ok(())
    }

    /// Ends the target's sessions, removes it and flushes its LUNs. The initiators are asked
    /// to log out first (an Async Message, as at shutdown): one that does ends its session
    /// cleanly instead of recovering a connection to a target that is gone. What is left after
    /// [`LOGOUT_WAIT`] is closed.
    async fn remove_target(&self, name: &str) {
        let sessions = self.sessions_of(name);
        if !crate::server::registry::ask_to_log_out(&sessions, LOGOUT_WAIT).await {
            self.registry.tell_sessions(name, None, Control::Close);
            for s in &sessions {
                let _ = tokio::time::timeout(CLOSE_WAIT, s.closed()).await;
            }
        }
        if let Some(entry) = self.registry.remove_target(name) {
            entry.stop_supervisors().await;
            for (lun, lu) in entry.scsi.luns() {
                if let Err(e) = lu.store().shutdown().await {
                    warn!(target = %name, lun, error = %e, "flush of a removed target failed");
                }
            }
            info!(target = %name, "target removed");
        }
    }

    /// Closes the sessions their target's access rules no longer admit: an initiator taken off
    /// a target's list (by name or address) loses its access at once, not at its next login.
    fn close_sessions_no_longer_admitted(&self) {
        for target in self.registry.targets() {
            let access = target.access();
            for s in self.sessions_of(&target.name) {
                if !access.admits(&s.initiator_name, s.peer.ip()) {
                    info!(target = %target.name, initiator = %s.initiator_name, peer = %s.peer, "session closed: no longer admitted");
                    s.send(Control::Close);
                }
            }
        }
    }

    /// Normal sessions logged in to a target.
    pub fn sessions_of(&self, target: &str) -> Vec<Arc<crate::server::registry::SessionEntry>> {
        self.registry
            .sessions()
            .into_iter()
            .filter(|s| s.kind == SessionKind::Normal && s.target.as_deref() == Some(target))
            .collect()
    }
}

/// Removes the persistent reservations kept for file and block device LUNs that `before` had
/// and `want` has not: a LUN made later with the same identity (the same target and number)
/// is a new disk and starts with none. (An S3 volume keeps its own beside it.)
fn forget_reservations_of_removed_luns(before: &Config, want: &Config) {
    let kept: BTreeSet<PathBuf> =
        want.targets.iter().flat_map(|t| t.luns.iter().filter_map(|l| want.reservations_file(&t.name, l))).collect();
    for t in &before.targets {
        for path in t.luns.iter().filter_map(|l| before.reservations_file(&t.name, l)) {
            if kept.contains(&path) {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => info!(target = %t.name, path = %path.display(), "reservations of a removed LUN deleted"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(target = %t.name, path = %path.display(), error = %e, "cannot delete the reservations of a removed LUN")
                }
            }
        }
    }
}

/// Waits (at most [`FIRST_ATTEMPTS_WAIT`] in all) for LUNs' first attempts to open; those that
/// failed or are still trying stay NOT READY and keep trying in the background.
async fn wait_for_first_attempts(attempts: Vec<FirstAttempt>) {
    let deadline = tokio::time::Instant::now() + FIRST_ATTEMPTS_WAIT;
    for (target, lun, rx) in attempts {
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                warn!(%target, lun, error = %e, "LUN not ready at start: serving NOT READY and retrying in the background")
            }
            Ok(Err(_)) => {}
            Err(_) => warn!(%target, lun, "LUN still opening: serving NOT READY meanwhile"),
        }
    }
}

/// Replaces `path` with `data` so that a crash leaves either the old or the new file.
pub fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("config");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        // It may hold secrets (the API token, S3 keys, CHAP secrets): owner only.
        let _ = std::fs::remove_file(&tmp); // a leftover of a crash
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?
        };
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Stops a portal's accept loop and waits until its listening socket is closed: `abort` alone
/// only schedules the drop, and a client told "removed" could still connect.
async fn close_portal(accept_loop: JoinHandle<()>) {
    accept_loop.abort();
    let _ = accept_loop.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_the_file() {
        let dir = std::env::temp_dir().join(format!("rtgt-atomic-{}", std::process::id()));
        let path = dir.join("rtgt.toml");
        write_atomically(&path, b"one").expect("write");
        write_atomically(&path, b"two").expect("rewrite");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let leftovers: Vec<_> = std::fs::read_dir(&dir).expect("dir").filter_map(Result::ok).collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
        std::fs::remove_dir_all(&dir).ok();
    }
}
