//! Process supervision for the benchmark: programs found on PATH, children watched so that
//! none outlives the benchmark, runs with a time limit, and `rtgt serve` started and awaited.

use super::*;

/// Finds a program in PATH (and the sbin directories, where tgtd lives).
pub(crate) fn which(name: &str) -> Option<PathBuf> {
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
    pub(crate) name: String,
    pub(crate) shell: Child,
    pub(crate) stdin: Option<ChildStdin>,
    pub(crate) pid: u32,
}

pub(crate) const WATCHDOG: &str = r#"trap '' INT TERM HUP
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

    /// The CPU time the server's live threads have run so far, in seconds, to the nanosecond
    /// (`/proc/PID/task/*/schedstat`; `cpu_seconds` counts in clock ticks, 10 ms, too coarse
    /// for an idle server, but includes threads that ended).
    pub(crate) fn thread_run_seconds(&self) -> Option<f64> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid)).ok()?;
        let mut ns = 0u64;
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(ns as f64 / 1e9)
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
pub(crate) struct Ran {
    pub(crate) success: bool,
    pub(crate) status: String,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs a client under `timeout -s KILL` (so it dies even if xtask does), waiting at most
/// `limit`; its output goes through files in `dir` (no pipe to fill).
pub(crate) fn run_limited(program: &Path, args: &[String], limit: Duration, dir: &Path) -> Result<Ran, String> {
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

pub(crate) fn last_line(text: &str) -> String {
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
        self.start_logging("warn")
    }

    /// Starts it with `RUST_LOG=filter` and waits for its portal.
    pub(crate) fn start_logging(&self, filter: &str) -> Result<Watched, String> {
        let log = self.dir.join("rtgt.log");
        let args = vec!["serve".to_string(), "--config".to_string(), self.config.display().to_string()];
        let server = Watched::spawn("rtgt", &self.rtgt, &args, &log, &[("RUST_LOG", filter)])?;
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
