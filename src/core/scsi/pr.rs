//! Persistent reservations (SPC-4 §5.13): registrations of reservation keys by I_T nexus, at
//! most one reservation of one of six types, and what each type lets each nexus do. Pure
//! state: the PERSISTENT RESERVE IN/OUT handlers (`persistent_reserve.rs`) parse commands into
//! these calls and encode their answers.

use std::collections::BTreeMap;

use super::sense::Sense;

/// The six reservation types (the TYPE field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrType {
    WriteExclusive = 1,
    ExclusiveAccess = 3,
    WriteExclusiveRegistrantsOnly = 5,
    ExclusiveAccessRegistrantsOnly = 6,
    WriteExclusiveAllRegistrants = 7,
    ExclusiveAccessAllRegistrants = 8,
}

impl PrType {
    pub fn from_code(code: u8) -> Option<PrType> {
        Some(match code {
            1 => PrType::WriteExclusive,
            3 => PrType::ExclusiveAccess,
            5 => PrType::WriteExclusiveRegistrantsOnly,
            6 => PrType::ExclusiveAccessRegistrantsOnly,
            7 => PrType::WriteExclusiveAllRegistrants,
            8 => PrType::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    /// Every registrant holds an all-registrants reservation.
    pub fn all_registrants(self) -> bool {
        matches!(self, PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants)
    }

    /// Registrants (not only the holder) may access the medium.
    fn registrants_have_access(self) -> bool {
        !matches!(self, PrType::WriteExclusive | PrType::ExclusiveAccess)
    }

    /// Reads by nexuses without access conflict too.
    fn exclusive_access(self) -> bool {
        matches!(
            self,
            PrType::ExclusiveAccess | PrType::ExclusiveAccessRegistrantsOnly | PrType::ExclusiveAccessAllRegistrants
        )
    }
}

/// How a command touches the logical unit, for the conflict rules (SPC-4 table 5.x, SBC-4
/// table 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Never in conflict (INQUIRY, REPORT LUNS, TEST UNIT READY, READ CAPACITY, PR IN/OUT...).
    Free,
    /// Reads the medium or the device's state.
    Read,
    /// Changes the medium or the device's state.
    Write,
}

/// One registered I_T nexus: the initiator port (iSCSI name and ISID) through one target
/// port. ALL_TG_PT and SPEC_I_PT make one registration per I_T nexus they name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Registrant {
    pub key: u64,
    /// The initiator port: iSCSI name and ISID (its TransportID).
    pub initiator: String,
    pub isid: u64,
    pub relative_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reservation {
    /// The holding nexus; for the all-registrants types, the one that reserved (every
    /// registrant holds it).
    pub holder: u64,
    pub kind: PrType,
}

/// What a PERSISTENT RESERVE OUT did wrong: RESERVATION CONFLICT, or a CHECK CONDITION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrError {
    Conflict,
    Check(Sense),
}

/// Unit attentions a change owes to other nexuses.
pub type Notices = Vec<(u64, (u8, u8))>;

/// RESERVATIONS PREEMPTED, RESERVATIONS RELEASED, REGISTRATIONS PREEMPTED (SPC-4 §5.13.11-12).
pub const RESERVATIONS_PREEMPTED: (u8, u8) = (0x2a, 0x03);
pub const RESERVATIONS_RELEASED: (u8, u8) = (0x2a, 0x04);
pub const REGISTRATIONS_PREEMPTED: (u8, u8) = (0x2a, 0x05);
/// INVALID RELEASE OF PERSISTENT RESERVATION.
const INVALID_RELEASE: (u8, u8) = (0x26, 0x04);
/// INSUFFICIENT REGISTRATION RESOURCES.
const INSUFFICIENT_REGISTRATION_RESOURCES: (u8, u8) = (0x55, 0x04);

/// Most registrations one logical unit keeps. SPEC_I_PT lets one command name many I_T
/// nexuses; beyond this bound REGISTER is refused with INSUFFICIENT REGISTRATION RESOURCES.
pub const REGISTRATIONS_MAX: usize = 1024;

/// An I_T nexus a command names without coming through it (ALL_TG_PT's other target ports,
/// SPEC_I_PT's and REGISTER AND MOVE's TransportIDs): its id and its registration to be.
pub type NamedNexus = (u64, Registrant);

/// The persistent reservation state of one logical unit (also its saved form, with APTPL).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PrState {
    /// PRgeneration: counts REGISTER, CLEAR, PREEMPT changes (wraps).
    pub generation: u32,
    /// Activate Persist Through Power Loss: the last REGISTER asked for the state to be kept
    /// across a restart of the target.
    #[serde(default)]
    pub aptpl: bool,
    /// By nexus id.
    pub registrants: BTreeMap<u64, Registrant>,
    pub reservation: Option<Reservation>,
}

impl PrState {
    /// Whether any registration exists (RESERVE(6)/(10) conflict with it).
    pub fn active(&self) -> bool {
        !self.registrants.is_empty() || self.reservation.is_some()
    }

