//! The SCSI side of a target: its logical units by LUN, REPORT LUNS, and the answers for
//! LUNs that do not exist.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use bytes::{BufMut, BytesMut};

use super::alua::{self, AluaState, PortGroups};
use super::lu::LogicalUnit;
use super::sense::{Sense, asc};
use super::spc::{standard_inquiry_data, truncate};
use super::{Request, Response, decode_lun, encode_lun};

/// Most LUNs one target may have.
pub const LUNS_MAX: usize = 1024;

pub struct ScsiTarget {
    pub name: String,
    luns: RwLock<BTreeMap<u16, Arc<LogicalUnit>>>,
    /// LUN masking: the initiators (lowercase names) that see a LUN; a LUN absent here is seen
    /// by every initiator of the target.
    masks: RwLock<BTreeMap<u16, BTreeSet<String>>>,
    /// The asymmetric access state of each portal group the target is reachable through.
    port_groups: RwLock<PortGroups>,
}

impl ScsiTarget {
    pub fn new(name: &str) -> ScsiTarget {
        ScsiTarget {
            name: name.to_string(),
            luns: RwLock::new(BTreeMap::new()),
            masks: RwLock::new(BTreeMap::new()),
            port_groups: RwLock::new(PortGroups::new()),
        }
    }

    /// Sets the target port groups and their states; a changed state is announced to every
    /// initiator (ASYMMETRIC ACCESS STATE CHANGED).
    pub fn set_port_groups(&self, groups: PortGroups) {
        self.change_port_groups(groups, None);
    }

    /// Sets the port groups; a changed state is announced to every nexus but `by`, the one
    /// that asked for it with SET TARGET PORT GROUPS (SPC-4 §5.15.2.3).
    fn change_port_groups(&self, groups: PortGroups, by: Option<u64>) {
        let changed = {
            let mut current = self.port_groups.write().expect("port groups poisoned");
            let changed = current.iter().any(|(tag, state)| groups.get(tag).is_some_and(|s| s != state));
            *current = groups;
            changed
        };
        for (_, lu) in self.luns() {
            lu.set_target_ports(self.target_ports());
        }
        if changed {
            for (_, lu) in self.luns() {
                lu.unit_attention_all(alua::ACCESS_STATE_CHANGED, by);
            }
        }
    }

    /// The relative target ports: one per portal group (numbered by its tag).
    fn target_ports(&self) -> BTreeSet<u16> {
        self.port_groups.read().expect("port groups poisoned").keys().copied().collect()
    }

    /// The state of the port group a command came through (active/optimized if unknown).
    fn port_state(&self, tag: u16) -> AluaState {
        self.port_groups.read().expect("port groups poisoned").get(&tag).copied().unwrap_or_default()
    }

    /// Shows `lun` only to these initiators (None: to all).
    /// Whether some LUN is masked (seen by some initiators only).
    pub fn is_masked(&self) -> bool {
        !self.masks.read().expect("LUN masks poisoned").is_empty()
    }

    pub fn set_mask(&self, lun: u16, initiators: Option<BTreeSet<String>>) {
        let mut masks = self.masks.write().expect("LUN masks poisoned");
        match initiators {
            Some(names) => masks.insert(lun, names.into_iter().map(|n| n.to_lowercase()).collect()),
            None => masks.remove(&lun),
        };
    }

    /// Whether `initiator` sees `lun`.
    pub fn visible(&self, lun: u16, initiator: &str) -> bool {
        self.masks
            .read()
            .expect("LUN masks poisoned")
            .get(&lun)
            .is_none_or(|names| names.contains(&initiator.to_lowercase()))
    }

    /// The logical unit `lun` as `initiator` sees it: None if it does not exist or is masked.
    pub fn lun_for(&self, lun: u16, initiator: &str) -> Option<Arc<LogicalUnit>> {
        self.lun(lun).filter(|_| self.visible(lun, initiator))
    }

    pub fn add_lun(&self, lun: u16, lu: Arc<LogicalUnit>) -> Result<(), String> {
        if lun as usize >= 16384 {
            return Err(format!("LUN {lun} is out of range (0-16383)"));
        }
        let mut luns = self.luns.write().expect("LUN map poisoned");
        if luns.contains_key(&lun) {
            return Err(format!("LUN {lun} already exists on {}", self.name));
        }
        if luns.len() >= LUNS_MAX {
            return Err(format!("{} already has {LUNS_MAX} LUNs", self.name));
        }
        lu.set_target_ports(self.target_ports());
        luns.insert(lun, lu);
        for lu in luns.values() {
            lu.unit_attention_all(asc::REPORTED_LUNS_DATA_CHANGED, None);
        }
        Ok(())
    }

