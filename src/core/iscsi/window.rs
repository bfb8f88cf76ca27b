//! The CmdSN window of a session (RFC 7143 §4.2.2.1): which non-immediate PDUs to accept,
//! in which order to deliver them, and the ExpCmdSN / MaxCmdSN to advertise.

use std::collections::BTreeMap;

/// Serial-number comparison (RFC 1982, 32 bits): is `a` before `b`?
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 1 << 31
}

/// Where a received CmdSN falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// It is ExpCmdSN: deliver now.
    InOrder,
    /// Within the window but ahead of a gap: hold until the gap fills.
    Ahead,
    /// Outside the window (or already held): drop silently.
    Outside,
}

/// CmdSN bookkeeping. `T` is what waits in the window for its turn.
#[derive(Debug)]
pub struct CmdWindow<T> {
    exp_cmd_sn: u32,
    /// The highest MaxCmdSN ever advertised; never decreases.
    max_cmd_sn: u32,
    depth: u32,
    /// Delivered non-immediate commands not yet completed: they occupy the window.
    active: u32,
    /// Commands received ahead of ExpCmdSN, by CmdSN.
    held: BTreeMap<u32, T>,
}

impl<T> CmdWindow<T> {
    pub fn new(exp_cmd_sn: u32, depth: u32) -> Self {
        let depth = depth.max(1);
        CmdWindow {
            exp_cmd_sn,
            max_cmd_sn: exp_cmd_sn.wrapping_add(depth - 1),
            depth,
            active: 0,
            held: BTreeMap::new(),
        }
    }

    pub fn exp_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn
    }

    pub fn max_cmd_sn(&self) -> u32 {
        self.max_cmd_sn
    }

    /// Classifies a non-immediate CmdSN.
    pub fn arrival(&self, cmd_sn: u32) -> Arrival {
        if cmd_sn == self.exp_cmd_sn {
            Arrival::InOrder
        } else if sn_lt(self.exp_cmd_sn, cmd_sn) && !sn_lt(self.max_cmd_sn, cmd_sn) && !self.held.contains_key(&cmd_sn)
        {
            Arrival::Ahead
        } else {
            Arrival::Outside
        }
    }

    /// Holds an early arrival until ExpCmdSN reaches it.
    pub fn hold(&mut self, cmd_sn: u32, item: T) {
        debug_assert_eq!(self.arrival(cmd_sn), Arrival::Ahead);
        self.held.insert(cmd_sn, item);
    }

    /// Accepts the command at ExpCmdSN; `occupies` is true when it stays active until
    /// [`CmdWindow::complete`] (SCSI commands), false for PDUs answered at once.
    pub fn advance(&mut self, occupies: bool) {
        self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
        if occupies {
            self.active += 1;
        } else {
            self.refresh();
        }
    }

    /// Whether anything waits behind a gap in the CmdSNs.
    pub fn holds_any(&self) -> bool {
        !self.held.is_empty()
    }

    /// The held item whose turn has come, if any.
    pub fn next_held(&mut self) -> Option<T> {
        self.held.remove(&self.exp_cmd_sn)
    }

    /// Marks an active command finished: the window opens by one.
    pub fn complete(&mut self) {
        debug_assert!(self.active > 0, "completion without an active command");
        self.active = self.active.saturating_sub(1);
        self.refresh();
    }

    fn refresh(&mut self) {
        let slack = if crate::mutants::active(crate::mutants::Mutant::WindowOffByOne) { 0 } else { 1 };
        let max = self.exp_cmd_sn.wrapping_add(self.depth.saturating_sub(self.active + slack));
        if sn_lt(self.max_cmd_sn, max) {
            self.max_cmd_sn = max;
        }
    }

    /// Drops everything held (connection close).
    pub fn clear(&mut self) -> Vec<T> {
        std::mem::take(&mut self.held).into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_accepts_in_order_holds_ahead_and_drops_outside() {
        let mut w: CmdWindow<&str> = CmdWindow::new(10, 4);
        assert_eq!(w.max_cmd_sn(), 13);
        assert_eq!(w.arrival(9), Arrival::Outside, "too low");
        assert_eq!(w.arrival(14), Arrival::Outside, "too high");
        assert_eq!(w.arrival(12), Arrival::Ahead);
        w.hold(12, "c");
        assert_eq!(w.arrival(12), Arrival::Outside, "duplicate");
        assert_eq!(w.arrival(10), Arrival::InOrder);
        w.advance(true);
        assert!(w.next_held().is_none());
        assert_eq!(w.arrival(11), Arrival::InOrder);
        w.advance(true);
        assert_eq!(w.next_held(), Some("c"));
        w.advance(true);
        assert_eq!((w.exp_cmd_sn(), w.max_cmd_sn()), (13, 13), "three active of four");
        w.complete();
        assert_eq!(w.max_cmd_sn(), 14);
        w.advance(false);
        assert_eq!((w.exp_cmd_sn(), w.max_cmd_sn()), (14, 15), "two active of four");
    }

    #[test]
    fn serial_arithmetic_wraps() {
        assert!(sn_lt(u32::MAX, 0));
        assert!(!sn_lt(0, u32::MAX));
        let mut w: CmdWindow<()> = CmdWindow::new(u32::MAX, 8);
        assert_eq!(w.max_cmd_sn(), 6);
        assert_eq!(w.arrival(3), Arrival::Ahead);
        w.advance(true);
        assert_eq!(w.exp_cmd_sn(), 0);
    }
}
