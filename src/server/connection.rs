//! The async driver of one TCP connection, one task: runs the login state machine, then the
//! full-feature [`Connection`]: reads PDUs, runs the connection's SCSI commands as a
//! `FuturesUnordered`, and writes PDUs through a batching writer, all in one event loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::{AbortHandle, BoxFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, warn};

use super::Settings;
use super::admission::Admitted;
use super::registry::{Control, NewSession, RegisterError, Registry, SessionEntry, SessionHandle, TargetEntry};
use crate::clock::Clock;
use crate::iscsi::conn::{CloseReason, ConnConfig, ConnContext, Connection, Output, TargetRecord};
use crate::iscsi::login::{Authorization, Login, LoginContext, LoginOutcome, Step};
use crate::iscsi::memory::MemoryAccount;
use crate::iscsi::params::SessionKind;
use crate::pdu::{Bhs, Digests, Limits, login_status};
use crate::scsi::{Nexus, Request, Response, Sense, asc, decode_lun, key};
use crate::wire::{PduReader, PduWriter, ReadEvent};

/// Where a connection came in.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub tpgt: u16,
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

/// Serves one accepted connection until it closes.
pub async fn serve<S>(
    stream: S,
    endpoint: Endpoint,
    mut admitted: Admitted,
    registry: Arc<Registry>,
    settings: Arc<Settings>,
    clock: Arc<dyn Clock>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let mut reader = PduReader::new(rd);
    let mut writer = PduWriter::new(wr);
    let login = tokio::time::timeout(
        settings.login_timeout,
        login(&mut reader, &mut writer, endpoint, &admitted, &registry, &settings),
    );
    let (outcome, handle, target) = match login.await {
        Ok(Some(done)) => {
            admitted.logged_in();
            done
        }
        Ok(None) => return,
        Err(_) => {
            info!(peer = %endpoint.peer, "login timed out");
            return;
        }
    };
    info!(
        peer = %endpoint.peer,
        initiator = ?outcome.initiator_name,
        target = outcome.target_name.as_deref().unwrap_or("(discovery)"),
        tsih = outcome.tsih,
        "login complete"
    );
    let mut ffp = FullFeature::new(outcome, handle, target, endpoint, registry.clone(), settings, clock);
    ffp.run(reader, writer).await;
}

// ---------------------------------------------------------------- login

struct LoginCtx<'a> {
    registry: &'a Registry,
    settings: &'a Settings,
    endpoint: Endpoint,
    registered: Option<(SessionHandle, Option<Arc<SessionEntry>>)>,
}

impl LoginContext for LoginCtx<'_> {
    fn target_alias(&self, name: &str) -> Option<Option<String>> {
        let t = self.registry.target(name)?;
        t.in_portal_group(self.endpoint.tpgt).then(|| t.alias.clone())
    }

    fn session_exists(&self, tsih: u16) -> bool {
        self.registry.session(tsih).is_some()
    }

    fn register_session(&mut self, outcome: &LoginOutcome) -> Result<u16, (u8, u8)> {
        let new = NewSession {
            kind: outcome.kind,
            initiator_name: outcome.initiator_name.clone(),
            isid: outcome.isid,
            target: outcome.target_name.clone(),
            tpgt: self.endpoint.tpgt,
            peer: self.endpoint.peer,
            local: self.endpoint.local,
            params: outcome.params.clone(),
            per_initiator_max: self.settings.sessions_per_initiator,
        };
        match self.registry.register_session(new) {
            Ok((handle, old)) => {
                let tsih = handle.tsih;
                self.registered = Some((handle, old));
                Ok(tsih)
            }
            Err(e) => {
                warn!(peer = %self.endpoint.peer, initiator = ?outcome.initiator_name, error = %e, "login refused");
                Err(match e {
                    // Retried by initiators: the old session may yet end (NOP timeout).
                    RegisterError::ReinstatementFromElsewhere { .. } => login_status::SERVICE_UNAVAILABLE,
                    RegisterError::TooManySessions | RegisterError::TooManyOfInitiator => {
                        login_status::OUT_OF_RESOURCES
                    }
                })
            }
        }
    }

    fn portal_group_tag(&self) -> u16 {
        self.endpoint.tpgt
    }

    fn authorize(&self, initiator: &str, target: Option<&str>) -> Authorization {
        let Some(name) = target else {
            return Authorization { allowed: true, chap: self.registry.discovery_chap() };
        };
        match self.registry.target(name) {
            Some(t) => {
                let access = t.access();
                Authorization { allowed: access.admits(initiator, self.endpoint.peer.ip()), chap: access.chap.clone() }
            }
            None => Authorization { allowed: false, chap: None },
        }
    }
}

