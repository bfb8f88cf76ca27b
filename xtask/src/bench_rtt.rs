//! `cargo xtask bench s3 --rtt 20ms --iscsi [--bandwidth 100Mbit] [--seconds N]`: the S3
//! volume's goal table through iSCSI. `rtgt serve` (release) exports S3 LUNs whose store, the
//! embedded one, sits behind the network emulator (`rtgt-bench s3-remote`); rtgt's load
//! generator (`rtgt-bench load`, the library's initiator) drives them. One run per row. Results on
//! stdout and in `target/bench/s3-rtt.json`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::bench::{REMOTE_BUCKET, RemoteStore, Serve, Watched, bench_load, json_number};
use crate::{build_release, free_port, root};

const IQN: &str = "iqn.2026-12.dev.rtgt:rtt";
/// Durability "s3", a cache that holds all that the write rows write.
const WRITES_LUN: u32 = 1;
/// Durability "local" (a journal in the cache directory).
const LOCAL_LUN: u32 = 2;
/// Durability "s3", a small memory cache: sequential reads from the store.
const STREAM_LUN: u32 = 3;
/// Durability "s3", a small memory cache and a disk cache that holds the whole LUN.
const DISK_LUN: u32 = 4;
const MIB: u32 = 1 << 20;

/// The link to emulate and how long each row runs.
pub struct Args {
    pub rtt_ms: u64,
    /// Each way; 0: no cap.
    pub mbit: u64,
    pub seconds: u64,
}

struct Sample {
    iops: f64,
    mb_s: f64,
    p50_us: f64,
    max_us: f64,
    errors: f64,
}

struct Bench {
    serve: Serve,
}

impl Bench {
    /// A clean stop: every LUN merged and closed (at the link's pace).
    fn stop(&self, server: Watched) -> Result<(), String> {
        server.terminate(Duration::from_secs(600))
    }

    fn load(
        &self,
        lun: u32,
        pattern: &str,
        block_size: u32,
        depth: u32,
        seconds: u64,
        fua: bool,
    ) -> Result<Sample, String> {
        let mut options = vec![
            ("--lun", lun.to_string()),
            ("--pattern", pattern.to_string()),
            ("--block-size", block_size.to_string()),
            ("--queue-depth", depth.to_string()),
        ];
        if fua {
            options.push(("--fua", "true".to_string()));
        }
        let text = bench_load(&self.serve.dir, self.serve.addr, IQN, &options, seconds)
            .map_err(|e| format!("{pattern} on LUN {lun}: {e}"))?;
        let get = |k: &str| json_number(&text, &[k]).ok_or(format!("rtgt-bench load result without {k}"));
        Ok(Sample {
            iops: get("iops")?,
            mb_s: get("mb_per_s")?,
            p50_us: get("lat_p50_us")?,
            max_us: get("lat_max_us")?,
            errors: get("errors")?,
        })
    }
}

/// A row of the table: the workload, what was measured, the goal and whether it is met.
struct Row {
    workload: &'static str,
    sample: Sample,
    goal: String,
    met: bool,
}

impl Row {
    fn at_least_iops(workload: &'static str, sample: Sample, goal: f64) -> Row {
        Row { met: sample.iops >= goal, goal: format!("≥ {goal:.0} IOPS"), workload, sample }
    }
}

