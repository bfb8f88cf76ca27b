//! `cargo xtask bench s3 --reads`: reads through iSCSI from an S3 LUN on the embedded store
//! (the default `rtgt serve` path, in-process) beside a file LUN on the same machine, with
//! data in rtgt's cache and cold (the cache emptied by a restart). Driven by rtgt's load
//! generator (`rtgt-bench load`) for latency percentiles; one run each. Results on stdout and in
//! `target/bench/s3-reads.json`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::bench::{Serve, Watched, bench_load, json_number};
use crate::{build_release, free_port, root};

const IQN: &str = "iqn.2026-11.dev.rtgt:reads";
const S3_LUN: u32 = 1;
const FILE_LUN: u32 = 2;
const MIB: u32 = 1 << 20;

/// One run of the load generator.
struct Sample {
    mb_s: f64,
    iops: f64,
    p50_us: f64,
}

struct Bench {
    serve: Serve,
}

impl Bench {
    /// A clean stop: every LUN flushed and closed, nothing left to replay at the next start.
    fn stop(&self, server: Watched) -> Result<(), String> {
        server.terminate(Duration::from_secs(60))
    }

    /// Runs `f` on a freshly started rtgt (its cache empty), then stops it.
    fn restarted<T>(&self, f: impl FnOnce(&Bench) -> Result<T, String>) -> Result<T, String> {
        let server = self.serve.start()?;
        let result = f(self);
        self.stop(server)?;
        result
    }

    /// The same load on the S3 LUN, then on the file LUN.
    fn pair(&self, pattern: &str, block_size: u32, depth: u32, seconds: u64) -> Result<(Sample, Sample), String> {
        Ok((
            self.load(S3_LUN, pattern, block_size, depth, seconds)?,
            self.load(FILE_LUN, pattern, block_size, depth, seconds)?,
        ))
    }

    fn load(&self, lun: u32, pattern: &str, block_size: u32, depth: u32, seconds: u64) -> Result<Sample, String> {
        let options = [
            ("--lun", lun.to_string()),
            ("--pattern", pattern.to_string()),
            ("--block-size", block_size.to_string()),
            ("--queue-depth", depth.to_string()),
        ];
        let text = bench_load(&self.serve.dir, self.serve.addr, IQN, &options, seconds)
            .map_err(|e| format!("{pattern} on LUN {lun}: {e}"))?;
        let get = |k: &str| json_number(&text, &[k]).ok_or(format!("rtgt-bench load result without {k}"));
        if get("errors")? != 0.0 {
            return Err(format!("rtgt-bench load {pattern} on LUN {lun}: {} errors", get("errors")?));
        }
        Ok(Sample { mb_s: get("mb_per_s")?, iops: get("iops")?, p50_us: get("lat_p50_us")? })
    }
}

/// A row: what is compared, the S3 LUN's figure, the file LUN's, and the goal.
struct Row {
    workload: &'static str,
    unit: &'static str,
    s3: f64,
    file: f64,
    goal: String,
    met: bool,
}

