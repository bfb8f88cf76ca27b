//! The S3 volume at a distance: the embedded store over HTTP behind [`Netem`] (a delay, a
//! bandwidth cap, an outage), driven by closed-loop workers at a queue depth, against the
//! volume's block interface (no iSCSI in between). Each workload runs on the loopback link
//! and on the emulated one, side by side.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use crate::netem::{LinkSpec, Netem, Reach};
use rtgt::clock::TokioClock;
use rtgt::rng::Rng;
use rtgt::s3::aws::AwsStore;
use rtgt::s3::embedded::{self, EmbeddedS3};
use rtgt::s3::url::S3Url;
use rtgt::s3::volume::{CreateSpec, DiskCacheOptions, JournalOptions, S3Volume, VolumeOptions};
use rtgt::storage::BlockStore;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// The volume's size: random I/O spreads over all of it.
const VOLUME: u64 = 2 << 30;
/// What the sequential writes fill and the cold reads read back.
const FILLED: u64 = 256 * MIB;
const CHUNK: u64 = 4 * MIB;

/// What to emulate.
#[derive(Debug, Clone)]
pub struct NetworkArgs {
    pub link: LinkSpec,
    /// Each workload runs this long.
    pub seconds: u64,
    /// Seconds the store is away in the outage workload (0: no outage workload).
    pub outage: u64,
    /// Only the workloads whose name contains this (all when `None`).
    pub only: Option<String>,
}

impl NetworkArgs {
    fn wants(&self, workloads: &[&str]) -> bool {
        self.only.as_deref().is_none_or(|only| workloads.iter().any(|w| w.contains(only)))
    }
}

/// One workload on one link.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyResult {
    pub link: String,
    pub workload: String,
    pub commands: u64,
    pub errors: u64,
    /// NOT READY answers retried (as initiators retry them), in workloads that retry.
    pub not_ready_retries: u64,
    pub seconds: f64,
    pub iops: f64,
    pub mb_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn describe(link: LinkSpec) -> String {
    if link == LinkSpec::default() {
        return "loopback".into();
    }
    let mut s = format!("{} ms RTT", (link.one_way_delay * 2).as_millis());
    if let Some(rate) = link.bytes_per_sec {
        s.push_str(&format!(", {} Mbit/s", rate * 8 / 1_000_000));
    }
    s
}

/// Runs every workload on loopback, then on the emulated link.
pub async fn run(dir: &Path, args: NetworkArgs) -> Result<Vec<LatencyResult>, String> {
    let mut out = Vec::new();
    for (i, link) in [LinkSpec::default(), args.link].into_iter().enumerate() {
        let sub = dir.join(format!("link{i}"));
        std::fs::create_dir_all(&sub).map_err(|e| e.to_string())?;
        out.extend(on_link(&sub, link, &args).await?);
    }
    Ok(out)
}

struct Setup {
    server: EmbeddedS3,
    netem: Netem,
    /// Holds the local stores (journal, disk cache) across reopens.
    ctx: rtgt::config::BuildContext,
}

async fn open(setup: &Setup, name: &str) -> Result<Arc<S3Volume>, String> {
    open_with(setup, name, None, VolumeOptions::default().cache_bytes).await
}

/// Opens a volume with a memory cache of 16 MiB and a disk cache in `dir` that holds it all.
async fn open_disk_cached(setup: &Setup, name: &str, dir: &Path) -> Result<Arc<S3Volume>, String> {
    let store = setup.ctx.disk_cache_store(dir)?;
    let disk_cache = Some(DiskCacheOptions { store, bytes_max: 2 * FILLED });
    open_opts(setup, name, VolumeOptions { cache_bytes: 16 * MIB, disk_cache, ..VolumeOptions::default() }).await
}

/// Opens a volume with a write-back cache of `cache_bytes`; with `journal`,
/// `durability = "local"` with its journal there.
async fn open_with(
    setup: &Setup,
    name: &str,
    journal: Option<&Path>,
    cache_bytes: u64,
) -> Result<Arc<S3Volume>, String> {
    let mut opts = VolumeOptions { cache_bytes, ..VolumeOptions::default() };
    if let Some(dir) = journal {
        opts.journal = Some(JournalOptions { store: setup.ctx.journal_store(dir)?, bytes_max: 1 << 30 });
        opts.node = Some(rtgt::node::NodeId::new("bench-node"));
    }
    open_opts(setup, name, opts).await
}

