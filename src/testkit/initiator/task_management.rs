//! Task management from the initiator's side: ABORT TASK and LOGICAL UNIT RESET, and the
//! commands they end (answered with [`Error::Aborted`]; a later response for one of them is a
//! violation the oracle records).

use super::*;

impl Session {
    /// Sends a task management request and returns its response code.
    pub async fn task_management(&self, function: u8, lun: u16, referenced_itt: u32, ref_cmd_sn: u32) -> Result<u8> {
        self.tmf(function, lun, referenced_itt, ref_cmd_sn).await.map(|(response, _)| response)
    }

    /// A task management request: its response code and its own ITT.
    async fn tmf(&self, function: u8, lun: u16, referenced_itt: u32, ref_cmd_sn: u32) -> Result<(u8, u32)> {
        let lun = encode_lun(lun);
        let (itt, _, rx) = self
            .submit(true, false, lun, Bytes::new(), |itt, cmd_sn, exp_stat_sn| {
                vec![Pdu::new(TaskMgmtRequest {
                    immediate: true,
                    function,
                    lun,
                    itt,
                    referenced_task_tag: referenced_itt,
                    cmd_sn,
                    exp_stat_sn,
                    ref_cmd_sn,
                    exp_data_sn: 0,
                })]
            })
            .await?;
        match self.wait(itt, rx).await? {
            Reply::Pdu(p) => match p.bhs {
                Bhs::TaskMgmtResponse(r) => Ok((r.response, itt)),
                _ => Err(Error::Protocol("unexpected reply to a TMF".into())),
            },
            _ => Err(Error::Protocol("unexpected reply to a TMF".into())),
        }
    }

    /// ABORT TASK for a command of ours; on FUNCTION COMPLETE its caller gets
    /// [`Error::Aborted`] and any later response for it counts as a violation.
    pub async fn abort_task(&self, lun: u16, itt: u32, ref_cmd_sn: u32) -> Result<u8> {
        let response = self.task_management(tmf::ABORT_TASK, lun, itt, ref_cmd_sn).await?;
        if response == tmf::FUNCTION_COMPLETE {
            self.fail_tasks(|i, _| i == itt);
        }
        Ok(response)
    }

    /// LOGICAL UNIT RESET; on FUNCTION COMPLETE our commands to that LUN fail with
    /// [`Error::Aborted`].
    pub async fn lun_reset(&self, lun: u16) -> Result<u8> {
        let (response, tmf_itt) = self.tmf(tmf::LOGICAL_UNIT_RESET, lun, 0, 0).await?;
        if response == tmf::FUNCTION_COMPLETE {
            // Commands issued before the reset (their ITTs are smaller) went out before it.
            let raw = encode_lun(lun);
            self.fail_tasks(|i, p| p.scsi && p.lun == raw && sn_lt(i, tmf_itt));
        }
        Ok(response)
    }

    fn fail_tasks(&self, select: impl Fn(u32, &Pending) -> bool) {
        let failed: Vec<Pending> = {
            let mut st = self.shared.state.lock().expect("poisoned");
            let itts: Vec<u32> = st.pending.iter().filter(|(i, p)| select(**i, p)).map(|(i, _)| *i).collect();
            itts.into_iter()
                .filter_map(|i| {
                    st.aborted.insert(i);
                    st.pending.remove(&i)
                })
                .collect()
        };
        for p in failed {
            let _ = p.reply.send(Reply::Failed(Error::Aborted));
        }
    }
}
