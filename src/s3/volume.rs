//! A sparse block volume on object storage: fixed-size chunk objects under a prefix, a
//! versioned metadata object, a single-writer lease, a write-back cache, and a log that makes
//! small writes durable without rewriting whole chunks.
//!
//! Layout under `s3://bucket/prefix/`:
//! * `rtgt-volume.json`: format version, geometry, uuid, creation time, and the open epoch;
//!   created with `If-None-Match: *`.
//! * `rtgt-lease.json`: who may write, until when; taken and renewed with conditional PUTs.
//! * `chunks/<index, 16 hex digits>`: one object per chunk holding non-zero data, with the
//!   CRC32C of each segment and the log sequence number it includes in its metadata. A missing
//!   chunk reads as zeros.
//! * `log/<seq, 16 hex digits>`: records of writes and zeroed ranges made durable by a
//!   SYNCHRONIZE CACHE (or FUA, or age) before their chunks are rewritten ("merged").
//!
//! Durability: a write is durable once it is in a log object or in its chunk object. Merging
//! rewrites a chunk with everything the cache holds for it and stamps the chunk with the
//! highest sequence number assigned so far; logs are deleted oldest first, only once every
//! chunk they touch is merged (or deleted after a zero record), so whatever logs remain after
//! a crash are a suffix, and replaying their records newer than each chunk's stamp restores
//! every durable write. Every mutation of a chunk object happens with the chunk claimed, so at
//! most one is in flight per key.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
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
const LOG_DIR: &str = "log/";
const CRC_METADATA: &str = "rtgt-crc32c";
const SEQ_METADATA: &str = "rtgt-seq";
const LOG_MAGIC: &[u8; 8] = b"RTGTLOG1";
/// Most CRC segments per chunk (their CRCs travel in object metadata, limited to 2 KiB).
const SEGMENTS_MAX: u64 = 64;
/// Keys per DeleteObjects request (the S3 limit).
const DELETE_BATCH: usize = 1000;
/// Chunk merges run in parallel at most this many at a time.
const MERGE_PARALLEL: usize = 32;
/// Cache allocation unit.
const PAGE: usize = 4096;
/// Largest log object; bigger syncs write several.
const LOG_BYTES_MAX: usize = 32 << 20;
/// Sequence numbers are `epoch << EPOCH_SHIFT | counter`.
const EPOCH_SHIFT: u32 = 40;

/// The metadata object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMeta {
    pub format_version: u32,
    pub size: u64,
    pub block_size: u32,
    pub chunk_size: u64,
    pub uuid: String,
    pub created_unix_secs: u64,
    /// Bumped at every open, so that log sequence numbers only ever grow.
    #[serde(default)]
    pub epoch: u64,
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
    /// Bytes of cache pages the volume may hold.
    pub cache_bytes: u64,
    /// Data written without a SYNCHRONIZE CACHE becomes durable after at most this long.
    pub flush_age: Duration,
    /// Logged data is merged into its chunks after at most this long.
    pub merge_age: Duration,
    /// Bytes of logs kept before the chunks they touch are merged.
    pub log_bytes_max: u64,
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
            merge_age: Duration::from_secs(60),
            log_bytes_max: 256 << 20,
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
        if let Bits::Empty = self {
            *self = Bits::Some(vec![0; n.div_ceil(64)]);
        }
        let Bits::Some(words) = self else { return };
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

    /// Maximal runs `[start, end)` of set bits below `n`.
    fn runs(&self, n: usize) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < n {
            if !self.get(i) {
                i += 1;
                continue;
            }
            let start = i;
            while i < n && self.get(i) {
                i += 1;
            }
            out.push((start, i));
        }
        out
    }
}

// ---------------------------------------------------------------- cache

/// Cached state of one chunk. Valid blocks whose page is absent are zeros.
#[derive(Debug)]
struct Entry {
    pages: BTreeMap<u32, Box<[u8]>>,
    /// Blocks whose current contents the entry holds.
    valid: Bits,
    /// Blocks newer than the chunk object.
    unmerged: Bits,
    /// Blocks not yet durable anywhere (a subset of `unmerged`).
    unlogged: Bits,
    /// The cache tick of the last change: a flush clears bits only if nothing changed since.
    generation: u64,
    unmerged_since: Option<Duration>,
    unlogged_since: Option<Duration>,
    last_used: u64,
}

impl Entry {
    fn empty() -> Entry {
        Entry {
            pages: BTreeMap::new(),
            valid: Bits::Empty,
            unmerged: Bits::Empty,
            unlogged: Bits::Empty,
            generation: 0,
            unmerged_since: None,
            unlogged_since: None,
            last_used: 0,
        }
    }

    fn is_clean(&self) -> bool {
        self.unmerged.is_empty()
    }

    /// Copies `len` bytes at `at` (within the chunk) out of the pages; absent pages are zeros.
    fn copy_out(&self, at: usize, out: &mut [u8]) {
        let mut pos = 0;
        while pos < out.len() {
            let page = (at + pos) / PAGE;
            let within = (at + pos) % PAGE;
            let n = (PAGE - within).min(out.len() - pos);
            match self.pages.get(&(page as u32)) {
                Some(p) => out[pos..pos + n].copy_from_slice(&p[within..within + n]),
                None => out[pos..pos + n].fill(0),
            }
            pos += n;
        }
    }

