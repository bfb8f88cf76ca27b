//! The full-feature phase of a connection (RFC 7143): a sans-IO state machine.
//!
//! The driver feeds it received PDUs ([`Connection::on_pdu`]), finished SCSI commands
//! ([`Connection::on_complete`]) and timer ticks ([`Connection::on_tick`]), always with `now`,
//! and drains [`Output`]s: PDUs to send, SCSI commands to run, resets to apply, a close.
//!
//! With MaxConnections=1 the session and its one connection share this state: the CmdSN
//! window, the task set and StatSN.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::memory::{IoMemory, MemoryAccount};
use super::params::{Params, SessionKind};
use super::window::{Arrival, CmdWindow};
use crate::pdu::*;
use crate::scsi::{Response, Sense, asc, key, status};

/// Limits of one connection.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    /// Non-immediate commands the initiator may have outstanding (the CmdSN window).
    pub queue_depth: u32,
    /// Idle time after which the target pings the initiator with a NOP-In.
    pub nop_interval: Duration,
    /// Time without any PDU from the initiator after a ping before the connection is dropped.
    pub nop_timeout: Duration,
    /// Time the initiator may leave the target waiting for what it owes: Data-Out for data it
    /// was asked for (R2T), or the command that fills a gap in its CmdSNs. What waits holds
    /// its reservation meanwhile, so this bounds how long a client can pin buffer memory by
    /// not sending what it promised. (A polite initiator never leaves a gap: over one TCP
    /// connection its commands arrive in order.)
    pub data_out_timeout: Duration,
    /// Largest expected data transfer length of one command.
    pub max_transfer_bytes: u32,
    /// Bytes of command data (read and write buffers) the connection may hold at once.
    pub buffer_budget: u64,
    /// The process-wide pool every connection's command data is also reserved from, through
    /// the account of the connection's source address.
    pub memory: MemoryAccount,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            queue_depth: 128,
            nop_interval: Duration::from_secs(30),
            nop_timeout: Duration::from_secs(90),
            data_out_timeout: Duration::from_secs(30),
            max_transfer_bytes: 64 << 20,
            buffer_budget: 256 << 20,
            memory: Arc::new(IoMemory::default()).unshared(),
        }
    }
}

/// A target known to discovery: its name and addresses ("host:port,tpgt").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRecord {
    pub name: String,
    pub addresses: Vec<String>,
}

/// What the connection asks of the target around it.
pub trait ConnContext {
    /// Targets visible to this initiator through this portal group, for SendTargets.
    fn targets(&self) -> Vec<TargetRecord>;
    /// The session's own target (for SendTargets with an empty value in a normal session).
    fn own_target(&self) -> Option<String>;
    fn lun_exists(&self, lun: u64) -> bool;
    /// Whether this session's initiator may reset the whole target.
    fn may_reset_target(&self) -> bool;
    /// The unit attention pending for this session's nexus on a LUN, left pending (QUERY
    /// ASYNC EVENT).
    fn pending_unit_attention(&self, lun: u64) -> Option<(u8, u8)>;
}

/// A SCSI command ready to run.
#[derive(Debug, Clone)]
pub struct Exec {
    pub itt: u32,
    pub lun: u64,
    pub cdb: Bytes,
    pub data_out: Bytes,
    /// The most data-in the initiator takes (its expected length, for a read).
    pub data_in_max: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    Logout,
    NopTimeout,
    /// Write data asked for with R2Ts, or a command filling a CmdSN gap, did not come within
    /// the data-out timeout.
    OwedInputTimeout,
    ProtocolError(String),
    /// The connection itself went: the peer closed it, or a read or write on it failed.
    ConnectionLost(String),
    ColdReset,
    /// An I_T NEXUS RESET ends the session (RFC 7144 §6.3).
    NexusReset,
}

/// Work for the driver.
#[derive(Debug)]
pub enum Output {
    Send(Pdu),
    Execute(Exec),
    /// A LOGICAL UNIT RESET: reset the LU and abort other sessions' tasks on it.
    ResetLun(u64),
    /// A TARGET WARM (or COLD) RESET: reset every LU of the target; a cold reset also drops
    /// every session after this connection's TMF response has gone out.
    ResetTarget {
        cold: bool,
    },
    /// An I_T NEXUS RESET: the I_T nexus loss function on every LU, for this session's nexus.
    NexusReset,
    Close(CloseReason),
}

/// Data-Out bookkeeping of a write command.
#[derive(Debug)]
struct WriteIn {
    buf: BytesMut,
    /// All of the data, when it came whole as immediate data: kept as received, not copied.
    whole: Option<Bytes>,
    /// Bytes that will be collected in total (EDTL, or only the unsolicited part on failure).
    collect_len: u32,
    /// End offset of the unsolicited data (immediate data plus unsolicited Data-Out).
    unsolicited_end: u32,
    unsolicited_next_offset: u32,
    unsolicited_next_sn: u32,
    unsolicited_done: bool,
    /// Next offset to solicit with an R2T.
    solicit_from: u32,
    r2t_sn: u32,
    r2ts: Vec<R2tSeq>,
}

