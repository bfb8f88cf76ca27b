//! Hostile initiators: what one client can make the target hold is bounded, and the target
//! keeps serving others.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{TARGET, memory_config, start};
use rtgt::pdu::{self, Bhs, Digests, Pdu};
use rtgt::scsi::encode_lun;
use rtgt::scsi::{LogicalUnit, LuConfig, LuIdentity};
use rtgt::storage::{BlockStore, BoxFuture, StoreCaps, StoreResult};
use rtgt_testkit::initiator::rw16;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: u64 = 1 << 20;

/// A connection driven by hand: raw PDUs out, decoded PDUs in.
struct Raw {
    stream: TcpStream,
    /// Bytes read but not decoded yet (the start of the next PDU).
    buf: bytes::BytesMut,
}

impl Raw {
    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next PDU, or None if the target closed the connection.
    async fn next(&mut self) -> Option<Pdu> {
        let limits = pdu::Limits { data_segment_len_max: 16 << 20 };
        loop {
            if let Some(p) = Pdu::decode(&mut self.buf, Digests::default(), limits).unwrap() {
                return Some(p);
            }
            let read = self.stream.read_buf(&mut self.buf);
            let n = tokio::time::timeout(Duration::from_secs(10), read).await.unwrap().ok()?;
            if n == 0 {
                return None;
            }
        }
    }
}

/// Logs in by hand (one operational stage) on a raw stream.
async fn raw_login(addr: SocketAddr, initiator: &str, isid: u64) -> Raw {
    raw_login_with(addr, initiator, isid, &[]).await
}

/// Logs in by hand, offering `offers` besides the names.
async fn raw_login_with(addr: SocketAddr, initiator: &str, isid: u64, offers: &[(&str, &str)]) -> Raw {
    raw_login_on(TcpStream::connect(addr).await.unwrap(), initiator, isid, offers).await
}

/// Logs in by hand on a connected stream.
async fn raw_login_on(stream: TcpStream, initiator: &str, isid: u64, offers: &[(&str, &str)]) -> Raw {
    let mut raw = Raw { stream, buf: bytes::BytesMut::new() };
    let mut keys = vec![("InitiatorName", initiator), ("TargetName", TARGET)];
    keys.extend_from_slice(offers);
    let keys = pdu::text::encode(&keys);
    let login = pdu::LoginRequest { transit: true, csg: 1, nsg: 3, isid, cmd_sn: 1, ..Default::default() };
    raw.send(&Pdu::with_data(login, keys).encode(Digests::default()).to_vec()).await;
    let resp = raw.next().await.expect("a login response");
    assert!(matches!(resp.bhs, Bhs::LoginResponse(r) if r.status_class == 0 && r.transit), "{resp:?}");
    raw
}

/// READ(16) of `blocks` at LBA 0 of LUN 1, expecting `edtl` bytes.
fn read16(itt: u32, cmd_sn: u32, blocks: u32, edtl: u32) -> Vec<u8> {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x88;
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    let cmd = pdu::ScsiCommand {
        fin: true,
        read: true,
        lun: encode_lun(1),
        itt,
        expected_data_len: edtl,
        cmd_sn,
        cdb,
        ..Default::default()
    };
    Pdu::new(cmd).encode(Digests::default()).to_vec()
}

/// WRITE(16) of `blocks` at LBA 0 of LUN 1, all its data immediate.
fn write16_immediate(itt: u32, cmd_sn: u32, blocks: u32) -> Vec<u8> {
    write16(itt, cmd_sn, blocks, true)
}

/// WRITE(16) of `blocks` at LBA 0 of LUN 1 with no data: the target asks for it (R2T).
fn write16_solicited(itt: u32, cmd_sn: u32, blocks: u32) -> Vec<u8> {
    write16(itt, cmd_sn, blocks, false)
}

fn write16(itt: u32, cmd_sn: u32, blocks: u32, immediate: bool) -> Vec<u8> {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x8a;
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    let len = blocks * 512;
    let cmd = pdu::ScsiCommand {
        fin: true,
        write: true,
        lun: encode_lun(1),
        itt,
        expected_data_len: len,
        cmd_sn,
        cdb,
        ..Default::default()
    };
    let data = if immediate { vec![0x5a; len as usize] } else { Vec::new() };
    Pdu::with_data(cmd, bytes::Bytes::from(data)).encode(Digests::default()).to_vec()
}