/// Unwritten response bytes beyond which a connection stops reading new PDUs until the
/// initiator takes what it asked for.
const PENDING_WRITE_MAX: usize = 16 << 20;

const AUTH_FAILED: (u8, u8) = crate::pdu::login_status::AUTHENTICATION_FAILURE;

/// How long a reinstating login waits for the old session's commands to finish.
const REINSTATEMENT_WAIT: Duration = Duration::from_secs(20);

type LoginDone = (LoginOutcome, SessionHandle, Option<Arc<TargetEntry>>);

async fn login<R, W>(
    reader: &mut PduReader<R>,
    writer: &mut PduWriter<W>,
    endpoint: Endpoint,
    admitted: &Admitted,
    registry: &Registry,
    settings: &Settings,
) -> Option<LoginDone>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut login = Login::new(settings.limits.clone(), settings.conn.queue_depth);
    let mut ctx = LoginCtx { registry, settings, endpoint, registered: None };
    let limits = Limits { data_segment_len_max: Login::data_segment_len_max() };
    loop {
        // Before full-feature phase only Login Requests are valid: refuse anything else as soon
        // as its header arrives rather than buffering what it claims to carry.
        let is_login = |bhs: &[u8]| bhs[0] & 0x3f == 0x03;
        let pdu = match reader.next_checked(Digests::default(), limits, is_login).await {
            Ok(ReadEvent::Pdu(pdu)) => pdu,
            Ok(ReadEvent::Eof) => return None,
            Ok(ReadEvent::Bad(e)) => {
                info!(peer = %endpoint.peer, error = %e, "malformed PDU during login");
                return None;
            }
            Err(e) => {
                debug!(peer = %endpoint.peer, error = %e, "read failed during login");
                return None;
            }
        };
        let Bhs::LoginRequest(req) = pdu.bhs else {
            // Anything but a login before full-feature phase is a protocol error: close.
            info!(peer = %endpoint.peer, opcode = ?pdu.opcode(), "non-login PDU during login");
            return None;
        };
        match login.on_request(&req, &pdu.data, &mut ctx) {
            Step::Reply(resp) => {
                writer.write(resp.encode(Digests::default())).await.ok()?;
            }
            Step::Fail(resp) => {
                if matches!(resp.bhs, Bhs::LoginResponse(r) if (r.status_class, r.status_detail) == AUTH_FAILED) {
                    // Guessing secrets costs a second a try per address, however many
                    // connections it guesses on.
                    tokio::time::sleep(admitted.auth_failure_delay()).await;
                }
                let _ = writer.write(resp.encode(Digests::default())).await;
                let _ = writer.shutdown().await;
                return None;
            }
            Step::Complete(resp, outcome) => {
                let (handle, old) = ctx.registered.take().expect("registered on completion");
                if let Some(old) = old {
                    // Session reinstatement: the old session's commands finish before we go on,
                    // so that none of them can land after the new session's.
                    info!(tsih = old.tsih, "reinstating session: closing the old one");
                    if tokio::time::timeout(REINSTATEMENT_WAIT, old.closed()).await.is_err() {
                        warn!(tsih = old.tsih, "the old session did not finish: refusing the login");
                        registry.unregister_session(handle.tsih);
                        handle.mark_done();
                        return None;
                    }
                }
                if writer.write(resp.encode(Digests::default())).await.is_err() {
                    registry.unregister_session(handle.tsih);
                    handle.mark_done();
                    return None;
                }
                let target = outcome.target_name.as_deref().and_then(|n| registry.target(n));
                return Some((*outcome, handle, target));
            }
        }
    }
}

// ---------------------------------------------------------------- full-feature phase

struct FfpCtx<'a> {
    registry: &'a Registry,
    target: Option<&'a TargetEntry>,
    local: SocketAddr,
    peer: SocketAddr,
    initiator: &'a str,
    nexus: Option<&'a Nexus>,
}

