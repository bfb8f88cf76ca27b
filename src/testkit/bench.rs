//! Benchmarks run by `cargo xtask bench` through hidden `rtgt bench-*` subcommands.
//! They measure real elapsed time, so wall clocks are allowed here.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use rtgt::clock::TokioClock;
use rtgt::rng::Rng;
use rtgt::s3::S3Stats;
use rtgt::s3::aws::AwsStore;
use rtgt::s3::embedded::{self, EmbeddedS3};
use rtgt::s3::url::S3Url;
use rtgt::s3::volume::keys::{Held, KeySource};
use rtgt::s3::volume::{Compression, CreateSpec, S3Volume, VolumeOptions};
use rtgt::storage::BlockStore;

pub mod network;

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 4 * MIB;

/// One S3 workload's outcome, and what the naive design (a 4 MiB GET and a 4 MiB PUT for
/// every write that covers part of a chunk) would have cost.
#[derive(Debug, Clone, Serialize)]
pub struct S3Result {
    pub workload: String,
    pub written_bytes: u64,
    pub requests: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub seconds: f64,
    pub naive_requests: u64,
    pub naive_bytes_up: u64,
    /// Bytes of chunk objects stored once the volume closed (the rows that measure what
    /// compression keeps).
    pub stored_bytes: Option<u64>,
}

impl S3Result {
    pub fn requests_per_mib(&self) -> f64 {
        self.requests as f64 / (self.written_bytes as f64 / MIB as f64).max(1e-9)
    }
    pub fn up_per_written(&self) -> f64 {
        self.bytes_up as f64 / (self.written_bytes as f64).max(1.0)
    }
    pub fn naive_ratio(&self) -> f64 {
        self.naive_bytes_up as f64 / (self.bytes_up as f64).max(1.0)
    }
}

async fn volume(server: &EmbeddedS3, name: &str, size: u64) -> Result<(Arc<S3Volume>, Arc<S3Stats>), String> {
    volume_with(server, name, size, DataFormat::default()).await
}

/// How a benchmark volume keeps its data.
#[derive(Debug, Clone, Default)]
struct DataFormat {
    compression: Option<Compression>,
    encryption: Option<KeySource>,
}

async fn volume_with(
    server: &EmbeddedS3,
    name: &str,
    size: u64,
    format: DataFormat,
) -> Result<(Arc<S3Volume>, Arc<S3Stats>), String> {
    let store = Arc::new(AwsStore::connect(&server.endpoint(), "bench").await);
    let opts = VolumeOptions {
        create: Some(CreateSpec { size, block_size: 512, chunk_size: CHUNK }),
        holder: format!("bench-{name}"),
        compression: format.compression,
        encryption: format.encryption,
        ..VolumeOptions::default()
    };
    let url = S3Url::parse(&format!("s3://bench/{name}"))?;
    let v = S3Volume::open(store, url, opts, Arc::new(TokioClock::new())).await.map_err(|e| e.to_string())?;
    let stats = v.s3_stats();
    Ok((v, stats))
}

struct Counters {
    requests: u64,
    up: u64,
    down: u64,
}

fn counters(s: &S3Stats) -> Counters {
    Counters {
        requests: s.requests(),
        up: s.bytes_up.load(Ordering::Relaxed),
        down: s.bytes_down.load(Ordering::Relaxed),
    }
}

fn result(
    workload: &str,
    written: u64,
    before: Counters,
    after: Counters,
    started: Instant,
    naive: (u64, u64),
) -> S3Result {
    S3Result {
        workload: workload.into(),
        written_bytes: written,
        requests: after.requests - before.requests,
        bytes_up: after.up - before.up,
        bytes_down: after.down - before.down,
        seconds: started.elapsed().as_secs_f64(),
        naive_requests: naive.0,
        naive_bytes_up: naive.1,
        stored_bytes: None,
    }
}

