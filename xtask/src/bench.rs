//! `cargo xtask bench [targets]`: rtgt against tgtd (Debian's `tgt`) on this machine.
//!
//! Both targets export one 1 GiB LU with the same kind of backing (memory: rtgt's memory backend
//! against a tgtd rdwr file in /dev/shm; file: a regular file each, on one filesystem), both
//! negotiate the same limits, and both are driven by the same clients: rtgt's own load generator
//! (`rtgt bench-load`, the library's initiator) and libiscsi's `iscsi-perf`. Runs alternate
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

const RTGT_IQN: &str = "iqn.2026-11.dev.rtgt:bench";
const TGTD_IQN: &str = "iqn.2026-11.dev.rtgt:bench-tgtd";
const LUN_SIZE: u64 = 1 << 30;
/// The LUs' logical block size (both targets' default); iscsi-perf counts in these.
const LBA: u32 = 512;

// ---------------------------------------------------------------- workloads

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backing {
    Memory,
    File,
}

impl Backing {
    fn name(self) -> &'static str {
        match self {
            Backing::Memory => "memory",
            Backing::File => "file",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    /// `rtgt bench-load`.
    Own,
    /// libiscsi's iscsi-perf (reads only).
    IscsiPerf,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::Own => "own",
            Client::IscsiPerf => "iscsi-perf",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rtgt,
    Tgtd,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Rtgt => "rtgt",
            Kind::Tgtd => "tgtd",
        }
    }
}

struct Workload {
    name: &'static str,
    /// A `rtgt bench-load --pattern`.
    pattern: &'static str,
    block_size: u32,
    /// Commands in flight per session.
    queue_depth: u32,
    /// Sessions of the own client, each with its own queue (iscsi-perf: one).
    sessions: u32,
}

impl Workload {
    fn reads(&self) -> bool {
        self.pattern.ends_with("read")
    }
}

const fn w(name: &'static str, pattern: &'static str, block_size: u32, queue_depth: u32) -> Workload {
    Workload { name, pattern, block_size, queue_depth, sessions: 1 }
}

const fn many(name: &'static str, pattern: &'static str, sessions: u32, queue_depth: u32) -> Workload {
    Workload { name, pattern, block_size: 4096, queue_depth, sessions }
}

const WORKLOADS: [Workload; 12] = [
    w("randread 4K QD1", "randread", 4096, 1),
    w("randwrite 4K QD1", "randwrite", 4096, 1),
    w("randread 4K QD32", "randread", 4096, 32),
    w("randwrite 4K QD32", "randwrite", 4096, 32),
    many("randread 4K 8 sessions x QD4", "randread", 8, 4),
    many("randwrite 4K 8 sessions x QD4", "randwrite", 8, 4),
    many("randread 4K 64 sessions x QD1", "randread", 64, 1),
    many("randwrite 4K 64 sessions x QD1", "randwrite", 64, 1),
    w("seqread 128K QD8", "seqread", 128 << 10, 8),
    w("seqwrite 128K QD8", "seqwrite", 128 << 10, 8),
    w("seqread 1M QD8", "seqread", 1 << 20, 8),
    w("seqwrite 1M QD8", "seqwrite", 1 << 20, 8),
];

/// The negotiation limits tgtd is given: rtgt's defaults (config.rs), so that both targets
/// move the same PDUs.
const TGTD_PARAMS: [(&str, &str); 6] = [
    ("MaxRecvDataSegmentLength", "262144"),
    ("MaxXmitDataSegmentLength", "262144"),
    ("MaxBurstLength", "1048576"),
    ("FirstBurstLength", "262144"),
    ("InitialR2T", "No"),
    ("ImmediateData", "Yes"),
];

struct Options {
    seconds: u64,
    runs: usize,
    threads: usize,
    backings: Vec<Backing>,
    clients: Vec<Client>,
    only: Vec<String>,
    /// rtgt's backend for the file LU: "file" (positioned I/O) or "uring".
    rtgt_file_backend: &'static str,
    file_state: FileState,
}

/// How the file LUs come to hold data before the runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileState {
    /// Sparse, then filled through each target with 1 MiB writes.
    Target,
    /// Random data written in 1 MiB pieces by another program (as `dd` does) before the
    /// targets start: in the page cache as large folios.
    Dd,
}

