use super::*;

const A: u64 = 1;
const B: u64 = 2;
const C: u64 = 3;

fn port(name: &str) -> Registrant {
    Registrant { key: 0, initiator: name.into(), isid: 0x23d0_0000_0001, relative_port: 1 }
}

fn registered(keys: &[(u64, u64)]) -> PrState {
    let mut s = PrState::default();
    for &(nexus, key) in keys {
        s.register(nexus, port("iqn.x"), 0, key, false).unwrap();
    }
    s
}

const ALL_TYPES: [PrType; 6] = [
    PrType::WriteExclusive,
    PrType::ExclusiveAccess,
    PrType::WriteExclusiveRegistrantsOnly,
    PrType::ExclusiveAccessRegistrantsOnly,
    PrType::WriteExclusiveAllRegistrants,
    PrType::ExclusiveAccessAllRegistrants,
];

/// SBC-4's table of what each type allows: (holder, registered non-holder, unregistered),
/// each as (read allowed, write allowed).
#[test]
fn each_type_allows_what_the_access_table_says() {
    for kind in ALL_TYPES {
        let mut s = registered(&[(A, 0xa), (B, 0xb)]);
        s.reserve(A, 0xa, kind).unwrap();
        let allows = |n: u64| (!s.conflicts(n, Access::Read), !s.conflicts(n, Access::Write));
        let (holder, registrant, stranger) = (allows(A), allows(B), allows(C));
        assert_eq!(holder, (true, true), "{kind:?}: the holder");
        let expected_registrant = match kind {
            PrType::WriteExclusive => (true, false),
            PrType::ExclusiveAccess => (false, false),
            _ => (true, true),
        };
        assert_eq!(registrant, expected_registrant, "{kind:?}: a registered non-holder");
        let stranger_reads = matches!(
            kind,
            PrType::WriteExclusive | PrType::WriteExclusiveRegistrantsOnly | PrType::WriteExclusiveAllRegistrants
        );
        assert_eq!(stranger, (stranger_reads, false), "{kind:?}: an unregistered nexus");
        assert!(!s.conflicts(C, Access::Free));
    }
}

#[test]
fn registering_needs_the_current_key_and_counts_generations() {
    let mut s = PrState::default();
    assert_eq!(s.register(A, port("a"), 5, 0xa, false), Err(PrError::Conflict), "unregistered with a key");
    s.register(A, port("a"), 0, 0xa, false).unwrap();
    assert_eq!(s.generation, 1);
    assert_eq!(s.register(A, port("a"), 0xb, 0xc, false), Err(PrError::Conflict), "the wrong current key");
    s.register(A, port("a"), 0xa, 0xc, false).unwrap();
    s.register(A, port("a"), 0x99, 0xd, true).unwrap();
    assert_eq!((s.registrants[&A].key, s.generation), (0xd, 3));
    s.register(A, port("a"), 0xd, 0, false).unwrap();
    assert!(!s.active());
    assert_eq!(s.generation, 4);
}

#[test]
fn reserve_release_and_the_holder_unregistering() {
    let mut s = registered(&[(A, 0xa), (B, 0xb)]);
    assert_eq!(s.reserve(C, 0, PrType::WriteExclusive), Err(PrError::Conflict), "unregistered");
    s.reserve(A, 0xa, PrType::WriteExclusive).unwrap();
    s.reserve(A, 0xa, PrType::WriteExclusive).unwrap();
    assert_eq!(s.reserve(B, 0xb, PrType::WriteExclusive), Err(PrError::Conflict));
    assert_eq!(s.reserve(A, 0xa, PrType::ExclusiveAccess), Err(PrError::Conflict), "another type");
    assert_eq!(s.release(B, 0xb, PrType::WriteExclusive), Ok(vec![]), "a non-holder releases nothing");
    assert!(s.reservation.is_some());
    assert!(matches!(s.release(A, 0xa, PrType::ExclusiveAccess), Err(PrError::Check(_))));
    s.release(A, 0xa, PrType::WriteExclusive).unwrap();
    assert!(s.reservation.is_none());
    let generation = s.generation;
    s.reserve(A, 0xa, PrType::WriteExclusiveRegistrantsOnly).unwrap();
    assert_eq!(s.generation, generation, "RESERVE does not count");
    let notices = s.register(A, port("a"), 0xa, 0, false).unwrap();
    assert!(s.reservation.is_none(), "the holder's unregistering releases it");
    assert_eq!(notices, vec![(B, RESERVATIONS_RELEASED)]);
}

#[test]
fn an_all_registrants_reservation_lasts_while_anyone_is_registered() {
    let mut s = registered(&[(A, 0xa), (B, 0xb)]);
    s.reserve(A, 0xa, PrType::ExclusiveAccessAllRegistrants).unwrap();
    assert!(s.is_holder(B));
    s.register(A, port("a"), 0xa, 0, false).unwrap();
    assert!(s.reservation.is_some(), "B still holds it");
    assert_eq!(s.reservation_key(), Some((0, PrType::ExclusiveAccessAllRegistrants)));
    s.register(B, port("b"), 0xb, 0, false).unwrap();
    assert!(s.reservation.is_none());
}

