use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::store::{BlockStore, MemoryStore};

const BS: u32 = 512;
const BLOCKS: u64 = 4096;

fn target() -> (ScsiTarget, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new(BLOCKS * BS as u64));
    (target_on(store.clone()), store)
}

/// A target whose LUN 1 is `store`.
fn target_on(store: Arc<dyn BlockStore>) -> ScsiTarget {
    let lu = LogicalUnit::new(store, LuConfig::new(BS, LuIdentity::derived("t:1"))).unwrap();
    let t = ScsiTarget::new("iqn.2026-11.org.example:t");
    t.add_lun(1, Arc::new(lu)).unwrap();
    t
}

struct Init {
    nexus: Arc<Nexus>,
}

impl Init {
    fn new(name: &str) -> Init {
        Init { nexus: Nexus::new(name, 1, "iqn.2026-11.org.example:t", 1, 1) }
    }

    async fn cmd(&self, t: &ScsiTarget, cdb: &[u8], data: &[u8]) -> Response {
        let req = Request {
            nexus: self.nexus.clone(),
            lun: encode_lun(1),
            cdb: Bytes::copy_from_slice(cdb),
            data_out: Bytes::copy_from_slice(data),
            data_in_max: u32::MAX,
        };
        t.execute(&req).await
    }

    /// Clears the power-on unit attention.
    async fn ready(&self, t: &ScsiTarget) {
        let r = self.cmd(t, &[0, 0, 0, 0, 0, 0], &[]).await;
        assert_eq!(sense_of(&r), Some((key::UNIT_ATTENTION, asc::POWER_ON_RESET)));
        assert_eq!(self.cmd(t, &[0, 0, 0, 0, 0, 0], &[]).await.status, status::GOOD);
    }
}

fn sense_of(r: &Response) -> Option<(u8, (u8, u8))> {
    let s = r.sense.as_ref()?;
    Some(if s[0] & 0x7f == 0x72 { (s[1], (s[2], s[3])) } else { (s[2] & 0x0f, (s[12], s[13])) })
}

fn rw16(opcode: u8, lba: u64, blocks: u32, flags: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

#[tokio::test]
async fn power_on_unit_attention_once_per_nexus_and_inquiry_is_exempt() {
    let (t, _) = target();
    let a = Init::new("iqn.a");
    let inq = a.cmd(&t, &[0x12, 0, 0, 0, 96, 0], &[]).await;
    assert_eq!(inq.status, status::GOOD);
    assert_eq!(inq.data.len(), 96);
    assert_eq!(&inq.data[8..12], b"RTGT");
    a.ready(&t).await;
    Init::new("iqn.b").ready(&t).await;
}

#[tokio::test]
async fn write_read_round_trip_and_range_checks() {
    let (t, _) = target();
    let a = Init::new("iqn.a");
    a.ready(&t).await;
    let data: Vec<u8> = (0..2 * BS).map(|i| i as u8).collect();
    let w = a.cmd(&t, &[0x2a, 0, 0, 0, 0, 10, 0, 0, 2, 0], &data).await;
    assert_eq!((w.status, w.data_out_len), (status::GOOD, 2 * BS));
    let r = a.cmd(&t, &rw16(0x88, 10, 2, 0), &[]).await;
    assert_eq!(r.data, data);
    let r6 = a.cmd(&t, &[0x08, 0, 0, 11, 1, 0], &[]).await;
    assert_eq!(&r6.data[..], &data[BS as usize..]);

    let oob = a.cmd(&t, &rw16(0x88, BLOCKS - 1, 2, 0), &[]).await;
    assert_eq!(sense_of(&oob), Some((key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE)));
    let zero_at_end = a.cmd(&t, &rw16(0x88, BLOCKS, 0, 0), &[]).await;
    assert_eq!(zero_at_end.status, status::GOOD);
    let protect = a.cmd(&t, &rw16(0x88, 0, 1, 0x20), &[]).await;
    assert_eq!(sense_of(&protect), Some((key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)));
}

#[tokio::test]
async fn short_data_out_writes_only_whole_blocks_sent() {
    let (t, store) = target();
    let a = Init::new("iqn.a");
    a.ready(&t).await;
    // TL 2 with one block of data: block 0 written, block 1 untouched (FCP-4 overflow rule a).
    let w = a.cmd(&t, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 2, 0], &vec![7u8; BS as usize]).await;
    assert_eq!((w.status, w.data_out_len), (status::GOOD, 2 * BS));
    assert_eq!(store.read(0, BS as usize).await.unwrap(), vec![7u8; BS as usize]);
    assert_eq!(store.read(BS as u64, BS as usize).await.unwrap(), vec![0u8; BS as usize]);
    // A partial block is refused and nothing is written (rule b).
    let w = a.cmd(&t, &[0x2a, 0, 0, 0, 0, 2, 0, 0, 1, 0], &[9u8; 200]).await;
    assert_eq!(sense_of(&w), Some((key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_INFORMATION_UNIT)));
    assert_eq!(w.data_out_len, BS);
    assert_eq!(store.read(2 * BS as u64, BS as usize).await.unwrap(), vec![0u8; BS as usize]);
}

#[tokio::test]
async fn compare_and_write_and_orwrite() {
    let (t, _) = target();
    let a = Init::new("iqn.a");
    a.ready(&t).await;
    let old = vec![0x11u8; BS as usize];
    a.cmd(&t, &rw16(0x8a, 5, 1, 0), &old).await;
    let mut caw = [0u8; 16];
    caw[0] = 0x89;
    caw[2..10].copy_from_slice(&5u64.to_be_bytes());
    caw[13] = 1;
    let mut wrong = vec![0x11u8; BS as usize];
    wrong[100] = 0;
    let new = vec![0x22u8; BS as usize];
    let miss = a.cmd(&t, &caw, &[wrong, new.clone()].concat()).await;
    assert_eq!(sense_of(&miss), Some((key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY)));
    let s = miss.sense.unwrap();
    assert_eq!(u32::from_be_bytes(s[3..7].try_into().unwrap()), 100, "offset of the miscompare");
    let ok = a.cmd(&t, &caw, &[old, new.clone()].concat()).await;
    assert_eq!(ok.status, status::GOOD);
    assert_eq!(a.cmd(&t, &rw16(0x88, 5, 1, 0), &[]).await.data, new);

    let or = a.cmd(&t, &rw16(0x8b, 5, 1, 0), &vec![0x41u8; BS as usize]).await;
    assert_eq!(or.status, status::GOOD);
    assert_eq!(a.cmd(&t, &rw16(0x88, 5, 1, 0), &[]).await.data, vec![0x63u8; BS as usize]);
}

#[tokio::test]
async fn write_same_unmap_and_lba_status() {
    let (t, store) = target();
    let a = Init::new("iqn.a");
    a.ready(&t).await;
    let blocks = 256; // two memory-store pages at 512-byte blocks
    let ws = a.cmd(&t, &rw16(0x93, 0, blocks, 0), &vec![0xabu8; BS as usize]).await;
    assert_eq!(ws.status, status::GOOD);
    assert_eq!(a.cmd(&t, &rw16(0x88, 200, 1, 0), &[]).await.data, vec![0xabu8; BS as usize]);
    assert_eq!(store.allocated_pages(), 2);

    let mut status_cdb = [0u8; 16];
    status_cdb[0] = 0x9e;
    status_cdb[1] = 0x12;
    status_cdb[13] = 64;
    let st = a.cmd(&t, &status_cdb, &[]).await;
    assert_eq!(st.data[8 + 12], 0, "first extent mapped");
    assert_eq!(u32::from_be_bytes(st.data[16..20].try_into().unwrap()), 256);

    let unmap = a.cmd(&t, &rw16(0x93, 0, 128, 0x08), &vec![0u8; BS as usize]).await;
    assert_eq!(unmap.status, status::GOOD);
    let mut param = vec![0u8, 22, 0, 16, 0, 0, 0, 0];
    param.extend_from_slice(&128u64.to_be_bytes());
    param.extend_from_slice(&384u32.to_be_bytes());
    param.extend_from_slice(&[0; 4]);
    let um = a.cmd(&t, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &param).await;
    assert_eq!(um.status, status::GOOD);
    assert_eq!(store.allocated_pages(), 0);
    assert_eq!(a.cmd(&t, &rw16(0x88, 200, 1, 0), &[]).await.data, vec![0u8; BS as usize]);
    let st = a.cmd(&t, &status_cdb, &[]).await;
    assert_eq!(st.data[8 + 12], 1, "deallocated");

    // WSNZ=0: zero blocks writes from the LBA to the end; past the end is out of range.
    let mut ones = vec![0u8; BS as usize];
    ones[0] = 1;
    let to_end = a.cmd(&t, &rw16(0x93, BLOCKS - 2, 0, 0), &ones).await;
    assert_eq!(to_end.status, status::GOOD);
    let tail = a.cmd(&t, &rw16(0x88, BLOCKS - 3, 3, 0), &[]).await.data;
    assert_eq!((tail[0], tail[BS as usize], tail[2 * BS as usize]), (0, 1, 1), "the last two blocks");
    let beyond = a.cmd(&t, &rw16(0x93, BLOCKS + 1, 0, 0), &ones).await;
    assert_eq!(sense_of(&beyond), Some((key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE)));
}