#[derive(Debug)]
struct R2tSeq {
    ttt: u32,
    end: u32,
    next_offset: u32,
    next_data_sn: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Gathering Data-Out.
    Collecting,
    /// Waiting for its CmdSN turn, the buffer budget, or both.
    Waiting,
    /// Handed to the driver; the completion will come back.
    Running,
}

/// A command's task attribute (SAM-5 §8.6; ATTR in the SCSI Command PDU). Each connection is
/// its own task set (TST 001b: one session, one connection), so the attributes order the
/// commands of one I_T nexus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskAttr {
    /// Runs as soon as it can, beside the others (UNTAGGED and ACA are taken as SIMPLE).
    Simple,
    /// Starts once every older task of its LUN is done; newer ones wait for it.
    Ordered,
    /// Starts at once, ahead of any task waiting.
    HeadOfQueue,
}

impl TaskAttr {
    fn from_wire(attr: u8) -> TaskAttr {
        match attr {
            2 => TaskAttr::Ordered,
            3 => TaskAttr::HeadOfQueue,
            _ => TaskAttr::Simple,
        }
    }
}

#[derive(Debug)]
struct Task {
    itt: u32,
    immediate: bool,
    attr: TaskAttr,
    /// Where its delivery (its CmdSN turn) came among the connection's tasks; 0 until then.
    order: u64,
    lun: u64,
    cdb: Bytes,
    read: bool,
    edtl: u32,
    phase: Phase,
    /// Its CmdSN turn has come (always true for immediate commands).
    delivered: bool,
    write: Option<WriteIn>,
    /// Answer with this instead of running the command (its data is then not kept).
    failure: Option<Failure>,
    /// Budget held for the command's data.
    budget: u64,
    /// Aborted by a TMF or a reset: no response will be sent.
    aborted: bool,
}

/// Why a task is answered without running.
#[derive(Debug, Clone)]
enum Failure {
    /// CHECK CONDITION with this sense.
    Check(Sense),
    /// A status without sense: TASK SET FULL when there was no memory for its data.
    Status(u8),
}

impl Failure {
    fn response(&self, edtl: u32) -> Response {
        let (status, sense) = match self {
            Failure::Check(sense) => (status::CHECK_CONDITION, Some(sense.encode(false))),
            Failure::Status(status) => (*status, None),
        };
        Response { status, sense, data: Bytes::new(), data_out_len: edtl, data_in_called_for: None }
    }
}

impl Task {
    fn collection_done(&self) -> bool {
        match &self.write {
            None => true,
            Some(w) => w.unsolicited_done && w.solicit_from >= w.collect_len && w.r2ts.is_empty(),
        }
    }
}

/// A task management response waiting for aborted tasks to finish.
#[derive(Debug)]
struct PendingTmf {
    itt: u32,
    answer: TmfAnswer,
    waiting_on: BTreeSet<u32>,
}

/// What a task management function answers (once the tasks it aborted have completed).
#[derive(Debug, Clone)]
struct TmfAnswer {
    response: u8,
    /// Bytes 8-10 of the response (QUERY ASYNC EVENT).
    additional: [u8; 3],
    /// The connection closes once the response is out (a cold reset, an I_T nexus reset).
    close: Option<CloseReason>,
}

impl TmfAnswer {
    fn just(response: u8) -> TmfAnswer {
        TmfAnswer { response, additional: [0; 3], close: None }
    }

    /// FUNCTION SUCCEEDED when a QUERY found what it asked about, FUNCTION COMPLETE if not.
    fn found(found: bool) -> TmfAnswer {
        TmfAnswer::just(if found { tmf::FUNCTION_SUCCEEDED } else { tmf::FUNCTION_COMPLETE })
    }
}

/// Something held in the CmdSN window until its turn.
#[derive(Debug)]
enum Held {
    /// A SCSI command whose task already exists (it may be collecting data).
    Task(u32),
    /// Any other non-immediate PDU.
    Pdu(Box<Pdu>),
    /// A command aborted before it arrived: its CmdSN counts as received.
    Aborted,
}

/// How far the initiator has come with what it owes (see [`ConnConfig::data_out_timeout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InputProgress {
    data_outs: u64,
    exp_cmd_sn: u32,
}

/// Long text responses, sent in pieces as the initiator asks for more.
#[derive(Debug)]
struct TextOut {
    ttt: u32,
    segments: VecDeque<Bytes>,
}

/// Most immediate (out-of-window) SCSI commands outstanding at once.
const IMMEDIATE_TASKS_MAX: usize = 64;

