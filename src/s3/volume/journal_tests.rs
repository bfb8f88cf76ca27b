//! `durability = "local"`: the journal makes syncs durable without the object store, hands its
//! logs on, and is replayed only by its own node.

use std::path::Path;

use super::*;
use crate::s3::local::{CrashFs, Offload, SegmentOptions, SegmentStore};

const CHUNK_64K: u64 = 64 * 1024;

fn with_journal(mut opts: VolumeOptions, node: &str, journal: &Arc<dyn ObjectStore>) -> VolumeOptions {
    opts = on_node(opts, node);
    opts.journal = Some(JournalOptions { store: journal.clone(), bytes_max: 1 << 20 });
    opts
}

fn mem_journal() -> (Arc<MemObjectStore>, Arc<dyn ObjectStore>) {
    let mem = Arc::new(MemObjectStore::new());
    (mem.clone(), mem)
}

/// The keys of the journal's logs (set aside or not), without its owner record.
fn journal_logs(jmem: &MemObjectStore) -> Vec<String> {
    jmem.objects().into_keys().filter(|k| k.contains("/log/")).collect()
}

fn store_logs(h: &Harness) -> usize {
    h.mem.objects().keys().filter(|k| k.contains("/log/")).count()
}

/// With the object store away, a FUA write answers from the journal at once; after a crash,
/// the reopened volume replays the journal and has it.
#[tokio::test(start_paused = true)]
async fn a_fua_write_is_durable_in_the_journal_while_the_store_is_away() {
    let h = Harness::new();
    let (jmem, journal) = mem_journal();
    let opts = with_journal(h.options(CHUNK_64K, 4, "a"), "n1", &journal);
    let v = h.open_with(opts.clone()).await.unwrap();
    h.mem.set_faults(Faults { fail: 1.0, ..Faults::default() });
    let started = tokio::time::Instant::now();
    v.write(0, block(7), true).await.unwrap();
    v.write(512, block(8), false).await.unwrap();
    v.flush().await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(10), "waited {:?}", started.elapsed());
    assert_eq!(store_logs(&h), 0, "nothing reached the object store");
    assert_eq!(journal_logs(&jmem).len(), 2, "two journal logs");
    v.abandon();
    drop(v);
    h.mem.set_faults(Faults::default());
    let again = h.open_with(opts).await.unwrap();
    assert_eq!(again.read(0, 1024).await.unwrap(), [block(7), block(8)].concat());
    assert_eq!(journal_logs(&jmem).len(), 0, "replayed, merged and deleted");
    assert_eq!(store_logs(&h), 0);
}

/// A journal log settled and deleted whose local copy comes back (a deletion the journal's
/// disk lost, a copy an upload left): the next open finds it below the settled floor and
/// deletes it unread, as it does a store copy. Replayed, its data would come back over the
/// chunk zeroed since, which has no stamp to say the log is old.
#[tokio::test(start_paused = true)]
async fn a_journal_log_found_below_the_settled_floor_is_deleted_unread() {
    let h = Harness::new();
    let (jmem, journal) = mem_journal();
    let opts = with_journal(h.options(CHUNK_64K, 4, "a"), "n1", &journal);
    let v = h.open_with(opts.clone()).await.unwrap();
    v.write(0, block(0x11), true).await.unwrap();
    let mut copies = Vec::new();
    for key in journal_logs(&jmem) {
        let got = jmem.get(&key, None).await.unwrap();
        copies.push((key, got.body, got.meta.metadata));
    }
    assert!(!copies.is_empty(), "the FUA write is in a journal log");
    v.unmap(0, CHUNK_64K).await.unwrap();
    v.settle_everything().await.unwrap();
    assert!(journal_logs(&jmem).is_empty() && store_logs(&h) == 0, "settled and deleted");
    v.abandon();
    drop(v);
    for (key, body, metadata) in copies {
        jmem.put(&key, body, metadata, Condition::None).await.unwrap();
    }
    let v = h.open_with(opts).await.unwrap();
    assert_eq!(v.read(0, BS as usize).await.unwrap(), vec![0u8; BS as usize], "the settled journal log was replayed");
    assert!(journal_logs(&jmem).is_empty(), "the copy that came back is deleted");
}

