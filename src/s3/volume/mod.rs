//! A sparse block volume on object storage: fixed-size chunk objects under a prefix, a
//! versioned metadata object, a single-writer lease, a write-back cache, and a log that makes
//! small writes durable without rewriting whole chunks. The format is in `format.rs`.
//!
//! Durability: a write is durable once it is in a log object or in its chunk object. Merging
//! rewrites a chunk with everything the cache holds for it and stamps the chunk with the
//! highest sequence number assigned so far; logs are deleted oldest first, only once every
//! chunk they touch is merged (or deleted after a zero record), so whatever logs remain after
//! a crash are a suffix, and replaying their records newer than each chunk's stamp restores
//! every durable write. Every mutation of a chunk object happens with the chunk claimed, so at
//! most one is in flight per key.

mod aside;
mod atomic;
mod cache;
mod chunk_map;
pub mod clone;
pub mod compression;
mod crypto_erase;
mod disk_cache;
mod fence;
pub mod format;
mod journal;
pub mod keys;
pub mod lease;
mod lifecycle;
mod log;
pub mod manifest;
pub(super) mod merge;
mod meta_edit;
mod patience;
use patience::Deadline;
mod read;
mod recovery;
mod room;
mod sealing;
pub mod snapshot;
mod snapshot_capture;
mod snapshot_view;
mod steps;
mod transfer;
mod unmap;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::Notify;

use super::url::S3Url;
use super::{Condition, ObjectError, ObjectStore, Resilient, RetryPolicy, S3Stats};
use crate::clock::Clock;
use crate::rng::Rng;
use crate::storage::stats::VolumeStats;
use crate::storage::{BlockStore, BoxFuture, Extent, StoreCaps, StoreError, StoreResult, StoreStats, is_zero};

use crate::node::NodeId;
use cache::{Cache, Entry, PAGE};
pub use compression::Compression;
use disk_cache::DiskCache;
pub use disk_cache::{DISK_CACHE_BUCKET, DiskCacheOptions};
use format::CHUNKS_DIR;
pub use format::{CreateSpec, FORMAT_VERSION, LEASE_NAME, META_NAME, VolumeMeta};
pub use journal::JournalOptions;
use lease::{Identity, LeaseError, LeaseState, LeaseTiming};
pub use lifecycle::{Deleted, delete_volume};
use meta_edit::MetaEditError;
pub use snapshot_view::SnapshotView;
pub use transfer::{IMPORT_PROGRESS, export_volume, import_progress, import_volume};

/// Keys per DeleteObjects request (the S3 limit).
const DELETE_BATCH: usize = 1000;
/// Chunk merges run in parallel at most this many at a time (each holds two chunk buffers).
const MERGE_PARALLEL: usize = 8;
/// Data in one log object; bigger syncs write several, one after the other.
const LOG_BYTES_MAX: usize = 8 << 20;

/// What a volume holds in memory beyond its cache limit, at most: the buffers of the merges
/// running at once (two chunks each), the readahead GETs in flight (a piece each), the pieces
/// queued for the disk cache (`disk_cache::QUEUED_BYTES`), and one log object being written or
/// replayed (up to [`LOG_BYTES_MAX`] of data, plus one chunk's, plus headers). Reads hold what
/// their commands carry, and what they fetch stays in the cache.
pub fn memory_beyond_cache(chunk_size: u64) -> u64 {
    let readahead_piece = read::READAHEAD_PIECE.min(chunk_size).max(format::segment_size(chunk_size));
    MERGE_PARALLEL as u64 * 2 * chunk_size
        + read::READAHEAD_PARALLEL as u64 * readahead_piece
        + disk_cache::QUEUED_BYTES
        + LOG_BYTES_MAX as u64
        + chunk_size
        + (1 << 20)
}

/// How to open a volume.
#[derive(Debug, Clone)]
pub struct VolumeOptions {
    /// Create the volume with this geometry if it does not exist; if it exists, its geometry
    /// must match.
    pub create: Option<CreateSpec>,
    /// Take the lease over from a live holder (which stops writing within the lease; this
    /// volume waits that out before its first write).
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
    /// Timeouts and retries of object store requests.
    pub retry: RetryPolicy,
    /// The longest a command waits for an object store that is away (a SYNCHRONIZE CACHE, a
    /// FUA write, a read of uncached data, a write waiting for room in the cache) before it
    /// is answered NOT READY, which initiators retry. Below their command timeouts (30 s on
    /// Linux and Windows).
    pub command_deadline: Duration,
    /// Who we are, in the lease ("node/pid/random").
    pub holder: String,
    /// The node this process holds locked: a lease it held before a crash is taken back at once.
    pub node: Option<NodeId>,
    /// `durability = "local"`: SYNCHRONIZE CACHE and FUA writes are durable once in this
    /// local journal, and reach the object store in the background (see `journal.rs`). Needs
    /// `node`. None: durable means in the object store.
    pub journal: Option<JournalOptions>,
    /// `cache_disk_size`: a read cache of chunk pieces on local disk (`disk_cache.rs`).
    pub disk_cache: Option<DiskCacheOptions>,
    /// `failover = true`: another target (a standby) takes the volume over when this one's
    /// lease lapses, so this one serves nothing once its lease is not renewed in time, not even
    /// from its cache (see [`S3Volume::may_serve`]). Off: a lapsed lease waiting for the store
    /// to come back still serves what needs no request.
    pub failover: bool,
    /// The key-encryption key of an encrypted volume (and, with `create`, makes a new volume
    /// an encrypted one). An encrypted volume refuses to open without it; a plain one with it.
    pub encryption: Option<keys::KeySource>,
    /// With `create`: a new volume's chunks are compressed so (an existing volume keeps the
    /// compression it was created with).
    pub compression: Option<Compression>,
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
            retry: RetryPolicy::default(),
            command_deadline: Duration::from_secs(20),
            holder: "rtgt".into(),
            node: None,
            journal: None,
            disk_cache: None,
            failover: false,
            encryption: None,
            compression: None,
            seed: 1,
        }
    }
}

/// The object store of a volume's data, as [`S3Volume::data_objects`] builds it.
pub(super) struct DataObjects {
    pub store: Arc<dyn ObjectStore>,
    /// The sealing layer of an encrypted volume (its data key is replaced by a crypto erase).
    pub sealing: Option<Arc<sealing::SealedStore>>,
}

/// Why a volume did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Another target holds the lease and keeps renewing it: this target is the standby.
    #[error(
        "{url}: in use by {holder}, which keeps renewing its lease; stop that target, or take the volume over with force"
    )]
    HeldElsewhere { url: String, holder: String },
    /// The store cannot be reached, or the lease could not be taken: trying again may work.
    #[error("{0}")]
    Unavailable(String),
    /// The volume is missing, differs from the configuration, or is damaged: an operator must
    /// act.
    #[error("{0}")]
    Refused(String),
}