impl ConnContext for FfpCtx<'_> {
    fn targets(&self) -> Vec<TargetRecord> {
        self.registry.target_records(self.local, self.initiator, self.peer.ip())
    }

    fn own_target(&self) -> Option<String> {
        self.target.map(|t| t.name.clone())
    }

    fn lun_exists(&self, lun: u64) -> bool {
        match (self.target, decode_lun(lun)) {
            (Some(t), Some(n)) => t.scsi.lun_for(n, self.initiator).is_some(),
            _ => false,
        }
    }

    fn may_reset_target(&self) -> bool {
        self.target.is_some_and(|t| t.may_reset(self.initiator))
    }

    fn pending_unit_attention(&self, lun: u64) -> Option<(u8, u8)> {
        let (t, n, nexus) = (self.target?, decode_lun(lun)?, self.nexus?);
        t.scsi.lun_for(n, self.initiator)?.pending_unit_attention(nexus.id)
    }
}

struct FullFeature {
    conn: Connection,
    /// The connection's account of the I/O memory pool (its unwritten responses count too).
    memory: MemoryAccount,
    handle: SessionHandle,
    target: Option<Arc<TargetEntry>>,
    nexus: Option<Arc<Nexus>>,
    endpoint: Endpoint,
    registry: Arc<Registry>,
    settings: Arc<Settings>,
    clock: Arc<dyn Clock>,
    /// The connection's running SCSI commands, polled by its own task: a command that
    /// completes at once (memory, null, cached S3 data) is answered without any task switch,
    /// and one that waits (a disk, S3) wakes this task directly.
    running: FuturesUnordered<BoxFuture<'static, (u32, Response)>>,
    /// The running commands that only read (data in, none out), by ITT: when the connection
    /// closes nobody will take their data, and they change nothing, so they are cancelled
    /// rather than awaited (a read waiting out an S3 outage would hold its buffer for long).
    cancellable: std::collections::HashMap<u32, AbortHandle>,
    closed_by_peer: Option<CloseReason>,
    /// Bytes of unwritten responses charged to the I/O memory pool.
    unwritten_charged: u64,
    initiator_name: String,
    /// Holds one of the poller slots (`pollers.rs`).
    polling: bool,
}

impl Drop for FullFeature {
    fn drop(&mut self) {
        self.memory.release(self.unwritten_charged);
        self.hold_poller_slot(false);
    }
}

impl FullFeature {
    fn new(
        outcome: LoginOutcome,
        handle: SessionHandle,
        target: Option<Arc<TargetEntry>>,
        endpoint: Endpoint,
        registry: Arc<Registry>,
        settings: Arc<Settings>,
        clock: Arc<dyn Clock>,
    ) -> FullFeature {
        // Its reservations count against its address's share of the pool.
        let memory = settings.conn.memory.pool().account_for(endpoint.peer.ip());
        let conn = Connection::new(
            outcome.params.clone(),
            outcome.kind,
            outcome.cid,
            outcome.exp_cmd_sn,
            outcome.stat_sn,
            ConnConfig { memory: memory.clone(), ..settings.conn.clone() },
            clock.now(),
        );
        let nexus = match (&target, outcome.kind) {
            (Some(t), SessionKind::Normal) => Some(Nexus::new(
                &outcome.initiator_name,
                outcome.isid,
                &t.name,
                endpoint.tpgt,
                outcome.params.protocol_level,
            )),
            _ => None,
        };
        FullFeature {
            conn,
            memory,
            handle,
            target,
            nexus,
            endpoint,
            registry,
            settings,
            clock,
            running: FuturesUnordered::new(),
            cancellable: std::collections::HashMap::new(),
            closed_by_peer: None,
            unwritten_charged: 0,
            initiator_name: outcome.initiator_name.clone(),
            polling: false,
        }
    }

