//! A logical unit: a block store plus the SCSI state around it (mode parameters, unit
//! attentions, reservations), and the dispatcher that runs one command.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::cdb::Cdb;
use super::ops::{self, Lookup, Needs, Op, OpSpec};
use super::sense::{Sense, asc, key, status};
use super::{Nexus, Request, Response};
use crate::store::{BlockStore, StoreError};

/// Identity of a logical unit as reported in INQUIRY and VPD pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuIdentity {
    pub vendor: String,
    pub product: String,
    pub revision: String,
    pub serial: String,
    /// NAA designator, 8 bytes: locally assigned (NAA 3) unless configured.
    pub naa: u64,
}

impl LuIdentity {
    /// A stable identity derived from a name (target IQN + LUN, or a volume id).
    pub fn derived(name: &str) -> LuIdentity {
        let h = crate::fnv::fnv1a(name.as_bytes());
        // NAA 3, "locally assigned" (SPC-4 7.8.6.6.4): 60 bits of hash, and no IEEE company
        // id, which rtgt does not have (earlier versions borrowed another project's).
        let naa = (0x3u64 << 60) | (h & 0x0fff_ffff_ffff_ffff);
        LuIdentity {
            vendor: "RTGT".into(),
            product: "rtgt disk".into(),
            revision: "0001".into(),
            serial: format!("{:016x}", h),
            naa,
        }
    }
}

/// Configuration of a logical unit.
#[derive(Debug, Clone)]
pub struct LuConfig {
    pub block_size: u32,
    pub identity: LuIdentity,
    pub read_only: bool,
    /// Largest transfer of one command, in bytes (Block Limits VPD).
    pub max_transfer_bytes: u32,
}

impl LuConfig {
    pub fn new(block_size: u32, identity: LuIdentity) -> LuConfig {
        LuConfig { block_size, identity, read_only: false, max_transfer_bytes: 64 << 20 }
    }
}

/// Mutable SCSI state of a logical unit, shared by all I_T nexuses.
#[derive(Debug)]
pub(super) struct LuState {
    /// Caching mode page WCE: write-back when true; writes are FUA otherwise.
    pub wce: bool,
    /// Control mode page D_SENSE: descriptor-format sense data.
    pub d_sense: bool,
    /// Control mode page SWP: the medium is write-protected until an initiator clears it.
    pub swp: bool,
    /// Nexuses that have been told about power on (the first command from each gets a UA).
    pub seen: BTreeSet<u64>,
    /// Pending unit attentions per nexus, oldest first.
    pub ua: BTreeMap<u64, VecDeque<(u8, u8)>>,
    /// Holder of an SPC-2 RESERVE(6).
    pub reserved_by: Option<u64>,
    /// Persistent reservations: registrations and the reservation (kept across nexus loss
    /// and resets, lost at a restart).
    pub pr: super::pr::PrState,
    /// Results of EXTENDED COPY commands held for RECEIVE COPY RESULTS, per nexus.
    pub copy_results: BTreeMap<u64, Vec<super::xcopy::CopyResult>>,
    /// Nexuses that issued PREVENT MEDIUM REMOVAL.
    pub prevent: BTreeSet<u64>,
    /// The relative target ports of the target this logical unit belongs to (ALL_TG_PT
    /// registers through each; REGISTER AND MOVE may name any).
    pub target_ports: BTreeSet<u16>,
}

/// Bound on remembered nexuses; beyond it the oldest-keyed are forgotten (they then see a
/// spurious power-on unit attention, which is harmless).
const NEXUS_MEMORY_MAX: usize = 4096;
/// Bound on queued unit attentions per nexus.
const UA_QUEUE_MAX: usize = 16;

