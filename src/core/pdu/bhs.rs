//! Typed basic header segments for every RFC 7143 opcode, in both directions.
//!
//! Field offsets follow RFC 7143 §11. Reserved fields are written as zero and ignored when read.
//! TotalAHSLength and DataSegmentLength (bytes 4..8) are owned by [`super::Pdu`], not by these
//! types.

use super::{BHS_LEN, PduError};

/// Every opcode of RFC 7143, plus `Unknown` for values no side may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    NopOut,
    ScsiCommand,
    TaskMgmtRequest,
    LoginRequest,
    TextRequest,
    DataOut,
    LogoutRequest,
    SnackRequest,
    NopIn,
    ScsiResponse,
    TaskMgmtResponse,
    LoginResponse,
    TextResponse,
    DataIn,
    LogoutResponse,
    R2t,
    AsyncMessage,
    Reject,
    Unknown(u8),
}

impl Opcode {
    pub fn from_byte(b: u8) -> Opcode {
        match b & 0x3f {
            0x00 => Opcode::NopOut,
            0x01 => Opcode::ScsiCommand,
            0x02 => Opcode::TaskMgmtRequest,
            0x03 => Opcode::LoginRequest,
            0x04 => Opcode::TextRequest,
            0x05 => Opcode::DataOut,
            0x06 => Opcode::LogoutRequest,
            0x10 => Opcode::SnackRequest,
            0x20 => Opcode::NopIn,
            0x21 => Opcode::ScsiResponse,
            0x22 => Opcode::TaskMgmtResponse,
            0x23 => Opcode::LoginResponse,
            0x24 => Opcode::TextResponse,
            0x25 => Opcode::DataIn,
            0x26 => Opcode::LogoutResponse,
            0x31 => Opcode::R2t,
            0x32 => Opcode::AsyncMessage,
            0x3f => Opcode::Reject,
            other => Opcode::Unknown(other),
        }
    }

    pub fn to_byte(self) -> u8 {
        match self {
            Opcode::NopOut => 0x00,
            Opcode::ScsiCommand => 0x01,
            Opcode::TaskMgmtRequest => 0x02,
            Opcode::LoginRequest => 0x03,
            Opcode::TextRequest => 0x04,
            Opcode::DataOut => 0x05,
            Opcode::LogoutRequest => 0x06,
            Opcode::SnackRequest => 0x10,
            Opcode::NopIn => 0x20,
            Opcode::ScsiResponse => 0x21,
            Opcode::TaskMgmtResponse => 0x22,
            Opcode::LoginResponse => 0x23,
            Opcode::TextResponse => 0x24,
            Opcode::DataIn => 0x25,
            Opcode::LogoutResponse => 0x26,
            Opcode::R2t => 0x31,
            Opcode::AsyncMessage => 0x32,
            Opcode::Reject => 0x3f,
            Opcode::Unknown(b) => b & 0x3f,
        }
    }

    /// True for opcodes an initiator sends (and a target receives).
    pub fn is_initiator_opcode(self) -> bool {
        matches!(self.to_byte(), 0x00..=0x1f) && !matches!(self, Opcode::Unknown(_))
    }
}

/// The reserved "no task" tag value (RFC 7143 §11.2.1.8).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// SCSI task attributes (RFC 7143 §11.3.1, SAM).
pub mod task_attr {
    pub const UNTAGGED: u8 = 0;
    pub const SIMPLE: u8 = 1;
    pub const ORDERED: u8 = 2;
    pub const HEAD_OF_QUEUE: u8 = 3;
    pub const ACA: u8 = 4;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScsiCommand {
    pub immediate: bool,
    pub fin: bool,
    pub read: bool,
    pub write: bool,
    pub attr: u8,
    pub lun: u64,
    pub itt: u32,
    pub expected_data_len: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub cdb: [u8; 16],
}

/// Task management function codes (RFC 7143 §11.5.1).
pub mod tmf {
    pub const ABORT_TASK: u8 = 1;
    pub const ABORT_TASK_SET: u8 = 2;
    pub const CLEAR_ACA: u8 = 3;
    pub const CLEAR_TASK_SET: u8 = 4;
    pub const LOGICAL_UNIT_RESET: u8 = 5;
    pub const TARGET_WARM_RESET: u8 = 6;
    pub const TARGET_COLD_RESET: u8 = 7;
    pub const TASK_REASSIGN: u8 = 8;
    // RFC 7144 §6.3, at iSCSIProtocolLevel 2.
    pub const QUERY_TASK: u8 = 9;
    pub const QUERY_TASK_SET: u8 = 10;
    pub const I_T_NEXUS_RESET: u8 = 11;
    pub const QUERY_ASYNC_EVENT: u8 = 12;

