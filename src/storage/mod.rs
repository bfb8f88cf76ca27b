//! Block stores that do I/O: file and block device (positioned I/O on the store's own threads,
//! or io_uring), and the pending store of a LUN not open yet. The seam itself (the
//! [`BlockStore`] trait, its errors, the memory and null stores) is the core's
//! (`rtgt_core::store`), re-exported here.

mod atomic_intent;
pub mod file;
mod inline_writes;
mod io_pool;
pub mod pending;
mod small_folios;
pub mod uring;

pub use rtgt_core::store::*;

pub use file::FileStore;
pub use pending::PendingStore;
pub use uring::UringStore;
