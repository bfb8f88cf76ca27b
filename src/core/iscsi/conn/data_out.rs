//! Write data: Data-Out PDUs gathered into their tasks (unsolicited and answering R2Ts), and
//! the R2Ts that ask for the rest within MaxOutstandingR2T and MaxBurstLength.

use super::*;

impl Connection {
    pub(super) fn on_data_out(&mut self, d: &DataOut, data: Bytes) {
        let Some(task) = self.tasks.get_mut(&d.itt) else {
            // Data for a task that is finished or aborted: silently dropped (a Reject would make
            // initiators fail an unrelated command or drop the session).
            tracing::debug!(itt = d.itt, "Data-Out for no task: dropped");
            return;
        };
        let Some(w) = task.write.as_mut() else {
            task.failure.get_or_insert(Failure::Check(Sense::new(key::ABORTED_COMMAND, asc::DATA_PHASE_ERROR)));
            return;
        };
        let len = data.len() as u32;
        let (expected_offset, expected_sn, end) = if d.ttt == RESERVED_TAG {
            if w.unsolicited_done {
                task.failure.get_or_insert(Failure::Check(Sense::new(key::ABORTED_COMMAND, asc::DATA_PHASE_ERROR)));
                return;
            }
            (w.unsolicited_next_offset, w.unsolicited_next_sn, w.unsolicited_end)
        } else {
            match w.r2ts.iter().find(|r| r.ttt == d.ttt) {
                Some(r) => (r.next_offset, r.next_data_sn, r.end),
                None => {
                    task.failure.get_or_insert(Failure::Check(Sense::new(key::ABORTED_COMMAND, asc::DATA_PHASE_ERROR)));
                    return;
                }
            }
        };
        let in_order = d.buffer_offset == expected_offset && d.data_sn == expected_sn;
        let fits = d.buffer_offset.checked_add(len).is_some_and(|e| e <= end);
        if in_order && fits && task.failure.is_none() {
            let at = d.buffer_offset as usize;
            let data = if crate::mutants::active(crate::mutants::Mutant::DropDataOut) && d.data_sn == 1 {
                Bytes::from(vec![0u8; data.len()])
            } else {
                data
            };
            if w.buf.len() == at {
                w.buf.extend_from_slice(&data);
            } else {
                if w.buf.len() < at + data.len() {
                    w.buf.resize(at + data.len(), 0);
                }
                w.buf[at..at + data.len()].copy_from_slice(&data);
            }
        } else if !(in_order && fits) {
            task.failure.get_or_insert(Failure::Check(Sense::new(key::ABORTED_COMMAND, asc::DATA_PHASE_ERROR)));
        }
        // Advance the sequence even on error, so that it ends and the command can be answered.
        let next = expected_offset.saturating_add(len).min(end);
        let seq_done = d.fin || next >= end;
        if d.ttt == RESERVED_TAG {
            w.unsolicited_next_offset = next;
            w.unsolicited_next_sn = expected_sn.wrapping_add(1);
            if seq_done {
                w.unsolicited_done = true;
                if next < w.unsolicited_end {
                    // The initiator ended its unsolicited data early: solicit the rest.
                    w.solicit_from = next;
                }
            }
        } else {
            let i = w.r2ts.iter().position(|r| r.ttt == d.ttt).expect("found above");
            w.r2ts[i].next_offset = next;
            w.r2ts[i].next_data_sn = expected_sn.wrapping_add(1);
            if seq_done {
                if next < w.r2ts[i].end {
                    task.failure.get_or_insert(Failure::Check(Sense::new(key::ABORTED_COMMAND, asc::DATA_PHASE_ERROR)));
                }
                w.r2ts.remove(i);
            }
        }
        let itt = d.itt;
        self.progress(itt);
    }

    pub(super) fn send_r2ts(&mut self, itt: u32) {
        let max_burst = self.params.max_burst_len;
        let max_outstanding = self.params.max_outstanding_r2t.max(1) as usize;
        loop {
            let task = self.tasks.get_mut(&itt).expect("task");
            let w = task.write.as_mut().expect("write task");
            if w.r2ts.len() >= max_outstanding || w.solicit_from >= w.collect_len {
                break;
            }
            if w.buf.capacity() < w.collect_len as usize {
                w.buf.reserve(w.collect_len as usize - w.buf.len());
            }
            let offset = w.solicit_from;
            let len = (w.collect_len - offset).min(max_burst);
            w.solicit_from += len;
            let r2t_sn = w.r2t_sn;
            w.r2t_sn = w.r2t_sn.wrapping_add(1);
            let lun = task.lun;
            let ttt = self.alloc_ttt();
            let w = self.tasks.get_mut(&itt).expect("task").write.as_mut().expect("write task");
            w.r2ts.push(R2tSeq { ttt, end: offset + len, next_offset: offset, next_data_sn: 0 });
            self.owing = true;
            let r2t = R2t {
                lun,
                itt,
                ttt,
                stat_sn: self.stat_sn,
                exp_cmd_sn: self.window.exp_cmd_sn(),
                max_cmd_sn: self.window.max_cmd_sn(),
                r2t_sn,
                buffer_offset: offset,
                desired_len: len,
            };
            self.send(Pdu::new(r2t));
        }
    }
}
