//! `cargo xtask bench [targets]`: rtgt against tgtd (Debian's `tgt`) on this machine.
//!
//! Both targets export one 1 GiB LU with the same kind of backing (memory: rtgt's memory backend
//! against a tgtd rdwr file in /dev/shm; file: a regular file each, on one filesystem), both
//! negotiate the same limits, and both are driven by the same clients: rtgt's own load generator
//! (`rtgt-bench load`, the library's initiator), `libiscsi_load.c` (reads and writes through
//! libiscsi, QEMU's initiator library) and libiscsi's `iscsi-perf` (reads). Runs alternate
//! (rtgt, tgtd, rtgt, tgtd, ...) and the table shows medians. Results go to stdout,
//! `target/bench/targets.json` and `target/bench/targets.svg`.
//!
//! Every server runs under a watchdog shell that kills it when its stdin pipe closes, so a
//! server never outlives xtask, however xtask ends; every client runs under `timeout -s KILL`.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{USAGE, build_release, free_port, root};

mod loopback;
mod process;
mod remote_store;
mod report;
mod runner;
mod setup;
mod workloads;

use loopback::*;
use process::*;
pub(crate) use process::{Serve, Watched, wait_for_port};
pub(crate) use remote_store::{REMOTE_BUCKET, RemoteStore};
pub(crate) use report::median;
use report::*;
use runner::*;
pub(crate) use runner::{bench_load, json_number};
use setup::*;
use workloads::*;

const RTGT_IQN: &str = "iqn.2026-11.dev.rtgt:bench";
const TGTD_IQN: &str = "iqn.2026-11.dev.rtgt:bench-tgtd";
const LUN_SIZE: u64 = 1 << 30;
/// The LUs' logical block size (both targets' default); iscsi-perf counts in these.
const LBA: u32 = 512;

// ---------------------------------------------------------------- the benchmark

/// The idle measurement's name, as `--only` selects it.
const IDLE_NAME: &str = "idle 64 sessions";
const IDLE_SESSIONS: u32 = 64;

/// Both targets' CPU time while 64 sessions sit logged in without a command, as a line of the
/// report.
fn measure_idle(runner: &Runner, targets: [&Target; 2], seconds: u64, backing: Backing) -> String {
    let figures: Vec<String> = targets
        .iter()
        .map(|t| {
            let figure = match runner.idle_cpu(t, IDLE_SESSIONS, seconds) {
                Ok(ms) => format!("{ms:.2} ms CPU per s"),
                Err(e) => format!("FAILED: {e}"),
            };
            eprintln!("xtask: {IDLE_NAME} {} {}: {figure}", backing.name(), t.kind.name());
            format!("{} {figure}", t.kind.name())
        })
        .collect();
    format!(
        "{IDLE_NAME}: {IDLE_SESSIONS} libiscsi sessions logged in without a command for {seconds} s ({} LU): {}",
        backing.name(),
        figures.join(", ")
    )
}

