//! rtgt: an iSCSI target. See ARCHITECTURE.md for the map of the crate.

#[doc(hidden)]
pub mod api;
pub mod bench;
pub mod clock;
pub mod config;
pub mod fnv;
pub mod fuzzing;
pub mod initiator;
pub mod iscsi;
pub mod mutants;
pub mod netem;
pub mod node;
pub mod overrides;
pub mod pdu;
pub mod pr_keepers;
pub mod private_file;
pub mod rng;
pub mod s3;
pub mod scsi;
pub mod sd_notify;
pub mod server;
pub mod storage;
pub mod wire;
