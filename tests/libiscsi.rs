//! Real initiators: libiscsi's command-line tools against an in-process target. These need
//! the Debian package libiscsi-bin and fail (not skip) when it is missing.

mod common;

use std::time::Duration;

use common::{TARGET, memory_config, start};
use tokio::process::Command;

async fn run(tool: &str, args: &[&str], timeout: Duration) -> String {
    let mut cmd = Command::new(tool);
    cmd.args(args).kill_on_drop(true);
    let output = match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => panic!("cannot run {tool}: {e} (install libiscsi-bin: apt-get install -y libiscsi-bin)"),
        Err(_) => panic!("{tool} {args:?} did not finish within {timeout:?}"),
    };
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{tool} {args:?} failed: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iscsi_ls_inq_and_readcapacity16() {
    let t = start(memory_config("")).await;
    let ls = run("iscsi-ls", &["-s", &format!("iscsi://{}", t.addr)], Duration::from_secs(30)).await;
    assert!(ls.contains(&format!("Target:{TARGET} Portal:{},1", t.addr)), "{ls}");
    assert!(ls.contains("Lun:0") && ls.contains("Lun:1"), "{ls}");

    let inq = run("iscsi-inq", &[&t.url(1)], Duration::from_secs(30)).await;
    assert!(inq.contains("Vendor:RTGT") && inq.contains("Version Descriptor:04c0 SBC-3"), "{inq}");
    let vpd = run("iscsi-inq", &["-e", "1", "-c", "176", &t.url(1)], Duration::from_secs(30)).await;
    assert!(vpd.contains("maximum unmap block descriptor count:256"), "{vpd}");

    let url = format!("{}?header_digest=crc32c", t.url(1));
    let cap = run("iscsi-readcapacity16", &[&url], Duration::from_secs(30)).await;
    assert!(cap.contains("Total size:67108864") && cap.contains("LBPME:1"), "{cap}");
}

/// libiscsi's iscsi-perf sends a NOP-Out every few seconds between its commands; a target
/// that loses the command after it stalls. Twelve seconds cover two NOP-Outs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iscsi_perf_runs_through_nop_outs_without_stalling() {
    let t = start(memory_config("")).await;
    let out = run("iscsi-perf", &["-m", "32", "-b", "8", "-r", "-t", "12", &t.url(1)], Duration::from_secs(40)).await;
    let average = out.rsplit("iops average ").next().and_then(|s| s.split_whitespace().next()).unwrap_or("0");
    let iops: u64 = average.parse().unwrap_or(0);
    assert!(out.contains("finished") && iops > 0, "{out}");
}
