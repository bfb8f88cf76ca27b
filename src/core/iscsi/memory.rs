//! The process-wide bound on I/O buffer memory: command data (read and write buffers) and
//! responses not yet written, over all connections. A connection reserves a command's data
//! before it solicits or runs it; when the pool is spent the command waits (and, its window
//! full, the initiator waits) instead of memory growing. Responses waiting for a client that
//! does not read stay charged until written.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

#[derive(Debug)]
pub struct IoMemory {
    limit: u64,
    used: AtomicU64,
    peak: AtomicU64,
    /// The most held since [`IoMemory::take_recent_peak`] was last called.
    recent_peak: AtomicU64,
    /// Bumped at every release: a connection that failed to reserve retries once it moved.
    generation: AtomicU64,
    freed: Notify,
}

impl IoMemory {
    pub fn new(limit: u64) -> IoMemory {
        IoMemory {
            limit,
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            recent_peak: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            freed: Notify::new(),
        }
    }

    /// Takes `n` bytes if they fit, or if nothing is held (a command larger than the whole
    /// pool runs alone rather than never).
    pub fn try_reserve(&self, n: u64) -> bool {
        let mut used = self.used.load(Ordering::SeqCst);
        loop {
            if used != 0 && used.saturating_add(n) > self.limit {
                return false;
            }
            match self.used.compare_exchange_weak(used, used + n, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => {
                    self.peak.fetch_max(used + n, Ordering::Relaxed);
                    self.recent_peak.fetch_max(used + n, Ordering::Relaxed);
                    return true;
                }
                Err(now) => used = now,
            }
        }
    }

    /// Charges `n` bytes that exist already (moved from a command to the write queue).
    pub fn charge(&self, n: u64) {
        let used = self.used.fetch_add(n, Ordering::SeqCst) + n;
        self.peak.fetch_max(used, Ordering::Relaxed);
        self.recent_peak.fetch_max(used, Ordering::Relaxed);
    }

    /// The most held since the last call (then starts over from what is held now).
    pub fn take_recent_peak(&self) -> u64 {
        self.recent_peak.swap(self.used(), Ordering::Relaxed)
    }

    pub fn release(&self, n: u64) {
        if n == 0 {
            return;
        }
        let before = self.used.fetch_sub(n, Ordering::SeqCst);
        debug_assert!(before >= n, "released more than reserved");
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.freed.notify_waiters();
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Resolves after a release following `seen` (a generation read before the failed try).
    pub async fn freed_since(&self, seen: u64) {
        loop {
            let notified = self.freed.notified();
            if self.generation() != seen {
                return;
            }
            notified.await;
        }
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// The most held at once since the process started.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }
}

impl Default for IoMemory {
    fn default() -> Self {
        IoMemory::new(DEFAULT_IO_MEMORY)
    }
}

/// Default of the process-wide I/O memory bound.
pub const DEFAULT_IO_MEMORY: u64 = 1 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_within_the_limit_except_one_alone() {
        let m = IoMemory::new(100);
        assert!(m.try_reserve(60));
        assert!(!m.try_reserve(50));
        assert!(m.try_reserve(40));
        let seen = m.generation();
        m.release(100);
        assert_ne!(m.generation(), seen);
        assert!(m.try_reserve(500), "alone, a big one goes");
        assert!(!m.try_reserve(1));
        m.charge(10);
        assert_eq!((m.used(), m.peak()), (510, 510));
        m.release(505);
        assert_eq!(m.take_recent_peak(), 510, "the spike since the last look");
        assert_eq!(m.take_recent_peak(), 5, "then what is held now");
    }

    #[tokio::test]
    async fn a_waiter_wakes_on_a_release_even_one_before_it_waited() {
        let m = IoMemory::new(10);
        let seen = m.generation();
        m.release(0);
        m.charge(5);
        m.release(5);
        m.freed_since(seen).await; // released before the wait began: returns at once
    }
}
