//! Building what a configuration describes: each LUN's backing store (files, block devices,
//! io_uring, memory, null, S3 volumes and their object stores), its logical unit, and the
//! registry's targets. The configuration's schema and validation stay in `config.rs`; this is
//! the part that knows every backend.

use super::*;
use crate::scsi::{LogicalUnit, LuConfig, LuIdentity};
use crate::server::{Registry, TargetEntry};
use crate::storage::uring::UringOptions;
use crate::storage::{BlockStore, FileStore, MemoryStore, NullStore, UringStore};

/// What building the stores needs from the running process.
#[derive(Clone)]
pub struct BuildContext {
    pub clock: Arc<dyn crate::clock::Clock>,
    /// The embedded object store, reached in-process by LUNs with `endpoint = "embedded"`.
    pub embedded: Option<Arc<crate::s3::local::LocalRoot>>,
    /// The node this process runs as, held locked (see `node.rs`): a lease this node held
    /// before a crash is taken back at once. None: every old lease is waited out.
    pub node: Option<crate::node::NodeId>,
    /// Lease holder name of this process.
    pub holder: String,
    /// Local stores open in this process (each locked once, shared by its LUNs).
    pub journals: Arc<std::sync::Mutex<BTreeMap<PathBuf, Arc<crate::s3::local::LocalRoot>>>>,
    /// Journals open in this process, by `cache_dir` (each locked once, shared by its LUNs).
    pub journal_segments: Arc<std::sync::Mutex<BTreeMap<PathBuf, crate::s3::local::SegmentStore>>>,
    pub seed: u64,
}

impl Default for BuildContext {
    fn default() -> Self {
        BuildContext::new()
    }
}

impl BuildContext {
    pub fn new() -> BuildContext {
        let pid = std::process::id();
        // Production only (the simulation builds its world without a BuildContext).
        let seed = crate::rng::os_seed();
        BuildContext {
            clock: Arc::new(crate::clock::TokioClock::new()),
            embedded: None,
            node: None,
            holder: format!("{}/{pid}/{:08x}", hostname(), crate::rng::Rng::seeded(seed).next_u64() as u32),
            journals: Arc::default(),
            journal_segments: Arc::default(),
            seed,
        }
    }

    /// The journal in `dir` (`dir/journal-segments`), opened (and locked) once per process,
    /// with the logs of an earlier version's journal (a local store bucket in `dir`) moved in.
    pub fn journal_store(&self, dir: &Path) -> Result<Arc<dyn crate::s3::ObjectStore>, String> {
        use crate::s3::local::{Offload, SEGMENT_BYTES, SegmentOptions, SegmentStore, StdFs};
        let mut open = self.journal_segments.lock().expect("poisoned");
        if let Some(store) = open.get(dir) {
            return Ok(Arc::new(store.clone()));
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("cache_dir {}: {e}", dir.display()))?;
        let opts = |offload| SegmentOptions { offload, etag_seed: self.seed, segment_bytes: SEGMENT_BYTES };
        let segments = dir.join(JOURNAL_SEGMENTS_DIR);
        let open_at = |offload| {
            SegmentStore::open(Arc::new(StdFs), &segments, opts(offload))
                .map_err(|e| format!("cache_dir {}: {e}", dir.display()))
        };
        move_old_journal(dir, &open_at(Offload::Inline)?)?;
        let store = open_at(Offload::BlockingPool)?;
        open.insert(dir.to_path_buf(), store.clone());
        Ok(Arc::new(store))
    }
    /// The disk cache's store under `dir` (`cache_disk_size`): a local store of its own, in
    /// `dir/read-cache`, that does not fsync (its entries are checked when read).
    pub fn disk_cache_store(&self, dir: &Path) -> Result<Arc<dyn crate::s3::ObjectStore>, String> {
        let bucket = crate::s3::volume::DISK_CACHE_BUCKET;
        self.local_bucket(&dir.join(bucket), bucket, false)
    }

