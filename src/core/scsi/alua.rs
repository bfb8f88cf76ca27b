//! Asymmetric logical unit access (SPC-4 §5.15), implicit and explicit: each portal group of a
//! target is a target port group with one target port (relative port and group id = the portal
//! group tag), in an access state the operator sets (configuration, API) or an initiator sets
//! with SET TARGET PORT GROUPS (until the configuration is applied again). REPORT TARGET PORT GROUPS tells
//! multipath initiators which paths to prefer; commands through a port in a state that does
//! not allow them are answered NOT READY with the state's ASC (SPC-4 §5.15.2.4).

use std::collections::BTreeMap;

use bytes::{BufMut, BytesMut};

use super::ops::Op;
use super::sense::{Sense, key};

/// The unit attention of a changed access state (2A/06).
pub const ACCESS_STATE_CHANGED: (u8, u8) = (0x2a, 0x06);

/// The asymmetric access state of a target port group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AluaState {
    #[default]
    ActiveOptimized,
    ActiveNonOptimized,
    Standby,
    Unavailable,
    Transitioning,
}

impl AluaState {
    /// The ASYMMETRIC ACCESS STATE code.
    fn code(self) -> u8 {
        match self {
            AluaState::ActiveOptimized => 0x0,
            AluaState::ActiveNonOptimized => 0x1,
            AluaState::Standby => 0x2,
            AluaState::Unavailable => 0x3,
            AluaState::Transitioning => 0xf,
        }
    }

    /// Whether every command may run through a port in this state (the active ones).
    pub fn admits_everything(self) -> bool {
        matches!(self, AluaState::ActiveOptimized | AluaState::ActiveNonOptimized)
    }

    /// Whether `op` may run through a port in this state; the NOT READY answer otherwise.
    pub fn admits(self, op: Op) -> Result<(), Sense> {
        if self.admits_everything() {
            return Ok(());
        }
        // Every state answers what identifies the device and its paths.
        let always = matches!(
            op,
            Op::Inquiry | Op::ReportLuns | Op::RequestSense | Op::ReportTargetPortGroups | Op::ReportSupportedTmfs
        );
        // A path in standby or unavailable can be made active through itself (§5.15.2.4).
        let settable = op == Op::SetTargetPortGroups;
        let (allowed, asc) = match self {
            AluaState::ActiveOptimized | AluaState::ActiveNonOptimized => (true, (0, 0)),
            // Standby also keeps settings and reservations reachable (§5.15.2.4.4).
            AluaState::Standby => (
                always
                    || settable
                    || matches!(
                        op,
                        Op::ModeSense
                            | Op::ModeSelect
                            | Op::PersistentReserveIn
                            | Op::PersistentReserveOut
                            | Op::ReportSupportedOpcodes
                    ),
                (0x04, 0x0b),
            ),
            AluaState::Unavailable => (always || settable || op == Op::ReportSupportedOpcodes, (0x04, 0x0c)),
            AluaState::Transitioning => (always || op == Op::ReportSupportedOpcodes, (0x04, 0x0a)),
        };
        match allowed {
            true => Ok(()),
            false => Err(Sense::new(key::NOT_READY, asc)),
        }
    }

    /// What a standby's logical unit (its volume served by another target) admits: Standby's
    /// commands, but not the reservations, which live with the volume the other target holds.
    pub fn standby_admits(op: Op) -> Result<(), Sense> {
        AluaState::Standby.admits(op)?;
        match op {
            Op::PersistentReserveIn | Op::PersistentReserveOut => Err(Sense::new(key::NOT_READY, (0x04, 0x0b))),
            _ => Ok(()),
        }
    }
}

/// The target port groups of one target: portal group tag → state.
pub type PortGroups = BTreeMap<u16, AluaState>;

/// REPORT TARGET PORT GROUPS parameter data (SPC-4 §6.36), length-only or extended header.
pub fn report_target_port_groups(groups: &PortGroups, extended: bool) -> BytesMut {
    let mut descriptors = BytesMut::new();
    for (&tag, &state) in groups {
        // PREF 0; supported states: T_SUP, U_SUP, S_SUP, AN_SUP, AO_SUP.
        descriptors.put_u8(state.code());
        descriptors.put_u8(0x80 | 0x08 | 0x04 | 0x02 | 0x01);
        descriptors.put_u16(tag);
        descriptors.put_u8(0);
        descriptors.put_u8(0); // STATUS CODE: no status available
        descriptors.put_u8(0); // vendor specific
        descriptors.put_u8(1); // one target port
        descriptors.put_u16(0);
        descriptors.put_u16(tag); // its relative target port identifier
    }
    let mut out = BytesMut::new();
    match extended {
        false => out.put_u32(descriptors.len() as u32),
        true => {
            out.put_u32(descriptors.len() as u32 + 4);
            out.put_u8(0x10); // FORMAT TYPE 001b
            out.put_u8(0); // IMPLICIT TRANSITION TIME: immediate
            out.put_u16(0);
        }
    }
    out.put_slice(&descriptors);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_admits_what_spc_lists() {
        for op in [Op::Read, Op::Write, Op::TestUnitReady, Op::Inquiry, Op::PersistentReserveIn] {
            assert!(AluaState::ActiveNonOptimized.admits(op).is_ok(), "{op:?}");
        }
        assert_eq!(AluaState::Standby.admits(Op::Read).unwrap_err().asc, (0x04, 0x0b));
        assert!(AluaState::Standby.admits(Op::PersistentReserveOut).is_ok());
        assert_eq!(AluaState::Unavailable.admits(Op::PersistentReserveIn).unwrap_err().asc, (0x04, 0x0c));
        assert_eq!(AluaState::Transitioning.admits(Op::TestUnitReady).unwrap_err().asc, (0x04, 0x0a));
        assert!(AluaState::Unavailable.admits(Op::ReportTargetPortGroups).is_ok());
    }

    #[test]
    fn the_report_lists_each_group_with_its_port() {
        let groups = PortGroups::from([(1, AluaState::ActiveOptimized), (2, AluaState::Standby)]);
        let r = report_target_port_groups(&groups, false);
        assert_eq!(&r[..4], &24u32.to_be_bytes());
        assert_eq!(&r[4..16], &[0x00, 0x8f, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1], "STATUS CODE 0: no status available");
        assert_eq!((r[16], &r[18..20]), (0x02, &[0, 2][..]));
        let x = report_target_port_groups(&groups, true);
        assert_eq!((&x[..4], x[4]), (&28u32.to_be_bytes()[..], 0x10));
    }
}