/// The peak resident set of this process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

async fn until(what: &str, done: impl FnMut() -> bool) {
    within(Duration::from_secs(30), what, done).await
}

async fn within(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..limit.as_millis() / 10 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// 128 READs of 64 MiB each, expecting 512 bytes: each reads what it delivers (512 bytes), not
/// what its CDB asks for, and reports the rest as an overflow residual.
#[tokio::test]
async fn reads_with_tiny_expected_lengths_allocate_what_they_deliver() {
    let t = start(memory_config("")).await;
    let before = peak_rss();
    let mut raw = raw_login(t.addr, "iqn.2026-12.dev.rtgt:flood", 1).await;
    let mut burst = Vec::new();
    for i in 0..128u32 {
        burst.extend(read16(i + 1, 1 + i, 131_072, 512));
    }
    raw.send(&burst).await;
    let sessions = t.server.registry.sessions();
    let stats = sessions[0].stats.clone();
    until("128 commands", || stats.commands.load(Ordering::Relaxed) == 128).await;
    // The first answer is the power-on unit attention; every other one carried 512 bytes.
    assert!(stats.bytes_read.load(Ordering::Relaxed) <= 128 * 512, "{:?}", stats.bytes_read);
    let grown = peak_rss().saturating_sub(before);
    assert!(grown < 512 * MIB, "the peak resident set grew by {} MiB", grown / MIB);
    let mut overflow_seen = false;
    while let Some(p) = raw.next().await {
        if let Bhs::DataIn(d) = &p.bhs {
            assert_eq!(p.data.len(), 512);
            assert!(d.overflow && d.residual == 64 * MIB as u32 - 512, "{d:?}");
            overflow_seen = true;
            break;
        }
    }
    assert!(overflow_seen);
}

/// A client that asks for data and never reads it: its responses stay charged to the I/O memory
/// pool, which they cannot outgrow; the target drops it once it makes no progress for the NOP
/// timeout, and the pool is whole again. Another session is served meanwhile.
#[tokio::test]
async fn a_client_that_never_reads_is_bounded_then_dropped() {
    let t = start(memory_config("io_memory_max = 67108864\nnop_timeout_secs = 2\nnop_interval_secs = 1")).await;
    let memory = t.server.settings.conn.memory.pool().clone();
    let mut raw = raw_login(t.addr, "iqn.2026-12.dev.rtgt:sink", 1).await;
    let mut burst = Vec::new();
    for i in 0..128u32 {
        burst.extend(read16(i + 1, 1 + i, 2048, MIB as u32));
    }
    raw.send(&burst).await;
    until("the pool to fill", || memory.used() >= 32 * MIB).await;
    // Meanwhile a polite session gets its reads (it waits for the pool, within its timeout).
    let s = t.ready_session(9).await;
    let data = s.read(1, 0, 8, 512).await.unwrap();
    assert_eq!(data.len(), 4096);
    assert!(memory.peak() <= 64 * MIB + MIB, "the pool peaked at {} MiB", memory.peak() / MIB);
    // The sink is dropped, and what it held is released.
    until("the sink to be dropped", || t.server.registry.sessions().len() == 1).await;
    until("the pool to drain", || memory.used() == 0).await;
    drop(raw);
}

/// Connections over the per-address bound are closed before anything is read.
#[tokio::test]
async fn connections_beyond_the_per_address_bound_are_refused() {
    let t = start(memory_config("max_connections_per_address = 4")).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(t.addr).await.unwrap());
    }
    until("four admitted", || t.server.admission.counts() == (4, 4)).await;
    let mut refused = TcpStream::connect(t.addr).await.unwrap();
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), refused.read(&mut byte)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "closed at once");
    drop(held);
    until("all released", || t.server.admission.counts() == (0, 0)).await;
    let s = t.ready_session(3).await;
    s.logout().await.unwrap();
}