    /// Copies `data` in at `at`; returns the number of pages allocated.
    fn copy_in(&mut self, at: usize, data: &[u8]) -> usize {
        let mut allocated = 0;
        let mut pos = 0;
        while pos < data.len() {
            let page = ((at + pos) / PAGE) as u32;
            let within = (at + pos) % PAGE;
            let n = (PAGE - within).min(data.len() - pos);
            let src = &data[pos..pos + n];
            match self.pages.get_mut(&page) {
                Some(p) => p[within..within + n].copy_from_slice(src),
                None if src.iter().all(|&b| b == 0) => {} // zeros stay unallocated
                None => {
                    let mut p = vec![0u8; PAGE].into_boxed_slice();
                    p[within..within + n].copy_from_slice(src);
                    self.pages.insert(page, p);
                    allocated += 1;
                }
            }
            pos += n;
        }
        allocated
    }
}

/// What the volume knows about a log object.
#[derive(Debug, Default)]
struct LogInfo {
    /// Chunks with records in it that are not merged (or deleted) since.
    unsettled: BTreeSet<u64>,
    bytes: u64,
    /// Its PUT is in flight. Registered before the PUT, so that a merge finishing first
    /// still settles it.
    pending: bool,
}

#[derive(Debug, Default)]
struct Cache {
    entries: BTreeMap<u64, Entry>,
    /// Chunks whose object exists, or may exist after an uncertain request.
    exists: BTreeSet<u64>,
    /// Chunks with a mutation (PUT, DELETE) in flight.
    inflight: BTreeSet<u64>,
    /// Logs written and not yet deleted, by sequence number.
    logs: BTreeMap<u64, LogInfo>,
    /// Bytes of cache pages held.
    page_bytes: u64,
    tick: u64,
}

/// Counters of the volume itself (the object store keeps request counters).
#[derive(Debug, Default)]
pub struct VolumeStats {
    pub merges: AtomicU64,
    pub logs_written: AtomicU64,
    pub log_bytes: AtomicU64,
    pub flush_errors: AtomicU64,
    pub flush_micros_total: AtomicU64,
    pub flush_micros_max: AtomicU64,
    pub flushes: AtomicU64,
    pub chunks_deleted: AtomicU64,
}

/// The single-writer lease object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LeaseRecord {
    holder: String,
    expires_unix_ms: u64,
}

