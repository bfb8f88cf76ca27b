//! `cargo xtask bench s3 --snapshot [--seconds N] [--rounds N]`: a snapshot taken under a 4 KiB
//! random-write load through iSCSI (QD32, rtgt's load generator) on a 1 GiB S3 LUN of the
//! embedded store, against the same load without one, with a cache that holds the LUN and with
//! the default cache (where the load outruns the store). Rounds alternate (with, then
//! without), each on a fresh volume; the snapshot is taken through the management API
//! half-way through the run. With `--rtt 20ms` the store is not the embedded one in-process
//! but the local store behind the network emulator (`rtgt-bench s3-remote`), a fresh one per
//! run: the snapshot's copies and the merges then wait out the link. The goal (issue 16): no
//! command of a run with a snapshot slower than twice the p99 of the runs without. Results on
//! stdout and in `target/bench/s3-snapshot.json`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::bench::{REMOTE_BUCKET, RemoteStore, Serve, bench_load, json_number, median};
use crate::{build_release, free_port, root};

const IQN: &str = "iqn.2026-12.dev.rtgt:snapshot";
const TOKEN: &str = "bench-snapshot";

/// One run of the load: latency in µs.
#[derive(Debug, Clone, Copy)]
struct Run {
    iops: f64,
    p99_us: f64,
    max_us: f64,
    /// How long the snapshot's request took (None: no snapshot in this run).
    snapshot_s: Option<f64>,
    /// From the snapshot asking for its gate until it let go, as rtgt logged it: how long
    /// writes waited for the capture (plain writes on the cache lock, the others on the gate).
    gate_us: Option<f64>,
}

/// The two states the load meets the volume in.
const CASES: &[Case] = &[
    Case { name: "the LUN fits the cache", cache: "1536MiB", why: "the store keeps up: writes wait for no merge" },
    Case {
        name: "default cache (256 MiB)",
        cache: "256MiB",
        why: "the load outruns the store: writes wait for room as merges land",
    },
];

struct Case {
    name: &'static str,
    cache: &'static str,
    why: &'static str,
}

/// A case's runs, judged.
struct Judged {
    case: &'static Case,
    runs: Vec<Run>,
    p99_without_us: f64,
    max_with_us: f64,
    /// The longest command of the runs without a snapshot: the noise the goal's ratio meets.
    max_without_us: f64,
    met: bool,
}

impl Judged {
    fn of(case: &'static Case, runs: Vec<Run>) -> Judged {
        let (with, without): (Vec<Run>, Vec<Run>) = runs.iter().partition(|r| r.snapshot_s.is_some());
        let p99_without_us = median(without.iter().map(|r| r.p99_us).collect()).unwrap_or(0.0);
        let max_with_us = with.iter().map(|r| r.max_us).fold(0.0, f64::max);
        let max_without_us = without.iter().map(|r| r.max_us).fold(0.0, f64::max);
        let met = max_with_us <= 2.0 * p99_without_us;
        Judged { case, runs, p99_without_us, max_with_us, max_without_us, met }
    }

    fn print(&self) {
        println!("{} ({}, cache_size = \"{}\")", self.case.name, self.case.why, self.case.cache);
        println!(
            "  {:<18} {:>8} {:>8} {:>8} {:>11} {:>15}",
            "run", "IOPS", "p99 ms", "max ms", "snapshot s", "writes wait ms"
        );
        for r in &self.runs {
            let name = if r.snapshot_s.is_some() { "with a snapshot" } else { "without" };
            let took = r.snapshot_s.map_or("-".to_string(), |s| format!("{s:.2}"));
            let gate = r.gate_us.map_or("-".to_string(), |us| format!("{:.2}", us / 1e3));
            println!(
                "  {name:<18} {:>8.0} {:>8.2} {:>8.2} {took:>11} {gate:>15}",
                r.iops,
                r.p99_us / 1e3,
                r.max_us / 1e3
            );
        }
        println!(
            "  longest command with a snapshot {:.2} ms; median p99 without {:.2} ms; ratio {:.2} (goal at most 2): {}",
            self.max_with_us / 1e3,
            self.p99_without_us / 1e3,
            self.max_with_us / self.p99_without_us,
            if self.met { "met" } else { "NOT met" }
        );
        println!(
            "  (without a snapshot the longest command was {:.2} ms, {:.1} times that p99)\n",
            self.max_without_us / 1e3,
            self.max_without_us / self.p99_without_us
        );
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "case": self.case.name, "cache_size": self.case.cache,
            "runs": self.runs.iter().map(|r| serde_json::json!({
                "snapshot": r.snapshot_s.is_some(), "iops": r.iops, "p99_us": r.p99_us, "max_us": r.max_us,
                "snapshot_s": r.snapshot_s, "writes_waited_us": r.gate_us,
            })).collect::<Vec<_>>(),
            "max_with_us": self.max_with_us, "p99_without_us": self.p99_without_us,
            "max_without_us": self.max_without_us, "met": self.met,
        })
    }
}

