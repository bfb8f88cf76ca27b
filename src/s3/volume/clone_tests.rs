//! Clones: made at once from a snapshot, reading through to it until written, never touching
//! their parent, surviving crashes, cloned again, encrypted alike; the snapshot stays while a
//! clone needs it.

use super::clone::clone_volume;
use super::manifest::SnapshotName;
use super::snapshot::SnapshotError;
use super::*;
use crate::clock::TokioClock;
use crate::s3::{BoxFuture, GetOutput, MemObjectStore, ObjResult};

const CHUNK_64K: u64 = 64 * 1024;

fn fill(byte: u8) -> Bytes {
    Bytes::from(vec![byte; CHUNK_64K as usize])
}

fn name(n: &str) -> SnapshotName {
    SnapshotName::parse(n).unwrap()
}

fn at(prefix: &str) -> S3Url {
    S3Url::parse(&format!("s3://bucket/{prefix}")).unwrap()
}

async fn open_at(h: &Harness, url: S3Url, opts: VolumeOptions) -> Arc<S3Volume> {
    S3Volume::open(h.mem.clone(), url, opts, Arc::new(TokioClock::new())).await.unwrap()
}

/// Volume `base` of 4 chunks of 64 KiB: chunks 0, 1, 2 full of 1, 2, 3 in snapshot `s`, then
/// chunk 0 rewritten with 9. Opened twice first, so that its sequence numbers (and chunk
/// stamps) are of a later epoch than a new clone's.
async fn base_with_snapshot(h: &Harness, opts: &VolumeOptions) -> Arc<S3Volume> {
    open_at(h, at("base"), opts.clone()).await.close().await.unwrap();
    let base = open_at(h, at("base"), opts.clone()).await;
    for c in 0..3 {
        base.write(c * CHUNK_64K, fill(c as u8 + 1), true).await.unwrap();
    }
    base.create_snapshot(name("s")).await.unwrap();
    base.write(0, fill(9), false).await.unwrap();
    base.merge_chunks(&base.dirty_chunks()).await.unwrap();
    base
}

async fn clone_of_base(h: &Harness, to: &str) -> VolumeMeta {
    clone_volume(&*h.mem, &at("base"), &name("s"), &at(to), &TokioClock::new(), 7).await.unwrap()
}

fn keys_under(h: &Harness, prefix: &str) -> BTreeMap<String, Bytes> {
    h.mem.objects().into_iter().filter(|(k, _)| k.starts_with(prefix)).collect()
}