#[tokio::test]
async fn mode_select_changes_only_changeable_bits() {
    let (t, _) = target();
    let a = Init::new("iqn.a");
    let b = Init::new("iqn.b");
    a.ready(&t).await;
    b.ready(&t).await;
    let sense = a.cmd(&t, &[0x1a, 0x08, 0x08, 0, 255, 0], &[]).await;
    assert_eq!(sense.status, status::GOOD);
    let page = sense.data[4..].to_vec();
    assert_eq!((page[0], page[2] & 0x04), (0x08, 0x04), "caching page, WCE on");

    let mut select = vec![0u8; 4];
    let mut off = page.clone();
    off[2] &= !0x04;
    select.extend_from_slice(&off);
    let r = a.cmd(&t, &[0x15, 0x10, 0, 0, select.len() as u8, 0], &select).await;
    assert_eq!(r.status, status::GOOD);
    assert!(!t.lun(1).unwrap().write_cache_enabled());
    // Other nexuses learn of it by a unit attention.
    let r = b.cmd(&t, &[0, 0, 0, 0, 0, 0], &[]).await;
    assert_eq!(sense_of(&r), Some((key::UNIT_ATTENTION, asc::MODE_PARAMETERS_CHANGED)));

    let mut bad = vec![0u8; 4];
    let mut p = page.clone();
    p[2] |= 0x01; // RCD is not changeable
    bad.extend_from_slice(&p);
    let r = a.cmd(&t, &[0x15, 0x10, 0, 0, bad.len() as u8, 0], &bad).await;
    assert_eq!(sense_of(&r), Some((key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAMETER_LIST)));

    // D_SENSE switches to descriptor sense.
    let ctl = a.cmd(&t, &[0x1a, 0x08, 0x0a, 0, 255, 0], &[]).await.data[4..].to_vec();
    let mut select = vec![0u8; 4];
    let mut on = ctl.clone();
    on[2] |= 0x04;
    select.extend_from_slice(&on);
    assert_eq!(a.cmd(&t, &[0x15, 0x10, 0, 0, select.len() as u8, 0], &select).await.status, status::GOOD);
    let r = a.cmd(&t, &rw16(0x88, BLOCKS, 1, 0), &[]).await;
    assert_eq!(r.sense.unwrap()[0], 0x72);
}

/// The commands a thin store that does not encrypt (the memory store) offers, in opcode order:
/// (operation code, service action).
const EXPECTED_ON_A_THIN_STORE_WITHOUT_ENCRYPTION: &[(u8, Option<u16>)] = &[
    (0x00, None),       // TEST UNIT READY
    (0x03, None),       // REQUEST SENSE
    (0x08, None),       // READ(6)
    (0x0a, None),       // WRITE(6)
    (0x12, None),       // INQUIRY
    (0x15, None),       // MODE SELECT(6)
    (0x16, None),       // RESERVE(6)
    (0x17, None),       // RELEASE(6)
    (0x1a, None),       // MODE SENSE(6)
    (0x1b, None),       // START STOP UNIT
    (0x1e, None),       // PREVENT ALLOW MEDIUM REMOVAL
    (0x25, None),       // READ CAPACITY(10)
    (0x28, None),       // READ(10)
    (0x2a, None),       // WRITE(10)
    (0x2e, None),       // WRITE AND VERIFY(10)
    (0x2f, None),       // VERIFY(10)
    (0x34, None),       // PRE-FETCH(10)
    (0x35, None),       // SYNCHRONIZE CACHE(10)
    (0x37, None),       // READ DEFECT DATA(10)
    (0x41, None),       // WRITE SAME(10)
    (0x42, None),       // UNMAP
    (0x48, Some(0x02)), // SANITIZE (BLOCK ERASE); not CRYPTO ERASE (0x03)
    (0x55, None),       // MODE SELECT(10)
    (0x5a, None),       // MODE SENSE(10)
    (0x5e, Some(0)),    // PERSISTENT RESERVE IN: READ KEYS
    (0x5e, Some(1)),    // READ RESERVATION
    (0x5e, Some(2)),    // REPORT CAPABILITIES
    (0x5e, Some(3)),    // READ FULL STATUS
    (0x5f, Some(0)),    // PERSISTENT RESERVE OUT: REGISTER
    (0x5f, Some(1)),    // RESERVE
    (0x5f, Some(2)),    // RELEASE
    (0x5f, Some(3)),    // CLEAR
    (0x5f, Some(4)),    // PREEMPT
    (0x5f, Some(5)),    // PREEMPT AND ABORT
    (0x5f, Some(6)),    // REGISTER AND IGNORE EXISTING KEY
    (0x5f, Some(7)),    // REGISTER AND MOVE
    (0x83, Some(0x00)), // EXTENDED COPY(LID1)
    (0x84, Some(0x00)), // RECEIVE COPY RESULTS: COPY STATUS
    (0x84, Some(0x03)), // RECEIVE COPY RESULTS: OPERATING PARAMETERS
    (0x88, None),       // READ(16)
    (0x89, None),       // COMPARE AND WRITE
    (0x8a, None),       // WRITE(16)
    (0x8b, None),       // ORWRITE(16)
    (0x8e, None),       // WRITE AND VERIFY(16)
    (0x8f, None),       // VERIFY(16)
    (0x90, None),       // PRE-FETCH(16)
    (0x91, None),       // SYNCHRONIZE CACHE(16)
    (0x93, None),       // WRITE SAME(16)
    (0x9c, None),       // WRITE ATOMIC(16)
    (0x9e, Some(0x10)), // READ CAPACITY(16)
    (0x9e, Some(0x12)), // GET LBA STATUS
    (0xa0, None),       // REPORT LUNS
    (0xa3, Some(0x0a)), // REPORT TARGET PORT GROUPS
    (0xa3, Some(0x0c)), // REPORT SUPPORTED OPERATION CODES
    (0xa3, Some(0x0d)), // REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS
    (0xa4, Some(0x0a)), // SET TARGET PORT GROUPS
    (0xa8, None),       // READ(12)
    (0xaa, None),       // WRITE(12)
    (0xae, None),       // WRITE AND VERIFY(12)
    (0xaf, None),       // VERIFY(12)
    (0xb7, None),       // READ DEFECT DATA(12)
];

#[tokio::test]
async fn rsoc_reports_the_dispatch_table() {
    let (t, _) = target();
    let a = Init::new("iqn.a");
    a.ready(&t).await;
    let all = a.cmd(&t, &[0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], &[]).await;
    let len = u32::from_be_bytes(all.data[..4].try_into().unwrap()) as usize;
    // Every command but CRYPTO ERASE (a memory store does not encrypt).
    let offered = commands().iter().filter(|s| !matches!(s.needs, ops::Needs::CryptoErase)).count();
    assert_eq!(len, 8 * offered);
    let opcodes: Vec<u8> = all.data[4..].chunks(8).map(|d| d[0]).collect();
    assert!(opcodes.contains(&0x89) && opcodes.contains(&0x2a));
    // What is reported, against a list written out apart from the table (SPC-4 and SBC-4
    // numbers): a command dropped from the table, or one added by mistake, shows here.
    let reported: Vec<(u8, Option<u16>)> =
        all.data[4..].chunks(8).map(|d| (d[0], (d[5] & 0x01 != 0).then(|| u16::from_be_bytes([d[2], d[3]])))).collect();
    assert_eq!(reported, EXPECTED_ON_A_THIN_STORE_WITHOUT_ENCRYPTION);
    // Every reported command dispatches (none answers INVALID COMMAND OPERATION CODE).
    for spec in commands() {
        let mut cdb = vec![0u8; spec.cdb_len()];
        cdb[0] = spec.opcode;
        if let Some(sa) = spec.service_action {
            cdb[1] = sa as u8;
        }
        let r = a.cmd(&t, &cdb, &[]).await;
        assert_ne!(sense_of(&r).map(|s| s.1), Some(asc::INVALID_OPCODE), "{}", spec.name);
    }
    let one = a.cmd(&t, &[0xa3, 0x0c, 0x01, 0x28, 0, 0, 0, 0, 0, 64, 0, 0], &[]).await;
    assert_eq!(&one.data[..4], &[0, 3, 0, 10]);
    assert_eq!(one.data[4], 0x28);
    let sa_needed = a.cmd(&t, &[0xa3, 0x0c, 0x01, 0x9e, 0, 0, 0, 0, 0, 64, 0, 0], &[]).await;
    assert_eq!(sense_of(&sa_needed), Some((key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)));
    let unsupported = a.cmd(&t, &[0xa3, 0x0c, 0x01, 0xe0, 0, 0, 0, 0, 0, 64, 0, 0], &[]).await;
    assert_eq!(&unsupported.data[..2], &[0, 1]);
    let r = a.cmd(&t, &[0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]).await;
    assert_eq!(sense_of(&r), Some((key::ILLEGAL_REQUEST, asc::INVALID_OPCODE)));
}

