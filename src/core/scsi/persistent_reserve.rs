//! PERSISTENT RESERVE IN and OUT (SPC-4 §6.15, §6.16): the commands over [`super::pr`].
//! Registrations survive an I_T nexus loss and a LOGICAL UNIT RESET; across a restart of the
//! target only with APTPL, where the logical unit has a keeper (`pr_keeper.rs`): every change
//! is saved before it is acknowledged. SPEC_I_PT, ALL_TG_PT and REGISTER AND MOVE name I_T
//! nexuses by iSCSI TransportID (`transport_id.rs`).

use bytes::{BufMut, Bytes, BytesMut};

use super::lu::{Ctx, LogicalUnit, Outcome};
use super::pr::{Access, NamedNexus, Notices, PrError, PrState, PrType, Registrant};
use super::sense::{Sense, asc, status};
use super::spc::truncate;
use super::transport_id::{self, InitiatorPort};
use crate::scsi::Nexus;
use crate::scsi::ops::Op;

/// The parameter list of every service action, before any TransportIDs.
const PARAMETER_LIST_BYTES: usize = 24;
/// Where SPEC_I_PT's TransportIDs begin (after their four-byte length).
const SPECIFIED_PORTS_AT: usize = 28;

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
    // CRH: RESERVE(6)/(10) conflict with persistent reservations (SPC-4 §5.13.3); SIP_C,
    // ATP_C; PTPL_C where a keeper exists.
    out.put_u8(0x10 | 0x08 | 0x04 | u8::from(persist_capable));
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
        ctx.data_out_len = ctx.cdb.u32(5);
        let command = parse_out(ctx, self.keeper.is_some())?;
        let _turn = self.pr_turn.lock().await;
        let (before, after, done) = {
            let mut st = self.state();
            let before = st.pr.clone();
            let target_ports = st.target_ports.clone();
            let done = apply(&mut st.pr, &command, ctx.nexus, &target_ports);
            match &done {
                Ok(_) => {
                    if let Some(aptpl) = command.aptpl {
                        st.pr.aptpl = aptpl;
                    }
                }
                // All or nothing: a refused command changes nothing.
                Err(_) => st.pr = before.clone(),
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

/// A PERSISTENT RESERVE OUT command, parsed and checked against the CDB and parameter list.
struct OutCommand {
    action: Action,
    /// What APTPL becomes when the command succeeds (REGISTER, REGISTER AND IGNORE EXISTING
    /// KEY, REGISTER AND MOVE).
    aptpl: Option<bool>,
}

enum Action {
    Register {
        claimed: u64,
        new_key: u64,
        ignore_existing: bool,
        /// ALL_TG_PT: through every target port of the target.
        all_target_ports: bool,
        /// SPEC_I_PT: the initiator ports its TransportIDs name (Some even when empty).
        specified: Option<Vec<InitiatorPort>>,
    },
    Reserve {
        claimed: u64,
        kind: PrType,
    },
    Release {
        claimed: u64,
        kind: PrType,
    },
    Clear {
        claimed: u64,
    },
    Preempt {
        claimed: u64,
        victim: u64,
        kind: PrType,
    },
    RegisterAndMove {
        claimed: u64,
        new_key: u64,
        kind: PrType,
        to: InitiatorPort,
        relative_port: u16,
        unregister_sender: bool,
    },
}

fn key_at(p: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(p[at..at + 8].try_into().expect("8 bytes"))
}

fn parameter_bit(byte: u16, bit: u8) -> Sense {
    let field = super::sense::FieldPointer { in_cdb: false, byte, bit: Some(bit) };
    Sense { field: Some(field), ..Sense::illegal(asc::INVALID_FIELD_IN_PARAMETER_LIST) }
}

/// The reservation type of RESERVE, RELEASE, PREEMPT (AND ABORT) and REGISTER AND MOVE, in
/// the logical unit's scope.
fn reservation_type(ctx: &Ctx<'_>) -> Result<PrType, Sense> {
    if ctx.cdb.u8(2) >> 4 != 0 {
        return Err(Sense::invalid_cdb(2, Some(7)));
    }
    PrType::from_code(ctx.cdb.u8(2) & 0x0f).ok_or(Sense::invalid_cdb(2, Some(3)))
}

fn parse_out(ctx: &Ctx<'_>, has_keeper: bool) -> Result<OutCommand, Sense> {
    let len = ctx.data_out_len as usize;
    if len < PARAMETER_LIST_BYTES || ctx.data_out.len() < len {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let p = &ctx.data_out[..len];
    let (claimed, sark) = (key_at(p, 0), key_at(p, 8));
    let service_action = ctx.cdb.service_action();
    if service_action == 7 {
        return parse_register_and_move(ctx, p, has_keeper);
    }
    let flags = p[20];
    let (spec_i_pt, all_tg_pt, aptpl) = (flags & 0x08 != 0, flags & 0x04 != 0, flags & 0x01 != 0);
    if spec_i_pt && service_action != 0 {
        return Err(parameter_bit(20, 3));
    }
    let specified = match spec_i_pt {
        false if len != PARAMETER_LIST_BYTES => return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR)),
        false => None,
        true => Some(specified_ports(p)?),
    };
    let registering = matches!(service_action, 0 | 6);
    // Only REGISTER looks at APTPL; a logical unit without a keeper cannot keep anything.
    if registering && aptpl && !has_keeper {
        return Err(parameter_bit(20, 0));
    }
    let action = match service_action {
        0 | 6 => Action::Register {
            claimed,
            new_key: sark,
            ignore_existing: service_action == 6,
            all_target_ports: all_tg_pt,
            specified,
        },
        1 => Action::Reserve { claimed, kind: reservation_type(ctx)? },
        2 => Action::Release { claimed, kind: reservation_type(ctx)? },
        3 => Action::Clear { claimed },
        4 | 5 => Action::Preempt { claimed, victim: sark, kind: reservation_type(ctx)? },
        _ => return Err(Sense::invalid_cdb(1, Some(4))),
    };
    Ok(OutCommand { action, aptpl: registering.then_some(aptpl) })
}

/// SPEC_I_PT's TransportIDs: a four-byte length at byte 24, then the TransportIDs.
fn specified_ports(p: &[u8]) -> Result<Vec<InitiatorPort>, Sense> {
    if p.len() < SPECIFIED_PORTS_AT {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let ids_len = u32::from_be_bytes(p[24..28].try_into().expect("4 bytes")) as usize;
    let ids = p.get(SPECIFIED_PORTS_AT..SPECIFIED_PORTS_AT.saturating_add(ids_len));
    let ids = ids.ok_or(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR))?;
    transport_id::parse_all(ids, SPECIFIED_PORTS_AT)
}

/// REGISTER AND MOVE's parameter list: keys, UNREG and APTPL (byte 17), the destination's
/// relative target port (18-19) and its initiator port as a TransportID (from 24).
fn parse_register_and_move(ctx: &Ctx<'_>, p: &[u8], has_keeper: bool) -> Result<OutCommand, Sense> {
    let kind = reservation_type(ctx)?;
    let (unregister_sender, aptpl) = (p[17] & 0x02 != 0, p[17] & 0x01 != 0);
    if aptpl && !has_keeper {
        return Err(parameter_bit(17, 0));
    }
    let relative_port = u16::from_be_bytes([p[18], p[19]]);
    let id_len = u32::from_be_bytes(p[20..24].try_into().expect("4 bytes")) as usize;
    let id = p.get(PARAMETER_LIST_BYTES..PARAMETER_LIST_BYTES.saturating_add(id_len));
    let id = id.ok_or(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR))?;
    let (to, _) = transport_id::parse(id, PARAMETER_LIST_BYTES)?;
    let action = Action::RegisterAndMove {
        claimed: key_at(p, 0),
        new_key: key_at(p, 8),
        kind,
        to,
        relative_port,
        unregister_sender,
    };
    Ok(OutCommand { action, aptpl: Some(aptpl) })
}

