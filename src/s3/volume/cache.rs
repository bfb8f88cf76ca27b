//! The volume's cache: per chunk, the blocks it holds and which of them are newer than the
//! chunk object (unmerged) or not durable anywhere yet (unlogged); the set of chunks whose
//! objects exist; chunk claims; and what is known of each log object.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::storage::is_zero;

/// Cache allocation unit.
pub(super) const PAGE: usize = 4096;

/// A cached page. Shared, not copied, by a snapshot that captures it (`snapshot_capture.rs`):
/// a write into a shared page copies it first.
pub(super) type Page = Arc<[u8; PAGE]>;

/// A chunk's cached pages by index. Shared whole by a snapshot's capture, so that writes wait
/// for it only as long as it takes to count the dirty chunks: the first change after it copies
/// the map (not the pages), the type seeing that no change is missed.
pub(super) type Pages = Arc<BTreeMap<u32, Page>>;

/// A per-block bitmap with cheap all-clear and all-set states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Bits {
    Empty,
    Full,
    Some(Vec<u64>),
}

impl Bits {
    pub(super) fn get(&self, i: usize) -> bool {
        match self {
            Bits::Empty => false,
            Bits::Full => true,
            Bits::Some(w) => w[i / 64] >> (i % 64) & 1 == 1,
        }
    }

    pub(super) fn set_range(&mut self, start: usize, end: usize, n: usize) {
        if start == 0 && end == n {
            *self = Bits::Full;
            return;
        }
        if let Bits::Empty = self {
            *self = Bits::Some(vec![0; n.div_ceil(64)]);
        }
        let Bits::Some(words) = self else { return };
        // Word by word: every write sets bits here under the cache lock.
        let mut i = start;
        while i < end {
            let within = i % 64;
            let take = (64 - within).min(end - i);
            words[i / 64] |= low_bits(take) << within;
            i += take;
        }
        let (whole, rest) = (n / 64, n % 64);
        if words[..whole].iter().all(|&w| w == u64::MAX)
            && (rest == 0 || words[whole] & low_bits(rest) == low_bits(rest))
        {
            *self = Bits::Full;
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        match self {
            Bits::Empty => true,
            Bits::Full => false,
            Bits::Some(w) => w.iter().all(|&x| x == 0),
        }
    }

    pub(super) fn is_full(&self) -> bool {
        matches!(self, Bits::Full)
    }

    pub(super) fn count(&self, n: usize) -> usize {
        match self {
            Bits::Empty => 0,
            Bits::Full => n,
            Bits::Some(w) => w.iter().map(|x| x.count_ones() as usize).sum(),
        }
    }

    /// Maximal runs `[start, end)` of set bits below `n`. Whole words of zeros or ones are
    /// stepped over at once: the log's writer asks this of every chunk it logs, under the
    /// cache lock.
    pub(super) fn runs(&self, n: usize) -> Vec<(usize, usize)> {
        let words = match self {
            Bits::Empty => return Vec::new(),
            Bits::Full => return if n > 0 { vec![(0, n)] } else { Vec::new() },
            Bits::Some(words) => words,
        };
        let mut out = Vec::new();
        let mut start = None;
        let mut i = 0;
        while i < n {
            let word = words[i / 64];
            let uniform = i % 64 == 0 && i + 64 <= n && (word == 0 || word == u64::MAX);
            let set = word >> (i % 64) & 1 == 1;
            match (set, start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    out.push((s, i));
                    start = None;
                }
                _ => {}
            }
            i += if uniform { 64 } else { 1 };
        }
        if let Some(s) = start {
            out.push((s, n));
        }
        out
    }
}

/// A word with its lowest `n` bits set (`n` from 1 to 64).
fn low_bits(n: usize) -> u64 {
    u64::MAX >> (64 - n)
}

/// Cached state of one chunk. Valid blocks whose page is absent are zeros.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) pages: Pages,
    /// Blocks whose current contents the entry holds.
    pub(super) valid: Bits,
    /// Blocks newer than the chunk object.
    pub(super) unmerged: Bits,
    /// Blocks not yet durable anywhere (a subset of `unmerged`).
    pub(super) unlogged: Bits,
    /// The cache tick of the last change: a flush clears bits only if nothing changed since.
    pub(super) generation: u64,
    pub(super) unmerged_since: Option<Duration>,
    pub(super) unlogged_since: Option<Duration>,
    pub(super) last_used: u64,
}

impl Entry {
    pub(super) fn empty() -> Entry {
        Entry {
            pages: Pages::default(),
            valid: Bits::Empty,
            unmerged: Bits::Empty,
            unlogged: Bits::Empty,
            generation: 0,
            unmerged_since: None,
            unlogged_since: None,
            last_used: 0,
        }
    }

    pub(super) fn is_clean(&self) -> bool {
        self.unmerged.is_empty()
    }

