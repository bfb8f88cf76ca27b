//! Where persistent reservations are kept across a restart when an initiator asks for it
//! (APTPL): a seam the SCSI core calls and the process fills in (a file in the data directory
//! for file LUNs, an object beside an S3 volume). A logical unit without a keeper refuses APTPL.

use super::pr::PrState;
use crate::store::BoxFuture;

/// The saved form: versioned JSON, so that a later rtgt reads what an earlier one wrote.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Saved {
    version: u32,
    state: PrState,
}

const VERSION: u32 = 1;

/// Keeps one logical unit's reservations. `save(None)` forgets them (APTPL turned off).
pub trait ReservationKeeper: Send + Sync + 'static {
    fn load(&self) -> BoxFuture<'_, Result<Option<Vec<u8>>, String>>;
    fn save(&self, saved: Option<Vec<u8>>) -> BoxFuture<'_, Result<(), String>>;
    /// Where, for logs.
    fn describe(&self) -> String;
    /// Whether the state belongs to a volume that other targets serve after this one (a
    /// failover pair on one S3 volume): then every change is kept, whatever APTPL says, so the
    /// next holder has the registrations and the reservation.
    fn shared(&self) -> bool {
        false
    }
}

pub fn encode(state: &PrState) -> Vec<u8> {
    serde_json::to_vec_pretty(&Saved { version: VERSION, state: state.clone() }).expect("serializable")
}

pub fn decode(bytes: &[u8]) -> Result<PrState, String> {
    let saved: Saved = serde_json::from_slice(bytes).map_err(|e| format!("unreadable saved reservations: {e}"))?;
    match saved.version {
        VERSION => Ok(saved.state),
        v => Err(format!("saved reservations of format {v}, newer than this rtgt reads ({VERSION})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::pr::{PrType, Registrant};

    #[test]
    fn the_saved_form_round_trips_and_a_newer_one_is_refused() {
        let mut s = PrState { aptpl: true, ..PrState::default() };
        let port = Registrant { key: 0, initiator: "iqn.a".into(), isid: 7, relative_port: 1 };
        s.register(1, port, 0, 0xaa, false).unwrap();
        s.reserve(1, 0xaa, PrType::WriteExclusiveAllRegistrants).unwrap();
        assert_eq!(decode(&encode(&s)), Ok(s));
        let newer = String::from_utf8(encode(&PrState::default())).unwrap().replace("\"version\": 1", "\"version\": 2");
        assert!(decode(newer.as_bytes()).unwrap_err().contains("newer"));
    }
}
