//! The command table: every supported opcode (and service action) with its handler, its CDB
//! usage data and its dispatch rules. Dispatch and REPORT SUPPORTED OPERATION CODES both read
//! this one table, so what is reported is exactly what is implemented.

/// Handlers, one per command (families share a handler and look at the opcode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    TestUnitReady,
    RequestSense,
    Inquiry,
    ModeSelect,
    ModeSense,
    StartStopUnit,
    PreventAllow,
    ReadCapacity10,
    ReadCapacity16,
    Read,
    Write,
    WriteAndVerify,
    Verify,
    PreFetch,
    SynchronizeCache,
    WriteSame,
    Unmap,
    CompareAndWrite,
    OrWrite,
    GetLbaStatus,
    ReportLuns,
    ReportSupportedOpcodes,
    Reserve,
    Release,
    ReadDefectData,
    PersistentReserveIn,
    PersistentReserveOut,
    ReportTargetPortGroups,
    SetTargetPortGroups,
    ExtendedCopy,
    ReceiveCopyResults,
    ReportSupportedTmfs,
    WriteAtomic,
    Sanitize,
}

/// One row of the table.
#[derive(Debug)]
pub struct OpSpec {
    pub opcode: u8,
    pub service_action: Option<u16>,
    pub name: &'static str,
    pub op: Op,
    /// CDB usage data (SPC-4 §6.35.3): the bits of each CDB byte the device server looks at.
    /// Its length is the CDB length.
    pub usage: &'static [u8],
    /// Runs even when a unit attention is pending, without clearing it (SPC-4 §5.14).
    pub ua_exempt: bool,
    /// Allowed while another I_T nexus holds a reservation.
    pub conflict_exempt: bool,
    /// What the store must offer for the command to exist: absent from dispatch and RSOC
    /// otherwise.
    pub needs: Needs,
}

/// A store capability a command depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    Nothing,
    /// Thin provisioning (LBPME=1).
    Thin,
    /// Atomic writes (`StoreCaps::atomic_write_max`).
    AtomicWrites,
    /// A store that encrypts and can replace its key (`BlockStore::crypto_erase`).
    CryptoErase,
}

impl OpSpec {
    pub fn cdb_len(&self) -> usize {
        self.usage.len()
    }
}

const fn spec(opcode: u8, name: &'static str, op: Op, usage: &'static [u8]) -> OpSpec {
    OpSpec {
        opcode,
        service_action: None,
        name,
        op,
        usage,
        ua_exempt: false,
        conflict_exempt: false,
        needs: Needs::Nothing,
    }
}

const fn sa(opcode: u8, service_action: u16, name: &'static str, op: Op, usage: &'static [u8]) -> OpSpec {
    let mut s = spec(opcode, name, op, usage);
    s.service_action = Some(service_action);
    s
}

const fn exempt(mut s: OpSpec, ua: bool, conflict: bool) -> OpSpec {
    s.ua_exempt = ua;
    s.conflict_exempt = conflict;
    s
}

const fn thin(mut s: OpSpec) -> OpSpec {
    s.needs = Needs::Thin;
    s
}

const fn crypto(mut s: OpSpec) -> OpSpec {
    s.needs = Needs::CryptoErase;
    s
}

const fn atomic(mut s: OpSpec) -> OpSpec {
    s.needs = Needs::AtomicWrites;
    s
}

const FF: u8 = 0xff;
/// The control byte: we evaluate NACA (and reject it).
const CTL: u8 = 0x04;