    /// Copies `len` bytes at `at` (within the chunk) out of the pages; absent pages are zeros.
    pub(super) fn copy_out(&self, at: usize, out: &mut [u8]) {
        let mut pos = 0;
        while pos < out.len() {
            let page = (at + pos) / PAGE;
            let within = (at + pos) % PAGE;
            let n = (PAGE - within).min(out.len() - pos);
            match self.pages.get(&(page as u32)) {
                Some(p) => out[pos..pos + n].copy_from_slice(&p[within..within + n]),
                None => out[pos..pos + n].fill(0),
            }
            pos += n;
        }
    }

    /// Whether `len` bytes at `at` are all zeros (absent pages are).
    pub(super) fn is_zero(&self, at: usize, len: usize) -> bool {
        let (first, last) = (at / PAGE, (at + len).div_ceil(PAGE));
        self.pages.range(first as u32..last as u32).all(|(&page, p)| {
            let start = (page as usize * PAGE).max(at) - page as usize * PAGE;
            let end = ((page as usize + 1) * PAGE).min(at + len) - page as usize * PAGE;
            is_zero(&p[start..end])
        })
    }

    /// Copies `data` in at `at`; returns the number of pages allocated.
    pub(super) fn copy_in(&mut self, at: usize, data: &[u8]) -> usize {
        let mut allocated = 0;
        let mut pos = 0;
        while pos < data.len() {
            let page = ((at + pos) / PAGE) as u32;
            let within = (at + pos) % PAGE;
            let n = (PAGE - within).min(data.len() - pos);
            let src = &data[pos..pos + n];
            match Arc::make_mut(&mut self.pages).get_mut(&page) {
                Some(p) => Arc::make_mut(p)[within..within + n].copy_from_slice(src),
                None if is_zero(src) => {} // zeros stay unallocated
                None => {
                    let mut p = [0u8; PAGE];
                    p[within..within + n].copy_from_slice(src);
                    Arc::make_mut(&mut self.pages).insert(page, Arc::new(p));
                    allocated += 1;
                }
            }
            pos += n;
        }
        allocated
    }
}

/// What the volume knows about a log object. A log lives in the object store, or in the local
/// journal (`durability = "local"`) until it is uploaded; either way it is one log, numbered
/// in the one sequence, settled and deleted by the same rules.
#[derive(Debug, Default)]
pub(super) struct LogInfo {
    /// Chunks with records in it that are not merged (or deleted) since.
    pub(super) unsettled: BTreeSet<u64>,
    pub(super) bytes: u64,
    /// Its PUT is in flight. Registered before the PUT, so that a merge finishing first
    /// still settles it.
    pub(super) pending: bool,
    /// A copy may exist in the object store (to delete there).
    pub(super) in_store: bool,
    /// A copy is in the local journal, maybe the only one.
    pub(super) in_journal: bool,
    /// Its journal copy is being uploaded: not deleted meanwhile (an upload landing after the
    /// delete would leave a log behind).
    pub(super) uploading: bool,
    /// Its PUT to the object store succeeded: a recovery, on any node, finds it.
    pub(super) landed: bool,
}

impl LogInfo {
    /// A log about to be written to the object store.
    pub(super) fn for_store(unsettled: BTreeSet<u64>) -> LogInfo {
        LogInfo { unsettled, pending: true, in_store: true, ..LogInfo::default() }
    }

    /// A log about to be written to the local journal.
    pub(super) fn for_journal(unsettled: BTreeSet<u64>) -> LogInfo {
        LogInfo { unsettled, pending: true, in_journal: true, ..LogInfo::default() }
    }

    /// Whether it may be deleted once settled: no write or upload of it in flight.
    pub(super) fn at_rest(&self) -> bool {
        !self.pending && !self.uploading
    }

    /// Whether it may be deleted now: settled on every chunk, and at rest.
    pub(super) fn deletable(&self) -> bool {
        self.unsettled.is_empty() && self.at_rest()
    }
}