impl FileState {
    fn name(self) -> &'static str {
        match self {
            FileState::Target => "written through the target",
            FileState::Dd => "written by dd before the targets started",
        }
    }
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        seconds: 10,
        runs: 3,
        threads: 1,
        backings: vec![Backing::Memory, Backing::File],
        clients: vec![Client::Own, Client::IscsiPerf],
        only: Vec::new(),
        rtgt_file_backend: "file",
        file_state: FileState::Target,
    };
    let mut it = args.iter();
    let number = |v: Option<&String>, what: &str| -> Result<u64, String> {
        v.and_then(|s| s.parse().ok()).filter(|n| *n > 0).ok_or(format!("{what} needs a positive number"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => o.seconds = number(it.next(), "--seconds")?,
            "--runs" => o.runs = number(it.next(), "--runs")? as usize,
            "--threads" => o.threads = number(it.next(), "--threads")? as usize,
            "--quick" => {
                o.seconds = 3;
                o.runs = 1;
            }
            "--backing" => {
                o.backings = match it.next().map(String::as_str) {
                    Some("memory") => vec![Backing::Memory],
                    Some("file") => vec![Backing::File],
                    _ => return Err("--backing needs memory or file".into()),
                }
            }
            "--client" => {
                o.clients = match it.next().map(String::as_str) {
                    Some("own") => vec![Client::Own],
                    Some("iscsi-perf") => vec![Client::IscsiPerf],
                    _ => return Err("--client needs own or iscsi-perf".into()),
                }
            }
            "--rtgt-file-backend" => {
                o.rtgt_file_backend = match it.next().map(String::as_str) {
                    Some("file") => "file",
                    Some("uring") => "uring",
                    _ => return Err("--rtgt-file-backend needs file or uring".into()),
                }
            }
            "--file-state" => {
                o.file_state = match it.next().map(String::as_str) {
                    Some("target") => FileState::Target,
                    Some("dd") => FileState::Dd,
                    _ => return Err("--file-state needs target or dd".into()),
                }
            }
            "--only" => o.only.push(it.next().ok_or("--only needs a pattern")?.to_lowercase()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(o)
}

// ---------------------------------------------------------------- processes

/// Finds a program in PATH (and the sbin directories, where tgtd lives).
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// A server under a watchdog shell: when this is dropped, or when xtask dies in any way (the
/// watchdog's stdin pipe closes), the shell kills the server with SIGKILL, then removes the
/// paths listed in its environment variable WATCHDOG_CLEANUP (one a line).
pub(crate) struct Watched {
    name: String,
    shell: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
}

const WATCHDOG: &str = r#"trap '' INT TERM HUP
log=$1; shift
"$@" </dev/null >>"$log" 2>&1 &
echo $!
read _
kill -KILL $! 2>/dev/null
wait
set -f
IFS='
'
[ -z "$WATCHDOG_CLEANUP" ] || rm -rf -- $WATCHDOG_CLEANUP"#;

impl Watched {
    pub(crate) fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        env: &[(&str, &str)],
    ) -> Result<Watched, String> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(WATCHDOG).arg("watchdog").arg(log).arg(program).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut shell = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let stdin = shell.stdin.take();
        let mut line = String::new();
        let read = BufReader::new(shell.stdout.take().expect("piped")).read_line(&mut line);
        let pid = match read.ok().and_then(|_| line.trim().parse().ok()) {
            Some(pid) => pid,
            None => {
                let _ = shell.kill();
                let _ = shell.wait();
                return Err(format!("cannot start {name}: the watchdog did not report its pid"));
            }
        };
        Ok(Watched { name: name.into(), shell, stdin, pid })
    }

    /// Asks the server to stop (SIGTERM: a clean shutdown) and waits up to `within` for it.
    pub(crate) fn terminate(&self, within: Duration) -> Result<(), String> {
        let _ = Command::new("kill").args(["-TERM", &self.pid.to_string()]).status();
        let deadline = Instant::now() + within;
        while self.alive() {
            if Instant::now() > deadline {
                return Err(format!("{} did not stop within {} s of SIGTERM", self.name, within.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The CPU time (user and system) the server has used so far, in seconds.
    pub(crate) fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // After "pid (comm) ": state is field 3, utime and stime fields 14 and 15.
        let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
        let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(ticks as f64 / clock_ticks_per_second())
    }

    /// Whether the server still runs (a zombie waiting for the watchdog's `wait` does not).
    pub(crate) fn alive(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
            Err(_) => false,
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        // Closing the pipe makes the watchdog kill the server and reap it.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.shell.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("xtask: the watchdog of {} did not stop; killing pid {}", self.name, self.pid);
        let _ = Command::new("kill").args(["-KILL", &self.pid.to_string()]).status();
        let _ = self.shell.kill();
        let _ = self.shell.wait();
    }
}

/// What a bounded client run printed.
struct Ran {
    success: bool,
    status: String,
    stdout: String,
    stderr: String,
}

/// Runs a client under `timeout -s KILL` (so it dies even if xtask does), waiting at most
/// `limit`; its output goes through files in `dir` (no pipe to fill).
fn run_limited(program: &Path, args: &[String], limit: Duration, dir: &Path) -> Result<Ran, String> {
    let out_path = dir.join("client.out");
    let err_path = dir.join("client.err");
    let out = std::fs::File::create(&out_path).map_err(|e| e.to_string())?;
    let err = std::fs::File::create(&err_path).map_err(|e| e.to_string())?;
    let mut child = Command::new("timeout")
        .args(["-s", "KILL", &limit.as_secs().to_string()])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let deadline = Instant::now() + limit + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{} did not end within {} s", program.display(), limit.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    let status_text = match status.code() {
        Some(137) | Some(124) => format!("killed after {} s (timeout)", limit.as_secs()),
        _ => status.to_string(),
    };
    Ok(Ran { success: status.success(), status: status_text, stdout: read(&out_path), stderr: read(&err_path) })
}

fn last_line(text: &str) -> String {
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
}

/// A benchmark's `rtgt serve --config CONFIG`: its binary, working directory (its log is
/// `rtgt.log` there) and portal.
pub(crate) struct Serve {
    pub(crate) rtgt: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) addr: SocketAddr,
    pub(crate) config: PathBuf,
}

impl Serve {
    /// Starts it and waits for its portal.
    pub(crate) fn start(&self) -> Result<Watched, String> {
        let log = self.dir.join("rtgt.log");
        let args = vec!["serve".to_string(), "--config".to_string(), self.config.display().to_string()];
        let server = Watched::spawn("rtgt", &self.rtgt, &args, &log, &[("RUST_LOG", "warn")])?;
        wait_for_port(self.addr, &server, &log)?;
        Ok(server)
    }
}

pub(crate) fn wait_for_port(addr: SocketAddr, server: &Watched, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if !server.alive() {
            let log_text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("{} exited before listening: {}", server.name, last_line(&log_text)));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{} did not listen on {addr} within 30 s (log: {})", server.name, log.display()))
}

// ---------------------------------------------------------------- targets

/// A running target with one 1 GiB LU 1.
struct Target {
    kind: Kind,
    addr: SocketAddr,
    iqn: &'static str,
    log: PathBuf,
    server: Option<Watched>,
}

impl Target {
    fn cpu_seconds(&self) -> Option<f64> {
        self.server.as_ref()?.cpu_seconds()
    }

    fn alive(&self) -> bool {
        self.server.as_ref().is_some_and(Watched::alive)
    }
}

fn start_rtgt(
    binary: &Path,
    backing: Backing,
    file_backend: &str,
    dir: &Path,
    lun_file: &Path,
) -> Result<Target, String> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse().expect("address");
    let lun = match backing {
        Backing::Memory => "backend = \"memory\"\nsize = \"1GiB\"".to_string(),
        Backing::File => {
            format!("backend = \"{file_backend}\"\npath = \"{}\"\nsize = \"1GiB\"", lun_file.display())
        }
    };
    let config = format!(
        "[server]\ndata_dir = \"{}\"\n\n[api]\nlisten = \"off\"\n\n[[portal_group]]\ntag = 1\nportals = [\"{addr}\"]\n\n\
         [[target]]\nname = \"{RTGT_IQN}\"\n\n[[target.lun]]\nlun = 1\n{lun}\n",
        dir.display()
    );
    let config_path = dir.join("rtgt.toml");
    std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
    let log = dir.join(format!("rtgt-{}.log", backing.name()));
    let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let args = vec!["serve".to_string(), "--config".to_string(), config_path.display().to_string()];
    let server = Watched::spawn("rtgt", binary, &args, &log, &[("RUST_LOG", &rust_log)])?;
    wait_for_port(addr, &server, &log)?;
    Ok(Target { kind: Kind::Rtgt, addr, iqn: RTGT_IQN, log, server: Some(server) })
}

struct Tgt {
    tgtd: PathBuf,
    tgtadm: PathBuf,
}

fn tgtadm(tgt: &Tgt, control: u32, args: &[&str], dir: &Path) -> Result<String, String> {
    let mut all: Vec<String> = vec!["-C".into(), control.to_string(), "--lld".into(), "iscsi".into()];
    all.extend(args.iter().map(|a| a.to_string()));
    let ran = run_limited(&tgt.tgtadm, &all, Duration::from_secs(15), dir)?;
    if !ran.success {
        return Err(format!(
            "tgtadm {}: {} {}",
            args.join(" "),
            ran.status,
            last_line(&format!("{}\n{}", ran.stdout, ran.stderr))
        ));
    }
    Ok(ran.stdout)
}

fn start_tgtd(tgt: &Tgt, backing: Backing, dir: &Path, lun_file: &Path) -> Result<Target, String> {
    // A control port of our own, so that another tgtd (the system's, another run) is untouched.
    let sockets = Path::new("/var/run/tgtd");
    let base = 1000 + std::process::id() % 30000;
    let control = (base..base + 1000)
        .find(|n| !sockets.join(format!("socket.{n}")).exists() && !sockets.join(format!("socket.{n}.lock")).exists())
        .ok_or("no free tgtd control port")?;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse().expect("address");
    let log = dir.join(format!("tgtd-{}.log", backing.name()));
    let args: Vec<String> = ["-f", "-C", &control.to_string(), "--iscsi", &format!("portal={addr}")]
        .iter()
        .map(|s| s.to_string())
        .collect();
    // Its control socket and lock stay behind it: the watchdog removes them.
    let leftovers = format!("{0}/socket.{control}\n{0}/socket.{control}.lock", sockets.display());
    let server = Watched::spawn("tgtd", &tgt.tgtd, &args, &log, &[("WATCHDOG_CLEANUP", &leftovers)])?;
    let target = Target { kind: Kind::Tgtd, addr, iqn: TGTD_IQN, log: log.clone(), server: Some(server) };
    wait_for_port(addr, target.server.as_ref().expect("started"), &log)?;
    // The control socket may come up a little after the portal.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tgtadm(tgt, control, &["--mode", "target", "--op", "new", "--tid", "1", "--targetname", TGTD_IQN], dir) {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    let store = lun_file.display().to_string();
    tgtadm(
        tgt,
        control,
        &[
            "--mode",
            "logicalunit",
            "--op",
            "new",
            "--tid",
            "1",
            "--lun",
            "1",
            "--backing-store",
            &store,
            "--bstype",
            "rdwr",
        ],
        dir,
    )?;
    tgtadm(tgt, control, &["--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL"], dir)?;
    for (name, value) in TGTD_PARAMS {
        tgtadm(
            tgt,
            control,
            &["--mode", "target", "--op", "update", "--tid", "1", "--name", name, "--value", value],
            dir,
        )?;
    }
    let shown = tgtadm(tgt, control, &["--mode", "target", "--op", "show", "--tid", "1"], dir)?;
    for (name, value) in TGTD_PARAMS {
        if !shown.lines().any(|l| l.trim() == format!("{name}={value}")) {
            return Err(format!("tgtd did not take {name}={value}"));
        }
    }
    Ok(target)
}

fn tgtd_version(tgt: &Tgt) -> String {
    Command::new(&tgt.tgtd)
        .arg("--version")
        .output()
        .ok()
        .map(|o| last_line(&String::from_utf8_lossy(&o.stdout)))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "(version unknown)".into())
}

/// USER_HZ, the unit of /proc's CPU times.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A 1 GiB file: sparse (filled through the target before the runs), or with `Dd` full of
/// random data written in 1 MiB pieces and synced, as `dd if=/dev/urandom bs=1M` leaves it.
fn create_lun_file(path: &Path, state: FileState) -> Result<(), String> {
    use std::io::Write;
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = std::fs::File::create(path).map_err(err)?;
    match state {
        FileState::Target => f.set_len(LUN_SIZE).map_err(err),
        FileState::Dd => {
            let mut piece = vec![0u8; 1 << 20];
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            for _ in 0..LUN_SIZE / piece.len() as u64 {
                for word in piece.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    word.copy_from_slice(&x.to_le_bytes());
                }
                f.write_all(&piece).map_err(err)?;
            }
            f.sync_all().map_err(err)
        }
    }
}