static COMMANDS: &[OpSpec] = &[
    exempt(spec(0x00, "TEST UNIT READY", Op::TestUnitReady, &[0x00, 0, 0, 0, 0, CTL]), false, false),
    exempt(spec(0x03, "REQUEST SENSE", Op::RequestSense, &[0x03, 0x01, 0, 0, FF, CTL]), true, true),
    spec(0x08, "READ(6)", Op::Read, &[0x08, 0x1f, FF, FF, FF, CTL]),
    spec(0x0a, "WRITE(6)", Op::Write, &[0x0a, 0x1f, FF, FF, FF, CTL]),
    exempt(spec(0x12, "INQUIRY", Op::Inquiry, &[0x12, 0x01, FF, FF, FF, CTL]), true, true),
    spec(0x15, "MODE SELECT(6)", Op::ModeSelect, &[0x15, 0x11, 0, 0, FF, CTL]),
    spec(0x16, "RESERVE(6)", Op::Reserve, &[0x16, 0, 0, 0, 0, CTL]),
    exempt(spec(0x17, "RELEASE(6)", Op::Release, &[0x17, 0, 0, 0, 0, CTL]), false, true),
    spec(0x1a, "MODE SENSE(6)", Op::ModeSense, &[0x1a, 0x08, FF, FF, FF, CTL]),
    spec(0x1b, "START STOP UNIT", Op::StartStopUnit, &[0x1b, 0x01, 0, 0x0f, 0xf7, CTL]),
    spec(0x1e, "PREVENT ALLOW MEDIUM REMOVAL", Op::PreventAllow, &[0x1e, 0, 0, 0, 0x03, CTL]),
    spec(0x25, "READ CAPACITY(10)", Op::ReadCapacity10, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, CTL]),
    spec(0x28, "READ(10)", Op::Read, &[0x28, 0xfe, FF, FF, FF, FF, 0, FF, FF, CTL]),
    spec(0x2a, "WRITE(10)", Op::Write, &[0x2a, 0xfa, FF, FF, FF, FF, 0, FF, FF, CTL]),
    spec(0x2e, "WRITE AND VERIFY(10)", Op::WriteAndVerify, &[0x2e, 0xf2, FF, FF, FF, FF, 0, FF, FF, CTL]),
    spec(0x2f, "VERIFY(10)", Op::Verify, &[0x2f, 0xf6, FF, FF, FF, FF, 0, FF, FF, CTL]),
    spec(0x34, "PRE-FETCH(10)", Op::PreFetch, &[0x34, 0x02, FF, FF, FF, FF, 0, FF, FF, CTL]),
    spec(0x35, "SYNCHRONIZE CACHE(10)", Op::SynchronizeCache, &[0x35, 0x02, FF, FF, FF, FF, 0, FF, FF, CTL]),
    spec(0x37, "READ DEFECT DATA(10)", Op::ReadDefectData, &[0x37, 0, 0x1f, 0, 0, 0, 0, FF, FF, CTL]),
    spec(0x41, "WRITE SAME(10)", Op::WriteSame, &[0x41, 0xe8, FF, FF, FF, FF, 0, FF, FF, CTL]),
    thin(spec(0x42, "UNMAP", Op::Unmap, &[0x42, 0x01, 0, 0, 0, 0, 0, FF, FF, CTL])),
    thin(sa(0x48, 0x02, "SANITIZE (BLOCK ERASE)", Op::Sanitize, &[0x48, 0xa2, 0, 0, 0, 0, 0, FF, FF, CTL])),
    crypto(sa(0x48, 0x03, "SANITIZE (CRYPTO ERASE)", Op::Sanitize, &[0x48, 0xa3, 0, 0, 0, 0, 0, FF, FF, CTL])),
    spec(0x55, "MODE SELECT(10)", Op::ModeSelect, &[0x55, 0x11, 0, 0, 0, 0, 0, FF, FF, CTL]),
    spec(0x5a, "MODE SENSE(10)", Op::ModeSense, &[0x5a, 0x18, FF, FF, 0, 0, 0, FF, FF, CTL]),
    sa(0x5e, 0, "PERSISTENT RESERVE IN (READ KEYS)", Op::PersistentReserveIn, &[0x5e, 0, 0, 0, 0, 0, 0, FF, FF, CTL]),
    sa(
        0x5e,
        1,
        "PERSISTENT RESERVE IN (READ RESERVATION)",
        Op::PersistentReserveIn,
        &[0x5e, 1, 0, 0, 0, 0, 0, FF, FF, CTL],
    ),
    sa(
        0x5e,
        2,
        "PERSISTENT RESERVE IN (REPORT CAPABILITIES)",
        Op::PersistentReserveIn,
        &[0x5e, 2, 0, 0, 0, 0, 0, FF, FF, CTL],
    ),
    sa(
        0x5e,
        3,
        "PERSISTENT RESERVE IN (READ FULL STATUS)",
        Op::PersistentReserveIn,
        &[0x5e, 3, 0, 0, 0, 0, 0, FF, FF, CTL],
    ),
    sa(
        0x5f,
        0,
        "PERSISTENT RESERVE OUT (REGISTER)",
        Op::PersistentReserveOut,
        &[0x5f, 0, FF, 0, 0, FF, FF, FF, FF, CTL],
    ),
    sa(
        0x5f,
        1,
        "PERSISTENT RESERVE OUT (RESERVE)",
        Op::PersistentReserveOut,
        &[0x5f, 1, FF, 0, 0, FF, FF, FF, FF, CTL],
    ),
    sa(
        0x5f,
        2,
        "PERSISTENT RESERVE OUT (RELEASE)",
        Op::PersistentReserveOut,
        &[0x5f, 2, FF, 0, 0, FF, FF, FF, FF, CTL],
    ),
    sa(0x5f, 3, "PERSISTENT RESERVE OUT (CLEAR)", Op::PersistentReserveOut, &[0x5f, 3, FF, 0, 0, FF, FF, FF, FF, CTL]),
    sa(
        0x5f,
        4,
        "PERSISTENT RESERVE OUT (PREEMPT)",
        Op::PersistentReserveOut,
        &[0x5f, 4, FF, 0, 0, FF, FF, FF, FF, CTL],
    ),
    sa(
        0x5f,
        5,
        "PERSISTENT RESERVE OUT (PREEMPT AND ABORT)",
        Op::PersistentReserveOut,
        &[0x5f, 5, FF, 0, 0, FF, FF, FF, FF, CTL],
    ),
    sa(
        0x5f,
        6,
        "PERSISTENT RESERVE OUT (REGISTER AND IGNORE EXISTING KEY)",
        Op::PersistentReserveOut,
        &[0x5f, 6, FF, 0, 0, FF, FF, FF, FF, CTL],
    ),
    sa(
        0x5f,
        7,
        "PERSISTENT RESERVE OUT (REGISTER AND MOVE)",
        Op::PersistentReserveOut,
        &[0x5f, 7, FF, 0, 0, FF, FF, FF, FF, CTL],
    ),
    sa(
        0x83,
        0x00,
        "EXTENDED COPY(LID1)",
        Op::ExtendedCopy,
        &[0x83, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, CTL],
    ),
    sa(
        0x84,
        0x00,
        "RECEIVE COPY RESULTS(COPY STATUS)",
        Op::ReceiveCopyResults,
        &[0x84, 0x00, FF, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, CTL],
    ),
    sa(
        0x84,
        0x03,
        "RECEIVE COPY RESULTS(OPERATING PARAMETERS)",
        Op::ReceiveCopyResults,
        &[0x84, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, CTL],
    ),
    spec(0x88, "READ(16)", Op::Read, &[0x88, 0xfe, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL]),
    spec(
        0x89,
        "COMPARE AND WRITE",
        Op::CompareAndWrite,
        &[0x89, 0xfa, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0, 0, FF, 0, CTL],
    ),
    spec(0x8a, "WRITE(16)", Op::Write, &[0x8a, 0xfa, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL]),
    spec(0x8b, "ORWRITE(16)", Op::OrWrite, &[0x8b, 0xfa, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL]),
    spec(
        0x8e,
        "WRITE AND VERIFY(16)",
        Op::WriteAndVerify,
        &[0x8e, 0xf2, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL],
    ),
    spec(0x8f, "VERIFY(16)", Op::Verify, &[0x8f, 0xf6, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL]),
    spec(0x90, "PRE-FETCH(16)", Op::PreFetch, &[0x90, 0x02, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL]),
    spec(
        0x91,
        "SYNCHRONIZE CACHE(16)",
        Op::SynchronizeCache,
        &[0x91, 0x02, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL],
    ),
    spec(0x93, "WRITE SAME(16)", Op::WriteSame, &[0x93, 0xe9, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL]),
    atomic(spec(
        0x9c,
        "WRITE ATOMIC(16)",
        Op::WriteAtomic,
        &[0x9c, 0xf8, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0, FF, FF, 0, CTL],
    )),
    sa(
        0x9e,
        0x10,
        "READ CAPACITY(16)",
        Op::ReadCapacity16,
        &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, CTL],
    ),
    sa(
        0x9e,
        0x12,
        "GET LBA STATUS",
        Op::GetLbaStatus,
        &[0x9e, 0x12, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL],
    ),
    exempt(spec(0xa0, "REPORT LUNS", Op::ReportLuns, &[0xa0, 0, FF, 0, 0, 0, FF, FF, FF, FF, 0, CTL]), true, true),
    exempt(
        sa(
            0xa3,
            0x0a,
            "REPORT TARGET PORT GROUPS",
            Op::ReportTargetPortGroups,
            &[0xa3, 0xea, 0, 0, 0, 0, FF, FF, FF, FF, 0, CTL],
        ),
        false,
        true,
    ),
    exempt(
        sa(
            0xa3,
            0x0c,
            "REPORT SUPPORTED OPERATION CODES",
            Op::ReportSupportedOpcodes,
            &[0xa3, 0x0c, 0x87, FF, FF, FF, FF, FF, FF, FF, 0, CTL],
        ),
        false,
        true,
    ),
    exempt(
        sa(
            0xa3,
            0x0d,
            "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS",
            Op::ReportSupportedTmfs,
            &[0xa3, 0x0d, 0x80, 0, 0, 0, FF, FF, FF, FF, 0, CTL],
        ),
        false,
        true,
    ),
    exempt(
        sa(
            0xa4,
            0x0a,
            "SET TARGET PORT GROUPS",
            Op::SetTargetPortGroups,
            &[0xa4, 0x0a, 0, 0, 0, 0, FF, FF, FF, FF, 0, CTL],
        ),
        false,
        true,
    ),
    spec(0xa8, "READ(12)", Op::Read, &[0xa8, 0xfe, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL]),
    spec(0xaa, "WRITE(12)", Op::Write, &[0xaa, 0xfa, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL]),
    spec(0xae, "WRITE AND VERIFY(12)", Op::WriteAndVerify, &[0xae, 0xf2, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL]),
    spec(0xaf, "VERIFY(12)", Op::Verify, &[0xaf, 0xf6, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL]),
    spec(0xb7, "READ DEFECT DATA(12)", Op::ReadDefectData, &[0xb7, 0x1f, 0, 0, 0, 0, FF, FF, FF, FF, 0, CTL]),
];