/// Runs the three S3 workloads against the embedded store in `dir`, over HTTP.
pub async fn s3(dir: &Path, scale: u64) -> Result<Vec<S3Result>, String> {
    let root = embedded::open_root(dir)?;
    root.create_bucket("bench")?;
    let server = EmbeddedS3::start(root, "127.0.0.1:0".parse().expect("address")).await?;
    let mut out = Vec::new();

    // (a) sequential 1 MiB writes, then SYNCHRONIZE CACHE and a clean close.
    let (v, stats) = volume(&server, "sequential", GIB).await?;
    let total = 256 * MIB * scale;
    let before = counters(&stats);
    let started = Instant::now();
    let data = Bytes::from(vec![0xa5u8; MIB as usize]);
    for i in 0..total / MIB {
        v.write(i * MIB, data.clone(), false).await.map_err(|e| e.to_string())?;
    }
    v.flush().await.map_err(|e| e.to_string())?;
    v.close().await.map_err(|e| e.to_string())?;
    let writes = total / MIB;
    out.push(result("sequential 1 MiB writes", total, before, counters(&stats), started, (2 * writes, writes * CHUNK)));

    // (b) random 4 KiB writes, SYNCHRONIZE CACHE every 64 writes, then a clean close.
    let (v, stats) = volume(&server, "random", GIB).await?;
    let writes = 16384 * scale;
    let before = counters(&stats);
    let started = Instant::now();
    let mut rng = Rng::seeded(42);
    let mut block = vec![0u8; 4096];
    for i in 0..writes {
        block.fill((i % 251) as u8 + 1);
        let offset = rng.below(GIB / 4096) * 4096;
        v.write(offset, Bytes::copy_from_slice(&block), false).await.map_err(|e| e.to_string())?;
        if (i + 1) % 64 == 0 {
            v.flush().await.map_err(|e| e.to_string())?;
        }
    }
    v.close().await.map_err(|e| e.to_string())?;
    out.push(result(
        "random 4 KiB writes, SYNC CACHE every 64",
        writes * 4096,
        before,
        counters(&stats),
        started,
        (2 * writes, writes * CHUNK),
    ));

    // (c) a full-device UNMAP of a 64 GiB volume with 1% of its chunks present, in the
    // 512 MiB UNMAP commands a 512-byte-block LUN allows (as mkfs sends them).
    let size = 64 * GIB;
    let (v, _) = volume(&server, "unmap", size).await?;
    let chunks = size / CHUNK;
    let present = chunks / 100;
    let full = Bytes::from(vec![0x5au8; CHUNK as usize]);
    for i in 0..present {
        v.write(i * (chunks / present) * CHUNK, full.clone(), false).await.map_err(|e| e.to_string())?;
    }
    v.close().await.map_err(|e| e.to_string())?;
    drop(v);
    let (v, stats) = volume(&server, "unmap", size).await?;
    let before = counters(&stats);
    let started = Instant::now();
    let command = 512 * MIB;
    for i in 0..size / command {
        v.unmap(i * command, command).await.map_err(|e| e.to_string())?;
    }
    let r = result("full UNMAP of 64 GiB, 1% of chunks present", 0, before, counters(&stats), started, (0, 0));
    if v.chunk_count() != 0 {
        return Err(format!("{} chunks left after the full UNMAP", v.chunk_count()));
    }
    v.close().await.map_err(|e| e.to_string())?;
    out.push(r);

    // (d) sequential 1 MiB writes of text (CSV rows), on a plain, compressed and encrypted
    // volume: what compression keeps, and what it and encryption cost in throughput.
    let key = dir.join("bench.key");
    std::fs::write(&key, [0x42u8; 32]).map_err(|e| e.to_string())?;
    let sealed = Some(KeySource::Key(Held::File(key)));
    let formats = [
        ("plain", DataFormat::default()),
        ("zstd", DataFormat { compression: Some(Compression::Zstd), encryption: None }),
        ("lz4", DataFormat { compression: Some(Compression::Lz4), encryption: None }),
        ("encrypted", DataFormat { compression: None, encryption: sealed.clone() }),
        ("encrypted + zstd", DataFormat { compression: Some(Compression::Zstd), encryption: sealed }),
    ];
    // Three rounds, each in another order and after the dirty pages of the one before are
    // written out (the embedded store's files): the median of each.
    let mut runs: Vec<Vec<S3Result>> = vec![Vec::new(); formats.len()];
    for round in 0..3 {
        for i in (0..formats.len()).map(|i| (i + round) % formats.len()) {
            let (name, format) = &formats[i];
            // SAFETY: sync(2) takes no arguments and cannot fail.
            unsafe { libc::sync() };
            runs[i].push(text_writes(&server, name, format.clone(), round, 256 * MIB * scale).await?);
        }
    }
    for mut rows in runs {
        rows.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
        out.push(rows.swap_remove(1));
    }
    Ok(out)
}