pub struct Connection {
    params: Params,
    kind: SessionKind,
    cfg: ConnConfig,
    cid: u16,
    stat_sn: u32,
    window: CmdWindow<Held>,
    tasks: BTreeMap<u32, Task>,
    /// Tasks ready but waiting for budget, in arrival order.
    budget_queue: VecDeque<u32>,
    budget_used: u64,
    /// The head of `budget_queue` waits for the process-wide pool, which had moved this far
    /// when it was refused.
    memory_refused_at: Option<u64>,
    tmfs: Vec<PendingTmf>,
    /// Tasks delivered so far (each task's `order`), and live tasks whose attribute is ORDERED.
    deliveries: u64,
    ordered_tasks: usize,
    next_ttt: u32,
    text_in: text::TextBuffer,
    /// The request being gathered across PDUs (C bit): its ITT and the TTT we answered with.
    text_in_exchange: Option<(u32, u32)>,
    text_out: Option<TextOut>,
    last_rx: Duration,
    ping: Option<(u32, Duration)>,
    /// Data-Out PDUs received so far.
    data_outs: u64,
    /// An R2T went out, or a PDU was held behind a CmdSN gap, since the last tick (which
    /// then looks at what the initiator owes).
    owing: bool,
    /// While the initiator owes input: its progress when a tick first saw the wait, and when
    /// ([`Connection::check_owed_input`]).
    owed_input_wait: Option<(InputProgress, Duration)>,
    closing: bool,
    out: Vec<Output>,
    /// MaxCmdSN last sent to the initiator.
    advertised_max_cmd_sn: u32,
    /// The ExpStatSN of the initiator's last PDU: statuses before it, it has read.
    acknowledged_stat_sn: u32,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Whatever its tasks still hold goes back to the process-wide pool.
        self.cfg.memory.release(self.budget_used);
    }
}

