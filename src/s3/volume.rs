//! A sparse block volume on object storage: fixed-size chunk objects under a prefix, a
//! versioned metadata object, a single-writer lease, and a bounded write-back cache.
//!
//! Layout under `s3://bucket/prefix/`:
//! * `rtgt-volume.json`: format version, size, block size, chunk size, uuid, creation time;
//!   created with `If-None-Match: *`.
//! * `rtgt-lease.json`: who may write, until when; taken and renewed with conditional PUTs.
//! * `chunks/<index, 16 hex digits>`: one object per chunk holding non-zero data, with the
//!   CRC32C of each segment in its metadata. A missing chunk reads as zeros.
//!
//! Every mutation of a chunk object (PUT, DELETE) happens with the chunk claimed in
//! `inflight`, so at most one is in flight per key and no update is lost between a partial
//! write, a full write and an UNMAP.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::url::S3Url;
use super::{Condition, ObjectError, ObjectStore, S3Stats};
use crate::clock::Clock;
use crate::rng::Rng;
use crate::storage::{BlockStore, BoxFuture, Extent, StoreCaps, StoreError, StoreResult};

pub const FORMAT_VERSION: u32 = 1;
pub const META_NAME: &str = "rtgt-volume.json";
pub const LEASE_NAME: &str = "rtgt-lease.json";
const CHUNKS_DIR: &str = "chunks/";
const CRC_METADATA: &str = "rtgt-crc32c";
/// Most CRC segments per chunk (their CRCs travel in object metadata, limited to 2 KiB).
const SEGMENTS_MAX: u64 = 64;
/// Keys per DeleteObjects request (the S3 limit).
const DELETE_BATCH: usize = 1000;
/// Chunk flushes run in parallel at most this many at a time.
const FLUSH_PARALLEL: usize = 32;

/// The metadata object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMeta {
    pub format_version: u32,
    pub size: u64,
    pub block_size: u32,
    pub chunk_size: u64,
    pub uuid: String,
    pub created_unix_secs: u64,
}

/// Geometry of a new volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateSpec {
    pub size: u64,
    pub block_size: u32,
    pub chunk_size: u64,
}

impl CreateSpec {
    pub fn validate(&self) -> Result<(), String> {
        let bs = self.block_size as u64;
        if bs != 512 && bs != 4096 {
            return Err(format!("block size {bs} is not supported (512 or 4096)"));
        }
        if !self.chunk_size.is_power_of_two() || self.chunk_size > 256 << 20 {
            return Err(format!("chunk size {} must be a power of two of at most 256MiB", self.chunk_size));
        }
        if self.chunk_size < bs {
            return Err("chunk size is smaller than the block size".into());
        }
        if self.size == 0 || !self.size.is_multiple_of(bs) {
            return Err(format!("size {} must be a non-zero multiple of the block size {bs}", self.size));
        }
        Ok(())
    }
}

/// How to open a volume.
#[derive(Debug, Clone)]
pub struct VolumeOptions {
    /// Create the volume with this geometry if it does not exist; if it exists, its geometry
    /// must match.
    pub create: Option<CreateSpec>,
    /// Take the lease over from another holder.
    pub force: bool,
    /// Bytes of chunk buffers the write-back cache may hold.
    pub cache_bytes: u64,
    /// Dirty data older than this is flushed in the background.
    pub flush_age: Duration,
    pub flush_interval: Duration,
    pub lease_duration: Duration,
    /// Who we are, in the lease ("host/pid/random").
    pub holder: String,
    pub seed: u64,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions {
            create: None,
            force: false,
            cache_bytes: 256 << 20,
            flush_age: Duration::from_secs(3),
            flush_interval: Duration::from_millis(500),
            lease_duration: Duration::from_secs(30),
            holder: "rtgt".into(),
            seed: 1,
        }
    }
}

// ---------------------------------------------------------------- bitmaps

/// A per-block bitmap with cheap all-clear and all-set states.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bits {
    Empty,
    Full,
    Some(Vec<u64>),
}

impl Bits {
    fn get(&self, i: usize) -> bool {
        match self {
            Bits::Empty => false,
            Bits::Full => true,
            Bits::Some(w) => w[i / 64] >> (i % 64) & 1 == 1,
        }
    }

    fn set_range(&mut self, start: usize, end: usize, n: usize) {
        if start == 0 && end == n {
            *self = Bits::Full;
            return;
        }
        let words = match self {
            Bits::Full => return,
            Bits::Empty => {
                *self = Bits::Some(vec![0; n.div_ceil(64)]);
                match self {
                    Bits::Some(w) => w,
                    _ => unreachable!(),
                }
            }
            Bits::Some(w) => w,
        };
        for i in start..end {
            words[i / 64] |= 1 << (i % 64);
        }
        if (0..n).all(|i| words[i / 64] >> (i % 64) & 1 == 1) {
            *self = Bits::Full;
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Bits::Empty => true,
            Bits::Full => false,
            Bits::Some(w) => w.iter().all(|&x| x == 0),
        }
    }

    fn is_full(&self) -> bool {
        matches!(self, Bits::Full)
    }

    fn count(&self, n: usize) -> usize {
        match self {
            Bits::Empty => 0,
            Bits::Full => n,
            Bits::Some(w) => w.iter().map(|x| x.count_ones() as usize).sum(),
        }
    }
}

// ---------------------------------------------------------------- cache

/// Cached state of one chunk.
#[derive(Debug)]
struct Entry {
    /// Chunk contents; `None` means every valid block is zero.
    buf: Option<Box<[u8]>>,
    /// Blocks whose current contents the entry holds.
    valid: Bits,
    /// Blocks written since the last successful flush.
    dirty: Bits,
    /// Bumped by every change; a flush clears `dirty` only if no change came after it began.
    generation: u64,
    dirty_since: Option<Duration>,
    last_used: u64,
}