/// `rtt_ms`: the store behind the emulated link (None: the embedded store, in-process).
pub fn run(seconds: u64, rounds: usize, rtt_ms: Option<u64>) -> Result<(), String> {
    build_release()?;
    let dir = std::env::temp_dir().join(format!("rtgt-bench-snapshot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut judged = Vec::new();
    for case in CASES {
        match measure(&dir, case, seconds, rounds, rtt_ms) {
            Ok(runs) => judged.push(Judged::of(case, runs)),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!("{}: {e}", case.name));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(ms) = rtt_ms {
        println!("The store {ms} ms away (rtgt-bench s3-remote).");
    }
    for j in &judged {
        j.print();
    }
    let out = root().join("target/bench");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let json = out.join("s3-snapshot.json");
    let doc = serde_json::Value::Array(judged.iter().map(Judged::json).collect());
    std::fs::write(&json, serde_json::to_string_pretty(&doc).expect("json")).map_err(|e| e.to_string())?;
    eprintln!("xtask: results in {}", json.display());
    match judged.iter().all(|j| j.met) {
        true => Ok(()),
        false => Err("a goal was not met (see the table)".into()),
    }
}

fn measure(dir: &Path, case: &Case, seconds: u64, rounds: usize, rtt_ms: Option<u64>) -> Result<Vec<Run>, String> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse().expect("address");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse().expect("address");
    let mut runs = Vec::new();
    for round in 0..rounds * 2 {
        // A fresh volume each run: every run starts from an empty cache and an empty volume.
        let run_dir = dir.join(format!("run{round}"));
        std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
        let config = run_dir.join("rtgt.toml");
        let store = rtt_ms.map(|ms| RemoteStore::start(&run_dir, ms, 0)).transpose()?;
        let (bucket, endpoint) = match &store {
            Some(s) => (REMOTE_BUCKET, s.lun_endpoint()),
            None => ("rtgt", "\"embedded\"".to_string()),
        };
        let text = format!(
            "[server]\ndata_dir = \"{d}/data\"\n\n[api]\nlisten = \"{api}\"\ntoken = \"{TOKEN}\"\n\n\
             [embedded_s3]\nroot = \"{d}/data/s3\"\nlisten = \"off\"\n\n\
             [[portal_group]]\ntag = 1\nportals = [\"{addr}\"]\n\n[[target]]\nname = \"{IQN}\"\n\n\
             [[target.lun]]\nlun = 1\nbackend = \"s3\"\nurl = \"s3://{bucket}/snapshot\"\nendpoint = {endpoint}\n\
             create = true\nsize = \"1GiB\"\ncache_size = \"{cache}\"\n",
            d = run_dir.display(),
            cache = case.cache
        );
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        let serve = Serve { rtgt: root().join("target/release/rtgt"), dir: run_dir.clone(), addr, config };
        // The snapshot's log line says how long writes waited for its gate.
        let server = serve.start_logging("warn,rtgt::s3::volume::snapshot=info")?;
        let snapshot = round % 2 == 0;
        eprintln!(
            "xtask: {}, run {} of {}: {seconds} s of 4 KiB random writes, QD32{}",
            case.name,
            round + 1,
            rounds * 2,
            match snapshot {
                true => ", a snapshot half-way",
                false => "",
            }
        );
        let result = std::thread::scope(|s| {
            let taker = snapshot.then(|| {
                s.spawn(move || {
                    // Half-way through the load: the cache is as full as it gets.
                    std::thread::sleep(Duration::from_secs(seconds) / 2 + Duration::from_millis(500));
                    let started = Instant::now();
                    take_snapshot(api).map(|()| started.elapsed().as_secs_f64())
                })
            });
            let options = [
                ("--lun", "1".to_string()),
                ("--pattern", "randwrite".to_string()),
                ("--block-size", "4096".to_string()),
                ("--queue-depth", "32".to_string()),
            ];
            let text = bench_load(&serve.dir, addr, IQN, &options, seconds)?;
            let snapshot_s = match taker {
                Some(t) => Some(t.join().map_err(|_| "the snapshot thread panicked".to_string())??),
                None => None,
            };
            let get = |k: &str| json_number(&text, &[k]).ok_or(format!("rtgt-bench load result without {k}"));
            if get("errors")? != 0.0 {
                return Err(format!("rtgt-bench load: {} errors", get("errors")?));
            }
            Ok(Run {
                iops: get("iops")?,
                p99_us: get("lat_p99_us")?,
                max_us: get("lat_max_us")?,
                snapshot_s,
                gate_us: None,
            })
        });
        server.terminate(Duration::from_secs(120))?;
        if let Some(store) = store {
            store.stop(Duration::from_secs(30))?;
        }
        let log = std::fs::read_to_string(run_dir.join("rtgt.log")).unwrap_or_default();
        let gate_us = log.lines().find_map(logged_gate_us);
        let _ = std::fs::remove_dir_all(&run_dir);
        let mut run = result?;
        if snapshot {
            run.gate_us = Some(gate_us.ok_or("rtgt logged no snapshot taken")?);
        }
        runs.push(run);
    }
    Ok(runs)
}

/// `POST /v1/targets/{IQN}/luns/1/snapshots`; Ok once the snapshot is taken.
fn take_snapshot(api: SocketAddr) -> Result<(), String> {
    let body = r#"{"name": "under-load"}"#;
    let request = format!(
        "POST /v1/targets/{IQN}/luns/1/snapshots HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(api).map_err(|e| format!("the API at {api}: {e}"))?;
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let status = response.lines().next().unwrap_or("");
    match status.split_whitespace().nth(1) {
        Some(code) if code.starts_with('2') => Ok(()),
        _ => Err(format!("the snapshot was refused: {status} {}", response.split("\r\n\r\n").nth(1).unwrap_or(""))),
    }
}

/// The `writes_waited_us` of a "snapshot taken" log line (its colours stripped).
fn logged_gate_us(line: &str) -> Option<f64> {
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => _ = chars.by_ref().find(|&c| c == 'm'),
            c => plain.push(c),
        }
    }
    let at = plain.find("writes_waited_us=")? + "writes_waited_us=".len();
    plain[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}