/// Every supported command, in opcode order.
pub fn commands() -> &'static [OpSpec] {
    COMMANDS
}

/// Opcodes whose CDB carries a service action in byte 1.
pub fn has_service_actions(opcode: u8) -> bool {
    COMMANDS.iter().any(|s| s.opcode == opcode && s.service_action.is_some())
}

pub enum Lookup {
    Found(&'static OpSpec),
    UnknownOpcode,
    /// The opcode exists but not with this service action.
    UnknownServiceAction,
}

pub fn lookup(opcode: u8, service_action: u16) -> Lookup {
    if has_service_actions(opcode) {
        match COMMANDS.iter().find(|s| s.opcode == opcode && s.service_action == Some(service_action)) {
            Some(s) => Lookup::Found(s),
            None => Lookup::UnknownServiceAction,
        }
    } else {
        match COMMANDS.iter().find(|s| s.opcode == opcode) {
            Some(s) => Lookup::Found(s),
            None => Lookup::UnknownOpcode,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_unique_and_consistent() {
        for pair in COMMANDS.windows(2) {
            let a = (pair[0].opcode, pair[0].service_action);
            let b = (pair[1].opcode, pair[1].service_action);
            assert!(a < b, "{} before {}", pair[0].name, pair[1].name);
        }
        for s in COMMANDS {
            assert_eq!(s.usage[0], s.opcode, "{}", s.name);
            assert_eq!(s.cdb_len(), super::super::cdb::cdb_len_for_opcode(s.opcode), "{}", s.name);
            if let Some(sa) = s.service_action {
                assert_eq!(s.usage[1] as u16 & 0x1f, sa, "{}", s.name);
            }
        }
    }
}