    fn holds(&self, nexus: u64) -> bool {
        match self.reservation {
            Some(r) if r.kind.all_registrants() => self.registrants.contains_key(&nexus),
            Some(r) => r.holder == nexus,
            None => false,
        }
    }

    /// Whether a command of `access` from `nexus` conflicts with the reservation.
    pub fn conflicts(&self, nexus: u64, access: Access) -> bool {
        let Some(r) = self.reservation else { return false };
        if access == Access::Free || self.holds(nexus) {
            return false;
        }
        if r.kind.registrants_have_access() && self.registrants.contains_key(&nexus) {
            return false;
        }
        access == Access::Write || r.kind.exclusive_access()
    }

    /// The key `nexus` registered, after checking it is `claimed` (RESERVATION CONFLICT
    /// otherwise, as for an unregistered nexus).
    fn registered_as(&self, nexus: u64, claimed: u64) -> Result<u64, PrError> {
        match self.registrants.get(&nexus) {
            Some(r) if r.key == claimed => Ok(r.key),
            _ => Err(PrError::Conflict),
        }
    }

    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// REGISTER (`ignore_existing`: REGISTER AND IGNORE EXISTING KEY): registers, changes or
    /// (with a new key of zero) removes the nexus's key.
    pub fn register(
        &mut self,
        nexus: u64,
        port: Registrant,
        claimed: u64,
        new_key: u64,
        ignore_existing: bool,
    ) -> Result<Notices, PrError> {
        match self.registrants.get(&nexus) {
            None if !ignore_existing && claimed != 0 => Err(PrError::Conflict),
            None if new_key == 0 => Ok(Vec::new()),
            None => {
                self.insert(nexus, Registrant { key: new_key, ..port })?;
                self.bump();
                Ok(Vec::new())
            }
            Some(r) if !ignore_existing && r.key != claimed => Err(PrError::Conflict),
            Some(_) if new_key == 0 => {
                let notices = self.unregister(nexus);
                self.bump();
                Ok(notices)
            }
            Some(_) => {
                self.registrants.get_mut(&nexus).expect("registered").key = new_key;
                self.bump();
                Ok(Vec::new())
            }
        }
    }

    /// ALL_TG_PT: the sender's initiator port through the other target ports gets the key the
    /// sender's REGISTER set: registered with it, changed to it, or (zero) unregistered.
    pub fn register_other_ports(&mut self, others: Vec<NamedNexus>, key: u64) -> Result<Notices, PrError> {
        let mut notices = Vec::new();
        for (nexus, port) in others {
            match self.registrants.get_mut(&nexus) {
                None if key == 0 => {}
                None => self.insert(nexus, Registrant { key, ..port })?,
                Some(_) if key == 0 => notices.extend(self.unregister(nexus)),
                Some(r) => r.key = key,
            }
        }
        Ok(notices)
    }

    /// SPEC_I_PT: registers the I_T nexuses the TransportIDs name with `key`. None may be
    /// registered already (INVALID FIELD IN PARAMETER LIST, at the TransportIDs).
    pub fn register_specified(&mut self, specified: Vec<NamedNexus>, key: u64) -> Result<(), PrError> {
        if specified.iter().any(|(nexus, _)| self.registrants.contains_key(nexus)) {
            return Err(PrError::Check(Sense::invalid_param(28)));
        }
        for (nexus, port) in specified {
            self.insert(nexus, Registrant { key, ..port })?;
        }
        Ok(())
    }

    /// REGISTER AND MOVE: the holder of a reservation (not of an all-registrants type) hands
    /// it to another I_T nexus as `kind`, registering that nexus with `new_key` if it is not
    /// registered, and unregistering itself with `unregister_sender`.
    pub fn register_and_move(
        &mut self,
        nexus: u64,
        claimed: u64,
        new_key: u64,
        kind: PrType,
        to: NamedNexus,
        unregister_sender: bool,
    ) -> Result<Notices, PrError> {
        self.registered_as(nexus, claimed)?;
        match self.reservation {
            Some(r) if !r.kind.all_registrants() && r.holder == nexus => {}
            _ => return Err(PrError::Conflict),
        }
        if new_key == 0 {
            return Err(PrError::Check(Sense::invalid_param(8)));
        }
        let (destination, port) = to;
        if destination == nexus {
            return Err(PrError::Check(Sense::invalid_param(24)));
        }
        if !self.registrants.contains_key(&destination) {
            self.insert(destination, Registrant { key: new_key, ..port })?;
        }
        self.reservation = Some(Reservation { holder: destination, kind });
        if unregister_sender {
            self.registrants.remove(&nexus);
        }
        self.bump();
        Ok(Vec::new())
    }

    /// Adds a registration within [`REGISTRATIONS_MAX`].
    fn insert(&mut self, nexus: u64, registrant: Registrant) -> Result<(), PrError> {
        if self.registrants.len() >= REGISTRATIONS_MAX && !self.registrants.contains_key(&nexus) {
            return Err(PrError::Check(Sense::illegal(INSUFFICIENT_REGISTRATION_RESOURCES)));
        }
        self.registrants.insert(nexus, registrant);
        Ok(())
    }

