//! Crashes and takeovers with real processes. The real default under `kill -9`: `rtgt serve`
//! on a fresh data directory (the embedded store, the default S3 volume), writers mixing FUA
//! writes, plain writes and SYNCHRONIZE CACHE, SIGKILL at a random moment, and the same command
//! again. Every round the volume must open (without --force, within half a lease), and every
//! block must hold the last write that was acknowledged as durable or a write issued after it:
//! nothing lost, nothing torn, nothing older. The same with a disk cache, whose entries outlive
//! each kill while recovery rewrites their chunks. And a forced takeover by a second target.
//! Needs nothing but the rtgt binary.
// These tests drive a real process: deadlines are wall-clock time.
#![allow(clippy::disallowed_methods)]

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtgt::api::client::Client;
use rtgt::rng::Rng;
use rtgt_testkit::initiator::{InitiatorConfig, Session};

const BIN: &str = env!("CARGO_BIN_EXE_rtgt");
const TARGET: &str = "iqn.2026-11.dev.rtgt:default";
const LUN: u16 = 1;
const BLOCK: usize = 512;
const ROUNDS: usize = 20;
const WRITERS: u64 = 4;
/// Blocks each writer owns: 4 MiB, one chunk, so writers share no chunk and every round
/// writes logs and merges.
const REGION: u64 = 8192;
/// The management API's token, when a test turns the API on.
const API_TOKEN: &str = "crash-test-token";
/// A restart that waited out the 30 s lease would take longer than this.
const RESTART_BOUND: Duration = Duration::from_secs(15);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// `rtgt serve` with the embedded default; killed when dropped.
struct Serve(Child);

impl Serve {
    /// The same command every time (with `config`, or the embedded default in `data`), with
    /// the management API on `api` (token [`API_TOKEN`]) or without; its log is appended to
    /// `log`.
    fn start(data: &Path, config: Option<&Path>, portal: SocketAddr, api: Option<SocketAddr>, log: &Path) -> Serve {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        let mut cmd = Command::new(BIN);
        match config {
            Some(config) => cmd.args(["serve", "--config"]).arg(config),
            None => cmd.args(["serve", "--data-dir"]).arg(data),
        };
        let api = api.map_or("off".to_string(), |a| a.to_string());
        let child = cmd
            .args(["--listen", &portal.to_string(), "--api-listen", &api, "--s3-listen", "off"])
            .env("RUST_LOG", "warn")
            .env("RTGT_API_TOKEN", API_TOKEN)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start rtgt serve");
        Serve(child)
    }

    fn kill(&mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait();
    }

    /// SIGTERM: the clean stop, which must exit 0.
    fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) }, 0);
        let status = self.0.wait().expect("wait for rtgt serve");
        assert!(status.success(), "SIGTERM: rtgt serve exited with {status}");
    }
}

/// How each round of a crash test ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ends {
    /// SIGKILL, always.
    Kill,
    /// SIGKILL or SIGTERM, alternately.
    KillOrStop,
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A block that names its LBA and write, with a checksum: a torn or misplaced block shows.
fn block(lba: u64, id: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    b[..8].copy_from_slice(&lba.to_be_bytes());
    b[8..16].copy_from_slice(&id.to_be_bytes());
    let mut rng = Rng::seeded(id ^ lba.rotate_left(32));
    for x in b[16..BLOCK - 4].iter_mut() {
        *x = rng.below(256) as u8;
    }
    let crc = crc32c::crc32c(&b[..BLOCK - 4]);
    b[BLOCK - 4..].copy_from_slice(&crc.to_be_bytes());
    b
}

/// The write a block holds (0: never written), or why it is none.
fn decode(lba: u64, b: &[u8]) -> Result<u64, String> {
    if b.iter().all(|&x| x == 0) {
        return Ok(0);
    }
    let id = u64::from_be_bytes(b[8..16].try_into().expect("8"));
    if b != block(lba, id).as_slice() {
        return Err(format!(
            "block {lba} is torn or misplaced (it names block {} write {id})",
            u64::from_be_bytes(b[..8].try_into().expect("8"))
        ));
    }
    Ok(id)
}

/// One block's history: writes in order (one writer per block, one command at a time).
#[derive(Debug, Clone, Default)]
struct BlockModel {
    /// Write ids from the last one known durable on (index 0), then later ones.
    candidates: Vec<u64>,
}