/// The background uploads journal logs and drops their local copies: another node, which sees
/// no journal, finds the data.
#[tokio::test(start_paused = true)]
async fn journal_logs_reach_the_store_and_leave_the_journal() {
    let h = Harness::new();
    let (jmem, journal) = mem_journal();
    let v = h.open_with(with_journal(h.options(CHUNK_64K, 4, "a"), "n1", &journal)).await.unwrap();
    for i in 0..8u64 {
        v.write(i * 512, block(i as u8 + 1), true).await.unwrap();
    }
    assert_eq!(v.counters().journal_writes, 8);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(journal_logs(&jmem).len(), 0, "uploaded within a flush interval");
    assert_eq!(v.counters().journal_uploads, 8);
    assert_eq!(store_logs(&h), 8);
    v.abandon();
    let other = h.open_with(on_node(h.options(CHUNK_64K, 4, "b"), "n2")).await.unwrap();
    for i in 0..8u64 {
        assert_eq!(other.read(i * 512, 512).await.unwrap(), block(i as u8 + 1));
    }
}

/// Once another node opened the volume, this node's journal holds writes the volume moved on
/// from: it is set aside, not replayed over newer data.
#[tokio::test(start_paused = true)]
async fn a_journal_superseded_by_another_nodes_open_is_set_aside() {
    let h = Harness::new();
    let (jmem, journal) = mem_journal();
    let opts = with_journal(h.options(CHUNK_64K, 4, "a"), "n1", &journal);
    let a = h.open_with(opts.clone()).await.unwrap();
    h.mem.set_faults(Faults { fail: 1.0, ..Faults::default() });
    a.write(0, block(1), true).await.unwrap();
    a.abandon();
    drop(a);
    h.mem.set_faults(Faults::default());
    let b = h.open_with(on_node(h.options(CHUNK_64K, 4, "b"), "n2")).await.unwrap();
    assert_eq!(b.read(0, 512).await.unwrap(), block(0), "n1's journal is not visible to n2");
    b.write(512, block(2), true).await.unwrap();
    b.close().await.unwrap();
    let again = h.open_with(opts).await.unwrap();
    assert_eq!(again.read(0, 1024).await.unwrap(), [block(0), block(2)].concat(), "nothing stale replayed");
    let kept = journal_logs(&jmem);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].contains("/stale-"), "set aside, not deleted: {kept:?}");
    again.write(0, block(3), true).await.unwrap();
    again.abandon();
    let last = h.open_with(with_journal(h.options(CHUNK_64K, 4, "c"), "n1", &journal)).await.unwrap();
    assert_eq!(last.read(0, 512).await.unwrap(), block(3), "its own journal is replayed again");
}

/// A full journal sends syncs to the object store.
#[tokio::test(start_paused = true)]
async fn a_full_journal_sends_syncs_to_the_store() {
    let h = Harness::new();
    let (_jmem, journal) = mem_journal();
    let mut opts = with_journal(h.options(CHUNK_64K, 4, "a"), "n1", &journal);
    opts.journal.as_mut().unwrap().bytes_max = 1;
    opts.flush_interval = Duration::from_secs(3600); // no uploads
    let v = h.open_with(opts).await.unwrap();
    v.write(0, block(1), true).await.unwrap();
    v.write(512, block(2), true).await.unwrap();
    v.write(1024, block(3), true).await.unwrap();
    assert_eq!(v.counters().journal_writes, 1);
    assert_eq!(v.counters().logs_written, 2);
}