    /// Serves the connection until it closes, releases the session, and closes the socket.
    async fn run<R, W>(&mut self, mut reader: PduReader<R>, mut writer: PduWriter<W>)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let reason = self.event_loop(&mut reader, &mut writer).await;
        info!(peer = %self.endpoint.peer, tsih = self.handle.tsih, ?reason, "connection closed");
        let dropped = matches!(&reason, CloseReason::ConnectionLost(_));
        // Release the session (its reservations among them) before the last responses go out:
        // once an initiator reads its Logout Response, other nexuses must no longer see what
        // the session held (libiscsi's Reserve6.Logout reserves from another session at once).
        self.teardown(dropped).await;
        // Let queued responses (a logout response, say) reach the wire, then close our side.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            writer.flush().await?;
            writer.shutdown().await
        })
        .await;
    }

    /// One task per connection reads PDUs, runs commands and writes responses. Reading goes on
    /// while responses wait for the socket, up to [`PENDING_WRITE_MAX`] unwritten bytes.
    async fn event_loop<R, W>(&mut self, reader: &mut PduReader<R>, writer: &mut PduWriter<W>) -> CloseReason
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        // The protocol deadline's timer, kept across iterations while the deadline stands
        // (registering a timer on every PDU costs more than polling a kept one).
        let mut timer: Option<(Duration, BoxFuture<'static, ()>)> = None;
        // Busy polling: until this instant the task keeps the runtime polling sockets instead
        // of sleeping (see `Settings::busy_poll`).
        let mut poll_until = Duration::ZERO;
        // The connection's account of the I/O memory pool, cloned once (not on every iteration).
        let memory = self.memory.clone();
        // Responses waiting for the socket, and when it last took any: a client that stops
        // reading is dropped after the NOP timeout, releasing what its responses hold.
        let (mut last_pending, mut last_written, mut write_progress_at) = (0, 0, self.clock.now());
        loop {
            let (digests, limits) = self.conn.decode_limits();
            let now = self.clock.now();
            let pending = writer.pending();
            // Progress: nothing was waiting (the clock starts now), or the socket took some.
            if last_pending == 0 || writer.written_total() != last_written {
                write_progress_at = now;
            }
            (last_pending, last_written) = (pending, writer.written_total());
            let write_deadline = write_progress_at + self.settings.conn.nop_timeout;
            if pending > 0 && now >= write_deadline {
                return CloseReason::ProtocolError("the initiator stopped reading its responses".into());
            }
            let deadline = match pending {
                0 => self.conn.next_deadline(),
                _ => self.conn.next_deadline().min(write_deadline),
            };
            if timer.as_ref().is_none_or(|(at, _)| *at != deadline) {
                timer = Some((deadline, self.clock.sleep_until(deadline)));
            }
            let tick = &mut timer.as_mut().expect("set above").1;
            self.charge_unwritten(writer.pending() as u64);
            let writing = writer.pending() > 0;
            let memory_wait = self.conn.waiting_for_memory();
            let reading = writer.pending() < PENDING_WRITE_MAX;
            // Poll only while the initiator waits on the target: every command of the
            // connection waits on storage (or none is left; one that waits for the initiator's
            // data is fed by a client busy writing it), and at most one status is unread by it
            // (an initiator with several to read is not waiting for any one of them, and
            // polling for it only burns CPU: a fifth of the target's at 128 KiB writes, QD8).
            let awaiting_initiator = self.conn.task_count() > self.running.len();
            let wants_to_poll = !writing
                && !awaiting_initiator
                && self.conn.unacknowledged_statuses() <= 1
                && !self.settings.busy_poll.is_zero()
                && self.clock.now() < poll_until;
            let busy_polling = self.hold_poller_slot(wants_to_poll);
            tokio::select! {
                biased;
                Some((itt, response)) = self.running.next(), if !self.running.is_empty() => {
                    self.cancellable.remove(&itt);
                    self.count(&response);
                    self.conn.on_complete(itt, response);
                }
                Some(control) = self.handle.control.recv() => match control {
                    Control::AbortLun(lun) => self.conn.abort_lun(lun),
                    Control::AbortAll => self.conn.abort_all(),
                    Control::Close => return CloseReason::ProtocolError("closed by the target".into()),
                    Control::RequestLogout => self.conn.request_logout(self.settings.logout_grace_secs),
                },
                written = writer.flush(), if writing => {
                    if let Err(e) = written {
                        return CloseReason::ConnectionLost(format!("write failed: {e}"));
                    }
                }
                event = reader.next(digests, limits), if reading => {
                    self.on_read(event);
                    // Take everything else already buffered before writing the responses.
                    while !self.conn.is_closing() {
                        match reader.try_next(digests, limits) {
                            Some(event) => self.on_read(Ok(event)),
                            None => break,
                        }
                    }
                    if let Some(reason) = self.closed_by_peer.take() {
                        return reason;
                    }
                }
                _ = tick => {
                    timer = None;
                    self.conn.on_tick(self.clock.now());
                }
                _ = memory.freed_since(memory_wait.unwrap_or_default()), if memory_wait.is_some() => {
                    self.conn.retry_memory();
                }
                // Yielding lets the worker poll its sockets without blocking and come back.
                _ = tokio::task::yield_now(), if busy_polling => continue,
            }
            poll_until = self.clock.now() + self.settings.busy_poll;
            if let Some(reason) = self.apply_outputs(writer) {
                return reason;
            }
        }
    }

    /// Takes a poller slot when the connection wants to poll and holds none, gives it back when
    /// it stops wanting to; whether it may poll now (`pollers.rs`).
    fn hold_poller_slot(&mut self, wants_to_poll: bool) -> bool {
        if wants_to_poll && !self.polling {
            self.polling = self.settings.pollers.try_take();
        } else if !wants_to_poll && self.polling {
            self.settings.pollers.give_back();
            self.polling = false;
        }
        self.polling
    }

    fn on_read(&mut self, event: std::io::Result<ReadEvent>) {
        match event {
            Ok(ReadEvent::Pdu(pdu)) => {
                let ctx = FfpCtx {
                    registry: &self.registry,
                    target: self.target.as_deref(),
                    local: self.endpoint.local,
                    peer: self.endpoint.peer,
                    initiator: &self.initiator_name,
                    nexus: self.nexus.as_deref(),
                };
                self.conn.on_pdu(pdu, self.clock.now(), &ctx);
            }
            Ok(ReadEvent::Bad(err)) => {
                warn!(peer = %self.endpoint.peer, error = %err, "bad PDU");
                self.conn.on_decode_error(&err, self.clock.now());
            }
            Ok(ReadEvent::Eof) => {
                self.closed_by_peer = Some(CloseReason::ConnectionLost("peer closed the connection".into()))
            }
            Err(e) => self.closed_by_peer = Some(CloseReason::ConnectionLost(format!("read failed: {e}"))),
        }
    }

    /// Keeps the responses waiting for the socket charged to the process-wide I/O memory pool
    /// (a client that does not read holds them).
    fn charge_unwritten(&mut self, pending: u64) {
        let memory = &self.memory;
        // Every loop iteration calls this: touch the shared pool only when something changed.
        if pending == self.unwritten_charged {
            return;
        }
        if pending > self.unwritten_charged {
            memory.charge(pending - self.unwritten_charged);
        } else {
            memory.release(self.unwritten_charged - pending);
        }
        self.unwritten_charged = pending;
    }

    fn count(&self, response: &Response) {
        let stats = &self.handle.stats;
        stats.commands.fetch_add(1, Ordering::Relaxed);
        stats.bytes_read.fetch_add(response.data.len() as u64, Ordering::Relaxed);
    }

    /// Carries out the connection's outputs: PDUs are queued on the writer (the event loop
    /// writes them), commands join the running set. Returns the reason when the connection must
    /// close.
    fn apply_outputs<W: AsyncWrite + Unpin>(&mut self, writer: &mut PduWriter<W>) -> Option<CloseReason> {
        let digests = self.conn.digests();
        let mut close = None;
        for output in self.conn.drain() {
            match output {
                Output::Send(pdu) => writer.push(pdu.encode(digests)),
                Output::Execute(exec) => self.execute(exec),
                Output::ResetLun(lun) => self.reset_lun(lun),
                Output::ResetTarget { cold } => self.reset_target(cold),
                Output::NexusReset => self.nexus_reset(),
                Output::Close(reason) => close = Some(reason),
            }
        }
        close
    }

    fn execute(&mut self, exec: crate::iscsi::conn::Exec) {
        let (Some(target), Some(nexus)) = (&self.target, &self.nexus) else {
            // Discovery sessions never get here: the connection rejects their commands.
            return;
        };
        self.handle.stats.bytes_written.fetch_add(exec.data_out.len() as u64, Ordering::Relaxed);
        let scsi = target.scsi.clone();
        let lu = crate::scsi::decode_lun(exec.lun).and_then(|n| scsi.lun_for(n, &nexus.initiator_name));
        let request = Request {
            nexus: nexus.clone(),
            lun: exec.lun,
            cdb: exec.cdb,
            data_out: exec.data_out,
            data_in_max: exec.data_in_max,
        };
        let clock = self.clock.clone();
        let itt = exec.itt;
        let only_reads = request.data_out.is_empty() && request.data_in_max > 0;
        let command = async move {
            let started = clock.now();
            let in_flight = lu.as_ref().map(|lu| lu.metrics.start());
            // A bug in a command handler must not leave the command unanswered forever.
            let handled = std::panic::AssertUnwindSafe(async { scsi.execute(&request).await }).catch_unwind().await;
            let response = match handled {
                Ok(response) => response,
                Err(_) => {
                    tracing::error!(cdb = ?request.cdb, "command handler panicked");
                    Response::check(&Sense::new(key::HARDWARE_ERROR, asc::INTERNAL_TARGET_FAILURE), false)
                }
            };
            if let Some(lu) = &lu {
                let opcode = request.cdb.first().copied().unwrap_or(0);
                let latency = clock.now().saturating_sub(started);
                let (data_in, data_out) = (response.data.len() as u64, request.data_out.len() as u64);
                lu.metrics.record(opcode, response.status == 0, data_in, data_out, latency);
            }
            drop(in_flight);
            (itt, response)
        };
        if only_reads {
            let (command, handle) = futures::future::abortable(command);
            self.cancellable.insert(itt, handle);
            // Only the closing connection cancels: the response is never sent.
            let cancelled = Response::with_status(crate::scsi::status::TASK_ABORTED);
            self.running.push(Box::pin(command.map(move |done| done.unwrap_or((itt, cancelled)))));
        } else {
            self.running.push(Box::pin(command));
        }
    }

    fn reset_lun(&self, lun: u64) {
        let Some(target) = &self.target else { return };
        if let Some(lu) = decode_lun(lun).and_then(|n| target.scsi.lun(n)) {
            info!(target = %target.name, lun, "LOGICAL UNIT RESET");
            lu.reset();
        }
        self.registry.tell_sessions(&target.name, Some(self.handle.tsih), Control::AbortLun(lun));
    }

    /// I_T NEXUS RESET: the nexus loss function on every LU (the session ends next).
    fn nexus_reset(&self) {
        let (Some(target), Some(nexus)) = (&self.target, &self.nexus) else { return };
        info!(target = %target.name, initiator = %nexus.initiator_name, "I_T NEXUS RESET");
        for (_, lu) in target.scsi.luns() {
            lu.nexus_reset(nexus.id);
        }
    }

    fn reset_target(&self, cold: bool) {
        let Some(target) = &self.target else { return };
        info!(target = %target.name, cold, "TARGET RESET");
        for (_, lu) in target.scsi.luns() {
            lu.reset();
        }
        let control = if cold { Control::Close } else { Control::AbortAll };
        self.registry.tell_sessions(&target.name, Some(self.handle.tsih), control);
    }

    /// Cancels running reads, waits for the other running commands (their responses are
    /// dropped), then releases the session.
    async fn teardown(&mut self, dropped: bool) {
        for (_, command) in self.cancellable.drain() {
            command.abort();
        }
        let mut running = self.conn.running().len();
        while running > 0 {
            match tokio::time::timeout(Duration::from_secs(30), self.running.next()).await {
                Ok(Some((itt, response))) => {
                    self.conn.on_complete(itt, response);
                    running = self.conn.running().len();
                }
                _ => {
                    warn!(tsih = self.handle.tsih, running, "commands did not finish after the connection closed");
                    break;
                }
            }
        }
        if dropped && crate::mutants::active(crate::mutants::Mutant::LostWakeup) {
            self.handle.lose_wakeup();
            return;
        }
        self.registry.unregister_session(self.handle.tsih);
        if let (Some(target), Some(nexus)) = (&self.target, &self.nexus) {
            for (_, lu) in target.scsi.luns() {
                lu.nexus_gone(nexus.id);
            }
        }
        self.handle.mark_done();
    }
}