/// Counters of the volume itself (the object store keeps request counters).
#[derive(Debug, Default)]
pub struct VolumeCounters {
    pub merges: AtomicU64,
    pub logs_written: AtomicU64,
    pub log_bytes: AtomicU64,
    pub flush_errors: AtomicU64,
    pub flush_micros_total: AtomicU64,
    pub flush_micros_max: AtomicU64,
    pub flushes: AtomicU64,
    pub chunks_deleted: AtomicU64,
    /// Superseded chunk versions deleted (the versioned layout).
    pub versions_swept: AtomicU64,
    /// Logs written to the local journal, and uploaded from it.
    pub journal_writes: AtomicU64,
    pub journal_uploads: AtomicU64,
    /// The most bytes of cache pages held at once.
    pub cache_peak: AtomicU64,
    /// The most bytes of cache pages, merge buffers and log bodies held at once.
    pub memory_peak: AtomicU64,
    /// Bytes read answered without a request (from the cache, or zeros where no chunk
    /// exists), and fetched from the store by the read itself.
    pub read_bytes_cached: AtomicU64,
    pub read_bytes_fetched: AtomicU64,
    /// Bytes read from the disk cache: whole CRC segments, as a GET would have fetched (the
    /// bytes reads asked of them are in `read_bytes_fetched`).
    pub read_bytes_disk: AtomicU64,
    /// Bytes fetched ahead of a sequential stream.
    pub readahead_bytes: AtomicU64,
}

/// Buffers counted in [`S3Volume`]'s memory while alive.
struct Buffers<'a> {
    volume: &'a S3Volume,
    bytes: u64,
}

impl Drop for Buffers<'_> {
    fn drop(&mut self) {
        self.volume.buffer_bytes.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

pub struct S3Volume {
    /// Itself, for the background tasks a read starts (readahead).
    me: Weak<S3Volume>,
    /// Requests that read or change the volume: fenced by the lease, retried.
    store: Arc<dyn ObjectStore>,
    /// The sealing layer within `store`, of an encrypted volume.
    sealing: Option<Arc<sealing::SealedStore>>,
    /// The lease's own requests: retried, on request slots of their own.
    control: Arc<dyn ObjectStore>,
    lease: Arc<LeaseState>,
    identity: Identity,
    /// The renewal task.
    keeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
    url: S3Url,
    /// The volume's uuid (names its journal).
    uuid: String,
    meta: Mutex<(VolumeMeta, Option<String>)>,
    /// Held by each rewrite of the metadata while the volume is open (`meta_edit.rs`).
    meta_edits: tokio::sync::Mutex<()>,
    chunk_size: u64,
    block_size: u64,
    segment: u64,
    capacity: AtomicU64,
    /// How the chunk objects are kept; with versions, the last version number taken.
    layout: format::ChunkLayout,
    next_version: AtomicU64,
    /// Taking a snapshot holds it alone; atomic writes and UNMAPs, whose steps a snapshot must
    /// see all or none of, hold it shared. A plain write does not take it: its copy into the
    /// cache is one section under the cache lock, as the snapshot's capture is, so a snapshot
    /// holds every write acknowledged before it (one copied and not yet flushed is captured
    /// unlogged, as when a background flush races it). Holding it would make a snapshot, and
    /// every write queued behind it (the gate is fair), wait for writes waiting for room or in
    /// a FUA flush.
    snapshot_gate: tokio::sync::RwLock<()>,
    cache: Mutex<Cache>,
    /// Woken when a claim is released, pages are freed, or a readahead ends.
    released: Notify,
    /// Log writes happen one at a time, in sequence order.
    log_lock: tokio::sync::Mutex<()>,
    /// Held by journal uploads, and by a close once it has merged (so that no upload lands
    /// behind its last deletes).
    upload_lock: tokio::sync::Mutex<()>,
    /// One SYNCHRONIZE CACHE at a time makes the cache durable; those that arrive meanwhile
    /// wait and are usually covered by the next one (group commit).
    sync_lock: tokio::sync::Mutex<()>,
    /// SYNCs and FUA writes waiting for durability now; woken as each arrives.
    sync_waiters: std::sync::atomic::AtomicUsize,
    sync_arrived: Notify,
    /// How many the last group commit covered, and how long it took.
    last_group: Mutex<(usize, Duration)>,
    /// Every write up to this count (`Cache::writes`) is durable.
    durable_writes: AtomicU64,
    next_seq: AtomicU64,
    cache_limit: u64,
    write_back: AtomicBool,
    /// A background flush failed: reported by the next SYNCHRONIZE CACHE.
    sticky_error: Mutex<Option<String>>,
    /// Merges running at once (see [`memory_beyond_cache`]).
    merge_slots: tokio::sync::Semaphore,
    /// Writes waiting for room in the cache take turns, in the order they came (`room.rs`).
    room_turn: tokio::sync::Mutex<()>,
    /// Writes waiting for room now: while any does, a new write queues behind them.
    room_waiters: std::sync::atomic::AtomicUsize,
    /// A merge started to make room failed: the error for the write first in line.
    room_error: Mutex<Option<StoreError>>,
    /// Bugs tests plant, to show that their checks catch them (always off otherwise).
    planted: PlantedBugs,
    /// The disk cache tier, once opened (with `disk_cache` in the options).
    disk: std::sync::OnceLock<Arc<DiskCache>>,
    /// Readahead GETs running at once.
    readahead_slots: tokio::sync::Semaphore,
    /// Bytes of merge buffers and log bodies held now.
    buffer_bytes: AtomicU64,
    /// Clock nanoseconds of the first failure since the store last answered; 0: reachable.
    unreachable_since: AtomicU64,
    /// Clock nanoseconds of the background's last deletion of settled logs (`log.rs`).
    logs_deleted_at: AtomicU64,
    opts: VolumeOptions,
    clock: Arc<dyn Clock>,
    stats: VolumeCounters,
    s3_stats: Arc<S3Stats>,
}

impl Drop for S3Volume {
    fn drop(&mut self) {
        if let Some(keeper) = self.keeper.lock().expect("poisoned").take() {
            keeper.abort();
        }
    }
}

/// The block-store error of a failed request: transient faults stay retryable (never a
/// MEDIUM ERROR), a fenced request is NOT READY, the rest is the medium's.
fn store_err(e: ObjectError, writing: bool) -> StoreError {
    if crate::mutants::active(crate::mutants::Mutant::TransientIsMediumError)
        && let ObjectError::Indeterminate(message) = &e
    {
        // Planted bug: an unknown outcome passed off as a bad medium.
        return if writing { StoreError::Write(message.clone()) } else { StoreError::Read(message.clone()) };
    }
    match e {
        ObjectError::Determinate { retryable: true, message } => StoreError::Transient(message),
        ObjectError::Indeterminate(message) => StoreError::Transient(format!("outcome unknown: {message}")),
        ObjectError::Fenced(message) => StoreError::NotReady(message),
        e if writing => StoreError::Write(e.to_string()),
        e => StoreError::Read(e.to_string()),
    }
}

/// Why a volume was not created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    #[error("a volume already exists at {0}")]
    Exists(String),
    #[error("{0}")]
    Failed(String),
}

