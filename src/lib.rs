//! rtgt: an iSCSI target. See ARCHITECTURE.md for the map of the crate.
//!
//! The sans-IO core (PDU codec, iSCSI and SCSI state machines, the storage seam) is the
//! `rtgt-core` crate (`src/core/`), re-exported here under its old paths.

pub use rtgt_core::{fnv, iscsi, mutants, pdu, scsi};

#[doc(hidden)]
pub mod api;
pub mod clock;
pub mod config;
pub mod node;
pub mod overrides;
pub mod pr_keepers;
pub mod private_file;
pub mod rng;
pub mod s3;
pub mod sd_notify;
pub mod server;
pub mod storage;
pub mod wire;
