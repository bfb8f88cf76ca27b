//! An S3 LUN whose store is at a distance: the embedded store over HTTP behind a network
//! emulator (`rtgt_testkit::netem`), a target in this process, and an initiator. The store goes away
//! for longer than the lease, or sits behind a slow capped link; the initiator must see no
//! errors for plain writes, a SYNCHRONIZE CACHE must wait and then succeed, and every
//! acknowledged write must be in the store afterwards (read back by a second target). With a
//! disk cache, reads of what it holds need no store.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::TestTarget;
use rtgt::config::Config;
use rtgt::rng::Rng;
use rtgt::s3::embedded::{self, EmbeddedS3};
use rtgt_testkit::initiator::{InitiatorConfig, Session, rw16};
use rtgt_testkit::netem::{LinkSpec, Netem, Reach};

const LUN: u16 = 1;
const BLOCK: u64 = 512;
/// The LUN: small enough that everything written fits the cache.
const BLOCKS: u64 = 64 * 2048;

struct Store {
    server: EmbeddedS3,
    root: Arc<rtgt::s3::local::LocalRoot>,
    netem: Netem,
    _dir: tempfile::TempDir,
}

async fn store(link: LinkSpec) -> Store {
    let dir = tempfile::tempdir().unwrap();
    let root = embedded::open_root(dir.path()).unwrap();
    root.create_bucket("vols").unwrap();
    let server = EmbeddedS3::start(root.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let netem = Netem::start(server.addr, link).await.unwrap();
    Store { server, root, netem, _dir: dir }
}

/// A target whose LUN reaches the store at `endpoint`, with `extra` settings of the LUN.
async fn target(store: &Store, endpoint: &str, cache: &str, extra: &str) -> TestTarget {
    let credentials = store.server.credentials();
    let text = format!(
        r#"
        [[portal_group]]
        tag = 1
        portals = ["127.0.0.1:0"]

        [[target]]
        name = "{}"

        [[target.lun]]
        lun = {LUN}
        backend = "s3"
        url = "s3://vols/v"
        endpoint = "{}"
        region = "us-east-1"
        access_key_id = "{}"
        secret_access_key = "{}"
        size = "{}"
        cache_size = "{cache}"
        create = true
        {extra}
        "#,
        common::TARGET,
        endpoint,
        credentials.access_key,
        credentials.secret_key,
        BLOCKS * BLOCK,
    );
    common::start(Config::from_toml(&text).unwrap()).await
}

async fn ready_session(t: &TestTarget, isid: u64) -> Session {
    let s = t.login(&InitiatorConfig { isid, ..InitiatorConfig::default() }).await;
    s.clear_unit_attentions(LUN).await.unwrap();
    s
}

/// A clean shutdown: the volume merges everything and releases its lease. (Log the sessions out
/// first: the shutdown otherwise waits out its grace for them.)
async fn shut_down(t: TestTarget) {
    t.server.shutdown(Duration::from_secs(60)).await;
}

fn fill(lba: u64, id: u64) -> Vec<u8> {
    let mut b = vec![(id % 251) as u8; BLOCK as usize];
    b[..8].copy_from_slice(&lba.to_be_bytes());
    b[8..16].copy_from_slice(&id.to_be_bytes());
    b
}

/// What each block last got acknowledged with.
type Acked = Arc<std::sync::Mutex<Vec<Option<u64>>>>;

/// One worker: writes of 8 blocks at random places of its own range (so workers never write
/// the same block), every `fua_every`-th with FUA; returns how many commands failed.
async fn writer(
    s: Arc<Session>,
    worker: u64,
    workers: u64,
    acked: Acked,
    fua_every: u64,
    stop: Arc<tokio::sync::Notify>,
) -> u64 {
    let mut rng = Rng::seeded(worker + 7);
    let per = BLOCKS / workers;
    let mut failed = 0;
    let stopped = stop.notified();
    tokio::pin!(stopped);
    for n in 1u64.. {
        if futures::poll!(&mut stopped).is_ready() {
            break;
        }
        let lba = worker * per + rng.below(per / 8) * 8;
        let id = worker << 32 | n;
        let data: Vec<u8> = (lba..lba + 8).flat_map(|b| fill(b, id)).collect();
        let fua = fua_every > 0 && n % fua_every == 0;
        let cdb = rw16(0x8a, lba, 8, if fua { 0x08 } else { 0 });
        match s.command(LUN, &cdb, Bytes::from(data), 0).await {
            Ok(r) if r.status == 0 => {
                let mut a = acked.lock().unwrap();
                (lba..lba + 8).for_each(|b| a[b as usize] = Some(id));
            }
            other => {
                eprintln!("write at {lba} failed: {other:?}");
                failed += 1;
            }
        }
    }
    failed
}

/// Stops the writers; how many of their commands failed.
async fn stop_writers(stop: &tokio::sync::Notify, workers: Vec<tokio::task::JoinHandle<u64>>) -> u64 {
    stop.notify_waiters();
    let mut failed = 0;
    for w in workers {
        failed += w.await.unwrap();
    }
    failed
}

async fn sync(s: &Session) -> u8 {
    s.command(LUN, &rw16(0x91, 0, 0, 0), Bytes::new(), 0).await.unwrap().status
}

/// Reads every block through a new target (reaching the store directly) and checks it holds
/// what was acknowledged last.
async fn verify(store: &Store, acked: &Acked) {
    let t = target(store, &format!("http://{}", store.server.addr), "64MiB", "").await;
    let s = ready_session(&t, 0x900).await;
    let acked = acked.lock().unwrap().clone();
    let per_read = 2048u64;
    for first in (0..BLOCKS).step_by(per_read as usize) {
        let r = s
            .command(LUN, &rw16(0x88, first, per_read as u32, 0), Bytes::new(), (per_read * BLOCK) as u32)
            .await
            .unwrap();
        assert_eq!(r.status, 0, "read at {first}");
        for b in first..first + per_read {
            let got = &r.data[((b - first) * BLOCK) as usize..((b - first + 1) * BLOCK) as usize];
            match acked[b as usize] {
                Some(id) => assert_eq!(got, &fill(b, id)[..], "block {b}: the last acknowledged write"),
                None => assert!(got.iter().all(|&x| x == 0), "block {b} was never written"),
            }
        }
    }
    s.logout().await.unwrap();
    shut_down(t).await;
}

/// The store goes away (connections reset, new ones refused) for longer than the lease, under
/// plain writes at QD4. No write fails; a SYNCHRONIZE CACHE sent during the outage waits and
/// succeeds when the store returns; afterwards every acknowledged write is in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_lease_costs_plain_writes_nothing() {
    let store = store(LinkSpec::default()).await;
    // Twice the LUN: however much is written, it fits (pages are counted with a margin per
    // write), so no write waits for room. A full cache would make writes wait for merges, which
    // cannot happen while the store is away: past their deadline they get NOT READY.
    let t = target(&store, &store.netem.url(), "128MiB", "").await;
    let s = Arc::new(ready_session(&t, 0x100).await);
    let acked: Acked = Arc::new(std::sync::Mutex::new(vec![None; BLOCKS as usize]));
    let stop = Arc::new(tokio::sync::Notify::new());
    let workers: Vec<_> =
        (0..4).map(|w| tokio::spawn(writer(s.clone(), w, 4, acked.clone(), 0, stop.clone()))).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    store.netem.set_reach(Reach::Refused);
    // Past the lease (30 s less its margin): plain writes still go into the cache.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let syncing = {
        let s = s.clone();
        tokio::spawn(async move { sync(&s).await })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    store.netem.set_reach(Reach::Up);
    assert_eq!(syncing.await.unwrap(), 0, "the SYNCHRONIZE CACHE sent during the outage succeeds");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failed = stop_writers(&stop, workers).await;
    assert_eq!(failed, 0, "no plain write failed");
    assert_eq!(sync(&s).await, 0);
    s.logout().await.unwrap();
    shut_down(t).await;
    verify(&store, &acked).await;
}

