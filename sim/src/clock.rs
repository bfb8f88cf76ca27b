//! The oracle's clock: simulated time as the model, the fakes and the initiators stamp events,
//! held so that it never goes back.
//!
//! turmoil runs the hosts one after another within a tick, each from the tick's start, so a
//! host can read an earlier time than a host that ran before it in the same tick. The model
//! needs its events in the order they happen, and the simulator's order of execution is that
//! order: it respects causality (a message sent in one tick is delivered in a later one). So
//! the oracle reads simulated time and holds it at the latest value any host has seen.

use std::cell::Cell;
use std::time::Duration;

thread_local! {
    static LATEST: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// Simulated time, never earlier than any time this clock returned before.
pub fn now() -> Duration {
    now_or(Duration::ZERO)
}

/// As [`now`]; `outside` is the time when read outside a host (between steps).
pub fn now_or(outside: Duration) -> Duration {
    at_least(turmoil::sim_elapsed().unwrap_or(outside))
}

/// `t`, or the latest time this clock returned if that is later.
fn at_least(t: Duration) -> Duration {
    LATEST.with(|latest| {
        let t = t.max(latest.get());
        latest.set(t);
        t
    })
}

/// Starts the clock over, for a new simulation on this thread.
pub fn reset() {
    LATEST.with(|latest| latest.set(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_back_and_starts_over() {
        reset();
        assert_eq!(at_least(Duration::from_millis(5)), Duration::from_millis(5));
        assert_eq!(at_least(Duration::from_millis(3)), Duration::from_millis(5), "an earlier reading is held");
        assert_eq!(at_least(Duration::from_millis(7)), Duration::from_millis(7));
        reset();
        assert_eq!(at_least(Duration::from_millis(1)), Duration::from_millis(1));
    }
}