pub fn run(seconds: u64) -> Result<(), String> {
    build_release()?;
    let dir = std::env::temp_dir().join(format!("rtgt-bench-reads-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let result = measure(&dir, seconds);
    let _ = std::fs::remove_dir_all(&dir);
    let rows = result?;
    print!("{}", table(&rows));
    let out = root().join("target/bench");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let json = out.join("s3-reads.json");
    std::fs::write(&json, json_rows(&rows)).map_err(|e| e.to_string())?;
    eprintln!("xtask: results in {}", json.display());
    match rows.iter().all(|r| r.met) {
        true => Ok(()),
        false => Err("some goals were not met (see the table)".into()),
    }
}

fn measure(dir: &Path, seconds: u64) -> Result<Vec<Row>, String> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse().expect("address");
    let config = dir.join("rtgt.toml");
    // The S3 LUN's cache holds the whole LUN, so that "in the cache" means all of it.
    let text = format!(
        "[server]\ndata_dir = \"{d}/data\"\n\n[api]\nlisten = \"off\"\n\n[embedded_s3]\nroot = \"{d}/data/s3\"\nlisten = \"off\"\n\n\
         [[portal_group]]\ntag = 1\nportals = [\"{addr}\"]\n\n[[target]]\nname = \"{IQN}\"\n\n\
         [[target.lun]]\nlun = {S3_LUN}\nbackend = \"s3\"\nurl = \"s3://rtgt/reads\"\nendpoint = \"embedded\"\n\
         create = true\nsize = \"1GiB\"\ncache_size = \"1536MiB\"\n\n\
         [[target.lun]]\nlun = {FILE_LUN}\nbackend = \"file\"\npath = \"{d}/file.img\"\ncreate = true\nsize = \"1GiB\"\n",
        d = dir.display()
    );
    std::fs::write(&config, text).map_err(|e| e.to_string())?;
    let b = Bench { serve: Serve { rtgt: root().join("target/release/rtgt"), dir: dir.to_path_buf(), addr, config } };

    eprintln!("xtask: filling both LUNs (1 MiB writes, QD8), then a clean restart");
    let server = b.serve.start()?;
    let written = b.load(S3_LUN, "fill", MIB, 8, 300)?;
    b.load(FILE_LUN, "fill", MIB, 8, 300)?;
    b.stop(server)?;

    // Cold as the goals mean it: rtgt's cache emptied by a restart (the kernel may still
    // cache the store's files).
    let server = b.serve.start()?;
    let cold_seq = (b.load(S3_LUN, "seqread", MIB, 8, seconds)?, b.load(FILE_LUN, "seqread", MIB, 8, seconds)?);
    // That pass left the whole LUN in the cache.
    let seq = (b.load(S3_LUN, "seqread", MIB, 1, seconds)?, b.load(FILE_LUN, "seqread", MIB, 1, seconds)?);
    let rand = (b.load(S3_LUN, "randread", 4096, 1, seconds)?, b.load(FILE_LUN, "randread", 4096, 1, seconds)?);
    b.stop(server)?;
    // One second only: each 4 KiB read fetches a 64 KiB segment that stays in the cache, so a
    // longer run would mostly measure hits.
    let cold_rand = b.restarted(|b| b.pair("randread", 4096, 1, 1))?;
    // Colder: the kernel's page cache dropped too (root only), so both LUNs read the disk.
    let disk = match drop_page_cache() {
        false => None,
        true => {
            let seq = b.restarted(|b| b.pair("seqread", MIB, 8, seconds))?;
            drop_page_cache();
            Some((seq, b.restarted(|b| b.pair("randread", 4096, 1, 1))?))
        }
    };

    let mut rows = vec![
        Row {
            workload: "4 KiB random read QD1, in the cache: p50",
            unit: "µs",
            s3: rand.0.p50_us,
            file: rand.1.p50_us,
            goal: "at most 2x the file LUN's".into(),
            met: rand.0.p50_us <= 2.0 * rand.1.p50_us,
        },
        Row {
            workload: "1 MiB sequential read QD1, in the cache",
            unit: "MB/s",
            s3: seq.0.mb_s,
            file: seq.1.mb_s,
            goal: "at least 0.5x the file LUN's".into(),
            met: seq.0.mb_s >= 0.5 * seq.1.mb_s,
        },
        Row {
            workload: "1 MiB sequential read QD8, cold (after a restart)",
            unit: "MB/s",
            s3: cold_seq.0.mb_s,
            file: cold_seq.1.mb_s,
            goal: format!("at least the S3 LUN's sequential write ({:.0} MB/s)", written.mb_s),
            met: cold_seq.0.mb_s >= written.mb_s,
        },
        Row {
            workload: "4 KiB random read QD1, cold (after a restart, 1 s): p50",
            unit: "µs",
            s3: cold_rand.0.p50_us,
            file: cold_rand.1.p50_us,
            goal: "at most 300 µs".into(),
            met: cold_rand.0.p50_us <= 300.0,
        },
        Row {
            workload: "4 KiB random read QD1, in the cache: IOPS",
            unit: "IOPS",
            s3: rand.0.iops,
            file: rand.1.iops,
            goal: "-".into(),
            met: true,
        },
    ];
    if let Some((seq, rand)) = disk {
        rows.push(Row {
            workload: "1 MiB sequential read QD8, page cache dropped too",
            unit: "MB/s",
            s3: seq.0.mb_s,
            file: seq.1.mb_s,
            goal: "- (the disk's speed)".into(),
            met: true,
        });
        rows.push(Row {
            workload: "4 KiB random read QD1, page cache dropped too (1 s): p50",
            unit: "µs",
            s3: rand.0.p50_us,
            file: rand.1.p50_us,
            goal: "- (the disk's latency)".into(),
            met: true,
        });
    }
    Ok(rows)
}

/// Drops the kernel's page cache (root only), so that the next runs read the embedded store's
/// files and the file LUN from the disk; says whether it could.
fn drop_page_cache() -> bool {
    let synced = std::process::Command::new("sync").status().is_ok_and(|s| s.success());
    let dropped = synced && std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok();
    if !dropped {
        eprintln!("xtask: could not drop the page cache (not root?): no disk-cold rows");
    }
    dropped
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| workload | S3 LUN (embedded store) | file LUN | S3/file | goal | met |\n|---|---:|---:|---:|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {:.1} {u} | {:.1} {u} | {:.2}x | {} | {} |\n",
            r.workload,
            r.s3,
            r.file,
            r.s3 / r.file,
            r.goal,
            if r.met { "yes" } else { "NO" },
            u = r.unit
        ));
    }
    out
}

fn json_rows(rows: &[Row]) -> String {
    let items: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "workload": r.workload, "unit": r.unit, "s3": r.s3, "file": r.file, "goal": r.goal, "met": r.met,
            })
        })
        .collect();
    serde_json::to_string(&items).expect("rows serialize") + "\n"
}