/// A slow capped link (20 ms round trip, 40 Mbit/s) under QD32 writes with FUA now and then,
/// while the dirty data fits the cache but fills more than half of it, so that chunk merges
/// (4 MiB GETs and PUTs) share the link with the FUA writes' log PUTs: attempts get time for
/// their size and the window keeps them from starving each other, so nothing times out. (A
/// cache smaller than what is written makes writes wait for merges at the link's pace; past
/// their 20 s deadline they get NOT READY, retried by initiators: not what this test is about.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_capped_link_under_qd32_writes_fails_nothing() {
    let store = store(LinkSpec::new(Duration::from_millis(20), 40_000_000)).await;
    let t = target(&store, &store.netem.url(), "96MiB", "").await;
    let acked: Acked = Arc::new(std::sync::Mutex::new(vec![None; BLOCKS as usize]));
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut workers = Vec::new();
    let mut sessions = Vec::new();
    for session in 0..4u64 {
        let s = Arc::new(ready_session(&t, 0x200 + session).await);
        sessions.push(s.clone());
        for w in 0..8 {
            let worker = session * 8 + w;
            workers.push(tokio::spawn(writer(s.clone(), worker, 32, acked.clone(), 16, stop.clone())));
        }
    }
    tokio::time::sleep(Duration::from_secs(15)).await;
    let failed = stop_writers(&stop, workers).await;
    assert_eq!(failed, 0, "no write failed");
    for s in sessions {
        s.logout().await.unwrap();
    }
    shut_down(t).await;
    verify(&store, &acked).await;
}