impl BlockModel {
    fn new() -> BlockModel {
        BlockModel { candidates: vec![0] }
    }
}

/// What every writer did: per block the candidates, and writes acknowledged but not durable
/// yet (block, id), made durable by the next SYNCHRONIZE CACHE that returns GOOD.
#[derive(Clone)]
struct Model {
    blocks: Vec<BlockModel>,
    /// The atomic writes (first block, blocks, id) of the round since the last restart.
    atomic: Vec<(u64, u64, u64)>,
    /// Atomic writes acknowledged, over all rounds.
    atomic_acked: u64,
    /// Per block, the newest write acknowledged (durable or not): what a snapshot asked for
    /// from now on must hold, or a later write.
    acknowledged: Vec<u64>,
}

impl Model {
    /// `blocks` never written.
    fn new(blocks: u64) -> Model {
        Model {
            blocks: vec![BlockModel::new(); blocks as usize],
            atomic: Vec::new(),
            atomic_acked: 0,
            acknowledged: vec![0; blocks as usize],
        }
    }

    /// A write was issued: the block may hold it from now on.
    fn issued(&mut self, lba: u64, id: u64) {
        self.blocks[lba as usize].candidates.push(id);
    }

    /// A write is durable: the block holds it or a later one.
    fn durable(&mut self, lba: u64, id: u64) {
        let c = &mut self.blocks[lba as usize].candidates;
        if let Some(i) = c.iter().position(|&x| x == id) {
            c.drain(..i);
        }
    }

    /// After a restart, each atomic write of the last round is there whole or not at all.
    /// Checked once, right after its round; a later round may overwrite part of it.
    fn check_atomic(&mut self, held: &[u64]) -> Result<(), String> {
        check_atomic_writes(&std::mem::take(&mut self.atomic), held)
    }

    /// After a restart the block holds `id`: that is what it holds from now on (a write
    /// acknowledged but not durable may be gone).
    fn check(&mut self, lba: u64, id: u64) -> Result<(), String> {
        let c = &mut self.blocks[lba as usize].candidates;
        match c.iter().position(|&x| x == id) {
            Some(i) => {
                c.drain(..i);
                c.truncate(1);
                self.acknowledged[lba as usize] = id;
                Ok(())
            }
            None => Err(format!(
                "block {lba} holds write {id}, but after the last durable write ({}) only {:?} may be there",
                c[0],
                &c[..]
            )),
        }
    }
}

async fn login(portal: SocketAddr, isid: u64) -> Option<Session> {
    let stream = tokio::net::TcpStream::connect(portal).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let config = InitiatorConfig { isid, ..InitiatorConfig::default() };
    Session::login(stream, &config, Some(TARGET)).await.ok()
}

