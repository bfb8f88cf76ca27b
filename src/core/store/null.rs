//! A store that discards writes and reads zeros: for benchmarking the protocol path alone.
//!
//! It breaks the read-your-writes invariant by design; never use it for data.

use bytes::{Bytes, BytesMut};

use super::{BlockStore, BoxFuture, StoreCaps, StoreResult};

pub struct NullStore {
    capacity: u64,
}

impl NullStore {
    pub fn new(capacity: u64) -> Self {
        NullStore { capacity }
    }
}

impl BlockStore for NullStore {
    fn describe(&self) -> String {
        "null".into()
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn caps(&self) -> StoreCaps {
        StoreCaps {
            thin: false,
            volatile_cache: false,
            unmap_granularity: 0,
            optimal_transfer: 0,
            atomic_write_max: super::ATOMIC_WRITE_MAX,
        }
    }

    fn read(&self, _offset: u64, len: usize) -> BoxFuture<'_, StoreResult<Bytes>> {
        Box::pin(async move { Ok(BytesMut::zeroed(len).freeze()) })
    }

    fn write(&self, _offset: u64, _data: Bytes, _fua: bool) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async { Ok(()) })
    }

    fn write_atomic(&self, offset: u64, data: Bytes, fua: bool) -> BoxFuture<'_, StoreResult<()>> {
        // Nothing here outlives a crash, so any write is all or nothing.
        self.write(offset, data, fua)
    }

    fn flush(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async { Ok(()) })
    }

    fn unmap(&self, _offset: u64, _len: u64) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async { Ok(()) })
    }
}
