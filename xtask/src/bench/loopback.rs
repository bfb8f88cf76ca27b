//! What the loopback itself carries (iperf3, or a built-in measurement): the ceiling both
//! targets share.

use super::*;

pub(crate) struct Loopback {
    pub(crate) method: String,
    pub(crate) mb_s: Option<f64>,
}

/// Loopback TCP bandwidth: iperf3 if installed, otherwise one std::net stream for 3 s.
pub(crate) fn loopback(dir: &Path) -> Loopback {
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

pub(crate) fn iperf3_bandwidth(iperf3: &Path, dir: &Path) -> Result<f64, String> {
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
    json_number(&ran.stdout, &["end", "sum_received", "bits_per_second"])
        .map(|b| b / 8e6)
        .ok_or_else(|| format!("no bits_per_second in iperf3's result ({})", ran.status))
}

pub(crate) fn builtin_bandwidth() -> Result<f64, String> {
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
