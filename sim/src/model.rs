//! The oracle: a per-block model of what a read may return.
//!
//! Every write carries a unique id, stamped into each block it writes (with the block's LBA
//! and a check pattern), so a read tells which write produced each block. A read may return a
//! write that (a) was issued before the read completed and (b) is not superseded: no other
//! write to the block was issued after it ended and acknowledged before the read was issued
//! (and survived every crash in between, i.e. was durable by then). Writes that failed or were
//! cut off end when their fate is settled (their initiator logs back in and reinstates its
//! session, or a task management response reports them aborted, or the target crashes).
//! Durability: a FUA write is durable when acknowledged; other writes when a SYNCHRONIZE
//! CACHE issued after their acknowledgement returns GOOD.

use std::time::Duration;

pub const BLOCK: usize = 512;
/// LBA field of WRITE SAME data (the same block everywhere).
const ANY_LBA: u32 = u32::MAX;

/// Contents of a block written by write `id` at `lba`.
pub fn encode_block(id: u32, lba: u64, out: &mut [u8]) {
    let tag = if lba == u64::MAX { ANY_LBA } else { lba as u32 };
    out[..4].copy_from_slice(&id.to_be_bytes());
    out[4..8].copy_from_slice(&tag.to_be_bytes());
    for (i, b) in out[8..BLOCK].iter_mut().enumerate() {
        *b = (id as u8).wrapping_mul(31).wrapping_add(i as u8) ^ (tag as u8);
    }
}

/// What a block holds: `Ok(0)` for zeros, `Ok(id)` for a write, `Err` for garbage.
pub fn decode_block(lba: u64, block: &[u8]) -> Result<u32, String> {
    if rtgt::storage::is_zero(block) {
        return Ok(0);
    }
    let id = u32::from_be_bytes(block[..4].try_into().expect("4"));
    let tag = u32::from_be_bytes(block[4..8].try_into().expect("4"));
    if tag != ANY_LBA && tag as u64 != lba {
        return Err(format!("block {lba} holds data written for block {tag} (write {id})"));
    }
    let mut want = [0u8; BLOCK];
    encode_block(id, if tag == ANY_LBA { u64::MAX } else { lba }, &mut want);
    if block != want.as_slice() {
        return Err(format!("block {lba} is torn or corrupt (claims write {id})"));
    }
    Ok(id)
}

#[derive(Debug, Clone)]
struct Write {
    id: u32,
    /// 0 for writes of zeros (UNMAP, WRITE SAME of zeros).
    value: u32,
    issued: Duration,
    /// When its effect is settled (acknowledged, failed and settled, or cut by a crash).
    end: Option<Duration>,
    acked: Option<Duration>,
    durable: Option<Duration>,
    lun: usize,
    initiator: usize,
}

#[derive(Debug, Default)]
pub struct Model {
    writes: Vec<Write>,
    /// Per LUN, per block: indices into `writes`.
    history: Vec<Vec<Vec<usize>>>,
    /// Per LUN: acknowledged writes not yet durable.
    volatile: Vec<Vec<usize>>,
    crashes: Vec<Duration>,
    next_id: u32,
    /// WRITE ATOMICs: their writes and blocks.
    atomic: Vec<(usize, std::ops::Range<u64>)>,
    /// (LUN, block, write) of writes a read after a crash showed lost: they never come back
    /// (a late request of the target that died must land behind what the next one served).
    lost: std::collections::BTreeSet<(usize, u64, usize)>,
}

/// A handle on a write in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteId(usize);

impl Model {
    pub fn new(luns: usize, blocks: u64) -> Model {
        let mut m = Model {
            history: vec![vec![Vec::new(); blocks as usize]; luns],
            volatile: vec![Vec::new(); luns],
            next_id: 1,
            ..Model::default()
        };
        // The initial zeros: a durable write at time zero.
        for lun in 0..luns {
            let w = m.push(lun, usize::MAX, 0, Duration::ZERO, &(0..blocks));
            let write = &mut m.writes[w.0];
            write.end = Some(Duration::ZERO);
            write.acked = Some(Duration::ZERO);
            write.durable = Some(Duration::ZERO);
        }
        m
    }