impl Entry {
    fn empty() -> Entry {
        Entry { buf: None, valid: Bits::Empty, dirty: Bits::Empty, generation: 0, dirty_since: None, last_used: 0 }
    }

    fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }
}

#[derive(Debug, Default)]
struct Cache {
    entries: BTreeMap<u64, Entry>,
    /// Chunks whose object exists, or may exist after an uncertain request.
    exists: BTreeSet<u64>,
    /// Chunks with a mutation (PUT, DELETE) in flight.
    inflight: BTreeSet<u64>,
    /// Bytes of chunk buffers held.
    buffer_bytes: u64,
    tick: u64,
}

/// Counters of the volume itself (the object store keeps request counters).
#[derive(Debug, Default)]
pub struct VolumeStats {
    pub flushes: AtomicU64,
    pub flush_errors: AtomicU64,
    pub flush_micros_total: AtomicU64,
    pub flush_micros_max: AtomicU64,
    pub chunks_deleted: AtomicU64,
}

/// The single-writer lease object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LeaseRecord {
    holder: String,
    expires_unix_ms: u64,
}

pub struct S3Volume {
    store: Arc<dyn ObjectStore>,
    url: S3Url,
    meta: Mutex<(VolumeMeta, Option<String>)>,
    chunk_size: u64,
    block_size: u64,
    segment: u64,
    capacity: AtomicU64,
    cache: Mutex<Cache>,
    /// Woken when a claim is released or buffers are freed.
    released: Notify,
    cache_limit: u64,
    write_back: AtomicBool,
    /// A background flush failed: reported by the next SYNCHRONIZE CACHE.
    sticky_error: Mutex<Option<String>>,
    /// The lease was lost to another holder: no more writes.
    fenced: AtomicBool,
    lease_etag: Mutex<Option<String>>,
    opts: VolumeOptions,
    clock: Arc<dyn Clock>,
    stats: VolumeStats,
    s3_stats: Option<Arc<S3Stats>>,
}

fn store_err(e: ObjectError, writing: bool) -> StoreError {
    match e {
        ObjectError::Determinate { retryable: true, message } => StoreError::Transient(message),
        e if writing => StoreError::Write(e.to_string()),
        e => StoreError::Read(e.to_string()),
    }
}

impl S3Volume {
    fn chunk_key(url: &S3Url, index: u64) -> String {
        url.key(&format!("{CHUNKS_DIR}{index:016x}"))
    }