pub struct LogicalUnit {
    pub(super) store: Arc<dyn BlockStore>,
    pub(super) config: LuConfig,
    pub(super) state: Mutex<LuState>,
    /// Writes hold it shared; COMPARE AND WRITE and ORWRITE hold it exclusively, which makes
    /// them atomic against concurrent writes to the same blocks.
    pub(super) atomic: tokio::sync::RwLock<()>,
    pub metrics: super::metrics::LuMetrics,
    /// Keeps persistent reservations across restarts (APTPL); none: APTPL is refused.
    pub(super) keeper: Option<Arc<dyn super::pr_keeper::ReservationKeeper>>,
    /// PERSISTENT RESERVE OUT commands change and save the state one at a time.
    pub(super) pr_turn: tokio::sync::Mutex<()>,
    /// Another target serves this logical unit's volume: ALUA standby through every port of
    /// this one, whatever its port group's state (see `alua.rs`).
    standby: std::sync::atomic::AtomicBool,
}

/// What a handler returns: data-in, or a sense condition.
pub(super) type Outcome = Result<Bytes, Sense>;

/// Context of one command for its handler.
pub(super) struct Ctx<'a> {
    pub cdb: Cdb<'a>,
    pub spec: &'static OpSpec,
    pub nexus: &'a Nexus,
    pub data_out: &'a Bytes,
    /// Data-out bytes the command calls for; set by write-type handlers for residuals.
    pub data_out_len: u32,
    /// The most data-in the transport delivers ([`Request::data_in_max`]).
    pub data_in_max: u32,
    /// Data-in bytes the command called for, set by a handler that returns less.
    pub data_in_called_for: Option<u64>,
    /// A status other than GOOD for a successful command (CONDITION MET).
    pub status: u8,
    /// The other logical units of the target, for EXTENDED COPY.
    pub peers: &'a dyn super::xcopy::CopyPeers,
}