#[test]
fn preempt_removes_the_victims_and_takes_their_reservation() {
    let mut s = registered(&[(A, 0xa), (B, 0xb), (C, 0xb)]);
    s.reserve(B, 0xb, PrType::WriteExclusive).unwrap();
    assert_eq!(s.preempt(A, 0xa, 0xdead, PrType::ExclusiveAccess), Err(PrError::Conflict), "no such key");
    assert!(matches!(s.preempt(A, 0xa, 0, PrType::ExclusiveAccess), Err(PrError::Check(_))));
    let notices = s.preempt(A, 0xa, 0xb, PrType::ExclusiveAccess).unwrap();
    assert_eq!(notices, vec![(B, REGISTRATIONS_PREEMPTED), (C, REGISTRATIONS_PREEMPTED)]);
    assert_eq!(s.reservation, Some(Reservation { holder: A, kind: PrType::ExclusiveAccess }));
    assert_eq!(s.registrants.keys().copied().collect::<Vec<_>>(), vec![A]);
    let mut s = registered(&[(A, 0xa), (B, 0xb)]);
    s.reserve(A, 0xa, PrType::WriteExclusive).unwrap();
    s.preempt(A, 0xa, 0xb, PrType::WriteExclusive).unwrap();
    assert_eq!(s.reservation.map(|r| r.holder), Some(A), "removing a non-holder leaves the reservation");
}

#[test]
fn preempting_an_all_registrants_reservation_with_key_zero_removes_everyone_else() {
    let mut s = registered(&[(A, 0xa), (B, 0xb), (C, 0xc)]);
    s.reserve(B, 0xb, PrType::WriteExclusiveAllRegistrants).unwrap();
    s.preempt(A, 0xa, 0, PrType::WriteExclusive).unwrap();
    assert_eq!(s.registrants.keys().copied().collect::<Vec<_>>(), vec![A]);
    assert_eq!(s.reservation, Some(Reservation { holder: A, kind: PrType::WriteExclusive }));
}

#[test]
fn clear_removes_everything_and_tells_the_others() {
    let mut s = registered(&[(A, 0xa), (B, 0xb)]);
    s.reserve(A, 0xa, PrType::ExclusiveAccess).unwrap();
    assert_eq!(s.clear(C, 0), Err(PrError::Conflict));
    assert_eq!(s.clear(B, 0xb).unwrap(), vec![(A, RESERVATIONS_PREEMPTED)]);
    assert!(!s.active());
}

#[test]
fn registrations_are_bounded_however_they_are_asked_for() {
    let mut s = PrState::default();
    let many: Vec<NamedNexus> = (0..REGISTRATIONS_MAX as u64).map(|n| (n, port("iqn.x"))).collect();
    s.register_specified(many, 0xa).unwrap();
    let full = (Err(PrError::Check(Sense::illegal((0x55, 0x04)))), Err(PrError::Check(Sense::illegal((0x55, 0x04)))));
    let more = REGISTRATIONS_MAX as u64;
    let refused =
        (s.register(more, port("iqn.y"), 0, 0xb, false), s.register_other_ports(vec![(more, port("iqn.y"))], 0xb));
    assert_eq!(refused, full);
    assert_eq!(s.register(0, port("iqn.x"), 0xa, 0xc, false), Ok(Vec::new()), "a registered nexus changes its key");
    assert_eq!(s.registrants.len(), REGISTRATIONS_MAX);
}

#[test]
fn register_and_move_needs_the_holder_of_a_one_holder_reservation() {
    let mut s = registered(&[(A, 0xa), (B, 0xb)]);
    let to_c = || (C, port("iqn.c"));
    assert_eq!(s.register_and_move(A, 0xa, 0xc, PrType::WriteExclusive, to_c(), false), Err(PrError::Conflict));
    s.reserve(A, 0xa, PrType::WriteExclusiveAllRegistrants).unwrap();
    let moved = s.register_and_move(A, 0xa, 0xc, PrType::WriteExclusive, to_c(), false);
    assert_eq!(moved, Err(PrError::Conflict), "all registrants hold it");
    let mut s = registered(&[(A, 0xa), (B, 0xb)]);
    s.reserve(A, 0xa, PrType::ExclusiveAccess).unwrap();
    assert_eq!(s.register_and_move(B, 0xb, 0xc, PrType::WriteExclusive, to_c(), false), Err(PrError::Conflict));
    assert!(matches!(s.register_and_move(A, 0xa, 0, PrType::WriteExclusive, to_c(), false), Err(PrError::Check(_))));
    let generation = s.generation;
    s.register_and_move(A, 0xa, 0xc, PrType::WriteExclusive, to_c(), false).unwrap();
    assert_eq!(s.reservation, Some(Reservation { holder: C, kind: PrType::WriteExclusive }));
    assert_eq!(s.registrants.get(&C).map(|r| r.key), Some(0xc));
    assert!(s.registrants.contains_key(&A), "without UNREG the sender stays registered");
    assert_eq!(s.generation, generation + 1);
    s.register_and_move(C, 0xc, 0xb, PrType::WriteExclusive, (B, port("iqn.x")), true).unwrap();
    assert_eq!(s.registrants.get(&B).map(|r| r.key), Some(0xb), "a registered destination keeps its key");
    assert!(!s.registrants.contains_key(&C), "UNREG");
}