/// Waits until the LUN answers TEST UNIT READY with GOOD: the time from the start.
async fn wait_until_served(portal: SocketAddr, started: Instant) -> Duration {
    loop {
        if let Some(s) = login(portal, 0x77).await {
            loop {
                match s.command(LUN, &[0; 6], Bytes::new(), 0).await {
                    Ok(r) if r.status == 0 => {
                        let _ = s.logout().await;
                        return started.elapsed();
                    }
                    Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(_) => break,
                }
            }
        }
        assert!(started.elapsed() < RESTART_BOUND, "rtgt did not serve its LUN within {RESTART_BOUND:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads every written region back and checks each block against the model.
async fn verify(portal: SocketAddr, model: &mut Model) -> Result<(), String> {
    let s = login(portal, 0x78).await.ok_or("no login after the restart")?;
    s.clear_unit_attentions(LUN).await.map_err(|e| e.to_string())?;
    const READ: u64 = 2048;
    let mut held = Vec::with_capacity((WRITERS * REGION) as usize);
    for first in (0..WRITERS * REGION).step_by(READ as usize) {
        let data = s.read(LUN, first, READ as u32, BLOCK as u32).await.map_err(|e| e.to_string())?;
        for i in 0..READ {
            let lba = first + i;
            let id = decode(lba, &data[i as usize * BLOCK..(i as usize + 1) * BLOCK])?;
            model.check(lba, id)?;
            held.push(id);
        }
    }
    model.check_atomic(&held)?;
    let _ = s.logout().await;
    Ok(())
}

/// Each atomic write (first block, blocks, id) is whole in `held` or absent: if one of its
/// blocks holds it or a later write (a larger id: one writer per block, which issues nothing
/// after a failed write in its round), all do.
fn check_atomic_writes(atomic: &[(u64, u64, u64)], held: &[u64]) -> Result<(), String> {
    for &(first, blocks, id) in atomic {
        let span = &held[first as usize..(first + blocks) as usize];
        if span.iter().any(|&h| h >= id) && span.iter().any(|&h| h < id) {
            return Err(format!("atomic write {id} of blocks {first}+{blocks} is torn: they hold {span:?}"));
        }
    }
    Ok(())
}

/// How a writer writes: plain, FUA and SYNCHRONIZE CACHE only, or WRITE ATOMIC too.
#[derive(Clone, Copy, PartialEq)]
enum Writes {
    Plain,
    WithAtomic,
}

/// One writer until its session breaks (the kill): writes of 1-16 blocks in its region, a
/// third with FUA, a SYNCHRONIZE CACHE every 8 writes; with `Writes::WithAtomic` every fourth
/// write is a WRITE ATOMIC of 16-512 blocks (durable when acknowledged).
async fn writer(
    portal: SocketAddr,
    index: u64,
    round: usize,
    model: Arc<Mutex<Model>>,
    next_id: Arc<Mutex<u64>>,
    writes: Writes,
) {
    let Some(s) = login(portal, 0x100 + index).await else { return };
    if s.clear_unit_attentions(LUN).await.is_err() {
        return;
    }
    let mut rng = Rng::seeded(round as u64 * 131 + index);
    let mut acked: Vec<(u64, u64)> = Vec::new();
    for n in 0u64.. {
        let atomic = writes == Writes::WithAtomic && rng.below(4) == 0;
        let blocks = if atomic { 16 + rng.below(497) } else { 1 + rng.below(16) };
        let lba = index * REGION + rng.below(REGION - blocks);
        let id = {
            let mut next = next_id.lock().unwrap();
            *next += 1;
            *next
        };
        let mut data = Vec::with_capacity(blocks as usize * BLOCK);
        {
            let mut m = model.lock().unwrap();
            for b in lba..lba + blocks {
                data.extend_from_slice(&block(b, id));
                m.issued(b, id);
            }
            if atomic {
                m.atomic.push((lba, blocks, id));
            }
        }
        let fua = atomic || rng.below(3) == 0;
        let written = match atomic {
            true => s.write_atomic(LUN, lba, Bytes::from(data), BLOCK as u32).await,
            false => s.write(LUN, lba, Bytes::from(data), BLOCK as u32, fua).await,
        };
        if written.is_err() {
            return;
        }
        {
            let mut m = model.lock().unwrap();
            m.acknowledged[lba as usize..(lba + blocks) as usize].fill(id);
            if fua {
                m.atomic_acked += u64::from(atomic);
                (lba..lba + blocks).for_each(|b| m.durable(b, id));
            } else {
                acked.extend((lba..lba + blocks).map(|b| (b, id)));
            }
        }
        if n % 8 == 7 {
            if s.flush(LUN).await.is_err() {
                return;
            }
            let mut m = model.lock().unwrap();
            for (b, id) in acked.drain(..) {
                m.durable(b, id);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_write() {
    let data = tempfile::tempdir().expect("data dir");
    kill_9_rounds(data.path(), None, ROUNDS, Writes::WithAtomic).await;
}

/// Clean stops among the kills: a SIGTERM leaves the embedded store marked closed cleanly, so
/// that the next start skips the walk over every directory of the store; the start removes the
/// mark, so a SIGKILL after it leaves none, and the start after the kill cleans up. No
/// acknowledged write is lost either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_clean_stops_in_turn_lose_no_acknowledged_write() {
    let data = tempfile::tempdir().expect("data dir");
    let asked = kill_9_rounds_asking_snapshots(data.path(), None, 10, Writes::WithAtomic, None, Ends::KillOrStop).await;
    assert!(asked.is_empty());
}

/// The embedded default with a disk cache (`cache_disk_size`) and a small memory cache: reads
/// after each restart come from entries the killed process left (written without fsync),
/// while recovery replays the logs into new versions of their chunks; no entry of an older
/// version may be served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_a_disk_cache_loses_no_acknowledged_write() {
    let data = tempfile::tempdir().expect("data dir");
    let mut config = rtgt::config::Config::embedded_default(data.path());
    let lun = &mut config.targets[0].luns[0];
    lun.cache_dir = Some(data.path().join("cache"));
    lun.cache_disk_size = Some(rtgt::config::Size(64 << 20));
    // A memory cache of one chunk, a quarter of what is written: reads after a restart go to
    // the disk cache, also for chunks that recovery just rewrote.
    lun.cache_size = Some(rtgt::config::Size(4 << 20));
    let path = data.path().join("rtgt.toml");
    std::fs::write(&path, config.to_toml()).expect("config");
    kill_9_rounds(data.path(), Some(&path), 8, Writes::Plain).await;
}

/// The embedded default volume encrypted (`encryption_key_file`): created encrypted at the
/// first start, every restart opens it with the key from the configuration, and the kills lose
/// and tear nothing acknowledged, atomic writes included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_an_encrypted_volume_loses_no_acknowledged_write() {
    let data = tempfile::tempdir().expect("data dir");
    let key = data.path().join("volume.key");
    std::fs::write(&key, [0x4bu8; 32]).expect("key");
    let mut config = rtgt::config::Config::embedded_default(data.path());
    config.targets[0].luns[0].encryption_key_file = Some(key);
    let path = data.path().join("rtgt.toml");
    std::fs::write(&path, config.to_toml()).expect("config");
    kill_9_rounds(data.path(), Some(&path), 8, Writes::WithAtomic).await;
    // The last target is gone (killed): the store's directory can be opened directly.
    let info = Command::new(BIN)
        .args(["volume", "info", "s3://rtgt/default", "--store-dir"])
        .arg(data.path().join("s3"))
        .output()
        .expect("rtgt volume info");
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("encryption: xchacha20poly1305"), "the volume is not encrypted: {text}");
}

/// The embedded default with `durability = "local"`: syncs and FUA writes are acknowledged once
/// their logs are in the journal's segment files (not yet in the store), then the process is
/// killed; the next start replays the journal, torn tail and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_a_local_journal_loses_no_acknowledged_write() {
    let data = tempfile::tempdir().expect("data dir");
    let path = local_journal_config(data.path());
    kill_9_rounds(data.path(), Some(&path), 8, Writes::Plain).await;
}

/// The embedded default with `durability = "local"` (the journal in `data/cache`): its
/// configuration file.
fn local_journal_config(data: &Path) -> std::path::PathBuf {
    let mut config = rtgt::config::Config::embedded_default(data);
    let lun = &mut config.targets[0].luns[0];
    lun.durability = Some(rtgt::config::Durability::Local);
    lun.cache_dir = Some(data.join("cache"));
    let path = data.join("rtgt.toml");
    std::fs::write(&path, config.to_toml()).expect("config");
    path
}

/// A file LUN under WRITE ATOMIC and SIGKILL: what a killed process wrote in place stays in
/// the page cache, so the plain writes survive anyway; an atomic write cut by the kill may be
/// half in place, and the next start must finish it from its intent record (or it never
/// began). Every acknowledged atomic write is there whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_file_lun_tears_no_atomic_write() {
    let data = tempfile::tempdir().expect("data dir");
    let mut config = rtgt::config::Config::embedded_default(data.path());
    config.embedded_s3 = None;
    config.targets[0].luns[0] = rtgt::config::LunConfig {
        size: Some(rtgt::config::Size(WRITERS * REGION * BLOCK as u64)),
        block_size: Some(BLOCK as u32),
        create: Some(true),
        path: Some(data.path().join("disk.img")),
        ..rtgt::config::LunConfig::new(LUN, rtgt::config::Backend::File)
    };
    let path = data.path().join("rtgt.toml");
    std::fs::write(&path, config.to_toml()).expect("config");
    kill_9_rounds(data.path(), Some(&path), 12, Writes::WithAtomic).await;
    let intents = std::fs::read_dir(data.path().join("atomic-writes")).expect("the intent directory");
    assert_eq!(intents.count(), 1, "one intent file for the one file LUN");
}

/// Snapshots asked for through the API while writers write and rtgt is killed at random: every
/// snapshot the API acknowledged is there after every later kill, restart and background sweep,
/// and after an offline `rtgt volume gc`; each holds in every block the write acknowledged last
/// before it was asked for, or a write issued before it was answered, atomic writes whole or
/// absent. One the kill cut is there the same way, or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_snapshots_are_taken_keeps_each_snapshot_whole() {
    let data = tempfile::tempdir().expect("data dir");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let asked =
        kill_9_rounds_asking_snapshots(data.path(), None, SNAPSHOT_ROUNDS, Writes::WithAtomic, Some(api), Ends::Kill)
            .await;
    check_snapshots(data.path(), &asked);
}

