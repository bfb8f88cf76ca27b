//! The storage seam: a [`BlockStore`] is a byte-addressed device of fixed capacity; the SCSI
//! core turns LBAs into byte offsets and checks ranges before calling it, so stores may assume
//! `offset + len <= capacity`. The stores that do no I/O (memory, null) live here too; those
//! that do (file, io_uring, S3) live in `rtgt::storage` and `rtgt::s3`.

pub mod crypto_erase;
pub mod memory;
pub mod null;
pub mod snapshots;
pub mod stats;
pub mod zeros;

use bytes::Bytes;
use thiserror::Error;

pub use memory::MemoryStore;
pub use null::NullStore;
pub use stats::StoreStats;
pub use zeros::is_zero;

pub use futures::future::BoxFuture;

/// A storage failure. Each kind maps to the sense data the initiator sees and implies whether
/// retrying can help.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The medium failed to read: unrecovered read error. Not retried by us.
    #[error("read failed: {0}")]
    Read(String),
    /// The medium failed to write; nothing about the written range can be assumed.
    #[error("write failed: {0}")]
    Write(String),
    /// A transient failure (a backend timeout, throttling): the initiator may retry.
    #[error("temporarily unavailable: {0}")]
    Transient(String),
    /// The backend has no space left to allocate the write.
    #[error("no space left: {0}")]
    NoSpace(String),
    /// The logical unit cannot serve now but expects to (opening, waiting for its lease): NOT
    /// READY, which initiators retry. Nothing was done.
    #[error("not ready: {0}")]
    NotReady(String),
}

impl StoreError {
    pub fn from_io(err: std::io::Error, writing: bool) -> StoreError {
        if err.raw_os_error() == Some(libc::ENOSPC) {
            return StoreError::NoSpace(err.to_string());
        }
        if writing { StoreError::Write(err.to_string()) } else { StoreError::Read(err.to_string()) }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What a store can do, reported through READ CAPACITY, VPD pages and mode pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreCaps {
    /// UNMAP deallocates, and deallocated ranges read as zeros (LBPME=1, LBPRZ=1).
    pub thin: bool,
    /// Writes may sit in a volatile cache until flush (so WCE=1 is meaningful).
    pub volatile_cache: bool,
    /// Granularity, in bytes, at which unmap really frees space.
    pub unmap_granularity: u64,
    /// The transfer size the store handles best (an S3 chunk, say), in bytes; 0 if none.
    pub optimal_transfer: u64,
    /// The largest write, in bytes, that [`BlockStore::write_atomic`] makes all-or-nothing
    /// through a crash or power loss; 0 if the store offers no atomic writes.
    pub atomic_write_max: u64,
}

/// What stores that offer atomic writes allow at most: 1 MiB, 256 blocks of 4 KiB (libiscsi
/// writes up to 256 blocks atomically whatever the block size, so 2048 of 512 bytes).
pub const ATOMIC_WRITE_MAX: u64 = 1 << 20;

/// One run of the address space in [`BlockStore::mapped_extents`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub mapped: bool,
}

/// The storage seam: byte-addressed, async, shared between all sessions of a logical unit.
pub trait BlockStore: Send + Sync + 'static {
    /// Human-readable description for logs and the management API ("file:/srv/disk.img").
    fn describe(&self) -> String;
    fn capacity(&self) -> u64;
    /// The block size the store was formatted with, if it keeps one (an S3 volume's metadata
    /// does); the configuration decides otherwise.
    fn formatted_block_size(&self) -> Option<u32> {
        None
    }
    fn caps(&self) -> StoreCaps;
    fn read(&self, offset: u64, len: usize) -> BoxFuture<'_, StoreResult<Bytes>>;
    /// Writes `data` at `offset`; with `fua`, returns only once the data is durable.
    fn write(&self, offset: u64, data: Bytes, fua: bool) -> BoxFuture<'_, StoreResult<()>>;
    /// Writes `data` at `offset` all or nothing: after a crash or power loss either every block
    /// of it reads back or none does. At most `caps().atomic_write_max` bytes; the caller keeps
    /// other commands to the same blocks away meanwhile. Stores without atomic writes refuse.
    fn write_atomic(&self, _offset: u64, _data: Bytes, _fua: bool) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async { Err(StoreError::Write("this backend offers no atomic writes".into())) })
    }
    /// Makes every write that completed before this call durable.
    fn flush(&self) -> BoxFuture<'_, StoreResult<()>>;
    /// Deallocates a range; afterwards it reads as zeros. Stores that are not thin write zeros.
    fn unmap(&self, offset: u64, len: u64) -> BoxFuture<'_, StoreResult<()>>;
    /// Mapped and deallocated runs covering `[offset, offset + len)`, in order.
    fn mapped_extents(&self, offset: u64, len: u64) -> BoxFuture<'_, StoreResult<Vec<Extent>>> {
        Box::pin(async move { Ok(vec![Extent { offset, len, mapped: true }]) })
    }
    /// Changes the capacity (LUN grow). Stores that cannot resize refuse.
    fn resize(&self, _capacity: u64) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async { Err(StoreError::Write("this backend cannot be resized".into())) })
    }
    /// Switches between write-back (`true`) and write-through caching (MODE SELECT WCE).
    fn set_write_cache(&self, _enabled: bool) {}
    /// The snapshots the store takes, if it takes any.
    fn snapshots(&self) -> Option<&dyn snapshots::Snapshots> {
        None
    }
    /// SANITIZE CRYPTO ERASE, if the store encrypts what it keeps.
    fn crypto_erase(&self) -> Option<&dyn crypto_erase::CryptoErase> {
        None
    }
    /// Whether the store can serve media access now; why not otherwise (NOT READY).
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
    /// Backend counters for logs and the management API.
    fn stats(&self) -> StoreStats {
        StoreStats::Plain
    }
    /// Makes everything durable and lets go of the backend (clean shutdown).
    fn shutdown(&self) -> BoxFuture<'_, StoreResult<()>> {
        self.flush()
    }
    /// Resolves, with the reason, once the store can never serve again (an S3 volume whose
    /// lease another target took): it must be opened anew. Pending forever for most stores.
    fn failed(&self) -> BoxFuture<'_, String> {
        Box::pin(std::future::pending())
    }
}

/// Writes zeros over a range in bounded pieces; the fallback for stores without a cheaper way.
pub async fn write_zeros(store: &dyn BlockStore, mut offset: u64, len: u64, fua: bool) -> StoreResult<()> {
    const PIECE: u64 = 1 << 20;
    let end = offset + len;
    let zeros = Bytes::from(vec![0u8; PIECE.min(len) as usize]);
    while offset < end {
        let n = PIECE.min(end - offset);
        store.write(offset, zeros.slice(..n as usize), fua).await?;
        offset += n;
    }
    Ok(())
}
