//! The process-wide bound on I/O buffer memory: command data (read and write buffers) and
//! responses not yet written, over all connections. A connection reserves a command's data
//! before it solicits or runs it; when the pool is spent the command waits (and, its window
//! full, the initiator waits) instead of memory growing. Responses waiting for a client that
//! does not read stay charged until written. No source address may hold more than its share
//! of the pool, however many connections it opens, so one client cannot stall all others.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

#[derive(Debug)]
pub struct IoMemory {
    limit: u64,
    /// The most one source address may hold.
    share_limit: u64,
    /// What each source address with a connection holds (an entry lives while a connection
    /// of its address holds its account).
    addresses: Mutex<HashMap<IpAddr, Weak<AtomicU64>>>,
    used: AtomicU64,
    peak: AtomicU64,
    /// The most held since [`IoMemory::take_recent_peak`] was last called.
    recent_peak: AtomicU64,
    /// Bumped at every release: a connection that failed to reserve retries once it moved.
    generation: AtomicU64,
    freed: Notify,
}

impl IoMemory {
    /// A pool any one address may use whole.
    pub fn new(limit: u64) -> IoMemory {
        IoMemory::with_share(limit, limit)
    }

    /// A pool of which one address may hold at most `share_limit`.
    pub fn with_share(limit: u64, share_limit: u64) -> IoMemory {
        IoMemory {
            limit,
            share_limit,
            addresses: Mutex::new(HashMap::new()),
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            recent_peak: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            freed: Notify::new(),
        }
    }

    /// The account of connections from `address`: their reservations count against the pool
    /// and against that address's share.
    pub fn account_for(self: &Arc<Self>, address: IpAddr) -> MemoryAccount {
        let mut addresses = self.addresses.lock().expect("poisoned");
        let held = match addresses.get(&address).and_then(Weak::upgrade) {
            Some(held) => held,
            None => {
                addresses.retain(|_, held| held.strong_count() > 0);
                let held = Arc::new(AtomicU64::new(0));
                addresses.insert(address, Arc::downgrade(&held));
                held
            }
        };
        MemoryAccount { pool: self.clone(), held }
    }

    /// An account of its own, bound only by the pool (a connection with no address: tests).
    pub fn unshared(self: &Arc<Self>) -> MemoryAccount {
        MemoryAccount { pool: self.clone(), held: Arc::new(AtomicU64::new(0)) }
    }

    /// Takes `n` bytes if they fit, or if nothing is held (a command larger than the whole
    /// pool runs alone rather than never).
    fn try_reserve(&self, n: u64) -> bool {
        take_within(&self.used, n, self.limit)
            .inspect(|&used| {
                self.peak.fetch_max(used, Ordering::Relaxed);
                self.recent_peak.fetch_max(used, Ordering::Relaxed);
            })
            .is_some()
    }

    /// Charges `n` bytes that exist already (moved from a command to the write queue).
    fn charge(&self, n: u64) {
        let used = self.used.fetch_add(n, Ordering::SeqCst) + n;
        self.peak.fetch_max(used, Ordering::Relaxed);
        self.recent_peak.fetch_max(used, Ordering::Relaxed);
    }

    /// The most held since the last call (then starts over from what is held now).
    pub fn take_recent_peak(&self) -> u64 {
        self.recent_peak.swap(self.used(), Ordering::Relaxed)
    }

    fn release(&self, n: u64) {
        if n == 0 {
            return;
        }
        let before = self.used.fetch_sub(n, Ordering::SeqCst);
        debug_assert!(before >= n, "released more than reserved");
        self.wake_waiters();
    }