/// The same with `durability = "local"`: snapshots capture writes whose logs are only in the
/// journal, which the kills leave for the next start to replay and upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_snapshots_are_taken_with_a_local_journal_keeps_each_snapshot_whole() {
    let data = tempfile::tempdir().expect("data dir");
    let path = local_journal_config(data.path());
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let asked = kill_9_rounds_asking_snapshots(
        data.path(),
        Some(&path),
        SNAPSHOT_ROUNDS,
        Writes::WithAtomic,
        Some(api),
        Ends::Kill,
    )
    .await;
    check_snapshots(data.path(), &asked);
}

/// After the last kill: an offline `rtgt volume gc`, then every snapshot answered is listed,
/// each one listed was asked for, and each exported holds what it must.
fn check_snapshots(data: &Path, asked: &[AskedSnapshot]) {
    let answered = asked.iter().filter(|s| s.answered).count();
    assert!(answered >= SNAPSHOT_ROUNDS, "{answered} snapshots taken in {SNAPSHOT_ROUNDS} rounds");
    let store = data.join("s3");
    let store = store.to_str().expect("a UTF-8 path");
    offline(&["volume", "gc", VOLUME, "--store-dir", store]);
    let listed: Vec<String> = offline(&["volume", "snapshot", "list", VOLUME, "--store-dir", store])
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect();
    let mut checked = 0;
    for snapshot in asked {
        let present = listed.contains(&snapshot.name);
        assert!(present || !snapshot.answered, "snapshot {} was taken, and is gone: {listed:?}", snapshot.name);
        if present {
            let image = data.join("snapshot.img");
            let url = format!("{VOLUME}@{}", snapshot.name);
            offline(&["volume", "export", &url, image.to_str().expect("UTF-8"), "--store-dir", store]);
            let bytes = std::fs::read(&image).expect("the export");
            if let Err(e) = snapshot.check(&bytes[..(WRITERS * REGION) as usize * BLOCK]) {
                panic!("snapshot {} ({}answered): {e}", snapshot.name, if snapshot.answered { "" } else { "not " });
            }
            checked += 1;
        }
    }
    let unknown: Vec<&String> = listed.iter().filter(|n| !asked.iter().any(|s| &s.name == *n)).collect();
    assert!(unknown.is_empty(), "snapshots nobody asked for: {unknown:?}");
    eprintln!("{} snapshots asked for, {answered} taken, {checked} there and checked", asked.len());
}

