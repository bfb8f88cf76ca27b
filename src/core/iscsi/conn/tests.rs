use super::*;
use crate::iscsi::params::Params;

struct Ctx;

impl ConnContext for Ctx {
    fn targets(&self) -> Vec<TargetRecord> {
        vec![
            TargetRecord { name: "iqn.t1".into(), addresses: vec!["127.0.0.1:3260,1".into()] },
            TargetRecord { name: "iqn.t2".into(), addresses: vec!["127.0.0.1:3260,1".into()] },
        ]
    }
    fn own_target(&self) -> Option<String> {
        Some("iqn.t1".into())
    }
    fn lun_exists(&self, lun: u64) -> bool {
        lun == crate::scsi::encode_lun(1)
    }
    fn may_reset_target(&self) -> bool {
        true
    }
    fn pending_unit_attention(&self, lun: u64) -> Option<(u8, u8)> {
        self.lun_exists(lun).then_some((0x2a, 0x01))
    }
}

const LUN1: u64 = 0x0001_0000_0000_0000;

fn params() -> Params {
    let mut p = Params::rfc_defaults();
    p.initiator_max_recv_data_segment_len = 4096;
    p.target_max_recv_data_segment_len = 8192;
    p.max_burst_len = 8192;
    p.first_burst_len = 4096;
    p.initial_r2t = false;
    p
}

fn conn_with(p: Params, kind: SessionKind) -> Connection {
    let cfg = ConnConfig { queue_depth: 4, ..ConnConfig::default() };
    Connection::new(p, kind, 0, 100, 500, cfg, Duration::ZERO)
}

fn conn() -> Connection {
    conn_with(params(), SessionKind::Normal)
}

fn cmd(itt: u32, cmd_sn: u32, read: bool, write: bool, edtl: u32, cdb0: u8) -> ScsiCommand {
    let mut cdb = [0u8; 16];
    cdb[0] = cdb0;
    ScsiCommand {
        fin: true,
        read,
        write,
        attr: 1,
        lun: LUN1,
        itt,
        expected_data_len: edtl,
        cmd_sn,
        cdb,
        ..Default::default()
    }
}

fn feed(c: &mut Connection, pdu: Pdu) -> Vec<Output> {
    c.on_pdu(pdu, Duration::from_secs(1), &Ctx);
    c.drain()
}

fn sent(outs: &[Output]) -> Vec<&Pdu> {
    outs.iter().filter_map(|o| if let Output::Send(p) = o { Some(p) } else { None }).collect()
}

fn execs(outs: &[Output]) -> Vec<&Exec> {
    outs.iter().filter_map(|o| if let Output::Execute(e) = o { Some(e) } else { None }).collect()
}

fn good(data: &[u8]) -> Response {
    Response::good(Bytes::copy_from_slice(data))
}

#[test]
fn read_data_in_is_split_by_segment_and_burst_with_status_in_the_last() {
    let mut c = conn();
    let out = feed(&mut c, Pdu::new(cmd(1, 100, true, false, 20000, 0x28)));
    assert_eq!(execs(&out).len(), 1);
    c.on_complete(1, good(&vec![7u8; 20000]));
    let out = c.drain();
    let pdus = sent(&out);
    let ins: Vec<&DataIn> = pdus.iter().map(|p| if let Bhs::DataIn(d) = &p.bhs { d } else { panic!() }).collect();
    let lens: Vec<usize> = pdus.iter().map(|p| p.data.len()).collect();
    assert_eq!(lens, vec![4096, 4096, 4096, 4096, 3616]);
    let fins: Vec<bool> = ins.iter().map(|d| d.fin).collect();
    assert_eq!(fins, vec![false, true, false, true, true], "F at each 8 KiB burst end and at the end");
    assert_eq!(ins.iter().map(|d| d.data_sn).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    assert_eq!(ins[2].buffer_offset, 8192);
    let last = ins.last().unwrap();
    assert!(last.status_present && last.status == 0 && last.stat_sn == 500);
    assert!(ins[..4].iter().all(|d| !d.status_present));
    assert_eq!(last.max_cmd_sn, 104, "window reopened by the completion");
}

#[test]
fn read_residuals_overflow_and_underflow() {
    let mut c = conn();
    feed(&mut c, Pdu::new(cmd(1, 100, true, false, 200, 0x28)));
    c.on_complete(1, good(&[1u8; 512]));
    let out = c.drain();
    let Bhs::DataIn(d) = &sent(&out)[0].bhs else { panic!() };
    assert_eq!(sent(&out)[0].data.len(), 200);
    assert!(d.overflow && !d.underflow && d.residual == 312);

    feed(&mut c, Pdu::new(cmd(2, 101, true, false, 10000, 0x28)));
    c.on_complete(2, good(&[1u8; 512]));
    let out = c.drain();
    let Bhs::DataIn(d) = &sent(&out)[0].bhs else { panic!() };
    assert!(d.underflow && d.residual == 10000 - 512);

    // EDTL 0: no Data-In, a SCSI Response with the overflow.
    feed(&mut c, Pdu::new(cmd(3, 102, true, false, 0, 0x28)));
    c.on_complete(3, good(&[1u8; 512]));
    let out = c.drain();
    let Bhs::ScsiResponse(r) = &sent(&out)[0].bhs else { panic!() };
    assert!(r.overflow && r.residual == 512);
}

#[test]
fn check_condition_goes_in_a_scsi_response_with_sense_length() {
    let mut c = conn();
    feed(&mut c, Pdu::new(cmd(1, 100, true, false, 512, 0x28)));
    let sense = Sense::illegal(asc::LBA_OUT_OF_RANGE).encode(false);
    c.on_complete(
        1,
        Response {
            status: status::CHECK_CONDITION,
            sense: Some(sense.clone()),
            data: Bytes::new(),
            data_out_len: 0,
            data_in_called_for: None,
        },
    );
    let out = c.drain();
    let pdus = sent(&out);
    assert_eq!(pdus.len(), 1);
    let Bhs::ScsiResponse(r) = &pdus[0].bhs else { panic!() };
    assert_eq!(r.status, status::CHECK_CONDITION);
    assert_eq!(&pdus[0].data[..2], &(sense.len() as u16).to_be_bytes());
    assert_eq!(&pdus[0].data[2..], &sense[..]);
}

#[test]
fn write_with_immediate_data_runs_at_once_zero_copy() {
    let mut c = conn();
    let data = Bytes::from(vec![3u8; 4096]);
    let out = feed(&mut c, Pdu::with_data(cmd(1, 100, false, true, 4096, 0x2a), data.clone()));
    let ex = execs(&out);
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].data_out, vec![3u8; 4096]);
    assert_eq!(ex[0].data_out.as_ptr(), data.as_ptr(), "the PDU's own buffer, not a copy");
}