async fn chunk(v: &S3Volume, c: u64) -> Bytes {
    v.read(c * CHUNK_64K, CHUNK_64K as usize).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_clone_reads_its_snapshot_until_written_and_never_touches_its_parent() {
    let h = Harness::new();
    let base = base_with_snapshot(&h, &h.options(CHUNK_64K, 4, "a")).await;
    let meta = clone_of_base(&h, "vol").await;
    assert_eq!((meta.format_version, meta.size), (format::CLONE_FORMAT_VERSION, 4 * CHUNK_64K));
    let parent_objects = keys_under(&h, "base/chunks/");
    let v = h.open(CHUNK_64K, 4, "b").await.unwrap();
    assert!(chunk(&v, 0).await == fill(1), "the clone reads what its parent wrote after the snapshot");
    assert!(chunk(&v, 2).await == fill(3) && chunk(&v, 3).await.iter().all(|&b| b == 0));
    // A partial write merges over the inherited data; an UNMAP hides it with a tombstone.
    v.write(CHUNK_64K, block(7), false).await.unwrap();
    v.unmap(2 * CHUNK_64K, CHUNK_64K).await.unwrap();
    v.merge_chunks(&v.dirty_chunks()).await.unwrap();
    v.sweep_garbage().await;
    v.abandon();
    drop(v);
    let v = h.open(CHUNK_64K, 4, "b").await.unwrap();
    let one = chunk(&v, 1).await;
    assert!(
        one[..BS as usize] == block(7)[..] && one[BS as usize..].iter().all(|&b| b == 2),
        "merged over the parent's"
    );
    assert!(chunk(&v, 2).await.iter().all(|&b| b == 0), "the unmapped chunk shows its parent's data again");
    assert!(chunk(&v, 0).await == fill(1));
    v.sweep_garbage().await;
    v.close().await.unwrap();
    assert_eq!(keys_under(&h, "base/chunks/"), parent_objects, "the clone changed its parent's objects");
    assert!(chunk(&base, 0).await == fill(9) && chunk(&base, 2).await == fill(3), "the parent changed");
    base.close().await.unwrap();
}

/// The stamps of the parent's versions are of the parent's sequence: the clone's logs are
/// all newer than what it reads through to, whatever their numbers.
#[tokio::test(start_paused = true)]
async fn a_logged_write_to_an_inherited_chunk_survives_a_crash() {
    let h = Harness::new();
    base_with_snapshot(&h, &h.options(CHUNK_64K, 4, "a")).await.close().await.unwrap();
    clone_of_base(&h, "vol").await;
    let v = h.open(CHUNK_64K, 4, "b").await.unwrap();
    v.write(2 * CHUNK_64K, block(5), true).await.unwrap(); // in a log only
    v.abandon();
    drop(v);
    let v = h.open(CHUNK_64K, 4, "b").await.unwrap();
    let two = chunk(&v, 2).await;
    assert!(two[..BS as usize] == block(5)[..], "the logged write was lost at replay (read {})", two[0]);
    assert!(two[BS as usize..].iter().all(|&b| b == 3));
    v.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_with_clones_stays_until_they_are_deleted() {
    let h = Harness::new();
    let base = base_with_snapshot(&h, &h.options(CHUNK_64K, 4, "a")).await;
    let meta = clone_of_base(&h, "vol").await;
    let err = base.delete_snapshot(&name("s")).await.unwrap_err();
    assert!(matches!(&err, SnapshotError::HasClones { clones, .. } if *clones == meta.uuid), "{err}");
    let marker = super::clone::deleting_marker(&at("base").key(""), &name("s"));
    assert!(!h.mem.objects().contains_key(&marker), "a refused deletion takes its marker back");
    let clock = Arc::new(TokioClock::new());
    let refused = delete_volume(h.mem.clone(), &at("base"), true, clock.clone(), "cli".into()).await.unwrap_err();
    assert!(refused.contains("has clones"), "{refused}");
    assert!(matches!(
        clone_volume(&*h.mem, &at("base"), &name("s"), &at("vol"), &*clock, 8).await,
        Err(CreateError::Exists(_))
    ));
    delete_volume(h.mem.clone(), &at("vol"), false, clock, "cli".into()).await.unwrap();
    base.delete_snapshot(&name("s")).await.unwrap();
    base.close().await.unwrap();
}

/// The memory store, with gc of `base`'s clone records run after every PUT: each point
/// between a clone's steps.
struct GcAfterEachPut(Arc<MemObjectStore>);

impl ObjectStore for GcAfterEachPut {
    fn describe(&self) -> String {
        "gc after each put".into()
    }
    fn get(&self, key: &str, range: Option<std::ops::Range<u64>>) -> BoxFuture<'_, ObjResult<GetOutput>> {
        self.0.get(key, range)
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
            let put = self.0.put(&key, body, metadata, condition).await;
            let base_uuid = S3Volume::read_meta(&*self.0, &at("base")).await.unwrap().unwrap().0.uuid;
            super::clone::forget_missing_clones(&*self.0, &at("base"), &base_uuid).await.unwrap();
            put
        })
    }
    fn delete(&self, key: &str) -> BoxFuture<'_, ObjResult<()>> {
        self.0.delete(key)
    }
    fn delete_many(&self, keys: Vec<String>) -> BoxFuture<'_, ObjResult<crate::s3::DeleteResults>> {
        self.0.delete_many(keys)
    }
    fn list(&self, prefix: &str, c: Option<String>) -> BoxFuture<'_, ObjResult<crate::s3::ListPage>> {
        self.0.list(prefix, c)
    }
    fn head(&self, key: &str) -> BoxFuture<'_, ObjResult<crate::s3::ObjectMeta>> {
        self.0.head(key)
    }
}

/// gc removes the records of clones that are not there; run between any two steps of a clone
/// being made, it leaves its record, so the snapshot stays (it took the record of a clone
/// whose metadata was not written yet, and the snapshot could then be deleted under it).
#[tokio::test(start_paused = true)]
async fn gc_never_takes_the_record_of_a_clone_being_made() {
    let h = Harness::new();
    let base = base_with_snapshot(&h, &h.options(CHUNK_64K, 4, "a")).await;
    let store = GcAfterEachPut(h.mem.clone());
    let meta = clone_volume(&store, &at("base"), &name("s"), &at("vol"), &TokioClock::new(), 8).await.unwrap();
    let err = base.delete_snapshot(&name("s")).await.unwrap_err();
    assert!(matches!(&err, SnapshotError::HasClones { clones, .. } if *clones == meta.uuid), "{err}");
    let v = open_at(&h, at("vol"), h.options(CHUNK_64K, 4, "b")).await;
    assert!(chunk(&v, 1).await == fill(2));
    v.close().await.unwrap();
    // A clone cut short after its metadata (no record yet) does not open; deleting it (as the
    // error says) removes it, and gc then finds nothing to keep.
    let (mut cut, _) = S3Volume::read_meta(&*h.mem, &at("vol")).await.unwrap().unwrap();
    cut.making = true;
    h.mem.put(&at("vol").key(format::META_NAME), cut.encode(), BTreeMap::new(), Condition::None).await.unwrap();
    let refused = S3Volume::open(h.mem.clone(), at("vol"), h.options(CHUNK_64K, 4, "c"), Arc::new(TokioClock::new()))
        .await
        .err()
        .expect("a clone being made opened");
    assert!(refused.to_string().contains("rtgt volume delete"), "{refused}");
    delete_volume(h.mem.clone(), &at("vol"), false, Arc::new(TokioClock::new()), "cli".into()).await.unwrap();
    base.delete_snapshot(&name("s")).await.unwrap();
    base.close().await.unwrap();
}

