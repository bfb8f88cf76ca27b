//! rtgt: an iSCSI target. See ARCHITECTURE.md for the map of the crate.

pub mod iscsi;
pub mod pdu;
pub mod scsi;
pub mod storage;