#[test]
fn write_with_unsolicited_data_then_r2ts() {
    let mut c = conn();
    let mut command = cmd(1, 100, false, true, 20000, 0x2a);
    command.fin = false;
    let out = feed(&mut c, Pdu::with_data(command, Bytes::from(vec![1u8; 1024])));
    assert!(sent(&out).is_empty() && execs(&out).is_empty());
    // Unsolicited Data-Out completes the first burst (4096).
    let d = DataOut {
        fin: true,
        lun: LUN1,
        itt: 1,
        ttt: RESERVED_TAG,
        data_sn: 0,
        buffer_offset: 1024,
        ..Default::default()
    };
    let out = feed(&mut c, Pdu::with_data(d, Bytes::from(vec![2u8; 3072])));
    let r2ts: Vec<R2t> = sent(&out).iter().map(|p| if let Bhs::R2t(r) = p.bhs { r } else { panic!() }).collect();
    assert_eq!(r2ts.len(), 1, "MaxOutstandingR2T=1");
    assert_eq!((r2ts[0].buffer_offset, r2ts[0].desired_len, r2ts[0].r2t_sn), (4096, 8192, 0));
    // Answer the R2T in two PDUs.
    for (i, off) in [4096u32, 8192].iter().enumerate() {
        let d = DataOut {
            fin: i == 1,
            lun: LUN1,
            itt: 1,
            ttt: r2ts[0].ttt,
            data_sn: i as u32,
            buffer_offset: *off,
            ..Default::default()
        };
        let out = feed(&mut c, Pdu::with_data(d, Bytes::from(vec![3u8; 4096])));
        if i == 1 {
            let Bhs::R2t(r) = sent(&out)[0].bhs else { panic!() };
            assert_eq!((r.buffer_offset, r.desired_len, r.r2t_sn), (12288, 7712, 1));
            let d = DataOut { fin: true, lun: LUN1, itt: 1, ttt: r.ttt, buffer_offset: 12288, ..Default::default() };
            let out = feed(&mut c, Pdu::with_data(d, Bytes::from(vec![4u8; 7712])));
            let ex = execs(&out);
            assert_eq!(ex.len(), 1);
            assert_eq!(ex[0].data_out.len(), 20000);
            assert_eq!(ex[0].data_out[0], 1);
            assert_eq!(ex[0].data_out[1024], 2);
            assert_eq!(ex[0].data_out[4096], 3);
            assert_eq!(ex[0].data_out[19999], 4);
        }
    }
}

#[test]
fn wrong_data_sn_fails_the_command() {
    let mut p = params();
    p.initial_r2t = true;
    p.immediate_data = false;
    let mut c = conn_with(p, SessionKind::Normal);
    let out = feed(&mut c, Pdu::new(cmd(1, 100, false, true, 512, 0x2a)));
    let Bhs::R2t(r) = sent(&out)[0].bhs else { panic!() };
    let d = DataOut { fin: true, lun: LUN1, itt: 1, ttt: r.ttt, data_sn: 27, buffer_offset: 0, ..Default::default() };
    let out = feed(&mut c, Pdu::with_data(d, Bytes::from(vec![0u8; 512])));
    assert!(execs(&out).is_empty(), "never runs");
    let Bhs::ScsiResponse(resp) = sent(&out)[0].bhs else { panic!() };
    assert_eq!(resp.status, status::CHECK_CONDITION);
    assert_eq!(sent(&out)[0].data[2 + 2] & 0x0f, key::ABORTED_COMMAND);
}