// ---------------------------------------------------------------- clients

#[derive(Debug, Clone)]
struct Sample {
    iops: f64,
    mb_s: f64,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    /// The target's CPU time per command (user and system), in microseconds.
    cpu_us: Option<f64>,
}

/// A number after `"key":` in flat JSON (the load generator's output).
pub(crate) fn json_number(text: &str, key: &str) -> Option<f64> {
    let at = text.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest.find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c))).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// One run of rtgt's load generator (`rtgt bench-load`) on `iqn` at `portal` for `seconds`,
/// with `options` (flag, value); returns its JSON result.
pub(crate) fn bench_load(
    rtgt: &Path,
    dir: &Path,
    portal: SocketAddr,
    iqn: &str,
    options: &[(&str, String)],
    seconds: u64,
) -> Result<String, String> {
    let json = dir.join("load.json");
    let _ = std::fs::remove_file(&json);
    let mut args: Vec<String> =
        ["bench-load", "--portal", &portal.to_string(), "--target", iqn].iter().map(|s| s.to_string()).collect();
    for (flag, value) in options {
        args.extend([flag.to_string(), value.clone()]);
    }
    args.extend(["--seconds".to_string(), seconds.to_string(), "--json".to_string(), json.display().to_string()]);
    // Login, draining the queue, a 30 s command timeout and logout fit in the margin.
    let ran = run_limited(rtgt, &args, Duration::from_secs(seconds + 60), dir)?;
    if !ran.success {
        return Err(format!("bench-load {}: {}", ran.status, last_line(&ran.stderr)));
    }
    std::fs::read_to_string(&json).map_err(|e| format!("bench-load wrote no result: {e}"))
}

