//! The store of a logical unit that is not open yet (or is being opened again): every media
//! access is NOT READY, with the reason the last attempt gave. INQUIRY, REPORT LUNS and the
//! like answer meanwhile, so initiators see the LUN and retry.

use std::sync::Mutex;

use bytes::Bytes;

use super::{BlockStore, BoxFuture, StoreCaps, StoreError, StoreResult, StoreStats};

pub struct PendingStore {
    /// What the configuration says the capacity will be (or one block); never reported.
    capacity: u64,
    why: Mutex<String>,
}

impl PendingStore {
    pub fn new(capacity: u64, why: &str) -> PendingStore {
        PendingStore { capacity, why: Mutex::new(why.to_string()) }
    }

    /// Why the logical unit is not ready (the latest attempt's error).
    pub fn set_reason(&self, why: &str) {
        *self.why.lock().expect("poisoned") = why.to_string();
    }

    pub fn reason(&self) -> String {
        self.why.lock().expect("poisoned").clone()
    }

    fn not_ready<T: Send + 'static>(&self) -> BoxFuture<'_, StoreResult<T>> {
        let why = self.reason();
        Box::pin(async move { Err(StoreError::NotReady(why)) })
    }
}

impl BlockStore for PendingStore {
    fn describe(&self) -> String {
        format!("not ready: {}", self.reason())
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn caps(&self) -> StoreCaps {
        StoreCaps { thin: false, volatile_cache: false, unmap_granularity: 0, optimal_transfer: 0, atomic_write_max: 0 }
    }

    fn ready(&self) -> Result<(), String> {
        Err(self.reason())
    }

    fn read(&self, _offset: u64, _len: usize) -> BoxFuture<'_, StoreResult<Bytes>> {
        self.not_ready()
    }

    fn write(&self, _offset: u64, _data: Bytes, _fua: bool) -> BoxFuture<'_, StoreResult<()>> {
        self.not_ready()
    }

    fn flush(&self) -> BoxFuture<'_, StoreResult<()>> {
        self.not_ready()
    }

    fn unmap(&self, _offset: u64, _len: u64) -> BoxFuture<'_, StoreResult<()>> {
        self.not_ready()
    }

    fn stats(&self) -> StoreStats {
        StoreStats::NotReady { reason: self.reason() }
    }

    /// Nothing was written: nothing to flush.
    fn shutdown(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async { Ok(()) })
    }
}