/// `total` bytes of CSV rows written sequentially in 1 MiB writes, then a clean close; the
/// chunk bytes stored.
async fn text_writes(
    server: &EmbeddedS3,
    name: &str,
    format: DataFormat,
    round: usize,
    total: u64,
) -> Result<S3Result, String> {
    let prefix = format!("text-{}-{round}", name.replace([' ', '+'], ""));
    let (v, stats) = volume_with(server, &prefix, GIB, format).await?;
    let mut row = 0u64;
    let mut next_write = || {
        let mut text = Vec::with_capacity(MIB as usize + 64);
        while text.len() < MIB as usize {
            let line = format!(
                "{row},2026-12-05T10:{:02}:{:02},customer-{},{},ok\n",
                row / 60 % 60,
                row % 60,
                row % 977,
                row * 31 % 10_007
            );
            text.extend_from_slice(line.as_bytes());
            row += 1;
        }
        text.truncate(MIB as usize);
        Bytes::from(text)
    };
    let writes: Vec<Bytes> = (0..total / MIB).map(|_| next_write()).collect();
    let before = counters(&stats);
    let started = Instant::now();
    for (i, data) in writes.into_iter().enumerate() {
        v.write(i as u64 * MIB, data, false).await.map_err(|e| e.to_string())?;
    }
    v.flush().await.map_err(|e| e.to_string())?;
    v.close().await.map_err(|e| e.to_string())?;
    let mut r = result(
        &format!("sequential 1 MiB text writes, {name} (median of 3)"),
        total,
        before,
        counters(&stats),
        started,
        (0, 0),
    );
    let store = AwsStore::connect(&server.endpoint(), "bench").await;
    let chunks = rtgt::s3::list_all(&store, &format!("{prefix}/chunks/")).await.map_err(|e| e.to_string())?;
    r.stored_bytes = Some(chunks.iter().map(|c| c.size).sum());
    Ok(r)
}

const GIB: u64 = 1 << 30;

/// A Markdown table of S3 results.
pub fn s3_table(results: &[S3Result]) -> String {
    let mut t = String::from(
        "| workload | written | S3 requests | requests/MiB | bytes up / written | naive bytes up / ours | stored / written | MB/s | time |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let wrote = r.written_bytes > 0;
        let written = if wrote { format!("{} MiB", r.written_bytes / MIB) } else { "-".into() };
        let per_mib = if wrote { format!("{:.3}", r.requests_per_mib()) } else { "-".into() };
        let up = if wrote { format!("{:.3}", r.up_per_written()) } else { "-".into() };
        let naive = if r.naive_bytes_up > 0 { format!("{:.1}x", r.naive_ratio()) } else { "-".into() };
        let stored = match r.stored_bytes {
            Some(b) if wrote => format!("{:.1}%", b as f64 * 100.0 / r.written_bytes as f64),
            _ => "-".into(),
        };
        let rate =
            if wrote { format!("{:.0}", r.written_bytes as f64 / 1e6 / r.seconds.max(1e-9)) } else { "-".into() };
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} s |\n",
            r.workload, written, r.requests, per_mib, up, naive, stored, rate, r.seconds
        ));
    }
    t
}

// ---------------------------------------------------------------- load generator

/// The access pattern of `rtgt-bench load`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    Randread,
    Randwrite,
    Seqread,
    Seqwrite,
    /// Sequential writes over the whole LU, once (to prefill it before reads are measured).
    Fill,
}

impl Pattern {
    fn writes(self) -> bool {
        matches!(self, Pattern::Randwrite | Pattern::Seqwrite | Pattern::Fill)
    }
    fn random(self) -> bool {
        matches!(self, Pattern::Randread | Pattern::Randwrite)
    }
}

/// `rtgt-bench load`: a fixed-duration load against one LU through the library's initiator.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Target portal (host:port).
    #[arg(long)]
    pub portal: String,
    /// Target name (IQN).
    #[arg(long)]
    pub target: String,
    #[arg(long, default_value_t = 1)]
    pub lun: u16,
    #[arg(long, value_enum)]
    pub pattern: Pattern,
    /// Bytes per command (a multiple of the LU's block size).
    #[arg(long, default_value_t = 4096)]
    pub block_size: u32,
    /// Commands in flight per connection.
    #[arg(long, default_value_t = 1)]
    pub queue_depth: u32,
    /// Writes with FUA (`--fua true`).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub fua: bool,
    /// Sessions (one connection each), each with its own queue.
    #[arg(long, default_value_t = 1)]
    pub connections: u32,
    /// How long to issue commands (for `fill`: an upper bound).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Client threads (1: a single-threaded runtime, like iscsi-perf).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Seed of the random offsets.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the result here as JSON.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// What a load run measured. MB are 10^6 bytes; latencies are from submitting a command to
/// its response, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub pattern: Pattern,
    pub block_size: u32,
    pub queue_depth: u32,
    pub connections: u32,
    pub seconds: f64,
    pub ios: u64,
    pub bytes: u64,
    pub iops: f64,
    pub mb_per_s: f64,
    pub lat_mean_us: f64,
    pub lat_p50_us: f64,
    pub lat_p99_us: f64,
    pub lat_max_us: f64,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// The value at percentile `p` (0..=100) of sorted samples, by nearest rank; 0 when empty.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Aggregates per-command latencies (nanoseconds, in any order) into a result.