#[tokio::test]
async fn report_luns_and_missing_luns() {
    let (t, _) = target();
    let a = Init::new("iqn.a");
    let r = a.cmd(&t, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]).await;
    assert_eq!(&r.data[..], &[0, 0, 0, 8, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    let req = Request {
        nexus: a.nexus.clone(),
        lun: encode_lun(7),
        cdb: Bytes::from_static(&[0x12, 0, 0, 0, 36, 0]),
        data_out: Bytes::new(),
        data_in_max: u32::MAX,
    };
    let inq = t.execute(&req).await;
    assert_eq!(inq.data[0], 0x7f);
    let req = Request { cdb: Bytes::from_static(&[0, 0, 0, 0, 0, 0]), ..req };
    assert_eq!(sense_of(&t.execute(&req).await), Some((key::ILLEGAL_REQUEST, asc::LUN_NOT_SUPPORTED)));
}

#[tokio::test]
async fn reservations_conflict_for_other_nexuses() {
    let (t, _) = target();
    let a = Init::new("iqn.a");
    let b = Init::new("iqn.b");
    a.ready(&t).await;
    b.ready(&t).await;
    assert_eq!(a.cmd(&t, &[0x16, 0, 0, 0, 0, 0], &[]).await.status, status::GOOD);
    assert_eq!(b.cmd(&t, &rw16(0x88, 0, 1, 0), &[]).await.status, status::RESERVATION_CONFLICT);
    assert_eq!(b.cmd(&t, &[0x12, 0, 0, 0, 36, 0], &[]).await.status, status::GOOD);
    assert_eq!(b.cmd(&t, &[0x17, 0, 0, 0, 0, 0], &[]).await.status, status::GOOD);
    assert_eq!(b.cmd(&t, &rw16(0x88, 0, 1, 0), &[]).await.status, status::RESERVATION_CONFLICT);
    assert_eq!(a.cmd(&t, &[0x17, 0, 0, 0, 0, 0], &[]).await.status, status::GOOD);
    assert_eq!(b.cmd(&t, &rw16(0x88, 0, 1, 0), &[]).await.status, status::GOOD);
}

fn prout(action: u8, kind: u8, key: u64, sark: u64) -> ([u8; 10], Vec<u8>) {
    let mut cdb = [0x5f, action, kind, 0, 0, 0, 0, 0, 24, 0];
    cdb[2] = kind;
    let mut data = vec![0u8; 24];
    data[0..8].copy_from_slice(&key.to_be_bytes());
    data[8..16].copy_from_slice(&sark.to_be_bytes());
    (cdb, data)
}

impl Init {
    async fn prout(&self, t: &ScsiTarget, action: u8, kind: u8, key: u64, sark: u64) -> Response {
        let (cdb, data) = prout(action, kind, key, sark);
        self.cmd(t, &cdb, &data).await
    }

    async fn prin(&self, t: &ScsiTarget, action: u8) -> Bytes {
        let r = self.cmd(t, &[0x5e, action, 0, 0, 0, 0, 0, 0x10, 0, 0], &[]).await;
        assert_eq!(r.status, status::GOOD);
        r.data
    }
}

/// Persistent reservations through the dispatcher: the conflict rules, RESERVE(6) against
/// them, what survives a logout and a LOGICAL UNIT RESET, and READ FULL STATUS's TransportID.
#[tokio::test]
async fn persistent_reservations_keep_others_out_and_outlive_their_nexus() {
    let (t, _) = target();
    let a = Init::new("iqn.a");
    let b = Init::new("iqn.b");
    a.ready(&t).await;
    b.ready(&t).await;
    assert_eq!(a.prout(&t, 6, 0, 0, 0xaa).await.status, status::GOOD);
    assert_eq!(b.prout(&t, 0, 0, 0, 0xbb).await.status, status::GOOD);
    assert_eq!(a.prout(&t, 1, 3, 0xaa, 0).await.status, status::GOOD, "RESERVE, exclusive access");
    assert_eq!(b.cmd(&t, &rw16(0x88, 0, 1, 0), &[]).await.status, status::RESERVATION_CONFLICT);
    assert_eq!(b.cmd(&t, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]).await.status, status::GOOD, "READ CAPACITY");
    assert_eq!(a.cmd(&t, &rw16(0x88, 0, 1, 0), &[]).await.status, status::GOOD);
    assert_eq!(b.cmd(&t, &[0x16, 0, 0, 0, 0, 0], &[]).await.status, status::RESERVATION_CONFLICT, "RESERVE(6)");
    assert_eq!(b.prout(&t, 1, 3, 0xbb, 0).await.status, status::RESERVATION_CONFLICT);
    assert_eq!(b.prout(&t, 0, 0, 0x11, 0x12).await.status, status::RESERVATION_CONFLICT, "not its key");
    let keys = a.prin(&t, 0).await;
    assert_eq!(&keys[4..8], &16u32.to_be_bytes(), "two keys");
    let full = a.prin(&t, 3).await;
    let tid = String::from_utf8_lossy(&full[8 + 24 + 4..]).to_string();
    assert!(tid.starts_with("iqn.a,i,0x000000000001"), "{tid:?}");
    // The holder logs out and a reset comes: the reservation stays.
    t.lun(1).unwrap().nexus_gone(a.nexus.id);
    t.lun(1).unwrap().reset();
    b.cmd(&t, &[0, 0, 0, 0, 0, 0], &[]).await;
    assert_eq!(b.cmd(&t, &rw16(0x88, 0, 1, 0), &[]).await.status, status::RESERVATION_CONFLICT);
    assert_eq!(b.prout(&t, 4, 1, 0xbb, 0xaa).await.status, status::GOOD, "PREEMPT");
    a.cmd(&t, &[0, 0, 0, 0, 0, 0], &[]).await; // the reset's unit attention
    let r = a.cmd(&t, &[0, 0, 0, 0, 0, 0], &[]).await;
    assert_eq!(sense_of(&r), Some((key::UNIT_ATTENTION, (0x2a, 0x05))), "REGISTRATIONS PREEMPTED");
    assert_eq!(a.cmd(&t, &rw16(0x88, 0, 1, 0), &[]).await.status, status::GOOD, "write exclusive lets reads through");
    assert_eq!(a.cmd(&t, &rw16(0x8a, 0, 1, 0), &[0; 512]).await.status, status::RESERVATION_CONFLICT);
    let r = a.prout(&t, 1, 1, 0, 0).await;
    assert_eq!(r.status, status::RESERVATION_CONFLICT, "no longer registered");
    let (mut cdb, data) = prout(0, 0, 0, 0x1);
    cdb[8] = 23;
    assert_eq!(sense_of(&a.cmd(&t, &cdb, &data[..23]).await), Some((key::ILLEGAL_REQUEST, (0x1a, 0))));
}

/// An iSCSI TransportID naming an initiator port (format 01b).
fn initiator_port_id(port: &str) -> Vec<u8> {
    let mut name = port.as_bytes().to_vec();
    name.push(0);
    name.resize(name.len().div_ceil(4).max(5) * 4, 0);
    let mut id = vec![0x45, 0];
    id.extend_from_slice(&(name.len() as u16).to_be_bytes());
    id.extend_from_slice(&name);
    id
}

/// A PERSISTENT RESERVE OUT with a parameter list of any length.
fn prout_with(action: u8, kind: u8, data: &[u8]) -> [u8; 10] {
    let mut cdb = [0x5f, action, kind, 0, 0, 0, 0, 0, 0, 0];
    cdb[5..9].copy_from_slice(&(data.len() as u32).to_be_bytes());
    cdb
}

fn through_port(name: &str, relative_port: u16) -> Init {
    Init { nexus: Nexus::new(name, 1, "iqn.2026-11.org.example:t", relative_port, 1) }
}

/// The number of registered I_T nexuses READ KEYS reports.
async fn registrations(init: &Init, t: &ScsiTarget) -> u32 {
    u32::from_be_bytes(init.prin(t, 0).await[4..8].try_into().unwrap()) / 8
}

/// ALL_TG_PT registers the initiator port through every target port of the target, and
/// unregisters it from all of them the same way; REPORT CAPABILITIES offers it and SPEC_I_PT.
#[tokio::test]
async fn all_tg_pt_registers_through_every_target_port() {
    let (t, _) = target();
    let groups = [(1, alua::AluaState::ActiveOptimized), (2, alua::AluaState::ActiveNonOptimized)];
    t.set_port_groups(groups.into_iter().collect());
    let (a1, a2) = (through_port("iqn.a", 1), through_port("iqn.a", 2));
    a1.ready(&t).await;
    a2.ready(&t).await;
    let caps = a1.prin(&t, 2).await;
    assert_eq!(caps[2] & 0x0c, 0x0c, "SIP_C and ATP_C");
    let (cdb, mut data) = prout(0, 0, 0, 0xaa);
    data[20] = 0x04; // ALL_TG_PT
    assert_eq!(a1.cmd(&t, &cdb, &data).await.status, status::GOOD);
    assert_eq!(registrations(&a1, &t).await, 2, "through ports 1 and 2");
    assert_eq!(a2.prout(&t, 1, 1, 0xaa, 0).await.status, status::GOOD, "RESERVE through port 2");
    assert_eq!(
        a1.cmd(&t, &rw16(0x8a, 0, 1, 0), &[0; 512]).await.status,
        status::RESERVATION_CONFLICT,
        "not the holder"
    );
    assert_eq!(a2.prout(&t, 2, 1, 0xaa, 0).await.status, status::GOOD, "RELEASE");
    let (cdb, mut data) = prout(0, 0, 0xaa, 0);
    data[20] = 0x04;
    assert_eq!(a1.cmd(&t, &cdb, &data).await.status, status::GOOD, "unregister everywhere");
    assert_eq!(registrations(&a1, &t).await, 0);
}

/// SPEC_I_PT registers the initiator ports the TransportIDs name, all or none; only for an
/// unregistered sender, and only with REGISTER.
#[tokio::test]
async fn spec_i_pt_registers_named_initiator_ports_all_or_none() {
    let (t, _) = target();
    let (a, b, c) = (Init::new("iqn.a"), Init::new("iqn.b"), Init::new("iqn.c"));
    a.ready(&t).await;
    let specified = |ports: &[&str]| {
        let ids: Vec<u8> = ports.iter().flat_map(|p| initiator_port_id(p)).collect();
        let (_, mut data) = prout(0, 0, 0, 0xaa);
        data[20] = 0x08; // SPEC_I_PT
        data.extend_from_slice(&(ids.len() as u32).to_be_bytes());
        data.extend_from_slice(&ids);
        data
    };
    let data = specified(&["iqn.b,i,0x000000000001", "iqn.c,i,0x000000000001"]);
    assert_eq!(a.cmd(&t, &prout_with(0, 0, &data), &data).await.status, status::GOOD);
    assert_eq!(registrations(&a, &t).await, 3);
    b.ready(&t).await;
    assert_eq!(b.prout(&t, 1, 5, 0xaa, 0).await.status, status::GOOD, "b was registered without logging in");
    c.ready(&t).await;
    assert_eq!(c.cmd(&t, &rw16(0x8a, 0, 1, 0), &[0; 512]).await.status, status::GOOD, "a registrant writes");

    let again = specified(&["iqn.d,i,0x000000000001"]);
    let r = a.cmd(&t, &prout_with(0, 0, &again), &again).await;
    assert_eq!(sense_of(&r), Some((key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)), "a is registered");
    let e = Init::new("iqn.e");
    e.ready(&t).await;
    let r = e.cmd(&t, &prout_with(6, 0, &again), &again).await;
    assert_eq!(sense_of(&r), Some((key::ILLEGAL_REQUEST, (0x26, 0))), "SPEC_I_PT with REGISTER AND IGNORE");
    let taken = specified(&["iqn.d,i,0x000000000001", "iqn.b,i,0x000000000001"]);
    let r = e.cmd(&t, &prout_with(0, 0, &taken), &taken).await;
    assert_eq!(sense_of(&r), Some((key::ILLEGAL_REQUEST, (0x26, 0))), "b is registered already");
    assert_eq!(registrations(&a, &t).await, 3, "neither e nor d was registered");
    let mut cut = specified(&["iqn.d,i,0x000000000001"]);
    cut.truncate(cut.len() - 4);
    let r = e.cmd(&t, &prout_with(0, 0, &cut), &cut).await;
    assert_eq!(sense_of(&r), Some((key::ILLEGAL_REQUEST, (0x1a, 0))), "TransportIDs beyond the list");
}

