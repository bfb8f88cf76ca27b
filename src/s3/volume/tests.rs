use std::sync::Arc;
use std::sync::atomic::Ordering;

use proptest::prelude::*;

use super::log::{LOG_DELETE_BACKLOG, LOG_DELETE_INTERVAL};
use super::*;
use crate::clock::TokioClock;
use crate::s3::mem::Faults;
use futures::FutureExt;

use crate::s3::{BoxFuture, GetOutput, MemObjectStore, ObjResult, RetryPolicy};

const BS: u64 = 512;

fn url() -> S3Url {
    S3Url::parse("s3://bucket/vol").unwrap()
}

fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        attempt_timeout: Duration::from_secs(1),
        budget: Duration::from_secs(2),
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(20),
        concurrency: 8,
        ..RetryPolicy::default()
    }
}

struct Harness {
    mem: Arc<MemObjectStore>,
}

impl Harness {
    fn new() -> Harness {
        Harness { mem: Arc::new(MemObjectStore::new()) }
    }

    fn options(&self, chunk: u64, chunks: u64, holder: &str) -> VolumeOptions {
        VolumeOptions {
            create: Some(CreateSpec { size: chunk * chunks, block_size: BS as u32, chunk_size: chunk }),
            cache_bytes: 3 * chunk,
            holder: holder.into(),
            retry: fast_policy(),
            ..VolumeOptions::default()
        }
    }

    async fn open_with(&self, opts: VolumeOptions) -> Result<Arc<S3Volume>, OpenError> {
        S3Volume::open(self.mem.clone(), url(), opts, Arc::new(TokioClock::new())).await
    }

    async fn open(&self, chunk: u64, chunks: u64, holder: &str) -> Result<Arc<S3Volume>, OpenError> {
        self.open_with(self.options(chunk, chunks, holder)).await
    }

    /// Writes the metadata of a volume of format 1 (the flat layout) at `url()`, as an rtgt
    /// before format 3 created it.
    async fn put_flat_volume(&self, chunk: u64, chunks: u64) {
        let flat = VolumeMeta {
            format_version: format::FLAT_FORMAT_VERSION,
            size: chunks * chunk,
            block_size: BS as u32,
            chunk_size: chunk,
            uuid: "00000000-0000-4000-a000-000000000001".into(),
            created_unix_secs: 0,
            epoch: 0,
            journal_node: None,
            encryption: None,
            parent: None,
            compression: None,
            logs_settled_below: 0,
            deleting: false,
            making: false,
        };
        self.mem.put(&url().key(META_NAME), flat.encode(), BTreeMap::new(), Condition::IfNoneMatch).await.unwrap();
    }

    fn chunk_objects(&self) -> BTreeMap<String, Bytes> {
        self.mem.objects().into_iter().filter(|(k, _)| k.starts_with("vol/chunks/")).collect()
    }

    /// The chunk objects that hold data (not tombstones).
    fn chunk_data_objects(&self) -> BTreeMap<String, Bytes> {
        self.chunk_objects().into_iter().filter(|(_, b)| !b.is_empty()).collect()
    }

    /// Flips a bit of the first chunk object in the store, its metadata kept; its key and
    /// metadata.
    async fn flip_a_bit_of_the_first_chunk(&self) -> (String, BTreeMap<String, String>) {
        let key = self.chunk_objects().keys().next().unwrap().clone();
        let mut body = self.mem.objects()[&key].to_vec();
        body[100] ^= 1;
        let meta = self.mem.get(&key, None).await.unwrap().meta.metadata;
        self.mem.put(&key, Bytes::from(body), meta.clone(), Condition::None).await.unwrap();
        (key, meta)
    }
}

/// A store too slow for whole chunks when the volume closes: its writes stay in logs, the
/// lease goes, and the next holder opens at once (no lease to wait out) with every write.
#[tokio::test(start_paused = true)]
async fn a_close_whose_merges_fail_leaves_logs_and_lets_the_lease_go() {
    let h = Harness::new();
    let v = h.open(64 * 1024, 4, "a").await.unwrap();
    v.write(0, block(1), true).await.unwrap();
    v.write(512, block(2), false).await.unwrap();
    h.mem.hold("vol/chunks/");
    v.close().await.expect("closed, with its writes in logs");
    h.mem.release_all();
    let logs = h.mem.objects().into_keys().filter(|k| k.contains("/log/")).count();
    assert!(logs > 0, "the writes are in logs");
    let started = tokio::time::Instant::now();
    let w = h.open(64 * 1024, 4, "b").await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "opened after {:?}: the lease was kept", started.elapsed());
    assert_eq!(w.read(0, 1024).await.unwrap(), [block(1), block(2)].concat());
}

/// Part of a block is refused, never read as zeros or half written.
#[tokio::test(start_paused = true)]
async fn requests_for_part_of_a_block_are_refused() {
    let h = Harness::new();
    let v = h.open(64 * 1024, 4, "a").await.unwrap();
    v.write(0, block(3), false).await.unwrap();
    assert!(matches!(v.read(0, 8).await, Err(StoreError::Read(m)) if m.contains("not whole 512-byte blocks")));
    assert!(matches!(v.read(8, 512).await, Err(StoreError::Read(_))));
    assert!(matches!(v.write(0, Bytes::from_static(b"short"), false).await, Err(StoreError::Write(_))));
    assert_eq!(v.read(0, 512).await.unwrap(), block(3), "nothing changed");
}

fn block(fill: u8) -> Bytes {
    Bytes::from(vec![fill; BS as usize])
}

#[tokio::test(start_paused = true)]
async fn sparse_reads_send_no_get_and_zeros_are_elided() {
    let h = Harness::new();
    let v = h.open(64 * 1024, 16, "a").await.unwrap();
    let gets = || v.s3_stats().get.load(Ordering::Relaxed);
    let before = gets();
    assert_eq!(v.read(0, 1 << 20).await.unwrap(), vec![0u8; 1 << 20]);
    assert_eq!(gets(), before, "no GET for chunks that do not exist");

    v.write(70 * 1024, Bytes::from(vec![5u8; 4096]), false).await.unwrap();
    v.close().await.unwrap();
    assert_eq!(h.chunk_objects().len(), 1);
    let v = h.open(64 * 1024, 16, "a").await.unwrap();
    assert_eq!(v.read(70 * 1024, 4096).await.unwrap(), vec![5u8; 4096]);
    // Writing zeros over the only data leaves a tombstone (its data version is swept).
    v.write(70 * 1024, Bytes::from(vec![0u8; 4096]), false).await.unwrap();
    v.close().await.unwrap();
    assert!(h.chunk_data_objects().is_empty());
    assert_eq!(h.chunk_objects().len(), 1, "the tombstone");
}

#[tokio::test(start_paused = true)]
async fn full_chunk_writes_skip_the_read_and_partial_ones_merge() {
    let h = Harness::new();
    let chunk = 64 * 1024;
    let v = h.open(chunk, 8, "a").await.unwrap();
    let gets_at_open = v.s3_stats().get.load(Ordering::Relaxed);
    v.write(0, Bytes::from(vec![1u8; chunk as usize]), false).await.unwrap();
    v.flush().await.unwrap();
    assert_eq!(v.s3_stats().get.load(Ordering::Relaxed), gets_at_open, "a full-chunk write reads nothing");
    assert_eq!(h.chunk_objects().len(), 1, "a whole chunk is merged, not logged");
    // Only the log naming the chunk before its merge (`log.rs`): one block, not the chunk.
    let logged = v.counters().log_bytes_written;
    assert!(logged < 4096, "{logged} bytes of logs for a merged chunk");
    v.close().await.unwrap();
    drop(v);
    let v = h.open(chunk, 8, "a").await.unwrap();
    v.write(512, block(2), false).await.unwrap();
    v.flush().await.unwrap();
    assert_eq!(v.log_count(), 1, "a small write is logged");
    v.close().await.unwrap();
    let data = v.read(0, 2048).await.unwrap();
    assert_eq!(&data[..512], &[1u8; 512]);
    assert_eq!(&data[512..1024], &[2u8; 512]);
    assert_eq!(&data[1024..], &[1u8; 1024]);
}

#[tokio::test(start_paused = true)]
async fn corruption_and_short_objects_are_errors_not_zeros() {
    let h = Harness::new();
    let chunk = 64 * 1024;
    let v = h.open(chunk, 4, "a").await.unwrap();
    v.write(0, Bytes::from(vec![9u8; chunk as usize]), true).await.unwrap();
    v.close().await.unwrap();
    drop(v);
    let (key, meta) = h.flip_a_bit_of_the_first_chunk().await;
    let v = h.open(chunk, 4, "a").await.unwrap();
    assert!(matches!(v.read(0, 512).await, Err(StoreError::Read(m)) if m.contains("checksum")));
    h.mem.put(&key, Bytes::from(vec![9u8; 100]), meta, Condition::None).await.unwrap();
    assert!(v.read(0, 512).await.is_err());
}

// ---------------------------------------------------------------- encryption

/// A key file and the options of an encrypted volume with it.
fn encrypted(h: &Harness, dir: &tempfile::TempDir, key: [u8; 32], chunk: u64) -> VolumeOptions {
    let path = dir.path().join(format!("key-{:02x}", key[0]));
    std::fs::write(&path, key).unwrap();
    let source = keys::KeySource::Key(keys::Held::File(path));
    VolumeOptions { encryption: Some(source), ..h.options(chunk, 4, "a") }
}

/// Text-like bytes, as databases and logs write.
fn text(len: usize) -> Bytes {
    let words: &[&[u8]] = &[b"lease ", b"chunk ", b"2026-12-05 ", b"INSERT INTO t VALUES (", b"42);\n", b"snapshot "];
    let mut rng = crate::rng::Rng::seeded(7);
    let mut out = Vec::with_capacity(len + 32);
    while out.len() < len {
        out.extend_from_slice(words[rng.below(words.len() as u64) as usize]);
    }
    out.truncate(len);
    Bytes::from(out)
}