/// A connection from `source` (another loopback address, so that per-address bounds apply to
/// it alone).
async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Closed by the target, or still open: reads one byte with a short wait.
async fn closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(tokio::time::timeout(Duration::from_millis(500), stream.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
}

/// Login slow-loris: one address opening connections that never log in holds at most its
/// share of the login slots; others log in meanwhile; when the login timeout passes, the slots
/// are free again.
#[tokio::test]
async fn connections_that_never_log_in_cannot_lock_others_out() {
    let t = start(memory_config("max_connections_per_address = 8\nmax_logins_in_progress = 12")).await;
    let mut loris = Vec::new();
    for _ in 0..8 {
        loris.push(connect_from("127.0.0.2", t.addr).await);
    }
    until("eight logins in progress", || t.server.admission.counts() == (8, 8)).await;
    let mut ninth = connect_from("127.0.0.2", t.addr).await;
    assert!(closed(&mut ninth).await, "a ninth from the same address is refused");
    // Another address still gets in, and logs in.
    let s = t.ready_session(5).await;
    assert_eq!(t.server.admission.counts(), (9, 8));
    s.logout().await.unwrap();
    for l in &mut loris {
        assert!(!closed(l).await, "idle logins are kept until the login timeout");
    }
}

/// Thousands of connection attempts from one address: the target holds at most its bound and
/// keeps serving.
#[tokio::test]
async fn a_connection_flood_is_bounded() {
    let t = start(memory_config("max_connections_per_address = 32")).await;
    let mut held = Vec::new();
    for _ in 0..2000 {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(t.addr)).await {
            held.push(s);
        }
    }
    until("the flood admitted up to its bound", || t.server.admission.counts().0 == 32).await;
    assert!(t.server.admission.counts().0 <= 32);
    let stream = connect_from("127.0.0.3", t.addr).await;
    let config = rtgt_testkit::initiator::InitiatorConfig { isid: 6, ..Default::default() };
    let s =
        rtgt_testkit::initiator::Session::login(stream, &config, Some(TARGET)).await.expect("another address logs in");
    s.logout().await.unwrap();
    drop(held);
    until("all released", || t.server.admission.counts() == (0, 0)).await;
}

/// One address cannot take the whole I/O memory pool, however much it asks for: a client at
/// 127.0.0.2 announces 16 MiB of writes and never sends their data, which would hold the
/// whole 16 MiB pool until the data-out timeout; it gets its half (8 writes asked for), and
/// a client at 127.0.0.1 is served meanwhile.
#[tokio::test]
async fn one_address_holds_at_most_its_share_of_the_pool() {
    let t = start(memory_config("io_memory_max = 16777216\nmax_transfer_bytes = 1048576")).await;
    let pool = t.server.settings.conn.memory.pool().clone();
    let hoarder = connect_from("127.0.0.2", t.addr).await;
    let mut hoarder = raw_login_on(hoarder, "iqn.2026-12.dev.rtgt:hoarder", 1, &[]).await;
    let hoarders_share = pool.account_for("127.0.0.2".parse().unwrap());
    let mut burst = Vec::new();
    for i in 0..16u32 {
        burst.extend(write16_solicited(i + 1, i + 1, 2048));
    }
    hoarder.send(&burst).await;
    let mut asked = 0;
    while asked < 8 {
        if let Bhs::R2t(_) = hoarder.next().await.expect("an R2T").bhs {
            asked += 1;
        }
    }
    until("the hoarder's share to be held", || hoarders_share.held() == 8 * MIB).await;
    let s = t.ready_session(9).await;
    let data = s.read(1, 0, 2048, 512).await.unwrap();
    assert_eq!(data.len(), MIB as usize);
    assert_eq!(hoarders_share.held(), 8 * MIB, "served while the hoarder still holds its share, and no more");
    s.logout().await.unwrap();
    drop(hoarder);
    until("all released", || pool.used() == 0).await;
}

