//! rtgt's sans-IO core: the iSCSI PDU codec (`pdu`), the login, session and connection state
//! machines (`iscsi`), the SCSI command set over the storage seam (`scsi`, `store`), and the
//! planted bugs of the simulation's mutation check (`mutants`). A crate of its own so that the
//! compiler holds the boundary: no unsafe code, and no tokio but its sync primitives (no
//! sockets, files, clocks or spawning); the `rtgt` crate drives it.

#![forbid(unsafe_code)]

pub mod fnv;
pub mod iscsi;
pub mod mutants;
pub mod pdu;
pub mod scsi;
pub mod store;