    /// A bucket of the local store in `dir` (one per directory in this process; `durable` as
    /// [`LocalOptions::durable`](crate::s3::local::LocalOptions)).
    fn local_bucket(&self, dir: &Path, bucket: &str, durable: bool) -> Result<Arc<dyn crate::s3::ObjectStore>, String> {
        use crate::s3::local::{LocalOptions, LocalRoot, Offload, StdFs};
        let mut journals = self.journals.lock().expect("poisoned");
        let root = match journals.get(dir) {
            Some(root) => root.clone(),
            None => {
                std::fs::create_dir_all(dir).map_err(|e| format!("cache_dir {}: {e}", dir.display()))?;
                let options = LocalOptions {
                    offload: Offload::BlockingPool,
                    etag_seed: self.seed,
                    durable,
                    remember_clean_close: durable,
                };
                let root = LocalRoot::open(Arc::new(StdFs), dir, options)
                    .map_err(|e| format!("cache_dir {}: {e}", dir.display()))?;
                journals.insert(dir.to_path_buf(), root.clone());
                root
            }
        };
        root.create_bucket(bucket)?;
        Ok(Arc::new(root.bucket(bucket)?))
    }
}

/// Where in the data directory the persistent reservations of file LUNs are kept (APTPL),
/// one file per logical unit named by its NAA designator.
pub const RESERVATIONS_DIR: &str = "reservations";
/// Under the data directory: the intent files of atomic writes to file and device LUNs.
pub const ATOMIC_WRITES_DIR: &str = "atomic-writes";

/// Where in a `cache_dir` the journal of `durability = "local"` keeps its segments.
/// Moves the logs of the journal earlier versions kept (a bucket of a local store in `dir`)
/// into `to`, so that a node that crashed before an upgrade replays them after it; then
/// removes that bucket.
fn move_old_journal(dir: &Path, to: &crate::s3::local::SegmentStore) -> Result<(), String> {
    use crate::s3::local::{LocalOptions, LocalRoot, Offload, StdFs};
    use crate::s3::{Condition, ObjectStore};
    let bucket = crate::s3::volume::format::JOURNAL_BUCKET;
    if !dir.join(bucket).is_dir() {
        return Ok(());
    }
    let failed = |e: String| format!("cache_dir {}: cannot move the journal of an earlier version: {e}", dir.display());
    let options = LocalOptions { offload: Offload::Inline, etag_seed: 0, durable: true, remember_clean_close: false };
    let old = LocalRoot::open(Arc::new(StdFs), dir, options).and_then(|root| root.bucket(bucket)).map_err(failed)?;
    // Both stores run inline: every future is ready when first polled.
    futures::executor::block_on(async {
        for listed in crate::s3::list_all(&old, "").await? {
            let out = old.get(&listed.key, None).await?;
            to.put(&listed.key, out.body, out.meta.metadata, Condition::None).await?;
            old.delete(&listed.key).await?;
        }
        Ok(())
    })
    .map_err(|e: crate::s3::ObjectError| failed(e.to_string()))?;
    tracing::info!(cache_dir = %dir.display(), "moved the journal of an earlier version into {JOURNAL_SEGMENTS_DIR}");
    std::fs::remove_dir_all(dir.join(bucket)).map_err(|e| failed(e.to_string()))
}

pub const JOURNAL_SEGMENTS_DIR: &str = "journal-segments";

impl Config {
    /// Opens the backing store of a LUN.
    pub async fn open_store(&self, l: &LunConfig, ctx: &BuildContext) -> Result<Arc<dyn BlockStore>, String> {
        let size = l.size.map(|s| s.0);
        Ok(match &l.backend {
            Backend::Memory => Arc::new(MemoryStore::new(size.ok_or("size is required")?)),
            Backend::Null => Arc::new(NullStore::new(size.ok_or("size is required")?)),
            Backend::File => {
                let path = self.lun_path(l).ok_or("path is required")?;
                Arc::new(FileStore::open(&path, &self.file_options(l))?)
            }
            Backend::Uring => {
                let path = self.lun_path(l).ok_or("path is required")?;
                let file = self.file_options(l);
                let mut opts = UringOptions::new(file);
                opts.queue_depth = l.queue_depth.unwrap_or(opts.queue_depth);
                opts.direct = l.direct;
                UringStore::open_or_fallback(&path, &opts)?
            }
            Backend::S3 => self.open_s3(l, ctx).await.map_err(|e| e.to_string())?,
            Backend::Unknown(other) => return Err(format!("unknown backend {other:?}")),
        })
    }

    /// The S3 endpoint of a LUN (not the embedded store).
    pub fn s3_endpoint(&self, l: &LunConfig) -> crate::s3::aws::Endpoint {
        crate::s3::aws::Endpoint {
            url: l.endpoint.clone(),
            region: l.region.clone(),
            path_style: l.path_style.unwrap_or(l.endpoint.is_some()),
            access_key_id: l.access_key_id.clone(),
            secret_access_key: l.secret_access_key.clone(),
        }
    }