#[test]
fn commands_ahead_of_a_gap_wait_and_outside_the_window_are_dropped() {
    let mut c = conn();
    let out = feed(&mut c, Pdu::new(cmd(2, 101, false, false, 0, 0x00)));
    assert!(execs(&out).is_empty(), "held for CmdSN 100");
    let out = feed(&mut c, Pdu::new(cmd(9, 104, false, false, 0, 0x00)));
    assert!(out.is_empty(), "beyond MaxCmdSN 103: ignored");
    let out = feed(&mut c, Pdu::new(cmd(8, 99, false, false, 0, 0x00)));
    assert!(out.is_empty(), "below ExpCmdSN: ignored");
    let out = feed(&mut c, Pdu::new(cmd(1, 100, false, false, 0, 0x00)));
    let order: Vec<u32> = execs(&out).iter().map(|e| e.itt).collect();
    assert_eq!(order, vec![1, 2]);
    assert_eq!(c.exp_cmd_sn(), 102);
    assert_eq!(c.max_cmd_sn(), 103, "two active of four");
    c.on_complete(1, good(&[]));
    c.on_complete(2, good(&[]));
    let out = c.drain();
    let Bhs::ScsiResponse(r) = sent(&out)[1].bhs else { panic!() };
    assert_eq!((r.exp_cmd_sn, r.max_cmd_sn), (102, 105));
}

#[test]
fn immediate_commands_bypass_the_window() {
    let mut c = conn();
    let mut tur = cmd(1, 100, false, false, 0, 0x00);
    tur.immediate = true;
    let out = feed(&mut c, Pdu::new(tur));
    assert_eq!(execs(&out).len(), 1);
    assert_eq!(c.exp_cmd_sn(), 100, "immediate commands do not advance ExpCmdSN");
}

#[test]
fn abort_task_waits_for_the_running_command_and_suppresses_its_response() {
    let mut c = conn();
    feed(&mut c, Pdu::new(cmd(1, 100, false, false, 0, 0x00)));
    let abort = TaskMgmtRequest {
        immediate: true,
        function: tmf::ABORT_TASK,
        lun: LUN1,
        itt: 50,
        referenced_task_tag: 1,
        cmd_sn: 101,
        ref_cmd_sn: 100,
        ..Default::default()
    };
    let out = feed(&mut c, Pdu::new(abort));
    assert!(sent(&out).is_empty(), "TMF response waits for the running task");
    c.on_complete(1, good(&[]));
    let out = c.drain();
    let pdus = sent(&out);
    assert_eq!(pdus.len(), 1);
    let Bhs::TaskMgmtResponse(r) = pdus[0].bhs else { panic!("{:?}", pdus[0].bhs) };
    assert_eq!((r.itt, r.response), (50, tmf::FUNCTION_COMPLETE));
    // The same task again: it no longer exists.
    let out = feed(&mut c, Pdu::new(TaskMgmtRequest { itt: 51, ..abort }));
    let Bhs::TaskMgmtResponse(r) = sent(&out)[0].bhs else { panic!() };
    assert_eq!(r.response, tmf::TASK_DOES_NOT_EXIST);
}

#[test]
fn lun_reset_aborts_and_asks_the_driver_to_reset() {
    let mut c = conn();
    feed(&mut c, Pdu::new(cmd(1, 100, false, false, 0, 0x00)));
    let reset = TaskMgmtRequest {
        immediate: true,
        function: tmf::LOGICAL_UNIT_RESET,
        lun: LUN1,
        itt: 60,
        cmd_sn: 101,
        ..Default::default()
    };
    let out = feed(&mut c, Pdu::new(reset));
    assert!(out.iter().any(|o| matches!(o, Output::ResetLun(l) if *l == LUN1)));
    c.on_complete(1, good(&[]));
    let out = c.drain();
    assert!(matches!(sent(&out)[0].bhs, Bhs::TaskMgmtResponse(TaskMgmtResponse { response: 0, .. })));
    let out = feed(&mut c, Pdu::new(TaskMgmtRequest { lun: 0x0007_0000_0000_0000, itt: 61, ..reset }));
    assert!(matches!(
        sent(&out)[0].bhs,
        Bhs::TaskMgmtResponse(TaskMgmtResponse { response: tmf::LUN_DOES_NOT_EXIST, .. })
    ));
    let out = feed(&mut c, Pdu::new(TaskMgmtRequest { function: tmf::CLEAR_ACA, itt: 62, ..reset }));
    assert!(matches!(
        sent(&out)[0].bhs,
        Bhs::TaskMgmtResponse(TaskMgmtResponse { response: tmf::FUNCTION_NOT_SUPPORTED, .. })
    ));
}