pub fn run(args: Args) -> Result<(), String> {
    build_release()?;
    let dir = std::env::temp_dir().join(format!("rtgt-bench-rtt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let result = measure(&dir, &args);
    let _ = std::fs::remove_dir_all(&dir);
    let rows = result?;
    let link = match args.mbit {
        0 => format!("{} ms RTT", args.rtt_ms),
        m => format!("{} ms RTT, {m} Mbit/s", args.rtt_ms),
    };
    print!("{}", table(&link, &rows));
    let out = root().join("target/bench");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let json = out.join("s3-rtt.json");
    std::fs::write(&json, json_rows(&link, &rows)).map_err(|e| e.to_string())?;
    eprintln!("xtask: results in {}", json.display());
    Ok(())
}

fn measure(dir: &Path, args: &Args) -> Result<Vec<Row>, String> {
    let rtgt = root().join("target/release/rtgt");
    let store = RemoteStore::start(dir, args.rtt_ms, args.mbit)?;

    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse().expect("address");
    let config = dir.join("rtgt.toml");
    let lun = |n: u32, size: &str, extra: &str| {
        format!(
            "[[target.lun]]\nlun = {n}\nbackend = \"s3\"\nurl = \"s3://{REMOTE_BUCKET}/lun{n}\"\nendpoint = {}\n\
             create = true\nsize = \"{size}\"\n{extra}\n",
            store.lun_endpoint()
        )
    };
    let d = dir.display();
    let text = format!(
        "[server]\ndata_dir = \"{d}/data\"\n\n[api]\nlisten = \"off\"\n\n[embedded_s3]\nlisten = \"off\"\n\n\
         [[portal_group]]\ntag = 1\nportals = [\"{addr}\"]\n\n[[target]]\nname = \"{IQN}\"\n\n{}{}{}{}",
        lun(WRITES_LUN, "2GiB", "cache_size = \"2GiB\""),
        lun(LOCAL_LUN, "2GiB", &format!("durability = \"local\"\ncache_dir = \"{d}/journal\"")),
        lun(STREAM_LUN, "512MiB", "cache_size = \"64MiB\""),
        lun(
            DISK_LUN,
            "512MiB",
            &format!("cache_size = \"64MiB\"\ncache_dir = \"{d}/disk\"\ncache_disk_size = \"1GiB\"")
        ),
    );
    std::fs::write(&config, text).map_err(|e| e.to_string())?;
    let b = Bench { serve: Serve { rtgt, dir: dir.to_path_buf(), addr, config } };
    let secs = args.seconds;
    let rtt_us = args.rtt_ms as f64 * 1000.0;
    let link_mb_s = (args.mbit > 0).then(|| args.mbit as f64 / 8.0);
    let mut rows = Vec::new();

    eprintln!("xtask: writes");
    let server = b.serve.start()?;
    let s = b.load(WRITES_LUN, "randwrite", 4096, 1, secs, true)?;
    let goal = rtt_us + 10_000.0;
    rows.push(Row {
        met: s.p50_us <= goal,
        goal: format!("p50 ≤ {:.0} ms", goal / 1000.0),
        workload: "4 KiB FUA write QD1, durability s3",
        sample: s,
    });
    let s = b.load(LOCAL_LUN, "randwrite", 4096, 1, secs, true)?;
    rows.push(Row {
        met: s.p50_us <= 1000.0,
        goal: "p50 ≤ 1 ms".into(),
        workload: "4 KiB FUA write QD1, durability local",
        sample: s,
    });
    let s = b.load(WRITES_LUN, "randwrite", 4096, 32, secs, true)?;
    rows.push(Row::at_least_iops("4 KiB FUA write QD32, durability s3", s, 0.7 * 32.0 / (rtt_us / 1e6)));
    let s = b.load(WRITES_LUN, "randwrite", 4096, 32, secs, false)?;
    rows.push(Row::at_least_iops("4 KiB random write QD32 (fits the cache)", s, 20_000.0));
    let s = b.load(STREAM_LUN, "fill", MIB, 8, 600, false)?;
    let (goal, met) = link_goal(link_mb_s, s.mb_s);
    rows.push(Row {
        met: met && s.errors == 0.0,
        goal,
        workload: "1 MiB sequential write QD8 (filling 512 MiB)",
        sample: s,
    });
    b.load(DISK_LUN, "fill", MIB, 8, 600, false)?;
    b.stop(server)?;

    eprintln!("xtask: reads, cold (after a restart)");
    // On the LUN without a disk cache (64 MiB of memory cache), first thing after a restart:
    // every read goes to the store. (The disk cache LUN may hold pieces its fill fetched.)
    let server = b.serve.start()?;
    let s = b.load(STREAM_LUN, "randread", 4096, 32, secs, false)?;
    rows.push(Row::at_least_iops("4 KiB random read QD32, cold", s, 0.7 * 32.0 / (rtt_us / 1e6)));
    b.stop(server)?;
    let server = b.serve.start()?;
    let s = b.load(STREAM_LUN, "seqread", MIB, 8, secs, false)?;
    let (goal, met) = link_goal(link_mb_s, s.mb_s);
    rows.push(Row { met, goal, workload: "1 MiB sequential read QD8, from the store", sample: s });
    // Sequential passes keep the rest of the LUN on disk (the disk cache's queue drops what
    // it has no room for).
    b.load(DISK_LUN, "seqread", MIB, 8, 2 * secs.max(5), false)?;
    b.stop(server)?;

    eprintln!("xtask: reads after a restart, from the disk cache");
    let server = b.serve.start()?;
    let s = b.load(DISK_LUN, "randread", 4096, 32, secs, false)?;
    rows.push(Row::at_least_iops("4 KiB random read QD32, warm in the disk cache", s, 20_000.0));
    b.stop(server)?;
    store.stop(Duration::from_secs(30))?;
    Ok(rows)
}

/// The goal of a row that the link bounds: 80% of it, when it is capped.
fn link_goal(link_mb_s: Option<f64>, mb_s: f64) -> (String, bool) {
    match link_mb_s {
        Some(link) => (format!("≥ {:.0} MB/s (80% of the link)", 0.8 * link), mb_s >= 0.8 * link),
        None => ("- (no cap)".to_string(), true),
    }
}

fn table(link: &str, rows: &[Row]) -> String {
    let mut out = format!(
        "| workload (through iSCSI, {link}) | IOPS | MB/s | p50 ms | max ms | errors | goal | met |\n|---|---:|---:|---:|---:|---:|---|---|\n"
    );
    for r in rows {
        let s = &r.sample;
        out.push_str(&format!(
            "| {} | {:.0} | {:.1} | {:.2} | {:.1} | {:.0} | {} | {} |\n",
            r.workload,
            s.iops,
            s.mb_s,
            s.p50_us / 1000.0,
            s.max_us / 1000.0,
            s.errors,
            r.goal,
            if r.met { "yes" } else { "NO" }
        ));
    }
    out
}

fn json_rows(link: &str, rows: &[Row]) -> String {
    let items: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let s = &r.sample;
            serde_json::json!({
                "link": link, "workload": r.workload, "iops": s.iops, "mb_per_s": s.mb_s, "p50_us": s.p50_us,
                "max_us": s.max_us, "errors": s.errors, "goal": r.goal, "met": r.met,
            })
        })
        .collect();
    serde_json::to_string(&items).expect("rows serialize") + "\n"
}
