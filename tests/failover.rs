//! A failover pair with real processes: `rtgt s3-server` as the shared store, and two `rtgt
//! serve` (A through portal group 1, B through portal group 2) serving one S3 volume with
//! `failover = true`. A serves; B is its standby (ALUA standby, NOT READY 04/0B). An initiator
//! registers and reserves through A and writes; A is killed with SIGKILL; B takes over within
//! the lease, with every write A acknowledged as durable and the reservation; A, restarted, is
//! the standby. Needs nothing but the rtgt binary.
// These tests drive real processes: deadlines are wall-clock time.
#![allow(clippy::disallowed_methods)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtgt_testkit::initiator::{CommandResult, InitiatorConfig, Session};

const BIN: &str = env!("CARGO_BIN_EXE_rtgt");
const TARGET: &str = "iqn.2026-12.dev.rtgt:pair";
const LUN: u16 = 1;
const BLOCK: usize = 512;
/// B's open attempts watch A's lease for a lease's length (30 s) before they find it renewed.
const STANDBY_BOUND: Duration = Duration::from_secs(60);
/// A's lease waited out (30 s and a request's lifetime), B's backoff between attempts (up to
/// 10 s), its recovery.
const TAKEOVER_BOUND: Duration = Duration::from_secs(90);
const KEY: u64 = 0xabc0_0001;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A child process, killed (SIGKILL) when dropped.
struct Proc(Child);

impl Proc {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Pair {
    dir: tempfile::TempDir,
    s3_port: u16,
    _s3: Proc,
}

impl Pair {
    fn log(&self) -> std::fs::File {
        let path = self.dir.path().join("pair.log");
        std::fs::OpenOptions::new().create(true).append(true).open(path).expect("log")
    }

    fn start() -> Pair {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir_all(dir.path().join("s3/vols")).expect("bucket");
        let s3_port = free_port();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.path().join("pair.log")).unwrap();
        let s3 = Proc(
            Command::new(BIN)
                .args(["s3-server", "--listen", &format!("127.0.0.1:{s3_port}"), "--root"])
                .arg(dir.path().join("s3"))
                .args(["--access-key", "pair-test", "--secret-key", "env:RTGT_TEST_S3_SECRET"])
                .env("RTGT_TEST_S3_SECRET", "pair-test-secret")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start rtgt s3-server"),
        );
        Pair { dir, s3_port, _s3: s3 }
    }

    /// The configuration of one node: its own data directory and portal group.
    fn config(&self, node: &str, tag: u16, portal: SocketAddr) -> PathBuf {
        let data = self.dir.path().join(node);
        std::fs::create_dir_all(&data).expect("data dir");
        let text = format!(
            "[server]\ndata_dir = {:?}\n\n[api]\nlisten = \"off\"\n\n[[portal_group]]\ntag = {tag}\nportals = [\"{portal}\"]\n\n\
             [[target]]\nname = \"{TARGET}\"\n\n[[target.lun]]\nlun = {LUN}\nbackend = \"s3\"\nurl = \"s3://vols/pair\"\n\
             endpoint = \"http://127.0.0.1:{}\"\nregion = \"us-east-1\"\naccess_key_id = \"pair-test\"\n\
             secret_access_key = \"pair-test-secret\"\nsize = \"16MiB\"\ncreate = true\nfailover = true\n",
            data.display().to_string(),
            self.s3_port
        );
        let path = data.join("rtgt.toml");
        std::fs::write(&path, text).expect("config");
        path
    }

    fn serve(&self, config: &Path) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"]).arg(config).env("RUST_LOG", "info").stdout(Stdio::null()).stderr(self.log());
        Proc(cmd.spawn().expect("start rtgt serve"))
    }
}

async fn login(portal: SocketAddr, isid: u64) -> Option<Session> {
    let stream = tokio::net::TcpStream::connect(portal).await.ok()?;
    let config = InitiatorConfig { isid, ..InitiatorConfig::default() };
    Session::login(stream, &config, Some(TARGET)).await.ok()
}

