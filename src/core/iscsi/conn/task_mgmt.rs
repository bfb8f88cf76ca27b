//! Task management: ABORT TASK, ABORT TASK SET, LUN and target resets, the RFC 7144 queries
//! and I_T NEXUS RESET, each answered only after every task it aborts has completed.

use super::*;

impl Connection {
    /// Aborts tasks matching `select`. Returns the ones still running (whose completion must
    /// be awaited before the abort is reported done).
    pub(super) fn abort_where(&mut self, select: impl Fn(&Task) -> bool) -> BTreeSet<u32> {
        let victims: Vec<u32> = self.tasks.values().filter(|t| !t.aborted && select(t)).map(|t| t.itt).collect();
        let mut running = BTreeSet::new();
        for itt in victims {
            let task = self.tasks.get_mut(&itt).expect("task");
            task.aborted = true;
            if task.phase == Phase::Running {
                running.insert(itt);
            } else if task.delivered || task.immediate {
                self.forget(itt);
            } else {
                // Held for its CmdSN: forgotten when its turn comes (its tag stays taken till
                // then), but what it holds goes now.
                self.drop_holdings(itt);
            }
        }
        running
    }

    /// Gives back an aborted task's budget and data.
    fn drop_holdings(&mut self, itt: u32) {
        let Some(task) = self.tasks.get_mut(&itt) else { return };
        let budget = std::mem::take(&mut task.budget);
        task.write = None;
        self.release_task_budget(itt, budget);
    }

    /// Aborts this connection's tasks on a LUN because another session reset it.
    pub fn abort_lun(&mut self, lun: u64) {
        self.abort_where(|t| t.lun == lun);
    }

    /// Aborts every task (a target reset from another session).
    pub fn abort_all(&mut self) {
        self.abort_where(|_| true);
    }

    pub(super) fn on_task_mgmt(&mut self, t: &TaskMgmtRequest, ctx: &dyn ConnContext) {
        if self.kind == SessionKind::Discovery {
            self.send_tmf_response(t.itt, TmfAnswer::just(tmf::FUNCTION_REJECTED));
            return;
        }
        let lun_known = ctx.lun_exists(t.lun);
        let none = BTreeSet::new;
        let (answer, waiting_on) = match t.function {
            tmf::ABORT_TASK => {
                let rtt = t.referenced_task_tag;
                if self.tasks.get(&rtt).is_some_and(|task| !task.aborted) {
                    (TmfAnswer::just(tmf::FUNCTION_COMPLETE), self.abort_where(|task| task.itt == rtt))
                } else if self.window.arrival(t.ref_cmd_sn) == Arrival::Ahead {
                    // Not received yet: consider its CmdSN received and discard it (§11.5.1).
                    self.window.hold(t.ref_cmd_sn, Held::Aborted);
                    (TmfAnswer::just(tmf::FUNCTION_COMPLETE), none())
                } else {
                    (TmfAnswer::just(tmf::TASK_DOES_NOT_EXIST), none())
                }
            }
            tmf::ABORT_TASK_SET | tmf::CLEAR_TASK_SET if lun_known => {
                (TmfAnswer::just(tmf::FUNCTION_COMPLETE), self.abort_where(|task| task.lun == t.lun))
            }
            tmf::LOGICAL_UNIT_RESET if lun_known => {
                let waiting = self.abort_where(|task| task.lun == t.lun);
                self.out.push(Output::ResetLun(t.lun));
                (TmfAnswer::just(tmf::FUNCTION_COMPLETE), waiting)
            }
            // RFC 7144 §6.3: the queries end no task.
            tmf::QUERY_TASK => {
                let rtt = t.referenced_task_tag;
                (TmfAnswer::found(self.tasks.get(&rtt).is_some_and(|task| !task.aborted)), none())
            }
            tmf::QUERY_TASK_SET if lun_known => {
                let any = self.tasks.values().any(|task| !task.aborted && task.lun == t.lun);
                (TmfAnswer::found(any), none())
            }
            tmf::QUERY_ASYNC_EVENT if lun_known => match ctx.pending_unit_attention(t.lun) {
                // UADE DEPTH 01b and the sense key, then ASC and ASCQ (SAM-5).
                Some((asc, ascq)) => {
                    let additional = [0x10 | crate::scsi::sense::key::UNIT_ATTENTION, asc, ascq];
                    (TmfAnswer { additional, ..TmfAnswer::found(true) }, none())
                }
                None => (TmfAnswer::found(false), none()),
            },
            tmf::ABORT_TASK_SET
            | tmf::CLEAR_TASK_SET
            | tmf::LOGICAL_UNIT_RESET
            | tmf::QUERY_TASK_SET
            | tmf::QUERY_ASYNC_EVENT => (TmfAnswer::just(tmf::LUN_DOES_NOT_EXIST), none()),
            // RFC 7144 §6.3: the I_T nexus loss function, and every connection of the session
            // dropped (one here).
            tmf::I_T_NEXUS_RESET => {
                let waiting = self.abort_where(|_| true);
                self.out.push(Output::NexusReset);
                let close = Some(CloseReason::NexusReset);
                (TmfAnswer { close, ..TmfAnswer::just(tmf::FUNCTION_COMPLETE) }, waiting)
            }
            tmf::TARGET_WARM_RESET | tmf::TARGET_COLD_RESET if !ctx.may_reset_target() => {
                tracing::warn!(function = t.function, "target reset refused: the initiator may not reset the target");
                (TmfAnswer::just(tmf::AUTHORIZATION_FAILED), none())
            }
            tmf::TARGET_WARM_RESET | tmf::TARGET_COLD_RESET => {
                let cold = t.function == tmf::TARGET_COLD_RESET;
                let waiting = self.abort_where(|_| true);
                self.out.push(Output::ResetTarget { cold });
                let close = cold.then_some(CloseReason::ColdReset);
                (TmfAnswer { close, ..TmfAnswer::just(tmf::FUNCTION_COMPLETE) }, waiting)
            }
            tmf::TASK_REASSIGN => (TmfAnswer::just(tmf::REASSIGNMENT_NOT_SUPPORTED), none()),
            _ => (TmfAnswer::just(tmf::FUNCTION_NOT_SUPPORTED), none()),
        };
        if waiting_on.is_empty() || crate::mutants::active(crate::mutants::Mutant::TmfBeforeAbortedComplete) {
            self.send_tmf_response(t.itt, answer);
        } else {
            self.tmfs.push(PendingTmf { itt: t.itt, answer, waiting_on });
        }
    }

    pub(super) fn send_tmf_response(&mut self, itt: u32, answer: TmfAnswer) {
        let r = TaskMgmtResponse {
            response: answer.response,
            additional: answer.additional,
            itt,
            stat_sn: self.next_stat_sn(),
            exp_cmd_sn: self.window.exp_cmd_sn(),
            max_cmd_sn: self.window.max_cmd_sn(),
        };
        self.send(Pdu::new(r));
        if let Some(reason) = answer.close {
            self.closing = true;
            self.out.push(Output::Close(reason));
        }
    }
}