    /// Removes a registration, releasing the reservation it held (an all-registrants one only
    /// with the last registrant).
    fn unregister(&mut self, nexus: u64) -> Notices {
        self.registrants.remove(&nexus);
        let Some(r) = self.reservation else { return Vec::new() };
        let released = match r.kind.all_registrants() {
            true => self.registrants.is_empty(),
            false => r.holder == nexus,
        };
        if !released {
            return Vec::new();
        }
        self.reservation = None;
        self.released_notices(r.kind, nexus)
    }

    /// A released registrants-only or all-registrants reservation is announced to the other
    /// registrants.
    fn released_notices(&self, kind: PrType, by: u64) -> Notices {
        match kind.registrants_have_access() {
            true => self.registrants.keys().filter(|n| **n != by).map(|n| (*n, RESERVATIONS_RELEASED)).collect(),
            false => Vec::new(),
        }
    }

    /// RESERVE: takes the reservation, or confirms the one the nexus holds.
    pub fn reserve(&mut self, nexus: u64, claimed: u64, kind: PrType) -> Result<(), PrError> {
        self.registered_as(nexus, claimed)?;
        match self.reservation {
            None => {
                self.reservation = Some(Reservation { holder: nexus, kind });
                Ok(())
            }
            Some(r) if r.kind == kind && self.holds(nexus) => Ok(()),
            Some(_) => Err(PrError::Conflict),
        }
    }

    /// RELEASE: gives up the reservation the nexus holds (nothing if it holds none).
    pub fn release(&mut self, nexus: u64, claimed: u64, kind: PrType) -> Result<Notices, PrError> {
        self.registered_as(nexus, claimed)?;
        match self.reservation {
            Some(r) if self.holds(nexus) => {
                if r.kind != kind {
                    return Err(PrError::Check(Sense::illegal(INVALID_RELEASE)));
                }
                self.reservation = None;
                Ok(self.released_notices(r.kind, nexus))
            }
            _ => Ok(Vec::new()),
        }
    }

    /// CLEAR: removes every registration and the reservation.
    pub fn clear(&mut self, nexus: u64, claimed: u64) -> Result<Notices, PrError> {
        self.registered_as(nexus, claimed)?;
        let notices = self.registrants.keys().filter(|n| **n != nexus).map(|n| (*n, RESERVATIONS_PREEMPTED)).collect();
        self.registrants.clear();
        self.reservation = None;
        self.bump();
        Ok(notices)
    }

    /// PREEMPT (and PREEMPT AND ABORT, whose aborting the caller does): removes the
    /// registrations of `victim_key` and, if they held the reservation, takes it as `kind`.
    /// Returns the preempted nexuses with their notices.
    pub fn preempt(&mut self, nexus: u64, claimed: u64, victim_key: u64, kind: PrType) -> Result<Notices, PrError> {
        self.registered_as(nexus, claimed)?;
        let reservation = self.reservation;
        let all_registrants = reservation.is_some_and(|r| r.kind.all_registrants());
        if victim_key == 0 && !all_registrants {
            return Err(PrError::Check(Sense::invalid_param(8)));
        }
        // An all-registrants reservation preempted with key zero: everyone else goes.
        let victims: Vec<u64> = self
            .registrants
            .iter()
            .filter(|(n, r)| **n != nexus && (r.key == victim_key || (all_registrants && victim_key == 0)))
            .map(|(n, _)| *n)
            .collect();
        let takes_reservation = match reservation {
            Some(r) if r.kind.all_registrants() => victim_key == 0,
            Some(r) => self.registrants.get(&r.holder).is_some_and(|h| h.key == victim_key),
            None => false,
        };
        if victims.is_empty() && !takes_reservation {
            return Err(PrError::Conflict);
        }
        for n in &victims {
            self.registrants.remove(n);
        }
        let mut notices: Notices = victims.iter().map(|n| (*n, REGISTRATIONS_PREEMPTED)).collect();
        if takes_reservation {
            let old = reservation.expect("a reservation to take");
            self.reservation = Some(Reservation { holder: nexus, kind });
            // Registrants kept lose a reservation whose type or holder changed.
            if old.kind != kind {
                notices.extend(self.registrants.keys().filter(|n| **n != nexus).map(|n| (*n, RESERVATIONS_RELEASED)));
            }
        }
        self.bump();
        Ok(notices)
    }

    /// The reservation's key as READ RESERVATION reports it (zero for all-registrants types).
    pub fn reservation_key(&self) -> Option<(u64, PrType)> {
        let r = self.reservation?;
        let key = match r.kind.all_registrants() {
            true => 0,
            false => self.registrants.get(&r.holder).map_or(0, |h| h.key),
        };
        Some((key, r.kind))
    }

    /// Whether `nexus` is a reservation holder (READ FULL STATUS's R_HOLDER).
    pub fn is_holder(&self, nexus: u64) -> bool {
        self.holds(nexus)
    }
}

#[cfg(test)]
#[path = "pr_tests.rs"]
mod tests;
