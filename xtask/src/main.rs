//! Project tasks: `cargo xtask test | sim | conformance | fuzz | bench`.
// The simulation never runs this crate: wall clocks and processes are its business.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

mod bench;
mod bench_reads;
mod bench_rtt;
mod bench_snapshot;
mod package;

const USAGE: &str = "commands and their options:
  test                          unit and integration tests, fuzz corpus replay, clippy
  sim [--seed N | --seeds A..B] the deterministic simulation (turmoil): initiators, faults and S3
      [--duration 60s]          against the real engine, checked against a model; one line per seed
      [--profile smoke|long]    smoke: seeds 0..50 of 30 s; long: seeds 0..1000 of 120 s
      [--scenario S]            world (default): one target, every fault; takeover: two targets
                                on one S3 volume and a failover between them; failover: an
                                active/standby pair under a multipath initiator
      [--check-determinism]     run every seed twice and compare the trace hashes
      [--trace]                 print every event
      [--no-zombie-requests]    S3 PUTs and DELETEs never land after their sender gave up
      [--mutants | --mutant M]  plant each known bug in turn; report the seed that catches it
      [--release]               build the simulator optimised (faster for long runs)
  conformance [--backend B]     libiscsi's conformance suite against rtgt (B: memory, file, uring, s3)
              [--only SUITE..]  run only these suites or tests (ALL.Read10, ALL.Read10.Simple)
              [--update]        rewrite the ratchet with the tests that pass now
              [--chap]          the target requires CHAP; the suite logs in with it
  fuzz [--time SECONDS]         run every cargo-fuzz target for SECONDS each (default 60)
  package [--release]           the Debian package (dpkg-deb): binary, systemd unit, default
                                configuration, man pages, completions; target/debian/*.deb
  bench [targets] [--quick]     rtgt against tgtd (Debian's tgt) on memory and file LUs, with the
        [--seconds N]           own load generator, libiscsi-load and iscsi-perf; medians of
        [--runs N]              alternating runs (default 3 of 10 s; --quick: 1 of 3 s); table on
        [--backing B]           stdout, JSON and SVG in target/bench/targets.*; B: memory or file
        [--client C]            C: own, libiscsi (reads and writes through libiscsi; gcc and
                                libiscsi-dev) or iscsi-perf (reads)
        [--rtgt-file-backend F] rtgt's backend for the file LU: file (default) or uring
        [--only WORKLOAD]       workloads whose name contains it (randread, 4K, QD32...)
        [--threads N]           threads of the own load generator (default 1)
        [--file-state S]        the file LUs before the runs: target (written through each
                                target, default), dd (random data written in 1 MiB pieces
                                by another program, as dd does, before the targets start),
                                sparse or fallocated (never filled)
  bench s3 [--scale N]          S3 requests and bytes per MiB written against an embedded S3
                                server, compared with the naive design (release build)
  bench s3 --rtt 20ms [--bandwidth 100Mbit] [--outage 30s] [--seconds 5] [--only W]
                                the S3 volume at a distance: latency and throughput on
                                loopback and through a delay/throttle proxy, side by side
  bench s3 --rtt 20ms --iscsi [--bandwidth 100Mbit] [--seconds 5]
                                the S3 goal table through iSCSI: rtgt serve, its store behind
                                the delay/throttle proxy, rtgt's load generator
  bench s3 --reads [--seconds N]
                                reads through iSCSI from an S3 LUN on the embedded store and
                                a file LUN, in rtgt's cache and cold (after a restart)
  bench s3 --snapshot [--rtt 20ms] [--seconds N] [--rounds N]
                                a snapshot under a 4 KiB random-write load (QD32, iSCSI, the
                                embedded store or, with --rtt, the store behind the delay
                                proxy) against the same load without one: longest command
                                against the p99 without
";

/// Project tasks.
#[derive(clap::Parser)]
#[command(name = "xtask", bin_name = "cargo xtask", after_help = USAGE)]
enum Task {
    /// Unit and integration tests, fuzz corpus replay, clippy.
    Test,
    /// The deterministic simulation (its own options: `cargo xtask sim --help`).
    #[command(disable_help_flag = true)]
    Sim {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// libiscsi's conformance suite against rtgt.
    Conformance(ConformanceArgs),
    /// Runs every cargo-fuzz target for a while.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        time: u64,
    },
    /// The Debian package (target/debian/*.deb).
    Package {
        #[arg(long)]
        release: bool,
    },
    /// Benchmarks (see below).
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(clap::Args)]
struct ConformanceArgs {
    /// The LUN's backend.
    #[arg(long, value_parser = ["memory", "file", "uring", "s3"], default_value = "memory")]
    backend: String,
    /// Only these suites or tests (ALL.Read10, ALL.Read10.Simple).
    #[arg(long, num_args = 1..)]
    only: Vec<String>,
    /// Rewrites the ratchet with the tests that pass now.
    #[arg(long)]
    update: bool,
    /// The target requires CHAP; the suite logs in with it.
    #[arg(long)]
    chap: bool,
}

fn main() -> ExitCode {
    let result = match <Task as clap::Parser>::parse() {
        Task::Test => test(),
        Task::Sim { args } => sim(&args),
        Task::Conformance(args) => conformance(args),
        Task::Fuzz { time } => fuzz(time),
        Task::Bench { args } => bench(&args),
        Task::Package { release } => package::package(release).map(|deb| eprintln!("xtask: {}", deb.display())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Cargo, in the environment of a plain `cargo` command: without the variables cargo set for
/// xtask itself (CARGO_PKG_NAME, CARGO_MANIFEST_DIR...). Some build scripts (ring's) track them,
/// and values other than a plain command's would rebuild ring and everything above it — the AWS
/// SDK — on every switch between `cargo test` and `cargo xtask`.
fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || ["CARGO_CRATE_NAME", "CARGO_BIN_NAME", "CARGO_PRIMARY_PACKAGE"].contains(&key.as_ref())
        {
            c.env_remove(key.as_ref());
        }
    }
    c
}

/// Cargo arguments selecting what `cargo xtask test` builds: the whole workspace, the simulator
/// included, in one resolution of features, so that tests, simulation, conformance and the
/// package share one build of every crate (and it is the build users get: the simulator's
/// planted bugs are a feature of their own, built apart by `cargo xtask sim --mutants`).
pub(crate) const TARGET_BUILD: [&str; 2] = ["--workspace", "--all-targets"];

/// The simulator with its planted bugs: a target directory of its own, so that neither build
/// overwrites the other's `rtgt-sim`.
const MUTANTS_BUILD: [&str; 6] =
    ["--package", "rtgt-sim", "--features", "rtgt-sim/mutants", "--target-dir", "target/mutants"];

/// The debug build of rtgt: the same command line as `cargo xtask test`, so that conformance
/// runs and the package reuse its artifacts. (A narrower `cargo build --bin rtgt` resolves
/// other features — no dev-dependencies, so tokio without `test-util` — and rebuilds tokio and
/// all that depends on it, the AWS SDK included.)
pub(crate) fn build_debug() -> Result<(), String> {
    run(cargo().args(["build", "--quiet"]).args(TARGET_BUILD))
}

/// The release builds of the `rtgt` binary and of `rtgt-bench` (the load generator and the S3
/// benchmarks), for the benchmarks.
fn build_release() -> Result<(), String> {
    run(cargo().args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "rtgt",
        "-p",
        "rtgt-testkit",
        "--bin",
        "rtgt",
        "--bin",
        "rtgt-bench",
    ]))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let status = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("{cmd:?} failed: {status}")) }
}

fn test() -> Result<(), String> {
    ensure_moto()?;
    run_tests()?;
    // The core alone, with its own dependency features (tokio's sync primitives only): in the
    // workspace build tokio carries every feature rtgt asks for, so only this build refuses a
    // socket, file, clock or spawn in the core.
    run(cargo().args(["check", "--quiet", "--package", "rtgt-core", "--lib"]))?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))
}

/// Every test of the workspace, through cargo-nextest where it is installed (as on this
/// project's machines): it runs tests of different binaries side by side, and four at a time,
/// because the longest (crash, failover, S3 at a distance) mostly wait on leases, deadlines and
/// emulated links: 108 s instead of cargo test's 250 s one binary after another on two cores.
/// The same build either way (`cargo test --all-targets`'s units), so nothing is built twice.
fn run_tests() -> Result<(), String> {
    let nextest = cargo().args(["nextest", "--version"]).output().is_ok_and(|o| o.status.success());
    if !nextest {
        eprintln!("xtask: cargo-nextest not found, running cargo test (one test binary at a time)");
        return run(cargo().args(["test"]).args(TARGET_BUILD));
    }
    run(cargo().args(["nextest", "run", "--no-fail-fast", "--test-threads", "4"]).args(TARGET_BUILD))
}

/// moto, the second S3 server the S3 tests run against: installed with pip when missing.
fn ensure_moto() -> Result<(), String> {
    let runs = |cmd: &mut Command| cmd.output().is_ok_and(|o| o.status.success());
    if runs(Command::new("moto_server").arg("--help")) {
        return Ok(());
    }
    eprintln!("xtask: moto_server not found: pip install 'moto[server]'");
    run(Command::new("python3").args(["-m", "pip", "install", "-q", "moto[server]"]))
        .map_err(|e| format!("{e}: the S3 tests need moto (pip install 'moto[server]')"))?;
    // pyenv's shims appear after a rehash.
    let _ = Command::new("pyenv").arg("rehash").status();
    Ok(())
}

// ---------------------------------------------------------------- conformance

const TARGET: &str = "iqn.2026-11.dev.rtgt:conformance";

/// The scorer lives beside the repository in the shared checkout.
fn scorer() -> Result<PathBuf, String> {
    let path = std::env::var_os("RTGT_LIBISCSI_SCORE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/conformance/libiscsi-score"));
    if !path.exists() {
        return Err(format!("{} not found (set RTGT_LIBISCSI_SCORE)", path.display()));
    }
    if Command::new("iscsi-test-cu").arg("--list").output().is_err() {
        return Err("iscsi-test-cu not found: apt-get install -y libiscsi-bin".into());
    }
    Ok(path)
}

/// The suites of the ALL family, as iscsi-test-cu lists them.
fn suites() -> Result<Vec<String>, String> {
    let out = Command::new("iscsi-test-cu").arg("--list").output().map_err(|e| e.to_string())?;
    let mut suites: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|t| {
            let parts: Vec<&str> = t.split('.').collect();
            (parts.len() == 3 && parts[0] == "ALL").then(|| format!("ALL.{}", parts[1]))
        })
        .collect();
    suites.dedup();
    Ok(suites)
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// The LUN configuration of a backend for the suite: 512-byte blocks, 256 MiB (and an S3
/// volume's key, written in `dir`).
fn lun_config(backend: &str, dir: &Path) -> Result<String, String> {
    Ok(match backend {
        "memory" => "backend = \"memory\"\nsize = \"256MiB\"".to_string(),
        "file" => format!(
            "backend = \"file\"\npath = \"{}\"\nsize = \"256MiB\"\ncreate = true",
            dir.join("lun1.img").display()
        ),
        "uring" => format!(
            "backend = \"uring\"\npath = \"{}\"\nsize = \"256MiB\"\ncreate = true",
            dir.join("lun1.img").display()
        ),
        // Encrypted, so the suite runs SANITIZE CRYPTO ERASE too.
        "s3" => {
            let key = dir.join("lun1.key");
            std::fs::write(&key, [0x5au8; 32]).map_err(|e| format!("{}: {e}", key.display()))?;
            format!(
                "backend = \"s3\"\nurl = \"s3://conformance/lun1\"\nendpoint = \"embedded\"\nsize = \"256MiB\"\ncreate = true\nencryption_key_file = \"{}\"",
                key.display()
            )
        }
        other => return Err(format!("unknown backend {other} (memory, file, uring, s3)")),
    })
}

struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(config: &Path, log: &Path) -> Result<Server, String> {
    let binary = root().join("target/debug/rtgt");
    let log_file = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let child = Command::new(binary)
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("cannot start rtgt: {e}"))?;
    Ok(Server { child })
}

fn wait_for_port(addr: SocketAddr, server: &mut Server) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(format!("rtgt exited before listening: {status}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("rtgt did not listen on {addr}"))
}

/// The initiator names iscsi-test-cu logs in with (the second for multipath tests).
const SUITE_INITIATOR: &str = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test";

/// CHAP credentials of `conformance --chap`.
const CHAP_USER: &str = "conformance";
const CHAP_SECRET: &str = "conformance-secret-1";

fn conformance(args: ConformanceArgs) -> Result<(), String> {
    let ConformanceArgs { backend, only, update, chap } = args;
    let scorer = scorer()?;
    build_debug()?;

    let dir = std::env::temp_dir().join(format!("rtgt-conformance-{}-{}", backend, std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let embedded = if backend == "s3" {
        format!("[embedded_s3]\nlisten = \"127.0.0.1:{}\"\n\n", free_port()?)
    } else {
        String::new()
    };
    let config = format!(
        "{embedded}[api]\nlisten = \"off\"\n\n[server]\ndata_dir = \"{}\"\n\n[[portal_group]]\ntag = 1\nportals = [\"{addr}\"]\n\n[[target]]\nname = \"{TARGET}\"\n{}\n[[target.lun]]\nlun = 1\n{}\n",
        dir.display(),
        if chap {
            // A guarded target: resetting it is a right of its own, granted to the suite's
            // initiators (the Reserve6 and PreventAllow reset tests need it).
            format!(
                "chap = {{ user = \"{CHAP_USER}\", secret = \"{CHAP_SECRET}\" }}\nreset_initiators = [\"{SUITE_INITIATOR}\", \"{SUITE_INITIATOR}-2\"]\n"
            )
        } else {
            String::new()
        },
        lun_config(&backend, &dir)?
    );
    let config_path = dir.join("rtgt.toml");
    std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
    let log = dir.join("rtgt.log");
    let mut server = start_server(&config_path, &log)?;
    wait_for_port(addr, &mut server)?;

    let credentials = if chap { format!("{CHAP_USER}%{CHAP_SECRET}@") } else { String::new() };
    let url = format!("iscsi://{credentials}{addr}/{TARGET}/1");
    let ratchet = root().join("tests/conformance/passing.txt");
    let expected = expected_of(&backend, &ratchet, &dir)?;
    eprintln!("xtask: conformance of backend {backend} at {url}");
    // MultipathIO first, on the fresh LU: its CompareAndWrite test assumes block 256 holds
    // zeros, which is only true before other suites have written there. It needs a second
    // session to the same LU, hence the second URL; the main pass runs without it.
    let multipath = only.is_empty() || only.iter().any(|o| o.starts_with("ALL.MultipathIO"));
    let mut ok = true;
    let mut results = Vec::new();
    if multipath {
        let json = dir.join("multipath.json");
        let (status, last) =
            score(&scorer, &url, &["--multipath", &url, "--only", "ALL.MultipathIO"], &json, update, &expected)?;
        println!("multipath pass: {}", last.trim_start_matches("conformance: "));
        ok &= status;
        results.push(json);
    }
    let main_only: Vec<String> = if only.is_empty() {
        suites()?.into_iter().filter(|s| s != "ALL.MultipathIO").collect()
    } else {
        only.iter().filter(|o| !o.starts_with("ALL.MultipathIO")).cloned().collect()
    };
    let mut last = String::new();
    if !main_only.is_empty() {
        let json = dir.join("results.json");
        // SANITIZE erases the LU: this one is ours, made for the run.
        let mut extra: Vec<&str> = vec!["--allow-sanitize"];
        if !main_only.is_empty() {
            extra.push("--only");
            extra.extend(main_only.iter().map(String::as_str));
        }
        let (status, closing) = score(&scorer, &url, &extra, &json, update, &expected)?;
        ok &= status;
        last = closing;
        results.push(json);
    }
    drop(server);

    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let panicked = log_text.contains("panicked");
    if panicked {
        println!("rtgt panicked during the suite; its log is {}", log.display());
    }
    if update {
        update_ratchet(&results, &ratchet)?;
    }
    // The scorer's closing line comes last.
    println!("{last}");
    if panicked {
        return Err("rtgt panicked".into());
    }
    if !ok {
        return Err(format!(
            "a test of the ratchet ({}) no longer passes; rtgt's log and the results are in {}",
            ratchet.display(),
            dir.display()
        ));
    }
    // A passing run leaves nothing behind (the LU file is 256 MiB); a failing one keeps its log.
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Tests that only some backends can pass (what they test needs the store: CRYPTO ERASE an
/// encrypted volume): expected of those backends, never written to the common ratchet.
const BACKEND_ONLY: &[(&str, &str)] = &[("s3", "ALL.Sanitize.CryptoErase")];

/// The tests `backend` must pass: the ratchet and its own, in a file in `dir`.
fn expected_of(backend: &str, ratchet: &Path, dir: &Path) -> Result<PathBuf, String> {
    let mut text = std::fs::read_to_string(ratchet).map_err(|e| format!("{}: {e}", ratchet.display()))?;
    for (_, test) in BACKEND_ONLY.iter().filter(|(b, _)| *b == backend) {
        text.push_str(&format!("{test}\n"));
    }
    let path = dir.join("expected.txt");
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    Ok(path)
}

/// Runs the scorer, echoing its output but its closing line, which is returned.
fn score(
    scorer: &Path,
    url: &str,
    extra: &[&str],
    json: &Path,
    update: bool,
    ratchet: &Path,
) -> Result<(bool, String), String> {
    let mut cmd = Command::new("python3");
    cmd.arg(scorer).arg(url).args(extra).arg("--json").arg(json);
    if !update {
        cmd.arg("--expect").arg(ratchet);
    }
    let mut child = cmd.stdout(Stdio::piped()).spawn().map_err(|e| format!("cannot run the scorer: {e}"))?;
    let mut last = String::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if !last.is_empty() {
            println!("{last}");
        }
        last = line;
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    Ok((status.success(), last))
}

/// Writes every passing test into the ratchet (keeping those already there).
fn update_ratchet(jsons: &[PathBuf], ratchet: &Path) -> Result<(), String> {
    let mut text = String::new();
    for json in jsons {
        text.push_str(&std::fs::read_to_string(json).map_err(|e| e.to_string())?);
    }
    let mut passing: std::collections::BTreeSet<String> = std::fs::read_to_string(ratchet)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    // The scorer's JSON is a flat object, one `"ALL.X.Y": "STATUS"` per line.
    for line in text.lines() {
        let line = line.trim().trim_end_matches(',');
        if let Some((name, status)) = line.split_once(": ")
            && status.trim_matches('"') == "PASS"
            && !BACKEND_ONLY.iter().any(|(_, test)| *test == name.trim_matches('"'))
        {
            passing.insert(name.trim_matches('"').to_string());
        }
    }
    let mut out =
        String::from("# Tests of libiscsi's suite that pass; `cargo xtask conformance` fails if one stops passing.\n");
    out.extend(passing.iter().map(|t| format!("{t}\n")));
    std::fs::write(ratchet, out).map_err(|e| e.to_string())?;
    eprintln!("xtask: {} tests in {}", passing.len(), ratchet.display());
    Ok(())
}

// ---------------------------------------------------------------- fuzz

fn fuzz(seconds: u64) -> Result<(), String> {
    if Command::new("cargo").args(["fuzz", "--version"]).output().map(|o| !o.status.success()).unwrap_or(true) {
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let fuzz_dir = root().join("fuzz");
    for target in ["pdu_decode", "text_parse", "login", "volume_format", "access"] {
        eprintln!("xtask: fuzzing {target} for {seconds}s");
        let corpus = fuzz_dir.join("corpus").join(target);
        // New inputs go to a scratch corpus; the checked-in corpus is the seed.
        let scratch = root().join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
        run(Command::new("cargo")
            .current_dir(&fuzz_dir)
            .args(["fuzz", "run", "-s", "none", target])
            .arg(&scratch)
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}")))?;
    }
    Ok(())
}

// ---------------------------------------------------------------- bench

/// Runs the simulator with the given arguments: the debug build shared with `cargo xtask test`
/// (the dependencies are optimised in it anyway), or a release build with `--release`; with
/// `--mutants` or `--mutant`, a build of its own that carries the planted bugs.
fn sim(args: &[String]) -> Result<(), String> {
    let release = args.iter().any(|a| a == "--release");
    let mutants = args.iter().any(|a| a == "--mutants" || a == "--mutant" || a.starts_with("--mutant="));
    let profile = if release { "release" } else { "debug" };
    let binary = if mutants {
        let mut build = cargo();
        build.args(["build", "--quiet"]).args(MUTANTS_BUILD);
        if release {
            build.arg("--release");
        }
        run(&mut build)?;
        root().join("target/mutants").join(profile).join("rtgt-sim")
    } else if release {
        run(cargo().args(["build", "--quiet", "--release", "--package", "rtgt-sim"]))?;
        root().join("target/release/rtgt-sim")
    } else {
        build_debug()?;
        root().join("target/debug/rtgt-sim")
    };
    run(Command::new(binary).current_dir(root()).args(args.iter().filter(|a| *a != "--release")))
}

/// A number with an optional unit suffix (case-insensitive, longest suffix first), scaled by the
/// unit's factor; a bare number is in `bare` units.
fn quantity(text: &str, units: &[(&str, f64)], bare: f64) -> Option<f64> {
    let lower = text.to_ascii_lowercase();
    let (number, scale) =
        units.iter().find_map(|(suffix, scale)| Some((lower.strip_suffix(suffix)?, *scale))).unwrap_or((&lower, bare));
    number.parse::<f64>().ok().filter(|n| *n >= 0.0).map(|n| n * scale)
}

/// Time units in milliseconds.
const TIME_UNITS: [(&str, f64); 3] = [("ms", 1.0), ("s", 1000.0), ("m", 60_000.0)];

/// "20ms", "0.5s" or "20" (milliseconds) as whole milliseconds.
fn millis(text: &str) -> Result<String, String> {
    let ms = quantity(text, &TIME_UNITS, 1.0).ok_or(format!("cannot read {text:?} as a time (20ms, 1s)"))?;
    Ok((ms.round() as u64).to_string())
}

/// "30s", "1m" or "30" (seconds) as whole seconds.
fn seconds(text: &str) -> Result<String, String> {
    let ms = quantity(text, &TIME_UNITS, 1000.0).ok_or(format!("cannot read {text:?} as a time (30s, 1m)"))?;
    Ok(((ms / 1000.0).round() as u64).to_string())
}

/// "100Mbit", "1Gbit" or "100" (Mbit/s) as whole Mbit/s.
fn mbit(text: &str) -> Result<String, String> {
    let units = [("gbit", 1000.0), ("mbit", 1.0)];
    let rate = quantity(text, &units, 1.0).ok_or(format!("cannot read {text:?} as a rate (100Mbit, 1Gbit)"))?;
    Ok((rate.round() as u64).to_string())
}

fn bench(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("s3") => bench_s3(&args[1..]),
        Some("targets") => bench::targets(&args[1..]),
        None => bench::targets(&[]),
        Some(a) if a.starts_with("--") => bench::targets(args),
        _ => Err(format!("which benchmark?\n{USAGE}")),
    }
}

/// `cargo xtask bench s3`: which S3 benchmark, and its options.
#[derive(clap::Parser, Debug)]
#[command(name = "s3", bin_name = "cargo xtask bench s3", disable_version_flag = true)]
struct BenchS3 {
    /// Reads through iSCSI from an S3 LUN and a file LUN, in rtgt's cache and cold.
    #[arg(long, conflicts_with_all = ["snapshot", "iscsi", "scale", "rtt", "bandwidth", "outage", "only"])]
    reads: bool,
    /// A snapshot under a 4 KiB random-write load, against the same load without one.
    #[arg(long, conflicts_with_all = ["iscsi", "scale", "bandwidth", "outage", "only"])]
    snapshot: bool,
    /// Runs of each kind (--snapshot; default 3).
    #[arg(long, requires = "snapshot")]
    rounds: Option<usize>,
    /// The S3 goal table through iSCSI, the store behind the emulated link.
    #[arg(long, conflicts_with_all = ["scale", "outage", "only"])]
    iscsi: bool,
    /// Requests and bytes per MiB written: how much to write (default 1).
    #[arg(long, conflicts_with_all = ["rtt", "bandwidth", "outage", "only", "seconds"])]
    scale: Option<String>,
    /// Round-trip time of the emulated link, such as 20ms.
    #[arg(long, value_parser = millis)]
    rtt: Option<String>,
    /// Bandwidth of the emulated link, such as 100Mbit.
    #[arg(long, value_parser = mbit)]
    bandwidth: Option<String>,
    /// A store outage of this long, such as 30s.
    #[arg(long, value_parser = seconds)]
    outage: Option<String>,
    /// Seconds per workload.
    #[arg(long)]
    seconds: Option<u64>,
    /// Only the workloads whose name contains this.
    #[arg(long)]
    only: Option<String>,
}

impl BenchS3 {
    /// The options of `rtgt-bench s3-network`; none: the request-count benchmark runs instead.
    fn network(&self) -> Vec<String> {
        let flags = [
            ("--rtt-ms", &self.rtt),
            ("--mbit", &self.bandwidth),
            ("--outage", &self.outage),
            ("--seconds", &self.seconds.map(|s| s.to_string())),
            ("--only", &self.only),
        ];
        flags.into_iter().filter_map(|(flag, v)| Some([flag.to_string(), v.clone()?])).flatten().collect()
    }

    /// The link and row length of `--iscsi`.
    fn rtt(&self) -> bench_rtt::Args {
        let number = |v: &Option<String>| v.as_deref().and_then(|v| v.parse().ok());
        bench_rtt::Args {
            rtt_ms: number(&self.rtt).unwrap_or(20),
            mbit: number(&self.bandwidth).unwrap_or(0),
            seconds: self.seconds.unwrap_or(5),
        }
    }
}

fn bench_s3(args: &[String]) -> Result<(), String> {
    let argv = std::iter::once("s3".to_string()).chain(args.iter().cloned());
    let a = match <BenchS3 as clap::Parser>::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) if e.use_stderr() => return Err(format!("{e}\n{USAGE}")),
        Err(help) => {
            print!("{help}");
            return Ok(());
        }
    };
    if a.reads {
        return bench_reads::run(a.seconds.unwrap_or(3));
    }
    if a.snapshot {
        let rtt_ms = a.rtt.as_deref().map(|ms| ms.parse().expect("millis() gives a number"));
        return bench_snapshot::run(a.seconds.unwrap_or(10), a.rounds.unwrap_or(3), rtt_ms);
    }
    if a.iscsi {
        return bench_rtt::run(a.rtt());
    }
    let network = a.network();
    let scale = a.scale.clone().unwrap_or_else(|| "1".to_string());
    build_release()?;
    let dir = std::env::temp_dir().join(format!("rtgt-bench-s3-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let out = root().join("target/bench");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let (json, result) = if network.is_empty() {
        let json = out.join("s3.json");
        let result = run(Command::new(root().join("target/release/rtgt-bench"))
            .args(["s3", "--scale", &scale, "--dir"])
            .arg(&dir)
            .arg("--json")
            .arg(&json));
        (json, result)
    } else {
        let json = out.join("s3-network.json");
        let result = run(Command::new(root().join("target/release/rtgt-bench"))
            .args(["s3-network", "--dir"])
            .arg(&dir)
            .args(&network)
            .arg("--json")
            .arg(&json));
        (json, result)
    };
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    eprintln!("xtask: results in {}", json.display());
    Ok(())
}

#[cfg(test)]
mod units_tests {
    use super::*;

    #[test]
    fn times_and_rates_read_with_their_units() {
        assert_eq!(millis("20ms").unwrap(), "20");
        assert_eq!(millis("0.5s").unwrap(), "500");
        assert_eq!(millis("20").unwrap(), "20");
        assert_eq!(seconds("30s").unwrap(), "30");
        assert_eq!(seconds("1m").unwrap(), "60");
        assert_eq!(seconds("45").unwrap(), "45");
        assert_eq!(mbit("100Mbit").unwrap(), "100");
        assert_eq!(mbit("1Gbit").unwrap(), "1000");
        assert!(millis("fast").is_err() && mbit("-3").is_err());
    }

    fn bench_s3_args(line: &str) -> Result<BenchS3, clap::Error> {
        <BenchS3 as clap::Parser>::try_parse_from(std::iter::once("s3").chain(line.split_whitespace()))
    }

    #[test]
    fn bench_s3_options_choose_the_benchmark_and_carry_their_units() {
        let a = bench_s3_args("--rtt 50ms --bandwidth 1Gbit --only seq").unwrap();
        assert_eq!(a.network(), ["--rtt-ms", "50", "--mbit", "1000", "--only", "seq"]);
        let a = bench_s3_args("--rtt 0.02s --iscsi").unwrap();
        assert!(a.iscsi);
        let rtt = a.rtt();
        assert_eq!((rtt.rtt_ms, rtt.mbit, rtt.seconds), (20, 0, 5));
        assert!(bench_s3_args("--scale 4").unwrap().network().is_empty());
        let a = bench_s3_args("--snapshot --rounds 2 --seconds 5").unwrap();
        assert_eq!((a.snapshot, a.rounds, a.seconds), (true, Some(2), Some(5)));
        let a = bench_s3_args("--snapshot --rtt 20ms").unwrap();
        assert_eq!((a.snapshot, a.rtt.as_deref()), (true, Some("20")));
        for refused in
            ["--reads --rtt 20ms", "--rounds 2", "--iscsi --outage 30s", "--scale 2 --rtt 20ms", "--rtt soon"]
        {
            assert!(bench_s3_args(refused).is_err(), "{refused} was taken");
        }
    }
}