#[test]
fn nop_out_is_echoed_and_idle_connections_are_pinged_then_dropped() {
    let mut c = conn();
    let nop = NopOut { immediate: true, itt: 5, ttt: RESERVED_TAG, cmd_sn: 100, ..Default::default() };
    let out = feed(&mut c, Pdu::with_data(nop, Bytes::from_static(b"ping")));
    let Bhs::NopIn(n) = sent(&out)[0].bhs else { panic!() };
    assert_eq!((n.itt, n.ttt), (5, RESERVED_TAG));
    assert_eq!(&sent(&out)[0].data[..], b"ping");

    let idle = c.next_deadline();
    c.on_tick(idle);
    let out = c.drain();
    let Bhs::NopIn(ping) = sent(&out)[0].bhs else { panic!() };
    assert_eq!(ping.itt, RESERVED_TAG);
    assert_ne!(ping.ttt, RESERVED_TAG);
    c.on_tick(c.next_deadline());
    assert!(c.drain().iter().any(|o| matches!(o, Output::Close(CloseReason::NopTimeout))));
}

#[test]
fn logout_answers_and_closes() {
    let mut c = conn();
    let lo =
        LogoutRequest { immediate: true, reason: logout::CLOSE_SESSION, itt: 9, cmd_sn: 100, ..Default::default() };
    let out = feed(&mut c, Pdu::new(lo));
    assert!(matches!(sent(&out)[0].bhs, Bhs::LogoutResponse(LogoutResponse { response: 0, itt: 9, .. })));
    assert!(matches!(out.last(), Some(Output::Close(CloseReason::Logout))));
}

#[test]
fn send_targets_in_discovery_with_continuation() {
    let mut p = params();
    p.initiator_max_recv_data_segment_len = 512;
    let mut c = conn_with(p, SessionKind::Discovery);
    let t = TextRequest { fin: true, itt: 3, ttt: RESERVED_TAG, cmd_sn: 100, ..Default::default() };
    let out = feed(&mut c, Pdu::with_data(t, Bytes::from_static(b"SendTargets=All\0")));
    let Bhs::TextResponse(r) = sent(&out)[0].bhs else { panic!() };
    assert!(r.fin && !r.cont);
    let pairs = text::parse(&sent(&out)[0].data).unwrap();
    assert_eq!(pairs.len(), 4);
    assert_eq!(pairs[0], ("TargetName".into(), "iqn.t1".into()));
    // SCSI commands are refused in a discovery session.
    let out = feed(&mut c, Pdu::new(cmd(4, 101, false, false, 0, 0)));
    assert!(matches!(sent(&out)[0].bhs, Bhs::Reject(_)));
    // A tiny MaxRecvDataSegmentLength forces a continued response.
    let mut p = params();
    p.initiator_max_recv_data_segment_len = 16;
    let mut c = conn_with(p, SessionKind::Discovery);
    let out = feed(&mut c, Pdu::with_data(t, Bytes::from_static(b"SendTargets=All\0")));
    let Bhs::TextResponse(r) = sent(&out)[0].bhs else { panic!() };
    assert!(r.cont && !r.fin && r.ttt != RESERVED_TAG);
    let mut body = sent(&out)[0].data.to_vec();
    let mut ttt = r.ttt;
    let mut sn = 101;
    loop {
        let next = TextRequest { fin: true, itt: 3, ttt, cmd_sn: sn, ..Default::default() };
        sn += 1;
        let out = feed(&mut c, Pdu::new(next));
        let Bhs::TextResponse(r) = sent(&out)[0].bhs else { panic!() };
        body.extend_from_slice(&sent(&out)[0].data);
        if r.fin {
            break;
        }
        ttt = r.ttt;
    }
    assert_eq!(text::parse(&body).unwrap().len(), 4);
}

#[test]
fn stray_data_out_is_dropped_silently() {
    let mut c = conn();
    let d = DataOut { fin: true, itt: 77, ttt: RESERVED_TAG, ..Default::default() };
    assert!(feed(&mut c, Pdu::with_data(d, Bytes::from_static(&[0; 4]))).is_empty());
}

#[test]
fn budget_bounds_buffered_data() {
    let mut p = params();
    p.initial_r2t = true;
    p.immediate_data = false;
    p.max_burst_len = 1 << 20;
    let cfg = ConnConfig { queue_depth: 8, buffer_budget: 1 << 20, ..ConnConfig::default() };
    let mut c = Connection::new(p, SessionKind::Normal, 0, 100, 500, cfg, Duration::ZERO);
    let out = feed(&mut c, Pdu::new(cmd(1, 100, false, true, 768 << 10, 0x2a)));
    assert_eq!(sent(&out).len(), 1, "first write gets its R2T");
    let out = feed(&mut c, Pdu::new(cmd(2, 101, false, true, 768 << 10, 0x2a)));
    assert!(sent(&out).is_empty(), "second write waits for budget");
    let d = DataOut { fin: true, itt: 1, ttt: 1, buffer_offset: 0, ..Default::default() };
    let out = feed(&mut c, Pdu::with_data(d, Bytes::from(vec![0u8; 768 << 10])));
    assert_eq!(execs(&out).len(), 1);
    assert!(sent(&out).is_empty(), "still no budget while the first write runs");
    c.on_complete(1, good(&[]));
    let out = c.drain();
    assert!(sent(&out).iter().any(|p| matches!(p.bhs, Bhs::R2t(R2t { itt: 2, .. }))), "budget freed: second R2T");
}