/// Opens volume `name` of the bench's geometry (2 GiB in 4 MiB chunks) with `opts`.
async fn open_opts(setup: &Setup, name: &str, opts: VolumeOptions) -> Result<Arc<S3Volume>, String> {
    let mut endpoint = embedded::endpoint_for(setup.netem.addr(), setup.server.credentials());
    endpoint.url = Some(setup.netem.url());
    let store = Arc::new(AwsStore::connect(&endpoint, "bench").await);
    let opts = VolumeOptions {
        create: Some(CreateSpec { size: VOLUME, block_size: 512, chunk_size: CHUNK }),
        holder: format!("bench-{name}"),
        ..opts
    };
    let url = S3Url::parse(&format!("s3://bench/{name}"))?;
    S3Volume::open(store, url, opts, Arc::new(TokioClock::new())).await.map_err(|e| e.to_string())
}

async fn on_link(dir: &Path, link: LinkSpec, args: &NetworkArgs) -> Result<Vec<LatencyResult>, String> {
    let root = embedded::open_root(dir)?;
    root.create_bucket("bench")?;
    let server = EmbeddedS3::start(root, "127.0.0.1:0".parse().expect("address")).await?;
    let netem = Netem::start(server.addr, link).await.map_err(|e| e.to_string())?;
    let setup = Setup { server, netem, ctx: rtgt::config::BuildContext::new() };
    let secs = Duration::from_secs(args.seconds);
    let name = describe(link);
    let mut out = Vec::new();
    let mut record = |workload: &str, m: Measured| {
        let r = m.result(&name, workload);
        eprintln!(
            "{:<20} {:<42} {:>9.0} IOPS {:>8.1} MB/s  p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.1} ms  errors {}",
            r.link, r.workload, r.iops, r.mb_per_s, r.p50_ms, r.p99_ms, r.max_ms, r.errors
        );
        out.push(r);
    };

    const FUA_QD1: &str = "4 KiB FUA write, QD1";
    const FUA_QD32: &str = "4 KiB FUA write, QD32";
    // More than the default cache (256 MiB) holds: writes wait for chunk merges (a GET and a
    // PUT of 4 MiB for each chunk a few random blocks dirtied) once it is full.
    const PAST: &str = "4 KiB random write, QD32, more than the cache";
    if args.wants(&[FUA_QD1, FUA_QD32, PAST]) {
        let v = open(&setup, "writes").await?;
        if args.wants(&[FUA_QD1]) {
            record(FUA_QD1, closed_loop(1, secs, 4 * KIB, |_, rng| random_write(&v, rng, true)).await);
        }
        if args.wants(&[FUA_QD32]) {
            record(FUA_QD32, closed_loop(32, secs, 4 * KIB, |_, rng| random_write(&v, rng, true)).await);
        }
        if args.wants(&[PAST]) {
            record(PAST, closed_loop(32, secs, 4 * KIB, |_, rng| random_write(&v, rng, false)).await);
        }
        v.close().await.map_err(|e| e.to_string())?;
    }

    // The goal's case: the dirty data fits the cache.
    const FITS: &str = "4 KiB random write, QD32, fits the cache";
    if args.wants(&[FITS]) {
        let v = open_with(&setup, "fits", None, 4 << 30).await?;
        record(FITS, closed_loop(32, secs, 4 * KIB, |_, rng| random_write(&v, rng, false)).await);
        v.close().await.map_err(|e| e.to_string())?;
    }

    // The same with a snapshot taken every second meanwhile: writes wait while it merges the
    // dirty chunks. Compare its max with the p99 of the run above.
    const SNAPSHOTS: &str = "4 KiB random write, QD32, fits the cache, a snapshot every second";
    if args.wants(&[SNAPSHOTS]) {
        let v = open_with(&setup, "snapshots", None, 4 << 30).await?;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // On a task of its own: the writes, which the cache takes at once, never yield.
        let taker = tokio::spawn({
            let (v, done) = (v.clone(), done.clone());
            async move {
                let mut took = Vec::new();
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if done.load(std::sync::atomic::Ordering::Relaxed) {
                        return took;
                    }
                    let name = format!("s{}", took.len());
                    let name = rtgt::storage::snapshots::SnapshotName::parse(&name).expect("a name");
                    let started = Instant::now();
                    if v.create_snapshot(name).await.is_ok() {
                        took.push(started.elapsed());
                    }
                }
            }
        });
        let m = closed_loop(32, secs, 4 * KIB, |_, rng| random_write(&v, rng, false)).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let took = taker.await.map_err(|e| e.to_string())?;
        let ms: Vec<String> = took.iter().map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0)).collect();
        eprintln!("snapshots taken meanwhile: {} (ms each: {})", took.len(), ms.join(", "));
        record(SNAPSHOTS, m);
        v.close().await.map_err(|e| e.to_string())?;
    }

    const LOCAL_QD1: &str = "4 KiB FUA write, QD1, durability local";
    const LOCAL_QD32: &str = "4 KiB FUA write, QD32, durability local";
    if args.wants(&[LOCAL_QD1, LOCAL_QD32]) {
        let v = open_with(&setup, "local", Some(&dir.join("journal")), VolumeOptions::default().cache_bytes).await?;
        record(LOCAL_QD1, closed_loop(1, secs, 4 * KIB, |_, rng| random_write(&v, rng, true)).await);
        record(LOCAL_QD32, closed_loop(32, secs, 4 * KIB, |_, rng| random_write(&v, rng, true)).await);
        v.close().await.map_err(|e| e.to_string())?;
    }

    const SEQ_WRITE: &str = "1 MiB sequential write, QD8, then SYNC";
    const COLD_RANDOM: &str = "4 KiB random read, QD32, cold";
    const SEQ_READ: &str = "1 MiB sequential read, QD8, cold";
    const WARM: &str = "4 KiB random read, QD32, warm (in the cache)";
    const DISK_WARM: &str = "4 KiB random read, QD32, warm in the disk cache";
    if args.wants(&[SEQ_WRITE, COLD_RANDOM, SEQ_READ, WARM, DISK_WARM]) {
        // The reads read what the sequential writes wrote.
        fill_sequentially(&setup, secs, &mut record).await?;
    }
    const SEQ_WRITE_ENCRYPTED: &str = "1 MiB sequential write, QD8, then SYNC, encrypted";
    if args.wants(&[SEQ_WRITE_ENCRYPTED]) {
        let key = dir.join("bench.key");
        std::fs::write(&key, [0x6b; 32]).map_err(|e| e.to_string())?;
        let source = rtgt::s3::volume::keys::KeySource::Key(rtgt::s3::volume::keys::Held::File(key));
        let v = open_opts(&setup, "encrypted", VolumeOptions { encryption: Some(source), ..VolumeOptions::default() })
            .await?;
        record(SEQ_WRITE_ENCRYPTED, sequential_writes(&v, secs).await.0);
        v.close().await.map_err(|e| e.to_string())?;
    }
    if args.wants(&[COLD_RANDOM]) {
        // Cold: a small cache, and every read in a segment no read touched before (the cache
        // keeps what reads fetch).
        let v = open_with(&setup, "sequential", None, 16 * MIB).await?;
        let reads = std::sync::atomic::AtomicU64::new(0);
        record(
            COLD_RANDOM,
            closed_loop(32, secs, 4 * KIB, |_, rng| {
                let v = v.clone();
                let offset = distinct_segment(reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                    + rng.below(16) * 4 * KIB;
                async move { v.read(offset, 4 * KIB as usize).await.is_ok() }
            })
            .await,
        );
        v.close().await.map_err(|e| e.to_string())?;
    }
    if args.wants(&[SEQ_READ, WARM]) {
        // One pass over the filled range (readahead fetches whole chunks ahead of it) into a
        // cache that holds it all; then random reads of it.
        let v = open_with(&setup, "sequential", None, 2 * FILLED).await?;
        let at = std::sync::atomic::AtomicU64::new(0);
        record(
            SEQ_READ,
            closed_loop_limited(8, secs, MIB, FILLED / MIB, |_, _| {
                let v = v.clone();
                let offset = at.fetch_add(MIB, std::sync::atomic::Ordering::Relaxed);
                async move { v.read(offset, MIB as usize).await.is_ok() }
            })
            .await,
        );
        record(
            WARM,
            closed_loop(32, secs, 4 * KIB, |_, rng| {
                let v = v.clone();
                let offset = rng.below(FILLED / (4 * KIB)) * 4 * KIB;
                async move { v.read(offset, 4 * KIB as usize).await.is_ok() }
            })
            .await,
        );
        v.close().await.map_err(|e| e.to_string())?;
    }

    if args.wants(&[DISK_WARM]) {
        let disk_dir = dir.join("disk-cache");
        // Two passes over the filled range, whole chunks in a scattered order (no stream, so
        // no readahead): each fetch goes to the disk cache, unless its writes are all busy.
        let v = open_disk_cached(&setup, "sequential", &disk_dir).await?;
        let chunks = FILLED / CHUNK;
        for i in 0..2 * chunks {
            let c = i * 7 % chunks;
            v.read(c * CHUNK, CHUNK as usize).await.map_err(|e| e.to_string())?;
        }
        v.close().await.map_err(|e| e.to_string())?;
        drop(v);
        // Reopened: nothing in memory.
        let v = open_disk_cached(&setup, "sequential", &disk_dir).await?;
        let m = closed_loop(32, secs, 4 * KIB, |_, rng| {
            let v = v.clone();
            let offset = rng.below(FILLED / (4 * KIB)) * 4 * KIB;
            async move { v.read(offset, 4 * KIB as usize).await.is_ok() }
        })
        .await;
        let stats = v.counters();
        eprintln!(
            "  disk cache: {} bytes held, {} read from it, {} fetched",
            stats.disk_cache_bytes, stats.read_bytes_disk, stats.read_bytes_fetched
        );
        record(DISK_WARM, m);
        v.close().await.map_err(|e| e.to_string())?;
    }

    const UNMAP: &str = "UNMAP of 512 MiB written (128 chunks), one command";
    if args.wants(&[UNMAP]) {
        record(UNMAP, unmaps_of_written(&setup).await?);
    }

    if args.outage > 0 && args.wants(&["S3 away"]) {
        let v = open(&setup, "outage").await?;
        let netem = &setup.netem;
        let outage = Duration::from_secs(args.outage);
        // More than the cache holds arrives while the store is away: writes then wait for room,
        // and past their deadline get NOT READY, which an initiator retries.
        let retries = std::sync::atomic::AtomicU64::new(0);
        let load = closed_loop(4, outage + 2 * secs, 4 * KIB, |_, rng| {
            let offset = rng.below(VOLUME / (4 * KIB)) * 4 * KIB;
            retried_write(&v, offset, &retries)
        });
        let cut = async {
            tokio::time::sleep(secs).await;
            netem.set_reach(Reach::Refused);
            tokio::time::sleep(outage).await;
            netem.set_reach(Reach::Up);
        };
        let (mut m, ()) = tokio::join!(load, cut);
        m.errors += u64::from(v.flush().await.is_err());
        m.not_ready_retries = retries.load(std::sync::atomic::Ordering::Relaxed);
        record(&format!("4 KiB random write, QD4, S3 away {} s", args.outage), m);
        v.close().await.map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// The largest UNMAP one command may carry with 512-byte blocks (2^20 blocks).
const UNMAP_SPAN: u64 = 512 * MIB;

/// Three rounds of: [`UNMAP_SPAN`] written in 1 MiB writes and made durable, then one UNMAP
/// of all of it, timed (each of its chunks gets a tombstone in the store before it is
/// answered), and the SYNCHRONIZE CACHE after it.
async fn unmaps_of_written(setup: &Setup) -> Result<Measured, String> {
    let v = open_with(setup, "unmap", None, 2 * UNMAP_SPAN).await?;
    let mut m = Measured::none(UNMAP_SPAN);
    for round in 0..3u8 {
        let at = std::sync::atomic::AtomicU64::new(0);
        let fill = closed_loop_limited(8, Duration::from_secs(600), MIB, UNMAP_SPAN / MIB, |_, _| {
            let v = v.clone();
            let offset = at.fetch_add(MIB, std::sync::atomic::Ordering::Relaxed);
            async move { v.write(offset, Bytes::from(vec![round + 1; MIB as usize]), false).await.is_ok() }
        })
        .await;
        let writes = UNMAP_SPAN / MIB;
        if fill.latencies.len() as u64 != writes {
            return Err(format!("filling the UNMAP's range: {} of {writes} writes done", fill.latencies.len()));
        }
        v.flush().await.map_err(|e| format!("before the UNMAP: {e}"))?;
        let started = Instant::now();
        let unmapped = v.unmap(0, UNMAP_SPAN).await;
        let took = started.elapsed();
        let synced = Instant::now();
        let flushed = v.flush().await;
        eprintln!(
            "  UNMAP of {} MiB: {:.1} ms, the SYNCHRONIZE CACHE after it {:.1} ms",
            UNMAP_SPAN / MIB,
            took.as_secs_f64() * 1000.0,
            synced.elapsed().as_secs_f64() * 1000.0
        );
        match unmapped.and(flushed) {
            Ok(()) => m.latencies.push(took),
            Err(e) => {
                eprintln!("  UNMAP failed: {e}");
                m.errors += 1;
            }
        }
        m.seconds += took.as_secs_f64();
    }
    v.close().await.map_err(|e| e.to_string())?;
    Ok(m)
}

/// The sequential-write workload, then whatever it did not reach written too, so that every
/// read of the filled range finds data.
async fn fill_sequentially(
    setup: &Setup,
    secs: Duration,
    record: &mut impl FnMut(&str, Measured),
) -> Result<(), String> {
    let v = open(setup, "sequential").await?;
    let (m, reached) = sequential_writes(&v, secs).await;
    record("1 MiB sequential write, QD8, then SYNC", m);
    let mut offset = reached.min(FILLED);
    while offset < FILLED {
        v.write(offset, Bytes::from(vec![0x5a; MIB as usize]), false).await.map_err(|e| e.to_string())?;
        offset += MIB;
    }
    v.close().await.map_err(|e| e.to_string())
}

/// 1 MiB writes at QD8 from the start of the volume, over all of it (eight times the cache:
/// the rate is the link's, not the cache's), then a SYNCHRONIZE CACHE; the offset reached.
async fn sequential_writes(v: &Arc<S3Volume>, secs: Duration) -> (Measured, u64) {
    let at = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let next = || at.fetch_add(MIB, std::sync::atomic::Ordering::Relaxed) % VOLUME;
    let started = Instant::now();
    let mut m = closed_loop(8, secs, MIB, |_, _| {
        let v = v.clone();
        let offset = next();
        async move { v.write(offset, Bytes::from(vec![0x5a; MIB as usize]), false).await.is_ok() }
    })
    .await;
    // The writes are done once they are durable.
    let synced = v.flush().await.is_ok();
    m.errors += u64::from(!synced);
    m.seconds = started.elapsed().as_secs_f64();
    (m, at.load(std::sync::atomic::Ordering::Relaxed))
}

fn random_write(v: &Arc<S3Volume>, rng: &mut Rng, fua: bool) -> impl std::future::Future<Output = bool> + use<> {
    let v = v.clone();
    let offset = rng.below(VOLUME / (4 * KIB)) * 4 * KIB;
    let data = Bytes::from(vec![(offset / 4096 % 251) as u8 + 1; 4 * KIB as usize]);
    async move { v.write(offset, data, fua).await.is_ok() }
}

/// A plain 4 KiB write as Linux's SCSI layer sends it: NOT READY (the volume's answer once a
/// command has waited out its deadline) is retried until the command's whole budget, its 30 s
/// timeout times six tries, is spent; any other failure is an error.
async fn retried_write(v: &Arc<S3Volume>, offset: u64, retries: &std::sync::atomic::AtomicU64) -> bool {
    let data = Bytes::from(vec![(offset / 4096 % 251) as u8 + 1; 4 * KIB as usize]);
    let budget = Instant::now() + Duration::from_secs(180);
    loop {
        match v.write(offset, data.clone(), false).await {
            Ok(()) => return true,
            Err(rtgt::storage::StoreError::NotReady(_)) if Instant::now() < budget => {
                retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(_) => return false,
        }
    }
}

/// Latencies of one closed-loop run.
struct Measured {
    latencies: Vec<Duration>,
    errors: u64,
    not_ready_retries: u64,
    seconds: f64,
    bytes_per_command: u64,
}

impl Measured {
    /// No command yet.
    fn none(bytes_per_command: u64) -> Measured {
        Measured { latencies: Vec::new(), errors: 0, not_ready_retries: 0, seconds: 0.0, bytes_per_command }
    }

    fn result(&self, link: &str, workload: &str) -> LatencyResult {
        let mut l = self.latencies.clone();
        l.sort();
        let pct = |p: f64| l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1))).copied();
        let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        let commands = l.len() as u64;
        LatencyResult {
            link: link.into(),
            workload: workload.into(),
            commands,
            errors: self.errors,
            not_ready_retries: self.not_ready_retries,
            seconds: self.seconds,
            iops: commands as f64 / self.seconds,
            mb_per_s: (commands * self.bytes_per_command) as f64 / self.seconds / 1e6,
            p50_ms: ms(pct(0.5)),
            p99_ms: ms(pct(0.99)),
            max_ms: ms(l.last().copied()),
        }
    }
}

