//! Benchmarks run by `cargo xtask bench` through hidden `rtgt bench-*` subcommands.
//! They measure real elapsed time, so wall clocks are allowed here.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;

use crate::clock::TokioClock;
use crate::rng::Rng;
use crate::s3::aws::AwsStore;
use crate::s3::embedded::{self, EmbeddedS3};
use crate::s3::url::S3Url;
use crate::s3::volume::{CreateSpec, S3Volume, VolumeOptions};
use crate::s3::{Resilient, RetryPolicy, S3Stats};
use crate::storage::BlockStore;

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

async fn volume(
    server: &EmbeddedS3,
    name: &str,
    size: u64,
) -> Result<(Arc<S3Volume>, Arc<S3Stats>, Arc<Resilient<AwsStore>>), String> {
    let aws = AwsStore::connect(&server.endpoint(), "bench").await;
    let store = Arc::new(Resilient::new(aws, RetryPolicy::default(), 7));
    let stats = store.stats();
    let opts = VolumeOptions {
        create: Some(CreateSpec { size, block_size: 512, chunk_size: CHUNK }),
        holder: format!("bench-{name}"),
        ..VolumeOptions::default()
    };
    let url = S3Url::parse(&format!("s3://bench/{name}"))?;
    let v = S3Volume::open(store.clone(), url, opts, Arc::new(TokioClock::new()), Some(stats.clone())).await?;
    Ok((v, stats, store))
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
    }
}

/// Runs the three S3 workloads against an embedded s3s-fs server in `dir`.
pub async fn s3(dir: &Path, scale: u64) -> Result<Vec<S3Result>, String> {
    embedded::ensure_bucket(dir, "bench")?;
    let server = EmbeddedS3::start(dir, "127.0.0.1:0".parse().expect("address")).await?;
    let mut out = Vec::new();

    // (a) sequential 1 MiB writes, then SYNCHRONIZE CACHE and a clean close.
    let (v, stats, _) = volume(&server, "sequential", GIB).await?;
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
    let (v, stats, _) = volume(&server, "random", GIB).await?;
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
    let (v, _, _) = volume(&server, "unmap", size).await?;
    let chunks = size / CHUNK;
    let present = chunks / 100;
    let full = Bytes::from(vec![0x5au8; CHUNK as usize]);
    for i in 0..present {
        v.write(i * (chunks / present) * CHUNK, full.clone(), false).await.map_err(|e| e.to_string())?;
    }
    v.close().await.map_err(|e| e.to_string())?;
    drop(v);
    let (v, stats, _) = volume(&server, "unmap", size).await?;
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
    Ok(out)
}

const GIB: u64 = 1 << 30;

/// A Markdown table of S3 results.
pub fn s3_table(results: &[S3Result]) -> String {
    let mut t = String::from(
        "| workload | written | S3 requests | requests/MiB | bytes up / written | naive bytes up / ours | time |\n|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let written = if r.written_bytes > 0 { format!("{} MiB", r.written_bytes / MIB) } else { "-".into() };
        let per_mib = if r.written_bytes > 0 { format!("{:.3}", r.requests_per_mib()) } else { "-".into() };
        let up = if r.written_bytes > 0 { format!("{:.3}", r.up_per_written()) } else { "-".into() };
        let naive = if r.naive_bytes_up > 0 { format!("{:.1}x", r.naive_ratio()) } else { "-".into() };
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.2} s |\n",
            r.workload, written, r.requests, per_mib, up, naive, r.seconds
        ));
    }
    t
}
