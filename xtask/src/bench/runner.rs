//! The clients: rtgt's load generator and iscsi-perf, run against one target, and what a run
//! measured.

use super::*;

#[derive(Debug, Clone)]
pub(super) struct Sample {
    pub(super) iops: f64,
    pub(super) mb_s: f64,
    pub(super) p50_us: Option<f64>,
    pub(super) p99_us: Option<f64>,
    /// The target's CPU time per command (user and system), in microseconds.
    pub(super) cpu_us: Option<f64>,
    /// The client's CPU time over the run per second of it (libiscsi-load, one thread: 1.0
    /// means the client set the rate, not the target).
    pub(super) client_cpu: Option<f64>,
}

/// The number at `path` (keys from the top) of a JSON document (the load generator's and
/// iperf3's output).
pub(crate) fn json_number(text: &str, path: &[&str]) -> Option<f64> {
    let doc: serde_json::Value = serde_json::from_str(text).ok()?;
    path.iter().try_fold(&doc, |v, key| v.get(key))?.as_f64()
}

/// One run of rtgt's load generator (`rtgt-bench load`, of the release build) on `iqn` at
/// `portal` for `seconds`, with `options` (flag, value); returns its JSON result.
pub(crate) fn bench_load(
    dir: &Path,
    portal: SocketAddr,
    iqn: &str,
    options: &[(&str, String)],
    seconds: u64,
) -> Result<String, String> {
    let json = dir.join("load.json");
    let _ = std::fs::remove_file(&json);
    let mut args: Vec<String> =
        ["load", "--portal", &portal.to_string(), "--target", iqn].iter().map(|s| s.to_string()).collect();
    for (flag, value) in options {
        args.extend([flag.to_string(), value.clone()]);
    }
    args.extend(["--seconds".to_string(), seconds.to_string(), "--json".to_string(), json.display().to_string()]);
    // Login, draining the queue, a 30 s command timeout and logout fit in the margin.
    let ran = run_limited(&root().join("target/release/rtgt-bench"), &args, Duration::from_secs(seconds + 60), dir)?;
    if !ran.success {
        return Err(format!("rtgt-bench load {}: {}", ran.status, last_line(&ran.stderr)));
    }
    std::fs::read_to_string(&json).map_err(|e| format!("rtgt-bench load wrote no result: {e}"))
}

/// A load generator's JSON result (rtgt-bench load and libiscsi-load print the same keys).
fn load_sample(text: &str, client: &str) -> Result<Sample, String> {
    let get = |k: &str| json_number(text, &[k]).ok_or(format!("{client} result without {k}"));
    if get("ios")? == 0.0 {
        return Err(format!("{client} completed no command"));
    }
    Ok(Sample {
        iops: get("iops")?,
        mb_s: get("mb_per_s")?,
        p50_us: Some(get("lat_p50_us")?),
        p99_us: Some(get("lat_p99_us")?),
        cpu_us: None,
        client_cpu: json_number(text, &["client_cpu"]),
    })
}

pub(super) struct Runner {
    pub(super) rtgt: PathBuf,
    pub(super) iscsi_perf: PathBuf,
    pub(super) libiscsi_load: PathBuf,
    pub(super) seconds: u64,
    pub(super) threads: usize,
    pub(super) dir: PathBuf,
}

impl Runner {
    pub(super) fn own(&self, t: &Target, w: &Workload, seconds: u64, seed: usize) -> Result<Sample, String> {
        let options = [
            ("--lun", "1".to_string()),
            ("--pattern", w.pattern.to_string()),
            ("--block-size", w.block_size.to_string()),
            ("--queue-depth", w.queue_depth.to_string()),
            ("--connections", w.sessions.to_string()),
            ("--threads", self.threads.to_string()),
            ("--seed", seed.to_string()),
        ];
        let text = bench_load(&self.dir, t.addr, t.iqn, &options, seconds)?;
        load_sample(&text, "rtgt-bench load")
    }

    /// `libiscsi_load.c`: the workload's sessions and queue depth through libiscsi.
    pub(super) fn libiscsi(&self, t: &Target, w: &Workload, seconds: u64, seed: usize) -> Result<Sample, String> {
        let args: Vec<String> = vec![
            t.addr.to_string(),
            t.iqn.to_string(),
            "1".into(),
            w.pattern.into(),
            w.block_size.to_string(),
            w.queue_depth.to_string(),
            w.sessions.to_string(),
            seconds.to_string(),
            seed.to_string(),
        ];
        let ran = run_limited(&self.libiscsi_load, &args, Duration::from_secs(seconds + 60), &self.dir)?;
        if !ran.success {
            return Err(format!("libiscsi-load {}: {}", ran.status, last_line(&ran.stderr)));
        }
        load_sample(&ran.stdout, "libiscsi-load")
    }

    /// The CPU time `t` spends while `sessions` libiscsi sessions stay logged in without a
    /// command, in milliseconds per second: measured from the moment the client reports every
    /// session logged in (logins are not idle) until shortly before it logs out.
    pub(super) fn idle_cpu(&self, t: &Target, sessions: u32, seconds: u64) -> Result<f64, String> {
        let limit = (seconds + 60).to_string();
        let mut child = Command::new("timeout")
            .args(["-s", "KILL", &limit])
            .arg(&self.libiscsi_load)
            .args([&t.addr.to_string(), t.iqn, "1", "idle", "4096", "1", &sessions.to_string()])
            .args([&seconds.to_string(), "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("libiscsi-load: {e}"))?;
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut first = String::new();
        let _ = stdout.read_line(&mut first);
        let measured = if first.trim() == "logged in" {
            let (cpu_before, started) = (t.thread_run_seconds(), Instant::now());
            std::thread::sleep(Duration::from_secs(seconds).saturating_sub(Duration::from_millis(500)));
            let used = t.thread_run_seconds().zip(cpu_before).map(|(after, before)| after - before);
            used.map(|u| u * 1e3 / started.elapsed().as_secs_f64())
        } else {
            None
        };
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest);
        let mut stderr = String::new();
        let _ = child.stderr.take().expect("piped").read_to_string(&mut stderr);
        let status = child.wait().map_err(|e| format!("libiscsi-load: {e}"))?;
        match (status.success(), measured) {
            (true, Some(ms_per_s)) => Ok(ms_per_s),
            (true, None) => Err(format!("libiscsi-load idle: no CPU figure (first line {first:?})")),
            (false, _) => Err(format!("libiscsi-load idle {status}: {}", last_line(&stderr))),
        }
    }

    /// iscsi-perf: `-b` blocks per read, `-m` reads in flight, `-r` random (512-byte aligned
    /// offsets), `-t` seconds. It ignores the first SIGTERM while reads are in flight and may
    /// never stop if its progress tick misses the last second, so it runs under SIGKILL after
    /// seconds + 10.
    pub(super) fn perf(&self, t: &Target, w: &Workload) -> Result<Sample, String> {
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
            Some(iops) if ran.success && finished => Ok(Sample {
                iops,
                mb_s: iops * w.block_size as f64 / 1e6,
                p50_us: None,
                p99_us: None,
                cpu_us: None,
                client_cpu: None,
            }),
            _ => Err(format!(
                "iscsi-perf {}: {}",
                ran.status,
                last_line(&format!("{}\n{}", ran.stdout.replace('\r', "\n"), ran.stderr))
            )),
        }
    }
}