/// The I_T nexus between `port` and the target port `relative_port` of the sender's target.
fn named(port: &InitiatorPort, sender: &Nexus, relative_port: u16) -> NamedNexus {
    let id = Nexus::id_of(&port.name, port.isid, &sender.target_name, relative_port);
    (id, Registrant { key: 0, initiator: port.name.clone(), isid: port.isid, relative_port })
}

/// Carries out a parsed command on the state. A refused command may leave the state part
/// changed: the caller puts back what it was.
fn apply(
    pr: &mut PrState,
    command: &OutCommand,
    sender: &Nexus,
    target_ports: &std::collections::BTreeSet<u16>,
) -> Result<Notices, PrError> {
    let nexus = sender.id;
    let own = InitiatorPort { name: sender.initiator_name.clone(), isid: sender.isid };
    match &command.action {
        Action::Register { claimed, new_key, ignore_existing, all_target_ports, specified } => {
            let was_registered = pr.registrants.contains_key(&nexus);
            // SPEC_I_PT is for an I_T nexus registering for the first time.
            if specified.is_some() && was_registered {
                return Err(PrError::Check(Sense::illegal(asc::INVALID_FIELD_IN_CDB)));
            }
            let (_, me) = named(&own, sender, sender.relative_port);
            let mut notices = pr.register(nexus, me, *claimed, *new_key, *ignore_existing)?;
            if !was_registered && *new_key == 0 {
                return Ok(notices);
            }
            let mut ports: Vec<u16> = vec![sender.relative_port];
            if *all_target_ports {
                ports.extend(target_ports.iter().filter(|p| **p != sender.relative_port));
                let others = ports[1..].iter().map(|p| named(&own, sender, *p)).collect();
                notices.extend(pr.register_other_ports(others, *new_key)?);
            }
            if let Some(specified) = specified {
                // The sender's own initiator port, named again, is registered above.
                let others = specified.iter().filter(|ip| **ip != own);
                let nexuses = others.flat_map(|ip| ports.iter().map(|p| named(ip, sender, *p)));
                pr.register_specified(nexuses.collect(), *new_key)?;
            }
            Ok(notices)
        }
        Action::Reserve { claimed, kind } => pr.reserve(nexus, *claimed, *kind).map(|()| Vec::new()),
        Action::Release { claimed, kind } => pr.release(nexus, *claimed, *kind),
        Action::Clear { claimed } => pr.clear(nexus, *claimed),
        Action::Preempt { claimed, victim, kind } => pr.preempt(nexus, *claimed, *victim, *kind),
        Action::RegisterAndMove { claimed, new_key, kind, to, relative_port, unregister_sender } => {
            if !target_ports.contains(relative_port) && *relative_port != sender.relative_port {
                return Err(PrError::Check(Sense::invalid_param(18)));
            }
            let to = named(to, sender, *relative_port);
            pr.register_and_move(nexus, *claimed, *new_key, *kind, to, *unregister_sender)
        }
    }
}
