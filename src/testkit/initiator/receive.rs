//! What the session receives: the reader task, each PDU matched to its waiting command, and
//! the oracle that counts what a target must never do (responses to unknown or aborted
//! tasks, StatSN out of sequence, MaxCmdSN shrinking).

use std::sync::Arc;

use tokio::io::AsyncRead;

use super::*;

pub(super) async fn read_loop<R: AsyncRead + Unpin>(mut reader: PduReader<R>, shared: Arc<Shared>, exp_stat_sn: u32) {
    let mut next_stat_sn = exp_stat_sn;
    let digests = Digests { header: shared.negotiated.header_digest, data: shared.negotiated.data_digest };
    let limits = Limits { data_segment_len_max: shared.config.max_recv_data_segment_len };
    let reason = loop {
        match reader.next(digests, limits).await {
            Ok(ReadEvent::Pdu(pdu)) => {
                if let Err(e) = on_pdu(&shared, pdu, &mut next_stat_sn) {
                    break e;
                }
            }
            Ok(ReadEvent::Bad(e)) => break Error::Protocol(e.to_string()),
            Ok(ReadEvent::Eof) => break Error::Io("the target closed the connection".into()),
            Err(e) => break Error::Io(e.to_string()),
        }
    };
    close_shared(&shared, reason);
}

fn on_pdu(shared: &Shared, pdu: Pdu, next_stat_sn: &mut u32) -> Result<()> {
    let mut st = shared.state.lock().expect("poisoned");
    check_numbering(&mut st, &pdu, next_stat_sn);
    if let Some(itt) = pdu.bhs.itt().filter(|&i| i != RESERVED_TAG)
        && !st.pending.contains_key(&itt)
        && !matches!(pdu.bhs, Bhs::R2t(_))
    {
        if st.aborted.contains(&itt) {
            tracing::warn!(itt, pdu = ?pdu.bhs, "a response for a task the target reported aborted");
            st.violations.responses_after_abort += 1;
        } else if !st.abandoned.contains(&itt) {
            st.violations.unexpected_responses += 1;
        }
    }
    // Track the target's numbering (RFC 7143 §4.2.2.1).
    let numbers = match &pdu.bhs {
        Bhs::ScsiResponse(r) => Some((r.stat_sn, r.exp_cmd_sn, r.max_cmd_sn, true)),
        Bhs::DataIn(d) => Some((d.stat_sn, d.exp_cmd_sn, d.max_cmd_sn, d.status_present)),
        Bhs::NopIn(n) => Some((n.stat_sn, n.exp_cmd_sn, n.max_cmd_sn, n.itt != RESERVED_TAG)),
        Bhs::TaskMgmtResponse(r) => Some((r.stat_sn, r.exp_cmd_sn, r.max_cmd_sn, true)),
        Bhs::TextResponse(r) => Some((r.stat_sn, r.exp_cmd_sn, r.max_cmd_sn, true)),
        Bhs::LogoutResponse(r) => Some((r.stat_sn, r.exp_cmd_sn, r.max_cmd_sn, true)),
        Bhs::R2t(r) => Some((r.stat_sn, r.exp_cmd_sn, r.max_cmd_sn, false)),
        Bhs::AsyncMessage(m) => Some((m.stat_sn, m.exp_cmd_sn, m.max_cmd_sn, true)),
        Bhs::Reject(r) => Some((r.stat_sn, r.exp_cmd_sn, r.max_cmd_sn, true)),
        _ => None,
    };
    if let Some((stat_sn, exp_cmd_sn, max_cmd_sn, has_stat_sn)) = numbers {
        if has_stat_sn {
            st.exp_stat_sn = stat_sn.wrapping_add(1);
        }
        if !sn_lt(max_cmd_sn, exp_cmd_sn.wrapping_sub(1)) && sn_lt(st.max_cmd_sn, max_cmd_sn) {
            st.max_cmd_sn = max_cmd_sn;
            shared.window.notify_waiters();
        }
    }
    match pdu.bhs {
        Bhs::DataIn(d) => {
            let Some(p) = st.pending.get_mut(&d.itt) else { return Ok(()) };
            let at = d.buffer_offset as usize;
            if p.data.len() < at + pdu.data.len() {
                if at + pdu.data.len() > 256 << 20 {
                    return Err(Error::Protocol("Data-In beyond any sane length".into()));
                }
                p.data.resize(at + pdu.data.len(), 0);
            }
            p.data[at..at + pdu.data.len()].copy_from_slice(&pdu.data);
            if d.status_present {
                let p = st.pending.remove(&d.itt).expect("present");
                let result = CommandResult {
                    status: d.status,
                    sense: None,
                    data: p.data.freeze(),
                    overflow: d.overflow,
                    underflow: d.underflow,
                    residual: d.residual,
                };
                let _ = p.reply.send(Reply::Scsi(result));
            }
        }
        Bhs::ScsiResponse(r) => {
            let Some(p) = st.pending.remove(&r.itt) else { return Ok(()) };
            let sense = (pdu.data.len() >= 2).then(|| {
                let len = u16::from_be_bytes([pdu.data[0], pdu.data[1]]) as usize;
                pdu.data.slice(2..(2 + len).min(pdu.data.len()))
            });
            let result = CommandResult {
                status: r.status,
                sense,
                data: p.data.freeze(),
                overflow: r.overflow,
                underflow: r.underflow,
                residual: r.residual,
            };
            let _ = p.reply.send(Reply::Scsi(result));
        }
        Bhs::R2t(r) => {
            let Some(p) = st.pending.get(&r.itt) else { return Ok(()) };
            let end = r.buffer_offset as usize + r.desired_len as usize;
            if end > p.write.len() {
                return Err(Error::Protocol("R2T beyond the write data".into()));
            }
            let segment = shared.negotiated.target_max_recv_data_segment_len as usize;
            let pdus = data_outs(&p.write, r.itt, p.lun, r.ttt, r.buffer_offset as usize, end, segment, st.exp_stat_sn);
            let digests = Digests { header: shared.negotiated.header_digest, data: shared.negotiated.data_digest };
            for pdu in pdus {
                let _ = shared.out.send(pdu.encode(digests));
            }
        }
        Bhs::NopIn(n) => {
            if n.ttt != RESERVED_TAG {
                // The target pings us: answer with an immediate NOP-Out echoing its tag.
                let reply = NopOut {
                    immediate: true,
                    lun: n.lun,
                    itt: RESERVED_TAG,
                    ttt: n.ttt,
                    cmd_sn: st.cmd_sn,
                    exp_stat_sn: st.exp_stat_sn,
                };
                let digests = Digests { header: shared.negotiated.header_digest, data: shared.negotiated.data_digest };
                if shared.out.send(Pdu::new(reply).encode(digests)).is_ok() {
                    st.pings_answered += 1;
                }
            } else if let Some(p) = st.pending.remove(&n.itt) {
                let _ = p.reply.send(Reply::Pdu(Box::new(pdu)));
            }
        }
        Bhs::TaskMgmtResponse(TaskMgmtResponse { itt, .. })
        | Bhs::TextResponse(TextResponse { itt, .. })
        | Bhs::LogoutResponse(LogoutResponse { itt, .. }) => {
            if let Some(p) = st.pending.remove(&itt) {
                let _ = p.reply.send(Reply::Pdu(Box::new(pdu)));
            }
        }
        Bhs::Reject(r) => {
            let rejected_itt =
                (pdu.data.len() >= 20).then(|| u32::from_be_bytes(pdu.data[16..20].try_into().expect("4")));
            match rejected_itt.and_then(|itt| st.pending.remove(&itt)) {
                Some(p) => {
                    let _ = p.reply.send(Reply::Failed(Error::Rejected(r.reason)));
                }
                None => tracing::debug!(reason = r.reason, "Reject for no pending command"),
            }
        }
        Bhs::AsyncMessage(m) => {
            if st.async_events.len() < 64 {
                st.async_events.push(m);
            }
        }
        other => return Err(Error::Protocol(format!("unexpected {:?} from the target", other.opcode()))),
    }
    Ok(())
}