/// A store slow to answer: the first byte of every answer comes a second after its request
/// was sent (a store under load, or far away), fifty times a regional round trip. Eight
/// writers in one chunk, with FUA now and then, and a SYNCHRONIZE CACHE all succeed, only
/// slowly; everything acknowledged is in the store afterwards. (One chunk, so that the clean
/// shutdown merges one: 4 MiB transfers a second away come near their attempt timeouts.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_slow_to_answer_fails_nothing() {
    let store = store(LinkSpec::new(Duration::from_secs(1), 0)).await;
    let t = target(&store, &store.netem.url(), "96MiB", "").await;
    let s = Arc::new(ready_session(&t, 0x300).await);
    let acked: Acked = Arc::new(std::sync::Mutex::new(vec![None; BLOCKS as usize]));
    let stop = Arc::new(tokio::sync::Notify::new());
    // Ranges of 1/128 of the LUN: the first eight are the first chunk.
    let workers: Vec<_> =
        (0..8).map(|w| tokio::spawn(writer(s.clone(), w, 128, acked.clone(), 4, stop.clone()))).collect();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let failed = stop_writers(&stop, workers).await;
    assert_eq!(failed, 0, "no write failed");
    assert_eq!(sync(&s).await, 0);
    s.logout().await.unwrap();
    shut_down(t).await;
    // Its 4 MiB merges need longer than the retry budget a second away: the writes stay in
    // logs, and the lease goes all the same (the verifying target does not wait it out).
    assert!(lease_released(&store).await, "the clean shutdown released the lease");
    verify(&store, &acked).await;
}

/// Whether the volume's lease record says its holder released it.
async fn lease_released(store: &Store) -> bool {
    use rtgt::s3::ObjectStore;
    let lease = store.root.bucket("vols").unwrap().get("v/rtgt-lease.json", None).await.unwrap();
    let record: serde_json::Value = serde_json::from_slice(&lease.body).unwrap();
    record["released"].as_bool().expect("a lease record says whether it was released")
}

/// Bytes of the files under `dir`, recursively.
fn bytes_under(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type().map(|t| t.is_dir()) {
            Ok(true) => bytes_under(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// Reads the first `blocks` and checks each holds `fill(lba, 1)`; returns the failed reads.
async fn read_back(s: &Session, blocks: u64) -> u64 {
    let mut failed = 0;
    for first in (0..blocks).step_by(2048) {
        match s.command(LUN, &rw16(0x88, first, 2048, 0), Bytes::new(), 2048 * BLOCK as u32).await {
            Ok(r) if r.status == 0 => {
                for b in first..first + 2048 {
                    let got = &r.data[((b - first) * BLOCK) as usize..((b - first + 1) * BLOCK) as usize];
                    assert_eq!(got, &fill(b, 1)[..], "block {b}");
                }
            }
            other => {
                eprintln!("read at {first} failed: {other:?}");
                failed += 1;
            }
        }
    }
    failed
}

/// A target with a disk cache (`cache_disk_size`) reads what it holds while the store is away:
/// 8 MiB written by one target, read by a second (which keeps it on disk, its memory cache
/// holding one chunk), then read again with the store refusing connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_from_the_disk_cache_need_no_store() {
    let store = store(LinkSpec::default()).await;
    let blocks = 8 * 2048;
    let t = target(&store, &store.netem.url(), "64MiB", "").await;
    let s = ready_session(&t, 0x100).await;
    for first in (0..blocks).step_by(2048) {
        let data: Vec<u8> = (first..first + 2048).flat_map(|b| fill(b, 1)).collect();
        let r = s.command(LUN, &rw16(0x8a, first, 2048, 0), Bytes::from(data), 0).await.unwrap();
        assert_eq!(r.status, 0);
    }
    s.logout().await.unwrap();
    shut_down(t).await;

    let cache_dir = tempfile::tempdir().unwrap();
    let disk = format!("cache_dir = \"{}\"\ncache_disk_size = \"64MiB\"", cache_dir.path().display());
    let t = target(&store, &store.netem.url(), "4MiB", &disk).await;
    let s = ready_session(&t, 0x200).await;
    // Pieces go to the disk in the background (and are skipped while its writes are busy):
    // read until it holds them all.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while bytes_under(cache_dir.path()) < 8 << 20 {
        assert!(tokio::time::Instant::now() < deadline, "the disk cache holds {} bytes", bytes_under(cache_dir.path()));
        assert_eq!(read_back(&s, blocks).await, 0);
    }
    store.netem.set_reach(Reach::Refused);
    assert_eq!(read_back(&s, blocks).await, 0, "every read came from the disk or memory cache");
    store.netem.set_reach(Reach::Up);
    s.logout().await.unwrap();
    shut_down(t).await;
}
