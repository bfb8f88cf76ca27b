//! A small iSCSI initiator: login (normal and discovery), SCSI commands with concurrent
//! tasks, R2T handling, NOP, task management and logout. Used by the integration tests, the
//! simulation and the benchmark load generator.
//!
//! One [`Session`] drives one connection. Commands may be issued concurrently from many tasks;
//! a reader task routes responses by ITT and answers R2Ts and NOP-In pings.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc, oneshot};

use rtgt::iscsi::conn::TargetRecord;
use rtgt::iscsi::params::parse_number;
use rtgt::iscsi::window::sn_lt;
use rtgt::pdu::*;
use rtgt::scsi::encode_lun;
use rtgt::wire::{PduReader, PduWriter, ReadEvent};

mod login;
mod receive;
mod scsi;
mod task_management;

use login::run_login;
use receive::read_loop;
pub use scsi::rw16;

/// Initiator-side choices for a login.
#[derive(Debug, Clone)]
pub struct InitiatorConfig {
    pub initiator_name: String,
    pub isid: u64,
    pub header_digest: bool,
    pub data_digest: bool,
    /// What we accept per PDU (declared to the target).
    pub max_recv_data_segment_len: u32,
    pub max_burst_len: u32,
    pub first_burst_len: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    /// Go through the security stage (AuthMethod=None) before the operational stage.
    pub security_stage: bool,
    /// How long a command may take before the call fails with [`Error::Timeout`].
    pub command_timeout: Duration,
    /// The iSCSIProtocolLevel to offer (2: RFC 7144's task management functions); none offered
    /// by default (level 1).
    pub protocol_level: Option<u8>,
}

