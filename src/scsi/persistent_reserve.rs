//! PERSISTENT RESERVE IN and OUT (SPC-4 §6.15, §6.16): the commands over [`super::pr`].
//! Registrations survive an I_T nexus loss and a LOGICAL UNIT RESET; across a restart of the
//! target only with APTPL, where the logical unit has a keeper (`pr_keeper.rs`): every change
//! is saved before it is acknowledged. SPEC_I_PT, ALL_TG_PT and REGISTER AND MOVE are not
//! offered.

use bytes::{BufMut, Bytes, BytesMut};

use super::lu::{Ctx, LogicalUnit, Outcome};
use super::pr::{Access, PrError, PrState, PrType, Registrant};
use super::sense::{Sense, asc, status};
use super::spc::truncate;
use crate::scsi::ops::Op;

/// The parameter list of every service action offered (no SPEC_I_PT, no REGISTER AND MOVE).
const PARAMETER_LIST_BYTES: usize = 24;

/// How a command stands against a persistent reservation (SPC-4 table 64 and SBC-4 table 13:
/// reads of the medium, and anything that changes it or the device's settings).
pub(super) fn access(op: Op) -> Access {
    match op {
        Op::Inquiry
        | Op::RequestSense
        | Op::ReportLuns
        | Op::ReportSupportedOpcodes
        | Op::TestUnitReady
        | Op::ReadCapacity10
        | Op::ReadCapacity16
        | Op::PersistentReserveIn
        | Op::PersistentReserveOut
        | Op::ReportTargetPortGroups
        | Op::SetTargetPortGroups
        | Op::ReportSupportedTmfs
        | Op::Release => Access::Free,
        Op::Read
        | Op::Verify
        | Op::PreFetch
        | Op::GetLbaStatus
        | Op::ModeSense
        | Op::ReadDefectData
        | Op::ReceiveCopyResults => Access::Read,
        Op::Write
        | Op::WriteAndVerify
        | Op::WriteSame
        | Op::Unmap
        | Op::CompareAndWrite
        | Op::OrWrite
        | Op::WriteAtomic
        | Op::Sanitize
        | Op::SynchronizeCache
        | Op::ModeSelect
        | Op::StartStopUnit
        | Op::PreventAllow
        | Op::ExtendedCopy
        | Op::Reserve => Access::Write,
    }
}

fn read_keys(pr: &PrState) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_u32(pr.generation);
    out.put_u32(8 * pr.registrants.len() as u32);
    for r in pr.registrants.values() {
        out.put_u64(r.key);
    }
    out
}

fn read_reservation(pr: &PrState) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_u32(pr.generation);
    match pr.reservation_key() {
        None => out.put_u32(0),
        Some((key, kind)) => {
            out.put_u32(16);
            out.put_u64(key);
            out.put_u32(0); // obsolete
            out.put_u8(0);
            out.put_u8(kind as u8); // scope 0: the logical unit
            out.put_u16(0); // obsolete
        }
    }
    out
}

fn report_capabilities(persist_capable: bool, aptpl: bool) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_u16(8);
    // CRH: RESERVE(6)/(10) conflict with persistent reservations (SPC-4 §5.13.3); PTPL_C
    // where a keeper exists. No SIP_C, ATP_C.
    out.put_u8(0x10 | u8::from(persist_capable));
    // TMV, ALLOW COMMANDS 0 (not reported); PTPL_A: the state is kept now.
    out.put_u8(0x80 | u8::from(aptpl));
    // Every type: WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX; EX_AC_AR.
    out.put_u8(0x80 | 0x40 | 0x20 | 0x08 | 0x02);
    out.put_u8(0x01);
    out.put_u16(0);
    out
}

/// An iSCSI TransportID with its ISID (SPC-4 §7.6.4.6, format 01b): "name,i,0xISID",
/// NUL-terminated, padded to a multiple of four.
fn transport_id(r: &Registrant) -> BytesMut {
    let mut name = format!("{},i,0x{:012x}", r.initiator, r.isid).into_bytes();
    name.push(0);
    name.resize(name.len().div_ceil(4) * 4, 0);
    let mut out = BytesMut::new();
    out.put_u8(0x40 | 0x05);
    out.put_u8(0);
    out.put_u16(name.len() as u16);
    out.put_slice(&name);
    out
}

fn read_full_status(pr: &PrState) -> BytesMut {
    let mut descriptors = BytesMut::new();
    for (nexus, r) in &pr.registrants {
        let holder = pr.is_holder(*nexus);
        let tid = transport_id(r);
        descriptors.put_u64(r.key);
        descriptors.put_u32(0);
        descriptors.put_u8(u8::from(holder)); // R_HOLDER; ALL_TG_PT 0
        descriptors.put_u8(match (holder, pr.reservation) {
            (true, Some(res)) => res.kind as u8,
            _ => 0,
        });
        descriptors.put_u32(0);
        descriptors.put_u16(r.relative_port);
        descriptors.put_u32(tid.len() as u32);
        descriptors.put_slice(&tid);
    }
    let mut out = BytesMut::new();
    out.put_u32(pr.generation);
    out.put_u32(descriptors.len() as u32);
    out.put_slice(&descriptors);
    out
}