struct Runner {
    rtgt: PathBuf,
    iscsi_perf: PathBuf,
    seconds: u64,
    threads: usize,
    dir: PathBuf,
}

impl Runner {
    fn own(&self, t: &Target, w: &Workload, seconds: u64, seed: usize) -> Result<Sample, String> {
        let options = [
            ("--lun", "1".to_string()),
            ("--pattern", w.pattern.to_string()),
            ("--block-size", w.block_size.to_string()),
            ("--queue-depth", w.queue_depth.to_string()),
            ("--connections", w.sessions.to_string()),
            ("--threads", self.threads.to_string()),
            ("--seed", seed.to_string()),
        ];
        let text = bench_load(&self.rtgt, &self.dir, t.addr, t.iqn, &options, seconds)?;
        let get = |k: &str| json_number(&text, k).ok_or(format!("bench-load result without {k}"));
        if get("ios")? == 0.0 {
            return Err("bench-load completed no command".into());
        }
        Ok(Sample {
            iops: get("iops")?,
            mb_s: get("mb_per_s")?,
            p50_us: Some(get("lat_p50_us")?),
            p99_us: Some(get("lat_p99_us")?),
            cpu_us: None,
        })
    }

    /// iscsi-perf: `-b` blocks per read, `-m` reads in flight, `-r` random (512-byte aligned
    /// offsets), `-t` seconds. It ignores the first SIGTERM while reads are in flight and may
    /// never stop if its progress tick misses the last second, so it runs under SIGKILL after
    /// seconds + 10.
    fn perf(&self, t: &Target, w: &Workload) -> Result<Sample, String> {
        let url = format!("iscsi://{}/{}/1", t.addr, t.iqn);
        let mut args: Vec<String> = vec![
            "-t".into(),
            self.seconds.to_string(),
            "-m".into(),
            w.queue_depth.to_string(),
            "-b".into(),
            (w.block_size / LBA).to_string(),
        ];
        if w.pattern == "randread" {
            args.push("-r".into());
        }
        args.push(url);
        let ran = run_limited(&self.iscsi_perf, &args, Duration::from_secs(self.seconds + 10), &self.dir)?;
        // Progress lines end in '\r'; the last "iops average N" is the whole run's.
        let average = ran
            .stdout
            .split(['\r', '\n'])
            .filter_map(|l| l.split("iops average ").nth(1))
            .filter_map(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
            .next_back();
        let finished = ran.stdout.contains("finished.");
        match average {
            Some(iops) if ran.success && finished => {
                Ok(Sample { iops, mb_s: iops * w.block_size as f64 / 1e6, p50_us: None, p99_us: None, cpu_us: None })
            }
            _ => Err(format!(
                "iscsi-perf {}: {}",
                ran.status,
                last_line(&format!("{}\n{}", ran.stdout.replace('\r', "\n"), ran.stderr))
            )),
        }
    }
}

// ---------------------------------------------------------------- results

struct Row {
    backing: Backing,
    workload: usize,
    client: Client,
    rtgt: Vec<Result<Sample, String>>,
    tgtd: Vec<Result<Sample, String>>,
}

#[derive(Debug, Clone, Default)]
struct Summary {
    iops: Option<f64>,
    mb_s: Option<f64>,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    cpu_us: Option<f64>,
    /// (max - min) / median of the IOPS of the runs.
    spread: Option<f64>,
    failed: usize,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

fn summarize(samples: &[Result<Sample, String>]) -> Summary {
    let ok: Vec<&Sample> = samples.iter().filter_map(|s| s.as_ref().ok()).collect();
    let iops: Vec<f64> = ok.iter().map(|s| s.iops).collect();
    let m = median(iops.clone());
    let spread = match (m, iops.iter().copied().reduce(f64::max), iops.iter().copied().reduce(f64::min)) {
        (Some(m), Some(max), Some(min)) if m > 0.0 => Some((max - min) / m),
        _ => None,
    };
    Summary {
        iops: m,
        mb_s: median(ok.iter().map(|s| s.mb_s).collect()),
        p50_us: median(ok.iter().filter_map(|s| s.p50_us).collect()),
        p99_us: median(ok.iter().filter_map(|s| s.p99_us).collect()),
        cpu_us: median(ok.iter().filter_map(|s| s.cpu_us).collect()),
        spread,
        failed: samples.len() - ok.len(),
    }
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        let (r, t) = (summarize(&self.rtgt).iops?, summarize(&self.tgtd).iops?);
        (t > 0.0).then(|| r / t)
    }
    fn label(&self) -> String {
        format!("{} · {} · {}", WORKLOADS[self.workload].name, self.client.name(), self.backing.name())
    }
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map(|x| format!("{x:.decimals$}")).unwrap_or_else(|| "-".into())
}

fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| workload | client | backing | rtgt IOPS | rtgt MB/s | rtgt p50 µs | rtgt p99 µs | rtgt CPU µs/cmd | tgtd IOPS | tgtd MB/s | tgtd p50 µs | tgtd p99 µs | tgtd CPU µs/cmd | rtgt/tgtd | spread |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let (r, g) = (summarize(&row.rtgt), summarize(&row.tgtd));
        let failed = |s: &Summary| if s.failed > 0 { format!(" ({} failed)", s.failed) } else { String::new() };
        let spread = match (r.spread, g.spread) {
            (Some(a), Some(b)) => format!("{:.0}%", 100.0 * a.max(b)),
            _ => "-".into(),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {}{} | {} | {} | {} | {} | {}{} | {} | {} | {} | {} | {} | {} |",
            WORKLOADS[row.workload].name,
            row.client.name(),
            row.backing.name(),
            opt(r.iops, 0),
            failed(&r),
            opt(r.mb_s, 1),
            opt(r.p50_us, 0),
            opt(r.p99_us, 0),
            opt(r.cpu_us, 1),
            opt(g.iops, 0),
            failed(&g),
            opt(g.mb_s, 1),
            opt(g.p50_us, 0),
            opt(g.p99_us, 0),
            opt(g.cpu_us, 1),
            row.ratio().map(|x| format!("{x:.2}x")).unwrap_or_else(|| "-".into()),
            spread,
        );
    }
    t
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_num(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.3}"),
        _ => "null".into(),
    }
}