    fn push(
        &mut self,
        lun: usize,
        initiator: usize,
        value: u32,
        now: Duration,
        blocks: &std::ops::Range<u64>,
    ) -> WriteId {
        let id = self.next_id;
        self.next_id += 1;
        let index = self.writes.len();
        debug_assert!(self.writes.last().is_none_or(|w| w.issued <= now), "writes are registered in issue order");
        self.writes.push(Write {
            id,
            value: if value == u32::MAX { id } else { value },
            issued: now,
            end: None,
            acked: None,
            durable: None,
            lun,
            initiator,
        });
        for b in blocks.clone() {
            self.history[lun][b as usize].push(index);
        }
        WriteId(index)
    }

    /// Registers a write of data (returns the id to stamp into its blocks).
    pub fn begin_write(
        &mut self,
        lun: usize,
        initiator: usize,
        blocks: std::ops::Range<u64>,
        now: Duration,
    ) -> (WriteId, u32) {
        let w = self.push(lun, initiator, u32::MAX, now, &blocks);
        (w, self.writes[w.0].id)
    }

    /// When write `id` was answered without being acknowledged (aborted, refused, or over with a
    /// crash or a reinstated session), if it was: from then on it must not take effect.
    pub fn over_unacknowledged(&self, id: u32) -> Option<Duration> {
        let w = self.writes.get(id.checked_sub(1)? as usize)?;
        debug_assert_eq!(w.id, id, "ids count from 1 in push order");
        match (w.acked, w.end) {
            (None, Some(end)) => Some(end),
            _ => None,
        }
    }

    /// Marks a write as atomic (WRITE ATOMIC): all of it or none, in any image of the medium.
    pub fn atomic(&mut self, w: WriteId, blocks: std::ops::Range<u64>) {
        self.atomic.push((w.0, blocks));
    }

    /// Checks that no atomic write of `lun` shows in part in an image of the medium (what it
    /// would hold were the target to crash now), given as the write each block holds: where one
    /// of its blocks holds it, every other block holds it or a write that may have landed after
    /// it (one not settled before it was issued).
    pub fn check_atomic(&self, lun: usize, ids: &[u32]) -> Result<(), String> {
        let holds = |b: u64| Some(ids[b as usize]);
        for (i, blocks) in &self.atomic {
            let g = &self.writes[*i];
            if g.lun != lun {
                continue;
            }
            let Some(seen) = blocks.clone().find(|&b| holds(b) == Some(g.id)) else { continue };
            for b in blocks.clone() {
                let Some(v) = holds(b).filter(|&v| v != g.id) else { continue };
                let may_follow = self.history[lun][b as usize]
                    .iter()
                    .any(|&j| j != *i && self.writes[j].value == v && self.writes[j].end.is_none_or(|e| e > g.issued));
                if !may_follow {
                    return Err(format!(
                        "atomic write {} of blocks {blocks:?} is torn: block {seen} holds it, block {b} holds {} \
                         from before it",
                        g.id,
                        if v == 0 { "zeros".to_string() } else { format!("write {v}") }
                    ));
                }
            }
        }
        Ok(())
    }

    /// Registers a write of zeros (UNMAP, WRITE SAME of zeros).
    pub fn begin_zero(&mut self, lun: usize, initiator: usize, blocks: std::ops::Range<u64>, now: Duration) -> WriteId {
        self.push(lun, initiator, 0, now, &blocks)
    }

    /// When the target answered a command issued at `issued` whose response arrived at `now`:
    /// no later than the first crash after the command was sent (the response was in flight,
    /// perhaps delayed, while the target died).
    fn answered(&self, issued: Duration, now: Duration) -> Duration {
        self.crashes.iter().copied().filter(|&c| c >= issued).fold(now, Duration::min)
    }

    pub fn acked(&mut self, w: WriteId, now: Duration, fua: bool) {
        let now = self.answered(self.writes[w.0].issued, now);
        let write = &mut self.writes[w.0];
        write.end = Some(now);
        write.acked = Some(now);
        if fua {
            write.durable = Some(now);
        } else {
            self.volatile[write.lun].push(w.0);
        }
    }