/// A logged-in session, retried until `bound`.
async fn session(portal: SocketAddr, isid: u64, bound: Duration) -> Session {
    let started = Instant::now();
    loop {
        if let Some(s) = login(portal, isid).await {
            return s;
        }
        assert!(started.elapsed() < bound, "no login to {portal} within {bound:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn read16(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x88;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// The asymmetric access state REPORT TARGET PORT GROUPS gives for the path's own group.
async fn access_state(s: &Session, tag: u16) -> u8 {
    let rtpg = [0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    let r = s.command(LUN, &rtpg, Bytes::new(), 256).await.expect("RTPG").ok().expect("RTPG GOOD");
    let groups = &r.data[4..];
    let group = groups.chunks(12).find(|g| u16::from_be_bytes([g[2], g[3]]) == tag).expect("the path's group");
    group[0] & 0x0f
}

/// Waits until a read through `s` answers as `want` does.
async fn wait_for(s: &Session, bound: Duration, what: &str, want: impl Fn(&CommandResult) -> bool) {
    let started = Instant::now();
    loop {
        let r = s.command(LUN, &read16(0, 1), Bytes::new(), BLOCK as u32).await.expect("a read");
        if want(&r) {
            return;
        }
        assert!(started.elapsed() < bound, "{what}: not within {bound:?} (last: {:?})", r.sense_code());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn standby(r: &CommandResult) -> bool {
    r.sense_code() == Some((0x2, 0x04, 0x0b))
}

/// PERSISTENT RESERVE OUT with a basic parameter list.
async fn prout(s: &Session, action: u8, kind: u8, key: u64, sark: u64) -> u8 {
    let cdb = [0x5f, action, kind, 0, 0, 0, 0, 0, 24, 0];
    let mut data = vec![0u8; 24];
    data[0..8].copy_from_slice(&key.to_be_bytes());
    data[8..16].copy_from_slice(&sark.to_be_bytes());
    s.command(LUN, &cdb, Bytes::from(data), 0).await.expect("PR OUT").status
}

fn pattern(lba: u64) -> Bytes {
    Bytes::from((0..BLOCK).map(|i| (lba as usize * 7 + i) as u8).collect::<Vec<u8>>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_pair_hands_over_writes_and_reservations_when_the_active_node_dies() {
    let pair = Pair::start();
    let (portal_a, portal_b): (SocketAddr, SocketAddr) =
        (format!("127.0.0.1:{}", free_port()).parse().unwrap(), format!("127.0.0.1:{}", free_port()).parse().unwrap());
    let config_a = pair.config("a", 1, portal_a);
    let mut a = pair.serve(&config_a);
    let via_a = session(portal_a, 0x1, Duration::from_secs(30)).await;
    wait_for(&via_a, Duration::from_secs(30), "A serves", |r| r.status == 0).await;
    let _b = pair.serve(&pair.config("b", 2, portal_b));
    let via_b = session(portal_b, 0x2, Duration::from_secs(30)).await;
    wait_for(&via_b, STANDBY_BOUND, "B is the standby", standby).await;
    assert_eq!(access_state(&via_b, 2).await, 2, "B's path reports standby");
    assert_eq!(access_state(&via_a, 1).await, 0, "A's path reports active/optimized");

    // Through A: a registration and a reservation (write exclusive, registrants only), FUA
    // writes, plain writes made durable by SYNCHRONIZE CACHE, and plain writes that are not.
    via_a.clear_unit_attentions(LUN).await.unwrap();
    assert_eq!(prout(&via_a, 0, 0, 0, KEY).await, 0, "REGISTER");
    assert_eq!(prout(&via_a, 1, 5, KEY, 0).await, 0, "RESERVE");
    for lba in 0..64 {
        via_a.write(LUN, lba, pattern(lba), BLOCK as u32, true).await.expect("a FUA write");
    }
    for lba in 64..128 {
        via_a.write(LUN, lba, pattern(lba), BLOCK as u32, false).await.expect("a plain write");
    }
    via_a.flush(LUN).await.expect("SYNCHRONIZE CACHE");
    for lba in 128..136 {
        via_a.write(LUN, lba, pattern(lba), BLOCK as u32, false).await.expect("a plain write");
    }
    a.kill();
    let killed = Instant::now();

    // B takes over: through its path, the first thing served comes within the bound.
    wait_for(&via_b, TAKEOVER_BOUND, "B takes over", |r| r.status == 0 || r.sense_code().is_some_and(|c| c.0 == 0x6))
        .await;
    eprintln!("B served {:?} after A was killed", killed.elapsed());
    via_b.clear_unit_attentions(LUN).await.unwrap();
    assert_eq!(access_state(&via_b, 2).await, 0, "B's path is active/optimized now");
    let data = via_b.read(LUN, 0, 128, BLOCK as u32).await.expect("read back");
    for lba in 0..128u64 {
        let got = &data[lba as usize * BLOCK..(lba as usize + 1) * BLOCK];
        assert_eq!(got, &pattern(lba)[..], "block {lba}, acknowledged as durable through A");
    }
    // The reservation came with the volume: B's nexus is not registered, so it may read but
    // not write, until it registers with the key (as multipathd does on a path that comes up).
    let keys = via_b.command(LUN, &[0x5e, 0, 0, 0, 0, 0, 0, 0, 64, 0], Bytes::new(), 64).await.unwrap();
    assert_eq!(&keys.data[8..16], &KEY.to_be_bytes(), "READ KEYS through B shows A's registration");
    let refused = via_b.write(LUN, 200, pattern(200), BLOCK as u32, false).await;
    assert!(refused.is_err(), "write exclusive, registrants only: B's unregistered nexus conflicts");
    assert_eq!(prout(&via_b, 0, 0, 0, KEY).await, 0, "REGISTER through B");
    via_b.write(LUN, 200, pattern(200), BLOCK as u32, true).await.expect("a registrant writes");

    // A, restarted with the same command, finds B's lease renewed: it is the standby now.
    let _a = pair.serve(&config_a);
    let via_a = session(portal_a, 0x1, Duration::from_secs(30)).await;
    wait_for(&via_a, STANDBY_BOUND, "A, restarted, is the standby", standby).await;
    via_b.logout().await.unwrap();
    let _ = via_a.logout().await;
}