pub fn targets(args: &[String]) -> Result<(), String> {
    let options = parse(args)?;
    let missing = |what: &str, package: &str| format!("{what} not found: apt-get install -y {package}");
    let tgt = Tgt {
        tgtd: which("tgtd").ok_or_else(|| missing("tgtd", "tgt"))?,
        tgtadm: which("tgtadm").ok_or_else(|| missing("tgtadm", "tgt"))?,
    };
    let libiscsi_load = match options.clients.contains(&Client::Libiscsi) {
        true => build_libiscsi_load()?,
        false => PathBuf::from("libiscsi-load"),
    };
    let iscsi_perf = match which("iscsi-perf") {
        Some(p) => p,
        None if !options.clients.contains(&Client::IscsiPerf) => PathBuf::from("iscsi-perf"),
        None => return Err(missing("iscsi-perf", "libiscsi-bin") + " (or --client own)"),
    };
    which("timeout").ok_or("timeout (coreutils) not found")?;
    build_release()?;

    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("rtgt-bench-targets-{pid}"));
    let shm = PathBuf::from(format!("/dev/shm/rtgt-bench-targets-{pid}"));
    for d in [&dir, &shm] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    // A watchdog with nothing to watch removes the scratch directories (2 GiB of LU files) when
    // the benchmark ends, however it ends.
    let scratch = format!("{}\n{}", dir.display(), shm.display());
    let infinity = ["infinity".to_string()];
    let _scratch = Watched::spawn(
        "cleanup",
        Path::new("sleep"),
        &infinity,
        Path::new("/dev/null"),
        &[("WATCHDOG_CLEANUP", &scratch)],
    )?;
    let out = root().join("target/bench");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    // A copy of the binary, so that a rebuild during the runs does not change what is measured.
    let binary = dir.join("rtgt");
    std::fs::copy(root().join("target/release/rtgt"), &binary).map_err(|e| format!("copying rtgt: {e}"))?;
    let runner = Runner {
        rtgt: binary,
        iscsi_perf,
        libiscsi_load,
        seconds: options.seconds,
        threads: options.threads,
        dir: dir.clone(),
    };

    let workloads: Vec<usize> = (0..WORKLOADS.len())
        .filter(|&i| {
            let name = WORKLOADS[i].name.to_lowercase();
            options.only.is_empty() || options.only.iter().any(|o| name.contains(o.as_str()))
        })
        .collect();
    // What idle sessions cost (busy polling must cost nothing once commands stop): once, on the
    // first backing, with the libiscsi client.
    let idle_selected = options.clients.contains(&Client::Libiscsi)
        && (options.only.is_empty() || options.only.iter().any(|o| IDLE_NAME.contains(o.as_str())));
    if workloads.is_empty() && !idle_selected {
        return Err("--only matches no workload".into());
    }
    let clients_of = |i: usize| -> Vec<Client> {
        let w = &WORKLOADS[i];
        options.clients.iter().copied().filter(|c| *c != Client::IscsiPerf || (w.reads() && w.sessions == 1)).collect()
    };
    let total: usize =
        options.backings.len() * workloads.iter().map(|&i| clients_of(i).len()).sum::<usize>() * options.runs * 2;
    eprintln!(
        "xtask: {total} runs of {} s ({} per workload and target), about {} min",
        options.seconds,
        options.runs,
        (total as u64 * (options.seconds + 2) + 60) / 60
    );

    let loopback = loopback(&dir);
    eprintln!(
        "xtask: loopback TCP: {} ({})",
        loopback.mb_s.map(|m| format!("{m:.0} MB/s")).unwrap_or_else(|| "-".into()),
        loopback.method
    );

    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut idle: Vec<String> = Vec::new();
    let mut done = 0;
    for &backing in &options.backings {
        eprintln!("xtask: backing {}: starting rtgt and tgtd", backing.name());
        let (rtgt_file, tgtd_file) = match backing {
            // tgtd has no memory backend equivalent to rtgt's: its LU is a file in tmpfs.
            Backing::Memory => (PathBuf::new(), shm.join("tgtd.img")),
            Backing::File => (dir.join("rtgt.img"), dir.join("tgtd.img")),
        };
        for f in [&rtgt_file, &tgtd_file] {
            if !f.as_os_str().is_empty() {
                let state = if backing == Backing::File { options.file_state } else { FileState::Target };
                create_lun_file(f, state)?;
            }
        }
        let rtgt = start_rtgt(&runner.rtgt, backing, options.rtgt_file_backend, &dir, &rtgt_file)?;
        let tgtd = start_tgtd(&tgt, backing, &dir, &tgtd_file)?;
        // Fill both LUs so that reads return data, not holes (unless the file state says
        // otherwise).
        let filled = backing == Backing::File && options.file_state != FileState::Target;
        for t in [&rtgt, &tgtd].into_iter().filter(|_| !filled) {
            let started = Instant::now();
            runner
                .own(t, &w("fill", "fill", 1 << 20, 8), 300, 0)
                .map_err(|e| format!("filling the {} LU of {}: {e}", backing.name(), t.kind.name()))?;
            eprintln!(
                "xtask: filled {}'s 1 GiB {} LU in {:.1} s",
                t.kind.name(),
                backing.name(),
                started.elapsed().as_secs_f64()
            );
        }
        for &wi in &workloads {
            let w = &WORKLOADS[wi];
            for client in clients_of(wi) {
                let mut row = Row { backing, workload: wi, client, rtgt: Vec::new(), tgtd: Vec::new() };
                for run_index in 0..options.runs {
                    for t in [&rtgt, &tgtd] {
                        if backing == Backing::File {
                            // Write back the previous run's dirty pages before this one starts.
                            let _ = run_limited(Path::new("sync"), &[], Duration::from_secs(120), &dir);
                        }
                        std::thread::sleep(Duration::from_millis(300));
                        let cpu_before = t.cpu_seconds();
                        let result = if !t.alive() {
                            Err(format!("{} is not running (log: {})", t.kind.name(), t.log.display()))
                        } else {
                            match client {
                                Client::Own => runner.own(t, w, options.seconds, run_index + 1),
                                Client::IscsiPerf => runner.perf(t, w),
                                Client::Libiscsi => runner.libiscsi(t, w, options.seconds, run_index + 1),
                            }
                        };
                        let result = result.map(|mut sample| {
                            let used = t.cpu_seconds().zip(cpu_before).map(|(after, before)| after - before);
                            let commands = sample.iops * options.seconds as f64;
                            sample.cpu_us = used.filter(|_| commands > 0.0).map(|u| u * 1e6 / commands);
                            sample
                        });
                        done += 1;
                        eprintln!(
                            "xtask: [{done}/{total}] {} {} {} {} run {}/{}: {}",
                            backing.name(),
                            w.name,
                            client.name(),
                            t.kind.name(),
                            run_index + 1,
                            options.runs,
                            match &result {
                                Ok(s) => format!(
                                    "{:.0} IOPS, {:.1} MB/s, p50 {} us, p99 {} us, CPU {} us/cmd",
                                    s.iops,
                                    s.mb_s,
                                    opt(s.p50_us, 0),
                                    opt(s.p99_us, 0),
                                    opt(s.cpu_us, 1)
                                ),
                                Err(e) => format!("FAILED: {e}"),
                            }
                        );
                        if let Err(e) = &result {
                            notes.push(format!(
                                "{} {} {} on {}, run {}: {e}",
                                t.kind.name(),
                                backing.name(),
                                w.name,
                                client.name(),
                                run_index + 1
                            ));
                        }
                        match t.kind {
                            Kind::Rtgt => row.rtgt.push(result),
                            Kind::Tgtd => row.tgtd.push(result),
                        }
                    }
                }
                rows.push(row);
            }
        }
        if idle_selected && Some(&backing) == options.backings.first() {
            idle.push(measure_idle(&runner, [&rtgt, &tgtd], options.seconds, backing));
        }
        let log = std::fs::read_to_string(&rtgt.log).unwrap_or_default();
        if log.contains("panicked") {
            notes.push(format!("rtgt panicked on the {} backing (log: {})", backing.name(), rtgt.log.display()));
        }
        if !rtgt.alive() || !tgtd.alive() {
            notes.push(format!("a target died during the {} runs", backing.name()));
        }
        // Keep the logs of a failed backing next to the results.
        if notes.iter().any(|n| n.contains(backing.name())) {
            for t in [&rtgt, &tgtd] {
                let _ = std::fs::copy(&t.log, out.join(t.log.file_name().expect("file")));
            }
        }
        drop(rtgt);
        drop(tgtd);
    }

    // The fraction of the loopback bandwidth rtgt's sequential reads reach.
    let mut fractions = Vec::new();
    if let Some(lo) = loopback.mb_s {
        for row in rows.iter().filter(|r| r.backing == Backing::Memory && WORKLOADS[r.workload].pattern == "seqread") {
            if let Some(mb) = summarize(&row.rtgt).mb_s {
                fractions.push(format!(
                    "rtgt {} (memory, {}): {mb:.0} MB/s = {:.0}% of loopback TCP ({lo:.0} MB/s)",
                    WORKLOADS[row.workload].name,
                    row.client.name(),
                    100.0 * mb / lo
                ));
            }
        }
    }

    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let commit = Command::new("git")
        .current_dir(root())
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let mut about = vec![
        format!("rtgt {commit} (release build); tgtd {}", tgtd_version(&tgt)),
        format!(
            "{} run(s) of {} s per workload and target, alternating rtgt and tgtd; medians; {cpus} CPUs shared by target and client",
            options.runs, options.seconds
        ),
        "LU: 1 GiB, 512-byte blocks, filled before the runs; MB = 10^6 bytes; latency: command submit to response (own client only)".into(),
        "memory: rtgt's memory backend vs a tgtd rdwr file in /dev/shm (tgtd has no equivalent memory backend); file: a regular file each on one filesystem (tgtd bs-type rdwr), `sync` before every run".into(),
        format!("file LUs {}", options.file_state.name()),
        "CPU µs/cmd: the target process's user and system CPU time over the run, per command".into(),
        "client CPU: libiscsi-load's CPU time over the run per second (one thread: at 100% the client, not the target, set the rate)".into(),
        format!("rtgt's file LU: backend = \"{}\"", options.rtgt_file_backend),
        format!(
            "tgtd negotiates rtgt's defaults: {}",
            TGTD_PARAMS.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
        ),
        format!(
            "own client: rtgt-bench load, one session (the \"N sessions\" workloads: N), {} thread(s); iscsi-perf (libiscsi 1.19): reads only (it has no write mode), random offsets 512-byte aligned, no latency figures",
            options.threads
        ),
        format!(
            "spread: (max - min) / median IOPS over the runs, the larger of the two targets; loopback TCP: {}",
            loopback.mb_s.map(|m| format!("{m:.0} MB/s ({})", loopback.method)).unwrap_or(loopback.method.clone())
        ),
    ];
    about.extend(fractions);
    about.extend(idle);
    let mut all_notes = about.clone();
    all_notes.extend(notes.iter().map(|n| format!("FAILED: {n}")));

    let title = format!("{} run(s) x {} s, {cpus} CPUs, 1 GiB LU", options.runs, options.seconds);
    let report = Report { options: &options, rows: &rows, loopback: &loopback, notes: &all_notes };
    let json_path = out.join("targets.json");
    let svg_path = out.join("targets.svg");
    std::fs::write(&json_path, json(&report)).map_err(|e| e.to_string())?;
    std::fs::write(&svg_path, svg(&rows, &title)).map_err(|e| e.to_string())?;

    println!("rtgt vs tgtd: cargo xtask bench {}\n", args.join(" "));
    print!("{}", table(&rows));
    println!();
    for n in &about {
        println!("* {n}");
    }
    if !notes.is_empty() {
        println!("\nFailures:");
        for n in &notes {
            println!("* {n}");
        }
    }
    println!("\nresults: {} and {}", json_path.display(), svg_path.display());
    if notes.is_empty() { Ok(()) } else { Err(format!("{} runs failed", notes.len())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(line: &str) -> Result<Options, String> {
        parse(&line.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn options_have_their_defaults_and_quick_only_shortens_what_is_not_given() {
        let o = options("").unwrap();
        assert_eq!((o.seconds, o.runs, o.threads), (10, 3, 1));
        assert_eq!((o.backings.len(), o.clients.len(), o.rtgt_file_backend), (2, 3, "file"));
        let o = options("--quick --seconds 5 --backing file --client iscsi-perf --only RandRead --only 4K").unwrap();
        assert_eq!((o.seconds, o.runs), (5, 1));
        assert_eq!((o.backings, o.clients), (vec![Backing::File], vec![Client::IscsiPerf]));
        assert_eq!(o.only, ["randread", "4k"]);
        let o = options("--rtgt-file-backend uring --file-state dd").unwrap();
        assert_eq!((o.rtgt_file_backend, o.file_state), ("uring", FileState::Dd));
        let o = options("--file-state fallocated").unwrap();
        assert_eq!(o.file_state, FileState::Fallocated);
        let o = options("--file-state sparse").unwrap();
        assert_eq!(o.file_state, FileState::Sparse);
        for refused in ["--seconds 0", "--backing tape", "--client fio", "--rtgt-file-backend aio", "--bogus"] {
            assert!(options(refused).is_err(), "{refused} was taken");
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn numbers_from_json() {
        let text = "{\n  \"iops\": 1234.5,\n  \"mb_per_s\": 5.0e1,\n  \"ios\": 7, \"end\": {\"sum\": {\"bits\": 8}}\n}";
        assert_eq!(json_number(text, &["iops"]), Some(1234.5));
        assert_eq!(json_number(text, &["mb_per_s"]), Some(50.0));
        assert_eq!(json_number(text, &["ios"]), Some(7.0));
        assert_eq!(json_number(text, &["end", "sum", "bits"]), Some(8.0));
        assert_eq!(json_number(text, &["missing"]), None);
        assert_eq!(json_number("not json", &["iops"]), None);
    }

    #[test]
    fn summary_ignores_failed_runs() {
        let s = |iops| {
            Ok(Sample { iops, mb_s: iops / 10.0, p50_us: Some(iops), p99_us: None, cpu_us: None, client_cpu: None })
        };
        let runs = vec![s(100.0), Err("boom".to_string()), s(300.0), s(200.0)];
        let m = summarize(&runs);
        assert_eq!((m.iops, m.mb_s, m.p50_us, m.p99_us), (Some(200.0), Some(20.0), Some(200.0), None));
        assert_eq!(m.failed, 1);
        assert_eq!(m.spread, Some(1.0));
    }
}