impl Default for InitiatorConfig {
    fn default() -> Self {
        InitiatorConfig {
            initiator_name: "iqn.2026-11.dev.rtgt:initiator".into(),
            isid: 0x80_0000_0001,
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_len: 256 * 1024,
            max_burst_len: 1024 * 1024,
            first_burst_len: 256 * 1024,
            immediate_data: true,
            initial_r2t: false,
            security_stage: true,
            command_timeout: Duration::from_secs(30),
            protocol_level: None,
        }
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("connection: {0}")]
    Io(String),
    #[error("login failed with status {class:#04x}/{detail:#04x}")]
    Login { class: u8, detail: u8 },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the target rejected the PDU (reason {0:#04x})")]
    Rejected(u8),
    #[error("timed out")]
    Timeout,
    #[error("the session is closed")]
    Closed,
    #[error("SCSI status {status:#04x}, sense key {key:#x}, ASC/ASCQ {asc:#04x}/{ascq:#04x}")]
    Check { status: u8, key: u8, asc: u8, ascq: u8 },
    #[error("the command was aborted by task management")]
    Aborted,
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Io(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The outcome of a SCSI command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandResult {
    pub status: u8,
    pub sense: Option<Bytes>,
    pub data: Bytes,
    pub overflow: bool,
    pub underflow: bool,
    pub residual: u32,
}

impl CommandResult {
    /// Sense key and ASC/ASCQ, from fixed or descriptor sense data.
    pub fn sense_code(&self) -> Option<(u8, u8, u8)> {
        let s = self.sense.as_ref()?;
        match s.first()? & 0x7f {
            0x72 | 0x73 if s.len() >= 4 => Some((s[1] & 0x0f, s[2], s[3])),
            0x70 | 0x71 if s.len() >= 14 => Some((s[2] & 0x0f, s[12], s[13])),
            _ => None,
        }
    }

    /// Ok for GOOD (or CONDITION MET), an [`Error::Check`] otherwise.
    pub fn ok(self) -> Result<CommandResult> {
        if self.status == 0 || self.status == 4 {
            return Ok(self);
        }
        let (key, asc, ascq) = self.sense_code().unwrap_or((0, 0, 0));
        Err(Error::Check { status: self.status, key, asc, ascq })
    }
}

/// What the target agreed to at login.
#[derive(Debug, Clone)]
pub struct Negotiated {
    pub header_digest: bool,
    pub data_digest: bool,
    pub target_max_recv_data_segment_len: u32,
    pub max_burst_len: u32,
    pub first_burst_len: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub tsih: u16,
}

/// A response routed to a waiting caller.
enum Reply {
    Scsi(CommandResult),
    Pdu(Box<Pdu>),
    Failed(Error),
}

struct Pending {
    reply: oneshot::Sender<Reply>,
    /// Data-In gathered so far.
    data: BytesMut,
    /// Data to send on R2T.
    write: Bytes,
    lun: u64,
    /// A SCSI command (which a LUN reset aborts), not a TMF, NOP, Text or Logout request.
    scsi: bool,
}

struct State {
    next_itt: u32,
    cmd_sn: u32,
    max_cmd_sn: u32,
    exp_stat_sn: u32,
    pending: BTreeMap<u32, Pending>,
    closed: Option<Error>,
    async_events: Vec<AsyncMessage>,
    /// Tasks we gave up on (timeout): a late response is allowed.
    abandoned: VecDeque<u32>,
    /// Tasks the target said it aborted: any response is a protocol violation.
    aborted: BTreeSet<u32>,
    violations: Violations,
    /// NOP-In pings of the target answered.
    pings_answered: u64,
}

/// Protocol rules the target broke on this session, as seen by the initiator (the
/// simulation's oracles read these).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Violations {
    /// Responses for tasks that were never issued or already answered.
    pub unexpected_responses: u64,
    /// Responses for tasks the target reported aborted.
    pub responses_after_abort: u64,
    /// StatSN not one more than the previous status (or, without status, not the next).
    pub stat_sn_errors: u64,
    /// MaxCmdSN lower than one advertised before.
    pub max_cmd_sn_decreases: u64,
    /// The widest CmdSN window advertised (MaxCmdSN - ExpCmdSN + 1).
    pub widest_window: u32,
}

/// Tasks remembered after a timeout, so that their late answers are not counted unexpected.
const ABANDONED_MAX: usize = 4096;

struct Shared {
    state: Mutex<State>,
    window: Notify,
    out: mpsc::UnboundedSender<EncodedPdu>,
    negotiated: Negotiated,
    config: InitiatorConfig,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

/// A logged-in session over one connection.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("tsih", &self.shared.negotiated.tsih).finish()
    }
}

/// Logs in to a discovery session, asks SendTargets=All and logs out.
pub async fn discover<S>(stream: S, config: &InitiatorConfig) -> Result<Vec<TargetRecord>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let session = Session::login(stream, config, None).await?;
    let records = session.send_targets("All").await?;
    session.logout().await?;
    Ok(records)
}

impl Session {
    /// Logs in to `target` (a normal session), or to a discovery session when `None`.
    pub async fn login<S>(stream: S, config: &InitiatorConfig, target: Option<&str>) -> Result<Session>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(stream);
        let mut reader = PduReader::new(rd);
        let mut writer = PduWriter::new(wr);
        let login = tokio::time::timeout(config.command_timeout, run_login(&mut reader, &mut writer, config, target));
        let (negotiated, cmd_sn, max_cmd_sn, exp_stat_sn) = login.await.map_err(|_| Error::Timeout)??;
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_itt: 1,
                cmd_sn,
                max_cmd_sn,
                exp_stat_sn,
                pending: BTreeMap::new(),
                closed: None,
                async_events: Vec::new(),
                abandoned: VecDeque::new(),
                aborted: BTreeSet::new(),
                violations: Violations::default(),
                pings_answered: 0,
            }),
            window: Notify::new(),
            out: out_tx,
            negotiated,
            config: config.clone(),
            tasks: Mutex::new(Vec::new()),
        });
        let writer = tokio::spawn(write_loop(writer, out_rx)).abort_handle();
        let reader = tokio::spawn(read_loop(reader, shared.clone(), exp_stat_sn)).abort_handle();
        *shared.tasks.lock().expect("poisoned") = vec![writer, reader];
        Ok(Session { shared })
    }

    pub fn negotiated(&self) -> &Negotiated {
        &self.shared.negotiated
    }

    fn digests(&self) -> Digests {
        Digests { header: self.shared.negotiated.header_digest, data: self.shared.negotiated.data_digest }
    }

    /// Async messages received so far (e.g. a logout request at target shutdown).
    pub fn async_events(&self) -> Vec<AsyncMessage> {
        self.shared.state.lock().expect("poisoned").async_events.clone()
    }

    pub fn is_closed(&self) -> bool {
        self.shared.state.lock().expect("poisoned").closed.is_some()
    }

    /// Waits until the session is closed (by either side).
    pub async fn closed(&self) {
        loop {
            // Registered before the check: a close in between still wakes it.
            let notified = self.shared.window.notified();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// Takes an ITT (and a CmdSN unless immediate), registers the waiter, and queues the PDUs
    /// built by `build` — all under one lock so that PDUs leave in CmdSN order.
    async fn submit(
        &self,
        immediate: bool,
        scsi: bool,
        lun: u64,
        write: Bytes,
        build: impl Fn(u32, u32, u32) -> Vec<Pdu>,
    ) -> Result<(u32, u32, oneshot::Receiver<Reply>)> {
        loop {
            let notified = self.shared.window.notified();
            {
                let mut st = self.shared.state.lock().expect("poisoned");
                if let Some(e) = &st.closed {
                    return Err(e.clone());
                }
                if immediate || !sn_lt(st.max_cmd_sn, st.cmd_sn) {
                    let itt = st.next_itt;
                    st.next_itt = st.next_itt.wrapping_add(1).max(1);
                    if st.next_itt == RESERVED_TAG {
                        st.next_itt = 1;
                    }
                    let cmd_sn = st.cmd_sn;
                    if !immediate {
                        st.cmd_sn = st.cmd_sn.wrapping_add(1);
                    }
                    let (tx, rx) = oneshot::channel();
                    st.pending.insert(itt, Pending { reply: tx, data: BytesMut::new(), write, lun, scsi });
                    for pdu in build(itt, cmd_sn, st.exp_stat_sn) {
                        if self.shared.out.send(pdu.encode(self.digests())).is_err() {
                            st.pending.remove(&itt);
                            return Err(Error::Closed);
                        }
                    }
                    return Ok((itt, cmd_sn, rx));
                }
            }
            // The window is closed: wait for a response that opens it.
            tokio::select! {
                biased;
                _ = notified => {}
                _ = tokio::time::sleep(self.shared.config.command_timeout) => return Err(Error::Timeout),
            }
        }
    }

    async fn wait(&self, itt: u32, rx: oneshot::Receiver<Reply>) -> Result<Reply> {
        match tokio::time::timeout(self.shared.config.command_timeout, rx).await {
            Ok(Ok(Reply::Failed(e))) => Err(e),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(self.shared.state.lock().expect("poisoned").closed.clone().unwrap_or(Error::Closed)),
            Err(_) => {
                let mut st = self.shared.state.lock().expect("poisoned");
                st.pending.remove(&itt);
                st.abandoned.push_back(itt);
                if st.abandoned.len() > ABANDONED_MAX {
                    st.abandoned.pop_front();
                }
                Err(Error::Timeout)
            }
        }
    }

    /// Runs a SCSI command. `data_out` is sent (immediate, unsolicited and on R2T as the
    /// session allows); `read_len` is the expected data-in length.
    pub async fn command(&self, lun: u16, cdb: &[u8], data_out: Bytes, read_len: u32) -> Result<CommandResult> {
        let (itt, _, rx) = self.submit_command(lun, cdb, data_out, read_len, false).await?;
        match self.wait(itt, rx).await? {
            Reply::Scsi(r) => Ok(r),
            _ => Err(Error::Protocol("unexpected reply to a SCSI command".into())),
        }
    }

    /// Like [`Session::command`] but returns the ITT and CmdSN at once (for task management),
    /// with a future of the result.
    pub async fn start_command(
        &self,
        lun: u16,
        cdb: &[u8],
        data_out: Bytes,
        read_len: u32,
    ) -> Result<(u32, u32, impl std::future::Future<Output = Result<CommandResult>> + use<>)> {
        let (itt, cmd_sn, rx) = self.submit_command(lun, cdb, data_out, read_len, false).await?;
        let this = self.clone();
        Ok((itt, cmd_sn, async move {
            match this.wait(itt, rx).await? {
                Reply::Scsi(r) => Ok(r),
                _ => Err(Error::Protocol("unexpected reply to a SCSI command".into())),
            }
        }))
    }

    async fn submit_command(
        &self,
        lun: u16,
        cdb: &[u8],
        data_out: Bytes,
        read_len: u32,
        immediate: bool,
    ) -> Result<(u32, u32, oneshot::Receiver<Reply>)> {
        let n = &self.shared.negotiated;
        let lun = encode_lun(lun);
        let mut cdb16 = [0u8; 16];
        cdb16[..cdb.len().min(16)].copy_from_slice(&cdb[..cdb.len().min(16)]);
        let extended = (cdb.len() > 16).then(|| Bytes::copy_from_slice(&cdb[16..]));
        let edtl = data_out.len() as u32;
        let segment = n.target_max_recv_data_segment_len as usize;
        let first_burst = (n.first_burst_len as usize).min(data_out.len());
        let immediate_len = if n.immediate_data { first_burst.min(segment) } else { 0 };
        let unsolicited_end = if n.initial_r2t { immediate_len } else { first_burst };
        let write = data_out.clone();
        self.submit(immediate, true, lun, write, move |itt, cmd_sn, exp_stat_sn| {
            let command = ScsiCommand {
                immediate,
                fin: unsolicited_end == immediate_len,
                read: read_len > 0,
                write: edtl > 0,
                attr: task_attr::SIMPLE,
                lun,
                itt,
                expected_data_len: if edtl > 0 { edtl } else { read_len },
                cmd_sn,
                exp_stat_sn,
                cdb: cdb16,
            };
            let mut pdu = Pdu::with_data(command, data_out.slice(..immediate_len));
            if let Some(ext) = &extended {
                pdu.ahs.push(Ahs { ahs_type: AHS_EXTENDED_CDB, specific: 0, data: ext.clone() });
            }
            let mut pdus = vec![pdu];
            pdus.extend(data_outs(
                &data_out,
                itt,
                lun,
                RESERVED_TAG,
                immediate_len,
                unsolicited_end,
                segment,
                exp_stat_sn,
            ));
            pdus
        })
        .await
    }

    // ---- other PDUs ----

    /// A NOP-Out ping (non-immediate, so it also tests the CmdSN window) echoing `data`.
    pub async fn nop(&self, data: Bytes) -> Result<Bytes> {
        let (itt, _, rx) = self
            .submit(false, false, 0, Bytes::new(), |itt, cmd_sn, exp_stat_sn| {
                let nop = NopOut { immediate: false, lun: 0, itt, ttt: RESERVED_TAG, cmd_sn, exp_stat_sn };
                vec![Pdu::with_data(nop, data.clone())]
            })
            .await?;
        match self.wait(itt, rx).await? {
            Reply::Pdu(p) => Ok(p.data),
            _ => Err(Error::Protocol("unexpected reply to a NOP-Out".into())),
        }
    }

    /// Rules the target broke so far on this session.
    pub fn violations(&self) -> Violations {
        self.shared.state.lock().expect("poisoned").violations.clone()
    }

    /// Drops the connection at once, without logging out (a crashed or cut-off initiator).
    pub fn disconnect(&self) {
        for t in self.shared.tasks.lock().expect("poisoned").drain(..) {
            t.abort();
        }
        self.close(Error::Closed);
    }

    /// The CmdSN the next non-immediate command will carry.
    pub fn next_cmd_sn(&self) -> u32 {
        self.shared.state.lock().expect("poisoned").cmd_sn
    }

    /// How many of the target's NOP-In pings this session has answered.
    pub fn pings_answered(&self) -> u64 {
        self.shared.state.lock().expect("poisoned").pings_answered
    }

    /// Text request SendTargets=<which>.
    pub async fn send_targets(&self, which: &str) -> Result<Vec<TargetRecord>> {
        let mut body = Vec::new();
        let mut ttt = RESERVED_TAG;
        let mut request = Some(text::encode(&[("SendTargets", which)]));
        loop {
            let data = request.take().unwrap_or_default();
            let (itt, _, rx) = self
                .submit(false, false, 0, Bytes::new(), |itt, cmd_sn, exp_stat_sn| {
                    let t =
                        TextRequest { immediate: false, fin: true, cont: false, lun: 0, itt, ttt, cmd_sn, exp_stat_sn };
                    vec![Pdu::with_data(t, data.clone())]
                })
                .await?;
            let Reply::Pdu(p) = self.wait(itt, rx).await? else {
                return Err(Error::Protocol("unexpected reply to a text request".into()));
            };
            let Bhs::TextResponse(r) = p.bhs else { return Err(Error::Protocol("not a text response".into())) };
            body.extend_from_slice(&p.data);
            if r.fin {
                break;
            }
            ttt = r.ttt;
        }
        let pairs = text::parse(&body).map_err(|e| Error::Protocol(e.to_string()))?;
        let mut out: Vec<TargetRecord> = Vec::new();
        for (k, v) in pairs {
            match k.as_str() {
                "TargetName" => out.push(TargetRecord { name: v, addresses: Vec::new() }),
                "TargetAddress" => {
                    if let Some(t) = out.last_mut() {
                        t.addresses.push(v);
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Logs out (closing the session) and waits for the response.
    pub async fn logout(&self) -> Result<()> {
        let (itt, _, rx) = self
            .submit(true, false, 0, Bytes::new(), |itt, cmd_sn, exp_stat_sn| {
                vec![Pdu::new(LogoutRequest {
                    immediate: true,
                    reason: logout::CLOSE_SESSION,
                    itt,
                    cid: 0,
                    cmd_sn,
                    exp_stat_sn,
                })]
            })
            .await?;
        let reply = self.wait(itt, rx).await?;
        self.close(Error::Closed);
        match reply {
            Reply::Pdu(p) if matches!(p.bhs, Bhs::LogoutResponse(LogoutResponse { response: 0, .. })) => Ok(()),
            _ => Err(Error::Protocol("logout refused".into())),
        }
    }

    /// Sends a PDU as is (tests of hostile input). Its reply, if any, is not awaited.
    pub fn send_raw(&self, pdu: &Pdu) -> Result<()> {
        self.shared.out.send(pdu.encode(self.digests())).map_err(|_| Error::Closed)
    }

    fn close(&self, reason: Error) {
        close_shared(&self.shared, reason);
    }
}

fn close_shared(shared: &Shared, reason: Error) {
    let pending: Vec<Pending> = {
        let mut st = shared.state.lock().expect("poisoned");
        st.closed.get_or_insert(reason.clone());
        std::mem::take(&mut st.pending).into_values().collect()
    };
    for p in pending {
        let _ = p.reply.send(Reply::Failed(reason.clone()));
    }
    shared.window.notify_waiters();
}

/// Data-Out PDUs for `[from, to)` of `data`, split at `segment` bytes, DataSN from 0.
#[allow(clippy::too_many_arguments)]
fn data_outs(
    data: &Bytes,
    itt: u32,
    lun: u64,
    ttt: u32,
    from: usize,
    to: usize,
    segment: usize,
    exp_stat_sn: u32,
) -> Vec<Pdu> {
    let mut out = Vec::new();
    let mut at = from;
    let mut data_sn = 0;
    while at < to {
        let len = segment.min(to - at);
        let d = DataOut { fin: at + len == to, lun, itt, ttt, exp_stat_sn, data_sn, buffer_offset: at as u32 };
        out.push(Pdu::with_data(d, data.slice(at..at + len)));
        at += len;
        data_sn += 1;
    }
    out
}

async fn write_loop<W: AsyncWrite + Unpin>(mut writer: PduWriter<W>, mut rx: mpsc::UnboundedReceiver<EncodedPdu>) {
    while let Some(first) = rx.recv().await {
        writer.push(first);
        while let Ok(p) = rx.try_recv() {
            writer.push(p);
        }
        if writer.flush().await.is_err() {
            break;
        }
    }
    let _ = writer.shutdown().await;
}