fn json_side(samples: &[Result<Sample, String>]) -> String {
    let s = summarize(samples);
    let runs: Vec<String> = samples
        .iter()
        .map(|r| match r {
            Ok(x) => format!(
                "{{\"iops\": {}, \"mb_per_s\": {}, \"p50_us\": {}, \"p99_us\": {}, \"cpu_us_per_command\": {}}}",
                json_num(Some(x.iops)),
                json_num(Some(x.mb_s)),
                json_num(x.p50_us),
                json_num(x.p99_us),
                json_num(x.cpu_us)
            ),
            Err(e) => format!("{{\"error\": {}}}", json_str(e)),
        })
        .collect();
    format!(
        "{{\"iops\": {}, \"mb_per_s\": {}, \"p50_us\": {}, \"p99_us\": {}, \"cpu_us_per_command\": {}, \"spread\": {}, \"runs\": [{}]}}",
        json_num(s.iops),
        json_num(s.mb_s),
        json_num(s.p50_us),
        json_num(s.p99_us),
        json_num(s.cpu_us),
        json_num(s.spread),
        runs.join(", ")
    )
}

struct Report<'a> {
    options: &'a Options,
    rows: &'a [Row],
    loopback: &'a Loopback,
    notes: &'a [String],
}

fn json(r: &Report) -> String {
    let mut out = String::from("{\n");
    let _ = writeln!(out, "  \"seconds_per_run\": {},", r.options.seconds);
    let _ = writeln!(out, "  \"runs\": {},", r.options.runs);
    let _ = writeln!(out, "  \"cpus\": {},", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    let _ = writeln!(out, "  \"lun_bytes\": {LUN_SIZE},");
    let _ = writeln!(
        out,
        "  \"loopback\": {{\"method\": {}, \"mb_per_s\": {}}},",
        json_str(&r.loopback.method),
        json_num(r.loopback.mb_s)
    );
    let notes: Vec<String> = r.notes.iter().map(|n| json_str(n)).collect();
    let _ = writeln!(out, "  \"notes\": [{}],", notes.join(", "));
    out.push_str("  \"results\": [\n");
    for (i, row) in r.rows.iter().enumerate() {
        let w = &WORKLOADS[row.workload];
        let _ = write!(
            out,
            "    {{\"workload\": {}, \"pattern\": {}, \"block_size\": {}, \"queue_depth\": {}, \"client\": {}, \"backing\": {}, \"ratio\": {},\n     \"rtgt\": {},\n     \"tgtd\": {}}}{}\n",
            json_str(w.name),
            json_str(w.pattern),
            w.block_size,
            w.queue_depth,
            json_str(row.client.name()),
            json_str(row.backing.name()),
            json_num(row.ratio()),
            json_side(&row.rtgt),
            json_side(&row.tgtd),
            if i + 1 < r.rows.len() { "," } else { "" }
        );
    }
    out.push_str("  ]\n}\n");
    out
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A horizontal bar chart of the rtgt/tgtd IOPS ratios, with the parity line at 1.
fn svg(rows: &[Row], title: &str) -> String {
    let (label_w, bar_w, row_h, top) = (300.0, 560.0, 22.0, 56.0);
    let ratios: Vec<Option<f64>> = rows.iter().map(Row::ratio).collect();
    let max = ratios.iter().flatten().copied().fold(2.0f64, f64::max).ceil();
    let x = |r: f64| label_w + bar_w * r / max;
    let height = top + row_h * rows.len() as f64 + 40.0;
    let width = label_w + bar_w + 80.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"20\" font-size=\"15\" font-weight=\"bold\">rtgt / tgtd, median IOPS ratio (right of the line: rtgt faster)</text>\n\
         <text x=\"10\" y=\"38\" fill=\"#555\">{}</text>\n",
        xml(title)
    );
    // Grid every 0.5.
    let mut g = 0.0;
    while g <= max + 1e-9 {
        let gx = x(g);
        let _ = writeln!(
            s,
            "<line x1=\"{gx:.1}\" y1=\"{:.1}\" x2=\"{gx:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{gx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{g:.1}</text>",
            top - 8.0,
            top + row_h * rows.len() as f64,
            top + row_h * rows.len() as f64 + 16.0
        );
        g += 0.5;
    }
    for (i, (row, ratio)) in rows.iter().zip(&ratios).enumerate() {
        let y = top + row_h * i as f64;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            label_w - 8.0,
            y + row_h * 0.65,
            xml(&row.label())
        );
        match ratio {
            Some(r) => {
                let color = if *r >= 1.0 { "#3a8f4b" } else { "#c0504d" };
                let _ = writeln!(
                    s,
                    "<rect x=\"{label_w}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\">{r:.2}x</text>",
                    y + 3.0,
                    (x(*r) - label_w).max(1.0),
                    row_h - 6.0,
                    x(*r) + 4.0,
                    y + row_h * 0.65
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#c0504d\">no result</text>",
                    label_w + 4.0,
                    y + row_h * 0.65
                );
            }
        }
    }
    let one = x(1.0);
    let _ = writeln!(
        s,
        "<line x1=\"{one:.1}\" y1=\"{:.1}\" x2=\"{one:.1}\" y2=\"{:.1}\" stroke=\"black\" stroke-width=\"1.5\"/>\n</svg>",
        top - 8.0,
        top + row_h * rows.len() as f64
    );
    s
}