    /// The object store of an S3 LUN: the embedded store in-process, or an S3 client.
    async fn object_store(
        &self,
        l: &LunConfig,
        url: &crate::s3::url::S3Url,
        ctx: &BuildContext,
    ) -> Result<Arc<dyn crate::s3::ObjectStore>, String> {
        if l.endpoint.as_deref() == Some("embedded") {
            let root = ctx.embedded.as_ref().ok_or("the embedded object store is not open")?;
            root.create_bucket(&url.bucket)?;
            return Ok(Arc::new(root.bucket(&url.bucket)?));
        }
        Ok(Arc::new(crate::s3::aws::AwsStore::connect(&self.s3_endpoint(l), &url.bucket).await))
    }

    /// A snapshot of an S3 volume, read-only.
    async fn open_snapshot(&self, l: &LunConfig, ctx: &BuildContext) -> Result<Arc<dyn BlockStore>, LunOpenError> {
        let url = crate::s3::url::S3Url::parse(l.url.as_deref().ok_or("url is required")?)?;
        let name = crate::storage::snapshots::SnapshotName::parse(l.snapshot.as_deref().unwrap_or_default())
            .map_err(LunOpenError::Failed)?;
        let store = self.object_store(l, &url, ctx).await?;
        let key = l.encryption_key().map_err(LunOpenError::Failed)?;
        let view = crate::s3::volume::SnapshotView::open(store, &url, &name, key.as_ref()).await?;
        Ok(Arc::new(view))
    }

    async fn open_s3(
        &self,
        l: &LunConfig,
        ctx: &BuildContext,
    ) -> Result<Arc<crate::s3::volume::S3Volume>, LunOpenError> {
        use crate::s3::volume::{CreateSpec, S3Volume, VolumeOptions};
        let url = crate::s3::url::S3Url::parse(l.url.as_deref().ok_or("url is required")?)?;
        let store = self.object_store(l, &url, ctx).await?;
        let create = match (l.create, l.size) {
            (Some(true), Some(size)) => Some(CreateSpec {
                size: size.0,
                block_size: l.block_size.unwrap_or(512),
                chunk_size: l.chunk_size.map_or(DEFAULT_CHUNK_SIZE, |c| c.0),
            }),
            _ => None,
        };
        let cache_dir = l.cache_dir.as_ref().map(|d| if d.is_absolute() { d.clone() } else { self.data_dir().join(d) });
        let journal = match (l.durability, &cache_dir) {
            (Some(Durability::Local), Some(dir)) => Some(crate::s3::volume::JournalOptions {
                store: ctx.journal_store(dir)?,
                bytes_max: l.journal_size.map_or(DEFAULT_JOURNAL_SIZE, |s| s.0),
            }),
            _ => None,
        };
        let disk_cache = match (l.cache_disk_size, &cache_dir) {
            (Some(size), Some(dir)) => {
                Some(crate::s3::volume::DiskCacheOptions { store: ctx.disk_cache_store(dir)?, bytes_max: size.0 })
            }
            _ => None,
        };
        let opts = VolumeOptions {
            create,
            force: l.force,
            failover: l.failover,
            encryption: l.encryption_key().map_err(LunOpenError::Failed)?,
            compression: l.compression,
            journal,
            disk_cache,
            cache_bytes: l.cache_size.map_or(DEFAULT_CACHE_SIZE, |c| c.0),
            holder: ctx.holder.clone(),
            node: ctx.node.clone(),
            seed: ctx.seed,
            ..VolumeOptions::default()
        };
        let volume = S3Volume::open(store, url, opts, ctx.clock.clone()).await?;
        if let Some(bs) = l.block_size
            && bs != volume.meta().block_size
        {
            return Err(LunOpenError::Failed(format!(
                "the volume has {}-byte blocks, the configuration says {bs}",
                volume.meta().block_size
            )));
        }
        Ok(volume)
    }

    /// The SCSI settings of a LUN with this block size.
    pub fn lu_config(&self, target: &str, l: &LunConfig, block_size: u32) -> LuConfig {
        let mut identity = LuIdentity::derived(&identity_name(target, l));
        if let Some(serial) = &l.serial {
            identity.serial = serial.clone();
        }
        if let Some(Ok(naa)) = l.naa.as_deref().map(parse_naa) {
            identity.naa = naa;
        }
        let mut lu_config = LuConfig::new(block_size, identity);
        lu_config.read_only = l.read_only;
        lu_config.max_transfer_bytes = self.server.max_transfer_bytes;
        lu_config
    }