/// REGISTER AND MOVE hands the holder's reservation to another I_T nexus (registering it),
/// through another target port, and with UNREG leaves the sender unregistered.
#[tokio::test]
async fn register_and_move_hands_the_reservation_to_another_nexus() {
    let (t, _) = target();
    t.set_port_groups([(1, alua::AluaState::ActiveOptimized), (2, alua::AluaState::ActiveOptimized)].into());
    let (a, b2) = (Init::new("iqn.a"), through_port("iqn.b", 2));
    a.ready(&t).await;
    b2.ready(&t).await;
    assert_eq!(a.prout(&t, 0, 0, 0, 0xaa).await.status, status::GOOD);
    let moving = |key: u64, sark: u64, port: u16, to: &str, flags: u8| {
        let id = initiator_port_id(to);
        let (_, mut data) = prout(7, 1, key, sark);
        data[17] = flags;
        data[18..20].copy_from_slice(&port.to_be_bytes());
        data[20..24].copy_from_slice(&(id.len() as u32).to_be_bytes());
        data.extend_from_slice(&id);
        data
    };
    let data = moving(0xaa, 0xbb, 2, "iqn.b,i,0x000000000001", 0x02);
    let r = a.cmd(&t, &prout_with(7, 1, &data), &data).await;
    assert_eq!(r.status, status::RESERVATION_CONFLICT, "no reservation: {:?}", sense_of(&r));
    assert_eq!(a.prout(&t, 1, 1, 0xaa, 0).await.status, status::GOOD, "RESERVE, write exclusive");
    let to_itself = moving(0xaa, 0xbb, 1, "iqn.a,i,0x000000000001", 0);
    let r = a.cmd(&t, &prout_with(7, 1, &to_itself), &to_itself).await;
    assert_eq!(sense_of(&r), Some((key::ILLEGAL_REQUEST, (0x26, 0))), "to the sender itself");
    let nowhere = moving(0xaa, 0xbb, 9, "iqn.b,i,0x000000000001", 0);
    let r = a.cmd(&t, &prout_with(7, 1, &nowhere), &nowhere).await;
    assert_eq!(sense_of(&r), Some((key::ILLEGAL_REQUEST, (0x26, 0))), "no target port 9");
    assert_eq!(a.cmd(&t, &prout_with(7, 1, &data), &data).await.status, status::GOOD);
    let reservation = a.prin(&t, 1).await;
    assert_eq!(&reservation[8..16], &0xbbu64.to_be_bytes(), "b's key holds it");
    assert_eq!(registrations(&b2, &t).await, 1, "UNREG: a is gone");
    assert_eq!(b2.cmd(&t, &rw16(0x8a, 0, 1, 0), &[0; 512]).await.status, status::GOOD);
    assert_eq!(a.cmd(&t, &rw16(0x8a, 0, 1, 0), &[0; 512]).await.status, status::RESERVATION_CONFLICT);
    let back = moving(0xaa, 0xcc, 1, "iqn.a,i,0x000000000001", 0);
    assert_eq!(
        a.cmd(&t, &prout_with(7, 1, &back), &back).await.status,
        status::RESERVATION_CONFLICT,
        "a holds nothing"
    );
}

/// A keeper in memory, as a file or an object would be; `.1`: shared with other targets.
#[derive(Default)]
struct MemKeeper(std::sync::Mutex<Option<Vec<u8>>>, bool);

impl ReservationKeeper for MemKeeper {
    fn load(&self) -> crate::store::BoxFuture<'_, Result<Option<Vec<u8>>, String>> {
        Box::pin(async move { Ok(self.0.lock().unwrap().clone()) })
    }
    fn save(&self, saved: Option<Vec<u8>>) -> crate::store::BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            *self.0.lock().unwrap() = saved;
            Ok(())
        })
    }
    fn describe(&self) -> String {
        "memory".into()
    }
    fn shared(&self) -> bool {
        self.1
    }
}

async fn target_keeping(keeper: Option<Arc<MemKeeper>>) -> ScsiTarget {
    let store = Arc::new(MemoryStore::new(BLOCKS * BS as u64));
    let mut lu = LogicalUnit::new(store, LuConfig::new(BS, LuIdentity::derived("t:1"))).unwrap();
    if let Some(keeper) = keeper {
        lu.keep_reservations(keeper).await.unwrap();
    }
    let t = ScsiTarget::new("iqn.2026-11.org.example:t");
    t.add_lun(1, Arc::new(lu)).unwrap();
    t
}

/// APTPL: with a keeper, registrations and the reservation outlive the logical unit (a
/// restart); APTPL off forgets the saved state; without a keeper APTPL is refused.
#[tokio::test]
async fn aptpl_keeps_reservations_across_a_restart() {
    let keeper = Arc::new(MemKeeper::default());
    let t = target_keeping(Some(keeper.clone())).await;
    let a = Init::new("iqn.a");
    a.ready(&t).await;
    let caps = a.prin(&t, 2).await;
    assert_eq!((caps[2] & 0x01, caps[3] & 0x01), (1, 0), "PTPL_C, not yet PTPL_A");
    let (cdb, mut data) = prout(6, 0, 0, 0xaa);
    data[20] = 0x01; // APTPL
    assert_eq!(a.cmd(&t, &cdb, &data).await.status, status::GOOD);
    assert_eq!(a.prout(&t, 1, 1, 0xaa, 0).await.status, status::GOOD, "RESERVE, write exclusive");
    assert!(keeper.0.lock().unwrap().is_some(), "saved before it was acknowledged");

    let t = target_keeping(Some(keeper.clone())).await;
    let b = Init::new("iqn.b");
    a.ready(&t).await;
    b.ready(&t).await;
    assert_eq!(&a.prin(&t, 0).await[8..16], &0xaau64.to_be_bytes(), "the key is back");
    assert_eq!(a.prin(&t, 2).await[3] & 0x01, 1, "PTPL_A");
    assert_eq!(b.cmd(&t, &rw16(0x8a, 0, 1, 0), &[0; 512]).await.status, status::RESERVATION_CONFLICT);
    assert_eq!(a.prout(&t, 2, 1, 0xaa, 0).await.status, status::GOOD, "RELEASE");
    assert_eq!(a.prout(&t, 0, 0, 0xaa, 0xab).await.status, status::GOOD, "REGISTER without APTPL");
    assert!(keeper.0.lock().unwrap().is_none(), "APTPL off: nothing kept");

    let t = target_keeping(None).await;
    a.ready(&t).await;
    assert_eq!(sense_of(&a.cmd(&t, &cdb, &data).await), Some((key::ILLEGAL_REQUEST, (0x26, 0))));
}

/// A keeper shared with other targets (an S3 volume's) keeps every change without APTPL: the
/// target that serves the volume next (a failover) has the registrations and the reservation.
#[tokio::test]
async fn a_shared_keeper_carries_reservations_to_the_next_target() {
    let keeper = Arc::new(MemKeeper(Default::default(), true));
    let t = target_keeping(Some(keeper.clone())).await;
    let (a, b) = (Init::new("iqn.a"), Init::new("iqn.b"));
    a.ready(&t).await;
    assert_eq!(a.prout(&t, 0, 0, 0, 0xaa).await.status, status::GOOD, "REGISTER, no APTPL");
    assert_eq!(a.prout(&t, 1, 5, 0xaa, 0).await.status, status::GOOD, "RESERVE, write exclusive registrants only");

    let t = target_keeping(Some(keeper.clone())).await;
    a.ready(&t).await;
    b.ready(&t).await;
    assert_eq!(&a.prin(&t, 0).await[8..16], &0xaau64.to_be_bytes(), "the key is there");
    assert_eq!(a.prin(&t, 2).await[3] & 0x01, 0, "APTPL was not asked for");
    assert_eq!(b.cmd(&t, &rw16(0x8a, 0, 1, 0), &[0; 512]).await.status, status::RESERVATION_CONFLICT);
    assert_eq!(a.cmd(&t, &rw16(0x8a, 0, 1, 0), &[0; 512]).await.status, status::GOOD);
    assert_eq!(a.prout(&t, 0, 0, 0xaa, 0).await.status, status::GOOD, "unregister");
    let t = target_keeping(Some(keeper.clone())).await;
    b.ready(&t).await;
    assert_eq!(b.cmd(&t, &rw16(0x8a, 0, 1, 0), &[0; 512]).await.status, status::GOOD, "nothing left");
}

