//! Running rtgt as a service: systemd's notification protocol (READY only once the target
//! serves, STOPPING at shutdown), JSON log lines, shell completions and man pages.

// A thread reads the child's log as it comes; nothing here runs under the simulation.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_rtgt");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The next notification, or None if none came within a minute.
fn next_notification(socket: &UnixDatagram) -> Option<String> {
    socket.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// `rtgt serve` under a service manager of our own: READY=1 comes once the portal accepts
/// (after the LUNs' first open), WATCHDOG=1 while it runs, STOPPING=1 at SIGTERM; its JSON log
/// lines parse.
#[test]
fn serve_tells_systemd_when_it_is_ready_alive_and_stopping_and_logs_json() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify).unwrap();
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "serve", "--api-listen", "off", "--s3-listen", "off"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "200000")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read its log as it comes: a full pipe would stop it.
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let log = std::thread::spawn(move || stderr.lines().map(|l| l.unwrap()).collect::<Vec<String>>());
    let ready = next_notification(&socket);
    assert_eq!(ready.as_deref(), Some("READY=1"));
    TcpStream::connect(("127.0.0.1", port)).expect("the portal accepts once READY=1 is sent");
    // With WATCHDOG_USEC, pings every half interval while the engine runs.
    assert_eq!(next_notification(&socket).as_deref(), Some("WATCHDOG=1"));
    // SAFETY: kill only sends a signal to the child we started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let stopping = std::iter::from_fn(|| next_notification(&socket)).find(|n| n != "WATCHDOG=1");
    assert_eq!(stopping.as_deref(), Some("STOPPING=1"));
    assert!(child.wait().unwrap().success());
    let json: Vec<serde_json::Value> = log
        .join()
        .unwrap()
        .into_iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect();
    assert!(!json.is_empty(), "no JSON log line");
    for line in &json {
        for field in ["timestamp", "level", "target", "fields"] {
            assert!(line.get(field).is_some(), "{field} missing in {line}");
        }
        assert!(line["fields"]["message"].is_string(), "no message in {line}");
        assert!(line["target"].as_str().is_some_and(|t| t.starts_with("rtgt")), "the module: {line}");
    }
    // An event's own `target` (the IQN) stays apart from the line's (the module).
    let added = json.iter().find(|l| l["fields"]["message"] == "target added").expect("a target added line");
    assert_eq!(added["fields"]["target"], "iqn.2026-11.dev.rtgt:default");
}

/// Plain log lines written to a pipe (journald, `docker logs`, a file) carry no colour codes;
/// a SIGTERM as soon as the target is added, while its LUN may still be opening, stops it
/// cleanly (it used to come before the handler and kill the process).
#[test]
fn plain_logs_off_a_terminal_carry_no_escape_codes_and_an_early_sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["serve", "--api-listen", "off", "--s3-listen", "off"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines().map(|l| l.unwrap());
    let seen: Vec<String> = lines.by_ref().take_while(|l| !l.contains("target added")).collect();
    // SAFETY: kill only sends a signal to the child we started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let rest: Vec<String> = lines.collect();
    assert!(child.wait().unwrap().success());
    assert!(rest.iter().any(|l| l.contains("INFO")), "log lines after the target was added: {rest:?}");
    for line in seen.iter().chain(&rest) {
        assert!(!line.contains('\u{1b}'), "an escape code in {line:?}");
    }
}

/// Completions for every shell name the subcommands; a man page per subcommand.
#[test]
fn completions_and_man_pages_cover_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN).args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        for sub in ["serve", "volume", "export", "completions", "lun"] {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).args(["man", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for page in ["rtgt", "rtgt-serve", "rtgt-volume", "rtgt-volume-import", "rtgt-lun-create", "rtgt-man"] {
        let text = std::fs::read_to_string(dir.path().join(format!("{page}.1"))).unwrap_or_default();
        assert!(text.contains(".TH") && text.contains(".SH NAME"), "{page}.1 is not a man page");
    }
}

/// The build the tests, the simulation, conformance and the package use is the one users get:
/// the simulator's planted bugs (its `mutants` feature) are never unified into it.
#[test]
fn the_tested_build_carries_no_planted_bugs() {
    // Read at run time: the constant is what the build under test was compiled with.
    let planted_bugs_built_in = std::hint::black_box(rtgt::mutants::ENABLED);
    assert!(!planted_bugs_built_in, "rtgt was built with the mutants feature: what enables it by default?");
}