/// Kills in the snapshot tests; at least as many snapshots must be taken.
const SNAPSHOT_ROUNDS: usize = 8;

/// The embedded default's volume.
const VOLUME: &str = "s3://rtgt/default";

/// `rtgt ARGS` (no target running), which must succeed: its stdout.
fn offline(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().expect("run rtgt");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "rtgt {args:?}: {text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// A snapshot the test asked for, and what it must hold.
struct AskedSnapshot {
    name: String,
    /// Per block, the newest write acknowledged before it was asked for.
    floor: Vec<u64>,
    /// Every write issued before it was answered (or before the kill) has an id up to this.
    ceiling: u64,
    /// The atomic writes of its round issued by then: whole or absent in it.
    atomic: Vec<(u64, u64, u64)>,
    /// The API answered 201: it must exist from then on.
    answered: bool,
}

impl AskedSnapshot {
    /// Checks the snapshot's first blocks (the writers' regions).
    fn check(&self, image: &[u8]) -> Result<(), String> {
        let mut held = Vec::with_capacity(self.floor.len());
        for (lba, floor) in self.floor.iter().enumerate() {
            let id = decode(lba as u64, &image[lba * BLOCK..(lba + 1) * BLOCK])?;
            if id < *floor || id > self.ceiling {
                return Err(format!(
                    "block {lba} holds write {id}: {floor} was acknowledged before the snapshot was asked for, \
                     and nothing after {} was issued before it was answered",
                    self.ceiling
                ));
            }
            held.push(id);
        }
        check_atomic_writes(&self.atomic, &held)
    }
}

/// Asks the API for snapshots of the LUN one after another until a request fails (the kill).
async fn snapshotter(
    api: SocketAddr,
    round: usize,
    model: Arc<Mutex<Model>>,
    next_id: Arc<Mutex<u64>>,
) -> Vec<AskedSnapshot> {
    let client = Arc::new(Client::new(&format!("http://{api}"), Some(API_TOKEN.to_string())).expect("client"));
    let path = format!("/v1/targets/{TARGET}/luns/{LUN}/snapshots");
    let mut asked = Vec::new();
    for n in 0.. {
        let name = format!("r{round}-{n}");
        let floor = model.lock().unwrap().acknowledged.clone();
        let (client, path, body) = (client.clone(), path.clone(), serde_json::json!({ "name": name }));
        let reply = tokio::task::spawn_blocking(move || client.request("POST", &path, Some(&body)))
            .await
            .expect("the request's thread");
        let answered = match reply {
            Ok(r) if r.status == 201 => true,
            Ok(r) => panic!("snapshot {name} refused: {} {}", r.status, r.body),
            Err(_) => false, // the kill
        };
        let ceiling = *next_id.lock().unwrap();
        let atomic = model.lock().unwrap().atomic.clone();
        asked.push(AskedSnapshot { name, floor, ceiling, atomic, answered });
        if !answered {
            return asked;
        }
        // Pacing only (snapshots pin chunk versions: a few per round keep the store small).
        tokio::time::sleep(Duration::from_millis(100 + 50 * (n % 5))).await;
    }
    unreachable!("the loop returns at the kill")
}

/// `rounds` of: start, verify everything, writers, SIGKILL at a random moment; then a last
/// start and verify.
async fn kill_9_rounds(data: &Path, config: Option<&Path>, rounds: usize, writes: Writes) {
    let asked = kill_9_rounds_asking_snapshots(data, config, rounds, writes, None, Ends::Kill).await;
    assert!(asked.is_empty());
}

/// [`kill_9_rounds`]; with `api`, a snapshotter asks the API there for snapshots beside the
/// writers until the kill, and the snapshots asked for are returned (the last rtgt killed).
/// With [`Ends::KillOrStop`] (the embedded default only), odd rounds end with a clean stop.
async fn kill_9_rounds_asking_snapshots(
    data: &Path,
    config: Option<&Path>,
    rounds: usize,
    writes: Writes,
    api: Option<SocketAddr>,
    ends: Ends,
) -> Vec<AskedSnapshot> {
    let logs = tempfile::tempdir().expect("log dir");
    let log = logs.path().join("serve.log");
    let portal: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let model = Arc::new(Mutex::new(Model::new(WRITERS * REGION)));
    let next_id = Arc::new(Mutex::new(0u64));
    let mut rng = Rng::seeded(12);
    let mut restarts = Vec::new();
    let mut asked = Vec::new();
    for round in 0..rounds {
        let started = Instant::now();
        let mut serve = Serve::start(data, config, portal, api, &log);
        restarts.push(wait_until_served(portal, started).await);
        verify_into(portal, &model, round, &log).await;
        let writers: Vec<_> = (0..WRITERS)
            .map(|i| tokio::spawn(writer(portal, i, round, model.clone(), next_id.clone(), writes)))
            .collect();
        let snapshotter = api.map(|api| tokio::spawn(snapshotter(api, round, model.clone(), next_id.clone())));
        tokio::time::sleep(Duration::from_millis(300 + rng.below(1500))).await;
        // The embedded store's mark of a clean close (which lets the next open skip its clean-up).
        let marker = data.join("s3").join(rtgt::s3::local::CLEAN_CLOSE_MARKER);
        if ends == Ends::KillOrStop && round % 2 == 1 {
            serve.stop();
            assert!(marker.exists(), "round {round}: a clean stop leaves {}", marker.display());
        } else {
            serve.kill();
            assert!(!marker.exists(), "round {round}: a start removes {}; a kill writes none", marker.display());
        }
        for w in writers {
            w.await.expect("writer");
        }
        if let Some(s) = snapshotter {
            asked.extend(s.await.expect("snapshotter"));
        }
    }
    let started = Instant::now();
    let mut serve = Serve::start(data, config, portal, api, &log);
    restarts.push(wait_until_served(portal, started).await);
    verify_into(portal, &model, rounds, &log).await;
    serve.kill();
    restarts.sort();
    let atomic_acked = model.lock().unwrap().atomic_acked;
    assert_eq!(atomic_acked > 0, writes == Writes::WithAtomic, "{atomic_acked} atomic writes acknowledged");
    eprintln!(
        "{rounds} kill -9 rounds, {} writes ({atomic_acked} atomic acknowledged), {} snapshots asked for: \
         restart to LUN served median {:?}, max {:?}",
        *next_id.lock().unwrap(),
        asked.len(),
        restarts[restarts.len() / 2],
        restarts.last().expect("rounds")
    );
    asked
}

/// Verifies the volume after a restart; the model learns what each block holds.
async fn verify_into(portal: SocketAddr, model: &Arc<Mutex<Model>>, round: usize, log: &Path) {
    let mut m = model.lock().unwrap().clone();
    if let Err(e) = verify(portal, &mut m).await {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        panic!(
            "after kill -9 number {round}: {e}\nrtgt's log (last lines):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    *model.lock().unwrap() = m;
}

/// The takeover that lost 7,817 of 8,192 durable blocks: target A serves an S3 volume (here the
/// local store over HTTP, `rtgt s3-server`, a store outside both targets) to a writer using FUA
/// and SYNCHRONIZE CACHE; target B, another node, opens the same volume with `--force`. The
/// writer keeps using A until B serves, then reads everything back through B: every write A
/// acknowledged as durable must be there. A, which lost its lease, answers NOT READY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_takeover_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().expect("dir");
    let s3_root = dir.path().join("s3");
    std::fs::create_dir_all(s3_root.join("vols")).expect("bucket");
    let s3_port = free_port();
    let log = dir.path().join("serve.log");
    let logfile = || std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log");
    let mut s3 = Serve(
        Command::new(BIN)
            .args(["s3-server", "--listen", &format!("127.0.0.1:{s3_port}"), "--root"])
            .arg(&s3_root)
            .args(["--access-key", "crash-test", "--secret-key", "env:RTGT_TEST_S3_SECRET"])
            .env("RTGT_TEST_S3_SECRET", "crash-test-secret")
            .stdout(Stdio::null())
            .stderr(logfile())
            .spawn()
            .expect("start rtgt s3-server"),
    );
    let config = |name: &str, portal: SocketAddr| {
        let data = dir.path().join(name);
        std::fs::create_dir_all(&data).expect("data dir");
        let text = format!(
            "[server]\ndata_dir = {:?}\n\n[api]\nlisten = \"off\"\n\n[[portal_group]]\ntag = 1\nportals = [\"{portal}\"]\n\n\
             [[target]]\nname = \"{TARGET}\"\n\n[[target.lun]]\nlun = 1\nbackend = \"s3\"\nurl = \"s3://vols/v\"\n\
             endpoint = \"http://127.0.0.1:{s3_port}\"\nregion = \"us-east-1\"\naccess_key_id = \"crash-test\"\n\
             secret_access_key = \"crash-test-secret\"\nsize = \"16MiB\"\ncreate = true\n",
            data.display().to_string()
        );
        let path = data.join("rtgt.toml");
        std::fs::write(&path, text).expect("config");
        path
    };
    let start = |config: &Path, force: bool| {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"]).arg(config).env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(logfile());
        if force {
            cmd.arg("--force");
        }
        Serve(cmd.spawn().expect("start rtgt serve"))
    };
    let (portal_a, portal_b): (SocketAddr, SocketAddr) =
        (format!("127.0.0.1:{}", free_port()).parse().unwrap(), format!("127.0.0.1:{}", free_port()).parse().unwrap());
    let _a = start(&config("a", portal_a), false);
    wait_until_served(portal_a, Instant::now()).await;

    const BLOCKS: u64 = 2048;
    let model = Arc::new(Mutex::new(Model::new(BLOCKS)));
    let next_id = Arc::new(Mutex::new(0u64));
    let b_serves = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (model, next_id, b_serves) = (model.clone(), next_id.clone(), b_serves.clone());
        tokio::spawn(async move {
            let mut rng = Rng::seeded(77);
            let mut session = None;
            let mut acked: Vec<(u64, u64)> = Vec::new();
            let (mut durable_acks, mut refused) = (0u64, 0u64);
            for n in 0u64.. {
                if b_serves.load(std::sync::atomic::Ordering::Relaxed) {
                    return (durable_acks, refused);
                }
                if session.is_none() {
                    session = login(portal_a, 0x300).await;
                    if session.is_none() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
                let s = session.as_ref().expect("session");
                let blocks = 1 + rng.below(8);
                let lba = rng.below(BLOCKS - blocks);
                let id = {
                    let mut next = next_id.lock().unwrap();
                    *next += 1;
                    *next
                };
                let mut data = Vec::new();
                {
                    let mut m = model.lock().unwrap();
                    for b in lba..lba + blocks {
                        data.extend_from_slice(&block(b, id));
                        m.issued(b, id);
                    }
                }
                let fua = n % 3 == 0;
                let cdb = rtgt_testkit::initiator::rw16(0x8a, lba, blocks as u32, if fua { 0x08 } else { 0 });
                match s.command(LUN, &cdb, Bytes::from(data), 0).await {
                    Ok(r) if r.status == 0 && fua => {
                        let mut m = model.lock().unwrap();
                        (lba..lba + blocks).for_each(|b| m.durable(b, id));
                        durable_acks += 1;
                    }
                    Ok(r) if r.status == 0 => acked.extend((lba..lba + blocks).map(|b| (b, id))),
                    Ok(_) => refused += 1, // NOT READY once A's lease is gone, or a unit attention
                    Err(_) => session = None,
                }
                if n % 8 == 7
                    && let Some(s) = session.as_ref()
                    && matches!(s.command(LUN, &rtgt_testkit::initiator::rw16(0x91, 0, 0, 0), Bytes::new(), 0).await, Ok(r) if r.status == 0)
                {
                    let mut m = model.lock().unwrap();
                    for (b, id) in acked.drain(..) {
                        m.durable(b, id);
                    }
                    durable_acks += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            unreachable!()
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let _b = start(&config("b", portal_b), true);
    // B waits out A's lease (30 s and a request's lifetime) before its first write.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(s) = login(portal_b, 0x301).await {
            let ready = matches!(s.command(LUN, &[0; 6], Bytes::new(), 0).await, Ok(r) if r.status == 0)
                || matches!(s.command(LUN, &[0; 6], Bytes::new(), 0).await, Ok(r) if r.status == 0);
            let _ = s.logout().await;
            if ready {
                break;
            }
        }
        assert!(Instant::now() < deadline, "B never served the volume");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let took = started.elapsed();
    b_serves.store(true, std::sync::atomic::Ordering::Relaxed);
    let (durable_acks, refused) = writer.await.expect("writer");
    // Through B: every durable write of A's.
    let s = login(portal_b, 0x302).await.expect("login to B");
    s.clear_unit_attentions(LUN).await.expect("B serves");
    let data = s.read(LUN, 0, BLOCKS as u32, BLOCK as u32).await.expect("read through B");
    {
        let mut m = model.lock().unwrap();
        for lba in 0..BLOCKS {
            let id =
                decode(lba, &data[lba as usize * BLOCK..(lba as usize + 1) * BLOCK]).unwrap_or_else(|e| panic!("{e}"));
            if let Err(e) = m.check(lba, id) {
                panic!("after the takeover: {e}\nlog:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            }
        }
    }
    // A lost its lease: it serves NOT READY, becoming ready while it opens the volume again,
    // then standby once it finds B renewing the lease (within a lease and a request's lifetime).
    let a = login(portal_a, 0x303).await.expect("login to A");
    let waiting = Instant::now();
    loop {
        let tur = a.command(LUN, &[0; 6], Bytes::new(), 0).await.expect("TUR");
        match tur.sense_code() {
            Some((0x6, _, _)) => continue,
            Some((0x2, 0x04, 0x0b)) => break,
            Some((0x2, 0x04, 0x01)) => {}
            other => panic!("A, whose lease was taken, must be NOT READY, not {other:?}"),
        }
        assert!(waiting.elapsed() < Duration::from_secs(90), "A never became B's standby");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "forced takeover: B served {took:?} after its start; A acknowledged {durable_acks} FUA writes and SYNCs, \
         refused {refused} commands after losing its lease; all {BLOCKS} blocks hold their last durable write or later"
    );
    s3.kill();
}