/// A compressed volume (format 5) stores text in less than half its size, reads it back by
/// ranges and whole, after a crash and a reopen, and a flipped bit in a chunk is a read error.
#[tokio::test(start_paused = true)]
async fn a_compressed_volume_stores_text_in_half_and_reads_it_back_through_a_crash() {
    for codec in [Compression::Zstd, Compression::Lz4] {
        let h = Harness::new();
        let chunk = 256 * 1024u64;
        let opts = || VolumeOptions { compression: Some(codec), ..h.options(chunk, 4, "a") };
        let v = h.open_with(opts()).await.unwrap();
        assert_eq!((v.meta().format_version, v.meta().compression), (format::COMPRESSED_FORMAT_VERSION, Some(codec)));
        let data = text(3 * chunk as usize);
        v.write(0, data.clone(), true).await.unwrap();
        v.close().await.unwrap();
        let stored: usize = h.chunk_objects().values().map(Bytes::len).sum();
        assert!(stored * 2 < data.len(), "{codec}: {stored} bytes stored for {}", data.len());
        // What went up is what was stored (retries resend the compressed bytes), not the text.
        let up = v.s3_stats().bytes_up.load(Ordering::Relaxed) as usize;
        assert!(up < data.len(), "{codec}: {up} bytes sent for {} stored", stored);
        drop(v);

        let v = h.open_with(opts()).await.unwrap();
        assert_eq!(v.read(0, 3 * chunk as usize).await.unwrap(), data, "{codec}");
        v.write(chunk + 512, Bytes::from(vec![5u8; 4096]), true).await.unwrap();
        v.abandon();
        drop(v);
        let v = h.open_with(opts()).await.unwrap();
        assert_eq!(v.read(chunk + 512, 4096).await.unwrap(), Bytes::from(vec![5u8; 4096]), "{codec}");
        assert_eq!(v.read(chunk + 8192, 512).await.unwrap(), data.slice(chunk as usize + 8192..chunk as usize + 8704));
        v.close().await.unwrap();
        drop(v);

        h.flip_a_bit_of_the_first_chunk().await;
        let v = h.open_with(opts()).await.unwrap();
        assert!(matches!(v.read(0, 512).await, Err(StoreError::Read(_))), "{codec}: a flipped bit is an error");
    }
}

/// An encrypted volume works as a plain one through logs, merges and a crash, and the store
/// holds none of its data in the clear.
#[tokio::test(start_paused = true)]
async fn an_encrypted_volume_keeps_its_data_sealed_through_logs_merges_and_a_crash() {
    let (h, dir) = (Harness::new(), tempfile::tempdir().unwrap());
    let chunk = 64 * 1024u64;
    let v = h.open_with(encrypted(&h, &dir, [1; 32], chunk)).await.unwrap();
    let meta = v.meta();
    assert_eq!((meta.format_version, meta.encryption.is_some()), (format::FORMAT_VERSION, true));
    let pattern =
        |n: u8| Bytes::from((0..chunk as usize).map(|i| (i as u8).wrapping_mul(n) ^ 0x5a).collect::<Vec<u8>>());
    v.write(0, pattern(3), true).await.unwrap();
    v.merge_chunks(&[0]).await.unwrap();
    v.write(chunk + 4096, block(7), true).await.unwrap(); // logged, not merged
    v.write(2 * chunk, block(8), false).await.unwrap(); // neither
    v.abandon();
    drop(v);
    for (key, body) in h.mem.objects() {
        let clear = key.contains("/chunks/") || key.contains("/log/");
        let shows = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        assert!(!clear || !(shows(&pattern(3)[1000..1064]) || shows(&block(7)[..64])), "{key} holds plaintext");
    }
    let v = h.open_with(encrypted(&h, &dir, [1; 32], chunk)).await.unwrap();
    assert_eq!(v.read(0, chunk as usize).await.unwrap(), pattern(3));
    assert_eq!(v.read(chunk + 4096, 512).await.unwrap(), block(7));
    assert_eq!(v.read(2 * chunk, 512).await.unwrap(), vec![0u8; 512], "never acknowledged as durable");
}

/// An encrypted volume opens only with its key, and a plain one not with a key; each refusal
/// says why, and changes nothing.
#[tokio::test(start_paused = true)]
async fn an_encrypted_volume_refuses_a_wrong_key_or_none() {
    let (h, dir) = (Harness::new(), tempfile::tempdir().unwrap());
    let chunk = 64 * 1024u64;
    let v = h.open_with(encrypted(&h, &dir, [1; 32], chunk)).await.unwrap();
    v.write(0, block(1), true).await.unwrap();
    v.close().await.unwrap();
    drop(v);
    let refused = |r: Result<Arc<S3Volume>, OpenError>, why: &str| match r {
        Err(OpenError::Refused(m)) => assert!(m.contains(why), "{m}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened"),
    };
    refused(h.open_with(encrypted(&h, &dir, [2; 32], chunk)).await, "a wrong key");
    refused(h.open(chunk, 4, "a").await, "is encrypted: give its key");
    let v = h.open_with(encrypted(&h, &dir, [1; 32], chunk)).await.unwrap();
    assert_eq!(v.read(0, 512).await.unwrap(), block(1));
    v.close().await.unwrap();
    let plain = Harness::new();
    plain.open(chunk, 4, "a").await.unwrap().close().await.unwrap();
    refused(plain.open_with(encrypted(&plain, &dir, [1; 32], chunk)).await, "is not encrypted");
}

/// A bit flipped in an encrypted chunk is a read error (MEDIUM ERROR), never other data.
#[tokio::test(start_paused = true)]
async fn a_flipped_bit_in_an_encrypted_chunk_is_a_read_error() {
    let (h, dir) = (Harness::new(), tempfile::tempdir().unwrap());
    let chunk = 64 * 1024u64;
    let v = h.open_with(encrypted(&h, &dir, [1; 32], chunk)).await.unwrap();
    v.write(0, Bytes::from(vec![9u8; chunk as usize]), true).await.unwrap();
    v.close().await.unwrap();
    drop(v);
    h.flip_a_bit_of_the_first_chunk().await;
    let v = h.open_with(encrypted(&h, &dir, [1; 32], chunk)).await.unwrap();
    assert!(matches!(v.read(0, 512).await, Err(StoreError::Read(m)) if m.contains("authentication")));
}

// ---------------------------------------------------------------- the lease

/// Mutations that reached the store, in order: (when, who, key).
type Landed = Arc<std::sync::Mutex<Vec<(Duration, &'static str, String)>>>;

/// A view of the memory store that records which volume's mutations landed when.
struct Tagged {
    inner: Arc<MemObjectStore>,
    who: &'static str,
    clock: TokioClock,
    landed: Landed,
    /// Requests for the lease object fail (its renewals cannot get through).
    cut_from_lease: std::sync::atomic::AtomicBool,
    /// PUTs of the lease object are lost: never applied, reported uncertain.
    lose_lease_puts: std::sync::atomic::AtomicBool,
    /// Reads of the lease object wait while this is set (a slow request).
    lease_reads_held: tokio::sync::watch::Sender<bool>,
}

impl Tagged {
    fn record(&self, key: &str) {
        self.landed.lock().unwrap().push((self.clock.now(), self.who, key.to_string()));
    }
}

impl ObjectStore for Tagged {
    fn describe(&self) -> String {
        self.who.into()
    }
    fn get(&self, key: &str, range: Option<std::ops::Range<u64>>) -> BoxFuture<'_, ObjResult<GetOutput>> {
        if key.ends_with(LEASE_NAME) && self.cut_from_lease.load(Ordering::Relaxed) {
            return Box::pin(async { Err(ObjectError::transient("cut off")) });
        }
        let key = key.to_string();
        Box::pin(async move {
            if key.ends_with(LEASE_NAME) {
                let mut held = self.lease_reads_held.subscribe();
                held.wait_for(|h| !h).await.expect("the sender lives in self");
            }
            self.inner.get(&key, range).await
        })
    }
    fn put(
        &self,
        key: &str,
        body: Bytes,
        metadata: BTreeMap<String, String>,
        condition: Condition,
    ) -> BoxFuture<'_, ObjResult<Option<String>>> {
        let key = key.to_string();
        Box::pin(async move {
            if key.ends_with(LEASE_NAME) && self.cut_from_lease.load(Ordering::Relaxed) {
                return Err(ObjectError::transient("cut off"));
            }
            if key.ends_with(LEASE_NAME) && self.lose_lease_puts.load(Ordering::Relaxed) {
                return Err(ObjectError::Indeterminate("lost".into()));
            }
            let r = self.inner.put(&key, body, metadata, condition).await;
            if r.is_ok() {
                self.record(&key);
            }
            r
        })
    }
    fn delete(&self, key: &str) -> BoxFuture<'_, ObjResult<()>> {
        let key = key.to_string();
        Box::pin(async move {
            let r = self.inner.delete(&key).await;
            self.record(&key);
            r
        })
    }
    fn delete_many(&self, keys: Vec<String>) -> BoxFuture<'_, ObjResult<crate::s3::DeleteResults>> {
        Box::pin(async move {
            let r = self.inner.delete_many(keys.clone()).await;
            keys.iter().for_each(|k| self.record(k));
            r
        })
    }
    fn list(&self, prefix: &str, c: Option<String>) -> BoxFuture<'_, ObjResult<crate::s3::ListPage>> {
        self.inner.list(prefix, c)
    }
    fn head(&self, key: &str) -> BoxFuture<'_, ObjResult<crate::s3::ObjectMeta>> {
        self.inner.head(key)
    }
}

fn on_node(mut opts: VolumeOptions, node: &str) -> VolumeOptions {
    opts.node = Some(NodeId::new(node));
    opts
}

fn not_ready<T: std::fmt::Debug>(r: StoreResult<T>) -> bool {
    matches!(r, Err(StoreError::NotReady(_)))
}

#[tokio::test(start_paused = true)]
async fn a_live_holder_keeps_its_lease_until_forced() {
    let h = Harness::new();
    let a = h.open_with(on_node(h.options(64 * 1024, 4, "target-a"), "n1")).await.unwrap();
    // Target B watches the lease; A renews it meanwhile, so B gives up.
    let err = h.open_with(on_node(h.options(64 * 1024, 4, "target-b"), "n2")).await.err().unwrap();
    assert!(matches!(&err, OpenError::HeldElsewhere { holder, .. } if holder.starts_with("target-a")), "{err}");
    assert!(err.to_string().contains("in use by target-a"), "{err}");
    a.write(0, block(1), true).await.unwrap();

    let mut forced = on_node(h.options(64 * 1024, 4, "target-b"), "n2");
    forced.force = true;
    let started = tokio::time::Instant::now();
    let b = h.open_with(forced).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(30), "a forced takeover waits out the lease");
    assert!(not_ready(a.write(0, block(2), true).await), "the old holder learned at its next renewal");
    b.write(0, block(3), true).await.unwrap();
    assert_eq!(b.read(0, 512).await.unwrap(), block(3));
    assert!(matches!(a.failed().now_or_never(), Some(m) if m.contains("target-b")), "the old store is dead");
}