/// ALUA: INQUIRY says TPGS, REPORT TARGET PORT GROUPS lists the groups with their states, a
/// port in standby answers media commands NOT READY (04/0B), and a state change is announced.
#[tokio::test]
async fn alua_states_are_reported_and_enforced() {
    use crate::scsi::alua::{AluaState, PortGroups};
    let (t, _) = target();
    let a = Init::new("iqn.a"); // through port (portal group) 1
    a.ready(&t).await;
    let inq = a.cmd(&t, &[0x12, 0, 0, 0, 96, 0], &[]).await;
    assert_eq!(inq.data[5] & 0x30, 0x30, "TPGS: implicit and explicit");
    let vpd = a.cmd(&t, &[0x12, 1, 0x83, 0, 255, 0], &[]).await;
    assert!(vpd.data.windows(8).any(|w| w == [0x01, 0x15, 0, 4, 0, 0, 0, 1]), "target port group designator");
    t.set_port_groups(PortGroups::from([(1, AluaState::ActiveOptimized), (2, AluaState::ActiveNonOptimized)]));
    let rtpg = a.cmd(&t, &[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]).await;
    assert_eq!(rtpg.status, status::GOOD);
    assert_eq!(&rtpg.data[..4], &24u32.to_be_bytes(), "two groups of one port each");
    assert_eq!((rtpg.data[4] & 0x0f, rtpg.data[16] & 0x0f), (0, 1));
    t.set_port_groups(PortGroups::from([(1, AluaState::Standby), (2, AluaState::ActiveOptimized)]));
    let r = a.cmd(&t, &rw16(0x88, 0, 1, 0), &[]).await;
    assert_eq!(sense_of(&r), Some((key::UNIT_ATTENTION, (0x2a, 0x06))), "the change first, then the refusal");
    let r = a.cmd(&t, &rw16(0x88, 0, 1, 0), &[]).await;
    assert_eq!(sense_of(&r), Some((key::NOT_READY, (0x04, 0x0b))), "standby");
    assert_eq!(a.cmd(&t, &[0x12, 0, 0, 0, 96, 0], &[]).await.status, status::GOOD);
    let rtpg = a.cmd(&t, &[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]).await;
    assert_eq!(rtpg.data[4] & 0x0f, 2);
    t.set_port_groups(PortGroups::from([(1, AluaState::ActiveOptimized), (2, AluaState::ActiveOptimized)]));
    let r = a.cmd(&t, &rw16(0x88, 0, 1, 0), &[]).await;
    assert_eq!(sense_of(&r), Some((key::UNIT_ATTENTION, (0x2a, 0x06))), "ASYMMETRIC ACCESS STATE CHANGED");
    assert_eq!(a.cmd(&t, &rw16(0x88, 0, 1, 0), &[]).await.status, status::GOOD);
}

fn set_tpg(descriptors: &[(u8, u16)]) -> ([u8; 12], Vec<u8>) {
    let mut data = vec![0u8; 4];
    for &(state, tag) in descriptors {
        data.extend_from_slice(&[state, 0]);
        data.extend_from_slice(&tag.to_be_bytes());
    }
    let mut cdb = [0xa4, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    cdb[6..10].copy_from_slice(&(data.len() as u32).to_be_bytes());
    (cdb, data)
}

#[tokio::test]
async fn set_target_port_groups_changes_states_explicitly_all_or_none() {
    use crate::scsi::alua::{AluaState, PortGroups};
    let (t, _) = target();
    let a = Init::new("iqn.a"); // through port 1
    a.ready(&t).await;
    t.set_port_groups(PortGroups::from([(1, AluaState::ActiveOptimized), (2, AluaState::ActiveOptimized)]));
    a.cmd(&t, &[0, 0, 0, 0, 0, 0], &[]).await; // the unit attention of the change
    let (cdb, data) = set_tpg(&[(0x2, 1), (0x1, 2)]);
    assert_eq!(a.cmd(&t, &cdb, &data).await.status, status::GOOD);
    let r = a.cmd(&t, &rw16(0x88, 0, 1, 0), &[]).await;
    assert_eq!(sense_of(&r), Some((key::NOT_READY, (0x04, 0x0b))), "port 1 is standby now");
    let rtpg = a.cmd(&t, &[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]).await;
    assert_eq!((rtpg.data[4] & 0x0f, rtpg.data[16] & 0x0f), (2, 1));
    // An unknown group or a state that cannot be set changes nothing.
    for bad in [vec![(0x0, 1), (0x0, 9)], vec![(0x0, 1), (0xf, 2)]] {
        let (cdb, data) = set_tpg(&bad);
        let r = a.cmd(&t, &cdb, &data).await;
        assert_eq!(sense_of(&r), Some((key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAMETER_LIST)));
    }
    assert_eq!(sense_of(&a.cmd(&t, &rw16(0x88, 0, 1, 0), &[]).await), Some((key::NOT_READY, (0x04, 0x0b))));
    // A standby path is made active through itself. The change is announced to every other
    // nexus, not to the one that asked for it (SPC-4 §5.15.2.3).
    let b = through_port("iqn.b", 2);
    b.ready(&t).await;
    let (cdb, data) = set_tpg(&[(0x0, 1)]);
    assert_eq!(a.cmd(&t, &cdb, &data).await.status, status::GOOD);
    assert_eq!(a.cmd(&t, &rw16(0x88, 0, 1, 0), &[]).await.status, status::GOOD);
    let r = b.cmd(&t, &rw16(0x88, 0, 1, 0), &[]).await;
    assert_eq!(sense_of(&r), Some((key::UNIT_ATTENTION, (0x2a, 0x06))));
}

/// A logical unit whose volume another target serves is standby through every port of this
/// one: RTPG says so, media and reservation commands are NOT READY 04/0B, INQUIRY answers, and
/// the change both ways is announced.
#[tokio::test]
async fn a_standby_logical_unit_reports_and_enforces_standby() {
    let (t, _) = target();
    let a = Init::new("iqn.a");
    a.ready(&t).await;
    let lu = t.lun(1).unwrap();
    lu.set_standby(true);
    let r = a.cmd(&t, &rw16(0x88, 0, 1, 0), &[]).await;
    assert_eq!(sense_of(&r), Some((key::UNIT_ATTENTION, (0x2a, 0x06))), "the change first");
    let r = a.cmd(&t, &rw16(0x88, 0, 1, 0), &[]).await;
    assert_eq!(sense_of(&r), Some((key::NOT_READY, (0x04, 0x0b))), "standby");
    let prin = a.cmd(&t, &[0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0], &[]).await;
    assert_eq!(sense_of(&prin), Some((key::NOT_READY, (0x04, 0x0b))), "reservations live with the volume");
    assert_eq!(a.cmd(&t, &[0x12, 0, 0, 0, 96, 0], &[]).await.status, status::GOOD);
    let rtpg = a.cmd(&t, &[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]).await;
    assert_eq!(rtpg.status, status::GOOD);
    assert_eq!(rtpg.data[4] & 0x0f, 2, "the port's group is standby for this logical unit");
    lu.set_standby(false);
    let r = a.cmd(&t, &rw16(0x88, 0, 1, 0), &[]).await;
    assert_eq!(sense_of(&r), Some((key::UNIT_ATTENTION, (0x2a, 0x06))), "ASYMMETRIC ACCESS STATE CHANGED");
    assert_eq!(a.cmd(&t, &rw16(0x88, 0, 1, 0), &[]).await.status, status::GOOD);
    let rtpg = a.cmd(&t, &[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]).await;
    assert_eq!(rtpg.data[4] & 0x0f, 0, "active/optimized again");
}

/// An EXTENDED COPY parameter list: one identification target descriptor naming `naa`, one
/// block-to-block segment; LIST ID USAGE `usage`.
fn xcopy_list(list_id: u8, usage: u8, naa: u64, blocks: u16, from: u64, to: u64) -> Vec<u8> {
    let mut p = vec![0u8; 16 + 32 + 28];
    p[0] = list_id;
    p[1] = usage << 3;
    p[3] = 32;
    p[11] = 28;
    let t = &mut p[16..48];
    t[0] = 0xe4;
    t[4] = 0x01; // binary
    t[5] = 0x03; // NAA, associated with the logical unit
    t[7] = 8;
    t[8..16].copy_from_slice(&naa.to_be_bytes());
    t[29..32].copy_from_slice(&BS.to_be_bytes()[1..]);
    let s = &mut p[48..];
    s[0] = 0x02;
    s[3] = 0x18;
    s[10..12].copy_from_slice(&blocks.to_be_bytes());
    s[12..20].copy_from_slice(&from.to_be_bytes());
    s[20..28].copy_from_slice(&to.to_be_bytes());
    p
}

fn xcopy_cdb(len: usize) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x83;
    c[10..14].copy_from_slice(&(len as u32).to_be_bytes());
    c
}