/// Unsolicited data comes whether or not there is room: a write that brings it while the
/// process-wide pool is spent is refused with TASK SET FULL and its data is not kept, instead
/// of being buffered outside the bound (or waiting for room while holding it).
#[test]
fn unsolicited_data_without_room_is_refused_and_not_kept() {
    let memory = Arc::new(IoMemory::new(8192));
    let cfg = ConnConfig { queue_depth: 8, memory: memory.unshared(), ..ConnConfig::default() };
    let mut c = Connection::new(params(), SessionKind::Normal, 0, 100, 500, cfg, Duration::ZERO);
    // Held behind a CmdSN gap (100 is missing), so nothing runs and nothing is released.
    for (itt, sn) in [(1u32, 101u32), (2, 102), (3, 103)] {
        let mut command = cmd(itt, sn, false, true, 4096, 0x2a);
        command.fin = false;
        let out = feed(&mut c, Pdu::with_data(command, Bytes::from(vec![1u8; 1024])));
        assert!(sent(&out).is_empty() && execs(&out).is_empty());
        let d = DataOut { fin: true, lun: LUN1, itt, ttt: RESERVED_TAG, buffer_offset: 1024, ..Default::default() };
        feed(&mut c, Pdu::with_data(d, Bytes::from(vec![2u8; 3072])));
    }
    assert_eq!(memory.used(), 8192, "two writes' data reserved, the third refused");
    let out = feed(&mut c, Pdu::new(cmd(4, 100, false, false, 0, 0x00)));
    let ran: Vec<u32> = execs(&out).iter().map(|e| e.itt).collect();
    assert_eq!(ran, vec![1, 2], "the command that filled the gap waits for the pool");
    assert_eq!(execs(&out)[0].data_out.len(), 4096);
    let refused: Vec<u8> = sent(&out)
        .iter()
        .filter_map(|p| match p.bhs {
            Bhs::ScsiResponse(r) if r.itt == 3 => Some(r.status),
            _ => None,
        })
        .collect();
    assert_eq!(refused, vec![status::TASK_SET_FULL]);
    for itt in [1, 2] {
        c.on_complete(itt, good(&[]));
    }
    c.retry_memory();
    let out = c.drain();
    assert_eq!(execs(&out).iter().map(|e| e.itt).collect::<Vec<_>>(), vec![4]);
    c.on_complete(4, good(&[]));
    assert_eq!(memory.used(), 0);
}

fn tmf_request(function: u8, itt: u32, cmd_sn: u32) -> TaskMgmtRequest {
    TaskMgmtRequest { immediate: true, function, lun: LUN1, itt, cmd_sn, ..Default::default() }
}

fn tmf_answer(out: &[Output]) -> TaskMgmtResponse {
    match sent(out).iter().find_map(|p| match &p.bhs {
        Bhs::TaskMgmtResponse(r) => Some(*r),
        _ => None,
    }) {
        Some(r) => r,
        None => panic!("no TMF response in {out:?}"),
    }
}

#[test]
fn queries_report_tasks_without_ending_them() {
    let mut c = conn();
    feed(&mut c, Pdu::new(cmd(1, 100, false, false, 0, 0x00)));
    let query = TaskMgmtRequest { referenced_task_tag: 1, ..tmf_request(tmf::QUERY_TASK, 70, 101) };
    assert_eq!(tmf_answer(&feed(&mut c, Pdu::new(query))).response, tmf::FUNCTION_SUCCEEDED);
    let other = TaskMgmtRequest { referenced_task_tag: 9, itt: 71, ..query };
    assert_eq!(tmf_answer(&feed(&mut c, Pdu::new(other))).response, tmf::FUNCTION_COMPLETE);
    let set = tmf_request(tmf::QUERY_TASK_SET, 72, 101);
    assert_eq!(tmf_answer(&feed(&mut c, Pdu::new(set))).response, tmf::FUNCTION_SUCCEEDED);
    let elsewhere = TaskMgmtRequest { lun: 0x0007_0000_0000_0000, itt: 73, ..set };
    assert_eq!(tmf_answer(&feed(&mut c, Pdu::new(elsewhere))).response, tmf::LUN_DOES_NOT_EXIST);
    // The queried task was not aborted: its response goes out, and then it is gone.
    c.on_complete(1, good(&[]));
    assert!(sent(&c.drain()).iter().any(|p| matches!(p.bhs, Bhs::ScsiResponse(ref r) if r.itt == 1)));
    let again = TaskMgmtRequest { itt: 74, ..query };
    assert_eq!(tmf_answer(&feed(&mut c, Pdu::new(again))).response, tmf::FUNCTION_COMPLETE);
    let set = TaskMgmtRequest { itt: 75, ..set };
    assert_eq!(tmf_answer(&feed(&mut c, Pdu::new(set))).response, tmf::FUNCTION_COMPLETE);
}