#[tokio::test(start_paused = true)]
async fn a_restart_on_the_same_node_takes_the_lease_back_at_once() {
    let h = Harness::new();
    let a = h.open_with(on_node(h.options(64 * 1024, 4, "pid-1"), "n1")).await.unwrap();
    a.write(0, block(4), true).await.unwrap();
    a.abandon();
    drop(a);
    let started = tokio::time::Instant::now();
    let again = h.open_with(on_node(h.options(64 * 1024, 4, "pid-2"), "n1")).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    assert_eq!(again.read(0, 512).await.unwrap(), block(4));
    again.abandon();
    // Another node waits out the silent holder's lease, then takes it.
    let started = tokio::time::Instant::now();
    let other = h.open_with(on_node(h.options(64 * 1024, 4, "pid-3"), "n2")).await.unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(30) && waited < Duration::from_secs(45), "waited {waited:?}");
    assert_eq!(other.read(0, 512).await.unwrap(), block(4));
}

/// Past its lease, a holder that cannot renew acknowledges nothing as durable: SYNCHRONIZE
/// CACHE and FUA wait out their deadline and answer NOT READY. Plain writes still go into the
/// cache (a volatile cache may lose them, as at a power loss, if the lease turns out taken).
#[tokio::test(start_paused = true)]
async fn a_holder_that_cannot_renew_acknowledges_nothing_as_durable() {
    let h = Harness::new();
    let v = h.open(64 * 1024, 4, "a").await.unwrap();
    h.mem.set_faults(Faults { fail: 1.0, ..Faults::default() });
    v.write(0, block(1), false).await.unwrap();
    // Past the lease less its margin, measured from the last renewal.
    tokio::time::sleep(Duration::from_secs(28)).await;
    v.write(512, block(2), false).await.unwrap();
    let started = tokio::time::Instant::now();
    assert!(not_ready(v.flush().await), "a SYNCHRONIZE CACHE");
    assert!(started.elapsed() >= Duration::from_secs(19), "it waited for the store first");
    assert!(not_ready(v.write(1024, block(3), true).await), "a FUA write");
    assert!(v.ready().is_ok(), "reads and writes into the cache go on");
    // The store comes back; the next renewal succeeds and the data kept in the cache flushes.
    h.mem.set_faults(Faults::default());
    tokio::time::sleep(Duration::from_secs(2)).await;
    v.flush().await.unwrap();
    v.close().await.unwrap();
    assert_eq!(v.read(0, 1536).await.unwrap(), [block(1), block(2), block(3)].concat());
}

/// In a failover pair, a holder whose lease lapsed serves nothing, not even from its cache:
/// the standby may have taken over. Reads and writes wait for a renewal up to their deadline,
/// then answer NOT READY; once the store is back and the lease renewed, they go on.
#[tokio::test(start_paused = true)]
async fn a_failover_holder_serves_nothing_once_its_lease_lapsed() {
    let h = Harness::new();
    let v = h.open_with(VolumeOptions { failover: true, ..h.options(64 * 1024, 4, "a") }).await.unwrap();
    v.write(0, block(1), false).await.unwrap();
    h.mem.set_faults(Faults { fail: 1.0, ..Faults::default() });
    assert_eq!(v.read(0, 512).await.unwrap(), block(1), "a cached read while the lease holds");
    tokio::time::sleep(Duration::from_secs(28)).await;
    assert!(v.ready().is_err(), "TEST UNIT READY: not ready");
    let started = tokio::time::Instant::now();
    assert!(not_ready(v.read(0, 512).await), "a cached read");
    assert!(started.elapsed() >= Duration::from_secs(19), "it waited for a renewal first");
    assert!(not_ready(v.write(512, block(2), false).await), "a write into the cache");
    h.mem.set_faults(Faults::default());
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(v.ready().is_ok(), "renewed");
    assert_eq!(v.read(0, 512).await.unwrap(), block(1));
    v.write(512, block(2), false).await.unwrap();
    v.close().await.unwrap();
}

/// A failover pair's volume cannot keep acknowledged writes in a local journal, which the
/// standby could not see.
#[tokio::test]
async fn a_failover_volume_refuses_a_local_journal() {
    let h = Harness::new();
    let journal = JournalOptions { store: Arc::new(MemObjectStore::new()), bytes_max: 1 << 20 };
    let opts = VolumeOptions { failover: true, journal: Some(journal), ..h.options(64 * 1024, 4, "a") };
    let err = h.open_with(on_node(opts, "n1")).await.err().unwrap();
    assert!(matches!(&err, OpenError::Refused(m) if m.contains("failover")), "{err}");
}