    /// TMF response codes (§11.6.1).
    pub const FUNCTION_COMPLETE: u8 = 0;
    pub const TASK_DOES_NOT_EXIST: u8 = 1;
    pub const LUN_DOES_NOT_EXIST: u8 = 2;
    pub const TASK_STILL_ALLEGIANT: u8 = 3;
    pub const REASSIGNMENT_NOT_SUPPORTED: u8 = 4;
    pub const FUNCTION_NOT_SUPPORTED: u8 = 5;
    pub const AUTHORIZATION_FAILED: u8 = 6;
    /// RFC 7144 §6.4.1: a QUERY found what it asked about.
    pub const FUNCTION_SUCCEEDED: u8 = 7;
    pub const FUNCTION_REJECTED: u8 = 255;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskMgmtRequest {
    pub immediate: bool,
    pub function: u8,
    pub lun: u64,
    pub itt: u32,
    pub referenced_task_tag: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub ref_cmd_sn: u32,
    pub exp_data_sn: u32,
}

/// Login stages (RFC 7143 §11.12.3).
pub mod stage {
    pub const SECURITY: u8 = 0;
    pub const OPERATIONAL: u8 = 1;
    pub const FULL_FEATURE: u8 = 3;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoginRequest {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_min: u8,
    /// The 48-bit initiator session id.
    pub isid: u64,
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TextRequest {
    pub immediate: bool,
    pub fin: bool,
    pub cont: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataOut {
    pub fin: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
}

/// Logout reasons (§11.14.1) and responses (§11.15.1).
pub mod logout {
    pub const CLOSE_SESSION: u8 = 0;
    pub const CLOSE_CONNECTION: u8 = 1;
    pub const REMOVE_CONNECTION_FOR_RECOVERY: u8 = 2;

    pub const CLOSED: u8 = 0;
    pub const CID_NOT_FOUND: u8 = 1;
    pub const RECOVERY_NOT_SUPPORTED: u8 = 2;
    pub const CLEANUP_FAILED: u8 = 3;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogoutRequest {
    pub immediate: bool,
    pub reason: u8,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnackRequest {
    pub snack_type: u8,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub beg_run: u32,
    pub run_length: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NopIn {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// iSCSI service responses in the SCSI Response PDU (§11.4.3).
pub mod response {
    pub const COMMAND_COMPLETED: u8 = 0;
    pub const TARGET_FAILURE: u8 = 1;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScsiResponse {
    pub bidi_overflow: bool,
    pub bidi_underflow: bool,
    pub overflow: bool,
    pub underflow: bool,
    pub response: u8,
    pub status: u8,
    pub itt: u32,
    pub snack_tag: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub exp_data_sn: u32,
    pub bidi_residual: u32,
    pub residual: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskMgmtResponse {
    pub response: u8,
    /// RFC 7144 §6.4.1, bytes 8-10: what QUERY ASYNC EVENT found (UADE depth and sense key,
    /// ASC, ASCQ); zeros otherwise.
    pub additional: [u8; 3],
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// Login status classes and details (§11.13.5).
pub mod login_status {
    pub const SUCCESS: (u8, u8) = (0, 0);
    pub const TARGET_MOVED_TEMPORARILY: (u8, u8) = (1, 1);
    pub const INITIATOR_ERROR: (u8, u8) = (2, 0);
    pub const AUTHENTICATION_FAILURE: (u8, u8) = (2, 1);
    pub const AUTHORIZATION_FAILURE: (u8, u8) = (2, 2);
    pub const TARGET_NOT_FOUND: (u8, u8) = (2, 3);
    pub const TARGET_REMOVED: (u8, u8) = (2, 4);
    pub const UNSUPPORTED_VERSION: (u8, u8) = (2, 5);
    pub const TOO_MANY_CONNECTIONS: (u8, u8) = (2, 6);
    pub const MISSING_PARAMETER: (u8, u8) = (2, 7);
    pub const CANT_INCLUDE_IN_SESSION: (u8, u8) = (2, 8);
    pub const SESSION_TYPE_NOT_SUPPORTED: (u8, u8) = (2, 9);
    pub const SESSION_DOES_NOT_EXIST: (u8, u8) = (2, 10);
    pub const INVALID_DURING_LOGIN: (u8, u8) = (2, 11);
    pub const TARGET_ERROR: (u8, u8) = (3, 0);
    pub const SERVICE_UNAVAILABLE: (u8, u8) = (3, 1);
    pub const OUT_OF_RESOURCES: (u8, u8) = (3, 2);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoginResponse {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: u64,
    pub tsih: u16,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub status_class: u8,
    pub status_detail: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TextResponse {
    pub fin: bool,
    pub cont: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataIn {
    pub fin: bool,
    pub ack: bool,
    pub overflow: bool,
    pub underflow: bool,
    /// The S bit: this PDU carries the command's status.
    pub status_present: bool,
    pub status: u8,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub residual: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogoutResponse {
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub time2wait: u16,
    pub time2retain: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct R2t {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub r2t_sn: u32,
    pub buffer_offset: u32,
    pub desired_len: u32,
}

/// Async events (§11.9.1).
pub mod async_event {
    pub const SCSI_ASYNC_EVENT: u8 = 0;
    pub const LOGOUT_REQUESTED: u8 = 1;
    pub const CONNECTION_DROP: u8 = 2;
    pub const SESSION_DROP: u8 = 3;
    pub const RENEGOTIATE: u8 = 4;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AsyncMessage {
    pub lun: u64,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub event: u8,
    pub vcode: u8,
    pub param1: u16,
    pub param2: u16,
    pub param3: u16,
}

/// Reject reasons (§11.17.1).
pub mod reject_reason {
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const IMMEDIATE_COMMAND_REJECT: u8 = 0x06;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_DATA_ACK: u8 = 0x08;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    pub const LONG_OPERATION_REJECT: u8 = 0x0a;
    pub const NEGOTIATION_RESET: u8 = 0x0b;
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reject {
    pub reason: u8,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
}

/// A decoded basic header segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bhs {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskMgmtRequest(TaskMgmtRequest),
    LoginRequest(LoginRequest),
    TextRequest(TextRequest),
    DataOut(DataOut),
    LogoutRequest(LogoutRequest),
    SnackRequest(SnackRequest),
    NopIn(NopIn),
    ScsiResponse(ScsiResponse),
    TaskMgmtResponse(TaskMgmtResponse),
    LoginResponse(LoginResponse),
    TextResponse(TextResponse),
    DataIn(DataIn),
    LogoutResponse(LogoutResponse),
    R2t(R2t),
    AsyncMessage(AsyncMessage),
    Reject(Reject),
}

macro_rules! bhs_from {
    ($($name:ident),*) => {$(
        impl From<$name> for Bhs {
            fn from(v: $name) -> Bhs { Bhs::$name(v) }
        }
    )*};
}
bhs_from!(
    NopOut,
    ScsiCommand,
    TaskMgmtRequest,
    LoginRequest,
    TextRequest,
    DataOut,
    LogoutRequest,
    SnackRequest,
    NopIn,
    ScsiResponse,
    TaskMgmtResponse,
    LoginResponse,
    TextResponse,
    DataIn,
    LogoutResponse,
    R2t,
    AsyncMessage,
    Reject
);

/// Big-endian field access on a header.
struct Fields<'a>(&'a [u8; BHS_LEN]);

impl Fields<'_> {
    fn u16(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.0[at], self.0[at + 1]])
    }
    fn u32(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.0[at..at + 4].try_into().expect("4 bytes"))
    }
    fn u64(&self, at: usize) -> u64 {
        u64::from_be_bytes(self.0[at..at + 8].try_into().expect("8 bytes"))
    }
    fn bit(&self, at: usize, mask: u8) -> bool {
        self.0[at] & mask != 0
    }
    fn isid(&self) -> u64 {
        let mut b = [0u8; 8];
        b[2..].copy_from_slice(&self.0[8..14]);
        u64::from_be_bytes(b)
    }
}

struct Writer([u8; BHS_LEN]);

impl Writer {
    fn new(opcode: Opcode, immediate: bool) -> Self {
        let mut b = [0u8; BHS_LEN];
        b[0] = opcode.to_byte() | if immediate { 0x40 } else { 0 };
        Writer(b)
    }
    fn u8(&mut self, at: usize, v: u8) -> &mut Self {
        self.0[at] |= v;
        self
    }
    fn flag(&mut self, at: usize, mask: u8, on: bool) -> &mut Self {
        if on {
            self.0[at] |= mask;
        }
        self
    }
    fn u16(&mut self, at: usize, v: u16) -> &mut Self {
        self.0[at..at + 2].copy_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(&mut self, at: usize, v: u32) -> &mut Self {
        self.0[at..at + 4].copy_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(&mut self, at: usize, v: u64) -> &mut Self {
        self.0[at..at + 8].copy_from_slice(&v.to_be_bytes());
        self
    }
    fn isid(&mut self, v: u64) -> &mut Self {
        self.0[8..14].copy_from_slice(&v.to_be_bytes()[2..]);
        self
    }
}

impl Bhs {
    pub fn opcode(&self) -> Opcode {
        match self {
            Bhs::NopOut(_) => Opcode::NopOut,
            Bhs::ScsiCommand(_) => Opcode::ScsiCommand,
            Bhs::TaskMgmtRequest(_) => Opcode::TaskMgmtRequest,
            Bhs::LoginRequest(_) => Opcode::LoginRequest,
            Bhs::TextRequest(_) => Opcode::TextRequest,
            Bhs::DataOut(_) => Opcode::DataOut,
            Bhs::LogoutRequest(_) => Opcode::LogoutRequest,
            Bhs::SnackRequest(_) => Opcode::SnackRequest,
            Bhs::NopIn(_) => Opcode::NopIn,
            Bhs::ScsiResponse(_) => Opcode::ScsiResponse,
            Bhs::TaskMgmtResponse(_) => Opcode::TaskMgmtResponse,
            Bhs::LoginResponse(_) => Opcode::LoginResponse,
            Bhs::TextResponse(_) => Opcode::TextResponse,
            Bhs::DataIn(_) => Opcode::DataIn,
            Bhs::LogoutResponse(_) => Opcode::LogoutResponse,
            Bhs::R2t(_) => Opcode::R2t,
            Bhs::AsyncMessage(_) => Opcode::AsyncMessage,
            Bhs::Reject(_) => Opcode::Reject,
        }
    }

    /// The initiator task tag, for PDUs that carry one.
    pub fn itt(&self) -> Option<u32> {
        Some(match self {
            Bhs::NopOut(p) => p.itt,
            Bhs::ScsiCommand(p) => p.itt,
            Bhs::TaskMgmtRequest(p) => p.itt,
            Bhs::LoginRequest(p) => p.itt,
            Bhs::TextRequest(p) => p.itt,
            Bhs::DataOut(p) => p.itt,
            Bhs::LogoutRequest(p) => p.itt,
            Bhs::SnackRequest(p) => p.itt,
            Bhs::NopIn(p) => p.itt,
            Bhs::ScsiResponse(p) => p.itt,
            Bhs::TaskMgmtResponse(p) => p.itt,
            Bhs::LoginResponse(p) => p.itt,
            Bhs::TextResponse(p) => p.itt,
            Bhs::DataIn(p) => p.itt,
            Bhs::LogoutResponse(p) => p.itt,
            Bhs::R2t(p) => p.itt,
            Bhs::AsyncMessage(_) | Bhs::Reject(_) => return None,
        })
    }

    /// The ExpStatSN of an initiator's PDU: the StatSN of the next response it expects.
    pub fn exp_stat_sn(&self) -> Option<u32> {
        Some(match self {
            Bhs::NopOut(p) => p.exp_stat_sn,
            Bhs::ScsiCommand(p) => p.exp_stat_sn,
            Bhs::TaskMgmtRequest(p) => p.exp_stat_sn,
            Bhs::LoginRequest(p) => p.exp_stat_sn,
            Bhs::TextRequest(p) => p.exp_stat_sn,
            Bhs::DataOut(p) => p.exp_stat_sn,
            Bhs::LogoutRequest(p) => p.exp_stat_sn,
            Bhs::SnackRequest(p) => p.exp_stat_sn,
            _ => return None,
        })
    }

    /// Decodes a basic header segment. Fails only on an opcode no side may send.
    pub fn decode(raw: &[u8; BHS_LEN]) -> Result<Bhs, PduError> {
        let f = Fields(raw);
        let immediate = f.bit(0, 0x40);
        let fin = f.bit(1, 0x80);
        let opcode = Opcode::from_byte(raw[0]);
        Ok(match opcode {
            Opcode::NopOut => Bhs::NopOut(NopOut {
                immediate,
                lun: f.u64(8),
                itt: f.u32(16),
                ttt: f.u32(20),
                cmd_sn: f.u32(24),
                exp_stat_sn: f.u32(28),
            }),
            Opcode::ScsiCommand => Bhs::ScsiCommand(ScsiCommand {
                immediate,
                fin,
                read: f.bit(1, 0x40),
                write: f.bit(1, 0x20),
                attr: raw[1] & 0x07,
                lun: f.u64(8),
                itt: f.u32(16),
                expected_data_len: f.u32(20),
                cmd_sn: f.u32(24),
                exp_stat_sn: f.u32(28),
                cdb: raw[32..48].try_into().expect("16 bytes"),
            }),
            Opcode::TaskMgmtRequest => Bhs::TaskMgmtRequest(TaskMgmtRequest {
                immediate,
                function: raw[1] & 0x7f,
                lun: f.u64(8),
                itt: f.u32(16),
                referenced_task_tag: f.u32(20),
                cmd_sn: f.u32(24),
                exp_stat_sn: f.u32(28),
                ref_cmd_sn: f.u32(32),
                exp_data_sn: f.u32(36),
            }),
            Opcode::LoginRequest => Bhs::LoginRequest(LoginRequest {
                transit: fin,
                cont: f.bit(1, 0x40),
                csg: (raw[1] >> 2) & 0x3,
                nsg: raw[1] & 0x3,
                version_max: raw[2],
                version_min: raw[3],
                isid: f.isid(),
                tsih: f.u16(14),
                itt: f.u32(16),
                cid: f.u16(20),
                cmd_sn: f.u32(24),
                exp_stat_sn: f.u32(28),
            }),
            Opcode::TextRequest => Bhs::TextRequest(TextRequest {
                immediate,
                fin,
                cont: f.bit(1, 0x40),
                lun: f.u64(8),
                itt: f.u32(16),
                ttt: f.u32(20),
                cmd_sn: f.u32(24),
                exp_stat_sn: f.u32(28),
            }),
            Opcode::DataOut => Bhs::DataOut(DataOut {
                fin,
                lun: f.u64(8),
                itt: f.u32(16),
                ttt: f.u32(20),
                exp_stat_sn: f.u32(28),
                data_sn: f.u32(36),
                buffer_offset: f.u32(40),
            }),
            Opcode::LogoutRequest => Bhs::LogoutRequest(LogoutRequest {
                immediate,
                reason: raw[1] & 0x7f,
                itt: f.u32(16),
                cid: f.u16(20),
                cmd_sn: f.u32(24),
                exp_stat_sn: f.u32(28),
            }),
            Opcode::SnackRequest => Bhs::SnackRequest(SnackRequest {
                snack_type: raw[1] & 0x0f,
                lun: f.u64(8),
                itt: f.u32(16),
                ttt: f.u32(20),
                exp_stat_sn: f.u32(28),
                beg_run: f.u32(40),
                run_length: f.u32(44),
            }),
            Opcode::NopIn => Bhs::NopIn(NopIn {
                lun: f.u64(8),
                itt: f.u32(16),
                ttt: f.u32(20),
                stat_sn: f.u32(24),
                exp_cmd_sn: f.u32(28),
                max_cmd_sn: f.u32(32),
            }),
            Opcode::ScsiResponse => Bhs::ScsiResponse(ScsiResponse {
                bidi_overflow: f.bit(1, 0x10),
                bidi_underflow: f.bit(1, 0x08),
                overflow: f.bit(1, 0x04),
                underflow: f.bit(1, 0x02),
                response: raw[2],
                status: raw[3],
                itt: f.u32(16),
                snack_tag: f.u32(20),
                stat_sn: f.u32(24),
                exp_cmd_sn: f.u32(28),
                max_cmd_sn: f.u32(32),
                exp_data_sn: f.u32(36),
                bidi_residual: f.u32(40),
                residual: f.u32(44),
            }),
            Opcode::TaskMgmtResponse => Bhs::TaskMgmtResponse(TaskMgmtResponse {
                response: raw[2],
                additional: [raw[8], raw[9], raw[10]],
                itt: f.u32(16),
                stat_sn: f.u32(24),
                exp_cmd_sn: f.u32(28),
                max_cmd_sn: f.u32(32),
            }),
            Opcode::LoginResponse => Bhs::LoginResponse(LoginResponse {
                transit: fin,
                cont: f.bit(1, 0x40),
                csg: (raw[1] >> 2) & 0x3,
                nsg: raw[1] & 0x3,
                version_max: raw[2],
                version_active: raw[3],
                isid: f.isid(),
                tsih: f.u16(14),
                itt: f.u32(16),
                stat_sn: f.u32(24),
                exp_cmd_sn: f.u32(28),
                max_cmd_sn: f.u32(32),
                status_class: raw[36],
                status_detail: raw[37],
            }),
            Opcode::TextResponse => Bhs::TextResponse(TextResponse {
                fin,
                cont: f.bit(1, 0x40),
                lun: f.u64(8),
                itt: f.u32(16),
                ttt: f.u32(20),
                stat_sn: f.u32(24),
                exp_cmd_sn: f.u32(28),
                max_cmd_sn: f.u32(32),
            }),
            Opcode::DataIn => Bhs::DataIn(DataIn {
                fin,
                ack: f.bit(1, 0x40),
                overflow: f.bit(1, 0x04),
                underflow: f.bit(1, 0x02),
                status_present: f.bit(1, 0x01),
                status: raw[3],
                lun: f.u64(8),
                itt: f.u32(16),
                ttt: f.u32(20),
                stat_sn: f.u32(24),
                exp_cmd_sn: f.u32(28),
                max_cmd_sn: f.u32(32),
                data_sn: f.u32(36),
                buffer_offset: f.u32(40),
                residual: f.u32(44),
            }),
            Opcode::LogoutResponse => Bhs::LogoutResponse(LogoutResponse {
                response: raw[2],
                itt: f.u32(16),
                stat_sn: f.u32(24),
                exp_cmd_sn: f.u32(28),
                max_cmd_sn: f.u32(32),
                time2wait: f.u16(40),
                time2retain: f.u16(42),
            }),
            Opcode::R2t => Bhs::R2t(R2t {
                lun: f.u64(8),
                itt: f.u32(16),
                ttt: f.u32(20),
                stat_sn: f.u32(24),
                exp_cmd_sn: f.u32(28),
                max_cmd_sn: f.u32(32),
                r2t_sn: f.u32(36),
                buffer_offset: f.u32(40),
                desired_len: f.u32(44),
            }),
            Opcode::AsyncMessage => Bhs::AsyncMessage(AsyncMessage {
                lun: f.u64(8),
                stat_sn: f.u32(24),
                exp_cmd_sn: f.u32(28),
                max_cmd_sn: f.u32(32),
                event: raw[36],
                vcode: raw[37],
                param1: f.u16(38),
                param2: f.u16(40),
                param3: f.u16(42),
            }),
            Opcode::Reject => Bhs::Reject(Reject {
                reason: raw[2],
                stat_sn: f.u32(24),
                exp_cmd_sn: f.u32(28),
                max_cmd_sn: f.u32(32),
                data_sn: f.u32(36),
            }),
            Opcode::Unknown(opcode) => {
                return Err(PduError::UnknownOpcode { opcode, header: Box::new(*raw) });
            }
        })
    }

    /// Encodes the header; bytes 4..8 (lengths) are left zero for [`super::Pdu::encode`].
    pub fn encode(&self) -> [u8; BHS_LEN] {
        let op = self.opcode();
        let mut w;
        match self {
            Bhs::NopOut(p) => {
                w = Writer::new(op, p.immediate);
                w.u8(1, 0x80).u64(8, p.lun).u32(16, p.itt).u32(20, p.ttt).u32(24, p.cmd_sn).u32(28, p.exp_stat_sn);
            }
            Bhs::ScsiCommand(p) => {
                w = Writer::new(op, p.immediate);
                w.flag(1, 0x80, p.fin).flag(1, 0x40, p.read).flag(1, 0x20, p.write).u8(1, p.attr & 0x07);
                w.u64(8, p.lun).u32(16, p.itt).u32(20, p.expected_data_len).u32(24, p.cmd_sn).u32(28, p.exp_stat_sn);
                w.0[32..48].copy_from_slice(&p.cdb);
            }
            Bhs::TaskMgmtRequest(p) => {
                w = Writer::new(op, p.immediate);
                w.u8(1, 0x80 | (p.function & 0x7f)).u64(8, p.lun).u32(16, p.itt).u32(20, p.referenced_task_tag);
                w.u32(24, p.cmd_sn).u32(28, p.exp_stat_sn).u32(32, p.ref_cmd_sn).u32(36, p.exp_data_sn);
            }
            Bhs::LoginRequest(p) => {
                w = Writer::new(op, true);
                w.flag(1, 0x80, p.transit).flag(1, 0x40, p.cont).u8(1, (p.csg & 3) << 2 | (p.nsg & 3));
                w.u8(2, p.version_max).u8(3, p.version_min).isid(p.isid).u16(14, p.tsih).u32(16, p.itt);
                w.u16(20, p.cid).u32(24, p.cmd_sn).u32(28, p.exp_stat_sn);
            }
            Bhs::TextRequest(p) => {
                w = Writer::new(op, p.immediate);
                w.flag(1, 0x80, p.fin).flag(1, 0x40, p.cont).u64(8, p.lun).u32(16, p.itt).u32(20, p.ttt);
                w.u32(24, p.cmd_sn).u32(28, p.exp_stat_sn);
            }
            Bhs::DataOut(p) => {
                w = Writer::new(op, false);
                w.flag(1, 0x80, p.fin).u64(8, p.lun).u32(16, p.itt).u32(20, p.ttt).u32(28, p.exp_stat_sn);
                w.u32(36, p.data_sn).u32(40, p.buffer_offset);
            }
            Bhs::LogoutRequest(p) => {
                w = Writer::new(op, p.immediate);
                w.u8(1, 0x80 | (p.reason & 0x7f)).u32(16, p.itt).u16(20, p.cid).u32(24, p.cmd_sn);
                w.u32(28, p.exp_stat_sn);
            }
            Bhs::SnackRequest(p) => {
                w = Writer::new(op, false);
                w.u8(1, 0x80 | (p.snack_type & 0x0f)).u64(8, p.lun).u32(16, p.itt).u32(20, p.ttt);
                w.u32(28, p.exp_stat_sn).u32(40, p.beg_run).u32(44, p.run_length);
            }
            Bhs::NopIn(p) => {
                w = Writer::new(op, false);
                w.u8(1, 0x80).u64(8, p.lun).u32(16, p.itt).u32(20, p.ttt).u32(24, p.stat_sn);
                w.u32(28, p.exp_cmd_sn).u32(32, p.max_cmd_sn);
            }
            Bhs::ScsiResponse(p) => {
                w = Writer::new(op, false);
                w.u8(1, 0x80).flag(1, 0x10, p.bidi_overflow).flag(1, 0x08, p.bidi_underflow);
                w.flag(1, 0x04, p.overflow).flag(1, 0x02, p.underflow).u8(2, p.response).u8(3, p.status);
                w.u32(16, p.itt).u32(20, p.snack_tag).u32(24, p.stat_sn).u32(28, p.exp_cmd_sn);
                w.u32(32, p.max_cmd_sn).u32(36, p.exp_data_sn).u32(40, p.bidi_residual).u32(44, p.residual);
            }
            Bhs::TaskMgmtResponse(p) => {
                w = Writer::new(op, false);
                w.u8(1, 0x80).u8(2, p.response).u32(16, p.itt).u32(24, p.stat_sn).u32(28, p.exp_cmd_sn);
                w.u32(32, p.max_cmd_sn);
                w.u8(8, p.additional[0]).u8(9, p.additional[1]).u8(10, p.additional[2]);
            }
            Bhs::LoginResponse(p) => {
                w = Writer::new(op, false);
                w.flag(1, 0x80, p.transit).flag(1, 0x40, p.cont).u8(1, (p.csg & 3) << 2 | (p.nsg & 3));
                w.u8(2, p.version_max).u8(3, p.version_active).isid(p.isid).u16(14, p.tsih).u32(16, p.itt);
                w.u32(24, p.stat_sn).u32(28, p.exp_cmd_sn).u32(32, p.max_cmd_sn).u8(36, p.status_class);
                w.u8(37, p.status_detail);
            }
            Bhs::TextResponse(p) => {
                w = Writer::new(op, false);
                w.flag(1, 0x80, p.fin).flag(1, 0x40, p.cont).u64(8, p.lun).u32(16, p.itt).u32(20, p.ttt);
                w.u32(24, p.stat_sn).u32(28, p.exp_cmd_sn).u32(32, p.max_cmd_sn);
            }
            Bhs::DataIn(p) => {
                w = Writer::new(op, false);
                w.flag(1, 0x80, p.fin).flag(1, 0x40, p.ack).flag(1, 0x04, p.overflow).flag(1, 0x02, p.underflow);
                w.flag(1, 0x01, p.status_present).u8(3, p.status).u64(8, p.lun).u32(16, p.itt).u32(20, p.ttt);
                w.u32(24, p.stat_sn).u32(28, p.exp_cmd_sn).u32(32, p.max_cmd_sn).u32(36, p.data_sn);
                w.u32(40, p.buffer_offset).u32(44, p.residual);
            }
            Bhs::LogoutResponse(p) => {
                w = Writer::new(op, false);
                w.u8(1, 0x80).u8(2, p.response).u32(16, p.itt).u32(24, p.stat_sn).u32(28, p.exp_cmd_sn);
                w.u32(32, p.max_cmd_sn).u16(40, p.time2wait).u16(42, p.time2retain);
            }
            Bhs::R2t(p) => {
                w = Writer::new(op, false);
                w.u8(1, 0x80).u64(8, p.lun).u32(16, p.itt).u32(20, p.ttt).u32(24, p.stat_sn);
                w.u32(28, p.exp_cmd_sn).u32(32, p.max_cmd_sn).u32(36, p.r2t_sn).u32(40, p.buffer_offset);
                w.u32(44, p.desired_len);
            }
            Bhs::AsyncMessage(p) => {
                w = Writer::new(op, false);
                w.u8(1, 0x80).u64(8, p.lun).u32(16, RESERVED_TAG).u32(24, p.stat_sn).u32(28, p.exp_cmd_sn);
                w.u32(32, p.max_cmd_sn).u8(36, p.event).u8(37, p.vcode).u16(38, p.param1).u16(40, p.param2);
                w.u16(42, p.param3);
            }
            Bhs::Reject(p) => {
                w = Writer::new(op, false);
                w.u8(1, 0x80).u8(2, p.reason).u32(16, RESERVED_TAG).u32(24, p.stat_sn).u32(28, p.exp_cmd_sn);
                w.u32(32, p.max_cmd_sn).u32(36, p.data_sn);
            }
        }
        w.0
    }
}