    /// Puts another logical unit in place of `lun` (the same LUN, opened again or not ready
    /// yet): the LUN inventory does not change.
    pub fn replace_lun(&self, lun: u16, lu: Arc<LogicalUnit>) -> Option<Arc<LogicalUnit>> {
        lu.set_target_ports(self.target_ports());
        self.luns.write().expect("LUN map poisoned").insert(lun, lu)
    }

    pub fn remove_lun(&self, lun: u16) -> Option<Arc<LogicalUnit>> {
        let mut luns = self.luns.write().expect("LUN map poisoned");
        let removed = luns.remove(&lun);
        self.masks.write().expect("LUN masks poisoned").remove(&lun);
        if removed.is_some() {
            for lu in luns.values() {
                lu.unit_attention_all(asc::REPORTED_LUNS_DATA_CHANGED, None);
            }
        }
        removed
    }

    pub fn lun(&self, lun: u16) -> Option<Arc<LogicalUnit>> {
        self.luns.read().expect("LUN map poisoned").get(&lun).cloned()
    }

    pub fn luns(&self) -> Vec<(u16, Arc<LogicalUnit>)> {
        self.luns.read().expect("LUN map poisoned").iter().map(|(n, lu)| (*n, lu.clone())).collect()
    }

    /// Runs a command addressed to one of this target's LUNs.
    pub async fn execute(&self, req: &Request) -> Response {
        let opcode = req.cdb.first().copied().unwrap_or(0);
        if opcode == 0xa0 {
            return self.report_luns(req);
        }
        let lu = decode_lun(req.lun).and_then(|n| self.lun_for(n, &req.nexus.initiator_name));
        let Some(lu) = lu else { return Self::no_such_lun(req) };
        // The command table is searched here only for MAINTENANCE IN (REPORT TARGET PORT GROUPS
        // is the target's) or through a port whose state refuses some commands: the logical
        // unit looks every command up itself.
        let state = self.port_state(req.nexus.relative_port);
        let standby = lu.is_standby() && state.admits_everything();
        if opcode == 0xa3 || opcode == 0xa4 || !state.admits_everything() || standby {
            let cdb = super::cdb::Cdb(&req.cdb);
            if let super::ops::Lookup::Found(spec) = super::ops::lookup(opcode, cdb.service_action()) {
                let admitted = match standby {
                    true => AluaState::standby_admits(spec.op),
                    false => state.admits(spec.op),
                };
                if let Err(sense) = admitted {
                    // A pending unit attention comes first (SAM-5 §5.14), as through any port.
                    if !spec.ua_exempt
                        && let Some(code) = lu.take_unit_attention(req.nexus.id, true)
                    {
                        return Response::check(&Sense::new(super::sense::key::UNIT_ATTENTION, code), false);
                    }
                    return Response::check(&sense, false);
                }
                if spec.op == super::ops::Op::ReportTargetPortGroups {
                    return self.report_target_port_groups(req, standby);
                }
                if spec.op == super::ops::Op::SetTargetPortGroups {
                    return self.set_target_port_groups(req);
                }
            }
        }
        lu.execute_among(req, self).await
    }

    /// `standby`: the logical unit's volume is served by another target, so the port the
    /// command came through reports standby.
    fn report_target_port_groups(&self, req: &Request, standby: bool) -> Response {
        let cdb = super::cdb::Cdb(&req.cdb);
        let extended = match cdb.u8(1) >> 5 {
            0 => false,
            1 => true,
            _ => return Response::check(&Sense::invalid_cdb(1, Some(7)), false),
        };
        let groups = self.port_groups.read().expect("port groups poisoned").clone();
        // A target not told its groups yet is reached through the nexus's one.
        let mut groups = match groups.is_empty() {
            true => PortGroups::from([(req.nexus.relative_port, AluaState::default())]),
            false => groups,
        };
        if standby {
            groups.insert(req.nexus.relative_port, AluaState::Standby);
        }
        Response::good(truncate(alua::report_target_port_groups(&groups, extended), cdb.u32(6) as usize))
    }