/// A store away for longer than the lease: plain writes and cached reads carry on, a
/// SYNCHRONIZE CACHE sent meanwhile waits and succeeds once the store is back, and nothing is
/// lost.
#[tokio::test(start_paused = true)]
async fn a_sync_during_an_outage_waits_and_succeeds_when_the_store_returns() {
    let h = Harness::new();
    let v = h.open(64 * 1024, 4, "a").await.unwrap();
    h.mem.set_faults(Faults { fail: 1.0, ..Faults::default() });
    for i in 0..40u64 {
        v.write(i * 512, block(i as u8 + 1), false).await.unwrap();
        assert_eq!(v.read(i * 512, 512).await.unwrap(), block(i as u8 + 1), "a cached read");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let flush = start({
        let v = v.clone();
        async move { v.flush().await }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    h.mem.set_faults(Faults::default());
    flush.await.expect("task").expect("the SYNC succeeds");
    v.abandon();
    let again = h.open_with(on_node(h.options(64 * 1024, 4, "b"), "n2")).await.unwrap();
    for i in 0..40u64 {
        assert_eq!(again.read(i * 512, 512).await.unwrap(), block(i as u8 + 1));
    }
}

/// Reads of data the cache does not hold wait for the store, and succeed if it returns in time.
#[tokio::test(start_paused = true)]
async fn a_read_waits_for_the_store_within_its_deadline() {
    let h = Harness::new();
    let v = h.open(64 * 1024, 4, "a").await.unwrap();
    v.write(0, block(9), true).await.unwrap();
    v.close().await.unwrap();
    let v = h.open(64 * 1024, 4, "a").await.unwrap();
    h.mem.set_faults(Faults { fail: 1.0, ..Faults::default() });
    let read = start({
        let v = v.clone();
        async move { v.read(0, 512).await }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    h.mem.set_faults(Faults::default());
    assert_eq!(read.await.expect("task").expect("the read succeeds"), block(9));
    // What was fetched stays in the cache: read again with the store away, it answers at once.
    h.mem.set_faults(Faults { fail: 1.0, ..Faults::default() });
    assert_eq!(v.read(0, 512).await.expect("a cached read needs no store"), block(9));
    // Not cached, and the store away past the deadline: NOT READY, which initiators retry;
    // never a medium error.
    v.evict_clean(&mut v.cache(), u64::MAX);
    assert!(not_ready(v.read(0, 512).await));
}

/// Group commit: FUA writes from 32 workers at once, each PUT 20 ms away, share log PUTs. Each
/// SYNC that waited behind another finds its writes covered, or logs them for all that waited
/// with it; without that, each FUA write costs a log PUT of its own.
#[tokio::test(start_paused = true)]
async fn concurrent_fua_writes_share_log_puts() {
    let h = Harness::new();
    let v = h.open(64 * 1024, 64, "a").await.unwrap();
    h.mem.set_faults(Faults { latency: Duration::from_millis(20), ..Faults::default() });
    let workers: Vec<_> = (0..32u64)
        .map(|w| {
            let v = v.clone();
            tokio::spawn(async move {
                for i in 0..10u64 {
                    v.write((w * 2 + i % 2) * 64 * 1024, block(w as u8 + 1), true).await.unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let logs = v.stats.logs_written.load(Ordering::Relaxed);
    assert!(logs <= 320 / 4, "{logs} log PUTs for 320 FUA writes");
}

/// The pieces of one read that are not cached are fetched at once: a read over four chunks
/// 20 ms away takes one round trip, not four.
#[tokio::test(start_paused = true)]
async fn a_read_fetches_its_chunks_in_parallel() {
    let h = Harness::new();
    let chunk = 64 * 1024;
    let v = h.open(chunk, 4, "a").await.unwrap();
    v.write(0, Bytes::from(vec![7u8; 4 * chunk as usize]), true).await.unwrap();
    v.close().await.unwrap();
    let v = h.open(chunk, 4, "a").await.unwrap();
    h.mem.set_faults(Faults { latency: Duration::from_millis(20), ..Faults::default() });
    let started = tokio::time::Instant::now();
    let data = v.read(0, 4 * chunk as usize).await.unwrap();
    assert!(data.iter().all(|&b| b == 7));
    assert!(started.elapsed() < Duration::from_millis(40), "took {:?} of simulated time", started.elapsed());
}

/// A renewal whose PUT was lost (reported uncertain, never applied) finds the holder's previous
/// record when it reads back: that is not a renewal, and the lease runs out as it should.
/// A target whose open read the metadata, then waited for the lease while another target
/// took it, served and let it go, must still take a newer epoch than that target's: its chunk
/// versions must outrank the other's, or a later open reads the other's older data.
#[tokio::test(start_paused = true)]
async fn a_holder_that_waited_for_the_lease_takes_an_epoch_above_the_one_before() {
    let h = Harness::new();
    let chunk = 64 * 1024;
    h.open(chunk, 4, "creator").await.unwrap().close().await.unwrap();
    let slow = Arc::new(Tagged {
        inner: h.mem.clone(),
        who: "a",
        clock: TokioClock::new(),
        landed: Arc::default(),
        cut_from_lease: Default::default(),
        lose_lease_puts: Default::default(),
        lease_reads_held: tokio::sync::watch::Sender::new(true),
    });
    let waiting = tokio::spawn({
        let (slow, opts) = (slow.clone(), h.options(chunk, 4, "a"));
        async move { S3Volume::open(slow, url(), opts, Arc::new(TokioClock::new())).await }
    });
    // A has read the metadata and waits for its lease read; B opens, serves and closes.
    while slow.lease_reads_held.receiver_count() == 0 {
        tokio::task::yield_now().await;
    }
    let b = h.open(chunk, 4, "b").await.unwrap();
    for round in 0..4 {
        b.write(0, block(10 + round), true).await.unwrap();
        b.merge_chunk(0).await.unwrap();
    }
    b.close().await.unwrap();
    slow.lease_reads_held.send_replace(false);
    let a = waiting.await.unwrap().unwrap();
    assert!(a.meta().epoch > b.meta().epoch, "epoch {} after {}", a.meta().epoch, b.meta().epoch);
    a.write(0, block(20), true).await.unwrap();
    a.close().await.unwrap();
    let again = h.open(chunk, 4, "c").await.unwrap();
    assert_eq!(again.read(0, 512).await.unwrap(), block(20), "the last holder's write, not the one before");
}

#[tokio::test(start_paused = true)]
async fn a_renewal_that_never_landed_does_not_extend_the_lease() {
    let h = Harness::new();
    let store = Arc::new(Tagged {
        inner: h.mem.clone(),
        who: "a",
        clock: TokioClock::new(),
        landed: Arc::default(),
        cut_from_lease: Default::default(),
        lose_lease_puts: Default::default(),
        lease_reads_held: Default::default(),
    });
    let v =
        S3Volume::open(store.clone(), url(), h.options(64 * 1024, 4, "a"), Arc::new(TokioClock::new())).await.unwrap();
    store.lose_lease_puts.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(28)).await;
    assert!(not_ready(v.write(0, block(1), true).await), "the lease ran out");
    store.lose_lease_puts.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    v.write(0, block(1), true).await.unwrap();
}

/// A chunk PUT that was reported uncertain and never landed leaves a chunk that may exist: a
/// later GET that finds nothing reads zeros there, not a missing chunk (which would fail every
/// merge of it from then on).
#[tokio::test(start_paused = true)]
async fn an_uncertain_put_that_never_landed_is_not_a_missing_chunk() {
    let h = Harness::new();
    let chunk = 128 * 1024u64;
    // A cache of two chunks: too small to keep what a merge composes.
    let opts = VolumeOptions { cache_bytes: 2 * chunk, ..h.options(chunk, 4, "a") };
    let v = h.open_with(opts).await.unwrap();
    h.mem.set_faults(Faults { lost_request: 1.0, ..Faults::default() });
    v.write(chunk, Bytes::from(vec![1u8; chunk as usize]), false).await.unwrap();
    v.write(0, Bytes::from(vec![3u8; 72 * 1024]), false).await.unwrap();
    assert!(v.flush().await.is_err(), "the merges' PUTs are lost");
    h.mem.set_faults(Faults::default());
    v.flush().await.unwrap();
    let data = v.read(0, chunk as usize).await.unwrap();
    assert!(data[..72 * 1024].iter().all(|&b| b == 3) && data[72 * 1024..].iter().all(|&b| b == 0));
    assert!(v.read(chunk, chunk as usize).await.unwrap().iter().all(|&b| b == 1));
}

#[tokio::test(start_paused = true)]
async fn renewals_are_not_starved_by_stuck_merges() {
    let h = Harness::new();
    let a = h.open_with(on_node(h.options(64 * 1024, 4, "target-a"), "n1")).await.unwrap();
    h.mem.hold("vol/chunks/");
    a.write(0, Bytes::from(vec![1u8; 64 * 1024]), false).await.unwrap();
    // The background flush hangs on the chunk PUT; the lease must live on regardless.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let err = h.open_with(on_node(h.options(64 * 1024, 4, "target-b"), "n2")).await.err().unwrap();
    assert!(err.to_string().contains("in use by target-a"), "{err}");
    h.mem.release_all();
    a.flush().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn nothing_of_the_old_holder_lands_after_the_new_holders_first_write() {
    let h = Harness::new();
    let landed: Landed = Arc::default();
    let tagged = |who| {
        Arc::new(Tagged {
            inner: h.mem.clone(),
            who,
            clock: TokioClock::new(),
            landed: landed.clone(),
            cut_from_lease: Default::default(),
            lose_lease_puts: Default::default(),
            lease_reads_held: Default::default(),
        })
    };
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let opts = on_node(h.options(64 * 1024, 4, "target-a"), "n1");
    let store_a = tagged("a");
    let a = S3Volume::open(store_a.clone(), url(), opts, clock.clone()).await.unwrap();
    // A acknowledges FUA writes and SYNCHRONIZE CACHE as fast as it can, whatever happens.
    let writer = {
        let a = a.clone();
        tokio::spawn(async move {
            for i in 0u64.. {
                let _ = a.write((i % 128) * 512, block((i % 250) as u8 + 1), i % 2 == 0).await;
                if i % 8 == 0 {
                    let _ = a.flush().await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    // A's renewals stop getting through (it cannot learn it lost the lease); its data still can.
    store_a.cut_from_lease.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut forced = on_node(h.options(64 * 1024, 4, "target-b"), "n2");
    forced.force = true;
    let b = S3Volume::open(tagged("b"), url(), forced, clock.clone()).await.unwrap();
    for i in 0..128u64 {
        b.write(i * 512, block(251), true).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    writer.abort();
    let landed = landed.lock().unwrap().clone();
    let lease = url().key(LEASE_NAME);
    let first_b = landed.iter().find(|(_, who, key)| *who == "b" && *key != lease).expect("b wrote").0;
    let late: Vec<_> = landed.iter().filter(|(t, who, key)| *who == "a" && *t >= first_b && *key != lease).collect();
    assert!(
        late.is_empty(),
        "{} changes of the old holder landed after the new holder's first, from {:?}",
        late.len(),
        late.first()
    );
    assert_eq!(b.read(0, 128 * 512).await.unwrap(), vec![block(251); 128].concat());
}

// ---------------------------------------------------------------- merges and logs

/// Runs `f` until it is stuck on the held store (polled, not finished), and returns it.
async fn start<F: std::future::Future + Send + 'static>(f: F) -> tokio::task::JoinHandle<F::Output>
where
    F::Output: Send,
{
    let task = tokio::spawn(f);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!task.is_finished(), "it should wait on the held store");
    task
}

/// A merge finds its chunk all zeros while a write and a SYNCHRONIZE CACHE of that chunk land
/// (its fetch is slow): the zero record it writes must not erase the newer, logged write.
#[tokio::test(start_paused = true)]
async fn a_zero_merge_racing_a_logged_write_keeps_the_write() {
    let h = Harness::new();
    let chunk = 64 * 1024u64;
    let v = h.open(chunk, 4, "a").await.unwrap();
    let mut first = vec![0u8; chunk as usize];
    first[..512].fill(0xaa);
    v.write(0, Bytes::from(first), false).await.unwrap();
    v.close().await.unwrap();
    drop(v);
    // The chunk object holds data in block 0 only; the cache of a new open holds nothing.
    let v = h.open(chunk, 4, "a").await.unwrap();
    v.write(0, block(0), false).await.unwrap();
    h.mem.hold("vol/chunks/");
    let merge = start({
        let v = v.clone();
        async move { v.merge_chunks(&[0]).await }
    })
    .await;
    h.mem.release_all();
    h.mem.hold("vol/chunks/"); // the merge's fetch is under way; later chunk requests wait
    v.write(5 * 512, block(0xbb), false).await.unwrap();
    v.flush().await.unwrap(); // a small write: logged
    h.mem.release_all();
    merge.await.unwrap().unwrap();
    v.abandon();
    drop(v);
    let v = h.open(chunk, 4, "a").await.unwrap();
    let got = v.read(5 * 512, 512).await.unwrap();
    assert!(got == block(0xbb), "the SYNCed write was lost in the crash: the block holds {:#x}s", got[0]);
    assert_eq!(v.read(0, 512).await.unwrap(), block(0));
}

/// A SYNCHRONIZE CACHE whose merge finds the chunk zero but written meanwhile must still
/// return only once the chunk's data is durable: the merge starts over instead of giving up.
#[tokio::test(start_paused = true)]
async fn a_sync_whose_zero_merge_is_overtaken_is_still_durable() {
    let h = Harness::new();
    let chunk = 8 * 1024u64; // 16 blocks
    let v = h.open(chunk, 4, "a").await.unwrap();
    let mut first = vec![0u8; chunk as usize];
    first[..BS as usize].fill(0xaa);
    v.write(0, Bytes::from(first), false).await.unwrap();
    v.close().await.unwrap();
    drop(v);
    let v = h.open(chunk, 4, "a").await.unwrap();
    // Zeros over ten blocks (block 0's data among them): mostly unlogged, so SYNC merges.
    v.write(0, Bytes::from(vec![0u8; (10 * BS) as usize]), false).await.unwrap();
    h.mem.hold("vol/chunks/");
    let sync = start({
        let v = v.clone();
        async move { v.flush().await }
    })
    .await;
    h.mem.release_all();
    h.mem.hold("vol/chunks/"); // the merge's fetch is under way
    v.write(12 * BS, block(0xcc), false).await.unwrap();
    h.mem.release_all();
    sync.await.unwrap().unwrap();
    v.abandon();
    drop(v);
    let v = h.open(chunk, 4, "a").await.unwrap();
    assert_eq!(v.read(0, BS as usize).await.unwrap(), block(0), "the zeros the SYNC covered are durable");
}

/// A SYNCHRONIZE CACHE dropped while its log PUT is in flight (its session went away) must
/// not keep every later log from being deleted.
#[tokio::test(start_paused = true)]
async fn a_cancelled_log_write_does_not_pin_the_logs() {
    let h = Harness::new();
    let v = h.open(64 * 1024, 4, "a").await.unwrap();
    v.write(512, block(1), false).await.unwrap();
    h.mem.hold("vol/log/");
    let sync = start({
        let v = v.clone();
        async move { v.flush().await }
    })
    .await;
    sync.abort();
    let _ = sync.await;
    h.mem.release_all();
    v.write(1024, block(2), false).await.unwrap();
    v.flush().await.unwrap();
    v.merge_chunks(&[0]).await.unwrap();
    v.delete_settled_logs().await.unwrap();
    assert_eq!(v.log_count(), 0, "every log is deleted once its chunks are merged");
    assert_eq!(v.read(512, 1024).await.unwrap(), [block(1), block(2)].concat());
}

/// Replay deletes a chunk it finds zero only after a zero record: an older log may still hold
/// data for it (the chunk's object had made it stale), and a crash before that log is deleted
/// would bring the data back. Here the logs cannot be deleted (the open fails after the
/// merges), and the next open must still read zeros.
#[tokio::test(start_paused = true)]
async fn replay_deletes_a_zero_chunk_only_after_a_zero_record() {
    let h = Harness::new();
    let chunk = 8 * 1024u64; // 16 blocks
    let big_cache = VolumeOptions { cache_bytes: 1 << 20, ..h.options(chunk, 8, "a") };
    let v = h.open_with(big_cache.clone()).await.unwrap();
    // Log 1: block 38 (chunk 2) and block 80 (chunk 5), which keeps the log alive.
    v.write(38 * BS, block(0x44), false).await.unwrap();
    v.write(80 * BS, block(0x55), false).await.unwrap();
    v.flush().await.unwrap();
    // Chunk 2's object: block 32 written, 33-47 zeros (block 38's data is stale in log 1).
    let mut piece = vec![0u8; (16 * BS) as usize];
    piece[..BS as usize].fill(0x66);
    v.write(32 * BS, Bytes::from(piece), false).await.unwrap();
    v.merge_chunks(&[2]).await.unwrap();
    // Log 2: block 32 zeroed: chunk 2 is all zeros now.
    v.write(32 * BS, block(0), false).await.unwrap();
    v.flush().await.unwrap();
    v.abandon();
    drop(v);
    h.mem.refuse_deletes(Some("vol/log/"));
    assert!(h.open_with(big_cache.clone()).await.is_err(), "the logs cannot be deleted");
    h.mem.refuse_deletes(None);
    let v = h.open_with(big_cache).await.unwrap();
    assert_eq!(v.read(32 * BS, (16 * BS) as usize).await.unwrap(), vec![0u8; (16 * BS) as usize]);
    assert_eq!(v.read(80 * BS, BS as usize).await.unwrap(), block(0x55));
}

/// The log objects in the store, with their metadata, as a PUT would send them again.
async fn log_objects(h: &Harness) -> Vec<(String, Bytes, BTreeMap<String, String>)> {
    let mut logs = Vec::new();
    for key in h.mem.objects().into_keys().filter(|k| k.contains("/log/")) {
        let out = h.mem.get(&key, None).await.unwrap();
        logs.push((key, out.body, out.meta.metadata));
    }
    logs
}

/// Block 0 written in a log, then (in `settle`) that log settled and deleted, block 0 zeroed and
/// its chunk merged away, the volume closed; then the first log's PUT lands again (one held on
/// its way, that its writer gave up on). The next open deletes it unread: block 0 reads zeros.
async fn a_log_landing_again_after(settle: impl AsyncFnOnce(&Harness, Arc<S3Volume>, &VolumeOptions)) {
    let h = Harness::new();
    let opts = h.options(8 * 1024, 4, "a");
    let v = h.open_with(opts.clone()).await.unwrap();
    v.write(0, block(0x11), true).await.unwrap();
    let zombies = log_objects(&h).await;
    assert!(!zombies.is_empty(), "the FUA write is in a log");
    settle(&h, v, &opts).await;
    assert!(log_objects(&h).await.is_empty(), "the logs are settled and deleted");
    for (key, body, metadata) in zombies {
        h.mem.put(&key, body, metadata, Condition::None).await.unwrap();
    }
    let v = h.open_with(opts).await.unwrap();
    assert_eq!(v.read(0, BS as usize).await.unwrap(), block(0), "the settled log was replayed again");
    assert!(log_objects(&h).await.is_empty(), "the log that came back is deleted");
}

#[tokio::test(start_paused = true)]
async fn a_log_landing_again_after_a_crash_and_recovery_is_not_replayed() {
    a_log_landing_again_after(async |h, v, opts| {
        // A crash: the next open replays and settles the log (in a later epoch).
        v.abandon();
        drop(v);
        let v = h.open_with(opts.clone()).await.unwrap();
        v.write(0, block(0), true).await.unwrap();
        v.close().await.unwrap();
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_log_landing_again_after_it_was_settled_while_running_is_not_replayed() {
    a_log_landing_again_after(async |_, v, _| {
        // Settled by the running volume's merges; then a crash, with no close to record it.
        v.write(0, block(0), true).await.unwrap();
        v.settle_everything().await.unwrap();
        v.abandon();
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_background_deletes_settled_logs_in_rounds_each_after_raising_the_floor() {
    let h = Harness::new();
    let v = h.open(8 * 1024, 4, "a").await.unwrap();
    let floor = || v.meta().logs_settled_below;
    let opened_at = floor();
    // A log, settled by its chunk's merge: the first round deletes it.
    v.write(0, block(1), true).await.unwrap();
    v.merge_chunks(&[0]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(log_objects(&h).await.is_empty(), "the first round deletes the settled log");
    assert!(floor() > opened_at, "after raising the floor");
    let first_round = floor();
    // Another, settled at once: it waits for the next round (a round costs a metadata PUT).
    v.write(0, block(2), true).await.unwrap();
    v.merge_chunks(&[0]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(log_objects(&h).await.len(), 1, "kept until the next round");
    assert_eq!(floor(), first_round);
    tokio::time::sleep(LOG_DELETE_INTERVAL).await;
    assert!(log_objects(&h).await.is_empty(), "the next round deletes it");
    assert!(floor() > first_round);
}

#[tokio::test(start_paused = true)]
async fn a_backlog_of_settled_logs_is_deleted_without_waiting_for_the_round() {
    let h = Harness::new();
    let v = h.open(8 * 1024, 4, "a").await.unwrap();
    v.write(0, block(1), true).await.unwrap();
    v.merge_chunks(&[0]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(log_objects(&h).await.is_empty(), "the first round");
    // One short of the backlog: kept until the next round.
    for i in 0..LOG_DELETE_BACKLOG - 1 {
        v.write(0, block(i as u8), true).await.unwrap();
    }
    v.merge_chunks(&[0]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(log_objects(&h).await.len(), LOG_DELETE_BACKLOG - 1);
    // The backlog: deleted at the next tick.
    v.write(0, block(0x77), true).await.unwrap();
    v.merge_chunks(&[0]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(log_objects(&h).await.is_empty(), "a backlog does not wait for the round");
}

/// Settled logs go a thousand to a request: deleted one at a time, 300 of them held the log
/// lock for 300 round trips (6 s at 20 ms), and FUA writes and SYNCHRONIZE CACHE waited that
/// long (seen against moto 20-50 ms away: a minute of NOT READY after each merge).
#[tokio::test(start_paused = true)]
async fn settled_logs_are_deleted_together() {
    let h = Harness::new();
    let v = h.open(8 * 1024, 4, "a").await.unwrap();
    for i in 0..300 {
        v.write(0, block(i as u8), true).await.unwrap();
    }
    h.mem.set_faults(Faults { latency: Duration::from_millis(20), ..Faults::default() });
    v.merge_chunks(&[0]).await.unwrap();
    let started = tokio::time::Instant::now();
    v.delete_settled_logs().await.unwrap();
    let took = started.elapsed();
    assert!(log_objects(&h).await.is_empty());
    // The metadata's floor (a GET and a PUT) and one DeleteObjects; a background round may
    // have been under way.
    assert!(took <= Duration::from_millis(200), "deleting 300 settled logs took {took:?}");
}

#[tokio::test(start_paused = true)]
async fn a_log_landing_again_after_a_clean_close_is_not_replayed() {
    a_log_landing_again_after(async |_, v, _| {
        // Settled in its own epoch: the merges of the close.
        v.write(0, block(0), true).await.unwrap();
        v.close().await.unwrap();
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn geometry_mismatch_and_missing_volume_are_clear_errors() {
    let h = Harness::new();
    drop(h.open(64 * 1024, 4, "a").await.unwrap());
    let err = h.open(128 * 1024, 2, "a").await.err().unwrap();
    assert!(matches!(&err, OpenError::Refused(m) if m.contains("chunk size")), "{err}");
    let other = S3Url::parse("s3://bucket/missing").unwrap();
    let err = S3Volume::open(h.mem.clone(), other, VolumeOptions::default(), Arc::new(TokioClock::new())).await;
    assert!(matches!(&err, Err(OpenError::Refused(m)) if m.contains("no volume at")), "{:?}", err.err());
}

#[tokio::test(start_paused = true)]
async fn unmap_buries_whole_chunks_under_tombstones_and_zeroes_partial_ones() {
    let h = Harness::new();
    let chunk = 64 * 1024;
    let v = h.open(chunk, 32, "a").await.unwrap();
    for c in 0..32u64 {
        v.write(c * chunk, Bytes::from(vec![c as u8 + 1; chunk as usize]), false).await.unwrap();
    }
    v.flush().await.unwrap();
    assert_eq!(h.chunk_objects().len(), 32);
    // From the middle of chunk 1 to the middle of chunk 30.
    v.unmap(chunk + chunk / 2, 29 * chunk).await.unwrap();
    let tombstones = || h.chunk_objects().values().filter(|b| b.is_empty()).count();
    assert_eq!(tombstones(), 28, "chunks 2 to 29 each have a tombstone at once");
    v.close().await.unwrap();
    assert_eq!(h.chunk_data_objects().len(), 4, "chunks 0, 1, 30, 31 keep data");
    assert_eq!(h.chunk_objects().len(), 32, "the buried versions are swept, in batches");
    assert!(v.s3_stats().delete_many.load(Ordering::Relaxed) >= 1);
    let data = v.read(chunk, 2 * chunk as usize).await.unwrap();
    assert!(data[..(chunk / 2) as usize].iter().all(|&b| b == 2));
    assert!(data[(chunk / 2) as usize..].iter().all(|&b| b == 0));
    let extents = v.mapped_extents(0, 32 * chunk).await.unwrap();
    assert_eq!(extents.iter().filter(|e| e.mapped).map(|e| e.len).sum::<u64>(), 4 * chunk);
}

/// A volume with one plain write whose background flushes met `faults` for 10 s.
async fn after_failing_background_flushes(h: &Harness, faults: Faults) -> Arc<S3Volume> {
    let v = h.open(64 * 1024, 4, "a").await.unwrap();
    h.mem.set_faults(faults);
    v.write(0, block(7), false).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    v
}

#[tokio::test(start_paused = true)]
async fn a_transient_background_failure_keeps_the_data_and_reports_nothing() {
    let h = Harness::new();
    let v = after_failing_background_flushes(&h, Faults { fail: 1.0, ..Faults::default() }).await;
    assert!(v.unlogged_bytes() > 0, "still in the cache");
    h.mem.set_faults(Faults::default());
    v.flush().await.unwrap();
    assert_eq!(v.unlogged_bytes(), 0, "durable in the log");
}

#[tokio::test(start_paused = true)]
async fn failed_background_flush_keeps_data_and_is_reported_once() {
    let h = Harness::new();
    let v = after_failing_background_flushes(&h, Faults { reject_writes: 1.0, ..Faults::default() }).await;
    assert!(v.dirty_bytes() > 0, "still dirty");
    h.mem.set_faults(Faults::default());
    assert!(matches!(v.flush().await, Err(StoreError::Write(_))), "reported on the next SYNCHRONIZE CACHE");
    v.flush().await.unwrap();
    assert_eq!(v.unlogged_bytes(), 0, "durable in the log");
    v.close().await.unwrap();
    assert_eq!(v.dirty_bytes(), 0);
    assert_eq!(h.chunk_objects().len(), 1);
    assert_eq!(v.log_count(), 0);
}

/// A SYNCHRONIZE CACHE that fails (the store away) does not swallow an earlier background
/// failure: the next one to succeed reports it. (An import retries failed flushes: it lost it.)
#[tokio::test(start_paused = true)]
async fn a_failed_flush_leaves_a_background_failure_for_the_next() {
    let h = Harness::new();
    let v = after_failing_background_flushes(&h, Faults { reject_writes: 1.0, ..Faults::default() }).await;
    h.mem.set_faults(Faults { fail: 1.0, ..Faults::default() });
    assert!(matches!(v.flush().await, Err(StoreError::NotReady(_))), "the store is away");
    h.mem.set_faults(Faults::default());
    assert!(matches!(v.flush().await, Err(StoreError::Write(_))), "reported on the next that succeeds");
    v.flush().await.unwrap();
}

// ---------------------------------------------------------------- model check

const CHUNK: u64 = 4 * BS; // tiny chunks: four blocks
const CHUNKS: u64 = 8;
const BLOCKS: u64 = CHUNK * CHUNKS / BS;

#[derive(Debug, Clone)]
enum Op {
    Write {
        lba: u64,
        blocks: u64,
        fill: u8,
        fua: bool,
    },
    WriteZeros {
        lba: u64,
        blocks: u64,
    },
    Read {
        lba: u64,
        blocks: u64,
    },
    Unmap {
        lba: u64,
        blocks: u64,
    },
    Flush,
    Tick {
        millis: u64,
    },
    /// Memory pressure drops every clean page: reads go to the disk cache or the store.
    Evict,
    Crash,
    Faults(bool),
    /// Take a snapshot; it must read back what the volume held then, forever.
    Snapshot,
    /// Delete the oldest snapshot.
    DropSnapshot,
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    (0..BLOCKS).prop_flat_map(|lba| (Just(lba), 1..=(BLOCKS - lba).min(12)))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (range(), 1u8..=255, proptest::bool::weighted(0.1))
            .prop_map(|((lba, blocks), fill, fua)| Op::Write { lba, blocks, fill, fua }),
        1 => range().prop_map(|(lba, blocks)| Op::WriteZeros { lba, blocks }),
        4 => range().prop_map(|(lba, blocks)| Op::Read { lba, blocks }),
        2 => range().prop_map(|(lba, blocks)| Op::Unmap { lba, blocks }),
        2 => Just(Op::Flush),
        2 => (1u64..5000).prop_map(|millis| Op::Tick { millis }),
        2 => Just(Op::Evict),
        1 => Just(Op::Crash),
        1 => proptest::bool::ANY.prop_map(Op::Faults),
        1 => Just(Op::Snapshot),
        1 => Just(Op::DropSnapshot),
    ]
}

/// Every snapshot the model took reads back, through the store alone, exactly the blocks the
/// volume held when it was taken (a version swept while held would be a read error).
async fn check_snapshots(
    h: &Harness,
    snapshots: &[(manifest::SnapshotName, Vec<u8>)],
    key: Option<&keys::KeySource>,
) -> Result<(), TestCaseError> {
    for (name, blocks) in snapshots {
        let view = SnapshotView::open(h.mem.clone(), &url(), name, key)
            .await
            .map_err(|e| TestCaseError::fail(format!("snapshot {name}: {e}")))?;
        let data = view
            .read(0, (BLOCKS * BS) as usize)
            .await
            .map_err(|e| TestCaseError::fail(format!("snapshot {name}: {e}")))?;
        for b in 0..BLOCKS {
            let got = data[(b * BS) as usize];
            prop_assert_eq!(got, blocks[b as usize], "snapshot {} block {}", name, b);
        }
    }
    Ok(())
}

/// Per block: the values it may hold. One value once durable; after writes that are not yet
/// durable, the durable value and every value written since.
#[derive(Debug, Clone)]
struct Model {
    possible: Vec<Vec<u8>>,
}

impl Model {
    fn write(&mut self, lba: u64, blocks: u64, fill: u8) {
        for b in lba..lba + blocks {
            self.possible[b as usize].push(fill);
        }
    }
    fn current(&self, b: u64) -> u8 {
        *self.possible[b as usize].last().expect("never empty")
    }
    fn durable(&mut self) {
        for p in &mut self.possible {
            let last = *p.last().expect("never empty");
            *p = vec![last];
        }
    }
}

/// How the model check's volume keeps SYNCs durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    S3,
    /// In a local journal (on one node, so every reopen replays it).
    Local,
}

impl Harness {
    fn model_options(
        &self,
        durability: Durability,
        journal: &Arc<MemObjectStore>,
        disk: &Arc<MemObjectStore>,
    ) -> VolumeOptions {
        let mut opts = self.options(CHUNK, CHUNKS, "model");
        // A disk cache smaller than the volume, kept across crashes like the journal.
        opts.disk_cache = Some(DiskCacheOptions { store: disk.clone(), bytes_max: CHUNKS / 2 * CHUNK });
        if durability == Durability::Local {
            opts = on_node(opts, "model-node");
            opts.journal = Some(JournalOptions { store: journal.clone(), bytes_max: 4 * CHUNK });
        }
        opts
    }
}

/// With `encrypted`, the volume's objects go through the sealing layer (a key file in a
/// directory of the run's own).
/// A clone's parent for the model test: volume `base` with data in the even chunks
/// ([`inherited_byte`]), snapshot `s`. Opened twice, so that its chunks' stamps are of a later
/// epoch than the clone's logs.
async fn clone_parent(h: &Harness, opts: VolumeOptions) -> Result<(), TestCaseError> {
    let fail = |e: String| TestCaseError::fail(e);
    let base = S3Url::parse("s3://bucket/base").expect("a URL");
    let open = || S3Volume::open(h.mem.clone(), base.clone(), opts.clone(), Arc::new(TokioClock::new()));
    open().await.map_err(|e| fail(e.to_string()))?.close().await.map_err(|e| fail(e.to_string()))?;
    let v = open().await.map_err(|e| fail(e.to_string()))?;
    for b in (0..BLOCKS).filter(|b| inherited_byte(*b) != 0) {
        v.write(b * BS, Bytes::from(vec![inherited_byte(b); BS as usize]), false)
            .await
            .map_err(|e| fail(e.to_string()))?;
    }
    v.create_snapshot(manifest::SnapshotName::parse("s").expect("a name")).await.map_err(|e| fail(e.to_string()))?;
    v.close().await.map_err(|e| fail(e.to_string()))?;
    let name = manifest::SnapshotName::parse("s").expect("a name");
    clone::clone_volume(&*h.mem, &base, &name, &url(), &TokioClock::new(), 1).await.map_err(|e| fail(e.to_string()))?;
    Ok(())
}

/// What a clone's parent holds in block `b` (the even chunks hold data).
fn inherited_byte(b: u64) -> u8 {
    if (b * BS / CHUNK).is_multiple_of(2) { (b * 37 % 250) as u8 + 1 } else { 0 }
}

/// What the model test runs on.
#[derive(Debug, Clone, Copy)]
struct Variant {
    durability: Durability,
    encrypted: bool,
    /// A clone of a snapshot holding data (its parent is never written after).
    clone: bool,
    /// Its chunks compressed (a clone's: its parent's).
    compression: Option<Compression>,
}

impl Variant {
    fn plain(durability: Durability) -> Variant {
        Variant { durability, encrypted: false, clone: false, compression: None }
    }
}

fn codec() -> impl Strategy<Value = Option<Compression>> {
    prop_oneof![Just(None), Just(Some(Compression::Zstd)), Just(Some(Compression::Lz4))]
}

async fn run_model(ops: Vec<Op>, variant: Variant) -> Result<(), TestCaseError> {
    let Variant { durability, encrypted, clone, compression } = variant;
    let h = Harness::new();
    let journal = Arc::new(MemObjectStore::new());
    let disk = Arc::new(MemObjectStore::new());
    let keys = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let key = keys.path().join("key");
    std::fs::write(&key, [0x33u8; 32]).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let encryption = encrypted.then_some(keys::KeySource::Key(keys::Held::File(key)));
    let open = || {
        let opts = VolumeOptions {
            encryption: encryption.clone(),
            compression,
            ..h.model_options(durability, &journal, &disk)
        };
        h.open_with(opts)
    };
    let mut model = Model { possible: vec![vec![0u8]; BLOCKS as usize] };
    if clone {
        let opts = VolumeOptions {
            encryption: encryption.clone(),
            compression,
            ..h.model_options(durability, &journal, &disk)
        };
        clone_parent(&h, VolumeOptions { holder: "base".into(), ..opts }).await?;
        model.possible = (0..BLOCKS).map(|b| vec![inherited_byte(b)]).collect();
    }
    let mut v = open().await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut faults = false;
    let mut snapshots: Vec<(manifest::SnapshotName, Vec<u8>)> = Vec::new();
    let mut taken = 0;
    for op in ops {
        match op {
            Op::Snapshot => {
                taken += 1;
                let name = manifest::SnapshotName::parse(&format!("s{taken}")).expect("a valid name");
                match v.create_snapshot(name.clone()).await {
                    Ok(_) => snapshots.push((name, (0..BLOCKS).map(|b| model.current(b)).collect())),
                    Err(e) => prop_assert!(faults, "a snapshot failed without faults: {e}"),
                }
            }
            Op::DropSnapshot if snapshots.is_empty() => {}
            Op::DropSnapshot => {
                // Failed or not, it may be gone: no longer checked.
                let (name, _) = snapshots.remove(0);
                let r = v.delete_snapshot(&name).await;
                prop_assert!(r.is_ok() || faults, "a snapshot deletion failed without faults: {r:?}");
            }
            Op::Write { lba, blocks, fill, fua } => {
                let data = Bytes::from(vec![fill; (blocks * BS) as usize]);
                let r = v.write(lba * BS, data, fua).await;
                // A write lands in the cache even when its FUA flush fails.
                model.write(lba, blocks, fill);
                match r {
                    Ok(()) if fua => model.durable(),
                    Ok(()) => {}
                    Err(e) => prop_assert!(faults && fua, "write failed without faults: {e}"),
                }
            }
            Op::WriteZeros { lba, blocks } => {
                let r = v.write(lba * BS, Bytes::from(vec![0u8; (blocks * BS) as usize]), false).await;
                model.write(lba, blocks, 0);
                prop_assert!(r.is_ok() || faults, "a write of zeros failed without faults: {r:?}");
            }
            Op::Unmap { lba, blocks } => {
                let r = v.unmap(lba * BS, blocks * BS).await;
                model.write(lba, blocks, 0);
                prop_assert!(r.is_ok() || faults, "unmap failed without faults: {r:?}");
            }
            Op::Read { lba, blocks } => match v.read(lba * BS, (blocks * BS) as usize).await {
                Ok(data) => {
                    for b in 0..blocks {
                        let got = &data[(b * BS) as usize..((b + 1) * BS) as usize];
                        let want = model.current(lba + b);
                        prop_assert!(got.iter().all(|&x| x == want), "block {} read {} want {}", lba + b, got[0], want);
                    }
                }
                Err(e) => prop_assert!(faults, "read failed without faults: {e}"),
            },
            Op::Flush => match v.flush().await {
                Ok(()) => model.durable(),
                Err(e) => prop_assert!(faults || e.to_string().contains("earlier"), "flush failed: {e}"),
            },
            Op::Tick { millis } => tokio::time::sleep(Duration::from_millis(millis)).await,
            Op::Evict => v.evict_clean(&mut v.cache(), u64::MAX),
            Op::Faults(on) => {
                faults = on;
                let set = if on {
                    Faults { fail: 0.2, apply_then_fail: 0.1, lost_request: 0.1, ..Faults::default() }
                } else {
                    Faults::default()
                };
                h.mem.set_faults(set);
                journal.set_faults(set);
                disk.set_faults(set);
            }
            Op::Crash => {
                v.abandon();
                drop(v);
                // Requests already in flight may still land, as after a real crash.
                tokio::time::sleep(Duration::from_secs(5)).await;
                h.mem.set_faults(Faults::default());
                journal.set_faults(Faults::default());
                disk.set_faults(Faults::default());
                faults = false;
                v = open().await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                // Each block now holds one of its possible values: learn which.
                let data = v.read(0, (BLOCKS * BS) as usize).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                for b in 0..BLOCKS {
                    let got = data[(b * BS) as usize];
                    prop_assert!(
                        model.possible[b as usize].contains(&got),
                        "after a crash block {b} holds {got}, not one of {:?}",
                        model.possible[b as usize]
                    );
                    model.possible[b as usize] = vec![got];
                }
                check_snapshots(&h, &snapshots, encryption.as_ref()).await?;
            }
        }
    }
    h.mem.set_faults(Faults::default());
    journal.set_faults(Faults::default());
    disk.set_faults(Faults::default());
    // The first flush may report, once, a background flush that failed under the faults.
    if let Err(e) = v.flush().await {
        prop_assert!(faults, "a flush failed without faults: {e}");
    }
    v.flush().await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    model.durable();
    check_snapshots(&h, &snapshots, encryption.as_ref()).await?;
    // Every snapshot deleted (those a failure left unknown to the model too), nothing they
    // held is left once closed.
    for s in v.snapshots() {
        v.delete_snapshot(&s.name).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    v.close().await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    check_no_zero_or_leaked_objects(&h, &model, clone)?;
    let left: Vec<String> = journal.objects().into_keys().filter(|k| k.contains("/log/")).collect();
    prop_assert!(left.is_empty(), "journal logs left after close: {:?}", left);
    // Reopened, it reads back the model.
    drop(v);
    let v = open().await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    let data = v.read(0, (BLOCKS * BS) as usize).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    for b in 0..BLOCKS {
        prop_assert_eq!(data[(b * BS) as usize], model.current(b), "block {} after reopen", b);
    }
    Ok(())
}

/// Invariant 5: once settled, a data object exists exactly for the chunks holding non-zero
/// data, and no log is left. A zero chunk keeps a tombstone if any version of it was ever sent
/// (the tombstone rule: its newest version is at least as new as every one sent, so a late PUT
/// lands behind it), and only then. A clone (`clone`) keeps no object for a chunk it never
/// wrote (it reads its parent's).
fn check_no_zero_or_leaked_objects(h: &Harness, model: &Model, clone: bool) -> Result<(), TestCaseError> {
    let logs: Vec<String> = h.mem.objects().into_keys().filter(|k| k.contains("/log/")).collect();
    prop_assert!(logs.is_empty(), "logs left after close: {:?}", logs);
    let objects = h.chunk_objects();
    let parse = |key: &str| format::parse_chunk_key(key, "vol/chunks/", format::ChunkLayout::Versioned);
    // Every object is a version of a chunk of the volume, and a closed volume has swept its
    // garbage: one version per chunk at most.
    let mut versions: BTreeMap<u64, Vec<(u64, &Bytes)>> = BTreeMap::new();
    for (key, body) in &objects {
        let parsed = parse(key);
        prop_assert!(parsed.is_some_and(|(c, v)| c < CHUNKS && v.is_some()), "stray object {}", key);
        let (c, v) = parsed.expect("checked");
        versions.entry(c).or_default().push((v.expect("checked"), body));
    }
    let mut newest_sent: BTreeMap<u64, u64> = BTreeMap::new();
    for (c, v) in h.mem.put_keys().iter().filter_map(|k| parse(k)) {
        let newest = newest_sent.entry(c).or_default();
        *newest = (*newest).max(v.unwrap_or(0));
    }
    for c in 0..CHUNKS {
        let nonzero = (c * 4..c * 4 + 4).any(|b| model.current(b) != 0);
        let inherited = clone && (c * 4..c * 4 + 4).any(|b| inherited_byte(b) != 0);
        let stored = versions.get(&c).map_or(&[][..], |v| &v[..]);
        let (tombstones, data): (Vec<_>, Vec<_>) = stored.iter().partition(|(_, b)| b.is_empty());
        prop_assert!(stored.len() <= 1, "chunk {} has {} objects", c, stored.len());
        if let Some(&sent) = newest_sent.get(&c) {
            let newest = stored.iter().map(|(v, _)| *v).max();
            prop_assert!(
                newest.is_some_and(|n| n >= sent),
                "chunk {}: version {:x} was sent, the newest left is {:?}",
                c,
                sent,
                newest
            );
        }
        let needs_tombstone = !nonzero && (newest_sent.contains_key(&c) || inherited);
        prop_assert!(tombstones.is_empty() || needs_tombstone, "chunk {} has a tombstone it needs not", c);
        prop_assert!(data.len() == usize::from(nonzero) || inherited, "chunk {} objects", c);
        for (_, body) in data {
            prop_assert!(body.iter().any(|&b| b != 0), "chunk {} stored as zeros", c);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn chunked_volume_matches_a_flat_model(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(run_model(ops, Variant::plain(Durability::S3)))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// The same with `durability = "local"`: syncs land in the journal, uploads and merges move
    /// them on, crashes replay the union.
    #[test]
    fn a_volume_with_a_journal_matches_a_flat_model(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(run_model(ops, Variant::plain(Durability::Local)))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// The same on an encrypted volume: every object through the sealing layer, under the
    /// same faults, crashes and reopens.
    #[test]
    fn an_encrypted_volume_matches_a_flat_model(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(run_model(ops, Variant { encrypted: true, ..Variant::plain(Durability::S3) }))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// The same on a clone of a snapshot that holds data in half its chunks (encrypted,
    /// compressed or not): writes merge over the parent's data, UNMAPs hide it, crashes replay
    /// over it.
    #[test]
    fn a_clone_matches_a_flat_model(
        ops in proptest::collection::vec(op(), 1..60),
        encrypted in proptest::bool::ANY,
        compression in codec(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(run_model(ops, Variant { durability: Durability::S3, encrypted, clone: true, compression }))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// The same on a compressed volume (zstd or lz4, encrypted or not): every chunk through
    /// the compression layer (and the sealing one), ranged reads of compressed segments.
    #[test]
    fn a_compressed_volume_matches_a_flat_model(
        ops in proptest::collection::vec(op(), 1..60),
        encrypted in proptest::bool::ANY,
        compression in codec().prop_filter("compressed", Option::is_some),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(run_model(ops, Variant { durability: Durability::S3, encrypted, clone: false, compression }))?;
    }
}

// ---------------------------------------------------------------- memory bound

const BIG_CHUNK: u64 = 64 * 1024;
const BIG_CHUNKS: u64 = 48;
/// Cache of the bound check: four chunks' worth of pages, for a volume of 48 chunks.
const SMALL_CACHE: u64 = 4 * BIG_CHUNK;

#[derive(Debug, Clone)]
enum BoundOp {
    /// Blocks of one chunk.
    Write {
        chunk: u64,
        block: u64,
        blocks: u64,
        fill: u8,
    },
    Flush,
    Read {
        chunk: u64,
    },
    Tick {
        millis: u64,
    },
    /// Crash and reopen with the other cache size: the logs (long: nothing merges them by
    /// age) are replayed, into a smaller cache every other time.
    Crash,
}

fn bound_op() -> impl Strategy<Value = BoundOp> {
    let blocks = BIG_CHUNK / BS;
    prop_oneof![
        8 => (0..BIG_CHUNKS, 0..blocks, 1..=blocks, 1u8..=255).prop_map(move |(chunk, block, n, fill)| {
            BoundOp::Write { chunk, block, blocks: n.min(blocks - block), fill }
        }),
        2 => Just(BoundOp::Flush),
        2 => (0..BIG_CHUNKS).prop_map(|chunk| BoundOp::Read { chunk }),
        1 => (1u64..4000).prop_map(|millis| BoundOp::Tick { millis }),
        1 => Just(BoundOp::Crash),
    ]
}

async fn run_bound(ops: Vec<BoundOp>) -> Result<(), TestCaseError> {
    let h = Harness::new();
    let opts = |cache_bytes| VolumeOptions {
        cache_bytes,
        merge_age: Duration::from_secs(3600),
        log_bytes_max: u64::MAX,
        ..h.options(BIG_CHUNK, BIG_CHUNKS, "bound")
    };
    let open = |cache| {
        let opts = opts(cache);
        async { h.open_with(opts).await.map_err(|e| TestCaseError::fail(e.to_string())) }
    };
    let mut cache = 3 * SMALL_CACHE;
    let mut v = open(cache).await?;
    let blocks = BIG_CHUNK * BIG_CHUNKS / BS;
    let mut model = Model { possible: vec![vec![0u8]; blocks as usize] };
    // Merge buffers, readahead pieces (a chunk each here), a log body (what is unlogged fits in
    // the largest cache), and headers.
    let readahead = read::READAHEAD_PARALLEL as u64 * BIG_CHUNK;
    let beyond = MERGE_PARALLEL as u64 * 2 * BIG_CHUNK + readahead + 3 * SMALL_CACHE + 64 * 1024;
    for op in ops {
        match op {
            BoundOp::Write { chunk, block, blocks, fill } => {
                let lba = chunk * BIG_CHUNK / BS + block;
                v.write(lba * BS, Bytes::from(vec![fill; (blocks * BS) as usize]), false)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                model.write(lba, blocks, fill);
            }
            BoundOp::Flush => {
                v.flush().await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                model.durable();
            }
            BoundOp::Read { chunk } => {
                let data = v
                    .read(chunk * BIG_CHUNK, BIG_CHUNK as usize)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                for b in 0..BIG_CHUNK / BS {
                    let lba = chunk * BIG_CHUNK / BS + b;
                    prop_assert_eq!(data[(b * BS) as usize], model.current(lba), "block {}", lba);
                }
            }
            BoundOp::Tick { millis } => tokio::time::sleep(Duration::from_millis(millis)).await,
            BoundOp::Crash => {
                v.abandon();
                drop(v);
                cache = if cache == SMALL_CACHE { 3 * SMALL_CACHE } else { SMALL_CACHE };
                v = open(cache).await?;
                let data = v.read(0, (blocks * BS) as usize).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                for b in 0..blocks {
                    let got = data[(b * BS) as usize];
                    prop_assert!(model.possible[b as usize].contains(&got), "after a crash block {} holds {}", b, got);
                    model.possible[b as usize] = vec![got];
                }
            }
        }
        let limit = v.cache_limit();
        let (cache_peak, memory_peak) = v.peaks();
        prop_assert!(cache_peak <= limit, "cache pages reached {} of a {} limit", cache_peak, limit);
        prop_assert!(memory_peak <= limit + beyond, "memory reached {} (bound {})", memory_peak, limit + beyond);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]

    /// The cache limit holds for writes, merges, reads and replay, whatever the pressure; and
    /// the data stays right.
    #[test]
    fn memory_stays_within_the_cache_limit(ops in proptest::collection::vec(bound_op(), 1..80)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(run_bound(ops))?;
    }
}

#[path = "journal_tests.rs"]
mod journal_tests;

#[path = "read_tests.rs"]
mod read_tests;

#[path = "chunk_map_tests.rs"]
mod chunk_map_tests;

#[path = "snapshot_tests.rs"]
mod snapshot_tests;

#[path = "clone_tests.rs"]
mod clone_tests;

#[path = "room_tests.rs"]
mod room_tests;

#[path = "meta_edit_tests.rs"]
mod meta_edit_tests;

#[path = "disk_cache_tests.rs"]
mod disk_cache_tests;

/// Group commit through a network: each worker's next FUA write arrives half a millisecond
/// after its last one was answered (an initiator's round trip), just after the next flush has
/// started. Gathered, one flush a round covers all 32; without gathering the first writer back
/// flushes alone and the other 31 wait for a second flush, so every round takes two.
#[tokio::test(start_paused = true)]
async fn fua_writes_that_come_back_after_a_round_trip_share_one_flush() {
    let gathered = round_trip_rounds_of_fua_writes(false).await;
    let scattered = round_trip_rounds_of_fua_writes(true).await;
    assert!(gathered <= 13, "{gathered} log PUTs for 10 rounds of 32 FUA writes");
    // The planted bug: three flushes a round.
    assert!(scattered >= 20, "{scattered} log PUTs without gathering");
}

/// Log PUTs of the rounds above; with `scatter`, gathering is planted away.
async fn round_trip_rounds_of_fua_writes(scatter: bool) -> u64 {
    let h = Harness::new();
    // A cache that holds every write: none waits for room.
    let v = h.open_with(VolumeOptions { cache_bytes: 8 << 20, ..h.options(64 * 1024, 64, "a") }).await.unwrap();
    v.planted.groups_scatter.store(scatter, Ordering::Relaxed);
    h.mem.set_faults(Faults { latency: Duration::from_millis(20), ..Faults::default() });
    let before = v.stats.logs_written.load(Ordering::Relaxed);
    let workers: Vec<_> = (0..32u64)
        .map(|w| {
            let v = v.clone();
            tokio::spawn(async move {
                for i in 0..10u64 {
                    tokio::time::sleep(Duration::from_micros(500 + w * 10)).await;
                    v.write((w * 2 + i % 2) * 64 * 1024, block(w as u8 + 1), true).await.unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    v.stats.logs_written.load(Ordering::Relaxed) - before
}

/// An atomic write across three chunks, among plain writes and a background of merges: a crash
/// once it is acknowledged keeps all of it.
#[tokio::test(start_paused = true)]
async fn an_acknowledged_atomic_write_survives_a_crash_whole() {
    let h = Harness::new();
    let chunk = 64 * 1024u64;
    let v = h.open(chunk, 4, "a").await.unwrap();
    assert_eq!(v.caps().atomic_write_max, crate::storage::ATOMIC_WRITE_MAX);
    v.write(0, Bytes::from(vec![1u8; chunk as usize]), false).await.unwrap();
    let (at, len) = (chunk - 4096, 2 * chunk as usize);
    v.write_atomic(at, Bytes::from(vec![0xa6u8; len]), false).await.unwrap();
    v.write(3 * chunk, block(2), false).await.unwrap();
    v.abandon();
    drop(v);
    let v = h.open(chunk, 4, "a").await.unwrap();
    assert_eq!(v.read(at, len).await.unwrap(), vec![0xa6u8; len]);
    assert_eq!(v.read(0, 512).await.unwrap(), block(1), "blocks before it, logged with it or not, are as written");
}

/// An atomic write during a short store outage waits for the store (as a SYNCHRONIZE CACHE
/// does), succeeds when it returns and is there whole after a crash; one sent into an outage
/// longer than its deadline is NOT READY (retried by initiators, never a medium error) and
/// leaves nothing behind.
#[tokio::test(start_paused = true)]
async fn an_atomic_write_waits_out_a_short_outage_and_fails_whole_in_a_long_one() {
    let h = Harness::new();
    let chunk = 64 * 1024u64;
    let v = h.open(chunk, 4, "a").await.unwrap();
    let (at, len) = (chunk - 4096, 2 * chunk as usize);
    h.mem.set_faults(Faults { fail: 1.0, ..Faults::default() });
    let atomic = start({
        let v = v.clone();
        async move { v.write_atomic(at, Bytes::from(vec![0xa6u8; len]), false).await }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!atomic.is_finished(), "it waits for the store");
    h.mem.set_faults(Faults::default());
    atomic.await.expect("task").expect("the atomic write succeeds once the store is back");

    h.mem.set_faults(Faults { fail: 1.0, ..Faults::default() });
    let long = v.write_atomic(3 * chunk - 4096, Bytes::from(vec![0x5bu8; len]), false).await;
    assert!(not_ready(long), "past its deadline: NOT READY");
    h.mem.set_faults(Faults::default());
    v.abandon();
    drop(v);
    let v = h.open_with(on_node(h.options(chunk, 4, "b"), "n2")).await.unwrap();
    assert_eq!(v.read(at, len).await.unwrap(), vec![0xa6u8; len], "the acknowledged one, whole");
    assert_eq!(v.read(3 * chunk - 4096, len).await.unwrap(), vec![0u8; len], "nothing of the refused one");
}

/// A crash while the atomic write's log is on its way leaves none of it: no merge made any part
/// of it durable meanwhile.
#[tokio::test(start_paused = true)]
async fn an_atomic_write_cut_by_a_crash_leaves_nothing() {
    let h = Harness::new();
    let chunk = 64 * 1024u64;
    let v = h.open(chunk, 4, "a").await.unwrap();
    let (at, len) = (chunk - 4096, 2 * chunk as usize);
    // Logged before the atomic write's log is held: a merge of data no log holds would
    // first write a log naming its chunk (`log.rs`), behind the held one.
    v.write(3 * chunk, block(2), true).await.unwrap();
    h.mem.hold("vol/log/");
    let atomic = start({
        let v = v.clone();
        async move { v.write_atomic(at, Bytes::from(vec![0xa6u8; len]), false).await }
    })
    .await;
    // Other writes are merged meanwhile, stamped after the atomic write's log.
    v.merge_chunks(&[3]).await.unwrap();
    assert!(!atomic.is_finished());
    atomic.abort();
    v.abandon();
    drop(v);
    h.mem.release_all();
    let v = h.open(chunk, 4, "a").await.unwrap();
    assert_eq!(v.read(at, len).await.unwrap(), vec![0u8; len]);
    assert_eq!(v.read(3 * chunk, 512).await.unwrap(), block(2));
}

/// An UNMAP whose tombstones failed leaves its zeros dirty in the cache: the next SYNCHRONIZE
/// CACHE makes them durable (it once found "every write durable" and did nothing, and a crash
/// brought the unmapped data back).
#[tokio::test(start_paused = true)]
async fn a_sync_after_a_failed_unmap_makes_its_zeros_durable() {
    let h = Harness::new();
    let chunk = 64 * 1024;
    let v = h.open(chunk, 4, "a").await.unwrap();
    v.write(0, Bytes::from(vec![7u8; chunk as usize]), false).await.unwrap();
    v.merge_chunk(0).await.unwrap();
    v.flush().await.unwrap(); // every write so far durable
    h.mem.refuse_puts(Some("vol/chunks/"));
    assert!(v.unmap(0, chunk).await.is_err());
    h.mem.refuse_puts(None);
    v.flush().await.unwrap();
    v.abandon();
    drop(v);
    let v = h.open(chunk, 4, "a").await.unwrap();
    let read = v.read(0, chunk as usize).await.unwrap();
    assert!(read.iter().all(|&b| b == 0), "the unmapped chunk came back as {}", read[0]);
    v.close().await.unwrap();
}

#[path = "crypto_erase_tests.rs"]
mod crypto_erase_tests;