impl S3Volume {
    /// Writes a new metadata object; fails if a volume already exists there.
    /// With `encryption`, the volume is an encrypted one whose data key that key-encryption
    /// key wraps; with `compression`, its chunks are compressed (format 5).
    pub async fn create(
        store: &dyn ObjectStore,
        url: &S3Url,
        spec: &CreateSpec,
        clock: &dyn Clock,
        seed: u64,
        encryption: Option<&keys::KeySource>,
        compression: Option<Compression>,
    ) -> Result<VolumeMeta, CreateError> {
        spec.validate().map_err(CreateError::Failed)?;
        let encryption = match encryption {
            Some(source) => Some(
                keys::new_encryption(source).map_err(|e| CreateError::Failed(format!("cannot encrypt {url}: {e}")))?.0,
            ),
            None => None,
        };
        let meta = VolumeMeta {
            format_version: VolumeMeta::version_for(false, compression.is_some()),
            encryption,
            compression,
            ..S3Volume::new_meta(spec, clock, seed)
        };
        S3Volume::put_new_meta(store, url, &meta).await.map(|_| meta)
    }

    /// The metadata of a new plain volume of geometry `spec` (format 3), with a fresh uuid.
    pub(super) fn new_meta(spec: &CreateSpec, clock: &dyn Clock, seed: u64) -> VolumeMeta {
        let mut rng = Rng::seeded(seed);
        let uuid = format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            rng.next_u64() as u32,
            rng.next_u64() as u16,
            rng.next_u64() & 0xfff,
            rng.next_u64() & 0xfff,
            rng.next_u64() & 0xffff_ffff_ffff
        );
        VolumeMeta {
            format_version: FORMAT_VERSION,
            size: spec.size,
            block_size: spec.block_size,
            chunk_size: spec.chunk_size,
            uuid,
            created_unix_secs: clock.wall().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
            epoch: 0,
            journal_node: None,
            encryption: None,
            parent: None,
            compression: None,
            logs_settled_below: 0,
            deleting: false,
            making: false,
        }
    }

    /// Writes a new volume's metadata object; fails if a volume already exists there. Returns
    /// the version written's entity tag, if the store reports one.
    pub(super) async fn put_new_meta(
        store: &dyn ObjectStore,
        url: &S3Url,
        meta: &VolumeMeta,
    ) -> Result<Option<String>, CreateError> {
        match store.put(&url.key(META_NAME), meta.encode(), BTreeMap::new(), Condition::IfNoneMatch).await {
            Ok(etag) => Ok(etag),
            Err(ObjectError::PreconditionFailed) => Err(CreateError::Exists(url.to_string())),
            // A PUT finds no object missing: its bucket is.
            Err(ObjectError::NotFound) => Err(CreateError::Failed(format!(
                "cannot create the volume at {url}: the store has no bucket {:?} (create it first)",
                url.bucket
            ))),
            Err(e) => Err(CreateError::Failed(format!("cannot create the volume at {url}: {e}"))),
        }
    }

    /// Reads and checks the metadata object.
    pub async fn read_meta(
        store: &dyn ObjectStore,
        url: &S3Url,
    ) -> Result<Option<(VolumeMeta, Option<String>)>, String> {
        match store.get(&url.key(META_NAME), None).await {
            Ok(out) => {
                let meta = VolumeMeta::parse(&out.body).map_err(|e| format!("{url}/{META_NAME}: {e}"))?;
                Ok(Some((meta, out.meta.etag)))
            }
            Err(ObjectError::NotFound) => Ok(None),
            Err(e) => Err(format!("cannot read {url}/{META_NAME}: {e}")),
        }
    }

    /// Reads the metadata, creating the volume first with `opts.create`, and checks the
    /// geometry against what the configuration asks for.
    async fn find_or_create(
        store: &dyn ObjectStore,
        url: &S3Url,
        opts: &VolumeOptions,
        clock: &dyn Clock,
    ) -> Result<(VolumeMeta, Option<String>), OpenError> {
        let unavailable = OpenError::Unavailable;
        let found = match S3Volume::read_meta(store, url).await.map_err(unavailable)? {
            Some(found) => found,
            None => {
                let Some(spec) = &opts.create else {
                    return Err(OpenError::Refused(format!(
                        "no volume at {url}: create it with `rtgt volume create {url} --size SIZE` or set create = true"
                    )));
                };
                match S3Volume::create(store, url, spec, clock, opts.seed, opts.encryption.as_ref(), opts.compression)
                    .await
                {
                    // Someone else created it meanwhile (or our uncertain attempt did).
                    Ok(_) | Err(CreateError::Exists(_)) => {}
                    Err(e) => return Err(OpenError::Unavailable(e.to_string())),
                }
                S3Volume::read_meta(store, url)
                    .await
                    .map_err(unavailable)?
                    .ok_or_else(|| OpenError::Unavailable(format!("{url} vanished after creation")))?
            }
        };
        if found.0.making {
            return Err(OpenError::Refused(format!(
                "{url} is a clone whose making did not finish (or is under way); remove it with \
                 `rtgt volume delete {url}` and make the clone again"
            )));
        }
        if found.0.deleting {
            return Err(OpenError::Refused(format!(
                "{url}: a deletion of this volume began and did not finish, so some of its objects may be gone; \
                 finish it with `rtgt volume delete {url}`"
            )));
        }
        if let Some(spec) = &opts.create {
            let meta = &found.0;
            let mismatch = |what: &str, have: u64, want: u64| {
                Err(OpenError::Refused(format!(
                    "{url} has {what} {have} but the configuration asks for {want}; refusing to open it"
                )))
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
        Ok(found)
    }

    /// Writes `meta` over the metadata object whose version is `etag` (any version if none):
    /// the new version's entity tag.
    async fn put_meta(&self, meta: &VolumeMeta, etag: Option<String>) -> Result<Option<String>, ObjectError> {
        S3Volume::put_meta_over(&*self.store, &self.url, meta, etag).await
    }

    /// Writes `meta` over the metadata object of the volume at `url` whose version is `etag`
    /// (any version if none): the new version's entity tag.
    pub(super) async fn put_meta_over(
        store: &dyn ObjectStore,
        url: &S3Url,
        meta: &VolumeMeta,
        etag: Option<String>,
    ) -> Result<Option<String>, ObjectError> {
        let condition = etag.map(Condition::IfMatch).unwrap_or(Condition::None);
        store.put(&url.key(META_NAME), meta.encode(), BTreeMap::new(), condition).await
    }

    /// Wraps an encrypted volume's data key with the key-encryption key from `new` in place of
    /// the one it was opened with, under the lease (no other node rewrites the metadata
    /// meanwhile); the data and the data key stay as they are.
    pub async fn rekey(&self, new: &keys::KeySource) -> Result<(), String> {
        self.lease.check("rekey").map_err(|e| e.to_string())?;
        let Some(old) = &self.opts.encryption else {
            return Err(format!("{} is not encrypted", self.url));
        };
        let url = &self.url;
        self.edit_meta(|meta| {
            let encryption = meta.encryption.as_ref().ok_or_else(|| format!("{url} is not encrypted"))?;
            meta.encryption = Some(keys::rewrap(encryption, old, new)?);
            Ok(true)
        })
        .await
        .map_err(|e| match e {
            MetaEditError::Refused(why) => why,
            MetaEditError::Store(e) => format!("{url}: {e}"),
        })
    }

    /// The volume's data key, unwrapped by the key `source` gives (None for a plain volume); a
    /// plain volume given a key, or an encrypted one given none or the wrong one, is refused.
    pub(super) fn data_key(
        url: &S3Url,
        meta: &VolumeMeta,
        source: Option<&keys::KeySource>,
    ) -> Result<Option<keys::DataKey>, OpenError> {
        match (&meta.encryption, source) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(OpenError::Refused(format!(
                "{url} is not encrypted, but the configuration gives it a key; refusing to open it \
                 (remove the key, or import the data into a new encrypted volume)"
            ))),
            (Some(_), None) => Err(OpenError::Refused(format!(
                "{url} is encrypted: give its key (encryption_key_file, encryption_key_env, \
                 encryption_passphrase_file or encryption_passphrase_env)"
            ))),
            (Some(encryption), Some(source)) => keys::unwrap(encryption, source)
                .map(Some)
                .map_err(|e| OpenError::Refused(format!("{url} is encrypted and cannot be opened: {e}"))),
        }
    }

    /// `store` as the volume's data objects are kept: sealed and opened with the data key of
    /// an encrypted volume, compressed and decompressed in a compressed one (before sealing).
    /// `ancestors`: the key prefixes of the volumes a clone reads through to (they share its
    /// data key and compression).
    pub(super) fn data_objects(
        store: Arc<dyn ObjectStore>,
        url: &S3Url,
        ancestors: impl IntoIterator<Item = String>,
        meta: &VolumeMeta,
        source: Option<&keys::KeySource>,
    ) -> Result<DataObjects, OpenError> {
        let prefixes: Vec<String> = std::iter::once(url.key("")).chain(ancestors).collect();
        let sealing = match S3Volume::data_key(url, meta, source)? {
            Some(key) => {
                let unit = meta.encryption.as_ref().map_or(keys::UNIT_BYTES, |e| e.unit);
                let sealer = sealing::Sealer::new(&key, unit, sealing::os_nonces());
                Some(Arc::new(sealing::SealedStore::over(store.clone(), prefixes.clone(), sealer)))
            }
            None => None,
        };
        let sealed: Arc<dyn ObjectStore> = match &sealing {
            Some(sealed) => sealed.clone(),
            None => store,
        };
        let store: Arc<dyn ObjectStore> = match meta.compression {
            Some(codec) => Arc::new(compression::CompressedStore::over(sealed, prefixes, codec, meta.chunk_size)),
            None => sealed,
        };
        Ok(DataObjects { store, sealing })
    }

    /// Opens (and with `opts.create`, creates) a volume: reads its metadata, takes the lease
    /// (waiting out a silent holder's), bumps the epoch, lists its chunks, replays its logs, and
    /// starts the background work. `store` is the bare object store: the volume puts its own
    /// retries and the lease's fence over it.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        url: S3Url,
        opts: VolumeOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<S3Volume>, OpenError> {
        if opts.journal.is_some() && opts.failover {
            return Err(OpenError::Refused(format!(
                "{url}: a local journal (durability = \"local\") keeps acknowledged writes on this node, \
                 where a failover target cannot see them: use durability = \"s3\" with failover"
            )));
        }
        if opts.journal.is_some() && opts.node.is_none() {
            return Err(OpenError::Refused(format!(
                "{url}: a local journal (durability = \"local\") needs a node identity (a data directory)"
            )));
        }
        let s3_stats = Arc::new(S3Stats::default());
        let lease = Arc::new(LeaseState::new(
            clock.clone(),
            LeaseTiming::new(opts.lease_duration, opts.retry.longest_attempt()),
        ));
        // The lease's requests never wait behind the volume's (a renewal must not starve).
        let control_policy = RetryPolicy {
            budget: opts.retry.budget.min(opts.lease_duration / 4),
            concurrency: 2,
            // Lease and metadata objects are small: their attempts time out fast.
            whole_object_bytes: 64 << 10,
            ..opts.retry.clone()
        };
        let control: Arc<dyn ObjectStore> =
            Arc::new(Resilient::with_stats(store.clone(), control_policy, opts.seed ^ 0x1ea5e, s3_stats.clone()));
        let (meta, etag) = S3Volume::find_or_create(&*control, &url, &opts, &*clock).await?;
        // A clone reads through to its parent's snapshot.
        let inherited = clone::inherited(&Resilient::new(store.clone(), opts.retry.clone(), opts.seed), &meta).await?;
        let fenced: Arc<dyn ObjectStore> = Arc::new(fence::Fenced::new(store, lease.clone()));
        // Retries below compression and sealing: they resend the bytes that go on the wire
        // (compressed once, sealed once), and their timeouts, window and counters are sized
        // by those bytes, not by the plain chunk.
        let retried: Arc<dyn ObjectStore> =
            Arc::new(Resilient::with_stats(fenced, opts.retry.clone(), opts.seed, s3_stats.clone()));
        let ancestors: BTreeSet<String> = inherited.values().map(|i| i.prefix.clone()).collect();
        let objects = S3Volume::data_objects(retried, &url, ancestors, &meta, opts.encryption.as_ref())?;
        let data = objects.store;
        // A name of this open alone: another open of the same volume in this process (a LUN
        // removed and added again) is another holder.
        let open_id = Rng::seeded(opts.seed ^ clock.now().as_nanos() as u64).next_u64() as u32;
        let identity = Identity { holder: format!("{}/{open_id:08x}", opts.holder), node: opts.node.clone() };
        let segment = format::segment_size(meta.chunk_size);
        let volume = Arc::new_cyclic(|me| S3Volume {
            me: me.clone(),
            store: data,
            sealing: objects.sealing,
            control,
            lease,
            identity,
            keeper: Mutex::new(None),
            url,
            uuid: meta.uuid.clone(),
            chunk_size: meta.chunk_size,
            block_size: meta.block_size as u64,
            segment,
            capacity: AtomicU64::new(meta.size),
            layout: meta.layout(),
            next_version: AtomicU64::new(0),
            snapshot_gate: tokio::sync::RwLock::new(()),
            meta: Mutex::new((meta, etag)),
            meta_edits: tokio::sync::Mutex::new(()),
            cache: Mutex::new(Cache::default()),
            released: Notify::new(),
            log_lock: tokio::sync::Mutex::new(()),
            upload_lock: tokio::sync::Mutex::new(()),
            sync_lock: tokio::sync::Mutex::new(()),
            sync_waiters: std::sync::atomic::AtomicUsize::new(0),
            sync_arrived: Notify::new(),
            last_group: Mutex::new((0, Duration::ZERO)),
            durable_writes: AtomicU64::new(0),
            next_seq: AtomicU64::new(1),
            cache_limit: opts.cache_bytes.max(16 * PAGE as u64),
            write_back: AtomicBool::new(true),
            sticky_error: Mutex::new(None),
            merge_slots: tokio::sync::Semaphore::new(MERGE_PARALLEL),
            room_turn: tokio::sync::Mutex::new(()),
            room_waiters: std::sync::atomic::AtomicUsize::new(0),
            room_error: Mutex::new(None),
            planted: PlantedBugs::default(),
            readahead_slots: tokio::sync::Semaphore::new(read::READAHEAD_PARALLEL),
            disk: std::sync::OnceLock::new(),
            buffer_bytes: AtomicU64::new(0),
            unreachable_since: AtomicU64::new(0),
            logs_deleted_at: AtomicU64::new(0),
            opts,
            clock,
            stats: VolumeCounters::default(),
            s3_stats,
        });
        volume.cache().inherited = inherited;
        volume.take_lease().await?;
        if let Err(e) = volume.start().await {
            volume.let_go().await;
            return Err(e);
        }
        tokio::spawn(background(Arc::downgrade(&volume)));
        Ok(volume)
    }

    /// Takes the lease and starts renewing it.
    async fn take_lease(&self) -> Result<(), OpenError> {
        let key = self.url.key(LEASE_NAME);
        let taken =
            lease::acquire(&*self.control, &key, &self.identity, self.opts.force, &self.lease).await.map_err(|e| {
                match e {
                    LeaseError::Held { holder } => OpenError::HeldElsewhere { url: self.url.to_string(), holder },
                    e => OpenError::Unavailable(format!("{}: {e}", self.url)),
                }
            })?;
        let keeper = lease::keep(self.control.clone(), key, self.identity.clone(), self.lease.clone(), taken);
        *self.keeper.lock().expect("poisoned") = Some(tokio::spawn(keeper));
        Ok(())
    }

    /// What opening does once the lease is ours.
    async fn start(&self) -> Result<(), OpenError> {
        if self.lease.standing() == lease::Standing::NotYet {
            tracing::warn!(volume = %self.url, "taken over by force: waiting out the previous holder's lease");
        }
        self.lease.wait_until_writable().await;
        self.refresh_meta().await?;
        // What the last open left: its journal is ours to replay only if it was this node's.
        let previous = self.meta();
        let journal = self.check_journal(&previous).await?;
        self.bump_epoch().await.map_err(OpenError::Unavailable)?;
        self.load_snapshots().await.map_err(OpenError::Unavailable)?;
        self.load_chunk_list().await.map_err(OpenError::Unavailable)?;
        self.open_disk_cache().await;
        self.recover(journal).await
    }

    /// Stops renewing and releases the lease.
    async fn let_go(&self) {
        if let Some(keeper) = self.keeper.lock().expect("poisoned").take() {
            keeper.abort();
        }
        if !matches!(self.lease.standing(), lease::Standing::Ended(_)) {
            lease::release(&*self.control, &self.url.key(LEASE_NAME), &self.identity, &self.lease).await;
        }
        self.lease.end(lease::Ended::Closed);
    }

    /// Request counters of the volume's object store.
    pub fn s3_stats(&self) -> Arc<S3Stats> {
        self.s3_stats.clone()
    }

    /// Counts `bytes` of buffers (merges, log bodies) until the guard is dropped.
    fn buffers(&self, bytes: u64) -> Buffers<'_> {
        let held = self.buffer_bytes.fetch_add(bytes, Ordering::SeqCst) + bytes;
        let pages = self.cache().page_bytes;
        self.stats.memory_peak.fetch_max(held + pages, Ordering::Relaxed);
        Buffers { volume: self, bytes }
    }

    /// Notes a buffer of `bytes` held briefly (a log body during replay).
    fn note_buffer(&self, bytes: u64) {
        drop(self.buffers(bytes));
    }

    /// Notes the cache's size after it grew.
    fn note_cache(&self, cache: &Cache) {
        self.stats.cache_peak.fetch_max(cache.page_bytes, Ordering::Relaxed);
        let held = cache.page_bytes + self.buffer_bytes.load(Ordering::SeqCst);
        self.stats.memory_peak.fetch_max(held, Ordering::Relaxed);
    }

    /// The cache limit, the most bytes of cache pages it holds.
    pub fn cache_limit(&self) -> u64 {
        self.cache_limit
    }

    /// (most cache pages held at once, most memory held at once) since the volume opened.
    pub fn peaks(&self) -> (u64, u64) {
        (self.stats.cache_peak.load(Ordering::Relaxed), self.stats.memory_peak.load(Ordering::Relaxed))
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

    /// Reads the metadata again now that the lease is ours: the holder before us may have
    /// changed it (bumped the epoch, grown the volume) while we waited for the lease.
    async fn refresh_meta(&self) -> Result<(), OpenError> {
        let (found, etag) = S3Volume::read_meta(&*self.control, &self.url)
            .await
            .map_err(OpenError::Unavailable)?
            .ok_or_else(|| OpenError::Unavailable(format!("{} was deleted while we waited for its lease", self.url)))?;
        let was = self.meta();
        let same_volume = (found.uuid == was.uuid)
            && (found.format_version, found.chunk_size, found.block_size)
                == (was.format_version, was.chunk_size, was.block_size);
        if !same_volume {
            // Deleted and created again: the next attempt opens the new one from the start.
            return Err(OpenError::Unavailable(format!("{} was replaced while we waited for its lease", self.url)));
        }
        self.capacity.store(found.size, Ordering::Relaxed);
        *self.meta.lock().expect("poisoned") = (found, etag);
        Ok(())
    }

    /// Writes the metadata back with the epoch bumped; sequence numbers and chunk versions
    /// start above it. An epoch is ours only by a write that certainly succeeded: after an
    /// uncertain or refused one we read the metadata again and bump above what it holds, even
    /// if it holds our own attempt (a number is skipped), since it may as well hold another
    /// holder's bump to the same number, and two holders of one epoch write the same versions.
    async fn bump_epoch(&self) -> Result<(), String> {
        for _ in 0..8 {
            let (mut meta, etag) = self.meta.lock().expect("poisoned").clone();
            meta.epoch += 1;
            meta.journal_node = self.opts.journal.as_ref().and(self.opts.node.as_ref()).map(|n| n.as_str().to_string());
            match self.put_meta(&meta, etag).await {
                Ok(etag) => {
                    self.next_seq.store(meta.first_seq(), Ordering::SeqCst);
                    self.start_versions(meta.epoch);
                    *self.meta.lock().expect("poisoned") = (meta, etag);
                    return Ok(());
                }
                Err(ObjectError::Indeterminate(_)) | Err(ObjectError::PreconditionFailed) => {
                    let found = S3Volume::read_meta(&*self.store, &self.url)
                        .await?
                        .ok_or_else(|| format!("{} vanished", self.url))?;
                    *self.meta.lock().expect("poisoned") = found;
                }
                Err(e) => return Err(format!("cannot update the metadata of {}: {e}", self.url)),
            }
        }
        Err(format!("cannot update the metadata of {}: it keeps changing", self.url))
    }

    async fn load_chunk_list(&self) -> Result<(), String> {
        let prefix = self.url.key(CHUNKS_DIR);
        let keys = super::list_all(&*self.store, &prefix).await.map_err(|e| format!("cannot list {prefix}: {e}"))?;
        let chunks = self.capacity.load(Ordering::Relaxed).div_ceil(self.chunk_size);
        let compressed = self.meta().compression.is_some();
        let mut cache = self.cache();
        let mut versions = Vec::new();
        let mut etags = BTreeMap::new();
        for crate::s3::Listed { key, size, etag } in keys {
            let tombstone = size == 0;
            match format::parse_chunk_key(&key, &prefix, self.layout) {
                // A compressed chunk's stored size says nothing of its length.
                Some((c, version))
                    if c < chunks
                        && (size == self.chunk_len(c)
                            || compressed && !tombstone
                            || tombstone && version.is_some()) =>
                {
                    let version = version.unwrap_or(0);
                    if let Some(etag) = etag {
                        etags.insert((c, version), etag);
                    }
                    versions.push((c, version, tombstone));
                }
                _ => tracing::warn!(key, size, "unexpected object among the chunks: ignored"),
            }
        }
        let data = match self.layout {
            format::ChunkLayout::Versioned => self.note_listed(&mut cache, versions),
            format::ChunkLayout::Flat => versions.iter().map(|(c, _, _)| *c).collect(),
        };
        // A clone's chunks it has neither written nor zeroed are its ancestors'.
        let planted = crate::mutants::active(crate::mutants::Mutant::CloneForgetsInherited);
        let inherited: Vec<u64> = cache
            .inherited
            .keys()
            .copied()
            .filter(|c| *c < chunks && !cache.live.contains_key(c) && !cache.tombstones.contains_key(c))
            .filter(|_| !planted)
            .collect();
        for c in data.into_iter().chain(inherited) {
            cache.exists.insert(c);
            cache.known.insert(c);
            let version = cache.live.get(&c).copied().unwrap_or(0);
            if let Some(etag) = etags.get(&(c, version)) {
                cache.versions.insert(c, disk_cache::version_of(etag));
            }
        }
        tracing::info!(volume = %self.url, chunks = cache.exists.len(), "volume opened");
        Ok(())
    }

    /// Opens the disk cache tier, if configured; without it if it cannot be opened (it only
    /// saves requests).
    async fn open_disk_cache(&self) {
        let Some(opts) = &self.opts.disk_cache else { return };
        let versions = self.cache().versions.clone();
        match DiskCache::open(opts, &self.uuid, &versions).await {
            Ok(disk) => {
                tracing::info!(volume = %self.url, bytes = disk.bytes(), "disk cache opened");
                let _ = self.disk.set(Arc::new(disk));
            }
            Err(e) => tracing::warn!(volume = %self.url, error = %e, "the disk cache is off"),
        }
    }

    // ---- claims: one mutation in flight per chunk ----

    /// Claims every chunk of `chunks` for a mutation, waiting for claims held by others.
    async fn claim(&self, chunks: &[u64]) -> Claim<'_> {
        loop {
            let released = self.released.notified();
            {
                let mut cache = self.cache();
                if chunks.iter().all(|c| !cache.inflight.contains(c)) {
                    for &c in chunks {
                        cache.inflight.insert(c);
                        cache.bump_change_stamp(c);
                        // Its object may change from now on.
                        cache.versions.remove(&c);
                    }
                    return Claim { volume: self, chunks: chunks.to_vec() };
                }
            }
            released.await;
        }
    }

    /// Whether this holder serves what needs no request while its lease lapsed (waiting for the
    /// store to come back): not in a failover pair, where the standby may have taken over.
    pub(super) fn serves_lapsed(&self) -> bool {
        !self.opts.failover || crate::mutants::active(crate::mutants::Mutant::LapsedHolderServes)
    }

    /// Whether a command may be served now: while this holder's lease is valid, and while it
    /// lapsed unless in a failover pair (there the command waits for a renewal, up to its
    /// deadline, then NOT READY).
    pub(super) async fn may_serve(&self, what: &str) -> StoreResult<()> {
        self.may_serve_by(what, self.command_deadline()).await
    }

    /// [`S3Volume::may_serve`] within a command's deadline.
    async fn may_serve_by(&self, what: &str, deadline: Deadline) -> StoreResult<()> {
        if self.serves_lapsed() {
            return self.lease.check_held(what);
        }
        if self.lease.check(what).is_ok() {
            return Ok(());
        }
        self.patiently_by(what, deadline, || async { self.lease.check(what) }).await
    }

    // ---- writes ----

    /// The volume reads and writes whole blocks (its cache, logs and checks count in them): a
    /// request for part of one is refused, never answered with zeros.
    pub(super) fn whole_blocks(&self, offset: u64, len: u64) -> Result<(), String> {
        let bs = self.block_size;
        match offset.is_multiple_of(bs) && len.is_multiple_of(bs) {
            true => Ok(()),
            false => Err(format!("{len} bytes at {offset} are not whole {bs}-byte blocks")),
        }
    }

    async fn write_impl(&self, offset: u64, data: Bytes, fua: bool) -> StoreResult<()> {
        self.whole_blocks(offset, data.len() as u64).map_err(StoreError::Write)?;
        let deadline = self.command_deadline();
        self.may_serve_by("write", deadline).await?;
        self.write_within_limit(offset, &data, deadline).await?;
        if fua || !self.write_back.load(Ordering::Relaxed) {
            // FUA (and write-through): this write and every one acknowledged before it are
            // durable on return.
            return self.flush_all_by(deadline).await;
        }
        Ok(())
    }

    /// Copies a write into the cache, chunk by chunk.
    fn copy_write(&self, cache: &mut Cache, offset: u64, data: &[u8]) {
        cache.writes += 1;
        let now = self.clock.now();
        for ChunkPiece { chunk: c, within, len: n, pos } in self.chunk_pieces(offset, data.len() as u64) {
            let piece = &data[pos..pos + n as usize];
            if crate::mutants::active(crate::mutants::Mutant::ChunkOffByOne)
                && within + n == self.chunk_size
                && (c + 1) * self.chunk_size < self.capacity()
            {
                // Planted bug: the chunk's last block lands at the end of the next chunk.
                let bs = self.block_size as usize;
                self.write_piece(cache, c, within, &piece[..piece.len() - bs], now, true);
                self.write_piece(cache, c + 1, within + n - bs as u64, &piece[piece.len() - bs..], now, true);
            } else {
                self.write_piece(cache, c, within, piece, now, true);
            }
        }
    }

    /// The pieces of `[offset, offset + len)` within each chunk it spans, in order.
    fn chunk_pieces(&self, offset: u64, len: u64) -> impl Iterator<Item = ChunkPiece> + use<> {
        let chunk_size = self.chunk_size;
        let end = offset + len;
        let mut at = offset;
        std::iter::from_fn(move || {
            (at < end).then(|| {
                let within = at % chunk_size;
                let piece = ChunkPiece {
                    chunk: at / chunk_size,
                    within,
                    len: (chunk_size - within).min(end - at),
                    pos: (at - offset) as usize,
                };
                at += piece.len;
                piece
            })
        })
    }

    /// Applies a write to the cache. `unlogged`: the data is not durable yet (false when
    /// replaying a log, whose records are).
    fn write_piece(&self, cache: &mut Cache, c: u64, within: u64, piece: &[u8], now: Duration, unlogged: bool) {
        let bs = self.block_size;
        let n = self.blocks_per_chunk();
        let (b0, b1) = ((within / bs) as usize, ((within + piece.len() as u64) / bs) as usize);
        let zeros = is_zero(piece);
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
        self.note_cache(cache);
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
            if cache.page_bytes.saturating_add(need) <= self.cache_limit {
                break;
            }
            if let Some(e) = cache.entries.remove(&c) {
                cache.page_bytes -= (e.pages.len() * PAGE) as u64;
            }
        }
    }

    /// SYNCHRONIZE CACHE: every write acknowledged before the call is durable on success.
    /// A background flush failure since the last call is reported here, once.
    async fn flush_all(&self) -> StoreResult<()> {
        self.flush_all_by(self.command_deadline()).await
    }

    /// [`S3Volume::flush_all`] within a command's deadline.
    async fn flush_all_by(&self, deadline: Deadline) -> StoreResult<()> {
        self.may_serve_by("SYNCHRONIZE CACHE", deadline).await?;
        let wanted = self.cache().writes;
        self.patiently_by("SYNCHRONIZE CACHE", deadline, || self.make_durable(wanted)).await?;
        // Taken only by a flush that succeeded: one that failed leaves it to the next.
        let sticky = self.sticky_error.lock().expect("poisoned").take();
        match sticky {
            Some(e) => Err(StoreError::Write(format!("an earlier background flush failed: {e}"))),
            None => Ok(()),
        }
    }

    /// Group commit: makes the first `wanted` writes durable. One caller at a time logs all
    /// that is unlogged, covering every write copied in before it started; the callers that
    /// waited meanwhile find their writes covered and return, or the first of them logs the
    /// rest for all. So concurrent SYNCs and FUA writes share log PUTs.
    async fn make_durable(&self, wanted: u64) -> StoreResult<()> {
        if self.durable_writes.load(Ordering::SeqCst) >= wanted {
            return Ok(());
        }
        let _waiting = Waiting::count(&self.sync_waiters);
        self.sync_arrived.notify_waiters();
        let _leader = self.sync_lock.lock().await;
        if self.durable_writes.load(Ordering::SeqCst) >= wanted {
            return Ok(());
        }
        self.gather_group().await;
        // Writes copied in up to here are in the cache, unlogged or already durable; every
        // caller waiting now copied its write before it waited.
        let (covers, group) = (self.cache().writes, self.sync_waiters.load(Ordering::SeqCst));
        let started = self.clock.now();
        self.make_unlogged_durable().await?;
        self.durable_writes.fetch_max(covers, Ordering::SeqCst);
        *self.last_group.lock().expect("poisoned") = (group, self.clock.now().saturating_sub(started));
        Ok(())
    }

    /// Gathers a group before its flush. The callers a flush covered come back one after the
    /// other once it ends (each initiator's round trip later): flushing for the first alone
    /// would leave the others to wait out that flush and one more. So the leader waits until
    /// as many wait as the last flush covered, for a quarter of its duration at most (5 ms
    /// at most); a lone syncer never waits.
    async fn gather_group(&self) {
        let (group, took) = *self.last_group.lock().expect("poisoned");
        if group <= 1 || self.planted.groups_scatter.load(Ordering::Relaxed) {
            return;
        }
        let deadline = self.clock.now() + (took / 4).min(Duration::from_millis(5));
        loop {
            let arrived = self.sync_arrived.notified();
            if self.sync_waiters.load(Ordering::SeqCst) >= group {
                return;
            }
            tokio::select! {
                _ = arrived => {}
                _ = self.clock.sleep_until(deadline) => return,
            }
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
            // Clean pages (read cache) give way to writes at no cost: only dirty ones press.
            let dirty_pages: usize = cache.entries.values().filter(|e| !e.is_clean()).map(|e| e.pages.len()).sum();
            let pressured = (dirty_pages * PAGE) as u64 > self.cache_limit / 2;
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
        let logged = match unlogged_due.is_empty() {
            true => Ok(()),
            // Into the journal, which the upload below empties soon after.
            false if self.journal_has_room() => self.make_unlogged_durable().await,
            false => self.make_chunks_durable(&unlogged_due).await,
        };
        let uploaded = self.upload_journal().await;
        let merged = self.merge_chunks(&merge_due).await;
        let deleted = self.delete_settled_logs_when_due().await;
        match logged.and(uploaded).and(merged).and(deleted) {
            Err(e) if self.worth_waiting(&e) => self.note_unreachable(&e),
            Err(e) => self.note_background_error(&e),
            Ok(()) if !unlogged_due.is_empty() || !merge_due.is_empty() => self.note_reachable(),
            Ok(()) => {}
        }
    }

    fn mapped(&self, cache: &Cache, c: u64) -> bool {
        match cache.entries.get(&c) {
            // Zeroed and not merged yet (a clean entry is what its object holds).
            Some(e) if e.valid.is_full() && e.pages.is_empty() && !e.is_clean() => false,
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

    /// Stops all object store traffic at once, as if the process died: the cache is abandoned,
    /// nothing more is written, the lease is not renewed (nor released). What a close that
    /// failed does; tests use it as a crash.
    pub fn abandon(&self) {
        if let Some(keeper) = self.keeper.lock().expect("poisoned").take() {
            keeper.abort();
        }
        self.lease.end(lease::Ended::Closed);
    }

    /// Merges everything, deletes the logs and releases the lease (clean shutdown).
    /// If that fails, the volume stops anyway (no more writes or renewals) but keeps its lease
    /// record: the data it could not merge was never acknowledged as durable, and the next
    /// open replays its logs.
    pub async fn close(&self) -> StoreResult<()> {
        let merged = async {
            self.lease.check("close")?;
            self.settle_everything().await
        };
        let kept = match merged.await {
            Ok(()) => Ok(()),
            Err(e) => self.keep_in_logs(e).await,
        };
        match kept {
            Ok(()) => {
                self.settle_this_epoch().await;
                self.let_go().await;
                Ok(())
            }
            Err(e) => {
                self.abandon();
                Err(e)
            }
        }
    }

    /// After a clean close left no log: records that every log of this epoch is settled, so
    /// that none that lands late (a PUT held on its way) is replayed by the next open.
    async fn settle_this_epoch(&self) {
        if !self.cache().logs.is_empty() {
            return;
        }
        let next = self.next_seq.load(Ordering::SeqCst);
        if let Err(e) = self.raise_settled_floor(next).await {
            tracing::warn!(volume = %self.url, error = %e, "the logs are settled, but the metadata does not say so");
        }
    }

    /// Merges every dirty chunk, deletes every settled log and sweeps the garbage: a clean
    /// close without letting the lease go.
    pub(super) async fn settle_everything(&self) -> StoreResult<()> {
        let dirty = self.dirty_chunks();
        self.merge_chunks(&dirty).await?;
        let _no_uploads = self.upload_lock.lock().await;
        self.delete_settled_logs().await?;
        self.sweep_garbage().await;
        Ok(())
    }

    /// After the merges of a close failed (a store too slow for whole chunks, or away): every
    /// write put in the object store's logs, which are small, so that the lease can still go.
    /// The next holder replays the logs instead of waiting the lease out. `Err(merge_error)`
    /// if that fails too.
    async fn keep_in_logs(&self, merge_error: StoreError) -> StoreResult<()> {
        let in_logs = async {
            self.lease.check("close")?;
            self.log_unlogged().await?;
            self.upload_journal().await?;
            self.lease.check("close")
        };
        let left_behind = |v: &S3Volume| {
            let cache = v.cache();
            cache.entries.values().any(|e| !e.unlogged.is_empty()) || cache.logs.values().any(|l| l.in_journal)
        };
        match in_logs.await {
            Ok(()) if !left_behind(self) => {
                tracing::warn!(
                    volume = %self.url,
                    error = %merge_error,
                    "closing with writes in logs not merged into chunks: the next open replays them"
                );
                Ok(())
            }
            _ => Err(merge_error),
        }
    }
}

/// Bugs a unit test can plant in one volume, to show that its check fails with them. Only
/// tests set them (the simulation's bugs are `crate::mutants`, process-wide).
#[derive(Default)]
struct PlantedBugs {
    /// A new write takes the room before the writes waiting for it (`room.rs`).
    writes_barge: AtomicBool,
    /// A group commit's leader flushes without gathering the group (`gather_group`).
    groups_scatter: AtomicBool,
}

/// Counts one waiter (for room in the cache, for durability) for as long as it lives.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn count(waiters: &'a std::sync::atomic::AtomicUsize) -> Waiting<'a> {
        waiters.fetch_add(1, Ordering::SeqCst);
        Waiting(waiters)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The part of a byte range within one chunk: bytes `[within, within + len)` of `chunk`, at
/// `pos` in the range.
struct ChunkPiece {
    chunk: u64,
    within: u64,
    len: u64,
    pos: usize,
}

/// A claim on chunks for a mutation; released on drop.
struct Claim<'a> {
    volume: &'a S3Volume,
    chunks: Vec<u64>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut cache = self.volume.cache();
        for &c in &self.chunks {
            cache.inflight.remove(&c);
            cache.bump_change_stamp(c);
        }
        drop(cache);
        self.volume.released.notify_waiters();
    }
}