/// A deletion of the snapshot, or of its volume, that looked for clones before a clone's
/// record was there has marked itself first: the clone, looking after its record is there,
/// sees the mark and is not made (both succeeded, and the clone could never open).
#[tokio::test(start_paused = true)]
async fn a_clone_is_not_made_of_a_snapshot_or_volume_being_deleted() {
    let h = Harness::new();
    let base = base_with_snapshot(&h, &h.options(CHUNK_64K, 4, "a")).await;
    let clock = TokioClock::new();
    let marker = super::clone::deleting_marker(&at("base").key(""), &name("s"));
    let mark = super::clone::deleting_mark(&base.cache().snapshots[&name("s")]);
    h.mem.put(&marker, mark, BTreeMap::new(), Condition::None).await.unwrap();
    let err = clone_volume(&*h.mem, &at("base"), &name("s"), &at("vol"), &clock, 8).await.unwrap_err();
    assert!(err.to_string().contains("being deleted"), "{err}");
    assert!(keys_under(&h, "base/snapshots/s.clones/").is_empty() && keys_under(&h, "vol/").is_empty());
    // A marker of an earlier snapshot of the name (a deletion cut short) stops nothing.
    h.mem.put(&marker, Bytes::from("1234"), BTreeMap::new(), Condition::None).await.unwrap();
    clone_volume(&*h.mem, &at("base"), &name("s"), &at("vol"), &clock, 8).await.unwrap();
    delete_volume(h.mem.clone(), &at("vol"), false, Arc::new(clock.clone()), "cli".into()).await.unwrap();
    base.close().await.unwrap();

    let (mut meta, _) = S3Volume::read_meta(&*h.mem, &at("base")).await.unwrap().unwrap();
    meta.deleting = true;
    h.mem.put(&at("base").key(format::META_NAME), meta.encode(), BTreeMap::new(), Condition::None).await.unwrap();
    let err = clone_volume(&*h.mem, &at("base"), &name("s"), &at("vol"), &clock, 8).await.unwrap_err();
    assert!(err.to_string().contains("being deleted"), "{err}");
    assert!(keys_under(&h, "base/snapshots/s.clones/").is_empty() && keys_under(&h, "vol/").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_clone_of_a_clone_reads_through_both() {
    let h = Harness::new();
    base_with_snapshot(&h, &h.options(CHUNK_64K, 4, "a")).await.close().await.unwrap();
    clone_of_base(&h, "mid").await;
    let mid = open_at(&h, at("mid"), h.options(CHUNK_64K, 4, "b")).await;
    mid.write(CHUNK_64K, fill(4), false).await.unwrap();
    mid.create_snapshot(name("t")).await.unwrap();
    mid.write(0, fill(6), false).await.unwrap(); // after the snapshot: not in the grandchild
    mid.close().await.unwrap();
    clone_volume(&*h.mem, &at("mid"), &name("t"), &at("leaf"), &TokioClock::new(), 9).await.unwrap();
    let leaf = open_at(&h, at("leaf"), h.options(CHUNK_64K, 4, "c")).await;
    assert!(chunk(&leaf, 0).await == fill(1), "not the grandparent's snapshot");
    assert!(chunk(&leaf, 1).await == fill(4), "not the parent's snapshot");
    assert!(chunk(&leaf, 2).await == fill(3));
    let view = SnapshotView::open(h.mem.clone(), &at("mid"), &name("t"), None).await.unwrap();
    assert!(view.read(0, 3 * CHUNK_64K as usize).await.unwrap() == [fill(1), fill(4), fill(3)].concat());
    leaf.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_encrypted_clone_reads_its_parent_with_the_same_key() {
    let (h, dir) = (Harness::new(), tempfile::tempdir().unwrap());
    let opts = encrypted(&h, &dir, [4; 32], CHUNK_64K);
    base_with_snapshot(&h, &opts).await.close().await.unwrap();
    let meta = clone_of_base(&h, "vol").await;
    assert!(meta.encryption.is_some());
    assert!(h.open(CHUNK_64K, 4, "b").await.is_err(), "opened without its key");
    let v = open_at(&h, url(), VolumeOptions { holder: "b".into(), ..opts }).await;
    assert!(chunk(&v, 1).await == fill(2));
    v.write(0, block(8), true).await.unwrap();
    v.merge_chunks(&v.dirty_chunks()).await.unwrap();
    for (key, body) in keys_under(&h, "vol/chunks/") {
        assert!(!body.windows(64).any(|w| w == &block(8)[..64]), "{key} holds plaintext");
    }
    assert!(chunk(&v, 0).await[..BS as usize] == block(8)[..]);
    v.close().await.unwrap();
}