/// Unsolicited data arrives whether or not there is room for it. 127 writes bring 256 KiB of
/// immediate data each (32 MiB) and are held behind a CmdSN gap, so none runs: what is kept of
/// their data stays within the 4 MiB pool, the writes beyond it are answered TASK SET FULL
/// (which initiators retry), and the others run once the gap is filled.
#[tokio::test]
async fn unsolicited_data_beyond_the_pool_is_refused_not_buffered() {
    // One client: its address may use the whole pool.
    let config = "io_memory_max = 4194304\nio_memory_per_address_max = 4194304\nmax_transfer_bytes = 1048576";
    let t = start(memory_config(config)).await;
    let memory = t.server.settings.conn.memory.pool().clone();
    let offers = [
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("FirstBurstLength", "262144"),
        ("MaxBurstLength", "262144"),
        ("MaxRecvDataSegmentLength", "262144"),
    ];
    let mut raw = raw_login_with(t.addr, "iqn.2026-12.dev.rtgt:unsolicited", 1, &offers).await;
    let writes = 127u32;
    let mut burst = Vec::new();
    for i in 0..writes {
        burst.extend(write16_immediate(i + 2, i + 2, 512));
    }
    raw.send(&burst).await;
    // Fill the gap with TEST UNIT READY (CmdSN 1): everything may run now.
    let tur = pdu::ScsiCommand { fin: true, lun: encode_lun(1), itt: 1, cmd_sn: 1, ..Default::default() };
    raw.send(&Pdu::new(tur).encode(Digests::default()).to_vec()).await;
    // The first command to run reports the power-on unit attention (CHECK CONDITION).
    let (mut good, mut full, mut attention) = (0, 0, 0);
    while good + full + attention < writes {
        let p = raw.next().await.expect("a response");
        match p.bhs {
            Bhs::ScsiResponse(r) if r.itt >= 2 => match r.status {
                0 => good += 1,
                0x28 => full += 1,
                _ => {
                    assert_eq!((r.status, attention), (2, 0), "one unit attention, else GOOD or TASK SET FULL");
                    attention += 1;
                }
            },
            _ => {}
        }
    }
    // (Responses waiting for the socket are charged too: 48 bytes each.)
    assert!(memory.peak() <= 4 * MIB + 64 * 1024, "the pool peaked at {} KiB", memory.peak() >> 10);
    assert!(good + attention >= 15, "the writes that fit the pool ran ({good})");
    assert!(full >= writes - 16, "the writes beyond the pool were refused ({full})");
}

/// A store whose reads never finish (a disk that hangs, a store that is away), counting the
/// reads it was asked for and the ones that were given up (their futures dropped).
struct HangingReads {
    started: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

struct CountDrop(Arc<AtomicUsize>);

impl Drop for CountDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl BlockStore for HangingReads {
    fn describe(&self) -> String {
        "hanging reads".into()
    }
    fn capacity(&self) -> u64 {
        64 * MIB
    }
    fn caps(&self) -> StoreCaps {
        StoreCaps {
            thin: false,
            volatile_cache: false,
            unmap_granularity: 512,
            optimal_transfer: 0,
            atomic_write_max: 0,
        }
    }
    fn read(&self, _offset: u64, _len: usize) -> BoxFuture<'_, StoreResult<bytes::Bytes>> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let dropped = CountDrop(self.dropped.clone());
        Box::pin(async move {
            let _dropped = dropped;
            std::future::pending().await
        })
    }
    fn write(&self, _offset: u64, _data: bytes::Bytes, _fua: bool) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async { Ok(()) })
    }
    fn flush(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async { Ok(()) })
    }
    fn unmap(&self, _offset: u64, _len: u64) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// Reads that wait on storage when their initiator goes away are cancelled: their buffers go