/// EXTENDED COPY inside the logical unit: the data arrives, overlapping copies included; a
/// target descriptor naming another device is unreachable; results are held per nexus.
#[tokio::test]
async fn extended_copy_copies_within_the_logical_unit() {
    let (t, store) = target();
    let naa = t.lun(1).unwrap().identity().naa;
    let a = Init::new("iqn.a");
    let b = Init::new("iqn.b");
    a.ready(&t).await;
    b.ready(&t).await;
    let data: Vec<u8> = (0..8 * BS as usize).map(|i| (i / 7) as u8).collect();
    assert_eq!(a.cmd(&t, &rw16(0x8a, 0, 8, 0), &data).await.status, status::GOOD);
    let p = xcopy_list(1, 0b00, naa, 8, 0, 100);
    assert_eq!(a.cmd(&t, &xcopy_cdb(p.len()), &p).await.status, status::GOOD);
    assert_eq!(&store.read(100 * BS as u64, 8 * BS as usize).await.unwrap()[..], &data[..]);
    // Overlapping, towards higher addresses: the source is read before it is overwritten.
    let p = xcopy_list(2, 0b10, naa, 8, 100, 104);
    assert_eq!(a.cmd(&t, &xcopy_cdb(p.len()), &p).await.status, status::GOOD);
    assert_eq!(&store.read(104 * BS as u64, 8 * BS as usize).await.unwrap()[..], &data[..]);
    // The results of list 1 (held), for its nexus only; list 2 was discarded.
    let status_of = |list: u8| [0x84, 0x00, list, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0];
    let r = a.cmd(&t, &status_of(1), &[]).await;
    assert_eq!((r.status, &r.data[5..7], &r.data[8..12]), (status::GOOD, &[0, 1][..], &(8 * BS).to_be_bytes()[..]));
    assert_eq!(sense_of(&a.cmd(&t, &status_of(2), &[]).await), Some((key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)));
    assert_eq!(sense_of(&b.cmd(&t, &status_of(1), &[]).await), Some((key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)));
    let p = xcopy_list(3, 0b00, naa ^ 1, 8, 0, 200);
    assert_eq!(sense_of(&a.cmd(&t, &xcopy_cdb(p.len()), &p).await), Some((key::COPY_ABORTED, (0x08, 0x04))));
    let p = xcopy_list(3, 0b00, naa, 8, 0, BLOCKS - 4);
    assert_eq!(sense_of(&a.cmd(&t, &xcopy_cdb(p.len()), &p).await).map(|s| s.0), Some(key::COPY_ABORTED));
    let p = xcopy_list(3, 0b00, naa, 8, 0, 200);
    assert_eq!(sense_of(&a.cmd(&t, &xcopy_cdb(p.len()), &p[..60]).await), Some((key::ILLEGAL_REQUEST, (0x1a, 0))));
    let ops = a.cmd(&t, &[0x84, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0], &[]).await;
    assert_eq!((&ops.data[..4], &ops.data[43..46]), (&42u32.to_be_bytes()[..], &[2, 0x02, 0xe4][..]));
}

/// An EXTENDED COPY parameter list with two target descriptors (`from`'s logical unit, then
/// `to`'s) and one segment between them.
fn xcopy_between(from: (u64, u64), to: (u64, u64), blocks: u16) -> Vec<u8> {
    let mut p = xcopy_list(9, 0b10, from.0, blocks, from.1, to.1);
    let mut second = p[16..48].to_vec();
    second[8..16].copy_from_slice(&to.0.to_be_bytes());
    p.splice(48..48, second);
    p[3] = 64;
    p[48 + 32 + 7] = 1; // the segment's DESTINATION CSCD DESCRIPTOR ID
    p
}

/// EXTENDED COPY between the logical units of a target, either way, when the initiator could
/// do the same itself; a logical unit it does not see, one that is write-protected, or one
/// another nexus reserved is unreachable, and nothing is copied.
#[tokio::test]
async fn extended_copy_copies_between_the_logical_units_of_a_target() {
    let (t, one) = target();
    let lu = |n: &str, read_only: bool| {
        let store = Arc::new(MemoryStore::new(BLOCKS * BS as u64));
        let config = LuConfig { read_only, ..LuConfig::new(BS, LuIdentity::derived(n)) };
        (Arc::new(LogicalUnit::new(store.clone(), config).unwrap()), store)
    };
    let ((two_lu, two), (hidden, _), (protected, _)) = (lu("t:2", false), lu("t:3", false), lu("t:4", true));
    let naa = |lu: &LogicalUnit| lu.identity().naa;
    let (n1, n2, n3, n4) = (naa(&t.lun(1).unwrap()), naa(&two_lu), naa(&hidden), naa(&protected));
    t.add_lun(2, two_lu).unwrap();
    t.add_lun(3, hidden).unwrap();
    t.add_lun(4, protected).unwrap();
    t.set_mask(3, Some(["iqn.someone-else".to_string()].into()));
    let (a, b) = (Init::new("iqn.a"), Init::new("iqn.b"));
    a.ready(&t).await;
    let data: Vec<u8> = (0..8 * BS as usize).map(|i| (i / 5) as u8).collect();
    assert_eq!(a.cmd(&t, &rw16(0x8a, 0, 8, 0), &data).await.status, status::GOOD);
    let (a, t) = (&a, &t);
    let copy = |p: Vec<u8>| async move { a.cmd(t, &xcopy_cdb(p.len()), &p).await };
    assert_eq!(copy(xcopy_between((n1, 0), (n2, 100), 8)).await.status, status::GOOD);
    assert_eq!(&two.read(100 * BS as u64, 8 * BS as usize).await.unwrap()[..], &data[..], "into LUN 2");
    assert_eq!(copy(xcopy_between((n2, 100), (n1, 300), 8)).await.status, status::GOOD);
    assert_eq!(&one.read(300 * BS as u64, 8 * BS as usize).await.unwrap()[..], &data[..], "back from LUN 2");
    let unreachable = Some((key::COPY_ABORTED, (0x08, 0x04)));
    assert_eq!(sense_of(&copy(xcopy_between((n1, 0), (n3, 0), 8)).await), unreachable, "masked from a");
    assert_eq!(sense_of(&copy(xcopy_between((n1, 0), (n4, 0), 8)).await), unreachable, "write-protected");
    assert_eq!(copy(xcopy_between((n4, 0), (n1, 500), 8)).await.status, status::GOOD, "read from a protected one");
    // Received by the write-protected LUN 4 itself: out of it, yes; into it, DATA PROTECT.
    let to_lun4 = |p: Vec<u8>| {
        let req = Request {
            nexus: a.nexus.clone(),
            lun: encode_lun(4),
            cdb: Bytes::copy_from_slice(&xcopy_cdb(p.len())),
            data_out: Bytes::from(p),
            data_in_max: 0,
        };
        async move { t.execute(&req).await }
    };
    let first = to_lun4(xcopy_between((n4, 0), (n1, 600), 8)).await;
    assert_eq!(sense_of(&first), Some((key::UNIT_ATTENTION, asc::POWER_ON_RESET)));
    assert_eq!(to_lun4(xcopy_between((n4, 0), (n1, 600), 8)).await.status, status::GOOD, "out of LUN 4");
    let r = to_lun4(xcopy_between((n1, 0), (n4, 0), 8)).await;
    assert_eq!(sense_of(&r), Some((key::DATA_PROTECT, asc::WRITE_PROTECTED)), "into LUN 4");
    // b reserves LUN 2 for itself (exclusive access): a may neither read nor write it.
    let reserve = |action, kind, key, sark| {
        let (cdb, data) = prout(action, kind, key, sark);
        Request {
            nexus: b.nexus.clone(),
            lun: encode_lun(2),
            cdb: Bytes::copy_from_slice(&cdb[..]),
            data_out: Bytes::from(data),
            data_in_max: 0,
        }
    };
    let first = t.execute(&reserve(0, 0, 0, 0xbb)).await;
    assert_eq!(sense_of(&first), Some((key::UNIT_ATTENTION, asc::POWER_ON_RESET)));
    assert_eq!(t.execute(&reserve(0, 0, 0, 0xbb)).await.status, status::GOOD, "REGISTER");
    assert_eq!(t.execute(&reserve(1, 3, 0xbb, 0)).await.status, status::GOOD, "RESERVE, exclusive access");
    assert_eq!(sense_of(&copy(xcopy_between((n1, 0), (n2, 200), 8)).await), unreachable, "into b's");
    assert_eq!(sense_of(&copy(xcopy_between((n2, 100), (n1, 700), 8)).await), unreachable, "out of b's");
    assert!(two.read(200 * BS as u64, BS as usize).await.unwrap().iter().all(|x| *x == 0), "nothing copied");
}

#[tokio::test]
async fn supported_task_management_functions_are_the_ones_iscsi_answers() {
    let (t, _) = target();
    let a = Init::new("iqn.a");
    a.ready(&t).await;
    let r = a.cmd(&t, &[0xa3, 0x0d, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], &[]).await;
    assert_eq!(&r.data[..], &[0xde, 0x07, 0, 0]);
    let r = a.cmd(&t, &[0xa3, 0x0d, 0x80, 0, 0, 0, 0, 0, 0, 16, 0, 0], &[]).await;
    assert_eq!((r.data.len(), r.data[3]), (16, 0x0c), "REPD");
}

#[test]
fn lun_encoding_round_trips() {
    for lun in [0u16, 1, 255, 256, 16383] {
        assert_eq!(decode_lun(encode_lun(lun)), Some(lun));
    }
    assert_eq!(decode_lun(0x0001_0000_0000_0000), Some(1));
    assert_eq!(decode_lun(0x0001_0000_0000_0001), None);
}

/// WRITE ATOMIC(16): the layout of the 16-byte reads and writes, its two-byte TRANSFER LENGTH
/// (bytes 12-13) inside theirs.
fn write_atomic16(lba: u64, blocks: u16, flags: u8) -> [u8; 16] {
    rw16(0x9c, lba, blocks as u32, flags)
}

#[tokio::test]
async fn write_atomic_writes_whole_ranges_up_to_the_advertised_limit() {
    let (t, store) = target();
    let a = Init::new("iqn.a");
    a.ready(&t).await;
    let limits = a.cmd(&t, &[0x12, 1, 0xb0, 0, 64, 0], &[]).await;
    let most = u32::from_be_bytes(limits.data[44..48].try_into().unwrap());
    assert_eq!(most as u64, crate::store::ATOMIC_WRITE_MAX / BS as u64);
    let data = vec![0xa6u8; 256 * BS as usize];
    let w = a.cmd(&t, &write_atomic16(BLOCKS - 256, 256, 0x08), &data).await;
    assert_eq!(w.status, status::GOOD);
    assert_eq!(store.read((BLOCKS - 256) * BS as u64, data.len()).await.unwrap(), data);
    // Beyond the end is out of range even when also too long; too long is an invalid field.
    let r = a.cmd(&t, &write_atomic16(BLOCKS - 1, 2, 0), &data[..2 * BS as usize]).await;
    assert_eq!(sense_of(&r), Some((key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE)));
    let r = a.cmd(&t, &write_atomic16(0, most as u16 + 1, 0), &[]).await;
    assert_eq!(sense_of(&r), Some((key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)));
    let r = a.cmd(&t, &write_atomic16(0, 1, 0x20), &data[..BS as usize]).await;
    assert_eq!(sense_of(&r), Some((key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)), "WRPROTECT");
    // A data-out shorter than the blocks asked for writes none of them.
    let r = a.cmd(&t, &write_atomic16(0, 4, 0), &[0x55; 3 * BS as usize]).await;
    assert_eq!(sense_of(&r), Some((key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_INFORMATION_UNIT)));
    assert_eq!(store.read(0, 4 * BS as usize).await.unwrap(), vec![0u8; 4 * BS as usize]);
    assert_eq!(a.cmd(&t, &write_atomic16(0, 0, 0), &[]).await.status, status::GOOD);
}

