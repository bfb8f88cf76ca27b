//! A sparse in-memory store: fixed-size pages allocated on first write, freed by unmap.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};

use super::{BlockStore, BoxFuture, Extent, StoreCaps, StoreResult};

/// Allocation unit of the memory store.
pub const PAGE_LEN: u64 = 64 * 1024;
const SHARDS: u64 = 16;

/// A sparse memory-backed device. Unwritten and unmapped pages read as zeros.
pub struct MemoryStore {
    capacity: AtomicU64,
    /// Pages by index, sharded by `index % SHARDS` to spread lock contention.
    shards: Vec<Mutex<BTreeMap<u64, Box<[u8]>>>>,
}

impl MemoryStore {
    pub fn new(capacity: u64) -> Self {
        MemoryStore {
            capacity: AtomicU64::new(capacity),
            shards: (0..SHARDS).map(|_| Mutex::new(BTreeMap::new())).collect(),
        }
    }

    fn shard(&self, page: u64) -> std::sync::MutexGuard<'_, BTreeMap<u64, Box<[u8]>>> {
        self.shards[(page % SHARDS) as usize].lock().expect("memory store lock poisoned")
    }

    /// Number of allocated pages (tests and statistics).
    pub fn allocated_pages(&self) -> usize {
        (0..SHARDS).map(|s| self.shard(s).len()).sum()
    }

    /// Visits `[offset, offset + len)` page by page as (page index, offset in page, length).
    fn for_each_page(offset: u64, len: u64, mut f: impl FnMut(u64, usize, usize)) {
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let page = at / PAGE_LEN;
            let within = (at % PAGE_LEN) as usize;
            let n = ((PAGE_LEN - within as u64).min(end - at)) as usize;
            f(page, within, n);
            at += n as u64;
        }
    }

    fn read_sync(&self, offset: u64, len: usize) -> Bytes {
        let mut out = BytesMut::zeroed(len);
        let mut pos = 0;
        Self::for_each_page(offset, len as u64, |page, within, n| {
            if let Some(p) = self.shard(page).get(&page) {
                out[pos..pos + n].copy_from_slice(&p[within..within + n]);
            }
            pos += n;
        });
        out.freeze()
    }

    fn write_sync(&self, offset: u64, data: &[u8]) {
        let mut pos = 0;
        Self::for_each_page(offset, data.len() as u64, |page, within, n| {
            let src = &data[pos..pos + n];
            let mut shard = self.shard(page);
            match shard.get_mut(&page) {
                Some(p) => p[within..within + n].copy_from_slice(src),
                // Writing zeros to an unallocated page changes nothing: stay sparse.
                None if super::zeros::is_zero(src) => {}
                None => {
                    let mut p = vec![0u8; PAGE_LEN as usize].into_boxed_slice();
                    p[within..within + n].copy_from_slice(src);
                    shard.insert(page, p);
                }
            }
            pos += n;
        });
    }

    fn unmap_sync(&self, offset: u64, len: u64) {
        Self::for_each_page(offset, len, |page, within, n| {
            let mut shard = self.shard(page);
            if n as u64 == PAGE_LEN {
                shard.remove(&page);
            } else if let Some(p) = shard.get_mut(&page) {
                p[within..within + n].fill(0);
            }
        });
    }
}

impl BlockStore for MemoryStore {
    fn describe(&self) -> String {
        "memory".into()
    }

    fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Relaxed)
    }

    fn caps(&self) -> StoreCaps {
        StoreCaps {
            thin: true,
            volatile_cache: false,
            unmap_granularity: PAGE_LEN,
            optimal_transfer: 0,
            atomic_write_max: super::ATOMIC_WRITE_MAX,
        }
    }

    fn read(&self, offset: u64, len: usize) -> BoxFuture<'_, StoreResult<Bytes>> {
        let data = self.read_sync(offset, len);
        Box::pin(async move { Ok(data) })
    }

    fn write(&self, offset: u64, data: Bytes, _fua: bool) -> BoxFuture<'_, StoreResult<()>> {
        self.write_sync(offset, &data);
        Box::pin(async { Ok(()) })
    }

    fn write_atomic(&self, offset: u64, data: Bytes, fua: bool) -> BoxFuture<'_, StoreResult<()>> {
        // Nothing here outlives a crash, so any write is all or nothing.
        self.write(offset, data, fua)
    }

    fn flush(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async { Ok(()) })
    }

    fn unmap(&self, offset: u64, len: u64) -> BoxFuture<'_, StoreResult<()>> {
        self.unmap_sync(offset, len);
        Box::pin(async { Ok(()) })
    }

    fn mapped_extents(&self, offset: u64, len: u64) -> BoxFuture<'_, StoreResult<Vec<Extent>>> {
        let mut out: Vec<Extent> = Vec::new();
        Self::for_each_page(offset, len, |page, within, n| {
            let mapped = self.shard(page).contains_key(&page);
            let at = page * PAGE_LEN + within as u64;
            match out.last_mut() {
                Some(last) if last.mapped == mapped => last.len += n as u64,
                _ => out.push(Extent { offset: at, len: n as u64, mapped }),
            }
        });
        Box::pin(async move { Ok(out) })
    }

    fn resize(&self, capacity: u64) -> BoxFuture<'_, StoreResult<()>> {
        let old = self.capacity.swap(capacity, Ordering::Relaxed);
        if capacity < old {
            self.unmap_sync(capacity, old - capacity);
        }
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sparse_reads_writes_and_unmap() {
        let s = MemoryStore::new(1 << 30);
        assert_eq!(s.read(12345, 100).await.unwrap(), vec![0u8; 100]);
        s.write(PAGE_LEN - 2, Bytes::from_static(&[1, 2, 3, 4]), false).await.unwrap();
        assert_eq!(s.allocated_pages(), 2);
        assert_eq!(&s.read(PAGE_LEN - 3, 6).await.unwrap()[..], &[0, 1, 2, 3, 4, 0]);
        s.write(10 * PAGE_LEN, Bytes::from(vec![0u8; 4096]), false).await.unwrap();
        assert_eq!(s.allocated_pages(), 2, "zeros stay sparse");
        s.unmap(0, PAGE_LEN).await.unwrap();
        assert_eq!(s.allocated_pages(), 1);
        assert_eq!(&s.read(PAGE_LEN - 3, 6).await.unwrap()[..], &[0, 0, 0, 3, 4, 0]);
        s.unmap(PAGE_LEN, 1).await.unwrap();
        assert_eq!(&s.read(PAGE_LEN - 3, 6).await.unwrap()[..], &[0, 0, 0, 0, 4, 0]);
        let ext = s.mapped_extents(0, 3 * PAGE_LEN).await.unwrap();
        assert_eq!(
            ext,
            vec![
                Extent { offset: 0, len: PAGE_LEN, mapped: false },
                Extent { offset: PAGE_LEN, len: PAGE_LEN, mapped: true },
                Extent { offset: 2 * PAGE_LEN, len: PAGE_LEN, mapped: false },
            ]
        );
    }
}