/// One record of a log object.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Record {
    Data { offset: u64, data: Bytes },
    Zero { offset: u64, len: u64 },
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
    /// Woken when a claim is released or pages are freed.
    released: Notify,
    /// Log writes happen one at a time, in sequence order.
    log_lock: tokio::sync::Mutex<()>,
    next_seq: AtomicU64,
    cache_limit: u64,
    write_back: AtomicBool,
    /// A background flush failed: reported by the next SYNCHRONIZE CACHE.
    sticky_error: Mutex<Option<String>>,
    /// The lease was lost to another holder (or the process "crashed"): no more writes.
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

    fn log_key(&self, seq: u64) -> String {
        self.url.key(&format!("{LOG_DIR}{seq:016x}"))
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
            epoch: 0,
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
    /// bumps the epoch, lists its chunks, replays its logs, and starts the background work.
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
            log_lock: tokio::sync::Mutex::new(()),
            next_seq: AtomicU64::new(1),
            cache_limit: opts.cache_bytes.max(64 * PAGE as u64),
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
        volume.bump_epoch().await?;
        volume.load_chunk_list().await?;
        volume.recover().await?;
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

    /// The highest sequence number assigned so far: a chunk merged now includes every log up
    /// to it.
    fn current_seq(&self) -> u64 {
        self.next_seq.load(Ordering::SeqCst) - 1
    }

    /// Writes the metadata back with the epoch bumped; sequence numbers start above it.
    async fn bump_epoch(&self) -> Result<(), String> {
        let (mut meta, etag) = self.meta.lock().expect("poisoned").clone();
        meta.epoch += 1;
        let body = Bytes::from(serde_json::to_vec_pretty(&meta).expect("metadata serializes"));
        let condition = etag.map(Condition::IfMatch).unwrap_or(Condition::None);
        let etag = match self.store.put(&self.url.key(META_NAME), body, BTreeMap::new(), condition).await {
            Ok(etag) => etag,
            // Our uncertain attempt may have landed: read back.
            Err(ObjectError::Indeterminate(_)) | Err(ObjectError::PreconditionFailed) => {
                let (found, etag) = S3Volume::read_meta(&*self.store, &self.url)
                    .await?
                    .ok_or_else(|| format!("{} vanished", self.url))?;
                if found.epoch < meta.epoch {
                    return Err(format!("cannot update the metadata of {}: it changed meanwhile", self.url));
                }
                meta = found;
                etag
            }
            Err(e) => return Err(format!("cannot update the metadata of {}: {e}", self.url)),
        };
        self.next_seq.store((meta.epoch << EPOCH_SHIFT) + 1, Ordering::SeqCst);
        *self.meta.lock().expect("poisoned") = (meta, etag);
        Ok(())
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

    // ---- recovery ----

    /// Replays the logs left by a crash: records newer than their chunk's stamp go into the
    /// cache, every touched chunk is merged, and the logs are deleted.
    async fn recover(&self) -> Result<(), String> {
        let prefix = self.url.key(LOG_DIR);
        let mut logs: Vec<(u64, String)> = super::list_all(&*self.store, &prefix)
            .await
            .map_err(|e| format!("cannot list {prefix}: {e}"))?
            .into_iter()
            .filter_map(|(k, _)| Some((u64::from_str_radix(&k[prefix.len()..], 16).ok()?, k)))
            .collect();
        if logs.is_empty() {
            return Ok(());
        }
        logs.sort();
        tracing::info!(volume = %self.url, logs = logs.len(), "replaying the log");
        let mut stamps: BTreeMap<u64, u64> = BTreeMap::new();
        let now = self.clock.now();
        for (seq, key) in &logs {
            let out = self.store.get(key, None).await.map_err(|e| format!("cannot read {key}: {e}"))?;
            let records = parse_log(&out.body, out.meta.metadata.get(CRC_METADATA))
                .map_err(|e| format!("{key} is damaged: {e}; refusing to open the volume"))?;
            for record in records {
                let (offset, len) = match &record {
                    Record::Data { offset, data } => (*offset, data.len() as u64),
                    Record::Zero { offset, len } => (*offset, *len),
                };
                if offset + len > self.capacity.load(Ordering::Relaxed) {
                    return Err(format!("{key} writes beyond the end of the volume"));
                }
                let mut at = offset;
                while at < offset + len {
                    let c = at / self.chunk_size;
                    let n = (self.chunk_size - at % self.chunk_size).min(offset + len - at);
                    let stamp = match stamps.get(&c) {
                        Some(s) => *s,
                        None => {
                            let s = self.chunk_stamp(c).await?;
                            stamps.insert(c, s);
                            s
                        }
                    };
                    if *seq > stamp {
                        let piece = match &record {
                            Record::Data { data, .. } => data.slice((at - offset) as usize..(at - offset + n) as usize),
                            Record::Zero { .. } => Bytes::from(vec![0u8; n as usize]),
                        };
                        let mut cache = self.cache();
                        self.write_piece(&mut cache, c, at % self.chunk_size, &piece, now, false);
                    }
                    at += n;
                }
            }
        }
        let touched: Vec<u64> = stamps.keys().copied().collect();
        self.merge_chunks(&touched).await.map_err(|e| format!("cannot merge the replayed log: {e}"))?;
        for (_, key) in &logs {
            self.store.delete(key).await.map_err(|e| format!("cannot delete {key}: {e}"))?;
        }
        tracing::info!(volume = %self.url, chunks = touched.len(), "log replayed");
        Ok(())
    }

    /// The log sequence number a chunk object includes (0 when it does not exist).
    async fn chunk_stamp(&self, c: u64) -> Result<u64, String> {
        if !self.cache().exists.contains(&c) {
            return Ok(0);
        }
        match self.store.head(&Self::chunk_key(&self.url, c)).await {
            Ok(meta) => Ok(meta.metadata.get(SEQ_METADATA).and_then(|s| s.parse().ok()).unwrap_or(0)),
            Err(ObjectError::NotFound) => Ok(0),
            Err(e) => Err(format!("cannot read chunk {c}: {e}")),
        }
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
            let key = self.url.key(LEASE_NAME);
            let _ = self.store.put(&key, self.lease_body(0), BTreeMap::new(), Condition::IfMatch(etag)).await;
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
                                e.copy_out(from as usize, &mut out[dst..dst + (to - from) as usize]);
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
        self.make_room(data.len() as u64).await?;
        {
            let now = self.clock.now();
            let mut cache = self.cache();
            let mut at = offset;
            while at < end {
                let c = at / self.chunk_size;
                let within = at % self.chunk_size;
                let n = (self.chunk_size - within).min(end - at);
                let piece = &data[(at - offset) as usize..(at - offset + n) as usize];
                if crate::mutants::active(crate::mutants::Mutant::ChunkOffByOne)
                    && within + n == self.chunk_size
                    && (c + 1) * self.chunk_size < self.capacity()
                {
                    // Planted bug: the chunk's last block lands at the end of the next chunk.
                    let bs = self.block_size as usize;
                    self.write_piece(&mut cache, c, within, &piece[..piece.len() - bs], now, true);
                    self.write_piece(&mut cache, c + 1, within + n - bs as u64, &piece[piece.len() - bs..], now, true);
                } else {
                    self.write_piece(&mut cache, c, within, piece, now, true);
                }
                at += n;
            }
        }
        if fua || !self.write_back.load(Ordering::Relaxed) {
            // FUA (and write-through): this write and every one acknowledged before it are
            // durable on return.
            return self.flush_all().await;
        }
        Ok(())
    }

    /// Applies a write to the cache. `unlogged`: the data is not durable yet (false when
    /// replaying a log, whose records are).
    fn write_piece(&self, cache: &mut Cache, c: u64, within: u64, piece: &[u8], now: Duration, unlogged: bool) {
        let bs = self.block_size;
        let n = self.blocks_per_chunk();
        let (b0, b1) = ((within / bs) as usize, ((within + piece.len() as u64) / bs) as usize);
        let zeros = piece.iter().all(|&b| b == 0);
        if zeros && !cache.exists.contains(&c) && !cache.entries.contains_key(&c) {
            return; // zeros over a missing chunk change nothing
        }
        cache.tick += 1;
        let tick = cache.tick;
        let e = cache.entries.entry(c).or_insert_with(Entry::empty);
        e.last_used = tick;
        // Generations come from the cache-wide tick, so a replaced entry never reuses one.
        e.generation = tick;
        let allocated = e.copy_in(within as usize, piece);
        e.valid.set_range(b0, b1, n);
        e.unmerged.set_range(b0, b1, n);
        e.unmerged_since.get_or_insert(now);
        if unlogged {
            e.unlogged.set_range(b0, b1, n);
            e.unlogged_since.get_or_insert(now);
        }
        cache.page_bytes += (allocated * PAGE) as u64;
    }

    /// Waits until `bytes` more fit in the cache: evicts clean entries, merges the oldest
    /// unmerged chunks under pressure.
    async fn make_room(&self, bytes: u64) -> StoreResult<()> {
        loop {
            let released = self.released.notified();
            let to_merge = {
                let mut cache = self.cache();
                if cache.page_bytes + bytes <= self.cache_limit {
                    return Ok(());
                }
                self.evict_clean(&mut cache, bytes);
                if cache.page_bytes + bytes <= self.cache_limit || cache.page_bytes == 0 {
                    return Ok(());
                }
                let mut unmerged: Vec<(Duration, u64)> = cache
                    .entries
                    .iter()
                    .filter(|(c, e)| !e.is_clean() && !e.pages.is_empty() && !cache.inflight.contains(c))
                    .map(|(c, e)| (e.unmerged_since.unwrap_or_default(), *c))
                    .collect();
                unmerged.sort();
                unmerged.into_iter().take(MERGE_PARALLEL).map(|(_, c)| c).collect::<Vec<u64>>()
            };
            if to_merge.is_empty() {
                released.await; // everything is being merged already
            } else if let Err(e) = self.merge_chunks(&to_merge).await {
                self.note_background_error(&e);
                return Err(e);
            }
        }
    }

    /// Drops clean, unclaimed entries, least recently used first, until `need` fits.
    fn evict_clean(&self, cache: &mut Cache, need: u64) {
        let mut clean: Vec<(u64, u64)> = cache
            .entries
            .iter()
            .filter(|(c, e)| e.is_clean() && !cache.inflight.contains(c))
            .map(|(c, e)| (e.last_used, *c))
            .collect();
        clean.sort();
        for (_, c) in clean {
            if cache.page_bytes + need <= self.cache_limit {
                break;
            }
            if let Some(e) = cache.entries.remove(&c) {
                cache.page_bytes -= (e.pages.len() * PAGE) as u64;
            }
        }
    }

    // ---- logging ----

    /// Makes every unlogged block durable: chunks mostly unlogged are merged (a whole-chunk
    /// PUT costs no more than logging them), the rest go into log objects.
    async fn log_unlogged(&self) -> StoreResult<()> {
        let n = self.blocks_per_chunk();
        let (to_merge, to_log): (Vec<u64>, Vec<u64>) = {
            let cache = self.cache();
            let unlogged: Vec<(u64, usize)> = cache
                .entries
                .iter()
                .filter(|(_, e)| !e.unlogged.is_empty())
                .map(|(c, e)| (*c, e.unlogged.count(n)))
                .collect();
            let (merge, log): (Vec<_>, Vec<_>) = unlogged.into_iter().partition(|(_, count)| 2 * count >= n);
            (merge.into_iter().map(|(c, _)| c).collect(), log.into_iter().map(|(c, _)| c).collect())
        };
        let (merged, logged) = tokio::join!(self.merge_chunks(&to_merge), self.log_chunks(&to_log));
        merged.and(logged)
    }

    /// Writes the unlogged blocks of `chunks` into log objects.
    async fn log_chunks(&self, chunks: &[u64]) -> StoreResult<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        let _serial = self.log_lock.lock().await;
        self.check_fenced()?;
        let bs = self.block_size;
        let n = self.blocks_per_chunk();
        // Snapshot the records, in logs of at most LOG_BYTES_MAX. Each log's sequence number
        // is taken in the same critical section as its data: a merge that snapshots later
        // stamps its chunk with at least this number, one that snapshotted earlier with less.
        struct Batch {
            seq: u64,
            records: Vec<Record>,
            covered: Vec<(u64, u64)>,
        }
        let mut batches: Vec<Batch> = Vec::new();
        {
            let mut cache = self.cache();
            let mut bytes = LOG_BYTES_MAX;
            for &c in chunks {
                let Some(e) = cache.entries.get(&c) else { continue };
                if e.unlogged.is_empty() {
                    continue;
                }
                if bytes >= LOG_BYTES_MAX {
                    let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
                    batches.push(Batch { seq, records: Vec::new(), covered: Vec::new() });
                    bytes = 0;
                }
                let batch = batches.last_mut().expect("just pushed");
                for (b0, b1) in e.unlogged.runs(n) {
                    let (from, to) = (b0 as u64 * bs, b1 as u64 * bs);
                    let mut data = vec![0u8; (to - from) as usize];
                    e.copy_out(from as usize, &mut data);
                    let offset = c * self.chunk_size + from;
                    batch.records.push(if data.iter().all(|&b| b == 0) {
                        Record::Zero { offset, len: to - from }
                    } else {
                        Record::Data { offset, data: Bytes::from(data) }
                    });
                    bytes += (to - from) as usize;
                }
                batch.covered.push((c, e.generation));
            }
            for batch in &batches {
                let unsettled = batch.covered.iter().map(|(c, _)| *c).collect();
                cache.logs.insert(batch.seq, LogInfo { unsettled, bytes: 0, pending: true });
            }
        }
        let mut batches = batches.into_iter();
        while let Some(batch) = batches.next() {
            if let Err(e) = self.append_log(batch.seq, &batch.records).await {
                let mut cache = self.cache();
                for rest in batches {
                    cache.logs.remove(&rest.seq); // never written
                }
                return Err(e);
            }
            let mut cache = self.cache();
            for (c, generation) in batch.covered {
                if let Some(e) = cache.entries.get_mut(&c)
                    && e.generation == generation
                {
                    e.unlogged = Bits::Empty;
                    e.unlogged_since = None;
                }
            }
        }
        Ok(())
    }

    /// Writes one log object registered as pending. The caller holds `log_lock`.
    async fn append_log(&self, seq: u64, records: &[Record]) -> StoreResult<()> {
        let body = encode_log(seq, records);
        let crc = base64::engine::general_purpose::STANDARD.encode(crc32c::crc32c(&body).to_be_bytes());
        let len = body.len() as u64;
        let started = self.clock.now();
        let metadata = BTreeMap::from([(CRC_METADATA.to_string(), crc)]);
        let result = self.store.put(&self.log_key(seq), body, metadata, Condition::None).await;
        self.record_flush_latency(started);
        let mut cache = self.cache();
        match result {
            Ok(_) => {
                self.stats.logs_written.fetch_add(1, Ordering::Relaxed);
                self.stats.log_bytes.fetch_add(len, Ordering::Relaxed);
                if let Some(info) = cache.logs.get_mut(&seq) {
                    info.pending = false;
                    info.bytes = len;
                }
                Ok(())
            }
            Err(e) => {
                match &e {
                    // It may exist: keep tracking it so that it is deleted.
                    ObjectError::Indeterminate(_) => {
                        if let Some(info) = cache.logs.get_mut(&seq) {
                            info.pending = false;
                            info.bytes = len;
                        }
                    }
                    _ => {
                        cache.logs.remove(&seq);
                    }
                }
                self.stats.flush_errors.fetch_add(1, Ordering::Relaxed);
                Err(store_err(e, true))
            }
        }
    }

    /// Writes a zero record for chunks about to be deleted, when logs may hold older records
    /// for them (which must not resurrect their data after a crash). The caller holds
    /// `log_lock`. Returns the sequence number that settles them.
    async fn log_zeros(&self, chunks: &[u64]) -> StoreResult<u64> {
        let seq = {
            let mut cache = self.cache();
            if cache.logs.is_empty() {
                return Ok(self.current_seq());
            }
            let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
            let unsettled = chunks.iter().copied().collect();
            cache.logs.insert(seq, LogInfo { unsettled, bytes: 0, pending: true });
            seq
        };
        let records: Vec<Record> =
            chunks.iter().map(|c| Record::Zero { offset: c * self.chunk_size, len: self.chunk_len(*c) }).collect();
        self.append_log(seq, &records).await?;
        Ok(seq)
    }

    fn record_flush_latency(&self, started: Duration) {
        let micros = self.clock.now().saturating_sub(started).as_micros() as u64;
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        self.stats.flush_micros_total.fetch_add(micros, Ordering::Relaxed);
        self.stats.flush_micros_max.fetch_max(micros, Ordering::Relaxed);
    }

    /// Settles chunk `c` against every log up to `seq`.
    fn settle(&self, cache: &mut Cache, c: u64, seq: u64) {
        for (_, info) in cache.logs.range_mut(..=seq) {
            info.unsettled.remove(&c);
        }
    }

    /// Records that chunk `c` was merged from its snapshot at `generation` and that the logs up
    /// to `seq` are settled for it. If nothing changed since the snapshot, every log is: any
    /// record for it, even one logged after the snapshot, holds what was merged.
    fn settle_merged(&self, cache: &mut Cache, c: u64, seq: u64, generation: u64) {
        let unchanged = cache.entries.get(&c).is_none_or(|e| e.generation == generation);
        self.settle(cache, c, if unchanged { u64::MAX } else { seq });
        self.mark_merged(cache, c, generation);
    }

    /// Deletes the oldest logs whose chunks are all settled (always a prefix, so that the
    /// logs left after a crash are a suffix).
    async fn delete_settled_logs(&self) -> StoreResult<()> {
        let _serial = self.log_lock.lock().await;
        let settled: Vec<u64> = {
            let cache = self.cache();
            cache
                .logs
                .iter()
                .take_while(|(_, info)| info.unsettled.is_empty() && !info.pending)
                .map(|(seq, _)| *seq)
                .collect()
        };
        for seq in settled {
            self.store.delete(&self.log_key(seq)).await.map_err(|e| store_err(e, true))?;
            self.cache().logs.remove(&seq);
        }
        Ok(())
    }

    // ---- merging ----

    /// Rewrites chunk `c` with everything the cache holds for it: one PUT of the whole chunk,
    /// or a DELETE if it is all zeros (after a zero record in the log, when logs may still
    /// hold older records for it).
    async fn merge_chunk(&self, c: u64) -> StoreResult<()> {
        let _claim = self.claim(&[c]).await;
        self.check_fenced()?;
        let started = self.clock.now();
        let chunk_len = self.chunk_len(c) as usize;
        let n = (chunk_len as u64 / self.block_size) as usize;
        let snapshot = {
            let cache = self.cache();
            match cache.entries.get(&c) {
                Some(e) if !e.is_clean() => {
                    let mut full = vec![0u8; chunk_len];
                    e.copy_out(0, &mut full);
                    Some((e.generation, full, e.valid.clone(), cache.exists.contains(&c), self.current_seq()))
                }
                _ => None,
            }
        };
        let Some((generation, mut full, valid, exists, stamp)) = snapshot else { return Ok(()) };
        // Blocks the cache does not hold come from the object (or are zeros).
        if valid.count(n) < n {
            if exists {
                let old =
                    self.fetch(c, 0, chunk_len as u64).await.map_err(|e| self.flush_failed(c, store_err(e, true)))?;
                let bs = self.block_size as usize;
                for b in (0..n).filter(|&b| !valid.get(b)) {
                    full[b * bs..(b + 1) * bs].copy_from_slice(&old[b * bs..(b + 1) * bs]);
                }
            }
            self.install(c, &full);
        }
        let zero = full.iter().all(|&b| b == 0);
        let key = Self::chunk_key(&self.url, c);
        // A zero chunk has no object to carry a stamp: a zero record in the log keeps older
        // records from resurrecting its data after a crash. The log lock is held until the
        // DELETE is done, so no log with older records can appear behind it.
        let serial = if zero { Some(self.log_lock.lock().await) } else { None };
        let mut settle_at = stamp;
        let result = if zero {
            settle_at = self.log_zeros(&[c]).await.map_err(|e| self.flush_failed(c, e))?;
            if exists { self.store.delete(&key).await } else { Ok(()) }
        } else {
            let metadata = BTreeMap::from([
                (CRC_METADATA.to_string(), self.checksums(&full)),
                (SEQ_METADATA.to_string(), stamp.to_string()),
            ]);
            self.store.put(&key, Bytes::from(full), metadata, Condition::None).await.map(|_| ())
        };
        drop(serial);
        self.record_flush_latency(started);
        self.stats.merges.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                let mut cache = self.cache();
                if zero {
                    if cache.exists.remove(&c) {
                        self.stats.chunks_deleted.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    cache.exists.insert(c);
                }
                self.settle_merged(&mut cache, c, settle_at, generation);
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

    /// Fills the blocks an entry does not hold with a composed chunk, so that reads never
    /// depend on an object while its replacement is in flight.
    fn install(&self, c: u64, full: &[u8]) {
        let mut cache = self.cache();
        let bs = self.block_size as usize;
        let mut allocated = 0;
        if let Some(e) = cache.entries.get_mut(&c) {
            let missing: Vec<usize> = (0..full.len() / bs).filter(|&b| !e.valid.get(b)).collect();
            for b in missing {
                allocated += e.copy_in(b * bs, &full[b * bs..(b + 1) * bs]);
            }
            e.valid = Bits::Full;
        }
        cache.page_bytes += (allocated * PAGE) as u64;
    }

    fn mark_merged(&self, cache: &mut Cache, c: u64, generation: u64) {
        if let Some(e) = cache.entries.get_mut(&c)
            && e.generation == generation
        {
            e.unmerged = Bits::Empty;
            e.unlogged = Bits::Empty;
            e.unmerged_since = None;
            e.unlogged_since = None;
            if e.pages.is_empty() {
                cache.entries.remove(&c); // a zero chunk needs no entry
            }
        }
    }

    fn flush_failed(&self, c: u64, e: StoreError) -> StoreError {
        self.stats.flush_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(volume = %self.url, chunk = c, error = %e, "flush failed; the data stays in the cache");
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

    async fn merge_chunks(&self, chunks: &[u64]) -> StoreResult<()> {
        let mut first_error = None;
        for group in chunks.chunks(MERGE_PARALLEL) {
            let results = futures::future::join_all(group.iter().map(|&c| self.merge_chunk(c))).await;
            for r in results {
                if let Err(e) = r {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// SYNCHRONIZE CACHE: every write acknowledged before the call is durable on success.
    /// A background flush failure since the last call is reported here, once.
    async fn flush_all(&self) -> StoreResult<()> {
        self.check_fenced()?;
        let result = self.log_unlogged().await;
        let sticky = self.sticky_error.lock().expect("poisoned").take();
        result?;
        match sticky {
            Some(e) => Err(StoreError::Write(format!("an earlier background flush failed: {e}"))),
            None => Ok(()),
        }
    }

    /// Background duties: make old unlogged data durable, merge old or pressing chunks,
    /// merge what keeps logs from being deleted, delete settled logs. Errors become sticky.
    async fn background_flush(&self) {
        let now = self.clock.now();
        let (unlogged_due, merge_due): (Vec<u64>, Vec<u64>) = {
            let cache = self.cache();
            let unlogged = cache
                .entries
                .iter()
                .filter(|(_, e)| e.unlogged_since.is_some_and(|t| now.saturating_sub(t) >= self.opts.flush_age))
                .map(|(c, _)| *c)
                .collect();
            let pressured = cache.page_bytes > self.cache_limit / 2;
            let log_bytes: u64 = cache.logs.values().map(|l| l.bytes).sum();
            let mut merge: BTreeSet<u64> = cache
                .entries
                .iter()
                .filter(|(_, e)| e.unmerged_since.is_some_and(|t| now.saturating_sub(t) >= self.opts.merge_age))
                .map(|(c, _)| *c)
                .collect();
            if pressured {
                let mut oldest: Vec<(Duration, u64)> = cache
                    .entries
                    .iter()
                    .filter(|(_, e)| !e.is_clean())
                    .map(|(c, e)| (e.unmerged_since.unwrap_or_default(), *c))
                    .collect();
                oldest.sort();
                merge.extend(oldest.into_iter().take(MERGE_PARALLEL).map(|(_, c)| c));
            }
            if log_bytes > self.opts.log_bytes_max || cache.logs.len() > 1000 {
                // The oldest log's chunks hold the whole log back.
                if let Some((_, info)) = cache.logs.iter().next() {
                    merge.extend(info.unsettled.iter().copied());
                }
            }
            (unlogged, merge.into_iter().collect())
        };
        let logged = self.log_chunks(&unlogged_due).await;
        let merged = self.merge_chunks(&merge_due).await;
        let deleted = self.delete_settled_logs().await;
        if let Err(e) = logged.and(merged).and(deleted) {
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
        if head_end > offset && !crate::mutants::active(crate::mutants::Mutant::UnmapPartialStale) {
            self.write_impl(offset, Bytes::from(vec![0u8; (head_end - offset) as usize]), false).await?;
        }
        let tail_start = (last_full * self.chunk_size).max(head_end);
        if end > tail_start && last_full >= first_full {
            self.write_impl(tail_start, Bytes::from(vec![0u8; (end - tail_start) as usize]), false).await?;
        }
        if last_full <= first_full {
            return Ok(());
        }
        // Whole chunks: drop their cache entries; those that have (or may get, from a mutation
        // in flight) an object become zero entries, deleted in batches.
        let to_delete: Vec<u64> = {
            let now = self.clock.now();
            let mut cache = self.cache();
            let cached: Vec<u64> = cache.entries.range(first_full..last_full).map(|(c, _)| *c).collect();
            for c in cached {
                let e = cache.entries.remove(&c).expect("listed");
                cache.page_bytes -= (e.pages.len() * PAGE) as u64;
            }
            // Chunks with an object, a mutation in flight, or records in a log.
            let mut existing: BTreeSet<u64> = cache.exists.range(first_full..last_full).copied().collect();
            existing.extend(cache.inflight.range(first_full..last_full).copied());
            for info in cache.logs.values() {
                existing.extend(info.unsettled.range(first_full..last_full).copied());
            }
            let existing: Vec<u64> = existing.into_iter().collect();
            for &c in &existing {
                cache.tick += 1;
                let generation = cache.tick;
                let mut e = Entry::empty();
                e.valid = Bits::Full;
                e.unmerged = Bits::Full;
                // Not durable until deleted (or logged): a failed DELETE leaves it for the next
                // SYNCHRONIZE CACHE.
                e.unlogged = Bits::Full;
                e.generation = generation;
                e.unmerged_since = Some(now);
                e.unlogged_since = Some(now);
                e.last_used = generation;
                cache.entries.insert(c, e);
            }
            existing
        };
        self.released.notify_waiters();
        let batches: Vec<&[u64]> = to_delete.chunks(DELETE_BATCH).collect();
        let results = futures::future::join_all(batches.into_iter().map(|b| self.delete_batch(b))).await;
        results.into_iter().collect::<StoreResult<Vec<()>>>().map(|_| ())
    }

    /// Deletes zeroed chunks: one zero record in the log (when logs may hold older records
    /// for them), then one DeleteObjects request for those with objects.
    async fn delete_batch(&self, chunks: &[u64]) -> StoreResult<()> {
        let _claim = self.claim(chunks).await;
        self.check_fenced()?;
        // Only chunks still zero and unmerged (no write came in since) are deleted.
        let zeroed: Vec<(u64, u64)> = {
            let cache = self.cache();
            chunks
                .iter()
                .filter_map(|c| {
                    let e = cache.entries.get(c)?;
                    (e.pages.is_empty() && e.valid.is_full() && !e.is_clean()).then_some((*c, e.generation))
                })
                .collect()
        };
        if zeroed.is_empty() {
            return Ok(());
        }
        let _serial = self.log_lock.lock().await;
        let settle_at = self.log_zeros(&zeroed.iter().map(|(c, _)| *c).collect::<Vec<_>>()).await?;
        let present: Vec<u64> = {
            let cache = self.cache();
            zeroed.iter().map(|(c, _)| *c).filter(|c| cache.exists.contains(c)).collect()
        };
        let mut failed: BTreeMap<u64, StoreError> = BTreeMap::new();
        if !present.is_empty() {
            let keys: Vec<String> = present.iter().map(|c| Self::chunk_key(&self.url, *c)).collect();
            let results = self.store.delete_many(keys).await.map_err(|e| store_err(e, true))?;
            for (c, (_, r)) in present.iter().zip(results) {
                match r {
                    Ok(()) => {
                        self.stats.chunks_deleted.fetch_add(1, Ordering::Relaxed);
                        self.cache().exists.remove(c);
                    }
                    Err(e) => {
                        failed.insert(*c, store_err(e, true));
                    }
                }
            }
        }
        let mut cache = self.cache();
        for (c, generation) in zeroed {
            if !failed.contains_key(&c) {
                self.settle_merged(&mut cache, c, settle_at, generation);
            }
        }
        failed.into_values().next().map_or(Ok(()), Err)
    }

    fn mapped(&self, cache: &Cache, c: u64) -> bool {
        match cache.entries.get(&c) {
            Some(e) if e.valid.is_full() && e.pages.is_empty() => false,
            Some(e) if !e.pages.is_empty() && !e.is_clean() => true,
            _ => cache.exists.contains(&c),
        }
    }

    /// Bytes in the cache that are not in their chunk objects yet.
    pub fn dirty_bytes(&self) -> u64 {
        let n = self.blocks_per_chunk();
        self.cache().entries.values().map(|e| e.unmerged.count(n) as u64 * self.block_size).sum()
    }

    /// Bytes in the cache that are not durable anywhere yet.
    pub fn unlogged_bytes(&self) -> u64 {
        let n = self.blocks_per_chunk();
        self.cache().entries.values().map(|e| e.unlogged.count(n) as u64 * self.block_size).sum()
    }

    /// Chunk objects known to exist.
    pub fn chunk_count(&self) -> usize {
        self.cache().exists.len()
    }

    /// Log objects not yet deleted.
    pub fn log_count(&self) -> usize {
        self.cache().logs.len()
    }

    /// Stops all object store traffic at once, as if the process died (model checks): the
    /// cache is abandoned and nothing more is written.
    #[doc(hidden)]
    pub fn simulate_crash(&self) {
        self.fenced.store(true, Ordering::Relaxed);
    }

    /// Merges everything, deletes the logs and releases the lease (clean shutdown).
    pub async fn close(&self) -> StoreResult<()> {
        self.check_fenced()?;
        let dirty: Vec<u64> = self.cache().entries.iter().filter(|(_, e)| !e.is_clean()).map(|(c, _)| *c).collect();
        self.merge_chunks(&dirty).await?;
        self.delete_settled_logs().await?;
        self.release_lease().await;
        Ok(())
    }
}

/// Serializes log records: magic, sequence number, record count, then for each record its
/// kind (0 data, 1 zero), offset, length and, for data, the bytes.
fn encode_log(seq: u64, records: &[Record]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_slice(LOG_MAGIC);
    out.put_u64(seq);
    out.put_u32(records.len() as u32);
    for r in records {
        match r {
            Record::Data { offset, data } => {
                out.put_u8(0);
                out.put_u64(*offset);
                out.put_u64(data.len() as u64);
                out.put_slice(data);
            }
            Record::Zero { offset, len } => {
                out.put_u8(1);
                out.put_u64(*offset);
                out.put_u64(*len);
            }
        }
    }
    out.freeze()
}

/// Parses and verifies a log object.
fn parse_log(body: &Bytes, crc: Option<&String>) -> Result<Vec<Record>, String> {
    let want = crc
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .filter(|b| b.len() == 4)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
        .ok_or("missing checksum")?;
    if crc32c::crc32c(body) != want {
        return Err("checksum mismatch".into());
    }
    let mut at = 20usize;
    if body.len() < at || &body[..8] != LOG_MAGIC {
        return Err("not a log object".into());
    }
    let count = u32::from_be_bytes(body[16..20].try_into().expect("4 bytes"));
    let mut records = Vec::new();
    for _ in 0..count {
        if body.len() < at + 17 {
            return Err("truncated".into());
        }
        let kind = body[at];
        let offset = u64::from_be_bytes(body[at + 1..at + 9].try_into().expect("8 bytes"));
        let len = u64::from_be_bytes(body[at + 9..at + 17].try_into().expect("8 bytes"));
        at += 17;
        match kind {
            0 => {
                let end = at.checked_add(len as usize).filter(|&e| e <= body.len()).ok_or("truncated")?;
                records.push(Record::Data { offset, data: body.slice(at..end) });
                at = end;
            }
            1 => records.push(Record::Zero { offset, len }),
            _ => return Err(format!("unknown record kind {kind}")),
        }
    }
    Ok(records)
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
    let mut since_report = Duration::ZERO;
    let mut last_requests = 0;
    loop {
        tokio::time::sleep(interval).await;
        let Some(v) = volume.upgrade() else { return };
        if v.fenced.load(Ordering::Relaxed) {
            return;
        }
        v.background_flush().await;
        since_renewal += interval;
        since_report += interval;
        if since_renewal >= renew_every {
            since_renewal = Duration::ZERO;
            v.renew_lease().await;
        }
        // Counters go to the log once a minute while the volume is busy.
        let requests = v.s3_stats.as_ref().map_or(0, |s| s.requests());
        if since_report >= Duration::from_secs(60) && requests != last_requests {
            since_report = Duration::ZERO;
            last_requests = requests;
            tracing::info!(volume = %v.url, stats = %v.stats(), "S3 volume counters");
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
            "block_size": self.block_size,
            "chunk_size": self.chunk_size,
            "chunks": self.chunk_count(),
            "dirty_bytes": self.dirty_bytes(),
            "unlogged_bytes": self.unlogged_bytes(),
            "cache_bytes": self.cache().page_bytes,
            "logs": self.log_count(),
            "logs_written": l(&self.stats.logs_written),
            "log_bytes_written": l(&self.stats.log_bytes),
            "merges": l(&self.stats.merges),
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