/// A memory store without atomic writes (as a file store without its intent file is: the
/// `rtgt` crate's file tests check that it says so).
struct NoAtomicWrites(MemoryStore);

impl BlockStore for NoAtomicWrites {
    fn describe(&self) -> String {
        "no atomic writes".into()
    }
    fn capacity(&self) -> u64 {
        self.0.capacity()
    }
    fn caps(&self) -> crate::store::StoreCaps {
        crate::store::StoreCaps { atomic_write_max: 0, ..self.0.caps() }
    }
    fn read(&self, offset: u64, len: usize) -> crate::store::BoxFuture<'_, crate::store::StoreResult<Bytes>> {
        self.0.read(offset, len)
    }
    fn write(&self, offset: u64, data: Bytes, fua: bool) -> crate::store::BoxFuture<'_, crate::store::StoreResult<()>> {
        self.0.write(offset, data, fua)
    }
    fn flush(&self) -> crate::store::BoxFuture<'_, crate::store::StoreResult<()>> {
        self.0.flush()
    }
    fn unmap(&self, offset: u64, len: u64) -> crate::store::BoxFuture<'_, crate::store::StoreResult<()>> {
        self.0.unmap(offset, len)
    }
}

#[tokio::test]
async fn a_store_without_atomic_writes_offers_no_write_atomic() {
    let t = target_on(Arc::new(NoAtomicWrites(MemoryStore::new(BLOCKS * BS as u64))));
    let a = Init::new("iqn.a");
    a.ready(&t).await;
    let limits = a.cmd(&t, &[0x12, 1, 0xb0, 0, 64, 0], &[]).await;
    assert_eq!(&limits.data[44..48], &[0, 0, 0, 0], "MAXIMUM ATOMIC TRANSFER LENGTH");
    let r = a.cmd(&t, &write_atomic16(0, 1, 0), &[0; BS as usize]).await;
    assert_eq!(sense_of(&r), Some((key::ILLEGAL_REQUEST, asc::INVALID_OPCODE)));
    let one = a.cmd(&t, &[0xa3, 0x0c, 0x01, 0x9c, 0, 0, 0, 0, 0x10, 0, 0, 0], &[]).await;
    assert_eq!(one.data[1] & 0x07, 0x01, "RSOC: not supported");
}

#[tokio::test]
async fn software_write_protect_refuses_writes_until_cleared() {
    let (t, _) = target();
    let a = Init::new("iqn.a");
    let b = Init::new("iqn.b");
    a.ready(&t).await;
    b.ready(&t).await;
    let changeable = a.cmd(&t, &[0x1a, 0x08, 0x40 | 0x0a, 0, 255, 0], &[]).await;
    assert_eq!(changeable.data[4 + 4] & 0x08, 0x08, "SWP is changeable");
    let control = |swp: bool| {
        let mut page = a_control_page();
        if swp {
            page[4] |= 0x08;
        }
        let mut data = vec![0u8; 4];
        data.extend_from_slice(&page);
        data
    };
    let on = control(true);
    assert_eq!(a.cmd(&t, &[0x15, 0x10, 0, 0, on.len() as u8, 0], &on).await.status, status::GOOD);
    let r = b.cmd(&t, &rw16(0x8a, 0, 1, 0), &[0; BS as usize]).await;
    assert_eq!(sense_of(&r), Some((key::UNIT_ATTENTION, asc::MODE_PARAMETERS_CHANGED)));
    let r = b.cmd(&t, &rw16(0x8a, 0, 1, 0), &[0; BS as usize]).await;
    assert_eq!(sense_of(&r), Some((key::DATA_PROTECT, asc::SOFTWARE_WRITE_PROTECTED)));
    let sense = b.cmd(&t, &[0x1a, 0x08, 0x3f, 0, 255, 0], &[]).await;
    assert_eq!(sense.data[2] & 0x80, 0x80, "WP in the device-specific parameter");
    assert_eq!(b.cmd(&t, &rw16(0x88, 0, 1, 0), &[]).await.status, status::GOOD, "reads go on");
    let off = control(false);
    assert_eq!(a.cmd(&t, &[0x15, 0x10, 0, 0, off.len() as u8, 0], &off).await.status, status::GOOD);
    b.cmd(&t, &[0, 0, 0, 0, 0, 0], &[]).await; // the unit attention of the change
    assert_eq!(b.cmd(&t, &rw16(0x8a, 0, 1, 0), &[0; BS as usize]).await.status, status::GOOD);
}

/// The control mode page as it is by default (D_SENSE and SWP clear).
fn a_control_page() -> Vec<u8> {
    let mut p = vec![0u8; 12];
    p[0] = 0x0a;
    p[1] = 10;
    p[2] = 0x20; // TST 001b
    p[3] = 0x10;
    p[8..10].copy_from_slice(&0xffffu16.to_be_bytes());
    p
}

#[tokio::test]
async fn sanitize_block_erase_unmaps_every_block() {
    let (t, store) = target();
    let a = Init::new("iqn.a");
    a.ready(&t).await;
    let data = vec![b'a'; 256 * BS as usize];
    assert_eq!(a.cmd(&t, &rw16(0x8a, 0, 256, 0), &data).await.status, status::GOOD);
    assert_eq!(a.cmd(&t, &rw16(0x8a, BLOCKS - 256, 256, 0), &data).await.status, status::GOOD);
    let block_erase = [0x48, 0x02, 0, 0, 0, 0, 0, 0, 0, 0];
    // Reserved bits and a parameter list are refused, and nothing is erased.
    let mut reserved = block_erase;
    reserved[4] = 4;
    assert_eq!(sense_of(&a.cmd(&t, &reserved, &[]).await), Some((key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)));
    let mut with_list = block_erase;
    with_list[8] = 8;
    let r = a.cmd(&t, &with_list, &[0; 8]).await;
    assert_eq!(sense_of(&r), Some((key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)));
    assert_eq!(store.read(0, 512).await.unwrap(), data[..512]);
    // OVERWRITE is not offered.
    let r = a.cmd(&t, &[0x48, 0x01, 0, 0, 0, 0, 0, 0, 8, 0], &[0; 8]).await;
    assert_eq!(sense_of(&r), Some((key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)));
    assert_eq!(a.cmd(&t, &block_erase, &[]).await.status, status::GOOD);
    assert_eq!(store.read(0, data.len()).await.unwrap(), vec![0u8; data.len()]);
    let extents = store.mapped_extents(0, BLOCKS * BS as u64).await.unwrap();
    assert!(extents.iter().all(|e| !e.mapped), "everything deallocated: {extents:?}");
    let characteristics = a.cmd(&t, &[0x12, 1, 0xb1, 0, 64, 0], &[]).await;
    assert_eq!(characteristics.data[7] >> 6, 1, "WABEREQ: reads after a block erase succeed");
}

/// A memory store that "encrypts": its crypto erase unmaps everything and counts the keys it
/// had, and refuses while `refuse` is set.
struct Encrypting {
    inner: MemoryStore,
    keys_replaced: std::sync::atomic::AtomicU32,
    refuse: std::sync::atomic::AtomicBool,
}

impl BlockStore for Encrypting {
    fn describe(&self) -> String {
        "encrypting".into()
    }
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }
    fn caps(&self) -> crate::store::StoreCaps {
        self.inner.caps()
    }
    fn read(&self, offset: u64, len: usize) -> crate::store::BoxFuture<'_, crate::store::StoreResult<Bytes>> {
        self.inner.read(offset, len)
    }
    fn write(&self, offset: u64, data: Bytes, fua: bool) -> crate::store::BoxFuture<'_, crate::store::StoreResult<()>> {
        self.inner.write(offset, data, fua)
    }
    fn flush(&self) -> crate::store::BoxFuture<'_, crate::store::StoreResult<()>> {
        self.inner.flush()
    }
    fn unmap(&self, offset: u64, len: u64) -> crate::store::BoxFuture<'_, crate::store::StoreResult<()>> {
        self.inner.unmap(offset, len)
    }
    fn crypto_erase(&self) -> Option<&dyn crate::store::crypto_erase::CryptoErase> {
        Some(self)
    }
}

impl crate::store::crypto_erase::CryptoErase for Encrypting {
    fn crypto_erase(&self) -> crate::store::BoxFuture<'_, Result<(), crate::store::crypto_erase::EraseError>> {
        use std::sync::atomic::Ordering::SeqCst;
        Box::pin(async move {
            if self.refuse.load(SeqCst) {
                return Err(crate::store::crypto_erase::EraseError::Refused("snapshots".into()));
            }
            self.inner.unmap(0, self.inner.capacity()).await?;
            self.keys_replaced.fetch_add(1, SeqCst);
            Ok(())
        })
    }
}