#[test]
fn query_async_event_reports_the_pending_unit_attention() {
    let mut c = conn();
    let r = tmf_answer(&feed(&mut c, Pdu::new(tmf_request(tmf::QUERY_ASYNC_EVENT, 80, 100))));
    // UADE DEPTH 01b, UNIT ATTENTION; the wire carries it in bytes 8-10 (the BHS round trip).
    assert_eq!((r.response, r.additional), (tmf::FUNCTION_SUCCEEDED, [0x16, 0x2a, 0x01]));
}

#[test]
fn i_t_nexus_reset_aborts_everything_then_ends_the_session() {
    let mut c = conn();
    feed(&mut c, Pdu::new(cmd(1, 100, false, false, 0, 0x00)));
    let out = feed(&mut c, Pdu::new(tmf_request(tmf::I_T_NEXUS_RESET, 90, 101)));
    assert!(out.iter().any(|o| matches!(o, Output::NexusReset)));
    assert!(sent(&out).is_empty(), "the response waits for the running task");
    c.on_complete(1, good(&[]));
    let out = c.drain();
    assert_eq!(tmf_answer(&out).response, tmf::FUNCTION_COMPLETE);
    assert!(!sent(&out).iter().any(|p| matches!(p.bhs, Bhs::ScsiResponse(_))), "the aborted task is not answered");
    assert!(matches!(out.last(), Some(Output::Close(CloseReason::NexusReset))));
}

fn executed(out: &[Output]) -> Vec<u32> {
    out.iter()
        .filter_map(|o| match o {
            Output::Execute(e) => Some(e.itt),
            _ => None,
        })
        .collect()
}

fn with_attr(c: ScsiCommand, attr: u8) -> ScsiCommand {
    ScsiCommand { attr, ..c }
}

#[test]
fn an_ordered_task_waits_for_older_ones_and_holds_newer_ones() {
    const ORDERED: u8 = 2;
    const HEAD_OF_QUEUE: u8 = 3;
    let mut c = conn();
    assert_eq!(executed(&feed(&mut c, Pdu::new(cmd(1, 100, false, false, 0, 0x00)))), [1]);
    assert!(executed(&feed(&mut c, Pdu::new(with_attr(cmd(2, 101, false, false, 0, 0x35), ORDERED)))).is_empty());
    assert!(executed(&feed(&mut c, Pdu::new(cmd(3, 102, false, false, 0, 0x00)))).is_empty(), "newer waits");
    let head = with_attr(cmd(4, 103, false, false, 0, 0x00), HEAD_OF_QUEUE);
    assert_eq!(executed(&feed(&mut c, Pdu::new(head))), [4], "HEAD OF QUEUE goes first");
    c.on_complete(4, good(&[]));
    assert!(executed(&c.drain()).is_empty(), "the ORDERED task still waits for task 1");
    c.on_complete(1, good(&[]));
    assert_eq!(executed(&c.drain()), [2]);
    c.on_complete(2, good(&[]));
    assert_eq!(executed(&c.drain()), [3]);
    // Without an ORDERED task, SIMPLE ones run side by side again.
    assert_eq!(executed(&feed(&mut c, Pdu::new(cmd(5, 104, false, false, 0, 0x00)))), [5]);
}

#[test]
fn an_ordered_write_solicits_its_data_only_when_its_turn_comes() {
    let mut p = params();
    p.initial_r2t = true;
    p.immediate_data = false;
    let mut c = conn_with(p, SessionKind::Normal);
    assert_eq!(executed(&feed(&mut c, Pdu::new(cmd(1, 100, false, false, 0, 0x00)))), [1]);
    let out = feed(&mut c, Pdu::new(with_attr(cmd(2, 101, false, true, 512, 0x2a), 2)));
    assert!(sent(&out).iter().all(|p| !matches!(p.bhs, Bhs::R2t(_))), "no R2T while task 1 runs");
    c.on_complete(1, good(&[]));
    let out = c.drain();
    assert!(sent(&out).iter().any(|p| matches!(p.bhs, Bhs::R2t(ref r) if r.itt == 2)));
}

#[test]
fn statuses_the_initiator_has_not_acknowledged_are_counted_by_its_exp_stat_sn() {
    let mut c = conn();
    let with_ack = |itt: u32, cmd_sn: u32, exp_stat_sn: u32| {
        Pdu::new(ScsiCommand { exp_stat_sn, ..cmd(itt, cmd_sn, true, false, 512, 0x28) })
    };
    assert_eq!(c.unacknowledged_statuses(), 0, "nothing sent yet");
    // Queue depth 1: each command acknowledges the status before it.
    feed(&mut c, with_ack(1, 100, 500));
    assert_eq!(c.unacknowledged_statuses(), 0);
    c.on_complete(1, good(&[0; 512]));
    c.drain();
    assert_eq!(c.unacknowledged_statuses(), 1, "one status out, the initiator waits for it");
    feed(&mut c, with_ack(2, 101, 501));
    c.on_complete(2, good(&[0; 512]));
    c.drain();
    assert_eq!(c.unacknowledged_statuses(), 1);
    // A pipelining initiator sends before it has read what came back.
    feed(&mut c, with_ack(3, 102, 502));
    feed(&mut c, with_ack(4, 103, 502));
    c.on_complete(3, good(&[0; 512]));
    c.on_complete(4, good(&[0; 512]));
    c.drain();
    assert_eq!(c.unacknowledged_statuses(), 2, "two statuses out, neither acknowledged");
    feed(&mut c, with_ack(5, 104, 504));
    assert_eq!(c.unacknowledged_statuses(), 0, "acknowledged by the next PDU");
}

