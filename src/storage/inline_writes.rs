//! Plain writes to a regular file, made on the calling task while that is cheap.
//!
//! A buffered write of a few KiB into the page cache takes a few microseconds. Handing it to an
//! I/O thread and back costs more than the write itself: a queue, a futex wake or a thread
//! spinning for the next job, two context switches, a oneshot back to the task, all on CPUs a
//! 2-CPU machine shares with the initiator. Measured through iSCSI (libiscsi, 4 KiB random
//! writes at QD32 into a cached 256 MiB file, this machine): the writer thread gave 71-79k
//! IOPS at 16 µs of target CPU per command; see the file store's benchmark notes for inline.
//!
//! So a write runs on the calling task when it cannot need the disk before it lands in the page
//! cache: page-aligned (no read of a partial page), at most [`INLINE_MAX`], into regions
//! already prepared (`small_folios.rs`). What the kernel may still make it wait for — dirty
//! page throttling, the inode lock held by a hole punch or a resize — is watched: a write that
//! took longer than [`SLOW`] sends the next [`BACKOFF`] writes to the writer thread, so an async
//! worker that serves other connections is not held up twice in a row.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// The largest write made inline: a copy of ~100 µs into the page cache. It covers 128 KiB
/// sequential writes (QD8, libiscsi, 3 alternating runs by hand: 18.3-21.1k IOPS with 64 KiB
/// here, 23.8-26.7k with 256 KiB); larger ones overlap their copy with the network on the
/// writer thread.
pub const INLINE_MAX: usize = 256 << 10;
/// An inline write that took longer than this makes the next [`BACKOFF`] go to the thread.
pub const SLOW: Duration = Duration::from_micros(500);
/// Writes sent to the writer thread after a slow inline one.
pub const BACKOFF: u32 = 4096;
const PAGE: u64 = 4096;

#[derive(Default)]
pub struct InlineWrites {
    /// Writes still to send to the thread since the last slow inline write.
    backoff: AtomicU32,
    /// Writes made inline, and of them those slower than [`SLOW`].
    made: AtomicU64,
    slow: AtomicU64,
}

impl InlineWrites {
    /// Whether a write of `len` bytes at `offset`, into prepared regions, is to be made inline.
    pub fn admit(&self, offset: u64, len: usize) -> bool {
        if len == 0 || len > INLINE_MAX || !offset.is_multiple_of(PAGE) || !(len as u64).is_multiple_of(PAGE) {
            return false;
        }
        let mut left = self.backoff.load(Ordering::Relaxed);
        while left > 0 {
            match self.backoff.compare_exchange_weak(left, left - 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return false,
                Err(now) => left = now,
            }
        }
        true
    }

    /// An inline write took `elapsed`.
    pub fn made(&self, elapsed: Duration) {
        self.made.fetch_add(1, Ordering::Relaxed);
        if elapsed > SLOW {
            self.slow.fetch_add(1, Ordering::Relaxed);
            self.backoff.store(BACKOFF, Ordering::Relaxed);
        }
    }

    /// Ends a backoff early: a test's write timed slow on a busy machine must not decide where
    /// the next ones go.
    #[cfg(test)]
    pub fn end_backoff(&self) {
        self.backoff.store(0, Ordering::Relaxed);
    }

    /// Inline writes made, and how many of them were slow.
    pub fn counts(&self) -> (u64, u64) {
        (self.made.load(Ordering::Relaxed), self.slow.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_page_aligned_writes_are_admitted() {
        let inline = InlineWrites::default();
        assert!(inline.admit(0, 4096));
        assert!(inline.admit(1 << 30, INLINE_MAX));
        assert!(!inline.admit(512, 4096), "not page-aligned: may read a partial page");
        assert!(!inline.admit(4096, 4096 + 512));
        assert!(!inline.admit(0, INLINE_MAX + 4096));
        assert!(!inline.admit(0, 0));
    }

    /// A slow write sends exactly the next BACKOFF writes to the thread; fast ones change nothing.
    #[test]
    fn a_slow_inline_write_sends_the_next_writes_to_the_thread() {
        let inline = InlineWrites::default();
        inline.made(SLOW / 2);
        assert!(inline.admit(0, 4096));
        inline.made(SLOW + Duration::from_micros(1));
        let refused = (0..BACKOFF + 10).take_while(|_| !inline.admit(0, 4096)).count();
        assert_eq!(refused, BACKOFF as usize);
        assert_eq!(inline.counts(), (2, 1));
    }
}
