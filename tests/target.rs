//! End-to-end tests of the target through the library's initiator over loopback TCP.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{BS, TARGET, TestTarget, eventually, memory_config, start};
use rtgt::pdu::{self, Bhs, Digests, Pdu, tmf};
use rtgt_testkit::initiator::{self, Error, InitiatorConfig, Session, rw16};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn pattern(seed: u8, len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect::<Vec<u8>>())
}

#[tokio::test]
async fn discovery_lists_targets_and_unknown_targets_are_refused() {
    let t = start(memory_config("")).await;
    let stream = TcpStream::connect(t.addr).await.unwrap();
    let records = initiator::discover(stream, &InitiatorConfig::default()).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].name, TARGET);
    assert_eq!(records[0].addresses, vec![format!("{},1", t.addr)]);

    let stream = TcpStream::connect(t.addr).await.unwrap();
    let err = Session::login(stream, &InitiatorConfig::default(), Some("iqn.2026-11.dev.rtgt:nope")).await.unwrap_err();
    assert_eq!(err, Error::Login { class: 2, detail: 3 });
}

#[tokio::test]
async fn write_read_flush_unmap_with_and_without_digests() {
    let t = start(memory_config("")).await;
    for (i, digests) in [false, true].into_iter().enumerate() {
        let cfg = InitiatorConfig {
            isid: 0x100 + i as u64,
            header_digest: digests,
            data_digest: digests,
            ..InitiatorConfig::default()
        };
        let s = t.login(&cfg).await;
        assert_eq!(s.negotiated().header_digest, digests);
        s.clear_unit_attentions(1).await.unwrap();
        assert_eq!(s.capacity(1).await.unwrap(), (64 << 20 >> 9, BS));
        let data = pattern(i as u8, 300 * BS as usize);
        s.write(1, 1000, data.clone(), BS, false).await.unwrap();
        s.flush(1).await.unwrap();
        assert_eq!(s.read(1, 1000, 300, BS).await.unwrap(), data);
        s.unmap(1, &[(1000, 128)]).await.unwrap();
        let after = s.read(1, 1000, 300, BS).await.unwrap();
        assert!(after[..128 * BS as usize].iter().all(|&b| b == 0));
        assert_eq!(&after[128 * BS as usize..], &data[128 * BS as usize..]);
        TestTarget::assert_clean(&s);
        s.logout().await.unwrap();
    }
}

#[tokio::test]
async fn writes_through_r2t_only() {
    let t = start(memory_config("max_burst_length = 65536\nfirst_burst_length = 65536")).await;
    let cfg = InitiatorConfig { isid: 7, immediate_data: false, initial_r2t: true, ..InitiatorConfig::default() };
    let s = t.login(&cfg).await;
    assert!(s.negotiated().initial_r2t && !s.negotiated().immediate_data);
    s.clear_unit_attentions(0).await.unwrap();
    let data = pattern(9, 1 << 20); // sixteen R2Ts of 64 KiB
    s.write(0, 0, data.clone(), BS, true).await.unwrap();
    assert_eq!(s.read(0, 0, (1 << 20) / BS, BS).await.unwrap(), data);
    TestTarget::assert_clean(&s);
}

#[tokio::test]
async fn concurrent_commands_queue_deeper_than_the_window() {
    let t = start(memory_config("queue_depth = 8")).await;
    let s = t.ready_session(11).await;
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let data = pattern(i as u8, 8 * BS as usize);
            s.write(1, i * 8, data.clone(), BS, false).await.unwrap();
            assert_eq!(s.read(1, i * 8, 8, BS).await.unwrap(), data);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let v = s.violations();
    assert!(v.widest_window <= 8, "the CmdSN window stays within the queue depth: {v:?}");
    TestTarget::assert_clean(&s);
}

#[tokio::test]
async fn residuals_are_reported() {
    let t = start(memory_config("")).await;
    let s = t.ready_session(12).await;
    // READ(10) of one block with room for 200 bytes: overflow of 312.
    let r = s.command(1, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], Bytes::new(), 200).await.unwrap();
    assert_eq!((r.status, r.data.len(), r.overflow, r.residual), (0, 200, true, BS - 200));
    // WRITE(10) of one block with 2 blocks of data: underflow.
    let r = s.command(1, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], pattern(1, 2 * BS as usize), 0).await.unwrap();
    assert_eq!((r.status, r.underflow, r.residual), (0, true, BS));
    TestTarget::assert_clean(&s);
}