/// Two volumes with one uuid (as `rtgt volume import` made them) cannot share a journal: the
/// second is refused, naming the first, instead of writing and replaying its logs (seen: a
/// synced write of one volume lost, the other's data in its place, after a crash).
#[tokio::test(start_paused = true)]
async fn two_volumes_with_one_uuid_cannot_share_a_journal() {
    let h = Harness::new();
    let (jmem, journal) = mem_journal();
    let a = h.open_with(with_journal(h.options(CHUNK_64K, 4, "a"), "n1", &journal)).await.unwrap();
    a.write(0, block(1), true).await.unwrap();
    let twin = S3Url::parse("s3://bucket/twin").unwrap();
    let opts = with_journal(h.options(CHUNK_64K, 4, "a"), "n1", &journal);
    let err = S3Volume::open(h.mem.clone(), twin.clone(), opts, Arc::new(TokioClock::new())).await.err().unwrap();
    assert!(matches!(&err, OpenError::Refused(m) if m.contains("s3://bucket/") && m.contains("cache_dir")), "{err}");
    assert_eq!(journal_logs(&jmem).len(), 1, "the first volume's log is untouched");
    a.abandon();
    drop(a);
    let again = h.open_with(with_journal(h.options(CHUNK_64K, 4, "a"), "n1", &journal)).await.unwrap();
    assert_eq!(again.read(0, 512).await.unwrap(), block(1), "its owner still opens it and replays it");
    // With a journal of its own, the twin opens.
    let (_other, own) = mem_journal();
    let opts = with_journal(h.options(CHUNK_64K, 4, "a"), "n1", &own);
    S3Volume::open(h.mem.clone(), twin, opts, Arc::new(TokioClock::new())).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_journal_needs_a_node() {
    let h = Harness::new();
    let (_jmem, journal) = mem_journal();
    let mut opts = h.options(CHUNK_64K, 4, "a");
    opts.journal = Some(JournalOptions { store: journal, bytes_max: 1 << 20 });
    let err = h.open_with(opts).await.err().unwrap();
    assert!(matches!(&err, OpenError::Refused(m) if m.contains("node")), "{err}");
}

/// The journal as production keeps it, on a filesystem that forgets what was not synced.
fn journal_root(fs: &CrashFs, incarnation: u64) -> Arc<dyn ObjectStore> {
    let options = SegmentOptions { offload: Offload::Inline, etag_seed: incarnation << 32, segment_bytes: 64 * 1024 };
    Arc::new(SegmentStore::open(Arc::new(fs.clone()), Path::new("/journal"), options).unwrap())
}

/// A power loss at any step of a journal write leaves the write whole (if acknowledged) or
/// invisible: the volume opens, and holds the acknowledged write.
#[tokio::test(start_paused = true)]
async fn a_journal_write_cut_short_by_a_power_loss_is_whole_or_invisible() {
    let mut acknowledged_at = None;
    for step in 0..12 {
        let h = Harness::new();
        let fs = CrashFs::new();
        let journal = journal_root(&fs, 0);
        let mut opts = with_journal(h.options(CHUNK_64K, 4, "a"), "n1", &journal);
        opts.command_deadline = Duration::from_secs(2);
        let v = h.open_with(opts.clone()).await.unwrap();
        v.write(0, block(1), true).await.unwrap();
        // The store is away: the second write is durable in the journal or not at all.
        h.mem.set_faults(Faults { fail: 1.0, ..Faults::default() });
        fs.die_after(step);
        let acked = v.write(512, block(2), true).await.is_ok();
        v.abandon();
        drop((v, journal));
        fs.power_loss();
        h.mem.set_faults(Faults::default());
        opts.journal = Some(JournalOptions { store: journal_root(&fs, 1), bytes_max: 1 << 20 });
        let again = h.open_with(opts).await.unwrap_or_else(|e| panic!("step {step}: {e}"));
        assert_eq!(again.read(0, 512).await.unwrap(), block(1), "step {step}");
        let second = again.read(512, 512).await.unwrap();
        if acked {
            acknowledged_at.get_or_insert(step);
            assert_eq!(second, block(2), "step {step}: an acknowledged write is kept");
        } else {
            assert!(second == block(0) || second == block(2), "step {step}");
        }
    }
    assert!(acknowledged_at.is_some_and(|s| s > 0), "the write needs some steps: {acknowledged_at:?}");
}