impl LogicalUnit {
    pub(super) fn persistent_reserve_in(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let alloc = ctx.cdb.u16(7) as usize;
        let st = self.state();
        let data = match ctx.cdb.service_action() {
            0 => read_keys(&st.pr),
            1 => read_reservation(&st.pr),
            2 => report_capabilities(self.keeper.is_some(), st.pr.aptpl),
            _ => read_full_status(&st.pr),
        };
        Ok(truncate(data, alloc))
    }

    pub(super) async fn persistent_reserve_out(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let len = ctx.cdb.u32(5) as usize;
        ctx.data_out_len = len as u32;
        let scope = ctx.cdb.u8(2) >> 4;
        let type_code = ctx.cdb.u8(2) & 0x0f;
        if len != PARAMETER_LIST_BYTES || ctx.data_out.len() < len {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        let p = &ctx.data_out[..len];
        let claimed = u64::from_be_bytes(p[0..8].try_into().expect("8 bytes"));
        let sark = u64::from_be_bytes(p[8..16].try_into().expect("8 bytes"));
        let flags = p[20];
        let service_action = ctx.cdb.service_action();
        let registering = matches!(service_action, 0 | 6);
        // SPEC_I_PT (bit 3) and ALL_TG_PT (bit 2) are not offered; APTPL (bit 0) where a
        // keeper is, and only REGISTER looks at it.
        let aptpl = registering && flags & 0x01 != 0;
        for bit in [3, 2, 0] {
            let refused = match bit {
                0 => aptpl && self.keeper.is_none(),
                _ => flags & (1 << bit) != 0,
            };
            if refused {
                let field = super::sense::FieldPointer { in_cdb: false, byte: 20, bit: Some(bit) };
                return Err(Sense { field: Some(field), ..Sense::illegal(asc::INVALID_FIELD_IN_PARAMETER_LIST) });
            }
        }
        // RESERVE, RELEASE, PREEMPT (AND ABORT) name a type and the logical unit's scope.
        let kind = match service_action {
            1 | 2 | 4 | 5 => {
                if scope != 0 {
                    return Err(Sense::invalid_cdb(2, Some(7)));
                }
                match PrType::from_code(type_code) {
                    Some(kind) => Some(kind),
                    None => return Err(Sense::invalid_cdb(2, Some(3))),
                }
            }
            _ => None,
        };
        let nexus = ctx.nexus.id;
        let port = Registrant {
            key: 0,
            initiator: ctx.nexus.initiator_name.clone(),
            isid: ctx.nexus.isid,
            relative_port: ctx.nexus.relative_port,
        };
        let _turn = self.pr_turn.lock().await;
        let (before, after, done) = {
            let mut st = self.state();
            let before = st.pr.clone();
            let pr = &mut st.pr;
            let done = match (service_action, kind) {
                (0, _) => pr.register(nexus, port, claimed, sark, false),
                (6, _) => pr.register(nexus, port, claimed, sark, true),
                (1, Some(kind)) => pr.reserve(nexus, claimed, kind).map(|()| Vec::new()),
                (2, Some(kind)) => pr.release(nexus, claimed, kind),
                (3, _) => pr.clear(nexus, claimed),
                (4 | 5, Some(kind)) => pr.preempt(nexus, claimed, sark, kind),
                _ => return Err(Sense::invalid_cdb(1, Some(4))),
            };
            if done.is_ok() && registering {
                pr.aptpl = aptpl;
            }
            (before, st.pr.clone(), done)
        };
        if done.is_ok()
            && after != before
            && let Err(sense) = self.save_reservations(&before, &after).await
        {
            self.state().pr = before;
            return Err(sense);
        }
        match done {
            Ok(notices) => {
                for (to, code) in notices {
                    self.unit_attention_to(to, code);
                }
                Ok(Bytes::new())
            }
            Err(PrError::Conflict) => {
                ctx.status = status::RESERVATION_CONFLICT;
                Ok(Bytes::new())
            }
            Err(PrError::Check(sense)) => Err(sense),
        }
    }

    /// Saves a changed state where APTPL asks for it (or forgets it when APTPL goes off), or
    /// every changed state where the keeper is shared with other targets, before the change is
    /// acknowledged.
    async fn save_reservations(&self, before: &PrState, after: &PrState) -> Result<(), Sense> {
        let Some(keeper) = &self.keeper else { return Ok(()) };
        let keep_all = keeper.shared();
        let changed_and_kept = keep_all && before != after;
        if !(before.aptpl || after.aptpl || changed_and_kept) {
            return Ok(());
        }
        let saved = (after.aptpl || keep_all).then(|| super::pr_keeper::encode(after));
        keeper.save(saved).await.map_err(|e| {
            tracing::warn!(keeper = keeper.describe(), error = %e, "cannot save the persistent reservations");
            Sense::new(super::sense::key::HARDWARE_ERROR, asc::INTERNAL_TARGET_FAILURE)
        })
    }
}