/// SANITIZE CRYPTO ERASE reaches a store that encrypts (and is listed by REPORT SUPPORTED
/// OPERATION CODES only there); a store that refuses leaves the data, answering INVALID FIELD
/// IN CDB on the service action; a store that does not encrypt never sees it.
#[tokio::test]
async fn sanitize_crypto_erase_replaces_the_key_where_the_store_encrypts() {
    use std::sync::atomic::Ordering::SeqCst;
    let store = Arc::new(Encrypting {
        inner: MemoryStore::new(BLOCKS * BS as u64),
        keys_replaced: Default::default(),
        refuse: std::sync::atomic::AtomicBool::new(true),
    });
    let t = target_on(store.clone());
    let a = Init::new("iqn.a");
    a.ready(&t).await;
    let data = vec![b'c'; 64 * BS as usize];
    assert_eq!(a.cmd(&t, &rw16(0x8a, 0, 64, 0), &data).await.status, status::GOOD);
    let listed = a.cmd(&t, &[0xa3, 0x0c, 0x02, 0x48, 0, 0x03, 0, 0, 0, 64, 0, 0], &[]).await;
    assert_eq!((listed.status, listed.data[1] & 0x07), (status::GOOD, 0x03), "supported per standard");
    let crypto_erase = [0x48, 0x03, 0, 0, 0, 0, 0, 0, 0, 0];
    let refused = a.cmd(&t, &crypto_erase, &[]).await;
    assert_eq!(sense_of(&refused), Some((key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)));
    assert_eq!(store.keys_replaced.load(SeqCst), 0);
    assert_eq!(store.inner.read(0, 512).await.unwrap(), data[..512]);
    store.refuse.store(false, SeqCst);
    assert_eq!(a.cmd(&t, &crypto_erase, &[]).await.status, status::GOOD);
    assert_eq!(store.keys_replaced.load(SeqCst), 1);
    assert_eq!(a.cmd(&t, &rw16(0x88, 0, 64, 0), &[]).await.data, vec![0u8; data.len()]);

    let (plain, _) = target();
    a.ready(&plain).await;
    let r = a.cmd(&plain, &crypto_erase, &[]).await;
    assert_eq!(sense_of(&r), Some((key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)));
    let listed = a.cmd(&plain, &[0xa3, 0x0c, 0x02, 0x48, 0, 0x03, 0, 0, 0, 64, 0, 0], &[]).await;
    assert_eq!(listed.data[1] & 0x07, 0x01, "not supported");
}

/// A store that is not thin (null here): no UNMAP or SANITIZE in dispatch or RSOC, LBPME and
/// LBPRZ clear, no provisioning VPD bits, WRITE SAME with UNMAP refused, and GET LBA STATUS
/// reporting everything mapped.
#[tokio::test]
async fn a_store_that_is_not_thin_offers_no_unmap_and_reports_everything_mapped() {
    let t = target_on(Arc::new(crate::store::NullStore::new(BLOCKS * BS as u64)));
    let a = Init::new("iqn.a");
    a.ready(&t).await;
    let all = a.cmd(&t, &[0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], &[]).await;
    let opcodes: Vec<u8> = all.data[4..].chunks(8).map(|d| d[0]).collect();
    assert!(!opcodes.contains(&0x42) && !opcodes.contains(&0x48), "{opcodes:02x?}");
    assert!(opcodes.contains(&0x2a) && opcodes.contains(&0x93), "writes and WRITE SAME stay");
    let one = a.cmd(&t, &[0xa3, 0x0c, 0x01, 0x42, 0, 0, 0, 0, 0, 64, 0, 0], &[]).await;
    assert_eq!(one.data[1] & 0x07, 0x01, "UNMAP: not supported");
    let unmap = a.cmd(&t, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &[0; 24]).await;
    assert_eq!(sense_of(&unmap), Some((key::ILLEGAL_REQUEST, asc::INVALID_OPCODE)));
    let rc16 = a.cmd(&t, &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], &[]).await;
    assert_eq!(rc16.data[14] & 0xc0, 0, "LBPME and LBPRZ clear");
    let lbp = a.cmd(&t, &[0x12, 1, 0xb2, 0, 8, 0], &[]).await;
    assert_eq!((lbp.data[5], lbp.data[6]), (0, 0), "no provisioning bits, not thin");
    let mut ws = rw16(0x93, 0, 8, 0x08);
    ws[10..14].copy_from_slice(&8u32.to_be_bytes());
    let r = a.cmd(&t, &ws, &[0; BS as usize]).await;
    assert_eq!(sense_of(&r), Some((key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)), "WRITE SAME with UNMAP");
    let status = a.cmd(&t, &[0x9e, 0x12, 0, 0, 0, 0, 0, 0, 0, 100, 0, 0, 0, 64, 0, 0], &[]).await;
    assert_eq!(status.status, status::GOOD);
    assert_eq!(&status.data[8..16], &100u64.to_be_bytes(), "from the LBA asked for");
    assert_eq!(status.data[20], 0, "mapped");
}

/// One PERSISTENT RESERVE OUT a hostile or confused initiator might send: any service action,
/// scope and type, and a parameter list of any length that is sometimes well formed, with
/// TransportIDs naming the initiators of the test or garbage.
#[derive(Debug, Clone)]
struct RandomProut {
    from: usize,
    action: u8,
    scope_type: u8,
    keys: (u64, u64),
    flags: u8,
    relative_port: u16,
    ids: Vec<(usize, bool)>,
    garbage: Vec<u8>,
    length_delta: i8,
}

fn random_prout() -> impl proptest::strategy::Strategy<Value = RandomProut> {
    use proptest::prelude::*;
    (
        0..4usize,
        prop_oneof![4 => Just(0u8), 3 => Just(1), 2 => Just(2), 1 => Just(3), 2 => Just(4), 1 => Just(5), 2 => Just(6), 3 => Just(7), 1 => Just(8)],
        prop_oneof![8 => prop_oneof![Just(1u8), Just(3), Just(5), Just(6), Just(7), Just(8)], 1 => any::<u8>()],
        (0u64..3, 0u64..3),
        prop_oneof![4 => Just(0u8), 1 => Just(0x04), 1 => Just(0x08), 1 => Just(0x0c), 1 => Just(0x02), 1 => any::<u8>()],
        prop_oneof![4 => 1u16..3, 1 => 0u16..4],
        proptest::collection::vec((0..4usize, proptest::bool::weighted(0.8)), 0..3),
        proptest::collection::vec(any::<u8>(), 0..40),
        prop_oneof![6 => Just(0i8), 1 => -3i8..4],
    )
        .prop_map(|(from, action, scope_type, keys, flags, relative_port, ids, garbage, length_delta)| RandomProut {
            from,
            action,
            scope_type,
            keys,
            flags,
            relative_port,
            ids,
            garbage,
            length_delta,
        })
}

const RANDOM_INITIATORS: [(&str, u16); 4] = [("iqn.a", 1), ("iqn.a", 2), ("iqn.b", 1), ("iqn.c", 2)];

impl RandomProut {
    fn nexus(&self) -> Arc<Nexus> {
        let (name, port) = RANDOM_INITIATORS[self.from];
        Nexus::new(name, 1, "iqn.2026-11.org.example:t", port, 1)
    }

    fn request(&self) -> Request {
        let mut data = vec![0u8; 24];
        data[0..8].copy_from_slice(&self.keys.0.to_be_bytes());
        data[8..16].copy_from_slice(&self.keys.1.to_be_bytes());
        let ids: Vec<u8> = self
            .ids
            .iter()
            .flat_map(|&(i, well_formed)| match well_formed {
                true => initiator_port_id(&format!("{},i,0x000000000001", RANDOM_INITIATORS[i].0)),
                false => self.garbage.clone(),
            })
            .collect();
        if self.action == 7 {
            data[17] = self.flags & 0x03;
            data[18..20].copy_from_slice(&self.relative_port.to_be_bytes());
            data[20..24].copy_from_slice(&(ids.len() as u32).to_be_bytes());
            data.extend_from_slice(&ids);
        } else {
            data[20] = self.flags;
            if self.flags & 0x08 != 0 {
                data.extend_from_slice(&(ids.len() as u32).to_be_bytes());
                data.extend_from_slice(&ids);
            }
        }
        let len = (data.len() as i64 + self.length_delta as i64).max(0) as usize;
        data.resize(len, 0);
        Request {
            nexus: self.nexus(),
            lun: encode_lun(1),
            cdb: Bytes::copy_from_slice(&prout_with(self.action, self.scope_type, &data)),
            data_out: Bytes::from(data),
            data_in_max: u32::MAX,
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 3000, ..Default::default() })]

    /// Any sequence of PERSISTENT RESERVE OUT commands is answered (GOOD, CHECK CONDITION or
    /// RESERVATION CONFLICT), never panics, and leaves a coherent state: a reservation that
    /// is not all-registrants is held by a registered I_T nexus, and the registrations stay
    /// within their bound. (Each initiator's power-on unit attention is cleared first.)
    #[test]
    fn persistent_reserve_out_survives_anything_and_stays_coherent(
        commands in proptest::collection::vec(random_prout(), 1..25)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let (t, _) = target();
            t.set_port_groups([(1, alua::AluaState::ActiveOptimized), (2, alua::AluaState::ActiveOptimized)].into());
            for from in 0..RANDOM_INITIATORS.len() {
                let init = Init { nexus: RandomProut { from, ..random_prout_default() }.nexus() };
                init.ready(&t).await;
            }
            for command in &commands {
                let r = t.execute(&command.request()).await;
                proptest::prop_assert!(
                    [status::GOOD, status::CHECK_CONDITION, status::RESERVATION_CONFLICT].contains(&r.status),
                    "{:?} answered {}", command, r.status
                );
                let lu = t.lun(1).unwrap();
                let st = lu.state();
                proptest::prop_assert!(st.pr.registrants.len() <= pr::REGISTRATIONS_MAX);
                if let Some(r) = st.pr.reservation
                    && !r.kind.all_registrants()
                {
                    proptest::prop_assert!(st.pr.registrants.contains_key(&r.holder), "holder unregistered after {:?}", command);
                }
            }
            Ok(())
        })?;
    }
}

fn random_prout_default() -> RandomProut {
    RandomProut {
        from: 0,
        action: 0,
        scope_type: 0,
        keys: (0, 0),
        flags: 0,
        relative_port: 0,
        ids: Vec::new(),
        garbage: Vec::new(),
        length_delta: 0,
    }
}
