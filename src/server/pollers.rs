//! How many connections busy-poll at once: at most one per runtime worker.
//!
//! A connection polls after an event so that its worker is awake when the next command comes
//! (see `Settings::busy_poll`). One polling connection keeps its worker awake for every other
//! connection of that worker too; a second only adds yields, and every yield passes the whole
//! runtime queue and its socket poll. With 64 sessions at queue depth 1 every connection
//! polled, all of the time. So a connection polls only while it holds one of the slots, as many
//! as the runtime has workers; the others sleep until their socket or storage wakes them, which
//! a polling worker notices at once.

use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct PollerSlots {
    taken: AtomicUsize,
    max: usize,
}

impl PollerSlots {
    /// `max` slots (at least one).
    pub fn new(max: usize) -> PollerSlots {
        PollerSlots { taken: AtomicUsize::new(0), max: max.max(1) }
    }

    /// Takes a slot if one is free.
    pub fn try_take(&self) -> bool {
        self.taken.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1)).is_ok()
    }

    /// Gives back a slot taken with [`PollerSlots::try_take`].
    pub fn give_back(&self) {
        self.taken.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_more_slots_are_taken_than_there_are() {
        let slots = PollerSlots::new(2);
        assert!(slots.try_take() && slots.try_take());
        assert!(!slots.try_take(), "both taken");
        slots.give_back();
        assert!(slots.try_take(), "one given back");
        assert_eq!(slots.taken(), 2);
        assert!(PollerSlots::new(0).try_take(), "at least one slot");
    }
}