/// Checks StatSN and the CmdSN window of a PDU from the target.
fn check_numbering(st: &mut State, pdu: &Pdu, next_stat_sn: &mut u32) {
    // (StatSN, whether this PDU takes a new one, ExpCmdSN, MaxCmdSN)
    let (stat_sn, advances, exp, max) = match &pdu.bhs {
        Bhs::ScsiResponse(r) => (r.stat_sn, true, r.exp_cmd_sn, r.max_cmd_sn),
        Bhs::DataIn(d) if d.status_present => (d.stat_sn, true, d.exp_cmd_sn, d.max_cmd_sn),
        Bhs::DataIn(d) => (*next_stat_sn, false, d.exp_cmd_sn, d.max_cmd_sn),
        Bhs::NopIn(n) => (n.stat_sn, n.itt != RESERVED_TAG, n.exp_cmd_sn, n.max_cmd_sn),
        Bhs::TaskMgmtResponse(r) => (r.stat_sn, true, r.exp_cmd_sn, r.max_cmd_sn),
        Bhs::TextResponse(r) => (r.stat_sn, true, r.exp_cmd_sn, r.max_cmd_sn),
        Bhs::LogoutResponse(r) => (r.stat_sn, true, r.exp_cmd_sn, r.max_cmd_sn),
        Bhs::R2t(r) => (r.stat_sn, false, r.exp_cmd_sn, r.max_cmd_sn),
        Bhs::AsyncMessage(m) => (m.stat_sn, true, m.exp_cmd_sn, m.max_cmd_sn),
        Bhs::Reject(r) => (r.stat_sn, true, r.exp_cmd_sn, r.max_cmd_sn),
        _ => return,
    };
    if stat_sn != *next_stat_sn {
        st.violations.stat_sn_errors += 1;
    }
    if advances {
        *next_stat_sn = stat_sn.wrapping_add(1);
    }
    if sn_lt(max, exp.wrapping_sub(1)) {
        return; // an invalid pair is ignored (RFC 7143 §4.2.2.1)
    }
    if sn_lt(max, st.max_cmd_sn) {
        st.violations.max_cmd_sn_decreases += 1;
    }
    let window = max.wrapping_sub(exp).wrapping_add(1);
    st.violations.widest_window = st.violations.widest_window.max(window);
}
