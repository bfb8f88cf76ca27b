//! The iSCSI protocol core (RFC 7143): login and negotiation, sessions and the full-feature
//! phase of a connection. Sans-IO: these state machines are fed PDUs and `now`, and return the
//! PDUs to send and the SCSI tasks to run; they never touch sockets, clocks or threads.

pub mod chap;
pub mod conn;
pub mod login;
pub mod memory;
pub mod params;
pub mod window;