    /// Where the persistent reservations of a file or block device LUN are kept, by its
    /// identity (an S3 volume keeps its own beside it; memory and null LUNs keep none).
    pub fn reservations_file(&self, target: &str, l: &LunConfig) -> Option<PathBuf> {
        l.backend.is_file().then(|| {
            let naa = self.lu_config(target, l, 512).identity.naa;
            self.data_dir().join(RESERVATIONS_DIR).join(format!("{naa:016x}.json"))
        })
    }

    /// Builds a logical unit from its configuration.
    pub async fn open_lun(
        &self,
        target: &str,
        l: &LunConfig,
        ctx: &BuildContext,
    ) -> Result<Arc<LogicalUnit>, LunOpenError> {
        use crate::pr_keepers::{FileKeeper, VolumeKeeper};
        let (store, keeper): (Arc<dyn BlockStore>, Option<Arc<dyn crate::scsi::ReservationKeeper>>) = match l.backend {
            Backend::S3 if l.snapshot.is_some() => (self.open_snapshot(l, ctx).await?, None),
            Backend::S3 => {
                let volume = self.open_s3(l, ctx).await?;
                (volume.clone(), Some(Arc::new(VolumeKeeper::new(volume))))
            }
            _ => (self.open_store(l, ctx).await?, None),
        };
        // Without a configured block size, an existing volume decides (512 otherwise).
        let block_size = l.block_size.unwrap_or_else(|| store_block_size(&*store));
        let mut lu_config = self.lu_config(target, l, block_size);
        // A snapshot never changes.
        lu_config.read_only |= l.snapshot.is_some();
        let keeper =
            keeper.or_else(|| self.reservations_file(target, l).map(|path| Arc::new(FileKeeper::new(path)) as _));
        let mut lu = LogicalUnit::new(store, lu_config)?;
        if let Some(keeper) = keeper {
            lu.keep_reservations(keeper).await?;
        }
        Ok(Arc::new(lu))
    }

    /// What a LUN serves until it is open: NOT READY, with its identity.
    pub fn placeholder(
        &self,
        target: &str,
        l: &LunConfig,
        why: &str,
    ) -> Result<crate::server::supervisor::Placeholder, String> {
        let config = self.lu_config(target, l, l.block_size.unwrap_or(512));
        crate::server::supervisor::Placeholder::new(config, l.size.map(|s| s.0), why)
    }

    /// Opens a LUN anew at every call (for its supervisor). `force` takes an S3 volume over
    /// until it is first open: a volume another target took later is not taken back by force.
    pub fn opener(&self, target: &str, l: &LunConfig, ctx: &BuildContext) -> crate::server::supervisor::Opener {
        let (config, target, lun, ctx) = (self.clone(), target.to_string(), l.clone(), ctx.clone());
        let force = Arc::new(std::sync::atomic::AtomicBool::new(l.force));
        Arc::new(move || {
            let (config, target, mut lun, ctx, force) =
                (config.clone(), target.clone(), lun.clone(), ctx.clone(), force.clone());
            lun.force = force.load(std::sync::atomic::Ordering::Relaxed);
            Box::pin(async move {
                let opened = config.open_lun(&target, &lun, &ctx).await;
                if opened.is_ok() {
                    force.store(false, std::sync::atomic::Ordering::Relaxed);
                }
                opened
            })
        })
    }

    /// Fills a registry with the configured portal groups, targets and LUNs.
    pub async fn populate(&self, registry: &Registry, ctx: &BuildContext) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        match self.discovery_chap.as_ref().map(ChapConfig::resolve).transpose() {
            Ok(chap) => registry.set_discovery_chap(chap),
            Err(e) => problems.push(format!("discovery_chap.{e}")),
        }
        for pg in &self.portal_groups {
            let addrs = pg.portals.iter().filter_map(|p| p.parse().ok()).collect();
            registry.set_portal_group(pg.tag, addrs);
        }
        for (i, t) in self.targets.iter().enumerate() {
            let groups: BTreeSet<u16> = match &t.portal_groups {
                Some(g) => g.iter().copied().collect(),
                None => self.portal_groups.iter().map(|p| p.tag).collect(),
            };
            let entry = TargetEntry::new(&t.name, t.alias.clone(), groups);
            match t.access() {
                Ok(access) => entry.set_access(access),
                Err(e) => problems.push(format!("target[{i}] ({}).{e}", t.name)),
            }
            for (j, l) in t.luns.iter().enumerate() {
                match self.open_lun(&t.name, l, ctx).await {
                    Ok(lu) => {
                        entry.scsi.set_mask(l.lun, l.mask());
                        if let Err(e) = entry.scsi.add_lun(l.lun, lu) {
                            problems.push(format!("target[{i}] ({}).lun[{j}]: {e}", t.name));
                        }
                    }
                    Err(e) => problems.push(format!("target[{i}] ({}).lun[{j}] (LUN {}): {e}", t.name, l.lun)),
                }
            }
            if let Err(e) = registry.add_target(entry) {
                problems.push(format!("target[{i}]: {e}"));
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError(problems)) }
    }
}

