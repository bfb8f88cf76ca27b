//! The real default under `kill -9`: `rtgt serve` on a fresh data directory (the embedded
//! store, the default S3 volume), writers mixing FUA writes, plain writes and SYNCHRONIZE
//! CACHE, SIGKILL at a random moment, and the same command again. Every round the volume must
//! open (without --force, within half a lease), and every block must hold the last write that
//! was acknowledged as durable or a write issued after it: nothing lost, nothing torn, nothing
//! older. Needs nothing but the rtgt binary.
// These tests drive a real process: deadlines are wall-clock time.
#![allow(clippy::disallowed_methods)]

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtgt::initiator::{InitiatorConfig, Session};
use rtgt::rng::Rng;

const BIN: &str = env!("CARGO_BIN_EXE_rtgt");
const TARGET: &str = "iqn.2026-11.dev.rtgt:default";
const LUN: u16 = 1;
const BLOCK: usize = 512;
const ROUNDS: usize = 20;
const WRITERS: u64 = 4;
/// Blocks each writer owns: 4 MiB, one chunk, so writers share no chunk and every round
/// writes logs and merges.
const REGION: u64 = 8192;
/// A restart that waited out the 30 s lease would take longer than this.
const RESTART_BOUND: Duration = Duration::from_secs(15);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// `rtgt serve` with the embedded default; killed when dropped.
struct Serve(Child);

impl Serve {
    /// The same command every time; its log is appended to `log`.
    fn start(data: &Path, portal: SocketAddr, log: &Path) -> Serve {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        let child = Command::new(BIN)
            .args(["serve", "--data-dir"])
            .arg(data)
            .args(["--listen", &portal.to_string(), "--api-listen", "off", "--s3-listen", "off"])
            .env("RUST_LOG", "warn")
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
struct Model {
    blocks: Vec<BlockModel>,
}

impl Model {
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

    /// After a restart the block holds `id`: that is what it holds from now on.
    fn check(&mut self, lba: u64, id: u64) -> Result<(), String> {
        let c = &mut self.blocks[lba as usize].candidates;
        match c.iter().position(|&x| x == id) {
            Some(i) => {
                c.drain(..i);
                c.truncate(1);
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
    for first in (0..WRITERS * REGION).step_by(READ as usize) {
        let data = s.read(LUN, first, READ as u32, BLOCK as u32).await.map_err(|e| e.to_string())?;
        for i in 0..READ {
            let lba = first + i;
            let id = decode(lba, &data[i as usize * BLOCK..(i as usize + 1) * BLOCK])?;
            model.check(lba, id)?;
        }
    }
    let _ = s.logout().await;
    Ok(())
}

/// One writer until its session breaks (the kill): writes of 1-16 blocks in its region, a
/// third with FUA, a SYNCHRONIZE CACHE every 8 writes.
async fn writer(portal: SocketAddr, index: u64, round: usize, model: Arc<Mutex<Model>>, next_id: Arc<Mutex<u64>>) {
    let Some(s) = login(portal, 0x100 + index).await else { return };
    if s.clear_unit_attentions(LUN).await.is_err() {
        return;
    }
    let mut rng = Rng::seeded(round as u64 * 131 + index);
    let mut acked: Vec<(u64, u64)> = Vec::new();
    for n in 0u64.. {
        let blocks = 1 + rng.below(16);
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
        }
        let fua = rng.below(3) == 0;
        if s.write(LUN, lba, Bytes::from(data), BLOCK as u32, fua).await.is_err() {
            return;
        }
        if fua {
            let mut m = model.lock().unwrap();
            (lba..lba + blocks).for_each(|b| m.durable(b, id));
        } else {
            acked.extend((lba..lba + blocks).map(|b| (b, id)));
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
    let logs = tempfile::tempdir().expect("log dir");
    let log = logs.path().join("serve.log");
    let portal: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let model = Arc::new(Mutex::new(Model { blocks: vec![BlockModel::new(); (WRITERS * REGION) as usize] }));
    let next_id = Arc::new(Mutex::new(0u64));
    let mut rng = Rng::seeded(12);
    let mut restarts = Vec::new();
    for round in 0..ROUNDS {
        let started = Instant::now();
        let mut serve = Serve::start(data.path(), portal, &log);
        restarts.push(wait_until_served(portal, started).await);
        verify_into(portal, &model, round, &log).await;
        let writers: Vec<_> =
            (0..WRITERS).map(|i| tokio::spawn(writer(portal, i, round, model.clone(), next_id.clone()))).collect();
        tokio::time::sleep(Duration::from_millis(300 + rng.below(1500))).await;
        serve.kill();
        for w in writers {
            w.await.expect("writer");
        }
    }
    let started = Instant::now();
    let _serve = Serve::start(data.path(), portal, &log);
    restarts.push(wait_until_served(portal, started).await);
    verify_into(portal, &model, ROUNDS, &log).await;
    restarts.sort();
    eprintln!(
        "{ROUNDS} kill -9 rounds, {} writes: restart to LUN served median {:?}, max {:?}",
        *next_id.lock().unwrap(),
        restarts[restarts.len() / 2],
        restarts.last().expect("rounds")
    );
}

/// Verifies the volume after a restart; the model learns what each block holds.
async fn verify_into(portal: SocketAddr, model: &Arc<Mutex<Model>>, round: usize, log: &Path) {
    let mut m = Model { blocks: model.lock().unwrap().blocks.clone() };
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
