//! A merge's work on a chunk (4 MiB of copies, scans and checksums) in steps of [`STEP`]
//! bytes with a yield between them. The merges of a batch run as one task (`join_all`); done
//! in one go, each merge's passes added up to polls of 30-40 ms, and every command queued on
//! the worker waited that long (`cargo xtask bench s3 --snapshot`, without a snapshot). The
//! yields come between steps only: a chunk of one step (the simulation's) is done in one go,
//! as before, and a yield costs the runtime a poll of its driver.

use super::cache::{PAGE, Pages};
use super::format;

/// Bytes of a chunk handled between two yields.
pub(super) const STEP: usize = 256 << 10;

/// The chunk of `len` bytes that `pages` hold (absent pages are zeros).
pub(super) async fn compose(pages: &Pages, len: usize) -> Vec<u8> {
    let mut full = Vec::with_capacity(len);
    while full.len() < len {
        if !full.is_empty() {
            tokio::task::yield_now().await;
        }
        let end = (full.len() + STEP).min(len);
        while full.len() < end {
            let at = full.len();
            let n = (PAGE - at % PAGE).min(end - at);
            match pages.get(&((at / PAGE) as u32)) {
                Some(p) => full.extend_from_slice(&p[at % PAGE..at % PAGE + n]),
                None => full.resize(at + n, 0),
            }
        }
    }
    full
}

/// Copies the blocks of `old` that `keep` says the chunk does not hold into `full`.
pub(super) async fn fill(full: &mut [u8], old: &[u8], block: usize, keep: impl Fn(usize) -> bool) {
    for start in (0..full.len()).step_by(STEP) {
        if start > 0 {
            tokio::task::yield_now().await;
        }
        let end = (start + STEP).min(full.len());
        for b in (start / block..end / block).filter(|&b| !keep(b)) {
            full[b * block..(b + 1) * block].copy_from_slice(&old[b * block..(b + 1) * block]);
        }
    }
}

/// Whether every byte of `data` is zero.
pub(super) async fn is_zero(data: &[u8]) -> bool {
    for (i, piece) in data.chunks(STEP).enumerate() {
        if i > 0 {
            tokio::task::yield_now().await;
        }
        if !crate::storage::is_zero(piece) {
            return false;
        }
    }
    true
}

/// [`format::chunk_metadata`], its checksums computed a step at a time.
pub(super) async fn chunk_metadata(
    data: &[u8],
    segment: u64,
    stamp: u64,
) -> std::collections::BTreeMap<String, String> {
    let per_step = (STEP / segment as usize).max(1) * segment as usize;
    let mut crcs = Vec::with_capacity(data.len().div_ceil(segment as usize));
    for (i, piece) in data.chunks(per_step).enumerate() {
        if i > 0 {
            tokio::task::yield_now().await;
        }
        crcs.extend(piece.chunks(segment as usize).map(crc32c::crc32c));
    }
    format::chunk_metadata_of(&crcs, stamp)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn the_steps_compute_what_the_passes_in_one_go_do() {
        let len = 4 << 20;
        let mut map = BTreeMap::new();
        for page in [0u32, 1, 63, 64, 700, 1023] {
            map.insert(page, Arc::new([page as u8 ^ 0x5a; PAGE]));
        }
        let pages: Pages = Arc::new(map);
        let full = compose(&pages, len).await;
        let mut expected = vec![0u8; len];
        for (&page, data) in pages.iter() {
            expected[page as usize * PAGE..(page as usize + 1) * PAGE].copy_from_slice(&data[..]);
        }
        assert!(full == expected, "composed chunk differs");
        // A chunk shorter than a step and not a multiple of a page (the volume's last).
        assert_eq!(compose(&pages, 3 * PAGE + 512).await[..], expected[..3 * PAGE + 512]);
        for segment in [64 << 10, 1 << 20, 4 << 20] {
            assert_eq!(chunk_metadata(&full, segment, 9).await, format::chunk_metadata(&full, segment, 9));
        }
        assert!(!is_zero(&full).await && is_zero(&vec![0u8; len]).await);
        let mut filled = full.clone();
        let old = vec![7u8; len];
        fill(&mut filled, &old, 512, |b| b % 3 == 0).await;
        for b in 0..len / 512 {
            let want = if b % 3 == 0 { &full[b * 512..(b + 1) * 512] } else { &old[b * 512..(b + 1) * 512] };
            assert!(&filled[b * 512..(b + 1) * 512] == want, "block {b}");
        }
    }
}