#[tokio::test]
async fn nop_ping_and_text_in_full_feature_phase() {
    let t = start(memory_config("")).await;
    let s = t.ready_session(13).await;
    assert_eq!(s.nop(Bytes::from_static(b"hello")).await.unwrap(), Bytes::from_static(b"hello"));
    let records = s.send_targets("").await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].name, TARGET);
}

#[tokio::test]
async fn lun_reset_gives_every_session_a_unit_attention() {
    let t = start(memory_config("")).await;
    let a = t.ready_session(21).await;
    let b = t.ready_session(22).await;
    assert_eq!(a.task_management(tmf::LOGICAL_UNIT_RESET, 1, 0, 0).await.unwrap(), tmf::FUNCTION_COMPLETE);
    for s in [&a, &b] {
        let r = s.command(1, &[0; 6], Bytes::new(), 0).await.unwrap();
        assert_eq!(r.sense_code(), Some((6, 0x29, 0x03)));
        assert_eq!(s.command(1, &[0; 6], Bytes::new(), 0).await.unwrap().status, 0);
    }
    assert_eq!(a.task_management(tmf::ABORT_TASK, 1, 999, 0).await.unwrap(), tmf::TASK_DOES_NOT_EXIST);
    assert_eq!(a.task_management(tmf::LOGICAL_UNIT_RESET, 9, 0, 0).await.unwrap(), tmf::LUN_DOES_NOT_EXIST);
    TestTarget::assert_clean(&a);
    TestTarget::assert_clean(&b);
}

#[tokio::test]
async fn session_reinstatement_closes_the_old_session() {
    let t = start(memory_config("")).await;
    let old = t.ready_session(31).await;
    let new = t.ready_session(31).await;
    assert_eq!(new.read(1, 0, 1, BS).await.unwrap().len(), BS as usize);
    let closed = tokio::time::timeout(Duration::from_secs(10), old.closed()).await;
    assert!(closed.is_ok(), "the reinstated session's connection was closed");
    assert_eq!(t.server.registry.session_count(), 1);
}