// ---------------------------------------------------------------- loopback

struct Loopback {
    method: String,
    mb_s: Option<f64>,
}

/// Loopback TCP bandwidth: iperf3 if installed, otherwise one std::net stream for 3 s.
fn loopback(dir: &Path) -> Loopback {
    if let Some(iperf3) = which("iperf3") {
        return match iperf3_bandwidth(&iperf3, dir) {
            Ok(mb_s) => Loopback { method: "iperf3, one stream of 1 MiB writes, 5 s".into(), mb_s: Some(mb_s) },
            Err(e) => Loopback { method: format!("iperf3 failed: {e}"), mb_s: None },
        };
    }
    match builtin_bandwidth() {
        Ok(mb_s) => Loopback {
            method: "iperf3 not installed: built-in single-stream copy (1 MiB writes, 3 s)".into(),
            mb_s: Some(mb_s),
        },
        Err(e) => Loopback { method: format!("iperf3 not installed and the built-in copy failed: {e}"), mb_s: None },
    }
}

fn iperf3_bandwidth(iperf3: &Path, dir: &Path) -> Result<f64, String> {
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let log = dir.join("iperf3-server.log");
    let args: Vec<String> = ["-s", "-B", "127.0.0.1", "-p", &port.to_string()].iter().map(|s| s.to_string()).collect();
    let server = Watched::spawn("iperf3", iperf3, &args, &log, &[])?;
    wait_for_port(addr, &server, &log)?;
    let args: Vec<String> = ["-c", "127.0.0.1", "-p", &port.to_string(), "-t", "5", "-l", "1M", "-J"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let ran = run_limited(iperf3, &args, Duration::from_secs(20), dir)?;
    drop(server);
    let at = ran.stdout.find("\"sum_received\"").ok_or_else(|| format!("no result ({})", ran.status))?;
    json_number(&ran.stdout[at..], "bits_per_second").map(|b| b / 8e6).ok_or_else(|| "no bits_per_second".into())
}

fn builtin_bandwidth() -> Result<f64, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(n),
                k => n += k as u64,
            }
        }
    });
    let mut c = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let buf = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        c.write_all(&buf).map_err(|e| e.to_string())?;
    }
    drop(c);
    let received = reader.join().map_err(|_| "reader panicked")?.map_err(|e| e.to_string())?;
    Ok(received as f64 / started.elapsed().as_secs_f64() / 1e6)
}