pub fn summarize(args: &LoadArgs, mut latencies_ns: Vec<u64>, seconds: f64, errors: u64) -> LoadResult {
    latencies_ns.sort_unstable();
    let ios = latencies_ns.len() as u64;
    let bytes = ios * args.block_size as u64;
    let seconds = seconds.max(1e-9);
    let us = |ns: u64| ns as f64 / 1000.0;
    let mean = if ios == 0 { 0.0 } else { latencies_ns.iter().map(|&n| n as f64).sum::<f64>() / ios as f64 / 1000.0 };
    LoadResult {
        pattern: args.pattern,
        block_size: args.block_size,
        queue_depth: args.queue_depth,
        connections: args.connections,
        seconds,
        ios,
        bytes,
        iops: ios as f64 / seconds,
        mb_per_s: bytes as f64 / seconds / 1e6,
        lat_mean_us: mean,
        lat_p50_us: us(percentile(&latencies_ns, 50.0)),
        lat_p99_us: us(percentile(&latencies_ns, 99.0)),
        lat_max_us: us(latencies_ns.last().copied().unwrap_or(0)),
        errors,
        first_error: None,
    }
}

/// What one worker (one command slot) saw.
struct WorkerOutcome {
    latencies_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

async fn login(args: &LoadArgs, index: u32) -> Result<crate::initiator::Session, String> {
    use crate::initiator::{InitiatorConfig, Session};
    let connect = tokio::net::TcpStream::connect(&args.portal);
    let stream = tokio::time::timeout(std::time::Duration::from_secs(10), connect)
        .await
        .map_err(|_| format!("connecting to {}: timed out", args.portal))?
        .map_err(|e| format!("connecting to {}: {e}", args.portal))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let config = InitiatorConfig {
        initiator_name: "iqn.2026-11.dev.rtgt:bench-load".into(),
        isid: 0x80_0000_0000 | ((std::process::id() as u64 & 0xffff) << 8) | (index as u64 & 0xff),
        ..InitiatorConfig::default()
    };
    Session::login(stream, &config, Some(&args.target)).await.map_err(|e| format!("login to {}: {e}", args.target))
}

/// Takes the session's unit attentions and waits, as an initiator's SCSI layer does, while the
/// LU answers NOT READY, becoming ready (04/01: an S3 volume still opening), up to a minute.
async fn wait_until_ready(session: &crate::initiator::Session, lun: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = session.command(lun, &[0; 6], Bytes::new(), 0).await.map_err(|e| format!("TEST UNIT READY: {e}"))?;
        let waiting = match r.sense_code() {
            Some((0x6, _, _)) => false,
            Some((0x2, 0x04, 0x01)) => true,
            _ => return r.ok().map(|_| ()).map_err(|e| format!("TEST UNIT READY: {e}")),
        };
        if Instant::now() >= deadline {
            return Err("TEST UNIT READY: the LU did not become ready within a minute".into());
        }
        if waiting {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs the load described by `args` and measures it.
pub async fn load(args: &LoadArgs) -> Result<LoadResult, String> {
    use std::sync::atomic::AtomicU64;

    use crate::initiator::rw16;

    if args.block_size == 0 || args.queue_depth == 0 || args.connections == 0 {
        return Err("--block-size, --queue-depth and --connections must be positive".into());
    }
    let mut sessions = Vec::new();
    for i in 0..args.connections {
        sessions.push(login(args, i).await?);
    }
    // Each new session (I_T nexus) has its power-on unit attention to take first.
    for session in &sessions {
        wait_until_ready(session, args.lun).await?;
    }
    let first = &sessions[0];
    let (blocks, lba_size) = first.capacity(args.lun).await.map_err(|e| format!("READ CAPACITY: {e}"))?;
    if lba_size == 0 || !args.block_size.is_multiple_of(lba_size) {
        return Err(format!("--block-size {} is not a multiple of the LU's {lba_size}-byte blocks", args.block_size));
    }
    let per_io = (args.block_size / lba_size) as u64;
    let slots = blocks / per_io;
    if slots == 0 {
        return Err(format!("the LU ({blocks} blocks) is smaller than one command"));
    }
    let data = if args.pattern.writes() {
        Bytes::from((0..args.block_size).map(|i| (i % 251) as u8 ^ 0x5a).collect::<Vec<u8>>())
    } else {
        Bytes::new()
    };
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds.max(0.0));
    let mut workers = Vec::new();
    for (c, session) in sessions.iter().enumerate() {
        for q in 0..args.queue_depth {
            let session = session.clone();
            let next = next.clone();
            let data = data.clone();
            let (pattern, lun, read_len) = (args.pattern, args.lun, args.block_size);
            let write_flags = if args.fua { 0x08 } else { 0 };
            let mut rng = Rng::seeded(args.seed ^ ((c as u64) << 32) ^ q as u64);
            workers.push(tokio::spawn(async move {
                let mut out = WorkerOutcome { latencies_ns: Vec::new(), errors: 0, first_error: None };
                while Instant::now() < deadline {
                    let slot = if pattern.random() {
                        rng.below(slots)
                    } else {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if pattern == Pattern::Fill && n >= slots {
                            break;
                        }
                        n % slots
                    };
                    let lba = slot * per_io;
                    let t0 = Instant::now();
                    let result = if pattern.writes() {
                        session.command(lun, &rw16(0x8a, lba, per_io as u32, write_flags), data.clone(), 0).await
                    } else {
                        session.command(lun, &rw16(0x88, lba, per_io as u32, 0), Bytes::new(), read_len).await
                    };
                    let elapsed = t0.elapsed().as_nanos() as u64;
                    match result.and_then(|r| r.ok()) {
                        Ok(r) if !pattern.writes() && r.data.len() != read_len as usize => {
                            out.errors += 1;
                            out.first_error.get_or_insert_with(|| {
                                format!("READ at LBA {lba}: {} bytes instead of {read_len}", r.data.len())
                            });
                        }
                        Ok(_) => out.latencies_ns.push(elapsed),
                        Err(e) => {
                            out.errors += 1;
                            out.first_error.get_or_insert_with(|| format!("LBA {lba}: {e}"));
                            if session.is_closed() {
                                break;
                            }
                        }
                    }
                }
                out
            }));
        }
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for w in workers {
        let out = w.await.map_err(|e| format!("worker: {e}"))?;
        latencies.extend(out.latencies_ns);
        errors += out.errors;
        if first_error.is_none() {
            first_error = out.first_error;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    for s in &sessions {
        let _ = tokio::time::timeout(Duration::from_secs(5), s.logout()).await;
    }
    let mut result = summarize(args, latencies, seconds, errors);
    result.first_error = first_error;
    Ok(result)
}

/// `rtgt-bench load`: runs the load, prints a line and writes the JSON; fails if any command
/// failed.
pub fn run_load(args: LoadArgs) -> Result<(), String> {
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()
    }
    .map_err(|e| e.to_string())?;
    let result = runtime.block_on(load(&args))?;
    println!(
        "{:?} {} B QD{} x{}: {:.0} IOPS, {:.1} MB/s, latency p50 {:.0} us p99 {:.0} us max {:.0} us, {} errors",
        result.pattern,
        result.block_size,
        result.queue_depth,
        result.connections,
        result.iops,
        result.mb_per_s,
        result.lat_p50_us,
        result.lat_p99_us,
        result.lat_max_us,
        result.errors
    );
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&result).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    match result.first_error {
        Some(e) => Err(format!("{} commands failed; the first: {e}", result.errors)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod load_tests {
    use super::*;

    fn args() -> LoadArgs {
        LoadArgs {
            portal: String::new(),
            target: String::new(),
            lun: 1,
            pattern: Pattern::Randread,
            block_size: 4096,
            queue_depth: 1,
            fua: false,
            connections: 1,
            seconds: 1.0,
            threads: 1,
            seed: 1,
            json: None,
        }
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
        // 1000 samples: p99 is the 990th.
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 99.0), 990);
    }

    #[test]
    fn summary_of_unsorted_latencies() {
        let r = summarize(&args(), vec![4000, 1000, 3000, 2000], 2.0, 1);
        assert_eq!(r.ios, 4);
        assert_eq!(r.bytes, 4 * 4096);
        assert_eq!(r.iops, 2.0);
        assert!((r.mb_per_s - 4.0 * 4096.0 / 2.0 / 1e6).abs() < 1e-12);
        assert_eq!(r.lat_p50_us, 2.0);
        assert_eq!(r.lat_p99_us, 4.0);
        assert_eq!(r.lat_max_us, 4.0);
        assert_eq!(r.lat_mean_us, 2.5);
        assert_eq!(r.errors, 1);
        let empty = summarize(&args(), Vec::new(), 0.0, 0);
        assert_eq!((empty.iops, empty.lat_p99_us, empty.lat_mean_us), (0.0, 0.0, 0.0));
    }
}