    /// Tells connections waiting for room to try again.
    fn wake_waiters(&self) {
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

/// Adds `n` to `counter` if the sum stays within `limit` or the counter is 0 (one reservation
/// larger than the limit goes alone rather than never); the new sum if it did.
fn take_within(counter: &AtomicU64, n: u64, limit: u64) -> Option<u64> {
    let mut used = counter.load(Ordering::SeqCst);
    loop {
        if used != 0 && used.saturating_add(n) > limit {
            return None;
        }
        match counter.compare_exchange_weak(used, used + n, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return Some(used + n),
            Err(now) => used = now,
        }
    }
}

/// One connection's way into the pool, counted against its source address's share too.
#[derive(Debug, Clone)]
pub struct MemoryAccount {
    pool: Arc<IoMemory>,
    /// What the connections of this address hold.
    held: Arc<AtomicU64>,
}

impl MemoryAccount {
    /// Takes `n` bytes if they fit both the address's share and the pool (either may be
    /// exceeded by one reservation made when it holds nothing).
    pub fn try_reserve(&self, n: u64) -> bool {
        if take_within(&self.held, n, self.pool.share_limit).is_none() {
            return false;
        }
        if self.pool.try_reserve(n) {
            return true;
        }
        self.held.fetch_sub(n, Ordering::SeqCst);
        // Another connection of this address may have been refused by the share for what was
        // held here for a moment: it waits for a release, so count this as one.
        self.pool.wake_waiters();
        false
    }

    /// Charges `n` bytes that exist already (moved from a command to the write queue).
    pub fn charge(&self, n: u64) {
        self.held.fetch_add(n, Ordering::SeqCst);
        self.pool.charge(n);
    }

    pub fn release(&self, n: u64) {
        let before = self.held.fetch_sub(n, Ordering::SeqCst);
        debug_assert!(before >= n, "released more than reserved");
        self.pool.release(n);
    }

    /// What the connections of this account's address hold.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::SeqCst)
    }

    pub fn generation(&self) -> u64 {
        self.pool.generation()
    }

    /// Resolves after a release following `seen` (a generation read before the failed try).
    pub async fn freed_since(&self, seen: u64) {
        self.pool.freed_since(seen).await
    }

    pub fn pool(&self) -> &Arc<IoMemory> {
        &self.pool
    }
}

impl Default for IoMemory {
    fn default() -> Self {
        IoMemory::with_share(DEFAULT_IO_MEMORY, DEFAULT_IO_MEMORY / 2)
    }
}

/// Default of the process-wide I/O memory bound.
pub const DEFAULT_IO_MEMORY: u64 = 1 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_within_the_limit_except_one_alone() {
        let m = Arc::new(IoMemory::new(100)).unshared();
        assert!(m.try_reserve(60));
        assert!(!m.try_reserve(50));
        assert!(m.try_reserve(40));
        let seen = m.generation();
        m.release(100);
        assert_ne!(m.generation(), seen);
        assert!(m.try_reserve(500), "alone, a big one goes");
        assert!(!m.try_reserve(1));
        m.charge(10);
        assert_eq!((m.pool().used(), m.pool().peak()), (510, 510));
        m.release(505);
        assert_eq!(m.pool().take_recent_peak(), 510, "the spike since the last look");
        assert_eq!(m.pool().take_recent_peak(), 5, "then what is held now");
    }

    #[test]
    fn one_address_holds_at_most_its_share_and_leaves_the_rest_to_others() {
        let pool = Arc::new(IoMemory::with_share(100, 50));
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let (a1, a2, b1) = (pool.account_for(a), pool.account_for(a), pool.account_for(b));
        assert!(a1.try_reserve(30));
        assert!(!a2.try_reserve(30), "the connections of one address share one share");
        assert!(a2.try_reserve(20));
        assert!(b1.try_reserve(50), "another address finds its room");
        assert!(!b1.try_reserve(1));
        assert_eq!((a1.held(), b1.held(), pool.used()), (50, 50, 100));
        a1.release(30);
        a2.release(20);
        assert!(!a1.try_reserve(60), "the pool bounds it too");
        b1.release(50);
        assert!(a1.try_reserve(60), "an address holding nothing may take one reservation over its share");
        assert_eq!((a1.held(), pool.used()), (60, 60));
    }

    #[test]
    fn a_refusal_by_the_pool_takes_nothing_from_the_share_and_wakes_waiters() {
        let pool = Arc::new(IoMemory::with_share(100, 80));
        let (a, b) = (pool.account_for("10.0.0.1".parse().unwrap()), pool.account_for("10.0.0.2".parse().unwrap()));
        assert!(b.try_reserve(70));
        let seen = a.generation();
        assert!(!a.try_reserve(40));
        assert_eq!(a.held(), 0);
        assert_ne!(a.generation(), seen);
    }

    #[test]
    fn an_address_is_forgotten_when_its_last_connection_goes() {
        let pool = Arc::new(IoMemory::with_share(100, 50));
        let address = "10.0.0.1".parse().unwrap();
        let first = pool.account_for(address);
        assert!(first.try_reserve(10));
        first.release(10);
        drop(first);
        let _other = pool.account_for("10.0.0.2".parse().unwrap());
        assert_eq!(pool.addresses.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_waiter_wakes_on_a_release_even_one_before_it_waited() {
        let m = Arc::new(IoMemory::new(10)).unshared();
        let seen = m.generation();
        m.release(0);
        m.charge(5);
        m.release(5);
        m.freed_since(seen).await; // released before the wait began: returns at once
    }
}