/// A write aborted while it waits for its CmdSN turn gives back what it reserved at once, and
/// its turn, when it comes, only passes: found by a hostile client that aborted such writes and
/// left their reservations (up to the whole process-wide pool) behind for good.
#[test]
fn a_write_aborted_before_its_turn_gives_back_its_reservation() {
    let memory = Arc::new(IoMemory::new(1 << 20));
    let cfg = ConnConfig { queue_depth: 8, memory: memory.unshared(), ..ConnConfig::default() };
    let mut c = Connection::new(params(), SessionKind::Normal, 0, 100, 500, cfg, Duration::ZERO);
    // CmdSN 100 is missing: the write (with unsolicited data, so reserved on arrival) waits.
    let mut write = cmd(1, 101, false, true, 64 << 10, 0x2a);
    write.fin = false;
    feed(&mut c, Pdu::with_data(write, Bytes::from(vec![1u8; 1024])));
    assert_eq!(memory.used(), 64 << 10);
    let mut abort = tmf_request(tmf::ABORT_TASK, 50, 102);
    abort.immediate = true;
    abort.referenced_task_tag = 1;
    abort.ref_cmd_sn = 101;
    let out = feed(&mut c, Pdu::new(abort));
    assert_eq!(tmf_answer(&out).response, tmf::FUNCTION_COMPLETE);
    assert_eq!(memory.used(), 0, "the aborted write's reservation is back");
    // The gap fills: the aborted write's turn passes, and the session goes on.
    let out = feed(&mut c, Pdu::new(cmd(2, 100, false, false, 0, 0x00)));
    assert_eq!(execs(&out).iter().map(|e| e.itt).collect::<Vec<_>>(), vec![2]);
    c.on_complete(2, good(&[]));
    c.drain();
    let out = feed(&mut c, Pdu::new(cmd(3, 102, false, false, 0, 0x00)));
    assert_eq!(execs(&out).iter().map(|e| e.itt).collect::<Vec<_>>(), vec![3]);
    assert_eq!(c.task_count(), 1, "only the new command is left");
}

/// A text request sent in parts (C bit): the initiator copies the TTT of our answer into the
/// next part (RFC 7143 §11.10.4), and the parts are read as one request; a new request (another
/// ITT) drops a half-gathered one instead of being glued to it.
#[test]
fn a_text_request_in_parts_is_gathered_by_its_ttt_and_a_new_one_starts_afresh() {
    let mut c = conn_with(params(), SessionKind::Discovery);
    let part = |itt, ttt, cmd_sn, cont: bool| TextRequest { fin: !cont, cont, itt, ttt, cmd_sn, ..Default::default() };
    let answer = |out: &[Output]| -> (TextResponse, Bytes) {
        match sent(out).as_slice() {
            [p] => match p.bhs {
                Bhs::TextResponse(r) => (r, p.data.clone()),
                _ => panic!("not a text response: {out:?}"),
            },
            _ => panic!("one PDU expected: {out:?}"),
        }
    };
    let out = feed(&mut c, Pdu::with_data(part(3, RESERVED_TAG, 100, true), Bytes::from_static(b"SendTa")));
    let (r, data) = answer(&out);
    assert!(!r.fin && r.ttt != RESERVED_TAG && data.is_empty());
    let out = feed(&mut c, Pdu::with_data(part(3, r.ttt, 101, false), Bytes::from_static(b"rgets=All\0")));
    let (r, data) = answer(&out);
    assert!(r.fin);
    assert_eq!(text::parse(&data).unwrap()[0], ("TargetName".into(), "iqn.t1".into()));
    // A part left half-gathered, then a new request: answered on its own.
    feed(&mut c, Pdu::with_data(part(4, RESERVED_TAG, 102, true), Bytes::from_static(b"SendTa")));
    let out = feed(&mut c, Pdu::with_data(part(5, RESERVED_TAG, 103, false), Bytes::from_static(b"SendTargets=All\0")));
    let (r, data) = answer(&out);
    assert!(r.fin);
    assert_eq!(text::parse(&data).unwrap()[0], ("TargetName".into(), "iqn.t1".into()));
}

