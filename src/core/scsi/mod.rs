//! The SCSI core (SPC-4 / SBC-3) for disk logical units: CDB decoding, command handlers, sense
//! data, VPD and mode pages, unit attentions and reservations. It runs commands against a
//! [`crate::store::BlockStore`] and knows nothing of sockets or iSCSI.

pub mod alua;
mod cdb;
mod lu;
pub mod metrics;
mod mode;
mod ops;
mod persistent_reserve;
mod pr;
pub mod pr_keeper;
mod sanitize;
mod sbc;
pub mod sense;
mod spc;
mod target;
mod transport_id;
mod xcopy;

use std::sync::Arc;

use bytes::Bytes;

pub use lu::{LogicalUnit, LuConfig, LuIdentity};
pub use ops::{OpSpec, commands};
pub use pr_keeper::ReservationKeeper;
pub use sense::{Sense, asc, key, status};
pub use target::ScsiTarget;

/// An I_T nexus: one initiator port (initiator name + ISID) talking to one target port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nexus {
    /// Stable identifier derived from the initiator port and target port names.
    pub id: u64,
    pub initiator_name: String,
    pub isid: u64,
    pub target_name: String,
    /// Relative target port identifier (the portal group tag).
    pub relative_port: u16,
    /// The session's iSCSIProtocolLevel (RFC 7144): 2 claims iSCSI version 0962h in INQUIRY.
    pub protocol_level: u8,
}

impl Nexus {
    pub fn new(
        initiator_name: &str,
        isid: u64,
        target_name: &str,
        relative_port: u16,
        protocol_level: u8,
    ) -> Arc<Nexus> {
        Arc::new(Nexus {
            id: Nexus::id_of(initiator_name, isid, target_name, relative_port),
            initiator_name: initiator_name.to_string(),
            isid,
            target_name: target_name.to_string(),
            relative_port,
            protocol_level,
        })
    }

    /// The id of the I_T nexus between an initiator port and a target port, whether or not it
    /// exists now (persistent reservations name nexuses that have not logged in).
    pub fn id_of(initiator_name: &str, isid: u64, target_name: &str, relative_port: u16) -> u64 {
        // Stable across runs and platforms, unlike the std hasher.
        let mut h = crate::fnv::Fnv1a::default();
        h.update(initiator_name.as_bytes()).update(&isid.to_be_bytes());
        h.update(target_name.as_bytes()).update(&relative_port.to_be_bytes());
        h.value()
    }

    /// The iSCSI version descriptor of INQUIRY: 0960h (no version claimed), or 0960h plus the
    /// protocol level once RFC 7144's level 2 or later is negotiated (RFC 7144 §4.2).
    pub fn iscsi_version_descriptor(&self) -> u16 {
        match self.protocol_level {
            0 | 1 => 0x0960,
            level => 0x0960 + level as u16,
        }
    }

    /// The iSCSI target port name: "<name>,t,0x<tpgt>".
    pub fn target_port_name(&self) -> String {
        format!("{},t,0x{:04x}", self.target_name, self.relative_port)
    }
}

/// A SCSI command as the transport delivers it.
#[derive(Debug, Clone)]
pub struct Request {
    pub nexus: Arc<Nexus>,
    /// The LUN field as sent (SAM-5 single-level addressing).
    pub lun: u64,
    /// The whole CDB (16 bytes from the BHS plus any extended CDB).
    pub cdb: Bytes,
    /// The data the initiator sent (at most its expected data transfer length).
    pub data_out: Bytes,
    /// The most data-in the transport delivers (the expected data transfer length of a
    /// read): a command may read less than its CDB asks for, never allocate more.
    pub data_in_max: u32,
}

/// A finished command: status, sense and data for the transport to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u8,
    pub sense: Option<Bytes>,
    /// Data-in, as much as the command wanted to return (the transport truncates it to the
    /// expected length and reports the residual).
    pub data: Bytes,
    /// Bytes of data-out the command called for, for residuals of write-type commands.
    pub data_out_len: u32,
    /// Bytes of data-in the command called for when `data` holds less (a READ cut to what the
    /// transport delivers), for residuals; None: `data` is all of it.
    pub data_in_called_for: Option<u64>,
}

impl Response {
    pub fn good(data: Bytes) -> Response {
        Response { status: status::GOOD, sense: None, data, data_out_len: 0, data_in_called_for: None }
    }

    pub fn check(sense: &Sense, descriptor: bool) -> Response {
        Response {
            status: status::CHECK_CONDITION,
            sense: Some(sense.encode(descriptor)),
            data: Bytes::new(),
            data_out_len: 0,
            data_in_called_for: None,
        }
    }

    pub fn with_status(status: u8) -> Response {
        Response { status, sense: None, data: Bytes::new(), data_out_len: 0, data_in_called_for: None }
    }

    /// The same with data-in, of which the command called for `called_for` bytes if more.
    pub fn with_data(self, data: Bytes, called_for: Option<u64>) -> Response {
        Response { data, data_in_called_for: called_for, ..self }
    }
}

/// Decodes a SAM-5 LUN field (peripheral or flat addressing) into a LUN number.
pub fn decode_lun(raw: u64) -> Option<u16> {
    let b = raw.to_be_bytes();
    if b[2..].iter().any(|&x| x != 0) {
        return None;
    }
    match b[0] >> 6 {
        0 if b[0] == 0 => Some(b[1] as u16),
        1 => Some((((b[0] & 0x3f) as u16) << 8) | b[1] as u16),
        _ => None,
    }
}

/// Encodes a LUN number as a SAM-5 LUN field.
pub fn encode_lun(lun: u16) -> u64 {
    let b0 = if lun < 256 { 0 } else { 0x40 | (lun >> 8) as u8 };
    u64::from_be_bytes([b0, lun as u8, 0, 0, 0, 0, 0, 0])
}

#[cfg(test)]
mod tests;
