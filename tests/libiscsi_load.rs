//! The benchmark's libiscsi client (`xtask/src/bench/libiscsi_load.c`, `cargo xtask bench
//! --client libiscsi`) builds and measures what it claims: run against an in-process target for
//! a second per pattern, it completes commands without errors over every session it opened, it
//! reports the CPU it used, and what it wrote is on the LU. Needs gcc and libiscsi-dev; fails
//! (not skips) without them.

mod common;

use std::path::Path;

use common::{TARGET, memory_config, start};
use tokio::process::Command;

const INSTALL: &str = "apt-get install -y gcc libiscsi-dev";

async fn build(dir: &Path) -> std::path::PathBuf {
    let binary = dir.join("libiscsi-load");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("xtask/src/bench/libiscsi_load.c");
    let out = Command::new("cc")
        .args(["-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&binary)
        .arg(&source)
        .arg("-liscsi")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run cc: {e} ({INSTALL})"));
    assert!(
        out.status.success(),
        "building libiscsi-load failed ({INSTALL}):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    binary
}

/// Runs the client on the target at `addr` with the arguments after PORTAL IQN; it must succeed.
/// Its stdout.
async fn run(binary: &Path, addr: &str, args: [&str; 7]) -> String {
    let out = Command::new(binary).arg(addr).arg(TARGET).args(args).kill_on_drop(true).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{args:?}: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn number(json: &serde_json::Value, key: &str) -> f64 {
    json.get(key).and_then(|v| v.as_f64()).unwrap_or_else(|| panic!("no {key} in {json}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libiscsi_load_writes_and_reads_through_every_session_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let binary = build(dir.path()).await;
    let t = start(memory_config("")).await;
    for pattern in ["randwrite", "seqwrite", "randread"] {
        let stdout = run(&binary, &t.addr.to_string(), ["1", pattern, "4096", "4", "3", "1", "7"]).await;
        let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        assert_eq!(number(&json, "errors"), 0.0, "{pattern}: {json}");
        assert!(
            number(&json, "ios") >= 12.0,
            "{pattern}: 3 sessions x QD4 completed at least their first commands: {json}"
        );
        assert!(number(&json, "lat_p50_us") > 0.0 && number(&json, "lat_p99_us") >= number(&json, "lat_p50_us"));
        // One thread: its CPU time over the run is some of one CPU's (rounding aside).
        let cpu = number(&json, "client_cpu");
        assert!(cpu > 0.0 && cpu <= 1.05, "{pattern}: client CPU {cpu} of one CPU: {json}");
    }
    // The sequential writes started at LBA 0 with the client's payload: the LU holds data there.
    let session = t.login(&rtgt_testkit::initiator::InitiatorConfig::default()).await;
    // A fresh nexus may first see a unit attention (key 6); the read after it returns data.
    let first = match session.read(1, 0, 8, common::BS).await {
        Ok(data) => data,
        Err(_) => session.read(1, 0, 8, common::BS).await.unwrap(),
    };
    assert!(first.iter().any(|&b| b != 0), "the first 4 KiB the client wrote read back as zeros");
}

/// The idle pattern (what idle sessions cost): every session logs in, the client says so on its
/// first line, then it sends no command until it logs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libiscsi_load_idle_logs_in_every_session_and_sends_no_command() {
    let dir = tempfile::tempdir().unwrap();
    let binary = build(dir.path()).await;
    let t = start(memory_config("")).await;
    let stdout = run(&binary, &t.addr.to_string(), ["1", "idle", "4096", "1", "4", "1", "0"]).await;
    let (first, result) = stdout.split_once('\n').unwrap_or_else(|| panic!("one line only: {stdout}"));
    assert_eq!(first, "logged in");
    let json: serde_json::Value = serde_json::from_str(result.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!((number(&json, "ios"), number(&json, "errors")), (0.0, 0.0), "{json}");
}