#[derive(Debug, Default)]
pub(super) struct Cache {
    pub(super) entries: BTreeMap<u64, Entry>,
    /// Chunks whose object exists, or may exist: a PUT is counted before it is sent (it may
    /// land even if its caller gives up), an uncertain DELETE is not a delete.
    pub(super) exists: BTreeSet<u64>,
    /// The versioned layout: the version that holds each chunk's data now (`chunk_map.rs`).
    pub(super) live: BTreeMap<u64, u64>,
    /// The versioned layout: versions of each chunk that are (or may be) in the store and
    /// hold nothing anyone reads; deleted by the next sweep.
    pub(super) garbage: BTreeMap<u64, BTreeSet<u64>>,
    /// The versioned layout: versions the snapshots hold, per chunk (never swept).
    pub(super) retained: BTreeMap<u64, BTreeSet<u64>>,
    /// The versioned layout: chunks whose newest version is a tombstone (an empty object
    /// that reads as zeros, so that older versions a snapshot holds are not the data).
    pub(super) tombstones: BTreeMap<u64, u64>,
    /// A clone: per chunk, the ancestor's version it reads until it writes its own (or a
    /// tombstone hides it).
    pub(super) inherited: BTreeMap<u64, super::manifest::Inherited>,
    /// The snapshots of the volume, by name (`snapshot.rs`).
    pub(super) snapshots: BTreeMap<super::manifest::SnapshotName, std::sync::Arc<super::manifest::Manifest>>,
    /// Per snapshot being written: the versions its captured chunks compose over (held until
    /// they are written).
    pub(super) holding: BTreeMap<super::manifest::SnapshotName, Vec<(u64, u64)>>,
    /// A manifest could not be read at open: nothing may be swept (it may hold anything).
    pub(super) sweep_blocked: bool,
    /// Chunks whose object is known to exist (listed at open, or a PUT that succeeded): a
    /// GET that finds one missing is an error, one of the others reads zeros.
    pub(super) known: BTreeSet<u64>,
    /// The entity tag of each chunk's object as this holder knows it (listed at open, or
    /// answered by its PUT); absent while unknown, and from the moment a mutation is claimed.
    /// The disk cache serves only data of this version.
    pub(super) versions: BTreeMap<u64, String>,
    /// Chunks with a mutation (PUT, DELETE) in flight.
    pub(super) inflight: BTreeSet<u64>,
    /// Logs written and not yet deleted, by sequence number.
    pub(super) logs: BTreeMap<u64, LogInfo>,
    /// Bytes of cache pages held.
    pub(super) page_bytes: u64,
    pub(super) tick: u64,
    /// Writes copied in so far: a SYNCHRONIZE CACHE covers those before it.
    pub(super) writes: u64,
    /// Per bucket of chunks: bumped whenever a chunk of the bucket is claimed for a mutation
    /// of its object, and released (see `read.rs`). Empty until first bumped.
    change_stamps: Vec<u64>,
    /// Where recent reads ended: a read starting at one continues a stream.
    pub(super) stream_ends: VecDeque<u64>,
    /// Volume offsets of the pieces being fetched ahead of a stream.
    pub(super) reading_ahead: BTreeSet<u64>,
    /// Chunks being merged to make room for waiting writes (`room.rs`).
    pub(super) merging_for_room: BTreeSet<u64>,
}

/// Buckets of change stamps: a fixed size whatever the volume's, at the price of a rare
/// needless refusal to keep fetched data.
const STAMP_BUCKETS: usize = 4096;

impl Cache {
    pub(super) fn change_stamp(&self, c: u64) -> u64 {
        self.change_stamps.get(c as usize % STAMP_BUCKETS).copied().unwrap_or(0)
    }

    pub(super) fn bump_change_stamp(&mut self, c: u64) {
        if self.change_stamps.is_empty() {
            self.change_stamps = vec![0; STAMP_BUCKETS];
        }
        self.change_stamps[c as usize % STAMP_BUCKETS] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::Bits;
    use crate::rng::Rng;

    /// Runs found bit by bit.
    fn naive_runs(bits: &Bits, n: usize) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = Vec::new();
        for i in (0..n).filter(|&i| bits.get(i)) {
            match out.last_mut() {
                Some((_, end)) if *end == i => *end = i + 1,
                _ => out.push((i, i + 1)),
            }
        }
        out
    }

    /// Ranges set word by word agree with a bit-by-bit model, and the bits become `Full`
    /// exactly when every bit below `n` is set.
    #[test]
    fn set_range_matches_a_bit_by_bit_model() {
        let mut rng = Rng::seeded(11);
        for case in 0..3000 {
            let n = [8192, 8100, 130, 100, 64, 65, 1][case % 7];
            let (mut bits, mut model) = (Bits::Empty, vec![false; n]);
            for _ in 0..1 + rng.below(40) {
                let start = rng.below(n as u64) as usize;
                let len = [1, 7, 63, 64, 65, 200, 1000, 8192][rng.below(8) as usize];
                let end = (start + len).min(n);
                bits.set_range(start, end, n);
                model[start..end].iter_mut().for_each(|b| *b = true);
                assert!((0..n).all(|i| bits.get(i) == model[i]), "case {case}, n {n}, {start}..{end}: {bits:?}");
                assert_eq!(bits.is_full(), model.iter().all(|&b| b), "case {case}, n {n}");
            }
        }
    }

    /// Runs stepped over whole words agree with runs found bit by bit: words of zeros, of
    /// ones, mixed, runs across words, a last partial word.
    #[test]
    fn runs_match_a_bit_by_bit_scan() {
        let mut rng = Rng::seeded(7);
        for case in 0..2000 {
            let n = [8192, 8000, 130, 64, 1][case % 5];
            let mut bits = Bits::Empty;
            for _ in 0..rng.below(12) {
                let start = rng.below(n as u64) as usize;
                let len = [1, 7, 64, 200, 1000][rng.below(5) as usize];
                bits.set_range(start, (start + len).min(n), n);
            }
            assert_eq!(bits.runs(n), naive_runs(&bits, n), "case {case}, n {n}, {bits:?}");
        }
        assert_eq!(Bits::Full.runs(10), [(0, 10)]);
        assert!(Bits::Empty.runs(10).is_empty());
    }
}