/// Background work of an open volume: age and pressure flushes (the lease renews on a task of
/// its own). Ends when the volume is dropped or its lease ends.
async fn background(volume: Weak<S3Volume>) {
    let (interval, clock) = match volume.upgrade() {
        Some(v) => (v.opts.flush_interval, v.clock.clone()),
        None => return,
    };
    let mut since_report = Duration::ZERO;
    let mut last_requests = 0;
    loop {
        clock.sleep_until(clock.now() + interval).await;
        let Some(v) = volume.upgrade() else { return };
        if let lease::Standing::Ended(_) = v.lease.standing() {
            return;
        }
        v.background_flush().await;
        v.sweep_garbage().await;
        since_report += interval;
        // Counters go to the log once a minute while the volume is busy.
        let requests = v.s3_stats.requests();
        if since_report >= Duration::from_secs(60) && requests != last_requests {
            since_report = Duration::ZERO;
            last_requests = requests;
            tracing::info!(volume = %v.url, stats = ?v.counters(), "S3 volume counters");
        }
    }
}

impl S3Volume {
    /// The volume's counters (as [`BlockStore::stats`] reports them).
    pub fn counters(&self) -> VolumeStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let flushes = l(&self.stats.flushes);
        // Read under one guard, taken in a statement of its own: a guard taken inside the
        // struct literal below would live to its end, and the next lock of the cache there
        // would wait for it forever.
        let (cache_bytes, logs, journal_logs, journal_bytes) = {
            let cache = self.cache();
            (cache.page_bytes, cache.logs.len() as u64, self.journal_copies(&cache), self.journal_bytes(&cache))
        };
        VolumeStats {
            volume: self.url.to_string(),
            block_size: self.block_size,
            chunk_size: self.chunk_size,
            chunks: self.chunk_count() as u64,
            dirty_bytes: self.dirty_bytes(),
            unlogged_bytes: self.unlogged_bytes(),
            cache_bytes,
            cache_limit: self.cache_limit,
            cache_peak_bytes: l(&self.stats.cache_peak),
            memory_peak_bytes: l(&self.stats.memory_peak),
            read_bytes_cached: l(&self.stats.read_bytes_cached),
            read_bytes_fetched: l(&self.stats.read_bytes_fetched),
            read_bytes_disk: l(&self.stats.read_bytes_disk),
            disk_cache_bytes: self.disk.get().map_or(0, |d| d.bytes()),
            readahead_bytes: l(&self.stats.readahead_bytes),
            logs,
            logs_written: l(&self.stats.logs_written),
            log_bytes_written: l(&self.stats.log_bytes),
            merges: l(&self.stats.merges),
            flush_errors: l(&self.stats.flush_errors),
            flush_latency_avg_us: l(&self.stats.flush_micros_total).checked_div(flushes).unwrap_or(0),
            flush_latency_max_us: l(&self.stats.flush_micros_max),
            chunks_deleted: l(&self.stats.chunks_deleted),
            versions_swept: l(&self.stats.versions_swept),
            journal: self.opts.journal.is_some(),
            journal_logs,
            journal_bytes,
            journal_writes: l(&self.stats.journal_writes),
            journal_uploads: l(&self.stats.journal_uploads),
            s3_unreachable_ms: self.unreachable_for().as_millis() as u64,
            s3: self.s3_stats.snapshot(),
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
            atomic_write_max: crate::storage::ATOMIC_WRITE_MAX,
        }
    }

    fn read(&self, offset: u64, len: usize) -> BoxFuture<'_, StoreResult<Bytes>> {
        Box::pin(self.read_impl(offset, len))
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> BoxFuture<'_, StoreResult<()>> {
        // No snapshot gate: see the field's comment.
        Box::pin(self.write_impl(offset, data, fua))
    }

    fn write_atomic(&self, offset: u64, data: Bytes, _fua: bool) -> BoxFuture<'_, StoreResult<()>> {
        // Durable on return (its own log), so FUA or not makes no difference.
        Box::pin(self.write_atomic_impl(offset, data))
    }

    fn flush(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.flush_all())
    }

    fn unmap(&self, offset: u64, len: u64) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let _gate = self.snapshot_gate.read().await;
            self.unmap_impl(offset, len).await
        })
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
            self.lease.check("resize")?;
            self.edit_meta(|meta| {
                if capacity < meta.size {
                    return Err("shrinking would lose data".to_string());
                }
                meta.size = capacity;
                Ok(true)
            })
            .await?;
            self.capacity.store(capacity, Ordering::Relaxed);
            Ok(())
        })
    }

    fn snapshots(&self) -> Option<&dyn crate::storage::snapshots::Snapshots> {
        Some(self)
    }

    fn crypto_erase(&self) -> Option<&dyn crate::storage::crypto_erase::CryptoErase> {
        self.offers_crypto_erase().then_some(self as &dyn crate::storage::crypto_erase::CryptoErase)
    }

    fn set_write_cache(&self, enabled: bool) {
        self.write_back.store(enabled, Ordering::Relaxed);
    }

    fn formatted_block_size(&self) -> Option<u32> {
        Some(self.block_size as u32)
    }

    fn stats(&self) -> StoreStats {
        StoreStats::S3Volume(Box::new(self.counters()))
    }

    fn shutdown(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.close())
    }

    fn ready(&self) -> Result<(), String> {
        match self.serves_lapsed() {
            true => self.lease.check_held("I/O"),
            false => self.lease.check("I/O"),
        }
        .map_err(|e| e.to_string())
    }

    fn failed(&self) -> BoxFuture<'_, String> {
        Box::pin(async move { format!("{}: the lease was taken over by {}", self.url, self.lease.taken_over().await) })
    }
}

#[cfg(test)]
mod tests;