    /// Writes a new metadata object; fails if a volume already exists there.
    pub async fn create(
        store: &dyn ObjectStore,
        url: &S3Url,
        spec: &CreateSpec,
        clock: &dyn Clock,
        seed: u64,
    ) -> Result<VolumeMeta, String> {
        spec.validate()?;
        let mut rng = Rng::seeded(seed);
        let uuid = format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            rng.next_u64() as u32,
            rng.next_u64() as u16,
            rng.next_u64() & 0xfff,
            rng.next_u64() & 0xfff,
            rng.next_u64() & 0xffff_ffff_ffff
        );
        let created = clock.wall().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let meta = VolumeMeta {
            format_version: FORMAT_VERSION,
            size: spec.size,
            block_size: spec.block_size,
            chunk_size: spec.chunk_size,
            uuid,
            created_unix_secs: created,
        };
        let body = Bytes::from(serde_json::to_vec_pretty(&meta).expect("metadata serializes"));
        match store.put(&url.key(META_NAME), body, BTreeMap::new(), Condition::IfNoneMatch).await {
            Ok(_) => Ok(meta),
            Err(ObjectError::PreconditionFailed) => Err(format!("a volume already exists at {url}")),
            Err(e) => Err(format!("cannot create the volume at {url}: {e}")),
        }
    }

    /// Reads and checks the metadata object.
    pub async fn read_meta(
        store: &dyn ObjectStore,
        url: &S3Url,
    ) -> Result<Option<(VolumeMeta, Option<String>)>, String> {
        match store.get(&url.key(META_NAME), None).await {
            Ok(out) => {
                let meta: VolumeMeta = serde_json::from_slice(&out.body)
                    .map_err(|e| format!("{url}/{META_NAME} is not volume metadata: {e}"))?;
                if meta.format_version != FORMAT_VERSION {
                    return Err(format!(
                        "{url} has volume format version {}, this rtgt reads version {FORMAT_VERSION}",
                        meta.format_version
                    ));
                }
                CreateSpec { size: meta.size, block_size: meta.block_size, chunk_size: meta.chunk_size }
                    .validate()
                    .map_err(|e| format!("{url}: invalid metadata: {e}"))?;
                Ok(Some((meta, out.meta.etag)))
            }
            Err(ObjectError::NotFound) => Ok(None),
            Err(e) => Err(format!("cannot read {url}/{META_NAME}: {e}")),
        }
    }

    /// Opens (and with `opts.create`, creates) a volume: reads its metadata, takes the lease,
    /// lists its chunks, and starts the background flusher and lease renewal.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        url: S3Url,
        opts: VolumeOptions,
        clock: Arc<dyn Clock>,
        s3_stats: Option<Arc<S3Stats>>,
    ) -> Result<Arc<S3Volume>, String> {
        let (meta, etag) = match S3Volume::read_meta(&*store, &url).await? {
            Some(found) => found,
            None => match &opts.create {
                Some(spec) => {
                    match S3Volume::create(&*store, &url, spec, &*clock, opts.seed).await {
                        Ok(_) => {}
                        // Someone else created it meanwhile (or our uncertain attempt did).
                        Err(e) if e.contains("already exists") => {}
                        Err(e) => return Err(e),
                    }
                    S3Volume::read_meta(&*store, &url).await?.ok_or_else(|| format!("{url} vanished after creation"))?
                }
                None => {
                    return Err(format!(
                        "no volume at {url}: create it with `rtgt volume create {url} --size SIZE` or set create = true"
                    ));
                }
            },
        };
        if let Some(spec) = &opts.create {
            let mismatch = |what: &str, have: u64, want: u64| {
                Err(format!("{url} has {what} {have} but the configuration asks for {want}; refusing to open it"))
            };
            if meta.block_size != spec.block_size {
                return mismatch("block size", meta.block_size as u64, spec.block_size as u64);
            }
            if meta.chunk_size != spec.chunk_size {
                return mismatch("chunk size", meta.chunk_size, spec.chunk_size);
            }
            if meta.size != spec.size {
                return mismatch("size", meta.size, spec.size);
            }
        }
        let segment = (meta.chunk_size / SEGMENTS_MAX).max(64 * 1024).min(meta.chunk_size);
        let volume = Arc::new(S3Volume {
            store,
            url,
            chunk_size: meta.chunk_size,
            block_size: meta.block_size as u64,
            segment,
            capacity: AtomicU64::new(meta.size),
            meta: Mutex::new((meta, etag)),
            cache: Mutex::new(Cache::default()),
            released: Notify::new(),
            cache_limit: opts.cache_bytes.max(4 * segment),
            write_back: AtomicBool::new(true),
            sticky_error: Mutex::new(None),
            fenced: AtomicBool::new(false),
            lease_etag: Mutex::new(None),
            opts,
            clock,
            stats: VolumeStats::default(),
            s3_stats,
        });
        volume.acquire_lease().await?;
        volume.load_chunk_list().await?;
        let weak = Arc::downgrade(&volume);
        tokio::spawn(background(weak));
        Ok(volume)
    }

    pub fn url(&self) -> &S3Url {
        &self.url
    }

    pub fn meta(&self) -> VolumeMeta {
        self.meta.lock().expect("poisoned").0.clone()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().expect("volume cache poisoned")
    }

    fn blocks_per_chunk(&self) -> usize {
        (self.chunk_size / self.block_size) as usize
    }

    /// Length of chunk `c` (the last one may be short).
    fn chunk_len(&self, c: u64) -> u64 {
        self.chunk_size.min(self.capacity.load(Ordering::Relaxed) - c * self.chunk_size)
    }

    async fn load_chunk_list(&self) -> Result<(), String> {
        let prefix = self.url.key(CHUNKS_DIR);
        let keys = super::list_all(&*self.store, &prefix).await.map_err(|e| format!("cannot list {prefix}: {e}"))?;
        let chunks = self.capacity.load(Ordering::Relaxed).div_ceil(self.chunk_size);
        let mut cache = self.cache();
        for (key, size) in keys {
            match u64::from_str_radix(&key[prefix.len()..], 16) {
                Ok(c) if c < chunks && size == self.chunk_len(c) => {
                    cache.exists.insert(c);
                }
                _ => tracing::warn!(key, size, "unexpected object among the chunks: ignored"),
            }
        }
        tracing::info!(volume = %self.url, chunks = cache.exists.len(), "volume opened");
        Ok(())
    }

    // ---- lease ----

    fn now_unix_ms(&self) -> u64 {
        self.clock.wall().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
    }

    fn lease_body(&self, expires_unix_ms: u64) -> Bytes {
        let record = LeaseRecord { holder: self.opts.holder.clone(), expires_unix_ms };
        Bytes::from(serde_json::to_vec(&record).expect("lease serializes"))
    }

    async fn read_lease(&self) -> Result<Option<(LeaseRecord, Option<String>)>, String> {
        match self.store.get(&self.url.key(LEASE_NAME), None).await {
            Ok(out) => {
                let record = serde_json::from_slice(&out.body).map_err(|e| format!("unreadable lease: {e}"))?;
                Ok(Some((record, out.meta.etag)))
            }
            Err(ObjectError::NotFound) => Ok(None),
            Err(e) => Err(format!("cannot read the lease: {e}")),
        }
    }

    async fn acquire_lease(&self) -> Result<(), String> {
        let key = self.url.key(LEASE_NAME);
        let expires = self.now_unix_ms() + self.opts.lease_duration.as_millis() as u64;
        for _ in 0..5 {
            let (condition, previous) = match self.read_lease().await? {
                None => (Condition::IfNoneMatch, None),
                Some((record, etag)) => {
                    let expired = record.expires_unix_ms < self.now_unix_ms();
                    if record.holder != self.opts.holder && !expired && !self.opts.force {
                        let left = record.expires_unix_ms.saturating_sub(self.now_unix_ms()) / 1000;
                        return Err(format!(
                            "{} is in use by {} (its lease runs {left} s more); stop that target, or open with \
                             force = true / --force to take the volume over",
                            self.url, record.holder
                        ));
                    }
                    if record.holder != self.opts.holder && !expired {
                        tracing::warn!(volume = %self.url, holder = %record.holder, "taking the volume over by force");
                    }
                    match etag {
                        Some(e) => (Condition::IfMatch(e), Some(record)),
                        None => (Condition::None, Some(record)),
                    }
                }
            };
            match self.store.put(&key, self.lease_body(expires), BTreeMap::new(), condition).await {
                Ok(etag) => {
                    *self.lease_etag.lock().expect("poisoned") = etag;
                    if let Some(p) = previous {
                        tracing::info!(volume = %self.url, previous = %p.holder, "lease taken");
                    }
                    return Ok(());
                }
                // Someone changed it meanwhile, or our own uncertain attempt landed: look again.
                Err(ObjectError::PreconditionFailed) | Err(ObjectError::Indeterminate(_)) => continue,
                Err(e) => return Err(format!("cannot take the lease of {}: {e}", self.url)),
            }
        }
        Err(format!("cannot take the lease of {}: it keeps changing", self.url))
    }

    /// Renews the lease; on losing it to another holder, fences the volume.
    async fn renew_lease(&self) {
        if self.fenced.load(Ordering::Relaxed) {
            return;
        }
        let key = self.url.key(LEASE_NAME);
        let expires = self.now_unix_ms() + self.opts.lease_duration.as_millis() as u64;
        let etag = self.lease_etag.lock().expect("poisoned").clone();
        let condition = etag.map(Condition::IfMatch).unwrap_or(Condition::None);
        match self.store.put(&key, self.lease_body(expires), BTreeMap::new(), condition).await {
            Ok(etag) => *self.lease_etag.lock().expect("poisoned") = etag,
            Err(ObjectError::PreconditionFailed) | Err(ObjectError::Indeterminate(_)) => {
                // Ours if our uncertain renewal landed; someone else's otherwise.
                match self.read_lease().await {
                    Ok(Some((record, etag))) if record.holder == self.opts.holder => {
                        *self.lease_etag.lock().expect("poisoned") = etag;
                    }
                    Ok(other) => {
                        let holder = other.map(|(r, _)| r.holder).unwrap_or_else(|| "nobody".into());
                        tracing::error!(volume = %self.url, %holder, "lease lost: the volume is fenced, writes fail");
                        self.fenced.store(true, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(volume = %self.url, error = %e, "cannot check the lease"),
                }
            }
            Err(e) => tracing::warn!(volume = %self.url, error = %e, "lease renewal failed; will retry"),
        }
    }

    async fn release_lease(&self) {
        let etag = self.lease_etag.lock().expect("poisoned").clone();
        if self.fenced.load(Ordering::Relaxed) {
            return;
        }
        if let Some(etag) = etag {
            // An expired lease lets the next target in without waiting.
            let _ = self
                .store
                .put(&self.url.key(LEASE_NAME), self.lease_body(0), BTreeMap::new(), Condition::IfMatch(etag))
                .await;
        }
    }

    fn check_fenced(&self) -> StoreResult<()> {
        if self.fenced.load(Ordering::Relaxed) {
            return Err(StoreError::Write(format!("{}: lease lost to another target", self.url)));
        }
        Ok(())
    }

    // ---- claims: one mutation in flight per chunk ----

    /// Claims every chunk of `chunks` for a mutation, waiting for claims held by others.
    async fn claim(&self, chunks: &[u64]) -> Claim<'_> {
        loop {
            let released = self.released.notified();
            {
                let mut cache = self.cache();
                if chunks.iter().all(|c| !cache.inflight.contains(c)) {
                    cache.inflight.extend(chunks.iter().copied());
                    return Claim { volume: self, chunks: chunks.to_vec() };
                }
            }
            released.await;
        }
    }

    // ---- reads ----

    async fn read_impl(&self, offset: u64, len: usize) -> StoreResult<Bytes> {
        let mut out = BytesMut::zeroed(len);
        let bs = self.block_size;
        // (chunk, byte range within the chunk, position in `out`) still to fetch from S3.
        let mut fetches: Vec<(u64, u64, u64, usize)> = Vec::new();
        {
            let mut cache = self.cache();
            cache.tick += 1;
            let tick = cache.tick;
            let mut at = offset;
            let end = offset + len as u64;
            while at < end {
                let c = at / self.chunk_size;
                let within = at % self.chunk_size;
                let n = (self.chunk_size - within).min(end - at);
                let exists = cache.exists.contains(&c);
                let pos = (at - offset) as usize;
                match cache.entries.get_mut(&c) {
                    None if exists => fetches.push((c, within, within + n, pos)),
                    None => {}
                    Some(e) => {
                        e.last_used = tick;
                        // Runs of blocks: cached ones are copied, the others fetched or zero.
                        let mut b = within / bs;
                        let last = (within + n) / bs;
                        while b < last {
                            let valid = e.valid.get(b as usize);
                            let mut run_end = b + 1;
                            while run_end < last && e.valid.get(run_end as usize) == valid {
                                run_end += 1;
                            }
                            let (from, to) = (b * bs, run_end * bs);
                            let dst = pos + (from - within) as usize;
                            if valid {
                                if let Some(buf) = &e.buf {
                                    out[dst..dst + (to - from) as usize]
                                        .copy_from_slice(&buf[from as usize..to as usize]);
                                }
                            } else if exists {
                                fetches.push((c, from, to, dst));
                            }
                            b = run_end;
                        }
                    }
                }
                at += n;
            }
        }
        for (c, from, to, dst) in fetches {
            match self.fetch(c, from, to).await {
                Ok(data) => out[dst..dst + data.len()].copy_from_slice(&data),
                Err(ObjectError::NotFound) if !self.cache().exists.contains(&c) => {} // deleted meanwhile
                Err(ObjectError::NotFound) => {
                    return Err(StoreError::Read(format!("chunk {c} of {} is missing", self.url)));
                }
                Err(e) => return Err(store_err(e, false)),
            }
        }
        Ok(out.freeze())
    }

    /// Fetches `[from, to)` of chunk `c`, whole CRC segments at a time, and verifies them.
    async fn fetch(&self, c: u64, from: u64, to: u64) -> Result<Bytes, ObjectError> {
        let chunk_len = self.chunk_len(c);
        let seg_from = from / self.segment * self.segment;
        let seg_to = to.div_ceil(self.segment).saturating_mul(self.segment).min(chunk_len);
        let whole = seg_from == 0 && seg_to == chunk_len;
        let range = if whole { None } else { Some(seg_from..seg_to) };
        let out = self.store.get(&Self::chunk_key(&self.url, c), range).await?;
        let corrupt = |why: String| ObjectError::failed(format!("chunk {c} of {}: {why}", self.url));
        if out.body.len() as u64 != seg_to - seg_from {
            return Err(corrupt(format!("expected {} bytes, got {}", seg_to - seg_from, out.body.len())));
        }
        if out.meta.size != chunk_len {
            return Err(corrupt(format!("object is {} bytes, chunks are {chunk_len}", out.meta.size)));
        }
        let crcs = out
            .meta
            .metadata
            .get(CRC_METADATA)
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .ok_or_else(|| corrupt("missing or unreadable checksums".into()))?;
        let mut at = seg_from;
        while at < seg_to {
            let i = (at / self.segment) as usize;
            let n = self.segment.min(seg_to - at);
            let want = crcs.get(4 * i..4 * i + 4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")));
            let got = crc32c::crc32c(&out.body[(at - seg_from) as usize..(at - seg_from + n) as usize]);
            if want != Some(got) {
                return Err(corrupt(format!("checksum mismatch in segment {i}")));
            }
            at += n;
        }
        Ok(out.body.slice((from - seg_from) as usize..(to - seg_from) as usize))
    }

    // ---- writes ----

    async fn write_impl(&self, offset: u64, data: Bytes, fua: bool) -> StoreResult<()> {
        self.check_fenced()?;
        let end = offset + data.len() as u64;
        let first = offset / self.chunk_size;
        let last = (end - 1) / self.chunk_size;
        self.make_room(last - first + 1).await?;
        {
            let now = self.clock.now();
            let mut cache = self.cache();
            let mut at = offset;
            while at < end {
                let c = at / self.chunk_size;
                let within = at % self.chunk_size;
                let n = (self.chunk_size - within).min(end - at);
                let piece = &data[(at - offset) as usize..(at - offset + n) as usize];
                self.write_piece(&mut cache, c, within, piece, now);
                at += n;
            }
        }
        if fua {
            // FUA: this write and everything acknowledged before it are durable on return.
            return self.flush_all().await;
        }
        if !self.write_back.load(Ordering::Relaxed) {
            let chunks: Vec<u64> = (first..=last).collect();
            return self.flush_chunks(&chunks).await;
        }
        Ok(())
    }

    fn write_piece(&self, cache: &mut Cache, c: u64, within: u64, piece: &[u8], now: Duration) {
        let bs = self.block_size;
        let n = self.blocks_per_chunk();
        let (b0, b1) = ((within / bs) as usize, ((within + piece.len() as u64) / bs) as usize);
        let zeros = piece.iter().all(|&b| b == 0);
        let exists = cache.exists.contains(&c);
        if zeros && !exists && !cache.entries.contains_key(&c) {
            return; // zeros over a missing chunk change nothing
        }
        cache.tick += 1;
        let tick = cache.tick;
        let chunk_size = self.chunk_size as usize;
        let mut new_buffer = false;
        let e = cache.entries.entry(c).or_insert_with(Entry::empty);
        e.last_used = tick;
        // Generations come from the cache-wide tick, so a replaced entry never reuses one.
        e.generation = tick;
        if e.buf.is_none() && !zeros {
            e.buf = Some(vec![0u8; chunk_size].into_boxed_slice());
            new_buffer = true;
        }
        if let Some(buf) = &mut e.buf {
            buf[within as usize..within as usize + piece.len()].copy_from_slice(piece);
        }
        e.valid.set_range(b0, b1, n);
        // Zeros over zeros need no flush unless an object holds older data.
        if !zeros || exists || e.is_dirty() || e.buf.is_some() {
            e.dirty.set_range(b0, b1, n);
            e.dirty_since.get_or_insert(now);
        }
        if new_buffer {
            cache.buffer_bytes += self.chunk_size;
        }
    }

    /// Waits until `chunks` more buffers fit in the cache: evicts clean buffers, flushes the
    /// oldest dirty chunks under pressure.
    async fn make_room(&self, chunks: u64) -> StoreResult<()> {
        let need = chunks * self.chunk_size;
        loop {
            let released = self.released.notified();
            let to_flush = {
                let mut cache = self.cache();
                if cache.buffer_bytes + need <= self.cache_limit {
                    return Ok(());
                }
                self.evict_clean(&mut cache, need);
                if cache.buffer_bytes + need <= self.cache_limit || cache.buffer_bytes == 0 {
                    return Ok(());
                }
                let mut dirty: Vec<(Duration, u64)> = cache
                    .entries
                    .iter()
                    .filter(|(c, e)| e.is_dirty() && e.buf.is_some() && !cache.inflight.contains(c))
                    .map(|(c, e)| (e.dirty_since.unwrap_or_default(), *c))
                    .collect();
                dirty.sort();
                dirty.into_iter().take(FLUSH_PARALLEL).map(|(_, c)| c).collect::<Vec<u64>>()
            };
            if to_flush.is_empty() {
                released.await; // everything is being flushed already
            } else if let Err(e) = self.flush_chunks(&to_flush).await {
                self.note_background_error(&e);
                return Err(e);
            }
        }
    }

    /// Drops clean, unclaimed buffers, least recently used first, until `need` fits.
    fn evict_clean(&self, cache: &mut Cache, need: u64) {
        let mut clean: Vec<(u64, u64)> = cache
            .entries
            .iter()
            .filter(|(c, e)| !e.is_dirty() && !cache.inflight.contains(c))
            .map(|(c, e)| (e.last_used, *c))
            .collect();
        clean.sort();
        for (_, c) in clean {
            if cache.buffer_bytes + need <= self.cache_limit {
                break;
            }
            if let Some(e) = cache.entries.remove(&c)
                && e.buf.is_some()
            {
                cache.buffer_bytes -= self.chunk_size;
            }
        }
    }

    // ---- flushing ----

    /// Makes chunk `c` durable: one PUT of the whole chunk, or a DELETE if it is all zeros.
    async fn flush_chunk(&self, c: u64) -> StoreResult<()> {
        let _claim = self.claim(&[c]).await;
        self.check_fenced()?;
        let started = self.clock.now();
        let snapshot = {
            let cache = self.cache();
            match cache.entries.get(&c) {
                Some(e) if e.is_dirty() => {
                    Some((e.generation, e.buf.clone(), e.valid.clone(), cache.exists.contains(&c)))
                }
                _ => None,
            }
        };
        let Some((generation, buf, valid, exists)) = snapshot else { return Ok(()) };
        let chunk_len = self.chunk_len(c) as usize;
        let n = (chunk_len as u64 / self.block_size) as usize;
        // Compose the whole chunk: cached blocks, the rest from the object (or zeros).
        let mut full = match buf {
            Some(b) => b.into_vec(),
            None => vec![0u8; chunk_len],
        };
        full.truncate(chunk_len);
        if valid.count(n) < n {
            if exists {
                let old = match self.fetch(c, 0, chunk_len as u64).await {
                    Ok(old) => old,
                    Err(e) => return Err(self.flush_failed(c, store_err(e, true))),
                };
                let bs = self.block_size as usize;
                for b in (0..n).filter(|&b| !valid.get(b)) {
                    full[b * bs..(b + 1) * bs].copy_from_slice(&old[b * bs..(b + 1) * bs]);
                }
            }
            self.install(c, &full);
        }
        let zero = full.iter().all(|&b| b == 0);
        let key = Self::chunk_key(&self.url, c);
        let result = if zero {
            if exists { self.store.delete(&key).await } else { Ok(()) }
        } else {
            let metadata = BTreeMap::from([(CRC_METADATA.to_string(), self.checksums(&full))]);
            self.store.put(&key, Bytes::from(full), metadata, Condition::None).await.map(|_| ())
        };
        let elapsed = self.clock.now().saturating_sub(started);
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        self.stats.flush_micros_total.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        self.stats.flush_micros_max.fetch_max(elapsed.as_micros() as u64, Ordering::Relaxed);
        match result {
            Ok(()) => {
                let mut cache = self.cache();
                if zero {
                    cache.exists.remove(&c);
                    if exists {
                        self.stats.chunks_deleted.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    cache.exists.insert(c);
                }
                self.mark_clean(&mut cache, c, generation);
                Ok(())
            }
            Err(e) => {
                if matches!(e, ObjectError::Indeterminate(_)) {
                    self.cache().exists.insert(c); // the PUT (or a failed DELETE) may have landed
                }
                Err(self.flush_failed(c, store_err(e, true)))
            }
        }
    }

    /// Fills the blocks a cache entry does not hold with a freshly composed chunk, so that
    /// reads never depend on an object while its replacement is in flight.
    fn install(&self, c: u64, full: &[u8]) {
        let mut cache = self.cache();
        let bs = self.block_size as usize;
        let mut new_buffer = false;
        if let Some(e) = cache.entries.get_mut(&c) {
            if e.valid.is_full() {
                return;
            }
            let buf = e.buf.get_or_insert_with(|| {
                new_buffer = true;
                vec![0u8; self.chunk_size as usize].into_boxed_slice()
            });
            for b in (0..full.len() / bs).filter(|&b| !e.valid.get(b)) {
                buf[b * bs..(b + 1) * bs].copy_from_slice(&full[b * bs..(b + 1) * bs]);
            }
            e.valid = Bits::Full;
        }
        if new_buffer {
            cache.buffer_bytes += self.chunk_size;
        }
    }

    fn mark_clean(&self, cache: &mut Cache, c: u64, generation: u64) {
        if let Some(e) = cache.entries.get_mut(&c)
            && e.generation == generation
        {
            e.dirty = Bits::Empty;
            e.dirty_since = None;
            if e.buf.is_none() {
                cache.entries.remove(&c); // a zero chunk needs no entry
            }
        }
    }

    fn flush_failed(&self, c: u64, e: StoreError) -> StoreError {
        self.stats.flush_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(volume = %self.url, chunk = c, error = %e, "flush failed; the data stays dirty");
        e
    }

    fn note_background_error(&self, e: &StoreError) {
        self.sticky_error.lock().expect("poisoned").get_or_insert_with(|| e.to_string());
    }

    /// Base64 of the big-endian CRC32C of each segment.
    fn checksums(&self, chunk: &[u8]) -> String {
        let mut crcs = Vec::with_capacity(4 * SEGMENTS_MAX as usize);
        for seg in chunk.chunks(self.segment as usize) {
            crcs.extend_from_slice(&crc32c::crc32c(seg).to_be_bytes());
        }
        base64::engine::general_purpose::STANDARD.encode(crcs)
    }

    async fn flush_chunks(&self, chunks: &[u64]) -> StoreResult<()> {
        let mut first_error = None;
        for group in chunks.chunks(FLUSH_PARALLEL) {
            let results = futures::future::join_all(group.iter().map(|&c| self.flush_chunk(c))).await;
            for r in results {
                if let Err(e) = r {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn dirty_chunks(&self) -> Vec<u64> {
        self.cache().entries.iter().filter(|(_, e)| e.is_dirty()).map(|(c, _)| *c).collect()
    }

    /// SYNCHRONIZE CACHE: every write acknowledged before the call is durable on success.
    /// A background flush failure since the last call is reported here, once.
    async fn flush_all(&self) -> StoreResult<()> {
        self.check_fenced()?;
        let result = self.flush_chunks(&self.dirty_chunks()).await;
        let sticky = self.sticky_error.lock().expect("poisoned").take();
        result?;
        match sticky {
            Some(e) => Err(StoreError::Write(format!("an earlier background flush failed: {e}"))),
            None => Ok(()),
        }
    }

    /// Flushes what is old enough, or the oldest under pressure; errors become sticky.
    async fn background_flush(&self) {
        let now = self.clock.now();
        let high_water = self.cache_limit / 2;
        let due: Vec<u64> = {
            let cache = self.cache();
            let mut dirty: Vec<(Duration, u64)> = cache
                .entries
                .iter()
                .filter(|(_, e)| e.is_dirty())
                .map(|(c, e)| (e.dirty_since.unwrap_or_default(), *c))
                .collect();
            dirty.sort();
            let pressured = cache.buffer_bytes > high_water;
            dirty
                .into_iter()
                .enumerate()
                .filter(|(i, (since, _))| {
                    now.saturating_sub(*since) >= self.opts.flush_age || (pressured && *i < FLUSH_PARALLEL)
                })
                .map(|(_, (_, c))| c)
                .collect()
        };
        if !due.is_empty()
            && let Err(e) = self.flush_chunks(&due).await
        {
            self.note_background_error(&e);
        }
    }

    // ---- unmap ----

    async fn unmap_impl(&self, offset: u64, len: u64) -> StoreResult<()> {
        self.check_fenced()?;
        let end = offset + len;
        let first_full = offset.div_ceil(self.chunk_size);
        let last_full = end / self.chunk_size; // exclusive
        // Partial chunks at either end: zeros through the write path.
        let head_end = (first_full * self.chunk_size).min(end);
        if head_end > offset {
            self.write_impl(offset, Bytes::from(vec![0u8; (head_end - offset) as usize]), false).await?;
        }
        let tail_start = (last_full * self.chunk_size).max(head_end);
        if end > tail_start && last_full >= first_full {
            self.write_impl(tail_start, Bytes::from(vec![0u8; (end - tail_start) as usize]), false).await?;
        }
        if last_full <= first_full {
            return Ok(());
        }
        // Whole chunks: mark them zero; those with objects are deleted in batches.
        let to_delete: Vec<u64> = {
            let now = self.clock.now();
            let mut cache = self.cache();
            let cached: Vec<u64> = cache.entries.range(first_full..last_full).map(|(c, _)| *c).collect();
            for c in cached {
                let e = cache.entries.remove(&c).expect("listed");
                if e.buf.is_some() {
                    cache.buffer_bytes -= self.chunk_size;
                }
            }
            // Chunks that have (or may get, from a mutation in flight) an object get a zero
            // entry; their DELETE then goes through the claim like any other mutation.
            let mut existing: BTreeSet<u64> = cache.exists.range(first_full..last_full).copied().collect();
            existing.extend(cache.inflight.range(first_full..last_full).copied());
            let existing: Vec<u64> = existing.into_iter().collect();
            for &c in &existing {
                let generation = cache.tick + 1;
                cache.tick = generation;
                cache.entries.insert(
                    c,
                    Entry {
                        buf: None,
                        valid: Bits::Full,
                        dirty: Bits::Full,
                        generation,
                        dirty_since: Some(now),
                        last_used: generation,
                    },
                );
            }
            existing
        };
        self.released.notify_waiters();
        let batches: Vec<&[u64]> = to_delete.chunks(DELETE_BATCH).collect();
        let results = futures::future::join_all(batches.into_iter().map(|b| self.delete_batch(b))).await;
        results.into_iter().collect::<StoreResult<Vec<()>>>().map(|_| ())
    }

    /// Deletes zeroed chunks with one DeleteObjects request.
    async fn delete_batch(&self, chunks: &[u64]) -> StoreResult<()> {
        let _claim = self.claim(chunks).await;
        self.check_fenced()?;
        // Only chunks still zero and dirty (no write came in since) are deleted.
        let targets: Vec<(u64, u64)> = {
            let cache = self.cache();
            chunks
                .iter()
                .filter_map(|c| {
                    let e = cache.entries.get(c)?;
                    (e.buf.is_none() && e.valid.is_full() && e.is_dirty()).then_some((*c, e.generation))
                })
                .collect()
        };
        // Chunks without an object (a PUT in flight failed determinately) need no DELETE.
        let targets: Vec<(u64, u64)> = {
            let mut cache = self.cache();
            let (present, absent): (Vec<_>, Vec<_>) = targets.into_iter().partition(|(c, _)| cache.exists.contains(c));
            for (c, generation) in absent {
                self.mark_clean(&mut cache, c, generation);
            }
            present
        };
        if targets.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = targets.iter().map(|(c, _)| Self::chunk_key(&self.url, *c)).collect();
        let results = self.store.delete_many(keys).await.map_err(|e| store_err(e, true))?;
        let mut cache = self.cache();
        let mut failure = None;
        for ((c, generation), (_, r)) in targets.into_iter().zip(results) {
            match r {
                Ok(()) => {
                    cache.exists.remove(&c);
                    self.stats.chunks_deleted.fetch_add(1, Ordering::Relaxed);
                    self.mark_clean(&mut cache, c, generation);
                }
                Err(e) => failure = Some(store_err(e, true)),
            }
        }
        failure.map_or(Ok(()), Err)
    }

    fn mapped(&self, cache: &Cache, c: u64) -> bool {
        match cache.entries.get(&c) {
            Some(e) if e.buf.is_none() && e.valid.is_full() => false,
            Some(e) if e.buf.is_some() && e.is_dirty() => true,
            _ => cache.exists.contains(&c),
        }
    }

    /// Dirty bytes in the cache (dirty blocks times the block size).
    pub fn dirty_bytes(&self) -> u64 {
        let n = self.blocks_per_chunk();
        self.cache().entries.values().map(|e| e.dirty.count(n) as u64 * self.block_size).sum()
    }

    /// Chunk objects known to exist.
    pub fn chunk_count(&self) -> usize {
        self.cache().exists.len()
    }

    /// Stops all object store traffic at once, as if the process died (model checks): the
    /// cache is abandoned and nothing more is written.
    #[doc(hidden)]
    pub fn simulate_crash(&self) {
        self.fenced.store(true, Ordering::Relaxed);
    }

    /// Flushes everything and releases the lease (clean shutdown).
    pub async fn close(&self) -> StoreResult<()> {
        let result = self.flush_all().await;
        if result.is_ok() {
            self.release_lease().await;
        }
        result
    }
}

/// A claim on chunks for a mutation; released on drop.
struct Claim<'a> {
    volume: &'a S3Volume,
    chunks: Vec<u64>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut cache = self.volume.cache();
        for c in &self.chunks {
            cache.inflight.remove(c);
        }
        drop(cache);
        self.volume.released.notify_waiters();
    }
}

/// Background work of an open volume: age and pressure flushes, lease renewal. Ends when the
/// volume is dropped.
async fn background(volume: Weak<S3Volume>) {
    let (interval, renew_every) = match volume.upgrade() {
        Some(v) => (v.opts.flush_interval, v.opts.lease_duration / 3),
        None => return,
    };
    let mut since_renewal = Duration::ZERO;
    loop {
        tokio::time::sleep(interval).await;
        let Some(v) = volume.upgrade() else { return };
        v.background_flush().await;
        since_renewal += interval;
        if since_renewal >= renew_every {
            since_renewal = Duration::ZERO;
            v.renew_lease().await;
        }
    }
}

impl BlockStore for S3Volume {
    fn describe(&self) -> String {
        format!("s3:{} ({} chunks of {} bytes)", self.url, self.chunk_count(), self.chunk_size)
    }

    fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Relaxed)
    }

    fn caps(&self) -> StoreCaps {
        StoreCaps {
            thin: true,
            volatile_cache: true,
            unmap_granularity: self.chunk_size,
            optimal_transfer: self.chunk_size,
        }
    }

    fn read(&self, offset: u64, len: usize) -> BoxFuture<'_, StoreResult<Bytes>> {
        Box::pin(self.read_impl(offset, len))
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.write_impl(offset, data, fua))
    }

    fn flush(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.flush_all())
    }

    fn unmap(&self, offset: u64, len: u64) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.unmap_impl(offset, len))
    }

    fn mapped_extents(&self, offset: u64, len: u64) -> BoxFuture<'_, StoreResult<Vec<Extent>>> {
        let mut out: Vec<Extent> = Vec::new();
        {
            let cache = self.cache();
            let mut at = offset;
            let end = offset + len;
            while at < end {
                let c = at / self.chunk_size;
                let n = (self.chunk_size - at % self.chunk_size).min(end - at);
                let mapped = self.mapped(&cache, c);
                match out.last_mut() {
                    Some(last) if last.mapped == mapped => last.len += n,
                    _ => out.push(Extent { offset: at, len: n, mapped }),
                }
                at += n;
            }
        }
        Box::pin(async move { Ok(out) })
    }

    fn resize(&self, capacity: u64) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            self.check_fenced()?;
            let (mut meta, etag) = self.meta.lock().expect("poisoned").clone();
            if capacity < meta.size {
                return Err(StoreError::Write("shrinking would lose data".into()));
            }
            meta.size = capacity;
            let body = Bytes::from(serde_json::to_vec_pretty(&meta).expect("metadata serializes"));
            let condition = etag.map(Condition::IfMatch).unwrap_or(Condition::None);
            let etag = self
                .store
                .put(&self.url.key(META_NAME), body, BTreeMap::new(), condition)
                .await
                .map_err(|e| store_err(e, true))?;
            *self.meta.lock().expect("poisoned") = (meta, etag);
            self.capacity.store(capacity, Ordering::Relaxed);
            Ok(())
        })
    }

    fn set_write_cache(&self, enabled: bool) {
        self.write_back.store(enabled, Ordering::Relaxed);
    }

    fn stats(&self) -> serde_json::Value {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let flushes = l(&self.stats.flushes);
        serde_json::json!({
            "volume": self.url.to_string(),
            "chunks": self.chunk_count(),
            "dirty_bytes": self.dirty_bytes(),
            "cache_bytes": self.cache().buffer_bytes,
            "flushes": flushes,
            "flush_errors": l(&self.stats.flush_errors),
            "flush_latency_avg_us": l(&self.stats.flush_micros_total).checked_div(flushes).unwrap_or(0),
            "flush_latency_max_us": l(&self.stats.flush_micros_max),
            "chunks_deleted": l(&self.stats.chunks_deleted),
            "s3": self.s3_stats.as_ref().map(|s| s.snapshot()),
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.close())
    }
}

#[cfg(test)]
mod tests;