    /// SET TARGET PORT GROUPS (SPC-4 §6.31): explicit access state changes of this target's
    /// port groups, all or none, announced like the operator's (ASYMMETRIC ACCESS STATE
    /// CHANGED). Active/optimized, active/non-optimized, standby and unavailable may be set.
    fn set_target_port_groups(&self, req: &Request) -> Response {
        let cdb = super::cdb::Cdb(&req.cdb);
        let len = cdb.u32(6) as usize;
        let fail = |sense: Sense| {
            let mut r = Response::check(&sense, false);
            r.data_out_len = len.min(u32::MAX as usize) as u32;
            r
        };
        if req.data_out.len() < len || (len > 0 && (len < 4 || !(len - 4).is_multiple_of(4))) {
            return fail(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        let mut groups = self.port_groups.read().expect("port groups poisoned").clone();
        if groups.is_empty() {
            groups.insert(req.nexus.relative_port, AluaState::default());
        }
        let descriptors = req.data_out.get(4..len).unwrap_or_default();
        for (i, d) in descriptors.chunks(4).enumerate() {
            let at = (4 + 4 * i) as u16;
            let state = match d[0] & 0x0f {
                0x0 => AluaState::ActiveOptimized,
                0x1 => AluaState::ActiveNonOptimized,
                0x2 => AluaState::Standby,
                0x3 => AluaState::Unavailable,
                _ => return fail(Sense::invalid_param(at)),
            };
            let tag = u16::from_be_bytes([d[2], d[3]]);
            match groups.get_mut(&tag) {
                Some(current) => *current = state,
                None => return fail(Sense::invalid_param(at + 2)),
            }
        }
        self.change_port_groups(groups, Some(req.nexus.id));
        let mut r = Response::good(bytes::Bytes::new());
        r.data_out_len = len as u32;
        r
    }

    /// SPC-4 §5.12: answers for an unknown LUN.
    fn no_such_lun(req: &Request) -> Response {
        let not_supported = Sense::illegal(asc::LUN_NOT_SUPPORTED);
        match req.cdb.first().copied().unwrap_or(0) {
            0x12 if req.cdb.get(1).is_some_and(|b| b & 0x03 == 0) => {
                // Peripheral qualifier 011b, device type 1Fh: no logical unit here.
                let alloc =
                    u16::from_be_bytes([req.cdb.get(3).copied().unwrap_or(0), req.cdb.get(4).copied().unwrap_or(0)]);
                let mut data = standard_inquiry_data(3, 0x1f, "RTGT", "no LUN", "0001");
                super::spc::claim_iscsi_version(&mut data, &req.nexus);
                Response::good(truncate(data, alloc as usize))
            }
            0x03 => {
                let alloc = req.cdb.get(4).copied().unwrap_or(0) as usize;
                let desc = req.cdb.get(1).is_some_and(|b| b & 1 != 0);
                let data = not_supported.encode(desc);
                Response::good(data.slice(..data.len().min(alloc)))
            }
            _ => Response::check(&not_supported, false),
        }
    }

    fn report_luns(&self, req: &Request) -> Response {
        let cdb = super::cdb::Cdb(&req.cdb);
        let select = cdb.u8(2);
        let alloc = cdb.u32(6) as usize;
        if alloc < 16 {
            return Response::check(&Sense::invalid_cdb(6, None), false);
        }
        let luns: Vec<u16> = match select {
            0x00 | 0x02 => {
                let all: Vec<u16> = self.luns.read().expect("LUN map poisoned").keys().copied().collect();
                all.into_iter().filter(|&n| self.visible(n, &req.nexus.initiator_name)).collect()
            }
            0x01 => Vec::new(), // no well-known LUNs
            _ => return Response::check(&Sense::invalid_cdb(2, None), false),
        };
        let mut out = BytesMut::with_capacity(8 + 8 * luns.len());
        out.put_u32((8 * luns.len()) as u32);
        out.put_u32(0);
        for lun in luns {
            out.put_u64(encode_lun(lun));
        }
        Response::good(truncate(out, alloc))
    }
}

impl super::xcopy::CopyPeers for ScsiTarget {
    fn by_naa(&self, naa: u64, initiator: &str) -> Option<Arc<LogicalUnit>> {
        let luns = self.luns.read().expect("LUN map poisoned");
        let (lun, lu) = luns.iter().find(|(_, lu)| lu.identity().naa == naa)?;
        self.visible(*lun, initiator).then(|| lu.clone())
    }
}