#[tokio::test]
async fn malformed_pdus_get_a_reject_or_a_close_and_others_keep_working() {
    let t = start(memory_config("")).await;
    let healthy = t.ready_session(41).await;

    // Garbage before login: the connection is closed, nothing else happens.
    let mut raw = TcpStream::connect(t.addr).await.unwrap();
    raw.write_all(&[0xffu8; 48]).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");

    // A header claiming a huge data segment after login: closed.
    let mut raw = raw_login(t.addr, 42).await;
    let mut header =
        Pdu::new(pdu::NopOut { immediate: true, itt: 5, ..Default::default() }).encode(Digests::default()).to_vec();
    header[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    raw.write_all(&header).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");

    // A target-only opcode from the initiator is rejected; the session survives.
    let victim = t.ready_session(43).await;
    victim.send_raw(&Pdu::new(pdu::Reject::default())).unwrap();
    let r = victim.command(1, &[0; 6], Bytes::new(), 0).await.unwrap();
    assert_eq!(r.status, 0, "the session survives a Reject");

    assert_eq!(healthy.read(1, 0, 8, BS).await.unwrap().len(), 8 * BS as usize);
}

#[tokio::test]
async fn unknown_opcode_on_the_wire_is_rejected_and_the_session_continues() {
    let t = start(memory_config("")).await;
    let mut raw = raw_login(t.addr, 44).await;
    let mut header = [0u8; 48];
    header[0] = 0x40 | 0x1c;
    header[16..20].copy_from_slice(&77u32.to_be_bytes());
    raw.write_all(&header).await.unwrap();
    let reject = read_pdu(&mut raw).await;
    match reject.bhs {
        Bhs::Reject(r) => {
            assert_eq!(r.reason, pdu::reject_reason::COMMAND_NOT_SUPPORTED);
            assert_eq!(&reject.data[..], &header[..]);
        }
        other => panic!("expected a Reject, got {other:?}"),
    }
    // The session still answers: a NOP-Out ping.
    let nop = pdu::NopOut { immediate: true, itt: 78, ttt: pdu::RESERVED_TAG, cmd_sn: 1, ..Default::default() };
    raw.write_all(&Pdu::new(nop).encode(Digests::default()).to_vec()).await.unwrap();
    assert!(matches!(read_pdu(&mut raw).await.bhs, Bhs::NopIn(n) if n.itt == 78));
}

#[tokio::test]
async fn cmd_sn_outside_the_window_is_ignored() {
    let t = start(memory_config("queue_depth = 4")).await;
    let s = t.ready_session(51).await;
    let next = s.next_cmd_sn();
    // A TEST UNIT READY far beyond MaxCmdSN: no answer, ExpCmdSN unchanged.
    let tur = pdu::ScsiCommand {
        fin: true,
        lun: rtgt::scsi::encode_lun(1),
        itt: 0x7777,
        cmd_sn: next.wrapping_add(100),
        ..Default::default()
    };
    s.send_raw(&Pdu::new(tur)).unwrap();
    // The target reads the connection in order: by the time this command (CmdSN `next`) is
    // answered, it has seen the one beyond the window, and taken no CmdSN for it.
    assert_eq!(s.command(1, &[0; 6], Bytes::new(), 0).await.unwrap().status, 0);
    assert_eq!(s.next_cmd_sn(), next.wrapping_add(1));
    assert_eq!(s.command(1, &[0; 6], Bytes::new(), 0).await.unwrap().status, 0);
    // Logged out, the target has answered whatever it was going to: nothing for 0x7777.
    s.logout().await.unwrap();
    TestTarget::assert_clean(&s);
}

#[tokio::test]
async fn idle_initiators_are_pinged_and_dead_ones_dropped() {
    let t = start(memory_config("nop_interval_secs = 1\nnop_timeout_secs = 1")).await;
    // A live session answers the pings and survives three of them (each would drop it
    // unanswered within its 1 s timeout).
    let live = t.ready_session(61).await;
    eventually("three pings answered", || live.pings_answered() >= 3).await;
    assert_eq!(live.command(1, &[0; 6], Bytes::new(), 0).await.unwrap().status, 0);
    // A dead one (logs in, never reads again) is dropped.
    let _raw = raw_login(t.addr, 62).await;
    assert_eq!(t.server.registry.session_count(), 2);
    eventually("the silent session dropped", || t.server.registry.session_count() == 1).await;
    assert_eq!(live.command(1, &[0; 6], Bytes::new(), 0).await.unwrap().status, 0, "the live one was dropped too");
}

#[tokio::test]
async fn abort_task_of_a_queued_command() {
    let t = start(memory_config("")).await;
    let s = t.ready_session(71).await;
    // A write that waits for R2T data we never send can be aborted.
    let cfg = InitiatorConfig { isid: 72, immediate_data: false, initial_r2t: true, ..InitiatorConfig::default() };
    let slow = t.login(&cfg).await;
    slow.clear_unit_attentions(1).await.unwrap();
    let cmd_sn = slow.next_cmd_sn();
    let write = pdu::ScsiCommand {
        fin: true,
        write: true,
        lun: rtgt::scsi::encode_lun(1),
        itt: 0x4242,
        expected_data_len: BS,
        cmd_sn,
        cdb: rw16(0x8a, 0, 1, 0),
        ..Default::default()
    };
    // Sent raw: the initiator will not answer the R2T because it does not know the task.
    slow.send_raw(&Pdu::new(write)).unwrap();
    // The target reads the connection in order: the write is its task when the ABORT TASK
    // arrives, no sleep needed. (This session's own CmdSN counter never took the raw write's,
    // so it sends nothing more.)
    assert_eq!(slow.task_management(tmf::ABORT_TASK, 1, 0x4242, cmd_sn).await.unwrap(), tmf::FUNCTION_COMPLETE);
    let after = s.command(1, &rw16(0x88, 0, 1, 0), Bytes::new(), BS).await.unwrap();
    assert_eq!((after.status, after.data.len()), (0, BS as usize));
    assert!(after.data.iter().all(|b| *b == 0), "the aborted write wrote nothing");
    TestTarget::assert_clean(&s);
}

/// Logs in by hand (one operational stage) on a raw stream.
async fn raw_login(addr: std::net::SocketAddr, isid: u64) -> TcpStream {
    let mut raw = TcpStream::connect(addr).await.unwrap();
    let keys = pdu::text::encode(&[("InitiatorName", "iqn.2026-11.dev.rtgt:raw"), ("TargetName", TARGET)]);
    let login = pdu::LoginRequest { transit: true, csg: 1, nsg: 3, isid, cmd_sn: 1, ..Default::default() };
    raw.write_all(&Pdu::with_data(login, keys).encode(Digests::default()).to_vec()).await.unwrap();
    let resp = read_pdu(&mut raw).await;
    assert!(matches!(resp.bhs, Bhs::LoginResponse(r) if r.status_class == 0 && r.transit), "{resp:?}");
    raw
}

async fn read_pdu(stream: &mut TcpStream) -> Pdu {
    let mut buf = bytes::BytesMut::new();
    loop {
        if let Some(p) =
            Pdu::decode(&mut buf, Digests::default(), pdu::Limits { data_segment_len_max: 1 << 20 }).unwrap()
        {
            return p;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read_buf(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "connection closed");
    }
}

/// RFC 7144 at iSCSIProtocolLevel 2: INQUIRY claims iSCSI 0962h, the queries answer without
/// ending anything, and I_T NEXUS RESET ends the session and leaves I_T NEXUS LOSS OCCURRED
/// for the nexus (and only for it) when it logs in again.
#[tokio::test]
async fn rfc_7144_task_management_at_protocol_level_2() {
    let t = start(memory_config("")).await;
    let level2 = InitiatorConfig { isid: 71, protocol_level: Some(2), ..InitiatorConfig::default() };
    let a = t.login(&level2).await;
    assert_eq!(a.task_management(tmf::QUERY_ASYNC_EVENT, 1, 0xffff_ffff, 0).await.unwrap(), tmf::FUNCTION_SUCCEEDED);
    a.clear_unit_attentions(1).await.unwrap();
    assert_eq!(a.task_management(tmf::QUERY_ASYNC_EVENT, 1, 0xffff_ffff, 0).await.unwrap(), tmf::FUNCTION_COMPLETE);
    assert_eq!(a.task_management(tmf::QUERY_TASK_SET, 1, 0xffff_ffff, 0).await.unwrap(), tmf::FUNCTION_COMPLETE);
    assert_eq!(a.task_management(tmf::QUERY_TASK, 1, 999, 0).await.unwrap(), tmf::FUNCTION_COMPLETE);
    assert_eq!(a.task_management(tmf::QUERY_TASK_SET, 9, 0xffff_ffff, 0).await.unwrap(), tmf::LUN_DOES_NOT_EXIST);
    let inquiry = a.command(1, &[0x12, 0, 0, 0, 96, 0], Bytes::new(), 96).await.unwrap();
    assert_eq!(&inquiry.data[64..66], &[0x09, 0x62], "iSCSI version descriptor at level 2");
    let b = t.ready_session(72).await;
    let inquiry = b.command(1, &[0x12, 0, 0, 0, 96, 0], Bytes::new(), 96).await.unwrap();
    assert_eq!(&inquiry.data[64..66], &[0x09, 0x60], "no version claimed at level 1");

    let rsotmf = a.command(1, &[0xa3, 0x0d, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0], Bytes::new(), 4).await.unwrap();
    assert_eq!((rsotmf.data[0] & 0x04, rsotmf.data[1]), (0x04, 0x07), "QTS; QAES, QTSS, ITNRS");
    assert_eq!(a.task_management(tmf::I_T_NEXUS_RESET, 0, 0xffff_ffff, 0).await.unwrap(), tmf::FUNCTION_COMPLETE);
    let closed = a.command(1, &[0; 6], Bytes::new(), 0).await;
    assert!(closed.is_err(), "the session ended: {closed:?}");
    let again = t.login(&level2).await;
    let r = again.command(1, &[0; 6], Bytes::new(), 0).await.unwrap();
    assert_eq!(r.sense_code(), Some((6, 0x29, 0x07)), "I_T NEXUS LOSS OCCURRED");
    assert_eq!(b.command(1, &[0; 6], Bytes::new(), 0).await.unwrap().status, 0, "other nexuses are untouched");
}