// ---------------------------------------------------------------- the benchmark

pub fn targets(args: &[String]) -> Result<(), String> {
    let options = parse(args)?;
    let missing = |what: &str, package: &str| format!("{what} not found: apt-get install -y {package}");
    let tgt = Tgt {
        tgtd: which("tgtd").ok_or_else(|| missing("tgtd", "tgt"))?,
        tgtadm: which("tgtadm").ok_or_else(|| missing("tgtadm", "tgt"))?,
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
    let runner =
        Runner { rtgt: binary, iscsi_perf, seconds: options.seconds, threads: options.threads, dir: dir.clone() };

    let workloads: Vec<usize> = (0..WORKLOADS.len())
        .filter(|&i| {
            let name = WORKLOADS[i].name.to_lowercase();
            options.only.is_empty() || options.only.iter().any(|o| name.contains(o.as_str()))
        })
        .collect();
    if workloads.is_empty() {
        return Err("--only matches no workload".into());
    }
    let clients_of = |i: usize| -> Vec<Client> {
        let w = &WORKLOADS[i];
        options.clients.iter().copied().filter(|c| *c == Client::Own || (w.reads() && w.sessions == 1)).collect()
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
        // Fill both LUs so that reads return data, not holes (unless written before).
        let filled = backing == Backing::File && options.file_state == FileState::Dd;
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
        format!("rtgt's file LU: backend = \"{}\"", options.rtgt_file_backend),
        format!(
            "tgtd negotiates rtgt's defaults: {}",
            TGTD_PARAMS.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
        ),
        format!(
            "own client: rtgt bench-load, one session (the \"N sessions\" workloads: N), {} thread(s); iscsi-perf (libiscsi 1.19): reads only (it has no write mode), random offsets 512-byte aligned, no latency figures",
            options.threads
        ),
        format!(
            "spread: (max - min) / median IOPS over the runs, the larger of the two targets; loopback TCP: {}",
            loopback.mb_s.map(|m| format!("{m:.0} MB/s ({})", loopback.method)).unwrap_or(loopback.method.clone())
        ),
    ];
    about.extend(fractions);
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

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn numbers_from_json() {
        let text = "{\n  \"iops\": 1234.5,\n  \"mb_per_s\": 5.0e1,\n  \"ios\": 7\n}";
        assert_eq!(json_number(text, "iops"), Some(1234.5));
        assert_eq!(json_number(text, "mb_per_s"), Some(50.0));
        assert_eq!(json_number(text, "ios"), Some(7.0));
        assert_eq!(json_number(text, "missing"), None);
    }

    #[test]
    fn summary_ignores_failed_runs() {
        let s = |iops| Ok(Sample { iops, mb_s: iops / 10.0, p50_us: Some(iops), p99_us: None, cpu_us: None });
        let runs = vec![s(100.0), Err("boom".to_string()), s(300.0), s(200.0)];
        let m = summarize(&runs);
        assert_eq!((m.iops, m.mb_s, m.p50_us, m.p99_us), (Some(200.0), Some(20.0), Some(200.0), None));
        assert_eq!(m.failed, 1);
        assert_eq!(m.spread, Some(1.0));
    }
}