/// Block size a store was formatted with (S3 volumes report it), else 512.
fn store_block_size(store: &dyn BlockStore) -> u32 {
    store.formatted_block_size().unwrap_or(512)
}

/// What a LUN's derived identity (serial, NAA) is a hash of. An S3 volume's location
/// (bucket and prefix, not the endpoint, which nodes may name differently), so that both nodes
/// of a pair, and a LUN renumbered or moved to another target, present one device to multipath.
/// Not the volume's uuid: a LUN answers INQUIRY before its volume opens (NOT READY), and an
/// identity that changed at open would look like another device. Other LUNs: target and LUN.
fn identity_name(target: &str, l: &LunConfig) -> String {
    match (l.url.as_deref().map(crate::s3::url::S3Url::parse), &l.snapshot) {
        // A snapshot is another device than its volume (multipath must not merge them).
        (Some(Ok(url)), Some(snapshot)) if l.backend == Backend::S3 => format!("{url}@{snapshot}"),
        (Some(Ok(url)), None) if l.backend == Backend::S3 => url.to_string(),
        _ => format!("{target}/{}", l.lun),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot served as a LUN is another device than its volume, and read-only.
    #[test]
    fn a_snapshot_lun_has_an_identity_of_its_own() {
        let config = Config::from_toml("").unwrap();
        let volume = LunConfig { url: Some("s3://bkt/v".into()), ..LunConfig::new(0, Backend::S3) };
        let snapshot = LunConfig { snapshot: Some("s1".into()), lun: 1, ..volume.clone() };
        let (a, b) = (config.lu_config("t", &volume, 512), config.lu_config("t", &snapshot, 512));
        assert_ne!(a.identity.serial, b.identity.serial);
        assert_ne!(a.identity.naa, b.identity.naa);
        let moved = LunConfig { lun: 7, ..snapshot.clone() };
        assert_eq!(config.lu_config("other", &moved, 512).identity.naa, b.identity.naa, "the same snapshot anywhere");
    }

    /// A node that crashed with logs in the journal of an earlier version (a local store
    /// bucket in `cache_dir`) replays them after the upgrade: they move to the segments.
    #[tokio::test]
    async fn the_journal_of_an_earlier_version_moves_into_the_segments() {
        use crate::s3::local::{LocalOptions, LocalRoot, Offload, StdFs};
        use crate::s3::{Condition, ObjectStore};
        let dir = tempfile::tempdir().unwrap();
        let bucket = crate::s3::volume::format::JOURNAL_BUCKET;
        {
            let options =
                LocalOptions { offload: Offload::Inline, etag_seed: 0, durable: true, remember_clean_close: false };
            let root = LocalRoot::open(Arc::new(StdFs), dir.path(), options).unwrap();
            root.create_bucket(bucket).unwrap();
            let old = root.bucket(bucket).unwrap();
            let meta = BTreeMap::from([("crc".to_string(), "7".to_string())]);
            old.put("uuid/log/0000000000000003", bytes::Bytes::from_static(b"log"), meta, Condition::None)
                .await
                .unwrap();
        }
        let ctx = BuildContext::default();
        let journal = ctx.journal_store(dir.path()).unwrap();
        let got = journal.get("uuid/log/0000000000000003", None).await.unwrap();
        assert_eq!((&got.body[..], got.meta.metadata["crc"].as_str()), (&b"log"[..], "7"));
        assert!(!dir.path().join(bucket).exists(), "the old journal is gone");
        assert!(dir.path().join(JOURNAL_SEGMENTS_DIR).is_dir());
        drop((journal, ctx));
        let again = BuildContext::default().journal_store(dir.path()).unwrap();
        assert_eq!(again.list("", None).await.unwrap().objects.len(), 1, "kept across a restart");
    }
}