impl Connection {
    pub fn new(
        params: Params,
        kind: SessionKind,
        cid: u16,
        exp_cmd_sn: u32,
        stat_sn: u32,
        cfg: ConnConfig,
        now: Duration,
    ) -> Connection {
        let window = CmdWindow::new(exp_cmd_sn, cfg.queue_depth);
        let advertised_max_cmd_sn = window.max_cmd_sn();
        Connection {
            params,
            kind,
            cfg,
            cid,
            stat_sn,
            window,
            tasks: BTreeMap::new(),
            budget_queue: VecDeque::new(),
            budget_used: 0,
            memory_refused_at: None,
            tmfs: Vec::new(),
            deliveries: 0,
            ordered_tasks: 0,
            next_ttt: 1,
            text_in: text::TextBuffer::default(),
            text_in_exchange: None,
            text_out: None,
            last_rx: now,
            ping: None,
            data_outs: 0,
            owing: false,
            owed_input_wait: None,
            closing: false,
            out: Vec::new(),
            advertised_max_cmd_sn,
            acknowledged_stat_sn: stat_sn,
        }
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The digests and limits for decoding the initiator's PDUs.
    pub fn decode_limits(&self) -> (Digests, Limits) {
        (
            Digests { header: self.params.header_digest, data: self.params.data_digest },
            Limits { data_segment_len_max: self.params.target_max_recv_data_segment_len },
        )
    }

    pub fn digests(&self) -> Digests {
        Digests { header: self.params.header_digest, data: self.params.data_digest }
    }

    pub fn exp_cmd_sn(&self) -> u32 {
        self.window.exp_cmd_sn()
    }

    pub fn max_cmd_sn(&self) -> u32 {
        self.window.max_cmd_sn()
    }

    pub fn stat_sn(&self) -> u32 {
        self.stat_sn
    }

    /// Commands handed to the driver and not yet completed.
    pub fn running(&self) -> Vec<u32> {
        self.tasks.values().filter(|t| t.phase == Phase::Running).map(|t| t.itt).collect()
    }

    /// Statuses sent that the initiator had not acknowledged (by its ExpStatSN) when it last
    /// sent a PDU: at most one when it waits for each answer before it sends again, the way
    /// one at queue depth 1 does.
    pub fn unacknowledged_statuses(&self) -> u32 {
        self.stat_sn.wrapping_sub(self.acknowledged_stat_sn)
    }

    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    pub fn drain(&mut self) -> Vec<Output> {
        self.advertise_window();
        std::mem::take(&mut self.out)
    }

    /// Sends a NOP-In that carries nothing but a wider window, when the window opened and no
    /// other PDU would tell the initiator (e.g. after silently aborted commands).
    fn advertise_window(&mut self) {
        let max = self.window.max_cmd_sn();
        if max == self.advertised_max_cmd_sn || self.closing {
            return;
        }
        let carried = self.out.iter().any(|o| matches!(o, Output::Send(_)));
        if !carried {
            let nop = NopIn {
                lun: 0,
                itt: RESERVED_TAG,
                ttt: RESERVED_TAG,
                stat_sn: self.stat_sn,
                exp_cmd_sn: self.window.exp_cmd_sn(),
                max_cmd_sn: max,
            };
            self.out.push(Output::Send(Pdu::new(nop)));
        }
        self.advertised_max_cmd_sn = max;
    }

    // ---- numbering helpers ----

    fn next_stat_sn(&mut self) -> u32 {
        let sn = self.stat_sn;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        sn
    }

    fn alloc_ttt(&mut self) -> u32 {
        let ttt = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        ttt
    }

    fn send(&mut self, pdu: Pdu) {
        self.out.push(Output::Send(pdu));
    }

    fn reject(&mut self, reason: u8, header: &[u8; BHS_LEN]) {
        let reject = Reject {
            reason,
            stat_sn: self.next_stat_sn(),
            exp_cmd_sn: self.window.exp_cmd_sn(),
            max_cmd_sn: self.window.max_cmd_sn(),
            data_sn: 0,
        };
        self.send(Pdu::with_data(reject, Bytes::copy_from_slice(header)));
    }

    /// Answers a PDU that failed to decode but whose framing survived.
    pub fn on_decode_error(&mut self, err: &PduError, now: Duration) {
        self.last_rx = now;
        let Some(header) = err.rejectable_header() else {
            // The stream cannot be resynchronized: nothing more is read from it.
            self.closing = true;
            self.out.push(Output::Close(CloseReason::ProtocolError(err.to_string())));
            return;
        };
        let reason = match err {
            PduError::DataDigest { .. } => reject_reason::DATA_DIGEST_ERROR,
            PduError::UnknownOpcode { .. } => reject_reason::COMMAND_NOT_SUPPORTED,
            _ => reject_reason::PROTOCOL_ERROR,
        };
        // A lost Data-Out can never complete its command at ERL 0: fail the task.
        if let PduError::DataDigest { opcode: Opcode::DataOut, header } = err
            && let Ok(Bhs::DataOut(d)) = Bhs::decode(header)
            && let Some(task) = self.tasks.get_mut(&d.itt)
        {
            task.failure
                .get_or_insert(Failure::Check(Sense::new(key::ABORTED_COMMAND, asc::PROTOCOL_SERVICE_CRC_ERROR)));
        }
        let header = *header;
        self.reject(reason, &header);
    }

    // ---- receive path ----

    pub fn on_pdu(&mut self, pdu: Pdu, now: Duration, ctx: &dyn ConnContext) {
        self.last_rx = now;
        self.ping = None;
        if let Some(exp_stat_sn) = pdu.bhs.exp_stat_sn() {
            self.acknowledged_stat_sn = exp_stat_sn;
        }
        if self.closing {
            return;
        }
        match &pdu.bhs {
            Bhs::DataOut(d) => {
                let d = *d;
                self.data_outs += 1;
                self.on_data_out(&d, pdu.data);
                return;
            }
            Bhs::NopOut(n) if n.itt == RESERVED_TAG => return, // answer to our ping
            Bhs::SnackRequest(_) | Bhs::LoginRequest(_) => {
                // ERL 0 has no SNACK; a login in full-feature phase is a protocol error.
                let header = pdu.bhs.encode();
                self.reject(reject_reason::PROTOCOL_ERROR, &header);
                return;
            }
            bhs if !bhs.opcode().is_initiator_opcode() => {
                let header = pdu.bhs.encode();
                self.reject(reject_reason::PROTOCOL_ERROR, &header);
                return;
            }
            _ => {}
        }
        let (immediate, cmd_sn) = match &pdu.bhs {
            Bhs::ScsiCommand(c) => (c.immediate, c.cmd_sn),
            Bhs::NopOut(c) => (c.immediate, c.cmd_sn),
            Bhs::TaskMgmtRequest(c) => (c.immediate, c.cmd_sn),
            Bhs::TextRequest(c) => (c.immediate, c.cmd_sn),
            Bhs::LogoutRequest(c) => (c.immediate, c.cmd_sn),
            _ => unreachable!("handled above"),
        };
        if immediate {
            self.dispatch_now(pdu, ctx);
            return;
        }
        match self.window.arrival(cmd_sn) {
            Arrival::Outside => {
                tracing::debug!(cmd_sn, exp = self.window.exp_cmd_sn(), "CmdSN outside the window: dropped");
            }
            Arrival::Ahead => {
                if let Bhs::ScsiCommand(c) = &pdu.bhs {
                    let itt = c.itt;
                    // A command answered at once still uses its CmdSN.
                    let held = if self.new_task(&pdu, false) { Held::Task(itt) } else { Held::Aborted };
                    self.window.hold(cmd_sn, held);
                } else {
                    let held = self.hold_pdu(pdu);
                    self.window.hold(cmd_sn, held);
                }
                self.owing = true;
            }
            Arrival::InOrder => {
                match &pdu.bhs {
                    Bhs::ScsiCommand(c) => {
                        let itt = c.itt;
                        if self.new_task(&pdu, false) {
                            self.window.advance(true);
                            self.deliver(itt);
                        } else {
                            // Rejected at once: the CmdSN is used but occupies nothing.
                            self.window.advance(false);
                        }
                    }
                    _ => {
                        self.window.advance(false);
                        self.dispatch_now(pdu, ctx);
                    }
                }
                self.release_held(ctx);
            }
        }
    }

    /// Delivers held commands whose turn came.
    fn release_held(&mut self, ctx: &dyn ConnContext) {
        while let Some(held) = self.window.next_held() {
            match held {
                Held::Task(itt) => {
                    let alive = self.tasks.get(&itt).is_some_and(|t| !t.aborted);
                    self.window.advance(alive);
                    if alive {
                        self.deliver(itt);
                    } else {
                        self.forget(itt);
                    }
                }
                Held::Pdu(pdu) => {
                    self.window.advance(false);
                    self.release_budget(pdu.data.len() as u64);
                    self.dispatch_now(*pdu, ctx);
                }
                Held::Aborted => self.window.advance(false),
            }
        }
    }

    /// Holds a PDU other than a SCSI command until its CmdSN turn, its data (a NOP-Out's ping,
    /// a text request) reserved like a command's, since a window's worth of them is tens of
    /// MiB. Without room it is rejected and its CmdSN counts as received. (A polite initiator
    /// never gets here: over one TCP connection its PDUs arrive in CmdSN order.)
    fn hold_pdu(&mut self, pdu: Pdu) -> Held {
        let want = pdu.data.len() as u64;
        if want == 0 || self.reserve_on_arrival(want).is_some() {
            return Held::Pdu(Box::new(pdu));
        }
        let header = pdu.bhs.encode();
        // "Long Operation Reject": the reason RFC 7143 gives for a target out of resources.
        self.reject(reject_reason::LONG_OPERATION_REJECT, &header);
        Held::Aborted
    }

    /// Handles a PDU whose turn it is (or an immediate one).
    fn dispatch_now(&mut self, pdu: Pdu, ctx: &dyn ConnContext) {
        match &pdu.bhs {
            Bhs::ScsiCommand(c) => {
                let itt = c.itt;
                if self.new_task(&pdu, true) {
                    self.deliver(itt);
                }
            }
            Bhs::NopOut(n) => {
                let mut data = pdu.data.clone();
                data.truncate(self.params.initiator_max_recv_data_segment_len as usize);
                let nop = NopIn {
                    lun: n.lun,
                    itt: n.itt,
                    ttt: RESERVED_TAG,
                    stat_sn: self.next_stat_sn(),
                    exp_cmd_sn: self.window.exp_cmd_sn(),
                    max_cmd_sn: self.window.max_cmd_sn(),
                };
                self.send(Pdu::with_data(nop, data));
            }
            Bhs::TaskMgmtRequest(t) => {
                let t = *t;
                self.on_task_mgmt(&t, ctx);
            }
            Bhs::TextRequest(t) => {
                let t = *t;
                self.on_text(&t, &pdu.data, ctx);
            }
            Bhs::LogoutRequest(l) => {
                let l = *l;
                self.on_logout(&l);
            }
            _ => unreachable!("only commands are dispatched"),
        }
    }

    /// Creates the task for a SCSI Command PDU. Returns false when the command was answered
    /// at once (rejected) and no task exists.
    fn new_task(&mut self, pdu: &Pdu, immediate: bool) -> bool {
        let Bhs::ScsiCommand(c) = pdu.bhs else { unreachable!("SCSI command") };
        let header = pdu.bhs.encode();
        if self.kind == SessionKind::Discovery {
            self.reject(reject_reason::PROTOCOL_ERROR, &header);
            return false;
        }
        if self.tasks.contains_key(&c.itt) || c.itt == RESERVED_TAG {
            self.reject(reject_reason::TASK_IN_PROGRESS, &header);
            return false;
        }
        if immediate && self.tasks.values().filter(|t| t.immediate).count() >= IMMEDIATE_TASKS_MAX {
            self.respond_status(c.itt, status::TASK_SET_FULL);
            return false;
        }
        let imm = &pdu.data;
        let unsolicited_allowed = self.params.immediate_data || !self.params.initial_r2t;
        if !imm.is_empty()
            && (!c.write
                || !self.params.immediate_data
                || imm.len() as u32 > c.expected_data_len.min(self.params.first_burst_len))
        {
            self.reject(reject_reason::PROTOCOL_ERROR, &header);
            return false;
        }
        if !c.fin && (!c.write || self.params.initial_r2t || !unsolicited_allowed) {
            self.reject(reject_reason::PROTOCOL_ERROR, &header);
            return false;
        }
        let mut cdb = BytesMut::from(&c.cdb[..]);
        if let Some(ext) = pdu.extended_cdb() {
            cdb.extend_from_slice(ext);
        }
        let mut failure = None;
        let mut budget = 0;
        let write = if c.write && c.expected_data_len > 0 {
            let edtl = c.expected_data_len;
            let unsolicited_end = if c.fin { imm.len() as u32 } else { edtl.min(self.params.first_burst_len) };
            let mut collect_len = edtl;
            if edtl > self.cfg.max_transfer_bytes {
                // Too large to buffer: let the unsolicited data go by, then fail the command.
                failure = Some(Failure::Check(Sense::invalid_cdb(0, None)));
                collect_len = unsolicited_end;
            } else if unsolicited_end > 0 {
                match self.reserve_on_arrival(edtl as u64) {
                    Some(reserved) => budget = reserved,
                    None => {
                        failure = Some(Failure::Status(status::TASK_SET_FULL));
                        collect_len = unsolicited_end;
                    }
                }
            }
            // A failed command's data is counted as it passes, never kept.
            let mut buf = BytesMut::new();
            let whole = (failure.is_none() && imm.len() as u32 == edtl).then(|| imm.clone());
            if failure.is_none() && whole.is_none() {
                buf.reserve(unsolicited_end as usize);
                buf.extend_from_slice(imm);
            }
            Some(WriteIn {
                buf,
                whole,
                collect_len,
                unsolicited_end,
                unsolicited_next_offset: imm.len() as u32,
                unsolicited_next_sn: 0,
                unsolicited_done: imm.len() as u32 >= unsolicited_end,
                solicit_from: unsolicited_end,
                r2t_sn: 0,
                r2ts: Vec::new(),
            })
        } else {
            None
        };
        if c.read && c.expected_data_len > self.cfg.max_transfer_bytes {
            failure = Some(Failure::Check(Sense::invalid_cdb(0, None)));
        }
        let attr = TaskAttr::from_wire(c.attr);
        self.ordered_tasks += (attr == TaskAttr::Ordered) as usize;
        let task = Task {
            itt: c.itt,
            immediate,
            attr,
            order: 0,
            lun: c.lun,
            cdb: cdb.freeze(),
            read: c.read,
            edtl: c.expected_data_len,
            phase: Phase::Collecting,
            delivered: false,
            write,
            failure,
            budget,
            aborted: false,
        };
        self.tasks.insert(c.itt, task);
        self.progress(c.itt);
        true
    }

    /// The command's CmdSN turn has come.
    fn deliver(&mut self, itt: u32) {
        if let Some(t) = self.tasks.get_mut(&itt) {
            t.delivered = true;
            self.deliveries += 1;
            t.order = self.deliveries;
        }
        self.progress(itt);
    }

    /// Whether the task attributes let a delivered task start: a HEAD OF QUEUE task at once,
    /// an ORDERED one once no older task of its LUN is left, any other once no older ORDERED
    /// task of its LUN is left.
    fn order_allows(&self, itt: u32) -> bool {
        let t = &self.tasks[&itt];
        if t.attr == TaskAttr::HeadOfQueue || (t.attr == TaskAttr::Simple && self.ordered_tasks == 0) {
            return true;
        }
        let mut older =
            self.tasks.values().filter(|o| o.lun == t.lun && o.delivered && !o.aborted && o.order < t.order);
        match t.attr {
            TaskAttr::Ordered => older.next().is_none(),
            _ => !older.any(|o| o.attr == TaskAttr::Ordered),
        }
    }

    /// Moves along the tasks of a LUN that their attributes held, oldest first.
    fn release_ordered(&mut self, lun: u64) {
        let mut held: Vec<(u64, u32)> = self
            .tasks
            .values()
            .filter(|t| t.lun == lun && t.delivered && !t.aborted && t.phase != Phase::Running)
            .map(|t| (t.order, t.itt))
            .collect();
        held.sort_unstable();
        for (_, itt) in held {
            self.progress(itt);
        }
    }

    /// Moves a task along: solicit data, wait for its turn and budget, run it, or answer it.
    fn progress(&mut self, itt: u32) {
        let Some(task) = self.tasks.get(&itt) else { return };
        if task.aborted || task.phase == Phase::Running {
            return;
        }
        if task.failure.is_some() {
            // Stop soliciting; answer once the data already on its way has arrived.
            if let Some(w) = self.tasks.get_mut(&itt).and_then(|t| t.write.as_mut()) {
                w.collect_len = w.solicit_from.min(w.collect_len);
            }
            let task = &self.tasks[&itt];
            if task.collection_done() && task.delivered {
                let response = task.failure.as_ref().expect("checked").response(task.edtl);
                self.finish(itt, response);
            }
            return;
        }
        // Held by the task attributes: nothing solicited, nothing run, no budget taken. While
        // an ORDERED task is about, a task not yet delivered takes nothing either, so that no
        // task holds budget that one it waits for needs.
        let held = match task.delivered {
            true => !self.order_allows(itt),
            false => self.ordered_tasks > 0,
        };
        if held {
            let t = self.tasks.get_mut(&itt).expect("task");
            t.phase = if t.collection_done() { Phase::Waiting } else { Phase::Collecting };
            return;
        }
        let needs_r2t = task.write.as_ref().is_some_and(|w| w.unsolicited_done && w.solicit_from < w.collect_len);
        if needs_r2t || (task.collection_done() && task.delivered) {
            // Soliciting data, or about to run: hold the buffer budget first.
            if task.budget == 0 && !self.reserve_budget(itt) {
                return;
            }
        }
        if needs_r2t {
            self.send_r2ts(itt);
        }
        let task = &self.tasks[&itt];
        if task.collection_done() && task.delivered {
            self.execute(itt);
        } else if let Some(t) = self.tasks.get_mut(&itt) {
            t.phase = if t.collection_done() { Phase::Waiting } else { Phase::Collecting };
        }
    }

    fn execute(&mut self, itt: u32) {
        let task = self.tasks.get_mut(&itt).expect("task");
        task.phase = Phase::Running;
        let data_out = task.write.take().map(|w| w.whole.unwrap_or_else(|| w.buf.freeze())).unwrap_or_default();
        let data_in_max = if task.read { task.edtl } else { 0 };
        let exec = Exec { itt, lun: task.lun, cdb: task.cdb.clone(), data_out, data_in_max };
        self.out.push(Output::Execute(exec));
    }

    // ---- completion path ----

    /// A command handed out with [`Output::Execute`] finished.
    pub fn on_complete(&mut self, itt: u32, response: Response) {
        let Some(task) = self.tasks.get(&itt) else { return };
        if task.phase != Phase::Running {
            return;
        }
        if task.aborted {
            self.forget(itt);
            return;
        }
        self.finish(itt, response);
    }

    /// Sends the task's data and status and forgets it.
    fn finish(&mut self, itt: u32, response: Response) {
        let task = self.tasks.get(&itt).expect("task");
        let lun = task.lun;
        let edtl = task.edtl;
        let read = task.read;
        // Residuals (RFC 7143 §11.4.5): compare what the command wanted to move with EDTL.
        let wanted = match read {
            true => response.data_in_called_for.unwrap_or(response.data.len() as u64),
            false => response.data_out_len as u64,
        };
        let (overflow, underflow, residual) = match wanted.cmp(&(edtl as u64)) {
            std::cmp::Ordering::Greater => (true, false, (wanted - edtl as u64).min(u32::MAX as u64) as u32),
            std::cmp::Ordering::Less => (false, true, edtl - wanted as u32),
            std::cmp::Ordering::Equal => (false, false, 0),
        };
        let mut data = if read { response.data.clone() } else { Bytes::new() };
        data.truncate(edtl as usize);
        self.forget(itt);

        let good = matches!(response.status, status::GOOD | status::CONDITION_MET) && response.sense.is_none();
        let segment_max = self.params.initiator_max_recv_data_segment_len as usize;
        let burst_max = self.params.max_burst_len as usize;
        let mut offset = 0usize;
        let mut data_sn = 0u32;
        while offset < data.len() {
            let burst_left = burst_max - offset % burst_max;
            let len = segment_max.min(burst_left).min(data.len() - offset);
            let last = offset + len == data.len();
            let with_status = last && good;
            let data_in = DataIn {
                fin: last || len == burst_left,
                ack: false,
                overflow: with_status && overflow,
                underflow: with_status && underflow,
                status_present: with_status,
                status: if with_status { response.status } else { 0 },
                lun,
                itt,
                ttt: RESERVED_TAG,
                stat_sn: if with_status { self.next_stat_sn() } else { 0 },
                exp_cmd_sn: self.window.exp_cmd_sn(),
                max_cmd_sn: self.window.max_cmd_sn(),
                data_sn,
                buffer_offset: offset as u32,
                residual: if with_status { residual } else { 0 },
            };
            self.send(Pdu::with_data(data_in, data.slice(offset..offset + len)));
            offset += len;
            data_sn += 1;
        }
        if good && !data.is_empty() {
            return;
        }
        let mut sense_segment = Bytes::new();
        if let Some(sense) = &response.sense {
            let mut seg = BytesMut::with_capacity(2 + sense.len());
            seg.extend_from_slice(&(sense.len() as u16).to_be_bytes());
            seg.extend_from_slice(sense);
            sense_segment = seg.freeze();
        }
        let resp = ScsiResponse {
            overflow,
            underflow,
            response: response::COMMAND_COMPLETED,
            status: response.status,
            itt,
            stat_sn: self.next_stat_sn(),
            exp_cmd_sn: self.window.exp_cmd_sn(),
            max_cmd_sn: self.window.max_cmd_sn(),
            exp_data_sn: data_sn,
            residual,
            ..Default::default()
        };
        self.send(Pdu::with_data(resp, sense_segment));
    }

    /// Answers a command with a bare status (TASK SET FULL) without creating a task.
    fn respond_status(&mut self, itt: u32, scsi_status: u8) {
        let resp = ScsiResponse {
            response: response::COMMAND_COMPLETED,
            status: scsi_status,
            itt,
            stat_sn: self.next_stat_sn(),
            exp_cmd_sn: self.window.exp_cmd_sn(),
            max_cmd_sn: self.window.max_cmd_sn(),
            ..Default::default()
        };
        self.send(Pdu::new(resp));
    }

    /// Drops a task: frees its window slot and budget, and answers any TMF waiting on it.
    fn forget(&mut self, itt: u32) {
        let Some(task) = self.remove_task(itt) else { return };
        if !task.immediate && task.delivered {
            self.window.complete();
        }
        self.release_task_budget(itt, task.budget);
        let mut ready = Vec::new();
        for (i, tmf) in self.tmfs.iter_mut().enumerate() {
            if tmf.waiting_on.remove(&itt) && tmf.waiting_on.is_empty() {
                ready.push(i);
            }
        }
        for i in ready.into_iter().rev() {
            let tmf = self.tmfs.remove(i);
            self.send_tmf_response(tmf.itt, tmf.answer);
        }
        if task.attr == TaskAttr::Ordered || self.ordered_tasks > 0 {
            self.release_ordered(task.lun);
        }
    }

    /// Removes a task from the set, keeping the count of ORDERED ones.
    fn remove_task(&mut self, itt: u32) -> Option<Task> {
        let task = self.tasks.remove(&itt)?;
        self.ordered_tasks -= (task.attr == TaskAttr::Ordered) as usize;
        Some(task)
    }

    // ---- timers ----

    /// When the driver should call [`Connection::on_tick`] next.
    pub fn next_deadline(&self) -> Duration {
        let nop = match self.ping {
            Some((_, sent)) => sent + self.cfg.nop_timeout,
            None => self.last_rx + self.cfg.nop_interval,
        };
        // Kept cheap (it runs at every turn of the driver): the tasks are looked at in ticks.
        match (self.owed_input_wait, self.owing) {
            (Some((_, since)), _) => nop.min(since + self.cfg.data_out_timeout),
            // A debt not yet seen by a tick: tick now to start the clock.
            (None, true) => nop.min(self.last_rx),
            (None, false) => nop,
        }
    }

    /// Whether the initiator owes input: data it was asked for (an R2T) has yet to arrive, or
    /// PDUs wait behind a gap in its CmdSNs.
    fn owes_input(&self) -> bool {
        self.window.holds_any() || self.tasks.values().any(|t| t.write.as_ref().is_some_and(|w| !w.r2ts.is_empty()))
    }

    /// Drops the connection when the initiator has owed input for the timeout without sending
    /// any of it.
    fn check_owed_input(&mut self, now: Duration) {
        self.owing = false;
        if !self.owes_input() {
            self.owed_input_wait = None;
            return;
        }
        let progress = InputProgress { data_outs: self.data_outs, exp_cmd_sn: self.window.exp_cmd_sn() };
        match self.owed_input_wait {
            Some((seen, since)) if seen == progress => {
                if now >= since + self.cfg.data_out_timeout {
                    tracing::info!(
                        seconds = self.cfg.data_out_timeout.as_secs(),
                        "the initiator sent none of the write data it was asked for, or left a gap in its CmdSNs: closing the connection"
                    );
                    self.closing = true;
                    self.out.push(Output::Close(CloseReason::OwedInputTimeout));
                }
            }
            _ => self.owed_input_wait = Some((progress, now)),
        }
    }

    pub fn on_tick(&mut self, now: Duration) {
        if self.closing {
            return;
        }
        self.check_owed_input(now);
        if self.closing {
            return;
        }
        match self.ping {
            Some((_, sent)) if now >= sent + self.cfg.nop_timeout => {
                tracing::info!("initiator did not answer a NOP-In: closing the connection");
                self.closing = true;
                self.out.push(Output::Close(CloseReason::NopTimeout));
            }
            None if now >= self.last_rx + self.cfg.nop_interval => {
                let ttt = self.alloc_ttt();
                let nop = NopIn {
                    lun: 0,
                    itt: RESERVED_TAG,
                    ttt,
                    stat_sn: self.stat_sn,
                    exp_cmd_sn: self.window.exp_cmd_sn(),
                    max_cmd_sn: self.window.max_cmd_sn(),
                };
                self.send(Pdu::new(nop));
                self.ping = Some((ttt, now));
            }
            _ => {}
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("exp_cmd_sn", &self.window.exp_cmd_sn())
            .field("max_cmd_sn", &self.window.max_cmd_sn())
            .field("stat_sn", &self.stat_sn)
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

mod budget;
mod data_out;
mod task_mgmt;
mod text_and_logout;

#[cfg(test)]
mod tests;