/// PDUs held behind a CmdSN gap keep their data: a NOP-Out's ping data is reserved from the
/// budget and the process-wide pool like a command's, refused (Reject, its CmdSN counted) when
/// there is no room, and given back when its turn comes. A hostile client held 32 MiB a
/// connection this way, outside every bound.
#[test]
fn data_of_pdus_held_behind_a_gap_counts_against_the_pool() {
    let memory = Arc::new(IoMemory::new(8192));
    let cfg = ConnConfig { queue_depth: 8, memory: memory.unshared(), ..ConnConfig::default() };
    let mut c = Connection::new(params(), SessionKind::Normal, 0, 100, 500, cfg, Duration::ZERO);
    let ping = |itt, cmd_sn| Pdu::with_data(NopOut { itt, cmd_sn, ..Default::default() }, Bytes::from(vec![7u8; 4096]));
    for (itt, sn) in [(1u32, 101u32), (2, 102)] {
        assert!(feed(&mut c, ping(itt, sn)).is_empty(), "held for CmdSN 100");
    }
    assert_eq!(memory.used(), 8192, "both pings' data reserved");
    let out = feed(&mut c, ping(3, 103));
    assert!(
        matches!(sent(&out).as_slice(), [p] if matches!(p.bhs, Bhs::Reject(Reject { reason: reject_reason::LONG_OPERATION_REJECT, .. })))
    );
    assert_eq!(memory.used(), 8192, "the third refused, not kept");
    let out = feed(&mut c, Pdu::new(NopOut { itt: 4, cmd_sn: 100, ..Default::default() }));
    let echoed: Vec<(u32, usize)> = sent(&out)
        .iter()
        .filter_map(|p| match p.bhs {
            Bhs::NopIn(n) => Some((n.itt, p.data.len())),
            _ => None,
        })
        .collect();
    assert_eq!(echoed, vec![(4, 0), (1, 4096), (2, 4096)]);
    assert_eq!(c.exp_cmd_sn(), 104, "the refused ping's CmdSN counted as received");
    assert_eq!(memory.used(), 0);
}

/// A client that was asked for write data (R2T) and sends none is dropped after the data-out
/// timeout, answering pings or not: the write's reservation would otherwise be held for as
/// long as it likes (a hostile client pinned the whole pool with 16 such writes). One that
/// keeps sending, however slowly, is not.
#[test]
fn solicited_data_that_never_comes_ends_the_connection() {
    let mut p = params();
    p.initial_r2t = true;
    p.immediate_data = false;
    let cfg = ConnConfig {
        queue_depth: 8,
        nop_interval: Duration::from_secs(5),
        data_out_timeout: Duration::from_secs(30),
        ..ConnConfig::default()
    };
    let mut c = Connection::new(p, SessionKind::Normal, 0, 100, 500, cfg, Duration::ZERO);
    let at = |s: u64| Duration::from_secs(s);
    c.on_pdu(Pdu::new(cmd(1, 100, false, true, 16384, 0x2a)), at(1), &Ctx);
    let out = c.drain();
    let Some(Bhs::R2t(r2t)) = sent(&out).first().map(|p| p.bhs) else { panic!("{out:?}") };
    // Slow but steady: a Data-Out every 20 s keeps it open.
    let mut now = 1;
    for (n, offset) in [0u32, 4096, 8192].into_iter().enumerate() {
        while now < 21 + 20 * n as u64 {
            now += 1;
            if c.next_deadline() <= at(now) {
                c.on_tick(at(now));
            }
        }
        let d = DataOut { itt: 1, ttt: r2t.ttt, buffer_offset: offset, data_sn: n as u32, ..Default::default() };
        c.on_pdu(Pdu::with_data(d, Bytes::from(vec![1u8; 4096])), at(now), &Ctx);
        assert!(!c.is_closing(), "closed at {now} s though data keeps coming");
    }
    // Then silence, but every ping answered.
    let closed_at = closed_for_owed_input_answering_pings(&mut c, now);
    assert!((91..=121).contains(&closed_at), "closed {} s after the last Data-Out", closed_at - 61);
}

/// Answers pings (and sends nothing else) a second at a time from `now`, the connection's
/// ticks due meanwhile run: the second at which it closes for input it was owed.
fn closed_for_owed_input_answering_pings(c: &mut Connection, mut now: u64) -> u64 {
    let at = Duration::from_secs;
    loop {
        now += 1;
        assert!(now < 200, "never closed");
        c.on_pdu(Pdu::new(NopOut { itt: RESERVED_TAG, ttt: 7, ..Default::default() }), at(now), &Ctx);
        if c.next_deadline() <= at(now) {
            c.on_tick(at(now));
        }
        if c.drain().iter().any(|o| matches!(o, Output::Close(CloseReason::OwedInputTimeout))) {
            return now;
        }
    }
}

/// A gap in the CmdSNs that is never filled ends the connection after the same timeout: what
/// waits behind it holds its reservation (a hostile client parked a window of 256 KiB pings
/// behind one and answered every ping).
#[test]
fn a_cmd_sn_gap_never_filled_ends_the_connection() {
    let cfg = ConnConfig { queue_depth: 8, data_out_timeout: Duration::from_secs(30), ..ConnConfig::default() };
    let mut c = Connection::new(params(), SessionKind::Normal, 0, 100, 500, cfg, Duration::ZERO);
    let at = Duration::from_secs;
    c.on_pdu(
        Pdu::with_data(NopOut { itt: 1, cmd_sn: 101, ..Default::default() }, Bytes::from(vec![7u8; 4096])),
        at(1),
        &Ctx,
    );
    let closed_at = closed_for_owed_input_answering_pings(&mut c, 1);
    assert!((31..=61).contains(&closed_at), "closed at {closed_at} s");
}