/// back to the pool and the session is released at once, not after the reads end (a read
/// waiting out an S3 outage could hold its buffer for long).
#[tokio::test]
async fn reads_of_a_vanished_initiator_are_cancelled() {
    let t = start(memory_config("")).await;
    let memory = t.server.settings.conn.memory.pool().clone();
    let (started, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let store = HangingReads { started: started.clone(), dropped: dropped.clone() };
    let lu = LogicalUnit::new(Arc::new(store), LuConfig::new(512, LuIdentity::derived("hanging"))).unwrap();
    t.server.registry.target(TARGET).unwrap().scsi.replace_lun(1, Arc::new(lu));
    let mut raw = raw_login(t.addr, "iqn.2026-12.dev.rtgt:vanishing", 1).await;
    // The first command takes the power-on unit attention.
    let tur = pdu::ScsiCommand { fin: true, lun: encode_lun(1), itt: 100, cmd_sn: 1, ..Default::default() };
    raw.send(&Pdu::new(tur).encode(Digests::default()).to_vec()).await;
    raw.next().await.expect("the unit attention");
    let mut burst = Vec::new();
    for i in 0..16u32 {
        burst.extend(read16(i + 1, 2 + i, 2048, MIB as u32));
    }
    raw.send(&burst).await;
    within(Duration::from_secs(10), "the reads to reach the store", || started.load(Ordering::SeqCst) == 16).await;
    assert_eq!(memory.used(), 16 * MIB, "each read holds its buffer");
    drop(raw);
    within(Duration::from_secs(10), "the session to be released", || t.server.registry.sessions().is_empty()).await;
    assert_eq!(dropped.load(Ordering::SeqCst), 16, "every read was cancelled");
    assert_eq!(memory.used(), 0);
}

/// A login admitted to one target names another in its operational stage: it is refused and
/// no session exists on either (the guarded target would have refused this initiator).
#[tokio::test]
async fn a_login_cannot_switch_to_another_target() {
    let guarded = "iqn.2026-12.dev.rtgt:guarded";
    let mut config = memory_config("");
    let mut other = rtgt::config::TargetConfig::new(guarded);
    other.allowed_initiators = Some(vec!["iqn.2026-12.dev.rtgt:someone-else".into()]);
    config.targets.push(other);
    let t = start(config).await;
    let mut raw = Raw { stream: TcpStream::connect(t.addr).await.unwrap(), buf: bytes::BytesMut::new() };
    let keys = pdu::text::encode(&[
        ("InitiatorName", "iqn.2026-12.dev.rtgt:switcher"),
        ("TargetName", TARGET),
        ("AuthMethod", "None"),
    ]);
    let security = pdu::LoginRequest { transit: true, csg: 0, nsg: 1, isid: 5, cmd_sn: 1, ..Default::default() };
    raw.send(&Pdu::with_data(security, keys).encode(Digests::default()).to_vec()).await;
    let resp = raw.next().await.expect("a login response");
    assert!(matches!(resp.bhs, Bhs::LoginResponse(r) if r.status_class == 0), "{resp:?}");
    let keys = pdu::text::encode(&[("TargetName", guarded)]);
    let operational = pdu::LoginRequest { transit: true, csg: 1, nsg: 3, isid: 5, cmd_sn: 1, ..Default::default() };
    raw.send(&Pdu::with_data(operational, keys).encode(Digests::default()).to_vec()).await;
    let resp = raw.next().await.expect("a login response");
    assert!(matches!(resp.bhs, Bhs::LoginResponse(r) if r.status_class == 2), "refused: {resp:?}");
    assert!(t.server.registry.sessions().is_empty());
    // A polite session is served meanwhile.
    let s = t.ready_session(9).await;
    assert_eq!(s.read(1, 0, 1, 512).await.unwrap().len(), 512);
}

/// A store with a bug: reading panics. Writes and the rest go to memory.
struct PanicsOnRead(rtgt::storage::MemoryStore);

impl BlockStore for PanicsOnRead {
    fn describe(&self) -> String {
        "panics on read".into()
    }
    fn capacity(&self) -> u64 {
        self.0.capacity()
    }
    fn caps(&self) -> StoreCaps {
        self.0.caps()
    }
    fn read(&self, _offset: u64, _len: usize) -> BoxFuture<'_, StoreResult<bytes::Bytes>> {
        Box::pin(async { panic!("a bug in a read") })
    }
    fn write(&self, offset: u64, data: bytes::Bytes, fua: bool) -> BoxFuture<'_, StoreResult<()>> {
        self.0.write(offset, data, fua)
    }
    fn flush(&self) -> BoxFuture<'_, StoreResult<()>> {
        self.0.flush()
    }
    fn unmap(&self, offset: u64, len: u64) -> BoxFuture<'_, StoreResult<()>> {
        self.0.unmap(offset, len)
    }
}

/// A command whose handler panics is answered HARDWARE ERROR / INTERNAL TARGET FAILURE, and
/// its session and the target go on serving.
#[tokio::test]
async fn a_panicking_command_is_answered_and_the_session_goes_on() {
    let t = start(memory_config("")).await;
    let store = PanicsOnRead(rtgt::storage::MemoryStore::new(MIB));
    let lu = LogicalUnit::new(Arc::new(store), LuConfig::new(512, LuIdentity::derived("panics"))).unwrap();
    t.server.registry.target(TARGET).unwrap().scsi.replace_lun(1, Arc::new(lu));
    let s = t.ready_session(12).await;
    let read = s.command(1, &rw16(0x88, 0, 1, 0), bytes::Bytes::new(), 512).await.unwrap();
    assert_eq!(read.sense_code(), Some((0x04, 0x44, 0x00)), "HARDWARE ERROR, INTERNAL TARGET FAILURE");
    let write = s.command(1, &rw16(0x8a, 0, 1, 0), bytes::Bytes::from(vec![7u8; 512]), 0).await.unwrap();
    assert_eq!(write.status, 0, "the same session serves the next command");
}
