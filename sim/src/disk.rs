//! A simulated disk: durable media that survive a target crash, a volatile write cache that
//! does not, and injected I/O errors. Flush (and FUA) move the cache to the media.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rtgt::rng::Rng;
use rtgt::storage::{BlockStore, BoxFuture, Extent, StoreCaps, StoreError, StoreResult};

/// What survives a crash: written blocks by index.
#[derive(Clone, Default)]
pub struct Media {
    blocks: Arc<Mutex<BTreeMap<u64, Bytes>>>,
}

/// Fault probabilities per call.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DiskFaults {
    pub read_error: f64,
    pub write_error: f64,
}

pub struct SimDisk {
    media: Media,
    /// Written but not flushed: lost in a crash. `None` marks an unmapped block.
    cache: Mutex<BTreeMap<u64, Option<Bytes>>>,
    capacity: u64,
    block: u64,
    faults: Arc<Mutex<(DiskFaults, Rng)>>,
    landings: Landings,
    /// A write takes effect after a delay drawn up to this (a disk with latency: an aborted
    /// write may still be running when its abort arrives).
    write_latency: (Duration, Mutex<Rng>),
}

/// A write that took effect on the disk: when, at which block, with which write's data.
#[derive(Debug, Clone, Copy)]
pub struct Landing {
    pub at: Duration,
    pub block: u64,
    pub id: u32,
}

/// What the disk's writes left, in order, for the world to check against the model.
pub type Landings = Arc<Mutex<Vec<Landing>>>;

impl SimDisk {
    pub fn new(
        media: Media,
        capacity: u64,
        block: u64,
        faults: Arc<Mutex<(DiskFaults, Rng)>>,
        landings: Landings,
        write_latency: (Duration, Rng),
    ) -> SimDisk {
        let write_latency = (write_latency.0, Mutex::new(write_latency.1));
        SimDisk { media, cache: Mutex::new(BTreeMap::new()), capacity, block, faults, landings, write_latency }
    }

    fn write_delay(&self) -> Duration {
        let (max, rng) = &self.write_latency;
        match max.is_zero() {
            true => Duration::ZERO,
            false => Duration::from_micros(rng.lock().expect("poisoned").below(max.as_micros() as u64 + 1)),
        }
    }

    fn roll(&self, writing: bool) -> StoreResult<()> {
        let mut f = self.faults.lock().expect("poisoned");
        let (faults, rng) = &mut *f;
        let p = if writing { faults.write_error } else { faults.read_error };
        if rng.chance(p) {
            return Err(if writing {
                StoreError::Write("injected".into())
            } else {
                StoreError::Read("injected".into())
            });
        }
        Ok(())
    }

    fn flush_now(&self) {
        let dirty = std::mem::take(&mut *self.cache.lock().expect("poisoned"));
        let mut media = self.media.blocks.lock().expect("poisoned");
        for (b, v) in dirty {
            match v {
                Some(data) => {
                    media.insert(b, data);
                }
                None => {
                    media.remove(&b);
                }
            }
        }
    }

    fn put(&self, offset: u64, data: &[u8], fua: bool) {
        let mut cache = self.cache.lock().expect("poisoned");
        let at = crate::clock::now();
        let mut landings = self.landings.lock().expect("poisoned");
        for (i, chunk) in data.chunks(self.block as usize).enumerate() {
            let b = offset / self.block + i as u64;
            let v = if chunk.iter().all(|&x| x == 0) { None } else { Some(Bytes::copy_from_slice(chunk)) };
            if let Some(id) = crate::model::decode_block(b, chunk).ok().filter(|&id| id != 0) {
                landings.push(Landing { at, block: b, id });
            }
            cache.insert(b, v);
        }
        drop(landings);
        drop(cache);
        if fua {
            self.flush_now();
        }
    }
}

impl BlockStore for SimDisk {
    fn describe(&self) -> String {
        "simulated disk".into()
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn caps(&self) -> StoreCaps {
        StoreCaps {
            thin: true,
            volatile_cache: true,
            unmap_granularity: self.block,
            optimal_transfer: 0,
            atomic_write_max: 0,
        }
    }

    fn read(&self, offset: u64, len: usize) -> BoxFuture<'_, StoreResult<Bytes>> {
        let r = self.roll(false).map(|()| {
            let mut out = BytesMut::zeroed(len);
            let cache = self.cache.lock().expect("poisoned");
            let media = self.media.blocks.lock().expect("poisoned");
            for i in 0..(len as u64 / self.block) {
                let b = offset / self.block + i;
                let v = match cache.get(&b) {
                    Some(v) => v.clone(),
                    None => media.get(&b).cloned(),
                };
                if let Some(v) = v {
                    let at = (i * self.block) as usize;
                    out[at..at + self.block as usize].copy_from_slice(&v);
                }
            }
            out.freeze()
        });
        Box::pin(async move { r })
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> BoxFuture<'_, StoreResult<()>> {
        let delay = self.write_delay();
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            self.roll(true).map(|()| self.put(offset, &data, fua))
        })
    }

    fn flush(&self) -> BoxFuture<'_, StoreResult<()>> {
        let r = self.roll(true).map(|()| self.flush_now());
        Box::pin(async move { r })
    }

    fn unmap(&self, offset: u64, len: u64) -> BoxFuture<'_, StoreResult<()>> {
        let r = self.roll(true).map(|()| self.put(offset, &vec![0u8; len as usize], false));
        Box::pin(async move { r })
    }

    fn mapped_extents(&self, offset: u64, len: u64) -> BoxFuture<'_, StoreResult<Vec<Extent>>> {
        Box::pin(async move { Ok(vec![Extent { offset, len, mapped: true }]) })
    }
}