/// The offset of the `i`th of a sequence of 64 KiB segments of the filled range that visits
/// each once before any twice (an odd stride is a permutation of a power of two).
fn distinct_segment(i: u64) -> u64 {
    let segments = FILLED / (64 * KIB);
    (i.wrapping_mul(0x9e37_79b9) % segments) * 64 * KIB
}

/// `depth` workers, each issuing its next command when the last one completes, for `time`.
async fn closed_loop<F, Fut>(depth: usize, time: Duration, bytes_per_command: u64, op: F) -> Measured
where
    F: Fn(usize, &mut Rng) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    closed_loop_limited(depth, time, bytes_per_command, u64::MAX, op).await
}

/// [`closed_loop`] that also stops after `commands` commands.
async fn closed_loop_limited<F, Fut>(
    depth: usize,
    time: Duration,
    bytes_per_command: u64,
    commands: u64,
    op: F,
) -> Measured
where
    F: Fn(usize, &mut Rng) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let issued = &std::sync::atomic::AtomicU64::new(0);
    let started = Instant::now();
    let end = started + time;
    let workers = (0..depth).map(|w| {
        let op = &op;
        async move {
            let mut rng = Rng::seeded(w as u64 + 1);
            let (mut latencies, mut errors) = (Vec::new(), 0u64);
            while Instant::now() < end && issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < commands {
                let t = Instant::now();
                if op(w, &mut rng).await {
                    latencies.push(t.elapsed());
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        }
    });
    let results = futures::future::join_all(workers).await;
    let mut m = Measured { seconds: started.elapsed().as_secs_f64(), ..Measured::none(bytes_per_command) };
    for (l, e) in results {
        m.latencies.extend(l);
        m.errors += e;
    }
    m
}

/// A Markdown table of the results, the loopback and emulated links side by side.
pub fn table(results: &[LatencyResult]) -> String {
    let mut t = String::from(
        "| workload | link | IOPS | MB/s | p50 ms | p99 ms | max ms | errors | NOT READY retried |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut sorted: Vec<&LatencyResult> = results.iter().collect();
    sorted.sort_by_key(|r| results.iter().position(|x| x.workload == r.workload));
    for r in sorted {
        t.push_str(&format!(
            "| {} | {} | {:.0} | {:.1} | {:.2} | {:.2} | {:.1} | {} | {} |\n",
            r.workload, r.link, r.iops, r.mb_per_s, r.p50_ms, r.p99_ms, r.max_ms, r.errors, r.not_ready_retries
        ));
    }
    t
}