impl LogicalUnit {
    pub fn new(store: Arc<dyn BlockStore>, config: LuConfig) -> Result<LogicalUnit, String> {
        let bs = config.block_size;
        if bs != 512 && bs != 4096 {
            return Err(format!("block size {bs} is not supported (512 or 4096)"));
        }
        if store.capacity() < bs as u64 {
            return Err(format!("capacity {} is smaller than one block", store.capacity()));
        }
        if !store.capacity().is_multiple_of(bs as u64) {
            return Err(format!("capacity {} is not a multiple of the block size {bs}", store.capacity()));
        }
        Ok(LogicalUnit {
            store,
            config,
            state: Mutex::new(LuState {
                wce: true,
                d_sense: false,
                swp: false,
                seen: BTreeSet::new(),
                ua: BTreeMap::new(),
                reserved_by: None,
                pr: super::pr::PrState::default(),
                target_ports: BTreeSet::new(),
                copy_results: BTreeMap::new(),
                prevent: BTreeSet::new(),
            }),
            atomic: tokio::sync::RwLock::new(()),
            metrics: super::metrics::LuMetrics::default(),
            keeper: None,
            pr_turn: tokio::sync::Mutex::new(()),
            standby: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Keeps persistent reservations with `keeper` (APTPL, or every change where the keeper is
    /// shared), starting from what it saved.
    pub async fn keep_reservations(
        &mut self,
        keeper: Arc<dyn super::pr_keeper::ReservationKeeper>,
    ) -> Result<(), String> {
        let saved = keeper.load().await.map_err(|e| format!("reservations in {}: {e}", keeper.describe()))?;
        if let Some(bytes) = saved {
            let state = super::pr_keeper::decode(&bytes).map_err(|e| format!("{}: {e}", keeper.describe()))?;
            tracing::info!(
                keeper = keeper.describe(),
                registrations = state.registrants.len(),
                reserved = state.reservation.is_some(),
                "persistent reservations restored"
            );
            self.state().pr = state;
        }
        self.keeper = Some(keeper);
        Ok(())
    }

    /// Marks this logical unit as a standby's (or not); a change is announced to every
    /// initiator (ASYMMETRIC ACCESS STATE CHANGED).
    pub fn set_standby(&self, standby: bool) {
        if self.standby.swap(standby, std::sync::atomic::Ordering::SeqCst) != standby {
            self.unit_attention_all(super::alua::ACCESS_STATE_CHANGED, None);
        }
    }

    /// The target's relative target ports, as its portal groups are now.
    pub fn set_target_ports(&self, ports: BTreeSet<u16>) {
        self.state().target_ports = ports;
    }

    pub fn is_standby(&self) -> bool {
        self.standby.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn store(&self) -> &Arc<dyn BlockStore> {
        &self.store
    }

    pub fn block_size(&self) -> u32 {
        self.config.block_size
    }

    pub fn num_blocks(&self) -> u64 {
        self.store.capacity() / self.config.block_size as u64
    }

    pub fn identity(&self) -> &LuIdentity {
        &self.config.identity
    }

    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, LuState> {
        self.state.lock().expect("LU state lock poisoned")
    }

    pub fn write_cache_enabled(&self) -> bool {
        self.state().wce
    }

    pub(super) fn descriptor_sense(&self) -> bool {
        self.state().d_sense
    }

    /// Queues a unit attention for every nexus that has talked to this LU (`except` one).
    pub fn unit_attention_all(&self, code: (u8, u8), except: Option<u64>) {
        let mut st = self.state();
        let seen: Vec<u64> = st.seen.iter().copied().filter(|n| Some(*n) != except).collect();
        for nexus in seen {
            let q = st.ua.entry(nexus).or_default();
            if q.len() < UA_QUEUE_MAX && !q.contains(&code) {
                q.push_back(code);
            }
        }
    }

    /// Queues a unit attention for one nexus.
    pub(super) fn unit_attention_to(&self, nexus: u64, code: (u8, u8)) {
        let mut st = self.state();
        let q = st.ua.entry(nexus).or_default();
        if q.len() < UA_QUEUE_MAX && !q.contains(&code) {
            q.push_back(code);
        }
    }

    /// A LOGICAL UNIT RESET: clears SPC-2 reservations (persistent ones stay) and establishes
    /// a reset unit attention.
    pub fn reset(&self) {
        {
            let mut st = self.state();
            st.reserved_by = None;
            st.prevent.clear();
        }
        self.unit_attention_all(asc::BUS_DEVICE_RESET, None);
    }

    /// The unit attention pending for a nexus, left pending (QUERY ASYNC EVENT).
    pub fn pending_unit_attention(&self, nexus: u64) -> Option<(u8, u8)> {
        self.take_unit_attention(nexus, false)
    }

    /// The I_T nexus loss function (SAM-5) for an I_T NEXUS RESET: releases what the nexus
    /// held and tells it through I_T NEXUS LOSS OCCURRED.
    pub fn nexus_reset(&self, nexus: u64) {
        self.nexus_gone(nexus);
        self.unit_attention_to(nexus, asc::I_T_NEXUS_LOSS_OCCURRED);
    }

    /// Forgets a nexus that logged out: releases what it held.
    pub fn nexus_gone(&self, nexus: u64) {
        let mut st = self.state();
        if st.reserved_by == Some(nexus) {
            st.reserved_by = None;
        }
        st.prevent.remove(&nexus);
        st.copy_results.remove(&nexus);
    }

    /// Grows the logical unit and tells every initiator through a unit attention.
    pub async fn resize(&self, capacity: u64) -> Result<(), String> {
        let bs = self.config.block_size as u64;
        if !capacity.is_multiple_of(bs) {
            return Err(format!("size {capacity} is not a multiple of the block size {bs}"));
        }
        if capacity < self.store.capacity() {
            return Err("shrinking a LUN is not supported".into());
        }
        self.store.resize(capacity).await.map_err(|e| e.to_string())?;
        self.unit_attention_all(asc::CAPACITY_DATA_CHANGED, None);
        Ok(())
    }

    /// Takes the next pending unit attention for a nexus, registering the nexus (and its
    /// power-on unit attention) on first contact.
    pub(super) fn take_unit_attention(&self, nexus: u64, consume: bool) -> Option<(u8, u8)> {
        let mut st = self.state();
        if st.seen.insert(nexus) {
            if st.seen.len() > NEXUS_MEMORY_MAX {
                let victim = *st.seen.iter().find(|n| **n != nexus).expect("more than one nexus");
                st.seen.remove(&victim);
                st.ua.remove(&victim);
            }
            st.ua.entry(nexus).or_default().push_back(asc::POWER_ON_RESET);
        }
        let q = st.ua.get_mut(&nexus)?;
        let code = if consume { q.pop_front() } else { q.front().copied() };
        if q.is_empty() {
            st.ua.remove(&nexus);
        }
        code
    }

    /// Runs one command addressed to this logical unit, alone (EXTENDED COPY reaches only
    /// this logical unit).
    pub async fn execute(&self, req: &Request) -> Response {
        self.execute_among(req, &super::xcopy::NoPeers).await
    }

    /// Runs one command addressed to this logical unit, one of the target's `peers`.
    pub async fn execute_among(&self, req: &Request, peers: &dyn super::xcopy::CopyPeers) -> Response {
        let cdb = Cdb(&req.cdb);
        let spec = match ops::lookup(cdb.opcode(), cdb.service_action()) {
            Lookup::Found(spec) if self.supports(spec) => spec,
            // A service action this store does not offer, of a command it offers.
            Lookup::Found(spec) if self.supports_another_service_action(spec) => {
                return self.check(&Sense::invalid_cdb(1, Some(4)));
            }
            Lookup::Found(_) => return self.check(&Sense::illegal(asc::INVALID_OPCODE)),
            Lookup::UnknownOpcode => return self.check(&Sense::illegal(asc::INVALID_OPCODE)),
            Lookup::UnknownServiceAction => return self.check(&Sense::invalid_cdb(1, Some(4))),
        };
        if req.cdb.len() < spec.cdb_len() {
            return self.check(&Sense::illegal(asc::INVALID_OPCODE));
        }
        // ACA is not supported: NACA=1 is an invalid field (SAM-5 §5.9).
        if cdb.control(spec.cdb_len()) & 0x04 != 0 {
            return self.check(&Sense::invalid_cdb(spec.cdb_len() as u16 - 1, Some(2)));
        }
        let nexus = req.nexus.id;
        if let Some(code) = self.take_unit_attention(nexus, !spec.ua_exempt)
            && !spec.ua_exempt
        {
            return self.check(&Sense::new(key::UNIT_ATTENTION, code));
        }
        if !spec.conflict_exempt && self.reservation_conflict(nexus, spec.op) {
            return Response::with_status(status::RESERVATION_CONFLICT);
        }
        if needs_medium(spec.op)
            && let Err(why) = self.store.ready()
        {
            tracing::debug!(why, "not ready");
            return self.check(&Sense::new(key::NOT_READY, asc::BECOMING_READY));
        }
        let mut ctx = Ctx {
            cdb,
            spec,
            nexus: &req.nexus,
            data_out: &req.data_out,
            data_out_len: 0,
            data_in_max: req.data_in_max,
            data_in_called_for: None,
            status: status::GOOD,
            peers,
        };
        let outcome = self.run(&mut ctx).await;
        let mut response = match outcome {
            Ok(data) => Response::with_status(ctx.status).with_data(data, ctx.data_in_called_for),
            Err(sense) => self.check(&sense),
        };
        response.data_out_len = ctx.data_out_len;
        response
    }

    /// Whether this logical unit implements a command of the table. Until its store is open
    /// that is unknown: media commands are then answered NOT READY.
    pub(super) fn supports(&self, spec: &OpSpec) -> bool {
        let caps = self.store.caps();
        let offered = match spec.needs {
            Needs::Nothing => true,
            Needs::Thin => caps.thin,
            Needs::AtomicWrites => caps.atomic_write_max > 0,
            Needs::CryptoErase => self.store.crypto_erase().is_some(),
        };
        offered || self.store.ready().is_err()
    }

    /// Whether another service action of `spec`'s operation code is offered here.
    fn supports_another_service_action(&self, spec: &OpSpec) -> bool {
        spec.service_action.is_some()
            && ops::commands().iter().any(|s| s.opcode == spec.opcode && s.service_action.is_some() && self.supports(s))
    }

    /// Whether an SPC-2 reservation of another nexus, or the persistent reservation, keeps
    /// `nexus` from running `op`.
    pub(super) fn reservation_conflict(&self, nexus: u64, op: Op) -> bool {
        let st = self.state();
        matches!(st.reserved_by, Some(holder) if holder != nexus)
            || st.pr.conflicts(nexus, super::persistent_reserve::access(op))
    }

    fn check(&self, sense: &Sense) -> Response {
        Response::check(sense, self.descriptor_sense())
    }

    async fn run(&self, ctx: &mut Ctx<'_>) -> Outcome {
        match ctx.spec.op {
            Op::TestUnitReady => Ok(Bytes::new()),
            Op::RequestSense => self.request_sense(ctx),
            Op::Inquiry => self.inquiry(ctx),
            Op::ModeSelect => self.mode_select(ctx),
            Op::ModeSense => self.mode_sense(ctx),
            Op::StartStopUnit => self.start_stop_unit(ctx),
            Op::PreventAllow => self.prevent_allow(ctx),
            Op::ReadCapacity10 => self.read_capacity10(ctx),
            Op::ReadCapacity16 => self.read_capacity16(ctx),
            Op::Read => self.read(ctx).await,
            Op::Write => self.write(ctx, false).await,
            Op::WriteAndVerify => self.write(ctx, true).await,
            Op::Verify => self.verify(ctx).await,
            Op::PreFetch => self.pre_fetch(ctx),
            Op::SynchronizeCache => self.synchronize_cache(ctx).await,
            Op::WriteSame => self.write_same(ctx).await,
            Op::Unmap => self.unmap(ctx).await,
            Op::CompareAndWrite => self.compare_and_write(ctx).await,
            Op::OrWrite => self.or_write(ctx).await,
            Op::WriteAtomic => self.write_atomic(ctx).await,
            Op::Sanitize => self.sanitize(ctx).await,
            Op::GetLbaStatus => self.get_lba_status(ctx).await,
            // Answered by the target.
            Op::ReportLuns | Op::ReportTargetPortGroups | Op::SetTargetPortGroups => {
                Err(Sense::illegal(asc::INTERNAL_TARGET_FAILURE))
            }
            Op::ReportSupportedOpcodes => self.report_supported_opcodes(ctx),
            Op::Reserve => self.reserve(ctx),
            Op::Release => self.release(ctx),
            Op::ReadDefectData => self.read_defect_data(ctx),
            Op::PersistentReserveIn => self.persistent_reserve_in(ctx),
            Op::PersistentReserveOut => self.persistent_reserve_out(ctx).await,
            Op::ExtendedCopy => self.extended_copy(ctx).await,
            Op::ReceiveCopyResults => self.receive_copy_results(ctx),
            Op::ReportSupportedTmfs => self.report_supported_tmfs(ctx),
        }
    }
}

/// Whether a command needs the medium (NOT READY while the store is not open). INQUIRY,
/// REQUEST SENSE, REPORT LUNS, mode pages and reservations work without it.
fn needs_medium(op: Op) -> bool {
    !matches!(
        op,
        Op::Inquiry
            | Op::RequestSense
            | Op::ModeSelect
            | Op::ModeSense
            | Op::ReportLuns
            | Op::ReportSupportedOpcodes
            | Op::Reserve
            | Op::Release
            | Op::PreventAllow
            | Op::StartStopUnit
            | Op::ReadDefectData
            | Op::PersistentReserveIn
            | Op::PersistentReserveOut
            | Op::ReportTargetPortGroups
            | Op::SetTargetPortGroups
            | Op::ReceiveCopyResults
            | Op::ReportSupportedTmfs
    )
}

/// The sense condition for a failed store operation.
pub(super) fn store_sense(err: &StoreError) -> Sense {
    tracing::warn!(error = %err, "storage error");
    match err {
        StoreError::Read(_) => Sense::new(key::MEDIUM_ERROR, asc::UNRECOVERED_READ_ERROR),
        StoreError::Write(_) => Sense::new(key::MEDIUM_ERROR, asc::WRITE_ERROR),
        StoreError::Transient(_) => Sense::new(key::ABORTED_COMMAND, asc::NO_ADDITIONAL),
        StoreError::NoSpace(_) => Sense::new(key::DATA_PROTECT, asc::SPACE_ALLOCATION_FAILED),
        StoreError::NotReady(_) => Sense::new(key::NOT_READY, asc::BECOMING_READY),
    }
}