    /// The write failed: its effect is unknown but ended now.
    pub fn failed(&mut self, w: WriteId, now: Duration) {
        self.writes[w.0].end = Some(now);
    }

    /// An initiator logged in again (reinstating its session): its cut-off writes are over.
    pub fn settle(&mut self, initiator: usize, now: Duration) {
        for w in &mut self.writes {
            if w.initiator == initiator && w.end.is_none() {
                w.end = Some(now);
            }
        }
    }

    /// A SYNCHRONIZE CACHE of `lun` issued at `issued` returned GOOD at `now`.
    pub fn synced(&mut self, lun: usize, issued: Duration, now: Duration) {
        let now = self.answered(issued, now);
        let writes = &mut self.writes;
        self.volatile[lun].retain(|&i| {
            let w = &mut writes[i];
            if w.acked.is_some_and(|a| a < issued) {
                w.durable = Some(now);
                false
            } else {
                true
            }
        });
    }

    /// The target crashed: writes in flight are over (they may or may not have landed).
    pub fn crashed(&mut self, now: Duration) {
        for w in &mut self.writes {
            if w.end.is_none() && w.issued < now {
                w.end = Some(now);
            }
        }
        self.crashes.push(now);
    }

    /// The crashes up to `until`, with a crash that did not happen (a "what if it died now").
    fn crashes_with(&self, virtual_crash: Option<Duration>) -> impl Iterator<Item = Duration> + '_ {
        self.crashes.iter().copied().chain(virtual_crash)
    }

    fn survives(&self, w: &Write, until: Duration, virtual_crash: Option<Duration>) -> bool {
        let Some(acked) = w.acked else { return false };
        // A crash at the very instant of the acknowledgement may still lose a volatile write
        // (the response left the target before it died); a durable one was durable by then.
        self.crashes_with(virtual_crash).filter(|&c| c >= acked && c < until).all(|c| w.durable.is_some_and(|d| d <= c))
    }

    /// When a write's effect was settled: its end, or a (virtual) crash cutting it.
    fn end_of(&self, w: &Write, virtual_crash: Option<Duration>) -> Option<Duration> {
        w.end.or_else(|| virtual_crash.filter(|&c| w.issued < c))
    }

    fn superseded(
        &self,
        lun: usize,
        block: u64,
        w: &Write,
        read_issued: Duration,
        virtual_crash: Option<Duration>,
    ) -> bool {
        let Some(end) = self.end_of(w, virtual_crash) else { return false };
        // A block's history is in issue order: only its newest writes, those issued after
        // `end`, can supersede `w`.
        self.history[lun][block as usize]
            .iter()
            .rev()
            .map(|&i| &self.writes[i])
            .take_while(|other| other.issued > end)
            .any(|other| {
                other.acked.is_some_and(|a| a < read_issued) && self.survives(other, read_issued, virtual_crash)
            })
    }

    /// Checks one block of a read issued at `issued` that completed at `done`.
    pub fn check_read(
        &self,
        lun: usize,
        block: u64,
        data: &[u8],
        issued: Duration,
        done: Duration,
    ) -> Result<(), String> {
        self.check(lun, block, data, issued, done, None).map(|_| ())
    }

    /// Checks what a block would hold were the target to crash at `crash` and be read back
    /// just after (without changing the model). Returns the write the block holds.
    pub fn check_after_crash(&self, lun: usize, block: u64, data: &[u8], crash: Duration) -> Result<u32, String> {
        let after = crash + Duration::from_micros(1);
        self.check(lun, block, data, after, after, Some(crash)).map(|i| self.writes[i].value)
    }

    /// Checks one block of a read as [`Model::check_read`] does, and remembers what it shows:
    /// the writes it shows lost in a crash stay lost.
    pub fn check_and_note_read(
        &mut self,
        lun: usize,
        block: u64,
        data: &[u8],
        issued: Duration,
        done: Duration,
    ) -> Result<(), String> {
        let seen = self.check(lun, block, data, issued, done, None)?;
        self.note_lost(lun, block, seen, issued);
        Ok(())
    }

    /// A read issued at `issued`, after a crash, showed write `seen`: the writes newer than it
    /// that were over by that crash without being durable are lost for good.
    fn note_lost(&mut self, lun: usize, block: u64, seen: usize, issued: Duration) {
        let Some(crash) = self.crashes.iter().copied().filter(|&c| c < issued).max() else { return };
        let Some(seen_end) = self.writes[seen].end else { return };
        let lost: Vec<usize> = self.history[lun][block as usize]
            .iter()
            .copied()
            .filter(|&i| {
                let w = &self.writes[i];
                w.issued > seen_end && w.end.is_some_and(|e| e <= crash) && w.durable.is_none_or(|d| d > crash)
            })
            .collect();
        self.lost.extend(lost.into_iter().map(|i| (lun, block, i)));
    }

    fn check(
        &self,
        lun: usize,
        block: u64,
        data: &[u8],
        issued: Duration,
        done: Duration,
        virtual_crash: Option<Duration>,
    ) -> Result<usize, String> {
        let value = decode_block(block, data)?;
        // Newest first: a block most often holds one of its latest writes.
        let mut candidates = self.history[lun][block as usize]
            .iter()
            .rev()
            .copied()
            .filter(|&i| self.writes[i].value == value)
            .peekable();
        if candidates.peek().is_none() {
            return Err(format!("LUN {lun} block {block} holds write {value}, which never wrote it"));
        }
        let possible: Vec<usize> = candidates
            .filter(|&i| {
                let w = &self.writes[i];
                w.issued < done && !self.superseded(lun, block, w, issued, virtual_crash)
            })
            .collect();
        if let Some(&i) = possible.iter().find(|&&i| !self.lost.contains(&(lun, block, i))) {
            return Ok(i);
        }
        if !possible.is_empty() {
            return Err(format!(
                "LUN {lun} block {block}: read at {issued:?} returned write {value}, which a read after a crash had \
                 shown lost: it came back"
            ));
        }
        let latest = self.history[lun][block as usize]
            .iter()
            .rev()
            .map(|&i| &self.writes[i])
            .find(|w| w.acked.is_some_and(|a| a < issued))
            .map(|w| w.value);
        Err(format!(
            "LUN {lun} block {block}: read at {:?} returned write {value}, superseded (the last acknowledged write \
             before the read is {latest:?})",
            issued
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(id: u32, lba: u64) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK];
        encode_block(id, lba, &mut b);
        b
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn an_atomic_write_seen_in_part_is_torn_unless_the_rest_was_overwritten_after_it() {
        let mut m = Model::new(1, 4);
        let (old, old_id) = m.begin_write(0, 0, 0..4, S(1));
        m.acked(old, S(2), true);
        let (g, g_id) = m.begin_write(0, 0, 0..4, S(3));
        m.atomic(g, 0..4);
        assert!(m.check_atomic(0, &[old_id; 4]).is_ok(), "none of it");
        assert!(m.check_atomic(0, &[g_id; 4]).is_ok(), "all of it");
        let err = m.check_atomic(0, &[g_id, g_id, old_id, old_id]).unwrap_err();
        assert!(err.contains("torn"), "{err}");
        assert!(m.check_atomic(0, &[g_id, 0, g_id, g_id]).is_err(), "the initial zeros are older too");
        // A write issued while it was in flight, or after it, may have landed after it.
        m.acked(g, S(4), true);
        let (later, later_id) = m.begin_write(0, 1, 2..3, S(5));
        m.acked(later, S(6), true);
        assert!(m.check_atomic(0, &[g_id, g_id, later_id, g_id]).is_ok());
    }

    #[test]
    fn reads_see_acknowledged_or_concurrent_writes_only() {
        let mut m = Model::new(1, 4);
        let (w1, id1) = m.begin_write(0, 0, 0..2, S(1));
        m.acked(w1, S(2), false);
        assert!(m.check_read(0, 0, &block(id1, 0), S(3), S(4)).is_ok());
        assert!(m.check_read(0, 0, &vec![0u8; BLOCK], S(3), S(4)).is_err(), "zeros are superseded");
        // A write in flight during the read may or may not be seen.
        let (w2, id2) = m.begin_write(0, 1, 0..1, S(5));
        assert!(m.check_read(0, 0, &block(id2, 0), S(5), S(6)).is_ok());
        assert!(m.check_read(0, 0, &block(id1, 0), S(5), S(6)).is_ok());
        m.acked(w2, S(7), false);
        assert!(m.check_read(0, 0, &block(id1, 0), S(8), S(9)).is_err());
        assert!(m.check_read(0, 1, &block(id1, 0), S(8), S(9)).is_err(), "wrong LBA");
        let mut torn = block(id2, 0);
        torn[300] ^= 1;
        assert!(m.check_read(0, 0, &torn, S(8), S(9)).is_err());
    }

    #[test]
    fn crashes_lose_only_what_was_not_durable() {
        let mut m = Model::new(1, 2);
        let (w1, id1) = m.begin_write(0, 0, 0..2, S(1));
        m.acked(w1, S(2), false);
        m.synced(0, S(3), S(4));
        let (w2, id2) = m.begin_write(0, 0, 0..1, S(5));
        m.acked(w2, S(6), false);
        let (w3, id3) = m.begin_write(0, 0, 1..2, S(7));
        m.acked(w3, S(8), true);
        m.crashed(S(10));
        // Block 0: the synced write or the unsynced one; block 1: only the FUA write.
        assert!(m.check_read(0, 0, &block(id1, 0), S(11), S(12)).is_ok());
        assert!(m.check_read(0, 0, &block(id2, 0), S(11), S(12)).is_ok());
        assert!(m.check_read(0, 0, &vec![0u8; BLOCK], S(11), S(12)).is_err());
        assert!(m.check_read(0, 1, &block(id1, 1), S(11), S(12)).is_err());
        assert!(m.check_read(0, 1, &block(id3, 1), S(11), S(12)).is_ok());
    }

    #[test]
    fn a_write_a_read_after_a_crash_showed_lost_never_comes_back() {
        let mut m = Model::new(1, 1);
        let (w1, id1) = m.begin_write(0, 0, 0..1, S(1));
        m.acked(w1, S(2), true);
        let (w2, id2) = m.begin_write(0, 0, 0..1, S(3));
        m.acked(w2, S(4), false);
        m.crashed(S(5));
        // Either may be read after the crash...
        assert!(m.check_read(0, 0, &block(id2, 0), S(6), S(7)).is_ok());
        assert!(m.check_and_note_read(0, 0, &block(id1, 0), S(6), S(7)).is_ok());
        // ... but once the durable one was, the lost one stays lost, through later crashes.
        let err = m.check_read(0, 0, &block(id2, 0), S(8), S(9)).unwrap_err();
        assert!(err.contains("came back"), "{err}");
        m.crashed(S(10));
        assert!(m.check_read(0, 0, &block(id2, 0), S(11), S(12)).is_err());
        assert!(m.check_read(0, 0, &block(id1, 0), S(11), S(12)).is_ok());
    }

    #[test]
    fn an_acknowledgement_delayed_past_a_crash_was_sent_before_it() {
        let mut m = Model::new(1, 1);
        let (w1, id1) = m.begin_write(0, 0, 0..1, S(1));
        m.acked(w1, S(2), true);
        let (w2, id2) = m.begin_write(0, 0, 0..1, S(3));
        m.crashed(S(4));
        // The response of the volatile write was in flight when the target died.
        m.acked(w2, S(5), false);
        assert!(m.check_read(0, 0, &block(id1, 0), S(6), S(7)).is_ok(), "the volatile write may be lost");
        assert!(m.check_read(0, 0, &block(id2, 0), S(6), S(7)).is_ok());
        let (w3, id3) = m.begin_write(0, 0, 0..1, S(8));
        m.crashed(S(9));
        m.acked(w3, S(10), true);
        assert!(m.check_read(0, 0, &block(id2, 0), S(11), S(12)).is_err(), "the FUA write was durable");
        assert!(m.check_read(0, 0, &block(id3, 0), S(11), S(12)).is_ok());
    }
}
